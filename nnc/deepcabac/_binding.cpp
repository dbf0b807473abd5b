// Typed nanobind layer over the C++ DeepCABAC core (module nnc.deepcabac._core).
//
// The core's structs are bound as classes: TensorSpec (with the TCA base / HDSP history arrays it points into,
// kept alive by the object), EncodeSettings, EntryPoint and TensorInfo (what the decoder reports per tensor).
// Arrays are passed as buffers with their lengths and never copied (no implicit dtype conversion: a wrong dtype
// or layout is a TypeError); the GIL is released for the whole coding call. A failure of the core is raised as
// CoreError carrying the core's ErrorInfo (status, tensor index, element position, bit position in the payload);
// nnc.deepcabac maps it onto the nnc.errors hierarchy with those fields as attributes.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "src/deepcabac.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using I32In = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I32Out = nb::ndarray<int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U8In = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32In = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// nncabac::TensorSpec plus the Python arrays its two pointers point into (held here, so they outlive the spec).
struct Spec {
  nncabac::TensorSpec s;
  nb::object tca;   // None or the 1-D int32 array s.tca_base points into
  nb::object hist;  // None or the 1-D uint8 array s.hdsp_history points into
};

PyObject* g_core_error = nullptr;  // CoreError (created at module init, owned by the module)

int64_t element_count(const nncabac::TensorSpec& s) { return s.height > 0 && s.width > 0 ? s.height * s.width : 0; }

std::string py_type_name(nb::handle h) { return nb::type_name(h.type()).c_str(); }

// A 1-D C-contiguous CPU array of exactly T without conversion, else TypeError naming `what`.
template <typename Array>
Array exact_array(nb::handle h, const char* what, const char* dtype) {
  Array a;
  if (!nb::try_cast(h, a, /*convert=*/false))
    throw nb::type_error((std::string(what) + " must be a 1-D C-contiguous " + dtype + " numpy array, got " +
                          py_type_name(h)).c_str());
  return a;
}

void init_spec(Spec* self, int64_t height, int64_t width, int profile, int unary_length, int qp_bits,
               int scan_order, bool dq, bool parent_present, int64_t codebook_size, int64_t codebook_zero,
               nb::object tca_base, nb::object hdsp_history) {
  nncabac::TensorSpec s;
  s.height = height;
  s.width = width;
  s.profile = profile;
  s.unary_length = unary_length;
  s.qp_bits = qp_bits;
  s.scan_order = scan_order;
  s.dq = dq;
  s.parent_present = parent_present;
  s.codebook_size = codebook_size;
  s.codebook_zero = codebook_zero;
  const size_t count = static_cast<size_t>(element_count(s));
  if (!tca_base.is_none()) {
    I32In a = exact_array<I32In>(tca_base, "tca_base", "int32");
    if (a.shape(0) != count) throw nb::value_error("tca_base has the wrong element count");
    s.tca_base = a.data();
  }
  if (!hdsp_history.is_none()) {
    U8In a = exact_array<U8In>(hdsp_history, "hdsp_history", "uint8");
    if (a.shape(0) != count) throw nb::value_error("hdsp_history has the wrong element count");
    s.hdsp_history = a.data();
  }
  new (self) Spec{s, std::move(tca_base), std::move(hdsp_history)};
}

nb::object none_if_negative(int64_t v) { return v < 0 ? nb::object(nb::none()) : nb::object(nb::int_(v)); }

// Raise CoreError(message) with the core's ErrorInfo as attributes (the GIL must be held).
[[noreturn]] void raise_core_error(nncabac::Status st, const nncabac::ErrorInfo& err) {
  nb::object exc = nb::handle(g_core_error)(nb::str(err.message.c_str()));
  exc.attr("status") = nb::cast(st);
  exc.attr("tensor") = none_if_negative(err.tensor);
  exc.attr("position") = none_if_negative(err.position);
  exc.attr("bit_position") = none_if_negative(err.bit_position);
  PyErr_SetObject(g_core_error, exc.ptr());
  throw nb::python_error();
}

// The specs of a session: every item must be a TensorSpec (TypeError naming the index otherwise). `keep` holds a
// reference to each, so the TCA/HDSP arrays they point into stay alive while the GIL is released even if another
// thread empties the caller's list meanwhile.
std::vector<nncabac::TensorSpec> read_specs(const nb::list& specs, std::vector<nb::object>& keep) {
  const size_t n = nb::len(specs);
  std::vector<nncabac::TensorSpec> out(n);
  keep.reserve(keep.size() + n);
  for (size_t i = 0; i < n; ++i) {
    nb::handle h = specs[i];
    if (!nb::isinstance<Spec>(h))
      throw nb::type_error(("specs[" + std::to_string(i) + "] must be nnc.deepcabac._core.TensorSpec, got " +
                            py_type_name(h)).c_str());
    out[i] = nb::cast<const Spec&>(h).s;
    keep.push_back(nb::borrow(h));
  }
  return out;
}

uint64_t clamp_u64(nb::handle h) {
  uint64_t v = 0;
  if (nb::try_cast(h, v)) return v;
  int64_t s = 0;
  if (nb::try_cast(h, s) && s < 0) return 0;
  return std::numeric_limits<uint64_t>::max();  // larger than any payload: the entry point is not used
}

nb::tuple encode(nb::list levels, nb::list specs, nb::list settings, int threads) {
  std::vector<nb::object> keep;  // everything the core reads while the GIL is released
  std::vector<nncabac::TensorSpec> sp = read_specs(specs, keep);
  const size_t n = sp.size();
  if (nb::len(levels) != n || nb::len(settings) != n)
    throw nb::value_error("encode needs one level array and one EncodeSettings per spec");
  std::vector<nncabac::EncodeSettings> st(n);
  std::vector<const int32_t*> ptrs(n);
  for (size_t i = 0; i < n; ++i) {
    nb::handle h = settings[i];
    if (!nb::isinstance<nncabac::EncodeSettings>(h))
      throw nb::type_error(("settings[" + std::to_string(i) + "] must be nnc.deepcabac._core.EncodeSettings, got " +
                            py_type_name(h)).c_str());
    st[i] = nb::cast<const nncabac::EncodeSettings&>(h);
    nb::handle lv = levels[i];
    I32In a = exact_array<I32In>(lv, "levels", "int32");
    if (static_cast<int64_t>(a.shape(0)) != element_count(sp[i]))
      throw nb::value_error(("levels[" + std::to_string(i) + "] has the wrong element count").c_str());
    ptrs[i] = a.data();
    keep.push_back(nb::borrow(lv));
  }
  std::vector<uint8_t> out;
  std::vector<std::vector<nncabac::EntryPoint>> eps;
  nncabac::ErrorInfo err;
  nncabac::Status status;
  {
    nb::gil_scoped_release release;
    status = nncabac::encode_session(sp.data(), st.data(), ptrs.data(), n, out, eps, err, threads);
  }
  if (status != nncabac::Status::kOk) raise_core_error(status, err);
  nb::bytes payload(reinterpret_cast<const char*>(out.data()), out.size());
  return nb::make_tuple(payload, nb::cast(std::move(eps)));
}

nb::tuple decode(U8In data, nb::list specs, nb::list outs, nb::object entry_points, int threads) {
  std::vector<nb::object> keep;  // everything the core reads or writes while the GIL is released
  std::vector<nncabac::TensorSpec> sp = read_specs(specs, keep);
  const size_t n = sp.size();
  if (nb::len(outs) != n) throw nb::value_error("decode needs one output array per spec");
  std::vector<int32_t*> ptrs(n);
  for (size_t i = 0; i < n; ++i) {
    nb::handle o = outs[i];
    I32Out a = exact_array<I32Out>(o, "outs", "writable int32");
    if (static_cast<int64_t>(a.shape(0)) != element_count(sp[i]))
      throw nb::value_error(("outs[" + std::to_string(i) + "] has the wrong element count").c_str());
    ptrs[i] = a.data();
    keep.push_back(nb::borrow(o));
  }
  // Optional entry points per tensor (any objects with value / dq_state / bit_offset; None = not signalled).
  std::vector<std::vector<nncabac::EntryPoint>> signalled;
  if (!entry_points.is_none()) {
    if (nb::len(entry_points) != n) throw nb::value_error("entry_points needs one entry (list or None) per spec");
    signalled.resize(n);
    size_t i = 0;
    for (nb::handle per : entry_points) {
      if (!per.is_none()) {
        for (nb::handle e : per) {
          nncabac::EntryPoint p;
          p.value = static_cast<uint32_t>(std::min<uint64_t>(clamp_u64(e.attr("value")), 1u << 30));
          p.dq_state = static_cast<uint32_t>(std::min<uint64_t>(clamp_u64(e.attr("dq_state")), 1u << 30));
          p.bit_offset = clamp_u64(e.attr("bit_offset"));
          signalled[i].push_back(p);
        }
      }
      ++i;
    }
  }
  std::vector<nncabac::DecodedTensorInfo> info;
  size_t consumed = 0;
  nncabac::ErrorInfo err;
  nncabac::Status status;
  const uint8_t* bytes = data.data();
  const size_t size = data.shape(0);
  {
    nb::gil_scoped_release release;
    status = nncabac::decode_session(bytes, size, sp.data(), ptrs.data(), n, info, consumed, err,
                                     signalled.empty() ? nullptr : signalled.data(), threads);
  }
  if (status != nncabac::Status::kOk) raise_core_error(status, err);
  return nb::make_tuple(nb::cast(std::move(info)), consumed);
}

void quantize(F32In x, I32Out q, int64_t height, int64_t width, float step, bool dq, int scan_order) {
  if (static_cast<int64_t>(x.shape(0)) != height * width || q.shape(0) != x.shape(0))
    throw nb::value_error("array sizes do not match the shape");
  nncabac::ErrorInfo err;
  nncabac::Status status;
  const float* px = x.data();
  int32_t* pq = q.data();
  {
    nb::gil_scoped_release release;
    status = nncabac::quantize(px, pq, height, width, step, dq, scan_order, err);
  }
  if (status != nncabac::Status::kOk) raise_core_error(status, err);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "nnc DeepCABAC core (C++), typed binding";

  nb::enum_<nncabac::Status>(m, "Status")
      .value("OK", nncabac::Status::kOk)
      .value("TRUNCATED", nncabac::Status::kTruncated)
      .value("CORRUPT", nncabac::Status::kCorrupt)
      .value("BAD_CONFIG", nncabac::Status::kBadConfig)
      .value("BAD_INPUT", nncabac::Status::kBadInput)
      .value("OVERFLOW", nncabac::Status::kOverflow)
      .value("INTERNAL", nncabac::Status::kInternal)
      .value("TRAILING", nncabac::Status::kTrailing);

  g_core_error = PyErr_NewExceptionWithDoc(
      "nnc.deepcabac._core.CoreError",
      "A call into the C++ core failed: status (Status), tensor (index in the session or None), position (element "
      "or row, or None), bit_position (decoder position in the payload in bits, or None).",
      PyExc_Exception, nullptr);
  m.attr("CoreError") = nb::handle(g_core_error);

  nb::class_<Spec>(m, "TensorSpec", "How one tensor is coded (nncabac::TensorSpec); holds its TCA/HDSP arrays.")
      .def("__init__", &init_spec, "height"_a, "width"_a, nb::kw_only(), "profile"_a = 1, "unary_length"_a = 11,
           "qp_bits"_a = 8, "scan_order"_a = 0, "dq"_a = false, "parent_present"_a = false,
           "codebook_size"_a = 0, "codebook_zero"_a = 0, "tca_base"_a = nb::none(), "hdsp_history"_a = nb::none())
      .def_prop_ro("height", [](const Spec& p) { return p.s.height; })
      .def_prop_ro("width", [](const Spec& p) { return p.s.width; })
      .def_prop_ro("profile", [](const Spec& p) { return p.s.profile; })
      .def_prop_ro("unary_length", [](const Spec& p) { return p.s.unary_length; })
      .def_prop_ro("qp_bits", [](const Spec& p) { return p.s.qp_bits; })
      .def_prop_ro("scan_order", [](const Spec& p) { return p.s.scan_order; })
      .def_prop_ro("dq", [](const Spec& p) { return p.s.dq; })
      .def_prop_ro("parent_present", [](const Spec& p) { return p.s.parent_present; })
      .def_prop_ro("codebook_size", [](const Spec& p) { return p.s.codebook_size; })
      .def_prop_ro("codebook_zero", [](const Spec& p) { return p.s.codebook_zero; })
      .def_prop_ro("tca_base", [](const Spec& p) { return p.tca; })
      .def_prop_ro("hdsp_history", [](const Spec& p) { return p.hist; });

  nb::class_<nncabac::EncodeSettings>(m, "EncodeSettings", "Encoder choices for one tensor (nncabac::EncodeSettings).")
      .def(
          "__init__",
          [](nncabac::EncodeSettings* self, bool param_opt, bool row_skipping, bool hdsp, int32_t qp_offset,
             bool allow_dq_mismatch) {
            new (self) nncabac::EncodeSettings{param_opt, row_skipping, hdsp, qp_offset, allow_dq_mismatch};
          },
          nb::kw_only(), "param_opt"_a = true, "row_skipping"_a = false, "hdsp"_a = false, "qp_offset"_a = 0,
          "allow_dq_mismatch"_a = false)
      .def_ro("param_opt", &nncabac::EncodeSettings::param_opt)
      .def_ro("row_skipping", &nncabac::EncodeSettings::row_skipping)
      .def_ro("hdsp", &nncabac::EncodeSettings::hdsp)
      .def_ro("qp_offset", &nncabac::EncodeSettings::qp_offset)
      .def_ro("allow_dq_mismatch", &nncabac::EncodeSettings::allow_dq_mismatch);

  nb::class_<nncabac::EntryPoint>(m, "EntryPoint", "Entry point of a block row as the core measures it.")
      .def_ro("value", &nncabac::EntryPoint::value)
      .def_ro("dq_state", &nncabac::EntryPoint::dq_state)
      .def_ro("bit_offset", &nncabac::EntryPoint::bit_offset);

  nb::class_<nncabac::DecodedTensorInfo>(m, "TensorInfo", "What the decoder reports for one tensor.")
      .def_prop_ro("qp_offset",
                   [](const nncabac::DecodedTensorInfo& t) -> nb::object {
                     return t.has_qp ? nb::object(nb::int_(t.qp_offset)) : nb::object(nb::none());
                   })
      .def_ro("hdsp_flag", &nncabac::DecodedTensorInfo::hdsp_flag)
      .def_ro("row_skip_flag", &nncabac::DecodedTensorInfo::row_skip_flag)
      .def_ro("parallel", &nncabac::DecodedTensorInfo::parallel)
      .def_prop_ro("entry_points",
                   [](const nncabac::DecodedTensorInfo& t) { return std::vector<nncabac::EntryPoint>(t.entry_points); });

  m.def("encode", &encode, "levels"_a, "specs"_a, "settings"_a, "threads"_a = 1,
        "Code the tensors of one session (block rows of large tensors with entry points on `threads` threads);\n"
        "returns (payload bytes, entry points per tensor). Raises CoreError.");
  m.def("parallel_pass_count", &nncabac::parallel_pass_count,
        "How many tensors this process has coded with their block rows on several threads (for tests).");
  m.def("decode", &decode, "data"_a, "specs"_a, "outs"_a, "entry_points"_a.none(), "threads"_a,
        "Decode one session into outs; returns (TensorInfo per tensor, bytes consumed). Raises CoreError.");
  m.def("quantize", &quantize, "x"_a, "q"_a, "height"_a, "width"_a, "step"_a, "dq"_a, "scan_order"_a,
        "Reference-exact quantization into q. Raises CoreError.");
}
