// Scan, context selection and binarisation of levels (NNC_BITSTREAM.md §3.4-§3.11), shared by the coder and
// the separately compiled shadow passes. Internal header: everything has internal linkage, so translation
// units built with different instruction sets never share (and never swap) a compiled copy.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "deepcabac.h"
#include "shadow.h"
#include "tables.h"

#if defined(_MSC_VER)
#define NNC_SCAN_INLINE __forceinline
#define NNC_LAMBDA_INLINE
#else
#define NNC_SCAN_INLINE inline __attribute__((always_inline))
#define NNC_LAMBDA_INLINE __attribute__((always_inline))
#endif

namespace nncabac {
namespace {

constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();

// Compile-time dispatch on run-time flags: with_flags(f, b0, b1, ...) calls f(std::integral_constant<bool,
// b0>{}, ...), so f can instantiate one specialised loop per flag combination (decltype(arg)::value).
template <class F>
decltype(auto) with_flags(F&& f) {
  return f();
}
template <class F, class... Rest>
decltype(auto) with_flags(F&& f, bool b, Rest... rest) {
  if (b) return with_flags([&](auto... c) { return f(std::true_type{}, c...); }, rest...);
  return with_flags([&](auto... c) { return f(std::false_type{}, c...); }, rest...);
}

// ---------------------------------------------------------------------------------------------
// Context index layout for unary length N (§3.4).
struct Layout {
  int n;
  int gt;        // greater-than flags, no TCA base
  int gt_tca;    // greater-than flags with TCA base
  int rem;       // Exp-Golomb prefix flags
  int po;        // ecoIdx signalling flag
  int rs;        // row skip flags
  int total;
  explicit Layout(int unary_length) : n(unary_length) {
    gt = 53;
    gt_tca = 53 + 2 * n;
    rem = 53 + 4 * n;
    po = rem + 34;
    rs = rem + 36;
    total = rem + 37;
  }
};
constexpr int kSigTca = 24;
constexpr int kSigHdsp = 40;
constexpr int kSign = 48;
constexpr int kSignTca = 51;

// ---------------------------------------------------------------------------------------------
// Geometry of the scan (§3.9, §3.10).
struct Geometry {
  int64_t h, w, nw;
  int scan;        // effective scan order
  int64_t bh, bw;  // block height / width (whole matrix for scan 0)
  int64_t block_rows;
};

Geometry make_geometry(const TensorSpec& t) {
  Geometry g;
  g.h = t.height;
  g.w = t.width;
  g.nw = g.h * g.w;
  g.scan = effective_scan_order(t);
  if (g.scan == 0) {
    g.bh = g.h;
    g.bw = g.w;
    g.block_rows = 1;
  } else {
    g.bh = g.bw = int64_t(4) << g.scan;
    g.block_rows = (g.h + g.bh - 1) / g.bh;
  }
  return g;
}

// Walk the matrix in scan order. visit(pos) codes one element and returns false to abort; skip_segment()
// is called for a skipped row segment; boundary() after each block row but the last.
template <class Visit, class Skip, class Boundary>
NNC_SCAN_INLINE bool traverse_rows(const Geometry& g, const uint8_t* skip_rows, int64_t br_begin, int64_t br_end,
                              Visit&& visit, Skip&& skip_segment, Boundary&& boundary) {
  for (int64_t br = br_begin; br < br_end; ++br) {
    const int64_t y0 = br * g.bh;
    const int64_t y1 = std::min(g.h, y0 + g.bh);
    for (int64_t x0 = 0; x0 < g.w; x0 += g.bw) {
      const int64_t x1 = std::min(g.w, x0 + g.bw);
      for (int64_t y = y0; y < y1; ++y) {
        if (skip_rows && skip_rows[y]) {
          skip_segment(y, x0, x1);
          continue;
        }
        const int64_t base = y * g.w;
        for (int64_t pos = base + x0; pos < base + x1; ++pos) {
          if (!visit(pos)) return false;
        }
      }
    }
    if (br + 1 < br_end) boundary();
  }
  return true;
}

template <class Visit, class Skip, class Boundary>
NNC_SCAN_INLINE bool traverse(const Geometry& g, const uint8_t* skip_rows, Visit&& visit, Skip&& skip_segment,
                         Boundary&& boundary) {
  return traverse_rows(g, skip_rows, 0, g.block_rows, visit, skip_segment, boundary);
}

// State after `w` zero-parity transitions, for each start state (row skipping with DQ, §3.11).
void skip_transition(int64_t w, uint8_t out[8]) {
  // The zero-parity map is a permutation of period dividing 8 (cycles {0}, {5}, {1,7,4,2}, {3,6}).
  const int64_t steps = w % 8;
  for (int s = 0; s < 8; ++s) {
    int cur = s;
    for (int64_t i = 0; i < steps; ++i) cur = kDqNext[cur][0];
    out[s] = static_cast<uint8_t>(cur);
  }
}

// The DQ level k that codes the stored integer v in DQ state `state` (v = 2k - sgn(k) * (state & 1), §2.4).
inline int64_t dq_coded_level(int32_t v, int state) {
  if (v == 0) return 0;
  const int64_t odd = state & 1;
  return (int64_t(v) + (v < 0 ? -odd : odd)) >> 1;
}

inline int neighbour_class(int64_t v) { return v == 0 ? 0 : (v < 0 ? 1 : 2); }

inline uint64_t abs64(int64_t v) { return v < 0 ? uint64_t(0) - uint64_t(v) : uint64_t(v); }

// Per-position inputs to context selection.
struct Site {
  int state;     // DQ state
  int nb;        // neighbour class 0/1/2
  int32_t base;  // TCA base (0 if unused)
  bool hd;       // HDSP active here
};

inline int sig_context(const Site& s) {
  if (s.hd) return kSigHdsp + s.state;
  if (s.base != 0) return kSigTca + 2 * s.state + (abs64(s.base) > 1 ? 1 : 0);
  return 3 * s.state + s.nb;
}
inline int sign_context(const Site& s) {
  if (s.base != 0) return s.base < 0 ? kSignTca : kSignTca + 1;
  return kSign + s.nb;
}
inline int gt_context(const Layout& L, const Site& s, int j, bool neg) {
  if (s.base != 0) return L.gt_tca + 2 * j + (abs64(s.base) >= uint64_t(j) ? 0 : 1);
  return L.gt + 2 * j + (neg ? 1 : 0);
}

// Binarise one level (§3.7). Sink provides bin(value, ctx) and bypass(value, nbits).
// m_neg / m_pos: magnitude limits (kUnbounded without codebook); sign_mode: 0 coded, 1 forced positive,
// 2 forced negative.
template <class Sink>
NNC_SCAN_INLINE void write_level(Sink& sink, const Layout& L, const Site& site, int64_t v, int64_t m_neg, int64_t m_pos,
                        int sign_mode) {
  sink.bin(v != 0, sig_context(site));
  if (v == 0) return;
  const bool neg = v < 0;
  const int64_t a = static_cast<int64_t>(abs64(v));
  if (sign_mode == 0) sink.bin(neg ? 1u : 0u, sign_context(site));
  const int64_t m = neg ? m_neg : m_pos;
  if (m <= 1) return;
  int64_t acc = 1;
  unsigned f = 0;
  for (int j = 0;; ++j) {
    f = a > acc ? 1u : 0u;
    sink.bin(f, gt_context(L, site, j, neg));
    acc += f;
    if (!f || j == L.n - 1 || acc >= m) break;
  }
  if (f && acc < m) {
    int rb = 0;
    for (int j = 0;; ++j) {
      const int64_t next = acc + (int64_t(1) << rb);
      f = a >= next ? 1u : 0u;
      sink.bin(f, L.rem + j);
      if (f) {
        acc = next;
        ++rb;
      }
      if (!f || j == 30 || acc + (int64_t(1) << rb) > m) break;
    }
    sink.bypass(static_cast<uint32_t>(a - acc), rb);
  }
}

// The parameter-optimisation pass (§3.6): binarise every level as the reference's estimation pass does
// (the stored integer v itself, also under DQ, whose state still follows the coded level) and feed each
// context-coded bin to shadow[ctx].account(bin). Shadow provides account(bin), flush() (moves the running
// rates into cost[9]), reset_states(), init() and kFlushBins (bins one context may take between flushes).
template <class Shadow>
struct ShadowSinkT {
  Shadow* ctx;
  NNC_SCAN_INLINE void bin(unsigned b, int c) { ctx[c].account(b); }
  inline void bypass(uint32_t, int) {}
};

template <class Shadow, bool kDq, bool kTca, bool kHd>
void shadow_pass(Shadow* shadow, int nctx, const Geometry& g, const Layout& L, const int32_t* q,
                 const int32_t* base, const uint8_t* hist, const uint8_t* skip, int64_t br0, int64_t br1,
                 int state0, int nb0) {
  uint8_t skip_map[8];
  if (kDq && skip) skip_transition(g.w, skip_map);
  Site site{state0, nb0, 0, false};
  ShadowSinkT<Shadow> sink{shadow};
  // Each element codes at most one bin per context, so flushing every kFlushBins elements is enough.
  uint32_t until_flush = Shadow::kFlushBins;
  traverse_rows(
      g, skip, br0, br1,
      [&](int64_t pos) NNC_LAMBDA_INLINE {
        const int32_t v = q[pos];
        if (kTca) site.base = base[pos];
        if (kHd) site.hd = hist[pos] != 0;
        write_level(sink, L, site, v, kUnbounded, kUnbounded, 0);
        site.nb = neighbour_class(v);
        if (--until_flush == 0) {
          for (int i = 0; i < nctx; ++i) shadow[i].flush();
          until_flush = Shadow::kFlushBins;
        }
        if (kDq) site.state = kDqNext[site.state][dq_coded_level(v, site.state) & 1];
        return true;
      },
      [&](int64_t, int64_t, int64_t) {
        if (kDq) site.state = skip_map[site.state];
      },
      [&]() {
        for (int i = 0; i < nctx; ++i) shadow[i].reset_states();
      });
}

// The ecoIdx with the lowest estimated cost; a set other than 0 pays 3 bits (in 1/32768 bit) for its
// signalling, and the first of equal costs wins.
inline unsigned choose_ecoidx(const uint64_t (&cost)[9]) {
  unsigned best_e = 0;
  uint64_t best_cost = cost[0];
  for (unsigned e = 1; e < 9; ++e) {
    const uint64_t c = cost[e] + 3u * 32768u;
    if (c < best_cost) {
      best_cost = c;
      best_e = e;
    }
  }
  return best_e;
}

// Run the pass for task `t` with Shadow models and store the chosen ecoIdx of every context in best[].
template <class Shadow>
void shadow_best(const ShadowTask& t, Shadow* shadow, uint8_t* best) {
  const Geometry g = make_geometry(*t.spec);
  const Layout L(t.spec->unary_length);
  for (int i = 0; i < L.total; ++i) shadow[i].init();
  const int32_t* base = t.tca ? t.spec->tca_base : nullptr;
  const uint8_t* hist = t.hd ? t.spec->hdsp_history : nullptr;
  auto run = [&](Shadow* sh, int64_t br0, int64_t br1, int state0, int nb0) {
    with_flags(
        [&](auto dq, auto tca, auto hd) {
          shadow_pass<Shadow, decltype(dq)::value, decltype(tca)::value, decltype(hd)::value>(
              sh, L.total, g, L, t.levels, base, hist, t.skip, br0, br1, state0, nb0);
        },
        t.spec->dq, t.tca, t.hd);
    for (int i = 0; i < L.total; ++i) sh[i].flush();
  };
  if (t.nchunks > 1 && t.chunks != nullptr) {
    // Chunk 0 in `shadow`, the others in models of their own on threads; then the costs are added up.
    std::vector<std::vector<Shadow>> more(static_cast<size_t>(t.nchunks - 1));
    for (auto& m : more) {
      m.resize(static_cast<size_t>(L.total));
      for (auto& c : m) c.init();
    }
    std::vector<std::thread> pool;
    for (int c = 1; c < t.nchunks; ++c) {
      const RowChunk& k = t.chunks[c];
      Shadow* sh = more[static_cast<size_t>(c - 1)].data();
      try {
        pool.emplace_back([&run, sh, k]() { run(sh, k.br0, k.br1, k.state, k.nb); });
      } catch (...) {
        run(sh, k.br0, k.br1, k.state, k.nb);  // no thread to be had: this one does it
      }
    }
    run(shadow, t.chunks[0].br0, t.chunks[0].br1, t.chunks[0].state, t.chunks[0].nb);
    for (auto& th : pool) th.join();
    for (const auto& m : more)
      for (int i = 0; i < L.total; ++i)
        for (int e = 0; e < 9; ++e) shadow[i].cost[e] += m[static_cast<size_t>(i)].cost[e];
  } else {
    run(shadow, 0, g.block_rows, 0, 0);
  }
  for (int i = 0; i < L.total; ++i) best[i] = static_cast<uint8_t>(choose_ecoidx(shadow[i].cost));
}

}  // namespace
}  // namespace nncabac
