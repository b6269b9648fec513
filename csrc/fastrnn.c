/* fastrnn C kernels: kernels.inc instantiated for float and double.
 * Goal: the reference's numbers to within rounding (no fast-math, no FMA
 * contraction), tanh and exp that vectorise (vmath.h), and the matrix products
 * in the BLAS that SciPy already ships. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fastrnn.h"
#include "tiles.h"
#include "vmath.h"

/* The loops over tanh, exp and tanh' are compiled twice where GCC can pick at
 * load time (x86-64 Linux): for AVX2 and for the baseline, since the build
 * itself stays portable (no -march). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SIMD_CLONES
#endif

typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                         const float *, const float *, const int *, const float *, const int *,
                         const float *, float *, const int *);
typedef void (*dgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                         const double *, const double *, const int *, const double *, const int *,
                         const double *, double *, const int *);

typedef void (*sgemv_fn)(const char *, const int *, const int *, const float *, const float *, const int *,
                         const float *, const int *, const float *, float *, const int *);
typedef void (*dgemv_fn)(const char *, const int *, const int *, const double *, const double *, const int *,
                         const double *, const int *, const double *, double *, const int *);

static sgemm_fn sgemm_ptr = NULL;
static dgemm_fn dgemm_ptr = NULL;
static sgemv_fn sgemv_ptr = NULL;
static dgemv_fn dgemv_ptr = NULL;

int fastrnn_copy_wt(int64_t n, int64_t fewest, int64_t h, int64_t itemsize, int64_t copy_wt_below)
{
    return n * h * h < copy_wt_below || fastrnn_tiles(fewest < 2 ? 2 : fewest, h, itemsize);
}

/* The type of the accumulators for sums over all T·n rows (see kernels.inc). */
#define ACC double

int fastrnn_set_blas(void *sgemm, void *dgemm, void *sgemv, void *dgemv)
{
    if (!sgemm || !dgemm) return FASTRNN_EBLAS;
    sgemm_ptr = (sgemm_fn)sgemm;
    dgemm_ptr = (dgemm_fn)dgemm;
    sgemv_ptr = (sgemv_fn)sgemv;  /* NULL: one-row products go to gemm too */
    dgemv_ptr = (dgemv_fn)dgemv;
    tiles_detect();
    return FASTRNN_OK;
}

#define REAL float
#define FN(name) name##_f32
#define GEMM sgemm_ptr
#define GEMV sgemv_ptr
#define TILES tiles_f32
#define TANH vtanh_f32
#define EXP vexp_f32   /* of arguments <= 0 only */
#define LOG logf
#include "kernels.inc"
#include "packed.inc"
#undef REAL
#undef FN
#undef GEMM
#undef GEMV
#undef TILES
#undef TANH
#undef EXP
#undef LOG

#define REAL double
#define FN(name) name##_f64
#define GEMM dgemm_ptr
#define GEMV dgemv_ptr
#define TILES tiles_f64
#define TANH vtanh_f64
#define EXP vexp_f64
#define LOG log
#include "kernels.inc"
#include "packed.inc"
