"""Quantized linear weights (attnkit.quantize_linear, quantize_swiglu): int8 and int4 on every
quantized-GEMM path (generic, avx2's vpmaddubsw, avx_vnni, avx512_vnni, amx_int8), against the
float64 oracle on the ORIGINAL float weights, held under the bound that the quantization steps give
(README, "Quantized inference"): element by element

    |y - x w^T| <= L * ( |x| @ d_w^T + d_x * sum_k |w| + d_x * sum_k d_w ) + rounding

with d_x = max|x_m| / 127 / 2 per row, d_w the half step of the weight (row scale / 2 for int8, the
group's / 2 for int4), L the activation's Lipschitz bound. The steps are computed here from x and w
(not read from the code under test)."""
import numpy as np
import pytest

import attnkit
from attnkit import reference as ref
from conftest import laid_out, on_cpu_path

QPATHS = ["amx_int8", "avx512_vnni", "avx_vnni", "avx2", "generic"]
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
LIPSCHITZ = {None: 1.0, "relu": 1.0, "gelu": 1.13, "gelu_tanh": 1.13, "silu": 1.1}


@pytest.fixture(params=QPATHS, ids=[f"cpu:{p}" for p in QPATHS])
def qpath(request):
    """Each CPU path with its own quantized GEMM, selected for the test (skipped where unusable)."""
    with on_cpu_path(request.param):
        yield request.param


def bf16():
    import ml_dtypes
    return ml_dtypes.bfloat16


def as_x(a, xdtype):
    return a.astype(bf16() if xdtype == "bf16" else np.float32)


def weight_step(w, qdtype, group):
    """Half the quantization step of each weight entry, (N, K) float64."""
    w = np.abs(w.astype(np.float64))
    N, K = w.shape
    if qdtype == "int8":
        return np.repeat(w.max(axis=1, keepdims=True) / 127 / 2, K, axis=1)
    ng = -(-K // group)
    wp = np.zeros((N, ng * group))
    wp[:, :K] = w
    return np.repeat(wp.reshape(N, ng, group).max(axis=2) / 7 / 2, group, axis=1)[:, :K]


def quant_error_bound(x, w, qdtype, group):
    """Per-element bound of |x_q w_q - x w| (pre-activation), x (M, K) and w (N, K) as float64."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    dw = weight_step(w, qdtype, group)
    dx = np.abs(x).max(axis=1, keepdims=True) / 127 / 2                 # (M, 1)
    ax, aw = np.abs(x), np.abs(w)
    bound = ax @ dw.T + dx * aw.sum(axis=1)[None, :] + dx * dw.sum(axis=1)[None, :]
    rounding = 2e-6 * ((ax + dx) @ (aw + dw).T)                          # int32 -> float, the rescale
    return 1.01 * bound + rounding


def rounding_sigma(x, w, qdtype, group):
    """The standard deviation of x_q w_q - x w if each rounding error were uniform on its step."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    dw = weight_step(w, qdtype, group)
    dx = np.abs(x).max(axis=1, keepdims=True) / 127 / 2
    return np.sqrt((x ** 2 @ (dw ** 2).T + dx ** 2 * (w ** 2).sum(axis=1)[None, :]) / 3)


def check(y, x2, w, b, qdtype, group, act, xdtype, what=""):
    """y (M, N) against the oracle on the float weights, under the bound."""
    x64, w64 = x2.astype(np.float64), w.astype(np.float64)
    z = x64 @ w64.T + (0 if b is None else b.astype(np.float64))
    expect = ref.silu(z) if act == "silu" else ref.linear(x64, w64, None if b is None else b.astype(np.float64), activation=act)
    bound = LIPSCHITZ[act] * quant_error_bound(x2, w, qdtype, group) + 1e-5 * np.abs(z) + 1e-6
    if xdtype == "bf16":
        bound = bound + 2.0 ** -8 * (np.abs(expect) + bound)             # the output rounded to bfloat16
    err = np.abs(y.astype(np.float64) - expect)
    assert y.shape == expect.shape
    assert np.isfinite(y.astype(np.float64)).all(), f"{what}: non-finite output"
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), (f"{what}: error {err[worst]:.3e} > bound {bound[worst]:.3e} at {worst} "
                                  f"({(err > bound).sum()} of {err.size} entries)")
    if err.size >= 256:   # and the typical error: rounding errors as independent uniform ones (sigma)
        sigma = LIPSCHITZ[act] * rounding_sigma(x2, w, qdtype, group) + 1e-6 * np.abs(z) + 1e-7
        if xdtype == "bf16":
            sigma = sigma + 2.0 ** -9 * np.abs(expect) / np.sqrt(3)
        rms = np.sqrt(np.mean((err / sigma) ** 2))
        assert rms <= 1.4, f"{what}: rms error {rms:.2f} sigma, expected about 1"
    return err, bound


def make(rng, M, N, K, xdtype="f32", bias=True):
    x = as_x(rng.standard_normal((M, K)), xdtype)
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[rng.random((N, K)) < 0.05] *= 6.0                                   # a few large weights per row
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    return x, w, b


QDTYPES = pytest.mark.parametrize("qdtype,group", [("int8", None), ("int4", 32), ("int4", 128)],
                                  ids=["int8", "int4g32", "int4g128"])
XDTYPES = pytest.mark.parametrize("xdtype", ["f32", "bf16"])

# rows: every count up to 17 (tile heights 2, 4, 6, 8), around 32 (AMX's two row tiles), and around
# the 192-row block; depth not a multiple of 4 / 8 / 64 and around the int4 groups; widths around
# the 16-column panels and their pairs
ROWS = list(range(1, 18)) + [31, 32, 33, 63, 64, 65, 191, 192, 193]
DEPTHS = [1, 3, 4, 5, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 257]
WIDTHS = [1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64]


@QDTYPES
@XDTYPES
def test_rows(qpath, rng, qdtype, group, xdtype):
    w_rng = rng
    x, w, b = make(w_rng, max(ROWS), 37, 75, xdtype)
    qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
    for M in ROWS:
        check(attnkit.linear(x[:M], qw), x[:M], w, b, qdtype, group or 0, None, xdtype, what=f"M={M}")


@QDTYPES
def test_depths(qpath, rng, qdtype, group):
    for K in DEPTHS:
        for M in (3, 40):
            x, w, b = make(rng, M, 21, K)
            qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
            check(attnkit.linear(x, qw), x, w, b, qdtype, group or 0, None, "f32", what=f"K={K} M={M}")


@QDTYPES
def test_widths(qpath, rng, qdtype, group):
    for N in WIDTHS:
        for M in (1, 9, 36):
            x, w, b = make(rng, M, N, 70)
            qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
            check(attnkit.linear(x, qw), x, w, b, qdtype, group or 0, None, "f32", what=f"N={N} M={M}")


@QDTYPES
@XDTYPES
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a or "none")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_bias_activation(qpath, rng, qdtype, group, xdtype, act, bias):
    x, w, b = make(rng, 35, 50, 96, xdtype, bias)
    qw = attnkit.quantize_linear(w, dtype=qdtype, group_size=group)
    y = attnkit.linear(x, qw, b, activation=act)
    assert y.dtype == x.dtype
    check(y, x, w, b, qdtype, group or 0, act, xdtype)


@QDTYPES
@pytest.mark.parametrize("layout", ["rows_reversed", "strided", "reversed", "fortran", "offset", "3d"])
def test_layouts(qpath, rng, qdtype, group, layout):
    x, w, b = make(rng, 34, 40, 66)
    qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
    if layout == "offset":
        big = np.zeros((40, 80), np.float32)
        big[3:37, 5:71] = x
        xv = big[3:37, 5:71]
        y = attnkit.linear(xv, qw)
    elif layout == "3d":
        y = attnkit.linear(x.reshape(2, 17, 66), qw).reshape(34, 40)
    else:
        xv = laid_out(x, layout)
        assert np.array_equal(xv, x)
        y = attnkit.linear(xv, qw)
    check(y, x, w, b, qdtype, group or 0, None, "f32", what=layout)


@QDTYPES
@XDTYPES
def test_out_view(qpath, rng, qdtype, group, xdtype):
    """out= a column slice of a wider array: written inside the view only."""
    x, w, b = make(rng, 19, 33, 64, xdtype)
    qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
    big = as_x(rng.standard_normal((19, 50)), xdtype)
    before = big.copy()
    res = attnkit.linear(x, qw, activation="relu", out=big[:, 7:40])
    assert np.shares_memory(res, big)
    check(big[:, 7:40], x, w, b, qdtype, group or 0, "relu", xdtype)
    np.testing.assert_array_equal(big[:, :7], before[:, :7])
    np.testing.assert_array_equal(big[:, 40:], before[:, 40:])


@QDTYPES
@XDTYPES
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_swiglu(qpath, rng, qdtype, group, xdtype, bias):
    M, F, K = 37, 41, 72
    x = as_x(rng.standard_normal((M, K)), xdtype)
    wg, wu = rng.standard_normal((F, K)).astype(np.float32), rng.standard_normal((F, K)).astype(np.float32)
    bg, bu = (rng.standard_normal(F).astype(np.float32), rng.standard_normal(F).astype(np.float32)) if bias else (None, None)
    qw = attnkit.quantize_swiglu(wg, wu, bg, bu, dtype=qdtype, group_size=group)
    assert qw.gated and qw.shape == (2 * F, K)
    y = attnkit.linear(x, qw).astype(np.float64)
    x64 = x.astype(np.float64)
    g = x64 @ wg.T.astype(np.float64) + (0 if bg is None else bg)
    u = x64 @ wu.T.astype(np.float64) + (0 if bu is None else bu)
    expect = ref.silu(g) * u
    eg = quant_error_bound(x, wg, qdtype, group or 0)
    eu = quant_error_bound(x, wu, qdtype, group or 0)
    bound = 1.1 * eg * (np.abs(u) + eu) + (np.abs(ref.silu(g)) + 1.1 * eg) * eu + 1e-5 * np.abs(expect) + 1e-6
    if xdtype == "bf16":
        bound = bound + 2.0 ** -8 * (np.abs(expect) + bound)
    err = np.abs(y - expect)
    assert (err <= bound).all(), f"max err/bound {np.max(err / bound):.3f}"


@QDTYPES
def test_nonfinite_rows(qpath, rng, qdtype, group):
    """A row of x with a NaN or an infinity gives NaN in that row only."""
    x, w, b = make(rng, 6, 20, 40)
    x[1, 3] = np.nan
    x[4, 0] = np.inf
    qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
    y = attnkit.linear(x, qw)
    assert np.isnan(y[[1, 4]]).all()
    keep = [0, 2, 3, 5]
    check(y[keep], x[keep], w, b, qdtype, group or 0, None, "f32")


@QDTYPES
def test_same_on_every_path(rng, qdtype, group):
    """The integer paths compute the same integers: results agree to float rounding across paths."""
    x, w, b = make(rng, 45, 35, 130)
    qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
    usable = attnkit.get_config()["usable_isas"]
    previous = attnkit.get_config()["isa"]
    outs = {}
    try:
        for p in QPATHS:
            if p in usable:
                attnkit.set_isa(p)
                outs[p] = attnkit.linear(x, qw)
    finally:
        attnkit.set_isa(previous)
    base = outs.pop("generic")
    for p, y in outs.items():
        np.testing.assert_allclose(y, base, rtol=1e-5, atol=1e-5 * np.abs(base).max(), err_msg=p)


@pytest.mark.parametrize("qdtype,group", [("int8", None), ("int4", 32), ("int4", 64)])
@pytest.mark.parametrize("gated", [False, True])
def test_roundtrip(rng, qdtype, group, gated):
    """quantize_weight's q and scales: the symmetric rounding (computed here independently), read
    back unchanged from the packed weight; unpack() is q * scale."""
    w = rng.standard_normal((34, 75)).astype(np.float32)
    w[5] = 0.0                                                           # a zero row: scale 0
    q, s = attnkit.quantize_weight(w, qdtype, group)
    if qdtype == "int8":
        exp_s = np.abs(w).max(axis=1) / 127
        exp_q = np.clip(np.rint(w / np.where(exp_s > 0, exp_s, 1)[:, None]), -127, 127)
        deq = q * s[:, None]
    else:
        ng = -(-75 // group)
        exp_s = np.array([[np.abs(w[n, g * group:(g + 1) * group]).max() / 7 for g in range(ng)] for n in range(34)])
        full = np.repeat(exp_s, group, axis=1)[:, :75]
        exp_q = np.clip(np.rint(w / np.where(full > 0, full, 1)), -7, 7)
        deq = q * np.repeat(s, group, axis=1)[:, :75]
    np.testing.assert_allclose(s, exp_s, rtol=1e-6)
    assert np.abs(q.astype(np.int64) - exp_q).max() <= 1                 # float division vs multiply: ties
    assert np.abs(deq - w).max() <= np.max(exp_s) / 2 * 1.001
    if gated:
        qw = attnkit.quantize_swiglu(w[:17], w[17:], dtype=qdtype, group_size=group)
    else:
        qw = attnkit.quantize_linear(w, dtype=qdtype, group_size=group)
    q2, s2 = qw.quantized()
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(qw.unpack(), deq.astype(np.float32))
    again = attnkit.QuantizedLinear.from_quantized(q2, s2, dtype=qdtype, group_size=group, gated=gated)
    x = rng.standard_normal((5, 75)).astype(np.float32)
    np.testing.assert_array_equal(attnkit.linear(x, again), attnkit.linear(x, qw))
    per_row = 75 if qdtype == "int8" else 128 // 2 if group == 128 else -(-75 // group) * group // 2
    assert qw.nbytes >= 34 * per_row and qw.nbytes <= 48 * (per_row + 64) + 4 * 48 * 8
    assert qw.dtype == qdtype and qw.group_size == group


def test_errors(rng):
    w = rng.standard_normal((8, 12)).astype(np.float32)
    qw = attnkit.quantize_linear(w)
    with pytest.raises(TypeError, match="x: a quantized weight takes float32 or bfloat16"):
        attnkit.linear(rng.standard_normal((2, 12)), qw)                 # float64
    with pytest.raises(ValueError, match=r"weight: expected shape \(out_features, in_features=13\)"):
        attnkit.linear(rng.standard_normal((2, 13)).astype(np.float32), qw)
    with pytest.raises(ValueError, match="bias"):
        attnkit.linear(rng.standard_normal((2, 12)).astype(np.float32), qw, np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="out"):
        attnkit.linear(rng.standard_normal((2, 12)).astype(np.float32), qw, out=np.zeros((2, 9), np.float32))
    with pytest.raises(TypeError, match="out"):
        attnkit.linear(rng.standard_normal((2, 12)).astype(np.float32), qw, out=np.zeros((2, 8), np.float64))
    with pytest.raises(ValueError, match="dtype: expected 'int8' or 'int4'"):
        attnkit.quantize_linear(w, dtype="int2")
    with pytest.raises(ValueError, match="group_size: expected a positive multiple of 32"):
        attnkit.quantize_linear(w, dtype="int4", group_size=48)
    with pytest.raises(ValueError, match="group_size: int8"):
        attnkit.quantize_linear(w, dtype="int8", group_size=32)
    with pytest.raises(ValueError, match="weight: has NaN"):
        attnkit.quantize_linear(np.full((2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="weight: expected shape"):
        attnkit.quantize_linear(w[0])
    q, s = attnkit.quantize_weight(w)
    with pytest.raises(TypeError, match="q: expected an int8 array"):
        attnkit.QuantizedLinear.from_quantized(q.astype(np.int64), s)
    with pytest.raises(TypeError, match="scale: expected a float32 array"):
        attnkit.QuantizedLinear.from_quantized(q, s.astype(np.float64))
    with pytest.raises(ValueError, match=r"scale: expected shape \(8,\)"):
        attnkit.QuantizedLinear.from_quantized(q, s[:5])
    bad = q.copy()
    bad[2, 3] = -128
    with pytest.raises(ValueError, match=r"q: int8 values must lie in \[-127, 127\], got -128 at \(2, 3\)"):
        attnkit.QuantizedLinear.from_quantized(bad, s)
    with pytest.raises(ValueError, match=r"q: int4 values must lie in \[-8, 7\]"):
        attnkit.QuantizedLinear.from_quantized(q, np.ones((8, 1), np.float32), dtype="int4", group_size=32)
    with pytest.raises(ValueError, match=r"scale: expected shape \(8, 1\) for int4"):
        attnkit.QuantizedLinear.from_quantized(np.zeros((8, 12), np.int8), s, dtype="int4", group_size=32)
    with pytest.raises(ValueError, match="q: a gated weight needs an even number of rows"):
        attnkit.QuantizedLinear.from_quantized(q[:7], s[:7], gated=True)
    with pytest.raises(ValueError, match="activation: a gated"):
        g = attnkit.quantize_swiglu(w[:4], w[4:])
        attnkit.linear(rng.standard_normal((2, 12)).astype(np.float32), g, activation="relu")


def test_empty(rng):
    w = rng.standard_normal((8, 12)).astype(np.float32)
    qw = attnkit.quantize_linear(w, np.ones(8, np.float32))
    assert attnkit.linear(np.zeros((0, 12), np.float32), qw).shape == (0, 8)
    y = attnkit.linear(np.zeros((3, 12), np.float32), qw)                 # x = 0: the bias alone
    np.testing.assert_array_equal(y, np.ones((3, 8), np.float32))


@QDTYPES
@pytest.mark.parametrize("signs", ["aligned", "random"])
def test_extremes_are_exact(qpath, rng, qdtype, group, signs):
    """x and w of +-1 (and a second magnitude per row) quantize without loss (x_q, q = +-127, int4 +-7), so
    the result must be the exact product: this catches int16 saturation in the vpmaddubsw path (aligned
    signs make every pair 2 x 127 x 127 = 32258, the most it can reach) and any lost or shifted term."""
    M, N, K = 40, 33, 300
    w = rng.choice([-1.0, 1.0], (N, K)).astype(np.float32) * rng.choice([0.5, 2.0], (N, 1)).astype(np.float32)
    if signs == "aligned":
        x = np.sign(w[rng.integers(0, N, M)]).astype(np.float32)       # each row of x has the signs of a row of w
    else:
        x = rng.choice([-1.0, 1.0], (M, K)).astype(np.float32)
    x *= rng.choice([0.25, 4.0], (M, 1)).astype(np.float32)
    qw = attnkit.quantize_linear(w, dtype=qdtype, group_size=group)
    y = attnkit.linear(x, qw)
    expect = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(y, expect, rtol=1e-6, atol=1e-6 * np.abs(expect).max())
    if signs == "aligned":
        assert np.abs(expect).max() == pytest.approx(K * 4.0 * 2.0)   # a row met its own signs: no cancellation


@pytest.mark.parametrize("M", [1, 2, 5])
def test_int4_whole_depth_group_at_the_limit(qpath, M):
    """The largest int32 sums the int4 kernels make: one group over the deepest allowed K (131072), every
    weight +1 (nibble 15, which the AVX-512 kernel multiplies as 16 * 15 without a shift) and x = +1: the
    high nibbles' sum reaches 65536 * 240 * 127 ~ 2.0e9 < 2^31. The product must be exact."""
    K, N = 131072, 16
    w = np.ones((N, K), np.float32)
    w[1::2] *= -1.0                                                   # and rows of -1 (nibble 1)
    x = np.ones((M, K), np.float32)
    qw = attnkit.quantize_linear(w, dtype="int4", group_size=K)
    y = attnkit.linear(x, qw)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-6)


@pytest.mark.parametrize("qdtype,group", [("int8", None), ("int4", 32), ("int4", 128)], ids=["int8", "int4g32", "int4g128"])
@pytest.mark.parametrize("N", [1, 15, 16, 17, 33, 100])
@pytest.mark.parametrize("K", [1, 5, 64, 75, 129, 300])
def test_embedding_rows(rng, qdtype, group, N, K):
    """QuantizedEmbedding (a tied table read from its quantized head): rows equal q * scale computed here
    from quantize_weight's q and scales, for any ids (repeats, every panel column, the last row)."""
    w = rng.standard_normal((N, K)).astype(np.float32)
    head = attnkit.quantize_linear(w, dtype=qdtype, group_size=group)
    q, s = attnkit.quantize_weight(w, qdtype, group)
    deq = q * (s[:, None] if qdtype == "int8" else np.repeat(s, group, axis=1)[:, :K])
    ids = np.concatenate([np.arange(N), rng.integers(0, N, 40), [N - 1, 0, N - 1]])
    table = attnkit.quant.QuantizedEmbedding(head)
    np.testing.assert_array_equal(table[ids], deq[ids].astype(np.float32))
    grid = ids[:12].reshape(3, 4)
    assert table[grid].shape == (3, 4, K)
    np.testing.assert_array_equal(table[grid], deq[grid].astype(np.float32))
    assert table[np.zeros((2, 0), np.int64)].shape == (2, 0, K)
    assert table.astype(bf16())[ids].dtype == bf16()
    np.testing.assert_array_equal(table.astype(bf16())[ids].astype(np.float32),
                                  deq[ids].astype(np.float32).astype(bf16()).astype(np.float32))


def test_embedding_rows_errors(rng):
    w = rng.standard_normal((20, 32)).astype(np.float32)
    table = attnkit.quant.QuantizedEmbedding(attnkit.quantize_linear(w))
    with pytest.raises(ValueError, match=r"ids: expected row indices in \[0, 20\), got 20"):
        table[np.array([3, 20])]
    with pytest.raises(ValueError, match=r"ids: .* got -1"):
        table[np.array([-1])]
    with pytest.raises(TypeError, match="ids: expected integer token ids"):
        table[np.array([1.0])]
    with pytest.raises(TypeError, match="head: expected an ungated QuantizedLinear"):
        attnkit.quant.QuantizedEmbedding(attnkit.quantize_swiglu(w[:10], w[10:]))
    with pytest.raises(TypeError, match="head: expected an ungated QuantizedLinear"):
        attnkit.quant.QuantizedEmbedding(attnkit.pack_linear(w))
    with pytest.raises(TypeError, match="weight: not a quantized weight"):
        attnkit._core.quantized_rows(attnkit.pack_linear(w)._packed, np.array([0]))
