/* explain.c — the Catalogue's plain-words paragraphs: one per family of formats (matched on the
 * registry name). Text only; the facts shown beside them (bits, block, needs) are
 * read from the registries, so a new format gets its numbers even before it gets a paragraph. A
 * method's paragraph is its registry entry's `explain`. */
#include "tui/jobs.h"
#include "methods/method.h"

#include <string.h>

typedef struct {
    const char *prefix; /* registry names starting with this */
    const char *text;
} family;

/* First match wins, so longer prefixes come first. */
static const family FAMILIES[] = {
    {"f32", "The original: every weight is a 32-bit float. Nothing is lost, and nothing is saved. Every other "
            "format is judged against this one."},
    {"f16", "Each weight becomes a 16-bit float: half the memory of f32 and, for trained weights, almost no "
            "loss. Weights larger than 65504 would overflow, which trained models practically never have."},
    {"bf16", "bfloat16 keeps float32's 8 exponent bits and drops mantissa bits: the same range as f32 with "
             "about 3 significant digits. Training frameworks use it; it never overflows where f32 would not."},
    {"q8_0", "Weights are cut into blocks of 32. Each block stores one scale (the block's largest magnitude "
             "/ 127, as fp16) and 32 signed 8-bit integers. 8.5 bits per weight, and the error is usually "
             "below what changes a model's answers."},
    {"q8_k", "llama.cpp's internal 8-bit type for activations in K-quant dot products; not meant for storing "
             "weights."},
    {"q6_k", "A K-quant: super-blocks of 256 weights split into 16 blocks of 16. Each weight gets 6 bits, each "
             "small block an 8-bit scale, and the super-block an fp16 scale for those scales. The two levels of "
             "scales cost little and follow the weights closely."},
    {"q5_k", "A K-quant at 5 bits: super-blocks of 256 in 8 blocks of 32, each block with a 6-bit scale and "
             "a 6-bit minimum, so the codes can cover an off-centre range."},
    {"q4_k", "A K-quant at 4 bits: super-blocks of 256 in 8 blocks of 32, each with a 6-bit scale and "
             "minimum. The usual workhorse of llama.cpp mixes (Q4_K_M)."},
    {"q3_k", "A K-quant at 3 bits: 8 levels per weight, blocks of 16 with 6-bit scales. Noticeably lossy; "
             "mixes use it for the least sensitive tensors."},
    {"q2_k", "A K-quant at 2 bits: 4 levels per weight, blocks of 16 with 4-bit scales and minimums. Big "
             "savings, big error: only with care, usually with an importance matrix."},
    {"q5_1", "Blocks of 32: 5-bit codes with an fp16 scale and an fp16 minimum (asymmetric), 6 bits per weight."},
    {"q5_0", "Blocks of 32: 5-bit symmetric codes and one fp16 scale, 5.5 bits per weight. llama.cpp's fallback "
             "when a K-quant's 256-wide blocks do not fit a row."},
    {"q4_1", "Blocks of 32: 4-bit codes with an fp16 scale and minimum, 5 bits per weight."},
    {"q4_0", "The original llama.cpp format: blocks of 32 weights, one fp16 scale, 16 symmetric levels. Simple "
             "and fast; K-quants at the same size are usually more accurate."},
    {"iq4_nl", "Like q4_0 but the 16 levels are not evenly spaced: a fixed non-linear table puts more levels "
               "near zero, where most weights are."},
    {"iq4_xs", "IQ4_NL codes in super-blocks of 256 with 6-bit scales per 32: the non-linear grid at 4.25 bits."},
    {"iq", "An i-quant: groups of weights are coded together as points of a lattice or codebook (E8 and "
           "friends), which packs more accuracy into very few bits. qlab can read these but not write them."},
    {"tq", "Ternary: every weight is -1, 0 or +1 times a block scale. Made for models trained that way "
           "(BitNet); ordinary models fall apart in it. qlab reads it only."},
    {"mxfp4", "OCP microscaling FP4: 4-bit floats (e2m1) sharing one power-of-two scale per 32. qlab reads it only."},
    {"fp8_e4m3_block", "8-bit floats (4 exponent, 3 mantissa bits) with one float scale per 128x128 tile, "
                       "as DeepSeek-V3 ships its weights."},
    {"fp8_e5m2_block", "8-bit floats with 5 exponent and 2 mantissa bits and one scale per 128x128 tile: "
                       "more range, less precision than E4M3."},
    {"fp8_e4m3_channel", "8-bit floats (E4M3, max 448) with one float scale per output row: what vLLM's FP8 "
                         "checkpoints use on Hopper GPUs."},
    {"fp8_e5m2_channel", "8-bit floats (E5M2) with one scale per output row."},
    {"fp8_e4m3", "8-bit floats with 4 exponent and 3 mantissa bits (max 448), one scale for the whole tensor. "
                 "Floats keep relative precision for small and large weights alike."},
    {"fp8_e5m2", "8-bit floats with 5 exponent and 2 mantissa bits, one scale per tensor: wide range, coarse steps."},
    {"int8_tensor", "Plain INT8 with a single scale for the whole matrix: the simplest 8-bit scheme. One outlier "
                    "weight stretches the scale for everyone."},
    {"int8_channel", "INT8 with one scale per output row (per channel): the standard W8 of GPU inference stacks."},
    {"int4_channel", "INT4 with one scale per output row: 16 levels shared by a whole row, so large and small "
                     "weights in a row compete for them."},
    {"int8_b", "INT8 with one scale per square tile of the matrix (64x64 or 128x128)."},
    {"int4_b", "INT4 with one scale per square tile of the matrix (64x64 or 128x128)."},
    {"nf4_dq", "NF4 whose per-64 scales are themselves quantized to 8 bits in groups of 256 (QLoRA's double "
               "quantization): 4.13 bits instead of 4.5."},
    {"nf4", "bitsandbytes NormalFloat4: 16 levels placed at quantiles of a normal distribution, which is what "
            "trained weights look like, with one float scale (absmax) per 64 weights."},
    {"fp4_dq", "bitsandbytes FP4 with double-quantized scales."},
    {"fp4", "bitsandbytes FP4: 4-bit floats (sign, 2 exponent, 1 mantissa bit) times a per-64 absmax."},
    {"int", "Integer groups: each group of g weights along a row gets an fp16 scale (and, unless _sym, a "
            "zero point), and each weight an n-bit integer. Smaller groups follow the weights more closely "
            "and cost more bits; _mse searches a clipped range per group instead of using the extremes. "
            "GPTQ and AWQ write these (int4_g128 is their classic setting)."},
};

const char *ql_tui_explain_format(const ql_format *f) {
    if (!f) return "";
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++)
        if (!strncmp(f->name, FAMILIES[i].prefix, strlen(FAMILIES[i].prefix))) return FAMILIES[i].text;
    return f->summary;
}

/* a method's plain words live in its registry entry (methods/m_*.c) */
const char *ql_tui_explain_method(const char *name) {
    const ql_method *m = ql_method_by_name(name);
    return m ? m->explain : NULL;
}
