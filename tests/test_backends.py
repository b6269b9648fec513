"""Every fast backend against the reference, case by case and tensor by tensor."""

import numpy as np
import pytest

import fastrnn
from cases import CASES, REFERENCE, case_id, rel_err

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_loss_and_grads_agree_with_reference(case, dtype, fast_backend):
    params, inputs, targets, h0 = case.make(dtype, seed=11)
    kw = case.kwargs(h0)
    ref_loss, ref, ref_h = fastrnn.loss_and_grads(params, inputs, targets, backend=REFERENCE, **kw)
    loss, got, h_last = fastrnn.loss_and_grads(params, inputs, targets, backend=fast_backend, **kw)
    tol = TOLERANCE[dtype]
    assert abs(loss - ref_loss) <= tol * abs(ref_loss)
    assert rel_err(h_last, ref_h) <= tol
    assert h_last.dtype == dtype
    for name in fastrnn.Grads._fields:
        a, b = getattr(got, name), getattr(ref, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == dtype, f"d{name} came back as {a.dtype}"
        assert a.shape == b.shape, name
        assert rel_err(a, b) <= tol, f"d{name}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_layer_functions_agree_with_reference(case, dtype, fast_backend):
    params, inputs, targets, h0 = case.make(dtype, seed=5)
    U, W, b = params.U, params.W, params.b
    kw = dict(batch_first=case.batch_first)
    H_ref = fastrnn.rnn_forward(inputs, U, W, b, h0, backend=REFERENCE, **kw)
    H = fastrnn.rnn_forward(inputs, U, W, b, h0, backend=fast_backend, **kw)
    tol = TOLERANCE[dtype]
    assert H.dtype == dtype and rel_err(H, H_ref) <= tol
    dH = np.random.default_rng(1).standard_normal(H.shape).astype(dtype)
    ref = fastrnn.rnn_backward(dH, H_ref, inputs, U, W, h0, backend=REFERENCE, **kw)
    got = fastrnn.rnn_backward(dH, H_ref, inputs, U, W, h0, backend=fast_backend, **kw)
    for name in fastrnn.LayerGrads._fields:
        a, r = getattr(got, name), getattr(ref, name)
        if r is None:
            assert a is None
            continue
        assert a.dtype == dtype and rel_err(a, r) <= tol, name
    Y_ref, h_ref = fastrnn.predict_proba(params, inputs, h0=h0, backend=REFERENCE, **kw)
    Y, h_last = fastrnn.predict_proba(params, inputs, h0=h0, backend=fast_backend, **kw)
    assert Y.dtype == dtype and rel_err(Y, Y_ref) <= tol and rel_err(h_last, h_ref) <= tol


def test_large_logits_stay_finite(backend):
    """Softmax is shifted by the row max: logits of ±1e4 neither overflow nor give NaN.

    The expected loss and dV are computed here from the hidden states with
    numpy's logaddexp, not by any backend's softmax, so the reference is held
    to the same check as the others."""
    case = CASES[5]
    params, inputs, targets, h0 = case.make(np.float64, seed=2)
    params = params._replace(V=params.V * 1e4)
    loss, grads, _ = fastrnn.loss_and_grads(params, inputs, targets, h0=h0, backend=backend)
    assert np.isfinite(loss) and loss > 10
    assert all(np.isfinite(g).all() for g in grads if g is not None)
    H = fastrnn.rnn_forward(inputs, params.U, params.W, params.b, h0, backend=REFERENCE)
    O = H @ params.V + params.c  # (T, n, v), entries of order 1e4
    lse = np.logaddexp.reduce(O, axis=-1)
    picked = np.take_along_axis(O, targets[..., None], axis=-1)[..., 0]
    expected = float((lse - picked).mean())
    assert loss == pytest.approx(expected, rel=1e-12)
    dO = (np.exp(O - lse[..., None]) - np.eye(case.v)[targets]) / (case.T * case.n)
    dV = np.einsum("tnh,tnv->hv", H, dO)
    assert rel_err(grads.V, dV) <= 1e-10
