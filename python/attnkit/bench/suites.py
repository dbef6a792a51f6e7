"""The benchmark suites: one function per suite returning its cases, and the contenders for each kind of case.

A case is plain data (kind + params) so that a child process can rebuild it to measure peak memory.
Useful FLOPs: 4*B*H*Lq*Lk*D for attention (half when causal), 2*M*N*K for linear.

With a half-precision dtype (``Options.dtype`` "float16" or "bfloat16") the contenders are attnkit in that
dtype ("attnkit"), attnkit in float32 on the same rounded inputs ("attnkit fp32", the baseline of the
ratios and of the error column) and PyTorch in that dtype ("torch"); the NumPy oracle is left out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

GiB = 1 << 30
MiB = 1 << 20
_blas_limits = None


@dataclass
class Options:
    quick: bool = False
    tiny: bool = False  # hidden: toy sizes so the smoke test runs in seconds
    threads: int = 1
    isa: str | None = None
    contenders: tuple = ("attnkit", "numpy")
    dtype: str = "float32"  # or "float16", "bfloat16": the half-precision runs (see half_contenders)

    @property
    def half(self) -> bool:
        return self.dtype != "float32"

    @property
    def budget(self) -> float:  # seconds of timed calls per contender per case
        return 0.01 if self.tiny else 0.25 if self.quick else 1.0

    @property
    def min_repeats(self) -> int:
        return 2 if self.tiny else 3 if self.quick else 5


@dataclass
class Case:
    suite: str
    name: str
    kind: str  # "sdpa" | "linear"
    params: dict
    flops: float
    bytes: float = 0.0  # bytes that must be read (decode: K + V), for GB/s
    skip: dict = field(default_factory=dict)  # contender -> reason
    sweep: bool = False  # part of the sequence-length sweep that --plot draws


# ---------------------------------------------------------------- setup shared by the parent and the child
HALF_DTYPES = ("float16", "bfloat16")
FP32 = "attnkit fp32"  # the float32 baseline of a half-precision run


def np_dtype(name: str) -> np.dtype:
    """NumPy dtype of a dtype name: float32, float16, or bfloat16 (ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def torch_dtype(name: str):
    import torch
    return getattr(torch, name)


def half_contenders(with_torch: bool) -> list[str]:
    """A half-precision run: attnkit in the dtype, attnkit fp32 on the same rounded inputs, torch in the dtype."""
    return ["attnkit", FP32] + (["torch"] if with_torch else [])


def contender_dtype(contender: str, dtype: str) -> str:
    """The dtype a contender computes in: the run's, except the float32 baselines (attnkit fp32, the oracle)."""
    return "float32" if contender in (FP32, "numpy") else dtype


def compare_keys(opts: Options) -> dict:
    """harness.compare's keywords for a run: the NumPy oracle is the baseline, or attnkit fp32 in a
    half-precision run (ratio key speedup_vs_fp32, error key max_abs_err_vs_fp32)."""
    if opts.half:
        return {"oracle": FP32, "speedup_key": "speedup_vs_fp32", "err_key": "max_abs_err_vs_fp32"}
    return {}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def configure(threads: int, isa: str | None, contenders) -> dict:
    """Give every contender the same number of threads; force attnkit's ISA. Returns what was set."""
    import attnkit
    if isa:
        attnkit.set_isa(isa)
    attnkit.set_num_threads(threads)
    done = {"attnkit": threads}
    if "torch" in contenders:
        import torch
        torch.set_num_threads(threads)
        done["torch"] = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits
        global _blas_limits
        _blas_limits = threadpool_limits(limits=threads)  # kept for the whole run
        done["numpy_blas"] = threads
    except ImportError:
        done["numpy_blas"] = "threadpoolctl not installed: BLAS threads not set"
    return done


def make_fns(kind: str, p: dict, contenders, dtype: str = "float32") -> tuple[dict, dict]:
    """Allocate the inputs (and attnkit's ``out=`` buffer) once; return ({contender: fn}, {contender: bytes of
    the output it allocates per call}) so that peak memory can be counted above inputs and output.

    ``dtype`` (float32, float16, bfloat16): the inputs are drawn in float32 and rounded to it once; attnkit and
    torch run in it, "attnkit fp32" and the oracle on the same rounded values widened to float32."""
    import attnkit
    from attnkit import reference
    rng = np.random.default_rng(0)
    f32 = np.float32
    dt = np_dtype(dtype)

    def inputs(*arrays):  # (arrays in dt, the same values in float32); no copies when dt is float32
        low = [a.astype(dt, copy=False) for a in arrays]
        return low, [a.astype(f32, copy=False) for a in low]

    def to_torch(a):
        import torch
        t = torch.from_numpy(np.ascontiguousarray(a, f32))
        return t if dtype == "float32" else t.to(torch_dtype(dtype))

    fns, out_alloc = {}, {}
    if kind == "sdpa":
        B, H, Hk, Lq, Lk, D = (p[k] for k in ("B", "H", "Hk", "Lq", "Lk", "D"))
        (q, k, v), (q32, k32, v32) = inputs(rng.standard_normal((B, H, Lq, D), dtype=f32),
                                            rng.standard_normal((B, Hk, Lk, D), dtype=f32),
                                            rng.standard_normal((B, Hk, Lk, D), dtype=f32))
        kw = {"is_causal": p["causal"]}
        if Hk != H:
            kw["enable_gqa"] = True
        out_bytes = B * H * Lq * D * dt.itemsize
        if "attnkit" in contenders:
            out = np.full((B, H, Lq, D), 0.0, dt)  # written now: np.zeros would leave its pages untouched
            fns["attnkit"] = lambda: attnkit.scaled_dot_product_attention(q, k, v, **kw, out=out)
            out_alloc["attnkit"] = 0
        if FP32 in contenders:
            out32 = np.full((B, H, Lq, D), 0.0, f32)
            fns[FP32] = lambda: attnkit.scaled_dot_product_attention(q32, k32, v32, **kw, out=out32)
            out_alloc[FP32] = 0
        if "numpy" in contenders:
            fns["numpy"] = lambda: reference.scaled_dot_product_attention(q32, k32, v32, **kw)
            out_alloc["numpy"] = B * H * Lq * D * 4
        if "torch" in contenders:
            import torch
            sdpa = torch.nn.functional.scaled_dot_product_attention
            tq, tk, tv = (to_torch(a) for a in (q, k, v))
            fns["torch"] = lambda: sdpa(tq, tk, tv, **kw)
            out_alloc["torch"] = out_bytes
    elif kind == "linear":
        M, K, N, act = p["M"], p["K"], p["N"], p["activation"]
        (x, w), (x32, w32) = inputs(rng.standard_normal((M, K), dtype=f32),
                                    rng.standard_normal((N, K), dtype=f32) * f32(K**-0.5))
        (b,), (b32,) = inputs(rng.standard_normal(N, dtype=f32)) if p["bias"] else ((None,), (None,))

        def ours(x, w, b):
            if p.get("packed"):  # a model's weight: packed once at load, as attnkit.nn does
                packed = attnkit.pack_linear(w, b)
                return lambda: attnkit.linear(x, packed, activation=act)
            return lambda: attnkit.linear(x, w, b, activation=act)
        if "attnkit" in contenders:
            fns["attnkit"] = ours(x, w, b)
        if FP32 in contenders:
            fns[FP32] = ours(x32, w32, b32)
        if "numpy" in contenders:
            plain = b32 is None and act is None
            fns["numpy"] = (lambda: x32 @ w32.T) if plain else (lambda: reference.linear(x32, w32, b32, activation=act))
        if "torch" in contenders:
            import torch
            F = torch.nn.functional
            tx, tw = to_torch(x), to_torch(w)
            tb = None if b is None else to_torch(b)
            post = {None: lambda y: y, "relu": F.relu, "gelu": F.gelu,
                    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh")}[act]
            fns["torch"] = lambda: post(F.linear(tx, tw, tb))
        out_alloc = {c: M * N * np_dtype(contender_dtype(c, dtype)).itemsize for c in fns}
    else:
        raise ValueError(f"unknown case kind {kind!r}")
    return fns, out_alloc


# ---------------------------------------------------------------- case builders
def _sdpa(suite, B, H, Lq, Lk, D, causal=False, Hk=None, label=None, opts=None, **extra) -> Case:
    Hk = Hk or H
    flops = 4.0 * B * H * Lq * Lk * D * (0.5 if causal else 1.0)
    if label is None:
        label = ("causal " if causal else "self ") + f"{B}x{H}x{Lq}x{D}"
    case = Case(suite, label, "sdpa", dict(B=B, H=H, Hk=Hk, Lq=Lq, Lk=Lk, D=D, causal=causal), flops, **extra)
    scores = B * H * Lq * Lk * 4  # bytes of the oracle's score matrix (it materialises a few of them)
    if scores * 4 > _available_bytes() // 2:
        case.skip["numpy"] = f"oracle would need {scores / GiB:.0f} GiB for scores"
    elif opts.quick and not opts.tiny and scores > 128 * MiB:
        case.skip["numpy"] = "quick: oracle would take seconds"
    return case


def _available_bytes() -> int:
    try:
        import psutil
        return psutil.virtual_memory().available
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def attention(opts: Options) -> list[Case]:
    """Self, causal and cross attention; the B1 H8 D64 rows form the sequence-length sweep for --plot.
    Half precision: prefill B1 H8 L1024 D64 self and causal, B1 H16 L2048 D128 (not with --quick)."""
    if opts.half and not opts.tiny:
        cases = [_sdpa("attention", 1, 8, 1024, 1024, 64, c, opts=opts) for c in (False, True)]
        return cases if opts.quick else cases + [_sdpa("attention", 1, 16, 2048, 2048, 128, opts=opts)]
    if opts.tiny:
        return [_sdpa("attention", 1, 2, L, L, 16, c, opts=opts, sweep=True) for L in (32, 64) for c in (False, True)] \
            + [_sdpa("attention", 1, 2, 16, 48, 16, label="cross 1x2 q16 k48 d16", opts=opts)]
    lengths = (1024,) if opts.quick else (256, 512, 1024, 2048, 4096)
    cases = [_sdpa("attention", 1, 8, L, L, 64, c, opts=opts, sweep=True) for L in lengths for c in (False, True)]
    if opts.quick:
        cases.append(_sdpa("attention", 1, 8, 4096, 4096, 64, True, opts=opts, sweep=True))
    else:
        cases += [_sdpa("attention", 4, 12, 512, 512, 64, opts=opts),
                  _sdpa("attention", 1, 16, 2048, 2048, 128, opts=opts)]
    cases.append(_sdpa("attention", 4, 8, 256, 1024, 64, label="cross 4x8 q256 k1024 d64", opts=opts))
    return cases


def decode(opts: Options) -> list[Case]:
    """One query per sequence over a KV cache; memory bound: GB/s of K+V read, as % of copy bandwidth
    (bytes in the run's dtype; the float32 baseline of a half-precision run reads twice as many)."""
    def case(B, H, Lk, D, Hk=None):
        Hk = Hk or H
        name = f"decode {B}x{H}" + (f"/kv{Hk}" if Hk != H else "") + f" k{Lk} d{D}"
        c = _sdpa("decode", B, H, 1, Lk, D, Hk=Hk, label=name, opts=opts)
        c.bytes = 2.0 * B * Hk * Lk * D * np_dtype(opts.dtype).itemsize
        return c
    if opts.tiny:
        return [case(1, 2, 64, 16)]
    if opts.quick or opts.half:
        return [case(4, 32, 4096, 128)]
    return [case(4, 32, 1024, 128), case(4, 32, 4096, 128), case(4, 32, 4096, 128, Hk=8)]


def linear(opts: Options) -> list[Case]:
    """x (M, K) @ w (N, K).T against NumPy ``x @ w.T`` and torch.nn.functional.linear."""
    def case(M, K, N, bias=False, activation=None, packed=False):
        name = (f"linear {M}x{K} @ {K}x{N}" + (" +bias" if bias else "") + (f" +{activation}" if activation else "")
                + (" packed" if packed else ""))
        return Case("linear", name, "linear", dict(M=M, K=K, N=N, bias=bias, activation=activation, packed=packed),
                    2.0 * M * N * K)
    if opts.tiny:
        return [case(64, 32, 48), case(3, 32, 48, True, packed=True)]
    # inference shapes: BERT-base and GPT-2-small projections (768 -> 2304 QKV, 768 -> 3072 -> 768
    # MLP) at 1 (decode) to 512 rows, weights packed once as the models hold them
    inference = [case(M, K, N, True, packed=True) for K, N in ((768, 2304), (768, 3072), (3072, 768))
                 for M in (1, 8, 32, 128, 512)]
    quick = [c for c in inference if c.params["M"] in (1, 128) and c.params["K"] == 768 and c.params["N"] == 3072]
    if opts.half:  # half precision: the inference shapes only
        return quick if opts.quick else inference
    if opts.quick:
        return [case(4096, 1024, 3072)] + quick
    # an unpacked weight at few rows (what a user who compares with NumPy calls first): BERT widths at
    # 1-32 rows, and at 1 row two weights past the caches (Marian's 58101 x 512 head, a Llama-7B FFN)
    unpacked = [case(M, 768, 3072) for M in (1, 8, 32)] + [case(1, 512, 58101), case(1, 4096, 11008)]
    return ([case(4096, 1024, 3072), case(4096, 1024, 3072, True, "gelu"), case(512, 768, 768, True)] + inference
            + unpacked)


def memory(opts: Options) -> list[Case]:
    """Peak RSS above inputs and output of one cold call, each contender in its own child process."""
    if opts.tiny:
        cases = [_sdpa("memory", 1, 2, 256, 256, 16, opts=opts)]
    else:
        # quick: causal, half the work over the same inputs (the full run times the non-causal call)
        cases = [_sdpa("memory", 1, 8, 16384, 16384, 64, opts.quick, opts=opts)]
        if not opts.quick:
            cases += [_sdpa("memory", 1, 8, 4096, 4096, 64, True, opts=opts),
                      _sdpa("memory", 4, 32, 1, 4096, 128, label="decode 4x32 k4096 d128", opts=opts)]
    cases[0].params["limit_mib"] = 64  # attnkit's budget at the long sequence
    return cases


SUITES = {"attention": attention, "decode": decode, "linear": linear, "memory": memory}
# The model suite (whole models, not cases) is attnkit.bench.models.model_suite; that module imports this one,
# never the other way round (python -m attnkit.bench composes the two).
SUITE_NAMES = tuple(SUITES) + ("model",)
HALF_SUITES = ("attention", "decode", "linear", "model")  # the suites a --dtype float16|bfloat16 run has
