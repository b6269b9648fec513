"""fastrnn.jax under jax.jit and jax.grad against the same model written with lax.scan.

jax and flax are optional for fastrnn: without them these tests skip, and fail instead under
FASTRNN_REQUIRE_BRIDGES=1 (CI sets it).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

if os.environ.get("FASTRNN_REQUIRE_BRIDGES", "") in ("1", "true", "yes"):
    import jax  # noqa: F401  (an ImportError fails the run under FASTRNN_REQUIRE_BRIDGES=1)
    import flax  # noqa: F401
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fastrnn.jax as fj  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-10}  # max |a − b| / max(1, max |a|) per array


def _max_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


def _scan_H(x, U, W, b, h0, relu=False):
    def cell(hp, xt):
        a = (U[xt] if jnp.issubdtype(xt.dtype, jnp.integer) else xt @ U) + hp @ W + b
        hn = jax.nn.relu(a) if relu else jnp.tanh(a)
        return hn, hn

    return jax.lax.scan(cell, h0, x)[1]


def _scan_loss(U, W, V, b, c, x, y, h0, reduction="mean"):
    H = _scan_H(x, U, W, b, h0)
    logp = jax.nn.log_softmax(H @ V + c)
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)
    return nll.mean() if reduction == "mean" else nll.sum()


def _arrays(dtype, T=7, n=3, d=5, h=4, v=6, seed=0, ids=False):
    rng = np.random.default_rng(seed)
    a = lambda *s, scale=0.6: jnp.asarray(rng.uniform(-scale, scale, s).astype(dtype))  # noqa: E731
    x = jnp.asarray(rng.integers(0, d, (T, n))) if ids else a(T, n, d, scale=1.0)
    return dict(U=a(d, h), W=a(h, h), V=a(h, v), b=a(h), c=a(v), x=x, y=jnp.asarray(rng.integers(0, v, (T, n))),
                h0=a(n, h))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_rnn_matches_scan_under_jit(dtype, nl, ids):
    with jax.enable_x64(dtype == np.float64):
        p = _arrays(dtype, ids=ids)
        relu = nl == "relu"
        G = jnp.asarray(np.random.default_rng(1).standard_normal((7, 3, 4)).astype(dtype))

        def ours(x, U, W, b, h0):
            return (fj.rnn(x, U, W, b, h0, nonlinearity=nl) * G).sum()

        def ref(x, U, W, b, h0):
            return (_scan_H(x, U, W, b, h0, relu) * G).sum()

        args = (p["x"], p["U"], p["W"], p["b"], p["h0"])
        argnums = (1, 2, 3, 4) if ids else (0, 1, 2, 3, 4)
        H1 = jax.jit(lambda *a: fj.rnn(*a, nonlinearity=nl))(*args)
        H2 = jax.jit(lambda *a: _scan_H(*a, relu))(*args)
        assert H1.dtype == dtype and H1.shape == (7, 3, 4)
        assert _max_err(H2, H1) < TOL[dtype]
        g1 = jax.jit(jax.grad(ours, argnums=argnums))(*args)
        g2 = jax.jit(jax.grad(ref, argnums=argnums))(*args)
        for a, b in zip(g2, g1):
            assert a.shape == b.shape and _max_err(a, b) < TOL[dtype]
        if ids:  # integer inputs get a float0 cotangent, as JAX's own ops give them
            gx = jax.grad(ours, argnums=0, allow_int=True)(*args)
            assert gx.dtype == jax.dtypes.float0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_loss_matches_scan_under_jit(dtype, reduction, ids):
    with jax.enable_x64(dtype == np.float64):
        p = _arrays(dtype, ids=ids)
        names = ["U", "W", "V", "b", "c"] + ([] if ids else ["x"]) + ["h0"]

        def call(fn, **kw):
            def f(*free):
                a = dict(p, **dict(zip(names, free)))
                return fn(a["U"], a["W"], a["V"], a["b"], a["c"], a["x"], a["y"], a["h0"], **kw)
            return jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(names)))))

        l1, g1 = call(fj.rnn_loss, reduction=reduction)(*(p[k] for k in names))
        l2, g2 = call(_scan_loss, reduction=reduction)(*(p[k] for k in names))
        assert l1.dtype == dtype and _max_err(l2, l1) < TOL[dtype]
        for k, a, b in zip(names, g2, g1):
            assert a.shape == b.shape and _max_err(a, b) < TOL[dtype], k


def test_loss_is_scaled_by_the_cotangent():
    p = _arrays(np.float32)
    f = lambda U, s: s * fj.rnn_loss(U, p["W"], p["V"], p["b"], p["c"], p["x"], p["y"])  # noqa: E731
    g1 = jax.grad(f)(p["U"], 3.0)
    g2 = jax.grad(f)(p["U"], 1.0)
    assert _max_err(3 * g2, g1) < 1e-6


def test_flax_module_matches_simple_cell():
    _ = pytest.importorskip("flax") if os.environ.get("FASTRNN_REQUIRE_BRIDGES") != "1" else None
    from flax import linen as nn

    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 6, 5)).astype(np.float32))  # (n, T, d)

    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(7)(fj.SimpleRNN(4, name="rnn")(x))

    class Theirs(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(7)(nn.RNN(nn.SimpleCell(4, name="rnn"))(x))

    variables = Theirs().init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(Ours().init(jax.random.PRNGKey(1), x))
    variables = jax.tree_util.tree_map(lambda w: w + 0.1 if w.ndim == 1 else w, variables)  # nonzero biases
    assert _max_err(Theirs().apply(variables, x), jax.jit(Ours().apply)(variables, x)) < 1e-6
    loss = lambda m: (lambda v: (m.apply(v, x) ** 2).mean())  # noqa: E731
    g1 = jax.jit(jax.grad(loss(Ours())))(variables)
    g2 = jax.grad(loss(Theirs()))(variables)
    for a, b in zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(g1)):
        assert _max_err(a, b) < 1e-5
    H = fj.SimpleRNN(4, time_major=True).init_with_output(jax.random.PRNGKey(0), jnp.swapaxes(x, 0, 1))[0]
    assert H.shape == (6, 3, 4)


def test_clear_errors():
    p = _arrays(np.float32)
    with pytest.raises(ValueError, match="nonlinearity"):
        fj.rnn(p["x"], p["U"], p["W"], p["b"], nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="y must be integer class ids of shape"):
        fj.rnn_loss(p["U"], p["W"], p["V"], p["b"], p["c"], p["x"], p["y"][:2])
    with pytest.raises(ValueError, match="reduction"):
        fj.rnn_loss(p["U"], p["W"], p["V"], p["b"], p["c"], p["x"], p["y"], reduction="none")
    with pytest.raises(Exception, match="dtype"):  # fastrnn's own check, raised through the callback
        fj.rnn(p["x"], p["U"], p["W"].astype(jnp.bfloat16), p["b"]).block_until_ready()


def test_missing_jax_is_named():
    code = "import sys; sys.modules['jax'] = None; import fastrnn.jax"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "fastrnn[jax]" in r.stderr and "JAX" in r.stderr
