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


# --------------------------------------------------------------------------
# The general model: variable lengths, ignored targets, relu, stacked layers,
# both directions. Notation as above, plus (docs/derivation.md, "Beyond one layer"):
#
#   m_t[i] = t < lengths[i]           step t of sequence i is real, not padding
#   f = tanh or relu                  H_t = m_t ⊙ f(A_t): padded steps have H = 0
#   S_t = m_t ⊙ H_t + (1 − m_t) ⊙ S_{t∓1},  S_start = h0   the carried state
#   A_t = X_t U + S_{t∓1} W + b       (t−1 forward in time, t+1 reversed)
#   layer l > 0 reads X_t = [H_t of layer l−1, forward | reversed]
#   O_t = [H_t forward | reversed of the top layer] V + c
#   L = −scale · Σ_{t,i counted} log Ŷ_t[i, y_t[i]], counted: m_t[i] and y_t[i] is
#   not ignored (the API marks the others y = −1); scale = 1/#counted or 1.
#
# Cells are given flat in torch's order: cell l·D + k is layer l, direction k
# (k = 1 reversed), each a (U, W, b) triple; h0 and h_last are (L·D, n, h).
# --------------------------------------------------------------------------


def _f(A, relu):
    """The nonlinearity: relu(A) = max(A, 0) or tanh(A)."""
    return np.maximum(A, 0) if relu else np.tanh(A)


def _f_prime(H, relu):
    """f'(A) from H = f(A): 1 − H² for tanh; [H > 0] for relu (0 at the kink A = 0, as torch)."""
    return (H > 0).astype(H.dtype) if relu else 1 - H**2


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _mask(lengths, T):
    """m (T, n, 1): m[t, i] = t < lengths[i]."""
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def layer_forward(U, W, b, inputs, h0, mask, reverse, relu, probe=None):
    """One direction of one layer over padded sequences.

    Returns H (T, n, h), zero at padded steps; S_prev (T, n, h), the state
    each step reads; and the final carried state, each sequence's state at its
    own last step (reversed: at t = 1). ``probe`` (T, n, h), if given, is added
    to every A_t: fastrnn.gradcheck differentiates the loss with respect to it.
    """
    XU = _input_projection(inputs, U)
    H = np.zeros(XU.shape, dtype=U.dtype)
    S_prev = np.empty_like(H)
    S = h0
    for t in _steps(len(H), reverse):
        S_prev[t] = S
        A_t = XU[t] + S @ W + b  # A_t = X_t U + S_{t∓1} W + b
        if probe is not None:
            A_t = A_t + probe[t]
        H[t] = np.where(mask[t], _f(A_t, relu), 0)  # H_t = m_t ⊙ f(A_t)
        S = np.where(mask[t], H[t], S)  # S_t = m_t ⊙ H_t + (1 − m_t) ⊙ S_{t∓1}: padding passes the carry
    return H, S_prev, S.copy()


def layer_backward(U, W, inputs, S_prev, H, G, dh_last, mask, reverse, relu, want_dX=True):
    """BPTT for one direction of one layer, given G_t = ∂L/∂H_t from above
    (the head, or the next layer) and dh_last = ∂L/∂(final state).

    Returns (dU, dW, db, dh0, dX, dA); dX is None for token ids.
    """
    dA = np.zeros_like(H)
    dS = dh_last.copy()  # ∂L/∂S after the last step processed
    for t in reversed(_steps(len(H), reverse)):
        dH_t = G[t] + dS  # dH_t = G_t + ∂L/∂S_t (S_t = H_t at a real step)
        dA[t] = np.where(mask[t], dH_t * _f_prime(H[t], relu), 0)  # dA_t = m_t ⊙ dH_t ⊙ f'(A_t)
        dS = np.where(mask[t], dA[t] @ W.T, dS)  # ∂L/∂S_{t∓1} = m_t ⊙ dA_t Wᵀ + (1 − m_t) ⊙ ∂L/∂S_t
    dh0 = dS  # ∂L/∂h0: the carry that left the first step processed

    dW = np.zeros_like(W)
    for t in range(len(H)):
        dW += S_prev[t].T @ dA[t]  # dW = Σ_t S_{t∓1}ᵀ dA_t
    db = dA.sum(axis=(0, 1))  # db = Σ_t 1ᵀ dA_t
    dU = np.zeros_like(U)
    if _is_ids(inputs):
        np.add.at(dU, inputs, dA)  # dU = Σ_t X_tᵀ dA_t, one-hot X
        dX = None
    else:
        for t in range(len(H)):
            dU += inputs[t].T @ dA[t]  # dU = Σ_t X_tᵀ dA_t
        dX = dA @ U.T if want_dX else None  # dX_t = dA_t Uᵀ
    return dU, dW, db, dh0, dX, dA


def _stack_forward(cells, D, inputs, h0, mask, relu, probes=None):
    """Every layer in turn; returns (top output (T, n, D·h), per-cell caches, h_last (L·D, n, h))."""
    x = inputs
    caches, h_last = [], []
    for l in range(len(cells) // D):
        outs = []
        for k in range(D):
            U, W, b = cells[l * D + k]
            probe = None if probes is None else probes.get(l * D + k)
            H, S_prev, S = layer_forward(U, W, b, x, h0[l * D + k], mask, k == 1, relu, probe)
            caches.append((x, H, S_prev))
            h_last.append(S)
            outs.append(H)
        x = np.concatenate(outs, axis=-1)  # layer l+1 reads [H forward | H reversed]
    return x, caches, np.stack(h_last)


def _stack_backward(cells, D, caches, dtop, dh_last, mask, relu, want_dX):
    """Backward through every layer, top first. dtop = ∂L/∂(top output) (T, n, D·h).

    Returns (cell grads [(dU, dW, db)], dh0 (L·D, n, h), dX of the inputs, dA per cell).
    """
    grads, dA_all = [None] * len(cells), [None] * len(cells)
    dh0 = np.empty_like(dh_last)
    G = dtop
    for l in reversed(range(len(cells) // D)):
        dX_l = None
        for k in range(D):
            U, W, _ = cells[l * D + k]
            x, H, S_prev = caches[l * D + k]
            h = W.shape[0]
            G_k = np.ascontiguousarray(G[..., k * h : (k + 1) * h])  # this direction's share of dH
            dU, dW, db, dh0[l * D + k], dX, dA = layer_backward(
                U, W, x, S_prev, H, G_k, dh_last[l * D + k], mask, k == 1, relu, want_dX or l > 0
            )
            grads[l * D + k] = (dU, dW, db)
            dA_all[l * D + k] = dA
            dX_l = dX if dX_l is None else dX_l + dX  # both directions read the same input
        G = dX_l  # the gradient of layer l's input is the dH of layer l−1
    return grads, dh0, G, dA_all


def deep_forward(cells, D, inputs, h0, lengths, relu):
    """(top output (T, n, D·h), zero at padded steps; h_last (L·D, n, h))."""
    top, _, h_last = _stack_forward(cells, D, inputs, h0, _mask(lengths, len(inputs)), relu)
    return top, h_last


def deep_backward(cells, D, inputs, h0, lengths, relu, H, dH, dh_last, want_dX=True):
    """One layer, one direction (L = D = 1): BPTT from the states H that deep_forward returned.

    Returns (dU, dW, db, dh0, dX, dA) as :func:`backward`, dh0 (1, n, h).
    """
    (U, W, _), = cells
    mask = _mask(lengths, len(inputs))
    S_prev = np.empty_like(H)
    S_prev[0] = h0[0]
    S_prev[1:] = np.where(mask[:-1], H[:-1], h0[0])  # S_{t−1} = H_{t−1} at real steps (h0 before)
    dU, dW, db, dh0, dX, dA = layer_backward(U, W, inputs, S_prev, H, dH, dh_last[0], mask, False, relu, want_dX)
    return dU, dW, db, dh0[None], dX, dA


def deep_probs(cells, D, V, c, inputs, h0, lengths, relu):
    """Ŷ (T, n, v), zero at padded steps, and h_last (L·D, n, h)."""
    mask = _mask(lengths, len(inputs))
    top, _, h_last = _stack_forward(cells, D, inputs, h0, mask, relu)
    return np.where(mask, np.exp(_log_softmax(top @ V + c)), 0), h_last


def deep_loss_and_grads(cells, D, V, c, inputs, targets, h0, lengths, scale, relu, params_only=False, probes=None):
    """Loss and every gradient of the general model; targets −1 are not counted.
    ``probes`` {cell index: (T, n, h)} are added to those cells' A_t (for gradcheck).

    Returns (loss, [(dU, dW, db) per cell], dV, dc, dh0, dX, [dA per cell], h_last);
    dX is None for ids; dX and dA are None with ``params_only``.
    """
    mask = _mask(lengths, len(inputs))
    top, caches, h_last = _stack_forward(cells, D, inputs, h0, mask, relu, probes)
    O = top @ V + c  # O_t = [H_t fwd | rev] V + c
    logY = _log_softmax(O)
    counted = targets >= 0  # real steps whose target is not ignored
    y = np.where(counted, targets, 0)
    t_idx, i_idx = np.indices(targets.shape)
    loss = -scale * float(np.where(counted, logY[t_idx, i_idx, y], 0).sum(dtype=np.float64))

    dO = np.exp(logY)
    dO[t_idx, i_idx, y] -= 1
    dO *= (counted * scale).astype(dO.dtype)[:, :, None]  # dO_t = counted ⊙ (Ŷ_t − onehot(y_t)) · scale
    dV = np.einsum("tnk,tnv->kv", top, dO)  # dV = Σ_t [H_t fwd | rev]ᵀ dO_t
    dc = dO.sum(axis=(0, 1))  # dc = Σ_t 1ᵀ dO_t
    dtop = dO @ V.T  # ∂L/∂[H_t fwd | rev] from the head
    dh_last = np.zeros_like(h_last)  # nothing depends on the final states
    grads, dh0, dX, dA = _stack_backward(cells, D, caches, dtop, dh_last, mask, relu, not params_only)
    if params_only:
        dX = dA = None
    return loss, grads, dV, dc, dh0, dX, dA, h_last
