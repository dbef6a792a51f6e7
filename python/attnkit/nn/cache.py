"""The KV cache of incremental decoding: keys and values of past positions, preallocated and filled in place.

At decoding step t a decoder needs K and V of positions 0..t for every self-attention layer. Recomputing them
costs O(t) GEMM work per token; keeping them costs memory only. The cache is allocated once for the longest
sequence, each step writes its new rows at each sequence's own length, and attention reads views of the
filled part: no concatenation, no copies.

Layout: keys, values (num_layers, B, H, max_len, Dh) -- each head's keys contiguous, as the attention kernel
reads them. lengths (B,) int64 -- positions filled per sequence, so a batch of prompts of different lengths
(a ragged batch) decodes together.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["KVCache", "LayerKVCache"]


class KVCache:
    """Preallocated keys and values for every self-attention layer of a decoder."""

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, max_len: int,
                 dtype=np.float32):
        if min(num_layers, batch_size, num_heads, head_dim, max_len) <= 0:
            raise ValueError("KVCache: num_layers, batch_size, num_heads, head_dim and max_len must be positive")
        shape = (num_layers, batch_size, num_heads, max_len, head_dim)   # (layers, B, H, max_len, Dh)
        self.keys = np.empty(shape, dtype=dtype)
        self.values = np.empty(shape, dtype=dtype)
        self.lengths = np.zeros(batch_size, dtype=np.int64)              # (B,) filled positions
        self._spare = None                                               # second buffer for reorder()

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def layer(self, index: int) -> "LayerKVCache":
        return LayerKVCache(self, index)

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Write n new positions k, v (B, H, n, Dh) of ``layer`` after each sequence's filled part.

        Returns views (B, H, S, Dh) of the layer's keys and values, S = the longest new length, and the new
        lengths (B,) to hand to attention as kv_lengths. ``lengths`` itself moves on in :meth:`advance`, once
        every layer has written its step.
        """
        B, H, n, Dh = k.shape
        if k.shape != v.shape or (B, H, Dh) != (self.batch_size, self.keys.shape[2], self.keys.shape[4]):
            raise ValueError(f"KVCache.append: k/v of shape {k.shape}/{v.shape} do not fit the cache "
                             f"(B={self.batch_size}, H={self.keys.shape[2]}, Dh={self.keys.shape[4]})")
        start = self.lengths
        end = start + n                                                  # (B,)
        if end.max(initial=0) > self.max_len:
            raise ValueError(f"KVCache: {int(end.max())} positions exceed max_len={self.max_len}")
        keys, values = self.keys[layer], self.values[layer]              # (B, H, max_len, Dh) views
        first = int(start[0])
        if np.all(start == first):                                       # every sequence writes the same rows
            keys[:, :, first:first + n] = k
            values[:, :, first:first + n] = v
        else:                                                            # ragged: row b writes at start[b]
            rows = np.arange(B)[:, None]                                 # (B, 1)
            cols = start[:, None] + np.arange(n)                         # (B, n)
            keys[rows, :, cols] = k.transpose(0, 2, 1, 3)                # (B, n, H, Dh)
            values[rows, :, cols] = v.transpose(0, 2, 1, 3)
        S = int(end.max())
        return keys[:, :, :S], values[:, :, :S], end

    def advance(self, n) -> None:
        """Count n new positions (an int, or (B,) per sequence) as filled in every layer."""
        n = np.asarray(n, dtype=np.int64)
        new = self.lengths + n
        if new.min(initial=0) < 0 or new.max(initial=0) > self.max_len:
            raise ValueError(f"KVCache.advance: lengths would leave [0, {self.max_len}]")
        self.lengths = new

    def reorder(self, rows) -> None:
        """Keep batch rows ``rows`` (B',) in that order -- beam search's reorder, or an expansion to B' beams.

        Only the filled part is copied, into a second preallocated buffer that then becomes the cache.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= self.batch_size:
            raise ValueError(f"KVCache.reorder: rows must be a non-empty 1-D array of indices < {self.batch_size}")
        if rows.shape[0] == self.batch_size and np.array_equal(rows, np.arange(self.batch_size)):
            return
        S = int(self.lengths.max(initial=0))
        if rows.shape[0] != self.batch_size:                             # a new batch size: new buffers
            shape = self.keys.shape[:1] + (rows.shape[0],) + self.keys.shape[2:]
            new_keys, new_values = np.empty(shape, self.keys.dtype), np.empty(shape, self.values.dtype)
            self._spare = None
        else:
            if self._spare is None:
                self._spare = (np.empty_like(self.keys), np.empty_like(self.values))
            new_keys, new_values = self._spare
            self._spare = (self.keys, self.values)
        np.take(self.keys[:, :, :, :S], rows, axis=1, out=new_keys[:, :, :, :S], mode="clip")
        np.take(self.values[:, :, :, :S], rows, axis=1, out=new_values[:, :, :, :S], mode="clip")
        self.keys, self.values = new_keys, new_values
        self.lengths = self.lengths[rows]


class LayerKVCache:
    """One layer's view of a :class:`KVCache` (what ``MultiHeadAttention.cached`` takes)."""

    __slots__ = ("cache", "index")

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def append(self, k, v):
        return self.cache.append(self.index, k, v)
