// Run-time CPU feature checks (see cpu.h). Compiled without -m flags.
#include "cpu.h"

#include <cstdlib>

namespace nncabac {
namespace {

bool disabled(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' && *v != '0';
}

}  // namespace

bool cpu_has_avx2() {
  static const bool has = [] {
    if (disabled("NNC_DISABLE_AVX2")) return false;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    return __builtin_cpu_supports("avx2") != 0;
#else
    return false;
#endif
  }();
  return has;
}

bool cpu_has_avx512f() {
  static const bool has = [] {
    if (disabled("NNC_DISABLE_AVX512")) return false;
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    return __builtin_cpu_supports("avx512f") != 0;
#else
    return false;
#endif
  }();
  return has;
}

}  // namespace nncabac
