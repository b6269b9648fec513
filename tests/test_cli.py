"""`fastrnn train` / `fastrnn sample` under bad arguments and faults (issue 12, items 4-6, 9, 12-15).

In-process through ``cli.main(argv)``, except the Ctrl-C test, which needs a real process.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fastrnn import cli
from fastrnn.checkpoint import load_checkpoint

CORPUS = "the quick brown fox jumps over the lazy dog. " * 40
SMALL = ["--hidden", "8", "--seq-len", "10", "--batch", "4", "--quiet", "--sample-length", "0"]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(CORPUS)
    return "corpus.txt"


def run(capsys, *argv):
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, message):
    assert rc == 2
    lines = err.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in err
    if not lines[-1].startswith("fastrnn train: error:") and not lines[-1].startswith("fastrnn sample: error:"):
        assert len(lines) == 1  # our own errors are one line; argparse's come after its usage lines


# -- item 4: outputs and arguments are checked before the first step -------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "missing_dir/m.npz"], "the folder missing_dir does not exist"),
        (["--out", "."], "is a directory"),
        (["--plot", "missing_dir/x.png"], "--plot path missing_dir/x.png: the folder missing_dir does not exist"),
        (["--sample-length", "-1"], "expected a non-negative integer, got '-1'"),
    ],
)
def test_bad_outputs_fail_before_training(capsys, corpus, tmp_path, extra, message):
    rc, out, err = run(capsys, "train", corpus, "--steps", "5", *SMALL, *extra)
    assert_one_line_error(rc, err, message)
    assert "steps in" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


# -- item 6: resume says what it does and refuses conflicts; no silent overwrite ---------------


def test_resume_says_from_which_step_and_refuses_conflicting_flags(capsys, corpus):
    rc, out, err = run(capsys, "train", corpus, "--steps", "6", *SMALL)
    assert rc == 0, err
    rc, out, err = run(capsys, "train", corpus, "--steps", "3", "--resume", "--quiet", "--sample-length", "0")
    assert rc == 0, err
    assert "resuming model.npz from step 6" in out
    assert load_checkpoint("model.npz")[1]["state"]["step"] == 9
    same = ["--hidden", "8", "--seq-len", "10", "--batch", "4"]  # agreeing flags are fine
    rc, out, err = run(capsys, "train", corpus, "--steps", "1", "--resume", *same, "--quiet", "--sample-length", "0")
    assert rc == 0, err
    for flag, value, kept in [("--hidden", "16", "8"), ("--dtype", "float64", "float32"), ("--seq-len", "5", "10"),
                              ("--batch", "2", "4"), ("--optimizer", "sgd", "adam"), ("--lr", "0.1", "0.003")]:
        rc, out, err = run(capsys, "train", corpus, "--steps", "1", "--resume", flag, value, "--quiet")
        assert_one_line_error(rc, err, f"{flag} {value if flag != '--lr' else 0.1} conflicts with model.npz, which was trained with {flag} {kept}")
    assert load_checkpoint("model.npz")[1]["state"]["step"] == 10


def test_an_existing_checkpoint_is_not_overwritten_without_force(capsys, corpus, tmp_path):
    rc, _, err = run(capsys, "train", corpus, "--steps", "2", *SMALL)
    assert rc == 0, err
    before = (tmp_path / "model.npz").read_bytes()
    rc, out, err = run(capsys, "train", corpus, "--steps", "2", *SMALL)
    assert_one_line_error(rc, err, "model.npz exists: pass --resume to continue training it, or --force to replace it")
    assert (tmp_path / "model.npz").read_bytes() == before
    rc, out, err = run(capsys, "train", corpus, "--steps", "2", "--force", *SMALL)
    assert rc == 0, err
    assert "--force: model.npz will be replaced" in out
    rc, out, err = run(capsys, "train", corpus, "--resume", "--force", *SMALL)
    assert_one_line_error(rc, err, "give one of them")
    rc, out, err = run(capsys, "train", corpus, "--resume", "--out", "other.npz", "--quiet")
    assert_one_line_error(rc, err, "--resume: other.npz does not exist; nothing to resume")


# -- item 9: out of memory and a full disk are one line -------------------------------------------


def test_out_of_memory_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ab.txt").write_text("ab" * 100)
    rc, out, err = run(capsys, "train", "ab.txt", "--hidden", "1000000", "--quiet")
    assert_one_line_error(rc, err, "fastrnn: error: out of memory")
    assert "--hidden" in err


def test_a_full_disk_is_one_line(capsys, corpus, monkeypatch):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    rc, out, err = run(capsys, "train", corpus, "--steps", "2", *SMALL)
    assert_one_line_error(rc, err, "fastrnn: error: No space left on device")


# -- item 13: what the summary lines say ------------------------------------------------------------


def test_summary_names_the_baseline_and_how_many_steps_it_averaged(capsys, corpus):
    rc, out, err = run(capsys, "train", corpus, "--steps", "7", *SMALL)
    assert rc == 0, err
    v = len(set(CORPUS))
    assert f"ln(vocabulary) = {np.log(v):.3f} nats/char is the loss of a model that learned nothing" in out
    assert "unigram" not in out
    assert "(mean of the last 7 steps)" in out


# -- item 14: the CLI's default learning rate is the library's ------------------------------------


def test_cli_uses_the_library_default_learning_rate(capsys, corpus):
    from fastrnn.optim import DEFAULT_LR

    rc, out, err = run(capsys, "train", corpus, "--steps", "1", "--optimizer", "rmsprop", *SMALL)
    assert rc == 0, err
    assert f"rmsprop lr={DEFAULT_LR['rmsprop']:g}" in out
    _, extras = load_checkpoint("model.npz")
    assert extras["optimizer"].lr == DEFAULT_LR["rmsprop"]


# -- item 15: `fastrnn sample` blames the right flag ---------------------------------------------------


def test_sample_names_the_right_flag(capsys, corpus):
    rc, _, err = run(capsys, "train", corpus, "--steps", "2", *SMALL)
    assert rc == 0, err
    rc, out, err = run(capsys, "sample", "model.npz", "--seed", "-5")
    assert_one_line_error(rc, err, "argument --seed: expected a non-negative integer, got '-5'")
    assert "--prime" not in err.strip().splitlines()[-1]
    rc, out, err = run(capsys, "sample", "model.npz", "--prime", "Z")
    assert_one_line_error(rc, err, "--prime: character 'Z' is not in the vocabulary")


# -- item 5: Ctrl-C saves and says how to resume --------------------------------------------------


def test_ctrl_c_saves_a_checkpoint_and_prints_one_line(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS * 5)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "fastrnn", "train", "corpus.txt", "--steps", "1000000", "--hidden", "32",
            "--seq-len", "20", "--batch", "4", "--checkpoint-every", "1000000"]
    proc = subprocess.Popen(  # SIGINT as a terminal delivers it (a background shell may have set it to ignore)
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    err_parts = []
    reader = threading.Thread(target=lambda: err_parts.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True)
    try:
        reader.start()
        deadline = time.monotonic() + 120
        while "step/s" not in "".join(err_parts):  # the progress bar shows a rate: steps are running
            assert proc.poll() is None and time.monotonic() < deadline, "".join(err_parts)
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    err = "".join(err_parts)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "SystemError" not in err
    last = err.strip().split("\n")[-1].split("\r")[-1]
    assert "interrupted after step" in last and "resume with: fastrnn train corpus.txt --out model.npz --resume" in last
    step = int(last.split("interrupted after step ")[1].split(";")[0])
    assert step >= 1
    assert load_checkpoint(tmp_path / "model.npz")[1]["state"]["step"] == step


def test_outputs_that_would_overwrite_an_input_are_refused(capsys, corpus, tmp_path):
    rc, out, err = run(capsys, "train", corpus, "--steps", "2", *SMALL, "--out", corpus, "--force")
    assert_one_line_error(rc, err, "--out corpus.txt is the corpus: it would be overwritten")
    assert (tmp_path / corpus).read_text() == CORPUS
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / corpus)
    rc, out, err = run(capsys, "train", corpus, "--steps", "2", *SMALL, "--out", "link.txt", "--force")
    assert_one_line_error(rc, err, "is the corpus")


def test_plot_naming_the_corpus_or_the_checkpoint_is_refused_first(capsys, corpus, tmp_path):
    rc, out, err = run(capsys, "train", corpus, "--steps", "2", *SMALL, "--plot", corpus)
    assert_one_line_error(rc, err, "--plot corpus.txt is the corpus: it would be overwritten")
    rc, out, err = run(capsys, "train", corpus, "--steps", "2", *SMALL, "--plot", "m.npz", "--out", "m.npz")
    assert_one_line_error(rc, err, "--plot m.npz is --out: give them different names")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]
