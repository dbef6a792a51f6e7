"""Bad arguments raise TypeError/ValueError naming the argument (issue 11, item 4); valid edge forms pass."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import attnkit

sdpa = attnkit.scaled_dot_product_attention


def qkv(rng, B=1, H=2, L=4, E=8, dtype=np.float32):
    return [rng.standard_normal((B, H, L, E)).astype(dtype) for _ in range(3)]


def self_overlapping(shape, dtype=np.float32):
    """A writable view of `shape` whose rows alias: row stride one element, distinct from zero."""
    base = np.zeros(int(np.prod(shape)) + 64, dtype)
    item = base.itemsize
    strides = [item] * len(shape)                          # every dim steps by one element
    return as_strided(base, shape=shape, strides=strides)


@pytest.mark.parametrize("op", ["sdpa", "linear"])       # the functions that take out=
def test_self_overlapping_out_is_rejected(op, rng):
    q, k, v = qkv(rng)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    calls = {
        "sdpa": lambda out: sdpa(q, k, v, out=out),
        "linear": lambda out: attnkit.linear(x, rng.standard_normal((8, 8)).astype(np.float32), out=out),
    }
    shape = q.shape if op == "sdpa" else x.shape
    with pytest.raises(ValueError, match="out"):
        calls[op](self_overlapping(shape))
    good = np.zeros(shape, np.float32)
    calls[op](good)                                        # a plain array still works
    calls[op](np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)[..., :shape[-1]])   # spaced rows
    if op == "sdpa":
        calls[op](np.zeros(shape[::-1], np.float32).T)                           # a transposed array


@pytest.mark.parametrize("scale,error", [(np.array([1.0, 2.0]), TypeError), (2**1100, ValueError),
                                         ("2", TypeError), (1j, TypeError), (True, TypeError),
                                         (float("nan"), ValueError), (-1.0, ValueError), (float("inf"), ValueError)],
                         ids=["array", "2**1100", "str", "complex", "bool", "nan", "negative", "inf"])
def test_bad_scale_names_scale(scale, error, rng):
    q, k, v = qkv(rng)
    with pytest.raises(error, match="scale"):
        sdpa(q, k, v, scale=scale)
    sdpa(q, k, v, scale=np.float32(0.5))
    sdpa(q, k, v, scale=np.array(0.5))                     # a 0-d array is a number
    sdpa(q, k, v, scale=2)


@pytest.mark.parametrize("eps,error", [(None, TypeError), ("abc", TypeError), (1j, TypeError),
                                       (np.ones(2), TypeError), (-1.0, ValueError), (float("nan"), ValueError),
                                       (10**400, ValueError)],
                         ids=["None", "str", "complex", "array", "negative", "nan", "huge-int"])
def test_bad_eps_names_eps(eps, error, rng):
    with pytest.raises(error, match="eps"):
        attnkit.layer_norm(rng.standard_normal((2, 4)).astype(np.float32), 4, eps=eps)


@pytest.mark.parametrize("shape", [None, 4.0, "4", (4.0,), [None], True])
def test_bad_normalized_shape_names_it(shape, rng):
    with pytest.raises(TypeError, match="normalized_shape"):
        attnkit.layer_norm(rng.standard_normal((2, 4)).astype(np.float32), shape)


def test_kv_lengths_forms(rng):
    q, k, v = qkv(rng, B=2)
    with pytest.raises(ValueError, match="kv_lengths"):
        sdpa(q, k, v, kv_lengths=[[1, 2], [3]])             # ragged
    z = np.zeros((0, 2, 4, 8), np.float32)
    assert sdpa(z, z, z, kv_lengths=[]).shape == (0, 2, 4, 8)   # valid: no batch elements
    assert sdpa(z, z, z, kv_lengths=np.zeros(0, np.int64)).shape == (0, 2, 4, 8)
    with pytest.raises(TypeError, match="kv_lengths"):
        sdpa(q, k, v, kv_lengths=np.zeros(0))                # a float array stays an error
    with pytest.raises(ValueError, match="kv_lengths"):
        sdpa(q, k, v, kv_lengths=[])                         # and [] for a batch of 2


@pytest.mark.parametrize("align", [np.array(["top_left"]), ["top_left"], 1, None])
def test_causal_alignment_must_be_a_string(align, rng):
    q, k, v = qkv(rng)
    with pytest.raises(TypeError, match="causal_alignment"):
        sdpa(q, k, v, is_causal=True, causal_alignment=align)
    with pytest.raises(ValueError, match="causal_alignment"):
        sdpa(q, k, v, is_causal=True, causal_alignment="top-left")
