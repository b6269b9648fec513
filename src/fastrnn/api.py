"""The public functions: validate, call one backend, return results in the caller's layout."""

from __future__ import annotations

import numpy as np

from . import _validate as check
from ._params import Cell, DeepGrads, DeepParams, Grads, LayerGrads
from .backends import resolve

__all__ = ["loss_and_grads", "predict_proba", "rnn_forward", "rnn_backward"]


def loss_and_grads(
    params, inputs, targets, *, h0=None, reduction="mean", batch_first=False, params_only=False, backend=None,
    lengths=None, ignore_index=-100,
):
    """Softmax cross-entropy loss of the RNN on a batch of sequences, and all its gradients.

    Parameters
    ----------
    params : Params
        ``U`` (d, h), ``W`` (h, h), ``V`` (h, v), ``b`` (h,), ``c`` (v,), all float32
        or all float64. Results come back in the same dtype.
    inputs : ndarray
        Float (T, n, d), or integer token ids (T, n) standing for one-hot rows of X
        (ids index rows of ``U``; no one-hot matrix is built). With
        ``batch_first=True`` the leading axes are (n, T). One unbatched sequence,
        (T, d) floats or (T,) ids, works too.
    targets : ndarray of int
        Class ids in [0, v), laid out like the leading axes of ``inputs``.
    h0 : ndarray, optional
        Initial hidden state (n, h), or (h,) unbatched. Default zeros.
    reduction : {'mean', 'sum'}
        'mean' divides the summed negative log-likelihood by T·n.
    params_only : bool
        Compute only what a training step needs: the loss and the gradients of
        U, W, V, b, c and h0, with ``grads.X`` and ``grads.A`` left None. This
        skips the dX product, and the Numba backend then keeps dA for a few
        timesteps at a time instead of all T (less memory, same numbers).
    backend : str, optional
        'numba', 'c' or 'numpy'; default :func:`fastrnn.get_backend`.

    Returns
    -------
    loss : float
    grads : Grads
        ``U, W, V, b, c`` like the parameters, ``h0`` like the initial state,
        ``X`` like float inputs (None for ids), ``A`` = dL/dA_t per timestep; both None
        with ``params_only``.
    h_last : ndarray
        The final hidden state H_T (n, h), to carry into the next chunk in
        truncated BPTT.

    The general model (README, "Variable lengths, stacked and bidirectional
    layers, relu"): ``params`` may be a :class:`DeepParams` (``h0`` and
    ``h_last`` are then (L·D, n, h) and ``grads`` a :class:`DeepGrads`);
    ``lengths`` (n,) ints in [1, T] mark the real steps of each sequence
    (padded steps get no loss, no gradient and H = 0; ``h_last`` is each
    sequence's state at its own last step); targets equal to ``ignore_index``
    count for nothing. 'mean' divides by the number of counted targets.
    """
    if _general(params, lengths, targets, ignore_index):
        return _general_loss_and_grads(
            params, inputs, targets, h0, reduction, batch_first, params_only, backend, lengths, ignore_index
        )
    be = resolve(backend)
    p = check.check_params(params)
    d, h = p.U.shape
    x, layout = check.check_inputs(inputs, d, p.U.dtype, batch_first)
    y = check.check_targets(targets, layout, p.V.shape[1])
    h0 = check.check_h0(h0, layout, h, p.U.dtype)
    scale = check.check_reduction(reduction, layout.T, layout.n)
    params_only = check.check_flag("params_only", params_only)
    loss, dU, dW, dV, db, dc, dh0, dX, dA, h_last = be.loss_and_grads(*p, x, y, h0, scale, params_only)
    grads = Grads(
        dU, dW, dV, db, dc, layout.state_to_user(dh0), layout.seq_to_user(dX), layout.seq_to_user(dA)
    )
    return float(loss), grads, layout.state_to_user(h_last)


def predict_proba(params, inputs, *, h0=None, batch_first=False, backend=None, lengths=None):
    """Softmax probabilities Ŷ_t for every timestep and the final hidden state.

    Arguments as in :func:`loss_and_grads`. Returns ``(probs, h_last)`` with
    ``probs`` (T, n, v) in the inputs' layout and ``h_last`` (n, h). With
    ``lengths``, padded steps have probabilities 0 and ``h_last`` is each
    sequence's state at its own last step; with :class:`DeepParams`,
    ``h_last`` is (L·D, n, h).
    """
    if _general(params, lengths):
        return _general_predict_proba(params, inputs, h0, batch_first, backend, lengths)
    be = resolve(backend)
    p = check.check_params(params)
    d, h = p.U.shape
    x, layout = check.check_inputs(inputs, d, p.U.dtype, batch_first)
    h0 = check.check_h0(h0, layout, h, p.U.dtype)
    Y, h_last = be.probs(*p, x, h0)  # Ŷ, the softmax of every step
    return layout.seq_to_user(Y), layout.state_to_user(h_last)


def rnn_forward(inputs, U, W, b, h0=None, *, batch_first=False, backend=None, lengths=None, nonlinearity="tanh"):
    """The recurrence alone: ``H_t = tanh(X_t U + H_{t-1} W + b)`` for t = 1..T.

    For people who bring their own output head and loss. ``inputs`` and ``h0``
    as in :func:`loss_and_grads`. Returns every hidden state H, (T, n, h) in
    the inputs' layout; ``H[-1]`` (or ``H[:, -1]`` batch-first) is the final state.
    ``nonlinearity='relu'`` uses max(A, 0). With ``lengths``, H is 0 at padded
    steps and sequence i's final state is ``H[lengths[i] - 1, i]``.
    """
    if b is None:
        raise TypeError("b must be an array (h,); pass np.zeros(h) for a layer without a bias")
    if lengths is not None or nonlinearity != "tanh":
        return _general_rnn_forward(inputs, U, W, b, h0, batch_first, backend, lengths, nonlinearity)
    be = resolve(backend)
    U, W, b = check.check_recurrent_weights(U, W, b)
    d, h = U.shape
    x, layout = check.check_inputs(inputs, d, U.dtype, batch_first)
    h0 = check.check_h0(h0, layout, h, U.dtype)
    return layout.seq_to_user(be.forward(U, W, b, x, h0))


def rnn_backward(
    dH, H, inputs, U, W, h0=None, *, dh_last=None, batch_first=False, backend=None, lengths=None, nonlinearity="tanh"
):
    """Backpropagation through the recurrence computed by :func:`rnn_forward`.

    Parameters
    ----------
    dH : ndarray
        ∂L/∂H_t from the caller's head for every timestep, shaped like ``H``.
    H : ndarray
        The hidden states :func:`rnn_forward` returned for the same arguments.
    inputs, U, W, h0, batch_first, backend
        As given to :func:`rnn_forward`.
    dh_last : ndarray, optional
        An extra gradient on the final state H_T (n, h), e.g. from a later chunk
        (with ``lengths``: on each sequence's state at its own last step).
    lengths, nonlinearity
        As given to :func:`rnn_forward`; dH at padded steps is ignored.

    Returns
    -------
    LayerGrads
        ``U`` (d, h), ``W`` (h, h), ``b`` (h,), ``h0`` like the initial state,
        ``X`` like float inputs (None for ids), ``A`` = dL/dA_t shaped like ``H``.
    """
    if lengths is not None or nonlinearity != "tanh":
        return _general_rnn_backward(dH, H, inputs, U, W, h0, dh_last, batch_first, backend, lengths, nonlinearity)
    be = resolve(backend)
    U, W = check.check_recurrent_weights(U, W)
    d, h = U.shape
    dtype = U.dtype
    x, layout = check.check_inputs(inputs, d, dtype, batch_first)
    h0 = check.check_h0(h0, layout, h, dtype)
    H = layout.seq_from_user("H", H, (h,), dtype, "h")
    if np.abs(H).max() > 1:
        raise ValueError("H must hold the hidden states rnn_forward returned (values in [-1, 1])")
    dH = layout.seq_from_user("dH", dH, (h,), dtype, "h")
    if dh_last is not None:
        dH = dH.copy()  # never write into the caller's array
        dH[-1] += check.check_h0(dh_last, layout, h, dtype, name="dh_last")
    dU, dW, db, dh0, dX, dA = be.backward(U, W, x, h0, H, dH)
    return LayerGrads(dU, dW, db, layout.state_to_user(dh0), layout.seq_to_user(dX), layout.seq_to_user(dA))


# --------------------------------------------------------------------------
# The general model: lengths, ignore_index, relu, layers, directions. Each
# backend's deep_* functions take flat cells [(U, W, b)] in torch's order.
# --------------------------------------------------------------------------


def _general(params, lengths, targets=None, ignore_index=-100):
    """Whether a call needs the general model rather than today's one-layer kernels."""
    if isinstance(params, DeepParams) or lengths is not None:
        return True
    if targets is None:
        return False
    if (type(ignore_index) is int and ignore_index < 0 and type(targets) is np.ndarray
            and targets.dtype.kind in "iu" and targets.size):
        # a negative ignore_index is the only negative target allowed: one reduction decides
        return bool(targets.min() < 0)
    ignore_index = check.check_ignore_index(ignore_index)
    try:
        return bool(np.any(np.asarray(targets) == ignore_index))
    except Exception:
        return False  # not array-like: the usual checks say so


def _general_backend(be):
    if not hasattr(be, "deep_loss_and_grads"):
        raise NotImplementedError(
            f"backend {be.__name__.rsplit('.', 1)[-1]!r} does not run lengths, ignore_index, relu, "
            "num_layers > 1 or bidirectional yet; use backend='numpy'"
        )
    return be


def _unpack_params(params):
    """(cells, D, V, c, relu, deep) for either container."""
    if isinstance(params, DeepParams):
        cells, D, V, c, relu = check.check_deep_params(params)
        return cells, D, V, c, relu, True
    U, W, V, b, c = check.check_params(params)
    return [(U, W, b)], 1, V, c, False, False


def _states_from_user(h0, layout, deep, LD, h, dtype, name="h0"):
    if deep:
        return check.check_deep_h0(h0, layout, LD, h, dtype, name)
    return check.check_h0(h0, layout, h, dtype, name)[None]


def _states_to_user(a, layout, deep):
    if deep:
        return a[:, 0] if layout.unbatched else a
    return layout.state_to_user(a[0])


def _full_lengths(lengths, layout):
    return lengths if lengths is not None else np.full(layout.n, layout.T, dtype=np.intp)


def _general_loss_and_grads(params, inputs, targets, h0, reduction, batch_first, params_only, backend, lengths,
                            ignore_index):
    be = resolve(backend)
    ignore_index = check.check_ignore_index(ignore_index)
    cells, D, V, c, relu, deep = _unpack_params(params)
    d, h = cells[0][0].shape
    dtype = V.dtype
    x, layout = check.check_inputs(inputs, d, dtype, batch_first)
    lengths = check.check_lengths(lengths, layout)
    y, counted = check.check_targets_counted(targets, layout, V.shape[1], lengths, ignore_index)
    h0 = _states_from_user(h0, layout, deep, len(cells), h, dtype)
    scale = check.check_mean_scale(reduction, counted)
    params_only = check.check_flag("params_only", params_only)
    loss, cell_grads, dV, dc, dh0, dX, dA, h_last = _general_backend(be).deep_loss_and_grads(
        cells, D, V, c, x, y, h0, _full_lengths(lengths, layout), scale, relu, params_only
    )
    dX = layout.seq_to_user(dX)
    dA = None if dA is None else [layout.seq_to_user(a) for a in dA]
    if not deep:
        (dU, dW, db), = cell_grads
        grads = Grads(dU, dW, dV, db, dc, _states_to_user(dh0, layout, False), dX, None if dA is None else dA[0])
        return float(loss), grads, _states_to_user(h_last, layout, False)
    layers = tuple(tuple(Cell(*cell_grads[l * D + k]) for k in range(D)) for l in range(len(cells) // D))
    dA = None if dA is None else tuple(tuple(dA[l * D + k] for k in range(D)) for l in range(len(cells) // D))
    grads = DeepGrads(layers, dV, dc, _states_to_user(dh0, layout, True), dX, dA)
    return float(loss), grads, _states_to_user(h_last, layout, True)


def _general_predict_proba(params, inputs, h0, batch_first, backend, lengths):
    be = resolve(backend)
    cells, D, V, c, relu, deep = _unpack_params(params)
    d, h = cells[0][0].shape
    x, layout = check.check_inputs(inputs, d, V.dtype, batch_first)
    lengths = check.check_lengths(lengths, layout)
    h0 = _states_from_user(h0, layout, deep, len(cells), h, V.dtype)
    P, h_last = _general_backend(be).deep_probs(cells, D, V, c, x, h0, _full_lengths(lengths, layout), relu)
    return layout.seq_to_user(P), _states_to_user(h_last, layout, deep)


def _general_rnn_forward(inputs, U, W, b, h0, batch_first, backend, lengths, nonlinearity):
    be = resolve(backend)
    relu = check.check_nonlinearity(nonlinearity)
    U, W, b = check.check_recurrent_weights(U, W, b)
    d, h = U.shape
    x, layout = check.check_inputs(inputs, d, U.dtype, batch_first)
    lengths = check.check_lengths(lengths, layout)
    h0 = check.check_h0(h0, layout, h, U.dtype)[None]
    H, _ = _general_backend(be).deep_forward([(U, W, b)], 1, x, h0, _full_lengths(lengths, layout), relu)
    return layout.seq_to_user(H)


def _general_rnn_backward(dH, H, inputs, U, W, h0, dh_last, batch_first, backend, lengths, nonlinearity):
    be = resolve(backend)
    relu = check.check_nonlinearity(nonlinearity)
    U, W = check.check_recurrent_weights(U, W)
    d, h = U.shape
    dtype = U.dtype
    x, layout = check.check_inputs(inputs, d, dtype, batch_first)
    lengths = check.check_lengths(lengths, layout)
    h0 = check.check_h0(h0, layout, h, dtype)[None]
    H = layout.seq_from_user("H", H, (h,), dtype, "h")
    if (np.abs(H).max() > 1) if not relu else (H.min() < 0):
        raise ValueError(
            "H must hold the hidden states rnn_forward returned (values in "
            + ("[0, inf) for relu)" if relu else "[-1, 1])")
        )
    dH = layout.seq_from_user("dH", dH, (h,), dtype, "h")
    dh_last = (
        np.zeros_like(h0) if dh_last is None else check.check_h0(dh_last, layout, h, dtype, name="dh_last")[None]
    )
    b = np.zeros(h, dtype)  # not used by the backward pass
    dU, dW, db, dh0, dX, dA = _general_backend(be).deep_backward(
        [(U, W, b)], 1, x, h0, _full_lengths(lengths, layout), relu, H, dH, dh_last
    )
    return LayerGrads(dU, dW, db, layout.state_to_user(dh0[0]), layout.seq_to_user(dX), layout.seq_to_user(dA))


# --------------------------------------------------------------------------
# The trusted per-step path. Trainer and CharRNN.sample check the parameters
# once (:func:`_checked_params`) and then call these every step: they check
# the batch (inputs, targets, h0) exactly as the public functions do, and
# trust the parameters. Not public: a caller that swaps or edits the
# parameters between steps must check them again.
# --------------------------------------------------------------------------


def _checked_params(params):
    """``params`` as the public functions check them, and whether the checked
    Params holds the very arrays given (True: in-place updates stay visible)."""
    p = check.check_params(params)
    return p, all(a is b for a, b in zip(p, params))


def _step_loss_and_grads(p, inputs, targets, h0, backend=None, reduction="mean"):
    """:func:`loss_and_grads` with ``params_only=True`` on parameters already
    checked by :func:`_checked_params`."""
    be = resolve(backend)
    (d, h), v = p.U.shape, p.V.shape[1]
    x, y, h0, layout = check.check_step_batch(inputs, targets, h0, d, h, v, p.U.dtype)
    scale = check.check_reduction(reduction, layout.T, layout.n)
    loss, dU, dW, dV, db, dc, dh0, _, _, h_last = be.loss_and_grads(*p, x, y, h0, scale, True)
    return float(loss), Grads(dU, dW, dV, db, dc, layout.state_to_user(dh0), None, None), layout.state_to_user(h_last)


def _step_probs(p, inputs, h0, backend=None):
    """:func:`predict_proba` on parameters already checked by :func:`_checked_params`."""
    be = resolve(backend)
    d, h = p.U.shape
    x, layout = check.check_inputs(inputs, d, p.U.dtype, False)
    h0 = check.check_h0(h0, layout, h, p.U.dtype)
    P, h_last = be.probs(*p, x, h0)
    return layout.seq_to_user(P), layout.state_to_user(h_last)


def _sampler(p, backend=None):
    """``next(token, h) -> (p, h)``: one step of :func:`_step_probs` for one
    sequence, on parameters checked by :func:`_checked_params`, where the
    caller vouches for the input: ``token`` an int in [0, d) and ``h`` the (1, h)
    state the previous step returned (or a zero/checked one). Nothing is
    checked per step; used by :meth:`fastrnn.CharRNN.sample`, whose tokens are
    its own draws. Returns the (v,) probabilities and the next (1, h) state."""
    be = resolve(backend)
    x = np.empty((1, 1), dtype=np.intp)

    def step(token, h):
        x[0, 0] = token
        P, h_last = be.probs(*p, x, h)
        return P[0, 0], h_last

    return step
