"""The amx_bf16 path: bfloat16 linear on AMX tiles (csrc/cpu/gemm_amx.h) against the float64 oracle,
at sizes around its tiles (16 rows, 32 depth, 16-column panels, 2 x 2 tile blocks, 512-deep depth
blocks, 192-row blocks), with every epilogue, any thread count, and the path's availability report.

Where the CPU has no AMX these tests skip, except in an ATTNKIT_AMX_EMULATE build (the tile
instructions in plain C++), which runs the same packing, blocking and epilogues on any AVX-512-BF16 CPU."""
import numpy as np
import pytest

import attnkit
from attnkit import reference as ref
from conftest import as64, assert_close

bf16 = pytest.importorskip("ml_dtypes").bfloat16


@pytest.fixture
def amx():
    """attnkit.set_isa('amx_bf16') for the test (skipped, with the reason, where it cannot run)."""
    config = attnkit.get_config()
    if "amx_bf16" not in config["usable_isas"]:
        pytest.skip(f"amx_bf16: {config['amx']}")
    previous = config["isa"]
    attnkit.set_isa("amx_bf16")
    try:
        yield
    finally:
        attnkit.set_isa(previous)


def rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(bf16)


def gemm_scale(x, w, b):
    return 1.13 * (np.abs(as64(x)) @ np.abs(as64(w)).T + (0 if b is None else np.abs(as64(b))))


@pytest.mark.parametrize("M", [1, 5, 16, 17, 33, 192, 209])
@pytest.mark.parametrize("N", [1, 16, 17, 47, 64])
@pytest.mark.parametrize("K", [1, 31, 32, 33, 512, 545])
@pytest.mark.parametrize("packed", [False, True], ids=["strided", "packed"])
def test_amx_linear_tile_edges(amx, M, N, K, packed, rng):
    x, w, b = rand(rng, (M, K)), rand(rng, (N, K), K ** -0.5), rand(rng, (N,))
    weight = attnkit.pack_linear(w, b) if packed else w
    if packed:
        assert weight.isa == "amx_bf16"
    out = attnkit.linear(x, weight, None if packed else b, activation="relu")
    assert out.dtype == bf16 and out.shape == (M, N)
    want = ref.linear(as64(x), as64(w), as64(b), activation="relu")
    assert_close(out, want, "bfloat16", scale=gemm_scale(x, w, b))


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_tanh"])
def test_amx_linear_any_thread_runs_tiles(amx, threads, activation, rng):
    # many items (row blocks x panel groups) handed to whichever pool thread is free: each must
    # load its tile configuration
    before = attnkit.get_num_threads()
    attnkit.set_num_threads(threads)
    try:
        x, w, b = rand(rng, (3, 130, 600)), rand(rng, (257, 600), 600 ** -0.5), rand(rng, (257,))
        out = attnkit.linear(x, w, b, activation=activation)
        assert_close(out, ref.linear(as64(x), as64(w), as64(b), activation=activation), "bfloat16",
                     scale=gemm_scale(x, w, b))
    finally:
        attnkit.set_num_threads(before)


def test_amx_linear_strided_input(amx, rng):
    x = rand(rng, (40, 2, 70))[:, 1, ::2]   # rows 140 elements apart, depth stride 2
    w = rand(rng, (33, 35), 35 ** -0.5)
    out = attnkit.linear(x, attnkit.pack_linear(w))
    assert_close(out, as64(x) @ as64(w).T, "bfloat16", scale=gemm_scale(x, w, None))


@pytest.mark.parametrize("F", [1, 8, 9, 40])
@pytest.mark.parametrize("M", [2, 37])
def test_amx_swiglu(amx, F, M, rng):
    K = 70
    x, wg, wu = rand(rng, (M, K)), rand(rng, (F, K), K ** -0.5), rand(rng, (F, K), K ** -0.5)
    gated = attnkit.pack_swiglu(wg, wu)
    out = attnkit.linear(x, gated)
    g, u = as64(x) @ as64(wg).T, as64(x) @ as64(wu).T
    assert out.dtype == bf16 and out.shape == (M, F)
    assert_close(out, g / (1 + np.exp(-g)) * u, "bfloat16")


def test_amx_packed_weight_moves_between_layouts(rng):
    # packed for amx_bf16 (16-column panels, 512 deep), then used on avx512_bf16 (32 columns) and back
    usable = attnkit.get_config()["usable_isas"]
    if "amx_bf16" not in usable:
        pytest.skip(f"amx_bf16: {attnkit.get_config()['amx']}")
    previous = attnkit.get_config()["isa"]
    x, w = rand(rng, (20, 600)), rand(rng, (50, 600), 600 ** -0.5)
    want = as64(x) @ as64(w).T
    try:
        attnkit.set_isa("amx_bf16")
        packed = attnkit.pack_linear(w)
        assert packed.isa == "amx_bf16"
        np.testing.assert_array_equal(packed.unpack().view(np.uint16), w.view(np.uint16))
        for isa in ["avx512_bf16", "generic", "amx_bf16"]:
            attnkit.set_isa(isa)
            assert_close(attnkit.linear(x, packed), want, "bfloat16", scale=gemm_scale(x, w, None))
            assert packed.isa == isa
    finally:
        attnkit.set_isa(previous)


def test_amx_status_says_why():
    config = attnkit.get_config()
    assert "amx_bf16" in config["compiled_isas"]
    if "amx_bf16" in config["usable_isas"]:
        assert config["amx"] == "usable" or config["amx"].startswith("emulated: ")
        return
    assert config["amx"].startswith("unusable: ") and len(config["amx"]) > 20
    with pytest.raises(ValueError, match="amx_bf16.*" + config["amx"][len("unusable: "):][:20].replace("(", r"\(")):
        attnkit.set_isa("amx_bf16")
