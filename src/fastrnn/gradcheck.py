"""Check gradients against float64 central differences of the exact loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import api
from ._params import DeepParams, Params

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
    eps=1e-6, rtol=1e-6, max_entries=64, seed=0, check_A=True, lengths=None, ignore_index=-100,
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

    :class:`DeepParams`, ``lengths`` and ``ignore_index`` are checked too: then
    every cell's U, W, b (named ``l0.U``, ``l1r.W``, ... — ``r`` for the reversed
    direction), V, c, the initial states h0, X and each cell's dA
    (``l0.A``, ...) are compared.
    """
    if isinstance(params, DeepParams) or lengths is not None or np.any(np.asarray(targets) == ignore_index):
        return _gradcheck_general(
            params, inputs, targets, h0, reduction, batch_first, backend, grad_fn, eps, rtol, max_entries, seed,
            check_A, lengths, ignore_index,
        )
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


def _gradcheck_general(params, inputs, targets, h0, reduction, batch_first, backend, grad_fn, eps, rtol,
                       max_entries, seed, check_A, lengths, ignore_index):
    """gradcheck for the general model: every cell's tensors, h0 (L·D, n, h), X and each cell's dA."""
    from . import _validate as check
    from .backends import resolve

    rng = np.random.default_rng(seed)
    deep = isinstance(params, DeepParams)
    if deep:
        f64 = DeepParams(
            tuple(tuple(type(cell)(*(np.array(a, dtype=np.float64) for a in cell)) for cell in cells)
                  for cells in params.layers),
            np.array(params.V, dtype=np.float64), np.array(params.c, dtype=np.float64), params.nonlinearity,
        )
        D = f64.num_directions
        cells = [cell for layer in f64.layers for cell in layer]
    else:
        f64 = Params(*(np.array(a, dtype=np.float64) for a in params))
        D = 1
        cells = [(f64.U, f64.W, f64.b)]
    dense = np.asarray(inputs).dtype.kind == "f"
    x = np.array(inputs, dtype=np.float64) if dense else np.asarray(inputs)
    kw = dict(reduction=reduction, batch_first=batch_first, lengths=lengths, ignore_index=ignore_index)
    lead = np.shape(targets)
    h = cells[0][0].shape[1]
    unbatched = len(lead) == 1
    n = 1 if unbatched else (lead[0] if batch_first else lead[1])
    state_shape = (h,) if unbatched else (n, h)
    if deep:
        state_shape = (len(cells),) + state_shape
    h0_64 = np.zeros(state_shape) if h0 is None else np.array(h0, dtype=np.float64)

    fn = grad_fn if grad_fn is not None else (lambda *a, **k: api.loss_and_grads(*a, backend=backend, **k))
    _, grads, _ = fn(params, inputs, targets, h0=h0, **kw)

    def loss():
        return api.loss_and_grads(f64, x, targets, h0=h0_64, backend="numpy", **kw)[0]

    report = GradcheckReport(rtol=rtol)
    tensors = {}
    analytic = {}
    if deep:
        for l, layer in enumerate(f64.layers):
            for k, cell in enumerate(layer):
                name = f"l{l}{'r' if k else ''}"
                for f in "UWb":
                    tensors[f"{name}.{f}"] = getattr(cell, f)
                    analytic[f"{name}.{f}"] = getattr(grads.layers[l][k], f)
        tensors.update(V=f64.V, c=f64.c)
        analytic.update(V=grads.V, c=grads.c)
    else:
        for f in "UWVbc":
            tensors[f] = getattr(f64, f)
            analytic[f] = getattr(grads, f)
    tensors["h0"] = h0_64
    analytic["h0"] = grads.h0
    if dense:
        tensors["X"] = x
        analytic["X"] = grads.X
    for name, array in tensors.items():
        if analytic[name] is None:
            raise ValueError(f"the gradient function returned no d{name}")
        report.checks[name] = _check(name, np.asarray(analytic[name], np.float64), array, loss, eps, rtol,
                                     max_entries, rng)

    if check_A and getattr(grads, "A", None) is not None:
        # dL/dA_t of each cell by adding a probe to that cell's A_t alone (the reference takes probes).
        cells_v, D_v, V, c, relu, _ = api._unpack_params(f64)
        xv, layout = check.check_inputs(x, cells_v[0][0].shape[0], np.dtype(np.float64), batch_first)
        lv = check.check_lengths(lengths, layout)
        y, counted = check.check_targets_counted(targets, layout, V.shape[1], lv, ignore_index)
        h0v = api._states_from_user(h0_64, layout, deep, len(cells_v), h, np.dtype(np.float64))
        scale = check.check_mean_scale(reduction, counted)
        lv = api._full_lengths(lv, layout)
        ref = resolve("numpy")
        dAs = [grads.A] if not deep else [a for layer in grads.A for a in layer]
        for i, dA in enumerate(dAs):
            name = "A" if not deep else f"l{i // D}{'r' if i % D else ''}.A"
            dA_tm = np.asarray(dA, np.float64)
            dA_tm = dA_tm[:, None] if layout.unbatched else (dA_tm.swapaxes(0, 1) if layout.batch_first else dA_tm)
            E = np.zeros((layout.T, layout.n, h))
            picked = _pick(E.shape, max_entries, rng)
            numeric = np.empty(len(picked))
            for j, idx in enumerate(picked):
                vals = []
                for s in (eps, -eps):
                    E[idx] = s
                    vals.append(ref.deep_loss_and_grads(cells_v, D_v, V, c, xv, y, h0v, lv, scale, relu,
                                                        params_only=True, probes={i: E})[0])
                E[idx] = 0
                numeric[j] = (vals[0] - vals[1]) / (2 * eps)
            got = np.array([dA_tm[idx] for idx in picked])
            report.checks[name] = _summary(name, got, numeric, picked, E.size, rtol)
    return report
