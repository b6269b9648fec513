"""Input checking shared by every public function.

Everything is checked before any kernel runs; a failure raises TypeError or
ValueError naming the argument and what was expected. What passes is returned
as C-contiguous, time-major arrays ready for a backend.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numpy as np

from ._params import Params

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _as_array(name, value):
    masked = sys.modules.get("numpy.ma")  # not imported: nothing can be a masked array
    if masked is not None and isinstance(value, masked.MaskedArray):
        raise TypeError(f"{name} is a masked array, whose mask fastrnn would not see; mark padding with "
                        "lengths= and skipped targets with ignore_index, or pass .filled(...)")
    try:
        return np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from exc


def _check_float(name, a, dtype=None):
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype} but the parameters are {dtype}; "
            "fastrnn never casts silently, so convert one of them"
        )


#: Float arrays of at most this many elements are checked with one dot product: Σ a² is
#: NaN or Inf exactly when an element is, or when the squares overflow (the element-wise
#: test then decides). It makes no temporary array: the five weights of a small model took
#: 12 µs instead of 30 µs in a training loop. Larger arrays keep the element-wise test, where
#: it costs little next to the step, and numpy's BLAS would thread the dot products (its idle
#: threads spin) from about 10⁴ elements on.
DOT_CHECK_MAX = 8192


def _check_finite(name, a):
    if a.size <= DOT_CHECK_MAX and a.dtype.kind == "f" and math.isfinite(np.vdot(a, a)):
        return
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")


def check_flag(name, value):
    """A True/False argument: bool or numpy bool, nothing merely truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_shape(name, a, expected, letters):
    if a.shape != tuple(expected):
        want = "(" + ", ".join(f"{k}={s}" for k, s in zip(letters, expected)) + (",)" if len(expected) == 1 else ")")
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")


def check_weights(names_and_values):
    """Float arrays of one dtype, finite and C-contiguous: returns (arrays, dtype)."""
    arrays = []
    for name, value in names_and_values:
        a = _as_array(name, value)
        _check_float(name, a)
        arrays.append(a)
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        listing = ", ".join(f"{n} {a.dtype}" for (n, _), a in zip(names_and_values, arrays))
        raise TypeError(f"the parameters mix float dtypes ({listing}); all must be float32 or all float64")
    return arrays, arrays[0].dtype


def _weight_pipeline(pairs, sizes):
    """The one pipeline every set of weights goes through: float arrays of one
    dtype; then ``sizes(*arrays)`` reads the sizes from them (raising on a bad
    ndim) and gives each array's expected (shape, letters); then every shape;
    then finiteness. Returns C-contiguous arrays."""
    arrays, _ = check_weights(pairs)
    for (name, _), a, (shape, letters) in zip(pairs, arrays, sizes(*arrays)):
        _check_shape(name, a, shape, letters)
    for (name, _), a in zip(pairs, arrays):
        _check_finite(name, a)
    return [np.ascontiguousarray(a) for a in arrays]


def check_params(params):
    """Validate a Params (or any 5-sequence U, W, V, b, c); return contiguous Params."""
    if isinstance(params, np.ndarray) or not hasattr(params, "__len__") or len(params) != 5:
        raise TypeError(f"params must be a fastrnn.Params(U, W, V, b, c), got {type(params).__name__}")

    def sizes(U, W, V, b, c):
        if U.ndim != 2:
            raise ValueError(f"params.U must have shape (d, h), got {U.shape}")
        if V.ndim != 2:
            raise ValueError(f"params.V must have shape (h, v), got {V.shape}")
        (d, h), v = U.shape, V.shape[1]
        if min(d, h, v) < 1:
            raise ValueError(f"d, h and v must be at least 1; params.U is {U.shape}, params.V is {V.shape}")
        return [((d, h), "dh"), ((h, h), "hh"), ((h, v), "hv"), ((h,), "h"), ((v,), "v")]

    names = [f"params.{k}" for k in Params._fields]
    return Params(*_weight_pipeline(list(zip(names, params)), sizes))


def check_recurrent_weights(U, W, b=None):
    """The layer-level functions' weights: U (d, h), W (h, h) and optionally b (h,)."""

    def sizes(U, W, b=None):
        if U.ndim != 2 or min(U.shape) < 1:
            raise ValueError(f"U must have shape (d, h) with d, h >= 1, got {U.shape}")
        h = U.shape[1]
        return [(U.shape, "dh"), ((h, h), "hh"), ((h,), "h")]

    pairs = [("U", U), ("W", W)] + ([("b", b)] if b is not None else [])
    return _weight_pipeline(pairs, sizes)


def _to_time_major(a, unbatched, batch_first):
    """(T, n, ...) from the caller's layout: a new n axis for one sequence, (n, T) swapped."""
    if unbatched:
        return a[:, None]
    return a.swapaxes(0, 1) if batch_first else a


@dataclass(frozen=True)
class Layout:
    """How the caller laid out the sequence axes, and the way back to it."""

    T: int
    n: int
    unbatched: bool
    batch_first: bool

    def seq_to_user(self, a):
        """A time-major (T, n, ...) result in the caller's layout."""
        if a is None:
            return None
        if self.unbatched:
            return a[:, 0]
        return a.swapaxes(0, 1) if self.batch_first else a

    def seq_from_user(self, name, value, trailing, dtype, letters):
        """A per-timestep float array (T, n, *trailing) from the caller's layout."""
        a = _as_array(name, value)
        _check_float(name, a, dtype)
        _check_shape(name, a, self.user_shape(trailing), self.user_letters(letters))
        _check_finite(name, a)
        return np.ascontiguousarray(_to_time_major(a, self.unbatched, self.batch_first))

    def state_to_user(self, a):
        return a[0] if self.unbatched else a

    def user_shape(self, trailing=()):
        if self.unbatched:
            return (self.T, *trailing)
        return ((self.n, self.T) if self.batch_first else (self.T, self.n)) + tuple(trailing)

    def user_letters(self, trailing=""):
        if self.unbatched:
            return "T" + trailing
        return ("nT" if self.batch_first else "Tn") + trailing


def check_inputs(inputs, d, dtype, batch_first):
    """Float (T, n, d) or integer ids (T, n) [(n, T, ...) with batch_first; (T, d) or
    (T,) for one sequence]. Returns (time-major contiguous inputs, Layout)."""
    batch_first = check_flag("batch_first", batch_first)
    x = _as_array("inputs", inputs)
    kind = x.dtype.kind
    if kind == "f":
        _check_float("inputs", x, dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"float inputs must have shape (T, n, d) or (T, d), got {x.shape}")
        if x.shape[-1] != d:
            raise ValueError(f"inputs' last axis must be d={d} (the rows of U), got shape {x.shape}")
        unbatched = x.ndim == 2
    elif kind in "iu":
        if x.ndim not in (1, 2):
            raise ValueError(f"token-id inputs must have shape (T, n) or (T,), got {x.shape}")
        unbatched = x.ndim == 1
    else:
        raise TypeError(
            f"inputs must be float{dtype.itemsize * 8} (T, n, d) or integer token ids (T, n), got dtype {x.dtype}"
        )
    x = _to_time_major(x, unbatched, batch_first)
    T, n = x.shape[0], x.shape[1]
    if T == 0 or n == 0:
        raise ValueError(f"inputs must have at least one timestep and one sequence, got shape {np.shape(inputs)}")
    if kind == "f":
        _check_finite("inputs", x)
        x = np.ascontiguousarray(x)
    else:
        lo, hi = x.min(), x.max()
        if lo < 0 or hi >= d:
            bad = lo if lo < 0 else hi
            raise ValueError(f"inputs holds token id {bad}, outside [0, d={d})")
        x = np.ascontiguousarray(x, dtype=np.intp)
    return x, Layout(T, n, unbatched, batch_first)


def check_targets(targets, layout, v):
    y = _as_array("targets", targets)
    if y.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class ids, got dtype {y.dtype}")
    _check_shape("targets", y, layout.user_shape(), layout.user_letters())
    if y.size:
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= v:
            raise ValueError(f"targets holds class {lo if lo < 0 else hi}, outside [0, v={v})")
    return np.ascontiguousarray(_to_time_major(y, layout.unbatched, layout.batch_first), dtype=np.intp)


@functools.lru_cache(maxsize=64)
def _time_major(T, n):
    """The Layout of time-major batched (T, n) inputs (one object per shape)."""
    return Layout(T, n, False, False)


def check_h0(h0, layout, h, dtype, name="h0"):
    """Initial state (n, h), or (h,) for one sequence; None means zeros."""
    if h0 is None:
        return np.zeros((layout.n, h), dtype=dtype)
    a = _as_array(name, h0)
    _check_float(name, a, dtype)
    if layout.unbatched:
        _check_shape(name, a, (h,), "h")
        a = a[None]
    else:
        _check_shape(name, a, (layout.n, h), "nh")
    _check_finite(name, a)
    return np.ascontiguousarray(a)


_INTP = np.dtype(np.intp)


def _ids_below(a, bound):
    """Whether every id of the intp array ``a`` lies in [0, bound): one reduction
    over the ids read as unsigned (a negative id reads as a huge one)."""
    return int(a.view(np.uintp).max()) < bound


def check_step_batch(inputs, targets, h0, d, h, v, dtype):
    """A training step's batch on trusted parameters: ``(x, y, h0, layout)``
    exactly as :func:`check_inputs`, :func:`check_targets` and
    :func:`check_h0` return them, and the same errors.

    The common case, time-major token ids and targets already as C-contiguous
    intp (T, n) arrays and h0 an (n, h) array of the parameters' dtype, passes
    in three numpy reductions (5.4 µs at the char size where the three
    general checks take 9.2 µs); anything else, or anything out of range, goes through those
    checks, which then raise the error that names the argument.
    """
    if (
        type(inputs) is np.ndarray
        and type(targets) is np.ndarray
        and type(h0) is np.ndarray
        and inputs.dtype is _INTP
        and targets.dtype is _INTP
        and h0.dtype is dtype
        and inputs.ndim == 2
        and inputs.shape == targets.shape
        and inputs.size
        and h0.shape == (inputs.shape[1], h)
        and inputs.flags.c_contiguous
        and targets.flags.c_contiguous
        and h0.flags.c_contiguous
        and _ids_below(inputs, d)
        and _ids_below(targets, v)
        and np.isfinite(h0).all()
    ):
        return inputs, targets, h0, _time_major(*inputs.shape)
    x, layout = check_inputs(inputs, d, dtype, False)
    y = check_targets(targets, layout, v)
    return x, y, check_h0(h0, layout, h, dtype), layout


def check_reduction_name(reduction):
    """'mean' or 'sum' (a str: an array would compare element-wise)."""
    if not isinstance(reduction, str) or reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


def check_reduction(reduction, T, n):
    """The loss scale: 1/(T·n) for 'mean', 1 for 'sum'."""
    return 1.0 / (T * n) if check_reduction_name(reduction) == "mean" else 1.0


# --------------------------------------------------------------------------
# The general model (lengths, ignored targets, relu, layers, directions).
# --------------------------------------------------------------------------


def check_nonlinearity(value, name="nonlinearity"):
    """'tanh' or 'relu'; returns True for relu."""
    if not isinstance(value, str) or value not in ("tanh", "relu"):
        raise ValueError(f"{name} must be 'tanh' or 'relu', got {value!r}")
    return value == "relu"


def check_deep_params(params):
    """Validate a DeepParams; returns (flat contiguous cells [(U, W, b)] in torch's order, D, V, c, relu).

    Layer 0's U is (d, h); every later layer's U must be (D·h, h): it reads the
    layer below, directions concatenated. The head's V is (D·h, v).
    """
    layers = params.layers
    if isinstance(layers, np.ndarray) or not isinstance(layers, (tuple, list)) or len(layers) == 0:
        raise ValueError("params.layers must hold at least one layer (num_layers >= 1), got none")
    D = len(layers[0]) if isinstance(layers[0], (tuple, list)) else 0
    if D not in (1, 2):
        raise ValueError(
            "params.layers[0] must be a tuple of 1 Cell (forward) or 2 Cells (forward, reversed), "
            f"got {layers[0]!r:.80}"
        )
    relu = check_nonlinearity(params.nonlinearity, "params.nonlinearity")
    named = []
    for l, cells in enumerate(layers):
        if not isinstance(cells, (tuple, list)) or len(cells) != D:
            raise ValueError(f"params.layers[{l}] must hold {D} Cell(s) like params.layers[0], got {cells!r:.80}")
        for k, cell in enumerate(cells):
            if isinstance(cell, np.ndarray) or not hasattr(cell, "__len__") or len(cell) != 3:
                raise TypeError(f"params.layers[{l}][{k}] must be a fastrnn.Cell(U, W, b), got {type(cell).__name__}")
            named += [(f"params.layers[{l}][{k}].{f}", a) for f, a in zip("UWb", cell)]
    named += [("params.V", params.V), ("params.c", params.c)]
    arrays, dtype = check_weights(named)
    U0 = arrays[0]
    if U0.ndim != 2 or min(U0.shape) < 1:
        raise ValueError(f"params.layers[0][0].U must have shape (d, h) with d, h >= 1, got {U0.shape}")
    d, h = U0.shape
    flat = []
    for i in range(len(layers) * D):
        l, k = divmod(i, D)
        U, W, b = arrays[3 * i : 3 * i + 3]
        d_in = d if l == 0 else D * h
        where = f"params.layers[{l}][{k}]"
        if l > 0 and U.shape != (d_in, h):
            raise ValueError(
                f"{where}.U must have shape (D·h={d_in}, h={h}): layer {l} reads layer {l - 1}'s "
                f"{'two directions' if D == 2 else 'states'}; got {U.shape} (the shapes do not chain)"
            )
        _check_shape(f"{where}.U", U, (d_in, h), "dh")
        _check_shape(f"{where}.W", W, (h, h), "hh")
        _check_shape(f"{where}.b", b, (h,), "h")
        flat.append((U, W, b))
    V, c = arrays[-2], arrays[-1]
    if V.ndim != 2 or V.shape[0] != D * h or V.shape[1] < 1:
        raise ValueError(f"params.V must have shape (D·h={D * h}, v): the head reads the top layer, got {V.shape}")
    _check_shape("params.c", c, (V.shape[1],), "v")
    for (name, _), a in zip(named, arrays):
        _check_finite(name, a)
    flat = [tuple(np.ascontiguousarray(a) for a in cell) for cell in flat]
    return flat, D, np.ascontiguousarray(V), np.ascontiguousarray(c), relu


def check_lengths(lengths, layout):
    """Sequence lengths: (n,) integers in [1, T] (a scalar for one unbatched sequence),
    in any order. Returns intp (n,), or None when not given."""
    if lengths is None:
        return None
    a = _as_array("lengths", lengths)
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers (numpy int or Python int), got dtype {a.dtype}")
    want = () if layout.unbatched else (layout.n,)
    if a.shape != want:
        shape = "() (a scalar, one unbatched sequence)" if layout.unbatched else f"(n={layout.n},)"
        raise ValueError(f"lengths must have shape {shape}, got {a.shape}")
    if a.size and (a.min() < 1 or a.max() > layout.T):
        bad = a.min() if a.min() < 1 else a.max()
        raise ValueError(f"lengths holds {bad}, outside [1, T={layout.T}] (0 is not allowed: every sequence has a first step)")
    return np.ascontiguousarray(a.reshape(layout.n), dtype=np.intp)


def check_ignore_index(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"ignore_index must be an integer (default -100), got {value!r}")
    return int(value)


def check_targets_counted(targets, layout, v, lengths, ignore_index):
    """Targets with padded steps and ``ignore_index`` marked −1 (not counted), time-major
    intp (T, n); every counted target must be in [0, v). Returns (y, number counted)."""
    y = _as_array("targets", targets)
    if y.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class ids, got dtype {y.dtype}")
    _check_shape("targets", y, layout.user_shape(), layout.user_letters())
    if layout.unbatched:
        y = y[:, None]
    elif layout.batch_first:
        y = y.swapaxes(0, 1)
    # checked in the caller's dtype: a uint64 class id of 2**63 or more must not wrap to a negative
    # intp (and then pass for a negative ignore_index)
    counted = y != ignore_index
    if lengths is not None:
        counted &= np.arange(layout.T)[:, None] < lengths[None, :]
    bad = counted & ((y < 0) | (y >= v))
    if bad.any():
        raise ValueError(f"targets holds class {y[bad][0]}, outside [0, v={v}) and not ignore_index={ignore_index}")
    # what is not counted (and may have wrapped in the cast) is −1; C order whatever the caller's layout
    return np.ascontiguousarray(np.where(counted, y.astype(np.intp), -1)), int(counted.sum())


def check_deep_h0(h0, layout, LD, h, dtype, name="h0"):
    """Initial states (L·D, n, h), or (L·D, h) for one sequence; None means zeros."""
    if h0 is None:
        return np.zeros((LD, layout.n, h), dtype=dtype)
    a = _as_array(name, h0)
    _check_float(name, a, dtype)
    if layout.unbatched:
        _check_shape(name, a, (LD, h), ("L·D", "h"))
        a = a[:, None]
    else:
        _check_shape(name, a, (LD, layout.n, h), ("L·D", "n", "h"))
    _check_finite(name, a)
    return np.ascontiguousarray(a)


def check_mean_scale(reduction, counted):
    """'mean': 1/(number of counted targets), 1 when none counts (the loss is then 0);
    'sum': 1."""
    return 1.0 / max(counted, 1) if check_reduction_name(reduction) == "mean" else 1.0
