"""attnkit.nn against NumPy references of the same layers (attnkit.reference's building blocks, float64)
and the whole encoder-decoder against torch.nn.Transformer with random weights (when torch is installed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import as64, assert_close, dtypes, load_reference

R = load_reference()
nn = pytest.importorskip("attnkit.nn")
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor:UserWarning")   # torch, norm_first


# -------------------------------------------------------------------------------------------------
# NumPy references, written from the paper with attnkit.reference's functions, run in float64
# -------------------------------------------------------------------------------------------------
ACT = {"relu": R.relu, "gelu": R.gelu, "gelu_tanh": lambda y: R.gelu(y, approximate="tanh")}


def ref_layer_norm(ln, x):
    return R.layer_norm(as64(x), (x.shape[-1],), as64(ln.weight), as64(ln.bias), ln.eps)


def ref_feed_forward(ff, x):
    h = ACT[ff.activation](R.linear(as64(x), as64(ff.w1), as64(ff.b1)))
    return R.linear(h, as64(ff.w2), as64(ff.b2))


def ref_attention(mha, x, memory=None, allowed=None, is_causal=False):
    """allowed: bool (B, 1, L, S), True = may attend."""
    x = as64(x)
    memory = x if memory is None else as64(memory)
    W, b = as64(mha.in_proj_weight), as64(mha.in_proj_bias)
    E, H = x.shape[-1], mha.num_heads
    Dh = E // H
    B, L, S = x.shape[0], x.shape[1], memory.shape[1]
    q = R.linear(x, W[:E], b[:E]).reshape(B, L, H, Dh).transpose(0, 2, 1, 3)
    k = R.linear(memory, W[E:2 * E], b[E:2 * E]).reshape(B, S, H, Dh).transpose(0, 2, 1, 3)
    v = R.linear(memory, W[2 * E:], b[2 * E:]).reshape(B, S, H, Dh).transpose(0, 2, 1, 3)
    o = R.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=is_causal, scale=mha.scale)
    return R.linear(o.transpose(0, 2, 1, 3).reshape(B, L, E), as64(mha.out_proj_weight), as64(mha.out_proj_bias))


def ref_encoder_layer(layer, x, allowed=None):
    x = as64(x)
    if layer.norm_first:
        x = x + ref_attention(layer.self_attn, ref_layer_norm(layer.norm1, x), allowed=allowed)
        return x + ref_feed_forward(layer.feed_forward, ref_layer_norm(layer.norm2, x))
    x = ref_layer_norm(layer.norm1, x + ref_attention(layer.self_attn, x, allowed=allowed))
    return ref_layer_norm(layer.norm2, x + ref_feed_forward(layer.feed_forward, x))


def ref_decoder_layer(layer, x, memory, memory_allowed=None):
    x = as64(x)
    sa = lambda h: ref_attention(layer.self_attn, h, is_causal=True)                  # noqa: E731
    ca = lambda h: ref_attention(layer.cross_attn, h, memory, allowed=memory_allowed)  # noqa: E731
    if layer.norm_first:
        x = x + sa(ref_layer_norm(layer.norm1, x))
        x = x + ca(ref_layer_norm(layer.norm2, x))
        return x + ref_feed_forward(layer.feed_forward, ref_layer_norm(layer.norm3, x))
    x = ref_layer_norm(layer.norm1, x + sa(x))
    x = ref_layer_norm(layer.norm2, x + ca(x))
    return ref_layer_norm(layer.norm3, x + ref_feed_forward(layer.feed_forward, x))


def ref_positional_encoding(length, d):
    pe = np.zeros((length, d))
    for pos in range(length):
        for i in range(0, d, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / d))
            if i + 1 < d:
                pe[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    return pe


def ref_embed(embed, ids):
    d, L = embed.weight.shape[1], ids.shape[1]
    pe = as64(embed.position_weight[:L]) if embed.positions == "learned" else ref_positional_encoding(L, d)
    return as64(embed.weight)[ids] * math.sqrt(d) + pe


def ref_transformer_logits(model, src_ids, tgt_ids, src_padding=None):
    """Figure 1 end to end: embed + PE, encoder stack, decoder stack, Linear; log-softmax not applied."""
    allowed = None if src_padding is None else ~src_padding[:, None, None, :]
    x = ref_embed(model.src_embed, src_ids)
    for layer in model.encoder.layers:
        x = ref_encoder_layer(layer, x, allowed)
    memory = x if model.encoder.norm is None else ref_layer_norm(model.encoder.norm, x)
    y = ref_embed(model.tgt_embed, tgt_ids)
    for layer in model.decoder.layers:
        y = ref_decoder_layer(layer, y, memory, allowed)
    if model.decoder.norm is not None:
        y = ref_layer_norm(model.decoder.norm, y)
    return R.linear(y, as64(model.generator.weight), as64(model.generator.bias))


def random_norm(rng, d, dtype, eps=1e-5):
    return nn.LayerNorm(1 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d), eps).astype(dtype)


# -------------------------------------------------------------------------------------------------
# The boxes
# -------------------------------------------------------------------------------------------------
@dtypes
def test_layer_norm_with_fused_residual(rng, dtype):
    ln = random_norm(rng, 24, dtype, eps=1e-6)
    x, r = rng.standard_normal((2, 5, 24)).astype(dtype), rng.standard_normal((2, 5, 24)).astype(dtype)
    assert_close(ln(x), ref_layer_norm(ln, x), dtype)
    y, s = ln(x, residual=r, return_sum=True)
    assert_close(y, ref_layer_norm(ln, as64(x) + as64(r)), dtype, what="LN(x + r)")
    assert_close(s, as64(x) + as64(r), dtype, what="x + r")
    assert y.dtype == dtype


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@dtypes
def test_feed_forward(rng, activation, dtype):
    ff = nn.FeedForward.init(16, 40, activation, rng=rng, dtype=dtype)
    x = rng.standard_normal((3, 7, 16)).astype(dtype)
    out = ff(x)
    assert out.shape == (3, 7, 16) and out.dtype == dtype
    assert_close(out, ref_feed_forward(ff, x), dtype)


@dtypes
@pytest.mark.parametrize("case", ["self", "self-right-padding", "self-left-padding", "causal", "cross",
                                  "cross-padding"])
def test_multi_head_attention(rng, dtype, case):
    B, L, S, E, H = 2, 6, 9, 32, 4
    mha = nn.MultiHeadAttention.init(E, H, rng=rng, dtype=dtype)
    x = rng.standard_normal((B, L, E)).astype(dtype)
    memory = rng.standard_normal((B, S, E)).astype(dtype) if case.startswith("cross") else None
    K = L if memory is None else S
    padding = np.zeros((B, K), dtype=bool)
    if "right" in case or case == "cross-padding":
        padding[0, K - 3:] = True
    if "left" in case or case == "cross-padding":
        padding[1, :2] = True
    is_causal = case == "causal"
    mask = nn.AttentionMask.from_torch(None, padding, is_causal, batch_size=B, num_heads=H, q_len=L, k_len=K,
                                       dtype=dtype)
    if case == "self-right-padding":
        assert mask.kv_lengths is not None and mask.attn_mask is None      # right padding -> kv_lengths
    out = mha(x, memory, mask=mask)
    assert out.shape == (B, L, E) and out.dtype == dtype
    ref = ref_attention(mha, x, memory, allowed=~padding[:, None, None, :], is_causal=is_causal)
    assert_close(out, ref, dtype)


def test_cross_attention_projects_memory_once(rng):
    """project_kv once, then attend with any number of query chunks = full cross attention."""
    mha = nn.MultiHeadAttention.init(16, 2, rng=rng, dtype=np.float64)
    x, memory = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 7, 16))
    k, v = mha.project_kv(memory)
    assert k.shape == v.shape == (2, 2, 7, 8)
    steps = [mha.attend(mha.project_q(x[:, i:i + 1]), k, v) for i in range(5)]
    assert_close(np.concatenate(steps, axis=1), ref_attention(mha, x, memory), np.float64)


def test_attention_mask_from_torch_conventions(rng):
    B, H, L, S = 2, 3, 4, 5
    kw = dict(batch_size=B, num_heads=H, q_len=L, k_len=S, dtype=np.float32)
    bool_mask = rng.random((L, S)) < 0.3                                 # True = NOT allowed (PyTorch)
    m = nn.AttentionMask.from_torch(bool_mask, **kw)
    assert m.attn_mask.dtype == bool and np.array_equal(m.attn_mask, ~bool_mask)
    float_mask = np.where(bool_mask, -np.inf, 0.5).astype(np.float32)
    m = nn.AttentionMask.from_torch(float_mask, **kw)
    assert np.array_equal(m.attn_mask, float_mask)
    per_head = rng.random((B * H, L, S)) < 0.3
    m = nn.AttentionMask.from_torch(per_head, **kw)
    assert np.array_equal(m.attn_mask, ~per_head.reshape(B, H, L, S))
    pad = np.array([[False, False, False, True, True], [True, False, False, False, False]])
    m = nn.AttentionMask.from_torch(bool_mask, pad, **kw)                # bool & left padding -> one bool mask
    assert np.array_equal(m.attn_mask, ~bool_mask & ~pad[:, None, None, :]) and m.kv_lengths is None
    m = nn.AttentionMask.from_torch(float_mask, pad, **kw)               # float & padding -> -inf where padded
    assert np.array_equal(m.attn_mask, np.where(pad[:, None, None, :], -np.inf, float_mask))
    right = np.array([[False] * 3 + [True] * 2, [False] * 5])
    m = nn.AttentionMask.from_torch(None, right, **kw)
    assert m.attn_mask is None and m.kv_lengths.tolist() == [3, 5]
    causal = np.triu(np.full((L, L), -np.inf, np.float32), 1)            # torch's generate_square_subsequent_mask
    m = nn.AttentionMask.from_torch(causal, batch_size=B, num_heads=H, q_len=L, k_len=L, dtype=np.float32)
    assert m.is_causal and m.attn_mask is None
    with pytest.raises(ValueError, match="attn_mask"):
        nn.AttentionMask.from_torch(np.zeros((L, S + 1), bool), **kw)
    with pytest.raises(ValueError, match="key_padding_mask"):
        nn.AttentionMask.from_torch(None, np.zeros((B, S + 1), bool), **kw)


# -------------------------------------------------------------------------------------------------
# The layers and stacks
# -------------------------------------------------------------------------------------------------
def make_model(rng, dtype, *, norm_first=False, activation="relu", final_norm=False, layers=2,
               positions="sinusoidal"):
    config = nn.TransformerConfig(d_model=32, nhead=4, num_encoder_layers=layers, num_decoder_layers=layers,
                                  dim_feedforward=48, activation=activation, norm_first=norm_first,
                                  final_norm=final_norm, src_vocab_size=23, tgt_vocab_size=19,
                                  positions=positions, max_len=16, dtype=np.dtype(dtype).name)
    model = nn.Transformer.from_config(config, rng=rng)
    for name, p in model.named_parameters():                            # LayerNorms away from (1, 0)
        if "norm" in name:
            p += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
    return model


@dtypes
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_encoder_and_decoder_layers(rng, dtype, norm_first):
    model = make_model(rng, dtype, norm_first=norm_first, activation="gelu" if norm_first else "relu", layers=1)
    x, y = rng.standard_normal((2, 7, 32)).astype(dtype), rng.standard_normal((2, 5, 32)).astype(dtype)
    padding = np.zeros((2, 7), dtype=bool)
    padding[1, 4:] = True
    enc, dec = model.encoder.layers[0], model.decoder.layers[0]
    mask = nn.AttentionMask.from_torch(None, padding, batch_size=2, num_heads=4, q_len=7, k_len=7, dtype=dtype)
    allowed = ~padding[:, None, None, :]
    assert_close(enc(x, mask), ref_encoder_layer(enc, x, allowed), dtype, what="encoder layer")
    memory_kv = dec.cross_attn.project_kv(x)
    out = dec(y, memory_kv, nn.AttentionMask(is_causal=True), mask)
    assert_close(out, ref_decoder_layer(dec, y, x, allowed), dtype, what="decoder layer")


@dtypes
@pytest.mark.parametrize("variant", ["paper", "pre-LN+gelu+final-norm+learned-positions"])
def test_transformer_end_to_end(rng, dtype, variant):
    """Token ids -> logits through Figure 1, against the NumPy reference."""
    pre = variant != "paper"
    model = make_model(rng, dtype, norm_first=pre, activation="gelu" if pre else "relu", final_norm=pre,
                       positions="learned" if pre else "sinusoidal")
    src, tgt = rng.integers(0, 23, (3, 8)), rng.integers(0, 19, (3, 6))
    padding = np.zeros((3, 8), dtype=bool)
    padding[0, 5:] = True
    padding[2, :3] = True                                                # left padding too
    out = model(src, tgt, src_key_padding_mask=padding, memory_key_padding_mask=padding, tgt_is_causal=True)
    assert out.shape == (3, 6, 32) and out.dtype == dtype
    logits = model.generator(out)
    assert_close(logits, ref_transformer_logits(model, src, tgt, padding), dtype, what="logits")
    # an explicit causal mask in either PyTorch convention gives the same
    bool_causal = np.triu(np.ones((6, 6), dtype=bool), 1)
    out2 = model(src, tgt, tgt_mask=bool_causal, src_key_padding_mask=padding, memory_key_padding_mask=padding)
    np.testing.assert_array_equal(out, out2)


def test_astype_and_parameters(rng):
    model = make_model(rng, np.float32)
    names = dict(model.named_parameters())
    assert "encoder.layers.0.self_attn.in_proj_weight" in names and "decoder.layers.1.norm3.bias" in names
    m64 = model.astype(np.float64)
    assert m64.dtype == np.float64 and model.dtype == np.float32
    assert m64.num_parameters() == model.num_parameters()


def test_config_and_constructor_errors():
    with pytest.raises(ValueError, match="activation"):
        nn.TransformerConfig(activation="swish")
    with pytest.raises(ValueError, match="nhead"):
        nn.TransformerConfig(d_model=30, nhead=4)
    with pytest.raises(ValueError, match="positions"):
        nn.TransformerConfig(positions="rotary")
    with pytest.raises(ValueError, match="in_proj_weight"):
        nn.MultiHeadAttention(np.zeros((8, 4)), np.zeros(8), np.zeros((4, 4)), np.zeros(4), 2)
    with pytest.raises(ValueError, match="out_proj_bias"):
        nn.MultiHeadAttention(np.zeros((12, 4)), np.zeros(12), np.zeros((4, 4)), np.zeros(5), 2)
    with pytest.raises(ValueError, match="num_heads"):
        nn.MultiHeadAttention(np.zeros((12, 4)), np.zeros(12), np.zeros((4, 4)), np.zeros(4), 3)


# -------------------------------------------------------------------------------------------------
# Against torch.nn.Transformer
# -------------------------------------------------------------------------------------------------
def torch_transformer(torch, seed, dtype, **kw):
    torch.manual_seed(seed)
    model = torch.nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                 dim_feedforward=40, dropout=0.0, batch_first=True, **kw)
    with torch.no_grad():                                               # non-trivial norms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(torch.float64 if dtype == np.float64 else torch.float32).eval()


@dtypes
@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")], ids=["post-LN", "pre-LN-gelu"])
@pytest.mark.parametrize("masks", ["float-causal", "bool-causal", "is_causal", "none"])
def test_matches_torch_transformer(rng, dtype, norm_first, activation, masks):
    torch = pytest.importorskip("torch")
    tm = torch_transformer(torch, 0, dtype, norm_first=norm_first, activation=activation)
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    model = nn.Transformer.from_torch_state_dict(sd, nhead=4, activation=activation, norm_first=norm_first,
                                                 dtype=dtype)
    B, S, T = 3, 9, 6
    src = rng.standard_normal((B, S, 32)).astype(dtype)
    tgt = rng.standard_normal((B, T, 32)).astype(dtype)
    src_pad = np.zeros((B, S), dtype=bool)
    src_pad[0, 6:] = True
    src_pad[1, :2] = True                                                # left padding: a general mask
    kw = {}
    if masks == "float-causal":
        kw["tgt_mask"] = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=tm.encoder.norm.weight.dtype)
    elif masks == "bool-causal":
        kw["tgt_mask"] = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    elif masks == "is_causal":
        kw["tgt_mask"] = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=tm.encoder.norm.weight.dtype)
        kw["tgt_is_causal"] = True
    with torch.no_grad():
        ref = tm(torch.from_numpy(src), torch.from_numpy(tgt), src_key_padding_mask=torch.from_numpy(src_pad),
                 memory_key_padding_mask=torch.from_numpy(src_pad), **kw).double().numpy()
    ours_kw = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in kw.items()}
    out = model(src, tgt, src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad, **ours_kw)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, against="torch")

    # the encoder alone (PyTorch's fast path zeroes padded positions: compare the real ones)
    with torch.no_grad():
        mem_ref = tm.encoder(torch.from_numpy(src), src_key_padding_mask=torch.from_numpy(src_pad)).double().numpy()
    memory = model.encode(src, src_key_padding_mask=src_pad)
    assert_close(memory[~src_pad], mem_ref[~src_pad], dtype, against="torch", what="encoder")


def test_torch_tgt_padding_and_per_head_masks(rng):
    torch = pytest.importorskip("torch")
    tm = torch_transformer(torch, 1, np.float64)
    model = nn.Transformer.from_torch_state_dict({k: v.numpy() for k, v in tm.state_dict().items()}, nhead=4,
                                                 dtype=np.float64)
    B, S, T, H = 2, 5, 4, 4
    src, tgt = rng.standard_normal((B, S, 32)), rng.standard_normal((B, T, 32))
    tgt_pad = np.array([[False] * 4, [False, False, True, True]])       # right padding: no empty rows
    memory_mask = np.where(rng.random((B * H, T, S)) < 0.3, -1e9, rng.standard_normal((B * H, T, S)))
    memory_mask[..., 0] = 0.0
    causal = np.triu(np.ones((T, T), dtype=bool), 1)
    with torch.no_grad():
        ref = tm(torch.from_numpy(src), torch.from_numpy(tgt), tgt_mask=torch.from_numpy(causal),
                 memory_mask=torch.from_numpy(memory_mask), tgt_key_padding_mask=torch.from_numpy(tgt_pad)).numpy()
    out = model(src, tgt, tgt_mask=causal, memory_mask=memory_mask, tgt_key_padding_mask=tgt_pad)
    assert_close(out, ref, np.float64, against="torch")


def test_from_torch_state_dict_errors(rng):
    torch = pytest.importorskip("torch")
    sd = {k: v.numpy() for k, v in torch_transformer(torch, 2, np.float32).state_dict().items()}
    missing = dict(sd)
    del missing["decoder.layers.1.multihead_attn.out_proj.bias"]
    with pytest.raises(KeyError, match="decoder.layers.1.multihead_attn.out_proj.bias"):
        nn.Transformer.from_torch_state_dict(missing, nhead=4)
    bad = dict(sd, **{"encoder.layers.0.linear1.weight": np.zeros((40, 31), np.float32)})
    with pytest.raises(ValueError, match=r"encoder.layers.0.linear1.weight.*\(40, 31\)"):
        nn.Transformer.from_torch_state_dict(bad, nhead=4)
    extra = dict(sd, **{"encoder.layers.0.extra": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match="encoder.layers.0.extra"):
        nn.Transformer.from_torch_state_dict(extra, nhead=4)
    nn.Transformer.from_torch_state_dict(extra, nhead=4, strict=False)
    with pytest.raises(ValueError, match="nhead"):
        nn.Transformer.from_torch_state_dict(sd, nhead=5)
    with pytest.raises(ValueError, match="activation"):
        nn.Transformer.from_torch_state_dict(sd, nhead=4, activation="swish")
    prefixed = {"transformer." + k: v for k, v in sd.items()}
    prefixed["embed.weight"] = np.zeros((3, 32), np.float32)
    model = nn.Transformer.from_torch_state_dict(prefixed, nhead=4, prefix="transformer.")
    assert model.config.d_model == 32 and model.config.num_decoder_layers == 2 and model.config.final_norm


def test_from_torch_state_dict_safetensors_file(rng, tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.numpy")
    tm = torch_transformer(torch, 3, np.float32)
    path = tmp_path / "transformer.safetensors"
    st.save_file({k: v.numpy().copy() for k, v in tm.state_dict().items()}, str(path))
    model = nn.Transformer.from_torch_state_dict(str(path), nhead=4)
    src, tgt = rng.standard_normal((1, 4, 32)).astype(np.float32), rng.standard_normal((1, 3, 32)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(src), torch.from_numpy(tgt)).numpy()
    assert_close(model(src, tgt), ref, np.float32, against="torch")


# -------------------------------------------------------------------------------------------------
# KV cache
# -------------------------------------------------------------------------------------------------
def test_kv_cache_fills_in_place_and_reorders(rng):
    cache = nn.KVCache(num_layers=2, batch_size=3, num_heads=2, head_dim=4, max_len=8)
    keys_buffer = cache.keys
    k, v = rng.standard_normal((3, 2, 3, 4)).astype(np.float32), rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    keys, values, lengths = cache.append(0, k, v)
    assert keys.shape == (3, 2, 3, 4) and lengths.tolist() == [3, 3, 3]
    assert np.shares_memory(keys, keys_buffer)                           # a view of the preallocated cache
    cache.append(1, k, v)
    cache.advance(np.array([3, 1, 2]))                                    # a ragged batch
    k1, v1 = rng.standard_normal((3, 2, 1, 4)).astype(np.float32), rng.standard_normal((3, 2, 1, 4)).astype(np.float32)
    keys, values, lengths = cache.append(0, k1, v1)
    assert lengths.tolist() == [4, 2, 3] and keys.shape == (3, 2, 4, 4)
    for b, n in enumerate([3, 1, 2]):
        np.testing.assert_array_equal(keys[b, :, :n], k[b, :, :n])
        np.testing.assert_array_equal(keys[b, :, n], k1[b, :, 0])
        np.testing.assert_array_equal(values[b, :, n], v1[b, :, 0])
    cache.advance(1)
    before = cache.keys[:, :, :, :4].copy()
    cache.reorder(np.array([2, 2, 0]))
    assert cache.lengths.tolist() == [3, 3, 4]
    np.testing.assert_array_equal(cache.keys[:, :, :, :3], before[:, [2, 2, 0], :, :3])
    moved, moved_v = cache.keys[:, :, :, :4].copy(), cache.values[:, :, :, :4].copy()
    cache.reorder(np.array([0, 1, 2, 2, 1, 0]))                          # beam expansion
    assert cache.batch_size == 6 and cache.lengths.tolist() == [3, 3, 4, 4, 3, 3]
    np.testing.assert_array_equal(cache.keys[:, :, :, :4], moved[:, [0, 1, 2, 2, 1, 0]])
    np.testing.assert_array_equal(cache.values[:, :, :, :4], moved_v[:, [0, 1, 2, 2, 1, 0]])
    with pytest.raises(ValueError, match="max_len"):
        cache.append(0, *(2 * [np.zeros((6, 2, 5, 4), np.float32)]))


@dtypes
def test_cached_self_attention_equals_causal_attention(rng, dtype):
    """A ragged batch fed through the cache in chunks of 3, 2, 1, 2, ... positions = causal attention over
    each whole sequence (bottom-right alignment with per-sequence lengths)."""
    E, H = 16, 2
    mha = nn.MultiHeadAttention.init(E, H, rng=rng, dtype=dtype)
    lengths = np.array([9, 4, 7])
    x = rng.standard_normal((3, 9, E)).astype(dtype)                     # row b: positions 0..lengths[b]-1
    cache = nn.KVCache(1, 3, H, E // H, max_len=24, dtype=dtype)
    got = [[] for _ in range(3)]
    pos = np.zeros(3, dtype=np.int64)                                    # next position of each row
    for n in [3, 2, 1, 2, 1, 2, 1]:
        if np.all(pos >= lengths):
            break
        idx = np.minimum(pos[:, None] + np.arange(n), lengths[:, None] - 1)    # (3, n); past the end: filler
        out = mha.cached(x[np.arange(3)[:, None], idx], cache.layer(0))        # (3, n, E)
        fresh = np.minimum(n, np.maximum(lengths - pos, 0))              # real new positions per row
        cache.advance(fresh)                                             # rows keep only their real ones
        for b in range(3):
            got[b].append(out[b, : fresh[b]])
        pos += fresh
    assert np.array_equal(pos, lengths)
    for b in range(3):
        ref = ref_attention(mha, x[b:b + 1, : lengths[b]], is_causal=True)[0]
        assert_close(np.concatenate(got[b]), ref, dtype, what=f"row {b}")


def test_views_not_copies(rng):
    """Q, K, V are strided views of one packed projection; positions past the learned table are refused."""
    mha = nn.MultiHeadAttention.init(16, 4, rng=rng)
    q, k, v = mha.project_qkv(rng.standard_normal((2, 5, 16), dtype=np.float32))
    assert q.shape == (2, 4, 5, 4) and q.base is not None
    assert np.may_share_memory(q, k) and np.may_share_memory(k, v)       # one buffer, interleaved
    embed = nn.Embeddings.init(10, 16, positions="learned", max_len=4, rng=rng)
    with pytest.raises(ValueError, match="learned positions"):
        embed(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="ids"):
        embed(np.full((1, 2), 10))
