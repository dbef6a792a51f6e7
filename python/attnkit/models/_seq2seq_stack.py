"""The Hugging Face checkpoint layout of the encoder-decoders (attnkit.models.seq2seq): the attnkit.nn.Transformer
built from a state dict's tensors, and random tensors under the same names (``Seq2SeqLM.from_config``)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np

from .. import nn

__all__ = ["build_bart_like", "build_t5", "random_state_dict"]


def _marian_table(n: int, d: int) -> np.ndarray:
    """Marian's sinusoidal table: sin of the even-indexed angles in the first half, cos of the odd in the second."""
    j = np.arange(d)
    angles = np.arange(n)[:, None] / np.power(10000, 2 * (j // 2) / d)[None, :]   # (n, d) float64
    half = d // 2 + d % 2
    out = np.empty((n, d))
    out[:, :half] = np.sin(angles[:, 0::2])
    out[:, half:] = np.cos(angles[:, 1::2])
    return out.astype(np.float32)


def _m2m_table(n: int, d: int, padding_idx: Optional[int]) -> np.ndarray:
    """M2M100's (fairseq's) sinusoidal table, computed in float32 as there; the padding row is zero."""
    half = d // 2
    step = np.float32(math.log(10000) / (half - 1))
    freq = np.exp(np.arange(half, dtype=np.float32) * -step)
    angles = np.arange(n, dtype=np.float32)[:, None] * freq[None, :]
    out = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if d % 2:
        out = np.concatenate([out, np.zeros((n, 1), np.float32)], axis=1)
    if padding_idx is not None:
        out[padding_idx] = 0
    return out.astype(np.float32)


def _check_unused(t: nn.StateDict, origin: str, ignore=()) -> None:
    unused = [k for k in t.unused() if not any(k.endswith(s) for s in ignore)]
    if unused:
        shown = ", ".join(f"'{k}'" for k in unused[:6])
        raise ValueError(f"{origin}: tensors not part of the model as configured: {shown}"
                         f"{' ...' if len(unused) > 6 else ''}")


def _count_layers(t: nn.StateDict, prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in t.tensors):
        n += 1
    return n


def build_bart_like(tensors, c, dtype, origin) -> nn.Transformer:
    """The nn.Transformer of a Marian / BART / mBART / M2M100 state dict (c: its Seq2SeqConfig)."""
    p = "model." if any(k.startswith("model.") for k in tensors) else ""
    t = nn.StateDict(tensors, "", dtype=dtype, origin=origin)
    E, H, Dh = c.d_model, c.encoder_heads, c.head_dim
    V = c.vocab_size
    Vd = c.decoder_vocab_size or V

    def norm(name):
        return nn.LayerNorm(t(f"{name}.weight", (E,)), t(f"{name}.bias", (E,)), c.eps)

    def attention(name):
        w = np.concatenate([t(f"{name}.{x}_proj.weight", (E, E)) for x in "qkv"])
        b = np.concatenate([t(f"{name}.{x}_proj.bias", (E,)) for x in "qkv"])
        return nn.MultiHeadAttention(w, b, t(f"{name}.out_proj.weight", (E, E)), t(f"{name}.out_proj.bias", (E,)), H)

    def ffn(name, d_ff):
        return nn.FeedForward(t(f"{name}fc1.weight", (d_ff, E)), t(f"{name}fc1.bias", (d_ff,)),
                              t(f"{name}fc2.weight", (E, d_ff)), t(f"{name}fc2.bias", (E,)), c.activation)

    for stack, n in (("encoder", c.encoder_layers), ("decoder", c.decoder_layers)):
        found = _count_layers(t, f"{p}{stack}.layers.")
        if found != n:
            raise ValueError(f"{origin}: {found} {stack} layers, config.json says {n} ({stack}_layers)")
    enc_layers = [nn.EncoderLayer(attention(f"{p}encoder.layers.{i}.self_attn"),
                                  ffn(f"{p}encoder.layers.{i}.", c.encoder_ffn),
                                  norm(f"{p}encoder.layers.{i}.self_attn_layer_norm"),
                                  norm(f"{p}encoder.layers.{i}.final_layer_norm"), norm_first=c.norm_first)
                  for i in range(c.encoder_layers)]
    dec_layers = [nn.DecoderLayer(attention(f"{p}decoder.layers.{i}.self_attn"),
                                  attention(f"{p}decoder.layers.{i}.encoder_attn"),
                                  ffn(f"{p}decoder.layers.{i}.", c.decoder_ffn),
                                  norm(f"{p}decoder.layers.{i}.self_attn_layer_norm"),
                                  norm(f"{p}decoder.layers.{i}.encoder_attn_layer_norm"),
                                  norm(f"{p}decoder.layers.{i}.final_layer_norm"), norm_first=c.norm_first)
                  for i in range(c.decoder_layers)]
    encoder = nn.Encoder(enc_layers, norm(f"{p}encoder.layer_norm") if c.final_norm else None)
    decoder = nn.Decoder(dec_layers, norm(f"{p}decoder.layer_norm") if c.final_norm else None)

    def table(name, key):
        if key in tensors:
            if c.positions == "learned" or c.model_type == "marian":
                return t(key, (None, E))
        if c.positions == "learned":
            return t(key, (c.max_position_embeddings + c.position_offset, E))     # raises: missing
        if c.positions == "sinusoidal_marian":
            return _marian_table(c.max_position_embeddings, E)
        return _m2m_table(c.max_position_embeddings + c.position_offset, E, c.pad_token_id)

    def embedding(stack, weight, vocab):
        if t.has(f"{p}{stack}.embed_tokens.weight"):             # a stack's own table wins (untied files)
            weight = t(f"{p}{stack}.embed_tokens.weight", (vocab, E))
        pos = table(stack, f"{p}{stack}.embed_positions.weight")
        return nn.Embeddings(weight, positions="learned", position_weight=pos,
                             scale=math.sqrt(E) if c.scale_embedding else 1.0, position_offset=c.position_offset,
                             padding_idx=c.pad_token_id if c.positions == "sinusoidal_m2m" else None,
                             norm=norm(f"{p}{stack}.layernorm_embedding") if c.layernorm_embedding else None)

    shared = None
    if c.share_embeddings and t.has(f"{p}shared.weight"):
        shared = t(f"{p}shared.weight", (V, E))
    src_embed = embedding("encoder", shared, V)
    tgt_embed = embedding("decoder", shared, Vd)
    if c.tie_word_embeddings or not t.has("lm_head.weight"):
        if not c.tie_word_embeddings:
            raise ValueError(f"{origin}: missing tensor 'lm_head.weight' (tie_word_embeddings is false)")
        head = tgt_embed.weight
    else:
        head = t("lm_head.weight", (Vd, E))
    bias = None
    if c.final_logits_bias and t.has(f"{'' if 'final_logits_bias' in tensors else p}final_logits_bias"):
        bias = t("final_logits_bias" if "final_logits_bias" in tensors else f"{p}final_logits_bias",
                 (1, Vd)).reshape(Vd)
    generator = nn.Generator(head, bias)
    _check_unused(t, origin, ignore=("embed_tokens.weight", "embed_positions.weight", "shared.weight",
                                     "lm_head.weight", "final_logits_bias"))
    return nn.Transformer(encoder, decoder, src_embed=src_embed, tgt_embed=tgt_embed, generator=generator)


def build_t5(tensors, c, dtype, origin) -> nn.Transformer:
    """The nn.Transformer of a T5 state dict (c: its Seq2SeqConfig)."""
    t = nn.StateDict(tensors, "", dtype=dtype, origin=origin)
    E, H, Dk = c.d_model, c.encoder_heads, c.head_dim
    inner = H * Dk

    def norm(name):
        return nn.RMSNorm(t(f"{name}.weight", (E,)), c.eps)

    def attention(name):
        w = np.concatenate([t(f"{name}.{x}.weight", (inner, E)) for x in "qkv"])
        return nn.MultiHeadAttention(w, None, t(f"{name}.o.weight", (E, inner)), None, H, head_dim=Dk, scale=1.0)

    def ffn(name, d_ff):
        if c.gated:
            return nn.FeedForward(t(f"{name}.wi_0.weight", (d_ff, E)), None, t(f"{name}.wo.weight", (E, d_ff)),
                                  None, c.activation, w_up=t(f"{name}.wi_1.weight", (d_ff, E)))
        return nn.FeedForward(t(f"{name}.wi.weight", (d_ff, E)), None, t(f"{name}.wo.weight", (E, d_ff)), None,
                              c.activation)

    for stack, n in (("encoder", c.encoder_layers), ("decoder", c.decoder_layers)):
        found = _count_layers(t, f"{stack}.block.")
        if found != n:
            raise ValueError(f"{origin}: {found} {stack} blocks, config.json says {n}")

    def bias(stack, bidirectional):
        w = t(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (c.relative_buckets, H))
        return nn.RelativePositionBias(w, bidirectional=bidirectional, max_distance=c.relative_max_distance)

    enc = [nn.EncoderLayer(attention(f"encoder.block.{i}.layer.0.SelfAttention"),
                           ffn(f"encoder.block.{i}.layer.1.DenseReluDense", c.encoder_ffn),
                           norm(f"encoder.block.{i}.layer.0.layer_norm"), norm(f"encoder.block.{i}.layer.1.layer_norm"),
                           norm_first=True) for i in range(c.encoder_layers)]
    dec = [nn.DecoderLayer(attention(f"decoder.block.{i}.layer.0.SelfAttention"),
                           attention(f"decoder.block.{i}.layer.1.EncDecAttention"),
                           ffn(f"decoder.block.{i}.layer.2.DenseReluDense", c.decoder_ffn),
                           norm(f"decoder.block.{i}.layer.0.layer_norm"), norm(f"decoder.block.{i}.layer.1.layer_norm"),
                           norm(f"decoder.block.{i}.layer.2.layer_norm"), norm_first=True)
           for i in range(c.decoder_layers)]
    encoder = nn.Encoder(enc, norm("encoder.final_layer_norm"),
                         position_bias=bias("encoder", True) if c.encoder_layers else None)
    decoder = nn.Decoder(dec, norm("decoder.final_layer_norm"), position_bias=bias("decoder", False))
    V = c.vocab_size
    key = "shared.weight" if t.has("shared.weight") else "encoder.embed_tokens.weight"
    shared = t(key, (V, E))
    embed = nn.Embeddings(shared, positions="none", scale=1.0)
    if c.tie_word_embeddings or not t.has("lm_head.weight"):
        head = shared
    else:
        head = t("lm_head.weight", (V, E))
    generator = nn.Generator(head, None, input_scale=c.output_scale)
    _check_unused(t, origin, ignore=("embed_tokens.weight", "shared.weight", "lm_head.weight",
                                     "EncDecAttention.relative_attention_bias.weight"))
    return nn.Transformer(encoder, decoder, src_embed=embed, tgt_embed=embed, generator=generator)


def random_state_dict(c, *, rng=None, std: float = 0.02) -> Dict[str, np.ndarray]:
    """Random float32 tensors N(0, std) (norms at 1, 0) under the names a Hugging Face checkpoint of config ``c``
    (a Seq2SeqConfig) has: what build_bart_like / build_t5 read."""
    rng = np.random.default_rng(rng)
    E, V = c.d_model, c.vocab_size
    shapes: Dict[str, tuple] = {}
    norms: List[str] = []
    if c.model_type == "t5":
        inner = c.encoder_heads * c.head_dim
        shapes["shared.weight"] = (V, E)
        for stack, n, d_ff in (("encoder", c.encoder_layers, c.encoder_ffn), ("decoder", c.decoder_layers, c.decoder_ffn)):
            for i in range(n):
                p = f"{stack}.block.{i}.layer."
                parts = ["0.SelfAttention"] + (["1.EncDecAttention"] if stack == "decoder" else [])
                for a in parts:
                    shapes.update({f"{p}{a}.{x}.weight": (inner, E) for x in "qkv"})
                    shapes[f"{p}{a}.o.weight"] = (E, inner)
                ff = f"{p}{len(parts)}.DenseReluDense."
                shapes.update({ff + w: (d_ff, E) for w in (("wi_0.weight", "wi_1.weight") if c.gated else ("wi.weight",))})
                shapes[ff + "wo.weight"] = (E, d_ff)
                norms += [f"{p}{j}.layer_norm" for j in range(len(parts) + 1)]
            if n:
                shapes[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
                    (c.relative_buckets, c.encoder_heads)
            norms.append(f"{stack}.final_layer_norm")
        if not c.tie_word_embeddings:
            shapes["lm_head.weight"] = (V, E)
    else:
        Vd = c.decoder_vocab_size or V
        if c.share_embeddings:
            shapes["model.shared.weight"] = (V, E)
        else:
            shapes.update({"model.encoder.embed_tokens.weight": (V, E), "model.decoder.embed_tokens.weight": (Vd, E)})
        for stack, n, d_ff in (("encoder", c.encoder_layers, c.encoder_ffn), ("decoder", c.decoder_layers, c.decoder_ffn)):
            s = f"model.{stack}."
            if c.positions == "learned":
                shapes[s + "embed_positions.weight"] = (c.max_position_embeddings + c.position_offset, E)
            for i in range(n):
                p = f"{s}layers.{i}."
                for a in ["self_attn"] + (["encoder_attn"] if stack == "decoder" else []):
                    shapes.update({f"{p}{a}.{x}_proj.weight": (E, E) for x in ("q", "k", "v", "out")})
                    shapes.update({f"{p}{a}.{x}_proj.bias": (E,) for x in ("q", "k", "v", "out")})
                    norms.append(f"{p}{a}_layer_norm")
                shapes.update({p + "fc1.weight": (d_ff, E), p + "fc1.bias": (d_ff,), p + "fc2.weight": (E, d_ff),
                               p + "fc2.bias": (E,)})
                norms.append(p + "final_layer_norm")
            norms += [s + "layer_norm"] * c.final_norm + [s + "layernorm_embedding"] * c.layernorm_embedding
        if not c.tie_word_embeddings:
            shapes["lm_head.weight"] = (Vd, E)
        if c.final_logits_bias:
            shapes["final_logits_bias"] = (1, Vd)
    tensors = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(std) for k, s in shapes.items()}
    for name in norms:
        tensors[name + ".weight"] = np.ones(E, np.float32)
        if c.norm == "layer":
            tensors[name + ".bias"] = np.zeros(E, np.float32)
    return tensors
