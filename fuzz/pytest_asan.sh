#!/bin/bash
# Run hostile-input test files with the ASan/UBSan core loaded (default: the mutation, hostile-input,
# limits and regression suites).   fuzz/pytest_asan.sh [pytest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/asan_env.sh"
cd "$root"
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  # the peak-memory test measures VmHWM, which ASan's shadow memory distorts
  args=(-q -p no:cacheprovider tests/test_mutations.py tests/test_hostile_input.py tests/test_limits.py
        tests/test_fuzz_regressions.py -k "not huge_claim_fails_fast")
fi
exec "${PYTHON:-python}" - "${args[@]}" <<'PY'
import sys
sys.path.insert(0, "fuzz")
import _common
so = _common.load_core_override()
_common.check_core(so)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
PY
