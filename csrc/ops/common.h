// Shared argument checks for the op entry points.
#pragma once
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "attnkit/tensor.h"

namespace attnkit { namespace ops {

// "float32 or float64": the floating dtypes `be` computes, for messages.
inline std::string supported_dtypes(const Backend& be) {
  const DType all[] = {DType::f32, DType::f64, DType::f16, DType::bf16};
  std::string s, last;
  for (DType d : all) {
    if (!be.supports(d)) continue;
    if (!last.empty()) s += s.empty() ? last : ", " + last;
    last = dtype_name(d);
  }
  return s.empty() ? last : s + " or " + last;
}

// t is a floating array that `be` computes.
inline void require_float(const Backend& be, const TensorView& t, const char* name) {
  if (!is_floating(t.dtype) || !be.supports(t.dtype))
    throw TypeError(std::string(name) + ": expected a " + supported_dtypes(be) + " array, got dtype " + dtype_name(t.dtype));
}

// t lives where ref lives (all arrays of one call on one device).
inline void require_same_device(const TensorView& t, const char* name, const TensorView& ref, const char* ref_name) {
  if (t.present && (t.device != ref.device || t.device_index != ref.device_index))
    throw TypeError(std::string(name) + ": on " + device_name(t.device) + ":" + std::to_string(t.device_index) + ", but " +
                    ref_name + " is on " + device_name(ref.device) + ":" + std::to_string(ref.device_index) +
                    " (all arrays of a call must be on one device)");
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

inline void require_output(const TensorView& out, const char* name, const OutputSpec& spec) {
  const DType dtype = spec.dtype;
  const int64_t* shape = spec.shape;
  const int ndim = spec.ndim;
  if (out.device != spec.device)
    throw TypeError(std::string(name) + ": expected an array on " + device_name(spec.device) + ", got one on " +
                    device_name(out.device));
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
  // Self-overlap (an as_strided view whose elements alias each other): with the dims taken by
  // increasing |stride|, each stride must step past everything the smaller ones span. That is
  // every layout NumPy makes (slices, transposes, reversals); a rare exotic interleaving that does
  // not overlap is refused too, which only costs the caller a copy.
  int order[kMaxDims];
  int n = 0;
  for (int i = 0; i < ndim && !empty; ++i)
    if (out.shape[i] > 1) order[n++] = i;
  auto mag = [&](int i) { return out.strides[i] < 0 ? -out.strides[i] : out.strides[i]; };
  for (int a = 1; a < n; ++a)
    for (int b = a; b > 0 && mag(order[b]) < mag(order[b - 1]); --b) std::swap(order[b], order[b - 1]);
  int64_t span = 0;  // the largest offset the dims so far reach
  for (int a = 0; a < n; ++a) {
    const int i = order[a];
    if (mag(i) <= span)
      throw ValueError(std::string(name) + ": the array overlaps itself (dim " + std::to_string(i) + " has stride " +
                       std::to_string(out.strides[i]) + " elements, within the " + std::to_string(span + 1) +
                       " elements the smaller strides span); pass an array whose elements are distinct");
    span += mag(i) * (out.shape[i] - 1);
  }
}

// Row-major contiguous (size-1 dims may have any stride).
inline bool is_contiguous(const TensorView& t) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] == 0) return true;
  int64_t expect = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] != 1 && t.strides[i] != expect) return false;
    expect *= t.shape[i];
  }
  return true;
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

// The one place that counts a fall-back copy (attnkit/runtime.h: layout_copies()).
void count_layout_copy();

// A view of `data` with t's shape, dtype and device, row-major contiguous.
inline TensorView contiguous_like(const TensorView& t, void* data) {
  TensorView c = t;
  c.data = data;
  int64_t step = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    c.strides[d] = step;
    step *= t.shape[d];
  }
  return c;
}

// Copies src's elements into dst (the same shape; any strides on either side, negative included),
// a row at a time over every dim but the last.
inline void copy_view(const TensorView& src, const TensorView& dst) {
  const int nd = dst.ndim, esize = dtype_size(dst.dtype);
  const int64_t n = nd ? dst.shape[nd - 1] : 1;
  const int64_t ss = nd ? src.strides[nd - 1] * esize : 0, ds = nd ? dst.strides[nd - 1] * esize : 0;
  int64_t rows = 1;
  for (int d = 0; d < nd - 1; ++d) rows *= dst.shape[d];
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    const char* s = static_cast<const char*>(src.data) + esize * row_offset(src.shape, src.strides, nd, nd - 1, r);
    char* d = static_cast<char*>(dst.data) + esize * row_offset(dst.shape, dst.strides, nd, nd - 1, r);
    if ((ss == esize && ds == esize) || n == 1) std::memcpy(d, s, static_cast<size_t>(n * esize));
    else for (int64_t j = 0; j < n; ++j) std::memcpy(d + j * ds, s + j * ss, static_cast<size_t>(esize));
  }
}

}}  // namespace attnkit::ops
