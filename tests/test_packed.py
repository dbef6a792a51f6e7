"""Prepacked linear weights (attnkit.pack_linear): the same results as linear on the plain weight
and as the float64 oracle, on every ISA path; repacked when the path changes; clear errors."""
import numpy as np
import pytest

import attnkit
from attnkit import reference as ref
from conftest import as64, assert_close

dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])

# rows around the direct-A limit (64) and the micro-tile heights; widths around the panels
SHAPES = [(1, 768, 2304), (2, 5, 7), (3, 37, 41), (8, 768, 96), (13, 64, 33), (64, 100, 65),
          (65, 129, 31), (200, 600, 130), (1, 1030, 17)]


@pytest.fixture
def isa(backend):
    """The CPU path of this test's backend (packed weights are NumPy/CPU only)."""
    if not backend.name.startswith("cpu:"):
        pytest.skip(f"{backend.name}: prepacked weights are for the CPU kernels")
    return backend.isa


def gemm_scale(x, w, b):
    return 1.13 * (np.abs(as64(x)) @ np.abs(as64(w)).T + (0 if b is None else np.abs(as64(b))))


@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_packed_matches_oracle_and_plain(isa, dtype, shape, rng):
    M, K, N = shape
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    for bias in (b, None):
        packed = attnkit.pack_linear(w, bias)
        assert packed.shape == (N, K) and packed.dtype == dtype and packed.isa == isa
        assert packed.nbytes >= w.nbytes
        for act in (None, "relu", "gelu", "gelu_tanh"):
            got = attnkit.linear(x, packed, activation=act)
            want = ref.linear(as64(x), as64(w), as64(bias), activation=act)
            assert got.dtype == dtype
            assert_close(got, want, dtype, scale=gemm_scale(x, w, bias))
            plain = attnkit.linear(x, w, bias, activation=act)
            assert_close(got, plain, dtype, scale=gemm_scale(x, w, bias))


@dtypes
def test_packed_strided_inputs_and_batch_dims(isa, dtype, rng):
    w = rng.standard_normal((40, 24)).astype(dtype)[::2, ::2]     # (20, 12), strided
    packed = attnkit.pack_linear(w)
    x = rng.standard_normal((3, 5, 24)).astype(dtype)[:, :, ::2]  # (3, 5, 12), strided rows
    assert_close(attnkit.linear(x, packed), ref.linear(as64(x), as64(w)), dtype, scale=gemm_scale(x, w, None))
    x1 = rng.standard_normal(12).astype(dtype)                    # 1-d x
    assert_close(attnkit.linear(x1, packed), ref.linear(as64(x1), as64(w)), dtype, scale=gemm_scale(x1, w, None))
    bias = rng.standard_normal(40).astype(dtype)[::2]              # bias passed at the call, strided
    assert_close(attnkit.linear(x, packed, bias), ref.linear(as64(x), as64(w), as64(bias)), dtype,
                 scale=gemm_scale(x, w, bias))
    assert attnkit.linear(np.zeros((0, 12), dtype), packed).shape == (0, 20)


def test_packed_repacks_when_the_isa_changes(rng):
    usable = attnkit.get_config()["usable_isas"]
    previous = attnkit.get_config()["isa"]
    x = rng.standard_normal((9, 70)).astype(np.float32)
    w = rng.standard_normal((50, 70)).astype(np.float32)
    b = rng.standard_normal(50).astype(np.float32)
    want = ref.linear(as64(x), as64(w), as64(b))
    try:
        attnkit.set_isa(usable[-1])
        packed = attnkit.pack_linear(w, b)
        for isa in list(reversed(usable)) + list(usable):   # every path, then back again
            attnkit.set_isa(isa)
            assert_close(attnkit.linear(x, packed), want, np.float32, scale=gemm_scale(x, w, b))
            assert packed.isa == isa
    finally:
        attnkit.set_isa(previous)


def test_packed_errors(rng):
    w = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    packed = attnkit.pack_linear(w, b)
    with pytest.raises(ValueError, match="bias: the packed weight holds a bias"):
        attnkit.linear(np.ones((2, 4), np.float32), packed, b)
    with pytest.raises(ValueError, match="weight: expected shape"):
        attnkit.linear(np.ones((2, 5), np.float32), packed)
    with pytest.raises(TypeError, match="weight: dtype float32 does not match x's float64"):
        attnkit.linear(np.ones((2, 4)), packed)
    with pytest.raises(TypeError, match="weight: unsupported dtype int32"):
        attnkit.pack_linear(np.ones((3, 3), np.int32))
    with pytest.raises(ValueError, match="weight: expected shape"):
        attnkit.pack_linear(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="bias: expected shape"):
        attnkit.pack_linear(w, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="bias: expected a numpy.ndarray"):
        attnkit.pack_linear(w, [1.0] * 6)
    with pytest.raises(TypeError, match="weight: already packed"):
        attnkit.pack_linear(packed)
    x = np.ones((2, 4), np.float32)
    before = x.copy()
    attnkit.linear(x, packed)
    assert np.array_equal(x, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 17), (33, 15), (64, 512), (65, 513), (100, 1030), (31, 2049)],
                         ids=lambda s: "x".join(map(str, s)))
def test_pack_round_trip_exact(isa, dtype, shape, rng):
    """pack_linear copies W into its panels exactly (16-deep blocks, panels past N and depths past K padded):
    unpack gives back every bit, from contiguous, strided and reversed weights."""
    N, K = shape
    base = rng.standard_normal((N, K)).astype(dtype)
    for w in (base, np.asfortranarray(base), rng.standard_normal((N, 2 * K)).astype(dtype)[:, ::2], base[::-1]):
        np.testing.assert_array_equal(attnkit.pack_linear(w).unpack(), w)


def test_packed_large_weight_on_huge_pages(isa, rng):
    """A weight of 4 MiB and more is packed into 2 MiB-aligned memory marked for huge pages: the same panels."""
    w = rng.standard_normal((1100, 1000)).astype(np.float32)     # 4.4 MB
    packed = attnkit.pack_linear(w)
    np.testing.assert_array_equal(packed.unpack(), w)
    for M in (1, 3, 40):
        x = rng.standard_normal((M, 1000)).astype(np.float32)
        assert_close(attnkit.linear(x, packed), ref.linear(as64(x), as64(w)), np.float32, scale=gemm_scale(x, w, None))
