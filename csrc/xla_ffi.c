/* XLA FFI handlers: fastrnn's kernels called by a jitted JAX program directly on
 * XLA's buffers (no Python, no copies), for fastrnn.jax. Written against XLA's
 * FFI C API (the subset in xla_ffi_api.h), so the build needs no jaxlib; Python
 * hands the handlers' addresses to jax.ffi.register_ffi_target as PyCapsules.
 *
 * Each handler answers XLA's metadata query (the API version of xla_ffi_api.h,
 * no traits), and at the execute stage checks every buffer's dtype and shape
 * before it runs a kernel: a mismatch, or a kernel's error code, comes back as
 * an XLA error (a Python exception in JAX), never as a crash. Scratch the
 * kernels need (the states, X U, logits, dA) arrives as extra results, so XLA
 * allocates it; only int32 token ids and targets are widened to int64 into a
 * malloc'd copy, freed before returning.
 *
 * Sizes: T timesteps, n sequences, d inputs, h hidden units, v outputs.
 * Arguments and results, in order (x: float (T, n, d), or int32/int64 ids (T, n)):
 *   loss:     U, W, V, b, c, x, y (T, n) ints, h0, mean (int32 scalar: 1 'mean', 0 'sum')
 *             -> loss (), dU, dW, dV, db, dc, dh0, dX ((T, n, d), or (0,) for none),
 *                Hs (T+1, n, h), O (T·n, v), G (T, n, h)
 *   forward:  U, W, b, x, h0  -> Hs (T+1, n, h) (Hs[0] = h0), XU (T, n, h)
 *   backward: dH (T, n, h), Hs (T+1, n, h), x, U, W
 *             -> dU, dW, db, dh0, dX ((T, n, d), or (0,)), G (T, n, h) (ends as dA)
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "fastrnn.h"
#include "xla_ffi_api.h"

static int64_t xla_copy_wt_below = 0;

static XLA_FFI_Error *fail(const XLA_FFI_CallFrame *f, XLA_FFI_Error_Code code, const char *msg)
{
    XLA_FFI_Error_Create_Args a;
    memset(&a, 0, sizeof a);
    a.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
    a.message = msg;
    a.errc = code;
    return f->api->XLA_FFI_Error_Create(&a);
}

static XLA_FFI_Error *kernel_error(const XLA_FFI_CallFrame *f, int code)
{
    switch (code) {
    case FASTRNN_EBLAS: return fail(f, XLA_FFI_Error_Code_INTERNAL, "fastrnn: no BLAS was registered");
    case FASTRNN_ESIZE: return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn: a size is not positive");
    case FASTRNN_EINDEX:
        return fail(f, XLA_FFI_Error_Code_OUT_OF_RANGE, "fastrnn: a token id or target is out of range");
    case FASTRNN_ENOMEM:
        return fail(f, XLA_FFI_Error_Code_RESOURCE_EXHAUSTED, "fastrnn: out of memory for the kernels' scratch");
    default: return fail(f, XLA_FFI_Error_Code_INTERNAL, "fastrnn: kernel error");
    }
}

/* The metadata query (answered, *done = 1), or a frame this handler cannot run. */
static XLA_FFI_Error *prologue(XLA_FFI_CallFrame *f, int nargs, int nrets, int *done)
{
    *done = 0;
    if (f->extension_start && f->extension_start->type == XLA_FFI_Extension_Metadata) {
        XLA_FFI_Metadata_Extension *ext = (XLA_FFI_Metadata_Extension *)f->extension_start;
        if (ext->extension_base.struct_size < XLA_FFI_Metadata_Extension_STRUCT_SIZE ||
            ext->metadata->struct_size < XLA_FFI_Metadata_STRUCT_SIZE)
            return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn: XLA's metadata struct is too small");
        ext->metadata->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
        ext->metadata->api_version.extension_start = NULL;
        ext->metadata->api_version.major_version = XLA_FFI_API_MAJOR;
        ext->metadata->api_version.minor_version = XLA_FFI_API_MINOR;
        ext->metadata->traits = 0;
        ext->metadata->state_type_id.type_id = 0;
        *done = 1;
        return NULL;
    }
    if (f->struct_size < XLA_FFI_CallFrame_STRUCT_SIZE)
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn: XLA's call frame is too small");
    if (f->stage != XLA_FFI_ExecutionStage_EXECUTE) {
        *done = 1;  /* nothing to prepare */
        return NULL;
    }
    if (f->args.size != nargs || f->rets.size != nrets)
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn: wrong number of arguments or results");
    for (int i = 0; i < nargs; i++)
        if (f->args.types[i] != XLA_FFI_ArgType_BUFFER)
            return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn: an argument is not a buffer");
    for (int i = 0; i < nrets; i++)
        if (f->rets.types[i] != XLA_FFI_RetType_BUFFER)
            return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn: a result is not a buffer");
    return NULL;
}

static XLA_FFI_Buffer *arg(const XLA_FFI_CallFrame *f, int i) { return (XLA_FFI_Buffer *)f->args.args[i]; }
static XLA_FFI_Buffer *ret(const XLA_FFI_CallFrame *f, int i) { return (XLA_FFI_Buffer *)f->rets.rets[i]; }

/* 1 where buf has this dtype and shape (dims < 0: any extent), else 0. */
static int is(const XLA_FFI_Buffer *buf, XLA_FFI_DataType dtype, int rank, int64_t d0, int64_t d1, int64_t d2)
{
    const int64_t want[3] = {d0, d1, d2};
    if (buf->dtype != dtype || buf->rank != rank) return 0;
    for (int k = 0; k < rank; k++)
        if (want[k] >= 0 && buf->dims[k] != want[k]) return 0;
    return 1;
}

static int is_int(const XLA_FFI_Buffer *buf)
{
    return buf->dtype == XLA_FFI_DataType_S32 || buf->dtype == XLA_FFI_DataType_S64;
}

static size_t real_size(XLA_FFI_DataType dt) { return dt == XLA_FFI_DataType_F32 ? sizeof(float) : sizeof(double); }

/* ids as int64: the buffer itself, or a malloc'd widened copy stored in *owned. */
static const int64_t *as_int64(const XLA_FFI_Buffer *buf, int64_t count, int64_t **owned)
{
    *owned = NULL;
    if (buf->dtype == XLA_FFI_DataType_S64) return (const int64_t *)buf->data;
    int64_t *out = malloc(sizeof(int64_t) * (size_t)(count > 0 ? count : 1));
    if (!out) return NULL;
    const int32_t *src = (const int32_t *)buf->data;
    for (int64_t i = 0; i < count; i++) out[i] = src[i];
    *owned = out;
    return out;
}

/* 1 where every id lies in [0, limit). */
static int in_range(const int64_t *ids, int64_t count, int64_t limit)
{
    for (int64_t i = 0; i < count; i++)
        if (ids[i] < 0 || ids[i] >= limit) return 0;
    return 1;
}

static int fits(int64_t a, int64_t b) { return a >= 0 && b >= 0 && (b == 0 || a <= INT_MAX / (b > 0 ? b : 1)); }

/* x: float (T, n, d) of dtype dt, or ids (T, n); sets *d for ids from U. */
static int check_x(const XLA_FFI_Buffer *x, XLA_FFI_DataType dt, int64_t T, int64_t n, int64_t d)
{
    return is_int(x) ? is(x, x->dtype, 2, T, n, -1) : is(x, dt, 3, T, n, d);
}

static XLA_FFI_Error *xla_loss(XLA_FFI_CallFrame *f)
{
    int done;
    XLA_FFI_Error *err = prologue(f, 9, 11, &done);
    if (err || done) return err;
    XLA_FFI_Buffer *U = arg(f, 0), *W = arg(f, 1), *V = arg(f, 2), *b = arg(f, 3), *c = arg(f, 4);
    XLA_FFI_Buffer *x = arg(f, 5), *y = arg(f, 6), *h0 = arg(f, 7), *mean = arg(f, 8);
    const XLA_FFI_DataType dt = U->dtype;
    if ((dt != XLA_FFI_DataType_F32 && dt != XLA_FFI_DataType_F64) || U->rank != 2 || V->rank != 2 || y->rank != 2)
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn loss: U, V must be float32/float64 matrices");
    const int64_t T = y->dims[0], n = y->dims[1], d = U->dims[0], h = U->dims[1], v = V->dims[1];
    const int dense = !is_int(x);
    if (!is(W, dt, 2, h, h, 0) || !is(V, dt, 2, h, v, 0) || !is(b, dt, 1, h, 0, 0) || !is(c, dt, 1, v, 0, 0) ||
        !check_x(x, dt, T, n, d) || !is_int(y) || !is(h0, dt, 2, n, h, 0) ||
        !is(mean, XLA_FFI_DataType_S32, 0, 0, 0, 0))
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn loss: an argument has the wrong dtype or shape");
    XLA_FFI_Buffer *loss = ret(f, 0), *dU = ret(f, 1), *dW = ret(f, 2), *dV = ret(f, 3), *db = ret(f, 4);
    XLA_FFI_Buffer *dc = ret(f, 5), *dh0 = ret(f, 6), *dX = ret(f, 7), *Hs = ret(f, 8), *O = ret(f, 9);
    XLA_FFI_Buffer *G = ret(f, 10);
    const int want_dX = dense && is(dX, dt, 3, T, n, d);
    if (!is(loss, dt, 0, 0, 0, 0) || !is(dU, dt, 2, d, h, 0) || !is(dW, dt, 2, h, h, 0) ||
        !is(dV, dt, 2, h, v, 0) || !is(db, dt, 1, h, 0, 0) || !is(dc, dt, 1, v, 0, 0) ||
        !is(dh0, dt, 2, n, h, 0) || !(want_dX || is(dX, dt, 1, 0, 0, 0)) || !is(Hs, dt, 3, T + 1, n, h) ||
        !is(O, dt, 2, T * n, v, 0) || !is(G, dt, 3, T, n, h))
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn loss: a result has the wrong dtype or shape");
    const int64_t big = d > h ? (d > v ? d : v) : (h > v ? h : v);
    if (!fits(T * n, big) || !fits(d, h) || !fits(h, v) || !fits(T + 1, n * h))
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn loss: the problem is too large for 32-bit BLAS sizes");
    const double scale = *(const int32_t *)mean->data ? 1.0 / (double)(T * n) : 1.0;
    int64_t *ids_owned = NULL, *y_owned = NULL;
    const int64_t *ids = dense ? NULL : as_int64(x, T * n, &ids_owned);
    const int64_t *targets = as_int64(y, T * n, &y_owned);
    int code = FASTRNN_ENOMEM;
    double total = 0;
    if (ids && !in_range(ids, T * n, d)) {
        free(ids_owned);
        free(y_owned);
        return fail(f, XLA_FFI_Error_Code_OUT_OF_RANGE, "fastrnn loss: a token id in x lies outside [0, d)");
    }
    if (targets && !in_range(targets, T * n, v)) {
        free(ids_owned);
        free(y_owned);
        return fail(f, XLA_FFI_Error_Code_OUT_OF_RANGE, "fastrnn loss: a target in y lies outside [0, v)");
    }
    if ((dense || ids) && targets) {
        const size_t nh = (size_t)(n * h) * real_size(dt);
        memcpy(Hs->data, h0->data, nh);  /* Hs[0] = h0 */
        const void *X = dense ? x->data : NULL;
        void *dXp = want_dX ? dX->data : NULL;
        if (dt == XLA_FFI_DataType_F32)
            code = loss_and_grads_f32(&total, dU->data, dW->data, dV->data, db->data, dc->data, dh0->data, dXp,
                                      G->data, Hs->data, O->data, U->data, W->data, V->data, b->data, c->data, X,
                                      ids, targets, (float)scale, (int)T, (int)n, (int)d, (int)h, (int)v,
                                      xla_copy_wt_below);
        else
            code = loss_and_grads_f64(&total, dU->data, dW->data, dV->data, db->data, dc->data, dh0->data, dXp,
                                      G->data, Hs->data, O->data, U->data, W->data, V->data, b->data, c->data, X,
                                      ids, targets, scale, (int)T, (int)n, (int)d, (int)h, (int)v,
                                      xla_copy_wt_below);
    }
    free(ids_owned);
    free(y_owned);
    if (code) return kernel_error(f, code);
    if (dt == XLA_FFI_DataType_F32)
        *(float *)loss->data = (float)(scale * total);
    else
        *(double *)loss->data = scale * total;
    return NULL;
}

static XLA_FFI_Error *xla_forward(XLA_FFI_CallFrame *f)
{
    int done;
    XLA_FFI_Error *err = prologue(f, 5, 2, &done);
    if (err || done) return err;
    XLA_FFI_Buffer *U = arg(f, 0), *W = arg(f, 1), *b = arg(f, 2), *x = arg(f, 3), *h0 = arg(f, 4);
    const XLA_FFI_DataType dt = U->dtype;
    if ((dt != XLA_FFI_DataType_F32 && dt != XLA_FFI_DataType_F64) || U->rank != 2 || x->rank < 2)
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn forward: U must be a float32/float64 matrix");
    const int64_t T = x->dims[0], n = x->dims[1], d = U->dims[0], h = U->dims[1];
    const int dense = !is_int(x);
    XLA_FFI_Buffer *Hs = ret(f, 0), *XU = ret(f, 1);
    if (!is(W, dt, 2, h, h, 0) || !is(b, dt, 1, h, 0, 0) || !check_x(x, dt, T, n, d) || !is(h0, dt, 2, n, h, 0) ||
        !is(Hs, dt, 3, T + 1, n, h) || !is(XU, dt, 3, T, n, h))
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn forward: a buffer has the wrong dtype or shape");
    if (!fits(T * n, d > h ? d : h) || !fits(d, h) || !fits(T + 1, n * h))
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn forward: the problem is too large for 32-bit BLAS sizes");
    int64_t *ids_owned = NULL;
    const int64_t *ids = dense ? NULL : as_int64(x, T * n, &ids_owned);
    if (ids && !in_range(ids, T * n, d)) {
        free(ids_owned);
        return fail(f, XLA_FFI_Error_Code_OUT_OF_RANGE, "fastrnn forward: a token id in x lies outside [0, d)");
    }
    int code = FASTRNN_ENOMEM;
    if (dense || ids) {
        memcpy(Hs->data, h0->data, (size_t)(n * h) * real_size(dt));
        const void *X = dense ? x->data : NULL;
        if (dt == XLA_FFI_DataType_F32)
            code = rnn_forward_f32(Hs->data, XU->data, U->data, W->data, b->data, X, ids, (int)T, (int)n, (int)d, (int)h);
        else
            code = rnn_forward_f64(Hs->data, XU->data, U->data, W->data, b->data, X, ids, (int)T, (int)n, (int)d, (int)h);
    }
    free(ids_owned);
    return code ? kernel_error(f, code) : NULL;
}

static XLA_FFI_Error *xla_backward(XLA_FFI_CallFrame *f)
{
    int done;
    XLA_FFI_Error *err = prologue(f, 5, 6, &done);
    if (err || done) return err;
    XLA_FFI_Buffer *dH = arg(f, 0), *Hs = arg(f, 1), *x = arg(f, 2), *U = arg(f, 3), *W = arg(f, 4);
    const XLA_FFI_DataType dt = U->dtype;
    if ((dt != XLA_FFI_DataType_F32 && dt != XLA_FFI_DataType_F64) || U->rank != 2 || x->rank < 2)
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn backward: U must be a float32/float64 matrix");
    const int64_t T = x->dims[0], n = x->dims[1], d = U->dims[0], h = U->dims[1];
    const int dense = !is_int(x);
    XLA_FFI_Buffer *dU = ret(f, 0), *dW = ret(f, 1), *db = ret(f, 2), *dh0 = ret(f, 3), *dX = ret(f, 4);
    XLA_FFI_Buffer *G = ret(f, 5);
    const int want_dX = dense && is(dX, dt, 3, T, n, d);
    if (!is(dH, dt, 3, T, n, h) || !is(Hs, dt, 3, T + 1, n, h) || !check_x(x, dt, T, n, d) ||
        !is(W, dt, 2, h, h, 0) || !is(dU, dt, 2, d, h, 0) || !is(dW, dt, 2, h, h, 0) || !is(db, dt, 1, h, 0, 0) ||
        !is(dh0, dt, 2, n, h, 0) || !(want_dX || is(dX, dt, 1, 0, 0, 0)) || !is(G, dt, 3, T, n, h))
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn backward: a buffer has the wrong dtype or shape");
    if (!fits(T * n, d > h ? d : h) || !fits(d, h) || !fits(T + 1, n * h))
        return fail(f, XLA_FFI_Error_Code_INVALID_ARGUMENT, "fastrnn backward: the problem is too large for 32-bit BLAS sizes");
    int64_t *ids_owned = NULL;
    const int64_t *ids = dense ? NULL : as_int64(x, T * n, &ids_owned);
    if (ids && !in_range(ids, T * n, d)) {
        free(ids_owned);
        return fail(f, XLA_FFI_Error_Code_OUT_OF_RANGE, "fastrnn backward: a token id in x lies outside [0, d)");
    }
    int code = FASTRNN_ENOMEM;
    if (dense || ids) {
        memcpy(G->data, dH->data, (size_t)(T * n * h) * real_size(dt));  /* the kernel turns G into dA */
        const void *X = dense ? x->data : NULL;
        void *dXp = want_dX ? dX->data : NULL;
        if (dt == XLA_FFI_DataType_F32)
            code = rnn_backward_f32(dU->data, dW->data, db->data, dh0->data, dXp, G->data, Hs->data, U->data,
                                    W->data, X, ids, (int)T, (int)n, (int)d, (int)h, xla_copy_wt_below);
        else
            code = rnn_backward_f64(dU->data, dW->data, db->data, dh0->data, dXp, G->data, Hs->data, U->data,
                                    W->data, X, ids, (int)T, (int)n, (int)d, (int)h, xla_copy_wt_below);
    }
    free(ids_owned);
    return code ? kernel_error(f, code) : NULL;
}

void *fastrnn_xla_handler(int which, int64_t copy_wt_below)
{
    xla_copy_wt_below = copy_wt_below;
    switch (which) {
    case FASTRNN_XLA_LOSS: return (void *)xla_loss;
    case FASTRNN_XLA_FORWARD: return (void *)xla_forward;
    case FASTRNN_XLA_BACKWARD: return (void *)xla_backward;
    default: return NULL;
    }
}
