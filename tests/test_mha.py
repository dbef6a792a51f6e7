"""attnkit.multi_head_attention (packed in-projection, split heads, attend, merge, out-projection)
against the float64 oracle and, where installed, torch.nn.MultiheadAttention."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import attnkit
from conftest import as64, assert_close, dtypes, laid_out, load_reference

ref = load_reference()
mha = attnkit.multi_head_attention


def make_weights(rng, E, H, Hkv, Dh, E_out, dtype, bias=True, out_proj=True):
    """Packed [Wq; Wk; Wv] ((H + 2 Hkv) Dh, E), its bias, and the out projection (E_out, H Dh)."""
    rows = (H + 2 * Hkv) * Dh
    w_in = (rng.standard_normal((rows, E)) / np.sqrt(E)).astype(dtype)
    b_in = rng.standard_normal(rows).astype(dtype) if bias else None
    w_out = (rng.standard_normal((E_out, H * Dh)) / np.sqrt(H * Dh)).astype(dtype) if out_proj else None
    b_out = rng.standard_normal(E_out).astype(dtype) if (bias and out_proj) else None
    return w_in, b_in, w_out, b_out


def check_mha(backend, query, key, value, H, weights, **kw):
    dtype = query.dtype
    got = backend.call(mha, query, key, value, H, *weights, **kw)      # and checks no input was written to
    # the oracle gets separate float64 copies (self attention stays self attention: same values)
    want = ref.multi_head_attention(as64(query), as64(key), as64(value), H, *map(as64, weights),
                                    **dict(kw, attn_mask=as64(kw.get("attn_mask"))))
    assert isinstance(got, np.ndarray) and got.dtype == dtype
    assert_close(got, want, dtype)
    return got


@st.composite
def mha_cases(draw):
    H = draw(st.sampled_from([1, 2, 3, 4, 8]))
    Hkv = draw(st.sampled_from([d for d in range(1, H + 1) if H % d == 0]))
    return dict(
        B=draw(st.integers(1, 3)), Lq=draw(st.sampled_from([1, 2, 7, 16, 33, 65])),
        Lk=draw(st.sampled_from([1, 5, 16, 31, 64, 100])), E=draw(st.sampled_from([4, 16, 24, 64, 96])),
        H=H, Hkv=Hkv, Dh=draw(st.sampled_from([1, 3, 8, 16, 17, 64])), E_out=draw(st.sampled_from([None, 5, 32])),
        kind=draw(st.sampled_from(["self", "cross", "cross_kv_apart"])), bias=draw(st.booleans()),
        out_proj=draw(st.booleans()), mask=draw(st.sampled_from(["none", "bool", "float", "key_padding"])),
        is_causal=draw(st.booleans()), align=draw(st.sampled_from(["top_left", "bottom_right"])),
        kv_lengths=draw(st.booleans()), scale=draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
        seed=draw(st.integers(0, 2**32 - 1)))


@dtypes
@given(case=mha_cases())
def test_generated_cases(backend, dtype, case):
    c = case
    rng = np.random.default_rng(c["seed"])
    B, E, H, Hkv = c["B"], c["E"], c["H"], c["Hkv"]
    E_out = E if c["E_out"] is None else c["E_out"]
    Lq = c["Lq"]
    Lk = Lq if c["kind"] == "self" else c["Lk"]
    x = rng.standard_normal((B, Lq, E)).astype(dtype)
    if c["kind"] == "self":
        key = value = x                              # one array: the packed QKV path
    elif c["kind"] == "cross":
        key = value = rng.standard_normal((B, Lk, E)).astype(dtype)
    else:
        key, value = (rng.standard_normal((B, Lk, E)).astype(dtype) for _ in range(2))
    weights = make_weights(rng, E, H, Hkv, c["Dh"], E_out, dtype, c["bias"], c["out_proj"])
    mask = None
    if c["mask"] == "bool":
        mask = np.asarray(rng.random((Lq, Lk)) < 0.7)
    elif c["mask"] == "float":
        mask = rng.standard_normal((B, H, Lq, Lk)).astype(dtype)
    elif c["mask"] == "key_padding":
        mask = np.asarray(rng.random((B, 1, 1, Lk)) < 0.8)
    lengths = rng.integers(0, Lk + 1, size=B) if c["kv_lengths"] else None
    check_mha(backend, x, key, value, H, weights, num_kv_heads=Hkv, attn_mask=mask, is_causal=c["is_causal"],
              causal_alignment=c["align"], kv_lengths=lengths, scale=c["scale"])


@dtypes
@pytest.mark.parametrize("E,H,Hkv", [(64, 8, 8), (64, 8, 2), (96, 6, 1), (80, 5, 5), (128, 2, 2)],
                         ids=["mha", "gqa4", "mqa", "Dh16", "Dh64"])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_standard_shapes(backend, dtype, E, H, Hkv, kind, rng):
    B, Lq = 2, 70
    Lk = Lq if kind == "self" else 131
    x = rng.standard_normal((B, Lq, E)).astype(dtype)
    mem = x if kind == "self" else rng.standard_normal((B, Lk, E)).astype(dtype)
    weights = make_weights(rng, E, H, Hkv, E // H, E, dtype)
    check_mha(backend, x, mem, mem, H, weights, num_kv_heads=Hkv)
    check_mha(backend, x, mem, mem, H, weights, num_kv_heads=Hkv, is_causal=True, causal_alignment="bottom_right")


@dtypes
def test_non_contiguous_inputs(backend, dtype, rng):
    B, L, E, H = 3, 21, 32, 4
    x = laid_out(rng.standard_normal((B, L, E)).astype(dtype), "interleaved")   # an (L, B, E) buffer
    mem = rng.standard_normal((B, 2 * 30, E)).astype(dtype)[:, ::2]              # (B, 30, E), every other row
    w_in, b_in, w_out, b_out = make_weights(rng, E, H, H, 8, E, dtype)
    w_in = laid_out(w_in, "fortran")
    check_mha(backend, x, x, x, H, (w_in, b_in, w_out, b_out), is_causal=True)
    check_mha(backend, x, mem, mem, H, (w_in, b_in, w_out, b_out))


@dtypes
def test_decode_step_with_cache_lengths(backend, dtype, rng):
    # one new token per sequence against a padded memory of per-sequence lengths
    B, Lk, E, H, Hkv = 4, 300, 64, 8, 2
    x = rng.standard_normal((B, 1, E)).astype(dtype)
    mem = rng.standard_normal((B, Lk, E)).astype(dtype)
    weights = make_weights(rng, E, H, Hkv, 8, E, dtype)
    check_mha(backend, x, mem, mem, H, weights, num_kv_heads=Hkv, kv_lengths=np.array([300, 1, 0, 150]),
              is_causal=True, causal_alignment="bottom_right")


# --------------------------------------------------------------------------------------------
# One named test per mechanism, at the module level
# --------------------------------------------------------------------------------------------
@dtypes
def test_causal_later_tokens_do_not_change_earlier_outputs(backend, dtype, rng):
    B, L, E, H = 2, 90, 32, 4
    x = rng.standard_normal((B, L, E)).astype(dtype)
    weights = make_weights(rng, E, H, H, 8, E, dtype)
    before = backend.call(mha, x, x, x, H, *weights, is_causal=True)
    t = 41
    x2 = x.copy()
    x2[:, t:] = rng.standard_normal(x2[:, t:].shape).astype(dtype)
    after = backend.call(mha, x2, x2, x2, H, *weights, is_causal=True)
    np.testing.assert_array_equal(after[:, :t], before[:, :t])
    assert not np.allclose(after[:, t:], before[:, t:])


@dtypes
def test_cross_output_follows_query_length(backend, dtype, rng):
    B, E, H, Lk = 2, 24, 3, 17
    mem = rng.standard_normal((B, Lk, E)).astype(dtype)
    weights = make_weights(rng, E, H, H, 8, 11, dtype)
    for Lq in (1, 4, 40):
        x = rng.standard_normal((B, Lq, E)).astype(dtype)
        out = check_mha(backend, x, mem, mem, H, weights)
        assert out.shape == (B, Lq, 11)
        perm = rng.permutation(Lk)                   # the memory is a set of (key, value) pairs
        assert_close(backend.call(mha, x, mem[:, perm], mem[:, perm], H, *weights), as64(out), dtype)


@dtypes
def test_self_attention_permutation_equivariant(backend, dtype, rng):
    B, L, E, H = 2, 37, 32, 4
    x = rng.standard_normal((B, L, E)).astype(dtype)
    weights = make_weights(rng, E, H, H, 8, E, dtype)
    out = backend.call(mha, x, x, x, H, *weights)
    perm = rng.permutation(L)
    xp = np.ascontiguousarray(x[:, perm])
    assert_close(backend.call(mha, xp, xp, xp, H, *weights), as64(out)[:, perm], dtype)


@dtypes
def test_self_attention_same_array_equals_copies(backend, dtype, rng):
    # the packed-QKV fast path (query is key is value) computes what three separate arrays give
    B, L, E, H = 2, 29, 48, 6
    x = rng.standard_normal((B, L, E)).astype(dtype)
    weights = make_weights(rng, E, H, 2, 8, E, dtype)
    packed = backend.call(mha, x, x, x, H, *weights, num_kv_heads=2, is_causal=True)
    apart = backend.call(mha, x, x.copy(), x.copy(), H, *weights, num_kv_heads=2, is_causal=True)
    assert_close(packed, as64(apart), dtype)


# --------------------------------------------------------------------------------------------
# PyTorch (skipped cleanly where it is not installed)
# --------------------------------------------------------------------------------------------
@dtypes
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_matches_torch(backend, dtype, kind, mask_kind, rng):
    torch = pytest.importorskip("torch")
    B, Lq, E, H = 2, 19, 32, 4
    Lk = Lq if kind == "self" else 26
    x = rng.standard_normal((B, Lq, E)).astype(dtype)
    mem = x if kind == "self" else rng.standard_normal((B, Lk, E)).astype(dtype)
    module = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            # values representable in dtype, so both sides see the same parameters
            p.copy_(torch.from_numpy(as64((rng.standard_normal(tuple(p.shape)) / np.sqrt(E)).astype(dtype))))
    keep, t_mask = None, None
    if mask_kind == "bool":
        keep = np.asarray(rng.random((Lq, Lk)) < 0.7)
        keep[:, 0] = True                            # torch returns NaN for rows that see nothing
        t_mask = torch.from_numpy(~keep)             # torch: True = may NOT attend
    elif mask_kind == "float":
        keep = rng.standard_normal((Lq, Lk)).astype(dtype)
        t_mask = torch.from_numpy(as64(keep))
    elif mask_kind == "causal":
        t_mask = torch.from_numpy(~np.tril(np.ones((Lq, Lk), dtype=bool)))
    want, _ = module(torch.from_numpy(as64(x)), torch.from_numpy(as64(mem)), torch.from_numpy(as64(mem)),
                     attn_mask=t_mask, need_weights=False)
    w = lambda p: p.detach().numpy().astype(dtype)
    got = backend.call(mha, x, mem, mem, H, w(module.in_proj_weight), w(module.in_proj_bias),
                       w(module.out_proj.weight), w(module.out_proj.bias), attn_mask=keep,
                       is_causal=mask_kind == "causal")
    assert got.dtype == dtype
    assert_close(got, want.detach().numpy(), dtype)
