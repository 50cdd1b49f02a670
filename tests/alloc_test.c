/* Allocation failures: every allocation the library makes goes through GEMMA2_MALLOC /
   REALLOC / FREE, defined here as a counting allocator that can fail the k-th one. For each
   operation (loading, sessions, evaluation, saved sessions, batches, generation and generators, chat, scoring,
   the tokenizer, the sampler) the operation runs once to count its allocations, then again for
   every k with the k-th allocation failing. Each run must return an error or exactly the result of the run
   without failures (never success with garbage), must not crash (built with ASan + UBSan), and
   must leave no allocation live once everything is freed.

   Usage: alloc_test [filter] (from the repository root; GEMMA2_TEST_DATA overrides tests/data) */
#if !defined(_WIN32) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <limits.h>

#include "alloc_counting.h"
static long at_armed;        /* allocations attempted between at_arm and at_disarm */
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"

static const char *at_data = "tests/data";
static int at_errors;

static void at_arm(long k)
{
    __atomic_store_n(&at_count, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&at_failed, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&at_fail_at, k, __ATOMIC_SEQ_CST);
}

static void at_disarm(void)
{
    __atomic_store_n(&at_fail_at, 0, __ATOMIC_SEQ_CST);
    at_armed = __atomic_load_n(&at_count, __ATOMIC_SEQ_CST);
}

static const char *at_path(const char *rel)
{
    static char buf[4][1024];
    static int i;
    char *p = buf[i++ & 3];
    snprintf(p, 1024, "%s/%s", at_data, rel);
    return p;
}

#define AT_CHECK(cond, ...)                                                    \
    do {                                                                       \
        if (!(cond)) {                                                         \
            at_errors++;                                                       \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
        }                                                                      \
    } while (0)

/* An operation: fills out (a digest of what it computed: ids, text, logits) and returns 0, or
   returns a negative error. `armed` brackets the part whose allocations are failed; setup
   before it and checks after it run with every allocation succeeding. */
typedef struct at_out {
    unsigned char bytes[4096];
    size_t n;
} at_out;

static void at_put(at_out *o, const void *p, size_t n)
{
    if (n > sizeof o->bytes - o->n) n = sizeof o->bytes - o->n;
    memcpy(o->bytes + o->n, p, n);
    o->n += n;
}

typedef int (*at_op)(long k, at_out *out);

/* Runs op without failures (the reference), then with allocation k failing for every k up to
   the count of the reference run. */
static void at_sweep(const char *name, at_op op)
{
    at_out ref, got;
    long n, k, live0 = at_live;
    int rc;
    memset(&ref, 0, sizeof ref);
    rc = op(0, &ref);
    n = at_armed;
    AT_CHECK(rc == 0, "%s: fails without allocation failures (%d)", name, rc);
    AT_CHECK(at_live == live0, "%s: %ld allocations left live", name, at_live - live0);
    if (rc != 0) return;
    for (k = 1; k <= n; k++) {
        memset(&got, 0, sizeof got);
        rc = op(k, &got);
        if (rc == 0)
            AT_CHECK(got.n == ref.n && !memcmp(got.bytes, ref.bytes, ref.n), "%s: allocation %ld failed, yet success with a different result", name, k);
        AT_CHECK(rc <= 0, "%s: allocation %ld failed: return %d", name, k, rc);
        AT_CHECK(at_live == live0, "%s: allocation %ld failed: %ld allocations left live", name, k, at_live - live0);
    }
    fprintf(stderr, "ok     %s (%ld allocations)\n", name, n);
}

/* ---- fixtures, loaded without failures */

static gemma2_model *at_load(const char *name, int preload, int n_threads, int kv_cache, const char *tokenizer)
{
    gemma2_options o;
    char err[256];
    gemma2_model *m;
    memset(&o, 0, sizeof o);
    o.preload = preload;
    o.n_threads = n_threads;
    o.kv_cache = kv_cache;
    if (tokenizer) o.tokenizer_path = at_path(tokenizer);
    else o.no_tokenizer = 1;
    m = gemma2_load(at_path(name), &o, err, sizeof err);
    if (!m && !at_fail_at) fprintf(stderr, "  load %s: %s\n", name, err);
    return m;
}

static const int32_t at_ids[6] = {2, 184, 88, 249, 16, 83}; /* valid in every fixture (V >= 256) */

/* A digest of a model: the logits of a short evaluation (a model that loaded "successfully"
   with a weight missing would differ). */
static int at_model_digest(gemma2_model *m, at_out *out)
{
    gemma2_session *s = gemma2_session_new(m, 8);
    int rc = s ? gemma2_eval(s, at_ids, 6, NULL) : -1;
    if (rc == 0) at_put(out, gemma2_logits(s), 64 * sizeof(float));
    gemma2_session_free(s);
    return rc;
}

/* ---- loading */

static int at_load_op(const char *name, int preload, long k, at_out *out)
{
    gemma2_model *m;
    int rc;
    at_arm(k);
    m = at_load(name, preload, 1, GEMMA2_KV_F32, NULL);
    at_disarm();
    if (!m) return -1;
    rc = at_model_digest(m, out);
    gemma2_free(m);
    return rc;
}
static int at_op_load_mapped(long k, at_out *out) { return at_load_op("models/tiny-gqa", 0, k, out); }
static int at_op_load_read(long k, at_out *out) { return at_load_op("models/tiny-gqa", 1, k, out); }
static int at_op_load_sharded(long k, at_out *out) { return at_load_op("models/tiny-mha-f32-sharded", 0, k, out); }

static int at_op_load_q8(long k, at_out *out)
{
    gemma2_options o;
    char err[256];
    gemma2_model *m;
    int rc;
    memset(&o, 0, sizeof o);
    o.n_threads = 2;
    o.weights = GEMMA2_WEIGHTS_Q8;
    o.no_tokenizer = 1;
    at_arm(k);
    m = gemma2_load(at_path("models/tiny-27b-style"), &o, err, sizeof err);
    at_disarm();
    if (!m) return -1;
    rc = at_model_digest(m, out);
    gemma2_free(m);
    return rc;
}

static int at_op_load_tokenizer(long k, at_out *out)
{
    char err[256];
    gemma2_model *m;
    int32_t ids[32];
    int n;
    at_arm(k);
    m = gemma2_load_tokenizer(at_path("tokenizer/tokenizer.model"), err, sizeof err);
    at_disarm();
    if (!m) return -1;
    n = gemma2_tokenize(m, "Hello, world! 你好", 19, ids, 32, GEMMA2_TOKENIZE_ADD_BOS);
    if (n > 0) at_put(out, ids, (size_t)n * sizeof(int32_t));
    gemma2_free(m);
    return n > 0 ? 0 : -1;
}

/* A session freed after its model (ASan sees any read of the freed model). */
static int at_op_free_model_first(long k, at_out *out)
{
    gemma2_model *m;
    gemma2_session *s = NULL;
    int rc = -1;
    at_arm(k);
    m = at_load("models/tiny-27b-style", 0, 2, GEMMA2_KV_BF16, NULL);
    if (m) s = gemma2_session_new(m, 8);
    at_disarm();
    if (s) rc = gemma2_eval(s, at_ids, 6, NULL);
    if (rc == 0) at_put(out, gemma2_logits(s), 64 * sizeof(float));
    gemma2_free(m);
    gemma2_session_free(s);
    return rc;
}

/* ---- sessions and evaluation (the model is loaded once, without failures) */

static gemma2_model *at_gqa[2][2]; /* [n_threads - 1][kv bf16] */

static int at_session_op(int nt, int kv, long k, at_out *out)
{
    gemma2_session *s;
    int rc;
    at_arm(k);
    s = gemma2_session_new_ex(at_gqa[nt - 1][kv], 16, &rc);
    at_disarm();
    /* the reason must be the allocation, not a misread argument */
    AT_CHECK(s ? rc == 0 : rc == GEMMA2_ERROR_OUT_OF_MEMORY, "session_new_ex: rc %d", rc);
    if (!s) return -1;
    rc = gemma2_eval(s, at_ids, 6, NULL);
    if (rc == 0) at_put(out, gemma2_logits(s), 64 * sizeof(float));
    gemma2_session_free(s);
    return rc;
}
static int at_op_session_1(long k, at_out *out) { return at_session_op(1, 0, k, out); }
static int at_op_session_2(long k, at_out *out) { return at_session_op(2, 0, k, out); }
static int at_op_session_bf16(long k, at_out *out) { return at_session_op(1, 1, k, out); }
static int at_op_session_bf16_2(long k, at_out *out) { return at_session_op(2, 1, k, out); }

static int at_op_eval(long k, at_out *out)
{
    gemma2_session *s = gemma2_session_new(at_gqa[1][0], 16);
    float rows[6 * 512];
    int rc;
    if (!s) return -2;
    at_arm(k);
    rc = gemma2_eval(s, at_ids, 6, rows);
    if (rc == 0) rc = gemma2_session_rewind(s, 3);
    if (rc == 0) rc = gemma2_eval(s, at_ids + 3, 3, NULL);
    at_disarm();
    if (rc == 0) {
        at_put(out, rows, 64 * sizeof(float));
        at_put(out, gemma2_logits(s), 64 * sizeof(float));
    }
    gemma2_session_free(s);
    return rc;
}

/* ---- saved sessions: loading from a buffer and from a file (saved once, without failures) */

static int at_session_load_op(int kv, int from_file, long k, at_out *out)
{
    gemma2_model *m = at_gqa[0][kv];
    gemma2_session *s = gemma2_session_new(m, 200), *r;
    static const char path[] = "tests/alloc_test_session.tmp";
    int32_t ids[160];
    unsigned char *buf = NULL;
    size_t n = 0;
    char err[256];
    int rc, i;
    if (!s) return -2;
    for (i = 0; i < 160; i++) ids[i] = at_ids[i % 6];
    /* 160 tokens: past the ring of the sliding-window layers (window 8 + 127) */
    rc = gemma2_eval(s, ids, 160, NULL);
    if (rc == 0) rc = gemma2_session_save_buffer(s, NULL, 0, &n);
    if (rc == 0 && !(buf = (unsigned char *)malloc(n))) rc = -2;
    if (rc == 0) rc = gemma2_session_save_buffer(s, buf, n, NULL);
    if (rc) { gemma2_session_free(s); free(buf); return rc; }
    at_arm(k);
    /* the file's save is swept too (its temporary name) */
    if (from_file && (rc = gemma2_session_save(s, path, err, sizeof err)) != 0) {
        at_disarm();
        AT_CHECK(rc == GEMMA2_ERROR_OUT_OF_MEMORY, "session save: rc %d (%s)", rc, err);
        gemma2_session_free(s);
        free(buf);
        return rc;
    }
    r = from_file ? gemma2_session_load(m, path, 0, &rc, err, sizeof err) : gemma2_session_load_buffer(m, buf, n, 0, &rc, err, sizeof err);
    at_disarm();
    gemma2_session_free(s);
    AT_CHECK(r ? rc == 0 : rc == GEMMA2_ERROR_OUT_OF_MEMORY, "session load: rc %d (%s)", rc, err);
    if (from_file) remove(path);
    free(buf);
    if (!r) return rc;
    rc = gemma2_eval(r, at_ids, 2, NULL);
    if (rc == 0) at_put(out, gemma2_logits(r), 64 * sizeof(float));
    gemma2_session_free(r);
    return rc;
}
static int at_op_session_load(long k, at_out *out) { return at_session_load_op(0, 0, k, out); }
static int at_op_session_load_bf16(long k, at_out *out) { return at_session_load_op(1, 0, k, out); }
static int at_op_session_load_file(long k, at_out *out) { return at_session_load_op(0, 1, k, out); }
/* A batch made and run on two sessions (made before, without failures): its first call grows
   the attention scratch; a failed call must leave both sessions where they were. */
static int at_batch_op(gemma2_model *m, int nt, long k, at_out *out)
{
    gemma2_session *s[2] = {gemma2_session_new(m, 16), gemma2_session_new(m, 16)};
    gemma2_batch *b;
    const int32_t *ip[2] = {at_ids, at_ids + 2};
    int n[2] = {3, 1}, rc = -2;
    if (!s[0] || !s[1]) { gemma2_session_free(s[0]); gemma2_session_free(s[1]); return -2; }
    at_arm(k);
    b = gemma2_batch_new(m, 8, nt, &rc);
    AT_CHECK(b ? rc == 0 : rc == GEMMA2_ERROR_OUT_OF_MEMORY, "batch_new: rc %d", rc);
    if (b) {
        rc = gemma2_batch_eval(b, s, ip, n, 2, NULL, NULL);
        AT_CHECK(rc == 0 || (rc == GEMMA2_ERROR_OUT_OF_MEMORY && gemma2_session_pos(s[0]) == 0 && gemma2_session_pos(s[1]) == 0),
                 "batch_eval: rc %d, positions %d %d", rc, gemma2_session_pos(s[0]), gemma2_session_pos(s[1]));
        n[0] = 1; n[1] = 2;
        if (rc == 0) rc = gemma2_batch_eval(b, s, ip, n, 2, NULL, NULL);
    }
    at_disarm();
    if (rc == 0) {
        at_put(out, gemma2_logits(s[0]), 64 * sizeof(float));
        at_put(out, gemma2_logits(s[1]), 64 * sizeof(float));
    }
    gemma2_batch_free(b);
    gemma2_session_free(s[0]);
    gemma2_session_free(s[1]);
    return rc;
}
static int at_op_batch(long k, at_out *out) { return at_batch_op(at_gqa[1][0], 2, k, out); }
static int at_op_batch_bf16(long k, at_out *out) { return at_batch_op(at_gqa[0][1], 1, k, out); }

/* ---- with a tokenizer: tiny-realvocab and the real Gemma tokenizer */

static gemma2_model *at_rv, *at_rv_json; /* with tokenizer.model; with tokenizer.json */

static int at_collect(void *user, int32_t token, const char *text, size_t len)
{
    at_out *o = (at_out *)user;
    at_put(o, &token, sizeof token);
    at_put(o, text, len);
    return 0;
}

static gemma2_generate_params at_gen_params(at_out *out)
{
    gemma2_generate_params p;
    static const char *stops[1] = {"zzz"};
    memset(&p, 0, sizeof p);
    p.sampler.temperature = 1.0f;
    p.sampler.top_k = 40;
    p.sampler.top_p = 0.9f;
    p.sampler.repetition_penalty = 1.1f;
    p.sampler.seed = 7;
    p.max_new_tokens = 6;
    p.stop_strings = stops;
    p.n_stop_strings = 1;
    p.on_token = at_collect;
    p.user = out;
    return p;
}

static int at_op_generate(long k, at_out *out)
{
    gemma2_session *s = gemma2_session_new(at_rv, 64);
    gemma2_generate_params p = at_gen_params(out);
    gemma2_generate_result r;
    int32_t prompt[4] = {2, 106, 1645, 108};
    int rc;
    if (!s) return -2;
    at_arm(k);
    rc = gemma2_generate(s, prompt, 4, &p, &r);
    at_disarm();
    if (rc == 0) at_put(out, &r, sizeof r);
    gemma2_session_free(s);
    return rc;
}

/* Two generators through one batch (made with them). A step that fails for memory changes
   nothing, so it is retried: the streams must come out as without the failure. */
static int at_op_generators(long k, at_out *out)
{
    gemma2_session *s[2] = {gemma2_session_new(at_rv, 64), gemma2_session_new(at_rv, 64)};
    gemma2_generate_params p = at_gen_params(out);
    gemma2_generator *g[2] = {NULL, NULL};
    gemma2_generate_result r;
    gemma2_batch *b;
    int32_t prompt[4] = {2, 106, 1645, 108};
    int rc = 0, i, retried = 0;
    if (!s[0] || !s[1]) { gemma2_session_free(s[0]); gemma2_session_free(s[1]); return -2; }
    at_arm(k);
    b = gemma2_batch_new(at_rv, 16, 1, &rc);
    for (i = 0; i < 2 && b; i++) {
        g[i] = gemma2_generator_new(s[i], prompt + i, 4 - i, &p, &rc);
        AT_CHECK(g[i] ? rc == 0 : rc == GEMMA2_ERROR_OUT_OF_MEMORY, "generator_new: rc %d", rc);
        if (!g[i]) break;
    }
    while (b && g[0] && g[1]) {
        int n = gemma2_generate_step(b, g, 2);
        if (n == GEMMA2_ERROR_OUT_OF_MEMORY && !retried) {
            AT_CHECK(gemma2_session_pos(s[0]) <= 4 && gemma2_session_pos(s[1]) <= 3, "a failed step moved a session");
            retried = 1;
            continue;
        }
        AT_CHECK(n >= 0, "generate_step: %d", n);
        if (n <= 0) { rc = n; break; }
    }
    for (i = 0; i < 2 && rc == 0 && g[1]; i++) {
        int d = gemma2_generator_done(g[i], &r);
        AT_CHECK(d == 1 || d == GEMMA2_ERROR_OUT_OF_MEMORY, "generator %d: done %d", i, d);
        if (d < 0) rc = d;
        else at_put(out, &r, sizeof r);
    }
    at_disarm();
    gemma2_generator_free(g[0]);
    gemma2_generator_free(g[1]);
    gemma2_batch_free(b);
    gemma2_session_free(s[0]);
    gemma2_session_free(s[1]);
    return rc;
}

static int at_op_score(long k, at_out *out)
{
    gemma2_session *s = gemma2_session_new(at_rv, 64);
    int32_t prompt[4] = {2, 106, 1645, 108}, cont[5] = {5559, 476, 25612, 2134, 2733};
    float lp[5];
    int greedy[5], rc;
    if (!s) return -2;
    at_arm(k);
    rc = gemma2_score(s, prompt, 4, cont, 5, lp, greedy);
    at_disarm();
    if (rc == 0) { at_put(out, lp, sizeof lp); at_put(out, greedy, sizeof greedy); }
    else if (gemma2_session_pos(s) != 0) rc = 1; /* a failed score rewinds to where it began */
    gemma2_session_free(s);
    return rc;
}

/* The whole conversation under failures: new, say, say, regenerate, undo, say. */
static int at_op_chat(long k, at_out *out)
{
    gemma2_session *s = gemma2_session_new(at_rv, 256);
    gemma2_generate_params p = at_gen_params(out);
    gemma2_chat *c;
    int rc;
    if (!s) return -2;
    at_arm(k);
    c = gemma2_chat_new_ex(s, "Be brief.", &rc);
    AT_CHECK(c ? rc == 0 : rc == GEMMA2_ERROR_OUT_OF_MEMORY, "chat_new_ex: rc %d", rc);
    rc = c ? 0 : -1;
    if (rc == 0) rc = gemma2_chat_say(c, "Hello", &p, NULL);
    if (rc == 0) rc = gemma2_chat_say(c, "Again", &p, NULL);
    p.sampler.seed = 8;
    if (rc == 0) rc = gemma2_chat_regenerate(c, &p, NULL);
    if (rc == 0) rc = gemma2_chat_undo(c);
    if (rc == 0) rc = gemma2_chat_say(c, "Bye", &p, NULL);
    at_disarm();
    if (rc == 0) {
        int n = gemma2_chat_turns(c), pos = gemma2_session_pos(s);
        at_put(out, &n, sizeof n);
        at_put(out, gemma2_session_tokens(s), (size_t)pos * sizeof(int32_t));
    }
    gemma2_chat_free(c);
    gemma2_session_free(s);
    return rc;
}

static int at_tokenize_op(gemma2_model *m, long k, at_out *out)
{
    static const char text[] = "<start_of_turn>user\nWrite   a hello world program in C.\n\t\xe4\xbd\xa0\xe5\xa5\xbd \xff<end_of_turn>";
    int32_t ids[64];
    char back[256];
    int n, nb;
    gemma2_message msgs[2];
    at_arm(k);
    n = gemma2_tokenize(m, text, sizeof text - 1, ids, 64, GEMMA2_TOKENIZE_ADD_BOS | GEMMA2_TOKENIZE_SPECIAL);
    nb = n > 0 ? gemma2_detokenize(m, ids, n, back, sizeof back, GEMMA2_DETOKENIZE_UTF8) : -1;
    at_disarm();
    if (n < 0 || nb < 0) return n < 0 ? n : nb;
    at_put(out, ids, (size_t)GEMMA2__MIN(n, 64) * sizeof(int32_t));
    at_put(out, back, (size_t)GEMMA2__MIN(nb, 256));
    msgs[0].role = "user"; msgs[0].content = "Hi there";
    msgs[1].role = "model"; msgs[1].content = "Hello!";
    at_arm(k);
    n = gemma2_chat_tokenize(m, msgs, 2, 1, ids, 64);
    at_disarm();
    if (n < 0) return n;
    at_put(out, ids, (size_t)GEMMA2__MIN(n, 64) * sizeof(int32_t));
    return 0;
}

static int at_op_tokenize(long k, at_out *out) { return at_tokenize_op(at_rv, k, out); }
static int at_op_tokenize_json(long k, at_out *out) { return at_tokenize_op(at_rv_json, k, out); }

static int at_op_sampler(long k, at_out *out)
{
    static float logits[1000];
    gemma2_sampler_params p;
    gemma2_logit_bias bias[2] = {{3, -1e30f}, {7, 2.0f}};
    int32_t hist[5] = {1, 2, 3, 7, 7};
    gemma2_sampler *smp;
    int i, id = 0, rc;
    for (i = 0; i < 1000; i++) logits[i] = (float)((i * 37) % 101) / 10.0f;
    memset(&p, 0, sizeof p);
    p.temperature = 0.8f;
    p.top_k = 50;
    p.top_p = 0.9f;
    p.min_p = 0.01f;
    p.repetition_penalty = 1.2f;
    p.frequency_penalty = 0.1f;
    p.presence_penalty = 0.1f;
    p.logit_bias = bias;
    p.n_logit_bias = 2;
    p.seed = 11;
    at_arm(k);
    smp = gemma2_sampler_new_ex(1000, &p, &rc);
    AT_CHECK(smp ? rc == 0 : rc == GEMMA2_ERROR_OUT_OF_MEMORY, "sampler_new_ex: rc %d", rc);
    for (i = 0; smp && i < 4 && id >= 0; i++) {
        id = gemma2_sampler_sample(smp, logits, hist, 5);
        if (id >= 0) at_put(out, &id, sizeof id);
    }
    at_disarm();
    gemma2_sampler_free(smp);
    if (!smp) return -1;
    return id < 0 ? id : 0;
}

/* A context no model could hold fails before allocating anything. */
static void at_huge_context(void)
{
    gemma2_model *m = at_gqa[0][0];
    int mpe = gemma2_model_config(m)->max_position_embeddings;
    gemma2_session *s;
    at_arm(0);
    s = gemma2_session_new(m, INT_MAX);
    AT_CHECK(s == NULL && at_count == 0, "session_new(INT_MAX): %s after %ld allocations", s ? "a session" : "NULL", at_count);
    gemma2_session_free(s);
    at_arm(0);
    s = gemma2_session_new(m, mpe + 1);
    AT_CHECK(s == NULL && at_count == 0, "session_new(max_position_embeddings + 1): %s after %ld allocations", s ? "a session" : "NULL", at_count);
    gemma2_session_free(s);
    fprintf(stderr, "ok     huge n_ctx\n");
}

int main(int argc, char **argv)
{
    static const struct { const char *name; at_op op; } ops[] = {
        {"load mapped", at_op_load_mapped},
        {"load read", at_op_load_read},
        {"load sharded f32", at_op_load_sharded},
        {"load q8, 2 threads", at_op_load_q8},
        {"load tokenizer.model", at_op_load_tokenizer},
        {"session_new", at_op_session_1},
        {"session_new, 2 threads", at_op_session_2},
        {"session_new, bf16 kv", at_op_session_bf16},
        {"session_new, bf16 kv, 2 threads", at_op_session_bf16_2},
        {"eval and rewind", at_op_eval},
        {"session load", at_op_session_load},
        {"session load, bf16 kv", at_op_session_load_bf16},
        {"session save and load, file", at_op_session_load_file},
        {"batch_new, batch_eval", at_op_batch},
        {"batch_new, batch_eval, bf16 kv", at_op_batch_bf16},
        {"model freed before its session", at_op_free_model_first},
        {"tokenize, detokenize", at_op_tokenize},
        {"tokenize, detokenize, tokenizer.json", at_op_tokenize_json},
        {"sampler", at_op_sampler},
        {"generate", at_op_generate},
        {"generators", at_op_generators},
        {"score", at_op_score},
        {"chat", at_op_chat},
    };
    const char *filter = argc > 1 ? argv[1] : NULL, *d = getenv("GEMMA2_TEST_DATA");
    int i, nt, kv;
    if (d) at_data = d;
    for (nt = 0; nt < 2; nt++)
        for (kv = 0; kv < 2; kv++) at_gqa[nt][kv] = at_load("models/tiny-gqa", 0, nt + 1, kv ? GEMMA2_KV_BF16 : GEMMA2_KV_F32, NULL);
    at_rv = at_load("models/tiny-realvocab", 0, 1, GEMMA2_KV_F32, "tokenizer/tokenizer.model");
    at_rv_json = at_load("models/tiny-realvocab", 0, 1, GEMMA2_KV_F32, "tokenizer/tokenizer.json");
    if (!at_gqa[0][0] || !at_gqa[0][1] || !at_gqa[1][0] || !at_gqa[1][1] || !at_rv || !at_rv_json) { fprintf(stderr, "setup failed\n"); return 1; }
    for (i = 0; i < (int)(sizeof ops / sizeof ops[0]); i++)
        if (!filter || strstr(ops[i].name, filter)) at_sweep(ops[i].name, ops[i].op);
    if (!filter || strstr("huge n_ctx", filter)) at_huge_context();
    for (nt = 0; nt < 2; nt++)
        for (kv = 0; kv < 2; kv++) gemma2_free(at_gqa[nt][kv]);
    gemma2_free(at_rv);
    gemma2_free(at_rv_json);
    AT_CHECK(at_live == 0, "%ld allocations live at the end", at_live);
    printf("alloc_test: %s\n", at_errors ? "FAILED" : "ok");
    return at_errors ? 1 : 0;
}
