"""The backend seam: every backend module has the same kernels, four for today's
one-layer model and four for the general one.

``loss_and_grads(U, W, V, b, c, inputs, targets, h0, scale, params_only)``
    -> (loss, dU, dW, dV, db, dc, dh0, dX, dA, h_last); dX is None for ids, and
    dX and dA are None when ``params_only``
``forward(U, W, b, inputs, h0)`` -> H (T, n, h)
``backward(U, W, inputs, h0, H, dH)`` -> (dU, dW, db, dh0, dX or None, dA)
``probs(U, W, V, b, c, inputs, h0)`` -> (Ŷ (T, n, v), h_last)

The general model (lengths, relu, stacked layers, two directions): ``cells`` is
a list of (U, W, b), cell l·D + k for layer l, direction k; ``h0`` and
``h_last`` are (L·D, n, h); ``lengths`` (n,) intp in [1, T]; targets −1 are not
counted; ``relu`` is a bool.

``deep_loss_and_grads(cells, D, V, c, inputs, targets, h0, lengths, scale, relu, params_only)``
    -> (loss, [(dU, dW, db) per cell], dV, dc, dh0, dX, [dA per cell], h_last)
``deep_forward(cells, D, inputs, h0, lengths, relu)`` -> (top H (T, n, D·h), h_last)
``deep_backward(cells, D, inputs, h0, lengths, relu, H, dH, dh_last)`` (L = D = 1)
    -> (dU, dW, db, dh0 (1, n, h), dX or None, dA)
``deep_probs(cells, D, V, c, inputs, h0, lengths, relu)`` -> (Ŷ (T, n, v), h_last)

Padded steps come back as zeros. The reference writes these with masks over
padded arrays; the fast backends run them on packed sequences (``_packed``).

All arguments are validated, C-contiguous and time-major; ``inputs`` is float
(T, n, d) or integer ids (T, n) of dtype intp. The reference backend is the
specification; the others must agree with it.
"""

from __future__ import annotations

import functools
import importlib

from .. import _threads
from . import _parallel
from .._config import BACKEND_ENV, BACKEND_ORDER, REQUESTED_BACKEND

_MODULES = {
    "numba": "fastrnn.backends.numba_kernels",
    "c": "fastrnn.backends.cffi_kernels",
    "numpy": "fastrnn.backends.reference",
}

_loaded = {}  # name -> module
_errors = {}  # name -> why it did not load
_default = None


def _try_load(name):
    if name not in _loaded and name not in _errors:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as exc:  # ImportError, or a broken native library
            _errors[name] = f"{type(exc).__name__}: {exc}"
    return _loaded.get(name)


def _check_name(name, what="backend"):
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, BACKEND_ORDER))}, got {name!r}")


def backends():
    """Names of the backends that load on this machine, the default first."""
    default = get_backend()
    return [default] + [n for n in BACKEND_ORDER if n != default and _try_load(n) is not None]


def unavailable():
    """Backends that failed to load, mapped to the reason."""
    for name in BACKEND_ORDER:
        _try_load(name)
    return dict(_errors)


def get_backend():
    """Name of the backend used when ``backend=None``.

    That is ``$FASTRNN_BACKEND`` if set, else the first of numba, c, numpy that loads.
    """
    global _default
    if _default is None:
        if REQUESTED_BACKEND is not None:
            _check_name(REQUESTED_BACKEND, f"${BACKEND_ENV}")
            _require(REQUESTED_BACKEND)
            _default = REQUESTED_BACKEND
        else:
            _default = next(n for n in BACKEND_ORDER if _try_load(n) is not None)
    return _default


def set_backend(name):
    """Make ``name`` the default backend for this process; returns the previous default.

    This works even when ``$FASTRNN_BACKEND`` names a backend that is unknown or
    does not load (then the previous default returned is None).
    """
    _check_name(name)
    _require(name)
    global _default
    try:
        previous = get_backend()
    except (ValueError, RuntimeError):  # a bad $FASTRNN_BACKEND, now overridden
        previous = None
    _default = name
    return previous


def _require(name):
    module = _try_load(name)
    if module is None:
        raise RuntimeError(f"backend {name!r} is not available here: {_errors[name]}")
    return module


def resolve(name=None):
    """The backend for ``name`` (None: the default), its kernels under the thread policy."""
    if name is None:
        name = get_backend()
    else:
        _check_name(name)
    scoped = _scoped.get(name)
    if scoped is None:
        scoped = _scoped[name] = _Scoped(_require(name))
    return scoped


_scoped = {}  # name -> _Scoped


class _Scoped:
    """A backend module whose kernels (the four of the plain model, the four
    ``deep_*`` of the general one) run with SciPy's BLAS set to fastrnn's
    thread count and put back afterwards (:mod:`fastrnn._threads`). Anything
    else is the module's own attribute."""

    def __init__(self, module):
        self.module = module
        for kernel in ("forward", "backward", "probs"):
            setattr(self, kernel, functools.partial(_threads.call, getattr(module, kernel)))
        # a large training step is split over the cores by blocks of rows (_parallel)
        split = module.__name__ != _MODULES["numpy"]
        self.loss_and_grads = functools.partial(
            _parallel.loss_and_grads if split else _threads.call, module.loss_and_grads
        )
        if hasattr(module, "deep_loss_and_grads"):  # the general model, under the same policy
            for kernel in ("deep_forward", "deep_probs"):  # the reference runs its directions in turn
                setattr(self, kernel, functools.partial(_parallel.directions if split else _threads.call,
                                                        getattr(module, kernel)))
            self.deep_backward = functools.partial(_threads.call, module.deep_backward)  # one direction
            self.deep_loss_and_grads = functools.partial(
                _parallel.deep_loss_and_grads if split else _threads.call, module.deep_loss_and_grads
            )

    def __getattr__(self, name):
        return getattr(self.module, name)
