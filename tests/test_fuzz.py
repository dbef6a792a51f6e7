"""Fuzzing the public functions (issue 11, item 6).

1) A property-based differential test: scaled_dot_product_attention against PyTorch (computing in
   float64) across the argument space -- batch shapes with size-0 dims, layouts, bool and float masks
   of every broadcast shape, both causal alignments, GQA, kv_lengths, float32/float64, huge mask values.
2) Every (op, argument, layout class) of the layout matrix (test_layouts.py) at random sizes (log-uniform
   up to hundreds of rows: reversed rows with many rows included), dtypes and CPU paths, each pair hit on
   every run; ATTNKIT_FUZZ_ROUNDS=20 (say) for a longer hunt, ATTNKIT_FUZZ_SEED for other draws.
3) A bad-input fuzz run in child processes: a valid call with one argument replaced by a bad value
   must raise TypeError/ValueError/MemoryError naming that argument -- and never crash the process.
Bounded (hypothesis profile; FUZZ_CASES per child) so CI stays short.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, strategies as st

import attnkit
import test_layouts
from conftest import as64, assert_close, laid_out, seed_for
from layouts import ALL_INPUT_CLASSES, input_view

FUZZ_CASES = int(os.environ.get("ATTNKIT_FUZZ_CASES", "400"))
FUZZ_ROUNDS = int(os.environ.get("ATTNKIT_FUZZ_ROUNDS", "1"))
FUZZ_SEED = int(os.environ.get("ATTNKIT_FUZZ_SEED", "0"))


@st.composite
def attention_args(draw):
    batch = tuple(draw(st.sampled_from([0, 1, 2, 3])) for _ in range(draw(st.integers(0, 2))))
    Hk = draw(st.integers(1, 2))
    Hq = Hk * draw(st.sampled_from([1, 2, 3]))
    Lq, Lk = draw(st.sampled_from([0, 1, 2, 5, 17, 64, 130])), draw(st.sampled_from([0, 1, 3, 16, 33, 257]))
    E, Ev = draw(st.sampled_from([1, 8, 17, 64])), draw(st.sampled_from([1, 8, 16, 33]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layout = draw(st.sampled_from(ALL_INPUT_CLASSES))
    mask_kind = draw(st.sampled_from([None, "bool", "float", "huge"]))
    full = batch + (Hq, Lq, Lk)
    mask_shape = tuple(n if draw(st.booleans()) else 1 for n in full[len(full) - draw(st.integers(0, len(full))):])
    causal = draw(st.booleans())
    align = draw(st.sampled_from(["top_left", "bottom_right"]))
    use_lengths = draw(st.booleans()) and len(batch) > 0
    return batch, Hq, Hk, Lq, Lk, E, Ev, dtype, layout, mask_kind, mask_shape, causal, align, use_lengths, \
        draw(st.integers(0, 2**32 - 1))


@given(args=attention_args())
def test_sdpa_matches_torch_across_the_argument_space(args):
    torch = pytest.importorskip("torch")
    batch, Hq, Hk, Lq, Lk, E, Ev, dtype, layout, mask_kind, mask_shape, causal, align, use_lengths, seed = args
    rng = np.random.default_rng(seed)
    q, k, v = (input_view(rng.standard_normal(batch + s).astype(dtype), layout) for s in ((Hq, Lq, E), (Hk, Lk, E), (Hk, Lk, Ev)))
    q, k, v = (laid_out(rng.standard_normal(batch + s).astype(dtype), "strided") if a is None else a
               for a, s in zip((q, k, v), ((Hq, Lq, E), (Hk, Lk, E), (Hk, Lk, Ev))))   # a class of more dims
    kw = dict(is_causal=causal, causal_alignment=align, enable_gqa=Hq != Hk, return_lse=True)
    visible = np.ones(batch + (Hq, Lq, Lk), bool)                     # what torch gets as the mask
    bias = np.zeros(batch + (Hq, Lq, Lk))
    if mask_kind == "bool":
        m = np.asarray(rng.random(mask_shape) < 0.7)
        kw["attn_mask"], visible = m, visible & m
    elif mask_kind in ("float", "huge"):
        m = np.asarray(rng.standard_normal(mask_shape))
        if mask_kind == "huge":
            m = np.where(rng.random(mask_shape) < 0.5, -np.finfo(dtype).max * rng.uniform(0.5, 1, mask_shape), m)
        m = m.astype(dtype)
        kw["attn_mask"], bias = m, bias + m
    if use_lengths:
        lengths = rng.integers(0, Lk + 1, batch)
        kw["kv_lengths"] = lengths
        visible = visible & (np.arange(Lk) < lengths[..., None, None, None])
    if causal:
        i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
        if align == "top_left":
            visible = visible & (j <= i)
        else:                                                          # the last query sees the last real key
            n = lengths[..., None, None, None] if use_lengths else Lk
            visible = visible & (j <= i + n - Lq)
    out, lse = attnkit.scaled_dot_product_attention(q, k, v, **kw)

    t = lambda a: torch.from_numpy(np.ascontiguousarray(as64(a)))
    kk, vv = (np.repeat(as64(a), Hq // Hk, axis=-3) for a in (k, v))
    tmask = torch.from_numpy(np.where(visible, bias, -np.inf))
    want = torch.nn.functional.scaled_dot_product_attention(t(q), t(kk), t(vv), attn_mask=tmask,
                                                            scale=1 / np.sqrt(E)).numpy()
    scores = np.einsum("...qe,...ke->...qk", as64(q), kk) / np.sqrt(E) + np.where(visible, bias, -np.inf)
    want_lse = torch.logsumexp(torch.from_numpy(scores), -1).numpy() if Lk else np.full(scores.shape[:-1], -np.inf)
    none = ~visible.any(-1)                                            # torch: NaN; attnkit: zeros, lse -inf
    want[none] = 0
    want_lse[none] = -np.inf
    assert out.shape == want.shape and out.dtype == dtype
    assert_close(out, want, dtype)
    assert_close(lse, want_lse, dtype, what="lse")


# ---------------------------------------------------------------------------------------------------
# every op x argument x layout class of the matrix, at random sizes, dtypes and paths
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", list(test_layouts.OPS))
def test_random_sizes_in_every_layout_class(op):
    paths = [isa for isa in attnkit.get_config()["usable_isas"]]
    rng = np.random.default_rng(seed_for(f"fuzz-{op}-{FUZZ_SEED}"))
    spec = test_layouts.OPS[op]
    before = attnkit.get_config()["isa"]
    hits = {}
    try:
        for _ in range(FUZZ_ROUNDS):
            for o, target, cls in test_layouts.CASES:
                if o != op:
                    continue
                for _attempt in range(32):              # redraw until the class exists for the drawn ndim
                    size = spec.random_size(rng)
                    dts = getattr(spec, "dtypes", test_layouts.DTYPES)
                    dtype = dts[rng.integers(len(dts))]
                    isa = paths[rng.integers(len(paths))]
                    attnkit.set_isa(isa)
                    arrays = spec.make(size, dtype, rng)
                    try:
                        n = test_layouts.check(op, target, cls, arrays, dtype)
                    except AssertionError as e:
                        raise AssertionError(f"{isa}, size {size} (ATTNKIT_FUZZ_SEED={FUZZ_SEED}): {e}") from None
                    if n is not None:
                        hits[(target, cls)] = hits.get((target, cls), 0) + 1
                        break
    finally:
        attnkit.set_isa(before)
    pairs = {(t, c) for o, t, c in test_layouts.CASES if o == op}
    missed = pairs - set(hits)
    assert not missed, f"{op}: pairs never drawn with a size they exist for: {sorted(missed)}"


# ---------------------------------------------------------------------------------------------------
# bad inputs, in child processes
# ---------------------------------------------------------------------------------------------------
CHILD = textwrap.dedent(r'''
    import json, sys, numpy as np, attnkit
    from numpy.lib.stride_tricks import as_strided
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)

    def bad_arrays(shape):
        return [np.zeros(shape, np.int32), np.zeros(shape, np.complex64), np.zeros(shape, object),
                np.zeros(shape, np.int16), np.zeros(shape + (2, 3, 4, 5, 6, 7), np.float32),
                "array", 3, [["a"]],
                np.zeros((7,) * len(shape), np.float32)]

    def entries():
        q, k, v = f32(2, 4, 5, 8), f32(2, 2, 6, 8), f32(2, 2, 6, 8)
        x, w, b = f32(3, 8), f32(5, 8), f32(5)
        yield "sdpa", attnkit.scaled_dot_product_attention, dict(query=q, key=k, value=v, enable_gqa=True), {
            "query": bad_arrays(q.shape), "key": bad_arrays(k.shape), "value": bad_arrays(v.shape),
            "attn_mask": [np.zeros((3, 3), bool), np.zeros((5, 6), np.int8), "m", np.zeros((2, 4, 5, 6, 2), bool)],
            "scale": [np.ones(2), 2**1100, "x", 1j, -1.0, float("nan"), 0.0, True],
            "kv_lengths": [[1], [[1, 2], [3]], np.array([1.5, 2]), np.array([-1, 2]), np.array([7, 2]), "ab",
                           np.zeros((2, 2), np.int64)],
            "causal_alignment": ["x", 3, np.array(["top_left"]), None],
            "is_causal": ["yes", 2, None], "enable_gqa": ["no", None],
            "out": [np.zeros((2, 4, 5, 8), np.float64), np.zeros((2, 4, 5, 9), np.float32),
                    np.zeros((2, 4, 5, 8), np.float32)[..., ::-1].copy().T, as_strided(np.zeros(64, np.float32),
                    (2, 4, 5, 8), (4, 4, 4, 4)), np.zeros((2, 4, 5, 8), np.float32)[None].repeat(1, 0)[0].__array__().astype(np.int32)],
            "return_lse": ["y", None]}
        yield "linear", attnkit.linear, dict(x=x, weight=w, bias=b), {
            "x": bad_arrays(x.shape), "weight": bad_arrays(w.shape), "bias": bad_arrays(b.shape),
            "activation": ["swish", 3, np.array(["relu"])],
            "out": [np.zeros((3, 5), np.float64), np.zeros((3, 6), np.float32),
                    as_strided(np.zeros(64, np.float32), (3, 5), (4, 4))]}
        yield "softmax", attnkit.softmax, dict(x=x), {
            "x": bad_arrays(x.shape)[:4] + ["a", None], "axis": [5, -9, 1.5, "0", None],
            "mask": [np.zeros((3, 9), bool), np.zeros((3, 8), np.float32), "m"]}
        yield "layer_norm", attnkit.layer_norm, dict(x=x, normalized_shape=8, weight=f32(8), bias=f32(8)), {
            "x": bad_arrays(x.shape)[:4] + ["a", None], "normalized_shape": [None, 4.0, (3,), "8", [None], True],
            "weight": [f32(7), np.zeros(8, np.int32), "w", f32(2, 8)], "bias": [f32(9), np.zeros(8, complex), "b"],
            "eps": [None, "abc", 1j, -1.0, float("nan"), 10**400, np.ones(2)],
            "residual": [f32(3, 9), np.zeros((3, 8), np.int64), "r"], "return_sum": ["yes", None]}
        yield "gelu", attnkit.gelu, dict(x=x), {"x": bad_arrays(x.shape)[:4] + ["a", None],
                                                 "approximate": ["fast", None, 3]}
        yield "relu", attnkit.relu, dict(x=x), {"x": bad_arrays(x.shape)[:4] + ["a", None]}

    table = list(entries())
    counts, problems = {}, []
    for n in range(cases):
        name, fn, good, bad = table[rng.integers(len(table))]
        arg = list(bad)[rng.integers(len(bad))]
        value = bad[arg][rng.integers(len(bad[arg]))]
        kwargs = dict(good, **{arg: value})
        try:
            fn(**kwargs)
            problems.append(f"{name}({arg}={value!r:.60}): accepted")
        except (TypeError, ValueError, MemoryError) as e:
            if arg not in str(e):
                problems.append(f"{name}({arg}={value!r:.60}): {type(e).__name__} does not name {arg!r}: {e}")
        except Exception as e:
            problems.append(f"{name}({arg}={value!r:.60}): {type(e).__name__}: {e}")
        counts[name] = counts.get(name, 0) + 1
    print(json.dumps({"counts": counts, "problems": sorted(set(problems))}))
''')


@pytest.mark.parametrize("seed", range(4))
def test_bad_inputs_raise_errors_naming_the_argument(seed):
    res = subprocess.run([sys.executable, "-c", CHILD, str(seed), str(FUZZ_CASES)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"the child died (exit {res.returncode}):\n{res.stderr[-3000:]}"
    report = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"fuzz seed {seed}: {sum(report['counts'].values())} bad calls {report['counts']}")
    assert not report["problems"], "\n".join(report["problems"][:40])
