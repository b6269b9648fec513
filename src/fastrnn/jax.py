"""fastrnn inside JAX: the recurrence and the loss as functions that work under
``jax.jit`` and ``jax.grad``, and a thin Flax linen module.

    import fastrnn.jax as fj
    H = fj.rnn(x, U, W, b)                           # (T, n, h), like a lax.scan of tanh cells
    loss = fj.rnn_loss(U, W, V, b, c, x, y)          # mean softmax cross-entropy of the head
    jax.jit(jax.grad(lambda U: fj.rnn_loss(U, W, V, b, c, x, y)))(U)

Each is a ``jax.custom_vjp`` whose forward and backward are ``jax.pure_callback``
calls into fastrnn's CPU kernels (:func:`fastrnn.rnn_forward` /
:func:`fastrnn.rnn_backward`, :func:`fastrnn.loss_and_grads`), so JAX sees one
opaque op instead of T small ones. The loss's forward computes every gradient
at once (one fused pass) and its backward only scales them by the cotangent.
Higher-order derivatives are not available (the callbacks are not
differentiable), and the arrays travel through host memory (CPU).
"""

from __future__ import annotations

from functools import partial

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - exercised only without jax
    raise ImportError("fastrnn.jax needs JAX, which is not installed: pip install 'fastrnn[jax]'") from exc

import numpy as np

import fastrnn

__all__ = ["rnn", "rnn_loss", "SimpleRNN"]


def _flat_call(host, shapes, dtype, *args):
    """``jax.pure_callback(host, ..., *args)`` for a host function that returns several arrays
    of one dtype. Each crossing costs per array, so the arguments travel as one flat buffer
    per dtype and the results as one flat buffer, packed and split under jit."""
    groups = {}  # dtype -> positions of the arguments of that dtype
    for i, a in enumerate(args):
        groups.setdefault(jnp.dtype(a.dtype), []).append(i)
    buffers = [jnp.concatenate([jnp.ravel(args[i]) for i in idx]) for idx in groups.values()]
    arg_shapes = [a.shape for a in args]
    sizes = [int(np.prod(s)) for s in shapes]

    def flat_host(*bufs):
        unpacked = [None] * len(args)
        for buf, idx in zip(bufs, groups.values()):
            buf, o = np.asarray(buf), 0
            for i in idx:
                size = int(np.prod(arg_shapes[i]))
                unpacked[i] = buf[o : o + size].reshape(arg_shapes[i])
                o += size
        return np.concatenate([np.asarray(r, dtype).ravel() for r in host(*unpacked)])

    flat = jax.pure_callback(flat_host, jax.ShapeDtypeStruct((sum(sizes),), dtype), *buffers,
                             vmap_method="sequential")
    out, o = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[o : o + size].reshape(shape))
        o += size
    return out


def _zero_cotangent(a):
    """The cotangent of an integer input: float0 zeros (it has no gradient)."""
    return np.zeros(a.shape, dtype=jax.dtypes.float0)


# ---------------------------------------------------------------- the recurrence


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _rnn(x, U, W, b, nonlinearity, backend):
    return _rnn_fwd(x, U, W, b, nonlinearity, backend)[0]


def _rnn_call(x, U, W, b, h0, nonlinearity, backend):
    def host(x, U, W, b, h0):
        return fastrnn.rnn_forward(np.asarray(x), np.asarray(U), np.asarray(W), np.asarray(b), np.asarray(h0),
                                   nonlinearity=nonlinearity, backend=backend)

    return _flat_call(lambda *a: (host(*a),), [x.shape[:2] + (W.shape[0],)], U.dtype, x, U, W, b, h0)[0]


def _rnn_fwd(xh, U, W, b, nonlinearity, backend):
    x, h0 = xh
    H = _rnn_call(x, U, W, b, h0, nonlinearity, backend)
    return H, (x, U, W, h0, H)


def _rnn_bwd(nonlinearity, backend, res, dH):
    x, U, W, h0, H = res
    ids = jnp.issubdtype(x.dtype, jnp.integer)

    def host(dH, H, x, U, W, h0):
        g = fastrnn.rnn_backward(np.asarray(dH), np.asarray(H), np.asarray(x), np.asarray(U), np.asarray(W),
                                 np.asarray(h0), nonlinearity=nonlinearity, backend=backend)
        dX = np.zeros((0,), U.dtype) if g.X is None else g.X
        return g.U, g.W, g.b, g.h0, dX

    shapes = (U.shape, W.shape, (W.shape[0],), h0.shape, (0,) if ids else x.shape)
    dU, dW, db, dh0, dX = _flat_call(host, shapes, U.dtype, dH, H, x, U, W, h0)
    return ((_zero_cotangent(x) if ids else dX, dh0), dU, dW, db)


_rnn.defvjp(_rnn_fwd, _rnn_bwd)


def rnn(x, U, W, b, h0=None, *, nonlinearity="tanh", backend=None):
    """Every hidden state ``H_t = f(X_t U + H_{t-1} W + b)``, (T, n, h), time-major.

    ``x`` float (T, n, d) or integer token ids (T, n); ``U`` (d, h), ``W`` (h, h),
    ``b`` (h,); ``h0`` (n, h), default zeros; ``nonlinearity`` 'tanh' or 'relu'.
    All floats of one dtype. ``H[-1]`` is the final state. Differentiable with
    respect to x (float), U, W, b and h0.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be (T, n, d) floats or (T, n) token ids, got shape {x.shape}")
    if h0 is None:
        h0 = jnp.zeros((x.shape[1], W.shape[0]), U.dtype)
    return _rnn((x, h0), U, W, b, nonlinearity, backend)


# ---------------------------------------------------------------- the loss with its head


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _loss(weights, xh, y, reduction, backend):
    return _loss_fwd(weights, xh, y, reduction, backend)[0]


def _loss_fwd(weights, xh, y, reduction, backend):
    U, W, V, b, c = weights
    x, h0 = xh
    ids = jnp.issubdtype(x.dtype, jnp.integer)

    def host(U, W, V, b, c, x, y, h0):
        p = fastrnn.Params(*(np.asarray(a) for a in (U, W, V, b, c)))
        loss, g, _ = fastrnn.loss_and_grads(p, np.asarray(x), np.asarray(y), h0=np.asarray(h0), reduction=reduction,
                                            backend=backend)
        dX = np.zeros((0,), p.U.dtype) if g.X is None else g.X
        return loss, g.U, g.W, g.V, g.b, g.c, g.h0, dX

    shapes = ((), *(a.shape for a in (U, W, V, b, c, h0)), (0,) if ids else x.shape)
    loss, *grads = _flat_call(host, shapes, U.dtype, U, W, V, b, c, x, y, h0)
    return loss, (grads, x, y)


def _loss_bwd(reduction, backend, res, g):
    (dU, dW, dV, db, dc, dh0, dX), x, y = res
    ids = jnp.issubdtype(x.dtype, jnp.integer)
    weights = tuple(g * a for a in (dU, dW, dV, db, dc))
    return weights, (_zero_cotangent(x) if ids else g * dX, g * dh0), _zero_cotangent(y)


_loss.defvjp(_loss_fwd, _loss_bwd)


def rnn_loss(U, W, V, b, c, x, y, h0=None, *, reduction="mean", backend=None):
    """Softmax cross-entropy of ``O_t = H_t V + c`` against targets ``y`` (T, n), as
    :func:`fastrnn.loss_and_grads` ('mean' divides by T·n). Differentiable with
    respect to U, W, V, b, c, x (float) and h0; its forward pass computes all of
    those gradients at once."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be (T, n, d) floats or (T, n) token ids, got shape {x.shape}")
    if y.shape != x.shape[:2] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer class ids of shape {x.shape[:2]}, got {y.dtype} {y.shape}")
    if h0 is None:
        h0 = jnp.zeros((x.shape[1], W.shape[0]), U.dtype)
    return _loss((U, W, V, b, c), (x, h0), y, reduction, backend)


# ---------------------------------------------------------------- Flax


def _flax_module():
    try:
        from flax import linen as nn
    except ImportError as exc:
        raise ImportError("fastrnn.jax.SimpleRNN needs Flax, which is not installed: pip install 'fastrnn[jax]'") from exc

    class _Input(nn.Module):  # the parameters SimpleCell's Dense 'i' holds
        features: int
        param_dtype: object

        @nn.compact
        def __call__(self, d):
            U = self.param("kernel", nn.initializers.lecun_normal(), (d, self.features), self.param_dtype)
            b = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
            return U, b

    class _Hidden(nn.Module):  # the parameters SimpleCell's Dense 'h' holds
        features: int
        param_dtype: object

        @nn.compact
        def __call__(self):
            return self.param("kernel", nn.initializers.orthogonal(), (self.features, self.features), self.param_dtype)

    class SimpleRNN(nn.Module):
        """A Flax linen RNN layer computed by :func:`fastrnn.jax.rnn`.

        Its parameters are named as ``flax.linen.SimpleCell``'s
        (``{'i': {'kernel', 'bias'}, 'h': {'kernel'}}``), so weights move
        between ``nn.RNN(nn.SimpleCell(h, name=...))`` and ``SimpleRNN(h, name=...)``
        unchanged. Input (n, T, d) (``time_major=False``, Flax's default) or
        (T, n, d); returns every hidden state in the same layout.
        """

        features: int
        nonlinearity: str = "tanh"
        time_major: bool = False
        param_dtype: object = jnp.float32
        backend: object = None

        @nn.compact
        def __call__(self, x, h0=None):
            U, b = _Input(self.features, self.param_dtype, name="i")(x.shape[-1])
            W = _Hidden(self.features, self.param_dtype, name="h")()
            xt = x if self.time_major else jnp.swapaxes(x, 0, 1)
            H = rnn(xt, U, W, b, h0, nonlinearity=self.nonlinearity, backend=self.backend)
            return H if self.time_major else jnp.swapaxes(H, 0, 1)

    return SimpleRNN


def __getattr__(name):
    if name == "SimpleRNN":
        module = _flax_module()
        globals()["SimpleRNN"] = module
        return module
    raise AttributeError(f"module 'fastrnn.jax' has no attribute {name!r}")
