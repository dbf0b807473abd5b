#!/bin/sh
# Build the C++ core + nanobind extension with ASan + UBSan into build/asan (separate from the normal
# editable install, which stays a Release build). Prints the path of the sanitized extension.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
cmake -S "$root" -B "$root/build/asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DNNC_SANITIZE=ON \
  -DNNC_FORCE_PYTHON=ON -DPython_EXECUTABLE="$(command -v "$py")" >/dev/null
cmake --build "$root/build/asan" >/dev/null
ls "$root"/build/asan/_core*.so
