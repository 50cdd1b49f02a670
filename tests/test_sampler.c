#include "test.h"

/* Sampler tests on synthetic logits: exact distributions, checked by many seeded draws. The
   draws are deterministic (own PRNG), so the bounds never flake; they are 5 standard deviations
   wide, which a wrong temperature or a wrong top-p/min-p cut exceeds many times over. */

static gemma2_sampler_params smp_params(void)
{
    gemma2_sampler_params p;
    memset(&p, 0, sizeof p);
    return p;
}

/* Exact probabilities softmax(l / T) over the ids allowed by keep (NULL = all). */
static void smp_softmax(const float *l, int n, double T, const int *keep, double *out)
{
    double mx = -1e300, z = 0;
    int i;
    for (i = 0; i < n; i++) if ((!keep || keep[i]) && l[i] / T > mx) mx = l[i] / T;
    for (i = 0; i < n; i++) { out[i] = (!keep || keep[i]) ? exp(l[i] / T - mx) : 0; z += out[i]; }
    for (i = 0; i < n; i++) out[i] /= z;
}

/* Draws N tokens (with the history hist for the penalties) and checks every frequency against p
   within 5 sigma (+1e-4). */
static int smp_check_freq2(gemma2_sampler *s, const float *l, int n, const int32_t *hist, int n_hist, const double *p, int N, const char *what)
{
    int *cnt = (int *)calloc((size_t)n, sizeof(int)), i, ok = 1;
    for (i = 0; i < N; i++) {
        int t = gemma2_sampler_sample(s, l, hist, n_hist);
        if (t < 0 || t >= n) { ok = 0; CHECK(0, "%s: bad token %d", what, t); break; }
        cnt[t]++;
    }
    for (i = 0; i < n && ok; i++) {
        double f = (double)cnt[i] / N, sd = sqrt(p[i] * (1 - p[i]) / N);
        if (p[i] == 0 && cnt[i] != 0) { ok = 0; CHECK(0, "%s: token %d has p=0 but drawn %d times", what, i, cnt[i]); }
        else if (fabs(f - p[i]) > 5 * sd + 1e-4) { ok = 0; CHECK(0, "%s: token %d freq %.5f expected %.5f", what, i, f, p[i]); }
    }
    free(cnt);
    return ok;
}

static int smp_check_freq(gemma2_sampler *s, const float *l, int n, const double *p, int N, const char *what)
{
    return smp_check_freq2(s, l, n, NULL, 0, p, N, what);
}

static const float smp_l8[8] = {2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f, -3.0f};

static void test_sampler_greedy(void)
{
    float l[1000];
    int i, best = 0;
    gemma2_sampler *s;
    gemma2_sampler_params p = smp_params();
    unsigned x = 12345;
    for (i = 0; i < 1000; i++) {
        x = x * 1103515245u + 12345u;
        l[i] = (float)((x >> 8) % 100000) / 1000.0f - 50.0f;
        if (l[i] > l[best]) best = i;
    }
    s = gemma2_sampler_new(1000, NULL); /* NULL params: greedy */
    CHECK(s != NULL, "new");
    CHECK(gemma2_sampler_sample(s, l, NULL, 0) == best, "argmax");
    gemma2_sampler_free(s);
    /* ties go to the lowest id; a NaN anywhere is an error; all -inf is an error */
    l[7] = l[best] + 1; l[3] = l[7];
    s = gemma2_sampler_new(1000, &p);
    CHECK(gemma2_sampler_sample(s, l, NULL, 0) == 3, "tie -> lowest id");
    l[5] = NAN;
    CHECK(gemma2_sampler_sample(s, l, NULL, 0) == GEMMA2_ERROR_NUMERIC, "NaN logit");
    l[5] = 0;
    for (i = 0; i < 1000; i++) l[i] = -INFINITY;
    CHECK(gemma2_sampler_sample(s, l, NULL, 0) == GEMMA2_ERROR_INVALID_ARGUMENT, "all -inf");
    gemma2_sampler_free(s);
    CHECK(gemma2_sampler_new(0, NULL) == NULL, "vocab 0");
}

static void test_sampler_temperature(void)
{
    double p[8];
    gemma2_sampler_params pp = smp_params();
    gemma2_sampler *s;
    const double temps[3] = {1.0, 0.7, 1.8};
    int k;
    for (k = 0; k < 3; k++) {
        pp.temperature = (float)temps[k];
        pp.seed = 42 + (uint64_t)k;
        s = gemma2_sampler_new(8, &pp);
        smp_softmax(smp_l8, 8, temps[k], NULL, p);
        smp_check_freq(s, smp_l8, 8, p, 200000, "temperature");
        gemma2_sampler_free(s);
    }
    /* the check is sharp enough to see a wrong temperature: T=0.7 draws vs T=1 probabilities */
    pp.temperature = 0.7f;
    s = gemma2_sampler_new(8, &pp);
    smp_softmax(smp_l8, 8, 1.0, NULL, p);
    {
        int cnt0 = 0, i;
        for (i = 0; i < 100000; i++) cnt0 += gemma2_sampler_sample(s, smp_l8, NULL, 0) == 0;
        CHECK(fabs(cnt0 / 100000.0 - p[0]) > 0.05, "wrong temperature must be visible (%f vs %f)", cnt0 / 100000.0, p[0]);
    }
    gemma2_sampler_free(s);
}

static void test_sampler_top_k_p_min_p(void)
{
    double p[8];
    int keep[8], i;
    gemma2_sampler_params pp = smp_params();
    gemma2_sampler *s;
    /* top-k 3 at T 0.9 */
    pp.temperature = 0.9f;
    pp.top_k = 3;
    pp.seed = 7;
    for (i = 0; i < 8; i++) keep[i] = i < 3;
    smp_softmax(smp_l8, 8, 0.9, keep, p);
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, smp_l8, 8, p, 100000, "top-k");
    gemma2_sampler_free(s);
    /* top-p 0.85 at T 1: probs .405 .245 .149 .090 .055 ...: cumulative .405 .650 .799 .889 -> 4 tokens */
    pp = smp_params();
    pp.temperature = 1;
    pp.top_p = 0.85f;
    pp.seed = 8;
    smp_softmax(smp_l8, 8, 1.0, NULL, p);
    {
        double acc = 0;
        for (i = 0; i < 8; i++) { keep[i] = acc < 0.85; acc += p[i]; }
        CHECK(keep[3] && !keep[4], "fixture: nucleus of 4");
    }
    smp_softmax(smp_l8, 8, 1.0, keep, p);
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, smp_l8, 8, p, 100000, "top-p");
    gemma2_sampler_free(s);
    /* top-p applies to the top-k renormalised distribution (transformers' order) */
    pp.top_k = 4;
    pp.top_p = 0.7f; /* over 4: .455 .276 .167 .101 -> 2 tokens */
    for (i = 0; i < 8; i++) keep[i] = i < 2;
    smp_softmax(smp_l8, 8, 1.0, keep, p);
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, smp_l8, 8, p, 100000, "top-k then top-p");
    gemma2_sampler_free(s);
    /* min-p 0.3 at T 1: keeps p >= 0.3 p_max, i.e. logit >= 2 + ln 0.3 = 0.796: 3 tokens */
    pp = smp_params();
    pp.temperature = 1;
    pp.min_p = 0.3f;
    pp.seed = 9;
    for (i = 0; i < 8; i++) keep[i] = i < 3;
    smp_softmax(smp_l8, 8, 1.0, keep, p);
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, smp_l8, 8, p, 100000, "min-p");
    gemma2_sampler_free(s);
    /* min-p after temperature: at T 2 the cut is logit >= 2 + 2 ln 0.3 = -0.408: 5 tokens */
    pp.temperature = 2;
    for (i = 0; i < 8; i++) keep[i] = i < 5;
    smp_softmax(smp_l8, 8, 2.0, keep, p);
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, smp_l8, 8, p, 100000, "min-p at T 2");
    gemma2_sampler_free(s);
}

static int smp_cmp_desc(const void *a, const void *b)
{
    const float *x = (const float *)a, *y = (const float *)b;
    return *x < *y ? 1 : *x > *y ? -1 : 0;
}

/* Full-size vocabulary: the threshold gathering of top-p must find exactly the nucleus, for a
   peaked distribution (a few candidates) and a flat one (tens of thousands). */
static void test_sampler_top_p_large(void)
{
    const int V = 256000;
    float *l = (float *)malloc((size_t)V * sizeof(float)), *sorted = (float *)malloc((size_t)V * sizeof(float));
    int *seen = (int *)calloc((size_t)V, sizeof(int));
    double scales[2] = {4.0, 0.05};
    int sc;
    for (sc = 0; sc < 2; sc++) {
        gemma2_sampler_params pp = smp_params();
        gemma2_sampler *s;
        uint64_t x = 99 + (uint64_t)sc;
        double z = 0, acc = 0, cut;
        int i, n_nucleus = 0, bad = 0, distinct = 0;
        for (i = 0; i < V; i++) {
            /* sum of uniforms ~ normal; deterministic */
            double g = 0;
            int k;
            for (k = 0; k < 4; k++) { x = x * 6364136223846793005ull + 1442695040888963407ull; g += (double)(x >> 11) / 9007199254740992.0 - 0.5; }
            l[i] = (float)(g * scales[sc] * 1.7);
        }
        memcpy(sorted, l, (size_t)V * sizeof(float));
        qsort(sorted, (size_t)V, sizeof(float), smp_cmp_desc);
        for (i = 0; i < V; i++) z += exp((double)sorted[i] - sorted[0]);
        for (i = 0; i < V; i++) { acc += exp((double)sorted[i] - sorted[0]) / z; n_nucleus++; if (acc >= 0.9) break; }
        cut = sorted[n_nucleus - 1];
        pp.temperature = 1;
        pp.top_p = 0.9f;
        pp.seed = 5;
        s = gemma2_sampler_new(V, &pp);
        memset(seen, 0, (size_t)V * sizeof(int));
        for (i = 0; i < 500; i++) {
            int t = gemma2_sampler_sample(s, l, NULL, 0);
            if (t < 0 || l[t] < cut) bad++;
            else if (!seen[t]++) distinct++;
        }
        CHECK(bad == 0, "scale %g: %d draws outside the nucleus of %d", scales[sc], bad, n_nucleus);
        if (n_nucleus < 50) CHECK(distinct == n_nucleus, "scale %g: saw %d of %d nucleus tokens", scales[sc], distinct, n_nucleus);
        else CHECK(distinct > 350, "flat: only %d distinct of 500 draws (nucleus %d)", distinct, n_nucleus);
        CHECK(n_nucleus > 5000, "the flat case has a large nucleus (%d)", n_nucleus);
        gemma2_sampler_free(s);
    }
    free(l);
    free(sorted);
    free(seen);
}

static void test_sampler_penalties(void)
{
    float l[6] = {3.0f, 2.0f, -1.0f, 0.5f, 0.0f, -2.0f};
    int32_t hist[6] = {0, 2, 2, 3, 0, 2};
    gemma2_sampler_params pp = smp_params();
    gemma2_sampler *s;
    int i;
    /* repetition: positive logits divided, negative multiplied, each distinct token once */
    pp.repetition_penalty = 2.0f;
    s = gemma2_sampler_new(6, &pp);
    CHECK(gemma2_sampler_sample(s, l, hist, 6) == 1, "token 0 penalised below token 1");
    CHECK(s->w[0] == 1.5f && s->w[2] == -2.0f && s->w[3] == 0.25f && s->w[1] == 2.0f, "w %g %g %g", s->w[0], s->w[2], s->w[3]);
    for (i = 0; i < 6; i++) CHECK(s->count[i] == 0, "counts reset");
    gemma2_sampler_free(s);
    /* window: only the last 2 history tokens (0, 2) */
    pp.penalty_last_n = 2;
    s = gemma2_sampler_new(6, &pp);
    gemma2_sampler_sample(s, l, hist, 6);
    CHECK(s->w[0] == 1.5f && s->w[2] == -2.0f && s->w[3] == 0.5f, "window: w3 %g", s->w[3]);
    gemma2_sampler_free(s);
    /* frequency and presence: logit -= count * f + p */
    pp = smp_params();
    pp.frequency_penalty = 0.5f;
    pp.presence_penalty = 0.25f;
    s = gemma2_sampler_new(6, &pp);
    gemma2_sampler_sample(s, l, hist, 6);
    CHECK(s->w[0] == 3.0f - 1.0f - 0.25f && s->w[2] == -1.0f - 1.5f - 0.25f && s->w[3] == 0.5f - 0.5f - 0.25f &&
          s->w[4] == 0.0f, "freq/presence %g %g %g", s->w[0], s->w[2], s->w[3]);
    gemma2_sampler_free(s);
    /* logit bias: ban the best, boost another; the caller's array need not outlive the call */
    {
        gemma2_logit_bias b[2];
        b[0].token = 0; b[0].bias = -INFINITY;
        b[1].token = 5; b[1].bias = 4.5f;
        pp = smp_params();
        pp.logit_bias = b;
        pp.n_logit_bias = 2;
        s = gemma2_sampler_new(6, &pp);
        b[1].bias = 0;
        CHECK(gemma2_sampler_sample(s, l, NULL, 0) == 5, "bias boost");
        gemma2_sampler_free(s);
    }
}

/* Draws N tokens and checks each is one of the allowed ids (allowed[id] != 0), all in range. */
static int smp_only(gemma2_sampler *s, const float *l, int n, const int32_t *hist, int n_hist, const int *allowed, int N, const char *what)
{
    int i, ok = 1;
    for (i = 0; i < N && ok; i++) {
        int t = gemma2_sampler_sample(s, l, hist, n_hist);
        if (t < 0 || t >= n || !allowed[t]) { ok = 0; CHECK(0, "%s: draw %d gave %d", what, i, t); }
    }
    return ok;
}

/* Infinite, NaN, huge and tiny values through every step: the token is the limit's, never NaN inside,
   never an id out of range, and a NaN logit is an error. */
static void test_sampler_nonfinite(void)
{
    gemma2_sampler_params pp;
    gemma2_sampler *s;
    gemma2_logit_bias b[3];
    double p[8];
    int allowed[8], i, k;
    float l[8];
    static const float tiny_t[4] = {1e-40f, 1e-30f, 1e-10f, 1.17549435e-38f};

    /* one +inf logit: certain, through top-p alone, top-k, min-p, and all of them */
    for (k = 0; k < 4; k++) {
        memcpy(l, smp_l8, sizeof l);
        l[5] = INFINITY;
        pp = smp_params();
        pp.temperature = 1;
        pp.seed = 11 + (uint64_t)k;
        if (k == 0 || k == 3) pp.top_p = 0.9f;
        if (k == 1 || k == 3) pp.top_k = 3;
        if (k == 2 || k == 3) pp.min_p = 0.05f;
        s = gemma2_sampler_new(8, &pp);
        for (i = 0; i < 8; i++) allowed[i] = i == 5;
        smp_only(s, l, 8, NULL, 0, allowed, 2000, "+inf logit");
        gemma2_sampler_free(s);
    }
    /* +inf from the bias (top-p on, top-k off), and a bias of -inf beating a +inf logit */
    pp = smp_params();
    pp.temperature = 0.8f;
    pp.top_p = 0.95f;
    b[0].token = 6; b[0].bias = INFINITY;
    b[1].token = 2; b[1].bias = -INFINITY;
    b[2].token = 6; b[2].bias = 1e30f; /* +inf + finite stays +inf */
    pp.logit_bias = b;
    pp.n_logit_bias = 3;
    s = gemma2_sampler_new(8, &pp);
    for (i = 0; i < 8; i++) allowed[i] = i == 6;
    smp_only(s, smp_l8, 8, NULL, 0, allowed, 2000, "bias +inf");
    memcpy(l, smp_l8, sizeof l);
    l[2] = INFINITY; /* banned by the bias: the other certain token wins */
    smp_only(s, l, 8, NULL, 0, allowed, 500, "ban beats +inf");
    gemma2_sampler_free(s);
    /* two +inf logits: both, equally likely; top-k 5 keeps both (not the 5th best); top-k 1 the lower id;
       greedy the lower id */
    memcpy(l, smp_l8, sizeof l);
    l[2] = INFINITY; l[6] = INFINITY;
    for (i = 0; i < 8; i++) p[i] = (i == 2 || i == 6) ? 0.5 : 0;
    for (k = 0; k < 3; k++) {
        pp = smp_params();
        pp.temperature = k == 2 ? 1e30f : 1.3f;
        pp.top_k = k == 0 ? 5 : 0;
        pp.top_p = k == 1 ? 0.99f : 0;
        pp.seed = 21 + (uint64_t)k;
        s = gemma2_sampler_new(8, &pp);
        smp_check_freq(s, l, 8, p, 20000, "two +inf");
        gemma2_sampler_free(s);
    }
    pp = smp_params();
    pp.temperature = 1;
    pp.top_k = 1;
    s = gemma2_sampler_new(8, &pp);
    for (i = 0; i < 8; i++) allowed[i] = i == 2;
    smp_only(s, l, 8, NULL, 0, allowed, 200, "two +inf, top-k 1");
    gemma2_sampler_free(s);
    s = gemma2_sampler_new(8, NULL);
    CHECK(gemma2_sampler_sample(s, l, NULL, 0) == 2, "greedy, two +inf: the lower id");
    l[2] = -INFINITY;
    CHECK(gemma2_sampler_sample(s, l, NULL, 0) == 6, "greedy with -inf and +inf");
    gemma2_sampler_free(s);

    /* temperature +inf: uniform over the tokens not banned (a banned token times 0 must not become NaN) */
    pp = smp_params();
    pp.temperature = INFINITY;
    pp.seed = 31;
    b[0].token = 3; b[0].bias = -INFINITY;
    pp.logit_bias = b;
    pp.n_logit_bias = 1;
    memcpy(l, smp_l8, sizeof l);
    l[0] = 3e38f; l[7] = -3e38f; /* huge, still finite */
    for (i = 0; i < 8; i++) p[i] = i == 3 ? 0 : 1.0 / 7;
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, l, 8, p, 70000, "T = +inf");
    gemma2_sampler_free(s);
    /* a tiny positive temperature is the T -> 0 limit: the best token; with a tie at the top, the tied ones */
    for (k = 0; k < 4; k++) {
        pp = smp_params();
        pp.temperature = tiny_t[k];
        pp.top_p = k & 1 ? 0.9f : 0;
        pp.seed = 41 + (uint64_t)k;
        s = gemma2_sampler_new(8, &pp);
        for (i = 0; i < 8; i++) allowed[i] = i == 0;
        smp_only(s, smp_l8, 8, NULL, 0, allowed, 500, "tiny temperature");
        memcpy(l, smp_l8, sizeof l);
        l[1] = l[0];
        l[2] = l[0] - 1e-6f;
        for (i = 0; i < 8; i++) p[i] = i < 2 ? 0.5 : 0;
        smp_check_freq(s, l, 8, p, 20000, "tiny temperature, tie");
        gemma2_sampler_free(s);
    }
    /* huge temperature with top-k: uniform over the k best */
    pp = smp_params();
    pp.temperature = 1e38f;
    pp.top_k = 4;
    pp.seed = 51;
    for (i = 0; i < 8; i++) p[i] = i < 4 ? 0.25 : 0;
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, smp_l8, 8, p, 40000, "huge temperature, top-k 4");
    gemma2_sampler_free(s);
    /* extreme top-p / min-p / top-k: tiny top-p keeps the best; min-p above 1 or +inf keeps the best (and its ties);
       top-k beyond the vocabulary is off */
    for (k = 0; k < 3; k++) {
        pp = smp_params();
        pp.temperature = 1;
        pp.seed = 61 + (uint64_t)k;
        if (k == 0) pp.top_p = 1e-45f;
        if (k == 1) pp.min_p = 1e30f;
        if (k == 2) pp.min_p = INFINITY;
        s = gemma2_sampler_new(8, &pp);
        for (i = 0; i < 8; i++) allowed[i] = i == 0;
        smp_only(s, smp_l8, 8, NULL, 0, allowed, 500, "extreme top-p / min-p");
        gemma2_sampler_free(s);
    }
    pp = smp_params();
    pp.temperature = 1;
    pp.top_k = 0x7fffffff;
    pp.seed = 71;
    smp_softmax(smp_l8, 8, 1.0, NULL, p);
    s = gemma2_sampler_new(8, &pp);
    smp_check_freq(s, smp_l8, 8, p, 50000, "top-k INT_MAX");
    gemma2_sampler_free(s);

    /* repetition penalty +inf: positive logits -> 0, negative -> -inf, 0 and the infinities stay */
    {
        float lr[6] = {2.0f, 0.0f, -1.0f, 0.5f, INFINITY, -INFINITY};
        int32_t hist[6] = {0, 1, 2, 4, 5, 1};
        pp = smp_params();
        pp.repetition_penalty = INFINITY;
        s = gemma2_sampler_new(6, &pp);
        CHECK(gemma2_sampler_sample(s, lr, hist, 6) == 4, "rep +inf keeps +inf certain");
        CHECK(s->w[0] == 0 && s->w[1] == 0 && s->w[2] == -INFINITY && s->w[3] == 0.5f && s->w[4] == INFINITY &&
              s->w[5] == -INFINITY, "rep +inf: %g %g %g %g %g %g", s->w[0], s->w[1], s->w[2], s->w[3], s->w[4], s->w[5]);
        gemma2_sampler_free(s);
        lr[4] = -5; lr[3] = -0.5f;
        pp.temperature = 1;
        pp.seed = 81;
        s = gemma2_sampler_new(6, &pp);
        /* w = 0, 0, -inf, -0.5 (not in the history), -inf, -inf */
        {
            double z = 2 + exp(-0.5);
            double pr[6];
            pr[0] = pr[1] = 1 / z; pr[2] = 0; pr[3] = exp(-0.5) / z; pr[4] = 0; pr[5] = 0;
            smp_check_freq2(s, lr, 6, hist, 6, pr, 50000, "rep +inf, sampled");
        }
        gemma2_sampler_free(s);
        /* a tiny repetition penalty sends a repeated positive logit to +inf: certain */
        pp = smp_params();
        pp.repetition_penalty = 1e-40f;
        pp.temperature = 1;
        pp.seed = 82;
        lr[0] = 1; lr[1] = 5; lr[2] = 4; lr[3] = -1; lr[4] = 0; lr[5] = 3;
        s = gemma2_sampler_new(6, &pp);
        for (i = 0; i < 6; i++) allowed[i] = i == 0;
        smp_only(s, lr, 6, hist, 1, allowed, 500, "tiny repetition penalty");
        gemma2_sampler_free(s);
        /* frequency +inf bans a repeated token; presence -inf makes it certain; opposite infinities: frequency
           wins; infinite logits stay */
        pp = smp_params();
        pp.frequency_penalty = INFINITY;
        s = gemma2_sampler_new(6, &pp);
        CHECK(gemma2_sampler_sample(s, lr, hist + 1, 1) == 2, "frequency +inf bans token 1");
        gemma2_sampler_free(s);
        pp.frequency_penalty = 0;
        pp.presence_penalty = -INFINITY;
        pp.temperature = 0.5f;
        pp.top_p = 0.5f;
        s = gemma2_sampler_new(6, &pp);
        for (i = 0; i < 6; i++) allowed[i] = i == 4;
        smp_only(s, lr, 6, hist + 3, 1, allowed, 300, "presence -inf"); /* token 4 in the history */
        gemma2_sampler_free(s);
        pp.frequency_penalty = INFINITY;
        pp.temperature = 1;
        s = gemma2_sampler_new(6, &pp);
        for (i = 0; i < 6; i++) allowed[i] = i == 1;
        smp_only(s, lr, 6, hist, 1, allowed, 300, "frequency +inf and presence -inf"); /* token 0 banned, 1 the best */
        lr[1] = -INFINITY;
        lr[2] = INFINITY;
        for (i = 0; i < 6; i++) allowed[i] = i == 2;
        smp_only(s, lr, 6, hist + 1, 2, allowed, 300, "infinite logits stay"); /* tokens 1, 2 in history */
        gemma2_sampler_free(s);
    }

    /* NaN: in the logits an error (even on a banned token, at any temperature); in a parameter refused */
    memcpy(l, smp_l8, sizeof l);
    l[3] = NAN;
    for (k = 0; k < 2; k++) {
        pp = smp_params();
        pp.temperature = k ? 1.0f : 0.0f;
        b[0].token = 3; b[0].bias = -INFINITY;
        pp.logit_bias = b;
        pp.n_logit_bias = 1;
        s = gemma2_sampler_new(8, &pp);
        CHECK(gemma2_sampler_sample(s, l, NULL, 0) == GEMMA2_ERROR_NUMERIC, "NaN logit, T %d", k);
        gemma2_sampler_free(s);
    }
    CHECK(strcmp(gemma2_error_string(GEMMA2_ERROR_NUMERIC), "unknown error") != 0, "error string");
    for (k = 0; k < 7; k++) {
        pp = smp_params();
        b[0].token = 1; b[0].bias = k == 6 ? NAN : 1.0f;
        pp.logit_bias = b;
        pp.n_logit_bias = 1;
        if (k == 0) pp.temperature = NAN;
        if (k == 1) pp.top_p = NAN;
        if (k == 2) pp.min_p = NAN;
        if (k == 3) pp.repetition_penalty = NAN;
        if (k == 4) pp.frequency_penalty = NAN;
        if (k == 5) pp.presence_penalty = NAN;
        s = gemma2_sampler_new(8, &pp);
        CHECK(s == NULL, "NaN parameter %d refused", k);
        gemma2_sampler_free(s);
    }
}

static void test_sampler_seed(void)
{
    gemma2_sampler_params pp = smp_params();
    gemma2_sampler *a, *b;
    int i, same = 1, diff = 0, ta[64];
    pp.temperature = 1.5f;
    pp.seed = 1234;
    a = gemma2_sampler_new(8, &pp);
    b = gemma2_sampler_new(8, &pp);
    for (i = 0; i < 64; i++) { ta[i] = gemma2_sampler_sample(a, smp_l8, NULL, 0); same &= ta[i] == gemma2_sampler_sample(b, smp_l8, NULL, 0); }
    CHECK(same, "same seed, same tokens");
    gemma2_sampler_seed(b, 1235);
    for (i = 0; i < 64; i++) diff += ta[i] != gemma2_sampler_sample(b, smp_l8, NULL, 0);
    CHECK(diff > 10, "another seed, other tokens (%d differ)", diff);
    gemma2_sampler_seed(b, 1234);
    for (i = 0; i < 64; i++) same &= ta[i] == gemma2_sampler_sample(b, smp_l8, NULL, 0);
    CHECK(same, "reseeding restarts the stream");
    /* The stream is pinned: these values must never change (platform independence). */
    {
        uint64_t st[4], x = 0;
        int k;
        for (k = 0; k < 4; k++) st[k] = gemma2__splitmix64(&x);
        CHECK(st[0] == 0xe220a8397b1dcdafull, "splitmix64(0) %llx", (unsigned long long)st[0]);
        CHECK(gemma2__xoshiro_next(st) != 0, "xoshiro");
    }
    gemma2_sampler_free(a);
    gemma2_sampler_free(b);
}

void suite_sampler(void)
{
    g2t_run("sampler/greedy", test_sampler_greedy);
    g2t_run("sampler/temperature", test_sampler_temperature);
    g2t_run("sampler/top_k_p_min_p", test_sampler_top_k_p_min_p);
    g2t_run("sampler/top_p_large_vocab", test_sampler_top_p_large);
    g2t_run("sampler/penalties", test_sampler_penalties);
    g2t_run("sampler/seed", test_sampler_seed);
    g2t_run("sampler/nonfinite", test_sampler_nonfinite);
}
