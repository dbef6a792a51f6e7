"""The layout matrix (issue 16): every public op that takes arrays, every argument, every layout class
NumPy can produce (tests/layouts.py: contiguous, Fortran, each axis reversed, rows reversed, every
other row, every other element, broadcast zero strides, an offset view, a transposed batch), and for
``out=`` the writable classes with a check that nothing outside the view changed -- on every CPU path
this machine runs, every dtype, against the float64 oracle.

Enumerated, not sampled. The cost is kept down by a covering design: each test (op, argument, class,
path) walks the op's list of sizes, which straddles each blocking boundary of each path (rows 1, 3,
4, 5 (dot products up to 4 rows), 6-9 and 12-17 (micro-tiles of 6 and 8 rows), 31-33, 191-193 (the
192-row GEMM block); attention rows around the 4-row decode path, the 64/128-row blocks and key
tiles; row lengths around 4, 8, 16 lanes), with two of the four dtypes per size in rotation, so each
dtype meets sizes on both sides of every boundary and no class is left untried past one.
"""
from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit import reference as ref
from conftest import BACKENDS, CpuBackend, on_cpu_path, assert_close, dtype_name, seed_for
from test_quant import QPATHS
from layouts import assert_untouched_outside, input_classes, input_view, output_classes, output_view

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
ACTS = [None, "relu", "gelu", "gelu_tanh"]


def wide(a):
    """The float64 copy the oracle runs on (bool and integer arrays stay as they are)."""
    if a is None:
        return None
    a = np.asarray(a)
    return a if a.dtype == bool or a.dtype.kind in "iu" else a.astype(np.float64)


def dtypes_for(i, op=None):
    """Two of the op's dtypes (all four, or those it computes in) for the i-th size, in rotation."""
    dts = getattr(OPS[op], "dtypes", DTYPES) if op else DTYPES
    return dts[i % len(dts)], dts[(i + len(dts) // 2) % len(dts)]


# The CPU paths: the float kernels' (the backend fixture's), and for the quantized op the quantized
# GEMM's own levels (avx_vnni, avx512_vnni and amx_int8 run the float kernels of avx2 / avx512).
FLOAT_PATHS = [b.isa for b in BACKENDS if isinstance(b, CpuBackend)]
QUANT_PATHS = QPATHS


@pytest.fixture
def cpu_path(request):
    with on_cpu_path(request.param) as b:
        yield b


# ---------------------------------------------------------------------------------------------
# The ops. Each: sizes (a list of dicts), make(size, dtype, rng) -> the arguments (contiguous
# arrays and options), run(args) -> result, want(args) -> (expected, error scale or None), and
# out_shape(args) for the ops that take out=.
# ---------------------------------------------------------------------------------------------
class Op:
    sizes: list = []
    out = False                                   # takes out=
    against = "oracle"                            # the tolerance column: one kernel against the oracle

    def make(self, size, dtype, rng):
        raise NotImplementedError

    def random_size(self, rng):
        """A size drawn at random (the fuzz), of the kind ``sizes`` lists."""
        raise NotImplementedError

    def run(self, a, out=None):
        raise NotImplementedError

    def want(self, a):
        raise NotImplementedError

    def assert_result(self, got, want, scale, dtype, laid, what):
        """got against the oracle's want (the dtype's tolerance, error measured against scale)."""
        assert got.dtype == np.dtype(dtype), what
        assert_close(got, want, dtype, against=self.against, scale=scale, what=what)


def _loguniform(rng, hi):
    """An int in [1, hi], log-uniform: small sizes as often as large ones."""
    return int(np.exp(rng.uniform(0, np.log(hi + 1))))


def _random_lead(rng, hi=400):
    m = _loguniform(rng, hi)
    return (m,) if rng.random() < 0.6 else (int(rng.integers(1, 4)), max(1, m // 3))


def _rows_sizes():
    """Leading shapes of x: rows around every GEMM boundary, and batched (3-d) shapes."""
    flat = [1, 3, 4, 5, 6, 7, 8, 9, 12, 13, 15, 16, 17, 31, 32, 33, 191, 192, 193]
    batched = [(2, 1), (2, 2), (3, 3), (2, 4), (2, 5), (3, 5), (2, 8), (2, 9), (2, 16), (3, 11), (2, 17), (2, 96), (2, 97)]
    return [(m,) for m in flat] + batched


class Linear(Op):
    out = True
    Ks = [1, 7, 9, 33, 520]
    Ns = [1, 3, 5, 17, 33, 65, 4]

    def __init__(self, packed=False):
        self.packed = packed
        self.sizes = [dict(lead=lead, K=self.Ks[i % 5], N=self.Ns[i % 7], act=ACTS[i % 4], bias=i % 3 != 2)
                      for i, lead in enumerate(_rows_sizes())]

    def make(self, s, dtype, rng):
        a = dict(x=rng.standard_normal(s["lead"] + (s["K"],)).astype(dtype),
                 weight=rng.standard_normal((s["N"], s["K"])).astype(dtype))
        if s["bias"]:
            a["bias"] = rng.standard_normal(s["N"]).astype(dtype)
        a["activation"] = s["act"]
        return a

    def random_size(self, rng):
        return dict(lead=_random_lead(rng), K=_loguniform(rng, 600), N=_loguniform(rng, 130),
                    act=ACTS[rng.integers(4)], bias=bool(rng.integers(2)))

    def run(self, a, out=None):
        w = attnkit.pack_linear(a["weight"]) if self.packed else a["weight"]
        return attnkit.linear(a["x"], w, a.get("bias"), activation=a["activation"], out=out)

    def want(self, a):
        x, w, b = wide(a["x"]), wide(a["weight"]), wide(a.get("bias"))
        scale = 1.13 * (np.abs(x) @ np.abs(w).T + (0 if b is None else np.abs(b)))
        return ref.linear(x, w, b, activation=a["activation"]), scale

    def out_shape(self, a):
        return a["x"].shape[:-1] + (a["weight"].shape[0],)


class QuantLinear(Linear):
    """linear with a quantized weight (quantize_linear): int8, or int4 in groups of 32, in rotation;
    float32 and bfloat16 activations (the quantized GEMM's), held under the quantization-step bound
    of tests/test_quant.py, element by element."""
    dtypes = (np.float32, ml_dtypes.bfloat16)

    def make(self, s, dtype, rng):
        a = super().make(s, dtype, rng)
        a["weight"] = a["weight"].astype(np.float32)
        if "bias" in a:
            a["bias"] = a["bias"].astype(np.float32)
        a["qdtype"] = ("int8", "int4")[s["K"] % 2]
        return a

    def run(self, a, out=None):
        q = attnkit.quantize_linear(a["weight"], dtype=a["qdtype"], group_size=32 if a["qdtype"] == "int4" else None)
        return attnkit.linear(a["x"], q, a.get("bias"), activation=a["activation"], out=out)

    def want(self, a):
        return None, None                         # assert_result computes the oracle and its bound

    def assert_result(self, got, want, scale, dtype, laid, what):
        import test_quant
        x, w, b = np.asarray(laid["x"]), np.asarray(laid["weight"]), laid.get("bias")
        K = x.shape[-1]
        test_quant.check(np.asarray(got).reshape(-1, w.shape[0]), x.reshape(-1, K), w, None if b is None else np.asarray(b),
                         laid["qdtype"], 32 if laid["qdtype"] == "int4" else None, laid["activation"],
                         "bf16" if np.dtype(dtype).name == "bfloat16" else "f32", what)


class SwiGLU(Op):
    out = True

    def __init__(self):
        self.sizes = [dict(lead=lead, K=Linear.Ks[i % 5], F=Linear.Ns[i % 7], bias=i % 2 == 0)
                      for i, lead in enumerate(_rows_sizes())]

    def make(self, s, dtype, rng):
        a = dict(x=rng.standard_normal(s["lead"] + (s["K"],)).astype(dtype),
                 gate_weight=rng.standard_normal((s["F"], s["K"])).astype(dtype),
                 up_weight=rng.standard_normal((s["F"], s["K"])).astype(dtype))
        if s["bias"]:
            a["gate_bias"] = rng.standard_normal(s["F"]).astype(dtype)
            a["up_bias"] = rng.standard_normal(s["F"]).astype(dtype)
        return a

    def random_size(self, rng):
        return dict(lead=_random_lead(rng), K=_loguniform(rng, 600), F=_loguniform(rng, 70), bias=bool(rng.integers(2)))

    def run(self, a, out=None):
        packed = attnkit.pack_swiglu(a["gate_weight"], a["up_weight"], a.get("gate_bias"), a.get("up_bias"))
        return attnkit.linear(a["x"], packed, out=out)

    def want(self, a):
        x, g, u = wide(a["x"]), wide(a["gate_weight"]), wide(a["up_weight"])
        gb, ub = wide(a.get("gate_bias")), wide(a.get("up_bias"))
        gate, up = ref.linear(x, g, gb), ref.linear(x, u, ub)
        scale_g = np.abs(x) @ np.abs(g).T + (0 if gb is None else np.abs(gb))
        scale_u = np.abs(x) @ np.abs(u).T + (0 if ub is None else np.abs(ub))
        # d(silu(g) u) = silu'(g) u dg + silu(g) du, |silu'| <= 1.1, |silu(g)| <= |g| + 0.3
        scale = 1.1 * np.abs(up) * scale_g + (np.abs(gate) + 0.3) * scale_u
        return ref.silu(gate) * up, scale

    def out_shape(self, a):
        return a["x"].shape[:-1] + (a["gate_weight"].shape[0],)


# attention: (Lq, Lk, E, Ev) around the decode path (<= 4 rows), the query blocks (64 / 128 rows)
# and the key tiles (64 / 128 keys), head dims around the vector widths
_ATTN = [(1, 1, 1, 1), (1, 129, 64, 64), (3, 7, 8, 8), (4, 65, 16, 16), (5, 5, 17, 9), (7, 33, 9, 16),
         (8, 8, 33, 33), (9, 17, 64, 65), (15, 129, 7, 8), (16, 16, 16, 17), (17, 64, 65, 64), (31, 3, 8, 1),
         (33, 127, 32, 32), (63, 63, 16, 16), (64, 65, 8, 8), (65, 128, 33, 17), (127, 17, 16, 16),
         (128, 129, 9, 9), (129, 64, 64, 64), (2, 257, 16, 16)]
_MASKS = [None, "bool", "float", None, "bool_bcast"]


class Sdpa(Op):
    out = True

    def __init__(self):
        self.sizes = [dict(Lq=lq, Lk=lk, E=e, Ev=ev, mask=_MASKS[i % 5], causal=i % 3 == 1,
                           align=("top_left", "bottom_right")[i % 2], gqa=i % 4 == 3, lengths=i % 3 == 2)
                      for i, (lq, lk, e, ev) in enumerate(_ATTN)]

    def make(self, s, dtype, rng):
        B, Hk = 2, 2
        Hq = 4 if s["gqa"] else 2
        a = dict(query=rng.standard_normal((B, Hq, s["Lq"], s["E"])).astype(dtype),
                 key=rng.standard_normal((B, Hk, s["Lk"], s["E"])).astype(dtype),
                 value=rng.standard_normal((B, Hk, s["Lk"], s["Ev"])).astype(dtype))
        shape = (B, Hq, s["Lq"], s["Lk"])
        if s["mask"] == "bool":
            a["attn_mask"] = rng.random(shape) < 0.8
        elif s["mask"] == "bool_bcast":
            a["attn_mask"] = rng.random((s["Lq"], s["Lk"])) < 0.8
        elif s["mask"] == "float":
            a["attn_mask"] = rng.standard_normal(shape).astype(dtype)
        if s["lengths"]:
            a["kv_lengths"] = rng.integers(0, s["Lk"] + 1, B).astype(np.int64)
        a.update(is_causal=s["causal"], causal_alignment=s["align"], enable_gqa=s["gqa"])
        return a

    def random_size(self, rng):
        return dict(Lq=_loguniform(rng, 300), Lk=_loguniform(rng, 300), E=_loguniform(rng, 130), Ev=_loguniform(rng, 130),
                    mask=_MASKS[rng.integers(5)], causal=bool(rng.integers(2)),
                    align=("top_left", "bottom_right")[rng.integers(2)], gqa=bool(rng.integers(2)),
                    lengths=bool(rng.integers(2)))

    def _kw(self, a):
        return dict(is_causal=a["is_causal"], causal_alignment=a["causal_alignment"], enable_gqa=a["enable_gqa"],
                    kv_lengths=a.get("kv_lengths"))

    def run(self, a, out=None):
        return attnkit.scaled_dot_product_attention(a["query"], a["key"], a["value"], a.get("attn_mask"), out=out,
                                                    **self._kw(a))

    def want(self, a):
        return ref.scaled_dot_product_attention(wide(a["query"]), wide(a["key"]), wide(a["value"]),
                                                wide(a.get("attn_mask")), **self._kw(a)), None

    def out_shape(self, a):
        return a["query"].shape[:-1] + (a["value"].shape[-1],)


class Mha(Op):
    against = "torch"                             # a stack of three kernels, rounded to the dtype between them
    def __init__(self):
        pairs = [(1, 1), (3, 7), (4, 5), (5, 65), (8, 9), (9, 17), (16, 33), (17, 64), (33, 3), (64, 129), (65, 8),
                 (129, 65)]
        self.sizes = [dict(Lq=lq, Lk=lk, self_attn=i % 3 == 0, causal=i % 4 == 1, gqa=i % 2 == 1, out_proj=i % 5 != 4)
                      for i, (lq, lk) in enumerate(pairs)]

    def make(self, s, dtype, rng):
        B, E, H, Dh = 2, 16, 4, 8
        Hk = 2 if s["gqa"] else H
        lk = s["Lq"] if s["self_attn"] else s["Lk"]
        a = dict(query=rng.standard_normal((B, s["Lq"], E)).astype(dtype),
                 in_proj_weight=(rng.standard_normal(((H + 2 * Hk) * Dh, E)) / 4).astype(dtype),
                 in_proj_bias=rng.standard_normal((H + 2 * Hk) * Dh).astype(dtype))
        if not s["self_attn"]:
            a["key"] = rng.standard_normal((B, lk, E)).astype(dtype)
            a["value"] = rng.standard_normal((B, lk, E)).astype(dtype)
        if s["out_proj"]:
            a["out_proj_weight"] = (rng.standard_normal((E, H * Dh)) / 4).astype(dtype)
            a["out_proj_bias"] = rng.standard_normal(E).astype(dtype)
        a.update(num_heads=H, num_kv_heads=Hk, is_causal=s["causal"])
        return a

    def random_size(self, rng):
        return dict(Lq=_loguniform(rng, 200), Lk=_loguniform(rng, 200), self_attn=bool(rng.integers(2)),
                    causal=bool(rng.integers(2)), gqa=bool(rng.integers(2)), out_proj=bool(rng.integers(2)))

    def _call(self, fn, a, conv):
        q = conv(a["query"])
        k = conv(a["key"]) if "key" in a else q
        v = conv(a["value"]) if "value" in a else q
        return fn(q, k, v, a["num_heads"], conv(a["in_proj_weight"]), conv(a.get("in_proj_bias")),
                  conv(a.get("out_proj_weight")), conv(a.get("out_proj_bias")), num_kv_heads=a["num_kv_heads"],
                  is_causal=a["is_causal"])

    def run(self, a, out=None):
        return self._call(attnkit.multi_head_attention, a, lambda x: x)

    def want(self, a):
        return self._call(ref.multi_head_attention, a, wide), None


_ROW_LENGTHS = [1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]
_ROW_LEADS = [(1,), (5,), (2, 3), (7,), (3, 2), (1, 4), (6,), (2, 2), (9,), (3,), (2, 5), (4,), (1,), (3, 3), (2,),
              (5,), (2, 1), (3,)]


class Rows(Op):
    """softmax, layer_norm, rms_norm and the activations: rows of every length around the lanes."""

    def __init__(self, kind):
        self.kind = kind
        self.sizes = [dict(lead=_ROW_LEADS[i], n=n, opt=i % 4) for i, n in enumerate(_ROW_LENGTHS)]

    def make(self, s, dtype, rng):
        shape = s["lead"] + (s["n"],)
        a = dict(x=rng.standard_normal(shape).astype(dtype), opt=s["opt"])
        if self.kind == "softmax" and s["opt"] % 2:
            a["mask"] = rng.random(shape) < 0.7
        if self.kind in ("layer_norm", "rms_norm"):
            if s["opt"] != 3:
                a["weight"] = rng.standard_normal(s["n"]).astype(dtype)
            if s["opt"] % 2:
                a["residual"] = rng.standard_normal(shape).astype(dtype)
            if self.kind == "layer_norm" and s["opt"] != 2:
                a["bias"] = rng.standard_normal(s["n"]).astype(dtype)
        return a

    def random_size(self, rng):
        lead = tuple(_loguniform(rng, 12) for _ in range(rng.integers(1, 4)))
        return dict(lead=lead, n=_loguniform(rng, 300), opt=int(rng.integers(4)))

    def _call(self, lib, a, conv):
        x = conv(a["x"])
        if self.kind == "softmax":
            axis = 0 if a["opt"] == 2 and x.ndim > 1 else -1
            return lib.softmax(x, axis, conv(a.get("mask")))
        if self.kind == "layer_norm":
            return lib.layer_norm(x, x.shape[-1], conv(a.get("weight")), conv(a.get("bias")),
                                  residual=conv(a.get("residual")), return_sum=a["opt"] == 1)
        if self.kind == "rms_norm":
            return lib.rms_norm(x, conv(a.get("weight")), residual=conv(a.get("residual")), return_sum=a["opt"] == 3)
        if self.kind == "gelu":
            return lib.gelu(x, approximate=("none", "tanh")[a["opt"] % 2])
        return getattr(lib, self.kind)(x)

    def run(self, a, out=None):
        return self._call(attnkit, a, lambda x: x)

    def want(self, a):
        return self._call(ref, a, wide), None


class Rotary(Op):
    out = True

    def __init__(self):
        dims = [(2, 2), (4, 4), (8, 8), (16, 8), (18, 18), (32, 32), (34, 16), (64, 64), (66, 66), (128, 64), (130, 130)]
        self.sizes = [dict(D=d, R=r, L=(1, 3, 9, 17, 33)[i % 5], interleaved=i % 2 == 1, shared=i % 3 == 0)
                      for i, (d, r) in enumerate(dims)]

    def random_size(self, rng):
        D = 2 * _loguniform(rng, 80)
        return dict(D=D, R=2 * int(rng.integers(1, D // 2 + 1)), L=_loguniform(rng, 64),
                    interleaved=bool(rng.integers(2)), shared=bool(rng.integers(2)))

    def make(self, s, dtype, rng):
        B, H, P = 2, 3, 40
        ang = rng.uniform(0, 6.3, (P, s["R"] // 2))
        pos = rng.integers(0, P, (s["L"],) if s["shared"] else (B, s["L"])).astype(np.int64)
        return dict(x=rng.standard_normal((B, H, s["L"], s["D"])).astype(dtype), cos=np.cos(ang).astype(dtype),
                    sin=np.sin(ang).astype(dtype), positions=pos, interleaved=s["interleaved"])

    def run(self, a, out=None):
        return attnkit.apply_rotary(a["x"], a["cos"], a["sin"], a["positions"], interleaved=a["interleaved"], out=out)

    def want(self, a):
        return ref.apply_rotary(wide(a["x"]), wide(a["cos"]), wide(a["sin"]), a["positions"],
                                interleaved=a["interleaved"]), None

    def out_shape(self, a):
        return a["x"].shape


OPS = {
    "linear": Linear(), "linear_packed": Linear(packed=True), "linear_quantized": QuantLinear(), "swiglu": SwiGLU(), "sdpa": Sdpa(), "mha": Mha(),
    "softmax": Rows("softmax"), "layer_norm": Rows("layer_norm"), "rms_norm": Rows("rms_norm"),
    "gelu": Rows("gelu"), "relu": Rows("relu"), "silu": Rows("silu"), "apply_rotary": Rotary(),
}


def _arg_ndims(op):
    """{argument: the set of its ndims over the op's sizes} (made once with float32)."""
    rng = np.random.default_rng(0)
    dims = {}
    for s in op.sizes:
        for name, v in op.make(s, np.float32, rng).items():
            if isinstance(v, np.ndarray):
                dims.setdefault(name, set()).add(v.ndim)
    return dims


def _union(ndims, classes):
    """The classes of any of these ndims, in the order input_classes gives them."""
    out = []
    for nd in sorted(ndims):
        out += [c for c in classes(nd) if c not in out]
    return out


def _cases():
    for name, op in OPS.items():
        dims = _arg_ndims(op)
        for arg, nds in dims.items():
            for cls in _union(nds, input_classes):
                yield name, arg, cls
        for cls in _union(set().union(*dims.values()), input_classes):
            yield name, "all", cls                # every array argument in the class at once
        if op.out:
            out_nds = {len(op.out_shape(op.make(s, np.float32, np.random.default_rng(0)))) for s in op.sizes}
            for cls in _union(out_nds, output_classes):
                yield name, "out", cls


def rows_in_place(view):
    """linear's out= is written in place when its rows are evenly spaced (any sign) with a unit
    stride along the last dim; any other layout goes through one scratch copy."""
    if view.shape[-1] > 1 and view.strides[-1] != view.itemsize:
        return False
    found, expect = False, 0
    for n, s in reversed(list(zip(view.shape[:-1], view.strides[:-1]))):
        if n == 1:
            continue
        if not found:
            found, expect = True, s
        elif s != expect:
            return False
        expect *= n
    return True


CASES = list(_cases())


def _lay(arrays, target, cls):
    """The arguments with ``target`` (or every array argument, for "all") in class cls; None when cls
    does not exist for that argument's ndim."""
    laid = dict(arrays)
    names = [k for k, v in arrays.items() if isinstance(v, np.ndarray)] if target == "all" else [target]
    hit = False
    for k in names:
        if k not in arrays:
            continue
        v = input_view(arrays[k], cls)
        if v is not None:
            laid[k], hit = v, True
    return laid if hit else None


@functools.lru_cache(maxsize=None)
def prepared(op, i, dtype):
    """The arguments of the op's i-th size in dtype (fresh random values, seeded by op, size and
    dtype) and the oracle's answer, computed once and shared by every class and path: a layout
    does not change the values (the broadcast classes do, and compute their own)."""
    spec = OPS[op]
    rng = np.random.default_rng(seed_for(f"layouts-{op}-{i}-{dtype_name(dtype)}"))
    arrays = spec.make(spec.sizes[i], dtype, rng)
    for v in arrays.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return arrays, spec.want(arrays)


def check(op, target, cls, arrays, dtype, expected=None):
    """One call of op with ``target`` (an argument, "all", or "out") laid out as ``cls``, checked against
    the oracle (``expected``: its (answer, error scale) for ``arrays``, computed here when None) and, for
    out=, that nothing outside the view was written. Returns None when the class does not exist for
    that argument, else the number of fall-back copies the call should have made."""
    spec = OPS[op]
    copies = 0
    if target == "out":
        buf, out = output_view(spec.out_shape(arrays), dtype, cls)
        if out is None:
            return None
        before = buf.copy()
        got = spec.run(arrays, out=out)
        assert got is out
        assert_untouched_outside(buf, before, out)
        copies = int(isinstance(spec, (Linear, SwiGLU)) and not rows_in_place(out))
        laid = arrays
    else:
        laid = _lay(arrays, target, cls)
        if laid is None:
            return None
        got = spec.run(laid)
        if cls.startswith("broadcast"):
            expected = None
    want, scale = spec.want(laid) if expected is None else expected
    what = f"{op}({target} {cls}) {dtype_name(dtype)}"
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            assert_close(g, w, dtype, against=spec.against, what=what)
    else:
        spec.assert_result(got, want, scale, dtype, laid, what)
    return copies


MATRIX = [(path, o, t, c) for o, t, c in CASES for path in (QUANT_PATHS if o == "linear_quantized" else FLOAT_PATHS)]


@pytest.mark.parametrize("cpu_path,op,target,cls", MATRIX, ids=[f"cpu:{p}-{o}-{t}-{c}" for p, o, t, c in MATRIX],
                         indirect=["cpu_path"])
def test_layout_matrix(cpu_path, op, target, cls):
    copies, expected_copies, ran = _core.layout_copies(), 0, 0
    for i, size in enumerate(OPS[op].sizes):
        for dtype in dtypes_for(i, op):
            arrays, expected = prepared(op, i, dtype)
            try:
                n = check(op, target, cls, arrays, dtype, expected)
            except AssertionError as e:
                raise AssertionError(f"size {size}: {e}") from None
            if n is not None:
                expected_copies += n
                ran += 1
    assert ran >= 2, f"{op}: layout class {cls} of {target} met fewer than 2 sizes"
    # inputs are read in place whatever their strides, but for rotary tables whose two layouts differ
    # or whose rows are strided (one copy of both); linear's out= rows that the GEMM cannot write in
    # place (rows_in_place) go through one scratch copy
    copied = _core.layout_copies() - copies
    if op == "apply_rotary" and target in ("cos", "sin", "all"):
        assert copied <= ran
    else:
        assert copied == expected_copies, f"{op}: {copied} fall-back copies for {target} {cls}, expected {expected_copies}"


# which matrix op exercises each public function that takes arrays (quantize_swiglu packs through
# quantize_weight as quantize_linear does; its own layouts and outputs are in tests/test_quant.py)
COVERED_BY = {"quantize_linear": "linear_quantized", "QuantizedLinear": "linear_quantized", "quantize_weight": "linear_quantized",
              "quantize_swiglu": "linear_quantized", "scaled_dot_product_attention": "sdpa", "multi_head_attention": "mha", "softmax": "softmax",
              "linear": "linear", "pack_linear": "linear_packed", "PackedLinear": "linear_packed",
              "pack_swiglu": "swiglu", "layer_norm": "layer_norm", "rms_norm": "rms_norm", "gelu": "gelu",
              "relu": "relu", "silu": "silu", "apply_rotary": "apply_rotary"}
NO_ARRAYS = {"set_num_threads", "get_num_threads", "set_isa", "get_config", "reference", "cuda", "__version__"}


def test_the_matrix_covers_every_public_op_and_argument():
    """A public function that takes arrays and is missing from the matrix fails here (add it to OPS)."""
    public = set(attnkit.__all__) - NO_ARRAYS
    assert public <= set(COVERED_BY), f"not in the layout matrix: {sorted(public - set(COVERED_BY))}"
    seen = {}
    for o, t, c in CASES:
        seen.setdefault((o, t), set()).add(c)
    for name, op in OPS.items():
        for arg, nds in _arg_ndims(op).items():
            assert seen[(name, arg)] == set(_union(nds, input_classes)), (name, arg)
        assert (name, "all") in seen and (not op.out or (name, "out") in seen)
