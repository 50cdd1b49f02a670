#include "test.h"

/* Generation, streaming, stop rules, multi-turn chat, scoring and the CLI, end to end on
   tiny-realvocab (random weights, the real 256000-token vocabulary) with the real tokenizer. */

#define GEMMA2_CLI_NO_MAIN
#include "../examples/gemma2.c"

static gemma2_model *gen_model;

static gemma2_model *gen_load(int n_threads)
{
    gemma2_options o;
    char err[256];
    gemma2_model *m;
    memset(&o, 0, sizeof o);
    o.n_threads = n_threads;
    o.tokenizer_path = g2t_path("tokenizer/tokenizer.json");
    m = gemma2_load(g2t_path("models/tiny-realvocab"), &o, err, sizeof err);
    CHECK(m != NULL, "load tiny-realvocab: %s", err);
    return m;
}

static gemma2_model *gen_get(void)
{
    if (!gen_model) gen_model = gen_load(0);
    return gen_model;
}

/* reference.json of tiny-realvocab: prompt_ids, greedy_ids */
static int gen_reference(int32_t *prompt, int *np, int32_t *greedy, int *ng)
{
    char *text = (char *)g2t_read_file(g2t_path("models/tiny-realvocab/reference.json"), NULL);
    gemma2__json j;
    char err[128];
    const char *keys[2] = {"prompt_ids", "greedy_ids"};
    int32_t *outs[2];
    int *ns[2], k;
    outs[0] = prompt; outs[1] = greedy; ns[0] = np; ns[1] = ng;
    if (!text || gemma2__json_parse(&j, text, strlen(text), err, sizeof err) != 0) { free(text); return 0; }
    for (k = 0; k < 2; k++) {
        int32_t c = j.nodes[gemma2__json_get(&j, 0, keys[k])].child;
        *ns[k] = 0;
        for (; c >= 0; c = j.nodes[c].next) { int v = 0; gemma2__json_int(&j, c, &v); outs[k][(*ns[k])++] = v; }
    }
    gemma2__json_free(&j);
    free(text);
    return 1;
}

/* Collects streamed text and tokens. */
typedef struct gen_sink {
    char text[8192];
    size_t len;
    int32_t toks[512];
    int n_toks, n_calls, flushes, stop_after;
} gen_sink;

static int gen_on_token(void *user, int32_t tok, const char *text, size_t len)
{
    gen_sink *k = (gen_sink *)user;
    k->n_calls++;
    if (tok >= 0 && k->n_toks < 512) k->toks[k->n_toks++] = tok;
    if (tok < 0) k->flushes++;
    if (k->len + len < sizeof k->text) { memcpy(k->text + k->len, text, len); k->len += len; }
    k->text[k->len] = 0;
    return k->stop_after > 0 && k->n_toks >= k->stop_after;
}

static gemma2_generate_params gen_params(gen_sink *k)
{
    gemma2_generate_params p;
    memset(&p, 0, sizeof p);
    memset(k, 0, sizeof *k);
    p.on_token = gen_on_token;
    p.user = k;
    return p;
}

static int gen_detok(gemma2_model *m, const int32_t *ids, int n, char *out, size_t cap)
{
    int r = gemma2_detokenize(m, ids, n, out, cap - 1, GEMMA2_DETOKENIZE_SKIP_CONTROL);
    if (r >= 0 && (size_t)r < cap) out[r] = 0;
    return r;
}

static void test_generate_greedy(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, rc;
    gemma2_session *s;
    gemma2_generate_params p;
    gemma2_generate_result r;
    gen_sink k;
    char want[4096];
    if (!m || !gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    s = gemma2_session_new(m, 0);
    p = gen_params(&k);
    p.max_new_tokens = ng;
    rc = gemma2_generate(s, prompt, np, &p, &r);
    CHECK(rc == 0 && r.stop_reason == GEMMA2_STOP_MAX_TOKENS && r.n_generated == ng && r.n_prompt == np, "rc %d reason %d n %d", rc, r.stop_reason, r.n_generated);
    CHECK(k.n_toks == ng && !memcmp(k.toks, greedy, sizeof(int32_t) * (size_t)ng), "greedy ids differ");
    CHECK(gemma2_session_pos(s) == np + ng && !memcmp(gemma2_session_tokens(s) + np, greedy, sizeof(int32_t) * (size_t)ng), "session holds the reply");
    gen_detok(m, greedy, ng, want, sizeof want);
    CHECK(k.len == strlen(want) && !strcmp(k.text, want), "streamed text [%s] vs [%s]", k.text, want);
    /* continue from where it stopped (n_prompt 0): the same as one longer run */
    {
        gen_sink k2;
        gemma2_generate_params p2 = gen_params(&k2);
        p2.max_new_tokens = 3;
        CHECK(gemma2_generate(s, NULL, 0, &p2, &r) == 0 && r.n_generated == 3, "continue");
    }
    gemma2_session_free(s);
}

/* on_prompt: called after each pass (chunk tokens), the same reply as without it; a stop takes the
   prompt back, leaving the session where the call began. */
typedef struct gen_progress { int calls, done[16], total, stop_at; } gen_progress;
typedef struct gen_watch { gen_sink k; gen_progress g; } gen_watch; /* the sink first: on_token reads it */
static float gen_maxdiff(const float *a, const float *b, int n);
static int gen_on_prompt(void *user, int done, int total)
{
    gen_progress *g = &((gen_watch *)user)->g;
    if (g->calls < 16) g->done[g->calls] = done;
    g->total = total;
    return ++g->calls == g->stop_at;
}

static void test_generate_prompt_progress(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, rc, k;
    gen_watch a, b;
    gemma2_generate_params pa, pb;
    gemma2_generate_result r;
    gemma2_session *sa, *sb;
    if (!m || !gen_reference(prompt, &np, greedy, &ng) || np < 9) { CHECK(0, "setup"); return; }
    sa = gemma2__session_new(m, 64, 4);
    sb = gemma2__session_new(m, 64, 4);
    if (!sa || !sb) { CHECK(0, "sessions"); gemma2_session_free(sa); gemma2_session_free(sb); return; }
    pa = gen_params(&a.k);
    pb = gen_params(&b.k);
    memset(&b.g, 0, sizeof b.g);
    pa.max_new_tokens = pb.max_new_tokens = ng;
    pb.on_prompt = gen_on_prompt;
    CHECK(gemma2_generate(sa, prompt, np, &pa, &r) == 0, "without on_prompt");
    rc = gemma2_generate(sb, prompt, np, &pb, &r);
    CHECK(rc == 0 && r.n_prompt == np && b.k.n_toks == a.k.n_toks && !memcmp(a.k.toks, b.k.toks, sizeof(int32_t) * (size_t)a.k.n_toks) &&
          !memcmp(gemma2_logits(sa), gemma2_logits(sb), sizeof(float) * (size_t)gemma2_vocab_size(m)),
          "the same reply and logits with on_prompt: rc %d", rc);
    CHECK(b.g.calls == (np + 3) / 4 && b.g.total == np, "%d calls for %d tokens in passes of 4", b.g.calls, np);
    for (k = 0; k < b.g.calls && k < 16; k++) CHECK(b.g.done[k] == GEMMA2__MIN(4 * (k + 1), np), "call %d: done %d", k, b.g.done[k]);
    /* stopped at the second pass: nothing kept, nothing generated */
    gemma2_session_rewind(sb, 0);
    pb = gen_params(&b.k);
    memset(&b.g, 0, sizeof b.g);
    b.g.stop_at = 2;
    pb.on_prompt = gen_on_prompt;
    pb.max_new_tokens = ng;
    rc = gemma2_generate(sb, prompt, np, &pb, &r);
    CHECK(rc == 0 && r.stop_reason == GEMMA2_STOP_CALLBACK && r.n_prompt == 0 && r.n_generated == 0 && b.k.n_toks == 0 &&
          gemma2_session_pos(sb) == 0, "stopped: rc %d reason %d pos %d", rc, r.stop_reason, gemma2_session_pos(sb));
    /* after 3 tokens: back to 3, with the logits a session of those 3 tokens has */
    CHECK(gemma2_eval(sb, prompt, 3, NULL) == 0 && gemma2_session_rewind(sa, 3) == 0, "3 tokens");
    memset(&b.g, 0, sizeof b.g);
    b.g.stop_at = 1;
    rc = gemma2_generate(sb, prompt + 3, np - 3, &pb, &r);
    CHECK(rc == 0 && r.stop_reason == GEMMA2_STOP_CALLBACK && gemma2_session_pos(sb) == 3 && gemma2_logits(sb) &&
          gen_maxdiff(gemma2_logits(sa), gemma2_logits(sb), gemma2_vocab_size(m)) < 1e-4f, "stopped after 3: rc %d pos %d", rc, gemma2_session_pos(sb));
    gemma2_session_free(sa);
    gemma2_session_free(sb);
}

static void test_generate_stop_rules(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, i, cut = -1;
    gemma2_session *s;
    gemma2_generate_params p;
    gemma2_generate_result r;
    gen_sink k;
    char full[4096], stop[64], pa[256], pb[256];
    const char *stops[2];
    if (!m || !gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    s = gemma2_session_new(m, 0);
    gen_detok(m, greedy, ng, full, sizeof full);
    /* a stop string across a token boundary: the last 2 bytes of a token's text + the first 2 of the next */
    for (i = 1; i + 1 < ng && cut < 0; i++) {
        int la = gen_detok(m, greedy + i, 1, pa, sizeof pa), lb = gen_detok(m, greedy + i + 1, 1, pb, sizeof pb);
        if (la >= 2 && lb >= 2 && (unsigned char)pa[la - 2] < 0x80 && (unsigned char)pb[1] < 0x80) {
            memcpy(stop, pa + la - 2, 2);
            memcpy(stop + 2, pb, 2);
            stop[4] = 0;
            if (strstr(full, stop) && (size_t)(strstr(full, stop) - full) > 0) cut = i;
        }
    }
    CHECK(cut >= 0, "no token pair to build a split stop string from");
    if (cut >= 0) {
        size_t at = (size_t)(strstr(full, stop) - full);
        p = gen_params(&k);
        stops[0] = "never-appears";
        stops[1] = stop;
        p.stop_strings = stops;
        p.n_stop_strings = 2;
        p.max_new_tokens = ng;
        CHECK(gemma2_generate(s, prompt, np, &p, &r) == 0, "generate");
        CHECK(r.stop_reason == GEMMA2_STOP_STRING, "reason %d", r.stop_reason);
        CHECK(k.len == at && !memcmp(k.text, full, at), "text before the stop string: [%s] (want %d bytes of [%s], stop [%s])", k.text, (int)at, full, stop);
        CHECK(k.flushes == 0, "nothing after a stop string");
    }
    /* stop ids: generation ends before the id, which is neither streamed nor evaluated */
    gemma2_session_rewind(s, 0);
    p = gen_params(&k);
    p.stop_ids = &greedy[5];
    p.n_stop_ids = 1;
    CHECK(gemma2_generate(s, prompt, np, &p, &r) == 0 && r.stop_reason == GEMMA2_STOP_EOS && r.stop_id == greedy[5] &&
          r.n_generated == 5 && gemma2_session_pos(s) == np + 5, "stop id: reason %d n %d", r.stop_reason, r.n_generated);
    /* the config's eos ids (1, 107): force 107 with a logit bias */
    {
        gemma2_logit_bias b;
        b.token = 107;
        b.bias = 1000;
        gemma2_session_rewind(s, 0);
        p = gen_params(&k);
        p.sampler.logit_bias = &b;
        p.sampler.n_logit_bias = 1;
        CHECK(gemma2_generate(s, prompt, np, &p, &r) == 0 && r.stop_reason == GEMMA2_STOP_EOS && r.stop_id == 107 &&
              r.n_generated == 0 && k.len == 0, "eos 107: reason %d", r.stop_reason);
        gemma2_session_rewind(s, 0);
        p = gen_params(&k);
        p.sampler.logit_bias = &b;
        p.sampler.n_logit_bias = 1;
        p.ignore_eos = 1;
        p.max_new_tokens = 2;
        CHECK(gemma2_generate(s, prompt, np, &p, &r) == 0 && r.stop_reason == GEMMA2_STOP_MAX_TOKENS && k.n_toks == 2 &&
              k.toks[0] == 107, "ignore_eos");
    }
    /* the callback stops generation */
    gemma2_session_rewind(s, 0);
    p = gen_params(&k);
    k.stop_after = 3;
    CHECK(gemma2_generate(s, prompt, np, &p, &r) == 0 && r.stop_reason == GEMMA2_STOP_CALLBACK && r.n_generated == 3, "callback stop");
    gemma2_session_free(s);
}

/* The stop-string matcher on its own. */
static void gen_hold(gemma2__stream *st, const char *text)
{
    size_t n = strlen(text);
    gemma2__stream_reserve(st, n);
    memcpy(st->hold + st->nhold, text, n);
    st->nhold += n;
}

static void test_generate_stream_unit(void)
{
    gemma2__stream st;
    const char *stops[2] = {"o wor", "!!"};
    size_t keep;
    long at;
    memset(&st, 0, sizeof st);
    st.stops = stops;
    st.n_stops = 2;
    st.max_stop = 5;
    gen_hold(&st, "Hello w");
    at = gemma2__stream_match(&st, &keep);
    CHECK(at < 0 && keep == 3, "prefix 'o w' held back: %ld %d", at, (int)keep);
    gen_hold(&st, "orld");
    at = gemma2__stream_match(&st, &keep);
    CHECK(at == 4, "found at %ld", at);
    st.nhold = 0;
    gen_hold(&st, "x!");
    at = gemma2__stream_match(&st, &keep);
    CHECK(at < 0 && keep == 1, "'!' held");
    st.nhold = 0;
    gen_hold(&st, "a!!b o world");
    at = gemma2__stream_match(&st, &keep);
    CHECK(at == 1, "the earliest match wins: %ld", at);
    gemma2__stream_free(&st);
}

/* A character whose UTF-8 bytes are three byte-fallback tokens (中 = E4 B8 AD) is streamed whole,
   with its last token; the first two deliver nothing. The three tokens are forced with logit
   biases and a presence penalty (logits are within +-30 after the final softcap). */
static void test_generate_utf8_stream(void)
{
    gemma2_model *m = gen_get();
    gemma2_session *s;
    gemma2_generate_params p;
    gemma2_generate_result r;
    gemma2_logit_bias b[3];
    gen_sink k;
    int32_t bos = 2;
    if (!m) return;
    b[0].token = 217 + 0xe4; b[0].bias = 3000;
    b[1].token = 217 + 0xb8; b[1].bias = 2000;
    b[2].token = 217 + 0xad; b[2].bias = 1000;
    s = gemma2_session_new(m, 64);
    p = gen_params(&k);
    p.sampler.logit_bias = b;
    p.sampler.n_logit_bias = 3;
    p.sampler.presence_penalty = 2500;
    p.max_new_tokens = 3;
    CHECK(gemma2_generate(s, &bos, 1, &p, &r) == 0 && k.n_toks == 3, "generate");
    CHECK(k.toks[0] == b[0].token && k.toks[1] == b[1].token && k.toks[2] == b[2].token, "forced bytes");
    CHECK(k.len == 3 && !memcmp(k.text, "\xe4\xb8\xad", 3) && k.n_calls == 3, "whole character: [%s] %d calls", k.text, k.n_calls);
    /* an unfinished character at the end arrives as U+FFFD in the final call (token -1) */
    gemma2_session_rewind(s, 0);
    p = gen_params(&k);
    p.sampler.logit_bias = b;
    p.sampler.n_logit_bias = 3;
    p.sampler.presence_penalty = 2500;
    p.max_new_tokens = 2;
    CHECK(gemma2_generate(s, &bos, 1, &p, &r) == 0 && k.flushes == 1 && k.len == 3 && !memcmp(k.text, "\xef\xbf\xbd", 3),
          "incomplete -> U+FFFD: %d bytes", (int)k.len);
    gemma2_session_free(s);
}

/* Writes a file; returns 1 on success. */
static int gen_write(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok;
    if (!f) return 0;
    ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* eos ids from generation_config.json, in a temporary copy of tiny-realvocab whose config.json
   says only eos 1. */
static void test_generate_generation_config(void)
{
    char dir[256], path[512], *cfg, *p;
    size_t n, wn;
    void *weights;
    gemma2_options o;
    gemma2_model *m;
    char err[256];
    const gemma2_config *c;
    snprintf(dir, sizeof dir, "/tmp/gemma2_test_XXXXXX");
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    cfg = (char *)g2t_read_file(g2t_path("models/tiny-realvocab/config.json"), &n);
    weights = g2t_read_file(g2t_path("models/tiny-realvocab/model.safetensors"), &wn);
    if (!cfg || !weights) { CHECK(0, "read fixture"); free(cfg); free(weights); return; }
    /* "eos_token_id": [\n 1,\n 107\n ] -> "eos_token_id": 1 */
    p = strstr(cfg, "\"eos_token_id\"");
    if (p) {
        char *q = strchr(p, ']');
        const char *rep = "\"eos_token_id\": 1";
        size_t rl = strlen(rep);
        memmove(p + rl, q + 1, strlen(q + 1) + 1);
        memcpy(p, rep, rl);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(gen_write(path, cfg, strlen(cfg)), "write config");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(gen_write(path, weights, wn), "write weights");
    memset(&o, 0, sizeof o);
    o.tokenizer_path = g2t_path("tokenizer/tokenizer.json");
    /* no generation_config.json: only config.json's eos */
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    remove(path);
    m = gemma2_load(dir, &o, err, sizeof err);
    c = m ? gemma2_model_config(m) : NULL;
    CHECK(c && c->n_eos == 1 && c->eos_token_ids[0] == 1, "config.json only: %s", m ? "" : err);
    gemma2_free(m);
    /* an int */
    CHECK(gen_write(path, "{\"bos_token_id\": 2, \"eos_token_id\": 107}", strlen("{\"bos_token_id\": 2, \"eos_token_id\": 107}")), "write");
    m = gemma2_load(dir, &o, err, sizeof err);
    c = m ? gemma2_model_config(m) : NULL;
    CHECK(c && c->n_eos == 2 && c->eos_token_ids[0] == 1 && c->eos_token_ids[1] == 107, "int");
    gemma2_free(m);
    /* a list, duplicates skipped; and generation stops at 107 */
    CHECK(gen_write(path, "{\"eos_token_id\": [1, 107], \"cache_implementation\": \"hybrid\"}", strlen("{\"eos_token_id\": [1, 107], \"cache_implementation\": \"hybrid\"}")), "write");
    m = gemma2_load(dir, &o, err, sizeof err);
    c = m ? gemma2_model_config(m) : NULL;
    CHECK(c && c->n_eos == 2 && c->eos_token_ids[1] == 107, "list");
    if (m) {
        gemma2_session *s = gemma2_session_new(m, 64);
        gemma2_generate_params gp;
        gemma2_generate_result r;
        gemma2_logit_bias b;
        gen_sink k;
        int32_t bos = 2;
        b.token = 107;
        b.bias = 1000;
        gp = gen_params(&k);
        gp.sampler.logit_bias = &b;
        gp.sampler.n_logit_bias = 1;
        CHECK(gemma2_generate(s, &bos, 1, &gp, &r) == 0 && r.stop_reason == GEMMA2_STOP_EOS && r.stop_id == 107, "stops at 107 from generation_config.json");
        gemma2_session_free(s);
    }
    gemma2_free(m);
    /* malformed: the load fails with a reason */
    CHECK(gen_write(path, "{\"eos_token_id\": [1, ", strlen("{\"eos_token_id\": [1, ")), "write");
    m = gemma2_load(dir, &o, err, sizeof err);
    CHECK(!m && strstr(err, "generation_config.json"), "malformed: %s", err);
    gemma2_free(m);
    remove(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    remove(path);
    remove(dir);
    free(cfg);
    free(weights);
}

static float gen_maxdiff(const float *a, const float *b, int n)
{
    float d = 0;
    int i;
    for (i = 0; i < n; i++) if (fabsf(a[i] - b[i]) > d) d = fabsf(a[i] - b[i]);
    return d;
}

/* Three turns with KV reuse == one from-scratch evaluation of the whole conversation. */
static void test_generate_multiturn(void)
{
    gemma2_model *m = gen_get();
    gemma2_session *s, *fresh;
    gemma2_chat *c;
    gemma2_generate_params p;
    gemma2_generate_result r;
    gen_sink k;
    const char *turns[3] = {"Write a hello world program", "Now in C, please.", "  Thanks! <end_of_turn> "};
    memset(&r, 0, sizeof r);
    int t, pos_before = 0, V, n_first;
    int32_t first[64];
    gemma2_message msg;
    if (!m) return;
    V = gemma2_vocab_size(m);
    s = gemma2_session_new(m, 512);
    c = gemma2_chat_new(s, NULL);
    CHECK(c != NULL, "chat_new");
    for (t = 0; t < 3 && c; t++) {
        p = gen_params(&k);
        p.max_new_tokens = 6;
        pos_before = gemma2_session_pos(s);
        CHECK(gemma2_chat_say(c, turns[t], &p, &r) == 0, "turn %d", t);
        /* only the new tokens were evaluated: <end_of_turn>\n closing the last reply + the new turn */
        CHECK(gemma2_session_pos(s) == pos_before + r.n_prompt + r.n_generated, "turn %d positions", t);
        if (t > 0) CHECK(gemma2_session_tokens(s)[pos_before] == 107 && gemma2_session_tokens(s)[pos_before + 1] == 108, "reply closed");
    }
    /* the first turn is exactly gemma2_chat_tokenize's prompt, i.e. the reference prompt */
    msg.role = "user";
    msg.content = turns[0];
    n_first = gemma2_chat_tokenize(m, &msg, 1, 1, first, 64);
    CHECK(n_first == 14 && !memcmp(gemma2_session_tokens(s), first, sizeof(int32_t) * 14), "first turn ids");
    /* from scratch */
    fresh = gemma2_session_new(m, 512);
    CHECK(gemma2_eval(fresh, gemma2_session_tokens(s), gemma2_session_pos(s), NULL) == 0, "fresh eval");
    CHECK(gen_maxdiff(gemma2_logits(s), gemma2_logits(fresh), V) < 1e-3f, "cached vs from scratch: %g", gen_maxdiff(gemma2_logits(s), gemma2_logits(fresh), V));
    gemma2_session_free(fresh);
    /* regenerate with the same (greedy) settings gives the same reply; undo and reset */
    {
        int32_t before[64];
        int n = gemma2_session_pos(s), nrep = r.n_generated;
        memcpy(before, gemma2_session_tokens(s) + n - nrep, sizeof(int32_t) * (size_t)nrep);
        p = gen_params(&k);
        p.max_new_tokens = 6;
        CHECK(gemma2_chat_regenerate(c, &p, &r) == 0 && gemma2_session_pos(s) == n &&
              !memcmp(before, gemma2_session_tokens(s) + n - nrep, sizeof(int32_t) * (size_t)nrep), "regenerate");
        CHECK(gemma2_chat_undo(c) == 0 && gemma2_chat_turns(c) == 2 && gemma2_session_pos(s) == pos_before, "undo");
        CHECK(gemma2_chat_reset(c) == 0 && gemma2_session_pos(s) == 0 && gemma2_chat_turns(c) == 0, "reset");
        CHECK(gemma2_chat_undo(c) == GEMMA2_ERROR_INVALID_ARGUMENT, "nothing to undo");
    }
    gemma2_chat_free(c);
    gemma2_session_free(s);
}

/* A prompt that does not fit: CONTEXT_FULL, session unchanged and still usable; generation that
   reaches n_ctx stops with STOP_CONTEXT_FULL. */
static void test_generate_context_full(void)
{
    gemma2_model *m = gen_get();
    gemma2_session *s;
    gemma2_chat *c;
    gemma2_generate_params p;
    gemma2_generate_result r;
    gen_sink k;
    char longmsg[400];
    if (!m) return;
    memset(longmsg, 0, sizeof longmsg);
    memset(longmsg, 'a', 10);
    { int i; for (i = 0; i < 60; i++) memcpy(longmsg + 10 + i * 5, " word", 5); }
    s = gemma2_session_new(m, 32);
    c = gemma2_chat_new(s, "Be brief.");
    p = gen_params(&k);
    CHECK(gemma2_chat_say(c, longmsg, &p, &r) == GEMMA2_ERROR_CONTEXT_FULL && gemma2_session_pos(s) == 0 && gemma2_chat_turns(c) == 0, "too long");
    p = gen_params(&k);
    CHECK(gemma2_chat_say(c, "Hi", &p, &r) == 0 && r.stop_reason == GEMMA2_STOP_CONTEXT_FULL && gemma2_session_pos(s) == 32, "fills up: reason %d pos %d", r.stop_reason, gemma2_session_pos(s));
    p = gen_params(&k);
    CHECK(gemma2_chat_say(c, "More", &p, &r) == GEMMA2_ERROR_CONTEXT_FULL && gemma2_session_pos(s) == 32 && gemma2_chat_turns(c) == 1, "full");
    CHECK(gemma2_chat_reset(c) == 0, "reset");
    p = gen_params(&k);
    p.max_new_tokens = 2;
    CHECK(gemma2_chat_say(c, "Hi", &p, &r) == 0 && r.n_generated == 2, "usable after reset");
    gemma2_chat_free(c);
    gemma2_session_free(s);
}

/* The same seed gives the same tokens whatever the thread count. */
static void test_generate_threads(void)
{
    int32_t prompt[64], greedy[64], toks[2][24];
    int np = 0, ng = 0, t;
    if (!gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    for (t = 0; t < 2; t++) {
        gemma2_model *m = gen_load(t + 1);
        gemma2_session *s = m ? gemma2_session_new(m, 0) : NULL;
        gemma2_generate_params p;
        gemma2_generate_result r;
        gen_sink k;
        if (!s) { gemma2_free(m); return; }
        p = gen_params(&k);
        p.sampler.temperature = 1.0f;
        p.sampler.top_k = 50;
        p.sampler.top_p = 0.9f;
        p.sampler.seed = 2024;
        p.max_new_tokens = 24;
        CHECK(gemma2_generate(s, prompt, np, &p, &r) == 0 && k.n_toks == 24, "generate");
        memcpy(toks[t], k.toks, sizeof toks[t]);
        gemma2_session_free(s);
        gemma2_free(m);
    }
    CHECK(!memcmp(toks[0], toks[1], sizeof toks[0]), "1 thread vs 2 threads");
}

/* gemma2_score against top_logits.json: logprob of each greedy token = its logit - logsumexp. */
static void test_generate_score(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, g[64], checked = 0;
    float lp[64];
    char *text, err[128];
    gemma2__json j;
    gemma2_session *s;
    if (!m || !gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    s = gemma2_session_new(m, 0);
    CHECK(gemma2_score(s, prompt, np, greedy, ng, lp, g) == 0, "score");
    CHECK(gemma2_session_pos(s) == np + ng, "session holds prompt + continuation");
    text = (char *)g2t_read_file(g2t_path("models/tiny-realvocab/top_logits.json"), NULL);
    if (text && gemma2__json_parse(&j, text, strlen(text), err, sizeof err) == 0) {
        int32_t c = j.nodes[0].type == GEMMA2__JARRAY ? j.nodes[0].child : j.nodes[gemma2__json_get(&j, 0, "positions")].child;
        for (; c >= 0; c = j.nodes[c].next) {
            int pos = -1;
            double lse = 0;
            int32_t e;
            gemma2__json_int(&j, gemma2__json_get(&j, c, "pos"), &pos);
            gemma2__json_number(&j, gemma2__json_get(&j, c, "logsumexp"), &lse);
            if (pos < np - 1 || pos >= np - 1 + ng) continue;
            for (e = j.nodes[gemma2__json_get(&j, c, "top")].child; e >= 0; e = j.nodes[e].next) {
                int id = -1;
                double logit = 0;
                gemma2__json_int(&j, j.nodes[e].child, &id);
                gemma2__json_number(&j, j.nodes[j.nodes[e].child].next, &logit);
                if (id == greedy[pos - np + 1]) {
                    double want = logit - lse;
                    CHECK(fabs(lp[pos - np + 1] - want) < 1e-3, "pos %d: %f vs %f", pos, lp[pos - np + 1], want);
                    CHECK(g[pos - np + 1] == 1, "greedy flag at %d", pos);
                    checked++;
                }
            }
        }
        gemma2__json_free(&j);
    }
    CHECK(checked == ng, "checked %d of %d", checked, ng);
    free(text);
    /* does not fit: error, session as it was */
    gemma2_session_free(s);
    s = gemma2_session_new(m, 20);
    CHECK(gemma2_score(s, prompt, np, greedy, ng, lp, NULL) == GEMMA2_ERROR_CONTEXT_FULL && gemma2_session_pos(s) == 0, "context full");
    gemma2_session_free(s);
}

/* The CLI, in-process: its stdout must be exactly the generated text. */
static int gen_cli(const char *const *args, int n, const char *input, char *out, size_t cap, char *errbuf, size_t ecap)
{
    char *argv[32];
    FILE *in = tmpfile(), *o = tmpfile(), *e = tmpfile();
    int i, rc;
    size_t got;
    argv[0] = (char *)"gemma2";
    for (i = 0; i < n; i++) argv[i + 1] = (char *)args[i];
    argv[n + 1] = NULL;
    if (input) fputs(input, in);
    rewind(in);
    rc = cli_main(n + 1, argv, in, o, e);
    rewind(o);
    got = fread(out, 1, cap - 1, o);
    out[got] = 0;
    rewind(e);
    got = fread(errbuf, 1, ecap - 1, e);
    errbuf[got] = 0;
    fclose(in);
    fclose(o);
    fclose(e);
    return rc;
}

static void test_generate_cli(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, rc;
    char want[4096], out[8192], err[8192], model[512], tok[512], n16[8];
    if (!m || !gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    gen_detok(m, greedy, ng, want, sizeof want);
    if (!want[0] || want[strlen(want) - 1] != '\n') strcat(want, "\n"); /* one-shot stdout ends with a newline */
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    snprintf(n16, sizeof n16, "%d", ng);
    {   /* chat mode: -p is one user turn */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-p", "Write a hello world program"};
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want), "chat: rc %d out [%s] want [%s] err [%s]", rc, out, want, err);
        CHECK(strstr(err, "tokens/s") != NULL, "timings on stderr");
    }
    {   /* --raw: <bos> + the text (markers written in it are matched) */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--raw", "-p",
                           "<start_of_turn>user\nWrite a hello world program<end_of_turn>\n<start_of_turn>model\n"};
        rc = gen_cli(a, 11, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want), "raw: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* the lossy speed options are passed through (their accuracy: model/kv_bf16, model/compute_bf16) */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--kv-bf16", "--compute-bf16", "-p", "Write a hello world program"};
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0] && strstr(err, "compute bf16, KV cache bf16") != NULL, "bf16 options: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* --no-mmap reads the weights into memory (same text); a later --mmap maps them again */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--no-mmap", "-p", "Write a hello world program", "--mmap"};
        rc = gen_cli(a, 11, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, "(read into memory)") != NULL, "--no-mmap: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, "(read into memory)") == NULL, "--mmap: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* interactive: two turns, /reset, /quit; stdout holds the replies, one per line */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-i"};
        rc = gen_cli(a, 9, "Hello\nAgain\n/reset\n/quit\nnot read\n", out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && strstr(err, "cleared") != NULL, "interactive: rc %d err [%s]", rc, err);
        { int nl = 0; char *p; for (p = out; *p; p++) nl += *p == '\n'; CHECK(nl >= 2, "two replies"); }
    }
    {   /* errors: one line on stderr, non-zero exit */
        const char *a1[] = {"-p", "hi"};
        const char *a2[] = {"-m", "no/such/folder", "-p", "hi"};
        const char *a3[] = {"-m", model, "--temp", "abc", "-p", "hi"};
        const char *a4[] = {"-m", model, "--bogus"};
        const char *a5[] = {"-m", model, "-n"};
        CHECK(gen_cli(a1, 2, NULL, out, sizeof out, err, sizeof err) != 0 && strstr(err, "error") && !out[0], "no model");
        CHECK(gen_cli(a2, 4, NULL, out, sizeof out, err, sizeof err) != 0 && strstr(err, "error"), "missing folder: %s", err);
        CHECK(gen_cli(a3, 6, NULL, out, sizeof out, err, sizeof err) != 0 && strstr(err, "--temp"), "bad number: %s", err);
        CHECK(gen_cli(a4, 3, NULL, out, sizeof out, err, sizeof err) != 0 && strstr(err, "--bogus"), "unknown flag");
        CHECK(gen_cli(a5, 3, NULL, out, sizeof out, err, sizeof err) != 0 && strstr(err, "-n"), "missing value");
        {   /* a folder without a tokenizer: the error names the folder and the way out */
            const char *a6[] = {"-m", model, "-p", "hi"};
            CHECK(gen_cli(a6, 4, NULL, out, sizeof out, err, sizeof err) != 0 && strstr(err, "no tokenizer.json or tokenizer.model in") &&
                      strstr(err, "--tokenizer FILE"), "no tokenizer: %s", err);
        }
    }
}

/* The flags a llama.cpp user types, and the edges of the values: unknown is unknown wherever it
   stands, --flag=value, -n/-c/-t/--seed's special values, the prompt from stdin, the llama.cpp
   spellings (each gives what its own flag gives), the ignored GPU/log flags (one note). */
static void test_generate_cli_flags(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, rc, hello;
    char want[4096], out[8192], out2[8192], err[8192], model[512], tok[512], n16[8], line[256], bias[64];
    const char *q = "Write a hello world program";
    if (!m || !gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    gen_detok(m, greedy, ng, want, sizeof want);
    if (!want[0] || want[strlen(want) - 1] != '\n') strcat(want, "\n");
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    snprintf(n16, sizeof n16, "%d", ng);
    {   /* unknown at the end of the line is unknown, not "needs a value"; --version is known */
        const char *a[] = {"-m", model, "-p", "hi", "--verbose"};
        const char *b[] = {"-m", model, "-p", "hi", "-v"};
        const char *c[] = {"--version"};
        rc = gen_cli(a, 5, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "unknown argument '--verbose'") && !strstr(err, "needs a value"), "--verbose: rc %d err [%s]", rc, err);
        rc = gen_cli(b, 5, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "unknown argument '-v'"), "-v: rc %d err [%s]", rc, err);
        rc = gen_cli(c, 1, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, "gemma2 " GEMMA2_VERSION_STRING "\n") && !err[0], "--version: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* --flag=value; a flag without a value refuses one */
        char t[600], nn[32];
        const char *a[] = {"-m", model, t, "--temp=0", nn, "--prompt=Write a hello world program"};
        const char *b[] = {"-m", model, "--raw=1", "-p", "hi"};
        snprintf(t, sizeof t, "--tokenizer=%s", tok);
        snprintf(nn, sizeof nn, "--n-predict=%d", ng);
        rc = gen_cli(a, 6, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want), "--flag=value: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(b, 5, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "--raw takes no value"), "--raw=1: rc %d err [%s]", rc, err);
        snprintf(nn, sizeof nn, "-n=%d", ng);   /* short flags too */
        a[4] = nn;
        rc = gen_cli(a, 6, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want), "-n=N: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* a prompt longer than the context: both numbers; more than the model's maximum: lowered, with a note */
        const char *a[] = {"-m", model, "--tokenizer", tok, "-c", "5", "-p", q};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-c", "9000", "-p", q};
        const char *c[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-c", "999999999", "-p", q};
        int mx = gemma2_model_config(m)->max_position_embeddings;
        rc = gen_cli(a, 8, NULL, out, sizeof out, err, sizeof err);
        snprintf(line, sizeof line, "gemma2: error: the prompt is %d tokens; the context holds 5 (-c)\n", np);
        CHECK(rc != 0 && !out[0] && strstr(err, line), "-c 5: rc %d err [%s] want [%s]", rc, err, line);
        rc = gen_cli(b, 12, NULL, out, sizeof out, err, sizeof err);
        snprintf(line, sizeof line, "context %d tokens", mx);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, "note: -c 9000 is more than") && strstr(err, line), "-c 9000: rc %d err [%s]", rc, err);
        rc = gen_cli(c, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, "note: -c 999999999 is more than") && strstr(err, line), "-c 999999999: rc %d err [%s]", rc, err);
    }
    {   /* -n 0: the prompt only; -n -1 and -2: until the context is full here; -n -3: a bad value */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "0", "-p", q};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "-1", "-c", "24", "-p", q};
        const char *c[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "-2", "-c", "24", "-p", q};
        const char *d[] = {"-m", model, "-n", "-3", "-p", q};
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        snprintf(line, sizeof line, "prompt: %d tokens in", np);
        CHECK(rc == 0 && !out[0] && strstr(err, line) && strstr(err, "generation: 0 tokens"), "-n 0: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(b, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0] && (strstr(err, "stop: context full") || strstr(err, "stop: end of turn")), "-n -1: rc %d err [%s]", rc, err);
        rc = gen_cli(c, 12, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2), "-n -2: rc %d out [%s] vs [%s]", rc, out2, out);
        rc = gen_cli(d, 6, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "bad value '-3' for -n"), "-n -3: rc %d err [%s]", rc, err);
    }
    {   /* --seed -1 is the clock's seed; -s is --seed; -t 0 all cores; -t 1000 lowered with a note */
        const char *a[] = {"-m", model, "--tokenizer", tok, "-n", "8", "--seed", "7", "-p", q};
        const char *b[] = {"-m", model, "--tokenizer", tok, "-n", "8", "-s", "7", "-t", "0", "-p", q};
        const char *c[] = {"-m", model, "--tokenizer", tok, "-n", "8", "--seed", "-1", "-t", "1000", "-p", q};
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0] && strstr(err, "seed 7\n"), "--seed 7: rc %d err [%s]", rc, err);
        rc = gen_cli(b, 12, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2), "-s 7 -t 0: rc %d out [%s] vs [%s] err [%s]", rc, out2, out, err);
        rc = gen_cli(c, 12, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && out2[0] && strstr(err, "note: -t 1000 is more than the") && strstr(err, ", seed "), "--seed -1 -t 1000: rc %d err [%s]", rc, err);
    }
    {   /* the prompt from stdin: -f -, and piped with no -p; an empty pipe is no prompt */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-f", "-"};
        rc = gen_cli(a, 10, q, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want), "-f -: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(a, 8, q, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want), "piped: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(a, 8, " \n", out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "no prompt: stdin was empty"), "empty pipe: rc %d err [%s]", rc, err);
    }
    {   /* llama.cpp's spellings give what ours give */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "6", "--system", "Be brief.", "-p", q};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "--predict", "6", "-sys", "Be brief.", "-p", q};
        const char *c[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "6", "--system-prompt", "Be brief.", "-p", q};
        const char *d[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-no-cnv", "-p",
                           "<start_of_turn>user\nWrite a hello world program<end_of_turn>\n<start_of_turn>model\n"};
        const char *e[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-cnv", "-st", "-p", q};
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0], "--system: rc %d err [%s]", rc, err);
        rc = gen_cli(b, 12, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2), "-sys --predict: [%s] vs [%s] err [%s]", out2, out, err);
        rc = gen_cli(c, 12, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2), "--system-prompt: [%s] vs [%s]", out2, out);
        rc = gen_cli(d, 11, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want), "-no-cnv: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(e, 12, "not read\n", out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) && !strstr(err, "interactive"), "-cnv -st: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* -r is --stop */
        char stop[8];
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--stop", stop, "-p", q};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-r", stop, "-p", q};
        const char *c[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--reverse-prompt", stop, "-p", q};
        memcpy(stop, want + 6, 3);
        stop[3] = 0;
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && strlen(out) < strlen(want) && strstr(err, "stop: stop string"), "--stop: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(b, 12, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2), "-r: [%s] vs [%s]", out2, out);
        rc = gen_cli(c, 12, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2), "--reverse-prompt: [%s] vs [%s]", out2, out);
    }
    {   /* -ctk/-ctv: bf16 is --kv-bf16; f16 is not a type here; K and V cannot differ */
        const char *a[] = {"-m", model, "--tokenizer", tok, "-n", "2", "-ctk", "bf16", "--cache-type-v", "bf16", "-p", q};
        const char *b[] = {"-m", model, "-ctk", "f16", "-p", q};
        const char *c[] = {"-m", model, "-ctk", "bf16", "-ctv", "f32", "-p", q};
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && strstr(err, "KV cache bf16"), "-ctk bf16: rc %d err [%s]", rc, err);
        rc = gen_cli(b, 6, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "bad value 'f16' for -ctk"), "-ctk f16: rc %d err [%s]", rc, err);
        rc = gen_cli(c, 8, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "-ctk and -ctv differ"), "-ctk/-ctv: rc %d err [%s]", rc, err);
    }
    {   /* -l ID+inf: greedy takes that token every time; an id outside the vocabulary is an error */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "3", "-l", bias, "-p", q};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--logit-bias", "999999+1", "-p", q};
        const char *c[] = {"-m", model, "--logit-bias", "12", "-p", q};
        hello = gemma2_token_id(m, "Hello", 5);
        CHECK(hello >= 0, "token Hello");
        snprintf(bias, sizeof bias, "%d+inf", hello);
        rc = gen_cli(a, 12, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, "HelloHelloHello\n"), "-l: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(b, 8, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "--logit-bias token 999999 is not in the vocabulary"), "-l 999999: rc %d err [%s]", rc, err);
        rc = gen_cli(c, 5, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "bad value '12' for --logit-bias"), "-l 12: rc %d err [%s]", rc, err);
    }
    {   /* --verbose-prompt: the ids, pieces quoted; the GPU/log flags: one note, the same text */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "--verbose-prompt", "-p", q};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-ngl", "99", "--color", "-fa", "on",
                           "--mlock", "--log-disable", "--n-gpu-layers", "5", "--flash-attn", "-p", q};
        rc = gen_cli(a, 11, NULL, out, sizeof out, err, sizeof err);
        snprintf(line, sizeof line, "prompt: %d tokens\n%6d -> '<bos>'\n%6d -> '<start_of_turn>'\n", np, (int)prompt[0], (int)prompt[1]);
        CHECK(rc == 0 && !strcmp(out, want) && strstr(err, line), "--verbose-prompt: rc %d err [%s] want [%s]", rc, err, line);
        rc = gen_cli(b, 20, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, want) &&
              strstr(err, "gemma2: note: ignored -ngl, --color, -fa, --mlock, --log-disable, --n-gpu-layers, --flash-attn (") &&
              !strstr(strstr(err, "note: ignored") + 1, "note: ignored"),
              "ignored flags: rc %d out [%s] err [%s]", rc, out, err);
    }
}

/* stderr in a log (the tests' files are not terminals): whole progress lines, no \r; the timings
   line has ms per token and the total. */
static void test_generate_cli_output(void)
{
    char out[8192], err[8192], model[512], tok[512];
    const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-p", "hi"};
    int rc;
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
    CHECK(rc == 0 && out[0] && out[strlen(out) - 1] == '\n', "stdout ends with a newline: [%s]", out);
    CHECK(!strchr(err, '\r') && strstr(err, "loading model: 100%\n"), "progress lines: [%s]", err);
    CHECK(strstr(err, " ms/token) | generation: ") && strstr(err, " ms/token) | total ") && strstr(err, " s | stop: "), "timings: [%s]", err);
}

/* The chat's commands: /help lists them (/exit too), an unknown one is not sent to the model,
   /regen with nothing to redo says so; -i -p shows the first question; end of input leaves
   stderr on a new line. */
static void test_generate_cli_interactive(void)
{
    char out[8192], err[8192], model[512], tok[512];
    const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-i"};
    const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-i", "-p", "Write a hello world program"};
    int rc, nl;
    char *p;
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    rc = gen_cli(a, 9, "/help\n/regen\n/bogus thing\nHello\n/exit\nnot read\n", out, sizeof out, err, sizeof err);
    for (nl = 0, p = out; *p; p++) nl += *p == '\n';
    CHECK(rc == 0 && nl == 1, "one reply only: rc %d out [%s] err [%s]", rc, out, err);
    CHECK(strstr(err, "  /help ") && strstr(err, "  /quit, /exit ") && strstr(err, "  /regen ") && strstr(err, "  /undo "), "/help: [%s]", err);
    CHECK(strstr(err, "(nothing to regenerate: no reply yet)\n") && strstr(err, "(unknown command /bogus thing, /help lists them)\n"), "/regen, /bogus: [%s]", err);
    rc = gen_cli(b, 11, "Again\n", out, sizeof out, err, sizeof err);
    for (nl = 0, p = out; *p; p++) nl += *p == '\n';
    CHECK(rc == 0 && nl == 2 && strstr(err, "> Write a hello world program\n"), "-i -p: rc %d out [%s] err [%s]", rc, out, err);
    CHECK(strlen(err) > 3 && !strcmp(err + strlen(err) - 3, "> \n"), "end of input: a newline: [%s]", err);
}

/* Ctrl-C, by raising SIGINT where a key press lands (cli_test_hook): in a one-shot run it stops the
   reply and the exit status is 130; in the chat it stops the reply and is spent with it (the next
   reply runs whole); at the prompt the first one drops the line and says how to leave, a second
   one in a row leaves. */
static unsigned gen_sig_reads, gen_sig_tokens, gen_sig_passes; /* bit k: SIGINT at the k-th line read / token / prompt pass */
static int gen_sig_nread, gen_sig_ntok, gen_sig_npass;
static void gen_sig_hook(int at, int n)
{
    (void)n;
    if (at == CLI_AT_TOKEN) { if (++gen_sig_ntok < 32 && ((gen_sig_tokens >> gen_sig_ntok) & 1)) raise(SIGINT); }
    else if (at == CLI_AT_PROMPT) { if (++gen_sig_npass < 32 && ((gen_sig_passes >> gen_sig_npass) & 1)) raise(SIGINT); }
    else if (++gen_sig_nread < 32 && ((gen_sig_reads >> gen_sig_nread) & 1)) raise(SIGINT);
}

static void gen_sig_arm(unsigned reads, unsigned tokens)
{
    gen_sig_reads = reads;
    gen_sig_tokens = tokens;
    gen_sig_passes = 0;
    gen_sig_nread = gen_sig_ntok = gen_sig_npass = 0;
    cli_test_hook = gen_sig_hook;
}

static void test_generate_cli_sigint(void)
{
    gemma2_model *m = gen_get();
    int32_t prompt[64], greedy[64];
    int np = 0, ng = 0, rc, nl;
    char want[4096], out[8192], err[8192], model[512], tok[512], n16[8], *p;
    if (!m || !gen_reference(prompt, &np, greedy, &ng)) { CHECK(0, "setup"); return; }
    gen_detok(m, greedy, ng, want, sizeof want);
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    snprintf(n16, sizeof n16, "%d", ng);
    {   /* one-shot: stopped at the 3rd token, status 130 */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", n16, "-p", "Write a hello world program"};
        gen_sig_arm(0, 1u << 3);
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 130 && strlen(out) < strlen(want) && !strncmp(out, want, strlen(out) - 1) && strstr(err, "generation: 3 tokens") &&
              strstr(err, "stop: interrupted"), "one-shot: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* chat: the first reply stopped, the second whole */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-i"};
        gen_sig_arm(0, 1u << 2);
        rc = gen_cli(a, 9, "Hello\nAgain\n/quit\n", out, sizeof out, err, sizeof err);
        p = strstr(err, "stop: interrupted");
        CHECK(rc == 0 && p && strstr(p, "generation: 4 tokens") && strstr(p, "stop: -n reached"), "reply: rc %d err [%s]", rc, err);
    }
    {   /* a long prompt (two passes): its progress in whole lines; Ctrl-C after its first pass stops
           before any reply, status 130 */
        char longp[1200];
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "2", "-p", longp};
        int k;
        for (k = 0, longp[0] = 0; k < 150; k++) strcat(longp, "word ");
        gen_sig_arm(0, 0);
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        p = strstr(err, "prompt: 128/");
        CHECK(rc == 0 && p && strstr(p, " tokens\n") && !strchr(err, '\r') && strstr(err, "generation: 2 tokens"), "progress: rc %d err [%s]", rc, err);
        gen_sig_arm(0, 0);
        gen_sig_passes = 1u << 1;
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 130 && !out[0] && strstr(err, "prompt: 128/") && strstr(err, "prompt: 0 tokens") && strstr(err, "stop: interrupted"),
              "stopped in the prompt: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* at the prompt: the line is dropped and the way out said; then a message is answered */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-i"};
        gen_sig_arm(1u << 1, 0);
        rc = gen_cli(a, 9, "Hello\nAgain\n/quit\n", out, sizeof out, err, sizeof err);
        for (nl = 0, p = out; *p; p++) nl += *p == '\n';
        CHECK(rc == 0 && nl == 1 && strstr(err, "> \n(Ctrl-C again, /quit or Ctrl-D to leave)\n"), "idle: rc %d out [%s] err [%s]", rc, out, err);
        gen_sig_arm((1u << 1) | (1u << 2), 0);
        rc = gen_cli(a, 9, "Hello\nAgain\n/quit\n", out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && !out[0] && strstr(err, "Ctrl-C again") && !strstr(strstr(err, "Ctrl-C again") + 1, "Ctrl-C again") &&
              !strstr(err, "tokens/s"), "idle twice: rc %d out [%s] err [%s]", rc, out, err);
    }
    cli_test_hook = NULL;
}

/* Every flag --help names is in the README's table, and the other way round, and the parser
   knows each (and --help names every name the parser knows). */
static int gen_flags_add(char names[][32], int n, const char *w, size_t len)
{
    int k;
    while (len && (w[len - 1] == ',' || w[len - 1] == '`')) len--;
    if (len < 2 || len > 31 || w[0] != '-' || !(w[1] == '-' || (w[1] >= 'a' && w[1] <= 'z') || (w[1] >= 'A' && w[1] <= 'Z'))) return n;
    for (k = 0; k < n; k++) if (strlen(names[k]) == len && !memcmp(names[k], w, len)) return n;
    if (n < 128) { memcpy(names[n], w, len); names[n][len] = 0; n++; }
    return n;
}

static void test_generate_cli_help_readme(void)
{
    static char help_names[128][32], readme_names[128][32];
    int nh = 0, nr = 0, k;
    size_t size = 0;
    char *help, *readme, *sec, *end, *line;
    FILE *f = tmpfile();
    if (!f) { CHECK(0, "tmpfile"); return; }
    cli_usage(f);
    size = (size_t)ftell(f);
    rewind(f);
    help = (char *)calloc(1, size + 1);
    if (!help || fread(help, 1, size, f) != size) { CHECK(0, "read help"); fclose(f); free(help); return; }
    fclose(f);
    /* --help: a flag line starts with 2 or 6 spaces and a '-'; its flags run to two spaces in a row */
    for (line = help; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        size_t ind = strspn(line, " "), span;
        char *w;
        if ((ind != 2 && ind != 6) || line[ind] != '-') continue;
        w = line + ind;
        span = strcspn(w, "\n");
        { char *two = strstr(w, "  "); if (two && (size_t)(two - w) < span) span = (size_t)(two - w); }
        while (span > 0) {
            size_t wl = strcspn(w, " \n");
            if (wl > span) wl = span;
            nh = gen_flags_add(help_names, nh, w, wl);
            w += wl;
            span -= wl;
            while (span > 0 && *w == ' ') { w++; span--; }
        }
    }
    readme = (char *)g2t_read_file(g2t_path("../../README.md"), NULL);
    if (!readme) { CHECK(0, "README.md"); free(help); return; }
    sec = strstr(readme, "\n## The command-line program");
    end = sec ? strstr(sec + 1, "\n## ") : NULL;
    CHECK(sec && end, "README's CLI section");
    if (sec && end) {
        *end = 0;
        /* the table's first column: every `-flag ...` span names one flag */
        for (line = sec; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
            char *cell_end, *b;
            if (strncmp(line, "| `", 3)) continue;
            cell_end = strchr(line + 1, '|');
            for (b = strchr(line, '`'); b && b < cell_end; b = strchr(strchr(b + 1, '`') + 1, '`')) {
                nr = gen_flags_add(readme_names, nr, b + 1, strcspn(b + 1, " `"));
                if (!strchr(b + 1, '`')) break;
            }
        }
    }
    CHECK(nh > 30 && nr > 30, "found %d flags in --help, %d in the README", nh, nr);
    for (k = 0; k < nh; k++) {
        int j, found = 0;
        for (j = 0; j < nr; j++) found |= !strcmp(help_names[k], readme_names[j]);
        CHECK(found, "%s is in --help, not in the README's table", help_names[k]);
        CHECK(cli_flag_find(help_names[k], strlen(help_names[k])) != NULL, "%s is in --help, the parser does not know it", help_names[k]);
    }
    for (k = 0; k < nr; k++) {
        int j, found = 0;
        for (j = 0; j < nh; j++) found |= !strcmp(readme_names[k], help_names[j]);
        CHECK(found, "%s is in the README's table, not in --help", readme_names[k]);
    }
    for (k = 0; k < (int)(sizeof cli_flags / sizeof cli_flags[0]); k++) {
        int j, found = 0;
        for (j = 0; j < nh; j++) found |= !strcmp(cli_flags[k].name, help_names[j]);
        CHECK(found, "the parser knows %s, --help does not name it", cli_flags[k].name);
    }
    free(readme);
    free(help);
}

/* --q4 quantizes at load and says so on stderr; the folder gemma2_save_quantized writes runs
   with no flag and generates exactly the same text, and says it runs as saved (with --q4 too:
   nothing is quantized at load then); asking it for --q8 is a one-line error. */
static void test_generate_cli_quantized(void)
{
    char base[64] = "/tmp/gemma2_test_XXXXXX", saved[600], path[700], out[8192], out2[8192], err[8192], model[512], tok[512], emsg[512];
    const char *prompt = "Write a hello world program";
    int rc;
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    if (!mkdtemp(base)) { CHECK(0, "mkdtemp"); return; }
    snprintf(saved, sizeof saved, "%s/q4", base);
    rc = gemma2_save_quantized(model, saved, GEMMA2_WEIGHTS_Q4, NULL, emsg, sizeof emsg);
    CHECK(rc == 0, "save: %s", emsg);
    {
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "12", "--q4", "-p", prompt};
        rc = gen_cli(a, 11, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0] && strstr(err, "weights q4 (embedding q8), quantized at load\n"), "--q4: rc %d out [%s] err [%s]", rc, out, err);
    }
    {
        const char *a[] = {"-m", saved, "--tokenizer", tok, "--temp", "0", "-n", "12", "-p", prompt};
        rc = gen_cli(a, 10, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2) && strstr(err, "weights q4 (embedding q8), as saved in the folder\n") && !strstr(err, "at load"),
              "saved q4: rc %d out [%s] want [%s] err [%s]", rc, out2, out, err);
    }
    {
        const char *a[] = {"-m", saved, "--tokenizer", tok, "--temp", "0", "-n", "12", "--q4", "-p", prompt};
        rc = gen_cli(a, 11, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2) && strstr(err, "as saved in the folder") && !strstr(err, "at load"),
              "saved q4 with --q4: rc %d out [%s] want [%s] err [%s]", rc, out2, out, err);
    }
    {
        const char *a[] = {"-m", saved, "--tokenizer", tok, "--q8", "-p", prompt};
        const char *b[] = {"-m", model, "--q8", "--q4", "-p", prompt};
        rc = gen_cli(a, 7, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc != 0 && !out2[0] && strstr(err, "gemma2: error:") && strstr(err, "saved quantized as q4"), "saved q4 with --q8: rc %d err [%s]", rc, err);
        rc = gen_cli(b, 6, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc != 0 && strstr(err, "not both"), "--q8 --q4: rc %d err [%s]", rc, err);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", saved);
    remove(path);
    snprintf(path, sizeof path, "%s/config.json", saved);
    remove(path);
    rmdir(saved);
    rmdir(base);
}

/* What the CLI reads must be what it says: a prompt file is read whole (a NUL byte is refused,
   not taken for the end of the text), a folder given for a file is a one-line error, not an
   empty prompt or an 8 EiB allocation. */
static void test_generate_cli_files(void)
{
    char base[64] = "/tmp/gemma2_test_XXXXXX", file[600], out[8192], out2[8192], err[8192], model[512], tok[512];
    FILE *f;
    int rc;
    snprintf(model, sizeof model, "%s", g2t_path("models/tiny-realvocab"));
    snprintf(tok, sizeof tok, "%s", g2t_path("tokenizer/tokenizer.json"));
    if (!mkdtemp(base)) { CHECK(0, "mkdtemp"); return; }
    snprintf(file, sizeof file, "%s/prompt.txt", base);
    {   /* a prompt file is the same prompt as -p */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-f", file};
        const char *b[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-p", "Hello there"};
        if ((f = fopen(file, "wb")) != NULL) { fputs("Hello there", f); fclose(f); }
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc == 0 && out[0], "-f: rc %d err [%s]", rc, err);
        rc = gen_cli(b, 10, NULL, out2, sizeof out2, err, sizeof err);
        CHECK(rc == 0 && !strcmp(out, out2), "-f and -p: [%s] vs [%s]", out, out2);
    }
    {   /* a NUL byte: refused with the reason */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-f", file};
        if ((f = fopen(file, "wb")) != NULL) { fwrite("Hello\0there", 1, 11, f); fclose(f); }
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && !out[0] && strstr(err, "gemma2: error:") && strstr(err, "NUL") && strchr(err, '\n') == err + strlen(err) - 1,
              "NUL in the prompt file: rc %d out [%s] err [%s]", rc, out, err);
    }
    {   /* a folder as the prompt file, as the tokenizer */
        const char *a[] = {"-m", model, "--tokenizer", tok, "--temp", "0", "-n", "4", "-f", base};
        const char *b[] = {"-m", model, "--tokenizer", base, "--temp", "0", "-n", "4", "-p", "hi"};
        rc = gen_cli(a, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && !out[0] && strstr(err, "gemma2: error:") && strstr(err, "folder") && strchr(err, '\n') == err + strlen(err) - 1,
              "-f FOLDER: rc %d out [%s] err [%s]", rc, out, err);
        rc = gen_cli(b, 10, NULL, out, sizeof out, err, sizeof err);
        CHECK(rc != 0 && !out[0] && strstr(err, "gemma2: error:") && strstr(err, "not a regular file"),
              "--tokenizer FOLDER: rc %d out [%s] err [%s]", rc, out, err);
    }
    remove(file);
    rmdir(base);
}

/* Generators (gemma2_generate_step): several generations through one batch, joining and leaving
   between steps, each giving what gemma2_generate gives alone: the same tokens, text, results and
   session contents (greedy, seeded sampling, a stop id, a stop string, a prompt of three passes
   with on_prompt, a continuation with no prompt). Then the same with a batch too small for the
   prompt passes (cut to fit: the tokens and counts still checked), and the argument errors. */
#define GEN_N 5
typedef struct gen_job { gen_sink k; gen_progress g; } gen_job;

static int gen_job_prompt(void *user, int done, int total)
{
    gen_job *j = (gen_job *)user;
    if (j->g.calls < 16) j->g.done[j->g.calls] = done;
    j->g.calls++;
    j->g.total = total;
    return 0;
}

static void gen_gens_setup(gemma2_model *m, int i, const int32_t *base, int nb, int32_t *prompt, int *np, gemma2_generate_params *p, gen_job *j,
                           const char **stop_str, const int32_t *stop_id)
{
    int t;
    *p = gen_params(&j->k);
    memset(&j->g, 0, sizeof j->g);
    p->user = j;
    *np = nb;
    memcpy(prompt, base, sizeof(int32_t) * (size_t)nb);
    switch (i) {
    case 0: p->max_new_tokens = 12; break;
    case 1: p->max_new_tokens = 20; p->sampler.temperature = 0.9f; p->sampler.top_p = 0.95f; p->sampler.seed = 7; break;
    case 2: p->max_new_tokens = 30; p->sampler.temperature = 1.5f; p->sampler.seed = 3; p->stop_ids = stop_id; p->n_stop_ids = 1;
            *np = nb - 2; break;
    case 3: /* three passes of the prompt */
        for (t = nb; t < 300; t++) prompt[t] = base[t % nb];
        *np = 300;
        p->max_new_tokens = 6;
        p->on_prompt = gen_job_prompt;
        break;
    default: p->max_new_tokens = 25; p->sampler.temperature = 1.0f; p->sampler.seed = 11; p->stop_strings = stop_str; p->n_stop_strings = 1; break;
    }
    (void)m;
}

static void gen_gens_run(gemma2_model *m, int max_tokens, int exact)
{
    int32_t base[64], greedy[64], prompts[GEN_N][320];
    int nb = 0, ng = 0, i, np[GEN_N], rc, steps = 0, n_live, joined = 0;
    gemma2_session *ref[GEN_N], *ss[GEN_N];
    gemma2_generate_params p[GEN_N];
    gemma2_generate_result rr[GEN_N], br;
    gen_job rj[GEN_N], bj[GEN_N];
    gemma2_generator *g[GEN_N], *live[GEN_N];
    gemma2_batch *b;
    const char *stop_str[1] = {NULL};
    char stop_buf[64];
    int32_t stop_id = -1;
    if (!gen_reference(base, &nb, greedy, &ng)) { CHECK(0, "reference"); return; }
    /* a stop string: a few bytes of what generator 4 writes alone, and a stop id: generator 2's
       eighth token alone; found by first runs without them */
    {
        gen_job j0;
        gemma2_session *s0 = gemma2_session_new(m, 512);
        gen_gens_setup(m, 4, base, nb, prompts[4], &np[4], &p[4], &j0, stop_str, &stop_id);
        p[4].n_stop_strings = 0;
        gemma2_generate(s0, prompts[4], np[4], &p[4], NULL);
        CHECK(j0.k.len > 12, "generator 4's text (%d bytes)", (int)j0.k.len);
        memcpy(stop_buf, j0.k.text + j0.k.len / 2, 4);
        stop_buf[4] = 0;
        stop_str[0] = stop_buf;
        gemma2_session_rewind(s0, 0);
        gen_gens_setup(m, 2, base, nb, prompts[2], &np[2], &p[2], &j0, stop_str, &stop_id);
        p[2].n_stop_ids = 0;
        gemma2_generate(s0, prompts[2], np[2], &p[2], NULL);
        CHECK(j0.k.n_toks >= 8, "generator 2's tokens (%d)", j0.k.n_toks);
        stop_id = j0.k.toks[7];
        gemma2_session_free(s0);
    }
    /* alone */
    for (i = 0; i < GEN_N; i++) {
        gen_gens_setup(m, i, base, nb, prompts[i], &np[i], &p[i], &rj[i], stop_str, &stop_id);
        ref[i] = gemma2_session_new(m, 512);
        if (i == 4) { /* a continuation: the prompt first, then a generation with none */
            CHECK(gemma2_eval(ref[i], prompts[i], np[i], NULL) == 0, "eval");
            rc = gemma2_generate(ref[i], NULL, 0, &p[i], &rr[i]);
        } else rc = gemma2_generate(ref[i], prompts[i], np[i], &p[i], &rr[i]);
        CHECK(rc == 0, "generator %d alone: %d", i, rc);
    }
    CHECK(rr[2].stop_reason == GEMMA2_STOP_EOS && rr[4].stop_reason == GEMMA2_STOP_STRING && rj[3].g.calls == 3,
          "the cases reach their stops: %d %d, %d prompt passes", rr[2].stop_reason, rr[4].stop_reason, rj[3].g.calls);
    /* together: 0, 1 and 3 from the start, 2 and 4 join at step 3, each leaves when done */
    b = gemma2_batch_new(m, max_tokens, 0, NULL);
    for (i = 0; i < GEN_N; i++) {
        gen_gens_setup(m, i, base, nb, prompts[i], &np[i], &p[i], &bj[i], stop_str, &stop_id);
        ss[i] = gemma2_session_new(m, 512);
        if (i == 4) CHECK(gemma2_eval(ss[i], prompts[i], np[i], NULL) == 0, "eval");
        g[i] = gemma2_generator_new(ss[i], i == 4 ? NULL : prompts[i], i == 4 ? 0 : np[i], &p[i], &rc);
        CHECK(g[i] && rc == 0, "generator %d: %d", i, rc);
    }
    n_live = 0;
    live[n_live++] = g[0]; live[n_live++] = g[1]; live[n_live++] = g[3];
    while (n_live > 0 && steps < 2000) {
        int k, w = 0;
        if (steps == 3 && !joined) { live[n_live++] = g[2]; live[n_live++] = g[4]; joined = 1; }
        rc = gemma2_generate_step(b, live, n_live);
        CHECK(rc >= 0, "step %d: %d", steps, rc);
        if (rc < 0) break;
        for (k = 0; k < n_live; k++) if (!gemma2_generator_done(live[k], NULL)) live[w++] = live[k];
        CHECK(rc == w, "step %d: %d running, %d not done", steps, rc, w);
        n_live = w;
        steps++;
    }
    for (i = 0; i < GEN_N; i++) {
        CHECK(gemma2_generator_done(g[i], &br) == 1, "generator %d done", i);
        CHECK(br.stop_reason == rr[i].stop_reason && br.n_generated == rr[i].n_generated && br.n_prompt == rr[i].n_prompt && br.stop_id == rr[i].stop_id,
              "max_tokens %d generator %d: result (%d %d %d %d) alone (%d %d %d %d)", max_tokens, i, br.stop_reason, br.n_generated, br.n_prompt, br.stop_id,
              rr[i].stop_reason, rr[i].n_generated, rr[i].n_prompt, rr[i].stop_id);
        CHECK(bj[i].k.n_toks == rj[i].k.n_toks && !memcmp(bj[i].k.toks, rj[i].k.toks, sizeof(int32_t) * (size_t)rj[i].k.n_toks) &&
              bj[i].k.len == rj[i].k.len && !strcmp(bj[i].k.text, rj[i].k.text) && bj[i].k.flushes == rj[i].k.flushes,
              "max_tokens %d generator %d: streamed [%s] alone [%s]", max_tokens, i, bj[i].k.text, rj[i].k.text);
        CHECK(gemma2_session_pos(ss[i]) == gemma2_session_pos(ref[i]) &&
              !memcmp(gemma2_session_tokens(ss[i]), gemma2_session_tokens(ref[i]), sizeof(int32_t) * (size_t)gemma2_session_pos(ref[i])),
              "generator %d: the session's tokens", i);
        if (exact)
            CHECK(!memcmp(gemma2_logits(ss[i]), gemma2_logits(ref[i]), sizeof(float) * (size_t)gemma2_vocab_size(m)), "generator %d: logits bit-identical", i);
        CHECK(bj[i].g.calls == rj[i].g.calls || max_tokens < 128, "generator %d: %d prompt passes, alone %d", i, bj[i].g.calls, rj[i].g.calls);
        gemma2_generator_free(g[i]);
        gemma2_session_free(ss[i]);
        gemma2_session_free(ref[i]);
    }
    gemma2_batch_free(b);
}

static void test_generate_generators(void)
{
    gemma2_model *m = gen_get(), *m2;
    gemma2_session *s, *s2;
    gemma2_generator *g[2];
    gemma2_batch *b;
    int32_t tok = 2;
    int rc, exact;
    if (!m) return;
    exact = m->kern.batch_lone[m->embed.format] && m->kern.batch_lone[m->layers[0].wq.format];
    gen_gens_run(m, 512, exact);
    gen_gens_run(m, 40, 0); /* prompt passes cut to the room left */
    /* three decoding generators, room for two tokens a step: all progress from the first steps */
    {
        int32_t base[64], greedy[64];
        int nb = 0, ng = 0, i, step, running = 3;
        gemma2_session *ss[3];
        gemma2_generator *gg[3];
        gen_sink sk[3];
        gemma2_generate_params gp[3];
        gemma2_batch *b2 = gemma2_batch_new(m, 2, 0, NULL);
        CHECK(b2 && gen_reference(base, &nb, greedy, &ng), "setup");
        for (i = 0; i < 3; i++) {
            gp[i] = gen_params(&sk[i]);
            gp[i].max_new_tokens = 4;
            ss[i] = gemma2_session_new(m, 128);
            CHECK(gemma2_eval(ss[i], base, nb - i, NULL) == 0, "eval");
            gg[i] = gemma2_generator_new(ss[i], NULL, 0, &gp[i], &rc);
            CHECK(gg[i] != NULL, "generator %d: %d", i, rc);
        }
        for (step = 0; step < 3; step++) CHECK(gemma2_generate_step(b2, gg, 3) == 3, "step %d", step);
        CHECK(sk[0].n_toks >= 1 && sk[1].n_toks >= 1 && sk[2].n_toks >= 1, "after 3 steps of room 2: %d %d %d tokens", sk[0].n_toks, sk[1].n_toks,
              sk[2].n_toks);
        for (step = 0; step < 20 && running > 0; step++) running = gemma2_generate_step(b2, gg, 3);
        CHECK(running == 0, "all done (%d running)", running);
        for (i = 0; i < 3; i++) {
            CHECK(sk[i].n_toks == 4, "generator %d: %d tokens", i, sk[i].n_toks);
            gemma2_generator_free(gg[i]);
            gemma2_session_free(ss[i]);
        }
        gemma2_batch_free(b2);
    }
    /* errors */
    s = gemma2_session_new(m, 64);
    CHECK(gemma2_generator_new(NULL, &tok, 1, NULL, &rc) == NULL && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL session");
    CHECK(gemma2_generator_new(s, NULL, 0, NULL, &rc) == NULL && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "no prompt on an empty session");
    CHECK(gemma2_generator_new(s, &tok, 65, NULL, &rc) == NULL && rc == GEMMA2_ERROR_CONTEXT_FULL, "a prompt past n_ctx");
    g[0] = gemma2_generator_new(s, &tok, 1, NULL, &rc);
    g[1] = gemma2_generator_new(s, &tok, 1, NULL, &rc);
    b = gemma2_batch_new(m, 8, 1, NULL);
    CHECK(gemma2_generate_step(b, g, 2) == GEMMA2_ERROR_INVALID_ARGUMENT, "one session twice");
    CHECK(gemma2_generate_step(NULL, g, 1) == GEMMA2_ERROR_INVALID_ARGUMENT && gemma2_generate_step(b, NULL, 1) == GEMMA2_ERROR_INVALID_ARGUMENT,
          "NULL batch or generators");
    CHECK(gemma2_generate_step(b, g, 0) == 0 && gemma2_generator_done(g[0], NULL) == 0 && gemma2_session_pos(s) == 0, "no generators: nothing happens");
    m2 = gen_load(1);
    s2 = m2 ? gemma2_session_new(m2, 64) : NULL;
    gemma2_generator_free(g[1]);
    g[1] = s2 ? gemma2_generator_new(s2, &tok, 1, NULL, &rc) : NULL;
    CHECK(g[1] && gemma2_generate_step(b, g, 2) == GEMMA2_ERROR_INVALID_ARGUMENT && gemma2_session_pos(s) == 0, "a generator of another model");
    CHECK(gemma2_generator_done(NULL, NULL) == GEMMA2_ERROR_INVALID_ARGUMENT, "done(NULL)");
    gemma2_generator_free(g[0]);
    gemma2_generator_free(g[1]);
    gemma2_generator_free(NULL);
    gemma2_batch_free(b);
    gemma2_session_free(s);
    gemma2_session_free(s2);
    gemma2_free(m2);
}

void suite_generate(void)
{
    g2t_run("generate/stream_unit", test_generate_stream_unit);
    g2t_run("generate/greedy", test_generate_greedy);
    g2t_run("generate/utf8_stream", test_generate_utf8_stream);
    g2t_run("generate/stop_rules", test_generate_stop_rules);
    g2t_run("generate/prompt_progress", test_generate_prompt_progress);
    g2t_run("generate/generation_config", test_generate_generation_config);
    g2t_run("generate/multiturn", test_generate_multiturn);
    g2t_run("generate/context_full", test_generate_context_full);
    g2t_run("generate/threads", test_generate_threads);
    g2t_run("generate/score", test_generate_score);
    g2t_run("generate/cli", test_generate_cli);
    g2t_run("generate/cli-quantized", test_generate_cli_quantized);
    g2t_run("generate/cli-files", test_generate_cli_files);
    g2t_run("generate/cli-flags", test_generate_cli_flags);
    g2t_run("generate/cli-output", test_generate_cli_output);
    g2t_run("generate/cli-interactive", test_generate_cli_interactive);
    g2t_run("generate/cli-sigint", test_generate_cli_sigint);
    g2t_run("generate/cli-help-readme", test_generate_cli_help_readme);
    g2t_run("generate/generators", test_generate_generators);
    gemma2_free(gen_model);
    gen_model = NULL;
}
