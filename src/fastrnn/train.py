"""The training loop: truncated BPTT over parallel streams, with clipping,
validation, callbacks, checkpoints and a bit-exact resume.

Nothing is lost and nothing is silent: arguments and the checkpoint path are
checked before the first step; after every update the parameters are checked
and a NaN or Inf raises :class:`TrainingDiverged` (a diverged state is never
saved); Ctrl-C is taken at the end of the step in progress, the state is saved
to the checkpoint and :class:`TrainingInterrupted` says how far it got.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import _threads, api, optim
from ._validate import check_reduction_name
from .api import predict_proba
from .checkpoint import CheckpointError, check_output_path, load_checkpoint, save_checkpoint
from .data import Batcher
from .model import CharRNN
from .optim import TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "History", "evaluate"]

#: The smoothed loss is an exponential moving average with this decay, bias-corrected.
SMOOTHING = 0.99


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a KeyboardInterrupt) stopped :meth:`Trainer.run`.

    ``step`` is the last step completed; ``checkpoint`` is the path the state was
    saved to at that step, or None when nothing could be saved.
    """

    def __init__(self, message, step, checkpoint):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint

    def __str__(self):
        return self.args[0]


@dataclass
class History:
    steps: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    smooth_loss: list = field(default_factory=list)
    val_steps: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _positive_int(name, x, allow_zero=False):
    if not _is_int(x) or x < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} integer, got {x!r}")
    return int(x)


def check_token_ids(name, ids, v, minimum=2):
    """A 1-D integer array of token ids in [0, v), at least ``minimum`` long."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be an array of integer token ids, got text; encode it first: vocab.encode(text)")
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an array of integer token ids, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one token stream), got shape {a.shape}")
    if len(a) < minimum:
        raise ValueError(f"{name} needs at least {minimum} tokens, got {len(a)}")
    if a.min() < 0 or a.max() >= v:
        raise ValueError(f"{name} must hold ids in [0, {v}) (the vocabulary's size), got values in [{a.min()}, {a.max()}]")
    return a


def evaluate(model, ids, *, batch=16, seq_len=100):
    """Mean negative log-likelihood (nats per token) of ``ids`` under ``model``,
    reading it as ``batch`` streams with the state carried across windows."""
    ids = check_token_ids("ids", ids, len(model.vocab))
    batch, seq_len = _positive_int("batch", batch), _positive_int("seq_len", seq_len)
    batch = max(1, min(batch, (len(ids) - 1) // 2))
    L = len(ids) // batch
    streams = ids[: batch * L].reshape(batch, L).T  # (L, batch)
    h = model.zero_state(batch)
    total, count = 0.0, 0
    for start in range(0, L - 1, seq_len):
        x = streams[start : min(start + seq_len, L - 1)]
        y = streams[start + 1 : start + 1 + len(x)]
        P, h = predict_proba(model.params, x, h0=h, backend=model.backend)
        picked = np.take_along_axis(P, y[..., None], axis=-1)
        total -= float(np.log(np.maximum(picked.astype(np.float64), 1e-300)).sum())
        count += y.size
    return total / count


def corpus_fingerprint(ids):
    """A cheap identity of the training tokens, to refuse resuming on another corpus."""
    return {"tokens": int(len(ids)), "crc32": zlib.crc32(np.ascontiguousarray(ids, dtype=np.int64).tobytes())}


@contextlib.contextmanager
def _sigint_at_step_end():
    """While active (main thread only), the first Ctrl-C only raises a flag that the
    loop reads between steps, so a step is never cut in half and no
    KeyboardInterrupt lands inside a compiled kernel. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return
    hit = []

    def handler(signum, frame):
        hit.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _from_interrupt(exc):
    """True for a KeyboardInterrupt, or the SystemError a compiled function raises when one lands inside it."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, SystemError) and isinstance(exc.__context__ or exc.__cause__, KeyboardInterrupt)


class Trainer:
    """Runs truncated-BPTT training of a :class:`~fastrnn.CharRNN` on token ids.

    Each step takes the next (T, n) window from the batcher (see
    :class:`~fastrnn.data.Batcher` for how the streams wrap), starts from the
    hidden state the previous window ended in (zeros when the streams restart),
    computes the loss (``reduction='mean'`` over the T·n predictions, or
    ``'sum'`` as min-char-rnn does) and its gradients, clips them (``clip`` by
    value, or ``clip_norm`` by global norm; ``clip_norm`` wins if both are
    given) and lets the optimizer update the parameters in place.

    ``lr=None`` takes the optimizer's default, :data:`fastrnn.optim.DEFAULT_LR`
    (the command line's default too). ``optimizer_args`` are the optimizer's
    other keyword arguments. ``threads`` fixes the BLAS threads of this
    trainer's steps (a positive integer); None follows
    :func:`fastrnn.set_num_threads` (default: auto).

    The parameters are checked once (again if ``model.params`` is replaced);
    each step then checks only its batch.


    ``comm`` (an mpi4py communicator, see :mod:`fastrnn.distributed`) trains
    data-parallel: every rank runs this same code, takes its slice of the
    ``batch`` streams, and the gradients are summed across ranks once per step,
    so each update equals the one-process update on the whole batch (to
    rounding). Every rank applies it and holds the same parameters (checked
    every ``sync_every`` steps) and the whole batch's hidden state; rank 0
    alone validates and writes checkpoints. Callbacks run on every rank and
    must decide alike.
    """

    def __init__(
        self, model, train_ids, *, seq_len=50, batch=32, optimizer="adam", lr=None,
        clip=5.0, clip_norm=None, val_ids=None, optimizer_args=None, reduction="mean",
        threads=None, comm=None, sync_every=100,
    ):
        if not all(hasattr(model, a) for a in ("params", "vocab", "zero_state", "loss_and_grads")):
            raise TypeError(f"model must be a fastrnn.CharRNN, got {type(model).__name__}")
        v = len(model.vocab)
        self.seq_len = _positive_int("seq_len", seq_len)
        self.batch = _positive_int("batch", batch)
        check_reduction_name(reduction)
        self.clip = None if clip is None else optim.check_hyperparameter("clip", clip, "positive")
        self.clip_norm = None if clip_norm is None else optim.check_hyperparameter("clip_norm", clip_norm, "positive")
        self.model = model
        self.reduction = reduction
        self.train_ids = check_token_ids("train_ids", train_ids, v)
        self.val_ids = None if val_ids is None else check_token_ids("val_ids", val_ids, v)
        self.batcher = Batcher(self.train_ids, self.batch, self.seq_len)
        if optimizer_args is not None and not isinstance(optimizer_args, dict):
            raise TypeError(f"optimizer_args must be a dict of the optimizer's keyword arguments, got "
                            f"{type(optimizer_args).__name__}")
        kwargs = dict(optimizer_args or {})
        if lr is not None:
            kwargs["lr"] = lr
        self.optimizer = optim.make_optimizer(optimizer, model.params, kwargs)  # it checks the name
        self.optimizer_name = optimizer
        self.h = model.zero_state(self.batch)
        self.step_count = 0
        self._ema, self._ema_steps = 0.0, 0
        self._consistent = True  # False from the first parameter write of a step to its end
        self._diverged = False
        self._saved_at = None  # (path, step) of the last checkpoint this trainer wrote
        self.history = History()
        self.threads = _threads.check(threads)  # None: the global setting
        self._seen_params = self._checked = None
        self.comm = comm
        self._stop_requested = lambda: False  # run() replaces it with its Ctrl-C flag
        self._stop_all = False  # under MPI: some rank asked to stop at this step
        if comm is not None:
            from . import distributed

            if not all(callable(getattr(comm, m, None)) for m in ("Get_size", "Get_rank", "Allreduce", "bcast")):
                raise TypeError(f"comm must be an MPI communicator (mpi4py's MPI.COMM_WORLD, say), got "
                                f"{type(comm).__name__}")
            self.sync_every = _positive_int("sync_every", sync_every)
            self._rows = distributed.split_streams(self.batch, comm.Get_size(), comm.Get_rank())
            share = (self._rows.stop - self._rows.start) / self.batch
            self._reducer = distributed.Reducer(comm, weight=share if reduction == "mean" else 1.0)
            distributed.check_in_sync(model.params, comm, step=self.step_count)

    @property
    def is_root(self):
        """True in a one-process run, and on rank 0 of a data-parallel one."""
        return self.comm is None or self.comm.Get_rank() == 0

    @property
    def smooth(self):
        """The bias-corrected moving average of the loss (None before the first step)."""
        if not self._ema_steps:
            return None
        return self._ema / (1 - SMOOTHING**self._ema_steps)

    # -- one step ----------------------------------------------------------
    def _loss_and_grads(self, x, y, h0):
        """The one call into the numerical API per step: parameters checked once, the batch every step."""
        with _threads.using(self.threads):
            params = self._trusted_params()
            if params is None:
                return self.model.loss_and_grads(x, y, h0=h0, reduction=self.reduction)
            return api._step_loss_and_grads(params, x, y, h0, self.model.backend, self.reduction)

    def _trusted_params(self):
        """The model's parameters, checked when first seen (again if they are
        replaced); None when checking copied them (so each step must check), or
        when the model is not a plain CharRNN (its own loss_and_grads is called)."""
        model = self.model
        if "loss_and_grads" in vars(model) or getattr(type(model), "loss_and_grads", None) is not CharRNN.loss_and_grads:
            return None
        if model.params is not self._seen_params:
            p, same = api._checked_params(model.params)
            self._seen_params, self._checked = model.params, (p if same else None)
        return self._checked

    def step(self):
        if self._diverged:
            raise TrainingDiverged("this trainer's parameters are NaN or Inf; resume from a checkpoint")
        position = self.batcher.position
        x, y, reset = self.batcher.next()
        h0 = np.zeros_like(self.h) if reset else self.h  # the streams start over: no state to carry
        try:
            if self.comm is None:
                loss, grads, h_last = self._loss_and_grads(x, y, h0)
            else:
                loss, grads, h_last = self._data_parallel_loss_and_grads(x, y, h0)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"the loss became {loss} at step {self.step_count + 1}")
            if self.clip_norm is not None:
                optim.clip_by_global_norm(grads, self.clip_norm)
            elif self.clip is not None:
                optim.clip_by_value(grads, self.clip)
            try:
                self.optimizer.check_grads(grads)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc} at step {self.step_count + 1}") from None
        except BaseException:
            self.batcher.position = position  # nothing changed: the step can be taken again
            raise
        self._consistent = False
        self.optimizer.apply(grads)
        bad = [k for k, p in zip(self.model.params._fields, self.model.params) if not optim._all_finite(p)]
        if bad:
            self._diverged = True
            raise TrainingDiverged(
                f"the update at step {self.step_count + 1} made params.{bad[0]} NaN or Inf "
                f"(learning rate or optimizer settings too large?)"
            )
        self.h = h_last
        self.step_count += 1
        self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * loss
        self._ema_steps += 1
        self.history.steps.append(self.step_count)
        self.history.loss.append(loss)
        self.history.smooth_loss.append(self.smooth)
        self._consistent = True
        if self.comm is not None and self.step_count % self.sync_every == 0:
            from .distributed import check_in_sync

            check_in_sync(self.model.params, self.comm, step=self.step_count)
        return loss

    def _data_parallel_loss_and_grads(self, x, y, h0):
        """This rank's slice of the step, then one Allreduce: the whole batch's
        gradients (weighted), loss and hidden state on every rank, and whether
        any rank asked to stop."""
        rows = self._rows
        try:
            loss, grads, h_last = self._loss_and_grads(
                np.ascontiguousarray(x[:, rows]), np.ascontiguousarray(y[:, rows]), h0[rows]
            )
        except Exception as exc:  # every rank stops with this rank's message
            self._reducer.fail(exc, like=self.model.params, state_shape=self.h.shape)
        loss, h_all, self._stop_all = self._reducer.reduce(
            grads, loss, state=h_last, rows=rows, batch=self.batch, stop=self._stop_requested()
        )
        return loss, grads, h_all

    def _on_root(self, check):
        """Run ``check`` on rank 0 and raise its exception on every rank."""
        error = None
        if self.is_root:
            try:
                check()
            except Exception as exc:
                error = exc
        if self.comm is not None:
            error = self.comm.bcast(error, root=0)
        if error is not None:
            raise error

    # -- the loop ----------------------------------------------------------
    def run(self, steps, *, progress=True, eval_every=None, checkpoint=None, checkpoint_every=None, callbacks=()):
        """Take ``steps`` more steps. ``callbacks`` are called as ``cb(trainer, loss)``
        after each step; one that returns True stops training.

        With ``checkpoint`` (a path, checked before the first step) the state is
        saved every ``checkpoint_every`` steps and at the end. If the loss, a
        gradient or the parameters become NaN or Inf, :class:`TrainingDiverged`
        names the step (and the last checkpoint written, if any) and nothing is
        saved. Ctrl-C (or a KeyboardInterrupt from a callback) ends the step in
        progress, saves the checkpoint and raises :class:`TrainingInterrupted`.
        """
        steps = _positive_int("steps", steps, allow_zero=True)
        if eval_every is not None:
            eval_every = _positive_int("eval_every", eval_every)
        if checkpoint_every is not None:
            checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
        if checkpoint is not None:
            if not isinstance(checkpoint, (str, os.PathLike)):
                raise TypeError(f"checkpoint must be a path (str or os.PathLike), got {type(checkpoint).__name__}")
            self._on_root(lambda: check_output_path(checkpoint))
        try:
            callbacks = list(callbacks)
        except TypeError:
            raise TypeError(f"callbacks must be a sequence of callables, got {type(callbacks).__name__}") from None
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be a sequence of callables, got one {type(cb).__name__}")
        bar = _progress(steps, progress and self.is_root)
        tokens = self.seq_len * self.batch
        t0 = time.perf_counter()
        try:
            with _sigint_at_step_end() as interrupted:
                self._stop_requested = interrupted
                # Under MPI every rank must stop after the same step: the flag
                # travels with the step's Allreduce (_stop_all), not on its own.
                stop = interrupted if self.comm is None else (lambda: self._stop_all)
                for i in range(steps):
                    try:
                        loss = self.step()
                    except TrainingDiverged as exc:
                        raise TrainingDiverged(f"{exc}{self._last_good()}") from None
                    if bar is not None:
                        rate = (i + 1) * tokens / max(time.perf_counter() - t0, 1e-9)
                        bar.set_postfix(loss=f"{loss:.3f}", smooth=f"{self.smooth:.3f}",
                                        ppl=f"{math.exp(min(self.smooth, 50)):.2f}", tok_s=f"{rate:,.0f}", refresh=False)
                        bar.update(1)
                    if eval_every and self.val_ids is not None and self.is_root and self.step_count % eval_every == 0:
                        self.validate()
                    if checkpoint and checkpoint_every and self.step_count % checkpoint_every == 0:
                        self.save(checkpoint)
                    if any(cb(self, loss) for cb in callbacks):
                        break
                    if stop():
                        raise KeyboardInterrupt
                if bar is not None:
                    bar.close()
                # the last validation and save, still shielded: a Ctrl-C now waits for them
                if self.val_ids is not None and self.is_root and (not self.history.val_steps or self.history.val_steps[-1] != self.step_count):
                    self.validate()
                if checkpoint:
                    self.save(checkpoint)
        except (KeyboardInterrupt, SystemError) as exc:
            if not _from_interrupt(exc):
                raise
            self._interrupted(checkpoint)
        finally:
            self._stop_requested = lambda: False
            if bar is not None:
                bar.close()
        return self.history

    def _last_good(self):
        if self._saved_at is None:
            return "; no checkpoint was written"
        path, step = self._saved_at
        return f"; the last good checkpoint is {path} (step {step})"

    def _interrupted(self, checkpoint):
        where = None
        if checkpoint is not None and self._consistent and not self._diverged:
            self.save(checkpoint)
            where = checkpoint
            msg = f"interrupted after step {self.step_count}; the state is saved in {checkpoint}"
        elif checkpoint is not None and self._saved_at is not None:
            msg = f"interrupted during step {self.step_count + 1}{self._last_good()}"
        else:
            msg = f"interrupted after step {self.step_count}; no checkpoint was written"
        raise TrainingInterrupted(msg, self.step_count, where) from None

    def validate(self):
        """The loss on ``val_ids`` now; recorded in the history."""
        if self.val_ids is None:
            raise ValueError("validate() needs held-out tokens: pass val_ids= to the Trainer")
        with _threads.using(self.threads):
            loss = evaluate(self.model, self.val_ids, seq_len=self.seq_len)
        self.history.val_steps.append(self.step_count)
        self.history.val_loss.append(loss)
        return loss

    # -- checkpoints ---------------------------------------------------------
    def save(self, path):
        """Write the model, the optimizer and this trainer's state to ``path`` (atomically).
        Under MPI rank 0 writes, for every rank (all hold the same state)."""
        if self._diverged or not self._consistent:
            raise TrainingDiverged("refusing to save: the parameters are NaN or Inf or half-updated")
        if not self.is_root:
            self._saved_at = (path, self.step_count)
            return
        state = {
            "h": self.h,
            "batcher_position": np.array(self.batcher.position),
            "step": np.array(self.step_count),
            "ema": np.array(self._ema),
            "ema_steps": np.array(self._ema_steps),
        }
        for k, v in vars(self.history).items():
            state[f"history.{k}"] = np.asarray(v, dtype=np.float64)
        meta = {
            "seq_len": self.seq_len, "batch": self.batch, "clip": self.clip, "clip_norm": self.clip_norm,
            "optimizer": self.optimizer_name, "reduction": self.reduction, "corpus": corpus_fingerprint(self.train_ids),
            "ranks": 1 if self.comm is None else self.comm.Get_size(),
        }
        save_checkpoint(path, self.model, optimizer=self.optimizer, state=state, meta=meta)
        self._saved_at = (path, self.step_count)

    @classmethod
    def resume(cls, path, train_ids, *, val_ids=None, backend=None, threads=None, comm=None):
        """Continue from a checkpoint written by :meth:`save`, on the same tokens.
        The continued run is bit-identical to one that never stopped, with the
        same number of ranks. With another number (``comm``; every rank reads
        ``path``) the streams are split anew and ``resplit_from`` on the
        trainer names the number the checkpoint was written with."""
        model, extras = load_checkpoint(path, backend=backend)
        meta, state, optimizer = extras["meta"], extras["state"], extras["optimizer"]
        if optimizer is None:
            raise CheckpointError(f"{path}: holds a model but no optimizer: not a training checkpoint")
        try:
            trainer = cls(
                model, train_ids, seq_len=meta["seq_len"], batch=meta["batch"], optimizer=meta["optimizer"],
                lr=optimizer.lr, clip=meta["clip"], clip_norm=meta["clip_norm"], val_ids=val_ids,
                reduction=meta.get("reduction", "mean"), threads=threads, comm=comm,
            )
        except KeyError as exc:
            raise CheckpointError(f"{path}: not a training checkpoint (missing {exc})") from None
        except (TypeError, ValueError) as exc:
            if "train_ids" in str(exc) or "val_ids" in str(exc):
                raise
            raise CheckpointError(f"{path}: bad training settings ({exc})") from None
        if meta.get("corpus") != corpus_fingerprint(trainer.train_ids):
            tokens = meta.get("corpus", {}).get("tokens") if isinstance(meta.get("corpus"), dict) else None
            raise CheckpointError(f"{path}: was trained on other tokens ({tokens} training tokens, these are "
                                  f"{len(trainer.train_ids)}): another corpus, or another validation split of it")
        if type(optimizer) is not type(trainer.optimizer):
            raise CheckpointError(f"{path}: meta says optimizer {meta['optimizer']!r}, the state is {type(optimizer).__name__}")
        trainer.optimizer = optimizer
        ranks = 1 if comm is None else comm.Get_size()
        trainer.resplit_from = meta.get("ranks", 1) if meta.get("ranks", 1) != ranks else None
        try:
            trainer._restore(state, extras["version"])
            trainer._saved_at = (path, trainer.step_count)  # a good checkpoint to name if training diverges
        except KeyError as exc:
            raise CheckpointError(f"{path}: not a training checkpoint (missing {exc})") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad training state ({exc})") from None
        return trainer

    def _restore(self, state, version):
        h = state["h"]
        if h.shape != (self.batch, self.model.hidden) or h.dtype != self.model.dtype or not np.isfinite(h).all():
            raise ValueError(f"hidden state is {h.dtype}{h.shape}, expected finite {self.model.dtype}{(self.batch, self.model.hidden)}")
        position, step = state["batcher_position"], state["step"]
        for name, a, top in (("batcher_position", position, self.batcher.windows), ("step", step, None)):
            if a.shape != () or a.dtype.kind not in "iu" or a < 0 or (top is not None and a >= top):
                bound = f"[0, {top})" if top is not None else "a non-negative integer"
                raise ValueError(f"{name} must be {bound}, got {a!r}")
        history = {}
        for k in vars(self.history):
            values = state[f"history.{k}"]
            if values.ndim != 1 or values.dtype.kind != "f" or not np.isfinite(values).all():
                raise ValueError(f"history.{k} must be a 1-D finite float array")
            history[k] = [int(v) for v in values] if k.endswith("steps") else values.tolist()
        self.h = np.ascontiguousarray(h)
        self.batcher.position = int(position)
        self.step_count = int(step)
        if version == 1:  # 0.1.0 kept a plain moving average started at the first loss
            smooth = float(state["smooth"])
            self._ema_steps = 0 if math.isnan(smooth) else self.step_count
            self._ema = 0.0 if math.isnan(smooth) else smooth * (1 - SMOOTHING**self._ema_steps)
        else:
            ema, ema_steps = state["ema"], state["ema_steps"]
            if ema.shape != () or not np.isfinite(ema) or ema_steps.shape != () or ema_steps.dtype.kind not in "iu" or ema_steps < 0:
                raise ValueError("the smoothed-loss state is malformed")
            self._ema, self._ema_steps = float(ema), int(ema_steps)
        for k, v in history.items():
            setattr(self.history, k, v)


def _progress(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.5)
