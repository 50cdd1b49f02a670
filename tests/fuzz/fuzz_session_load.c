/* libFuzzer target: gemma2_session_load_buffer (saved sessions) against the tiny model, with max_position_embeddings
   raised to 512 so that its sliding-window layer keeps a ring (window 4 + 127 positions) and saved sessions can hold
   only part of it. The input is byte 0, then the saved bytes: bit 0 loads into the model with a bf16 KV cache,
   bits 1-2 pick n_ctx (0: as saved, else 64, 200 or 512), bit 3 makes the checksum in the last 8 bytes right
   first, so that mutations of the fields reach everything after it. A load must fail with a one-line reason or
   give a session that evaluates, rewinds, and saves to bytes that load again and save the same. */
#include "fuzz_common.h"
#include <sys/stat.h>

static gemma2_model *fz_m[2]; /* [kv bf16] */

/* The checksum as section 1.3 describes it (written again here: the target sees only the public API). */
static uint64_t fz_sess_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull, w;
    size_t i, k;
    for (i = 0; i < n; i += 8) {
        for (w = 0, k = 0; k < 8 && i + k < n; k++) w |= (uint64_t)p[i + k] << (8 * k);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    h = (h ^ (uint64_t)n) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

/* A saved session of the model m (pos tokens evaluated, then rewound to back when back >= 0), malloc'd. */
static uint8_t *fz_saved(gemma2_model *m, int pos, int back, size_t *n)
{
    gemma2_session *s = gemma2_session_new(m, 512);
    int32_t ids[300];
    uint8_t *b;
    int i;
    FZ_CHECK(s != NULL && pos <= 300);
    for (i = 0; i < pos; i++) ids[i] = (int32_t)((i * 7 + 2) % 32);
    FZ_CHECK(gemma2_eval(s, ids, pos, NULL) == 0);
    if (back >= 0) FZ_CHECK(gemma2_session_rewind(s, back) == 0);
    FZ_CHECK(gemma2_session_save_buffer(s, NULL, 0, n) == 0);
    b = (uint8_t *)malloc(*n);
    FZ_CHECK(b && gemma2_session_save_buffer(s, b, *n, NULL) == 0);
    gemma2_session_free(s);
    return b;
}

/* GEMMA2_FUZZ_WRITE_SEEDS=DIR: writes this target's seeds into DIR/session_load/ and exits (make fuzz-seeds). */
static void fz_write_seeds(const char *dir)
{
    static const struct { const char *name; int kv, pos, back, sel; } seeds[] = {
        {"empty", 0, 0, -1, 0x00}, {"short", 0, 5, -1, 0x00}, {"short-bf16-ctx64", 1, 5, -1, 0x03},
        {"ring", 0, 200, -1, 0x00}, {"ring-bf16-ctx200", 1, 200, -1, 0x05}, {"ring-rewound", 0, 200, 150, 0x00}, {"ring-rewound-fixsum-ctx512", 0, 200, 150, 0x0e},
    };
    char sub[1024];
    size_t k, n;
    snprintf(sub, sizeof sub, "%s/session_load", dir);
    mkdir(dir, 0777);
    mkdir(sub, 0777);
    for (k = 0; k < sizeof seeds / sizeof seeds[0]; k++) {
        uint8_t *b = fz_saved(fz_m[seeds[k].kv], seeds[k].pos, seeds[k].back, &n), *in = (uint8_t *)malloc(n + 1);
        FZ_CHECK(in != NULL);
        in[0] = (uint8_t)seeds[k].sel;
        memcpy(in + 1, b, n);
        fz_write_in(sub, seeds[k].name, in, n + 1);
        free(in);
        free(b);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_buf c = {0};
    char err[256], *at;
    const char *seeds = getenv("GEMMA2_FUZZ_WRITE_SEEDS");
    gemma2_options o;
    int kv;
    (void)argc; (void)argv;
    fz_config_json(&c, &fz_tiny);
    fz_add(&c, "", 1);
    at = strstr(c.p, "\"max_position_embeddings\": 64,");
    FZ_CHECK(at != NULL);
    memcpy(at, "\"max_position_embeddings\":512,", 30);
    fz_write("config.json", c.p, strlen(c.p));
    free(c.p);
    fz_weights_write(fz_tmpdir(), &fz_tiny, 0, 1);
    for (kv = 0; kv < 2; kv++) {
        memset(&o, 0, sizeof o);
        o.n_threads = 1;
        o.no_tokenizer = 1;
        o.kv_cache = kv ? GEMMA2_KV_BF16 : GEMMA2_KV_F32;
        fz_m[kv] = gemma2_load(fz_tmpdir(), &o, err, sizeof err);
        if (!fz_m[kv]) { fprintf(stderr, "tiny model: %s\n", err); abort(); }
    }
    if (seeds) { fz_write_seeds(seeds); exit(0); }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int ctx[4] = {0, 64, 200, 512};
    gemma2_model *m;
    gemma2_session *s, *s2;
    uint8_t *buf, *a = NULL, *b = NULL;
    size_t n, na = 0, nb = 0;
    char err[256];
    int rc = 1, pos, k;
    int32_t ids[3] = {2, 7, 9};
    if (size < 1) return 0;
    m = fz_m[data[0] & 1];
    n = size - 1;
    buf = (uint8_t *)malloc(n ? n : 1); /* its own allocation: ASan sees any read past the end */
    memcpy(buf, data + 1, n);
    if ((data[0] & 8) && n >= 8) {
        uint64_t h = fz_sess_hash(buf, n - 8);
        for (k = 0; k < 8; k++) buf[n - 8 + (size_t)k] = (uint8_t)(h >> (8 * k));
    }
    err[0] = 0;
    s = gemma2_session_load_buffer(m, buf, n, ctx[(data[0] >> 1) & 3], &rc, err, sizeof err);
    free(buf);
    if (!s) {
        FZ_CHECK(rc < 0);
        fz_check_err(err);
        return 0;
    }
    FZ_CHECK(rc == 0);
    pos = gemma2_session_pos(s);
    FZ_CHECK(pos >= 0 && pos <= gemma2_session_n_ctx(s));
    /* saved again, it loads again and saves the same bytes */
    FZ_CHECK(gemma2_session_save_buffer(s, NULL, 0, &na) == 0 && (a = (uint8_t *)malloc(na)) != NULL);
    FZ_CHECK(gemma2_session_save_buffer(s, a, na, NULL) == 0);
    s2 = gemma2_session_load_buffer(m, a, na, 0, &rc, err, sizeof err);
    FZ_CHECK(s2 != NULL);
    FZ_CHECK(gemma2_session_save_buffer(s2, NULL, 0, &nb) == 0 && nb == na && (b = (uint8_t *)malloc(nb)) != NULL);
    FZ_CHECK(gemma2_session_save_buffer(s2, b, nb, NULL) == 0 && !memcmp(a, b, na));
    gemma2_session_free(s2);
    free(a);
    free(b);
    /* it runs: a few tokens where they fit (the fuzzed cache and logits may make them non-finite: NUMERIC), rewinds */
    if (gemma2_session_n_ctx(s) - pos >= 3) {
        rc = gemma2_eval(s, ids, 3, NULL);
        FZ_CHECK(rc == 0 || rc == GEMMA2_ERROR_NUMERIC);
    }
    rc = gemma2_session_rewind(s, gemma2_session_pos(s) / 2);
    FZ_CHECK(rc == 0 || rc == GEMMA2_ERROR_NUMERIC);
    gemma2_session_free(s);
    return 0;
}
