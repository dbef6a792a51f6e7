// rotary position embedding: every check once, one RopeProblem, then the backend.
#include <string>
#include <vector>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "ops/common.h"

namespace attnkit {

void rope_prepare(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView& positions,
                  bool interleaved, RopePlan& plan) {
  if (!x.present) throw TypeError("x: expected an array, got None");
  const Backend& be = backend_for(x.device, "x");
  if (!be.rope) throw TypeError(std::string("x: rotary embedding is not supported on ") + device_name(x.device));
  ops::require_float(be, x, "x");
  if (x.ndim != 4) throw ValueError("x: expected shape (B, H, L, D), got " + shape_str(x));
  const TensorView* tabs[2] = {&cos, &sin};
  const char* names[2] = {"cos", "sin"};
  for (int i = 0; i < 2; ++i) {
    const TensorView& t = *tabs[i];
    if (!t.present) throw TypeError(std::string(names[i]) + ": expected an array, got None");
    ops::require_float(be, t, names[i]);
    ops::require_same_dtype(t, names[i], x, "x");
    ops::require_same_device(t, names[i], x, "x");
    if (t.ndim != 2) throw ValueError(std::string(names[i]) + ": expected shape (max_positions, rotary_dim / 2), got " + shape_str(t));
  }
  if (sin.shape[0] != cos.shape[0] || sin.shape[1] != cos.shape[1])
    throw ValueError("sin: expected cos's shape " + shape_str(cos) + ", got " + shape_str(sin));
  const int64_t B = x.shape[0], L = x.shape[2], D = x.shape[3], half = cos.shape[1];
  if (2 * half > D || half == 0)
    throw ValueError("cos: rotary_dim = 2 * cos.shape[1] = " + std::to_string(2 * half) + " must be in [2, D=" +
                     std::to_string(D) + "]");
  if (!positions.present) throw TypeError("positions: expected an integer array, got None");
  if (positions.dtype != DType::i64) throw TypeError("positions: expected an int64 array");
  if (positions.device != Device::cpu) throw TypeError("positions: expected a host (NumPy) array");
  int64_t pb = 0, pl = 0;
  if (positions.ndim == 1 && positions.shape[0] == L) {
    pl = positions.strides[0];
  } else if (positions.ndim == 2 && positions.shape[0] == B && positions.shape[1] == L) {
    pb = positions.strides[0];
    pl = positions.strides[1];
  } else {
    throw ValueError("positions: expected shape (B, L) = (" + std::to_string(B) + ", " + std::to_string(L) + ") or (L,), got " +
                     shape_str(positions));
  }
  ops::checked_numel(x.shape, 4, "x");
  // positions copied and checked: what the kernel reads is what was checked
  plan.positions.assign(static_cast<size_t>(B * L), 0);
  const int64_t* src = positions.ptr<const int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t v = src[b * pb + l * pl];
      if (v < 0 || v >= cos.shape[0])
        throw ValueError("positions: expected values in [0, " + std::to_string(cos.shape[0]) + ") (the table's rows), got " +
                         std::to_string(v));
      plan.positions[static_cast<size_t>(b * L + l)] = v;
    }
  RopeProblem& p = plan.problem;
  p = RopeProblem();
  p.dtype = x.dtype;
  p.x = x.data;
  // The kernel reads both tables with one row stride (any sign) and unit stride along a row; other
  // layouts (a strided last dim, two tables laid out differently) go through one copy of both.
  const bool unit = half == 1 || (cos.strides[1] == 1 && sin.strides[1] == 1);
  if (unit && (cos.shape[0] == 1 || cos.strides[0] == sin.strides[0])) {
    p.cos = cos.data;
    p.sin = sin.data;
    p.ld = cos.strides[0];
  } else {
    const size_t bytes = static_cast<size_t>(ops::checked_numel(cos.shape, 2, "cos") * dtype_size(x.dtype));
    plan.tables.resize(2 * bytes);
    ops::count_layout_copy();
    for (int i = 0; i < 2; ++i) ops::copy_view(*tabs[i], ops::contiguous_like(*tabs[i], plan.tables.data() + i * bytes));
    p.cos = plan.tables.data();
    p.sin = plan.tables.data() + bytes;
    p.ld = half;
  }
  p.P = cos.shape[0];
  p.half = half;
  p.positions = plan.positions.data();
  p.pos_b = L;
  p.pos_l = 1;
  p.interleaved = interleaved;
  p.B = B; p.H = x.shape[1]; p.L = L; p.D = D;
  for (int i = 0; i < 4; ++i) p.x_s[i] = x.strides[i];
  OutputSpec& out = plan.out;
  out.dtype = x.dtype;
  out.device = x.device;
  out.ndim = 4;
  for (int i = 0; i < 4; ++i) out.shape[i] = x.shape[i];
}

void rope_run(RopePlan& plan, const TensorView& out) {
  ops::require_output(out, "out", plan.out);
  RopeProblem& p = plan.problem;
  p.out = out.data;
  for (int i = 0; i < 4; ++i) p.o_s[i] = out.strides[i];
  if (p.out == p.x) {
    for (int i = 0; i < 4; ++i)
      if (p.o_s[i] != p.x_s[i] && plan.out.shape[i] > 1)
        throw ValueError("out: when out is x itself (in place) it must have x's strides");
  }
  if (p.B * p.H * p.L == 0) return;
  backend_for(plan.out.device, "x").rope(p);
}

}  // namespace attnkit
