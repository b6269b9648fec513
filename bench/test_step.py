"""One training step (loss and every gradient) per backend and configuration.

    pytest bench/ --benchmark-only            # everything
    pytest bench/ --benchmark-only --quick    # char, char32, small

The JIT is warmed outside the timed region, and each benchmark checks that the
result it timed matches the reference backend.
"""

import numpy as np
import pytest

import fastrnn
from configs import CONFIGS, make

BACKENDS = [b for b in ("numba", "c", "numpy") if b in fastrnn.backends()]
TOL = {np.float32: 1e-4, np.float64: 1e-10}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_step(benchmark, backend, config, dtype):
    if backend == "numpy" and config == "large":
        pytest.skip("the reference is not timed at the large size")
    params, x, y = make(config, dtype)
    benchmark.group = f"{config}-{np.dtype(dtype).name}"
    loss, grads, _ = benchmark.pedantic(
        fastrnn.loss_and_grads, args=(params, x, y), kwargs={"backend": backend, "params_only": True},
        rounds=5, iterations=1, warmup_rounds=1,
    )
    ref_loss, ref, _ = fastrnn.loss_and_grads(params, x, y, backend="numpy")
    assert loss == pytest.approx(ref_loss, rel=TOL[dtype])
    for g, r in zip(grads[:5], ref[:5]):
        assert np.abs(g - r).max() <= TOL[dtype] * np.abs(r).max()
