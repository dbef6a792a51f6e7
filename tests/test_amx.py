"""The amx_bf16 path: bfloat16 linear on AMX tiles (csrc/cpu/gemm_amx.h) against the float64 oracle,
at sizes around its tiles (16 rows, 32 depth, 16-column panels, 2 x 2 tile blocks, 512-deep depth
blocks, 192-row blocks), with every epilogue, any thread count, and the path's availability report;
bfloat16 attention's two products on tiles (csrc/cpu/attention_amx.h: amx_scores, amx_pv), on every CPU
path through the backend fixture, at head dims and key counts around the tiles, with every option.

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


# ---------------------------------------------------------------------------------------------
# bfloat16 attention (prefill: more than 4 query rows per KV head) on tiles: S^T = K Q^T with the
# head dim padded to 32, O += P V with P rounded to bfloat16 and the keys padded to 32. Run on every
# CPU path (the backend fixture), so the tile path and the others meet the same oracle and bound.
# The bound is the table's bfloat16 one, unchanged: rounding P (relative 2^-9 per weight) adds about
# 5e-4 to the ~1.6e-3 that rounding the output already costs.
# ---------------------------------------------------------------------------------------------
def sdpa_check(backend, q, k, v, **kw):
    rkw = {key: (as64(val) if key == "attn_mask" else val) for key, val in kw.items()}
    out, lse = backend.call(attnkit.scaled_dot_product_attention, q, k, v, return_lse=True, **kw)
    want, want_lse = ref.scaled_dot_product_attention(as64(q), as64(k), as64(v), return_lse=True, **rkw)
    assert out.dtype == bf16 and lse.dtype == bf16
    assert_close(out, want, "bfloat16")
    assert_close(lse, want_lse, "bfloat16", what="lse")


bf16_only = pytest.mark.parametrize("dtype", [np.dtype(bf16)], ids=["bf16"])   # (the backend fixture skips backends without it)


@bf16_only
@pytest.mark.parametrize("E", [1, 8, 31, 32, 33, 64, 100, 128, 160])
@pytest.mark.parametrize("Lk", [1, 15, 16, 17, 31, 33, 300])
@pytest.mark.parametrize("Lq", [5, 70])
def test_sdpa_bf16_tile_edges(backend, dtype, E, Lk, Lq, rng):
    q, k, v = rand(rng, (2, 2, Lq, E)), rand(rng, (2, 2, Lk, E)), rand(rng, (2, 2, Lk, E))
    sdpa_check(backend, q, k, v)


CASES = ["causal", "causal_bottom_right", "causal_bottom_right_long_q", "window", "window_bottom_right", "kv_lengths",
         "bool_mask", "float_mask", "gqa", "split_keys", "strided", "scale", "value_dim", "fully_masked_row"]


@bf16_only
@pytest.mark.parametrize("case", CASES)
def test_sdpa_bf16_options(backend, dtype, case, rng):
    B, Hq, Hk, Lq, Lk, E, Ev = 2, 4, 4, 70, 145, 72, 72
    kw = {}
    if case == "causal":
        kw = dict(is_causal=True)
    if case == "causal_bottom_right":
        kw = dict(is_causal=True, causal_alignment="bottom_right")
    if case == "causal_bottom_right_long_q":    # more queries than keys: the first rows see no key
        Lq, Lk = 150, 33
        kw = dict(is_causal=True, causal_alignment="bottom_right")
    if case in ("window", "window_bottom_right"):
        Lk = 300
        kw = dict(is_causal=True, window=40)
        if case == "window_bottom_right":
            kw["causal_alignment"] = "bottom_right"
    if case == "kv_lengths":
        kw = dict(kv_lengths=np.array([Lk, 17]))
    if case == "gqa":
        Hk = 2
        kw = dict(enable_gqa=True, is_causal=True, causal_alignment="bottom_right")
    if case == "split_keys":                    # few blocks: the keys split over threads, merged by log-sum-exp
        B, Hq, Hk, Lq, Lk, E, Ev = 1, 1, 1, 20, 3000, 128, 128
    if case == "value_dim":
        Ev = 17
    q, k, v = rand(rng, (B, Hq, Lq, E)), rand(rng, (B, Hk, Lk, E)), rand(rng, (B, Hk, Lk, Ev))
    if case == "strided":                       # K and V rows interleaved with other heads, every other element
        k = rand(rng, (B, Lk, Hk, 2 * E)).transpose(0, 2, 1, 3)[..., ::2]
        v = rand(rng, (B, Lk, Hk, 2 * Ev)).transpose(0, 2, 1, 3)[..., ::2]
    if case == "scale":
        kw = dict(scale=0.7)
    if case == "bool_mask":
        kw = dict(attn_mask=rng.random((Lq, Lk)) < 0.7)
    if case == "float_mask":
        kw = dict(attn_mask=rand(rng, (Hq, Lq, Lk)))
    if case == "fully_masked_row":
        mask = rng.random((Lq, Lk)) < 0.7
        mask[[0, 17, 69]] = False
        kw = dict(attn_mask=mask)
    sdpa_check(backend, q, k, v, **kw)
    if case == "fully_masked_row":
        out = backend.call(attnkit.scaled_dot_product_attention, q, k, v, **kw)
        assert np.all(out[:, :, [0, 17, 69]].astype(np.float32) == 0)


def test_sdpa_bf16_tiles_are_used(rng):
    # the tile path rounds P to bfloat16, the avx512 path does not: the results must differ (both
    # within the bound, above), or the tiles did not run
    usable = attnkit.get_config()["usable_isas"]
    if "amx_bf16" not in usable:
        pytest.skip(f"amx_bf16: {attnkit.get_config()['amx']}")
    q, k, v = rand(rng, (1, 2, 64, 64)), rand(rng, (1, 2, 128, 64)), rand(rng, (1, 2, 128, 64))
    previous = attnkit.get_config()["isa"]
    try:
        outs = {}
        for isa in ["avx512", "amx_bf16"]:
            attnkit.set_isa(isa)
            outs[isa] = attnkit.scaled_dot_product_attention(q, k, v)
    finally:
        attnkit.set_isa(previous)
    assert not np.array_equal(outs["avx512"].view(np.uint16), outs["amx_bf16"].view(np.uint16))
