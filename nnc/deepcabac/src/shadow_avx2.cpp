// Parameter-optimisation pass (§3.6) for CPUs with AVX2: the nine shadow copies of a context live in one
// 16 x int16 register (lanes 9..15 are idle copies of set 0), so one bin updates all nine models with a
// handful of vector instructions instead of eight SIMD lanes plus a scalar ninth (engine.h). Built with
// -mavx2 on x86-64 only (elsewhere shadow_best_avx2() is a stub that declines); the caller checks the CPU
// first (cpu.h).
//
// This file must not include engine.h: its inline functions have external linkage, and a copy compiled
// with AVX2 could be picked by the linker for the portable code. scan.h has internal linkage throughout.
#include "shadow.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AVX2__)
#define NNC_HAVE_AVX2_BUILD 1
#endif

#ifdef NNC_HAVE_AVX2_BUILD
#include <immintrin.h>

#include <vector>

#include "est_bits.h"
#include "scan.h"
#include "tables.h"
#endif

namespace nncabac {

#ifdef NNC_HAVE_AVX2_BUILD
namespace {

struct alignas(32) ShadowAvx2 {
  // Same accounting contract as engine.h's ShadowContext: per-bin rates go to 32-bit accumulators, moved
  // to 64-bit totals at least every kFlushBins bins (a bin costs < 2^18 units).
  static constexpr uint32_t kFlushBins = 16384;
  int16_t p[16];
  int16_t fast[16];
  alignas(32) uint32_t acc[8];  // lanes 0..7
  uint32_t acc8;    // lane 8
  uint64_t cost[9];

  void init() {
    reset_states();
    for (int e = 0; e < 8; ++e) acc[e] = 0;
    acc8 = 0;
    for (int e = 0; e < 9; ++e) cost[e] = 0;
  }
  void reset_states() {
    for (int e = 0; e < 16; ++e) {
      const InitSet& s = kInitSets[e < 9 ? e : 0];
      p[e] = s.p0;
      fast[e] = s.s0;
    }
  }
  void flush() {
    for (int e = 0; e < 8; ++e) {
      cost[e] += acc[e];
      acc[e] = 0;
    }
    cost[8] += acc8;
    acc8 = 0;
  }

  // kAdaptCurve[i] for i in 0..31 as max(2512 - 224 i, 1424 - 96 i, 1040 - 64 i, 64), and 0 for i = 31.
  static inline __m256i curve(__m256i i) {
    const __m256i i32 = _mm256_slli_epi16(i, 5);
    const __m256i i64 = _mm256_slli_epi16(i, 6);
    const __m256i a = _mm256_sub_epi16(_mm256_set1_epi16(2512), _mm256_sub_epi16(_mm256_slli_epi16(i, 8), i32));
    const __m256i b = _mm256_sub_epi16(_mm256_set1_epi16(1424), _mm256_add_epi16(i64, i32));
    const __m256i c = _mm256_sub_epi16(_mm256_set1_epi16(1040), i64);
    const __m256i m = _mm256_max_epi16(_mm256_max_epi16(a, b), _mm256_max_epi16(c, _mm256_set1_epi16(64)));
    return _mm256_andnot_si256(_mm256_cmpeq_epi16(i, _mm256_set1_epi16(31)), m);
  }

  template <unsigned kBin>
  inline void account_bin() {
    // x >> shift(e) == mulhi_u16(x, 2^(16 - shift(e))) for 0 <= x < 2^16; idle lanes use set 0's shifts.
    const __m256i mul_fast = _mm256_setr_epi16(1 << 11, 1 << 11, 1 << 11, 1 << 12, 1 << 10, 1 << 10, 1 << 10,
                                               1 << 9, 1 << 9, 1 << 11, 1 << 11, 1 << 11, 1 << 11, 1 << 11,
                                               1 << 11, 1 << 11);
    const __m256i mul_slow = _mm256_setr_epi16(1 << 12, 1 << 12, 1 << 12, 1 << 11, 1 << 10, 1 << 10, 1 << 10,
                                               1 << 11, 1 << 11, 1 << 12, 1 << 12, 1 << 12, 1 << 12, 1 << 12,
                                               1 << 12, 1 << 12);
    const __m256i sixteen = _mm256_set1_epi16(16);
    __m256i P = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
    __m256i F = _mm256_load_si256(reinterpret_cast<const __m256i*>(fast));

    // Rates kEstBits[512 + (P >> 3)][kBin] of lanes 0..8.
    const __m256i I = _mm256_add_epi16(_mm256_srai_epi16(P, 3), _mm256_set1_epi16(512));  // 0..1023
    // Eight scalar loads (indices taken out with two 64-bit moves) beat a hardware gather here.
    const __m128i lo128 = _mm256_castsi256_si128(I);
    const uint64_t lo = static_cast<uint64_t>(_mm_cvtsi128_si64(lo128));
    const uint64_t hi = static_cast<uint64_t>(_mm_extract_epi64(lo128, 1));
    const uint32_t* col = &kEstBits[0][kBin];
    const __m128i r_lo = _mm_insert_epi32(
        _mm_insert_epi32(_mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(col[2 * (lo & 0xFFFF)])),
                                          static_cast<int>(col[2 * ((lo >> 16) & 0xFFFF)]), 1),
                         static_cast<int>(col[2 * ((lo >> 32) & 0xFFFF)]), 2),
        static_cast<int>(col[2 * (lo >> 48)]), 3);
    const __m128i r_hi = _mm_insert_epi32(
        _mm_insert_epi32(_mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(col[2 * (hi & 0xFFFF)])),
                                          static_cast<int>(col[2 * ((hi >> 16) & 0xFFFF)]), 1),
                         static_cast<int>(col[2 * ((hi >> 32) & 0xFFFF)]), 2),
        static_cast<int>(col[2 * (hi >> 48)]), 3);
    __m256i* A = reinterpret_cast<__m256i*>(acc);
    _mm256_store_si256(A, _mm256_add_epi32(_mm256_load_si256(A), _mm256_set_m128i(r_hi, r_lo)));
    const unsigned i8 = static_cast<uint16_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(I, 1)));
    acc8 += col[2 * i8];

    __m256i S = _mm256_sub_epi16(P, _mm256_slli_epi16(F, 4));
    if (kBin) {
      const __m256i fi = _mm256_add_epi16(_mm256_srai_epi16(F, 3), sixteen);
      const __m256i si = _mm256_add_epi16(_mm256_srai_epi16(S, 7), sixteen);
      F = _mm256_add_epi16(F, _mm256_mulhi_epu16(curve(fi), mul_fast));
      S = _mm256_add_epi16(S, _mm256_mulhi_epu16(curve(si), mul_slow));
    } else {
      const __m256i zero = _mm256_setzero_si256();
      const __m256i fi = _mm256_add_epi16(_mm256_srai_epi16(_mm256_sub_epi16(zero, F), 3), sixteen);
      const __m256i si = _mm256_add_epi16(_mm256_srai_epi16(_mm256_sub_epi16(zero, S), 7), sixteen);
      F = _mm256_sub_epi16(F, _mm256_mulhi_epu16(curve(fi), mul_fast));
      S = _mm256_sub_epi16(S, _mm256_mulhi_epu16(curve(si), mul_slow));
    }
    F = _mm256_srai_epi16(_mm256_slli_epi16(F, 8), 8);  // 8-bit register semantics
    P = _mm256_add_epi16(S, _mm256_slli_epi16(F, 4));
    _mm256_store_si256(reinterpret_cast<__m256i*>(p), P);
    _mm256_store_si256(reinterpret_cast<__m256i*>(fast), F);
  }
  inline void account(unsigned bin) {
    if (bin)
      account_bin<1>();
    else
      account_bin<0>();
  }
};

}  // namespace

bool shadow_best_avx2(const ShadowTask& t, uint8_t* best) {
  std::vector<ShadowAvx2> shadow(static_cast<size_t>(context_count(t.spec->unary_length)));
  shadow_best(t, shadow.data(), best);
  return true;
}
#else
bool shadow_best_avx2(const ShadowTask&, uint8_t*) { return false; }
#endif

}  // namespace nncabac
