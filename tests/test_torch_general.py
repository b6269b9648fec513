"""PyTorch cross-check of the general model: nn.RNN(num_layers, nonlinearity,
bidirectional, batch_first, bias) on pack_padded_sequence inputs against lengths=."""

import numpy as np
import pytest

import fastrnn
from cases import rel_err
from general_cases import supports_general

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# float32: 1e-6 everywhere but db at n = 1, where the column sum of dA cancels
# (measured 1.35e-6 for b_l0_reverse in the n = 1 case); torch and we round differently.
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}
F32_DB_N1 = 2e-6

CONFIGS = [  # (T, n, d, h, v, L, bidirectional, nonlinearity, batch_first, ids, lengths)
    (6, 4, 3, 5, 7, 1, False, "tanh", False, False, (6, 2, 6, 1)),
    (6, 4, 3, 5, 7, 1, True, "relu", True, False, (3, 3, 6, 1)),
    (5, 3, 4, 4, 6, 2, False, "relu", False, True, (5, 4, 1)),
    (5, 3, 4, 4, 6, 2, True, "tanh", True, True, (2, 5, 5)),
    (4, 2, 3, 3, 5, 3, True, "relu", False, False, (4, 1)),
    (7, 5, 4, 6, 8, 3, False, "tanh", True, False, (7, 7, 7, 7, 7)),
    (5, 1, 3, 4, 5, 2, True, "tanh", False, False, (5,)),
]


def from_torch(rnn, head, dtype, nonlinearity):
    """fastrnn.DeepParams with torch's weights: U = W_ihᵀ, W = W_hhᵀ, b = b_ih + b_hh."""
    layers = []
    for l in range(rnn.num_layers):
        cells = []
        for k in range(2 if rnn.bidirectional else 1):
            sfx = f"_l{l}" + ("_reverse" if k else "")
            g = lambda name: getattr(rnn, name + sfx).detach().numpy().astype(dtype)  # noqa: E731
            cells.append(fastrnn.Cell(g("weight_ih").T.copy(), g("weight_hh").T.copy(), g("bias_ih") + g("bias_hh")))
        layers.append(tuple(cells))
    V = head.weight.detach().numpy().astype(dtype).T.copy()
    return fastrnn.DeepParams(tuple(layers), V, head.bias.detach().numpy().astype(dtype).copy(), nonlinearity)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"T{c[0]}n{c[1]}L{c[5]}{'bi' if c[6] else ''}{c[7]}"
                         f"{'-bf' if c[8] else ''}{'-ids' if c[9] else ''}")
def test_against_torch_packed(backend, config, dtype):
    supports_general(backend)
    T, n, d, h, v, L, bi, nl, bf, ids, lengths = config
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(sum(config[:6]))
    rnn = torch.nn.RNN(d, h, num_layers=L, nonlinearity=nl, bias=True, batch_first=bf, bidirectional=bi).to(tdt)
    D = 2 if bi else 1
    head = torch.nn.Linear(D * h, v).to(tdt)
    params = from_torch(rnn, head, dtype, nl)
    rng = np.random.default_rng(T * n)
    x = rng.integers(0, d, (T, n)) if ids else rng.standard_normal((T, n, d)).astype(dtype)
    y = rng.integers(0, v, (T, n))
    y[rng.random((T, n)) < 0.15] = -100  # some ignored targets
    h0 = (0.5 * rng.standard_normal((L * D, n, h))).astype(dtype)
    if bf:
        x, y = x.swapaxes(0, 1).copy(), y.swapaxes(0, 1).copy()
    lengths = np.array(lengths)

    loss, grads, h_last = fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, batch_first=bf,
                                                 backend=backend)
    probs, h_last2 = fastrnn.predict_proba(params, x, h0=h0, lengths=lengths, batch_first=bf, backend=backend)

    xt = torch.nn.functional.one_hot(torch.tensor(x), d).to(tdt) if ids else torch.tensor(x)
    xt.requires_grad_(True)
    h0t = torch.tensor(h0, requires_grad=True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
    out, h_n = rnn(packed, h0t)
    y_packed = pack_padded_sequence(torch.tensor(y), torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
    loss_t = torch.nn.functional.cross_entropy(head(out.data), y_packed.data, ignore_index=-100)
    loss_t.backward()
    padded, _ = pad_packed_sequence(out, batch_first=bf, total_length=T)
    steps = np.arange(T)[None, :] if bf else np.arange(T)[:, None]
    real = torch.tensor(steps < (lengths[:, None] if bf else lengths[None, :]))[..., None]
    probs_t = torch.where(real, torch.softmax(head(padded), -1), torch.zeros((), dtype=tdt))

    tol = TOLERANCE[dtype]
    errors = {"loss": abs(loss - loss_t.item()) / abs(loss_t.item()),
              "probs": rel_err(probs, probs_t.detach().numpy()),
              "h_n": rel_err(h_last, h_n.detach().numpy()),
              "h_n (predict_proba)": rel_err(h_last2, h_n.detach().numpy()),
              "h0": rel_err(grads.h0, h0t.grad.numpy()),
              "V": rel_err(grads.V, head.weight.grad.numpy().T), "c": rel_err(grads.c, head.bias.grad.numpy())}
    if not ids:
        errors["X"] = rel_err(grads.X, xt.grad.numpy())
    for l in range(L):
        for k in range(D):
            sfx = f"_l{l}" + ("_reverse" if k else "")
            cell = grads.layers[l][k]
            errors[f"U{sfx}"] = rel_err(cell.U, getattr(rnn, "weight_ih" + sfx).grad.numpy().T)
            errors[f"W{sfx}"] = rel_err(cell.W, getattr(rnn, "weight_hh" + sfx).grad.numpy().T)
            errors[f"b{sfx} vs b_ih"] = rel_err(cell.b, getattr(rnn, "bias_ih" + sfx).grad.numpy())
            errors[f"b{sfx} vs b_hh"] = rel_err(cell.b, getattr(rnn, "bias_hh" + sfx).grad.numpy())
    for name, err in errors.items():
        limit = F32_DB_N1 if (dtype == np.float32 and n == 1 and name.startswith("b")) else tol
        assert err <= limit, (name, err)
