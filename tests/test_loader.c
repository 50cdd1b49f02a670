/* The loader against bad input (every error a one-line message, never a crash), the
   session's edges (bad tokens, a full context, rewinding) and the sliding-window rings. */
#include "test.h"
#if !defined(_WIN32)
#include <unistd.h>
#include <sys/stat.h>
#include <dirent.h>
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

/* Writes the safetensors file src to dst with the first `find` in its JSON header replaced
   (the header length rewritten to match). 0 if `find` is not in the header. */
static int ldr_rewrite_header(const char *src, const char *dst, const char *find, const char *repl)
{
    size_t n, hl, k, newlen;
    unsigned char *st = (unsigned char *)g2t_read_file(src, &n);
    char *hdr, *pos, *out;
    FILE *f;
    if (!st) return 0;
    for (hl = 0, k = 8; k-- > 0;) hl = (hl << 8) | st[k];
    hdr = (char *)malloc(hl + 1);
    memcpy(hdr, st + 8, hl);
    hdr[hl] = 0;
    pos = find ? strstr(hdr, find) : NULL;
    newlen = pos ? hl - strlen(find) + strlen(repl) : hl;
    out = (char *)malloc(8 + newlen + (n - 8 - hl));
    for (k = 0; k < 8; k++) out[k] = (char)(((uint64_t)newlen >> (8 * k)) & 0xff);
    if (pos) {
        size_t a = (size_t)(pos - hdr);
        memcpy(out + 8, hdr, a);
        memcpy(out + 8 + a, repl, strlen(repl));
        memcpy(out + 8 + a + strlen(repl), pos + strlen(find), hl - a - strlen(find));
    } else memcpy(out + 8, hdr, hl);
    memcpy(out + 8 + newlen, st + 8 + hl, n - 8 - hl);
    if ((f = fopen(dst, "wb")) != NULL) {
        fwrite(out, 1, 8 + newlen + (n - 8 - hl), f);
        fclose(f);
    }
    free(out);
    free(hdr);
    free(st);
    return pos != NULL;
}

/* Writes tiny-gqa's model.safetensors with the first `find` in its JSON header replaced. */
static void ldr_write_weights(const char *find, const char *repl)
{
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", ldr_dir);
    ldr_rewrite_header(g2t_path("models/tiny-gqa/model.safetensors"), path, find, repl);
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

/* Option values: one past each enum's last value (its _COUNT) and negatives are refused with a
   one-line reason before anything is read; the last value itself is accepted. */
static void test_loader_option_ranges(void)
{
    static const char *fields[] = {"weights", "compute", "kv_cache", "kernels", "n_threads"};
    const int counts[] = {GEMMA2_WEIGHTS_COUNT, GEMMA2_COMPUTE_COUNT, GEMMA2_KV_COUNT, GEMMA2_KERNELS_COUNT, 0};
    const char *dir = g2t_path("models/tiny-gqa");
    int f, v;
    for (f = 0; f < 5; f++)
        for (v = 0; v < 3; v++) {
            gemma2_options opt;
            gemma2_model *m;
            char err[256];
            int *field, count = counts[f];
            memset(&opt, 0, sizeof opt);
            field = f == 0 ? &opt.weights : f == 1 ? &opt.compute : f == 2 ? &opt.kv_cache : f == 3 ? &opt.kernels : &opt.n_threads;
            if (f == 4 && v != 1) continue; /* n_threads: only a negative count is out of range */
            *field = v == 0 ? count : v == 1 ? -1 : count - 1;
            if (f == 3 && v == 2) *field = GEMMA2_KERNELS_SCALAR; /* the last set may not exist on this CPU */
            err[0] = 0;
            m = gemma2_load(dir, &opt, err, sizeof err);
            if (v < 2) CHECK(m == NULL && strstr(err, "out of range") != NULL, "%s = %d: want an out-of-range error, got \"%s\"", fields[f], *field, err);
            else CHECK(m != NULL, "%s = %d must load: %s", fields[f], *field, err);
            gemma2_free(m);
        }
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
    {   /* recomputed for that token alone: equal up to float rounding (one token vs a batch of 3) */
        const float *after = gemma2_logits(s);
        float worst = 0;
        int v;
        for (v = 0; after && v < 512; v++) worst = GEMMA2__MAX(worst, fabsf(after[v] - before[v]));
        CHECK(after && worst < 1e-4f, "logits after rewind are token 2's (max diff %g)", worst);
    }
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

/* tiny-gqa's model.safetensors written as `name` in the temp folder, with `extra` (JSON members,
   comma-separated) put first in its header. */
static void ldr_write_weights_extra(const char *name, const char *extra)
{
    char path[600], *repl = (char *)malloc(strlen(extra) + 3);
    snprintf(path, sizeof path, "%s/%s", ldr_dir, name);
    sprintf(repl, "{%s,", extra);
    CHECK(ldr_rewrite_header(g2t_path("models/tiny-gqa/model.safetensors"), path, "{", repl), "rewrite");
    free(repl);
}

/* n zero-size tensors "x0000000", "x0000001", ... as header members (malloc'd). */
static char *ldr_many_tensors(int n)
{
    const char *fmt = "\"x%07d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
    size_t cap = (size_t)n * 64 + 1, len = 0;
    char *s = (char *)malloc(cap);
    int i;
    s[0] = 0;
    for (i = 0; i < n; i++) len += (size_t)snprintf(s + len, cap - len, "%s", i ? "," : ""), len += (size_t)snprintf(s + len, cap - len, fmt, i);
    return s;
}

/* Loads the temp folder with opt; expects failure with a one-line message containing `want`,
   at most max_len bytes long (err holds 64 KB: a message is bounded by the library, not by the
   buffer). */
static void ldr_expect_fail_opt(const char *what, const gemma2_options *opt, const char *want, size_t max_len)
{
    static char err[1 << 16];
    gemma2_model *m;
    err[0] = 0;
    m = gemma2_load(ldr_dir, opt, err, sizeof err);
    CHECK(m == NULL, "%s: load should fail", what);
    CHECK(strstr(err, want) != NULL, "%s: message \"%.300s\" should mention \"%s\"", what, err, want);
    CHECK(strchr(err, '\n') == NULL && strchr(err, '\r') == NULL, "%s: message must be one line: \"%.300s\"", what, err);
    CHECK(strlen(err) <= max_len, "%s: message of %zu bytes (at most %zu): \"%.300s...\"", what, strlen(err), max_len, err);
    gemma2_free(m);
}

/* Many tensors and many shards cost O(n log n): a header of 250,000 tensors loads in well under
   a second (a check of each name against all before it took minutes: 3e10 comparisons), and a
   name given twice is still found, in one file or across two. */
static void test_loader_many_tensors(void)
{
    const int n = 250000;
    char *extra = ldr_many_tensors(n), *more, err[512], path[600];
    gemma2_model *m;
    if (!ldr_tmpdir() || !extra) { CHECK(0, "setup"); free(extra); return; }
    ldr_write_weights_extra("model.safetensors", extra);
    m = gemma2_load(ldr_dir, NULL, err, sizeof err);
    CHECK(m != NULL, "250000 extra tensors: %s", err);
    if (m) {
        gemma2_session *s = gemma2_session_new(m, 8);
        int32_t ids[2] = {2, 5};
        CHECK(s && gemma2_eval(s, ids, 2, NULL) == 0, "eval");
        gemma2_session_free(s);
    }
    gemma2_free(m);
    /* one of them twice, and a bound tensor twice */
    more = (char *)malloc(strlen(extra) + 200);
    sprintf(more, "%s,\"x0123456\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}", extra);
    ldr_write_weights_extra("model.safetensors", more);
    ldr_expect_fail_opt("an extra tensor twice", NULL, "tensor x0123456 appears twice", 400);
    sprintf(more, "%s,\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}", extra);
    ldr_write_weights_extra("model.safetensors", more);
    ldr_expect_fail_opt("a bound tensor twice", NULL, "tensor model.norm.weight appears twice", 400);
    /* across shards */
    ldr_write_weights(NULL, NULL);
    {   /* a shard holding only model.norm.weight (no data) */
        const char *h = "{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}";
        char st[256];
        size_t k, hl = strlen(h);
        for (k = 0; k < 8; k++) st[k] = (char)(((uint64_t)hl >> (8 * k)) & 0xff);
        memcpy(st + 8, h, hl);
        ldr_write("a.safetensors", st, 8 + hl);
    }
    {
        const char *idx = "{\"weight_map\": {\"a\": \"model.safetensors\", \"b\": \"a.safetensors\", \"c\": \"model.safetensors\"}}";
        ldr_write("model.safetensors.index.json", idx, strlen(idx));
    }
    ldr_expect_fail_opt("a tensor in two shards", NULL, "tensor model.norm.weight appears in both a.safetensors and model.safetensors", 400);
    /* an index naming 250000 shards: sorted and deduplicated, the first one missing */
    {
        size_t cap = (size_t)n * 48 + 64, len = 0;
        char *idx = (char *)malloc(cap);
        int i;
        len += (size_t)snprintf(idx + len, cap - len, "{\"weight_map\": {");
        for (i = 0; i < n; i++) len += (size_t)snprintf(idx + len, cap - len, "%s\"t%d\": \"s%07d.safetensors\"", i ? ", " : "", i, n - 1 - i);
        len += (size_t)snprintf(idx + len, cap - len, "}}");
        ldr_write("model.safetensors.index.json", idx, len);
        free(idx);
    }
    ldr_expect_fail_opt("250000 shards", NULL, "s0000000.safetensors: cannot open", 400);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", ldr_dir);
    remove(path);
    free(more);
    free(extra);
    ldr_cleanup();
}

/* Text from a file never breaks the one-line rule of messages, nor makes them long: control
   and non-UTF-8 bytes are escaped, long text is cut with "...". */
static void test_loader_one_line_errors(void)
{
    char *big = (char *)malloc(20000), *member = (char *)malloc(20100);
    if (!ldr_tmpdir() || !big || !member) { CHECK(0, "setup"); free(big); free(member); return; }
    ldr_write_weights_extra("model.safetensors", "\"bad\\nname\\r\\u001b[31m\\u00e9\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[0,0]}");
    ldr_expect_fail_opt("a newline in a tensor name", NULL, "tensor bad\\nname\\r\\x1b[31m\xc3\xa9: unsupported", 400);
    ldr_write_weights_extra("model.safetensors", "\"bad\xff\xc3name\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[0,0]}");
    ldr_expect_fail_opt("bytes that are not UTF-8", NULL, "tensor bad\\xff\\xc3name: unsupported", 400);
    ldr_write_weights_extra("model.safetensors", "\"nul\\u0000name\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}");
    ldr_expect_fail_opt("a NUL in a tensor name", NULL, "tensor nul\\x00name: the name holds a NUL byte", 400);
    memset(big, 'n', 10000);
    memcpy(big + 5000, "\\n", 2);
    big[10000] = 0;
    sprintf(member, "\"%s\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[0,0]}", big);
    ldr_write_weights_extra("model.safetensors", member);
    ldr_expect_fail_opt("a 10 KB tensor name", NULL, "nnnnnnnnnn...: unsupported", 400);
    ldr_write_weights(NULL, NULL);
    ldr_replace_config("\"model_type\": \"gemma2\"", "\"model_type\": \"gem\\nma2\"");
    ldr_expect_fail_opt("a newline in model_type", NULL, "model_type is \"gem\\nma2\"", 400);
    sprintf(member, "\"model_type\": \"%s\"", big);
    ldr_replace_config("\"model_type\": \"gemma2\"", member);
    ldr_expect_fail_opt("a 10 KB model_type", NULL, "nnn...\", expected \"gemma2\"", 400);
    ldr_replace_config("\"model_type\": \"gemma2\"", "\"model_type\": \"gemma2\"");
    {
        const char *idx = "{\"weight_map\": {\"a\": \"x\\ny.safetensors\"}}";
        char path[600];
        ldr_write("model.safetensors.index.json", idx, strlen(idx));
        ldr_expect_fail_opt("a newline in a shard name", NULL, "shard name \"x\\ny.safetensors\" must be a plain file name", 400);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", ldr_dir);
        remove(path);
    }
    free(big);
    free(member);
    ldr_cleanup();
}

/* max_position_embeddings is what a session of n_ctx 0 holds: more than 2^20 is refused. */
static void test_loader_config_limits(void)
{
    char err[256];
    gemma2_model *m;
    if (!ldr_tmpdir()) { CHECK(0, "setup"); return; }
    ldr_write_weights(NULL, NULL);
    ldr_replace_config("\"max_position_embeddings\": 8192", "\"max_position_embeddings\": 16777216");
    ldr_expect_fail_opt("max_position_embeddings 2^24", NULL, "max_position_embeddings", 300);
    ldr_replace_config("\"max_position_embeddings\": 8192", "\"max_position_embeddings\": 1048577");
    ldr_expect_fail_opt("max_position_embeddings 2^20 + 1", NULL, "max_position_embeddings", 300);
    ldr_replace_config("\"max_position_embeddings\": 8192", "\"max_position_embeddings\": 1048576");
    m = gemma2_load(ldr_dir, NULL, err, sizeof err);
    CHECK(m && gemma2_model_config(m)->max_position_embeddings == 1 << 20, "2^20 loads: %s", err);
    gemma2_free(m);
    ldr_cleanup();
}

#if !defined(_WIN32)
/* Every file the loader reads must be a regular file (symlinks followed): a folder or a FIFO
   under a model file's name is a prompt one-line error (a FIFO used to block the load forever,
   a folder to ask for 8 EiB). */
static void test_loader_not_regular(void)
{
    static const char *names[] = {"model.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json"};
    char path[600], target[1200], cwd[512], err[256];
    gemma2_options opt;
    gemma2_model *m;
    int i, kind, pre;
    if (!ldr_tmpdir() || !getcwd(cwd, sizeof cwd)) { CHECK(0, "setup"); return; }
    memset(&opt, 0, sizeof opt);
    for (i = 0; i < 5; i++)
        for (kind = 0; kind < 2; kind++)
            for (pre = 0; pre < 2; pre++) {
                char what[200];
                snprintf(path, sizeof path, "%s/%s", ldr_dir, names[i]);
                remove(path);
                if (i != 0) ldr_write_weights(NULL, NULL);
                if (i != 2) ldr_replace_config("{", "{"); /* a good config.json beside the others */
                CHECK((kind ? mkfifo(path, 0600) : mkdir(path, 0700)) == 0, "make %s", path);
                opt.preload = pre;
                snprintf(what, sizeof what, "%s as a %s%s", names[i], kind ? "FIFO" : "folder", pre ? " (preload)" : "");
                ldr_expect_fail_opt(what, &opt, names[i], 600);
                ldr_expect_fail_opt(what, &opt, kind ? "is not a regular file (it is a FIFO)" : "is not a regular file (it is a folder)", 600);
                if (kind) remove(path); else rmdir(path);
            }
    /* an explicit tokenizer path that is a folder */
    ldr_write_weights(NULL, NULL);
    opt.preload = 0;
    opt.tokenizer_path = ldr_dir;
    ldr_expect_fail_opt("tokenizer_path a folder", &opt, "is not a regular file (it is a folder)", 600);
    /* symlinks are followed (the Hugging Face cache is made of them) */
    snprintf(path, sizeof path, "%s/model.safetensors", ldr_dir);
    remove(path);
    snprintf(target, sizeof target, "%s/%s", cwd, g2t_path("models/tiny-gqa/model.safetensors"));
    if (g2t_data[0] == '/') snprintf(target, sizeof target, "%s", g2t_path("models/tiny-gqa/model.safetensors"));
    CHECK(symlink(target, path) == 0, "symlink");
    m = gemma2_load(ldr_dir, NULL, err, sizeof err);
    CHECK(m != NULL, "through a symlink: %s", err);
    gemma2_free(m);
    ldr_cleanup();
}
#endif

static void suite_loader_dtypes(void);
static void suite_loader_saved(void);
static void test_loader_preload(void);

/* ---- platform: byte order, non-ASCII paths ---- */

/* Big-endian hosts: every checkpoint is refused with a clear error (the weights are little-endian
   and used in place), and the tokenizer still loads and works. Little-endian hosts load it. */
static void test_loader_byte_order(void)
{
    char err[512], err2[512], out[700];
    int32_t ids[64];
    int n;
    gemma2_model *m = gemma2_load(g2t_path("models/tiny-gqa"), NULL, err, sizeof err), *t;
    if (gemma2__big_endian()) {
        CHECK(!m && strstr(err, "big-endian hosts are not supported"), "load on a big-endian host: %s", m ? "it loaded" : err);
        snprintf(out, sizeof out, "/tmp/gemma2_test_be_%d", (int)sizeof(void *));
        CHECK(gemma2_save_quantized(g2t_path("models/tiny-gqa"), out, GEMMA2_WEIGHTS_Q8, NULL, err, sizeof err) == GEMMA2_ERROR_UNSUPPORTED &&
              strstr(err, "big-endian hosts are not supported"), "save_quantized on a big-endian host: %s", err);
        printf("      big-endian host: checkpoints refused (\"%s\")\n", err);
    } else
        CHECK(m != NULL, "load on a little-endian host: %s", err);
    gemma2_free(m);
    /* the binary tokenizer.model (protobuf: little-endian floats) and the text tokenizer.json
       agree, token for token */
    t = gemma2_load_tokenizer(g2t_path("tokenizer/tokenizer.model"), err, sizeof err);
    m = gemma2_load_tokenizer(g2t_path("tokenizer/tokenizer.json"), err2, sizeof err2);
    CHECK(t && m, "tokenizers: %s / %s", t ? "ok" : err, m ? "ok" : err2);
    if (t && m) {
        static const char text[] = "Hello world, the tokenizer reads 3.14 \xc3\xa9t\xc3\xa9s and \xe6\xa8\xa1\xe5\x9e\x8b too";
        int32_t ids2[64];
        int n2;
        n = gemma2_tokenize(t, text, sizeof text - 1, ids, 64, 0);
        n2 = gemma2_tokenize(m, text, sizeof text - 1, ids2, 64, 0);
        CHECK(n > 5 && n == n2 && !memcmp(ids, ids2, sizeof *ids * (size_t)n), "tokenizer.model %d tokens, tokenizer.json %d", n, n2);
    }
    gemma2_free(t);
    gemma2_free(m);
}

/* The test's own file calls for UTF-8 names, independent of the library's: on Windows the wide
   functions (what a program that gets such a path from its user would do), elsewhere the usual. */
#if defined(_WIN32)
static wchar_t *ldr_w(const char *s)
{
    static wchar_t buf[2][1024];
    static int k;
    wchar_t *w = buf[k++ & 1];
    if (MultiByteToWideChar(CP_UTF8, 0, s, -1, w, 1024) <= 0) w[0] = 0;
    return w;
}
#define ldr_u8_mkdir(p) _wmkdir(ldr_w(p))
#define ldr_u8_rmdir(p) _wrmdir(ldr_w(p))
#define ldr_u8_fopen(p, m) _wfopen(ldr_w(p), ldr_w(m))
#define ldr_u8_remove(p) _wremove(ldr_w(p))
#else
#define ldr_u8_mkdir(p) mkdir(p, 0700)
#define ldr_u8_rmdir(p) rmdir(p)
#define ldr_u8_fopen(p, m) fopen(p, m)
#define ldr_u8_remove(p) remove(p)
#endif

/* A model in a folder whose name is not ASCII (paths are UTF-8 on every platform) loads and
   computes what it does elsewhere. */
static void test_loader_utf8_path(void)
{
    static const char *const files[] = {"config.json", "model.safetensors"};
    char base[64] = "/tmp/gemma2_test_XXXXXX", dir[300], path[400], err[512];
    float *a = NULL, *b = NULL;
    gemma2_model *m;
    size_t i;
    int32_t tok = 2;
    if (!mkdtemp(base)) { CHECK(0, "mkdtemp"); return; }
    snprintf(dir, sizeof dir, "%s/mod\xc3\xa8le-\xe6\xa8\xa1\xe5\x9e\x8b", base); /* "modèle-模型" */
    CHECK(ldr_u8_mkdir(dir) == 0, "mkdir %s", dir);
    for (i = 0; i < sizeof files / sizeof *files; i++) {
        size_t n;
        void *data;
        FILE *f;
        snprintf(path, sizeof path, "models/tiny-gqa/%s", files[i]);
        data = g2t_read_file(g2t_path(path), &n);
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        f = ldr_u8_fopen(path, "wb");
        CHECK(data && f && fwrite(data, 1, n, f) == n, "copy %s", files[i]);
        if (f) fclose(f);
        free(data);
    }
    for (i = 0; i < 2; i++) {
        m = gemma2_load(i ? dir : g2t_path("models/tiny-gqa"), NULL, err, sizeof err);
        CHECK(m != NULL, "load %s: %s", i ? dir : "tiny-gqa", err);
        if (m) {
            gemma2_session *s = gemma2_session_new(m, 0);
            float *l = (float *)malloc(sizeof(float) * (size_t)gemma2_vocab_size(m));
            CHECK(s && l && gemma2_eval(s, &tok, 1, l) == 0, "eval");
            if (i) b = l; else a = l;
            gemma2_session_free(s);
            gemma2_free(m);
        }
    }
    CHECK(a && b && !memcmp(a, b, sizeof(float) * 256), "the same logits from either folder");
    free(a);
    free(b);
    for (i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        ldr_u8_remove(path);
    }
    ldr_u8_rmdir(dir);
    rmdir(base);
}

/* A checkpoint larger than a 32-bit build can map is refused with a clear reason, not a crash or a
   wrapped size. Only where size_t is 32 bits (the i686 build); the 3 GiB file is sparse (made by
   truncate(1), as a 32-bit program without large-file offsets cannot), so it takes no disk. */
static void test_loader_too_large(void)
{
    char cmd[700];
    if (sizeof(size_t) > 4) { printf("      skipped: size_t is 64-bit here (this case runs in the 32-bit build)\n"); return; }
    if (!ldr_tmpdir()) { CHECK(0, "mkdtemp"); return; }
    snprintf(cmd, sizeof cmd, "truncate -s 3G '%s/model.safetensors'", ldr_dir);
    if (system(cmd) != 0) { printf("      skipped: truncate(1) failed\n"); ldr_cleanup(); return; }
    ldr_expect_fail("3 GiB checkpoint", "too large for this build's address space");
    ldr_cleanup();
}

void suite_loader(void)
{
    g2t_run("loader/bad-files", test_loader_bad_files);
    g2t_run("loader/fuzz-header", test_loader_fuzz_header);
    g2t_run("loader/config-values", test_loader_config_values);
    g2t_run("loader/option-ranges", test_loader_option_ranges);
    g2t_run("loader/session-edges", test_loader_session_edges);
    g2t_run("loader/rings", test_loader_rings);
    g2t_run("loader/many-tensors", test_loader_many_tensors);
    g2t_run("loader/one-line-errors", test_loader_one_line_errors);
    g2t_run("loader/config-limits", test_loader_config_limits);
#if !defined(_WIN32)
    g2t_run("loader/not-regular", test_loader_not_regular);
#endif
    suite_loader_dtypes();
    suite_loader_saved();
}

/* Writes every tensor of the given files as one safetensors file of dtype `to`
   ("F16", "BF16" or "F32"), converting with code independent of the library's. With "BF16"
   the 1-D norm weights stay F32, as GEMMA2_WEIGHTS_BF16 keeps them. */
static float ldr_f16_to_f32(uint16_t h)
{
    int e = (h >> 10) & 31, mnt = h & 1023;
    float v = e == 0 ? ldexpf((float)mnt, -24) : ldexpf((float)(mnt | 1024), e - 25);
    return (h & 0x8000) ? -v : v;
}

static uint16_t ldr_to_f16(float f)
{
    /* exact for the values used here (bf16 values well inside f16's normal range) */
    uint16_t sign = f < 0 ? 0x8000 : 0;
    int e;
    float m;
    if (f == 0) return sign;
    m = frexpf(fabsf(f), &e); /* f = m 2^e, m in [0.5, 1) */
    if (e - 1 < -14) return (uint16_t)(sign | (uint16_t)lrintf(ldexpf(fabsf(f), 24))); /* subnormal */
    return (uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)lrintf((m * 2 - 1) * 1024));
}

static uint16_t ldr_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static int ldr_convert_model(const char *src_dir, const char *to)
{
    gemma2_model tmp;
    gemma2__tensors ts;
    char err[256], path[600];
    FILE *f;
    int i, rc;
    size_t hcap = 1 << 16, hl = 0, off = 0, esz;
    const char *dt;
    char *hdr = (char *)malloc(hcap);
    memset(&tmp, 0, sizeof tmp);
    memset(&ts, 0, sizeof ts);
    rc = gemma2__open_weights(&tmp, src_dir, &ts, err, sizeof err);
    if (rc) { free(hdr); return rc; }
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "{");
    for (i = 0; i < ts.n; i++) {
        uint64_t n = ts.t[i].nbytes / (ts.t[i].dtype == GEMMA2__ST_F32 ? 4 : 2);
        char dims[64];
        dt = (!strcmp(to, "BF16") && ts.t[i].ndim == 1) ? "F32" : to;
        esz = strcmp(dt, "F32") ? 2 : 4;
        if (ts.t[i].ndim > 1) snprintf(dims, sizeof dims, "%lld,%lld", (long long)ts.t[i].shape[0], (long long)ts.t[i].shape[1]);
        else snprintf(dims, sizeof dims, "%lld", (long long)ts.t[i].shape[0]);
        hl += (size_t)snprintf(hdr + hl, hcap - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[%zu,%zu]}",
                               i ? "," : "", ts.t[i].name, dt, dims, off, off + (size_t)n * esz);
        off += (size_t)n * esz;
    }
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "}");
    snprintf(path, sizeof path, "%s/model.safetensors", ldr_dir);
    f = fopen(path, "wb");
    for (i = 0; i < 8; i++) fputc((int)(((uint64_t)hl >> (8 * i)) & 255), f);
    fwrite(hdr, 1, hl, f);
    for (i = 0; i < ts.n; i++) {
        uint64_t n = ts.t[i].nbytes / (ts.t[i].dtype == GEMMA2__ST_F32 ? 4 : 2), k;
        dt = (!strcmp(to, "BF16") && ts.t[i].ndim == 1) ? "F32" : to;
        esz = strcmp(dt, "F32") ? 2 : 4;
        for (k = 0; k < n; k++) {
            float v;
            if (ts.t[i].dtype == GEMMA2__ST_F32) memcpy(&v, ts.t[i].data + 4 * k, 4);
            else {
                uint16_t h;
                uint32_t u;
                memcpy(&h, ts.t[i].data + 2 * k, 2);
                if (ts.t[i].dtype == GEMMA2__ST_F16) v = ldr_f16_to_f32(h);
                else { u = (uint32_t)h << 16; memcpy(&v, &u, 4); }
            }
            if (esz == 4) fwrite(&v, 4, 1, f);
            else {
                uint16_t h = !strcmp(dt, "F16") ? ldr_to_f16(v) : ldr_to_bf16(v);
                fwrite(&h, 2, 1, f);
            }
        }
    }
    fclose(f);
    gemma2__tensors_free(&ts);
    for (i = 0; i < tmp.n_files; i++) gemma2__file_close(&tmp.files[i]);
    GEMMA2_FREE(tmp.files); /* the library allocated it */
    free(hdr);
    return 0;
}

/* Logits of all 32 tiny-gqa-style tokens from a folder. */
static float *ldr_logits(const char *dir, int weights, int T, const int32_t *ids, size_t *wbytes)
{
    gemma2_options opt;
    char err[256];
    gemma2_model *m;
    gemma2_session *s;
    float *out;
    memset(&opt, 0, sizeof opt);
    opt.weights = weights;
    m = gemma2_load(dir, &opt, err, sizeof err);
    CHECK(m != NULL, "%s: %s", dir, err);
    if (!m) return NULL;
    if (wbytes) *wbytes = gemma2_model_weight_bytes(m);
    out = (float *)malloc((size_t)T * (size_t)gemma2_vocab_size(m) * sizeof(float));
    s = gemma2_session_new(m, T);
    CHECK(s && gemma2_eval(s, ids, T, out) == 0, "%s: eval", dir);
    gemma2_session_free(s);
    gemma2_free(m);
    return out;
}

/* F16 checkpoints: tiny-gqa's bf16 weights are exact in f16, so the logits must still match,
   widened to F32 (the default) or kept as F16 on every kernel set. */
static void test_loader_f16(void)
{
    size_t sz;
    float *ref = (float *)g2t_read_file(g2t_path("models/tiny-gqa/logits.f32"), &sz), *got, worst = 0;
    size_t wa = 0;
    int k;
    int32_t ids[32] = {2, 184, 88, 249, 416, 283, 113, 49, 503, 133, 503, 108, 432, 182, 206, 316, 14, 500, 140, 219,
                       403, 104, 147, 191, 123, 254, 96, 147, 147, 253, 340, 345};
    int i;
    if (!ref || !ldr_tmpdir()) { CHECK(0, "setup"); free(ref); return; }
    CHECK(ldr_convert_model(g2t_path("models/tiny-gqa"), "F16") == 0, "convert");
    got = ldr_logits(ldr_dir, GEMMA2_WEIGHTS_AUTO, 32, ids, &wa);
    for (i = 0; got && i < 32 * 512; i++) worst = GEMMA2__MAX(worst, fabsf(got[i] - ref[i]));
    CHECK(got && worst < 1e-3f, "F16 checkpoint: max logit diff %g", worst);
    free(got);
    /* GEMMA2_WEIGHTS_F16: the matrices stay F16 (a weight format no kernel set has products
       for: every set runs the format's reference product), in half the bytes */
    for (k = 0; k < GEMMA2__N_KERNEL_SETS; k++) {
        gemma2_options opt;
        gemma2_model *m;
        gemma2_session *s;
        char err[256];
        const gemma2__kernel_set *ks = &gemma2__kernel_sets[k];
        if (!ks->init || !ks->available()) continue;
        memset(&opt, 0, sizeof opt);
        opt.weights = GEMMA2_WEIGHTS_F16;
        opt.kernels = ks->id;
        opt.n_threads = 2;
        m = gemma2_load(ldr_dir, &opt, err, sizeof err);
        CHECK(m != NULL, "F16 kept: %s", err);
        if (!m) continue;
        CHECK(m->layers[0].wq.format == GEMMA2__WF_F16 && m->embed.format == GEMMA2__WF_F16, "F16 matrices must stay F16");
        CHECK(gemma2_model_weight_bytes(m) < wa * 6 / 10, "F16 bytes %zu vs widened %zu", gemma2_model_weight_bytes(m), wa);
        got = (float *)malloc(sizeof(float) * 32 * 512);
        s = gemma2_session_new(m, 32);
        CHECK(s && gemma2_eval(s, ids, 20, got) == 0, "eval"); /* prefill, then a token at a time */
        for (i = 20; s && i < 32; i++) CHECK(gemma2_eval(s, ids + i, 1, got + (size_t)i * 512) == 0, "eval");
        worst = 0;
        for (i = 0; i < 32 * 512; i++) worst = GEMMA2__MAX(worst, fabsf(got[i] - ref[i]));
        CHECK(worst < 1e-3f, "F16 kept (%s): max logit diff %g", gemma2_model_kernels(m), worst);
        free(got);
        gemma2_session_free(s);
        gemma2_free(m);
    }
    free(ref);
    ldr_cleanup();
}

/* GEMMA2_WEIGHTS_BF16 on an F32 checkpoint must equal a checkpoint rounded to bf16 beforehand,
   and hold half the bytes. */
static void test_loader_weights_bf16(void)
{
    int32_t ids[20] = {2, 17, 200, 33, 4, 99, 250, 1, 7, 77, 150, 31, 5, 8, 13, 21, 34, 55, 89, 144};
    float *a, *b;
    size_t wa = 0, wb = 0, wf = 0;
    int i, same = 1;
    if (!ldr_tmpdir()) { CHECK(0, "setup"); return; }
    {   /* the tmp folder needs the F32 model's config */
        size_t n;
        char *cfg = (char *)g2t_read_file(g2t_path("models/tiny-mha-f32-sharded/config.json"), &n);
        ldr_write("config.json", cfg, n);
        free(cfg);
    }
    CHECK(ldr_convert_model(g2t_path("models/tiny-mha-f32-sharded"), "BF16") == 0, "convert");
    a = ldr_logits(ldr_dir, GEMMA2_WEIGHTS_AUTO, 20, ids, &wa);
    b = ldr_logits(g2t_path("models/tiny-mha-f32-sharded"), GEMMA2_WEIGHTS_BF16, 20, ids, &wb);
    free(ldr_logits(g2t_path("models/tiny-mha-f32-sharded"), GEMMA2_WEIGHTS_AUTO, 20, ids, &wf));
    for (i = 0; a && b && i < 20 * 256; i++) same &= a[i] == b[i];
    CHECK(a && b && same, "converting at load must equal a bf16 checkpoint");
    CHECK(wa == wb && wb < wf * 6 / 10, "bf16 bytes %zu vs f32 bytes %zu", wb, wf);
    free(a);
    free(b);
    ldr_cleanup();
}

static void suite_loader_dtypes(void)
{
    g2t_run("loader/f16-checkpoint", test_loader_f16);
    g2t_run("loader/weights-bf16", test_loader_weights_bf16);
    g2t_run("loader/preload", test_loader_preload);
}

/* gemma2_options.preload: the weights read into memory give the same logits bit for bit. */
static void test_loader_preload(void)
{
    int32_t ids[6] = {2, 106, 1645, 108, 5559, 476};
    float *a = NULL, *b = NULL;
    gemma2_options opt;
    char err[256];
    int k, same = 1;
    for (k = 0; k < 2; k++) {
        gemma2_model *m;
        gemma2_session *s;
        float *out = (float *)malloc(sizeof(float) * 6 * 256000);
        memset(&opt, 0, sizeof opt);
        opt.preload = k;
        opt.no_tokenizer = 1;
        m = gemma2_load(g2t_path("models/tiny-realvocab"), &opt, err, sizeof err);
        CHECK(m != NULL, "preload %d: %s", k, err);
        s = m ? gemma2_session_new(m, 8) : NULL;
        CHECK(s && gemma2_eval(s, ids, 6, out) == 0, "eval");
        if (k) b = out; else a = out;
        gemma2_session_free(s);
        gemma2_free(m);
    }
    for (k = 0; k < 6 * 256000; k++) same &= a[k] == b[k];
    CHECK(same, "preloaded weights must give the mapped weights' logits");
    free(a);
    free(b);
}

/* ---- saved quantized folders (gemma2_save_quantized) ---- */

/* Removes every file in dir, then dir (these tests' folders hold files only). */
static void ldr_rmdir_all(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1200];
    if (d) {
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            remove(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* 1 when dir/name exists (a link counts, even a dangling one). */
static int ldr_has(const char *dir, const char *name)
{
    char path[1200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return lstat(path, &st) == 0;
}

static int ldr_same_file(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    char *pa = (char *)g2t_read_file(a, &na), *pb = (char *)g2t_read_file(b, &nb);
    int same = pa && pb && na == nb && memcmp(pa, pb, na) == 0;
    free(pa);
    free(pb);
    return same;
}

/* Copies file `name` of folder from into folder to (or under another name, as). */
static void ldr_copy(const char *from, const char *name, const char *to, const char *as)
{
    char path[1200];
    size_t n;
    char *data;
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", from, name);
    data = (char *)g2t_read_file(path, &n);
    snprintf(path, sizeof path, "%s/%s", to, as ? as : name);
    if (data && (f = fopen(path, "wb")) != NULL) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
    free(data);
}

/* Loads dir with the given weights option and kernel set; the code of gemma2__load. */
static int ldr_load_as(const char *dir, int weights, int kernels, int preload, gemma2_model **m, char *err, size_t err_size)
{
    gemma2_options opt;
    memset(&opt, 0, sizeof opt);
    opt.weights = weights;
    opt.kernels = kernels;
    opt.preload = preload;
    opt.n_threads = 2;
    opt.no_tokenizer = 1;
    return gemma2__load(dir, &opt, m, err, err_size);
}

/* Logits of ids[0..n): n - 2 of them as one prompt, then the last two a token at a time (the
   prefill and the decode products). malloc'd, NULL on failure. */
static float *ldr_eval(const gemma2_model *m, const int32_t *ids, int n)
{
    int V = gemma2_vocab_size(m), ok;
    float *out = (float *)malloc(sizeof(float) * (size_t)n * (size_t)V);
    gemma2_session *s = gemma2_session_new(m, n);
    ok = s && out && gemma2_eval(s, ids, n - 2, out) == 0 && gemma2_eval(s, ids + n - 2, 1, out + (size_t)(n - 2) * V) == 0 &&
         gemma2_eval(s, ids + n - 1, 1, out + (size_t)(n - 1) * V) == 0;
    gemma2_session_free(s);
    if (!ok) { free(out); return NULL; }
    return out;
}

/* 1 when every matrix of a and b has the same format, shape and bytes. */
static int ldr_same_matrices(const gemma2_model *a, const gemma2_model *b)
{
    int l, k, same = 1;
    const gemma2__mat *ma, *mb;
    for (l = -1; l < a->cfg.num_hidden_layers; l++)
        for (k = 0; k < GEMMA2__N_LAYER_TENSORS; k++) {
            if (l < 0 && k > 0) break;
            if (l >= 0 && gemma2__layer_tensors[k].rows == GEMMA2__DIM_NORM) continue;
            ma = l < 0 ? &a->embed : (const gemma2__mat *)(const void *)((const char *)&a->layers[l] + gemma2__layer_tensors[k].off);
            mb = l < 0 ? &b->embed : (const gemma2__mat *)(const void *)((const char *)&b->layers[l] + gemma2__layer_tensors[k].off);
            same &= ma->format == mb->format && ma->rows == mb->rows && ma->cols == mb->cols &&
                    memcmp(ma->data, mb->data, (size_t)ma->rows * gemma2__row_bytes(ma->format, ma->cols)) == 0;
        }
    return same;
}

/* Saved in Q8 and Q4 (bf16, bf16 with 27B-style shapes, sharded f32), then loaded with no
   option: every matrix holds the bytes quantizing at load gives, in the same format, and the
   logits are bit-identical on every kernel set; the folder refuses other formats. */
static void test_loader_save_roundtrip(void)
{
    static const char *models[] = {"quant-a", "tiny-27b-style", "tiny-mha-f32-sharded"};
    int mi, q, k;
    for (mi = 0; mi < 3; mi++)
        for (q = 0; q < 2; q++) {
            const int w = q ? GEMMA2_WEIGHTS_Q4 : GEMMA2_WEIGHTS_Q8;
            char base[64] = "/tmp/gemma2_test_XXXXXX", in[600], out[600], a_cfg[700], b_cfg[700], err[512];
            gemma2_options opt;
            mdl_ref r;
            int rc, checked = 0;
            snprintf(in, sizeof in, "%s", g2t_path("models/"));
            strncat(in, models[mi], sizeof in - strlen(in) - 1);
            if (!mdl_load_ref(models[mi], &r) || !mkdtemp(base)) { CHECK(0, "setup %s", models[mi]); mdl_free_ref(&r); continue; }
            snprintf(out, sizeof out, "%s/saved", base); /* not there yet: the save creates it */
            memset(&opt, 0, sizeof opt);
            opt.n_threads = 2;
            rc = gemma2_save_quantized(in, out, w, &opt, err, sizeof err);
            CHECK(rc == 0, "%s %s: save: %s", models[mi], gemma2__weights_name(w), err);
            snprintf(a_cfg, sizeof a_cfg, "%s/config.json", in);
            snprintf(b_cfg, sizeof b_cfg, "%s/config.json", out);
            CHECK(ldr_same_file(a_cfg, b_cfg), "config.json copied");
            CHECK(!ldr_has(out, "model.safetensors.partial"), "no partial file left");
            for (k = 0; rc == 0 && k < GEMMA2__N_KERNEL_SETS; k++) {
                const gemma2__kernel_set *ks = &gemma2__kernel_sets[k];
                gemma2_model *a = NULL, *b = NULL;
                float *la = NULL, *lb = NULL;
                if (!ks->init || !ks->available()) continue;
                CHECK(ldr_load_as(in, w, ks->id, 0, &a, err, sizeof err) == 0, "quantize at load: %s", err);
                CHECK(ldr_load_as(out, GEMMA2_WEIGHTS_AUTO, ks->id, 0, &b, err, sizeof err) == 0, "saved: %s", err);
                if (a && b) {
                    CHECK(b->embed.format == GEMMA2__WF_Q8 && b->layers[0].wq.format == (q ? GEMMA2__WF_Q4 : GEMMA2__WF_Q8) &&
                              b->layers[0].wdown.format == b->layers[0].wq.format,
                          "saved formats: embed %d, wq %d", b->embed.format, b->layers[0].wq.format);
                    CHECK(ldr_same_matrices(a, b), "%s %s: the saved matrices must be the ones quantized at load", models[mi], gemma2__weights_name(w));
                    CHECK(b->n_files == 1 && (const uint8_t *)b->embed.data > b->files[0].data &&
                              (const uint8_t *)b->layers[0].wq.data > b->files[0].data &&
                              (const uint8_t *)b->layers[0].wq.data < b->files[0].data + b->files[0].size,
                          "saved matrices are used in place from the file");
                    CHECK(gemma2_model_weight_bytes(a) == gemma2_model_weight_bytes(b), "weight bytes %zu vs %zu",
                          gemma2_model_weight_bytes(a), gemma2_model_weight_bytes(b));
                    la = ldr_eval(a, r.ids, 10);
                    lb = ldr_eval(b, r.ids, 10);
                    CHECK(la && lb && memcmp(la, lb, sizeof(float) * 10 * (size_t)gemma2_vocab_size(a)) == 0,
                          "%s %s on %s: the saved folder's logits must be bit-identical", models[mi], gemma2__weights_name(w), gemma2_model_kernels(b));
                    checked++;
                }
                free(la);
                free(lb);
                gemma2_free(a);
                gemma2_free(b);
            }
            CHECK(rc != 0 || checked > 0, "no kernel set ran");
            if (rc == 0) {
                gemma2_model *m = NULL;
                float *la, *lb;
                /* the same scheme asked for explicitly, and preloaded (U8 in place from anonymous memory) */
                CHECK(ldr_load_as(out, w, GEMMA2_KERNELS_AUTO, 0, &m, err, sizeof err) == 0, "asking for the saved scheme: %s", err);
                la = m ? ldr_eval(m, r.ids, 10) : NULL;
                gemma2_free(m);
                CHECK(ldr_load_as(out, GEMMA2_WEIGHTS_AUTO, GEMMA2_KERNELS_AUTO, 1, &m, err, sizeof err) == 0, "preload: %s", err);
                lb = m ? ldr_eval(m, r.ids, 10) : NULL;
                gemma2_free(m);
                CHECK(la && lb && memcmp(la, lb, sizeof(float) * 10 * (size_t)r.V) == 0, "preloaded saved folder");
                free(la);
                free(lb);
                /* other formats cannot come from quantized data */
                for (k = GEMMA2_WEIGHTS_BF16; k < GEMMA2_WEIGHTS_COUNT; k++) {
                    if (k == w) continue;
                    err[0] = 0;
                    rc = ldr_load_as(out, k, GEMMA2_KERNELS_AUTO, 0, &m, err, sizeof err);
                    CHECK(rc == GEMMA2_ERROR_UNSUPPORTED && !m && strstr(err, gemma2__weights_name(w)) && strstr(err, out) && !strchr(err, '\n'),
                          "%s folder loaded as %s: rc %d, \"%s\"", gemma2__weights_name(w), gemma2__weights_name(k), rc, err);
                    gemma2_free(m);
                }
            }
            mdl_free_ref(&r);
            ldr_rmdir_all(out);
            ldr_rmdir_all(base);
        }
}

/* A saved file edited or cut: a clear error (unknown scheme or newer version: UNSUPPORTED
   naming them; U8 without a scheme or of another shape: FORMAT naming the tensor), never a
   crash; random damage to its header loads or fails, never crashes. */
static void test_loader_save_refusals(void)
{
    static const struct { const char *find, *repl; int code; const char *want; } edits[] = {
        {"\"gemma2.quantization\":\"q8\"", "\"gemma2.quantization\":\"q3\"", GEMMA2_ERROR_UNSUPPORTED, "\"q3\" version 1"},
        {"\"gemma2.quantization\":\"q8\"", "\"gemma2.quantization\":\"q\\n\"", GEMMA2_ERROR_UNSUPPORTED, "\"q\\n\" version 1"},
        {"\"gemma2.quantization_version\":\"1\"", "\"gemma2.quantization_version\":\"2\"", GEMMA2_ERROR_UNSUPPORTED, "\"q8\" version 2"},
        {"\"gemma2.quantization_version\":\"1\"", "\"gemma2.quantization_version\":\"x\"", GEMMA2_ERROR_FORMAT, "gemma2.quantization_version"},
        {"\"gemma2.quantization_version\":\"1\"", "\"gemma2.quantization_versioX\":\"1\"", GEMMA2_ERROR_FORMAT, "gemma2.quantization_version"},
        {"\"gemma2.quantization\":\"q8\"", "\"gemma2.quantizatioX\":\"q8\"", GEMMA2_ERROR_FORMAT, "model.embed_tokens.weight"},
        {"\"shape\":[512,136]", "\"shape\":[1024,68]", GEMMA2_ERROR_FORMAT, "model.embed_tokens.weight"},
        {"\"shape\":[128,136]", "\"shape\":[136,128]", GEMMA2_ERROR_FORMAT, "model.layers.0.self_attn.q_proj.weight"},
        {"\"dtype\":\"U8\",\"shape\":[512,136]", "\"dtype\":\"I8\",\"shape\":[512,136]", GEMMA2_ERROR_FORMAT, "dtype"},
    };
    char base[64] = "/tmp/gemma2_test_XXXXXX", saved[600], edit[600], src[700], dst[700], err[512];
    unsigned char *st;
    size_t n, hl, k, cuts[6];
    uint32_t rng = 777;
    int i, rc;
    gemma2_model *m = NULL;
    if (!mkdtemp(base)) { CHECK(0, "mkdtemp"); return; }
    snprintf(saved, sizeof saved, "%s/q8", base);
    snprintf(edit, sizeof edit, "%s/edit", base);
    CHECK(gemma2_save_quantized(g2t_path("models/quant-a"), saved, GEMMA2_WEIGHTS_Q8, NULL, err, sizeof err) == 0, "save: %s", err);
    mkdir(edit, 0777);
    ldr_copy(saved, "config.json", edit, NULL);
    snprintf(src, sizeof src, "%s/model.safetensors", saved);
    snprintf(dst, sizeof dst, "%s/model.safetensors", edit);
    for (i = 0; i < (int)(sizeof edits / sizeof edits[0]); i++) {
        CHECK(ldr_rewrite_header(src, dst, edits[i].find, edits[i].repl), "edit %d: %s not in the header", i, edits[i].find);
        err[0] = 0;
        rc = ldr_load_as(edit, GEMMA2_WEIGHTS_AUTO, GEMMA2_KERNELS_AUTO, 0, &m, err, sizeof err);
        CHECK(rc == edits[i].code && !m && strstr(err, edits[i].want) && !strchr(err, '\n'),
              "%s -> %s: rc %d (want %d), \"%s\" should name %s", edits[i].find, edits[i].repl, rc, edits[i].code, err, edits[i].want);
        if (edits[i].code == GEMMA2_ERROR_UNSUPPORTED)
            CHECK(strstr(err, "model.safetensors") && strstr(err, "q8") && strstr(err, "q4"), "the message names the file and what this build reads: %s", err);
        gemma2_free(m);
        m = NULL;
    }
    /* cut anywhere: an error, not a crash */
    st = (unsigned char *)g2t_read_file(src, &n);
    if (!st) { CHECK(0, "read %s", src); ldr_rmdir_all(saved); ldr_rmdir_all(edit); ldr_rmdir_all(base); return; }
    for (hl = 0, k = 8; k-- > 0;) hl = (hl << 8) | st[k];
    cuts[0] = 5; cuts[1] = 8 + hl / 2; cuts[2] = 8 + hl; cuts[3] = 8 + hl + 100; cuts[4] = n / 2; cuts[5] = n - 1;
    for (k = 0; k < 6; k++) {
        FILE *f = fopen(dst, "wb");
        if (f) { fwrite(st, 1, cuts[k], f); fclose(f); }
        err[0] = 0;
        rc = ldr_load_as(edit, GEMMA2_WEIGHTS_AUTO, GEMMA2_KERNELS_AUTO, 0, &m, err, sizeof err);
        CHECK(rc < 0 && !m && err[0] && !strchr(err, '\n'), "cut at %zu of %zu: rc %d \"%s\"", cuts[k], n, rc, err);
        gemma2_free(m);
        m = NULL;
    }
    /* random damage to the header */
    for (i = 0; i < 150; i++) {
        unsigned char *cp = (unsigned char *)malloc(n);
        FILE *f;
        int flips = 1 + i % 4, fl;
        memcpy(cp, st, n);
        for (fl = 0; fl < flips; fl++) {
            rng = rng * 1664525u + 1013904223u;
            cp[8 + (rng >> 8) % hl] = (unsigned char)(rng >> 3);
        }
        if ((f = fopen(dst, "wb")) != NULL) { fwrite(cp, 1, i % 10 == 0 ? 8 + (rng >> 4) % (hl + 100) : n, f); fclose(f); }
        err[0] = 0;
        rc = ldr_load_as(edit, GEMMA2_WEIGHTS_AUTO, GEMMA2_KERNELS_AUTO, 0, &m, err, sizeof err);
        if (m) {
            gemma2_session *s = gemma2_session_new(m, 16);
            int32_t ids[2] = {2, 5};
            CHECK(s && gemma2_eval(s, ids, 2, NULL) == 0, "a damaged file that loads must still run");
            gemma2_session_free(s);
        } else CHECK(rc < 0 && err[0] != 0, "failure without a message");
        gemma2_free(m);
        m = NULL;
        free(cp);
    }
    free(st);
    ldr_rmdir_all(saved);
    ldr_rmdir_all(edit);
    ldr_rmdir_all(base);
}

static int ldr_cancel_at;
static int ldr_progress_calls;
static int ldr_save_progress(void *user, float fraction)
{
    float *last = (float *)user;
    CHECK(fraction >= *last && fraction <= 1.0f, "progress %g after %g", fraction, *last);
    *last = fraction;
    return ++ldr_progress_calls == ldr_cancel_at;
}

/* Bad arguments and places that cannot be written: an error with a one-line reason, no
   model.safetensors (and no partial file) left behind; the side files are copied. */
static void test_loader_save_errors(void)
{
    char base[64] = "/tmp/gemma2_test_XXXXXX", in[600], d[700], d2[700], path[800], err[512];
    gemma2_options opt;
    gemma2_model *m = NULL;
    float last = 0;
    int rc;
    FILE *f;
    snprintf(in, sizeof in, "%s", g2t_path("models/quant-a"));
    if (!mkdtemp(base)) { CHECK(0, "mkdtemp"); return; }
#define SAVE_FAILS(in_, out_, w_, opt_, code_, want_)                                                                       \
    do {                                                                                                                   \
        err[0] = 0;                                                                                                        \
        rc = gemma2_save_quantized(in_, out_, w_, opt_, err, sizeof err);                                                  \
        CHECK(rc == (code_) && strstr(err, want_) && !strchr(err, '\n'), "rc %d (want %d), \"%s\" should mention \"%s\"", \
              rc, (int)(code_), err, want_);                                                                               \
    } while (0)
    snprintf(d, sizeof d, "%s/out", base);
    SAVE_FAILS(NULL, d, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "NULL");
    SAVE_FAILS(in, NULL, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "NULL");
    SAVE_FAILS(in, d, GEMMA2_WEIGHTS_BF16, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "GEMMA2_WEIGHTS_Q8");
    SAVE_FAILS(in, d, GEMMA2_WEIGHTS_AUTO, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "GEMMA2_WEIGHTS_Q4");
    memset(&opt, 0, sizeof opt);
    opt.n_threads = -1;
    SAVE_FAILS(in, d, GEMMA2_WEIGHTS_Q8, &opt, GEMMA2_ERROR_INVALID_ARGUMENT, "n_threads");
    SAVE_FAILS(in, in, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "in_dir");
    snprintf(d2, sizeof d2, "%s/", in);
    SAVE_FAILS(in, d2, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "in_dir");
    snprintf(d2, sizeof d2, "%s/../quant-a", in);
    SAVE_FAILS(in, d2, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "in_dir");
    SAVE_FAILS("/nonexistent/folder", d, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_IO, "config.json");
    CHECK(!ldr_has(base, "out"), "nothing written for refused arguments");

    /* out_dir is a file; its parent is missing */
    snprintf(d, sizeof d, "%s/file", base);
    if ((f = fopen(d, "wb")) != NULL) fclose(f);
    SAVE_FAILS(in, d, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_IO, d);
    remove(d);
    snprintf(d, sizeof d, "%s/no/such", base);
    SAVE_FAILS(in, d, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_IO, d);

    /* an index in out_dir would shadow the saved file */
    snprintf(d, sizeof d, "%s/idx", base);
    mkdir(d, 0777);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", d);
    if ((f = fopen(path, "wb")) != NULL) { fputs("{\"weight_map\": {}}", f); fclose(f); }
    SAVE_FAILS(in, d, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_INVALID_ARGUMENT, "model.safetensors.index.json");
    CHECK(!ldr_has(d, "model.safetensors") && !ldr_has(d, "model.safetensors.partial"), "nothing saved beside an index");
    ldr_rmdir_all(d);

    /* cancelled by the progress callback, half-way */
    snprintf(d, sizeof d, "%s/cancel", base);
    memset(&opt, 0, sizeof opt);
    opt.progress = ldr_save_progress;
    opt.progress_user = &last;
    ldr_progress_calls = 0;
    ldr_cancel_at = 20;
    SAVE_FAILS(in, d, GEMMA2_WEIGHTS_Q4, &opt, GEMMA2_ERROR_CANCELLED, "cancelled");
    CHECK(ldr_progress_calls == 20 && !ldr_has(d, "model.safetensors") && !ldr_has(d, "model.safetensors.partial"),
          "cancelled: %d calls, nothing loadable left", ldr_progress_calls);
    /* the same, to the end: progress reaches 1; then Q8 over the Q4 just saved replaces it */
    ldr_cancel_at = -1;
    last = 0;
    rc = gemma2_save_quantized(in, d, GEMMA2_WEIGHTS_Q4, &opt, err, sizeof err);
    CHECK(rc == 0 && last == 1.0f, "save: rc %d, last progress %g: %s", rc, last, err);
    rc = gemma2_save_quantized(in, d, GEMMA2_WEIGHTS_Q8, NULL, err, sizeof err);
    CHECK(rc == 0 && ldr_load_as(d, GEMMA2_WEIGHTS_AUTO, GEMMA2_KERNELS_AUTO, 0, &m, err, sizeof err) == 0 && m &&
              m->layers[0].wq.format == GEMMA2__WF_Q8,
          "saving again replaces the file: %s", err);
    gemma2_free(m);
    m = NULL;
    /* a saved folder is not saved again */
    snprintf(d2, sizeof d2, "%s/again", base);
    SAVE_FAILS(d, d2, GEMMA2_WEIGHTS_Q4, NULL, GEMMA2_ERROR_UNSUPPORTED, "already quantized");
    CHECK(!ldr_has(base, "again"), "nothing written when the input is refused");
    ldr_rmdir_all(d);

#if defined(__linux__)
    /* a full disk: every write of the partial file fails */
    snprintf(d, sizeof d, "%s/full", base);
    mkdir(d, 0777);
    snprintf(path, sizeof path, "%s/model.safetensors.partial", d);
    if (symlink("/dev/full", path) == 0) {
        SAVE_FAILS(in, d, GEMMA2_WEIGHTS_Q8, NULL, GEMMA2_ERROR_IO, "write error");
        CHECK(!ldr_has(d, "model.safetensors") && !ldr_has(d, "model.safetensors.partial"), "disk full: nothing left");
    }
    ldr_rmdir_all(d);
#endif
#undef SAVE_FAILS

    /* the side files: copied as they are, and the saved folder loads with them */
    snprintf(d, sizeof d, "%s/src", base);
    snprintf(d2, sizeof d2, "%s/dst", base);
    mkdir(d, 0777);
    ldr_copy(g2t_path("models/tiny-gqa"), "config.json", d, NULL);
    ldr_copy(g2t_path("models/tiny-gqa"), "model.safetensors", d, NULL);
    ldr_copy(g2t_path("tokenizer"), "tokenizer.model", d, NULL);
    ldr_copy(g2t_path("tokenizer"), "tokenizer_config.json", d, NULL);
    snprintf(path, sizeof path, "%s/generation_config.json", d);
    if ((f = fopen(path, "wb")) != NULL) { fputs("{\"eos_token_id\": [1, 107]}", f); fclose(f); }
    rc = gemma2_save_quantized(d, d2, GEMMA2_WEIGHTS_Q4, NULL, err, sizeof err);
    CHECK(rc == 0, "save with side files: %s", err);
    {
        static const char *side[] = {"config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json"};
        char a[800], b[800];
        size_t i;
        for (i = 0; i < sizeof side / sizeof *side; i++) {
            snprintf(a, sizeof a, "%s/%s", d, side[i]);
            snprintf(b, sizeof b, "%s/%s", d2, side[i]);
            CHECK(ldr_same_file(a, b), "%s copied", side[i]);
        }
        CHECK(!ldr_has(d2, "tokenizer.json") && !ldr_has(d2, "special_tokens_map.json"), "absent side files stay absent");
    }
    m = gemma2_load(d2, NULL, err, sizeof err);
    CHECK(m != NULL, "saved folder with its tokenizer: %s", err);
    if (m) {
        int32_t ids[8];
        const gemma2_config *c = gemma2_model_config(m);
        CHECK(gemma2_tokenize(m, "Hello", 5, ids, 8, GEMMA2_TOKENIZE_ADD_BOS) > 1, "tokenizer from the copy");
        CHECK(c->n_eos == 2 && c->eos_token_ids[1] == 107, "generation_config.json from the copy");
        CHECK(m->embed.format == GEMMA2__WF_Q8 && m->layers[3].wup.format == GEMMA2__WF_Q4, "q4 formats");
    }
    gemma2_free(m);
    ldr_rmdir_all(d);
    ldr_rmdir_all(d2);
    ldr_rmdir_all(base);
}

static void suite_loader_saved(void)
{
    g2t_run("loader/save-roundtrip", test_loader_save_roundtrip);
    g2t_run("loader/save-refusals", test_loader_save_refusals);
    g2t_run("loader/save-errors", test_loader_save_errors);
    g2t_run("loader/byte-order", test_loader_byte_order);
    g2t_run("loader/utf8-path", test_loader_utf8_path);
    g2t_run("loader/too-large", test_loader_too_large);
}
