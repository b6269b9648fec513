"""The stacked recurrence alone (no head) on packed sequences, forward and backward.

For the framework bridges (:mod:`fastrnn.packed`, :mod:`fastrnn.torch`), which
bring their own head and loss. The layout is :mod:`._packed`'s, which is also
torch's ``PackedSequence``: ``N = Σ lengths`` rows, step t in rows
``off[t] .. off[t] + bs[t]``, holding the bs[t] longest sequences (sorted by
decreasing length). Equal lengths are the time-major (T·n, ·) rows as they are.

Each backend's packed layer kernels do the work (``numba_packed.KERNELS``,
``cffi_packed.KERNELS``); the numpy backend gets the same two kernels here,
written the way the reference writes its padded ones. Between layers an
optional dropout mask (already scaled by 1/(1−p)) multiplies the layer's
output, as torch.nn.RNN does in training mode.
"""

from __future__ import annotations

import numpy as np

from .. import _threads
from . import _packed


def _f(A, relu):
    return np.maximum(A, 0, out=A) if relu else np.tanh(A, out=A)


def _np_layer_forward(U, W, b, x, h0s, bs, off, reverse, relu):
    """The packed-layout forward of one direction of one layer, in numpy: (H, Hprev), each (N, h)."""
    T = len(bs)
    H = (U[x] if x.dtype.kind in "iu" else x @ U) + b  # X_t U + b for every running step
    Hprev = np.empty_like(H)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        m, o = bs[t], off[t]
        if reverse:  # step t reads the first bs[t+1] rows of step t+1, the rest start from h0
            k, src = (bs[t + 1], off[t + 1]) if t + 1 < T else (0, 0)
        else:  # step t reads the first bs[t] rows of step t−1
            k, src = (m, off[t - 1]) if t > 0 else (0, 0)
        Hprev[o : o + k] = H[src : src + k]
        Hprev[o + k : o + m] = h0s[k:m]
        A = H[o : o + m] + Hprev[o : o + m] @ W  # A_t = X_t U + b + S_{t∓1} W
        H[o : o + m] = _f(A, relu)  # H_t = f(A_t)
    return H, Hprev


def _np_layer_backward(G, H, Hprev, U, W, x, carry, bs, off, reverse, relu, want_dX):
    """BPTT of one direction of one layer in the packed layout: G becomes dA, carry
    enters as ∂L/∂(final state) and leaves as ∂L/∂h0. Returns (dU, dW, db, dX or None)."""
    T = len(bs)
    for t in (range(T) if reverse else range(T - 1, -1, -1)):  # the forward pass's steps, last first
        m, o = bs[t], off[t]
        fp = (H[o : o + m] > 0) if relu else 1 - H[o : o + m] ** 2  # f'(A_t) from H_t
        G[o : o + m] = (G[o : o + m] + carry[:m]) * fp  # dA_t = (G_t + ∂L/∂S_t) ⊙ f'(A_t)
        carry[:m] = G[o : o + m] @ W.T  # ∂L/∂S_{t∓1} = dA_t Wᵀ; rows not running keep theirs
    dW = Hprev.T @ G  # dW = Σ_t S_{t∓1}ᵀ dA_t
    db = G.sum(axis=0)  # db = Σ_t 1ᵀ dA_t
    if x.dtype.kind in "iu":
        dU = np.zeros_like(U)
        np.add.at(dU, x, G)  # one-hot X scatters rows of dA
        return dU, dW, db, None
    return x.T @ G, dW, db, (G @ U.T if want_dX else None)  # dU = Σ X_tᵀ dA_t, dX_t = dA_t Uᵀ


def kernels(be):
    """The packed layer kernels (forward, backward) of backend module ``be``."""
    name = be.__name__.rsplit(".", 1)[-1]
    if name == "numba_kernels":
        from .numba_packed import KERNELS
    elif name == "cffi_kernels":
        from .cffi_packed import KERNELS
    else:
        return _np_layer_forward, _np_layer_backward
    return KERNELS.layer_forward, KERNELS.layer_backward


def _run(fn, args):
    """fn on each direction under the thread policy (:mod:`fastrnn._threads`): the
    two directions side by side when it allows two threads (the kernels release the
    GIL; each then runs its BLAS on one thread), else one after the other."""
    if len(args) == 2 and _threads.current() >= 2:
        return list(_packed._both(fn, args[0], args[1]))
    return [_threads.call(fn, *a) for a in args]


class Tape(dict):
    """What :func:`forward` keeps for :func:`backward` (per-cell inputs, H, Hprev)."""


def forward(be, cells, D, x, h0s, bs, off, last, relu, masks=None):
    """Every layer in turn on packed rows.

    ``cells`` flat (U, W, b) in torch's order (cell l·D + k); ``x`` (N, d) floats
    or (N,) intp ids; ``h0s`` (L·D, n, h) in the packed (sorted) order; ``last``
    (n,) the packed row of each sorted sequence's last step; ``masks`` L−1
    arrays (N, D·h) or None. Returns (top (N, D·h), h_last (L·D, n, h) sorted, tape).
    """
    layer_forward, layer_backward = kernels(be)
    L = len(cells) // D
    n = len(last)
    caches, h_last = [], []
    for l in range(L):
        args = [(*cells[l * D + k], x, h0s[l * D + k], bs, off, k == 1, relu) for k in range(D)]
        outs = _run(layer_forward, args)
        for k, (H, Hprev) in enumerate(outs):
            caches.append((x, H, Hprev))
            h_last.append(H[:n] if k == 1 else H[last])  # reversed: its step 0; forward: each own last step
        top = outs[0][0] if D == 1 else np.concatenate([outs[0][0], outs[1][0]], axis=1)
        x = top * masks[l] if (masks is not None and l < L - 1) else top  # dropout between layers
    return top, np.stack(h_last), Tape(caches=caches, layer_backward=layer_backward, cells=cells, D=D, bs=bs,
                                        off=off, last=last, relu=relu, masks=masks)


def backward(tape, dtop, dh_last, want_dX=True):
    """BPTT through every layer, top first. ``dtop`` (N, D·h) and ``dh_last`` (L·D, n, h)
    sorted are not written to. Returns ([(dU, dW, db) per cell], dh0 (L·D, n, h) sorted, dX or None)."""
    cells, D, bs, off, relu, masks = (tape[k] for k in ("cells", "D", "bs", "off", "relu", "masks"))
    grads = [None] * len(cells)
    dh0 = np.array(dh_last)  # each cell's carry, updated in place into ∂L/∂h0
    G = dtop
    for l in reversed(range(len(cells) // D)):
        if l < len(cells) // D - 1 and masks is not None:
            G = G * masks[l]  # through the dropout between layer l and l+1
        args = []
        for k in range(D):
            U, W, _ = cells[l * D + k]
            x, H, Hprev = tape["caches"][l * D + k]
            h = W.shape[0]
            G_k = np.array(G[:, k * h : (k + 1) * h], order="C")  # a copy: it becomes dA
            args.append((G_k, H, Hprev, U, W, x, dh0[l * D + k], bs, off, k == 1, relu, want_dX or l > 0))
        outs = _run(tape["layer_backward"], args)
        dX_l = None
        for k, (dU, dW, db, dX) in enumerate(outs):
            grads[l * D + k] = (dU, dW, db)
            dX_l = dX if dX_l is None else dX_l + dX  # both directions read the same input
        G = dX_l  # the gradient of layer l's input is the dH of layer l−1
    return grads, dh0, G
