# Sourced by the fuzz scripts (needs $here = fuzz/ and $root = the repository): load the ASan/UBSan build of
# the C++ core into Python. build_asan.sh runs every time: its incremental build is a no-op when the build is
# current and rebuilds it after a change to the core (a stale build would test old code).
so=$("$here/build_asan.sh")
export NNC_CORE_SO="$so"
# libstdc++ too: otherwise ASan cannot find the real __cxa_throw when a C++ exception is thrown
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
# leaks: CPython never frees its arenas; allocator_may_return_null: a huge allocation becomes a Python
# MemoryError (reported by the harness as a finding) instead of an ASan abort without a Python stack.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
