"""fastrnn inside PyTorch: :class:`RNN`, a drop-in for ``torch.nn.RNN`` on the CPU.

    from fastrnn.torch import RNN        # instead of: from torch.nn import RNN
    rnn = RNN(input_size, hidden_size, num_layers=2, bidirectional=True)
    output, h_n = rnn(x)                 # the same contract, the same parameters

``RNN`` subclasses ``torch.nn.RNN``: the constructor, the parameters
(``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}…``, ``bias_ih_l{k}…``,
``bias_hh_l{k}…``), their initialisation and ``state_dict`` are torch's own, so
checkpoints load both ways. Only ``forward`` differs: the whole stack runs in
fastrnn's kernels (the stack that :func:`fastrnn.packed.packed_forward` runs,
called directly: ``forward`` has already checked the input and every weight) on
zero-copy numpy views of the CPU tensors, and its backward is one
``torch.autograd.Function`` (as :func:`fastrnn.packed.packed_backward`); both
biases receive dL/db. Dropout
between layers in training mode draws its masks from torch's generator in the
order ``nn.RNN`` does, so ``torch.manual_seed`` gives the same masks.

It runs on the CPU only, in float32 or float64; anything else raises.
"""

from __future__ import annotations

try:
    import torch
    from torch import nn
    from torch.autograd.function import once_differentiable
    from torch.nn.utils.rnn import PackedSequence
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "fastrnn.torch needs PyTorch, which is not installed: pip install 'fastrnn[torch]'"
    ) from exc

import numpy as np

from ._params import Cell
from .backends import resolve
from .backends import stack as _stack
from .packed import _steps

__all__ = ["RNN"]

_FLOATS = (torch.float32, torch.float64)


def _np(t):
    """A zero-copy numpy view of a CPU tensor (detached)."""
    return t.detach().numpy()


class _Stack(torch.autograd.Function):
    """(data (N, d), hx (L·D, n, h) sorted, *flat weights) -> (out (N, D·h), h_n sorted)."""

    @staticmethod
    def forward(ctx, cfg, data, hx, *weights):
        L, D, bias, relu, backend, bs, masks = cfg
        # RNN.forward checked the input, hx and every weight's device, dtype and shape:
        # the kernels run straight on the views (no second validation, packed_forward's)
        per = 4 if bias else 2
        cells = []
        for i in range(L * D):
            w = weights[i * per : (i + 1) * per]
            W = np.ascontiguousarray(_np(w[1]).T)  # weight_hh = Wᵀ
            b = np.add(_np(w[2]), _np(w[3])) if bias else np.zeros(W.shape[0], W.dtype)  # b = b_ih + b_hh
            cells.append((np.ascontiguousarray(_np(w[0]).T), W, b))  # weight_ih = Uᵀ
        x = _np(data)
        steps = _steps(bs, x.shape[0])
        out, h_last, tape = _stack.forward(resolve(backend), cells, D, x, _np(hx), *steps, relu, masks)
        ctx.tape, ctx.cfg = tape, cfg
        out = torch.from_numpy(out)
        ctx.save_for_backward(out)  # the tape may share its memory: autograd then refuses in-place changes to it
        return out, torch.from_numpy(h_last)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: double backward raises
    def backward(ctx, d_out, d_hn):
        L, D, bias, *_ = ctx.cfg
        ctx.saved_tensors  # raises if the output was modified in place since forward
        # autograd materialises an unused output's gradient as zeros: both arrive with the outputs' shapes
        cell_grads, dh0, dX = _stack.backward(ctx.tape, _np(d_out), _np(d_hn), ctx.needs_input_grad[1])
        grads = []
        for dU, dW, db in cell_grads:
            grads += [torch.from_numpy(dU.T), torch.from_numpy(dW.T)]
            if bias:
                grads += [torch.from_numpy(db), torch.from_numpy(db.copy())]  # ∂L/∂b_ih = ∂L/∂b_hh = ∂L/∂b
        dX = None if dX is None else torch.from_numpy(dX)
        return (None, dX, torch.from_numpy(dh0), *grads)


@torch.compiler.disable
def _apply(cfg, data, hx, weights):
    """The kernels are opaque to torch.compile: it runs them eagerly, a graph break either side."""
    return _Stack.apply(cfg, data, hx, *weights)


def _where(t):
    return f"{t.device}" if t.device.type != "cpu" else "cpu"


class RNN(nn.RNN):
    """``torch.nn.RNN`` computed by fastrnn's CPU kernels; see the module docstring.

    Arguments as ``torch.nn.RNN`` (``input_size, hidden_size, num_layers=1,
    nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None``), plus ``backend``:
    'numba', 'c' or 'numpy' (default: :func:`fastrnn.get_backend`).
    ``proj_size`` is not supported (torch's RNN rejects it too).
    """

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self._shapes = [torch.Size(w.shape) for w in self._flat_weights]  # what the kernels are built for

    @classmethod
    def from_torch(cls, module, *, backend=None):
        """A fastrnn RNN with ``module``'s configuration and a copy of its weights."""
        if not isinstance(module, nn.RNN):
            raise TypeError(f"module must be a torch.nn.RNN, got {type(module).__name__}")
        w = module.weight_ih_l0
        if w.device.type != "cpu":
            raise RuntimeError(f"fastrnn runs on the CPU: the module's weights are on {w.device}; call .cpu() first")
        new = cls(module.input_size, module.hidden_size, module.num_layers, module.nonlinearity, module.bias,
                  module.batch_first, module.dropout, module.bidirectional, dtype=w.dtype, backend=backend)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new

    def to_torch(self):
        """A plain ``torch.nn.RNN`` with this module's configuration and a copy of its weights."""
        w = self.weight_ih_l0
        plain = nn.RNN(self.input_size, self.hidden_size, self.num_layers, self.nonlinearity, self.bias,
                       self.batch_first, self.dropout, self.bidirectional, device=w.device, dtype=w.dtype)
        plain.load_state_dict(self.state_dict())
        plain.train(self.training)
        return plain

    def _weights(self, dtype):
        weights = self._flat_weights  # nn.RNN keeps it in step with the parameters (setattr, .to, load_state_dict)
        shapes = self._shapes
        for name, w, shape in zip(self._flat_weights_names, weights, shapes):
            if w.device.type != "cpu":
                raise RuntimeError(f"fastrnn runs on the CPU: parameter {name} is on {_where(w)}; call .cpu() "
                                   "or use torch.nn.RNN on other devices")
            if w.dtype != dtype:
                raise TypeError(f"fastrnn.torch.RNN: input is {dtype} but parameter {name} is {w.dtype}; "
                                "convert one of them (fastrnn never casts silently)")
            if w.shape != shape:
                raise ValueError(f"fastrnn.torch.RNN: parameter {name} has shape {tuple(w.shape)}, expected {tuple(shape)}")
        return weights

    def forward(self, input, hx=None):  # noqa: A002 - torch's argument name
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            tensor = data
        else:
            tensor = input
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor or PackedSequence, got {type(input).__name__}")
        if tensor.device.type != "cpu":
            raise RuntimeError(f"fastrnn runs on the CPU: input is on {_where(tensor)}; call .cpu() first "
                               "or use torch.nn.RNN on other devices")
        if tensor.dtype not in _FLOATS:
            raise TypeError(f"input must be float32 or float64, got {tensor.dtype}")
        weights = self._weights(tensor.dtype)
        D = 2 if self.bidirectional else 1
        L, h = self.num_layers, self.hidden_size

        if packed:
            if data.dim() != 2 or data.shape[1] != self.input_size:
                raise ValueError(f"input.data must be (N, input_size={self.input_size}), got {tuple(data.shape)}")
            bs = batch_sizes.numpy().astype(np.intp)
            n = int(bs[0])
            batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            if input.shape[-1] != self.input_size:
                raise ValueError(f"input.size(-1) must be equal to input_size={self.input_size}, "
                                 f"got {input.shape[-1]}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            T, n = x.shape[0], x.shape[1]
            data = x.reshape(T * n, self.input_size)  # time-major rows: the packed layout of equal lengths
            bs = np.full(T, n, dtype=np.intp)
            if T == 0 or n == 0:
                raise ValueError(f"input must have at least one step and one sequence, got shape {tuple(input.shape)}")

        if hx is None:
            hx = torch.zeros(L * D, n, h, dtype=tensor.dtype)
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"hx must be a torch.Tensor, got {type(hx).__name__}")
            if hx.device.type != "cpu":
                raise RuntimeError(f"fastrnn runs on the CPU: hx is on {_where(hx)}")
            if hx.dtype != tensor.dtype:
                raise TypeError(f"hx is {hx.dtype} but input is {tensor.dtype}; convert one of them")
            if not batched:
                if hx.dim() != 2:
                    raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
            elif hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            if tuple(hx.shape) != (L * D, n, h):
                raise RuntimeError(f"Expected hidden size {(L * D, n, h)}, got {list(hx.shape)}")
            if packed and sorted_indices is not None:
                hx = hx.index_select(1, sorted_indices)  # into the packed (sorted) order

        masks = None
        if self.training and self.dropout > 0 and L > 1:
            # nn.RNN draws one mask per layer output but the last, in layer order, the shape of its output
            N, p = data.shape[0], float(self.dropout)
            masks = []
            for _ in range(L - 1):
                m = torch.zeros(N, D * h, dtype=tensor.dtype) if p == 1 else (
                    torch.empty(N, D * h, dtype=tensor.dtype).bernoulli_(1 - p).div_(1 - p))
                masks.append(m.numpy())

        cfg = (L, D, self.bias, self.nonlinearity == "relu", self.backend, bs, masks)
        out, h_n = _apply(cfg, data.contiguous(), hx.contiguous(), weights)

        if packed:
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), h_n
        out = out.view(T, n, D * h)
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, h_n
