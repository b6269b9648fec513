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
