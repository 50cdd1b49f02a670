/* The loader against bad input (every error a one-line message, never a crash), the
   session's edges (bad tokens, a full context, rewinding) and the sliding-window rings. */
#include "test.h"
#if !defined(_WIN32)
#include <unistd.h>
#include <sys/stat.h>
#endif

static char ldr_dir[512];

/* A fresh temporary folder holding a copy of tiny-gqa's config.json. */
static const char *ldr_tmpdir(void)
{
    size_t n;
    char *cfg;
    FILE *f;
    char path[600];
    snprintf(ldr_dir, sizeof ldr_dir, "/tmp/gemma2_test_XXXXXX");
    if (!mkdtemp(ldr_dir)) return NULL;
    cfg = (char *)g2t_read_file(g2t_path("models/tiny-gqa/config.json"), &n);
    snprintf(path, sizeof path, "%s/config.json", ldr_dir);
    f = fopen(path, "wb");
    if (f && cfg) fwrite(cfg, 1, n, f);
    if (f) fclose(f);
    free(cfg);
    return ldr_dir;
}

static void ldr_write(const char *name, const void *data, size_t n)
{
    char path[600];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", ldr_dir, name);
    f = fopen(path, "wb");
    if (f) { fwrite(data, 1, n, f); fclose(f); }
}

static void ldr_cleanup(void)
{
    const char *names[] = {"config.json", "model.safetensors", "model.safetensors.index.json", "a.safetensors"};
    char path[600];
    size_t i;
    for (i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", ldr_dir, names[i]);
        remove(path);
    }
    rmdir(ldr_dir);
}

/* Writes tiny-gqa's model.safetensors with the first `find` in its JSON header replaced. */
static void ldr_write_weights(const char *find, const char *repl)
{
    size_t n, hl, k, newlen;
    unsigned char *st = (unsigned char *)g2t_read_file(g2t_path("models/tiny-gqa/model.safetensors"), &n);
    char *hdr, *pos, *out;
    if (!st) return;
    for (hl = 0, k = 8; k-- > 0;) hl = (hl << 8) | st[k];
    hdr = (char *)malloc(hl + 1);
    memcpy(hdr, st + 8, hl);
    hdr[hl] = 0;
    pos = find ? strstr(hdr, find) : NULL;
    newlen = pos ? hl - strlen(find) + strlen(repl) : hl;
    out = (char *)malloc(8 + newlen + (n - 8 - hl));
    for (k = 0; k < 8; k++) out[k] = (char)((newlen >> (8 * k)) & 0xff);
    if (pos) {
        size_t a = (size_t)(pos - hdr);
        memcpy(out + 8, hdr, a);
        memcpy(out + 8 + a, repl, strlen(repl));
        memcpy(out + 8 + a + strlen(repl), pos + strlen(find), hl - a - strlen(find));
    } else memcpy(out + 8, hdr, hl);
    memcpy(out + 8 + newlen, st + 8 + hl, n - 8 - hl);
    ldr_write("model.safetensors", out, 8 + newlen + (n - 8 - hl));
    free(out);
    free(hdr);
    free(st);
}

/* Loads the temp folder; expects failure with a message containing `want`. */
static void ldr_expect_fail(const char *what, const char *want)
{
    char err[256] = "";
    gemma2_model *m = gemma2_load(ldr_dir, NULL, err, sizeof err);
    CHECK(m == NULL, "%s: load should fail", what);
    CHECK(strstr(err, want) != NULL, "%s: message \"%s\" should mention \"%s\"", what, err, want);
    CHECK(strchr(err, '\n') == NULL, "%s: message must be one line", what);
    gemma2_free(m);
}

static void ldr_replace_config(const char *find, const char *repl)
{
    size_t n;
    char *cfg = (char *)g2t_read_file(g2t_path("models/tiny-gqa/config.json"), &n), *p, *out;
    if (!cfg) return;
    p = strstr(cfg, find);
    if (!p) { free(cfg); CHECK(0, "config has no %s", find); return; }
    out = (char *)malloc(n + strlen(repl) + 1);
    memcpy(out, cfg, (size_t)(p - cfg));
    strcpy(out + (p - cfg), repl);
    strcat(out, p + strlen(find));
    ldr_write("config.json", out, strlen(out));
    free(out);
    free(cfg);
}

static void test_loader_bad_files(void)
{
    char err[256];
    CHECK(gemma2_load("/nonexistent/folder", NULL, err, sizeof err) == NULL && strstr(err, "config.json"), "missing folder: %s", err);
    CHECK(gemma2_load(NULL, NULL, err, sizeof err) == NULL, "NULL dir");
    if (!ldr_tmpdir()) { CHECK(0, "mkdtemp"); return; }
    ldr_expect_fail("no weights", "model.safetensors");
    ldr_write("model.safetensors", "abc", 3);
    ldr_expect_fail("3-byte file", "too short");
    ldr_write("model.safetensors", "\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10);
    ldr_expect_fail("huge header length", "header length");
    ldr_write("model.safetensors", "\x03\0\0\0\0\0\0\0{x}", 11);
    ldr_expect_fail("bad JSON", "bad header");
    ldr_write_weights("\"data_offsets\":[0,65536]", "\"data_offsets\":[0,99999999]");
    ldr_expect_fail("offsets outside the file", "outside");
    ldr_write_weights("\"shape\":[512,64]", "\"shape\":[512,65]");
    ldr_expect_fail("shape vs bytes", "model.embed_tokens.weight");
    ldr_write_weights("\"dtype\":\"BF16\",\"shape\":[512,64]", "\"dtype\":\"I8\",\"shape\":[512,64]");
    ldr_expect_fail("unsupported dtype", "dtype");
    ldr_write_weights("model.layers.3.mlp.up_proj.weight", "model.layers.3.mlp.up_proj.weigh_");
    ldr_expect_fail("missing tensor", "model.layers.3.mlp.up_proj.weight");
    ldr_write_weights("\"shape\":[512,64]", "\"shape\":[256,128]");
    ldr_expect_fail("wrong shape", "expected [512, 64]");
    ldr_write_weights("\"shape\":[512,64]", "\"shape\":[18446744073709551615,2]");
    ldr_expect_fail("overflowing shape", "model.embed_tokens.weight");
    ldr_write_weights(NULL, NULL);
    ldr_write("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"../model.safetensors\"}}", strlen("{\"weight_map\": {\"a\": \"../model.safetensors\"}}"));
    ldr_expect_fail("shard escaping the folder", "plain file name");
    ldr_write("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"/etc/passwd\"}}", strlen("{\"weight_map\": {\"a\": \"/etc/passwd\"}}"));
    ldr_expect_fail("absolute shard path", "plain file name");
    ldr_write("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"a.safetensors\"}}", strlen("{\"weight_map\": {\"a\": \"a.safetensors\"}}"));
    ldr_expect_fail("missing shard", "a.safetensors");
    {
        char path[600];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", ldr_dir);
        remove(path);
    }
    ldr_replace_config("\"model_type\": \"gemma2\"", "\"model_type\": \"gemma\"");
    ldr_expect_fail("other model type", "gemma2");
    ldr_replace_config("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    ldr_expect_fail("heads not a multiple", "num_key_value_heads");
    ldr_replace_config("\"hidden_size\": 64", "\"hidden_size\": -64");
    ldr_expect_fail("negative size", "hidden_size");
    ldr_replace_config("\"hidden_size\": 64", "\"hidden_size\": 65");
    ldr_expect_fail("config disagrees with the weights", "expected");
    ldr_replace_config("\"hidden_activation\": \"gelu_pytorch_tanh\"", "\"hidden_activation\": \"relu\"");
    ldr_expect_fail("activation", "hidden_activation");
    ldr_replace_config("\"vocab_size\": 512", "\"vocab_size\": 512,");
    ldr_expect_fail("trailing comma", "config.json");
    ldr_write("config.json", "", 0);
    ldr_expect_fail("empty config", "config.json");
    ldr_cleanup();
}

/* Random damage to the safetensors header must give an error or a working model, never a crash. */
static void test_loader_fuzz_header(void)
{
    size_t n, hl, k;
    unsigned char *st = (unsigned char *)g2t_read_file(g2t_path("models/tiny-gqa/model.safetensors"), &n);
    uint32_t rng = 12345;
    int iter;
    if (!st || !ldr_tmpdir()) { CHECK(0, "setup"); free(st); return; }
    for (hl = 0, k = 8; k-- > 0;) hl = (hl << 8) | st[k];
    for (iter = 0; iter < 200; iter++) {
        unsigned char *cp = (unsigned char *)malloc(n);
        char err[256];
        gemma2_model *m;
        int flips = 1 + iter % 4, f;
        memcpy(cp, st, n);
        for (f = 0; f < flips; f++) {
            rng = rng * 1664525u + 1013904223u;
            cp[8 + (rng >> 8) % hl] = (unsigned char)(rng >> 3);
        }
        if (iter % 10 == 0) ldr_write("model.safetensors", cp, 8 + (rng >> 4) % (hl + 100)); /* truncated */
        else ldr_write("model.safetensors", cp, n);
        m = gemma2_load(ldr_dir, NULL, err, sizeof err);
        if (m) {
            gemma2_session *s = gemma2_session_new(m, 16);
            int32_t ids[2] = {2, 5};
            CHECK(s && gemma2_eval(s, ids, 2, NULL) == 0, "a damaged file that loads must still run");
            gemma2_session_free(s);
        } else CHECK(err[0] != 0, "failure without a message");
        gemma2_free(m);
        free(cp);
    }
    free(st);
    ldr_cleanup();
}

static gemma2_model *ldr_load(const char *name)
{
    char dir[300], err[256];
    gemma2_model *m;
    snprintf(dir, sizeof dir, "%s/models/%s", g2t_data, name);
    m = gemma2_load(dir, NULL, err, sizeof err);
    CHECK(m != NULL, "%s: %s", name, err);
    return m;
}

static void test_loader_config_values(void)
{
    gemma2_model *m = ldr_load("tiny-realvocab");
    const gemma2_config *c;
    if (!m) return;
    c = gemma2_model_config(m);
    CHECK(c->n_eos == 2 && c->eos_token_ids[0] == 1 && c->eos_token_ids[1] == 107, "eos list [1, 107]: %d", c->n_eos);
    CHECK(c->sliding_window == 16 && c->attn_logit_softcapping == 50.0f && c->final_logit_softcapping == 30.0f, "window, caps");
    CHECK(gemma2_model_weight_bytes(m) >= (size_t)256000 * 32 * 2, "weight bytes %zu", gemma2_model_weight_bytes(m));
    gemma2_free(m);
    m = ldr_load("tiny-mha-f32-sharded");
    if (!m) return;
    c = gemma2_model_config(m);
    CHECK(c->attn_logit_softcapping == 0 && c->final_logit_softcapping == 0, "null softcaps are 0");
    CHECK(c->n_eos == 1 && c->eos_token_ids[0] == 1, "single eos");
    gemma2_free(m);
    m = ldr_load("tiny-27b-style");
    if (!m) return;
    CHECK(gemma2_model_config(m)->query_pre_attn_scalar == 12.0f, "query_pre_attn_scalar");
    gemma2_free(m);
}

static void test_loader_session_edges(void)
{
    gemma2_model *m = ldr_load("tiny-gqa");
    gemma2_session *s;
    int32_t ids[4] = {2, 100, 200, 300}, bad[2] = {2, 512}, neg[1] = {-1};
    float before[512];
    if (!m) return;
    s = gemma2_session_new(m, 4);
    CHECK(s && gemma2_session_n_ctx(s) == 4, "session n_ctx");
    if (!s) { gemma2_free(m); return; }
    CHECK(gemma2_logits(s) == NULL, "no logits before eval");
    CHECK(gemma2_eval(s, bad, 2, NULL) == GEMMA2_ERROR_BAD_TOKEN && gemma2_session_pos(s) == 0, "bad token id");
    CHECK(gemma2_eval(s, neg, 1, NULL) == GEMMA2_ERROR_BAD_TOKEN, "negative token id");
    CHECK(gemma2_eval(s, ids, -1, NULL) == GEMMA2_ERROR_INVALID_ARGUMENT, "negative n");
    CHECK(gemma2_eval(s, ids, 3, NULL) == 0 && gemma2_session_pos(s) == 3, "eval 3");
    memcpy(before, gemma2_logits(s), sizeof before);
    CHECK(gemma2_eval(s, ids, 2, NULL) == GEMMA2_ERROR_CONTEXT_FULL && gemma2_session_pos(s) == 3, "context full leaves the session");
    CHECK(memcmp(before, gemma2_logits(s), sizeof before) == 0, "logits unchanged after a failed eval");
    CHECK(gemma2_eval(s, ids + 3, 1, NULL) == 0 && gemma2_session_pos(s) == 4, "the last slot");
    CHECK(gemma2_session_rewind(s, 5) == GEMMA2_ERROR_INVALID_ARGUMENT, "rewind forward");
    CHECK(gemma2_session_rewind(s, 3) == 0 && gemma2_session_pos(s) == 3, "rewind");
    CHECK(gemma2_logits(s) && memcmp(before, gemma2_logits(s), sizeof before) == 0, "logits after rewind are token 2's");
    CHECK(strcmp(gemma2_error_string(GEMMA2_ERROR_CONTEXT_FULL), "context full") == 0, "error string");
    gemma2_session_free(s);
    CHECK(gemma2_session_new(m, -1) == NULL, "negative n_ctx");
    gemma2_free(m);
}

/* Sliding-window rings: with 3-token chunks the local layers keep W + 2 = 10 positions of
   tiny-gqa's 32, so they wrap; logits must still equal the reference, and rewinding past
   what the ring holds must rebuild the cache and still be exact. */
static void test_loader_rings(void)
{
    gemma2_model *m = ldr_load("tiny-gqa");
    size_t sz;
    float *ref = (float *)g2t_read_file(g2t_path("models/tiny-gqa/logits.f32"), &sz);
    int32_t ids[32] = {2, 184, 88, 249, 416, 283, 113, 49, 503, 133, 503, 108, 432, 182, 206, 316, 14, 500, 140, 219,
                       403, 104, 147, 191, 123, 254, 96, 147, 147, 253, 340, 345};
    float *out = (float *)malloc(32 * 512 * sizeof(float));
    gemma2_session *s;
    int i, v, rewinds[] = {31, 20, 25, 3, 0};
    if (!m || !ref || !out) { gemma2_free(m); free(ref); free(out); CHECK(0, "setup"); return; }
    s = gemma2__session_new(m, 32, 3);
    CHECK(s && s->slots[0] == 10 && s->slots[1] == 32, "ring sizes");
    if (s) {
        float worst = 0;
        CHECK(gemma2_eval(s, ids, 32, out) == 0, "eval");
        for (i = 0; i < 32 * 512; i++) worst = GEMMA2__MAX(worst, fabsf(out[i] - ref[i]));
        CHECK(worst < 1e-3f, "ring logits max diff %g", worst);
        for (i = 0; i < 5; i++) {
            int p = rewinds[i];
            CHECK(gemma2_session_rewind(s, p) == 0, "rewind to %d", p);
            CHECK(gemma2_eval(s, ids + p, 32 - p, out) == 0, "re-eval from %d", p);
            worst = 0;
            for (v = 0; v < (32 - p) * 512; v++) worst = GEMMA2__MAX(worst, fabsf(out[v] - ref[(size_t)p * 512 + v]));
            CHECK(worst < 1e-3f, "after rewind to %d: max diff %g", p, worst);
        }
    }
    gemma2_session_free(s);
    free(out);
    free(ref);
    gemma2_free(m);
}

void suite_loader(void)
{
    g2t_run("loader/bad-files", test_loader_bad_files);
    g2t_run("loader/fuzz-header", test_loader_fuzz_header);
    g2t_run("loader/config-values", test_loader_config_values);
    g2t_run("loader/session-edges", test_loader_session_edges);
    g2t_run("loader/rings", test_loader_rings);
}
