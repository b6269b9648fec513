"""fastrnn.jax under jax.jit and jax.grad against the same model written with lax.scan,
on both of its paths: the XLA FFI custom call (backend None, tanh) and jax.pure_callback
(backend 'numba', and relu).

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

import fastrnn  # noqa: E402
import fastrnn.jax as fj  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-10}  # max |a − b| / max(1, max |a|) per array


def _max_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


C_LOADS = "c" in fastrnn.backends()
PATHS = {"ffi": None, "callback": "numba"}  # the backend argument that selects each path


def _expect_path(fn, args, target, backend, nl="tanh"):
    """The call takes the path it should: the FFI custom call exactly where the C extension
    loads, backend is None and the nonlinearity tanh (seen in the lowered program)."""
    ffi = C_LOADS and backend is None and nl == "tanh"
    assert fj.uses_ffi(backend, nl) == ffi
    text = jax.jit(fn).lower(*args).as_text()
    assert (target in text) == ffi and ("callback" in text) != ffi


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
@pytest.mark.parametrize("nl,path", [("tanh", "ffi"), ("tanh", "callback"), ("relu", "callback")])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_rnn_matches_scan_under_jit(dtype, nl, path, ids):
    backend = PATHS[path]
    with jax.enable_x64(dtype == np.float64):
        p = _arrays(dtype, ids=ids)
        relu = nl == "relu"
        G = jnp.asarray(np.random.default_rng(1).standard_normal((7, 3, 4)).astype(dtype))

        def ours(x, U, W, b, h0):
            return (fj.rnn(x, U, W, b, h0, nonlinearity=nl, backend=backend) * G).sum()

        def ref(x, U, W, b, h0):
            return (_scan_H(x, U, W, b, h0, relu) * G).sum()

        args = (p["x"], p["U"], p["W"], p["b"], p["h0"])
        argnums = (1, 2, 3, 4) if ids else (0, 1, 2, 3, 4)
        _expect_path(jax.grad(ours, argnums=argnums), args, "fastrnn_rnn_backward", backend, nl)
        H1 = jax.jit(lambda *a: fj.rnn(*a, nonlinearity=nl, backend=backend))(*args)
        H2 = jax.jit(lambda *a: _scan_H(*a, relu))(*args)
        assert H1.dtype == dtype and H1.shape == (7, 3, 4)
        assert _max_err(H2, H1) < TOL[dtype]
        g1 = jax.jit(jax.grad(ours, argnums=argnums))(*args)
        g2 = jax.jit(jax.grad(ref, argnums=argnums))(*args)
        for a, b in zip(g2, g1):
            assert a.shape == b.shape and _max_err(a, b) < TOL[dtype]
        if not ids:  # x not differentiated: no dX computed, the rest unchanged
            g3 = jax.jit(jax.grad(ours, argnums=(1, 2, 3, 4)))(*args)
            for a, b in zip(g2[1:], g3):
                assert a.shape == b.shape and _max_err(a, b) < TOL[dtype]
        if ids:  # integer inputs get a float0 cotangent, as JAX's own ops give them
            gx = jax.grad(ours, argnums=0, allow_int=True)(*args)
            assert gx.dtype == jax.dtypes.float0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("path", list(PATHS))
def test_loss_matches_scan_under_jit(dtype, reduction, ids, path):
    backend = PATHS[path]
    with jax.enable_x64(dtype == np.float64):
        p = _arrays(dtype, ids=ids)
        names = ["U", "W", "V", "b", "c"] + ([] if ids else ["x"]) + ["h0"]

        def call(fn, names, jit=True, **kw):
            def f(*free):
                a = dict(p, **dict(zip(names, free)))
                return fn(a["U"], a["W"], a["V"], a["b"], a["c"], a["x"], a["y"], a["h0"], **kw)
            vg = jax.value_and_grad(f, argnums=tuple(range(len(names))))
            return jax.jit(vg) if jit else vg

        _expect_path(call(fj.rnn_loss, names, False, reduction=reduction, backend=backend),
                     [p[k] for k in names], "fastrnn_loss", backend)
        l1, g1 = call(fj.rnn_loss, names, reduction=reduction, backend=backend)(*(p[k] for k in names))
        l2, g2 = call(_scan_loss, names, reduction=reduction)(*(p[k] for k in names))
        assert l1.dtype == dtype and _max_err(l2, l1) < TOL[dtype]
        for k, a, b in zip(names, g2, g1):
            assert a.shape == b.shape and _max_err(a, b) < TOL[dtype], k
        if not ids:  # x not differentiated: no dX computed, the rest unchanged
            free = [k for k in names if k != "x"]
            l3, g3 = call(fj.rnn_loss, free, reduction=reduction, backend=backend)(*(p[k] for k in free))
            assert _max_err(l2, l3) < TOL[dtype]
            for k, a, b in zip(free, [g for k, g in zip(names, g2) if k != "x"], g3):
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
    with pytest.raises(ValueError, match=r"W must have the dtype of U \(float32\), got bfloat16"):
        fj.rnn(p["x"], p["U"], p["W"].astype(jnp.bfloat16), p["b"])
    with pytest.raises(ValueError, match="U must be float32 or float64, got bfloat16"):
        fj.rnn_loss(*(p[k].astype(jnp.bfloat16) for k in "UWVbc"), p["x"], p["y"])
    with pytest.raises(ValueError, match="h0 must have the dtype of U"):
        fj.rnn_loss(p["U"], p["W"], p["V"], p["b"], p["c"], p["x"], p["y"], p["h0"].astype(jnp.float16))


def test_ffi_path_is_there_where_the_c_backend_loads():
    """The FFI handlers register wherever the C extension loads (CI requires it); without it
    the reason is kept and every call takes the callback path."""
    if C_LOADS:
        assert fj.ffi_unavailable is None and fj.uses_ffi() and fj.uses_ffi("c")
    else:
        assert "Error" in fj.ffi_unavailable and not fj.uses_ffi()
    assert not fj.uses_ffi("numba") and not fj.uses_ffi("numpy") and not fj.uses_ffi(None, "relu")


def test_a_refused_registration_falls_back_to_the_callback(monkeypatch):
    """Where the handlers cannot be registered (no extension, an XLA that refuses them), the
    reason is kept and backend None runs through pure_callback with the same results."""
    p = _arrays(np.float32, ids=True)
    f = lambda U: fj.rnn_loss(U, p["W"], p["V"], p["b"], p["c"], p["x"], p["y"])  # noqa: E731
    want = jax.jit(jax.value_and_grad(f))(p["U"])

    def refuse():
        raise RuntimeError("no handlers here")

    monkeypatch.setattr(fj, "_register", refuse)
    monkeypatch.setattr(fj, "_ffi_state", {})
    assert not fj.uses_ffi() and fj.ffi_unavailable == "RuntimeError: no handlers here"
    g = lambda U: fj.rnn_loss(U, p["W"], p["V"], p["b"], p["c"], p["x"], p["y"])  # noqa: E731  (a new trace)
    assert "callback" in jax.jit(jax.value_and_grad(g)).lower(p["U"]).as_text()
    got = jax.jit(jax.value_and_grad(g))(p["U"])
    assert _max_err(want[0], got[0]) < 1e-6 and _max_err(want[1], got[1]) < 1e-6


@pytest.mark.skipif(not C_LOADS, reason="the FFI handlers live in the C extension")
def test_the_handlers_check_every_buffer():
    """Called directly with a wrong shape, dtype or count, a handler returns XLA's error
    (a Python exception) instead of reading out of bounds."""
    assert fj.uses_ffi()
    p = _arrays(np.float32, ids=True)
    S = jax.ShapeDtypeStruct
    T, n, d, h, v = 7, 3, 5, 4, 6
    outs = [S(s, jnp.float32) for s in [(), (d, h), (h, h), (h, v), (h,), (v,), (n, h), (0,), (T + 1, n, h),
                                        (T * n, v), (T, n, h)]]
    args = [p[k] for k in ("U", "W", "V", "b", "c", "x", "y", "h0")] + [np.int32(1)]
    good = jax.ffi.ffi_call("fastrnn_loss", outs)(*args)
    assert np.isfinite(float(good[0]))
    bad_args = [
        (args[:1] + [p["W"][:3]] + args[2:], outs, "argument has the wrong dtype or shape"),
        (args[:7] + [p["h0"].astype(jnp.float16)] + args[8:], outs, "argument has the wrong dtype or shape"),
        (args[:5] + [p["x"].astype(jnp.float32)] + args[6:], outs, "argument has the wrong dtype or shape"),
        (args, outs[:1] + [S((d + 1, h), jnp.float32)] + outs[2:], "result has the wrong dtype or shape"),
        (args[:-1], outs, "wrong number of arguments"),
    ]
    for a, o, msg in bad_args:
        with pytest.raises(Exception, match=msg):
            jax.block_until_ready(jax.ffi.ffi_call("fastrnn_loss", o)(*a))
    fwd = [S((T + 1, n, h), jnp.float32), S((T, n, h), jnp.float32)]
    with pytest.raises(Exception, match="forward: a buffer has the wrong dtype or shape"):
        jax.block_until_ready(jax.ffi.ffi_call("fastrnn_rnn_forward", fwd)(p["U"], p["W"], p["b"], p["x"], p["h0"][:2]))
    bwd = [S(s, jnp.float32) for s in [(d, h), (h, h), (h,), (n, h), (0,), (T, n, h)]]
    with pytest.raises(Exception, match="backward: a buffer has the wrong dtype or shape"):
        jax.block_until_ready(jax.ffi.ffi_call("fastrnn_rnn_backward", bwd)(
            jnp.zeros((T, n, h)), jnp.zeros((T, n, h)), p["x"], p["U"], p["W"]))  # Hs one step short


@pytest.mark.parametrize("path", list(PATHS))
def test_out_of_range_ids_raise_on_both_paths(path):
    """A bad token id or target under jit is an error from the op (the FFI handler checks
    before any kernel runs), never a crash or garbage."""
    backend = PATHS[path]
    p = _arrays(np.float32, ids=True)
    loss = jax.jit(lambda x, y: fj.rnn_loss(p["U"], p["W"], p["V"], p["b"], p["c"], x, y, backend=backend))
    rnn = jax.jit(lambda x: fj.rnn(x, p["U"], p["W"], p["b"], backend=backend))
    token = "a token id in x lies outside" if path == "ffi" else "inputs holds token id"
    target = "a target in y lies outside" if path == "ffi" else "targets holds class"
    huge = p["x"].astype(jnp.uint32).at[1, 1].set(2**31 + 1)  # must not wrap to a valid id
    for bad in (p["x"].at[2, 1].set(5), p["x"].at[0, 0].set(-1), huge):  # d = 5
        with pytest.raises(Exception, match=token):
            loss(bad, p["y"]).block_until_ready()
        with pytest.raises(Exception, match=token):
            rnn(bad).block_until_ready()
    with pytest.raises(Exception, match=target):
        loss(p["x"], p["y"].at[6, 2].set(6)).block_until_ready()  # v = 6
    assert np.isfinite(float(loss(p["x"], p["y"])))  # the good call still works afterwards


@pytest.mark.parametrize("path", list(PATHS))
def test_vmap_and_narrow_id_types(path):
    """vmap runs the op once per item; int8/int16/uint8 ids give the int32 results."""
    backend = PATHS[path]
    p = _arrays(np.float32, ids=True)
    Us = jnp.stack([p["U"], 0.5 * p["U"], -p["U"]])
    f = lambda U, x: fj.rnn_loss(U, p["W"], p["V"], p["b"], p["c"], x, p["y"], backend=backend)  # noqa: E731
    batched = jax.jit(jax.vmap(jax.value_and_grad(f), in_axes=(0, None)))(Us, p["x"])
    for i in range(3):
        l_i, g_i = jax.value_and_grad(f)(Us[i], p["x"])
        assert _max_err(l_i, batched[0][i]) < 1e-6 and _max_err(g_i, batched[1][i]) < 1e-6
    H = jax.vmap(lambda U: fj.rnn(p["x"], U, p["W"], p["b"], backend=backend))(Us)
    assert _max_err(_scan_H(p["x"], Us[2], p["W"], p["b"], jnp.zeros((3, 4))), H[2]) < 1e-5
    for dt in (jnp.int8, jnp.int16, jnp.uint8):
        assert float(f(p["U"], p["x"].astype(dt))) == float(f(p["U"], p["x"]))


@pytest.mark.parametrize("path", list(PATHS))
def test_higher_order_derivatives_are_refused(path):
    """Only first derivatives: a second one raises instead of returning something wrong."""
    backend = PATHS[path]
    p = _arrays(np.float32, ids=True)
    f = lambda U: fj.rnn_loss(U, p["W"], p["V"], p["b"], p["c"], p["x"], p["y"], backend=backend)  # noqa: E731
    r = lambda U: fj.rnn(p["x"], U, p["W"], p["b"], backend=backend).sum()  # noqa: E731
    with pytest.raises(ValueError, match="cannot be differentiated|do not support JVP"):
        jax.hessian(f)(p["U"])
    with pytest.raises(ValueError, match="cannot be differentiated|do not support JVP"):
        jax.grad(lambda U: jax.grad(r)(U).sum())(p["U"])


def test_missing_jax_is_named():
    code = "import sys; sys.modules['jax'] = None; import fastrnn.jax"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "fastrnn[jax]" in r.stderr and "JAX" in r.stderr
