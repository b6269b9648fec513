"""One training step per implementation, configuration and dtype: fastrnn's backends
(with ``params_only=True``, the gradients a training step needs) and the peers
named in $FASTRNN_BENCH_PEERS, each checked against the reference before it is timed."""

import functools
import os

import numpy as np
import pytest

import fastrnn
from fastrnn.backends import BACKEND_ORDER
from fastrnn.bench import CONFIGS, QUICK, QUICK_ENV, make, peers_from_env, reference, step_benchmark

CONFIG_NAMES = list(QUICK if os.environ.get(QUICK_ENV, "") not in ("", "0") else CONFIGS)
IMPLEMENTATIONS = {f"fastrnn-{name}": name for name in BACKEND_ORDER}
IMPLEMENTATIONS.update(peers_from_env())


@functools.lru_cache(maxsize=None)
def data(config, dtype):
    """The configuration's (params, inputs, targets) and the reference's answer, made once."""
    args = make(config, dtype)
    return args, reference(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", CONFIG_NAMES)
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_step(benchmark, impl, config, dtype):
    target = IMPLEMENTATIONS[impl]
    if isinstance(target, str):  # one of fastrnn's backends
        if target not in fastrnn.backends():
            pytest.skip(f"backend {target!r} is unavailable here: {fastrnn.unavailable().get(target)}")
        if target == "numpy" and config == "large":
            pytest.skip("the numpy reference is not timed at the large size (seconds per step)")
        fn = functools.partial(fastrnn.loss_and_grads, backend=target, params_only=True)
    else:
        fn = target
    benchmark.group = f"{config}-{np.dtype(dtype).name}"
    benchmark.extra_info.update(config=dict(zip("T n d h v".split(), CONFIGS[config][:5])), token_ids=CONFIGS[config][5])
    args, expected = data(config, dtype)
    step_benchmark(benchmark, fn, *args, expected=expected)
