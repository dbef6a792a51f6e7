"""The configuration of the encoder-decoders (attnkit.models.seq2seq): :class:`Seq2SeqConfig`, family-neutral, read
from a config.json with each family's settings filled in, and the generation options a checkpoint may set."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, Optional

from ._checkpoint import CheckpointConfig, field

__all__ = ["Seq2SeqConfig", "GENERATION_FIELDS", "GENERATION_DEFAULTS", "UNSUPPORTED_GENERATION"]

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_fast": None, "swish": "silu", "silu": "silu"}

# the options of generate that generation_config.json / config.json may set (Hugging Face's names)
GENERATION_FIELDS = ("max_length", "max_new_tokens", "min_length", "min_new_tokens", "num_beams", "do_sample",
                      "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size",
                      "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "eos_token_id",
                      "pad_token_id", "decoder_start_token_id", "length_penalty", "early_stopping",
                      "num_return_sequences")
# Hugging Face's defaults for what neither file sets
GENERATION_DEFAULTS = {"max_length": 20, "min_length": 0, "num_beams": 1, "do_sample": False, "temperature": 1.0,
                        "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                        "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1}
# generation options this loop does not have: refused by name when a call or a file sets them
UNSUPPORTED_GENERATION = ("num_beam_groups", "diversity_penalty", "penalty_alpha", "typical_p", "min_p",
                           "epsilon_cutoff", "eta_cutoff", "encoder_repetition_penalty",
                           "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "suppress_tokens",
                           "begin_suppress_tokens", "sequence_bias", "constraints", "force_words_ids",
                           "guidance_scale", "renormalize_logits", "remove_invalid_values", "top_h")


@dataclass
class Seq2SeqConfig(CheckpointConfig):
    """The family-neutral hyperparameters of one encoder-decoder; [from_dict][attnkit.models.Seq2SeqConfig.from_dict]
    reads them from a config.json, each family's settings filled in.

    Args:
        model_type: "marian", "bart", "mbart", "m2m_100" or "t5" (picks the model class).
        vocab_size: V.
        d_model: E.
        encoder_layers: encoder layers (>= 0).
        decoder_layers: decoder layers.
        encoder_heads: the encoder's heads.
        decoder_heads: the decoder's heads (the same count).
        encoder_ffn: the encoder's feed-forward width.
        decoder_ffn: the decoder's feed-forward width.
        head_dim: Dh (T5's d_kv; else E / heads).
        activation: the feed-forward activation ("relu", "gelu", "gelu_tanh" or "silu").
        gated: T5 v1.1's gated unit, act(x W_0) * (x W_1).
        norm: "layer" (LayerNorm) or "rms" (T5's RMSNorm).
        norm_first: pre-LN (mbart, m2m_100, t5).
        final_norm: a norm after each stack.
        layernorm_embedding: a LayerNorm on the embeddings (bart, mbart).
        eps: the norms' eps.
        positions: "learned", "sinusoidal_marian", "sinusoidal_m2m" or "relative" (T5's bias).
        position_offset: the table row of position 0 (2 for BART's and M2M100's).
        max_position_embeddings: positions.
        scale_embedding: token embeddings scaled by sqrt(E).
        tie_word_embeddings: the LM head is the (decoder's) token embedding.
        share_embeddings: one embedding table for encoder and decoder.
        decoder_vocab_size: Marian's separate target vocabulary (None: V).
        final_logits_bias: a bias on the logits (marian, bart, mbart).
        output_scale: multiplies the decoder output before a tied head (T5: d_model ** -0.5).
        attention_bias: biases on the attention projections (not in T5).
        attention_scale: the score scale (None: 1 / sqrt(head_dim); T5: 1.0).
        relative_buckets: T5's relative position buckets.
        relative_max_distance: T5's longest bucketed distance.
        pad_token_id: the padding id (M2M100's positions skip it).
        generation (dict): defaults of ``generate`` (generation_config.json's, else config.json's).

    Examples:
        >>> from attnkit.models import Seq2SeqConfig
        >>> cfg = Seq2SeqConfig("bart", vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_heads=4,
        ...                     decoder_heads=4, encoder_ffn=64, decoder_ffn=64, head_dim=8)
        >>> cfg.norm, cfg.positions
        ('layer', 'learned')
    """

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
    activation: str = "gelu"
    gated: bool = False
    norm: str = "layer"
    norm_first: bool = False
    final_norm: bool = False
    layernorm_embedding: bool = False
    eps: float = 1e-5
    positions: str = "learned"
    position_offset: int = 0
    max_position_embeddings: int = 1024
    scale_embedding: bool = False
    tie_word_embeddings: bool = True
    share_embeddings: bool = True
    decoder_vocab_size: Optional[int] = None
    final_logits_bias: bool = False
    output_scale: Optional[float] = None
    attention_bias: bool = True
    attention_scale: Optional[float] = None
    relative_buckets: int = 32
    relative_max_distance: int = 128
    pad_token_id: Optional[int] = None
    generation: Dict[str, Any] = dc_field(default_factory=dict)

    @classmethod
    def _read(cls, config: dict, where: str) -> "Seq2SeqConfig":
        """from_dict's reading of a config.json dict."""
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
    return {k: config[k] for k in GENERATION_FIELDS if config.get(k) is not None}
