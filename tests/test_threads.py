"""The thread policy (fastrnn._threads): what the kernels' BLAS is set to during
fastrnn's calls, that everything else is left as it was, and that results do not
depend on the thread count."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _threads

from cases import ALL_BACKENDS, OTHER_BACKENDS

threadpoolctl = pytest.importorskip("threadpoolctl")
seam = importlib.import_module("fastrnn.backends")  # the module; fastrnn.backends is also a function
_parallel = importlib.import_module("fastrnn.backends._parallel")

needs_blas = pytest.mark.skipif(_threads.blas_threads() is None, reason="SciPy's OpenBLAS exports were not found")


@pytest.fixture(autouse=True)
def _restore_setting():
    previous = fastrnn.set_num_threads("auto")
    yield
    fastrnn.set_num_threads(previous)


def _pools():
    """(library file, threads) of every BLAS/OpenMP pool in the process."""
    return sorted((os.path.basename(p["filepath"]), p["num_threads"]) for p in threadpoolctl.threadpool_info())


def _batch(T=20, n=64, d=64, h=128, v=64, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(d, h, v, dtype=dtype, seed=seed)
    x = rng.standard_normal((T, n, d)).astype(dtype)
    y = rng.integers(0, v, (T, n))
    h0 = (0.5 * rng.standard_normal((n, h))).astype(dtype)
    return params, x, y, h0


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-2, ValueError), ("two", ValueError), (1.5, TypeError),
                                      (True, TypeError), ([2], TypeError)])
def test_set_num_threads_rejects_bad_values(bad, err):
    with pytest.raises(err, match="threads must be a positive integer or 'auto'"):
        fastrnn.set_num_threads(bad)
    assert fastrnn.get_num_threads() == "auto"


def test_set_num_threads_returns_the_previous_setting():
    assert fastrnn.set_num_threads(3) == "auto"
    assert fastrnn.get_num_threads() == 3
    assert fastrnn.set_num_threads(None) == 3
    assert fastrnn.get_num_threads() == "auto"
    assert fastrnn.set_num_threads(np.int64(2)) == "auto"
    assert fastrnn.set_num_threads("AUTO") == 2


@needs_blas
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_every_kernel_runs_with_the_set_count_and_the_callers_count_comes_back(monkeypatch, backend, k):
    module = seam.resolve(backend).module
    seen = {}
    for kernel in ("loss_and_grads", "forward", "backward", "probs"):
        real = getattr(module, kernel)

        def spy(*args, _real=real, _name=kernel):
            seen[_name] = _threads.blas_threads()
            return _real(*args)

        monkeypatch.setattr(module, kernel, spy)
    monkeypatch.setattr(seam, "_scoped", {})  # rebuild the seam around the spies
    params, x, y, h0 = _batch(T=3, n=2, d=4, h=5, v=3)
    before = _pools()
    fastrnn.set_num_threads(k)
    fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
    H = fastrnn.rnn_forward(x, params.U, params.W, params.b, h0, backend=backend)
    fastrnn.rnn_backward(np.ones_like(H), H, x, params.U, params.W, h0, backend=backend)
    fastrnn.predict_proba(params, x, h0=h0, backend=backend)
    assert seen == dict.fromkeys(("loss_and_grads", "forward", "backward", "probs"), k)
    assert _pools() == before


@needs_blas
def test_numpy_and_torch_pools_and_the_callers_limits_are_left_alone():
    params, x, y, h0 = _batch(T=3, n=2, d=4, h=5, v=3)
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    for k in (1, 2, "auto"):
        fastrnn.set_num_threads(k)
        before = _pools()
        for backend in ALL_BACKENDS:
            fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
        assert _pools() == before
    # A caller who limited every BLAS to one thread keeps that limit, inside our calls too (auto).
    fastrnn.set_num_threads("auto")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        limited = _pools()
        assert _threads.call(_threads.blas_threads) == 1
        fastrnn.loss_and_grads(params, x, y, h0=h0)
        assert _pools() == limited
    if torch is not None:
        assert torch.get_num_threads() == torch_threads


@needs_blas
def test_a_failing_kernel_still_puts_the_count_back():
    fastrnn.set_num_threads(1)
    before = _threads.blas_threads()

    def boom():
        assert _threads.blas_threads() == 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _threads.call(boom)
    assert _threads.blas_threads() == before


def test_using_overrides_the_global_setting_for_this_thread_only():
    fastrnn.set_num_threads(2)
    with _threads.using(1):
        assert _threads.current() == 1
        with _threads.using(None):
            assert _threads.current() == 2
        assert _threads.current() == 1
    assert _threads.current() == 2


@pytest.mark.parametrize(
    "others, ncpu, expected",
    [(0.0, 2, 2), (0.4, 2, 2), (0.6, 2, 1), (1.0, 2, 1), (2.0, 2, 1), (7.0, 2, 1),
     (0.0, 8, 8), (1.0, 8, 7), (3.2, 8, 5), (20.0, 8, 1), (0.0, 1, 1)],
)
def test_auto_leaves_a_core_to_each_busy_one(monkeypatch, others, ncpu, expected):
    monkeypatch.setattr(_threads, "NCPU", ncpu)
    assert _threads._threads_for(others) == expected


def test_auto_measures_other_processes_cpu_time(monkeypatch):
    """Auto's decision from /proc/stat deltas minus our own CPU time."""
    monkeypatch.setattr(_threads, "NCPU", 2)
    clock = {"busy": 100.0, "own": 10.0, "running": 1}
    monkeypatch.setattr(_threads, "_read_stat", lambda: (clock["busy"], clock["running"]))
    monkeypatch.setattr(_threads, "_own_cpu", lambda: clock["own"])
    monkeypatch.setattr(_threads, "_last", None)
    _threads._resample(0.0)  # first look: nobody else runnable
    assert _threads._auto == 2
    clock.update(busy=100.0 + 2 * 0.2, own=10.0 + 0.2)  # we used one core, someone else the other
    _threads._resample(0.2)
    assert _threads._auto == 1
    clock.update(busy=clock["busy"] + 0.4, own=clock["own"] + 0.38)  # only us now (two threads)
    _threads._resample(0.4)
    assert _threads._auto == 2
    monkeypatch.setattr(_threads, "_last", None)
    clock["running"] = 3  # first look while two others are runnable
    _threads._resample(1.0)
    assert _threads._auto == 1


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_auto_reads_this_machine():
    assert _threads._read_stat()[0] > 0
    assert 1 <= _threads.current() <= _threads.NCPU


def _run(code, **env):
    env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_environment_variable_sets_the_default_and_threadpoolctl_is_not_imported():
    out = _run("import sys, fastrnn; print(fastrnn.get_num_threads(), 'threadpoolctl' in sys.modules)",
               FASTRNN_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "False"]
    bad = _run("import fastrnn; fastrnn.get_num_threads()", FASTRNN_NUM_THREADS="many")
    assert "$FASTRNN_NUM_THREADS must be a positive integer or 'auto', got 'many'" in bad.stderr


@needs_blas
def test_trainer_threads(monkeypatch):
    vocab = fastrnn.Vocab.from_text("abcdefgh" * 20)
    model = fastrnn.CharRNN(vocab, 8, seed=0)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        fastrnn.Trainer(model, vocab.encode("abcdefgh" * 20), seq_len=5, batch=2, threads=0)
    trainer = fastrnn.Trainer(model, vocab.encode("abcdefgh" * 20), seq_len=5, batch=2, threads=1)
    seen = []
    real = fastrnn.api._step_loss_and_grads

    def spy(*args, **kwargs):
        seen.append(_threads.current())
        return real(*args, **kwargs)

    monkeypatch.setattr(fastrnn.api, "_step_loss_and_grads", spy)
    fastrnn.set_num_threads(2)
    trainer.run(3, progress=False)
    assert seen == [1, 1, 1]
    assert _threads.current() == 2


def _blas_rounds_alike(backend, dtype, m=64, k=160, n=160):
    """Whether the BLAS behind ``backend`` gives one (m, k) x (k, n) product bit for
    bit with one thread and with two. OpenBLAS divides a product's rows and columns
    between its threads, never the inner sum, but some of its kernels round an
    element differently by the width of the block it falls in: OpenBLAS 0.3.31's
    sgemm on AMD Zen (its Haswell kernels) does, its dgemm does not."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(dtype) for shape in ((m, k), (k, n)))
    if backend == "numpy":
        product = np.dot
    else:  # the fast backends' products run on SciPy's OpenBLAS
        from scipy.linalg import blas

        gemm = blas.sgemm if dtype == np.float32 else blas.dgemm
        product = lambda p, q: gemm(1.0, p, q)  # noqa: E731
    out = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            out.append([product(a, b), product(np.ascontiguousarray(b.T), np.ascontiguousarray(a.T))])
    return all(np.array_equal(p, q) for p, q in zip(*out))  # both orientations of the product


@needs_blas
@pytest.mark.parametrize("T", [2, 12])  # one block, BLAS threads in each product; two row blocks (_parallel)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_results_are_bit_identical_for_one_and_two_threads(backend, dtype, T):
    """Big enough that OpenBLAS splits every product between the threads it has.

    Bit for bit wherever the BLAS itself is; where its products round by the
    threads' blocks (:func:`_blas_rounds_alike`), a split step (T = 12, every
    block's BLAS on one thread) still is, and the rest agrees to rounding."""
    from cases import rel_err

    assert _parallel.blocks(T, 64, 96, 160, 80, ncpu=2) == (1 if T == 2 else 2)
    params, x, y, h0 = _batch(T=T, n=64, d=96, h=160, v=80, dtype=dtype, seed=3)
    results = []
    for k in (1, 2):
        fastrnn.set_num_threads(k)
        # numpy's own BLAS (the reference backend's) is not fastrnn's to set: threadpoolctl does it here
        with threadpoolctl.threadpool_limits(limits=k, user_api="blas"):
            loss, g, h_last = fastrnn.loss_and_grads(params, x, y, h0=h0, backend=backend)
            P, _ = fastrnn.predict_proba(params, x, h0=h0, backend=backend)
        results.append([np.float64(loss), *g, h_last, P])
    exact = _blas_rounds_alike(backend, dtype)
    split = T == 12 and backend != "numpy"
    for i, (a, b) in enumerate(zip(*results)):
        if a is None:
            continue
        if exact or (split and i < len(results[0]) - 1):  # predict_proba is never split
            assert np.array_equal(a, b), (backend, i)
        else:
            assert rel_err(a, b) < (1e-5 if dtype == np.float32 else 1e-13), (backend, i)


def test_cli_threads_argument(tmp_path):
    from fastrnn.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--threads", "3"]).threads == 3
    assert parser.parse_args(["train", "--threads", "auto"]).threads == "auto"
    assert parser.parse_args(["sample", "m.npz", "--threads", "1"]).threads == 1
    out = subprocess.run([sys.executable, "-m", "fastrnn", "train", "--threads", "0"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert "--threads must be a positive integer or 'auto', got '0'" in out.stderr


def test_cli_says_once_that_numba_compiles(capsys, monkeypatch):
    numba = pytest.importorskip("numba")
    from numba.core import event

    from fastrnn import cli

    if cli._notice is not None:  # registered by an earlier in-process run: a fresh one for this test
        monkeypatch.setattr(cli._notice, "said", True)
        monkeypatch.setattr(cli, "_notice", None)
    listener = cli._say_when_compiling()
    try:
        assert cli._say_when_compiling() is listener  # one per process
        numba.njit(lambda a: a + 1)(1)
        numba.njit(lambda a: a + 2)(1)
    finally:
        event.unregister("numba:compile", listener)
    assert capsys.readouterr().out.count("fastrnn: compiling the Numba kernels") == 1


# -- a large step split over the cores by blocks of rows (backends/_parallel) --------


def test_which_steps_are_split():
    # medium (T, n, d, h, v) = (100, 64, 256, 256, 256), small, char32 split on 2 cores; char and large do not
    assert _parallel.blocks(100, 64, 256, 256, 256, ncpu=2) == 2
    assert _parallel.blocks(100, 128, 512, 1024, 512, ncpu=2) == 1  # large: 26G multiply-adds
    assert _parallel.blocks(100, 64, 512, 512, 512, ncpu=2) == 2  # 5G
    assert _parallel.blocks(100, 128, 256, 256, 256, ncpu=16) == 8  # 16 rows per block at least
    assert _parallel.blocks(50, 32, 64, 128, 64, ncpu=2) == 2
    assert _parallel.blocks(25, 32, 0, 100, 65, ncpu=2) == 2
    assert _parallel.blocks(25, 1, 0, 100, 65, ncpu=2) == 1  # char: one sequence
    assert _parallel.blocks(25, 32, 0, 40, 65, ncpu=2) == 1  # too little work: 4.2M multiply-adds
    assert _parallel.blocks(100, 64, 256, 256, 256, ncpu=1) == 1
    assert _parallel.blocks(1000, 24, 256, 256, 256, ncpu=2) == 1  # too few rows to halve


@pytest.mark.parametrize("ids", [False, True])
@pytest.mark.parametrize("params_only", [False, True])
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_split_steps_agree_with_the_reference_and_with_any_thread_count(monkeypatch, backend, params_only, ids):
    from cases import rel_err

    monkeypatch.setattr(_parallel, "SPLIT_ABOVE", 0)
    monkeypatch.setattr(_parallel, "MIN_ROWS", 2)
    monkeypatch.setattr(_threads, "NCPU", 3)  # 7 rows -> blocks of 2, 2 and 3 rows
    params, x, y, h0 = _batch(T=5, n=7, d=6, h=9, v=4, seed=4)
    if ids:
        x = np.random.default_rng(1).integers(0, 6, (5, 7))
    assert _parallel.blocks(5, 7, 0 if ids else 6, 9, 4) == 3
    want = fastrnn.loss_and_grads(params, x, y, h0=h0, params_only=params_only, backend="numpy")
    runs = []
    for k in (1, 2, 3):
        fastrnn.set_num_threads(k)
        runs.append(fastrnn.loss_and_grads(params, x, y, h0=h0, params_only=params_only, backend=backend))
    loss, g, h_last = runs[0]
    assert abs(loss - want[0]) <= 1e-12 * abs(want[0])
    for a, e in zip(g, want[1]):
        assert (a is None) == (e is None)
        if a is not None:
            assert rel_err(a, e) < 1e-12
    assert rel_err(h_last, want[2]) < 1e-12
    for other in runs[1:]:
        assert other[0] == loss and np.array_equal(other[2], h_last)
        for a, e in zip(other[1], g):
            assert (a is None and e is None) or np.array_equal(a, e)


@needs_blas
def test_auto_keeps_every_core_for_split_steps_on_a_busy_machine(monkeypatch):
    monkeypatch.setattr(_threads, "NCPU", 2)
    monkeypatch.setattr(_threads, "_auto", 1)  # other processes keep a core busy
    monkeypatch.setattr(_threads, "_next", float("inf"))
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert _threads.current() == 1  # BLAS pools spin: one thread
        assert _threads.cores() == 2  # split blocks wait without spinning: both cores
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert _threads.cores() == 1  # the caller's limit
    fastrnn.set_num_threads(3)
    assert _threads.cores() == 3 and _threads.current() == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_can_split_steps(monkeypatch):
    """The pool's threads are not copied into a forked child: it must start its own, not hang."""
    monkeypatch.setattr(_parallel, "SPLIT_ABOVE", 0)
    monkeypatch.setattr(_threads, "NCPU", 2)
    fastrnn.set_num_threads(2)
    params, x, y, h0 = _batch(T=4, n=4, d=3, h=5, v=3)
    monkeypatch.setattr(_parallel, "MIN_ROWS", 2)
    want = fastrnn.loss_and_grads(params, x, y, h0=h0)[0]  # the parent's pool now exists
    assert _parallel._pool is not None
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the split step finishes and agrees
        code = 1
        try:
            code = 0 if fastrnn.loss_and_grads(params, x, y, h0=h0)[0] == want else 1
        finally:
            os._exit(code)
    deadline = __import__("time").monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if __import__("time").monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on a split step")
        __import__("time").sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# -- the general model (DeepParams, lengths, relu) under the same policy and split -----


def test_which_general_steps_are_split():
    def blocks(T, n, d, h, v, L=1, D=1, ids=False):
        cells = [(np.empty((d if l == 0 else D * h, h)), np.empty((h, h)), None) for l in range(L) for _ in range(D)]
        return _parallel.deep_blocks(T, n, cells, D, v, ids, ncpu=2)

    # one cell: the same as the plain step, lengths or not (char32 with lengths splits as padded)
    assert blocks(25, 32, 65, 100, 65, ids=True) == _parallel.blocks(25, 32, 0, 100, 65, ncpu=2) == 2
    assert blocks(25, 32, 65, 40, 65, ids=True) == 1  # 4.2M multiply-adds
    assert blocks(25, 1, 65, 100, 65, ids=True) == 1  # char: one sequence
    assert blocks(50, 32, 64, 128, 64, L=2) == 2
    # the second layer's input is dense even when the first reads token ids: 1600 + 3200 + 2600 per row, 5.9M
    assert blocks(25, 32, 65, 40, 65, L=2, ids=True) == 1
    # a stack of bidirectional layers: never split, the two directions take a core each (12.3M here)
    assert blocks(25, 32, 65, 40, 65, L=2, D=2, ids=True) == 1
    # one bidirectional layer: split as one direction is, each block runs both directions
    assert blocks(50, 32, 64, 128, 64, D=2) == 2
    assert blocks(25, 32, 65, 100, 65, D=2, ids=True) == 2
    # both directions of the first layer read token ids (no X U): 6.6M, under the 2^23 = 8.4M
    # (counting the reversed cell's X U, 9.2M, would split it); dense inputs: 11.8M
    assert blocks(25, 32, 65, 50, 65, D=2, ids=True) == 1
    assert blocks(25, 32, 65, 50, 65, D=2) == 2
    assert blocks(100, 128, 512, 1024, 512) == 1  # large: the BLAS's own threads


def _leaves(tree):
    """Every array (or None) of a Grads / DeepGrads, in order."""
    if tree is None or isinstance(tree, np.ndarray):
        return [tree]
    return [leaf for sub in tree for leaf in _leaves(sub)]


def _deep_batch(L, bidirectional, relu, ids, T=6, n=7, d=5, h=4, v=3, seed=5):
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    params = fastrnn.init_params(d, h, v, num_layers=L, bidirectional=bidirectional,
                                 nonlinearity="relu" if relu else "tanh", seed=seed, dtype=np.float64)
    x = rng.integers(0, d, (T, n)) if ids else rng.standard_normal((T, n, d))
    y = rng.integers(0, v, (T, n))
    y[1, 2] = -100  # an ignored target inside a sequence
    lengths = np.array([3, 6, 1, 4, 3, 2, 5])  # unsorted, ties; the block of every third has max length < T
    h0 = 0.5 * rng.standard_normal((L * D, n, h))
    return params, x, y, (h0 if isinstance(params, fastrnn.DeepParams) else h0[0]), lengths


@pytest.mark.parametrize("L, bidirectional, relu", [(1, False, False), (2, False, True), (2, True, False),
                                                    (1, True, True)])
@pytest.mark.parametrize("ids", [False, True])
@pytest.mark.parametrize("params_only", [False, True])
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_general_steps_split_or_side_by_side_agree_with_the_reference_and_any_thread_count(
        monkeypatch, backend, params_only, ids, L, bidirectional, relu):
    from cases import rel_err

    monkeypatch.setattr(_parallel, "SPLIT_ABOVE", 0)
    monkeypatch.setattr(_parallel, "MIN_ROWS", 2)
    monkeypatch.setattr(_threads, "NCPU", 3)  # 7 sequences -> 3 blocks of every third by length
    params, x, y, h0, lengths = _deep_batch(L, bidirectional, relu, ids)
    calls, both = [], []
    real = _parallel._run_blocks
    monkeypatch.setattr(_parallel, "_run_blocks", lambda block, B: calls.append(B) or real(block, B))
    packed = importlib.import_module("fastrnn.backends._packed")
    real_both = packed._both
    monkeypatch.setattr(packed, "_both", lambda *a: both.append(1) or real_both(*a))
    kw = dict(h0=h0, lengths=lengths, params_only=params_only)
    want = fastrnn.loss_and_grads(params, x, y, backend="numpy", **kw)
    runs = []
    for k in (1, 2, 3):
        fastrnn.set_num_threads(k)
        runs.append(fastrnn.loss_and_grads(params, x, y, backend=backend, **kw))
    if bidirectional and L > 1:  # never split: the two directions side by side (and the head's two halves)
        assert calls == [] and len(both) == 2 * (2 * L + 1)  # threads 2 and 3; 1 runs them in turn
    else:  # the step was split; a block runs its directions in turn
        assert calls == [3, 3, 3] and both == []
    flat = lambda r: [np.float64(r[0]), *_leaves(r[1]), r[2]]  # noqa: E731
    got, expected = flat(runs[0]), flat(want)
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        assert (a is None) == (e is None)
        if a is not None:
            assert rel_err(a, e) < 1e-12
    for other in runs[1:]:
        for a, e in zip(flat(other), got):
            assert (a is None and e is None) or np.array_equal(a, e)


@needs_blas
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_general_calls_run_under_the_thread_policy(monkeypatch, backend):
    """lengths=, DeepParams and predict_proba's general path set the BLAS as the plain step does."""
    params, x, y, h0, lengths = _deep_batch(2, True, False, False)
    seen = []
    real_set = _threads._blas_set
    monkeypatch.setattr(_threads, "_blas_set", lambda k: seen.append(k) or real_set(k))
    both = []
    packed = importlib.import_module("fastrnn.backends._packed")
    real_both = packed._both
    monkeypatch.setattr(packed, "_both", lambda *a: both.append(1) or real_both(*a))
    fastrnn.set_num_threads(1)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend)
        assert seen == [1, 2] and both == []  # one thread: the two directions one after the other
        fastrnn.predict_proba(params, x, h0=h0, lengths=lengths, backend=backend)
        assert seen == [1, 2, 1, 2]
        assert _threads.blas_threads() == 2
        fastrnn.set_num_threads(2)
        fastrnn.loss_and_grads(params, x, y, h0=h0, lengths=lengths, backend=backend)
        # side by side, every product on one BLAS thread: two layers forward, the head's halves, two backward
        assert seen == [1, 2] * 3 and len(both) == 2 + 1 + 2


@needs_blas
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_packed_stack_runs_under_the_thread_policy(monkeypatch, backend):
    """fastrnn.packed (and the torch bridge on it) set the BLAS as the other calls do."""
    from fastrnn.packed import packed_backward, packed_forward

    params, x, _, h0, _ = _deep_batch(1, True, False, False)
    data = x.reshape(-1, x.shape[2])  # equal lengths: the time-major rows are the packed rows
    batch_sizes = np.full(x.shape[0], x.shape[1])
    seen = []
    real_set = _threads._blas_set
    monkeypatch.setattr(_threads, "_blas_set", lambda k: seen.append(k) or real_set(k))
    both = []
    packed = importlib.import_module("fastrnn.backends._packed")
    real_both = packed._both
    monkeypatch.setattr(packed, "_both", lambda *a: both.append(1) or real_both(*a))
    fastrnn.set_num_threads(1)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        out, h_last, tape = packed_forward(data, batch_sizes, params.layers, h0, backend=backend)
        packed_backward(tape, np.ones_like(out))
        assert seen == [1, 2] * 4 and both == []  # two directions, forward and backward, in turn
        fastrnn.set_num_threads(2)
        out2, _, tape = packed_forward(data, batch_sizes, params.layers, h0, backend=backend)
        packed_backward(tape, np.ones_like(out))
        assert len(both) == 2 and np.array_equal(out, out2)
