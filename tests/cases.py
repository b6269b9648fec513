"""Shared test cases and helpers. The numpy backend is the reference."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

import fastrnn
from fastrnn._config import BACKEND_ORDER

REFERENCE = "numpy"
# Every backend by name, whether or not it loads here: one that does not load is
# skipped with its reason (or fails, under FASTRNN_REQUIRE_BACKENDS=1, as in CI),
# never dropped from the parametrisation without a word.
OTHER_BACKENDS = [name for name in BACKEND_ORDER if name != REFERENCE]
ALL_BACKENDS = [REFERENCE] + OTHER_BACKENDS
REQUIRE_BACKENDS = os.environ.get("FASTRNN_REQUIRE_BACKENDS", "") in ("1", "true", "yes")


def require_backend(name):
    """``name`` if it loads here; otherwise skip the calling test with the reason,
    or fail it when FASTRNN_REQUIRE_BACKENDS=1 (CI sets it: no backend test may be skipped)."""
    why = fastrnn.unavailable().get(name)
    if why is None:
        return name
    message = f"backend {name!r} is unavailable here: {why}"
    if REQUIRE_BACKENDS:
        pytest.fail(message + " (FASTRNN_REQUIRE_BACKENDS=1: every backend must load)", pytrace=False)
    pytest.skip(message)


def rel_err(actual, expected):
    """Normwise relative error: max |actual − expected| / max |expected|."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


@dataclass(frozen=True)
class Case:
    T: int
    n: int
    d: int
    h: int
    v: int
    ids: bool = False  # token-id inputs instead of dense floats
    with_h0: bool = True
    batch_first: bool = False
    unbatched: bool = False  # one sequence: (T, d) / (T,) inputs, n must be 1
    reduction: str = "mean"

    def __str__(self):
        flags = [
            "ids" if self.ids else "dense",
            "h0" if self.with_h0 else "no-h0",
            "bf" if self.batch_first else "tm",
            self.reduction,
        ] + (["unbatched"] if self.unbatched else [])
        return f"T{self.T}-n{self.n}-d{self.d}-h{self.h}-v{self.v}-" + "-".join(flags)

    def make(self, dtype=np.float64, seed=0):
        """(params, inputs, targets, h0) in the case's layout."""
        rng = np.random.default_rng(seed)
        base = fastrnn.init_params(self.d, self.h, self.v, dtype=np.float64, seed=seed)
        # Non-zero biases and livelier weights, so every gradient is exercised.
        params = fastrnn.Params(
            base.U * 1.5,
            base.W * 0.9,
            base.V * 2.0,
            0.3 * rng.standard_normal(self.h),
            0.3 * rng.standard_normal(self.v),
        )
        params = fastrnn.Params(*(a.astype(dtype) for a in params))
        if self.ids:
            inputs = rng.integers(0, self.d, size=(self.T, self.n))
        else:
            inputs = rng.standard_normal((self.T, self.n, self.d)).astype(dtype)
        targets = rng.integers(0, self.v, size=(self.T, self.n))
        h0 = (0.5 * rng.standard_normal((self.n, self.h))).astype(dtype) if self.with_h0 else None
        if self.unbatched:
            inputs, targets = inputs[:, 0], targets[:, 0]
            h0 = None if h0 is None else h0[0]
        elif self.batch_first:
            inputs, targets = inputs.swapaxes(0, 1).copy(), targets.swapaxes(0, 1).copy()
        return params, inputs, targets, h0

    def kwargs(self, h0):
        return dict(h0=h0, reduction=self.reduction, batch_first=self.batch_first)


CASES = [
    Case(1, 1, 1, 1, 2),  # the smallest model there is
    Case(1, 1, 3, 4, 2, with_h0=False),
    Case(1, 3, 2, 3, 4),
    Case(4, 1, 1, 1, 2),  # d = h = 1 through time
    Case(3, 2, 1, 5, 2),
    Case(5, 3, 4, 6, 7),
    Case(5, 3, 4, 6, 7, reduction="sum"),
    Case(4, 2, 5, 1, 3),  # h = 1
    Case(2, 4, 3, 5, 2, with_h0=False),
    Case(6, 2, 3, 4, 5, batch_first=True),
    Case(6, 2, 3, 4, 5, batch_first=True, reduction="sum", with_h0=False),
    Case(7, 1, 3, 3, 3, unbatched=True),
    Case(7, 1, 3, 3, 3, unbatched=True, with_h0=False, reduction="sum"),
    Case(3, 3, 6, 4, 6, ids=True),
    Case(1, 1, 5, 3, 5, ids=True),
    Case(1, 4, 1, 2, 2, ids=True, with_h0=False),  # d = 1: every id is 0
    Case(5, 2, 7, 5, 7, ids=True, reduction="sum"),
    Case(4, 3, 5, 4, 5, ids=True, batch_first=True),
    Case(6, 1, 4, 4, 4, ids=True, unbatched=True),
    Case(8, 2, 3, 8, 4, with_h0=False),
    Case(10, 3, 2, 3, 2, ids=True, with_h0=False),
    Case(3, 5, 8, 8, 9, batch_first=True),
]


def case_id(case: Case) -> str:
    return str(case)


def as_time_major(case: Case, a: Optional[np.ndarray]):
    """A per-timestep array in the case's layout, brought to (T, n, ...)."""
    if a is None:
        return None
    if case.unbatched:
        return a[:, None]
    return a.swapaxes(0, 1) if case.batch_first else a


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter with extra environment variables.

    It runs from the tests folder: from the repository root, ``python -c`` would
    import the source tree's fastrnn (without its compiled extension) instead of
    the installed one.
    """
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, cwd=Path(__file__).parent,
        capture_output=True, text=True, timeout=120,
    )
