"""Search loops for autoregressive generation: greedy and beam search, independent of the model.

A model hands the loops a *decoding state* with two methods (see ``Transformer.generate`` and
``GPT2LMHeadModel.generate``):

    state.step(tokens)   tokens (R,) ints, one new token per row -> next-token logits (R, V)
    state.reorder(rows)  keep rows ``rows`` (R',) in that order (beam search; R' may differ from R)

plus the logits (R, V) that the prompt produced. The state decides how to get the logits: with a KV cache
(one position per step) or by recomputing the whole prefix; the loops cannot tell the difference.

The loops follow Hugging Face ``generate`` (transformers 5): :class:`GenerationConfig` holds its options,
:func:`process_scores` applies its logits processors in its order (repetition_penalty, no_repeat_ngram_size,
bad_words_ids, min_length / min_new_tokens, forced BOS / EOS, then temperature, top_k, top_p when sampling),
:func:`sample_steps` is greedy search or sampling one step at a time (what ``stream`` yields), and
:func:`beam_steps` is its beam search: the 2K best continuations of all beams each step, finished
hypotheses scored sum / length ** length_penalty, ``early_stopping`` True / False / "never" as there.
``greedy_search`` and ``beam_search`` are the same loops with a fixed number of new tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Protocol, Sequence, Union

import numpy as np

from .sampling import SamplingConfig, choose, process_logits

__all__ = ["DecodingState", "GenerationConfig", "process_scores", "sample_steps", "beam_steps", "greedy_search",
           "beam_search", "pad_after_eos", "log_softmax"]


class DecodingState(Protocol):
    def step(self, tokens: np.ndarray) -> np.ndarray: ...

    def reorder(self, rows: np.ndarray) -> None: ...


def log_softmax(logits: np.ndarray, dtype=np.float64, out: Optional[np.ndarray] = None) -> np.ndarray:
    """log p over the last axis, in float64 by default (ranks of near-equal scores stay stable); beam search
    asks for float32, as transformers computes it. ``out``: an array of the result's shape and dtype, not
    ``logits`` itself, to write into (beam search reuses one: a fresh 7 MB temporary a step costs its page
    faults); without it one new array is made."""
    x = np.asarray(logits, dtype=dtype)
    m = x.max(axis=-1, keepdims=True)
    buf = np.empty_like(x) if out is None else out
    np.exp(np.subtract(x, m, out=buf), out=buf)
    return np.subtract(x, m + np.log(buf.sum(axis=-1, keepdims=True)), out=buf)



# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------

def _int(name, value, low, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _ids(name, value) -> List[int]:
    """None, an int or a sequence of ints -> a list of ints."""
    if value is None:
        return []
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return [int(value)]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an int, a sequence of ints or None, got {value!r}") from None
    return out


@dataclass
class GenerationConfig:
    """The options of ``generate`` (Hugging Face's names and meanings), checked once; errors name the option.

    Args:
        max_length: the whole output sequence at most, the decoder prompt (the start token) included.
        num_beams: 1: greedy search or sampling; more: beam search.
        do_sample: sample from the processed distribution instead of taking the most likely token.
        temperature: divides the logits when sampling (> 0).
        top_k: sample among the k most likely tokens (None: all).
        top_p: sample among the smallest set of tokens of probability >= top_p (None: all).
        repetition_penalty: Hugging Face's (None: off).
        no_repeat_ngram_size: no n-gram of this size occurs twice (0: off).
        min_length: no eos before this many tokens (the prompt included).
        min_new_tokens: no eos before this many new tokens.
        bad_words_ids: token sequences that are never generated (list of lists of ids).
        forced_bos_token_id: the first generated token.
        forced_eos_token_id: the last token when max_length is reached (one id or several).
        eos_token_id: ends a row (one id or several).
        pad_token_id: fills a finished row.
        length_penalty: beam scores are sum(log p) / length ** length_penalty.
        early_stopping: beam search stops when num_beams hypotheses are done (True), when no better one can
            come by the heuristic (False), or never before max_length ("never").
        num_return_sequences: sequences per input row (at most num_beams without sampling).
        seed (int or numpy.random.Generator or None): the sampling's randomness.

    Raises:
        TypeError: bad_words_ids or an id list of the wrong type. ValueError: an option out of range.

    Examples:
        >>> from attnkit.nn import GenerationConfig
        >>> cfg = GenerationConfig(max_length=20, num_beams=4, eos_token_id=[2, 3], pad_token_id=0)
        >>> cfg.eos, cfg.pad
        ([2, 3], 0)
    """

    max_length: int
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    no_repeat_ngram_size: int = 0
    min_length: int = 0
    min_new_tokens: int = 0
    bad_words_ids: Optional[Sequence[Sequence[int]]] = None
    forced_bos_token_id: Optional[int] = None
    forced_eos_token_id: Union[None, int, Sequence[int]] = None
    eos_token_id: Union[None, int, Sequence[int]] = None
    pad_token_id: Optional[int] = None
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    num_return_sequences: int = 1
    seed: object = None
    eos: List[int] = field(init=False, default_factory=list)

    def __post_init__(self):
        self.max_length = _int("max_length", self.max_length, 0)
        self.num_beams = _int("num_beams", self.num_beams, 1)
        self.no_repeat_ngram_size = _int("no_repeat_ngram_size", self.no_repeat_ngram_size or 0, 0)
        self.min_length = _int("min_length", self.min_length or 0, 0)
        self.min_new_tokens = _int("min_new_tokens", self.min_new_tokens or 0, 0)
        self.num_return_sequences = _int("num_return_sequences", self.num_return_sequences, 1)
        self.forced_bos_token_id = _int("forced_bos_token_id", self.forced_bos_token_id, 0, True)
        self.pad_token_id = _int("pad_token_id", self.pad_token_id, 0, True)
        self.eos = _ids("eos_token_id", self.eos_token_id)
        self.forced_eos = _ids("forced_eos_token_id", self.forced_eos_token_id)
        if not isinstance(self.length_penalty, (int, float)) or isinstance(self.length_penalty, bool) \
                or not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty: expected a finite number, got {self.length_penalty!r}")
        if self.early_stopping not in (True, False, "never") or isinstance(self.early_stopping, (int, float)) \
                and not isinstance(self.early_stopping, bool):
            raise ValueError(f"early_stopping: expected True, False or 'never', got {self.early_stopping!r}")
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            raise ValueError(f"num_return_sequences: {self.num_return_sequences} is more than num_beams="
                             f"{self.num_beams} (without do_sample)")
        bad = self.bad_words_ids
        if bad is not None:
            try:
                bad = [[int(t) for t in seq] for seq in bad]
            except (TypeError, ValueError):
                raise TypeError(f"bad_words_ids: expected a list of lists of token ids, got {self.bad_words_ids!r}") \
                    from None
            if any(len(seq) == 0 or min(seq) < 0 for seq in bad):
                raise ValueError("bad_words_ids: every entry must be a non-empty list of token ids >= 0")
            bad = [seq for seq in bad if not (len(seq) == 1 and seq[0] in self.eos)]   # eos is never banned
        self.bad_words_ids = bad
        self.sampling = SamplingConfig(self.do_sample, self.temperature, self.top_k, self.top_p,
                                       self.repetition_penalty, self.seed)

    @property
    def beam_fill(self) -> int:
        """What beam search writes after a finished hypothesis: Hugging Face's ``pad_token_id or eos`` (a pad id
        of 0 counts as unset there), -1 without eos."""
        if not self.eos:
            return -1
        return self.pad_token_id if self.pad_token_id else self.eos[0]

    @property
    def pad(self) -> int:
        """What greedy search and sampling write for a finished row: pad_token_id, else the first eos, else -1."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos[0] if self.eos else -1


# --------------------------------------------------------------------------------------------------
# Logits processors
# --------------------------------------------------------------------------------------------------

def process_scores(scores: np.ndarray, sequences: np.ndarray, cfg: GenerationConfig, prompt_len: int,
                   *, warp: bool = True, inplace: bool = False) -> np.ndarray:
    """scores (R, V) for the token after sequences (R, cur) -> processed scores (R, V) (float32 or float64 as given).

    Hugging Face's processors in its order; -inf marks a token that may not be chosen. prompt_len: the
    length of the decoder prompt within ``sequences`` (min_new_tokens counts from there). warp: apply the
    sampling warpers (temperature, top_k, top_p) when cfg.do_sample. inplace: scores itself may be changed
    and returned (float32 or float64 scores the caller owns), else a copy is."""
    dtype = np.result_type(scores.dtype, np.float32)                          # float32 stays float32, as there
    x = scores if inplace and scores.dtype == dtype and scores.flags.writeable else np.array(scores, dtype=dtype)
    R, V = x.shape
    cur = sequences.shape[1]
    rows = np.arange(R)[:, None]
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0 and cur:
        seen = x[rows, sequences]                                                 # (R, cur)
        x[rows, sequences] = np.where(seen < 0, seen * cfg.repetition_penalty, seen / cfg.repetition_penalty)
    n = cfg.no_repeat_ngram_size
    if n and cur + 1 >= n:
        for r in range(R):
            seq = sequences[r].tolist()
            tail = tuple(seq[cur - n + 1:]) if n > 1 else ()
            banned = [seq[i + n - 1] for i in range(cur - n + 1) if tuple(seq[i:i + n - 1]) == tail]
            x[r, banned] = -np.inf
    if cfg.bad_words_ids:
        for seq in cfg.bad_words_ids:
            if seq[-1] >= V:
                continue
            if len(seq) == 1:
                x[:, seq[0]] = -np.inf
            elif cur >= len(seq) - 1:
                hit = np.all(sequences[:, cur - len(seq) + 1:] == np.asarray(seq[:-1]), axis=1)
                x[hit, seq[-1]] = -np.inf
    if cfg.eos and (cur < cfg.min_length or cur - prompt_len < cfg.min_new_tokens):
        x[:, cfg.eos] = -np.inf
    if cfg.forced_bos_token_id is not None and cur == 1:
        x[:] = -np.inf
        x[:, cfg.forced_bos_token_id] = 0.0
    if cfg.forced_eos and cur == cfg.max_length - 1:
        x[:] = -np.inf
        x[:, cfg.forced_eos] = 0.0
    if warp and cfg.do_sample:
        x = process_logits(x, cfg.sampling)                                      # temperature, top_k, top_p
    return x


# --------------------------------------------------------------------------------------------------
# Greedy search and sampling
# --------------------------------------------------------------------------------------------------

def sample_steps(state: DecodingState, logits: np.ndarray, prompt: np.ndarray, cfg: GenerationConfig,
                 out: Optional[list] = None) -> Iterator[np.ndarray]:
    """Greedy search (or sampling with cfg.do_sample), one step at a time: yields the new tokens (R,), -1 for a
    row that had finished before the step. prompt (R, P) are the decoder's tokens so far; ``out``, a list,
    receives the sequences (R, P + n) (finished rows continued with cfg.pad) when the loop ends.

    A row finishes at an eos; the loop ends when every row has, or at cfg.max_length."""
    R = logits.shape[0]
    seqs = np.asarray(prompt, dtype=np.int64).reshape(R, -1)
    P = seqs.shape[1]
    done = np.zeros(R, dtype=bool)
    eos = np.asarray(cfg.eos, dtype=np.int64)
    try:
        while seqs.shape[1] < cfg.max_length:
            scores = process_scores(logits, seqs, cfg, P)
            tokens = choose(scores, cfg.sampling)
            before = done.copy()
            tokens = np.where(done, cfg.pad, tokens)
            seqs = np.concatenate([seqs, tokens[:, None]], axis=1)
            if eos.size:
                done |= np.isin(tokens, eos)
            yield np.where(before, -1, tokens)
            if done.all() or seqs.shape[1] >= cfg.max_length:
                break
            logits = state.step(tokens)
    finally:
        if out is not None:
            out.append(seqs)


# --------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------

_NEG = -1.0e9            # Hugging Face's "never pick this" score


_TOPK_GROUPS = 64


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of each row, largest first (ties: lower index first).

    Long rows through _topk_long; otherwise the k-th largest value t of each row by a partition, then one
    pass picks the entries above t and, in index order, as many equal to t as are missing. Scores holding
    NaN are ranked by a partition instead (NaN last; entries tied at the k-th place then in any order)."""
    R, N = x.shape
    k = min(k, N)
    if N >= 64 * _TOPK_GROUPS and k <= 64:
        found = _topk_long(x, k)
        if found is not None:
            return found
    if np.isnan(x).any():
        part = np.argpartition(-x, k - 1, axis=1)[:, :k] if k < N else np.tile(np.arange(N), (R, 1))
        order = np.lexsort((part, -np.take_along_axis(x, part, axis=1)), axis=1)
        return np.take_along_axis(part, order, axis=1)
    t = np.partition(x, N - k, axis=1)[:, N - k][:, None]
    g_rows, g_cols = np.nonzero(x > t)
    e_rows, e_cols = np.nonzero(x == t)                                  # row by row, index order within a row
    need = k - np.bincount(g_rows, minlength=R)                            # >= 1: t itself is in every row
    e_first = np.concatenate([[0], np.cumsum(np.bincount(e_rows, minlength=R))[:-1]])
    keep = np.arange(len(e_rows)) - e_first[e_rows] < need[e_rows]
    rows = np.concatenate([g_rows, e_rows[keep]])
    cols = np.concatenate([g_cols, e_cols[keep]])
    order = np.lexsort((cols, -x[rows, cols], rows))                       # by row, value down, index up
    return cols[order].reshape(R, k)


def _topk_long(x: np.ndarray, k: int) -> Optional[np.ndarray]:
    """_topk for long rows (beam search's batch x beams x vocabulary scores) without partitioning them: each
    row's first G * n entries (G = _TOPK_GROUPS, n = N // G) fall into n groups of G entries n apart, whose
    maxima one strided reduction gives; the k-th largest maximum is a lower bound of the k-th largest entry (k
    distinct groups hold an entry >= it), so the k largest entries lie in the groups whose maximum reaches
    it, or in the last N - G * n entries: a few hundred candidates, ranked exactly. 0.7 against 6.3 ms for 8
    rows of 4 x 58101. None (the caller ranks everything) for NaN or many groups tied at the bound."""
    R, N = x.shape
    n = N // _TOPK_GROUPS
    heads = x[:, :_TOPK_GROUPS * n].reshape(R, _TOPK_GROUPS, n).max(axis=1)   # (R, n): group j = j, j + n, ...
    tail = np.arange(_TOPK_GROUPS * n, N)
    if np.isnan(heads).any() or np.isnan(x[:, tail]).any():
        return None
    bound = np.partition(heads, n - k, axis=1)[:, n - k]
    spread = np.arange(_TOPK_GROUPS)[:, None] * n
    out = np.empty((R, k), np.int64)
    for r in range(R):
        groups = np.flatnonzero(heads[r] >= bound[r])
        if len(groups) > 16 * k:
            return None
        idx = np.concatenate([(spread + groups[None, :]).ravel(), tail])
        out[r] = idx[np.lexsort((idx, -x[r, idx]))[:k]]
    return out


def beam_steps(state: DecodingState, logits: np.ndarray, prompt: np.ndarray, cfg: GenerationConfig) -> np.ndarray:
    """Beam search (beam sampling with cfg.do_sample) as Hugging Face runs it: returns the
    cfg.num_return_sequences best hypotheses of each row, best first, (R * num_return_sequences, P + n), n the
    longest of them; cfg.beam_fill after a hypothesis's end.

    Each step every beam's log-probabilities (processed) are added to its score, and the best
    K' = max(2, 1 + #eos) * K continuations of all K beams are kept; of them, those ending in eos (or reaching
    max_length) among the first K become finished hypotheses scored sum / new_length ** length_penalty, the K
    best others run on. A row stops taking hypotheses when early_stopping is True and K are finished, or when
    the best running beam (scored at the current length, or at max_length with "never" and a positive
    length_penalty) cannot beat the worst of K finished ones."""
    R, V = logits.shape
    K, T = cfg.num_beams, cfg.max_length
    prompt = np.asarray(prompt, dtype=np.int64).reshape(R, -1)
    P = prompt.shape[1]
    fill = cfg.beam_fill
    eos = np.asarray(cfg.eos, dtype=np.int64)
    keep = max(2, 1 + len(cfg.eos)) * K
    lp_pow = cfg.length_penalty

    running = np.full((R, K, T), fill, dtype=np.int64)
    running[:, :, :P] = prompt[:, None]
    best = running.copy()                                                    # finished hypotheses (R, K, T)
    best_len = np.zeros((R, K), dtype=np.int64)                             # their new tokens
    f32 = np.float32                                                         # transformers' score dtype
    run_scores = np.zeros((R, K), f32)
    run_scores[:, 1:] = _NEG                                                 # identical beams: one alive
    best_scores = np.full((R, K), _NEG, f32)
    finished = np.zeros((R, K), dtype=bool)
    open_rows = np.ones(R, dtype=bool)                                       # may still improve
    state.reorder(np.repeat(np.arange(R), K))                               # R -> R*K rows
    logits = np.repeat(logits, K, axis=0)
    cur = P
    rng = cfg.sampling.rng
    lp_buf = np.empty((R * K, V), f32)                                       # reused: no 7 MB page faults a step
    while cur < T:
        lp = log_softmax(logits, f32, out=lp_buf)                            # (R*K, V)
        lp = process_scores(lp, running[:, :, :cur].reshape(R * K, cur), cfg, P, inplace=True)
        acc = np.add(lp.reshape(R, K, V), run_scores[:, :, None], out=lp_buf.reshape(R, K, V)).reshape(R, K * V)
        if cfg.do_sample:
            idx = np.empty((R, keep), dtype=np.int64)
            for r in range(R):
                p = np.exp(acc[r] - acc[r].max())
                p /= p.sum()
                n_pos = int(np.count_nonzero(p))
                take = rng.choice(K * V, size=min(keep, n_pos), replace=False, p=p)
                rest = np.setdiff1d(np.arange(K * V), take)[:keep - len(take)]
                idx[r] = np.concatenate([take, rest])
            order = np.argsort(-np.take_along_axis(acc, idx, axis=1), axis=1, kind="stable")
            idx = np.take_along_axis(idx, order, axis=1)
        else:
            idx = _topk(acc, keep)                                           # (R, keep)
        top_scores = np.take_along_axis(acc, idx, axis=1)
        src, tok = idx // V, idx % V                                         # beam, token
        cand = np.take_along_axis(running, src[:, :, None], axis=1)          # (R, keep, T)
        cand[:, :, cur] = tok
        hits = np.isin(tok, eos) if eos.size else np.zeros(tok.shape, dtype=bool)
        if cur + 1 >= T:
            hits[:] = True
        # the K best continuations that did not finish run on
        run_cand = top_scores + (hits * _NEG).astype(f32)
        nxt = _topk(run_cand, K)
        running = np.take_along_axis(cand, nxt[:, :, None], axis=1)
        run_scores = np.take_along_axis(run_cand, nxt, axis=1)
        run_src = np.take_along_axis(src, nxt, axis=1)
        # the finished among the first K candidates become hypotheses when they beat the kept ones
        just = hits & (np.arange(keep) < K)[None, :]
        scores = top_scores / f32(float(cur + 1 - P) ** lp_pow)
        full = finished.all(axis=1, keepdims=True) & (cfg.early_stopping is True)
        for never in (full, (~open_rows)[:, None], ~just):                  # one add each, as there
            scores = scores + (never * _NEG).astype(f32)
        m_scores = np.concatenate([best_scores, scores], axis=1)
        pick = _topk(m_scores, K)
        best = np.take_along_axis(np.concatenate([best, cand], axis=1), pick[:, :, None], axis=1)
        best_scores = np.take_along_axis(m_scores, pick, axis=1)
        best_len = np.take_along_axis(np.concatenate([best_len, np.full((R, keep), cur + 1 - P)], axis=1), pick,
                                      axis=1)
        finished = np.take_along_axis(np.concatenate([finished, just], axis=1), pick, axis=1)
        cur += 1
        # can a running beam still beat the worst finished hypothesis?
        if cfg.early_stopping == "never" and lp_pow > 0.0:
            length = T - P
        else:
            length = cur - P
        best_possible = run_scores[:, :1] / f32(float(length) ** lp_pow)
        worst = np.where(finished, best_scores.min(axis=1, keepdims=True), f32(_NEG))
        open_rows &= np.any(best_possible > worst, axis=1)
        if not (open_rows.any() and not (finished.all() and cfg.early_stopping is True) and not hits.all()):
            break
        state.reorder((np.arange(R)[:, None] * K + run_src).reshape(-1))
        logits = state.step(running[:, :, cur - 1].reshape(-1))
    n = cfg.num_return_sequences
    out = best[:, :n].reshape(R * n, T)
    length = P + int(best_len[:, :n].max(initial=0))
    return out[:, :length]


# --------------------------------------------------------------------------------------------------
# Fixed-length forms (the paper's Transformer, GPT-2)
# --------------------------------------------------------------------------------------------------

def greedy_search(state: DecodingState, logits: np.ndarray, max_new_tokens: int, *,
                  eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None) -> np.ndarray:
    """Pick the most likely token at every step.

    A row that has produced ``eos_token_id`` is continued with ``pad_token_id`` (default: eos) and the loop
    stops early once every row has finished (the rest filled the same way).

    Args:
        state: the model's decoding state: ``step(tokens (R,)) -> logits (R, V)`` and ``reorder(rows)``.
        logits: (R, V), the logits the prompt produced.
        max_new_tokens: tokens to pick per row.
        eos_token_id: ends a row.
        pad_token_id: fills a finished row (default: eos).

    Returns:
        (R, max_new_tokens) int64 token ids.

    Examples:
        >>> import numpy as np
        >>> from attnkit.nn import greedy_search
        >>> class Counting:                  # a decoding state whose next token is always the last one + 1
        ...     def step(self, tokens): return np.eye(10)[(tokens + 1) % 10]
        ...     def reorder(self, rows): pass
        >>> greedy_search(Counting(), np.eye(10)[[3]], 5, eos_token_id=6, pad_token_id=0).tolist()
        [[3, 4, 5, 6, 0]]
    """
    cfg = GenerationConfig(max_length=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    R = logits.shape[0]
    out: list = []
    for _ in sample_steps(state, logits, np.empty((R, 0), np.int64), cfg, out):
        pass
    return _pad_to(out[0], max_new_tokens, cfg.pad)


def beam_search(state: DecodingState, logits: np.ndarray, max_new_tokens: int, num_beams: int, *,
                eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                length_penalty: float = 1.0) -> np.ndarray:
    """Keep the ``num_beams`` most likely continuations of every row (Hugging Face's beam search, early_stopping
    False). With num_beams=1 and no eos this is greedy search.

    Args:
        state: the model's decoding state: ``step(tokens (R * num_beams,)) -> logits`` and ``reorder(rows)``
            (beam search expands and reorders its rows).
        logits: (R, V), the logits the prompt produced.
        max_new_tokens: tokens per row at most.
        num_beams: hypotheses kept per row (>= 1).
        eos_token_id: ends a hypothesis.
        pad_token_id: fills the best hypothesis after its eos (default: eos).
        length_penalty: scores are sum(log p) / length ** length_penalty.

    Returns:
        (R, max_new_tokens) int64: the best hypothesis of each row.

    Raises:
        ValueError: num_beams < 1.

    Examples:
        >>> import numpy as np
        >>> from attnkit.nn import beam_search
        >>> class Repeating:                 # a decoding state that prefers repeating the last token
        ...     def step(self, tokens): return 4.0 * np.eye(5)[tokens]
        ...     def reorder(self, rows): pass
        >>> beam_search(Repeating(), np.eye(5)[[2]], 3, num_beams=2).tolist()
        [[2, 2, 2]]
    """
    if num_beams < 1:
        raise ValueError(f"num_beams: must be >= 1, got {num_beams}")
    cfg = GenerationConfig(max_length=max_new_tokens, num_beams=num_beams, eos_token_id=eos_token_id,
                           pad_token_id=pad_token_id, length_penalty=length_penalty)
    R = logits.shape[0]
    if max_new_tokens == 0:
        return np.empty((R, 0), np.int64)
    seqs = pad_after_eos(beam_steps(state, logits, np.empty((R, 0), np.int64), cfg), cfg, 0)
    return _pad_to(seqs, max_new_tokens, cfg.pad)


def pad_after_eos(seqs: np.ndarray, cfg: GenerationConfig, start: int) -> np.ndarray:
    """seqs with every token after the first eos at or beyond column ``start`` set to cfg.pad (beam search
    fills with Hugging Face's ``pad or eos``; the fixed-length forms promise pad_token_id)."""
    if not cfg.eos:
        return seqs
    is_eos = np.isin(seqs, cfg.eos)
    is_eos[:, :start] = False
    ended = np.cumsum(is_eos, axis=1) - is_eos > 0
    return np.where(ended, cfg.pad, seqs)


def _pad_to(seqs: np.ndarray, width: int, fill: int) -> np.ndarray:
    out = np.full((seqs.shape[0], width), fill, dtype=np.int64)
    out[:, :seqs.shape[1]] = seqs[:, :width]
    return out
