"""Dtypes and scalars are classified by what they are, not by NumPy's categories.

ml_dtypes' bfloat16 is a NumPy dtype of kind 'V' (not 'f') that is no subtype of np.floating, and its
scalars are no np.floating either: every check that asked `.kind == "f"` or `isinstance(v, np.floating)`
treated bfloat16 as "not a float". These tests pin each place that classifies a dtype or a number, in the
test machinery (as64, assert_close, the torch bridge of the CUDA backend) and in the package (scalar
arguments of the ops, SamplingConfig, model dtypes), for every floating dtype attnkit takes.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import as64, assert_close, from_torch, is_float_dtype, load_reference, to_torch

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
FLOAT_IDS = ["f16", "bf16", "f32", "f64"]
ref = load_reference()


def half_values(rng, shape, dtype):
    """Random values exactly representable in dtype (so the float64 widening is exact)."""
    return rng.standard_normal(shape).astype(dtype)


# --- the test machinery --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_as64_widens_every_float_dtype(rng, dtype):
    x = half_values(rng, (3, 5), dtype)
    assert is_float_dtype(dtype) and is_float_dtype(dtype.name)
    wide = as64(x)
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide, x.astype(np.float64))                     # every value, exactly


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int64, np.uint16, np.complex64])
def test_as64_leaves_other_dtypes(dtype):
    x = np.arange(6).astype(dtype)
    assert not is_float_dtype(dtype)
    assert as64(x).dtype == np.dtype(dtype)
    assert as64(None) is None


def test_the_oracle_of_a_half_kernel_runs_in_float64(rng):
    # softmax of bfloat16 inputs: the oracle on as64 inputs is float64, and the check against it is strict
    # enough to see the difference between a float64 and a bfloat16 "reference"
    x = half_values(rng, (4, 127), BF16) * 4
    want = ref.softmax(as64(x), axis=-1)
    assert want.dtype == np.float64
    rounded = want.astype(BF16)
    assert np.abs(rounded.astype(np.float64) - want).max() > 0       # bfloat16 rounding is visible
    with pytest.raises(AssertionError, match="not the float64 oracle"):
        assert_close(rounded, rounded, "bfloat16")                   # a half reference is refused
    assert_close(rounded, want, "bfloat16")


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_torch_bridge_keeps_dtype_and_bits(rng, dtype):
    torch = pytest.importorskip("torch")
    x = half_values(rng, (2, 3, 7), dtype)[:, ::-1]                   # a negative-stride view too
    t = to_torch(x)
    assert t.dtype == getattr(torch, dtype.name) and tuple(t.shape) == x.shape
    np.testing.assert_array_equal(t.double().numpy(), as64(x))
    back = from_torch(t)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.view(f"u{dtype.itemsize}"), np.ascontiguousarray(x).view(f"u{dtype.itemsize}"))


# --- the package ---------------------------------------------------------------------------------
def test_package_classifies_float_dtypes_by_name():
    from attnkit import _dtypes
    for dt in FLOATS:
        assert _dtypes.is_float_dtype(dt), dt
    for dt in (np.bool_, np.int32, np.uint8, np.complex128, "V2", object):
        assert not _dtypes.is_float_dtype(dt), dt
    assert not _dtypes.is_float_dtype("not a dtype")
    assert _dtypes.bfloat16() == BF16


@pytest.mark.parametrize("value", [0.5, 1, np.float16(0.5), ml_dtypes.bfloat16(0.5), np.float32(0.5), np.int8(1)],
                         ids=["float", "int", "f16", "bf16", "f32", "i8"])
def test_real_scalars(value):
    from attnkit import _dtypes
    assert _dtypes.is_real_scalar(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", 1j, np.complex64(1), np.ones(2), None],
                         ids=["bool", "np-bool", "str", "complex", "np-complex", "array", "None"])
def test_not_real_scalars(value):
    from attnkit import _dtypes
    assert not _dtypes.is_real_scalar(value)


@pytest.mark.parametrize("scalar", [np.float16, ml_dtypes.bfloat16, np.float32], ids=["f16", "bf16", "f32"])
def test_op_scalars_of_every_float_type(rng, scalar):
    import attnkit
    q, k, v = (rng.standard_normal((1, 2, 9, 8)).astype(np.float32) for _ in range(3))
    np.testing.assert_array_equal(attnkit.scaled_dot_product_attention(q, k, v, scale=scalar(0.5)),
                                  attnkit.scaled_dot_product_attention(q, k, v, scale=0.5))
    x, w = rng.standard_normal((3, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    np.testing.assert_array_equal(attnkit.layer_norm(x, 16, eps=scalar(0.25)), attnkit.layer_norm(x, 16, eps=0.25))
    np.testing.assert_array_equal(attnkit.rms_norm(x, w, scalar(0.25)), attnkit.rms_norm(x, w, 0.25))


def test_rms_norm_eps_must_be_a_number(rng):
    import attnkit
    x = rng.standard_normal((3, 16)).astype(np.float32)
    for bad in ("1e-6", True, np.ones(2)):
        with pytest.raises(TypeError, match="eps"):
            attnkit.rms_norm(x, None, bad)


def test_sampling_options_take_numpy_and_bfloat16_scalars():
    from attnkit.nn.sampling import SamplingConfig
    cfg = SamplingConfig(do_sample=True, temperature=np.float32(0.75), top_p=ml_dtypes.bfloat16(0.5),
                         repetition_penalty=np.float16(1.25), top_k=np.int64(3), seed=0)
    assert (cfg.temperature, cfg.top_p, cfg.repetition_penalty) == (0.75, 0.5, 1.25)
    assert all(type(v) is float for v in (cfg.temperature, cfg.top_p, cfg.repetition_penalty))
    for name, bad in (("temperature", "1"), ("top_p", True), ("repetition_penalty", np.ones(1))):
        with pytest.raises(ValueError, match=name):
            SamplingConfig(**{name: bad})


@pytest.mark.parametrize("dtype", ["bfloat16", ml_dtypes.bfloat16, BF16, np.float16, "float32", np.float64],
                         ids=["bf16-str", "bf16-type", "bf16-dtype", "f16", "f32-str", "f64"])
def test_model_dtypes(rng, dtype):
    from attnkit.nn import LayerNorm
    from attnkit.nn.module import float_dtype
    dt = float_dtype(dtype)
    assert dt.name in ("bfloat16", "float16", "float32", "float64") and dt == np.dtype(dtype)
    layer = LayerNorm(rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32))
    half = layer.astype(dt)
    assert half.weight.dtype == dt and half.bias.dtype == dt     # every floating weight converted
    np.testing.assert_array_equal(half.weight, layer.weight.astype(dt))
    with pytest.raises(ValueError, match="dtype"):
        float_dtype(np.int32)
