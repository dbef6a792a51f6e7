// Every per-ISA constant in one place: vector width, micro-tile and block sizes. Included by the
// kernel unit (kernels.cpp) only, which cmake/isa.cmake compiles once per ISA with that ISA's
// flags. ATTNKIT_AVX512_LAYOUT (CMake option ATTNKIT_TEST_AVX512_LAYOUT) gives every path the
// AVX-512 path's sizes, so machines without AVX-512 test that logic.
#pragma once
#include <cstdint>

#if defined(__AVX512F__) || defined(ATTNKIT_AVX512_LAYOUT)
#define ATTNKIT_LAYOUT_AVX512 1
#endif

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// Vectors and the micro-tile (micro_kernel.h): kMR rows x kNV vectors of accumulators.
#if defined(ATTNKIT_LAYOUT_AVX512)
constexpr int kVecBytes = 64;
constexpr int kMR = 8;  // 8 x 2 zmm accumulators
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
constexpr int kMR = 6;  // 6 x 2 ymm accumulators + 2 B vectors + 1 broadcast = 15 of 16 registers
#else
constexpr int kVecBytes = 16;
constexpr int kMR = 6;
#endif
constexpr int kNV = 2;  // vectors per micro-tile row

// One-row GEMMs (decoding, a weight read once from memory): kRowItems work items a thread, each item's
// panels read as kRowStreams interleaved streams: more of memory's lines in flight than one panel after
// the other (Marian-base greedy decoding 5-8 % faster; bench/NOTES.md, session 7).
constexpr int kRowStreams = 4;
constexpr int64_t kRowItems = 2;
// ... and with an unpacked float W (gemm_dots.h, row_runs_task) kDotRowItems items a thread, each item's W
// rows as kRowStreams runs: 58101 x 512 and 11008 x 4096 at 1 row 5-20 % faster than 6-row dot tiles.
constexpr int64_t kDotRowItems = 32;
// ... there each run prefetched 512 bytes ahead: 58101 x 512 and 11008 x 4096 another 7 % faster, 512 B
// ahead better than 1 or 2 KiB (bench/NOTES.md, session 7).
constexpr int kRowPrefetchBytes = 512;

// GEMM (gemm_blocked.h): an A block of kGemmMC rows x kGemmKC depth stays in L2 while a kGemmKC x NR
// panel of W^T stays in L1. Up to kGemvRows rows, dot products that read W once, in place.
constexpr int64_t kGemmMC = 192, kGemmKC = 512;
constexpr int64_t kGemvRows = 4;
// Up to kDotRows rows with an unpacked float weight: a register tile of dot products (gemm_dots.h,
// dot_rows_task), kDotA rows of A x kDotW rows of W, the depth in chunks of kDotChunkBytes.
constexpr int64_t kDotRows = 32, kDotChunkBytes = 4096;
#if defined(ATTNKIT_LAYOUT_AVX512)
constexpr int kDotA = 4, kDotW = 6;  // 24 accumulators + 4 A vectors + 1 W vector of 32 registers
#else
constexpr int kDotA = 3, kDotW = 3;  // 9 + 3 + 1 of 16
#endif

#if defined(ATTNKIT_AMX)
// AMX (gemm_amx.h): tiles of 16 rows x 64 bytes. A tile of A holds 16 rows x 32 bfloat16 (the depth
// of one tdpbf16ps), a tile of B 16 depth pairs x 16 columns x 2, a tile of C 16 x 16 floats; a
// 2 x 2 block of C tiles takes 4 of the 8 tiles, two of A and two of B the rest. bfloat16 weights
// are packed in panels of kAmxCols columns (one B tile wide), kAmxKC deep (whole tiles).
constexpr int kAmxRows = 16, kAmxDepth = 32, kAmxCols = 16;
constexpr int64_t kAmxKC = 512;
#endif

// Attention (attention.h): a work item holds up to kBlockRows query rows and walks the keys in
// tiles of kTileKeys. Measured (bench/NOTES.md): on AVX2 (32 KiB L1d, 16 registers) 128 rows x
// 64 keys beat 64 x 128 and 64 x 64 by 5-25 %, most for head dim 128; on AVX-512 64 x 128.
#if defined(ATTNKIT_LAYOUT_AVX512)
constexpr int64_t kBlockRows = 64, kTileKeys = 128;
#else
constexpr int64_t kBlockRows = 128, kTileKeys = 64;
#endif
constexpr int64_t kFewRows = 4;  // up to this many query rows (decode), K and V are streamed row by row

// Streaming rows (decode, GEMV): prefetch the row kPrefetchRows ahead.
constexpr int64_t kPrefetchRows = 16;

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
