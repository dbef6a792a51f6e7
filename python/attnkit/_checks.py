"""Argument checks shared by the rooms of attnkit.functional (_attention, _linear, _rowwise): the Python-level
options (flags, numbers, out=) and the routing test for GPU arrays. Each raises TypeError or ValueError naming
the argument."""
from __future__ import annotations

import numpy as np

from . import cuda as _cuda_route
from ._dtypes import is_real_scalar


def on_gpu(*arrays) -> bool:
    """True when any argument is a GPU array: the call then runs on attnkit.cuda. (A loop, not any() over a
    generator: it runs several times per layer of a decoding step.)"""
    for a in arrays:
        if a is not None and type(a) is not np.ndarray and _cuda_route.is_device_array(a):
            return True
    return False


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def check_float(value, name: str) -> float:
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


def check_out_disjoint(out: np.ndarray, **inputs) -> None:
    for name, arr in inputs.items():
        if isinstance(arr, np.ndarray) and np.may_share_memory(out, arr):
            raise ValueError(f"out: must not share memory with {name}")

