"""The C backend: csrc/ kernels compiled with cffi at install time.

Same signatures and semantics as :mod:`fastrnn.backends.reference`. The
wrappers allocate the inputs, outputs and the large scratch (states, logits,
dA), hand pointers to C, and turn C's error codes into exceptions; the C code
mallocs only small scratch of its own (a copy of Wᵀ, double accumulators) and
frees it before it returns. The matrix products
go to the Fortran sgemm/dgemm of the OpenBLAS that SciPy ships, whose
addresses are handed to C once, at import.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np

from .._config import COPY_WT_BELOW
from .._fastrnn_c import ffi, lib  # ImportError when the extension was not built

_ERRORS = {
    lib.FASTRNN_EBLAS: "no BLAS was registered",
    lib.FASTRNN_ESIZE: "a size is not positive",
    lib.FASTRNN_EINDEX: "a token id or target is out of range",
    lib.FASTRNN_ENOMEM: "out of memory for the kernels' scratch",
}
_INT_MAX = 2**31 - 1


def _blas_addresses():
    """Addresses of SciPy's sgemm, dgemm, sgemv and dgemv (32-bit integer BLAS interface).

    Loading SciPy's bundled OpenBLAS directly avoids importing scipy.linalg
    (about 0.13 s); its exports are what scipy.linalg.cython_blas wraps. Where
    that library is not found, the cython_blas capsules are used.
    """
    spec = importlib.util.find_spec("scipy")
    if spec is not None and spec.origin:
        libs = Path(spec.origin).parent.parent / "scipy.libs"
        for path in sorted(libs.glob("libscipy_openblas-*.so")):
            try:
                blas = ctypes.CDLL(str(path))
                return tuple(ctypes.cast(getattr(blas, f"scipy_{k}_"), ctypes.c_void_p).value for k in _BLAS)
            except (OSError, AttributeError):
                continue
    from scipy.linalg import cython_blas

    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    caps = cython_blas.__pyx_capi__
    return tuple(get(caps[k], name(caps[k])) for k in _BLAS)


_BLAS = ("sgemm", "dgemm", "sgemv", "dgemv")
if lib.fastrnn_set_blas(*(ffi.cast("void *", a) for a in _blas_addresses())) != 0:  # pragma: no cover
    raise ImportError("could not register sgemm/dgemm with the C backend")

_KERNELS = {
    np.dtype(np.float32): ("float *", lib.rnn_forward_f32, lib.rnn_backward_f32, lib.loss_and_grads_f32, lib.probs_f32),
    np.dtype(np.float64): ("double *", lib.rnn_forward_f64, lib.rnn_backward_f64, lib.loss_and_grads_f64, lib.probs_f64),
}


def _call(kernel, *args):
    code = kernel(*args)
    if code != 0:
        raise RuntimeError(f"C backend: {_ERRORS.get(code, f'error {code}')}")


def _sizes(inputs, U, v=1):
    T, n = inputs.shape[0], inputs.shape[1]
    d, h = U.shape
    if max(T * n * max(d, h, v), d * h, h * v) > _INT_MAX:
        raise ValueError("the C backend's BLAS takes 32-bit sizes: this problem is too large for it")
    return T, n, d, h


class _Args:
    """Pointers for one call. Each is an ``ffi.from_buffer`` view, which holds a
    reference to its array, and the views are kept on this object: the arrays
    live at least as long as the _Args of the call."""

    def __init__(self, dtype):
        self.array_type = _KERNELS[dtype][0].replace("*", "[]")
        self.views = []

    def p(self, a):
        if a is None:
            return ffi.NULL
        assert a.flags.c_contiguous
        view = ffi.from_buffer(self.array_type if a.dtype.kind == "f" else "int64_t[]", a)
        self.views.append(view)
        return view


def _inputs(inputs):
    """(X, ids): exactly one is None."""
    if inputs.dtype.kind in "iu":
        return None, np.ascontiguousarray(inputs, dtype=np.int64)
    return inputs, None


def _states(h0, T):
    n, h = h0.shape
    Hs = np.empty((T + 1, n, h), dtype=h0.dtype)
    Hs[0] = h0
    return Hs


def forward(U, W, b, inputs, h0):
    T, n, d, h = _sizes(inputs, U)
    X, ids = _inputs(inputs)
    Hs = _states(h0, T)
    XU = np.empty((T, n, h), dtype=U.dtype)
    a = _Args(U.dtype)
    _call(_KERNELS[U.dtype][1], a.p(Hs), a.p(XU), a.p(U), a.p(W), a.p(b), a.p(X), a.p(ids), T, n, d, h)
    return Hs[1:]


def backward(U, W, inputs, h0, H, dH):
    T, n, d, h = _sizes(inputs, U)
    X, ids = _inputs(inputs)
    Hs = _states(h0, T)
    Hs[1:] = H
    G = dH.copy()
    dU, dW = np.empty_like(U), np.empty_like(W)
    db, dh0 = np.empty(h, U.dtype), np.empty((n, h), U.dtype)
    dX = None if ids is not None else np.empty((T, n, d), U.dtype)
    a = _Args(U.dtype)
    _call(_KERNELS[U.dtype][2], a.p(dU), a.p(dW), a.p(db), a.p(dh0), a.p(dX), a.p(G),
          a.p(Hs), a.p(U), a.p(W), a.p(X), a.p(ids), T, n, d, h, COPY_WT_BELOW)
    return dU, dW, db, dh0, dX, G


def loss_and_grads(U, W, V, b, c, inputs, targets, h0, scale, params_only=False):
    v = V.shape[1]
    T, n, d, h = _sizes(inputs, U, v)
    X, ids = _inputs(inputs)
    y = np.ascontiguousarray(targets, dtype=np.int64)
    dt = U.dtype
    Hs = _states(h0, T)
    G = np.empty((T, n, h), dt)
    O = np.empty((T * n, v), dt)
    dU, dW, dV = np.empty_like(U), np.empty_like(W), np.empty_like(V)
    db, dc, dh0 = np.empty(h, dt), np.empty(v, dt), np.empty((n, h), dt)
    dX = np.empty((T, n, d), dt) if ids is None and not params_only else None
    loss = ffi.new("double *")
    a = _Args(dt)
    _call(_KERNELS[dt][3], loss, a.p(dU), a.p(dW), a.p(dV), a.p(db), a.p(dc), a.p(dh0), a.p(dX), a.p(G),
          a.p(Hs), a.p(O), a.p(U), a.p(W), a.p(V), a.p(b), a.p(c), a.p(X), a.p(ids), a.p(y),
          dt.type(scale), T, n, d, h, v, COPY_WT_BELOW)
    return scale * loss[0], dU, dW, dV, db, dc, dh0, dX, (None if params_only else G), Hs[T].copy()


def probs(U, W, V, b, c, inputs, h0):
    v = V.shape[1]
    T, n, d, h = _sizes(inputs, U, v)
    X, ids = _inputs(inputs)
    Hs = _states(h0, T)
    XU = np.empty((T, n, h), U.dtype)
    out = np.empty((T, n, v), U.dtype)
    a = _Args(U.dtype)
    _call(_KERNELS[U.dtype][4], a.p(out), a.p(Hs), a.p(XU), a.p(U), a.p(W), a.p(V), a.p(b), a.p(c),
          a.p(X), a.p(ids), T, n, d, h, v)
    return out, Hs[T].copy()


_ELEMENTWISE = {
    np.dtype(np.float32): (lib.tanh_array_f32, lib.exp_array_f32),
    np.dtype(np.float64): (lib.tanh_array_f64, lib.exp_array_f64),
}


def tanh_array(x, out):
    """out = tanh(x) by the kernels' own vectorising tanh (1-D, same dtype)."""
    a = _Args(x.dtype)
    _ELEMENTWISE[x.dtype][0](a.p(out), a.p(x), x.size)


def exp_array(z, out):
    """out = exp(z) for z <= 0 by the kernels' own vectorising exp (1-D, same dtype)."""
    a = _Args(z.dtype)
    _ELEMENTWISE[z.dtype][1](a.p(out), a.p(z), z.size)


_STEP = {np.dtype(np.float32): lib.step_product_f32, np.dtype(np.float64): lib.step_product_f64}


def step_product(A, B, C):
    """C = A B as the kernels compute one step's product (register tiles or BLAS);
    A (m, h), B (h, h), C (m, h), C-contiguous, one dtype (for tests and measurements)."""
    a = _Args(A.dtype)
    _call(_STEP[A.dtype], a.p(C), a.p(A), a.p(B), A.shape[0], A.shape[1])


# --------------------------------------------------------------------------
# The general model (lengths, relu, stacked layers, two directions): its kernels
# run on packed sequences (csrc/packed.inc) and are wrapped in cffi_packed.py, which
# imports this module's error table; imported when first called.
# --------------------------------------------------------------------------


_DEEP = ("deep_loss_and_grads", "deep_forward", "deep_backward", "deep_probs")


def __getattr__(name):  # PEP 562: the deep_* kernels, imported when first asked for
    if name in _DEEP:
        from . import cffi_packed

        return getattr(cffi_packed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
