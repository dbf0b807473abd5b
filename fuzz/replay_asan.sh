#!/bin/bash
# Replay fuzz/out/*/ corpora + NNC_REPLAY_MUTATIONS (default 20000) fresh mutations per harness under the
# ASan/UBSan core.   fuzz/replay_asan.sh [decode inspect check update fl]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/asan_env.sh"
cd "$here"
"${PYTHON:-python}" replay_asan.py "$@" | tee -a "$here/out/replay_asan.jsonl"
