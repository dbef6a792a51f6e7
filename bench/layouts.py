"""What a layout costs (issue 16): attnkit.linear and scaled_dot_product_attention on contiguous inputs
beside the same values in other layouts (rows reversed, every other row, a transposed batch, and an
out= whose rows do not nest, which goes through one scratch copy), with NumPy on the same layouts, the
same threads. Medians of alternating rounds; ratios are the figures.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/layouts.py [--threads 2] [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import attnkit


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    attnkit.set_num_threads(a.threads)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(a.threads)
    except ImportError:
        limits = None
    rng = np.random.default_rng(0)
    print(f"attnkit {attnkit.__version__}, isa {attnkit.get_config()['isa']}, {a.threads} threads; medians of {a.repeats}")

    # linear: (4, 128, 768) @ (3072, 768)^T
    x = rng.standard_normal((4, 128, 768), dtype=np.float32)
    w = rng.standard_normal((3072, 768), dtype=np.float32)
    packed = attnkit.pack_linear(w)
    inputs = {"contiguous": x, "rows reversed": np.flip(np.flip(x, (0, 1)).copy(), (0, 1)),
              "every other row": np.repeat(x, 2, axis=1)[:, ::2], "transposed batch": np.swapaxes(np.swapaxes(x, 0, 1).copy(), 0, 1)}
    print("\nlinear (4, 128, 768) @ (3072, 768)^T, packed weight      attnkit ms   NumPy ms   NumPy/attnkit   vs contiguous")
    base = None
    for name, xi in inputs.items():
        ours = median_ms(lambda: attnkit.linear(xi, packed), a.repeats)
        theirs = median_ms(lambda: xi @ w.T, a.repeats)
        base = base or ours
        print(f"  x {name:<20}                                   {ours:8.2f}   {theirs:8.2f}   {theirs / ours:8.2f}x      {ours / base:6.2f}x")
    for name, out in {"contiguous": np.empty((4, 128, 3072), np.float32),
                      "rows reversed": np.empty((4, 128, 3072), np.float32)[::-1, ::-1],
                      "transposed batch (scratch copy)": np.empty((128, 4, 3072), np.float32).transpose(1, 0, 2)}.items():
        ours = median_ms(lambda: attnkit.linear(x, packed, out=out), a.repeats)
        print(f"  out= {name:<32}                  {ours:8.2f}                              {ours / base:6.2f}x")

    # attention: B1 H8 L1024 D64, q/k/v as (B, L, H, D) views or reversed along L
    q = rng.standard_normal((1, 8, 1024, 64), dtype=np.float32)
    views = {"contiguous": q, "(B, L, H, D) view": np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3),
             "sequence reversed": np.flip(np.flip(q, 2).copy(), 2)}
    print("\nsdpa B1 H8 L1024 D64 causal (q = k = v)                  attnkit ms   vs contiguous")
    base = None
    for name, t in views.items():
        ours = median_ms(lambda: attnkit.scaled_dot_product_attention(t, t, t, is_causal=True), a.repeats)
        base = base or ours
        print(f"  {name:<30}                           {ours:8.2f}      {ours / base:6.2f}x")
    if limits is not None:
        limits.unregister() if hasattr(limits, "unregister") else None


if __name__ == "__main__":
    main()
