// Sanitizer driver for the DeepCABAC core: encodes random tensors with many configurations, then feeds
// the decoder every prefix and many random mutations of each payload. Built with ASan + UBSan by run.sh.
// Exit status 0 = no crash and every result was either a clean decode or a reported error.
// It also prints a digest of every outcome (status, error location and message, or consumed bytes and
// decoded levels) and of every payload it encoded: a change to the core that must not change behaviour,
// on valid or corrupt input, must leave the digest as it was.
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <random>
#include <vector>

#include "deepcabac.h"

using namespace nncabac;

namespace {

struct Digest {
  uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  template <class T>
  void value(T v) { bytes(&v, sizeof v); }
  void outcome(Status st, const ErrorInfo& err, size_t consumed, const std::vector<std::vector<int32_t>>& out) {
    value(static_cast<int>(st));
    if (st != Status::kOk) {
      value(err.tensor);
      value(err.position);
      bytes(err.message.data(), err.message.size());
      return;
    }
    value(consumed);
    for (const auto& o : out) bytes(o.data(), o.size() * sizeof(int32_t));
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int sessions = argc > 1 ? std::atoi(argv[1]) : 60;
  const int mutations = argc > 2 ? std::atoi(argv[2]) : 400;
  std::mt19937_64 rng(12345);
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  std::normal_distribution<double> gauss(0.0, 1.0);
  long decoded_ok = 0, rejected = 0, roundtrips = 0;
  Digest digest;
  for (int s = 0; s < sessions; ++s) {
    const int count = static_cast<int>(uni(1, 3));
    std::vector<TensorSpec> specs(count);
    std::vector<EncodeSettings> settings(count);
    std::vector<std::vector<int32_t>> levels(count), base(count);
    std::vector<std::vector<uint8_t>> hist(count);
    std::vector<const int32_t*> ptrs(count);
    for (int i = 0; i < count; ++i) {
      TensorSpec& t = specs[i];
      t.height = uni(1, 100);
      t.width = uni(0, 3) == 0 ? 1 : uni(1, 100);
      t.profile = static_cast<int>(uni(0, 1));
      t.unary_length = static_cast<int>(uni(1, 16));
      t.qp_bits = uni(0, 1) ? 8 : 0;
      t.scan_order = static_cast<int>(uni(0, 4));
      t.dq = uni(0, 2) == 0;
      t.parent_present = t.profile == 1 && uni(0, 1);
      const int64_t n = t.height * t.width;
      levels[i].resize(n);
      const double sigma = uni(0, 1) ? 3.0 : 2000.0;
      for (auto& v : levels[i]) v = static_cast<int32_t>(gauss(rng) * sigma);
      if (t.dq) {
        std::vector<float> x(n);
        for (auto& v : x) v = static_cast<float>(gauss(rng));
        ErrorInfo e;
        quantize(x.data(), levels[i].data(), t.height, t.width, 0.05f, true, t.scan_order, e);
      }
      if (t.parent_present && uni(0, 1)) {
        base[i].resize(n);
        for (auto& v : base[i]) v = static_cast<int32_t>(gauss(rng) * 2);
        t.tca_base = base[i].data();
      }
      if (t.parent_present) {
        hist[i].resize(n);
        for (auto& v : hist[i]) v = static_cast<uint8_t>(uni(0, 1));
        t.hdsp_history = hist[i].data();
        settings[i].hdsp = uni(0, 1);
      }
      settings[i].param_opt = uni(0, 1);
      settings[i].row_skipping = t.profile == 1 && !t.dq && uni(0, 1);
      settings[i].qp_offset = static_cast<int32_t>(uni(-128, 127));
      ptrs[i] = levels[i].data();
    }
    std::vector<uint8_t> payload;
    std::vector<std::vector<EntryPoint>> eps;
    ErrorInfo err;
    if (encode_session(specs.data(), settings.data(), ptrs.data(), count, payload, eps, err) != Status::kOk) {
      std::fprintf(stderr, "encode failed: %s\n", err.message.c_str());
      return 2;
    }
    digest.bytes(payload.data(), payload.size());
    std::vector<std::vector<int32_t>> out(count);
    std::vector<int32_t*> outp(count);
    for (int i = 0; i < count; ++i) {
      out[i].resize(levels[i].size());
      outp[i] = out[i].data();
    }
    std::vector<DecodedTensorInfo> info;
    size_t consumed = 0;
    if (decode_session(payload.data(), payload.size(), specs.data(), outp.data(), count, info, consumed, err) !=
            Status::kOk ||
        out != levels) {
      std::fprintf(stderr, "round trip failed in session %d: %s\n", s, err.message.c_str());
      return 3;
    }
    // Parallel block-row decoding from the entry points must give the same result.
    {
      std::vector<std::vector<int32_t>> out2(count);
      std::vector<int32_t*> outp2(count);
      for (int i = 0; i < count; ++i) {
        out2[i].resize(levels[i].size());
        outp2[i] = out2[i].data();
      }
      if (decode_session(payload.data(), payload.size(), specs.data(), outp2.data(), count, info, consumed, err,
                         eps.data(), 3) != Status::kOk ||
          out2 != levels) {
        std::fprintf(stderr, "parallel round trip failed in session %d\n", s);
        return 5;
      }
    }
    ++roundtrips;
    // Every prefix, copied into an exactly sized heap buffer so that ASan sees any over-read.
    // (all prefixes of short payloads; for long ones about 1500 cuts plus the last 64 positions)
    const size_t stride = payload.size() > 1500 ? payload.size() / 1500 : 1;
    for (size_t cut = 0; cut < payload.size(); cut += (cut + 64 >= payload.size() ? 1 : stride)) {
      std::vector<uint8_t> part(payload.begin(), payload.begin() + cut);
      uint8_t* exact = static_cast<uint8_t*>(std::malloc(cut ? cut : 1));
      if (cut) std::memcpy(exact, part.data(), cut);
      Status st = decode_session(exact, cut, specs.data(), outp.data(), count, info, consumed, err);
      digest.outcome(st, err, consumed, out);
      std::free(exact);
      st == Status::kOk ? ++decoded_ok : ++rejected;
    }
    for (int m = 0; m < mutations; ++m) {
      std::vector<uint8_t> bad = payload;
      const int kind = m % 3;
      if (kind == 0 && !bad.empty()) {
        bad[uni(0, bad.size() - 1)] ^= static_cast<uint8_t>(1u << uni(0, 7));
      } else if (kind == 1 && !bad.empty()) {
        for (int k = 0; k < 4; ++k) bad[uni(0, bad.size() - 1)] = static_cast<uint8_t>(uni(0, 255));
      } else if (!bad.empty()) {
        bad.erase(bad.begin() + uni(0, bad.size() - 1));
      }
      uint8_t* exact = static_cast<uint8_t*>(std::malloc(bad.size() ? bad.size() : 1));
      if (!bad.empty()) std::memcpy(exact, bad.data(), bad.size());
      Status st = decode_session(exact, bad.size(), specs.data(), outp.data(), count, info, consumed, err);
      digest.outcome(st, err, consumed, out);
      // The same corrupted payload through the parallel entry-point path.
      if (m % 4 == 0) {
        Status st2 = decode_session(exact, bad.size(), specs.data(), outp.data(), count, info, consumed, err,
                                    eps.data(), 3);
        if (st2 != st) {
          std::fprintf(stderr, "parallel and sequential decoding disagree in session %d\n", s);
          return 4;
        }
      }
      std::free(exact);
      st == Status::kOk ? ++decoded_ok : ++rejected;
    }
  }
  std::printf("cabac_asan: %ld round trips, %ld corrupted inputs rejected with an error, %ld decoded cleanly; "
              "outcome digest %016llx\n",
              roundtrips, rejected, decoded_ok, static_cast<unsigned long long>(digest.h));
  return 0;
}
