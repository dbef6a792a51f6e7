"""Llama-family decoders (Llama 2/3, TinyLlama, SmolLM, Qwen2/2.5, Mistral) from Hugging Face checkpoints.

A decoder-only, pre-norm Transformer with rotary positions, RMSNorm and a SwiGLU MLP:

    x = embed[ids]
    N x layer   h = RMSNorm(x);  x = x + o_proj(Attention(RoPE(q), RoPE(k), v))          (grouped-query)
                h = RMSNorm(x);  x = x + down_proj(silu(gate_proj h) * up_proj h)
    logits = RMSNorm(x) lm_head^T                                       (lm_head tied to embed, or its own)

Qwen2 adds biases to q, k and v; Mistral attends within a sliding window. Every projection is packed once
(``attnkit.pack_linear``; q, k, v as one weight, gate and up as one SwiGLU weight via ``pack_swiglu``), each
residual add is fused into the next RMSNorm, RoPE rotates q and k in place inside the QKV projection's
output, and the KV cache (``attnkit.nn.KVCache``) holds the grouped KV heads, preallocated.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field as dc_field
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from .. import functional as F
from .. import nn
from ..nn.sampling import SamplingConfig, choose, process_logits
from ..rope import rope_parameters
from ._checkpoint import SIZE_MAX, CheckpointConfig, Pretrained, field, load_config, special_token_ids
from ._llama_stack import build, checkpoint_tensors, random_state_dict
from .gpt2 import _compact_prompts

__all__ = ["LlamaConfig", "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"]


@dataclass
class LlamaConfig(CheckpointConfig):
    """A Llama-family decoder's hyperparameters (defaults: Llama 2 7B); ``from_dict`` reads a config.json.

    Args:
        vocab_size: V.
        hidden_size: E.
        intermediate_size: the SwiGLU MLP's width.
        num_hidden_layers: decoder layers.
        num_attention_heads: query heads Hq.
        num_key_value_heads: KV heads Hk, a divisor of Hq (grouped-query attention).
        head_dim: Dh (None: hidden_size // num_attention_heads, as transformers' LlamaConfig).
        max_position_embeddings: the rotary tables' first size (they grow on demand).
        rms_norm_eps: the RMSNorms' eps.
        rope (dict): the rotary parameters (``attnkit.rope.rope_parameters``: rope_type, rope_theta, scaling).
        partial_rotary_factor: the fraction of each head's dims that rotate.
        attention_bias: biases on q, k and v (Qwen2: True).
        o_bias: a bias on the output projection (Llama's attention_bias sets both).
        mlp_bias: biases in the MLP.
        tie_word_embeddings: the LM head is the token embedding.
        sliding_window: Mistral's attention window (None: full causal attention).
        eos_token_id (list of int or None): ends generation by default.
        bos_token_id: metadata.
        pad_token_id: metadata.
        model_type: "llama", "qwen2" or "mistral".

    Examples:
        >>> from attnkit.models import LlamaConfig
        >>> LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16).rope["rope_theta"]
        10000.0
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: Optional[int] = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: dict = dc_field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    partial_rotary_factor: float = 1.0
    attention_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: Optional[int] = None
    eos_token_id: Optional[List[int]] = None
    bos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    model_type: str = "llama"

    def __post_init__(self):
        if self.head_dim is None:   # Llama 2 7B's 4096 / 32 = 128, as the other defaults
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def _read(cls, config: dict, where: str) -> "LlamaConfig":
        """from_dict's reading of a config.json dict."""
        def f(name, kind, *default, **kw):
            return field(config, name, kind, *default, where=where, **kw)

        mt = f("model_type", str, "llama", choices=("llama", "qwen2", "mistral"))
        vocab = f("vocab_size", int, low=1, high=SIZE_MAX)
        config = dict(config, **special_token_ids(config, vocab, where))     # ids outside the vocabulary: warned, None
        act = f("hidden_act", str, "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"{where}: field 'hidden_act' = {act!r} is not supported (supported: ['silu'])")
        E = f("hidden_size", int)
        H = f("num_attention_heads", int)
        if H <= 0 or E <= 0:
            raise ValueError(f"{where}: fields 'hidden_size' and 'num_attention_heads' must be positive")
        Hk = f("num_key_value_heads", int, H)
        if Hk <= 0 or H % Hk:
            raise ValueError(f"{where}: field 'num_key_value_heads' = {Hk} must divide num_attention_heads = {H}")
        head_dim = f("head_dim", int, None)
        if head_dim is None:
            if E % H:
                raise ValueError(f"{where}: field 'num_attention_heads' = {H} does not divide hidden_size = {E}")
            head_dim = E // H
        if f("pretraining_tp", int, 1) < 1:
            raise ValueError(f"{where}: field 'pretraining_tp' must be >= 1")
        window = None
        if mt == "mistral":
            window = f("sliding_window", int, None)
        elif mt == "qwen2" and f("use_sliding_window", bool, False):
            raise ValueError(f"{where}: field 'use_sliding_window' = True is not supported for qwen2")
        if window is not None and window <= 0:
            raise ValueError(f"{where}: field 'sliding_window' = {window} must be positive")
        eos = config.get("eos_token_id")
        if eos is not None:
            eos = [eos] if isinstance(eos, int) else list(eos)
            if not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
                raise ValueError(f"{where}: field 'eos_token_id' should be int or list of int, got {eos!r}")
        prf = f("partial_rotary_factor", float, 1.0)
        if not 0 < prf <= 1 or int(head_dim * prf) % 2:
            raise ValueError(f"{where}: field 'partial_rotary_factor' = {prf} must give an even number of dims")
        if mt == "llama":
            qkv_bias = f("attention_bias", bool, False)
        else:
            qkv_bias = mt == "qwen2"
        return cls(vocab_size=vocab, hidden_size=E,
                   intermediate_size=f("intermediate_size", int), num_hidden_layers=f("num_hidden_layers", int), num_attention_heads=H, num_key_value_heads=Hk,
                   head_dim=head_dim, max_position_embeddings=f("max_position_embeddings", int, 2048),
                   rms_norm_eps=f("rms_norm_eps", float, 1e-6), rope=rope_parameters(config),
                   partial_rotary_factor=prf, attention_bias=qkv_bias,
                   o_bias=mt == "llama" and qkv_bias, mlp_bias=f("mlp_bias", bool, False),
                   tie_word_embeddings=f("tie_word_embeddings", bool, False),
                   sliding_window=window, eos_token_id=eos, bos_token_id=f("bos_token_id", int, None),
                   pad_token_id=f("pad_token_id", int, None), model_type=mt)


class LlamaForCausalLM(Pretrained, nn.Module):
    """A Llama-family decoder: ``model(input_ids, attention_mask)`` -> logits (B, L, vocab) float32;
    ``generate`` / ``stream`` decode (text too, with the checkpoint's tokenizer).

    Load one with [from_pretrained][attnkit.models.LlamaForCausalLM.from_pretrained], or build one with random
    weights with [from_config][attnkit.models.LlamaForCausalLM.from_config].

    Args:
        config: the hyperparameters.
        embed (numpy.ndarray): (V, E) token embeddings (or the quantized head's rows when tied and quantized).
        layers (list): the decoder layers.
        norm (numpy.ndarray): (E,) the final RMSNorm's weight.
        lm_head (PackedLinear or numpy.ndarray or None): the packed LM head (the embedding table when tied).
        tokenizer (tokenizers.Tokenizer or None): a ``tokenizers.Tokenizer`` or None.

    Examples:
        >>> from attnkit.models import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        >>> len(LlamaForCausalLM.from_config(cfg, rng=0).layers)
        2
    """

    config_class = LlamaConfig
    model_types = ("llama",)

    def __init__(self, config: LlamaConfig, embed, layers, norm, lm_head, tokenizer=None):
        self.config, self.embed, self.layers, self.norm = config, embed, list(layers), norm
        self.lm_head = lm_head                        # PackedLinear, or the embedding array when tied
        self.tokenizer = tokenizer

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory, *, dtype=np.float32, **quantization):
        """Load a Hugging Face checkpoint directory: config.json, model.safetensors (or its shards) and,
        when present with the ``tokenizers`` package, tokenizer.json.

        Args:
            directory (str or os.PathLike): the checkpoint.
            dtype (numpy.dtype or str): float32 (default), float16 or "bfloat16": weights and activations.
            **quantization (str or int or bool): ``quantize`` ('int8' or 'int4'), ``group_size``, ``quantize_lm_head``: as
                ``Pretrained.from_pretrained`` (see the quantization docs).

        Returns:
            model (LlamaForCausalLM): the model (of the class it was called on), ready to call and to ``generate``.

        Raises:
            ValueError: a config.json whose model_type is not this class's, an unsupported field, a missing
                or misshapen tensor, each named.

        Examples:
            >>> import json, os, tempfile
            >>> from safetensors.numpy import save_file
            >>> from attnkit.models import LlamaConfig, Qwen2ForCausalLM
            >>> hf = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            ...       "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
            >>> tensors = Qwen2ForCausalLM.random_state_dict(LlamaConfig.from_dict(hf))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     json.dump(hf, open(os.path.join(d, "config.json"), "w"))
            ...     save_file(tensors, os.path.join(d, "model.safetensors"))
            ...     model = Qwen2ForCausalLM.from_pretrained(d, dtype="bfloat16")
            >>> model.dtype.name, model.tokenizer is None
            ('bfloat16', True)
        """
        config = load_config(directory)
        mt = config.get("model_type", "llama")
        if mt not in cls.model_types:
            raise ValueError(f"config.json: field 'model_type' = {mt!r} is not a {cls.__name__} "
                             f"(expected {', '.join(cls.model_types)}); attnkit.models.from_pretrained picks the class")
        model = super().from_pretrained(directory, dtype=dtype, **quantization)
        path = os.path.join(os.fspath(directory), "tokenizer.json")
        if os.path.isfile(path):
            try:
                from tokenizers import Tokenizer
                model.tokenizer = Tokenizer.from_file(path)
            except ImportError:
                pass
        return model

    @classmethod
    def _from_tensors(cls, tensors: dict, config: LlamaConfig, dtype, origin: str):
        """from_state_dict: names with or without 'model.'; a quantized checkpoint's q and scales too."""
        return cls(config, *build(tensors, config, dtype, origin))

    def _checkpoint_tensors(self):
        """(name, array) in the Hugging Face layout (save_pretrained)."""
        return checkpoint_tensors(self)

    @staticmethod
    def _random_tensors(config: LlamaConfig, rng: np.random.Generator, std: float) -> dict:
        """The Llama family's checkpoint names and shapes (random_state_dict)."""
        return random_state_dict(config, rng=rng, std=std)

    @property
    def dtype(self):
        """The weights' and activations' dtype (the embedding table's)."""
        return self.embed.dtype

    # -- forward ----------------------------------------------------------------------------------
    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, *, cache=None) -> np.ndarray:
        """The final hidden states RMSNorm(x), before the LM head.

        Args:
            input_ids (numpy.ndarray): (B, L) integer token ids.
            attention_mask (numpy.ndarray or None): (B, L), 1 = token, 0 = padding (padded keys ignored; not
                used with a cache).
            position_ids (numpy.ndarray or None): (B, L); default 0..L-1 (after the cache's part).
            cache (KVCache or None): the L new tokens continue each cached sequence (the cache advances by L).

        Returns:
            (B, L, E) in the model's dtype.

        Raises:
            ValueError: ids outside the vocabulary.
        """
        ids = np.asarray(input_ids)
        B, L = ids.shape
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids: token ids must lie in [0, {self.config.vocab_size})")
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(L), (B, L)) if cache is None else \
                cache.lengths[:, None] + np.arange(L)
        positions = np.ascontiguousarray(position_ids, dtype=np.int64)
        kw = {}
        if attention_mask is not None and cache is None:
            keep = np.asarray(attention_mask).reshape(B, L) != 0
            if not keep.all():
                kw["attn_mask"] = keep[:, None, None, :]                             # (B, 1, 1, L) keys
        c = self.config
        x = self.embed[ids]                                                          # (B, L, E) the residual stream
        h = F.rms_norm(x, self.layers[0].input_norm, c.rms_norm_eps) if self.layers else x
        for i, layer in enumerate(self.layers):
            m, x = layer(h, x, positions, cache=None if cache is None else cache.layer(i), **kw)
            nxt = self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.norm
            h, x = F.rms_norm(m, nxt, c.rms_norm_eps, residual=x, return_sum=True)  # x += m; h = norm(x)
        if cache is not None:
            cache.advance(L)
        return h

    def logits(self, hidden) -> np.ndarray:
        """Logits through the LM head.

        Args:
            hidden (numpy.ndarray): (..., E), e.g. [hidden_states][attnkit.models.LlamaForCausalLM.hidden_states]'s.

        Returns:
            (..., V) logits in the model's dtype.
        """
        return F.linear(hidden, self.lm_head)

    def __call__(self, input_ids, attention_mask=None, position_ids=None) -> np.ndarray:
        """Next-token logits at every position.

        Args:
            input_ids (numpy.ndarray): (B, L) or (L,) integer token ids.
            attention_mask (numpy.ndarray or None): (B, L), 1 = token, 0 = padding.
            position_ids (numpy.ndarray or None): (B, L); default 0..L-1.

        Returns:
            (B, L, V) float32 logits.

        Raises:
            ValueError: ids that are not non-empty (B, L) integers in the vocabulary.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import LlamaConfig, LlamaForCausalLM
            >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            ...                   num_attention_heads=2, num_key_value_heads=2, head_dim=16)
            >>> LlamaForCausalLM.from_config(cfg, dtype="bfloat16")(np.array([[1, 2, 3, 4]])).dtype
            dtype('float32')
        """
        ids = _token_ids(input_ids)
        return self.logits(self.hidden_states(ids, attention_mask, position_ids)).astype(np.float32, copy=False)

    # -- generation -------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> nn.KVCache:
        """An empty KV cache for this model (its grouped KV heads).

        Args:
            batch_size: sequences.
            max_len: positions per sequence at most.

        Returns:
            A [KVCache][attnkit.nn.KVCache] for ``hidden_states(..., cache=...)``.
        """
        c = self.config
        return nn.KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, c.head_dim, max_len, self.dtype)

    def stream(self, input_ids, max_new_tokens: int = 20, *, attention_mask=None, do_sample: bool = False,
               temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
               repetition_penalty: Optional[float] = None, seed=None,
               eos_token_id: Union[None, int, Sequence[int]] = None, use_cache: bool = True) -> Iterator[np.ndarray]:
        """Yield the new tokens (B,) one step at a time; rows that have finished yield -1.

        Stops after max_new_tokens steps or when every row has produced an eos. The arguments are those of
        [generate][attnkit.models.LlamaForCausalLM.generate] (input_ids as token ids only).

        Args:
            input_ids (numpy.ndarray): (B, L) integer token ids.
            max_new_tokens: steps at most (>= 0).
            attention_mask (numpy.ndarray or None): as generate's.
            do_sample: as generate's.
            temperature: as generate's.
            top_k: as generate's.
            top_p: as generate's.
            repetition_penalty: as generate's.
            seed (int or numpy.random.Generator or None): as generate's.
            eos_token_id: one id or several; None: none (generate passes the config's).
            use_cache: as generate's.

        Yields:
            numpy.ndarray: (B,) int64, the step's token per row (-1 once the row has ended).

        Raises:
            ValueError: as generate's.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import LlamaConfig, LlamaForCausalLM
            >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            ...                   num_attention_heads=2, num_key_value_heads=1, head_dim=16)
            >>> model = LlamaForCausalLM.from_config(cfg, rng=0)
            >>> steps = model.stream(np.array([[1, 2], [3, 4]]), 3, do_sample=True, top_k=10, seed=0)
            >>> [tokens.shape for tokens in steps]
            [(2,), (2,), (2,)]
        """
        cfg = SamplingConfig(do_sample, temperature, top_k, top_p, repetition_penalty, seed)
        ids = _token_ids(input_ids)
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        eos = _eos_set(eos_token_id)
        prompts, lengths, _ = _compact_prompts(ids, attention_mask)
        B, V = len(prompts), self.config.vocab_size
        seen = np.zeros((B, V), dtype=bool)
        for b in range(B):
            seen[b, prompts[b, :lengths[b]]] = True
        if max_new_tokens == 0:
            return
        total = int(lengths.max()) + max_new_tokens
        if use_cache:
            cache = self.new_cache(B, total)
            hidden = self.hidden_states(prompts, cache=cache)                       # fills positions 0..L-1
            cache.advance(lengths - prompts.shape[1])                              # keep each row's real tokens
        else:
            tokens = np.zeros((B, total), dtype=np.int64)
            tokens[:, :prompts.shape[1]] = prompts
            cur = lengths.copy()
            hidden = self.hidden_states(prompts, attention_mask=np.arange(prompts.shape[1]) < lengths[:, None])
        last = hidden[np.arange(B), lengths - 1]                                   # (B, E) each row's last token
        done = np.zeros(B, dtype=bool)
        for step in range(max_new_tokens):
            logits = self.logits(last)                                             # (B, V)
            tok = choose(process_logits(logits, cfg, seen), cfg)
            tok = np.where(done, -1, tok)
            yield tok
            done |= np.isin(tok, list(eos)) if eos else False
            if done.all() or step == max_new_tokens - 1:
                return
            feed = np.where(done, 0, tok)
            seen[np.arange(B), feed] |= ~done
            if use_cache:
                last = self.hidden_states(feed[:, None], cache=cache)[:, 0]
            else:
                tokens[np.arange(B), cur] = feed
                cur = cur + 1
                S = int(cur.max())
                h = self.hidden_states(tokens[:, :S], attention_mask=np.arange(S) < cur[:, None])
                last = h[np.arange(B), cur - 1]

    def generate(self, input_ids, max_new_tokens: int = 20, *, attention_mask=None, do_sample: bool = False,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 repetition_penalty: Optional[float] = None, seed=None,
                 eos_token_id: Union[None, int, Sequence[int]] = None, pad_token_id: Optional[int] = None,
                 use_cache: bool = True):
        """Continue each prompt: input_ids (B, L) -> (B, L + n) int64, or a str -> str with a tokenizer.

        Greedy by default; ``do_sample=True`` draws from softmax(processed logits) after
        repetition_penalty, temperature, top_k and top_p (Hugging Face's order). Prompts of different
        lengths: ``attention_mask``; each row decodes from its own length, the new tokens right after its
        prompt. n = the longest row's new tokens.

        Args:
            input_ids (numpy.ndarray or str): (B, L) integer token ids, or a str (needs the checkpoint's
                tokenizer.json and the ``tokenizers`` package).
            max_new_tokens: tokens to add per row at most (>= 0).
            attention_mask (numpy.ndarray or None): (B, L), 1 = token, 0 = padding (on either side).
            do_sample: False: greedy; True: sampling.
            temperature: sampling temperature (> 0).
            top_k: keep the k most likely tokens (None: all).
            top_p: keep the smallest set of tokens of probability >= top_p (None: all).
            repetition_penalty: Hugging Face's (None: off).
            seed (int or numpy.random.Generator or None): the sampling's randomness.
            eos_token_id: one id or several; None: the config's. Ends a row.
            pad_token_id: fills a row's slots after its eos (default: the first eos).
            use_cache: keep a KV cache; False recomputes the prefix (the same tokens).

        Returns:
            out (numpy.ndarray or str): (B, L + n) int64 token ids, or the text for a str prompt.

        Raises:
            TypeError: a str prompt without a tokenizer. ValueError: bad token ids, mask or sampling
                parameters, each naming the argument.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import LlamaConfig, LlamaForCausalLM
            >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            ...                   num_attention_heads=2, num_key_value_heads=1, head_dim=16)
            >>> LlamaForCausalLM.from_config(cfg).generate(np.array([[1, 2, 3]]), 4).shape
            (1, 7)
        """
        text = isinstance(input_ids, str)
        if text:
            if self.tokenizer is None:
                raise TypeError("input_ids: a str needs a tokenizer (tokenizer.json in the checkpoint and the "
                                "'tokenizers' package)")
            input_ids = np.array([self.tokenizer.encode(input_ids).ids], dtype=np.int64)
        ids = _token_ids(input_ids)
        if eos_token_id is None:
            eos_token_id = self.config.eos_token_id
        eos = _eos_set(eos_token_id)
        pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
        _, lengths, starts = _compact_prompts(ids, attention_mask)
        steps = list(self.stream(ids, max_new_tokens, attention_mask=attention_mask, do_sample=do_sample,
                                 temperature=temperature, top_k=top_k, top_p=top_p,
                                 repetition_penalty=repetition_penalty, seed=seed, eos_token_id=eos_token_id,
                                 use_cache=use_cache))
        new = np.stack(steps, axis=1) if steps else np.zeros((len(ids), 0), np.int64)
        new = np.where(new < 0, pad, new)
        n = new.shape[1]
        B, L = ids.shape
        out = np.full((B, L + n), pad, dtype=np.int64)
        for b in range(B):
            s, m = starts[b], lengths[b]
            out[b, :s + m] = ids[b, :s + m]
            out[b, s + m:s + m + n] = new[b]
            out[b, s + m + n:] = ids[b, s + m:]
        if text:
            return self.tokenizer.decode(out[0].tolist())
        return out

    def stream_text(self, prompt: str, max_new_tokens: int = 20, **kwargs) -> Iterator[str]:
        """Yield the decoded text of each new token of one prompt (needs a tokenizer).

        Args:
            prompt: the text.
            max_new_tokens: tokens at most.
            **kwargs (Any): [stream][attnkit.models.LlamaForCausalLM.stream]'s options (do_sample, temperature, ...).

        Yields:
            str: the text each token adds.

        Raises:
            TypeError: a model without a tokenizer.
        """
        if self.tokenizer is None:
            raise TypeError("prompt: streaming text needs a tokenizer (tokenizer.json and 'tokenizers')")
        ids = np.array([self.tokenizer.encode(prompt).ids], dtype=np.int64)
        so_far: List[int] = []
        text = ""
        for tok in self.stream(ids, max_new_tokens, **kwargs):
            if tok[0] < 0:
                return
            so_far.append(int(tok[0]))
            full = self.tokenizer.decode(so_far)
            yield full[len(text):]
            text = full


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen2.5: Llama with biases on q, k and v (embeddings often tied).

    Examples:
        >>> from attnkit.models import LlamaConfig, Qwen2ForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_bias=True)
        >>> Qwen2ForCausalLM.from_config(cfg).layers[0].attn.qkv.bias.shape
        (64,)
    """
    model_types = ("qwen2",)


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: Llama with sliding-window attention (config.sliding_window).

    Examples:
        >>> import numpy as np
        >>> from attnkit.models import LlamaConfig, MistralForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                   num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=4)
        >>> MistralForCausalLM.from_config(cfg, rng=0).generate(np.arange(1, 9)[None], 3).shape
        (1, 11)
    """
    model_types = ("mistral",)


def _token_ids(input_ids) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
        raise ValueError(f"input_ids: expected non-empty (B, L) integer token ids, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64, copy=False)


def _eos_set(eos_token_id) -> set:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, (int, np.integer)) and not isinstance(eos_token_id, bool):
        return {int(eos_token_id)}
    try:
        ids = [int(e) for e in eos_token_id]
    except TypeError:
        raise TypeError(f"eos_token_id: expected an int, a sequence of ints or None, got {eos_token_id!r}") from None
    return set(ids)
