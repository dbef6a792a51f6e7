"""python -m attnkit.bench: time attnkit against the NumPy oracle (and PyTorch when importable).

See bench/README.md. Every contender runs with the same number of threads, side by side in the same run;
the machine's ceilings (NumPy sgemm GFLOP/s, np.copyto GB/s) are measured in the same run. With
``--dtype float16|bfloat16``: attnkit in that dtype against attnkit float32 and PyTorch in that dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from attnkit.bench import harness, suites
from attnkit.bench.harness import table

THROTTLE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

COLS_RATE = [("median ms", "median_ms", "ms"), ("min ms", "min_ms", "ms"), ("runs", "runs", "")]
COLS_RATIO = [("vs numpy", "speedup_vs_numpy", ".2fx"), ("vs fp32", "speedup_vs_fp32", ".2fx"),
              ("vs torch", "ratio_vs_torch", ".2fx"), ("max err", "max_abs_err", ".1e"),
              ("max err vs fp32", "max_abs_err_vs_fp32", ".1e"), ("note", "note", "")]
LEAD = [("case", "case", ""), ("contender", "contender", ""), ("dtype", "dtype", "")]  # dtype: half runs only
COLUMNS = {
    "attention": COLS_RATE + [("GFLOP/s", "gflops", ".1f"), ("% sgemm", "pct_sgemm", ".0f")] + COLS_RATIO,
    "linear": COLS_RATE + [("GFLOP/s", "gflops", ".1f"), ("% sgemm", "pct_sgemm", ".0f")] + COLS_RATIO,
    "decode": COLS_RATE + [("GB/s K+V", "gbps", ".1f"), ("% copy", "pct_copy", ".0f"),
                           ("GFLOP/s", "gflops", ".1f")] + COLS_RATIO,
    "memory": [("peak MiB above in+out", "peak_mib", ".1f"), ("limit MiB", "limit_mib", ""),
               ("cold call ms", "median_ms", "ms"), ("GFLOP/s", "gflops", ".1f"), ("note", "note", "")],
    # the model suite's rows come from attnkit.bench.models; every key goes to the JSON, these to the table
    "model": COLS_RATE + [("tokens/s", "tokens_per_s", ".1f")] + COLS_RATIO[:-1]
    + [("max err vs torch", "max_abs_err_vs_torch", ".1e")] + COLS_RATIO[-1:],
}
for _suite in COLUMNS:
    COLUMNS[_suite] = LEAD + COLUMNS[_suite]
TITLES = {
    "attention": "attention (fp32; vs numpy = speedup over the oracle, vs torch = torch time / attnkit time)",
    "decode": "decode (Lq = 1 over a KV cache; GB/s of K+V read, % of np.copyto bandwidth)",
    "linear": "linear (x @ w.T; NumPy x @ w.T, torch.nn.functional.linear)",
    "memory": "memory (peak RSS above inputs and output, one cold call per child process)",
    "model": "model (rows from attnkit.bench.models.run_model_suite; vs numpy, vs torch and max err as in attention)",
}
HALF_TITLE = ("{suite} in {dtype} (attnkit and torch in {dtype}, attnkit fp32 on the same rounded inputs; vs fp32 = "
              "attnkit fp32 time / contender time, vs torch = torch time / attnkit time, max err vs fp32 = "
              "max |out - attnkit fp32's out|{extra})")


def parse_args(argv=None) -> argparse.Namespace:
    try:
        default_threads = len(os.sched_getaffinity(0))
    except AttributeError:
        default_threads = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m attnkit.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small representative subset of each suite (< 1 min)")
    p.add_argument("--suite", default="all",
                   help="comma-separated: attention,decode,linear,memory,model or all (default all)")
    p.add_argument("--threads", type=int, default=default_threads,
                   help=f"threads for every contender (default: CPUs available to this process, {default_threads})")
    p.add_argument("--isa", help="force attnkit's kernel path (attnkit.set_isa): avx512_bf16, avx512, avx2, generic")
    p.add_argument("--dtype", choices=("float32",) + suites.HALF_DTYPES, default="float32",
                   help="float16 or bfloat16: attnkit in that dtype against attnkit float32 and PyTorch in that "
                        f"dtype, suites {','.join(suites.HALF_SUITES)} (default float32)")
    p.add_argument("--quantize", choices=("int8", "int4"),
                   help="quantized rows of the linear and model suites: attnkit int8/int4 weights against attnkit "
                        "float32, PyTorch (dynamic int8) and, when installed, CTranslate2 int8 and ONNX Runtime "
                        "quantize_dynamic (attnkit/bench/quant.py)")
    p.add_argument("--json", metavar="PATH", help="write all rows, machine info and ceilings as JSON")
    p.add_argument("--plot", metavar="PATH", help="PNG of GFLOP/s by sequence length per contender (matplotlib)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when importable")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: attnkit's CUDA kernels against PyTorch on the GPU (attnkit/bench/cuda.py)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # toy sizes, for the smoke test
    a = p.parse_args(argv)
    half = a.dtype != "float32"
    known = suites.HALF_SUITES if half else suites.SUITE_NAMES
    if a.quantize:
        if half:
            p.error("--quantize runs float32 activations; it does not combine with --dtype")
        known = ("linear", "model")
    names = list(known) if a.suite == "all" else [s.strip() for s in a.suite.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if half and unknown and all(s in suites.SUITE_NAMES for s in unknown):
        p.error(f"suite {unknown} has no --dtype {a.dtype} cases (it has: {','.join(known)})")
    if unknown or a.threads < 1:
        p.error(f"unknown suite {unknown}" if unknown else "--threads must be >= 1")
    a.suites = names
    if a.plot:  # check before the run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib, which is not installed: pip install matplotlib "
                    "(or attnkit's bench extra: pip install 'attnkit[bench]')")
    return a


def header(opts, machine: dict, ceil: dict) -> str:
    ak, cpu = machine["attnkit"], machine["cpu"]
    lines = [f"attnkit.bench  {'quick' if opts.quick else 'full'}  threads={opts.threads}  "
             + (f"dtype={opts.dtype}  " if opts.half else "") + f"contenders={','.join(opts.contenders)}",
             f"attnkit    {ak.get('version')}  isa={ak.get('isa')}  usable={ak.get('usable_isas')}  "
             f"compiled={ak.get('compiled_isas')}  threads={ak.get('num_threads')}",
             f"CPU        {cpu['model']}  ({cpu['logical_cpus']} logical CPUs; flags: {' '.join(cpu['flags']) or '-'};"
             f" avx512f {'yes' if 'avx512f' in cpu['flags'] else 'no'}, amx {'yes' if 'amx_tile' in cpu['flags'] else 'no'})",
             f"Python     {machine['python']}  NumPy {machine['numpy']}"]
    for b in machine["threadpools"]:
        lines.append(f"  {b['user_api']:<8} {b['internal_api']} {b.get('version') or ''}  "
                     f"kernel={b.get('architecture') or '-'}  threads={b['num_threads']}")
    if not machine["threadpools"]:
        lines.append("  (threadpoolctl not installed: NumPy's BLAS kernel and threads unknown)")
    if "torch" in machine:
        lines.append(f"PyTorch    {machine['torch']['version']}  threads={machine['torch']['threads']}")
    lines.append(f"ceilings   NumPy sgemm {ceil['sgemm_size']}^3: {ceil['sgemm_gflops']:.1f} GFLOP/s "
                 f"(best of {ceil.get('sgemm_runs', '?')}, median {ceil.get('sgemm_spread_pct', 0):+.0f}% slower)   "
                 f"np.copyto {ceil['copy_mib']} MiB (read+write bytes): {ceil['copy_gbps']:.1f} GB/s "
                 f"(best of {ceil.get('copy_runs', '?')}, median {ceil.get('copy_spread_pct', 0):+.0f}% slower)")
    lines.append("           % of sgemm compares a kernel's median with this best case; a kernel above 100% does "
                 "work sgemm cannot skip less of (causal tiles) or beats NumPy's BLAS, within the spread")
    return "\n".join(lines)


def model_suite(opts: suites.Options) -> tuple[list[dict], str | None]:
    """(rows, note) of attnkit.bench.models.model_suite, imported here (the models module imports suites, so
    suites cannot import it); the note says why the suite was skipped when that import fails."""
    try:
        from attnkit.bench.models import model_suite as run
    except Exception as e:  # ImportError, or anything its imports raise
        return [], f"model suite skipped: cannot import attnkit.bench.models ({e})"
    return run(opts), None


def result_rows(case: suites.Case, res: dict, ceil: dict, opts: suites.Options) -> list[dict]:
    """One flat row per contender: times, rates, % of the ceilings, ratios, error vs the oracle (or, in a
    half-precision run, vs attnkit fp32)."""
    ratios = harness.compare(res, **suites.compare_keys(opts))
    rows = []
    for c, r in res.items():
        dtype = suites.contender_dtype(c, opts.dtype)
        # case.bytes counts the run's dtype; a float32 baseline reads (itemsize ratio) times as many
        nbytes = case.bytes * suites.np_dtype(dtype).itemsize / suites.np_dtype(opts.dtype).itemsize
        row = {"suite": case.suite, "case": case.name, "contender": c, "dtype": dtype, **case.params,
               "flops": case.flops, "bytes": nbytes or None, "sweep": case.sweep}
        row.update({k: v for k, v in r.items() if k != "out"})
        ms = r.get("median_ms")
        if ms:
            row["gflops"] = case.flops / ms / 1e6
            row["pct_sgemm"] = 100 * row["gflops"] / ceil["sgemm_gflops"]
            if nbytes:
                row["gbps"] = nbytes / ms / 1e6
                row["pct_copy"] = 100 * row["gbps"] / ceil["copy_gbps"]
        row.update(ratios[c])
        rows.append(row)
    return rows


def run_timed(case, opts, prog, ceil) -> list[dict]:
    todo = [c for c in opts.contenders if c not in case.skip]
    res = {c: {"note": f"skipped: {case.skip[c]}"} for c in opts.contenders if c in case.skip}
    fns, _ = suites.make_fns(case.kind, case.params, todo, opts.dtype)
    res.update(harness.measure_contenders(fns, opts.budget, opts.min_repeats,
                                          lambda c: prog.step(f"{case.suite}: {case.name} [{c}]")))
    for c in case.skip:
        prog.step(f"{case.suite}: {case.name} [{c}: skipped]")
    return result_rows(case, {c: res[c] for c in opts.contenders}, ceil, opts)


def run_memory(case, opts, prog, ceil) -> list[dict]:
    res = {}
    for c in opts.contenders:
        prog.step(f"memory: {case.name} [{c}]")
        if c in case.skip:
            res[c] = {"note": f"skipped: {case.skip[c]}"}
            continue
        spec = {"kind": case.kind, "params": case.params, "contender": c, "threads": opts.threads, "isa": opts.isa}
        r = harness.run_child(spec)
        if "error" in r:
            res[c] = {"note": r["error"]}
            continue
        res[c] = {"median_ms": r["seconds"] * 1e3, "min_ms": r["seconds"] * 1e3, "runs": 1,
                  "peak_mib": r["peak_extra_bytes"] / harness.MiB}
    rows = result_rows(case, res, ceil, opts)
    limit = case.params.get("limit_mib")
    for row in rows:
        row.pop("limit_mib", None)
        if limit and row["contender"] == "attnkit" and "peak_mib" in row:
            row["limit_mib"] = limit
            row["note"] = f"within {limit} MiB" if row["peak_mib"] <= limit else f"OVER the {limit} MiB limit"
    return rows


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.device == "cuda":
        from .cuda import main as cuda_main
        return cuda_main(quick=a.quick, json_path=a.json)
    for var in THROTTLE_VARS:
        if os.environ.get(var):
            print(f"WARNING: {var}={os.environ[var]} is set. NumPy is throttled: unset OPENBLAS_CORETYPE and "
                  f"OPENBLAS_L2_SIZE for this command to compare fairly", file=sys.stderr)
            break
    import attnkit
    with_torch = not a.no_torch and suites.torch_available()
    if a.dtype != "float32":
        contenders = suites.half_contenders(with_torch)
    else:
        contenders = ["attnkit", "numpy"] + (["torch"] if with_torch else [])
    opts = suites.Options(quick=a.quick, tiny=a.tiny, threads=a.threads, isa=a.isa, contenders=tuple(contenders),
                          dtype=a.dtype)
    try:
        suites.configure(opts.threads, opts.isa, contenders)
    except ValueError as e:
        print(f"error: {e} (usable: {attnkit.get_config().get('usable_isas')})", file=sys.stderr)
        return 2
    machine = {"attnkit": attnkit.get_config(), "cpu": harness.cpu_info(), "python": platform.python_version(),
               "numpy": np.__version__, "threadpools": harness.blas_info(),
               "env": {v: os.environ.get(v) for v in THROTTLE_VARS + ("ATTNKIT_ISA",) if os.environ.get(v)}}
    if "torch" in contenders:
        import torch
        machine["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}

    if a.quantize:
        return run_quantized(a, opts, machine)
    cases = {s: suites.SUITES[s](opts) for s in a.suites if s != "model"}
    n = len(contenders)
    prog = harness.Progress(1 + n * sum(len(c) for c in cases.values()) + ("model" in a.suites))
    t_start = time.perf_counter()
    prog.step("ceilings: NumPy sgemm and np.copyto")
    ceil = harness.ceilings(256 if opts.tiny else 2048, (8 if opts.tiny else 256) << 20, 2 * opts.budget)
    prog.close()
    print(header(opts, machine, ceil), flush=True)

    rows, notes, seconds = [], [], {}
    for suite in a.suites:
        t0 = time.perf_counter()
        if suite == "model":
            prog.step("model suite")
            try:
                got, note = model_suite(opts)
            except Exception as e:
                got, note = [], f"model suite failed: {type(e).__name__}: {e}"
            if note:
                notes.append(note)
            new = got
        else:
            run = run_memory if suite == "memory" else run_timed
            new = [row for case in cases[suite] for row in run(case, opts, prog, ceil)]
        seconds[suite] = time.perf_counter() - t0
        rows += new
        prog.close()
        if new:
            cols = [c for c in COLUMNS[suite] if any(c[1] in r for r in new) and (opts.half or c[1] != "dtype")]
            title = TITLES[suite] if not opts.half else HALF_TITLE.format(
                suite=suite, dtype=opts.dtype, extra="; GB/s of K+V in each contender's dtype" if suite == "decode" else "")
            print(f"\n{title}  [{seconds[suite]:.1f} s]\n{table(cols, new)}", flush=True)

    elapsed = time.perf_counter() - t_start
    if any(r.get("contender") == "numpy" and str(r.get("note", "")).startswith("skipped") for r in rows):
        notes.append("'-' for numpy: the oracle was skipped there (see note: too slow for --quick, or too much memory)")
    for note in notes:
        print(f"note: {note}")
    print(f"total {elapsed:.1f} s")
    if a.json:
        doc = {"argv": sys.argv[1:] if argv is None else list(argv), "quick": opts.quick, "threads": opts.threads,
               "isa": opts.isa, "dtype": opts.dtype, "suites": a.suites, "machine": machine, "ceilings": ceil, "rows": rows,
               "notes": notes, "suite_seconds": seconds, "elapsed_s": elapsed}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"JSON written to {a.json}")
    if a.plot:
        print(harness.plot(rows, a.plot, ceil["sgemm_gflops"],
                           f"{machine['cpu']['model']}, {opts.threads} threads, attnkit isa={machine['attnkit'].get('isa')}"))
    return 0


QUANT_COLS = LEAD[:2] + [("median ms", "median_ms", "ms"), ("runs", "runs", ""), ("ms/token", "ms_per_token", ".2f"),
                          ("vs fp32", "speedup_vs_fp32", ".2fx"), ("vs torch int8", "ratio_vs_torch_int8", ".2fx"),
                          ("vs ct2", "ratio_vs_ctranslate2", ".2fx"), ("vs ort", "ratio_vs_onnxruntime", ".2fx"),
                          ("vs int8", "speedup_vs_int8", ".2fx"), ("max err vs fp32", "max_abs_err_vs_fp32", ".1e"),
                          ("note", "note", "")]


def run_quantized(a, opts, machine) -> int:
    """python -m attnkit.bench --quantize int8|int4: the quantized linear and model rows (bench/quant.py)."""
    from attnkit.bench import quant
    t_start = time.perf_counter()
    print(f"attnkit.bench --quantize {a.quantize}  threads={opts.threads}  isa={machine['attnkit'].get('isa')}  "
          f"CPU {machine['cpu']['model']}", flush=True)
    rows, seconds = [], {}
    for suite in a.suites:
        t0 = time.perf_counter()
        new = quant.linear_rows(opts, a.quantize) if suite == "linear" else quant.model_rows(opts, a.quantize)
        seconds[suite] = time.perf_counter() - t0
        rows += new
        cols = [c for c in QUANT_COLS if any(c[1] in r for r in new)]
        print(f"\n{suite} {a.quantize} (vs fp32 = attnkit float32 time / contender time; vs ct2, vs ort, vs torch "
              f"int8 = engine time / attnkit time, the engines in int8)  [{seconds[suite]:.1f} s]\n{table(cols, new)}",
              flush=True)
    elapsed = time.perf_counter() - t_start
    print(f"total {elapsed:.1f} s")
    if a.json:
        doc = {"argv": sys.argv[1:], "quantize": a.quantize, "threads": opts.threads, "suites": a.suites,
               "machine": machine, "rows": rows, "suite_seconds": seconds, "elapsed_s": elapsed}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"JSON written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
