"""Weight exchange between fastrnn's parameters and PyTorch, Keras 3 and Flax.

No framework is imported here at module level; torch is imported only by the
functions that build torch tensors. Every function copies (nothing aliases the
other framework's storage) and keeps the dtype.

The correspondences (fastrnn's U, W, b, V, c; see :class:`fastrnn.Cell`):

===================  =================================  ======================================
fastrnn              torch ``nn.RNN`` + ``nn.Linear``   Keras ``SimpleRNN`` + ``Dense``
===================  =================================  ======================================
U (d_in, h)          ``weight_ih_l{k}[_reverse]`` = Uᵀ  ``kernel``
W (h, h)             ``weight_hh_l{k}[_reverse]`` = Wᵀ  ``recurrent_kernel``
b (h,)               ``bias_ih + bias_hh`` (torch →),   ``bias``
                     b and 0 (→ torch)
V (D·h, v), c (v,)   head ``weight`` = Vᵀ, ``bias``     ``Dense`` ``kernel``, ``bias``
===================  =================================  ======================================

Flax linen ``SimpleCell``: ``{'i': {'kernel': U, 'bias': b}, 'h': {'kernel': W}}``;
``Dense``: ``{'kernel': V, 'bias': c}``.

Keras weight lists are what ``model.get_weights()`` returns for
``Sequential([SimpleRNN(h, return_sequences=True)] * L + [Dense(v)])``, a
bidirectional layer being ``Bidirectional(SimpleRNN(...))`` (merge_mode
'concat'): per cell ``kernel, recurrent_kernel, bias`` (forward cell, then
backward), layer after layer, then the Dense ``kernel, bias``.
"""

from __future__ import annotations

import numpy as np

from ._params import Cell, DeepParams, Params

__all__ = [
    "to_torch_state_dicts",
    "from_torch",
    "to_keras_weights",
    "from_keras_weights",
    "to_flax_cell",
    "from_flax_cell",
    "to_flax_dense",
    "from_flax_dense",
    "layers_of",
    "make_params",
]


def layers_of(params):
    """(layers, V, c, nonlinearity) for :class:`Params` or :class:`DeepParams`; layers as in DeepParams."""
    if isinstance(params, DeepParams):
        return tuple(tuple(Cell(*cell) for cell in layer) for layer in params.layers), params.V, params.c, params.nonlinearity
    if isinstance(params, Params):
        return ((Cell(params.U, params.W, params.b),),), params.V, params.c, "tanh"
    raise TypeError(f"params must be fastrnn.Params or fastrnn.DeepParams, got {type(params).__name__}")


def make_params(layers, V, c, nonlinearity="tanh"):
    """:class:`Params` for one tanh layer in one direction, else :class:`DeepParams` (arrays copied)."""
    layers = tuple(tuple(Cell(*(np.array(a) for a in cell)) for cell in layer) for layer in layers)
    V, c = np.array(V), np.array(c)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if len(layers) == 1 and len(layers[0]) == 1 and nonlinearity == "tanh":
        U, W, b = layers[0][0]
        return Params(U, W, V, b, c)
    return DeepParams(layers, V, c, nonlinearity)


def _suffix(k):
    return "_reverse" if k == 1 else ""


# ---------------------------------------------------------------- torch


def to_torch_state_dicts(params):
    """``(rnn_state, head_state)``: state dicts (torch tensors) for ``nn.RNN`` and ``nn.Linear``.

    Load them with ``rnn.load_state_dict(rnn_state)`` into
    ``nn.RNN(d, h, num_layers=L, nonlinearity=..., bidirectional=D == 2)`` and
    ``head.load_state_dict(head_state)`` into ``nn.Linear(D·h, v)``. torch's
    two biases get ``bias_ih = b`` and ``bias_hh = 0`` (only their sum counts).
    """
    import torch

    layers, V, c, _ = layers_of(params)
    state = {}
    for l, layer in enumerate(layers):
        for k, (U, W, b) in enumerate(layer):
            s = f"l{l}{_suffix(k)}"
            state[f"weight_ih_{s}"] = torch.from_numpy(np.ascontiguousarray(np.asarray(U).T))
            state[f"weight_hh_{s}"] = torch.from_numpy(np.ascontiguousarray(np.asarray(W).T))
            state[f"bias_ih_{s}"] = torch.from_numpy(np.array(b))
            state[f"bias_hh_{s}"] = torch.zeros_like(state[f"bias_ih_{s}"])
    head = {"weight": torch.from_numpy(np.ascontiguousarray(np.asarray(V).T)), "bias": torch.from_numpy(np.array(c))}
    return state, head


def _to_numpy(t):
    return t.detach().cpu().numpy().copy() if hasattr(t, "detach") else np.array(t)


def from_torch(rnn, head):
    """fastrnn parameters from a ``torch.nn.RNN`` (or :class:`fastrnn.torch.RNN`) and an ``nn.Linear`` head.

    ``rnn`` and ``head`` may also be state dicts; then give the RNN's
    nonlinearity as ``rnn = (state_dict, 'relu')``. Biases are summed
    (b = bias_ih + bias_hh); a module with ``bias=False`` gives b = 0.
    """
    if isinstance(rnn, tuple):
        state, nonlinearity = rnn
    else:
        if type(rnn).__name__ != "RNN" or not hasattr(rnn, "state_dict"):
            raise TypeError(f"rnn must be a torch.nn.RNN or (state_dict, nonlinearity), got {type(rnn).__name__}")
        state, nonlinearity = rnn.state_dict(), rnn.nonlinearity
    state = {k: _to_numpy(v) for k, v in state.items()}
    head = head.state_dict() if hasattr(head, "state_dict") else head
    layers = []
    l = 0
    while f"weight_ih_l{l}" in state:
        cells = []
        for k in (0, 1) if f"weight_ih_l{l}_reverse" in state else (0,):
            s = f"l{l}{_suffix(k)}"
            U, W = state[f"weight_ih_{s}"].T, state[f"weight_hh_{s}"].T
            b = state.get(f"bias_ih_{s}", np.zeros(W.shape[0], W.dtype)) + state.get(
                f"bias_hh_{s}", np.zeros(W.shape[0], W.dtype))
            cells.append((U, W, b))
        layers.append(tuple(cells))
        l += 1
    if not layers:
        raise ValueError("the RNN state dict has no weight_ih_l0: not an nn.RNN's state")
    if state.get("weight_hr_l0") is not None:
        raise ValueError("proj_size is not supported")
    V, c = _to_numpy(head["weight"]).T, _to_numpy(head["bias"])
    return make_params(layers, V, c, nonlinearity)


# ---------------------------------------------------------------- Keras


def to_keras_weights(params, *, use_bias=True):
    """The list ``model.set_weights`` takes for ``SimpleRNN`` layers (``Bidirectional`` ones
    when D = 2, activation = the nonlinearity, ``use_bias`` as given) and a ``Dense(v)`` head.

    With ``use_bias=False`` each cell contributes only ``kernel, recurrent_kernel``, and
    every b must be zero (such a layer has no bias to carry it)."""
    layers, V, c, _ = layers_of(params)
    out = []
    for layer in layers:
        for U, W, b in layer:
            if not use_bias and np.any(np.asarray(b) != 0):
                raise ValueError("use_bias=False: every cell's b must be zero (a SimpleRNN without bias has none)")
            out += [np.array(U), np.array(W)] + ([np.array(b)] if use_bias else [])
    return out + [np.array(V), np.array(c)]


def from_keras_weights(weights, *, bidirectional=False, nonlinearity="tanh", use_bias=True):
    """fastrnn parameters from ``model.get_weights()`` of the model :func:`to_keras_weights` describes
    (``use_bias=False``: SimpleRNN layers without bias, whose cells get b = 0)."""
    weights = [np.array(w) for w in weights]
    D = 2 if bidirectional else 1
    k = 3 if use_bias else 2  # arrays per cell
    if len(weights) < k * D + 2 or (len(weights) - 2) % (k * D):
        names = "kernel, recurrent_kernel, bias" if use_bias else "kernel, recurrent_kernel"
        raise ValueError(
            f"expected {k} arrays ({names}) per cell, {D} cell(s) per layer, then the Dense kernel and bias; "
            f"got {len(weights)} arrays (SimpleRNN(use_bias={not use_bias}) needs use_bias={not use_bias} here)"
        )
    cells = [tuple(weights[i : i + k]) for i in range(0, len(weights) - 2, k)]
    if not use_bias:
        cells = [(U, W, np.zeros(W.shape[0], W.dtype)) for U, W in cells]
    layers = [tuple(cells[i : i + D]) for i in range(0, len(cells), D)]
    return make_params(layers, weights[-2], weights[-1], nonlinearity)


# ---------------------------------------------------------------- Flax


def to_flax_cell(cell):
    """Params of a flax.linen ``SimpleCell`` from a :class:`Cell` (U, W, b)."""
    U, W, b = cell
    return {"i": {"kernel": np.array(U), "bias": np.array(b)}, "h": {"kernel": np.array(W)}}


def from_flax_cell(p):
    """A :class:`Cell` from flax.linen ``SimpleCell`` params (its ``residual`` must be False)."""
    return Cell(np.array(p["i"]["kernel"]), np.array(p["h"]["kernel"]), np.array(p["i"]["bias"]))


def to_flax_dense(V, c):
    """Params of a flax.linen ``Dense`` head from V (D·h, v), c (v,)."""
    return {"kernel": np.array(V), "bias": np.array(c)}


def from_flax_dense(p):
    """(V, c) from flax.linen ``Dense`` params."""
    return np.array(p["kernel"]), np.array(p["bias"])
