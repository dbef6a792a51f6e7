// Packing quantized weights into PackedWeight's quantized layout (attnkit/problems.h) and reading
// them back. Plain C++ compiled once for every CPU: the layout does not depend on the path.
#include "cpu/quant.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu {
namespace {

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The logical row n of panel column `col` (N rows; gated: gate features then up features).
inline int64_t row_of(const PackedWeight& w, int64_t col) {
  if (!w.gated) return col;
  constexpr int64_t H = kQuantCols / 2;
  const int64_t F = w.N / 2, f = (col / kQuantCols) * H + col % H;
  if (f >= F) return w.N;
  return col % kQuantCols < H ? f : F + f;
}

struct PackJob {
  const QuantSource* src;
  PackedWeight* w;
  uint8_t* base;
};

void pack_panels(void* ctx, int64_t begin, int64_t end, int) {
  const PackJob& job = *static_cast<const PackJob*>(ctx);
  const QuantSource& s = *job.src;
  const PackedWeight& w = *job.w;
  const int64_t npan = cdiv(w.N, kQuantCols);
  float* scale = reinterpret_cast<float*>(job.base + w.scale_off);
  for (int64_t pn = begin; pn < end; ++pn) {
    if (w.quant == Quant::int8) {
      int8_t* dst = reinterpret_cast<int8_t*>(job.base) + pn * w.kp * kQuantCols;
      int32_t* csum = reinterpret_cast<int32_t*>(job.base + w.sum_off);
      for (int c = 0; c < kQuantCols; ++c) {
        const int64_t n = row_of(w, pn * kQuantCols + c);
        int32_t sum = 0;
        for (int64_t k = 0; k < w.kp; ++k) {
          const int8_t v = n < w.N && k < w.K ? s.q[n * s.q_n + k * s.q_k] : 0;
          dst[(k / 4) * 64 + c * 4 + k % 4] = v;
          sum += v;
        }
        csum[pn * kQuantCols + c] = 128 * sum;
        scale[pn * kQuantCols + c] = n < w.N ? s.scale[n * s.s_n] : 0.0f;
      }
    } else {
      uint8_t* dst = job.base + pn * (w.kp / 2) * kQuantCols;
      const int64_t ng = w.kp / w.group;
      for (int c = 0; c < kQuantCols; ++c) {
        const int64_t n = row_of(w, pn * kQuantCols + c);
        for (int64_t k = 0; k < w.kp; k += 8)
          for (int i = 0; i < 4; ++i) {
            const int lo = n < w.N && k + i < w.K ? s.q[n * s.q_n + (k + i) * s.q_k] : 0;
            const int hi = n < w.N && k + 4 + i < w.K ? s.q[n * s.q_n + (k + 4 + i) * s.q_k] : 0;
            dst[(k / 8) * 64 + c * 4 + i] = static_cast<uint8_t>((lo + 8) | (hi + 8) << 4);
          }
        for (int64_t g = 0; g < ng; ++g)
          scale[(pn * ng + g) * kQuantCols + c] = n < w.N ? s.scale[n * s.s_n + g * s.s_g] : 0.0f;
      }
    }
  }
}

}  // namespace

void pack_quant(const QuantSource& src, PackedWeight& w) {
  const int64_t npan = cdiv(w.N, kQuantCols), cols = npan * kQuantCols;
  if (w.quant == Quant::int8) {
    w.kp = cdiv(w.K, 64) * 64;
    w.scale_off = w.kp * cols;
    w.sum_off = w.scale_off + 4 * cols;
    w.bytes = static_cast<size_t>(w.sum_off + 4 * cols);
  } else {
    w.kp = cdiv(w.K, w.group) * w.group;
    w.scale_off = w.kp / 2 * cols;
    w.sum_off = 0;
    w.bytes = static_cast<size_t>(w.scale_off + 4 * (w.kp / w.group) * cols);
  }
  if (w.K == 0) w.kp = 0;
  void* mem = weight_alloc(w.bytes);
  if (!mem) throw std::bad_alloc();
  w.data = std::shared_ptr<void>(mem, std::free);
  w.layout = -1;
  w.panel_cols = kQuantCols;
  w.depth_block = w.kp;
  w.depth_group = 4;
  PackJob job{&src, &w, static_cast<uint8_t*>(mem)};
  parallel_for(npan, 4, pack_panels, &job, num_threads());
}

// q[n][k] of a packed weight (panel column col = pn * 16 + c).
static inline int q_at(const PackedWeight& w, const uint8_t* base, int64_t col, int64_t k) {
  const int64_t pn = col / kQuantCols, c = col % kQuantCols;
  if (w.quant == Quant::int8) return reinterpret_cast<const int8_t*>(base)[pn * w.kp * kQuantCols + (k / 4) * 64 + c * 4 + k % 4];
  const uint8_t b = base[pn * (w.kp / 2) * kQuantCols + (k / 8) * 64 + c * 4 + k % 4];
  return ((k % 8) < 4 ? (b & 15) : (b >> 4)) - 8;
}

void unpack_quant_raw(const PackedWeight& w, int8_t* q, float* scale) {
  const uint8_t* base = static_cast<const uint8_t*>(w.data.get());
  const float* sc = reinterpret_cast<const float*>(base + w.scale_off);
  const int64_t npan = cdiv(w.N, kQuantCols), ng = w.quant == Quant::int4 ? w.kp / w.group : 1;
  const int64_t ngk = w.quant == Quant::int4 ? cdiv(w.K, w.group) : 1;
  for (int64_t col = 0; col < npan * kQuantCols; ++col) {
    const int64_t n = row_of(w, col), pn = col / kQuantCols, c = col % kQuantCols;
    if (n >= w.N) continue;
    for (int64_t k = 0; k < w.K; ++k) q[n * w.K + k] = static_cast<int8_t>(q_at(w, base, col, k));
    for (int64_t g = 0; g < ngk; ++g) scale[n * ngk + g] = sc[(pn * ng + g) * kQuantCols + c];
  }
}

namespace {
struct RowsJob {
  const PackedWeight* w;
  const int64_t* ids;
  float* out;
};

// Row n of W is column n of its panel: its depth quads lie 64 bytes apart (int4: a 64-byte chunk
// per 8 depths), so a row costs K / 4 (K / 8) small reads: cheap beside the GEMMs of the tokens looked up.
void rows_task(void* ctx, int64_t begin, int64_t end, int) {
  const RowsJob& job = *static_cast<const RowsJob*>(ctx);
  const PackedWeight& w = *job.w;
  const uint8_t* base = static_cast<const uint8_t*>(w.data.get());
  const float* scale = reinterpret_cast<const float*>(base + w.scale_off);
  const int64_t ng = w.quant == Quant::int4 ? w.kp / w.group : 1;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t n = job.ids[i], pn = n / kQuantCols, c = n % kQuantCols;
    float* dst = job.out + i * w.K;
    if (w.quant == Quant::int8) {
      const int8_t* p = reinterpret_cast<const int8_t*>(base) + pn * w.kp * kQuantCols + c * 4;
      const float s = scale[n];
      for (int64_t k = 0; k < w.K; ++k) dst[k] = static_cast<float>(p[(k / 4) * 64 + k % 4]) * s;
    } else {
      const uint8_t* p = base + pn * (w.kp / 2) * kQuantCols + c * 4;
      for (int64_t k = 0; k < w.K; ++k) {
        const uint8_t b = p[(k / 8) * 64 + k % 4];
        const int q = ((k % 8) < 4 ? (b & 15) : (b >> 4)) - 8;
        dst[k] = static_cast<float>(q) * scale[(pn * ng + k / w.group) * kQuantCols + c];
      }
    }
  }
}
}  // namespace

void quant_rows(const PackedWeight& w, const int64_t* ids, int64_t n, float* out) {
  RowsJob job{&w, ids, out};
  parallel_for(n, 16, rows_task, &job, num_threads());
}

void unpack_quant(const PackedWeight& w, float* dst) {
  const uint8_t* base = static_cast<const uint8_t*>(w.data.get());
  const float* scale = reinterpret_cast<const float*>(base + w.scale_off);
  const int64_t npan = cdiv(w.N, kQuantCols), ng = w.quant == Quant::int4 ? w.kp / w.group : 1;
  for (int64_t col = 0; col < npan * kQuantCols; ++col) {
    const int64_t n = row_of(w, col), pn = col / kQuantCols, c = col % kQuantCols;
    if (n >= w.N) continue;
    for (int64_t k = 0; k < w.K; ++k)
      dst[n * w.K + k] = q_at(w, base, col, k) * scale[w.quant == Quant::int8 ? col : (pn * ng + k / w.group) * kQuantCols + c];
  }
}

}}  // namespace attnkit::cpu
