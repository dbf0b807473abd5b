// The 8-state trellis of dependent quantization (NNC_BITSTREAM.md §2.8), shared by the quantizer builds.
// Internal header: internal linkage only (see scan.h).
#pragma once

#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "tables.h"

namespace nncabac {
namespace {

// Trellis structure (§2.8): every state c has one parity-0 predecessor p0 and one parity-1 predecessor p1.
// Candidate slots: 0..3 = the candidate x with x % 4 == slot, 4 = zero. From an even state the parity-0
// branch uses slot 0 (or zero) and the parity-1 branch slot 2; from an odd state slots 3 (or zero) and 1.
// For the tie rule the branches are tried in increasing predecessor order (non-zero before zero).
struct Branch {
  uint8_t prev;
  uint8_t slot;
};
struct TrellisTable {
  Branch b[8][3];
  constexpr TrellisTable() : b{} {
    int count[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int p = 0; p < 8; ++p) {
      const int c0 = kDqNext[p][0];
      const int c1 = kDqNext[p][1];
      const bool odd = (p & 1) != 0;
      b[c0][count[c0]++] = Branch{uint8_t(p), uint8_t(odd ? 3 : 0)};
      b[c0][count[c0]++] = Branch{uint8_t(p), 4};
      b[c1][count[c1]++] = Branch{uint8_t(p), uint8_t(odd ? 1 : 2)};
    }
  }
};
constexpr TrellisTable kTrellis{};

inline int32_t first_candidate(double org) {
  // max(1, trunc(org) - 1); org is bounded by the overflow check before this is called.
  const int32_t t = org >= 2147483647.0 ? 2147483647 : static_cast<int32_t>(org);
  return t - 1 > 1 ? t - 1 : 1;
}

#if defined(__AVX2__)
// Squared distances of org to the candidates m + ((s - m) & 3) for s = 0..3 (the slot-s candidate, §2.8),
// computed as the portable pass does (double subtraction and multiplication, no FMA).
inline __m256d candidate_distances(double org, int32_t m) {
  const __m128i M = _mm_set1_epi32(m);
  const __m128i cand = _mm_add_epi32(M, _mm_and_si128(_mm_sub_epi32(_mm_setr_epi32(0, 1, 2, 3), M), _mm_set1_epi32(3)));
  const __m256d d = _mm256_sub_pd(_mm256_set1_pd(org), _mm256_cvtepi32_pd(cand));
  return _mm256_mul_pd(d, d);
}
#endif

}  // namespace

// Forward (cost) pass of the lambda-0 DQ trellis over n values in coding order: decisions[k] gets the
// 2-bit branch choice of every state, cost[] (in: start costs) the final path costs. Returns false when this
// build has no AVX-512 version (nothing written). Call only when cpu_has_avx512f() (cpu.h).
bool trellis_forward_avx512(const float* xs, int64_t n, double dscale, uint16_t* decisions, double cost[8]);
// Same for AVX2; call only when cpu_has_avx2().
bool trellis_forward_avx2(const float* xs, int64_t n, double dscale, uint16_t* decisions, double cost[8]);

}  // namespace nncabac
