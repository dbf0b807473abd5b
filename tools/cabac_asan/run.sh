#!/bin/sh
# Build the DeepCABAC core with AddressSanitizer + UndefinedBehaviorSanitizer and run the hostile-input
# driver. Usage: tools/cabac_asan/run.sh [sessions] [mutations-per-session]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${TMPDIR:-/tmp}/nnc_cabac_asan
mkdir -p "$out"
${CXX:-g++} -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -I"$root/nnc/deepcabac/src" \
  "$here/driver.cpp" "$root/nnc/deepcabac/src/coder.cpp" "$root/nnc/deepcabac/src/cpu.cpp" "$root/nnc/deepcabac/src/quant.cpp" \
  "$root/nnc/deepcabac/src/shadow_avx2.cpp" "$root/nnc/deepcabac/src/quant_avx2.cpp" \
  "$root/nnc/deepcabac/src/quant_avx512.cpp" \
  $(uname -m | grep -q x86_64 && echo -mavx2) \
  -pthread -o "$out/cabac_asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$out/cabac_asan" "$@"
