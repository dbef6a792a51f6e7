"""The one base class of attnkit.nn: a layer is a plain object whose weights are NumPy arrays.

There is no autograd and no parameter registry. A module's weights are its ndarray attributes, its
sub-layers are its Module attributes (or lists of them), and :meth:`Module.named_parameters` finds
both by walking ``vars(self)``, the way ``torch.nn.Module.state_dict`` names them. :class:`StateDict` is the one
reader of named tensors (torch.nn.Transformer state dicts and Hugging Face checkpoints alike).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Iterator, List, Set, Tuple

import numpy as np

from .._dtypes import FLOAT_NAMES, bfloat16, is_float_dtype
from ..functional import PackedLinear
from ..quant import QTensor, from_checkpoint, stored_spec

__all__ = ["Module", "as_float_array", "StateDict"]


def as_float_array(value, dtype, name: str, shape=None) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype``, checked against ``shape`` (None entries match any size).

    Accepts NumPy arrays and anything with ``.numpy()`` (a torch tensor), so state dicts of either kind load
    without importing torch.
    """
    if value is None:
        raise ValueError(f"{name}: missing (got None)")
    if isinstance(value, QTensor):                  # a quantized checkpoint's weight: packed as stored
        _check_shape(value.q, shape, f"{name}: has")
        return value
    array = np.ascontiguousarray(_to_numpy(value), dtype=dtype)
    _check_shape(array, shape, f"{name}: has")
    return array


def float_dtype(dtype) -> np.dtype:
    """The NumPy dtype of a model's weights: float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``, or
    the string "bfloat16"); ValueError naming ``dtype`` otherwise."""
    if "bfloat16" in str(dtype):   # "bfloat16", ml_dtypes.bfloat16 or its dtype, torch.bfloat16
        return bfloat16()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_NAMES:
        raise ValueError(f"dtype: float32, float64, float16 or bfloat16, got {dtype!r}")
    return dt


def weight_dtype(array) -> np.dtype:
    """float64, float16 and bfloat16 (ml_dtypes) weights keep their dtype (half precision is stored in half and
    computed in float32 by the kernels); everything else computes in float32."""
    dt = getattr(array, "dtype", None)
    if isinstance(dt, np.dtype) and dt.name in ("float64", "float16", "bfloat16"):
        return dt
    return np.dtype(np.float64) if "float64" in str(dt) else np.dtype(np.float32)


def glorot_uniform(rng, shape, dtype):
    """Xavier/Glorot uniform, as PyTorch initialises attention projections."""
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-bound, bound, shape).astype(dtype)


def small_normal(rng, n, dtype):
    """Small random biases (zero in PyTorch's init; random here so tests exercise them)."""
    return rng.normal(0.0, 0.02, n).astype(dtype)


def _to_numpy(value) -> np.ndarray:
    """A NumPy view of an array or a (CPU) torch tensor; bfloat16 tensors become float32 (NumPy has none)."""
    if not isinstance(value, np.ndarray) and hasattr(value, "detach"):
        value = value.detach().cpu()
        if "bfloat16" in str(value.dtype):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _check_shape(array: np.ndarray, shape, what: str) -> None:
    """ValueError "{what} shape (..), expected (..)" unless array matches ``shape`` (None entries: any size)."""
    if shape is None:
        return
    shape = tuple(shape)
    if array.ndim != len(shape) or any(e is not None and e != s for s, e in zip(array.shape, shape)):
        expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"{what} shape {array.shape}, expected {expected}")


class StateDict:
    """Hands out the tensors of a state dict by name, converted to ``dtype`` and checked against their shapes.

    Every tensor handed out is remembered, for [unused][attnkit.nn.StateDict.unused] (a loader's strict check).

    Args:
        tensors (Mapping or str or os.PathLike): names to NumPy arrays or (CPU) torch tensors, or the path of a
            .safetensors file (bfloat16 files too).
        prefix: looked up as ``prefix + name``.
        dtype (numpy.dtype or str): float32 (default), float64, float16 or bfloat16: the dtype handed out.
        origin: what error messages name before the key ("state dict", a file path).

    Raises:
        TypeError: tensors not a mapping. ValueError: an unsupported dtype.

    Examples:
        >>> import numpy as np
        >>> from attnkit.nn import StateDict
        >>> t = StateDict({"enc.w": np.ones((2, 3))}, "enc.")
        >>> t("w", (2, None)).dtype, t.names(), t.unused()
        (dtype('float32'), ['w'], [])
    """

    def __init__(self, tensors, prefix: str = "", *, dtype=np.float32, origin: str = "state dict"):
        if isinstance(tensors, (str, os.PathLike)):
            from attnkit.models._checkpoint import _load_safetensors   # reads bfloat16 files too
            tensors = _load_safetensors(os.fspath(tensors))
        if not hasattr(tensors, "keys"):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, got {type(tensors).__name__}")
        self.tensors, self.prefix, self.dtype, self.origin = tensors, prefix, float_dtype(dtype), origin
        self.used: Set[str] = set()

    def has(self, name: str) -> bool:
        """Whether the tensor ``prefix + name`` is there.

        Args:
            name: the name under ``prefix``.

        Returns:
            True or False.
        """
        return self.prefix + name in self.tensors

    def names(self) -> List[str]:
        """The names under ``prefix``, without it.

        Returns:
            A list of str, in the mapping's order.
        """
        return [k[len(self.prefix):] for k in self.tensors if k.startswith(self.prefix)]

    def unused(self) -> List[str]:
        """The keys under ``prefix`` never handed out.

        Returns:
            A sorted list of full keys (prefix included).
        """
        return sorted(k for k in self.tensors if k.startswith(self.prefix) and k not in self.used)

    def __call__(self, name: str, shape, *, transpose: bool = False) -> np.ndarray:
        """The tensor ``prefix + name``, converted to ``dtype`` and checked against ``shape``.

        Args:
            name: the name under ``prefix``.
            shape (tuple): the expected shape; None entries match any size.
            transpose: the tensor is stored transposed (a Conv1D weight (in, out) for an (out, in) linear):
                checked against the reversed shape and handed out transposed.

        Returns:
            A C-contiguous array of ``dtype`` and ``shape`` (a quantized checkpoint's weight: its packed form).

        Raises:
            KeyError: no such tensor. ValueError: another shape, or an integer tensor where a float one belongs;
                both name the key.

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import StateDict
            >>> StateDict({"conv.w": np.zeros((4, 6))})("conv.w", (6, 4), transpose=True).shape
            (6, 4)
        """
        key = self.prefix + name
        if key not in self.tensors:
            raise KeyError(f"{self.origin}: missing tensor '{key}'")
        array = _to_numpy(self.tensors[key])
        stored = stored_spec()
        if stored is not None and self.prefix + name + "_scale" in self.tensors and array.dtype.kind in "iu":
            # a quantized weight (save_pretrained): q stored (out, in) whatever `transpose` says
            shape = tuple(shape)
            self.used.update((key, key + "_scale"))
            qd = "int4" if array.dtype == np.uint8 else "int8"     # per tensor: an int4 model's LM head is int8
            qt = from_checkpoint(array, _to_numpy(self.tensors[key + "_scale"]), shape[1], qd,
                                 stored[1] if qd == "int4" else None, self.dtype)
            _check_shape(qt.q, shape, f"{self.origin}: tensor '{key}' has")
            return qt
        if not is_float_dtype(array.dtype):
            raise ValueError(f"{self.origin}: tensor '{key}' has dtype {array.dtype}, expected floating point")
        _check_shape(array, tuple(shape)[::-1] if transpose else shape, f"{self.origin}: tensor '{key}' has")
        self.used.add(key)
        return np.ascontiguousarray(array.T if transpose else array, dtype=self.dtype)


class Module:
    """Base of every layer: weights are NumPy arrays (or packed weights) held as attributes, sub-layers as
    attributes or lists of them. There is no autograd and no registry: the attributes are walked.

    Examples:
        >>> from attnkit.nn import LayerNorm
        >>> ln = LayerNorm.init(4)
        >>> [name for name, _ in ln.named_parameters()], ln.num_parameters(), ln.astype("float64").dtype
        (['weight', 'bias'], 8, dtype('float64'))
    """

    def _weights(self, prefix: str = ""):
        """(dotted name, ndarray or PackedLinear) for every weight, sub-layers included (lists as ``name.i``)."""
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, (np.ndarray, PackedLinear)):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._weights(f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item._weights(f"{prefix}{name}.{i}.")

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, np.ndarray]]:
        """Every weight with its dotted name, sub-layers included (lists as ``name.i``).

        Packed weights ([PackedLinear][attnkit.PackedLinear]) are read back from their panels into new arrays.

        Args:
            prefix: put before every name.

        Yields:
            (name, numpy.ndarray) pairs.
        """
        for name, value in self._weights(prefix):
            yield name, value.unpack() if isinstance(value, PackedLinear) else value

    def num_parameters(self) -> int:
        """The number of weight entries, sub-layers included.

        Returns:
            An int.
        """
        return sum(int(np.prod(a.shape)) for _, a in self._weights())

    @property
    def dtype(self) -> np.dtype:
        """The floating dtype of the weights (the dtype inputs are computed in)."""
        for _, array in self._weights():
            if is_float_dtype(array.dtype):
                return np.dtype(array.dtype)
        return np.dtype(np.float32)

    def astype(self, dtype) -> "Module":
        """A copy of this module with every floating weight converted (sub-layers too); this one is unchanged.

        Args:
            dtype (numpy.dtype or str): float32, float64, float16 or bfloat16 (or "bfloat16").

        Returns:
            The copy, of this module's class.

        Raises:
            ValueError: another dtype.
        """
        dtype = float_dtype(dtype)
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray) and is_float_dtype(value.dtype):
                setattr(new, name, value.astype(dtype))
            elif isinstance(value, PackedLinear):
                setattr(new, name, value.astype(dtype))
            elif isinstance(value, Module):
                setattr(new, name, value.astype(dtype))
            elif isinstance(value, list) and value and all(isinstance(v, Module) for v in value):
                setattr(new, name, [v.astype(dtype) for v in value])
        return new

    def __repr__(self) -> str:
        fields = [f"{k}={v!r}" for k, v in vars(self).items()
                  if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and not isinstance(v, np.ndarray)]
        return f"{type(self).__name__}({', '.join(fields)})"
