"""float32 gradients summed over many rows stay accurate.

db, dc, and dU for token ids are sums over all T·n rows. Added one row at a
time in float32, their error grows with the row count (1.6e-4 relative at 8.4M
rows); the kernels accumulate them in float64. Here 2^18 rows with a biased
mean (so the sums do not cancel) and few columns keep the test cheap; the
float32 results are compared with the reference backend run in float64 on the
same float32 numbers.
"""

import numpy as np
import pytest

from cases import rel_err
from fastrnn.backends import resolve

T, N, D, H, V = 1024, 256, 3, 8, 4  # 2^18 rows


def _problem(ids):
    rng = np.random.default_rng(7)
    U = rng.standard_normal((D, H)) * 0.5
    W = rng.standard_normal((H, H)) * 0.2
    Vm = rng.standard_normal((H, V))
    b = 0.5 + 0.1 * rng.standard_normal(H)  # H_t keeps one sign per column: dA does not cancel
    c = 0.1 * rng.standard_normal(V)
    inputs = rng.integers(0, D, size=(T, N)) if ids else rng.standard_normal((T, N, D))
    targets = np.zeros((T, N), dtype=np.int64)  # dO keeps one sign per column: dc does not cancel
    h0 = 0.1 * rng.standard_normal((N, H))
    arrays = [a.astype(np.float32) for a in (U, W, Vm, b, c)]
    inputs = inputs if ids else inputs.astype(np.float32)
    return arrays, inputs, targets, h0.astype(np.float32)


@pytest.mark.parametrize("params_only", [False, True], ids=["full", "params_only"])
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_row_sums_in_float32(fast_backend, ids, params_only):
    (U, W, Vm, b, c), inputs, targets, h0 = _problem(ids)
    f64 = lambda a: a.astype(np.float64) if a.dtype.kind == "f" else a  # noqa: E731
    want = resolve("numpy").loss_and_grads(*map(f64, (U, W, Vm, b, c, inputs)), targets, f64(h0), 1.0)
    got = resolve(fast_backend).loss_and_grads(U, W, Vm, b, c, inputs, targets, h0, 1.0, params_only)
    names = ("dU", "dW", "dV", "db", "dc")
    errors = {k: rel_err(g, w) for k, g, w in zip(names, got[1:6], want[1:6])}
    assert max(errors.values()) <= 1e-5, errors
