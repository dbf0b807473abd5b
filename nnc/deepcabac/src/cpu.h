// Run-time CPU feature checks for the SIMD builds (shadow_avx2.cpp, quant_avx2.cpp, quant_avx512.cpp).
// Defined in cpu.cpp, which is compiled for the baseline instruction set: a check must never run code built
// for the instructions it is checking. NNC_DISABLE_AVX2=1 / NNC_DISABLE_AVX512=1 in the environment make the
// checks fail, which forces the portable code (the tests compare both).
#pragma once

namespace nncabac {

bool cpu_has_avx2();
bool cpu_has_avx512f();

}  // namespace nncabac
