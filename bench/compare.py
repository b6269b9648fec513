"""Peer comparison: one training step (loss + all gradients), timed interleaved in one process.

    python bench/compare.py [--configs char small ...] [--repeats 20] [--dtype float32]

Peers: a hand-written per-timestep numpy RNN, torch (nn.RNN + nn.Linear +
cross_entropy), jax (lax.scan under jit(value_and_grad)), the GEMM floor (only
the matrix products a step cannot avoid), and every fastrnn backend. Missing
peers are skipped with a note. Prints medians (ms) and ratios to fastrnn's
default backend.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import fastrnn  # noqa: E402
from configs import CONFIGS, make  # noqa: E402


def numpy_by_hand(params, x, y):
    """The per-timestep loop people write themselves (min-char-rnn style, batched)."""
    U, W, V, b, c = params
    T, n = y.shape
    X = np.eye(U.shape[0], dtype=U.dtype)[x] if x.ndim == 2 else x
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
    return loss / (T * n), dU


def gemm_floor(params, x, y):
    """Only the matrix products: batched projections and gradients, 2 n×h×h per step."""
    U, W, V, b, c = params
    T, n = y.shape
    h = W.shape[0]
    H = np.empty((T + 1, n, h), U.dtype)
    P = U[x] if x.ndim == 2 else (x.reshape(T * n, -1) @ U).reshape(T, n, h)
    H[0] = 0
    for t in range(T):
        np.dot(H[t], W, out=H[t + 1])
    O = H[1:].reshape(T * n, h) @ V
    G = O @ V.T
    dV = H[1:].reshape(T * n, h).T @ O
    dA = G.reshape(T, n, h)
    tmp = np.empty((n, h), U.dtype)
    for t in range(T - 1, -1, -1):
        np.dot(dA[t], W.T, out=tmp)
    dW = H[:-1].reshape(T * n, h).T @ G
    dU = x.reshape(T * n, -1).T @ G if x.ndim == 3 else None
    return dV, dW, dU, P


def torch_step(params, x, y):
    import torch

    U, W, V, b, c = params
    d, h = U.shape
    rnn = torch.nn.RNN(d, h, nonlinearity="tanh")
    head = torch.nn.Linear(h, V.shape[1])
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(U.T.copy()))
        rnn.weight_hh_l0.copy_(torch.from_numpy(W.T.copy()))
        rnn.bias_ih_l0.copy_(torch.from_numpy(b))
        rnn.bias_hh_l0.zero_()
        head.weight.copy_(torch.from_numpy(V.T.copy()))
        head.bias.copy_(torch.from_numpy(c))
    dt = torch.float32 if U.dtype == np.float32 else torch.float64
    rnn, head = rnn.to(dt), head.to(dt)
    X = torch.nn.functional.one_hot(torch.from_numpy(x), d).to(dt) if x.ndim == 2 else torch.from_numpy(x)
    Y = torch.from_numpy(y).reshape(-1)

    def step():
        rnn.zero_grad()
        head.zero_grad()
        H, _ = rnn(X)
        loss = torch.nn.functional.cross_entropy(head(H).reshape(-1, V.shape[1]), Y)
        loss.backward()
        return loss.item()

    return step


def jax_step(params, x, y):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", params.U.dtype == np.float64)
    d = params.U.shape[0]
    X = jax.nn.one_hot(x, d, dtype=params.U.dtype) if x.ndim == 2 else jnp.asarray(x)
    Y = jnp.asarray(y)

    def loss_fn(p):
        U, W, V, b, c = p

        def cell(h, xt):
            h = jnp.tanh(xt @ U + h @ W + b)
            return h, h

        _, H = jax.lax.scan(cell, jnp.zeros((X.shape[1], W.shape[0]), U.dtype), X)
        logp = jax.nn.log_softmax(H @ V + c)
        return -jnp.take_along_axis(logp, Y[..., None], -1).mean()

    f = jax.jit(jax.value_and_grad(loss_fn))
    p = tuple(jnp.asarray(a) for a in params)

    def step():
        loss, g = f(p)
        jax.block_until_ready(g)
        return loss

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["char", "char32", "small", "medium"], choices=list(CONFIGS))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = ap.parse_args(argv)
    dtype = np.dtype(args.dtype)
    default = fastrnn.get_backend()
    print(f"fastrnn backends: {fastrnn.backends()}; dtype {dtype}; median of {args.repeats} interleaved repeats")
    for name in args.configs:
        params, x, y = make(name, dtype)
        peers = {f"fastrnn[{be}]": (lambda be=be: fastrnn.loss_and_grads(params, x, y, backend=be)) for be in fastrnn.backends()}
        peers["numpy by hand"] = lambda: numpy_by_hand(params, x, y)
        peers["GEMM floor"] = lambda: gemm_floor(params, x, y)
        for label, factory in (("torch", torch_step), ("jax", jax_step)):
            try:
                peers[label] = factory(params, x, y)
            except ImportError:
                print(f"  ({label} is not installed: skipped)")
        times = {k: [] for k in peers}
        for fn in peers.values():  # warm-up: JIT compiles, caches, thread pools
            fn()
        for _ in range(args.repeats):
            for k, fn in peers.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        ref = med[f"fastrnn[{default}]"]
        T, n, d, h, v, ids = CONFIGS[name]
        print(f"\n{name}: T={T} n={n} d={d} h={h} v={v} {'ids' if ids else 'dense'}")
        print(f"  {'':18s} {'ms':>9s}  {'÷ fastrnn[' + default + ']':>16s}")
        for k in sorted(med, key=med.get):
            print(f"  {k:18s} {med[k]:9.3f}  {med[k] / ref:16.2f}")


if __name__ == "__main__":
    main()
