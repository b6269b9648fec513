"""Every size-dependent branch of the fast kernels, tested on each side.

The shapes are chosen so that a case lands just below or at/above a cutoff,
and every gradient is compared with the numpy reference at float64. Each
branch was broken on purpose (bench/mutate.py) to see these tests fail.

The branches:
* the contiguous copy of Wᵀ in the backward recurrence, taken while
  n·h·h < COPY_WT_BELOW (both backends; the other side multiplies by the
  transposed view, BLAS flag 'T' in C);
* the Numba params_only path's chunks of timesteps: max(⌈T/8⌉, ⌈256/n⌉) steps
  each, at most T (one chunk, several unequal chunks, one step per chunk);
* the softmax row's max over four interleaved partials (v below 4, a multiple
  of 4, and a remainder);
* the C backend's 32-bit size check;
* the per-step product's register tiles (numba_kernels.tiles_dot, csrc/tiles.h):
  taken for 2 <= m <= TILE_ROWS rows and h·h·itemsize <= TILE_BYTES, else the
  BLAS; inside, rows in groups of 4 and a remainder of 1, 2 or 3, columns in
  whole tiles (16 float32, 8 float64) and a masked last tile; Wᵀ copied
  wherever the tiles may run.
"""

import numpy as np
import pytest

from cases import rel_err
from fastrnn._config import COPY_WT_BELOW, TILE_BYTES, TILE_ROWS
from fastrnn.backends import resolve

GRADS = ("dU", "dW", "dV", "db", "dc", "dh0", "dX", "dA", "h_last")


def _problem(T, n, d, h, v, ids, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((d, h)) * (1.5 / np.sqrt(d))
    W = rng.standard_normal((h, h)) * (0.9 / np.sqrt(h))  # not symmetric: W and Wᵀ differ
    V = rng.standard_normal((h, v)) * (2.0 / np.sqrt(h))
    b = 0.3 * rng.standard_normal(h)
    c = 0.3 * rng.standard_normal(v)
    inputs = rng.integers(0, d, size=(T, n)) if ids else rng.standard_normal((T, n, d))
    targets = rng.integers(0, v, size=(T, n))
    h0 = 0.5 * rng.standard_normal((n, h))
    return U, W, V, b, c, inputs, targets, h0


def _check_loss_and_grads(name, shape, ids, params_only):
    U, W, V, b, c, inputs, targets, h0 = _problem(*shape, ids)
    T, n = targets.shape
    scale = 1.0 / (T * n)
    want = resolve("numpy").loss_and_grads(U, W, V, b, c, inputs, targets, h0, scale, params_only)
    got = resolve(name).loss_and_grads(U, W, V, b, c, inputs, targets, h0, scale, params_only)
    assert abs(got[0] - want[0]) <= 1e-12 * abs(want[0])
    for label, g, w in zip(GRADS, got[1:], want[1:]):
        if w is None:
            assert g is None, label
            continue
        assert rel_err(g, w) <= 1e-12, label


def _check_backward(name, shape, ids):
    U, W, _, _, _, inputs, _, h0 = _problem(*shape, ids)
    ref = resolve("numpy")
    H = ref.forward(U, W, np.zeros(U.shape[1]), inputs, h0)
    dH = np.random.default_rng(1).standard_normal(H.shape)
    want = ref.backward(U, W, inputs, h0, H, dH)
    got = resolve(name).backward(U, W, inputs, h0, H, dH)
    for label, g, w in zip(("dU", "dW", "db", "dh0", "dX", "dA"), got, want):
        if w is None:
            assert g is None, label
            continue
        assert rel_err(g, w) <= 1e-12, label


# n·h·h just below the cutoff (Wᵀ copied) and exactly at it (the transposed view).
H_CUT = 128
N_AT = COPY_WT_BELOW // (H_CUT * H_CUT)
WT_SIDES = {"copy": N_AT - 1, "view": N_AT}


def test_cutoff_shapes_straddle_it():
    assert (N_AT - 1) * H_CUT * H_CUT < COPY_WT_BELOW <= N_AT * H_CUT * H_CUT


def test_numba_copies_wt_below_the_cutoff_only():
    nk = pytest.importorskip("fastrnn.backends.numba_kernels")
    W = np.arange(H_CUT * H_CUT, dtype=np.float64).reshape(H_CUT, H_CUT)
    np.testing.assert_array_equal(nk._transposed_W(W, WT_SIDES["copy"], WT_SIDES["copy"]), W.T)
    assert nk._transposed_W(W, WT_SIDES["view"], WT_SIDES["view"]).size == 0


def test_c_copies_wt_below_the_cutoff_only():
    pytest.importorskip("fastrnn.backends.cffi_kernels")
    from fastrnn._fastrnn_c import lib

    for n, want in ((WT_SIDES["copy"], 1), (WT_SIDES["view"], 0)):
        assert lib.fastrnn_copy_wt(n, n, H_CUT, 8, COPY_WT_BELOW) == want


@pytest.mark.parametrize("params_only", [False, True], ids=["full", "params_only"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("side", WT_SIDES)
def test_wt_cutoff_loss_and_grads(fast_backend, side, ids, params_only):
    _check_loss_and_grads(fast_backend, (4, WT_SIDES[side], 3, H_CUT, 5), ids, params_only)


@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("side", WT_SIDES)
def test_wt_cutoff_backward(fast_backend, side, ids):
    _check_backward(fast_backend, (3, WT_SIDES[side], 3, H_CUT, 5), ids)


def _chunk_sizes(T, n):
    """The Numba params_only path's chunks, last first (as it walks them)."""
    from fastrnn.backends import numba_kernels as nk

    steps = nk._chunk_steps(T, n)
    sizes, t1 = [], T
    while t1 > 0:
        sizes.append(t1 - max(0, t1 - steps))
        t1 -= sizes[-1]
    return sizes


# (T, n) -> the chunks it makes; checked below so the cases stay what they claim.
CHUNKINGS = {
    "one-chunk": ((10, 4), [10]),  # ⌈256/n⌉ = 64 ≥ T
    "unequal-rows-bound": ((10, 64), [4, 4, 2]),  # ⌈256/n⌉ = 4 > ⌈T/8⌉ = 2
    "unequal-T-bound": ((41, 256), [6] * 6 + [5]),  # ⌈T/8⌉ = 6 > ⌈256/n⌉ = 1
    "one-step-each": ((5, 256), [1] * 5),
}


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_chunk_cases_are_what_they_claim(chunking):
    pytest.importorskip("numba")
    (T, n), sizes = CHUNKINGS[chunking]
    assert _chunk_sizes(T, n) == sizes


@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_params_only_chunks(fast_backend, chunking, ids):
    (T, n), _ = CHUNKINGS[chunking]
    _check_loss_and_grads(fast_backend, (T, n, 3, 6, 5), ids, params_only=True)


@pytest.mark.parametrize("v", [1, 3, 4, 8, 11])
def test_softmax_partial_max(fast_backend, v):
    # The max sits in each of the four partials in turn (and in the tail), so
    # far above the rest that exp overflows unless that very max is subtracted.
    U, W, V, b, c, inputs, targets, h0 = _problem(3, 5, 2, 4, v, ids=False)
    for k in range(v):
        c2 = c.copy()
        c2[k] += 1000.0  # column k holds every row's max
        scale = 1.0 / 15
        want = resolve("numpy").loss_and_grads(U, W, V, b, c2, inputs, targets, h0, scale)
        got = resolve(fast_backend).loss_and_grads(U, W, V, b, c2, inputs, targets, h0, scale)
        assert abs(got[0] - want[0]) <= 1e-12 * abs(want[0])
        for label, g, w in zip(GRADS, got[1:], want[1:]):
            assert rel_err(g, w) <= 1e-12, (k, label)
        p_want, _ = resolve("numpy").probs(U, W, V, b, c2, inputs, h0)
        p_got, _ = resolve(fast_backend).probs(U, W, V, b, c2, inputs, h0)
        assert rel_err(p_got, p_want) <= 1e-12, k


def test_c_refuses_sizes_over_32_bits():
    c_backend = pytest.importorskip("fastrnn.backends.cffi_kernels")
    U = np.ones((1, 1))
    # 2^16 · 2^15 = 2^31 rows: one past what a 32-bit BLAS size holds (no memory behind it).
    ids = np.broadcast_to(np.zeros((), np.int64), (2**16, 2**15))
    with pytest.raises(ValueError, match="32-bit"):
        c_backend.forward(U, U, np.zeros(1), ids, np.zeros((2**15, 1)))
    ids = np.broadcast_to(np.zeros((), np.int64), (2**31 - 1, 1))  # exactly the largest int
    assert c_backend._sizes(ids, U) == (2**31 - 1, 1, 1, 1)


# ---- the per-step product's register tiles

TILE_ROWS_CASES = (1, 2, 3, 4, 5, 6, 7, 8, 9, TILE_ROWS - 1, TILE_ROWS, TILE_ROWS + 1)
TILE_COLS_CASES = (1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31, 33, 100)
DTYPES = (np.float32, np.float64)


def _tile_case(m, h, dtype, seed=0):
    rng = np.random.default_rng(seed + 1000 * m + h)
    return rng.standard_normal((m, h)).astype(dtype), rng.standard_normal((h, h)).astype(dtype)


def _product_into_fenced(fn, A, B):
    """fn(A, B, C) into C (m, h) inside a NaN-filled buffer with a fence after it: returns
    C, and asserts fn wrote every element of C and nothing past it."""
    m, h = A.shape
    buf = np.full(m * h + 64, np.nan, A.dtype)
    buf[m * h :] = 12345.0
    C = buf[: m * h].reshape(m, h)
    fn(A, B, C)
    assert np.all(buf[m * h :] == 12345.0), "wrote past the end"
    assert not np.isnan(C).any(), "left elements unwritten"
    return C


def _within_rounding(C, A, B):
    """|C − AB| <= (h + 1)·eps·(|A||B|) elementwise: what any order of the h products and
    sums (fused or not) guarantees; a wrong column, row or mask misses it by far."""
    exact = A.astype(np.longdouble) @ B.astype(np.longdouble)
    bound = (A.shape[1] + 1) * np.finfo(A.dtype).eps * (np.abs(A).astype(np.longdouble) @ np.abs(B))
    bad = np.abs(C - exact) > bound
    return not bad.any(), np.argwhere(bad)[:3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiles_every_row_and_column_remainder(dtype):
    """The Numba tiles on their own, at every size (the C ones: below, bit for bit)."""
    nk = pytest.importorskip("fastrnn.backends.numba_kernels")
    for m in TILE_ROWS_CASES:
        for h in TILE_COLS_CASES:
            A, B = _tile_case(m, h, dtype)
            ok, where = _within_rounding(_product_into_fenced(nk.tiles_dot, A, B), A, B)
            assert ok, (m, h, where)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_product_on_both_sides_of_the_limits(fast_backend, dtype):
    """One step's product as the kernels compute it (tiles or BLAS by size)."""
    step = resolve(fast_backend).step_product
    h_limit = int(np.sqrt(TILE_BYTES // np.dtype(dtype).itemsize))
    sizes = [(m, h) for m in TILE_ROWS_CASES for h in TILE_COLS_CASES]
    sizes += [(m, h) for m in (2, 5, TILE_ROWS) for h in (h_limit, h_limit + 1)]
    for m, h in sizes:
        A, B = _tile_case(m, h, dtype)
        ok, where = _within_rounding(_product_into_fenced(step, A, B), A, B)
        assert ok, (m, h, where)


def _tiles_decisions(apply, itemsize):
    h_limit = int(np.sqrt(TILE_BYTES // itemsize))
    assert h_limit * h_limit * itemsize <= TILE_BYTES < (h_limit + 1) ** 2 * itemsize
    return {(m, h): apply(m, h, itemsize) for m in (1, 2, TILE_ROWS, TILE_ROWS + 1) for h in (16, h_limit, h_limit + 1)}


def _tiles_expected(itemsize):
    h_limit = int(np.sqrt(TILE_BYTES // itemsize))
    return {(m, h): 2 <= m <= TILE_ROWS and h <= h_limit
            for m in (1, 2, TILE_ROWS, TILE_ROWS + 1) for h in (16, h_limit, h_limit + 1)}


@pytest.mark.parametrize("itemsize", [4, 8])
def test_numba_takes_the_tiles_inside_the_limits_only(itemsize):
    nk = pytest.importorskip("fastrnn.backends.numba_kernels")
    assert _tiles_decisions(nk.tiles_apply, itemsize) == _tiles_expected(itemsize)


def _c_has_tiles():
    """The C tiles run where the CPU has AVX2 and FMA (x86-64, read from /proc/cpuinfo)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx2" in flags and "fma" in flags


@pytest.mark.parametrize("itemsize", [4, 8])
def test_c_takes_the_tiles_inside_the_limits_only(itemsize):
    pytest.importorskip("fastrnn.backends.cffi_kernels")
    from fastrnn._fastrnn_c import lib

    assert (lib.FASTRNN_TILE_ROWS, lib.FASTRNN_TILE_BYTES) == (TILE_ROWS, TILE_BYTES)
    want = _tiles_expected(itemsize)
    if not _c_has_tiles():  # no AVX2 + FMA: every product goes to the BLAS
        want = {k: False for k in want}
    assert {k: bool(v) for k, v in _tiles_decisions(lib.fastrnn_tiles, itemsize).items()} == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiles_give_the_same_bits_in_both_backends(dtype):
    """Each element is one fused multiply-add chain over k in order, in both backends'
    tiles; and the kernels' step product is the tiles' wherever they apply."""
    nk = pytest.importorskip("fastrnn.backends.numba_kernels")
    c_step = resolve("c").step_product if _c_has_tiles() else None
    if c_step is None:
        pytest.importorskip("fastrnn.backends.cffi_kernels")
    for m in TILE_ROWS_CASES:
        for h in TILE_COLS_CASES:
            A, B = _tile_case(m, h, dtype)
            tiles = _product_into_fenced(nk.tiles_dot, A, B)
            if nk.tiles_apply(m, h, A.itemsize):
                np.testing.assert_array_equal(_product_into_fenced(nk.step_product, A, B), tiles, err_msg=f"{m} {h}")
                if c_step is not None:
                    np.testing.assert_array_equal(_product_into_fenced(c_step, A, B), tiles, err_msg=f"{m} {h}")


def test_wt_is_copied_wherever_the_tiles_may_run():
    """n·h·h at the cutoff (no copy for its sake), yet a step of ``fewest`` rows in the
    tiles needs Wᵀ contiguous."""
    h = 128
    n = COPY_WT_BELOW // (h * h)
    assert n * h * h >= COPY_WT_BELOW and h * h * 4 <= TILE_BYTES
    cases = {1: True, 2: True, TILE_ROWS: True, TILE_ROWS + 1: False}
    nk = pytest.importorskip("fastrnn.backends.numba_kernels")
    W = np.arange(h * h, dtype=np.float32).reshape(h, h)
    for fewest, copy in cases.items():
        WT = nk._transposed_W(W, n, fewest)
        if copy:
            np.testing.assert_array_equal(WT, W.T)
        else:
            assert WT.size == 0, fewest
    pytest.importorskip("fastrnn.backends.cffi_kernels")
    from fastrnn._fastrnn_c import lib

    for fewest, copy in cases.items():
        assert lib.fastrnn_copy_wt(n, fewest, h, 4, COPY_WT_BELOW) == int(copy and _c_has_tiles()), fewest


# n on both sides of each limit of the tiles' rows; h with whole and masked tiles, and on
# both sides of TILE_BYTES in float64 (181² · 8 <= 2^18 < 182² · 8).
TILE_STEPS = [(3, n, 3, h, 5) for n in (1, 2, 3, 5, TILE_ROWS, TILE_ROWS + 1) for h in (8, 17)]
TILE_STEPS += [(2, 3, 2, 181, 3), (2, 3, 2, 182, 3)]


@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("shape", TILE_STEPS, ids=lambda s: "T{}n{}d{}h{}v{}".format(*s))
def test_tiles_in_a_training_step(fast_backend, shape, ids):
    _check_loss_and_grads(fast_backend, shape, ids, params_only=False)
