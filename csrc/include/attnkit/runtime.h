// The CPU runtime's settings, for the bindings: the thread pool and the instruction-set path.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace attnkit {

void set_num_threads(int n);              // ValueError outside [1, 1024]
int get_num_threads();

std::string get_isa();                    // the path in use: "amx_bf16", "avx512_bf16", "avx512", "avx2" or "generic"
void set_isa(const std::string& name);    // ValueError for an unknown name or one this CPU cannot run
std::vector<std::string> usable_isas();   // from the most portable to the fastest
std::vector<std::string> compiled_isas();
// The amx_bf16 path here: "usable", "emulated: ..." (an ATTNKIT_AMX_EMULATE build) or "unusable: <why>"
// (no AMX in cpuid, the OS does not enable the tile state, or arch_prctl refused it).
std::string amx_status();
std::string amx_int8_status();  // the same for the amx_int8 path (tdpbusd)

// How many times an op met a layout its kernels cannot take in place and went through one
// scratch array instead (linear's out= with rows that are not evenly spaced or a strided last
// dim). Every other layout NumPy makes is read and written in place. For tests and diagnostics.
int64_t layout_copies();

// The CUDA module's (attnkit._cuda) settings: where cuBLASLt is loaded from (dlopen at first use),
// and whether it loaded ("cuBLASLt <version>" or "unavailable: <why>").
void set_cublaslt_path(const std::string& path);
std::string cublaslt_status();

}  // namespace attnkit
