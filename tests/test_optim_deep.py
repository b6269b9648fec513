"""fastrnn.optim over DeepParams: stacked, bidirectional and relu models train with
fastrnn's own optimizers and clipping, exactly as torch.optim trains nn.RNN."""

import numpy as np
import pytest

import fastrnn
from fastrnn import optim

KWARGS = {
    "sgd": {"lr": 0.3, "momentum": 0.9, "nesterov": True},
    "adagrad": {"lr": 0.1},
    "rmsprop": {"lr": 0.01, "rho": 0.8},
    "adam": {"lr": 0.02, "betas": (0.8, 0.99)},
}


def _batch(T=6, n=3, v=5, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, v, (T, n)), rng.integers(0, v, (T, n))


def _copy(p):
    if isinstance(p, fastrnn.Params):
        return fastrnn.Params(*(a.copy() for a in p))
    layers = tuple(tuple(fastrnn.Cell(*(a.copy() for a in cell)) for cell in cells) for cells in p.layers)
    return fastrnn.DeepParams(layers, p.V.copy(), p.c.copy(), p.nonlinearity)


def test_clip_by_global_norm_scales_every_deep_gradient():
    x, y = _batch()
    p = fastrnn.init_params(5, 4, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    _, g, _ = fastrnn.loss_and_grads(p, x, y, params_only=True)
    before = [a.copy() for _, a in optim._named(g)]
    assert len(before) == 4 * 3 + 2
    norm = optim.clip_by_global_norm(g, 0.01)
    assert norm == pytest.approx(np.sqrt(sum((a * a).sum() for a in before)), rel=1e-14)
    for a, (_, b) in zip(before, optim._named(g)):
        np.testing.assert_allclose(b, a * (0.01 / norm), rtol=1e-15, atol=0)
    optim.clip_by_value(g, 1e-4)
    assert max(np.abs(a).max() for _, a in optim._named(g)) == 1e-4


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_one_layer_deep_params_train_bit_for_bit_like_params(name):
    """The same model as Params and as a one-cell DeepParams, fed the same gradients:
    every optimizer gives the same bits, so the deep path maps each gradient to its parameter."""
    x, y = _batch()
    flat = fastrnn.init_params(5, 4, 5, dtype=np.float64, seed=0)
    flat = flat._replace(b=np.linspace(-0.3, 0.3, 4), c=np.linspace(0.2, -0.2, 5))
    deep = fastrnn.DeepParams.from_params(_copy(flat))
    a, b = optim.OPTIMIZERS[name](flat, **KWARGS[name]), optim.OPTIMIZERS[name](deep, **KWARGS[name])
    for step in range(8):
        _, ga, _ = fastrnn.loss_and_grads(flat, x, y, params_only=True)
        # the same gradient values as a DeepGrads, so only the optimizer's mapping is tested
        gb = fastrnn.DeepGrads(((fastrnn.Cell(ga.U.copy(), ga.W.copy(), ga.b.copy()),),), ga.V.copy(), ga.c.copy(),
                               None, None, None)
        optim.clip_by_value(ga, 0.02)
        optim.clip_by_value(gb, 0.02)
        a.step(ga)
        b.step(gb)
    (cell,), = deep.layers
    for got, want in zip((cell.U, cell.W, deep.V, cell.b, deep.c), flat):
        np.testing.assert_array_equal(got, want)
    sa, sb = a.state_dict(), b.state_dict()
    rename = {"U": "layers[0][0].U", "W": "layers[0][0].W", "b": "layers[0][0].b", "V": "V", "c": "c"}
    assert sorted(sb) == sorted(f"{k.split('.')[0]}.{rename[k.split('.')[1]]}" if "." in k else k for k in sa)


def _torch_pair(torch, L, bi, nl, d=5, h=4, v=5):
    torch.manual_seed(L + 2 * bi)
    rnn = torch.nn.RNN(d, h, L, nl, bidirectional=bi, dtype=torch.float64)
    head = torch.nn.Linear(h * (1 + bi), v, dtype=torch.float64)
    layers = []
    for l in range(L):
        cells = []
        for k in range(1 + bi):
            s = f"_l{l}" + ("_reverse" if k else "")
            getattr(rnn, "bias_hh" + s).requires_grad_(False).zero_()  # one bias per cell, as in fastrnn
            t = lambda n: getattr(rnn, n + s).detach().numpy().copy()  # noqa: E731
            cells.append(fastrnn.Cell(t("weight_ih").T.copy(), t("weight_hh").T.copy(), t("bias_ih")))
        layers.append(tuple(cells))
    p = fastrnn.DeepParams(tuple(layers), head.weight.detach().numpy().T.copy(), head.bias.detach().numpy().copy(), nl)
    return rnn, head, p


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])  # Adagrad: ours is min-char-rnn's sqrt(m + eps)
@pytest.mark.parametrize("L, bi, nl", [(2, True, "relu"), (3, False, "tanh"), (1, True, "tanh")])
def test_deep_training_follows_torch_optim_on_nn_rnn(name, L, bi, nl):
    torch = pytest.importorskip("torch")
    x, y = _batch()
    rnn, head, p = _torch_pair(torch, L, bi, nl)
    kw = dict(KWARGS[name])
    if name == "rmsprop":
        kw["alpha"] = kw.pop("rho")
    params = [q for q in list(rnn.parameters()) + list(head.parameters()) if q.requires_grad]
    topt = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[name](params, **kw)
    ours = optim.OPTIMIZERS[name](p, **KWARGS[name])
    xt = torch.nn.functional.one_hot(torch.from_numpy(x), 5).double()
    yt = torch.from_numpy(y)
    clipped = 0
    for step in range(25):
        topt.zero_grad()
        out, _ = rnn(xt)
        loss_t = torch.nn.functional.cross_entropy(head(out).reshape(-1, 5), yt.reshape(-1))
        loss_t.backward()
        # torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6); ours by max_norm / norm
        norm_t = float(torch.sqrt(sum((q.grad * q.grad).sum() for q in params)))
        if norm_t > 0.2:
            for q in params:
                q.grad *= 0.2 / norm_t
        topt.step()
        loss, g, _ = fastrnn.loss_and_grads(p, x, y, params_only=True)
        norm = optim.clip_by_global_norm(g, 0.2)
        ours.step(g)
        assert abs(loss - loss_t.item()) <= 1e-12 * abs(loss), step
        assert abs(norm - norm_t) <= 1e-12 * norm, step
        clipped += norm > 0.2
    assert clipped >= 5  # the clipping took part
    for l, cells in enumerate(p.layers):
        for k, cell in enumerate(cells):
            s = f"_l{l}" + ("_reverse" if k else "")
            for mine, theirs in ((cell.U, "weight_ih"), (cell.W, "weight_hh"), (cell.b, "bias_ih")):
                t = getattr(rnn, theirs + s).detach().numpy()
                np.testing.assert_allclose(mine, t.T if t.ndim == 2 else t, rtol=0, atol=1e-11)
    np.testing.assert_allclose(p.V, head.weight.detach().numpy().T, rtol=0, atol=1e-11)
    np.testing.assert_allclose(p.c, head.bias.detach().numpy(), rtol=0, atol=1e-11)


def test_deep_state_dict_round_trips_and_is_refused_for_another_model():
    x, y = _batch()
    p = fastrnn.init_params(5, 4, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    a = optim.Adam(p, lr=0.01)
    for _ in range(3):
        a.step(fastrnn.loss_and_grads(p, x, y, params_only=True)[1])
    state = a.state_dict()
    assert "m.layers[1][1].W" in state and "s.V" in state and len(state) == 2 + 2 * (4 * 3 + 2)
    q = _copy(p)
    b = optim.Adam(q, lr=0.01)
    b.load_state_dict(state)
    g = fastrnn.loss_and_grads(p, x, y, params_only=True)[1]
    a.step(g)
    b.step(g)
    for u, w in zip(optim._named(p), optim._named(q)):
        np.testing.assert_array_equal(u[1], w[1])
    with pytest.raises(ValueError, match=r"has no m.U \(saved for another model\?\)"):
        optim.Adam(fastrnn.init_params(5, 4, 5, dtype=np.float64)).load_state_dict(state)


def test_deep_optimizers_refuse_mismatched_gradients_and_change_nothing():
    x, y = _batch()
    p = fastrnn.init_params(5, 4, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    before = [a.copy() for _, a in optim._named(p)]
    o = optim.Adam(p)
    _, g, _ = fastrnn.loss_and_grads(p, x, y, params_only=True)
    flat = fastrnn.init_params(5, 4, 5, dtype=np.float64)
    _, gflat, _ = fastrnn.loss_and_grads(flat, x, y, params_only=True)
    cell = g.layers[1][0]
    bad = [
        (gflat, TypeError, "grads must be a fastrnn.DeepGrads for DeepParams, got Grads"),
        (g._replace(layers=g.layers[:1]), ValueError, r"grads.layers holds 1 layer\(s\) of \[2\] cell\(s\), params.layers 2 of \[2, 2\]"),
        (g._replace(layers=(g.layers[0], g.layers[1][:1])), ValueError, r"holds 2 layer\(s\) of \[2, 1\]"),
        (g._replace(layers=(g.layers[0], (cell._replace(W=cell.W[:2]), g.layers[1][1]))), ValueError,
         r"grads.layers\[1\]\[0\].W is float64\(2, 4\), params.layers\[1\]\[0\].W is float64\(4, 4\)"),
        (g._replace(layers=(g.layers[0], (cell._replace(b=cell.b.astype(np.float32)), g.layers[1][1]))), ValueError,
         r"grads.layers\[1\]\[0\].b is float32\(4,\)"),
        (g._replace(layers=(g.layers[0], (cell._replace(U=cell.U * np.nan), g.layers[1][1]))), fastrnn.TrainingDiverged,
         r"grads.layers\[1\]\[0\].U contains NaN or Inf"),
        (g._replace(V=list(g.V)), TypeError, "grads.V must be a numpy array"),
    ]
    for grads, error, message in bad:
        with pytest.raises(error, match=message):
            o.step(grads)
    assert o.t == 0
    for u, (_, w) in zip(before, optim._named(p)):
        np.testing.assert_array_equal(u, w)
    with pytest.raises(TypeError, match="grads must be a fastrnn.Grads for Params, got DeepGrads"):
        optim.SGD(flat).step(g)


def test_deep_params_are_validated_when_the_optimizer_is_built():
    p = fastrnn.init_params(5, 4, 5, num_layers=2, seed=0)
    (c0,), (c1,) = p.layers
    broken = p._replace(layers=((c0,), (c1._replace(U=c1.U[:3]),)))
    with pytest.raises(ValueError, match=r"params.layers\[1\]\[0\].U must have shape .*do not chain"):
        optim.Adam(broken)
    with pytest.raises(TypeError, match="params must be a fastrnn.Params or fastrnn.DeepParams, got tuple"):
        optim.Adam(tuple(p))
