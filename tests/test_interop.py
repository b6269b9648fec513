"""Weight exchange: fastrnn params <-> torch nn.RNN + nn.Linear, Keras 3 SimpleRNN + Dense (JAX
backend, no TensorFlow), Flax linen SimpleCell / RNN + Dense. Each direction is checked by running
the other framework on the same inputs: outputs within 1e-6 (float32).

The frameworks are optional for fastrnn: without them these tests skip, and fail instead under
FASTRNN_REQUIRE_BRIDGES=1 (CI sets it).
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn import interop

REQUIRED = os.environ.get("FASTRNN_REQUIRE_BRIDGES", "") in ("1", "true", "yes")


def _need(name, import_it=True):
    """Import ``name`` (or only find it: Keras must be imported with KERAS_BACKEND set, in a child)."""
    if not import_it:
        if importlib.util.find_spec(name) is None:
            if REQUIRED:
                pytest.fail(f"{name} is not installed (FASTRNN_REQUIRE_BRIDGES=1: no bridge test may skip)")
            pytest.skip(f"{name} is not installed")
        return None
    if REQUIRED:
        return importlib.import_module(name)  # an ImportError fails the test under FASTRNN_REQUIRE_BRIDGES=1
    return pytest.importorskip(name)


def _max_err(a, b):
    """max |a − b| relative to max(1, max |a|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


CONFIGS = [(1, False, "tanh"), (2, True, "relu"), (3, False, "tanh"), (1, True, "tanh")]


def _params(L, bi, nl, d=5, h=6, v=7, seed=0):
    p = fastrnn.init_params(d, h, v, num_layers=L, bidirectional=bi, nonlinearity=nl, seed=seed)
    layers, V, c, nl = interop.layers_of(p)
    rng = np.random.default_rng(seed + 1)  # nonzero biases, so a lost one shows
    layers = [[(U, W, rng.uniform(-0.5, 0.5, W.shape[0]).astype(np.float32)) for U, W, _ in layer] for layer in layers]
    return interop.make_params(layers, V, rng.uniform(-0.5, 0.5, V.shape[1]).astype(np.float32), nl)


def test_layers_of_and_make_params():
    p = fastrnn.init_params(3, 4, 5, seed=0)
    assert isinstance(interop.make_params(*interop.layers_of(p)), fastrnn.Params)
    q = _params(2, True, "relu")
    r = interop.make_params(*interop.layers_of(q))
    assert isinstance(r, fastrnn.DeepParams) and r.nonlinearity == "relu" and r.num_layers == 2
    with pytest.raises(TypeError, match="Params"):
        interop.layers_of((1, 2))


@pytest.mark.parametrize("L,bi,nl", CONFIGS)
def test_torch_both_ways(L, bi, nl):
    torch = _need("torch")
    p = _params(L, bi, nl)
    x = np.random.default_rng(2).standard_normal((4, 3, 5)).astype(np.float32)
    rnn_state, head_state = interop.to_torch_state_dicts(p)
    rnn = torch.nn.RNN(5, 6, L, nl, bidirectional=bi)
    head = torch.nn.Linear(12 if bi else 6, 7)
    rnn.load_state_dict(rnn_state)
    head.load_state_dict(head_state)
    with torch.no_grad():
        out, hn = rnn(torch.from_numpy(x))
        probs_t = torch.softmax(head(out), -1).numpy()
    probs, h_last = fastrnn.predict_proba(p, x)
    assert _max_err(probs, probs_t) < 1e-6
    if L > 1 or bi:
        assert _max_err(h_last, hn.numpy()) < 1e-6
    # and back: torch's weights (random again, both biases nonzero) into fastrnn
    torch.manual_seed(L)
    rnn2 = torch.nn.RNN(5, 6, L, nl, bidirectional=bi)
    head2 = torch.nn.Linear(12 if bi else 6, 7)
    q = interop.from_torch(rnn2, head2)
    with torch.no_grad():
        out2, _ = rnn2(torch.from_numpy(x))
        probs_t2 = torch.softmax(head2(out2), -1).numpy()
    assert _max_err(fastrnn.predict_proba(q, x)[0], probs_t2) < 1e-6
    assert type(q) is type(p)
    # a round trip gives the same arrays (the biases' sum)
    r = interop.from_torch((rnn_state, nl), head_state)
    for a, b in zip(interop.layers_of(p)[0], interop.layers_of(r)[0]):
        for ca, cb in zip(a, b):
            for u, w in zip(ca, cb):
                np.testing.assert_array_equal(u, w)


def test_torch_bias_false_and_errors():
    torch = _need("torch")
    rnn = torch.nn.RNN(3, 4, bias=False)
    q = interop.from_torch(rnn, torch.nn.Linear(4, 2))
    assert np.all(q.b == 0)
    with pytest.raises(TypeError, match="torch.nn.RNN"):
        interop.from_torch(torch.nn.GRU(3, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="weight_ih_l0"):
        interop.from_torch(({}, "tanh"), torch.nn.Linear(4, 2))


KERAS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import numpy as np
    import keras
    import fastrnn
    from fastrnn import interop
    sys.path.insert(0, sys.argv[1])
    from test_interop import CONFIGS, _params, _max_err
    assert keras.backend.backend() == "jax"
    errors = {}
    x = np.random.default_rng(3).standard_normal((3, 4, 5)).astype(np.float32)  # (n, T, d): Keras is batch-first
    for L, bi, nl in CONFIGS:
        def model():
            layers = [keras.Input((4, 5))]
            for _ in range(L):
                rnn = keras.layers.SimpleRNN(6, activation=nl, return_sequences=True)
                layers.append(keras.layers.Bidirectional(rnn) if bi else rnn)
            layers.append(keras.layers.Dense(7, activation="softmax"))
            return keras.Sequential(layers)
        p = _params(L, bi, nl)
        m = model()
        m.set_weights(interop.to_keras_weights(p))
        to = _max_err(fastrnn.predict_proba(p, x, batch_first=True)[0], np.asarray(m(x)))
        m2 = model()  # Keras's own random weights (biases made nonzero) into fastrnn
        m2.set_weights([w + 0.1 if w.ndim == 1 else w for w in m2.get_weights()])
        q = interop.from_keras_weights(m2.get_weights(), bidirectional=bi, nonlinearity=nl)
        back = _max_err(np.asarray(m2(x)), fastrnn.predict_proba(q, x, batch_first=True)[0])
        errors[f"L={L} bi={bi} {nl}"] = [to, back]
    for L, bi, nl in [(1, False, "tanh"), (2, True, "relu")]:  # SimpleRNN(use_bias=False)
        def model():
            layers = [keras.Input((4, 5))]
            for _ in range(L):
                rnn = keras.layers.SimpleRNN(6, activation=nl, return_sequences=True, use_bias=False)
                layers.append(keras.layers.Bidirectional(rnn) if bi else rnn)
            layers.append(keras.layers.Dense(7, activation="softmax"))
            return keras.Sequential(layers)
        m = model()
        m.set_weights([w + 0.1 if w.ndim == 1 else w for w in m.get_weights()])  # the Dense bias only
        q = interop.from_keras_weights(m.get_weights(), bidirectional=bi, nonlinearity=nl, use_bias=False)
        back = _max_err(np.asarray(m(x)), fastrnn.predict_proba(q, x, batch_first=True)[0])
        m2 = model()
        m2.set_weights(interop.to_keras_weights(q, use_bias=False))
        to = _max_err(fastrnn.predict_proba(q, x, batch_first=True)[0], np.asarray(m2(x)))
        errors[f"L={L} bi={bi} {nl} use_bias=False"] = [to, back]
    assert "tensorflow" not in sys.modules
    print(json.dumps(errors))
    """
)


def test_keras_both_ways_on_jax():
    _need("keras", import_it=False)
    _need("jax")
    env = dict(os.environ, KERAS_BACKEND="jax")
    r = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, os.path.dirname(__file__)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    errors = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(errors) == len(CONFIGS) + 2
    print("\nKeras (to, from) errors:", errors)
    assert max(max(e) for e in errors.values()) < 1e-6, errors


def test_keras_weights_errors():
    with pytest.raises(ValueError, match="3 arrays"):
        interop.from_keras_weights([np.zeros((2, 3))] * 4)
    with pytest.raises(ValueError, match=r"2 arrays \(kernel, recurrent_kernel\)"):
        interop.from_keras_weights([np.zeros((2, 3))] * 5, use_bias=False)
    p = _params(1, False, "tanh")
    with pytest.raises(ValueError, match="use_bias=False: every cell's b must be zero"):
        interop.to_keras_weights(p, use_bias=False)


def test_keras_weights_without_bias():
    """use_bias=False: two arrays per cell each way, b = 0 coming in (no Keras needed)."""
    p = _params(2, True, "relu")
    layers, V, c, _ = interop.layers_of(p)
    zero = interop.make_params([[cell._replace(b=np.zeros_like(cell.b)) for cell in layer] for layer in layers],
                               V, c, "relu")
    w = interop.to_keras_weights(zero, use_bias=False)
    assert len(w) == 2 * 4 + 2 and [a.shape for a in w[:2]] == [p.layers[0][0].U.shape, p.layers[0][0].W.shape]
    q = interop.from_keras_weights(w, bidirectional=True, nonlinearity="relu", use_bias=False)
    for la, lb in zip(zero.layers, q.layers):
        for ca, cb in zip(la, lb):
            for a, b in zip(ca, cb):
                assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("L,bi,nl", CONFIGS)
def test_flax_both_ways(L, bi, nl):
    _need("flax")
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    act = jax.nn.relu if nl == "relu" else jnp.tanh

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            for l in range(L):
                fwd = nn.RNN(nn.SimpleCell(6, activation_fn=act, name=f"fwd{l}"))
                if bi:
                    bwd = nn.RNN(nn.SimpleCell(6, activation_fn=act, name=f"bwd{l}"), reverse=True, keep_order=True)
                    x = jnp.concatenate([fwd(x), bwd(x)], -1)
                else:
                    x = fwd(x)
            return jax.nn.softmax(nn.Dense(7, name="head")(x))

    def to_tree(p):
        layers, V, c, _ = interop.layers_of(p)
        tree = {"head": interop.to_flax_dense(V, c)}
        for l, layer in enumerate(layers):
            for k, cell in enumerate(layer):
                tree[f"{'bwd' if k else 'fwd'}{l}"] = interop.to_flax_cell(cell)
        return {"params": tree}

    x = np.random.default_rng(4).standard_normal((3, 4, 5)).astype(np.float32)  # Flax's RNN is batch-first
    p = _params(L, bi, nl)
    to = _max_err(fastrnn.predict_proba(p, x, batch_first=True)[0], Model().apply(to_tree(p), x))
    assert to < 1e-6
    variables = Model().init(jax.random.PRNGKey(L), x)
    variables = jax.tree_util.tree_map(lambda w: w + 0.1 if w.ndim == 1 else w, variables)
    tree = variables["params"]
    layers = [
        tuple(interop.from_flax_cell(tree[f"{'bwd' if k else 'fwd'}{l}"]) for k in range(2 if bi else 1))
        for l in range(L)
    ]
    q = interop.make_params(layers, *interop.from_flax_dense(tree["head"]), nl)
    back = _max_err(Model().apply(variables, x), fastrnn.predict_proba(q, x, batch_first=True)[0])
    assert back < 1e-6
