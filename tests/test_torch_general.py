"""PyTorch cross-check of the general model: nn.RNN(num_layers, nonlinearity,
bidirectional, batch_first, bias) on pack_padded_sequence inputs against lengths=."""

import numpy as np
import pytest

import fastrnn
from cases import rel_err
from general_cases import supports_general

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# float64: fastrnn against torch, 1e-12. float32: both against the exact value, torch's
# nn.RNN run in float64 on the same (float32) weights and inputs: fastrnn within 1e-6
# of it, or, where torch's own float32 result misses 1e-6 (db at n = 1, where the
# column sum of dA cancels: 1.37e-6), no further from it than torch's float32 is.
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}

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

    got = {"loss": np.float64(loss), "probs": probs, "h_n": h_last, "h_n (predict_proba)": h_last2, "h0": grads.h0,
           "V": grads.V, "c": grads.c}
    if not ids:
        got["X"] = grads.X
    for l in range(L):
        for k in range(D):
            sfx = f"_l{l}" + ("_reverse" if k else "")
            cell = grads.layers[l][k]
            got.update({f"U{sfx}": cell.U, f"W{sfx}": cell.W, f"b{sfx} vs b_ih": cell.b, f"b{sfx} vs b_hh": cell.b})

    want = _torch_results(rnn, head, x, y, h0, lengths, config, tdt)
    if dtype == np.float64:
        limits = dict.fromkeys(want, TOLERANCE[dtype])
    else:  # against the exact value; torch's float32 shows what float32 can reach
        torch32 = want
        want = _torch_results(rnn.double(), head.double(), x, y, h0, lengths, config, torch.float64)
        limits = {name: max(TOLERANCE[dtype], rel_err(torch32[name], want[name])) for name in want}
    assert got.keys() == want.keys()
    for name in want:
        err = rel_err(got[name], want[name])
        assert err <= limits[name], (name, err, limits[name])


def _torch_results(rnn, head, x, y, h0, lengths, config, tdt):
    """nn.RNN + nn.Linear + cross_entropy on pack_padded_sequence inputs in dtype ``tdt``:
    the same names as the test's ``got``, as numpy arrays in fastrnn's layout."""
    T, n, d, h, v, L, bi, nl, bf, ids, _ = config
    for p in [*rnn.parameters(), *head.parameters()]:
        p.grad = None
    xt = torch.nn.functional.one_hot(torch.tensor(x), d).to(tdt) if ids else torch.tensor(x).to(tdt)
    xt.requires_grad_(True)
    h0t = torch.tensor(h0).to(tdt).requires_grad_(True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
    out, h_n = rnn(packed, h0t)
    y_packed = pack_padded_sequence(torch.tensor(y), torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
    loss_t = torch.nn.functional.cross_entropy(head(out.data), y_packed.data, ignore_index=-100)
    loss_t.backward()
    padded, _ = pad_packed_sequence(out, batch_first=bf, total_length=T)
    steps = np.arange(T)[None, :] if bf else np.arange(T)[:, None]
    real = torch.tensor(steps < (lengths[:, None] if bf else lengths[None, :]))[..., None]
    probs_t = torch.where(real, torch.softmax(head(padded), -1), torch.zeros((), dtype=tdt))
    np_ = lambda t: t.detach().numpy()  # noqa: E731
    want = {"loss": np.float64(loss_t.item()), "probs": np_(probs_t), "h_n": np_(h_n), "h_n (predict_proba)": np_(h_n),
            "h0": np_(h0t.grad), "V": np_(head.weight.grad).T, "c": np_(head.bias.grad)}
    if not ids:
        want["X"] = np_(xt.grad)
    for l in range(L):
        for k in range(2 if bi else 1):
            sfx = f"_l{l}" + ("_reverse" if k else "")
            grad = lambda name: np_(getattr(rnn, name + sfx).grad)  # noqa: E731
            want.update({f"U{sfx}": grad("weight_ih").T, f"W{sfx}": grad("weight_hh").T,
                         f"b{sfx} vs b_ih": grad("bias_ih"), f"b{sfx} vs b_hh": grad("bias_hh")})
    return want
