"""The boxes of Figure 1 of "Attention Is All You Need" (Vaswani et al., 2017), on attnkit's kernels.

    LayerNorm            "Add & Norm"                       (section 3.1; the residual add is fused in the kernel)
    FeedForward          "Feed Forward"                     (section 3.3)
    MultiHeadAttention   "(Masked) Multi-Head Attention"    (section 3.2.2)
    Embeddings           "Input/Output Embedding" + "Positional Encoding"   (sections 3.4, 3.5)
    Generator            "Linear" + "Softmax" on top of the decoder

Shapes: B batch, L (query) length, S (key/memory) length, E = d_model, H heads, Dh = E / H head size.
Every layer computes in the dtype of its weights (float32 or float64); the arithmetic runs in attnkit's C++ kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .. import functional as F
from ..quant import pack as _pack
from .module import Module, as_float_array

__all__ = [
    "AttentionMask", "LayerNorm", "FeedForward", "MultiHeadAttention",
    "Embeddings", "sinusoidal_positional_encoding", "Generator", "ACTIVATIONS", "RMSNorm", "RelativePositionBias",
]

# Activation names accepted by FeedForward -> the name of the fused epilogue of attnkit.linear.
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_tanh", "silu": "silu"}


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may see, in the terms of ``attnkit.scaled_dot_product_attention``.

    Built once per forward pass and shared by every layer (no per-layer mask work):
      attn_mask        None, bool (True = may attend) or additive float, broadcastable to (B, H, L, S)
      is_causal        key j visible to query i iff j <= i (+ offset, see causal_alignment)
      causal_alignment "top_left" (full sequences) or "bottom_right" (new queries at the end of a KV cache)
      kv_lengths       None or (B,) ints: keys j >= kv_lengths[b] are invisible (right padding, cache fill)
    """

    attn_mask: Optional[np.ndarray] = None
    is_causal: bool = False
    causal_alignment: str = "top_left"
    kv_lengths: Optional[np.ndarray] = None

    @classmethod
    def from_torch(cls, attn_mask=None, key_padding_mask=None, is_causal: bool = False, *,
                   batch_size: int, num_heads: int, q_len: int, k_len: int, dtype) -> "AttentionMask":
        """Translate PyTorch's ``nn.MultiheadAttention`` / ``nn.Transformer`` mask conventions.

        attn_mask: (L, S) or (B*H, L, S); bool True = NOT allowed to attend, or float added to the scores.
        key_padding_mask: (B, S); bool True = padding (ignored key), or float added to the scores.
        is_causal: apply the causal mask (PyTorch treats it as a hint that attn_mask is causal; here it is
            honoured even when attn_mask is None). A 2-D attn_mask that *is* the causal mask is recognised and
            replaced by the kernel's causal path.
        Right-padded bool key padding masks become ``kv_lengths`` (no mask array at all).
        """
        mask = None
        if attn_mask is not None:
            mask = np.asarray(attn_mask)
            if mask.ndim == 2:
                if mask.shape != (q_len, k_len):
                    raise ValueError(f"attn_mask: has shape {mask.shape}, expected ({q_len}, {k_len})")
                if _is_causal_mask(mask):
                    mask, is_causal = None, True
            elif mask.ndim == 3:
                if mask.shape != (batch_size * num_heads, q_len, k_len):
                    raise ValueError(f"attn_mask: has shape {mask.shape}, "
                                     f"expected ({batch_size * num_heads}, {q_len}, {k_len})")
                mask = mask.reshape(batch_size, num_heads, q_len, k_len)       # (B, H, L, S)
            else:
                raise ValueError(f"attn_mask: must be 2-D (L, S) or 3-D (B*H, L, S), got shape {mask.shape}")
            if mask is not None:
                mask = ~mask if mask.dtype == bool else mask.astype(dtype, copy=False)

        kv_lengths = None
        if key_padding_mask is not None:
            pad = np.asarray(key_padding_mask)
            if pad.shape != (batch_size, k_len):
                raise ValueError(f"key_padding_mask: has shape {pad.shape}, expected ({batch_size}, {k_len})")
            if pad.dtype == bool:
                lengths = k_len - pad.sum(axis=1)
                if np.array_equal(pad, np.arange(k_len) >= lengths[:, None]):   # right padding
                    kv_lengths = lengths.astype(np.int64)
                else:
                    keep = ~pad[:, None, None, :]                                # (B, 1, 1, S)
                    if mask is None:
                        mask = keep
                    elif mask.dtype == bool:
                        mask = mask & keep
                    else:
                        mask = np.where(keep, mask, mask.dtype.type(-np.inf))
            else:
                add = pad.astype(dtype, copy=False)[:, None, None, :]           # (B, 1, 1, S)
                if mask is None:
                    mask = add
                elif mask.dtype == bool:
                    mask = np.where(mask, add, add.dtype.type(-np.inf))
                else:
                    mask = mask + add
        return cls(mask, bool(is_causal), "top_left", kv_lengths)

    def with_bias(self, bias: Optional[np.ndarray]) -> "AttentionMask":
        """This mask plus an additive per-head bias (1 or B, H, L, S) (T5's relative positions): the bias becomes
        the float mask, a bool mask folds in as -inf where a key may not be seen; kv_lengths stay."""
        if bias is None:
            return self
        mask = self.attn_mask
        if mask is None:
            mask = bias
        elif mask.dtype == bool:
            mask = np.where(mask, bias, bias.dtype.type(-np.inf))
        else:
            mask = mask + bias
        return AttentionMask(mask, self.is_causal, self.causal_alignment, self.kv_lengths)

    def select_rows(self, rows: np.ndarray) -> "AttentionMask":
        """The same mask for the batch rows ``rows`` (beam search duplicates rows)."""
        mask = self.attn_mask
        if mask is not None and mask.ndim == 4 and mask.shape[0] != 1:
            mask = mask[rows]
        lengths = None if self.kv_lengths is None else self.kv_lengths[rows]
        return AttentionMask(mask, self.is_causal, self.causal_alignment, lengths)


NO_MASK = AttentionMask()


def _is_causal_mask(mask: np.ndarray) -> bool:
    """True when the (L, L) PyTorch-convention mask is exactly the causal mask."""
    if mask.shape[0] != mask.shape[1]:
        return False
    future = np.triu(np.ones(mask.shape, dtype=bool), k=1)
    if mask.dtype == bool:
        return bool(np.array_equal(mask, future))
    return bool(np.all(mask[future] == -np.inf) and np.all(mask[~future] == 0))


# --------------------------------------------------------------------------------------------------
# Add & Norm
# --------------------------------------------------------------------------------------------------

class LayerNorm(Module):
    """LayerNorm(x + residual) over the last dimension; the residual add is fused into the kernel."""

    def __init__(self, weight, bias, eps: float = 1e-5):
        self.weight = as_float_array(weight, _float_dtype(weight), "LayerNorm.weight")
        if self.weight.ndim != 1:
            raise ValueError(f"LayerNorm.weight: must be 1-D, got shape {self.weight.shape}")
        self.bias = as_float_array(bias, self.weight.dtype, "LayerNorm.bias", self.weight.shape)
        self.eps = float(eps)

    @classmethod
    def init(cls, d_model: int, eps: float = 1e-5, dtype=np.float32) -> "LayerNorm":
        return cls(np.ones(d_model, dtype), np.zeros(d_model, dtype), eps)

    def __call__(self, x, residual=None, *, return_sum: bool = False):
        """x, residual (..., E) -> LN(x + residual); with return_sum also the sum x + residual (pre-LN needs it)."""
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps,
                            residual=residual, return_sum=return_sum)


class RMSNorm(Module):
    """RMSNorm(x + residual) = s / sqrt(mean(s^2) + eps) * weight (T5's LayerNorm: no mean, no bias); called like
    :class:`LayerNorm`, so a stack takes either."""

    def __init__(self, weight, eps: float = 1e-6):
        self.weight = as_float_array(weight, _float_dtype(weight), "RMSNorm.weight")
        if self.weight.ndim != 1:
            raise ValueError(f"RMSNorm.weight: must be 1-D, got shape {self.weight.shape}")
        self.eps = float(eps)

    def __call__(self, x, residual=None, *, return_sum: bool = False):
        return F.rms_norm(x, self.weight, self.eps, residual=residual, return_sum=return_sum)


# --------------------------------------------------------------------------------------------------
# Position-wise feed-forward network
# --------------------------------------------------------------------------------------------------

class FeedForward(Module):
    """FFN(x) = act(x W1^T + b1) W2^T + b2, the same two linear maps at every position (section 3.3).

    Weights in PyTorch's layout: w1 (F, E), w2 (E, F); biases may be None (T5). The activation is fused into
    the first GEMM. ``w_up`` (F, E) makes it a gated unit (T5 v1.1's gated-GELU):
    FFN(x) = (act(x W1^T + b1) * (x W_up^T)) W2^T + b2.
    """

    def __init__(self, w1, b1, w2, b2, activation: str = "relu", *, w_up=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        dtype = _float_dtype(w1)
        w1 = as_float_array(w1, dtype, "FeedForward.w1", (None, None))
        d_ff, d_model = w1.shape
        self.b1 = None if b1 is None else as_float_array(b1, dtype, "FeedForward.b1", (d_ff,))
        w2 = as_float_array(w2, dtype, "FeedForward.w2", (d_model, d_ff))
        self.b2 = None if b2 is None else as_float_array(b2, dtype, "FeedForward.b2", (d_model,))
        self.w1, self.w2 = _pack(w1), _pack(w2)       # packed once, only the packed copy kept
        self.w_up = None if w_up is None else _pack(as_float_array(w_up, dtype, "FeedForward.w_up", (d_ff, d_model)))
        self.activation = activation

    @classmethod
    def init(cls, d_model: int, d_ff: int, activation: str = "relu", *, rng=None, dtype=np.float32):
        rng = np.random.default_rng(rng)
        return cls(_uniform(rng, (d_ff, d_model), dtype), _small(rng, d_ff, dtype),
                   _uniform(rng, (d_model, d_ff), dtype), _small(rng, d_model, dtype), activation)

    def __call__(self, x):
        h = F.linear(x, self.w1, self.b1, activation=ACTIVATIONS[self.activation])   # (B, L, F)
        if self.w_up is not None:
            h *= F.linear(x, self.w_up)                                               # gate * up
        return F.linear(h, self.w2, self.b2)                                         # (B, L, E)


# --------------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------------

class MultiHeadAttention(Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Weights in ``torch.nn.MultiheadAttention``'s layout: in_proj_weight ((H + 2 Hk) Dh, E) = [W^Q; W^K; W^V],
    in_proj_bias ((H + 2 Hk) Dh,), out_proj_weight (E, E), out_proj_bias (E,); Dh = E / H. num_kv_heads
    Hk < H (a divisor of H) gives grouped-query attention: query head h reads K/V head h // (H / Hk).

    * self attention   ``mha(x, mask=...)``: one packed QKV GEMM, Q, K, V are strided views of its output.
    * cross attention  ``mha(x, memory, mask=...)``, or ``mha.project_kv(memory)`` once and then
                       ``mha.attend(mha.project_q(x), k, v, mask)`` at every decoding step.
    * causal           ``mask=AttentionMask(is_causal=True)``; incrementally with ``mha(x, cache=cache)``.

    The computation is ``attnkit.functional``'s, shared with ``attnkit.multi_head_attention``.
    """

    def __init__(self, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads: int,
                 *, num_kv_heads: Optional[int] = None, scale: Optional[float] = None, head_dim: Optional[int] = None):
        dtype = _float_dtype(in_proj_weight)
        in_proj_weight = as_float_array(in_proj_weight, dtype, "MultiHeadAttention.in_proj_weight", (None, None))
        rows, d_model = in_proj_weight.shape
        H, Hk = int(num_heads), int(num_heads if num_kv_heads is None else num_kv_heads)
        if H <= 0 or (head_dim is None and d_model % H):
            raise ValueError(f"num_heads: {num_heads} does not divide d_model={d_model}")
        if Hk <= 0 or H % Hk:
            raise ValueError(f"num_kv_heads: expected a positive divisor of num_heads={H}, got {num_kv_heads!r}")
        Dh = d_model // H if head_dim is None else int(head_dim)                  # T5's d_kv may differ from E / H
        if Dh <= 0:
            raise ValueError(f"head_dim: expected a positive int, got {head_dim!r}")
        if rows != (H + 2 * Hk) * Dh:
            raise ValueError(f"MultiHeadAttention.in_proj_weight: has shape {in_proj_weight.shape}, "
                             f"expected ({(H + 2 * Hk) * Dh}, {d_model}) = [W_q; W_k; W_v]")
        self.in_proj_bias = None if in_proj_bias is None else \
            as_float_array(in_proj_bias, dtype, "MultiHeadAttention.in_proj_bias", (rows,))
        out_proj_weight = as_float_array(out_proj_weight, dtype, "MultiHeadAttention.out_proj_weight",
                                         (d_model, H * Dh))
        self.out_proj_bias = None if out_proj_bias is None else \
            as_float_array(out_proj_bias, dtype, "MultiHeadAttention.out_proj_bias", (d_model,))
        self.num_heads, self.num_kv_heads = H, Hk
        self.head_dim = Dh
        # packed once, only the packed copies kept: W^Q apart from [W^K; W^V], so that cross
        # attention projects the query and the memory with no copy of either
        n = H * self.head_dim
        self.q_proj_weight = _pack(in_proj_weight[:n])
        self.kv_proj_weight = _pack(in_proj_weight[n:])
        self.out_proj_weight = _pack(out_proj_weight)
        self.scale = 1.0 / math.sqrt(self.head_dim) if scale is None else float(scale)

    def _bias(self, part: str):
        """The q or the kv part of in_proj_bias (None without biases)."""
        if self.in_proj_bias is None:
            return None
        n = self.num_heads * self.head_dim
        return self.in_proj_bias[:n] if part == "q" else self.in_proj_bias[n:]

    @classmethod
    def init(cls, d_model: int, num_heads: int, *, num_kv_heads: Optional[int] = None, rng=None,
             dtype=np.float32) -> "MultiHeadAttention":
        rng = np.random.default_rng(rng)
        rows = (num_heads + 2 * (num_kv_heads or num_heads)) * (d_model // num_heads)   # (H + 2 Hk) * Dh
        return cls(_uniform(rng, (rows, d_model), dtype), _small(rng, rows, dtype),
                   _uniform(rng, (d_model, d_model), dtype), _small(rng, d_model, dtype), num_heads,
                   num_kv_heads=num_kv_heads)

    @property
    def d_model(self) -> int:
        return self.out_proj_weight.shape[0]

    @property
    def in_proj_weight(self) -> np.ndarray:
        """[W^Q; W^K; W^V] ((H + 2 Hk) Dh, E), read back from the packed weights (a new array)."""
        return np.concatenate([self.q_proj_weight.unpack(), self.kv_proj_weight.unpack()])

    def _weights(self, prefix: str = ""):
        """torch.nn.MultiheadAttention's names: in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias."""
        yield prefix + "in_proj_weight", self.in_proj_weight
        if self.in_proj_bias is not None:
            yield prefix + "in_proj_bias", self.in_proj_bias
        yield prefix + "out_proj_weight", self.out_proj_weight
        if self.out_proj_bias is not None:
            yield prefix + "out_proj_bias", self.out_proj_bias

    # 1) project ----------------------------------------------------------------------------------
    def project_qkv(self, x) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x (B, L, E) -> q (B, H, L, Dh), k, v (B, Hk, L, Dh): views of one buffer that the two packed
        projections (W^Q, then [W^K; W^V]) write side by side (no copies)."""
        B, L, _ = x.shape
        H, Hk, n = self.num_heads, self.num_kv_heads, self.num_heads * self.head_dim
        y = np.empty((B, L, (H + 2 * Hk) * self.head_dim), x.dtype)           # (B, L, (H + 2 Hk) Dh)
        F.linear(x, self.q_proj_weight, self._bias("q"), out=y[..., :n])
        F.linear(x, self.kv_proj_weight, self._bias("kv"), out=y[..., n:])
        return tuple(F.split_heads(y, (H, Hk, Hk), self.head_dim))

    def project_q(self, x) -> np.ndarray:
        """x (B, L, E) -> q (B, H, L, Dh), a view."""
        (q,) = F.project_heads(x, self.q_proj_weight, self._bias("q"), (self.num_heads,), self.head_dim)
        return q

    def project_kv(self, memory) -> Tuple[np.ndarray, np.ndarray]:
        """memory (B, S, E) -> k, v (B, Hk, S, Dh), views of one GEMM with [W^K; W^V]."""
        return tuple(F.project_heads(memory, self.kv_proj_weight, self._bias("kv"),
                                     (self.num_kv_heads, self.num_kv_heads), self.head_dim))

    # 2) attend  3) merge the heads and project back -----------------------------------------------
    def attend(self, q, k, v, mask: AttentionMask = NO_MASK) -> np.ndarray:
        """q (B, H, L, Dh), k, v (B, Hk, S, Dh) -> (B, L, E)."""
        concat = F.attend_heads(q, k, v, mask.attn_mask, mask.is_causal, self.scale,
                                causal_alignment=mask.causal_alignment, kv_lengths=mask.kv_lengths)   # (B, L, E)
        return F.linear(concat, self.out_proj_weight, self.out_proj_bias)

    def __call__(self, x, memory=None, *, mask: AttentionMask = NO_MASK, cache=None) -> np.ndarray:
        """Self attention (memory None) or cross attention on memory (B, S, E). x (B, L, E) -> (B, L, E).

        cache: a LayerKVCache; x then holds new positions only and attends causally to everything cached
        (mask is not used), see :meth:`cached`.
        """
        if cache is not None:
            return self.cached(x, cache, mask.attn_mask)
        if memory is None:
            q, k, v = self.project_qkv(x)
        else:
            q, (k, v) = self.project_q(x), self.project_kv(memory)
        return self.attend(q, k, v, mask)

    def cached(self, x, cache, bias=None) -> np.ndarray:
        """Causal self attention of new positions x (B, n, E) over everything in ``cache`` (a LayerKVCache).

        The new keys and values are written in place into the preallocated cache, then the queries attend to
        views of it, bottom-right aligned (new query i sees cached keys j <= i + length_b) and cut at each
        sequence's own length. bias: an additive float mask (1 or B, H, n, S) on top (T5's position bias for
        these queries over the S cached keys).
        """
        q, k, v = self.project_qkv(x)                          # (B, H, n, Dh), (B, Hk, n, Dh)
        keys, values, lengths = cache.append(k, v)             # (B, Hk, S, Dh) views, lengths (B,)
        if bias is not None:
            bias = bias[..., :keys.shape[2]]                   # the S keys now in view
        mask = AttentionMask(bias, is_causal=True, causal_alignment="bottom_right", kv_lengths=lengths)
        return self.attend(q, keys, values, mask)


# --------------------------------------------------------------------------------------------------
# Embeddings and positional encoding
# --------------------------------------------------------------------------------------------------

def sinusoidal_positional_encoding(max_len: int, d_model: int, dtype=np.float32) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d))  -> (max_len, d)."""
    position = np.arange(max_len, dtype=np.float64)[:, None]                   # (max_len, 1)
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)   # (ceil(d/2),)
    angles = position * inv_freq                                               # (max_len, ceil(d/2))
    pe = np.empty((max_len, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return pe.astype(dtype)


class Embeddings(Module):
    """Token embedding scaled by sqrt(d_model) plus a positional encoding (sections 3.4 and 3.5).

    positions: "sinusoidal" (the paper; a fixed table), "learned" (``position_weight`` (max_len, E), also any
    fixed table a checkpoint family defines) or "none". The families differ only in configuration:
      scale            sqrt(d_model) (default; Marian, M2M100), 1.0 (BART without scale_embedding, T5)
      position_offset  table row of position 0 (BART's learned positions and M2M100's start at row 2)
      padding_idx      M2M100: padding tokens take row padding_idx and are not counted as positions
      norm             a LayerNorm after the sum (BART's and mBART's layernorm_embedding)
    """

    def __init__(self, weight, *, positions: str = "sinusoidal", position_weight=None, max_len: int = 1024,
                 scale: Optional[float] = None, position_offset: int = 0, padding_idx: Optional[int] = None,
                 norm=None):
        self.weight = as_float_array(weight, _float_dtype(weight), "Embeddings.weight", (None, None))
        d_model = self.weight.shape[1]
        if positions == "sinusoidal":
            self.position_weight = sinusoidal_positional_encoding(max_len, d_model, self.weight.dtype)
        elif positions == "learned":
            self.position_weight = as_float_array(position_weight, self.weight.dtype,
                                                  "Embeddings.position_weight", (None, d_model))
        elif positions == "none":
            self.position_weight = None
        else:
            raise ValueError(f"positions: expected 'sinusoidal', 'learned' or 'none', got {positions!r}")
        self.positions = positions
        self.scale = math.sqrt(d_model) if scale is None else float(scale)
        self.position_offset = int(position_offset)
        self.padding_idx = None if padding_idx is None else int(padding_idx)
        self.norm = norm

    @classmethod
    def init(cls, vocab_size: int, d_model: int, *, positions: str = "sinusoidal", max_len: int = 1024,
             rng=None, dtype=np.float32) -> "Embeddings":
        rng = np.random.default_rng(rng)
        learned = rng.normal(0, 0.02, (max_len, d_model)).astype(dtype) if positions == "learned" else None
        return cls(rng.normal(0, d_model ** -0.5, (vocab_size, d_model)).astype(dtype),
                   positions=positions, position_weight=learned, max_len=max_len)

    def __call__(self, ids, start=0) -> np.ndarray:
        """ids (B, L) ints; start: first position, an int or (B,) per sequence -> (B, L, E)."""
        x = self._sum(ids, start)
        return x if self.norm is None else self.norm(x)

    def _sum(self, ids, start) -> np.ndarray:
        ids = np.asarray(ids)
        B, L = ids.shape
        if ids.size and (ids.min() < 0 or ids.max() >= self.weight.shape[0]):
            raise ValueError(f"ids: token ids must lie in [0, {self.weight.shape[0]})")
        x = self.weight[ids]                                                       # (B, L, E)
        if self.scale != 1.0:
            x *= x.dtype.type(self.scale)
        if self.position_weight is not None:
            if self.padding_idx is None:
                positions = np.asarray(start).reshape(-1, 1) + np.arange(L)       # (B or 1, L)
            else:                                                                 # padding is not counted
                real = ids != self.padding_idx
                positions = np.where(real, np.asarray(start).reshape(-1, 1) + np.cumsum(real, axis=1) - 1,
                                     self.padding_idx - self.position_offset)
            positions = positions + self.position_offset
            if positions.max(initial=0) >= len(self.position_weight):
                if self.positions != "sinusoidal":
                    raise ValueError(f"position {int(positions.max())} is beyond the {len(self.position_weight)} "
                                     f"learned positions")
                self.position_weight = sinusoidal_positional_encoding(
                    2 * int(positions.max()) + 1, self.weight.shape[1], self.weight.dtype)
            x += self.position_weight[positions]                                   # (B, L, E)
        return x


class Generator(Module):
    """The final "Linear" (d_model -> vocabulary) whose softmax gives next-token probabilities.

    bias: Marian's and BART's final_logits_bias too. input_scale: multiplies the input first (T5 with a head
    tied to its embeddings scales the decoder output by d_model ** -0.5)."""

    def __init__(self, weight, bias=None, *, input_scale: Optional[float] = None):
        weight = as_float_array(weight, _float_dtype(weight), "Generator.weight", (None, None))
        self.bias = None if bias is None else as_float_array(bias, weight.dtype, "Generator.bias", (weight.shape[0],))
        self.weight = _pack(weight)   # packed once, only the packed copy kept
        self.input_scale = None if input_scale is None else float(input_scale)

    @classmethod
    def init(cls, d_model: int, vocab_size: int, *, rng=None, dtype=np.float32) -> "Generator":
        rng = np.random.default_rng(rng)
        return cls(_uniform(rng, (vocab_size, d_model), dtype), _small(rng, vocab_size, dtype))

    def __call__(self, x) -> np.ndarray:
        """x (..., E) -> logits (..., V). ``attnkit.softmax`` of them gives the probabilities."""
        if self.input_scale is not None:
            x = x * x.dtype.type(self.input_scale)
        return F.linear(x, self.weight, self.bias)


class RelativePositionBias(Module):
    """T5's relative position bias: a learned scalar per head for each bucket of key position - query position,
    added to the attention scores of every layer of a stack (computed once per length, then sliced).

    weight (num_buckets, H). Buckets: exact offsets below max_exact = num_buckets / 2 (/ 4 when bidirectional,
    where the sign takes half the buckets), then logarithmic up to max_distance, beyond it the last bucket.
    """

    def __init__(self, weight, *, bidirectional: bool, max_distance: int = 128):
        self.weight = as_float_array(weight, _float_dtype(weight), "RelativePositionBias.weight", (None, None))
        self.bidirectional, self.max_distance = bool(bidirectional), int(max_distance)
        self._table = None                                   # bias (1, H, n, n) of the longest length asked so far

    @property
    def num_buckets(self) -> int:
        return self.weight.shape[0]

    def buckets(self, relative: np.ndarray) -> np.ndarray:
        """relative positions (key - query) -> bucket indices, same shape."""
        n = self.num_buckets
        out = np.zeros(relative.shape, dtype=np.int64)
        if self.bidirectional:
            n //= 2
            out += (relative > 0) * n
            distance = np.abs(relative)
        else:
            distance = -np.minimum(relative, 0)
        exact = n // 2
        with np.errstate(divide="ignore"):
            log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
        large = exact + (log_ratio / np.float32(math.log(self.max_distance / exact)) * np.float32(n - exact)).astype(np.int64)
        large = np.minimum(large, n - 1)
        return out + np.where(distance < exact, distance, large)

    def __call__(self, q_len: int, k_len: int, q_start: int = 0) -> np.ndarray:
        """The bias (1, H, q_len, k_len) for queries at positions q_start.. over keys 0..k_len-1, a view of a table
        computed once per length (decoding steps slice one row of it)."""
        n = max(q_start + q_len, k_len)
        if self._table is None or self._table.shape[2] < n:
            n = max(n, 2 * (0 if self._table is None else self._table.shape[2]))
            rel = np.arange(n)[None, :] - np.arange(n)[:, None]                     # (n, n) key - query
            values = self.weight[self.buckets(rel)]                                 # (n, n, H)
            self._table = np.ascontiguousarray(values.transpose(2, 0, 1))[None]     # (1, H, n, n)
        return self._table[:, :, q_start:q_start + q_len, :k_len]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _float_dtype(array) -> np.dtype:
    """float64, float16 and bfloat16 (ml_dtypes) weights keep their dtype (half precision is stored in half and
    computed in float32 by the kernels); everything else computes in float32."""
    dt = getattr(array, "dtype", None)
    if isinstance(dt, np.dtype) and dt.name in ("float64", "float16", "bfloat16"):
        return dt
    return np.dtype(np.float64) if "float64" in str(dt) else np.dtype(np.float32)


def _uniform(rng, shape, dtype):
    """Xavier/Glorot uniform, as PyTorch initialises attention projections."""
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-bound, bound, shape).astype(dtype)


def _small(rng, n, dtype):
    """Small random biases (zero in PyTorch's init; random here so tests exercise them)."""
    return rng.normal(0.0, 0.02, n).astype(dtype)
