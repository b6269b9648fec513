"""Every gradient of every backend against float64 central differences of the loss.

This file keeps its own ten-line central-difference loop instead of calling
``fastrnn.gradcheck``, on purpose: it is the test of the gradients, so it shares
no code with the library's checker (sub-sampling, float64 copies, the report's
error measure) that a single bug could break on both sides at once. It shares
only the reference backend's loss, whose value is itself checked by hand in
test_api.py and against PyTorch in test_torch.py. ``fastrnn.gradcheck`` is tested
separately, in test_gradcheck.py, including against gradients that are wrong.
"""

import numpy as np
import pytest

import fastrnn
from cases import CASES, REFERENCE, case_id, rel_err

EPS = 1e-6
TOL = 1e-6


def _loss(params, inputs, targets, h0, case):
    return fastrnn.loss_and_grads(params, inputs, targets, backend=REFERENCE, **case.kwargs(h0))[0]


def _central_difference(f, a):
    """∂f/∂a by central differences, perturbing ``a`` in place entry by entry."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + EPS
        up = f()
        a[idx] = old - EPS
        down = f()
        a[idx] = old
        g[idx] = (up - down) / (2 * EPS)
    return g


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_all_gradients_match_central_differences(case, backend):
    params, inputs, targets, h0 = case.make(np.float64, seed=7)
    if h0 is None:  # the gradient on the default zero state is checked too
        h0_arr = np.zeros((case.h,) if case.unbatched else (case.n, case.h))
    else:
        h0_arr = h0
    _, grads, _ = fastrnn.loss_and_grads(params, inputs, targets, backend=backend, **case.kwargs(h0))

    def f():
        return _loss(params, inputs, targets, h0_arr, case)

    checked = dict(zip("UWVbc", params), h0=h0_arr)
    if not case.ids:
        checked["X"] = inputs
    for name, array in checked.items():
        numeric = _central_difference(f, array)
        err = rel_err(getattr(grads, name), numeric)
        assert err <= TOL, f"d{name}: relative error {err:.2e} > {TOL:.0e}"
    if case.ids:
        assert grads.X is None


DENSE_TIME_MAJOR = [c for c in CASES if not (c.ids or c.unbatched or c.batch_first)]


@pytest.mark.parametrize("case", DENSE_TIME_MAJOR[:6], ids=case_id)
def test_dA_is_the_gradient_of_the_preactivations(case, backend):
    """grads.A[t] = ∂L/∂A_t, checked by perturbing A_t through a bias on that step alone.

    Adding δ to A_t at one (t, i, j) equals adding δ to X_t U there; with dense
    inputs we route it through an extra input column whose U row is e_j.
    """
    params, inputs, targets, h0 = case.make(np.float64, seed=3)
    _, grads, _ = fastrnn.loss_and_grads(params, inputs, targets, backend=backend, **case.kwargs(h0))
    T, n, h = grads.A.shape
    numeric = np.zeros_like(grads.A)
    for j in range(h):
        # Extra input column k = d feeds e_j into A: U' = [U; e_j].
        U2 = np.vstack([params.U, np.eye(h)[j]])
        p2 = params._replace(U=U2)
        x2 = np.concatenate([inputs, np.zeros((T, n, 1))], axis=2)
        for t in range(T):
            for i in range(n):
                vals = []
                for s in (+1, -1):
                    x2[t, i, -1] = s * EPS
                    vals.append(_loss(p2, x2, targets, h0, case))
                x2[t, i, -1] = 0
                numeric[t, i, j] = (vals[0] - vals[1]) / (2 * EPS)
    assert rel_err(grads.A, numeric) <= TOL
