"""The row-wise and elementwise ops: softmax, layer_norm, rms_norm, the activations (gelu, relu, silu) and
apply_rotary (attnkit.functional re-exports them)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from . import _core
from . import cuda as _cuda_route
from ._checks import check_bool, check_float, check_out_disjoint, on_gpu

__all__ = ["softmax", "layer_norm", "rms_norm", "gelu", "relu", "silu", "apply_rotary"]


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

    Examples:
        >>> import numpy as np, attnkit
        >>> attnkit.softmax(np.array([[0.0, 0.0]], np.float32)).tolist()
        [[0.5, 0.5]]
    """
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
    if on_gpu(x, mask):
        return _cuda_route.softmax(x, int(axis), mask)
    return _core.softmax(x, int(axis), mask)


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

    Examples:
        >>> import numpy as np, attnkit
        >>> attnkit.layer_norm(np.array([[1.0, 3.0]], np.float32), 2).round(3).tolist()
        [[-1.0, 1.0]]
    """
    if isinstance(normalized_shape, (bool, np.bool_)) or not (
            isinstance(normalized_shape, (int, np.integer))
            or (isinstance(normalized_shape, (tuple, list))
                and all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) for n in normalized_shape))):
        raise TypeError(f"normalized_shape: expected an int or a sequence of ints, got {normalized_shape!r}")
    eps = check_float(eps, "eps")
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    last = tuple(x.shape[-1:]) if isinstance(x, np.ndarray) or on_gpu(x) else None
    if last is not None and shape != tuple(last):
        raise ValueError(f"normalized_shape: only the last dim can be normalised: expected ({last[0] if last else ''},), got {shape}")
    return_sum = check_bool(return_sum, "return_sum")
    if on_gpu(x, residual, weight, bias):
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

    Examples:
        >>> import numpy as np, attnkit
        >>> attnkit.rms_norm(np.array([[3.0, 4.0]], np.float32), eps=0.0).astype(float).round(3).tolist()
        [[0.849, 1.131]]
    """
    return_sum = check_bool(return_sum, "return_sum")
    if on_gpu(x, residual, weight):
        raise TypeError("x: rms_norm is not supported on the GPU backend")
    return _core.rms_norm(x, residual, weight, check_float(eps, "eps"), return_sum)


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) (SiLU, swish), elementwise. CPU only.

    Args:
        x: any shape; float32, float64, float16 or bfloat16.

    Returns:
        A new array of x's shape and dtype.

    Raises:
        TypeError: x not a numpy.ndarray of a supported dtype.

    Examples:
        >>> import numpy as np, attnkit
        >>> attnkit.silu(np.array([0.0], np.float32)).tolist()
        [0.0]
    """
    if on_gpu(x):
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

    Examples:
        >>> import numpy as np, attnkit
        >>> from attnkit.rope import rope_tables
        >>> cos, sin = rope_tables(8, 16, 10000.0)
        >>> x = np.ones((1, 2, 3, 8), np.float32)
        >>> attnkit.apply_rotary(x, cos, sin, np.arange(3)).shape
        (1, 2, 3, 8)
    """
    interleaved = check_bool(interleaved, "interleaved")
    if on_gpu(x, cos, sin, out):
        raise TypeError("x: rotary embedding is not supported on the GPU backend")
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iu":
        raise TypeError(f"positions: expected integers, got dtype {pos.dtype}")
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        if out is not x:
            check_out_disjoint(out, x=x, cos=cos, sin=sin)
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

    Examples:
        >>> import numpy as np, attnkit
        >>> attnkit.gelu(np.array([0.0, 10.0], np.float32)).tolist()
        [0.0, 10.0]
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    name = "gelu" if approximate == "none" else "gelu_tanh"
    return _cuda_route.activation(x, name) if on_gpu(x) else _core.activation(x, name)


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0), elementwise.

    Args:
        x: any shape; float32, float64, float16 or bfloat16.

    Returns:
        A new array of x's shape and dtype.

    Raises:
        TypeError: x not an array of a supported dtype.

    Examples:
        >>> import numpy as np, attnkit
        >>> attnkit.relu(np.array([-1.0, 2.0], np.float32)).tolist()
        [0.0, 2.0]
    """
    return _cuda_route.activation(x, "relu") if on_gpu(x) else _core.activation(x, "relu")
