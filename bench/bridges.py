"""The bridges' speed, as ratios measured in one interleaved run.

    python bench/bridges.py                          # torch and jax, every configuration
    python bench/bridges.py --only torch --configs char small --repeats 7

torch: one full training step — forward, ``nn.Linear`` head, ``cross_entropy``,
backward, ``Adam.step()`` — with ``fastrnn.torch.RNN`` against the same script
with ``torch.nn.RNN``, float32, on fastrnn.bench's configurations (token ids
become one-hot float rows, as a torch user feeds them) plus ``small`` with
num_layers=2 (``small-L2``) and bidirectional (``small-bi``). Targets: ≥ 5× at
char, ≥ 1.5× at small, never slower at medium and large. A third variant times
what both steps share (head, loss, backward, Adam on a fixed RNN output), so the
RNN's own speed-up, (nn.RNN − shared) / (fastrnn − shared), is printed too.

jax: the value and gradient of the loss (recurrence + head, float32) under
``jax.jit``, with :func:`fastrnn.jax.rnn_loss` against the same model written
with ``lax.scan``. Target: ≥ 2× at char and small. fastrnn.jax is timed on its
XLA FFI path (the default where the C extension loads) and, as a third
variant, on its ``jax.pure_callback`` path (``backend='numba'``).

Threads: --threads (default 1) sets OMP/OpenBLAS/MKL/Numba threads and torch's
intra-op threads for both sides alike (and XLA's, for one); on a shared machine
one thread per process keeps spinning pools from distorting the ratios.

Variants take turns (interleaved): each turn runs one untimed step, then times
a block of at least --block-ms; figures are medians over --repeats turns. The
machine may be shared: only the ratios within one run mean anything. Before
timing, each pair is checked to agree (losses within 1e-4 relative).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__":  # thread counts must be set before numpy, numba, torch or jax load
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)
    if _threads == "1":
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np

from fastrnn.bench import CONFIGS

TORCH_CONFIGS = {
    **{name: CONFIGS[name] + (1, False) for name in CONFIGS},
    "small-L2": CONFIGS["small"] + (2, False),
    "small-bi": CONFIGS["small"] + (1, True),
}


def _data(name, seed=0):
    T, n, d, h, v, ids, L, bi = TORCH_CONFIGS[name]
    rng = np.random.default_rng(seed)
    if ids:
        x = np.eye(d, dtype=np.float32)[rng.integers(0, d, (T, n))]
    else:
        x = rng.standard_normal((T, n, d)).astype(np.float32)
    return x, rng.integers(0, v, (T, n))


def torch_steps(name):
    import torch
    from torch import nn

    import fastrnn.torch as ft

    T, n, d, h, v, ids, L, bi = TORCH_CONFIGS[name]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x, y = _data(name)
    x, y = torch.from_numpy(x), torch.from_numpy(y).reshape(-1)
    torch.manual_seed(0)
    plain = nn.RNN(d, h, L, bidirectional=bi)
    head = nn.Linear(h * (2 if bi else 1), v)
    ours = ft.RNN.from_torch(plain)
    head2 = nn.Linear(h * (2 if bi else 1), v)
    head2.load_state_dict(head.state_dict())

    def make_step(rnn, lin):
        opt = torch.optim.Adam(list(rnn.parameters()) + list(lin.parameters()), lr=1e-3)

        def step():
            out, _ = rnn(x)
            loss = nn.functional.cross_entropy(lin(out).reshape(-1, v), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        return step

    fixed = plain(x)[0].detach()
    head3 = nn.Linear(h * (2 if bi else 1), v)
    opt3 = torch.optim.Adam(head3.parameters(), lr=1e-3)

    def shared():  # the head, the loss, backward and Adam on a fixed RNN output: what both steps share
        loss = nn.functional.cross_entropy(head3(fixed).reshape(-1, v), y)
        opt3.zero_grad()
        loss.backward()
        opt3.step()
        return loss.item()

    return {"nn.RNN": make_step(plain, head), "fastrnn.torch.RNN": make_step(ours, head2), "shared": shared}


def jax_steps(name):
    import jax
    import jax.numpy as jnp

    import fastrnn
    import fastrnn.jax as fj

    T, n, d, h, v, ids, *_ = TORCH_CONFIGS[name]
    x, y = _data(name)
    p = fastrnn.init_params(d, h, v, seed=0)
    params = {k: jnp.asarray(a) for k, a in zip("UWVbc", p)}
    x, y = jnp.asarray(x), jnp.asarray(y)

    def scan_loss(params, x, y):
        def cell(hp, xt):
            hn = jnp.tanh(xt @ params["U"] + hp @ params["W"] + params["b"])
            return hn, hn

        _, H = jax.lax.scan(cell, jnp.zeros((x.shape[1], h), x.dtype), x)
        logp = jax.nn.log_softmax(H @ params["V"] + params["c"])
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

    def ours_loss(params, x, y):
        return fj.rnn_loss(params["U"], params["W"], params["V"], params["b"], params["c"], x, y)

    def callback_loss(params, x, y):
        return fj.rnn_loss(params["U"], params["W"], params["V"], params["b"], params["c"], x, y, backend="numba")

    fns = {"lax.scan": jax.jit(jax.value_and_grad(scan_loss)), "fastrnn.jax": jax.jit(jax.value_and_grad(ours_loss)),
           "pure_callback": jax.jit(jax.value_and_grad(callback_loss))}

    def wrap(f):
        def step():
            loss, g = f(params, x, y)
            jax.block_until_ready(g)
            return float(loss)

        return step

    steps = {k: wrap(f) for k, f in fns.items()}
    losses = {k: step() for k, step in steps.items()}  # measure() checks the first two; this, all three
    if max(abs(v - losses["lax.scan"]) for v in losses.values()) > 1e-4 * abs(losses["lax.scan"]):
        raise SystemExit(f"the jax variants disagree before timing: {losses}")
    return steps


def measure(steps, repeats, block_ms):
    names = list(steps)
    losses = {k: steps[k]() for k in names}  # compile/warm, and the agreement check (first two)
    a, b = losses[names[0]], losses[names[1]]
    if abs(a - b) > 1e-4 * abs(a):
        raise SystemExit(f"the two disagree before timing: {losses}")
    times = {k: [] for k in names}
    for _ in range(repeats):
        for k in names:  # interleaved turns
            steps[k]()
            reps, t0 = 0, time.perf_counter()
            while True:
                steps[k]()
                reps += 1
                el = time.perf_counter() - t0
                if el * 1e3 >= block_ms:
                    break
            times[k].append(el / reps)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("torch", "jax"))
    ap.add_argument("--configs", nargs="*")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block-ms", type=float, default=200.0)
    ap.add_argument("--threads", default="1", help="threads for every library (read before they load)")
    args = ap.parse_args(argv)
    print("median seconds per training step (interleaved turns, one run); speed-up = peer / fastrnn;",
          f"threads {os.environ.get('OMP_NUM_THREADS')}, backend {__import__('fastrnn').get_backend()}")
    if args.only in (None, "torch"):
        for name in args.configs or list(TORCH_CONFIGS):
            if name not in TORCH_CONFIGS:
                continue
            m = measure(torch_steps(name), args.repeats, args.block_ms)
            a, b, s = m["nn.RNN"], m["fastrnn.torch.RNN"], m["shared"]
            print(f"torch {name:9s} nn.RNN {a * 1e3:9.3f} ms  fastrnn.torch.RNN {b * 1e3:9.3f} ms  speed-up "
                  f"{a / b:6.2f}x   (head+loss+Adam alone {s * 1e3:8.3f} ms; the RNN's own part "
                  f"{(a - s) / max(b - s, 1e-9):6.2f}x)", flush=True)
    if args.only in (None, "jax"):
        import fastrnn.jax as fj

        path = "XLA FFI" if fj.uses_ffi() else f"pure_callback ({fj.ffi_unavailable})"
        print(f"jax: fastrnn.jax runs on its {path} path; pure_callback = the same op with backend='numba'")
        for name in args.configs or ["char", "char32", "small", "medium"]:
            if name not in CONFIGS:
                continue
            m = measure(jax_steps(name), args.repeats, args.block_ms)
            a, b, cb = m["lax.scan"], m["fastrnn.jax"], m["pure_callback"]
            print(f"jax   {name:9s} lax.scan {a * 1e3:9.3f} ms  fastrnn.jax {b * 1e3:9.3f} ms  speed-up {a / b:6.2f}x"
                  f"   (pure_callback {cb * 1e3:9.3f} ms, {a / cb:6.2f}x)", flush=True)


if __name__ == "__main__":
    main()
