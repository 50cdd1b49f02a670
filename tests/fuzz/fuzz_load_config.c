/* libFuzzer target: config.json and generation_config.json. The input is split at its first 0x00 byte: before
   it config.json, after it generation_config.json (no 0x00: no generation_config.json). The config is read on
   its own first (tokenizer_only with no_tokenizer: gemma2_load stops after it); when it is accepted and its
   model is small, weights of exactly its sizes are written and the whole folder is loaded and run, so the
   forward pass meets every size, window, softcap, scale and eps the config parser lets through. */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    fz_tmpdir();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sep = (const uint8_t *)memchr(data, 0, size);
    size_t n1 = sep ? (size_t)(sep - data) : size;
    gemma2_options o;
    gemma2_model *m;
    char err[256];
    fz_write("config.json", data, n1);
    if (sep) fz_write("generation_config.json", sep + 1, size - n1 - 1);
    else fz_remove("generation_config.json");
    memset(&o, 0, sizeof o);
    o.tokenizer_only = 1;
    o.no_tokenizer = 1;
    m = gemma2_load(fz_tmpdir(), &o, err, sizeof err);
    if (!m) {
        fz_check_err(err);
        return 0;
    }
    {
        const gemma2_config *c = gemma2_model_config(m);
        fz_spec s;
        double per_layer, params;
        int k;
        FZ_CHECK(c->vocab_size > 0 && c->hidden_size > 0 && c->num_hidden_layers > 0 && c->head_dim > 0);
        FZ_CHECK(c->n_eos >= 0 && c->n_eos <= 8);
        for (k = 0; k < c->n_eos; k++) FZ_CHECK(c->eos_token_ids[k] >= 0 && c->eos_token_ids[k] < c->vocab_size);
        FZ_CHECK(c->bos_token_id >= 0 && c->bos_token_id < c->vocab_size);
        s.V = c->vocab_size; s.H = c->hidden_size; s.I = c->intermediate_size; s.L = c->num_hidden_layers;
        s.nH = c->num_attention_heads; s.nKV = c->num_key_value_heads; s.hd = c->head_dim; s.window = c->sliding_window;
        per_layer = 2.0 * s.H * s.I + (double)s.I * s.H + 2.0 * s.nH * s.hd * s.H + 2.0 * s.nKV * s.hd * s.H + 4.0 * s.H;
        params = (double)s.V * s.H + s.L * per_layer;
        gemma2_free(m);
        if (params > 20000 || s.L > 8) return 0; /* keep each input fast; the sizes' limits are the parser's */
        fz_weights_write(fz_tmpdir(), &s, data[0] & 1, size);
        o.tokenizer_only = 0;
        o.n_threads = 1;
        m = gemma2_load(fz_tmpdir(), &o, err, sizeof err);
        fz_remove("model.safetensors");
        FZ_CHECK(m != NULL); /* the config was accepted and the weights match it */
        fz_run_model(m, data, n1 > 8 ? 8 : n1);
        gemma2_free(m);
    }
    return 0;
}
