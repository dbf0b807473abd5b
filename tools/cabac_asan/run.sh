#!/bin/sh
# Build the DeepCABAC core with AddressSanitizer + UndefinedBehaviorSanitizer and run the hostile-input
# driver. Usage: tools/cabac_asan/run.sh [sessions] [mutations-per-session]
# NNC_NO_SANITIZE=1 builds it without sanitizers at -O2 instead (same outcomes and digest, much faster;
# tests/test_core_digest.py uses that).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${TMPDIR:-/tmp}/nnc_cabac_asan
mkdir -p "$out"
mode="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
exe="$out/cabac_asan"
if [ "${NNC_NO_SANITIZE:-0}" = 1 ]; then mode="-O2"; exe="$out/cabac_plain"; fi
${CXX:-g++} -std=c++17 $mode \
  -I"$root/nnc/deepcabac/src" \
  "$here/driver.cpp" "$root/nnc/deepcabac/src/coder.cpp" "$root/nnc/deepcabac/src/cpu.cpp" "$root/nnc/deepcabac/src/quant.cpp" \
  "$root/nnc/deepcabac/src/shadow_avx2.cpp" "$root/nnc/deepcabac/src/quant_avx2.cpp" \
  "$root/nnc/deepcabac/src/quant_avx512.cpp" \
  $(uname -m | grep -q x86_64 && echo -mavx2) \
  -pthread -o "$exe"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$exe" "$@"
