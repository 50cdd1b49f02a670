/* libFuzzer target: model.safetensors.index.json, beside a valid config.json and the two F32 shards of the tiny
   model (fuzz_common.h). The weight map names the shard files; the loader must keep them inside the folder. A
   load that succeeds runs a few tokens. */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    fz_model_write_sharded(fz_tmpdir(), &fz_tiny, 3);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gemma2_options o;
    fz_write("model.safetensors.index.json", data, size);
    memset(&o, 0, sizeof o);
    o.n_threads = 1;
    o.no_tokenizer = 1;
    fz_load_and_run(&o, data, size > 8 ? 8 : size);
    return 0;
}
