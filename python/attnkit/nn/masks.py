"""Which keys each query may see: :class:`AttentionMask`, built once per forward pass and shared by every layer,
in the terms of ``attnkit.scaled_dot_product_attention`` (and translated from PyTorch's conventions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["AttentionMask", "NO_MASK"]


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may see, in the terms of
    [scaled_dot_product_attention][attnkit.scaled_dot_product_attention].

    Built once per forward pass and shared by every layer (no per-layer mask work); frozen.

    Args:
        attn_mask (numpy.ndarray or None): bool (True = may attend) or additive float of the model's dtype,
            broadcastable to (B, H, L, S).
        is_causal: key j visible to query i iff j <= i (+ an offset, see causal_alignment).
        causal_alignment: "top_left" (full sequences) or "bottom_right" (new queries at the end of a KV cache).
        kv_lengths (numpy.ndarray or None): (B,) ints: keys j >= kv_lengths[b] are invisible (right padding,
            the filled part of a cache).

    Examples:
        >>> import numpy as np
        >>> from attnkit.nn import AttentionMask
        >>> m = AttentionMask.from_torch(key_padding_mask=np.array([[False, False, True]]), batch_size=1,
        ...                              num_heads=2, q_len=3, k_len=3, dtype=np.float32)
        >>> m.attn_mask is None, m.kv_lengths.tolist()
        (True, [2])
    """

    attn_mask: Optional[np.ndarray] = None
    is_causal: bool = False
    causal_alignment: str = "top_left"
    kv_lengths: Optional[np.ndarray] = None

    @classmethod
    def from_torch(cls, attn_mask=None, key_padding_mask=None, is_causal: bool = False, *,
                   batch_size: int, num_heads: int, q_len: int, k_len: int, dtype) -> "AttentionMask":
        """Translate PyTorch's ``nn.MultiheadAttention`` / ``nn.Transformer`` mask conventions.

        A 2-D attn_mask that *is* the causal mask is recognised and replaced by the kernel's causal path;
        right-padded bool key padding masks become ``kv_lengths`` (no mask array at all).

        Args:
            attn_mask (numpy.ndarray or None): (L, S) or (B*H, L, S); bool True = NOT allowed to attend, or
                float added to the scores.
            key_padding_mask (numpy.ndarray or None): (B, S); bool True = padding (an ignored key), or float
                added to the scores.
            is_causal: apply the causal mask (PyTorch treats it as a hint that attn_mask is causal; here it is
                honoured even when attn_mask is None).
            batch_size: B.
            num_heads: H.
            q_len: L.
            k_len: S.
            dtype (numpy.dtype): the model's dtype, for float masks.

        Returns:
            An AttentionMask (top-left causal alignment).

        Raises:
            ValueError: a mask of another shape, naming it.
        """
        mask = None
        if attn_mask is not None:
            mask = np.asarray(attn_mask)
            if mask.ndim == 2:
                if mask.shape != (q_len, k_len):
                    raise ValueError(f"attn_mask: has shape {mask.shape}, expected ({q_len}, {k_len})")
                if _is_causal_mask(mask):
                    mask, is_causal = None, True
            elif mask.ndim == 3:
                if mask.shape != (batch_size * num_heads, q_len, k_len):
                    raise ValueError(f"attn_mask: has shape {mask.shape}, "
                                     f"expected ({batch_size * num_heads}, {q_len}, {k_len})")
                mask = mask.reshape(batch_size, num_heads, q_len, k_len)       # (B, H, L, S)
            else:
                raise ValueError(f"attn_mask: must be 2-D (L, S) or 3-D (B*H, L, S), got shape {mask.shape}")
            if mask is not None:
                mask = ~mask if mask.dtype == bool else mask.astype(dtype, copy=False)

        kv_lengths = None
        if key_padding_mask is not None:
            pad = np.asarray(key_padding_mask)
            if pad.shape != (batch_size, k_len):
                raise ValueError(f"key_padding_mask: has shape {pad.shape}, expected ({batch_size}, {k_len})")
            if pad.dtype == bool:
                lengths = k_len - pad.sum(axis=1)
                if np.array_equal(pad, np.arange(k_len) >= lengths[:, None]):   # right padding
                    kv_lengths = lengths.astype(np.int64)
                else:
                    keep = ~pad[:, None, None, :]                                # (B, 1, 1, S)
                    if mask is None:
                        mask = keep
                    elif mask.dtype == bool:
                        mask = mask & keep
                    else:
                        mask = np.where(keep, mask, mask.dtype.type(-np.inf))
            else:
                add = pad.astype(dtype, copy=False)[:, None, None, :]           # (B, 1, 1, S)
                if mask is None:
                    mask = add
                elif mask.dtype == bool:
                    mask = np.where(mask, add, add.dtype.type(-np.inf))
                else:
                    mask = mask + add
        return cls(mask, bool(is_causal), "top_left", kv_lengths)

    def with_bias(self, bias: Optional[np.ndarray]) -> "AttentionMask":
        """This mask plus an additive per-head bias (T5's relative positions).

        The bias becomes the float mask; a bool mask folds in as -inf where a key may not be seen; kv_lengths
        and the causal flags stay.

        Args:
            bias (numpy.ndarray or None): (1 or B, H, L, S) float; None returns this mask.

        Returns:
            A new AttentionMask.
        """
        if bias is None:
            return self
        mask = self.attn_mask
        if mask is None:
            mask = bias
        elif mask.dtype == bool:
            mask = np.where(mask, bias, bias.dtype.type(-np.inf))
        else:
            mask = mask + bias
        return AttentionMask(mask, self.is_causal, self.causal_alignment, self.kv_lengths)

    def select_rows(self, rows: np.ndarray) -> "AttentionMask":
        """The same mask for the batch rows ``rows`` (beam search duplicates rows).

        Args:
            rows (numpy.ndarray): (B',) row indices.

        Returns:
            A new AttentionMask of batch B'.
        """
        mask = self.attn_mask
        if mask is not None and mask.ndim == 4 and mask.shape[0] != 1:
            mask = mask[rows]
        lengths = None if self.kv_lengths is None else self.kv_lengths[rows]
        return AttentionMask(mask, self.is_causal, self.causal_alignment, lengths)


NO_MASK = AttentionMask()


def _is_causal_mask(mask: np.ndarray) -> bool:
    """True when the (L, L) PyTorch-convention mask is exactly the causal mask."""
    if mask.shape[0] != mask.shape[1]:
        return False
    future = np.triu(np.ones(mask.shape, dtype=bool), k=1)
    if mask.dtype == bool:
        return bool(np.array_equal(mask, future))
    return bool(np.all(mask[future] == -np.inf) and np.all(mask[~future] == 0))

