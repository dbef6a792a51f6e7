"""Choosing the next token from logits: greedy, or sampling after the usual processors.

    repetition_penalty  (CTRL, Keskar et al. 2019) a seen token's logit is divided by the penalty if
                        positive, multiplied if negative
    temperature         logits / T
    top_k               keep the k largest logits
    top_p               keep the smallest set of most likely tokens whose probability reaches p

Each processor is a plain NumPy function of logits (R, V) (float64), in that order, as Hugging Face
``generate`` applies them; ``process_logits`` runs the chain, ``choose`` picks tokens.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .._dtypes import is_real_scalar

__all__ = ["SamplingConfig", "process_logits", "choose"]


class SamplingConfig:
    """The decoding options of ``generate``, checked once (ValueError / TypeError naming the argument)."""

    def __init__(self, do_sample: bool = False, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, repetition_penalty: Optional[float] = None, seed=None):
        if not isinstance(do_sample, (bool, np.bool_)):
            raise TypeError(f"do_sample: expected a bool, got {type(do_sample).__name__}")
        if not is_real_scalar(temperature) or not temperature > 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k: expected an int >= 1 or None, got {top_k!r}")
        if top_p is not None and (not is_real_scalar(top_p) or not 0 < top_p <= 1):
            raise ValueError(f"top_p: expected a number in (0, 1] or None, got {top_p!r}")
        if repetition_penalty is not None and (not is_real_scalar(repetition_penalty)
                                               or not repetition_penalty > 0):
            raise ValueError(f"repetition_penalty: expected a number > 0 or None, got {repetition_penalty!r}")
        if isinstance(seed, np.random.Generator):
            self.rng = seed
        elif seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
            self.rng = np.random.default_rng(seed)
        else:
            raise TypeError(f"seed: expected an int, a numpy.random.Generator or None, got {type(seed).__name__}")
        self.do_sample, self.temperature, self.top_k = bool(do_sample), float(temperature), top_k
        self.top_p = None if top_p is None else float(top_p)
        self.repetition_penalty = None if repetition_penalty is None else float(repetition_penalty)


def process_logits(logits: np.ndarray, cfg: SamplingConfig, seen: Optional[np.ndarray] = None) -> np.ndarray:
    """logits (R, V) -> processed float64 logits (R, V), -inf where a token may not be drawn.
    seen: bool (R, V), the tokens already in each row (prompt and generated), for repetition_penalty."""
    x = np.array(logits, dtype=np.float64)
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0 and seen is not None:
        pen = np.where(x < 0, x * cfg.repetition_penalty, x / cfg.repetition_penalty)
        x = np.where(seen, pen, x)
    if not cfg.do_sample:
        return x
    if cfg.temperature != 1.0:
        x = x / cfg.temperature
    V = x.shape[-1]
    if cfg.top_k is not None and cfg.top_k < V:
        kth = np.partition(x, V - cfg.top_k, axis=-1)[:, V - cfg.top_k][:, None]    # the k-th largest
        x = np.where(x < kth, -np.inf, x)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")                              # most likely first
        xs = np.take_along_axis(x, order, axis=-1)
        p = np.exp(xs - xs[:, :1])
        p /= p.sum(axis=-1, keepdims=True)
        before = np.cumsum(p, axis=-1) - p                                          # mass of the tokens ahead
        drop_sorted = before >= cfg.top_p                                           # the set already reached p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        x = np.where(drop, -np.inf, x)
    return x


def choose(processed: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Tokens (R,) from processed logits: argmax, or a draw from softmax(processed) with cfg.rng."""
    if not cfg.do_sample:
        return np.argmax(processed, axis=-1).astype(np.int64)
    p = np.exp(processed - processed.max(axis=-1, keepdims=True))
    c = np.cumsum(p, axis=-1)
    u = cfg.rng.random(len(p)) * c[:, -1]
    tok = np.array([np.searchsorted(c[r], u[r], side="right") for r in range(len(p))], dtype=np.int64)
    return np.minimum(tok, p.shape[-1] - 1)
