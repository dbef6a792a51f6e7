"""Quantized linear weights: int8 (a scale per output row) and int4 (a scale per row and group of
``group_size`` inputs), packed once and run by ``attnkit.linear`` like a ``pack_linear`` weight.

``linear(x, quantize_linear(w))`` quantizes each row of x (float32 or bfloat16) to int8 on the fly
(s_m = max|x_m| / 127), multiplies in integers with int32 sums, and rescales once in the epilogue
(then bias, activation or the SwiGLU gate); the output has x's dtype. The error against x @ w.T in
exact arithmetic is bounded element by element (README, "Quantized inference"):

    |y[m, n] - (x w^T)[m, n]| <= sum_k (|x[m, k]| d_w[n, k] + |w[n, k]| d_x[m] + d_x[m] d_w[n, k])

with d_x[m] = s_m / 2 and d_w[n, k] = half the weight's step there (scale[n] / 2 for int8, the group's
scale / 2 for int4), plus float rounding (about 1e-6 of sum_k |x w| in float32, 2^-9 of |y| for a
bfloat16 output).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, Optional, Tuple

import numpy as np

from . import _core
from .functional import PackedLinear, _swiglu_checked

__all__ = ["QuantizedLinear", "quantize_linear", "quantize_swiglu", "quantize_weight", "DEFAULT_GROUP_SIZE", "quantizing"]

# int4's group along K: 128 measured faster than 32 at every size in bench/NOTES.md ("int4 groups")
# for a small accuracy cost (see the README's table); llama.cpp's Q4_0 uses 32, GPTQ 128.
DEFAULT_GROUP_SIZE = 128
_CHUNK_ROWS = 1024     # rows quantized at a time: bounds the float32 temporaries to 1024 x K


def _check_dtype(dtype) -> str:
    if dtype not in ("int8", "int4"):
        raise ValueError(f"dtype: expected 'int8' or 'int4', got {dtype!r}")
    return dtype


def _group(dtype: str, group_size) -> int:
    if dtype == "int8":
        if group_size is not None:
            raise ValueError("group_size: int8 weights have one scale per row; group_size is for int4")
        return 0
    g = DEFAULT_GROUP_SIZE if group_size is None else group_size
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 32 or g % 32:
        raise ValueError(f"group_size: expected a positive multiple of 32, got {group_size!r}")
    return int(g)


def quantize_weight(weight: np.ndarray, dtype: str = "int8", group_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization of ``weight`` (N, K): q (N, K) int8 and its float32 scales, W ~ q * scale.

    int8: scale (N,) = max_k |W[n]| / 127, q in [-127, 127]. int4: scale (N, ceil(K / group_size)) =
    the group's max |W| / 7, q in [-7, 7]. Rows or groups of zeros get scale 0."""
    dtype = _check_dtype(dtype)
    g = _group(dtype, group_size)
    if not isinstance(weight, np.ndarray):
        raise TypeError(f"weight: expected a numpy.ndarray, got {type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(f"weight: expected shape (out_features, in_features), got {weight.shape}")
    if weight.dtype.kind != "f" and weight.dtype.name != "bfloat16":
        raise TypeError(f"weight: expected a float array, got {weight.dtype}")
    N, K = weight.shape
    qmax = 127.0 if dtype == "int8" else 7.0
    ng = 1 if dtype == "int8" else -(-K // g)
    q = np.empty((N, K), np.int8)
    scale = np.empty((N,) if dtype == "int8" else (N, ng), np.float32)
    for r0 in range(0, N, _CHUNK_ROWS):
        w = np.asarray(weight[r0:r0 + _CHUNK_ROWS], dtype=np.float32)
        if not np.isfinite(w).all():
            raise ValueError("weight: has NaN or infinite entries")
        if dtype == "int8":
            s = np.abs(w).max(axis=1, initial=0.0) / qmax                      # (n,)
            inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
            q[r0:r0 + len(w)] = np.clip(np.rint(w * inv[:, None]), -qmax, qmax)
            scale[r0:r0 + len(w)] = s
        else:
            wp = np.zeros((len(w), ng * g), np.float32)
            wp[:, :K] = w
            wg = wp.reshape(len(w), ng, g)                                       # (n, groups, g)
            s = np.abs(wg).max(axis=2) / qmax                                   # (n, groups)
            inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
            q[r0:r0 + len(w)] = np.clip(np.rint(wg * inv[:, :, None]), -qmax, qmax).reshape(len(w), ng * g)[:, :K]
            scale[r0:r0 + len(w)] = s
    return q, scale


class QuantizedLinear(PackedLinear):
    """A linear layer's weight quantized to int8 or int4 and packed (``quantize_linear``).

    ``linear(x, qw)`` takes x float32 or bfloat16 and returns x's dtype; bias (kept in float, cast
    to x's dtype per call), ``activation=`` and ``out=`` work as with ``pack_linear``'s weights. The
    packed layout is the same on every kernel path (``set_isa`` repacks nothing). ``nbytes``:
    K (int8) or K / 2 (int4) bytes a row plus the scales; ``unpack()`` gives q * scale in float32;
    ``quantized()`` gives q and the scales back (for saving)."""

    __slots__ = ()

    @classmethod
    def from_quantized(cls, q: np.ndarray, scale: np.ndarray, bias: Optional[np.ndarray] = None, *,
                       dtype: str = "int8", group_size: Optional[int] = None, gated: bool = False) -> "QuantizedLinear":
        """From q (N, K) int8 and scale (N,) (int8) or (N, ceil(K / group_size)) (int4), as
        ``quantize_weight`` gives them or a checkpoint stores them: nothing is quantized again."""
        dtype = _check_dtype(dtype)
        g = _group(dtype, group_size)
        if bias is not None:
            if not isinstance(bias, np.ndarray):
                raise TypeError(f"bias: expected a numpy.ndarray, got {type(bias).__name__}")
            if bias.ndim != 1 or (isinstance(q, np.ndarray) and q.ndim == 2 and bias.shape[0] != q.shape[0]):
                raise ValueError(f"bias: expected shape ({q.shape[0] if q.ndim == 2 else 'out_features'},), got {bias.shape}")
        self = object.__new__(cls)
        self._packed = _core.pack_quantized(q, scale, dtype, g, bool(gated))
        self.bias = bias
        return self

    def __init__(self, weight: np.ndarray, bias: Optional[np.ndarray] = None, *, dtype: str = "int8",
                 group_size: Optional[int] = None):
        if isinstance(weight, PackedLinear):
            raise TypeError("weight: already packed (quantize the float weight)")
        q, scale = quantize_weight(weight, dtype, group_size)
        other = QuantizedLinear.from_quantized(q, scale, bias, dtype=dtype, group_size=group_size)
        self._packed, self.bias = other._packed, other.bias

    @property
    def dtype(self) -> str:
        """'int8' or 'int4' (x and the output may be float32 or bfloat16)."""
        return self._packed.quant

    @property
    def group_size(self) -> Optional[int]:
        """int4: inputs per scale; int8: None."""
        return int(self._packed.group_size) if self._packed.quant == "int4" else None

    @property
    def isa(self) -> str:
        """'any': the quantized layout is the same on every path."""
        return "any"

    def quantized(self) -> Tuple[np.ndarray, np.ndarray]:
        """(q, scale): q (N, K) int8 and the float32 scales, as ``quantize_weight`` gives them."""
        return _core.unpack_quantized(self._packed)

    def astype(self, dtype) -> "QuantizedLinear":
        """The same quantized weight; only the bias follows ``dtype`` (x's dtype picks the compute)."""
        new = object.__new__(type(self))
        new._packed = self._packed
        new.bias = None if self.bias is None else self.bias.astype(dtype)
        return new

    def __repr__(self) -> str:
        g = ", gated=True" if self.gated else ""
        gs = f", group_size={self.group_size}" if self.group_size else ""
        return f"QuantizedLinear(shape={self.shape}, dtype={self.dtype!r}{gs}, bias={self.bias is not None}{g})"


class QuantizedEmbedding:
    """A tied embedding table kept once, as its quantized LM head: ``table[ids]`` gives the rows
    q * scale (the values the head multiplies by) in ``dtype``, shape ``ids.shape + (K,)``.

    A model whose output embedding is tied to its input embedding and whose head is quantized
    (GPT-2, tied Llama-family models) looks tokens up here instead of keeping a float copy of the
    table beside the quantized one: GPT-2-small's 154 MB float32 table was 60 % of what its int8
    model kept after load."""

    __slots__ = ("head", "dtype")

    def __init__(self, head: QuantizedLinear, dtype=np.float32):
        if not isinstance(head, QuantizedLinear) or head.gated:
            raise TypeError(f"head: expected an ungated QuantizedLinear, got {head!r}")
        self.head, self.dtype = head, np.dtype(dtype)

    @property
    def shape(self) -> Tuple[int, int]:
        return self.head.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return 0  # the head's bytes: nothing of its own

    def __getitem__(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids: expected integer token ids, got {ids.dtype}")
        rows = _core.quantized_rows(self.head._packed, np.ascontiguousarray(ids.reshape(-1), dtype=np.int64))
        rows = rows.reshape(ids.shape + (self.shape[1],))
        return rows if self.dtype == np.float32 else rows.astype(self.dtype)

    def astype(self, dtype) -> "QuantizedEmbedding":
        return QuantizedEmbedding(self.head, dtype)

    def __repr__(self) -> str:
        return f"QuantizedEmbedding(shape={self.shape}, head={self.head!r}, dtype={self.dtype})"


def tied_embedding(table, head):
    """The input embedding of a model whose LM head is tied to it: the head itself (as a
    QuantizedEmbedding) when the head is quantized, else the float table."""
    return QuantizedEmbedding(head, table.dtype) if isinstance(head, QuantizedLinear) and not head.gated else table


def quantize_linear(weight: np.ndarray, bias: Optional[np.ndarray] = None, *, dtype: str = "int8",
                    group_size: Optional[int] = None) -> QuantizedLinear:
    """Quantize ``weight`` (out_features, in_features) to ``dtype`` 'int8' (a scale per row) or
    'int4' (a scale per row and ``group_size`` inputs, default 128) and pack it for ``linear``."""
    return QuantizedLinear(weight, bias, dtype=dtype, group_size=group_size)


def quantize_swiglu(gate_weight: np.ndarray, up_weight: np.ndarray, gate_bias: Optional[np.ndarray] = None,
                    up_bias: Optional[np.ndarray] = None, *, dtype: str = "int8",
                    group_size: Optional[int] = None) -> QuantizedLinear:
    """``pack_swiglu`` quantized: ``linear(x, qw)`` gives silu(x W_gate^T + b_gate) * (x W_up^T + b_up)."""
    bias = _swiglu_checked(gate_weight, up_weight, gate_bias, up_bias)
    qg, sg = quantize_weight(gate_weight, dtype, group_size)
    qu, su = quantize_weight(up_weight, dtype, group_size)
    return QuantizedLinear.from_quantized(np.concatenate([qg, qu]), np.concatenate([sg, su]), bias, dtype=dtype,
                                          group_size=group_size, gated=True)


# ---------------------------------------------------------------------------------------------------
# Models: every linear layer packed through ``pack`` / ``pack_gated`` below. Inside ``quantizing(...)``
# (what ``from_pretrained(..., quantize=...)`` sets) float weights are quantized as they are packed;
# a ``QTensor`` (a quantized checkpoint's q and scales, see ``save_pretrained``) is packed as it is.
# ---------------------------------------------------------------------------------------------------
_SPEC = contextvars.ContextVar("attnkit_quantize", default=None)


@contextlib.contextmanager
def quantizing(dtype: Optional[str], group_size: Optional[int] = None, lm_head=None):
    """Within the block, ``pack`` quantizes float weights to ``dtype`` ('int8', 'int4'; None: no change),
    and ``pack_head`` the LM head to ``lm_head``: 'int8' (the default, for int4 models too: the head is
    read once a token like every layer, and 4-bit logits were measured coarse), 'int4', True (= ``dtype``)
    or False (kept in float)."""
    if dtype is not None:
        _check_dtype(dtype)
        group_size = _group(dtype, group_size) or None
        if lm_head is None:
            lm_head = "int8"
        elif lm_head is True:
            lm_head = dtype
        elif lm_head is not False and lm_head not in ("int8", "int4"):
            raise ValueError(f"quantize_lm_head: expected True, False, 'int8' or 'int4', got {lm_head!r}")
    token = _SPEC.set(None if dtype is None else (dtype, group_size, lm_head))
    try:
        yield
    finally:
        _SPEC.reset(token)


def quantize_spec() -> Optional[Tuple[str, Optional[int], bool]]:
    """(dtype, group_size, lm_head: 'int8', 'int4' or False) of the enclosing ``quantizing`` block, or None."""
    return _SPEC.get()


_STORED = contextvars.ContextVar("attnkit_stored_quantization", default=None)


@contextlib.contextmanager
def stored_quantization(dtype: Optional[str], group_size: Optional[int] = None):
    """Within the block, a state dict's int8 / uint8 weights with a 'weight_scale' are read as
    ``dtype`` ('int8', 'int4') QTensors (a checkpoint written by ``save_pretrained``)."""
    token = _STORED.set(None if dtype is None else (_check_dtype(dtype), group_size))
    try:
        yield
    finally:
        _STORED.reset(token)


def stored_spec() -> Optional[Tuple[str, Optional[int]]]:
    return _STORED.get()


class QTensor:
    """One quantized weight of a checkpoint: q (N, K) int8 and its scales, not yet packed. ``dtype`` is
    the model's activation dtype (what its float tensors load as); rows slice and stack like arrays."""

    __slots__ = ("q", "scale", "qdtype", "group_size", "dtype")

    def __init__(self, q, scale, qdtype, group_size, dtype):
        self.q, self.scale, self.qdtype, self.group_size, self.dtype = q, scale, qdtype, group_size, np.dtype(dtype)

    @property
    def shape(self):
        return self.q.shape

    @property
    def ndim(self):
        return 2

    def __getitem__(self, rows):
        if not isinstance(rows, slice):
            raise TypeError("a quantized weight slices by rows only")
        return QTensor(self.q[rows], self.scale[rows], self.qdtype, self.group_size, self.dtype)


def concat_rows(parts):
    """np.concatenate of weights along rows, for float arrays and QTensors alike."""
    if all(isinstance(p, QTensor) for p in parts):
        p0 = parts[0]
        return QTensor(np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]),
                       p0.qdtype, p0.group_size, p0.dtype)
    return np.concatenate(parts)


def pack(weight, bias=None) -> PackedLinear:
    """A model's linear weight packed: as stored (QTensor), quantized (inside ``quantizing``), or float."""
    if isinstance(weight, QTensor):
        return QuantizedLinear.from_quantized(weight.q, weight.scale, bias, dtype=weight.qdtype,
                                              group_size=weight.group_size)
    spec = _SPEC.get()
    if spec is not None:
        return quantize_linear(weight, bias, dtype=spec[0], group_size=spec[1])
    return PackedLinear(weight, bias)


def pack_gated(gate, up, gate_bias=None, up_bias=None) -> PackedLinear:
    """``pack_swiglu`` through the same choice as ``pack``."""
    if isinstance(gate, QTensor):
        both = concat_rows([gate, up])
        bias = None if gate_bias is None else np.concatenate([gate_bias, up_bias])
        return QuantizedLinear.from_quantized(both.q, both.scale, bias, dtype=both.qdtype, group_size=both.group_size,
                                              gated=True)
    spec = _SPEC.get()
    if spec is not None:
        return quantize_swiglu(gate, up, gate_bias, up_bias, dtype=spec[0], group_size=spec[1])
    from .functional import pack_swiglu
    return pack_swiglu(gate, up, gate_bias, up_bias)


def pack_head(weight, *, packed: bool = False):
    """A model's LM head: as stored (QTensor), quantized when the enclosing ``quantizing`` asks for the
    head too, else the float array itself (``packed``: ``pack_linear``'s weight)."""
    spec = _SPEC.get()
    if isinstance(weight, QTensor):
        return pack(weight)
    if spec is not None and spec[2]:
        return quantize_linear(weight, dtype=spec[2], group_size=spec[1] if spec[2] == "int4" else None)
    return PackedLinear(weight) if packed else weight


def to_checkpoint(layer: PackedLinear, rows: Optional[slice] = None, *, transpose: bool = False) -> Dict[str, np.ndarray]:
    """The tensors ``save_pretrained`` writes for (rows of) a packed layer, keyed by suffix: a float
    weight ('weight', the model's dtype; transposed for GPT-2's Conv1D), or q ('weight': int8 (N, K);
    int4 two a byte, (N, ceil(K / 2)) uint8, low nibble first, q + 8) and 'weight_scale'."""
    if isinstance(layer, QuantizedLinear):
        q, s = layer.quantized()
        if rows is not None:
            q, s = q[rows], s[rows]
        if layer.dtype == "int4":
            u = (q.astype(np.int16) + 8).astype(np.uint8)
            if u.shape[1] % 2:
                u = np.concatenate([u, np.full((u.shape[0], 1), 8, np.uint8)], axis=1)
            q = u[:, 0::2] | (u[:, 1::2] << 4)
        return {"weight": np.ascontiguousarray(q), "weight_scale": np.ascontiguousarray(s)}
    w = layer.unpack()
    if rows is not None:
        w = w[rows]
    return {"weight": np.ascontiguousarray(w.T if transpose else w)}


def from_checkpoint(q: np.ndarray, scale: np.ndarray, K: int, qdtype: str, group_size: Optional[int], dtype) -> QTensor:
    """A checkpoint's stored q ('weight') and scales back as a QTensor of K columns (see to_checkpoint)."""
    if qdtype == "int4":
        lo, hi = (q & 15).astype(np.int8) - 8, (q >> 4).astype(np.int8) - 8
        full = np.empty((q.shape[0], 2 * q.shape[1]), np.int8)
        full[:, 0::2], full[:, 1::2] = lo, hi
        q = full[:, :K]
    return QTensor(np.ascontiguousarray(q), np.ascontiguousarray(scale, dtype=np.float32), qdtype, group_size, dtype)
