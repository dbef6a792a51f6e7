"""Plain-NumPy oracle for every attnkit op.

Each function has the signature of its public twin in ``attnkit`` and computes, in the inputs'
dtype, exactly what the docstring says, written the way the mechanism is usually explained.
Pass float64 arrays to use it as the reference the kernels are tested against.

It validates little: it is an oracle, not a guard. Performance matters only in that it is
vectorised (matmul / einsum, no Python loops over rows), so it can serve as a benchmark baseline.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "scaled_dot_product_attention",
    "softmax",
    "linear",
    "layer_norm",
    "gelu",
    "relu",
    "multi_head_attention",
    "rms_norm",
    "silu",
    "swiglu",
    "apply_rotary",
]

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _masked_softmax_parts(s, visible, axis=-1):
    """Stable softmax pieces of scores ``s`` where only ``visible`` entries take part.

    Returns (p, l, m): p = exp(s - m) with invisible entries 0, l = sum(p), m = row max (0 for a
    row that sees nothing, so nothing becomes NaN there; a NaN score still spreads along its row).
    """
    s = np.where(visible, s, -np.inf)
    m = np.max(s, axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(m == -np.inf, 0, m).astype(s.dtype)          # fully masked row: shift by 0
    p = np.exp(s - m)                                         # exp(-inf) = 0 for masked entries
    l = np.sum(p, axis=axis, keepdims=True)
    return p, l, m


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False, scale=None,
                                 enable_gqa=False, *, causal_alignment="top_left", kv_lengths=None,
                                 return_lse=False, out=None, window=None):
    """softmax(scale * Q K^T + mask) V over the keys each query may see.

    query (..., Hq, Lq, E), key (..., Hk, Lk, E), value (..., Hk, Lk, Ev) -> (..., Hq, Lq, Ev);
    with return_lse also lse (..., Hq, Lq) = log sum_j exp(scale * q.k_j + mask_j) over visible j.
    A row that may see no key gives zeros and lse = -inf.
    """
    q, k, v = np.asarray(query), np.asarray(key), np.asarray(value)
    *batch, Hq, Lq, E = q.shape
    Hk, Lk = k.shape[-3], k.shape[-2]
    if causal_alignment not in ("top_left", "bottom_right"):
        raise ValueError(f"causal_alignment must be 'top_left' or 'bottom_right', got {causal_alignment!r}")
    if Hq != Hk:
        if not enable_gqa or Hk == 0 or Hq % Hk:
            raise ValueError(f"key has {Hk} heads, query {Hq} (enable_gqa={enable_gqa})")
        k = np.repeat(k, Hq // Hk, axis=-3)                   # (..., Hq, Lk, E): head h reads h // group
        v = np.repeat(v, Hq // Hk, axis=-3)                   # (..., Hq, Lk, Ev)
    if scale is None:
        scale = 1.0 / math.sqrt(E)

    # 1) scores, (..., Hq, Lq, Lk)
    s = scale * (q @ np.swapaxes(k, -1, -2))

    # 2) which keys each query may see, broadcastable to (..., Hq, Lq, Lk)
    i = np.arange(Lq)[:, None]                                # (Lq, 1)
    j = np.arange(Lk)[None, :]                                # (1, Lk)
    visible = np.ones((1, 1), dtype=bool)
    if kv_lengths is not None:
        n = np.asarray(kv_lengths).reshape(tuple(batch) + (1, 1, 1))   # (..., 1, 1, 1)
        visible = visible & (j < n)
        v = np.where(j.T < n, v, 0)                           # a cache's unused tail is not read
    else:
        n = Lk
    if is_causal:
        offset = 0 if causal_alignment == "top_left" else n - Lq
        visible = visible & (j <= i + offset)
        if window:                                            # sliding window: 0 <= pos(i) - j < window
            visible = visible & (i + offset - j < window)
    if attn_mask is not None:
        attn_mask = np.asarray(attn_mask)
        if attn_mask.dtype == bool:
            visible = visible & attn_mask
        else:
            s = s + attn_mask                                 # additive mask; -inf hides a key

    # 3) softmax over the visible keys, then the weighted sum of values
    p, l, m = _masked_softmax_parts(s, visible)               # (..., Hq, Lq, Lk), (..., Hq, Lq, 1) x2
    safe_l = np.where(l == 0, 1, l)                           # row that sees nothing: 0 / 1 = 0
    o = (p @ v) / safe_l                                      # (..., Hq, Lq, Ev)
    if out is not None:
        out[...] = o
        o = out
    if not return_lse:
        return o
    with np.errstate(divide="ignore"):
        lse = (m + np.log(l))[..., 0]                         # (..., Hq, Lq); log 0 = -inf
    return o, lse


def softmax(x, axis=-1, mask=None):
    """exp(x) / sum(exp(x)) along ``axis``; with a bool mask only True entries take part.

    x (...), mask bool broadcastable to x -> x's shape. A fully masked row gives zeros.
    """
    x = np.asarray(x)
    visible = np.ones((), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    p, l, _ = _masked_softmax_parts(x, visible, axis=axis)
    return p / np.where(l == 0, 1, l)


def relu(x):
    """max(x, 0) elementwise (NaN stays NaN)."""
    x = np.asarray(x)
    return np.maximum(x, x.dtype.type(0))


def gelu(x, approximate="none"):
    """x * Phi(x): "none" uses erf, "tanh" the tanh approximation of Hendrycks & Gimpel."""
    x = np.asarray(x)
    if approximate == "none":
        # Phi(x) = erfc(-x / sqrt 2) / 2: the same as (1 + erf(x / sqrt 2)) / 2 without its cancellation for x << 0
        return (0.5 * x * _erfc(-x / math.sqrt(2.0))).astype(x.dtype)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


_ACTIVATIONS = {
    None: lambda y: y,
    "relu": relu,
    "gelu": gelu,
    "gelu_tanh": lambda y: gelu(y, approximate="tanh"),
}


def linear(x, weight, bias=None, *, activation=None):
    """act(x W^T + b): x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of None, 'relu', 'gelu', 'gelu_tanh', got {activation!r}")
    y = np.asarray(x) @ np.asarray(weight).T                  # (..., out)
    if bias is not None:
        y = y + bias
    return _ACTIVATIONS[activation](y)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, residual=None,
               return_sum=False):
    """(h - mean(h)) / sqrt(var(h) + eps) * weight + bias over the last dim, h = x + residual.

    x (..., D) -> (..., D); return_sum=True returns (LN(h), h).
    """
    x = np.asarray(x)
    D = x.shape[-1]
    if tuple(np.atleast_1d(normalized_shape)) != (D,):
        raise ValueError(f"normalized_shape must be ({D},), got {normalized_shape!r}")
    h = x if residual is None else x + residual               # (..., D)
    mean = h.mean(axis=-1, keepdims=True)                     # (..., 1)
    var = ((h - mean) ** 2).mean(axis=-1, keepdims=True)      # (..., 1), biased like PyTorch
    y = (h - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return (y, h) if return_sum else y


def multi_head_attention(query, key, value, num_heads, in_proj_weight, in_proj_bias=None,
                         out_proj_weight=None, out_proj_bias=None, *, num_kv_heads=None,
                         attn_mask=None, is_causal=False, causal_alignment="top_left",
                         kv_lengths=None, scale=None):
    """Multi-head attention, batch first: 1) project 2) split heads 3) attend 4) merge 5) project.

    query (B, Lq, E), key/value (B, Lk, E); in_proj_weight ((H + 2*Hkv) * Dh, E) packed [Wq; Wk; Wv];
    out_proj_weight (E_out, H * Dh) -> (B, Lq, E_out) (without out_proj_weight: (B, Lq, H * Dh)).
    """
    H = num_heads
    Hkv = num_heads if num_kv_heads is None else num_kv_heads
    W = np.asarray(in_proj_weight)
    Dh = W.shape[0] // (H + 2 * Hkv)
    b = np.zeros(W.shape[0], W.dtype) if in_proj_bias is None else np.asarray(in_proj_bias)
    sections = [H * Dh, (H + Hkv) * Dh]
    Wq, Wk, Wv = np.split(W, sections)                        # (H*Dh, E), (Hkv*Dh, E), (Hkv*Dh, E)
    bq, bk, bv = np.split(b, sections)

    # 1) project
    q = linear(query, Wq, bq)                                 # (B, Lq, H*Dh)
    k = linear(key, Wk, bk)                                   # (B, Lk, Hkv*Dh)
    v = linear(value, Wv, bv)                                 # (B, Lk, Hkv*Dh)
    # 2) split heads
    B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(B, Lq, H, Dh).transpose(0, 2, 1, 3)         # (B, H, Lq, Dh)
    k = k.reshape(B, Lk, Hkv, Dh).transpose(0, 2, 1, 3)       # (B, Hkv, Lk, Dh)
    v = v.reshape(B, Lk, Hkv, Dh).transpose(0, 2, 1, 3)       # (B, Hkv, Lk, Dh)
    # 3) attend
    o = scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale, enable_gqa=Hkv != H,
                                     causal_alignment=causal_alignment, kv_lengths=kv_lengths)
    # 4) merge heads
    o = o.transpose(0, 2, 1, 3).reshape(B, Lq, H * Dh)        # (B, Lq, H*Dh)
    # 5) project out
    if out_proj_weight is None:
        return o
    return linear(o, out_proj_weight, out_proj_bias)          # (B, Lq, E_out)


def rms_norm(x, weight=None, eps=1e-6, *, residual=None, return_sum=False):
    """RMSNorm over the last dim: s / sqrt(mean(s^2) + eps) * weight, s = x + residual."""
    s = np.asarray(x) if residual is None else np.asarray(x) + residual
    y = s / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    return (y, s) if return_sum else y


def silu(x):
    """x * sigmoid(x)."""
    x = np.asarray(x)
    with np.errstate(over="ignore"):                          # exp(-x) = inf for x << 0: x / inf = -0
        return x / (1 + np.exp(-x))


def swiglu(x, gate_weight, up_weight, gate_bias=None, up_bias=None):
    """silu(x W_gate^T + b_gate) * (x W_up^T + b_up): the gated MLP's first half."""
    return silu(linear(x, gate_weight, gate_bias)) * linear(x, up_weight, up_bias)


def apply_rotary(x, cos, sin, positions, *, interleaved=False, out=None):
    """Rotate pairs of x (B, H, L, D) by the angles of each token's position.

    cos, sin (P, R/2) with R <= D rotary dims; positions (B, L) or (L,). Rotate-half pairs dim d
    with d + R/2 (Llama, GPT-NeoX); interleaved pairs 2d with 2d+1 (GPT-J). Dims >= R pass through.
    """
    x = np.asarray(x)
    half = cos.shape[1]
    pos = np.broadcast_to(np.asarray(positions), (x.shape[0], x.shape[2]))
    c = cos[pos][:, None]                                     # (B, 1, L, R/2)
    s = sin[pos][:, None]
    y = x.copy()
    if interleaved:
        x1, x2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
        y[..., 0:2 * half:2] = x1 * c - x2 * s
        y[..., 1:2 * half:2] = x2 * c + x1 * s
    else:
        x1, x2 = x[..., :half], x[..., half:2 * half]
        y[..., :half] = x1 * c - x2 * s
        y[..., half:2 * half] = x2 * c + x1 * s
    if out is not None:
        out[...] = y
        return out
    return y
