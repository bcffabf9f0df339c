/* main.c — qlab's entry point: dispatches `qlab COMMAND ...` through the command table. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

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

const cli_command cli_commands[] = {
    {"info", "architecture, hyper-parameters and every tensor of a model", cmd_info, NULL},
    {"ppl", "perplexity (and KL divergence against saved log-probs) over a text", cmd_ppl, NULL},
    {"logits", "all-position logits for a list of token ids", cmd_logits, NULL},
    {"tokenize", "print the token ids of a text", cmd_tokenize, NULL},
    {"synth", "make a llama-family model with realistic random weights", cmd_synth, NULL},
    {"convert", "convert between GGUF, Hugging Face folders and llama2.c checkpoints", cmd_convert, NULL},
    {"quant", "quantize a model with one format, a preset or a per-tensor plan", cmd_quant, NULL},
    {"formats", "list every storage format (bits per weight, block, llama.cpp compatibility)", cmd_formats, NULL},
    {"calib", "build and inspect a calibration set (weighted text/JSONL/folder/archive sources)", cmd_calib, NULL},
    {"stats", "activation statistics (Hessians, channel ranges) of every linear layer over calibration text", cmd_stats, NULL},
    {"imatrix", "llama.cpp importance matrix (GGUF or .dat) over calibration text", cmd_imatrix, NULL},
    {NULL, NULL, NULL, NULL},
};

static void usage(FILE *f) {
    fprintf(f, "usage: qlab COMMAND [options]   (qlab COMMAND --help for each)\n\ncommands:\n");
    for (const cli_command *c = cli_commands; c->name; c++) fprintf(f, "  %-10s %s\n", c->name, c->summary);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (const cli_command *c = cli_commands; c->name; c++)
        if (strcmp(c->name, argv[1]) == 0) {
            cli_install_sigint();
            return c->run(argc - 1, argv + 1);
        }
    fprintf(stderr, "qlab: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
