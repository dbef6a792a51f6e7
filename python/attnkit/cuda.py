"""attnkit on NVIDIA GPUs: the public functions with GPU arrays in and out.

``attnkit.scaled_dot_product_attention`` and the other public functions route here when an
argument lives in GPU memory: a CuPy array, a PyTorch CUDA tensor, or anything with
``__cuda_array_interface__`` (v3) or a CUDA ``__dlpack__``. Arrays are read in place; the result
is allocated by the caller's framework (torch in -> torch out, CuPy in -> CuPy out; other array
kinds get a CuPy array, or a torch tensor where CuPy is missing) and the work is queued on the
caller's current stream (``torch.cuda.current_stream()``, CuPy's current stream), asynchronously.

dtypes: float16 and bfloat16 (tensor cores, fp32 accumulation and softmax statistics) and float32
(fp32 arithmetic, no TF32). float64 is a TypeError on the GPU: use the CPU path. Masks may be bool
or of the query dtype. ``kv_lengths`` must be in host memory (a NumPy array or a sequence):
lengths shape the launch. Mixing host and device arrays in one call is a TypeError naming the
argument.

Requires attnkit built with ``-Ccmake.define.ATTNKIT_CUDA=ON``, an NVIDIA driver for CUDA 13 and,
for ``linear`` and ``multi_head_attention``, cuBLASLt (``pip install nvidia-cublas``).
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Optional

import numpy as np

__all__ = ["is_available", "why_unavailable", "device_count", "get_device_properties", "is_device_array"]

_module = None
_import_error: Optional[str] = None


def _load():
    """attnkit._cuda, or None (the reason in _import_error)."""
    global _module, _import_error
    if _module is not None or _import_error is not None:
        return _module
    try:
        _module = importlib.import_module("attnkit._cuda")
    except ImportError as exc:
        _import_error = (
            f"attnkit was built without the CUDA backend ({exc}); reinstall with "
            "pip install . -Ccmake.define.ATTNKIT_CUDA=ON on a machine with nvcc"
        )
        return None
    path = _cublaslt_path()
    if path:
        _module.set_cublaslt_path(path)
    return _module


def _cublaslt_path() -> Optional[str]:
    """libcublasLt from the nvidia-cublas wheel (CUDA 13), if installed."""
    for dist in ("nvidia-cublas", "nvidia-cublas-cu12"):
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name.startswith("libcublasLt.so"):
                return str(f.locate())
    return None


def why_unavailable() -> Optional[str]:
    """None when a usable GPU is there, else the reason (not built, no driver, no device)."""
    mod = _load()
    if mod is None:
        return _import_error
    count, reason = mod.device_status()
    if count > 0:
        return None
    if "InsufficientDriver" in reason or "NoDevice" in reason:
        return f"no usable NVIDIA GPU and driver ({reason})"
    return reason


def is_available() -> bool:
    """True when attnkit._cuda is built and a CUDA device with a recent enough driver is visible.
    attnkit.cuda.why_unavailable() says why not."""
    return why_unavailable() is None


def device_count() -> int:
    mod = _load()
    return mod.device_status()[0] if mod is not None else 0


def get_device_properties(device: int = 0) -> dict:
    """name, compute capability (major, minor), multiprocessors and memory of a device."""
    return _require().device_properties(device)


def _require():
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"attnkit.cuda is not available: {reason}")
    return _module


# ---------------------------------------------------------------------------------------------
# Array kinds
# ---------------------------------------------------------------------------------------------
_CAI_TYPES = {"<f4": "float32", "<f2": "float16", "<f8": "float64", "|b1": "bool", "<i8": "int64"}


def _kind(x) -> str:
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    return "other"


def is_device_array(x) -> bool:
    """Whether x is an array in GPU memory that attnkit can read in place."""
    if x is None or isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return False
    k = _kind(x)
    if k == "torch":
        return bool(getattr(x, "is_cuda", False))
    if k == "cupy":
        return hasattr(x, "data") and hasattr(x, "device")
    try:
        if hasattr(x, "__cuda_array_interface__"):
            return True
    except Exception:
        pass
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in (2, 13)   # kDLCUDA, kDLCUDAManaged
        except Exception:
            return False
    return False


def _torch_dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _describe(x, name: str, keep: list):
    """(pointer, shape, strides in elements, dtype, device, readonly) of a GPU array."""
    if x is None:
        return None
    if not is_device_array(x):
        where = "host memory" if isinstance(x, np.ndarray) or _kind(x) == "torch" else "no GPU memory"
        raise TypeError(
            f"{name}: expected a GPU array like the other arguments, got {type(x).__module__}.{type(x).__name__} "
            f"({where}); mixing host and device arrays is not allowed"
        )
    k = _kind(x)
    if k == "torch":
        return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), _torch_dtype_name(x), x.device.index or 0, False)
    try:
        cai = x.__cuda_array_interface__
    except Exception:
        cai = None
    if cai is not None:
        typestr = cai["typestr"]
        dt = _CAI_TYPES.get(typestr, typestr)
        item = int(typestr[2:]) if typestr[2:].isdigit() else 1
        shape = tuple(int(s) for s in cai["shape"])
        ptr, readonly = cai["data"]
        if cai.get("strides") is None:
            strides, acc = [], 1
            for s in reversed(shape):
                strides.append(acc)
                acc *= s
            strides = tuple(reversed(strides))
        else:
            if any(s % item for s in cai["strides"]):
                raise ValueError(f"{name}: strides must be multiples of the element size")
            strides = tuple(int(s) // item for s in cai["strides"])
        if k == "cupy":
            device = x.device.id
        else:
            device = _load().pointer_device(ptr) if ptr else 0
        return (int(ptr), shape, strides, dt, max(device, 0), bool(readonly))
    try:
        cap = x.__dlpack__(stream=None)
    except TypeError:
        cap = x.__dlpack__()
    keep.append(cap)
    return _load().dlpack_describe(cap)


class _Framework:
    """Allocation and the current stream of the caller's framework."""

    def __init__(self, x):
        self.kind = _kind(x)
        if self.kind == "other":
            try:
                import cupy  # noqa: F401
                self.kind = "cupy-for-other"
            except ImportError:
                self.kind = "torch-for-other"
        if self.kind == "torch":
            import torch
            self.torch = torch
            self.device = x.device
            self.stream = torch.cuda.current_stream(x.device).cuda_stream
        elif self.kind == "torch-for-other":
            import torch
            self.torch = torch
            dev = _describe(x, "query", [])[4]
            self.device = torch.device("cuda", dev)
            self.stream = torch.cuda.current_stream(self.device).cuda_stream
        else:
            import cupy
            self.cupy = cupy
            self.device = x.device.id if self.kind == "cupy" else _describe(x, "query", [])[4]
            with cupy.cuda.Device(self.device):
                self.stream = cupy.cuda.get_current_stream().ptr

    def empty(self, shape, dtype: str):
        if self.kind.startswith("torch"):
            t = self.torch.empty(tuple(shape), dtype=getattr(self.torch, dtype), device=self.device)
            return t
        if dtype == "bfloat16":
            raise TypeError("bfloat16 results need PyTorch: CuPy has no bfloat16 arrays")
        with self.cupy.cuda.Device(self.device):
            return self.cupy.empty(tuple(shape), dtype=dtype)

    def alloc(self, shape, dtype: str):
        arr = self.empty(shape, dtype)
        return arr, _describe(arr, "out", [])

    def permute(self, x, axes):
        return x.permute(*axes) if self.kind.startswith("torch") else x.transpose(axes)


def _first_device_array(*arrays):
    for a in arrays:
        if is_device_array(a):
            return a
    return None


# ---------------------------------------------------------------------------------------------
# The ops (called from attnkit.functional, which has checked the plain arguments)
# ---------------------------------------------------------------------------------------------
def scaled_dot_product_attention(query, key, value, attn_mask, causal: str, scale, enable_gqa: bool,
                                 kv_lengths, return_lse: bool, out):
    mod = _require()
    if kv_lengths is not None and is_device_array(kv_lengths):
        raise TypeError("kv_lengths: expected host memory (a NumPy array or a sequence of ints), got a GPU array")
    keep: list = []
    fw = _Framework(_first_device_array(query, key, value))
    q = _describe(query, "query", keep)
    k = _describe(key, "key", keep)
    v = _describe(value, "value", keep)
    m = _describe(attn_mask, "attn_mask", keep)
    o = None if out is None else (out, _describe(out, "out", keep))
    return mod.sdpa(q, k, v, m, causal, scale, enable_gqa, kv_lengths, return_lse, o, fw.alloc, fw.stream)


def softmax(x, axis: int, mask):
    mod = _require()
    keep: list = []
    fw = _Framework(x if is_device_array(x) else mask)
    return mod.softmax(_describe(x, "x", keep), axis, _describe(mask, "mask", keep), fw.alloc, fw.stream)


def linear(x, weight, bias, activation: str):
    mod = _require()
    keep: list = []
    fw = _Framework(_first_device_array(x, weight, bias))
    return mod.linear(_describe(x, "x", keep), _describe(weight, "weight", keep), _describe(bias, "bias", keep),
                      activation, fw.alloc, fw.stream)


def layer_norm(x, residual, weight, bias, eps: float, return_sum: bool):
    mod = _require()
    keep: list = []
    fw = _Framework(_first_device_array(x, residual, weight, bias))
    return mod.layer_norm(_describe(x, "x", keep), _describe(residual, "residual", keep),
                          _describe(weight, "weight", keep), _describe(bias, "bias", keep), eps, return_sum,
                          fw.alloc, fw.stream)


def activation(x, name: str):
    mod = _require()
    keep: list = []
    fw = _Framework(x)
    return mod.activation(_describe(x, "x", keep), name, fw.alloc, fw.stream)


def _dtype_name(x) -> str:
    if _kind(x) == "torch":
        return _torch_dtype_name(x)
    return str(getattr(x, "dtype", type(x).__name__))


def multi_head_attention(query, key, value, num_heads, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                         num_kv_heads, attn_mask, is_causal, causal_alignment, kv_lengths, scale):
    """attnkit.multi_head_attention on GPU arrays: linear + sdpa + linear, every step on the
    device and on the caller's stream (no host round trip, no synchronisation)."""
    named = (("query", query), ("key", key), ("value", value), ("in_proj_weight", in_proj_weight),
             ("in_proj_bias", in_proj_bias), ("out_proj_weight", out_proj_weight), ("out_proj_bias", out_proj_bias))
    for name, arr in named:
        if arr is not None and not is_device_array(arr):
            _describe(arr, name, [])                                   # raises the mixing TypeError
    dt = _dtype_name(query)
    for name, arr in named:
        if arr is not None and _dtype_name(arr) != dt:
            raise TypeError(f"{name}: dtype {_dtype_name(arr)} does not match query's {dt} (mixed dtypes are not allowed)")
    for name, arr in (("query", query), ("key", key), ("value", value)):
        if len(arr.shape) != 3:
            raise ValueError(f"{name}: expected shape (B, L, E), got {tuple(arr.shape)}")
    if tuple(key.shape[:2]) != tuple(value.shape[:2]):
        raise ValueError(f"value: expected (B, Lk) = {tuple(key.shape[:2])} as in key, got shape {tuple(value.shape)}")
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"key: expected batch size {query.shape[0]} as in query, got shape {tuple(key.shape)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    hq = int(num_heads)
    hk = hq if num_kv_heads is None else num_kv_heads
    if isinstance(hk, bool) or not isinstance(hk, (int, np.integer)) or hk < 1 or hq % hk:
        raise ValueError(f"num_kv_heads: expected a positive divisor of num_heads={hq}, got {num_kv_heads!r}")
    hk = int(hk)
    w_shape = tuple(in_proj_weight.shape)
    if len(w_shape) != 2 or w_shape[0] % (hq + 2 * hk) or w_shape[0] == 0:
        raise ValueError(f"in_proj_weight: expected shape ((num_heads + 2*num_kv_heads) * head_dim, E) with "
                         f"num_heads + 2*num_kv_heads = {hq + 2 * hk}, got {w_shape}")
    E = query.shape[-1]
    if w_shape[1] != E or key.shape[-1] != E or value.shape[-1] != E:
        raise ValueError(f"in_proj_weight: expected (rows, E) with E = query's, key's and value's last dim; got "
                         f"in_proj_weight {w_shape}, query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    if in_proj_bias is not None and tuple(in_proj_bias.shape) != (w_shape[0],):
        raise ValueError(f"in_proj_bias: expected shape {(w_shape[0],)}, got {tuple(in_proj_bias.shape)}")
    dh = w_shape[0] // (hq + 2 * hk)
    nq, nk = hq * dh, hk * dh
    if out_proj_weight is not None and (len(out_proj_weight.shape) != 2 or out_proj_weight.shape[1] != nq):
        raise ValueError(f"out_proj_weight: expected shape (E_out, num_heads*head_dim={nq}), got {tuple(out_proj_weight.shape)}")
    if out_proj_bias is not None:
        if out_proj_weight is None:
            raise ValueError("out_proj_bias: given without out_proj_weight")
        if tuple(out_proj_bias.shape) != (out_proj_weight.shape[0],):
            raise ValueError(f"out_proj_bias: expected shape {(out_proj_weight.shape[0],)}, got {tuple(out_proj_bias.shape)}")
    fw = _Framework(query)
    B, Lq, Lk = query.shape[0], query.shape[1], key.shape[1]

    def rows(lo, hi):
        return in_proj_weight[lo:hi], (None if in_proj_bias is None else in_proj_bias[lo:hi])

    # 1) project: one packed GEMM for self attention, q and kv apart for cross attention
    if key is query and value is query:
        qkv = linear(query, in_proj_weight, in_proj_bias, "none")        # (B, L, nq + 2 nk)
        q, k, v = qkv[..., :nq], qkv[..., nq:nq + nk], qkv[..., nq + nk:]
    else:
        q = linear(query, *rows(0, nq), "none")                           # (B, Lq, nq)
        if key is value:
            kv = linear(key, *rows(nq, nq + 2 * nk), "none")              # (B, Lk, 2 nk)
            k, v = kv[..., :nk], kv[..., nk:]
        else:
            k = linear(key, *rows(nq, nq + nk), "none")                   # (B, Lk, nk)
            v = linear(value, *rows(nq + nk, nq + 2 * nk), "none")        # (B, Lk, nk)
    # 2) split into heads: views, no copies
    q = fw.permute(q.reshape(B, Lq, hq, dh), (0, 2, 1, 3))                # (B, Hq, Lq, Dh)
    k = fw.permute(k.reshape(B, Lk, hk, dh), (0, 2, 1, 3))                # (B, Hk, Lk, Dh)
    v = fw.permute(v.reshape(B, Lk, hk, dh), (0, 2, 1, 3))                # (B, Hk, Lk, Dh)
    # 3) attend, each head written straight into its slot of the merged layout
    merged = fw.empty((B, Lq, hq, dh), dt)                                # (B, Lq, Hq, Dh)
    scaled_dot_product_attention(q, k, v, attn_mask, causal_alignment if is_causal else "none", scale, hk != hq,
                                 kv_lengths, False, fw.permute(merged, (0, 2, 1, 3)))
    merged = merged.reshape(B, Lq, nq)                                    # (B, Lq, Hq*Dh)
    # 4) project back
    if out_proj_weight is None:
        return merged
    return linear(merged, out_proj_weight, out_proj_bias, "none")
