// Times the DeepCABAC core alone (no Python): encode and decode of the sessions recorded by
// dump_sessions.py, best of N runs, with a round-trip check and an FNV-1a hash of the payloads (the hash
// must not change when the core is optimised). Then the engine alone: a replay of the same bins with known
// contexts, and the per-bin latency on a stream of MPS bins (see replay_decode / mps_chain_ns_per_bin).
// Build and run with run.sh.
//
// Input format (little-endian): int64 session count; per session int64 tensor count; per tensor
// int64[10] spec row (the TensorSpec fields in declaration order), int64[5] settings row (EncodeSettings), int64 n, int32[n] levels.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "deepcabac.h"
#include "engine.h"
#include "scan.h"
#include "shadow.h"

using namespace nncabac;

namespace {

struct Session {
  std::vector<TensorSpec> specs;
  std::vector<EncodeSettings> settings;
  std::vector<std::vector<int32_t>> levels;
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

bool read_all(FILE* f, void* p, size_t size, size_t n) { return std::fread(p, size, n, f) == n; }

bool load(const char* path, std::vector<Session>& out, int64_t& elements) {
  FILE* f = std::fopen(path, "rb");
  if (!f) return false;
  int64_t ns = 0;
  bool ok = read_all(f, &ns, 8, 1) && ns >= 0;
  elements = 0;
  out.resize(ok ? static_cast<size_t>(ns) : 0);
  for (auto& s : out) {
    int64_t n = 0;
    if (!(ok = ok && read_all(f, &n, 8, 1) && n >= 0)) break;
    s.specs.resize(n);
    s.settings.resize(n);
    s.levels.resize(n);
    for (int64_t i = 0; i < n && ok; ++i) {
      int64_t r[10], q[5], cnt = 0;
      ok = read_all(f, r, 8, 10) && read_all(f, q, 8, 5) && read_all(f, &cnt, 8, 1) && cnt >= 0;
      if (!ok) break;
      TensorSpec& t = s.specs[i];
      t.height = r[0];
      t.width = r[1];
      t.profile = static_cast<int>(r[2]);
      t.unary_length = static_cast<int>(r[3]);
      t.qp_bits = static_cast<int>(r[4]);
      t.scan_order = static_cast<int>(r[5]);
      t.dq = r[6] != 0;
      t.parent_present = r[7] != 0;
      t.codebook_size = r[8];
      t.codebook_zero = r[9];
      EncodeSettings& e = s.settings[i];
      e.param_opt = q[0] != 0;
      e.row_skipping = q[1] != 0;
      e.hdsp = q[2] != 0;
      e.qp_offset = static_cast<int32_t>(q[3]);
      e.allow_dq_mismatch = q[4] != 0;
      s.levels[i].resize(static_cast<size_t>(cnt));
      ok = read_all(f, s.levels[i].data(), 4, static_cast<size_t>(cnt));
      elements += cnt;
    }
  }
  std::fclose(f);
  return ok;
}

// Engine replay: the context-coded and bypass bins of every tensor, with their context indices, recorded
// from the binarisation (§3.7) of the levels (contexts initialised with the ecoIdx the parameter
// optimisation chooses, DQ state followed; row-skip flags left out, so a few bins differ from the real
// stream), coded as one stream and decoded again in a loop that knows the context of every bin in advance.
// That loop does only what every decoder of these bins must do (arithmetic decoding and probability update
// of each bin) and none of the binarisation or context selection: its time is what the core decoder would
// take if those were free.
struct Replay {
  std::vector<uint32_t> rec;  // (context << 1) | bin; kBypass << 1 | bin for a bypass bin
  std::vector<Context> ctx;
  int64_t ctx_bins = 0, bypass_bins = 0;
  static constexpr uint32_t kBypass = 0x7FFFFFFFu;
};

struct RecordSink {
  Replay& r;
  uint32_t off;
  void bin(unsigned b, int c) {
    r.rec.push_back(((off + static_cast<uint32_t>(c)) << 1) | b);
    ++r.ctx_bins;
  }
  void bypass(uint32_t v, int n) {
    for (int i = n - 1; i >= 0; --i) r.rec.push_back((Replay::kBypass << 1) | ((v >> i) & 1u));
    r.bypass_bins += n;
  }
};

void record(const TensorSpec& t, const int32_t* q, Replay& r) {
  const Layout L(t.unary_length);
  std::vector<uint8_t> best(static_cast<size_t>(L.total));
  ShadowTask task;
  task.spec = &t;
  task.levels = q;
  shadow_best_portable(task, best.data());
  const uint32_t off = static_cast<uint32_t>(r.ctx.size());
  for (int i = 0; i < L.total; ++i) {
    r.ctx.emplace_back();
    r.ctx.back().init(best[static_cast<size_t>(i)]);
  }
  RecordSink sink{r, off};
  Site site{0, 0, 0, false};
  for (int64_t pos = 0; pos < t.height * t.width; ++pos) {
    const int64_t k = t.dq ? dq_coded_level(q[pos], site.state) : q[pos];
    write_level(sink, L, site, k, kUnbounded, kUnbounded, 0);
    site.nb = neighbour_class(k);
    if (t.dq) site.state = kDqNext[site.state][k & 1];
  }
}

std::vector<uint8_t> encode_replay(const Replay& r) {
  std::vector<uint8_t> stream;
  std::vector<Context> ctx = r.ctx;
  ArithEncoder enc(&stream);
  enc.start();
  for (const uint32_t e : r.rec) {
    if ((e >> 1) == Replay::kBypass)
      enc.bypass(e & 1u);
    else
      enc.encode(e & 1u, ctx[e >> 1]);
  }
  enc.finish();
  return stream;
}

// Decode the replay stream `repeats` times; returns the best time, or -1 if a bin came out wrong.
template <bool kPredicted>
double replay_decode(const Replay& r, const std::vector<uint8_t>& stream, int repeats) {
  double best = 1e30;
  for (int rep = 0; rep < repeats; ++rep) {
    std::vector<Context> ctx = r.ctx;
    const double t0 = now();
    ArithDecoder dec(stream.data(), stream.size());
    dec.start();
    uint32_t wrong = 0;
    for (const uint32_t e : r.rec) {
      const uint32_t c = e >> 1;
      unsigned b;
      if (c == Replay::kBypass)
        b = dec.bypass();
      else if (kPredicted)
        b = dec.decode_predicted(ctx[c]);
      else
        b = dec.decode(ctx[c]);
      wrong |= b ^ (e & 1u);
    }
    best = std::min(best, now() - t0);
    if (wrong) return -1;
  }
  return best;
}

// The same loop on a stream of MPS bins (no mispredictions) cycling through `contexts` contexts: with one
// context each bin also waits for the previous bin's probability update; with several, only the coder's
// range links one bin to the next, so the time per bin is the latency of the engine's serial chain.
double mps_chain_ns_per_bin(int64_t bins, uint32_t contexts, int repeats) {
  Replay r;
  r.ctx.resize(contexts);
  for (Context& c : r.ctx) c.init(0);
  r.rec.resize(static_cast<size_t>(bins));
  for (int64_t i = 0; i < bins; ++i) r.rec[static_cast<size_t>(i)] = (static_cast<uint32_t>(i) % contexts) << 1;
  const double t = replay_decode<true>(r, encode_replay(r), repeats);
  return t < 0 ? -1.0 : t / static_cast<double>(bins) * 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_core SESSIONS.raw [repeats]\n");
    return 2;
  }
  const int repeats = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  std::vector<Session> sessions;
  int64_t elements = 0;
  if (!load(argv[1], sessions, elements)) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 2;
  }
  std::vector<std::vector<uint8_t>> payloads(sessions.size());
  double best_enc = 1e30, best_dec = 1e30;
  uint64_t bytes = 0, hash = 1469598103934665603ull;
  for (int rep = 0; rep < repeats; ++rep) {
    const double t0 = now();
    bytes = 0;
    hash = 1469598103934665603ull;
    for (size_t k = 0; k < sessions.size(); ++k) {
      Session& s = sessions[k];
      std::vector<const int32_t*> ptrs;
      for (auto& l : s.levels) ptrs.push_back(l.data());
      std::vector<std::vector<EntryPoint>> eps;
      ErrorInfo err;
      if (encode_session(s.specs.data(), s.settings.data(), ptrs.data(), ptrs.size(), payloads[k], eps, err) !=
          Status::kOk) {
        std::fprintf(stderr, "encode failed in session %zu: %s\n", k, err.message.c_str());
        return 1;
      }
      bytes += payloads[k].size();
      for (uint8_t b : payloads[k]) hash = (hash ^ b) * 1099511628211ull;
    }
    const double t1 = now();
    bool same = true;
    for (size_t k = 0; k < sessions.size(); ++k) {
      Session& s = sessions[k];
      std::vector<std::vector<int32_t>> out(s.levels.size());
      std::vector<int32_t*> ptrs;
      for (size_t i = 0; i < out.size(); ++i) {
        out[i].resize(s.levels[i].size());
        ptrs.push_back(out[i].data());
      }
      std::vector<DecodedTensorInfo> info;
      size_t consumed = 0;
      ErrorInfo err;
      if (decode_session(payloads[k].data(), payloads[k].size(), s.specs.data(), ptrs.data(), ptrs.size(), info,
                         consumed, err) != Status::kOk) {
        std::fprintf(stderr, "decode failed in session %zu: %s\n", k, err.message.c_str());
        return 1;
      }
      for (size_t i = 0; i < out.size(); ++i) same = same && out[i] == s.levels[i];
    }
    const double t2 = now();
    if (!same) {
      std::fprintf(stderr, "round trip mismatch\n");
      return 1;
    }
    best_enc = std::min(best_enc, t1 - t0);
    best_dec = std::min(best_dec, t2 - t1);
  }
  Replay rp;
  for (Session& s : sessions)
    for (size_t i = 0; i < s.specs.size(); ++i) record(s.specs[i], s.levels[i].data(), rp);
  const std::vector<uint8_t> stream = encode_replay(rp);
  const double replay_pred = replay_decode<true>(rp, stream, repeats);
  const double replay_sel = replay_decode<false>(rp, stream, repeats);
  if (replay_pred < 0 || replay_sel < 0) {
    std::fprintf(stderr, "engine replay mismatch\n");
    return 1;
  }
  const double chain1_ns = mps_chain_ns_per_bin(int64_t(1) << 26, 1, repeats);
  const double chain8_ns = mps_chain_ns_per_bin(int64_t(1) << 26, 8, repeats);
  std::printf("{\"elements\": %lld, \"bytes\": %llu, \"payload_fnv1a\": \"%016llx\", \"encode_s\": %.4f, "
              "\"decode_s\": %.4f, \"encode_ns_per_element\": %.2f, \"decode_ns_per_element\": %.2f, "
              "\"context_bins\": %lld, \"bypass_bins\": %lld, \"replay_stream_bytes\": %zu, "
              "\"replay_decode_s\": %.4f, \"replay_decode_branchfree_s\": %.4f, "
              "\"mps_chain_ns_per_bin_1ctx\": %.3f, \"mps_chain_ns_per_bin_8ctx\": %.3f}\n",
              static_cast<long long>(elements), static_cast<unsigned long long>(bytes),
              static_cast<unsigned long long>(hash), best_enc, best_dec, best_enc / elements * 1e9,
              best_dec / elements * 1e9, static_cast<long long>(rp.ctx_bins),
              static_cast<long long>(rp.bypass_bins), stream.size(), replay_pred, replay_sel, chain1_ns, chain8_ns);
  return 0;
}
