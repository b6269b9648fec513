"""fastrnn.packed (the stacked recurrence without a head, on packed rows) against the API's
general model: lengths, layers, directions, token ids, every backend; and its input checks."""

import numpy as np
import pytest

import fastrnn
from fastrnn.packed import lengths_of, packed_backward, packed_forward


def _pack(a, lengths):
    """Padded time-major (T, n, ...) -> packed rows, sequences sorted longest first (stable)."""
    order = np.argsort(-lengths, kind="stable")
    T = a.shape[0]
    bs = np.array([(lengths > t).sum() for t in range(T)])
    rows = [a[t, order[: bs[t]]] for t in range(T) if bs[t]]
    return np.concatenate(rows), bs[bs > 0], order


@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("L,bi,nl", [(1, False, "tanh"), (2, True, "relu"), (3, True, "tanh")])
def test_matches_the_general_loss(backend, ids, L, bi, nl):
    T, n, d, h, v = 6, 4, 5, 3, 4
    rng = np.random.default_rng(L)
    p = fastrnn.init_params(d, h, v, num_layers=L, bidirectional=bi, nonlinearity=nl, dtype=np.float64, seed=L)
    if isinstance(p, fastrnn.Params):
        p = fastrnn.DeepParams.from_params(p)
    p = p._replace(layers=tuple(tuple(c._replace(b=rng.uniform(-0.5, 0.5, h)) for c in layer) for layer in p.layers))
    x = rng.integers(0, d, (T, n)) if ids else rng.standard_normal((T, n, d))
    y = rng.integers(0, v, (T, n))
    lengths = np.array([3, 6, 1, 6])
    D = 2 if bi else 1
    h0 = rng.standard_normal((L * D, n, h))
    loss, g, h_last = fastrnn.loss_and_grads(p, x, y, h0=h0, lengths=lengths, reduction="sum", backend="numpy")

    data, bs, order = _pack(x, lengths)
    assert np.array_equal(lengths_of(bs), lengths[order])
    out, hl, tape = packed_forward(data, bs, p.layers, h0[:, order], nonlinearity=nl, backend=backend)
    np.testing.assert_allclose(hl, h_last[:, order], rtol=0, atol=1e-12)
    # the head's loss and its gradient on the packed rows, by hand
    O = out @ p.V + p.c
    logY = O - np.log(np.exp(O - O.max(1, keepdims=True)).sum(1, keepdims=True)) - O.max(1, keepdims=True)
    yp = _pack(y, lengths)[0]
    assert abs(-logY[np.arange(len(yp)), yp].sum() - loss) < 1e-10 * abs(loss)
    dO = np.exp(logY)
    dO[np.arange(len(yp)), yp] -= 1
    d_out = dO @ p.V.T
    d_copy = d_out.copy()
    layers, dh0, dX = packed_backward(tape, d_out, None)
    assert np.array_equal(d_out, d_copy)  # not written to
    for l in range(L):
        for k in range(D):
            for got, want in zip(layers[l][k], g.layers[l][k]):
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)
    np.testing.assert_allclose(dh0, g.h0[:, order], rtol=0, atol=1e-12)
    if ids:
        assert dX is None
    else:
        np.testing.assert_allclose(dX, _pack(g.X, lengths)[0], rtol=0, atol=1e-12)


def test_dh_last_and_dropout_masks(backend):
    rng = np.random.default_rng(0)
    T, n, d, h = 5, 3, 4, 3
    p = fastrnn.init_params(d, h, 2, num_layers=2, dtype=np.float64, seed=0)
    x = rng.standard_normal((T * n, d))
    bs = np.full(T, n)
    mask = [(rng.random((T * n, h)) > 0.5) * 2.0]
    dh_last = rng.standard_normal((2, n, h))
    G = rng.standard_normal((T * n, h))

    def f(x, masks):
        out, hl, tape = packed_forward(x, bs, p.layers, nonlinearity="tanh", dropout_masks=masks, backend=backend)
        return (out * G).sum() + (hl * dh_last).sum(), tape

    value, tape = f(x, mask)
    _, _, dX = packed_backward(tape, G, dh_last)
    # central differences on a few entries of x, through the mask
    for i, j in [(0, 0), (7, 2), (14, 3)]:
        e = np.zeros_like(x)
        e[i, j] = 1e-6
        fd = (f(x + e, mask)[0] - f(x - e, mask)[0]) / 2e-6
        assert abs(fd - dX[i, j]) < 1e-7 * max(1, abs(fd))
    assert abs(f(x, None)[0] - value) > 1e-6  # the mask is really applied


def test_bad_input_is_named():
    p = fastrnn.init_params(4, 3, 2, num_layers=2, seed=0)
    x = np.zeros((6, 4), np.float32)
    with pytest.raises(ValueError, match="non-increasing"):
        packed_forward(x, np.array([2, 3, 1]), p.layers)
    with pytest.raises(ValueError, match="sum to 5"):
        packed_forward(x, np.array([3, 2]), p.layers)
    with pytest.raises(ValueError, match=r"data must be float32 of shape \(N, d=4\)"):
        packed_forward(x[:, :3], np.array([3, 3]), p.layers)
    with pytest.raises(ValueError, match=r"h0 must be float32 of shape \(L·D=2, n=3, h=3\)"):
        packed_forward(x, np.array([3, 3]), p.layers, np.zeros((1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="token ids"):
        packed_forward(np.array([0, 4, 1]), np.array([3]), p.layers)
    with pytest.raises(ValueError, match="nonlinearity"):
        packed_forward(x, np.array([3, 3]), p.layers, nonlinearity="gelu")
    with pytest.raises(ValueError, match="dropout_masks"):
        packed_forward(x, np.array([3, 3]), p.layers, dropout_masks=[])
    with pytest.raises(TypeError, match="tape"):
        packed_backward(None, None)


def test_more_bad_input_is_named():
    """Each of these once failed inside: an IndexError, an unpacking error, a wrapped int64 sum, or NaN let through."""
    p = fastrnn.init_params(4, 3, 2, num_layers=2, seed=0)
    x = np.zeros((6, 4), np.float32)
    with pytest.raises(TypeError, match=r"batch_sizes must be a non-empty 1-D integer array"):
        lengths_of([])
    with pytest.raises(ValueError, match="sum to 18446744073709551616 but data has N=6"):
        packed_forward(x, np.array([2**62] * 4), p.layers)  # the int64 sum wraps to 0; N = 0 then "matches"
    cell = p.layers[0][0]
    for bad, what in ((cell[:2], "tuple"), (None, "NoneType")):
        layers = ((bad,), p.layers[1])
        with pytest.raises(TypeError, match=rf"layers\[0\]\[0\] must be a Cell\(U, W, b\), got {what}"):
            packed_forward(x, np.array([3, 3]), layers)
    nan = np.full((6, 4), np.nan, np.float32)
    with pytest.raises(ValueError, match="data contains NaN or Inf"):
        packed_forward(nan, np.array([3, 3]), p.layers)
    W = cell.W.copy()
    W[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"layers\[0\]\[0\]\.W contains NaN or Inf"):
        packed_forward(x, np.array([3, 3]), ((fastrnn.Cell(cell.U, W, cell.b),), p.layers[1]))
    with pytest.raises(ValueError, match="h0 contains NaN or Inf"):
        packed_forward(x, np.array([3, 3]), p.layers, np.full((2, 3, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"dropout_masks\[0\] contains NaN or Inf"):
        packed_forward(x, np.array([3, 3]), p.layers, dropout_masks=[np.full((6, 3), np.nan, np.float32)])
    out, h_last, tape = packed_forward(x, np.array([3, 3]), p.layers)
    with pytest.raises(ValueError, match="d_out contains NaN or Inf"):
        packed_backward(tape, np.full_like(out, np.nan))
    with pytest.raises(ValueError, match="dh_last contains NaN or Inf"):
        packed_backward(tape, None, np.full_like(h_last, np.inf))
