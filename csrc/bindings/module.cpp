// PYBIND11_MODULE(_core): NumPy arrays <-> tensor views, GIL release, error translation. No math.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "attnkit/ops.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace py = pybind11;
using namespace attnkit;

namespace {

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>(); }

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
  else if (kind == 'b') t.dtype = DType::boolean;
  else if (kind == 'i' && item == 8) t.dtype = DType::i64;
  else throw TypeError(name + ": unsupported dtype " + py::str(static_cast<py::object>(dt)).cast<std::string>() +
                       " (expected float32 or float64" + (kind == 'b' ? "" : ", or bool for masks") + ")");
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
  return dtype == DType::f32 ? py::array(py::dtype::of<float>(), s) : py::array(py::dtype::of<double>(), s);
}

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::none;
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_tanh") return Activation::gelu_tanh;
  throw ValueError("activation: expected None, 'relu', 'gelu' or 'gelu_tanh', got '" + name + "'");
}

py::object py_sdpa(py::handle query, py::handle key, py::handle value, py::handle attn_mask, const std::string& causal,
                py::object scale, bool enable_gqa, py::handle kv_lengths, bool return_lse, py::handle out) {
  SdpaArgs a;
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
  int64_t shape[kMaxDims];
  const int nd = sdpa_check(a, shape);
  py::object out_arr = out.is_none() ? py::object(new_array(a.query.dtype, shape, nd)) : py::reinterpret_borrow<py::object>(out);
  a.out = view_of(out_arr, "out");
  py::object lse_arr = py::none();
  if (return_lse) {
    lse_arr = new_array(a.query.dtype, shape, nd - 1);
    a.lse = view_of(lse_arr, "lse");
  }
  {
    py::gil_scoped_release nogil;
    attnkit::sdpa(a);
  }
  if (return_lse) return py::make_tuple(out_arr, lse_arr);
  return out_arr;
}

py::array py_softmax(py::handle x, int axis, py::handle mask) {
  TensorView xv = view_of(x, "x");
  if (!xv.present) throw TypeError("x: expected a numpy.ndarray, got None");
  TensorView mv = view_of(mask, "mask");
  if (xv.dtype != DType::f32 && xv.dtype != DType::f64)
    throw TypeError(std::string("x: expected a float32 or float64 array, got dtype ") + dtype_name(xv.dtype));
  py::array out = new_array(xv.dtype, xv.shape, xv.ndim);
  TensorView ov = view_of(out, "out");
  py::gil_scoped_release nogil;
  attnkit::softmax(xv, axis, mv, ov);
  return out;
}

py::array py_linear(py::handle x, py::handle weight, py::handle bias, const std::string& act) {
  TensorView xv = view_of(x, "x"), wv = view_of(weight, "weight"), bv = view_of(bias, "bias");
  if (!xv.present) throw TypeError("x: expected a numpy.ndarray, got None");
  if (!wv.present) throw TypeError("weight: expected a numpy.ndarray, got None");
  const Activation a = parse_activation(act);
  linear_check(xv, wv, bv);
  int64_t shape[kMaxDims];
  for (int i = 0; i < xv.ndim; ++i) shape[i] = xv.shape[i];
  shape[xv.ndim - 1] = wv.shape[0];
  py::array out = new_array(xv.dtype, shape, xv.ndim);
  TensorView ov = view_of(out, "out");
  py::gil_scoped_release nogil;
  attnkit::linear(xv, wv, bv, a, ov);
  return out;
}

py::object py_layer_norm(py::handle x, py::handle residual, py::handle weight, py::handle bias, double eps, bool return_sum) {
  TensorView xv = view_of(x, "x"), rv = view_of(residual, "residual");
  TensorView wv = view_of(weight, "weight"), bv = view_of(bias, "bias");
  if (!xv.present) throw TypeError("x: expected a numpy.ndarray, got None");
  layer_norm_check(xv, rv, wv, bv, eps);
  py::array out = new_array(xv.dtype, xv.shape, xv.ndim);
  TensorView ov = view_of(out, "out"), sv;
  py::object sum = py::none();
  if (return_sum) {
    sum = new_array(xv.dtype, xv.shape, xv.ndim);
    sv = view_of(sum, "sum");
  }
  {
    py::gil_scoped_release nogil;
    attnkit::layer_norm(xv, rv, wv, bv, eps, ov, sv);
  }
  if (return_sum) return py::make_tuple(out, sum);
  return out;
}

py::array py_activation(py::handle x, const std::string& act) {
  TensorView xv = view_of(x, "x");
  if (!xv.present) throw TypeError("x: expected a numpy.ndarray, got None");
  const Activation a = parse_activation(act);
  if (xv.dtype != DType::f32 && xv.dtype != DType::f64)
    throw TypeError(std::string("x: expected a float32 or float64 array, got dtype ") + dtype_name(xv.dtype));
  py::array out = new_array(xv.dtype, xv.shape, xv.ndim);
  TensorView ov = view_of(out, "out");
  py::gil_scoped_release nogil;
  attnkit::activation(xv, a, ov);
  return out;
}

std::vector<std::string> isa_names(const std::vector<cpu::Isa>& v) {
  std::vector<std::string> out;
  for (cpu::Isa i : v) out.emplace_back(cpu::isa_name(i));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
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
        py::arg("scale"), py::arg("enable_gqa"), py::arg("kv_lengths"), py::arg("return_lse"), py::arg("out"));
  m.def("softmax", &py_softmax, py::arg("x"), py::arg("axis"), py::arg("mask"));
  m.def("linear", &py_linear, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("activation"));
  m.def("layer_norm", &py_layer_norm, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("return_sum"));
  m.def("activation", &py_activation, py::arg("x"), py::arg("activation"));
  m.def("set_num_threads", &attnkit::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &attnkit::get_num_threads);
  m.def("get_isa", [] { return std::string(cpu::isa_name(cpu::current_isa())); });
  m.def("set_isa", [](const std::string& name) { cpu::set_isa(cpu::parse_isa(name)); }, py::arg("name"));
  m.def("usable_isas", [] { return isa_names(cpu::usable_isas()); });
  m.def("compiled_isas", [] { return isa_names(cpu::compiled_isas()); });
  m.attr("__version__") = ATTNKIT_VERSION;
}
