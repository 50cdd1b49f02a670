/* Saved sessions: a restored session continues bit for bit as the original (every fixture, f32
   and bf16 KV caches, past the sliding windows' rings, after rewinds), to and from buffers and
   files; other models, other KV formats, every truncation, every flipped byte and fields out of
   range (with a correct checksum) refused with a one-line reason, never a crash. */
#include "test.h"

static const char *sv_fixtures[] = {"tiny-gqa", "tiny-27b-style", "tiny-mha-f32-sharded", "tiny-realvocab", "quant-a", "long-odd"};

static gemma2_model *sv_load(const char *name, int kv_cache, int weights)
{
    char dir[256], err[256];
    gemma2_options o;
    gemma2_model *m;
    memset(&o, 0, sizeof o);
    o.kv_cache = kv_cache;
    o.weights = weights;
    o.n_threads = 2;
    snprintf(dir, sizeof dir, "%s", g2t_path("models/"));
    strncat(dir, name, sizeof dir - strlen(dir) - 1);
    m = gemma2_load(dir, &o, err, sizeof err);
    CHECK(m != NULL, "%s: load: %s", name, err);
    return m;
}

/* Deterministic ids valid in every fixture (the smallest vocabulary has 97). */
static void sv_ids(int32_t *ids, int n, int V, int seed)
{
    int i;
    for (i = 0; i < n; i++) ids[i] = (int32_t)(((uint32_t)i * 7919u + (uint32_t)seed * 104729u + 13u) % (uint32_t)V);
    if (n > 0 && seed == 0) ids[0] = 2;
}

/* A saved copy of s in a fresh malloc'd buffer (*n bytes). */
static unsigned char *sv_save(const gemma2_session *s, size_t *n)
{
    size_t need = 0, got = 0;
    unsigned char *buf;
    CHECK(gemma2_session_save_buffer(s, NULL, 0, &need) == 0 && need > 0, "size query");
    buf = (unsigned char *)malloc(need);
    CHECK(gemma2_session_save_buffer(s, buf, need, &got) == 0 && got == need, "save_buffer: %zu of %zu", got, need);
    *n = need;
    return buf;
}

/* Continues a and b with the same 20 tokens, in pieces of 1, 7 and 12, and checks every row
   of logits is the same bits. Returns 1 if they were. */
static int sv_same_future(gemma2_session *a, gemma2_session *b, int V, const char *what)
{
    static const int piece[3] = {1, 7, 12};
    int32_t ids[20];
    float *ra = (float *)malloc((size_t)12 * V * sizeof(float)), *rb = (float *)malloc((size_t)12 * V * sizeof(float));
    int k, done = 0, ok = 1;
    sv_ids(ids, 20, V, 5);
    for (k = 0; k < 3; k++) {
        int rca = gemma2_eval(a, ids + done, piece[k], ra), rcb = gemma2_eval(b, ids + done, piece[k], rb);
        CHECK(rca == 0 && rcb == 0, "%s: eval %d, %d", what, rca, rcb);
        if (rca || rcb || memcmp(ra, rb, (size_t)piece[k] * V * sizeof(float)) != 0) { ok = 0; break; }
        done += piece[k];
    }
    CHECK(ok, "%s: the restored session's logits differ from the original's at tokens %d..%d", what, done, done + piece[k < 3 ? k : 2] - 1);
    free(ra);
    free(rb);
    return ok;
}

/* The original: a session of n_ctx 400 that evaluated ids[0..300) and rewound to p when
   rewound, else evaluated ids[0..p). Made afresh for each comparison (comparing moves it on). */
static gemma2_session *sv_original(gemma2_model *m, const int32_t *ids, int p, int rewound)
{
    gemma2_session *s = gemma2_session_new(m, 400);
    CHECK(s != NULL, "session_new");
    if (!s) return NULL;
    CHECK(gemma2_eval(s, ids, rewound ? 300 : p, NULL) == 0, "eval");
    if (rewound) CHECK(gemma2_session_rewind(s, p) == 0, "rewind");
    return s;
}

/* Every fixture, both KV formats: sessions saved at several positions (empty, one token, short,
   past the window's ring, and rewound from past the ring), restored with the saved n_ctx and a
   smaller one, and compared with the original: the state at once, the next 20 tokens, and
   rewinds each way (inside the ring: the cheap path; further: rebuilt) then 20 tokens. */
static void test_saved_continue(void)
{
    static const int at[5] = {0, 1, 37, 300, -250}; /* negative: evaluate 300, rewind to it */
    size_t f;
    int kv;
    for (f = 0; f < sizeof sv_fixtures / sizeof sv_fixtures[0]; f++)
        for (kv = 0; kv < 2; kv++) {
            gemma2_model *m = sv_load(sv_fixtures[f], kv ? GEMMA2_KV_BF16 : GEMMA2_KV_F32, 0);
            int32_t ids[300];
            int V, k, var;
            if (!m) continue;
            V = gemma2_vocab_size(m);
            sv_ids(ids, 300, V, 0);
            for (k = 0; k < 5; k++) {
                int p = at[k] < 0 ? -at[k] : at[k], rew = at[k] < 0, rc = 1;
                gemma2_session *s = sv_original(m, ids, p, rew), *r;
                unsigned char *buf, *again;
                size_t n, n2;
                char what[160], err[256];
                if (!s) continue;
                buf = sv_save(s, &n);
                /* var 0: n_ctx as saved, state and future; 1: n_ctx pos + 20, future; 2, 3, 4: rewinds (-100
                   from a session rewound from 300 reaches keys its rings no longer hold: rebuilt) */
                for (var = 0; var < 5; var++) {
                    int n_ctx = var == 1 ? p + 20 : 0, to = var == 2 ? p - 5 : var == 3 ? 5 : p - 100;
                    snprintf(what, sizeof what, "%s, %s kv, saved at %d%s, %s", sv_fixtures[f], kv ? "bf16" : "f32", p,
                             rew ? " (rewound from 300)" : "", var == 0 ? "restored" : var == 1 ? "n_ctx pos + 20" : var == 2 ? "rewind -5" : var == 3 ? "rewind to 5" : "rewind -100");
                    if (var > 0) { gemma2_session_free(s); s = sv_original(m, ids, p, rew); }
                    r = gemma2_session_load_buffer(m, buf, n, n_ctx, &rc, err, sizeof err);
                    CHECK(r != NULL && rc == 0, "%s: load: %s", what, err);
                    if (!r || !s) { gemma2_session_free(r); continue; }
                    if (var == 0) {
                        CHECK(gemma2_session_pos(r) == p, "%s: pos %d", what, gemma2_session_pos(r));
                        CHECK(gemma2_session_n_ctx(r) == 400, "%s: n_ctx %d", what, gemma2_session_n_ctx(r));
                        CHECK(p == 0 || !memcmp(gemma2_session_tokens(r), ids, (size_t)p * 4), "%s: tokens differ", what);
                        CHECK((gemma2_logits(r) == NULL) == (p == 0), "%s: logits %s", what, gemma2_logits(r) ? "present" : "missing");
                        if (p > 0 && gemma2_logits(r))
                            CHECK(!memcmp(gemma2_logits(r), gemma2_logits(s), (size_t)V * sizeof(float)), "%s: last logits differ", what);
                        again = sv_save(r, &n2);
                        CHECK(n2 == n && !memcmp(again, buf, n), "%s: saved again, the bytes differ (%zu, %zu)", what, n2, n);
                        free(again);
                    }
                    if (var == 1) CHECK(gemma2_session_n_ctx(r) == p + 20, "%s: n_ctx %d", what, gemma2_session_n_ctx(r));
                    if (var >= 2) {
                        if (to < 1 || to >= p) { gemma2_session_free(r); continue; }
                        CHECK(gemma2_session_rewind(s, to) == 0 && gemma2_session_rewind(r, to) == 0, "%s: rewind", what);
                        CHECK(gemma2_logits(r) && gemma2_logits(s) && !memcmp(gemma2_logits(r), gemma2_logits(s), (size_t)V * sizeof(float)),
                              "%s: logits after the rewind differ", what);
                    }
                    sv_same_future(s, r, V, what);
                    gemma2_session_free(r);
                }
                free(buf);
                gemma2_session_free(s);
            }
            gemma2_free(m);
        }
}

/* A one-line reason that names where the bytes came from. */
static void sv_check_err(const char *err, const char *name, const char *what)
{
    CHECK(err[0] != 0 && !strchr(err, '\n') && strstr(err, name) != NULL, "%s: error \"%s\" should be one line naming %s", what, err, name);
}

/* To and from a file: the same bytes as the buffer, restored and continued the same; the
   partial file is gone; loading with too small an n_ctx, a missing file and a folder refused. */
static void test_saved_file(void)
{
    gemma2_model *m = sv_load("tiny-gqa", GEMMA2_KV_F32, 0);
    char dir[] = "/tmp/gemma2_saved_XXXXXX", path[300], partial[320], err[256];
    int32_t ids[150];
    gemma2_session *s, *r;
    unsigned char *buf, *file;
    size_t n, fn = 0;
    int rc = 1;
    if (!m) return;
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/prompt.session", dir);
    snprintf(partial, sizeof partial, "%s.partial", path);
    sv_ids(ids, 150, gemma2_vocab_size(m), 0);
    s = gemma2_session_new(m, 200);
    CHECK(s && gemma2_eval(s, ids, 150, NULL) == 0, "eval");
    if (!s) { gemma2_free(m); return; }
    buf = sv_save(s, &n);
    /* the buffer API's edges */
    {
        size_t got = 0;
        CHECK(gemma2_session_save_buffer(s, buf, n - 1, &got) == GEMMA2_ERROR_INVALID_ARGUMENT && got == n, "cap one short: got %zu", got);
        CHECK(gemma2_session_save_buffer(NULL, buf, n, &got) == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL session");
        CHECK(gemma2_session_load_buffer(NULL, buf, n, 0, &rc, err, sizeof err) == NULL && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL model");
        CHECK(gemma2_session_load_buffer(m, NULL, n, 0, &rc, err, sizeof err) == NULL && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL buffer");
    }
    CHECK(gemma2_session_save(s, path, err, sizeof err) == 0, "save: %s", err);
    /* saving over an existing file replaces it */
    CHECK(gemma2_session_save(s, path, err, sizeof err) == 0, "save again: %s", err);
    file = (unsigned char *)g2t_read_file(path, &fn);
    CHECK(file && fn == n && !memcmp(file, buf, n), "the file (%zu bytes) differs from the buffer (%zu)", fn, n);
    CHECK(g2t_read_file(partial, NULL) == NULL, "%s left behind", partial);
    r = gemma2_session_load(m, path, 0, &rc, err, sizeof err);
    CHECK(r && rc == 0, "load: %s", err);
    if (r) sv_same_future(s, r, gemma2_vocab_size(m), "from a file");
    gemma2_session_free(r);
    r = gemma2_session_load(m, path, 149, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_CONTEXT_FULL, "n_ctx 149 < 150 saved: rc %d", rc);
    sv_check_err(err, path, "n_ctx too small");
    r = gemma2_session_load(m, path, 8193, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_UNSUPPORTED, "n_ctx past max_position_embeddings: rc %d", rc);
    r = gemma2_session_load(m, path, -1, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "n_ctx -1: rc %d", rc);
    r = gemma2_session_load(m, partial, 0, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_IO, "a missing file: rc %d", rc);
    sv_check_err(err, partial, "missing file");
    r = gemma2_session_load(m, dir, 0, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_IO, "a folder: rc %d", rc);
    /* an unwritable place: an error, and no file */
    snprintf(partial, sizeof partial, "%s/no/such/folder", dir);
    CHECK(gemma2_session_save(s, partial, err, sizeof err) == GEMMA2_ERROR_IO, "save into a missing folder");
    sv_check_err(err, partial, "unwritable");
    remove(path);
    rmdir(dir);
    free(file);
    free(buf);
    gemma2_session_free(s);
    gemma2_free(m);
}

/* A session saved with one model and loaded into another: the first difference named. */
static void test_saved_other_model(void)
{
    gemma2_model *a = sv_load("tiny-gqa", GEMMA2_KV_F32, 0), *b = sv_load("tiny-27b-style", GEMMA2_KV_F32, 0);
    gemma2_model *q8 = sv_load("tiny-gqa", GEMMA2_KV_F32, GEMMA2_WEIGHTS_Q8), *bf = sv_load("tiny-gqa", GEMMA2_KV_BF16, 0);
    gemma2_session *s, *r;
    int32_t ids[10];
    unsigned char *buf;
    size_t n;
    int rc = 1;
    char err[256];
    if (!a || !b || !q8 || !bf) { gemma2_free(a); gemma2_free(b); gemma2_free(q8); gemma2_free(bf); return; }
    sv_ids(ids, 10, 300, 0);
    s = gemma2_session_new(a, 64);
    CHECK(s && gemma2_eval(s, ids, 10, NULL) == 0, "eval");
    buf = sv_save(s, &n);
    r = gemma2_session_load_buffer(b, buf, n, 0, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_UNSUPPORTED && strstr(err, "vocab_size is 512 in the file, 300 in this model"), "another model: %d %s", rc, err);
    sv_check_err(err, "session buffer", "another model");
    r = gemma2_session_load_buffer(q8, buf, n, 0, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_UNSUPPORTED && strstr(err, "embed_tokens format"), "weights quantized at load: %d %s", rc, err);
    r = gemma2_session_load_buffer(bf, buf, n, 0, &rc, err, sizeof err);
    CHECK(!r && rc == GEMMA2_ERROR_UNSUPPORTED && strstr(err, "kv_cache"), "another KV format: %d %s", rc, err);
    /* same shapes, other weights: one value of the final norm changed (the model's own copy) */
    {
        float *fnorm = (float *)a->final_norm, keep = fnorm[3];
        fnorm[3] += 1.0f;
        r = gemma2_session_load_buffer(a, buf, n, 0, &rc, err, sizeof err);
        CHECK(!r && rc == GEMMA2_ERROR_UNSUPPORTED && strstr(err, "hash"), "other weights: %d %s", rc, err);
        fnorm[3] = keep;
        r = gemma2_session_load_buffer(a, buf, n, 0, &rc, err, sizeof err);
        CHECK(r && rc == 0, "the weights restored: %s", err);
        gemma2_session_free(r);
    }
    free(buf);
    gemma2_session_free(s);
    gemma2_free(a);
    gemma2_free(b);
    gemma2_free(q8);
    gemma2_free(bf);
}

/* Puts the checksum right after a field was changed, as a forged file would. */
static void sv_fix_checksum(unsigned char *b, size_t n)
{
    uint64_t h = gemma2__sess_hash(b, n - 8);
    int i;
    for (i = 0; i < 8; i++) b[n - 8 + (size_t)i] = (unsigned char)(h >> (8 * i));
}

static void sv_put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}

/* Every prefix of a small saved session, every byte flipped, bytes appended, and each field
   set out of range with the checksum made right: refused (NULL, an error code, one line). */
static void test_saved_corrupt(void)
{
    static const int kvs[2] = {GEMMA2_KV_F32, GEMMA2_KV_BF16};
    int k;
    for (k = 0; k < 2; k++) {
        gemma2_model *m = sv_load("tiny-27b-style", kvs[k], 0);
        gemma2_session *s, *r;
        int32_t ids[12];
        unsigned char *buf, *bad;
        size_t n, i, hdr, tok_at, lg_at, kv_at;
        int rc, refused = 0, L, V;
        char err[256];
        if (!m) continue;
        L = gemma2_model_config(m)->num_hidden_layers;
        V = gemma2_vocab_size(m);
        sv_ids(ids, 12, V, 0);
        s = gemma2_session_new(m, 32);
        CHECK(s && gemma2_eval(s, ids, 12, NULL) == 0, "eval");
        buf = sv_save(s, &n);
        bad = (unsigned char *)malloc(n + 16);
        for (i = 0; i < n; i++) {
            rc = 1;
            err[0] = 0;
            r = gemma2_session_load_buffer(m, buf, i, 0, &rc, err, sizeof err);
            if (!r && rc == GEMMA2_ERROR_FORMAT && err[0] && !strchr(err, '\n')) refused++;
            else CHECK(0, "prefix of %zu bytes: %s, rc %d, \"%s\"", i, r ? "loaded" : "refused", rc, err);
            gemma2_session_free(r);
        }
        CHECK(refused == (int)n, "%d of %zu prefixes refused", refused, n);
        for (i = 0, refused = 0; i < n; i++) {
            memcpy(bad, buf, n);
            bad[i] ^= (unsigned char)(1u << (i % 8));
            rc = 1;
            err[0] = 0;
            r = gemma2_session_load_buffer(m, bad, n, 0, &rc, err, sizeof err);
            if (!r && rc < 0 && err[0] && !strchr(err, '\n')) refused++;
            else CHECK(0, "byte %zu flipped: %s, rc %d, \"%s\"", i, r ? "loaded" : "refused", rc, err);
            gemma2_session_free(r);
        }
        CHECK(refused == (int)n, "%d of %zu flips refused", refused, n);
        memcpy(bad, buf, n);
        memset(bad + n, 0, 16);
        r = gemma2_session_load_buffer(m, bad, n + 1, 0, &rc, err, sizeof err);
        CHECK(!r && rc == GEMMA2_ERROR_FORMAT && strstr(err, "extra bytes"), "a byte appended: %d %s", rc, err);
        r = gemma2_session_load_buffer(m, bad, n + 8, 0, &rc, err, sizeof err);
        CHECK(!r && rc == GEMMA2_ERROR_FORMAT, "8 bytes appended: %d %s", rc, err);

        /* fields out of range behind a right checksum: each refused naming the field */
        hdr = 16 + (size_t)4 * (size_t)(15 + 3 * (1 + 7 * L)) + 8; /* n_ctx, pos, has_logits follow */
        tok_at = hdr + 12;
        lg_at = tok_at + 12 * 4;
        kv_at = lg_at + (size_t)V * 4;
#define SV_FORGED(edit, expect_rc, expect_text)                                                                        \
        do {                                                                                                           \
            memcpy(bad, buf, n);                                                                                       \
            edit;                                                                                                      \
            sv_fix_checksum(bad, n);                                                                                   \
            r = gemma2_session_load_buffer(m, bad, n, 0, &rc, err, sizeof err);                                        \
            CHECK(!r && rc == (expect_rc) && strstr(err, expect_text), "%s: rc %d, \"%s\"", #edit, rc, err);           \
            sv_check_err(err, "session buffer", #edit);                                                                \
            gemma2_session_free(r);                                                                                    \
        } while (0)
        SV_FORGED(sv_put_u32(bad + 8, 2), GEMMA2_ERROR_UNSUPPORTED, "version 2");
        SV_FORGED(sv_put_u32(bad + 12, 7), GEMMA2_ERROR_FORMAT, "kv format 7");
        SV_FORGED(sv_put_u32(bad + hdr, 0), GEMMA2_ERROR_FORMAT, "n_ctx 0");
        SV_FORGED(sv_put_u32(bad + hdr, 8193), GEMMA2_ERROR_FORMAT, "n_ctx 8193");
        SV_FORGED(sv_put_u32(bad + hdr, 11), GEMMA2_ERROR_FORMAT, "position 12 is past its n_ctx 11");
        SV_FORGED(sv_put_u32(bad + hdr + 4, 13), GEMMA2_ERROR_FORMAT, "");
        SV_FORGED(sv_put_u32(bad + hdr + 4, 0xffffffffu), GEMMA2_ERROR_FORMAT, "position");
        SV_FORGED(sv_put_u32(bad + hdr + 8, 2), GEMMA2_ERROR_FORMAT, "has_logits is 2");
        SV_FORGED(sv_put_u32(bad + tok_at + 4 * 5, (uint32_t)V), GEMMA2_ERROR_FORMAT, "token 5 is 300");
        SV_FORGED(sv_put_u32(bad + tok_at + 4 * 5, 0xffffffffu), GEMMA2_ERROR_FORMAT, "token 5 is -1");
        SV_FORGED(sv_put_u32(bad + lg_at + 4 * 7, 0x7fc00000u), GEMMA2_ERROR_FORMAT, "logit 7 is not finite");
        SV_FORGED(sv_put_u32(bad + lg_at + 4 * 7, 0x7f800000u), GEMMA2_ERROR_FORMAT, "logit 7 is not finite");
        SV_FORGED(sv_put_u32(bad + kv_at, 13), GEMMA2_ERROR_FORMAT, "layer 0's first position 13");
        SV_FORGED(sv_put_u32(bad + kv_at, 3), GEMMA2_ERROR_FORMAT, "layer 0 starts at position 3");
#undef SV_FORGED
        free(bad);
        free(buf);
        gemma2_session_free(s);
        gemma2_free(m);
    }
}


/* The ids the CLI evaluates for a one-turn chat prompt (its cli_prompt_ids). */
static int sv_chat_ids(gemma2_model *m, const char *text, int32_t *ids, int cap)
{
    gemma2_message msg;
    msg.role = "user";
    msg.content = text;
    return gemma2_chat_tokenize(m, &msg, 1, 1, ids, cap);
}

/* The CLI's --prompt-cache (in-process, as the other CLI tests): a first run saves, a second
   reuses the whole prompt, a prompt sharing a prefix reuses that prefix; the text is always the
   text without a cache. A damaged file, or one of another KV type, is a note and is replaced;
   -i with it is an error. */
static void test_saved_cli_prompt_cache(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, rc;
    char want[4096], want2[8192], out[8192], err[8192], model[512], tok[512], n16[8], dir[] = "/tmp/gemma2_pcache_XXXXXX", cache[300];
    const char *longer = "Write a hello world program in C, please";
    FILE *f;
    int32_t i1[64], i2[64];
    int n1, n2, shared = 0;
    char say[6][64];
    if (!m || !gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    gen_detok(m, greedy, ng, want, sizeof want);
    if (!want[0] || want[strlen(want) - 1] != '\n') strcat(want, "\n");
    /* what each run should report reusing: the prompts' ids and their common prefix */
    n1 = sv_chat_ids(m, "Write a hello world program", i1, 64);
    n2 = sv_chat_ids(m, longer, i2, 64);
    CHECK(n1 == np && n2 > n1 && n2 <= 64, "prompt ids: %d, %d", n1, n2);
    while (shared < n1 && shared < n2 && i1[shared] == i2[shared]) shared++;
    CHECK(shared > 1 && shared < n1, "the prompts share %d ids", shared);
    snprintf(say[0], 64, "0 of %d prompt tokens reused", n1);
    snprintf(say[1], 64, "%d of %d prompt tokens reused", n1, n1);
    snprintf(say[2], 64, "%d of %d prompt tokens reused", shared, n2);
    snprintf(say[3], 64, "%d of %d prompt tokens reused", shared, n1);
    snprintf(say[4], 64, "0 of %d prompt tokens reused", n2);
    snprintf(say[5], 64, "%d of %d prompt tokens reused", n2, n2);
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    snprintf(n16, sizeof n16, "%d", ng);
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(cache, sizeof cache, "%s/prompt.cache", dir);
    {
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--prompt-cache", cache, "-p", "Write a hello world program"};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-p", longer};
        const char *c[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--prompt-cache", cache, "-p", longer};
        const char *d[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--prompt-cache", cache, "-ctk", "bf16", "-p", longer};
        const char *e[] = {"-m", model, "--tokenizer", tok, "--prompt-cache", cache, "-i"};
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, say[0]), "first run: rc %d out [%s] err [%s]", rc, out, err);
        {
            void *written = g2t_read_file(cache, NULL);
            CHECK(written != NULL, "no cache file written");
            free(written);
        }
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, say[1]), "second run: rc %d out [%s] err [%s]", rc, out, err);
        /* a longer prompt, sharing <bos>, the turn's start and "Write a hello world program" */
        rc = gen_cli(b, 10, NULL, want2, sizeof want2, err, sizeof err);
        CHECK(rc == 0 && want2[0], "without a cache: rc %d err [%s]", rc, err);
        rc = gen_cli(c, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want2) && strstr(err, say[2]), "shared prefix: rc %d out [%s] want [%s] err [%s]", rc, out,
              want2, err);
        /* the first prompt again: the file now holds the longer one */
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, say[3]), "back: rc %d out [%s] err [%s]", rc, out, err);
        /* another KV type: a note, evaluated afresh, and the file replaced */
        rc = gen_cli(d, 14, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0] && strstr(err, "kv_cache") && strstr(err, say[4]), "bf16: rc %d err [%s]", rc, err);
        rc = gen_cli(d, 14, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0] && strstr(err, say[5]), "bf16 again: rc %d err [%s]", rc, err);
        /* a damaged file */
        f = fopen(cache, "wb");
        if (f) { fputs("GEM2SESS and then nonsense", f); fclose(f); }
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, "gemma2: note: --prompt-cache: ") && strstr(err, cache) &&
                  strstr(err, say[0]), "damaged: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(e, 7, "hi\n", out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "--prompt-cache is for one prompt"), "-i: rc %d err [%s]", rc, err);
    }
    remove(cache);
    rmdir(dir);
}

void suite_saved(void)
{
    g2t_run("saved/continue", test_saved_continue);
    g2t_run("saved/file", test_saved_file);
    g2t_run("saved/other_model", test_saved_other_model);
    g2t_run("saved/corrupt", test_saved_corrupt);
    g2t_run("saved/cli_prompt_cache", test_saved_cli_prompt_cache);
    gemma2_free(gen_model); /* the generate suite's shared model, loaded again by gen_get above */
    gen_model = NULL;
}
