"""The step benchmark, installed with fastrnn: time one training step (the loss and
every parameter gradient) of each backend, and of your own implementations, on
your machine, with pytest-benchmark.

    pip install "fastrnn[bench]"
    fastrnn bench --quick                          # char, char32, small; float32 and float64
    fastrnn bench --peer mymodule:my_loss_and_grads --benchmark-save=mine
    fastrnn bench --benchmark-compare              # against the last saved run
    pytest --pyargs fastrnn.bench --benchmark-only  # the same, from pytest itself

A *peer* is any function with :func:`fastrnn.loss_and_grads`' signature, as
:func:`fastrnn.gradcheck` takes with ``grad_fn=``: ``fn(params, inputs, targets)``
returning ``(loss, grads, h_last)`` with ``grads.U, .W, .V, .b, .c``. Name peers
as ``module:function`` or ``path/to/file.py:function`` in ``--peer`` or, for
plain pytest, in ``$FASTRNN_BENCH_PEERS`` (comma-separated). Every implementation,
fastrnn's backends included, is first checked against the numpy reference on the
benchmark's own data, and only then timed; one that disagrees fails its test
instead of being timed. ``FASTRNN_BENCH_QUICK=1`` keeps the quick configurations.

To time a peer from your own pytest file instead::

    from fastrnn.bench import make, step_benchmark

    def test_mine(benchmark):
        step_benchmark(benchmark, my_loss_and_grads, *make("small"))
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = ["CONFIGS", "QUICK", "make", "load_peer", "peers_from_env", "reference", "check_against_reference", "step_benchmark"]

#: name -> (T, n, d, h, v, token_ids): sequence length, batch, input, hidden and output sizes.
CONFIGS = {
    "char": (25, 1, 65, 100, 65, True),  # min-char-rnn's shape
    "char32": (25, 32, 65, 100, 65, True),
    "small": (50, 32, 64, 128, 64, False),
    "medium": (100, 64, 256, 256, 256, False),
    "large": (100, 128, 512, 1024, 512, False),
}
QUICK = ("char", "char32", "small")

#: Agreement with the reference required before timing: max |got − ref| / max |ref| per tensor.
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

PEERS_ENV = "FASTRNN_BENCH_PEERS"
QUICK_ENV = "FASTRNN_BENCH_QUICK"


def make(name, dtype=np.float32, seed=0):
    """(params, inputs, targets) for a configuration: token ids (T, n) or dense (T, n, d) inputs."""
    import fastrnn

    T, n, d, h, v, ids = CONFIGS[name]
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(d, h, v, dtype=dtype, seed=seed)
    inputs = rng.integers(0, d, (T, n)) if ids else rng.standard_normal((T, n, d)).astype(dtype)
    return params, inputs, rng.integers(0, v, (T, n))


def load_peer(spec):
    """The function named by ``module:function`` or ``path/to/file.py:function``."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"a peer is named as module:function or file.py:function, got {spec!r}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"peer {spec!r}: {where}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        fn = getattr(module, name)
    except AttributeError:
        raise ValueError(f"peer {spec!r}: {where} has no {name!r}") from None
    if not callable(fn):
        raise ValueError(f"peer {spec!r} is not callable")
    return fn


def peers_from_env():
    """label -> function for each peer named in $FASTRNN_BENCH_PEERS."""
    specs = [s.strip() for s in os.environ.get(PEERS_ENV, "").split(",") if s.strip()]
    return {spec.rpartition(":")[2]: load_peer(spec) for spec in specs}


def reference(params, inputs, targets):
    """(loss, grads) of the numpy reference backend, at the parameters' dtype."""
    import fastrnn

    loss, grads, _ = fastrnn.loss_and_grads(params, inputs, targets, backend="numpy")
    return loss, grads


def check_against_reference(fn, params, inputs, targets, expected=None):
    """Run ``fn`` once and compare its loss and U, W, V, b, c gradients with the numpy
    reference's at the same dtype (``expected``, from :func:`reference`, if already
    computed); raise AssertionError naming the first that disagrees."""
    tol = TOLERANCE[np.dtype(params.U.dtype)]
    ref_loss, ref = expected if expected is not None else reference(params, inputs, targets)
    loss, grads, _ = fn(params, inputs, targets)
    loss = float(loss)
    if not abs(loss - ref_loss) <= tol * abs(ref_loss):
        raise AssertionError(f"loss {loss!r} differs from the reference's {ref_loss!r} (tolerance {tol:.0e})")
    for name in ("U", "W", "V", "b", "c"):
        got, want = np.asarray(getattr(grads, name)), getattr(ref, name)
        if got.shape != want.shape:
            raise AssertionError(f"d{name} has shape {got.shape}, the reference's is {want.shape}")
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), np.finfo(np.float64).tiny))
        if not err <= tol:
            raise AssertionError(f"d{name} differs from the reference by {err:.2e} relative (tolerance {tol:.0e})")


def step_benchmark(benchmark, fn, params, inputs, targets, rounds=5, expected=None):
    """Check ``fn`` against the reference, then time ``fn(params, inputs, targets)``
    with pytest-benchmark (one untimed warm-up call, ``rounds`` timed ones)."""
    check_against_reference(fn, params, inputs, targets, expected)
    return benchmark.pedantic(fn, args=(params, inputs, targets), rounds=rounds, iterations=1, warmup_rounds=1)
