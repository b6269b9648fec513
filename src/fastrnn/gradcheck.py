"""Check gradients against float64 central differences of the exact loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import api
from ._params import Params

__all__ = ["gradcheck", "GradcheckReport", "TensorCheck"]


@dataclass
class TensorCheck:
    name: str
    max_rel_error: float  #: max |analytic − numeric| / max |numeric| over the checked entries
    worst_index: tuple  #: where the largest |analytic − numeric| is
    checked: int  #: entries compared
    total: int  #: entries in the tensor
    passed: bool


@dataclass
class GradcheckReport:
    checks: dict = field(default_factory=dict)  #: name -> TensorCheck
    rtol: float = 1e-6

    @property
    def passed(self):
        return all(c.passed for c in self.checks.values())

    @property
    def failed(self):
        return [name for name, c in self.checks.items() if not c.passed]

    def __bool__(self):
        return self.passed

    def __str__(self):
        lines = [f"{'tensor':>6}  {'max rel err':>11}  {'worst index':<16} {'checked':>9}  result"]
        for c in self.checks.values():
            lines.append(
                f"{c.name:>6}  {c.max_rel_error:11.2e}  {str(c.worst_index):<16} {c.checked:>4}/{c.total:<4}  "
                + ("ok" if c.passed else "FAIL")
            )
        verdict = "passed" if self.passed else f"FAILED: {', '.join(self.failed)}"
        lines.append(f"gradcheck {verdict} (tolerance {self.rtol:.0e})")
        return "\n".join(lines)


def gradcheck(
    params, inputs, targets, *, h0=None, reduction="mean", batch_first=False, backend=None, grad_fn=None,
    eps=1e-6, rtol=1e-6, max_entries=64, seed=0, check_A=True,
):
    """Compare gradients with central differences of the loss, in float64.

    The loss is evaluated by the reference backend on float64 copies of the
    arguments, so the numbers are the exact model's whatever is being checked.
    The gradients checked are those of ``fastrnn.loss_and_grads(..., backend=backend)``
    or, with ``grad_fn``, of any callable with the same signature returning
    ``(loss, grads, h_last)`` where ``grads`` has fields U, W, V, b, c, h0, X and
    optionally A (dL/dA_t) — your own RNN, for instance.

    Every gradient is checked: U, W, V, b, c, h0, X (dense inputs) and, with
    ``check_A``, dL/dA_t for every timestep. Tensors larger than
    ``max_entries`` are checked on a random subset of entries drawn with
    ``seed``. A tensor passes when max |analytic − numeric| / max |numeric| is
    at most ``rtol``.

    Returns a :class:`GradcheckReport`; ``print`` it for a table, test it with
    ``report.passed``.
    """
    rng = np.random.default_rng(seed)
    f64 = Params(*(np.array(a, dtype=np.float64) for a in params))
    dense = np.asarray(inputs).dtype.kind == "f"
    x = np.array(inputs, dtype=np.float64) if dense else np.asarray(inputs)
    kw = dict(reduction=reduction, batch_first=batch_first)
    lead = np.shape(targets)  # (T, n), (n, T) or (T,)
    h = f64.U.shape[1]
    if h0 is not None:
        h0_64 = np.array(h0, dtype=np.float64)
    elif len(lead) == 1:  # one unbatched sequence
        h0_64 = np.zeros(h)
    else:
        h0_64 = np.zeros((lead[0] if batch_first else lead[1], h))

    fn = grad_fn if grad_fn is not None else (lambda *a, **k: api.loss_and_grads(*a, backend=backend, **k))
    _, grads, _ = fn(params, inputs, targets, h0=h0, **kw)

    def loss():
        return api.loss_and_grads(f64, x, targets, h0=h0_64, backend="numpy", **kw)[0]

    report = GradcheckReport(rtol=rtol)
    tensors = dict(zip("UWVbc", f64), h0=h0_64)
    if dense:
        tensors["X"] = x
    for name, array in tensors.items():
        analytic = getattr(grads, name)
        if analytic is None:
            raise ValueError(f"the gradient function returned no d{name}")
        report.checks[name] = _check(name, np.asarray(analytic, dtype=np.float64), array, loss, eps, rtol, max_entries, rng)

    if check_A and getattr(grads, "A", None) is not None:
        report.checks["A"] = _check_A(f64, x, dense, targets, h0_64, kw, np.asarray(grads.A, np.float64), eps, rtol, max_entries, rng)
    return report


def _pick(shape, max_entries, rng):
    every = list(np.ndindex(shape))
    if len(every) <= max_entries:
        return every
    return [every[i] for i in sorted(rng.choice(len(every), size=max_entries, replace=False))]


def _check(name, analytic, array, loss, eps, rtol, max_entries, rng):
    if analytic.shape != array.shape:
        raise ValueError(f"d{name} has shape {analytic.shape}, expected {array.shape}")
    picked = _pick(array.shape, max_entries, rng)
    numeric = np.empty(len(picked))
    for k, idx in enumerate(picked):
        old = array[idx]
        array[idx] = old + eps
        up = loss()
        array[idx] = old - eps
        down = loss()
        array[idx] = old
        numeric[k] = (up - down) / (2 * eps)
    got = np.array([analytic[idx] for idx in picked])
    return _summary(name, got, numeric, picked, array.size, rtol)


def _summary(name, got, numeric, picked, total, rtol):
    diff = np.abs(got - numeric)
    scale = max(np.abs(numeric).max(), np.finfo(np.float64).tiny)
    err = float(diff.max() / scale)
    worst = tuple(int(i) for i in picked[int(diff.argmax())])
    return TensorCheck(name, err, worst, len(picked), total, bool(err <= rtol))


def _check_A(params, x, dense, targets, h0, kw, analytic, eps, rtol, max_entries, rng):
    """dL/dA_t by perturbing A_t alone: extra inputs E with U' = [U; I] add E_t to A_t."""
    d, h = params.U.shape
    X = x if dense else np.eye(d)[x]  # token ids as the one-hot rows they stand for
    E = np.zeros(X.shape[:-1] + (h,))
    Xe = np.concatenate([X, E], axis=-1)
    pe = params._replace(U=np.vstack([params.U, np.eye(h)]))
    if analytic.shape != E.shape:
        raise ValueError(f"dA has shape {analytic.shape}, expected {E.shape}")
    picked = _pick(E.shape, max_entries, rng)
    numeric = np.empty(len(picked))
    for k, idx in enumerate(picked):
        vals = []
        for s in (eps, -eps):
            Xe[idx[:-1] + (d + idx[-1],)] = s
            vals.append(api.loss_and_grads(pe, Xe, targets, h0=h0, backend="numpy", **kw)[0])
        Xe[idx[:-1] + (d + idx[-1],)] = 0
        numeric[k] = (vals[0] - vals[1]) / (2 * eps)
    got = np.array([analytic[idx] for idx in picked])
    return _summary("A", got, numeric, picked, E.size, rtol)
