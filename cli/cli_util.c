/* cli_util.c — option parsing, progress bar and error reporting shared by every command. */
#include "cli/cli.h"
#include "base/dist.h"
#include "core/backend.h"
#include "core/model.h"

#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

volatile int cli_cancel_flag;

static void on_sigint(int sig) {
    (void)sig;
    if (cli_cancel_flag) _exit(130); /* second Ctrl-C: leave now */
    cli_cancel_flag = 1;
}

/* OpenBLAS's pthread build starts its worker threads when it is loaded, and each allocates a buffer of ~128 MiB
 * at once; under an address-space limit (ulimit -v) that leaves no room for it, a worker retries forever and the
 * library's exit destructor waits for it, so a refused run would never end. Every output is committed and closed
 * by the time a command returns, so under a finite RLIMIT_AS qlab flushes stdio and leaves without running the
 * libraries' destructors. */
int cli_finish(int rc) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        fflush(NULL);
        _exit(rc);
    }
    return rc;
}

void cli_install_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void cli_args_init(cli_args *a, int argc, char **argv, const char *usage) {
    a->argc = argc;
    a->argv = argv;
    a->i = 1;
    a->cmd = argv[0];
    a->usage = usage;
    a->error = false;
}

bool cli_next(cli_args *a, const char **flag, const char **pos) {
    *flag = NULL;
    *pos = NULL;
    if (a->error || a->i >= a->argc) return false;
    const char *s = a->argv[a->i++];
    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
        printf("%s", a->usage);
        exit(cli_finish(0));
    }
    if (s[0] == '-' && s[1] != 0) *flag = s;
    else *pos = s;
    return true;
}

const char *cli_value(cli_args *a, const char *flag) {
    if (a->i >= a->argc) {
        cli_usage_error(a->cmd, a->usage, "%s needs a value", flag);
        a->error = true;
        return NULL;
    }
    return a->argv[a->i++];
}

int cli_int(cli_args *a, const char *flag, int lo, int hi) {
    const char *v = cli_value(a, flag);
    if (!v) return lo;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < lo || x > hi) {
        cli_usage_error(a->cmd, a->usage, "%s must be an integer in [%d, %d], got '%s'", flag, lo, hi, v);
        a->error = true;
        return lo;
    }
    return (int)x;
}

double cli_double(cli_args *a, const char *flag) {
    const char *v = cli_value(a, flag);
    if (!v) return 0;
    char *end;
    double x = strtod(v, &end);
    if (*end) {
        cli_usage_error(a->cmd, a->usage, "%s must be a number, got '%s'", flag, v);
        a->error = true;
    }
    return x;
}

int cli_device_flag(cli_args *a, const char *flag) {
    if (strcmp(flag, "--device")) return 0;
    const char *v = cli_value(a, flag);
    if (v && ql_backend_select(v)) {
        fprintf(stderr, "qlab %s: %s\n", a->cmd, ql_last_error());
        a->error = true;
    }
    return 1;
}

int cli_usage_error(const char *cmd, const char *usage, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "qlab %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (usage) {
        const char *nl = strchr(usage, '\n');
        fprintf(stderr, "%.*s(see qlab %s --help)\n", nl ? (int)(nl - usage + 1) : 0, usage, cmd);
    }
    return 2;
}

int cli_unknown(cli_args *a, const char *flag) {
    a->error = true;
    return cli_usage_error(a->cmd, a->usage, "unknown option %s", flag);
}

/* A file a Hugging Face folder is read from: writing it would change the model in place. */
static bool is_hf_member(const char *out, const char *dir) {
    const char *base = strrchr(out, '/');
    base = base ? base + 1 : out;
    size_t l = strlen(base);
    struct stat so;
    if (stat(out, &so) != 0) return false; /* a new file beside the model is fine */
    bool model_file = (l > 12 && !strcmp(base + l - 12, ".safetensors")) || !strcmp(base, "config.json") ||
                      !strcmp(base, "tokenizer.json") || !strcmp(base, "model.safetensors.index.json");
    if (!model_file) return false;
    char *parent = ql_strdup(out);
    char *slash = strrchr(parent, '/');
    if (slash) slash[slash == parent ? 1 : 0] = 0;
    else strcpy(parent, ".");
    struct stat sp, sd;
    bool in = stat(parent, &sp) == 0 && stat(dir, &sd) == 0 && sp.st_dev == sd.st_dev && sp.st_ino == sd.st_ino;
    free(parent);
    return in;
}

int cli_refuse_input_as_output(const char *cmd, const char *out, const char *const *inputs, int n) {
    struct stat si;
    if (!out) return 0;
    for (int i = 0; i < n; i++) {
        if (!inputs[i] || stat(inputs[i], &si) != 0) continue;
        if (ql_same_file(out, inputs[i]) || (S_ISDIR(si.st_mode) && is_hf_member(out, inputs[i]))) {
            fprintf(stderr, "qlab %s: refusing to write %s: it is the input %s (writing it would destroy it); "
                            "choose another output path\n", cmd, out, inputs[i]);
            return 1;
        }
    }
    return 0;
}

/* The context must also fit the memory there is: one forward pass's working set (attention grows with ctx
 * squared) within the budget (60% of RAM, the cgroup limit or ulimit -v), else -1 with ql_fail's message giving
 * the largest ctx that fits. */
static int ctx_fits_memory(const char *cmd, const ql_model *m, int ctx) {
    double need = ql_scratch_bytes(&m->cfg, ctx), budget = ql_mem_budget_bytes();
    if (need <= budget) return ctx;
    int lo = 1, hi = ctx, fits = 0;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (ql_scratch_bytes(&m->cfg, mid) <= budget) fits = mid, lo = mid + 1;
        else hi = mid - 1;
    }
    const char *what;
    ql_mem_limit_bytes(&what);
    (void)cmd;
    ql_fail(QL_ERR_ARG,
            "ctx %d needs %.1f GiB of working memory (attention grows with ctx squared), more than the budget of %.1f "
            "GiB (60%% of %s, or QL_MEM_BUDGET_MB); use --ctx %d or less",
            ctx, need / 1073741824.0, budget / 1073741824.0, what, fits);
    return -1;
}

int cli_fit_ctx(const char *cmd, const ql_model *m, int ctx, bool given) {
    int train = m->cfg.n_ctx_train;
    if (train <= 0 || ctx <= train) return ctx_fits_memory(cmd, m, ctx);
    if (given) {
        fprintf(stderr, "qlab %s: warning: the model was trained on only %d context tokens (%d asked for)\n", cmd, train,
                ctx);
        return ctx_fits_memory(cmd, m, ctx);
    }
    fprintf(stderr, "qlab %s: using ctx %d, the model's training context (the default %d is longer)\n", cmd, train, ctx);
    return ctx_fits_memory(cmd, m, train);
}

int cli_fail(const char *cmd) {
    fprintf(stderr, "qlab %s: %s\n", cmd, ql_last_error());
    return 1;
}

typedef struct {
    ql_progress p;
    const char *label;
    double t0, last;
    bool tty;
    int last_decile;
} bar;

static void bar_draw(void *user, int64_t done, int64_t total, const char *phase) {
    bar *b = user;
    double now = ql_time_s();
    double frac = total > 0 ? (double)done / total : 0;
    if (!b->tty) {
        int dec = (int)(frac * 10);
        if (dec > b->last_decile || done == total) {
            b->last_decile = dec;
            fprintf(stderr, "%s: %s %lld/%lld\n", b->label, phase ? phase : "", (long long)done, (long long)total);
        }
        return;
    }
    if (now - b->last < 0.1 && done < total) return;
    b->last = now;
    int width = 30, fill = (int)(frac * width + 0.5);
    double el = now - b->t0, eta = frac > 0 ? el / frac - el : 0;
    char cells[64];
    for (int i = 0; i < width; i++) cells[i] = i < fill ? '#' : '.';
    cells[width] = 0;
    fprintf(stderr, "\r%s [%s] %3.0f%% %lld/%lld %s  %.0fs elapsed, ETA %.0fs   ", b->label, cells, frac * 100,
            (long long)done, (long long)total, phase ? phase : "", el, eta);
    fflush(stderr);
}

ql_progress *cli_progress_bar(const char *label) {
    bar *b = ql_calloc(1, sizeof *b);
    b->p.fn = ql_dist_rank() == 0 ? bar_draw : NULL; /* under mpirun, rank 0 speaks for the job */
    b->p.user = b;
    b->p.cancel = &cli_cancel_flag;
    b->label = label;
    b->t0 = ql_time_s();
    b->tty = isatty(2);
    b->last_decile = -1;
    return &b->p;
}

void cli_progress_done(ql_progress *p) {
    if (!p) return;
    bar *b = (bar *)p;
    if (b->tty && b->p.fn) fprintf(stderr, "\r%*s\r", 100, "");
    free(b);
}
