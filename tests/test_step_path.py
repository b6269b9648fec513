"""The trusted per-step path (api._step_*): Trainer and CharRNN.sample check the
parameters once and each batch every step, with the same numbers as the public path."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastrnn
from fastrnn import _validate, api

from cases import ALL_BACKENDS

CORPUS = "the quick brown fox jumps over the lazy dog. " * 40


def _count_param_checks(monkeypatch):
    calls = []
    real = _validate.check_params

    def counting(params):
        calls.append(1)
        return real(params)

    monkeypatch.setattr(_validate, "check_params", counting)
    return calls


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_step_path_equals_the_public_function(backend):
    rng = np.random.default_rng(0)
    params = fastrnn.init_params(11, 7, 11, dtype=np.float64, seed=1)
    x, y = rng.integers(0, 11, (6, 3)), rng.integers(0, 11, (6, 3))
    h0 = rng.standard_normal((3, 7)) * 0.3
    loss, g, h_last = fastrnn.loss_and_grads(params, x, y, h0=h0, params_only=True, backend=backend)
    p, same = api._checked_params(params)
    assert same
    loss2, g2, h_last2 = api._step_loss_and_grads(p, x, y, h0, backend)
    assert loss == loss2 and np.array_equal(h_last, h_last2)
    for a, b in zip(g, g2):
        assert (a is None and b is None) or np.array_equal(a, b)
    P, hl = fastrnn.predict_proba(params, x[:, 0], h0=h0[0], backend=backend)
    P2, hl2 = api._step_probs(p, x[:, 0], h0[0], backend)
    assert np.array_equal(P, P2) and np.array_equal(hl, hl2)


def test_step_path_still_checks_the_batch():
    p, _ = api._checked_params(fastrnn.init_params(5, 4, 5, seed=0))
    ok = np.zeros((3, 2), dtype=int)
    h0 = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"inputs holds token id 5, outside \[0, d=5\)"):
        api._step_loss_and_grads(p, ok + 5, ok, h0)
    with pytest.raises(ValueError, match=r"targets holds class -1"):
        api._step_loss_and_grads(p, ok, ok - 1, h0)
    with pytest.raises(ValueError, match=r"h0 must have shape \(n=2, h=4\)"):
        api._step_loss_and_grads(p, ok, ok, np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="h0 has dtype float64 but the parameters are float32"):
        api._step_probs(p, ok[:, 0], np.zeros(4))
    with pytest.raises(ValueError, match="h0 contains NaN or Inf"):
        api._step_probs(p, ok[:, 0], np.full(4, np.nan, np.float32))


def _general_batch_check(x, y, h0, d, h, v, dtype):
    xs, layout = _validate.check_inputs(x, d, dtype, False)
    return xs, _validate.check_targets(y, layout, v), _validate.check_h0(h0, layout, h, dtype), layout


_IDS = np.array([[0, 4], [2, 3], [1, 0]])  # (T, n) = (3, 2), d = v = 5
_H0 = np.zeros((2, 4), np.float32)


@pytest.mark.parametrize(
    "x, y, h0",
    [
        (_IDS, _IDS, _H0),  # the fast case
        (_IDS, _IDS, None),
        (_IDS.astype(np.int32), _IDS, _H0),  # converted by the general checks
        (_IDS, _IDS.astype(np.uint8), _H0),
        (np.asfortranarray(np.tile(_IDS, (1, 2))), np.tile(_IDS, (1, 2)), np.zeros((4, 4), np.float32)),
        (_IDS[:, :1], _IDS[:, :1], _H0[:1]),
        (_IDS.tolist(), _IDS, _H0),
        (_IDS[:, 0], _IDS[:, 0], _H0[0]),  # one sequence
        (_IDS + 1, _IDS, _H0),  # id 5 = d
        (_IDS - 1, _IDS, _H0),  # id -1
        (_IDS, _IDS + 1, _H0),  # class 5 = v
        (_IDS, _IDS - 4, _H0),
        (_IDS, _IDS[:2], _H0),
        (_IDS, _IDS, _H0[:1]),
        (_IDS, _IDS, _H0.astype(np.float64)),
        (_IDS, _IDS, np.full((2, 4), np.inf, np.float32)),
        (_IDS, _IDS, np.full((2, 4), np.nan, np.float32)),
        (_IDS[:0], _IDS[:0], _H0),
        (_IDS.astype(float), _IDS, _H0),
    ],
)
def test_the_step_batch_check_returns_and_raises_what_the_general_checks_do(x, y, h0):
    args = (5, 4, 5, np.dtype(np.float32))
    try:
        want = _general_batch_check(x, y, h0, *args)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            _validate.check_step_batch(x, y, h0, *args)
        return
    got = _validate.check_step_batch(x, y, h0, *args)
    for a, b in zip(got[:3], want[:3]):
        assert a.dtype == b.dtype and a.flags.c_contiguous and np.array_equal(a, b)
    assert got[3] == want[3]


def test_trainer_checks_the_parameters_once_and_again_when_they_are_replaced(monkeypatch):
    vocab = fastrnn.Vocab.from_text(CORPUS)
    model = fastrnn.CharRNN(vocab, 16, seed=0)
    trainer = fastrnn.Trainer(model, vocab.encode(CORPUS), seq_len=8, batch=4)
    calls = _count_param_checks(monkeypatch)
    trainer.run(6, progress=False)
    assert len(calls) == 1
    bad = model.params._replace(W=np.full_like(model.params.W, np.nan))
    model.params = bad
    with pytest.raises(ValueError, match="params.W contains NaN or Inf"):
        trainer.step()


def test_sample_checks_the_parameters_once_and_draws_as_rng_choice_did(monkeypatch):
    vocab = fastrnn.Vocab.from_text(CORPUS)
    model = fastrnn.CharRNN(vocab, 16, seed=2)
    calls = _count_param_checks(monkeypatch)
    text = model.sample(60, prime="the ", temperature=0.7, top_k=5, seed=5)
    assert len(calls) == 1
    # the sampler as it was: the public function every character, rng.choice to draw
    rng = np.random.default_rng(5)
    P, h = fastrnn.predict_proba(model.params, vocab.encode("the "), h0=np.zeros(16, np.float32))
    out = []
    for _ in range(60):
        logits = np.log(np.maximum(P[-1].astype(np.float64), 1e-300)) / 0.7
        cut = np.partition(logits, -5)[-5]
        logits = np.where(logits >= cut, logits, -np.inf)
        w = np.exp(logits - logits.max())
        out.append(int(rng.choice(len(w), p=w / w.sum())))
        P, h = fastrnn.predict_proba(model.params, np.array([out[-1]]), h0=h)
    assert text == "the " + vocab.decode(out)


def test_parameters_that_checking_copies_take_the_checked_path_every_step():
    """A Fortran-ordered W is copied by the check, so the trainer cannot trust a
    copy the optimizer never updates: it checks every step and trains the same."""
    vocab = fastrnn.Vocab.from_text(CORPUS)
    runs = []
    for fortran in (False, True):
        model = fastrnn.CharRNN(vocab, 16, seed=0, dtype=np.float64)
        if fortran:
            model.params = model.params._replace(W=np.asfortranarray(model.params.W))
        trainer = fastrnn.Trainer(model, vocab.encode(CORPUS), seq_len=8, batch=4)
        trainer.run(5, progress=False)
        assert (trainer._checked is None) == fortran
        runs.append(model.params)
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
