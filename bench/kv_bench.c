/* kv_bench.c — `make bench-kv` / bench/run.sh: the cost of one layer's attention with a quantized KV cache
 * against the F32 cache, at a chosen context on a synthetic shape's geometry (default llama-3.2-1b: 32 heads,
 * 8 KV heads, head dim 64; ctx 2048). One "attention" is what the forward pass runs per layer: store K and V
 * in the cache, then attend over every position (F32: kv_store + kv_load + attention; a scheme: kv_store +
 * kv_attention, which decodes, rounds Q and patches the residual window). Random rows; best of N runs.
 * usage: kv_bench [shape] [ctx] [threads] [reps] [scheme...] */
#include "base/parallel.h"
#include "core/backend.h"
#include "core/kv_cache.h"
#include "core/synth.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* CPU seconds of the whole process (every BLAS thread): on a machine shared with other jobs the wall clock
 * measures the neighbours; the work done is what the ratio is about */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double run(const ql_backend_ops *cpu, void *be, const ql_kv_scheme *s, int T, int H, int HKV, int hd, int reps,
                  float *q, float *qw, const float *k, const float *v, float *S, float *out, float *kt, float *vt) {
    void *kv;
    const bool f32 = ql_kv_scheme_is_f32(s);
    if ((f32 ? cpu->kv_new(be, T, HKV * hd, &kv) : cpu->kv_new_scheme(be, T, HKV * hd, s, &kv)) != QL_OK) return -1;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        memcpy(qw, q, (size_t)T * H * hd * sizeof(float)); /* kv_attention may round q in place */
        double t0 = cpu_s();
        cpu->kv_store(be, kv, 0, T, k, v);
        if (f32) {
            const float *lk, *lv;
            cpu->kv_load(be, kv, 0, T, &lk, &lv, kt, vt);
            cpu->attention(be, qw, lk, lv, S, out, T, 0);
        } else
            cpu->kv_attention(be, kv, qw, S, out, T, 0, kt, vt);
        double dt = cpu_s() - t0;
        best = dt < best ? dt : best;
    }
    cpu->kv_free(be, kv);
    return best;
}

int main(int argc, char **argv) {
    const char *shape_name = argc > 1 ? argv[1] : "llama-3.2-1b";
    const int T = argc > 2 ? atoi(argv[2]) : 2048, threads = argc > 3 ? atoi(argv[3]) : 2,
              reps = argc > 4 ? atoi(argv[4]) : 3;
    const ql_synth_shape *sh = ql_synth_find(shape_name);
    if (!sh || T < 1 || threads < 1 || reps < 1) {
        fprintf(stderr, "usage: kv_bench [shape] [ctx] [threads] [reps] [scheme...]\n");
        return 2;
    }
    static const char *const defaults[] = {"f16", "q8_0", "q4_0", "q8_0:q4_0", "int8_token_g32", "int4_token_g64",
                                           "kivi4", "fp8_e4m3", "int4_token_g64_had:int4_token_g64"};
    const char *const *schemes = argc > 5 ? (const char *const *)argv + 5 : defaults;
    const int n_schemes = argc > 5 ? argc - 5 : (int)(sizeof defaults / sizeof defaults[0]);
    ql_model m;
    memset(&m, 0, sizeof m);
    ql_config *c = &m.cfg;
    c->n_layer = 1, c->n_embd = sh->n_embd, c->n_head = sh->n_head, c->n_head_kv = sh->n_head_kv;
    c->head_dim = sh->head_dim ? sh->head_dim : sh->n_embd / sh->n_head;
    c->rope_dim = c->head_dim, c->rope_base = sh->rope_base, c->rope_scale = 1;
    c->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    const int H = c->n_head, HKV = c->n_head_kv, hd = c->head_dim;
    const ql_backend_ops *cpu = ql_backend_find("cpu");
    void *be;
    if (cpu->create(&m, threads, &be)) return 1;
    openblas_set_num_threads(threads);
    const size_t nq = (size_t)T * H * hd, nk = (size_t)T * HKV * hd;
    float *q = malloc(nq * 4), *qw = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4),
          *S = malloc((size_t)T * T * 4), *out = malloc(nq * 4), *kt = malloc(nk * 4), *vt = malloc(nk * 4);
    if (!q || !qw || !k || !v || !S || !out || !kt || !vt) {
        fprintf(stderr, "kv_bench: out of memory\n");
        return 1;
    }
    uint64_t x = 1234567;
    for (size_t i = 0; i < nq; i++) x = x * 6364136223846793005ull + 1442695040888963407ull, q[i] = (float)((int64_t)(x >> 40) - (1 << 23)) / (1 << 23);
    for (size_t i = 0; i < nk; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        k[i] = (float)((int64_t)(x >> 40) - (1 << 23)) / (1 << 22);
        v[i] = (float)((int64_t)(x >> 16 & 0xffffff) - (1 << 23)) / (1 << 23);
    }
    ql_kv_scheme f32 = ql_kv_scheme_f32();
    double base = run(cpu, be, &f32, T, H, HKV, hd, reps, q, qw, k, v, S, out, kt, vt);
    printf("KV attention, one layer of %s (%d heads, %d KV heads, head dim %d), ctx %d, %d threads, CPU time (all threads), best of %d\n",
           shape_name, H, HKV, hd, T, threads, reps);
    printf("  %-40s %9.2f ms   1.00x   %8.2f MiB/layer\n", "f32", base * 1e3,
           ql_kv_side_bytes(&f32.k, HKV, hd, T) * 2 / 1048576.0);
    int rc = 0;
    for (int i = 0; i < n_schemes; i++) {
        ql_kv_scheme s;
        char nm[160];
        if (!ql_kv_scheme_parse(schemes[i], &s) || ql_kv_scheme_check(&s, c, shape_name)) {
            fprintf(stderr, "kv_bench: %s\n", ql_last_error());
            rc = 1;
            continue;
        }
        double t = run(cpu, be, &s, T, H, HKV, hd, reps, q, qw, k, v, S, out, kt, vt);
        int64_t bytes = ql_kv_side_bytes(&s.k, HKV, hd, T) + ql_kv_side_bytes(&s.v, HKV, hd, T);
        printf("  %-40s %9.2f ms   %.2fx   %8.2f MiB/layer\n", ql_kv_scheme_name(&s, nm, sizeof nm), t * 1e3, t / base,
               bytes / 1048576.0);
    }
    free(q), free(qw), free(k), free(v), free(S), free(out), free(kt), free(vt);
    cpu->destroy(be);
    return rc;
}
