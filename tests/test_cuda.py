"""The CUDA backend against the float64 NumPy oracle (attnkit.reference) and torch SDPA on the GPU.

Inputs are drawn fresh per test (the rng fixture), rounded to the tested dtype, and the oracle runs
on those rounded values in float64. Without a GPU every test here skips with the reason, except
the ones that check the reason itself.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

from conftest import relative_error

CUDA_REASON = attnkit.cuda.why_unavailable()
torch = pytest.importorskip("torch") if CUDA_REASON is None else None
needs_gpu = pytest.mark.skipif(CUDA_REASON is not None, reason=f"no GPU: {CUDA_REASON}")

# Relative error ||out - ref|| / ||ref|| allowed per dtype (fp16/bf16: P and the output are
# rounded to the storage type; float32 is fp32 arithmetic, no TF32).
GPU_TOLERANCE = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 2.5e-2}
DTYPES = ["float16", "bfloat16", "float32"]


def test_reason_when_unavailable():
    if CUDA_REASON is None:
        assert attnkit.cuda.is_available()
    else:
        assert not attnkit.cuda.is_available()
        assert isinstance(CUDA_REASON, str) and len(CUDA_REASON) > 10


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def dev(a, dtype):
    """A torch CUDA tensor of `dtype` holding a (rounded to dtype)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if t.dtype != torch.bool:
        t = t.to(getattr(torch, dtype))
    return t.cuda()


def host64(t):
    if t.dtype == torch.bool:
        return t.cpu().numpy()
    return t.detach().float().cpu().numpy().astype(np.float64)


def check(out, expected, dtype, what="output", tol=None):
    out64 = host64(out)
    exp = np.asarray(expected, dtype=np.float64)
    assert out64.shape == exp.shape, f"{what}: shape {out64.shape}, expected {exp.shape}"
    assert np.array_equal(np.isnan(out64), np.isnan(exp)), f"{what}: NaN pattern differs"
    inf = np.isinf(exp)
    assert np.array_equal(np.isinf(out64), inf) and np.array_equal(out64[inf], exp[inf]), f"{what}: infinities differ"
    err = relative_error(out64, exp)
    tol = GPU_TOLERANCE[dtype] if tol is None else tol
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"
    return err


def visible_mask(Lq, Lk, causal, lengths=None, batch=()):
    """bool (..., 1, Lq, Lk): which keys each query row may see (the oracle's rule)."""
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    n = Lk if lengths is None else np.asarray(lengths).reshape(tuple(batch) + (1, 1, 1))
    vis = np.ones((1, 1), dtype=bool) & (j < n)
    if causal == "top_left":
        vis = vis & (j <= i)
    elif causal == "bottom_right":
        vis = vis & (j <= i + n - Lq)
    return vis


def torch_sdpa(q, k, v, vis, scale=None, mask_add=None):
    """torch SDPA on the GPU in fp32 for the rows that see a key (torch gives NaN for the others)."""
    G = q.shape[-3] // k.shape[-3]
    kk = k.float().repeat_interleave(G, dim=-3)
    vv = v.float().repeat_interleave(G, dim=-3)
    m = torch.from_numpy(np.array(vis)).cuda()
    bias = torch.zeros(m.shape, device="cuda").masked_fill(~m, float("-inf"))
    if mask_add is not None:
        bias = bias + mask_add.float()
    return torch.nn.functional.scaled_dot_product_attention(q.float(), kk, vv, attn_mask=bias, scale=scale)


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------------------------
SHAPES = [  # B, Hq, Hk, Lq, Lk, E, Ev
    (1, 2, 2, 1, 1, 64, 64),
    (2, 3, 3, 15, 17, 64, 64),
    (1, 2, 2, 64, 64, 128, 128),
    (1, 2, 2, 65, 130, 128, 128),
    (2, 4, 2, 200, 77, 32, 32),
    (1, 2, 1, 33, 40, 80, 48),
    (1, 1, 1, 40, 70, 256, 136),
    (1, 2, 2, 129, 257, 72, 72),
]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}Hq{}Hk{}Lq{}Lk{}E{}Ev{}".format(*s))
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
def test_sdpa_shapes(rng, dtype, shape, causal):
    B, Hq, Hk, Lq, Lk, E, Ev = shape
    q = dev(rng.standard_normal((B, Hq, Lq, E)), dtype)
    k = dev(rng.standard_normal((B, Hk, Lk, E)), dtype)
    v = dev(rng.standard_normal((B, Hk, Lk, Ev)), dtype)
    out, lse = attnkit.scaled_dot_product_attention(q, k, v, is_causal=causal != "none", enable_gqa=Hq != Hk,
                                                    causal_alignment=causal if causal != "none" else "top_left",
                                                    return_lse=True)
    assert isinstance(out, torch.Tensor) and out.is_cuda and out.dtype == q.dtype
    exp, exp_lse = ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), is_causal=causal != "none",
                                                    enable_gqa=Hq != Hk, return_lse=True,
                                                    causal_alignment=causal if causal != "none" else "top_left")
    err = check(out, exp, dtype)
    check(lse, exp_lse, dtype, "lse", tol=1e-5 if dtype == "float32" else 2e-3 if dtype == "float16" else 1e-2)
    # torch SDPA on the same rounded inputs, rows that see a key
    vis = visible_mask(Lq, Lk, None if causal == "none" else causal)
    rows = np.broadcast_to(vis.any(-1), (B, Hq, Lq))
    t = torch_sdpa(q, k, v, vis)
    t_err = relative_error(host64(t)[rows], exp[rows])
    assert err <= max(2 * t_err, 5e-6) + GPU_TOLERANCE[dtype] / 4, f"attnkit {err:.2e} vs torch {t_err:.2e}"


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool-broadcast", "bool-full-with-empty-rows", "float-heads", "float-neg-inf-row"])
def test_sdpa_masks(rng, dtype, kind):
    B, H, Lq, Lk, E = 2, 3, 70, 90, 64
    q = dev(rng.standard_normal((B, H, Lq, E)), dtype)
    k = dev(rng.standard_normal((B, H, Lk, E)), dtype)
    v = dev(rng.standard_normal((B, H, Lk, E)), dtype)
    if kind == "bool-broadcast":
        m = rng.random((B, 1, 1, Lk)) > 0.3
    elif kind == "bool-full-with-empty-rows":
        m = rng.random((B, H, Lq, Lk)) > 0.5
        m[0, 1, 5] = False
        m[1, 2, 69] = False
    elif kind == "float-heads":
        m = rng.standard_normal((H, Lq, Lk))
    else:
        m = rng.standard_normal((Lq, Lk))
        m[3] = -np.inf
    mask = dev(m, dtype)
    out, lse = attnkit.scaled_dot_product_attention(q, k, v, mask, return_lse=True)
    m64 = host64(mask)
    exp, exp_lse = ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), m64, return_lse=True)
    check(out, exp, dtype)
    check(lse, exp_lse, dtype, "lse", tol=1e-5 if dtype == "float32" else 2e-3 if dtype == "float16" else 1e-2)
    if kind == "bool-full-with-empty-rows":
        assert torch.all(out[0, 1, 5] == 0) and torch.isinf(lse[0, 1, 5]) and lse[0, 1, 5] < 0


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq", [1, 2, 4, 9])
@pytest.mark.parametrize("E", [64, 128])
def test_sdpa_decode_gqa_lengths(rng, dtype, Lq, E):
    B, Hq, Hk, Lk = 3, 8, 2, 1000
    q = dev(rng.standard_normal((B, Hq, Lq, E)), dtype)
    k = dev(rng.standard_normal((B, Hk, Lk, E)), dtype)
    v = dev(rng.standard_normal((B, Hk, Lk, E)), dtype)
    lengths = np.array([Lk, 0, 517])
    v[1, :, :] = float("nan")        # the unused cache tail (all of batch 1) must not be read
    out, lse = attnkit.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, return_lse=True,
                                                    causal_alignment="bottom_right", kv_lengths=lengths)
    exp, exp_lse = ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), is_causal=True, enable_gqa=True,
                                                    causal_alignment="bottom_right", kv_lengths=lengths, return_lse=True)
    check(out, exp, dtype)
    check(lse, exp_lse, dtype, "lse", tol=1e-5 if dtype == "float32" else 2e-3 if dtype == "float16" else 1e-2)
    assert torch.all(out[1] == 0)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["bthe-view", "last-dim-strided", "offset-slices"])
def test_sdpa_strided_inputs(rng, dtype, layout):
    B, H, L, E = 2, 4, 50, 64
    if layout == "bthe-view":          # (B, L, H, E) storage, viewed as (B, H, L, E): read in place
        base = [dev(rng.standard_normal((B, L, H, E)), dtype) for _ in range(3)]
        q, k, v = (t.permute(0, 2, 1, 3) for t in base)
    elif layout == "last-dim-strided":  # every other element along E: the plain (SIMT) kernel
        base = [dev(rng.standard_normal((B, H, L, 2 * E)), dtype) for _ in range(3)]
        q, k, v = (t[..., ::2] for t in base)
    else:                               # slices of a packed qkv projection at odd offsets
        qkv = dev(rng.standard_normal((B, L, 3 * H * E + 8)), dtype)
        q, k, v = (qkv[..., 8 + i * H * E: 8 + (i + 1) * H * E].reshape(B, L, H, E).permute(0, 2, 1, 3) for i in range(3))
    out = attnkit.scaled_dot_product_attention(q, k, v, is_causal=True)
    exp = ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), is_causal=True)
    check(out, exp, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_out_and_scale(rng, dtype):
    B, H, L, E = 2, 2, 40, 64
    q, k, v = (dev(rng.standard_normal((B, H, L, E)), dtype) for _ in range(3))
    merged = torch.full((B, L, H, E), float("nan"), dtype=q.dtype, device="cuda")
    res = attnkit.scaled_dot_product_attention(q, k, v, scale=0.3, out=merged.permute(0, 2, 1, 3))
    assert res.data_ptr() == merged.data_ptr()
    exp = ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), scale=0.3)
    check(merged.permute(0, 2, 1, 3), exp, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_simt_twin_matches(rng, dtype, monkeypatch):
    """The plain kernel (forced) computes the same function as the tensor-core/decode kernels."""
    monkeypatch.setenv("ATTNKIT_CUDA_ATTN", "simt")
    B, H, L, E = 1, 2, 100, 64
    q, k, v = (dev(rng.standard_normal((B, H, L, E)), dtype) for _ in range(3))
    out = attnkit.scaled_dot_product_attention(q, k, v, is_causal=True)
    check(out, ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), is_causal=True), dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("tile", ["64x1", "64x1m3", "128x1", "128x2"])
@pytest.mark.parametrize("E", [64, 128])
def test_tensor_core_tile_shapes(rng, dtype, tile, E, monkeypatch):
    """Every block shape of the tensor-core kernel (ATTNKIT_CUDA_FA_TILE, the benchmark's knob): ragged
    lengths, a bool mask, bottom-right causal, lse."""
    monkeypatch.setenv("ATTNKIT_CUDA_FA_TILE", tile)
    B, H, Lq, Lk = 2, 2, 150, 301
    q = dev(rng.standard_normal((B, H, Lq, E)), dtype)
    k, v = (dev(rng.standard_normal((B, H, Lk, E)), dtype) for _ in range(2))
    keep = rng.random((B, 1, Lq, Lk)) > 0.2
    out, lse = attnkit.scaled_dot_product_attention(q, k, v, dev(keep, dtype), is_causal=True, return_lse=True,
                                                    causal_alignment="bottom_right")
    exp, exp_lse = ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), keep, is_causal=True,
                                                    causal_alignment="bottom_right", return_lse=True)
    check(out, exp, dtype)
    check(lse, exp_lse, dtype, "lse", tol=2e-3 if dtype == "float16" else 1e-2)
    out = attnkit.scaled_dot_product_attention(q, k, v)
    check(out, ref.scaled_dot_product_attention(host64(q), host64(k), host64(v)), dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("waves", ["1", "8", "16"])
def test_decode_split_counts(rng, dtype, waves, monkeypatch):
    """Split-KV decode with few and many splits (ATTNKIT_CUDA_DECODE_WAVES) merges to the same result."""
    monkeypatch.setenv("ATTNKIT_CUDA_DECODE_WAVES", waves)
    B, H, Lk, E = 2, 4, 5000, 128
    q = dev(rng.standard_normal((B, H, 1, E)), dtype)
    k, v = (dev(rng.standard_normal((B, H, Lk, E)), dtype) for _ in range(2))
    lengths = np.array([Lk, 2345])
    out = attnkit.scaled_dot_product_attention(q, k, v, kv_lengths=lengths)
    check(out, ref.scaled_dot_product_attention(host64(q), host64(k), host64(v), kv_lengths=lengths), dtype)


@needs_gpu
def test_sdpa_cupy_in_cupy_out(rng):
    cp = pytest.importorskip("cupy")
    q, k, v = (cp.asarray(rng.standard_normal((2, 3, 20, 64)).astype(np.float32)) for _ in range(3))
    out = attnkit.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert isinstance(out, cp.ndarray)
    exp = ref.scaled_dot_product_attention(*(cp.asnumpy(a).astype(np.float64) for a in (q, k, v)), is_causal=True)
    assert relative_error(cp.asnumpy(out), exp) < GPU_TOLERANCE["float32"]
    q16, k16, v16 = (a.astype(cp.float16) for a in (q, k, v))
    out16 = attnkit.scaled_dot_product_attention(q16, k16, v16)
    assert out16.dtype == cp.float16
    exp16 = ref.scaled_dot_product_attention(*(cp.asnumpy(a).astype(np.float64) for a in (q16, k16, v16)))
    assert relative_error(cp.asnumpy(out16), exp16) < GPU_TOLERANCE["float16"]


@needs_gpu
def test_sdpa_runs_on_the_callers_stream(rng):
    q, k, v = (dev(rng.standard_normal((4, 8, 512, 64)), "float16") for _ in range(3))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        qq = q * 2                         # queued on s; attnkit must see it done
        out = attnkit.scaled_dot_product_attention(qq, k, v)
    s.synchronize()
    exp = ref.scaled_dot_product_attention(host64(q) * 2, host64(k), host64(v))
    check(out, exp, "float16")


@needs_gpu
def test_errors(rng):
    q = dev(rng.standard_normal((1, 2, 8, 64)), "float32")
    with pytest.raises(TypeError, match="key"):
        attnkit.scaled_dot_product_attention(q, rng.standard_normal((1, 2, 8, 64)).astype(np.float32), q)
    with pytest.raises(TypeError, match="value"):
        attnkit.scaled_dot_product_attention(q, q, q.cpu())
    with pytest.raises(TypeError, match="query"):
        q64 = q.double()
        attnkit.scaled_dot_product_attention(q64, q64, q64)
    with pytest.raises(TypeError, match="key"):
        attnkit.scaled_dot_product_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="key"):
        attnkit.scaled_dot_product_attention(q, q[:, :1], q[:, :1])
    with pytest.raises(TypeError, match="kv_lengths"):
        attnkit.scaled_dot_product_attention(q, q, q, kv_lengths=torch.tensor([8], device="cuda"))
    with pytest.raises(ValueError, match="attn_mask"):
        attnkit.scaled_dot_product_attention(q, q, q, torch.ones((3, 8), dtype=torch.bool, device="cuda"))
    with pytest.raises(TypeError, match="x"):
        attnkit.linear(rng.standard_normal((3, 64)).astype(np.float32), q[0, 0])


# ---------------------------------------------------------------------------------------------
# softmax, layer_norm, linear, activations, multi_head_attention
# ---------------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_masked(rng, dtype, axis):
    x = dev(rng.standard_normal((3, 37, 300)), dtype)
    m = rng.random((1, 37, 300)) > 0.4
    m[0, 2, :] = False
    mask = dev(m, dtype)
    out = attnkit.softmax(x, axis=axis, mask=mask)
    check(out, ref.softmax(host64(x), axis=axis, mask=m), dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_residual_sum(rng, dtype):
    x = dev(rng.standard_normal((4, 33, 768)), dtype)
    r = dev(rng.standard_normal((4, 33, 768)), dtype)
    w = dev(rng.standard_normal(768), dtype)
    b = dev(rng.standard_normal(768), dtype)
    out, s = attnkit.layer_norm(x, 768, w, b, 1e-5, residual=r, return_sum=True)
    s_ref = host64(x) + host64(r)
    check(s, s_ref, dtype, "sum")
    check(out, ref.layer_norm(host64(s), 768, host64(w), host64(b), 1e-5), dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("layout", ["contiguous", "column-slice", "transposed"])
def test_linear(rng, dtype, act, layout):
    M, K, N = 70, 96, 130
    if layout == "contiguous":
        x = dev(rng.standard_normal((2, M // 2, K)), dtype)
    elif layout == "column-slice":
        x = dev(rng.standard_normal((M, K + 40)), dtype)[:, 8:8 + K]
    else:
        x = dev(rng.standard_normal((K, M)), dtype).t()
    w = dev(rng.standard_normal((N, K)) / math.sqrt(K), dtype)
    b = dev(rng.standard_normal(N), dtype)
    out = attnkit.linear(x, w, b, activation=act)
    x64, w64, b64 = host64(x), host64(w), host64(b)
    exp = ref.linear(x64, w64, b64, activation=act)
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.5e-2}[dtype]
    check(out, exp, dtype, tol=tol)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations(rng, dtype):
    x = dev(rng.standard_normal((5, 301)), dtype)[:, ::2]
    check(attnkit.relu(x), ref.relu(host64(x)), dtype)
    check(attnkit.gelu(x), ref.gelu(host64(x)), dtype)
    check(attnkit.gelu(x, approximate="tanh"), ref.gelu(host64(x), approximate="tanh"), dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("mode", ["self-causal", "cross-gqa"])
def test_multi_head_attention(rng, dtype, mode):
    B, Lq, Lk, E, H = 2, 31, 45, 256, 4
    hk = 2 if mode == "cross-gqa" else H
    dh = E // H
    W = dev(rng.standard_normal(((H + 2 * hk) * dh, E)) / math.sqrt(E), dtype)
    bW = dev(rng.standard_normal((H + 2 * hk) * dh) * 0.1, dtype)
    Wo = dev(rng.standard_normal((E, H * dh)) / math.sqrt(E), dtype)
    bo = dev(rng.standard_normal(E) * 0.1, dtype)
    x = dev(rng.standard_normal((B, Lq, E)), dtype)
    if mode == "self-causal":
        out = attnkit.multi_head_attention(x, x, x, H, W, bW, Wo, bo, is_causal=True)
        exp = ref.multi_head_attention(host64(x), host64(x), host64(x), H, host64(W), host64(bW), host64(Wo), host64(bo),
                                       is_causal=True)
    else:
        kv = dev(rng.standard_normal((B, Lk, E)), dtype)
        out = attnkit.multi_head_attention(x, kv, kv, H, W, bW, Wo, bo, num_kv_heads=hk)
        exp = ref.multi_head_attention(host64(x), host64(kv), host64(kv), H, host64(W), host64(bW), host64(Wo), host64(bo),
                                       num_kv_heads=hk)
    assert isinstance(out, torch.Tensor) and out.is_cuda
    check(out, exp, dtype, tol={"float32": 2e-5, "float16": 1e-2}[dtype])
