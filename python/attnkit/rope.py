"""Rotary position embedding tables (RoPE): cos/sin of position x inverse frequency, computed
once per model in float64 and cast, with the frequency scalings of Hugging Face checkpoints.

``rope_parameters(config)`` reads either layout of config.json (``rope_theta`` + ``rope_scaling``,
or transformers 5's ``rope_parameters``); ``RotaryTables`` holds the tables and grows them (or,
for ``dynamic`` scaling, recomputes them for the longest position) when a longer sequence comes.
The kernel that applies them is ``attnkit.apply_rotary``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

__all__ = ["SUPPORTED_ROPE_TYPES", "rope_parameters", "inverse_frequencies", "rope_tables", "RotaryTables"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def rope_parameters(config: dict) -> dict:
    """{'rope_type', 'rope_theta', ...scaling fields} from a config dict (either layout). Rope types
    other than default/linear/dynamic/llama3 raise ValueError naming the field and the type."""
    params = config.get("rope_parameters")
    if params is not None:
        field = "rope_parameters"
        params = dict(params)
    else:
        field = "rope_scaling"
        params = dict(config.get("rope_scaling") or {})
        params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"{field}: rope_type {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    params["rope_type"] = kind
    theta = params.get("rope_theta", 10000.0)
    if not isinstance(theta, (int, float)) or not theta > 0:
        raise ValueError(f"{field}: rope_theta must be a positive number, got {theta!r}")
    if kind != "default":
        factor = params.get("factor")
        if not isinstance(factor, (int, float)) or not factor >= 1.0 and kind != "linear" or not factor > 0:
            raise ValueError(f"{field}: factor must be a positive number for rope_type {kind!r}, got {factor!r}")
    if kind == "llama3":
        for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if not isinstance(params.get(key), (int, float)):
                raise ValueError(f"{field}: {key} is required for rope_type 'llama3'")
        if not params["high_freq_factor"] > params["low_freq_factor"]:
            raise ValueError(f"{field}: high_freq_factor must exceed low_freq_factor")
    return params


def inverse_frequencies(dim: int, params: dict, max_position_embeddings: int,
                        seq_len: Optional[int] = None) -> np.ndarray:
    """theta^(-2i/dim), i < dim/2, scaled as params['rope_type'] says (float64)."""
    kind, base = params["rope_type"], float(params["rope_theta"])
    if kind == "dynamic" and seq_len is not None and seq_len > max_position_embeddings:
        factor = params["factor"]   # NTK-aware: a larger base once the sequence outgrows the trained length
        base = base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if kind == "linear":
        inv = inv / params["factor"]
    elif kind == "llama3":
        factor, lo, hi = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)                 # long waves: slowed down
        smooth = (old / wavelen - lo) / (hi - lo)
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)                   # in between: blended
        inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv


def rope_tables(dim: int, max_positions: int, theta: float = 10000.0, *, params: Optional[dict] = None,
                max_position_embeddings: Optional[int] = None, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """cos, sin (max_positions, dim/2) of position p times inverse frequency i."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim: expected a positive even number of rotary dims, got {dim}")
    params = params or {"rope_type": "default", "rope_theta": theta}
    mpe = max_position_embeddings or max_positions
    inv = inverse_frequencies(dim, params, mpe, seq_len=max_positions)
    ang = np.arange(max_positions, dtype=np.float64)[:, None] * inv[None, :]     # (P, dim/2)
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


class RotaryTables:
    """The tables of one model: computed once, for at least ``length`` positions; ``get(n)`` returns
    tables covering positions < n (grown by doubling; dynamic scaling recomputes for n)."""

    def __init__(self, dim: int, params: dict, max_position_embeddings: int, dtype=np.float32, length: int = 256):
        self.dim, self.params, self.mpe, self.dtype = dim, params, max_position_embeddings, dtype
        self._n = 0
        self._tables = None
        self._dynamic_len = None
        self.get(min(length, max_position_embeddings))

    def get(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.params["rope_type"] == "dynamic" and n > self.mpe:
            if self._dynamic_len != n:                            # the base depends on the sequence length
                self._dynamic_tables = rope_tables(self.dim, n, params=self.params, max_position_embeddings=self.mpe,
                                                   dtype=self.dtype)
                self._dynamic_len = n
            return self._dynamic_tables
        if n > self._n:
            self._n = max(n, 2 * self._n)
            length = self._n if self.params["rope_type"] != "dynamic" else min(self._n, self.mpe)
            self._n = max(length, n)
            inv = inverse_frequencies(self.dim, self.params, self.mpe)
            ang = np.arange(self._n, dtype=np.float64)[:, None] * inv[None, :]
            self._tables = (np.cos(ang).astype(self.dtype), np.sin(ang).astype(self.dtype))
        return self._tables
