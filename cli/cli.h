/* cli.h — shared pieces of the command-line front end: the command table, option parsing helpers,
 * the stderr progress bar, and the one-line error report. Only cli/ and tui/ print to the user. */
#ifndef QL_CLI_H
#define QL_CLI_H

#include "base/ql_common.h"
#include "core/stats.h"
#include <stdio.h>

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
    const char *usage;                 /* printed by --help */
} cli_command;

extern const cli_command cli_commands[];

/* Option cursor over argv[1..]: positional arguments and --flags in any order. */
typedef struct {
    int argc, i;
    char **argv;
    const char *cmd;
    const char *usage;
    bool error;
} cli_args;

void cli_args_init(cli_args *a, int argc, char **argv, const char *usage);
/* Next token: returns the flag name ("--ctx") or NULL for a positional (stored in *pos); ends with
 * a NULL flag and NULL *pos. --help prints usage and exits 0. */
bool cli_next(cli_args *a, const char **flag, const char **pos);
const char *cli_value(cli_args *a, const char *flag);   /* the flag's value; error if missing */
int cli_int(cli_args *a, const char *flag, int lo, int hi);
double cli_double(cli_args *a, const char *flag);
int cli_unknown(cli_args *a, const char *flag);          /* prints and returns 2 */
int cli_usage_error(const char *cmd, const char *usage, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* --device cpu|cuda[:N] (ppl, stats, sense, quant, qat, tui): 1 when flag was it. The choice is checked now (a
 * build without the backend, a machine without the device: one line, a->error set) and made process-wide for
 * every forward pass that follows (core/backend.h ql_backend_select). */
int cli_device_flag(cli_args *a, const char *flag);
#define CLI_DEVICE_USAGE "--device cpu|cuda[:N]  where the forward pass runs (default: CUDA when the build has it and a GPU is present)\n"

/* Calibration input shared by stats, imatrix, quant and sense (cli/cli_calib.c). */
struct ql_model;
typedef struct {
    const char *text, *calib;
    int ctx, chunks, threads, samples, mode;
    const char *label; /* the command, for messages */
    bool ctx_given; /* --ctx/--len on the command line (else ctx is a default, capped at n_ctx_train) */
    uint64_t seed;
} cli_calib;
void cli_calib_defaults(cli_calib *ca, int ctx, int chunks);
int cli_calib_flag(cli_args *a, const char *flag, cli_calib *ca); /* 1 when the flag was one of them */
static inline bool cli_calib_given(const cli_calib *ca) { return ca->text || ca->calib; }
/* Also settles ca->ctx against the model's training context (cli_fit_ctx). */
ql_status cli_calib_tokens(const struct ql_model *m, cli_calib *ca, int32_t **tok, int64_t *n_seq);
/* Statistics over n_seq sequences of seq_len tokens with a progress bar named `label`. */
ql_status cli_collect_stats(const struct ql_model *m, const int32_t *tok, int64_t n_seq, int seq_len,
                            const ql_stats_opts *o, const char *label, ql_stats **out);

/* Refuses to write OUT over one of the n input paths (NULLs skipped): the same file, also through a symlink
 * or a hard link (same device and inode), or a file of a Hugging Face input folder. Writing would destroy
 * the input the command reads, so it prints one line naming both and returns 1; 0 when OUT is safe. */
int cli_refuse_input_as_output(const char *cmd, const char *out, const char *const *inputs, int n);
#define CLI_INPUTS(...) (const char *const[]){__VA_ARGS__}, (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

/* The context length to run a model with, as llama.cpp chooses it: a default is capped at the model's
 * training context (n_ctx_train), and a longer one the user asked for is used with a warning. */
/* -1 (ql_last_error says what it needs and the largest ctx that fits) when one pass at ctx does not fit in
 * memory. */
int cli_fit_ctx(const char *cmd, const struct ql_model *m, int ctx, bool given);

/* Prints "qlab CMD: <ql_last_error()>" and returns 1. */
int cli_fail(const char *cmd);

/* A progress bar on stderr (only when stderr is a terminal, else one line per ~10%). */
ql_progress *cli_progress_bar(const char *label);
void cli_progress_done(ql_progress *p);
/* Ctrl-C sets this flag; long jobs stop at their next check. */
extern volatile int cli_cancel_flag;
void cli_install_sigint(void);
/* A command's exit status, returned from main; under a finite ulimit -v it leaves at once instead (fflush, _exit), as
 * OpenBLAS's exit destructor can wait forever for a worker that found no room for its buffer. */
int cli_finish(int rc);

#endif
