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
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, Iterator, Optional

import numpy as np

from .. import nn
from ..nn.generation import GenerationConfig
from ._checkpoint import field, load_config, load_tensors
from ._seq2seq_stack import build_bart_like, build_t5, random_state_dict
from ._tokenizers import load_tokenizer

__all__ = ["Seq2SeqConfig", "Seq2SeqLM", "MarianMTModel", "BartForConditionalGeneration",
           "MBartForConditionalGeneration", "M2M100ForConditionalGeneration", "T5ForConditionalGeneration"]

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": None, "swish": "silu", "silu": "silu"}

# the options of generate that generation_config.json / config.json may set (Hugging Face's names)
_GENERATION_FIELDS = ("max_length", "max_new_tokens", "min_length", "min_new_tokens", "num_beams", "do_sample",
                      "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size",
                      "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "eos_token_id",
                      "pad_token_id", "decoder_start_token_id", "length_penalty", "early_stopping",
                      "num_return_sequences")
# Hugging Face's defaults for what neither file sets
_GENERATION_DEFAULTS = {"max_length": 20, "min_length": 0, "num_beams": 1, "do_sample": False, "temperature": 1.0,
                        "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                        "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1}
# generation options this loop does not have: refused by name when a call or a file sets them
_UNSUPPORTED_GENERATION = ("num_beam_groups", "diversity_penalty", "penalty_alpha", "typical_p", "min_p",
                           "epsilon_cutoff", "eta_cutoff", "encoder_repetition_penalty",
                           "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "suppress_tokens",
                           "begin_suppress_tokens", "sequence_bias", "constraints", "force_words_ids",
                           "guidance_scale", "renormalize_logits", "remove_invalid_values", "top_h")


@dataclass
class Seq2SeqConfig:
    """The family-neutral hyperparameters of one encoder-decoder (read from config.json by :meth:`from_dict`)."""

    model_type: str
    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    head_dim: int
    activation: str = "gelu"             # attnkit.nn activation name
    gated: bool = False                  # T5 v1.1: act(x W_0) * (x W_1)
    norm: str = "layer"                  # "layer" | "rms"
    norm_first: bool = False             # pre-LN (mbart, m2m_100, t5)
    final_norm: bool = False             # a norm after each stack
    layernorm_embedding: bool = False    # bart, mbart
    eps: float = 1e-5
    positions: str = "learned"           # "learned" | "sinusoidal_marian" | "sinusoidal_m2m" | "relative"
    position_offset: int = 0
    max_position_embeddings: int = 1024
    scale_embedding: bool = False
    tie_word_embeddings: bool = True
    share_embeddings: bool = True        # one embedding table for encoder and decoder
    decoder_vocab_size: Optional[int] = None
    final_logits_bias: bool = False
    output_scale: Optional[float] = None  # T5 with a tied head: d_model ** -0.5
    attention_bias: bool = True
    attention_scale: Optional[float] = None   # None: 1/sqrt(head_dim); T5: 1.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    pad_token_id: Optional[int] = None
    generation: Dict[str, Any] = dc_field(default_factory=dict)

    @classmethod
    def from_dict(cls, config: dict, *, where: str = "config.json") -> "Seq2SeqConfig":
        """Parse a Hugging Face config.json dict; what attnkit cannot compute raises, naming the field."""
        def f(name, kind, *default, **kw):
            return field(config, name, kind, *default, where=where, **kw)

        mt = f("model_type", str, choices=("marian", "bart", "mbart", "m2m_100", "t5"))
        if mt == "t5":
            return cls._t5(config, f, where)
        # fields of older (fairseq-era) configs that transformers' classes ignore: a value that asks for another
        # computation than the family's own is refused rather than silently dropped
        own = {"normalize_before": mt in ("mbart", "m2m_100"), "add_final_layer_norm": mt in ("mbart", "m2m_100"),
               "static_position_embeddings": mt in ("marian", "m2m_100"),
               "normalize_embedding": mt in ("bart", "mbart"), "add_bias_logits": False}
        for name, value in own.items():
            if config.get(name) is not None and bool(config[name]) != value:
                raise ValueError(f"{where}: field '{name}' = {config[name]!r} is not supported ({mt} computes "
                                 f"with {name} = {value}, as transformers does)")
        act_name = f("activation_function", str, "gelu")
        act = _ACTIVATIONS.get(act_name)
        if act is None:
            raise ValueError(f"{where}: field 'activation_function' = {act_name!r} is not supported "
                             f"(supported: {sorted(k for k, v in _ACTIVATIONS.items() if v)})")
        E = f("d_model", int, low=1)
        He, Hd = f("encoder_attention_heads", int, low=1), f("decoder_attention_heads", int, low=1)
        if E % He or E % Hd:
            raise ValueError(f"{where}: fields 'encoder_attention_heads' / 'decoder_attention_heads' must divide "
                             f"d_model = {E}")
        if He != Hd:
            raise ValueError(f"{where}: fields 'encoder_attention_heads' = {He} and 'decoder_attention_heads' = "
                             f"{Hd} differ (cross attention would have no single head count)")
        V = f("vocab_size", int, low=1)
        share = True
        dec_vocab = None
        if mt == "marian":
            share = f("share_encoder_decoder_embeddings", bool, True)
            dec_vocab = f("decoder_vocab_size", int, V, low=1)
            if share and dec_vocab != V:
                raise ValueError(f"{where}: field 'decoder_vocab_size' = {dec_vocab} differs from vocab_size = {V} "
                                 f"with shared embeddings")
        pre = mt in ("mbart", "m2m_100")
        positions = {"marian": "sinusoidal_marian", "bart": "learned", "mbart": "learned",
                     "m2m_100": "sinusoidal_m2m"}[mt]
        return cls(model_type=mt, vocab_size=V, d_model=E, encoder_layers=f("encoder_layers", int, low=0),
                   decoder_layers=f("decoder_layers", int, low=1), encoder_heads=He, decoder_heads=Hd,
                   encoder_ffn=f("encoder_ffn_dim", int, low=1), decoder_ffn=f("decoder_ffn_dim", int, low=1),
                   head_dim=E // He, activation=act, norm_first=pre, final_norm=pre,
                   layernorm_embedding=mt in ("bart", "mbart"), eps=1e-5, positions=positions,
                   position_offset=0 if mt == "marian" else 2,
                   max_position_embeddings=f("max_position_embeddings", int, 1024, low=1),
                   scale_embedding=f("scale_embedding", bool, False),
                   tie_word_embeddings=f("tie_word_embeddings", bool, True), share_embeddings=share,
                   decoder_vocab_size=dec_vocab, final_logits_bias=mt in ("marian", "bart", "mbart"),
                   pad_token_id=f("pad_token_id", int, None), generation=_generation_from_config(config))

    @classmethod
    def _t5(cls, config, f, where) -> "Seq2SeqConfig":
        proj = f("feed_forward_proj", str, "relu")
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"{where}: field 'feed_forward_proj' = {proj!r} is not supported (expected "
                             f"'ACT' or 'gated-ACT')")
        act_name = "gelu_new" if proj == "gated-gelu" else parts[-1]
        act = _ACTIVATIONS.get(act_name)
        if act is None:
            raise ValueError(f"{where}: field 'feed_forward_proj' = {proj!r}: activation {act_name!r} is not "
                             f"supported (supported: {sorted(k for k, v in _ACTIVATIONS.items() if v)})")
        E, H, Dk = f("d_model", int, low=1), f("num_heads", int, low=1), f("d_kv", int, low=1)
        n_enc = f("num_layers", int, low=0)
        buckets = f("relative_attention_num_buckets", int, 32, low=4)
        # transformers 5 writes scale_decoder_outputs (and ties the head always); older files say
        # tie_word_embeddings: false for v1.1 / Flan-T5, which then have an lm_head.weight of their own
        tied = config.get("tie_word_embeddings", None) is not False
        scaled = f("scale_decoder_outputs", bool, tied)
        return cls(model_type="t5", vocab_size=f("vocab_size", int, low=1), d_model=E, encoder_layers=n_enc,
                   decoder_layers=f("num_decoder_layers", int, n_enc, low=1), encoder_heads=H, decoder_heads=H,
                   encoder_ffn=f("d_ff", int, low=1), decoder_ffn=f("d_ff", int, low=1), head_dim=Dk,
                   activation=act, gated=len(parts) == 2, norm="rms", norm_first=True, final_norm=True,
                   eps=f("layer_norm_epsilon", float, 1e-6, low=0.0), positions="relative", scale_embedding=False,
                   tie_word_embeddings=tied, output_scale=E ** -0.5 if scaled else None, attention_bias=False,
                   attention_scale=1.0, relative_buckets=buckets,
                   relative_max_distance=f("relative_attention_max_distance", int, 128, low=buckets // 2 + 1),
                   pad_token_id=f("pad_token_id", int, 0), generation=_generation_from_config(config))


def _generation_from_config(config: dict) -> Dict[str, Any]:
    """The generation options a config.json carries (transformers reads them when there is no
    generation_config.json)."""
    return {k: config[k] for k in _GENERATION_FIELDS if config.get(k) is not None}


class Seq2SeqLM(nn.Module):
    """An encoder-decoder language model: ``transformer`` (an attnkit.nn.Transformer) and its configuration.

    ``model(input_ids, attention_mask=None, decoder_input_ids=...)`` -> logits (B, T, V) float32;
    ``generate(...)`` as transformers' (token ids, or text with a tokenizer); ``stream(...)``."""

    model_types: tuple = ()

    def __init__(self, config: Seq2SeqConfig, transformer: nn.Transformer, tokenizer=None):
        self.config, self.transformer, self.tokenizer = config, transformer, tokenizer

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory, *, dtype=np.float32) -> "Seq2SeqLM":
        """Load ``directory``/config.json (+ generation_config.json) + model.safetensors (or shards)."""
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
            config.generation = {k: gen[k] for k in _GENERATION_FIELDS if gen.get(k) is not None}
            bad = [k for k in _UNSUPPORTED_GENERATION if gen.get(k) not in (None, False, 1.0, 0, 0.0)]
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
    def from_state_dict(cls, tensors: dict, config: Seq2SeqConfig, *, dtype=np.float32, origin="state dict"):
        """Build the stack from a Hugging Face state dict (names as ``save_pretrained`` writes them)."""
        if config.model_type == "t5":
            model = build_t5(tensors, config, dtype, origin)
        else:
            model = build_bart_like(tensors, config, dtype, origin)
        return cls._for(config.model_type)(config, model)

    @classmethod
    def from_config(cls, config: Seq2SeqConfig, *, rng=None, std: float = 0.02, dtype=np.float32) -> "Seq2SeqLM":
        """A model with random weights N(0, std) (norms at 1, 0), built through the checkpoint layout."""
        return cls.from_state_dict(random_state_dict(config, rng=rng, std=std), config, dtype=dtype,
                                   origin="random weights")

    @property
    def dtype(self):
        return self.transformer.dtype

    # -- forward ----------------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask=None) -> np.ndarray:
        """input_ids (B, S) -> encoder output (B, S, E)."""
        ids, padding = self._inputs(input_ids, attention_mask)
        return self.transformer.encode(ids, src_key_padding_mask=padding)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, *, encoder_outputs=None) -> np.ndarray:
        """input_ids (B, S), attention_mask (B, S) 1 = token / 0 = padding, decoder_input_ids (B, T)
        -> logits (B, T, V) float32."""
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
        return self.config.generation.get(name, _GENERATION_DEFAULTS.get(name))

    def generation_config(self, **options) -> GenerationConfig:
        """The options of a generate call: the call's, else generation_config.json's (or config.json's),
        else transformers' defaults. max_new_tokens wins over max_length."""
        for name in options:
            if name in _UNSUPPORTED_GENERATION:
                raise ValueError(f"{name}: not supported by attnkit's generate")
            if name not in _GENERATION_FIELDS and name != "seed":
                raise TypeError(f"generate: unexpected option {name!r}")
        given = {k: v for k, v in options.items() if v is not None}
        merged = {**{k: v for k, v in _GENERATION_DEFAULTS.items()}, **self.config.generation, **given}
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
        """Hugging Face's ``generate`` for input_ids (B, S): returns (B * num_return_sequences, L) token ids,
        each starting with the decoder start token -- or, given a str (or a list of str) and a tokenizer,
        the translated text.

        options: max_new_tokens, max_length, min_length, min_new_tokens, num_beams, length_penalty,
        early_stopping (True / False / "never"), num_return_sequences, no_repeat_ngram_size,
        repetition_penalty, bad_words_ids, forced_bos_token_id, forced_eos_token_id, eos_token_id,
        pad_token_id, do_sample, temperature, top_k, top_p, seed (an int or numpy Generator: sampling is
        reproducible with it, not equal to torch's draws). Unset options come from generation_config.json
        (or config.json), else transformers' defaults.
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
        """Yield each step's new tokens (B,) of greedy search or sampling (as generate would pick them); a row
        that has finished yields -1."""
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
        """Token ids -> text, special tokens skipped (needs a tokenizer)."""
        if self.tokenizer is None:
            raise TypeError("decode: needs a tokenizer")
        return self.tokenizer.decode([int(t) for t in ids if int(t) >= 0])


class MarianMTModel(Seq2SeqLM):
    """Marian / OPUS-MT: post-LN, sinusoidal positions (sin | cos halves), swish, final_logits_bias."""
    model_types = ("marian",)


class BartForConditionalGeneration(Seq2SeqLM):
    """BART: post-LN with a LayerNorm on the embeddings, learned positions from row 2, GELU."""
    model_types = ("bart",)


class MBartForConditionalGeneration(Seq2SeqLM):
    """mBART: BART pre-LN with a final LayerNorm after each stack."""
    model_types = ("mbart",)


class M2M100ForConditionalGeneration(Seq2SeqLM):
    """M2M100 and NLLB: pre-LN, sinusoidal positions from row 2 that skip padding, ReLU, tied head."""
    model_types = ("m2m_100",)


class T5ForConditionalGeneration(Seq2SeqLM):
    """T5 (v1.0: ReLU, head tied and scaled by d^-0.5) and T5 v1.1 / Flan-T5 (gated GELU, own head): pre-RMSNorm,
    relative position buckets as a bias per head, no score scaling."""
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

