"""The public functions: NumPy arrays go to the compiled core (attnkit._core), GPU arrays to
attnkit.cuda. Argument names follow PyTorch where they share a meaning. Python-level options
(flags, names, kv_lengths, out=) are checked here; the arrays themselves (dtypes, shapes, strides,
devices) in the compiled ops (csrc/ops). Both raise TypeError or ValueError naming the argument.

The functions live in rooms by topic -- _attention (scaled_dot_product_attention), _linear (linear and its packed
weights), _rowwise (softmax, norms, activations, rotary) -- and are re-exported here, the one public module.
Multi-head attention is composed here from them: its calls go through this module's names, so that wrapping
``attnkit.functional.linear`` (attnkit.bench.breakdown does) sees every call the nn layers make.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from . import cuda as _cuda_route
from ._attention import scaled_dot_product_attention
from ._checks import check_bool, on_gpu
from ._dtypes import FLOAT_NAMES
from ._linear import PackedLinear, linear, pack_linear, pack_swiglu
from ._linear import swiglu_checked as _swiglu_checked          # attnkit.quant packs gated weights with it
from ._rowwise import apply_rotary, gelu, layer_norm, relu, rms_norm, silu, softmax

__all__ = [
    "scaled_dot_product_attention",
    "multi_head_attention",
    "softmax",
    "linear",
    "pack_linear",
    "PackedLinear",
    "layer_norm",
    "gelu",
    "relu",
    "rms_norm",
    "silu",
    "pack_swiglu",
    "apply_rotary",
]


def multi_head_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    num_heads: int,
    in_proj_weight: np.ndarray,
    in_proj_bias: Optional[np.ndarray] = None,
    out_proj_weight: Optional[np.ndarray] = None,
    out_proj_bias: Optional[np.ndarray] = None,
    *,
    num_kv_heads: Optional[int] = None,
    attn_mask: Optional[np.ndarray] = None,
    is_causal: bool = False,
    causal_alignment: str = "top_left",
    kv_lengths=None,
    scale: Optional[float] = None,
) -> np.ndarray:
    """Multi-head attention, batch first: project, split into heads, attend, merge, project back.

    Self attention: pass the same array as query, key and value and the three projections run as
    one GEMM. Cross attention: key and value come from another sequence (another length).

    Args:
        query: (B, Lq, E).
        key: (B, Lk, E).
        value: (B, Lk, E).
        num_heads: query heads; Dh = in_proj_weight rows / (num_heads + 2 * num_kv_heads).
        in_proj_weight: ((num_heads + 2*num_kv_heads) * Dh, E): [W_q; W_k; W_v] stacked as PyTorch's
            nn.MultiheadAttention.in_proj_weight.
        in_proj_bias: the matching bias, or None.
        out_proj_weight: (E_out, num_heads * Dh), or None (no output projection).
        out_proj_bias: (E_out,) or None.
        num_kv_heads: fewer KV heads than num_heads: grouped-query attention (default num_heads).
        attn_mask: as in [scaled_dot_product_attention][attnkit.scaled_dot_product_attention].
        is_causal: as there.
        causal_alignment: as there.
        kv_lengths (array-like of int): as there, one entry per batch element.
        scale: as there.

    Returns:
        (B, Lq, E_out), or (B, Lq, num_heads * Dh) without out_proj_weight, in query's dtype.

    Raises:
        TypeError: arguments of the wrong type. ValueError: shapes or head counts that do not fit, each
            naming the argument.

    Examples:
        >>> import numpy as np, attnkit
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((2, 5, 16), dtype=np.float32)
        >>> w = rng.standard_normal((48, 16), dtype=np.float32)
        >>> attnkit.multi_head_attention(x, x, x, 4, w).shape
        (2, 5, 16)
    """
    if on_gpu(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, attn_mask):
        return _cuda_route.multi_head_attention(
            query, key, value, num_heads, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
            num_kv_heads, attn_mask, check_bool(is_causal, "is_causal"), causal_alignment, kv_lengths, scale)
    for name, arr in (("query", query), ("key", key), ("value", value), ("in_proj_weight", in_proj_weight)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    for name, arr in (("query", query), ("key", key), ("value", value), ("in_proj_weight", in_proj_weight)):
        if arr.dtype.name not in FLOAT_NAMES:
            raise TypeError(f"{name}: expected a float32, float64, float16 or bfloat16 array, got dtype {arr.dtype}")
        if arr.dtype != query.dtype:
            raise TypeError(f"{name}: dtype {arr.dtype} does not match query's {query.dtype} (mixed dtypes are not allowed)")
    for name, arr in (("query", query), ("key", key), ("value", value)):
        if arr.ndim != 3:
            raise ValueError(f"{name}: expected shape (B, L, E), got {arr.shape}")
    if key.shape[:2] != value.shape[:2]:
        raise ValueError(f"value: expected (B, Lk) = {key.shape[:2]} as in key, got shape {value.shape}")
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"key: expected batch size {query.shape[0]} as in query, got shape {key.shape}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    hq = int(num_heads)
    hk = hq if num_kv_heads is None else num_kv_heads
    if isinstance(hk, bool) or not isinstance(hk, (int, np.integer)) or hk < 1 or hq % hk:
        raise ValueError(f"num_kv_heads: expected a positive divisor of num_heads={hq}, got {num_kv_heads!r}")
    hk = int(hk)
    if in_proj_weight.ndim != 2 or in_proj_weight.shape[0] % (hq + 2 * hk):
        raise ValueError(
            f"in_proj_weight: expected shape ((num_heads + 2*num_kv_heads) * head_dim, E) with "
            f"num_heads + 2*num_kv_heads = {hq + 2 * hk}, got {in_proj_weight.shape}"
        )
    if in_proj_weight.shape[1] != query.shape[-1] or key.shape[-1] != query.shape[-1] or value.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"in_proj_weight: expected (rows, E) with E = query's, key's and value's last dim; got in_proj_weight "
            f"{in_proj_weight.shape}, query {query.shape}, key {key.shape}, value {value.shape}"
        )
    dh = in_proj_weight.shape[0] // (hq + 2 * hk)
    if dh == 0:
        raise ValueError(f"in_proj_weight: head_dim would be 0 for shape {in_proj_weight.shape}")
    nq, nk = hq * dh, hk * dh
    for name, arr, shape in (
        ("in_proj_bias", in_proj_bias, (in_proj_weight.shape[0],)),
        ("out_proj_weight", out_proj_weight, None),
        ("out_proj_bias", out_proj_bias, None if out_proj_weight is None else (getattr(out_proj_weight, "shape", (0,))[0],)),
    ):
        if arr is None:
            continue
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
        if arr.dtype != query.dtype:
            raise TypeError(f"{name}: dtype {arr.dtype} does not match query's {query.dtype} (mixed dtypes are not allowed)")
        if name == "out_proj_weight":
            if arr.ndim != 2 or arr.shape[1] != nq:
                raise ValueError(f"out_proj_weight: expected shape (E_out, num_heads*head_dim={nq}), got {arr.shape}")
        elif arr.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if out_proj_bias is not None and out_proj_weight is None:
        raise ValueError("out_proj_bias: given without out_proj_weight")

    def rows(lo, hi):
        return in_proj_weight[lo:hi], (None if in_proj_bias is None else in_proj_bias[lo:hi])

    # 1) project: one packed GEMM for self attention, q and kv apart for cross attention
    if key is query and value is query:
        q, k, v = project_heads(query, in_proj_weight, in_proj_bias, (hq, hk, hk), dh)
    else:
        (q,) = project_heads(query, *rows(0, nq), (hq,), dh)
        if key is value:
            k, v = project_heads(key, *rows(nq, nq + 2 * nk), (hk, hk), dh)
        else:
            (k,) = project_heads(key, *rows(nq, nq + nk), (hk,), dh)
            (v,) = project_heads(value, *rows(nq + nk, nq + 2 * nk), (hk,), dh)
    # 2) attend 3) merge the heads
    merged = attend_heads(q, k, v, attn_mask, is_causal, scale, causal_alignment=causal_alignment,
                          kv_lengths=kv_lengths)                          # (B, Lq, Hq*Dh)
    # 4) project back
    return merged if out_proj_weight is None else linear(merged, out_proj_weight, out_proj_bias)


# The two halves of multi-head attention, shared with attnkit.nn.MultiHeadAttention. They check nothing:
# multi_head_attention and the layer's constructor have done that.

def project_heads(x: np.ndarray, weight, bias: Optional[np.ndarray], heads: Sequence[int],
                  head_dim: int) -> List[np.ndarray]:
    """x (B, L, E) through one GEMM with weight (sum(heads) * Dh, E), its output split into one view
    (B, h, L, Dh) per entry h of ``heads`` (no copies): heads (Hq, Hk, Hk) gives q, k, v of packed self
    attention, (Hq,) q alone, (Hk, Hk) k and v of a cross-attention memory."""
    return split_heads(linear(x, weight, bias), heads, head_dim)          # (B, L, sum(heads)*Dh) in


def split_heads(y: np.ndarray, heads: Sequence[int], head_dim: int) -> List[np.ndarray]:
    """y (B, L, sum(heads) * Dh) -> one view (B, h, L, Dh) per entry h of ``heads`` (no copies)."""
    B, L, _ = y.shape
    y = y.reshape(B, L, sum(heads), head_dim).transpose(0, 2, 1, 3)       # (B, sum(heads), L, Dh)
    views, start = [], 0
    for h in heads:                                                       # slices: np.split costs ~10 us a call
        views.append(y[:, start:start + h])                               # each (B, h, L, Dh)
        start += h
    return views


def attend_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray, attn_mask: Optional[np.ndarray] = None,
                 is_causal: bool = False, scale: Optional[float] = None, *, causal_alignment: str = "top_left",
                 kv_lengths=None) -> np.ndarray:
    """Attend and merge the heads: q (B, Hq, Lq, Dh), k, v (B, Hk, Lk, Dh) -> (B, Lq, Hq*Dh).

    Hk < Hq is grouped-query attention. Each head is written straight into its slot of the merged
    layout, so Concat(head_1, ..., head_H) is a free reshape. Mask arguments as in
    scaled_dot_product_attention.
    """
    B, H, Lq, Dh = q.shape
    merged = np.empty((B, Lq, H, Dh), dtype=q.dtype)                      # (B, Lq, Hq, Dh)
    scaled_dot_product_attention(
        q, k, v, attn_mask, is_causal, scale, k.shape[1] != H,
        causal_alignment=causal_alignment, kv_lengths=kv_lengths,
        out=merged.transpose(0, 2, 1, 3))                                 # written through a (B, Hq, Lq, Dh) view
    return merged.reshape(B, Lq, H * Dh)                                  # (B, Lq, Hq*Dh)
