"""Reads and writes outside an array are caught by the test, not by luck (issue 16): every case of the
layout matrix (test_layouts.py: each op, each array argument, each layout class, each size) runs in a
child process with every array placed against a PROT_NONE page, once flush against the page below its
lowest byte and once against the page above its highest byte. An access one element past either end
faults and kills the child, and the test names the last case the child started."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import CpuBackend

CHILD = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import attnkit
    import test_layouts as m
    from layouts import guarded

    counts = {}
    for path, op, target, cls in m.MATRIX:
        if path != sys.argv[1]:
            continue
        attnkit.set_isa(path)
        spec = m.OPS[op]
        for i, size in enumerate(spec.sizes):
            dtype = m.dtypes_for(i, op)[i % 2]
            arrays, (want, scale) = m.prepared(op, i, dtype)
            laid = arrays if target == "out" else m._lay(arrays, target, cls)
            if laid is None:
                continue
            for side in ("low", "high"):
                print(op, target, cls, size, np.dtype(dtype).name, side, flush=True)
                args = {k: guarded(v, side) if isinstance(v, np.ndarray) else v for k, v in laid.items()}
                out = None
                if target == "out":
                    _, template = m.output_view(spec.out_shape(arrays), dtype, cls)
                    if template is None:
                        break
                    out = guarded(template, side)
                got = spec.run(args, out=out) if spec.out else spec.run(args)
                if not cls.startswith("broadcast") and want is not None:
                    for g, w in zip(got if isinstance(want, tuple) else [got], want if isinstance(want, tuple) else [want]):
                        assert np.allclose(np.asarray(g, np.float64), w, rtol=0.1, atol=0.1, equal_nan=True), (op, target, cls, size)
                counts[op] = counts.get(op, 0) + 1
    print(json.dumps(counts))
''')


import test_layouts  # noqa: E402


@pytest.mark.parametrize("path", [CpuBackend(p) for p in dict.fromkeys(test_layouts.FLOAT_PATHS + test_layouts.QUANT_PATHS)],
                         ids=lambda b: b.name)
def test_no_access_outside_any_array(path):
    why = path.unavailable()
    if why:
        pytest.skip(f"{path.name}: {why}")
    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", CHILD, path.isa], capture_output=True, text=True, env=env, timeout=1200)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0, (f"the child died (exit {res.returncode}) in the case: {lines[-1] if lines else '?'}\n"
                                 f"{res.stderr[-3000:]}")
    counts = json.loads(lines[-1])
    print(f"{path.name}: {sum(counts.values())} guarded calls {counts}")
    assert set(counts) == {o for p, o, _, _ in test_layouts.MATRIX if p == path.isa}


def test_the_guard_pages_fault():
    """The mechanism itself: one element read past either end of a guarded array kills the child."""
    probe = textwrap.dedent(r'''
        import ctypes, sys
        import numpy as np
        from layouts import guarded
        a = guarded(np.arange(12, dtype=np.float32).reshape(3, 4)[::-1], sys.argv[1])
        assert a.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4)[::-1].tolist()
        lowest = a.__array_interface__["data"][0] + a.strides[0] * (a.shape[0] - 1)  # rows reversed
        step = -4 if sys.argv[1] == "low" else 4 * 12
        print(ctypes.c_float.from_address(lowest + step).value)
    ''')
    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, PYTHONPATH=tests)
    for side in ("low", "high"):
        res = subprocess.run([sys.executable, "-c", probe, side], capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == -11, (side, res.returncode, res.stdout, res.stderr[-500:])
