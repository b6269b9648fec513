"""C kernels of the general model on packed sequences (csrc/packed.inc; see :mod:`._packed`).

The wrappers allocate the arrays and hand pointers to C with
:mod:`.cffi_kernels`' ``_Args`` (which keeps them alive for the call); the
kernels malloc only small scratch (a copy of Wᵀ, double accumulators).
"""

from __future__ import annotations

import numpy as np

from .._config import COPY_WT_BELOW
from .._fastrnn_c import ffi, lib
from . import _packed
from .cffi_kernels import _ERRORS, _INT_MAX, _Args
_FN = {
    np.dtype(np.float32): (lib.packed_forward_f32, lib.packed_backward_f32, lib.packed_head_loss_f32,
                           lib.packed_head_probs_f32, lib.packed_cell_step_f32),
    np.dtype(np.float64): (lib.packed_forward_f64, lib.packed_backward_f64, lib.packed_head_loss_f64,
                           lib.packed_head_probs_f64, lib.packed_cell_step_f64),
}


def _call(kernel, *args):
    code = kernel(*args)
    if code != 0:
        raise RuntimeError(f"C backend: {_ERRORS.get(code, f'error {code}')}")


def _check_size(*sizes):
    if max(sizes) > _INT_MAX:
        raise ValueError("the C backend's BLAS takes 32-bit sizes: this problem is too large for it")


def _x(x):
    if x.dtype.kind in "iu":
        return None, np.ascontiguousarray(x, dtype=np.int64)
    return x, None


def _steps(bs, off):
    return np.ascontiguousarray(bs, dtype=np.int64), np.ascontiguousarray(off, dtype=np.int64)


def layer_forward(U, W, b, x, h0s, bs, off, reverse, relu):
    dt = U.dtype
    d, h = U.shape
    n = h0s.shape[0]
    N = int(off[-1])
    _check_size(N * max(d, h), d * h)
    X, ids = _x(x)
    bs64, off64 = _steps(bs, off)
    h0s = np.ascontiguousarray(h0s)
    equal = bs[-1] == n  # nothing padded: H and Hprev share one buffer, h0 at its end
    if equal:
        Hs = np.empty((N + n, h), dt)
        if reverse:
            H, Hprev = Hs[:N], Hs[n:]
            Hs[N:] = h0s
        else:
            H, Hprev = Hs[n:], Hs[:N]
            Hs[:n] = h0s
    else:
        H, Hprev = np.empty((N, h), dt), np.empty((N, h), dt)
    HW = np.empty((n, h), dt)
    a = _Args(dt)
    _call(_FN[dt][0], a.p(H), a.p(Hprev), a.p(HW), a.p(U), a.p(W), a.p(b), a.p(X),
          a.p(ids), a.p(h0s), a.p(bs64), a.p(off64), len(bs), n, d, h, int(reverse), int(relu),
          int(not equal))
    return H, Hprev


def layer_backward(G, H, Hprev, U, W, x, carry, bs, off, reverse, relu, want_dX):
    dt = U.dtype
    d, h = U.shape
    n = carry.shape[0]
    N = G.shape[0]
    X, ids = _x(x)
    bs64, off64 = _steps(bs, off)
    dU, dW, db = np.empty_like(U), np.empty_like(W), np.empty(h, dt)
    dX = np.empty((N, d), dt) if (ids is None and want_dX) else None
    a = _Args(dt)
    _call(_FN[dt][1], a.p(dU), a.p(dW), a.p(db), a.p(dX), a.p(G), a.p(carry), a.p(H),
          a.p(Hprev), a.p(U), a.p(W), a.p(X), a.p(ids), a.p(bs64), a.p(off64),
          len(bs), n, d, h, int(reverse), int(relu), COPY_WT_BELOW)
    return dU, dW, db, dX


def head_loss(tops, V, c, y, scale, out=None):
    dt = V.dtype
    H1, H2 = tops[0], (tops[1] if len(tops) == 2 else None)
    N, h1 = H1.shape
    h2 = 0 if H2 is None else H2.shape[1]
    v = V.shape[1]
    _check_size(N * max(h1 + h2, v), (h1 + h2) * v)
    y64 = np.ascontiguousarray(y, dtype=np.int64)
    dV, dc, O = np.empty_like(V), np.empty(v, dt), np.empty((N, v), dt)
    out = [np.empty((N, k), dt) for k in (h1, h2)[: len(tops)]] if out is None else out
    dH1, dH2 = out[0], (out[1] if len(out) == 2 else None)
    loss = ffi.new("double *")
    a = _Args(dt)
    _call(_FN[dt][2], loss, a.p(dV), a.p(dc), a.p(dH1), a.p(dH2), a.p(O), a.p(H1), a.p(H2), a.p(V),
          a.p(c), a.p(y64), dt.type(scale), N, h1, h2, v)
    return loss[0], dV, dc, out


def head_probs(tops, V, c):
    dt = V.dtype
    H1, H2 = tops[0], (tops[1] if len(tops) == 2 else None)
    N, h1 = H1.shape
    h2 = 0 if H2 is None else H2.shape[1]
    v = V.shape[1]
    P = np.empty((N, v), dt)
    a = _Args(dt)
    _call(_FN[dt][3], a.p(P), a.p(H1), a.p(H2), a.p(V), a.p(c), N, h1, h2, v)
    return P


def cell_step(cells, V, c, x, y, h0, lengths, scale, relu, members=None):
    dt = V.dtype
    (U, W, b), D = cells[0], len(cells)
    U2, W2, b2 = cells[1] if D == 2 else (None, None, None)
    d, h = U.shape
    v = V.shape[1]
    T, n = y.shape
    _check_size(T * n * max(d, h, v), d * h, D * h * v)
    X, ids = _x(x)
    X = None if X is None else np.ascontiguousarray(X)
    y64, len64 = (np.ascontiguousarray(a, dtype=np.int64) for a in (y, lengths))
    grads = [(np.empty_like(U_), np.empty_like(W_), np.empty(h, dt)) for U_, W_, _ in cells]
    (dU, dW, db), (dU2, dW2, db2) = grads[0], (grads[1] if D == 2 else (None, None, None))
    dV, dc = np.empty_like(V), np.empty(v, dt)
    k = n if members is None else len(members)
    members = None if members is None else np.ascontiguousarray(members, dtype=np.int64)
    dh0, h_last = np.empty((D, k, h), dt), np.empty((D, k, h), dt)
    loss = ffi.new("double *")
    a = _Args(dt)
    _call(_FN[dt][4], loss, a.p(dU), a.p(dW), a.p(db), a.p(dU2), a.p(dW2), a.p(db2), a.p(dV), a.p(dc), a.p(dh0),
          a.p(h_last), a.p(U), a.p(W), a.p(b), a.p(U2), a.p(W2), a.p(b2), a.p(V), a.p(c), a.p(X), a.p(ids),
          a.p(y64), a.p(np.ascontiguousarray(h0)), a.p(len64), a.p(members), k, dt.type(scale), T, n, d, h, v,
          int(relu), COPY_WT_BELOW)
    return loss[0], grads, dV, dc, dh0, h_last


KERNELS = _packed.Kernels(layer_forward, layer_backward, head_loss, head_probs, cell_step)

deep_loss_and_grads, deep_probs, deep_forward, deep_backward = _packed.bind(KERNELS)
