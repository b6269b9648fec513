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


def _trainer(dtype, comm, **kw):
    from fastrnn.data import Vocab

    text = "the quick brown fox jumps over the lazy dog; " * 20
    vocab = Vocab.from_text(text)
    model = fastrnn.CharRNN(vocab, 12, dtype=dtype, seed=5)
    return fastrnn.Trainer(model, vocab.encode(text), seq_len=8, batch=5, optimizer="adam", lr=3e-3,
                           clip_norm=1.0, comm=comm, **kw)


def train_equals_one_process(dtype):
    comm = dist.world()
    one = _trainer(dtype, None)
    many = _trainer(dtype, comm, sync_every=10)
    one.run(50, progress=False)
    many.run(50, progress=False)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    errs = [rel_err(many.history.loss, np.array(one.history.loss))]
    errs += [rel_err(a, b) for a, b in zip(many.model.params, one.model.params)]
    errs.append(rel_err(many.h, one.h))
    assert max(errs) <= tol, errs
    dist.check_in_sync(many.model.params, comm)  # bit-identical on every rank
    print(f"ok rank {comm.rank} max err {max(errs):.2e}")


def resume_is_bit_exact(folder):
    import os

    comm = dist.world()
    path = os.path.join(folder, "dp.npz")
    straight = _trainer(np.float64, comm)
    straight.run(20, progress=False)
    first = _trainer(np.float64, comm)
    first.run(10, progress=False, checkpoint=path)
    comm.Barrier()  # rank 0 wrote the file that every rank reads
    ids = first.train_ids
    again = fastrnn.Trainer.resume(path, ids, comm=comm)
    assert again.resplit_from is None and again.step_count == 10
    again.run(10, progress=False)
    for a, b in zip(again.model.params, straight.model.params):
        assert np.array_equal(a, b)
    assert np.array_equal(again.h, straight.h)
    assert again.history.loss == straight.history.loss
    if comm.rank == 0:  # one process continues the 2-rank checkpoint: the streams are re-split
        alone = fastrnn.Trainer.resume(path, ids)
        assert alone.resplit_from == comm.size
        alone.run(10, progress=False)
        assert max(rel_err(a, b) for a, b in zip(alone.model.params, straight.model.params)) <= 1e-12
    print(f"ok rank {comm.rank}")


def trainer_rank_fails(how):
    import os

    comm = dist.world()
    tr = _trainer(np.float64, comm)
    real = tr._loss_and_grads

    def broken(x, y, h0):
        if comm.rank == 1 and tr.step_count == 3:
            if how == "raise":
                raise ValueError("bad batch on purpose")
            if how == "crash":
                os._exit(3)
            loss, g, h = real(x, y, h0)
            return float("nan"), g, h
        return real(x, y, h0)

    tr._loss_and_grads = broken
    try:
        tr.run(10, progress=False)
    except dist.DistributedError as exc:
        assert how == "raise" and "rank 1: ValueError: bad batch on purpose" in str(exc), exc
    except fastrnn.TrainingDiverged as exc:
        assert how == "nan" and "step 4" in str(exc), exc
    else:
        raise AssertionError("training went on")
    assert tr.step_count == 3
    print(f"ok rank {comm.rank}")


CASES.update({
    "train_f64": lambda: train_equals_one_process(np.float64),
    "train_f32": lambda: train_equals_one_process(np.float32),
    "resume": lambda: resume_is_bit_exact(sys.argv[2]),
    "rank_raises": lambda: trainer_rank_fails("raise"),
    "rank_nan": lambda: trainer_rank_fails("nan"),
    "rank_crashes": lambda: trainer_rank_fails("crash"),
})

if __name__ == "__main__":
    CASES[sys.argv[1]]()
