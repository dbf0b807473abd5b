// Tensor-level DeepCABAC coding: preamble, context-parameter signalling, binarisation, context selection,
// scan orders, block rows / entry points, row skipping, DQ, TCA and HDSP (NNC_BITSTREAM.md §1.10-§3.14).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <limits>
#include <string>
#include <vector>

#include "deepcabac.h"
#include "engine.h"
#include "scan.h"
#include "shadow.h"
#include "cpu.h"

namespace nncabac {
namespace {

std::atomic<uint64_t> g_parallel_passes{0};  // tensors whose block rows were coded on several threads

constexpr int64_t kMinParallelElements = int64_t(1) << 16;  // below this a tensor's rows are coded on one thread
constexpr size_t kReadSlack = 2;  // bytes the decoder may virtually read past the end before giving up

// A row that row skipping may leave out: every stored integer is zero (§3.11).
inline bool row_is_zero(const int32_t* row, int64_t width) {
  return std::all_of(row, row + width, [](int32_t v) { return v == 0; });
}

bool preamble_present(const TensorSpec& t) {
  return t.profile == 1 && t.width > 1 && t.height > 1 && t.codebook_size != 1;
}

bool codebook_active(const TensorSpec& t) { return t.profile == 1 && t.codebook_size > 0; }

// Ordered list of contexts whose ecoIdx is signalled (§3.6).
void signalled_contexts(const TensorSpec& t, const Layout& L, bool tca, bool hdsp, std::vector<int>& out) {
  out.clear();
  const int64_t S = codebook_active(t) ? t.codebook_size : 0;
  const int64_t Z = codebook_active(t) ? t.codebook_zero : 0;
  const bool any = S != 1;
  if (any) {
    for (int i = 0; i < (t.dq ? 24 : 3); ++i) out.push_back(i);
    if (tca)
      for (int i = 24; i < (t.dq ? 40 : 26); ++i) out.push_back(i);
    if (hdsp)
      for (int i = 40; i < (t.dq ? 48 : 41); ++i) out.push_back(i);
    if (!(S > 0 && (Z == 0 || Z == S - 1)))
      for (int i = 48; i < (tca ? 53 : 51); ++i) out.push_back(i);
  }
  const int64_t M = S > 0 ? std::max(Z, S - 1 - Z) : kUnbounded;
  for (int a = 0; a < 2 * L.n; ++a)
    if (M == kUnbounded || a < 2 * M) out.push_back(L.gt + a);
  if (tca)
    for (int a = 2 * L.n; a < 4 * L.n; ++a)
      if (M == kUnbounded || a < 2 * (M - 1) + 2 * L.n) out.push_back(L.gt + a);
  int64_t x = L.n - 1;
  for (int a = 0; a < 31; ++a) {
    x += int64_t(1) << a;
    if (M == kUnbounded || x < M) out.push_back(L.rem + a);
  }
}

struct RealSink {
  ArithEncoder& enc;
  Context* ctx;
  NNC_INLINE void bin(unsigned b, int c) { enc.encode(b, ctx[c]); }
  inline void bypass(uint32_t v, int n) { enc.bypass_bits(v, n); }
};

// Decode one level; returns false on magnitude overflow (corrupt data).
template <bool kLimited>
NNC_INLINE bool read_level(ArithDecoder& dec, Context* ctx, const Layout& L, const Site& site, int64_t m_neg,
                       int64_t m_pos, int sign_mode, int64_t& out) {
  if (!dec.decode_predicted(ctx[sig_context(site)])) {
    out = 0;
    return true;
  }
  bool neg;
  if (!kLimited || sign_mode == 0) {
    neg = dec.decode(ctx[sign_context(site)]) != 0;
  } else {
    neg = sign_mode == 2;
  }
  const int64_t m = kLimited ? (neg ? m_neg : m_pos) : kUnbounded;
  int64_t acc = 1;
  if (!kLimited || m > 1) {
    unsigned f = 0;
    for (int j = 0;; ++j) {
      f = dec.decode_predicted(ctx[gt_context(L, site, j, neg)]);
      acc += f;
      if (!f || j == L.n - 1 || (kLimited && acc >= m)) break;
    }
    if (f && (!kLimited || acc < m)) {
      int rb = 0;
      for (int j = 0;; ++j) {
        f = dec.decode_predicted(ctx[L.rem + j]);
        if (f) {
          acc += int64_t(1) << rb;
          ++rb;
        }
        if (!f || j == 30 || (kLimited && acc + (int64_t(1) << rb) > m)) break;
      }
      acc += dec.bypass_bits(rb);
    }
  }
  out = neg ? -acc : acc;
  return acc <= int64_t(0x7FFFFFFF);
}

std::string where(int64_t tensor, int64_t pos) {
  return "tensor " + std::to_string(tensor) + ", element " + std::to_string(pos);
}

Status fail(ErrorInfo& err, Status st, int64_t tensor, int64_t pos, std::string msg) {
  err.status = st;
  err.tensor = tensor;
  err.position = pos;
  err.message = std::move(msg);
  return st;
}

// ---------------------------------------------------------------------------------------------
// Encoder for one tensor.
class TensorEncoder {
 public:
  TensorEncoder(ArithEncoder& enc, const TensorSpec& t, const EncodeSettings& es, const int32_t* q, int64_t index,
                int threads = 1)
      : enc_(enc), t_(t), es_(es), q_(q), index_(index), L_(t.unary_length), g_(make_geometry(t)),
        threads_(g_.nw < kMinParallelElements
                     ? 1
                     : static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, g_.block_rows)))) {}

  // Where each block row starts in the payload, for the entry points (filled by the parallel pass only).
  struct RowMark {
    uint64_t t;      // bit position (shifts since the session started)
    uint32_t a16;    // the coder's value A mod 2^16 there
    uint32_t state;  // DQ state
  };
  std::vector<RowMark> marks;  // block rows 0..block_rows-1 (empty: rows coded serially)

  Status run(ErrorInfo& err) {
    const bool limited = codebook_active(t_);
    const int64_t S = t_.codebook_size, Z = t_.codebook_zero;
    m_neg_ = limited ? Z : kUnbounded;
    m_pos_ = limited ? S - 1 - Z : kUnbounded;
    sign_mode_ = 0;
    if (limited && (Z == 0 || Z == S - 1)) sign_mode_ = Z != 0 ? 2 : 1;

    // Value checks first, so that nothing is written for an invalid tensor.
    if (Status st = validate(err); st != Status::kOk) return st;

    if (t_.qp_bits > 0) {
      const uint32_t mask = t_.qp_bits >= 32 ? 0xFFFFFFFFu : ((1u << t_.qp_bits) - 1u);
      enc_.bypass_bits(static_cast<uint32_t>(es_.qp_offset) & mask, t_.qp_bits);
    }
    ctx_.resize(L_.total);
    for (auto& c : ctx_) c.init(0);

    bool hdsp_flag = false;
    bool row_skip = false;
    if (preamble_present(t_)) {
      if (t_.parent_present) {
        hdsp_flag = es_.hdsp;
        enc_.bypass(hdsp_flag ? 1u : 0u);
      }
      row_skip = es_.row_skipping;
      enc_.bypass(row_skip ? 1u : 0u);
      if (row_skip) {
        skip_.assign(static_cast<size_t>(g_.h), 0);
        for (int64_t y = 0; y < g_.h; ++y) {
          const bool zero = row_is_zero(q_ + y * g_.w, g_.w);
          skip_[y] = zero ? 1 : 0;
          enc_.encode(zero ? 1u : 0u, ctx_[L_.rs]);
        }
      }
    }
    hdsp_ = hdsp_flag;
    const uint8_t* skip = row_skip ? skip_.data() : nullptr;
    const bool tca = t_.tca_base != nullptr;

    const bool optimise = es_.param_opt && !(t_.profile == 1 && S == 1);
    // Several threads: the block rows are split into one run per thread for the passes below.
    if (threads_ > 1) split_rows(skip);
    std::vector<uint8_t> best(static_cast<size_t>(L_.total), 0);
    if (optimise) {
      ShadowTask task;
      task.spec = &t_;
      task.levels = q_;
      task.skip = skip;
      task.tca = tca_active();
      task.hd = hd_active();
      task.chunks = chunks_.data();
      task.nchunks = static_cast<int>(chunks_.size());
      if (!(cpu_has_avx2() && shadow_best_avx2(task, best.data()))) shadow_best_portable(task, best.data());
    }
    std::vector<int> list;
    signalled_contexts(t_, L_, tca, hdsp_flag, list);
    for (int i : list) {
      const unsigned e = best[static_cast<size_t>(i)];
      enc_.encode(e ? 1u : 0u, ctx_[L_.po]);
      if (e) enc_.bypass_bits(e - 1, 3);
      ctx_[i].init(e);
    }
    if (g_.block_rows > 1) enc_.reset_range();
    if (chunks_.size() > 1) {
      parallel_pass(skip);
    } else {
      dispatch_pass(skip);
    }
    return Status::kOk;
  }

 private:
  Status validate(ErrorInfo& err) {
    const bool limited = codebook_active(t_);
    for (int64_t i = 0; i < g_.nw; ++i) {
      const int32_t v = q_[i];
      if (v == std::numeric_limits<int32_t>::min())
        return fail(err, Status::kBadInput, index_, i, "value -2^31 cannot be coded (" + where(index_, i) + ")");
      if (limited && (v < -m_neg_ || v > m_pos_))
        return fail(err, Status::kBadInput, index_, i,
                    "value " + std::to_string(v) + " outside the codebook index range [" + std::to_string(-m_neg_) +
                        ", " + std::to_string(m_pos_) + "] (" + where(index_, i) + ")");
    }
    return Status::kOk;
  }

  // TCA / HDSP context selection in use (valid once the preamble has set hdsp_).
  bool tca_active() const { return t_.tca_base != nullptr && t_.profile == 1; }
  bool hd_active() const { return hdsp_ && t_.hdsp_history != nullptr && t_.profile == 1; }

  void dispatch_pass(const uint8_t* skip) {
    with_flags(
        [&](auto dq, auto tca, auto hd) {
          pass<decltype(dq)::value, decltype(tca)::value, decltype(hd)::value>(skip);
        },
        t_.dq, tca_active(), hd_active());
  }

  // Code the levels (after the preamble and the signalled context initialisations).
  template <bool kDq, bool kTca, bool kHd>
  void pass(const uint8_t* skip) {
    pass_rows<kDq, kTca, kHd>(enc_, ctx_.data(), skip, 0, g_.block_rows, 0, nullptr);
  }

  // Block rows [br0, br1) with coder `enc_io` and contexts `ctx`, from DQ state `state0`; with `marks`,
  // where each later block row starts (the coder's bit length and value, after the reset).
  template <bool kDq, bool kTca, bool kHd>
  void pass_rows(ArithEncoder& enc_io, Context* ctx_io, const uint8_t* skip, int64_t br0, int64_t br1, int state0,
                 std::vector<RowMark>* row_marks) {
    uint8_t skip_map[8];
    if (kDq && skip) skip_transition(g_.w, skip_map);
    Site site{state0, 0, 0, false};
    ArithEncoder enc = enc_io;  // local copy (written back below)
    Context* const ctxp = ctx_io;
    const int nctx = L_.total;
    RealSink real{enc, ctxp};
    const int32_t* q = q_;
    const int32_t* base = t_.tca_base;
    const uint8_t* hist = t_.hdsp_history;
    const Layout& L = L_;
    const int64_t m_neg = m_neg_, m_pos = m_pos_;
    const int sign_mode = sign_mode_;
    const bool nothing = codebook_active(t_) && t_.codebook_size == 1;
    traverse_rows(
        g_, skip, br0, br1,
        [&](int64_t pos) NNC_LAMBDA_INLINE {
          const int32_t v = q[pos];
          const int64_t k = kDq ? dq_coded_level(v, site.state) : v;
          if (kTca) site.base = base[pos];
          if (kHd) site.hd = hist[pos] != 0;
          if (!nothing) write_level(real, L, site, k, m_neg, m_pos, sign_mode);
          site.nb = neighbour_class(k);
          if (kDq) site.state = kDqNext[site.state][k & 1];
          return true;
        },
        [&](int64_t, int64_t, int64_t) {
          if (kDq) site.state = skip_map[site.state];
        },
        [&]() {
          for (int i = 0; i < nctx; ++i) ctxp[i].reset();
          site.nb = 0;
          enc.reset_range();
          if (row_marks)
            row_marks->push_back(RowMark{enc.bit_length(), enc.low16(), static_cast<uint32_t>(site.state)});
        });
    enc_io = enc;
  }

  // One run of block rows per thread (chunks_), with the DQ state and the parameter-optimisation pass's
  // neighbour class where each run starts: one quick serial walk over the levels.
  void split_rows(const uint8_t* skip) {
    const int64_t nbr = g_.block_rows;
    const int T = threads_;
    chunks_.assign(static_cast<size_t>(T), RowChunk{});
    for (int c = 0; c < T; ++c) {
      chunks_[static_cast<size_t>(c)].br0 = nbr * c / T;
      chunks_[static_cast<size_t>(c)].br1 = nbr * (c + 1) / T;
    }
    uint8_t skip_map[8];
    if (t_.dq && skip) skip_transition(g_.w, skip_map);
    int state = 0, nb = 0;
    const int32_t* q = q_;
    const bool dq = t_.dq;
    int next = 1;  // the next chunk whose start is wanted
    for (int64_t br = 0; br < nbr && next < T; ++br) {
      if (br == chunks_[static_cast<size_t>(next)].br0) {
        chunks_[static_cast<size_t>(next)].state = state;
        chunks_[static_cast<size_t>(next)].nb = nb;
        ++next;
      }
      traverse_rows(
          g_, skip, br, br + 1,
          [&](int64_t pos) NNC_LAMBDA_INLINE {
            const int32_t v = q[pos];
            nb = neighbour_class(v);
            if (dq) state = kDqNext[state][dq_coded_level(v, state) & 1];
            return true;
          },
          [&](int64_t, int64_t, int64_t) {
            if (dq) state = skip_map[state];
          },
          [&]() {});
    }
  }

  // The block-row runs of chunks_ coded on their own threads by coders started at A = 0, then added into
  // enc_ in order (see ArithEncoder::exact_value): the same bytes as pass(), and the marks for the entry
  // points.
  void parallel_pass(const uint8_t* skip) {
    g_parallel_passes.fetch_add(1, std::memory_order_relaxed);
    const size_t T = chunks_.size();
    struct Run {
      std::vector<uint8_t> buf;  // the run's code; after exact_value(), the bytes of its value X
      std::vector<RowMark> marks;
      int tail_bits = 0;
      uint32_t tail = 0;
      uint32_t range = 256;
    };
    std::vector<Run> runs(T);
    const std::vector<Context> init = ctx_;
    auto work = [&](size_t c) {
      Run& r = runs[c];
      ArithEncoder e(&r.buf);
      e.start();
      e.reset_range();
      std::vector<Context> ctx = init;
      const RowChunk& k = chunks_[c];
      with_flags(
          [&](auto dq, auto tca, auto hd) {
            pass_rows<decltype(dq)::value, decltype(tca)::value, decltype(hd)::value>(e, ctx.data(), skip, k.br0,
                                                                                     k.br1, k.state, &r.marks);
          },
          t_.dq, tca_active(), hd_active());
      e.exact_value(r.tail_bits, r.tail);   // in place: the run's own bytes become X's
      r.range = e.range();
    };
    std::vector<std::thread> pool;
    for (size_t c = 1; c < T; ++c) {
      try {
        pool.emplace_back(work, c);
      } catch (...) {
        work(c);
      }
    }
    work(0);
    for (auto& th : pool) th.join();

    marks.clear();
    marks.reserve(static_cast<size_t>(g_.block_rows));
    marks.push_back(RowMark{enc_.bit_length(), enc_.low16(), 0});
    for (size_t c = 0; c < T; ++c) {
      Run& r = runs[c];
      if (c > 0) marks.push_back(RowMark{enc_.bit_length(), enc_.low16(), static_cast<uint32_t>(chunks_[c].state)});
      const uint64_t ls = enc_.bit_length();
      const uint32_t a16 = enc_.low16();
      for (const RowMark& m : r.marks) {
        const uint64_t n = m.t - 9;  // shifts of this run up to the mark
        const uint32_t shifted = n >= 16 ? 0u : ((a16 << n) & 0xFFFFu);
        marks.push_back(RowMark{ls + n, (shifted + m.a16) & 0xFFFFu, m.state});
      }
      join(r.buf, r.tail_bits, r.tail);
      enc_.set_range(r.range);
      std::vector<uint8_t>().swap(r.buf);
    }
  }

  // enc_ := enc_ * 2^N + X for X given as bytes followed by tail_bits bits, of bit length N + 9.
  void join(const std::vector<uint8_t>& bytes, int tail_bits, uint32_t tail) {
    const uint64_t total = 8 * static_cast<uint64_t>(bytes.size()) + static_cast<uint64_t>(tail_bits);
    auto bit = [&](uint64_t i) -> uint32_t {  // bit i of X, most significant first
      if (i < 8 * bytes.size()) return (bytes[static_cast<size_t>(i >> 3)] >> (7 - (i & 7))) & 1u;
      const uint64_t j = i - 8 * bytes.size();
      return (tail >> (tail_bits - 1 - static_cast<int>(j))) & 1u;
    };
    auto bits = [&](uint64_t i, int n) -> uint32_t {  // n <= 9 bits from bit i (the few outside the byte loop)
      uint32_t v = 0;
      for (int k = 0; k < n; ++k) v = (v << 1) | bit(i + static_cast<uint64_t>(k));
      return v;
    };
    const int head = static_cast<int>(std::min<uint64_t>(9, total));
    enc_.add_low(bits(0, head) << (9 - head));
    uint64_t i = 9;
    // Whole bytes of X from bit 9 on (a fixed alignment: bit 1 of each byte), then what is left.
    const size_t nb = bytes.size();
    if (nb >= 3) {
      const uint8_t* b = bytes.data();
      const size_t last = nb - 2;  // bits 9 + 8k .. 16 + 8k lie in bytes k + 1 and k + 2
      for (size_t k = 0; k < last; ++k) enc_.shift_in(((uint32_t(b[k + 1]) << 1) | (b[k + 2] >> 7)) & 0xFFu, 8);
      i = 9 + 8 * static_cast<uint64_t>(last);
    }
    for (; i < total;) {
      const int n = static_cast<int>(std::min<uint64_t>(8, total - i));
      enc_.shift_in(bits(i, n), n);
      i += static_cast<uint64_t>(n);
    }
  }

 public:
  // DQ parity check (run before coding when mismatches are not allowed).
  Status check_dq(ErrorInfo& err) {
    if (!t_.dq || es_.allow_dq_mismatch) return Status::kOk;
    // Row-skip decisions depend on the preamble settings.
    std::vector<uint8_t> skip_rows;
    const uint8_t* skip = nullptr;
    if (preamble_present(t_) && es_.row_skipping) {
      skip_rows.assign(static_cast<size_t>(g_.h), 0);
      for (int64_t y = 0; y < g_.h; ++y) skip_rows[y] = row_is_zero(q_ + y * g_.w, g_.w) ? 1 : 0;
      skip = skip_rows.data();
    }
    uint8_t skip_map[8];
    skip_transition(g_.w, skip_map);
    int state = 0;
    int64_t bad = -1;
    traverse(
        g_, skip,
        [&](int64_t pos) NNC_LAMBDA_INLINE {
          const int32_t v = q_[pos];
          if (v != 0 && ((v & 1) != (state & 1))) {
            bad = pos;
            return false;
          }
          state = kDqNext[state][dq_coded_level(v, state) & 1];
          return true;
        },
        [&](int64_t, int64_t, int64_t) { state = skip_map[state]; }, [&]() {});
    if (bad >= 0)
      return fail(err, Status::kBadInput, index_, bad,
                  "value " + std::to_string(q_[bad]) + " has the wrong parity for DQ state at " + where(index_, bad) +
                      " (the quantizer's state sequence does not match the coder's)");
    return Status::kOk;
  }

 private:
  ArithEncoder& enc_;
  const TensorSpec& t_;
  const EncodeSettings& es_;
  const int32_t* q_;
  int64_t index_;
  Layout L_;
  Geometry g_;
  std::vector<Context> ctx_;
  std::vector<uint8_t> skip_;
  int64_t m_neg_ = kUnbounded, m_pos_ = kUnbounded;
  int sign_mode_ = 0;
  bool hdsp_ = false;
  int threads_ = 1;
  std::vector<RowChunk> chunks_;
};

// ---------------------------------------------------------------------------------------------
// Decoder for one tensor.
class TensorDecoder {
 public:
  TensorDecoder(ArithDecoder& dec, const TensorSpec& t, int32_t* out, int64_t index)
      : dec_(dec), t_(t), out_(out), index_(index), L_(t.unary_length), g_(make_geometry(t)) {}

  Status run(DecodedTensorInfo& info, ErrorInfo& err) {
    info = DecodedTensorInfo();
    if (t_.qp_bits > 0) {
      const uint32_t raw = dec_.bypass_bits(t_.qp_bits);
      const int sh = 32 - t_.qp_bits;
      info.qp_offset = sh > 0 ? static_cast<int32_t>(raw << sh) >> sh : static_cast<int32_t>(raw);
      info.has_qp = true;
    }
    ctx_.resize(L_.total);
    for (auto& c : ctx_) c.init(0);

    const uint8_t* skip = nullptr;
    if (preamble_present(t_)) {
      if (t_.parent_present) info.hdsp_flag = dec_.bypass() != 0;
      info.row_skip_flag = dec_.bypass() != 0;
      if (info.row_skip_flag) {
        skip_.assign(static_cast<size_t>(g_.h), 0);
        for (int64_t y = 0; y < g_.h; ++y) {
          skip_[y] = static_cast<uint8_t>(dec_.decode(ctx_[L_.rs]));
          if ((y & 1023) == 0 && dec_.overrun(kReadSlack))
            return fail(err, Status::kTruncated, index_, -1,
                        "CABAC payload ends inside the row-skip flags of tensor " + std::to_string(index_) +
                            " (row " + std::to_string(y) + ")");
        }
        skip = skip_.data();
      }
    }
    hdsp_ = info.hdsp_flag;
    const bool tca = t_.tca_base != nullptr;
    std::vector<int> list;
    signalled_contexts(t_, L_, tca, hdsp_, list);
    for (int i : list) {
      unsigned e = 0;
      if (dec_.decode(ctx_[L_.po])) e = 1 + dec_.bypass_bits(3);
      ctx_[i].init(e);
    }
    if (dec_.overrun(kReadSlack))
      return fail(err, Status::kTruncated, index_, -1,
                  "CABAC payload ends inside the preamble of tensor " + std::to_string(index_));

    const bool limited = codebook_active(t_);
    const int64_t S = t_.codebook_size, Z = t_.codebook_zero;
    m_neg_ = limited ? Z : kUnbounded;
    m_pos_ = limited ? S - 1 - Z : kUnbounded;
    sign_mode_ = 0;
    if (limited && (Z == 0 || Z == S - 1)) sign_mode_ = Z != 0 ? 2 : 1;

    if (g_.block_rows > 1) dec_.reset_range();

    nothing_coded_ = limited && S == 1;  // every element is 0 and no bin is read
    return dispatch(skip, info, err);
  }

  // Entry points signalled for this tensor (enables parallel block-row decoding when threads > 1).
  void set_entry_points(const EntryPoint* eps, size_t count, int threads) {
    eps_ = eps;
    eps_count_ = count;
    threads_ = threads;
  }

 private:
  Status dispatch(const uint8_t* skip, DecodedTensorInfo& info, ErrorInfo& err) {
    const bool tca = t_.tca_base != nullptr && t_.profile == 1;
    const bool hd = hdsp_ && t_.hdsp_history != nullptr && t_.profile == 1;
    return with_flags(
        [&](auto dq, auto t, auto h, auto lim) {
          constexpr bool kDq = decltype(dq)::value, kTca = decltype(t)::value, kHd = decltype(h)::value;
          return rows<kDq, kTca, kHd, decltype(lim)::value>(skip, info, err);
        },
        t_.dq, tca, hd, codebook_active(t_));
  }

  // Decode all block rows: in parallel from the signalled entry points when possible and consistent,
  // otherwise (or as a fallback) sequentially.
  template <bool kDq, bool kTca, bool kHd, bool kLimited>
  Status rows(const uint8_t* skip, DecodedTensorInfo& info, ErrorInfo& err) {
    const int64_t nbr = g_.block_rows;
    if (threads_ > 1 && nbr > 1 && eps_ != nullptr && eps_count_ == static_cast<size_t>(nbr - 1)) {
      if (parallel_rows<kDq, kTca, kHd, kLimited>(skip, info)) return Status::kOk;
    }
    int state = 0;
    int64_t bad_pos = -1;
    ArithDecoder dec = dec_;
    const Status st =
        decode_rows<kDq, kTca, kHd, kLimited>(dec, ctx_.data(), skip, 0, nbr, state, &info, bad_pos);
    dec_ = dec;
    if (st == Status::kTruncated)
      return fail(err, st, index_, bad_pos, "CABAC payload ends before " + where(index_, bad_pos));
    if (st != Status::kOk)
      return fail(err, st, index_, bad_pos, "decoded level does not fit in int32 at " + where(index_, bad_pos));
    return Status::kOk;
  }

  template <bool kDq, bool kTca, bool kHd, bool kLimited>
  bool parallel_rows(const uint8_t* skip, DecodedTensorInfo& info) {
    const int64_t nbr = g_.block_rows;
    std::vector<uint64_t> start_t(static_cast<size_t>(nbr));
    start_t[0] = dec_.bit_position();
    const uint64_t limit = 8 * static_cast<uint64_t>(dec_.size() + kReadSlack);
    for (int64_t r = 1; r < nbr; ++r) {
      const EntryPoint& e = eps_[r - 1];
      if (e.value > 255 || e.dq_state > 7 || e.bit_offset > limit) return false;
      start_t[r] = start_t[r - 1] + e.bit_offset;
      if (start_t[r] > limit) return false;
    }
    struct RowResult {
      ArithDecoder dec;
      int state;
      Status st;
    };
    std::vector<RowResult> res(static_cast<size_t>(nbr), RowResult{dec_, 0, Status::kOk});
    const std::vector<Context> init = ctx_;
    std::atomic<int64_t> next{0};
    auto worker = [&]() {
      std::vector<Context> ctx;
      for (;;) {
        const int64_t r = next.fetch_add(1);
        if (r >= nbr) break;
        ctx = init;
        RowResult& rr = res[static_cast<size_t>(r)];
        rr.state = 0;
        if (r > 0) {
          rr.dec.seek(start_t[r], eps_[r - 1].value);
          rr.state = static_cast<int>(eps_[r - 1].dq_state);
        }
        int64_t bad_pos = -1;
        rr.st = decode_rows<kDq, kTca, kHd, kLimited>(rr.dec, ctx.data(), skip, r, r + 1, rr.state, nullptr,
                                                      bad_pos);
      }
    };
    const int nthreads = static_cast<int>(std::min<int64_t>(threads_, nbr));
    std::vector<std::thread> pool;
    try {
      for (int i = 1; i < nthreads; ++i) pool.emplace_back(worker);
    } catch (...) {
      // No threads available: the calling thread does all rows.
    }
    worker();
    for (auto& th : pool) th.join();

    // The rows must join up exactly as the entry points claim, otherwise decode sequentially.
    for (int64_t r = 0; r < nbr; ++r) {
      RowResult& rr = res[static_cast<size_t>(r)];
      if (rr.st != Status::kOk) return false;
      if (r + 1 < nbr) {
        rr.dec.reset_range();
        const EntryPoint& e = eps_[r];
        if (rr.dec.bit_position() != start_t[r + 1] || rr.dec.value_high() != e.value ||
            static_cast<uint32_t>(rr.state) != e.dq_state)
          return false;
      }
    }
    dec_ = res[static_cast<size_t>(nbr - 1)].dec;
    info.entry_points.assign(eps_, eps_ + eps_count_);
    info.parallel = true;
    return true;
  }

  // Decode block rows [br0, br1) with `dec` and contexts `ctx`, starting in DQ state `state`. Entry points
  // met between rows are appended to info (when given).
  template <bool kDq, bool kTca, bool kHd, bool kLimited>
  Status decode_rows(ArithDecoder& dec_io, Context* ctx, const uint8_t* skip, int64_t br0, int64_t br1, int& state,
                     DecodedTensorInfo* info, int64_t& bad_pos) {
    uint8_t skip_map[8];
    if (kDq && skip) skip_transition(g_.w, skip_map);
    Site site{state, 0, 0, false};
    int32_t* out = out_;
    const int32_t* base = t_.tca_base;
    const uint8_t* hist = t_.hdsp_history;
    const Layout& L = L_;
    const int64_t m_neg = m_neg_, m_pos = m_pos_;
    const int sign_mode = sign_mode_;
    const int nctx = L_.total;
    ArithDecoder dec = dec_io;  // local copy: lets the compiler keep the coder registers in registers
    const bool nothing = nothing_coded_;
    uint64_t last_t = dec.bit_position();
    Status bad = Status::kOk;
    const bool ok = traverse_rows(
        g_, skip, br0, br1,
        [&](int64_t pos) NNC_LAMBDA_INLINE {
          if (kTca) site.base = base[pos];
          if (kHd) site.hd = hist[pos] != 0;
          int64_t k = 0;
          if (kLimited && nothing) {
            k = 0;
          } else if (!read_level<kLimited>(dec, ctx, L, site, m_neg, m_pos, sign_mode, k)) {
            bad = Status::kCorrupt;
            bad_pos = pos;
            return false;
          }
          int64_t q = k;
          if (kDq) {
            if (k != 0) q = 2 * k - (k < 0 ? -1 : 1) * (site.state & 1);
            site.state = kDqNext[site.state][k & 1];
            if (q > 0x7FFFFFFF || q < -0x7FFFFFFF) {
              bad = Status::kCorrupt;
              bad_pos = pos;
              return false;
            }
          }
          out[pos] = static_cast<int32_t>(q);
          site.nb = neighbour_class(k);
          if (dec.overrun(kReadSlack)) {
            bad = Status::kTruncated;
            bad_pos = pos;
            return false;
          }
          return true;
        },
        [&](int64_t y, int64_t x0, int64_t x1) {
          std::memset(out + y * g_.w + x0, 0, static_cast<size_t>(x1 - x0) * sizeof(int32_t));
          if (kDq) site.state = skip_map[site.state];
        },
        [&]() {
          site.nb = 0;
          for (int i = 0; i < nctx; ++i) ctx[i].reset();
          dec.reset_range();
          const uint64_t t = dec.bit_position();
          if (info)
            info->entry_points.push_back(
                EntryPoint{dec.value_high(), static_cast<uint32_t>(site.state), t - last_t});
          last_t = t;
        });
    dec_io = dec;
    state = site.state;
    if (!ok) return bad;
    return Status::kOk;
  }

  const EntryPoint* eps_ = nullptr;
  size_t eps_count_ = 0;
  int threads_ = 1;
  ArithDecoder& dec_;
  const TensorSpec& t_;
  int32_t* out_;
  int64_t index_;
  Layout L_;
  Geometry g_;
  std::vector<Context> ctx_;
  std::vector<uint8_t> skip_;
  int64_t m_neg_ = kUnbounded, m_pos_ = kUnbounded;
  int sign_mode_ = 0;
  bool hdsp_ = false;
  bool nothing_coded_ = false;
};

// Entry points of block rows 1.. from the marks of a tensor coded by TensorEncoder::parallel_pass and the
// finished payload C: t_r = L_r - 9, and the decoder's register at a block-row start holds the first t_r + 9
// bits of C minus A there (§1.11: value = floor(V / 128); V's low 7 bits are the next stream bits).
std::vector<EntryPoint> entry_points_from_marks(const std::vector<TensorEncoder::RowMark>& marks,
                                                const std::vector<uint8_t>& payload) {
  std::vector<EntryPoint> eps;
  auto c16 = [&](uint64_t end) -> uint32_t {  // bits [end - 16, end) of the payload (zeros before bit 0)
    uint32_t v = 0;
    for (int k = 16; k >= 1; --k) {
      const uint64_t i = end >= uint64_t(k) ? end - uint64_t(k) : ~uint64_t(0);
      uint32_t b = 0;
      if (i != ~uint64_t(0) && (i >> 3) < payload.size()) b = (payload[static_cast<size_t>(i >> 3)] >> (7 - (i & 7))) & 1u;
      v = (v << 1) | b;
    }
    return v;
  };
  for (size_t r = 1; r < marks.size(); ++r) {
    const uint64_t t = marks[r].t - 9;
    const uint32_t v8 = (c16(t + 9) - marks[r].a16) & 0xFFFFu;
    eps.push_back(EntryPoint{v8, marks[r].state, marks[r].t - marks[r - 1].t});
  }
  return eps;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
int context_count(int unary_length) { return Layout(unary_length).total; }

void shadow_best_portable(const ShadowTask& t, uint8_t* best) {
  std::vector<ShadowContext> shadow(static_cast<size_t>(context_count(t.spec->unary_length)));
  shadow_best(t, shadow.data(), best);
}

uint64_t parallel_pass_count() { return g_parallel_passes.load(std::memory_order_relaxed); }

int effective_scan_order(const TensorSpec& t) {
  if (t.width <= 1 || t.height <= 1) return 0;
  return t.scan_order;
}

int64_t block_row_count(const TensorSpec& t) { return make_geometry(t).block_rows; }

Status check_spec(const TensorSpec& t, ErrorInfo& err, int64_t i) {
  auto bad = [&](const std::string& m) {
    return fail(err, Status::kBadConfig, i, -1, "tensor " + std::to_string(i) + ": " + m);
  };
  if (t.height < 1 || t.width < 1) return bad("empty tensors cannot be coded");
  if (t.height > (int64_t(1) << 40) / t.width) return bad("tensor too large");
  if (t.profile != 0 && t.profile != 1) return bad("profile must be 0 or 1");
  if (t.unary_length < 1 || t.unary_length > 256) return bad("unary length must be in 1..256");
  if (t.qp_bits < 0 || t.qp_bits > 32) return bad("qp_bits must be in 0..32");
  if (t.scan_order < 0 || t.scan_order > 4) return bad("scan_order must be in 0..4");
  if (t.codebook_size < 0 || t.codebook_size > (int64_t(1) << 40)) return bad("codebook size out of range");
  if (t.codebook_size > 0 && (t.codebook_zero < 0 || t.codebook_zero >= t.codebook_size))
    return bad("codebook zero offset must be in 0..S-1");
  if (t.tca_base && t.profile != 1) return bad("TCA needs profile 1");
  if (t.tca_base && !t.parent_present)
    return bad("TCA needs parent_node_id_present_flag = 1 (temporal_context_modeling_flag lives there)");
  return Status::kOk;
}

Status encode_session(const TensorSpec* specs, const EncodeSettings* settings, const int32_t* const* levels,
                      size_t count, std::vector<uint8_t>& out, std::vector<std::vector<EntryPoint>>& entry_points,
                      ErrorInfo& err, int threads) {
  out.clear();
  entry_points.assign(count, {});
  int64_t total = 0;
  size_t last_multi = 0;
  bool any_multi = false;
  for (size_t i = 0; i < count; ++i) {
    if (Status st = check_spec(specs[i], err, int64_t(i)); st != Status::kOk) return st;
    total += specs[i].height * specs[i].width;
    if (block_row_count(specs[i]) > 1) {
      any_multi = true;
      last_multi = i;
    }
  }
  out.reserve(static_cast<size_t>(std::min<int64_t>(total, int64_t(1) << 26)) + 64);
  ArithEncoder enc(&out);
  enc.start();
  // Block rows coded on several threads leave marks from which their entry points are computed.
  std::vector<std::vector<TensorEncoder::RowMark>> marks(count);
  for (size_t i = 0; i < count; ++i) {
    TensorEncoder te(enc, specs[i], settings[i], levels[i], int64_t(i), threads);
    if (Status st = te.check_dq(err); st != Status::kOk) return st;
    if (Status st = te.run(err); st != Status::kOk) return st;
    marks[i] = std::move(te.marks);
  }
  enc.finish();

  if (any_multi) {
    // Entry points: computed from the marks where there are some (then the check below decodes those block
    // rows in parallel from them, which also checks them), otherwise measured by decoding the payload.
    std::vector<std::vector<EntryPoint>> computed(count);
    for (size_t i = 0; i < count; ++i)
      if (!marks[i].empty()) computed[i] = entry_points_from_marks(marks[i], out);
    ArithDecoder dec(out.data(), out.size());
    dec.start();
    std::vector<int32_t> scratch;
    for (size_t i = 0; i <= last_multi; ++i) {
      scratch.resize(static_cast<size_t>(specs[i].height * specs[i].width));
      DecodedTensorInfo info;
      TensorDecoder td(dec, specs[i], scratch.data(), int64_t(i));
      if (!computed[i].empty()) td.set_entry_points(computed[i].data(), computed[i].size(), threads);
      if (td.run(info, err) != Status::kOk) {
        err.status = Status::kInternal;
        err.message = "internal error: re-decoding the encoded payload failed: " + err.message;
        return Status::kInternal;
      }
      const bool exact = !(specs[i].dq && settings[i].allow_dq_mismatch);
      if (exact && std::memcmp(scratch.data(), levels[i], scratch.size() * sizeof(int32_t)) != 0)
        return fail(err, Status::kInternal, int64_t(i), -1, "internal error: encoder self-check mismatch");
      if (!computed[i].empty() && !info.parallel)
        return fail(err, Status::kInternal, int64_t(i), -1,
                    "internal error: the entry points of the block rows coded in parallel do not join up");
      entry_points[i] = std::move(info.entry_points);
    }
  }
  return Status::kOk;
}

Status decode_session(const uint8_t* data, size_t size, const TensorSpec* specs, int32_t* const* out, size_t count,
                      std::vector<DecodedTensorInfo>& info, size_t& consumed, ErrorInfo& err,
                      const std::vector<EntryPoint>* signalled, int threads) {
  info.assign(count, {});
  consumed = 0;
  for (size_t i = 0; i < count; ++i)
    if (Status st = check_spec(specs[i], err, int64_t(i)); st != Status::kOk) return st;
  ArithDecoder dec(data, size);
  dec.start();
  for (size_t i = 0; i < count; ++i) {
    TensorDecoder td(dec, specs[i], out[i], int64_t(i));
    if (signalled && !signalled[i].empty()) td.set_entry_points(signalled[i].data(), signalled[i].size(), threads);
    if (Status st = td.run(info[i], err); st != Status::kOk) {
      err.tensor = int64_t(i);
      err.bit_position = static_cast<int64_t>(dec.bit_position());
      return st;
    }
  }
  const unsigned term = dec.terminate();
  consumed = dec.bytes_consumed();
  Status st = Status::kOk;
  if (consumed > size)
    st = fail(err, Status::kTruncated, -1, -1,
              "CABAC payload too short: the decoder needs " + std::to_string(consumed) + " bytes, " +
                  std::to_string(size) + " available");
  else if (!term)
    st = fail(err, Status::kCorrupt, -1, -1, "terminating bin is 0 after the last tensor");
  else if (consumed != size)
    st = fail(err, Status::kTrailing, -1, -1,
              "CABAC payload has " + std::to_string(size - consumed) + " trailing byte(s) after the terminating bin");
  if (st != Status::kOk) err.bit_position = static_cast<int64_t>(dec.bit_position());
  return st;
}

}  // namespace nncabac
