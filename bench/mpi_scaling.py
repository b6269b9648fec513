"""Data-parallel training over MPI on this machine, and a scaling model for a cluster.

    python bench/mpi_scaling.py                       # small, medium, large; K = 2 ranks
    python bench/mpi_scaling.py --configs small --steps 20

For each config it measures, in one run:
  * 1 process with 2 BLAS threads on the global batch (tokens/s),
  * 2 ranks with 1 BLAS thread each, each on half the streams, gradients summed
    by one in-place Allreduce per step (tokens/s),
  * the Allreduce alone on a buffer of the config's gradient size (median).
A step is what the trainer does: loss and parameter gradients, the reduction,
clipping by global norm and an Adam update.

Then the model for K machines, for the per-machine batch of the config:
    t_comm(K) = 2 (K−1)/K · bytes / bandwidth + latency · log2 K     (ring all-reduce)
    efficiency = t_step / (t_step + t_comm)                          (no overlap)
and the global batch B below which efficiency falls under 80%: with t_step
proportional to the streams per machine (c seconds per stream and step, as
measured), efficiency ≥ 0.8 needs c · B / K ≥ 4 t_comm(K), i.e.
B ≥ 4 K t_comm(K) / c.
Needs mpi4py and mpiexec: pip install "fastrnn[mpi]".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

CONFIGS = {  # (T, n, d, h, v), as in bench/configs.py
    "small": (50, 32, 64, 128, 64),
    "medium": (100, 64, 256, 256, 256),
    "large": (100, 128, 512, 1024, 512),
}


def _step_loop(cfg, steps, comm=None):
    import fastrnn
    from fastrnn import optim

    T, N, d, h, v = cfg
    params = fastrnn.init_params(d, h, v, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, d, (T, N))  # token ids, as the trainer feeds
    y = rng.integers(0, v, (T, N))
    part, reducer = slice(0, N), None
    if comm is not None:
        from fastrnn import distributed as dist

        part = dist.split_streams(N, comm.size, comm.rank)
        reducer = dist.Reducer(comm, weight=(part.stop - part.start) / N)
    x, y = np.ascontiguousarray(x[:, part]), np.ascontiguousarray(y[:, part])
    opt = optim.Adam(params, lr=1e-3)

    def one():
        loss, g, _ = fastrnn.loss_and_grads(params, x, y, params_only=True)
        if reducer is not None:
            loss = reducer.reduce(g, loss)
        optim.clip_by_global_norm(g, 5.0)
        opt.step(g)

    one()  # compile, warm the BLAS pool
    if comm is not None:
        comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if comm is not None:
        comm.Barrier()
    return (time.perf_counter() - t0) / steps


def _allreduce_time(nbytes, comm, repeats=50):
    from mpi4py import MPI

    buf = np.zeros(nbytes // 4, dtype=np.float32)
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def grad_bytes(cfg, itemsize=4):
    T, N, d, h, v = cfg
    return itemsize * (d * h + h * h + h * v + h + v)


def worker(name, steps):
    from fastrnn import distributed as dist

    comm = dist.world()
    cfg = CONFIGS[name]
    t = _step_loop(cfg, steps, comm)
    ar = _allreduce_time(grad_bytes(cfg), comm)
    if comm.rank == 0:
        print(json.dumps({"step": t, "allreduce": ar}))


def single(name, steps):
    print(json.dumps({"step": _step_loop(CONFIGS[name], steps)}))


def _run(cmd, threads):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "FASTRNN_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ring_allreduce(nbytes, K, gbit_s, latency):
    return 2 * (K - 1) / K * nbytes / (gbit_s * 1e9 / 8) + latency * math.log2(K)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: by config)")
    ap.add_argument("--latency-us", type=float, default=10.0, help="per-hop latency for the model")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--single", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    default_steps = {"small": 200, "medium": 20, "large": 4}
    if args.worker:
        return worker(args.worker, args.steps)
    if args.single:
        return single(args.single, args.steps)

    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        raise SystemExit('mpiexec not found: pip install "fastrnn[mpi]"')
    me = [sys.executable, os.path.abspath(__file__)]
    results = {}
    for name in args.configs:
        steps = args.steps or default_steps[name]
        T, N = CONFIGS[name][:2]
        one = _run(me + ["--single", name, "--steps", str(steps)], threads=2)
        two = _run([mpiexec, "-n", "2"] + me + ["--worker", name, "--steps", str(steps)], threads=1)
        results[name] = dict(single=one["step"], ranks2=two["step"], allreduce=two["allreduce"], tokens=T * N,
                             grad_bytes=grad_bytes(CONFIGS[name]))
        r = results[name]
        print(f"{name:7s} 1×2 threads {T * N / r['single']:>10,.0f} tok/s   2 ranks×1 thread "
              f"{T * N / r['ranks2']:>10,.0f} tok/s   ({r['single'] / r['ranks2']:.2f}×)   "
              f"Allreduce {r['grad_bytes'] / 1e6:.2f} MB: {r['allreduce'] * 1e6:.0f} µs", flush=True)

    latency = args.latency_us * 1e-6
    print(f"\nModel: ring all-reduce, {args.latency_us:g} µs per hop, float32 gradients, no overlap; "
          "t_step = the 1-process step on the config's batch per machine.")
    print(f"{'config':7s} {'K':>4s} {'Gb/s':>5s} {'t_comm ms':>9s} {'t_step ms':>9s} {'eff':>5s} {'B(80%)':>8s}")
    model = {}
    for name, r in results.items():
        c = r["single"] / CONFIGS[name][1]  # seconds per stream and step
        for K in (8, 64, 512):
            for gb in (10, 100):
                tc = ring_allreduce(r["grad_bytes"], K, gb, latency)
                eff = r["single"] / (r["single"] + tc)
                b80 = 4 * K * tc / c
                model[f"{name}/K{K}/{gb}"] = dict(t_comm=tc, efficiency=eff, batch_80=b80)
                print(f"{name:7s} {K:4d} {gb:5d} {tc * 1e3:9.3f} {r['single'] * 1e3:9.2f} {eff:5.2f} {b80:8.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured": results, "model": model}, f, indent=1)


if __name__ == "__main__":
    main()
