/* fastrnn C kernels: kernels.inc instantiated for float and double.
 * Goal: the same numbers as the numpy reference (no fast-math, no FMA contraction),
 * with the matrix products in the BLAS numpy/scipy already ship. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "fastrnn.h"

typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                         const float *, const float *, const int *, const float *, const int *,
                         const float *, float *, const int *);
typedef void (*dgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                         const double *, const double *, const int *, const double *, const int *,
                         const double *, double *, const int *);

static sgemm_fn sgemm_ptr = NULL;
static dgemm_fn dgemm_ptr = NULL;

int fastrnn_set_blas(void *sgemm, void *dgemm)
{
    if (!sgemm || !dgemm) return FASTRNN_EBLAS;
    sgemm_ptr = (sgemm_fn)sgemm;
    dgemm_ptr = (dgemm_fn)dgemm;
    return FASTRNN_OK;
}

#define REAL float
#define FN(name) name##_f32
#define GEMM sgemm_ptr
#define TANH tanhf
#define EXP expf
#define LOG logf
#include "kernels.inc"
#undef REAL
#undef FN
#undef GEMM
#undef TANH
#undef EXP
#undef LOG

#define REAL double
#define FN(name) name##_f64
#define GEMM dgemm_ptr
#define TANH tanh
#define EXP exp
#define LOG log
#include "kernels.inc"
