#!/usr/bin/env bash
# A newcomer's first half hour with nnc, end to end: the README's commands, then a dozen mistakes users make.
#
# Run it in a FRESH virtual environment, from anywhere:
#     python -m venv /tmp/nv && . /tmp/nv/bin/activate && bash tools/newcomer.sh | tee /tmp/newcomer.txt
# It installs the repository the way the README says (pip install ".[onnx]", no PyTorch), so it needs the
# package index (and a few minutes to build the C++ core). Scratch files go to $NEWCOMER_DIR (/tmp/nnc-newcomer).
# Every command is echoed with "$ ", followed by its output and "[exit N]". docs/cli.md holds a transcript.
set -u
cd "$(dirname "$0")/.."
unset PYTHONPATH                  # use what pip installed, as a user would
export PIP_DISABLE_PIP_VERSION_CHECK=1
S=${NEWCOMER_DIR:-/tmp/nnc-newcomer}
rm -rf "$S" && mkdir -p "$S"

step() { printf '\n## %s\n' "$*"; }
run() {                           # echo the command, run it, show its exit status
  printf '$ %s\n' "$*"
  bash -o pipefail -c "$*" 2>&1
  printf '[exit %d]\n' "$?"
}

step "0. a fresh venv: python, and no torch"
run 'python --version; python -c "import importlib.util as u; print(\"torch installed:\", u.find_spec(\"torch\") is not None)"'

step "1. the README's first command (installs nnc with ONNX support only, encodes Silero VAD into /tmp)"
first=$(python - <<'EOF'
import re
print(re.findall(r"```bash\n(.*?)```", open("README.md").read(), flags=re.S)[0].strip())
EOF
)
printf '$ %s\n' "$first"
( eval "$first" ) 2>&1 | grep -E -e '^Successfully' -e ' -> ' -e '^  (tensors|bitstream|error|load)' \
    -e '^(nnc|ERROR|error)'    # pip's progress lines left out
printf '[exit %d]\n' "${PIPESTATUS[0]}"
run 'python -c "import importlib.util as u; print(\"torch installed:\", u.find_spec(\"torch\") is not None)"'
ONNX=$(python -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("silero_vad").origin).parent / "data/silero_vad.onnx")')
cp "$ONNX" "$S/vad.onnx"

step "2. the README's Python examples"
python - <<'EOF' > "$S/readme_examples.py"
import re
print("\n".join(re.findall(r"```python\n(.*?)```", open("README.md").read(), flags=re.S)))
EOF
run "python $S/readme_examples.py"

step "3. everyday commands"
run "nnc --version && python -m nnc --version"
run "nnc info /tmp/vad.nnc | head -4"
run "nnc check /tmp/vad.nnc"
run "nnc decode /tmp/vad.nnc -o $S/vad_decoded.onnx"

step "mistake 1: output = input (the model would be replaced by a bitstream)"
run "nnc encode $S/vad.onnx -o $S/vad.onnx; nnc encode $S/vad.onnx -o $S/vad.onnx --force; ls -l $S/vad.onnx | cut -d' ' -f5-"

step "mistake 2: the same through a link"
run "ln -s $S/vad.onnx $S/link.nnc && nnc encode $S/vad.onnx -o $S/link.nnc"

step "mistake 3: a bitstream named like a model"
run "nnc encode $S/vad.onnx -o $S/vad_small.onnx; ls $S/vad_small.onnx"

step "mistake 4: the output folder does not exist (reported before any loading)"
run "nnc encode $S/vad.onnx -o $S/results/vad.nnc"

step "mistake 5: QP in the wrong direction (larger QP = coarser)"
run "nnc encode $S/vad.onnx -o $S/q0.nnc --qp 0"

step "mistake 6: a size target that cannot be met"
run "nnc encode $S/vad.onnx -o $S/tiny.nnc --bits-per-param 0.1"

step "mistake 7: two flags that both choose the QP"
run "nnc encode $S/vad.onnx -o $S/both.nnc --qp -32 --bits-per-param 4"

step "mistake 8: a per-tensor QP pattern that matches nothing"
run "nnc encode $S/vad.onnx -o $S/pat.nnc --qp-per-tensor 'encoder.*=-44' --quiet"

step "mistake 9: a download cut short exactly at a unit boundary (decode, info and check agree)"
run "python -c \"import nnc.bitstream as B, sys; d=open('/tmp/vad.nnc','rb').read(); u=B.parse(d).units[6]; open('$S/cut.nnc','wb').write(d[:u.offset])\""
run "nnc decode $S/cut.nnc -o $S/cut.npz"
run "nnc info $S/cut.nnc | head -2"
run "nnc check $S/cut.nnc | head -3"

step "mistake 10: a download cut in the middle of a unit"
run "head -c 5000 /tmp/vad.nnc > $S/half.nnc && nnc decode $S/half.nnc -o $S/half.npz; nnc check $S/half.nnc >/dev/null"

step "mistake 11: not a bitstream at all / a text file named like a model"
run "nnc info README.md; echo 'hello' > $S/notes.npz && nnc encode $S/notes.npz -o $S/notes.nnc"

step "mistake 12: an extension nnc does not know, and a format the venv cannot write"
run "cp $S/vad.onnx $S/vad.data && nnc encode $S/vad.data -o $S/d.nnc"
run "nnc decode /tmp/vad.nnc -o $S/vad.pt"

step "mistake 13: wanting NNCodec's exact bytes, then checking such a file"
run "nnc encode $S/vad.onnx -o $S/ref.nnc --reference-layout --quiet && nnc check $S/ref.nnc"

step "mistake 14: Ctrl-C during a long encode"
python -c "import numpy as np; np.savez('$S/big.npz', w=np.random.default_rng(0).standard_normal((4000, 4000)).astype('f4'))"
run "set -m; nnc encode $S/big.npz -o $S/big.nnc & pid=\$!; sleep 4; t0=\$(date +%s.%N); kill -INT \$pid; wait \$pid; rc=\$?; t1=\$(date +%s.%N); echo \"exit \$rc, stopped \$(python -c \"print(round(\$t1 - \$t0, 2))\") s after SIGINT\"; echo \"files left: \$(ls -a $S | grep -c big.nnc)\""

step "done"
run "ls $S | head -30"
