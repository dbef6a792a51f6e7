"""Where a forward pass spends its time: linear, attention, norms and everything else.

    attnkit_breakdown(fn)        -> {"linear": ms, "attention": ms, "norms": ms, "other": ms, "total": ms}
    torch_breakdown(torch, fn)   -> the same keys, from torch.profiler's self CPU time per op

attnkit's figures come from timing its own entry points (attnkit.functional's linear,
scaled_dot_product_attention, layer_norm and the rest) during one call of ``fn``; "other" is the
wall time left (Python, NumPy reshapes and copies, embeddings). PyTorch's come from its profiler:
each op's self time, sorted by name, scaled to the wall time of an unprofiled call.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict

from .. import functional

CATEGORIES = ("linear", "attention", "norms", "other")

# attnkit.functional's entry points -> category (the nn layers and models reach them through the module)
_ENTRY_POINTS = {"linear": "linear", "scaled_dot_product_attention": "attention", "layer_norm": "norms",
                 "softmax": "other", "gelu": "other", "relu": "other"}


@contextlib.contextmanager
def _timed_entry_points(spent: Dict[str, float]):
    """Wrap attnkit.functional's kernels so that each call adds its time to ``spent[category]``.

    Nested calls (multi_head_attention calling linear) count once, in the outermost category."""
    originals = {name: getattr(functional, name) for name in _ENTRY_POINTS}
    depth = [0]

    def wrap(name, fn):
        def timed(*args, **kwargs):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[_ENTRY_POINTS[name]] += time.perf_counter() - t0
        return timed

    for name, fn in originals.items():
        setattr(functional, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(functional, name, fn)


def attnkit_breakdown(fn: Callable[[], object], repeats: int = 3) -> Dict[str, float]:
    """Median-of-``repeats`` ms per category of one call of ``fn`` (which runs attnkit.nn / models)."""
    runs = []
    for _ in range(repeats):
        spent = {c: 0.0 for c in CATEGORIES}
        with _timed_entry_points(spent):
            t0 = time.perf_counter()
            fn()
            total = time.perf_counter() - t0
        spent["other"] += total - sum(spent[c] for c in ("linear", "attention", "norms"))
        spent["total"] = total
        runs.append(spent)
    runs.sort(key=lambda r: r["total"])
    return {k: v * 1e3 for k, v in runs[len(runs) // 2].items()}


def _torch_category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("attention", "softmax", "bmm")):
        return "attention"
    if any(k in n for k in ("addmm", "::mm", "matmul", "linear")):
        return "linear"
    if "norm" in n:
        return "norms"
    return "other"


def torch_breakdown(torch, fn: Callable[[], object], repeats: int = 3) -> Dict[str, float]:
    """PyTorch's ms per category of one call of ``fn``: profiler self times, scaled to the unprofiled
    median wall time (the profiler's own overhead is spread over the categories)."""
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    wall = sorted(walls)[len(walls) // 2]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    spent = {c: 0.0 for c in CATEGORIES}
    for ev in prof.key_averages():
        spent[_torch_category(ev.key)] += ev.self_cpu_time_total
    total = sum(spent.values()) or 1.0
    out = {c: wall * 1e3 * spent[c] / total for c in CATEGORIES}
    out["total"] = wall * 1e3
    return out


def describe(parts: Dict[str, float]) -> str:
    """'linear 80.1 ms (62%), attention ...' for a table note."""
    total = parts["total"] or 1.0
    return ", ".join(f"{c} {parts[c]:.1f} ms ({100 * parts[c] / total:.0f}%)" for c in CATEGORIES)
