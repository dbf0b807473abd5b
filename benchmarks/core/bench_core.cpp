// Times the DeepCABAC core alone (no Python): encode and decode of the sessions recorded by
// dump_sessions.py, best of N runs, with a round-trip check and an FNV-1a hash of the payloads (the hash
// must not change when the core is optimised). Build and run with run.sh.
//
// Input format (little-endian): int64 session count; per session int64 tensor count; per tensor
// int64[10] spec row (as nnc.deepcabac passes it), int64[5] settings row, int64 n, int32[n] levels.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "deepcabac.h"

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
  std::printf("{\"elements\": %lld, \"bytes\": %llu, \"payload_fnv1a\": \"%016llx\", \"encode_s\": %.4f, "
              "\"decode_s\": %.4f, \"encode_ns_per_element\": %.2f, \"decode_ns_per_element\": %.2f}\n",
              static_cast<long long>(elements), static_cast<unsigned long long>(bytes),
              static_cast<unsigned long long>(hash), best_enc, best_dec, best_enc / elements * 1e9,
              best_dec / elements * 1e9);
  return 0;
}
