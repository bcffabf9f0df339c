/* test_aqlm.c — AQLM (kernels/aqlm.c, formats/fmt_aqlm.c, methods/m_aqlm.c): exact size accounting with the
 * codebooks and scales, the decoder against a hand-written sum and its AVX2 twin bit for bit (random and
 * adversarial bytes), beam search never worse than greedy, the fast least-squares assembly against its plain
 * reference (random and adversarial codes and scales), the loss never rising across alternations (least
 * squares and Adam), a run interrupted by Ctrl-C and resumed from its checkpoint giving the bytes of an
 * uninterrupted run, and a GGUF with AQLM tensors written, read back and decoded to the same floats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/gguf.h"
#include "core/infer.h"
#include "formats/fmt_aqlm.h"
#include "kernels/aqlm.h"
#include "kernels/simd.h"
#include "methods/method.h"
#include "tests/test_util.h"

static uint64_t rng_state = 12345;
static double urand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / (double)(1ull << 53);
}
static float gauss(void) {
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* a correlated SPD "Hessian" 2 XᵀX / n from random tokens with a few loud channels */
static void make_hessian(int64_t n, int64_t ntok, double *xtx, float *h) {
    float *x = malloc(sizeof(float) * (size_t)(ntok * n));
    for (int64_t t = 0; t < ntok; t++) {
        float common = gauss();
        for (int64_t i = 0; i < n; i++) x[t * n + i] = gauss() + 0.5f * common + (i % 17 == 0 ? 4 * gauss() : 0);
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t t = 0; t < ntok; t++) acc += (double)x[t * n + i] * x[t * n + j];
            if (xtx) xtx[i * n + j] = acc;
            if (h) h[i * n + j] = (float)(2 * acc / (double)ntok + (i == j ? 0.01 : 0));
        }
    free(x);
}

/* ---- sizes: codebooks, scales and codes counted exactly ---- */
static void test_bpw_accounting(void **state) {
    (void)state;
    /* 2x8, 256x256: 2·256·8 f16 + 256 f16 scales + 256·32 groups·2 one-byte codes */
    assert_int_equal(ql_aqlm_tensor_bytes(2, 8, 256, 256), 2 * 256 * 8 * 2 + 256 * 2 + 256 * 32 * 2);
    /* 1x16: two-byte codes, a 2^16 x 8 codebook */
    assert_int_equal(ql_aqlm_tensor_bytes(1, 16, 4096, 4096), 65536LL * 8 * 2 + 4096 * 2 + 4096LL * 512 * 2);
    /* a short last group still takes a whole code: 172 = 21·8 + 4 -> 22 groups */
    assert_int_equal(ql_aqlm_tensor_bytes(4, 8, 172, 3), 4 * 256 * 8 * 2 + 3 * 2 + 3 * 22 * 4);
    assert_int_equal(ql_aqlm_tensor_bytes(2, 8, 0, 3), -1);
    assert_int_equal(ql_aqlm_tensor_bytes(2, 8, INT64_MAX / 2, 1 << 20), -1);
    static const char *names[] = {"aqlm_1x16", "aqlm_2x8", "aqlm_1x8", "aqlm_4x8"};
    static const int mb[][2] = {{1, 16}, {2, 8}, {1, 8}, {4, 8}};
    for (int i = 0; i < 4; i++) {
        const ql_format *f = ql_format_by_name(names[i]);
        assert_non_null(f);
        int M = 0, B = 0;
        assert_true(ql_aqlm_format_params(f, &M, &B));
        assert_int_equal(M, mb[i][0]);
        assert_int_equal(B, mb[i][1]);
        assert_true(f->whole_tensor);
        assert_null(f->llama); /* llama.cpp cannot load it */
        /* the registry's size is the kernel's, and bpw is the exact figure of a 4096x4096 tensor */
        assert_int_equal(ql_format_tensor_bytes(f, 768, 256), ql_aqlm_tensor_bytes(M, B, 768, 256));
        double bits = 8.0 * (double)ql_aqlm_tensor_bytes(M, B, 4096, 4096);
        assert_true(fabs(bits / (4096.0 * 4096.0) - f->bpw) < 1e-12);
        /* code bits alone would understate it: the codebooks and scales are in */
        assert_true(f->bpw > M * B / 8.0);
    }
    assert_false(ql_aqlm_format_params(ql_format_by_name("q4_k"), NULL, NULL));
}

/* ---- decoder: hand-computed sums; AVX2 twin bit for bit ---- */
static void test_decode_reference_and_avx2(void **state) {
    (void)state;
    const int M = 2, B = 8, K = 256;
    const int64_t nr = 5, nc = 27; /* 4 groups, the last one of 3 */
    ql_aqlm_state st;
    assert_int_equal(ql_aqlm_state_alloc(&st, M, B, nr, nc), QL_OK);
    for (int64_t i = 0; i < (int64_t)M * K * 8; i++) st.codebooks[i] = ql_fp16_to_fp32(ql_fp32_to_fp16(gauss()));
    for (int64_t r = 0; r < nr; r++) st.scales[r] = ql_fp16_to_fp32(ql_fp32_to_fp16(0.1f * (float)(r + 1)));
    for (int64_t i = 0; i < nr * st.ngroups * M; i++) st.codes[i] = (uint16_t)(urand() * K);
    int64_t nb = ql_aqlm_tensor_bytes(M, B, nc, nr);
    uint8_t *buf = malloc((size_t)nb);
    ql_aqlm_pack(&st, buf);
    float *y = malloc(sizeof(float) * nr * nc), *y2 = malloc(sizeof(float) * nr * nc);
    ql_aqlm_dequantize_ref(M, B, buf, y, nr, nc);
    for (int64_t r = 0; r < nr; r++)
        for (int64_t c = 0; c < nc; c++) {
            int64_t j = c / 8, d = c % 8;
            float sum = 0;
            for (int m = 0; m < M; m++) sum += st.codebooks[(m * K + st.codes[(r * st.ngroups + j) * M + m]) * 8 + d];
            assert_true(y[r * nc + c] == sum * st.scales[r]);
        }
    /* unpack is the inverse of pack */
    ql_aqlm_state back;
    assert_int_equal(ql_aqlm_state_alloc(&back, M, B, nr, nc), QL_OK);
    ql_aqlm_unpack(buf, &back);
    assert_memory_equal(back.codes, st.codes, sizeof(uint16_t) * (size_t)(nr * st.ngroups * M));
    assert_memory_equal(back.codebooks, st.codebooks, sizeof(float) * (size_t)(M * K * 8));
    ql_aqlm_state_free(&back);
    ql_aqlm_state_free(&st);
    free(buf);
    free(y), free(y2);

    /* AVX2 twin: random bytes (NaN/inf/subnormal f16 included) and every scheme, odd shapes */
    const ql_simd_level saved = ql_simd_level_get();
    if (ql_simd_detect() < QL_SIMD_AVX2) printf("SKIP (avx2 part): this CPU has no AVX2\n");
    static const int schemes[][2] = {{1, 16}, {2, 8}, {1, 8}, {4, 8}};
    static const int64_t shapes[][2] = {{3, 8}, {2, 31}, {7, 64}, {1, 1}, {4, 172}};
    for (int s = 0; s < 4 && ql_simd_detect() >= QL_SIMD_AVX2; s++)
        for (int k = 0; k < 5; k++) {
            const int Ms = schemes[s][0], Bs = schemes[s][1];
            const int64_t r = shapes[k][0], c = shapes[k][1], n = ql_aqlm_tensor_bytes(Ms, Bs, c, r);
            uint8_t *b = malloc((size_t)n);
            for (int64_t i = 0; i < n; i++) b[i] = (uint8_t)(urand() * 256);
            float *a = malloc(sizeof(float) * r * c), *v = malloc(sizeof(float) * r * c);
            ql_aqlm_dequantize_ref(Ms, Bs, b, a, r, c);
            ql_simd_set_level(QL_SIMD_AVX2);
            ql_aqlm_dequantize_avx2(Ms, Bs, b, v, r, c);
            ql_simd_set_level(saved);
            /* bit for bit; a NaN only has to stay a NaN (which operand's payload x86 keeps depends on how the
             * compiler ordered the scalar sum) */
            for (int64_t i = 0; i < r * c; i++)
                if (!(isnan(a[i]) && isnan(v[i])) && memcmp(&a[i], &v[i], 4) != 0)
                    fail_msg("aqlm_%dx%d [%lld x %lld] element %lld: ref %a, avx2 %a", Ms, Bs, (long long)r,
                             (long long)c, (long long)i, a[i], v[i]);
            free(b), free(a), free(v);
        }
}

/* ---- beam search is never worse than greedy, and never raises the loss ---- */
static void test_beam_never_worse_than_greedy(void **state) {
    (void)state;
    const int M = 2, K = 256;
    float *cb = malloc(sizeof(float) * M * K * 8);
    int better = 0;
    for (int trial = 0; trial < 200; trial++) {
        for (int i = 0; i < M * K * 8; i++) cb[i] = gauss() * (i < K * 8 ? 1.0f : 0.3f);
        float a[64], hjj[64], g[8];
        for (int i = 0; i < 64; i++) a[i] = gauss();
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 8; j++) {
                float acc = i == j ? 0.1f : 0;
                for (int t = 0; t < 8; t++) acc += a[i * 8 + t] * a[j * 8 + t];
                hjj[i * 8 + j] = acc;
            }
        for (int i = 0; i < 8; i++) g[i] = 3 * gauss();
        uint16_t start[2] = {(uint16_t)(urand() * K), (uint16_t)(urand() * K)}, c1[2], c4[2];
        memcpy(c1, start, sizeof c1);
        memcpy(c4, start, sizeof c4);
        double d1 = ql_aqlm_search_group(cb, M, K, hjj, g, 0.7f, 1, c1);
        double d4 = ql_aqlm_search_group(cb, M, K, hjj, g, 0.7f, 4, c4);
        assert_true(d1 <= 0 && d4 <= 0);
        assert_true(d4 <= d1);
        if (d4 < d1 - 1e-9) better++;
        /* the reported change is the true change of -2 δ·g + δᵀ H δ */
        double dl = 0, delta[8];
        for (int d = 0; d < 8; d++)
            delta[d] = 0.7 * ((double)cb[c4[0] * 8 + d] + cb[(K + c4[1]) * 8 + d] - cb[start[0] * 8 + d] -
                              cb[(K + start[1]) * 8 + d]);
        for (int d = 0; d < 8; d++) {
            dl -= 2 * delta[d] * g[d];
            for (int e = 0; e < 8; e++) dl += delta[d] * hjj[d * 8 + e] * delta[e];
        }
        assert_true(fabs(dl - d4) <= 1e-3 * (1 + fabs(dl)));
    }
    printf("  beam 4 strictly better than greedy on %d of 200 groups\n", better);
    assert_true(better > 0); /* the comparison is not vacuous */
    free(cb);
}

/* ---- the least-squares assembly: the fast (bucketed, banded, AVX2) one against the plain reference ---- */
/* Each case: M codebooks of K, ng groups, nrows rows; codes and scales by `kind`. The fast assembly sums every
 * entry in another order, so it must equal the reference within 1e-12 of the entry's sum of |terms| (the
 * reference run on |H|), be bit-identical for 1 and 3 threads and for its AVX2 and plain scatter, and leave
 * the lower blocks (k2 < k) exactly zero as the reference does. */
static void ls_case(int M, int K, int64_t ng, int64_t nrows, int kind) {
    const int64_t n = ng * 8, P = (int64_t)K * 8;
    float *h = malloc(sizeof(float) * (size_t)(n * n)), *habs = malloc(sizeof(float) * (size_t)(n * n));
    float *sc = malloc(sizeof(float) * (size_t)nrows);
    uint16_t *codes = malloc(sizeof(uint16_t) * (size_t)(nrows * ng * M));
    double *ref = calloc((size_t)(P * P), sizeof(double)), *bound = calloc((size_t)(P * P), sizeof(double));
    double *fast = calloc((size_t)(P * P), sizeof(double)), *fast3 = calloc((size_t)(P * P), sizeof(double));
    double *plain = calloc((size_t)(P * P), sizeof(double));
    assert_non_null(h), assert_non_null(habs), assert_non_null(sc), assert_non_null(codes);
    assert_true(ref && bound && fast && fast3 && plain);
    make_hessian(n, 3 * n, NULL, h);
    for (int64_t i = 0; i < n * n; i++) {
        if (kind == 3 && i % 7 == 0) h[i] = -h[i] * 1e3f; /* loud entries of both signs (symmetry not needed) */
        habs[i] = fabsf(h[i]);
    }
    for (int64_t r = 0; r < nrows; r++) {
        sc[r] = kind == 4 ? 0.0f : (r % 5 == 2) ? 0.0f : (float)(0.01 + urand()) * (kind == 3 ? 1e3f : 1.0f);
        for (int64_t j = 0; j < ng; j++)
            for (int m = 0; m < M; m++) {
                int64_t c = (int64_t)(urand() * K);
                if (kind == 1) c = K - 1;        /* one code used by every group of every row */
                if (kind == 2) c = (j % 3) * 5 % K; /* a few codes repeated within each row */
                codes[(r * ng + j) * M + m] = (uint16_t)c;
            }
    }
    for (int m = 0; m < M; m++) {
        memset(ref, 0, sizeof(double) * (size_t)(P * P)), memset(bound, 0, sizeof(double) * (size_t)(P * P));
        memset(fast, 0, sizeof(double) * (size_t)(P * P)), memset(fast3, 0, sizeof(double) * (size_t)(P * P));
        memset(plain, 0, sizeof(double) * (size_t)(P * P));
        ql_aqlm_ls_assemble_ref(h, NULL, ng, codes, M, K, m, nrows, sc, ref);
        ql_aqlm_ls_assemble_ref(habs, NULL, ng, codes, M, K, m, nrows, sc, bound);
        assert_int_equal(ql_aqlm_ls_assemble(h, NULL, ng, codes, M, K, m, nrows, sc, 1, fast), QL_OK);
        assert_int_equal(ql_aqlm_ls_assemble(h, NULL, ng, codes, M, K, m, nrows, sc, 3, fast3), QL_OK);
        ql_simd_level lv = ql_simd_level_get();
        ql_simd_set_level(QL_SIMD_REF);
        assert_int_equal(ql_aqlm_ls_assemble(h, NULL, ng, codes, M, K, m, nrows, sc, 2, plain), QL_OK);
        ql_simd_set_level(lv);
        assert_memory_equal(fast, fast3, sizeof(double) * (size_t)(P * P));
        assert_memory_equal(fast, plain, sizeof(double) * (size_t)(P * P));
        double worst = 0, nonzero = 0;
        for (int64_t i = 0; i < P; i++)
            for (int64_t c = 0; c < P; c++) {
                const double a = ref[i * P + c], b = fast[i * P + c], tol = 1e-12 * bound[i * P + c];
                if (c / 8 < i / 8) assert_true(a == 0 && b == 0); /* lower blocks: not assembled */
                if (!(fabs(a - b) <= tol))
                    fail_msg("M=%d K=%d ng=%lld kind %d: A[%lld][%lld] = %.17g, reference %.17g (bound %.3g)", M, K,
                             (long long)ng, kind, (long long)i, (long long)c, b, a, tol);
                if (tol > 0) worst = fmax(worst, fabs(a - b) / tol * 1e-12);
                nonzero += a != 0;
            }
        if (kind == 4) assert_true(nonzero == 0);
        else assert_true(nonzero > 0); /* the comparison is not vacuous */
        if (m == 0) printf("  M=%d K=%d ng=%lld rows=%lld kind %d: largest |fast - ref| / sum|terms| = %.2g\n", M, K,
                           (long long)ng, (long long)nrows, kind, worst);
    }
    /* the diagonal-H path is the reference itself */
    float *hd = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) hd[i] = h[i * n + i];
    memset(ref, 0, sizeof(double) * (size_t)(P * P)), memset(fast, 0, sizeof(double) * (size_t)(P * P));
    ql_aqlm_ls_assemble_ref(NULL, hd, ng, codes, M, K, 0, nrows, sc, ref);
    assert_int_equal(ql_aqlm_ls_assemble(NULL, hd, ng, codes, M, K, 0, nrows, sc, 2, fast), QL_OK);
    assert_memory_equal(ref, fast, sizeof(double) * (size_t)(P * P));
    free(hd), free(h), free(habs), free(sc), free(codes), free(ref), free(bound), free(fast), free(fast3), free(plain);
}

static void test_ls_assembly_matches_reference(void **state) {
    (void)state;
    ls_case(2, 16, 12, 40, 0);  /* random codes, every fifth scale zero */
    ls_case(1, 8, 9, 17, 1);    /* one code used by every group */
    ls_case(2, 16, 10, 23, 2);  /* codes repeated within a row */
    ls_case(2, 32, 8, 30, 3);   /* loud H entries of both signs, scales up to 1e3 */
    ls_case(1, 4, 5, 6, 4);     /* every scale zero: nothing assembled */
    ls_case(3, 256, 6, 50, 0);  /* most codewords unused, several bands */
    ls_case(1, 2, 1, 1, 0);     /* one row of one group */
    if (ql_simd_detect() < QL_SIMD_AVX2) printf("  no AVX2 on this CPU: only the plain scatter was compared\n");
}

/* ---- alternations never raise the loss (least squares and Adam), and they do lower it ---- */
static void test_loss_non_increasing(void **state) {
    (void)state;
    const int64_t nr = 48, nc = 64;
    float *w = malloc(sizeof(float) * nr * nc), *h = malloc(sizeof(float) * nc * nc);
    for (int64_t i = 0; i < nr * nc; i++) w[i] = 0.05f * gauss();
    make_hessian(nc, 256, NULL, h);
    for (int upd = 0; upd < 2; upd++) {
        ql_aqlm_params p = {.M = 2, .B = 4, .beam = 2, .init_iters = 10, .update = upd ? QL_AQLM_UPDATE_ADAM
                                                                                         : QL_AQLM_UPDATE_LS,
                            .adam_steps = 20, .lr = 1e-2, .seed = 3, .n_threads = 2};
        ql_aqlm_solver *s = ql_aqlm_solver_new(w, nr, nc, h, NULL, &p);
        assert_non_null(s);
        assert_int_equal(ql_aqlm_init(s), QL_OK);
        double first = ql_aqlm_loss(s), prev = first;
        for (int it = 0; it < 6; it++) {
            assert_int_equal(ql_aqlm_alternate(s), QL_OK);
            double l = ql_aqlm_loss(s);
            printf("  %s alternation %d: loss %.6g\n", upd ? "adam" : "ls", it + 1, l);
            assert_true(l <= prev);
            prev = l;
        }
        assert_true(prev < 0.95 * first);
        /* the tracked loss is the true tr(ΔW H ΔWᵀ) of the packed bytes */
        const ql_aqlm_state *st = ql_aqlm_solver_state(s);
        uint8_t *buf = malloc((size_t)ql_aqlm_tensor_bytes(2, 4, nc, nr));
        float *y = malloc(sizeof(float) * nr * nc);
        ql_aqlm_pack(st, buf);
        ql_aqlm_dequantize_ref(2, 4, buf, y, nr, nc);
        double L = 0;
        for (int64_t r = 0; r < nr; r++)
            for (int64_t i = 0; i < nc; i++)
                for (int64_t j = 0; j < nc; j++)
                    L += (double)(w[r * nc + i] - y[r * nc + i]) * h[i * nc + j] * (w[r * nc + j] - y[r * nc + j]);
        assert_true(fabs(L - prev) <= 1e-3 * L);
        free(buf), free(y);
        ql_aqlm_solver_free(s);
    }
    free(w), free(h);
}

/* ---- Ctrl-C keeps a checkpoint; resuming gives the uninterrupted bytes ---- */
typedef struct {
    volatile int cancel;
    int64_t stop_at; /* cancel when progress reaches this alternation */
} cancel_ctx;

static void cancel_cb(void *user, int64_t done, int64_t total, const char *phase) {
    (void)total, (void)phase;
    cancel_ctx *c = user;
    if (c->stop_at > 0 && done >= c->stop_at) c->cancel = 1;
}

static int count_checkpoints(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".qlck") != NULL;
    if (d) closedir(d);
    return n;
}

static void test_checkpoint_resume(void **state) {
    (void)state;
    char dir[] = "/tmp/qlab-aqlm-ck-XXXXXX";
    assert_non_null(mkdtemp(dir));
    setenv("QL_CHECKPOINT_DIR", dir, 1);
    const int64_t nr = 96, nc = 64; /* 768 groups: more than the 256 codewords */
    float *w = malloc(sizeof(float) * nr * nc), *wc = malloc(sizeof(float) * nr * nc);
    double *xtx = malloc(sizeof(double) * nc * nc);
    for (int64_t i = 0; i < nr * nc; i++) w[i] = 0.05f * gauss();
    make_hessian(nc, 128, xtx, NULL);
    ql_input_stats st = {.n = nc, .n_tokens = 128, .xtx = xtx};
    const ql_method *m = ql_method_by_name("aqlm");
    const ql_format *f = ql_format_by_name("aqlm_2x8");
    assert_non_null(m);
    ql_opt_values ov;
    assert_int_equal(ql_method_parse_opts(m, "iters=6,tol=0,beam=2", &ov), QL_OK);
    const int64_t nb = ql_format_tensor_bytes(f, nc, nr);
    uint8_t *ref = malloc((size_t)nb), *got = malloc((size_t)nb);

    ql_method_opts o = {.values = &ov, .n_threads = 2};
    memcpy(wc, w, sizeof(float) * nr * nc);
    assert_int_equal(m->quantize_tensor(wc, nr, nc, f, &st, &o, ref), QL_OK);
    assert_int_equal(count_checkpoints(dir), 0);

    cancel_ctx cc = {.stop_at = 3}; /* k-means start + 2 alternations, then Ctrl-C */
    ql_progress pr = {.fn = cancel_cb, .user = &cc, .cancel = &cc.cancel};
    o.progress = &pr;
    memcpy(wc, w, sizeof(float) * nr * nc);
    memset(got, 0, (size_t)nb);
    assert_int_equal(m->quantize_tensor(wc, nr, nc, f, &st, &o, got), QL_ERR_CANCELLED);
    assert_int_equal(count_checkpoints(dir), 1);

    cc.cancel = 0, cc.stop_at = 0;
    memcpy(wc, w, sizeof(float) * nr * nc);
    assert_int_equal(m->quantize_tensor(wc, nr, nc, f, &st, &o, got), QL_OK);
    assert_memory_equal(got, ref, (size_t)nb);
    assert_int_equal(count_checkpoints(dir), 0); /* removed once the tensor is done */

    /* a damaged checkpoint is ignored, not trusted */
    cc.stop_at = 3;
    memcpy(wc, w, sizeof(float) * nr * nc);
    assert_int_equal(m->quantize_tensor(wc, nr, nc, f, &st, &o, got), QL_ERR_CANCELLED);
    DIR *d = opendir(dir);
    char path[512] = "";
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".qlck")) snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    closedir(d);
    assert_int_equal(truncate(path, 100), 0);
    cc.cancel = 0, cc.stop_at = 0;
    memcpy(wc, w, sizeof(float) * nr * nc);
    assert_int_equal(m->quantize_tensor(wc, nr, nc, f, &st, &o, got), QL_OK);
    assert_memory_equal(got, ref, (size_t)nb);

    /* without a Hessian the method refuses, naming what it needs */
    assert_int_equal(m->quantize_tensor(wc, nr, nc, f, NULL, &o, got), QL_ERR_ARG);
    /* and it only writes AQLM formats */
    char why[200];
    assert_false(ql_method_serves(m, ql_format_by_name("q4_k"), why, sizeof why));
    assert_true(ql_method_serves(m, f, why, sizeof why));
    rmdir(dir);
    unsetenv("QL_CHECKPOINT_DIR");
    free(w), free(wc), free(xtx), free(ref), free(got);
}

/* ---- GGUF: write AQLM tensors, read them back, decode the same floats ---- */
static void test_gguf_round_trip(void **state) {
    (void)state;
    static const char *names[] = {"aqlm_2x8", "aqlm_1x8", "aqlm_4x8", "aqlm_1x16"};
    char path[] = "/tmp/qlab-aqlm-XXXXXX.gguf";
    int fd = mkstemps(path, 5);
    assert_true(fd >= 0);
    close(fd);
    const int64_t nr = 24, nc = 40;
    float *w = malloc(sizeof(float) * nr * nc), *y = malloc(sizeof(float) * nr * nc),
          *z = malloc(sizeof(float) * nr * nc);
    for (int64_t i = 0; i < nr * nc; i++) w[i] = gauss();
    ql_gguf *g = ql_gguf_new();
    void *bufs[4];
    for (int i = 0; i < 4; i++) {
        const ql_format *f = ql_format_by_name(names[i]);
        int64_t nb = ql_format_tensor_bytes(f, nc, nr);
        bufs[i] = malloc((size_t)nb);
        assert_int_equal(ql_format_quantize(f, w, bufs[i], nr, nc, NULL, 2), QL_OK);
        int64_t ne[2] = {nc, nr};
        char tn[32];
        snprintf(tn, sizeof tn, "t%d.weight", i);
        assert_true(ql_gguf_add_tensor(g, tn, f->type, 2, ne, bufs[i]) >= 0);
    }
    assert_int_equal(ql_gguf_write(g, path, NULL), QL_OK);
    ql_gguf_free(g);
    ql_gguf *r = NULL;
    assert_int_equal(ql_gguf_open(path, &r), QL_OK);
    for (int i = 0; i < 4; i++) {
        const ql_format *f = ql_format_by_name(names[i]);
        const ql_gguf_tensor *t = &r->tensors[i];
        assert_int_equal(t->type, f->type);
        assert_int_equal((int64_t)t->nbytes, ql_format_tensor_bytes(f, nc, nr));
        assert_memory_equal(t->data, bufs[i], t->nbytes);
        assert_true(ql_tensor_to_f32(t, y, 2));
        assert_int_equal(ql_format_dequantize(f, bufs[i], z, nr, nc, 1), QL_OK);
        assert_memory_equal(y, z, sizeof(float) * (size_t)(nr * nc));
        double e = 0, n2 = 0;
        for (int64_t k = 0; k < nr * nc; k++) e += (y[k] - w[k]) * (y[k] - w[k]), n2 += w[k] * w[k];
        printf("  %s: relative RMSE %.4f on a 24x40 N(0,1) tensor\n", names[i], sqrt(e / n2));
        assert_true(sqrt(e / n2) < 0.9);
        free(bufs[i]);
    }
    ql_gguf_free(r);
    unlink(path);
    free(w), free(y), free(z);
}

int main(void) {
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpw_accounting),
        cmocka_unit_test(test_decode_reference_and_avx2),
        cmocka_unit_test(test_beam_never_worse_than_greedy),
        cmocka_unit_test(test_ls_assembly_matches_reference),
        cmocka_unit_test(test_loss_non_increasing),
        cmocka_unit_test(test_checkpoint_resume),
        cmocka_unit_test(test_gguf_round_trip),
    };
    ql_test_order_from_env(tests, QL_ARRAY_LEN(tests));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
