"""Shared test machinery: the seeded rng, the tolerance table, assert_close, dtypes and layouts, and
the backend fixture that runs every kernel test on every CPU instruction set (and GPU) this machine has.

attnkit itself is imported lazily (inside fixtures and hooks), so the oracle's own tests collect and
run even when the compiled core has not been built.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# ---------------------------------------------------------------------------------------------
# Tolerances: every bound on relative_error(out, ref) = ||out - ref|| / ||ref|| that a test asserts,
# one row per dtype (the dtype the result was computed and stored in), one column per comparison:
#   oracle      one kernel against attnkit.reference run in float64 on the same dtype-valued inputs
#   large_mean  layer_norm of rows whose mean is ~1000 standard deviations: rounding the mean alone
#               to float32 costs ~1e-4 of the result
#   torch       a stack of kernels (attnkit.nn) against PyTorch computing in the same dtype: both round
#   checkpoint  a pretrained architecture (BERT, GPT-2: more layers, larger weights) against transformers
# float16 / bfloat16 (for the CUDA backend; kernels keep fp32 accumulators and statistics): oracle is
# about 4 unit roundoffs of the storage type (2^-11, 2^-8), the stacks 20 and 40.
# ---------------------------------------------------------------------------------------------
Tolerance = namedtuple("Tolerance", "oracle large_mean torch checkpoint")
TOLERANCES = {
    "float64": Tolerance(oracle=1e-12, large_mean=1e-12, torch=1e-10, checkpoint=1e-10),
    "float32": Tolerance(oracle=1e-5, large_mean=1e-3, torch=1e-5, checkpoint=1e-4),
    "float16": Tolerance(oracle=2e-3, large_mean=2e-3, torch=1e-2, checkpoint=2e-2),
    "bfloat16": Tolerance(oracle=1.6e-2, large_mean=1.6e-2, torch=8e-2, checkpoint=1.6e-1),
}


def dtype_name(dtype):
    """'float32' for np.float32, np.dtype('float32'), 'float32' or torch.float32 (bfloat16 has no NumPy type)."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rpartition(".")[2]


def tolerance(dtype, against="oracle"):
    """The table's bound for results in ``dtype`` compared ``against`` one of its columns."""
    return getattr(TOLERANCES[dtype_name(dtype)], against)


BASE_SEED = 0x5EED_A77E


def relative_error(out, ref, scale=None):
    """||out - ref|| / ||ref|| over the entries where ref is finite (absolute when ||ref|| is 0).

    ``scale``: an array of ref's shape whose norm replaces ||ref||, for results whose rounding
    error is relative to something larger than themselves (a GEMM's to |x| @ |w|^T).
    """
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    finite = np.isfinite(ref)
    diff = np.linalg.norm(out[finite] - ref[finite]) if finite.any() else 0.0
    denom = ref if scale is None else np.broadcast_to(np.asarray(scale, dtype=np.float64), ref.shape)
    norm = np.linalg.norm(denom[finite]) if finite.any() else 0.0
    return diff / norm if norm > 0 else diff


def assert_close(out, ref, dtype, *, against="oracle", scale=None, what="output"):
    """Assert out matches ref: same shape, same non-finite entries, relative error within the table.

    ``dtype`` (the dtype the result was computed in) and ``against`` (what ref is: the float64 oracle
    by default) pick the tolerance.
    """
    out = np.asarray(out)
    ref = np.asarray(ref)
    tol = tolerance(dtype, against)
    # an oracle that ran in half precision is no better than the output it checks (as64 widens its inputs)
    assert against != "oracle" or ref.dtype.name not in ("float16", "bfloat16"), (
        f"{what}: the reference is {ref.dtype}, not the float64 oracle (widen its inputs with as64)")
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
    nan_out, nan_ref = np.isnan(out), np.isnan(ref)
    assert np.array_equal(nan_out, nan_ref), (
        f"{what}: NaN at {np.argwhere(nan_out != nan_ref)[:5].tolist()} (out NaN: {nan_out.sum()}, "
        f"ref NaN: {nan_ref.sum()})")
    inf_ref = np.isinf(ref)
    assert np.array_equal(np.isinf(out), inf_ref), (
        f"{what}: infinities differ at {np.argwhere(np.isinf(out) != inf_ref)[:5].tolist()}")
    assert np.array_equal(out[inf_ref], ref[inf_ref]), f"{what}: infinities of the wrong sign"
    err = relative_error(out, ref, scale)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e} ({dtype_name(dtype)}, {against})"


FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


def is_float_dtype(dtype):
    """Whether ``dtype`` is one of the floating dtypes attnkit computes in: float16, bfloat16, float32, float64.

    By name, not by ``dtype.kind == "f"`` or ``np.issubdtype(dtype, np.floating)``: ml_dtypes' bfloat16 is a
    NumPy dtype of kind 'V' that is no subtype of np.floating, in every ml_dtypes release.
    """
    try:
        return np.dtype(dtype).name in FLOAT_DTYPE_NAMES
    except TypeError:
        return False


def as64(x):
    """The float64 copy of x that the oracle runs on (None stays None; bool and integers stay as they are)."""
    if x is None:
        return None
    x = np.asarray(x)
    return x.astype(np.float64) if is_float_dtype(x.dtype) else x


def to_torch(a):
    """A CPU torch tensor of a NumPy array's values and dtype, bfloat16 included (torch.from_numpy refuses
    ml_dtypes' bfloat16: its bits go over as int16 and are viewed as torch.bfloat16)."""
    import torch
    a = np.array(a, order="C")                       # a writable copy: torch warns on read-only arrays
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def from_torch(t):
    """A torch tensor's values as a NumPy array of the same dtype, bfloat16 included (ml_dtypes)."""
    import torch
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# ---------------------------------------------------------------------------------------------
# What the kernel tests run over: dtypes (ids f32, f64 in test names) and memory layouts.
# ---------------------------------------------------------------------------------------------
DTYPES = [np.float32, np.float64]
DTYPE_IDS = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=[DTYPE_IDS[dtype_name(d)] for d in DTYPES])
# sizes below, at, above and at multiples of the vector widths (4, 8, 16 lanes; 32 and 64 wide tiles)
WIDTH_SIZES = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]


def laid_out(a, layout):
    """The values of ``a`` in another memory layout: a view of a fresh buffer (``a`` itself when contiguous)."""
    a = np.asarray(a)
    if layout == "contiguous" or a.ndim == 0:
        return a
    if layout == "fortran":                       # every axis reversed in memory
        return np.asfortranarray(a)
    if layout == "column_major":                  # each matrix of the last two axes stored by columns
        return np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    if layout == "interleaved":                   # axes -3, -2 swapped: an (..., L, H, E) buffer seen as (..., H, L, E)
        return np.ascontiguousarray(np.swapaxes(a, -3, -2)).swapaxes(-3, -2)
    if layout == "strided":                       # every other element along each axis of a buffer twice as large
        view = np.zeros(tuple(2 * n for n in a.shape), a.dtype)[(slice(None, None, 2),) * a.ndim]
        view[...] = a
        return view
    if layout == "reversed":                      # negative strides on the last axis
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if layout == "rows_reversed":                 # negative strides on the second-to-last axis
        return np.ascontiguousarray(a[..., ::-1, :])[..., ::-1, :]
    raise ValueError(layout)


# ---------------------------------------------------------------------------------------------
# The oracle: attnkit.reference, or the source file itself when the core is not built.
# ---------------------------------------------------------------------------------------------
def load_reference():
    try:
        from attnkit import reference
        return reference
    except ImportError:
        path = Path(__file__).resolve().parents[1] / "python" / "attnkit" / "reference.py"
        spec = importlib.util.spec_from_file_location("_attnkit_reference_source", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


# ---------------------------------------------------------------------------------------------
# Randomness: fresh per test, reproducible from the test id.
# ---------------------------------------------------------------------------------------------
def seed_for(text):
    return [BASE_SEED, int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")]


@pytest.fixture
def rng(request):
    """numpy Generator seeded from a fixed base and this test's node id."""
    return np.random.default_rng(seed_for(request.node.nodeid))


# Hypothesis: derandomized and without a database, so CI sees the same cases every run.
# HYPOTHESIS_PROFILE=thorough explores more (randomly) for local hunting.
_common = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])
settings.register_profile("attnkit", max_examples=25, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "attnkit"))


# ---------------------------------------------------------------------------------------------
# Backends: every kernel test takes the ``backend`` fixture and so runs once per entry of BACKENDS
# (ids cpu:avx512, cpu:avx2, cpu:generic, cuda). Every entry is generated on every machine, so the
# test count does not depend on the machine; an entry this machine cannot run skips, saying why.
# A new backend is one line in BACKENDS (and, for a new kind of device, a Backend subclass that says
# how arrays get there and back and when the machine has it).
# ---------------------------------------------------------------------------------------------
class Backend:
    """Where a kernel test runs.

    name: the test id; dtypes: the dtype names it computes in (other dtypes skip);
    to_device(a) / to_numpy(a): a NumPy array to the backend's kind of array, and a result back
    (asserting that it is of the backend's kind); selected(): the context a test body runs in;
    unavailable(): None, or why this machine cannot run the backend.
    """
    name = "?"
    dtypes = ("float64", "float32")

    def unavailable(self):
        return None

    def to_device(self, a):
        raise NotImplementedError

    def to_numpy(self, a):
        raise NotImplementedError

    @contextlib.contextmanager
    def selected(self):
        yield

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) run here: NumPy arguments moved to the device (one device array per
        NumPy array, so q is k is v stays true; ``out`` is passed as given), the result (or each of
        a tuple of results) back as NumPy. Asserts that no moved argument was written to."""
        moved = {}                                     # id(NumPy array) -> (name, device array, copy)

        def move(name, a):
            if not isinstance(a, np.ndarray):
                return a
            if id(a) not in moved:
                moved[id(a)] = (name, self.to_device(a), a.copy())
            return moved[id(a)][1]

        args = [move(f"argument {i}", a) for i, a in enumerate(args)]
        kwargs = {k: a if k == "out" else move(k, a) for k, a in kwargs.items()}
        res = fn(*args, **kwargs)
        for name, on_device, before in moved.values():
            np.testing.assert_array_equal(self.to_numpy(on_device), before, err_msg=f"{name} was modified")
        return tuple(map(self.to_numpy, res)) if isinstance(res, tuple) else self.to_numpy(res)

    def __repr__(self):
        return f"<backend {self.name}>"


class CpuBackend(Backend):
    """attnkit's CPU kernels on one instruction-set path (attnkit.set_isa; the previous one restored)."""

    dtypes = ("float64", "float32", "float16", "bfloat16")   # half precision: stored, computed in float32

    def __init__(self, isa):
        self.isa, self.name = isa, f"cpu:{isa}"

    def unavailable(self):
        import attnkit  # a kernel test needs the core: failing to import is an error, not a skip

        config = attnkit.get_config()
        if self.isa not in config["compiled_isas"]:
            return f"{self.isa} is not compiled into this build (compiled: {', '.join(config['compiled_isas'])})"
        if self.isa not in config["usable_isas"]:
            why = f": {config['amx']}" if self.isa == "amx_bf16" else f": {config['amx_int8']}" if self.isa == "amx_int8" else ""
            return f"this CPU cannot run {self.isa}{why} (usable: {', '.join(config['usable_isas'])})"
        return None

    def to_device(self, a):
        return a

    def to_numpy(self, a):
        assert isinstance(a, np.ndarray), f"{self.name}: a result of type {type(a).__name__}, not a NumPy array"
        return a

    @contextlib.contextmanager
    def selected(self):
        import attnkit

        previous = attnkit.get_config()["isa"]
        attnkit.set_isa(self.isa)
        assert attnkit.get_config()["isa"] == self.isa
        try:
            yield
        finally:
            attnkit.set_isa(previous)


@contextlib.contextmanager
def on_cpu_path(isa):
    """A test body on one CPU path (set_isa, the previous one restored), or the test skipped saying
    why this machine cannot run that path."""
    b = CpuBackend(isa)
    why = b.unavailable()
    if why:
        pytest.skip(f"{b.name}: {why}")
    with b.selected():
        yield b


class CudaBackend(Backend):
    """attnkit.cuda on the current GPU. Test inputs go there as CuPy arrays or, without CuPy, as torch
    CUDA tensors (contiguous copies: the host layouts are not rebuilt on the device); attnkit returns
    the caller's kind of array."""

    name = "cuda"
    dtypes = ("float32", "float16", "bfloat16")   # an assumption until attnkit.cuda says what it computes in

    def _array_library(self):
        try:
            import cupy
            return cupy
        except ImportError:
            pass
        try:
            import torch
        except ImportError:
            return None
        return torch if torch.cuda.is_available() else None

    def unavailable(self):
        import attnkit

        cuda = getattr(attnkit, "cuda", None)        # the module is written elsewhere: code defensively
        if cuda is None or not hasattr(cuda, "is_available"):
            return "attnkit.cuda is missing (attnkit was built without ATTNKIT_CUDA)"
        if not cuda.is_available():
            return "attnkit.cuda.is_available() is False (no GPU, or no driver)"
        if self._array_library() is None:
            return "no array library to put test inputs on the GPU (install cupy, or torch built with CUDA)"
        return None

    def to_device(self, a):
        lib = self._array_library()
        if lib.__name__ == "cupy":
            return lib.asarray(a)
        return to_torch(a).to("cuda")

    def to_numpy(self, a):
        lib = self._array_library()
        kind = lib.ndarray if lib.__name__ == "cupy" else lib.Tensor
        assert isinstance(a, kind) and hasattr(a, "__cuda_array_interface__"), (
            f"{self.name}: a result of type {type(a).__name__}, not the caller's kind of CUDA array")
        return a.get() if lib.__name__ == "cupy" else from_torch(a)

    def call(self, fn, *args, **kwargs):
        """As Backend.call, except that kv_lengths stays in host memory: attnkit.cuda takes the lengths
        from the host (a NumPy array or a sequence) and rejects a GPU array for them (TypeError), so
        that reading them never waits on the device."""
        if "kv_lengths" in kwargs:
            kv_lengths = kwargs.pop("kv_lengths")
            fn = functools.partial(fn, kv_lengths=kv_lengths)
        return super().call(fn, *args, **kwargs)


def known_gap(request, backend, name, reason):
    """Mark this test as failing today on backend ``name`` (strict: it fails again once fixed, so the
    mark is taken off), with the reason; it still runs there."""
    if backend.name == name:
        request.applymarker(pytest.mark.xfail(reason=f"{name}: {reason}", strict=True))


BACKENDS = [CpuBackend("amx_bf16"), CpuBackend("avx512_bf16"), CpuBackend("avx512"), CpuBackend("avx2"), CpuBackend("generic"), CudaBackend()]
_UNAVAILABLE = {}                                      # backend name -> why not (None: available), once a session


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, ids=[b.name for b in BACKENDS], indirect=True)


@pytest.fixture
def backend(request):
    """The backend of this test's id, selected for the test's body (skipped where it cannot run)."""
    b = request.param
    if b.name not in _UNAVAILABLE:
        _UNAVAILABLE[b.name] = b.unavailable()
    if _UNAVAILABLE[b.name]:
        pytest.skip(f"{b.name}: {_UNAVAILABLE[b.name]}")
    dtype = request.node.callspec.params.get("dtype")
    if dtype is not None and dtype_name(dtype) not in b.dtypes:
        pytest.skip(f"{b.name} does not compute in {dtype_name(dtype)}")
    with b.selected():
        yield b
