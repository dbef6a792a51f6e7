"""The boxes of Figure 1 of "Attention Is All You Need" (Vaswani et al., 2017), on attnkit's kernels.

    LayerNorm            "Add & Norm"                       (section 3.1; the residual add is fused in the kernel)
    FeedForward          "Feed Forward"                     (section 3.3)
    MultiHeadAttention   "(Masked) Multi-Head Attention"    (section 3.2.2)

Embeddings, Generator and T5's RelativePositionBias are in embeddings.py, AttentionMask in masks.py (both
re-exported here).

Shapes: B batch, L (query) length, S (key/memory) length, E = d_model, H heads, Dh = E / H head size.
Every layer computes in the dtype of its weights (float32 or float64); the arithmetic runs in attnkit's C++ kernels.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from .. import functional as F
from ..quant import pack as _pack
from .embeddings import Embeddings, Generator, RelativePositionBias, sinusoidal_positional_encoding
from .masks import NO_MASK, AttentionMask
from .module import Module, as_float_array, glorot_uniform, small_normal, weight_dtype

__all__ = [
    "AttentionMask", "LayerNorm", "FeedForward", "MultiHeadAttention",
    "Embeddings", "sinusoidal_positional_encoding", "Generator", "ACTIVATIONS", "RMSNorm", "RelativePositionBias",
]

# Activation names accepted by FeedForward -> the name of the fused epilogue of attnkit.linear.
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_tanh", "silu": "silu"}


# --------------------------------------------------------------------------------------------------
# Add & Norm
# --------------------------------------------------------------------------------------------------

class LayerNorm(Module):
    """LayerNorm(x + residual) over the last dimension; the residual add is fused into the kernel.

    Args:
        weight (numpy.ndarray): (E,) float32, float64, float16 or bfloat16 (the layer computes in this dtype;
            half precision in float32).
        bias (numpy.ndarray): (E,), converted to the weight's dtype.
        eps: added to the variance.

    Raises:
        ValueError: a weight that is not 1-D, a bias of another shape.

    Examples:
        >>> from attnkit.nn import LayerNorm
        >>> LayerNorm.init(8).weight.shape
        (8,)
    """

    def __init__(self, weight, bias, eps: float = 1e-5):
        self.weight = as_float_array(weight, weight_dtype(weight), "LayerNorm.weight")
        if self.weight.ndim != 1:
            raise ValueError(f"LayerNorm.weight: must be 1-D, got shape {self.weight.shape}")
        self.bias = as_float_array(bias, self.weight.dtype, "LayerNorm.bias", self.weight.shape)
        self.eps = float(eps)

    @classmethod
    def init(cls, d_model: int, eps: float = 1e-5, dtype=np.float32) -> "LayerNorm":
        """The identity LayerNorm: weight 1, bias 0.

        Args:
            d_model: E.
            eps: added to the variance.
            dtype (numpy.dtype or str): the weights' dtype.

        Returns:
            A LayerNorm.
        """
        return cls(np.ones(d_model, dtype), np.zeros(d_model, dtype), eps)

    def __call__(self, x, residual=None, *, return_sum: bool = False):
        """LN(x + residual).

        Args:
            x (numpy.ndarray): (..., E) of the weights' dtype.
            residual (numpy.ndarray or None): (..., E), added to x first (the add is fused).
            return_sum: also return x + residual, as the next pre-LN step needs.

        Returns:
            out (numpy.ndarray or tuple): (..., E); (LN(x + residual), x + residual) with return_sum.

        Raises:
            TypeError, ValueError: as [layer_norm][attnkit.layer_norm].

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import LayerNorm
            >>> LayerNorm.init(2)(np.array([[1.0, 3.0]], np.float32)).round(3).tolist()
            [[-1.0, 1.0]]
        """
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps,
                            residual=residual, return_sum=return_sum)


class RMSNorm(Module):
    """RMSNorm(x + residual) = s / sqrt(mean(s^2) + eps) * weight (T5's LayerNorm: no mean, no bias); called like
    [LayerNorm][attnkit.nn.LayerNorm], so a stack takes either.

    Args:
        weight (numpy.ndarray): (E,) float32, float64, float16 or bfloat16.
        eps: added to the mean square.

    Raises:
        ValueError: a weight that is not 1-D.

    Examples:
        >>> import numpy as np
        >>> from attnkit.nn import RMSNorm
        >>> RMSNorm(np.ones(4, np.float32)).eps
        1e-06
    """

    def __init__(self, weight, eps: float = 1e-6):
        self.weight = as_float_array(weight, weight_dtype(weight), "RMSNorm.weight")
        if self.weight.ndim != 1:
            raise ValueError(f"RMSNorm.weight: must be 1-D, got shape {self.weight.shape}")
        self.eps = float(eps)

    def __call__(self, x, residual=None, *, return_sum: bool = False):
        """RMSNorm(x + residual).

        Args:
            x (numpy.ndarray): (..., E) of the weight's dtype.
            residual (numpy.ndarray or None): (..., E), added to x first (the add is fused).
            return_sum: also return x + residual.

        Returns:
            out (numpy.ndarray or tuple): (..., E); (RMSNorm(x + residual), x + residual) with return_sum.

        Raises:
            TypeError, ValueError: as [rms_norm][attnkit.rms_norm].

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import RMSNorm
            >>> norm = RMSNorm(np.ones(2, np.float32), eps=0.0)
            >>> norm(np.array([[3.0, 4.0]], np.float32)).astype(float).round(3).tolist()
            [[0.849, 1.131]]
        """
        return F.rms_norm(x, self.weight, self.eps, residual=residual, return_sum=return_sum)


# --------------------------------------------------------------------------------------------------
# Position-wise feed-forward network
# --------------------------------------------------------------------------------------------------

class FeedForward(Module):
    """FFN(x) = act(x W1^T + b1) W2^T + b2, the same two linear maps at every position (section 3.3).

    The weights are packed once ([PackedLinear][attnkit.PackedLinear]); the activation is fused into the first
    GEMM. ``w_up`` makes it a gated unit (T5 v1.1's gated-GELU): FFN(x) = (act(x W1^T + b1) * (x W_up^T)) W2^T + b2.

    Args:
        w1 (numpy.ndarray): (F, E) in PyTorch's layout; float32, float64, float16 or bfloat16 (the layer's dtype).
        b1 (numpy.ndarray or None): (F,) or None (T5).
        w2 (numpy.ndarray): (E, F).
        b2 (numpy.ndarray or None): (E,) or None.
        activation: "relu", "gelu" (erf), "gelu_tanh" or "silu".
        w_up (numpy.ndarray or None): (F, E), the gated unit's second input projection.

    Raises:
        ValueError: an unknown activation, weights whose shapes do not fit.

    Examples:
        >>> from attnkit.nn import FeedForward
        >>> ffn = FeedForward.init(d_model=8, d_ff=32, activation="gelu", rng=0)
        >>> ffn.w1.shape, ffn.w2.shape
        ((32, 8), (8, 32))
    """

    def __init__(self, w1, b1, w2, b2, activation: str = "relu", *, w_up=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        dtype = weight_dtype(w1)
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
        """Random weights: Xavier-uniform matrices, small random biases.

        Args:
            d_model: E.
            d_ff: F.
            activation: as the constructor's.
            rng (int or numpy.random.Generator or None): the randomness.
            dtype (numpy.dtype or str): the weights' dtype.

        Returns:
            (FeedForward): A FeedForward.
        """
        rng = np.random.default_rng(rng)
        return cls(glorot_uniform(rng, (d_ff, d_model), dtype), small_normal(rng, d_ff, dtype),
                   glorot_uniform(rng, (d_model, d_ff), dtype), small_normal(rng, d_model, dtype), activation)

    def __call__(self, x):
        """FFN(x) at every position.

        Args:
            x (numpy.ndarray): (..., E) of the layer's dtype.

        Returns:
            (numpy.ndarray): (..., E).

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import FeedForward
            >>> FeedForward.init(8, 32, rng=0)(np.ones((2, 5, 8), np.float32)).shape
            (2, 5, 8)
        """
        h = F.linear(x, self.w1, self.b1, activation=ACTIVATIONS[self.activation])   # (B, L, F)
        if self.w_up is not None:
            h *= F.linear(x, self.w_up)                                               # gate * up
        return F.linear(h, self.w2, self.b2)                                         # (B, L, E)


# --------------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------------

class MultiHeadAttention(Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    * self attention: ``mha(x, mask=...)``, one packed QKV GEMM; Q, K, V are strided views of its output.
    * cross attention: ``mha(x, memory, mask=...)``, or ``mha.project_kv(memory)`` once and then
      ``mha.attend(mha.project_q(x), k, v, mask)`` at every decoding step.
    * causal: ``mask=AttentionMask(is_causal=True)``; incrementally with ``mha(x, cache=cache)``.

    The computation is ``attnkit.functional``'s, shared with [multi_head_attention][attnkit.multi_head_attention].
    The weights are packed once; only the packed copies are kept.

    Args:
        in_proj_weight (numpy.ndarray): ((H + 2 Hk) Dh, E) = [W^Q; W^K; W^V], ``torch.nn.MultiheadAttention``'s layout;
            float32, float64, float16 or bfloat16 (the layer's dtype).
        in_proj_bias (numpy.ndarray or None): ((H + 2 Hk) Dh,) or None.
        out_proj_weight (numpy.ndarray): (E, H Dh) = W^O.
        out_proj_bias (numpy.ndarray or None): (E,) or None.
        num_heads: H; Dh = E / H unless head_dim is given.
        num_kv_heads: Hk, a divisor of H (default H): fewer gives grouped-query attention, query head h
            reading K/V head h // (H / Hk).
        scale: the score scale (default 1 / sqrt(Dh); T5: 1.0).
        head_dim: Dh when it is not E / H (T5's d_kv).

    Raises:
        ValueError: head counts or weight shapes that do not fit, each naming the argument.

    Examples:
        >>> from attnkit.nn import MultiHeadAttention
        >>> mha = MultiHeadAttention.init(d_model=16, num_heads=4, num_kv_heads=2, rng=0)
        >>> mha.head_dim, mha.in_proj_weight.shape
        (4, (32, 16))
    """

    def __init__(self, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads: int,
                 *, num_kv_heads: Optional[int] = None, scale: Optional[float] = None, head_dim: Optional[int] = None):
        dtype = weight_dtype(in_proj_weight)
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
        """Random weights: Xavier-uniform projections, small random biases.

        Args:
            d_model: E.
            num_heads: H, a divisor of E.
            num_kv_heads: Hk (default H).
            rng (int or numpy.random.Generator or None): the randomness.
            dtype (numpy.dtype or str): the weights' dtype.

        Returns:
            A MultiHeadAttention.
        """
        rng = np.random.default_rng(rng)
        rows = (num_heads + 2 * (num_kv_heads or num_heads)) * (d_model // num_heads)   # (H + 2 Hk) * Dh
        return cls(glorot_uniform(rng, (rows, d_model), dtype), small_normal(rng, rows, dtype),
                   glorot_uniform(rng, (d_model, d_model), dtype), small_normal(rng, d_model, dtype), num_heads,
                   num_kv_heads=num_kv_heads)

    @property
    def d_model(self) -> int:
        """E, the model width (the output projection's rows)."""
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
        """Step 1 of self attention: project x to the heads' queries, keys and values.

        The two packed projections (W^Q, then [W^K; W^V]) write side by side into one buffer; no copies.

        Args:
            x (numpy.ndarray): (B, L, E).

        Returns:
            (q, k, v): q (B, H, L, Dh), k and v (B, Hk, L, Dh), views of that buffer.
        """
        B, L, _ = x.shape
        H, Hk, n = self.num_heads, self.num_kv_heads, self.num_heads * self.head_dim
        y = np.empty((B, L, (H + 2 * Hk) * self.head_dim), x.dtype)           # (B, L, (H + 2 Hk) Dh)
        F.linear(x, self.q_proj_weight, self._bias("q"), out=y[..., :n])
        F.linear(x, self.kv_proj_weight, self._bias("kv"), out=y[..., n:])
        return tuple(F.split_heads(y, (H, Hk, Hk), self.head_dim))

    def project_q(self, x) -> np.ndarray:
        """The queries of x (cross attention's first half).

        Args:
            x (numpy.ndarray): (B, L, E).

        Returns:
            q (B, H, L, Dh), a view of the projection's output.
        """
        (q,) = F.project_heads(x, self.q_proj_weight, self._bias("q"), (self.num_heads,), self.head_dim)
        return q

    def project_kv(self, memory) -> Tuple[np.ndarray, np.ndarray]:
        """The keys and values of a memory (cross attention's other half; a decoder computes them once).

        Args:
            memory (numpy.ndarray): (B, S, E).

        Returns:
            (k, v), each (B, Hk, S, Dh), views of one GEMM with [W^K; W^V].
        """
        return tuple(F.project_heads(memory, self.kv_proj_weight, self._bias("kv"),
                                     (self.num_kv_heads, self.num_kv_heads), self.head_dim))

    # 2) attend  3) merge the heads and project back -----------------------------------------------
    def attend(self, q, k, v, mask: AttentionMask = NO_MASK) -> np.ndarray:
        """Steps 2 and 3: attend, merge the heads and project back.

        Args:
            q (numpy.ndarray): (B, H, L, Dh).
            k (numpy.ndarray): (B, Hk, S, Dh).
            v (numpy.ndarray): (B, Hk, S, Dh).
            mask: which keys each query may see.

        Returns:
            (B, L, E).
        """
        concat = F.attend_heads(q, k, v, mask.attn_mask, mask.is_causal, self.scale,
                                causal_alignment=mask.causal_alignment, kv_lengths=mask.kv_lengths)   # (B, L, E)
        return F.linear(concat, self.out_proj_weight, self.out_proj_bias)

    def __call__(self, x, memory=None, *, mask: AttentionMask = NO_MASK, cache=None) -> np.ndarray:
        """Self attention (memory None) or cross attention on a memory.

        Args:
            x (numpy.ndarray): (B, L, E) of the layer's dtype.
            memory (numpy.ndarray or None): (B, S, E), the sequence attended to (None: x itself).
            mask: which keys each query may see (not used with a cache).
            cache (LayerKVCache or None): x then holds new positions only and attends causally to everything
                cached, see [cached][attnkit.nn.MultiHeadAttention.cached].

        Returns:
            (B, L, E).

        Raises:
            TypeError, ValueError: arrays of another dtype or shape (the kernels name them).

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import AttentionMask, MultiHeadAttention
            >>> x = np.random.default_rng(0).standard_normal((2, 5, 16), dtype=np.float32)
            >>> MultiHeadAttention.init(16, 4, rng=0)(x, mask=AttentionMask(is_causal=True)).shape
            (2, 5, 16)
        """
        if cache is not None:
            return self.cached(x, cache, mask.attn_mask)
        if memory is None:
            q, k, v = self.project_qkv(x)
        else:
            q, (k, v) = self.project_q(x), self.project_kv(memory)
        return self.attend(q, k, v, mask)

    def cached(self, x, cache, bias=None) -> np.ndarray:
        """Causal self attention of new positions over everything in a KV cache.

        The new keys and values are written in place into the preallocated cache, then the queries attend to
        views of it, bottom-right aligned (new query i sees cached keys j <= i + length_b) and cut at each
        sequence's own length.

        Args:
            x (numpy.ndarray): (B, n, E), the new positions.
            cache (LayerKVCache): this layer's view of the cache.
            bias (numpy.ndarray or None): an additive float mask (1 or B, H, n, S) on top (T5's position bias
                for these queries over the S cached keys).

        Returns:
            (B, n, E).
        """
        q, k, v = self.project_qkv(x)                          # (B, H, n, Dh), (B, Hk, n, Dh)
        keys, values, lengths = cache.append(k, v)             # (B, Hk, S, Dh) views, lengths (B,)
        if bias is not None:
            bias = bias[..., :keys.shape[2]]                   # the S keys now in view
        mask = AttentionMask(bias, is_causal=True, causal_alignment="bottom_right", kv_lengths=lengths)
        return self.attend(q, keys, values, mask)
