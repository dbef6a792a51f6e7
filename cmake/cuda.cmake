# attnkit._cuda: the ops (attnkit_ops) + csrc/cuda/*.cu + csrc/bindings/cuda_module.cpp.
#   - architectures: sm_80, sm_86, sm_89, sm_90 machine code and compute_90 PTX by default;
#     -DCMAKE_CUDA_ARCHITECTURES=... (or the CUDAARCHS environment variable) overrides;
#   - the CUDA runtime is linked statically: a user needs only the driver;
#   - cuBLASLt is loaded at run time (dlopen, csrc/cuda/gemm.cu): no cuBLAS at build time.
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR
    "ATTNKIT_CUDA=ON needs the CUDA compiler (nvcc, CUDA 12 or newer): put it on PATH or pass "
    "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc. Without it, build the CPU module alone (the default).")
endif()
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "80-real;86-real;89-real;90" CACHE STRING "CUDA architectures")
endif()
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
message(STATUS "attnkit: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")

file(GLOB ATTNKIT_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
pybind11_add_module(_cuda MODULE WITH_SOABI
  csrc/bindings/cuda_module.cpp
  $<TARGET_OBJECTS:attnkit_ops>
  ${ATTNKIT_CUDA_SOURCES})
target_include_directories(_cuda PRIVATE csrc/include csrc)
target_link_libraries(_cuda PRIVATE CUDA::cudart_static ${CMAKE_DL_LIBS} Threads::Threads)
set_target_properties(_cuda PROPERTIES CUDA_RUNTIME_LIBRARY Static CUDA_SEPARABLE_COMPILATION OFF)
target_compile_options(_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:${ATTNKIT_WARNINGS} -O3>
  $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xcompiler=-Wall,-Wextra>)
target_compile_definitions(_cuda PRIVATE ATTNKIT_VERSION="${SKBUILD_PROJECT_VERSION}")
install(TARGETS _cuda LIBRARY DESTINATION attnkit)
