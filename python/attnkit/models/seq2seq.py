"""Encoder-decoder checkpoints (Marian / OPUS-MT, BART, mBART, M2M100 / NLLB, T5 / Flan-T5) on attnkit.nn's one
encoder-decoder stack.

The families are configurations of ``attnkit.nn.Transformer``, not classes of their own:

    family    norm                 positions                          embedding scale  FFN          head
    marian    post-LN              sinusoidal (sin | cos halves)      sqrt(d) option   swish/gelu   + final_logits_bias
    bart      post-LN, LN on emb   learned, offset 2                  sqrt(d) option   gelu         + final_logits_bias
    mbart     pre-LN, LN on emb,   learned, offset 2                  sqrt(d) option   gelu         + final_logits_bias
              final LN
    m2m_100   pre-LN, final LN     sinusoidal, offset 2, padding      sqrt(d) option   relu         tied
              (NLLB)               not counted
    t5        pre-RMSNorm, final   relative buckets: a bias per       1                relu (v1.0)  tied, x d^-0.5
              RMSNorm              head added to the scores                            gated-gelu (v1.1, Flan)

``from_pretrained(dir)`` reads config.json (every field that changes the computation is honoured or refused by
name), generation_config.json (the defaults of ``generate``) and model.safetensors (or its shards; bfloat16
files too); a tokenizer.json (``tokenizers``) or Marian's SentencePiece files (the optional ``sentencepiece``
package) give text in and out. ``model(input_ids, attention_mask, decoder_input_ids)`` gives logits as
transformers' ``forward`` does; ``generate`` is transformers' ``generate`` (greedy, sampling, beam search and
their options), ``stream`` yields its tokens step by step.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from .. import nn
from ..nn.generation import GenerationConfig
from ._checkpoint import StateDictModel, load_config, load_tensors
from ._seq2seq_config import GENERATION_DEFAULTS, GENERATION_FIELDS, UNSUPPORTED_GENERATION, Seq2SeqConfig
from ._seq2seq_stack import build_bart_like, build_t5, random_state_dict
from ._tokenizers import load_tokenizer

__all__ = ["Seq2SeqConfig", "Seq2SeqLM", "MarianMTModel", "BartForConditionalGeneration",
           "MBartForConditionalGeneration", "M2M100ForConditionalGeneration", "T5ForConditionalGeneration"]


class Seq2SeqLM(StateDictModel, nn.Module):
    """An encoder-decoder language model: ``model(input_ids, attention_mask, decoder_input_ids)`` -> logits
    (B, T, V) float32; ``generate(...)`` as transformers' (token ids, or text with a tokenizer); ``stream(...)``.

    Loading or building one picks the family's class (MarianMTModel, BartForConditionalGeneration, ...).

    Args:
        config: the hyperparameters.
        transformer: the stack (an [attnkit.nn.Transformer][attnkit.nn.Transformer] with embeddings and
            generator).
        tokenizer (HFTokenizer or MarianTokenizer or None): text in and out (a tokenizer.json's, or Marian's
            SentencePiece), or None.

    Examples:
        >>> from attnkit.models import Seq2SeqConfig, Seq2SeqLM
        >>> cfg = Seq2SeqConfig("bart", 64, 32, 1, 1, 4, 4, 64, 64, 8)   # vocab, d_model, layers, heads, ffn, head_dim
        >>> type(Seq2SeqLM.from_config(cfg, rng=0)).__name__
        'BartForConditionalGeneration'
    """

    model_types: tuple = ()

    def __init__(self, config: Seq2SeqConfig, transformer: nn.Transformer, tokenizer=None):
        self.config, self.transformer, self.tokenizer = config, transformer, tokenizer

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory, *, dtype=np.float32) -> "Seq2SeqLM":
        """Load a Hugging Face checkpoint directory: config.json, generation_config.json (the defaults of
        ``generate``), model.safetensors (or its shards; bfloat16 files too) and a tokenizer when there is one
        (tokenizer.json with ``tokenizers``, or Marian's source.spm / vocab.json with ``sentencepiece``).

        Args:
            directory (str or os.PathLike): the checkpoint.
            dtype (numpy.dtype or str): float32 (default), float64, float16 or bfloat16.

        Returns:
            The family's model (called on Seq2SeqLM, the class config.json's model_type names).

        Raises:
            ValueError: a model_type that is not this class's, a field or generation option attnkit cannot
                compute, a missing or misshapen tensor; each named.

        Examples:
            >>> import json, os, tempfile
            >>> from safetensors.numpy import save_file
            >>> from attnkit.models import Seq2SeqConfig, T5ForConditionalGeneration
            >>> hf = {"model_type": "t5", "vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
            ...       "num_heads": 4, "feed_forward_proj": "gated-gelu", "decoder_start_token_id": 0}
            >>> with tempfile.TemporaryDirectory() as d:
            ...     for name, value in (("config.json", hf), ("generation_config.json", {"num_beams": 4})):
            ...         with open(os.path.join(d, name), "w") as f:
            ...             json.dump(value, f)
            ...     save_file(T5ForConditionalGeneration.random_state_dict(Seq2SeqConfig.from_dict(hf)),
            ...               os.path.join(d, "model.safetensors"))
            ...     model = T5ForConditionalGeneration.from_pretrained(d)
            >>> model.config.gated, model.generation_config().num_beams
            (True, 4)
        """
        directory = os.fspath(directory)
        raw = load_config(directory)
        mt = raw.get("model_type")
        if cls.model_types and mt not in cls.model_types:
            raise ValueError(f"config.json: field 'model_type' = {mt!r} is not a {cls.__name__} (expected "
                             f"{', '.join(cls.model_types)}); attnkit.models.from_pretrained picks the class")
        config = Seq2SeqConfig.from_dict(raw, where=os.path.join(directory, "config.json"))
        gen_path = os.path.join(directory, "generation_config.json")
        if os.path.isfile(gen_path):
            with open(gen_path, encoding="utf-8") as fh:
                try:
                    gen = json.load(fh)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{gen_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
            if not isinstance(gen, dict):
                raise ValueError(f"{gen_path}: expected a JSON object")
            config.generation = {k: gen[k] for k in GENERATION_FIELDS if gen.get(k) is not None}
            bad = [k for k in UNSUPPORTED_GENERATION if gen.get(k) not in (None, False, 1.0, 0, 0.0)]
            if bad:
                raise ValueError(f"{gen_path}: field '{bad[0]}' = {gen[bad[0]]!r} is not supported by attnkit's "
                                 f"generate")
        model = cls._for(config.model_type).from_state_dict(load_tensors(directory), config, dtype=dtype,
                                                            origin=os.path.join(directory, "model.safetensors"))
        model.tokenizer = load_tokenizer(directory, config)
        return model

    @staticmethod
    def _for(model_type: str):
        return {"marian": MarianMTModel, "bart": BartForConditionalGeneration,
                "mbart": MBartForConditionalGeneration, "m2m_100": M2M100ForConditionalGeneration,
                "t5": T5ForConditionalGeneration}[model_type]

    @classmethod
    def _from_tensors(cls, tensors: dict, config: Seq2SeqConfig, dtype, origin: str) -> "Seq2SeqLM":
        """from_state_dict: the stack of config.model_type's family, as that family's class."""
        if config.model_type == "t5":
            model = build_t5(tensors, config, dtype, origin)
        else:
            model = build_bart_like(tensors, config, dtype, origin)
        return cls._for(config.model_type)(config, model)

    @staticmethod
    def _random_tensors(config: Seq2SeqConfig, rng: np.random.Generator, std: float) -> dict:
        """The family's checkpoint names and shapes (random_state_dict)."""
        return random_state_dict(config, rng=rng, std=std)

    @property
    def dtype(self):
        """The weights' and activations' dtype."""
        return self.transformer.dtype

    # -- forward ----------------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask=None) -> np.ndarray:
        """The encoder output, e.g. to pass as ``encoder_outputs`` to several calls.

        Args:
            input_ids (numpy.ndarray): (B, S) integer token ids.
            attention_mask (numpy.ndarray or None): (B, S), 1 = token, 0 = padding.

        Returns:
            (B, S, E) in the model's dtype.

        Raises:
            ValueError: ids or a mask that do not fit.
        """
        ids, padding = self._inputs(input_ids, attention_mask)
        return self.transformer.encode(ids, src_key_padding_mask=padding)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, *, encoder_outputs=None) -> np.ndarray:
        """Next-token logits for each target position, as transformers' ``forward``.

        Args:
            input_ids (numpy.ndarray): (B, S) integer source token ids.
            attention_mask (numpy.ndarray or None): (B, S), 1 = token, 0 = padding.
            decoder_input_ids (numpy.ndarray): (B, T) the target so far, starting with the decoder start token
                (required).
            encoder_outputs (numpy.ndarray or None): (B, S, E) from [encode][attnkit.models.Seq2SeqLM.encode],
                to skip the encoder.

        Returns:
            (B, T, V) float32 logits.

        Raises:
            ValueError: no decoder_input_ids, ids outside the vocabulary, batches or a mask that do not fit.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import Seq2SeqConfig, Seq2SeqLM
            >>> model = Seq2SeqLM.from_config(Seq2SeqConfig("mbart", 64, 32, 1, 1, 4, 4, 64, 64, 8, norm_first=True))
            >>> model(np.array([[5, 6, 7, 2]]), decoder_input_ids=np.array([[2, 9]])).shape
            (1, 2, 64)
        """
        ids, padding = self._inputs(input_ids, attention_mask)
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids: required (the target so far, starting with the decoder start "
                             f"token {self._gen('decoder_start_token_id')})")
        tgt = _ids("decoder_input_ids", decoder_input_ids)
        if tgt.shape[0] != ids.shape[0]:
            raise ValueError(f"decoder_input_ids: batch {tgt.shape[0]} differs from input_ids' {ids.shape[0]}")
        memory = self.transformer.encode(ids, src_key_padding_mask=padding) if encoder_outputs is None \
            else np.asarray(encoder_outputs)
        h = self.transformer.decode(tgt, memory, memory_key_padding_mask=padding, tgt_is_causal=True)
        return np.asarray(self.transformer.generator(h), dtype=np.float32)

    forward = __call__

    def _inputs(self, input_ids, attention_mask):
        ids = _ids("input_ids", input_ids)
        if ids.size and ids.max() >= self.config.vocab_size:
            raise ValueError(f"input_ids: token ids must lie in [0, {self.config.vocab_size})")
        padding = None
        if attention_mask is not None:
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask: has shape {mask.shape}, expected input_ids' {ids.shape}")
            if not mask.all():
                padding = mask == 0                                            # True = padding (PyTorch's)
                if padding.all(axis=1).any():
                    raise ValueError("attention_mask: a row has no token (all zeros)")
        return ids, padding

    # -- generation -------------------------------------------------------------------------------
    def _gen(self, name):
        return self.config.generation.get(name, GENERATION_DEFAULTS.get(name))

    def generation_config(self, **options) -> GenerationConfig:
        """The options of a generate call: the call's, else generation_config.json's (or config.json's),
        else transformers' defaults. max_new_tokens wins over max_length.

        Args:
            **options (Any): generate's options (max_new_tokens, num_beams, ...; None leaves one unset).

        Returns:
            A [GenerationConfig][attnkit.nn.GenerationConfig].

        Raises:
            TypeError: an unknown option. ValueError: an option attnkit does not support, or out of range.
        """
        for name in options:
            if name in UNSUPPORTED_GENERATION:
                raise ValueError(f"{name}: not supported by attnkit's generate")
            if name not in GENERATION_FIELDS and name != "seed":
                raise TypeError(f"generate: unexpected option {name!r}")
        given = {k: v for k, v in options.items() if v is not None}
        merged = {**{k: v for k, v in GENERATION_DEFAULTS.items()}, **self.config.generation, **given}
        max_new = merged.pop("max_new_tokens", None)
        if "max_new_tokens" in given or ("max_length" not in given and max_new is not None):
            max_new = given.get("max_new_tokens", max_new)
            if isinstance(max_new, bool) or not isinstance(max_new, (int, np.integer)) or max_new < 0:
                raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new!r}")
            merged["max_length"] = 1 + int(max_new)
        elif "max_length" not in given and "max_length" not in self.config.generation:
            merged["max_length"] = min(20 + 1, self.config.max_position_embeddings)   # 20 new tokens
        if not merged.get("do_sample"):
            for k in ("temperature", "top_k", "top_p"):
                merged.pop(k, None)
        elif merged.get("top_k") == 0:
            merged["top_k"] = None
        merged.pop("decoder_start_token_id", None)
        if merged.get("repetition_penalty") == 1.0:
            merged["repetition_penalty"] = None
        return GenerationConfig(**merged)

    def _start_id(self, decoder_start_token_id=None) -> int:
        start = decoder_start_token_id if decoder_start_token_id is not None else \
            self._gen("decoder_start_token_id")
        if start is None:
            start = self._gen("bos_token_id")
        if start is None:
            raise ValueError("decoder_start_token_id: neither the call nor generation_config.json / config.json "
                             "gives one")
        return int(start)

    def generate(self, input_ids=None, attention_mask=None, *, decoder_start_token_id=None, use_cache: bool = True,
                 **options):
        """Hugging Face's ``generate``: greedy search, sampling or beam search with its options.

        Unset options come from generation_config.json (or config.json), else transformers' defaults.

        Args:
            input_ids (numpy.ndarray or str or list of str): (B, S) integer token ids, or text (needs a
                tokenizer).
            attention_mask (numpy.ndarray or None): (B, S), 1 = token, 0 = padding.
            decoder_start_token_id (int or None): the first target token (default: the config's).
            use_cache: keep a KV cache (one position per step); False recomputes the prefix (the same tokens).
            **options (Any): max_new_tokens, max_length, min_length, min_new_tokens, num_beams, length_penalty,
                early_stopping (True / False / "never"), num_return_sequences, no_repeat_ngram_size,
                repetition_penalty, bad_words_ids, forced_bos_token_id, forced_eos_token_id, eos_token_id,
                pad_token_id, do_sample, temperature, top_k, top_p, seed (an int or numpy Generator: sampling
                is reproducible with it, not equal to torch's draws).

        Returns:
            out (numpy.ndarray or str or list): (B * num_return_sequences, L) int64 token ids, each starting
                with the decoder start token; for text, the decoded text (a str for one str).

        Raises:
            TypeError: text without a tokenizer, an unknown option. ValueError: ids, a mask or an option that
                do not fit, no decoder start token.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import Seq2SeqConfig, Seq2SeqLM
            >>> model = Seq2SeqLM.from_config(Seq2SeqConfig("marian", 64, 32, 1, 1, 4, 4, 64, 64, 8), rng=0)
            >>> model.generate(np.array([[5, 6, 7, 0]]), decoder_start_token_id=63, max_new_tokens=5, num_beams=2).shape
            (1, 6)
        """
        text, ids, attention_mask = self._text_in(input_ids, attention_mask)
        cfg = self.generation_config(**options)
        _, padding = self._inputs(ids, attention_mask)
        out = self.transformer.generate_sequences(ids, cfg, decoder_start_token_id=self._start_id(
            decoder_start_token_id), src_key_padding_mask=padding, use_cache=use_cache)
        if text is None:
            return out
        decoded = [self.decode(row) for row in out]
        return decoded[0] if isinstance(text, str) and len(decoded) == 1 else decoded

    def stream(self, input_ids, attention_mask=None, *, decoder_start_token_id=None, use_cache: bool = True,
               **options) -> Iterator[np.ndarray]:
        """Yield each step's new tokens of greedy search or sampling, as generate would pick them.

        Args:
            input_ids (numpy.ndarray or str or list of str): as generate's.
            attention_mask (numpy.ndarray or None): as generate's.
            decoder_start_token_id (int or None): as generate's.
            use_cache: as generate's.
            **options (Any): generate's options (num_beams 1).

        Yields:
            numpy.ndarray: (B * num_return_sequences,) int64, each step's token per row (-1 once it has ended).

        Raises:
            ValueError: num_beams > 1, and as generate.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import Seq2SeqConfig, Seq2SeqLM
            >>> model = Seq2SeqLM.from_config(Seq2SeqConfig("bart", 64, 32, 1, 1, 4, 4, 64, 64, 8), rng=0)
            >>> steps = model.stream(np.array([[5, 6], [7, 8]]), decoder_start_token_id=2, max_new_tokens=3)
            >>> [tokens.shape for tokens in steps]
            [(2,), (2,), (2,)]
        """
        _, ids, attention_mask = self._text_in(input_ids, attention_mask)
        cfg = self.generation_config(**options)
        _, padding = self._inputs(ids, attention_mask)
        yield from self.transformer.stream_tokens(ids, cfg, decoder_start_token_id=self._start_id(
            decoder_start_token_id), src_key_padding_mask=padding, use_cache=use_cache)

    # -- text -------------------------------------------------------------------------------------
    def _text_in(self, input_ids, attention_mask):
        if isinstance(input_ids, str) or (isinstance(input_ids, (list, tuple)) and input_ids
                                          and all(isinstance(t, str) for t in input_ids)):
            if self.tokenizer is None:
                raise TypeError("input_ids: text needs a tokenizer (tokenizer.json with the 'tokenizers' package, "
                                "or Marian's source.spm/target.spm/vocab.json with 'sentencepiece')")
            texts = [input_ids] if isinstance(input_ids, str) else list(input_ids)
            rows = [self.tokenizer.encode(t) for t in texts]
            L = max(len(r) for r in rows)
            pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
            ids = np.full((len(rows), L), pad, dtype=np.int64)
            mask = np.zeros((len(rows), L), dtype=np.int64)
            for i, r in enumerate(rows):
                ids[i, :len(r)], mask[i, :len(r)] = r, 1
            return input_ids, ids, mask
        if input_ids is None:
            raise ValueError("input_ids: required")
        return None, input_ids, attention_mask

    def decode(self, ids) -> str:
        """Token ids to text, special tokens skipped (needs a tokenizer).

        Args:
            ids (Sequence of int): one row, e.g. of generate's output (negative ids are skipped).

        Returns:
            The text.

        Raises:
            TypeError: a model without a tokenizer.
        """
        if self.tokenizer is None:
            raise TypeError("decode: needs a tokenizer")
        return self.tokenizer.decode([int(t) for t in ids if int(t) >= 0])


class MarianMTModel(Seq2SeqLM):
    """Marian / OPUS-MT: post-LN, sinusoidal positions (sin | cos halves), swish, final_logits_bias.

    Examples:
        >>> from attnkit.models import MarianMTModel, Seq2SeqConfig
        >>> cfg = Seq2SeqConfig("marian", 64, 32, 1, 1, 4, 4, 64, 64, 8, positions="sinusoidal_marian")
        >>> MarianMTModel.from_config(cfg).transformer.src_embed.position_weight.shape
        (1024, 32)
    """
    model_types = ("marian",)


class BartForConditionalGeneration(Seq2SeqLM):
    """BART: post-LN with a LayerNorm on the embeddings, learned positions from row 2, GELU.

    Examples:
        >>> from attnkit.models import BartForConditionalGeneration, Seq2SeqConfig
        >>> cfg = Seq2SeqConfig("bart", 64, 32, 1, 1, 4, 4, 64, 64, 8, layernorm_embedding=True, position_offset=2)
        >>> BartForConditionalGeneration.from_config(cfg).transformer.tgt_embed.norm is not None
        True
    """
    model_types = ("bart",)


class MBartForConditionalGeneration(Seq2SeqLM):
    """mBART: BART pre-LN with a final LayerNorm after each stack.

    Examples:
        >>> from attnkit.models import MBartForConditionalGeneration, Seq2SeqConfig
        >>> cfg = Seq2SeqConfig("mbart", 64, 32, 1, 1, 4, 4, 64, 64, 8, norm_first=True, final_norm=True)
        >>> MBartForConditionalGeneration.from_config(cfg).transformer.encoder.norm.weight.shape
        (32,)
    """
    model_types = ("mbart",)


class M2M100ForConditionalGeneration(Seq2SeqLM):
    """M2M100 and NLLB: pre-LN, sinusoidal positions from row 2 that skip padding, ReLU, tied head.

    Examples:
        >>> from attnkit.models import M2M100ForConditionalGeneration, Seq2SeqConfig
        >>> cfg = Seq2SeqConfig("m2m_100", 64, 32, 1, 1, 4, 4, 64, 64, 8, activation="relu", positions="sinusoidal_m2m",
        ...                     position_offset=2, pad_token_id=1)
        >>> M2M100ForConditionalGeneration.from_config(cfg).transformer.src_embed.padding_idx
        1
    """
    model_types = ("m2m_100",)


class T5ForConditionalGeneration(Seq2SeqLM):
    """T5 (v1.0: ReLU, head tied and scaled by d^-0.5) and T5 v1.1 / Flan-T5 (gated GELU, own head): pre-RMSNorm,
    relative position buckets as a bias per head, no score scaling.

    Examples:
        >>> from attnkit.models import Seq2SeqConfig, T5ForConditionalGeneration
        >>> cfg = Seq2SeqConfig("t5", 64, 32, 1, 1, 4, 4, 64, 64, 8, norm="rms", positions="relative", gated=True)
        >>> T5ForConditionalGeneration.from_config(cfg).transformer.encoder.position_bias.num_buckets
        32
    """
    model_types = ("t5",)


def _ids(name, value) -> np.ndarray:
    ids = np.asarray(value)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
        raise ValueError(f"{name}: expected non-empty (B, L) integer token ids, got {ids.dtype} {ids.shape}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name}: token ids must be >= 0")
    return ids.astype(np.int64, copy=False)

