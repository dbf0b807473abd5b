#!/bin/bash
# The campaign behind docs/fuzzing.md: coverage-guided atheris runs on the Release core in two lanes
# (2 cores), then fuzz/replay_asan.py replays every corpus entry plus random mutations of it under the
# ASan/UBSan core. Figures: fuzz/summary.py.
set -u
here=$(cd "$(dirname "$0")" && pwd)
export NNC_FUZZ_ASAN=0
( "$here/run.sh" decode "${DECODE_RUNS:-450000}" -max_total_time=1500 >/dev/null 2>&1
  "$here/run.sh" update "${UPDATE_RUNS:-150000}" -max_total_time=700 >/dev/null 2>&1 ) &
( "$here/run.sh" inspect "${INSPECT_RUNS:-300000}" -max_total_time=1200 >/dev/null 2>&1
  "$here/run.sh" check "${CHECK_RUNS:-200000}" -max_total_time=900 >/dev/null 2>&1 ) &
wait
