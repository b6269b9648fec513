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
* the C backend's 32-bit size check.
"""

import numpy as np
import pytest

from cases import rel_err
from fastrnn._config import COPY_WT_BELOW
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
    np.testing.assert_array_equal(nk._transposed_W(W, WT_SIDES["copy"]), W.T)
    assert nk._transposed_W(W, WT_SIDES["view"]).size == 0


def test_c_copies_wt_below_the_cutoff_only():
    pytest.importorskip("fastrnn.backends.cffi_kernels")
    from fastrnn._fastrnn_c import lib

    assert lib.fastrnn_copy_wt(WT_SIDES["copy"], H_CUT, COPY_WT_BELOW) == 1
    assert lib.fastrnn_copy_wt(WT_SIDES["view"], H_CUT, COPY_WT_BELOW) == 0


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
