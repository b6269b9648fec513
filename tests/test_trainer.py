"""The Trainer under faults and bad arguments (issue 12, items 1, 4, 5, 9, 11, 12, 13)."""

import numpy as np
import pytest

import fastrnn
from fastrnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastrnn.data import Vocab

CORPUS = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def vocab():
    return Vocab.from_text(CORPUS)


@pytest.fixture(scope="module")
def ids(vocab):
    return vocab.encode(CORPUS)


def _trainer(vocab, ids, dtype=np.float32, **kw):
    kw = {"seq_len": 10, "batch": 2, **kw}
    return fastrnn.Trainer(fastrnn.CharRNN(vocab, 8, dtype=dtype, seed=0), ids, **kw)


# -- item 1: a diverged update is never saved ---------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_a_diverging_last_step_raises_and_keeps_the_good_checkpoint(vocab, ids, tmp_path):
    path = tmp_path / "c.npz"
    good = _trainer(vocab, ids)
    good.run(3, progress=False, checkpoint=path)
    before = path.read_bytes()
    tr = _trainer(vocab, ids, optimizer="sgd", lr=0.1)
    tr.optimizer.lr = 1e39  # finite as a Python float, inf in float32 (the constructor refuses it)
    with pytest.raises(fastrnn.TrainingDiverged, match="update at step 1 made params.U NaN or Inf.*no checkpoint was written"):
        tr.run(1, progress=False, checkpoint=path)  # the divergence is in the last step
    assert path.read_bytes() == before
    assert load_checkpoint(path)[1]["state"]["step"] == 3
    with pytest.raises(fastrnn.TrainingDiverged, match="refusing to save"):
        tr.save(path)
    with pytest.raises(fastrnn.TrainingDiverged, match="NaN or Inf"):
        tr.step()


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_after_a_checkpoint_names_it(vocab, ids, tmp_path):
    path = tmp_path / "c.npz"
    tr = _trainer(vocab, ids, optimizer="sgd", lr=0.1)
    tr.run(4, progress=False, checkpoint=path, checkpoint_every=2)
    tr.optimizer.lr = 1e39
    with pytest.raises(fastrnn.TrainingDiverged, match=r"step 5 .*the last good checkpoint is .*c\.npz \(step 4\)"):
        tr.run(3, progress=False, checkpoint=path, checkpoint_every=2)
    resumed = fastrnn.Trainer.resume(path, ids)
    assert resumed.step_count == 4
    resumed.optimizer.lr = 1e39
    with pytest.raises(fastrnn.TrainingDiverged, match=r"the last good checkpoint is .*c\.npz \(step 4\)"):
        resumed.run(1, progress=False)  # the file it resumed from is a good checkpoint


def test_save_checkpoint_never_writes_non_finite_parameters(vocab, tmp_path):
    model = fastrnn.CharRNN(vocab, 4, seed=0)
    model.params.W[1, 1] = np.inf
    with pytest.raises(CheckpointError, match="refusing to write params.W"):
        save_checkpoint(tmp_path / "m.npz", model)
    assert list(tmp_path.iterdir()) == []


def test_nan_gradients_raise_before_any_update(vocab, ids):
    tr = _trainer(vocab, ids, clip=None)
    original = tr.model.loss_and_grads

    def poisoned(x, y, h0=None, reduction="mean"):
        loss, g, h = original(x, y, h0=h0, reduction=reduction)
        g.b[0] = np.nan
        return loss, g, h

    tr.model.loss_and_grads = poisoned
    before = [p.copy() for p in tr.model.params]
    with pytest.raises(fastrnn.TrainingDiverged, match="grads.b contains NaN or Inf at step 1"):
        tr.step()
    for a, b in zip(before, tr.model.params):
        np.testing.assert_array_equal(a, b)
    assert tr.step_count == 0 and tr.batcher.position == 0


# -- item 2: the Trainer validates its hyperparameters --------------------------------


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"clip": -1}, "clip must be a positive number, got -1"),
        ({"clip_norm": -1.0}, "clip_norm must be a positive number"),
        ({"clip_norm": float("nan")}, "clip_norm must be a positive number"),
        ({"lr": float("inf")}, "lr must be a positive number"),
        ({"optimizer": "adam", "optimizer_args": {"betas": (1.0, 0.999)}}, r"beta1 must be a number in \[0, 1\)"),
        ({"optimizer": "rmsprop", "optimizer_args": {"rho": 1.5}}, r"rho must be a number in \[0, 1\)"),
        ({"optimizer": "adagrad", "optimizer_args": {"eps": -1e-8}}, "eps must be a positive number"),
        ({"seq_len": 2.5}, "seq_len must be a positive integer"),
        ({"batch": 0}, "batch must be a positive integer"),
        ({"reduction": "avg"}, "reduction must be 'mean' or 'sum'"),
    ],
)
def test_trainer_refuses_bad_hyperparameters(vocab, ids, kw, message):
    with pytest.raises(ValueError, match=message):
        _trainer(vocab, ids, **kw)


# -- item 4: arguments and paths are checked before the first step ---------------------


@pytest.mark.parametrize(
    "val, error, message",
    [
        (np.array([0, 1, 99]), ValueError, r"val_ids must hold ids in \[0, 28\)"),
        (np.array([0.0, 1.0]), TypeError, "val_ids must be an array of integer token ids"),
        (np.array([1]), ValueError, "val_ids needs at least 2 tokens"),
        (np.zeros((2, 3), int), ValueError, "val_ids must be 1-D"),
    ],
)
def test_bad_val_ids_are_refused_at_construction(vocab, ids, val, error, message):
    assert len(vocab) == 28
    with pytest.raises(error, match=message):
        _trainer(vocab, ids, val_ids=val)


@pytest.mark.parametrize("where", ["missing/c.npz", "."])
def test_a_bad_checkpoint_path_is_refused_before_the_first_step(vocab, ids, tmp_path, where):
    tr = _trainer(vocab, ids)
    with pytest.raises(ValueError, match="does not exist|is a directory"):
        tr.run(5, progress=False, checkpoint=tmp_path / where)
    assert tr.step_count == 0


# -- item 5: Ctrl-C loses nothing ----------------------------------------------------------


def _stop_at(step, exc=KeyboardInterrupt):
    def callback(trainer, loss):
        if trainer.step_count == step:
            raise exc()

    return callback


def test_an_interrupt_saves_the_state_and_resume_is_bit_exact(vocab, ids, tmp_path):
    one = _trainer(vocab, ids)
    one.run(12, progress=False)
    path = tmp_path / "c.npz"
    two = _trainer(vocab, ids)
    with pytest.raises(fastrnn.TrainingInterrupted, match=r"interrupted after step 7; the state is saved in .*c\.npz") as info:
        two.run(12, progress=False, checkpoint=path, checkpoint_every=5, callbacks=[_stop_at(7)])
    assert info.value.step == 7 and info.value.checkpoint == path
    assert isinstance(info.value, KeyboardInterrupt)
    resumed = fastrnn.Trainer.resume(path, ids)
    assert resumed.step_count == 7
    resumed.run(5, progress=False)
    for a, b in zip(resumed.model.params, one.model.params):
        np.testing.assert_array_equal(a, b)
    assert resumed.history.loss == one.history.loss


@pytest.mark.parametrize("raised", [KeyboardInterrupt, "numba"])
def test_an_interrupt_inside_the_kernel_call_keeps_the_step_retakeable(vocab, ids, tmp_path, raised):
    one = _trainer(vocab, ids)
    one.run(8, progress=False)
    two = _trainer(vocab, ids)
    original = two.model.loss_and_grads
    calls = []

    def interrupted(x, y, h0=None, reduction="mean"):
        calls.append(1)
        if len(calls) == 5:
            if raised == "numba":  # what a Ctrl-C inside a compiled function turns into
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt:
                    raise SystemError("CPUDispatcher(...) returned a result with an exception set")
            raise KeyboardInterrupt
        return original(x, y, h0=h0, reduction=reduction)

    two.model.loss_and_grads = interrupted
    path = tmp_path / "c.npz"
    with pytest.raises(fastrnn.TrainingInterrupted, match="after step 4"):
        two.run(8, progress=False, checkpoint=path)
    resumed = fastrnn.Trainer.resume(path, ids)
    resumed.run(4, progress=False)
    for a, b in zip(resumed.model.params, one.model.params):
        np.testing.assert_array_equal(a, b)


def test_an_interrupt_without_a_checkpoint_path_says_nothing_was_saved(vocab, ids):
    tr = _trainer(vocab, ids)
    with pytest.raises(fastrnn.TrainingInterrupted, match="after step 3; no checkpoint was written") as info:
        tr.run(10, progress=False, callbacks=[_stop_at(3)])
    assert info.value.checkpoint is None


# -- item 11: min-char-rnn reproduced -------------------------------------------------------


def _min_char_rnn(data, char_to_ix, Wxh, Whh, Why, bh, by, seq_length, steps, learning_rate=1e-1):
    """Karpathy's min-char-rnn training loop (the gist), verbatim but for the step count."""
    vocab_size, hidden_size = len(char_to_ix), Whh.shape[0]

    def lossFun(inputs, targets, hprev):
        xs, hs, ys, ps = {}, {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0
        for t in range(len(inputs)):
            xs[t] = np.zeros((vocab_size, 1))  # encode in 1-of-k representation
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)  # hidden state
            ys[t] = np.dot(Why, hs[t]) + by  # unnormalized log probabilities for next chars
            ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))  # probabilities for next chars
            loss += -np.log(ps[t][targets[t], 0])  # softmax (cross-entropy loss)
        dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
        dbh, dby = np.zeros_like(bh), np.zeros_like(by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1  # backprop into y
            dWhy += np.dot(dy, hs[t].T)
            dby += dy
            dh = np.dot(Why.T, dy) + dhnext  # backprop into h
            dhraw = (1 - hs[t] * hs[t]) * dh  # backprop through tanh nonlinearity
            dbh += dhraw
            dWxh += np.dot(dhraw, xs[t].T)
            dWhh += np.dot(dhraw, hs[t - 1].T)
            dhnext = np.dot(Whh.T, dhraw)
        for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
            np.clip(dparam, -5, 5, out=dparam)  # clip to mitigate exploding gradients
        return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]

    n, p = 0, 0
    mWxh, mWhh, mWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    mbh, mby = np.zeros_like(bh), np.zeros_like(by)  # memory variables for Adagrad
    losses = []
    while n < steps:
        if p + seq_length + 1 >= len(data) or n == 0:
            hprev = np.zeros((hidden_size, 1))  # reset RNN memory
            p = 0  # go from start of data
        inputs = [char_to_ix[ch] for ch in data[p : p + seq_length]]
        targets = [char_to_ix[ch] for ch in data[p + 1 : p + seq_length + 1]]
        loss, dWxh, dWhh, dWhy, dbh, dby, hprev = lossFun(inputs, targets, hprev)
        losses.append(loss)
        for param, dparam, mem in zip([Wxh, Whh, Why, bh, by], [dWxh, dWhh, dWhy, dbh, dby], [mWxh, mWhh, mWhy, mbh, mby]):
            mem += dparam * dparam
            param += -learning_rate * dparam / np.sqrt(mem + 1e-8)  # adagrad update
        p += seq_length  # move data pointer
        n += 1
    return losses, hprev


@pytest.mark.parametrize("backend", fastrnn.backends())
def test_summed_loss_adagrad_and_clip_5_reproduce_min_char_rnn(backend):
    data = "hello world, this is min-char-rnn. " * 6
    T, h, steps = 25, 20, 40  # 40 steps wrap the data pointer 4 times
    assert (len(data) - 1) % T != 0  # where the two wrap rules agree (see fastrnn.data.Batcher)
    vocab = Vocab.from_text(data)
    rng = np.random.default_rng(0)
    Wxh, Whh = rng.standard_normal((h, len(vocab))) * 0.01, rng.standard_normal((h, h)) * 0.01
    Why = rng.standard_normal((len(vocab), h)) * 0.01
    bh, by = np.zeros((h, 1)), np.zeros((len(vocab), 1))
    # min-char-rnn's column vectors are our rows: U = Wxhᵀ, W = Whhᵀ, V = Whyᵀ, b = bh, c = by
    params = fastrnn.Params(Wxh.T.copy(), Whh.T.copy(), Why.T.copy(), bh[:, 0].copy(), by[:, 0].copy())
    model = fastrnn.CharRNN(vocab, params=params, backend=backend)
    tr = fastrnn.Trainer(model, vocab.encode(data), seq_len=T, batch=1, optimizer="adagrad", lr=0.1, clip=5.0, reduction="sum")
    tr.run(steps, progress=False)
    losses, hprev = _min_char_rnn(data, {ch: i for i, ch in enumerate(vocab.chars)}, Wxh, Whh, Why, bh, by, T, steps)
    # Not bit for bit: min-char-rnn's softmax skips the max shift and its sums run in
    # another order, so the two differ by rounding (measured: at most 1e-12 after 40 steps).
    for ours, theirs in zip(model.params, [Wxh.T, Whh.T, Why.T, bh[:, 0], by[:, 0]]):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-11)
    np.testing.assert_allclose(tr.history.loss, losses, rtol=1e-12)
    np.testing.assert_allclose(tr.h[0], hprev[:, 0], rtol=0, atol=1e-11)


# -- item 12: the model and trainer refuse what they cannot use --------------------------------


def test_charrnn_takes_dtype_and_sizes_from_params(vocab, ids):
    params = fastrnn.init_params(len(vocab), 6, len(vocab), dtype=np.float64, seed=0)
    model = fastrnn.CharRNN(vocab, params=params)
    assert model.dtype == np.float64 and model.hidden == 6
    fastrnn.Trainer(model, ids, seq_len=10, batch=2).step()  # the state is float64 too
    with pytest.raises(ValueError, match="params are for d=28 inputs and v=28 outputs, but the vocabulary has 3 characters"):
        fastrnn.CharRNN(Vocab("abc"), params=params)
    with pytest.raises(ValueError, match="hidden=7 but the params have h=6"):
        fastrnn.CharRNN(vocab, 7, params=params)
    with pytest.raises(TypeError, match="dtype=float32 but the params are float64"):
        fastrnn.CharRNN(vocab, dtype=np.float32, params=params)


@pytest.mark.parametrize("hidden", [2.7, 0, -3, True, "8"])
def test_hidden_must_be_a_positive_integer(vocab, hidden):
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        fastrnn.CharRNN(vocab, hidden)


def test_clear_errors_for_misused_calls(vocab, ids):
    model = fastrnn.CharRNN(vocab, 8, seed=0)
    with pytest.raises(TypeError, match=r"train_ids must be an array of integer token ids, got text.*vocab\.encode"):
        fastrnn.Trainer(model, "the quick brown fox")
    tr = fastrnn.Trainer(model, ids, seq_len=10, batch=2)
    with pytest.raises(ValueError, match="validate\\(\\) needs held-out tokens: pass val_ids="):
        tr.validate()
    with pytest.raises(ValueError, match="steps must be a non-negative integer, got -5"):
        tr.run(-5, progress=False)
    with pytest.raises(ValueError, match="length must be a non-negative integer, got -1"):
        model.sample(-1)
    assert model.sample(0, prime="the") == "the"


# -- item 13: the smoothed loss is bias-corrected --------------------------------------------


def test_smoothed_loss_is_a_bias_corrected_average(vocab, ids):
    tr = _trainer(vocab, ids)
    tr.run(5, progress=False)
    losses = np.array(tr.history.loss)
    for k in range(1, 6):
        w = 0.01 * 0.99 ** np.arange(k - 1, -1, -1)  # the weights an EMA from 0 gives, then /(1 − 0.99ᵏ)
        assert tr.history.smooth_loss[k - 1] == pytest.approx((w @ losses[:k]) / (1 - 0.99**k), rel=1e-12)


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"optimizer": ["adam"]}, ValueError, r"optimizer must be one of .*got \['adam'\]"),
        ({"optimizer_args": [1, 2]}, TypeError, r"optimizer_args must be a dict .*got list"),
        ({"optimizer_args": "lr"}, TypeError, r"optimizer_args must be a dict .*got str"),
        ({"comm": 3}, TypeError, r"comm must be an MPI communicator .*got int"),
        ({"reduction": np.array(["mean", "sum"])}, ValueError, r"reduction must be 'mean' or 'sum'"),
    ],
)
def test_trainer_names_bad_arguments(vocab, ids, kw, error, message):
    with pytest.raises(error, match=message):
        _trainer(vocab, ids, **kw)


def test_run_evaluate_batcher_and_decode_name_bad_arguments(vocab, ids, tmp_path):
    """These failed late or from inside: run(callbacks=None) after its first step,
    evaluate(seq_len=0) in range(), Batcher(ids, 2.5, 5) on a slice; decode([-1]) gave the last character."""
    from fastrnn.data import Batcher
    from fastrnn.train import evaluate

    tr = _trainer(vocab, ids)
    with pytest.raises(TypeError, match="callbacks must be a sequence of callables, got NoneType"):
        tr.run(1, progress=False, callbacks=None)
    with pytest.raises(TypeError, match="callbacks must be a sequence of callables, got one int"):
        tr.run(1, progress=False, callbacks=[3])
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        tr.run(1, progress=False, checkpoint=123)
    assert tr.step_count == 0  # refused before the first step
    for seq_len in (0, -1, 2.5):
        with pytest.raises(ValueError, match="seq_len must be a positive integer"):
            evaluate(tr.model, ids, seq_len=seq_len)
    with pytest.raises(TypeError, match="batch must be an integer, got 2.5"):
        Batcher(ids, 2.5, 5)
    for bad in ([-1], [len(vocab.chars)], [0.5]):
        with pytest.raises(ValueError, match=r"ids must be integers in \[0, "):
            vocab.decode(bad)
    assert vocab.decode([]) == ""


def test_save_to_a_directory_names_it(vocab, ids, tmp_path):
    (tmp_path / "d").mkdir()
    tr = _trainer(vocab, ids)
    with pytest.raises(ValueError, match="is a directory"):
        tr.save(tmp_path / "d")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and list((tmp_path / "d").iterdir()) == []
