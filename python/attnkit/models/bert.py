"""BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa) from Hugging Face checkpoints, on attnkit.nn.

BERT (Devlin et al., 2018) is the paper's encoder stack with learned positions, segment (token type)
embeddings, GELU and post-LN -- so each BERT layer *is* an ``attnkit.nn.EncoderLayer``:

    embeddings   LN(word[ids] + position[pos] + token_type[tt])
    N x layer    x = LN(x + SelfAttention(x));  x = LN(x + FFN(x))      (FFN with GELU)

The checkpoint's separate query/key/value projections are packed into one (3E, E) matrix at load time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import nn
from .. import quant as Q
from ..nn.masks import AttentionMask
from ._checkpoint import (SIZE_MAX, SPECIAL_TOKEN_IDS, CheckpointConfig, Pretrained, check_fields, field, read_fields,
                          special_token_ids)

__all__ = ["BertConfig", "BertEmbeddings", "BertModel"]

# Hugging Face activation names -> attnkit.nn.FeedForward activations
_HIDDEN_ACT = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")


@dataclass
class BertConfig(CheckpointConfig):
    """A BERT-family encoder's hyperparameters (Hugging Face's config.json names; defaults: bert-base).

    Args:
        vocab_size: V.
        hidden_size: E.
        num_hidden_layers: encoder layers.
        num_attention_heads: H, a divisor of E.
        intermediate_size: the feed-forward width.
        hidden_act: "gelu", "relu", "gelu_new" or "gelu_pytorch_tanh".
        max_position_embeddings: learned positions.
        type_vocab_size: segment (token type) ids.
        layer_norm_eps: the LayerNorms' eps.
        pad_token_id: BERT: metadata; RoBERTa: its positions are numbered after it.
        model_type: "bert", "roberta" or "xlm-roberta".

    Raises:
        ValueError: a field out of range or inconsistent (heads that do not divide E), naming it.

    Examples:
        >>> from attnkit.models import BertConfig
        >>> BertConfig(vocab_size=1000, hidden_size=64, num_attention_heads=4).intermediate_size
        3072
    """

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: Optional[int] = 0
    model_type: str = "bert"

    def __post_init__(self):
        check_fields(self, _FIELDS, "BertConfig")
        _check_consistency(self, "BertConfig")

    @classmethod
    def _read(cls, config: dict, where: str) -> "BertConfig":
        """from_dict's reading of a config.json dict."""
        model_type = field(config, "model_type", str, "bert", choices=_MODEL_TYPES, where=where)
        field(config, "position_embedding_type", str, "absolute", choices=("absolute",), where=where)
        if field(config, "is_decoder", bool, False, where=where) or field(config, "add_cross_attention", bool, False,
                                                                           where=where):
            raise ValueError(f"{where}: field 'is_decoder'/'add_cross_attention' -- decoder BERTs "
                             "are not supported")
        defaults = {"hidden_act": "gelu", "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                    "pad_token_id": 1 if model_type != "bert" else 0}
        spec = {k: v for k, v in _FIELDS.items() if k != "model_type"}
        vocab = field(config, "vocab_size", int, low=1, high=SIZE_MAX, where=where)
        # ids outside the vocabulary: one warning, None (RoBERTa's pad id: _check_consistency)
        ids = special_token_ids(config, vocab, where, [n for n in SPECIAL_TOKEN_IDS
                                                       if n != "pad_token_id" or model_type == "bert"])
        values = read_fields(dict(config, **ids), spec, defaults, where)
        if model_type == "bert" and "pad_token_id" in ids:
            values["pad_token_id"] = ids["pad_token_id"]                      # None stays None (not the default)
        c = cls.__new__(cls)
        c.__dict__.update(values, model_type=model_type)
        _check_consistency(c, where)
        return c


# field -> (type, lowest, highest[, choices]) of a config.json that can load
_FIELDS = {
    "vocab_size": (int, 1, SIZE_MAX),
    "hidden_size": (int, 1, SIZE_MAX),
    "num_hidden_layers": (int, 1, 100_000),
    "num_attention_heads": (int, 1, SIZE_MAX),
    "intermediate_size": (int, 1, SIZE_MAX),
    "hidden_act": (str, None, None, _HIDDEN_ACT),
    "max_position_embeddings": (int, 1, SIZE_MAX),
    "type_vocab_size": (int, 1, SIZE_MAX),
    "layer_norm_eps": (float, 0.0, 1.0),
    "pad_token_id": (int, None, None),       # BERT: outside [0, vocab_size) a warning; RoBERTa: see below
    "model_type": (str, None, None, _MODEL_TYPES),
}


def _check_consistency(c: BertConfig, where: str) -> None:
    if c.hidden_size % c.num_attention_heads:
        raise ValueError(f"{where}: field 'num_attention_heads' = {c.num_attention_heads} does not "
                         f"divide hidden_size = {c.hidden_size}")
    if c.model_type == "bert":                  # pad_token_id is metadata there: outside the vocabulary, ignored
        c.__dict__.update(special_token_ids(vars(c), c.vocab_size, where, ("pad_token_id",)))
        return
    # RoBERTa numbers positions pad+1, pad+2, ... (and pad for padding): the id is part of the network there.
    # One outside the vocabulary never occurs in input_ids (every token counts as real), as the formula says;
    # a negative one would give negative positions.
    if c.pad_token_id is None or c.pad_token_id < 0:
        raise ValueError(f"{where}: field 'pad_token_id' = {c.pad_token_id} must be >= 0 for {c.model_type} "
                         f"(its positions are numbered after it)")
    if c.pad_token_id >= c.vocab_size:
        warnings.warn(f"{where}: field 'pad_token_id' = {c.pad_token_id} is outside the vocabulary [0, "
                      f"{c.vocab_size}): no input id is padding; positions start at {c.pad_token_id + 1}",
                      UserWarning, stacklevel=3)
    if c.max_position_embeddings <= c.pad_token_id + 1:
        raise ValueError(f"{where}: field 'max_position_embeddings' = {c.max_position_embeddings} leaves no "
                         f"position after pad_token_id = {c.pad_token_id} ({c.model_type} numbers positions from it)")


class BertEmbeddings(nn.Module):
    """LN(word[ids] + position[pos] + token_type[tt]); RoBERTa numbers positions after its padding index."""

    def __init__(self, word, position, token_type, norm: nn.LayerNorm, *, roberta_pad: Optional[int] = None):
        self.word, self.position, self.token_type, self.norm = word, position, token_type, norm
        self.roberta_pad = roberta_pad

    def positions(self, input_ids) -> np.ndarray:
        B, L = input_ids.shape
        if self.roberta_pad is None:
            return np.broadcast_to(np.arange(L), (B, L))                       # 0, 1, ..., L-1
        real = input_ids != self.roberta_pad                                   # RoBERTa: pad+1, pad+2, ...
        return np.cumsum(real, axis=1) * real + self.roberta_pad

    def __call__(self, input_ids, token_type_ids) -> np.ndarray:
        if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= len(self.word)):
            raise ValueError(f"input_ids: token ids must lie in [0, {len(self.word)})")
        positions = self.positions(input_ids)
        if positions.size and positions.max() >= len(self.position):
            raise ValueError(f"input_ids: sequence needs position {int(positions.max())}, the model has "
                             f"{len(self.position)} positions")
        extra = self.position[positions]                                       # (B, L, E)
        extra += self.token_type[token_type_ids]
        return self.norm(self.word[input_ids], residual=extra)                 # LN(word + position + type)


class BertModel(Pretrained, nn.Module):
    """A BERT-family encoder (BERT, RoBERTa, XLM-RoBERTa): ``model(input_ids, attention_mask)`` -> (B, L, hidden).

    Load one with [from_pretrained][attnkit.models.BertModel.from_pretrained], or build one with random
    weights with [from_config][attnkit.models.BertModel.from_config].

    Args:
        config: the hyperparameters.
        embeddings: word + position + token type embeddings and their LayerNorm.
        encoder: the layers (an [attnkit.nn.Encoder][attnkit.nn.Encoder], post-LN, GELU).

    Examples:
        >>> from attnkit.models import BertConfig, BertModel
        >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                  intermediate_size=64)
        >>> len(BertModel.from_config(cfg, rng=0).encoder.layers)
        2
    """

    config_class = BertConfig

    def __init__(self, config: BertConfig, embeddings: BertEmbeddings, encoder: nn.Encoder):
        self.config, self.embeddings, self.encoder = config, embeddings, encoder

    @staticmethod
    def _random_tensors(config: BertConfig, rng: np.random.Generator, std: float) -> dict:
        """BERT's checkpoint names and shapes (random_state_dict)."""
        c = config
        E, F = c.hidden_size, c.intermediate_size
        shapes = {"embeddings.word_embeddings.weight": (c.vocab_size, E),
                  "embeddings.position_embeddings.weight": (c.max_position_embeddings, E),
                  "embeddings.token_type_embeddings.weight": (c.type_vocab_size, E)}
        norms = ["embeddings.LayerNorm"]
        for i in range(c.num_hidden_layers):
            p = f"encoder.layer.{i}."
            for n in ("query", "key", "value"):
                shapes.update({f"{p}attention.self.{n}.weight": (E, E), f"{p}attention.self.{n}.bias": (E,)})
            shapes.update({f"{p}attention.output.dense.weight": (E, E), f"{p}attention.output.dense.bias": (E,),
                           f"{p}intermediate.dense.weight": (F, E), f"{p}intermediate.dense.bias": (F,),
                           f"{p}output.dense.weight": (E, F), f"{p}output.dense.bias": (E,)})
            norms += [f"{p}attention.output.LayerNorm", f"{p}output.LayerNorm"]
        tensors = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(std) for k, s in shapes.items()}
        for name in norms:
            tensors[f"{name}.weight"], tensors[f"{name}.bias"] = np.ones(E, np.float32), np.zeros(E, np.float32)
        return tensors

    @classmethod
    def _from_tensors(cls, tensors: dict, config: BertConfig, dtype, origin: str) -> "BertModel":
        """from_state_dict: names with or without 'bert.' / 'roberta.'; old 'gamma' / 'beta' LayerNorm names."""
        c = config
        prefix = next((p for p in ("", "bert.", "roberta.", f"{c.model_type}.")
                       if f"{p}embeddings.word_embeddings.weight" in tensors), None)
        if prefix is None:
            raise KeyError(f"{origin}: missing tensor 'embeddings.word_embeddings.weight' (also looked under "
                           f"'bert.' and 'roberta.')")
        t = nn.StateDict(_rename_gamma_beta(tensors), prefix, dtype=dtype, origin=origin)
        E, F = c.hidden_size, c.intermediate_size

        def norm(name):
            return nn.LayerNorm(t(f"{name}.weight", (E,)), t(f"{name}.bias", (E,)), c.layer_norm_eps)

        embeddings = BertEmbeddings(
            t("embeddings.word_embeddings.weight", (c.vocab_size, E)),
            t("embeddings.position_embeddings.weight", (c.max_position_embeddings, E)),
            t("embeddings.token_type_embeddings.weight", (c.type_vocab_size, E)),
            norm("embeddings.LayerNorm"), roberta_pad=c.pad_token_id if c.model_type != "bert" else None)
        layers = []
        for i in range(c.num_hidden_layers):
            p = f"encoder.layer.{i}."
            # query, key, value (E, E) each -> one packed [W_q; W_k; W_v] (3E, E)
            qkv_w = Q.concat_rows([t(f"{p}attention.self.{n}.weight", (E, E)) for n in ("query", "key", "value")])
            qkv_b = np.concatenate([t(f"{p}attention.self.{n}.bias", (E,)) for n in ("query", "key", "value")])
            attention = nn.MultiHeadAttention(qkv_w, qkv_b, t(f"{p}attention.output.dense.weight", (E, E)),
                                              t(f"{p}attention.output.dense.bias", (E,)), c.num_attention_heads)
            feed_forward = nn.FeedForward(t(f"{p}intermediate.dense.weight", (F, E)),
                                          t(f"{p}intermediate.dense.bias", (F,)),
                                          t(f"{p}output.dense.weight", (E, F)), t(f"{p}output.dense.bias", (E,)),
                                          _HIDDEN_ACT[c.hidden_act])
            layers.append(nn.EncoderLayer(attention, feed_forward, norm(f"{p}attention.output.LayerNorm"),
                                          norm(f"{p}output.LayerNorm"), norm_first=False))
        if t.has(f"encoder.layer.{c.num_hidden_layers}.attention.self.query.weight"):
            raise ValueError(f"{origin}: more encoder layers than num_hidden_layers = {c.num_hidden_layers}")
        return cls(c, embeddings, nn.Encoder(layers))

    def _checkpoint_tensors(self):
        """(name, array) in the Hugging Face layout (save_pretrained)."""
        e = self.embeddings
        yield "embeddings.word_embeddings.weight", e.word
        yield "embeddings.position_embeddings.weight", e.position
        yield "embeddings.token_type_embeddings.weight", e.token_type
        yield "embeddings.LayerNorm.weight", e.norm.weight
        yield "embeddings.LayerNorm.bias", e.norm.bias
        for i, layer in enumerate(self.encoder.layers):
            p = f"encoder.layer.{i}."
            a, ff = layer.self_attn, layer.feed_forward
            E = a.out_proj_weight.shape[0]
            for suffix, arr in Q.to_checkpoint(a.q_proj_weight).items():
                yield f"{p}attention.self.query.{suffix}", arr
            for j, n in enumerate(("key", "value")):
                for suffix, arr in Q.to_checkpoint(a.kv_proj_weight, slice(j * E, (j + 1) * E)).items():
                    yield f"{p}attention.self.{n}.{suffix}", arr
            for j, n in enumerate(("query", "key", "value")):
                yield f"{p}attention.self.{n}.bias", a.in_proj_bias[j * E:(j + 1) * E]
            for suffix, arr in Q.to_checkpoint(a.out_proj_weight).items():
                yield f"{p}attention.output.dense.{suffix}", arr
            yield f"{p}attention.output.dense.bias", a.out_proj_bias
            for n, w, bias in (("intermediate.dense", ff.w1, ff.b1), ("output.dense", ff.w2, ff.b2)):
                for suffix, arr in Q.to_checkpoint(w).items():
                    yield f"{p}{n}.{suffix}", arr
                yield f"{p}{n}.bias", bias
            for n, norm in (("attention.output.LayerNorm", layer.norm1), ("output.LayerNorm", layer.norm2)):
                yield f"{p}{n}.weight", norm.weight
                yield f"{p}{n}.bias", norm.bias

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """The encoder's last hidden state.

        Args:
            input_ids (numpy.ndarray): (B, L) integer token ids.
            attention_mask (numpy.ndarray or None): (B, L), 1 = token, 0 = padding.
            token_type_ids (numpy.ndarray or None): (B, L) segment ids (default zeros).

        Returns:
            (B, L, hidden) in the model's dtype (float32 by default).

        Raises:
            ValueError: ids outside the vocabulary, shapes that do not match, each naming the argument.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import BertConfig, BertModel
            >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            ...                  intermediate_size=64)
            >>> BertModel.from_config(cfg)(np.array([[1, 2, 3]])).shape
            (1, 3, 32)
        """
        input_ids = np.asarray(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2 or input_ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids: expected (B, L) integer token ids, got {input_ids.dtype} "
                             f"{input_ids.shape}")
        B, L = input_ids.shape
        if token_type_ids is None:
            token_type_ids = np.zeros((B, L), dtype=np.int64)
        token_type_ids = np.asarray(token_type_ids).reshape(B, L)
        if token_type_ids.size and (token_type_ids.min() < 0 or token_type_ids.max() >= self.config.type_vocab_size):
            raise ValueError(f"token_type_ids: must lie in [0, {self.config.type_vocab_size})")
        mask = nn.AttentionMask()
        if attention_mask is not None:
            attention_mask = np.asarray(attention_mask)
            if attention_mask.shape != (B, L):
                raise ValueError(f"attention_mask: has shape {attention_mask.shape}, expected {(B, L)}")
            mask = AttentionMask.from_torch(key_padding_mask=attention_mask == 0, batch_size=B,
                                            num_heads=self.config.num_attention_heads, q_len=L, k_len=L,
                                            dtype=self.dtype)
        x = self.embeddings(input_ids, token_type_ids)                      # (B, L, E)
        return self.encoder(x, mask)                                        # (B, L, E)


def _rename_gamma_beta(tensors: dict) -> dict:
    """Old BERT checkpoints call LayerNorm weights gamma/beta."""
    if not any(k.endswith((".gamma", ".beta")) for k in tensors):
        return tensors
    return {k[:-6] + ".weight" if k.endswith(".gamma") else k[:-5] + ".bias" if k.endswith(".beta") else k: v
            for k, v in tensors.items()}
