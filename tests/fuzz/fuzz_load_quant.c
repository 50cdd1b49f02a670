/* libFuzzer target: the header of a saved quantized checkpoint (gemma2_save_quantized of the tiny model), with
   its __metadata__ naming the scheme ("gemma2.quantization", "gemma2.quantization_version") and its U8
   tensors. The input is byte 0: the load options (fz_options; bits 1-3, the weights format, also pick which
   saved file's data follows: Q4 when they say Q4, else Q8), then the JSON header; the file is made of the
   header's length, the header and the saved data bytes, so mutations stay in the header. */
#include "fuzz_common.h"
#include <sys/stat.h>

static uint8_t *fz_blob[2];   /* the data bytes after the header of the saved Q8 and Q4 files */
static size_t fz_blob_n[2];

/* One seed file: a selector byte, then data[0..n) (sel < 0: no selector). */
static void fz_seed(const char *dir, const char *target, const char *name, int sel, const void *data, size_t n)
{
    char sub[1024];
    fz_buf b = {0};
    unsigned char c = (unsigned char)sel;
    snprintf(sub, sizeof sub, "%s/%s", dir, target);
    mkdir(sub, 0777);
    if (sel >= 0) fz_add(&b, &c, 1);
    fz_add(&b, data, n);
    fz_write_in(sub, name, b.p, b.n);
    free(b.p);
}

/* GEMMA2_FUZZ_WRITE_SEEDS=DIR: writes the seed corpora of the four loader targets into DIR/<target>/ and exits
   (make fuzz-seeds; the committed corpora in tests/fuzz/corpus/ were made so). They are the files of the tiny
   model, so they come from the same code as the folders the targets build. */
static void fz_write_model_seeds(const char *dir)
{
    static const char gen[] = "{\"bos_token_id\": 2, \"eos_token_id\": [1, 107, 3], \"pad_token_id\": 0}\n";
    const char *tmp = fz_tmpdir();
    uint8_t *f;
    size_t n, hl = 0;
    fz_buf c = {0};
    fz_spec s;
    int q, k;
    mkdir(dir, 0777);
    /* load_weights: the tiny model in BF16 and F32 under a few options, and the saved Q8 and Q4 files */
    fz_model_write(tmp, &fz_tiny, 0, 1);
    f = fz_read(fz_path("model.safetensors"), &n);
    fz_seed(dir, "load_weights", "bf16", 0x00, f, n);
    fz_seed(dir, "load_weights", "bf16-q8-read", 0x07, f, n);
    fz_seed(dir, "load_weights", "bf16-f16-scalar-kvbf16", 0x54, f, n);
    free(f);
    fz_model_write(tmp, &fz_tiny, 1, 2);
    f = fz_read(fz_path("model.safetensors"), &n);
    fz_seed(dir, "load_weights", "f32-read", 0x01, f, n);
    fz_seed(dir, "load_weights", "f32-q4-bf16compute", 0x28, f, n);
    fz_seed(dir, "load_weights", "f32-bf16", 0x02, f, n);
    free(f);
    for (q = 0; q < 2; q++) {
        f = fz_read(fz_path_in(fz_path(q ? "q4" : "q8"), "model.safetensors"), &n);
        fz_seed(dir, "load_weights", q ? "saved-q4" : "saved-q8", q ? 0x08 : 0x00, f, n);
        /* load_quant: the header alone */
        for (hl = 0, k = 7; k >= 0; k--) hl = (hl << 8) | f[k];
        fz_seed(dir, "load_quant", q ? "q4" : "q8", q ? 0x08 : 0x06, f + 8, hl);
        fz_seed(dir, "load_quant", q ? "q4-read-scalar" : "q8-auto-read", q ? 0x49 : 0x01, f + 8, hl);
        free(f);
    }
    /* load_config: the tiny config with a generation_config.json; variants that change the forward pass */
    fz_config_json(&c, &fz_tiny);
    fz_add(&c, "", 1); /* the separator */
    fz_add(&c, gen, sizeof gen - 1);
    fz_seed(dir, "load_config", "tiny", -1, c.p, c.n);
    c.n = 0;
    s = fz_tiny; s.nH = 4; s.nKV = 4; s.hd = 2; s.window = 1; s.L = 3;
    fz_config_json(&c, &s);
    fz_seed(dir, "load_config", "mha-hd2-window1", -1, c.p, c.n);
    c.n = 0;
    s = fz_tiny; s.V = 3; s.H = 1; s.I = 1; s.L = 1; s.nH = 1; s.hd = 2;
    fz_config_json(&c, &s);
    fz_seed(dir, "load_config", "smallest", -1, c.p, c.n);
    free(c.p);
    /* load_index: the index of the sharded tiny model */
    fz_model_write_sharded(tmp, &fz_tiny, 3);
    f = fz_read(fz_path("model.safetensors.index.json"), &n);
    fz_seed(dir, "load_index", "index", -1, f, n);
    free(f);
    exit(0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    int q;
    (void)argc; (void)argv;
    fz_model_write(fz_path(""), &fz_tiny, 0, 1);
    for (q = 0; q < 2; q++) {
        const char *out = fz_path(q ? "q4" : "q8");
        size_t n, hl = 0;
        uint8_t *f;
        int k;
        if (gemma2_save_quantized(fz_tmpdir(), out, q ? GEMMA2_WEIGHTS_Q4 : GEMMA2_WEIGHTS_Q8, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "gemma2_save_quantized: %s\n", err);
            abort();
        }
        f = fz_read(fz_path_in(out, "model.safetensors"), &n);
        for (k = 7; k >= 0; k--) hl = (hl << 8) | f[k];
        fz_blob_n[q] = n - 8 - hl;
        fz_blob[q] = (uint8_t *)malloc(fz_blob_n[q] + 1);
        memcpy(fz_blob[q], f + 8 + hl, fz_blob_n[q]);
        free(f);
    }
    if (getenv("GEMMA2_FUZZ_WRITE_SEEDS")) fz_write_model_seeds(getenv("GEMMA2_FUZZ_WRITE_SEEDS"));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gemma2_options o;
    fz_buf f = {0};
    unsigned char len8[8];
    int k, q;
    if (size < 1) return 0;
    fz_options(data[0], &o);
    q = o.weights == GEMMA2_WEIGHTS_Q4;
    for (k = 0; k < 8; k++) len8[k] = (unsigned char)((uint64_t)(size - 1) >> (8 * k));
    fz_add(&f, len8, 8);
    fz_add(&f, data + 1, size - 1);
    fz_add(&f, fz_blob[q], fz_blob_n[q]);
    fz_write("model.safetensors", f.p, f.n);
    free(f.p);
    fz_load_and_run(&o, data, size > 8 ? 8 : size);
    return 0;
}
