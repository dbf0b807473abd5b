// Binary arithmetic coding engines and the adaptive probability model of DeepCABAC.
// Written from NNC_BITSTREAM.md §3.1-§3.3.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "est_bits.h"
#include "tables.h"

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif

#if defined(_MSC_VER)
#define NNC_INLINE __forceinline
#define NNC_LIKELY(x) (x)
#else
#define NNC_INLINE inline __attribute__((always_inline))
#define NNC_LIKELY(x) __builtin_expect(!!(x), 1)
#endif

namespace nncabac {

// ---------------------------------------------------------------------------------------------
// Probability model: a fast and a slow estimator combined in P = slow + 16 * fast.
//
// The update is table-driven (tables below, derived from kAdaptCurve and the shifts of the initialisation
// sets): the fast estimator's successor is looked up, the slow estimator's step is read pre-shifted and
// signed. This is arithmetically identical to stepping by (kAdaptCurve[..] >> shift) with a sign, but needs
// no multiplications, variable shifts or sign selects. Reachable states keep both table indices in 0..31
// and |P| < 3900 (checked exhaustively from all nine initialisation sets: tests/test_context_states.py).
// Each table row holds both bins, so a context's pointer into its row covers every index it uses.

// kFastNext.v[fast_shift - 4][256 * bin + uint8_t(fast)] = next fast estimator (8-bit register semantics).
struct FastNextTable {
  int8_t v[4][512];
};
constexpr FastNextTable make_fast_next() {
  FastNextTable t{};
  for (int sh = 4; sh <= 7; ++sh)
    for (int bin = 0; bin < 2; ++bin)
      for (int b = 0; b < 256; ++b) {
        const int f = b < 128 ? b : b - 256;
        const int g = bin ? 1 : -1;
        const int idx = 16 + ((g * f) >> 3);
        const int step = (idx >= 0 && idx < 32) ? (kAdaptCurve[idx] >> sh) : 0;
        const int n = (f + g * step) & 0xFF;
        t.v[sh - 4][256 * bin + b] = static_cast<int8_t>(n >= 128 ? n - 256 : n);
      }
  return t;
}
alignas(64) inline constexpr FastNextTable kFastNext = make_fast_next();

// kSlowDelta.v[slow_shift - 4][32 * bin + 16 + ((S + bin - 1) >> 7)] = signed change of the slow estimator S.
// For bin 1 that is +(kAdaptCurve[16 + (S >> 7)] >> shift). For bin 0 it is -(kAdaptCurve[16 + ((-S) >> 7)]
// >> shift), and (-S) >> 7 == -1 - ((S - 1) >> 7) (as -S == ~(S - 1)), so both bins index their row with
// (S + bin - 1) >> 7 and the sign is part of the entry.
struct SlowDeltaTable {
  int16_t v[3][64];
};
constexpr SlowDeltaTable make_slow_delta() {
  SlowDeltaTable t{};
  for (int sh = 4; sh <= 6; ++sh)
    for (int k = 0; k < 32; ++k) {
      t.v[sh - 4][32 + k] = static_cast<int16_t>(kAdaptCurve[k] >> sh);
      t.v[sh - 4][k] = static_cast<int16_t>(-(kAdaptCurve[31 - k] >> sh));
    }
  return t;
}
alignas(64) inline constexpr SlowDeltaTable kSlowDelta = make_slow_delta();

// LPS sub-range by signed column: kLpsSigned.v[(R & 0xE0) * 2 + 32 + (P >> 7)] = kLpsRange[(R & 0xE0) + |P >> 7|].
// Saves the absolute value on the way from P to the table.
struct LpsSignedTable {
  uint8_t v[512];
};
constexpr LpsSignedTable make_lps_signed() {
  LpsSignedTable t{};
  for (int cls = 0; cls < 8; ++cls)
    for (int q = -32; q < 32; ++q) {
      const int a = q < 0 ? -q : q;
      t.v[cls * 64 + 32 + q] = a < 32 ? kLpsRange[cls * 32 + a] : kLpsRange[cls * 32 + 31];
    }
  return t;
}
alignas(64) inline constexpr LpsSignedTable kLpsSigned = make_lps_signed();

// Renormalisation shift after an LPS: the n with 256 <= lps << n < 512.
struct LpsShiftTable {
  uint8_t v[256];
};
constexpr LpsShiftTable make_lps_shift() {
  LpsShiftTable t{};
  for (int l = 1; l < 256; ++l) {
    int n = 0;
    while ((l << n) < 256) ++n;
    t.v[l] = static_cast<uint8_t>(n);
  }
  return t;
}
alignas(64) inline constexpr LpsShiftTable kLpsShift = make_lps_shift();

struct Context {
  int16_t p;       // combined state; MPS = (p >= 0)
  int16_t fast;    // fast estimator (an 8-bit quantity)
  int16_t eco;     // initialisation set in use (restored by reset())
  const int8_t* fast_next;    // kFastNext row of this context's fast shift
  const int16_t* slow_delta;  // &kSlowDelta.v[slow shift - 4][16]

  void init(unsigned e) {
    const InitSet& s = kInitSets[e];
    p = s.p0;
    fast = s.s0;
    fast_next = &kFastNext.v[s.fast_shift - 4][0];
    slow_delta = &kSlowDelta.v[s.slow_shift - 4][16];
    eco = static_cast<int16_t>(e);
  }
  void reset() {
    p = kInitSets[eco].p0;
    fast = kInitSets[eco].s0;
  }
  unsigned mps() const { return p >= 0 ? 1u : 0u; }
  // LPS sub-range for range R.
  NNC_INLINE uint32_t lps(uint32_t range) const {
    return kLpsSigned.v[2 * (range & 0xE0u) + 32 + (p >> 7)];
  }
  NNC_INLINE void update(unsigned bin) {
    const int f = fast;
    const int s = p - 16 * f;
    const int b = static_cast<int>(bin);
    const int fn = fast_next[(bin << 8) | static_cast<uint8_t>(f)];
    const int sn = s + slow_delta[32 * b + ((s + b - 1) >> 7)];
    fast = static_cast<int16_t>(fn);
    p = static_cast<int16_t>(sn + 16 * fn);
  }
};

// Nine shadow copies of one context (one per initialisation set) with accumulated rate, used by the
// encoder to choose the signalled ecoIdx (§3.6). Sets 0..7 are updated together in 16-bit SIMD lanes
// (SSE2) where available, set 8 in scalar code. All reachable states keep |P| < 4096 and |S0| < 128, so
// the 16-bit lane arithmetic is exact.
#if defined(__SSE2__) || defined(_M_X64)
#define NNC_SHADOW_SSE2 1
#endif

constexpr uint32_t max_est_bits() {
  uint32_t m = 0;
  for (const auto& row : kEstBits)
    for (uint32_t v : row) m = v > m ? v : m;
  return m;
}

struct ShadowContext {
  // Per-bin rates are summed in 32-bit accumulators (acc, acc8) and moved into the 64-bit totals (cost) by
  // flush(). A bin costs at most kEstBits[0][1] = 237777 < 2^18 units, so up to kFlushBins = 2^14 bins may
  // be accounted between two flushes without overflow; the caller flushes at least that often.
  static constexpr uint32_t kFlushBins = 16384;
  static_assert(uint64_t(max_est_bits()) * kFlushBins <= 0xFFFFFFFFull, "32-bit rate accumulators overflow");
#ifdef NNC_SHADOW_SSE2
  alignas(16) int16_t p[8];
  alignas(16) int16_t fast[8];
  alignas(16) uint32_t acc[8];
#else
  int16_t p[8];
  int16_t fast[8];
  uint32_t acc[8];
#endif
  int32_t p8;
  int32_t fast8;
  uint32_t acc8;
  uint64_t cost[9];

  void init() {
    reset_states();
    for (int e = 0; e < 9; ++e) cost[e] = 0;
    for (int e = 0; e < 8; ++e) acc[e] = 0;
    acc8 = 0;
  }
  void reset_states() {
    for (int e = 0; e < 8; ++e) {
      p[e] = kInitSets[e].p0;
      fast[e] = kInitSets[e].s0;
    }
    p8 = kInitSets[8].p0;
    fast8 = kInitSets[8].s0;
  }
  void flush() {
    for (int e = 0; e < 8; ++e) {
      cost[e] += acc[e];
      acc[e] = 0;
    }
    cost[8] += acc8;
    acc8 = 0;
  }

  template <unsigned kBin>
  NNC_INLINE void account_bin() {
#ifdef NNC_SHADOW_SSE2
    simd_lanes<kBin>();
#else
    for (int e = 0; e < 8; ++e) {
      int pe = p[e], f = fast[e];
      scalar_lane<kBin>(acc[e], e, pe, f);
      p[e] = static_cast<int16_t>(pe);
      fast[e] = static_cast<int16_t>(f);
    }
#endif
    scalar_lane<kBin>(acc8, 8, p8, fast8);
  }
  NNC_INLINE void account(unsigned bin) {
    if (bin)
      account_bin<1>();
    else
      account_bin<0>();
  }

 private:
  template <unsigned kBin>
  NNC_INLINE void scalar_lane(uint32_t& acc_e, int e, int32_t& pe, int32_t& fe) {
    acc_e += kEstBits[512 + (pe >> 3)][kBin];
    int f = fe;
    int s = pe - 16 * f;
    const int fs = kInitSets[e].fast_shift, ss = kInitSets[e].slow_shift;
    if (kBin) {
      f += kAdaptCurve[16 + (f >> 3)] >> fs;
      s += kAdaptCurve[16 + (s >> 7)] >> ss;
    } else {
      f -= kAdaptCurve[16 + ((-f) >> 3)] >> fs;
      s -= kAdaptCurve[16 + ((-s) >> 7)] >> ss;
    }
    f = static_cast<int8_t>(f);
    fe = f;
    pe = static_cast<int16_t>(s + 16 * f);
  }

#ifdef NNC_SHADOW_SSE2
  // CURVE[i] for i in 0..31 as max(2512 - 224 i, 1424 - 96 i, 1040 - 64 i, 64), and 0 for i = 31.
  static NNC_INLINE __m128i curve16(__m128i i) {
    const __m128i i32 = _mm_slli_epi16(i, 5);
    const __m128i i64 = _mm_slli_epi16(i, 6);
    const __m128i a = _mm_sub_epi16(_mm_set1_epi16(2512), _mm_sub_epi16(_mm_slli_epi16(i, 8), i32));
    const __m128i b = _mm_sub_epi16(_mm_set1_epi16(1424), _mm_add_epi16(i64, i32));
    const __m128i c = _mm_sub_epi16(_mm_set1_epi16(1040), i64);
    __m128i m = _mm_max_epi16(_mm_max_epi16(a, b), _mm_max_epi16(c, _mm_set1_epi16(64)));
    return _mm_andnot_si128(_mm_cmpeq_epi16(i, _mm_set1_epi16(31)), m);
  }

  template <unsigned kBin>
  NNC_INLINE void simd_lanes() {
    // x >> shift(e) == mulhi_u16(x, 2^(16 - shift(e))) for 0 <= x < 2^16.
    const __m128i mul_fast = _mm_setr_epi16(1 << 11, 1 << 11, 1 << 11, 1 << 12, 1 << 10, 1 << 10, 1 << 10, 1 << 9);
    const __m128i mul_slow = _mm_setr_epi16(1 << 12, 1 << 12, 1 << 12, 1 << 11, 1 << 10, 1 << 10, 1 << 10, 1 << 11);
    const __m128i sixteen = _mm_set1_epi16(16);
    __m128i P = _mm_load_si128(reinterpret_cast<const __m128i*>(p));
    __m128i F = _mm_load_si128(reinterpret_cast<const __m128i*>(fast));

    // Rates of the eight lanes: 32-bit table loads gathered into two vectors of 4 x uint32.
    const __m128i I = _mm_add_epi16(_mm_srai_epi16(P, 3), _mm_set1_epi16(512));  // 0..1023
    const uint32_t* col = &kEstBits[0][kBin];
#if defined(__x86_64__) || defined(_M_X64)
    // Lane indices via two 64-bit moves and shifts (cheaper than eight pextrw).
    const uint64_t lo = static_cast<uint64_t>(_mm_cvtsi128_si64(I));
    const uint64_t hi = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_unpackhi_epi64(I, I)));
#define NNC_LANE(k) ((((k) < 4 ? lo : hi) >> (16 * ((k) & 3))) & 0xFFFFu)
#else
#define NNC_LANE(k) static_cast<unsigned>(_mm_extract_epi16(I, k))
#endif
#define NNC_RATE(k) _mm_cvtsi32_si128(static_cast<int>(col[2 * NNC_LANE(k)]))
    const __m128i r0 = _mm_unpacklo_epi64(_mm_unpacklo_epi32(NNC_RATE(0), NNC_RATE(1)),
                                          _mm_unpacklo_epi32(NNC_RATE(2), NNC_RATE(3)));
    const __m128i r1 = _mm_unpacklo_epi64(_mm_unpacklo_epi32(NNC_RATE(4), NNC_RATE(5)),
                                          _mm_unpacklo_epi32(NNC_RATE(6), NNC_RATE(7)));
#undef NNC_RATE
#undef NNC_LANE
    __m128i* A = reinterpret_cast<__m128i*>(acc);
    _mm_store_si128(A, _mm_add_epi32(_mm_load_si128(A), r0));
    _mm_store_si128(A + 1, _mm_add_epi32(_mm_load_si128(A + 1), r1));

    __m128i S = _mm_sub_epi16(P, _mm_slli_epi16(F, 4));
    if (kBin) {
      const __m128i fi = _mm_add_epi16(_mm_srai_epi16(F, 3), sixteen);
      const __m128i si = _mm_add_epi16(_mm_srai_epi16(S, 7), sixteen);
      F = _mm_add_epi16(F, _mm_mulhi_epu16(curve16(fi), mul_fast));
      S = _mm_add_epi16(S, _mm_mulhi_epu16(curve16(si), mul_slow));
    } else {
      const __m128i zero = _mm_setzero_si128();
      const __m128i fi = _mm_add_epi16(_mm_srai_epi16(_mm_sub_epi16(zero, F), 3), sixteen);
      const __m128i si = _mm_add_epi16(_mm_srai_epi16(_mm_sub_epi16(zero, S), 7), sixteen);
      F = _mm_sub_epi16(F, _mm_mulhi_epu16(curve16(fi), mul_fast));
      S = _mm_sub_epi16(S, _mm_mulhi_epu16(curve16(si), mul_slow));
    }
    F = _mm_srai_epi16(_mm_slli_epi16(F, 8), 8);  // 8-bit register semantics
    P = _mm_add_epi16(S, _mm_slli_epi16(F, 4));
    _mm_store_si128(reinterpret_cast<__m128i*>(p), P);
    _mm_store_si128(reinterpret_cast<__m128i*>(fast), F);
  }
#endif
};

// ---------------------------------------------------------------------------------------------
// Arithmetic encoder (§3.2).
class ArithEncoder {
 public:
  explicit ArithEncoder(std::vector<uint8_t>* sink) : out_(sink) {}

  void start() {
    low_ = 0;
    range_ = 510;
    bits_left_ = 23;
    pending_ = 0;
    carry_byte_ = 0xFF;
  }

  NNC_INLINE void encode(unsigned bin, Context& c) {
    // Branch-free: whether the bin is the LPS is data-dependent and would mispredict often.
    const uint32_t lps = c.lps(range_);
    const uint32_t mps_range = range_ - lps;
    const uint32_t lps_mask = 0u - ((bin ^ c.mps()) & 1u);
    low_ += mps_range & lps_mask;
    const uint32_t r = mps_range ^ ((mps_range ^ lps) & lps_mask);
    // mps_range >= 128 always, so an MPS needs at most one shift; an LPS needs kLpsShift[lps].
    const uint32_t n_mps = mps_range < 256 ? 1u : 0u;
    const int n = static_cast<int>(n_mps ^ ((n_mps ^ kLpsShift.v[lps]) & lps_mask));
    range_ = r << n;
    low_ <<= n;
    bits_left_ -= n;
    if (bits_left_ < 12) put_byte();
    c.update(bin);
  }

  NNC_INLINE void bypass(unsigned bin) {
    low_ <<= 1;
    if (bin) low_ += range_;
    if (--bits_left_ < 12) put_byte();
  }

  // n bypass bins, most significant first (n <= 32).
  void bypass_bits(uint32_t v, int n) {
    for (int i = n - 1; i >= 0; --i) bypass((v >> i) & 1u);
  }

  void reset_range() { range_ = 256; }

  // --- Joining separately coded block rows (parallel encoding, §3.10) -------------------------------------
  // The coder's state is an exact integer A: the bytes written, the outstanding bytes (carry_byte_ and
  // pending_ - 1 bytes 0xFF, which a carry may still change) and the low register's window of
  // window_bits() bits: A = bytes * 2^window_bits() + low_. Coding a bin adds to A and shifts it; the
  // shifts depend only on the range, so block rows that start with a range reset can be coded by
  // encoders started at A = 0 and added in afterwards: A = A_before * 2^shifts + A_row.

  // Bits of A held in the low register.
  int window_bits() const { return 32 - bits_left_; }
  // Bit length of A: the bits of the stream up to here plus the window (start(): 9).
  uint64_t bit_length() const {
    const uint64_t outstanding = pending_;
    return 8 * (static_cast<uint64_t>(out_->size()) + outstanding) + static_cast<uint64_t>(window_bits());
  }
  // A mod 2^16.
  uint32_t low16() const {
    const int k = window_bits();
    uint64_t bytes = 0;  // the last two bytes of (written, outstanding)
    const size_t n = out_->size();
    uint8_t b[2] = {0, 0};
    int have = 0;
    for (uint32_t i = 0; i < pending_ && have < 2; ++i, ++have) b[have] = i + 1 == pending_ ? carry_byte_ : 0xFF;
    for (size_t i = 0; have < 2 && i < n; ++i, ++have) b[have] = (*out_)[n - 1 - i];
    bytes = (static_cast<uint64_t>(b[1]) << 8) | b[0];
    return static_cast<uint32_t>(((bytes << k) + low_) & 0xFFFFu);
  }
  // Finish the encoder as the exact value of A: its own buffer becomes A's bytes (the outstanding ones
  // appended, a carry out of the window added in) and `tail` the `tail_bits` (< 32) bits below them, so that
  // A = bytes * 2^tail_bits + tail. The encoder is done with afterwards. Only for an encoder started at A = 0
  // (no carry can leave the top).
  void exact_value(int& tail_bits, uint32_t& tail) {
    std::vector<uint8_t>& bytes = *out_;
    if (pending_ > 0) {
      bytes.push_back(carry_byte_);
      bytes.insert(bytes.end(), pending_ - 1, 0xFF);
    }
    tail_bits = window_bits();
    uint64_t low = low_;
    if (low >> tail_bits) {  // a carry out of the window into the bytes
      for (size_t i = bytes.size(); i-- > 0;) {
        if (++bytes[i] != 0) break;
      }
      low &= (uint64_t(1) << tail_bits) - 1;
    }
    tail = static_cast<uint32_t>(low);
  }
  // A = A * 2^n + v, v < 2^n, n <= 8: the bits of a block row coded apart, shifted in.
  NNC_INLINE void shift_in(uint32_t v, int n) {
    low_ = (low_ << n) | v;
    bits_left_ -= n;
    if (bits_left_ < 12) put_byte();
  }
  // A += v for v < 2^9 at the bottom of the window (the top bits of a block row coded apart).
  void add_low(uint32_t v) { low_ += v; }
  uint32_t range() const { return range_; }
  void set_range(uint32_t r) { range_ = r; }

  // Terminating bin (value 1) followed by the flush.
  void finish() {
    range_ -= 2;
    low_ += range_;
    low_ <<= 7;
    range_ = 256;
    bits_left_ -= 7;
    if (bits_left_ < 12) put_byte();

    if (low_ >> (32 - bits_left_)) {
      out_->push_back(static_cast<uint8_t>(carry_byte_ + 1));
      for (; pending_ > 1; --pending_) out_->push_back(0x00);
      low_ -= 1u << (32 - bits_left_);
    } else {
      if (pending_ > 0) out_->push_back(carry_byte_);
      for (; pending_ > 1; --pending_) out_->push_back(0xFF);
    }
    pending_ = 0;
    // Remaining (24 - bits_left_) bits of low, then a stop bit, padded to a byte boundary.
    uint32_t tail = low_ >> 8;
    const int nbits = 24 - bits_left_;
    tail = (tail << 1) | 1u;
    const int total = nbits + 1;
    const int nbytes = (total + 7) / 8;
    const uint64_t aligned = static_cast<uint64_t>(tail) << (nbytes * 8 - total);
    for (int i = nbytes - 1; i >= 0; --i) out_->push_back(static_cast<uint8_t>(aligned >> (8 * i)));
  }

 private:
  NNC_INLINE void put_byte() {
    const uint32_t lead = low_ >> (24 - bits_left_);
    bits_left_ += 8;
    low_ &= 0xFFFFFFFFu >> bits_left_;
    if (lead == 0xFF) {
      ++pending_;
    } else if (pending_ > 0) {
      const uint32_t carry = lead >> 8;
      out_->push_back(static_cast<uint8_t>(carry_byte_ + carry));
      const uint8_t fill = static_cast<uint8_t>(0xFF + carry);
      for (; pending_ > 1; --pending_) out_->push_back(fill);
      carry_byte_ = static_cast<uint8_t>(lead & 0xFF);
    } else {
      pending_ = 1;
      carry_byte_ = static_cast<uint8_t>(lead);
    }
  }

  std::vector<uint8_t>* out_;
  uint32_t low_ = 0;
  uint32_t range_ = 510;
  int bits_left_ = 23;
  uint32_t pending_ = 0;
  uint8_t carry_byte_ = 0xFF;
};

// ---------------------------------------------------------------------------------------------
// Arithmetic decoder (§3.1).
//
// The specification's decoder holds the value V in a 32-bit register and reads one byte whenever 8 bits
// have been shifted out. This one keeps that 32-bit register in the top half of a 64-bit one, followed by
// the next stream bits, and refills several bytes at a time when fewer than 32 bits of look-ahead remain
// (one bin shifts out at most 7), so the refill branch is rarely taken. The LPS test only depends on the
// top half, and it is evaluated exactly as a 32-bit decoder with the sign-bit test would (also for the
// out-of-range values that corrupt data can produce after a range reset), so every payload, valid or
// not, decodes to the same bins as the byte-wise formulation.
// Bytes beyond the buffer read as zero but are counted, so that callers can detect over-reads
// (bytes_consumed() > size) without ever touching memory past the end.
class ArithDecoder {
 public:
  ArithDecoder(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  void start() {
    pos_ = 0;
    const uint64_t b0 = next_byte();
    const uint64_t b1 = next_byte();
    val_ = (b0 << 40) | (b1 << 32);
    cnt_ = 32;
    refill();
    range_ = 510;
  }

  NNC_INLINE unsigned decode(Context& c) {
    const uint32_t lps = c.lps(range_);
    const uint32_t mps_range = range_ - lps;
    const uint64_t scaled = static_cast<uint64_t>(mps_range) << 39;
    const uint64_t lps_mask = lps_test(scaled);
    val_ -= scaled & lps_mask;
    const uint32_t m32 = static_cast<uint32_t>(lps_mask);
    const uint32_t r = mps_range ^ ((mps_range ^ lps) & m32);
    // mps_range >= 128 always, so an MPS needs at most one shift; an LPS needs kLpsShift[lps].
    const uint32_t n_mps = mps_range < 256 ? 1u : 0u;
    const uint32_t n = n_mps ^ ((n_mps ^ kLpsShift.v[lps]) & m32);
    const unsigned bin = c.mps() ^ (m32 & 1u);
    range_ = r << n;
    val_ <<= n;
    cnt_ -= static_cast<int>(n);
    if (cnt_ < kMinBits) refill();
    c.update(bin);
    return bin;
  }

  // Same result as decode(), with a branch on the outcome instead of selects. For bins whose outcome the
  // branch predictor gets right most of the time (significance, the unary greater-than chain, where the
  // exit of the caller's loop mispredicts anyway) the core can run ahead on the predicted outcome instead
  // of waiting for the comparison, which shortens the serial chain from one bin to the next.
  NNC_INLINE unsigned decode_predicted(Context& c) {
    const uint32_t lps = c.lps(range_);
    const uint32_t mps_range = range_ - lps;
    const uint64_t scaled = static_cast<uint64_t>(mps_range) << 39;
    unsigned bin = c.mps();
    uint32_t n;
    // MPS iff lps_test() is clear. The first comparison decides every bin of a valid payload; the second
    // gives the 32-bit rule's answer when V exceeds the sub-range by 2^31 or more (corrupt payloads only).
    if (NNC_LIKELY(val_ < scaled) || static_cast<int64_t>(val_ - scaled) < 0) {
      n = mps_range < 256 ? 1u : 0u;
      range_ = mps_range << n;
    } else {
      val_ -= scaled;
      n = kLpsShift.v[lps];
      range_ = lps << n;
      bin ^= 1u;
    }
    val_ <<= n;
    cnt_ -= static_cast<int>(n);
    if (cnt_ < kMinBits) refill();
    c.update(bin);
    return bin;
  }

  inline unsigned bypass() {
    val_ <<= 1;
    if (--cnt_ < kMinBits) refill();
    const uint64_t scaled = static_cast<uint64_t>(range_) << 39;
    if (val_ >= scaled) {
      val_ -= scaled;
      return 1;
    }
    return 0;
  }

  uint32_t bypass_bits(int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; ++i) v = (v << 1) | bypass();
    return v;
  }

  unsigned terminate() {
    range_ -= 2;
    const uint64_t scaled = static_cast<uint64_t>(range_) << 39;
    if (val_ >= scaled) return 1;
    if (range_ < 256) {
      range_ <<= 1;
      val_ <<= 1;
      if (--cnt_ < kMinBits) refill();
    }
    return 0;
  }

  void reset_range() { range_ = 256; }

  // Continue at bit position t (a block-row start, §1.11): V = v8 * 128 + stream bits t+9 .. t+15, R = 256.
  void seek(uint64_t t, uint32_t v8) {
    const uint64_t first = t + 9;  // first stream bit below the 9 bits given by v8
    pos_ = static_cast<size_t>(first / 8);
    const int skip = static_cast<int>(first % 8);
    const uint64_t b = next_byte();
    val_ = (static_cast<uint64_t>(v8) << 39) | (((b << skip) & 0xFFu) << 31);
    cnt_ = 25 + 8 - skip;
    refill();
    range_ = 256;
  }

  // Number of value-register shifts since start().
  uint64_t bit_position() const { return 8 * static_cast<uint64_t>(pos_) + 16 - static_cast<uint64_t>(cnt_); }
  uint32_t value_high() const { return static_cast<uint32_t>(val_ >> 39); }
  // Bytes the byte-wise decoder would have read by now (its two initial bytes plus one per 8 shifts).
  size_t bytes_consumed() const { return 2 + static_cast<size_t>(bit_position() / 8); }
  size_t size() const { return size_; }
  bool overrun(size_t slack) const { return bytes_consumed() > size_ + slack; }

 private:
  static constexpr int kMinBits = 40;  // 32-bit value register + at least 8 look-ahead bits

  // All-ones when the bin is the LPS: the sign of (scaled - 1 - V) in 32-bit arithmetic, V = val_ >> 32.
  // (The low half only borrows into bit 32, never into the sign bit, so one 64-bit subtraction gives it.)
  NNC_INLINE uint64_t lps_test(uint64_t scaled) const {
    return static_cast<uint64_t>(static_cast<int64_t>(scaled - 1u - val_) >> 63);
  }

  inline uint64_t next_byte() {
    const uint64_t b = pos_ < size_ ? data_[pos_] : 0u;
    ++pos_;
    return b;
  }
  // Load whole bytes while they fit below the cnt_ valid bits.
  void refill() {
    if (pos_ + 8 <= size_) {
      uint64_t chunk = 0;
      for (int i = 0; i < 8; ++i) chunk = (chunk << 8) | data_[pos_ + i];  // compiles to one load + bswap
      val_ |= chunk >> cnt_;
      const int take = (63 - cnt_) >> 3;
      pos_ += static_cast<size_t>(take);
      cnt_ += 8 * take;
    } else {
      while (cnt_ <= 56) {
        val_ |= next_byte() << (56 - cnt_);
        cnt_ += 8;
      }
    }
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t val_ = 0;  // bits 63..32: the value register; below: look-ahead stream bits
  int cnt_ = 32;      // valid bits at the top of val_
  uint32_t range_ = 510;
};

}  // namespace nncabac
