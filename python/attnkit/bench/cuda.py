"""python -m attnkit.bench --device cuda: attnkit's CUDA kernels against PyTorch on the same GPU.

Prefill (self, causal, cross) in fp16, bf16 and fp32 against torch SDPA (its default choice and,
for fp16/bf16, its flash backend by name) and a plain matmul-softmax-matmul; decode (one query row,
a long KV cache) in GB/s against a device-to-device copy measured in the same run; linear against
torch. Timed with CUDA events after warm-up: the median of the repeats. TFLOP/s count the
multiply-adds of QK^T and PV as 2 flops each (causal: half the square); % of peak uses the GPU's
dense tensor-core peak (fp16/bf16) or its fp32 FMA peak (fp32), looked up by device name.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys

# dense peaks, TFLOP/s (H100 SXM / H200: 989 fp16/bf16 tensor, 67 fp32 FMA)
PEAKS = {"H100": {"float16": 989.4, "bfloat16": 989.4, "float32": 66.9},
         "H200": {"float16": 989.4, "bfloat16": 989.4, "float32": 66.9}}


def _timer(torch, fn, warmup=3, repeat=15, inner=1):
    """Median seconds per call: `inner` back-to-back calls between two events (inner > 1 lets the
    host's launch work overlap the device's, as in a model's step; every contender alike)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3 / inner)
    return statistics.median(times)


def main(argv=None, *, quick=False, json_path=None) -> int:
    import torch
    import attnkit

    reason = attnkit.cuda.why_unavailable()
    if reason is not None:
        print(f"attnkit.cuda unavailable: {reason}")
        return 1
    from torch.nn.attention import SDPBackend, sdpa_kernel
    F = torch.nn.functional
    props = torch.cuda.get_device_properties(0)
    peak = next((v for k, v in PEAKS.items() if k in props.name), None)
    print(f"# device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}")
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rnd(shape, dtype):
        return torch.randn(shape, device="cuda", dtype=torch.float32, generator=gen).to(dtype)

    # ceilings in this run
    x = torch.empty(2**28, device="cuda", dtype=torch.float32).normal_()   # 1 GiB
    y = torch.empty_like(x)
    t = _timer(torch, lambda: y.copy_(x))
    copy_gbs = 2 * x.numel() * 4 / t / 1e9
    a = rnd((8192, 8192), torch.bfloat16)
    t = _timer(torch, lambda: a @ a, repeat=5)
    mm_tf = 2 * 8192**3 / t / 1e12
    del x, y, a
    print(f"# ceilings: device-to-device copy {copy_gbs:.0f} GB/s (read + write); bf16 matmul 8192^3 {mm_tf:.0f} TFLOP/s")

    def naive(q, k, v, causal):
        s = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]))
        if causal:
            L = s.shape[-1]
            s = s.masked_fill(torch.ones(L, L, device="cuda", dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    B, H, D = 1, 16, 128
    L = 2048 if quick else 4096
    cases = [("self", L, L, False), ("causal", L, L, True), ("cross", 1024, L, False)]
    for dtype in ("float16", "bfloat16", "float32"):
        tdt = getattr(torch, dtype)
        for name, Lq, Lk, causal in cases:
            q, k, v = rnd((B, H, Lq, D), tdt), rnd((B, H, Lk, D), tdt), rnd((B, H, Lk, D), tdt)
            flops = 4 * B * H * Lq * Lk * D * (0.5 if causal else 1.0)
            cont = {
                "attnkit": lambda: attnkit.scaled_dot_product_attention(q, k, v, is_causal=causal),
                "torch": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                "naive": lambda: naive(q, k, v, causal),
            }
            if dtype != "float32":
                def flash():
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                cont["torch-flash"] = flash

                def tile(shape):
                    def run():
                        os.environ["ATTNKIT_CUDA_FA_TILE"] = shape
                        try:
                            return attnkit.scaled_dot_product_attention(q, k, v, is_causal=causal)
                        finally:
                            del os.environ["ATTNKIT_CUDA_FA_TILE"]
                    return run
                cont["attnkit-64x1m3"] = tile("64x1m3")  # the default held to 168 registers, 3 blocks per SM
                cont["attnkit-128x1"] = tile("128x1")    # 8 warps x 16 rows
                cont["attnkit-128x2"] = tile("128x2")    # 4 warps x 32 rows (FA2's shape)
            ref_out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
            err = ((attnkit.scaled_dot_product_attention(q, k, v, is_causal=causal).float() - ref_out).norm()
                   / ref_out.norm()).item()
            times = {c: _timer(torch, fn, warmup=10) for c, fn in cont.items()}   # clocks up before the first
            for c, tt in times.items():
                tf = flops / tt / 1e12
                pk = peak[dtype] if peak else None
                rows.append({"suite": "prefill", "case": f"{name} B{B} H{H} Lq{Lq} Lk{Lk} D{D}", "dtype": dtype,
                             "contender": c, "ms": tt * 1e3, "tflops": tf, "pct_peak": 100 * tf / pk if pk else None,
                             "vs_attnkit": times["attnkit"] / tt, "rel_err_vs_torch_fp32": err if c == "attnkit" else None})
            del q, k, v

    # decode: one query row per head against a KV cache
    for (Bd, Hq, Hk, Lk, dtype) in [(8, 32, 32, 8192, "float16"), (8, 32, 8, 8192, "float16"), (8, 32, 32, 8192, "bfloat16"),
                                    (8, 32, 32, 8192, "float32")]:
        tdt = getattr(torch, dtype)
        q = rnd((Bd, Hq, 1, D), tdt)
        k, v = rnd((Bd, Hk, Lk, D), tdt), rnd((Bd, Hk, Lk, D), tdt)
        nbytes = (k.numel() + v.numel()) * k.element_size()
        def waves(n):
            def run():
                os.environ["ATTNKIT_CUDA_DECODE_WAVES"] = str(n)
                try:
                    return attnkit.scaled_dot_product_attention(q, k, v, enable_gqa=Hq != Hk)
                finally:
                    del os.environ["ATTNKIT_CUDA_DECODE_WAVES"]
            return run
        cont = {
            "attnkit": lambda: attnkit.scaled_dot_product_attention(q, k, v, enable_gqa=Hq != Hk),
            "torch": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=Hq != Hk),
            "attnkit-1wave": waves(1),           # splits for one wave of resident blocks
            "attnkit-16waves": waves(16),
        }
        times = {c: _timer(torch, fn, repeat=30) for c, fn in cont.items()}
        times["attnkit x5"] = _timer(torch, cont["attnkit"], repeat=30, inner=5)   # 5 calls per event pair
        times["torch x5"] = _timer(torch, cont["torch"], repeat=30, inner=5)
        for c, tt in times.items():
            gbs = nbytes / tt / 1e9
            rows.append({"suite": "decode", "case": f"B{Bd} Hq{Hq} Hk{Hk} Lk{Lk} D{D}", "dtype": dtype, "contender": c,
                         "ms": tt * 1e3, "gbs": gbs, "pct_copy": 100 * gbs / copy_gbs, "vs_attnkit": times["attnkit"] / tt})
        del q, k, v

    # linear
    for dtype in ("float16", "bfloat16", "float32"):
        tdt = getattr(torch, dtype)
        M, K, N = 4096, 4096, 4096
        xx, w, b = rnd((M, K), tdt), rnd((N, K), tdt), rnd((N,), tdt)
        cont = {"attnkit": lambda: attnkit.linear(xx, w, b, activation="relu"),
                "torch": lambda: torch.relu(F.linear(xx, w, b))}
        times = {c: _timer(torch, fn) for c, fn in cont.items()}
        for c, tt in times.items():
            tf = 2 * M * N * K / tt / 1e12
            rows.append({"suite": "linear", "case": f"relu(x W^T + b) {M}x{K}x{N}", "dtype": dtype, "contender": c,
                         "ms": tt * 1e3, "tflops": tf, "vs_attnkit": times["attnkit"] / tt})

    print(f"{'suite':8} {'case':34} {'dtype':9} {'contender':15} {'ms':>8} {'TFLOP/s|GB/s':>12} {'%peak|%copy':>11} {'attnkit/this':>12}")
    for r in rows:
        rate = r.get("tflops", r.get("gbs"))
        pct = r.get("pct_peak", r.get("pct_copy"))
        print(f"{r['suite']:8} {r['case']:34} {r['dtype']:9} {r['contender']:15} {r['ms']:8.3f} {rate:12.1f} "
              f"{(f'{pct:.1f}' if pct is not None else '-'):>11} {r['vs_attnkit']:12.2f}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"device": props.name, "copy_gbs": copy_gbs, "matmul_bf16_tflops": mm_tf, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))
