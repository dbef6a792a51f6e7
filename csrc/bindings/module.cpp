// PYBIND11_MODULE(_core): NumPy arrays <-> tensor views, GIL release, error translation. No math.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "attnkit/runtime.h"

namespace py = pybind11;
using namespace attnkit;

namespace {

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>(); }

// bfloat16 is ml_dtypes.bfloat16 (the NumPy bfloat16 of JAX, TensorFlow and ONNX): a 2-byte
// dtype named "bfloat16". Imported only when a bfloat16 array is made.
bool is_bfloat16(const py::dtype& dt) {
  return py::str(dt.attr("name")).cast<std::string>() == "bfloat16";
}
py::dtype bfloat16_dtype() {
  return py::dtype::from_args(py::module_::import("ml_dtypes").attr("bfloat16"));
}

// A view of a NumPy array, no copy. None gives a view with present == false.
TensorView view_of(py::handle h, const std::string& name) {
  TensorView t;
  if (h.is_none()) return t;
  if (!py::isinstance<py::array>(h))
    throw TypeError(name + ": expected a numpy.ndarray, got " + type_name(h));
  py::array a = py::reinterpret_borrow<py::array>(h);
  py::dtype dt = a.dtype();
  const char kind = dt.kind();
  const py::ssize_t item = dt.itemsize();
  if (kind == 'f' && item == 4) t.dtype = DType::f32;
  else if (kind == 'f' && item == 8) t.dtype = DType::f64;
  else if (kind == 'f' && item == 2) t.dtype = DType::f16;
  else if (item == 2 && is_bfloat16(dt)) t.dtype = DType::bf16;
  else if (kind == 'b') t.dtype = DType::boolean;
  else if (kind == 'i' && item == 8) t.dtype = DType::i64;
  else if (kind == 'i' && item == 1) t.dtype = DType::i8;
  else throw TypeError(name + ": unsupported dtype " + py::str(static_cast<py::object>(dt)).cast<std::string>() +
                       " (expected float32, float64, float16 or bfloat16" + (kind == 'b' ? "" : ", or bool for masks") + ")");
  if (!dt.attr("isnative").cast<bool>())
    throw TypeError(name + ": the array is not in the machine's byte order; use arr.astype(arr.dtype.newbyteorder('='))");
  if (a.ndim() > kMaxDims)
    throw ValueError(name + ": at most " + std::to_string(kMaxDims) + " dims are supported, got " + std::to_string(a.ndim()));
  t.ndim = static_cast<int>(a.ndim());
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = a.shape(i);
    if (a.strides(i) % item != 0) throw ValueError(name + ": strides must be multiples of the element size");
    t.strides[i] = a.strides(i) / item;
  }
  t.data = const_cast<void*>(a.data());
  if (reinterpret_cast<std::uintptr_t>(t.data) % static_cast<std::uintptr_t>(item) != 0)
    throw ValueError(name + ": the array's data is not aligned to its element size");
  t.writeable = a.writeable();
  t.present = true;
  return t;
}

py::array new_array(DType dtype, const int64_t* shape, int ndim) {
  std::vector<py::ssize_t> s(shape, shape + ndim);
  switch (dtype) {
    case DType::f32: return py::array(py::dtype::of<float>(), s);
    case DType::f16: return py::array(py::dtype("float16"), s);
    case DType::bf16: return py::array(bfloat16_dtype(), s);
    default: return py::array(py::dtype::of<double>(), s);
  }
}

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::none;
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_tanh") return Activation::gelu_tanh;
  if (name == "silu") return Activation::silu;
  throw ValueError("activation: expected None, 'relu', 'gelu', 'gelu_tanh' or 'silu', got '" + name + "'");
}

// Runs f without the GIL. The GIL is taken back in plain code, not in a destructor: when the
// interpreter exits while a daemon thread is inside a kernel, CPython ends that thread inside
// PyEval_RestoreThread (pthread_exit), and the unwinding must not cross a noexcept destructor
// such as pybind11's gil_scoped_release (it would call std::terminate and abort the process).
template <class F>
void without_gil(F&& f) {
  PyThreadState* state = PyEval_SaveThread();
  try {
    f();
  } catch (...) {
    PyEval_RestoreThread(state);
    throw;
  }
  PyEval_RestoreThread(state);
}

py::object new_output(const OutputSpec& spec) { return new_array(spec.dtype, spec.shape, spec.ndim); }

py::object py_sdpa(py::handle query, py::handle key, py::handle value, py::handle attn_mask, const std::string& causal,
                   py::object scale, bool enable_gqa, py::handle kv_lengths, bool return_lse, py::handle out,
                   int64_t window) {
  SdpaArgs a;
  a.window = window;
  a.query = view_of(query, "query");
  a.key = view_of(key, "key");
  a.value = view_of(value, "value");
  a.attn_mask = view_of(attn_mask, "attn_mask");
  a.kv_lengths = view_of(kv_lengths, "kv_lengths");
  if (!a.query.present) throw TypeError("query: expected a numpy.ndarray, got None");
  if (!a.key.present) throw TypeError("key: expected a numpy.ndarray, got None");
  if (!a.value.present) throw TypeError("value: expected a numpy.ndarray, got None");
  if (causal == "none") a.causal = CausalAlign::none;
  else if (causal == "top_left") a.causal = CausalAlign::top_left;
  else if (causal == "bottom_right") a.causal = CausalAlign::bottom_right;
  else throw ValueError("causal_alignment: expected 'top_left' or 'bottom_right', got '" + causal + "'");
  if (!scale.is_none()) {
    if (!py::isinstance<py::float_>(scale) && !py::isinstance<py::int_>(scale) &&
        !py::hasattr(scale, "__float__"))
      throw TypeError("scale: expected a float, got " + type_name(scale));
    a.has_scale = true;
    a.scale = scale.cast<double>();
  }
  a.enable_gqa = enable_gqa;
  SdpaPlan plan;
  sdpa_prepare(a, plan);
  py::object out_arr = out.is_none() ? new_output(plan.out) : py::reinterpret_borrow<py::object>(out);
  TensorView ov = view_of(out_arr, "out"), lv;
  py::object lse_arr = py::none();
  if (return_lse) {
    lse_arr = new_output(plan.lse);
    lv = view_of(lse_arr, "lse");
  }
  without_gil([&] { sdpa_run(plan, ov, lv); });
  if (return_lse) return py::make_tuple(out_arr, lse_arr);
  return out_arr;
}

TensorView required_view(py::handle h, const char* name) {
  TensorView t = view_of(h, name);
  if (!t.present) throw TypeError(std::string(name) + ": expected a numpy.ndarray, got None");
  return t;
}

// Allocate the output (and the sum) of a row op, run it without the GIL.
py::object run_rows(RowPlan& plan, bool return_sum) {
  py::object out = new_output(plan.out), sum = py::none();
  TensorView ov = view_of(out, "out"), sv;
  if (return_sum) {
    sum = new_output(plan.out);
    sv = view_of(sum, "sum");
  }
  without_gil([&] { rows_run(plan, ov, sv); });
  if (return_sum) return py::make_tuple(out, sum);
  return out;
}

py::object py_softmax(py::handle x, int axis, py::handle mask) {
  RowPlan plan;
  softmax_prepare(required_view(x, "x"), axis, view_of(mask, "mask"), plan);
  return run_rows(plan, false);
}

py::object py_linear(py::handle x, py::handle weight, py::handle bias, const std::string& act, py::handle out_arg) {
  TensorView xv = required_view(x, "x"), wv = required_view(weight, "weight"), bv = view_of(bias, "bias");
  GemmPlan plan;
  linear_prepare(xv, wv, bv, parse_activation(act), plan);
  py::object out = out_arg.is_none() ? new_output(plan.out) : py::reinterpret_borrow<py::object>(out_arg);
  TensorView ov = view_of(out, "out");
  without_gil([&] { linear_run(plan, ov); });
  return out;
}

PackedWeight py_pack_linear(py::handle weight) {
  TensorView wv = required_view(weight, "weight");
  PackedWeight packed;
  without_gil([&] { linear_pack(wv, packed); });
  return packed;
}

py::object py_linear_packed(py::handle x, PackedWeight& weight, py::handle bias, const std::string& act,
                            py::handle out_arg) {
  TensorView xv = required_view(x, "x"), bv = view_of(bias, "bias");
  GemmPlan plan;
  linear_prepare_packed(xv, weight, bv, parse_activation(act), plan);  // with the GIL: may repack `weight`
  py::object out = out_arg.is_none() ? new_output(plan.out) : py::reinterpret_borrow<py::object>(out_arg);
  TensorView ov = view_of(out, "out");
  without_gil([&] { linear_run(plan, ov); });
  return out;
}

PackedWeight py_pack_quantized(py::handle q, py::handle scale, const std::string& dtype, int64_t group, bool gated) {
  TensorView qv = required_view(q, "q"), sv = required_view(scale, "scale");
  Quant kind = dtype == "int8" ? Quant::int8 : dtype == "int4" ? Quant::int4 : Quant::none;
  if (kind == Quant::none) throw ValueError("dtype: expected 'int8' or 'int4', got '" + dtype + "'");
  PackedWeight packed;
  without_gil([&] { linear_pack_quantized(qv, sv, kind, group, gated, packed); });
  return packed;
}

py::object py_layer_norm(py::handle x, py::handle residual, py::handle weight, py::handle bias, double eps, bool return_sum) {
  RowPlan plan;
  layer_norm_prepare(required_view(x, "x"), view_of(residual, "residual"), view_of(weight, "weight"),
                     view_of(bias, "bias"), eps, plan);
  return run_rows(plan, return_sum);
}

py::object py_rms_norm(py::handle x, py::handle residual, py::handle weight, double eps, bool return_sum) {
  RowPlan plan;
  rms_norm_prepare(required_view(x, "x"), view_of(residual, "residual"), view_of(weight, "weight"), eps, plan);
  return run_rows(plan, return_sum);
}

PackedWeight py_pack_gated(py::handle gate_up) {
  TensorView wv = required_view(gate_up, "gate_up");
  PackedWeight packed;
  without_gil([&] { linear_pack_gated(wv, packed); });
  return packed;
}

py::object py_rope(py::handle x, py::handle cos, py::handle sin, py::handle positions, bool interleaved, py::handle out_arg) {
  RopePlan plan;
  rope_prepare(required_view(x, "x"), required_view(cos, "cos"), required_view(sin, "sin"),
               required_view(positions, "positions"), interleaved, plan);
  py::object out = out_arg.is_none() ? new_output(plan.out) : py::reinterpret_borrow<py::object>(out_arg);
  TensorView ov = view_of(out, "out");
  without_gil([&] { rope_run(plan, ov); });
  return out;
}

py::object py_activation(py::handle x, const std::string& act) {
  TensorView xv = required_view(x, "x");
  const Activation a = parse_activation(act);
  RowPlan plan;
  activation_prepare(xv, a, plan);
  return run_rows(plan, false);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  register_backend(Device::cpu, &cpu_backend());
  // pybind11's NumPy set-up (importing numpy's C API) now, at import, not on some thread's first call
  py::detail::npy_api::get();
  (void)py::dtype::of<float>();
  m.doc() = "attnkit's compiled core: attention, softmax, linear, layer_norm and activation kernels";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const attnkit::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const attnkit::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.def("sdpa", &py_sdpa, py::arg("query"), py::arg("key"), py::arg("value"), py::arg("attn_mask"), py::arg("causal"),
        py::arg("scale"), py::arg("enable_gqa"), py::arg("kv_lengths"), py::arg("return_lse"), py::arg("out"), py::arg("window") = 0);
  m.def("softmax", &py_softmax, py::arg("x"), py::arg("axis"), py::arg("mask"));
  m.def("linear", &py_linear, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("activation"),
        py::arg("out") = py::none());
  py::class_<PackedWeight>(m, "PackedWeight", "A linear weight (N, K) packed for the kernels (attnkit.pack_linear)")
      .def_property_readonly("shape", [](const PackedWeight& w) { return py::make_tuple(w.N, w.K); })
      .def_property_readonly("dtype", [](const PackedWeight& w) {
        const int64_t none[1] = {0};
        return new_array(w.dtype, none, 1).dtype();
      })
      .def_property_readonly("nbytes", [](const PackedWeight& w) { return w.bytes; })
      .def_property_readonly("gated", [](const PackedWeight& w) { return w.gated; })
      .def_property_readonly("quant", [](const PackedWeight& w) -> py::object {
        if (w.quant == Quant::none) return py::none();
        return py::str(w.quant == Quant::int8 ? "int8" : "int4");
      })
      .def_property_readonly("group_size", [](const PackedWeight& w) { return w.group; })
      .def_property_readonly("isa", [](const PackedWeight& w) {
        const std::vector<std::string> names = compiled_isas();
        return w.layout >= 0 && w.layout < static_cast<int>(names.size()) ? names[w.layout] : std::string("?");
      });
  m.def("pack_linear", &py_pack_linear, py::arg("weight"));
  m.def("unpack_linear", [](const PackedWeight& w) {
    const int64_t shape[2] = {w.N, w.K};
    py::object out = new_array(w.dtype, shape, 2);
    TensorView ov = view_of(out, "out");
    without_gil([&] { linear_unpack(w, ov); });
    return out;
  }, py::arg("weight"));
  m.def("pack_quantized", &py_pack_quantized, py::arg("q"), py::arg("scale"), py::arg("dtype"), py::arg("group_size"),
        py::arg("gated"));
  m.def("unpack_quantized", [](const PackedWeight& w) {
    if (w.quant == Quant::none) throw TypeError("weight: not a quantized weight");
    const int64_t qs[2] = {w.N, w.K}, ss[2] = {w.N, w.quant == Quant::int4 ? (w.K + w.group - 1) / w.group : 0};
    py::array q(py::dtype::of<int8_t>(), std::vector<py::ssize_t>(qs, qs + 2));
    py::object sc = new_array(DType::f32, ss, w.quant == Quant::int4 ? 2 : 1);
    TensorView qv = view_of(q, "q"), sv = view_of(sc, "scale");
    without_gil([&] { linear_unpack_quantized(w, qv, sv); });
    return py::make_tuple(q, sc);
  }, py::arg("weight"));
  m.def("quantized_rows", [](const PackedWeight& w, py::handle ids) {
    TensorView iv = required_view(ids, "ids");
    const int64_t shape[2] = {iv.ndim == 1 ? iv.shape[0] : 0, w.K};
    py::object out = new_array(DType::f32, shape, 2);
    TensorView ov = view_of(out, "out");
    without_gil([&] { linear_quantized_rows(w, iv, ov); });
    return out;
  }, py::arg("weight"), py::arg("ids"));
  m.def("linear_packed", &py_linear_packed, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("activation"),
        py::arg("out") = py::none());
  m.def("layer_norm", &py_layer_norm, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("return_sum"));
  m.def("rms_norm", &py_rms_norm, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"),
        py::arg("return_sum"));
  m.def("pack_gated", &py_pack_gated, py::arg("gate_up"));
  m.def("rope", &py_rope, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("positions"), py::arg("interleaved"),
        py::arg("out") = py::none());
  m.def("activation", &py_activation, py::arg("x"), py::arg("activation"));
  m.def("set_num_threads", &attnkit::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &attnkit::get_num_threads);
  m.def("get_isa", &attnkit::get_isa);
  m.def("set_isa", &attnkit::set_isa, py::arg("name"));
  m.def("usable_isas", &attnkit::usable_isas);
  m.def("compiled_isas", &attnkit::compiled_isas);
  m.def("amx_status", &attnkit::amx_status);
  m.def("layout_copies", &attnkit::layout_copies);
  m.def("amx_int8_status", &attnkit::amx_int8_status);
  m.attr("__version__") = ATTNKIT_VERSION;
}
