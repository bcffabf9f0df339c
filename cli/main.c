/* main.c — qlab's entry point: dispatches `qlab COMMAND ...` through the command table. */
#include "cli/cli.h"
#include "base/dist.h"
#include "core/backend.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int cmd_info(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_quant(int argc, char **argv);
int cmd_formats(int argc, char **argv);
int cmd_calib(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_imatrix(int argc, char **argv);
int cmd_sense(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_pareto(int argc, char **argv);
int cmd_sense_diff(int argc, char **argv);
int cmd_tui(int argc, char **argv);
int cmd_qat(int argc, char **argv);

const cli_command cli_commands[] = {
    {"info", "architecture, hyper-parameters and every tensor of a model", cmd_info, NULL},
    {"ppl", "perplexity (and KL divergence against saved log-probs) over a text", cmd_ppl, NULL},
    {"logits", "all-position logits for a list of token ids", cmd_logits, NULL},
    {"tokenize", "print the token ids of a text", cmd_tokenize, NULL},
    {"synth", "make a llama-family model with realistic random weights", cmd_synth, NULL},
    {"convert", "convert between GGUF, Hugging Face folders and llama2.c checkpoints", cmd_convert, NULL},
    {"quant", "quantize a model with one format, a preset or a per-tensor plan (also: quantize)", cmd_quant, NULL},
    {"quantize", "the same as quant; also takes llama-quantize's arguments: MODEL OUT TYPE [THREADS]", cmd_quant, NULL},
    {"formats", "list every storage format (bits per weight, block, llama.cpp compatibility)", cmd_formats, NULL},
    {"calib", "build and inspect a calibration set (weighted text/JSONL/folder/archive sources)", cmd_calib, NULL},
    {"stats", "activation statistics (Hessians, channel ranges) of every linear layer over calibration text", cmd_stats, NULL},
    {"imatrix", "llama.cpp importance matrix (GGUF or .dat) over calibration text", cmd_imatrix, NULL},
    {"tui", "the workbench: measure, assign, preview and export in the terminal (also: workbench)", cmd_tui, NULL},
    {"workbench", "the same as tui", cmd_tui, NULL},
    {"sense", "per-tensor sensitivity: bits and error of every candidate format (weight, output, KLD)", cmd_sense, NULL},
    {"plan", "allocate bits to a target BPW or size from a sensitivity file; writes a plan", cmd_plan, NULL},
    {"pareto", "predicted error-vs-BPW frontier of a sensitivity file", cmd_pareto, NULL},
    {"qat", "quantization-aware training or tuning of a plan (distillation from the float model), then export", cmd_qat, NULL},
    {"sense-diff", "tensors whose sensitivity ranking differs most between two sensitivity files", cmd_sense_diff, NULL},
    {NULL, NULL, NULL, NULL},
};

static void usage(FILE *f) {
    fprintf(f, "usage: qlab COMMAND [options]   (qlab COMMAND --help for each)\n\ncommands:\n");
    for (const cli_command *c = cli_commands; c->name; c++) fprintf(f, "  %-10s %s\n", c->name, c->summary);
}

int main(int argc, char **argv) {
    if (argc < 2 && isatty(0) && isatty(1) && access("models/tiny.gguf", R_OK) == 0) {
        char *av[] = {"tui", "models/tiny.gguf", NULL}; /* `qlab` alone opens the workbench on the default model */
        if (ql_blas_fit_address_limit()) {
            fprintf(stderr, "qlab: %s\n", ql_last_error());
            return cli_finish(1);
        }
        return cmd_tui(2, av);
    }
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (const cli_command *c = cli_commands; c->name; c++)
        if (strcmp(c->name, argv[1]) == 0) {
            cli_install_sigint();
            /* a tight ulimit -v: refuse rather than hang in OpenBLAS; --help needs no linear algebra (it prints
             * and leaves through cli_finish) */
            bool help = false;
            for (int i = 2; i < argc; i++) help |= !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            if (!help && ql_blas_fit_address_limit()) {
                fprintf(stderr, "qlab %s: %s\n", c->name, ql_last_error());
                return cli_finish(1);
            }
            ql_backend_set_auto(true); /* a command runs on the GPU when there is one (--device overrides) */
            /* under mpirun: join the job; only the commands below share their work over the ranks */
            static const char *const distributed[] = {"sense", "stats"};
            if (ql_dist_init(&argc, &argv)) return cli_fail(c->name);
            bool shares = false;
            for (size_t i = 0; i < QL_ARRAY_LEN(distributed); i++) shares |= !strcmp(distributed[i], c->name);
            if (ql_dist_size() > 1 && !shares) {
                if (ql_dist_rank() == 0)
                    fprintf(stderr, "qlab %s: runs as one process; of the commands only 'sense' and 'stats' share their "
                                    "work over MPI ranks (run it without mpirun, or with -np 1)\n", c->name);
                return 2;
            }
            return cli_finish(c->run(argc - 1, argv + 1));
        }
    fprintf(stderr, "qlab: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
