"""Every core for one training step: the batch split into blocks of rows.

The n sequences of a batch do not interact until the parameter gradients sum
over them, so a step over n rows is the sum of steps over blocks of rows (the
loss and dU, dW, dV, db, dc add up; dh0, h_last, dX and dA are the blocks'
rows side by side). A large step runs one block per core, each on its own
thread with the BLAS set to one thread: the whole step of a block (its input
projection, the time loop with its per-timestep product and fused tanh, the
softmax, the backward loop) stays on one core, so the elementwise passes use
every core and the per-timestep products need no hand-over between threads at
every timestep. The threads wait on a queue, not in a spin loop, so on a
busy machine a split step takes its share of the cores instead of stalling:
auto (see :mod:`fastrnn._threads`) uses every core for the blocks, busy or not.

How many blocks a step has depends only on its sizes and on the number of
cores the process may use, never on the thread setting: with fewer threads
than blocks a thread runs blocks in turn, and the sums are taken in block
order. Results are therefore bit-identical for any thread count.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _threads

#: Steps with fewer multiply-adds than this (T·n·(d·h + h·h + h·v), d = 0 for
#: token ids) run as one block: below it, handing a block to another thread
#: (tens of µs) and the extra sums cost more than a second core gains. char32
#: (13M) is above it. Measured on the 2-core machine (thread CPU time, median
#: of 30): the step's thread in a 2-block split spent 0.61 (char32), 0.54
#: (small, medium) of the CPU time of the unsplit step on one thread.
SPLIT_ABOVE = 1 << 23
#: From this many multiply-adds on (large: 26G) the products dominate, OpenBLAS's
#: own threads divide them as well, and the blocks' input copies and extra sums
#: cost more than the elementwise passes gain: one block. Measured quiet, 2
#: cores, 2-block split ÷ one block with 2 BLAS threads: char32 0.80, small
#: 0.74 (f64 0.58), medium 0.92 (f64 0.84), large 1.06 (f64 1.01).
SPLIT_BELOW = 1 << 33
#: Fewest rows of the batch per block: thinner per-timestep products run below BLAS speed.
MIN_ROWS = 16

_pool = None
_pool_lock = threading.Lock()


def blocks(T, n, d, h, v, ncpu=None):
    """Number of row blocks for a step of these sizes (1: no split)."""
    ncpu = _threads.NCPU if ncpu is None else ncpu
    work = T * n * (d * h + h * h + h * v)
    if ncpu < 2 or not SPLIT_ABOVE <= work < SPLIT_BELOW:
        return 1
    return max(1, min(ncpu, n // MIN_ROWS))


def _forget_pool():
    """In a forked child the pool's threads do not exist: start a new pool on first use."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor():
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max(1, _threads.NCPU - 1), thread_name_prefix="fastrnn")
    return _pool


def loss_and_grads(kernel, U, W, V, b, c, inputs, targets, h0, scale, params_only=False):
    """``kernel``'s loss_and_grads (the backend interface), split into row blocks
    when the step is large, under the thread policy either way."""
    T, n = targets.shape
    d, h = U.shape
    v = V.shape[1]
    B = blocks(T, n, d if inputs.dtype.kind == "f" else 0, h, v)
    if B == 1:
        return _threads.call(kernel, U, W, V, b, c, inputs, targets, h0, scale, params_only)
    edges = [n * i // B for i in range(B + 1)]

    def block(i):
        rows = slice(edges[i], edges[i + 1])
        x, y, s = (np.ascontiguousarray(a[:, rows]) for a in (inputs, targets, h0[None]))
        return kernel(U, W, V, b, c, x, y, s[0], scale, params_only)

    threads = min(_threads.cores(), B)
    groups = [list(range(k, B, threads)) for k in range(threads)]  # this thread takes groups[0]
    with _threads.blas(1):
        futures = [_executor().submit(lambda g=g: [block(i) for i in g]) for g in groups[1:]]
        done = {i: block(i) for i in groups[0]}
        for g, f in zip(groups[1:], futures):
            done.update(zip(g, f.result()))
    parts = [done[i] for i in range(B)]
    return _combine(parts)


def _combine(parts):
    """One result from the blocks' (loss, dU, dW, dV, db, dc, dh0, dX, dA, h_last), in block order."""
    loss = parts[0][0]
    sums = list(parts[0][1:6])
    for p in parts[1:]:
        loss = loss + p[0]
        for k in range(5):
            sums[k] += p[k + 1]
    dh0 = np.concatenate([p[6] for p in parts])
    dX = None if parts[0][7] is None else np.concatenate([p[7] for p in parts], axis=1)
    dA = None if parts[0][8] is None else np.concatenate([p[8] for p in parts], axis=1)
    h_last = np.concatenate([p[9] for p in parts])
    return (loss, *sums, dh0, dX, dA, h_last)
