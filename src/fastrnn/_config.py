"""Configuration read once, in one place: backend choice and Numba flags."""

import os

#: Environment variable naming the default backend ("numba", "c" or "numpy").
BACKEND_ENV = "FASTRNN_BACKEND"

#: Backends in order of preference; the first that loads is the default.
BACKEND_ORDER = ("numba", "c", "numpy")

#: The backend the environment asks for, or None. Read once, at import.
REQUESTED_BACKEND = os.environ.get(BACKEND_ENV, "").strip().lower() or None

#: Flags for every @njit kernel. Of fastmath only 'contract': a·b + c may become
#: one fused multiply-add (one rounding instead of two, never a worse result).
#: Nothing that assumes away NaN/inf or approximates a division; the one sum
#: that may be reordered (a softmax row's) says so where it is defined.
NUMBA_FLAGS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy", fastmath={"contract"})

#: The kernels' backward recurrence multiplies dA_{t+1} by a contiguous copy of
#: Wᵀ while a step has fewer than this many multiply-adds (n·h·h), and by the
#: transposed view of W from here on: OpenBLAS 0.3.30 took twice as long on the
#: transposed view at the char32 and small sizes, and 8% less at medium and
#: large (bench/compare.py figures in the README). Both fast backends read this
#: one value (the C kernels take it as an argument).
COPY_WT_BELOW = 1 << 20

#: A per-step product of m rows by the h×h W (forward H_{t-1} W, backward
#: dA_t Wᵀ) runs in the backends' own register-tiled kernel, not the BLAS, when
#: 2 <= m <= TILE_ROWS and W has at most TILE_BYTES: at these sizes OpenBLAS
#: spends most of the call copying all of W into its packed layout (at every
#: step), so its time hardly falls with m. The tiles read W in place, 4 rows by
#: 16 float32 (8 float64) columns at a time, and cost in proportion to m.
#: Measured on AMD Zen 3 (one thread, µs per product, tiles / OpenBLAS 0.3.31):
#: float32 h = 128, m = 8: 3.6 / 12.6, m = 16: 6.9 / 15.6, m = 32: 17 / 29;
#: h = 256, m = 32: 67 / 96; h = 1024, m = 32: 3845 / 1616 (hence the bound on W).
#: The backward recurrence copies Wᵀ whenever the tiles apply. Both fast
#: backends read these two values (the C kernels take them as arguments).
TILE_ROWS = 32
TILE_BYTES = 1 << 18

#: Environment variable fixing the BLAS threads of fastrnn's calls: a positive
#: integer, or "auto" (the default: every core the process may use while the
#: machine is otherwise idle, one thread while other work keeps it busy).
THREADS_ENV = "FASTRNN_NUM_THREADS"

#: The thread setting the environment asks for, or None. Read once, at import.
REQUESTED_THREADS = os.environ.get(THREADS_ENV, "").strip().lower() or None
