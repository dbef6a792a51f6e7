"""Memory bounded by the work: a call takes little beyond its inputs and output, whatever the
thread count (per-thread buffers only for threads that get work, none where rows are read in
place; no W^T panels for a weight of a few rows; kv_lengths copied only over the batch dims where
it is not broadcast). Each case runs in a child process, which reads its own peak RSS before and
after one call."""
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import resource, sys, numpy as np, attnkit
    attnkit.set_num_threads(8)
    n = 2 ** 24
    case = sys.argv[1]
    x = np.ones((1, n), np.float32)
    a32, w32 = np.ones((8, n // 4), np.float32), np.ones((1, n // 4), np.float32)
    a64, w64 = np.ones((1, n // 4)), np.ones((4, n // 4))
    # a batch of n one-key problems read through zero strides: q, k, v and kv_lengths hold one entry each
    one = np.broadcast_to(np.ones((1, 1, 1, 1), np.float32), (n, 1, 1, 1))
    lengths = np.broadcast_to(np.ones(1, np.int64), (n,))
    calls = {
        "softmax": lambda: attnkit.softmax(x),
        "gelu": lambda: attnkit.gelu(x),
        "layer_norm": lambda: attnkit.layer_norm(x, n),
        "layer_norm_residual": lambda: attnkit.layer_norm(x, n, residual=x),
        "linear_f32_one_output": lambda: attnkit.linear(a32, w32),
        "linear_f64_one_row": lambda: attnkit.linear(a64, w64),
        "sdpa_zero_stride_kv_lengths": lambda: attnkit.scaled_dot_product_attention(one, one, one, kv_lengths=lengths),
    }
    f = calls[case]
    out_mib = {"softmax": 64, "gelu": 64, "layer_norm": 64, "layer_norm_residual": 64,
               "sdpa_zero_stride_kv_lengths": 64}.get(case, 0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024 - out_mib)
""")

# extra MiB allowed above the output: one row buffer where the op needs one (the residual's sum)
LIMITS = {"softmax": 8, "gelu": 8, "layer_norm": 8, "layer_norm_residual": 72, "linear_f32_one_output": 8,
          "linear_f64_one_row": 8, "sdpa_zero_stride_kv_lengths": 8}


@pytest.mark.parametrize("case", sorted(LIMITS))
def test_extra_peak_memory_is_bounded(case):
    run = subprocess.run([sys.executable, "-c", CHILD, case], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    extra = float(run.stdout.strip().splitlines()[-1])
    assert extra <= LIMITS[case], f"{case}: {extra:.0f} MiB above the output at 8 threads (limit {LIMITS[case]})"
