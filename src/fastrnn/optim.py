"""Optimizers and gradient clipping. Updates happen in place on the Params arrays.

Every optimizer takes the parameters it updates — a :class:`fastrnn.Params`,
or a :class:`fastrnn.DeepParams` for stacked / bidirectional / relu models —
and ``step(grads)`` with the matching :class:`fastrnn.Grads` (only its U, W, V,
b, c fields are used) or :class:`fastrnn.DeepGrads` (its cells' U, W, b and the
head's V, c). Arrays are named by their path in the container (``U``, or
``layers[1][0].W`` for a deep model): in error messages and in
``state_dict()`` keys (``m.U``, ``m.layers[1][0].W``). State is kept
in arrays of the parameters' dtype. An optimizer describes itself with
``config()`` (its hyperparameters, plain numbers) and is rebuilt with
``type(opt)(params, **opt.config())``; ``state_dict()`` / ``load_state_dict()``
round-trip its state exactly (for checkpoints).

Hyperparameters are checked once, here, by :func:`check_hyperparameter`; the
command line uses the same rules and words. ``step`` checks the gradients once
per step (shape, dtype, and that they are finite: a NaN or Inf gradient raises
:class:`TrainingDiverged` before any parameter changes).
"""

from __future__ import annotations

import math

import numpy as np

from ._params import DeepGrads, DeepParams, Params
from ._validate import check_deep_params, check_params

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adam", "OPTIMIZERS", "DEFAULT_LR", "clip_by_value", "clip_by_global_norm",
    "check_hyperparameter", "TrainingDiverged",
]

_FIELDS = Params._fields


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or an updated parameter became NaN or Inf."""


#: What each kind of hyperparameter must be, in the words of the error messages.
RULES = {
    "positive": "a positive number",  # finite and > 0: lr, eps, clip, clip_norm
    "unit": "a number in [0, 1)",  # momentum, rho, beta1, beta2
}


def expectation(rule, value):
    """None when ``value`` obeys ``rule`` (a key of :data:`RULES`), else what was expected."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return RULES[rule]
    value = float(value)
    ok = (math.isfinite(value) and value > 0) if rule == "positive" else (0 <= value < 1)
    return None if ok else RULES[rule]


def check_hyperparameter(name, value, rule):
    """Return ``value`` as a float if it obeys ``rule``; else raise ValueError naming ``name``."""
    wanted = expectation(rule, value)
    if wanted is not None:
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return float(value)


def _named(tree):
    """[(path, array)] of the trainable arrays of a Params / Grads (by field) or a
    DeepParams / DeepGrads (each cell's U, W, b in torch's order, then V, c)."""
    if isinstance(tree, (DeepParams, DeepGrads)):
        named = [
            (f"layers[{l}][{k}].{f}", a)
            for l, cells in enumerate(tree.layers)
            for k, cell in enumerate(cells)
            for f, a in zip("UWb", cell)
        ]
        return named + [("V", tree.V), ("c", tree.c)]
    return [(k, getattr(tree, k, None)) for k in _FIELDS]


def _param_grads(grads):
    fields = ("layers", "V", "c") if isinstance(grads, DeepGrads) else _FIELDS
    if not all(hasattr(grads, f) for f in fields):  # any container with U, W, V, b, c will do (a Params, say)
        raise TypeError(f"grads must be a fastrnn.Grads or fastrnn.DeepGrads (fields {', '.join(_FIELDS)}), "
                        f"got {type(grads).__name__}")
    return [g for _, g in _named(grads)]


def clip_by_value(grads, limit=5.0):
    """Clip every parameter gradient to [-limit, limit] in place (min-char-rnn's rule)."""
    limit = check_hyperparameter("limit", limit, "positive")
    for g in _param_grads(grads):
        np.clip(g, -limit, limit, out=g)
    return grads


def clip_by_global_norm(grads, max_norm):
    """Scale all parameter gradients together so their joint L2 norm is at most
    ``max_norm``; returns the norm before clipping.

    Gradients holding NaN or Inf are left as they are (the norm returned is then
    NaN or Inf, and an optimizer's ``step`` raises :class:`TrainingDiverged`);
    finite gradients whose squares overflow their dtype are measured in units of
    their largest element instead."""
    max_norm = check_hyperparameter("max_norm", max_norm, "positive")
    gs = _param_grads(grads)
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in gs))
    if math.isinf(norm):  # overflowed squares, or an infinite gradient
        peak = max((float(np.max(np.abs(g))) for g in gs if g.size), default=0.0)
        if not math.isfinite(peak):
            return peak
        units = math.sqrt(sum(float(np.vdot(u, u)) for u in (g / g.dtype.type(peak) for g in gs)))
        scale = max_norm / peak / units  # norm = peak · units, which may overflow a float itself
        norm = peak * units
    elif norm > max_norm:
        scale = max_norm / norm
    else:
        return norm
    if scale < 1:
        for g in gs:
            g *= g.dtype.type(scale)
    return norm


def _all_finite(a):
    # min and max propagate NaN and see ±Inf: two reductions, no temporary array
    return a.size == 0 or (math.isfinite(a.min()) and math.isfinite(a.max()))


class Optimizer:
    """Base class: holds the parameters, hyper-parameters and per-parameter state."""

    #: names of the per-parameter state arrays
    slots: tuple = ()
    #: those that hold sums of squares: never negative (a hand-edited checkpoint could make them so)
    squares: tuple = ()

    def __init__(self, params, lr):
        if isinstance(params, DeepParams):
            check_deep_params(params)  # shapes chain, one float dtype, finite
        elif isinstance(params, Params):
            check_params(params)  # shapes agree, one float dtype, finite
        else:
            raise TypeError(f"params must be a fastrnn.Params or fastrnn.DeepParams, got {type(params).__name__}")
        self.params = params
        self._names = [k for k, _ in _named(params)]
        self._arrays = [a for _, a in _named(params)]  # updated in place, in this order
        for k, a in zip(self._names, self._arrays):
            if not isinstance(a, np.ndarray) or not a.flags.writeable:
                raise TypeError(f"params.{k} must be a writeable numpy array (updated in place), got "
                                f"{'a read-only array' if isinstance(a, np.ndarray) else type(a).__name__}")
        self.lr = self._hyperparameter("lr", lr, "positive")
        self.t = 0  # steps taken
        self.state = {s: [np.zeros_like(p) for p in self._arrays] for s in self.slots}

    def config(self):
        """The hyperparameters, as keyword arguments that rebuild this optimizer."""
        return {"lr": self.lr}

    def _hyperparameter(self, name, value, rule):
        """:func:`check_hyperparameter`, and the value must keep its meaning in the
        parameters' dtype: a positive number must not round to 0 or Inf (eps = 1e-50,
        lr = 1e39 in float32), a number in [0, 1) not to 1 (beta2 = 0.99999999)."""
        value = check_hyperparameter(name, value, rule)
        dtype = self._arrays[0].dtype
        with np.errstate(over="ignore"):
            there = dtype.type(value)
        if rule == "positive" and not (math.isfinite(there) and there > 0):
            raise ValueError(f"{name} must be {RULES[rule]} that {dtype} can hold (between "
                             f"{np.finfo(dtype).smallest_subnormal:.3g} and {np.finfo(dtype).max:.3g}), got {value!r}")
        if rule == "unit" and not there < 1:
            raise ValueError(f"{name} must be {RULES[rule]} that stays below 1 in {dtype}, got {value!r}")
        return value

    def check_grads(self, grads):
        """Refuse gradients that do not match the parameters, or are not finite.

        One check per array per step: shape and dtype (never broadcast, never
        cast), then NaN/Inf, which raises :class:`TrainingDiverged`.
        """
        gs = self._grad_arrays(grads)
        for k, p, g in zip(self._names, self._arrays, gs):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads.{k} must be a numpy array like params.{k}, got {type(g).__name__}")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"grads.{k} is {g.dtype}{g.shape}, params.{k} is {p.dtype}{p.shape}")
        for k, g in zip(self._names, gs):
            if not _all_finite(g):
                raise TrainingDiverged(f"grads.{k} contains NaN or Inf")

    def _grad_arrays(self, grads):
        """The gradient arrays in the order of the parameters; a deep model's grads
        must be a DeepGrads with the parameters' layers and directions."""
        if isinstance(self.params, DeepParams):
            if not isinstance(grads, DeepGrads):
                raise TypeError(f"grads must be a fastrnn.DeepGrads for DeepParams, got {type(grads).__name__}")
            want = [len(cells) for cells in self.params.layers]
            got = [len(cells) if isinstance(cells, (tuple, list)) else None for cells in grads.layers]
            if got != want:
                raise ValueError(
                    f"grads.layers holds {len(got)} layer(s) of {got} cell(s), params.layers "
                    f"{len(want)} of {want}"
                )
        elif isinstance(grads, DeepGrads):
            raise TypeError("grads must be a fastrnn.Grads for Params, got DeepGrads")
        return _param_grads(grads)

    def step(self, grads):
        """Check ``grads`` (see :meth:`check_grads`), then update the parameters in place."""
        self.check_grads(grads)
        self.apply(grads)

    def apply(self, grads):
        """The update alone, for callers that have just called :meth:`check_grads`."""
        self.t += 1
        for i, (p, g) in enumerate(zip(self._arrays, _param_grads(grads))):
            self._update(i, p, g)

    def _update(self, i, p, g):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _scalar(p, x):
        """A Python number as a scalar of p's dtype, so float32 stays float32."""
        return p.dtype.type(x)

    def state_dict(self):
        out = {"t": np.array(self.t), "lr": np.array(self.lr)}
        for s in self.slots:
            for k, a in zip(self._names, self.state[s]):
                out[f"{s}.{k}"] = a.copy()
        return out

    def load_state_dict(self, state):
        if not hasattr(state, "keys") or "t" not in state:
            raise ValueError("optimizer state must be a mapping with t (the steps taken) and the slots, as "
                             f"state_dict() gives; got a {type(state).__name__} without t")
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise ValueError(f"optimizer state t must be a non-negative integer, got {t!r}")
        lr = self._hyperparameter("optimizer state lr", float(state["lr"]), "positive") if "lr" in state else self.lr
        loaded = {}
        for s in self.slots:
            for k, a in zip(self._names, self.state[s]):
                if f"{s}.{k}" not in state:
                    raise ValueError(f"optimizer state has no {s}.{k} (saved for another model?)")
                src = np.asarray(state[f"{s}.{k}"])
                if src.shape != a.shape or src.dtype != a.dtype:
                    raise ValueError(f"optimizer state {s}.{k} is {src.dtype}{src.shape}, expected {a.dtype}{a.shape}")
                if not _all_finite(src):
                    raise ValueError(f"optimizer state {s}.{k} contains NaN or Inf")
                if s in self.squares and src.size and src.min() < 0:
                    raise ValueError(f"optimizer state {s}.{k} holds {src.min()}: a sum of squares is never negative")
                loaded[s, k] = src
        self.t, self.lr = int(t), lr
        for s in self.slots:
            for k, a in zip(self._names, self.state[s]):
                a[...] = loaded[s, k]


#: The default learning rate of each optimizer, for the library and the command line alike.
DEFAULT_LR = {"adam": 3e-3, "rmsprop": 2e-3, "adagrad": 0.1, "sgd": 0.5}


class SGD(Optimizer):
    """p -= lr·g; with momentum μ: v = μ·v + g, p -= lr·v; Nesterov: p -= lr·(g + μ·v)."""

    def __init__(self, params, lr=DEFAULT_LR["sgd"], momentum=0.0, nesterov=False):
        momentum = check_hyperparameter("momentum", momentum, "unit")  # again in the dtype below
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs a momentum > 0")
        self.slots = ("velocity",) if momentum else ()
        super().__init__(params, lr)
        self.momentum, self.nesterov = self._hyperparameter("momentum", momentum, "unit"), bool(nesterov)

    def config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}

    def _update(self, i, p, g):
        lr = self._scalar(p, self.lr)
        if not self.momentum:
            p -= lr * g
            return
        mu = self._scalar(p, self.momentum)
        v = self.state["velocity"][i]
        v *= mu
        v += g
        p -= lr * (g + mu * v) if self.nesterov else lr * v


class Adagrad(Optimizer):
    """m += g²; p -= lr·g / sqrt(m + eps) (min-char-rnn's optimizer, eps = 1e-8)."""

    slots = squares = ("sum_sq",)

    def __init__(self, params, lr=DEFAULT_LR["adagrad"], eps=1e-8):
        super().__init__(params, lr)
        self.eps = self._hyperparameter("eps", eps, "positive")

    def config(self):
        return {"lr": self.lr, "eps": self.eps}

    def _update(self, i, p, g):
        m = self.state["sum_sq"][i]
        m += g * g
        p -= self._scalar(p, self.lr) * g / np.sqrt(m + self._scalar(p, self.eps))


class RMSprop(Optimizer):
    """m = ρ·m + (1−ρ)·g²; p -= lr·g / (sqrt(m) + eps)."""

    slots = squares = ("mean_sq",)

    def __init__(self, params, lr=DEFAULT_LR["rmsprop"], rho=0.9, eps=1e-8):
        super().__init__(params, lr)
        self.rho = self._hyperparameter("rho", rho, "unit")
        self.eps = self._hyperparameter("eps", eps, "positive")

    def config(self):
        return {"lr": self.lr, "rho": self.rho, "eps": self.eps}

    def _update(self, i, p, g):
        m = self.state["mean_sq"][i]
        rho = self._scalar(p, self.rho)
        m *= rho
        m += (1 - rho) * g * g
        p -= self._scalar(p, self.lr) * g / (np.sqrt(m) + self._scalar(p, self.eps))


class Adam(Optimizer):
    """m = β1·m + (1−β1)·g; s = β2·s + (1−β2)·g²; p -= lr·m̂ / (sqrt(ŝ) + eps),
    with the bias corrections m̂ = m / (1 − β1ᵗ), ŝ = s / (1 − β2ᵗ)."""

    slots, squares = ("m", "s"), ("s",)

    def __init__(self, params, lr=DEFAULT_LR["adam"], betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.beta1 = self._hyperparameter("beta1", beta1, "unit")
        self.beta2 = self._hyperparameter("beta2", beta2, "unit")
        self.eps = self._hyperparameter("eps", eps, "positive")

    def config(self):
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps}

    def _update(self, i, p, g):
        m, s = self.state["m"][i], self.state["s"][i]
        b1, b2 = self._scalar(p, self.beta1), self._scalar(p, self.beta2)
        m *= b1
        m += (1 - b1) * g
        s *= b2
        s += (1 - b2) * g * g
        m_hat = m / self._scalar(p, 1 - self.beta1**self.t)
        s_hat = s / self._scalar(p, 1 - self.beta2**self.t)
        p -= self._scalar(p, self.lr) * m_hat / (np.sqrt(s_hat) + self._scalar(p, self.eps))


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam}


def make_optimizer(name, params, kwargs=None):
    """Build optimizer ``name`` (a key of :data:`OPTIMIZERS`) on ``params``.

    ``kwargs`` are its constructor's keyword arguments; Adam also takes
    ``beta1`` and/or ``beta2`` on their own (the other keeps its default).
    """
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"optimizer keyword arguments must be a dict, got {type(kwargs).__name__}")
    kwargs = dict(kwargs or {})
    if name == "adam" and ("beta1" in kwargs or "beta2" in kwargs):
        if "betas" in kwargs:
            raise ValueError("give Adam either betas or beta1/beta2, not both")
        kwargs["betas"] = (kwargs.pop("beta1", 0.9), kwargs.pop("beta2", 0.999))
    try:
        return OPTIMIZERS[name](params, **kwargs)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise TypeError(f"optimizer {name!r}: {exc}") from None
        raise
