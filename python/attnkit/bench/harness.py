"""Benchmark plumbing: timing, ratios, ceilings, machine info, child-process memory probe, progress bar, table, plot."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from statistics import median

import numpy as np

MiB = 1 << 20


# ---------------------------------------------------------------- timing
def measure(fn, budget: float, min_repeats: int = 3, max_repeats: int = 200) -> dict:
    """Warm up, then time ``fn`` until ``budget`` seconds and ``min_repeats`` calls (or ``max_repeats``).

    A call slower than the budget gets fewer repeats: timing stops once 3 * budget is spent (at least one run).
    Returns median and min in ms, the number of timed runs and the last output.
    """
    t0 = time.perf_counter()
    out = fn()
    if time.perf_counter() - t0 < budget / 20:
        out = fn()  # a second warm-up for fast calls (caches, thread pools, page faults)
    times, start = [], time.perf_counter()
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if (spent >= budget and len(times) >= min_repeats) or spent >= 3 * budget:
            break
    return {"median_ms": median(times) * 1e3, "min_ms": min(times) * 1e3, "runs": len(times), "out": out}


def measure_interleaved(fns: dict, budget: float, min_repeats: int = 3, max_repeats: int = 200,
                        rounds: int = 3, settle: float = 0.05) -> dict:
    """Time several contenders in alternating blocks (``rounds`` blocks each), so that a drift in the
    machine's speed (other tenants, clock changes) hits them alike and the ratio of their medians can be
    trusted. Before each block: a pause of ``settle`` seconds, so that the worker threads another runtime
    leaves spinning after its call (OpenMP's, OpenBLAS's) are asleep again and steal no core from the
    next contender (measured: PyTorch's spinning threads cost attnkit ~18% when calls alternate with no
    gap), then one untimed call. Same budget rules as ``measure``, per contender; returns
    ``{name: measure-like dict}``."""
    times, outs = {name: [] for name in fns}, {}
    block_budget, block_min = budget / rounds, max(1, -(-min_repeats // rounds))
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(settle)
            outs[name] = fn()
            start = time.perf_counter()
            n0 = len(times[name])
            while len(times[name]) < max_repeats:
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
                spent, done = time.perf_counter() - start, len(times[name]) - n0
                if (spent >= block_budget and done >= block_min) or spent >= 3 * block_budget:
                    break
    return {name: {"median_ms": median(t) * 1e3, "min_ms": min(t) * 1e3, "runs": len(t), "out": outs[name]}
            for name, t in times.items()}


def measure_cpu_interleaved(fns: dict, rounds: int = 21, clock=time.thread_time) -> dict:
    """Time contenders by CPU time instead of the wall clock, for a machine that other tenants load: one warm-up
    call each, then ``rounds`` rounds of one call per contender, alternating. ``clock``: time.thread_time (the
    calling thread: one-thread runs) or time.process_time (every thread of the process: it counts threads
    spinning for work as working). Returns ``{name: {"median_ms", "min_ms", "runs", "out"}}``."""
    times, outs = {name: [] for name in fns}, {name: fn() for name, fn in fns.items()}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            outs[name] = fn()
            times[name].append(clock() - t0)
    return {name: {"median_ms": median(t) * 1e3, "min_ms": min(t) * 1e3, "runs": len(t), "out": outs[name]}
            for name, t in times.items()}


def measure_contenders(fns: dict, budget: float, min_repeats: int = 3, on_start=None) -> dict:
    """Time every contender of one case: the fast ones (all but the NumPy oracle "numpy") in alternating
    blocks with ``measure_interleaved`` (their ratio is the figure that matters), the oracle, often 10-100x
    slower, alone after a pause with ``measure``. ``on_start(name)`` is called before each contender (a
    progress bar). A contender that raises gets ``{"note": "error: ..."}`` and does not sink the others.
    Returns ``{name: measure-like dict}``."""
    res, fast = {}, [c for c in fns if c != "numpy"]
    for c in fns:
        if on_start is not None:
            on_start(c)
        # the fast contenders run together when the first of them comes up
        group = [c] if c == "numpy" or len(fast) < 2 else fast if c == fast[0] else []
        try:
            if len(group) == 1:
                time.sleep(0.05)
                res[c] = measure(fns[c], budget, min_repeats)
                if c == "numpy":
                    # OpenBLAS's idle threads spin for about 2^28 cycles (~0.1 s) after a call: let them
                    # sleep before the next case, whose first blocks they slowed (a 1-row linear after a
                    # 512-row oracle GEMM: half its calls at one thread's speed, 0.5x PyTorch)
                    time.sleep(0.3)
            elif group:
                res.update(measure_interleaved({f: fns[f] for f in group}, budget, min_repeats))
        except Exception as e:
            res.update({f: {"note": f"error: {type(e).__name__}: {e}"} for f in group})
    return res


def compare(res: dict, oracle: str = "numpy", speedup_key: str = "speedup_vs_numpy",
            err_key: str = "max_abs_err") -> dict:
    """The ratios of one case's contenders, from ``{name: measure-like dict}``: ``speedup_key`` (the ``oracle``'s
    time / its time, every other contender), ``ratio_vs_torch`` (torch time / attnkit time, attnkit's row) and
    ``err_key`` (max |out - the oracle's output|). The oracle is the NumPy reference by default; a
    half-precision run compares with attnkit float32 ("attnkit fp32", keys speedup_vs_fp32 and
    max_abs_err_vs_fp32). Returns ``{name: {key: value}}``."""
    t = {c: r["median_ms"] for c, r in res.items() if r.get("median_ms")}
    ref = res.get(oracle, {}).get("out")
    out = {c: {} for c in res}
    for c in t:
        if c != oracle and oracle in t:
            out[c][speedup_key] = t[oracle] / t[c]
        if c == "attnkit" and "torch" in t:
            out[c]["ratio_vs_torch"] = t["torch"] / t[c]
        if ref is not None and c != oracle and res[c].get("out") is not None:
            out[c][err_key] = max_abs_diff(res[c]["out"], ref)
    return out


def max_abs_diff(a, b) -> float:
    """max |a - b| in float32; a and b NumPy arrays (any float dtype, bfloat16 included) or CPU torch tensors."""
    return float(np.max(np.abs(_as_f32(a) - _as_f32(b))))


def _as_f32(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor (NumPy cannot take a bfloat16 one)
        a = a.detach().float().numpy()
    return np.asarray(a, dtype=np.float32)


def ceilings(size: int, copy_bytes: int, budget: float) -> dict:
    """The machine's ceilings in this run: NumPy sgemm GFLOP/s (size^3) and np.copyto GB/s (read + write bytes)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    # A ceiling is a best case: take the fastest call, so that a moment of contention on a shared
    # machine does not lower it (a median once read 88 GFLOP/s where other runs read 137-144).
    t = measure(lambda: a @ b, budget, min_repeats=5)
    src = np.ones(copy_bytes // 4, np.float32)
    dst = np.zeros_like(src)
    c = measure(lambda: np.copyto(dst, src), budget, min_repeats=5)
    # the spread (median over best, in %) says how noisy each figure is: a kernel "above" a
    # ceiling by less than the spread is noise, not a result
    return {"sgemm_size": size, "sgemm_gflops": 2 * size**3 / t["min_ms"] / 1e6,
            "sgemm_spread_pct": 100 * (t["median_ms"] / t["min_ms"] - 1), "sgemm_runs": t["runs"],
            "copy_mib": copy_bytes // MiB, "copy_gbps": 2 * copy_bytes / c["min_ms"] / 1e6,
            "copy_spread_pct": 100 * (c["median_ms"] / c["min_ms"] - 1), "copy_runs": c["runs"]}


# ---------------------------------------------------------------- machine
def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = open("/proc/cpuinfo").read()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]
    return {"model": model, "logical_cpus": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def blas_info() -> list:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "architecture", "num_threads", "version", "threading_layer")
    return [{k: d.get(k) for k in keys} for d in threadpool_info()]


# ---------------------------------------------------------------- peak RSS in a child process
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))


def peak_extra_bytes(fn, out_bytes: int = 0) -> tuple[int, float]:
    """Call ``fn`` once; return (peak RSS above the RSS before the call, minus ``out_bytes``; seconds).

    Run this in a fresh process with the inputs (and any ``out=`` buffer) already allocated and touched.
    Linux resets the peak (VmHWM) by writing 5 to /proc/self/clear_refs; elsewhere we fall back to ru_maxrss,
    which then also holds the peak of the imports.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS") * 1024
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        peak = _status_kib("VmHWM") * 1024
    except OSError:
        import resource
        scale = 1 if sys.platform == "darwin" else 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return max(0, peak - before - out_bytes), dt


def run_child(spec: dict, timeout: float = 600) -> dict:
    """Run ``python -m attnkit.bench._child SPEC`` and return the JSON it prints (or {"error": ...})."""
    cmd = [sys.executable, "-m", "attnkit.bench._child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"child exited {p.returncode}: {tail}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- progress bar (stderr, no dependency)
class Progress:
    def __init__(self, total: int, width: int = 24):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def step(self, label: str):
        self.done += 1
        fill = self.width * min(self.done, self.total) // self.total
        line = f"[{'#' * fill}{'.' * (self.width - fill)}] {self.done:>3}/{self.total} " \
               f"{time.perf_counter() - self.t0:5.1f}s  {label}"
        if self.tty:
            sys.stderr.write("\r" + line[:120].ljust(120))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self):
        if self.tty:
            sys.stderr.write("\r" + " " * 120 + "\r")
            sys.stderr.flush()


# ---------------------------------------------------------------- table
def fmt(value, spec: str = "") -> str:
    """``spec``: a format spec, "ms" (3 decimals below 10, else 1), or a spec ending in "x" (a ratio: 1.23x)."""
    if value is None or value == "":
        return "-"
    if not isinstance(value, float) or not spec:
        return str(value)
    if spec == "ms":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if spec.endswith("x"):
        return format(value, spec[:-1]) + "x"
    return format(value, spec)


def table(columns: list[tuple[str, str, str]], rows: list[dict]) -> str:
    """Aligned text table. ``columns``: (header, key, format spec); text columns left-aligned, numbers right."""
    cells = [[fmt(r.get(key), spec) for _, key, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    numeric = [any(isinstance(r.get(key), (int, float)) for r in rows) for _, key, _ in columns]

    def line(items):
        return "  ".join(s.rjust(w) if n else s.ljust(w) for s, w, n in zip(items, widths, numeric)).rstrip()

    head = line([h for h, _, _ in columns])
    return "\n".join([head, "-" * len(head)] + [line(c) for c in cells])


# ---------------------------------------------------------------- plot
def plot(rows: list[dict], path: str, sgemm_gflops: float | None, title: str) -> str:
    """GFLOP/s by sequence length per contender, causal and not (rows marked ``sweep``). Returns a note."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "--plot: matplotlib is not installed; no plot written"
    sweep = [r for r in rows if r.get("sweep") and r.get("gflops")]
    if not sweep:
        return "--plot: no sequence-length sweep in this run (suite attention); no plot written"
    shape = "B{B} H{H} D{D}".format(**sweep[0])
    lengths = sorted({r["Lk"] for r in sweep})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, causal in zip(axes, (False, True)):
        for name in dict.fromkeys(r["contender"] for r in sweep):
            pts = sorted((r["Lk"], r["gflops"]) for r in sweep if r["contender"] == name and r["causal"] == causal)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        if sgemm_gflops:
            ax.axhline(sgemm_gflops, ls="--", c="gray", lw=1, label="NumPy sgemm")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_title(("causal" if causal else "full") + f" self attention, {shape} fp32")
        ax.set_xlabel("sequence length L")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("GFLOP/s (useful FLOPs)")
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"
