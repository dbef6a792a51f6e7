"""Bad input gives a TypeError or ValueError naming the argument, never a crash; zero-length
dimensions give empty results; NaN stays where it belongs; thread settings are checked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import attnkit
from conftest import as64, assert_close, dtypes, load_reference

ref = load_reference()
sdpa = attnkit.scaled_dot_product_attention
F32, F64 = np.float32, np.float64


def qkv(B=2, Hq=2, Hk=2, Lq=5, Lk=7, E=8, Ev=None, dtype=F32, batch=None, rng=None):
    """Random q, k, v: from the test's rng where there is one (the bad-argument tables, built at
    collection, draw from a generator seeded by the shape)."""
    batch = (B,) if batch is None else batch
    rng = np.random.default_rng(len(batch) * 1000 + Hq * 100 + Lq * 10 + Lk) if rng is None else rng
    Ev = E if Ev is None else Ev
    return (rng.standard_normal((*batch, Hq, Lq, E)).astype(dtype),
            rng.standard_normal((*batch, Hk, Lk, E)).astype(dtype),
            rng.standard_normal((*batch, Hk, Lk, Ev)).astype(dtype))


# --------------------------------------------------------------------------------------------
# scaled_dot_product_attention: bad arguments
# --------------------------------------------------------------------------------------------
def _bad_sdpa_cases():
    q, k, v = qkv()
    q3, k3, v3 = q[0], k[0], v[0]
    i = lambda a: a.astype(np.int32)
    c = lambda a: a.astype(np.complex64)
    o = lambda a: a.astype(object)
    yield "query_2d", (q[0, 0], k[0, 0], v[0, 0]), {}, ValueError, "query"
    yield "query_1d", (q[0, 0, 0], k, v), {}, ValueError, "query"
    yield "query_0d", (np.array(1.0, F32), k, v), {}, ValueError, "query"
    yield "too_many_batch_dims", tuple(a.reshape((1,) * 5 + a.shape[1:]) for a in (q[:1], k[:1], v[:1])), {}, \
        ValueError, "query"
    yield "key_ndim", (q, k3, v), {}, ValueError, "key"
    yield "value_ndim", (q, k, v3), {}, ValueError, "value"
    yield "batch_mismatch", (q, k[:1], v[:1]), {}, ValueError, "key"
    yield "value_batch_mismatch", (q, k, v[:1]), {}, ValueError, "value"
    yield "head_dim_mismatch", (q, k[..., :5], v), {}, ValueError, "key"
    yield "value_length_mismatch", (q, k, v[..., :6, :]), {}, ValueError, "value"
    yield "value_heads_mismatch", (q, k, v[:, :1]), {}, ValueError, "value"
    yield "gqa_not_multiple", qkv(Hq=6, Hk=4), {"enable_gqa": True}, ValueError, "key|enable_gqa|head"
    yield "heads_differ_without_gqa", qkv(Hq=4, Hk=2), {}, ValueError, "key|enable_gqa|head"
    yield "fewer_query_heads", qkv(Hq=2, Hk=4), {"enable_gqa": True}, ValueError, "key|enable_gqa|head"
    yield "mixed_key_dtype", (q, k.astype(F64), v), {}, TypeError, "key"
    yield "mixed_value_dtype", (q, k, v.astype(F64)), {}, TypeError, "value"
    yield "mixed_query_dtype", (q.astype(F64), k, v), {}, TypeError, "key|query"
    yield "int_query", (i(q), i(k), i(v)), {}, TypeError, "query"
    yield "int_key", (q, i(k), v), {}, TypeError, "key"
    yield "complex_query", (c(q), c(k), c(v)), {}, TypeError, "query"
    yield "object_value", (q, k, o(v)), {}, TypeError, "value"
    yield "int32_query", (q.astype(np.int32), k.astype(np.int32), v.astype(np.int32)), {}, TypeError, "query"   # (float16 is computed since issue 10)
    yield "bool_query", (q > 0, k > 0, v > 0), {}, TypeError, "query"
    yield "list_query", (q.tolist(), k, v), {}, TypeError, "query"
    yield "none_key", (q, None, v), {}, TypeError, "key"
    yield "mask_float64_for_f32", (q, k, v), {"attn_mask": np.zeros((5, 7), F64)}, TypeError, "attn_mask"
    yield "mask_int", (q, k, v), {"attn_mask": np.ones((5, 7), np.int8)}, TypeError, "attn_mask"
    yield "mask_complex", (q, k, v), {"attn_mask": np.ones((5, 7), np.complex64)}, TypeError, "attn_mask"
    yield "mask_list", (q, k, v), {"attn_mask": [[True] * 7] * 5}, TypeError, "attn_mask"
    yield "mask_wrong_keys", (q, k, v), {"attn_mask": np.ones((5, 8), bool)}, ValueError, "attn_mask"
    yield "mask_wrong_queries", (q, k, v), {"attn_mask": np.ones((4, 7), bool)}, ValueError, "attn_mask"
    yield "mask_wrong_batch", (q, k, v), {"attn_mask": np.ones((3, 1, 5, 7), bool)}, ValueError, "attn_mask"
    yield "mask_too_many_dims", (q, k, v), {"attn_mask": np.ones((1, 2, 2, 5, 7), bool)}, ValueError, "attn_mask"
    for name, s in [("zero", 0.0), ("negative", -0.5), ("nan", float("nan")), ("inf", float("inf")),
                    ("minus_inf", float("-inf"))]:
        yield f"scale_{name}", (q, k, v), {"scale": s}, ValueError, "scale"
    yield "scale_string", (q, k, v), {"scale": "big"}, TypeError, "scale"
    yield "alignment", (q, k, v), {"is_causal": True, "causal_alignment": "middle"}, ValueError, "causal_alignment"
    yield "kv_lengths_negative", (q, k, v), {"kv_lengths": np.array([3, -1])}, ValueError, "kv_lengths"
    yield "kv_lengths_too_long", (q, k, v), {"kv_lengths": np.array([8, 2])}, ValueError, "kv_lengths"
    yield "kv_lengths_shape", (q, k, v), {"kv_lengths": np.array([3, 2, 1])}, ValueError, "kv_lengths"
    yield "kv_lengths_2d", (q, k, v), {"kv_lengths": np.array([[3, 2]])}, ValueError, "kv_lengths"
    yield "kv_lengths_float", (q, k, v), {"kv_lengths": np.array([3.0, 2.0])}, (TypeError, ValueError), "kv_lengths"
    yield "kv_lengths_unbatched_shape", (q3, k3, v3), {"kv_lengths": np.array([3, 3])}, ValueError, "kv_lengths"
    yield "kv_lengths_unbatched_too_long", (q3, k3, v3), {"kv_lengths": 8}, ValueError, "kv_lengths"
    yield "kv_lengths_huge_unsigned", (q, k, v), {"kv_lengths": np.array([2**64 - 1, 1], np.uint64)}, \
        ValueError, "kv_lengths"
    # zero strides: the one entry held is checked (the op copies and checks only the distinct entries)
    yield "kv_lengths_broadcast_negative", (q, k, v), {"kv_lengths": np.broadcast_to(np.array([-1]), (2,))}, \
        ValueError, "kv_lengths"
    yield "kv_lengths_broadcast_too_long", (q, k, v), {"kv_lengths": np.broadcast_to(np.int32(8), (2,))}, \
        ValueError, "kv_lengths"
    yield "kv_lengths_broadcast_shape", (q, k, v), {"kv_lengths": np.broadcast_to(np.array([3]), (3,))}, \
        ValueError, "kv_lengths"
    yield "kv_lengths_broadcast_huge_unsigned", (q, k, v), \
        {"kv_lengths": np.broadcast_to(np.array([2**64 - 1], np.uint64), (2,))}, ValueError, "kv_lengths"


BAD_SDPA = list(_bad_sdpa_cases())


@pytest.mark.parametrize("args,kwargs,exc,match", [c[1:] for c in BAD_SDPA], ids=[c[0] for c in BAD_SDPA])
def test_sdpa_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sdpa(*args, **kwargs)


BAD_OUT = {
    "shape": lambda q: np.zeros((2, 2, 5, 9), q.dtype),
    "shape_ndim": lambda q: np.zeros((2, 2, 5 * 8), q.dtype),
    "dtype": lambda q: np.zeros((2, 2, 5, 8), F64),
    "readonly": lambda q: np.broadcast_to(np.zeros((1, 1, 1, 8), q.dtype), (2, 2, 5, 8)),
    "readonly_flag": lambda q: _readonly(np.zeros((2, 2, 5, 8), q.dtype)),
}


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("kind", list(BAD_OUT))
def test_sdpa_bad_out_is_refused_and_untouched(kind):
    q, k, v = qkv()
    q = q.copy()                                    # (2, 2, 5, 8) like the out
    out = BAD_OUT[kind](q)
    before = out.copy()
    with pytest.raises((TypeError, ValueError), match="out"):
        sdpa(q, k, v, out=out)
    np.testing.assert_array_equal(out, before)
    with pytest.raises(TypeError, match="out"):
        sdpa(q, k, v, out=out.tolist())


def test_out_aliasing_an_input_is_refused_or_correct(backend, rng):
    # out = query: either refused (naming "out", query untouched) or the right answer, never a
    # result computed from a half-overwritten query
    q0, k, v = qkv(Lk=7, rng=rng)
    want = ref.scaled_dot_product_attention(as64(q0), as64(k), as64(v))
    q = backend.to_device(q0.copy())
    try:
        res = sdpa(q, backend.to_device(k), backend.to_device(v), out=q)
    except (TypeError, ValueError) as e:
        assert "out" in str(e)
        np.testing.assert_array_equal(backend.to_numpy(q), q0)
        return
    assert res is q
    assert_close(backend.to_numpy(q), want, F32)


@pytest.mark.parametrize("bad", ["scale", "mask", "kv_lengths", "value"])
def test_out_untouched_when_the_call_fails(bad):
    q, k, v = qkv()
    out = np.full((2, 2, 5, 8), 3.25, F32)
    kw = dict(out=out)
    if bad == "scale":
        kw["scale"] = -1.0
    elif bad == "mask":
        kw["attn_mask"] = np.ones((5, 6), bool)
    elif bad == "kv_lengths":
        kw["kv_lengths"] = np.array([1, 99])
    else:
        v = v.astype(F64)
    with pytest.raises((TypeError, ValueError)):
        sdpa(q, k, v, **kw)
    assert np.all(out == 3.25)


# --------------------------------------------------------------------------------------------
# Sizes whose products overflow: run in a child process with a capped address space, so that a
# core that wraps around cannot take the test run (or the machine's memory) down with it.
# --------------------------------------------------------------------------------------------
OVERFLOW_SCRIPT = textwrap.dedent(r"""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import numpy as np
    import attnkit

    def huge(shape, dtype=np.float32):   # a huge shape over one element: zero strides, no memory
        return np.broadcast_to(np.zeros((1,) * len(shape), dtype), shape)

    cases = {
        # output (B, H, Lq, Ev) = 2**20 * 2**20 * 2**40 elements: the product overflows int64
        "out_size_overflows": lambda: attnkit.scaled_dot_product_attention(
            huge((2**20, 1, 2**20, 1)), huge((2**20, 1, 1, 1)), huge((2**20, 1, 1, 2**40))),
        # output of 2**60 elements: representable, far too big to allocate
        "out_size_huge": lambda: attnkit.scaled_dot_product_attention(
            huge((2**20, 1, 2**20, 1)), huge((2**20, 1, 1, 1)), huge((2**20, 1, 1, 2**20))),
        # (..., Lq, Ev) = (2**40, 2**40): the output's size overflows, Lk = 1
        "unbatched_out_overflows": lambda: attnkit.scaled_dot_product_attention(
            huge((1, 2**40, 1)), huge((1, 1, 1)), huge((1, 1, 2**40))),
        "softmax_huge": lambda: attnkit.softmax(huge((2**30, 2**30))),
        "linear_overflow": lambda: attnkit.linear(huge((2**40, 2**20)), huge((2**40, 2**20))),
        "layer_norm_huge": lambda: attnkit.layer_norm(huge((2**40, 2**20)), 2**20),
        "gelu_huge": lambda: attnkit.gelu(huge((2**40, 2**20))),
    }
    results = {}
    for name, call in cases.items():
        try:
            call()
            results[name] = ["no error", ""]
        except BaseException as e:
            results[name] = [type(e).__name__, str(e)[:200]]
    print(json.dumps(results))
""")


def run_child(code, timeout=120, **kwargs):
    """Run ``code`` in a fresh Python; a crash there (SIGSEGV, abort) fails the test, not the run."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def test_sizes_whose_products_overflow_are_refused():
    proc = run_child(OVERFLOW_SCRIPT)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {name: r for name, r in results.items() if r[0] not in ("ValueError", "MemoryError", "OverflowError")}
    assert not bad, bad


def test_head_dim_too_large_is_a_value_error_not_a_crash():
    proc = run_child("""
        import numpy as np, attnkit
        q = np.broadcast_to(np.float32(1), (1, 1, 2**60))
        try:
            attnkit.scaled_dot_product_attention(q, q, np.ones((1, 1, 16), np.float32))
        except ValueError as e:
            print("ValueError", e)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ValueError" in proc.stdout and "2^31" in proc.stdout


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_out_of_memory_in_linear_is_a_memory_error_not_an_abort(dtype):
    proc = run_child(f"""
        import numpy as np, attnkit
        x = np.broadcast_to(np.{dtype}(1), (128, 2**50))
        w = np.broadcast_to(np.{dtype}(1), (3, 2**50))
        try:
            attnkit.linear(x, w)
        except MemoryError:
            print("MemoryError")
        # the pool still works afterwards, with both threads
        a = np.random.default_rng(0).standard_normal((300, 64)).astype(np.{dtype})
        print(np.allclose(attnkit.softmax(a), np.exp(a) / np.exp(a).sum(-1, keepdims=True)))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["MemoryError", "True"]


# --------------------------------------------------------------------------------------------
# Zero-length dimensions
# --------------------------------------------------------------------------------------------
ZERO_SHAPES = {  # (batch, Hq, Hk, Lq, Lk, E, Ev)
    "B=0": ((0,), 2, 2, 5, 7, 8, 8), "H=0": ((2,), 0, 0, 5, 7, 8, 8), "Lq=0": ((2,), 2, 2, 0, 7, 8, 8),
    "Ev=0": ((2,), 2, 2, 5, 7, 8, 0), "B=0,Lk=0": ((0,), 2, 2, 5, 0, 8, 8), "batch=(3,0)": ((3, 0), 2, 1, 4, 6, 8, 8),
}


@dtypes
@pytest.mark.parametrize("name", list(ZERO_SHAPES))
def test_zero_length_dims_give_empty_results(backend, dtype, name, rng):
    batch, Hq, Hk, Lq, Lk, E, Ev = ZERO_SHAPES[name]
    q, k, v = qkv(Hq=Hq, Hk=Hk, Lq=Lq, Lk=Lk, E=E, Ev=Ev, dtype=dtype, batch=batch, rng=rng)
    out, lse = backend.call(sdpa, q, k, v, enable_gqa=Hq != Hk, return_lse=True, is_causal=True)
    assert out.shape == (*batch, Hq, Lq, Ev) and out.dtype == dtype
    assert lse.shape == (*batch, Hq, Lq) and lse.dtype == dtype
    _, want_lse = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), enable_gqa=Hq != Hk,
                                                   return_lse=True, is_causal=True)
    assert_close(lse, want_lse, dtype, what="lse")    # Ev = 0 still has a log-sum-exp


@dtypes
def test_no_keys_give_zeros(backend, dtype, rng):
    q, k, v = qkv(Lk=0, dtype=dtype, rng=rng)
    out, lse = backend.call(sdpa, q, k, v, return_lse=True)
    assert out.shape == (2, 2, 5, 8) and np.all(out == 0) and np.all(lse == -np.inf)
    out = backend.call(sdpa, q, k, v, is_causal=True, causal_alignment="bottom_right",
                       attn_mask=np.ones((5, 0), bool))
    assert out.shape == (2, 2, 5, 8) and np.all(out == 0)


# --------------------------------------------------------------------------------------------
# NaN stays where it belongs
# --------------------------------------------------------------------------------------------
@dtypes
def test_nan_in_query_row_spoils_only_that_row(backend, dtype, rng):
    q, k, v = qkv(Lq=40, Lk=70, E=16, dtype=dtype, rng=rng)
    clean = backend.call(sdpa, q, k, v)
    q[1, 0, 13, 5] = np.nan
    dirty = backend.call(sdpa, q, k, v)
    assert np.isnan(dirty[1, 0, 13]).all()
    spoiled = np.zeros(dirty.shape[:-1], bool)
    spoiled[1, 0, 13] = True
    np.testing.assert_array_equal(dirty[~spoiled], clean[~spoiled])


@dtypes
def test_nan_in_key_spoils_only_rows_that_see_it(backend, dtype, rng):
    q, k, v = qkv(Lq=150, Lk=150, E=16, dtype=dtype, rng=rng)
    clean = backend.call(sdpa, q, k, v, is_causal=True)
    j = 77
    k[0, 1, j, 3] = np.nan
    dirty = backend.call(sdpa, q, k, v, is_causal=True)
    np.testing.assert_array_equal(dirty[0, 1, :j], clean[0, 1, :j])     # rows i < j never see key j
    assert np.isnan(dirty[0, 1, j:]).any(axis=-1).all()                  # rows i >= j do
    np.testing.assert_array_equal(dirty[1], clean[1])                    # other batch elements
    np.testing.assert_array_equal(dirty[0, 0], clean[0, 0])              # other heads


@dtypes
def test_nan_hidden_by_a_mask_does_not_leak(backend, dtype, rng):
    q, k, v = qkv(Lq=6, Lk=50, E=16, dtype=dtype, rng=rng)
    keep = np.ones((6, 50), bool)
    keep[:, 20] = False
    clean = backend.call(sdpa, q, k, v, attn_mask=keep)
    k[..., 20, :] = np.nan
    np.testing.assert_array_equal(backend.call(sdpa, q, k, v, attn_mask=keep), clean)


@dtypes
def test_nan_behind_a_full_mask_does_not_reach_a_row_that_sees_nothing(backend, dtype, rng):
    q, k, v = (rng.standard_normal((1, 1, 4, 8)).astype(dtype) for _ in range(3))
    v[0, 0, 2] = np.nan                             # only rows that may see key 2 can be spoiled
    mask = np.ones((4, 4), bool)
    mask[0] = False                                 # row 0 sees nothing: zeros, never NaN
    out = backend.call(sdpa, q, k, v, attn_mask=mask)
    assert np.all(out[0, 0, 0] == 0)
    assert np.isnan(out[0, 0, 1:]).all()            # rows that see key 2 are spoiled, as in the oracle


@dtypes
def test_nan_stays_in_its_row_for_the_other_ops(backend, dtype, rng):
    x = rng.standard_normal((6, 40)).astype(dtype)
    x[2, 9] = np.nan
    w = rng.standard_normal((12, 40)).astype(dtype)
    rows = np.arange(6) != 2
    for name, fn, args, kw in [("softmax", attnkit.softmax, (), {}), ("layer_norm", attnkit.layer_norm, (40,), {}),
                               ("linear", attnkit.linear, (w,), {}),
                               ("linear_relu", attnkit.linear, (w,), dict(activation="relu")),
                               ("linear_gelu", attnkit.linear, (w,), dict(activation="gelu"))]:
        y = backend.call(fn, x, *args, **kw)
        assert np.isnan(y[2]).all(), f"{name}: NaN row not NaN: {y[2]}"
        assert np.isfinite(y[rows]).all(), f"{name}: NaN leaked into other rows"


# --------------------------------------------------------------------------------------------
# softmax, linear, layer_norm, gelu/relu, multi_head_attention: bad arguments
# --------------------------------------------------------------------------------------------
def _bad_op_cases():
    x = np.ones((3, 4), F32)
    w, b = np.ones((5, 4), F32), np.ones(5, F32)
    sm, li, ln = attnkit.softmax, attnkit.linear, attnkit.layer_norm
    yield "softmax_int", sm, (x.astype(np.int64),), {}, TypeError, "x"
    yield "softmax_list", sm, (x.tolist(),), {}, TypeError, "x"
    yield "softmax_complex", sm, (x.astype(np.complex128),), {}, TypeError, "x"
    yield "softmax_axis", sm, (x,), {"axis": 2}, (ValueError, IndexError), "axis"
    yield "softmax_axis_negative", sm, (x,), {"axis": -3}, (ValueError, IndexError), "axis"
    yield "softmax_axis_float", sm, (x,), {"axis": 1.0}, TypeError, "axis"
    yield "softmax_mask_float", sm, (x,), {"mask": np.ones((3, 4), F32)}, TypeError, "mask"
    yield "softmax_mask_shape", sm, (x,), {"mask": np.ones((3, 5), bool)}, ValueError, "mask"
    yield "softmax_mask_ndim", sm, (x,), {"mask": np.ones((2, 3, 4), bool)}, ValueError, "mask"
    yield "linear_int_x", li, (x.astype(np.int32), w), {}, TypeError, "x"
    yield "linear_0d_x", li, (np.array(1.0, F32), w), {}, ValueError, "x"
    yield "linear_weight_dtype", li, (x, w.astype(F64)), {}, TypeError, "weight"
    yield "linear_weight_1d", li, (x, w[0]), {}, ValueError, "weight"
    yield "linear_weight_3d", li, (x, w[None]), {}, ValueError, "weight"
    yield "linear_in_features", li, (x, np.ones((5, 3), F32)), {}, ValueError, "weight"
    yield "linear_bias_shape", li, (x, w, np.ones(4, F32)), {}, ValueError, "bias"
    yield "linear_bias_2d", li, (x, w, np.ones((1, 5), F32)), {}, ValueError, "bias"
    yield "linear_bias_dtype", li, (x, w, b.astype(F64)), {}, TypeError, "bias"
    yield "linear_activation", li, (x, w), {"activation": "swish"}, ValueError, "activation"
    yield "linear_weight_list", li, (x, w.tolist()), {}, TypeError, "weight"
    yield "ln_int", ln, (x.astype(np.int16), 4), {}, TypeError, "x"
    yield "ln_normalized_shape", ln, (x, 5), {}, ValueError, "normalized_shape"
    yield "ln_normalized_shape_2d", ln, (x, (3, 4)), {}, ValueError, "normalized_shape"
    yield "ln_weight_shape", ln, (x, 4, np.ones(5, F32)), {}, ValueError, "weight"
    yield "ln_weight_dtype", ln, (x, 4, np.ones(4, F64)), {}, TypeError, "weight"
    yield "ln_bias_shape", ln, (x, 4, None, np.ones((4, 1), F32)), {}, ValueError, "bias"
    yield "ln_residual_shape", ln, (x, 4), {"residual": np.ones((2, 4), F32)}, ValueError, "residual"
    yield "ln_residual_dtype", ln, (x, 4), {"residual": np.ones((3, 4), F64)}, TypeError, "residual"
    yield "ln_0d", ln, (np.array(1.0, F32), 1), {}, ValueError, "x|normalized_shape"
    yield "gelu_approximate", attnkit.gelu, (x,), {"approximate": "fast"}, ValueError, "approximate"
    yield "gelu_int", attnkit.gelu, (x.astype(np.int8),), {}, TypeError, "x"
    yield "relu_int", attnkit.relu, (x.astype(np.uint8),), {}, TypeError, "x"
    yield "relu_list", attnkit.relu, ([1.0, -1.0],), {}, TypeError, "x"


BAD_OPS = list(_bad_op_cases())


@pytest.mark.parametrize("fn,args,kwargs,exc,match", [c[1:] for c in BAD_OPS], ids=[c[0] for c in BAD_OPS])
def test_ops_bad_arguments(fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def _bad_mha_cases():
    B, L, E, H = 2, 5, 8, 2
    x = np.ones((B, L, E), F32)
    w_in, b_in = np.ones((3 * E, E), F32), np.ones(3 * E, F32)
    w_out = np.ones((E, E), F32)
    base = lambda **kw: dict(dict(query=x, key=x, value=x, num_heads=H, in_proj_weight=w_in,
                                  in_proj_bias=b_in, out_proj_weight=w_out), **kw)
    yield "query_2d", base(query=x[0], key=x[0], value=x[0]), ValueError, "query"
    yield "key_batch", base(key=x[:1], value=x[:1]), ValueError, "key"
    yield "key_features", base(key=np.ones((B, L, E + 1), F32), value=np.ones((B, L, E + 1), F32)), \
        ValueError, "key|in_proj_weight"
    yield "value_length", base(key=np.ones((B, 6, E), F32), value=np.ones((B, 7, E), F32)), ValueError, "value"
    yield "value_dtype", base(key=np.ones((B, 6, E), F32), value=np.ones((B, 6, E), F64)), TypeError, "value"
    yield "query_int", base(query=x.astype(np.int32), key=x.astype(np.int32), value=x.astype(np.int32)), \
        TypeError, "query"
    yield "num_heads_zero", base(num_heads=0), ValueError, "num_heads"
    yield "num_heads_not_dividing", base(num_heads=5), ValueError, "num_heads|in_proj_weight"
    yield "num_kv_heads_not_dividing", base(num_heads=4, num_kv_heads=3, in_proj_weight=np.ones((20, E), F32),
                                            in_proj_bias=None), ValueError, "num_kv_heads"
    yield "in_proj_weight_columns", base(in_proj_weight=np.ones((3 * E, E + 1), F32)), ValueError, "in_proj_weight"
    yield "in_proj_weight_1d", base(in_proj_weight=np.ones(3 * E * E, F32)), ValueError, "in_proj_weight"
    yield "in_proj_weight_dtype", base(in_proj_weight=w_in.astype(F64)), TypeError, "in_proj_weight"
    yield "in_proj_bias_shape", base(in_proj_bias=np.ones(3 * E - 1, F32)), ValueError, "in_proj_bias"
    yield "out_proj_weight_columns", base(out_proj_weight=np.ones((E, E + 2), F32)), ValueError, "out_proj_weight"
    yield "out_proj_bias_shape", base(out_proj_bias=np.ones(E + 1, F32)), ValueError, "out_proj_bias"
    yield "mask_shape", base(attn_mask=np.ones((L, L + 1), bool)), ValueError, "attn_mask"
    yield "kv_lengths_range", base(kv_lengths=np.array([L + 1, 1])), ValueError, "kv_lengths"
    yield "scale", base(scale=0.0), ValueError, "scale"


BAD_MHA = list(_bad_mha_cases())


@pytest.mark.parametrize("kwargs,exc,match", [c[1:] for c in BAD_MHA], ids=[c[0] for c in BAD_MHA])
def test_mha_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        attnkit.multi_head_attention(**kwargs)


# --------------------------------------------------------------------------------------------
# Threads and ISAs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1, -64])
def test_set_num_threads_rejects_non_positive(n):
    before = attnkit.get_num_threads()
    with pytest.raises(ValueError):
        attnkit.set_num_threads(n)
    assert attnkit.get_num_threads() == before


def test_set_num_threads_round_trip():
    before = attnkit.get_num_threads()
    try:
        for n in (1, 3, 2):
            attnkit.set_num_threads(n)
            assert attnkit.get_num_threads() == n
    finally:
        attnkit.set_num_threads(before)


def test_set_isa_rejects_unknown_and_keeps_the_current_one():
    before = attnkit.get_config()["isa"]
    with pytest.raises(ValueError):
        attnkit.set_isa("sse9")
    assert attnkit.get_config()["isa"] == before
    unusable = set(attnkit.get_config()["compiled_isas"]) - set(attnkit.get_config()["usable_isas"])
    for name in unusable:                           # compiled in, but this CPU cannot run it
        with pytest.raises(ValueError):
            attnkit.set_isa(name)
        assert attnkit.get_config()["isa"] == before


def test_config_lists_the_paths():
    cfg = attnkit.get_config()
    assert {"version", "isa", "usable_isas", "compiled_isas", "num_threads"} <= set(cfg)
    assert "generic" in cfg["usable_isas"] and cfg["isa"] in cfg["usable_isas"]
    assert set(cfg["usable_isas"]) <= set(cfg["compiled_isas"])


def test_environment_variable_forces_the_isa_at_import():
    code = "import attnkit; print(attnkit.get_config()['isa'])"
    for name in attnkit.get_config()["usable_isas"]:
        env = dict(os.environ, ATTNKIT_ISA=name)
        proc = run_child(code, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == name


def test_environment_variable_sets_the_thread_count():
    code = "import attnkit; print(attnkit.get_num_threads())"
    for n in (1, 3):
        env = dict(os.environ, ATTNKIT_NUM_THREADS=str(n))
        proc = run_child(code, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == str(n)


@pytest.mark.parametrize("value", ["avx9000", "AVX512-please"])
def test_unknown_or_unusable_isa_in_the_environment_warns_and_keeps_a_usable_path(value):
    code = ("import warnings, attnkit, numpy as np\n"
            "q = np.ones((1, 2, 3), np.float32)\n"
            "print(attnkit.get_config()['isa'], attnkit.scaled_dot_product_attention(q, q, q).shape)")
    env = dict(os.environ, ATTNKIT_ISA=value)
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ATTNKIT_ISA" in proc.stderr
    isa, shape = proc.stdout.split(maxsplit=1)
    assert isa in attnkit.get_config()["usable_isas"] and shape.strip() == "(1, 2, 3)"
