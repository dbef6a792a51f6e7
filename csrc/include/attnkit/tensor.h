// Tensor views: a pointer, a dtype, a shape and strides (in elements). No ownership, no Python.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace attnkit {

enum class DType { f32, f64, boolean, i64, other };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::boolean: return "bool";
    case DType::i64: return "int64";
    default: return "other";
  }
}

constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::other;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  bool writeable = true;
  bool present = false;            // false for an omitted optional argument

  int64_t size(int axis) const { return shape[axis < 0 ? axis + ndim : axis]; }
  int64_t stride(int axis) const { return strides[axis < 0 ? axis + ndim : axis]; }
  template <class T> T* ptr() const { return static_cast<T*>(data); }
};

// Exceptions that the binding translates: ValueError, TypeError. (std::bad_alloc -> MemoryError.)
struct ValueError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
struct TypeError : std::invalid_argument { using std::invalid_argument::invalid_argument; };

std::string shape_str(const TensorView& t);

}  // namespace attnkit
