"""linear and its packed weights: PackedLinear, pack_linear, pack_swiglu (attnkit.functional re-exports them)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _core
from . import cuda as _cuda_route
from ._checks import check_out_disjoint, on_gpu

__all__ = ["PackedLinear", "pack_linear", "pack_swiglu", "linear", "swiglu_checked"]


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

    Examples:
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


def swiglu_checked(gate_weight, up_weight, gate_bias, up_bias) -> Optional[np.ndarray]:
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

    Examples:
        >>> import numpy as np, attnkit
        >>> g, u = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)
        >>> y = attnkit.linear(np.ones((1, 3), np.float32), attnkit.pack_swiglu(g, u))
        >>> np.allclose(y, 3 / (1 + np.exp(-3)) * 6)
        True
    """
    bias = swiglu_checked(gate_weight, up_weight, gate_bias, up_bias)
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

    Examples:
        >>> import numpy as np, attnkit
        >>> x, w, b = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32), np.arange(3, dtype=np.float32)
        >>> attnkit.linear(x, w, b, activation="relu").tolist()
        [[4.0, 5.0, 6.0], [4.0, 5.0, 6.0]]
    """
    act = "none" if activation is None else activation
    if on_gpu(x, None if isinstance(weight, PackedLinear) else weight, bias):
        if out is not None or isinstance(weight, PackedLinear):
            raise TypeError("linear: out= and packed weights are for NumPy arrays (the GPU path has neither)")
        return _cuda_route.linear(x, weight, bias, act)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        check_out_disjoint(out, x=x, weight=weight, bias=bias)
    if isinstance(weight, PackedLinear):
        if bias is not None and weight.bias is not None:
            raise ValueError("bias: the packed weight holds a bias already")
        b = weight.bias if bias is None else bias
        if (b is not None and weight._packed.quant is not None and isinstance(x, np.ndarray)
                and b.dtype != x.dtype and x.dtype.name in ("float32", "bfloat16")):
            b = b.astype(x.dtype)              # a quantized weight serves float32 and bfloat16 x alike
        return _core.linear_packed(x, weight._packed, b, act, out)
    return _core.linear(x, weight, bias, act, out)
