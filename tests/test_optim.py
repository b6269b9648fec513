"""Optimizers and clipping under bad hyperparameters and bad gradients (issue 12, items 2, 3, 10, 14)."""

import numpy as np
import pytest

import fastrnn
from fastrnn import optim

SHAPES = [(3, 2), (2, 2), (2, 3), (2,), (3,)]


def _params(dtype=np.float64, value=0.5):
    return fastrnn.Params(*(np.full(s, value, dtype) for s in SHAPES))


def _grads(dtype=np.float64, value=0.1, **replace):
    g = fastrnn.Grads(*(np.full(s, value, dtype) for s in SHAPES), h0=None, X=None, A=None)
    return g._replace(**replace)


# -- item 2: one validation of hyperparameters ----------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: optim.SGD(p, lr=float("inf")), "lr must be a positive number, got inf"),
        (lambda p: optim.SGD(p, lr=float("nan")), "lr must be a positive number"),
        (lambda p: optim.SGD(p, lr=True), "lr must be a positive number"),
        (lambda p: optim.SGD(p, momentum=1.0), r"momentum must be a number in \[0, 1\)"),
        (lambda p: optim.Adam(p, betas=(1.0, 0.999)), r"beta1 must be a number in \[0, 1\), got 1.0"),
        (lambda p: optim.Adam(p, betas=(0.9, -0.1)), r"beta2 must be a number in \[0, 1\)"),
        (lambda p: optim.Adam(p, eps=0.0), "eps must be a positive number, got 0.0"),
        (lambda p: optim.RMSprop(p, rho=1.5), r"rho must be a number in \[0, 1\), got 1.5"),
        (lambda p: optim.RMSprop(p, eps=-1e-8), "eps must be a positive number"),
        (lambda p: optim.Adagrad(p, eps=-1e-8), "eps must be a positive number"),
    ],
)
def test_optimizers_refuse_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make(_params())


@pytest.mark.parametrize("limit", [-1.0, 0.0, float("nan"), float("inf")])
def test_clipping_refuses_bad_limits(limit):
    g = _grads(value=3.0)
    with pytest.raises(ValueError, match="limit must be a positive number"):
        optim.clip_by_value(g, limit)
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        optim.clip_by_global_norm(g, limit)
    assert all((a == 3.0).all() for a in g[:5])  # untouched


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: optim.SGD(p, lr=1e39), r"lr must be a positive number that float32 can hold .*got 1e\+39"),
        (lambda p: optim.Adam(p, eps=1e-50), r"eps must be a positive number that float32 can hold"),
        (lambda p: optim.Adagrad(p, eps=1e-50), r"eps must be a positive number that float32 can hold"),
        (lambda p: optim.RMSprop(p, eps=1e-50), r"eps must be a positive number that float32 can hold"),
        (lambda p: optim.Adam(p, betas=(0.9, 0.99999999)), r"beta2 must be a number in \[0, 1\) that stays below 1"),
        (lambda p: optim.RMSprop(p, rho=0.99999999), r"rho must be a number in \[0, 1\) that stays below 1"),
        (lambda p: optim.SGD(p, momentum=0.99999999), r"momentum must be a number in \[0, 1\) that stays below 1"),
    ],
)
def test_hyperparameters_must_keep_their_meaning_in_float32(make, message):
    """1e39 is inf in float32, 1e-50 is 0, 0.99999999 is 1: each once turned a step's update
    non-finite (or made Adam divide by eps alone) with only a numpy warning."""
    with pytest.raises(ValueError, match=message):
        make(_params(np.float32))
    make(_params(np.float64))  # the same numbers are fine in float64


@pytest.mark.parametrize(
    "params, error, message",
    [
        (fastrnn.Params(*(np.ones(s, np.int64) for s in SHAPES)), TypeError, r"params.U must be a float32 or float64"),
        (_params()._replace(W=np.ones((1, 2))), ValueError, r"params.W must have shape \(h=2, h=2\), got \(1, 2\)"),
        (_params()._replace(b=np.array([0.0, np.nan])), ValueError, r"params.b contains NaN or Inf"),
        (_params()._replace(c=[0.5, 0.5, 0.5]), TypeError, r"params.c must be a writeable numpy array .*got list"),
        (_params()._replace(V=np.broadcast_to(0.5, (2, 3))), TypeError, r"params.V must be a writeable .*read-only"),
    ],
)
def test_optimizers_check_params_as_the_kernels_do(params, error, message):
    """A Params with int arrays was accepted (its updates then cast lr to 0: a silent no-op)."""
    for make in optim.OPTIMIZERS.values():
        with pytest.raises(error, match=message):
            make(params)


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e20), (np.float64, 1e160)])
def test_global_norm_of_finite_gradients_whose_squares_overflow(dtype, big):
    """The squares of 1e20 overflow float32: the norm was Inf and every gradient became 0."""
    g = _grads(dtype, 0.0)
    g.U[0, 0], g.W[1, 1] = big, -big
    norm = optim.clip_by_global_norm(g, 5.0)
    assert norm == pytest.approx(big * np.sqrt(2), rel=1e-6)
    assert g.U[0, 0] == pytest.approx(5 / np.sqrt(2), rel=1e-6) and g.W[1, 1] == pytest.approx(-5 / np.sqrt(2), rel=1e-6)
    assert np.sqrt(sum(float(np.vdot(a, a)) for a in g[:5])) == pytest.approx(5.0, rel=1e-6)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_global_norm_leaves_non_finite_gradients_for_the_step_to_refuse(bad):
    g = _grads()
    g.V[0, 0] = bad
    norm = optim.clip_by_global_norm(g, 1.0)
    assert not np.isfinite(norm)
    assert (g.U == 0.1).all() and (g.W == 0.1).all()  # not scaled to 0
    p = _params()
    with pytest.raises(optim.TrainingDiverged, match="grads.V contains NaN or Inf"):
        optim.SGD(p).step(g)
    assert (p.U == 0.5).all()


@pytest.mark.parametrize("state", [{}, [1, 2], None])
def test_load_state_dict_needs_a_state(state):
    with pytest.raises(ValueError, match="optimizer state must be a mapping with t"):
        optim.Adam(_params()).load_state_dict(state)


def test_cli_and_library_share_the_rule_and_words():
    from fastrnn.cli import _positive_float

    for text in ["-1", "0", "nan", "inf", "x"]:
        with pytest.raises(Exception, match="expected a positive number"):
            _positive_float(text)
        value = None if text == "x" else float(text)
        assert optim.expectation("positive", value) == "a positive number"
    assert _positive_float("0.5") == 0.5 and optim.expectation("positive", 0.5) is None


# -- item 3: gradients are checked once per step ------------------------------------


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
@pytest.mark.parametrize(
    "bad, error, message",
    [
        ({"U": np.full((1, 2), 0.1)}, ValueError, r"grads.U is float64\(1, 2\), params.U is float64\(3, 2\)"),
        ({"W": np.float64(0.1)}, TypeError, "grads.W must be a numpy array"),
        ({"W": np.array(0.1)}, ValueError, r"grads.W is float64\(\)"),
        ({"V": np.full((2, 3), 0.1, np.float32)}, ValueError, r"grads.V is float32\(2, 3\), params.V is float64"),
        ({"b": np.ones(2, np.int64)}, ValueError, r"grads.b is int64\(2,\)"),
        ({"c": np.array([0.1, np.nan, 0.1])}, fastrnn.TrainingDiverged, "grads.c contains NaN or Inf"),
        ({"U": np.full((3, 2), np.inf)}, fastrnn.TrainingDiverged, "grads.U contains NaN or Inf"),
    ],
)
def test_optimizers_refuse_bad_gradients_and_change_nothing(name, bad, error, message):
    p = _params()
    kw = {"momentum": 0.9} if name == "sgd" else {}
    o = optim.OPTIMIZERS[name](p, **kw)
    with pytest.raises(error, match=message):
        o.step(_grads(**bad))
    assert o.t == 0
    assert all((a == 0.5).all() for a in p)
    assert all((s == 0).all() for slot in o.state.values() for s in slot)


# -- item 10: optimizers describe and rebuild themselves ------------------------------


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("sgd", {"lr": 0.3, "momentum": 0.8, "nesterov": True}),
        ("adagrad", {"lr": 0.2, "eps": 1e-6}),
        ("rmsprop", {"lr": 0.01, "rho": 0.8, "eps": 1e-7}),
        ("adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-7}),
    ],
)
def test_config_rebuilds_the_optimizer(name, kwargs):
    a = optim.OPTIMIZERS[name](_params(), **kwargs)
    b = type(a)(_params(), **a.config())
    assert b.config() == a.config()
    for _ in range(3):
        a.step(_grads())
        b.step(_grads())
    for x, y in zip(a.params, b.params):
        np.testing.assert_array_equal(x, y)


def test_adam_takes_beta1_alone():
    o = optim.make_optimizer("adam", _params(), {"beta1": 0.5})
    assert (o.beta1, o.beta2) == (0.5, 0.999)
    o = optim.make_optimizer("adam", _params(), {"beta2": 0.9})
    assert (o.beta1, o.beta2) == (0.9, 0.9)
    with pytest.raises(TypeError, match="unexpected keyword"):
        optim.make_optimizer("sgd", _params(), {"rho": 0.9})


def test_the_dtype_scalar_helper_is_not_named_like_the_bias():
    assert not hasattr(optim.Optimizer, "_c")  # `c` is the output bias
    assert optim.Optimizer._scalar(np.zeros(1, np.float32), 0.1).dtype == np.float32


def test_load_state_dict_refuses_non_finite_state():
    a = optim.Adam(_params())
    a.step(_grads())
    state = a.state_dict()
    state["s.W"] = np.full((2, 2), np.nan)
    with pytest.raises(ValueError, match="s.W contains NaN"):
        optim.Adam(_params()).load_state_dict(state)


# -- item 14: one default learning rate ------------------------------------------------


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_library_and_cli_default_learning_rates_agree(name, tmp_path):
    from fastrnn.cli import build_parser

    vocab = fastrnn.Vocab.from_text("abcdefgh" * 20)
    model = fastrnn.CharRNN(vocab, 4, seed=0)
    trainer = fastrnn.Trainer(model, vocab.encode("abcdefgh" * 20), seq_len=5, batch=2, optimizer=name)
    assert trainer.optimizer.lr == optim.DEFAULT_LR[name] == optim.OPTIMIZERS[name](_params()).lr
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert f"{name} {optim.DEFAULT_LR[name]:g}" in " ".join(help_text.split())


def test_clipping_and_make_optimizer_name_their_arguments():
    """These once failed inside np.clip or with "unhashable type: 'list'"."""
    for clip in (optim.clip_by_value, optim.clip_by_global_norm):
        for grads in (tuple(_grads()[:5]), None):
            with pytest.raises(TypeError, match=r"grads must be a fastrnn.Grads or fastrnn.DeepGrads \(fields U, W, V, b, c\), got"):
                clip(grads, 1.0)
    # any container with the five fields will do: a Params holding gradients, say
    as_params = fastrnn.Params(*_grads(value=3.0)[:5])
    assert optim.clip_by_global_norm(as_params, 1.0) == pytest.approx(3.0 * np.sqrt(6 + 4 + 6 + 2 + 3))
    p = _params()
    optim.SGD(p, lr=1.0).step(fastrnn.Params(*_grads(value=0.25)[:5]))
    assert (p.U == 0.25).all()
    with pytest.raises(ValueError, match=r"optimizer must be one of sgd, adagrad, rmsprop, adam, got \['adam'\]"):
        optim.make_optimizer(["adam"], _params())
    with pytest.raises(TypeError, match=r"optimizer keyword arguments must be a dict, got list"):
        optim.make_optimizer("adam", _params(), [1, 2])


@pytest.mark.parametrize("name, slot", [("adam", "s"), ("adagrad", "sum_sq"), ("rmsprop", "mean_sq")])
def test_load_state_dict_refuses_negative_sums_of_squares(name, slot):
    """A hand-edited negative second moment loaded, and the first step then made a NaN."""
    opt = optim.make_optimizer(name, _params())
    opt.step(_grads())
    state = opt.state_dict()
    state[f"{slot}.W"] = state[f"{slot}.W"].copy()
    state[f"{slot}.W"][0, 0] = -1e-3
    fresh = optim.make_optimizer(name, _params())
    with pytest.raises(ValueError, match=rf"optimizer state {slot}.W holds -0.001: a sum of squares is never negative"):
        fresh.load_state_dict(state)
