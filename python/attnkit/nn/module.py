"""The one base class of attnkit.nn: a layer is a plain object whose weights are NumPy arrays.

There is no autograd and no parameter registry. A module's weights are its ndarray attributes, its
sub-layers are its Module attributes (or lists of them), and :meth:`Module.named_parameters` finds
both by walking ``vars(self)``, the way ``torch.nn.Module.state_dict`` names them.
"""

from __future__ import annotations

import copy
from typing import Iterator, Tuple

import numpy as np

__all__ = ["Module", "as_float_array"]


def as_float_array(value, dtype, name: str, shape=None) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype``, checked against ``shape`` (None entries match any size).

    Accepts NumPy arrays and anything with ``.numpy()`` (a torch tensor), so state dicts of either kind load
    without importing torch.
    """
    if value is None:
        raise ValueError(f"{name}: missing (got None)")
    if not isinstance(value, np.ndarray) and hasattr(value, "detach"):
        value = value.detach().cpu()
        if "bfloat16" in str(value.dtype):          # NumPy has no bfloat16
            value = value.float()
        value = value.numpy()
    array = np.ascontiguousarray(np.asarray(value), dtype=dtype)
    if shape is not None:
        shape = tuple(shape)
        if array.ndim != len(shape) or any(e is not None and e != s for s, e in zip(array.shape, shape)):
            expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
            raise ValueError(f"{name}: has shape {array.shape}, expected {expected}")
    return array


class Module:
    """Base of every layer. Subclasses keep weights as ndarray attributes and sub-layers as attributes."""

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, np.ndarray]]:
        """Yield ``(dotted name, array)`` for every weight, sub-layers included (lists as ``name.i``)."""
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item.named_parameters(f"{prefix}{name}.{i}.")

    def num_parameters(self) -> int:
        return sum(int(a.size) for _, a in self.named_parameters())

    @property
    def dtype(self) -> np.dtype:
        """The floating dtype of the weights (the dtype inputs are computed in)."""
        for _, array in self.named_parameters():
            if array.dtype.kind == "f":
                return array.dtype
        return np.dtype(np.float32)

    def astype(self, dtype) -> "Module":
        """A copy of this module with every floating weight converted to ``dtype`` (float32 or float64)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype: attnkit computes in float32 or float64, got {dtype}")
        new = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
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
