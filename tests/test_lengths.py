"""The general model (lengths, ignore_index, relu, layers, directions): float64
central differences, every backend against the reference, and properties."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastrnn
from cases import REFERENCE, rel_err
from general_cases import GCase, flat_grads, supports_general

# ≥ 12 shapes crossing L ∈ {1, 2, 3}, both directions, both nonlinearities, lengths with
# ties / length 1 / length T, n = 1, h = 1.
GRADCHECK_CASES = [
    GCase(5, 3, 3, 4, 5, L=1, D=1, lengths=(5, 2, 2)),
    GCase(5, 3, 3, 4, 5, L=1, D=1, relu=True, lengths=(1, 5, 3)),
    GCase(5, 3, 3, 4, 5, L=1, D=2, lengths=(3, 3, 5)),
    GCase(5, 3, 3, 4, 5, L=1, D=2, relu=True, lengths=(5, 1, 4), ids=True),
    GCase(4, 2, 3, 3, 4, L=2, D=1, lengths=(4, 1)),
    GCase(4, 2, 3, 3, 4, L=2, D=1, relu=True, lengths=(2, 2), batch_first=True),
    GCase(4, 3, 2, 3, 4, L=2, D=2, lengths=(4, 3, 1), ignore=3),
    GCase(4, 3, 2, 3, 4, L=2, D=2, relu=True, lengths=(1, 1, 4), ids=True, batch_first=True),
    GCase(3, 2, 2, 2, 3, L=3, D=1, lengths=(3, 2)),
    GCase(3, 2, 2, 2, 3, L=3, D=2, relu=True, lengths=(2, 3)),
    GCase(4, 1, 3, 3, 4, L=2, D=2, lengths=(3,)),  # n = 1
    GCase(4, 3, 2, 1, 3, L=2, D=2, lengths=(4, 2, 4)),  # h = 1
    GCase(4, 1, 3, 2, 3, L=2, D=2, relu=True, lengths=(2,), unbatched=True),
    GCase(5, 3, 3, 4, 5, deep=False, lengths=(5, 1, 3), ignore=2),  # today's Params
    GCase(5, 3, 3, 4, 5, deep=False, ignore=4, reduction="sum"),
    GCase(4, 2, 3, 3, 4, L=1, D=2, relu=True, with_h0=False, ignore=2),  # no lengths
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_central_differences(case):
    params, x, y, h0, lengths = case.make()
    report = fastrnn.gradcheck(params, x, y, h0=h0, lengths=lengths, batch_first=case.batch_first,
                               reduction=case.reduction, backend=REFERENCE, rtol=1e-6, max_entries=40)
    assert report.passed, str(report)
    assert max(c.max_rel_error for c in report.checks.values()) < 1e-6


AGREEMENT_CASES = GRADCHECK_CASES + [
    GCase(7, 5, 4, 6, 7, L=2, D=2, lengths=(7, 3, 7, 1, 5), ignore=4),
    GCase(6, 4, 5, 5, 6, L=3, D=1, relu=True, lengths=(6, 6, 6, 6)),
    GCase(6, 4, 5, 5, 6, L=1, D=1, lengths=(2, 6, 4, 2), ids=True),
    GCase(5, 3, 3, 4, 5, L=2, D=2),  # nothing padded, h0 given: the kernels' no-copy branch
    GCase(5, 3, 3, 4, 5, L=2, D=2, relu=True, lengths=(5, 5, 5), ids=True),
    # a bidirectional head runs in two halves of the packed rows, whole below two rows
    GCase(3, 1, 3, 4, 5, L=1, D=2, lengths=(1,)),  # one row: whole
    GCase(3, 2, 3, 4, 5, L=1, D=2, lengths=(1, 1), ignore=1),  # two rows: a row each
    GCase(3, 3, 3, 4, 5, L=2, D=2, lengths=(3, 1, 1)),  # five rows: halves of 2 and 3
    # steps of 35, 33, 32, 31, 6, 5, 3, 2, 1 running rows: the per-step product on both
    # sides of the tiles' limits (2 <= m <= 32), both directions, a masked tile (h = 17)
    GCase(9, 35, 3, 17, 5, L=1, D=2, lengths=(4, 5, 4, 4, 4, 4, 3, 4, 4, 8, 6, 9, 1, 4, 4, 6, 4, 4, 4, 4, 4, 4, 4, 4, 4, 1, 2, 7, 4, 4, 4, 4, 4, 4, 4)),
]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _step_matches_reference(backend, case, dtype, params_only):
    """loss_and_grads of ``backend`` against the reference on ``case``: the loss, every
    gradient (in the case's dtype) and h_last within TOL. Returns (the reference's
    result, (params, inputs, h0, lengths), the tolerance)."""
    supports_general(backend)
    params, x, y, h0, lengths = case.make(dtype)
    kw = dict(h0=h0, lengths=lengths, batch_first=case.batch_first, reduction=case.reduction,
              params_only=params_only)
    ref = fastrnn.loss_and_grads(params, x, y, backend=REFERENCE, **kw)
    got = fastrnn.loss_and_grads(params, x, y, backend=backend, **kw)
    tol = TOL[dtype]
    assert abs(got[0] - ref[0]) <= tol * abs(ref[0])
    gr, gg = flat_grads(ref[1]), flat_grads(got[1])
    assert gr.keys() == gg.keys()
    for name in gr:
        assert gg[name].dtype == dtype, name
        assert rel_err(gg[name], gr[name]) <= tol, name
    assert rel_err(got[2], ref[2]) <= tol
    return ref, (params, x, h0, lengths), tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=str)
def test_backend_matches_reference(backend, case, dtype):
    ref, (params, x, h0, lengths), tol = _step_matches_reference(backend, case, dtype, params_only=False)
    P_ref, hl_ref = fastrnn.predict_proba(params, x, h0=h0, lengths=lengths, batch_first=case.batch_first,
                                          backend=REFERENCE)
    P, hl = fastrnn.predict_proba(params, x, h0=h0, lengths=lengths, batch_first=case.batch_first, backend=backend)
    assert rel_err(P, P_ref) <= tol and rel_err(hl, hl_ref) <= tol
    assert rel_err(hl, ref[2]) <= tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_params_only_matches(backend, dtype):
    supports_general(backend)
    case = GCase(6, 4, 3, 5, 6, L=2, D=2, lengths=(6, 2, 5, 2), ignore=3)
    params, x, y, h0, lengths = case.make(dtype)
    full = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend)
    lean = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend, params_only=True)
    assert lean[1].X is None and lean[1].A is None
    assert lean[0] == pytest.approx(full[0], rel=1e-12)
    for name, a in flat_grads(lean[1]).items():
        assert rel_err(a, flat_grads(full[1])[name]) <= TOL[dtype], name


def test_equal_lengths_and_no_ignore_is_todays_model(backend):
    """lengths all T, or DeepParams of one tanh layer, give today's numbers."""
    supports_general(backend)
    params, x, y, h0, _ = GCase(5, 3, 4, 6, 7, deep=False).make()
    old = fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
    full = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=[5, 5, 5], backend=backend)
    deep = fastrnn.loss_and_grads(fastrnn.DeepParams.from_params(params), x, y, h0=h0[None], backend=backend)
    for other, state in ((full, lambda a: a), (deep, lambda a: a[0])):
        assert other[0] == pytest.approx(old[0], rel=1e-13)
        assert rel_err(state(other[2]), old[2]) < 1e-13
    for name in "UWVbc":
        assert rel_err(getattr(full[1], name), getattr(old[1], name)) < 1e-12
        assert rel_err(deep[1].layers[0][0].U if name == "U" else getattr(deep[1].layers[0][0], name)
                       if name in "Wb" else getattr(deep[1], name), getattr(old[1], name)) < 1e-12


def test_padding_is_invisible(backend):
    """A sequence's results do not depend on what sits in its padding, nor on T."""
    supports_general(backend)
    case = GCase(6, 3, 3, 4, 5, L=2, D=2, relu=True, lengths=(4, 2, 6))
    params, x, y, h0, lengths = case.make()
    a = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend)
    x2, y2 = x.copy(), y.copy()
    x2[4:, 0] = -7.0
    y2[4:, 0] = -100
    b = fastrnn.loss_and_grads(params, x2, y2, h0=h0, lengths=lengths, backend=backend)
    assert a[0] == b[0]
    assert np.array_equal(a[2], b[2])
    assert np.all(a[1].X[4:, 0] == 0) and np.all(a[1].A[0][0][2:, 1] == 0)
    P, _ = fastrnn.predict_proba(params, x, h0=h0, lengths=lengths, backend=backend)
    assert np.all(P[2:, 1] == 0) and np.allclose(P[:2, 1].sum(-1), 1)
    # one sequence alone, cut to its length, has the same final states
    alone = fastrnn.predict_proba(params, x[:2, 1:2], h0=h0[:, 1:2], backend=backend)[1]
    assert rel_err(alone, a[2][:, 1:2]) < 1e-13


def test_mean_divides_by_counted_targets():
    case = GCase(5, 3, 3, 4, 5, L=1, D=1, lengths=(5, 2, 3), ignore=2)
    params, x, y, h0, lengths = case.make()
    mean = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=REFERENCE)[0]
    total = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, reduction="sum", backend=REFERENCE)[0]
    real = np.arange(5)[:, None] < np.array(lengths)[None]
    counted = int((real & (y != -100)).sum())
    assert counted < 10
    assert mean == pytest.approx(total / counted, rel=1e-14)
    # nothing counted: loss 0 and zero gradients, not nan
    loss, g, _ = fastrnn.loss_and_grads(params, x, np.full_like(y, -100), lengths=lengths, backend=REFERENCE)
    assert loss == 0 and not np.any(g.layers[0][0].U)


def test_unbatched_equals_batch_of_one(backend):
    supports_general(backend)
    case = GCase(5, 1, 3, 4, 5, L=2, D=2, lengths=(3,))
    params, x, y, h0, lengths = case.make()
    batched = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend)
    single = fastrnn.loss_and_grads(params, x[:, 0], y[:, 0], h0=h0[:, 0], lengths=3, backend=backend)
    assert single[0] == pytest.approx(batched[0], rel=1e-14)
    assert rel_err(single[2], batched[2][:, 0]) < 1e-14
    assert rel_err(single[1].X, batched[1].X[:, 0]) < 1e-14


def test_layer_functions_with_lengths_and_relu(backend):
    """rnn_forward / rnn_backward with lengths and relu agree with the full model's pieces."""
    supports_general(backend)
    rng = np.random.default_rng(3)
    T, n, d, h = 6, 4, 3, 5
    U, W, b = rng.standard_normal((d, h)), 0.5 * rng.standard_normal((h, h)), rng.standard_normal(h)
    x, h0, lengths = rng.standard_normal((T, n, d)), rng.standard_normal((n, h)), np.array([6, 1, 3, 3])
    for nl in ("tanh", "relu"):
        H = fastrnn.rnn_forward(x, U, W, b, h0, lengths=lengths, nonlinearity=nl, backend=backend)
        H_ref = fastrnn.rnn_forward(x, U, W, b, h0, lengths=lengths, nonlinearity=nl, backend=REFERENCE)
        assert rel_err(H, H_ref) < 1e-12
        assert np.all(H[np.arange(T)[:, None] >= lengths[None]] == 0)
        dH, dh_last = rng.standard_normal(H.shape), rng.standard_normal((n, h))
        g = fastrnn.rnn_backward(dH, H, x, U, W, h0, dh_last=dh_last, lengths=lengths, nonlinearity=nl, backend=backend)
        r = fastrnn.rnn_backward(dH, H_ref, x, U, W, h0, dh_last=dh_last, lengths=lengths, nonlinearity=nl,
                                 backend=REFERENCE)
        for name in ("U", "W", "b", "h0", "X", "A"):
            assert rel_err(getattr(g, name), getattr(r, name)) < 1e-12, (nl, name)
        # the scalar Σ dH ⊙ H + dh_last ⊙ h_last, differentiated numerically in U
        def scalar(U_):
            H_ = fastrnn.rnn_forward(x, U_, W, b, h0, lengths=lengths, nonlinearity=nl, backend=REFERENCE)
            return float((dH * H_).sum() + (dh_last * H_[lengths - 1, np.arange(n)]).sum())
        E = np.zeros_like(U)
        E[1, 2] = 1e-6
        numeric = (scalar(U + E) - scalar(U - E)) / 2e-6
        assert g.U[1, 2] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_an_overflowed_relu_state_stays_nan(backend):
    """relu(NaN) is NaN, as np.maximum gives: a state that overflowed must not restart from 0
    (relu as `a > 0 ? a : 0` turned the NaN into 0 and went on with finite, wrong states)."""
    supports_general(backend)
    U, W, b = np.full((1, 2), 1e300), 1e10 * np.eye(2), np.zeros(2)
    x = np.zeros((4, 2), dtype=np.intp)  # H_1 = 1e300, H_2 = inf, then 0·inf = NaN in W's zeros
    deep = fastrnn.DeepParams(((fastrnn.Cell(U, W, b),),), np.ones((2, 3)), np.zeros(3), "relu")
    with np.errstate(all="ignore"):
        H = fastrnn.rnn_forward(x, U, W, b, nonlinearity="relu", backend=backend)
        h_last = fastrnn.loss_and_grads(deep, x, x, params_only=True, backend=backend)[2]  # one cell: the fused step
        H_ref = fastrnn.rnn_forward(x, U, W, b, nonlinearity="relu", backend=REFERENCE)
    assert np.isnan(H_ref[2:]).all() and np.isinf(H_ref[1]).all()
    np.testing.assert_array_equal(H, H_ref)  # NaN where the reference has NaN
    assert np.isnan(h_last).all()


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 6), n=st.integers(1, 4), L=st.integers(1, 3), D=st.integers(1, 2), relu=st.booleans(),
    seed=st.integers(0, 2**16), data=st.data(),
)
def test_random_lengths_layers_directions(T, n, L, D, relu, seed, data):
    lengths = tuple(data.draw(st.lists(st.integers(1, T), min_size=n, max_size=n)))
    case = GCase(T, n, 2, 3, 4, L=L, D=D, relu=relu, lengths=lengths, ignore=data.draw(st.integers(0, T * n - 1)))
    params, x, y, h0, lengths = case.make(seed=seed)
    ref = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=REFERENCE)
    assert np.isfinite(ref[0])
    # the final states are each sequence's own: run sequence by sequence, cut to its length
    for i in range(n):
        P, hl = fastrnn.predict_proba(params, x[: lengths[i], i : i + 1], h0=h0[:, i : i + 1], backend=REFERENCE)
        assert rel_err(hl[:, 0], ref[2][:, i]) < 1e-13
    from fastrnn.backends import backends as names, resolve
    for name in names():
        if name != REFERENCE and hasattr(resolve(name), "deep_loss_and_grads"):
            got = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=name)
            assert got[0] == pytest.approx(ref[0], rel=1e-12, abs=1e-300)
            for k, a in flat_grads(ref[1]).items():
                assert rel_err(flat_grads(got[1])[k], a) <= 1e-12, (name, k)


@pytest.mark.parametrize("equal", [True, False], ids=["equal-lengths", "lengths"])
def test_wide_step_takes_the_other_W_transpose_branch(fast_backend, equal):
    """n·h·h ≥ 2^20 multiply-adds per step: the backward recurrence multiplies by the
    view Wᵀ instead of a contiguous copy (both kernels branch on that size)."""
    supports_general(fast_backend)
    T, n, h = 3, 64, 128
    lengths = None if equal else tuple([3, 1, 2, 3] * (n // 4))
    case = GCase(T, n, 3, h, 4, L=1, D=2, relu=False, lengths=lengths)
    params, x, y, h0, lengths = case.make()
    ref = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=REFERENCE)
    got = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=fast_backend)
    for name, a in flat_grads(ref[1]).items():
        assert rel_err(flat_grads(got[1])[name], a) <= 1e-12, name


def test_readme_example_runs():
    """The README's example of the general model runs and gives the shapes it states."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Variable lengths, stacked and bidirectional layers, relu"):]
    code = section[section.index("```python") + len("```python"): section.index("```\n", section.index("```python") + 9)]
    scope = {}
    exec(compile(code, "README", "exec"), scope)
    assert scope["h_last"].shape == (4, 16, 128)
    assert scope["grads"].h0.shape == (4, 16, 128) and scope["grads"].A[1][1].shape == (40, 16, 128)
    assert scope["probs"].shape == (40, 16, 65) and np.isfinite(scope["loss"])


def _bidirectional_loss(backend):
    params, x, y, h0, lengths = GCase(5, 3, 3, 4, 5, L=1, D=2, lengths=(5, 2, 3)).make()
    return fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend)[0]


def test_bidirectional_after_fork(fast_backend):
    """The reversed direction's thread does not survive a fork; the child starts its own."""
    import multiprocessing

    supports_general(fast_backend)
    expected = _bidirectional_loss(fast_backend)  # the parent's thread now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_bidirectional_loss, (fast_backend,)).get(timeout=60)
    assert got == expected


# ---- one layer, params_only: the whole step in one kernel call (cell_step), one direction or both

ONE_CELL_CASES = [case for case in AGREEMENT_CASES if case.L == 1] + [
    GCase(9, 35, 3, 17, 5, L=1, D=1, relu=True, ids=True, lengths=AGREEMENT_CASES[-1].lengths, ignore=7),
    GCase(4, 3, 2, 1, 3, L=1, D=1, lengths=(4, 2, 4)),  # h = 1
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ONE_CELL_CASES, ids=str)
def test_one_cell_params_only_matches_reference(backend, case, dtype):
    _step_matches_reference(backend, case, dtype, params_only=True)


def _kernels(name):
    from fastrnn.backends import cffi_packed, numba_packed

    return {"numba": numba_packed, "c": cffi_packed}[name].KERNELS


@pytest.mark.parametrize("case", [c for c in ONE_CELL_CASES if c.n > 1 and not c.unbatched and c.deep], ids=str)
def test_one_cell_step_is_the_layer_by_layer_step(fast_backend, case):
    """The fused step packs, runs and unpacks exactly as the kernels one by one: the same bits."""
    K = _kernels(fast_backend)
    params, x, y, h0, lengths = case.make(np.float32)
    if case.batch_first:
        x, y = x.swapaxes(0, 1), y.swapaxes(0, 1)
    T, n = y.shape
    lengths = np.full(n, T) if lengths is None else np.asarray(lengths)
    cells = [tuple(cell) for cell in params.layers[0]] if case.deep else [(params.U, params.W, params.b)]
    D = len(cells)
    V, c = params.V, params.c
    relu = case.relu
    y = np.where(np.arange(T)[:, None] < lengths[None], np.where(y == -100, -1, y), -1)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    h = cells[0][1].shape[0]
    h0 = np.zeros((D, n, h)) if h0 is None else (h0 if h0.ndim == 3 else h0[None])
    h0 = np.ascontiguousarray(h0.astype(np.float32))
    assert h0.shape == (D, n, cells[0][1].shape[0])
    _assert_fused_is_apart(K, (cells, D, V, c, x, y, h0, lengths, 0.25, relu, True), sides=(False, True)[:D])


def _assert_fused_is_apart(K, args, sides):
    """_packed.deep_loss_and_grads on ``args`` (params_only): the fused step (one call)
    gives the bits of the kernels one by one, in turn and (``sides``) side by side."""
    from fastrnn.backends import _packed

    fused = _packed.deep_loss_and_grads(K, *args, False)
    for side_by_side in sides:
        apart = _packed.deep_loss_and_grads(K._replace(cell_step=None), *args, side_by_side)
        assert fused[0] == apart[0]
        flat = lambda r: [g for cell in r[1] for g in cell] + [r[2], r[3], r[4], r[7]]  # noqa: E731
        for a, b in zip(flat(fused), flat(apart), strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_fused_step_is_taken_for_one_cell_params_only_only():
    from fastrnn.backends import _packed

    K = _kernels("numba")
    calls = []
    spy = K._replace(cell_step=lambda *a: calls.append(1) or K.cell_step(*a))
    for L, D, params_only, side_by_side, taken in ((1, 1, True, False, 1), (1, 1, True, True, 1),
                                                    (1, 1, False, False, 0), (2, 1, True, False, 0),
                                                    (1, 2, True, False, 1), (1, 2, True, True, 0),
                                                    (2, 2, True, False, 0)):
        params, x, y, h0, lengths = GCase(4, 3, 2, 3, 4, L=L, D=D, lengths=(4, 1, 3)).make(np.float32)
        cells = [tuple(cell) for layer in params.layers for cell in layer]
        y = np.where(np.arange(4)[:, None] < np.array(lengths)[None], y, -1)
        calls.clear()
        _packed.deep_loss_and_grads(spy, cells, D, params.V, params.c, x, y, h0.astype(np.float32),
                                    np.array(lengths), 0.1, False, params_only, side_by_side)
        assert len(calls) == taken, (L, D, params_only, side_by_side)


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("ids", [False, True])
def test_one_cell_step_reads_a_block_in_place(fast_backend, D, ids):
    """A block of a split step (``members``) read from the whole batch gives the bits of
    the same sequences gathered into a batch of their own."""
    K = _kernels(fast_backend)
    case = GCase(6, 7, 3, 5, 4, L=1, D=D, ids=ids, lengths=(3, 6, 1, 4, 3, 2, 5), ignore=3)
    params, x, y, h0, lengths = case.make(np.float32)
    cells = [tuple(cell) for cell in params.layers[0]]
    lengths = np.asarray(lengths)
    y = np.ascontiguousarray(np.where(np.arange(6)[:, None] < lengths[None], np.where(y == -100, -1, y), -1))
    h0 = np.ascontiguousarray(h0.astype(np.float32))
    members = np.array([0, 2, 3, 6])
    whole = K.cell_step(cells, params.V, params.c, x, y, h0, lengths, 0.5, False, members)
    Tb = lengths[members].max()
    alone = K.cell_step(cells, params.V, params.c, np.ascontiguousarray(x[:Tb, members]),
                        np.ascontiguousarray(y[:Tb, members]), np.ascontiguousarray(h0[:, members]),
                        lengths[members], 0.5, False)
    assert whole[0] == alone[0]
    flat = lambda r: [g for cell in r[1] for g in cell] + list(r[2:])  # noqa: E731
    for a, b in zip(flat(whole), flat(alone), strict=True):
        np.testing.assert_array_equal(a, b)
    assert whole[4].shape == (D, len(members), 5)


def test_one_cell_step_is_the_layer_by_layer_step_past_the_longest(fast_backend, dtype=np.float64):
    """T beyond every sequence's length and n·h·h over COPY_WT_BELOW: whether Wᵀ is copied
    reads the last step that runs any row, in the fused step and the kernels one by one.
    float64: with 64 rows the products go to OpenBLAS, whose sgemm can round by where
    its operands sit (the fused step keeps H and its previous states in one buffer)."""
    from fastrnn._config import COPY_WT_BELOW

    K = _kernels(fast_backend)
    T, n, h = 12, 64, 128
    assert n * h * h >= COPY_WT_BELOW
    params, x, y, h0, _ = GCase(T, n, 3, h, 5, L=1, D=2).make(dtype)
    lengths = np.full(n, 10)
    cells = [tuple(cell) for cell in params.layers[0]]
    y = np.ascontiguousarray(np.where(np.arange(T)[:, None] < lengths[None], y, -1))
    args = (cells, 2, params.V, params.c, x, y, np.ascontiguousarray(h0), lengths, 0.25, False, True)
    _assert_fused_is_apart(K, args, sides=(False, True))


def test_c_cell_step_refuses_bad_blocks():
    pytest.importorskip("fastrnn.backends.cffi_kernels")
    from fastrnn.backends import cffi_packed

    params, x, y, h0, lengths = GCase(4, 3, 2, 3, 4, L=1, D=1, lengths=(4, 1, 3)).make()
    cells = [tuple(params.layers[0][0])]
    lengths = np.asarray(lengths)
    y = np.ascontiguousarray(np.where(np.arange(4)[:, None] < lengths[None], y, -1))
    run = lambda lengths, members: cffi_packed.cell_step(cells, params.V, params.c, x, y, h0, lengths, 1.0,  # noqa: E731
                                                         False, members)
    assert run(lengths, np.array([0, 2]))[4].shape == (1, 2, 3)
    for bad_lengths, members in ((lengths, np.array([0, 3])), (lengths, np.array([-1])),
                                 (np.array([4, 0, 3]), None), (np.array([4, 5, 3]), None)):
        with pytest.raises(RuntimeError, match="C backend"):
            run(bad_lengths, members)
