"""Benchmark configurations (T, n, d, h, v, token ids) and their data."""

import numpy as np

import fastrnn

CONFIGS = {
    "char": (25, 1, 65, 100, 65, True),  # min-char-rnn's shape
    "char32": (25, 32, 65, 100, 65, True),
    "small": (50, 32, 64, 128, 64, False),
    "medium": (100, 64, 256, 256, 256, False),
    "large": (100, 128, 512, 1024, 512, False),
}
QUICK = ("char", "char32", "small")


def make(name, dtype=np.float32, seed=0):
    """(params, inputs, targets) for a configuration."""
    T, n, d, h, v, ids = CONFIGS[name]
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(d, h, v, dtype=dtype, seed=seed)
    inputs = rng.integers(0, d, (T, n)) if ids else rng.standard_normal((T, n, d)).astype(dtype)
    return params, inputs, rng.integers(0, v, (T, n))
