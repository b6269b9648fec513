"""Parameter and gradient containers, and the parameter initialiser."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

__all__ = ["Params", "Grads", "LayerGrads", "Cell", "DeepParams", "DeepGrads", "NONLINEARITIES", "init_params"]

#: The recurrence's nonlinearities, as torch.nn.RNN names them.
NONLINEARITIES = ("tanh", "relu")


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


class Cell(NamedTuple):
    """One direction of one layer: ``A_t = X_t U + H_{t∓1} W + b``, ``H_t = f(A_t)``.

    torch.nn.RNN's ``weight_ih_l{k}`` is ``Uᵀ``, ``weight_hh_l{k}`` is ``Wᵀ`` and
    ``b = bias_ih_l{k} + bias_hh_l{k}`` (suffix ``_reverse`` for the reversed direction).
    """

    U: np.ndarray  #: (d_in, h): d_in = d for layer 0, D·h above it
    W: np.ndarray  #: (h, h)
    b: np.ndarray  #: (h,)


class DeepParams(NamedTuple):
    """Stacked and/or bidirectional RNN with one softmax head.

    ``layers[l]`` is a tuple of :class:`Cell`: ``(forward,)``, or
    ``(forward, reversed)`` when bidirectional (D = 2). Layer 0 reads the
    inputs (d_in = d); layer l > 0 reads layer l−1's states, the directions
    concatenated (d_in = D·h). The head reads the top layer's:
    ``O_t = [H_t forward | H_t reversed] V + c``. Initial and final states are
    (L·D, n, h), state l·D + k belonging to layer l, direction k (torch's order).
    """

    layers: tuple  #: L tuples of D cells
    V: np.ndarray  #: (D·h, v)
    c: np.ndarray  #: (v,)
    nonlinearity: str = "tanh"  #: 'tanh' or 'relu'

    @property
    def num_layers(self):
        return len(self.layers)

    @property
    def num_directions(self):
        return len(self.layers[0])

    @classmethod
    def from_params(cls, params, nonlinearity="tanh"):
        """The one-layer, one-direction DeepParams holding a :class:`Params`' arrays (no copy)."""
        U, W, V, b, c = params
        return cls(((Cell(U, W, b),),), V, c, nonlinearity)


class DeepGrads(NamedTuple):
    """Gradients of the loss for :class:`DeepParams`.

    ``layers`` mirrors the parameters (a :class:`Cell` of dU, dW, db per layer
    and direction); ``V``, ``c`` as the head; ``h0`` (L·D, n, h) like the initial
    states; ``X`` like float inputs (None for ids); ``A`` mirrors ``layers`` with
    dL/dA_t of each cell in the inputs' layout, zero at padded steps.
    """

    layers: tuple
    V: np.ndarray
    c: np.ndarray
    h0: np.ndarray
    X: Optional[np.ndarray]
    A: Optional[tuple]


def init_params(
    d, h, v, *, dtype=np.float32, seed=None, num_layers=1, bidirectional=False, nonlinearity="tanh"
):
    """Draw fresh parameters for input size ``d``, hidden size ``h``, output size ``v``.

    The scheme keeps the variance of every pre-activation near that of its input
    (LeCun normal): ``U ~ N(0, 1/d)``, ``W ~ N(0, 1/h)``, ``V ~ N(0, 1/h)``,
    ``b = c = 0``. With ``W``'s entries of variance ``1/h`` its spectral radius
    is close to 1, which keeps gradients through time from exploding or vanishing
    at the start of training. Numbers are drawn in float64 from
    ``numpy.random.default_rng(seed)`` and then cast, so float32 and float64
    parameters from one seed agree to float32 rounding.

    With the defaults this returns :class:`Params`. With ``num_layers`` > 1,
    ``bidirectional=True`` or ``nonlinearity='relu'`` it returns
    :class:`DeepParams`, drawn the same way per cell (``U ~ N(0, 1/d_in)``,
    ``W ~ N(0, 1/h)``, ``b = 0``) and ``V ~ N(0, 1/(D·h))``.
    """
    for name, value in (("d", d), ("h", h), ("v", v)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    d, h, v = int(d), int(h), int(v)  # Python ints: the size products below must not wrap
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(num_layers, (bool, np.bool_)) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed must be None, a non-negative integer or a numpy Generator, got {seed!r}") from None
    D = 2 if bidirectional else 1
    largest = max(d, D * h) * h + h * h + D * h * v  # elements of the largest arrays drawn at once
    if largest * 8 > np.iinfo(np.intp).max:
        raise ValueError(f"d={d}, h={h}, v={v} need arrays larger than this machine can address")
    if num_layers > 1 or bidirectional or nonlinearity != "tanh":
        layers = []
        for l in range(num_layers):
            d_in = d if l == 0 else D * h
            cells = []
            for _ in range(D):
                U = rng.standard_normal((d_in, h)) / np.sqrt(d_in)
                W = rng.standard_normal((h, h)) / np.sqrt(h)
                cells.append(Cell(U.astype(dtype), W.astype(dtype), np.zeros(h, dtype)))
            layers.append(tuple(cells))
        V = rng.standard_normal((D * h, v)) / np.sqrt(D * h)
        return DeepParams(tuple(layers), V.astype(dtype), np.zeros(v, dtype), nonlinearity)
    U = rng.standard_normal((d, h)) / np.sqrt(d)
    W = rng.standard_normal((h, h)) / np.sqrt(h)
    V = rng.standard_normal((h, v)) / np.sqrt(h)
    return Params(
        U.astype(dtype), W.astype(dtype), V.astype(dtype), np.zeros(h, dtype), np.zeros(v, dtype)
    )
