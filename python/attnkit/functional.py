"""The public functions: NumPy arrays go to the compiled core (attnkit._core), GPU arrays to
attnkit.cuda. Argument names follow PyTorch where they share a meaning. Python-level options
(flags, names, kv_lengths, out=) are checked here; the arrays themselves (dtypes, shapes, strides,
devices) in the compiled ops (csrc/ops). Both raise TypeError or ValueError naming the argument."""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from . import cuda as _cuda_route
from ._dtypes import FLOAT_NAMES, is_real_scalar


def _on_gpu(*arrays) -> bool:
    """True when any argument is a GPU array: the call then runs on attnkit.cuda."""
    return any(a is not None and not isinstance(a, np.ndarray) and _cuda_route.is_device_array(a) for a in arrays)

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

_ALIGNMENTS = ("top_left", "bottom_right")


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _check_float(value, name: str) -> float:
    """A real number as a float: TypeError for other types (bool, str, complex, arrays of more than one
    element), ValueError for one beyond float's range; both name the argument."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not is_real_scalar(value):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}"
                        + (f" of shape {value.shape}" if isinstance(value, np.ndarray) else ""))
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}: {value} is beyond the float range") from None


def _int64_lengths(kv_lengths) -> np.ndarray:
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


def _check_out_disjoint(out: np.ndarray, **inputs) -> None:
    for name, arr in inputs.items():
        if isinstance(arr, np.ndarray) and np.may_share_memory(out, arr):
            raise ValueError(f"out: must not share memory with {name}")


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

    Example:
        >>> import numpy as np, attnkit
        >>> q = np.random.default_rng(0).standard_normal((2, 8, 16, 32), dtype=np.float32)
        >>> attnkit.scaled_dot_product_attention(q, q, q, is_causal=True).shape
        (2, 8, 16, 32)
    """
    is_causal = _check_bool(is_causal, "is_causal")
    enable_gqa = _check_bool(enable_gqa, "enable_gqa")
    return_lse = _check_bool(return_lse, "return_lse")
    if not isinstance(causal_alignment, str):
        raise TypeError(f"causal_alignment: expected 'top_left' or 'bottom_right', got {type(causal_alignment).__name__}")
    if causal_alignment not in _ALIGNMENTS:
        raise ValueError(f"causal_alignment: expected 'top_left' or 'bottom_right', got {causal_alignment!r}")
    if kv_lengths is not None:
        kv_lengths = _int64_lengths(kv_lengths)
    if scale is not None:
        scale = _check_float(scale, "scale")
    if window is not None:
        if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)):
            raise TypeError(f"window: expected an int, got {type(window).__name__}")
        if window <= 0:
            raise ValueError(f"window: expected a positive number of keys, got {window}")
        if not is_causal:
            raise ValueError("window: a sliding window needs is_causal=True")
        if _on_gpu(query, key, value, attn_mask, out):
            raise TypeError("window: sliding-window attention is not supported on the GPU backend")
    if _on_gpu(query, key, value, attn_mask, out):
        return _cuda_route.scaled_dot_product_attention(
            query, key, value, attn_mask, causal_alignment if is_causal else "none", scale, enable_gqa,
            kv_lengths, return_lse, out)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        _check_out_disjoint(out, query=query, key=key, value=value, attn_mask=attn_mask)
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


def softmax(x: np.ndarray, axis: int = -1, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Numerically stable softmax of x along ``axis``.

    Args:
        x: any shape; float32, float64, float16 or bfloat16.
        axis: the axis to normalise.
        mask: bool broadcastable to x, True = keep; masked entries get 0 and a row with every entry
            masked gives zeros.

    Returns:
        An array of x's shape and dtype whose entries along ``axis`` sum to 1 (or are all 0).

    Raises:
        TypeError: ``axis`` not an int, a mask that is not bool. ValueError: an axis or mask shape that
            does not fit x.

    Example:
        >>> import numpy as np, attnkit
        >>> attnkit.softmax(np.array([[0.0, 0.0]], np.float32)).tolist()
        [[0.5, 0.5]]
    """
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
    if _on_gpu(x, mask):
        return _cuda_route.softmax(x, int(axis), mask)
    return _core.softmax(x, int(axis), mask)


class PackedLinear:
    """A linear layer's weight packed once into the kernels' panel layout (``pack_linear``).

    ``linear(x, packed)`` then reads no weight array and packs nothing per call. Only the packed
    copy is kept (``nbytes``, about the weight's size). It holds the bias too, if one was given.
    If the kernel path changes afterwards (``attnkit.set_isa``), the next call repacks it once.

    Args:
        weight: (out_features, in_features), float32, float64, float16 or bfloat16.
        bias: (out_features,) of the weight's dtype, or None.

    Raises:
        TypeError: weight or bias not a numpy.ndarray (or weight already packed).
        ValueError: a weight that is not 2-D, a bias of another length.

    Example:
        >>> import numpy as np, attnkit
        >>> w = np.ones((3, 4), np.float32)
        >>> packed = attnkit.pack_linear(w)
        >>> packed.shape, attnkit.linear(np.ones((2, 4), np.float32), packed).tolist()
        ((3, 4), [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]])
    """

    __slots__ = ("_packed", "bias")

    @property
    def gated(self) -> bool:
        """True for a SwiGLU weight from ``pack_swiglu``: ``linear`` then gives silu(gate) * up."""
        return bool(self._packed.gated)

    def __init__(self, weight: np.ndarray, bias: Optional[np.ndarray] = None):
        if isinstance(weight, PackedLinear):
            raise TypeError("weight: already packed")
        if bias is not None and not isinstance(bias, np.ndarray):
            raise TypeError(f"bias: expected a numpy.ndarray, got {type(bias).__name__}")
        self._packed = _core.pack_linear(weight)
        if bias is not None and (bias.ndim != 1 or bias.shape[0] != self._packed.shape[0]):
            raise ValueError(f"bias: expected shape ({self._packed.shape[0]},), got {bias.shape}")
        self.bias = bias

    @property
    def shape(self) -> Tuple[int, int]:
        """(out_features, in_features), as the weight it was packed from."""
        return tuple(self._packed.shape)

    @property
    def dtype(self) -> np.dtype:
        """The weight's dtype (float32, float64, float16 or bfloat16)."""
        return self._packed.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight (the bias not counted)."""
        return int(self._packed.nbytes)

    @property
    def isa(self) -> str:
        """The kernel path whose layout it is in now."""
        return self._packed.isa

    def unpack(self) -> np.ndarray:
        """The weight (out_features, in_features) read back from the panels (a new array)."""
        return _core.unpack_linear(self._packed)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """np.asarray(packed): the weight, read back (see unpack)."""
        w = self.unpack()
        return w if dtype is None else w.astype(dtype)

    def astype(self, dtype) -> "PackedLinear":
        """The same layer packed in another dtype (float32, float64, float16 or bfloat16)."""
        bias = None if self.bias is None else self.bias.astype(dtype)
        if self.gated:
            w = self.unpack().astype(dtype)
            F = w.shape[0] // 2
            return pack_swiglu(w[:F], w[F:], None if bias is None else bias[:F], None if bias is None else bias[F:])
        return PackedLinear(self.unpack().astype(dtype), bias)

    def __repr__(self) -> str:
        g = ", gated=True" if self.gated else ""
        return f"PackedLinear(shape={self.shape}, dtype={self.dtype}, bias={self.bias is not None}{g}, isa={self.isa!r})"


def pack_linear(weight: np.ndarray, bias: Optional[np.ndarray] = None) -> PackedLinear:
    """Pack ``weight`` (out_features, in_features) once for ``linear``: a
    [PackedLinear][attnkit.PackedLinear] (same arguments, errors and example)."""
    return PackedLinear(weight, bias)


def _swiglu_checked(gate_weight, up_weight, gate_bias, up_bias) -> Optional[np.ndarray]:
    """Checks a gated MLP's two projections (pack_swiglu, quantize_swiglu); their stacked bias or None."""
    for name, w in (("gate_weight", gate_weight), ("up_weight", up_weight)):
        if not isinstance(w, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(w).__name__}")
        if w.ndim != 2:
            raise ValueError(f"{name}: expected shape (out_features, in_features), got {w.shape}")
    if up_weight.shape != gate_weight.shape:
        raise ValueError(f"up_weight: expected gate_weight's shape {gate_weight.shape}, got {up_weight.shape}")
    if up_weight.dtype != gate_weight.dtype:
        raise TypeError(f"up_weight: dtype {up_weight.dtype} does not match gate_weight's {gate_weight.dtype}")
    if (gate_bias is None) != (up_bias is None):
        raise ValueError("gate_bias, up_bias: give both or neither")
    bias = None
    if gate_bias is not None:
        F = gate_weight.shape[0]
        for name, b in (("gate_bias", gate_bias), ("up_bias", up_bias)):
            if not isinstance(b, np.ndarray) or b.shape != (F,):
                raise ValueError(f"{name}: expected an array of shape ({F},)")
        bias = np.concatenate([gate_bias, up_bias])
    return bias


def pack_swiglu(gate_weight: np.ndarray, up_weight: np.ndarray, gate_bias: Optional[np.ndarray] = None,
                up_bias: Optional[np.ndarray] = None) -> PackedLinear:
    """Pack a gated MLP's two input projections into ONE weight for a SwiGLU ``linear``.

    The panels interleave gate and up features, so that ``linear(x, packed)`` computes
    silu(x W_gate^T + b_gate) * (x W_up^T + b_up), shape (..., F), in one GEMM with the gate
    in its epilogue. ``packed.shape`` is (2F, in_features); ``unpack()`` gives [W_gate; W_up].

    Args:
        gate_weight: (F, in_features).
        up_weight: (F, in_features), the same dtype.
        gate_bias: (F,) or None (both biases or neither).
        up_bias: (F,) or None.

    Returns:
        A [PackedLinear][attnkit.PackedLinear] with ``gated`` True.

    Raises:
        TypeError: a weight that is not a numpy.ndarray. ValueError: weights of different shapes, a bias
            of another length or only one bias.

    Example:
        >>> import numpy as np, attnkit
        >>> g, u = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)
        >>> y = attnkit.linear(np.ones((1, 3), np.float32), attnkit.pack_swiglu(g, u))
        >>> np.allclose(y, 3 / (1 + np.exp(-3)) * 6)
        True
    """
    bias = _swiglu_checked(gate_weight, up_weight, gate_bias, up_bias)
    packed = object.__new__(PackedLinear)
    packed._packed = _core.pack_gated(np.concatenate([gate_weight, up_weight]))   # the stacked copy is dropped
    packed.bias = bias
    return packed


def linear(x: np.ndarray, weight, bias: Optional[np.ndarray] = None, *, activation: Optional[str] = None,
           out: Optional[np.ndarray] = None) -> np.ndarray:
    """x @ weight.T + bias, PyTorch's weight layout (out_features, in_features); x (..., in_features).

    Args:
        x: (..., in_features); float32, float64, float16 or bfloat16.
        weight (numpy.ndarray or PackedLinear): (out_features, in_features) array of x's dtype, or a
            [PackedLinear][attnkit.PackedLinear]
            from ``pack_linear`` (then its bias is used, and passing another one is an error).
        bias: (out_features,) or None.
        activation: None, 'relu', 'gelu' (erf) or 'gelu_tanh', applied in the GEMM's epilogue.
        out: optional (..., out_features) array of x's dtype to write into, sharing no memory with x;
            any strides (rows evenly spaced with a unit last stride, e.g. a column slice of a wider
            array or reversed rows, are written in place; other layouts through one scratch copy).
            Nothing outside its view is written. x, weight and bias may have any strides too.

    Returns:
        (..., out_features) in x's dtype (``out`` when given).

    Raises:
        TypeError: arguments of the wrong type or dtype. ValueError: shapes that do not match, an
            unknown activation, a bias given twice, ``out`` overlapping an input.

    Example:
        >>> import numpy as np, attnkit
        >>> x, w, b = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32), np.arange(3, dtype=np.float32)
        >>> attnkit.linear(x, w, b, activation="relu").tolist()
        [[4.0, 5.0, 6.0], [4.0, 5.0, 6.0]]
    """
    act = "none" if activation is None else activation
    if _on_gpu(x, weight, bias):
        if out is not None or isinstance(weight, PackedLinear):
            raise TypeError("linear: out= and packed weights are for NumPy arrays (the GPU path has neither)")
        return _cuda_route.linear(x, weight, bias, act)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        _check_out_disjoint(out, x=x, weight=weight, bias=bias)
    if isinstance(weight, PackedLinear):
        if bias is not None and weight.bias is not None:
            raise ValueError("bias: the packed weight holds a bias already")
        b = weight.bias if bias is None else bias
        if (b is not None and weight._packed.quant is not None and isinstance(x, np.ndarray)
                and b.dtype != x.dtype and x.dtype.name in ("float32", "bfloat16")):
            b = b.astype(x.dtype)              # a quantized weight serves float32 and bfloat16 x alike
        return _core.linear_packed(x, weight._packed, b, act, out)
    return _core.linear(x, weight, bias, act, out)


def layer_norm(
    x: np.ndarray,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    residual: Optional[np.ndarray] = None,
    return_sum: bool = False,
):
    """PyTorch's layer_norm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias.

    Args:
        x: (..., N); float32, float64, float16 or bfloat16.
        normalized_shape: N (or (N,)): the last dim.
        weight: (N,) or None.
        bias: (N,) or None.
        eps: a finite number >= 0. A constant row has mean exactly its value and variance 0, so its
            output is exactly ``bias`` (zeros without one) for any eps > 0; with eps=0 it is 0/0 = NaN,
            as in PyTorch, so use eps=0 only where rows cannot be constant.
        residual: normalise x + residual instead (the add is fused).
        return_sum: also return x + residual, as a pre-LN block needs.

    Returns:
        out (numpy.ndarray or tuple): x's shape and dtype; (layer_norm(x + residual), x + residual) with return_sum.

    Raises:
        TypeError: arguments of the wrong type. ValueError: normalized_shape other than the last dim,
            shapes that do not match, eps negative or not finite.

    Example:
        >>> import numpy as np, attnkit
        >>> attnkit.layer_norm(np.array([[1.0, 3.0]], np.float32), 2).round(3).tolist()
        [[-1.0, 1.0]]
    """
    if isinstance(normalized_shape, (bool, np.bool_)) or not (
            isinstance(normalized_shape, (int, np.integer))
            or (isinstance(normalized_shape, (tuple, list))
                and all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) for n in normalized_shape))):
        raise TypeError(f"normalized_shape: expected an int or a sequence of ints, got {normalized_shape!r}")
    eps = _check_float(eps, "eps")
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    last = tuple(x.shape[-1:]) if isinstance(x, np.ndarray) or _on_gpu(x) else None
    if last is not None and shape != tuple(last):
        raise ValueError(f"normalized_shape: only the last dim can be normalised: expected ({last[0] if last else ''},), got {shape}")
    return_sum = _check_bool(return_sum, "return_sum")
    if _on_gpu(x, residual, weight, bias):
        return _cuda_route.layer_norm(x, residual, weight, bias, float(eps), return_sum)
    return _core.layer_norm(x, residual, weight, bias, float(eps), return_sum)


def rms_norm(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    eps: float = 1e-6,
    *,
    residual: Optional[np.ndarray] = None,
    return_sum: bool = False,
):
    """RMSNorm over the last dim (Llama's): s / sqrt(mean(s^2) + eps) * weight, s = x + residual.

    Args:
        x: (..., N); float32, float64, float16 or bfloat16.
        weight: (N,) or None.
        eps: a finite number >= 0.
        residual: added to x first (the add is fused).
        return_sum: also return s, as a pre-norm block needs for its next residual.

    Returns:
        out (numpy.ndarray or tuple): x's shape and dtype; (rms_norm(s), s) with return_sum.

    Raises:
        TypeError: arguments of the wrong type or a GPU array (CPU only). ValueError: shapes that do not
            match.

    Example:
        >>> import numpy as np, attnkit
        >>> attnkit.rms_norm(np.array([[3.0, 4.0]], np.float32), eps=0.0).astype(float).round(3).tolist()
        [[0.849, 1.131]]
    """
    return_sum = _check_bool(return_sum, "return_sum")
    if _on_gpu(x, residual, weight):
        raise TypeError("x: rms_norm is not supported on the GPU backend")
    return _core.rms_norm(x, residual, weight, _check_float(eps, "eps"), return_sum)


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) (SiLU, swish), elementwise. CPU only.

    Args:
        x: any shape; float32, float64, float16 or bfloat16.

    Returns:
        A new array of x's shape and dtype.

    Raises:
        TypeError: x not a numpy.ndarray of a supported dtype.

    Example:
        >>> import numpy as np, attnkit
        >>> attnkit.silu(np.array([0.0], np.float32)).tolist()
        [0.0]
    """
    if _on_gpu(x):
        raise TypeError("x: silu is not supported on the GPU backend")
    return _core.activation(x, "silu")


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, positions, *, interleaved: bool = False,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
    """Rotary position embedding of x (B, H, L, D), any strides (e.g. a (B, L, H, D) view). CPU only.

    Args:
        x: (B, H, L, D).
        cos: table (max_positions, R/2) of x's dtype (``attnkit.rope.rope_tables``), R <= D the rotary
            dims (dims >= R pass through).
        sin: the same shape as cos.
        positions (array-like of int): (B, L), or (L,) shared by the batch: the table row of each token
            (per-sequence offsets for ragged batches).
        interleaved: False rotates halves (Llama, Qwen2, Mistral, GPT-NeoX: dim d with d + R/2); True
            rotates pairs (2d, 2d+1) (GPT-J).
        out: optional array of x's shape and dtype; ``out=x`` rotates in place.

    Returns:
        The rotated array (``out`` when given).

    Raises:
        TypeError: arguments of the wrong type. ValueError: shapes that do not match, a position outside
            the tables.

    Example:
        >>> import numpy as np, attnkit
        >>> from attnkit.rope import rope_tables
        >>> cos, sin = rope_tables(8, 16, 10000.0)
        >>> x = np.ones((1, 2, 3, 8), np.float32)
        >>> attnkit.apply_rotary(x, cos, sin, np.arange(3)).shape
        (1, 2, 3, 8)
    """
    interleaved = _check_bool(interleaved, "interleaved")
    if _on_gpu(x, cos, sin, out):
        raise TypeError("x: rotary embedding is not supported on the GPU backend")
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iu":
        raise TypeError(f"positions: expected integers, got dtype {pos.dtype}")
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        if out is not x:
            _check_out_disjoint(out, x=x, cos=cos, sin=sin)
    return _core.rope(x, cos, sin, pos, interleaved, out)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU: x * Phi(x) (approximate='none', erf) or its tanh approximation ('tanh'), elementwise.

    Args:
        x: any shape; float32, float64, float16 or bfloat16.
        approximate: 'none' or 'tanh'.

    Returns:
        A new array of x's shape and dtype.

    Raises:
        TypeError: x not an array of a supported dtype.

    Example:
        >>> import numpy as np, attnkit
        >>> attnkit.gelu(np.array([0.0, 10.0], np.float32)).tolist()
        [0.0, 10.0]
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    name = "gelu" if approximate == "none" else "gelu_tanh"
    return _cuda_route.activation(x, name) if _on_gpu(x) else _core.activation(x, name)


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0), elementwise.

    Args:
        x: any shape; float32, float64, float16 or bfloat16.

    Returns:
        A new array of x's shape and dtype.

    Raises:
        TypeError: x not an array of a supported dtype.

    Example:
        >>> import numpy as np, attnkit
        >>> attnkit.relu(np.array([-1.0, 2.0], np.float32)).tolist()
        [0.0, 2.0]
    """
    return _cuda_route.activation(x, "relu") if _on_gpu(x) else _core.activation(x, "relu")


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

    Example:
        >>> import numpy as np, attnkit
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((2, 5, 16), dtype=np.float32)
        >>> w = rng.standard_normal((48, 16), dtype=np.float32)
        >>> attnkit.multi_head_attention(x, x, x, 4, w).shape
        (2, 5, 16)
    """
    if _on_gpu(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, attn_mask):
        return _cuda_route.multi_head_attention(
            query, key, value, num_heads, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
            num_kv_heads, attn_mask, _check_bool(is_causal, "is_causal"), causal_alignment, kv_lengths, scale)
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
    return np.split(y, np.cumsum(heads)[:-1], axis=1)                     # each (B, h, L, Dh)


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
