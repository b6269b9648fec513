"""Validation once per run: the Trainer's per-step path against the public
function and against jax, and CharRNN.sample's speed.

    python bench/steppath.py [--configs char char32] [--repeats 11]

* ``public``: fastrnn.loss_and_grads(..., params_only=True), every argument
  checked (what bench/compare.py times);
* ``trainer path``: what Trainer.step calls per step: the parameters checked
  once beforehand, the batch checked every step;
* ``jax``: bench/compare.py's lax.scan step under jit(value_and_grad).

Timing as in bench/compare.py (interleaved turns, medians). Then characters
per second of CharRNN.sample at h = 256 (vocabulary 65), median of 5 runs of
5,000 characters (target: at least 20,000).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import fastrnn  # noqa: E402
from fastrnn import api  # noqa: E402
from compare import jax_step, time_interleaved  # noqa: E402
from fastrnn.bench import make  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["char", "char32"])
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args(argv)
    for name in args.configs:
        params, x, y = make(name, np.float32)
        h0 = np.zeros((x.shape[1], params.U.shape[1]), np.float32)
        p, _ = api._checked_params(params)
        steps = {
            "public": lambda: fastrnn.loss_and_grads(params, x, y, h0=h0, params_only=True),
            "trainer path": lambda: api._step_loss_and_grads(p, x, y, h0),
        }
        a = fastrnn.loss_and_grads(params, x, y, h0=h0, params_only=True)
        b = api._step_loss_and_grads(p, x, y, h0)
        assert a[0] == b[0] and all(np.array_equal(u, w) for u, w in zip(a[1][:6], b[1][:6]))
        try:
            steps["jax"] = jax_step(params, x, y)
        except ImportError:
            print("  jax is not installed: skipped")
        med = time_interleaved(steps, args.repeats)
        line = ", ".join(f"{k} {v * 1e6:.1f} µs" for k, v in med.items())
        if "jax" in med:
            line += f"; jax ÷ trainer path {med['jax'] / med['trainer path']:.2f}, jax ÷ public {med['jax'] / med['public']:.2f}"
        print(f"{name} float32: {line}", flush=True)
    vocab = fastrnn.Vocab.from_text("".join(chr(32 + i) for i in range(65)))
    model = fastrnn.CharRNN(vocab, 256, seed=0)
    model.sample(200, seed=0)
    rates = []
    for r in range(5):
        t0 = time.perf_counter()
        text = model.sample(5000, seed=r)
        rates.append(5000 / (time.perf_counter() - t0))
        assert len(text) == 5001
    print(f"sample at h=256, v=65: {statistics.median(rates):,.0f} characters/s (median of 5 runs of 5,000)")


if __name__ == "__main__":
    main()
