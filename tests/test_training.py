"""The training toolkit: optimizers, clipping, batching, sampling, checkpoints, the loop, the CLI."""

import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import optim
from fastrnn.data import Batcher, Vocab, default_corpus
from fastrnn.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint

CORPUS = "the quick brown fox jumps over the lazy dog. " * 40


def _scalar_params(value=1.0, dtype=np.float64):
    return fastrnn.Params(*(np.full(s, value, dtype) for s in [(1, 1), (1, 1), (1, 1), (1,), (1,)]))


def _grads(value, dtype=np.float64):
    p = _scalar_params(value, dtype)
    return fastrnn.Grads(*p, h0=None, X=None, A=None)


# -- optimizers against hand-computed updates --------------------------------


def test_sgd_plain_momentum_nesterov():
    p = _scalar_params(1.0)
    optim.SGD(p, lr=0.1).step(_grads(2.0))
    assert p.U[0, 0] == pytest.approx(1 - 0.1 * 2)
    p = _scalar_params(1.0)
    o = optim.SGD(p, lr=0.1, momentum=0.9)
    o.step(_grads(2.0))  # v = 2, p = 1 - 0.2
    o.step(_grads(1.0))  # v = 0.9·2 + 1 = 2.8, p = 0.8 - 0.28
    assert p.W[0, 0] == pytest.approx(0.52)
    p = _scalar_params(1.0)
    o = optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)
    o.step(_grads(2.0))  # v = 2, p = 1 - 0.1·(2 + 0.9·2) = 0.62
    o.step(_grads(1.0))  # v = 2.8, p = 0.62 - 0.1·(1 + 0.9·2.8) = 0.268
    assert p.b[0] == pytest.approx(0.268)


def test_adagrad():
    p = _scalar_params(1.0)
    o = optim.Adagrad(p, lr=0.1, eps=1e-8)
    o.step(_grads(2.0))  # m = 4, p = 1 - 0.1·2/sqrt(4+1e-8)
    o.step(_grads(1.0))  # m = 5
    expected = 1 - 0.1 * 2 / np.sqrt(4 + 1e-8) - 0.1 * 1 / np.sqrt(5 + 1e-8)
    assert p.V[0, 0] == pytest.approx(expected, rel=1e-14)


def test_rmsprop():
    p = _scalar_params(1.0)
    o = optim.RMSprop(p, lr=0.01, rho=0.9, eps=1e-8)
    o.step(_grads(2.0))  # m = 0.4
    o.step(_grads(1.0))  # m = 0.36 + 0.1 = 0.46
    expected = 1 - 0.01 * 2 / (np.sqrt(0.4) + 1e-8) - 0.01 * 1 / (np.sqrt(0.46) + 1e-8)
    assert p.c[0] == pytest.approx(expected, rel=1e-14)


def test_adam():
    p = _scalar_params(1.0)
    o = optim.Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    x = 1.0
    m = s = 0.0
    for t, g in enumerate([2.0, -1.0, 0.5], start=1):
        o.step(_grads(g))
        m = 0.9 * m + 0.1 * g
        s = 0.999 * s + 0.001 * g * g
        x -= 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
    assert p.U[0, 0] == pytest.approx(x, rel=1e-14)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_optimizers_keep_float32(name):
    p = _scalar_params(1.0, np.float32)
    kw = {"momentum": 0.9} if name == "sgd" else {}
    o = optim.OPTIMIZERS[name](p, lr=0.1, **kw)
    o.step(_grads(2.0, np.float32))
    assert all(a.dtype == np.float32 for a in p)
    assert all(a.dtype == np.float32 for s in o.state.values() for a in s)
    assert p.U[0, 0] < 1


def test_optimizer_state_round_trip():
    p = _scalar_params(1.0)
    o = optim.Adam(p, lr=0.01)
    o.step(_grads(2.0))
    q = _scalar_params(1.0)
    o2 = optim.Adam(q, lr=0.5)
    o2.load_state_dict(o.state_dict())
    assert o2.t == 1 and o2.lr == 0.01
    np.testing.assert_array_equal(o2.state["m"][0], o.state["m"][0])
    with pytest.raises(ValueError, match="optimizer state m.U"):
        o2.load_state_dict({**o.state_dict(), "m.U": np.zeros((2, 2))})


def test_clip_by_value_and_global_norm():
    g = fastrnn.Grads(np.array([[7.0]]), np.array([[-9.0]]), np.array([[0.5]]), np.array([3.0]), np.array([-6.0]), None, None, None)
    optim.clip_by_value(g, 5)
    assert [float(a.ravel()[0]) for a in g[:5]] == [5.0, -5.0, 0.5, 3.0, -5.0]
    g = fastrnn.Grads(np.array([[3.0]]), np.array([[4.0]]), np.zeros((1, 1)), np.zeros(1), np.zeros(1), None, None, None)
    norm = optim.clip_by_global_norm(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert g.U[0, 0] == pytest.approx(0.6) and g.W[0, 0] == pytest.approx(0.8)
    assert optim.clip_by_global_norm(g, 10.0) == pytest.approx(1.0) and g.U[0, 0] == pytest.approx(0.6)


# -- data ------------------------------------------------------------------------


def test_vocab_round_trip():
    v = Vocab.from_text("hello world")
    assert v.chars == " dehlorw" and len(v) == 8
    assert v.decode(v.encode("hello")) == "hello"
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        v.encode("zoo")


def test_default_corpus_is_python_source():
    text = default_corpus()
    assert len(text) > 100_000 and "def " in text


def test_batcher_windows_and_reset():
    ids = np.arange(23)
    b = Batcher(ids, n=2, T=3)  # streams 0..10 and 11..21, 3 windows each
    x, y, reset = b.next()
    assert reset
    np.testing.assert_array_equal(x, [[0, 11], [1, 12], [2, 13]])
    np.testing.assert_array_equal(y, [[1, 12], [2, 13], [3, 14]])
    x, y, reset = b.next()
    assert not reset
    np.testing.assert_array_equal(x[:, 0], [3, 4, 5])  # the stream continues where it stopped
    b.next()
    x, y, reset = b.next()  # (11 - 1) // 3 = 3 windows, then start over
    assert reset and x[0, 0] == 0
    with pytest.raises(ValueError, match="too short"):
        Batcher(np.arange(5), n=2, T=3)


def test_state_is_carried_between_windows_and_reset_at_restart():
    text = CORPUS[:200]
    vocab = Vocab.from_text(text)
    model = fastrnn.CharRNN(vocab, 8, dtype=np.float64, seed=0)
    tr = fastrnn.Trainer(model, vocab.encode(text), seq_len=5, batch=2, optimizer="sgd", lr=1e-9)
    seen = []
    original = model.loss_and_grads

    def spy(x, y, h0=None, reduction="mean"):
        seen.append(h0.copy())
        return original(x, y, h0=h0, reduction=reduction)

    model.loss_and_grads = spy
    loss = tr.step()
    assert not seen[0].any()
    h_after_first = tr.h.copy()
    tr.step()
    np.testing.assert_array_equal(seen[1], h_after_first)  # carried
    for _ in range(tr.batcher.windows - 2):
        tr.step()
    tr.step()  # the streams restart here
    assert not seen[-1].any()
    assert np.isfinite(loss)


# -- sampling -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """One model trained once for the module's sampling and checkpoint tests (read-only)."""
    vocab = Vocab.from_text(CORPUS)
    model = fastrnn.CharRNN(vocab, 32, seed=1)
    tr = fastrnn.Trainer(model, vocab.encode(CORPUS), seq_len=20, batch=4, lr=1e-2)
    tr.run(60, progress=False)
    return model


def test_sampling_is_seeded_and_respects_top_k_and_prime(trained):
    model = trained
    a = model.sample(80, seed=3, temperature=0.9)
    assert a == model.sample(80, seed=3, temperature=0.9)
    assert a != model.sample(80, seed=4, temperature=0.9)
    assert len(a) == 80  # length characters: the start it gives itself (here the first character) is not returned
    greedy = model.sample(40, prime="the ", top_k=1, seed=0)
    assert greedy.startswith("the ") and greedy == model.sample(40, prime="the ", top_k=1, seed=99)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        model.sample(5, temperature=0)


# -- checkpoints ----------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, trained):
    model = trained
    path = tmp_path / "m.npz"
    save_checkpoint(path, model)
    loaded = load_model(path)
    assert loaded.vocab == model.vocab and loaded.hidden == 32 and loaded.dtype == np.float32
    for a, b in zip(loaded.params, model.params):
        np.testing.assert_array_equal(a, b)
    assert loaded.sample(30, seed=1) == model.sample(30, seed=1)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left behind


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adagrad", "rmsprop"])
def test_resume_is_bit_exact(tmp_path, optimizer):
    vocab = Vocab.from_text(CORPUS)
    ids = vocab.encode(CORPUS)
    kw = dict(seq_len=16, batch=3, optimizer=optimizer, lr=1e-2)
    args = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else None
    one = fastrnn.Trainer(fastrnn.CharRNN(vocab, 24, seed=5), ids, optimizer_args=args, **kw)
    one.run(25, progress=False)  # 25 > windows per epoch: the restart is crossed

    two = fastrnn.Trainer(fastrnn.CharRNN(vocab, 24, seed=5), ids, optimizer_args=args, **kw)
    two.run(11, progress=False, checkpoint=tmp_path / "c.npz")
    resumed = fastrnn.Trainer.resume(tmp_path / "c.npz", ids)
    resumed.run(14, progress=False)
    for a, b in zip(resumed.model.params, one.model.params):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed.h, one.h)
    assert resumed.history.loss == one.history.loss
    assert resumed.step_count == 25


def test_resume_refuses_another_corpus(tmp_path):
    vocab = Vocab.from_text(CORPUS)
    tr = fastrnn.Trainer(fastrnn.CharRNN(vocab, 8, seed=0), vocab.encode(CORPUS), seq_len=10, batch=2)
    tr.run(2, progress=False, checkpoint=tmp_path / "c.npz")
    with pytest.raises(CheckpointError, match="another corpus"):
        fastrnn.Trainer.resume(tmp_path / "c.npz", vocab.encode(CORPUS[::-1]))


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path, trained):
    model = trained
    good = tmp_path / "good.npz"
    save_checkpoint(good, model)
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable fastrnn checkpoint"):
        load_checkpoint(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.npz")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="no header"):
        load_checkpoint(tmp_path / "other.npz")
    with np.load(good) as z:
        arrays = dict(z)
    arrays["params.W"] = arrays["params.W"][:, :3]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"params\.W is float32\(32, 3\)"):
        load_checkpoint(tmp_path / "shape.npz")
    arrays["params.W"] = np.full((32, 32), np.nan, np.float32)
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(tmp_path / "nan.npz")


# -- the loop --------------------------------------------------------------------


def test_training_learns():
    """150 steps on a repetitive corpus take the loss from about log(v) to below a third of it."""
    vocab = Vocab.from_text(CORPUS)
    model = fastrnn.CharRNN(vocab, 64, seed=0)
    tr = fastrnn.Trainer(model, vocab.encode(CORPUS), seq_len=25, batch=8, lr=1e-2, val_ids=vocab.encode(CORPUS[:300]))
    history = tr.run(150, progress=False)
    first, last = np.mean(history.loss[:5]), np.mean(history.loss[-10:])
    assert first == pytest.approx(np.log(len(vocab)), rel=0.15)
    assert last < first / 3
    assert history.val_loss[-1] < first / 3


def test_callbacks_can_stop_training():
    vocab = Vocab.from_text(CORPUS)
    tr = fastrnn.Trainer(fastrnn.CharRNN(vocab, 8, seed=0), vocab.encode(CORPUS), seq_len=10, batch=2)
    tr.run(100, progress=False, callbacks=[lambda trainer, loss: trainer.step_count >= 7])
    assert tr.step_count == 7


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    vocab = Vocab.from_text(CORPUS)
    model = fastrnn.CharRNN(vocab, 8, dtype=np.float64, seed=0)
    tr = fastrnn.Trainer(model, vocab.encode(CORPUS), seq_len=10, batch=2, optimizer="sgd", lr=0.1)
    path = tmp_path / "c.npz"
    original = model.loss_and_grads

    def poisoned(x, y, h0=None, reduction="mean"):
        loss, g, h = original(x, y, h0=h0, reduction=reduction)
        return (float("nan") if tr.step_count == 6 else loss), g, h

    model.loss_and_grads = poisoned
    with pytest.raises(fastrnn.TrainingDiverged, match=r"loss became nan at step 7; the last good checkpoint is .*c\.npz"):
        tr.run(20, progress=False, checkpoint=path, checkpoint_every=5)
    resumed = fastrnn.Trainer.resume(path, vocab.encode(CORPUS))
    assert resumed.step_count == 5


# -- the command line -------------------------------------------------------------


@pytest.fixture
def cli_run(monkeypatch, capsys):
    """Run ``fastrnn ARGS`` in this process, from ``cwd``: (exit status, stdout, stderr)."""
    from fastrnn import cli

    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        try:
            status = cli.main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def test_cli_train_then_sample(tmp_path, cli_run):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    status, out, err = cli_run("train", str(corpus), "--steps", "40", "--hidden", "16", "--seq-len", "10", "--batch", "4",
                               "--out", "m.npz", "--quiet", "--sample-length", "50", cwd=tmp_path)
    assert status == 0, err
    assert "40 steps in" in out and "checkpoint written to m.npz" in out
    status, _, err = cli_run("train", str(corpus), "--steps", "10", "--out", "m.npz", "--resume", "--quiet",
                             "--sample-length", "0", cwd=tmp_path)
    assert status == 0, err
    args = ("sample", "m.npz", "--length", "60", "--seed", "1", "--prime", "the ")
    status, s1, err = cli_run(*args, cwd=tmp_path)
    assert status == 0, err
    assert cli_run(*args, cwd=tmp_path)[1] == s1
    assert s1.startswith("the ") and len(s1.rstrip("\n")) == 64


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.txt"], "missing.txt: no such file"),
        (["sample", "missing.npz"], "missing.npz: no such file"),
        (["sample", "junk.npz"], "not a readable fastrnn checkpoint"),
        (["train", "--steps", "0"], "expected a positive integer, got '0'"),
        (["train", "--lr", "-1"], "expected a positive number"),
        (["train", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, cli_run, args, message):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    status, _, err = cli_run(*args, cwd=tmp_path)
    assert status == 2
    assert message in err
    assert "Traceback" not in err


def test_cli_backends_lists_the_default_first_in_a_fresh_process(tmp_path):
    """The one subprocess test of the command line: `python -m fastrnn` starts and runs."""
    out = subprocess.run([sys.executable, "-m", "fastrnn", "backends"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == fastrnn.get_backend()


def test_sampling_limits_and_arguments(trained):
    """A tiny temperature once overflowed the logits (NaN weights, 20 copies of character 0):
    its limit is the greedy draw. Non-finite probabilities and bad arguments are named."""
    model = trained
    greedy = model.sample(30, prime="the ", top_k=1, seed=0)
    for t in (1e-300, 1e-310, 5e-324):
        assert model.sample(30, prime="the ", temperature=t, seed=1) == greedy
    assert len(model.sample(7)) == 7 and model.sample(0) == ""
    assert len(model.sample(7, rng=np.random.RandomState(0))) == 7  # anything with random() draws
    for kw, error, message in [
        ({"temperature": float("inf")}, ValueError, "temperature must be a positive finite number"),
        ({"temperature": "1"}, ValueError, "temperature must be a positive finite number"),
        ({"temperature": None}, ValueError, "temperature must be a positive finite number"),
        ({"top_k": 2.5}, ValueError, "top_k must be a positive integer"),
        ({"top_k": True}, ValueError, "top_k must be a positive integer"),
        ({"top_k": "3"}, ValueError, "top_k must be a positive integer"),
        ({"prime": ["a"]}, TypeError, "prime must be a str"),
        ({"rng": 42}, TypeError, r"rng must have a random\(\) method"),
        ({"seed": -1}, ValueError, "seed must be None or a non-negative integer"),
    ]:
        with pytest.raises(error, match=message):
            model.sample(5, **kw)
    V = model.params.V.copy()
    V[:] = np.finfo(V.dtype).max  # finite weights whose logits overflow
    huge = fastrnn.CharRNN(model.vocab, params=model.params._replace(V=V))
    with pytest.raises(ValueError, match="probabilities are not finite"), np.errstate(all="ignore"):
        huge.sample(5, seed=0)
