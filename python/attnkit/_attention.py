"""scaled_dot_product_attention: the one attention entry point (attnkit.functional re-exports it; the
multi-head layers there and in attnkit.nn are built on it)."""
from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import numpy as np

from . import _core
from . import cuda as _cuda_route
from ._checks import check_bool, check_float, check_out_disjoint, on_gpu

__all__ = ["scaled_dot_product_attention"]

_ALIGNMENTS = ("top_left", "bottom_right")


def _int64_lengths(kv_lengths) -> np.ndarray:
    if (type(kv_lengths) is np.ndarray and kv_lengths.dtype == np.int64 and kv_lengths.flags.aligned
            and 0 not in kv_lengths.strides):
        return kv_lengths                                # a KV cache's lengths: nothing to convert (50 us saved)
    if _cuda_route.is_device_array(kv_lengths):
        raise TypeError("kv_lengths: expected host memory (a NumPy array or a sequence of ints), got a GPU array")
    try:
        with warnings.catch_warnings():                  # NumPy < 1.24 makes an object array of a ragged nesting
            warnings.simplefilter("ignore")              # (with a warning); later releases raise ValueError
            arr = np.asarray(kv_lengths)
    except ValueError as e:                              # a ragged nesting of lists
        raise ValueError(f"kv_lengths: expected integers of the batch shape, got a ragged sequence ({e})") from None
    if arr.dtype == object and not isinstance(kv_lengths, np.ndarray) and any(
            isinstance(e, (list, tuple, np.ndarray)) for e in arr.flat):
        raise ValueError("kv_lengths: expected integers of the batch shape, got a ragged sequence")
    if arr.size == 0 and arr.dtype.kind == "f" and not isinstance(kv_lengths, np.ndarray):
        arr = arr.astype(np.int64)                       # [] for a batch of size 0
    if arr.dtype.kind not in "iu":
        raise TypeError(f"kv_lengths: expected an integer array, got dtype {arr.dtype}")
    # converted and checked over the entries it holds, then broadcast back: a zero-stride view over a
    # huge batch stays a view (the compiled op reads any strides and copies only the distinct entries)
    held = arr[tuple(slice(0, 1) if s == 0 else slice(None) for s in arr.strides)] if arr.ndim else arr
    if held.dtype.kind == "u" and held.size and held.max() > np.iinfo(np.int64).max:
        raise ValueError("kv_lengths: values exceed the int64 range")
    return np.broadcast_to(np.require(held.astype(np.int64, copy=False), requirements="A"), arr.shape)


def scaled_dot_product_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    attn_mask: Optional[np.ndarray] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    causal_alignment: str = "top_left",
    kv_lengths=None,
    return_lse: bool = False,
    out: Optional[np.ndarray] = None,
    window: Optional[int] = None,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """softmax(query @ key^T * scale + mask) @ value, per head, without forming the score matrix.

    Shapes: query (..., Hq, Lq, E), key (..., Hk, Lk, E), value (..., Hk, Lk, Ev) -> (..., Hq, Lq, Ev),
    with 0 to 4 leading batch dims shared by all three. float32, float64, float16 or bfloat16
    (``ml_dtypes.bfloat16``; all the same dtype; half precision computes in float32);
    the output has that dtype. Arrays of any strides are read in place (no copies).
    A query row that may attend to no key gives zeros (and log-sum-exp -inf), never NaN.

    Args:
        query: (..., Hq, Lq, E).
        key: (..., Hk, Lk, E).
        value: (..., Hk, Lk, Ev).
        attn_mask: bool (True where a query may attend) or float of the query dtype (added to the
            scaled scores), broadcastable to (..., Hq, Lq, Lk).
        is_causal: query i sees key j only if j <= i (causal_alignment="top_left", PyTorch's), or
            j <= i + Lk - Lq ("bottom_right": the last query sees every key, as incremental
            decoding with a KV cache needs; Lk is the sequence's kv_lengths entry when given).
            May be combined with attn_mask and kv_lengths.
        scale: default 1/sqrt(E); must be finite and > 0.
        enable_gqa: Hq may be a multiple of Hk; query head h reads KV head h // (Hq // Hk).
        causal_alignment: "top_left" or "bottom_right" (see is_causal).
        kv_lengths (array-like of int): integers of the batch shape (...): keys j >= kv_lengths[b]
            are ignored (padding).
        return_lse: also return the log-sum-exp of each query row's scaled, masked scores (..., Hq, Lq).
        out: optional array (..., Hq, Lq, Ev) of the query dtype to write the result into.
        window: sliding-window attention (with is_causal=True; CPU only): query i sees key j only if
            0 <= pos(i) - j < window, pos(i) the query's position in the chosen causal alignment
            (Mistral's sliding_window). Tiles outside the band are skipped, no mask is formed.

    Returns:
        The output (..., Hq, Lq, Ev) in the inputs' dtype (``out`` when given), or (output, lse) with
            ``return_lse``.

    Raises:
        TypeError: an argument of the wrong type (arrays of different dtypes, a non-bool flag).
        ValueError: shapes that do not match, a scale that is not finite and > 0, an unknown alignment,
            ``out`` overlapping an input; each message names the argument.
        MemoryError: the workspace could not be allocated.

    Examples:
        >>> import numpy as np, attnkit
        >>> q = np.random.default_rng(0).standard_normal((2, 8, 16, 32), dtype=np.float32)
        >>> attnkit.scaled_dot_product_attention(q, q, q, is_causal=True).shape
        (2, 8, 16, 32)
    """
    is_causal = check_bool(is_causal, "is_causal")
    enable_gqa = check_bool(enable_gqa, "enable_gqa")
    return_lse = check_bool(return_lse, "return_lse")
    if not isinstance(causal_alignment, str):
        raise TypeError(f"causal_alignment: expected 'top_left' or 'bottom_right', got {type(causal_alignment).__name__}")
    if causal_alignment not in _ALIGNMENTS:
        raise ValueError(f"causal_alignment: expected 'top_left' or 'bottom_right', got {causal_alignment!r}")
    if kv_lengths is not None:
        kv_lengths = _int64_lengths(kv_lengths)
    if scale is not None:
        scale = check_float(scale, "scale")
    if window is not None:
        if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)):
            raise TypeError(f"window: expected an int, got {type(window).__name__}")
        if window <= 0:
            raise ValueError(f"window: expected a positive number of keys, got {window}")
        if not is_causal:
            raise ValueError("window: a sliding window needs is_causal=True")
        if on_gpu(query, key, value, attn_mask, out):
            raise TypeError("window: sliding-window attention is not supported on the GPU backend")
    if on_gpu(query, key, value, attn_mask, out):
        return _cuda_route.scaled_dot_product_attention(
            query, key, value, attn_mask, causal_alignment if is_causal else "none", scale, enable_gqa,
            kv_lengths, return_lse, out)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        check_out_disjoint(out, query=query, key=key, value=value, attn_mask=attn_mask)
    return _core.sdpa(
        query,
        key,
        value,
        attn_mask,
        causal_alignment if is_causal else "none",
        scale,
        enable_gqa,
        kv_lengths,
        return_lse,
        out,
        int(window or 0),
    )
