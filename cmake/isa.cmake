# Compile one kernel source once per instruction set, each with its own flags and its own
# ATTNKIT_ISA_NAMESPACE, into object libraries that the module links. Only the dispatcher,
# which checks cpuid first, calls into a path; nothing else includes the per-ISA code, and the
# per-ISA sources include no header-only template library (no Eigen), so no AVX-512 copy of an
# inline function can be picked by the linker for code that runs on every CPU.
set(ATTNKIT_ISA_FLAGS_generic "")
set(ATTNKIT_ISA_FLAGS_avx2 "-mavx2;-mfma;-mf16c")
set(ATTNKIT_ISA_FLAGS_avx512 "-mavx512f;-mavx512dq;-mavx512bw;-mavx512vl;-mfma;-mavx2;-mf16c")

function(attnkit_add_isa_kernels out_var source)
  set(objs)
  foreach(isa generic avx2 avx512)
    set(tgt attnkit_kernels_${isa})
    add_library(${tgt} OBJECT ${source})
    target_include_directories(${tgt} PRIVATE ${PROJECT_SOURCE_DIR}/csrc/include ${PROJECT_SOURCE_DIR}/csrc)
    target_compile_definitions(${tgt} PRIVATE ATTNKIT_ISA_NAMESPACE=${isa})
    target_compile_options(${tgt} PRIVATE ${ATTNKIT_ISA_FLAGS_${isa}} ${ATTNKIT_WARNINGS} -O3 -fno-math-errno -ffp-contract=fast)
    set_target_properties(${tgt} PROPERTIES POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden)
    list(APPEND objs $<TARGET_OBJECTS:${tgt}>)
  endforeach()
  set(${out_var} ${objs} PARENT_SCOPE)
endfunction()
