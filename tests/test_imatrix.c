/* test_imatrix.c — llama.cpp importance matrices: the reference files in
 * ../shared/testdata/stories260K-imatrix (GGUF and legacy .dat from the same statistics) load to the
 * same importance, our .dat conversion is byte-identical to llama.cpp's, both round trips hold, and
 * truncated or corrupt files are rejected with a message naming the file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/ggml_types.h"
#include "core/gguf.h"
#include "pipeline/imatrix.h"
#include "tests/test_util.h"

#define DIR "testdata/stories260K-imatrix/"

static char *tmpname(const char *suffix) {
    char *p = malloc(64);
    snprintf(p, 64, "/tmp/qlab-imatrix-XXXXXX");
    int fd = mkstemp(p);
    assert_true(fd >= 0);
    close(fd);
    unlink(p);
    strcat(p, suffix);
    return p;
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

static ql_imatrix *load_ok(const char *path, int64_t dat_cs) {
    ql_imatrix *im = NULL;
    ql_status s = ql_imatrix_load_ex(path, dat_cs, &im);
    if (s) fprintf(stderr, "load %s: %s\n", path, ql_last_error());
    assert_int_equal(s, QL_OK);
    assert_non_null(im);
    return im;
}

/* Both sides have the same names (in any order) and importance within `rel` relative error. */
static void assert_same_importance(const ql_imatrix *a, const ql_imatrix *b, double rel) {
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const ql_imatrix_entry *ea = &a->entries[i];
        const ql_imatrix_entry *eb = ql_imatrix_find(b, ea->name);
        assert_non_null(eb);
        assert_int_equal(ea->n, eb->n);
        float *wa = malloc(sizeof(float) * (size_t)ea->n), *wb = malloc(sizeof(float) * (size_t)ea->n);
        assert_true(ql_imatrix_importance(a, ea->name, ea->n, wa));
        assert_true(ql_imatrix_importance(b, ea->name, ea->n, wb));
        for (int64_t j = 0; j < ea->n; j++) {
            double d = fabs((double)wa[j] - (double)wb[j]);
            if (d > rel * fabs((double)wa[j]))
                fail_msg("%s[%lld]: %.9g vs %.9g", ea->name, (long long)j, (double)wa[j], (double)wb[j]);
        }
        free(wa);
        free(wb);
    }
}

static void test_reference_files_agree(void **state) {
    (void)state;
    char g_path[512], d_path[512];
    if (!shared_path(g_path, sizeof g_path, DIR "imatrix-ts.gguf") ||
        !shared_path(d_path, sizeof d_path, DIR "imatrix-ts.dat")) {
        skip();
        return;
    }
    ql_imatrix *g = load_ok(g_path, 0), *d = load_ok(d_path, 256);
    assert_int_equal(g->n, 35);
    assert_int_equal(d->n, 35);
    assert_int_equal(g->chunk_count, 1535);
    assert_int_equal(g->chunk_size, 256);
    assert_int_equal(d->chunk_count, 1535);
    assert_int_equal(g->n_datasets, 1);
    assert_string_equal(g->datasets[0], "data/tinystories-valid.txt");
    assert_int_equal(d->n_datasets, 1);
    assert_string_equal(d->datasets[0], "data/tinystories-valid.txt");
    int n64 = 0, n172 = 0;
    for (int i = 0; i < g->n; i++) {
        const ql_imatrix_entry *e = &g->entries[i];
        assert_true(e->count == 392960.0);
        assert_true(ql_imatrix_find(d, e->name)->count == 392960.0); /* ncall 1535 x chunk 256 */
        bool down = strstr(e->name, "ffn_down") != NULL;
        assert_int_equal(e->n, down ? 172 : 64);
        n64 += !down;
        n172 += down;
    }
    assert_int_equal(n64, 30);
    assert_int_equal(n172, 5);
    assert_same_importance(g, d, 1e-6);
    assert_same_importance(d, g, 1e-6);

    /* attn_q/k/v read the same input, and so do ffn_gate/up */
    for (int l = 0; l < 5; l++) {
        char q[64], k[64], v[64], gt[64], up[64];
        snprintf(q, sizeof q, "blk.%d.attn_q.weight", l);
        snprintf(k, sizeof k, "blk.%d.attn_k.weight", l);
        snprintf(v, sizeof v, "blk.%d.attn_v.weight", l);
        snprintf(gt, sizeof gt, "blk.%d.ffn_gate.weight", l);
        snprintf(up, sizeof up, "blk.%d.ffn_up.weight", l);
        const ql_imatrix_entry *eq = ql_imatrix_find(g, q), *ek = ql_imatrix_find(g, k);
        const ql_imatrix_entry *ev = ql_imatrix_find(g, v), *eg = ql_imatrix_find(g, gt);
        const ql_imatrix_entry *eu = ql_imatrix_find(g, up);
        assert_non_null(eq);
        assert_non_null(ek);
        assert_non_null(ev);
        assert_non_null(eg);
        assert_non_null(eu);
        assert_memory_equal(eq->sum2, ek->sum2, sizeof(double) * 64);
        assert_memory_equal(eq->sum2, ev->sum2, sizeof(double) * 64);
        assert_memory_equal(eg->sum2, eu->sum2, sizeof(double) * 64);
    }

    /* importance lookups: absent tensor, wrong length */
    float w[172];
    assert_false(ql_imatrix_importance(g, "token_embd.weight", 64, w));
    assert_false(ql_imatrix_importance(g, "blk.0.ffn_down.weight", 64, w));
    assert_true(ql_imatrix_importance(g, "blk.0.ffn_down.weight", 172, w));
    const ql_imatrix_entry *e = ql_imatrix_find(g, "blk.0.ffn_down.weight");
    assert_true(w[5] == (float)(e->sum2[5] / 392960.0));
    ql_imatrix_free(g);
    ql_imatrix_free(d);
}

/* The two runs (in-domain and off-domain) must also agree between their formats. */
static void test_wikitext_files_agree(void **state) {
    (void)state;
    char g_path[512], d_path[512];
    if (!shared_path(g_path, sizeof g_path, DIR "imatrix-wt.gguf") ||
        !shared_path(d_path, sizeof d_path, DIR "imatrix-wt.dat")) {
        skip();
        return;
    }
    ql_imatrix *g = load_ok(g_path, 0), *d = load_ok(d_path, 256);
    assert_int_equal(g->n, 35);
    assert_int_equal(g->chunk_count, 3161);
    assert_int_equal(d->chunk_count, 3161);
    assert_true(g->entries[0].count == 809216.0);
    assert_same_importance(g, d, 1e-6);
    ql_imatrix_free(g);
    ql_imatrix_free(d);
}

static void test_dat_conversion_byte_identical(void **state) {
    (void)state;
    const char *names[2][2] = {{DIR "imatrix-ts.gguf", DIR "imatrix-ts.dat"},
                               {DIR "imatrix-wt.gguf", DIR "imatrix-wt.dat"}};
    for (int f = 0; f < 2; f++) {
        char g_path[512], d_path[512];
        if (!shared_path(g_path, sizeof g_path, names[f][0]) ||
            !shared_path(d_path, sizeof d_path, names[f][1])) {
            skip();
            return;
        }
        ql_imatrix *g = load_ok(g_path, 0);
        char *out = tmpname(".dat");
        assert_int_equal(ql_imatrix_save(g, out), QL_OK);
        size_t n_ref, n_ours;
        uint8_t *ref = slurp(d_path, &n_ref), *ours = slurp(out, &n_ours);
        assert_int_equal(n_ours, n_ref);
        assert_memory_equal(ours, ref, n_ref);
        free(ref);
        free(ours);

        /* and the GGUF we write from the same statistics is llama.cpp's file byte for byte */
        char *outg = tmpname(".gguf");
        assert_int_equal(ql_imatrix_save(g, outg), QL_OK);
        ref = slurp(g_path, &n_ref);
        ours = slurp(outg, &n_ours);
        assert_int_equal(n_ours, n_ref);
        assert_memory_equal(ours, ref, n_ref);
        free(ref);
        free(ours);
        unlink(out);
        unlink(outg);
        free(out);
        free(outg);
        ql_imatrix_free(g);
    }
}

static void test_round_trips(void **state) {
    (void)state;
    char g_path[512], d_path[512];
    if (!shared_path(g_path, sizeof g_path, DIR "imatrix-ts.gguf") ||
        !shared_path(d_path, sizeof d_path, DIR "imatrix-ts.dat")) {
        skip();
        return;
    }
    /* GGUF -> .dat -> load: same names, counts and chunking, importance within float rounding */
    ql_imatrix *g = load_ok(g_path, 0);
    char *dat = tmpname(".dat");
    assert_int_equal(ql_imatrix_save(g, dat), QL_OK);
    ql_imatrix *g2 = load_ok(dat, g->chunk_size);
    assert_int_equal(g2->chunk_count, g->chunk_count);
    assert_int_equal(g2->n_datasets, 1);
    assert_string_equal(g2->datasets[0], g->datasets[0]);
    for (int i = 0; i < g->n; i++)
        assert_true(ql_imatrix_find(g2, g->entries[i].name)->count == g->entries[i].count);
    assert_same_importance(g, g2, 1e-6);

    /* .dat -> GGUF -> load: exact (the .dat values scaled by a power of two are exact in float) */
    ql_imatrix *d = load_ok(d_path, 256);
    char *gg = tmpname(".gguf");
    assert_int_equal(ql_imatrix_save(d, gg), QL_OK);
    ql_imatrix *d2 = load_ok(gg, 0);
    assert_int_equal(d2->n, d->n);
    assert_int_equal(d2->chunk_count, 1535);
    assert_int_equal(d2->chunk_size, 256);
    assert_string_equal(d2->datasets[0], "data/tinystories-valid.txt");
    for (int i = 0; i < d->n; i++) {
        const ql_imatrix_entry *a = &d->entries[i], *b = ql_imatrix_find(d2, a->name);
        assert_non_null(b);
        assert_int_equal(a->n, b->n);
        assert_true(a->count == b->count);
        assert_memory_equal(a->sum2, b->sum2, sizeof(double) * (size_t)a->n);
    }
    assert_same_importance(d, d2, 0.0);
    /* the default chunk size for .dat changes counts but not importance */
    ql_imatrix *d512 = load_ok(d_path, 0);
    assert_true(d512->entries[0].count == 1535.0 * QL_IMATRIX_DAT_CHUNK_SIZE);
    assert_same_importance(d, d512, 0.0);
    unlink(dat);
    unlink(gg);
    free(dat);
    free(gg);
    ql_imatrix_free(g);
    ql_imatrix_free(g2);
    ql_imatrix_free(d);
    ql_imatrix_free(d2);
    ql_imatrix_free(d512);
}

static void test_accumulate_and_save(void **state) {
    (void)state;
    ql_imatrix *im = ql_imatrix_new();
    ql_imatrix_entry *e = ql_imatrix_entry_get(im, "blk.0.attn_q.weight", 4);
    assert_non_null(e);
    for (int i = 0; i < 4; i++) assert_true(e->sum2[i] == 0.0);
    assert_true(e->count == 0.0);
    assert_null(ql_imatrix_entry_get(im, "blk.0.attn_q.weight", 5)); /* length mismatch */
    assert_null(ql_imatrix_entry_get(im, "x", 0));
    float w[4];
    assert_false(ql_imatrix_importance(im, "blk.0.attn_q.weight", 4, w)); /* no data yet */
    for (int t = 0; t < 10; t++) {
        e = ql_imatrix_entry_get(im, "blk.0.attn_q.weight", 4);
        for (int i = 0; i < 4; i++) e->sum2[i] += (double)(i + 1) * (i + 1);
        e->count += 1;
    }
    ql_imatrix_entry *b = ql_imatrix_entry_get(im, "a.weight", 2);
    b->sum2[0] = 3.0; b->sum2[1] = 0.5; b->count = 7;
    ql_imatrix_add_dataset(im, "calib.txt");
    im->chunk_count = 1;
    im->chunk_size = 10;
    assert_true(ql_imatrix_importance(im, "blk.0.attn_q.weight", 4, w));
    assert_true(w[0] == 1.0f && w[3] == 16.0f);
    const char *sfx[2] = {".gguf", ".dat"};
    for (int f = 0; f < 2; f++) {
        char *p = tmpname(sfx[f]);
        assert_int_equal(ql_imatrix_save(im, p), QL_OK);
        ql_imatrix *r = load_ok(p, 10);
        assert_int_equal(r->n, 2);
        assert_string_equal(r->entries[0].name, "a.weight"); /* written sorted by name */
        assert_string_equal(r->datasets[0], "calib.txt");
        assert_same_importance(im, r, 1e-6);
        ql_imatrix_free(r);
        unlink(p);
        free(p);
    }
    /* nothing to save */
    ql_imatrix *empty = ql_imatrix_new();
    char *p = tmpname(".gguf");
    assert_int_equal(ql_imatrix_save(empty, p), QL_ERR_ARG);
    assert_int_equal(access(p, F_OK), -1);
    free(p);
    ql_imatrix_free(empty);
    ql_imatrix_free(im);
}

static void expect_reject(const char *path, ql_status want) {
    ql_imatrix *im = (ql_imatrix *)1;
    ql_status s = ql_imatrix_load(path, &im);
    if (s != want)
        fail_msg("%s: status %d (%s), wanted %d", path, (int)s, s ? ql_last_error() : "ok", (int)want);
    assert_null(im);
    if (!strstr(ql_last_error(), path)) fail_msg("message does not name the file: %s", ql_last_error());
}

/* An imatrix holding one MoE entry: 4 experts of 2 sums, and n_counts counts (4 is right). */
static void write_expert_entry(const char *p, const float *sums, const float *cnt, int64_t n_counts) {
    int64_t ne_sum[2] = {2, 4}, ne_cnt[2] = {1, n_counts};
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "general.type", "imatrix");
    assert_true(ql_gguf_add_tensor(g, "blk.0.ffn_up_exps.weight.in_sum2", QL_TYPE_F32, 2, ne_sum, sums) >= 0);
    assert_true(ql_gguf_add_tensor(g, "blk.0.ffn_up_exps.weight.counts", QL_TYPE_F32, 2, ne_cnt, cnt) >= 0);
    assert_int_equal(ql_gguf_write(g, p, NULL), QL_OK);
    ql_gguf_free(g);
}

static void put_i32(uint8_t *b, size_t off, int32_t v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    for (int i = 0; i < 4; i++) b[off + (size_t)i] = (uint8_t)(u >> (8 * i));
}

static void test_corrupt_dat_rejected(void **state) {
    (void)state;
    char d_path[512];
    if (!shared_path(d_path, sizeof d_path, DIR "imatrix-ts.dat")) {
        skip();
        return;
    }
    size_t n;
    uint8_t *ref = slurp(d_path, &n);
    char *p = tmpname(".dat");
    /* truncation: everywhere in the first entries, then a stride; the tail (last_chunk, dataset) is
     * optional as in old llama.cpp files, so only the cut right after the entries / last_chunk loads */
    const size_t tail = n - 4 - 4 - strlen("data/tinystories-valid.txt");
    for (size_t cut = 0; cut < n; cut += cut < 400 ? 1 : 61) {
        spit(p, ref, cut);
        if (cut == tail || cut == tail + 4) {
            ql_imatrix *im = load_ok(p, 0);
            assert_int_equal(im->n, 35);
            ql_imatrix_free(im);
            continue;
        }
        expect_reject(p, QL_ERR_FORMAT);
    }
    for (size_t cut = tail - 3; cut < n; cut++) {
        if (cut == tail || cut == tail + 4) continue;
        spit(p, ref, cut);
        expect_reject(p, QL_ERR_FORMAT);
    }
    /* first entry: int32 len @4, name @8 (19 bytes "blk.0.attn_k.weight"), ncall @27, nval @31, values @35 */
    uint8_t *b = malloc(n + 8);
    struct { size_t off; int32_t v; } bad[] = {
        {0, 0}, {0, -1}, {0, INT32_MAX}, {0, 1000},    /* entry count */
        {4, 0}, {4, -5}, {4, INT32_MAX}, {4, 5000},    /* name length */
        {27, -1},                                      /* negative ncall */
        {31, 0}, {31, -1}, {31, INT32_MAX}, {31, 65},  /* nval vs file */
        {35, 0x7fc00000}, {35, (int32_t)0xbf800000},   /* NaN, -1.0 */
        {(size_t)-1, 0},
    };
    for (size_t k = 0; k < QL_ARRAY_LEN(bad); k++) {
        memcpy(b, ref, n);
        if (bad[k].off == (size_t)-1) { /* dataset length past the end */
            put_i32(b, tail + 4, 1000);
        } else {
            put_i32(b, bad[k].off, bad[k].v);
        }
        spit(p, b, n);
        expect_reject(p, QL_ERR_FORMAT);
    }
    /* a NUL inside a name, a duplicate name, trailing garbage */
    memcpy(b, ref, n);
    b[10] = 0;
    spit(p, b, n);
    expect_reject(p, QL_ERR_FORMAT);
    memcpy(b, ref, n);
    memcpy(b + n, "junk", 4);
    spit(p, b, n + 4);
    expect_reject(p, QL_ERR_FORMAT);
    memcpy(b, ref, n);
    memcpy(b + 8, "blk.0.attn_q.weight", 19); /* entry 0 renamed to entry 2's name */
    spit(p, b, n);
    expect_reject(p, QL_ERR_FORMAT);
    /* empty file and a missing file */
    spit(p, b, 0);
    expect_reject(p, QL_ERR_FORMAT);
    unlink(p);
    expect_reject(p, QL_ERR_IO);
    free(b);
    free(ref);
    free(p);
}

static void test_bad_gguf_rejected(void **state) {
    (void)state;
    char *p = tmpname(".gguf");
    float sums[8] = {1, 2, 3, 4, 5, 6, 7, 8}, cnt[4] = {10, 10, 10, 10};
    int64_t ne1[2] = {8, 1}, ne_c[2] = {1, 1};

    /* no in_sum2 at all */
    ql_gguf *g = ql_gguf_new();
    ql_gguf_set_str(g, "general.type", "imatrix");
    assert_int_equal(ql_gguf_write(g, p, NULL), QL_OK);
    ql_gguf_free(g);
    expect_reject(p, QL_ERR_FORMAT);

    /* counts without its in_sum2 */
    g = ql_gguf_new();
    assert_true(ql_gguf_add_tensor(g, "w.counts", QL_TYPE_F32, 2, ne_c, cnt) >= 0);
    assert_int_equal(ql_gguf_write(g, p, NULL), QL_OK);
    ql_gguf_free(g);
    expect_reject(p, QL_ERR_FORMAT);

    /* in_sum2 without counts */
    g = ql_gguf_new();
    assert_true(ql_gguf_add_tensor(g, "w.in_sum2", QL_TYPE_F32, 2, ne1, sums) >= 0);
    assert_int_equal(ql_gguf_write(g, p, NULL), QL_OK);
    ql_gguf_free(g);
    expect_reject(p, QL_ERR_FORMAT);

    /* negative count, F16 sums */
    float neg = -1;
    g = ql_gguf_new();
    assert_true(ql_gguf_add_tensor(g, "w.in_sum2", QL_TYPE_F32, 2, ne1, sums) >= 0);
    assert_true(ql_gguf_add_tensor(g, "w.counts", QL_TYPE_F32, 2, ne_c, &neg) >= 0);
    assert_int_equal(ql_gguf_write(g, p, NULL), QL_OK);
    ql_gguf_free(g);
    expect_reject(p, QL_ERR_FORMAT);
    uint16_t h[8] = {0};
    g = ql_gguf_new();
    assert_true(ql_gguf_add_tensor(g, "w.in_sum2", QL_TYPE_F16, 2, ne1, h) >= 0);
    assert_true(ql_gguf_add_tensor(g, "w.counts", QL_TYPE_F32, 2, ne_c, cnt) >= 0);
    assert_int_equal(ql_gguf_write(g, p, NULL), QL_OK);
    ql_gguf_free(g);
    expect_reject(p, QL_ERR_FORMAT);

    /* a MoE entry [2, 4 experts] loads with one count per expert (tests/test_moe.c: its importance); counts that
     * do not match the experts are refused, naming the tensor */
    write_expert_entry(p, sums, cnt, 4);
    ql_imatrix *moe = NULL;
    assert_int_equal(ql_imatrix_load(p, &moe), QL_OK);
    assert_int_equal(moe->entries[0].n, 2);
    assert_int_equal(moe->entries[0].n_mat, 4);
    assert_float_equal(moe->entries[0].counts[3], 10, 0);
    assert_float_equal(moe->entries[0].sum2[7], 8, 0);
    ql_imatrix_free(moe);
    write_expert_entry(p, sums, cnt, 3);
    expect_reject(p, QL_ERR_FORMAT);
    assert_non_null(strstr(ql_last_error(), "blk.0.ffn_up_exps.weight.counts"));

    /* a model file is not an imatrix */
    char m_path[512];
    if (shared_path(m_path, sizeof m_path, "models/stories260K.gguf")) expect_reject(m_path, QL_ERR_FORMAT);

    /* a minimal valid one loads (1-D tensors accepted, .in_sum ignored) */
    int64_t ne_1d[1] = {8}, ne_c1[1] = {1};
    g = ql_gguf_new();
    assert_true(ql_gguf_add_tensor(g, "w.in_sum2", QL_TYPE_F32, 1, ne_1d, sums) >= 0);
    assert_true(ql_gguf_add_tensor(g, "w.in_sum", QL_TYPE_F32, 1, ne_1d, sums) >= 0);
    assert_true(ql_gguf_add_tensor(g, "w.counts", QL_TYPE_F32, 1, ne_c1, cnt) >= 0);
    assert_int_equal(ql_gguf_write(g, p, NULL), QL_OK);
    ql_gguf_free(g);
    ql_imatrix *im = load_ok(p, 0);
    assert_int_equal(im->n, 1);
    float w[8];
    assert_true(ql_imatrix_importance(im, "w", 8, w));
    assert_true(w[7] == 0.8f);
    ql_imatrix_free(im);

    /* truncations of a real imatrix GGUF are rejected too */
    char g_path[512];
    if (shared_path(g_path, sizeof g_path, DIR "imatrix-ts.gguf")) {
        size_t n;
        uint8_t *ref = slurp(g_path, &n);
        for (size_t cut = 0; cut + 32 < n; cut += cut < 256 ? 1 : 97) { /* not just the final padding */
            spit(p, ref, cut);
            ql_imatrix *x = (ql_imatrix *)1;
            ql_status s = ql_imatrix_load(p, &x);
            if (s == QL_OK) fail_msg("truncated GGUF (%zu of %zu bytes) loaded", cut, n);
            assert_null(x);
            assert_non_null(strstr(ql_last_error(), p));
        }
        free(ref);
    }
    unlink(p);
    free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_files_agree),
        cmocka_unit_test(test_wikitext_files_agree),
        cmocka_unit_test(test_dat_conversion_byte_identical),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_accumulate_and_save),
        cmocka_unit_test(test_corrupt_dat_rejected),
        cmocka_unit_test(test_bad_gguf_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
