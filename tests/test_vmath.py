"""The kernels' own tanh and exp (Numba and C): accuracy in ulps, specials, dtype.

They replace libm's so that the hot loops vectorise; here they are held to
within 1.6 ulp of the exact value (long double as the oracle) on dense grids,
which is as close as numpy's own tanh (1.2–1.4 ulp) and exp (up to 2.4 ulp in
float32).
"""

import re

import numpy as np
import pytest

from fastrnn.backends import resolve

DTYPES = (np.float32, np.float64)
MAX_ULP = 1.6


def _ulps(got, x, fn, dtype):
    """Error of got in units in the last place of the exactly rounded answer."""
    exact = fn(x.astype(np.longdouble))
    rounded = exact.astype(dtype)
    ulp = np.spacing(np.abs(rounded)).astype(np.longdouble)
    ulp = np.where(rounded == 0, np.longdouble(np.finfo(dtype).smallest_subnormal), ulp)
    return np.abs(got.astype(np.longdouble) - exact) / ulp


def _run(kernel, x):
    out = np.empty_like(x)
    kernel(np.ascontiguousarray(x), out)
    assert out.dtype == x.dtype  # float32 stays float32
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_within_ulps(fast_backend, dtype):
    nk = resolve(fast_backend)
    rng = np.random.default_rng(1)
    tiny = np.logspace(-30, 1.5, 20_001)
    x = np.concatenate([np.linspace(-25, 25, 400_001), 3 * rng.standard_normal(200_000), tiny, -tiny]).astype(dtype)
    err = _ulps(_run(nk.tanh_array, x), x, np.tanh, dtype)
    assert err.max() <= MAX_ULP, x[err.argmax()]
    # both sides of the switch from the rational form to exp
    edge = np.nextafter(dtype(0.5493061443340549), dtype(0)) + np.arange(-50, 50) * np.spacing(dtype(0.55))
    assert _ulps(_run(nk.tanh_array, edge.astype(dtype)), edge.astype(dtype), np.tanh, dtype).max() <= MAX_ULP


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_within_ulps_where_normal(fast_backend, dtype):
    nk = resolve(fast_backend)
    z = np.concatenate([np.linspace(-700, 0, 400_001), -np.logspace(-30, 2.85, 20_001)]).astype(dtype)
    z = z[np.exp(z.astype(np.longdouble)) >= np.finfo(dtype).tiny]  # results in the normal range
    err = _ulps(_run(nk.exp_array, z), z, np.exp, dtype)
    assert err.max() <= MAX_ULP, z[err.argmax()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(fast_backend, dtype):
    nk = resolve(fast_backend)
    info = np.finfo(dtype)
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.smallest_subnormal, -info.tiny, 1e4, -1e4], dtype)
    got = _run(nk.tanh_array, x)
    np.testing.assert_array_equal(got, np.tanh(x))
    assert np.signbit(got[4])  # tanh(-0) = -0
    z = np.array([np.nan, -np.inf, 0.0, -0.0, -1e4, -1e30, 5.0], dtype)
    got = _run(nk.exp_array, z)
    np.testing.assert_array_equal(got[:6], np.exp(z[:6]))
    assert got[6] == 1.0  # defined on z <= 0: larger z is clamped to 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_underflows_gradually(fast_backend, dtype):
    """Subnormal results are within one subnormal step of exact, and then exactly 0."""
    nk = resolve(fast_backend)
    info = np.finfo(dtype)
    lo = np.log(np.longdouble(info.smallest_subnormal))
    z = np.linspace(float(lo) - 2, float(np.log(info.tiny)), 10_001).astype(dtype)
    got = _run(nk.exp_array, z).astype(np.longdouble)
    assert np.all(np.abs(got - np.exp(z.astype(np.longdouble))) <= info.smallest_subnormal)


def test_float32_code_has_no_double_arithmetic():
    """No literal or libm call promotes Numba's float32 versions to double."""
    from numba import njit  # a fresh, uncached compile: cached code cannot be inspected

    nk = resolve("numba")
    x = np.zeros(4, np.float32)
    for kernel in (nk.tanh_array, nk.exp_array):
        fresh = njit(error_model="numpy")(kernel.py_func)
        fresh(x, x.copy())
        ir = fresh.inspect_llvm(fresh.signatures[0])
        assert "fadd float" in ir or "fmul float" in ir  # the inspection saw real code
        assert "fpext" not in ir and " double " not in ir


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_hot_loops_vectorise(dtype):
    """The kernels' fused tanh loop and exp compile to SIMD on this machine: the
    tanh's division and the exponent bits of 2^k in vector registers. (Reading
    2^k from a table took a gather that LLVM would not pay for with AVX2, and the
    tanh loop ran scalar.)"""
    from numba import njit  # fresh, uncached compiles: cached code cannot be inspected

    from fastrnn._config import NUMBA_FLAGS

    nk = resolve("numba")
    fl = "float" if dtype == np.float32 else "double"
    z = np.zeros(64, dtype)
    Hs, W, b = np.zeros((3, 4, 8), dtype), np.zeros((8, 8), dtype), np.zeros(8, dtype)
    for kernel, args, vector_op in ((nk._recurrence_forward, (Hs, W, b), rf"fdiv[a-z ]*<\d+ x {fl}>"),
                                    (nk.tanh_array, (z, z.copy()), rf"fdiv[a-z ]*<\d+ x {fl}>"),
                                    (nk.exp_array, (z, z.copy()), r"shl[a-z ]*<\d+ x i(32|64)>")):
        fresh = njit(**dict(NUMBA_FLAGS, cache=False))(kernel.py_func)
        fresh(*args)
        ir = fresh.inspect_llvm(fresh.signatures[0])
        assert re.search(vector_op, ir), (kernel.__name__, vector_op)
