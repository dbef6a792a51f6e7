// PYBIND11_MODULE(_cuda): device-array descriptors <-> tensor views, GIL release, error
// translation; registers the CUDA backend. No math. python/attnkit/cuda.py turns CuPy arrays,
// torch tensors, __cuda_array_interface__ and DLPack objects into descriptors
//   (pointer, shape, strides in elements, dtype name, device index, readonly)
// and passes an allocator that makes outputs in the caller's framework.
#include <cuda_runtime.h>
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

DType parse_dtype(const std::string& s, const std::string& name) {
  if (s == "float32") return DType::f32;
  if (s == "float16") return DType::f16;
  if (s == "bfloat16") return DType::bf16;
  if (s == "float64") return DType::f64;
  if (s == "bool") return DType::boolean;
  if (s == "int64") return DType::i64;
  throw TypeError(name + ": unsupported dtype " + s + " (expected float16, bfloat16 or float32, or bool for masks)");
}

// A view of a device array from its descriptor tuple; None -> present == false.
TensorView view_of(py::handle h, const std::string& name) {
  TensorView t;
  if (h.is_none()) return t;
  if (!py::isinstance<py::tuple>(h)) throw TypeError(name + ": expected a device-array descriptor, got " + type_name(h));
  py::tuple d = py::reinterpret_borrow<py::tuple>(h);
  if (d.size() != 6) throw TypeError(name + ": malformed device-array descriptor");
  t.dtype = parse_dtype(d[3].cast<std::string>(), name);
  t.device = Device::cuda;
  t.device_index = d[4].cast<int>();
  py::tuple shape = d[1].cast<py::tuple>(), strides = d[2].cast<py::tuple>();
  if (shape.size() > size_t(kMaxDims))
    throw ValueError(name + ": at most " + std::to_string(kMaxDims) + " dims are supported, got " + std::to_string(shape.size()));
  t.ndim = static_cast<int>(shape.size());
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = shape[i].cast<int64_t>();
    t.strides[i] = strides[i].cast<int64_t>();
  }
  t.data = reinterpret_cast<void*>(d[0].cast<uintptr_t>());
  const int item = dtype_size(t.dtype);
  if (item && reinterpret_cast<uintptr_t>(t.data) % uintptr_t(item) != 0)
    throw ValueError(name + ": the array's data is not aligned to its element size");
  t.writeable = !d[5].cast<bool>();
  t.present = true;
  return t;
}

// kv_lengths: an int64 NumPy array in host memory (cuda.py converts sequences).
TensorView host_view(py::handle h, const std::string& name) {
  TensorView t;
  if (h.is_none()) return t;
  if (!py::isinstance<py::array_t<int64_t>>(h)) throw TypeError(name + ": expected a host (NumPy) int64 array");
  py::array a = py::reinterpret_borrow<py::array>(h);
  if (a.dtype().kind() != 'i' || a.dtype().itemsize() != 8) throw TypeError(name + ": expected a host (NumPy) int64 array");
  t.dtype = DType::i64;
  t.device = Device::cpu;
  t.ndim = static_cast<int>(a.ndim());
  if (t.ndim > kMaxDims) throw ValueError(name + ": too many dims");
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = a.shape(i);
    t.strides[i] = a.strides(i) / 8;
  }
  t.data = const_cast<void*>(a.data());
  t.writeable = false;
  t.present = true;
  return t;
}

TensorView required(py::handle h, const char* name) {
  TensorView t = view_of(h, name);
  if (!t.present) throw TypeError(std::string(name) + ": expected a GPU array, got None");
  return t;
}

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::none;
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_tanh") return Activation::gelu_tanh;
  throw ValueError("activation: expected None, 'relu', 'gelu' or 'gelu_tanh', got '" + name + "'");
}

// alloc(shape, dtype name) -> (array object, descriptor)
std::pair<py::object, TensorView> allocate(py::handle alloc, const OutputSpec& spec, const char* name) {
  py::tuple shape(spec.ndim);
  for (int i = 0; i < spec.ndim; ++i) shape[i] = py::int_(spec.shape[i]);
  py::tuple r = alloc(shape, dtype_name(spec.dtype)).cast<py::tuple>();
  return {r[0], view_of(r[1], name)};
}

// Runs on the arrays' device; restores the caller's current device afterwards.
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    if (previous != device) {
      const cudaError_t e = cudaSetDevice(device);
      if (e != cudaSuccess) throw std::runtime_error(std::string("cudaSetDevice: ") + cudaGetErrorString(e));
    }
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous) (void)cudaSetDevice(previous);
  }
};

void* as_stream(uintptr_t s) { return reinterpret_cast<void*>(s); }

py::object py_sdpa(py::handle query, py::handle key, py::handle value, py::handle attn_mask, const std::string& causal,
                   py::object scale, bool enable_gqa, py::handle kv_lengths, bool return_lse, py::handle out,
                   py::handle alloc, uintptr_t stream) {
  SdpaArgs a;
  a.query = required(query, "query");
  a.key = required(key, "key");
  a.value = required(value, "value");
  a.attn_mask = view_of(attn_mask, "attn_mask");
  a.kv_lengths = host_view(kv_lengths, "kv_lengths");
  if (causal == "none") a.causal = CausalAlign::none;
  else if (causal == "top_left") a.causal = CausalAlign::top_left;
  else if (causal == "bottom_right") a.causal = CausalAlign::bottom_right;
  else throw ValueError("causal_alignment: expected 'top_left' or 'bottom_right', got '" + causal + "'");
  if (!scale.is_none()) {
    if (!py::isinstance<py::float_>(scale) && !py::isinstance<py::int_>(scale) && !py::hasattr(scale, "__float__"))
      throw TypeError("scale: expected a float, got " + type_name(scale));
    a.has_scale = true;
    a.scale = scale.cast<double>();
  }
  a.enable_gqa = enable_gqa;
  a.stream = as_stream(stream);
  SdpaPlan plan;
  sdpa_prepare(a, plan);
  py::object out_arr;
  TensorView ov, lv;
  if (out.is_none()) std::tie(out_arr, ov) = allocate(alloc, plan.out, "out");
  else { out_arr = py::reinterpret_borrow<py::object>(py::tuple(out.cast<py::tuple>())[0]); ov = view_of(out.cast<py::tuple>()[1], "out"); }
  py::object lse_arr = py::none();
  if (return_lse) std::tie(lse_arr, lv) = allocate(alloc, plan.lse, "lse");
  {
    DeviceGuard guard(a.query.device_index);
    py::gil_scoped_release nogil;
    sdpa_run(plan, ov, lv);
  }
  if (return_lse) return py::make_tuple(out_arr, lse_arr);
  return out_arr;
}

py::object run_rows(RowPlan& plan, bool return_sum, py::handle alloc, int device) {
  py::object out, sum = py::none();
  TensorView ov, sv;
  std::tie(out, ov) = allocate(alloc, plan.out, "out");
  if (return_sum) std::tie(sum, sv) = allocate(alloc, plan.out, "sum");
  {
    DeviceGuard guard(device);
    py::gil_scoped_release nogil;
    rows_run(plan, ov, sv);
  }
  if (return_sum) return py::make_tuple(out, sum);
  return out;
}

py::object py_softmax(py::handle x, int axis, py::handle mask, py::handle alloc, uintptr_t stream) {
  TensorView xv = required(x, "x");
  RowPlan plan;
  softmax_prepare(xv, axis, view_of(mask, "mask"), plan, as_stream(stream));
  return run_rows(plan, false, alloc, xv.device_index);
}

py::object py_linear(py::handle x, py::handle weight, py::handle bias, const std::string& act, py::handle alloc,
                     uintptr_t stream) {
  TensorView xv = required(x, "x"), wv = required(weight, "weight"), bv = view_of(bias, "bias");
  GemmPlan plan;
  linear_prepare(xv, wv, bv, parse_activation(act), plan, as_stream(stream));
  py::object out;
  TensorView ov;
  std::tie(out, ov) = allocate(alloc, plan.out, "out");
  {
    DeviceGuard guard(xv.device_index);
    py::gil_scoped_release nogil;
    linear_run(plan, ov);
  }
  return out;
}

py::object py_layer_norm(py::handle x, py::handle residual, py::handle weight, py::handle bias, double eps,
                         bool return_sum, py::handle alloc, uintptr_t stream) {
  TensorView xv = required(x, "x");
  RowPlan plan;
  layer_norm_prepare(xv, view_of(residual, "residual"), view_of(weight, "weight"), view_of(bias, "bias"), eps, plan,
                     as_stream(stream));
  return run_rows(plan, return_sum, alloc, xv.device_index);
}

py::object py_activation(py::handle x, const std::string& act, py::handle alloc, uintptr_t stream) {
  TensorView xv = required(x, "x");
  const Activation a = parse_activation(act);
  RowPlan plan;
  activation_prepare(xv, a, plan, as_stream(stream));
  return run_rows(plan, false, alloc, xv.device_index);
}

// (device count, reason): the reason is empty when a device is usable.
py::tuple device_status() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return py::make_tuple(0, std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
  }
  if (n == 0) return py::make_tuple(0, std::string("no CUDA device is visible"));
  return py::make_tuple(n, std::string());
}

py::dict device_properties(int device) {
  cudaDeviceProp prop;
  const cudaError_t e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) throw std::runtime_error(std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(e));
  py::dict d;
  d["name"] = std::string(prop.name);
  d["major"] = prop.major;
  d["minor"] = prop.minor;
  d["multiprocessors"] = prop.multiProcessorCount;
  d["memory"] = static_cast<uint64_t>(prop.totalGlobalMem);
  return d;
}

// (pointer, shape, strides in elements, dtype, device, readonly) from a DLPack capsule ("dltensor").
struct DLDevice { int32_t device_type; int32_t device_id; };
struct DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct DLTensor {
  void* data; DLDevice device; int32_t ndim; DLDataType dtype; int64_t* shape; int64_t* strides; uint64_t byte_offset;
};
py::tuple dlpack_describe(py::capsule cap) {
  if (std::string(cap.name() ? cap.name() : "") != "dltensor")
    throw TypeError("expected an unconsumed DLPack capsule named 'dltensor'");
  // A DLManagedTensor starts with its DLTensor (the versioned form is not requested by cuda.py).
  const DLTensor* t = static_cast<const DLTensor*>(cap.get_pointer());
  if (t->device.device_type != 2) throw TypeError("the DLPack tensor is not in CUDA device memory");
  std::string dt;
  const auto c = t->dtype.code, bits = t->dtype.bits;
  if (t->dtype.lanes != 1) dt = "vector";
  else if (c == 2 && bits == 32) dt = "float32";
  else if (c == 2 && bits == 16) dt = "float16";
  else if (c == 2 && bits == 64) dt = "float64";
  else if (c == 4 && bits == 16) dt = "bfloat16";
  else if (c == 6 && bits == 8) dt = "bool";
  else if (c == 0 && bits == 64) dt = "int64";
  else dt = "DLPack code " + std::to_string(c) + " of " + std::to_string(bits) + " bits";
  py::tuple shape(t->ndim), strides(t->ndim);
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; --i) {
    shape[i] = py::int_(t->shape[i]);
    strides[i] = py::int_(t->strides ? t->strides[i] : expect);
    expect *= t->shape[i];
  }
  const uintptr_t ptr = reinterpret_cast<uintptr_t>(t->data) + t->byte_offset;
  return py::make_tuple(py::int_(ptr), shape, strides, dt, t->device.device_id, false);
}

int pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attr;
  const cudaError_t e = cudaPointerGetAttributes(&attr, reinterpret_cast<void*>(ptr));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw ValueError(std::string("cannot tell the device of a pointer: ") + cudaGetErrorString(e));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) return -1;
  return attr.device;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  register_backend(Device::cuda, &cuda_backend());
  m.doc() = "attnkit's CUDA backend: attention, softmax, linear, layer_norm and activations on NVIDIA GPUs";
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
        py::arg("scale"), py::arg("enable_gqa"), py::arg("kv_lengths"), py::arg("return_lse"), py::arg("out"),
        py::arg("alloc"), py::arg("stream"));
  m.def("softmax", &py_softmax, py::arg("x"), py::arg("axis"), py::arg("mask"), py::arg("alloc"), py::arg("stream"));
  m.def("linear", &py_linear, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("activation"), py::arg("alloc"),
        py::arg("stream"));
  m.def("layer_norm", &py_layer_norm, py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("return_sum"), py::arg("alloc"), py::arg("stream"));
  m.def("activation", &py_activation, py::arg("x"), py::arg("activation"), py::arg("alloc"), py::arg("stream"));
  m.def("device_status", &device_status);
  m.def("device_properties", &device_properties, py::arg("device"));
  m.def("dlpack_describe", &dlpack_describe, py::arg("capsule"));
  m.def("pointer_device", &pointer_device, py::arg("ptr"));
  m.def("set_cublaslt_path", &attnkit::set_cublaslt_path, py::arg("path"));
  m.def("cublaslt_status", &attnkit::cublaslt_status);
  m.attr("__version__") = ATTNKIT_VERSION;
}
