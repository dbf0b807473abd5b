// Forward pass of the DQ trellis (§2.8) for CPUs with AVX2 but without AVX-512F (quant_avx512.cpp has the
// one-register version). The trellis has a structure that suits two 4 x double registers: states 0..3 are
// entered only from the even states {0, 2, 4, 6} and states 4..7 only from the odd ones, so with the costs
// kept as E = (c0, c2, c4, c6) and O = (c1, c3, c5, c7) every branch is a permutation inside one register.
// Same comparisons as the portable pass (first strict minimum), so costs and decisions are bit-identical.
// Built with -mavx2 on x86-64 only (elsewhere a stub that declines); the caller checks the CPU first (cpu.h).
#include "trellis.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AVX2__)
#define NNC_HAVE_AVX2_TRELLIS 1
#endif

#ifdef NNC_HAVE_AVX2_TRELLIS
#include <immintrin.h>

#include <cmath>
#endif

namespace nncabac {

#ifdef NNC_HAVE_AVX2_TRELLIS
namespace {

// The branch table this layout relies on (checked at compile time against kTrellis): for new state c the
// predecessors (in branch order) and candidate slots.
constexpr bool layout_matches() {
  // Predecessor of branch j into new state c, as an index into E (c < 4) or O (c >= 4).
  constexpr int pe[3][4] = {{0, 1, 0, 1}, {0, 1, 2, 3}, {2, 3, 2, 3}};
  constexpr int po[3][4] = {{1, 0, 1, 0}, {3, 2, 1, 0}, {3, 2, 3, 2}};
  constexpr int slots[3][8] = {{0, 0, 2, 2, 1, 1, 3, 3}, {4, 4, 0, 0, 3, 3, 4, 4}, {2, 2, 4, 4, 4, 4, 1, 1}};
  for (int j = 0; j < 3; ++j)
    for (int c = 0; c < 8; ++c) {
      const int prev = c < 4 ? 2 * pe[j][c] : 2 * po[j][c - 4] + 1;
      if (kTrellis.b[c][j].prev != prev || kTrellis.b[c][j].slot != slots[j][c]) return false;
    }
  return true;
}
static_assert(layout_matches(), "the AVX2 trellis layout does not match the DQ state machine");

// spread[x]: the 4 bits of x moved to the even bit positions of an 8-bit value.
constexpr uint8_t kSpread4[16] = {0x00, 0x01, 0x04, 0x05, 0x10, 0x11, 0x14, 0x15,
                                  0x40, 0x41, 0x44, 0x45, 0x50, 0x51, 0x54, 0x55};

// Decision bits of one 4-state half: 2 bits per state (see relax() in quant.cpp).
inline uint32_t half_decisions(__m256d c0, __m256d c1, __m256d c2, __m256d m01) {
  const unsigned t1 = static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(c1, c0, _CMP_LT_OQ)));
  const unsigned t2 = static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(c2, m01, _CMP_LT_OQ)));
  return static_cast<uint32_t>(kSpread4[t1 & ~t2 & 15u] | (kSpread4[t2] << 1));
}

}  // namespace

bool trellis_forward_avx2(const float* xs, int64_t n, double dscale, uint16_t* decisions, double cost[8]) {
  __m256d E = _mm256_setr_pd(cost[0], cost[2], cost[4], cost[6]);
  __m256d O = _mm256_setr_pd(cost[1], cost[3], cost[5], cost[7]);
  for (int64_t k = 0; k < n; ++k) {
    const double org = std::fabs(dscale * static_cast<double>(xs[k]));
    const int32_t m = first_candidate(org);
    const __m256d dd = candidate_distances(org, m);  // (d0, d1, d2, d3): distances to the slot-0..3 candidates
    const __m256d z = _mm256_set1_pd(org * org);  // slot 4: the zero candidate
    // Distances per branch for new states 0..3 (A) and 4..7 (B).
    const __m256d a0 = _mm256_movedup_pd(dd);                                     // d0 d0 d2 d2
    const __m256d a1 = _mm256_blend_pd(z, _mm256_permute4x64_pd(dd, 0x00), 0xC);  // z  z  d0 d0
    const __m256d a2 = _mm256_blend_pd(z, _mm256_permute4x64_pd(dd, 0xAA), 0x3);  // d2 d2 z  z
    const __m256d b0 = _mm256_permute_pd(dd, 0xF);                                // d1 d1 d3 d3
    const __m256d b1 = _mm256_blend_pd(z, _mm256_permute4x64_pd(dd, 0xFF), 0x3);  // d3 d3 z  z
    const __m256d b2 = _mm256_blend_pd(z, _mm256_permute4x64_pd(dd, 0x55), 0xC);  // z  z  d1 d1
    // Branch costs: predecessor costs permuted inside E or O, plus the distances.
    const __m256d ca0 = _mm256_add_pd(_mm256_permute4x64_pd(E, 0x44), a0);  // E0 E1 E0 E1
    const __m256d ca1 = _mm256_add_pd(E, a1);                               // E0 E1 E2 E3
    const __m256d ca2 = _mm256_add_pd(_mm256_permute4x64_pd(E, 0xEE), a2);  // E2 E3 E2 E3
    const __m256d cb0 = _mm256_add_pd(_mm256_permute4x64_pd(O, 0x11), b0);  // O1 O0 O1 O0
    const __m256d cb1 = _mm256_add_pd(_mm256_permute4x64_pd(O, 0x1B), b1);  // O3 O2 O1 O0
    const __m256d cb2 = _mm256_add_pd(_mm256_permute4x64_pd(O, 0xBB), b2);  // O3 O2 O3 O2
    // vminpd(a, b) = a < b ? a : b: the first strict minimum.
    const __m256d ma = _mm256_min_pd(ca1, ca0);
    const __m256d mb = _mm256_min_pd(cb1, cb0);
    const __m256d A = _mm256_min_pd(ca2, ma);  // new costs of states 0..3
    const __m256d B = _mm256_min_pd(cb2, mb);  // new costs of states 4..7
    decisions[k] = static_cast<uint16_t>(half_decisions(ca0, ca1, ca2, ma) | (half_decisions(cb0, cb1, cb2, mb) << 8));
    // Back to the even/odd layout: E = (A0, A2, B0, B2), O = (A1, A3, B1, B3).
    E = _mm256_permute4x64_pd(_mm256_unpacklo_pd(A, B), 0xD8);
    O = _mm256_permute4x64_pd(_mm256_unpackhi_pd(A, B), 0xD8);
  }
  alignas(32) double e[4], o[4];
  _mm256_store_pd(e, E);
  _mm256_store_pd(o, O);
  for (int i = 0; i < 4; ++i) {
    cost[2 * i] = e[i];
    cost[2 * i + 1] = o[i];
  }
  return true;
}
#else
bool trellis_forward_avx2(const float*, int64_t, double, uint16_t*, double*) { return false; }
#endif

}  // namespace nncabac
