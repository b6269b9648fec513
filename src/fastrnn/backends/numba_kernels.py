"""The Numba backend: the reference's math as fused loops around BLAS calls.

Same signatures and semantics as :mod:`fastrnn.backends.reference`. Layout of
the work for one training step (sizes T, n, d, h, v):

* every matrix product that is not sequential in time runs once over all
  T·n rows: the input projection X U, the output projection H V, dO Vᵀ and the
  gradients dV = Hᵀ dO, dW = H_prevᵀ dA, dU = Xᵀ dA, dX = dA Uᵀ;
* the time loops do only what must be sequential: H_{t-1} W (forward) and
  dA_{t+1} Wᵀ (backward), each a BLAS call into a preallocated buffer, with
  bias, tanh and tanh' fused into one pass over the result;
* softmax and cross-entropy are fused: one pass per row turns the logits into
  dO in place and accumulates the loss (and dc);
* with ``params_only`` (:func:`_params_grads`) dO Vᵀ, dW and dU run over chunks
  of T/8 timesteps instead, so that dA is never held for all T at once;
* tanh and exp are this module's own (below), so the loops vectorise;
* the row-by-row sums over all T·n rows (db, dc, dU for token ids) accumulate
  in float64 (see _ACC);
* the backward recurrence multiplies by a contiguous copy of Wᵀ below
  fastrnn._config.COPY_WT_BELOW multiply-adds per step (the C backend reads
  the same constant).

Fastmath: NUMBA_FLAGS (fastrnn._config) allows only 'contract'; the one
kernel that adds 'reassoc' is _sum, and says why where it is defined.

Inside Numba, ``np.dot`` calls SciPy's BLAS, which is why SciPy is a run-time
dependency of this backend. Arithmetic stays in the arrays' dtype (no literal
is allowed to promote float32 work to float64), except for the deliberate
float64 accumulators of _ACC.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from numba.core import cgutils

from .._config import COPY_WT_BELOW, NUMBA_FLAGS, TILE_BYTES, TILE_ROWS

# --------------------------------------------------------------------------
# Elementwise math that vectorises.
#
# A call to libm's tanh or exp stops LLVM from vectorising a loop (~14 ns per
# tanh). These versions are branch-free straight-line code, so the loops that
# use them compile to SIMD. Both stay within 1.6 ulp of the exact value (numpy's
# own are within 1.2 ulp for tanh, 2.5 ulp for float32 exp); tests/test_vmath.py
# measures that against long double on dense grids, specials included.
#
# exp(z), z <= 0: z = k ln2 + r with |r| <= ln2/2 (ln2 split in two so k·LN2_HI
# is exact), exp(r) by its Taylor series (degree 13 in float64, 7 in float32:
# the truncation error is below 0.1 ulp), times 2^k built from its exponent bits
# in two halves, so that subnormal results are rounded once (as csrc/vmath.h).
# A table of 2^k would need a gather, which LLVM prices too high to vectorise
# for AVX2 (AMD Zen 3: the tanh loop ran scalar at 7 ns an element, 0.3 ms
# instead of 1.5 ms over 204,800).
# tanh(x): a = |x|; for a < ln(3)/2 Cody & Waite's rational form a + a·g·P(g)/Q(g),
# g = a²; above it (1 − e)/(1 + e) with e = exp(−2a); the sign copied back. Both
# forms are computed and one selected, which is what lets the loop vectorise.
# NaN propagates, ±inf saturates, exp underflows to 0.
# --------------------------------------------------------------------------

_LN3_OVER_2 = 0.5493061443340549  # where tanh switches from the rational form to exp
_INV_LN2 = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # 0x1.62e42fee00000p-1: 32 significant bits, so k·_LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10  # ln 2 − _LN2_HI
_EXP_MIN = -745.5  # exp(z) rounds to 0 in float64 below this
_K_MIN = -1076  # smallest k = round(z / ln 2) kept (exp(z) is 0 below): 2^k = 2^(k/2)·2^(k/2), both normal
_TANH_ONE = 19.5  # tanh(x) rounds to 1 in float64 above this
# Cody & Waite (1980), tanh for |x| < ln(3)/2: x + x·g·(P2 g² + P1 g + P0)/(g³ + Q2 g² + Q1 g + Q0)
_TP0, _TP1, _TP2 = -0.16134119023996228053e4, -0.99225929672236083313e2, -0.96437492777225469787e0
_TQ0, _TQ1, _TQ2 = 0.48402357071988688686e4, 0.22337720718962312926e4, 0.11274474380534949335e3

_f32 = np.float32
_LN3_OVER_2_32 = _f32(_LN3_OVER_2)
_INV_LN2_32 = _f32(_INV_LN2)
_LN2_HI_32 = _f32(0.693359375)  # 9 significant bits
_LN2_LO_32 = _f32(-2.1219444005469057e-4)  # ln 2 − _LN2_HI_32
_EXP_MIN_32 = _f32(-104.0)
_K_MIN_32 = -151
_TANH_ONE_32 = _f32(9.1)
# Cody & Waite, single precision: x + x·g·(P1 g + P0)/(g + Q0)
_TP0_32, _TP1_32, _TQ0_32 = _f32(-0.8237728127), _f32(-0.3831010665e-2), _f32(0.2471319654e1)


@intrinsic
def _pow2(typingctx, k, bits):
    """2^k for an integer k in the normal range, from its exponent bits; ``bits``
    a literal 32 (float32, k in [-126, 127]) or 64 (float64, [-1022, 1023])."""
    if not isinstance(k, types.Integer) or not isinstance(bits, types.IntegerLiteral):
        return None
    width = bits.literal_value
    mantissa, bias, out = {32: (23, 127, types.float32), 64: (52, 1023, types.float64)}[width]

    def codegen(context, builder, sig, args):
        i = ir.IntType(width)
        kw = args[0]
        if k.bitwidth < width:
            kw = builder.sext(kw, i)
        elif k.bitwidth > width:
            kw = builder.trunc(kw, i)
        exponent = builder.shl(builder.add(kw, ir.Constant(i, bias)), ir.Constant(i, mantissa))
        return builder.bitcast(exponent, context.get_value_type(out))  # the bits of 2^k

    return out(k, bits), codegen


@njit(inline="always", **NUMBA_FLAGS)
def _exp_f64(z):
    z = 0.0 if z > 0.0 else z
    z = _EXP_MIN if z < _EXP_MIN else z  # also -inf; NaN passes through
    k = np.floor(z * _INV_LN2 + 0.5)
    k = float(_K_MIN) if not (k >= _K_MIN) else k  # also NaN: keeps the conversion defined
    r = (z - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 / 6227020800.0  # 1/13!
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    k_int = np.int32(k)
    k_hi = k_int >> 1
    return p * _pow2(k_hi, 64) * _pow2(k_int - k_hi, 64)


@njit(inline="always", **NUMBA_FLAGS)
def _exp_f32(z):
    z = _f32(0.0) if z > _f32(0.0) else z
    z = _EXP_MIN_32 if z < _EXP_MIN_32 else z
    k = np.floor(z * _INV_LN2_32 + _f32(0.5))
    k = _f32(_K_MIN_32) if not (k >= _f32(_K_MIN_32)) else k
    r = (z - k * _LN2_HI_32) - k * _LN2_LO_32
    p = _f32(1.0 / 5040.0)  # 1/7!
    p = p * r + _f32(1.0 / 720.0)
    p = p * r + _f32(1.0 / 120.0)
    p = p * r + _f32(1.0 / 24.0)
    p = p * r + _f32(1.0 / 6.0)
    p = p * r + _f32(0.5)
    p = p * r + _f32(1.0)
    p = p * r + _f32(1.0)
    k_int = np.int32(k)
    k_hi = k_int >> 1
    return p * _pow2(k_hi, 32) * _pow2(k_int - k_hi, 32)


@njit(inline="always", **NUMBA_FLAGS)
def _tanh_f64(x):
    a = abs(x)
    a = _TANH_ONE if a > _TANH_ONE else a
    g = a * a
    e = _exp_f64(-2.0 * a)
    small = a < _LN3_OVER_2
    # Both forms as base + num/den, so one division serves either:
    # a + a·g·P(g)/Q(g) below ln(3)/2, and (1 − e)/(1 + e) = 1 − 2e/(1 + e) above it.
    base = a if small else 1.0
    num = a * g * ((_TP2 * g + _TP1) * g + _TP0) if small else -2.0 * e
    den = ((g + _TQ2) * g + _TQ1) * g + _TQ0 if small else 1.0 + e
    return math.copysign(base + num / den, x)


@njit(inline="always", **NUMBA_FLAGS)
def _tanh_f32(x):
    a = abs(x)
    a = _TANH_ONE_32 if a > _TANH_ONE_32 else a
    g = a * a
    e = _exp_f32(_f32(-2.0) * a)
    small = a < _LN3_OVER_2_32
    base = a if small else _f32(1.0)
    num = a * g * (_TP1_32 * g + _TP0_32) if small else _f32(-2.0) * e
    den = g + _TQ0_32 if small else _f32(1.0) + e
    return math.copysign(base + num / den, x)


def vtanh(x):
    """tanh that vectorises inside Numba loops; float32 stays float32."""
    return np.tanh(x)


def vexp(z):
    """exp for z <= 0 (positive z is clamped to 0) that vectorises inside Numba loops."""
    return np.exp(min(z, 0.0))


@overload(vtanh, inline="always")
def _vtanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    if x == types.float64:
        return lambda x: _tanh_f64(x)


@overload(vexp, inline="always")
def _vexp_impl(z):
    if z == types.float32:
        return lambda z: _exp_f32(z)
    if z == types.float64:
        return lambda z: _exp_f64(z)


@njit(**NUMBA_FLAGS)
def tanh_array(x, out):
    """out = vtanh(x), elementwise over 1-D arrays (for tests and measurements)."""
    for i in range(x.size):
        out[i] = vtanh(x[i])


@njit(**NUMBA_FLAGS)
def exp_array(z, out):
    """out = vexp(z), elementwise over 1-D arrays (for tests and measurements)."""
    for i in range(z.size):
        out[i] = vexp(z[i])


# --------------------------------------------------------------------------
# The per-step product of few rows, C = A B (A: m×k, B: k×h, all C-contiguous),
# in register tiles (see _config.TILE_ROWS for when, and why not the BLAS).
# A tile is R <= 4 rows by two SIMD vectors of columns (16 float32, 8 float64):
# for each k, R broadcasts of A[i, k] times two vector loads of B's row k, into
# 2R vector accumulators held in registers; the last tile of a row masks its
# columns. LLVM has no way to be told this from Python loops (the accumulators
# of a loop-written tile went through memory, at half the speed), so the tile
# is written in LLVM IR below. Each C[i, j] is one fused multiply-add chain
# over k in order, the same whichever tile, mask or row block computes it.
# --------------------------------------------------------------------------


@intrinsic
def _tile(typingctx, A, i0, B, j0, C, R, cols):
    """C[i0:i0+R, j0:j0+2L] = A[i0:i0+R] @ B[:, j0:j0+2L] for a literal R, L lanes
    of a 256-bit vector; only the first ``cols`` of the 2L columns when ``cols``
    is not a literal (the row's last, partial tile)."""
    if not (isinstance(R, types.IntegerLiteral) and all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 2
                                                          for a in (A, B, C))
            and A.dtype in (types.float32, types.float64) and B.dtype == A.dtype == C.dtype):
        return None  # C-contiguous 2-D operands of one float dtype only: the tile reads rows in place
    rows = R.literal_value
    masked = not isinstance(cols, types.IntegerLiteral)
    lanes = 8 if A.dtype == types.float32 else 4
    size = 32 // lanes
    name = f"v{lanes}{'f32' if lanes == 8 else 'f64'}"

    def codegen(context, builder, sig, args):
        a, i0v, b, j0v, c, _, colsv = args
        ft = context.get_value_type(sig.args[0].dtype)
        vt = ir.VectorType(ft, lanes)
        intp = context.get_value_type(types.intp)
        i32 = ir.IntType(32)
        byte = ir.IntType(8).as_pointer()

        def base_and_stride(ty, value):
            arr = context.make_array(ty)(context, builder, value)
            return builder.bitcast(arr.data, byte), builder.load(cgutils.gep(builder, arr._get_ptr_by_name("strides"), 0, 0))

        (pa, lda), (pb, ldb), (pc, ldc) = (base_and_stride(sig.args[k], args[k]) for k in (0, 2, 4))
        at = lambda p, offset, ty: builder.bitcast(builder.gep(p, [offset]), ty.as_pointer())  # noqa: E731
        const = lambda v: ir.Constant(intp, v)  # noqa: E731
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), f"llvm.fma.{name}")
        if masked:
            mt = ir.VectorType(ir.IntType(1), lanes)
            iv = ir.VectorType(i32, lanes)
            n = builder.trunc(colsv, i32)
            n = builder.shuffle_vector(builder.insert_element(ir.Constant(iv, ir.Undefined), n, ir.Constant(i32, 0)),
                                       ir.Constant(iv, ir.Undefined), ir.Constant(iv, [0] * lanes))
            masks = [builder.icmp_signed("<", ir.Constant(iv, [p * lanes + q for q in range(lanes)]), n) for p in (0, 1)]
            load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt.as_pointer(), i32, mt, vt]),
                                                  f"llvm.masked.load.{name}.p0{name}")
            store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, mt]),
                                                   f"llvm.masked.store.{name}.p0{name}")
        zero = ir.Constant(vt, [0.0] * lanes)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in (0, 1)] for _ in range(rows)]
        col = builder.mul(j0v, const(size))
        row_a = [builder.mul(builder.add(i0v, const(r)), lda) for r in range(rows)]
        broadcast = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        k_count = builder.load(cgutils.gep(builder, context.make_array(sig.args[0])(context, builder, a)._get_ptr_by_name("shape"), 0, 1))
        with cgutils.for_range(builder, k_count) as loop:
            k = loop.index
            row_b = builder.add(builder.mul(k, ldb), col)
            w = []
            for p in (0, 1):
                ptr = at(pb, builder.add(row_b, const(p * 32)), vt)
                w.append(builder.call(load, [ptr, ir.Constant(i32, size), masks[p], zero]) if masked
                         else builder.load(ptr, align=size))
            for r in range(rows):
                x = builder.load(at(pa, builder.add(row_a[r], builder.mul(k, const(size))), ft))
                x = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0)),
                                           ir.Constant(vt, ir.Undefined), broadcast)
                for p in (0, 1):
                    builder.store(builder.call(fma, [x, w[p], builder.load(acc[r][p])]), acc[r][p])
        for r in range(rows):
            row_c = builder.add(builder.mul(builder.add(i0v, const(r)), ldc), col)
            for p in (0, 1):
                ptr = at(pc, builder.add(row_c, const(p * 32)), vt)
                if masked:
                    builder.call(store, [builder.load(acc[r][p]), ptr, ir.Constant(i32, size), masks[p]])
                else:
                    builder.store(builder.load(acc[r][p]), ptr, align=size)
        return context.get_dummy_value()

    return types.none(A, i0, B, j0, C, R, cols), codegen


@njit(**NUMBA_FLAGS)
def tiles_dot(A, B, C):
    """C = A B in register tiles (A: m×k, B: k×h, C: m×h, all C-contiguous). Column
    panels outside (a panel of B stays in L1 over all rows), rows in fours inside.
    R and whole-or-masked are literals at each call, all in this one function (each
    extra compiled function cost ~0.6 s on a cold cache)."""
    m = A.shape[0]
    h = B.shape[1]
    if B.shape[0] != A.shape[1] or C.shape[0] != m or C.shape[1] != h:
        raise ValueError("tiles_dot: A (m, k), B (k, h) and C (m, h) do not match")
    width = 64 // A.itemsize  # the columns of one tile: two 256-bit vectors
    for j0 in range(0, h, width):
        cols = h - j0  # a whole tile from here, or the row's last, masked one
        for i in range(0, m, 4):
            r = m - i
            if cols >= width:
                if r >= 4:
                    _tile(A, i, B, j0, C, 4, 0)
                elif r == 3:
                    _tile(A, i, B, j0, C, 3, 0)
                elif r == 2:
                    _tile(A, i, B, j0, C, 2, 0)
                else:
                    _tile(A, i, B, j0, C, 1, 0)
            elif r >= 4:
                _tile(A, i, B, j0, C, 4, cols)
            elif r == 3:
                _tile(A, i, B, j0, C, 3, cols)
            elif r == 2:
                _tile(A, i, B, j0, C, 2, cols)
            else:
                _tile(A, i, B, j0, C, 1, cols)


@njit(**NUMBA_FLAGS)
def tiles_apply(m, h, itemsize):
    """Whether a per-step product of m rows by an h×h matrix runs in the tiles."""
    return 2 <= m <= TILE_ROWS and h * h * itemsize <= TILE_BYTES


@njit(**NUMBA_FLAGS)
def step_dot(A, B, C):
    """C = A B for one step of the recurrence (B h×h and C-contiguous)."""
    if tiles_apply(A.shape[0], B.shape[1], A.itemsize):
        tiles_dot(A, B, C)
    else:
        np.dot(A, B, C)


step_product = step_dot  # the backends' common name for one step's product (tests and measurements)


# --------------------------------------------------------------------------
# Building blocks. Each writes its results into buffers it is given; a few
# allocate small scratch of their own (one (n, h) product, a copy of Wᵀ).
# --------------------------------------------------------------------------


# Copies are explicit loops: an array assignment (a[...] = b) makes Numba
# compile its shape-mismatch message, string formatting and all, which took
# 2.9 s of CPU time on a cold cache (a third of the first training step's).


@njit(**NUMBA_FLAGS)
def _copy_rows(dst, src):
    """dst[i, j] = src[i, j] for 2-D arrays of one shape."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@njit(**NUMBA_FLAGS)
def _gather_rows(XU, U, ids):
    """XU[t, i] = U[ids[t, i]]: X_t U for one-hot rows of X. XU may be a view."""
    T, n = ids.shape
    h = U.shape[1]
    for t in range(T):
        for i in range(n):
            k = ids[t, i]
            for j in range(h):
                XU[t, i, j] = U[k, j]


@njit(**NUMBA_FLAGS)
def _recurrence_forward(Hs, W, b):
    """Hs[t+1] = tanh(Hs[t+1] + Hs[t] W + b) for t = 0..T-1.

    On entry Hs[0] holds h0 and Hs[t+1] holds X_t U; on return Hs[t+1] = H_t.
    Hs: (T+1, n, h), W: (h, h), b: (h,). One (n, h) scratch takes H_{t-1} W.
    """
    n, h = Hs.shape[1], Hs.shape[2]
    HW = np.empty((n, h), dtype=Hs.dtype)
    for t in range(Hs.shape[0] - 1):
        step_dot(Hs[t], W, HW)  # H_{t-1} W
        At = Hs[t + 1]
        for i in range(n):
            for j in range(h):
                At[i, j] = vtanh(At[i, j] + HW[i, j] + b[j])  # H_t = tanh(X_t U + H_{t-1} W + b)


@njit(**NUMBA_FLAGS)
def _transposed_W(W, n, fewest):
    """A contiguous copy of Wᵀ where that is faster for n rows (see
    _config.COPY_WT_BELOW) or where the tiles may take a step of ``fewest`` rows
    (they need it), else an empty stand-in."""
    h = W.shape[0]
    if n * h * h < COPY_WT_BELOW or tiles_apply(max(fewest, 2), h, W.itemsize):
        return np.ascontiguousarray(W.T)
    return np.empty((0, 0), dtype=W.dtype)


@njit(**NUMBA_FLAGS)
def _recurrence_backward(G, H, W, WTc, carry, db):
    """Turn G[t] = the non-recurrent part of dH_t into dA_t, in place, for t descending.

    dH_t = G[t] + dA_{t+1} Wᵀ;  dA_t = dH_t ⊙ (1 − H_t²);  db += Σ_rows dA_t.
    db is float64 whatever G's dtype (see _ACC). G, H: (m, n, h) for a run of
    consecutive steps (all T, or a chunk); carry
    (n, h) comes in as dA Wᵀ of the step after the run (zeros after the last
    step) and leaves as dA Wᵀ of the run's first step: dh0 once the run reaches
    t = 1. WTc is _transposed_W(W, n, n): the copy, or empty for the view W.T.
    """
    _steps_back(G, H, W, WTc, carry, db)


@njit(**NUMBA_FLAGS)
def _steps_back(G, H, W, WTc, carry, db):
    """The loop of _recurrence_backward. One compiled function serves the copy
    and the view (a second specialisation cost 0.6 s of CPU on a cold start)."""
    m, n, h = G.shape
    one = np.ones(1, dtype=G.dtype)[0]  # a 1 of G's dtype: a bare literal would promote float32
    for k in range(m - 1, -1, -1):
        Gt = G[k]
        Ht = H[k]
        for i in range(n):
            for j in range(h):
                y = Ht[i, j]
                a = (Gt[i, j] + carry[i, j]) * (one - y * y)  # dA_t = dH_t ⊙ (1 − H_t²)
                Gt[i, j] = a
                db[j] += a  # db = Σ_t 1ᵀ dA_t (a float64 sum)
        if WTc.size:  # dA_t Wᵀ, for step t−1 (after step 1 it is dh0)
            step_dot(Gt, WTc, carry)
        else:
            np.dot(Gt, W.T, carry)


# The one kernel compiled with fastmath 'reassoc' besides NUMBA_FLAGS' 'contract'
# (inlined into the softmax rows): a sum of exp values, all positive, is within
# rounding in any order, and the vectoriser needs the freedom to keep partials.
@njit(**{**NUMBA_FLAGS, "fastmath": {"contract", "reassoc"}})
def _sum(x):
    """Σ x, in whatever order the vectoriser likes (many partial sums): the one
    place where reassociation is allowed, since any order is within rounding."""
    s = x[0] - x[0]  # a zero of x's dtype
    for k in range(x.shape[0]):
        s += x[k]
    return s


@njit(inline="always", **NUMBA_FLAGS)
def _exp_shifted(row, c):
    """row ← row + c, then row ← exp(row − max(row)) in place; returns (max, Σ_k row[k]).

    The max runs over four interleaved partials (exact in any order), so the
    compares pipeline; the sum is _sum's.
    """
    v = row.shape[0]
    for k in range(v):
        row[k] += c[k]  # O_t = H_t V + c
    t0 = t1 = t2 = t3 = row[0]
    k = 0
    while k + 4 <= v:
        t0 = row[k] if row[k] > t0 else t0
        t1 = row[k + 1] if row[k + 1] > t1 else t1
        t2 = row[k + 2] if row[k + 2] > t2 else t2
        t3 = row[k + 3] if row[k + 3] > t3 else t3
        k += 4
    while k < v:
        t0 = row[k] if row[k] > t0 else t0
        k += 1
    top = max(max(t0, t1), max(t2, t3))
    for k in range(v):
        row[k] = vexp(row[k] - top)
    return top, _sum(row)


@njit(**NUMBA_FLAGS)
def _softmax_xent(O, c, y, scale, dc):
    """Fused bias + softmax + cross-entropy over rows: O (m, v) holds H V and becomes dO.

    dO = (softmax(O) − onehot(y)) · scale; dc (float64, see _ACC) = Σ_rows dO
    while each row is in cache; returns Σ_rows −log Ŷ[y] (float64, not yet
    scaled). Each row is shifted by its max so exp cannot overflow.
    """
    m, v = O.shape
    total = 0.0
    for r in range(m):
        row = O[r]
        logit_y = row[y[r]] + c[y[r]]
        top, s = _exp_shifted(row, c)
        total += np.log(s) - (logit_y - top)  # −log Ŷ[y] = log Σ exp(O − max) − (O_y − max)
        inv = scale / s
        for k in range(v):
            row[k] *= inv
        row[y[r]] -= scale  # dO_t = (Ŷ_t − onehot(y_t)) · scale
        for k in range(v):
            dc[k] += row[k]  # dc = Σ_t 1ᵀ dO_t
    return total


@njit(**NUMBA_FLAGS)
def _softmax_rows(O, c):
    """O (m, v) holds H V and becomes softmax(H V + c), in place."""
    m, v = O.shape
    for r in range(m):
        row = O[r]
        _, s = _exp_shifted(row, c)
        for k in range(v):
            row[k] /= s


@njit(**NUMBA_FLAGS)
def _scatter_add_rows(dU, ids, dA):
    """dU[ids[t, i]] += dA[t, i]: Σ_t X_tᵀ dA_t for one-hot rows of X (dU float64, see _ACC)."""
    T, n = ids.shape
    for t in range(T):
        for i in range(n):
            k = ids[t, i]
            for j in range(dA.shape[2]):
                dU[k, j] += dA[t, i, j]


# --------------------------------------------------------------------------
# The backend's kernels (same signatures as the reference backend).
# --------------------------------------------------------------------------


# The kernels below take dense inputs X (T, n, d) and token ids (T, n) as two
# arguments, exactly one of them non-empty, so that each float dtype compiles
# one specialisation serving both kinds of input.

#: The sums that run row by row over all T·n rows (db, dc, and dU for token ids)
#: accumulate in float64 and are rounded to the arrays' dtype once, at the end:
#: in float32, one row at a time, they lost 3.9e-5 (relative) at 8.4M rows.
#: The other sums over rows are BLAS products.
_ACC = np.float64


@njit(**NUMBA_FLAGS)
def _forward_states(U, W, b, X, ids, h0):
    """Hs (T+1, n, h) with Hs[0] = h0 and Hs[t] = H_t."""
    T = max(X.shape[0], ids.shape[0])
    n = h0.shape[0]
    d, h = U.shape
    Hs = np.empty((T + 1, n, h), dtype=U.dtype)
    _copy_rows(Hs[0], h0)
    if ids.size == 0:
        np.dot(X.reshape(T * n, d), U, Hs[1:].reshape(T * n, h))  # X U, all steps at once
    else:
        _gather_rows(Hs[1:], U, ids)
    _recurrence_forward(Hs, W, b)
    return Hs


@njit(**NUMBA_FLAGS)
def _backward_from(G, Hs, U, W, X, ids):
    """Gradients of the recurrence once G holds the non-recurrent part of every dH_t.

    G becomes dA. Returns (dU, dW, db, dh0, dX); dX is empty for ids.
    """
    T, n, h = G.shape
    d = U.shape[0]
    dh0 = np.zeros((n, h), dtype=U.dtype)  # the carry: dA_{T+1} Wᵀ = 0, and dA_1 Wᵀ at the end
    db = np.zeros(h, dtype=_ACC)
    _recurrence_backward(G, Hs[1:], W, _transposed_W(W, n, n), dh0, db)
    dA = G.reshape(T * n, h)
    dW = np.dot(Hs[:T].reshape(T * n, h).T, dA)  # dW = Σ_t H_{t-1}ᵀ dA_t
    if ids.size == 0:
        dU = np.dot(X.reshape(T * n, d).T, dA)  # dU = Σ_t X_tᵀ dA_t
        dX = np.dot(dA, U.T).reshape(T, n, d)  # dX_t = dA_t Uᵀ
    else:
        dU_acc = np.zeros((d, h), dtype=_ACC)
        _scatter_add_rows(dU_acc, ids, G)  # the same sum, for one-hot rows of X
        dU = dU_acc.astype(U.dtype)
        dX = np.empty((0, 0, 0), dtype=U.dtype)
    return dU, dW, db.astype(U.dtype), dh0, dX


@njit(**NUMBA_FLAGS)
def _forward_and_head(U, W, V, b, c, X, ids, targets, h0, scale):
    """The opening both training steps share: the forward pass, the output
    layer and the fused softmax-cross-entropy. Returns (Hs, dO (T·n, v), the
    loss (unscaled), dV, dc)."""
    T, n = targets.shape
    h, v = V.shape
    Hs = _forward_states(U, W, b, X, ids, h0)
    H = Hs[1:].reshape(T * n, h)
    O = np.dot(H, V)  # H V, all steps at once (+ c is fused into the softmax)
    dc = np.zeros(v, dtype=_ACC)
    total = _softmax_xent(O, c, targets.reshape(T * n), scale, dc)  # O is now dO
    dV = np.dot(H.T, O)  # dV = Σ_t H_tᵀ dO_t
    return Hs, O, total, dV, dc.astype(V.dtype)


@njit(**NUMBA_FLAGS)
def _loss_and_grads(U, W, V, b, c, X, ids, targets, h0, scale):
    T, n = targets.shape
    h = V.shape[0]
    Hs, O, total, dV, dc = _forward_and_head(U, W, V, b, c, X, ids, targets, h0, scale)
    G = np.empty((T, n, h), dtype=U.dtype)
    np.dot(O, V.T, G.reshape(T * n, h))  # the output's share of dH_t: dO_t Vᵀ
    dU, dW, db, dh0, dX = _backward_from(G, Hs, U, W, X, ids)
    return total, dU, dW, dV, db, dc, dh0, dX, G, Hs[T].copy()


#: The lean step keeps dA for an eighth of the timesteps at a time (12.5% of H),
#: but for at least this many rows (timesteps × n): smaller products run below
#: BLAS speed (dW over 512-row chunks took 13% longer than in one product, over
#: 2048-row chunks 2%), and at the char size each extra call costs µs.
_CHUNKS = 8
_MIN_CHUNK_ROWS = 256


@njit(**NUMBA_FLAGS)
def _chunk_steps(T, n):
    """Timesteps per chunk of the params_only path: ⌈T/8⌉, at least ⌈256/n⌉, at most T."""
    return min(T, max(-(-T // _CHUNKS), -(-_MIN_CHUNK_ROWS // n)))


@njit(**NUMBA_FLAGS)
def _params_grads(U, W, V, b, c, X, ids, targets, h0, scale):
    """The training step without dX and dA: the same numbers, less memory.

    Beyond H and the softmax buffer it keeps dA for a chunk of timesteps only.
    Walking the chunks from the last one back, each chunk takes its dO Vᵀ in
    one product, runs the recurrence through its steps (carrying dA_{t+1} Wᵀ
    in from the chunk after it), and adds its share to dW, dU and db, each
    again one product over the chunk's rows.
    """
    T, n = targets.shape
    d, h = U.shape
    Hs, O, total, dV, dc = _forward_and_head(U, W, V, b, c, X, ids, targets, h0, scale)

    steps = _chunk_steps(T, n)
    G = np.empty((steps, n, h), dtype=U.dtype)
    carry = np.zeros((n, h), dtype=U.dtype)  # dA_{t+1} Wᵀ; 0 after the last step
    dW = np.empty((h, h), dtype=U.dtype)  # the last chunk's product, then each earlier one's added
    db = np.zeros(h, dtype=_ACC)
    dU = np.empty((0, 0) if ids.size else (d, h), dtype=U.dtype)  # dense inputs: as dW
    dU_acc = np.zeros((d, h) if ids.size else (0, 0), dtype=_ACC)  # token ids: a float64 sum
    part_hh = np.empty((h, h) if steps < T else (0, 0), dtype=U.dtype)
    part_dh = np.empty((d, h) if steps < T and ids.size == 0 else (0, 0), dtype=U.dtype)
    WTc = _transposed_W(W, n, n)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - steps)
        m = t1 - t0
        Gc = G[:m]
        rows = Gc.reshape(m * n, h)
        np.dot(O[t0 * n : t1 * n], V.T, rows)  # dO_t Vᵀ for the chunk
        _recurrence_backward(Gc, Hs[t0 + 1 : t1 + 1], W, WTc, carry, db)
        Hc = Hs[t0:t1].reshape(m * n, h).T
        if t1 == T:  # the first chunk (the last steps) writes the sums
            np.dot(Hc, rows, dW)  # Σ_chunk H_{t-1}ᵀ dA_t
        else:
            np.dot(Hc, rows, part_hh)
            dW += part_hh
        if ids.size == 0:
            Xc = X[t0:t1].reshape(m * n, d).T
            if t1 == T:
                np.dot(Xc, rows, dU)  # Σ_chunk X_tᵀ dA_t
            else:
                np.dot(Xc, rows, part_dh)
                dU += part_dh
        else:
            _scatter_add_rows(dU_acc, ids[t0:t1], Gc)
        t1 = t0
    if ids.size:
        dU = dU_acc.astype(U.dtype)
    return total, dU, dW, dV, db.astype(U.dtype), dc, carry, Hs[T].copy()


@njit(**NUMBA_FLAGS)
def _forward(U, W, b, X, ids, h0):
    return _forward_states(U, W, b, X, ids, h0)[1:]


@njit(**NUMBA_FLAGS)
def _backward(U, W, X, ids, h0, H, dH):
    T, n, h = H.shape
    Hs = np.empty((T + 1, n, h), dtype=H.dtype)
    _copy_rows(Hs[0], h0)
    _copy_rows(Hs[1:].reshape(T * n, h), H.reshape(T * n, h))
    G = dH.copy()
    dU, dW, db, dh0, dX = _backward_from(G, Hs, U, W, X, ids)
    return dU, dW, db, dh0, dX, G


@njit(**NUMBA_FLAGS)
def _probs(U, W, V, b, c, X, ids, h0):
    h, v = V.shape
    Hs = _forward_states(U, W, b, X, ids, h0)
    T, n = Hs.shape[0] - 1, Hs.shape[1]
    O = np.dot(Hs[1:].reshape(T * n, h), V)
    _softmax_rows(O, c)
    return O.reshape(T, n, v), Hs[T].copy()


# --------------------------------------------------------------------------
# Thin Python wrappers: the backend interface.
# --------------------------------------------------------------------------

_NO_IDS = np.empty((0, 0), dtype=np.intp)
_NO_X = {np.dtype(t): np.empty((0, 0, 0), dtype=t) for t in (np.float32, np.float64)}


def _split(inputs, dtype):
    """(X, ids) for the kernels: the given inputs and an empty stand-in for the other kind."""
    if inputs.dtype.kind in "iu":
        return _NO_X[dtype], inputs
    return inputs, _NO_IDS


def loss_and_grads(U, W, V, b, c, inputs, targets, h0, scale, params_only=False):
    X, ids = _split(inputs, U.dtype)
    if params_only:
        total, dU, dW, dV, db, dc, dh0, h_last = _params_grads(U, W, V, b, c, X, ids, targets, h0, U.dtype.type(scale))
        return scale * total, dU, dW, dV, db, dc, dh0, None, None, h_last
    total, dU, dW, dV, db, dc, dh0, dX, dA, h_last = _loss_and_grads(
        U, W, V, b, c, X, ids, targets, h0, U.dtype.type(scale)
    )
    return scale * total, dU, dW, dV, db, dc, dh0, (dX if ids.size == 0 else None), dA, h_last


def forward(U, W, b, inputs, h0):
    X, ids = _split(inputs, U.dtype)
    return _forward(U, W, b, X, ids, h0)


def backward(U, W, inputs, h0, H, dH):
    X, ids = _split(inputs, U.dtype)
    dU, dW, db, dh0, dX, dA = _backward(U, W, X, ids, h0, H, dH)
    return dU, dW, db, dh0, (dX if ids.size == 0 else None), dA


def probs(U, W, V, b, c, inputs, h0):
    X, ids = _split(inputs, U.dtype)
    return _probs(U, W, V, b, c, X, ids, h0)


# --------------------------------------------------------------------------
# The general model (lengths, relu, stacked layers, two directions): its kernels
# run on packed sequences and live in numba_packed.py, which imports this module's
# tanh and softmax; imported when first called, so either module may load first.
# --------------------------------------------------------------------------


_DEEP = ("deep_loss_and_grads", "deep_forward", "deep_backward", "deep_probs")


def __getattr__(name):  # PEP 562: the deep_* kernels, imported when first asked for
    if name in _DEEP:
        from . import numba_packed

        return getattr(numba_packed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
