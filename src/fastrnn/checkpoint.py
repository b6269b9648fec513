"""Checkpoints: a model, optionally its optimizer and a trainer's state, in one .npz file.

Writing is atomic: the arrays go to a temporary file in the target's folder,
which is flushed to disk (fsync) and then renamed over the target
(``os.replace``), so a crash or a full disk leaves the previous checkpoint
whole. Temporary files left by a save that was killed (``<name>.*.tmp``) are
removed at the next save to the same path. Nothing non-finite is ever written.

Reading never trusts the file: the archive is parsed member by member (only
``.npy`` members, stored or deflated, unencrypted, whose declared size matches
their data, and no Python objects), then every value is checked — the header,
the parameters (through the same check as every public function), the
optimizer's hyperparameters and state. Whatever is wrong ends in one
:class:`CheckpointError` that names the file.

Format 2 (this version) stores the optimizer as ``{"name", "config"}`` (the
keyword arguments that rebuild it) and has no RNG slot. Format 1 files (fastrnn
0.1.0) are still read.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import time
import zipfile
from pathlib import Path

import numpy as np

from . import optim
from ._params import Params
from ._validate import check_params
from .data import Vocab
from .model import CharRNN

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "check_output_path", "atomic_write"]

FORMAT = "fastrnn-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)

_ALLOWED_KINDS = "fiubU"  # floats, integers, booleans, text (the header); never objects


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, is damaged, or does not match."""


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def check_output_path(path, what="checkpoint"):
    """Raise ValueError now, before any long work, if ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{what} path {path} is a directory; give a file name")
    if not folder.is_dir():
        raise ValueError(f"{what} path {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} path {path}: cannot write in the folder {folder}")
    if path.exists() and not os.access(path, os.W_OK) and not os.access(folder, os.W_OK):
        raise ValueError(f"{what} path {path}: the file is not writable")
    if path.exists() and not path.is_file():  # a device, a FIFO, a socket: never replaced by a checkpoint
        raise ValueError(f"{what} path {path} is not a regular file")
    try:  # the temporary file a save will write (its name is longer than the path's, for one)
        fd, tmp = _new_temporary(path)
    except OSError as exc:
        raise ValueError(f"{what} path {path}: cannot create a file beside it ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


#: This machine in temporary file names (letters, digits and _ only), with the process id:
#: a process id means something only on its own machine.
_HOST = re.sub(r"\W", "_", socket.gethostname(), flags=re.ASCII)[:32] or "host"
#: A temporary file this old is a leftover whoever wrote it (no save takes an hour).
STALE_AFTER = 3600.0


def _remove_leftovers(path):
    """Remove the temporary files of earlier saves to ``path`` that never finished: this
    process's, those of processes of this machine that no longer run, those of older
    fastrnn versions (no process id in the name), and any an hour old. A running
    process's, or another machine's recent one, is another save in progress (two runs
    writing one checkpoint): left alone."""
    ours = re.compile(re.escape(path.name) + r"\.(?:(\w+)-(\d+)-)?[0-9a-f]{12}\.tmp", flags=re.ASCII)
    for leftover in path.parent.glob(f"{glob_escape(path.name)}.*.tmp"):
        match = ours.fullmatch(leftover.name)
        if match is None:  # another file's (saving ``run`` sees ``run.npz``'s)
            continue
        host, pid = match.group(1), match.group(2)
        try:
            if host is not None and time.time() - leftover.stat().st_mtime < STALE_AFTER:
                if host != _HOST or (int(pid) != os.getpid() and _running(int(pid))):
                    continue
            leftover.unlink()
        except OSError:
            pass


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):  # another user's process, or no way to tell
        return True
    return True


def glob_escape(name):
    return "".join(f"[{ch}]" if ch in "*?[]" else ch for ch in name)


def _new_temporary(path):
    """(fd, name) of a new file ``<name>.<host>-<pid>-<random>.tmp`` beside ``path``, with the mode
    ``open()`` gives a new file (0o666 less the umask; mkstemp's would be 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f"{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``; fsync it and rename it over ``path``."""
    path = Path(path)
    _remove_leftovers(path)
    fd, tmp = _new_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_checkpoint(path, model, *, optimizer=None, state=None, meta=None):
    """Write ``model`` (and optionally an optimizer, extra arrays ``state`` and
    JSON metadata ``meta``) to ``path`` as one .npz, atomically.

    Raises :class:`CheckpointError`, writing nothing, if a parameter, optimizer
    state or float array in ``state`` holds NaN or Inf, if ``state`` holds what a
    checkpoint cannot (objects, complex numbers, bytes, dates: :func:`load_checkpoint`
    would refuse the file), or if ``meta`` is not a JSON object of finite numbers.
    """
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a directory; give a file name")
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta must be a dict (a JSON object), got {type(meta).__name__}")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config,
        "vocab": model.vocab.chars,
        "optimizer": None if optimizer is None else {"name": _optimizer_name(optimizer), "config": optimizer.config()},
        "meta": meta or {},
    }
    arrays = {f"params.{k}": a for k, a in zip(Params._fields, model.params)}
    if optimizer is not None:
        saved = optimizer.state_dict()
        try:  # what loading will do (its lr may have been set since, its state edited)
            optim.make_optimizer(_optimizer_name(optimizer), model.params, optimizer.config()).load_state_dict(saved)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: refusing to write an optimizer that would not load back ({exc})") from None
        arrays.update({f"optim.{k}": a for k, a in saved.items()})
    for k, a in (state or {}).items():
        arrays[f"state.{k}"] = np.asarray(a)
    for k, a in arrays.items():
        if a.dtype.hasobject or a.dtype.kind not in _ALLOWED_KINDS or a.dtype.fields is not None:
            raise CheckpointError(f"{path}: cannot store {k} ({a.dtype}): a checkpoint holds real numbers, booleans "
                                  "and text only")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise CheckpointError(f"{path}: refusing to write {k}, which contains NaN or Inf")
    try:
        text = json.dumps(header, default=_json_default, allow_nan=False)
    except ValueError:
        raise CheckpointError(f"{path}: refusing to write meta, which holds NaN or Inf") from None
    except TypeError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    arrays["header"] = np.array(text)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _optimizer_name(optimizer):
    for name, cls in optim.OPTIMIZERS.items():
        if type(optimizer) is cls:
            return name
    raise TypeError(f"cannot checkpoint an optimizer of type {type(optimizer).__name__}")


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint header")


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _read_members(path):
    """The archive's arrays by name (without ``.npy``), read defensively."""
    if isinstance(path, (str, os.PathLike)) and os.path.exists(path) and not os.path.isdir(path) \
            and not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file")  # a FIFO would block the read
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint") from None
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise CheckpointError(f"{path}: not a readable fastrnn checkpoint (not an .npz archive)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    arrays = {}
    with zf:
        for info in zf.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise CheckpointError(f"{path}: not a fastrnn checkpoint (member {name!r} is not a .npy array)")
            if info.flag_bits & 0x1:
                raise CheckpointError(f"{path}: not a fastrnn checkpoint (member {name!r} is encrypted)")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CheckpointError(f"{path}: member {name!r} uses an unsupported compression method")
            key = name[: -len(".npy")]
            if key in arrays:
                raise CheckpointError(f"{path}: member {name!r} appears twice")
            try:
                with zf.open(info) as f:
                    arrays[key] = _read_npy(f, info.file_size)
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: member {name!r}: {exc}") from None
            except (zipfile.BadZipFile, EOFError, ValueError, OSError, RuntimeError, NotImplementedError) as exc:
                raise CheckpointError(f"{path}: not a readable fastrnn checkpoint ({name}: {exc})") from None
    return arrays


def _read_npy(f, member_size):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy version {version}")
    except (ValueError, TypeError, SyntaxError) as exc:
        raise CheckpointError(f"not an .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
        raise CheckpointError(f"holds {dtype} data, which a fastrnn checkpoint never does")
    header_size = f.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != member_size - header_size:
        raise CheckpointError(f"declares shape {shape} of {dtype} ({nbytes} bytes) but holds {member_size - header_size} bytes")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError("is truncated")
    a = np.frombuffer(data, dtype=dtype)
    return a.reshape(shape, order="F" if fortran else "C").copy(order="C")


def _fail(path, what):
    raise CheckpointError(f"{path}: {what}")


def load_checkpoint(path, backend=None):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``(model, extras)``. ``extras`` holds ``optimizer`` (the rebuilt
    optimizer, bound to ``model.params`` with its state loaded, or None),
    ``state`` (dict of arrays), ``meta`` (dict) and ``version``. Raises
    :class:`CheckpointError` for a missing, damaged, crafted or inconsistent file.
    """
    files = _read_members(path)
    if "header" not in files:
        _fail(path, "not a fastrnn checkpoint (no header)")
    header_array = files.pop("header")
    if header_array.dtype.kind != "U" or header_array.shape != ():
        _fail(path, "not a fastrnn checkpoint (the header is not text)")
    try:
        header = json.loads(str(header_array))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's JSON reader goes
        _fail(path, "not a fastrnn checkpoint (the header is not JSON)")
    if not isinstance(header, dict):
        _fail(path, f"not a fastrnn checkpoint (the header is a JSON {type(header).__name__}, not an object)")
    version = header.get("version")
    readable = type(version) is int and version in READABLE_VERSIONS  # not True (== 1), not 1.0
    if header.get("format") != FORMAT or not readable:
        _fail(path, f"unsupported checkpoint format {header.get('format')!r} version {version!r} "
                    f"(this fastrnn reads {FORMAT!r} versions {', '.join(map(str, READABLE_VERSIONS))})")

    cfg = header.get("config")
    if not isinstance(cfg, dict):
        _fail(path, "the header has no config")
    hidden, dtype_name, vocab_size = cfg.get("hidden"), cfg.get("dtype"), cfg.get("vocab_size")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        _fail(path, f"config.hidden must be a positive integer, got {hidden!r}")
    if dtype_name not in ("float32", "float64"):
        _fail(path, f"config.dtype must be 'float32' or 'float64', got {dtype_name!r}")
    chars = header.get("vocab")
    if not isinstance(chars, str):
        _fail(path, f"the vocabulary must be a string of characters, got {type(chars).__name__}")
    try:
        vocab = Vocab(chars)
    except ValueError as exc:
        _fail(path, f"bad vocabulary ({exc})")
    if vocab_size != len(vocab):
        _fail(path, f"the vocabulary has {len(vocab)} characters, config.vocab_size says {vocab_size!r}")

    missing = [f"params.{k}" for k in Params._fields if f"params.{k}" not in files]
    if missing:
        _fail(path, f"incomplete checkpoint (missing {', '.join(missing)})")
    raw = Params(*(files[f"params.{k}"] for k in Params._fields))
    dtype, v = np.dtype(dtype_name), len(vocab)
    expected = [(v, hidden), (hidden, hidden), (hidden, v), (hidden,), (v,)]
    for k, a, shape in zip(Params._fields, raw, expected):
        if a.shape != shape or a.dtype != dtype:
            _fail(path, f"params.{k} is {a.dtype}{a.shape}, the config says {dtype}{shape}")
    try:
        params = check_params(raw)
    except (TypeError, ValueError) as exc:
        _fail(path, str(exc))
    model = CharRNN(vocab, backend=backend, params=params)

    optimizer = _load_optimizer(path, header, version, files, model.params)
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        _fail(path, "the header's meta is not an object")
    extras = {
        "optimizer": optimizer,
        "state": {k[len("state."):]: a for k, a in files.items() if k.startswith("state.")},
        "meta": meta,
        "version": version,
    }
    return model, extras


def _load_optimizer(path, header, version, files, params):
    described = header.get("optimizer")
    if described is None:
        return None
    if version == 1:  # fastrnn 0.1.0: the class name, and its arguments without lr (lr was in the state)
        names = {cls.__name__: name for name, cls in optim.OPTIMIZERS.items()}
        args = header.get("optimizer_args") or {}
        if not isinstance(described, str) or not isinstance(args, dict):
            _fail(path, f"unknown or malformed optimizer {described!r}")
        name, config = names.get(described), dict(args)
        lr = files.get("optim.lr")
        if lr is not None and lr.shape == ():
            config["lr"] = float(lr)
    elif isinstance(described, dict):
        name, config = described.get("name"), described.get("config")
    else:
        name, config = None, None
    if name not in optim.OPTIMIZERS or not isinstance(config, dict):
        _fail(path, f"unknown or malformed optimizer {described!r}")
    try:
        optimizer = optim.make_optimizer(name, params, config)
    except (TypeError, ValueError) as exc:
        _fail(path, f"bad optimizer settings ({exc})")
    state = {k[len("optim."):]: a for k, a in files.items() if k.startswith("optim.")}
    try:
        optimizer.load_state_dict(state)
    except KeyError as exc:
        _fail(path, f"incomplete optimizer state (missing {exc})")
    except (TypeError, ValueError) as exc:
        _fail(path, f"bad optimizer state ({exc})")
    return optimizer


def load_model(path, backend=None):
    """The :class:`~fastrnn.CharRNN` stored in a checkpoint (any optimizer or trainer state is ignored)."""
    return load_checkpoint(path, backend=backend)[0]
