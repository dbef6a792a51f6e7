// ISA detection, the kernel table of the path in use, and the runtime settings of attnkit/runtime.h.
#include "cpu/dispatch.h"

#include <atomic>

#include "attnkit/runtime.h"
#include "attnkit/tensor.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu {
namespace {

bool cpu_has(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::generic: return true;
    // __builtin_cpu_supports also checks (xgetbv) that the OS saves the wider registers.
    case Isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512_bf16: return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512bf16");
  }
  return false;
}

// avx512_bf16 (vdpbf16ps for bfloat16 linear) is opt-in (set_isa / ATTNKIT_ISA): on a 2-core Sapphire
// Rapids it was 1.26x the avx512 path's widened bfloat16 at one row but 0.56x at 128-4096 rows
// (bench/NOTES.md), and the rest of its table is the avx512 code.
Isa best_isa() {
  if (cpu_has(Isa::avx512)) return Isa::avx512;
  if (cpu_has(Isa::avx2)) return Isa::avx2;
  return Isa::generic;
}

std::atomic<int> g_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512_bf16: return "avx512_bf16";
  }
  return "?";
}

std::vector<Isa> compiled_isas() { return {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512_bf16}; }

std::vector<Isa> usable_isas() {
  std::vector<Isa> out;
  for (Isa i : compiled_isas())
    if (cpu_has(i)) out.push_back(i);
  return out;
}

Isa current_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
  if (!cpu_has(isa))
    throw ValueError(std::string("set_isa: this CPU cannot run the '") + isa_name(isa) + "' path");
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
}

Isa parse_isa(const std::string& name) {
  for (Isa i : compiled_isas())
    if (name == isa_name(i)) return i;
  throw ValueError("isa: expected one of 'generic', 'avx2', 'avx512', 'avx512_bf16', got '" + name + "'");
}

const Kernels& active_kernels() {
  switch (current_isa()) {
    case Isa::avx512_bf16: return avx512_bf16::kernels();
    case Isa::avx512: return avx512::kernels();
    case Isa::avx2: return avx2::kernels();
    default: return generic::kernels();
  }
}

}  // namespace cpu

namespace {
std::vector<std::string> names(const std::vector<cpu::Isa>& v) {
  std::vector<std::string> out;
  for (cpu::Isa i : v) out.emplace_back(cpu::isa_name(i));
  return out;
}
}  // namespace

void set_num_threads(int n) { cpu::set_num_threads(n); }
int get_num_threads() { return cpu::num_threads(); }
std::string get_isa() { return cpu::isa_name(cpu::current_isa()); }
void set_isa(const std::string& name) { cpu::set_isa(cpu::parse_isa(name)); }
std::vector<std::string> usable_isas() { return names(cpu::usable_isas()); }
std::vector<std::string> compiled_isas() { return names(cpu::compiled_isas()); }

}  // namespace attnkit
