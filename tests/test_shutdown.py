"""The interpreter exits cleanly while a daemon thread is inside a kernel.

CPython ends such a thread inside PyEval_RestoreThread when it retakes the GIL during
finalization; the unwinding must not cross a noexcept destructor (it used to: exit 134,
"terminate called without an active exception", in nearly every run)."""
import subprocess
import sys
import textwrap

import pytest

RUNS = 8  # per kernel; each run is a fresh interpreter

SCRIPT = textwrap.dedent("""
    import sys, threading, time, numpy as np, attnkit
    q = np.ones((1, 8, 512, 64), np.float32)
    packed = attnkit.pack_linear(np.ones((256, 512), np.float32))
    calls = {
        "sdpa": lambda: attnkit.scaled_dot_product_attention(q, q, q),
        "linear": lambda: attnkit.linear(q, np.ones((64, 64), np.float32)),
        "linear_packed": lambda: attnkit.linear(q.reshape(-1, 512), packed),
        "pack_linear": lambda: attnkit.pack_linear(q.reshape(-1, 512)),
        "softmax": lambda: attnkit.softmax(q),
        "layer_norm": lambda: attnkit.layer_norm(q, 64, residual=q),
        "gelu": lambda: attnkit.gelu(q),
    }
    f = calls[sys.argv[1]]
    threading.Thread(target=lambda: [f() for _ in iter(int, 1)], daemon=True).start()
    time.sleep(0.05)
""")


@pytest.mark.parametrize("kernel", ["sdpa", "linear", "linear_packed", "pack_linear", "softmax", "layer_norm", "gelu"])
def test_exit_with_a_daemon_thread_inside_a_kernel(kernel):
    for _ in range(RUNS):
        run = subprocess.run([sys.executable, "-c", SCRIPT, kernel], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"exit code {run.returncode}: {run.stderr[-500:]}"
