/* llama_logits.c — how logits-*.f32 beside it were made (not built by qlab's Makefile): llama.cpp's logits of
 * every position for the token ids on the command line, one batch, F32 KV cache, flash attention off, one thread.
 *   gcc -O1 llama_logits.c -I$LLAMA/include -I$LLAMA/ggml/include -L$LLAMA/build/bin -lllama -o llama_logits
 *   ./qlab synth --shape tiny-moe -o tiny-moe.gguf        (seed 1; also tiny-qwen3moe)
 *   ./llama_logits tiny-moe.gguf logits-tiny-moe.f32 $(cat tokens)   (the 32 ids in tests/test_moe.c)
 * with $LLAMA the llama.cpp that scripts/get_llamacpp.sh builds. */
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    const char *model = argv[1], *out = argv[2];
    int n = argc - 3;
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *m = llama_model_load_from_file(model, mp);
    if (!m) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256; cp.n_batch = 256; cp.n_ubatch = 256; cp.n_threads = 1; cp.n_threads_batch = 1;
    cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED; /* its CPU flash attention rounds through F16 */
    struct llama_context *ctx = llama_init_from_model(m, cp);
    llama_token *tok = malloc(n * sizeof *tok);
    for (int i = 0; i < n; i++) tok[i] = atoi(argv[3 + i]);
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) { b.token[i] = tok[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1; }
    b.n_tokens = n;
    if (llama_decode(ctx, b)) return 2;
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    FILE *f = fopen(out, "wb");
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), 4, nv, f);
    fclose(f);
    fprintf(stderr, "wrote %d x %d\n", n, nv);
    return 0;
}
