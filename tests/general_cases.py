"""Cases for the general model: lengths, ignore_index, relu, layers, directions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pytest

import fastrnn
from fastrnn.backends import resolve


@dataclass(frozen=True)
class GCase:
    T: int
    n: int
    d: int
    h: int
    v: int
    L: int = 1
    D: int = 1
    relu: bool = False
    lengths: Optional[Tuple[int, ...]] = None  # None: all T
    ids: bool = False
    batch_first: bool = False
    unbatched: bool = False
    ignore: int = 0  # how many targets to set to ignore_index
    with_h0: bool = True
    reduction: str = "mean"
    deep: bool = True  # DeepParams (else today's Params: L = D = 1, tanh)

    def __str__(self):
        bits = [f"T{self.T}n{self.n}d{self.d}h{self.h}v{self.v}", f"L{self.L}", "bi" if self.D == 2 else "uni",
                "relu" if self.relu else "tanh", f"len{'-'.join(map(str, self.lengths))}" if self.lengths else "full",
                "ids" if self.ids else "dense", "bf" if self.batch_first else "tm"]
        if self.unbatched:
            bits.append("unbatched")
        if self.ignore:
            bits.append(f"ign{self.ignore}")
        if not self.deep:
            bits.append("Params")
        if self.reduction != "mean":
            bits.append(self.reduction)
        return "-".join(bits)

    def make(self, dtype=np.float64, seed=0):
        """(params, inputs, targets, h0, lengths) in the case's layout."""
        rng = np.random.default_rng(seed)
        if self.deep:
            base = fastrnn.init_params(
                self.d, self.h, self.v, dtype=np.float64, seed=seed, num_layers=self.L,
                bidirectional=self.D == 2, nonlinearity="relu" if self.relu else "tanh",
            )
            if isinstance(base, fastrnn.Params):  # one tanh layer: init_params gives today's container
                base = fastrnn.DeepParams.from_params(base)
            layers = tuple(
                tuple(fastrnn.Cell((1.3 * c.U).astype(dtype), (0.9 * c.W).astype(dtype),
                                   (0.3 * rng.standard_normal(self.h)).astype(dtype)) for c in layer)
                for layer in base.layers
            )
            params = fastrnn.DeepParams(layers, (2.0 * base.V).astype(dtype),
                                        (0.2 * rng.standard_normal(self.v)).astype(dtype), base.nonlinearity)
        else:
            base = fastrnn.init_params(self.d, self.h, self.v, dtype=np.float64, seed=seed)
            params = fastrnn.Params(*(a.astype(dtype) for a in (
                1.3 * base.U, 0.9 * base.W, 2.0 * base.V, 0.3 * rng.standard_normal(self.h),
                0.2 * rng.standard_normal(self.v))))
        T, n = self.T, self.n
        x = rng.integers(0, self.d, (T, n)) if self.ids else rng.standard_normal((T, n, self.d)).astype(dtype)
        y = rng.integers(0, self.v, (T, n))
        if self.ignore:
            flat = y.reshape(-1)
            flat[rng.choice(flat.size, self.ignore, replace=False)] = -100
        lengths = None if self.lengths is None else np.array(self.lengths)
        if lengths is not None:  # padded steps hold garbage the model must never read
            pad = np.arange(T)[:, None] >= lengths[None, :]
            y[pad] = 10**6
            if not self.ids:
                x[pad] = 1e3
        LD = self.L * self.D
        state = (LD, n, self.h) if self.deep else (n, self.h)
        h0 = (0.5 * rng.standard_normal(state)).astype(dtype) if self.with_h0 else None
        if self.batch_first:
            x, y = x.swapaxes(0, 1).copy(), y.swapaxes(0, 1).copy()
        if self.unbatched:
            assert n == 1
            x, y = x[:, 0].copy(), y[:, 0].copy()
            if h0 is not None:
                h0 = h0[..., 0, :].copy()
            lengths = None if lengths is None else int(lengths[0])
        return params, x, y, h0, lengths


def supports_general(name):
    if not hasattr(resolve(name), "deep_loss_and_grads"):
        pytest.skip(f"backend {name!r} has no general-model kernels yet")


def flat_grads(grads):
    """name -> array for Grads or DeepGrads (dA included)."""
    out = {}
    if isinstance(grads, fastrnn.DeepGrads):
        for l, layer in enumerate(grads.layers):
            for k, cell in enumerate(layer):
                for f in "UWb":
                    out[f"l{l}{k}.{f}"] = getattr(cell, f)
                if grads.A is not None:
                    out[f"l{l}{k}.A"] = grads.A[l][k]
        out.update(V=grads.V, c=grads.c, h0=grads.h0, X=grads.X)
    else:
        out.update(grads._asdict())
    return {k: v for k, v in out.items() if v is not None}
