/* Batches (gemma2_batch_eval): a session's results bit-identical whatever else shares its
   calls, agreement with gemma2_eval of the session alone on every fixture and kernel set,
   prompts mixed with decoding, sessions past their sliding windows, and failures that leave
   every session unchanged. Uses test_model.c's fixture readers (one translation unit). */
#include "test.h"

static const char *bat_fixtures[] = {"tiny-gqa", "tiny-27b-style", "tiny-mha-f32-sharded", "quant-a", "long-odd"};

/* The fixture's token sequence (prompt_ids + greedy_ids), cycled to any length: the tokens only
   need to be valid ids. */
typedef struct bat_seq {
    int32_t ids[128];
    int T;
} bat_seq;

static int bat_seq_load(const char *name, bat_seq *q)
{
    char rel[256], err[128];
    size_t sz;
    char *txt;
    gemma2__json j;
    snprintf(rel, sizeof rel, "models/%s/reference.json", name);
    txt = (char *)g2t_read_file(g2t_path(rel), &sz);
    q->T = 0;
    if (txt && gemma2__json_parse(&j, txt, sz, err, sizeof err) == 0) {
        int32_t ids = gemma2__json_get(&j, 0, "ids"); /* long-odd: one sequence */
        if (ids >= 0) q->T = mdl_ints(&j, ids, q->ids, 128);
        else {
            q->T = mdl_ints(&j, gemma2__json_get(&j, 0, "prompt_ids"), q->ids, 128);
            q->T += mdl_ints(&j, gemma2__json_get(&j, 0, "greedy_ids"), q->ids + q->T, 128 - q->T);
        }
        gemma2__json_free(&j);
    }
    free(txt);
    return q->T > 0;
}

static int32_t bat_tok(const bat_seq *q, int i) { return q->ids[i % q->T]; }

/* A schedule: session k gets sched[step][k] tokens at step `step` (0: sits out); its tokens are
   the fixture's sequence from offset 7 k on, so the sessions hold different texts. */
#define BAT_SESS 4
#define BAT_STEPS 40
static int bat_n(int step, int k)
{
    static const int first[BAT_SESS] = {5, 1, 7, 2};
    if (step == 0) return first[k];
    if (k == 2 && step % 9 == 0) return 0;        /* leaves for a step and comes back */
    if (k == 0 && step == 17) return 5;           /* a 5-token prompt while the others decode */
    if (k == 3 && step == 23) return 3;
    return 1;
}

static gemma2_model *bat_load(const char *name, int kernels, int weights, int compute, int kv)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s", g2t_path("models/"));
    strncat(dir, name, sizeof dir - strlen(dir) - 1);
    return mdl_load_opts(dir, kernels, weights, compute, kv);
}

/* Runs the schedule for session `who` (and, with `others`, the other sessions, in the order
   given by `order`) through batches, recording who's logits rows (all of them) in rec
   [BAT_STEPS][V] (the last row of each step). Returns 0 if a call failed. */
static int bat_run(gemma2_model *m, const bat_seq *q, int who, int others, const int *order, int max_tokens, int n_threads, float *rec)
{
    gemma2_batch *b = gemma2_batch_new(m, max_tokens, n_threads, NULL);
    gemma2_session *s[BAT_SESS] = {NULL, NULL, NULL, NULL};
    int V = gemma2_vocab_size(m), k, step, ok = b != NULL, fed[BAT_SESS] = {0, 0, 0, 0};
    float *rows = (float *)malloc(sizeof(float) * 8 * (size_t)V);
    for (k = 0; k < BAT_SESS; k++) {
        s[k] = gemma2_session_new(m, 256);
        ok = ok && s[k];
    }
    for (step = 0; ok && step < BAT_STEPS; step++) {
        gemma2_session *ss[BAT_SESS];
        int32_t buf[BAT_SESS][8];
        const int32_t *ip[BAT_SESS];
        float *lp[BAT_SESS];
        int nn[BAT_SESS], ns = 0, i, t, st[BAT_SESS];
        for (i = 0; i < BAT_SESS; i++) {
            int kk = order[i];
            if (kk != who && !others) continue;
            ss[ns] = s[kk];
            nn[ns] = bat_n(step, kk);
            for (t = 0; t < nn[ns]; t++) buf[ns][t] = bat_tok(q, 7 * kk + fed[kk] + t);
            ip[ns] = buf[ns];
            lp[ns] = kk == who ? rows : NULL;
            fed[kk] += nn[ns];
            ns++;
        }
        ok = gemma2_batch_eval(b, ss, ip, nn, ns, lp, st) == 0;
        for (i = 0; i < ns; i++) ok = ok && st[i] == 0;
        if (ok) memcpy(rec + (size_t)step * V, rows + (size_t)(bat_n(step, who) - 1) * V, sizeof(float) * (size_t)V);
        if (ok && bat_n(step, who) == 0) memset(rec + (size_t)step * V, 0, sizeof(float) * (size_t)V);
        /* the rows given and gemma2_logits agree */
        if (ok && bat_n(step, who) > 0) ok = memcmp(gemma2_logits(s[who]), rec + (size_t)step * V, sizeof(float) * (size_t)V) == 0;
    }
    for (k = 0; k < BAT_SESS; k++) gemma2_session_free(s[k]);
    gemma2_batch_free(b);
    free(rows);
    return ok;
}

/* Invariance: session 1's logits at every step, bit for bit, whether it is alone in its batch,
   with the others in two orders, in a batch of exactly its tokens' size or a large one, with 1
   or 2 threads; on every fixture, kernel set and the formats that change the products. */
static void test_batch_invariance(void)
{
    static const int cfgs[][3] = {{GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32}, {GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_BF16, GEMMA2_KV_BF16},
                                  {GEMMA2_WEIGHTS_Q8, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32}, {GEMMA2_WEIGHTS_Q4, GEMMA2_COMPUTE_F32, GEMMA2_KV_BF16}};
    static const int fwd[BAT_SESS] = {0, 1, 2, 3}, rev[BAT_SESS] = {3, 2, 0, 1};
    int f, i, ci;
    for (f = 0; f < (int)(sizeof bat_fixtures / sizeof bat_fixtures[0]); f++) {
        bat_seq q;
        if (!bat_seq_load(bat_fixtures[f], &q)) { CHECK(0, "%s: reference", bat_fixtures[f]); continue; }
        for (i = 0; i < GEMMA2__N_KERNEL_SETS; i++) {
            if (!gemma2__kernel_sets[i].init || !gemma2__kernel_sets[i].available()) continue;
            for (ci = 0; ci < 4; ci++) {
                gemma2_model *m;
                float *a, *b;
                size_t bytes;
                int run;
                if (ci > 0 && f != 0 && f != 3) continue; /* the formats on tiny-gqa and quant-a */
                m = bat_load(bat_fixtures[f], gemma2__kernel_sets[i].id, cfgs[ci][0], cfgs[ci][1], cfgs[ci][2]);
                if (!m) continue;
                bytes = sizeof(float) * BAT_STEPS * (size_t)gemma2_vocab_size(m);
                a = (float *)malloc(bytes);
                b = (float *)malloc(bytes);
                CHECK(bat_run(m, &q, 1, 0, fwd, 8, 2, a), "%s %s cfg %d: alone", bat_fixtures[f], m->kern.name, ci);
                for (run = 0; run < 3; run++) {
                    memset(b, 0, bytes);
                    CHECK(bat_run(m, &q, 1, 1, run == 1 ? rev : fwd, run == 2 ? 64 : 16, run == 2 ? 1 : 2, b), "%s %s cfg %d: run %d",
                          bat_fixtures[f], m->kern.name, ci, run);
                    CHECK(memcmp(a, b, bytes) == 0, "%s %s cfg %d: session 1 alone and in batch %d differ", bat_fixtures[f], m->kern.name, ci, run);
                }
                free(a);
                free(b);
                gemma2_free(m);
            }
        }
    }
}

/* The largest |a - b| / (1 + |b|) over a row. */
static float bat_rel(const float *a, const float *b, int V)
{
    float w = 0;
    int v;
    for (v = 0; v < V; v++) {
        float e = fabsf(a[v] - b[v]) / (1.0f + fabsf(b[v]));
        if (!(e <= w)) w = e != e ? 1e30f : e;
    }
    return w;
}

/* Agreement with gemma2_eval alone: four sessions run the schedule through one batch, and four
   twins the same tokens through gemma2_eval. The first step (fresh sessions, the twins asked for
   every row) is bit-identical where a session has 2+ tokens; after that the twins' lone tokens
   take the one-token kernels, and the logits must stay within the documented bound at every
   step, through the sliding windows (the schedule goes 40+ positions past each window but
   long-odd's 50). On every fixture and kernel set, and the formats on tiny-gqa. */
static void test_batch_agree(void)
{
    int n_exact = 0;
    static const int cfgs[][3] = {{GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32}, {GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_F32, GEMMA2_KV_BF16},
                                  {GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_BF16, GEMMA2_KV_F32}, {GEMMA2_WEIGHTS_Q8, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32},
                                  {GEMMA2_WEIGHTS_Q4, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32}};
    int f, i, ci;
    for (f = 0; f < (int)(sizeof bat_fixtures / sizeof bat_fixtures[0]); f++) {
        bat_seq q;
        if (!bat_seq_load(bat_fixtures[f], &q)) { CHECK(0, "%s: reference", bat_fixtures[f]); continue; }
        for (i = 0; i < GEMMA2__N_KERNEL_SETS; i++) {
            if (!gemma2__kernel_sets[i].init || !gemma2__kernel_sets[i].available()) continue;
            for (ci = 0; ci < 5; ci++) {
                gemma2_model *m;
                gemma2_batch *b;
                gemma2_session *s[BAT_SESS], *tw[BAT_SESS];
                float *rows, *trows, worst1 = 0, worst = 0, bound1, bound;
                int V, k, step, fed[BAT_SESS] = {0, 0, 0, 0}, ok = 1, exact, n_diff = 0;
                if (ci > 0 && f != 0) continue;
                m = bat_load(bat_fixtures[f], gemma2__kernel_sets[i].id, cfgs[ci][0], cfgs[ci][1], cfgs[ci][2]);
                if (!m) continue;
                V = gemma2_vocab_size(m);
                /* where the set computes one-token sessions as gemma2_eval does (batch_lone), every
                   step of every session is bit-identical to its twin's */
                exact = m->kern.batch_lone[m->embed.format] && m->kern.batch_lone[m->layers[0].wq.format] &&
                        m->kern.batch_lone[m->layers[0].wdown.format];
                /* the documented bounds: 1e-4 after one step; then 1e-3, or 1e-1 where a bf16 cache or bf16
                   activations round the two paths' differences further */
                bound1 = 1e-4f;
                bound = ci == 1 || ci == 2 ? 1e-1f : 1e-3f;
                b = gemma2_batch_new(m, 32, 2, NULL);
                rows = (float *)malloc(sizeof(float) * 8 * (size_t)V);
                trows = (float *)malloc(sizeof(float) * 8 * (size_t)V);
                for (k = 0; k < BAT_SESS; k++) { s[k] = gemma2_session_new(m, 256); tw[k] = gemma2_session_new(m, 256); }
                for (step = 0; ok && step < BAT_STEPS; step++) {
                    int32_t buf[BAT_SESS][8];
                    const int32_t *ip[BAT_SESS];
                    float *lp[BAT_SESS] = {NULL, NULL, NULL, NULL};
                    int nn[BAT_SESS], t;
                    for (k = 0; k < BAT_SESS; k++) {
                        nn[k] = bat_n(step, k);
                        for (t = 0; t < nn[k]; t++) buf[k][t] = bat_tok(&q, 7 * k + fed[k] + t);
                        ip[k] = buf[k];
                        fed[k] += nn[k];
                    }
                    lp[0] = rows;
                    ok = gemma2_batch_eval(b, s, ip, nn, BAT_SESS, lp, NULL) == 0;
                    CHECK(ok, "%s %s cfg %d step %d: batch_eval", bat_fixtures[f], m->kern.name, ci, step);
                    for (k = 0; ok && k < BAT_SESS; k++) {
                        float e;
                        if (nn[k] == 0) continue;
                        /* as in the batch, session 0 asks for every row; the others for the last (which
                           both paths then compute as one token's), or at first every row where the
                           batch is not exact */
                        ok = gemma2_eval(tw[k], buf[k], nn[k], k == 0 || (step == 0 && !exact) ? trows : NULL) == 0;
                        CHECK(ok && gemma2_session_pos(s[k]) == gemma2_session_pos(tw[k]), "%s: twin %d", bat_fixtures[f], k);
                        if (!ok) break;
                        if (step == 0 && nn[k] >= 2 && (k == 0 || !exact)) /* the same products, the same attention blocks: the same bits */
                            CHECK(memcmp(gemma2_logits(s[k]), trows + (size_t)(nn[k] - 1) * V, sizeof(float) * (size_t)V) == 0,
                                  "%s %s cfg %d: session %d's %d-token prompt not bit-identical to gemma2_eval's", bat_fixtures[f], m->kern.name, ci, k, nn[k]);
                        if (k == 0) /* the rows asked for end with the session's logits */
                            CHECK(memcmp(gemma2_logits(s[k]), rows + (size_t)(nn[k] - 1) * V, sizeof(float) * (size_t)V) == 0, "rows");
                        e = bat_rel(gemma2_logits(s[k]), gemma2_logits(tw[k]), V);
                        if (exact && memcmp(gemma2_logits(s[k]), gemma2_logits(tw[k]), sizeof(float) * (size_t)V) != 0) n_diff++;
                        if (step == 0) worst1 = GEMMA2__MAX(worst1, e);
                        worst = GEMMA2__MAX(worst, e);
                    }
                }
                CHECK(worst1 <= bound1 && worst <= bound, "%s %s cfg %d: batch vs gemma2_eval: %g after the first step (bound %g), %g over all (bound %g)",
                      bat_fixtures[f], m->kern.name, ci, worst1, bound1, worst, bound);
                CHECK(n_diff == 0, "%s %s cfg %d: %d session-steps not bit-identical to gemma2_eval (largest difference %g)", bat_fixtures[f], m->kern.name, ci,
                      n_diff, worst);
                n_exact += exact;
                if (getenv("GEMMA2_TEST_VERBOSE"))
                    fprintf(stderr, "  %s %s cfg %d: first %g, all %g\n", bat_fixtures[f], m->kern.name, ci, worst1, worst);
                for (k = 0; k < BAT_SESS; k++) { gemma2_session_free(s[k]); gemma2_session_free(tw[k]); }
                gemma2_batch_free(b);
                free(rows);
                free(trows);
                gemma2_free(m);
            }
        }
    }
    /* the bit-identical case ran wherever a set has it */
    for (f = 0; f < GEMMA2__N_KERNEL_SETS; f++) {
        gemma2__kernels k;
        if (!gemma2__kernel_sets[f].init || !gemma2__kernel_sets[f].available()) continue;
        memset(&k, 0, sizeof k);
        gemma2__kernel_sets[f].init(&k);
        if (k.batch_lone[GEMMA2__WF_BF16]) CHECK(n_exact > 0, "%s: no bit-identical run", k.name);
    }
}

/* A failed call leaves every session unchanged: positions, tokens and logits, and the calls
   after it give exactly what they give without the failed one. */
static void test_batch_errors(void)
{
    gemma2_model *m = bat_load("tiny-gqa", GEMMA2_KERNELS_AUTO, GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32);
    gemma2_model *m2 = bat_load("tiny-gqa", GEMMA2_KERNELS_AUTO, GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32);
    gemma2_batch *b, *b1;
    gemma2_session *a, *c, *full, *other, *ta, *tc;
    int32_t good[3] = {5, 6, 7}, bad[2] = {9, 512}, many[130];
    int rc, i, st[3];
    float la[512], lc[512];
    if (!m || !m2) { gemma2_free(m); gemma2_free(m2); return; }
    for (i = 0; i < 130; i++) many[i] = 3 + i;
    b = gemma2_batch_new(m, 8, 2, &rc);
    CHECK(b && rc == 0, "batch_new");
    b1 = gemma2_batch_new(m, 8, 1, NULL);
    a = gemma2_session_new(m, 64); c = gemma2_session_new(m, 64); full = gemma2_session_new(m, 4); other = gemma2_session_new(m2, 64);
    ta = gemma2_session_new(m, 64); tc = gemma2_session_new(m, 64);
    {
        gemma2_session *s2[2] = {a, c}, *t2[2] = {ta, tc}, *sf[1] = {full};
        const int32_t *ip[2] = {good, good + 1};
        int n2[2] = {3, 2}, n4[1] = {4};
        const int32_t *ipf[1] = {many};
        CHECK(gemma2_batch_eval(b, s2, ip, n2, 2, NULL, NULL) == 0 && gemma2_batch_eval(b1, t2, ip, n2, 2, NULL, NULL) == 0, "setup");
        CHECK(gemma2_batch_eval(b, sf, ipf, n4, 1, NULL, NULL) == 0 && gemma2_session_pos(full) == 4, "fill");
    }
    memcpy(la, gemma2_logits(a), sizeof la);
    memcpy(lc, gemma2_logits(c), sizeof lc);
    for (i = 0; i < 9; i++) {
        gemma2_session *ss[3] = {a, c, c};
        const int32_t *ip[3] = {good, good, good};
        int nn[3] = {1, 1, 1}, ns = 2, want = GEMMA2_ERROR_INVALID_ARGUMENT, at = 1;
        switch (i) {
        case 0: ip[1] = bad; nn[1] = 2; want = GEMMA2_ERROR_BAD_TOKEN; break;           /* a bad id in the second session */
        case 1: ss[1] = full; want = GEMMA2_ERROR_CONTEXT_FULL; break;                   /* its context full */
        case 2: ss[1] = NULL; break;                                                      /* NULL */
        case 3: ss[1] = a; break;                                                         /* the same session twice */
        case 4: ss[1] = other; break;                                                     /* another model's session */
        case 5: ip[1] = NULL; break;                                                      /* no ids */
        case 6: nn[1] = -1; break;
        case 7: ip[1] = many; nn[1] = 129; break;                                         /* more than a session's 128 */
        case 8: ip[1] = many; nn[1] = 8; at = -1; break;                                  /* 9 tokens, max_tokens 8 */
        }
        st[0] = st[1] = 99;
        rc = gemma2_batch_eval(b, ss, ip, nn, ns, NULL, st);
        CHECK(rc == want, "case %d: rc %d, expected %d", i, rc, want);
        CHECK(st[0] == 0 && st[1] == (at == 1 ? want : 0), "case %d: status %d %d", i, st[0], st[1]);
        CHECK(gemma2_session_pos(a) == 3 && gemma2_session_pos(c) == 2 && gemma2_session_pos(full) == 4 && gemma2_session_pos(other) == 0,
              "case %d: positions changed", i);
        CHECK(memcmp(gemma2_logits(a), la, sizeof la) == 0 && memcmp(gemma2_logits(c), lc, sizeof lc) == 0, "case %d: logits changed", i);
        CHECK(memcmp(gemma2_session_tokens(a), good, 3 * sizeof(int32_t)) == 0 && memcmp(gemma2_session_tokens(c), good + 1, 2 * sizeof(int32_t)) == 0,
              "case %d: tokens changed", i);
    }
    CHECK(gemma2_batch_eval(NULL, &a, NULL, NULL, 0, NULL, NULL) == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL batch");
    CHECK(gemma2_batch_eval(b, NULL, NULL, NULL, -1, NULL, NULL) == GEMMA2_ERROR_INVALID_ARGUMENT, "negative count");
    CHECK(gemma2_batch_eval(b, NULL, NULL, NULL, 0, NULL, NULL) == 0, "nothing to do");
    CHECK(!gemma2_batch_new(m, 0, 1, &rc) && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "max_tokens 0");
    CHECK(!gemma2_batch_new(NULL, 4, 1, &rc) && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "no model");
    CHECK(!gemma2_batch_new(m, 4, -1, &rc) && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "negative threads");
    /* and on, as the twins that never saw the failures (another batch, another thread count) */
    {
        gemma2_session *s2[2] = {c, a}, *t2[2] = {tc, ta};
        const int32_t *ip[2] = {many, many + 5};
        int n2[2] = {1, 4};
        CHECK(gemma2_batch_eval(b, s2, ip, n2, 2, NULL, NULL) == 0 && gemma2_batch_eval(b1, t2, ip, n2, 2, NULL, NULL) == 0, "continue");
        CHECK(memcmp(gemma2_logits(a), gemma2_logits(ta), sizeof la) == 0 && memcmp(gemma2_logits(c), gemma2_logits(tc), sizeof lc) == 0,
              "after the failures: not the twins' bits");
    }
    gemma2_session_free(a); gemma2_session_free(c); gemma2_session_free(full); gemma2_session_free(other);
    gemma2_session_free(ta); gemma2_session_free(tc);
    gemma2_batch_free(b);
    gemma2_batch_free(b1);
    gemma2_free(m);
    gemma2_free(m2);
}

/* Broken weights (an infinity in embedding row 300 of tiny-gqa): the session fed token 300 gets
   GEMMA2_ERROR_NUMERIC and its tokens taken back, as gemma2_eval does; the session beside it
   goes on exactly as a twin in a batch of its own. */
static void test_batch_numeric(void)
{
    char dir[64] = "/tmp/gemma2_test_XXXXXX";
    int i;
    if (!mkdtemp(dir) || !mdl_plant("tiny-gqa", "model.embed_tokens.weight", 300 * 64 + 10, 0x7f80u, dir)) { CHECK(0, "setup"); return; }
    for (i = 0; i < GEMMA2__N_KERNEL_SETS; i++) {
        gemma2_model *m;
        gemma2_batch *b;
        gemma2_session *s[2], *tw, *back;
        int32_t pre[4] = {2, 5, 6, 7}, good[2] = {8, 9}, badt[2] = {8, 300};
        const int32_t *ip[2] = {badt, good};
        const int32_t *tp[1] = {good};
        int n[2] = {2, 2}, st[2] = {0, 0}, rc;
        float before[512];
        if (!gemma2__kernel_sets[i].init || !gemma2__kernel_sets[i].available()) continue;
        m = mdl_load_opts(dir, gemma2__kernel_sets[i].id, GEMMA2_WEIGHTS_AUTO, GEMMA2_COMPUTE_F32, GEMMA2_KV_F32);
        if (!m) continue;
        b = gemma2_batch_new(m, 8, 2, NULL);
        s[0] = gemma2_session_new(m, 64); s[1] = gemma2_session_new(m, 64); tw = gemma2_session_new(m, 64); back = gemma2_session_new(m, 64);
        CHECK(gemma2_eval(s[0], pre, 4, NULL) == 0 && gemma2_eval(s[1], pre, 4, NULL) == 0 && gemma2_eval(tw, pre, 4, NULL) == 0, "prefix");
        /* what taking the tokens back leaves: a rewind to the position before them */
        CHECK(gemma2_eval(back, pre, 4, NULL) == 0 && gemma2_session_rewind(back, 4) == 0, "rewound twin");
        memcpy(before, gemma2_logits(back), sizeof before);
        rc = gemma2_batch_eval(b, s, ip, n, 2, NULL, st);
        CHECK(gemma2_batch_eval(b, &tw, tp, n, 1, NULL, NULL) == 0, "twin");
        CHECK(rc == GEMMA2_ERROR_NUMERIC && st[0] == GEMMA2_ERROR_NUMERIC && st[1] == 0, "%s: rc %d, status %d %d", m->kern.name, rc, st[0], st[1]);
        CHECK(gemma2_session_pos(s[0]) == 4 && gemma2_logits(s[0]) && memcmp(gemma2_logits(s[0]), before, sizeof before) == 0,
              "%s: the failed session not as before", m->kern.name);
        CHECK(gemma2_session_pos(s[1]) == 6 && memcmp(gemma2_logits(s[1]), gemma2_logits(tw), sizeof before) == 0, "%s: the good session", m->kern.name);
        gemma2_session_free(s[0]); gemma2_session_free(s[1]); gemma2_session_free(tw); gemma2_session_free(back);
        gemma2_batch_free(b);
        gemma2_free(m);
    }
    mdl_unplant(dir);
}

void suite_batch(void)
{
    g2t_run("batch/invariance", test_batch_invariance);
    g2t_run("batch/agree", test_batch_agree);
    g2t_run("batch/errors", test_batch_errors);
    g2t_run("batch/numeric", test_batch_numeric);
}
