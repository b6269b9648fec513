"""A character-level CharRNN language model: params, vocabulary, config, sampling, checkpoints."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import api
from ._params import Params, init_params
from .data import Vocab

__all__ = ["CharRNN", "CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT = "fastrnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, is damaged, or does not match."""


class CharRNN:
    """A vanilla CharRNN language model over a character vocabulary.

    Inputs are token ids (one-hot rows of X, d = v = len(vocab)). ``backend``
    picks the kernels (None: the default backend).
    """

    def __init__(self, vocab, hidden=128, *, dtype=np.float32, seed=None, backend=None, params=None):
        self.vocab = vocab
        self.hidden = int(hidden)
        self.dtype = np.dtype(dtype)
        self.backend = backend
        v = len(vocab)
        self.params = params if params is not None else init_params(v, self.hidden, v, dtype=self.dtype, seed=seed)

    @property
    def config(self):
        return {"hidden": self.hidden, "dtype": self.dtype.name, "vocab_size": len(self.vocab)}

    def zero_state(self, n):
        return np.zeros((n, self.hidden), dtype=self.dtype)

    def loss_and_grads(self, inputs, targets, h0=None, reduction="mean", params_only=True):
        return api.loss_and_grads(
            self.params, inputs, targets, h0=h0, reduction=reduction, params_only=params_only, backend=self.backend
        )

    def sample(self, length, *, prime="", temperature=1.0, top_k=None, seed=None, rng=None):
        """Generate ``length`` characters after ``prime``.

        ``temperature`` divides the logits (lower is more conservative);
        ``top_k`` keeps only the k most likely characters at each step. The
        same ``seed`` (or a generator in the same state) gives the same text.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        if top_k is not None and not 1 <= top_k:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        rng = rng if rng is not None else np.random.default_rng(seed)
        h = np.zeros(self.hidden, dtype=self.dtype)
        if not prime:  # start as a text starts: after a newline, if the vocabulary has one
            prime = "\n" if "\n" in self.vocab.chars else self.vocab.chars[0]
        prime_ids = self.vocab.encode(prime)
        params, _ = api._checked_params(self.params)  # once; each step checks only its input
        # Run the prime through the network; its last step predicts the first new character.
        P, h = api._step_probs(params, prime_ids, h, self.backend)
        p = P[-1]
        out = []
        for _ in range(length):
            k = _draw(p, temperature, top_k, rng)
            out.append(k)
            P, h = api._step_probs(params, np.array([k]), h, self.backend)
            p = P[-1]
        return prime + self.vocab.decode(out)

    def save(self, path, **extra):
        save_checkpoint(path, self, **extra)

    @classmethod
    def load(cls, path, backend=None):
        model, _ = load_checkpoint(path, backend=backend)
        return model


def _draw(p, temperature, top_k, rng):
    logits = np.log(np.maximum(p.astype(np.float64), 1e-300)) / temperature
    if top_k is not None and top_k < len(logits):
        cut = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits >= cut, logits, -np.inf)
    w = np.exp(logits - logits.max())
    # rng.choice(len(w), p=w / w.sum()) without its checks of p (the same draw, 3x faster)
    cdf = np.cumsum(w / w.sum())
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


# ---------------------------------------------------------------------------
# Checkpoints: one .npz, written atomically, validated on load.
# ---------------------------------------------------------------------------


def save_checkpoint(path, model, *, optimizer=None, rng=None, state=None, meta=None):
    """Write the model (and optionally optimizer state, an RNG, extra arrays and
    JSON metadata) to ``path`` as one .npz, atomically: a temporary file in the
    same folder is renamed over the target only once it is complete."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config,
        "vocab": model.vocab.chars,
        "optimizer": None if optimizer is None else type(optimizer).__name__,
        "optimizer_args": None if optimizer is None else _optimizer_args(optimizer),
        "rng": None if rng is None else rng.bit_generator.state,
        "meta": meta or {},
    }
    arrays = {f"params.{k}": a for k, a in zip(Params._fields, model.params)}
    if optimizer is not None:
        arrays.update({f"optim.{k}": a for k, a in optimizer.state_dict().items()})
    for k, a in (state or {}).items():
        arrays[f"state.{k}"] = np.asarray(a)
    arrays["header"] = np.array(json.dumps(header, default=_json_default))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint header")


def _optimizer_args(opt):
    keys = ("momentum", "nesterov", "eps", "rho", "beta1", "beta2")
    return {k: getattr(opt, k) for k in keys if hasattr(opt, k)}


def load_checkpoint(path, backend=None):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``(model, extras)`` where ``extras`` holds ``optimizer`` (class name),
    ``optimizer_args``, ``optimizer_state`` (dict), ``rng`` (state dict or None),
    ``state`` (dict of arrays) and ``meta``. Raises :class:`CheckpointError` for
    a missing, damaged or inconsistent file.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable fastrnn checkpoint ({exc})") from None
    try:
        header = json.loads(str(files.pop("header")))
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: not a fastrnn checkpoint (no header)") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {header.get('format')!r} v{header.get('version')}")
    try:
        cfg = header["config"]
        vocab = Vocab(header["vocab"])
        params = Params(*(files[f"params.{k}"] for k in Params._fields))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: incomplete checkpoint ({exc})") from None
    v, h, dtype = len(vocab), cfg["hidden"], np.dtype(cfg["dtype"])
    expected = [(v, h), (h, h), (h, v), (h,), (v,)]
    for k, a, shape in zip(Params._fields, params, expected):
        if a.shape != shape or a.dtype != dtype:
            raise CheckpointError(f"{path}: params.{k} is {a.dtype}{a.shape}, the config says {dtype}{shape}")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{path}: params.{k} contains NaN or Inf")
    if cfg.get("vocab_size") != v:
        raise CheckpointError(f"{path}: vocabulary has {v} characters, the config says {cfg.get('vocab_size')}")
    model = CharRNN(vocab, h, dtype=dtype, backend=backend, params=Params(*(np.ascontiguousarray(a) for a in params)))
    extras = {
        "optimizer": header.get("optimizer"),
        "optimizer_args": header.get("optimizer_args") or {},
        "optimizer_state": {k[len("optim.") :]: a for k, a in files.items() if k.startswith("optim.")},
        "rng": header.get("rng"),
        "state": {k[len("state.") :]: a for k, a in files.items() if k.startswith("state.")},
        "meta": header.get("meta", {}),
    }
    return model, extras
