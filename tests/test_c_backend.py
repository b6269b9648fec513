"""The C backend's own promises: the fallback without Numba, its error codes, its build script."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from cases import require_backend, run_python

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(autouse=True)
def _needs_c():
    """Skipped with the reason where C did not build; a failure under FASTRNN_REQUIRE_BACKENDS=1."""
    require_backend("c")


FALLBACK = """
import sys
sys.modules["numba"] = None          # as if numba were not installed
import numpy as np
import fastrnn
print(fastrnn.get_backend(), ",".join(fastrnn.backends()))
assert "numba" in fastrnn.unavailable()
p = fastrnn.init_params(5, 7, 5, dtype=np.float64, seed=0)
x = np.random.default_rng(0).integers(0, 5, (6, 3))
loss, g, _ = fastrnn.loss_and_grads(p, x, x)
ref, r, _ = fastrnn.loss_and_grads(p, x, x, backend="numpy")
assert abs(loss - ref) <= 1e-12 * ref
assert max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(g[:5], r[:5])) <= 1e-12
assert "numba" not in sys.modules or sys.modules["numba"] is None
print("ok")
"""


def test_without_numba_the_default_is_c_and_everything_works():
    out = run_python(FALLBACK, FASTRNN_BACKEND="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["c", "c,numpy", "ok"]


def test_environment_selects_c():
    out = run_python("import fastrnn; print(fastrnn.get_backend())", FASTRNN_BACKEND="c")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "c"


def test_c_refuses_inconsistent_sizes_and_ids():
    from fastrnn._fastrnn_c import ffi, lib

    Hs = np.zeros((3, 1, 2))
    P = np.zeros((2, 1, 2))
    U = np.zeros((4, 2))
    W = np.zeros((2, 2))
    b = np.zeros(2)
    ids = np.array([[1], [4]], dtype=np.int64)  # 4 is out of range for d = 4
    ptr = lambda a: ffi.cast("double *", a.ctypes.data)  # noqa: E731
    iptr = ffi.cast("int64_t *", ids.ctypes.data)
    assert lib.rnn_forward_f64(ptr(Hs), ptr(P), ptr(U), ptr(W), ptr(b), ffi.NULL, iptr, 2, 1, 4, 2) == lib.FASTRNN_EINDEX
    assert lib.rnn_forward_f64(ptr(Hs), ptr(P), ptr(U), ptr(W), ptr(b), ffi.NULL, iptr, 0, 1, 4, 2) == lib.FASTRNN_ESIZE
    assert lib.rnn_forward_f64(ptr(Hs), ptr(P), ptr(U), ptr(W), ptr(b), ffi.NULL, iptr, 2, 1, 4, -2) == lib.FASTRNN_ESIZE
    ids[1, 0] = 3
    assert lib.rnn_forward_f64(ptr(Hs), ptr(P), ptr(U), ptr(W), ptr(b), ffi.NULL, iptr, 2, 1, 4, 2) == lib.FASTRNN_OK
    assert lib.fastrnn_set_blas(ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL) == lib.FASTRNN_EBLAS


def test_c_error_codes_become_exceptions():
    from fastrnn.backends import cffi_kernels

    p = fastrnn.init_params(3, 2, 3, dtype=np.float64, seed=0)
    bad_targets = np.array([[5]])  # validation would catch this; the C side must too
    with pytest.raises(RuntimeError, match="C backend: a token id or target is out of range"):
        cffi_kernels.loss_and_grads(*p, np.array([[1]]), bad_targets, np.zeros((1, 2)), 1.0)


def _build_script():
    sys.path.insert(0, str(ROOT / "src" / "fastrnn"))
    try:
        import _cffi_build
    finally:
        sys.path.pop(0)
    return _cffi_build


def test_cdef_from_header_keeps_declarations_and_constants_only():
    header = """#ifndef FASTRNN_H
#define FASTRNN_H
#include <stdint.h>
#define FASTRNN_OK 0
#define FASTRNN_EINDEX -3
#define FASTRNN_SQUARE(x) ((x) * (x))
/* a comment */
int f_f64(double *out, const int64_t *ids, int64_t n);
#endif
"""
    cdef = _build_script().cdef_from_header(header)
    assert cdef.splitlines() == [
        "#define FASTRNN_OK 0",
        "#define FASTRNN_EINDEX -3",
        "/* a comment */",
        "int f_f64(double *out, const int64_t *ids, int64_t n);",
    ]


def test_compiled_extension_matches_the_header():
    """The built library exports exactly the functions and constants the header
    declares today: a stale build or a header edited without a rebuild fails here."""
    from fastrnn._fastrnn_c import lib

    header = (ROOT / "csrc" / "fastrnn.h").read_text()
    cdef = _build_script().cdef_from_header(header)
    code = re.sub(r"/\*.*?\*/", "", cdef, flags=re.S)  # a comment may read like a call: "scratch (a copy"
    declared = set(re.findall(r"^\s*[\w\s\*]*?\b(\w+)\s*\(", code, flags=re.M))
    constants = set(re.findall(r"^#define (FASTRNN_\w+) ", cdef, flags=re.M))
    assert declared and constants
    assert set(dir(lib)) == declared | constants
    for name in constants:
        value = re.search(rf"^#define {name} (\S+)$", cdef, flags=re.M).group(1)
        assert getattr(lib, name) == int(value), name
