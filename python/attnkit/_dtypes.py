"""What counts as a floating dtype or a real number in attnkit: asked by name, never by NumPy's category.

ml_dtypes' bfloat16 is a NumPy dtype of kind 'V' (not 'f'), it is no subtype of ``np.floating``, and
``np.finfo`` refuses it with ml_dtypes 0.2 (0.7 registers it; ``ml_dtypes.finfo`` takes it in both): so ``dtype.kind == "f"``,
``np.issubdtype(dtype, np.floating)`` and ``isinstance(value, np.floating)`` all miss it. Every check in the
package that classifies a dtype or a scalar goes through this module.
"""
from __future__ import annotations

import numpy as np

#: The dtypes attnkit computes in (half precision is stored in half and computed in float32).
FLOAT_NAMES = ("float32", "float64", "float16", "bfloat16")


def is_float_dtype(dtype) -> bool:
    """Whether ``dtype`` (a NumPy dtype or anything ``np.dtype`` takes) is float16, bfloat16, float32 or float64."""
    try:
        return np.dtype(dtype).name in FLOAT_NAMES
    except TypeError:
        return False


def bfloat16() -> np.dtype:
    """The NumPy bfloat16 dtype (ml_dtypes, a dependency of attnkit; imported on first use)."""
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def is_real_scalar(value) -> bool:
    """A real number given as one value: a Python int or float, or a NumPy integer or floating scalar of any
    width (float16 and ml_dtypes' bfloat16 included); not a bool, a string, a complex or an array."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return isinstance(value, np.generic) and value.dtype.name == "bfloat16"
