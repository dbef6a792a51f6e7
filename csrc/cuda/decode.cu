// Flash-decoding: attention for few query rows per KV head (decoding with a KV cache).
//
// One thread block per (batch, KV head, split of the keys); the block takes every query row that
// reads this KV head (G grouped heads x Lq rows, at most kDecodeRows), so K and V are read once.
// Lanes read 16 bytes each: D / VEC lanes hold one key, a warp KPW keys at a time, four keys per
// lane group in flight. Each lane group keeps an online softmax (max, sum, output slice) per
// row; the block merges its groups in shared memory and, when the keys were split over several
// blocks, writes (max, sum, unnormalised output) in fp32 for decode_combine to merge by
// log-sum-exp.
#include <cstdlib>

#include "cuda/attention.cuh"
#include "cuda/backend.h"

namespace attnkit { namespace cuda {

namespace {

constexpr int kDecodeRows = 8, kDecodeWarps = 4;

// ROWS: query rows held per thread (1, 2, 4 or 8: the block's G x Lq rows rounded up).
template <class T, int D, int ROWS>
struct DecodeShape {
  static constexpr int VEC = 16 / int(sizeof(T));        // elements per 16-byte load
  static constexpr int LPK = D / VEC;                     // lanes per key
  static constexpr int KPW = 32 / LPK;                    // keys per warp step
  static constexpr int GROUPS = kDecodeWarps * KPW;       // lane groups per block
  static constexpr int U = ROWS * VEC >= 32 ? 2 : 4;   // keys per lane group per step (8 for one row: measured slower)
  static constexpr int KEYS_PER_STEP = GROUPS * U;
  static constexpr int SMEM = GROUPS * ROWS * (D + 2) * int(sizeof(float));
};

template <class T, int VEC>
__device__ __forceinline__ void to_floats(float (&dst)[VEC], const uint4& raw) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < VEC; ++i) dst[i] = to_float(e[i]);
}

template <class T, int VEC>
__device__ __forceinline__ void load_vec(float (&dst)[VEC], const T* src) {
  to_floats<T, VEC>(dst, *reinterpret_cast<const uint4*>(src));
}

// ROWS == 1: at most 128 registers, so that 4 blocks (16 warps) share an SM: more loads in flight.
template <class T, int D, int ROWS>
__global__ void __launch_bounds__(kDecodeWarps * 32, ROWS == 1 ? 4 : 1) decode_split(const AttnParams p, int64_t keys_per_split,
                                                                  float* ws_o, float* ws_ml, int nsplit) {
  using S = DecodeShape<T, D, ROWS>;
  constexpr int VEC = S::VEC, LPK = S::LPK, KPW = S::KPW, GROUPS = S::GROUPS, U = S::U;
  extern __shared__ float sm[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int grp = warp * KPW + lane / LPK, gl = lane % LPK;   // lane group, lane within it
  int64_t bid = blockIdx.x;
  const int split = static_cast<int>(bid % nsplit);
  bid /= nsplit;
  const int64_t hk = bid % p.Hk, b = bid / p.Hk;
  const int R = static_cast<int>(p.G * p.Lq);                  // rows of this block
  const KeyRange kr = key_range(p, b);

  // rows: r = g * Lq + i -> head hk * G + g, query row i
  const T* kbase = static_cast<const T*>(p.k) + slice_offsets(p, b, hk * p.G).k;
  const T* vbase = static_cast<const T*>(p.v) + slice_offsets(p, b, hk * p.G).v;
  float qv[ROWS][VEC];
  int64_t lim[ROWS], moff[ROWS], qi[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    lim[r] = 0; moff[r] = 0; qi[r] = 0;
#pragma unroll
    for (int e = 0; e < VEC; ++e) qv[r][e] = 0.f;
    if (r < R) {
      const int64_t g = r / p.Lq, i = r % p.Lq;
      const SliceOffsets so = slice_offsets(p, b, hk * p.G + g);
      load_vec<T, VEC>(qv[r], static_cast<const T*>(p.q) + so.q + i * p.q_i + gl * VEC);
#pragma unroll
      for (int e = 0; e < VEC; ++e) qv[r][e] *= p.scale_log2;
      lim[r] = kr.end(p, i);
      moff[r] = so.m;
      qi[r] = i;
    }
  }
  int64_t jbeg = split * keys_per_split, jend = jbeg + keys_per_split;
  int64_t any_end = 0;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) any_end = lim[r] > any_end ? lim[r] : any_end;
  if (jend > any_end) jend = any_end;

  float o[ROWS][VEC], m_run[ROWS], l_run[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) o[r][e] = 0.f;
  }

  // The loop bound is warp-uniform (the shuffles below need every lane): a warp takes KPW * U
  // consecutive keys per step, lane group (lane / LPK) the U keys at j0. K and V stay raw (16
  // bytes a load) until used, and the next step's loads are issued before this step's arithmetic,
  // so a lane keeps 2 x U x 32 bytes in flight while it computes.
  constexpr int64_t kStep = int64_t(GROUPS) * U;
  auto fetch = [&](uint4 (&kr_)[U], uint4 (&vr_)[U], int64_t jw) {
    const int64_t j0 = jw + int64_t(lane / LPK) * U;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t j = j0 + u;
      if (j < jend) {
        kr_[u] = __ldg(reinterpret_cast<const uint4*>(kbase + j * p.k_j + gl * VEC));
        vr_[u] = __ldg(reinterpret_cast<const uint4*>(vbase + j * p.v_j + gl * VEC));
      } else {
        kr_[u] = make_uint4(0, 0, 0, 0);
        vr_[u] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  uint4 kraw[U], vraw[U];
  int64_t jw = jbeg + int64_t(warp) * KPW * U;
  if (jw < jend) fetch(kraw, vraw, jw);
  for (; jw < jend; jw += kStep) {
    uint4 knext[U], vnext[U];
    if (jw + kStep < jend) fetch(knext, vnext, jw + kStep);
    const int64_t j0 = jw + int64_t(lane / LPK) * U;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (r >= R) break;
      float sc[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float kv[VEC];
        to_floats<T, VEC>(kv, kraw[u]);
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) d = fmaf(qv[r][e], kv[e], d);
#pragma unroll
        for (int w = LPK / 2; w >= 1; w >>= 1) d += __shfl_xor_sync(0xffffffffu, d, w);
        const int64_t j = j0 + u;
        if (j >= jend || j >= lim[r]) d = -INFINITY;
        else if (p.mask) d = apply_mask<T>(d, p, moff[r], qi[r], j);
        sc[u] = d;
      }
      float mx = m_run[r];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, sc[u]);
      const float base = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m_run[r] - base);
      m_run[r] = mx;
      float l = l_run[r] * alpha;
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[r][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pu = exp2f(sc[u] - base);
        l += pu;
        if (pu != 0.f) {
          float vv[VEC];
          to_floats<T, VEC>(vv, vraw[u]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) o[r][e] = fmaf(pu, vv[e], o[r][e]);
        }
      }
      l_run[r] = l;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) kraw[u] = knext[u], vraw[u] = vnext[u];
  }

  // merge the lane groups: [GROUPS][rows][D + 2] (output slice, then max and sum)
  float* mine = sm + grp * ROWS * (D + 2);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (r >= R) break;
#pragma unroll
    for (int e = 0; e < VEC; ++e) mine[r * (D + 2) + gl * VEC + e] = o[r][e];
    if (gl == 0) {
      mine[r * (D + 2) + D] = m_run[r];
      mine[r * (D + 2) + D + 1] = l_run[r];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < R * D; idx += kDecodeWarps * 32) {
    const int r = idx / D, d = idx % D;
    float M = -INFINITY;
    for (int gi = 0; gi < GROUPS; ++gi) M = fmaxf(M, sm[(gi * ROWS + r) * (D + 2) + D]);
    const float base = M == -INFINITY ? 0.f : M;
    float L = 0.f, O = 0.f;
    for (int gi = 0; gi < GROUPS; ++gi) {
      const float* row = sm + (gi * ROWS + r) * (D + 2);
      const float w = exp2f(row[D] - base);
      L += row[D + 1] * w;
      if (w != 0.f) O += row[d] * w;
    }
    const int64_t g = r / p.Lq, i = r % p.Lq, h = hk * p.G + g;
    if (nsplit == 1) {
      const SliceOffsets so = slice_offsets(p, b, h);
      static_cast<T*>(p.out)[so.o + i * p.o_i + d * p.o_e] = from_float<T>(L != 0.f ? O / L : 0.f);
      if (d == 0 && p.lse)
        static_cast<T*>(p.lse)[so.l + i * p.l_i] = from_float<T>(L != 0.f ? (M + log2f(L)) * kLn2 : -INFINITY);
    } else {
      const int64_t row = ((b * p.Hq + h) * p.Lq + i) * nsplit + split;   // workspace row
      ws_o[row * D + d] = O;
      if (d == 0) {
        ws_ml[row * 2] = M;
        ws_ml[row * 2 + 1] = L;
      }
    }
  }
}

// One block per query row: merge the splits by log-sum-exp and normalise.
template <class T, int D>
__global__ void __launch_bounds__(128) decode_combine(const AttnParams p, const float* ws_o, const float* ws_ml, int nsplit) {
  const int64_t row = blockIdx.x;                // ((b * Hq + h) * Lq + i)
  const int64_t i = row % p.Lq, h = (row / p.Lq) % p.Hq, b = row / (p.Lq * p.Hq);
  const float* ml = ws_ml + row * nsplit * 2;
  float M = -INFINITY;
  for (int s = 0; s < nsplit; ++s) M = fmaxf(M, ml[2 * s]);
  const float base = M == -INFINITY ? 0.f : M;
  float L = 0.f;
  for (int s = 0; s < nsplit; ++s) L += ml[2 * s + 1] * exp2f(ml[2 * s] - base);
  const SliceOffsets so = slice_offsets(p, b, h);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float O = 0.f;
    for (int s = 0; s < nsplit; ++s) {
      const float w = exp2f(ml[2 * s] - base);
      if (w != 0.f) O += ws_o[(row * nsplit + s) * D + d] * w;
    }
    static_cast<T*>(p.out)[so.o + i * p.o_i + d * p.o_e] = from_float<T>(L != 0.f ? O / L : 0.f);
  }
  if (threadIdx.x == 0 && p.lse)
    static_cast<T*>(p.lse)[so.l + i * p.l_i] = from_float<T>(L != 0.f ? (M + log2f(L)) * kLn2 : -INFINITY);
}

template <class T, int D, int ROWS>
void launch(const AttnParams& p, int num_sms, cudaStream_t s) {
  using S = DecodeShape<T, D, ROWS>;
  const int64_t pairs = p.B * p.Hk;
  auto kern = decode_split<T, D, ROWS>;
  int per_sm = prepare_kernel(reinterpret_cast<const void*>(kern), kDecodeWarps * 32, S::SMEM);
  // Splits: about 8 waves of the blocks the GPU holds at once (so the last, partial wave costs
  // little), each split at least 4 block-steps of keys. The combine's extra traffic (fp32 partial
  // outputs, rows x splits x D) stays well under 1 % of K and V at long caches.
  if (per_sm < 1) per_sm = 1;
  const char* waves_env = std::getenv("ATTNKIT_CUDA_DECODE_WAVES");   // the benchmark's knob
  const int64_t waves = waves_env ? std::atoi(waves_env) : 8;
  const int64_t max_split = (p.Lk + 4 * S::KEYS_PER_STEP - 1) / (4 * S::KEYS_PER_STEP);
  int64_t nsplit = (waves * per_sm * int64_t(num_sms) + pairs - 1) / pairs;
  if (nsplit > max_split) nsplit = max_split;
  if (nsplit > 128) nsplit = 128;
  if (nsplit < 1) nsplit = 1;
  int64_t per = (p.Lk + nsplit - 1) / nsplit;
  per = (per + S::KEYS_PER_STEP - 1) / S::KEYS_PER_STEP * S::KEYS_PER_STEP;
  nsplit = per > 0 ? (p.Lk + per - 1) / per : 1;
  if (nsplit < 1) nsplit = 1;
  const int64_t rows = p.B * p.Hq * p.Lq;
  StreamBuffer ws_o(nsplit > 1 ? sizeof(float) * rows * nsplit * D : 0, s);
  StreamBuffer ws_ml(nsplit > 1 ? sizeof(float) * rows * nsplit * 2 : 0, s);
  kern<<<static_cast<unsigned>(pairs * nsplit), kDecodeWarps * 32, S::SMEM, s>>>(p, per, ws_o.as<float>(),
                                                                                ws_ml.as<float>(), int(nsplit));
  AK_LAUNCHED("decode_split");
  if (nsplit > 1) {
    decode_combine<T, D><<<static_cast<unsigned>(rows), 128, 0, s>>>(p, ws_o.as<float>(), ws_ml.as<float>(), int(nsplit));
    AK_LAUNCHED("decode_combine");
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

template <class T>
bool decode_fits(const AttnParams& p) {
  constexpr int64_t vec = 16 / sizeof(T);
  if (p.G * p.Lq > kDecodeRows) return false;
  if (p.E != p.Ev || (p.E != 64 && p.E != 128)) return false;
  if (p.q_e != 1 || p.k_e != 1 || p.v_e != 1) return false;
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v)) return false;
  for (int64_t s : {p.q_h, p.q_i, p.k_h, p.k_j, p.v_h, p.v_j}) if (s % vec) return false;
  for (int i = 0; i < p.nbatch; ++i)
    for (int64_t s : {p.q_b[i], p.k_b[i], p.v_b[i]}) if (s % vec) return false;
  if (p.B * p.Hk * 128 > (int64_t(1) << 31) - 1) return false;
  return true;
}

template <class T>
void launch_decode(const AttnParams& p, int num_sms, cudaStream_t s) {
  const int64_t R = p.G * p.Lq;
  if (p.E == 64) {
    if (R == 1) launch<T, 64, 1>(p, num_sms, s);
    else if (R == 2) launch<T, 64, 2>(p, num_sms, s);
    else if (R <= 4) launch<T, 64, 4>(p, num_sms, s);
    else launch<T, 64, 8>(p, num_sms, s);
  } else {
    if (R == 1) launch<T, 128, 1>(p, num_sms, s);
    else if (R == 2) launch<T, 128, 2>(p, num_sms, s);
    else if (R <= 4) launch<T, 128, 4>(p, num_sms, s);
    else launch<T, 128, 8>(p, num_sms, s);
  }
}

template bool decode_fits<float>(const AttnParams&);
template bool decode_fits<__half>(const AttnParams&);
template bool decode_fits<__nv_bfloat16>(const AttnParams&);
template void launch_decode<float>(const AttnParams&, int, cudaStream_t);
template void launch_decode<__half>(const AttnParams&, int, cudaStream_t);
template void launch_decode<__nv_bfloat16>(const AttnParams&, int, cudaStream_t);

}}  // namespace attnkit::cuda
