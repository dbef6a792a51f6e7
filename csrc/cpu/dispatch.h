// Instruction-set detection and the choice of kernel path, made once and cached.
#pragma once
#include <string>
#include <vector>

namespace attnkit { namespace cpu {

// avx_vnni, avx512_vnni and amx_int8 run the avx2, avx512 and avx512 float kernels; they differ in
// the quantized GEMM (quant_kernels: 256-bit vpdpbusd, 512-bit vpdpbusd, tdpbusd tiles).
enum class Isa { generic = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx_bf16 = 4, avx_vnni = 5, avx512_vnni = 6, amx_int8 = 7 };

const char* isa_name(Isa isa);
std::vector<Isa> usable_isas();      // ordered from the most portable to the fastest
std::vector<Isa> compiled_isas();
Isa current_isa();
void set_isa(Isa isa);               // ValueError if this CPU cannot run it
Isa parse_isa(const std::string& name);  // ValueError for an unknown name
const std::string& amx_unusable();   // why amx_bf16 cannot run here ("" if it can); asks the OS once
const std::string& amx_int8_unusable();  // the same for amx_int8

struct Kernels;
const Kernels& active_kernels();     // the table of the current path
struct QuantKernels;
const QuantKernels& active_quant_kernels();  // its quantized GEMM

}}  // namespace attnkit::cpu
