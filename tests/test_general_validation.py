"""Bad input to the general model: each error names the argument."""

import numpy as np
import pytest

import fastrnn
from general_cases import GCase


@pytest.fixture
def deep():
    return GCase(5, 3, 3, 4, 5, L=2, D=2, lengths=(5, 2, 3)).make()


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        (np.array([5, 2]), ValueError, r"lengths must have shape \(n=3,\), got \(2,\)"),
        (np.array([[5, 2, 3]]), ValueError, r"lengths must have shape \(n=3,\)"),
        (np.array([5.0, 2.0, 3.0]), TypeError, r"lengths must be integers .* got dtype float64"),
        ([5, 2.5, 3], TypeError, r"lengths must be integers"),
        (np.array([True, True, True]), TypeError, r"lengths must be integers .* got dtype bool"),
        (np.array([6, 2, 3]), ValueError, r"lengths holds 6, outside \[1, T=5\]"),
        (np.array([5, -1, 3]), ValueError, r"lengths holds -1, outside \[1, T=5\]"),
        (np.array([5, 0, 3]), ValueError, r"lengths holds 0, outside \[1, T=5\] \(0 is not allowed"),
        ("abc", TypeError, r"lengths must be integers"),
    ],
)
def test_bad_lengths(backend, deep, lengths, error, match):
    params, x, y, h0, _ = deep
    with pytest.raises(error, match=match):
        fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend)
    with pytest.raises(error, match=match):
        fastrnn.predict_proba(params, x, h0=h0, lengths=lengths, backend=backend)
    p1 = fastrnn.init_params(3, 4, 5, dtype=np.float64)
    with pytest.raises(error, match=match):
        fastrnn.rnn_forward(x, p1.U, p1.W, p1.b, lengths=lengths, backend=backend)
    with pytest.raises(error, match=match):
        fastrnn.rnn_backward(np.zeros((5, 3, 4)), np.zeros((5, 3, 4)), x, p1.U, p1.W, lengths=lengths,
                             backend=backend)


def test_unbatched_lengths_is_a_scalar():
    params, x, y, h0, _ = GCase(4, 1, 3, 4, 5, L=2, D=1, lengths=(2,)).make()
    with pytest.raises(ValueError, match=r"lengths must have shape \(\) \(a scalar"):
        fastrnn.loss_and_grads(params, x[:, 0], y[:, 0], lengths=[2], backend="numpy")


@pytest.mark.parametrize("ignore_index", [1.5, -100.0, "x", True, None])
def test_bad_ignore_index(deep, ignore_index):
    params, x, y, h0, lengths = deep
    with pytest.raises(TypeError, match=r"ignore_index must be an integer"):
        fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, ignore_index=ignore_index)


def test_targets_outside_v_at_real_steps(deep):
    params, x, y, h0, lengths = deep
    y = y.copy()
    y[0, 0] = 5
    with pytest.raises(ValueError, match=r"targets holds class 5, outside \[0, v=5\) and not ignore_index=-100"):
        fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend="numpy")
    y[0, 0] = -3
    with pytest.raises(ValueError, match=r"targets holds class -3"):
        fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend="numpy")
    y[0, 0] = 1  # padded steps may hold anything (GCase puts 10**6 there)
    fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend="numpy")


@pytest.mark.parametrize("huge, ignore_index", [(2**64 - 100, -100), (2**64 - 1, -1), (2**63, -100)])
def test_huge_unsigned_targets_are_refused_not_wrapped_into_ignore_index(deep, huge, ignore_index):
    """uint64 class ids of 2**63 or more once wrapped to negative intp: -100 as -100 (silently
    ignored), 2**63 reported as -9223372036854775808."""
    params, x, y, h0, lengths = deep
    y = y.astype(np.uint64) % 5  # GCase's padding (10**6) is out of range: reduce it to classes
    y[0, 0] = huge
    with pytest.raises(ValueError, match=rf"targets holds class {huge}, outside \[0, v=5\)"):
        fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, ignore_index=ignore_index, backend="numpy")
    y[0, 0] = 1  # and in range, unsigned targets count as signed ones do
    ours = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, ignore_index=ignore_index, backend="numpy")
    signed = fastrnn.loss_and_grads(params, x, y.astype(np.int64), h0=h0, lengths=lengths, ignore_index=ignore_index,
                                    backend="numpy")
    assert ours[0] == signed[0]


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"num_layers must be a positive integer, got 0"):
        fastrnn.init_params(3, 4, 5, num_layers=0)
    with pytest.raises(ValueError, match=r"num_layers must be a positive integer"):
        fastrnn.init_params(3, 4, 5, num_layers=1.5)
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        fastrnn.init_params(3, 4, 5, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match=r"bidirectional must be True or False"):
        fastrnn.init_params(3, 4, 5, bidirectional="yes")
    p = fastrnn.init_params(3, 4, 5, dtype=np.float64)
    x = np.zeros((2, 1, 3))
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        fastrnn.rnn_forward(x, p.U, p.W, p.b, nonlinearity="gelu")


def test_bad_deep_containers(deep):
    params, x, y, h0, lengths = deep
    kw = dict(h0=h0, lengths=lengths, backend="numpy")
    with pytest.raises(ValueError, match=r"params.layers must hold at least one layer \(num_layers >= 1\)"):
        fastrnn.loss_and_grads(params._replace(layers=()), x, y, **kw)
    with pytest.raises(ValueError, match=r"params.nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        fastrnn.loss_and_grads(params._replace(nonlinearity="sigmoid"), x, y, **kw)
    # layer 1 must read layer 0's two directions: U (2h, h)
    l1 = tuple(c._replace(U=c.U[:4]) for c in params.layers[1])
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].U must have shape \(D·h=8, h=4\): layer 1 "
                                         r"reads layer 0's two directions; got \(4, 4\) \(the shapes do not chain\)"):
        fastrnn.loss_and_grads(params._replace(layers=(params.layers[0], l1)), x, y, **kw)
    with pytest.raises(ValueError, match=r"params.layers\[1\] must hold 2 Cell\(s\)"):
        fastrnn.loss_and_grads(params._replace(layers=(params.layers[0], params.layers[1][:1])), x, y, **kw)
    bad_W = (params.layers[0][0]._replace(W=np.zeros((4, 3))), params.layers[0][1])
    with pytest.raises(ValueError, match=r"params.layers\[0\]\[0\].W must have shape \(h=4, h=4\)"):
        fastrnn.loss_and_grads(params._replace(layers=(bad_W, params.layers[1])), x, y, **kw)
    with pytest.raises(ValueError, match=r"params.V must have shape \(D·h=8, v\)"):
        fastrnn.loss_and_grads(params._replace(V=params.V[:4]), x, y, **kw)
    f32 = (params.layers[0][0]._replace(b=params.layers[0][0].b.astype(np.float32)), params.layers[0][1])
    with pytest.raises(TypeError, match=r"the parameters mix float dtypes"):
        fastrnn.loss_and_grads(params._replace(layers=(f32, params.layers[1])), x, y, **kw)
    nan = (params.layers[0][0]._replace(W=np.full((4, 4), np.nan)), params.layers[0][1])
    with pytest.raises(ValueError, match=r"params.layers\[0\]\[0\].W contains NaN"):
        fastrnn.loss_and_grads(params._replace(layers=(nan, params.layers[1])), x, y, **kw)
    with pytest.raises(ValueError, match=r"params.layers\[0\] must be a tuple of 1 Cell"):
        fastrnn.loss_and_grads(params._replace(layers=((),)), x, y, **kw)


def test_bad_deep_h0(deep):
    params, x, y, h0, lengths = deep
    with pytest.raises(ValueError, match=r"h0 must have shape \(L·D=4, n=3, h=4\), got \(3, 4\)"):
        fastrnn.loss_and_grads(params, x, y, h0=h0[0], lengths=lengths, backend="numpy")


def test_relu_states_checked_in_rnn_backward():
    p = fastrnn.init_params(3, 4, 5, dtype=np.float64)
    x = np.zeros((2, 1, 3))
    H = -np.ones((2, 1, 4))
    with pytest.raises(ValueError, match=r"H must hold the hidden states rnn_forward returned \(values in \[0, inf\)"):
        fastrnn.rnn_backward(H, H, x, p.U, p.W, nonlinearity="relu", lengths=[2])


def test_batch_first_targets_come_back_time_major_and_c_contiguous():
    """np.where kept the swapped view's Fortran order: the fused Numba step then compiled an
    extra specialisation and read the targets with strides."""
    from fastrnn import _validate

    y = np.arange(12).reshape(4, 3) % 5  # (n, T) batch-first
    layout = _validate.Layout(3, 4, False, True)
    out, counted = _validate.check_targets_counted(y, layout, 5, np.array([3, 1, 2, 3]), -100)
    assert out.flags.c_contiguous and out.shape == (3, 4) and counted == 9
    np.testing.assert_array_equal(out, np.where(np.arange(3)[:, None] < [3, 1, 2, 3], y.T, -1))
