// Tensor views: a pointer, a dtype, a device, a shape and strides (in elements). No ownership,
// no Python.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace attnkit {

// Element types. f32/f64 compute everywhere; f16/bf16 are storage types (compute in fp32) on the
// backends that list them in Backend::supports.
enum class DType { f32, f64, f16, bf16, boolean, i64, i8, other };

static inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::boolean: return "bool";
    case DType::i64: return "int64";
    case DType::i8: return "int8";
    default: return "other";
  }
}

static inline int dtype_size(DType d) {
  switch (d) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::boolean: case DType::i8: return 1;
    default: return 0;
  }
}

static inline bool is_floating(DType d) { return d == DType::f32 || d == DType::f64 || d == DType::f16 || d == DType::bf16; }

// Where a view's memory lives. A problem's pointers all live on one device.
enum class Device { cpu, cuda };

static inline const char* device_name(Device d) { return d == Device::cuda ? "cuda" : "cpu"; }

constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::other;
  Device device = Device::cpu;
  int device_index = 0;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  bool writeable = true;
  bool present = false;            // false for an omitted optional argument

  int64_t size(int axis) const { return shape[axis < 0 ? axis + ndim : axis]; }
  int64_t stride(int axis) const { return strides[axis < 0 ? axis + ndim : axis]; }
  template <class T> T* ptr() const { return static_cast<T*>(data); }
};

// Rows laid out over dims shape[0..n) in row-major order: true when they are evenly spaced, with
// *stride the one step between consecutive rows (any sign: negative for reversed rows, 0 for
// broadcast ones; `single` when there is at most one row); false when the dims' strides do not
// nest (a transposed batch, an uneven skip). No stride value is a sentinel: every int64 is a stride.
static inline bool even_row_stride(const int64_t* shape, const int64_t* strides, int n, int64_t single,
                                   int64_t* stride) {
  bool found = false;
  int64_t step = single, expect = 0;
  for (int d = n - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (!found) {
      found = true;
      step = expect = strides[d];
    } else if (strides[d] != expect) {
      return false;
    }
    expect *= shape[d];
  }
  *stride = step;
  return true;
}

// Exceptions that the binding translates: ValueError, TypeError. (std::bad_alloc -> MemoryError.)
struct ValueError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
struct TypeError : std::invalid_argument { using std::invalid_argument::invalid_argument; };

std::string shape_str(const TensorView& t);

}  // namespace attnkit
