#!/bin/bash
# C++-only timing of the DeepCABAC core on a real model (docs/performance.md, "Core alone").
#   benchmarks/core/run.sh [model] [qp]        model: minilm (default), ocr_rec, ... or a model file
# Builds the harness with the same flags as the extension (SIMD files with their own -m flags), records the
# model's sessions with nnc.encode (DQ on and off), prints a table (one row per setting) and writes the rows
# to benchmarks/results/core_<model>_qp<qp>.json (or $NNC_CORE_JSON).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../nnc/deepcabac/src" && pwd)
model=${1:-minilm}
qp=${2:--32}
out=${TMPDIR:-/tmp}/nnc_bench_core
mkdir -p "$out"
flags="-std=c++17 -O3 -ffp-contract=off -fno-math-errno -I$src"
simd2= simd512=
if [ "$(uname -m)" = x86_64 ]; then simd2=-mavx2; simd512=-mavx512f; fi
${CXX:-g++} $flags $simd2 -c "$src/shadow_avx2.cpp" -o "$out/shadow_avx2.o"
${CXX:-g++} $flags $simd2 -c "$src/quant_avx2.cpp" -o "$out/quant_avx2.o"
${CXX:-g++} $flags $simd512 -c "$src/quant_avx512.cpp" -o "$out/quant_avx512.o"
${CXX:-g++} $flags "$here/bench_core.cpp" "$src/coder.cpp" "$src/cpu.cpp" "$src/quant.cpp" "$out/shadow_avx2.o" \
  "$out/quant_avx2.o" "$out/quant_avx512.o" -pthread -o "$out/bench_core"
name=$(basename "$model" | tr -c 'A-Za-z0-9_.\n-' '_')
json=${NNC_CORE_JSON:-$here/../results/core_${name}_qp${qp}.json}
for dq in on off; do
  flag=""; [ "$dq" = off ] && flag="--no-dq"
  python "$here/dump_sessions.py" "$model" "$out/$name.$dq.raw" --qp "$qp" $flag >&2
  printf '{"model": "%s", "qp": %s, "dq": "%s", "core": ' "$name" "$qp" "$dq"
  "$out/bench_core" "$out/$name.$dq.raw" 3 | tr -d '\n'
  echo "}"
done | python "$here/table.py" "$json"
