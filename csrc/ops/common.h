// Shared argument checks for the op entry points.
#pragma once
#include <cmath>
#include <string>

#include "attnkit/tensor.h"

namespace attnkit { namespace ops {

inline bool is_float(DType d) { return d == DType::f32 || d == DType::f64; }

inline void require_float(const TensorView& t, const char* name) {
  if (!is_float(t.dtype))
    throw TypeError(std::string(name) + ": expected a float32 or float64 array, got dtype " + dtype_name(t.dtype));
}

inline void require_same_dtype(const TensorView& t, const char* name, const TensorView& ref, const char* ref_name) {
  if (t.dtype != ref.dtype)
    throw TypeError(std::string(name) + ": dtype " + dtype_name(t.dtype) + " does not match " + ref_name + "'s " +
                    dtype_name(ref.dtype) + " (mixed dtypes are not allowed)");
}

// Product of dims, or ValueError when it overflows int64 (checked well below 2^63).
inline int64_t checked_numel(const int64_t* shape, int n, const char* what) {
  int64_t total = 1;
  for (int i = 0; i < n; ++i) {
    if (shape[i] == 0) return 0;
  }
  for (int i = 0; i < n; ++i) {
    if (__builtin_mul_overflow(total, shape[i], &total) || total > (int64_t(1) << 60))
      throw ValueError(std::string(what) + ": the sizes overflow (the element count exceeds 2^60)");
  }
  return total;
}

inline void require_output(const TensorView& out, const char* name, DType dtype, const int64_t* shape, int ndim) {
  if (out.dtype != dtype)
    throw TypeError(std::string(name) + ": expected dtype " + dtype_name(dtype) + ", got " + dtype_name(out.dtype));
  bool same = out.ndim == ndim;
  for (int i = 0; same && i < ndim; ++i) same = out.shape[i] == shape[i];
  if (!same) {
    TensorView want;
    want.ndim = ndim;
    for (int i = 0; i < ndim; ++i) want.shape[i] = shape[i];
    throw ValueError(std::string(name) + ": expected shape " + shape_str(want) + ", got " + shape_str(out));
  }
  if (!out.writeable) throw ValueError(std::string(name) + ": the array is read-only");
  bool empty = false;
  for (int i = 0; i < ndim; ++i) empty = empty || shape[i] == 0;
  for (int i = 0; i < ndim && !empty; ++i)
    if (out.strides[i] == 0 && out.shape[i] > 1)
      throw ValueError(std::string(name) + ": the array has a zero stride (a broadcast view cannot be written)");
}

// Strides of `mask` broadcast to `target` (numpy rules, right-aligned), 0 on broadcast dims.
inline void broadcast_strides(const TensorView& mask, const int64_t* target, int nt, int64_t* strides,
                              const char* name, const std::string& target_desc) {
  if (mask.ndim > nt)
    throw ValueError(std::string(name) + ": shape " + shape_str(mask) + " does not broadcast to " + target_desc);
  for (int i = 0; i < nt; ++i) {
    const int mi = mask.ndim - nt + i;
    if (mi < 0) { strides[i] = 0; continue; }
    if (mask.shape[mi] == target[i]) strides[i] = mask.shape[mi] == 1 ? 0 : mask.strides[mi];
    else if (mask.shape[mi] == 1) strides[i] = 0;
    else throw ValueError(std::string(name) + ": shape " + shape_str(mask) + " does not broadcast to " + target_desc);
  }
}

// Offset (in elements) of row `row` of t, where rows run over every dim but `axis` (row-major).
inline int64_t row_offset(const int64_t* shape, const int64_t* strides, int ndim, int axis, int64_t row) {
  int64_t off = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    if (d == axis) continue;
    off += (row % shape[d]) * strides[d];
    row /= shape[d];
  }
  return off;
}

}}  // namespace attnkit::ops
