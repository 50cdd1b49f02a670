/* libFuzzer target: a whole model folder loaded with a fuzzed model.safetensors beside a valid config.json of
   the tiny model (fuzz_common.h); the first input byte chooses the load options (fz_options: read or mapped,
   weights format, KV cache, compute, kernels). A load that succeeds runs a few tokens, so the forward pass
   sees whatever dtypes, alignments and values the loader accepted. The tokenizer is left out (no_tokenizer):
   the tokenizer targets cover it. */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_buf c = {0};
    (void)argc; (void)argv;
    fz_config_json(&c, &fz_tiny);
    fz_write("config.json", c.p, c.n);
    free(c.p);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gemma2_options o;
    if (size < 1) return 0;
    fz_options(data[0], &o);
    fz_write("model.safetensors", data + 1, size - 1);
    fz_load_and_run(&o, data + 1, size > 9 ? 8 : size - 1);
    return 0;
}
