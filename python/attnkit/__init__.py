"""attnkit: fast, trustworthy attention kernels for NumPy on the CPU.

Self, cross and causal scaled dot-product attention, multi-head attention, softmax, linear,
layer_norm and activations, as multithreaded SIMD kernels (AVX-512, AVX2+FMA or portable,
chosen at import). NumPy arrays in, NumPy arrays out.
"""
import os as _os
import warnings as _warnings

from . import _core
from .functional import (
    gelu,
    layer_norm,
    PackedLinear,
    linear,
    pack_linear,
    multi_head_attention,
    relu,
    scaled_dot_product_attention,
    softmax,
    rms_norm,
    silu,
    pack_swiglu,
    apply_rotary,
)
from .quant import QuantizedLinear, quantize_linear, quantize_swiglu, quantize_weight
from . import reference
from . import cuda

__version__ = _core.__version__

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
    "quantize_linear",
    "quantize_swiglu",
    "quantize_weight",
    "QuantizedLinear",
    "set_num_threads",
    "get_num_threads",
    "set_isa",
    "get_config",
    "reference",
    "cuda",
    "__version__",
]


def set_num_threads(n: int) -> None:
    """Set the size of attnkit's thread pool (the caller's thread counts as one).

    Args:
        n: threads, >= 1 (default at import: the CPUs this process may use, or ATTNKIT_NUM_THREADS).

    Raises:
        TypeError: n not an int. ValueError: n < 1.

    Examples:
        >>> import attnkit
        >>> before = attnkit.get_num_threads()
        >>> attnkit.set_num_threads(1); attnkit.get_num_threads()
        1
        >>> attnkit.set_num_threads(before)
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads attnkit's kernels use (see [set_num_threads][attnkit.set_num_threads]).

    Returns:
        An int >= 1.
    """
    return _core.get_num_threads()


def set_isa(name: str) -> None:
    """Run the kernels on the instruction-set path `name` ('amx_bf16', 'avx512_bf16', 'avx512', 'avx2' or
    'generic'; 'avx512_bf16' is the avx512 path with bfloat16 `linear` on vdpbf16ps (opt-in), 'amx_bf16' the
    same with bfloat16 `linear` and prefill attention on AMX tiles (tdpbf16ps; the default where usable).

    The default is the fastest usable path; the environment variable ATTNKIT_ISA chooses another one at
    import.

    Args:
        name: one of get_config()['usable_isas'].

    Raises:
        TypeError: name not a str. ValueError: this CPU cannot run it (for 'amx_bf16' with the reason,
            also in get_config()['amx']), or an unknown name.

    Examples:
        >>> import attnkit
        >>> before = attnkit.get_config()["isa"]
        >>> attnkit.set_isa("generic"); attnkit.get_config()["isa"]
        'generic'
        >>> attnkit.set_isa(before)
    """
    if not isinstance(name, str):
        raise TypeError(f"set_isa: name must be a str, got {type(name).__name__}")
    _core.set_isa(name)


def get_config() -> dict:
    """What this build and this CPU run.

    Returns:
        A dict: 'version', 'isa' (the path in use), 'usable_isas' and 'compiled_isas' (lists, slowest
            first), 'amx' (whether the amx_bf16 path can run here: 'usable', 'emulated: ...' or
            'unusable: <why>') and 'num_threads'.

    Examples:
        >>> import attnkit
        >>> "generic" in attnkit.get_config()["usable_isas"]
        True
    """
    return {
        "version": __version__,
        "isa": _core.get_isa(),
        "usable_isas": list(_core.usable_isas()),
        "compiled_isas": list(_core.compiled_isas()),
        "amx": _core.amx_status(),
        "amx_int8": _core.amx_int8_status(),
        "num_threads": _core.get_num_threads(),
    }


def _isa_from_env() -> None:
    name = _os.environ.get("ATTNKIT_ISA")
    if not name:
        return
    try:
        _core.set_isa(name.strip().lower())
    except ValueError as exc:
        _warnings.warn(f"ATTNKIT_ISA={name!r} ignored: {exc}; using {_core.get_isa()!r}", RuntimeWarning, stacklevel=2)


_isa_from_env()
