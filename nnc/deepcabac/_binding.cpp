// Thin nanobind layer over the C++ DeepCABAC core. Arrays are passed as buffers with their lengths,
// never copied; the GIL is released for the whole coding call. Errors come back as a status code with
// location so that the Python wrapper can raise nnc.errors exceptions.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "src/deepcabac.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using I32In = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I32Out = nb::ndarray<int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U8In = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32In = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64Table = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

constexpr size_t kSpecCols = 10;
constexpr size_t kSettingCols = 5;


// Unpack the per-tensor spec table and the optional per-tensor TCA/HDSP arrays.
std::vector<nncabac::TensorSpec> read_specs(const I64Table& table, const nb::list& tca, const nb::list& hist) {
  const size_t n = table.shape(0);
  if (table.shape(1) != kSpecCols) throw nb::value_error("spec table must have 10 columns");
  if (nb::len(tca) != n || nb::len(hist) != n) throw nb::value_error("tca/hdsp lists must have one entry per tensor");
  std::vector<nncabac::TensorSpec> specs(n);
  const int64_t* d = table.data();
  for (size_t i = 0; i < n; ++i) {
    const int64_t* r = d + i * kSpecCols;
    nncabac::TensorSpec& s = specs[i];
    s.height = r[0];
    s.width = r[1];
    s.profile = static_cast<int>(r[2]);
    s.unary_length = static_cast<int>(r[3]);
    s.qp_bits = static_cast<int>(r[4]);
    s.scan_order = static_cast<int>(r[5]);
    s.dq = r[6] != 0;
    s.parent_present = r[7] != 0;
    s.codebook_size = r[8];
    s.codebook_zero = r[9];
    const size_t count = static_cast<size_t>(s.height > 0 && s.width > 0 ? s.height * s.width : 0);
    nb::handle tb = tca[i];
    if (!tb.is_none()) {
      I32In a = nb::cast<I32In>(tb);
      if (a.shape(0) != count) throw nb::value_error("TCA base has the wrong element count");
      s.tca_base = a.data();
    }
    nb::handle hb = hist[i];
    if (!hb.is_none()) {
      U8In a = nb::cast<U8In>(hb);
      if (a.shape(0) != count) throw nb::value_error("HDSP history has the wrong element count");
      s.hdsp_history = a.data();
    }
  }
  return specs;
}

nb::tuple encode(nb::list levels, I64Table spec_table, I64Table setting_table, nb::list tca, nb::list hist,
                 int threads) {
  std::vector<nncabac::TensorSpec> specs = read_specs(spec_table, tca, hist);
  const size_t n = specs.size();
  if (nb::len(levels) != n) throw nb::value_error("one level array per tensor expected");
  if (setting_table.shape(0) != n || setting_table.shape(1) != kSettingCols)
    throw nb::value_error("settings table must be (n, 5)");
  std::vector<nncabac::EncodeSettings> settings(n);
  std::vector<const int32_t*> ptrs(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t* r = setting_table.data() + i * kSettingCols;
    settings[i].param_opt = r[0] != 0;
    settings[i].row_skipping = r[1] != 0;
    settings[i].hdsp = r[2] != 0;
    settings[i].qp_offset = static_cast<int32_t>(r[3]);
    settings[i].allow_dq_mismatch = r[4] != 0;
    I32In a = nb::cast<I32In>(levels[i]);
    if (static_cast<int64_t>(a.shape(0)) != specs[i].height * specs[i].width)
      throw nb::value_error("level array has the wrong element count");
    ptrs[i] = a.data();
  }
  std::vector<uint8_t> out;
  std::vector<std::vector<nncabac::EntryPoint>> eps;
  nncabac::ErrorInfo err;
  nncabac::Status st;
  {
    nb::gil_scoped_release release;
    st = nncabac::encode_session(specs.data(), settings.data(), ptrs.data(), n, out, eps, err, threads);
  }
  nb::list ep_list;
  for (const auto& v : eps) {
    nb::list one;
    for (const auto& e : v) one.append(nb::make_tuple(e.value, e.dq_state, e.bit_offset));
    ep_list.append(one);
  }
  nb::bytes payload(reinterpret_cast<const char*>(out.data()), out.size());
  return nb::make_tuple(static_cast<int>(st), err.tensor, err.position, err.message, payload, ep_list);
}

nb::tuple decode(U8In data, I64Table spec_table, nb::list tca, nb::list hist, nb::list outs, nb::list eps,
                 int threads) {
  std::vector<nncabac::TensorSpec> specs = read_specs(spec_table, tca, hist);
  const size_t n = specs.size();
  if (nb::len(outs) != n) throw nb::value_error("one output array per tensor expected");
  std::vector<int32_t*> ptrs(n);
  for (size_t i = 0; i < n; ++i) {
    I32Out a = nb::cast<I32Out>(outs[i]);
    if (static_cast<int64_t>(a.shape(0)) != specs[i].height * specs[i].width)
      throw nb::value_error("output array has the wrong element count");
    ptrs[i] = a.data();
  }
  if (nb::len(eps) != n) throw nb::value_error("one entry-point list (or None) per tensor expected");
  std::vector<std::vector<nncabac::EntryPoint>> signalled(n);
  for (size_t i = 0; i < n; ++i) {
    nb::handle h = eps[i];
    if (h.is_none()) continue;
    for (nb::handle e : h) {
      auto t = nb::cast<std::tuple<uint64_t, uint64_t, uint64_t>>(e);
      signalled[i].push_back(nncabac::EntryPoint{static_cast<uint32_t>(std::min<uint64_t>(std::get<0>(t), 1u << 30)),
                                                 static_cast<uint32_t>(std::min<uint64_t>(std::get<1>(t), 1u << 30)),
                                                 std::get<2>(t)});
    }
  }
  std::vector<nncabac::DecodedTensorInfo> info;
  size_t consumed = 0;
  nncabac::ErrorInfo err;
  nncabac::Status st;
  const uint8_t* bytes = data.data();
  const size_t size = data.shape(0);
  {
    nb::gil_scoped_release release;
    st = nncabac::decode_session(bytes, size, specs.data(), ptrs.data(), n, info, consumed, err, signalled.data(),
                                 threads);
  }
  nb::list info_list;
  for (const auto& t : info) {
    nb::list one;
    for (const auto& e : t.entry_points) one.append(nb::make_tuple(e.value, e.dq_state, e.bit_offset));
    info_list.append(nb::make_tuple(t.qp_offset, t.has_qp, t.hdsp_flag, t.row_skip_flag, one, t.parallel));
  }
  return nb::make_tuple(static_cast<int>(st), err.tensor, err.position, err.message, consumed, info_list);
}

nb::tuple quantize(F32In x, I32Out q, int64_t height, int64_t width, float step, bool dq, int scan_order) {
  if (static_cast<int64_t>(x.shape(0)) != height * width || q.shape(0) != x.shape(0))
    throw nb::value_error("array sizes do not match the shape");
  nncabac::ErrorInfo err;
  nncabac::Status st;
  const float* px = x.data();
  int32_t* pq = q.data();
  {
    nb::gil_scoped_release release;
    st = nncabac::quantize(px, pq, height, width, step, dq, scan_order, err);
  }
  return nb::make_tuple(static_cast<int>(st), err.position, err.message);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "nnc DeepCABAC core (C++)";
  m.def("encode", &encode, "levels"_a, "specs"_a, "settings"_a, "tca"_a, "hist"_a, "threads"_a);
  m.def("decode", &decode, "data"_a, "specs"_a, "tca"_a, "hist"_a, "outs"_a, "eps"_a, "threads"_a);
  m.def("parallel_pass_count", &nncabac::parallel_pass_count);
  m.def("quantize", &quantize, "x"_a, "q"_a, "height"_a, "width"_a, "step"_a, "dq"_a, "scan_order"_a);
}
