// Encoder-side quantizers that reproduce NNCodec's integer levels exactly (NNC_BITSTREAM.md §2.8):
// uniform reconstruction with rounding (lambda 0) and the 8-state dependent-quantization trellis (lambda 0).
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "deepcabac.h"
#include "tables.h"
#include "trellis.h"
#include "cpu.h"

namespace nncabac {
namespace {

Status fail(ErrorInfo& err, Status st, int64_t pos, std::string msg) {
  err.status = st;
  err.tensor = -1;
  err.position = pos;
  err.message = std::move(msg);
  return st;
}

// Scan-order position list (positions in row-major indexing, in coding order).
template <class F>
void for_each_in_scan(int64_t h, int64_t w, int scan, F&& f) {
  if (w <= 1 || h <= 1) scan = 0;
  if (scan == 0) {
    const int64_t n = h * w;
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  const int64_t b = int64_t(4) << scan;
  for (int64_t y0 = 0; y0 < h; y0 += b) {
    const int64_t y1 = std::min(h, y0 + b);
    for (int64_t x0 = 0; x0 < w; x0 += b) {
      const int64_t x1 = std::min(w, x0 + b);
      for (int64_t y = y0; y < y1; ++y)
        for (int64_t x = x0; x < x1; ++x) f(y * w + x);
    }
  }
}

// One trellis step for state C: the three branch costs in table order, first strict minimum (the running
// minimum starts at DBL_MAX and every cost is below it). Written as selects so that no data-dependent
// branches are emitted; the 2-bit choice is packed into the per-element decision word.
template <int C>
inline double relax(const double (&cost)[8], const double (&dist)[5], uint32_t& dec) {
  constexpr Branch b0 = kTrellis.b[C][0], b1 = kTrellis.b[C][1], b2 = kTrellis.b[C][2];
  const double c0 = cost[b0.prev] + dist[b0.slot];
  const double c1 = cost[b1.prev] + dist[b1.slot];
  const double c2 = cost[b2.prev] + dist[b2.slot];
  const unsigned t1 = c1 < c0;
  const double m01 = c1 < c0 ? c1 : c0;  // minsd
  const unsigned t2 = c2 < m01;
  const double best = c2 < m01 ? c2 : m01;
  dec |= ((t2 << 1) | (t1 & (t2 ^ 1u))) << (2 * C);
  return best;
}

// Forward pass of the trellis (portable build); see trellis_forward_avx512.
void trellis_forward(const float* xs, int64_t n, double dscale, uint16_t* decisions, double (&cost)[8]) {
  for (int64_t k = 0; k < n; ++k) {
    const float v = xs[k];
    // |dscale * v|: identical to the reference's (dscale * v) * sign, as multiplying by +-1 only flips the
    // sign bit (for v == -0.0 the reference keeps -0.0, which gives the same candidates and distances).
    const double org = std::fabs(dscale * static_cast<double>(v));
    const int32_t m = first_candidate(org);
    // dist[s] for s = 0..3: squared distance to the candidate c in m..m+3 with c % 4 == s; dist[4]: zero.
    double dist[5];
    for (int s = 0; s < 4; ++s) {
      const int32_t c = m + ((s - m) & 3);
      const double d = org - static_cast<double>(c);
      dist[s] = d * d;
    }
    dist[4] = org * org;
    uint32_t dec = 0;
    const double n0 = relax<0>(cost, dist, dec);
    const double n1 = relax<1>(cost, dist, dec);
    const double n2 = relax<2>(cost, dist, dec);
    const double n3 = relax<3>(cost, dist, dec);
    const double n4 = relax<4>(cost, dist, dec);
    const double n5 = relax<5>(cost, dist, dec);
    const double n6 = relax<6>(cost, dist, dec);
    const double n7 = relax<7>(cost, dist, dec);
    cost[0] = n0; cost[1] = n1; cost[2] = n2; cost[3] = n3;
    cost[4] = n4; cost[5] = n5; cost[6] = n6; cost[7] = n7;
    decisions[k] = static_cast<uint16_t>(dec);
  }
}

// Overflow tests of the reference: round(v * scale) > 2^31 - 3 or < -(2^31 - 2), written without round().
inline bool dq_overflows(double y) { return y >= 2147483645.5 || y <= -2147483646.5; }

Status quantize_dq(const float* x, int32_t* q, int64_t h, int64_t w, float step, int scan, ErrorInfo& err) {
  const int64_t n = h * w;
  const float fscale = 1.0f / step;
  const double dscale = 1.0 / static_cast<double>(step);
  const bool direct = (w <= 1 || h <= 1 || scan == 0);

  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (std::isnan(v)) return fail(err, Status::kBadInput, i, "NaN at element " + std::to_string(i));
    if (dq_overflows(static_cast<double>(v * fscale)))
      return fail(err, Status::kOverflow, i, "quantized value at element " + std::to_string(i) + " does not fit in int32");
  }

  // Per element, 2 bits per state: the index (0..2) of the chosen branch in kTrellis.b[state].
  std::unique_ptr<uint16_t[]> decisions(new uint16_t[static_cast<size_t>(n)]);
  double cost[8];
  cost[0] = 0.0;
  for (int s = 1; s < 8; ++s) cost[s] = 0.5 * std::numeric_limits<double>::max();
  // The forward pass carries its whole state in cost[], so it can run over the scan piece by piece.
  auto forward = [&](const float* xs, int64_t len, int64_t at) {
    if (!(cpu_has_avx512f() && trellis_forward_avx512(xs, len, dscale, decisions.get() + at, cost)) &&
        !(cpu_has_avx2() && trellis_forward_avx2(xs, len, dscale, decisions.get() + at, cost)))
      trellis_forward(xs, len, dscale, decisions.get() + at, cost);
  };
  const int64_t b = int64_t(4) << scan;
  if (direct) {
    forward(x, n, 0);
  } else {
    // Block scans: one block row at a time is gathered in coding order (not the whole tensor: memory).
    std::unique_ptr<float[]> buf(new float[static_cast<size_t>(std::min(h, b) * w)]);
    int64_t k = 0;
    for (int64_t y0 = 0; y0 < h; y0 += b) {
      const int64_t y1 = std::min(h, y0 + b);
      int64_t len = 0;
      for (int64_t x0 = 0; x0 < w; x0 += b) {
        const int64_t x1 = std::min(w, x0 + b);
        for (int64_t y = y0; y < y1; ++y)
          for (int64_t xx = x0; xx < x1; ++xx) buf[static_cast<size_t>(len++)] = x[y * w + xx];
      }
      forward(buf.get(), len, k);
      k += len;
    }
  }

  int state = 0;
  for (int s = 1; s < 8; ++s)
    if (cost[s] < cost[state]) state = s;

  auto back = [&](int64_t k, int64_t pos) {
    const unsigned idx = (decisions[static_cast<size_t>(k)] >> (2 * state)) & 3u;
    const Branch br = kTrellis.b[state][idx];
    // Branch-free: the magnitude is computed for every slot and masked out for the zero slot.
    const float v = x[pos];
    const double org = std::fabs(dscale * static_cast<double>(v));
    const int32_t m = first_candidate(org);
    const int64_t c = int64_t(m) + ((br.slot - m) & 3);  // 64-bit: no overflow in the masked-out case
    const int64_t level = (c + 1) >> 1;
    const int32_t mag = static_cast<int32_t>((2 * level - (br.prev & 1)) & -static_cast<int64_t>(br.slot != 4));
    const int32_t neg = -static_cast<int32_t>(v < 0);  // all ones for negative values
    q[pos] = (mag ^ neg) - neg;
    state = br.prev;
  };
  if (direct) {
    for (int64_t k = n - 1; k >= 0; --k) back(k, k);
  } else {
    // The scan of for_each_in_scan, backwards (positions computed, not stored: memory).
    int64_t k = n - 1;
    for (int64_t y0 = ((h - 1) / b) * b; y0 >= 0; y0 -= b) {
      const int64_t y1 = std::min(h, y0 + b);
      for (int64_t x0 = ((w - 1) / b) * b; x0 >= 0; x0 -= b) {
        const int64_t x1 = std::min(w, x0 + b);
        for (int64_t y = y1 - 1; y >= y0; --y)
          for (int64_t xx = x1 - 1; xx >= x0; --xx) back(k--, y * w + xx);
      }
    }
  }
  return Status::kOk;
}

}  // namespace

Status quantize(const float* x, int32_t* q, int64_t height, int64_t width, float step, bool dq, int scan_order,
                ErrorInfo& err) {
  if (!(step > 0.0f) || !std::isfinite(step)) return fail(err, Status::kBadConfig, -1, "step size must be > 0");
  if (scan_order < 0 || scan_order > 4) return fail(err, Status::kBadConfig, -1, "scan_order must be in 0..4");
  if (height < 0 || width < 0) return fail(err, Status::kBadConfig, -1, "negative shape");
  if (dq) return quantize_dq(x, q, height, width, step, scan_order, err);
  const float scale = 1.0f / step;
  const int64_t n = height * width;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (std::isnan(v)) return fail(err, Status::kBadInput, i, "NaN at element " + std::to_string(i));
    const double r = std::round(static_cast<double>(v * scale));
    if (r > 2147483647.0 || r < -2147483648.0)
      return fail(err, Status::kOverflow, i, "quantized value at element " + std::to_string(i) + " does not fit in int32");
    q[i] = static_cast<int32_t>(r);
  }
  return Status::kOk;
}

}  // namespace nncabac
