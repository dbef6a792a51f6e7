"""The embedding boxes of Figure 1: "Input/Output Embedding" + "Positional Encoding" (sections 3.4, 3.5), the
output "Linear" whose softmax gives next-token probabilities, and T5's relative position bias.

Shapes: B batch, L length, E = d_model, V vocabulary, H heads.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import functional as F
from ..quant import pack as _pack
from .module import Module, as_float_array, glorot_uniform, small_normal, weight_dtype

__all__ = ["sinusoidal_positional_encoding", "Embeddings", "Generator", "RelativePositionBias"]


def sinusoidal_positional_encoding(max_len: int, d_model: int, dtype=np.float32) -> np.ndarray:
    """The paper's positional encoding: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    Args:
        max_len: positions (rows).
        d_model: d (columns).
        dtype (numpy.dtype or str): the table's dtype (computed in float64).

    Returns:
        The table (max_len, d_model).

    Examples:
        >>> from attnkit.nn import sinusoidal_positional_encoding
        >>> sinusoidal_positional_encoding(4, 6)[0].tolist()
        [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """
    position = np.arange(max_len, dtype=np.float64)[:, None]                   # (max_len, 1)
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)   # (ceil(d/2),)
    angles = position * inv_freq                                               # (max_len, ceil(d/2))
    pe = np.empty((max_len, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return pe.astype(dtype)


class Embeddings(Module):
    """Token embedding scaled by sqrt(d_model) plus a positional encoding (sections 3.4 and 3.5).

    The checkpoint families differ only in configuration (scale, position_offset, padding_idx, norm).

    Args:
        weight (numpy.ndarray): (V, E) token embeddings; float32, float64, float16 or bfloat16 (the layer's dtype).
        positions: "sinusoidal" (the paper; a fixed table, grown when a longer sequence comes), "learned"
            (``position_weight``, also any fixed table a checkpoint family defines) or "none".
        position_weight (numpy.ndarray or None): (rows, E), with positions="learned".
        max_len: rows of the sinusoidal table to start with.
        scale: multiplies the token embedding (default sqrt(E), as Marian and M2M100; 1.0 for BART without
            scale_embedding and T5).
        position_offset: the table row of position 0 (BART's learned positions and M2M100's start at row 2).
        padding_idx: M2M100: padding tokens take row padding_idx and are not counted as positions.
        norm (LayerNorm or None): a LayerNorm after the sum (BART's and mBART's layernorm_embedding).

    Raises:
        ValueError: an unknown positions kind, tables whose shapes do not fit.

    Examples:
        >>> from attnkit.nn import Embeddings
        >>> emb = Embeddings.init(vocab_size=100, d_model=16, positions="learned", max_len=32, rng=0)
        >>> emb.weight.shape, emb.position_weight.shape, emb.scale
        ((100, 16), (32, 16), 4.0)
    """

    def __init__(self, weight, *, positions: str = "sinusoidal", position_weight=None, max_len: int = 1024,
                 scale: Optional[float] = None, position_offset: int = 0, padding_idx: Optional[int] = None,
                 norm=None):
        self.weight = as_float_array(weight, weight_dtype(weight), "Embeddings.weight", (None, None))
        d_model = self.weight.shape[1]
        if positions == "sinusoidal":
            self.position_weight = sinusoidal_positional_encoding(max_len, d_model, self.weight.dtype)
        elif positions == "learned":
            self.position_weight = as_float_array(position_weight, self.weight.dtype,
                                                  "Embeddings.position_weight", (None, d_model))
        elif positions == "none":
            self.position_weight = None
        else:
            raise ValueError(f"positions: expected 'sinusoidal', 'learned' or 'none', got {positions!r}")
        self.positions = positions
        self.scale = math.sqrt(d_model) if scale is None else float(scale)
        self.position_offset = int(position_offset)
        self.padding_idx = None if padding_idx is None else int(padding_idx)
        self.norm = norm

    @classmethod
    def init(cls, vocab_size: int, d_model: int, *, positions: str = "sinusoidal", max_len: int = 1024,
             rng=None, dtype=np.float32) -> "Embeddings":
        """Random tables: tokens N(0, 1/E), learned positions N(0, 0.02^2).

        Args:
            vocab_size: V.
            d_model: E.
            positions: "sinusoidal", "learned" or "none".
            max_len: rows of the position table.
            rng (int or numpy.random.Generator or None): the randomness.
            dtype (numpy.dtype or str): the tables' dtype.

        Returns:
            An Embeddings.
        """
        rng = np.random.default_rng(rng)
        learned = rng.normal(0, 0.02, (max_len, d_model)).astype(dtype) if positions == "learned" else None
        return cls(rng.normal(0, d_model ** -0.5, (vocab_size, d_model)).astype(dtype),
                   positions=positions, position_weight=learned, max_len=max_len)

    def __call__(self, ids, start=0) -> np.ndarray:
        """Embed token ids at their positions.

        Args:
            ids (numpy.ndarray): (B, L) integer token ids in [0, V).
            start (int or numpy.ndarray): the first position, one for all or (B,) per sequence (a KV cache's
                lengths while decoding).

        Returns:
            (B, L, E) in the layer's dtype.

        Raises:
            ValueError: an id outside the vocabulary, a position beyond a learned table.

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import Embeddings
            >>> Embeddings.init(100, 16, rng=0)(np.array([[5, 6, 7]]), start=2).shape
            (1, 3, 16)
        """
        x = self._sum(ids, start)
        return x if self.norm is None else self.norm(x)

    def _sum(self, ids, start) -> np.ndarray:
        ids = np.asarray(ids)
        B, L = ids.shape
        if ids.size and (ids.min() < 0 or ids.max() >= self.weight.shape[0]):
            raise ValueError(f"ids: token ids must lie in [0, {self.weight.shape[0]})")
        x = self.weight[ids]                                                       # (B, L, E)
        if self.scale != 1.0:
            x *= x.dtype.type(self.scale)
        if self.position_weight is not None:
            if self.padding_idx is None:
                positions = np.asarray(start).reshape(-1, 1) + np.arange(L)       # (B or 1, L)
            else:                                                                 # padding is not counted
                real = ids != self.padding_idx
                positions = np.where(real, np.asarray(start).reshape(-1, 1) + np.cumsum(real, axis=1) - 1,
                                     self.padding_idx - self.position_offset)
            positions = positions + self.position_offset
            if positions.max(initial=0) >= len(self.position_weight):
                if self.positions != "sinusoidal":
                    raise ValueError(f"position {int(positions.max())} is beyond the {len(self.position_weight)} "
                                     f"learned positions")
                self.position_weight = sinusoidal_positional_encoding(
                    2 * int(positions.max()) + 1, self.weight.shape[1], self.weight.dtype)
            x += self.position_weight[positions]                                   # (B, L, E)
        return x


class Generator(Module):
    """The final "Linear" (d_model -> vocabulary) whose softmax gives next-token probabilities.

    Args:
        weight (numpy.ndarray): (V, E), packed once; float32, float64, float16 or bfloat16.
        bias (numpy.ndarray or None): (V,) (Marian's and BART's final_logits_bias too).
        input_scale: multiplies the input first (T5 with a head tied to its embeddings scales the decoder
            output by d_model ** -0.5).

    Raises:
        ValueError: a bias of another length.

    Examples:
        >>> from attnkit.nn import Generator
        >>> Generator.init(d_model=16, vocab_size=100, rng=0).weight.shape
        (100, 16)
    """

    def __init__(self, weight, bias=None, *, input_scale: Optional[float] = None):
        weight = as_float_array(weight, weight_dtype(weight), "Generator.weight", (None, None))
        self.bias = None if bias is None else as_float_array(bias, weight.dtype, "Generator.bias", (weight.shape[0],))
        self.weight = _pack(weight)   # packed once, only the packed copy kept
        self.input_scale = None if input_scale is None else float(input_scale)

    @classmethod
    def init(cls, d_model: int, vocab_size: int, *, rng=None, dtype=np.float32) -> "Generator":
        """Random weights: a Xavier-uniform matrix and a small random bias.

        Args:
            d_model: E.
            vocab_size: V.
            rng (int or numpy.random.Generator or None): the randomness.
            dtype (numpy.dtype or str): the weights' dtype.

        Returns:
            A Generator.
        """
        rng = np.random.default_rng(rng)
        return cls(glorot_uniform(rng, (vocab_size, d_model), dtype), small_normal(rng, vocab_size, dtype))

    def __call__(self, x) -> np.ndarray:
        """Logits of the next token; [softmax][attnkit.softmax] of them gives the probabilities.

        Args:
            x (numpy.ndarray): (..., E) of the layer's dtype.

        Returns:
            (..., V) logits.

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import Generator
            >>> Generator.init(16, 100, rng=0)(np.ones((2, 16), np.float32)).shape
            (2, 100)
        """
        if self.input_scale is not None:
            x = x * x.dtype.type(self.input_scale)
        return F.linear(x, self.weight, self.bias)


class RelativePositionBias(Module):
    """T5's relative position bias: a learned scalar per head for each bucket of key position - query position,
    added to the attention scores of every layer of a stack (computed once per length, then sliced).

    Buckets: exact offsets below num_buckets / 2 (/ 4 when bidirectional, where the sign takes half the
    buckets), then logarithmic up to max_distance, beyond it the last bucket.

    Args:
        weight (numpy.ndarray): (num_buckets, H), float.
        bidirectional: True for an encoder (keys on both sides), False for a decoder.
        max_distance: where the logarithmic buckets end.

    Examples:
        >>> import numpy as np
        >>> from attnkit.nn import RelativePositionBias
        >>> rpb = RelativePositionBias(np.zeros((8, 2), np.float32), bidirectional=False, max_distance=16)
        >>> rpb.buckets(np.array([0, -1, -3, -20])).tolist()
        [0, 1, 3, 7]
    """

    def __init__(self, weight, *, bidirectional: bool, max_distance: int = 128):
        self.weight = as_float_array(weight, weight_dtype(weight), "RelativePositionBias.weight", (None, None))
        self.bidirectional, self.max_distance = bool(bidirectional), int(max_distance)
        self._table = None                                   # bias (1, H, n, n) of the longest length asked so far

    @property
    def num_buckets(self) -> int:
        """The rows of ``weight``."""
        return self.weight.shape[0]

    def buckets(self, relative: np.ndarray) -> np.ndarray:
        """The bucket of each relative position.

        Args:
            relative: int array of key position - query position, any shape.

        Returns:
            int64 bucket indices of that shape.
        """
        n = self.num_buckets
        out = np.zeros(relative.shape, dtype=np.int64)
        if self.bidirectional:
            n //= 2
            out += (relative > 0) * n
            distance = np.abs(relative)
        else:
            distance = -np.minimum(relative, 0)
        exact = n // 2
        with np.errstate(divide="ignore"):
            log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
        large = exact + (log_ratio / np.float32(math.log(self.max_distance / exact)) * np.float32(n - exact)).astype(np.int64)
        large = np.minimum(large, n - 1)
        return out + np.where(distance < exact, distance, large)

    def __call__(self, q_len: int, k_len: int, q_start: int = 0) -> np.ndarray:
        """The bias for queries at positions q_start.. over keys 0..k_len-1.

        A view of a table computed once per length (decoding steps slice one row of it).

        Args:
            q_len: queries.
            k_len: keys.
            q_start: the first query's position.

        Returns:
            (1, H, q_len, k_len) in the weight's dtype.

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import RelativePositionBias
            >>> RelativePositionBias(np.ones((8, 2), np.float32), bidirectional=True)(1, 5, q_start=4).shape
            (1, 2, 1, 5)
        """
        n = max(q_start + q_len, k_len)
        if self._table is None or self._table.shape[2] < n:
            n = max(n, 2 * (0 if self._table is None else self._table.shape[2]))
            rel = np.arange(n)[None, :] - np.arange(n)[:, None]                     # (n, n) key - query
            values = self.weight[self.buckets(rel)]                                 # (n, n, H)
            self._table = np.ascontiguousarray(values.transpose(2, 0, 1))[None]     # (1, H, n, n)
        return self._table[:, :, q_start:q_start + q_len, :k_len]

