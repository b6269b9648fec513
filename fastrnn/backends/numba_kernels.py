"""The Numba backend: the reference's math as fused, allocation-free loops.

Same signatures and semantics as :mod:`fastrnn.backends.reference`. Layout of
the work for one training step (sizes T, n, d, h, v):

* every matrix product that is not sequential in time runs once over all
  T·n rows: the input projection X U, the output projection H V, dO Vᵀ and the
  gradients dV = Hᵀ dO, dW = H_prevᵀ dA, dU = Xᵀ dA, dX = dA Uᵀ;
* the time loops do only what must be sequential: H_{t-1} W (forward) and
  dA_{t+1} Wᵀ (backward), each a BLAS call into a preallocated buffer, with
  bias, tanh and tanh' fused into one pass over the result;
* softmax and cross-entropy are fused: one pass per row turns the logits into
  dO in place and accumulates the loss.

Inside Numba, ``np.dot`` calls SciPy's BLAS, which is why SciPy is a run-time
dependency of this backend. Arithmetic stays in the arrays' dtype: no literal
is allowed to promote float32 work to float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._config import NUMBA_FLAGS

# --------------------------------------------------------------------------
# Building blocks. Each writes into buffers it is given and allocates nothing.
# --------------------------------------------------------------------------


@njit(**NUMBA_FLAGS)
def _gather_rows(P, U, ids):
    """P[t, i] = U[ids[t, i]]: X_t U for one-hot rows of X."""
    T, n = ids.shape
    for t in range(T):
        for i in range(n):
            P[t, i, :] = U[ids[t, i]]


@njit(**NUMBA_FLAGS)
def _recurrence_forward(Hs, P, W, b):
    """Hs[t+1] = tanh(P[t] + Hs[t] W + b) for t = 0..T-1; Hs[0] holds h0.

    Hs: (T+1, n, h), P: (T, n, h) holds X_t U, W: (h, h), b: (h,).
    """
    T, n, h = P.shape
    for t in range(T):
        At = Hs[t + 1]
        np.dot(Hs[t], W, At)  # H_{t-1} W
        Pt = P[t]
        for i in range(n):
            for j in range(h):
                At[i, j] = np.tanh(At[i, j] + Pt[i, j] + b[j])  # H_t = tanh(X_t U + H_{t-1} W + b)


@njit(**NUMBA_FLAGS)
def _recurrence_backward(G, Hs, W, dh0):
    """Turn G[t] = the non-recurrent part of dH_t into dA_t, in place, for t = T-1..0.

    dH_t = G[t] + dA_{t+1} Wᵀ;  dA_t = dH_t ⊙ (1 − H_t²);  dh0 = dA_1 Wᵀ (into dh0).
    G: (T, n, h), Hs: (T+1, n, h), W: (h, h), dh0: (n, h) also serves as scratch.
    """
    T, n, h = G.shape
    WT = W.T
    one = np.ones(1, dtype=G.dtype)[0]  # a 1 of G's dtype: a bare literal would promote float32
    for t in range(T - 1, -1, -1):
        Gt = G[t]
        Ht = Hs[t + 1]
        if t < T - 1:
            np.dot(G[t + 1], WT, dh0)  # dA_{t+1} Wᵀ
            for i in range(n):
                for j in range(h):
                    y = Ht[i, j]
                    Gt[i, j] = (Gt[i, j] + dh0[i, j]) * (one - y * y)  # dA_t = dH_t ⊙ (1 − H_t²)
        else:
            for i in range(n):
                for j in range(h):
                    y = Ht[i, j]
                    Gt[i, j] = Gt[i, j] * (one - y * y)
    np.dot(G[0], WT, dh0)  # dh0 = dA_1 Wᵀ


@njit(**NUMBA_FLAGS)
def _add_row_vector(M, r):
    m, k = M.shape
    for i in range(m):
        for j in range(k):
            M[i, j] += r[j]


@njit(**NUMBA_FLAGS)
def _column_sums(out, M):
    """out = 1ᵀ M, accumulated row by row in M's dtype."""
    out[:] = 0
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            out[j] += M[i, j]


@njit(**NUMBA_FLAGS)
def _softmax_xent(O, y, scale):
    """Fused softmax + cross-entropy over rows: O (m, v) logits become dO in place.

    dO = (softmax(O) − onehot(y)) · scale; returns Σ_rows −log Ŷ[y] (float64,
    not yet scaled). Each row is shifted by its max so exp cannot overflow.
    """
    m, v = O.shape
    total = 0.0
    for r in range(m):
        row = O[r]
        top = row[0]
        for k in range(1, v):
            if row[k] > top:
                top = row[k]
        logit_y = row[y[r]]
        e = np.exp(row[0] - top)
        row[0] = e
        s = e
        for k in range(1, v):
            e = np.exp(row[k] - top)
            row[k] = e
            s += e
        total += np.log(s) - (logit_y - top)  # −log Ŷ[y] = log Σ exp(O − max) − (O_y − max)
        inv = scale / s
        for k in range(v):
            row[k] *= inv
        row[y[r]] -= scale
    return total


@njit(**NUMBA_FLAGS)
def _softmax_rows(O):
    """O (m, v) logits become softmax probabilities in place."""
    m, v = O.shape
    for r in range(m):
        row = O[r]
        top = row[0]
        for k in range(1, v):
            if row[k] > top:
                top = row[k]
        e = np.exp(row[0] - top)
        row[0] = e
        s = e
        for k in range(1, v):
            e = np.exp(row[k] - top)
            row[k] = e
            s += e
        for k in range(v):
            row[k] /= s


@njit(**NUMBA_FLAGS)
def _scatter_add_rows(dU, ids, dA):
    """dU[ids[t, i]] += dA[t, i]: Σ_t X_tᵀ dA_t for one-hot rows of X."""
    T, n = ids.shape
    for t in range(T):
        for i in range(n):
            k = ids[t, i]
            for j in range(dA.shape[2]):
                dU[k, j] += dA[t, i, j]


# --------------------------------------------------------------------------
# The backend's kernels (same signatures as the reference backend).
# --------------------------------------------------------------------------


# The kernels below take dense inputs X (T, n, d) and token ids (T, n) as two
# arguments, exactly one of them non-empty, so that each float dtype compiles
# one specialisation serving both kinds of input.


@njit(**NUMBA_FLAGS)
def _forward_states(U, W, b, X, ids, h0):
    """Hs (T+1, n, h) with Hs[0] = h0 and Hs[t] = H_t; also returns P (T, n, h) = X U."""
    T = max(X.shape[0], ids.shape[0])
    n = h0.shape[0]
    d, h = U.shape
    P = np.empty((T, n, h), dtype=U.dtype)
    if ids.size == 0:
        np.dot(X.reshape(T * n, d), U, P.reshape(T * n, h))  # X U, all steps at once
    else:
        _gather_rows(P, U, ids)
    Hs = np.empty((T + 1, n, h), dtype=U.dtype)
    Hs[0] = h0
    _recurrence_forward(Hs, P, W, b)
    return Hs, P


@njit(**NUMBA_FLAGS)
def _backward_from(G, Hs, U, W, X, ids):
    """Gradients of the recurrence once G holds the non-recurrent part of every dH_t.

    G becomes dA. Returns (dU, dW, db, dh0, dX).
    """
    T, n, h = G.shape
    d = U.shape[0]
    dh0 = np.empty((n, h), dtype=U.dtype)
    _recurrence_backward(G, Hs, W, dh0)
    dA = G.reshape(T * n, h)
    dW = np.dot(Hs[:T].reshape(T * n, h).T, dA)  # dW = Σ_t H_{t-1}ᵀ dA_t
    db = np.empty(h, dtype=U.dtype)
    _column_sums(db, dA)  # db = Σ_t 1ᵀ dA_t
    if ids.size == 0:
        dU = np.dot(X.reshape(T * n, d).T, dA)  # dU = Σ_t X_tᵀ dA_t
        dX = np.dot(dA, U.T).reshape(T, n, d)  # dX_t = dA_t Uᵀ
    else:
        dU = np.zeros((d, h), dtype=U.dtype)
        _scatter_add_rows(dU, ids, G)  # the same sum, for one-hot rows of X
        dX = np.empty((0, 0, 0), dtype=U.dtype)
    return dU, dW, db, dh0, dX


@njit(**NUMBA_FLAGS)
def _loss_and_grads(U, W, V, b, c, X, ids, targets, h0, scale):
    T, n = targets.shape
    h, v = V.shape
    Hs, P = _forward_states(U, W, b, X, ids, h0)
    H = Hs[1:].reshape(T * n, h)
    O = np.dot(H, V)  # O = H V + c, all steps at once
    _add_row_vector(O, c)
    total = _softmax_xent(O, targets.reshape(T * n), scale)  # O is now dO
    dV = np.dot(H.T, O)  # dV = Σ_t H_tᵀ dO_t
    dc = np.empty(v, dtype=V.dtype)
    _column_sums(dc, O)  # dc = Σ_t 1ᵀ dO_t
    G = P  # X U is no longer needed: its buffer takes dO Vᵀ, then dA
    np.dot(O, V.T, G.reshape(T * n, h))  # the output's share of dH_t: dO_t Vᵀ
    dU, dW, db, dh0, dX = _backward_from(G, Hs, U, W, X, ids)
    return total, dU, dW, dV, db, dc, dh0, dX, G, Hs[T].copy()


@njit(**NUMBA_FLAGS)
def _forward(U, W, b, X, ids, h0):
    Hs, _ = _forward_states(U, W, b, X, ids, h0)
    return Hs[1:]


@njit(**NUMBA_FLAGS)
def _backward(U, W, X, ids, h0, H, dH):
    T, n, h = H.shape
    Hs = np.empty((T + 1, n, h), dtype=H.dtype)
    Hs[0] = h0
    Hs[1:] = H
    G = dH.copy()
    dU, dW, db, dh0, dX = _backward_from(G, Hs, U, W, X, ids)
    return dU, dW, db, dh0, dX, G


@njit(**NUMBA_FLAGS)
def _probs(U, W, V, b, c, X, ids, h0):
    h, v = V.shape
    Hs, _ = _forward_states(U, W, b, X, ids, h0)
    T, n = Hs.shape[0] - 1, Hs.shape[1]
    O = np.dot(Hs[1:].reshape(T * n, h), V)
    _add_row_vector(O, c)
    _softmax_rows(O)
    return O.reshape(T, n, v), Hs[T].copy()


# --------------------------------------------------------------------------
# Thin Python wrappers: the backend interface.
# --------------------------------------------------------------------------

_NO_IDS = np.empty((0, 0), dtype=np.intp)
_NO_X = {np.dtype(t): np.empty((0, 0, 0), dtype=t) for t in (np.float32, np.float64)}


def _split(inputs, dtype):
    """(X, ids) for the kernels: the given inputs and an empty stand-in for the other kind."""
    if inputs.dtype.kind in "iu":
        return _NO_X[dtype], inputs
    return inputs, _NO_IDS


def loss_and_grads(U, W, V, b, c, inputs, targets, h0, scale):
    X, ids = _split(inputs, U.dtype)
    total, dU, dW, dV, db, dc, dh0, dX, dA, h_last = _loss_and_grads(
        U, W, V, b, c, X, ids, targets, h0, U.dtype.type(scale)
    )
    return scale * total, dU, dW, dV, db, dc, dh0, (dX if ids.size == 0 else None), dA, h_last


def forward(U, W, b, inputs, h0):
    X, ids = _split(inputs, U.dtype)
    return _forward(U, W, b, X, ids, h0)


def backward(U, W, inputs, h0, H, dH):
    X, ids = _split(inputs, U.dtype)
    dU, dW, db, dh0, dX, dA = _backward(U, W, X, ids, h0, H, dH)
    return dU, dW, db, dh0, (dX if ids.size == 0 else None), dA


def probs(U, W, V, b, c, inputs, h0):
    X, ids = _split(inputs, U.dtype)
    return _probs(U, W, V, b, c, X, ids, h0)
