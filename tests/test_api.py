"""The public API: a hand-worked case, the layer-level pair, layouts, init and backend choice."""

import math
import os

import numpy as np
import pytest

import fastrnn
from cases import CASES, Case, rel_err, run_python


def test_hand_worked_example(backend):
    """T=1, n=1, d=1, h=1, v=2 worked by hand with the math module."""
    params = fastrnn.Params(
        U=np.array([[0.5]]), W=np.array([[0.25]]), V=np.array([[1.0, -1.0]]), b=np.array([0.1]), c=np.array([0.0, 0.2])
    )
    x = np.array([[[2.0]]])
    h0 = np.array([[0.4]])
    y = np.array([[1]])
    a = 2.0 * 0.5 + 0.4 * 0.25 + 0.1  # A = X U + H0 W + b = 1.2
    hh = math.tanh(a)
    o0, o1 = hh * 1.0 + 0.0, hh * -1.0 + 0.2
    p1 = math.exp(o1) / (math.exp(o0) + math.exp(o1))
    loss = -math.log(p1)
    dO = np.array([1 - p1, p1 - 1])  # Ŷ − onehot(1)
    dh = dO[0] * 1.0 + dO[1] * -1.0  # dO Vᵀ
    da = dh * (1 - hh**2)
    got_loss, g, h_last = fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
    assert got_loss == pytest.approx(loss, rel=1e-15)
    assert h_last[0, 0] == pytest.approx(hh, rel=1e-15)
    np.testing.assert_allclose(g.V, [[hh * dO[0], hh * dO[1]]], rtol=1e-14)
    np.testing.assert_allclose(g.c, dO, rtol=1e-14)
    np.testing.assert_allclose(g.A, [[[da]]], rtol=1e-14)
    np.testing.assert_allclose(g.U, [[2.0 * da]], rtol=1e-14)
    np.testing.assert_allclose(g.W, [[0.4 * da]], rtol=1e-14)
    np.testing.assert_allclose(g.b, [da], rtol=1e-14)
    np.testing.assert_allclose(g.h0, [[0.25 * da]], rtol=1e-14)
    np.testing.assert_allclose(g.X, [[[0.5 * da]]], rtol=1e-14)


def test_token_ids_equal_one_hot_inputs(backend):
    params, ids, y, h0 = CASES[16].make(np.float64, seed=9)
    one_hot = np.eye(params.U.shape[0])[ids]
    l1, g1, h1 = fastrnn.loss_and_grads(params, ids, y, h0=h0, reduction="sum", backend=backend)
    l2, g2, h2 = fastrnn.loss_and_grads(params, one_hot, y, h0=h0, reduction="sum", backend=backend)
    assert l1 == pytest.approx(l2, rel=1e-13)
    assert rel_err(h1, h2) <= 1e-13
    for name in "UWVbc":
        assert rel_err(getattr(g1, name), getattr(g2, name)) <= 1e-13
    assert g1.X is None and g2.X.shape == one_hot.shape


def test_sum_is_mean_times_T_n(backend):
    case = CASES[5]
    params, x, y, h0 = case.make(np.float64, seed=1)
    lm, gm, _ = fastrnn.loss_and_grads(params, x, y, h0=h0, reduction="mean", backend=backend)
    ls, gs, _ = fastrnn.loss_and_grads(params, x, y, h0=h0, reduction="sum", backend=backend)
    assert ls == pytest.approx(lm * case.T * case.n, rel=1e-14)
    for a, b in zip(gs, gm):
        if a is not None:
            assert rel_err(a, b * case.T * case.n) <= 1e-13


@pytest.mark.parametrize(
    "case",
    [CASES[0], Case(45, 8, 5, 6, 7), Case(300, 1, 9, 5, 9, ids=True), Case(9, 40, 3, 4, 5, ids=True, with_h0=False)],
    ids=["core0", "dense-2-chunks", "ids-2-chunks", "ids-n40"],
)
def test_params_only_drops_X_and_A_and_nothing_else(backend, case):
    """params_only=True leaves grads.X and grads.A None; everything else agrees with
    the full step to rounding. The shapes walk the Numba backend's lean path
    through one chunk, two chunks of unequal length, and one timestep per chunk."""
    params, inputs, targets, h0 = case.make(np.float64, seed=3)
    kw = case.kwargs(h0)
    loss, full, h_last = fastrnn.loss_and_grads(params, inputs, targets, backend=backend, **kw)
    loss2, lean, h_last2 = fastrnn.loss_and_grads(params, inputs, targets, params_only=True, backend=backend, **kw)
    assert lean.X is None and lean.A is None
    assert loss2 == pytest.approx(loss, rel=1e-14)
    np.testing.assert_array_equal(h_last2, h_last)  # the forward pass is the same code
    for field in ("U", "W", "V", "b", "c", "h0"):
        assert rel_err(getattr(lean, field), getattr(full, field)) <= 1e-13, field
    with pytest.raises(TypeError, match="params_only"):
        fastrnn.loss_and_grads(params, inputs, targets, params_only="yes", backend=backend)


def test_layouts_agree(backend):
    """Time-major, batch-first and one-sequence-at-a-time give the same numbers."""
    case = CASES[5]
    params, x, y, h0 = case.make(np.float64, seed=2)
    lt, gt, ht = fastrnn.loss_and_grads(params, x, y, h0=h0, reduction="sum", backend=backend)
    lb, gb, hb = fastrnn.loss_and_grads(
        params, x.swapaxes(0, 1), y.T, h0=h0, reduction="sum", batch_first=True, backend=backend
    )
    assert lb == pytest.approx(lt, rel=1e-14)
    assert gb.X.shape == (case.n, case.T, case.d) and gb.A.shape == (case.n, case.T, case.h)
    assert rel_err(gb.X.swapaxes(0, 1), gt.X) <= 1e-14 and rel_err(hb, ht) <= 1e-14
    total, summed = 0.0, np.zeros_like(gt.W)
    for i in range(case.n):
        li, gi, hi = fastrnn.loss_and_grads(params, x[:, i], y[:, i], h0=h0[i], reduction="sum", backend=backend)
        assert gi.h0.shape == (case.h,) and gi.X.shape == (case.T, case.d) and hi.shape == (case.h,)
        assert rel_err(gi.X, gt.X[:, i]) <= 1e-13 and rel_err(hi, ht[i]) <= 1e-14
        total += li
        summed += gi.W
    assert total == pytest.approx(lt, rel=1e-13)
    assert rel_err(summed, gt.W) <= 1e-13


def test_layer_pair_reproduces_the_full_model(backend):
    case = CASES[19]
    params, x, y, _ = case.make(np.float64, seed=6)
    h0 = np.full((case.n, case.h), 0.2)
    loss, g, _ = fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
    H = fastrnn.rnn_forward(x, params.U, params.W, params.b, h0, backend=backend)
    Y, _ = fastrnn.predict_proba(params, x, h0=h0, backend=backend)
    assert rel_err(Y, _softmax(H @ params.V + params.c)) <= 1e-14
    onehot = np.eye(case.v)[y]
    dO = (Y - onehot) / (case.T * case.n)
    lg = fastrnn.rnn_backward(dO @ params.V.T, H, x, params.U, params.W, h0, backend=backend)
    for name in ("U", "W", "b", "h0", "X", "A"):
        assert rel_err(getattr(lg, name), getattr(g, name)) <= 1e-13, name


def test_truncated_bptt_chunks_chain_exactly(backend):
    """Forward state carried across chunks, dh_last carried back: the same gradients
    as one pass over the whole sequence."""
    case = CASES[19]
    params, x, _, _ = case.make(np.float64, seed=8)
    U, W, b = params.U, params.W, params.b
    rng = np.random.default_rng(0)
    dH = rng.standard_normal((case.T, case.n, case.h))
    full = fastrnn.rnn_backward(dH, fastrnn.rnn_forward(x, U, W, b, backend=backend), x, U, W, backend=backend)
    k = 3
    H1 = fastrnn.rnn_forward(x[:k], U, W, b, backend=backend)
    H2 = fastrnn.rnn_forward(x[k:], U, W, b, H1[-1], backend=backend)
    g2 = fastrnn.rnn_backward(dH[k:], H2, x[k:], U, W, H1[-1], backend=backend)
    g1 = fastrnn.rnn_backward(dH[:k], H1, x[:k], U, W, dh_last=g2.h0, backend=backend)
    assert rel_err(np.concatenate([H1, H2]), fastrnn.rnn_forward(x, U, W, b, backend=backend)) <= 1e-15
    for name in ("U", "W", "b"):
        assert rel_err(getattr(g1, name) + getattr(g2, name), getattr(full, name)) <= 1e-13
    assert rel_err(g1.h0, full.h0) <= 1e-13
    assert rel_err(np.concatenate([g1.X, g2.X]), full.X) <= 1e-13


def test_rnn_backward_does_not_modify_dH(backend):
    params, x, _, h0 = CASES[5].make(np.float64, seed=1)
    H = fastrnn.rnn_forward(x, params.U, params.W, params.b, h0, backend=backend)
    dH = np.ones_like(H)
    fastrnn.rnn_backward(dH, H, x, params.U, params.W, h0, dh_last=np.ones_like(h0), backend=backend)
    np.testing.assert_array_equal(dH, 1.0)


def _softmax(O):
    E = np.exp(O - O.max(axis=-1, keepdims=True))
    return E / E.sum(axis=-1, keepdims=True)


def test_init_params():
    p = fastrnn.init_params(300, 400, 50, seed=3)
    assert [a.shape for a in p] == [(300, 400), (400, 400), (400, 50), (400,), (50,)]
    assert all(a.dtype == np.float32 for a in p)
    assert p.U.std() == pytest.approx(1 / math.sqrt(300), rel=0.02)
    assert p.W.std() == pytest.approx(1 / math.sqrt(400), rel=0.02)
    assert p.V.std() == pytest.approx(1 / math.sqrt(400), rel=0.02)
    assert not p.b.any() and not p.c.any()
    p64 = fastrnn.init_params(300, 400, 50, dtype=np.float64, seed=3)
    np.testing.assert_array_equal(p64.W.astype(np.float32), p.W)
    again = fastrnn.init_params(300, 400, 50, seed=3)
    np.testing.assert_array_equal(again.U, p.U)
    with pytest.raises(ValueError, match="h must be a positive integer"):
        fastrnn.init_params(3, 0, 2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        fastrnn.init_params(3, 4, 2, dtype=np.float16)


def test_backend_listing_and_selection():
    names = fastrnn.backends()
    assert names[0] == fastrnn.get_backend()
    assert "numpy" in names and "numba" in names
    previous = fastrnn.set_backend("numpy")
    try:
        assert fastrnn.get_backend() == "numpy" and fastrnn.backends()[0] == "numpy"
        with pytest.raises(ValueError, match="backend must be one of"):
            fastrnn.set_backend("fortran")
    finally:
        fastrnn.set_backend(previous)
    assert fastrnn.get_backend() == previous


def test_environment_variable_sets_the_default():
    out = run_python("import fastrnn; print(fastrnn.get_backend(), fastrnn.backends()[0])", FASTRNN_BACKEND="numpy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "numpy"]
    out = run_python("import fastrnn; fastrnn.get_backend()", FASTRNN_BACKEND="fortran")
    assert out.returncode != 0
    assert "$FASTRNN_BACKEND must be one of 'numba', 'c', 'numpy', got 'fortran'" in out.stderr


def test_default_is_numba_when_installed():
    out = run_python("import fastrnn; print(fastrnn.get_backend())", FASTRNN_BACKEND="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numba"


def test_c_backend_is_built_when_required():
    """CI sets FASTRNN_REQUIRE_C=1: there the C backend must have been built and load."""
    if os.environ.get("FASTRNN_REQUIRE_C") not in ("1", "true", "yes"):
        pytest.skip("FASTRNN_REQUIRE_C is not set: a missing C backend is allowed here")
    assert "c" in fastrnn.backends(), fastrnn.unavailable().get("c")


BROKEN_C = """
import sys
sys.modules["fastrnn._fastrnn_c"] = None   # as if the extension had not been built
import fastrnn
print(",".join(fastrnn.backends()))
print(fastrnn.unavailable()["c"])
try:
    fastrnn.set_backend("c")
except RuntimeError as exc:
    print(exc)
"""


def test_a_backend_that_does_not_load_is_reported_not_listed():
    out = run_python(BROKEN_C, FASTRNN_BACKEND="")
    assert out.returncode == 0, out.stderr
    listed, why, refusal = out.stdout.splitlines()
    assert "c" not in listed.split(",") and listed.split(",")[-1] == "numpy"
    assert why.startswith("ModuleNotFoundError") and "_fastrnn_c" in why
    assert refusal == f"backend 'c' is not available here: {why}"


def test_set_backend_overrides_a_bad_environment_variable():
    code = "import fastrnn; print(fastrnn.set_backend('numpy'), fastrnn.get_backend())"
    out = run_python(code, FASTRNN_BACKEND="fortran")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "numpy"]
