"""fastrnn.gradcheck: passes for every backend, fails (naming the tensor) on a wrong gradient."""

import numpy as np
import pytest

import fastrnn
from cases import CASES, case_id


@pytest.mark.parametrize("case", [CASES[5], CASES[10], CASES[12], CASES[17]], ids=case_id)
def test_gradcheck_passes_for_every_backend(case, backend):
    params, inputs, targets, h0 = case.make(np.float64, seed=21)
    report = fastrnn.gradcheck(params, inputs, targets, backend=backend, **case.kwargs(h0))
    assert report.passed, str(report)
    expected = {"U", "W", "V", "b", "c", "h0", "A"} | (set() if case.ids else {"X"})
    assert set(report.checks) == expected
    assert max(c.max_rel_error for c in report.checks.values()) <= 1e-6


@pytest.mark.parametrize("tensor", ["U", "W", "V", "b", "c", "h0", "X", "A"])
def test_gradcheck_fails_on_a_corrupted_gradient_and_names_it(tensor):
    params, inputs, targets, h0 = CASES[5].make(np.float64, seed=22)

    def corrupted(*args, **kwargs):
        loss, grads, h_last = fastrnn.loss_and_grads(*args, **kwargs)
        g = getattr(grads, tensor).copy()
        g.flat[1] += 1e-3 * np.abs(g).max()  # a 0.1% error in one entry
        return loss, grads._replace(**{tensor: g}), h_last

    report = fastrnn.gradcheck(params, inputs, targets, h0=h0, grad_fn=corrupted, max_entries=1000)
    assert not report.passed
    assert report.failed == [tensor]
    worst = np.unravel_index(1, _shape(tensor, params, inputs, h0))  # the corrupted entry
    assert report.checks[tensor].worst_index == tuple(int(i) for i in worst)
    assert f"FAILED: {tensor}" in str(report)


def _shape(tensor, params, inputs, h0):
    if tensor in "UWVbc":
        return getattr(params, tensor).shape
    if tensor == "h0":
        return h0.shape
    if tensor == "X":
        return inputs.shape
    return inputs.shape[:2] + (params.U.shape[1],)


def test_gradcheck_checks_a_hand_written_rnn():
    """A user's own numpy RNN, with the classic slip of forgetting tanh' in BPTT."""
    params, inputs, targets, h0 = CASES[19].make(np.float64, seed=23)

    def my_rnn(params, x, y, h0=None, reduction="mean", batch_first=False, forget_tanh_prime=False):
        U, W, V, b, c = params
        T, n, _ = x.shape
        H, hp = [], np.zeros((n, W.shape[0])) if h0 is None else h0
        for t in range(T):
            hp = np.tanh(x[t] @ U + hp @ W + b)
            H.append(hp)
        H = np.array(H)
        O = H @ V + c
        P = np.exp(O - O.max(-1, keepdims=True))
        P /= P.sum(-1, keepdims=True)
        dO = P.copy()
        dO[np.arange(T)[:, None], np.arange(n), y] -= 1
        dO /= T * n
        dA, nxt = np.zeros_like(H), np.zeros((n, W.shape[0]))
        for t in reversed(range(T)):
            dh = dO[t] @ V.T + nxt
            dA[t] = dh if forget_tanh_prime else dh * (1 - H[t] ** 2)
            nxt = dA[t] @ W.T
        Hp = np.concatenate([(np.zeros((1, n, W.shape[0])) if h0 is None else h0[None]), H[:-1]])
        grads = fastrnn.Grads(
            U=np.einsum("tni,tnj->ij", x, dA), W=np.einsum("tni,tnj->ij", Hp, dA), V=np.einsum("tni,tnj->ij", H, dO),
            b=dA.sum((0, 1)), c=dO.sum((0, 1)), h0=nxt, X=dA @ U.T, A=dA,
        )
        return 0.0, grads, H[-1]

    assert fastrnn.gradcheck(params, inputs, targets, grad_fn=my_rnn).passed
    broken = fastrnn.gradcheck(params, inputs, targets, grad_fn=lambda *a, **k: my_rnn(*a, **k, forget_tanh_prime=True))
    assert not broken.passed and "U" in broken.failed and "A" in broken.failed
    assert "c" not in broken.failed and "V" not in broken.failed  # the output layer is still right


def test_sub_sampling_is_seeded():
    params, inputs, targets, h0 = CASES[21].make(np.float64, seed=24)
    a = fastrnn.gradcheck(params, inputs, targets, h0=h0, batch_first=True, max_entries=5, seed=1)
    b = fastrnn.gradcheck(params, inputs, targets, h0=h0, batch_first=True, max_entries=5, seed=1)
    assert a.passed and all(c.checked <= 5 for c in a.checks.values())
    assert [c.worst_index for c in a.checks.values()] == [c.worst_index for c in b.checks.values()]
    assert a.checks["W"].total == 64


def test_float32_gradients_are_checked_against_the_float64_loss(fast_backend):
    params, inputs, targets, h0 = CASES[5].make(np.float32, seed=25)
    report = fastrnn.gradcheck(params, inputs, targets, h0=h0, backend=fast_backend, rtol=1e-5)
    assert report.passed, str(report)


# -- issue 12, items 16-17: the README's example, step and tolerance, forward-only differences ---------


def _readme_example(dtype):
    """The arrays of README.md's "Use" section."""
    T, n, d, h, v = 25, 32, 65, 128, 65
    params = fastrnn.init_params(d, h, v, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    return params, rng.integers(0, d, size=(T, n)), rng.integers(0, v, size=(T, n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_readme_example_passes_in_both_dtypes(backend, dtype):
    params, inputs, targets = _readme_example(dtype)
    report = fastrnn.gradcheck(params, inputs, targets, backend=backend)
    assert report.passed, str(report)
    assert set(report.checks) == {"U", "W", "V", "b", "c", "h0", "A"}
    assert report.rtol == (1e-6 if dtype == np.float64 else pytest.approx(100 * np.finfo(np.float32).eps))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tensor", ["U", "W", "V", "b", "c", "h0", "A"])
def test_a_1e_3_relative_error_still_fails_on_the_readme_example(dtype, tensor):
    params, inputs, targets = _readme_example(dtype)

    def off_by_1e_3(*args, **kwargs):
        loss, grads, h_last = fastrnn.loss_and_grads(*args, **kwargs)
        return loss, grads._replace(**{tensor: getattr(grads, tensor) * np.asarray(1.001, dtype)}), h_last

    report = fastrnn.gradcheck(params, inputs, targets, grad_fn=off_by_1e_3, max_entries=16)
    assert report.failed == [tensor], str(report)


def test_finite_differences_never_run_a_backward_pass(monkeypatch):
    from fastrnn.backends import reference

    params, inputs, targets = _readme_example(np.float64)
    calls = {"loss_and_grads": 0, "backward": 0}

    def counted(name):
        original = getattr(reference, name)

        def wrapper(*a, **k):
            calls[name] += 1
            return original(*a, **k)

        monkeypatch.setattr(reference, name, wrapper)

    counted("loss_and_grads")
    counted("backward")
    report = fastrnn.gradcheck(params, inputs, targets, backend="numpy", max_entries=8)
    assert report.passed, str(report)
    # the analytic gradients and one validation call; not one backward per difference (7 tensors × 8 × 2)
    assert calls["loss_and_grads"] <= 2 and calls["backward"] <= 2, calls


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"eps": 0}, ValueError, "eps must be a positive finite step, got 0"),
        ({"eps": float("nan")}, ValueError, "eps must be a positive finite step"),
        ({"max_entries": 0}, ValueError, "max_entries must be a positive integer, got 0"),
        ({"rtol": -1.0}, ValueError, "rtol must be a positive finite number"),
        ({"grad_fn": lambda *a, **k: (0.0, None, None)}, ValueError, "returned grads=None"),
        ({"grad_fn": lambda *a, **k: None}, TypeError, r"must return \(loss, grads, h_last\)"),
    ],
)
def test_clear_errors_for_bad_arguments(kwargs, error, message):
    params, inputs, targets, h0 = CASES[5].make(np.float64, seed=26)
    with pytest.raises(error, match=message):
        fastrnn.gradcheck(params, inputs, targets, h0=h0, **kwargs)


def test_a_grad_fn_returning_none_for_a_parameter_gradient_is_named():
    params, inputs, targets, h0 = CASES[5].make(np.float64, seed=27)

    def no_dW(*args, **kwargs):
        loss, grads, h_last = fastrnn.loss_and_grads(*args, **kwargs)
        return loss, grads._replace(W=None), h_last

    with pytest.raises(ValueError, match=r"returned no dW \(grads.W is None\)"):
        fastrnn.gradcheck(params, inputs, targets, h0=h0, grad_fn=no_dW)

    def no_state_grads(*args, **kwargs):
        loss, grads, h_last = fastrnn.loss_and_grads(*args, **kwargs)
        return loss, grads._replace(h0=None, A=None), h_last

    report = fastrnn.gradcheck(params, inputs, targets, h0=h0, grad_fn=no_state_grads)
    assert report.passed and report.skipped == ["h0", "A"] and "not returned: h0, A" in str(report)


def test_a_grad_fn_returning_the_wrong_container_is_named():
    """A DeepParams gradcheck whose grad_fn returned a Grads once failed with an AttributeError on .layers."""
    deep = fastrnn.init_params(3, 4, 5, dtype=np.float64, num_layers=2, seed=0)
    flat = fastrnn.init_params(3, 4, 5, dtype=np.float64, seed=0)
    x, y = np.zeros((3, 2), dtype=int), np.ones((3, 2), dtype=int)
    wrong = lambda p, *a, **k: fastrnn.loss_and_grads(flat, *a, **k)  # noqa: E731
    with pytest.raises(TypeError, match=r"must return grads with layers, V, c \(a fastrnn.DeepGrads for DeepParams\), got Grads"):
        fastrnn.gradcheck(deep, x, y, grad_fn=wrong)
