"""fastrnn inside JAX: the recurrence and the loss as functions that work under
``jax.jit`` and ``jax.grad``, and a thin Flax linen module.

    import fastrnn.jax as fj
    H = fj.rnn(x, U, W, b)                           # (T, n, h), like a lax.scan of tanh cells
    loss = fj.rnn_loss(U, W, V, b, c, x, y)          # mean softmax cross-entropy of the head
    jax.jit(jax.grad(lambda U: fj.rnn_loss(U, W, V, b, c, x, y)))(U)

Each is a ``jax.custom_vjp`` around fastrnn's CPU kernels, so JAX sees one
opaque op instead of T small ones. The loss's forward computes every gradient
at once (one fused pass: :func:`fastrnn.loss_and_grads`) and its backward only
scales them by the cotangent; the recurrence's forward keeps the states for its
backward (BPTT). Inputs that are not differentiated (``x``, say) get no
gradient computed.

Two ways in (:func:`uses_ffi` says which a call takes):

* an XLA FFI custom call (the fast path): csrc/xla_ffi.c's handlers, registered
  with ``jax.ffi.register_ffi_target`` on first use, run the C backend's kernels
  on XLA's own buffers, with no Python and no copies at run time. Taken for
  tanh when the C extension is built and ``backend`` is None or 'c'. The BLAS
  under them runs with the thread count it has (``OPENBLAS_NUM_THREADS`` or the
  library's default); fastrnn's thread policy (:func:`fastrnn.set_num_threads`)
  and its splitting of large steps over the cores apply to the callback path only.
* ``jax.pure_callback`` into :func:`fastrnn.rnn_forward` /
  :func:`fastrnn.rnn_backward` / :func:`fastrnn.loss_and_grads`: relu, the
  'numba' and 'numpy' backends, and every call where the handlers could not be
  registered (:data:`ffi_unavailable` then holds the reason). Each call crosses
  into Python and copies its arrays through host memory.

Only first derivatives: ``jax.grad`` of a ``jax.grad`` (Hessians, higher-order
``jax.jvp``) is not available, as the kernels' gradients are not themselves
differentiable. Everything runs on the CPU.
"""

from __future__ import annotations

import threading
from functools import partial

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - exercised only without jax
    raise ImportError("fastrnn.jax needs JAX, which is not installed: pip install 'fastrnn[jax]'") from exc

import numpy as np

import fastrnn

__all__ = ["rnn", "rnn_loss", "uses_ffi", "SimpleRNN"]


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


# ---------------------------------------------------------------- the XLA FFI path

_TARGETS = {"loss": "fastrnn_loss", "forward": "fastrnn_rnn_forward", "backward": "fastrnn_rnn_backward"}
_ffi_state = {}  # "ok": bool, "why": str, filled by _ffi_ready()
_ffi_lock = threading.Lock()  # two threads tracing at once register the handlers once


def _register():
    """Register csrc/xla_ffi.c's handlers with XLA for the CPU (once per process)."""
    import ctypes

    from fastrnn._config import COPY_WT_BELOW
    from fastrnn.backends import cffi_kernels  # loads the extension and hands it SciPy's BLAS

    ffi, lib = cffi_kernels.ffi, cffi_kernels.lib
    # a private prototype: setting argtypes on ctypes.pythonapi.PyCapsule_New would change it for everyone
    capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
        ("PyCapsule_New", ctypes.pythonapi))
    which = {"loss": lib.FASTRNN_XLA_LOSS, "forward": lib.FASTRNN_XLA_FORWARD, "backward": lib.FASTRNN_XLA_BACKWARD}
    for key, name in _TARGETS.items():
        address = int(ffi.cast("uintptr_t", lib.fastrnn_xla_handler(which[key], COPY_WT_BELOW)))
        if not address:
            raise RuntimeError(f"the C extension has no XLA handler {key!r}")
        jax.ffi.register_ffi_target(name, capsule_new(address, None, None), platform="cpu")


def _ffi_ready():
    """True when the XLA FFI handlers are registered and a small loss computed through
    them matches the C backend's; otherwise the reason is in ``_ffi_state['why']``."""
    if "ok" in _ffi_state:
        return _ffi_state["ok"]
    with _ffi_lock:
        if "ok" in _ffi_state:
            return _ffi_state["ok"]
        try:
            _register()
            rng = np.random.default_rng(0)
            U, W, V = (rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((3, 2), (2, 2), (2, 3)))
            b, c = np.float32([0.1, -0.2]), np.float32([0.0, 0.1, 0.2])
            x, y, h0 = np.int32([[0], [2]]), np.int32([[1], [0]]), np.zeros((1, 2), np.float32)
            with jax.ensure_compile_time_eval():  # concrete here even when first asked inside a trace
                got = jax.jit(_loss_ffi, static_argnums=(8, 9))(U, W, V, b, c, x, y, h0, "mean", False)
            want = fastrnn.loss_and_grads(fastrnn.Params(U, W, V, b, c), x, y, backend="c")
            if not np.allclose(np.asarray(got[0]), want[0], rtol=1e-5) or not np.allclose(
                    np.asarray(got[2]), want[1].W, rtol=1e-5, atol=1e-7):
                raise RuntimeError("the XLA handler's result differs from the C backend's")
            _ffi_state["ok"] = True
        except Exception as exc:  # no C extension, an XLA that refuses the handlers, ...
            _ffi_state.update(ok=False, why=f"{type(exc).__name__}: {exc}")
    return _ffi_state["ok"]


def uses_ffi(backend=None, nonlinearity="tanh"):
    """Whether :func:`rnn` / :func:`rnn_loss` with these arguments run fastrnn's C
    kernels as an XLA FFI custom call (no Python, no copies: the fast path) rather
    than through ``jax.pure_callback``. The FFI path needs the C backend's
    extension, ``backend`` None or 'c', and tanh; any other backend ('numba',
    'numpy') or relu takes the callback path, as does every call when the
    handlers could not be registered (:data:`ffi_unavailable` says why)."""
    return backend in (None, "c") and nonlinearity == "tanh" and _ffi_ready()


def __getattr__(name):
    if name == "ffi_unavailable":  # None, or why the FFI path is off
        return None if _ffi_ready() else _ffi_state["why"]
    if name == "SimpleRNN":
        module = _flax_module()
        globals()["SimpleRNN"] = module
        return module
    raise AttributeError(f"module 'fastrnn.jax' has no attribute {name!r}")


def _handler_ids(x):
    """Token ids as int32 or int64, the handlers' two integer types (64-bit unsigned ids become
    int64, so that a huge id turns negative and is refused instead of wrapping to a valid one)."""
    if x.dtype in (jnp.int32, jnp.int64):
        return x
    return x.astype(jnp.int64 if jnp.dtype(x.dtype).itemsize == 8 else jnp.int32)


def _loss_ffi(U, W, V, b, c, x, y, h0, reduction, want_dX):
    """(loss, dU, dW, dV, db, dc, dh0, dX or an empty (0,)) in one custom call."""
    (T, n), (d, h), v, dt = y.shape, U.shape, V.shape[1], U.dtype
    ids = jnp.issubdtype(x.dtype, jnp.integer)
    S = jax.ShapeDtypeStruct
    shapes = [(), U.shape, W.shape, V.shape, b.shape, c.shape, h0.shape, (T, n, d) if want_dX and not ids else (0,),
              (T + 1, n, h), (T * n, v), (T, n, h)]  # the last three: the kernel's scratch (states, logits, dA)
    call = jax.ffi.ffi_call(_TARGETS["loss"], [S(s, dt) for s in shapes], vmap_method="sequential")
    out = call(U, W, V, b, c, _handler_ids(x) if ids else x, _handler_ids(y), h0, np.int32(reduction == "mean"))
    return out[:8]


def _forward_ffi(x, U, W, b, h0):
    """Hs (T+1, n, h): h0, then every state."""
    T, n = x.shape[:2]
    h = U.shape[1]
    S = jax.ShapeDtypeStruct
    call = jax.ffi.ffi_call(_TARGETS["forward"], [S((T + 1, n, h), U.dtype), S((T, n, h), U.dtype)],
                            vmap_method="sequential")
    ids = jnp.issubdtype(x.dtype, jnp.integer)
    return call(U, W, b, _handler_ids(x) if ids else x, h0)[0]


def _backward_ffi(dH, Hs, x, U, W, want_dX):
    """(dU, dW, db, dh0, dX or an empty (0,))."""
    T, n = x.shape[:2]
    d, h = U.shape
    ids = jnp.issubdtype(x.dtype, jnp.integer)
    S = jax.ShapeDtypeStruct
    shapes = [U.shape, W.shape, (h,), (n, h), (T, n, d) if want_dX and not ids else (0,), (T, n, h)]
    call = jax.ffi.ffi_call(_TARGETS["backward"], [S(s, U.dtype) for s in shapes], vmap_method="sequential")
    return call(dH, Hs, _handler_ids(x) if ids else x, U, W)[:5]


def _value(p):
    """The array of a ``CustomVJPPrimal`` (custom_vjp with symbolic_zeros), or p itself."""
    return getattr(p, "value", p)


def _perturbed(p):
    """Whether JAX differentiates with respect to this primal (True when it cannot tell)."""
    return bool(getattr(p, "perturbed", True))


def _dense(ct):
    """A cotangent as an array: JAX's symbolic zero becomes zeros."""
    if isinstance(ct, jax.custom_derivatives.SymbolicZero):
        return jnp.zeros(ct.aval.shape, ct.aval.dtype)
    return ct


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
    (x, h0), px = (_value(a) for a in _value(xh)), _perturbed(_value(xh)[0])
    U, W, b = _value(U), _value(W), _value(b)
    want_dX = px and not jnp.issubdtype(x.dtype, jnp.integer)
    flag = np.zeros((int(want_dX), 0), U.dtype)  # static: whether backward computes dX, in its shape
    if uses_ffi(backend, nonlinearity):
        Hs = _forward_ffi(x, U, W, b, h0)
        return Hs[1:], (x, U, W, Hs, flag)
    H = _rnn_call(x, U, W, b, h0, nonlinearity, backend)
    return H, (x, U, W, (h0, H), flag)


def _rnn_bwd(nonlinearity, backend, res, dH):
    x, U, W, states, flag = res
    ids = jnp.issubdtype(x.dtype, jnp.integer)
    want_dX = flag.shape[0] == 1
    dH = _dense(dH)
    if not isinstance(states, tuple):  # the FFI path kept Hs
        dU, dW, db, dh0, dX = _backward_ffi(dH, states, x, U, W, want_dX)
    else:
        h0, H = states

        def host(dH, H, x, U, W, h0):
            g = fastrnn.rnn_backward(np.asarray(dH), np.asarray(H), np.asarray(x), np.asarray(U), np.asarray(W),
                                     np.asarray(h0), nonlinearity=nonlinearity, backend=backend)
            dX = np.zeros((0,), U.dtype) if g.X is None or not want_dX else g.X
            return g.U, g.W, g.b, g.h0, dX

        shapes = (U.shape, W.shape, (W.shape[0],), h0.shape, x.shape if want_dX else (0,))
        dU, dW, db, dh0, dX = _flat_call(host, shapes, U.dtype, dH, H, x, U, W, h0)
    if ids:
        dx = _zero_cotangent(x)
    else:
        dx = dX if want_dX else jnp.zeros(x.shape, x.dtype)
    return ((dx, dh0), dU, dW, db)


_rnn.defvjp(_rnn_fwd, _rnn_bwd, symbolic_zeros=True)


def _check_floats(**arrays):
    """Every float argument float32 or float64, all of one dtype (named in the error)."""
    names = list(arrays)
    dt = jnp.dtype(arrays[names[0]].dtype)
    if dt not in (jnp.float32, jnp.float64):
        raise ValueError(f"{names[0]} must be float32 or float64, got {dt}")
    for k in names[1:]:
        if jnp.dtype(arrays[k].dtype) != dt:
            raise ValueError(f"{k} must have the dtype of {names[0]} ({dt}), got {arrays[k].dtype}")


def rnn(x, U, W, b, h0=None, *, nonlinearity="tanh", backend=None):
    """Every hidden state ``H_t = f(X_t U + H_{t-1} W + b)``, (T, n, h), time-major.

    ``x`` float (T, n, d) or integer token ids (T, n); ``U`` (d, h), ``W`` (h, h),
    ``b`` (h,); ``h0`` (n, h), default zeros; ``nonlinearity`` 'tanh' or 'relu'.
    All floats of one dtype. ``H[-1]`` is the final state. Differentiable with
    respect to x (float), U, W, b and h0 (first derivatives only).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be (T, n, d) floats or (T, n) token ids, got shape {x.shape}")
    if h0 is None:
        h0 = jnp.zeros((x.shape[1], W.shape[0]), U.dtype)
    floats = dict(U=U, W=W, b=b, h0=h0, **({} if jnp.issubdtype(x.dtype, jnp.integer) else {"x": x}))
    _check_floats(**floats)
    return _rnn((x, h0), U, W, b, nonlinearity, backend)


# ---------------------------------------------------------------- the loss with its head


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _loss(weights, xh, y, reduction, backend):
    return _loss_fwd(weights, xh, y, reduction, backend)[0]


def _loss_fwd(weights, xh, y, reduction, backend):
    U, W, V, b, c = (_value(a) for a in _value(weights))
    (x, h0), px = (_value(a) for a in _value(xh)), _perturbed(_value(xh)[0])
    y = _value(y)
    ids = jnp.issubdtype(x.dtype, jnp.integer)
    want_dX = px and not ids
    if uses_ffi(backend):
        loss, *grads = _loss_ffi(U, W, V, b, c, x, y, h0, reduction, want_dX)
        return loss, (grads, x, y)

    def host(U, W, V, b, c, x, y, h0):
        p = fastrnn.Params(*(np.asarray(a) for a in (U, W, V, b, c)))
        loss, g, _ = fastrnn.loss_and_grads(p, np.asarray(x), np.asarray(y), h0=np.asarray(h0), reduction=reduction,
                                            backend=backend, params_only=not want_dX)
        dX = np.zeros((0,), p.U.dtype) if g.X is None else g.X
        return loss, g.U, g.W, g.V, g.b, g.c, g.h0, dX

    shapes = ((), *(a.shape for a in (U, W, V, b, c, h0)), x.shape if want_dX else (0,))
    loss, *grads = _flat_call(host, shapes, U.dtype, U, W, V, b, c, x, y, h0)
    return loss, (grads, x, y)


def _loss_bwd(reduction, backend, res, g):
    (dU, dW, dV, db, dc, dh0, dX), x, y = res
    g = _dense(g)
    ids = jnp.issubdtype(x.dtype, jnp.integer)
    weights = tuple(g * a for a in (dU, dW, dV, db, dc))
    if ids:
        dx = _zero_cotangent(x)
    else:
        dx = g * dX if dX.shape == x.shape else jnp.zeros(x.shape, x.dtype)
    return weights, (dx, g * dh0), _zero_cotangent(y)


_loss.defvjp(_loss_fwd, _loss_bwd, symbolic_zeros=True)


def rnn_loss(U, W, V, b, c, x, y, h0=None, *, reduction="mean", backend=None):
    """Softmax cross-entropy of ``O_t = H_t V + c`` against targets ``y`` (T, n), as
    :func:`fastrnn.loss_and_grads` ('mean' divides by T·n). Differentiable with
    respect to U, W, V, b, c, x (float) and h0 (first derivatives only); its
    forward pass computes all of those gradients at once (dX only when x is
    differentiated)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be (T, n, d) floats or (T, n) token ids, got shape {x.shape}")
    if y.shape != x.shape[:2] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer class ids of shape {x.shape[:2]}, got {y.dtype} {y.shape}")
    if h0 is None:
        h0 = jnp.zeros((x.shape[1], W.shape[0]), U.dtype)
    floats = dict(U=U, W=W, V=V, b=b, c=c, h0=h0, **({} if jnp.issubdtype(x.dtype, jnp.integer) else {"x": x}))
    _check_floats(**floats)
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
