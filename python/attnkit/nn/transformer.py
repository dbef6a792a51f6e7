"""The encoder-decoder Transformer of "Attention Is All You Need", Figure 1, on attnkit's kernels.

                 Output probabilities <- Generator (Linear + Softmax)
                                             ^
        Encoder (N x EncoderLayer)  ---->  Decoder (N x DecoderLayer)
                 ^                           ^
       Input Embedding + PE          Output Embedding + PE (shifted right)

The paper's model is post-LN with ReLU and sinusoidal positions; :class:`TransformerConfig` also gives pre-LN
(``norm_first``), GELU, learned positions and final norms (``torch.nn.Transformer`` has both final norms).
``Transformer.from_torch_state_dict`` loads a ``torch.nn.Transformer`` and is then called like it. The layers and
stacks are in stacks.py (re-exported here).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..quant import quantizing
from .cache import KVCache
from .embeddings import Embeddings, Generator
from .generation import GenerationConfig, beam_steps, pad_after_eos, sample_steps
from .layers import ACTIVATIONS, FeedForward, LayerNorm, MultiHeadAttention
from .masks import NO_MASK, AttentionMask
from .module import Module, float_dtype
from .stacks import Decoder, DecoderLayer, Encoder, EncoderLayer, load_torch_stacks, sublayer_connections

__all__ = ["TransformerConfig", "sublayer_connections", "EncoderLayer", "DecoderLayer", "Encoder", "Decoder", "Transformer"]


@dataclass
class TransformerConfig:
    """Hyperparameters of [Transformer.from_config][attnkit.nn.Transformer.from_config]; the defaults are the
    paper's base model (Table 3).

    Args:
        d_model: E.
        nhead: H, a divisor of E.
        num_encoder_layers: encoder layers (>= 0).
        num_decoder_layers: decoder layers (>= 0).
        dim_feedforward: F, the feed-forward width.
        activation: "relu" (the paper), "gelu" (erf), "gelu_tanh" or "silu".
        norm_first: False: post-LN, LN(x + Sublayer(x)) (the paper); True: pre-LN, x + Sublayer(LN(x)).
        layer_norm_eps: the LayerNorms' eps.
        final_norm: a LayerNorm after the encoder and after the decoder stacks.
        src_vocab_size: token embeddings + positions for integer sources (None: inputs are embedded floats).
        tgt_vocab_size: the same for targets; also sizes the Generator (logits).
        positions: "sinusoidal", "learned" or "none".
        max_len: rows of the positional table.
        dtype: "float32", "float64", "float16" or "bfloat16".

    Raises:
        ValueError: a field out of range, naming it.

    Examples:
        >>> from attnkit.nn import TransformerConfig
        >>> TransformerConfig(d_model=64, nhead=4, norm_first=True).dim_feedforward
        2048
    """

    d_model: int = 512
    nhead: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    activation: str = "relu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    final_norm: bool = False
    src_vocab_size: Optional[int] = None
    tgt_vocab_size: Optional[int] = None
    positions: str = "sinusoidal"
    max_len: int = 1024
    dtype: str = "float32"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TransformerConfig.activation: expected one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.positions not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"TransformerConfig.positions: expected 'sinusoidal', 'learned' or 'none', "
                             f"got {self.positions!r}")
        if self.d_model <= 0 or self.nhead <= 0 or self.d_model % self.nhead:
            raise ValueError(f"TransformerConfig.nhead: {self.nhead} must divide d_model={self.d_model}")
        if min(self.num_encoder_layers, self.num_decoder_layers) < 0 or self.dim_feedforward <= 0:
            raise ValueError("TransformerConfig: layer counts must be >= 0 and dim_feedforward > 0")
        try:
            float_dtype(self.dtype)
        except ValueError:
            raise ValueError(f"TransformerConfig.dtype: float32, float64, float16 or bfloat16, got {self.dtype!r}") from None


# --------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------

class Transformer(Module):
    """Encoder-decoder Transformer, called like ``torch.nn.Transformer.forward`` with ``batch_first=True``.

    Mask conventions are PyTorch's: key padding masks are True where padded; attention masks are bool (True =
    NOT allowed) or float (added to the scores); see [AttentionMask.from_torch][attnkit.nn.AttentionMask.from_torch].
    One difference: a query that may attend to nothing gets zeros, not PyTorch's NaN.

    Args:
        encoder: the [Encoder][attnkit.nn.Encoder].
        decoder: the [Decoder][attnkit.nn.Decoder].
        src_embed (Embeddings or None): embeds integer sources (None: sources come embedded).
        tgt_embed (Embeddings or None): embeds integer targets; generate needs it.
        generator (Generator or None): the output Linear (logits); generate needs it.
        config (TransformerConfig or None): the hyperparameters, kept for reference.

    Examples:
        >>> from attnkit.nn import Transformer, TransformerConfig
        >>> cfg = TransformerConfig(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
        ...                         dim_feedforward=64, src_vocab_size=50, tgt_vocab_size=50)
        >>> model = Transformer.from_config(cfg, rng=0)
        >>> len(model.encoder.layers), model.generator.weight.shape
        (2, (50, 32))
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, *, src_embed: Optional[Embeddings] = None,
                 tgt_embed: Optional[Embeddings] = None, generator: Optional[Generator] = None,
                 config: Optional[TransformerConfig] = None):
        self.encoder, self.decoder = encoder, decoder
        self.src_embed, self.tgt_embed, self.generator = src_embed, tgt_embed, generator
        self.config = config

    # -- factories ----------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: TransformerConfig, *, rng=None) -> "Transformer":
        """A model with random weights (Xavier-uniform projections, small random biases).

        Args:
            config: the hyperparameters.
            rng (int or numpy.random.Generator or None): the randomness.

        Returns:
            A Transformer in ``config.dtype``.

        Examples:
            >>> from attnkit.nn import Transformer, TransformerConfig
            >>> Transformer.from_config(TransformerConfig(d_model=16, nhead=2, dtype="float64"), rng=1).dtype
            dtype('float64')
        """
        rng = np.random.default_rng(rng)
        c, dtype = config, float_dtype(config.dtype)
        E = c.d_model

        def norm():
            return LayerNorm.init(E, c.layer_norm_eps, dtype)

        def attention():
            return MultiHeadAttention.init(E, c.nhead, rng=rng, dtype=dtype)

        def feed_forward():
            return FeedForward.init(E, c.dim_feedforward, c.activation, rng=rng, dtype=dtype)

        encoder = Encoder([EncoderLayer(attention(), feed_forward(), norm(), norm(), norm_first=c.norm_first)
                           for _ in range(c.num_encoder_layers)], norm() if c.final_norm else None)
        decoder = Decoder([DecoderLayer(attention(), attention(), feed_forward(), norm(), norm(), norm(),
                                        norm_first=c.norm_first)
                           for _ in range(c.num_decoder_layers)], norm() if c.final_norm else None)

        def embed(vocab):
            return None if vocab is None else Embeddings.init(vocab, E, positions=c.positions, max_len=c.max_len,
                                                              rng=rng, dtype=dtype)

        generator = None if c.tgt_vocab_size is None else Generator.init(E, c.tgt_vocab_size, rng=rng, dtype=dtype)
        return cls(encoder, decoder, src_embed=embed(c.src_vocab_size), tgt_embed=embed(c.tgt_vocab_size),
                   generator=generator, config=config)

    @classmethod
    def from_torch_state_dict(cls, state_dict, *, nhead: int, activation: str = "relu", norm_first: bool = False,
                              layer_norm_eps: float = 1e-5, dtype=np.float32, prefix: str = "",
                              strict: bool = True, quantize: Optional[str] = None,
                              group_size: Optional[int] = None) -> "Transformer":
        """Load a ``torch.nn.Transformer`` state dict; the model is then called like the torch one.

        Sizes (d_model, layer counts, dim_feedforward, final norms) are read from the tensors; nhead,
        activation, norm_first and layer_norm_eps are not stored in a state dict and must match the torch
        model's. Keys outside ``prefix`` are ignored.

        Args:
            state_dict (Mapping or str): names to NumPy arrays or torch tensors, or a .safetensors path.
            nhead: the heads.
            activation: "relu" or "gelu".
            norm_first: the torch model's.
            layer_norm_eps: the torch model's.
            dtype (numpy.dtype or str): the weights' dtype.
            prefix: the keys' prefix.
            strict: an unknown key under ``prefix`` raises (a missing or misshapen tensor always does).
            quantize: 'int8' or 'int4' quantizes every linear layer as it is packed
                (``attnkit.quantize_linear``); norms stay in ``dtype``.
            group_size: int4's group of inputs (default 128).

        Returns:
            A Transformer (no embeddings and no generator: torch.nn.Transformer has none).

        Raises:
            KeyError: a missing or (strict) unexpected tensor, named. ValueError: shapes that do not fit.
        """
        with quantizing(quantize, group_size):
            encoder, decoder = load_torch_stacks(state_dict, prefix, dtype, strict, ["encoder.", "decoder."], nhead,
                                                 activation, norm_first, layer_norm_eps)
        first = encoder.layers[0] if encoder.layers else None
        config = TransformerConfig(
            d_model=decoder.layers[0].self_attn.d_model if decoder.layers else first.self_attn.d_model,
            nhead=nhead, num_encoder_layers=len(encoder.layers), num_decoder_layers=len(decoder.layers),
            dim_feedforward=(first or decoder.layers[0]).feed_forward.w1.shape[0], activation=activation,
            norm_first=norm_first, layer_norm_eps=layer_norm_eps,
            final_norm=encoder.norm is not None and decoder.norm is not None, positions="none",
            dtype=float_dtype(dtype).name)
        return cls(encoder, decoder, config=config)

    # -- forward -------------------------------------------------------------------------------------
    def __call__(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                 tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                 memory_is_causal=False):
        """Encode src and decode tgt against it (PyTorch's ``forward``).

        Args:
            src (numpy.ndarray): (B, S, E) embedded floats, or (B, S) integer ids with ``src_embed``.
            tgt (numpy.ndarray): (B, T, E) embedded floats, or (B, T) integer ids with ``tgt_embed``.
            src_mask (numpy.ndarray or None): (S, S) or (B*H, S, S), PyTorch's convention.
            tgt_mask (numpy.ndarray or None): (T, T) or (B*H, T, T); the causal mask is recognised.
            memory_mask (numpy.ndarray or None): (T, S) or (B*H, T, S).
            src_key_padding_mask (numpy.ndarray or None): (B, S), True where padded.
            tgt_key_padding_mask (numpy.ndarray or None): (B, T), True where padded.
            memory_key_padding_mask (numpy.ndarray or None): (B, S), True where padded.
            src_is_causal (bool or None): causal self attention in the encoder.
            tgt_is_causal (bool or None): causal self attention in the decoder (without a tgt_mask).
            memory_is_causal (bool): causal cross attention.

        Returns:
            (numpy.ndarray): The decoder output (B, T, E) (``generator`` maps it to logits).

        Raises:
            ValueError: ids without an embedding, masks or inputs of the wrong shape.

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import Transformer, TransformerConfig
            >>> model = Transformer.from_config(TransformerConfig(d_model=16, nhead=4, dim_feedforward=32), rng=0)
            >>> src, tgt = np.ones((2, 7, 16), np.float32), np.ones((2, 5, 16), np.float32)
            >>> model(src, tgt, tgt_is_causal=True).shape
            (2, 5, 16)
        """
        memory = self.encode(src, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                             src_is_causal=src_is_causal)
        return self.decode(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask,
                           memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                           memory_is_causal=memory_is_causal)

    forward = __call__

    def encode(self, src, src_mask=None, src_key_padding_mask=None, src_is_causal=None) -> np.ndarray:
        """The encoder half of ``forward``.

        Args:
            src (numpy.ndarray): (B, S, E) floats or (B, S) ids.
            src_mask (numpy.ndarray or None): as in ``forward``.
            src_key_padding_mask (numpy.ndarray or None): (B, S), True where padded.
            src_is_causal (bool or None): causal self attention.

        Returns:
            memory (B, S, E).
        """
        x = self._embed(src, self.src_embed, "src")                                # (B, S, E)
        B, S, _ = x.shape
        mask = AttentionMask.from_torch(src_mask, src_key_padding_mask, bool(src_is_causal), batch_size=B,
                                        num_heads=self._nhead, q_len=S, k_len=S, dtype=x.dtype)
        return self.encoder(x, mask)

    def decode(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
               memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False) -> np.ndarray:
        """The decoder half of ``forward``.

        Args:
            tgt (numpy.ndarray): (B, T, E) floats or (B, T) ids.
            memory (numpy.ndarray): (B, S, E), the encoder output.
            tgt_mask (numpy.ndarray or None): as in ``forward``.
            memory_mask (numpy.ndarray or None): as in ``forward``.
            tgt_key_padding_mask (numpy.ndarray or None): (B, T), True where padded.
            memory_key_padding_mask (numpy.ndarray or None): (B, S), True where padded.
            tgt_is_causal (bool or None): causal self attention.
            memory_is_causal (bool): causal cross attention.

        Returns:
            (B, T, E).
        """
        y = self._embed(tgt, self.tgt_embed, "tgt")                                # (B, T, E)
        memory = np.asarray(memory, dtype=y.dtype)
        B, T, _ = y.shape
        S = memory.shape[1]
        self_mask = AttentionMask.from_torch(tgt_mask, tgt_key_padding_mask, bool(tgt_is_causal), batch_size=B,
                                             num_heads=self._nhead, q_len=T, k_len=T, dtype=y.dtype)
        cross_mask = AttentionMask.from_torch(memory_mask, memory_key_padding_mask, bool(memory_is_causal),
                                              batch_size=B, num_heads=self._nhead, q_len=T, k_len=S,
                                              dtype=y.dtype)
        return self.decoder(y, memory, self_mask=self_mask, memory_mask=cross_mask)

    # -- generation ----------------------------------------------------------------------------------
    def generate(self, src, max_new_tokens: int, *, bos_token_id: int, eos_token_id: Optional[int] = None,
                 pad_token_id: Optional[int] = None, src_key_padding_mask=None, num_beams: int = 1,
                 length_penalty: float = 1.0, use_cache: bool = True, **options) -> np.ndarray:
        """Decode target token ids for a source; needs ``tgt_embed`` and ``generator``.

        Starts every target with ``bos_token_id``; greedy when num_beams == 1, else beam search. Rows that emit
        ``eos_token_id`` continue with ``pad_token_id`` (default eos); generation stops early when all rows
        have finished.

        Args:
            src (numpy.ndarray): (B, S) ids, or (B, S, E) embedded.
            max_new_tokens: tokens after the start token (>= 0).
            bos_token_id: the decoder start token.
            eos_token_id: ends a row.
            pad_token_id: fills a finished row (default: eos).
            src_key_padding_mask (numpy.ndarray or None): (B, S), True where padded.
            num_beams: 1 for greedy search, more for beam search.
            length_penalty: beam scores are divided by length ** length_penalty.
            use_cache: keep a KV cache (one position per step); False recomputes the whole prefix each step
                (the same tokens, for checking and benchmarking).
            **options (Any): other fields of [GenerationConfig][attnkit.nn.GenerationConfig] (no_repeat_ngram_size,
                repetition_penalty, do_sample, ...), as in Hugging Face ``generate``.

        Returns:
            (B, 1 + max_new_tokens) int64 token ids, starting with bos_token_id.

        Raises:
            ValueError: max_new_tokens < 0, a model without tgt_embed or generator, a bad option.

        Examples:
            >>> import numpy as np
            >>> from attnkit.nn import Transformer, TransformerConfig
            >>> cfg = TransformerConfig(d_model=16, nhead=2, src_vocab_size=20, tgt_vocab_size=20)
            >>> Transformer.from_config(cfg, rng=0).generate(np.array([[3, 4, 5]]), 6, bos_token_id=1).shape
            (1, 7)
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
        cfg = GenerationConfig(max_length=1 + max_new_tokens, num_beams=num_beams, eos_token_id=eos_token_id,
                               pad_token_id=pad_token_id, length_penalty=length_penalty, **options)
        out = self.generate_sequences(src, cfg, decoder_start_token_id=bos_token_id,
                                      src_key_padding_mask=src_key_padding_mask, use_cache=use_cache)
        out = pad_after_eos(out, cfg, 1)
        width = 1 + max_new_tokens
        full = np.full((out.shape[0], width), cfg.pad, dtype=np.int64)
        full[:, :out.shape[1]] = out[:, :width]
        return full

    def generate_sequences(self, src, config: GenerationConfig, *, decoder_start_token_id: int,
                           src_key_padding_mask=None, use_cache: bool = True) -> np.ndarray:
        """The one decoding loop of every encoder-decoder (this model and the Hugging Face families): encode src
        once, project the memory's K/V once, then greedy search / sampling / beam search as ``config`` says.

        Args:
            src (numpy.ndarray): (B, S) ids or (B, S, E) embedded.
            config: the generation options.
            decoder_start_token_id: the first target token.
            src_key_padding_mask (numpy.ndarray or None): (B, S), True where padded.
            use_cache: keep a KV cache.

        Returns:
            (B * num_return_sequences, L) int64 token ids starting with the decoder start token,
                L <= max_length (Hugging Face's output: cut after the longest row).
        """
        if config.num_beams > 1:
            return beam_steps(*self._start(src, src_key_padding_mask, config, decoder_start_token_id, use_cache),
                              config)
        out: list = []
        for _ in self.stream_tokens(src, config, decoder_start_token_id=decoder_start_token_id,
                                    src_key_padding_mask=src_key_padding_mask, use_cache=use_cache, out=out):
            pass
        return out[0]

    def stream_tokens(self, src, config: GenerationConfig, *, decoder_start_token_id: int,
                      src_key_padding_mask=None, use_cache: bool = True, out: Optional[list] = None):
        """Greedy search or sampling one step at a time.

        Args:
            src (numpy.ndarray): (B, S) ids or (B, S, E) embedded.
            config: the generation options (num_beams 1).
            decoder_start_token_id: the first target token.
            src_key_padding_mask (numpy.ndarray or None): (B, S), True where padded.
            use_cache: keep a KV cache.
            out (list or None): receives the whole sequences at the end.

        Yields:
            tokens (numpy.ndarray): (B * num_return_sequences,) int64, each step's token per row (-1 once it has ended).

        Raises:
            ValueError: num_beams > 1.
        """
        if config.num_beams > 1:
            raise ValueError("num_beams: streaming works for greedy search and sampling (num_beams=1)")
        state, logits, prompt = self._start(src, src_key_padding_mask, config, decoder_start_token_id, use_cache)
        n = config.num_return_sequences
        if n > 1:                                                                  # independent samples per row
            rows = np.repeat(np.arange(len(prompt)), n)
            state.reorder(rows)
            logits, prompt = logits[rows], prompt[rows]
        yield from sample_steps(state, logits, prompt, config, out)

    def _start(self, src, src_key_padding_mask, config, start_id, use_cache):
        """Encode, set up the decoding state, run the decoder start token: (state, logits (B, V), prompt (B, 1))."""
        if self.tgt_embed is None or self.generator is None:
            raise ValueError("generate: the model needs tgt_embed and generator (token embeddings and the "
                             "output Linear); set them or build the model with tgt_vocab_size")
        memory = self.encode(src, src_key_padding_mask=src_key_padding_mask)       # (B, S, E)
        B = memory.shape[0]
        state = _Seq2SeqDecoding(self, memory, src_key_padding_mask, max(config.max_length, 1), use_cache)
        prompt = np.full((B, 1), start_id, dtype=np.int64)
        return state, state.step(prompt[:, 0]), prompt

    # -- helpers -------------------------------------------------------------------------------------
    @property
    def _nhead(self) -> int:
        layers = self.decoder.layers or self.encoder.layers
        return layers[0].self_attn.num_heads if layers else 1

    def _embed(self, x, embed: Optional[Embeddings], name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind in "iu":
            if embed is None:
                raise ValueError(f"{name}: integer token ids need the model's {name}_embed; pass embedded "
                                 f"(B, L, d_model) floats instead")
            if x.ndim != 2:
                raise ValueError(f"{name}: token ids must be (B, L), got shape {x.shape}")
            return embed(x)
        if x.ndim != 3:
            raise ValueError(f"{name}: expected (B, L, d_model) floats (batch first), got shape {x.shape}")
        return np.asarray(x, dtype=self.dtype)


class _Seq2SeqDecoding:
    """Decoding state of :meth:`Transformer.generate` (the protocol of attnkit.nn.generation)."""

    def __init__(self, model: Transformer, memory, memory_padding, max_len: int, use_cache: bool):
        self.model = model
        B, S, _ = memory.shape
        self.padding = None if memory_padding is None else np.asarray(memory_padding)
        self.source = np.arange(B)                                   # source sentence of each row
        self.memory_kv = model.decoder.project_memory(memory)        # once per layer, reused every step
        self.memory_mask = self._memory_mask()
        self.cache = None
        self.tokens = np.empty((B, 0), dtype=np.int64)
        if use_cache:
            first = model.decoder.layers[0].self_attn
            self.cache = KVCache(len(model.decoder.layers), B, first.num_kv_heads, first.head_dim, max_len,
                                 dtype=memory.dtype)

    def _memory_mask(self) -> AttentionMask:
        if self.padding is None:
            return NO_MASK
        kv = self.memory_kv[0][0] if self.memory_kv else None
        S = self.padding.shape[1] if kv is None else kv.shape[2]
        return AttentionMask.from_torch(None, self.padding[self.source], batch_size=len(self.source),
                                        num_heads=1, q_len=1, k_len=S, dtype=self.model.dtype)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        decoder, embed = self.model.decoder, self.model.tgt_embed
        if self.cache is not None:                                   # one new position per row
            x = embed(tokens[:, None], start=self.cache.lengths)     # (R, 1, E)
            h = decoder(x, memory_kv=self.memory_kv, memory_mask=self.memory_mask, cache=self.cache)
        else:                                                        # the whole prefix again
            self.tokens = np.concatenate([self.tokens, tokens[:, None]], axis=1)
            x = embed(self.tokens)                                   # (R, t, E)
            h = decoder(x, memory_kv=self.memory_kv, self_mask=AttentionMask(is_causal=True),
                        memory_mask=self.memory_mask)
        return self.model.generator(h[:, -1])                        # (R, V)

    def reorder(self, rows: np.ndarray) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)
        else:
            self.tokens = self.tokens[rows]
        source = self.source[rows]
        if not np.array_equal(source, self.source):                  # rows moved to another sentence
            self.memory_kv = [(k[rows], v[rows]) for k, v in self.memory_kv]
            self.source = source
            self.memory_mask = self._memory_mask()
