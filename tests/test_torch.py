"""Cross-check with PyTorch autograd: nn.RNN + nn.Linear + cross_entropy."""

import numpy as np
import pytest

import fastrnn
from cases import CASES, as_time_major, case_id, rel_err

torch = pytest.importorskip("torch")

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}
TORCH_CASES = [c for c in CASES if not c.unbatched]


def torch_loss_and_grads(params, inputs, targets, h0, case, dtype):
    """The same model built from torch modules; returns loss and grads in fastrnn's layout."""
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    U, W, V, b, c = (torch.tensor(a, dtype=tdt) for a in params)
    d, h = U.shape
    rnn = torch.nn.RNN(d, h, nonlinearity="tanh", bias=True, batch_first=case.batch_first).to(tdt)
    head = torch.nn.Linear(h, V.shape[1]).to(tdt)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(U.T)  # torch computes x W_ihᵀ: W_ih = Uᵀ
        rnn.weight_hh_l0.copy_(W.T)
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
        head.weight.copy_(V.T)
        head.bias.copy_(c)
    if case.ids:  # torch has no token-id input: give it the one-hot rows fastrnn never builds
        x = torch.nn.functional.one_hot(torch.tensor(inputs), d).to(tdt)
    else:
        x = torch.tensor(inputs, dtype=tdt)
    x.requires_grad_(True)
    n = case.n
    h0_t = torch.zeros(1, n, h, dtype=tdt) if h0 is None else torch.tensor(h0, dtype=tdt)[None]
    h0_t.requires_grad_(True)
    H, h_last = rnn(x, h0_t)
    O = head(H)
    loss = torch.nn.functional.cross_entropy(
        O.reshape(-1, O.shape[-1]), torch.tensor(targets).reshape(-1), reduction=case.reduction
    )
    loss.backward()
    grads = dict(
        U=rnn.weight_ih_l0.grad.T,
        W=rnn.weight_hh_l0.grad.T,
        V=head.weight.grad.T,
        b=rnn.bias_ih_l0.grad,
        c=head.bias.grad,
        h0=h0_t.grad[0],
        X=None if case.ids else x.grad,
    )
    grads = {k: None if g is None else g.detach().numpy() for k, g in grads.items()}
    return loss.item(), grads, h_last[0].detach().numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_matches_torch_autograd(case, dtype, backend):
    params, inputs, targets, h0 = case.make(dtype, seed=13)
    loss, grads, h_last = fastrnn.loss_and_grads(params, inputs, targets, backend=backend, **case.kwargs(h0))
    t_loss, t_grads, t_h_last = torch_loss_and_grads(params, inputs, targets, h0, case, dtype)
    tol = TOLERANCE[dtype]
    assert loss == pytest.approx(t_loss, rel=tol)
    assert rel_err(h_last, t_h_last) <= tol
    for name, expected in t_grads.items():
        got = getattr(grads, name)
        if expected is None:
            assert got is None
            continue
        assert rel_err(got, expected) <= tol, f"d{name}: {rel_err(got, expected):.2e}"
    assert as_time_major(case, grads.A).shape == (case.T, case.n, case.h)
