"""The oracle checked against independent formulations: per-row Python loops and, where installed,
PyTorch. Needs only NumPy (and torch for the comparisons that say so); never the compiled core."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import CpuBackend, assert_close, laid_out, load_reference, seed_for

ref = load_reference()
F64 = np.float64


# --------------------------------------------------------------------------------------------
# An independent attention: one query row at a time, keys filtered one at a time.
# --------------------------------------------------------------------------------------------
def loop_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, causal_alignment="top_left",
              kv_lengths=None):
    batch, (Hq, Lq, E) = q.shape[:-3], q.shape[-3:]
    Hk, Lk, Ev = k.shape[-3], k.shape[-2], v.shape[-1]
    group = Hq // Hk
    scale = 1 / math.sqrt(E) if scale is None else scale
    mask = None if attn_mask is None else np.broadcast_to(attn_mask, batch + (Hq, Lq, Lk))
    out = np.zeros(batch + (Hq, Lq, Ev))
    lse = np.full(batch + (Hq, Lq), -np.inf)
    for b in np.ndindex(*batch):
        n = Lk if kv_lengths is None else int(np.asarray(kv_lengths)[b])
        for h in range(Hq):
            hk = h // group
            for i in range(Lq):
                logits, rows = [], []
                for j in range(n):
                    last = i if causal_alignment == "top_left" else i + n - Lq
                    if is_causal and j > last:
                        continue
                    x = scale * float(np.dot(q[b + (h, i)], k[b + (hk, j)]))
                    if mask is not None:
                        if mask.dtype == bool:
                            if not mask[b + (h, i, j)]:
                                continue
                        else:
                            x += float(mask[b + (h, i, j)])
                    if x == -math.inf:
                        continue
                    logits.append(x)
                    rows.append(v[b + (hk, j)])
                if not logits:
                    continue
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                total = math.fsum(weights)
                out[b + (h, i)] = sum(w * r for w, r in zip(weights, rows)) / total
                lse[b + (h, i)] = top + math.log(total)
    return out, lse


@st.composite
def small_attention_cases(draw):
    nb = draw(st.integers(0, 2))
    batch = tuple(draw(st.integers(1, 2)) for _ in range(nb))
    Hk = draw(st.integers(1, 2))
    group = draw(st.integers(1, 3))
    Lq, Lk = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    E, Ev = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    is_causal = draw(st.booleans())
    align = draw(st.sampled_from(["top_left", "bottom_right"]))
    use_lengths = draw(st.booleans())
    scale = draw(st.one_of(st.none(), st.floats(0.05, 3.0)))
    seed = draw(st.integers(0, 2**32 - 1))

    rng = np.random.default_rng(seed)
    q = rng.standard_normal(batch + (Hk * group, Lq, E))
    k = rng.standard_normal(batch + (Hk, Lk, E))
    v = rng.standard_normal(batch + (Hk, Lk, Ev))
    target = batch + (Hk * group, Lq, Lk)
    mask = None
    if mask_kind == "bool":
        mask = rng.random(target) < 0.7
    elif mask_kind == "float":
        mask = rng.standard_normal(target)
        mask[rng.random(target) < 0.2] = -np.inf
    lengths = rng.integers(0, Lk + 1, size=batch) if use_lengths else None
    return q, k, v, dict(attn_mask=mask, is_causal=is_causal, scale=scale, causal_alignment=align,
                         kv_lengths=lengths), group > 1


@given(small_attention_cases())
def test_sdpa_matches_row_loop(case):
    q, k, v, kw, gqa = case
    out, lse = ref.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, return_lse=True, **kw)
    want_out, want_lse = loop_sdpa(q, k, v, **kw)
    assert_close(out, want_out, F64)
    assert_close(lse, want_lse, F64, what="lse")


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("Lq,Lk", [(3, 7), (7, 3), (5, 5)], ids=["Lq<Lk", "Lq>Lk", "Lq=Lk"])
def test_causal_alignment_visible_sets(align, Lq, Lk):
    # The visible set written out by hand: top_left is tril(0), bottom_right is tril(Lk - Lq).
    diagonal = 0 if align == "top_left" else Lk - Lq
    allowed = np.tril(np.ones((Lq, Lk), dtype=bool), k=diagonal)
    rng = np.random.default_rng(seed_for(f"align{align}{Lq}{Lk}"))
    q, k, v = (rng.standard_normal((2, L, 4)) for L in (Lq, Lk, Lk))
    got = ref.scaled_dot_product_attention(q, k, v, is_causal=True, causal_alignment=align)
    want = ref.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    np.testing.assert_array_equal(got, want)
    # rows that see nothing are zeros, never NaN
    empty = ~allowed.any(axis=1)
    assert np.all(got[:, empty] == 0) and not np.isnan(got).any()


def test_fully_masked_rows_are_zero_with_lse_minus_inf():
    rng = np.random.default_rng(seed_for("fully_masked"))
    q, k, v = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 5, 3)), rng.standard_normal((1, 5, 2))
    mask = np.ones((4, 5), dtype=bool)
    mask[1] = False
    fmask = np.zeros((4, 5))
    fmask[2] = -np.inf
    out, lse = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_lse=True)
    assert np.all(out[0, 1] == 0) and lse[0, 1] == -np.inf and np.isfinite(lse[0, [0, 2, 3]]).all()
    out, lse = ref.scaled_dot_product_attention(q, k, v, attn_mask=fmask, return_lse=True)
    assert np.all(out[0, 2] == 0) and lse[0, 2] == -np.inf and not np.isnan(out).any()
    out, lse = ref.scaled_dot_product_attention(q, k[:, :0], v[:, :0], return_lse=True)
    assert out.shape == (1, 4, 2) and np.all(out == 0) and np.all(lse == -np.inf)


def test_lse_is_log_of_partition_function():
    rng = np.random.default_rng(seed_for("lse"))
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 4))
    _, lse = ref.scaled_dot_product_attention(q, k, v, scale=0.7, return_lse=True)
    want = np.log(np.exp(0.7 * np.einsum("hie,hje->hij", q, k)).sum(-1))
    assert_close(lse, want, F64)


def test_dtype_is_kept():
    rng = np.random.default_rng(seed_for("dtype"))
    q = rng.standard_normal((2, 3, 4)).astype(np.float32)
    out, lse = ref.scaled_dot_product_attention(q, q, q, return_lse=True)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    for y in (ref.softmax(q), ref.relu(q), ref.gelu(q), ref.gelu(q, "tanh"),
              ref.linear(q, q[0], activation="gelu"), ref.layer_norm(q, 4)):
        assert y.dtype == np.float32


def test_softmax_matches_row_loop():
    rng = np.random.default_rng(seed_for("softmax"))
    x = rng.standard_normal((3, 5, 4))
    mask = rng.random((5, 4)) < 0.6
    mask[2] = False                                          # a fully masked row along the last axis
    for axis in (0, 1, 2, -1):
        for m in (None, mask):
            got = ref.softmax(x, axis=axis, mask=m)
            keep_all = np.moveaxis(np.broadcast_to(True if m is None else m, x.shape), axis, -1)
            xm = np.moveaxis(x, axis, -1)
            want = np.zeros_like(xm)
            for idx in np.ndindex(*xm.shape[:-1]):
                keep = [t for t in range(xm.shape[-1]) if keep_all[idx + (t,)]]
                e = [math.exp(xm[idx + (t,)]) for t in keep]
                for t, w in zip(keep, e):
                    want[idx + (t,)] = w / math.fsum(e)
            assert_close(got, np.moveaxis(want, -1, axis), F64)


def test_softmax_fully_masked_row_and_large_values():
    x = np.array([[1000.0, 1001.0, 999.0], [1.0, 2.0, 3.0]])
    got = ref.softmax(x, mask=np.array([[True, True, True], [False, False, False]]))
    assert np.all(got[1] == 0)
    assert_close(got[0], ref.softmax(x[0] - 1000.0), F64)


def test_gelu_relu_values():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    erf_gelu = [t * 0.5 * (1 + math.erf(t / math.sqrt(2))) for t in x]
    tanh_gelu = [0.5 * t * (1 + math.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))) for t in x]
    assert_close(ref.gelu(x), erf_gelu, F64)
    assert_close(ref.gelu(x, approximate="tanh"), tanh_gelu, F64)
    np.testing.assert_array_equal(ref.relu(x), [0, 0, 0, 0.5, 2.0])
    assert np.isnan(ref.relu(np.array([np.nan])))[0]


def test_layer_norm_matches_loop():
    rng = np.random.default_rng(seed_for("ln"))
    x, r = rng.standard_normal((3, 7)) * 3 + 5, rng.standard_normal((3, 7))
    w, b = rng.standard_normal(7), rng.standard_normal(7)
    y, h = ref.layer_norm(x, (7,), w, b, eps=1e-3, residual=r, return_sum=True)
    for row in range(3):
        vals = [x[row, t] + r[row, t] for t in range(7)]
        mu = math.fsum(vals) / 7
        var = math.fsum((t - mu) ** 2 for t in vals) / 7
        want = [(t - mu) / math.sqrt(var + 1e-3) * w[c] + b[c] for c, t in enumerate(vals)]
        assert_close(y[row], want, F64)
        assert_close(h[row], vals, F64)


# --------------------------------------------------------------------------------------------
# PyTorch, where installed.
# --------------------------------------------------------------------------------------------
@given(small_attention_cases())
def test_sdpa_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    q, k, v, kw, gqa = case
    n = kw.pop("kv_lengths")
    if kw.pop("causal_alignment") == "bottom_right" or n is not None:
        kw["is_causal"] = False                            # torch's is_causal is top_left only
    mask = kw["attn_mask"]
    if kw["is_causal"]:
        Lq, Lk = q.shape[-2], k.shape[-2]
        tri = np.tril(np.ones((Lq, Lk), dtype=bool))
        mask = tri if mask is None else (mask & tri if mask.dtype == bool else np.where(tri, mask, -np.inf))
        kw["is_causal"] = False
    # torch gives NaN for rows that see nothing: compare only rows with something visible
    scores_visible = np.ones(q.shape[:-1] + (k.shape[-2],), dtype=bool)
    if mask is not None:
        scores_visible &= (mask if mask.dtype == bool else np.isfinite(mask))
    live = scores_visible.any(-1)
    want = F.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
        attn_mask=None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)),
        scale=kw["scale"], enable_gqa=gqa).numpy()
    got = ref.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=kw["scale"], enable_gqa=gqa)
    assert_close(got[live], want[live], F64)
    assert np.all(got[~live] == 0)


def test_ops_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(seed_for("torch_ops"))
    x, r = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8))
    w, b = rng.standard_normal((6, 8)), rng.standard_normal(6)
    g, beta = rng.standard_normal(8), rng.standard_normal(8)
    t = torch.from_numpy
    assert_close(ref.softmax(x, axis=1), torch.softmax(t(x), dim=1).numpy(), F64)
    assert_close(ref.gelu(x), F.gelu(t(x)).numpy(), F64)
    assert_close(ref.gelu(x, "tanh"), F.gelu(t(x), approximate="tanh").numpy(), F64)
    assert_close(ref.relu(x), F.relu(t(x)).numpy(), F64)
    for act, tf in [(None, lambda y: y), ("relu", F.relu), ("gelu", F.gelu),
                    ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh"))]:
        assert_close(ref.linear(x, w, b, activation=act), tf(F.linear(t(x), t(w), t(b))).numpy(), F64)
    assert_close(ref.linear(x, w), F.linear(t(x), t(w)).numpy(), F64)
    assert_close(ref.layer_norm(x, 8, g, beta, eps=1e-6, residual=r),
                 F.layer_norm(t(x + r), (8,), t(g), t(beta), eps=1e-6).numpy(), F64)
    assert_close(ref.layer_norm(x, (8,)), F.layer_norm(t(x), (8,)).numpy(), F64)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "causal"])
def test_mha_matches_torch(cross, mask_kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed_for(f"mha{cross}{mask_kind}"))
    B, Lq, E, H = 2, 5, 12, 3
    Lk = 7 if cross else Lq
    x = rng.standard_normal((B, Lq, E))
    mem = rng.standard_normal((B, Lk, E)) if cross else x
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape))))
    W, bW = mha.in_proj_weight.detach().numpy(), mha.in_proj_bias.detach().numpy()
    Wo, bo = mha.out_proj.weight.detach().numpy(), mha.out_proj.bias.detach().numpy()
    keep = None
    if mask_kind == "bool":
        keep = rng.random((Lq, Lk)) < 0.7
        keep[:, 0] = True                                    # no empty rows: torch gives NaN there
    elif mask_kind == "causal":
        keep = np.tril(np.ones((Lq, Lk), dtype=bool))
    t_mask = None if keep is None else torch.from_numpy(~keep)   # torch: True = may NOT attend
    want, _ = mha(torch.from_numpy(x), torch.from_numpy(mem), torch.from_numpy(mem),
                  attn_mask=t_mask, need_weights=False)
    kw = dict(is_causal=True) if mask_kind == "causal" else dict(attn_mask=keep)
    got = ref.multi_head_attention(x, mem, mem, H, W, bW, Wo, bo, **kw)
    assert_close(got, want.detach().numpy(), F64)


def test_mha_gqa_matches_repeated_heads():
    # num_kv_heads < num_heads equals full MHA whose K/V projections repeat each KV head's rows.
    rng = np.random.default_rng(seed_for("mha_gqa"))
    B, L, E, H, Hkv, Dh = 2, 6, 10, 4, 2, 3
    x = rng.standard_normal((B, L, E))
    Wq, Wk, Wv = (rng.standard_normal((n * Dh, E)) for n in (H, Hkv, Hkv))
    bq, bk, bv = (rng.standard_normal(n * Dh) for n in (H, Hkv, Hkv))
    Wo = rng.standard_normal((5, H * Dh))

    def rep(a):  # repeat each KV head's block of Dh rows H // Hkv times
        return np.repeat(a.reshape(Hkv, Dh, *a.shape[1:]), H // Hkv, axis=0).reshape(H * Dh, *a.shape[1:])

    got = ref.multi_head_attention(x, x, x, H, np.concatenate([Wq, Wk, Wv]), np.concatenate([bq, bk, bv]),
                                   Wo, num_kv_heads=Hkv, is_causal=True)
    want = ref.multi_head_attention(x, x, x, H, np.concatenate([Wq, rep(Wk), rep(Wv)]),
                                    np.concatenate([bq, rep(bk), rep(bv)]), Wo, is_causal=True)
    assert_close(got, want, F64)


# --------------------------------------------------------------------------------------------
# The test machinery itself (conftest): layouts are what they say, Backend.call checks what it says,
# and every kernel call in a backend test goes through the backend.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["fortran", "column_major", "interleaved", "strided", "reversed", "rows_reversed"])
def test_laid_out_keeps_values_and_changes_the_layout(layout, rng):
    a = rng.standard_normal((2, 3, 4, 5))
    b = laid_out(a, layout)
    np.testing.assert_array_equal(b, a)
    assert not b.flags.c_contiguous and not np.shares_memory(a, b)


def test_backend_call_checks_inputs_results_and_keeps_identity(rng):
    cpu = CpuBackend("generic")                      # call() itself needs no core: to_device is the identity
    x, y = rng.standard_normal(4), rng.standard_normal(4)

    def writes_first(a, b, out=None):
        a[0] += 1.0
        return b

    with pytest.raises(AssertionError, match="argument 0 was modified"):
        cpu.call(writes_first, x, y)
    with pytest.raises(AssertionError, match="not a NumPy array"):
        cpu.call(lambda a: a.tolist(), y)
    out = np.zeros(4)
    assert cpu.call(lambda a, b, out: np.add(a, b, out=out), y, y, out=out) is out     # out= may be written
    same = []                                                                          # q is k is v stays true

    def records_identity(q, k, v):
        same.append(q is k is v)
        return q

    cpu.call(records_identity, y, y, y)
    cpu.call(records_identity, y.copy(), y, y)
    assert same == [True, False]


KERNELS = {"sdpa", "mha", "scaled_dot_product_attention", "multi_head_attention", "softmax", "linear", "layer_norm",
           "gelu", "relu"}
ORACLES = {"ref", "reference", "R", "torch", "F"}


def test_backend_tests_call_kernels_through_the_backend():
    """A kernel called directly with NumPy arrays inside a test that takes ``backend`` would run on the
    CPU whatever the backend: the only direct calls allowed are the out= tests' (on to_device arrays)."""
    direct = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for fn in ast.parse(path.read_text()).body:
            if not (isinstance(fn, ast.FunctionDef) and any(a.arg == "backend" for a in fn.args.args)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                owner = f.value if isinstance(f, ast.Attribute) else None
                while isinstance(owner, ast.Attribute):                  # torch.nn.functional.x -> torch
                    owner = owner.value
                owner = getattr(owner, "id", None)
                if name in KERNELS and owner not in ORACLES and not any(k.arg == "out" for k in node.keywords):
                    direct.append(f"{path.name}:{node.lineno} {fn.name}: {ast.unparse(node)[:60]}")
    assert not direct, "kernel calls that bypass backend.call:\n" + "\n".join(direct)
