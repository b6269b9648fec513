"""Contention: fastrnn next to other work on the same machine.

    python bench/contention.py                  # all three parts
    python bench/contention.py --parts burn     # (a) only
    python bench/contention.py --threads 2      # the same with a fixed thread count instead of auto
    python bench/contention.py --parts burn --models "1 layer" "2 layers" bidirectional lengths

(a) burn: a training-step loop (``params_only``, as Trainer runs it) at char32,
    small and medium, first on a quiet machine, then next to one CPU-burning
    process per core (``while True: pass``). Reported: the median step time
    of each and their ratio (target: at most 2.5).
(b) pair: ``fastrnn train --steps S`` once alone, then two identical ones
    started together. Throughput is steps per second of the training loop (the
    "S steps in X s" line); the pair's combined throughput over the single
    run's is the figure (target: at least 0.9; two cores shared by two runs).
(c) torch: the same two runs with a plain PyTorch training loop of the same
    model (nn.RNN + nn.Linear + cross_entropy, Adam), for comparison.

Every run uses a warm Numba cache (one untimed run first). The load average
and the number of other busy processes are printed first: quote them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

NCPU = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def burners(k):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


# --------------------------------------------------------------------------
# (a) a step loop next to CPU burners
# --------------------------------------------------------------------------


#: The model a step of (a) trains: today's one layer, or the general model's variants.
MODELS = ("1 layer", "2 layers", "bidirectional", "lengths")


def step_times(name, seconds=3.0, block_ms=50.0, model="1 layer"):
    """Median of per-block mean step times over ``seconds`` of stepping."""
    import fastrnn
    from fastrnn.bench import CONFIGS, make

    params, x, y = make(name)
    T, n, d, h, v, _ = CONFIGS[name]
    kw = {}
    if model == "2 layers":
        params = fastrnn.init_params(d, h, v, dtype=params.U.dtype, seed=0, num_layers=2)
    elif model == "bidirectional":
        params = fastrnn.init_params(d, h, v, dtype=params.U.dtype, seed=0, bidirectional=True)
    elif model == "lengths":  # uniform in [T/4, T], as bench/general.py
        kw["lengths"] = np.random.default_rng(1).integers(max(1, T // 4), T + 1, n)

    def step():
        return fastrnn.loss_and_grads(params, x, y, params_only=True, **kw)

    step()
    t_end = time.perf_counter() + seconds
    blocks = []
    while time.perf_counter() < t_end:
        n, t0 = 0, time.perf_counter()
        while True:
            step()
            n += 1
            dt = time.perf_counter() - t0
            if dt * 1e3 >= block_ms:
                break
        blocks.append(dt / n)
    return statistics.median(blocks)


def part_burn(args):
    import fastrnn

    if args.threads is not None:
        fastrnn.set_num_threads(args.threads)
    rows = {}
    for name in args.configs:
        for model in args.models:
            quiet, busy = [], []
            for _ in range(args.repeats):  # interleaved: quiet, busy, quiet, busy ...
                time.sleep(0.3)
                quiet.append(step_times(name, args.seconds, model=model))
                procs = burners(NCPU)
                try:
                    time.sleep(0.3)
                    busy.append(step_times(name, args.seconds, model=model))
                finally:
                    stop(procs)
            q, b = statistics.median(quiet), statistics.median(busy)
            key = name if model == "1 layer" else f"{name}, {model}"
            rows[key] = {"quiet_ms": q * 1e3, "burn_ms": b * 1e3, "ratio": b / q}
            print(f"  {key:24s} quiet {q * 1e3:8.3f} ms   next to {NCPU} burners {b * 1e3:8.3f} ms   "
                  f"ratio {b / q:5.2f}", flush=True)
    return rows


# --------------------------------------------------------------------------
# (b) and (c): two identical trainings started together
# --------------------------------------------------------------------------

TORCH_TRAIN = textwrap.dedent(
    """
    import sys, time, torch
    steps, T, n, h, v = (int(a) for a in sys.argv[1:6])
    torch.manual_seed(0)
    rnn, head = torch.nn.RNN(v, h), torch.nn.Linear(h, v)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, v, (T + 1, n), generator=g)
    x, y = torch.nn.functional.one_hot(ids[:-1], v).float(), ids[1:]
    hstate = torch.zeros(1, n, h)
    t0 = time.perf_counter()
    for _ in range(steps):
        out, hn = rnn(x, hstate)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(T * n, v), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(list(rnn.parameters()) + list(head.parameters()), 5.0)
        opt.step()
        hstate = hn.detach()
    print(f"{steps} steps in {time.perf_counter() - t0:.3f} s")
    """
)


def _fastrnn_cmd(args, out):
    cmd = [sys.executable, "-m", "fastrnn", "train", str(args.corpus), "--steps", str(args.steps), "--quiet",
           "--sample-length", "0", "--val-fraction", "0", "--checkpoint-every", str(10**9), "--out", out, "--force"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _torch_cmd(args, out):
    return [sys.executable, "-c", TORCH_TRAIN, str(args.steps), "50", "32", "256", str(args.vocab)]


def _run_together(cmds):
    """Start every command at once; (loop seconds, process seconds) of each."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(p.args[:4])} failed:\n{err}")
        m = re.search(r"(\d+) steps in ([\d.]+) s", out)
        results.append((float(m.group(2)), time.perf_counter() - t0))
    return results


def part_pair(args, which):
    make_cmd = _fastrnn_cmd if which == "fastrnn" else _torch_cmd
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"m{i}.npz") for i in range(2)]
        _run_together([make_cmd(args, outs[0])])  # warm the Numba cache (and the page cache)
        singles, pairs = [], []
        for _ in range(args.pair_repeats):
            time.sleep(0.5)
            singles.append(_run_together([make_cmd(args, outs[0])])[0][0])
            time.sleep(0.5)
            pairs.append([r[0] for r in _run_together([make_cmd(args, o) for o in outs])])
    single = statistics.median(singles)
    quiet_tp = args.steps / single
    combined = [sum(args.steps / t for t in pr) for pr in pairs]
    ratio = statistics.median(combined) / quiet_tp
    print(f"  {which:8s} one run {single:6.2f} s ({quiet_tp:6.1f} steps/s); two together: "
          f"{', '.join('/'.join(f'{t:.2f}' for t in pr) + ' s' for pr in pairs)}; "
          f"combined throughput {ratio:.2f}x one run's", flush=True)
    return {"single_s": singles, "pair_s": pairs, "ratio": ratio}


def load_line():
    busy = subprocess.run(["ps", "-eo", "pcpu="], capture_output=True, text=True).stdout.split()
    hot = sum(float(c) > 20 for c in busy)
    return f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {hot} processes above 20% CPU, {NCPU} cores"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=("burn", "pair", "torch"), default=["burn", "pair", "torch"])
    ap.add_argument("--configs", nargs="+", default=["char32", "small", "medium"])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=["1 layer"],
                    help="what (a) trains: the one-layer model, or the general model's variants")
    ap.add_argument("--threads", default=None, help="fastrnn thread setting (default: $FASTRNN_NUM_THREADS or auto)")
    ap.add_argument("--repeats", type=int, default=3, help="quiet/busy alternations per config in (a)")
    ap.add_argument("--seconds", type=float, default=2.0, help="stepping time per measurement in (a)")
    ap.add_argument("--steps", type=int, default=100, help="training steps per run in (b), (c)")
    ap.add_argument("--pair-repeats", type=int, default=2)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    import fastrnn
    from fastrnn.data import default_corpus

    corpus_dir = tempfile.mkdtemp()
    args.corpus = Path(corpus_dir) / "corpus.txt"
    text = default_corpus()[:400_000]
    args.corpus.write_text(text, encoding="utf-8")
    args.vocab = len(set(text))
    print(f"fastrnn {fastrnn.__version__}, backend {fastrnn.get_backend()}, threads {args.threads or fastrnn.get_num_threads()}")
    print(load_line(), flush=True)
    results = {"machine": load_line(), "threads": args.threads or "auto"}
    if "burn" in args.parts:
        print("(a) a step loop next to one CPU-burning process per core")
        results["burn"] = part_burn(args)
    if "pair" in args.parts:
        print("(b) two identical `fastrnn train` runs started together")
        results["pair"] = part_pair(args, "fastrnn")
    if "torch" in args.parts:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("(c) torch is not installed: skipped")
        else:
            print("(c) the same with a PyTorch training loop")
            results["torch"] = part_pair(args, "torch")
    print(load_line())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
