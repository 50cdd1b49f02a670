/* Sessions: rewinding to every distance around the sliding-window rings' edges against a
   fresh session, the bounds of n_ctx, freeing a session after its model, and one model shared
   by sessions on several threads. */
#include "test.h"
#if !defined(_WIN32) && !defined(GEMMA2_NO_THREADS)
#include <pthread.h>
#define SES_THREADS 1
#endif

static const char *ses_fixtures[] = {"tiny-gqa", "tiny-27b-style", "tiny-mha-f32-sharded", "tiny-realvocab", "quant-a", "long-odd"};

static gemma2_model *ses_load(const char *name, int kv_cache, int n_threads)
{
    gemma2_options o = gemma2_options_default();
    o.kv_cache = kv_cache;
    o.n_threads = n_threads;
    return g2t_load(name, &o);
}

/* Compared logits: at most SES_COLS of each row, evenly strided (tiny-realvocab's rows have
   256000), enough to see any change of the hidden state. */
#define SES_COLS 4096

typedef struct ses_rows {
    int T, V, stride, ncol;
    float *v; /* [T][ncol] */
} ses_rows;

static void ses_take(ses_rows *r, int t, const float *row)
{
    int i;
    for (i = 0; i < r->ncol; i++) r->v[(size_t)t * r->ncol + i] = row[(size_t)i * r->stride];
}

/* The largest difference between a logit row and row t of the reference. */
static float ses_diff(const ses_rows *r, int t, const float *row)
{
    float worst = 0;
    int i;
    for (i = 0; i < r->ncol; i++) worst = GEMMA2__MAX(worst, fabsf(row[(size_t)i * r->stride] - r->v[(size_t)t * r->ncol + i]));
    return worst;
}

/* Every row of a fresh session evaluating ids[0..T) (row t: the logits after token t, which is
   what any fresh session evaluating ids[0..t] gives), in pieces of 16 tokens. */
static int ses_reference(gemma2_model *m, int chunk, const int32_t *ids, int T, ses_rows *r)
{
    gemma2_session *s = gemma2__session_new(m, T, chunk);
    float *buf;
    int V = gemma2_vocab_size(m), done, t, ok = 1;
    r->T = T;
    r->V = V;
    r->stride = (V + SES_COLS - 1) / SES_COLS;
    r->ncol = (V + r->stride - 1) / r->stride;
    r->v = (float *)malloc((size_t)T * r->ncol * sizeof(float));
    buf = (float *)malloc((size_t)16 * V * sizeof(float));
    if (!s || !r->v || !buf) ok = 0;
    for (done = 0; ok && done < T; done += 16) {
        int n = GEMMA2__MIN(16, T - done);
        if (gemma2_eval(s, ids + done, n, buf) != 0) ok = 0;
        for (t = 0; ok && t < n; t++) ses_take(r, done + t, buf + (size_t)t * V);
    }
    free(buf);
    gemma2_session_free(s);
    return ok;
}

/* Rewinds a session that has evaluated all T tokens to T - d for each distance d given, and
   checks the logits after the rewind and over the next 20 tokens against a fresh session.
   The cheap path (recompute token pos-1 from the cache) must be taken only when the ring
   still holds every key that token needs; else the cache is rebuilt. Either way the result
   must be what a fresh session computes: equal up to float rounding of a different batching
   (one token vs a chunk: the attention sums may run in another order), 1e-3 as the
   model tests allow, far below what a wrong key changes (0.8 to 10 on these fixtures, 3e-3 on
   tiny-mha's 4096-key window). With the bf16 cache that rounding can move a key across a bf16
   rounding boundary (one bf16 step, 2^-8 relative): 3e-3 measured on tiny-gqa, so 5e-2 there. */
static void ses_rewind_sweep(gemma2_model *m, const char *name, int chunk, const int32_t *ids, int T, const int *dists, int nd, float tol)
{
    ses_rows ref;
    gemma2_session *s;
    int V = gemma2_vocab_size(m), i, t;
    float *buf = (float *)malloc((size_t)20 * V * sizeof(float));
    memset(&ref, 0, sizeof ref);
    if (!buf || !ses_reference(m, chunk, ids, T, &ref)) { CHECK(0, "%s: reference session", name); free(buf); free(ref.v); return; }
    s = gemma2__session_new(m, T, chunk);
    CHECK(s && gemma2_eval(s, ids, T, NULL) == 0, "%s: eval %d tokens", name, T);
    for (i = 0; s && i < nd; i++) {
        int p = T - dists[i], n = GEMMA2__MIN(20, T - p);
        float worst;
        if (p < 0) continue;
        CHECK(gemma2_session_rewind(s, p) == 0 && gemma2_session_pos(s) == p, "%s: rewind to %d", name, p);
        if (p > 0) {
            const float *lg = gemma2_logits(s);
            worst = lg ? ses_diff(&ref, p - 1, lg) : 1e30f;
            CHECK(worst <= tol, "%s (chunk %d, ring %d): after rewinding %d back to %d, logits differ from a fresh session by %g",
                  name, chunk, s->slots[0], dists[i], p, worst);
        }
        if (n > 0) {
            CHECK(gemma2_eval(s, ids + p, n, buf) == 0, "%s: eval after rewind", name);
            worst = 0;
            for (t = 0; t < n; t++) worst = GEMMA2__MAX(worst, ses_diff(&ref, p + t, buf + (size_t)t * V));
            CHECK(worst <= tol, "%s (chunk %d): the %d tokens after rewinding %d back to %d differ from a fresh session by %g", name, chunk,
                  n, dists[i], p, worst);
            /* back to the end, so that the next rewind starts from T again */
            CHECK(gemma2_eval(s, ids + p + n, T - p - n, NULL) == 0, "%s: eval to the end", name);
        }
    }
    gemma2_session_free(s);
    free(buf);
    free(ref.v);
}

/* Every fixture, with the sessions' own chunk (the rings hold W + 127 positions) and with
   3-token chunks (W + 2): distances 1..40 and around chunk - 1 (where the cheap path stops
   being possible), and rewinds to positions around W (where the first keys leave the window)
   and to the very start. */
static void test_session_rewind(void)
{
    int f, ci, kv;
    for (f = 0; f < (int)(sizeof ses_fixtures / sizeof ses_fixtures[0]); f++) {
        for (kv = 0; kv < 2; kv++) {
            gemma2_model *m;
            int W, V, T, chunks[2] = {GEMMA2__CHUNK, 3};
            int32_t *ids;
            if (kv == 1 && f != 0) continue; /* the bf16 cache on one fixture: the same rings */
            m = ses_load(ses_fixtures[f], kv ? GEMMA2_KV_BF16 : GEMMA2_KV_F32, 1);
            if (!m) continue;
            W = gemma2_model_config(m)->sliding_window;
            V = gemma2_vocab_size(m);
            for (ci = 0; ci < 2; ci++) {
                int chunk = chunks[ci], ring = W + chunk - 1, d, nd = 0, i;
                int e = W > 64 ? 1 : 2; /* tiny-mha's 4096-token window: each rebuild costs ~4300 tokens, so only the edges */
                int dists[128];
                uint32_t seed = 12345u + (uint32_t)f;
                if (chunk < GEMMA2__CHUNK && W > 64) continue; /* tiny-mha's 4096-token window: rebuilding it ~40 times is slow */
                /* long enough for the ring to wrap and for every distance below */
                T = ring + chunk + 45;
                if (T > gemma2_model_config(m)->max_position_embeddings) T = gemma2_model_config(m)->max_position_embeddings;
                ids = (int32_t *)malloc((size_t)T * sizeof(int32_t));
                if (!ids) { CHECK(0, "alloc"); continue; }
                ids[0] = 2;
                for (i = 1; i < T; i++) { seed = seed * 1664525u + 1013904223u; ids[i] = (int32_t)((seed >> 8) % (uint32_t)V); }
                for (d = 1; d <= 40; d++) dists[nd++] = d;
                for (d = chunk - e - 1; d <= chunk + e; d++) if (d > 40) dists[nd++] = d;
                for (d = -e; d <= e; d++) dists[nd++] = T - (W + d);
                dists[nd++] = T - 1;
                dists[nd++] = T;
                ses_rewind_sweep(m, ses_fixtures[f], chunk, ids, T, dists, nd, kv ? 5e-2f : 1e-3f);
                free(ids);
            }
            gemma2_free(m);
        }
    }
}

/* n_ctx: 0 is max_position_embeddings, which is also the most; past it (up to INT_MAX, which
   once zeroed 8 GB before failing) or negative, NULL. The allocation test (tests/alloc_test.c)
   checks that such a call allocates nothing. */
static void test_session_n_ctx(void)
{
    gemma2_model *m = ses_load("tiny-gqa", GEMMA2_KV_F32, 1);
    gemma2_session *s;
    int mpe;
    if (!m) return;
    mpe = gemma2_model_config(m)->max_position_embeddings;
    s = gemma2_session_new(m, 0);
    CHECK(s && gemma2_session_n_ctx(s) == mpe, "n_ctx 0 is max_position_embeddings (%d)", mpe);
    gemma2_session_free(s);
    s = gemma2_session_new(m, mpe);
    CHECK(s && gemma2_session_n_ctx(s) == mpe, "n_ctx = max_position_embeddings");
    gemma2_session_free(s);
    s = gemma2_session_new(m, mpe + 1);
    CHECK(s == NULL, "n_ctx past max_position_embeddings must fail");
    gemma2_session_free(s);
    s = gemma2_session_new(m, 2147483647);
    CHECK(s == NULL, "n_ctx INT_MAX must fail");
    gemma2_session_free(s);
    CHECK(gemma2_session_new(m, -1) == NULL && gemma2_session_new(NULL, 8) == NULL, "bad arguments");
    gemma2_free(m);
}

/* A session freed after its model (the ASan build sees any read of the freed model). */
static void test_session_free_after_model(void)
{
    int kv;
    for (kv = 0; kv < 2; kv++) {
        gemma2_model *m = ses_load("tiny-27b-style", kv ? GEMMA2_KV_BF16 : GEMMA2_KV_F32, 2);
        gemma2_session *s = m ? gemma2_session_new(m, 16) : NULL;
        int32_t ids[3] = {2, 10, 20};
        CHECK(s && gemma2_eval(s, ids, 3, NULL) == 0, "session");
        gemma2_free(m);
        gemma2_session_free(s);
    }
}

#if defined(SES_THREADS)
/* One model shared by sessions on several threads (the TSan build runs this): each evaluates
   tiny-gqa's reference tokens, in one call and then again token by token after a rewind, and
   must get the reference logits. */
typedef struct ses_worker {
    gemma2_model *m;
    const mdl_ref *r;
    int rc;
    float worst;
} ses_worker;

static void *ses_worker_run(void *arg)
{
    ses_worker *w = (ses_worker *)arg;
    const mdl_ref *r = w->r;
    gemma2_session *s = gemma2_session_new(w->m, r->T);
    float *out = (float *)malloc((size_t)r->T * r->V * sizeof(float));
    int t, v;
    w->rc = -1;
    w->worst = 0;
    if (s && out && gemma2_eval(s, r->ids, r->T, out) == 0 && gemma2_session_rewind(s, 1) == 0) {
        for (t = 1; t < r->T; t++)
            if (gemma2_eval(s, r->ids + t, 1, out + (size_t)t * r->V) != 0) break;
        if (t == r->T) w->rc = 0;
        for (v = 0; v < r->T * r->V; v++) w->worst = GEMMA2__MAX(w->worst, fabsf(out[v] - r->logits[v]));
    }
    free(out);
    gemma2_session_free(s);
    return NULL;
}

static void test_session_threads(void)
{
    enum { NW = 3 };
    mdl_ref r;
    gemma2_model *m = ses_load("tiny-gqa", GEMMA2_KV_F32, 2);
    pthread_t th[NW];
    ses_worker w[NW];
    int i, started[NW];
    if (!m) return;
    if (!mdl_load_ref("tiny-gqa", &r) || !r.logits) { CHECK(0, "tiny-gqa reference"); mdl_free_ref(&r); gemma2_free(m); return; }
    for (i = 0; i < NW; i++) {
        w[i].m = m;
        w[i].r = &r;
        started[i] = pthread_create(&th[i], NULL, ses_worker_run, &w[i]) == 0;
        CHECK(started[i], "pthread_create");
    }
    for (i = 0; i < NW; i++) {
        if (!started[i]) continue;
        pthread_join(th[i], NULL);
        CHECK(w[i].rc == 0 && w[i].worst < 1e-3f, "thread %d: rc %d, max logit diff %g", i, w[i].rc, w[i].worst);
    }
    mdl_free_ref(&r);
    gemma2_free(m);
}
#endif

void suite_session(void)
{
    g2t_run("session/rewind", test_session_rewind);
    g2t_run("session/n_ctx", test_session_n_ctx);
    g2t_run("session/free-after-model", test_session_free_after_model);
#if defined(SES_THREADS)
    g2t_run("session/threads", test_session_threads);
#endif
}
