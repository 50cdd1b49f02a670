/* The public API's edges as a new user meets them: telling a folder without a tokenizer apart,
   the reason a constructor failed, readable stop reasons, gemma2_detokenize's NUL, the default
   parameter structs, and what the build says about huge pages. */
#include "test.h"

static gemma2_model *api_load(const char *name, const char *tokenizer_path, int tokenizer_only)
{
    gemma2_options o = gemma2_options_default();
    o.n_threads = 1;
    o.tokenizer_path = tokenizer_path;
    o.tokenizer_only = tokenizer_only;
    return g2t_load(name, &o);
}

/* The fixtures hold no tokenizer file: they load, and gemma2_has_tokenizer says so before any
   call fails with GEMMA2_ERROR_NO_TOKENIZER. */
static void test_api_has_tokenizer(void)
{
    gemma2_model *bare = api_load("tiny-realvocab", NULL, 0);
    gemma2_model *with = api_load("tiny-realvocab", g2t_path("tokenizer/tokenizer.json"), 0);
    gemma2_model *tok = gemma2_load_tokenizer(g2t_path("tokenizer/tokenizer.model"), NULL, 0);
    int32_t id;
    CHECK(bare && gemma2_has_tokenizer(bare) == 0, "a folder without tokenizer.json / tokenizer.model: no tokenizer");
    CHECK(bare && gemma2_tokenize(bare, "a", 1, &id, 1, 0) == GEMMA2_ERROR_NO_TOKENIZER, "and tokenizing says why");
    CHECK(with && gemma2_has_tokenizer(with) == 1, "tokenizer_path given: a tokenizer");
    CHECK(tok && gemma2_has_tokenizer(tok) == 1, "gemma2_load_tokenizer: a tokenizer");
    CHECK(gemma2_has_tokenizer(NULL) == 0, "NULL: none");
    gemma2_free(bare);
    gemma2_free(with);
    gemma2_free(tok);
}

/* Each constructor's _ex variant names the reason for a NULL (and writes 0 on success), and
   the plain function is the same call. */
static void test_api_new_ex_reasons(void)
{
    gemma2_model *m = api_load("tiny-gqa", NULL, 0);
    gemma2_model *rv = api_load("tiny-realvocab", g2t_path("tokenizer/tokenizer.json"), 0);
    gemma2_model *tonly = api_load("tiny-realvocab", g2t_path("tokenizer/tokenizer.json"), 1);
    static const char markerless[] = "{\"model\": {\"vocab\": {\"a\": 0, \"<unk>\": 1}, \"unk_token\": \"<unk>\"}}";
    gemma2_session *s;
    gemma2_sampler *smp;
    gemma2_sampler_params sp = gemma2_sampler_params_default();
    gemma2_chat *c;
    int rc, mpe;
    char err[256];
    if (!m || !rv || !tonly) { gemma2_free(m); gemma2_free(rv); gemma2_free(tonly); return; }
    mpe = gemma2_model_config(m)->max_position_embeddings;

    rc = 12345; s = gemma2_session_new_ex(NULL, 8, &rc);
    CHECK(!s && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "session: m NULL: rc %d", rc);
    rc = 12345; s = gemma2_session_new_ex(m, -1, &rc);
    CHECK(!s && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "session: n_ctx -1: rc %d", rc);
    rc = 12345; s = gemma2_session_new_ex(m, mpe + 1, &rc);
    CHECK(!s && rc == GEMMA2_ERROR_UNSUPPORTED, "session: n_ctx past max_position_embeddings: rc %d", rc);
    rc = 12345; s = gemma2_session_new_ex(tonly, 8, &rc);
    CHECK(!s && rc == GEMMA2_ERROR_NO_WEIGHTS, "session: tokenizer-only model: rc %d", rc);
    CHECK(gemma2_session_new_ex(m, mpe + 1, NULL) == NULL, "rc may be NULL");
    rc = 12345; s = gemma2_session_new_ex(m, 8, &rc);
    CHECK(s && rc == 0 && gemma2_session_n_ctx(s) == 8, "session: ok: rc %d", rc);
    gemma2_session_free(s);

    rc = 12345; smp = gemma2_sampler_new_ex(0, NULL, &rc);
    CHECK(!smp && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "sampler: vocab 0: rc %d", rc);
    sp.temperature = (float)NAN;
    rc = 12345; smp = gemma2_sampler_new_ex(512, &sp, &rc);
    CHECK(!smp && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "sampler: NaN temperature: rc %d", rc);
    sp.temperature = 0.7f;
    rc = 12345; smp = gemma2_sampler_new_ex(512, &sp, &rc);
    CHECK(smp && rc == 0, "sampler: ok: rc %d", rc);
    gemma2_sampler_free(smp);

    rc = 12345; c = gemma2_chat_new_ex(NULL, NULL, &rc);
    CHECK(!c && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "chat: s NULL: rc %d", rc);
    s = gemma2_session_new(m, 16);
    rc = 12345; c = gemma2_chat_new_ex(s, NULL, &rc);
    CHECK(!c && rc == GEMMA2_ERROR_NO_TOKENIZER, "chat: model without a tokenizer: rc %d", rc);
    {
        /* a tokenizer without the chat markers, put in place of the missing one */
        gemma2_model *mm = (gemma2_model *)m;
        CHECK(gemma2__tokenizer_load_mem(&mm->tok, (const uint8_t *)markerless, sizeof markerless - 1, "test", err, sizeof err) == 0,
              "markerless tokenizer: %s", err);
        rc = 12345; c = gemma2_chat_new_ex(s, NULL, &rc);
        CHECK(!c && rc == GEMMA2_ERROR_UNSUPPORTED, "chat: a vocabulary without <start_of_turn>: rc %d", rc);
    }
    gemma2_session_free(s);
    s = gemma2_session_new(rv, 16);
    {
        int32_t bos = 2;
        CHECK(s && gemma2_eval(s, &bos, 1, NULL) == 0, "eval");
    }
    rc = 12345; c = gemma2_chat_new_ex(s, NULL, &rc);
    CHECK(!c && rc == GEMMA2_ERROR_INVALID_ARGUMENT, "chat: session not empty: rc %d", rc);
    gemma2_session_rewind(s, 0);
    rc = 12345; c = gemma2_chat_new_ex(s, "Be brief.", &rc);
    CHECK(c && rc == 0, "chat: ok: rc %d", rc);
    gemma2_chat_free(c);
    gemma2_session_free(s);
    gemma2_free(m);
    gemma2_free(rv);
    gemma2_free(tonly);
}

/* Every stop reason generation gives has its own name, and a real result maps to the right one. */
static void test_api_stop_reason_string(void)
{
    static const int reasons[] = {GEMMA2_STOP_EOS, GEMMA2_STOP_MAX_TOKENS, GEMMA2_STOP_STRING, GEMMA2_STOP_CALLBACK,
                                  GEMMA2_STOP_CONTEXT_FULL};
    gemma2_model *m = api_load("tiny-gqa", NULL, 0);
    gemma2_session *s;
    gemma2_generate_params p = gemma2_generate_params_default();
    gemma2_generate_result r;
    int32_t prompt[3] = {2, 17, 300};
    size_t i, j;
    memset(&r, 0, sizeof r); /* the messages below read it even when generate failed */
    for (i = 0; i < sizeof reasons / sizeof *reasons; i++) {
        const char *a = gemma2_stop_reason_string(reasons[i]);
        CHECK(a && strcmp(a, "unknown") != 0 && strcmp(a, "none") != 0, "reason %d: \"%s\"", reasons[i], a ? a : "(null)");
        for (j = 0; j < i; j++) CHECK(strcmp(a, gemma2_stop_reason_string(reasons[j])) != 0, "reasons %d and %d share \"%s\"", reasons[i], reasons[j], a);
    }
    CHECK(!strcmp(gemma2_stop_reason_string(0), "none") && !strcmp(gemma2_stop_reason_string(99), "unknown") &&
          !strcmp(gemma2_stop_reason_string(-1), "unknown"), "0 and out-of-range values");
    if (!m) return;
    s = gemma2_session_new(m, 8);
    p.max_new_tokens = 2;
    p.ignore_eos = 1;
    CHECK(s && gemma2_generate(s, prompt, 3, &p, &r) == 0 && r.stop_reason == GEMMA2_STOP_MAX_TOKENS &&
          !strcmp(gemma2_stop_reason_string(r.stop_reason), "max tokens"), "max_new_tokens 2: \"%s\"", gemma2_stop_reason_string(r.stop_reason));
    gemma2_session_rewind(s, 0);
    p.max_new_tokens = 0;
    CHECK(s && gemma2_generate(s, prompt, 3, &p, &r) == 0 && r.stop_reason == GEMMA2_STOP_CONTEXT_FULL &&
          !strcmp(gemma2_stop_reason_string(r.stop_reason), "context full"), "n_ctx 8: \"%s\"", gemma2_stop_reason_string(r.stop_reason));
    gemma2_session_free(s);
    gemma2_free(m);
}

/* gemma2_detokenize ends the text with a NUL when it fits, as gemma2_chat_render does, and never
   writes past cap. */
static void test_api_detokenize_nul(void)
{
    static const char text[] = "Hello, world";
    gemma2_model *m = gemma2_load_tokenizer(g2t_path("tokenizer/tokenizer.json"), NULL, 0);
    int32_t ids[16];
    char buf[64];
    int n, k, need;
    CHECK(m != NULL, "load tokenizer");
    if (!m) return;
    n = gemma2_tokenize(m, text, strlen(text), ids, 16, 0);
    CHECK(n > 0 && n <= 16, "tokenize: %d", n);
    if (n <= 0 || n > 16) { gemma2_free(m); return; }
    need = gemma2_detokenize(m, ids, n, NULL, 0, 0);
    CHECK(need == (int)strlen(text), "needs %d bytes", need);
    if (need != (int)strlen(text)) { gemma2_free(m); return; }
    memset(buf, 'x', sizeof buf);
    k = gemma2_detokenize(m, ids, n, buf, (size_t)need + 1, 0);
    CHECK(k == need && buf[need] == 0 && !strcmp(buf, text), "cap = need + 1: a C string (byte %d is %d)", need, buf[need]);
    memset(buf, 'x', sizeof buf);
    k = gemma2_detokenize(m, ids, n, buf, (size_t)need, 0);
    CHECK(k == need && !memcmp(buf, text, (size_t)need) && buf[need] == 'x', "cap = need: the text, no NUL past cap");
    memset(buf, 'x', sizeof buf);
    k = gemma2_detokenize(m, ids, n, buf, 5, 0);
    CHECK(k == need && buf[5] == 'x', "cap 5: nothing past cap");
    memset(buf, 'x', sizeof buf);
    k = gemma2_detokenize(m, ids, 0, buf, sizeof buf, 0);
    CHECK(k == 0 && buf[0] == 0, "no ids: the empty string");
    gemma2_free(m);
}

/* The *_default() structs are the documented all-zero defaults (this file also builds as C++
   with -Wextra -Werror, where `= {0}` would not). */
static void test_api_defaults(void)
{
    gemma2_options o = gemma2_options_default();
    gemma2_sampler_params sp = gemma2_sampler_params_default();
    gemma2_generate_params gp = gemma2_generate_params_default();
    CHECK(o.n_threads == 0 && o.weights == GEMMA2_WEIGHTS_AUTO && o.compute == GEMMA2_COMPUTE_F32 &&
          o.kernels == GEMMA2_KERNELS_AUTO && !o.tokenizer_only && !o.no_tokenizer && !o.preload && !o.tokenizer_path &&
          !o.progress && !o.progress_user && o.kv_cache == GEMMA2_KV_F32, "gemma2_options_default: all zero");
    CHECK(sp.temperature == 0 && sp.top_k == 0 && sp.top_p == 0 && sp.min_p == 0 && sp.repetition_penalty == 0 &&
          sp.frequency_penalty == 0 && sp.presence_penalty == 0 && sp.penalty_last_n == 0 && !sp.logit_bias &&
          sp.n_logit_bias == 0 && sp.seed == 0, "gemma2_sampler_params_default: all zero");
    CHECK(gp.sampler.temperature == 0 && gp.sampler.top_k == 0 && !gp.sampler.logit_bias && gp.max_new_tokens == 0 &&
          !gp.stop_strings && gp.n_stop_strings == 0 && !gp.stop_ids && gp.n_stop_ids == 0 && !gp.ignore_eos &&
          !gp.on_token && !gp.on_prompt && !gp.user, "gemma2_generate_params_default: all zero");
#if defined(__linux__)
    CHECK(gemma2_cpu_count() >= 1 && gemma2_cpu_count() == (int)sysconf(_SC_NPROCESSORS_ONLN), "gemma2_cpu_count %d", gemma2_cpu_count());
#else
    CHECK(gemma2_cpu_count() >= 1, "gemma2_cpu_count %d", gemma2_cpu_count());
#endif
}

/* GEMMA2_HUGEPAGES tells what the build can ask for: this test program includes gemma2.h first
   (after defining _DEFAULT_SOURCE), so on Linux with mappings it must be 1. */
static void test_api_hugepages_macro(void)
{
#if defined(__linux__) && !defined(GEMMA2_NO_MMAP)
    CHECK(GEMMA2_HUGEPAGES == 1, "Linux build with _DEFAULT_SOURCE: huge pages available");
#else
    CHECK(GEMMA2_HUGEPAGES == 0 || GEMMA2_HUGEPAGES == 1, "defined as 0 or 1");
#endif
}

void suite_api(void)
{
    g2t_run("api/has_tokenizer", test_api_has_tokenizer);
    g2t_run("api/new_ex_reasons", test_api_new_ex_reasons);
    g2t_run("api/stop_reason_string", test_api_stop_reason_string);
    g2t_run("api/detokenize_nul", test_api_detokenize_nul);
    g2t_run("api/defaults", test_api_defaults);
    g2t_run("api/hugepages_macro", test_api_hugepages_macro);
}
