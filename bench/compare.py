"""Peer comparison: one training step (loss and every parameter gradient).

    python bench/compare.py                       # the table: char, char32, small, medium, large
    python bench/compare.py --dtype float64 --configs small medium large
    python bench/compare.py --plot speedup.png    # speed-up over torch against h = 32..1024
    python bench/compare.py --startup --memory --scaling

Peers, all on the same weights and data, timed in this one process:

* ``numpy by hand``: the per-timestep loop people write themselves;
* ``torch``: nn.RNN + nn.Linear + cross_entropy, forward and backward (CPU);
* ``jax``: lax.scan under jit(value_and_grad);
* ``GEMM floor``: only the matrix products a step cannot avoid (the batched
  input and output projections, dO Vᵀ, dU, dW, dV, and the two n×h×h products
  per timestep), no elementwise work. It is compiled with Numba and calls the
  same BLAS as fastrnn, so it has no interpreter overhead; ``GEMM floor
  (numpy)`` is the same list of products issued from Python with numpy's BLAS;
* every fastrnn backend, with ``params_only=True`` (parameter gradients only,
  as torch and jax compute them here; no dL/dX or dL/dA).

Before any timing, each peer that computes a step (all but the GEMM floors,
which compute no gradient) runs once on the configuration's data and its loss
and U, W, V, b, c gradients are compared with the numpy reference (relative
1e-4 in float32, 1e-10 in float64); a peer that disagrees is not timed, is
listed, and the script exits with status 1.

Timing: peers take turns (interleaved). A turn first pauses (--quiet-ms) so
that the previous peer's thread pools stop spinning (OpenBLAS workers spin for
about 0.1 s after a call, and on 2 cores a spinning pool halves the next peer's
speed), runs one untimed call, then times a block of calls long enough
(>= --block-ms) to time reliably; a turn's time is the block's mean. Reported
figures are medians over --repeats turns. Peers that are not installed are
skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from numba import njit

import fastrnn
from fastrnn.bench import CONFIGS, QUICK, TOLERANCE, make

# --------------------------------------------------------------------------
# The peers. Each factory takes (params, inputs, targets) and returns a
# zero-argument callable that runs one training step. A peer that computes a
# real step also gets ``step.read(out) -> (loss, (dU, dW, dV, db, dc))`` so that
# its first result is checked against the reference before it is timed.
# --------------------------------------------------------------------------


def _readable(step, read):
    step.read = read
    return step


def numpy_by_hand(params, x, y):
    """The per-timestep loop people write themselves (min-char-rnn style, batched)."""
    U, W, V, b, c = params
    X = np.eye(U.shape[0], dtype=U.dtype)[x] if x.ndim == 2 else x

    def step():
        T, n = y.shape
        hs = [np.zeros((n, W.shape[0]), U.dtype)]
        ps, loss = [], 0.0
        for t in range(T):
            hs.append(np.tanh(X[t] @ U + hs[-1] @ W + b))
            o = hs[-1] @ V + c
            p = np.exp(o - o.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            ps.append(p)
            loss -= np.log(p[np.arange(n), y[t]]).sum()
        dU, dW, dV = np.zeros_like(U), np.zeros_like(W), np.zeros_like(V)
        db, dc, dnext = np.zeros_like(b), np.zeros_like(c), np.zeros_like(hs[0])
        for t in reversed(range(T)):
            do = ps[t].copy()
            do[np.arange(n), y[t]] -= 1
            do /= T * n
            dV += hs[t + 1].T @ do
            dc += do.sum(0)
            da = (do @ V.T + dnext) * (1 - hs[t + 1] ** 2)
            dU += X[t].T @ da
            dW += hs[t].T @ da
            db += da.sum(0)
            dnext = da @ W.T
        return loss / (T * n), dU, dW, dV, db, dc

    return _readable(step, lambda out: (out[0], out[1:]))


@njit(cache=False, nogil=True)
def _floor_kernel(U, W, V, X, ids, T):
    """The GEMMs of a step and nothing else, with the buffers fastrnn uses."""
    d, h = U.shape
    v = V.shape[1]
    n = max(X.shape[1], ids.shape[1])
    Hs = np.zeros((T + 1, n, h), U.dtype)
    G = np.empty((T, n, h), U.dtype)
    if ids.size == 0:
        np.dot(X.reshape(T * n, d), U, G.reshape(T * n, h))  # input projection
    else:
        for t in range(T):  # for ids it is a row gather
            for i in range(n):
                G[t, i] = U[ids[t, i]]
    for t in range(T):
        np.dot(Hs[t], W, Hs[t + 1])  # H_{t-1} W
    H = Hs[1:].reshape(T * n, h)
    O = np.dot(H, V)  # output projection
    dV = np.dot(H.T, O)
    np.dot(O, V.T, G.reshape(T * n, h))  # dO Vᵀ
    tmp = np.empty((n, h), U.dtype)
    for t in range(T - 1, -1, -1):
        np.dot(G[t], W.T, tmp)  # dA_{t+1} Wᵀ
    dA = G.reshape(T * n, h)
    dW = np.dot(Hs[:T].reshape(T * n, h).T, dA)
    if ids.size == 0:
        dU = np.dot(X.reshape(T * n, d).T, dA)
    else:
        dU = np.zeros((d, h), U.dtype)
        for t in range(T):
            for i in range(n):
                dU[ids[t, i]] += G[t, i]
    return dU, dW, dV


def gemm_floor(params, x, y):
    U, W, V, b, c = params
    T = y.shape[0]
    if x.ndim == 2:
        X, ids = np.empty((0, 0, 0), U.dtype), np.ascontiguousarray(x, dtype=np.intp)
    else:
        X, ids = x, np.empty((0, 0), np.intp)
    return lambda: _floor_kernel(U, W, V, X, ids, T)


def gemm_floor_numpy(params, x, y):
    """The same products issued one by one from Python, with numpy's BLAS."""
    U, W, V, b, c = params
    T, n = y.shape
    h = W.shape[0]

    def step():
        H = np.zeros((T + 1, n, h), U.dtype)
        P = U[x] if x.ndim == 2 else (x.reshape(T * n, -1) @ U).reshape(T, n, h)
        for t in range(T):
            np.dot(H[t], W, out=H[t + 1])
        O = H[1:].reshape(T * n, h) @ V
        dV = H[1:].reshape(T * n, h).T @ O
        G = O @ V.T
        dA = G.reshape(T, n, h)
        tmp = np.empty((n, h), U.dtype)
        for t in range(T - 1, -1, -1):
            np.dot(dA[t], W.T, out=tmp)
        dW = H[:-1].reshape(T * n, h).T @ G
        if x.ndim == 3:
            dU = x.reshape(T * n, -1).T @ G
        else:
            dU = np.zeros_like(U)
            np.add.at(dU, x.reshape(-1), G)
        return dV, dW, dU, P

    return step


def torch_step(params, x, y):
    import torch

    U, W, V, b, c = params
    d, h = U.shape
    dt = torch.float32 if U.dtype == np.float32 else torch.float64
    rnn = torch.nn.RNN(d, h, nonlinearity="tanh").to(dt)
    head = torch.nn.Linear(h, V.shape[1]).to(dt)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(U.T.copy()))
        rnn.weight_hh_l0.copy_(torch.from_numpy(W.T.copy()))
        rnn.bias_ih_l0.copy_(torch.from_numpy(b))
        rnn.bias_hh_l0.zero_()
        head.weight.copy_(torch.from_numpy(V.T.copy()))
        head.bias.copy_(torch.from_numpy(c))
    X = torch.nn.functional.one_hot(torch.from_numpy(x), d).to(dt) if x.ndim == 2 else torch.from_numpy(x)
    Y = torch.from_numpy(y).reshape(-1)

    def step():
        rnn.zero_grad()
        head.zero_grad()
        H, _ = rnn(X)
        loss = torch.nn.functional.cross_entropy(head(H).reshape(-1, V.shape[1]), Y)
        loss.backward()
        return loss.item()

    def read(loss):
        g = [t.grad.detach().numpy() for t in (rnn.weight_ih_l0, rnn.weight_hh_l0, head.weight, rnn.bias_ih_l0, head.bias)]
        return loss, (g[0].T, g[1].T, g[2].T, g[3], g[4])

    return _readable(step, read)


def jax_step(params, x, y):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # so float64 runs stay float64; float32 stays float32
    d = params.U.shape[0]
    dt = params.U.dtype
    X = jax.nn.one_hot(x, d, dtype=dt) if x.ndim == 2 else jnp.asarray(x)
    Y = jnp.asarray(y)

    def loss_fn(p):
        U, W, V, b, c = p

        def cell(h, xt):
            h = jnp.tanh(xt @ U + h @ W + b)
            return h, h

        _, H = jax.lax.scan(cell, jnp.zeros((X.shape[1], W.shape[0]), dt), X)
        logp = jax.nn.log_softmax(H @ V + c)
        return -jnp.take_along_axis(logp, Y[..., None], -1).mean()

    f = jax.jit(jax.value_and_grad(loss_fn))
    p = tuple(jnp.asarray(a) for a in params)

    def step():
        loss, g = f(p)
        jax.block_until_ready(g)
        return loss, g

    return _readable(step, lambda out: (float(out[0]), tuple(np.asarray(a) for a in out[1])))


def fastrnn_step(backend):
    def factory(params, x, y):
        step = lambda: fastrnn.loss_and_grads(params, x, y, backend=backend, params_only=True)  # noqa: E731
        return _readable(step, lambda out: (out[0], tuple(out[1])[:5]))

    return factory


def peers(include=("numpy", "torch", "jax", "floor")):
    """label -> factory, in a fixed order; fastrnn's default backend first."""
    default = fastrnn.get_backend()
    out = {f"fastrnn[{be}]": fastrnn_step(be) for be in [default] + [b for b in fastrnn.backends() if b != default]}
    if "floor" in include:
        out["GEMM floor"] = gemm_floor
        out["GEMM floor (numpy)"] = gemm_floor_numpy
    if "numpy" in include:
        out["numpy by hand"] = numpy_by_hand
    if "torch" in include:
        out["torch"] = torch_step
    if "jax" in include:
        out["jax"] = jax_step
    return out


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def time_interleaved(steps, repeats, block_ms=30.0, quiet_ms=150.0):
    """label -> median seconds per call; see the module docstring."""
    inner = {}
    for label, fn in steps.items():
        fn()  # warm-up: compilation, caches, thread pools
        t0 = time.perf_counter()
        fn()
        inner[label] = max(1, math.ceil(block_ms / 1e3 / (time.perf_counter() - t0)))
    times = {label: [] for label in steps}
    for _ in range(repeats):
        for label, fn in steps.items():
            time.sleep(quiet_ms / 1e3)  # the previous peer's threads go to sleep
            fn()
            k = inner[label]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[label].append((time.perf_counter() - t0) / k)
    return {label: float(np.median(ts)) for label, ts in times.items()}


FAILED_CHECKS = []  # (where, label, why): printed again at the end, and the exit status is 1


def check(step, params, x, y, ref):
    """None if the step's loss and U, W, V, b, c gradients match the reference's, else why not."""
    loss, grads = step.read(step())
    tol = TOLERANCE[np.dtype(params.U.dtype)]
    ref_loss, ref_grads = ref
    if not abs(float(loss) - ref_loss) <= tol * abs(ref_loss):
        return f"loss {float(loss)!r} against the reference's {ref_loss!r}"
    for name, g, r in zip("UWVbc", grads, ref_grads):
        g = np.asarray(g)
        if g.shape != r.shape:
            return f"d{name} has shape {g.shape}, the reference's is {r.shape}"
        err = float(np.abs(g - r).max() / np.abs(r).max())
        if not err <= tol:
            return f"d{name} is off by {err:.1e} relative (tolerance {tol:.0e})"
    return None


def build(factories, params, x, y, where=""):
    """The peers' steps, each checked against the reference before it may be timed.
    A peer that disagrees is left out of the timing and reported."""
    ref_loss, ref, _ = fastrnn.loss_and_grads(params, x, y, backend="numpy")
    ref = (ref_loss, tuple(ref)[:5])
    steps, skipped = {}, []
    for label, factory in factories.items():
        try:
            step = factory(params, x, y)
        except ImportError as exc:
            skipped.append(f"{label} ({exc.name or exc} is not installed)")
            continue
        if hasattr(step, "read"):
            why = check(step, params, x, y, ref)
            if why is not None:
                FAILED_CHECKS.append((where, label, why))
                skipped.append(f"{label} (FAILED the check against the reference: {why})")
                continue
        steps[label] = step
    return steps, skipped


def table(args, dtype):
    default = f"fastrnn[{fastrnn.get_backend()}]"
    results = {}
    for name in args.configs:
        params, x, y = make(name, dtype)
        steps, skipped = build(peers(), params, x, y, where=f"{name} {dtype.name}")
        med = time_interleaved(steps, args.repeats, args.block_ms, args.quiet_ms)
        results[name] = med
        T, n, d, h, v, ids = CONFIGS[name]
        print(f"\n{name} ({dtype.name}): T={T} n={n} d={d} h={h} v={v} {'token ids' if ids else 'dense'}")
        for s in skipped:
            print(f"  skipped: {s}")
        print(f"  {'':20s} {'ms':>10s} {'÷ ' + default:>18s}")
        for label in sorted(med, key=med.get):
            print(f"  {label:20s} {med[label] * 1e3:10.3f} {med[label] / med[default]:18.2f}")
        ratios = [f"torch/fastrnn {med['torch'] / med[default]:.2f}" if "torch" in med else None,
                  f"jax/fastrnn {med['jax'] / med[default]:.2f}" if "jax" in med else None,
                  f"fastrnn/floor {med[default] / med['GEMM floor']:.3f}",
                  f"fastrnn/floor (numpy) {med[default] / med['GEMM floor (numpy)']:.3f}"]
        print("  " + "; ".join(r for r in ratios if r))
    return results


def sweep_h(args, dtype, sizes=(32, 64, 128, 256, 512, 1024)):
    """Speed-up over torch against h, at small's other sizes."""
    T, n, d, _, v, ids = CONFIGS["small"]
    results = {}
    for h in sizes:
        rng = np.random.default_rng(0)
        params = fastrnn.init_params(d, h, v, dtype=dtype, seed=0)
        x = rng.standard_normal((T, n, d)).astype(dtype)
        y = rng.integers(0, v, (T, n))
        steps, skipped = build(peers(), params, x, y, where=f"h={h} {dtype.name}")
        med = time_interleaved(steps, max(3, args.repeats // 2), args.block_ms, args.quiet_ms)
        results[h] = med
        print(f"  h={h:5d}  " + "  ".join(f"{k} {t * 1e3:.2f} ms" for k, t in med.items()))
    if "torch" not in results[sizes[0]]:
        print("  (torch is not installed: no speed-up plot)")
        return results
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in results[sizes[0]]:
        if label in ("torch", "GEMM floor (numpy)"):
            continue
        ax.plot(sizes, [results[h]["torch"] / results[h][label] for h in sizes], marker="o", label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ticks = [t for t in (0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16) if t <= 1.3 * max(ax.get_ylim())]
    ax.set_yticks(ticks, [f"{t:g}×" for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("hidden size h")
    ax.set_ylabel("speed-up over torch.nn.RNN")
    ax.set_title(f"One training step (loss and parameter gradients)\nT={T} n={n} d={d} v={v} dense, {dtype.name}, 2 cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = Path(args.plot).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, args.plot)  # written whole or not at all
    print(f"  plot saved to {args.plot}")
    return results


# --------------------------------------------------------------------------
# Start-up time, memory, and scaling in T
# --------------------------------------------------------------------------

_FIRST_STEP = """
import time
t0 = time.perf_counter()
import numpy as np
import fastrnn
t1 = time.perf_counter()
params = fastrnn.init_params(65, 100, 65, dtype=np.float32, seed=0)
ids = np.random.default_rng(0).integers(0, 65, (25, 1))
fastrnn.loss_and_grads(params, ids, ids, backend={backend!r}, params_only=True)
t2 = time.perf_counter()
print(t1 - t0, t2 - t0)
"""


def startup(args):
    """Seconds from `import fastrnn` to the first char step done, in fresh processes."""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [("numba, cold cache", "numba"), ("numba, warm cache", "numba"), ("c", "c")]
        for label, be in runs:
            if be not in fastrnn.backends():
                continue
            out = subprocess.run([sys.executable, "-c", _FIRST_STEP.format(backend=be)], env=env, cwd=tempfile.gettempdir(),
                                 capture_output=True, text=True, check=True)
            imp, first = map(float, out.stdout.split())
            results[label] = first
            print(f"  {label:18s} first step done {first:.3f} s after `import fastrnn` began (import {imp:.3f} s)")
    return results


def memory(args, dtype):
    """Peak traced bytes of one step against the hidden-state and softmax buffers."""
    results = {}
    for name in args.configs:
        T, n, d, h, v, ids = CONFIGS[name]
        params, x, y = make(name, dtype)
        base = (T * n * h + T * n * v) * dtype.itemsize
        grads = sum(p.nbytes for p in params)
        for be in fastrnn.backends():
            fastrnn.loss_and_grads(params, x, y, backend=be, params_only=True)
            tracemalloc.start()
            fastrnn.loss_and_grads(params, x, y, backend=be, params_only=True)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            results[f"{name}/{be}"] = peak / base
            print(f"  {name:7s} {be:6s} peak {peak / 1e6:8.2f} MB = {peak / base:.2f}× H+softmax ({base / 1e6:.2f} MB);"
                  f" without the returned gradients {(peak - grads) / base:.2f}×")
    return results


def scaling(args, dtype, lengths=(25, 50, 100, 200, 400)):
    """Step time against T at small's other sizes: it must grow linearly."""
    _, n, d, h, v, _ = CONFIGS["small"]
    be = fastrnn.get_backend()
    params = fastrnn.init_params(d, h, v, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    steps = {}
    for T in lengths:
        x = rng.standard_normal((T, n, d)).astype(dtype)
        y = rng.integers(0, v, (T, n))
        steps[T] = lambda x=x, y=y: fastrnn.loss_and_grads(params, x, y, backend=be, params_only=True)
    med = time_interleaved(steps, args.repeats, args.block_ms, args.quiet_ms)
    Ts = np.array(lengths, float)
    ts = np.array([med[T] for T in lengths])
    slope, icpt = np.polyfit(Ts, ts, 1)
    r2 = 1 - np.sum((ts - (slope * Ts + icpt)) ** 2) / np.sum((ts - ts.mean()) ** 2)
    for T in lengths:
        print(f"  T={T:4d}  {med[T] * 1e3:8.3f} ms   {med[T] / T * 1e6:7.2f} µs per timestep")
    print(f"  linear fit: {slope * 1e6:.2f} µs per timestep + {icpt * 1e3:.3f} ms, R² = {r2:.5f}")
    return {"per_T_us": {T: med[T] / T * 1e6 for T in lengths}, "r2": r2}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--dtype", nargs="+", choices=("float32", "float64"), default=["float32"])
    ap.add_argument("--repeats", type=int, default=11, help="interleaved turns per peer (default 11)")
    ap.add_argument("--block-ms", type=float, default=30.0, help="minimum length of one timed block")
    ap.add_argument("--quiet-ms", type=float, default=150.0, help="pause before each turn")
    ap.add_argument("--plot", metavar="PNG", help="also sweep h = 32..1024 and save the speed-up plot")
    ap.add_argument("--startup", action="store_true", help="time to the first step in fresh processes")
    ap.add_argument("--memory", action="store_true", help="peak traced memory of one step")
    ap.add_argument("--scaling", action="store_true", help="step time against T = 25..400")
    ap.add_argument("--no-table", action="store_true", help="skip the peer table")
    ap.add_argument("--json", metavar="PATH", help="also write every figure to a JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.configs = list(QUICK)
    out = {"machine": machine(), "backends": fastrnn.backends(), "default": fastrnn.get_backend()}
    print(f"{out['machine']}\nfastrnn backends {out['backends']} (default {out['default']}); "
          f"median of {args.repeats} interleaved turns")
    for dt in map(np.dtype, args.dtype):
        if not args.no_table:
            out[f"table/{dt.name}"] = table(args, dt)
        if args.plot and dt == np.dtype(args.dtype[0]):  # one plot, for the first dtype
            print(f"\nspeed-up sweep over h ({dt.name})")
            out[f"sweep/{dt.name}"] = sweep_h(args, dt)
        if args.memory:
            print(f"\nmemory ({dt.name})")
            out[f"memory/{dt.name}"] = memory(args, dt)
        if args.scaling:
            print(f"\nscaling in T ({dt.name}, backend {fastrnn.get_backend()})")
            out[f"scaling/{dt.name}"] = scaling(args, dt)
    if args.startup:
        print("\nfirst step in a fresh process (char, float32)")
        out["startup"] = startup(args)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1, default=str)
        os.replace(tmp, args.json)
    if FAILED_CHECKS:
        print("\npeers left out because they disagree with the reference:")
        for where, label, why in FAILED_CHECKS:
            print(f"  {where}: {label}: {why}")
        sys.exit(1)


def machine():
    import platform

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    vers = [f"numpy {np.__version__}"]
    for mod in ("numba", "scipy", "torch", "jax"):
        try:
            vers.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; " + ", ".join(vers)


if __name__ == "__main__":
    main()
