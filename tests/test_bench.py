"""Smoke test of ``python -m attnkit.bench`` on toy sizes (hidden ``--tiny`` flag): runs, prints, writes JSON."""
import json
import subprocess
import sys

import pytest
import numpy as np


def run_bench(*args, timeout=120):
    cmd = [sys.executable, "-m", "attnkit.bench", "--quick", "--tiny", "--threads", "1", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def check_timed_rows(rows, suite, contenders):
    rows = [r for r in rows if r["suite"] == suite]
    assert rows, f"no {suite} rows"
    cases = {r["case"] for r in rows}
    for case in cases:
        assert sorted(r["contender"] for r in rows if r["case"] == case) == sorted(contenders)
    for r in rows:
        assert r["median_ms"] > 0 and r["min_ms"] > 0 and r["min_ms"] <= r["median_ms"], r
        assert r["runs"] >= 1 and r["flops"] > 0 and r["gflops"] > 0 and r["pct_sgemm"] > 0, r
        if r["contender"] != "numpy":
            assert r["speedup_vs_numpy"] > 0, r
            assert r["max_abs_err"] < 1e-3, r  # agrees with the oracle
    return rows


def test_bench_quick_smoke(tmp_path):
    path = tmp_path / "bench.json"
    p = run_bench("--suite", "attention,decode,linear", "--json", str(path))
    assert "median ms" in p.stdout and "GFLOP/s" in p.stdout and "ceilings" in p.stdout
    doc = json.loads(path.read_text())
    assert doc["threads"] == 1 and doc["suites"] == ["attention", "decode", "linear"]
    assert doc["ceilings"]["sgemm_gflops"] > 0 and doc["ceilings"]["copy_gbps"] > 0
    assert doc["machine"]["attnkit"]["num_threads"] == 1
    assert "isa" in doc["machine"]["attnkit"] and doc["machine"]["cpu"]["model"]
    contenders = ["attnkit", "numpy"] + (["torch"] if "torch" in doc["machine"] else [])
    att = check_timed_rows(doc["rows"], "attention", contenders)
    assert {r["causal"] for r in att} == {False, True}
    assert any(r["Lq"] != r["Lk"] for r in att)  # cross attention
    dec = check_timed_rows(doc["rows"], "decode", contenders)
    assert all(r["Lq"] == 1 and r["gbps"] > 0 and r["pct_copy"] > 0 for r in dec)
    check_timed_rows(doc["rows"], "linear", contenders)
    if "torch" in doc["machine"]:
        assert all(r["ratio_vs_torch"] > 0 for r in doc["rows"] if r["contender"] == "attnkit")


def test_bench_memory_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path, png = tmp_path / "bench.json", tmp_path / "bench.png"
    run_bench("--suite", "attention,memory", "--no-torch", "--json", str(path), "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [r for r in json.loads(path.read_text())["rows"] if r["suite"] == "memory"]
    assert sorted(r["contender"] for r in rows) == ["attnkit", "numpy"]
    for r in rows:
        assert r["peak_mib"] >= 0 and r["median_ms"] > 0, r
    assert rows[0]["limit_mib"] == 64


def test_bench_rejects_unknown_suite():
    p = subprocess.run([sys.executable, "-m", "attnkit.bench", "--suite", "nope"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown suite" in p.stderr


def test_plot_without_matplotlib_fails_before_the_run(tmp_path):
    # a child where importing matplotlib fails: --plot must say so at once, not after the benchmark
    import subprocess, sys, time
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from attnkit.bench.__main__ import main\n"
            f"main(['--plot', {str(tmp_path / 'x.png')!r}, '--tiny', '--suite', 'attention'])")
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "matplotlib" in res.stderr and "pip install" in res.stderr
    assert "attention" not in res.stdout                     # no benchmark ran
    assert time.perf_counter() - start < 20


def test_bench_half_precision(tmp_path):
    # --dtype bfloat16: attnkit in bfloat16 against attnkit float32 (same rounded inputs) and torch in bfloat16
    path = tmp_path / "bench.json"
    p = run_bench("--dtype", "bfloat16", "--json", str(path))
    assert "dtype=bfloat16" in p.stdout and "bfloat16" in p.stdout and "vs fp32" in p.stdout
    doc = json.loads(path.read_text())
    assert doc["dtype"] == "bfloat16" and doc["suites"] == ["attention", "decode", "linear", "model"]
    contenders = ["attnkit", "attnkit fp32"] + (["torch"] if "torch" in doc["machine"] else [])
    rows = doc["rows"]
    for suite in doc["suites"]:
        mine = [r for r in rows if r["suite"] == suite]
        assert mine, f"no {suite} rows"
        for case in {r["case"] for r in mine}:
            # the Llama rows also time transformers in float32 ("torch fp32")
            extra = ["torch fp32"] if case.startswith("llama") and "torch" in contenders else []
            assert sorted(r["contender"] for r in mine if r["case"] == case) == sorted(contenders + extra)
        for r in mine:
            assert r["median_ms"] > 0, r
            assert r["dtype"] == ("float32" if r["contender"] in ("attnkit fp32", "torch fp32") else "bfloat16"), r
            if r["contender"] == "attnkit" and r["case"].startswith("llama") and "torch" in contenders:
                assert r["ratio_vs_torch_fp32"] > 0 and r["ratio_vs_torch"] > 0, r
            if r["contender"] not in ("attnkit fp32", "torch fp32"):
                assert r["speedup_vs_fp32"] > 0, r
                # bfloat16 against float32 on the same rounded inputs: bfloat16 output rounding and a few ulps
                assert 0 <= r["max_abs_err_vs_fp32"] < 0.1, r
    dec = {r["contender"]: r for r in rows if r["suite"] == "decode"}
    assert dec["attnkit fp32"]["bytes"] == 2 * dec["attnkit"]["bytes"]  # GB/s of K+V in each contender's dtype


def test_bench_half_precision_rejects_memory_suite():
    p = subprocess.run([sys.executable, "-m", "attnkit.bench", "--dtype", "float16", "--suite", "memory"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no --dtype float16 cases" in p.stderr


# ---------------------------------------------------------------- optional engines in the model suite (issue 8)
@pytest.fixture(scope="module")
def engine_rows():
    """The model suite's BERT and GPT-2-small rows at toy sizes (``tiny``), with every installed engine."""
    torch = pytest.importorskip("torch", reason="the engines' models are built from torch + transformers")
    pytest.importorskip("transformers", reason="the engines' models are built from torch + transformers")
    import numpy as np
    from attnkit.bench import models, suites
    opts, rng = suites.Options(tiny=True, quick=True, threads=1), np.random.default_rng(0)
    return models._bert_rows(torch, opts, rng), models._gpt2_small_rows(torch, opts, rng)


@pytest.mark.parametrize("engine", ["onnxruntime", "ctranslate2"])
def test_engine_rows_agree_with_attnkit(engine_rows, engine):
    pytest.importorskip(engine, reason=f"{engine} not installed: the model suite leaves it out")
    bert, gpt2 = engine_rows
    ours = next(r for r in bert if r["contender"] == "attnkit")
    theirs = next(r for r in bert if r["contender"] == engine)
    assert theirs["median_ms"] > 0 and theirs["version"].startswith(engine), theirs
    assert theirs["max_abs_err_vs_attnkit"] < 1e-4, theirs          # same weights, same output
    assert ours[f"ratio_vs_{engine}"] > 0 and "max |diff| vs attnkit" in theirs["note"]
    ours = next(r for r in gpt2 if r["contender"] == "attnkit" and "greedy" in r["case"])
    theirs = next(r for r in gpt2 if r["contender"] == engine)      # ONNX Runtime: exported prompt + step graphs
    assert theirs["same_tokens_as_attnkit"] and theirs["tokens_per_s"] > 0, theirs
    assert ours[f"ratio_vs_{engine}"] > 0


def test_engines_left_out_when_not_importable(monkeypatch):
    import sys
    from attnkit.bench import engines
    for engine in engines.ENGINES:
        monkeypatch.setitem(sys.modules, engine, None)   # import raises ImportError
    fns, skipped = engines.bert_engines({}, None, 1)
    assert fns == {} and set(skipped) == set(engines.ENGINES)
    assert all("not installed" in why or "torch and transformers" in why for why in skipped.values()), skipped


# ---------------------------------------------------------------- the package's import graph (issue 19)
def bench_imports(root=None):
    """{module: modules of attnkit.bench it imports}, read from the source (imports inside functions too)."""
    import ast
    import pathlib

    if root is None:
        import attnkit.bench
        root = pathlib.Path(attnkit.bench.__file__).parent
    mods = {p.stem for p in root.glob("*.py")} - {"__init__"}
    graph = {}
    for m in mods:
        deps = set()
        for node in ast.walk(ast.parse((root / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or base == "attnkit.bench":  # from . import x / from attnkit.bench import x
                    deps |= {a.name for a in node.names} if not base or base == "attnkit.bench" else {base}
                if base.startswith("attnkit.bench."):
                    deps.add(base.split(".")[2])
                if node.level == 1 and base:
                    deps.add(base.split(".")[0])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("attnkit.bench.")}
        graph[m] = (deps & mods) - {m}
    return graph


def import_circle(graph):
    """A path of modules that closes a circle in graph, or None (depth-first search)."""
    state = {}

    def visit(m, path):
        if state.get(m) == "open":
            return path + [m]
        if state.get(m) is None:
            state[m] = "open"
            for d in sorted(graph[m]):
                found = visit(d, path + [m])
                if found:
                    return found
            state[m] = "done"
        return None

    return next((c for c in (visit(m, []) for m in sorted(graph)) if c), None)


def test_import_circle_finds_a_circle():
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_bench_modules_import_in_one_direction():
    graph = bench_imports()
    assert graph["models"] >= {"suites", "llama"} and "suites" in graph["llama"], graph  # the parser sees imports
    circle = import_circle(graph)
    assert circle is None, f"import circle in attnkit.bench: {' -> '.join(circle)}"
def test_translation_rows_tiny():
    """The model suite's translation rows (issue 18) at toy sizes: attnkit decodes the tokens transformers
    decodes (greedy and 4 beams), and the step-cost row is there."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from attnkit.bench import suites, translation
    rows = translation.translation_rows(torch, suites.Options(tiny=True, threads=1), np.random.default_rng(0))
    ours = [r for r in rows if r["contender"] == "attnkit" and "translate" in r["case"]]
    assert len(ours) == 2 and all(r["same_tokens"] and r["ratio_vs_torch"] > 0 for r in ours), ours
    step = [r for r in rows if "decoding step" in r["case"]]
    assert len(step) == 1 and step[0]["step_ratio_64_vs_8"] > 0
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return
    ct2 = [r for r in rows if r["contender"] == "ctranslate2"]
    assert len(ct2) == 2 and all(r["median_ms"] > 0 and r["same_tokens_as_attnkit"] for r in ct2), ct2


@pytest.mark.parametrize("qdtype", ["int8", "int4"])
def test_bench_quantized(tmp_path, qdtype):
    """--quantize: the quantized linear rows (toy sizes) against attnkit float32, with their ratio and error."""
    path = tmp_path / "bench.json"
    p = run_bench("--quantize", qdtype, "--suite", "linear", "--json", str(path), timeout=300)
    assert f"--quantize {qdtype}" in p.stdout and "vs fp32" in p.stdout
    doc = json.loads(path.read_text())
    assert doc["quantize"] == qdtype
    rows = [r for r in doc["rows"] if r["suite"] == "linear"]
    ours = [r for r in rows if r["contender"] == "attnkit"]
    assert ours and all(r["speedup_vs_fp32"] > 0 and 0 < r["max_abs_err_vs_fp32"] < 0.5 for r in ours), ours
    assert {"attnkit", "attnkit fp32"} <= {r["contender"] for r in rows}
