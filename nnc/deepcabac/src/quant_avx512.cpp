// Forward pass of the DQ trellis (§2.8) for CPUs with AVX-512F: the eight state costs are one 8 x double
// register; each of the three branches into a state is a permutation of the costs plus a permutation of the
// five candidate distances, and the first strict minimum is taken with the same comparisons as the
// portable pass (quant.cpp), so costs and decisions are bit-identical. Built with -mavx512f on x86-64 only
// (elsewhere a stub that declines); the caller checks the CPU first (cpu.h).
#include "trellis.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AVX512F__)
#define NNC_HAVE_AVX512_BUILD 1
#endif

#ifdef NNC_HAVE_AVX512_BUILD
#include <immintrin.h>

#include <cmath>
#endif

namespace nncabac {

#ifdef NNC_HAVE_AVX512_BUILD
namespace {

// spread[x]: the 8 bits of x moved to the even bit positions of a 16-bit word.
struct SpreadTable {
  uint16_t v[256];
};
constexpr SpreadTable make_spread() {
  SpreadTable t{};
  for (int x = 0; x < 256; ++x) {
    uint16_t r = 0;
    for (int b = 0; b < 8; ++b)
      if (x & (1 << b)) r = static_cast<uint16_t>(r | (1u << (2 * b)));
    t.v[x] = r;
  }
  return t;
}
constexpr SpreadTable kSpread = make_spread();

}  // namespace

bool trellis_forward_avx512(const float* xs, int64_t n, double dscale, uint16_t* decisions, double cost[8]) {
  __m512i prev[3], slot[3];
  for (int j = 0; j < 3; ++j) {
    alignas(64) int64_t p[8], s[8];
    for (int c = 0; c < 8; ++c) {
      p[c] = kTrellis.b[c][j].prev;
      s[c] = kTrellis.b[c][j].slot;
    }
    prev[j] = _mm512_load_si512(p);
    slot[j] = _mm512_load_si512(s);
  }
  __m512d C = _mm512_loadu_pd(cost);
  for (int64_t k = 0; k < n; ++k) {
    const double org = std::fabs(dscale * static_cast<double>(xs[k]));
    const int32_t m = first_candidate(org);
    // Distances to the slot-0..3 candidates (lanes 0..3) and to zero (lanes 4..7).
    const __m512d D = _mm512_insertf64x4(_mm512_castpd256_pd512(candidate_distances(org, m)), _mm256_set1_pd(org * org), 1);
    const __m512d c0 = _mm512_add_pd(_mm512_permutexvar_pd(prev[0], C), _mm512_permutexvar_pd(slot[0], D));
    const __m512d c1 = _mm512_add_pd(_mm512_permutexvar_pd(prev[1], C), _mm512_permutexvar_pd(slot[1], D));
    const __m512d c2 = _mm512_add_pd(_mm512_permutexvar_pd(prev[2], C), _mm512_permutexvar_pd(slot[2], D));
    // vminpd(a, b) = a < b ? a : b: the first strict minimum; the masks are computed beside the cost chain.
    const __m512d m01 = _mm512_min_pd(c1, c0);
    const __mmask8 t1 = _mm512_cmp_pd_mask(c1, c0, _CMP_LT_OQ);
    const __mmask8 t2 = _mm512_cmp_pd_mask(c2, m01, _CMP_LT_OQ);
    C = _mm512_min_pd(c2, m01);
    const unsigned u1 = static_cast<unsigned>(t1) & ~static_cast<unsigned>(t2) & 0xFFu;
    decisions[k] = static_cast<uint16_t>(kSpread.v[u1] | (kSpread.v[static_cast<unsigned>(t2) & 0xFFu] << 1));
  }
  _mm512_storeu_pd(cost, C);
  return true;
}
#else
bool trellis_forward_avx512(const float*, int64_t, double, uint16_t*, double*) { return false; }
#endif

}  // namespace nncabac
