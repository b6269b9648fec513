"""The training loop: truncated BPTT over parallel streams, with clipping,
validation, callbacks, checkpoints and a bit-exact resume."""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import _threads, api, optim
from .api import predict_proba
from .data import Batcher
from .model import CharRNN, CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["Trainer", "TrainingDiverged", "History", "evaluate"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


@dataclass
class History:
    steps: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    smooth_loss: list = field(default_factory=list)
    val_steps: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)


def evaluate(model, ids, *, batch=16, seq_len=100):
    """Mean negative log-likelihood (nats per token) of ``ids`` under ``model``,
    reading it as ``batch`` streams with the state carried across windows."""
    ids = np.asarray(ids)
    batch = max(1, min(batch, (len(ids) - 1) // 2))
    L = len(ids) // batch
    if L < 2:
        raise ValueError(f"need at least 2 tokens per stream to evaluate, got {len(ids)} tokens")
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


class Trainer:
    """Runs truncated-BPTT training of an :class:`CharRNN` on token ids.

    Each step takes the next (T, n) window from the batcher, starts from the
    hidden state the previous window ended in (zeros when the streams restart),
    computes the mean loss and gradients, clips them (``clip`` by value, or
    ``clip_norm`` by global norm) and lets the optimizer update the parameters
    in place.

    ``threads`` fixes the BLAS threads of this trainer's steps (a positive
    integer); None follows :func:`fastrnn.set_num_threads` (default: auto).
    """

    def __init__(
        self, model, train_ids, *, seq_len=50, batch=32, optimizer="adam", lr=None,
        clip=5.0, clip_norm=None, val_ids=None, optimizer_args=None, threads=None,
    ):
        if optimizer not in optim.OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(optim.OPTIMIZERS)}, got {optimizer!r}")
        self.model = model
        self.train_ids = np.asarray(train_ids)
        self.val_ids = None if val_ids is None else np.asarray(val_ids)
        self.batcher = Batcher(self.train_ids, batch, seq_len)
        self.seq_len, self.batch = seq_len, batch
        self.clip, self.clip_norm = clip, clip_norm
        kwargs = dict(optimizer_args or {})
        if lr is not None:
            kwargs["lr"] = lr
        self.optimizer_name = optimizer
        self.threads = _threads.check(threads)  # None: the global setting
        self._seen_params = self._checked = None
        self.optimizer = _make_optimizer(optimizer, model.params, kwargs)
        self.h = model.zero_state(batch)
        self.step_count = 0
        self.smooth = None
        self.history = History()

    # -- one step ----------------------------------------------------------
    def step(self):
        x, y, reset = self.batcher.next()
        if reset:
            self.h[...] = 0  # the streams start over: no state to carry
        with _threads.using(self.threads):
            params = self._trusted_params()
            if params is None:
                loss, grads, h_last = self.model.loss_and_grads(x, y, h0=self.h)
            else:  # parameters checked once; only the batch is checked per step
                loss, grads, h_last = api._step_loss_and_grads(params, x, y, self.h, self.model.backend)
        self.step_count += 1
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {self.step_count}")
        if self.clip_norm is not None:
            optim.clip_by_global_norm(grads, self.clip_norm)
        elif self.clip is not None:
            optim.clip_by_value(grads, self.clip)
        self.optimizer.step(grads)
        self.h = h_last
        self.smooth = loss if self.smooth is None else 0.99 * self.smooth + 0.01 * loss
        self.history.steps.append(self.step_count)
        self.history.loss.append(loss)
        self.history.smooth_loss.append(self.smooth)
        return loss

    def _trusted_params(self):
        """The model's parameters, checked when first seen (again if they are
        replaced); None when checking copied them, so that each step must check,
        or when the model's own ``loss_and_grads`` was replaced (it is called then)."""
        if "loss_and_grads" in vars(self.model) or type(self.model).loss_and_grads is not CharRNN.loss_and_grads:
            return None
        if self.model.params is not self._seen_params:
            p, same = api._checked_params(self.model.params)
            self._seen_params, self._checked = self.model.params, (p if same else None)
        return self._checked

    # -- the loop ----------------------------------------------------------
    def run(self, steps, *, progress=True, eval_every=None, checkpoint=None, checkpoint_every=None, callbacks=()):
        """Take ``steps`` more steps. ``callbacks`` are called as ``cb(trainer, loss)``
        after each step; one that returns True stops training. With ``checkpoint``
        (a path) the state is saved every ``checkpoint_every`` steps and at the
        end; if the loss diverges, the last good checkpoint is left in place and
        :class:`TrainingDiverged` names the step."""
        bar = _progress(steps, progress)
        tokens = self.seq_len * self.batch
        t0 = time.perf_counter()
        try:
            for i in range(steps):
                try:
                    loss = self.step()
                except TrainingDiverged as exc:
                    where = f"; the last good checkpoint is {checkpoint}" if checkpoint else ""
                    raise TrainingDiverged(f"{exc}{where}") from None
                if bar is not None:
                    rate = (i + 1) * tokens / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss:.3f}", smooth=f"{self.smooth:.3f}",
                                    ppl=f"{math.exp(min(self.smooth, 50)):.2f}", tok_s=f"{rate:,.0f}", refresh=False)
                    bar.update(1)
                if eval_every and self.val_ids is not None and self.step_count % eval_every == 0:
                    self.validate()
                if checkpoint and checkpoint_every and self.step_count % checkpoint_every == 0:
                    self.save(checkpoint)
                if any(cb(self, loss) for cb in callbacks):
                    break
        finally:
            if bar is not None:
                bar.close()
        if self.val_ids is not None and (not self.history.val_steps or self.history.val_steps[-1] != self.step_count):
            self.validate()
        if checkpoint:
            self.save(checkpoint)
        return self.history

    def validate(self):
        with _threads.using(self.threads):
            loss = evaluate(self.model, self.val_ids, seq_len=self.seq_len)
        self.history.val_steps.append(self.step_count)
        self.history.val_loss.append(loss)
        return loss

    # -- checkpoints ---------------------------------------------------------
    def save(self, path, rng=None):
        state = {
            "h": self.h,
            "batcher_position": np.array(self.batcher.position),
            "step": np.array(self.step_count),
            "smooth": np.array(np.nan if self.smooth is None else self.smooth),
        }
        for k, v in vars(self.history).items():
            state[f"history.{k}"] = np.asarray(v, dtype=np.float64)
        meta = {
            "seq_len": self.seq_len, "batch": self.batch, "clip": self.clip, "clip_norm": self.clip_norm,
            "optimizer": self.optimizer_name, "corpus": corpus_fingerprint(self.train_ids),
        }
        save_checkpoint(path, self.model, optimizer=self.optimizer, rng=rng, state=state, meta=meta)

    @classmethod
    def resume(cls, path, train_ids, *, val_ids=None, backend=None, threads=None):
        """Continue from a checkpoint written by :meth:`save`, on the same tokens.
        The continued run is bit-identical to one that never stopped."""
        model, extras = load_checkpoint(path, backend=backend)
        meta, state = extras["meta"], extras["state"]
        try:
            trainer = cls(
                model, train_ids, seq_len=meta["seq_len"], batch=meta["batch"], optimizer=meta["optimizer"],
                clip=meta["clip"], clip_norm=meta["clip_norm"], val_ids=val_ids,
                optimizer_args=extras["optimizer_args"], threads=threads,
            )
            if meta["corpus"] != corpus_fingerprint(trainer.train_ids):
                raise CheckpointError(f"{path}: was trained on another corpus ({meta['corpus']['tokens']} tokens)")
            trainer.optimizer.load_state_dict(extras["optimizer_state"])
            trainer.h = np.ascontiguousarray(state["h"])
            if trainer.h.shape != (meta["batch"], model.hidden):
                raise CheckpointError(f"{path}: hidden state has shape {trainer.h.shape}")
            trainer.batcher.position = int(state["batcher_position"])
            trainer.step_count = int(state["step"])
            smooth = float(state["smooth"])
            trainer.smooth = None if math.isnan(smooth) else smooth
            for k in vars(trainer.history):
                values = state[f"history.{k}"].tolist()
                setattr(trainer.history, k, [int(v) for v in values] if k.endswith("steps") else values)
        except KeyError as exc:
            raise CheckpointError(f"{path}: not a training checkpoint (missing {exc})") from None
        return trainer


def _make_optimizer(name, params, kwargs):
    cls = optim.OPTIMIZERS[name]
    if "beta1" in kwargs or "beta2" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
    return cls(params, **kwargs)


def _progress(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.5)
