"""Cold start: `fastrnn train` on an empty Numba cache.

    python bench/coldstart.py [--repeats 3] [--backend numba]

Each run starts `fastrnn train --steps 1` (default corpus, h = 256, T = 50,
n = 32, no validation, no sample) with NUMBA_CACHE_DIR pointing to a fresh
empty folder, and reports the seconds from launch to its first line of output
(target: at most 3 s), the time of the first training step as the CLI reports
it (target: at most 10 s), and the whole run. Then the same once more on the
now warm cache. Medians over --repeats.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(cache, backend):
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fastrnn", "train", "--steps", "1", "--quiet", "--val-fraction", "0",
               "--sample-length", "0", "--out", os.path.join(tmp, "m.npz"), "--backend", backend]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first_line = p.stdout.readline()
        t_first = time.perf_counter() - t0
        rest, err = p.communicate(timeout=600)
        total = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(err)
    step = float(re.search(r"1 steps in ([\d.]+) s", rest).group(1))
    compiling = "compiling the Numba kernels" in rest
    return t_first, step, total, compiling, first_line.strip()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="numba")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}")
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(one_run(cache, args.backend))
            warm.append(one_run(cache, args.backend))
    for name, runs in (("cold cache", cold), ("warm cache", warm)):
        first, step, total = (statistics.median(r[i] for r in runs) for i in range(3))
        said = sum(r[3] for r in runs)
        print(f"{name}: first line {first:5.2f} s, first step {step:6.2f} s, whole run {total:6.2f} s "
              f"(median of {len(runs)}; said 'compiling' in {said} of {len(runs)})")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
