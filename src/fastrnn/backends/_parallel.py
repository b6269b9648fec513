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
order. A split step's results are therefore bit-identical for any thread count.
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
    return _blocks(T * n * (d * h + h * h + h * v), n, ncpu)


def _blocks(work, n, ncpu=None):
    """Number of row blocks for a step of ``work`` multiply-adds per forward pass over n sequences."""
    ncpu = _threads.NCPU if ncpu is None else ncpu
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


def _run_blocks(block, B):
    """[block(0), ..., block(B − 1)]: as many threads as the policy allows, BLAS on one
    thread each; the calling thread takes its share."""
    threads = min(_threads.cores(), B)
    groups = [list(range(k, B, threads)) for k in range(threads)]  # this thread takes groups[0]
    with _threads.blas(1):
        futures = [_executor().submit(lambda g=g: [block(i) for i in g]) for g in groups[1:]]
        done = {i: block(i) for i in groups[0]}
        for g, f in zip(groups[1:], futures):
            done.update(zip(g, f.result()))
    return [done[i] for i in range(B)]


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

    return _combine(_run_blocks(block, B))


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


def deep_blocks(T, n, cells, D, v, ids, ncpu=None):
    """Number of blocks of sequences for a general-model step over (T, n) padded
    rows. The work is counted over all T·n rows, lengths or not: a batch that
    splits padded splits with any lengths.

    A stack of bidirectional layers is never split: its two directions already
    use two cores (:func:`directions`) over the whole batch, layer by layer. One
    bidirectional layer is split like one direction: each block then runs both
    directions in turn, and with ``params_only`` its whole step is one kernel
    call (the kernels' ``cell_step``), where side by side the two threads meet
    three times a step (after the forward passes, the head, the backward
    passes). The per-step products cost in proportion to their rows (register
    tiles, see _config.TILE_ROWS), so half the rows on each core loses little.
    Measured on the 2-core AMD Zen 3, float32, interleaved, ÷ one layer: small
    numba 1.95 split vs 2.28 side by side (char32 1.93 vs 1.97); C 1.83 split
    (char32 1.80) once its fused step stopped re-faulting the heap, vs 2.34 side
    by side. Only ``params_only`` steps were measured split; without it a block
    runs the kernels one by one, its directions in turn."""
    if D == 2 and len(cells) > 2:
        return 1
    h = cells[0][1].shape[0]
    # the first layer's cells (one per direction) gather rows of U for token ids: no X U product
    per_row = sum((0 if ids and i < D else U.shape[0]) * h + h * h for i, (U, _, _) in enumerate(cells)) + h * v
    return _blocks(T * n * per_row, n, ncpu)


def directions(kernel, *args):
    """A general-model kernel (``deep_probs``, ``deep_forward``, an unsplit
    ``deep_loss_and_grads``; ``args[1]`` is D) under the thread policy.

    A bidirectional model runs the two directions of each layer side by side on
    two threads whenever :func:`fastrnn._threads.cores` gives two (as split
    blocks do: they wait for each other without spinning), else one after the
    other, and every product, the head's too, on one BLAS thread. OpenBLAS's
    workers spin for about 0.1 s after a threaded product: one spinning while
    the two directions ran took a core from them (a step at small ran 1.7x
    slower side by side than in turn). The bits are the same either way.
    """
    if args[1] == 2:
        side_by_side = _threads.cores() >= 2  # read before the BLAS is set to 1: it caps cores()
        with _threads.blas(1):
            return kernel(*args, side_by_side)
    return _threads.call(kernel, *args, False)


def deep_loss_and_grads(kernel, cells, D, V, c, inputs, targets, h0, lengths, scale, relu, params_only=False):
    """The general model's training step (``deep_loss_and_grads`` of the backend
    interface), split into blocks of sequences when the step is large.

    A block takes every B-th sequence in the order of decreasing length, so the
    blocks hold about equal work whatever the lengths, and runs only up to its
    longest sequence (a stack of bidirectional layers is not split:
    :func:`deep_blocks`). A one-layer ``params_only`` block reads its sequences
    from the batch's arrays in place (the kernels' ``cell_step``).
    """
    T, n = targets.shape
    B = deep_blocks(T, n, cells, D, V.shape[1], inputs.dtype.kind != "f")
    if B == 1:
        return directions(kernel, cells, D, V, c, inputs, targets, h0, lengths, scale, relu, params_only)
    order = np.argsort(-lengths, kind="stable")
    members = [np.sort(order[i::B]) for i in range(B)]

    def block(i):  # the kernel reads its sequences from the whole batch (or gathers them)
        return kernel(cells, D, V, c, inputs, targets, h0, lengths, scale, relu, params_only, False, members[i])

    parts = _run_blocks(block, B)
    loss = parts[0][0]
    grads = [list(cell) for cell in parts[0][1]]  # the kernels' own new arrays: summed into in place
    dV, dc = parts[0][2], parts[0][3]
    for p in parts[1:]:  # summed in block order: the same bits for any thread count
        loss = loss + p[0]
        for mine, theirs in zip(grads, p[1]):
            for g, t in zip(mine, theirs):
                g += t
        dV += p[2]
        dc += p[3]
    dh0, h_last = np.empty_like(h0), np.empty_like(h0)
    dX = None if parts[0][5] is None else np.zeros(inputs.shape, dtype=V.dtype)
    dAs = None if parts[0][6] is None else [np.zeros((T, n, a.shape[2]), dtype=a.dtype) for a in parts[0][6]]
    for j, p in zip(members, parts):
        dh0[:, j] = p[4]
        h_last[:, j] = p[7]
        if dX is not None:
            dX[: len(p[5]), j] = p[5]
        if dAs is not None:
            for out, a in zip(dAs, p[6]):
                out[: len(a), j] = a
    return loss, [tuple(g) for g in grads], dV, dc, dh0, dX, dAs, h_last
