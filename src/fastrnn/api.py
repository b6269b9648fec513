"""The public functions: validate, call one backend, return results in the caller's layout."""

from __future__ import annotations

import numpy as np

from . import _validate as check
from ._params import Grads, LayerGrads
from .backends import resolve

__all__ = ["loss_and_grads", "predict_proba", "rnn_forward", "rnn_backward"]


def loss_and_grads(
    params, inputs, targets, *, h0=None, reduction="mean", batch_first=False, params_only=False, backend=None
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
    """
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


def predict_proba(params, inputs, *, h0=None, batch_first=False, backend=None):
    """Softmax probabilities Ŷ_t for every timestep and the final hidden state.

    Arguments as in :func:`loss_and_grads`. Returns ``(probs, h_last)`` with
    ``probs`` (T, n, v) in the inputs' layout and ``h_last`` (n, h).
    """
    be = resolve(backend)
    p = check.check_params(params)
    d, h = p.U.shape
    x, layout = check.check_inputs(inputs, d, p.U.dtype, batch_first)
    h0 = check.check_h0(h0, layout, h, p.U.dtype)
    Y, h_last = be.probs(*p, x, h0)  # Ŷ, the softmax of every step
    return layout.seq_to_user(Y), layout.state_to_user(h_last)


def rnn_forward(inputs, U, W, b, h0=None, *, batch_first=False, backend=None):
    """The recurrence alone: ``H_t = tanh(X_t U + H_{t-1} W + b)`` for t = 1..T.

    For people who bring their own output head and loss. ``inputs`` and ``h0``
    as in :func:`loss_and_grads`. Returns every hidden state H, (T, n, h) in
    the inputs' layout; ``H[-1]`` (or ``H[:, -1]`` batch-first) is the final state.
    """
    be = resolve(backend)
    U, W, b = check.check_recurrent_weights(U, W, b)
    d, h = U.shape
    x, layout = check.check_inputs(inputs, d, U.dtype, batch_first)
    h0 = check.check_h0(h0, layout, h, U.dtype)
    return layout.seq_to_user(be.forward(U, W, b, x, h0))


def rnn_backward(dH, H, inputs, U, W, h0=None, *, dh_last=None, batch_first=False, backend=None):
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
        An extra gradient on the final state H_T (n, h), e.g. from a later chunk.

    Returns
    -------
    LayerGrads
        ``U`` (d, h), ``W`` (h, h), ``b`` (h,), ``h0`` like the initial state,
        ``X`` like float inputs (None for ids), ``A`` = dL/dA_t shaped like ``H``.
    """
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
    d, h = p.U.shape
    x, layout = check.check_inputs(inputs, d, p.U.dtype, False)
    y = check.check_targets(targets, layout, p.V.shape[1])
    h0 = check.check_h0(h0, layout, h, p.U.dtype)
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
