// Instruction-set detection and the choice of kernel path, made once and cached.
#pragma once
#include <string>
#include <vector>

namespace attnkit { namespace cpu {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx_bf16 = 4 };

const char* isa_name(Isa isa);
std::vector<Isa> usable_isas();      // ordered from the most portable to the fastest
std::vector<Isa> compiled_isas();
Isa current_isa();
void set_isa(Isa isa);               // ValueError if this CPU cannot run it
Isa parse_isa(const std::string& name);  // ValueError for an unknown name
const std::string& amx_unusable();   // why amx_bf16 cannot run here ("" if it can); asks the OS once

struct Kernels;
const Kernels& active_kernels();     // the table of the current path

}}  // namespace attnkit::cpu
