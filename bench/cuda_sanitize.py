"""A small run of every CUDA kernel path, for compute-sanitizer (memcheck, racecheck): the
tensor-core kernel (D 64 and 128, causal, masked, ragged sizes), the SIMT twin (fp32, strided),
split-KV decode with kv_lengths and its combine, the row-wise ops and linear. Checks each result
against the float64 oracle, so a run that reports no hazard also computed the right thing."""
import sys

import numpy as np
import torch

import attnkit
from attnkit import reference as ref

rng = np.random.default_rng(7)
bad = 0


def t(a, dtype):
    x = torch.from_numpy(np.ascontiguousarray(a))
    return (x if x.dtype == torch.bool else x.to(dtype)).cuda()


def h(x):
    return x.cpu().numpy() if x.dtype == torch.bool else x.float().cpu().numpy().astype(np.float64)


def expect(name, out, exp, tol):
    global bad
    err = np.linalg.norm(h(out) - exp) / max(np.linalg.norm(exp), 1e-30)
    ok = err <= tol
    bad += not ok
    print(f"{'ok ' if ok else 'BAD'} {name}: rel err {err:.2e}")


for dtype, E, tol in ((torch.float16, 64, 4e-3), (torch.bfloat16, 128, 2.5e-2), (torch.float32, 64, 2e-5)):
    q = t(rng.standard_normal((1, 2, 70, E)), dtype)
    k = t(rng.standard_normal((1, 2, 90, E)), dtype)
    v = t(rng.standard_normal((1, 2, 90, E)), dtype)
    m = t(rng.random((1, 1, 70, 90)) > 0.3, dtype)
    out = attnkit.scaled_dot_product_attention(q, k, v, m, is_causal=True, causal_alignment="bottom_right")
    expect(f"prefill {dtype} E{E}", out, ref.scaled_dot_product_attention(h(q), h(k), h(v), h(m), is_causal=True,
                                                                           causal_alignment="bottom_right"), tol)
    qd = t(rng.standard_normal((2, 4, 1, E)), dtype)
    kd = t(rng.standard_normal((2, 2, 3000, E)), dtype)
    vd = t(rng.standard_normal((2, 2, 3000, E)), dtype)
    lens = np.array([3000, 1234])
    out = attnkit.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True, kv_lengths=lens)
    expect(f"decode {dtype} E{E}", out, ref.scaled_dot_product_attention(h(qd), h(kd), h(vd), enable_gqa=True,
                                                                          kv_lengths=lens), tol)
    x = t(rng.standard_normal((3, 40, 200)), dtype)
    expect(f"softmax {dtype}", attnkit.softmax(x, axis=1), ref.softmax(h(x), axis=1), tol)
    w = t(rng.standard_normal(200), dtype)
    expect(f"layer_norm {dtype}", attnkit.layer_norm(x, 200, w, w, residual=x),
           ref.layer_norm(h(x) + h(x), 200, h(w), h(w)), tol)
    W = t(rng.standard_normal((96, 200)) / 14, dtype)
    expect(f"linear {dtype}", attnkit.linear(x, W, w[:96], activation="gelu"),
           ref.linear(h(x), h(W), h(w[:96]), activation="gelu"), tol)
qs = t(rng.standard_normal((1, 2, 50, 96)), torch.float16)[..., ::2]
expect("prefill simt strided fp16", attnkit.scaled_dot_product_attention(qs, qs, qs),
       ref.scaled_dot_product_attention(h(qs), h(qs), h(qs)), 4e-3)
torch.cuda.synchronize()
print("sanitize subset:", "all results right" if not bad else f"{bad} WRONG")
sys.exit(1 if bad else 0)
