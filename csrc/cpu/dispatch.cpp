// ISA detection, the kernel table of the path in use, and the runtime settings of attnkit/runtime.h.
#include "cpu/dispatch.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "attnkit/runtime.h"
#include "attnkit/tensor.h"
#include "cpu/kernels.h"
#include "cpu/quant.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu {
namespace {

bool cpu_has(Isa isa);

// Why an AMX path cannot run here, "" when it can; asked once per path. The tile state needs the
// CPU (cpuid 7: AMX-TILE and AMX-BF16 or AMX-INT8), the OS (XCR0 bits 17-18: XTILECFG, XTILEDATA)
// and, on Linux, a per-process permission (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA),
// Linux 5.16+; refused, e.g., where a thread's sigaltstack is too small for the larger signal
// frame). An ATTNKIT_AMX_EMULATE build runs the tile instructions in C++: usable wherever the
// path's other code (avx512_bf16, avx512_vnni) is.
std::string amx_check(Isa base, unsigned edx_bit, const char* what) {
  if (!cpu_has(base))
    return std::string("the path needs ") + isa_name(base) + " (its other kernels are that path's code)";
#if defined(ATTNKIT_AMX_EMULATE)
  (void)edx_bit;
  (void)what;
  return "";
#else
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << edx_bit)))
    return std::string("this CPU has no AMX-TILE/") + what + " (cpuid)";
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));  // OSXSAVE: checked with avx512 above
  if ((lo & (3u << 17)) != (3u << 17)) return "the OS does not enable the AMX tile state (XCR0 bits 17-18)";
  constexpr int kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return std::string("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused: ") + std::strerror(errno);
  unsigned long granted = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &granted) != 0 || !(granted & (1ul << kXfeatureXtiledata)))
    return "arch_prctl(ARCH_GET_XCOMP_PERM) does not list XTILEDATA after the request";
  return "";
#endif
}

const std::string& amx_unusable_reason() {
  static const std::string why = amx_check(Isa::avx512_bf16, 22, "AMX-BF16");
  return why;
}

const std::string& amx_int8_unusable_reason() {
  static const std::string why = amx_check(Isa::avx512_vnni, 25, "AMX-INT8");
  return why;
}

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
    case Isa::amx_bf16: return amx_unusable_reason().empty();
    case Isa::avx_vnni: return cpu_has(Isa::avx2) && __builtin_cpu_supports("avxvnni");
    case Isa::avx512_vnni: return cpu_has(Isa::avx512) && __builtin_cpu_supports("avx512vnni");
    case Isa::amx_int8: return amx_int8_unusable_reason().empty();
  }
  return false;
}

// amx_bf16 is the default float path where the CPU, the OS and Linux let it run (not in an emulating
// test build): measured on a 2-core Sapphire Rapids (bench/NOTES.md, bench/amx_bf16.py) its bfloat16
// linear ran 2-14x the avx512 path at 8-512 rows, its bfloat16 prefill 1.3-1.7x, and everything else is
// the avx512_bf16 code (float32 and float16 the avx512 code compiled with one more flag; bfloat16 decode
// measured even). avx512_bf16 alone (vdpbf16ps for bfloat16 linear) stays opt-in: without AMX it was
// 1.26x the avx512 path's widened bfloat16 at one row but 0.56x at 128-4096 rows.
// The VNNI and AMX-INT8 levels add the quantized GEMM's instructions to a float table (amx_int8 takes
// amx_bf16's where AMX-BF16 is usable, else avx512's), so the best one the CPU has is the default.
// ATTNKIT_ISA / set_isa opt out (e.g. avx512).
Isa best_isa() {
#if !defined(ATTNKIT_AMX_EMULATE)
  if (cpu_has(Isa::amx_int8)) return Isa::amx_int8;
  if (cpu_has(Isa::amx_bf16)) return Isa::amx_bf16;
#endif
  if (cpu_has(Isa::avx512_vnni)) return Isa::avx512_vnni;
  if (cpu_has(Isa::avx512)) return Isa::avx512;
  if (cpu_has(Isa::avx_vnni)) return Isa::avx_vnni;
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
    case Isa::amx_bf16: return "amx_bf16";
    case Isa::avx_vnni: return "avx_vnni";
    case Isa::avx512_vnni: return "avx512_vnni";
    case Isa::amx_int8: return "amx_int8";
  }
  return "?";
}

// In the enum's order (a packed weight's layout tag indexes this list).
std::vector<Isa> compiled_isas() {
  return {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512_bf16, Isa::amx_bf16, Isa::avx_vnni, Isa::avx512_vnni, Isa::amx_int8};
}

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
    throw ValueError(std::string("set_isa: this CPU cannot run the '") + isa_name(isa) + "' path" +
                     (isa == Isa::amx_bf16 ? ": " + amx_unusable_reason()
                     : isa == Isa::amx_int8 ? ": " + amx_int8_unusable_reason() : std::string()));
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
}

Isa parse_isa(const std::string& name) {
  for (Isa i : compiled_isas())
    if (name == isa_name(i)) return i;
  throw ValueError("isa: expected one of 'generic', 'avx2', 'avx512', 'avx512_bf16', 'amx_bf16', 'avx_vnni', 'avx512_vnni', "
                   "'amx_int8', got '" + name + "'");
}

const std::string& amx_unusable() { return amx_unusable_reason(); }
const std::string& amx_int8_unusable() { return amx_int8_unusable_reason(); }

const Kernels& active_kernels() {
  switch (current_isa()) {
    case Isa::amx_bf16: return amx_bf16::kernels();
    case Isa::avx512_bf16: return avx512_bf16::kernels();
    case Isa::amx_int8: return cpu_has(Isa::amx_bf16) ? amx_bf16::kernels() : avx512::kernels();
    case Isa::avx512: case Isa::avx512_vnni: return avx512::kernels();
    case Isa::avx2: case Isa::avx_vnni: return avx2::kernels();
    default: return generic::kernels();
  }
}

// The quantized GEMM of each path: its own level where it names one; avx512 and avx2 take the
// vpmaddubsw code (Skylake-X has AVX-512 without VNNI); avx512_bf16 and amx_bf16 take 512-bit
// vpdpbusd where the CPU has it (every CPU with AVX512_BF16 so far does).
const QuantKernels& active_quant_kernels() {
  switch (current_isa()) {
    case Isa::amx_int8: return amx_int8::quant_kernels();
    case Isa::avx512_vnni: return avx512_vnni::quant_kernels();
    case Isa::avx512_bf16: case Isa::amx_bf16:
      return cpu_has(Isa::avx512_vnni) ? avx512_vnni::quant_kernels() : avx2::quant_kernels();
    case Isa::avx_vnni: return avx_vnni::quant_kernels();
    case Isa::avx512: case Isa::avx2: return avx2::quant_kernels();
    default: return generic::quant_kernels();
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
namespace {
std::string amx_status_of(const std::string& why) {
#if defined(ATTNKIT_AMX_EMULATE)
  if (why.empty()) return "emulated: tile instructions run as plain C++ (an ATTNKIT_AMX_EMULATE build)";
#endif
  return why.empty() ? "usable" : "unusable: " + why;
}
}  // namespace
std::string amx_status() { return amx_status_of(cpu::amx_unusable()); }
std::string amx_int8_status() { return amx_status_of(cpu::amx_int8_unusable()); }

}  // namespace attnkit
