#!/bin/bash
# Replay fuzz/out/*/ corpora + NNC_REPLAY_MUTATIONS (default 20000) fresh mutations per harness under the
# ASan/UBSan core.   fuzz/replay_asan.sh [decode inspect check update fl]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
so=$(ls "$root"/build/asan/_core*.so 2>/dev/null || "$here/build_asan.sh")
export NNC_CORE_SO="$so"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd "$here"
"${PYTHON:-python}" replay_asan.py "$@" | tee -a "$here/out/replay_asan.jsonl"
