"""The reference backend: the model and its gradients in plain numpy.

This module is the oracle every other backend is tested against, written to be
read beside the math (docs/derivation.md). Notation, time-major, batch n:

    A_t = X_t U + H_{t-1} W + b        H_t = tanh(A_t)           H_0 = h0
    O_t = H_t V + c                    Ŷ_t = softmax(O_t)
    L   = -scale · Σ_t Σ_i log Ŷ_t[i, y_t[i]]    scale = 1/(T·n) ('mean') or 1 ('sum')

Every function takes validated, C-contiguous, time-major arrays of one float
dtype (fastrnn.api does the checking). ``inputs`` is either dense floats
(T, n, d) or integer token ids (T, n), which stand for one-hot rows of X.
"""

from __future__ import annotations

import numpy as np


def _is_ids(inputs):
    return inputs.dtype.kind in "iu"


def _input_projection(inputs, U):
    """X_t U for every t: a GEMM for dense inputs, a row gather for token ids."""
    if _is_ids(inputs):
        return U[inputs]  # one-hot row x_ti = e_k selects row k of U
    return inputs @ U


def forward(U, W, b, inputs, h0):
    """All hidden states H_1..H_T, shape (T, n, h)."""
    XU = _input_projection(inputs, U)
    H = np.empty(XU.shape, dtype=U.dtype)
    H_prev = h0
    for t in range(len(H)):
        A_t = XU[t] + H_prev @ W + b  # A_t = X_t U + H_{t-1} W + b
        H[t] = np.tanh(A_t)  # H_t = tanh(A_t)
        H_prev = H[t]
    return H


def backward(U, W, inputs, h0, H, dH, want_dX=True):
    """Backpropagation through time given dH_t = ∂L/∂H_t from everything but
    the recurrence (for the full model, dO_t Vᵀ).

    Returns (dU, dW, db, dh0, dX, dA); dX is None for token ids.
    """
    T = len(H)
    dA = np.empty_like(H)
    dA_next_WT = np.zeros_like(h0)  # dA_{T+1} Wᵀ = 0: nothing comes after the last step
    for t in reversed(range(T)):
        dH_t = dH[t] + dA_next_WT  # dH_t = dO_t Vᵀ + dA_{t+1} Wᵀ
        dA[t] = dH_t * (1 - H[t] ** 2)  # dA_t = dH_t ⊙ (1 − H_t²)
        dA_next_WT = dA[t] @ W.T
    dh0 = dA_next_WT  # dh0 = dA_1 Wᵀ

    dW = np.zeros_like(W)
    db = np.zeros_like(W[0])
    H_prev = h0
    for t in range(T):
        dW += H_prev.T @ dA[t]  # dW = Σ_t H_{t-1}ᵀ dA_t
        db += dA[t].sum(axis=0)  # db = Σ_t 1ᵀ dA_t
        H_prev = H[t]

    if _is_ids(inputs):
        dU = np.zeros_like(U)
        np.add.at(dU, inputs, dA)  # dU = Σ_t X_tᵀ dA_t: one-hot X scatters rows of dA
        dX = None
    else:
        dU = np.zeros_like(U)
        for t in range(T):
            dU += inputs[t].T @ dA[t]  # dU = Σ_t X_tᵀ dA_t
        dX = dA @ U.T if want_dX else None  # dX_t = dA_t Uᵀ
    return dU, dW, db, dh0, dX, dA


def _log_softmax(O):
    """log Ŷ = O − log Σ_k exp(O_k), shifted by the row max so exp cannot overflow."""
    shifted = O - O.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def probs(U, W, V, b, c, inputs, h0):
    """Ŷ_t = softmax(H_t V + c) for every t, shape (T, n, v), and the last state H_T."""
    H = forward(U, W, b, inputs, h0)
    return np.exp(_log_softmax(H @ V + c)), H[-1].copy()


def loss_and_grads(U, W, V, b, c, inputs, targets, h0, scale, params_only=False):
    """Loss and every gradient of the full model.

    Returns (loss, dU, dW, dV, db, dc, dh0, dX, dA, h_last); dX is None for ids,
    dX and dA are None when ``params_only``.
    """
    H = forward(U, W, b, inputs, h0)
    O = H @ V + c  # O_t = H_t V + c
    logY = _log_softmax(O)
    T, n = targets.shape
    t_idx, i_idx = np.indices((T, n))
    loss = -scale * float(logY[t_idx, i_idx, targets].sum(dtype=np.float64))

    dO = np.exp(logY)
    dO[t_idx, i_idx, targets] -= 1
    dO *= dO.dtype.type(scale)  # dO_t = (Ŷ_t − onehot(y_t)) · scale
    dV = np.zeros_like(V)
    for t in range(T):
        dV += H[t].T @ dO[t]  # dV = Σ_t H_tᵀ dO_t
    dc = dO.sum(axis=(0, 1))  # dc = Σ_t 1ᵀ dO_t
    dH = dO @ V.T  # the output's share of dH_t: dO_t Vᵀ

    dU, dW, db, dh0, dX, dA = backward(U, W, inputs, h0, H, dH, want_dX=not params_only)
    if params_only:
        dX = dA = None
    return loss, dU, dW, dV, db, dc, dh0, dX, dA, H[-1].copy()
