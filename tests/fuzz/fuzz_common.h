/* Shared by the libFuzzer targets in tests/fuzz/. The library itself is compiled once, in gemma2_impl.c, and
   linked into every target: compiling it with coverage and sanitizers is most of the build time.

   Files: the library reads model folders from disk, so each fuzzer process makes one private temporary
   folder (mkdtemp under $TMPDIR or /tmp) and rewrites the same few files in it on every input; it is
   removed at exit (a crash leaves it behind, with the input that caused it).

   Tiny models: the loader targets need a config and weights that agree. fz_model_write_* build them from a
   fz_spec (sizes as in config.json) with deterministic pseudo-random weights, in the safetensors layout of the
   fixtures in tests/data/models (tensors in name order, header padded with spaces to a multiple of 8). */

#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE 1 /* mkdtemp under -std=c99 */
#endif
#include "../../gemma2.h"
#include <math.h>

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Helpers that only some targets use. */
#define FZ_FN static __attribute__((unused))

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A finding: the fuzzer reports the stack and saves the input. */
#define FZ_CHECK(x) do { if (!(x)) { fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", #x, __FILE__, __LINE__); __builtin_trap(); } } while (0)

/* A failed load's reason: present, and one line (what section 1.2 promises). */
FZ_FN void fz_check_err(const char *err)
{
    if (err[0] != 0 && !strchr(err, '\n') && !strchr(err, '\r')) return;
    fprintf(stderr, "bad error message: \"");
    for (; *err; err++) fprintf(stderr, (unsigned char)*err < 0x20 || (unsigned char)*err >= 0x7f ? "\\x%02x" : "%c", (unsigned char)*err);
    fprintf(stderr, "\"\n");
    FZ_CHECK(!"a one-line reason in err");
}

/* 1 if s occurs in data[0..n). */
FZ_FN int fz_contains(const uint8_t *data, size_t n, const char *s)
{
    size_t k = strlen(s), i;
    for (i = 0; i + k <= n; i++) if (!memcmp(data + i, s, k)) return 1;
    return 0;
}

/* ---- the private temporary folder ---------------------------------------------------------- */

static char fz_dir[512];

FZ_FN void fz_rmdir_all(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    if (d) {
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (unlink(p) != 0) fz_rmdir_all(p); /* a folder (the quantized output) */
        }
        closedir(d);
    }
    rmdir(dir);
}

FZ_FN void fz_cleanup(void)
{
    if (fz_dir[0]) fz_rmdir_all(fz_dir);
}

FZ_FN const char *fz_tmpdir(void)
{
    if (!fz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fz_dir, sizeof fz_dir, "%s/gemma2-fuzz-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(fz_dir)) { perror("mkdtemp"); abort(); }
        atexit(fz_cleanup);
    }
    return fz_dir;
}

/* dir/name (static buffer, one at a time per slot). */
FZ_FN const char *fz_path_in(const char *dir, const char *name)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

FZ_FN const char *fz_path(const char *name) { return fz_path_in(fz_tmpdir(), name); }

FZ_FN void fz_write_in(const char *dir, const char *name, const void *data, size_t n)
{
    const char *p = fz_path_in(dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) { perror(p); abort(); }
}

FZ_FN void fz_write(const char *name, const void *data, size_t n) { fz_write_in(fz_tmpdir(), name, data, n); }

FZ_FN void fz_remove(const char *name) { unlink(fz_path(name)); }

/* A whole file into memory (NULL if missing); *n its size. */
FZ_FN uint8_t *fz_read(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    long sz;
    uint8_t *b;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = (uint8_t *)malloc((size_t)sz + 1);
    if (!b || fread(b, 1, (size_t)sz, f) != (size_t)sz) { perror(path); abort(); }
    fclose(f);
    *n = (size_t)sz;
    return b;
}

/* ---- a growing byte buffer ------------------------------------------------------------------ */

typedef struct fz_buf { char *p; size_t n, cap; } fz_buf;

FZ_FN void fz_add(fz_buf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = (char *)realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

FZ_FN void fz_printf(fz_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
FZ_FN void fz_printf(fz_buf *b, const char *fmt, ...)
{
    char t[512];
    int k;
    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof t) abort();
    fz_add(b, t, (size_t)k);
}

/* ---- tiny models ----------------------------------------------------------------------------- */

typedef struct fz_spec { int V, H, I, L, nH, nKV, hd, window; } fz_spec;

/* The default tiny model: both layer kinds (local, global), grouped-query attention; its weights are a few KB. */
static const fz_spec fz_tiny = {32, 8, 16, 2, 2, 1, 4, 4};

FZ_FN void fz_config_json(fz_buf *b, const fz_spec *s)
{
    fz_printf(b, "{\n  \"architectures\": [\"Gemma2ForCausalLM\"],\n  \"attn_logit_softcapping\": 50.0,\n"
                 "  \"bos_token_id\": 2,\n  \"eos_token_id\": 1,\n  \"final_logit_softcapping\": 30.0,\n  \"head_dim\": %d,\n"
                 "  \"hidden_activation\": \"gelu_pytorch_tanh\",\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
                 "  \"max_position_embeddings\": 64,\n  \"model_type\": \"gemma2\",\n  \"num_attention_heads\": %d,\n",
              s->hd, s->H, s->I, s->nH);
    fz_printf(b, "  \"num_hidden_layers\": %d,\n  \"num_key_value_heads\": %d,\n  \"pad_token_id\": 0,\n"
                 "  \"query_pre_attn_scalar\": %d,\n  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 10000.0,\n"
                 "  \"sliding_window\": %d,\n  \"torch_dtype\": \"bfloat16\",\n  \"vocab_size\": %d\n}\n",
              s->L, s->nKV, s->hd, s->window, s->V);
}

/* Name and shape of tensor i of the checkpoint, in name order as the fixtures store them; 0 past the end. */
typedef struct fz_tensor { char name[96]; int64_t rows, cols; } fz_tensor;

FZ_FN int fz_tensor_cmp(const void *a, const void *b) { return strcmp(((const fz_tensor *)a)->name, ((const fz_tensor *)b)->name); }

/* The tensors of spec s, sorted by name; returns the count (at most cap). */
FZ_FN int fz_tensors(const fz_spec *s, fz_tensor *t, int cap)
{
    static const char *const names[11] = {
        "input_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "post_attention_layernorm.weight", "post_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight",
        "self_attn.k_proj.weight", "self_attn.o_proj.weight", "self_attn.q_proj.weight", "self_attn.v_proj.weight"};
    const int64_t H = s->H, I = s->I, Q = (int64_t)s->nH * s->hd, KV = (int64_t)s->nKV * s->hd;
    const int64_t rows[11] = {H, H, I, I, H, H, H, KV, H, Q, KV}, cols[11] = {0, I, H, H, 0, 0, 0, H, Q, H, H};
    int n = 0, l, k;
    if (2 + s->L * 11 > cap) abort();
    snprintf(t[n].name, sizeof t[n].name, "model.embed_tokens.weight"); t[n].rows = s->V; t[n].cols = H; n++;
    snprintf(t[n].name, sizeof t[n].name, "model.norm.weight"); t[n].rows = H; t[n].cols = 0; n++;
    for (l = 0; l < s->L; l++)
        for (k = 0; k < 11; k++) {
            snprintf(t[n].name, sizeof t[n].name, "model.layers.%d.%s", l, names[k]);
            t[n].rows = rows[k];
            t[n].cols = cols[k];
            n++;
        }
    qsort(t, (size_t)n, sizeof *t, fz_tensor_cmp);
    return n;
}

FZ_FN uint64_t fz_rng(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A safetensors file holding tensors t[first .. first+n) of spec s, "F32" or "BF16", values seeded by seed. */
FZ_FN void fz_safetensors(fz_buf *out, const fz_tensor *t, int first, int n, int f32, uint64_t seed)
{
    fz_buf h = {0}, d = {0};
    uint64_t off = 0, hl;
    unsigned char len8[8];
    int i, k;
    fz_add(&h, "{\"__metadata__\":{\"format\":\"pt\"}", 31);
    for (i = first; i < first + n; i++) {
        int64_t elems = t[i].rows * (t[i].cols ? t[i].cols : 1), e;
        uint64_t bytes = (uint64_t)elems * (f32 ? 4 : 2);
        if (t[i].cols) fz_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}", t[i].name,
                                 f32 ? "F32" : "BF16", (long long)t[i].rows, (long long)t[i].cols, (unsigned long long)off,
                                 (unsigned long long)(off + bytes));
        else fz_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}", t[i].name,
                       f32 ? "F32" : "BF16", (long long)t[i].rows, (unsigned long long)off, (unsigned long long)(off + bytes));
        for (e = 0; e < elems; e++) {
            /* roughly N(0, 0.5): sum of uniforms */
            float v = 0;
            uint32_t u;
            for (k = 0; k < 4; k++) v += (float)(fz_rng(&seed) >> 40) / (float)(1 << 24) - 0.5f;
            v *= 0.8f;
            memcpy(&u, &v, 4);
            if (f32) fz_add(&d, &u, 4);
            else { uint16_t b = (uint16_t)(u >> 16); fz_add(&d, &b, 2); }
        }
        off += bytes;
    }
    fz_add(&h, "}", 1);
    while (h.n % 8) fz_add(&h, " ", 1);
    hl = h.n;
    for (k = 0; k < 8; k++) len8[k] = (unsigned char)(hl >> (8 * k));
    fz_add(out, len8, 8);
    fz_add(out, h.p, h.n);
    if (d.n) fz_add(out, d.p, d.n);
    free(h.p);
    free(d.p);
}

/* Writes model.safetensors of spec s into dir. */
FZ_FN void fz_weights_write(const char *dir, const fz_spec *s, int f32, uint64_t seed)
{
    static fz_tensor t[2 + 11 * 1024];
    fz_buf w = {0};
    int n = fz_tensors(s, t, (int)(sizeof t / sizeof t[0]));
    fz_safetensors(&w, t, 0, n, f32, seed);
    fz_write_in(dir, "model.safetensors", w.p, w.n);
    free(w.p);
}

/* Writes config.json and model.safetensors of spec s into dir. */
FZ_FN void fz_model_write(const char *dir, const fz_spec *s, int f32, uint64_t seed)
{
    fz_buf c = {0};
    fz_config_json(&c, s);
    fz_write_in(dir, "config.json", c.p, c.n);
    free(c.p);
    fz_weights_write(dir, s, f32, seed);
}

/* Writes config.json, two shards and model.safetensors.index.json of spec s into dir (F32, cut in the middle). */
FZ_FN void fz_model_write_sharded(const char *dir, const fz_spec *s, uint64_t seed)
{
    fz_tensor t[2 + 11 * 8];
    fz_buf c = {0}, w1 = {0}, w2 = {0}, ix = {0};
    int n = fz_tensors(s, t, (int)(sizeof t / sizeof t[0])), half = n / 2, i;
    fz_config_json(&c, s);
    fz_safetensors(&w1, t, 0, half, 1, seed);
    fz_safetensors(&w2, t, half, n - half, 1, seed + 1);
    fz_printf(&ix, "{\"metadata\":{\"total_size\":%zu},\"weight_map\":{", w1.n + w2.n);
    for (i = 0; i < n; i++)
        fz_printf(&ix, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"", i ? "," : "", t[i].name, i < half ? 1 : 2);
    fz_add(&ix, "}}\n", 3);
    fz_write_in(dir, "config.json", c.p, c.n);
    fz_write_in(dir, "model-00001-of-00002.safetensors", w1.p, w1.n);
    fz_write_in(dir, "model-00002-of-00002.safetensors", w2.p, w2.n);
    fz_write_in(dir, "model.safetensors.index.json", ix.p, ix.n);
    free(c.p); free(w1.p); free(w2.p); free(ix.p);
}

/* Load options from one input byte: bit 0 preload (read) instead of mapping, bits 1-3 the weights format
   (mod GEMMA2_WEIGHTS_COUNT), bit 4 bf16 KV cache, bit 5 bf16 compute, bit 6 the scalar kernels. One thread:
   the pool adds nothing to find here and would slow every input down. */
FZ_FN void fz_options(uint8_t sel, gemma2_options *o)
{
    memset(o, 0, sizeof *o);
    o->n_threads = 1;
    o->preload = sel & 1;
    o->weights = ((sel >> 1) & 7) % GEMMA2_WEIGHTS_COUNT;
    o->kv_cache = (sel >> 4) & 1 ? GEMMA2_KV_BF16 : GEMMA2_KV_F32;
    o->compute = (sel >> 5) & 1 ? GEMMA2_COMPUTE_BF16 : GEMMA2_COMPUTE_F32;
    o->kernels = (sel >> 6) & 1 ? GEMMA2_KERNELS_SCALAR : GEMMA2_KERNELS_AUTO;
    o->no_tokenizer = 1;
}

/* ---- running a loaded model ------------------------------------------------------------------ */

/* A few tokens through a session (prompt, then one more token), and the sampler on the logits: reaches the
   forward pass with whatever weights and sizes the load accepted. Ids come from the input. */
FZ_FN void fz_run_model(const gemma2_model *m, const uint8_t *ids_src, size_t n_src)
{
    const gemma2_config *c = gemma2_model_config(m);
    gemma2_session *s = gemma2_session_new(m, 8);
    int32_t ids[4];
    int i, n = 3, rc, V = c->vocab_size;
    const float *lg;
    if (!s) return;
    for (i = 0; i < 4; i++) ids[i] = n_src ? (int32_t)((ids_src[i % n_src] * 2654435761u) % (uint32_t)V) : i % V;
    ids[0] = c->bos_token_id;
    rc = gemma2_eval(s, ids, n, NULL);
    if (rc == 0) {
        lg = gemma2_logits(s);
        FZ_CHECK(lg != NULL);
        {
            gemma2_sampler *smp = gemma2_sampler_new(V, NULL);
            if (smp) {
                rc = gemma2_sampler_sample(smp, lg, gemma2_session_tokens(s), gemma2_session_pos(s));
                FZ_CHECK(rc < V && (rc >= 0 || rc == GEMMA2_ERROR_INVALID_ARGUMENT));
                if (rc >= 0) rc = gemma2_eval(s, &rc, 1, NULL);
                gemma2_sampler_free(smp);
            }
        }
        /* going back recomputes token 0's logits: with fuzzed weights they may not be finite (the session then
           holds nothing after it, as the header says) */
        rc = gemma2_session_rewind(s, 1);
        FZ_CHECK(rc == 0 || (rc == GEMMA2_ERROR_NUMERIC && gemma2_session_pos(s) == 0));
        rc = gemma2_eval(s, ids + 1, 3, NULL);
        (void)rc;
    }
    gemma2_session_free(s);
}

/* Loads the folder fz_tmpdir() holds with options o: a model that loads runs a few tokens (ids from
   the input), a refusal must be a one-line reason. */
FZ_FN void fz_load_and_run(const gemma2_options *o, const uint8_t *ids_src, size_t n_src)
{
    char err[256];
    gemma2_model *m = gemma2_load(fz_tmpdir(), o, err, sizeof err);
    if (m) {
        fz_run_model(m, ids_src, n_src);
        gemma2_free(m);
    } else fz_check_err(err);
}

#endif
