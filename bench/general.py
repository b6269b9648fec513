"""The general model's costs, as ratios measured in one interleaved run.

    python bench/general.py                                  # char32, small, medium; numba and c
    python bench/general.py --configs small --backends c --repeats 9

One training step each (loss and every parameter gradient, ``params_only=True``,
float32, the configurations of fastrnn.bench), on the same data:

* ``1 layer``: today's model (Params, equal lengths) — the baseline;
* ``2 layers``: num_layers=2, equal lengths; target ≤ 1.05 × (2 × ``1 layer``);
* ``bidirectional``: one layer, both directions; target ≤ 2.0 × (≤ 1.5 × at
  char32 and small) ``1 layer``;
* ``bidirectional, 1 thread``: the same with ``fastrnn.set_num_threads(1)``
  (its blocks, or its two directions, one after the other);
* ``lengths``: lengths uniform in [T/4, T]; target ≤ 0.75 × ``1 layer`` (the
  same batch padded to T);
* ``torch packed``: nn.RNN + nn.Linear + cross_entropy on a PackedSequence
  with the same lengths, forward and backward; target: ``lengths`` ≥ 2× faster
  at small;
* ``api check``: the cost of the test that routes a call to the general model
  (µs per call, reported against ``1 layer``).

Variants take turns (interleaved): each turn pauses --quiet-ms (OpenBLAS
workers spin after a call), runs one untimed call, then times a block of at
least --block-ms; figures are medians over --repeats turns. The machine may be
shared: only the ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastrnn
from fastrnn.bench import CONFIGS, make


def variants(config, backend, dtype, seed=0):
    T, n, d, h, v, ids = CONFIGS[config]
    params, x, y = make(config, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(max(1, T // 4), T + 1, n)
    deep2 = fastrnn.init_params(d, h, v, dtype=dtype, seed=seed, num_layers=2)
    bi = fastrnn.init_params(d, h, v, dtype=dtype, seed=seed, bidirectional=True)
    step = lambda p, **kw: (lambda: fastrnn.loss_and_grads(p, x, y, backend=backend, params_only=True, **kw))  # noqa: E731

    def one_thread():
        previous = fastrnn.set_num_threads(1)
        try:
            return step(bi)()
        finally:
            fastrnn.set_num_threads(previous)

    out = {
        "1 layer": step(params),
        "2 layers": step(deep2),
        "bidirectional": step(bi),
        "bidirectional, 1 thread": one_thread,
        "lengths": step(params, lengths=lengths),
    }
    from fastrnn.api import _general

    out["api check"] = lambda: _general(params, None, y, -100)
    try:
        out["torch packed"] = torch_packed(params, x, y, lengths, ids, dtype)
    except ImportError:
        pass
    return out, lengths


def torch_packed(params, x, y, lengths, ids, dtype):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    tdt = torch.float32 if dtype == np.float32 else torch.float64
    U, W, V, b, c = params
    d, h = U.shape
    rnn = torch.nn.RNN(d, h, nonlinearity="tanh").to(tdt)
    head = torch.nn.Linear(h, V.shape[1]).to(tdt)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor(U.T))
        rnn.weight_hh_l0.copy_(torch.tensor(W.T))
        rnn.bias_ih_l0.copy_(torch.tensor(b))
        rnn.bias_hh_l0.zero_()
        head.weight.copy_(torch.tensor(V.T))
        head.bias.copy_(torch.tensor(c))
    xt = torch.nn.functional.one_hot(torch.tensor(x), d).to(tdt) if ids else torch.tensor(x)
    lt = torch.tensor(lengths)
    y_packed = pack_padded_sequence(torch.tensor(y), lt, enforce_sorted=False).data

    def run():
        rnn.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        out, _ = rnn(pack_padded_sequence(xt, lt, enforce_sorted=False))
        loss = torch.nn.functional.cross_entropy(head(out.data), y_packed)
        loss.backward()
        return loss.item()

    return run


def turn(fn, quiet_ms, block_ms):
    time.sleep(quiet_ms / 1000)
    fn()
    reps, elapsed = 0, 0.0
    start = time.perf_counter()
    while elapsed < block_ms / 1000 or reps < 3:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
    return elapsed / reps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["char32", "small", "medium"])
    ap.add_argument("--backends", nargs="+", default=[b for b in ("numba", "c") if b in fastrnn.backends()])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quiet-ms", type=float, default=150)
    ap.add_argument("--block-ms", type=float, default=150)
    args = ap.parse_args(argv)
    dtype = np.dtype(args.dtype).type
    try:
        import torch

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ", end="")
    except ImportError:
        print("torch not installed; ", end="")
    print(f"{args.dtype}, medians of {args.repeats} interleaved turns")
    for config in args.configs:
        for backend in args.backends:
            runs, lengths = variants(config, backend, dtype)
            times = {k: [] for k in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    times[name].append(turn(fn, args.quiet_ms, args.block_ms))
            med = {k: float(np.median(v)) for k, v in times.items()}
            one = med["1 layer"]
            T = CONFIGS[config][0]
            print(f"\n{config} {CONFIGS[config][:5]} backend={backend}; lengths in [{max(1, T // 4)}, {T}], "
                  f"Σ lengths / (T·n) = {lengths.sum() / (T * len(lengths)):.2f}")
            print(f"  {'1 layer':<16}{one * 1e3:9.3f} ms")
            print(f"  {'2 layers':<16}{med['2 layers'] * 1e3:9.3f} ms   {med['2 layers'] / (2 * one):5.2f} × two 1-layer steps")
            print(f"  {'bidirectional':<16}{med['bidirectional'] * 1e3:9.3f} ms   {med['bidirectional'] / one:5.2f} × 1 layer")
            seq = med["bidirectional, 1 thread"]
            print(f"  {'  on 1 thread':<16}{seq * 1e3:9.3f} ms   {seq / one:5.2f} × 1 layer")
            print(f"  {'lengths':<16}{med['lengths'] * 1e3:9.3f} ms   {med['lengths'] / one:5.2f} × padded to T")
            if "torch packed" in med:
                print(f"  {'torch packed':<16}{med['torch packed'] * 1e3:9.3f} ms   "
                      f"fastrnn is {med['torch packed'] / med['lengths']:5.2f}× faster")
            print(f"  {'api check':<16}{med['api check'] * 1e6:9.2f} µs   {med['api check'] / one:7.2%} of 1 layer")


if __name__ == "__main__":
    main()
