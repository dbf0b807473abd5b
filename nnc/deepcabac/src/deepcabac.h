// Public C++ interface of the nnc DeepCABAC core. No Python dependency.
//
// A "session" is one arithmetic-coder run: the CABAC payload of one NNR compressed data unit. It holds
// one or more tensors coded back to back and ends with the terminating bin and the flush.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nncabac {

enum class Status : int {
  kOk = 0,
  kTruncated = 1,    // decoder: the payload ended before the data it describes
  kCorrupt = 2,      // decoder: the payload is inconsistent (bad terminating bin, level overflow)
  kBadConfig = 3,    // caller: contradictory / out-of-range coding parameters
  kBadInput = 4,     // caller: values that cannot be coded with the given parameters
  kOverflow = 5,     // quantizer: a level would not fit in int32 (the caller may retry with a larger step)
  kInternal = 6,     // self-check failed (should never happen)
  kTrailing = 7,     // decoder: bytes left after the terminating bin (the unit size does not match the data)
};

struct ErrorInfo {
  Status status = Status::kOk;
  int64_t tensor = -1;    // index of the tensor in the session, -1 if not applicable
  int64_t position = -1;  // element position (row-major index) or row, -1 if not applicable
  int64_t bit_position = -1;  // decoder: its read position in the payload (bits) when the error was found, or -1
  std::string message;
};

// How one tensor is coded (everything the CABAC layer needs to know).
struct TensorSpec {
  int64_t height = 1;          // H = d0
  int64_t width = 1;           // W = product of the remaining dims (1 for rank <= 1)
  int profile = 1;             // general_profile_idc
  int unary_length = 11;       // N = cabac_unary_length_minus1 + 1 (1..256)
  int qp_bits = 8;             // bypass bits of the qp offset; 0 = no qp offset (NNR_PT_INT)
  int scan_order = 0;          // signalled scan order (0..4); the effective order is derived
  bool dq = false;             // dq_flag
  bool parent_present = false; // parent_node_id_present_flag of the NDU
  int64_t codebook_size = 0;   // S (profile 1 only; 0 = no codebook)
  int64_t codebook_zero = 0;   // Z
  const int32_t* tca_base = nullptr;   // TCA base (same element count) or nullptr
  const uint8_t* hdsp_history = nullptr;  // history mask (nonzero = active) or nullptr
};

struct EncodeSettings {
  bool param_opt = true;
  bool row_skipping = false;
  bool hdsp = false;
  int32_t qp_offset = 0;
  bool allow_dq_mismatch = false;  // code q with the wrong DQ parity the way NNCodec does instead of failing
};

struct EntryPoint {
  uint32_t value = 0;      // floor(V / 128) after the range reset
  uint32_t dq_state = 0;
  uint64_t bit_offset = 0; // t_{r+1} - t_r
};

struct DecodedTensorInfo {
  int32_t qp_offset = 0;
  bool has_qp = false;
  bool hdsp_flag = false;
  bool row_skip_flag = false;
  bool parallel = false;  // block rows were decoded in parallel from signalled entry points
  std::vector<EntryPoint> entry_points;
};

// How many tensors this process has coded with their block rows on several threads (for tests).
uint64_t parallel_pass_count();

// Derived geometry.
int effective_scan_order(const TensorSpec& t);
int64_t block_row_count(const TensorSpec& t);  // 1 for scan order 0

// Validate a spec; returns kOk or kBadConfig with a message.
Status check_spec(const TensorSpec& t, ErrorInfo& err, int64_t tensor_index);

// Encode `count` tensors into one CABAC payload. levels[i] holds H*W stored integers (q) of tensor i in
// row-major order. Entry points (for tensors with >= 2 block rows) are measured on the produced payload.
// With threads > 1 the block rows of a large tensor with entry points (scan order > 0) are coded on that
// many threads (same bytes).
Status encode_session(const TensorSpec* specs, const EncodeSettings* settings, const int32_t* const* levels,
                      size_t count, std::vector<uint8_t>& out, std::vector<std::vector<EntryPoint>>& entry_points,
                      ErrorInfo& err, int threads = 1);

// Decode `count` tensors from one CABAC payload of `size` bytes into out[i] (H*W int32 each).
// `consumed` receives the number of bytes the decoder had consumed when the terminating bin was read.
// Optional `signalled[i]`: the entry points signalled for tensor i; with threads > 1 its block rows are
// then decoded in parallel (falling back to sequential decoding if they do not join up exactly).
Status decode_session(const uint8_t* data, size_t size, const TensorSpec* specs, int32_t* const* out, size_t count,
                      std::vector<DecodedTensorInfo>& info, size_t& consumed, ErrorInfo& err,
                      const std::vector<EntryPoint>* signalled = nullptr, int threads = 1);

// Reference-exact quantizers (lambda 0). x and q are H*W row-major; processing follows the scan order.
Status quantize(const float* x, int32_t* q, int64_t height, int64_t width, float step, bool dq, int scan_order,
                ErrorInfo& err);

}  // namespace nncabac
