"""Memory layouts NumPy can produce, by class, for the layout matrix (test_layouts.py), the guard-page
child (test_guard_pages.py) and the fuzz (test_fuzz.py).

An input class gives a view with the values of a given array (or, for the broadcast classes, a
zero-stride view of part of it: the test then takes the view's own values as the input). An output
class gives a view inside a larger buffer filled with a sentinel, so that a test can check that
nothing outside the view was written.
"""
from __future__ import annotations

import ctypes
import mmap

import numpy as np


def input_classes(ndim):
    """Every input layout class that exists for an array of ``ndim`` dims."""
    names = ["contiguous"]
    if ndim >= 2:
        names += ["fortran", "rows_reversed", "every_other_row", "all_reversed"]
    names += [f"rev{i}" for i in range(ndim)]
    names += ["strided", "offset"]
    if ndim >= 3:
        names += ["transposed_batch"]
    names += sorted({f"broadcast{i}" for i in (0, max(ndim - 2, 0))})
    return names


def output_classes(ndim):
    """The writable classes (no broadcast: a zero stride cannot be written)."""
    return [c for c in input_classes(ndim) if not c.startswith("broadcast")]


ALL_INPUT_CLASSES = input_classes(4)


def _place(buf, view, a):
    view[...] = a
    return view


def input_view(a, cls):
    """A view with a's values (the broadcast classes: a zero-stride view of a's first slice), laid
    out as ``cls`` says, in a fresh buffer; None when the class does not exist for a's ndim."""
    a = np.asarray(a)
    nd = a.ndim
    if cls not in input_classes(nd):
        return None
    if cls == "contiguous":
        return a.copy()
    if cls == "fortran":                            # every axis reversed in memory order
        return np.asfortranarray(a)
    if cls.startswith("rev"):                       # one axis with a negative stride
        ax = int(cls[3:])
        return np.flip(np.flip(a, ax).copy(), ax)
    if cls == "rows_reversed":                      # every axis but the last reversed: one negative row stride
        axes = tuple(range(nd - 1))
        return np.flip(np.flip(a, axes).copy(), axes)
    if cls == "all_reversed":
        return np.flip(np.flip(a).copy())
    if cls == "every_other_row":                    # rows two apart (nd >= 2)
        buf = np.zeros(a.shape[:-2] + (2 * a.shape[-2] + 1, a.shape[-1]), a.dtype)
        return _place(buf, buf[..., 1::2, :], a)
    if cls == "strided":                            # every other element along every axis
        buf = np.zeros(tuple(2 * n + 1 for n in a.shape), a.dtype)
        return _place(buf, buf[(slice(1, None, 2),) * nd], a)
    if cls == "offset":                             # an odd element offset inside a larger buffer
        buf = np.zeros(a.size + 11, a.dtype)
        return _place(buf, buf[3:3 + a.size].reshape(a.shape), a)
    if cls == "transposed_batch":                   # the first two axes swapped in memory: rows that do not nest
        return np.swapaxes(np.swapaxes(a, 0, 1).copy(), 0, 1)
    if cls.startswith("broadcast"):                 # a zero stride along one axis
        ax = int(cls[9:])
        first = np.take(a, [0], axis=ax) if a.shape[ax] else a
        return np.broadcast_to(first.copy(), a.shape)
    raise ValueError(cls)


def output_view(shape, dtype, cls, fill=None):
    """(buffer, view): a view of ``shape`` laid out as ``cls`` inside a larger buffer, the whole
    buffer filled with ``fill`` (NaN by default: a sentinel no correct result overwrites unseen);
    (None, None) when the class does not exist for that ndim."""
    template = np.zeros(shape, dtype)
    view = input_view(template, cls)
    if view is None:
        return None, None
    base = view
    while base.base is not None and isinstance(base.base, np.ndarray):
        base = base.base
    base[...] = np.nan if fill is None else fill
    return base, view


def element_offsets(view, buf):
    """The element offset in ``buf`` of every element of ``view`` (a view of buf's memory)."""
    item = view.itemsize
    start = (view.__array_interface__["data"][0] - buf.__array_interface__["data"][0]) // item
    off = np.full(view.shape, start, dtype=np.int64)
    for ax, (n, s) in enumerate(zip(view.shape, view.strides)):
        shape = [1] * view.ndim
        shape[ax] = n
        off = off + (np.arange(n, dtype=np.int64) * (s // item)).reshape(shape)
    return off


def assert_untouched_outside(buf, before, view, what="out"):
    """Every element of buf outside view is bitwise what it was."""
    outside = np.ones(buf.size, bool)
    outside[element_offsets(view, buf).ravel()] = False
    now = buf.reshape(-1).view(np.uint8 if buf.itemsize == 1 else f"u{buf.itemsize}")
    was = before.reshape(-1).view(now.dtype)
    changed = np.flatnonzero(outside & (now != was))
    assert changed.size == 0, f"{what}: {changed.size} elements outside the view were written (first at {changed[:5]})"


# ---------------------------------------------------------------------------------------------
# Guard pages: a copy of a view (same shape, same strides, same values) whose lowest or highest
# byte touches a PROT_NONE page, so that a read one element past either end faults.
# ---------------------------------------------------------------------------------------------
PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _extent(view):
    """(lowest, highest + 1) byte offsets of view's elements relative to its data pointer."""
    lo = sum((n - 1) * s for n, s in zip(view.shape, view.strides) if s < 0 and n > 0)
    hi = sum((n - 1) * s for n, s in zip(view.shape, view.strides) if s > 0 and n > 0) + view.itemsize
    return lo, hi


def guarded(view, side):
    """A copy of ``view`` with its strides, placed so that its lowest byte directly follows a
    PROT_NONE page (side="low") or its highest byte directly precedes one (side="high"). The
    mapping lives as long as the returned array."""
    view = np.asarray(view)
    lo, hi = _extent(view)
    span = hi - lo
    pages = -(-span // PAGE)
    mm = mmap.mmap(-1, (pages + 2) * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    for page in (0, pages + 1):
        if _libc.mprotect(addr + page * PAGE, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    first = PAGE if side == "low" else (pages + 1) * PAGE - span   # the lowest byte's offset
    out = np.ndarray(view.shape, view.dtype, buffer=mm, offset=first - lo, strides=view.strides)
    if view.size:
        out[...] = view
    out.flags.writeable = view.flags.writeable
    return out
