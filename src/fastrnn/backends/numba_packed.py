"""Numba kernels of the general model on packed sequences (see :mod:`._packed`).

One direction of one layer forward, the same backward, and the softmax head
with ignored targets. Each step's recurrence product has only the bs[t] rows
still running; the products over all steps have N = Σ lengths rows. tanh is
the backend's own vectorising one; relu is max(a, 0), and its derivative at
a = 0 is 0, as torch's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._config import NUMBA_FLAGS
from . import _packed
from .numba_kernels import _ACC, _exp_shifted, _softmax_rows, _transposed_W, step_dot, vtanh


@njit(inline="always", **NUMBA_FLAGS)
def _act_rows(Ht, HW, b, relu):
    """Ht ← f(Ht + HW + b) over the running rows: Ht holds X_t U on entry."""
    m, h = Ht.shape
    zero = np.zeros(1, dtype=Ht.dtype)[0]
    if relu:
        for i in range(m):
            for j in range(h):
                a = Ht[i, j] + HW[i, j] + b[j]
                Ht[i, j] = a if (a > zero or a != a) else zero  # H_t = relu(A_t); NaN stays NaN, as np.maximum
    else:
        for i in range(m):
            for j in range(h):
                Ht[i, j] = vtanh(Ht[i, j] + HW[i, j] + b[j])  # H_t = tanh(A_t)


@njit(**NUMBA_FLAGS)
def _layer_forward(U, W, b, X, ids, h0s, bs, off, reverse, relu):
    """(H, Hprev), each (N, h). With equal lengths both are views of one (N + n, h)
    buffer that holds h0 before the first step (after the last, reversed), so the
    previous states are never copied; otherwise each step copies its own."""
    T = bs.shape[0]
    n, h = h0s.shape
    N = off[T]
    equal = bs[T - 1] == n  # nothing padded
    if equal:
        Hs = np.empty((N + n, h), dtype=U.dtype)
        if reverse:
            H, Hprev = Hs[:N], Hs[n:]
            Hs[N:] = h0s
        else:
            H, Hprev = Hs[n:], Hs[:N]
            Hs[:n] = h0s
    else:
        H = np.empty((N, h), dtype=U.dtype)
        Hprev = np.empty((N, h), dtype=U.dtype)
    if ids.size == 0:
        np.dot(X, U, H)  # X U, every running step at once
    else:
        for r in range(N):
            H[r, :] = U[ids[r]]  # one-hot rows of X select rows of U
    HW = np.empty((n, h), dtype=U.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        m = bs[t]
        o = off[t]
        Hp = Hprev[o : o + m]
        if not equal:
            if reverse:
                k = bs[t + 1] if t + 1 < T else 0  # rows that continue from step t+1
                src = off[t + 1] if t + 1 < T else 0
            else:
                k = m if t > 0 else 0  # every running row continues from step t−1
                src = off[t - 1] if t > 0 else 0
            Hp[:k] = H[src : src + k]
            Hp[k:] = h0s[k:m]  # the rest start from h0
        step_dot(Hp, W, HW[:m])  # S_{t∓1} W, running rows only
        _act_rows(H[o : o + m], HW, b, relu)
    return H, Hprev


@njit(inline="always", **NUMBA_FLAGS)
def _dact_rows(Gt, carry, Ht, db, relu):
    """Gt ← dA_t = (Gt + carry) ⊙ f'(A_t) over the running rows; db += Σ_rows dA_t."""
    m, h = Gt.shape
    one = np.ones(1, dtype=Gt.dtype)[0]
    zero = one - one
    if relu:
        for i in range(m):
            for j in range(h):
                a = (Gt[i, j] + carry[i, j]) if Ht[i, j] > zero else zero  # relu' = [H > 0]
                Gt[i, j] = a
                db[j] += a
    else:
        for i in range(m):
            for j in range(h):
                y = Ht[i, j]
                a = (Gt[i, j] + carry[i, j]) * (one - y * y)  # tanh' = 1 − H²
                Gt[i, j] = a
                db[j] += a


@njit(**NUMBA_FLAGS)
def _steps_back(G, H, W, WTc, carry, db, bs, off, reverse, relu):
    """WTc: the contiguous copy of Wᵀ, or empty for the view W.T (one compiled function serves both)."""
    T = bs.shape[0]
    for s in range(T):
        t = s if reverse else T - 1 - s  # the forward pass's steps, last first
        m = bs[t]
        o = off[t]
        _dact_rows(G[o : o + m], carry, H[o : o + m], db, relu)
        if WTc.size:  # ∂L/∂S_{t∓1} = dA_t Wᵀ; rows not running keep theirs
            step_dot(G[o : o + m], WTc, carry[:m])
        else:
            np.dot(G[o : o + m], W.T, carry[:m])


@njit(**NUMBA_FLAGS)
def _layer_backward(G, H, Hprev, U, W, X, ids, carry, bs, off, reverse, relu, want_dX):
    d, h = U.shape
    db = np.zeros(h, dtype=_ACC)  # sums over all N rows accumulate in float64 (numba_kernels._ACC)
    fewest = bs[0]  # the rows of the last step that runs any (T may run past the longest sequence)
    for t in range(bs.shape[0]):
        if bs[t] > 0:
            fewest = bs[t]
    _steps_back(G, H, W, _transposed_W(W, bs[0], fewest), carry, db, bs, off, reverse, relu)
    dW = np.dot(Hprev.T, G)  # dW = Σ_t S_{t∓1}ᵀ dA_t
    if ids.size == 0:
        dU = np.dot(X.T, G)  # dU = Σ_t X_tᵀ dA_t
        dX = np.dot(G, U.T) if want_dX else np.empty((0, d), dtype=U.dtype)  # dX_t = dA_t Uᵀ
    else:
        dU_acc = np.zeros((d, h), dtype=_ACC)
        for r in range(G.shape[0]):
            k = ids[r]
            for j in range(h):
                dU_acc[k, j] += G[r, j]  # dU = Σ_t X_tᵀ dA_t, one-hot X
        dU = dU_acc.astype(U.dtype)
        dX = np.empty((0, d), dtype=U.dtype)
    return dU, dW, db.astype(U.dtype), dX


@njit(**NUMBA_FLAGS)
def _head_logits(H1, H2, V):
    """O = [H1 | H2] V, without building [H1 | H2] (H2 may be empty: one direction)."""
    h1 = H1.shape[1]
    O = np.dot(H1, V[:h1])
    if H2.size:
        O2 = np.dot(H2, V[h1:])
        for r in range(O.shape[0]):
            for k in range(O.shape[1]):
                O[r, k] += O2[r, k]
    return O


@njit(**NUMBA_FLAGS)
def _head_loss(H1, H2, V, c, y, scale, dH1, dH2):
    """O = [H1 | H2] V + c becomes dO = counted ⊙ (softmax(O) − onehot(y))·scale; y < 0 is not counted.
    ∂L/∂H1 and ∂L/∂H2 go into dH1 and dH2."""
    N, h1 = H1.shape
    v = V.shape[1]
    O = _head_logits(H1, H2, V)
    dc = np.zeros(v, dtype=_ACC)
    total = 0.0
    for r in range(N):
        row = O[r]
        if y[r] < 0:
            row[:] = 0  # padded or ignored: no loss, no gradient
            continue
        logit_y = row[y[r]] + c[y[r]]
        top, s = _exp_shifted(row, c)
        total += np.log(s) - (logit_y - top)  # −log Ŷ[y]
        inv = scale / s
        for k in range(v):
            row[k] *= inv
        row[y[r]] -= scale  # dO = (Ŷ − onehot(y))·scale
        for k in range(v):
            dc[k] += row[k]  # dc = Σ_t 1ᵀ dO_t
    dV = np.empty_like(V)
    np.dot(H1.T, O, dV[:h1])  # dV = Σ_t [H1 | H2]ᵀ dO_t, block by block
    np.dot(O, V[:h1].T, dH1)  # ∂L/∂[H1 | H2] = dO Vᵀ, block by block
    if H2.size:
        np.dot(H2.T, O, dV[h1:])
        np.dot(O, V[h1:].T, dH2)
    return total, dV, dc.astype(V.dtype)


@njit(**NUMBA_FLAGS)
def _head_probs(H1, H2, V, c):
    O = _head_logits(H1, H2, V)
    _softmax_rows(O, c)
    return O


@njit(**NUMBA_FLAGS)
def _cell_step(U, W, b, U2, W2, b2, V, c, X, ids, y, h0, lengths, members, scale, relu):
    """The whole training step of one layer (``params_only``), in one direction or both
    (U2, W2, b2: the reversed cell, or empty), from the caller's padded batch to its
    gradients in one call: the packing (sorted by length, longest first, ties in batch
    order, as :func:`._packed.packing`), the layer forward per direction, the head and
    loss over all rows, the layer backward per direction, with nothing in Python
    between them. X (T, n, d) or ids (T, n) (the other empty); y (T, n), −1 where not
    counted; h0 (D, n, h); lengths (n,). Only the sequences ``members`` (k batch
    indices, ascending) take part: a block of the batch, read in place. Returns
    (Σ −log Ŷ[y], dU, dW, db, dU2, dW2, db2, dV, dc, dh0, h_last), the last two
    (D, k, h) in the order of ``members``."""
    D = 2 if U2.size else 1
    n = members.shape[0]
    d, h = U.shape
    mine = np.empty(n, dtype=np.intp)
    for j in range(n):
        mine[j] = lengths[members[j]]
    order = np.argsort(-mine, kind="mergesort")  # stable: positions in members, longest first
    T = mine[order[0]]
    bs = np.zeros(T, dtype=np.intp)
    for j in range(n):
        for t in range(mine[j]):
            bs[t] += 1
    off = np.zeros(T + 1, dtype=np.intp)
    for t in range(T):
        off[t + 1] = off[t] + bs[t]
    N = off[T]
    yp = np.empty(N, dtype=np.intp)
    idp = np.empty(N if ids.size else 0, dtype=np.intp)
    Xp = np.empty((0 if ids.size else N, d), dtype=U.dtype)
    for t in range(T):
        for j in range(bs[t]):
            r = off[t] + j
            s = members[order[j]]
            yp[r] = y[t, s]
            if ids.size:
                idp[r] = ids[t, s]
            else:
                for k in range(d):
                    Xp[r, k] = X[t, s, k]
    h0s = np.empty((D, n, h), dtype=U.dtype)
    for q in range(D):
        for j in range(n):
            for k in range(h):
                h0s[q, j, k] = h0[q, members[order[j]], k]
    none = np.empty((0, 0), dtype=U.dtype)
    H, Hprev = _layer_forward(U, W, b, Xp, idp, h0s[0], bs, off, False, relu)
    H2, Hprev2 = (_layer_forward(U2, W2, b2, Xp, idp, h0s[1], bs, off, True, relu) if D == 2
                  else (none, none))
    G = np.empty((N, h), dtype=U.dtype)
    G2 = np.empty((N, h), dtype=U.dtype) if D == 2 else none
    if D == 1 or N < 2:
        total, dV, dc = _head_loss(H, H2, V, c, yp, scale, G, G2)
    else:  # in two halves of the rows, summed in order, as _packed._head_loss: the same bits
        m = N // 2
        total, dV, dc = _head_loss(H[:m], H2[:m], V, c, yp[:m], scale, G[:m], G2[:m])
        total1, dV1, dc1 = _head_loss(H[m:], H2[m:], V, c, yp[m:], scale, G[m:], G2[m:])
        total += total1
        dV += dV1
        dc += dc1
    carry = np.zeros((D, n, h), dtype=U.dtype)
    dU, dW, db, _ = _layer_backward(G, H, Hprev, U, W, Xp, idp, carry[0], bs, off, False, relu, False)
    if D == 2:
        dU2, dW2, db2, _ = _layer_backward(G2, H2, Hprev2, U2, W2, Xp, idp, carry[1], bs, off, True, relu, False)
    else:
        dU2, dW2, db2 = np.empty_like(U2), np.empty_like(W2), np.empty_like(b2)
    dh0 = np.empty((D, n, h), dtype=U.dtype)
    h_last = np.empty((D, n, h), dtype=U.dtype)
    for j in range(n):
        s = order[j]  # its position in members
        r = off[mine[s] - 1] + j  # the forward direction ends at its own last step
        for k in range(h):
            h_last[0, s, k] = H[r, k]
            dh0[0, s, k] = carry[0, j, k]
        if D == 2:
            for k in range(h):
                h_last[1, s, k] = H2[j, k]  # the reversed one at step 0
                dh0[1, s, k] = carry[1, j, k]
    return total, dU, dW, db, dU2, dW2, db2, dV, dc, dh0, h_last


_NO_IDS = np.empty(0, dtype=np.intp)
_NO_X = {np.dtype(t): np.empty((0, 0), dtype=t) for t in (np.float32, np.float64)}


def _split(x, dtype):
    if x.dtype.kind in "iu":
        return _NO_X[dtype], x
    return x, _NO_IDS


def layer_forward(U, W, b, x, h0s, bs, off, reverse, relu):
    X, ids = _split(x, U.dtype)
    return _layer_forward(U, W, b, X, ids, np.ascontiguousarray(h0s), bs, off, reverse, relu)


def layer_backward(G, H, Hprev, U, W, x, carry, bs, off, reverse, relu, want_dX):
    X, ids = _split(x, U.dtype)
    dU, dW, db, dX = _layer_backward(G, H, Hprev, U, W, X, ids, carry, bs, off, reverse, relu, want_dX)
    return dU, dW, db, (dX if ids.size == 0 and want_dX else None)


_NO_H = {np.dtype(t): np.empty((0, 0), dtype=t) for t in (np.float32, np.float64)}


def head_loss(tops, V, c, y, scale, out=None):
    out = [np.empty_like(t) for t in tops] if out is None else out
    H2, dH2 = (tops[1], out[1]) if len(tops) == 2 else (_NO_H[V.dtype], _NO_H[V.dtype])
    total, dV, dc = _head_loss(tops[0], H2, V, c, y, V.dtype.type(scale), out[0], dH2)
    return total, dV, dc, out


def head_probs(tops, V, c):
    return _head_probs(tops[0], tops[1] if len(tops) == 2 else _NO_H[V.dtype], V, c)


_NO_X3 = {np.dtype(t): np.empty((0, 0, 0), dtype=t) for t in (np.float32, np.float64)}
_NO_IDS2 = np.empty((0, 0), dtype=np.intp)


_NO_CELL = {np.dtype(t): (np.empty((0, 0), t), np.empty((0, 0), t), np.empty(0, t)) for t in (np.float32, np.float64)}


def cell_step(cells, V, c, x, y, h0, lengths, scale, relu, members=None):
    X, ids = (_NO_X3[V.dtype], x) if x.dtype.kind in "iu" else (x, _NO_IDS2)
    second = cells[1] if len(cells) == 2 else _NO_CELL[V.dtype]
    members = np.arange(len(lengths)) if members is None else members
    total, dU, dW, db, dU2, dW2, db2, dV, dc, dh0, h_last = _cell_step(
        *cells[0], *second, V, c, X, ids, y, h0, lengths, members, V.dtype.type(scale), relu)
    grads = [(dU, dW, db), (dU2, dW2, db2)][: len(cells)]
    return total, grads, dV, dc, dh0, h_last


KERNELS = _packed.Kernels(layer_forward, layer_backward, head_loss, head_probs, cell_step)

deep_loss_and_grads, deep_probs, deep_forward, deep_backward = _packed.bind(KERNELS)
