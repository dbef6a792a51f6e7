"""The layer boxes and stacks of Figure 1: EncoderLayer, DecoderLayer, Encoder, Decoder, the residual "Add & Norm"
around every sublayer (post-LN as in the paper, or pre-LN), and the reader of ``torch.nn.Transformer`` state dicts
that builds them.

Shapes: B batch, L (target) length, S (source/memory) length, E = d_model, H heads, Dh head size.
"""

from __future__ import annotations

import re
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..quant import quantizing
from .cache import KVCache
from .embeddings import RelativePositionBias
from .layers import FeedForward, LayerNorm, MultiHeadAttention
from .masks import NO_MASK, AttentionMask
from .module import Module, StateDict

__all__ = ["sublayer_connections", "EncoderLayer", "DecoderLayer", "Encoder", "Decoder", "load_torch_stacks"]

MemoryKV = List[Tuple[np.ndarray, np.ndarray]]   # per decoder layer: K, V of the encoder memory (B, H, S, Dh)

# --------------------------------------------------------------------------------------------------
# "Add & Norm": the residual connection around every sublayer
# --------------------------------------------------------------------------------------------------

Sublayer = Callable[[np.ndarray], np.ndarray]


def sublayer_connections(x, steps: Sequence[Tuple[LayerNorm, Sublayer]], *, norm_first: bool) -> np.ndarray:
    """x through (norm, sublayer) steps, each wrapped in a residual connection.

    Args:
        x: (B, L, E).
        steps: (norm, sublayer) pairs; a sublayer maps (B, L, E) to (B, L, E).
        norm_first: pre-LN instead of the paper's post-LN.

    Returns:
        (B, L, E).


    post-LN (the paper):  x <- LN(x + Sublayer(x)) per step.
    pre-LN (norm_first):  x <- x + Sublayer(LN(x)) per step; each residual add is fused into the next
                          step's LayerNorm (``return_sum``), only the last one is a separate add.
    """
    if not norm_first:
        for norm, sublayer in steps:
            x = norm(sublayer(x), residual=x)                            # LN(x + Sublayer(x))
        return x
    (norm, sublayer), *rest = steps
    h = sublayer(norm(x))
    for norm, sublayer in rest:
        y, x = norm(h, residual=x, return_sum=True)                      # x <- x + h, y = LN(x)
        h = sublayer(y)
    h += x                                                               # x + h
    return h


# --------------------------------------------------------------------------------------------------
# The two layer boxes of Figure 1
# --------------------------------------------------------------------------------------------------

class EncoderLayer(Module):
    """Self attention, then a feed-forward network; each sublayer wrapped in a residual add and a LayerNorm.

    Args:
        self_attn: the self attention.
        feed_forward: the feed-forward network.
        norm1: the norm around the attention ([LayerNorm][attnkit.nn.LayerNorm] or RMSNorm).
        norm2: the norm around the feed-forward network.
        norm_first: pre-LN, x + Sublayer(LN(x)), instead of the paper's post-LN, LN(x + Sublayer(x)).

    Examples:
        >>> from attnkit.nn import EncoderLayer, FeedForward, LayerNorm, MultiHeadAttention
        >>> layer = EncoderLayer(MultiHeadAttention.init(16, 4, rng=0), FeedForward.init(16, 32, rng=0),
        ...                      LayerNorm.init(16), LayerNorm.init(16), norm_first=True)
        >>> layer.self_attn.num_heads
        4
    """

    def __init__(self, self_attn: MultiHeadAttention, feed_forward: FeedForward, norm1: LayerNorm,
                 norm2: LayerNorm, *, norm_first: bool = False):
        self.self_attn, self.feed_forward = self_attn, feed_forward
        self.norm1, self.norm2 = norm1, norm2
        self.norm_first = bool(norm_first)

    def __call__(self, x, mask: AttentionMask = NO_MASK):
        """One encoder layer.

        Args:
            x (numpy.ndarray): (B, L, E).
            mask: which keys each position may see (padding).

        Returns:
            (numpy.ndarray): (B, L, E).

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import Transformer, TransformerConfig
            >>> cfg = TransformerConfig(d_model=16, nhead=4, num_encoder_layers=1, dim_feedforward=32)
            >>> Transformer.from_config(cfg, rng=0).encoder.layers[0](np.ones((2, 5, 16), np.float32)).shape
            (2, 5, 16)
        """
        return sublayer_connections(x, [(self.norm1, lambda h: self.self_attn(h, mask=mask)),   # 1) attend
                                        (self.norm2, self.feed_forward)],                      # 2) feed forward
                                    norm_first=self.norm_first)


class DecoderLayer(Module):
    """Masked (causal) self attention, cross attention on the encoder memory, feed-forward; each with Add & Norm.

    Args:
        self_attn: the (causal) self attention.
        cross_attn: the attention on the encoder memory.
        feed_forward: the feed-forward network.
        norm1: the norm around the self attention.
        norm2: the norm around the cross attention.
        norm3: the norm around the feed-forward network.
        norm_first: pre-LN instead of the paper's post-LN.

    Examples:
        >>> from attnkit.nn import Transformer, TransformerConfig
        >>> cfg = TransformerConfig(d_model=16, nhead=4, num_decoder_layers=1, dim_feedforward=32)
        >>> Transformer.from_config(cfg).decoder.layers[0].cross_attn.d_model
        16
    """

    def __init__(self, self_attn: MultiHeadAttention, cross_attn: MultiHeadAttention, feed_forward: FeedForward,
                 norm1: LayerNorm, norm2: LayerNorm, norm3: LayerNorm, *, norm_first: bool = False):
        self.self_attn, self.cross_attn, self.feed_forward = self_attn, cross_attn, feed_forward
        self.norm1, self.norm2, self.norm3 = norm1, norm2, norm3
        self.norm_first = bool(norm_first)

    def __call__(self, x, memory_kv: Tuple[np.ndarray, np.ndarray], self_mask: AttentionMask = NO_MASK,
                 memory_mask: AttentionMask = NO_MASK, cache=None):
        """One decoder layer.

        Args:
            x (numpy.ndarray): (B, L, E).
            memory_kv: K, V (B, Hk, S, Dh) of the encoder memory, from ``cross_attn.project_kv(memory)``.
            self_mask: which target positions each may see (causal).
            memory_mask: which memory positions each may see (the source's padding).
            cache (LayerKVCache or None): x then holds the new positions only and self attention runs over the
                cache.

        Returns:
            (numpy.ndarray): (B, L, E).

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import AttentionMask, Transformer, TransformerConfig
            >>> layer = Transformer.from_config(TransformerConfig(d_model=16, nhead=4), rng=0).decoder.layers[0]
            >>> kv = layer.cross_attn.project_kv(np.ones((1, 7, 16), np.float32))
            >>> layer(np.ones((1, 3, 16), np.float32), kv, AttentionMask(is_causal=True)).shape
            (1, 3, 16)
        """
        def cross_attention(h):
            return self.cross_attn.attend(self.cross_attn.project_q(h), *memory_kv, memory_mask)

        return sublayer_connections(
            x, [(self.norm1, lambda h: self.self_attn(h, mask=self_mask, cache=cache)),   # 1) masked self attention
                (self.norm2, cross_attention),                                         # 2) attend to the memory
                (self.norm3, self.feed_forward)],                                      # 3) feed forward
            norm_first=self.norm_first)


# --------------------------------------------------------------------------------------------------
# The stacks
# --------------------------------------------------------------------------------------------------

class Encoder(Module):
    """N encoder layers and an optional final LayerNorm (or RMSNorm).

    Args:
        layers: the [EncoderLayer][attnkit.nn.EncoderLayer]s.
        norm (LayerNorm or RMSNorm or None): the final norm.
        position_bias (RelativePositionBias or None): T5's, added to every layer's self-attention scores.

    Examples:
        >>> from attnkit.nn import Encoder, Transformer, TransformerConfig
        >>> model = Transformer.from_config(TransformerConfig(d_model=16, nhead=4, num_encoder_layers=2))
        >>> len(Encoder(model.encoder.layers[:1]).layers)
        1
    """

    def __init__(self, layers: Sequence[EncoderLayer], norm: Optional[LayerNorm] = None, *,
                 position_bias: Optional[RelativePositionBias] = None):
        self.layers, self.norm = list(layers), norm
        self.position_bias = position_bias

    def __call__(self, x, mask: AttentionMask = NO_MASK):
        """Encode a source sequence.

        Args:
            x (numpy.ndarray): (B, S, E) embedded source.
            mask: which source positions each may see (padding).

        Returns:
            memory (numpy.ndarray): (B, S, E).

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import AttentionMask, Transformer, TransformerConfig
            >>> enc = Transformer.from_config(TransformerConfig(d_model=16, nhead=4, num_encoder_layers=2)).encoder
            >>> enc(np.ones((2, 5, 16), np.float32), AttentionMask(kv_lengths=np.array([5, 3]))).shape
            (2, 5, 16)
        """
        if self.position_bias is not None:
            S = x.shape[1]
            mask = mask.with_bias(self.position_bias(S, S))                  # once, shared by every layer
        for layer in self.layers:
            x = layer(x, mask)
        return x if self.norm is None else self.norm(x)

    @classmethod
    def from_torch_state_dict(cls, state_dict, *, nhead: int, prefix: str = "", activation: str = "relu",
                              norm_first: bool = False, layer_norm_eps: float = 1e-5, dtype=np.float32,
                              strict: bool = True, quantize: Optional[str] = None,
                              group_size: Optional[int] = None) -> "Encoder":
        """Load a ``torch.nn.TransformerEncoder`` state dict (keys ``layers.0.self_attn.in_proj_weight`` ...).

        Args:
            state_dict (Mapping or str): names to NumPy arrays or torch tensors, or a .safetensors path.
            nhead: the heads (not stored in a state dict).
            prefix: the keys' prefix.
            activation: "relu" or "gelu", as the torch model's.
            norm_first: as the torch model's.
            layer_norm_eps: as the torch model's.
            dtype (numpy.dtype or str): the weights' dtype.
            strict: a tensor under ``prefix`` that is not part of the encoder raises.
            quantize: 'int8' or 'int4' quantizes every linear layer
                (``attnkit.quantize_linear``).
            group_size: int4's group of inputs (default 128).

        Returns:
            An Encoder (with its final norm when the state dict has one).

        Raises:
            KeyError: a missing or (strict) unexpected tensor. ValueError: shapes that do not fit.
        """
        with quantizing(quantize, group_size):
            (encoder,) = load_torch_stacks(state_dict, prefix, dtype, strict, [""], nhead, activation, norm_first,
                                           layer_norm_eps)
        return encoder


class Decoder(Module):
    """N decoder layers and an optional final LayerNorm (or RMSNorm).

    Args:
        layers: the [DecoderLayer][attnkit.nn.DecoderLayer]s.
        norm (LayerNorm or RMSNorm or None): the final norm.
        position_bias (RelativePositionBias or None): T5's, added to every layer's self-attention scores.

    Examples:
        >>> from attnkit.nn import Decoder, Transformer, TransformerConfig
        >>> model = Transformer.from_config(TransformerConfig(d_model=16, nhead=4, num_decoder_layers=3))
        >>> len(Decoder(model.decoder.layers, model.decoder.norm).layers)
        3
    """

    def __init__(self, layers: Sequence[DecoderLayer], norm: Optional[LayerNorm] = None, *,
                 position_bias: Optional[RelativePositionBias] = None):
        self.layers, self.norm = list(layers), norm
        self.position_bias = position_bias

    def project_memory(self, memory) -> MemoryKV:
        """K and V of the encoder memory for every layer's cross attention, computed once per source.

        Args:
            memory (numpy.ndarray): (B, S, E).

        Returns:
            A list of (k, v) per layer, each (B, Hk, S, Dh).
        """
        return [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def __call__(self, x, memory=None, *, self_mask: AttentionMask = NO_MASK, memory_mask: AttentionMask = NO_MASK,
                 memory_kv: Optional[MemoryKV] = None, cache: Optional[KVCache] = None):
        """Decode target positions against a memory.

        With a ``cache``, x holds only the new positions: self attention appends them to the cache and runs
        causally over everything cached (only self_mask's float attn_mask, a bias over the cached keys, is
        used), and the cache advances by L.

        Args:
            x (numpy.ndarray): (B, L, E) embedded target.
            memory (numpy.ndarray or None): (B, S, E) encoder output (or give memory_kv).
            self_mask: which target positions each may see (causal for training-style calls).
            memory_mask: which memory positions each may see.
            memory_kv (list or None): [project_memory][attnkit.nn.Decoder.project_memory]'s output, reused.
            cache (KVCache or None): the decoder's cache for incremental decoding.

        Returns:
            (numpy.ndarray): (B, L, E).

        Raises:
            ValueError: neither memory nor memory_kv; a position bias over a ragged cache.

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import AttentionMask, Transformer, TransformerConfig
            >>> dec = Transformer.from_config(TransformerConfig(d_model=16, nhead=4, num_decoder_layers=2)).decoder
            >>> y, memory = np.ones((1, 4, 16), np.float32), np.ones((1, 6, 16), np.float32)
            >>> dec(y, memory, self_mask=AttentionMask(is_causal=True)).shape
            (1, 4, 16)
        """
        if memory_kv is None:
            if memory is None:
                raise ValueError("Decoder: pass memory or memory_kv")
            memory_kv = self.project_memory(memory)
        if self.position_bias is not None:                                   # once per call, every layer shares it
            L = x.shape[1]
            if cache is None:
                self_mask = self_mask.with_bias(self.position_bias(L, L))
            else:
                start = int(cache.lengths[0])
                if np.any(cache.lengths != start):
                    raise ValueError("Decoder: a relative position bias needs every cached sequence at one length")
                self_mask = AttentionMask(self.position_bias(L, start + L, start))   # a slice of one table
        for i, layer in enumerate(self.layers):
            x = layer(x, memory_kv[i], self_mask, memory_mask, None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(x.shape[1])
        return x if self.norm is None else self.norm(x)


# --------------------------------------------------------------------------------------------------
# torch.nn.Transformer state dicts
# --------------------------------------------------------------------------------------------------

def load_torch_stacks(state_dict, prefix: str, dtype, strict: bool, stacks: Sequence[str], nhead: int, activation: str,
                norm_first: bool, eps: float) -> list:
    """The Encoder/Decoder ``stacks`` ("encoder.", "decoder.", or "" for a TransformerEncoder alone) of a
    torch.nn.Transformer(-Encoder) state dict; with ``strict`` a tensor left over raises, naming it."""
    t = StateDict(state_dict, prefix, dtype=dtype)
    loaded = [_torch_stack(t, stack, stack == "decoder.", nhead, activation, norm_first, eps) for stack in stacks]
    unused = t.unused()
    if strict and unused:
        shown = ", ".join(f"'{k}'" for k in unused[:8])
        raise KeyError(f"state dict: unexpected tensors {shown}{' ...' if len(unused) > 8 else ''} "
                       f"(not part of a torch.nn.Transformer; use prefix= or strict=False)")
    return loaded


def _torch_stack(t: StateDict, stack: str, decoder: bool, nhead: int, activation: str, norm_first: bool,
                 eps: float):
    """An Encoder (or Decoder) from the tensors '{stack}layers.{i}.*' and the optional '{stack}norm.*'."""
    pattern = re.compile(re.escape(stack) + r"layers\.(\d+)\.")
    found = {int(m.group(1)) for k in t.names() for m in [pattern.match(k)] if m}
    if found != set(range(len(found))):
        raise KeyError(f"state dict: layers of '{t.prefix}{stack}layers' are not numbered 0..n-1: {sorted(found)}")
    if not found:
        raise KeyError(f"state dict: no tensors '{t.prefix}{stack}layers.0.*'")
    E = t(f"{stack}layers.0.self_attn.in_proj_weight", (None, None)).shape[1]          # d_model
    # torch.nn.Transformer(bias=False) stores no bias at all (linear layers and LayerNorms): zeros then, and a
    # bias present after all is an unexpected tensor (strict); with biases, each one missing is an error
    biased = t.has(f"{stack}layers.0.self_attn.in_proj_bias")

    def bias(name: str, n: int) -> np.ndarray:
        return t(name, (n,)) if biased else np.zeros(n, t.dtype)

    def norm(name: str) -> LayerNorm:
        return LayerNorm(t(f"{name}.weight", (E,)), bias(f"{name}.bias", E), eps)

    def attention(name: str) -> MultiHeadAttention:
        if t.has(f"{name}.q_proj_weight"):
            raise ValueError(f"state dict: '{t.prefix}{name}' has separate q/k/v projections "
                             f"(kdim/vdim != d_model); only packed in_proj_weight is supported")
        if E % nhead:
            raise ValueError(f"nhead: {nhead} does not divide d_model={E}")
        return MultiHeadAttention(t(f"{name}.in_proj_weight", (3 * E, E)), bias(f"{name}.in_proj_bias", 3 * E),
                                  t(f"{name}.out_proj.weight", (E, E)), bias(f"{name}.out_proj.bias", E), nhead)

    def feed_forward(p: str) -> FeedForward:
        w1 = t(f"{p}linear1.weight", (None, E))                           # (F, E)
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation: torch.nn.Transformer supports 'relu' or 'gelu', got {activation!r}")
        d_ff = w1.shape[0]
        return FeedForward(w1, bias(f"{p}linear1.bias", d_ff), t(f"{p}linear2.weight", (E, d_ff)),
                           bias(f"{p}linear2.bias", E), activation)

    layers = []
    for i in range(len(found)):
        p = f"{stack}layers.{i}."
        if decoder:
            layers.append(DecoderLayer(attention(p + "self_attn"), attention(p + "multihead_attn"), feed_forward(p),
                                       norm(p + "norm1"), norm(p + "norm2"), norm(p + "norm3"),
                                       norm_first=norm_first))
        else:
            layers.append(EncoderLayer(attention(p + "self_attn"), feed_forward(p), norm(p + "norm1"),
                                       norm(p + "norm2"), norm_first=norm_first))
    final = norm(f"{stack}norm") if t.has(f"{stack}norm.weight") else None
    return (Decoder if decoder else Encoder)(layers, final)
