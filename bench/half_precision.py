"""Half precision side by side (issue 10): attnkit bfloat16/float16 against attnkit float32 and
PyTorch in the same dtype, same threads, medians of alternating repeats.

    python bench/half_precision.py [--threads 2] [--repeats 15]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def median_time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    import attnkit
    import ml_dtypes
    import torch

    attnkit.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    bf = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(0)
    print(f"attnkit {attnkit.get_config()}  torch {torch.__version__} threads {args.threads}")

    def tt(a, dt):  # NumPy (float32) -> torch tensor of dtype dt
        return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(dt)

    # linear: (M, K) @ (N, K)^T with prepacked weights
    for M, K, N in ((4096, 1024, 3072), (128, 1024, 3072), (1, 4096, 4096)):
        x32, w32 = rng.standard_normal((M, K), np.float32), rng.standard_normal((N, K), np.float32) / 32
        flops = 2.0 * M * N * K
        row = {}
        for name, dt, isa in (("ak fp32", np.float32, None), ("ak bf16 (avx512 widen)", bf, "avx512"),
                              ("ak bf16 (avx512_bf16 vdpbf16ps)", bf, "avx512_bf16"), ("ak fp16", np.float16, None)):
            if isa and isa not in attnkit.get_config()["usable_isas"]:
                continue
            prev = attnkit.get_config()["isa"]
            if isa:
                attnkit.set_isa(isa)
            x, pk = x32.astype(dt), attnkit.pack_linear(w32.astype(dt))
            row[name] = median_time(lambda: attnkit.linear(x, pk), args.repeats)
            attnkit.set_isa(prev)
        for name, dt in (("torch fp32", torch.float32), ("torch bf16", torch.bfloat16)):
            tx, tw = tt(x32, dt), tt(w32, dt)
            row[name] = median_time(lambda: torch.nn.functional.linear(tx, tw), args.repeats)
        print(f"linear M{M} K{K} N{N}: " + ", ".join(f"{k} {flops / v / 1e9:.0f} GFLOP/s" for k, v in row.items()))

    # attention: prefill and decode
    for B, H, Lq, Lk, D, causal in ((1, 8, 1024, 1024, 64, False), (1, 8, 1024, 1024, 64, True), (4, 32, 1, 4096, 128, False)):
        q32 = rng.standard_normal((B, H, Lq, D), np.float32)
        k32, v32 = (rng.standard_normal((B, H, Lk, D), np.float32) for _ in range(2))
        row = {}
        for name, dt in (("ak fp32", np.float32), ("ak bf16", bf), ("ak fp16", np.float16)):
            q, k, v = q32.astype(dt), k32.astype(dt), v32.astype(dt)
            row[name] = median_time(lambda: attnkit.scaled_dot_product_attention(q, k, v, is_causal=causal), args.repeats)
        for name, dt in (("torch fp32", torch.float32), ("torch bf16", torch.bfloat16)):
            q, k, v = tt(q32, dt), tt(k32, dt), tt(v32, dt)
            row[name] = median_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal), args.repeats)
        what = "decode" if Lq == 1 else ("causal" if causal else "self")
        base = row["ak fp32"]
        print(f"sdpa {what} B{B} H{H} Lq{Lq} Lk{Lk} D{D}: " + ", ".join(f"{k} {v * 1e3:.2f} ms ({base / v:.2f}x ak fp32)" for k, v in row.items()))


if __name__ == "__main__":
    main()
