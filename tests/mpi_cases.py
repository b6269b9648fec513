"""Run by tests/test_distributed.py under ``mpiexec -n K python mpi_cases.py CASE``.

Each case prints one line per rank starting with ``ok`` or raises. Kept apart
from the test module because every rank runs it as a script.
"""

import sys

import numpy as np

import fastrnn
from fastrnn import distributed as dist


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


def reduce_equals_one_process(dtype):
    comm = dist.world()
    T, N, d, h, v = 7, 5, 6, 9, 6  # 5 streams over K ranks: unequal slices for K = 2
    params = fastrnn.init_params(d, h, v, dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, d, (T, N)), rng.integers(0, v, (T, N))
    h0 = rng.standard_normal((N, h)).astype(dtype)
    loss1, g1, _ = fastrnn.loss_and_grads(params, x, y, h0=h0, params_only=True)
    part = dist.split_streams(N, comm.size, comm.rank)
    n_r = part.stop - part.start
    loss, g, _ = fastrnn.loss_and_grads(params, x[:, part], y[:, part], h0=h0[part], params_only=True)
    total = dist.Reducer(comm, weight=n_r / N).reduce(g, loss)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    errs = [rel_err(total, loss1)] + [rel_err(getattr(g, k), getattr(g1, k)) for k in "UWVbc"]
    assert max(errs) <= tol, errs
    assert g.U.dtype == dtype
    print(f"ok rank {comm.rank} max err {max(errs):.2e}")


def failing_rank():
    comm = dist.world()
    params = fastrnn.init_params(3, 4, 3, seed=0)
    reducer = dist.Reducer(comm, weight=0.5)
    try:
        if comm.rank == 1:
            try:
                fastrnn.loss_and_grads(params, np.array([[7]]), np.array([[0]]))  # id 7 out of range
            except ValueError as exc:
                reducer.fail(exc, like=params)
        else:
            _, g, _ = fastrnn.loss_and_grads(params, np.array([[1]]), np.array([[0]]))
            reducer.reduce(g, 1.0)
    except dist.DistributedError as exc:
        assert "rank 1: ValueError" in str(exc), exc
        print(f"ok rank {comm.rank}: {exc}")
        return
    raise AssertionError("no DistributedError")


def out_of_sync():
    comm = dist.world()
    params = fastrnn.init_params(3, 4, 3, seed=comm.rank)  # different weights per rank
    dist.check_in_sync(fastrnn.init_params(3, 4, 3, seed=0), comm, step=0)  # same: passes
    try:
        dist.check_in_sync(params, comm, step=7)
    except dist.DistributedError as exc:
        assert "differ at step 7" in str(exc), exc
        print(f"ok rank {comm.rank}")
        return
    raise AssertionError("no DistributedError")


CASES = {
    "reduce_f64": lambda: reduce_equals_one_process(np.float64),
    "reduce_f32": lambda: reduce_equals_one_process(np.float32),
    "failing_rank": failing_rank,
    "out_of_sync": out_of_sync,
}

if __name__ == "__main__":
    CASES[sys.argv[1]]()
