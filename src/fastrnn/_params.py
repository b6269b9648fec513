"""Parameter and gradient containers, and the parameter initialiser."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

__all__ = ["Params", "Grads", "LayerGrads", "init_params"]


class Params(NamedTuple):
    """The weights of a vanilla RNN with a softmax output layer.

    ``A_t = X_t U + H_{t-1} W + b``, ``H_t = tanh(A_t)``, ``O_t = H_t V + c``.
    All five arrays share one float dtype (float32 or float64).
    """

    U: np.ndarray  #: (d, h) input-to-hidden
    W: np.ndarray  #: (h, h) hidden-to-hidden
    V: np.ndarray  #: (h, v) hidden-to-output
    b: np.ndarray  #: (h,)   hidden bias
    c: np.ndarray  #: (v,)   output bias


class Grads(NamedTuple):
    """Gradients of the loss returned by :func:`fastrnn.loss_and_grads`.

    ``U, W, V, b, c`` have the shapes of the parameters. ``h0`` has the shape of
    the initial state, ``X`` the shape of float inputs (``None`` for token ids),
    and ``A`` is dL/dA_t for every timestep, laid out like the inputs' leading
    axes: (T, n, h), or (n, T, h) with ``batch_first``, or (T, h) unbatched.
    """

    U: np.ndarray
    W: np.ndarray
    V: np.ndarray
    b: np.ndarray
    c: np.ndarray
    h0: np.ndarray
    X: Optional[np.ndarray]
    A: np.ndarray


class LayerGrads(NamedTuple):
    """Gradients returned by :func:`fastrnn.rnn_backward` (the recurrence alone)."""

    U: np.ndarray
    W: np.ndarray
    b: np.ndarray
    h0: np.ndarray
    X: Optional[np.ndarray]
    A: np.ndarray


def init_params(d, h, v, *, dtype=np.float32, seed=None) -> Params:
    """Draw fresh parameters for input size ``d``, hidden size ``h``, output size ``v``.

    The scheme keeps the variance of every pre-activation near that of its input
    (LeCun normal): ``U ~ N(0, 1/d)``, ``W ~ N(0, 1/h)``, ``V ~ N(0, 1/h)``,
    ``b = c = 0``. With ``W``'s entries of variance ``1/h`` its spectral radius
    is close to 1, which keeps gradients through time from exploding or vanishing
    at the start of training. Numbers are drawn in float64 from
    ``numpy.random.default_rng(seed)`` and then cast, so float32 and float64
    parameters from one seed agree to float32 rounding.
    """
    for name, value in (("d", d), ("h", h), ("v", v)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((d, h)) / np.sqrt(d)
    W = rng.standard_normal((h, h)) / np.sqrt(h)
    V = rng.standard_normal((h, v)) / np.sqrt(h)
    return Params(
        U.astype(dtype), W.astype(dtype), V.astype(dtype), np.zeros(h, dtype), np.zeros(v, dtype)
    )
