"""attnkit.scaled_dot_product_attention against the float64 oracle, once per backend (conftest.BACKENDS).

float32 results are compared with the oracle run in float64 on the same float32-valued inputs.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, strategies as st

import attnkit
from conftest import (known_gap, DTYPES, WIDTH_SIZES, as64, assert_close, dtype_name, dtypes, laid_out, load_reference,
                      relative_error, tolerance)

ref = load_reference()
sdpa = attnkit.scaled_dot_product_attention


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def randn(rng, shape, dtype, layout="contiguous"):
    """Standard-normal array of ``shape`` (..., H, L, E) in ``dtype``, laid out as asked (conftest.laid_out)."""
    return laid_out(rng.standard_normal(tuple(shape)).astype(dtype), layout)


def make_qkv(rng, batch, Hq, Hk, Lq, Lk, E, Ev=None, dtype=np.float64, layouts=("contiguous",) * 3):
    Ev = E if Ev is None else Ev
    q = randn(rng, (*batch, Hq, Lq, E), dtype, layouts[0])
    k = randn(rng, (*batch, Hk, Lk, E), dtype, layouts[1])
    v = randn(rng, (*batch, Hk, Lk, Ev), dtype, layouts[2])
    return q, k, v


def check_sdpa(backend, q, k, v, **kw):
    """Run the kernel on the backend and the float64 oracle; check dtype, shape, values, lse, and
    (backend.call) that no input was written to. Returns the kernel's (out, lse) (lse None unless
    return_lse)."""
    dtype = q.dtype
    res = backend.call(sdpa, q, k, v, **kw)
    kw64 = dict(kw, attn_mask=as64(kw.get("attn_mask")), out=None)
    want = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), **kw64)
    out, lse = (res if kw.get("return_lse") else (res, None))
    want_out, want_lse = (want if kw.get("return_lse") else (want, None))
    assert isinstance(out, np.ndarray) and out.dtype == dtype, f"out dtype {out.dtype}, want {np.dtype(dtype)}"
    assert_close(out, want_out, dtype)
    if lse is not None:
        assert isinstance(lse, np.ndarray) and lse.dtype == dtype, f"lse dtype {lse.dtype}"
        assert_close(lse, want_lse, dtype, what="lse")
    return out, lse


def bool_keep(rng, shape, p=0.7):
    return np.asarray(rng.random(shape) < p)         # an array even for shape ()


# --------------------------------------------------------------------------------------------
# Generated cases
# --------------------------------------------------------------------------------------------
HEAD_DIMS = [1, 3, 17, 64, 80, 96, 128, 256]
LENGTHS = st.one_of(st.integers(1, 9), st.sampled_from([15, 16, 17, 31, 33, 64, 65, 100, 129]))
LAYOUTS = ["contiguous", "interleaved", "strided", "rows_reversed", "fortran"]


@st.composite
def sdpa_cases(draw):
    nb = draw(st.integers(0, 2))
    batch = tuple(draw(st.integers(1, 2)) for _ in range(nb))
    Hk = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 1, 2, 3, 4]))
    Lq, Lk = draw(LENGTHS), draw(LENGTHS)
    E = draw(st.sampled_from(HEAD_DIMS))
    Ev = draw(st.one_of(st.just(E), st.sampled_from([1, 5, 16, 64, 80])))
    layouts = tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3))
    mask_kind = draw(st.sampled_from(["none", "bool", "float", "float_inf"]))
    # which axes of (..., Hq, Lq, Lk) the mask spans (others are 1) and how many leading axes it drops
    full = batch + (Hk * group, Lq, Lk)
    mask_ndim = draw(st.integers(0, len(full)))
    mask_shape = tuple(n if draw(st.booleans()) else 1 for n in full[len(full) - mask_ndim:])
    mask_layout = draw(st.sampled_from(["contiguous", "broadcast_view", "column_major"]))
    is_causal = draw(st.booleans())
    align = draw(st.sampled_from(["top_left", "bottom_right"]))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, Lk), min_size=1, max_size=1)))
    scale = draw(st.one_of(st.none(), st.floats(0.1, 2.0)))
    return_lse = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(batch=batch, Hk=Hk, group=group, Lq=Lq, Lk=Lk, E=E, Ev=Ev, layouts=layouts,
                mask_kind=mask_kind, mask_shape=mask_shape, mask_layout=mask_layout, is_causal=is_causal,
                align=align, lengths=lengths, scale=scale, return_lse=return_lse, seed=seed)


def build_case(c, dtype):
    rng = np.random.default_rng(c["seed"])
    batch, Hk, group = c["batch"], c["Hk"], c["group"]
    q, k, v = make_qkv(rng, batch, Hk * group, Hk, c["Lq"], c["Lk"], c["E"], c["Ev"], dtype, c["layouts"])
    full = batch + (Hk * group, c["Lq"], c["Lk"])
    mask = None
    if c["mask_kind"] != "none":
        shape = c["mask_shape"]
        if c["mask_kind"] == "bool":
            mask = bool_keep(rng, shape)
        else:
            mask = rng.standard_normal(shape).astype(dtype)
            if c["mask_kind"] == "float_inf":
                mask[rng.random(shape) < 0.3] = -np.inf
        if c["mask_layout"] == "broadcast_view":     # zero strides, read-only
            mask = np.broadcast_to(mask, full)
        elif c["mask_layout"] == "column_major" and mask.ndim >= 2:
            mask = laid_out(mask, "column_major")
    kv_lengths = None
    if c["lengths"] is not None:
        kv_lengths = rng.integers(0, c["Lk"] + 1, size=batch)
        if batch:
            kv_lengths.flat[0] = c["lengths"][0]
        else:
            kv_lengths = c["lengths"][0]              # a plain int when there are no batch dims
    kw = dict(attn_mask=mask, is_causal=c["is_causal"], scale=None if c["scale"] is None
              else c["scale"] / math.sqrt(c["E"]), enable_gqa=c["group"] > 1,
              causal_alignment=c["align"], kv_lengths=kv_lengths, return_lse=c["return_lse"])
    return q, k, v, kw


@dtypes
@given(case=sdpa_cases())
def test_generated_cases(backend, dtype, case):
    q, k, v, kw = build_case(case, dtype)
    check_sdpa(backend, q, k, v, **kw)


# --------------------------------------------------------------------------------------------
# Sizes below, at, above and at multiples of the vector widths (4, 8, 16, 32, 64) and tiles.
# --------------------------------------------------------------------------------------------


@dtypes
@pytest.mark.parametrize("size", WIDTH_SIZES, ids=lambda n: f"n={n}")
@pytest.mark.parametrize("dim", ["Lq", "Lk", "E", "Ev"])
def test_sizes_around_vector_widths(backend, dtype, dim, size, rng):
    dims = dict(Lq=7, Lk=19, E=16, Ev=24)
    dims[dim] = size
    q, k, v = make_qkv(rng, (2,), 2, 2, dims["Lq"], dims["Lk"], dims["E"], dims["Ev"], dtype)
    check_sdpa(backend, q, k, v, return_lse=True)
    check_sdpa(backend, q, k, v, is_causal=True, causal_alignment="bottom_right")


@dtypes
@pytest.mark.parametrize("E", HEAD_DIMS, ids=lambda n: f"E={n}")
def test_head_dims(backend, dtype, E, rng):
    q, k, v = make_qkv(rng, (1,), 2, 2, 70, 133, E, dtype=dtype)
    check_sdpa(backend, q, k, v, return_lse=True)
    check_sdpa(backend, q, k, v, is_causal=True)


@dtypes
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("Lq,Lk", [(300, 300), (300, 517), (517, 300)], ids=["300x300", "300x517", "517x300"])
def test_long_sequences_cross_tiles(backend, dtype, Lq, Lk, causal, align, rng):
    q, k, v = make_qkv(rng, (), 2, 1, Lq, Lk, 64, dtype=dtype)
    check_sdpa(backend, q, k, v, is_causal=causal, causal_alignment=align, enable_gqa=True, return_lse=True)


@dtypes
@pytest.mark.parametrize("Lk", [1000, 1031, 4099], ids=lambda n: f"Lk={n}")
def test_decode_one_query_long_cache(backend, dtype, Lk, rng):
    B, Hq, Hk, E = 4, 8, 2, 64
    q, k, v = make_qkv(rng, (B,), Hq, Hk, 1, Lk, E, dtype=dtype)
    lengths = np.array([Lk, 0, 1, Lk // 2 + 3])
    check_sdpa(backend, q, k, v, enable_gqa=True, return_lse=True)
    out, lse = check_sdpa(backend, q, k, v, enable_gqa=True, is_causal=True, causal_alignment="bottom_right",
                          kv_lengths=lengths, return_lse=True)
    assert np.all(out[1] == 0) and np.all(lse[1] == -np.inf)


@dtypes
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("Lq,Lk", [(1, 1), (1, 9), (9, 1), (5, 13), (13, 5), (64, 37), (37, 64), (70, 200),
                                   (200, 70)], ids=lambda t: str(t))
def test_causal_lq_vs_lk(backend, dtype, Lq, Lk, align, rng):
    q, k, v = make_qkv(rng, (2,), 3, 3, Lq, Lk, 32, dtype=dtype)
    out, lse = check_sdpa(backend, q, k, v, is_causal=True, causal_alignment=align, return_lse=True)
    # the same visibility written as an explicit boolean mask
    diagonal = 0 if align == "top_left" else Lk - Lq
    tri = np.tril(np.ones((Lq, Lk), dtype=bool), k=diagonal)
    assert_close(backend.call(sdpa, q, k, v, attn_mask=tri), as64(out), dtype)
    empty = ~tri.any(axis=1)                        # bottom_right with Lq > Lk: the first rows see nothing
    assert np.all(out[..., empty, :] == 0) and np.all(lse[..., empty] == -np.inf)


@dtypes
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_causal_with_kv_lengths_and_mask(backend, dtype, align, rng):
    q, k, v = make_qkv(rng, (3,), 4, 2, 20, 45, 16, dtype=dtype)
    mask = bool_keep(rng, (3, 1, 20, 45), 0.8)
    check_sdpa(backend, q, k, v, attn_mask=mask, is_causal=True, causal_alignment=align,
               kv_lengths=np.array([45, 7, 30]), enable_gqa=True, return_lse=True)


# --------------------------------------------------------------------------------------------
# Masks: every kind and broadcast pattern; fully masked rows.
# --------------------------------------------------------------------------------------------
MASK_SHAPES = {
    "full": (2, 3, 6, 40), "per_head": (1, 3, 6, 40), "per_batch": (2, 1, 6, 40), "per_row": (6, 40),
    "key_padding": (2, 1, 1, 40), "keys_only": (40,), "column": (6, 1), "scalar": (),
}


@dtypes
@pytest.mark.parametrize("kind", ["bool", "float", "float_inf"])
@pytest.mark.parametrize("pattern", list(MASK_SHAPES))
def test_mask_kinds_and_broadcasts(backend, dtype, kind, pattern, rng):
    q, k, v = make_qkv(rng, (2,), 3, 3, 6, 40, 8, dtype=dtype)
    shape = MASK_SHAPES[pattern]
    if kind == "bool":
        mask = bool_keep(rng, shape, 0.6)
    else:
        mask = rng.standard_normal(shape).astype(dtype)
        if kind == "float_inf":
            mask[rng.random(shape) < 0.4] = -np.inf
    check_sdpa(backend, q, k, v, attn_mask=mask, return_lse=True)
    check_sdpa(backend, q, k, v, attn_mask=np.broadcast_to(mask, (2, 3, 6, 40)), is_causal=True)


@dtypes
def test_fully_masked_rows_give_zeros_and_lse_minus_inf(backend, dtype, rng):
    q, k, v = make_qkv(rng, (2,), 2, 2, 9, 70, 16, dtype=dtype)
    keep = bool_keep(rng, (2, 2, 9, 70))
    keep[0, 1, 3] = False
    keep[1, :, 8] = False
    add = np.where(keep, 0, -np.inf).astype(dtype)
    for mask in (keep, add):
        out, lse = check_sdpa(backend, q, k, v, attn_mask=mask, return_lse=True)
        assert not np.isnan(out).any() and not np.isnan(lse).any()
        assert np.all(out[0, 1, 3] == 0) and lse[0, 1, 3] == -np.inf
        assert np.all(out[1, :, 8] == 0) and np.all(lse[1, :, 8] == -np.inf)
        assert np.isfinite(lse[0, 0]).all()
    # a mask that hides everything
    out, lse = backend.call(sdpa, q, k, v, attn_mask=np.zeros((), dtype=bool), return_lse=True)
    assert np.all(out == 0) and np.all(lse == -np.inf)


@dtypes
def test_a_row_masked_with_the_lowest_float_averages_the_values(backend, dtype, rng):
    # HF-style "masked" is finfo.min added, not -inf: a row masked that way everywhere sees every key
    # equally (the logits all round to finfo.min), so its output is the mean of the values.
    q, k, v = make_qkv(rng, (1,), 2, 2, 4, 4, 8, dtype=dtype)
    mask = np.zeros((4, 4), dtype)
    mask[1] = np.finfo(dtype).min
    mask[2, :2] = np.finfo(dtype).min
    out, _ = check_sdpa(backend, q, k, v, attn_mask=mask)
    assert_close(out[0, :, 1], as64(v[0]).mean(axis=1), dtype, what="row 1")


@dtypes
@pytest.mark.parametrize("Lq,Lk", [(1, 2), (3, 70), (1, 1000), (130, 300)], ids=["1x2", "3x70", "decode-split", "blocks"])
def test_huge_negative_mask_values_stay_distinct(backend, dtype, Lq, Lk, rng, request):
    known_gap(request, backend, "cuda", "the CUDA kernels still scale float masks by log2 e (measured on an H100)")
    # every finite float-mask value is added as given: distinct values near finfo.min must not
    # collapse into one (weights [1, 0], not [0.5, 0.5]), and ties at finfo.min average
    fmax = np.finfo(dtype).max
    q, k, v = make_qkv(rng, (1,), 2, 2, Lq, Lk, 16, dtype=dtype)
    mask = (-fmax * rng.uniform(0.5, 1.0, (2, Lq, Lk))).astype(dtype)     # distinct huge negatives
    mask[:, ::3, ::2] = -fmax                                             # ties at finfo.min
    mask[1, ::2] = rng.standard_normal((len(range(0, Lq, 2)), Lk)).astype(dtype)   # ordinary rows
    out, lse = check_sdpa(backend, q, k, v, attn_mask=mask, return_lse=True)
    # the example, against the exact answer
    two = np.array([[-2.5e38, -3.0e38]] if dtype == np.float32 else [[-1.3e308, -1.5e308]], dtype)
    qq, kk, vv = make_qkv(rng, (1,), 1, 1, 1, 2, 4, dtype=dtype)
    got = backend.call(sdpa, qq, kk, vv, attn_mask=two)
    assert_close(got[0, 0, 0], as64(vv[0, 0, 0]), dtype, what="[1, 0] weights")


@dtypes
def test_lse_of_a_row_masked_with_the_lowest_float(backend, dtype, rng, request):
    known_gap(request, backend, "cuda", "the CUDA kernels still scale float masks by log2 e (measured on an H100)")
    # lse = finfo.min + log(Lk) (+ the scores, lost below finfo.min's ulp): -3.40e38, not -2.36e38
    lo = np.finfo(dtype).min
    q, k, v = make_qkv(rng, (1,), 1, 1, 3, 40, 8, dtype=dtype)
    mask = np.zeros((3, 40), dtype)
    mask[1] = lo
    out, lse = check_sdpa(backend, q, k, v, attn_mask=mask, return_lse=True)
    assert lse[0, 0, 1] == pytest.approx(float(lo) + math.log(40), rel=1e-6)
    try:
        import torch
    except ImportError:
        return
    if True:
        t = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)),
                                                             attn_mask=torch.from_numpy(mask))
        assert_close(out, t.numpy().astype(np.float64), dtype, against="torch")


# --------------------------------------------------------------------------------------------
# kv_lengths
# --------------------------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("form", ["int64", "int32", "uint8", "list_free"])
def test_kv_lengths_forms(backend, dtype, form, rng):
    q, k, v = make_qkv(rng, (4,), 2, 2, 3, 50, 8, dtype=dtype)
    lengths = np.array([50, 0, 17, 1])
    if form == "list_free":                           # no batch dims: a plain int, then a 0-d array
        q1, k1, v1 = q[2], k[2], v[2]
        check_sdpa(backend, q1, k1, v1, kv_lengths=17)
        check_sdpa(backend, q1, k1, v1, kv_lengths=np.array(17), return_lse=True)
        check_sdpa(backend, q1, k1, v1, kv_lengths=0, return_lse=True)
        return
    out, lse = check_sdpa(backend, q, k, v, kv_lengths=lengths.astype(form), return_lse=True)
    assert np.all(out[1] == 0) and np.all(lse[1] == -np.inf)


@dtypes
def test_kv_lengths_all_zero(backend, dtype, rng):
    q, k, v = make_qkv(rng, (2, 3), 2, 1, 5, 33, 16, dtype=dtype)
    out, lse = backend.call(sdpa, q, k, v, enable_gqa=True, kv_lengths=np.zeros((2, 3), dtype=np.int64),
                            return_lse=True, is_causal=True, causal_alignment="bottom_right")
    assert out.shape == (2, 3, 2, 5, 16) and np.all(out == 0) and np.all(lse == -np.inf)


@dtypes
def test_kv_lengths_ignore_cache_padding(backend, dtype, rng):
    # Keys at j >= kv_lengths[b] are masked: whatever the cache holds there (NaN, inf) must not leak.
    q, k, v = make_qkv(rng, (3,), 2, 2, 4, 40, 16, dtype=dtype)
    lengths = np.array([40, 11, 0])
    clean = backend.call(sdpa, q, k, v, kv_lengths=lengths)
    for b, n in enumerate(lengths):
        k[b, :, n:] = np.nan
        v[b, :, n:] = np.inf
    dirty = backend.call(sdpa, q, k, v, kv_lengths=lengths)
    np.testing.assert_array_equal(dirty, clean)


def test_strided_kv_lengths_are_read_through_their_strides(rng):
    # The binding itself (the Python wrapper would make a contiguous copy first): CPU only.
    q, k, v = make_qkv(rng, (2,), 3, 3, 6, 6, 8, dtype=np.float32)
    lengths = np.array([4, 99, 2, 99])[::2]          # a strided view: [4, 2]
    out = attnkit._core.sdpa(q, k, v, None, "none", None, False, lengths, False, None)
    assert_close(out, ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), kv_lengths=[4, 2]), np.float32)


# kv_lengths broadcast over some batch dims (zero strides) and not others: the op keeps one entry per
# distinct length and maps each batch index to it. batch: q's batch shape; held: the shape of the
# lengths actually stored (1 on the broadcast dims); view: how the held array is turned into batch.
KV_BROADCASTS = {
    "rows": ((3, 4), (3, 1), None),                 # (B, 1) -> (B, H'): strides (8, 0)
    "cols": ((3, 4), (1, 4), None),                 # (1, H') -> (B, H'): strides (0, 8)
    "one": ((3, 4), (1, 1), None),                  # every stride 0
    "one_dim": ((5,), (1,), None),
    "middle": ((2, 3, 2), (2, 1, 2), None),         # the zero stride between two held dims
    "outer_three": ((2, 2, 3, 2), (1, 2, 1, 2), None),
    "rows_reversed": ((3, 4), (3, 1), "reversed"),  # a negative stride beside the zero one
    "cols_int32": ((3, 4), (1, 4), "int32"),        # converted on the entries held, then broadcast
    "full_transposed": ((3, 4), (3, 4), "transposed"),  # nothing broadcast, strides not row-major
}


@dtypes
@pytest.mark.parametrize("name", list(KV_BROADCASTS))
def test_kv_lengths_broadcast_over_batch_dims(backend, dtype, name, rng):
    batch, held, view = KV_BROADCASTS[name]
    Lk = 37
    q, k, v = make_qkv(rng, batch, 4, 2, 5, Lk, 16, dtype=dtype)
    lengths = rng.integers(0, Lk + 1, size=held)
    lengths.flat[0] = Lk
    if view == "reversed":
        lengths = np.ascontiguousarray(lengths[::-1])[::-1]
    elif view == "int32":
        lengths = lengths.astype(np.int32)
    elif view == "transposed":
        lengths = np.ascontiguousarray(lengths.T).T
    lengths = np.broadcast_to(lengths, batch)
    for kw in (dict(), dict(is_causal=True, causal_alignment="bottom_right")):
        check_sdpa(backend, q, k, v, kv_lengths=lengths, enable_gqa=True, return_lse=True, **kw)


def test_zero_stride_kv_lengths_at_the_binding(rng):
    # The binding itself, past the Python wrapper: each held entry is read and checked, each batch entry
    # sees its own row's length. CPU only.
    q, k, v = make_qkv(rng, (2, 3), 2, 2, 4, 6, 8, dtype=np.float32)
    held = np.array([5, 2])
    lengths = np.lib.stride_tricks.as_strided(held, shape=(2, 3), strides=(8, 0))
    out = attnkit._core.sdpa(q, k, v, None, "none", None, False, lengths, False, None)
    assert_close(out, ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), kv_lengths=[[5] * 3, [2] * 3]),
                 np.float32)
    for bad in (np.array([5, 7]), np.array([-1, 2])):
        with pytest.raises(ValueError, match="kv_lengths"):
            attnkit._core.sdpa(q, k, v, None, "none", None, False,
                               np.lib.stride_tricks.as_strided(bad, shape=(2, 3), strides=(8, 0)), False, None)


# --------------------------------------------------------------------------------------------
# Layouts: views are read in place and left untouched.
# --------------------------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("layout", LAYOUTS[1:] + ["mixed", "broadcast_kv", "readonly"])
def test_non_contiguous_views(backend, dtype, layout, rng):
    B, H, L, E = 2, 4, 37, 24
    if layout == "mixed":
        q, k, v = make_qkv(rng, (B,), H, H, L, L + 5, E, dtype=dtype,
                           layouts=("interleaved", "strided", "rows_reversed"))
    elif layout == "broadcast_kv":                    # one KV head repeated by a zero stride
        q = randn(rng, (B, H, L, E), dtype)
        k = np.broadcast_to(randn(rng, (B, 1, L, E), dtype), (B, H, L, E))
        v = np.broadcast_to(randn(rng, (B, 1, L, E), dtype), (B, H, L, E))
    elif layout == "readonly":
        q, k, v = make_qkv(rng, (B,), H, H, L, L, E, dtype=dtype)
        for a in (q, k, v):
            a.flags.writeable = False
    else:
        q, k, v = make_qkv(rng, (B,), H, H, L, L + 5, E, dtype=dtype, layouts=(layout,) * 3)
    check_sdpa(backend, q, k, v, return_lse=True)
    check_sdpa(backend, q, k, v, is_causal=True, attn_mask=bool_keep(rng, (L, k.shape[-2])))


@dtypes
def test_packed_qkv_from_one_projection(backend, dtype, rng):
    # The typical layout after a packed QKV projection: (B, L, 3, H, E) viewed per tensor as (B, H, L, E).
    B, L, H, E = 2, 45, 4, 32
    qkv = rng.standard_normal((B, L, 3, H, E)).astype(dtype)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (B, H, L, E), strided
    check_sdpa(backend, q, k, v, is_causal=True, return_lse=True)


# --------------------------------------------------------------------------------------------
# out= and return_lse; dtypes
# --------------------------------------------------------------------------------------------
@dtypes
def test_out_is_filled_and_returned(backend, dtype, rng):
    q, k, v = make_qkv(rng, (2,), 3, 3, 10, 21, 8, 12, dtype=dtype)
    qkv = [backend.to_device(a) for a in (q, k, v)]
    out = backend.to_device(np.full((2, 3, 10, 12), 7.0, dtype=dtype))
    res = sdpa(*qkv, out=out)
    assert res is out
    assert_close(backend.to_numpy(out), ref.scaled_dot_product_attention(as64(q), as64(k), as64(v)), dtype)
    out2 = backend.to_device(np.full((2, 3, 10, 12), np.nan, dtype=dtype))
    res, lse = sdpa(*qkv, is_causal=True, out=out2, return_lse=True)
    assert res is out2
    want, want_lse = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), is_causal=True,
                                                      return_lse=True)
    assert_close(backend.to_numpy(out2), want, dtype)
    assert_close(backend.to_numpy(lse), want_lse, dtype, what="lse")


@dtypes
def test_out_strided_view(backend, dtype, rng):
    # Writing straight into the merged-heads layout (B, L, H, Ev) through a transposed view:
    # either it is filled correctly, or it is refused with an error naming "out" and left untouched.
    q, k, v = make_qkv(rng, (2,), 3, 3, 10, 21, 8, dtype=dtype)
    merged = backend.to_device(np.full((2, 10, 3, 8), 5.0, dtype=dtype))
    view = merged.swapaxes(1, 2)
    try:
        res = sdpa(*(backend.to_device(a) for a in (q, k, v)), out=view)
    except (ValueError, TypeError) as e:
        assert "out" in str(e)
        assert np.all(backend.to_numpy(merged) == 5.0)
        return
    assert res is view
    assert_close(backend.to_numpy(view), ref.scaled_dot_product_attention(as64(q), as64(k), as64(v)), dtype)


@dtypes
def test_result_dtypes(backend, dtype, rng):
    q, k, v = make_qkv(rng, (1,), 1, 1, 3, 5, 4, dtype=dtype)
    out, lse = backend.call(sdpa, q, k, v, return_lse=True)
    assert out.dtype == dtype and lse.dtype == dtype
    assert out.shape == (1, 1, 3, 4) and lse.shape == (1, 1, 3)
    assert backend.call(sdpa, q, k, v, attn_mask=np.zeros((3, 5), dtype=dtype)).dtype == dtype


# --------------------------------------------------------------------------------------------
# One named test per mechanism
# --------------------------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_causal_later_keys_do_not_change_earlier_outputs(backend, dtype, align, rng):
    B, H, L, E = 2, 3, 150, 32
    q, k, v = make_qkv(rng, (B,), H, H, L, L, E, dtype=dtype)
    before = backend.call(sdpa, q, k, v, is_causal=True, causal_alignment=align)
    t = 67                                           # change keys and values from position t on
    k2, v2 = k.copy(), v.copy()
    k2[..., t:, :] = randn(rng, k2[..., t:, :].shape, dtype)
    v2[..., t:, :] = randn(rng, v2[..., t:, :].shape, dtype)
    after = backend.call(sdpa, q, k2, v2, is_causal=True, causal_alignment=align)
    np.testing.assert_array_equal(after[..., :t, :], before[..., :t, :])   # rows i < t never see j >= t
    assert not np.allclose(after[..., t:, :], before[..., t:, :])          # later rows do


@dtypes
def test_cross_output_follows_query_length(backend, dtype, rng):
    B, H, E, Lk = 2, 4, 16, 23
    _, k, v = make_qkv(rng, (B,), H, H, 1, Lk, E, dtype=dtype)
    for Lq in (1, 5, 64, 101):
        q = randn(rng, (B, H, Lq, E), dtype)
        out = backend.call(sdpa, q, k, v)
        assert out.shape == (B, H, Lq, E)            # one output row per query, keys from the memory
        assert_close(out, ref.scaled_dot_product_attention(as64(q), as64(k), as64(v)), dtype)
        # each output row is a convex combination of the memory's value rows (up to rounding)
        assert np.all(out <= v.max(axis=-2, keepdims=True) + tolerance(dtype))
        assert np.all(out >= v.min(axis=-2, keepdims=True) - tolerance(dtype))
        # the memory is a set: reordering (key, value) pairs together changes nothing
        perm = rng.permutation(Lk)
        assert_close(backend.call(sdpa, q, k[..., perm, :], v[..., perm, :]), as64(out), dtype)


@dtypes
def test_self_attention_permutation_equivariant(backend, dtype, rng):
    B, H, L, E = 2, 3, 77, 32
    x = randn(rng, (B, H, L, E), dtype)
    out = backend.call(sdpa, x, x, x)
    perm = rng.permutation(L)
    xp = x[..., perm, :]
    assert_close(backend.call(sdpa, xp, xp, xp), as64(out)[..., perm, :], dtype)


# --------------------------------------------------------------------------------------------
# PyTorch (skipped cleanly where it is not installed)
# --------------------------------------------------------------------------------------------
TORCH_CASES = {
    "plain": dict(), "bool_mask": dict(mask="bool"), "float_mask": dict(mask="float"),
    "causal": dict(is_causal=True), "causal_rect": dict(is_causal=True, Lk=90),
    "scale": dict(scale=0.3), "gqa": dict(Hk=2), "decode": dict(Lq=1, Lk=777),
    "head_dim_80": dict(E=80), "batch_dims": dict(batch=(2, 2)),
}


@dtypes
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(backend, dtype, name, rng):
    torch = pytest.importorskip("torch")
    c = dict(batch=(2,), Hq=4, Hk=4, Lq=33, Lk=33, E=64, mask=None, is_causal=False, scale=None)
    c.update(TORCH_CASES[name])
    q, k, v = make_qkv(rng, c["batch"], c["Hq"], c["Hk"], c["Lq"], c["Lk"], c["E"], dtype=dtype)
    mask = None
    if c["mask"] == "bool":
        mask = bool_keep(rng, (c["Lq"], c["Lk"]))
        mask[:, 0] = True                            # torch returns NaN for rows that see nothing
    elif c["mask"] == "float":
        mask = rng.standard_normal((c["Lq"], c["Lk"])).astype(dtype)
    gqa = c["Hq"] != c["Hk"]
    got = backend.call(sdpa, q, k, v, attn_mask=mask, is_causal=c["is_causal"], scale=c["scale"],
                       enable_gqa=gqa)
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(as64(a)))
    want = torch.nn.functional.scaled_dot_product_attention(
        t(q), t(k), t(v), attn_mask=t(mask), is_causal=c["is_causal"], scale=c["scale"],
        enable_gqa=gqa).numpy()
    assert_close(got, want, dtype)


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    n = attnkit.get_num_threads()
    yield
    attnkit.set_num_threads(n)


@dtypes
def test_one_and_two_threads_agree(backend, dtype, rng, restore_threads):
    q, k, v = make_qkv(rng, (3,), 4, 2, 130, 260, 64, dtype=dtype)
    results = {}
    for n in (1, 2):
        attnkit.set_num_threads(n)
        assert attnkit.get_num_threads() == n
        assert attnkit.get_config()["num_threads"] == n
        results[n] = backend.call(sdpa, q, k, v, enable_gqa=True, is_causal=True, return_lse=True)
        decode = backend.call(sdpa, q[..., :1, :], k, v, enable_gqa=True, kv_lengths=np.array([260, 100, 3]))
        results[n] += (decode,)
    want = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), enable_gqa=True, is_causal=True)
    for n in (1, 2):
        assert_close(results[n][0], want, dtype)
    for a, b in zip(results[1], results[2]):
        assert_close(a, as64(b), dtype)


def test_pool_resized_while_kernels_run(rng, restore_threads):
    q, k, v = make_qkv(rng, (2,), 4, 4, 200, 200, 32, dtype=np.float32)
    want = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v))
    errors, stop = [], threading.Event()

    def resize():
        n = 1
        while not stop.is_set():
            attnkit.set_num_threads(n % 4 + 1)
            n += 1

    def work():
        try:
            for _ in range(30):
                err = relative_error(sdpa(q, k, v), want)
                if err > tolerance(np.float32):
                    errors.append(err)
        except Exception as e:  # reported below
            errors.append(e)

    resizer = threading.Thread(target=resize)
    workers = [threading.Thread(target=work) for _ in range(3)]
    resizer.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    resizer.join()
    assert not errors


def test_concurrent_python_threads(backend, rng):
    cases = []
    mixed = [d for d in DTYPES if dtype_name(d) in backend.dtypes]      # dtypes alternate between calls
    for i in range(8):
        dtype = mixed[i % len(mixed)]
        q, k, v = make_qkv(rng, (2,), 2, 2, 20 + 13 * i, 31 + 7 * i, [16, 64, 17, 80][i % 4], dtype=dtype)
        causal = bool(i % 3)
        want = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), is_causal=causal)
        cases.append((q, k, v, causal, want))
    results = [None] * len(cases)
    errors = []
    barrier = threading.Barrier(4)

    def worker(w):
        try:
            barrier.wait()
            for _ in range(3):
                for i in range(w, len(cases), 4):
                    q, k, v, causal, _ = cases[i]
                    results[i] = backend.call(sdpa, q, k, v, is_causal=causal)
        except Exception as e:  # reported below, with the worker's number
            errors.append((w, e))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for (q, _, _, _, want), got in zip(cases, results):
        assert_close(got, want, q.dtype)
