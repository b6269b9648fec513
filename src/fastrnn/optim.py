"""Optimizers and gradient clipping. Updates happen in place on the Params arrays.

Every optimizer takes the Params it updates and ``step(grads)`` with a
:class:`fastrnn.Grads` (only its U, W, V, b, c fields are used). State is kept
in arrays of the parameters' dtype, and ``state_dict()`` / ``load_state_dict()``
round-trip it exactly (for checkpoints).
"""

from __future__ import annotations

import numpy as np

from ._params import Params

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "OPTIMIZERS", "clip_by_value", "clip_by_global_norm"]

_FIELDS = Params._fields


def _param_grads(grads):
    return [getattr(grads, k) for k in _FIELDS]


def clip_by_value(grads, limit=5.0):
    """Clip every parameter gradient to [-limit, limit] in place (min-char-rnn's rule)."""
    for g in _param_grads(grads):
        np.clip(g, -limit, limit, out=g)
    return grads


def clip_by_global_norm(grads, max_norm):
    """Scale all parameter gradients together so their joint L2 norm is at most
    ``max_norm``; returns the norm before clipping."""
    norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in _param_grads(grads))))
    if norm > max_norm:
        scale = max_norm / norm
        for g in _param_grads(grads):
            g *= g.dtype.type(scale)
    return norm


class Optimizer:
    """Base class: holds the parameters, hyper-parameters and per-parameter state."""

    #: names of the per-parameter state arrays
    slots: tuple = ()

    def __init__(self, params, lr):
        if not isinstance(params, Params):
            raise TypeError(f"params must be a fastrnn.Params, got {type(params).__name__}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.params = params
        self.lr = float(lr)
        self.t = 0  # steps taken
        self.state = {s: [np.zeros_like(p) for p in params] for s in self.slots}

    def step(self, grads):
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, _param_grads(grads))):
            self._update(i, p, g)

    def _update(self, i, p, g):  # pragma: no cover - abstract
        raise NotImplementedError

    def _c(self, p, x):
        """A Python number as a scalar of p's dtype, so float32 stays float32."""
        return p.dtype.type(x)

    def state_dict(self):
        out = {"t": np.array(self.t), "lr": np.array(self.lr)}
        for s in self.slots:
            for k, a in zip(_FIELDS, self.state[s]):
                out[f"{s}.{k}"] = a.copy()
        return out

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.lr = float(state["lr"])
        for s in self.slots:
            for k, a in zip(_FIELDS, self.state[s]):
                src = np.asarray(state[f"{s}.{k}"])
                if src.shape != a.shape or src.dtype != a.dtype:
                    raise ValueError(f"optimizer state {s}.{k} is {src.dtype}{src.shape}, expected {a.dtype}{a.shape}")
                a[...] = src


class SGD(Optimizer):
    """p -= lr·g; with momentum μ: v = μ·v + g, p -= lr·v; Nesterov: p -= lr·(g + μ·v)."""

    def __init__(self, params, lr=0.1, momentum=0.0, nesterov=False):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs a momentum > 0")
        self.slots = ("velocity",) if momentum else ()
        super().__init__(params, lr)
        self.momentum, self.nesterov = momentum, nesterov

    def _update(self, i, p, g):
        lr = self._c(p, self.lr)
        if not self.momentum:
            p -= lr * g
            return
        mu = self._c(p, self.momentum)
        v = self.state["velocity"][i]
        v *= mu
        v += g
        p -= lr * (g + mu * v) if self.nesterov else lr * v


class Adagrad(Optimizer):
    """m += g²; p -= lr·g / sqrt(m + eps) (min-char-rnn's optimizer, eps = 1e-8)."""

    slots = ("sum_sq",)

    def __init__(self, params, lr=0.1, eps=1e-8):
        super().__init__(params, lr)
        self.eps = eps

    def _update(self, i, p, g):
        m = self.state["sum_sq"][i]
        m += g * g
        p -= self._c(p, self.lr) * g / np.sqrt(m + self._c(p, self.eps))


class RMSprop(Optimizer):
    """m = ρ·m + (1−ρ)·g²; p -= lr·g / (sqrt(m) + eps)."""

    slots = ("mean_sq",)

    def __init__(self, params, lr=1e-3, rho=0.9, eps=1e-8):
        super().__init__(params, lr)
        self.rho, self.eps = rho, eps

    def _update(self, i, p, g):
        m = self.state["mean_sq"][i]
        rho = self._c(p, self.rho)
        m *= rho
        m += (1 - rho) * g * g
        p -= self._c(p, self.lr) * g / (np.sqrt(m) + self._c(p, self.eps))


class Adam(Optimizer):
    """m = β1·m + (1−β1)·g; s = β2·s + (1−β2)·g²; p -= lr·m̂ / (sqrt(ŝ) + eps),
    with the bias corrections m̂ = m / (1 − β1ᵗ), ŝ = s / (1 − β2ᵗ)."""

    slots = ("m", "s")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps = eps

    def _update(self, i, p, g):
        m, s = self.state["m"][i], self.state["s"][i]
        b1, b2 = self._c(p, self.beta1), self._c(p, self.beta2)
        m *= b1
        m += (1 - b1) * g
        s *= b2
        s += (1 - b2) * g * g
        m_hat = m / self._c(p, 1 - self.beta1**self.t)
        s_hat = s / self._c(p, 1 - self.beta2**self.t)
        p -= self._c(p, self.lr) * m_hat / (np.sqrt(s_hat) + self._c(p, self.eps))


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam}
