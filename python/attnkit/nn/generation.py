"""Search loops for autoregressive generation: greedy and beam search, independent of the model.

A model hands the loops a *decoding state* with two methods (see ``Transformer.generate`` and
``GPT2LMHeadModel.generate``):

    state.step(tokens)   tokens (R,) ints, one new token per row -> next-token logits (R, V)
    state.reorder(rows)  keep rows ``rows`` (R',) in that order (beam search; R' may differ from R)

plus the logits (R, V) that the prompt produced. The state decides how to get the logits: with a KV cache
(one position per step) or by recomputing the whole prefix; the loops cannot tell the difference.
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Tuple

import numpy as np

__all__ = ["DecodingState", "greedy_search", "beam_search", "log_softmax"]


class DecodingState(Protocol):
    def step(self, tokens: np.ndarray) -> np.ndarray: ...

    def reorder(self, rows: np.ndarray) -> None: ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the last axis, in float64 (ranks of near-equal scores stay stable)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def greedy_search(state: DecodingState, logits: np.ndarray, max_new_tokens: int, *,
                  eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None) -> np.ndarray:
    """Pick the most likely token at every step. Returns the new tokens (R, max_new_tokens).

    A row that has produced ``eos_token_id`` is continued with ``pad_token_id`` (default: eos) and the loop
    stops early once every row has finished.
    """
    R = logits.shape[0]
    pad = eos_token_id if pad_token_id is None else pad_token_id
    out = np.full((R, max_new_tokens), -1 if pad is None else pad, dtype=np.int64)
    finished = np.zeros(R, dtype=bool)
    for t in range(max_new_tokens):
        tokens = np.argmax(logits, axis=-1).astype(np.int64)                 # (R,)
        if eos_token_id is not None:
            tokens = np.where(finished, pad, tokens)
            finished |= tokens == eos_token_id
        out[:, t] = tokens
        if t + 1 == max_new_tokens or finished.all():
            break
        logits = state.step(tokens)                                          # (R, V)
    return out


def beam_search(state: DecodingState, logits: np.ndarray, max_new_tokens: int, num_beams: int, *,
                eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                length_penalty: float = 1.0) -> np.ndarray:
    """Keep the ``num_beams`` most likely continuations of every row. Returns the best one (R, max_new_tokens).

    Scores are sums of log-probabilities. A continuation that ends with ``eos_token_id`` is set aside as a
    finished hypothesis, scored sum / length ** length_penalty (length = its number of new tokens, eos
    included); a row is done when it holds ``num_beams`` hypotheses and no live beam can beat the worst of
    them. The state is expanded to R * num_beams rows once, then reordered after every step so that row
    r * num_beams + k holds beam k of input row r. With num_beams=1 and no eos this is greedy search.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams: must be >= 1, got {num_beams}")
    R, V = logits.shape
    K = num_beams
    pad = eos_token_id if pad_token_id is None else pad_token_id
    fill = -1 if pad is None else pad

    state.reorder(np.repeat(np.arange(R), K))                               # R -> R*K rows
    logits = np.repeat(logits, K, axis=0)                                    # (R*K, V)
    scores = np.full((R, K), -np.inf)
    scores[:, 0] = 0.0                                                       # identical beams: keep one alive
    history = np.empty((R, K, 0), dtype=np.int64)                            # tokens chosen so far
    finished: List[List[Tuple[float, np.ndarray]]] = [[] for _ in range(R)]
    done = np.zeros(R, dtype=bool)
    width = 2 * K if eos_token_id is not None else K                         # spare candidates for eos

    for t in range(max_new_tokens):
        candidates = scores[:, :, None] + log_softmax(logits).reshape(R, K, V)   # (R, K, V)
        flat = candidates.reshape(R, K * V)
        top = _top(flat, width)                                              # (R, width), best first
        new_scores = np.full((R, K), -np.inf)
        new_source = np.zeros((R, K), dtype=np.int64)
        new_tokens = np.full((R, K), fill, dtype=np.int64)
        for r in range(R):
            if done[r]:                                                      # keep shapes, nothing to search
                new_source[r] = np.arange(K)
                continue
            k = 0
            for c in top[r]:
                beam, token, score = c // V, c % V, flat[r, c]
                if not np.isfinite(score):
                    break
                if eos_token_id is not None and token == eos_token_id:
                    hypothesis = np.append(history[r, beam], token)
                    _add_hypothesis(finished[r], K, score / (t + 1) ** length_penalty, hypothesis)
                    continue
                new_scores[r, k], new_source[r, k], new_tokens[r, k] = score, beam, token
                k += 1
                if k == K:
                    break
            if len(finished[r]) == K:                                        # can a live beam still win?
                best_live = new_scores[r].max() / max(t + 1, 1) ** length_penalty
                done[r] = best_live <= min(s for s, _ in finished[r]) or k == 0
            elif k == 0:
                done[r] = True
        rows = (np.arange(R)[:, None] * K + new_source).reshape(-1)          # (R*K,) source row of each beam
        history = np.concatenate([history[np.arange(R)[:, None], new_source], new_tokens[:, :, None]], axis=2)
        scores = new_scores
        if t + 1 == max_new_tokens or done.all():
            break
        state.reorder(rows)
        logits = state.step(new_tokens.reshape(-1))                          # (R*K, V)

    out = np.full((R, max_new_tokens), fill, dtype=np.int64)
    for r in range(R):
        hypotheses = list(finished[r])
        if not done[r]:                                                      # live beams compete too
            n = history.shape[2]
            for k in range(K):
                if np.isfinite(scores[r, k]):
                    hypotheses.append((scores[r, k] / n ** length_penalty, history[r, k]))
        if hypotheses:
            best = max(hypotheses, key=lambda h: h[0])[1]
            out[r, : len(best)] = best
    return out


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest entries of each row, best first (ties among the picked: lower index first)."""
    n = min(n, scores.shape[1])
    if n == 1:
        return np.argmax(scores, axis=1)[:, None]                            # as greedy search picks
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]                    # (R, n), unordered
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)                              # by score, then index
    return np.take_along_axis(part, order, axis=1)


def _add_hypothesis(hypotheses: list, num_beams: int, score: float, tokens: np.ndarray) -> None:
    """Keep the num_beams best finished hypotheses of one row."""
    hypotheses.append((float(score), tokens))
    if len(hypotheses) > num_beams:
        hypotheses.remove(min(hypotheses, key=lambda h: h[0]))
