"""Few-row float32 `linear` with an unpacked weight against NumPy, and `pack_linear` against a copy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/few_rows.py [--threads 2] [--K 768 --N 3072] [--cpu]

Rows 1..32 (and 64 to see where the dot products hand over to the packed GEMM): attnkit.linear(x, w),
x @ w.T in NumPy, and attnkit.linear(x, pack_linear(w)), timed in alternating blocks (medians, same
threads). Then pack_linear(w) against w.copy() (a memcpy into fresh memory, page faults included, as
pack_linear's) and np.copyto into a warm buffer (the copy alone), alternating too. Ratios > 1: attnkit ahead.
"""
import argparse
import os

import numpy as np
from threadpoolctl import threadpool_limits

import attnkit
from attnkit.bench.harness import measure_cpu_interleaved, measure_interleaved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--K", type=int, default=768)
    ap.add_argument("--N", type=int, default=3072)
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--cpu", action="store_true", help="one thread's CPU time instead of the wall clock (--threads 1)")
    a = ap.parse_args()
    if a.cpu and a.threads != 1:
        ap.error("--cpu measures one thread: use --threads 1")
    timed = measure_cpu_interleaved if a.cpu else (lambda fns: measure_interleaved(fns, a.budget))
    attnkit.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.N, a.K), dtype=np.float32)
    packed = attnkit.pack_linear(w)
    print(f"{'CPU time of the thread' if a.cpu else 'wall clock'}; isa {attnkit.get_config()['isa']}, {a.threads} threads, W {a.N} x {a.K} float32 ({w.nbytes / 1e6:.1f} MB), "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'rows':>5} {'unpacked us':>12} {'numpy us':>9} {'packed us':>10} {'vs numpy':>9} {'max|diff|':>10}")
    with threadpool_limits(a.threads):
        for M in [int(r) for r in a.rows.split(",")]:
            x = rng.standard_normal((M, a.K), dtype=np.float32)
            res = timed({"attnkit": lambda: attnkit.linear(x, w), "numpy": lambda: x @ w.T,
                         "packed": lambda: attnkit.linear(x, packed)})
            ref = x.astype(np.float64) @ w.T.astype(np.float64)
            err = np.abs(res["attnkit"]["out"] - ref).max() / np.abs(ref).max()
            t = {k: v["median_ms"] * 1e3 for k, v in res.items()}
            print(f"{M:>5} {t['attnkit']:>12.0f} {t['numpy']:>9.0f} {t['packed']:>10.0f} "
                  f"{t['numpy'] / t['attnkit']:>8.2f}x {err:>10.1e}")
        buf = np.empty_like(w)
        res = timed({"pack_linear": lambda: attnkit.pack_linear(w), "copy": lambda: w.copy(),
                     "copyto": lambda: np.copyto(buf, w)})
    t = {k: v["median_ms"] for k, v in res.items()}
    gb = w.nbytes / 1e9
    print(f"pack_linear {t['pack_linear']:.2f} ms ({gb / t['pack_linear'] * 1e3:.1f} GB/s), w.copy() {t['copy']:.2f} ms "
          f"({gb / t['copy'] * 1e3:.1f} GB/s), np.copyto {t['copyto']:.2f} ms ({gb / t['copyto'] * 1e3:.1f} GB/s): "
          f"pack_linear at {t['copy'] / t['pack_linear'] * 100:.0f} % of w.copy(), "
          f"{t['copyto'] / t['pack_linear'] * 100:.0f} % of np.copyto")
    unp = packed.unpack()
    assert np.array_equal(unp, w), "pack_linear -> unpack changed the weight"


if __name__ == "__main__":
    main()
