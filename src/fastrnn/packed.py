"""The stacked, bidirectional recurrence alone, on packed sequences: for bridges.

:func:`fastrnn.rnn_forward` / :func:`fastrnn.rnn_backward` run one layer; the
framework bridges (:mod:`fastrnn.torch`, :mod:`fastrnn.jax`) need the whole
stack without the softmax head, since the caller brings its own head and loss:

    out, h_last, tape = packed_forward(data, batch_sizes, layers, h0)
    grads, dh0, dX = packed_backward(tape, d_out, dh_last)

The layout is torch's ``PackedSequence`` (and cuDNN's): the sequences sorted
by decreasing length, ``batch_sizes[t]`` of them running at step t, their rows
stacked step after step into ``data`` (N, d), N = Σ lengths. Sequences of
equal length T are simply the time-major rows ``x.reshape(T * n, d)`` with
``batch_sizes = [n] * T``. ``out`` (N, D·h) is the top layer's states in the
same rows, directions concatenated; ``h0`` and ``h_last`` are (L·D, n, h) in
the sorted order (torch's order of layers and directions). Padded steps do
not exist in this layout, so no work is spent on them.
"""

from __future__ import annotations

import numpy as np

from . import _validate as check
from ._params import Cell
from .backends import resolve
from .backends import stack as _stack

__all__ = ["packed_forward", "packed_backward", "lengths_of"]


def lengths_of(batch_sizes):
    """Each sorted sequence's length, from the steps' batch sizes."""
    bs = _check_batch_sizes(batch_sizes)[0]
    return (bs[None, :] > np.arange(bs[0])[:, None]).sum(axis=1).astype(np.intp)


_STEPS = {}  # batch_sizes' bytes -> (bs, off, last): a training loop repeats the same few


def _steps(batch_sizes, N):
    """(bs, off, last) for validated batch sizes; ``last`` is each sorted sequence's last packed row."""
    bs = np.asarray(batch_sizes)
    key = (bs.dtype.str, bs.shape, bs.tobytes()) if bs.size <= 4096 else None
    hit = _STEPS.get(key)
    if hit is not None and hit[1][-1] == N:
        return hit
    bs, off = _check_batch_sizes(bs, N)
    steps = (bs, off, off[lengths_of(bs) - 1] + np.arange(bs[0]))
    if key is not None:
        if len(_STEPS) > 64:
            _STEPS.clear()
        _STEPS[key] = steps
    return steps


def _check_batch_sizes(batch_sizes, N=None):
    bs = np.asarray(batch_sizes)
    if bs.ndim != 1 or bs.size == 0 or bs.dtype.kind not in "iu":
        raise TypeError(f"batch_sizes must be a non-empty 1-D integer array (T,), got {bs.dtype} {bs.shape}")
    if bs.min() < 1 or np.any(np.diff(bs.astype(np.int64)) > 0):
        raise ValueError("batch_sizes must be positive and non-increasing (sequences sorted longest first)")
    total = sum(map(int, bs))  # in Python ints: an int64 sum can wrap round to N
    if N is not None and total != N:
        raise ValueError(f"batch_sizes sum to {total} but data has N={N} rows")
    bs = bs.astype(np.intp)
    off = np.zeros(len(bs) + 1, dtype=np.intp)
    np.cumsum(bs, out=off[1:])
    return bs, off


def packed_forward(data, batch_sizes, layers, h0=None, *, nonlinearity="tanh", dropout_masks=None, backend=None):
    """Forward through every layer and direction on packed rows.

    Parameters
    ----------
    data : ndarray
        Float (N, d), or integer token ids (N,) standing for one-hot rows.
    batch_sizes : ndarray of int (T,)
        Sequences running at each step, non-increasing.
    layers : sequence of sequences of Cell
        As :class:`fastrnn.DeepParams.layers`: L layers of D cells (U, W, b),
        ``U`` (d, h) for layer 0 and (D·h, h) above.
    h0 : ndarray, optional
        (L·D, n, h) initial states in the sorted order; default zeros.
    nonlinearity : {'tanh', 'relu'}
    dropout_masks : sequence of L−1 ndarrays (N, D·h), optional
        Multiplies layer l's output before layer l+1 reads it (torch's dropout
        between layers, the mask already scaled by 1/(1−p)).
    backend : str, optional

    Returns
    -------
    out : ndarray (N, D·h)
    h_last : ndarray (L·D, n, h), each sequence's final state per cell (reversed: at its step 0)
    tape : what :func:`packed_backward` needs
    """
    be = resolve(backend)
    relu = check.check_nonlinearity(nonlinearity)
    if not isinstance(layers, (tuple, list)) or not layers or not isinstance(layers[0], (tuple, list)):
        raise TypeError("layers must be a sequence of layers, each a sequence of Cell(U, W, b)")
    D = len(layers[0])
    if D not in (1, 2) or any(len(cells) != D for cells in layers):
        raise ValueError("every layer must hold 1 cell (forward) or 2 cells (forward, reversed), the same for all")
    for l, cells in enumerate(layers):
        for k, cell in enumerate(cells):
            if not isinstance(cell, (tuple, list)) or len(cell) != 3:
                raise TypeError(f"layers[{l}][{k}] must be a Cell(U, W, b), got {type(cell).__name__}")
    U0 = np.asarray(layers[0][0][0])
    dtype = U0.dtype
    if dtype not in (np.float32, np.float64) or U0.ndim != 2:
        raise TypeError(f"layers[0][0].U must be a float32 or float64 (d, h) array, got {U0.dtype} {U0.shape}")
    d, h = U0.shape
    flat = []
    for l, cells in enumerate(layers):
        d_in = d if l == 0 else D * h
        for k, cell in enumerate(cells):
            arrays = []
            for name, a, shape in zip("UWb", cell, ((d_in, h), (h, h), (h,))):
                a = np.asarray(a)
                if a.shape != shape or a.dtype != dtype:
                    raise ValueError(f"layers[{l}][{k}].{name} must be {dtype} of shape {shape}, got {a.dtype} {a.shape}")
                check._check_finite(f"layers[{l}][{k}].{name}", a)
                arrays.append(np.ascontiguousarray(a))
            flat.append(tuple(arrays))
    x = np.asarray(data)
    if x.dtype.kind in "iu":
        if x.ndim != 1:
            raise ValueError(f"token ids must be (N,), got shape {x.shape}")
        if x.size and (x.min() < 0 or x.max() >= d):
            raise ValueError(f"token ids must be in [0, d={d})")
        x = np.ascontiguousarray(x, dtype=np.intp)
    else:
        if x.dtype != dtype or x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"data must be {dtype} of shape (N, d={d}), got {x.dtype} {x.shape}")
        check._check_finite("data", x)
        x = np.ascontiguousarray(x)
    bs, off, last = _steps(batch_sizes, len(x))
    n, LD = int(bs[0]), len(flat)
    if h0 is None:
        h0 = np.zeros((LD, n, h), dtype)
    else:
        h0 = np.asarray(h0)
        if h0.shape != (LD, n, h) or h0.dtype != dtype:
            raise ValueError(f"h0 must be {dtype} of shape (L·D={LD}, n={n}, h={h}), got {h0.dtype} {h0.shape}")
        check._check_finite("h0", h0)
        h0 = np.ascontiguousarray(h0)
    if dropout_masks is not None:
        dropout_masks = [np.asarray(m, dtype=dtype) for m in dropout_masks]
        if len(dropout_masks) != len(layers) - 1 or any(m.shape != (len(x), D * h) for m in dropout_masks):
            raise ValueError(f"dropout_masks must be L−1={len(layers) - 1} arrays of shape (N, D·h)")
        for l, m in enumerate(dropout_masks):
            check._check_finite(f"dropout_masks[{l}]", m)
    return _stack.forward(be, flat, D, x, h0, bs, off, last, relu, dropout_masks)


def packed_backward(tape, d_out, dh_last=None, *, want_dX=True):
    """Backward through what :func:`packed_forward` computed.

    ``d_out`` (N, D·h) = ∂L/∂out (None: zeros); ``dh_last`` (L·D, n, h) = ∂L/∂h_last
    (None: zeros). Neither is written to. Returns ``(layers, dh0, dX)``: the
    gradients as L tuples of D :class:`Cell` (dU, dW, db), ∂L/∂h0 (L·D, n, h)
    sorted, and ∂L/∂data (None for token ids or ``want_dX=False``).
    """
    if not isinstance(tape, _stack.Tape):
        raise TypeError("tape must be the third value packed_forward returned")
    cells, D = tape["cells"], tape["D"]
    H0 = tape["caches"][-1][1]
    N, h = H0.shape
    n = len(tape["last"])
    dtype = H0.dtype
    if d_out is None:
        d_out = np.zeros((N, D * h), dtype)
    d_out = np.asarray(d_out)
    if d_out.shape != (N, D * h) or d_out.dtype != dtype:
        raise ValueError(f"d_out must be {dtype} of shape (N={N}, D·h={D * h}), got {d_out.dtype} {d_out.shape}")
    check._check_finite("d_out", d_out)
    if dh_last is None:
        dh_last = np.zeros((len(cells), n, h), dtype)
    dh_last = np.asarray(dh_last)
    if dh_last.shape != (len(cells), n, h) or dh_last.dtype != dtype:
        raise ValueError(f"dh_last must be {dtype} of shape ({len(cells)}, {n}, {h}), got {dh_last.dtype} {dh_last.shape}")
    check._check_finite("dh_last", dh_last)
    grads, dh0, dX = _stack.backward(tape, d_out, dh_last, want_dX)
    layers = tuple(tuple(Cell(*grads[l * D + k]) for k in range(D)) for l in range(len(cells) // D))
    return layers, dh0, dX
