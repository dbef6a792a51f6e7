"""One-row GEMMs (decoding): each work item's panels (a packed float or quantized weight) or rows (an
unpacked float weight) are read as several streams side by side, on every CPU path. Enumerated here:
every count of panels per work item from 1 to past three times the stream count (so every remainder of
the split), a partial last panel, one and several depth blocks, bias / activation / SwiGLU epilogues,
1-3 threads (the work items change with them); against the float64 oracle, and the quantized results
bit for bit against the same row computed among others (the multi-row kernels)."""
import numpy as np
import pytest

import attnkit
from attnkit import reference as ref
from conftest import as64, assert_close

from test_packed import gemm_scale, isa  # noqa: F401  (isa: a fixture)
from test_quant import QDTYPES, check, make, qpath, quant_error_bound  # noqa: F401  (qpath: a fixture)

THREADS = (1, 2, 3)
# float panels are 8, 16 or 32 columns wide by path, quantized ones 16; these widths give items of
# 1 ... 13 panels at 1-3 threads (two items a thread), full or with a partial last panel
WIDTHS = sorted({c * n - r for c in (16, 32) for n in range(1, 27) for r in (0, 5) if c * n - r > 0})


@pytest.fixture
def threads():
    before = attnkit.get_num_threads()
    yield
    attnkit.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("K", [5, 1030], ids=lambda k: f"K{k}")   # one depth block; three (512 + 512 + 6)
def test_float_one_row(isa, threads, dtype, K, rng):
    W = rng.standard_normal((max(WIDTHS), K)).astype(dtype)
    B = rng.standard_normal(max(WIDTHS)).astype(dtype)
    x = rng.standard_normal((1, K)).astype(dtype)
    for N in WIDTHS:
        w, bias = W[:N], B[:N] if N % 2 else None
        act = ("relu", "gelu", None)[N % 3]
        packed = attnkit.pack_linear(w, bias)
        want = ref.linear(as64(x), as64(w), None if bias is None else as64(bias), activation=act)
        for t in THREADS:
            attnkit.set_num_threads(t)
            got = attnkit.linear(x, packed, activation=act)
            assert_close(got, want, dtype, scale=gemm_scale(x, w, bias), what=f"N={N} threads={t}")


# unpacked W at one row: items of up to 32 x threads, each split into 4 runs of rows; these counts give runs
# of 1 row, of equal and unequal lengths (a step with only some runs left), and items of different sizes
ROWS_N = list(range(1, 13)) + [63, 64, 65, 255, 256, 257, 1000, 1003, 2050]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["contiguous", "row_stride", "reversed"])
def test_unpacked_float_one_row(isa, threads, dtype, layout, rng):
    for K in (1, 15, 16, 17, 31, 32, 33, 100, 1030):    # around one and two vectors (8 or 16 lanes), long
        big = rng.standard_normal((max(ROWS_N), K + 3)).astype(dtype)
        x = rng.standard_normal((1, K)).astype(dtype)
        for N in ROWS_N:
            w = {"contiguous": np.ascontiguousarray(big[:N, :K]), "row_stride": big[:N, :K],
                 "reversed": big[:N, :K][::-1]}[layout]
            b = rng.standard_normal(N).astype(dtype) if N % 2 else None
            act = ("gelu", None, "relu")[N % 3]
            want = ref.linear(as64(x), as64(w), None if b is None else as64(b), activation=act)
            for t in THREADS:
                attnkit.set_num_threads(t)
                assert_close(attnkit.linear(x, w, b, activation=act), want, dtype, scale=gemm_scale(x, w, b),
                             what=f"K={K} N={N} threads={t}")


@pytest.mark.parametrize("K", [7, 600], ids=lambda k: f"K{k}")
def test_swiglu_one_row(isa, threads, K, rng):
    F = max(WIDTHS) // 2
    Wg, Wu = rng.standard_normal((F, K)).astype(np.float32), rng.standard_normal((F, K)).astype(np.float32)
    x = rng.standard_normal((1, K)).astype(np.float32)
    for f in sorted({n // 2 for n in WIDTHS if n > 1}):
        wg, wu = Wg[:f], Wu[:f]
        packed = attnkit.pack_swiglu(wg, wu)
        g, u = as64(x) @ as64(wg).T, as64(x) @ as64(wu).T
        want = ref.silu(g) * u
        scale = 1.13 * (np.abs(as64(x)) @ np.abs(as64(wg)).T) * (np.abs(u) + np.abs(as64(x)) @ np.abs(as64(wu)).T) + 1e-30
        for t in THREADS:
            attnkit.set_num_threads(t)
            assert_close(attnkit.linear(x, packed), want, np.float32, scale=scale, what=f"F={f} threads={t}")


@QDTYPES
@pytest.mark.parametrize("K", [70, 300], ids=lambda k: f"K{k}")
def test_quantized_one_row(qpath, threads, rng, qdtype, group, K):
    x, W, B = make(rng, 3, max(WIDTHS), K)
    for N in WIDTHS:
        w, b = W[:N], B[:N] if N % 2 else None
        act = (None, "relu", "gelu")[N % 3]
        qw = attnkit.quantize_linear(w, b, dtype=qdtype, group_size=group)
        for t in THREADS:
            attnkit.set_num_threads(t)
            one = attnkit.linear(x[:1], qw, activation=act)
            check(one, x[:1], w, b, qdtype, group or 0, act, "f32", what=f"N={N} threads={t}")
            rows = attnkit.linear(x, qw, activation=act)
            np.testing.assert_array_equal(one[0], rows[0], err_msg=f"N={N} threads={t}: one row vs three")


@QDTYPES
def test_quantized_swiglu_one_row(qpath, threads, rng, qdtype, group):
    K, F = 96, max(WIDTHS) // 2
    x = rng.standard_normal((3, K)).astype(np.float32)
    Wg, Wu = rng.standard_normal((F, K)).astype(np.float32), rng.standard_normal((F, K)).astype(np.float32)
    for f in (1, 7, 8, 9, 40, 63, 64, 65, 130, 200, 416):
        qw = attnkit.quantize_swiglu(Wg[:f], Wu[:f], dtype=qdtype, group_size=group)
        for t in THREADS:
            attnkit.set_num_threads(t)
            one, rows = attnkit.linear(x[:1], qw), attnkit.linear(x, qw)
            np.testing.assert_array_equal(one[0], rows[0], err_msg=f"F={f} threads={t}: one row vs three")
            g, u = as64(x[:1]) @ as64(Wg[:f]).T, as64(x[:1]) @ as64(Wu[:f]).T
            eg = quant_error_bound(x[:1], Wg[:f], qdtype, group or 0)
            eu = quant_error_bound(x[:1], Wu[:f], qdtype, group or 0)
            want = ref.silu(g) * u
            bound = 1.1 * eg * (np.abs(u) + eu) + (np.abs(ref.silu(g)) + 1.1 * eg) * eu + 1e-5 * np.abs(want) + 1e-6
            assert (np.abs(one - want) <= bound).all(), f"F={f} threads={t}: max err/bound {np.max(np.abs(one - want) / bound):.3f}"
