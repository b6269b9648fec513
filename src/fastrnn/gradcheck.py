"""Check gradients against float64 central differences of the exact loss.

Each finite difference runs the forward pass and the loss only (never a
backward pass), in float64, in plain numpy; perturbed copies run side by side
(one matrix product per timestep for many of them), and a perturbation that
cannot change the first ``t`` steps (an output-layer weight, ``A_t``, ``X_t``, a
token's row of ``U``) reuses them and recomputes from ``t``.

How the step and the tolerance are chosen (compare ``torch.autograd.gradcheck``,
whose defaults are ``eps=1e-6``, ``atol=1e-5``, ``rtol=1e-3`` for float64 inputs):

* **step**: a central difference has truncation error ~ eps²·|f'''|/6 and
  rounding error ~ ε·|L|/eps, where ε = 2.2e-16 is float64's machine epsilon;
  their sum is smallest near eps = ε^(1/3) ≈ 6e-6 times the entry's scale. The
  default step for an entry x is ``6.06e-6 · max(1, |x|)``.
* **tolerance**: a tensor passes when
  ``max |analytic − numeric| ≤ rtol · max |numeric| + atol``. ``rtol`` defaults to
  ``max(1e-6, 100·ε_dtype)`` for the dtype of the gradients checked: 1e-6 for
  float64 (what central differences resolve), 1.2e-5 for float32 (float32
  rounding in sums of T·n terms). ``atol`` is the rounding noise of the
  difference itself, estimated from the loss's magnitude: ``8·ε·S / eps`` with S
  the sum of the absolute values of the loss's terms (times its scale).

A 1e-3 relative error in any one gradient entry is far above both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import api
from ._params import DeepParams, Params

__all__ = ["gradcheck", "GradcheckReport", "TensorCheck"]

_EPS64 = float(np.finfo(np.float64).eps)
DEFAULT_STEP = _EPS64 ** (1 / 3)  # ≈ 6.06e-6
FD_RTOL = 1e-6


@dataclass
class TensorCheck:
    name: str
    max_rel_error: float  #: max |analytic − numeric| / max |numeric| over the checked entries
    worst_index: tuple  #: where the largest |analytic − numeric| is
    checked: int  #: entries compared
    total: int  #: entries in the tensor
    passed: bool
    allowed: float = 0.0  #: the relative error this tensor was allowed: rtol + atol / max |numeric|


@dataclass
class GradcheckReport:
    checks: dict = field(default_factory=dict)  #: name -> TensorCheck
    rtol: float = 1e-6
    eps: object = None  #: the step used (None: the default rule)
    skipped: list = field(default_factory=list)  #: gradients the grad_fn did not return (h0, X or A)

    @property
    def passed(self):
        return all(c.passed for c in self.checks.values())

    @property
    def failed(self):
        return [name for name, c in self.checks.items() if not c.passed]

    def __bool__(self):
        return self.passed

    def __str__(self):
        lines = [f"{'tensor':>6}  {'max rel err':>11}  {'allowed':>8}  {'worst index':<16} {'checked':>9}  result"]
        for c in self.checks.values():
            lines.append(
                f"{c.name:>6}  {c.max_rel_error:11.2e}  {c.allowed:8.1e}  {str(c.worst_index):<16} {c.checked:>4}/{c.total:<4}  "
                + ("ok" if c.passed else "FAIL")
            )
        verdict = "passed" if self.passed else f"FAILED: {', '.join(self.failed)}"
        skipped = f"; not returned: {', '.join(self.skipped)}" if self.skipped else ""
        lines.append(f"gradcheck {verdict} (rtol {self.rtol:.1e} plus the differences' rounding noise{skipped})")
        return "\n".join(lines)


def gradcheck(
    params, inputs, targets, *, h0=None, reduction="mean", batch_first=False, backend=None, grad_fn=None,
    eps=None, rtol=None, max_entries=64, seed=0, check_A=True, lengths=None, ignore_index=-100,
):
    """Compare gradients with central differences of the loss, in float64.

    The loss is evaluated on float64 copies of the arguments (forward pass and
    loss only), so the numbers are the exact model's whatever is being checked.
    The gradients checked are those of ``fastrnn.loss_and_grads(..., backend=backend)``
    or, with ``grad_fn``, of any callable with the same signature returning
    ``(loss, grads, h_last)`` where ``grads`` has fields U, W, V, b, c, h0, X and
    optionally A (dL/dA_t) — your own RNN, for instance. A grad_fn that returns
    None for h0, X or A has those skipped (listed in ``report.skipped``).

    Every gradient is checked: U, W, V, b, c, h0, X (dense inputs) and, with
    ``check_A``, dL/dA_t for every timestep. Tensors larger than
    ``max_entries`` are checked on a random subset of entries drawn with
    ``seed``. ``eps`` (the step) and ``rtol`` default to the rule in this
    module's docstring; an explicit ``eps`` is an absolute step.

    Returns a :class:`GradcheckReport`; ``print`` it for a table, test it with
    ``report.passed``.

    :class:`DeepParams`, ``lengths`` and ``ignore_index`` are checked too: then
    every cell's U, W, b (named ``l0.U``, ``l1r.W``, ... — ``r`` for the reversed
    direction), V, c, the initial states h0, X and each cell's dA
    (``l0.A``, ...) are compared, with the same step and tolerance rule.
    """
    if eps is not None and not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite step, got {eps!r}")
    if rtol is not None and not (isinstance(rtol, (int, float, np.floating)) and math.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be a positive finite number, got {rtol!r}")
    if isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer)) or max_entries < 1:
        raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
    if grad_fn is not None and not callable(grad_fn):
        raise TypeError(f"grad_fn must be callable, got {type(grad_fn).__name__}")
    if isinstance(params, DeepParams) or lengths is not None or api._general(params, None, targets, ignore_index):
        return _gradcheck_general(
            params, inputs, targets, h0, reduction, batch_first, backend, grad_fn, eps, rtol, max_entries, seed,
            check_A, lengths, ignore_index,
        )

    kw = dict(reduction=reduction, batch_first=batch_first)
    # Validate everything once, the way every public function does.
    api.predict_proba(params, inputs, h0=h0, batch_first=batch_first, backend="numpy")
    api.loss_and_grads(params, inputs, targets, h0=h0, params_only=True, backend="numpy", **kw)

    fn = grad_fn if grad_fn is not None else (lambda *a, **k: api.loss_and_grads(*a, backend=backend, **k))
    result = fn(params, inputs, targets, h0=h0, **kw)
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError(f"the gradient function must return (loss, grads, h_last), got {type(result).__name__}")
    grads = result[1]
    if grads is None:
        raise ValueError("the gradient function returned grads=None")

    f64 = Params(*(np.array(a, dtype=np.float64) for a in params))
    layout = _Layout(np.shape(targets), batch_first)
    dense = np.asarray(inputs).dtype.kind == "f"
    x = layout.tm(np.array(inputs, dtype=np.float64) if dense else np.asarray(inputs))
    y = layout.tm(np.asarray(targets))
    T, n = y.shape
    h = f64.U.shape[1]
    h0_64 = np.zeros((n, h)) if h0 is None else layout.tm_state(np.array(h0, dtype=np.float64))
    scale = 1.0 / (T * n) if reduction == "mean" else 1.0
    loss = _ForwardLoss(f64, x, y, h0_64, scale)

    analytic_dtype = None
    for name in Params._fields:
        if getattr(grads, name, None) is None:
            raise ValueError(f"the gradient function returned no d{name} (grads.{name} is None)")
        analytic_dtype = np.asarray(getattr(grads, name)).dtype
    if rtol is None:
        e = np.finfo(analytic_dtype).eps if analytic_dtype.kind == "f" else _EPS64
        rtol = max(FD_RTOL, 100 * float(e))

    report = GradcheckReport(rtol=rtol, eps=eps)
    rng = np.random.default_rng(seed)
    tensors = {k: getattr(f64, k) for k in Params._fields}
    tensors["h0"] = h0_64
    if dense:
        tensors["X"] = x
    for name, array in tensors.items():
        analytic = getattr(grads, name, None)
        if analytic is None:
            report.skipped.append(name)
            continue
        analytic = np.asarray(analytic, dtype=np.float64)
        if name in ("h0", "X"):
            expected_user = layout.user_shape(array.shape, state=name == "h0")
            if analytic.shape != expected_user:
                raise ValueError(f"d{name} has shape {analytic.shape}, expected {expected_user}")
            analytic = layout.tm_state(analytic) if name == "h0" else layout.tm(analytic)
        elif analytic.shape != array.shape:
            raise ValueError(f"d{name} has shape {analytic.shape}, expected {array.shape}")
        report.checks[name] = _check(name, analytic, array, loss, layout, eps, rtol, max_entries, rng)

    A = getattr(grads, "A", None)
    if check_A and A is not None:
        expected_user = layout.user_shape((T, n, h))
        A = np.asarray(A, dtype=np.float64)
        if A.shape != expected_user:
            raise ValueError(f"dA has shape {A.shape}, expected {expected_user}")
        report.checks["A"] = _check("A", layout.tm(A), np.zeros((T, n, h)), loss, layout, eps, rtol, max_entries, rng)
    elif check_A:
        report.skipped.append("A")
    return report


class _Layout:
    """The caller's layout of the sequence axes, and time-major (T, n, ...) views of it."""

    def __init__(self, target_shape, batch_first):
        self.unbatched = len(target_shape) == 1
        self.batch_first = batch_first and not self.unbatched

    def tm(self, a):
        if self.unbatched:
            return np.ascontiguousarray(a[:, None])
        return np.ascontiguousarray(a.swapaxes(0, 1)) if self.batch_first else a

    def tm_state(self, a):
        return a[None] if self.unbatched else a

    def user_shape(self, tm_shape, state=False):
        if self.unbatched:
            return tm_shape[1:] if state else (tm_shape[0],) + tm_shape[2:]
        if state or not self.batch_first:
            return tuple(tm_shape)
        return (tm_shape[1], tm_shape[0]) + tuple(tm_shape[2:])

    def user_index(self, name, idx):
        if name in ("X", "A"):
            if self.unbatched:
                return (idx[0],) + idx[2:]
            return (idx[1], idx[0]) + idx[2:] if self.batch_first else idx
        if name == "h0" and self.unbatched:
            return idx[1:]
        return idx


class _ForwardLoss:
    """The loss in float64, time-major, forward pass only, for many perturbed copies at once.

    A perturbation of one entry by ``s`` changes the forward pass additively:
    W_ij adds s·H_{t-1}[:, i] to A_t[:, j]; U_ij adds s·X_t[:, i] (for token ids,
    s where the token is i); b_j adds s to A_t[:, j]; X_t[r, i] adds s·U_i to
    A_t[r]; A_t[r, j] is bumped directly; h0 starts the recurrence elsewhere;
    V_ij adds s·H_t[:, i] and c_j adds s to O_t[:, j]. :meth:`losses` runs up to
    ``chunk`` perturbed copies side by side (one GEMM per timestep for all of
    them), from the first timestep any of them can change; earlier timesteps
    reuse the unperturbed run.
    """

    chunk = 32

    def __init__(self, p, x, y, h0, scale):
        self.p, self.x, self.y, self.h0, self.scale = p, x, y, h0, scale
        self.ids = x.dtype.kind in "iu"
        self.XU = p.U[x] if self.ids else x @ p.U  # X_t U for every t
        T, n = y.shape
        self.base_H = np.empty((T, n, p.U.shape[1]))
        prev = h0
        for t in range(T):
            prev = self.base_H[t] = np.tanh(self.XU[t] + prev @ p.W + p.b)  # H_t = tanh(X_t U + H_{t-1} W + b)
        O = self.base_H @ p.V + p.c  # O_t = H_t V + c
        terms = self._nll(O, self.y)  # (T, n): −log softmax(O_t)[y_t]
        self.base_terms = terms.sum(axis=1)  # per timestep
        # rounding noise of one evaluation: a few ulps of every term it adds up
        self.noise = 8 * _EPS64 * scale * float((np.abs(terms) + np.abs(O).max(-1)).sum())

    @staticmethod
    def _nll(O, y):
        m = O.max(-1)
        lse = m + np.log(np.exp(O - m[..., None]).sum(-1))  # log Σ exp O_t
        return lse - np.take_along_axis(O, y[..., None], -1)[..., 0]

    def first_use(self, name, idx):
        """The first timestep whose state a change of entry ``idx`` of ``name`` can alter."""
        if name in ("X", "A"):
            return idx[0]
        if name == "U" and self.ids:
            hits = np.flatnonzero((self.x == idx[0]).any(axis=1))
            return int(hits[0]) if len(hits) else len(self.x)
        return 0

    def losses(self, name, picked, steps):
        """L with entry picked[k] of ``name`` moved by steps[k], for every k."""
        out = np.empty(len(picked))
        for lo in range(0, len(picked), self.chunk):
            out[lo : lo + self.chunk] = self._chunk(name, picked[lo : lo + self.chunk], steps[lo : lo + self.chunk])
        return out

    def _chunk(self, name, picked, s):
        p, T = self.p, len(self.y)
        K, n, h = len(picked), self.y.shape[1], p.U.shape[1]
        idx = np.array(picked).reshape(K, -1)
        k = np.arange(K)
        if name in ("V", "c"):  # only the output layer moves
            O = np.broadcast_to(self.base_H @ p.V + p.c, (K, T, n, p.V.shape[1])).copy()
            j = idx[:, -1]
            O[k, :, :, j] += s[:, None, None] * (self.base_H[:, :, idx[:, 0]].transpose(2, 0, 1) if name == "V" else 1.0)
            return self.scale * self._nll(O, np.broadcast_to(self.y, (K, T, n))).sum(axis=(1, 2))
        start = min(self.first_use(name, tuple(i)) for i in picked)
        total = np.full(K, self.base_terms[:start].sum())
        prev = np.broadcast_to(self.h0 if start == 0 else self.base_H[start - 1], (K, n, h)).copy()
        if name == "h0":
            prev[k, idx[:, 0], idx[:, 1]] += s
        for t in range(start, T):
            a = (prev.reshape(K * n, h) @ p.W).reshape(K, n, h) + (self.XU[t] + p.b)
            if name == "W":  # W_ij += s: A_t[:, j] += s·H_{t-1}[:, i]
                a[k, :, idx[:, 1]] += s[:, None] * prev[k, :, idx[:, 0]]
            elif name == "U":  # U_ij += s: A_t[:, j] += s·X_t[:, i]
                xi = (self.x[t][None, :] == idx[:, :1]) if self.ids else self.x[t][:, idx[:, 0]].T
                a[k, :, idx[:, 1]] += s[:, None] * xi
            elif name == "b":
                a[k, :, idx[:, 0]] += s[:, None]
            elif name in ("X", "A"):
                now = idx[:, 0] == t
                if now.any():
                    kk, r = k[now], idx[now, 1]
                    if name == "X":  # X_t[r, i] += s: A_t[r] += s·U_i
                        a[kk, r] += s[now, None] * p.U[idx[now, 2]]
                    else:  # A_t[r, j] += s
                        a[kk, r, idx[now, 2]] += s[now]
            prev = np.tanh(a)  # H_t = tanh(A_t)
            O = (prev.reshape(K * n, h) @ p.V).reshape(K, n, -1) + p.c
            total += self._nll(O, np.broadcast_to(self.y[t], (K, n))).sum(axis=1)
        return self.scale * total


def _pick(shape, max_entries, rng):
    size = math.prod(shape)
    flat = np.arange(size) if size <= max_entries else np.sort(rng.choice(size, size=max_entries, replace=False))
    return [tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat]


def _check(name, analytic, array, loss, layout, eps, rtol, max_entries, rng):
    picked = _pick(array.shape, max_entries, rng)
    values = np.array([abs(float(array[i])) for i in picked])
    steps = np.full(len(picked), float(eps)) if eps is not None else DEFAULT_STEP * np.maximum(1.0, values)
    pairs = [i for i in picked for _ in (0, 1)]
    both = loss.losses(name, pairs, np.stack([steps, -steps], axis=1).ravel())  # L(x + step), L(x − step)
    numeric = (both[0::2] - both[1::2]) / (2 * steps)
    got = np.array([analytic[idx] for idx in picked])
    atol = loss.noise / steps.min()
    diff = np.abs(got - numeric)
    scale = max(float(np.abs(numeric).max()), np.finfo(np.float64).tiny)
    err = float(diff.max() / scale)
    allowed = rtol + atol / scale
    worst = layout.user_index(name, picked[int(diff.argmax())])
    return TensorCheck(name, err, worst, len(picked), array.size, bool(err <= allowed), allowed)


# --------------------------------------------------------------------------
# The general model: lengths, ignore_index, relu, layers, directions. The loss
# is the reference's forward pass over padded, masked sequences (no backward),
# one perturbed entry at a time; the step and the tolerance follow the rule above.
# --------------------------------------------------------------------------


class _GeneralLoss:
    """The general model's loss in float64, forward only; ``probes`` perturb a cell's A_t."""

    def __init__(self, cells, D, V, c, x, y, h0, lengths, scale, relu):
        from .backends import reference

        self.ref = reference
        self.args = cells, D, V, c, x, y, h0, lengths, scale, relu
        terms, O = self._terms()
        self.noise = 8 * _EPS64 * scale * float((np.abs(terms) + np.abs(O).max(-1) * (y >= 0)).sum())

    def _terms(self, probes=None):
        cells, D, V, c, x, y, h0, lengths, scale, relu = self.args
        ref = self.ref
        mask = ref._mask(lengths, len(x))
        top, _, _ = ref._stack_forward(cells, D, x, h0, mask, relu, probes)
        O = top @ V + c  # O_t = [H_t fwd | rev] V + c
        logY = ref._log_softmax(O)
        counted = y >= 0
        picked = np.take_along_axis(logY, np.where(counted, y, 0)[..., None], -1)[..., 0]
        return -np.where(counted, picked, 0.0), O  # −log Ŷ_t[y_t] where counted

    def __call__(self, probes=None):
        return self.args[8] * float(self._terms(probes)[0].sum())


def _gradcheck_general(params, inputs, targets, h0, reduction, batch_first, backend, grad_fn, eps, rtol,
                       max_entries, seed, check_A, lengths, ignore_index):
    """gradcheck for the general model: every cell's tensors, h0 (L·D, n, h), X and each cell's dA."""
    from . import _validate as check

    kw = dict(reduction=reduction, batch_first=batch_first, lengths=lengths, ignore_index=ignore_index)
    # Validate everything once, the way every public function does.
    api.loss_and_grads(params, inputs, targets, h0=h0, params_only=True, backend="numpy", **kw)
    fn = grad_fn if grad_fn is not None else (lambda *a, **k: api.loss_and_grads(*a, backend=backend, **k))
    result = fn(params, inputs, targets, h0=h0, **kw)
    if not isinstance(result, tuple) or len(result) != 3 or result[1] is None:
        raise TypeError("the gradient function must return (loss, grads, h_last) with grads not None")
    grads = result[1]

    deep = isinstance(params, DeepParams)
    fields = ("layers", "V", "c") if deep else ("U", "W", "V", "b", "c")
    if not all(hasattr(grads, f) for f in fields):
        raise TypeError(f"the gradient function must return grads with {', '.join(fields)} (a fastrnn."
                        f"{'DeepGrads' if deep else 'Grads'} for {type(params).__name__}), got {type(grads).__name__}")
    if deep:
        f64 = DeepParams(
            tuple(tuple(type(cell)(*(np.array(a, dtype=np.float64) for a in cell)) for cell in cells)
                  for cells in params.layers),
            np.array(params.V, dtype=np.float64), np.array(params.c, dtype=np.float64), params.nonlinearity,
        )
    else:
        f64 = Params(*(np.array(a, dtype=np.float64) for a in params))
    # The arrays the loss reads, time-major; perturbing them in place moves the loss.
    cells, D, V, c, relu, _ = api._unpack_params(f64)
    f8 = np.dtype(np.float64)
    dense = np.asarray(inputs).dtype.kind == "f"
    x, layout = check.check_inputs(np.array(inputs, dtype=np.float64) if dense else inputs, cells[0][0].shape[0], f8,
                                   batch_first)
    lv = check.check_lengths(lengths, layout)
    y, counted = check.check_targets_counted(targets, layout, V.shape[1], lv, check.check_ignore_index(ignore_index))
    h = cells[0][0].shape[1]
    h0_64 = api._states_from_user(None if h0 is None else np.array(h0, dtype=np.float64), layout, deep, len(cells),
                                  h, f8)
    scale = check.check_mean_scale(reduction, counted)
    loss = _GeneralLoss(cells, D, V, c, x, y, h0_64, api._full_lengths(lv, layout), scale, relu)

    def tm(a, state=False):
        """The caller's layout -> the time-major one the loss reads."""
        a = np.asarray(a, dtype=np.float64)
        if state:
            return a if not layout.unbatched else (a[:, None] if deep else a[None])
        return layout_tm(a)

    def layout_tm(a):
        if layout.unbatched:
            return a[:, None]
        return a.swapaxes(0, 1) if layout.batch_first else a

    user = _Layout(np.shape(targets), batch_first)  # worst indices are reported in the caller's layout
    tensors, analytic = {}, {}
    if deep:
        for i, (U, W, b) in enumerate(cells):
            name = f"l{i // D}{'r' if i % D else ''}"
            g = grads.layers[i // D][i % D]
            for f, a, ga in zip("UWb", (U, W, b), g):
                tensors[f"{name}.{f}"], analytic[f"{name}.{f}"] = a, ga
        tensors.update(V=V, c=c)
        analytic.update(V=grads.V, c=grads.c)
    else:
        (U, W, b), = cells
        for f, a in zip("UWVbc", (U, W, V, b, c)):
            tensors[f], analytic[f] = a, getattr(grads, f)
    tensors["h0"] = h0_64 if deep else h0_64[0]
    analytic["h0"] = None if grads.h0 is None else (tm(grads.h0, state=True) if deep else
                                                     (np.asarray(grads.h0, np.float64)[None] if layout.unbatched
                                                      else np.asarray(grads.h0, np.float64)))
    if dense:
        tensors["X"], analytic["X"] = x, None if grads.X is None else tm(grads.X)

    first = next(a for a in analytic.values() if a is not None)
    if rtol is None:
        e = np.finfo(np.asarray(first).dtype).eps if np.asarray(first).dtype.kind == "f" else _EPS64
        rtol = max(FD_RTOL, 100 * float(e))
    report = GradcheckReport(rtol=rtol, eps=eps)
    rng = np.random.default_rng(seed)
    for name, array in tensors.items():
        if analytic[name] is None:
            report.skipped.append(name)
            continue
        got_all = np.asarray(analytic[name], dtype=np.float64)
        if got_all.shape != array.shape:
            raise ValueError(f"d{name} has shape {got_all.shape}, expected {array.shape} (time-major)")
        where = (lambda i, name=name: user.user_index(name, i)) if name == "X" else None
        if name == "h0" and layout.unbatched:
            where = (lambda i: i[:-2] + i[-1:])  # drop the batch axis of one
        report.checks[name] = _check_one_at_a_time(name, got_all, array, loss, eps, rtol, max_entries, rng,
                                                   user_index=where)

    if check_A and getattr(grads, "A", None) is not None:
        dAs = [grads.A] if not deep else [a for layer in grads.A for a in layer]
        for i, dA in enumerate(dAs):
            name = "A" if not deep else f"l{i // D}{'r' if i % D else ''}.A"
            E = np.zeros((layout.T, layout.n, h))
            report.checks[name] = _check_one_at_a_time(name, tm(dA), E, lambda E=E, i=i: loss({i: E}), eps, rtol,
                                                       max_entries, rng, noise=loss.noise,
                                                       user_index=lambda j: user.user_index("A", j))
    elif check_A:
        report.skipped.append("A")
    return report


def _check_one_at_a_time(name, analytic, array, loss, eps, rtol, max_entries, rng, noise=None, user_index=None):
    """Central differences of ``loss()`` over entries of ``array``, moved in place one at a time."""
    noise = loss.noise if noise is None else noise
    picked = _pick(array.shape, max_entries, rng)
    values = np.array([abs(float(array[i])) for i in picked])
    steps = np.full(len(picked), float(eps)) if eps is not None else DEFAULT_STEP * np.maximum(1.0, values)
    numeric = np.empty(len(picked))
    for k, idx in enumerate(picked):
        old = array[idx]
        array[idx] = old + steps[k]
        up = loss()
        array[idx] = old - steps[k]
        down = loss()
        array[idx] = old
        numeric[k] = (up - down) / (2 * steps[k])
    got = np.array([analytic[idx] for idx in picked])
    diff = np.abs(got - numeric)
    scale = max(float(np.abs(numeric).max()), np.finfo(np.float64).tiny)
    err = float(diff.max() / scale)
    allowed = rtol + noise / steps.min() / scale
    worst = tuple(int(i) for i in picked[int(diff.argmax())])
    if user_index is not None:
        worst = user_index(worst)  # the caller's layout
    return TensorCheck(name, err, worst, len(picked), array.size, bool(err <= allowed), allowed)
