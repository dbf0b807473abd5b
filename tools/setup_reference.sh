#!/usr/bin/env bash
# Build the NNCodec 2.1.3 reference (the interoperability oracle for nnc's tests) in its own venv.
#
#   tools/setup_reference.sh [VENV_DIR]      (default: $NNCREF or /tmp/nncref)
#
# The reference pins numpy<2 and imports torch, so it never shares an environment with nnc. nnc itself never
# imports it: tests drive it through tests/support/reference_driver.py in a subprocess. Idempotent: an existing venv
# whose smoke test passes is kept.
set -euo pipefail
VENV="${1:-${NNCREF:-/tmp/nncref}}"
PY="${PYTHON:-python3}"

smoke() {
  "$VENV/bin/python" - <<'PY'
import numpy as np
from nncodec.nn import encode, decode
import tempfile
w = {"w": np.linspace(-1, 1, 96, dtype=np.float32).reshape(12, 8)}
bs = encode(w, args={"qp": -32, "results": tempfile.mkdtemp(), "verbose": False})
out = decode(bs)
assert out["w"].shape == (12, 8) and float(np.abs(out["w"] - w["w"]).max()) < 0.01
print("reference venv ready:", len(bs), "byte smoke-test bitstream")
PY
}

if [ -x "$VENV/bin/python" ] && smoke >/dev/null 2>&1; then
  echo "reference venv at $VENV already works"; exit 0
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# torch first and pinned: the CPU wheel is available locally, an unpinned torch would pull a CUDA build
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q "numpy<2" h5py tqdm pybind11
"$VENV/bin/pip" install -q --no-deps nncodec==2.1.3

# NNCodec's package __init__ imports training utilities (torchvision, cv2, pandas, sklearn) that its
# encode/decode path never calls. Satisfy those imports with inert placeholder modules on a .pth path.
STUBS="$VENV/nnc_placeholders"
mkdir -p "$STUBS"
cat > "$STUBS/_placeholder.py" <<'PY'
"""Inert stand-ins for modules NNCodec imports but never uses for coding."""
class _Unavailable:
    def __init__(self, *args, **kwargs):
        pass
    def __call__(self, *args, **kwargs):
        raise RuntimeError("placeholder module: the real package is not installed in this venv")
def attribute_factory(module_name):
    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (_Unavailable,), {"__module__": module_name})
    return __getattr__
PY
for mod in torchvision torchvision/datasets torchvision/transforms cv2 pandas sklearn sklearn/metrics; do
  mkdir -p "$STUBS/$mod"
  dotted="${mod//\//.}"
  {
    echo "\"\"\"Placeholder for $dotted (not the real package).\"\"\""
    if [ "$mod" = torchvision ]; then echo "from . import datasets, transforms"; fi
    echo "from _placeholder import attribute_factory"
    echo "__getattr__ = attribute_factory(__name__)"
    echo "__version__ = '0+placeholder'"
  } > "$STUBS/$mod/__init__.py"
done
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$STUBS" > "$SITE/nnc_placeholders.pth"
smoke
