"""The layers of the Llama-family decoders (attnkit.models.llama) and the Hugging Face checkpoint layout they are
read from and written to: ``build`` (from a state dict), ``checkpoint_tensors`` (save_pretrained) and
``random_state_dict`` (from_config)."""
from __future__ import annotations

from typing import Dict

import numpy as np

from .. import functional as F
from .. import nn
from .. import quant as Q
from ..rope import RotaryTables

__all__ = ["LlamaAttention", "LlamaDecoderLayer", "build", "checkpoint_tensors", "random_state_dict"]


class LlamaAttention:
    """Grouped-query self attention with rotary positions (and, for Mistral, a sliding window)."""

    def __init__(self, c, qkv: F.PackedLinear, o: F.PackedLinear, rotary: RotaryTables):
        self.c, self.qkv, self.o, self.rotary = c, qkv, o, rotary
        self.Hq, self.Hk, self.Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim

    def __call__(self, x, positions, *, cache=None, attn_mask=None, kv_lengths=None):
        """x (B, L, E), positions (B, L) -> (B, L, E). With a LayerKVCache, x's positions follow the cache."""
        B, L, _ = x.shape
        Hq, Hk, Dh = self.Hq, self.Hk, self.Dh
        # 1) project q, k, v in one GEMM; rotate q and k in place inside its output
        qkv = F.linear(x, self.qkv)                                                  # (B, L, (Hq + 2Hk) Dh)
        heads = qkv.reshape(B, L, Hq + 2 * Hk, Dh).transpose(0, 2, 1, 3)           # (B, Hq + 2Hk, L, Dh)
        q, k, v = heads[:, :Hq], heads[:, Hq:Hq + Hk], heads[:, Hq + Hk:]
        cos, sin = self.rotary.get(int(positions.max()) + 1)
        F.apply_rotary(q, cos, sin, positions, out=q)
        F.apply_rotary(k, cos, sin, positions, out=k)
        # 2) attend (grouped KV heads read in place), causal, within the window if any
        align = "top_left"
        if cache is not None:
            k, v, kv_lengths = cache.append(k, v)                                   # (B, Hk, S, Dh) views
            align = "bottom_right"
        merged = np.empty((B, L, Hq, Dh), dtype=x.dtype)                            # (B, L, Hq, Dh)
        F.scaled_dot_product_attention(q, k, v, attn_mask, True, None, Hk != Hq, causal_alignment=align,
                                       kv_lengths=kv_lengths, window=self.c.sliding_window,
                                       out=merged.transpose(0, 2, 1, 3))
        # 3) merge the heads, project out
        return F.linear(merged.reshape(B, L, Hq * Dh), self.o)                      # (B, L, E)


class LlamaDecoderLayer:
    """Pre-norm decoder layer: attention, then the SwiGLU MLP (gate and up packed as one weight)."""

    def __init__(self, input_norm, attn: LlamaAttention, post_norm, gate_up: F.PackedLinear, down: F.PackedLinear,
                 eps: float):
        self.input_norm, self.attn, self.post_norm = input_norm, attn, post_norm
        self.gate_up, self.down, self.eps = gate_up, down, eps

    def __call__(self, h, x, positions, **attn_kw):
        """h = RMSNorm(x) (B, L, E) and the residual stream x -> (the MLP's output, the new stream x).
        The caller fuses the MLP output's residual add into the next norm."""
        a = self.attn(h, positions, **attn_kw)                                          # 1) attend
        h2, x = F.rms_norm(a, self.post_norm, self.eps, residual=x, return_sum=True)    # x += a; h2 = norm(x)
        return F.linear(F.linear(h2, self.gate_up), self.down), x                       # 2) SwiGLU MLP


def build(tensors, c, dtype, origin):
    """(embed, layers, norm, lm_head) of a Llama-family state dict (c: its LlamaConfig)."""
    t = nn.StateDict(tensors, "model." if "model.embed_tokens.weight" in tensors else "", dtype=dtype,
                     origin=origin)
    E, V, Fd = c.hidden_size, c.vocab_size, c.intermediate_size
    Hq, Hk, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    rotary = RotaryTables(int(Dh * c.partial_rotary_factor), c.rope, c.max_position_embeddings, dtype)
    layers = []
    for i in range(c.num_hidden_layers):
        p = f"layers.{i}."
        w_qkv = Q.concat_rows([t(p + "self_attn.q_proj.weight", (Hq * Dh, E)),
                                t(p + "self_attn.k_proj.weight", (Hk * Dh, E)),
                                t(p + "self_attn.v_proj.weight", (Hk * Dh, E))])
        b_qkv = None
        if c.attention_bias:
            b_qkv = np.concatenate([t(p + "self_attn.q_proj.bias", (Hq * Dh,)),
                                    t(p + "self_attn.k_proj.bias", (Hk * Dh,)),
                                    t(p + "self_attn.v_proj.bias", (Hk * Dh,))])
        o = Q.pack(t(p + "self_attn.o_proj.weight", (E, Hq * Dh)),
                          t(p + "self_attn.o_proj.bias", (E,)) if c.o_bias else None)
        attn = LlamaAttention(c, Q.pack(w_qkv, b_qkv), o, rotary)
        del w_qkv
        mb = (lambda n: t(p + f"mlp.{n}_proj.bias", (Fd,))) if c.mlp_bias else (lambda n: None)
        gate_up = Q.pack_gated(t(p + "mlp.gate_proj.weight", (Fd, E)), t(p + "mlp.up_proj.weight", (Fd, E)),
                                mb("gate"), mb("up"))
        down = Q.pack(t(p + "mlp.down_proj.weight", (E, Fd)),
                             t(p + "mlp.down_proj.bias", (E,)) if c.mlp_bias else None)
        layers.append(LlamaDecoderLayer(t(p + "input_layernorm.weight", (E,)), attn,
                                        t(p + "post_attention_layernorm.weight", (E,)), gate_up, down,
                                        c.rms_norm_eps))
    if t.has(f"layers.{c.num_hidden_layers}.input_layernorm.weight"):
        raise ValueError(f"{origin}: more layers than num_hidden_layers = {c.num_hidden_layers}")
    embed = t("embed_tokens.weight", (V, E))
    if "lm_head.weight" in tensors and (not c.tie_word_embeddings or "lm_head.weight_scale" in tensors):
        lm_head = Q.pack_head(nn.StateDict(tensors, "", dtype=dtype, origin=origin)("lm_head.weight", (V, E)),
                              packed=True)
    else:
        lm_head = Q.pack_head(embed)                      # tied: the embedding table, read in place (or quantized,
        embed = Q.tied_embedding(embed, lm_head)          # then the lookup reads the quantized head: no float copy)
    return embed, layers, t("norm.weight", (E,)), lm_head


def checkpoint_tensors(model):
    """(name, array) of a LlamaForCausalLM in the Hugging Face layout (save_pretrained)."""
    c = model.config
    Hq, Hk, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    if isinstance(model.embed, Q.QuantizedEmbedding):  # tied to a quantized head: stored once, quantized
        for suffix, a in Q.to_checkpoint(model.embed.head).items():
            yield "model.embed_tokens." + suffix, a
    else:
        yield "model.embed_tokens.weight", model.embed
    yield "model.norm.weight", model.norm
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", layer.input_norm
        yield p + "post_attention_layernorm.weight", layer.post_norm
        cuts = {"q": slice(0, Hq * Dh), "k": slice(Hq * Dh, (Hq + Hk) * Dh), "v": slice((Hq + Hk) * Dh, None)}
        for n, rows in cuts.items():
            for suffix, a in Q.to_checkpoint(layer.attn.qkv, rows).items():
                yield f"{p}self_attn.{n}_proj.{suffix}", a
            if layer.attn.qkv.bias is not None:
                yield f"{p}self_attn.{n}_proj.bias", layer.attn.qkv.bias[rows]
        for suffix, a in Q.to_checkpoint(layer.attn.o).items():
            yield f"{p}self_attn.o_proj.{suffix}", a
        if layer.attn.o.bias is not None:
            yield f"{p}self_attn.o_proj.bias", layer.attn.o.bias
        Fd = layer.gate_up.shape[0] // 2
        for n, rows in (("gate", slice(0, Fd)), ("up", slice(Fd, None))):
            for suffix, a in Q.to_checkpoint(layer.gate_up, rows).items():
                yield f"{p}mlp.{n}_proj.{suffix}", a
            if layer.gate_up.bias is not None:
                yield f"{p}mlp.{n}_proj.bias", layer.gate_up.bias[rows]
        for suffix, a in Q.to_checkpoint(layer.down).items():
            yield f"{p}mlp.down_proj.{suffix}", a
        if layer.down.bias is not None:
            yield f"{p}mlp.down_proj.bias", layer.down.bias
    if model.lm_head is not model.embed and getattr(model.embed, "head", None) is not model.lm_head:
        for suffix, a in Q.to_checkpoint(model.lm_head).items():
            yield f"lm_head.{suffix}", a


def random_state_dict(c, *, rng=None, std: float = 0.02) -> Dict[str, np.ndarray]:
    """Random float32 tensors N(0, std) (norms at 1) under the names a Hugging Face checkpoint of config ``c``
    (a LlamaConfig) has."""
    rng = np.random.default_rng(rng)
    E, V, Fd, Hq, Hk, Dh = (c.hidden_size, c.vocab_size, c.intermediate_size, c.num_attention_heads,
                            c.num_key_value_heads, c.head_dim)
    shapes = {"embed_tokens.weight": (V, E)}
    for i in range(c.num_hidden_layers):
        p = f"layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (Hq * Dh, E), p + "self_attn.k_proj.weight": (Hk * Dh, E),
                       p + "self_attn.v_proj.weight": (Hk * Dh, E), p + "self_attn.o_proj.weight": (E, Hq * Dh),
                       p + "mlp.gate_proj.weight": (Fd, E), p + "mlp.up_proj.weight": (Fd, E),
                       p + "mlp.down_proj.weight": (E, Fd)})
        if c.attention_bias:
            shapes.update({p + "self_attn.q_proj.bias": (Hq * Dh,), p + "self_attn.k_proj.bias": (Hk * Dh,),
                           p + "self_attn.v_proj.bias": (Hk * Dh,)})
    tensors = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(std) for k, s in shapes.items()}
    for i in range(c.num_hidden_layers):
        for n in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"layers.{i}.{n}.weight"] = np.ones(E, np.float32)
    tensors["norm.weight"] = np.ones(E, np.float32)
    if not c.tie_word_embeddings:
        tensors["lm_head.weight"] = rng.standard_normal((V, E), dtype=np.float32) * np.float32(std)
    return tensors
