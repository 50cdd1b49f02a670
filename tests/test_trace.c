/* The tracing API (gemma2_session_set_trace_ex, gemma2_logit_lens) and examples/trace, compiled in
   here without its main: per-layer norms against the fixtures' hidden states, the logit lens of the
   last layer against the model's logits, attention entropies and key counts, the step events, the
   program's output, and its --shapes numbers against the fixtures' configs and safetensors headers. */
#include "test.h"

#define GEMMA2_TRACE_NO_MAIN
#include "../examples/trace.c"

static gemma2_model *trc_load(const char *name, const char *tokenizer, int kv)
{
    char dir[256], err[256];
    gemma2_options o = gemma2_options_default();
    gemma2_model *m;
    o.n_threads = 2;
    o.no_tokenizer = tokenizer == NULL;
    o.tokenizer_path = tokenizer;
    o.kv_cache = kv;
    snprintf(dir, sizeof dir, "%s", g2t_path("models/"));
    strncat(dir, name, sizeof dir - strlen(dir) - 1);
    m = gemma2_load(dir, &o, err, sizeof err);
    CHECK(m != NULL, "load %s: %s", name, err);
    return m;
}

/* One fixture: the trace of its prompt against its references. */
static void trc_fixture(const char *name)
{
    const gemma2_config *c;
    gemma2_model *m;
    gemma2_session *s;
    mdl_ref ref;
    trace_result r;
    char err[256];
    int l, v, i;
    CHECK(mdl_load_ref(name, &ref), "%s: reference files", name);
    m = trc_load(name, NULL, GEMMA2_KV_F32);
    if (!m) { mdl_free_ref(&ref); return; }
    c = gemma2_model_config(m);
    CHECK(trace_collect(m, ref.ids, ref.P, 5, &r, err, sizeof err) == 0, "%s: trace: %s", name, err);
    if (r.layer) {
        /* |x| of the last prompt token per slice, against the reference's hidden states (the
           fixtures' tolerance for hidden states, 1e-3 relative, carried to the norm) */
        for (l = 0; l <= r.L; l++) {
            const float *h = ref.hidden + ((size_t)l * ref.T + (size_t)(ref.P - 1)) * ref.H;
            double ss = 0, want;
            for (i = 0; i < ref.H; i++) ss += (double)h[i] * h[i];
            want = sqrt(ss);
            CHECK(fabs(r.layer[l].norm - want) <= 1e-3 * (want + 1), "%s: slice %d |x| %f, reference %f", name, l, r.layer[l].norm, want);
        }
        /* the logit lens of the last slice is the model's output: the session's logits, and the reference's */
        s = gemma2_session_new(m, ref.P);
        CHECK(s && gemma2_eval(s, ref.ids, ref.P, NULL) == 0, "%s: eval", name);
        if (s && gemma2_logits(s)) {
            const float *lg = gemma2_logits(s);
            float worst = 0, worst_ref = 0;
            for (v = 0; v < r.V; v++) {
                float e = fabsf(r.lens_last[v] - lg[v]) / (fabsf(lg[v]) + 1.0f);
                if (!(e <= worst)) worst = e != e ? 1e30f : e;
                if (ref.logits) {
                    e = fabsf(r.lens_last[v] - ref.logits[(size_t)(ref.P - 1) * r.V + v]);
                    if (!(e <= worst_ref)) worst_ref = e != e ? 1e30f : e;
                }
            }
            /* the same kernels on the same row; only the split of rows over threads differs */
            CHECK(worst <= 1e-6f, "%s: logit lens of the last layer vs the model's logits: rel diff %g", name, worst);
            CHECK(worst_ref <= 1e-3f, "%s: logit lens of the last layer vs logits.f32: %g", name, worst_ref);
        }
        gemma2_session_free(s);
        CHECK(r.next == ref.ids[ref.P] && r.layer[r.L].top[0] == ref.ids[ref.P], "%s: greedy next %d, lens top %d, reference %d", name, r.next,
              r.layer[r.L].top[0], ref.ids[ref.P]);
        /* the attention of the last token: every head traced, the keys each layer lets it see, and
           entropies between 0 (one key) and log(keys) (all alike) */
        for (l = 1; l <= r.L; l++) {
            const trace_layer *t = &r.layer[l];
            int keys = (l - 1) % 2 == 0 && c->sliding_window < ref.P ? c->sliding_window : ref.P;
            CHECK(t->ent_heads == c->num_attention_heads, "%s: layer %d: %d heads traced", name, l - 1, t->ent_heads);
            CHECK(t->n_keys == keys, "%s: layer %d: the last token sees %d keys, expected %d", name, l - 1, t->n_keys, keys);
            CHECK(t->ent_min >= 0 && t->ent_min <= t->ent_mean + 1e-9 && t->ent_mean <= t->ent_max + 1e-9 && t->ent_max <= log((double)keys) + 1e-5,
                  "%s: layer %d: entropy %g [%g, %g] outside [0, log %d]", name, l - 1, t->ent_mean, t->ent_min, t->ent_max, keys);
            CHECK(t->t_op[0] >= 0 && t->t_op[1] >= 0 && t->t_op[2] >= 0, "%s: layer %d: negative time", name, l - 1);
        }
        trace_result_free(&r);
    }
    gemma2_free(m);
    mdl_free_ref(&ref);
}

static void test_trace_fixtures(void)
{
    trc_fixture("tiny-gqa");
    trc_fixture("tiny-27b-style");
    trc_fixture("tiny-mha-f32-sharded");
    trc_fixture("tiny-realvocab");
}

/* The step events, in order and paired; the attention probabilities sum to 1 and, weighing the
   cached values, give the attention step's own output: on tiny-gqa, whose window (8) cuts the
   sliding layers, with the prompt in uneven passes so that events come from several, in chunks
   of 4 so that the sliding layers' rings (8 + 4 - 1 = 11 slots) wrap, with a float32 and a bf16
   KV cache. */
typedef struct trc_events {
    const gemma2_session *s;  /* to read the attention output and the cache (the test sees the internals) */
    float att_worst;          /* the weights times the cached values against the attention step's output */
    int n_begin, n_end, open, bad_order, n_att, n_res, att_bad_sum, steps_in_layer0;
    const char *open_name;
    char names[16][40];
} trc_events;

static void trc_event(void *user, const gemma2_trace_event *ev)
{
    trc_events *e = (trc_events *)user;
    if (ev->kind == GEMMA2_TRACE_EV_STEP_BEGIN) {
        if (e->open) e->bad_order++;
        e->open = 1;
        e->open_name = ev->step;
        e->n_begin++;
        if (ev->layer == 0 && ev->pos0 == 0 && e->steps_in_layer0 < 16) snprintf(e->names[e->steps_in_layer0++], 40, "%s", ev->step);
    } else if (ev->kind == GEMMA2_TRACE_EV_STEP_END) {
        if (!e->open || strcmp(e->open_name, ev->step) != 0) e->bad_order++;
        e->open = 0;
        e->n_end++;
    } else if (ev->kind == GEMMA2_TRACE_EV_ATTENTION) {
        double sum = 0;
        int i;
        for (i = 0; i < ev->n_keys; i++) sum += ev->weights[i];
        if (fabs(sum - 1) > 1e-5 || ev->key0 + ev->n_keys != ev->pos + 1) e->att_bad_sum++;
        e->n_att++;
        if (e->s) {
            const gemma2_session *s = e->s;
            const gemma2_config *c = &s->m->cfg;
            int hd = c->head_dim, kvh = ev->head / (c->num_attention_heads / c->num_key_value_heads), d, p;
            const float *out = s->att + ((size_t)(ev->pos - ev->pos0) * c->num_attention_heads + (size_t)ev->head) * hd;
            for (d = 0; d < hd; d++) {
                double acc = 0;
                float err;
                for (p = 0; p < ev->n_keys; p++) {
                    size_t at = ((size_t)kvh * s->slots[ev->layer] + (size_t)((ev->key0 + p) % s->slots[ev->layer])) * hd + d;
                    acc += (double)ev->weights[p] * (s->vb ? gemma2__bf16_to_f32(s->vb[ev->layer][at]) : s->v[ev->layer][at]);
                }
                err = (float)fabs(acc - out[d]) / (fabsf(out[d]) + 1.0f);
                if (!(err <= e->att_worst)) e->att_worst = err != err ? 1e30f : err;
            }
        }
    } else if (ev->kind == GEMMA2_TRACE_EV_RESIDUAL) {
        e->n_res++;
    }
}

static void trc_events_run(int kv)
{
    static const char *const layer_steps[] = {"input_norm", "qkv_proj", "rope_and_cache", "attention", "o_proj", "post_attention_norm_residual",
                                              "pre_feedforward_norm", "gate_up_proj", "gelu_gate", "down_proj", "post_feedforward_norm_residual"};
    gemma2_model *m = trc_load("tiny-gqa", NULL, kv);
    gemma2_session *s;
    mdl_ref ref;
    trc_events e;
    int passes[] = {3, 9, 8}, done = 0, k, i, steps, nH, L;
    if (!m) return;
    CHECK(mdl_load_ref("tiny-gqa", &ref), "tiny-gqa: reference files");
    nH = gemma2_model_config(m)->num_attention_heads;
    L = gemma2_model_config(m)->num_hidden_layers;
    s = gemma2__session_new(m, ref.P, 4);
    CHECK(s && s->slots[0] == 11 && (kv == GEMMA2_KV_BF16) == (s->vb != NULL), "session with rings of 11 slots");
    if (!s) { mdl_free_ref(&ref); gemma2_free(m); return; }
    memset(&e, 0, sizeof e);
    e.s = s;
    gemma2_session_set_trace_ex(s, trc_event, &e, GEMMA2_TRACE_RESIDUAL | GEMMA2_TRACE_ATTENTION | GEMMA2_TRACE_STEPS);
    for (k = 0; k < 3; k++) {
        CHECK(gemma2_eval(s, ref.ids + done, passes[k], NULL) == 0, "eval pass %d", k);
        done += passes[k];
    }
    CHECK(done == ref.P, "the passes cover the prompt (%d of %d)", done, ref.P);
    /* 6 passes of at most 4 tokens (3; 4, 4, 1; 4, 4): embed, rope_angles and the layers each, and the
       output logits after the last pass of each of the 3 calls */
    steps = 6 * (2 + L * 11) + 3;
    CHECK(e.n_begin == steps && e.n_end == steps && e.bad_order == 0 && !e.open, "steps: %d begin, %d end, %d out of order", e.n_begin,
          e.n_end, e.bad_order);
    CHECK(e.steps_in_layer0 == 11, "%d steps in layer 0", e.steps_in_layer0);
    for (i = 0; i < 11 && i < e.steps_in_layer0; i++) CHECK(!strcmp(e.names[i], layer_steps[i]), "step %d of a layer: %s", i, e.names[i]);
    CHECK(e.n_att == ref.P * nH * L, "%d attention events, expected %d", e.n_att, ref.P * nH * L);
    CHECK(e.att_worst <= 1e-5f, "the traced weights times the cached values differ from the attention output by %g", e.att_worst);
    CHECK(e.att_bad_sum == 0, "%d attention events whose weights do not sum to 1 or whose keys do not end at the token", e.att_bad_sum);
    CHECK(e.n_res == 6 * (L + 1), "%d residual events", e.n_res);
    /* asking for nothing, or no callback, stops the events */
    memset(&e, 0, sizeof e);
    gemma2_session_set_trace_ex(s, trc_event, &e, 0);
    CHECK(gemma2_session_rewind(s, 0) == 0 && gemma2_eval(s, ref.ids, 4, NULL) == 0, "eval without a trace");
    gemma2_session_set_trace_ex(s, NULL, &e, GEMMA2_TRACE_STEPS);
    CHECK(gemma2_eval(s, ref.ids + 4, 4, NULL) == 0, "eval without a trace");
    CHECK(e.n_begin + e.n_att + e.n_res == 0, "events after the trace was turned off");
    /* only the kinds asked for */
    gemma2_session_set_trace_ex(s, trc_event, &e, GEMMA2_TRACE_RESIDUAL);
    CHECK(gemma2_eval(s, ref.ids + 8, 1, NULL) == 0, "eval");
    CHECK(e.n_res == L + 1 && e.n_begin + e.n_att == 0, "residual only: %d residual, %d steps, %d attention", e.n_res, e.n_begin, e.n_att);
    gemma2_session_free(s);
    CHECK(gemma2_logit_lens(NULL, ref.hidden, 1, NULL) == GEMMA2_ERROR_INVALID_ARGUMENT, "logit lens without a model");
    mdl_free_ref(&ref);
    gemma2_free(m);
}

static void test_trace_events(void)
{
    trc_events_run(GEMMA2_KV_F32);
    trc_events_run(GEMMA2_KV_BF16);
}

/* The program in-process on the real-vocabulary fixture: the tokens, one line per layer, the next token. */
static void test_trace_cli(void)
{
    char dir[256], tok[256], *out;
    char *argv[8];
    FILE *f = tmpfile(), *nul = tmpfile();
    size_t sz;
    long len;
    int rc, l;
    snprintf(dir, sizeof dir, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    argv[0] = (char *)"trace"; argv[1] = (char *)"-m"; argv[2] = dir; argv[3] = (char *)"--tokenizer"; argv[4] = tok;
    argv[5] = (char *)"-p"; argv[6] = (char *)"Hello world"; argv[7] = NULL;
    CHECK(f && nul, "tmpfile");
    if (!f || !nul) return;
    rc = trace_main(7, argv, f, nul);
    CHECK(rc == 0, "trace exit code %d", rc);
    len = ftell(f);
    out = (char *)malloc((size_t)len + 1);
    rewind(f);
    sz = fread(out, 1, (size_t)len, f);
    out[sz] = 0;
    /* <bos> Hello ▁world: ids 2, 4521, 2134 in the real vocabulary */
    CHECK(strstr(out, "prompt: 3 tokens\n") != NULL, "tokens line:\n%s", out);
    CHECK(strstr(out, "     1    4521  \"Hello\"\n") && strstr(out, "     2    2134  \"\xe2\x96\x81world\"\n"), "token lines:\n%s", out);
    for (l = 0; l < 2; l++) {
        char want[32];
        snprintf(want, sizeof want, "\nlayer %2d %s", l, l % 2 == 0 ? "sliding" : "global ");
        CHECK(strstr(out, want) != NULL, "no line for layer %d:\n%s", l, out);
    }
    CHECK(strstr(out, "\nlayer  2") == NULL, "a line for a layer the model does not have:\n%s", out);
    CHECK(strstr(out, "\nnext token (greedy): ") != NULL, "no next token:\n%s", out);
    free(out);
    fclose(f);
    fclose(nul);
}

/* Parameters from the config (--shapes) against the elements the safetensors headers hold. */
static double trc_safetensors_elements(const char *path)
{
    size_t sz;
    unsigned char *b = (unsigned char *)g2t_read_file(path, &sz);
    uint64_t n = 0;
    double total = 0;
    gemma2__json j;
    char err[128];
    int i;
    int32_t c;
    if (!b) return -1;
    for (i = 0; i < 8; i++) n |= (uint64_t)b[i] << (8 * i);
    if (n + 8 > sz || gemma2__json_parse(&j, (const char *)b + 8, (size_t)n, err, sizeof err) != 0) { free(b); return -1; }
    for (c = j.nodes[0].child; c >= 0 && j.nodes[c].next >= 0; c = j.nodes[j.nodes[c].next].next) {
        int32_t shape = gemma2__json_get(&j, j.nodes[c].next, "shape"), d;
        double e = 1;
        int v;
        if (shape < 0) continue; /* __metadata__ */
        for (d = j.nodes[shape].child; d >= 0; d = j.nodes[d].next) e *= gemma2__json_int(&j, d, &v) ? v : 0;
        total += e;
    }
    gemma2__json_free(&j);
    free(b);
    return total;
}

static void test_trace_shapes(void)
{
    static const char *const names[] = {"tiny-gqa", "tiny-27b-style", "tiny-mha-f32-sharded", "tiny-realvocab", "quant-a"};
    static const char *const files[] = {"model.safetensors", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    int i, f;
    for (i = 0; i < 5; i++) {
        char dir[256], path[512];
        char *argv[5];
        gemma2_options o = gemma2_options_default();
        gemma2_model *m;
        trace_shapes sh;
        double elements = 0, e;
        const gemma2_config *c;
        FILE *out = tmpfile();
        snprintf(dir, sizeof dir, "%s/models/%s", g2t_data, names[i]);
        o.tokenizer_only = 1;
        o.no_tokenizer = 1;
        m = gemma2_load(dir, &o, NULL, 0);
        CHECK(m != NULL, "%s: config", names[i]);
        if (!m) continue;
        c = gemma2_model_config(m);
        trace_shapes_compute(c, c->max_position_embeddings, &sh);
        for (f = 0; f < 3; f++) {
            snprintf(path, sizeof path, "%s/%s", dir, files[f]);
            e = trc_safetensors_elements(path);
            if (e > 0) elements += e;
        }
        CHECK(sh.total == elements, "%s: %.0f parameters from config.json, %.0f elements in the safetensors", names[i], sh.total, elements);
        CHECK(sh.kv_bytes_token_f32 == (double)c->num_hidden_layers * 2 * c->num_key_value_heads * c->head_dim * 4, "%s: KV bytes per token", names[i]);
        CHECK(sh.n_sliding == (c->num_hidden_layers + 1) / 2 && sh.n_global == c->num_hidden_layers / 2, "%s: layer kinds", names[i]);
        /* the program prints the same numbers */
        argv[0] = (char *)"trace"; argv[1] = (char *)"-m"; argv[2] = dir; argv[3] = (char *)"--shapes"; argv[4] = NULL;
        if (out) {
            char buf[4096], want[64];
            size_t n;
            CHECK(trace_main(4, argv, out, out) == 0, "%s: --shapes", names[i]);
            rewind(out);
            n = fread(buf, 1, sizeof buf - 1, out);
            buf[n] = 0;
            snprintf(want, sizeof want, "total parameters %.0f ", elements);
            CHECK(strstr(buf, want) != NULL, "%s: --shapes printed:\n%s", names[i], buf);
            fclose(out);
        }
        gemma2_free(m);
    }
}

void suite_trace(void)
{
    g2t_run("trace/fixtures", test_trace_fixtures);
    g2t_run("trace/events", test_trace_events);
    g2t_run("trace/cli", test_trace_cli);
    g2t_run("trace/shapes", test_trace_shapes);
}
