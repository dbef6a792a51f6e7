"""Regressions from a review of the core: huge sizes, exceptions in worker tasks, fork, the pool
resized while kernels run, kv_lengths read once, extreme float masks, NaN behind a full mask."""
import multiprocessing as mp
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import attnkit
from attnkit import reference


def run_child(code: str, timeout: float = 120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_head_dim_too_large_is_a_value_error_not_a_crash():
    proc = run_child("""
        import numpy as np, attnkit
        q = np.broadcast_to(np.float32(1), (1, 1, 2**60))
        try:
            attnkit.scaled_dot_product_attention(q, q, np.ones((1, 1, 16), np.float32))
        except ValueError as e:
            print("ValueError", e)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ValueError" in proc.stdout and "2^31" in proc.stdout


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_out_of_memory_in_linear_is_a_memory_error_not_an_abort(dtype):
    proc = run_child(f"""
        import numpy as np, attnkit
        x = np.broadcast_to(np.{dtype}(1), (128, 2**50))
        w = np.broadcast_to(np.{dtype}(1), (3, 2**50))
        try:
            attnkit.linear(x, w)
        except MemoryError:
            print("MemoryError")
        # the pool still works afterwards, with both threads
        a = np.random.default_rng(0).standard_normal((300, 64)).astype(np.{dtype})
        print(np.allclose(attnkit.softmax(a), np.exp(a) / np.exp(a).sum(-1, keepdims=True)))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["MemoryError", "True"]


def _softmax_in_child(queue):
    x = np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32)
    queue.put(float(np.abs(attnkit.softmax(x).sum(-1) - 1).max()))


def test_kernels_work_in_a_forked_child():
    attnkit.softmax(np.ones((256, 64), np.float32))  # the pool exists before the fork
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_softmax_in_child, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("a kernel called in a forked child hung")
    assert child.exitcode == 0 and queue.get(timeout=5) < 1e-5


def test_pool_resized_while_kernels_run(rng):
    q, k, v = (rng.standard_normal((2, 4, 200, 32), dtype=np.float32) for _ in range(3))
    want = reference.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)))
    before = attnkit.get_num_threads()
    errors, stop = [], threading.Event()

    def resize():
        n = 1
        while not stop.is_set():
            attnkit.set_num_threads(n % 4 + 1)
            n += 1

    def work():
        try:
            for _ in range(30):
                out = attnkit.scaled_dot_product_attention(q, k, v)
                err = np.linalg.norm(out - want) / np.linalg.norm(want)
                if err > 1e-5:
                    errors.append(err)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    resizer = threading.Thread(target=resize)
    workers = [threading.Thread(target=work) for _ in range(3)]
    resizer.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    resizer.join()
    attnkit.set_num_threads(before)
    assert not errors


def test_strided_kv_lengths_are_read_through_their_strides(rng):
    q, k, v = (rng.standard_normal((2, 3, 6, 8), dtype=np.float32) for _ in range(3))
    lengths = np.array([4, 99, 2, 99])[::2]  # a strided view: [4, 2]
    out = attnkit._core.sdpa(q, k, v, None, "none", None, False, lengths, False, None)
    want = reference.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), kv_lengths=[4, 2])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_masked_with_the_lowest_float_averages_the_values(rng, dtype):
    q, k, v = (rng.standard_normal((1, 2, 4, 8)).astype(dtype) for _ in range(3))
    mask = np.zeros((4, 4), dtype)
    mask[1] = np.finfo(dtype).min                   # HF-style "masked" for a whole row
    mask[2, :2] = np.finfo(dtype).min
    out = attnkit.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    want = reference.scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), attn_mask=mask.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 1], v[0].astype(np.float64).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_nan_behind_a_full_mask_does_not_reach_a_row_that_sees_nothing(rng):
    q, k, v = (rng.standard_normal((1, 1, 4, 8), dtype=np.float32) for _ in range(3))
    v[0, 0, 2] = np.nan                             # only rows that may see key 2 can be spoiled
    mask = np.ones((4, 4), bool)
    mask[0] = False                                 # row 0 sees nothing: zeros, never NaN
    out = attnkit.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert np.all(out[0, 0, 0] == 0)
    assert np.isnan(out[0, 0, 1:]).all()            # rows that see key 2 are spoiled, as in the oracle
