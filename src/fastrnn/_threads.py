"""The one thread policy: how many threads the BLAS under the kernels may use.

The Numba and C kernels call SciPy's bundled OpenBLAS (Numba's ``np.dot``
goes through ``scipy.linalg.cython_blas``; the C backend takes the same
library's sgemm/dgemm). Its thread count is process-wide. fastrnn sets it for
the duration of each of its own kernel calls and puts the caller's value back
afterwards, so numpy's OpenBLAS (a separate library), torch's pools and
whatever the caller chose are left as they were. It does so through the
library's own ``openblas_set_num_threads``/``openblas_get_num_threads``
exports, loaded with ctypes: threadpoolctl is not needed at run time.

The setting is ``fastrnn.set_num_threads(k)``, else ``$FASTRNN_NUM_THREADS``,
else ``"auto"``:

* a positive integer k: k threads in every call;
* ``"auto"``: every core this process may run on (``os.sched_getaffinity``)
  while the rest of the machine is idle, and fewer — one on a 2-core machine —
  while other processes keep cores busy. On a busy machine a pool of spinning
  OpenBLAS threads waits for cores that other processes hold: two trainings on
  two cores each with two BLAS threads ran 70× slower than one alone. "Busy" is
  measured, not guessed: every ``_INTERVAL`` seconds (at the first kernel call
  after that much time) the CPU time all cores spent busy according to
  ``/proc/stat``, less this process's own CPU time, says how many cores other
  work used meanwhile. Where ``/proc/stat`` does not exist, auto means every core.
  Auto never goes above the count the caller gave SciPy's BLAS
  (``OPENBLAS_NUM_THREADS``, threadpoolctl).

Setting and restoring the count costs about 1.5 µs per call (0.3 µs when it
already has the wanted value, the usual case on a quiet machine).
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ._config import REQUESTED_THREADS, THREADS_ENV

__all__ = ["set_num_threads", "get_num_threads", "using", "call", "current"]

#: Seconds between two looks at how busy the machine is.
_INTERVAL = 0.2
#: Cores' worth of other work (averaged over an interval) that costs a thread:
#: with ``others`` cores busy elsewhere auto uses ``ncpu - ceil(others - _SLACK)``.
_SLACK = 0.5


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


_CPUS = _cpus()
NCPU = len(_CPUS)


# --------------------------------------------------------------------------
# The BLAS: SciPy's OpenBLAS, through its exported thread functions.
# --------------------------------------------------------------------------


def _find_blas():
    """(set, get) ctypes functions of SciPy's OpenBLAS, or (None, None)."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.origin:
        return None, None
    libs = Path(spec.origin).parent.parent / "scipy.libs"
    for path in sorted(libs.glob("libscipy_openblas*.so*")):
        if "64_" in path.name:  # the ILP64 build is numpy's, not the one the kernels call
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for prefix in ("scipy_", ""):  # scipy-openblas prefixes its exports
            try:
                set_ = getattr(lib, prefix + "openblas_set_num_threads")
                get_ = getattr(lib, prefix + "openblas_get_num_threads")
            except AttributeError:
                continue
            set_.argtypes, set_.restype = [ctypes.c_int], None
            get_.argtypes, get_.restype = [], ctypes.c_int
            return set_, get_
    return None, None


_blas_set, _blas_get = _find_blas()


def blas_threads():
    """The thread count SciPy's OpenBLAS is set to now (None if it is not found)."""
    return None if _blas_get is None else _blas_get()


# --------------------------------------------------------------------------
# The setting.
# --------------------------------------------------------------------------


def check(value, what="threads"):
    """A thread setting: a positive integer, or None for ``None``/``"auto"``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) and not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be a positive integer or 'auto', got {value!r}")
    try:
        k = int(value)
    except (TypeError, ValueError):  # a str that is not a number; an array of several numbers
        raise ValueError(f"{what} must be a positive integer or 'auto', got {value!r}") from None
    if k < 1:
        raise ValueError(f"{what} must be a positive integer or 'auto', got {value!r}")
    return k


_setting = None  # None: auto
_env_read = False
_local = threading.local()  # .override: a Trainer's threads= while it steps


def _global_setting():
    global _setting, _env_read
    if not _env_read:
        _setting = check(REQUESTED_THREADS, f"${THREADS_ENV}")
        _env_read = True
    return _setting


def set_num_threads(k):
    """Set how many BLAS threads fastrnn's kernels use; returns the previous setting.

    ``k`` is a positive integer, or ``None``/``"auto"``: every core while the
    machine is otherwise idle, one thread per core left free while other
    processes keep cores busy (the default). The default comes from
    ``$FASTRNN_NUM_THREADS`` when set. The setting applies only inside
    fastrnn's own calls: SciPy's OpenBLAS is set for each call and put back
    afterwards, and numpy's and torch's thread pools are never touched.
    Results do not depend on it: bit-identical for any count in float64; in
    float32 up to the last bits of OpenBLAS's sgemm where it rounds by threads.
    """
    global _setting
    previous = _global_setting()
    _setting = check(k, "threads")
    return "auto" if previous is None else previous


def get_num_threads():
    """The setting: a positive integer, or ``"auto"``."""
    s = _global_setting()
    return "auto" if s is None else s


@contextmanager
def using(k):
    """Within the block, fastrnn's calls from this thread use ``k`` threads
    (None: the global setting). A Trainer's ``threads=`` works this way."""
    k = check(k, "threads")
    previous = getattr(_local, "override", None)
    _local.override = k
    try:
        yield
    finally:
        _local.override = previous


# --------------------------------------------------------------------------
# Auto: how busy is the machine?
# --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_lock = threading.Lock()
_last = None  # (monotonic time, busy seconds of our cores, our own CPU seconds)
_next = 0.0
_auto = NCPU


def _own_cpu():
    t = os.times()
    return t.user + t.system


def _read_stat():
    """(busy seconds summed over this process's cores, tasks runnable now), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    wanted = {b"cpu%d" % i for i in _CPUS}
    busy = 0
    running = 1
    for line in text.splitlines():
        if line.startswith(b"cpu"):
            fields = line.split()
            if fields[0] in wanted:
                # user nice system idle iowait irq softirq steal (guest is inside user)
                vals = [int(x) for x in fields[1:9]]
                busy += sum(vals) - vals[3] - vals[4]
        elif line.startswith(b"procs_running"):
            running = int(line.split()[1])
    return busy / _TICK, running


def _threads_for(others):
    """Threads for auto when other processes used ``others`` cores."""
    return max(1, NCPU - max(0, math.ceil(others - _SLACK)))


def _resample(now):
    global _last, _next, _auto
    stat = _read_stat()
    _next = now + _INTERVAL
    if stat is None:
        _auto, _next = NCPU, math.inf
        return
    busy, running = stat
    own = _own_cpu()
    if _last is None:
        _auto = _threads_for(running - 1)  # first look: who else is runnable right now
    else:
        t0, busy0, own0 = _last
        wall = now - t0
        if wall > 0:
            _auto = _threads_for(((busy - busy0) - (own - own0)) / wall)
    _last = (now, busy, own)


def _fixed():
    """The fixed count in force (a Trainer's, else the global one), or None for auto."""
    k = getattr(_local, "override", None)
    return _global_setting() if k is None else k


def current():
    """The number of BLAS threads fastrnn's next call would use."""
    k = _fixed()
    if k is not None:
        return k
    before = blas_threads()
    return _auto_threads() if before is None else min(_auto_threads(), before)


def cores():
    """Threads for work split into independent blocks (:mod:`fastrnn.backends._parallel`):
    the fixed count, or under auto every core, busy machine or not (capped by a
    limit the caller gave SciPy's BLAS). Blocks do not wait for each other
    until they are done, and wait without spinning, so next to other work they
    take their fair share of the cores instead of stalling."""
    k = _fixed()
    if k is not None:
        return k
    before = blas_threads()
    return NCPU if before is None else min(NCPU, before)


def _auto_threads():
    if NCPU == 1:
        return 1
    now = time.monotonic()
    if now >= _next:
        with _lock:
            if now >= _next:
                _resample(now)
    return _auto


@contextmanager
def blas(k):
    """Within the block SciPy's OpenBLAS uses ``k`` threads; the count before comes back after."""
    before = blas_threads()
    if before is None or before == k:
        yield
        return
    _blas_set(k)
    try:
        yield
    finally:
        _blas_set(before)


def call(fn, *args):
    """``fn(*args)`` with SciPy's OpenBLAS set to :func:`current` threads, then put back.

    Auto never raises the count above what the caller set (e.g. with
    ``OPENBLAS_NUM_THREADS`` or threadpoolctl); a fixed count is used as given.
    """
    if _blas_get is None:
        return fn(*args)
    before = _blas_get()
    want = _fixed()
    if want is None:
        want = min(_auto_threads(), before)
    if before == want:
        return fn(*args)
    _blas_set(want)
    try:
        return fn(*args)
    finally:
        _blas_set(before)
