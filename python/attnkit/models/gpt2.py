"""GPT-2-family decoders from Hugging Face checkpoints, on attnkit.nn, with KV-cache generation.

GPT-2 (Radford et al., 2019) is a decoder-only, pre-LN Transformer with learned positions:

    x = wte[ids] + wpe[pos]
    N x block    x = x + CausalSelfAttention(LN1(x));  x = x + MLP(LN2(x))       (MLP with tanh-GELU)
    logits = LN_f(x) wte^T                                                          (tied output embedding)

Hugging Face stores GPT-2's projections as Conv1D weights (in, out); they are transposed once at load time to
the (out, in) layout of ``attnkit.linear``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .. import functional as F
from .. import nn
from .. import quant as Q
from ..nn.masks import AttentionMask
from ..nn.stacks import sublayer_connections
from ._checkpoint import SIZE_MAX, CheckpointConfig, Pretrained, check_fields, field, read_fields, special_token_ids

__all__ = ["GPT2Config", "GPT2Block", "GPT2LMHeadModel"]

_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


@dataclass
class GPT2Config(CheckpointConfig):
    """A GPT-2 decoder's hyperparameters (Hugging Face's config.json names; defaults: gpt2 small).

    Args:
        vocab_size: V.
        n_positions: learned positions (the longest sequence).
        n_embd: E.
        n_layer: blocks.
        n_head: H, a divisor of E.
        n_inner: the MLP width (None: 4 E).
        activation_function: "gelu_new", "gelu_pytorch_tanh", "gelu" or "relu".
        layer_norm_epsilon: the LayerNorms' eps.
        scale_attn_weights: scores scaled by 1 / sqrt(Dh).
        scale_attn_by_inverse_layer_idx: block i's scores further divided by i + 1.
        tie_word_embeddings: the LM head is the token embedding.
        eos_token_id: metadata (``generate`` stops only at an eos it is given).
        pad_token_id: metadata.

    Raises:
        ValueError: a field out of range or inconsistent, naming it.

    Examples:
        >>> from attnkit.models import GPT2Config
        >>> GPT2Config(n_embd=64, n_head=4).n_layer
        12
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: Optional[int] = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        check_fields(self, _FIELDS, "GPT2Config")
        _check_consistency(self, "GPT2Config")

    @classmethod
    def _read(cls, config: dict, where: str) -> "GPT2Config":
        """from_dict's reading of a config.json dict."""
        field(config, "model_type", str, "gpt2", choices=("gpt2",), where=where)
        if field(config, "add_cross_attention", bool, False, where=where):
            raise ValueError(f"{where}: field 'add_cross_attention' = True is not supported")
        defaults = {"n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                    "tie_word_embeddings": True, "eos_token_id": None, "pad_token_id": None}
        vocab = field(config, "vocab_size", int, low=1, high=SIZE_MAX, where=where)
        config = dict(config, **special_token_ids(config, vocab, where))     # ids outside the vocabulary: warned, None
        values = read_fields(config, _FIELDS, defaults, where)
        c = cls.__new__(cls)
        c.__dict__.update(values)
        _check_consistency(c, where)
        return c


# field -> (type, lowest, highest[, choices]) of a config.json that can load
_FIELDS = {
    "vocab_size": (int, 1, SIZE_MAX),
    "n_positions": (int, 1, SIZE_MAX),
    "n_embd": (int, 1, SIZE_MAX),
    "n_layer": (int, 1, 100_000),
    "n_head": (int, 1, SIZE_MAX),
    "n_inner": (int, 1, SIZE_MAX),
    "activation_function": (str, None, None, _ACTIVATIONS),
    "layer_norm_epsilon": (float, 0.0, 1.0),
    "scale_attn_weights": (bool, None, None),
    "scale_attn_by_inverse_layer_idx": (bool, None, None),
    "tie_word_embeddings": (bool, None, None),
    "eos_token_id": (int, None, None),        # outside [0, vocab_size): a warning, and ignored
    "pad_token_id": (int, None, None),
}


def _check_consistency(c: GPT2Config, where: str) -> None:
    if c.n_embd % c.n_head:
        raise ValueError(f"{where}: field 'n_head' = {c.n_head} does not divide n_embd = {c.n_embd}")
    c.__dict__.update(special_token_ids(vars(c), c.vocab_size, where, ("eos_token_id", "pad_token_id")))


class GPT2Block(nn.Module):
    """x + CausalSelfAttention(LN1(x)), then x + MLP(LN2(x)) -- a pre-LN layer with causal self attention."""

    def __init__(self, ln_1: nn.LayerNorm, attn: nn.MultiHeadAttention, ln_2: nn.LayerNorm, mlp: nn.FeedForward):
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def __call__(self, x, mask: AttentionMask, cache=None):
        """x (B, L, E) -> (B, L, E). With a LayerKVCache, x holds the new positions and attends to the cache."""
        return sublayer_connections(x, [(self.ln_1, lambda h: self.attn(h, mask=mask, cache=cache)),   # 1) attend
                                        (self.ln_2, self.mlp)],                                       # 2) MLP
                                    norm_first=True)


class GPT2LMHeadModel(Pretrained, nn.Module):
    """GPT-2 language model: ``model(input_ids)`` -> logits (B, L, vocab); ``model.generate(...)`` decodes.

    Load one with [from_pretrained][attnkit.models.GPT2LMHeadModel.from_pretrained], or build one with random
    weights with [from_config][attnkit.models.GPT2LMHeadModel.from_config].

    Args:
        config: the hyperparameters.
        wte (numpy.ndarray): (V, E) token embeddings.
        wpe (numpy.ndarray): (n_positions, E) position embeddings.
        blocks (list of GPT2Block): the pre-LN blocks.
        ln_f: the final LayerNorm.
        lm_head (PackedLinear or numpy.ndarray or None): (V, E) or packed; None: tied to wte.

    Examples:
        >>> from attnkit.models import GPT2Config, GPT2LMHeadModel
        >>> m = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2))
        >>> len(m.blocks), m.lm_head is m.wte
        (2, True)
    """

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, wte, wpe, blocks, ln_f: nn.LayerNorm, lm_head=None):
        self.config = config
        self.wte, self.wpe = wte, wpe                        # (V, E), (n_positions, E)
        self.blocks, self.ln_f = list(blocks), ln_f
        self.lm_head = wte if lm_head is None else lm_head   # (V, E): logits = h @ lm_head^T

    @staticmethod
    def _random_tensors(config: GPT2Config, rng: np.random.Generator, std: float) -> dict:
        """GPT-2's checkpoint names and shapes, Conv1D weights (in, out) (random_state_dict)."""
        c = config
        E, Fd = c.n_embd, c.n_inner or 4 * c.n_embd
        shapes = {"wte.weight": (c.vocab_size, E), "wpe.weight": (c.n_positions, E)}
        for i in range(c.n_layer):
            shapes.update({f"h.{i}.attn.c_attn.weight": (E, 3 * E), f"h.{i}.attn.c_attn.bias": (3 * E,),
                           f"h.{i}.attn.c_proj.weight": (E, E), f"h.{i}.attn.c_proj.bias": (E,),
                           f"h.{i}.mlp.c_fc.weight": (E, Fd), f"h.{i}.mlp.c_fc.bias": (Fd,),
                           f"h.{i}.mlp.c_proj.weight": (Fd, E), f"h.{i}.mlp.c_proj.bias": (E,)})
        tensors = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(std) for k, s in shapes.items()}
        for name in [f"h.{i}.ln_{j}" for i in range(c.n_layer) for j in (1, 2)] + ["ln_f"]:
            tensors[f"{name}.weight"], tensors[f"{name}.bias"] = np.ones(E, np.float32), np.zeros(E, np.float32)
        if not c.tie_word_embeddings:
            tensors["lm_head.weight"] = rng.standard_normal((c.vocab_size, E), dtype=np.float32) * np.float32(std)
        return tensors

    @classmethod
    def _from_tensors(cls, tensors: dict, config: GPT2Config, dtype, origin: str) -> "GPT2LMHeadModel":
        """from_state_dict: names with or without 'transformer.'."""
        c = config
        prefix = "transformer." if "transformer.wte.weight" in tensors else ""
        t = nn.StateDict(tensors, prefix, dtype=dtype, origin=origin)
        E, V, Fd = c.n_embd, c.vocab_size, c.n_inner or 4 * c.n_embd
        act = _ACTIVATIONS[c.activation_function]

        def norm(name):
            return nn.LayerNorm(t(f"{name}.weight", (E,)), t(f"{name}.bias", (E,)), c.layer_norm_epsilon)

        blocks = []
        for i in range(c.n_layer):
            p = f"h.{i}."
            scale = (1.0 / np.sqrt(E // c.n_head)) if c.scale_attn_weights else 1.0
            if c.scale_attn_by_inverse_layer_idx:
                scale /= i + 1
            # Conv1D (in, out) -> (out, in): c_attn's columns [q | k | v] become rows [W_q; W_k; W_v]
            attn = nn.MultiHeadAttention(t(p + "attn.c_attn.weight", (3 * E, E), transpose=True),
                                         t(p + "attn.c_attn.bias", (3 * E,)),
                                         t(p + "attn.c_proj.weight", (E, E), transpose=True),
                                         t(p + "attn.c_proj.bias", (E,)), c.n_head, scale=scale)
            mlp = nn.FeedForward(t(p + "mlp.c_fc.weight", (Fd, E), transpose=True), t(p + "mlp.c_fc.bias", (Fd,)),
                                 t(p + "mlp.c_proj.weight", (E, Fd), transpose=True), t(p + "mlp.c_proj.bias", (E,)),
                                 act)
            blocks.append(GPT2Block(norm(p + "ln_1"), attn, norm(p + "ln_2"), mlp))
        if t.has(f"h.{c.n_layer}.attn.c_attn.weight"):
            raise ValueError(f"{origin}: more blocks than n_layer = {c.n_layer}")
        lm_head = None
        if not c.tie_word_embeddings or "lm_head.weight" in tensors:
            lm_head = Q.pack_head(nn.StateDict(tensors, "", dtype=dtype, origin=origin)("lm_head.weight", (V, E)))
        wte = t("wte.weight", (V, E))
        if lm_head is None and (Q.quantize_spec() is not None or isinstance(wte, Q.QTensor)):
            lm_head = Q.pack_head(wte)                        # tied, and the head quantized (or stored so):
            wte = Q.tied_embedding(wte, lm_head)              # the lookup reads the quantized head, no float copy
        return cls(c, wte, t("wpe.weight", (c.n_positions, E)), blocks, norm("ln_f"), lm_head)

    def _checkpoint_tensors(self):
        """(name, array) in the Hugging Face layout (save_pretrained); float Conv1D weights (in, out)."""
        if isinstance(self.wte, Q.QuantizedEmbedding):    # tied to a quantized head: stored once, quantized
            for suffix, arr in Q.to_checkpoint(self.wte.head).items():
                yield "transformer.wte." + suffix, arr
        else:
            yield "transformer.wte.weight", self.wte
        yield "transformer.wpe.weight", self.wpe
        yield "transformer.ln_f.weight", self.ln_f.weight
        yield "transformer.ln_f.bias", self.ln_f.bias
        for i, b in enumerate(self.blocks):
            p = f"transformer.h.{i}."
            for n, ln in (("ln_1", b.ln_1), ("ln_2", b.ln_2)):
                yield p + n + ".weight", ln.weight
                yield p + n + ".bias", ln.bias
            a = b.attn
            qkv = {k: np.concatenate([Q.to_checkpoint(a.q_proj_weight)[k], Q.to_checkpoint(a.kv_proj_weight)[k]])
                   for k in Q.to_checkpoint(a.q_proj_weight)}
            if "weight_scale" not in qkv:
                qkv["weight"] = qkv["weight"].T                           # Conv1D: (in, out)
            for suffix, arr in qkv.items():
                yield p + "attn.c_attn." + suffix, arr
            yield p + "attn.c_attn.bias", a.in_proj_bias
            for suffix, arr in Q.to_checkpoint(a.out_proj_weight, transpose=True).items():
                yield p + "attn.c_proj." + suffix, arr
            yield p + "attn.c_proj.bias", a.out_proj_bias
            for n, w, bias in (("c_fc", b.mlp.w1, b.mlp.b1), ("c_proj", b.mlp.w2, b.mlp.b2)):
                for suffix, arr in Q.to_checkpoint(w, transpose=True).items():
                    yield p + "mlp." + n + "." + suffix, arr
                yield p + "mlp." + n + ".bias", bias
        if self.lm_head is not self.wte and getattr(self.wte, "head", None) is not self.lm_head:
            head = self.lm_head if isinstance(self.lm_head, F.PackedLinear) else F.PackedLinear(self.lm_head)
            for suffix, arr in Q.to_checkpoint(head).items():
                yield "lm_head." + suffix, arr

    # -- forward -------------------------------------------------------------------------------------
    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, *, cache=None) -> np.ndarray:
        """The final hidden states LN_f(x), before the LM head.

        Args:
            input_ids (numpy.ndarray): (B, L) integer token ids.
            attention_mask (numpy.ndarray or None): (B, L), 1 = token, 0 = padding (padded keys are ignored).
            position_ids (numpy.ndarray or None): (L,) or (B, L); default 0..L-1 (after the cache's part).
            cache (KVCache or None): the L new positions continue each sequence's cached part, attend causally
                to it and are added to it (the cache advances by L; attention_mask is not used).

        Returns:
            (B, L, E) in the model's dtype.

        Raises:
            ValueError: ids outside the vocabulary, positions beyond n_positions.
        """
        ids = np.asarray(input_ids)
        B, L = ids.shape
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids: token ids must lie in [0, {self.config.vocab_size})")
        if position_ids is None:
            position_ids = np.arange(L) if cache is None else cache.lengths[:, None] + np.arange(L)
        position_ids = np.asarray(position_ids)
        if position_ids.size and position_ids.max() >= self.config.n_positions:
            raise ValueError(f"position {int(position_ids.max())} is beyond the model's "
                             f"n_positions = {self.config.n_positions}")
        mask = AttentionMask(is_causal=True)
        if attention_mask is not None:
            padding = np.asarray(attention_mask).reshape(B, L) == 0
            mask = AttentionMask.from_torch(None, padding, True, batch_size=B, num_heads=self.config.n_head,
                                            q_len=L, k_len=L, dtype=self.dtype)
        x = self.wte[ids]                                                        # (B, L, E)
        x += self.wpe[position_ids]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(L)
        return self.ln_f(x)

    def logits(self, hidden) -> np.ndarray:
        """Logits through the (tied) output embedding.

        Args:
            hidden (numpy.ndarray): (..., E), e.g. [hidden_states][attnkit.models.GPT2LMHeadModel.hidden_states]'s.

        Returns:
            (..., V) logits.
        """
        return F.linear(hidden, self.lm_head)

    def __call__(self, input_ids, attention_mask=None, position_ids=None) -> np.ndarray:
        """Next-token logits at every position.

        Args:
            input_ids (numpy.ndarray): (B, L) or (L,) integer token ids.
            attention_mask (numpy.ndarray or None): (B, L), 1 = token, 0 = padding.
            position_ids (numpy.ndarray or None): default 0..L-1.

        Returns:
            (B, L, V) logits in the model's dtype.

        Raises:
            ValueError: ids that are not (B, L) integers in the vocabulary.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import GPT2Config, GPT2LMHeadModel
            >>> cfg = GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2)
            >>> m = GPT2LMHeadModel.from_config(cfg)
            >>> m(np.array([[1, 2, 3], [4, 5, 6]]), attention_mask=np.array([[1, 1, 1], [0, 1, 1]])).shape
            (2, 3, 50)
        """
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids: expected (B, L) integer token ids, got {ids.dtype} {ids.shape}")
        return self.logits(self.hidden_states(ids, attention_mask, position_ids))

    # -- generation ----------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> nn.KVCache:
        """An empty KV cache for this model.

        Args:
            batch_size: sequences.
            max_len: positions per sequence at most.

        Returns:
            A [KVCache][attnkit.nn.KVCache] for ``hidden_states(..., cache=...)``.
        """
        first = self.blocks[0].attn
        return nn.KVCache(len(self.blocks), batch_size, first.num_kv_heads, first.head_dim, max_len, self.dtype)

    def generate(self, input_ids, max_new_tokens: int, *, attention_mask=None, num_beams: int = 1,
                 eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                 length_penalty: float = 1.0, use_cache: bool = True) -> np.ndarray:
        """Continue each prompt by ``max_new_tokens`` tokens: input_ids (B, L) -> (B, L + max_new_tokens).

        Greedy when num_beams == 1, else beam search. Prompts of different lengths: pass ``attention_mask``;
        each row is decoded from its own length and the new tokens follow its last real token (left-padded
        rows: [pads, prompt, new]). Generation only stops early at ``eos_token_id`` when it is given; the
        config's eos is not used implicitly.

        Args:
            input_ids (numpy.ndarray): (B, L) or (L,) integer token ids.
            max_new_tokens: tokens to add per row (>= 0).
            attention_mask (numpy.ndarray or None): (B, L), 1 = token, 0 = padding (on either side).
            num_beams: 1 for greedy, more for beam search.
            eos_token_id: ends a row (later tokens: ``pad_token_id``).
            pad_token_id: fills a finished row (default: eos).
            length_penalty: beam scores are divided by length ** length_penalty.
            use_cache: keep a KV cache (one position per step); False recomputes the whole prefix each step
                (the same tokens).

        Returns:
            (B, L + max_new_tokens) int64 token ids.

        Raises:
            ValueError: input_ids not (B, L) integers, max_new_tokens < 0, a mask of another shape.

        Examples:
            >>> import numpy as np
            >>> from attnkit.models import GPT2Config, GPT2LMHeadModel
            >>> m = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2))
            >>> m.generate(np.array([[1, 2, 3]]), 4).shape
            (1, 7)
        """
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
            raise ValueError(f"input_ids: expected non-empty (B, L) integer token ids, got {ids.dtype} {ids.shape}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
        prompts, lengths, starts = _compact_prompts(ids, attention_mask)
        total = int(lengths.max()) + max_new_tokens
        if total > self.config.n_positions:
            raise ValueError(f"prompt + max_new_tokens = {total} positions exceed n_positions = "
                             f"{self.config.n_positions}")
        if max_new_tokens == 0:
            return ids.astype(np.int64)
        state = _GPT2Decoding(self, prompts, lengths, total, use_cache)
        logits = state.start()                                                   # (B, V)
        if num_beams == 1:
            new = nn.greedy_search(state, logits, max_new_tokens, eos_token_id=eos_token_id,
                                   pad_token_id=pad_token_id)
        else:
            new = nn.beam_search(state, logits, max_new_tokens, num_beams, eos_token_id=eos_token_id,
                                 pad_token_id=pad_token_id, length_penalty=length_penalty)
        # put each row back together: its leading padding, prompt, new tokens, trailing padding
        B, L = ids.shape
        out = np.empty((B, L + max_new_tokens), dtype=np.int64)
        for b in range(B):
            s, n = starts[b], lengths[b]
            out[b, : s + n] = ids[b, : s + n]
            out[b, s + n: s + n + max_new_tokens] = new[b]
            out[b, s + n + max_new_tokens:] = ids[b, s + n:]
        return out


def _compact_prompts(ids: np.ndarray, attention_mask) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move each prompt to the start of its row: (prompts (B, L) right-padded, lengths (B,), starts (B,))."""
    B, L = ids.shape
    if attention_mask is None:
        return ids.astype(np.int64), np.full(B, L, dtype=np.int64), np.zeros(B, dtype=np.int64)
    real = np.asarray(attention_mask).reshape(B, L) != 0
    lengths = real.sum(axis=1).astype(np.int64)
    starts = np.argmax(real, axis=1).astype(np.int64)
    if np.any(lengths == 0):
        raise ValueError("attention_mask: every row needs at least one token")
    if not np.array_equal(real, (np.arange(L) >= starts[:, None]) & (np.arange(L) < (starts + lengths)[:, None])):
        raise ValueError("attention_mask: each row's tokens must be contiguous (padding on the left or right)")
    prompts = np.zeros((B, L), dtype=np.int64)
    for b in range(B):
        prompts[b, : lengths[b]] = ids[b, starts[b]: starts[b] + lengths[b]]
    return prompts, lengths, starts


class _GPT2Decoding:
    """Decoding state of :meth:`GPT2LMHeadModel.generate` (the protocol of attnkit.nn.generation).

    Row b holds its tokens at positions 0 .. lengths[b]-1; rows of different lengths decode together.
    """

    def __init__(self, model: GPT2LMHeadModel, prompts, lengths, max_len: int, use_cache: bool):
        self.model, self.prompts, self.lengths = model, prompts, lengths.copy()
        self.cache = model.new_cache(len(prompts), max_len) if use_cache else None
        if not use_cache:
            self.tokens = np.zeros((len(prompts), max_len), dtype=np.int64)
            self.tokens[:, : prompts.shape[1]] = prompts

    def _last_logits(self, hidden) -> np.ndarray:
        last = hidden[np.arange(len(hidden)), self.lengths - 1]                 # (R, E) each row's last token
        return self.model.logits(last)                                          # (R, V)

    def start(self) -> np.ndarray:
        """Run the prompts; the logits (B, V) after each row's last prompt token."""
        if self.cache is None:
            return self._recompute()
        L = self.prompts.shape[1]
        hidden = self.model.hidden_states(self.prompts, cache=self.cache)      # fills positions 0..L-1
        self.cache.advance(self.lengths - L)                                    # keep each row's real tokens;
        return self._last_logits(hidden)                                        # later steps overwrite the pad

    def _recompute(self) -> np.ndarray:
        """The whole prefix again, each row cut at its own length (right padding)."""
        S = int(self.lengths.max())
        real = np.arange(S) < self.lengths[:, None]                             # (R, S)
        return self._last_logits(self.model.hidden_states(self.tokens[:, :S], attention_mask=real))

    def step(self, tokens: np.ndarray) -> np.ndarray:
        if self.cache is None:
            self.tokens[np.arange(len(tokens)), self.lengths] = tokens
            self.lengths = self.lengths + 1
            return self._recompute()
        hidden = self.model.hidden_states(tokens[:, None], cache=self.cache)   # (R, 1, E)
        self.lengths = self.lengths + 1
        return self.model.logits(hidden[:, 0])                                  # (R, V)

    def reorder(self, rows: np.ndarray) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)
        else:
            self.tokens = self.tokens[rows]
        self.lengths = self.lengths[rows]
