# Compile one kernel source once per instruction set, each with its own flags and its own
# ATTNKIT_ISA_NAMESPACE, into object libraries that the module links. Only the dispatcher,
# which checks cpuid first, calls into a path; nothing else includes the per-ISA code, and the
# per-ISA sources include no header-only template library (no Eigen), so no AVX-512 copy of an
# inline function can be picked by the linker for code that runs on every CPU.
set(ATTNKIT_ISA_FLAGS_generic "")
set(ATTNKIT_ISA_FLAGS_avx2 "-mavx2;-mfma;-mf16c")
set(ATTNKIT_ISA_FLAGS_avx512 "-mavx512f;-mavx512dq;-mavx512bw;-mavx512vl;-mfma;-mavx2;-mf16c")
# AVX-512 plus AVX512_BF16 (vdpbf16ps: bfloat16 linear; Cooper Lake, Sapphire Rapids, Zen 4 and later)
set(ATTNKIT_ISA_FLAGS_avx512_bf16 "${ATTNKIT_ISA_FLAGS_avx512};-mavx512bf16")
# AVX-512-BF16 plus AMX-TILE/AMX-BF16 (tdpbf16ps: bfloat16 linear on tiles; Sapphire Rapids and later).
# ATTNKIT_AMX_EMULATE (a test build) replaces the tile instructions with plain C++ (csrc/cpu/amx_tiles.h)
# and leaves the AMX flags out, so that no tile instruction is in the module at all.
if(ATTNKIT_AMX_EMULATE)
  set(ATTNKIT_ISA_FLAGS_amx_bf16 "${ATTNKIT_ISA_FLAGS_avx512_bf16}")
else()
  set(ATTNKIT_ISA_FLAGS_amx_bf16 "${ATTNKIT_ISA_FLAGS_avx512_bf16};-mamx-tile;-mamx-bf16")
endif()
set(ATTNKIT_ISAS generic avx2 avx512 avx512_bf16 amx_bf16)

# The quantized GEMM's levels (csrc/cpu/qkernels.cpp): the same generic and avx2 flags, plus
# AVX-VNNI (256-bit vpdpbusd, VEX: Alder Lake, Sapphire Rapids, Zen 5), AVX-512 VNNI (Cascade Lake,
# Ice Lake, Zen 4) and AMX-INT8 (tdpbusd; emulated in C++ by an ATTNKIT_AMX_EMULATE build).
set(ATTNKIT_QISA_FLAGS_generic "")
set(ATTNKIT_QISA_FLAGS_avx2 "${ATTNKIT_ISA_FLAGS_avx2}")
set(ATTNKIT_QISA_FLAGS_avx_vnni "${ATTNKIT_ISA_FLAGS_avx2};-mavxvnni")
set(ATTNKIT_QISA_FLAGS_avx512_vnni "${ATTNKIT_ISA_FLAGS_avx512};-mavx512vnni")
if(ATTNKIT_AMX_EMULATE)
  set(ATTNKIT_QISA_FLAGS_amx_int8 "${ATTNKIT_QISA_FLAGS_avx512_vnni}")
else()
  set(ATTNKIT_QISA_FLAGS_amx_int8 "${ATTNKIT_QISA_FLAGS_avx512_vnni};-mamx-tile;-mamx-int8")
endif()
set(ATTNKIT_QISAS generic avx2 avx_vnni avx512_vnni amx_int8)

# prefix: the object libraries' name prefix; levels / flags_prefix: the list of levels and their flags.
function(attnkit_add_isa_kernels out_var source prefix levels flags_prefix)
  set(objs)
  foreach(isa IN LISTS ${levels})
    set(tgt ${prefix}_${isa})
    add_library(${tgt} OBJECT ${source})
    target_include_directories(${tgt} PRIVATE ${PROJECT_SOURCE_DIR}/csrc/include ${PROJECT_SOURCE_DIR}/csrc)
    target_compile_definitions(${tgt} PRIVATE ATTNKIT_ISA_NAMESPACE=${isa})
    if(ATTNKIT_TEST_AVX512_LAYOUT)
      target_compile_definitions(${tgt} PRIVATE ATTNKIT_AVX512_LAYOUT)
    endif()
    if(isa STREQUAL "amx_bf16" OR isa STREQUAL "amx_int8")
      target_compile_definitions(${tgt} PRIVATE ATTNKIT_AMX $<$<BOOL:${ATTNKIT_AMX_EMULATE}>:ATTNKIT_AMX_EMULATE>)
    endif()
    target_compile_options(${tgt} PRIVATE ${${flags_prefix}_${isa}} ${ATTNKIT_WARNINGS} -O3 -fno-math-errno -ffp-contract=fast)
    set_target_properties(${tgt} PROPERTIES POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden)
    list(APPEND objs $<TARGET_OBJECTS:${tgt}>)
  endforeach()
  set(${out_var} ${objs} PARENT_SCOPE)
endfunction()

# Guard: a per-ISA object must define no global or weak code symbol besides its kernel table,
# or the linker could pick its copy (compiled with wider instructions) for portable code.
function(attnkit_check_isa_symbols target)
  if(CMAKE_NM)
    add_custom_command(TARGET ${target} POST_BUILD
      COMMAND ${CMAKE_COMMAND} -DNM=${CMAKE_NM} "-DOBJECTS=$<JOIN:$<TARGET_OBJECTS:attnkit_kernels_avx2>;$<TARGET_OBJECTS:attnkit_kernels_avx512>;$<TARGET_OBJECTS:attnkit_kernels_avx512_bf16>;$<TARGET_OBJECTS:attnkit_kernels_amx_bf16>;$<TARGET_OBJECTS:attnkit_qkernels_avx2>;$<TARGET_OBJECTS:attnkit_qkernels_avx_vnni>;$<TARGET_OBJECTS:attnkit_qkernels_avx512_vnni>;$<TARGET_OBJECTS:attnkit_qkernels_amx_int8>,;>"
              -P ${PROJECT_SOURCE_DIR}/cmake/check_isa_symbols.cmake
      VERBATIM)
  endif()
endfunction()
