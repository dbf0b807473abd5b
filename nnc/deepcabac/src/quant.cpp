// Encoder-side quantizers that reproduce NNCodec's integer levels exactly (NNC_BITSTREAM.md §2.8):
// uniform reconstruction with rounding (lambda 0) and the 8-state dependent-quantization trellis (lambda 0).
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "deepcabac.h"
#include "tables.h"

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

// Branches into each trellis state, in the order the tie rule requires: increasing predecessor state;
// for the same predecessor the non-zero candidate before the zero candidate.
struct Branch {
  uint8_t prev;
  uint8_t slot;  // 0..3: candidate x with x % 4 == slot; 4: zero
};
struct BranchTable {
  Branch b[8][3];
  BranchTable() {
    int count[8] = {0};
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
const BranchTable& branches() {
  static const BranchTable t;
  return t;
}

inline int32_t first_candidate(double org) {
  // max(1, trunc(org) - 1); org is bounded by the overflow check before this is called.
  const int32_t t = org >= 2147483647.0 ? 2147483647 : static_cast<int32_t>(org);
  return t - 1 > 1 ? t - 1 : 1;
}

Status quantize_dq(const float* x, int32_t* q, int64_t h, int64_t w, float step, int scan, ErrorInfo& err) {
  const int64_t n = h * w;
  const float fscale = 1.0f / step;
  const double dscale = 1.0 / static_cast<double>(step);
  const BranchTable& bt = branches();

  std::vector<uint8_t> decisions(static_cast<size_t>(n) * 8);
  double cost[8], next[8];
  cost[0] = 0.0;
  for (int s = 1; s < 8; ++s) cost[s] = 0.5 * std::numeric_limits<double>::max();

  int64_t k = 0;
  Status st = Status::kOk;
  int64_t bad = -1;
  for_each_in_scan(h, w, scan, [&](int64_t pos) {
    if (st != Status::kOk) return;
    const float v = x[pos];
    if (std::isnan(v)) {
      st = Status::kBadInput;
      bad = pos;
      return;
    }
    const double r = std::round(static_cast<double>(v * fscale));
    if (r > 2147483645.0 || r < -2147483646.0) {
      st = Status::kOverflow;
      bad = pos;
      return;
    }
    const double sign = v < 0 ? -1.0 : 1.0;
    const double org = dscale * static_cast<double>(v) * sign;
    const int32_t m = first_candidate(org);
    double dist[5];
    for (int i = 0; i < 4; ++i) {
      const int32_t c = m + i;
      const double d = org - static_cast<double>(c);
      dist[c & 3] = d * d;
    }
    dist[4] = org * org;
    uint8_t* dec = &decisions[static_cast<size_t>(k) * 8];
    for (int s = 0; s < 8; ++s) {
      double best = std::numeric_limits<double>::max();
      uint8_t choice = 0;
      for (int j = 0; j < 3; ++j) {
        const Branch& br = bt.b[s][j];
        const double c = cost[br.prev] + dist[br.slot];
        if (c < best) {
          best = c;
          choice = static_cast<uint8_t>(br.prev | (br.slot << 3));
        }
      }
      next[s] = best;
      dec[s] = choice;
    }
    std::memcpy(cost, next, sizeof(cost));
    ++k;
  });
  if (st == Status::kOverflow)
    return fail(err, st, bad, "quantized value at element " + std::to_string(bad) + " does not fit in int32");
  if (st != Status::kOk) return fail(err, st, bad, "NaN at element " + std::to_string(bad));

  int state = 0;
  for (int s = 1; s < 8; ++s)
    if (cost[s] < cost[state]) state = s;

  // Backtrack: levels in scan order.
  std::vector<int32_t> scan_q;
  const bool direct = (w <= 1 || h <= 1 || scan == 0);
  int32_t* dst = q;
  if (!direct) {
    scan_q.resize(static_cast<size_t>(n));
    dst = scan_q.data();
  }
  // Row-major position of scan index i is needed only to recompute the candidate; use a second pass
  // over the positions to collect them when the scan is not row-major.
  std::vector<int64_t> order;
  if (!direct) {
    order.reserve(static_cast<size_t>(n));
    for_each_in_scan(h, w, scan, [&](int64_t pos) { order.push_back(pos); });
  }
  for (int64_t i = n - 1; i >= 0; --i) {
    const uint8_t d = decisions[static_cast<size_t>(i) * 8 + state];
    const int prev = d & 7;
    const int slot = d >> 3;
    int32_t level = 0;
    if (slot != 4) {
      const int64_t pos = direct ? i : order[static_cast<size_t>(i)];
      const float v = x[pos];
      const double org = dscale * static_cast<double>(v) * (v < 0 ? -1.0 : 1.0);
      const int32_t m = first_candidate(org);
      const int32_t c = m + ((slot - m) & 3);
      level = (c + 1) >> 1;
      int32_t qv = 2 * level - (prev & 1);
      dst[i] = v < 0 ? -qv : qv;
    } else {
      dst[i] = 0;
    }
    state = prev;
  }
  if (!direct)
    for (int64_t i = 0; i < n; ++i) q[order[static_cast<size_t>(i)]] = scan_q[static_cast<size_t>(i)];
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
