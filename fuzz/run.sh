#!/bin/bash
# Run one atheris harness against the ASan/UBSan build of the C++ core, seeded with the conformance vectors.
#
#   fuzz/run.sh HARNESS [RUNS] [extra libFuzzer args...]     e.g.  fuzz/run.sh decode 300000
#   NNC_FUZZ_ASAN=0 fuzz/run.sh decode 1000                 (use the installed Release core, no sanitizers)
#
# HARNESS is decode | inspect | check | update | fl | torchscript. Output: fuzz/out/HARNESS/{corpus/,log.txt,crash-*,timeout-*}.
# Exit status: 0 = RUNS inputs and no finding; libFuzzer's non-zero status otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
h=${1:?harness: decode|inspect|check|update|fl|torchscript}; shift
runs=${1:-100000}; shift || true
py=${PYTHON:-python}
out="$here/out/$h"
mkdir -p "$out/corpus" "$out/seeds"
cp "$root"/conformance/vectors/*.nnc "$out/seeds/"
if [ "$h" = update ] || [ "$h" = fl ]; then cp "$root"/conformance/vectors/tca_seq/*.nnc "$out/seeds/"; fi
if [ "$h" = fl ]; then  # a real client upload for the harness's 64x96 model
  "$py" -c 'import numpy as np, sys; from nnc.fl import ClientCodec
c = ClientCodec({"delta.weight": np.zeros((64, 96), np.float32)})
x = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32) * 0.1
open(sys.argv[1], "wb").write(c.encode({"delta.weight": x}).payload)' "$out/seeds/fl_upload.nnc"
fi
if [ "$h" = torchscript ]; then  # inputs are data.pkl files (pure Python target: no core involved)
  rm -f "$out"/seeds/*.nnc
  (cd "$here" && "$py" -c 'import sys, importlib.util, zipfile, pathlib
from fuzz_torchscript import small_archive
e = small_archive(); d = sys.argv[1]
open(d + "/small_data.pkl", "wb").write(next(v for k, v in e.items() if k.endswith("/data.pkl")))
s = importlib.util.find_spec("silero_vad")
if s is not None:
    z = zipfile.ZipFile(pathlib.Path(s.origin).parent / "data" / "silero_vad.jit")
    open(d + "/silero_data.pkl", "wb").write(z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))' "$out/seeds")
fi
if [ "${NNC_FUZZ_ASAN:-1}" = 1 ]; then
  . "$here/asan_env.sh"
fi
cd "$here"
exec "$py" "fuzz_$h.py" "$out/corpus" "$out/seeds" -atheris_runs="$runs" -timeout=10 -rss_limit_mb=4096 \
  -max_len=16384 -artifact_prefix="$out/" -print_final_stats=1 "$@" 2>&1 | tee -a "$out/log.txt"
