"""Bad input gets a clear exception naming the argument, before any kernel runs.

Validation happens above the backend seam, so these checks run once, on the
default backend; only the last two tests, about what the kernels do with
valid but unusual arrays, run on every backend."""

import numpy as np
import pytest

import fastrnn
from cases import CASES

T, N, D, H, V = 4, 3, 5, 6, 7


@pytest.fixture
def good():
    params = fastrnn.init_params(D, H, V, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    return params, rng.standard_normal((T, N, D)), rng.integers(0, V, (T, N))


def call(params, inputs, targets, **kw):
    return fastrnn.loss_and_grads(params, inputs, targets, **kw)


@pytest.mark.parametrize(
    "field, bad, message",
    [
        ("U", np.zeros((D, H, 1)), r"params\.U must have shape \(d, h\)"),
        ("W", np.zeros((H, H + 1)), r"params\.W must have shape \(h=6, h=6\), got \(6, 7\)"),
        ("V", np.zeros((H + 1, V)), r"params\.V must have shape \(h=6, v=7\)"),
        ("b", np.zeros(H + 1), r"params\.b must have shape \(h=6,\)"),
        ("c", np.zeros((V, 1)), r"params\.c must have shape \(v=7,\)"),
        ("U", np.zeros((0, H)), r"at least 1"),
    ],
)
def test_param_shapes(good, field, bad, message):
    params, x, y = good
    with pytest.raises(ValueError, match=message):
        call(params._replace(**{field: bad}), x, y)


def test_params_must_be_float(good):
    params, x, y = good
    with pytest.raises(TypeError, match=r"params\.W must be a float32 or float64 array, got dtype int64"):
        call(params._replace(W=np.zeros((H, H), dtype=np.int64)), x, y)
    with pytest.raises(TypeError, match=r"params\.b must be a float32 or float64 array, got dtype float16"):
        call(params._replace(b=np.zeros(H, dtype=np.float16)), x, y)


def test_params_container(good):
    params, x, y = good
    with pytest.raises(TypeError, match=r"params must be a fastrnn\.Params"):
        call(params[:4], x, y)
    with pytest.raises(TypeError, match=r"params must be a fastrnn\.Params"):
        call(params.U, x, y)


def test_mixed_float_dtypes(good):
    params, x, y = good
    with pytest.raises(TypeError, match=r"mix float dtypes .*params\.V float32"):
        call(params._replace(V=params.V.astype(np.float32)), x, y)
    with pytest.raises(TypeError, match=r"inputs has dtype float32 but the parameters are float64"):
        call(params, x.astype(np.float32), y)
    with pytest.raises(TypeError, match=r"h0 has dtype float32 but the parameters are float64"):
        call(params, x, y, h0=np.zeros((N, H), np.float32))


@pytest.mark.parametrize("field", ["U", "W", "V", "b", "c"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_params(good, field, value):
    params, x, y = good
    bad = getattr(params, field).copy()
    bad.flat[-1] = value
    with pytest.raises(ValueError, match=rf"params\.{field} contains NaN or Inf"):
        call(params._replace(**{field: bad}), x, y)


def test_non_finite_inputs_and_h0(good):
    params, x, y = good
    x = x.copy()
    x[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"inputs contains NaN or Inf"):
        call(params, x, y)
    with pytest.raises(ValueError, match=r"h0 contains NaN or Inf"):
        call(params, np.nan_to_num(x), y, h0=np.full((N, H), np.inf))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_checks_on_both_sides_of_the_dot_product_limit(dtype):
    """Up to DOT_CHECK_MAX elements one dot product Σ a² decides; its overflow must fall back
    to the element-wise test (finite weights pass), and larger arrays use that test alone."""
    from fastrnn import _validate

    big = np.finfo(dtype).max / 4  # finite, but its square overflows
    for size in (_validate.DOT_CHECK_MAX, _validate.DOT_CHECK_MAX + 1):
        a = np.ones(size, dtype)
        a[size // 2] = big
        _validate._check_finite("a", a)  # finite: passes either way
        for bad in (np.nan, np.inf, -np.inf):
            a[-1] = bad
            with pytest.raises(ValueError, match="a contains NaN or Inf"):
                _validate._check_finite("a", a)
            a[-1] = 1
    # through the API: a large finite weight passes, a NaN in a weight is named
    p = fastrnn.init_params(3, 4, 5, dtype=dtype, seed=0)
    x, y = np.zeros((2, 3), dtype=np.intp), np.zeros((2, 3), dtype=np.intp)
    U = p.U.copy()
    U[2, 1] = big  # row 2 is never gathered here
    fastrnn.loss_and_grads(p._replace(U=U), x, y)
    U[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"params\.U contains NaN or Inf"):
        fastrnn.loss_and_grads(p._replace(U=U), x, y)


def test_input_shapes(good):
    params, x, y = good
    with pytest.raises(ValueError, match=r"inputs' last axis must be d=5"):
        call(params, x[..., :4], y)
    with pytest.raises(ValueError, match=r"float inputs must have shape \(T, n, d\) or \(T, d\)"):
        call(params, x[None], y)
    with pytest.raises(ValueError, match=r"token-id inputs must have shape \(T, n\) or \(T,\)"):
        call(params, np.zeros((T, N, 1), dtype=np.int64), y)
    with pytest.raises(TypeError, match=r"inputs must be float64 \(T, n, d\) or integer token ids"):
        call(params, x > 0, y)
    with pytest.raises(TypeError, match=r"inputs must be float64 .* got dtype complex128"):
        call(params, x.astype(complex), y)


def test_empty_time_or_batch(good):
    params, x, y = good
    with pytest.raises(ValueError, match=r"at least one timestep and one sequence"):
        call(params, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"at least one timestep and one sequence"):
        call(params, x[:, :0], y[:, :0])


def test_token_ids_out_of_range(good):
    params, _, y = good
    ids = np.zeros((T, N), dtype=np.int64)
    ids[2, 1] = D
    with pytest.raises(ValueError, match=r"inputs holds token id 5, outside \[0, d=5\)"):
        call(params, ids, y)
    ids[2, 1] = -1
    with pytest.raises(ValueError, match=r"inputs holds token id -1"):
        call(params, ids, y)


def test_targets(good):
    params, x, y = good
    with pytest.raises(TypeError, match=r"targets must be integer class ids, got dtype float64"):
        call(params, x, y.astype(float))
    with pytest.raises(ValueError, match=r"targets must have shape \(T=4, n=3\), got \(3, 4\)"):
        call(params, x, y.T)
    with pytest.raises(ValueError, match=r"targets must have shape \(n=3, T=4\), got \(4, 3\)"):
        call(params, x.swapaxes(0, 1), y, batch_first=True)
    bad = y.copy()
    bad[0, 0] = V
    with pytest.raises(ValueError, match=r"targets holds class 7, outside \[0, v=7\)"):
        call(params, x, bad)
    bad[0, 0] = -3
    with pytest.raises(ValueError, match=r"targets holds class -3"):
        call(params, x, bad)


def test_h0_shape(good):
    params, x, y = good
    with pytest.raises(ValueError, match=r"h0 must have shape \(n=3, h=6\), got \(6,\)"):
        call(params, x, y, h0=np.zeros(H))
    with pytest.raises(ValueError, match=r"h0 must have shape \(h=6,\), got \(1, 6\)"):
        call(params, x[:, 0], y[:, 0], h0=np.zeros((1, H)))


def test_unknown_reduction_and_flags(good):
    params, x, y = good
    with pytest.raises(ValueError, match=r"reduction must be 'mean' or 'sum', got 'avg'"):
        call(params, x, y, reduction="avg")
    with pytest.raises(TypeError, match=r"batch_first must be True or False"):
        call(params, x, y, batch_first="yes")


def test_unknown_backend(good):
    params, x, y = good
    with pytest.raises(ValueError, match=r"backend must be one of 'numba', 'c', 'numpy', got 'cuda'"):
        call(params, x, y, backend="cuda")


def test_layer_functions_validate(good):
    params, x, _ = good
    U, W, b = params.U, params.W, params.b
    with pytest.raises(ValueError, match=r"W must have shape \(h=6, h=6\)"):
        fastrnn.rnn_forward(x, U, W[:, :5], b)
    with pytest.raises(TypeError, match=r"mix float dtypes"):
        fastrnn.rnn_forward(x, U, W, b.astype(np.float32))
    H_ = fastrnn.rnn_forward(x, U, W, b)
    with pytest.raises(ValueError, match=r"dH must have shape \(T=4, n=3, h=6\)"):
        fastrnn.rnn_backward(H_[:, :2], H_, x, U, W)
    with pytest.raises(ValueError, match=r"H must hold the hidden states"):
        fastrnn.rnn_backward(H_, H_ * 3, x, U, W)
    with pytest.raises(ValueError, match=r"dh_last must have shape \(n=3, h=6\)"):
        fastrnn.rnn_backward(H_, H_, x, U, W, dh_last=np.zeros(H))
    with pytest.raises(ValueError, match=r"dH contains NaN or Inf"):
        fastrnn.rnn_backward(H_ * np.nan, H_, x, U, W)


@pytest.mark.parametrize("case", [CASES[5], CASES[13]], ids=str)
def test_non_contiguous_inputs_give_the_same_result(case, backend):
    params, x, y, h0 = case.make(np.float64, seed=4)
    expected = fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
    # Fortran-ordered parameters, strided inputs and targets, a transposed h0.
    params_f = fastrnn.Params(*(np.asfortranarray(a) for a in params))
    x_s = np.repeat(x, 2, axis=-1)[..., ::2] if not case.ids else np.repeat(x, 2, axis=0)[::2]
    y_s = np.repeat(y, 3, axis=1)[:, ::3]
    h0_t = np.ascontiguousarray(h0.T).T
    assert not x_s.flags.c_contiguous and not y_s.flags.c_contiguous and not h0_t.flags.c_contiguous
    got = fastrnn.loss_and_grads(params_f, x_s, y_s, h0=h0_t, backend=backend)
    assert got[0] == expected[0]
    for a, b in zip(got[1], expected[1]):
        if b is not None:
            np.testing.assert_array_equal(a, b)


def test_inputs_are_not_modified(good, backend):
    params, x, y = good
    copies = [a.copy() for a in (*params, x, y)]
    h0 = np.ones((N, H)) * 0.1
    fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
    for before, after in zip(copies, (*params, x, y)):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(h0, 0.1)


def test_more_arguments_are_named(good):
    """Each of these once surfaced as an error from inside (unpacking, numpy's truth value of an
    array, SeedSequence) or, for a masked array, silently used the masked values."""
    params, x, y = good
    with pytest.raises(ValueError, match=r"reduction must be 'mean' or 'sum', got array"):
        call(params, x, y, reduction=np.array(["mean", "sum"]))
    with pytest.raises(ValueError, match=r"reduction must be 'mean' or 'sum', got array"):
        call(params, x, y, reduction=np.array(["mean", "sum"]), lengths=np.full(N, T))
    with pytest.raises(TypeError, match=r"b must be an array \(h,\); pass np.zeros\(h\)"):
        fastrnn.rnn_forward(x, params.U, params.W, None)
    with pytest.raises(TypeError, match=r"b must be an array"):
        fastrnn.rnn_forward(x, params.U, params.W, None, lengths=np.full(N, T))
    masked = np.ma.masked_array(x, mask=np.zeros_like(x, dtype=bool))
    with pytest.raises(TypeError, match=r"inputs is a masked array, whose mask fastrnn would not see"):
        call(params, masked, y)
    with pytest.raises(TypeError, match=r"params.U is a masked array"):
        call(params._replace(U=np.ma.masked_array(params.U)), x, y)
    for seed, error in (("x", TypeError), (-1, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match=r"seed must be None, a non-negative integer or a numpy Generator"):
            fastrnn.init_params(D, H, V, seed=seed)
    for k, error in ((np.array([2]), ValueError), (np.array([2, 3]), ValueError), (np.True_, TypeError)):
        with pytest.raises(error, match=r"threads must be a positive integer or 'auto'"):
            fastrnn.set_num_threads(k)


def test_init_params_names_sizes_no_array_can_hold():
    """A hidden size of 10**20 failed inside numpy ("Maximum allowed dimension exceeded"), and numpy
    integer sizes could wrap their products."""
    for h in (10**20, np.int64(2**40)):
        with pytest.raises(ValueError, match=rf"d=3, h={h}, v=4 need arrays larger than this machine can address"):
            fastrnn.init_params(3, h, 4)
