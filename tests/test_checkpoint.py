"""Checkpoints: damaged and crafted files, leftovers, the module's place (issue 12, items 7-10)."""

import json
import os
import pathlib
import zipfile

import numpy as np
import pytest

import fastrnn
from fastrnn.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from fastrnn.data import Vocab

CORPUS = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A training checkpoint (Adam, 3 steps) and the tokens it was trained on."""
    vocab = Vocab.from_text(CORPUS)
    ids = vocab.encode(CORPUS)
    tr = fastrnn.Trainer(fastrnn.CharRNN(vocab, 6, seed=0), ids, seq_len=10, batch=2, optimizer="adam")
    path = tmp_path_factory.mktemp("good") / "good.npz"
    tr.run(3, progress=False, checkpoint=path)
    return path, ids


def _arrays(path):
    with zipfile.ZipFile(path) as z:
        out = {}
        for name in z.namelist():
            with z.open(name) as f:
                out[name[:-4]] = np.lib.format.read_array(f)
    return out


def _write(path, arrays, header=None):
    arrays = dict(arrays)
    if header is not None:
        arrays["header"] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    return path


def _header(arrays):
    return json.loads(str(arrays["header"]))


def _variant(good_path, tmp_path, edit_header=None, **replace):
    arrays = _arrays(good_path)
    header = _header(arrays)
    if edit_header:
        edit_header(header)
    arrays.update(replace)
    return _write(tmp_path / "bad.npz", arrays, header)


def _retyped(good_path, tmp_path, dtype):
    """A self-consistent file whose weights (and config) are of another dtype."""
    arrays = _arrays(good_path)
    header = _header(arrays)
    header["config"]["dtype"] = dtype
    for k in list(arrays):
        if k.startswith(("params.", "optim.m.", "optim.s.", "state.h")) and k != "state.history":
            arrays[k] = arrays[k].astype(dtype)
    return _write(tmp_path / "bad.npz", arrays, header)


def _patch_zip(src, dst, local_offset, central_offset, value, size=2):
    """Overwrite a field of every local and central-directory header."""
    data = bytearray(src.read_bytes())
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        start = 0
        while (i := data.find(signature, start)) >= 0:
            data[i + offset : i + offset + size] = value.to_bytes(size, "little")
            start = i + 4
    dst.write_bytes(bytes(data))
    return dst


def _set(key, value):
    def edit(header):
        target = header
        *path, last = key.split(".")
        for k in path:
            target = target[k]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return edit


# -- item 7: every damaged or crafted file ends in CheckpointError -------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda g, t: _write(t / "bad.npz", _arrays(g), header=[1, 2]), "the header is a JSON list, not an object"),
        (lambda g, t: _variant(g, t, _set("config.hidden", KeyError)), "config.hidden must be a positive integer, got None"),
        (lambda g, t: _variant(g, t, _set("vocab", 123)), "the vocabulary must be a string of characters, got int"),
        (lambda g, t: _variant(g, t, _set("config.hidden", 0)), "config.hidden must be a positive integer, got 0"),
        (lambda g, t: _variant(g, t, _set("config.dtype", "float16")), "config.dtype must be 'float32' or 'float64'"),
        (lambda g, t: _retyped(g, t, "float16"), "config.dtype must be 'float32' or 'float64', got 'float16'"),
        (lambda g, t: _retyped(g, t, "int64"), "config.dtype must be 'float32' or 'float64', got 'int64'"),
        (lambda g, t: _variant(g, t, **{"params.W": np.zeros((6, 6), np.float16)}), r"params.W is float16\(6, 6\)"),
        (lambda g, t: _variant(g, t, **{"optim.m.V": np.full((6, 28), np.nan, np.float32)}), "m.V contains NaN or Inf"),
        (lambda g, t: _variant(g, t, _set("optimizer.config.lr", float("inf"))), "bad optimizer settings .*lr must be a positive number"),
        (lambda g, t: _variant(g, t, _set("optimizer.config.betas", [1.0, 0.9])), "beta1 must be a number in"),
        (lambda g, t: _variant(g, t, _set("optimizer.name", "lbfgs")), "unknown or malformed optimizer"),
        (lambda g, t: _variant(g, t, _set("version", 7)), "unsupported checkpoint format .* version 7"),
        (lambda g, t: _variant(g, t, **{"optim.t": np.array(-1)}), "t must be a non-negative integer"),
    ],
)
def test_crafted_headers_and_arrays_are_refused(good, tmp_path, make, message):
    path = make(good[0], tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_plain_npy_file_is_not_a_checkpoint(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        load_checkpoint(tmp_path / "x.npy")


def test_a_member_without_npy_suffix_is_refused(good, tmp_path):
    path = tmp_path / "extra.npz"
    path.write_bytes(good[0].read_bytes())
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.txt", b"hello")
    with pytest.raises(CheckpointError, match="member 'notes.txt' is not a .npy array"):
        load_checkpoint(path)


def test_an_unknown_compression_method_is_refused(good, tmp_path):
    path = _patch_zip(good[0], tmp_path / "method.npz", 8, 10, 99)
    with pytest.raises(CheckpointError, match="unsupported compression method"):
        load_checkpoint(path)


def test_the_encrypted_flag_is_refused(good, tmp_path):
    path = _patch_zip(good[0], tmp_path / "crypt.npz", 6, 8, 1)
    with pytest.raises(CheckpointError, match="is encrypted"):
        load_checkpoint(path)


def test_a_member_declaring_a_huge_shape_is_refused_without_allocating(good, tmp_path):
    path = tmp_path / "huge.npz"
    path.write_bytes(good[0].read_bytes())
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}
    with zipfile.ZipFile(path, "a") as z, z.open("state.big.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"declares shape \(1099511627776,\)"):
        load_checkpoint(path)


def test_a_truncated_file_is_refused(good, tmp_path):
    data = good[0].read_bytes()
    for cut in (10, len(data) // 3, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "cut.npz")


@pytest.mark.parametrize(
    "edit, replace, message",
    [
        (_set("meta.clip", -1.0), {}, "bad training settings .*clip must be a positive number"),
        (_set("meta.seq_len", 0), {}, "seq_len must be a positive integer"),
        (None, {"state.batcher_position": np.array(10**6)}, r"batcher_position must be \[0, "),
        (None, {"state.batcher_position": np.array(-1)}, "batcher_position must be"),
        (None, {"state.h": np.full((2, 6), np.nan, np.float32)}, "hidden state is float32"),
        (None, {"state.step": np.array(2.5)}, "step must be a non-negative integer"),
        (_set("meta.seq_len", KeyError), {}, "not a training checkpoint .*seq_len"),
    ],
)
def test_bad_training_state_is_refused_at_resume(good, tmp_path, edit, replace, message):
    path = _variant(good[0], tmp_path, edit, **replace)
    with pytest.raises(CheckpointError, match=message):
        fastrnn.Trainer.resume(path, good[1])


# -- item 8: never numpy's allow_pickle hint ---------------------------------------------------


def test_object_arrays_and_pickles_are_not_a_checkpoint_and_never_suggest_allow_pickle(good, tmp_path):
    arrays = _arrays(good[0])
    arrays["params.U"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays, allow_pickle=True)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "obj.npz")
    assert "never does" in str(info.value) and "allow_pickle" not in str(info.value)
    import pickle

    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "pickle.npz")
    assert "not an .npz archive" in str(info.value) and "allow_pickle" not in str(info.value)


# -- item 9: leftovers of a killed save are removed --------------------------------------------


def test_leftover_temporary_files_are_removed_at_the_next_save(tmp_path):
    model = fastrnn.CharRNN(Vocab("abc"), 3, seed=0)
    (tmp_path / "m.npz.0123456789ab.tmp").write_bytes(b"half a checkpoint")  # as fastrnn <= 0.4 named them
    (tmp_path / "other.npz.x.tmp").write_bytes(b"not ours")
    save_checkpoint(tmp_path / "m.npz", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "other.npz.x.tmp"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    model = fastrnn.CharRNN(Vocab("abc"), 3, seed=0)
    save_checkpoint(tmp_path / "m.npz", model)
    before = (tmp_path / "m.npz").read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "m.npz", fastrnn.CharRNN(Vocab("abc"), 3, seed=1))
    assert (tmp_path / "m.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


# -- item 10: checkpoints are their own module; optimizers rebuild themselves; no RNG slot --------


def test_model_does_not_import_checkpoint():
    import ast

    for name in ("model.py", "checkpoint.py"):
        assert (pathlib.Path(fastrnn.__file__).parent / name).is_file()
    tree = ast.parse((pathlib.Path(fastrnn.__file__).parent / "model.py").read_text())
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "checkpoint" not in imported and not any("checkpoint" in m for m in imported)
    assert not hasattr(fastrnn.model, "save_checkpoint") and not hasattr(fastrnn.model, "CheckpointError")


def test_the_optimizer_comes_back_rebuilt_and_there_is_no_rng_slot(good):
    model, extras = load_checkpoint(good[0])
    opt = extras["optimizer"]
    assert isinstance(opt, fastrnn.optim.Adam) and opt.t == 3
    assert opt.params is model.params
    assert opt.config() == {"lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8}
    header = _header(_arrays(good[0]))
    assert "rng" not in header and header["version"] == 2
    assert header["optimizer"] == {"name": "adam", "config": opt.config()}


def test_format_1_checkpoints_are_still_read(good, tmp_path):
    """A file as fastrnn 0.1.0 wrote it: class name, optimizer_args with beta1/beta2, lr in the state, an rng slot."""
    arrays = _arrays(good[0])
    header = _header(arrays)
    header.update(version=1, optimizer="Adam", optimizer_args={"eps": 1e-8, "beta1": 0.9, "beta2": 0.999}, rng=None)
    arrays["state.smooth"] = np.array(3.0)
    del arrays["state.ema"], arrays["state.ema_steps"]
    path = _write(tmp_path / "v1.npz", arrays, header)
    tr = fastrnn.Trainer.resume(path, good[1])
    assert tr.step_count == 3 and tr.optimizer.lr == 3e-3 and tr.smooth == pytest.approx(3.0)
    tr.run(2, progress=False)


def test_load_model_round_trip(good):
    model = load_model(good[0])
    assert model.hidden == 6 and model.dtype == np.float32 and len(model.vocab) == 28


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_checkpoint_gets_the_mode_of_any_new_file(tmp_path):
    """Written through a temporary file, it still has 0o666 less the umask (mkstemp's 0o600 was not)."""
    model = fastrnn.CharRNN(Vocab("abc"), 3, seed=0)
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "m.npz", model)
        save_checkpoint(tmp_path / "m.npz", model)  # replacing keeps it so too
    finally:
        os.umask(previous)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob("*.tmp"))


# -- found by probing: concurrent saves, what save writes, crafted headers, special files ----------


def test_a_live_process_s_temporary_file_is_left_alone(tmp_path):
    """Two runs saving one checkpoint: each save removed every *.tmp beside it, the other
    run's save in progress included, which then failed at its rename (and lost its run)."""
    import subprocess
    import sys

    from fastrnn.checkpoint import _HOST, STALE_AFTER

    model = fastrnn.CharRNN(Vocab("abc"), 3, seed=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = lambda host, pid: f"m.npz.{host}-{pid}-0123456789ab.tmp"  # noqa: E731
    mine, live, gone = (name(_HOST, pid) for pid in (os.getpid(), os.getppid(), int(dead.stdout)))
    elsewhere, old_elsewhere = name("othermachine", os.getpid()), name("othermachine", 7)
    another = f"m.npz.npz.{_HOST}-{os.getppid()}-0123456789ab.tmp"  # m.npz.npz's: saving m.npz must not see it
    for leftover in (mine, live, gone, elsewhere, old_elsewhere, another):
        (tmp_path / leftover).write_bytes(b"half a checkpoint")
    hour_ago = __import__("time").time() - STALE_AFTER - 1
    os.utime(tmp_path / old_elsewhere, (hour_ago, hour_ago))
    save_checkpoint(tmp_path / "m.npz", model)
    # left: the running process's, the other machine's recent one, and the other checkpoint's
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", live, elsewhere, another])
    save_checkpoint(tmp_path / "m", model)  # "m" sees m.npz's files through its glob: none is its own
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", "m.npz", live, elsewhere, another])


def test_a_save_during_another_process_s_save_lets_both_finish(tmp_path):
    import subprocess
    import sys

    from fastrnn.checkpoint import atomic_write

    path = tmp_path / "race.npz"
    script = ("import fastrnn, sys; from fastrnn.checkpoint import save_checkpoint; from fastrnn.data import Vocab; "
              "save_checkpoint(sys.argv[1], fastrnn.CharRNN(Vocab('abc'), 3, seed=1))")

    def write(f):  # another process saves to the same path while this save is half written
        f.write(b"first half")
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        f.write(b" and the rest")

    atomic_write(path, write)
    assert path.read_bytes() == b"first half and the rest"  # this save landed last; neither failed
    assert [p.name for p in tmp_path.iterdir()] == ["race.npz"]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"state": {"a": {"a": 1}}}, r"cannot store state.a \(object\)"),
        ({"state": {"a": None}}, r"cannot store state.a \(object\)"),
        ({"state": {"a": np.array(np.nan + 1j)}}, r"cannot store state.a \(complex128\)"),
        ({"state": {"a": b"abc"}}, r"cannot store state.a \(\|S3\)"),
        ({"state": {"a": np.datetime64("2020-01-01")}}, r"cannot store state.a \(datetime64\[D\]\)"),
        ({"meta": [1, 2]}, r"meta must be a dict \(a JSON object\), got list"),
        ({"meta": {"x": float("nan")}}, r"refusing to write meta, which holds NaN or Inf"),
        ({"meta": {"x": float("inf")}}, r"refusing to write meta, which holds NaN or Inf"),
    ],
)
def test_save_refuses_what_load_would_refuse(tmp_path, kw, message):
    """Each of these was written, and then refused by load_checkpoint (or loaded back as NaN)."""
    model = fastrnn.CharRNN(Vocab("abc"), 3, seed=0)
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(tmp_path / "m.npz", model, **kw)
    assert list(tmp_path.iterdir()) == []


def test_crafted_versions_and_deep_headers_are_refused(good, tmp_path):
    path, _ = good
    for version in (True, 1.0, "2"):
        with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
            load_checkpoint(_variant(path, tmp_path, lambda h: h.update(version=version)))
    # version 1 (fastrnn 0.1.0) named its optimizer by class: a dict there crashed the loader
    with pytest.raises(CheckpointError, match="unknown or malformed optimizer"):
        load_checkpoint(_variant(path, tmp_path, lambda h: h.update(version=1)))
    arrays = _arrays(path)
    arrays["header"] = np.array("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match="the header is not JSON"):
        load_checkpoint(_write(tmp_path / "deep.npz", arrays))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_are_neither_read_nor_replaced(tmp_path):
    from fastrnn.checkpoint import check_output_path

    os.mkfifo(tmp_path / "f.npz")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path / "f.npz")  # opening it would wait for a writer
    with pytest.raises(ValueError, match="is not a regular file"):
        check_output_path(tmp_path / "f.npz")
    with pytest.raises(ValueError, match=r"cannot create a file beside it \(File name too long\)"):
        check_output_path(tmp_path / ("m" * 245 + ".npz"))  # a legal name; its temporary file's is not


def test_save_refuses_an_optimizer_that_would_not_load_back(tmp_path):
    """An lr set to 0 (or below float32's smallest number) after construction, or an edited
    state, was written and then refused by load_checkpoint."""
    from fastrnn import optim

    model = fastrnn.CharRNN(Vocab("abc"), 3, seed=0)
    opt = optim.Adam(model.params)
    for lr in (0.0, 1e-46):
        opt.lr = lr
        with pytest.raises(CheckpointError, match=r"refusing to write an optimizer that would not load back \(lr must"):
            save_checkpoint(tmp_path / "m.npz", model, optimizer=opt)
    opt.lr = 1e-3
    opt.state["s"][1][0, 0] = -1.0
    with pytest.raises(CheckpointError, match=r"s.W holds -1.0: a sum of squares is never negative"):
        save_checkpoint(tmp_path / "m.npz", model, optimizer=opt)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_loads_from_a_file_object(good):
    import io

    path, _ = good
    assert load_checkpoint(io.BytesIO(path.read_bytes()))[0].hidden == 6
