/* fastrnn C kernels: the vanilla RNN forward pass, fused softmax-cross-entropy and BPTT.
 *
 * Sizes: T timesteps, n sequences, d inputs, h hidden units, v outputs. Arrays are
 * C-contiguous, row-major, time-major. Outputs come first, then inputs, then sizes.
 * Token-id inputs pass X = NULL and ids (T, n); dense inputs pass ids = NULL.
 * Every kernel returns 0, or a negative FASTRNN_E* code and touches nothing it
 * was not already allowed to write. The caller allocates the arrays named here;
 * the kernels malloc only small scratch (a copy of Wᵀ, double accumulators for
 * the sums over all rows) and free it before they return.
 * copy_wt_below: the backward recurrence multiplies by a contiguous copy of Wᵀ
 * while n·h·h is below it or the tiles may run (fastrnn_copy_wt), else by W
 * transposed (fastrnn._config.COPY_WT_BELOW).
 * The caller hands in the matrix products: fastrnn_set_blas() takes the Fortran
 * sgemm and dgemm that numpy/scipy already ship, before any kernel runs, and
 * their sgemv and dgemv (or NULL) for products of one row.
 */
#ifndef FASTRNN_H
#define FASTRNN_H

#include <stdint.h>

#define FASTRNN_OK 0
#define FASTRNN_EBLAS -1
#define FASTRNN_ESIZE -2
#define FASTRNN_EINDEX -3
#define FASTRNN_ENOMEM -4

int fastrnn_set_blas(void *sgemm, void *dgemm, void *sgemv, void *dgemv);

/* A per-step product of m rows by an h×h matrix runs in register tiles (csrc/tiles.h),
 * not the BLAS, when 2 <= m <= FASTRNN_TILE_ROWS, h·h·itemsize <= FASTRNN_TILE_BYTES
 * and the CPU has AVX2 and FMA (fastrnn._config.TILE_ROWS, TILE_BYTES: the same values).
 * fastrnn_tiles says whether it does (after fastrnn_set_blas). */
#define FASTRNN_TILE_ROWS 32
#define FASTRNN_TILE_BYTES 262144
int fastrnn_tiles(int64_t m, int64_t h, int64_t itemsize);

/* 1 where the backward recurrence over at most n and at least ``fewest`` rows a step
 * multiplies by a contiguous copy of Wᵀ: n·h·h < copy_wt_below, or the tiles (which
 * need it) may take a step of ``fewest`` rows; 0 where it uses W transposed. */
int fastrnn_copy_wt(int64_t n, int64_t fewest, int64_t h, int64_t itemsize, int64_t copy_wt_below);

/* C (m, h) = A (m, h) B (h, h), as the kernels compute one step's product (tiles or
 * BLAS), for tests and measurements. */
int step_product_f32(float *C, const float *A, const float *B, int m, int h);
int step_product_f64(double *C, const double *A, const double *B, int m, int h);


/* Hs (T+1, n, h): in Hs[0] = h0, out Hs[t] = H_t;  XU (T, n, h): scratch, out X_t U. */
int rnn_forward_f32(float *Hs, float *XU, const float *U, const float *W, const float *b,
                    const float *X, const int64_t *ids, int T, int n, int d, int h);
int rnn_forward_f64(double *Hs, double *XU, const double *U, const double *W, const double *b,
                    const double *X, const int64_t *ids, int T, int n, int d, int h);

/* G (T, n, h): in the non-recurrent part of dH_t, out dA_t.  dX (T, n, d): NULL skips it (and
 * must be NULL for ids). */
int rnn_backward_f32(float *dU, float *dW, float *db, float *dh0, float *dX, float *G,
                     const float *Hs, const float *U, const float *W, const float *X,
                     const int64_t *ids, int T, int n, int d, int h, int64_t copy_wt_below);
int rnn_backward_f64(double *dU, double *dW, double *db, double *dh0, double *dX, double *G,
                     const double *Hs, const double *U, const double *W, const double *X,
                     const int64_t *ids, int T, int n, int d, int h, int64_t copy_wt_below);

/* The whole training step. loss: Σ −log Ŷ[y] (unscaled); O (T·n, v) and G scratch;
 * G ends as dA. Hs as for rnn_forward. */
int loss_and_grads_f32(double *loss, float *dU, float *dW, float *dV, float *db, float *dc,
                       float *dh0, float *dX, float *G, float *Hs, float *O,
                       const float *U, const float *W, const float *V, const float *b,
                       const float *c, const float *X, const int64_t *ids,
                       const int64_t *targets, float scale, int T, int n, int d, int h, int v,
                       int64_t copy_wt_below);
int loss_and_grads_f64(double *loss, double *dU, double *dW, double *dV, double *db, double *dc,
                       double *dh0, double *dX, double *G, double *Hs, double *O,
                       const double *U, const double *W, const double *V, const double *b,
                       const double *c, const double *X, const int64_t *ids,
                       const int64_t *targets, double scale, int T, int n, int d, int h, int v,
                       int64_t copy_wt_below);

/* Probs (T·n, v): softmax(H_t V + c).  Hs and XU as for rnn_forward. */
int probs_f32(float *Probs, float *Hs, float *XU, const float *U, const float *W, const float *V,
              const float *b, const float *c, const float *X, const int64_t *ids,
              int T, int n, int d, int h, int v);
int probs_f64(double *Probs, double *Hs, double *XU, const double *U, const double *W,
              const double *V, const double *b, const double *c, const double *X,
              const int64_t *ids, int T, int n, int d, int h, int v);

/* out[i] = tanh(x[i]) and exp(z[i]) (z <= 0; larger z counts as 0) with the
 * kernels' own vectorising versions (vmath.h), for tests and measurements. */
void tanh_array_f32(float *out, const float *x, int64_t count);
void tanh_array_f64(double *out, const double *x, int64_t count);
void exp_array_f32(float *out, const float *z, int64_t count);
void exp_array_f64(double *out, const double *z, int64_t count);

/* The general model on packed sequences (csrc/packed.inc): sequences sorted by length,
 * step t's bs[t] running rows at off[t] of (N, ·) arrays, N = off[T]. reverse: t runs
 * T−1 .. 0; relu: f = max(·, 0) instead of tanh. h0s (n, h) sorted; HW (n, h) scratch;
 * copy_prev = 0 (nothing padded): H and Hprev share one buffer that holds h0 too. */
int packed_forward_f32(float *H, float *Hprev, float *HW, const float *U, const float *W, const float *b,
                       const float *X, const int64_t *ids, const float *h0s, const int64_t *bs,
                       const int64_t *off, int T, int n, int d, int h, int reverse, int relu,
                       int copy_prev);
int packed_forward_f64(double *H, double *Hprev, double *HW, const double *U, const double *W,
                       const double *b, const double *X, const int64_t *ids, const double *h0s,
                       const int64_t *bs, const int64_t *off, int T, int n, int d, int h, int reverse,
                       int relu, int copy_prev);
/* G (N, h): in ∂L/∂H from above, out dA; carry (n, h): in ∂L/∂(final state), out ∂L/∂h0. */
int packed_backward_f32(float *dU, float *dW, float *db, float *dX, float *G, float *carry,
                        const float *H, const float *Hprev, const float *U, const float *W, const float *X,
                        const int64_t *ids, const int64_t *bs, const int64_t *off,
                        int T, int n, int d, int h, int reverse, int relu, int64_t copy_wt_below);
int packed_backward_f64(double *dU, double *dW, double *db, double *dX, double *G, double *carry,
                        const double *H, const double *Hprev, const double *U, const double *W,
                        const double *X, const int64_t *ids, const int64_t *bs, const int64_t *off,
                        int T, int n, int d, int h, int reverse, int relu, int64_t copy_wt_below);
/* The softmax head over packed rows, the top layer per direction: H1 (N, h1), H2 (N, h2)
 * or NULL; dH1, dH2 likewise. O (N, v) scratch. Targets y < 0 count for nothing. */
int packed_head_loss_f32(double *loss, float *dV, float *dc, float *dH1, float *dH2, float *O,
                         const float *H1, const float *H2, const float *V, const float *c,
                         const int64_t *y, float scale, int N, int h1, int h2, int v);
int packed_head_loss_f64(double *loss, double *dV, double *dc, double *dH1, double *dH2, double *O,
                         const double *H1, const double *H2, const double *V, const double *c,
                         const int64_t *y, double scale, int N, int h1, int h2, int v);
int packed_head_probs_f32(float *P, const float *H1, const float *H2, const float *V, const float *c,
                          int N, int h1, int h2, int v);
int packed_head_probs_f64(double *P, const double *H1, const double *H2, const double *V, const double *c,
                          int N, int h1, int h2, int v);

/* The whole params_only step of one layer, one direction or both (U2, W2, b2 the reversed
 * cell, or NULL), from the padded batch in one call: X (T, n, d) or ids (T, n); y (T, n),
 * < 0 not counted; lengths (n,) in [1, T]; h0 (D, n, h); only the k sequences members
 * (ascending batch indices; NULL: all, k = n) take part; dh0, h_last (D, k, h) in their
 * order. loss: Σ −log Ŷ[y] (unscaled). */
int packed_cell_step_f32(double *loss, float *dU, float *dW, float *db, float *dU2, float *dW2, float *db2,
                         float *dV, float *dc, float *dh0, float *h_last, const float *U, const float *W,
                         const float *b, const float *U2, const float *W2, const float *b2, const float *V,
                         const float *c, const float *X, const int64_t *ids, const int64_t *y,
                         const float *h0, const int64_t *lengths, const int64_t *members, int k, float scale,
                         int T, int n, int d, int h, int v, int relu, int64_t copy_wt_below);
int packed_cell_step_f64(double *loss, double *dU, double *dW, double *db, double *dU2, double *dW2,
                         double *db2, double *dV, double *dc, double *dh0, double *h_last, const double *U,
                         const double *W, const double *b, const double *U2, const double *W2,
                         const double *b2, const double *V, const double *c, const double *X,
                         const int64_t *ids, const int64_t *y, const double *h0, const int64_t *lengths,
                         const int64_t *members, int k, double scale, int T, int n, int d, int h, int v,
                         int relu, int64_t copy_wt_below);

/* XLA FFI handlers for fastrnn.jax (csrc/xla_ffi.c): the address of handler `which`
 * (an XLA_FFI_Handler, for jax.ffi.register_ffi_target), or NULL for an unknown one.
 * copy_wt_below is kept for every later call of the handlers, as for rnn_backward. */
#define FASTRNN_XLA_LOSS 0
#define FASTRNN_XLA_FORWARD 1
#define FASTRNN_XLA_BACKWARD 2
void *fastrnn_xla_handler(int which, int64_t copy_wt_below);

#endif
