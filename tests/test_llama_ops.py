"""The kernels of the Llama family (issue 12) against the float64 NumPy oracle on every CPU path:
rms_norm (+ fused residual, return_sum), rotary embedding (rotate-half and interleaved, strided
views, per-sequence positions, partial rotary dims, in place), SwiGLU from one packed weight
(gate and up interleaved per panel), and sliding-window attention (flash and decode paths)."""
import numpy as np
import pytest

import attnkit
from attnkit import reference as ref
from attnkit.rope import rope_tables
from conftest import as64, assert_close

dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


@pytest.fixture
def isa(backend):
    """The CPU path of this test's backend (these kernels are CPU only)."""
    if not backend.name.startswith("cpu:"):
        pytest.skip(f"{backend.name}: the Llama-family kernels are CPU only")
    return backend.isa


# ---- rms_norm ---------------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("n", [1, 3, 7, 8, 15, 16, 17, 31, 64, 100, 1030])
def test_rms_norm(isa, dtype, n, rng):
    x = rng.standard_normal((3, 5, n)).astype(dtype) * 3
    r = rng.standard_normal((3, 5, n)).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    assert_close(attnkit.rms_norm(x, w, 1e-6), ref.rms_norm(as64(x), as64(w), 1e-6), dtype)
    assert_close(attnkit.rms_norm(x), ref.rms_norm(as64(x)), dtype)
    y, s = attnkit.rms_norm(x, w, 1e-5, residual=r, return_sum=True)
    y_ref, s_ref = ref.rms_norm(as64(x), as64(w), 1e-5, residual=as64(r), return_sum=True)
    assert y.dtype == dtype and s.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert_close(s, s_ref, dtype)


@dtypes
def test_rms_norm_strided(isa, dtype, rng):
    x = rng.standard_normal((6, 40)).astype(dtype)[::2, ::2]             # strided rows and columns
    r = rng.standard_normal((3, 40)).astype(dtype)[:, 1::2]
    w = rng.standard_normal(40).astype(dtype)[::2]
    assert_close(attnkit.rms_norm(x, w, residual=r), ref.rms_norm(as64(x), as64(w), residual=as64(r)), dtype)


def test_rms_norm_errors(isa):
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="weight"):
        attnkit.rms_norm(x, np.ones(7, np.float32))
    with pytest.raises(TypeError, match="weight"):
        attnkit.rms_norm(x, np.ones(8, np.float64))
    with pytest.raises(ValueError, match="residual"):
        attnkit.rms_norm(x, residual=np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="eps"):
        attnkit.rms_norm(x, eps=-1.0)


# ---- silu ---------------------------------------------------------------------------------
@dtypes
def test_silu(isa, dtype, rng):
    x = (rng.standard_normal((7, 37)) * 8).astype(dtype)
    x[0, :3] = [-200, 200, 0]
    assert_close(attnkit.silu(x), ref.silu(as64(x)), dtype)
    assert_close(attnkit.linear(x, x[:5], activation="silu"),
                 ref.silu(as64(x) @ as64(x[:5]).T), dtype, scale=np.abs(as64(x)) @ np.abs(as64(x[:5])).T)


# ---- rotary embedding -------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("D,rot", [(2, 2), (8, 8), (16, 16), (34, 34), (64, 64), (128, 128), (64, 32), (80, 20)])
def test_rope(isa, dtype, interleaved, D, rot, rng):
    B, L, H, P = 3, 9, 4, 50
    cos, sin = rope_tables(rot, P, 10000.0, dtype=dtype)
    x = rng.standard_normal((B, L, H, D)).astype(dtype).transpose(0, 2, 1, 3)   # (B, H, L, D) view of (B, L, H, D)
    pos = rng.integers(0, P, (B, L))                                            # per-sequence positions
    want = ref.apply_rotary(as64(x), as64(cos), as64(sin), pos, interleaved=interleaved)
    got = attnkit.apply_rotary(x, cos, sin, pos, interleaved=interleaved)
    assert got.dtype == dtype and got.shape == x.shape
    assert_close(got, want, dtype)
    shared = np.arange(5, 5 + L)                                                # (L,): one offset for the batch
    assert_close(attnkit.apply_rotary(x, cos, sin, shared, interleaved=interleaved),
                 ref.apply_rotary(as64(x), as64(cos), as64(sin), shared, interleaved=interleaved), dtype)
    y = x.copy()                                                                # in place, through the view
    attnkit.apply_rotary(y, cos, sin, pos, interleaved=interleaved, out=y)
    assert_close(y, want, dtype)


@dtypes
def test_rope_in_place_on_packed_qkv(isa, dtype, rng):
    """The model's use: q and k are column slices of one QKV projection (B, L, (Hq + 2 Hk) Dh)."""
    B, L, Hq, Hk, Dh = 2, 7, 4, 2, 16
    qkv = rng.standard_normal((B, L, (Hq + 2 * Hk) * Dh)).astype(dtype)
    heads = qkv.reshape(B, L, Hq + 2 * Hk, Dh).transpose(0, 2, 1, 3)          # (B, H, L, Dh) views
    q, k, v = heads[:, :Hq], heads[:, Hq:Hq + Hk], heads[:, Hq + Hk:]
    before = as64(heads).copy()
    cos, sin = rope_tables(Dh, 64, 500000.0, dtype=dtype)
    pos = np.array([np.arange(L) + 3, np.arange(L)])
    attnkit.apply_rotary(q, cos, sin, pos, out=q)
    attnkit.apply_rotary(k, cos, sin, pos, out=k)
    assert_close(q, ref.apply_rotary(before[:, :Hq], as64(cos), as64(sin), pos), dtype)
    assert_close(k, ref.apply_rotary(before[:, Hq:Hq + Hk], as64(cos), as64(sin), pos), dtype)
    np.testing.assert_array_equal(as64(v), before[:, Hq + Hk:])                 # v untouched


def test_rope_errors(isa):
    x = np.ones((1, 2, 3, 8), np.float32)
    cos, sin = rope_tables(8, 10)
    with pytest.raises(ValueError, match="positions"):
        attnkit.apply_rotary(x, cos, sin, [0, 1, 10])
    with pytest.raises(ValueError, match="positions"):
        attnkit.apply_rotary(x, cos, sin, [0, 1])
    with pytest.raises(TypeError, match="positions"):
        attnkit.apply_rotary(x, cos, sin, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="cos"):
        attnkit.apply_rotary(x, *rope_tables(10, 10), [0, 1, 2])
    with pytest.raises(TypeError, match="cos"):
        attnkit.apply_rotary(x, cos.astype(np.float64), sin, [0, 1, 2])
    with pytest.raises(ValueError, match="x"):
        attnkit.apply_rotary(x[0], cos, sin, [0, 1, 2])
    with pytest.raises(ValueError, match="out"):
        attnkit.apply_rotary(x, cos, sin, [0, 1, 2], out=x[..., ::-1])


# ---- SwiGLU -------------------------------------------------------------------------------
SHAPES = [(1, 768, 2048), (2, 5, 7), (3, 37, 41), (8, 64, 96), (13, 64, 33), (64, 100, 65), (65, 129, 31),
          (200, 600, 130)]


@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_swiglu_packed(isa, dtype, shape, rng):
    M, K, F = shape
    x = rng.standard_normal((M, K)).astype(dtype)
    wg = (rng.standard_normal((F, K)) / np.sqrt(K)).astype(dtype)
    wu = (rng.standard_normal((F, K)) / np.sqrt(K)).astype(dtype)
    scale = 1.1 * (np.abs(as64(x)) @ np.abs(as64(wg)).T) * (np.abs(as64(x)) @ np.abs(as64(wu)).T)
    packed = attnkit.pack_swiglu(wg, wu)
    assert packed.gated and packed.shape == (2 * F, K) and packed.isa == isa
    got = attnkit.linear(x, packed)
    assert got.shape == (M, F) and got.dtype == dtype
    assert_close(got, ref.swiglu(as64(x), as64(wg), as64(wu)), dtype, scale=scale)
    np.testing.assert_array_equal(packed.unpack(), np.concatenate([wg, wu]))
    bg, bu = rng.standard_normal(F).astype(dtype), rng.standard_normal(F).astype(dtype)
    with_bias = attnkit.pack_swiglu(wg, wu, bg, bu)
    assert_close(attnkit.linear(x, with_bias), ref.swiglu(as64(x), as64(wg), as64(wu), as64(bg), as64(bu)), dtype,
                 scale=scale + 1.1 * np.abs(as64(bg)) * np.abs(as64(bu)) + 10)


@dtypes
def test_swiglu_batch_dims_out_and_repack(isa, dtype, rng):
    K, F = 48, 40
    x = rng.standard_normal((2, 3, K)).astype(dtype)
    wg, wu = rng.standard_normal((F, K)).astype(dtype), rng.standard_normal((F, K)).astype(dtype)
    want = ref.swiglu(as64(x), as64(wg), as64(wu))
    scale = np.abs(as64(x)) @ np.abs(as64(wg)).T * (np.abs(as64(x)) @ np.abs(as64(wu)).T)
    packed = attnkit.pack_swiglu(wg, wu)
    wide = np.zeros((2, 3, F + 8), dtype)
    attnkit.linear(x, packed, out=wide[..., 4:4 + F])                        # a column slice
    assert_close(wide[..., 4:4 + F], want, dtype, scale=scale)
    for other in attnkit.get_config()["usable_isas"]:                       # repacked from this path's panels
        p = attnkit.pack_swiglu(wg, wu)
        attnkit.set_isa(other)
        try:
            assert_close(attnkit.linear(x, p), want, dtype, scale=scale)
            assert p.isa == other and p.gated
            np.testing.assert_array_equal(p.unpack(), np.concatenate([wg, wu]))
        finally:
            attnkit.set_isa(isa)
    assert_close(attnkit.linear(x.astype(np.float64), packed.astype(np.float64)), want, np.float64,
                 scale=scale)


def test_swiglu_errors(isa):
    w = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="up_weight"):
        attnkit.pack_swiglu(w, np.ones((5, 8), np.float32))
    with pytest.raises(TypeError, match="up_weight"):
        attnkit.pack_swiglu(w, w.astype(np.float64))
    with pytest.raises(ValueError, match="gate_bias"):
        attnkit.pack_swiglu(w, w, np.ones(4, np.float32))
    packed = attnkit.pack_swiglu(w, w)
    with pytest.raises(ValueError, match="activation"):
        attnkit.linear(np.ones((2, 8), np.float32), packed, activation="relu")
    with pytest.raises(ValueError, match="weight"):
        attnkit.linear(np.ones((2, 7), np.float32), packed)


# ---- sliding-window attention -------------------------------------------------------------------
WINDOW_CASES = [  # (B, Hq, Hk, Lq, Lk, E, window, alignment)
    (1, 2, 2, 300, 300, 16, 37, "top_left"),
    (2, 4, 2, 200, 200, 32, 64, "bottom_right"),
    (1, 2, 1, 129, 129, 64, 128, "top_left"),
    (1, 2, 2, 70, 70, 8, 1, "top_left"),
    (2, 4, 1, 5, 300, 16, 50, "bottom_right"),        # a few new queries against a cache
    (1, 8, 2, 1, 1000, 64, 100, "bottom_right"),      # decode: split keys
    (3, 4, 4, 1, 700, 16, 700, "bottom_right"),
    (1, 2, 2, 40, 90, 16, 10, "top_left"),
]


@dtypes
@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: "B{}H{}k{}Lq{}Lk{}E{}w{}-{}".format(*c))
def test_sliding_window(isa, dtype, case, rng):
    B, Hq, Hk, Lq, Lk, E, window, align = case
    q = rng.standard_normal((B, Hq, Lq, E)).astype(dtype)
    k = rng.standard_normal((B, Hk, Lk, E)).astype(dtype)
    v = rng.standard_normal((B, Hk, Lk, E)).astype(dtype)
    kw = dict(is_causal=True, enable_gqa=Hq != Hk, causal_alignment=align, window=window)
    got, lse = attnkit.scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
    want, lse_ref = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), return_lse=True, **kw)
    assert_close(got, want, dtype)
    assert_close(lse, lse_ref, dtype)
    lengths = rng.integers(max(Lq, 1), Lk + 1, B)                            # ragged cache lengths
    got = attnkit.scaled_dot_product_attention(q, k, v, kv_lengths=lengths, **kw)
    assert_close(got, ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), kv_lengths=lengths, **kw), dtype)


@dtypes
@pytest.mark.parametrize("Lq,Lk,window", [(1, 2000, 100), (128, 1000, 64), (4, 1500, 300)])
def test_sliding_window_never_reads_keys_before_the_band(isa, dtype, Lq, Lk, window, rng):
    """Keys before every query's band hold NaN: were their tiles visited, 0 * NaN would reach the
    output. The result must equal the oracle on clean keys."""
    q = rng.standard_normal((1, 2, Lq, 16)).astype(dtype)
    k = rng.standard_normal((1, 2, Lk, 16)).astype(dtype)
    v = rng.standard_normal((1, 2, Lk, 16)).astype(dtype)
    first = Lk - Lq - window + 1                                             # bottom-right: the first query's band
    want = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), is_causal=True,
                                            causal_alignment="bottom_right", window=window)
    k[:, :, :first] = np.nan
    v[:, :, :first] = np.nan
    got = attnkit.scaled_dot_product_attention(q, k, v, is_causal=True, causal_alignment="bottom_right", window=window)
    assert np.isfinite(got).all()
    assert_close(got, want, dtype)


def test_sliding_window_with_mask(isa, rng):
    q, k, v = (rng.standard_normal((2, 2, 50, 8)) for _ in range(3))
    mask = rng.random((2, 1, 50, 50)) < 0.8
    kw = dict(is_causal=True, window=9, attn_mask=mask)
    assert_close(attnkit.scaled_dot_product_attention(q, k, v, **kw), ref.scaled_dot_product_attention(q, k, v, **kw),
                 np.float64)


def test_sliding_window_errors(isa):
    q = np.ones((1, 1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="window"):
        attnkit.scaled_dot_product_attention(q, q, q, window=2)
    with pytest.raises(ValueError, match="window"):
        attnkit.scaled_dot_product_attention(q, q, q, is_causal=True, window=0)
    with pytest.raises(TypeError, match="window"):
        attnkit.scaled_dot_product_attention(q, q, q, is_causal=True, window=2.5)
    with pytest.raises(TypeError, match="window"):
        attnkit.scaled_dot_product_attention(q, q, q, is_causal=True, window=True)
