"""The general model for the fast backends, over packed sequences.

The sequences are sorted by length once (longest first, ties in input order),
and every per-step array is *packed* as torch's PackedSequence and cuDNN lay
it out: step t holds the first bs[t] sorted sequences, the ones still running,
in rows off[t] .. off[t] + bs[t] of an (N, ·) array, N = Σ lengths. So no
kernel touches a padded step: the recurrence's product at step t has bs[t]
rows, and every product over all steps (X U, H V, dW, dU, dX) has N rows.

A backend supplies four kernels on this layout, and optionally a fifth that runs a
one-layer step whole (:class:`Kernels`); this module
stacks the layers, runs the directions (the two of a layer side by side on two
threads: they are independent), and turns packed results back into the
caller's padded (T, n, ·) arrays. Same signatures and results as the
reference's ``deep_*`` functions.

The step at which a cell reads its previous state, in the packed layout:
forward in time, step t reads the first bs[t] rows of step t−1 (sequences only
end, so they are a prefix), step 0 reads h0; reversed, step t reads the first
bs[t+1] rows of step t+1 and h0 for the sequences whose last step is t. Each
layer kernel copies that state into ``Hprev`` (N, h), so that dW = Hprevᵀ dA
is one product.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np


class Kernels(NamedTuple):
    """A backend's kernels on packed sequences (sizes N, n, d, h, v; bs, off as above).

    layer_forward(U, W, b, x, h0s, bs, off, reverse, relu) -> (H (N, h), Hprev (N, h))
    layer_backward(G, H, Hprev, U, W, x, carry, bs, off, reverse, relu, want_dX) -> (dU, dW, db, dX or None)
        G (N, h) = ∂L/∂H from above becomes dA; carry (n, h) enters as ∂L/∂(final
        state) and leaves as ∂L/∂h0 (sorted order)
    head_loss(tops, V, c, y, scale, out=None) -> (Σ −log Ŷ[y] over y >= 0, dV, dc, [∂L/∂top for each top])
        (the ∂L/∂top written into ``out``, a list of arrays like ``tops``, when given)
    head_probs(tops, V, c) -> Ŷ (N, v)
        ``tops`` is the top layer's output per direction, [H] or [H_fwd, H_rev]
        (each (N, h)): the head reads [H_fwd | H_rev] without building it.
    ``x`` is float (N, d) or intp ids (N,); h0s (n, h) in sorted order.
    cell_step(cells, V, c, inputs, targets, h0, lengths, scale, relu, members=None)
        -> (Σ −log Ŷ[y], [(dU, dW, db) per cell], dV, dc, dh0, h_last), optional: the
        whole ``params_only`` step of one layer (one cell, or two: both directions)
        in one call, on the padded (T, n, ·) inputs and targets, (D, n, h) h0 and (n,)
        lengths, with the same packing and kernels as above (its Python between the
        kernels is most of a small step's overhead). ``members`` (k ascending batch
        indices, default all): the block of sequences to run, read in place; dh0 and
        h_last (D, k, h) in that order.
    """

    layer_forward: Callable
    layer_backward: Callable
    head_loss: Callable
    head_probs: Callable
    cell_step: Callable = None


class Packing(NamedTuple):
    order: np.ndarray  #: (n,) sorted position j holds sequence order[j]
    bs: np.ndarray  #: (T,) sequences running at step t
    off: np.ndarray  #: (T + 1,) first packed row of step t; off[T] = N
    rows: tuple  #: (t index, sequence index) of every packed row, or None when nothing is padded
    last: np.ndarray  #: (n,) packed row of each sorted sequence's last step


_EQUAL = {}  # (T, n) -> the packing of n sequences of length T


def packing(lengths, T):
    n = len(lengths)
    if lengths.min() == T:
        if (T, n) not in _EQUAL:
            if len(_EQUAL) > 64:
                _EQUAL.clear()
            _EQUAL[T, n] = _packing(lengths, T)
        return _EQUAL[T, n]
    return _packing(lengths, T)


def _packing(lengths, T):
    n = len(lengths)
    order = np.argsort(-lengths, kind="stable")
    bs = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1).astype(np.intp)
    off = np.zeros(T + 1, dtype=np.intp)
    np.cumsum(bs, out=off[1:])
    if off[T] == T * n:  # nothing padded: the packed rows are the time-major rows
        order = np.arange(n)
        rows = None
    else:
        t_idx = np.repeat(np.arange(T), bs)
        j_idx = np.arange(off[T]) - np.repeat(off[:-1], bs)
        rows = (t_idx, order[j_idx])
    sorted_lengths = lengths[order]
    last = off[sorted_lengths - 1] + np.arange(n)
    return Packing(order, bs, off, rows, last)


def _pack(a, p):
    """(T, n, ...) -> (N, ...)."""
    if p.rows is None:
        return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
    return np.ascontiguousarray(a[p.rows])


def _unpack(a, p, T, n):
    """(N, ...) -> (T, n, ...), zero at padded steps."""
    if p.rows is None:
        return a.reshape((T, n) + a.shape[1:])
    out = np.zeros((T, n) + a.shape[1:], dtype=a.dtype)
    out[p.rows] = a
    return out


def _unsort(a, p):
    """Sorted (n, ...) -> the caller's order."""
    if p.rows is None:
        return a
    out = np.empty_like(a)
    out[p.order] = a
    return out


_side = None  # one worker thread for the reversed direction, started on first use


def _forget_side():
    global _side
    _side = None  # a forked child has no such thread: it starts its own


os.register_at_fork(after_in_child=_forget_side)


def _blas_threads_local():
    """OpenBLAS's per-thread thread count setter (``openblas_set_num_threads_local``,
    OpenBLAS >= 0.3.27) in the library SciPy ships, whose GEMMs both fast backends
    call; None where it is not found."""
    import ctypes
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.origin:
        return None
    for path in sorted((Path(spec.origin).parent.parent / "scipy.libs").glob("libscipy_openblas-*.so")):
        try:
            fn = ctypes.CDLL(str(path)).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        return fn
    return None


_SET_LOCAL = _blas_threads_local()


def _one_blas_thread(fn, args):
    """fn(*args) with this thread's BLAS calls on one thread: two directions on two
    threads would otherwise queue for OpenBLAS's one thread pool."""
    if _SET_LOCAL is None:
        return fn(*args)
    previous = _SET_LOCAL(1)
    try:
        return fn(*args)
    finally:
        _SET_LOCAL(previous)


def _both(fn, args_fwd, args_rev):
    """fn on both directions, the reversed one on a second thread (the kernels release the GIL)."""
    global _side
    if _side is None:
        _side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastrnn-direction")
    future = _side.submit(_one_blas_thread, fn, args_rev)
    forward = _one_blas_thread(fn, args_fwd)
    return forward, future.result()


def _directions(fn, args, side_by_side):
    """fn on each direction's args: both side by side on two threads, or one after the other."""
    if len(args) == 2 and side_by_side:
        return list(_both(fn, *args))
    return [fn(*a) for a in args]


# A bidirectional model's head (its products, over [H_fwd | H_rev], are as large as a
# direction's) runs in two halves of the packed rows, side by side when the directions
# are. Always in halves, so the bits do not depend on the thread count (a product's
# rounding can depend on how many rows it has).


def _head_loss(K, tops, V, c, y, scale, side_by_side):
    N = len(y)
    if len(tops) == 1 or N < 2:
        return K.head_loss(tops, V, c, y, scale)
    dtops = [np.empty_like(t) for t in tops]
    halves = [([t[r] for t in tops], V, c, y[r], scale, [g[r] for g in dtops])
              for r in (slice(None, N // 2), slice(N // 2, None))]
    (t0, dV, dc, _), (t1, dV1, dc1, _) = _directions(K.head_loss, halves, side_by_side)
    return t0 + t1, dV + dV1, dc + dc1, dtops


def _head_probs(K, tops, V, c, side_by_side):
    N = len(tops[0])
    if len(tops) == 1 or N < 2:
        return K.head_probs(tops, V, c)
    halves = [([t[r] for t in tops], V, c) for r in (slice(None, N // 2), slice(N // 2, None))]
    return np.concatenate(_directions(K.head_probs, halves, side_by_side))


def _stack_forward(K, cells, D, x, h0, p, relu, side_by_side=True):
    """Returns (the top layer's outputs [(N, h) per direction], per-cell (input, H, Hprev),
    final states sorted (L·D, n, h))."""
    h0s = h0[:, p.order] if p.rows is not None else h0
    caches, h_last = [], []
    for l in range(len(cells) // D):
        args = [(*cells[l * D + k], x, h0s[l * D + k], p.bs, p.off, k == 1, relu) for k in range(D)]
        outs = _directions(K.layer_forward, args, side_by_side)
        for k, (H, Hprev) in enumerate(outs):
            caches.append((x, H, Hprev))
            h_last.append(H[: len(p.order)] if k == 1 else H[p.last])  # reversed: its step 0; forward: own last
        tops = [H for H, _ in outs]
        if l + 1 < len(cells) // D:
            x = tops[0] if D == 1 else np.concatenate(tops, axis=1)  # the next layer reads [H fwd | H rev]
    return tops, caches, np.stack(h_last)


def _stack_backward(K, cells, D, caches, dtops, dh_last_s, p, relu, want_dX, side_by_side=True):
    """dtops: ∂L/∂(top output) per direction."""
    grads, dAs = [None] * len(cells), [None] * len(cells)
    dh0 = np.empty_like(dh_last_s)
    G = None
    for l in reversed(range(len(cells) // D)):
        args = []
        for k in range(D):
            U, W, _ = cells[l * D + k]
            x, H, Hprev = caches[l * D + k]
            h = W.shape[0]
            if G is None:
                G_k = dtops[k]  # the top layer: the head's gradient, one array per direction
            else:
                G_k = G if D == 1 else np.ascontiguousarray(G[:, k * h : (k + 1) * h])
            dh0[l * D + k] = dh_last_s[l * D + k]
            args.append((G_k, H, Hprev, U, W, x, dh0[l * D + k], p.bs, p.off, k == 1, relu, want_dX or l > 0))
        outs = _directions(K.layer_backward, args, side_by_side)
        dX_l = None
        for k, (dU, dW, db, dX) in enumerate(outs):
            grads[l * D + k] = (dU, dW, db)
            dAs[l * D + k] = args[k][0]  # G became dA
            dX_l = dX if dX_l is None else dX_l + dX  # both directions read the same input
        G = dX_l  # the gradient of layer l's input is the dH of layer l−1
    return grads, dh0, G, dAs


def deep_forward(K, cells, D, inputs, h0, lengths, relu, side_by_side=True):
    T, n = inputs.shape[:2]
    p = packing(lengths, T)
    tops, _, h_last = _stack_forward(K, cells, D, _pack(inputs, p), h0, p, relu, side_by_side)
    top = tops[0] if D == 1 else np.concatenate(tops, axis=1)
    return _unpack(top, p, T, n), _unsort(h_last.swapaxes(0, 1), p).swapaxes(0, 1).copy()


def deep_backward(K, cells, D, inputs, h0, lengths, relu, H, dH, dh_last, want_dX=True):
    (U, W, _), = cells
    T, n, h = H.shape
    p = packing(lengths, T)
    x = _pack(inputs, p)
    Hp = np.ascontiguousarray(_pack(H, p))
    h0s = h0[0][p.order] if p.rows is not None else h0[0]
    Hprev = np.empty_like(Hp)  # forward in time: step t reads the first bs[t] rows of step t−1
    Hprev[: p.bs[0]] = h0s[: p.bs[0]]
    for t in range(1, T):
        Hprev[p.off[t] : p.off[t + 1]] = Hp[p.off[t - 1] : p.off[t - 1] + p.bs[t]]
    G = np.array(_pack(dH, p))  # copied: it becomes dA
    carry = np.array(dh_last[0][p.order] if p.rows is not None else dh_last[0])
    dU, dW, db, dX = K.layer_backward(G, Hp, Hprev, U, W, x, carry, p.bs, p.off, False, relu, want_dX)
    dX = None if dX is None else _unpack(dX, p, T, n)
    return dU, dW, db, _unsort(carry, p)[None], dX, _unpack(G, p, T, n)


def deep_probs(K, cells, D, V, c, inputs, h0, lengths, relu, side_by_side=True):
    T, n = inputs.shape[:2]
    p = packing(lengths, T)
    tops, _, h_last = _stack_forward(K, cells, D, _pack(inputs, p), h0, p, relu, side_by_side)
    P = _head_probs(K, tops, V, c, side_by_side)
    return _unpack(P, p, T, n), _unsort(h_last.swapaxes(0, 1), p).swapaxes(0, 1).copy()


def deep_loss_and_grads(K, cells, D, V, c, inputs, targets, h0, lengths, scale, relu, params_only=False,
                        side_by_side=True, members=None):
    """``members``: the sequences of one block of a split step (ascending batch indices)
    of the whole batch's inputs, targets, h0 and lengths; results are the block's."""
    if K.cell_step is not None and len(cells) == D and params_only and (D == 1 or not side_by_side):
        # one layer: the whole step in one call (both directions on this thread), the block read in place
        total, grads, dV, dc, dh0, h_last = K.cell_step(cells, V, c, inputs, targets, h0, lengths, scale, relu,
                                                        members)
        return scale * total, grads, dV, dc, dh0, None, None, h_last
    if members is not None:  # the kernels one by one: the block's own padded arrays, up to its longest
        Tb = int(lengths[members].max())
        inputs, targets = (np.ascontiguousarray(a[:Tb, members]) for a in (inputs, targets))
        h0, lengths = np.ascontiguousarray(h0[:, members]), lengths[members]
    T, n = inputs.shape[:2]
    p = packing(lengths, T)
    tops, caches, h_last = _stack_forward(K, cells, D, _pack(inputs, p), h0, p, relu, side_by_side)
    y = np.ascontiguousarray(_pack(targets, p))
    total, dV, dc, dtops = _head_loss(K, tops, V, c, y, scale, side_by_side)
    dh_last = np.zeros_like(h_last)
    grads, dh0, dX, dAs = _stack_backward(K, cells, D, caches, dtops, dh_last, p, relu, not params_only,
                                          side_by_side)
    if params_only:
        dX = dAs = None
    else:
        dX = None if dX is None else _unpack(dX, p, T, n)
        dAs = [_unpack(a, p, T, n) for a in dAs]
    h_last = _unsort(h_last.swapaxes(0, 1), p).swapaxes(0, 1).copy()
    dh0 = _unsort(dh0.swapaxes(0, 1), p).swapaxes(0, 1).copy()
    return scale * total, grads, dV, dc, dh0, dX, dAs, h_last


def bind(kernels):
    """A backend's four entry points (deep_loss_and_grads, deep_probs,
    deep_forward, deep_backward) on its layer ``kernels``."""
    return tuple(functools.partial(f, kernels) for f in (deep_loss_and_grads, deep_probs, deep_forward, deep_backward))
