/* The per-step product of few rows, C = A B (A m×k, B k×h, C m×h; row-major, leading
 * dimensions lda, ldb, ldc), in register tiles: fastrnn._config.TILE_ROWS says when
 * and why (OpenBLAS copies all of B into its packed layout at every call, so its
 * time hardly falls with m). A tile is R <= 4 rows by two 256-bit vectors of
 * columns (16 float, 8 double): for each k, R broadcasts of A[i, k] times two
 * vector loads of B's row k into 2R accumulators held in registers; the row's
 * last tile masks its columns. Column panels are the outer loop, so a panel of B
 * stays in L1 over all rows. Each C[i, j] is one fused multiply-add chain over k
 * in order (the same chain as the Numba backend's tiles), whichever tile or mask
 * computes it. Compiled for AVX2 + FMA and used only where the CPU has both
 * (tiles_cpu, set by fastrnn_set_blas); elsewhere every product goes to the BLAS. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define TILES_X86 1
#define TILES_TARGET __attribute__((target("avx2,fma")))
#define TILES_INLINE static inline __attribute__((always_inline))

/* One tile, R rows from A at column j0 of B and C; masked: m0, m1 select the columns. */
#define TILE_BODY(REAL_T, VEC, ZERO, LOADU, MASKLOAD, STOREU, MASKSTORE, BCAST, FMA, L)              \
    VEC c[4][2];                                                                                    \
    for (int r = 0; r < R; r++) c[r][0] = c[r][1] = ZERO();                                         \
    for (int k = 0; k < K; k++) {                                                                   \
        const REAL_T *b = B + (int64_t)k * ldb;                                                     \
        VEC b0 = masked ? MASKLOAD(b, m0) : LOADU(b);                                               \
        VEC b1 = masked ? MASKLOAD(b + L, m1) : LOADU(b + L);                                       \
        for (int r = 0; r < R; r++) {                                                               \
            VEC a = BCAST(A + (int64_t)r * lda + k);                                                \
            c[r][0] = FMA(a, b0, c[r][0]);                                                          \
            c[r][1] = FMA(a, b1, c[r][1]);                                                          \
        }                                                                                           \
    }                                                                                               \
    for (int r = 0; r < R; r++) {                                                                   \
        REAL_T *out = C + (int64_t)r * ldc;                                                         \
        if (masked) {                                                                               \
            MASKSTORE(out, m0, c[r][0]);                                                            \
            MASKSTORE(out + L, m1, c[r][1]);                                                        \
        } else {                                                                                    \
            STOREU(out, c[r][0]);                                                                   \
            STOREU(out + L, c[r][1]);                                                               \
        }                                                                                           \
    }

/* All rows through the tiles at one panel (R a constant in each call, so the tile's
 * loops unroll and its accumulators stay in registers). */
#define TILE_ROWS_OF(TILE, A, lda, C, ldc)                                                         \
    do {                                                                                            \
        int i = 0;                                                                                  \
        for (; i + 4 <= M; i += 4) TILE(4, masked, m0, m1, K, A + (int64_t)i * lda, lda, B, ldb, C + (int64_t)i * ldc, ldc); \
        switch (M - i) {                                                                            \
        case 3: TILE(3, masked, m0, m1, K, A + (int64_t)i * lda, lda, B, ldb, C + (int64_t)i * ldc, ldc); break; \
        case 2: TILE(2, masked, m0, m1, K, A + (int64_t)i * lda, lda, B, ldb, C + (int64_t)i * ldc, ldc); break; \
        case 1: TILE(1, masked, m0, m1, K, A + (int64_t)i * lda, lda, B, ldb, C + (int64_t)i * ldc, ldc); break; \
        }                                                                                           \
    } while (0)

/* tile_f32 and tile_f64: one tile of float or double */
#define DEFINE_TILE(NAME, REAL_T, ...)                                                              \
    TILES_TARGET TILES_INLINE void NAME(int R, int masked, __m256i m0, __m256i m1, int K, const REAL_T *A, \
                                        int lda, const REAL_T *B, int ldb, REAL_T *C, int ldc)      \
    {                                                                                               \
        TILE_BODY(REAL_T, __VA_ARGS__)                                                              \
    }
DEFINE_TILE(tile_f32, float, __m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_maskload_ps, _mm256_storeu_ps,
            _mm256_maskstore_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, 8)
DEFINE_TILE(tile_f64, double, __m256d, _mm256_setzero_pd, _mm256_loadu_pd, _mm256_maskload_pd, _mm256_storeu_pd,
            _mm256_maskstore_pd, _mm256_broadcast_sd, _mm256_fmadd_pd, 4)

TILES_TARGET static void tiles_f32(int M, int N, int K, const float *A, int lda, const float *B0, int ldb,
                                   float *C, int ldc)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j0 = 0; j0 < N; j0 += 16) {
        const int cols = N - j0 < 16 ? N - j0 : 16, masked = cols < 16;
        const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lane);     /* lane < cols */
        const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8), lane);
        const float *B = B0 + j0;
        TILE_ROWS_OF(tile_f32, A, lda, (C + j0), ldc);
    }
}

TILES_TARGET static void tiles_f64(int M, int N, int K, const double *A, int lda, const double *B0, int ldb,
                                   double *C, int ldc)
{
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    for (int j0 = 0; j0 < N; j0 += 8) {
        const int cols = N - j0 < 8 ? N - j0 : 8, masked = cols < 8;
        const __m256i m0 = _mm256_cmpgt_epi64(_mm256_set1_epi64x(cols), lane);
        const __m256i m1 = _mm256_cmpgt_epi64(_mm256_set1_epi64x(cols - 4), lane);
        const double *B = B0 + j0;
        TILE_ROWS_OF(tile_f64, A, lda, (C + j0), ldc);
    }
}
#endif

static int tiles_cpu = 0;  /* 1 where the tiles can run: x86-64 with AVX2 and FMA */

static void tiles_detect(void)
{
#ifdef TILES_X86
    __builtin_cpu_init();
    tiles_cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}

int fastrnn_tiles(int64_t m, int64_t h, int64_t itemsize)
{
    return tiles_cpu && m >= 2 && m <= FASTRNN_TILE_ROWS && h * h * itemsize <= FASTRNN_TILE_BYTES;
}
