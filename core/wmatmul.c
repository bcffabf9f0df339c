/* wmatmul.c — weight-only matmul from stored formats (see wmatmul.h): tile decode + sgemm, rows for the
 * embedding, one-row weights, and the INT8×INT8→INT32 path. */
#include "core/wmatmul.h"
#include "formats/format.h"
#include "kernels/ggml_types.h"
#include "kernels/hgemm.h"
#include "kernels/int8_gemm.h"
#include "kernels/kquant_gemm.h"
#include "base/parallel.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Floats of weights decoded per sgemm: large enough that sgemm runs at full speed on the block (hundreds
 * of rows for K = 2048), small enough to stay in cache for the multiply that follows and to cost nothing
 * beside the mapped file (4 MB per thread). */
enum { TILE_FLOATS = 1 << 20 };

static const ql_format *stored_format(const ql_gguf_tensor *t) {
    const ql_format *f = ql_format_by_type(t->type);
    if (!f || !f->dequantize_rows) {
        const ql_type_info *ti = ql_type_get(t->type);
        ql_fail(QL_ERR_UNSUPPORTED, "tensor '%s': type %s cannot be decoded yet", t->name, ti ? ti->name : "?");
        return NULL;
    }
    return f;
}

static bool f32_in_place(const ql_gguf_tensor *t) { return t->type == QL_TYPE_F32 && ((uintptr_t)t->data & 3) == 0; }

const float *ql_weight_rows(const ql_backend_weight *w, int64_t r0, int64_t nr, int64_t K, float *buf, int n_threads) {
    if (w->f32) return w->f32 + r0 * K;
    const ql_gguf_tensor *t = w->t;
    if (f32_in_place(t)) return (const float *)t->data + r0 * K;
    const ql_format *f = stored_format(t);
    if (!f) return NULL;
    const int64_t rb = f->whole_tensor ? 0 : ql_format_tensor_bytes(f, K, 1);
    if (rb < 0) {
        ql_fail(QL_ERR_FORMAT, "tensor '%s': rows of %lld do not fit its format %s", t->name, (long long)K, f->name);
        return NULL;
    }
    if (ql_format_dequantize(f, (const uint8_t *)t->data + r0 * rb, buf, nr, K, n_threads)) return NULL;
    return buf;
}

ql_status ql_weight_vector(const ql_backend_weight *w, int64_t n, const float **out, float **owned) {
    *owned = NULL;
    if (w->f32 || f32_in_place(w->t)) {
        *out = ql_weight_rows(w, 0, 1, n, NULL, 1);
        return QL_OK;
    }
    *owned = malloc((size_t)n * sizeof(float));
    if (!*owned) return ql_fail(QL_ERR_NOMEM, "out of memory decoding '%s'", w->t->name);
    *out = ql_weight_rows(w, 0, 1, n, *owned, 1);
    if (!*out) {
        free(*owned);
        *owned = NULL;
        return QL_ERR_UNSUPPORTED;
    }
    return QL_OK;
}

static ql_status add_bias(const ql_backend_weight *bias, float *y, int T, int N) {
    if (!bias) return QL_OK;
    const float *b;
    float *owned;
    ql_status s = ql_weight_vector(bias, N, &b, &owned);
    if (s) return s;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < N; j++) y[(size_t)t * N + j] += b[j];
    free(owned);
    return QL_OK;
}

ql_status ql_wmatmul_f32(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                         int K, int N, float beta, int n_threads) {
    if (w->f32 || f32_in_place(w->t)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, ql_weight_rows(w, 0, N, K, NULL, 1),
                    K, beta, y, N);
        return add_bias(bias, y, T, N);
    }
    const ql_format *f = stored_format(w->t);
    if (!f) return QL_ERR_UNSUPPORTED;
    /* a whole-tensor format (one scale for the matrix, 2-D blocks) decodes every row at once */
    int64_t rows = f->whole_tensor ? N : QL_MAX((int64_t)TILE_FLOATS / K, 16);
    if (rows >= N) rows = N;
    else rows &= ~(int64_t)15; /* whole micro-tiles for sgemm */
    float *buf = malloc((size_t)(rows * K) * sizeof(float));
    if (!buf) return ql_fail(QL_ERR_NOMEM, "out of memory for a %lld x %d tile of '%s'", (long long)rows, K, w->t->name);
    ql_status s = QL_OK;
    for (int64_t n0 = 0; n0 < N && !s; n0 += rows) {
        const int64_t nr = QL_MIN(rows, N - n0);
        const float *wt = ql_weight_rows(w, n0, nr, K, buf, n_threads);
        if (!wt) {
            s = QL_ERR_UNSUPPORTED;
            break;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)nr, K, 1.0f, x, K, wt, K, beta, y + n0, N);
    }
    free(buf);
    return s ? s : add_bias(bias, y, T, N);
}

ql_status ql_wmatmul_get_rows(const ql_backend_weight *w, const int32_t *ids, int n, int dim, float *y) {
    const ql_gguf_tensor *t = w->t;
    if (w->f32 || f32_in_place(t)) {
        for (int i = 0; i < n; i++)
            memcpy(y + (size_t)i * dim, ql_weight_rows(w, ids[i], 1, dim, NULL, 1), (size_t)dim * sizeof(float));
        return QL_OK;
    }
    const ql_format *f = stored_format(t);
    if (!f) return QL_ERR_UNSUPPORTED;
    if (f->whole_tensor) { /* rows are not separable: decode the table once for this call */
        const int64_t N = t->ne[1];
        float *all = malloc((size_t)(N * dim) * sizeof(float));
        if (!all) return ql_fail(QL_ERR_NOMEM, "out of memory decoding '%s'", t->name);
        if (!ql_weight_rows(w, 0, N, dim, all, 1)) {
            free(all);
            return QL_ERR_UNSUPPORTED;
        }
        for (int i = 0; i < n; i++) memcpy(y + (size_t)i * dim, all + (size_t)ids[i] * dim, (size_t)dim * sizeof(float));
        free(all);
        return QL_OK;
    }
    for (int i = 0; i < n; i++)
        if (!ql_weight_rows(w, ids[i], 1, dim, y + (size_t)i * dim, 1)) return QL_ERR_UNSUPPORTED;
    return QL_OK;
}

/* ---------------- INT8 × INT8 → INT32 ---------------- */

bool ql_wmatmul_int8_applies(const ql_backend_weight *w, int K) {
    if (w->f32 || !w->aq || w->aq->mode != QL_ACT_INT8_TOKEN || K > QL_I8GEMM_MAX_K) return false;
    const ql_format *f = ql_format_by_type(w->t->type);
    /* the grid describes the row layout: an fp16 scale, then K one-byte codes with zero point 128 */
    return f && !f->whole_tensor && f->grid && f->grid->kind == QL_GRID_KIND_INT && f->grid->bits == 8 &&
           f->grid->group == 0 && f->grid->sym && ql_format_tensor_bytes(f, K, 1) == (int64_t)K + 2;
}

void ql_quantize_tokens_int8(const float *x, int T, int K, int8_t *q, float *d) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * K;
        int8_t *qr = q + (size_t)t * K;
        float amax = 0;
        for (int j = 0; j < K; j++) amax = fmaxf(amax, fabsf(xr[j]));
        const float id = amax > 0 ? 127.0f / amax : 0.0f;
        d[t] = amax / 127.0f;
        for (int j = 0; j < K; j++) {
            float v = nearbyintf(xr[j] * id);
            qr[j] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
        }
    }
}

enum { INT8_BLOCK_ROWS = 256 }; /* weight rows per integer product: bounds the int32 accumulator block */

ql_status ql_wmatmul_int8(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                          int K, int N, float beta, void *xtmp, int n_threads) {
    int8_t *q = xtmp;
    float *d = (float *)((uint8_t *)xtmp + (((size_t)T * K + 15) & ~(size_t)15));
    ql_quantize_tokens_int8(x, T, K, q, d);
    const int64_t ldw = (int64_t)K + 2;
    const uint8_t *rows = w->t->data;
    int32_t *acc = malloc((size_t)T * INT8_BLOCK_ROWS * sizeof(int32_t));
    if (!acc) return ql_fail(QL_ERR_NOMEM, "out of memory for an int32 block of '%s'", w->t->name);
    for (int n0 = 0; n0 < N; n0 += INT8_BLOCK_ROWS) {
        const int nb = QL_MIN(INT8_BLOCK_ROWS, N - n0);
        ql_gemm_s8u8(q, K, rows + (int64_t)n0 * ldw + 2, ldw, T, nb, K, acc, nb, n_threads);
        for (int j = 0; j < nb; j++) {
            const uint8_t *r = rows + (int64_t)(n0 + j) * ldw;
            const float s = ql_fp16_to_fp32((uint16_t)(r[0] | (r[1] << 8)));
            for (int t = 0; t < T; t++) {
                float *yp = y + (size_t)t * N + n0 + j;
                const float v = d[t] * s * (float)acc[(size_t)t * nb + j];
                *yp = beta != 0.0f ? *yp + v : v;
            }
        }
    }
    free(acc);
    return add_bias(bias, y, T, N);
}

/* ---- K-quant weights under Q8_K activations: integer dot products (kernels/kquant_gemm.h) ---- */

static bool sgemm_forced(void) {
    static int off = -1; /* QL_KQUANT_F32, read once: this runs before every matmul */
    if (off < 0) off = getenv("QL_KQUANT_F32") != NULL;
    return off;
}

bool ql_wmatmul_kquant_applies(const ql_backend_weight *w, int K) {
    const bool off = sgemm_forced();
    /* the activation rounding llama.cpp pairs with each of these types (core/infer.c) is what the codes copy */
    return !w->f32 && (!w->aq || w->aq->mode == QL_ACT_NONE) && K % (w->act_type == QL_TYPE_Q8_K ? 256 : 32) == 0 &&
           ql_kq_gemm_available(w->t->type, w->act_type) && !off;
}

typedef struct {
    uint32_t type;
    const uint8_t *rows;
    int64_t row_bytes;
    int N;
    const ql_kq_act *a;
    float *y;
    bool accumulate;
} kq_job;

/* Output columns [n0, n1) of N for row tiles [b, e) of 16: the K-quant and half kernels split N this way. */
static bool tile_columns(int64_t b, int64_t e, int N, int *n0, int *n1) {
    *n0 = (int)b * 16;
    *n1 = (int)QL_MIN(e * 16, (int64_t)N);
    return *n1 > *n0;
}

/* Runs fn over the 16-row tiles of N weight rows, at most n_threads at once (one tile per task at least). */
static void for_row_tiles(int n_threads, int N, void (*fn)(void *, int, int64_t, int64_t), void *job) {
    const int64_t tiles = (N + 15) / 16;
    ql_parallel_for((int)QL_MIN((int64_t)QL_MAX(n_threads, 1), tiles), tiles, fn, job);
}

static void kq_range(void *vctx, int worker, int64_t b, int64_t e) {
    (void)worker;
    const kq_job *j = vctx;
    int n0, n1;
    if (tile_columns(b, e, j->N, &n0, &n1))
        ql_kq_gemm_vnni(j->type, j->rows + (int64_t)n0 * j->row_bytes, j->row_bytes, n1 - n0, j->a, j->y + n0, j->N,
                        j->accumulate);
}

ql_status ql_wmatmul_kquant(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                            int K, int N, float beta, int n_threads) {
    ql_kq_act a;
    if (!ql_kq_act_quantize(x, T, K, w->act_type, &a)) return QL_ERR_UNSUPPORTED; /* a value not finite: the float path */
    const ql_format *f = stored_format(w->t);
    if (!f) {
        ql_kq_act_free(&a);
        return QL_ERR_UNSUPPORTED;
    }
    kq_job j = {w->t->type, w->t->data, ql_format_tensor_bytes(f, K, 1), N, &a, y, beta != 0.0f};
    for_row_tiles(n_threads, N, kq_range, &j);
    ql_kq_act_free(&a);
    return add_bias(bias, y, T, N);
}

/* ---- F16 / BF16 weights widened in the kernel (kernels/hgemm.h) ---- */

bool ql_wmatmul_half_applies(const ql_backend_weight *w, int K) {
    return !w->f32 && (!w->aq || w->aq->mode == QL_ACT_NONE) && ((uintptr_t)w->t->data & 1) == 0 &&
           ql_hgemm_available(w->t->type, K) && !sgemm_forced();
}

typedef struct {
    uint32_t type;
    const uint16_t *w;
    const float *x;
    const uint16_t *x16; /* the activations in the weight's type when they were rounded to it, or NULL */
    float *y;
    int T, K, N;
    bool accumulate;
} half_job;

static void half_range(void *vctx, int worker, int64_t b, int64_t e) {
    (void)worker;
    const half_job *j = vctx;
    int n0, n1;
    if (!tile_columns(b, e, j->N, &n0, &n1)) return;
    if (j->x16) ql_hgemm_avx512_x16(j->type, j->w + (size_t)n0 * j->K, n1 - n0, j->x16, j->T, j->K, j->y + n0, j->N, j->accumulate);
    else ql_hgemm_avx512(j->type, j->w + (size_t)n0 * j->K, n1 - n0, j->x, j->T, j->K, j->y + n0, j->N, j->accumulate);
}

ql_status ql_wmatmul_half(const ql_backend_weight *w, const ql_backend_weight *bias, const float *x, float *y, int T,
                          int K, int N, float beta, int n_threads) {
    /* activations rounded to the weight's type (llama.cpp's F16/BF16 dot products) stream as 16 bits */
    uint16_t *x16 = w->act_type == w->t->type ? malloc((size_t)T * K * sizeof *x16) : NULL;
    if (x16) ql_hgemm_narrow(w->t->type, x, (int64_t)T * K, x16);
    half_job j = {w->t->type, w->t->data, x, x16, y, T, K, N, beta != 0.0f};
    for_row_tiles(n_threads, N, half_range, &j);
    free(x16);
    return add_bias(bias, y, T, N);
}
