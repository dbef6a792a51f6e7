"""softmax, linear (with its fused activations), layer_norm (with the fused residual add), gelu and
relu against the float64 oracle, once per backend (conftest.BACKENDS)."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from hypothesis import given, strategies as st

import attnkit
from conftest import known_gap, WIDTH_SIZES, as64, assert_close, dtypes, laid_out, load_reference, tolerance

ref = load_reference()
SIZES = st.one_of(st.integers(1, 9), st.sampled_from([15, 16, 17, 31, 32, 33, 63, 64, 65, 100]))
ACTIVATIONS = [None, "relu", "gelu", "gelu_tanh"]


LAYOUTS = ["contiguous", "fortran", "strided", "reversed"]


def check_dtype(res, dtype):
    for r in (res if isinstance(res, tuple) else (res,)):
        assert isinstance(r, np.ndarray) and r.dtype == dtype, f"result dtype {r.dtype}, want {np.dtype(dtype)}"


# --------------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------------
@st.composite
def softmax_cases(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(SIZES) if d >= ndim - 2 else draw(st.integers(1, 3)) for d in range(ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    use_mask = draw(st.booleans())
    mask_ndim = draw(st.integers(0, ndim))
    mask_shape = tuple(n if draw(st.booleans()) else 1 for n in shape[ndim - mask_ndim:])
    layout = draw(st.sampled_from(LAYOUTS))
    magnitude = draw(st.sampled_from([1.0, 10.0, 100.0]))
    return shape, axis, (mask_shape if use_mask else None), layout, magnitude, draw(st.integers(0, 2**32 - 1))


@dtypes
@given(case=softmax_cases())
def test_softmax_generated(backend, dtype, case):
    shape, axis, mask_shape, layout, magnitude, seed = case
    rng = np.random.default_rng(seed)
    x = laid_out((magnitude * rng.standard_normal(shape)).astype(dtype), layout)
    mask = None if mask_shape is None else np.asarray(rng.random(mask_shape) < 0.7)
    got = backend.call(attnkit.softmax, x, axis=axis, mask=mask)
    check_dtype(got, dtype)
    assert_close(got, ref.softmax(as64(x), axis=axis, mask=mask), dtype)


@dtypes
@pytest.mark.parametrize("n", WIDTH_SIZES + [1000, 4099], ids=lambda n: f"n={n}")
def test_softmax_row_lengths(backend, dtype, n, rng):
    x = rng.standard_normal((3, n)).astype(dtype)
    assert_close(backend.call(attnkit.softmax, x), ref.softmax(as64(x)), dtype)
    assert_close(backend.call(attnkit.softmax, x, axis=0), ref.softmax(as64(x), axis=0), dtype)
    mask = np.asarray(rng.random(n) < 0.5)
    assert_close(backend.call(attnkit.softmax, x, mask=mask), ref.softmax(as64(x), mask=mask), dtype)


@dtypes
def test_softmax_fully_masked_rows_are_zero(backend, dtype, rng):
    x = rng.standard_normal((4, 6, 37)).astype(dtype)
    mask = np.asarray(rng.random((4, 6, 37)) < 0.6)
    mask[1, 2] = False
    mask[3] = False
    got = backend.call(attnkit.softmax, x, mask=mask)
    assert not np.isnan(got).any()
    assert np.all(got[1, 2] == 0) and np.all(got[3] == 0)
    assert np.all(got[~mask] == 0)                   # masked entries are exactly 0
    assert_close(got, ref.softmax(as64(x), mask=mask), dtype)


@dtypes
def test_softmax_is_shift_invariant_and_stable(backend, dtype, rng):
    x = rng.standard_normal((5, 70)).astype(dtype)
    big = backend.call(attnkit.softmax, x + dtype(1000))   # naive exp would overflow
    assert np.isfinite(big).all()
    assert_close(big, ref.softmax(as64(x + dtype(1000))), dtype)
    assert_close(backend.call(attnkit.softmax, x - dtype(1000)), ref.softmax(as64(x - dtype(1000))), dtype)
    assert_close(backend.call(attnkit.softmax, x).sum(axis=-1), np.ones(5), dtype)


# --------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------
@st.composite
def linear_cases(draw):
    nb = draw(st.integers(0, 2))
    lead = tuple(draw(st.integers(1, 3)) for _ in range(nb)) + (draw(SIZES),)
    return dict(lead=lead, K=draw(SIZES), N=draw(SIZES), bias=draw(st.booleans()),
                activation=draw(st.sampled_from(ACTIVATIONS)), x_layout=draw(st.sampled_from(LAYOUTS)),
                w_layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**32 - 1)))


@dtypes
@given(case=linear_cases())
def test_linear_generated(backend, dtype, case):
    rng = np.random.default_rng(case["seed"])
    K, N = case["K"], case["N"]
    x = laid_out(rng.standard_normal(case["lead"] + (K,)).astype(dtype), case["x_layout"])
    w = laid_out(rng.standard_normal((N, K)).astype(dtype), case["w_layout"])
    b = rng.standard_normal(N).astype(dtype) if case["bias"] else None
    got = backend.call(attnkit.linear, x, w, b, activation=case["activation"])
    check_dtype(got, dtype)
    # A few outputs can nearly cancel (x.w ~ 0), where float32 rounding is large relative to the
    # result itself: measure the error against |x| @ |w|^T + |b| (the GEMM's error scale, times
    # 1.13 >= |act'|), which equals ||ref|| in spirit for the many-output cases.
    gemm_scale = 1.13 * (np.abs(as64(x)) @ np.abs(as64(w)).T + (0 if b is None else np.abs(as64(b))))
    assert_close(got, ref.linear(as64(x), as64(w), as64(b), activation=case["activation"]), dtype,
                 scale=gemm_scale)


@dtypes
@pytest.mark.parametrize("size", WIDTH_SIZES, ids=lambda n: f"n={n}")
@pytest.mark.parametrize("dim", ["rows", "in", "out"])
def test_linear_sizes_around_vector_widths(backend, dtype, dim, size, rng):
    dims = dict(rows=13, K=40, N=24)
    dims[{"rows": "rows", "in": "K", "out": "N"}[dim]] = size
    x = rng.standard_normal((dims["rows"], dims["K"])).astype(dtype)
    w = rng.standard_normal((dims["N"], dims["K"])).astype(dtype)
    b = rng.standard_normal(dims["N"]).astype(dtype)
    for act in ACTIVATIONS:
        assert_close(backend.call(attnkit.linear, x, w, b, activation=act),
                     ref.linear(as64(x), as64(w), as64(b), activation=act), dtype)


@dtypes
@pytest.mark.parametrize("shape", [(2, 129, 257, 300), (1, 512, 768, 96), (3, 1, 1024, 1000)],
                         ids=["2x129x257->300", "512x768->96", "3x1x1024->1000"])
def test_linear_large_blocks(backend, dtype, shape, rng):
    B, M, K, N = shape
    x = rng.standard_normal((B, M, K)).astype(dtype)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    assert_close(backend.call(attnkit.linear, x, w, b, activation="gelu"), ref.linear(as64(x), as64(w), as64(b),
                                                                        activation="gelu"), dtype)
    assert_close(backend.call(attnkit.linear, x, w), ref.linear(as64(x), as64(w)), dtype)


@dtypes
@pytest.mark.parametrize("M", [193, 385, 1000, 1024, 1031])
def test_linear_row_blocks_over_threads(backend, dtype, M, rng):
    """Row blocks are sized by the thread count (even heights, a multiple of the threads):
    every row is computed once, whatever the count."""
    x = rng.standard_normal((M, 72)).astype(dtype)
    w = rng.standard_normal((40, 72)).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    want = ref.linear(as64(x), as64(w), as64(b), activation="relu")
    before = attnkit.get_num_threads()
    try:
        for threads in (1, 2, 3, 5):
            attnkit.set_num_threads(threads)
            assert_close(backend.call(attnkit.linear, x, w, b, activation="relu"), want, dtype)
    finally:
        attnkit.set_num_threads(before)


@dtypes
def test_linear_zero_sized(backend, dtype, rng):
    w = rng.standard_normal((5, 4)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    got = backend.call(attnkit.linear, np.zeros((0, 4), dtype), w, b)
    assert got.shape == (0, 5) and got.dtype == dtype
    got = backend.call(attnkit.linear, np.zeros((2, 0, 4), dtype), w, b, activation="relu")
    assert got.shape == (2, 0, 5)
    # no input features: the result is the bias alone
    got = backend.call(attnkit.linear, np.zeros((3, 0), dtype), np.zeros((5, 0), dtype), b)
    assert_close(got, np.broadcast_to(as64(b), (3, 5)), dtype)


# --------------------------------------------------------------------------------------------
# layer_norm
# --------------------------------------------------------------------------------------------
@st.composite
def layer_norm_cases(draw):
    nb = draw(st.integers(0, 2))
    lead = tuple(draw(st.integers(1, 4)) for _ in range(nb))
    return dict(shape=lead + (draw(SIZES),), weight=draw(st.booleans()), bias=draw(st.booleans()),
                residual=draw(st.booleans()), return_sum=draw(st.booleans()),
                eps=draw(st.sampled_from([1e-5, 1e-6, 1e-3, 0.1])),
                # (mean, std) of x; mean / std stays small, else rounding the mean to float32 alone
                # (ulp(mean) / std) exceeds the tolerance
                offset_spread=draw(st.sampled_from([(0.0, 1.0), (3.0, 1.0), (0.0, 0.01), (0.0, 30.0), (30.0, 30.0)])),
                int_shape=draw(st.booleans()),
                layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**32 - 1)))


@dtypes
@given(case=layer_norm_cases())
def test_layer_norm_generated(backend, dtype, case):
    rng = np.random.default_rng(case["seed"])
    shape, D = case["shape"], case["shape"][-1]
    offset, spread = case["offset_spread"]
    x = laid_out((offset + spread * rng.standard_normal(shape)).astype(dtype), case["layout"])
    w = rng.standard_normal(D).astype(dtype) if case["weight"] else None
    b = rng.standard_normal(D).astype(dtype) if case["bias"] else None
    r = rng.standard_normal(shape).astype(dtype) if case["residual"] else None
    ns = D if case["int_shape"] else (D,)
    kw = dict(residual=r, return_sum=case["return_sum"])
    got = backend.call(attnkit.layer_norm, x, ns, w, b, case["eps"], **kw)
    check_dtype(got, dtype)
    want = ref.layer_norm(as64(x), ns, as64(w), as64(b), case["eps"], residual=as64(r),
                          return_sum=case["return_sum"])
    if case["return_sum"]:
        assert isinstance(got, tuple) and len(got) == 2
        assert_close(got[0], want[0], dtype)
        assert_close(got[1], want[1], dtype, what="sum")
    else:
        assert_close(got, want, dtype)


@dtypes
@pytest.mark.parametrize("D", WIDTH_SIZES + [768, 1024, 4099], ids=lambda n: f"D={n}")
def test_layer_norm_widths(backend, dtype, D, rng):
    x = rng.standard_normal((5, D)).astype(dtype)
    r = rng.standard_normal((5, D)).astype(dtype)
    w, b = rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)
    assert_close(backend.call(attnkit.layer_norm, x, D, w, b), ref.layer_norm(as64(x), D, as64(w), as64(b)), dtype)
    y, h = backend.call(attnkit.layer_norm, x, (D,), w, b, residual=r, return_sum=True)
    want_y, want_h = ref.layer_norm(as64(x), D, as64(w), as64(b), residual=as64(r), return_sum=True)
    assert_close(y, want_y, dtype)
    assert_close(h, want_h, dtype, what="sum")


@dtypes
@pytest.mark.parametrize("offset", [10.0, 1000.0], ids=lambda o: f"mean={o:g}")
def test_layer_norm_large_mean(backend, dtype, offset, rng):
    # var must be E[(x - mean)^2], not E[x^2] - mean^2: at mean 1000 and std 1 the latter loses
    # every float32 digit (relative error ~1e-2). Even a careful float32 two-pass sum is only
    # good to ~1e-4 there, so that case has its own column in the table; mean 10 meets the oracle's.
    x = (offset + rng.standard_normal((8, 1024))).astype(dtype)
    against = "large_mean" if offset > 100 else "oracle"
    assert_close(backend.call(attnkit.layer_norm, x, 1024), ref.layer_norm(as64(x), 1024), dtype, against=against)


@dtypes
def test_layer_norm_constant_rows(backend, dtype):
    # zero variance: (x - mean) is 0, so the output is the bias (no NaN from 0 / sqrt(eps))
    x = np.full((3, 40), 2.5, dtype)
    b = np.arange(40, dtype=dtype)
    got = backend.call(attnkit.layer_norm, x, 40, None, b)
    assert_close(got, np.broadcast_to(as64(b), (3, 40)), dtype)


@dtypes
@pytest.mark.parametrize("n", [1, 7, 40, 768, 1000, 4096], ids=lambda n: f"n={n}")
def test_layer_norm_constant_rows_give_exactly_the_bias(backend, dtype, n, rng, request):
    if n > 1:
        known_gap(request, backend, "cuda", "the CUDA layer norm's mean is not exact for constant rows (measured on an H100)")
    # a constant row has mean exactly its value and variance 0, so the output is exactly the bias,
    # even with eps=1e-12 where an inexact mean would be amplified by 1/sqrt(eps) (0.18 off before)
    values = np.concatenate([rng.standard_normal(4) * 10.0 ** rng.integers(-3, 30, 4), [1000.3, 0.1, -7e20]])
    x = np.repeat(values[:, None], n, axis=1).astype(dtype)
    w, b = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    for eps in (1e-12, 1e-5):
        got = backend.call(attnkit.layer_norm, x, n, w, b, eps=eps)
        np.testing.assert_array_equal(got, np.broadcast_to(b, x.shape))
        got = backend.call(attnkit.layer_norm, np.zeros_like(x), n, w, b, eps=eps, residual=x)   # the fused sum
        np.testing.assert_array_equal(got, np.broadcast_to(b, x.shape))


@dtypes
@pytest.mark.parametrize("ratio", [1e2, 1e3, 1e4], ids=lambda r: f"mean/std={r:g}")
def test_layer_norm_large_mean_as_accurate_as_torch(backend, dtype, ratio, rng):
    # the error against the float64 oracle is at most PyTorch's (same dtype) plus a little
    torch = pytest.importorskip("torch")
    x = (ratio + rng.standard_normal((16, 1024))).astype(dtype)
    want = ref.layer_norm(as64(x), 1024)
    got = backend.call(attnkit.layer_norm, x, 1024)
    t = torch.nn.functional.layer_norm(torch.from_numpy(x), (1024,)).numpy()
    err, terr = np.abs(got - want).max(), np.abs(t - want).max()
    assert err <= 1.5 * terr + 10 * np.finfo(dtype).eps, f"attnkit {err:.3e}, torch {terr:.3e}"


# --------------------------------------------------------------------------------------------
# gelu, relu
# --------------------------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000], ids=lambda n: f"n={n}")
def test_activations(backend, dtype, n, layout, rng):
    x = laid_out((4 * rng.standard_normal((3, n))).astype(dtype), layout)
    for got, want in [(backend.call(attnkit.gelu, x), ref.gelu(as64(x))),
                      (backend.call(attnkit.gelu, x, approximate="tanh"), ref.gelu(as64(x), approximate="tanh")),
                      (backend.call(attnkit.relu, x), ref.relu(as64(x)))]:
        check_dtype(got, dtype)
        assert_close(got, want, dtype)
    np.testing.assert_array_equal(backend.call(attnkit.relu, x), np.maximum(x, 0))   # relu is exact


@dtypes
def test_activations_extreme_values(backend, dtype):
    x = np.array([-1e4, -80, -30, -10, -5, -1e-3, 0.0, 1e-3, 5, 10, 30, 80, 1e4], dtype=dtype)
    for approximate in ("none", "tanh"):
        got = backend.call(attnkit.gelu, x, approximate=approximate)
        assert np.isfinite(got).all()
        assert_close(got, ref.gelu(as64(x), approximate=approximate), dtype)
    special = np.array([np.nan, np.inf, -np.inf], dtype=dtype)
    assert np.isnan(backend.call(attnkit.relu, special)[0]) and np.isnan(backend.call(attnkit.gelu, special)[0])
    np.testing.assert_array_equal(backend.call(attnkit.relu, special)[1:], [np.inf, 0])
    assert backend.call(attnkit.gelu, special)[1] == np.inf      # gelu(-inf) is -inf * 0: left unspecified


@dtypes
def test_empty_arrays(backend, dtype):
    for shape in [(0,), (3, 0), (0, 5)]:
        x = np.zeros(shape, dtype)
        for fn in (attnkit.relu, attnkit.gelu, attnkit.softmax):
            got = backend.call(fn, x)
            assert got.shape == shape and got.dtype == dtype
    x = np.zeros((0, 6), dtype)
    assert backend.call(attnkit.layer_norm, x, 6).shape == (0, 6)


# --------------------------------------------------------------------------------------------
# The thread pool after fork
# --------------------------------------------------------------------------------------------
def _softmax_in_child(queue):
    x = np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32)
    queue.put(float(np.abs(attnkit.softmax(x).sum(-1) - 1).max()))


def test_kernels_work_in_a_forked_child():
    attnkit.softmax(np.ones((256, 64), np.float32))  # the pool exists before the fork
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_softmax_in_child, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("a kernel called in a forked child hung")
    assert child.exitcode == 0 and queue.get(timeout=5) < tolerance(np.float32)


# Up to 32 rows with an unpacked weight, linear runs a register tile of dot products (4 rows of x by 6 of W on
# AVX-512, 3 by 3 elsewhere) over the depth in 4 KiB chunks (1024 float32, 512 float64), then hands over to
# the packed GEMM: rows, widths and depths around each of those edges, on every path.
FEW_ROWS = [(1, 768, 13), (2, 17, 7), (3, 1025, 6), (4, 16, 5), (5, 15, 12), (7, 513, 19), (8, 1024, 97),
            (9, 2049, 11), (13, 1, 25), (16, 100, 6), (31, 1023, 37), (32, 3000, 31), (33, 129, 30)]


@dtypes
@pytest.mark.parametrize("shape", FEW_ROWS, ids=lambda s: "x".join(map(str, s)))
def test_linear_few_rows_unpacked(backend, dtype, shape, rng):
    M, K, N = shape
    x = rng.standard_normal((M, K)).astype(dtype)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    for act, bias in ((None, None), ("gelu", b), ("relu", b[::-1])):
        want = ref.linear(as64(x), as64(w), None if bias is None else as64(bias), activation=act)
        assert_close(backend.call(attnkit.linear, x, w, bias, activation=act), want, dtype)
    # rows of x not evenly spaced (a batch of slices of a larger array), W rows of a wider array, out= a column slice
    xs = rng.standard_normal((2, M + 3, K + 5)).astype(dtype)[:, 1:M + 1, 3:K + 3]
    ws = rng.standard_normal((N, K + 3)).astype(dtype)[:, 2:K + 2]
    want = ref.linear(as64(xs), as64(ws), as64(b))
    assert_close(backend.call(attnkit.linear, xs, ws, b), want, dtype, scale=np.abs(as64(xs)) @ np.abs(as64(ws)).T)
    if backend.name.startswith("cpu:"):
        out = np.full((2, M, N + 5), 7, dtype)
        attnkit.linear(xs, ws, b, out=out[:, :, 2:N + 2])
        assert np.all(out[:, :, :2] == 7) and np.all(out[:, :, N + 2:] == 7)
        assert_close(out[:, :, 2:N + 2], want, dtype, scale=np.abs(as64(xs)) @ np.abs(as64(ws)).T)
