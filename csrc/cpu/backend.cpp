// The CPU backend: runs a problem on the kernel table of the instruction-set path in use.
#include "attnkit/backend.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/quant.h"

namespace attnkit {
namespace cpu {
namespace {

void check(int status) {
  if (status == 1) throw std::bad_alloc();
  if (status == 2) throw std::logic_error("attnkit: a CPU kernel was handed a dtype it does not compute");
}

// float16 and bfloat16 are storage types: widened on load, computed in float32 (kernels.cpp).
bool supports(DType d) { return d == DType::f32 || d == DType::f64 || d == DType::f16 || d == DType::bf16; }
void attention(const AttnProblem& p) { check(active_kernels().attention(p)); }
void gemm(const GemmProblem& p) {
  if (p.packed && p.packed->quant != Quant::none) check(active_quant_kernels().qgemm(p));  // int8 / int4 weights
  else check(active_kernels().gemm(p));
}
void rows(const RowProblem& p) { check(active_kernels().rows(p)); }
void rope(const RopeProblem& p) { check(active_kernels().rope(p)); }

int weight_layout() { return static_cast<int>(current_isa()); }

}  // namespace

// A packed weight's memory (float or quantized): 64-byte aligned; from 4 MiB on, on 2 MiB boundaries and marked
// for transparent huge pages (Linux), as NumPy does with its large arrays: a model's weights are streamed once per
// decoded token, and 4 KiB pages cost a TLB miss every 4 KiB of that stream.
void* weight_alloc(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes < 2 * kHuge) return std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  const size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
  void* mem = std::aligned_alloc(kHuge, size);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (mem) madvise(mem, size, MADV_HUGEPAGE);  // advice only: its failure changes nothing
#endif
  return mem;
}

namespace {

void pack(const GemmProblem& p, PackedWeight& dst) {
  const Kernels& k = active_kernels();
  dst.bytes = k.packed_bytes(p, &dst.panel_cols, &dst.depth_block, &dst.depth_group);
  void* mem = weight_alloc(dst.bytes);
  if (!mem) throw std::bad_alloc();
  dst.data = std::shared_ptr<void>(mem, std::free);
  dst.layout = weight_layout();
  check(k.pack(p, mem));
}

// W[n][k] from the panels of any layout (panel width pc, depth block kb): plain code, no ISA.
template <class T>
void unpack_as(const PackedWeight& w, T* dst) {
  const int64_t pc = w.panel_cols, kb = w.depth_block, npan = (w.N + pc - 1) / pc, g = w.depth_group;
  const T* src = static_cast<const T*>(w.data.get());
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t k = 0; k < w.K; ++k) {
      const int64_t kc = k / kb, klen = (std::min(kb, w.K - kc * kb) + g - 1) / g * g, kk = k % kb;
      const int64_t c = w.gated ? gated_column(n, w.N, pc) : n;  // the panel column of row n
      dst[n * w.K + k] = src[kc * kb * npan * pc + (c / pc) * klen * pc + (kk / g) * pc * g + (c % pc) * g + kk % g];
    }
}

void unpack(const PackedWeight& w, void* dst) {
  if (w.quant != Quant::none) unpack_quant(w, static_cast<float*>(dst));
  else if (w.dtype == DType::f64) unpack_as(w, static_cast<double*>(dst));
  else if (dtype_size(w.dtype) == 2) unpack_as(w, static_cast<uint16_t*>(dst));  // float16, bfloat16: the bits
  else unpack_as(w, static_cast<float*>(dst));
}

const Backend kBackend = {"cpu", supports, attention, gemm, rows, weight_layout, pack, unpack, rope, pack_quant, unpack_quant_raw, quant_rows};

}  // namespace
}  // namespace cpu

const Backend& cpu_backend() { return cpu::kBackend; }

}  // namespace attnkit
