/* m_aqlm.c — the AQLM method (Egiazarian et al. 2024, "Extreme Compression of LLMs via Additive
 * Quantization"): learn the codebooks, codes and row scales of an aqlm_MxB format (formats/fmt_aqlm.c) so
 * that the layer's output error tr((W − Ŵ) H (W − Ŵ)ᵀ) is small, H = 2·XᵀX/n_tokens of the layer input from
 * the statistics file, damped like GPTQ's. The algorithm is kernels/aqlm.c: residual k-means, then
 * alternations of beam search over codes, codebook update (least squares or Adam) and optimal scales,
 * until an alternation lowers the loss by less than `tol` (relative) or `iters` is reached. AQLM's own code
 * adds block-wise and end-to-end fine-tuning after this; qlab stops at the layer-wise stage.
 *
 * Checkpoints. Encoding a large layer takes minutes, so Ctrl-C (the progress's cancel flag) writes the state
 * of the last finished alternation, atomically, to $QL_CHECKPOINT_DIR (default $XDG_CACHE_HOME/qlab/aqlm or
 * ~/.cache/qlab/aqlm) under a name derived from a hash of the weights, the Hessian, the format and every
 * option. Running the same command again finds it and resumes from there; the result is the one an
 * uninterrupted run gives (the algorithm is deterministic for a thread count, and alternations restart
 * from whole states). The file is removed when the tensor is done. checkpoint=0 turns this off. */
#include "methods/method.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/atomic_file.h"
#include "formats/fmt_aqlm.h"
#include "kernels/aqlm.h"

extern const ql_method ql_method_aqlm;

static const char *const update_names[] = {"ls", "adam", NULL};

static const ql_opt_def aqlm_opts[] = {
    {"beam", QL_OPT_INT, 2, 1, 64, NULL, "beam width of the code search (1 = greedy coordinate descent)"},
    {"iters", QL_OPT_INT, 10, 1, 1000, NULL, "most alternations of code search, codebook update and scales"},
    {"tol", QL_OPT_FLOAT, 0.01, 0, 1, NULL, "stop when an alternation lowers the loss by less than this fraction"},
    {"update", QL_OPT_ENUM, 0, 0, 1, update_names,
     "codebook update: ls = exact least squares per codebook (Adam for 2^16 codebooks), adam = Adam steps"},
    {"adam_steps", QL_OPT_INT, 50, 1, 100000, NULL, "Adam steps per alternation (update=adam)"},
    {"lr", QL_OPT_FLOAT, 1e-3, 1e-8, 1, NULL, "Adam learning rate, in units of the row-normalised weights"},
    {"init_iters", QL_OPT_INT, 25, 0, 1000, NULL, "k-means iterations per codebook at the start"},
    {"damp", QL_OPT_FLOAT, 0.01, 0, 10, NULL, "Hessian dampening, fraction of the mean diagonal"},
    {"checkpoint", QL_OPT_BOOL, 1, 0, 1, NULL,
     "1: Ctrl-C keeps a resumable checkpoint ($QL_CHECKPOINT_DIR, default ~/.cache/qlab/aqlm)"},
};

static bool aqlm_serves(const ql_format *f, char *why, size_t cap) {
    if (ql_aqlm_format_params(f, NULL, NULL)) return true;
    snprintf(why, cap, "%s is not an AQLM format (aqlm writes aqlm_1x16, aqlm_2x8, aqlm_1x8, aqlm_4x8)", f->name);
    return false;
}

/* ---- checkpoint file: "QLAQCK01", u64 key, i32 M, B, i64 nrows, ncols, i32 iter, done, f64 loss, then the
 * state packed exactly as the tensor's bytes (ql_aqlm_pack) ---- */

#define CK_MAGIC "QLAQCK01"
#define CK_HEADER (8 + 8 + 4 * 2 + 8 * 2 + 4 * 2 + 8)

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

static bool ck_dir(char *out, size_t cap) {
    const char *d = getenv("QL_CHECKPOINT_DIR");
    if (d && *d) snprintf(out, cap, "%s", d);
    else if ((d = getenv("XDG_CACHE_HOME")) && *d) snprintf(out, cap, "%s/qlab/aqlm", d);
    else if ((d = getenv("HOME")) && *d) snprintf(out, cap, "%s/.cache/qlab/aqlm", d);
    else return false;
    /* mkdir -p */
    for (char *p = out + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(out, 0755) != 0 && errno != EEXIST) return false;
            *p = '/';
        }
    return mkdir(out, 0755) == 0 || errno == EEXIST;
}

typedef struct {
    uint64_t key;
    int32_t M, B;
    int64_t nrows, ncols;
    int32_t iter, done;
    double loss;
} ck_header;

static ql_status ck_save(const char *path, const ck_header *h, const ql_aqlm_state *st) {
    const int64_t nb = ql_aqlm_tensor_bytes(st->M, st->B, st->ncols, st->nrows);
    uint8_t *buf = malloc((size_t)(CK_HEADER + nb));
    if (!buf) return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory for the checkpoint");
    uint8_t *p = buf;
    memcpy(p, CK_MAGIC, 8), p += 8;
    memcpy(p, &h->key, 8), p += 8;
    memcpy(p, &h->M, 4), p += 4;
    memcpy(p, &h->B, 4), p += 4;
    memcpy(p, &h->nrows, 8), p += 8;
    memcpy(p, &h->ncols, 8), p += 8;
    memcpy(p, &h->iter, 4), p += 4;
    memcpy(p, &h->done, 4), p += 4;
    memcpy(p, &h->loss, 8), p += 8;
    ql_aqlm_pack(st, p);
    ql_status s = ql_atomic_write_file(path, buf, (size_t)(CK_HEADER + nb));
    free(buf);
    return s;
}

/* true when path holds a checkpoint for exactly this key and shape (then the state and header are filled) */
static bool ck_load(const char *path, const ck_header *want, ck_header *got, ql_aqlm_state *st) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return false;
    const int64_t nb = ql_aqlm_tensor_bytes(want->M, want->B, want->ncols, want->nrows);
    uint8_t hdr[CK_HEADER];
    bool ok = fread(hdr, 1, CK_HEADER, fp) == CK_HEADER && memcmp(hdr, CK_MAGIC, 8) == 0;
    if (ok) {
        const uint8_t *p = hdr + 8;
        memcpy(&got->key, p, 8), p += 8;
        memcpy(&got->M, p, 4), p += 4;
        memcpy(&got->B, p, 4), p += 4;
        memcpy(&got->nrows, p, 8), p += 8;
        memcpy(&got->ncols, p, 8), p += 8;
        memcpy(&got->iter, p, 4), p += 4;
        memcpy(&got->done, p, 4), p += 4;
        memcpy(&got->loss, p, 8);
        ok = got->key == want->key && got->M == want->M && got->B == want->B && got->nrows == want->nrows &&
             got->ncols == want->ncols && got->iter >= 0;
    }
    uint8_t *buf = ok ? malloc((size_t)nb + 1) : NULL;
    if (ok) ok = buf && fread(buf, 1, (size_t)nb + 1, fp) == (size_t)nb; /* exactly nb bytes follow */
    if (ok) {
        ql_aqlm_unpack(buf, st);
        for (int64_t i = 0; ok && i < st->nrows * st->ngroups * st->M; i++) ok = st->codes[i] < st->K;
    }
    if (!ok && buf) ql_log(1, "aqlm: ignoring checkpoint %s (not for this tensor, or damaged)", path);
    free(buf);
    fclose(fp);
    return ok;
}

static ql_status aqlm_quantize(float *w, int64_t nrows, int64_t ncols, const ql_format *f, const ql_input_stats *st,
                               const ql_method_opts *o, void *dst) {
    const ql_opt_values *ov = o ? o->values : NULL;
    const ql_method *me = &ql_method_aqlm;
    int M, B;
    char why[200];
    if (!aqlm_serves(f, why, sizeof why) || !ql_aqlm_format_params(f, &M, &B))
        return ql_fail(QL_ERR_UNSUPPORTED, "aqlm: %s", why);
    if (nrows <= 0 || ncols <= 0) return ql_fail(QL_ERR_ARG, "aqlm: empty tensor");
    if (!st || !st->xtx || st->n != ncols)
        return ql_fail(QL_ERR_ARG, "aqlm: needs the Hessian X^T X of the layer input (%lld columns)", (long long)ncols);
    const int iters = (int)ql_opt_int(ov, me, "iters");
    const double tol = ql_opt_float(ov, me, "tol"), damp = ql_opt_float(ov, me, "damp");
    const bool checkpoint = ql_opt_bool(ov, me, "checkpoint");
    const ql_progress *prog = o ? o->progress : NULL;
    ql_aqlm_params p = {.M = M, .B = B, .beam = (int)ql_opt_int(ov, me, "beam"),
                        .init_iters = (int)ql_opt_int(ov, me, "init_iters"),
                        .update = ql_opt_enum(ov, me, "update") ? QL_AQLM_UPDATE_ADAM : QL_AQLM_UPDATE_LS,
                        .adam_steps = (int)ql_opt_int(ov, me, "adam_steps"), .lr = ql_opt_float(ov, me, "lr"),
                        .seed = 1, .n_threads = o && o->n_threads > 0 ? o->n_threads : 1, .progress = prog};

    /* H = 2 XᵀX / n + λ I, λ = damp · mean diag */
    const int64_t n = ncols;
    float *h = malloc((size_t)(n * n) * sizeof(float));
    if (!h) return ql_fail(QL_ERR_NOMEM, "aqlm: out of memory for a %lld x %lld Hessian", (long long)n, (long long)n);
    const double scale = st->n_tokens > 0 ? 2.0 / (double)st->n_tokens : 1.0;
    double mean = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = st->xtx[i * n + i] * scale;
        mean += isfinite(d) && d > 0 ? d : 0;
    }
    mean /= (double)n;
    const double lam = mean > 0 ? damp * mean : 1.0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double x = st->xtx[i * n + j] * scale;
            h[i * n + j] = (float)((isfinite(x) ? x : 0.0) + (i == j ? lam : 0.0));
        }

    /* the checkpoint key: everything the result depends on */
    uint64_t key = 0xCBF29CE484222325ull;
    key = fnv(key, &f->type, sizeof f->type);
    key = fnv(key, &nrows, sizeof nrows);
    key = fnv(key, &ncols, sizeof ncols);
    key = fnv(key, &p.n_threads, sizeof p.n_threads);
    for (int i = 0; i < me->n_opts; i++) {
        double v = ov ? ov->v[i] : me->opts[i].def;
        if (strcmp(me->opts[i].name, "checkpoint") != 0) key = fnv(key, &v, sizeof v);
    }
    key = fnv(key, w, (size_t)(nrows * ncols) * sizeof(float));
    key = fnv(key, h, (size_t)(n * n) * sizeof(float));
    char path[1200] = "", dir[1024];
    if (checkpoint && ck_dir(dir, sizeof dir))
        snprintf(path, sizeof path, "%s/aqlm-%016llx.qlck", dir, (unsigned long long)key);

    ql_aqlm_solver *s = ql_aqlm_solver_new(w, nrows, ncols, h, NULL, &p);
    free(h);
    if (!s) return QL_ERR_NOMEM;
    ql_aqlm_state *state = ql_aqlm_solver_state(s);
    ck_header want = {.key = key, .M = M, .B = B, .nrows = nrows, .ncols = ncols}, got = {0};
    ql_status rc = QL_OK;
    int iter = 0;
    bool done = false;
    if (path[0] && ck_load(path, &want, &got, state)) {
        ql_aqlm_refresh(s);
        iter = got.iter, done = got.done != 0;
        ql_log(1, "aqlm: resuming from %s (alternation %d, loss %.6g)", path, iter, ql_aqlm_loss(s));
    } else {
        ql_progress_report(prog, 0, iters + 1, "aqlm: k-means start");
        rc = ql_aqlm_init(s);
    }
    const bool have_state = !rc; /* a whole state to keep if an alternation is interrupted */
    const double t0 = ql_time_s();
    const int iter0 = iter;
    while (!rc && !done && iter < iters) {
        const double before = ql_aqlm_loss(s);
        rc = ql_aqlm_alternate(s);
        if (rc) break;
        iter++;
        const double after = ql_aqlm_loss(s);
        done = !(before > 0) || (before - after) < tol * before;
        char phase[160];
        const double per = (ql_time_s() - t0) / (iter - iter0);
        snprintf(phase, sizeof phase, "aqlm: alternation %d/%d, loss %.4g (%.2f%% lower), %.1fs each", iter, iters,
                 after, before > 0 ? 100.0 * (before - after) / before : 0.0, per);
        ql_progress_report(prog, iter + 1, iters + 1, phase);
    }
    if (rc == QL_ERR_CANCELLED && path[0] && have_state) {
        ck_header hd = want;
        hd.iter = iter, hd.done = done, hd.loss = ql_aqlm_loss(s);
        ql_status cs = ck_save(path, &hd, state);
        ql_log(1, cs ? "aqlm: could not keep a checkpoint at %s: %s" : "aqlm: checkpoint kept at %s%s (run the same "
               "command again to resume)", path, cs ? ql_last_error() : "");
        ql_fail(QL_ERR_CANCELLED, "cancelled");
    }
    if (!rc) {
        ql_aqlm_pack(state, dst);
        if (path[0]) remove(path);
    }
    ql_aqlm_solver_free(s);
    return rc;
}

/* Mirrors aqlm_quantize and the solver (kernels/aqlm.c): the float Hessian twice (ours and the solver's), four
 * float copies of the weights, the codes, and the encoder's table of every group x codebook x code (ngroups ·
 * M · 2^B floats: the codebook size is what makes aqlm_1x16 heavy), plus `beam` hypotheses per worker. */
static double aqlm_work_bytes(int64_t nrows, int64_t ncols, const ql_format *f, const ql_method_opts *o, char *what,
                              size_t what_cap, char *how, size_t how_cap) {
    int M = 1, B = 8;
    ql_aqlm_format_params(f, &M, &B);
    const double n = (double)ncols, r = (double)nrows, ng = (double)((ncols + 7) / 8), K = ldexp(1.0, B);
    const int beam = (int)ql_opt_int(o ? o->values : NULL, &ql_method_aqlm, "beam");
    const int nt = o && o->n_threads > 0 ? o->n_threads : 1;
    /* copies: also the least-squares assembly's index of the codes sorted two ways (10 bytes per group) */
    const double hess = 8.0 * n * n, copies = 16.0 * r * n + 2.0 * 2.0 * r * ng * M + 10.0 * r * ng,
                 table = 4.0 * ng * M * K,
                 beams = (double)nt * beam * 2 * 2 * (16.0 + 2.0 * M);
    snprintf(what, what_cap, "a %lldx%lld Hessian (%.1f MiB), weight copies and codes (%.1f MiB), a %dx2^%d codebook "
                             "table over %lld groups (%.1f MiB), beam=%d x %d workers",
             (long long)ncols, (long long)ncols, hess / 1048576.0, copies / 1048576.0, M, B, (long long)ng,
             table / 1048576.0, beam, nt);
    snprintf(how, how_cap, "choose a format with smaller codebooks (aqlm_2x8 instead of aqlm_1x16), lower "
                           "--method-opts beam=, or quantize this tensor with rtn");
    return hess + copies + table + beams;
}

const ql_method ql_method_aqlm = {
    .work_bytes = aqlm_work_bytes,
    .name = "aqlm",
    .summary = "AQLM: learned additive codebooks, beam search against the calibration Hessian (aqlm_* formats)",
    .explain =
        "AQLM stores each group of 8 weights as the sum of a few codewords from codebooks learned for the "
        "tensor. It starts from residual k-means, then alternates: a beam search picks every group's codes "
        "to minimise the layer's output error (weighted by H = sum x x^T of the input), least squares (or "
        "Adam) refits the codebooks, and each row's scale is refitted, until the error stops falling. Slow: "
        "minutes per large layer; Ctrl-C keeps a checkpoint that the same command resumes from.",
    .caps = QL_CAP_PER_TENSOR | QL_CAP_LEARNS_CODEBOOKS,
    .needs = QL_NEEDS_HESSIAN,
    .opts = aqlm_opts,
    .n_opts = (int)QL_ARRAY_LEN(aqlm_opts),
    .serves = aqlm_serves,
    .quantize_tensor = aqlm_quantize,
};
