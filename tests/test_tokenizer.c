/* Tokenizer tests: the shared fixture cases in both formats, round-trip and safety properties on random input,
   the streaming detokenizer, and corrupt files. The two real tokenizers are loaded once and shared by the cases. */
#include "test.h"

static gemma2_model tok_models[2]; /* [0] tokenizer.json, [1] tokenizer.model */
static int tok_state[2];           /* 0 not tried, 1 loaded, -1 failed */

static gemma2_model *tok_model(int spm)
{
    if (!tok_state[spm]) {
        char err[256];
        const char *path = g2t_path(spm ? "tokenizer/tokenizer.model" : "tokenizer/tokenizer.json");
        memset(&tok_models[spm], 0, sizeof tok_models[spm]);
        if (gemma2__tokenizer_load(&tok_models[spm].tok, path, err, sizeof err) != 0) {
            fprintf(stderr, "  cannot load %s: %s\n", path, err);
            tok_state[spm] = -1;
        } else tok_state[spm] = 1;
    }
    return tok_state[spm] > 0 ? &tok_models[spm] : NULL;
}

static int tok_load_mem(const void *data, size_t size, gemma2_model *m, char *err, size_t err_size)
{
    memset(m, 0, sizeof *m);
    return gemma2__tokenizer_load_mem(&m->tok, (const uint8_t *)data, size, "test", err, err_size);
}

/* A deterministic generator (xorshift), so failures reproduce. */
static uint64_t tok_rng_state = 0x1234567887654321ull;
static uint32_t tok_rand(void)
{
    tok_rng_state ^= tok_rng_state << 13;
    tok_rng_state ^= tok_rng_state >> 7;
    tok_rng_state ^= tok_rng_state << 17;
    return (uint32_t)(tok_rng_state >> 11);
}

/* ---- the fixture cases --------------------------------------------------- */

typedef struct tok_case {
    char name[80];
    int decode;                 /* a decode case (else encode) */
    char *text, *spm_text;      /* spm_text NULL when absent */
    size_t text_len, spm_text_len;
    int32_t *ids, *spm_ids;     /* spm_ids NULL when absent */
    int n_ids, n_spm_ids;
} tok_case;

static tok_case *tok_cases;
static int tok_n_cases;

static int tok_load_cases(void)
{
    size_t size, i = 0;
    char *data;
    if (tok_cases) return tok_n_cases;
    data = (char *)g2t_read_file(g2t_path("tokenizer/cases.jsonl"), &size);
    if (!data) return 0;
    tok_cases = (tok_case *)calloc(512, sizeof *tok_cases);
    while (i < size && tok_n_cases < 512) {
        size_t e = i, len;
        gemma2__json j;
        char err[128];
        tok_case *c = &tok_cases[tok_n_cases];
        char *name;
        while (e < size && data[e] != '\n') e++;
        if (e > i && gemma2__json_parse(&j, data + i, e - i, err, sizeof err) == 0) {
            c->text = g2t_json_str(&j, gemma2__json_get(&j, 0, "text"), &c->text_len);
            c->spm_text = g2t_json_str(&j, gemma2__json_get(&j, 0, "spm_text"), &c->spm_text_len);
            c->ids = g2t_json_ids(&j, gemma2__json_get(&j, 0, "ids"), &c->n_ids);
            c->spm_ids = g2t_json_ids(&j, gemma2__json_get(&j, 0, "spm_ids"), &c->n_spm_ids);
            c->decode = gemma2__json_streq(&j, gemma2__json_get(&j, 0, "kind"), "decode");
            name = g2t_json_str(&j, gemma2__json_get(&j, 0, "name"), &len);
            if (name) { snprintf(c->name, sizeof c->name, "%s", name); free(name); }
            if (c->text && c->ids) tok_n_cases++;
        }
        gemma2__json_free(&j);
        i = e + 1;
    }
    free(data);
    return tok_n_cases;
}

static void tok_print_ids(const char *what, const int32_t *ids, int n)
{
    int k;
    fprintf(stderr, "    %s (%d):", what, n);
    for (k = 0; k < n && k < 40; k++) fprintf(stderr, " %d", (int)ids[k]);
    fprintf(stderr, k < n ? " ...\n" : "\n");
}

/* decode(ids) of an encode case's text: every '▁' of the input comes back as ' ' */
static size_t tok_metaspace_to_space(const char *s, size_t n, char *out)
{
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        if (i + 3 <= n && !memcmp(s + i, "\xe2\x96\x81", 3)) { out[o++] = ' '; i += 2; }
        else out[o++] = s[i];
    }
    return o;
}

/* Does the text hold the string of a CONTROL or UNKNOWN piece (<bos>, <eos>, <pad>, <unk>)? With
   GEMMA2_TOKENIZE_SPECIAL tokenizer.model matches them as tokens, as transformers does (the `ids`), while SentencePiece
   never does (the `spm_ids`, which the flag off gives). */
static int tok_has_control(const gemma2_model *m, const char *text, size_t n)
{
    const gemma2__tokenizer *t = m->tok;
    int32_t id;
    for (id = 0; id < t->n; id++) {
        size_t len = gemma2__tok_len(t, id), k;
        if (!(t->attr[id] & (GEMMA2__TA_CONTROL | GEMMA2__TA_UNK)) || len == 0) continue;
        for (k = 0; k + len <= n; k++) if (!memcmp(text + k, gemma2__tok_str(t, id), len)) return 1;
    }
    return 0;
}

static void tok_check_cases(int spm)
{
    gemma2_model *m = tok_model(spm);
    int n = tok_load_cases(), k, n_enc = 0, n_dec = 0, n_control = 0;
    CHECK(m != NULL, "tokenizer loads");
    CHECK(n == 160, "160 cases in cases.jsonl, read %d", n);
    if (!m) return;
    for (k = 0; k < n; k++) {
        const tok_case *c = &tok_cases[k];
        if (!c->decode) {
            int control = spm && c->spm_ids && tok_has_control(m, c->text, c->text_len);
            const int32_t *want = spm && c->spm_ids && !control ? c->spm_ids : c->ids;
            int n_want = spm && c->spm_ids && !control ? c->n_spm_ids : c->n_ids;
            int32_t *got = (int32_t *)malloc(sizeof *got * (c->text_len + 2));
            char *back = (char *)malloc(c->text_len * 3 + 16), *exp = (char *)malloc(c->text_len + 1);
            int g = gemma2_tokenize(m, c->text, c->text_len, got, (int)c->text_len + 2, GEMMA2_TOKENIZE_SPECIAL), b;
            size_t ne;
            CHECK(g == n_want && !memcmp(got, want, sizeof *got * (size_t)(g > 0 ? g : 0)), "%s: %s ids differ", spm ? "model" : "json", c->name);
            if (g != n_want || memcmp(got, want, sizeof *got * (size_t)(g > 0 ? g : 0))) {
                tok_print_ids("want", want, n_want);
                tok_print_ids("got ", got, g);
            }
            /* the count without room to write, and with <bos> */
            CHECK(gemma2_tokenize(m, c->text, c->text_len, NULL, 0, GEMMA2_TOKENIZE_SPECIAL) == n_want, "%s: count only", c->name);
            g = gemma2_tokenize(m, c->text, c->text_len, got, (int)c->text_len + 2, GEMMA2_TOKENIZE_SPECIAL | GEMMA2_TOKENIZE_ADD_BOS);
            CHECK(g == n_want + 1 && got[0] == 2 && !memcmp(got + 1, want, sizeof *got * (size_t)n_want), "%s: with <bos>", c->name);
            if (control) {
                /* without the flag, SentencePiece's own ids: the control strings are text */
                g = gemma2_tokenize(m, c->text, c->text_len, got, (int)c->text_len + 2, 0);
                CHECK(g == c->n_spm_ids && !memcmp(got, c->spm_ids, sizeof *got * (size_t)g), "%s: flags 0 gives SentencePiece's ids", c->name);
                n_control++;
            }
            /* and back: exact text (a literal '▁' returns as ' ') */
            b = gemma2_detokenize(m, want, n_want, back, c->text_len * 3 + 16, 0);
            ne = tok_metaspace_to_space(c->text, c->text_len, exp);
            CHECK(b == (int)ne && !memcmp(back, exp, ne), "%s: %s decode(encode(x)) != x", spm ? "model" : "json", c->name);
            free(got);
            free(back);
            free(exp);
            n_enc++;
        } else {
            /* Decode cases hold what each reference returns, U+FFFD for invalid UTF-8 included: that is
               GEMMA2_DETOKENIZE_UTF8 (one U+FFFD per maximal invalid subsequence for tokenizer.json, one per byte for
               tokenizer.model), plus SKIP_CONTROL for tokenizer.model (SentencePiece drops CONTROL ids and writes
               <unk> as " ⁇ "). With flags 0 the same ids give the exact bytes instead (test_tok_decode_raw). The
               hf_rust_text variants (one U+FFFD per byte of a whole invalid run) are not reproduced. */
            const char *want = spm && c->spm_text ? c->spm_text : c->text;
            size_t n_want = spm && c->spm_text ? c->spm_text_len : c->text_len;
            char buf[4096];
            int flags = GEMMA2_DETOKENIZE_UTF8 | (spm ? GEMMA2_DETOKENIZE_SKIP_CONTROL : 0);
            int g = gemma2_detokenize(m, c->ids, c->n_ids, buf, sizeof buf, flags);
            CHECK(g == (int)n_want && !memcmp(buf, want, n_want), "%s: %s decodes to [%.*s], want [%s]", spm ? "model" : "json",
                  c->name, g > 0 ? g : 0, buf, want);
            /* the count when the buffer is too small, and no byte written past it */
            buf[3] = 'X';
            CHECK(gemma2_detokenize(m, c->ids, c->n_ids, buf, 3, flags) == (int)n_want && buf[3] == 'X', "%s: short buffer", c->name);
            n_dec++;
        }
    }
    CHECK(n_enc == 140 && n_dec == 20, "encode %d decode %d", n_enc, n_dec);
    CHECK(n_control == (spm ? 5 : 0), "%d cases with control-token strings", n_control);
}

static void test_tok_cases_json(void) { tok_check_cases(0); }
static void test_tok_cases_model(void) { tok_check_cases(1); }

/* The published gemma-2 tokenizer.json lists 32 more added tokens (ids 255968..255999: [toxicity=0], tab runs,
   <unused99>) than the fixture's. Nothing is hard-coded: with them added, tokenizer.json gives SentencePiece's ids
   on the cases that differed because of them, and its own ids on all the others. */
static void test_tok_249_added(void)
{
    gemma2_model *mj = tok_model(0), m;
    size_t size, extra_n = 0, k;
    char *real = (char *)g2t_read_file(g2t_path("tokenizer/tokenizer.json"), &size), *mod, *at, err[256];
    char *extra = (char *)malloc(32 * 200);
    int32_t id;
    int n = tok_load_cases(), checked = 0;
    if (!mj || !real) { CHECK(0, "tokenizer.json loads"); free(real); free(extra); return; }
    for (id = 255968; id < 256000; id++) {
        size_t len;
        const char *p = gemma2_token_piece(mj, id, &len);
        extra_n += (size_t)sprintf(extra + extra_n, "{\"id\": %d, \"content\": \"", (int)id);
        for (k = 0; k < len; k++) {
            if (p[k] == '\t') { extra[extra_n++] = '\\'; extra[extra_n++] = 't'; }
            else extra[extra_n++] = p[k];
        }
        extra_n += (size_t)sprintf(extra + extra_n, "\", \"special\": false}, ");
    }
    at = strstr(real, "\"added_tokens\": [");
    CHECK(at != NULL, "added_tokens in tokenizer.json");
    if (!at) { free(real); free(extra); return; }
    at += strlen("\"added_tokens\": [");
    mod = (char *)malloc(size + extra_n);
    memcpy(mod, real, (size_t)(at - real));
    memcpy(mod + (at - real), extra, extra_n);
    memcpy(mod + (at - real) + extra_n, at, size - (size_t)(at - real));
    CHECK(tok_load_mem(mod, size + extra_n, &m, err, sizeof err) == 0, "249 added tokens: %s", err);
    if (m.tok) {
        for (k = 0; k < (size_t)n; k++) {
            const tok_case *c = &tok_cases[k];
            int32_t *got;
            int g, use_spm = !strcmp(c->name, "sp_unused99") || !strcmp(c->name, "sp_toxicity");
            const int32_t *want = use_spm ? c->spm_ids : c->ids;
            int n_want = use_spm ? c->n_spm_ids : c->n_ids;
            if (c->decode) continue;
            got = (int32_t *)malloc(sizeof *got * (c->text_len + 1));
            g = gemma2_tokenize(&m, c->text, c->text_len, got, (int)c->text_len + 1, GEMMA2_TOKENIZE_SPECIAL);
            CHECK(g == n_want && !memcmp(got, want, sizeof *got * (size_t)g), "%s: json + 32 added tokens", c->name);
            checked += use_spm;
            free(got);
        }
        CHECK(checked == 2, "2 cases with spm_ids, %d", checked);
        gemma2__tokenizer_free(m.tok);
    }
    free(mod);
    free(real);
    free(extra);
}

/* Without GEMMA2_DETOKENIZE_UTF8 the bytes come back exactly; flags 0 on tokenizer.model keeps control tokens. */
static void test_tok_decode_raw(void)
{
    gemma2_model *mj = tok_model(0), *ms = tok_model(1);
    char buf[256];
    int32_t trunc[] = {445, 401}, bos[] = {2, 17534, 2134}, unk[] = {3}, split[] = {445, 17534, 401, 390};
    int n;
    if (!mj || !ms) { CHECK(0, "tokenizers load"); return; }
    n = gemma2_detokenize(mj, trunc, 2, buf, sizeof buf, 0);
    CHECK(n == 2 && (unsigned char)buf[0] == 0xe4 && (unsigned char)buf[1] == 0xb8, "raw bytes E4 B8, got %d", n);
    n = gemma2_detokenize(ms, trunc, 2, buf, sizeof buf, GEMMA2_DETOKENIZE_UTF8);
    CHECK(n == 6 && !memcmp(buf, "\xef\xbf\xbd\xef\xbf\xbd", 6), "model: E4 B8 -> 2 x U+FFFD");
    n = gemma2_detokenize(mj, trunc, 2, buf, sizeof buf, GEMMA2_DETOKENIZE_UTF8);
    CHECK(n == 3 && !memcmp(buf, "\xef\xbf\xbd", 3), "json: E4 B8 -> 1 x U+FFFD");
    n = gemma2_detokenize(ms, bos, 3, buf, sizeof buf, 0);
    CHECK(n == 16 && !memcmp(buf, "<bos>hello world", 16), "model flags 0 keeps <bos>: %.*s", n, buf);
    n = gemma2_detokenize(mj, bos, 3, buf, sizeof buf, GEMMA2_DETOKENIZE_SKIP_CONTROL);
    CHECK(n == 11 && !memcmp(buf, "hello world", 11), "json skip control: %.*s", n, buf);
    n = gemma2_detokenize(ms, unk, 1, buf, sizeof buf, 0);
    CHECK(n == 5 && !memcmp(buf, "<unk>", 5), "model flags 0: <unk>");
    n = gemma2_detokenize(mj, split, 4, buf, sizeof buf, 0);
    CHECK(n == 8 && !memcmp(buf, "\xe4hello\xb8\xad", 8), "raw split run");
}

/* ---- properties on random input ------------------------------------------ */

static size_t tok_put_cp(char *out, uint32_t cp) { return (size_t)gemma2__utf8_put(out, cp); }

/* Random text: mostly ASCII words and whitespace, with Latin, CJK, emoji, controls and rare planes mixed in. */
static size_t tok_random_text(char *out, size_t max_chars)
{
    size_t n = 0, k, len = tok_rand() % max_chars;
    static const char *bits[] = {"<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<mask>",
                                 "<unused5>", "<unused99>", "[toxicity=0]", "<table>", "<0x41>", "\r\n", "\t\t"};
    for (k = 0; k < len; k++) {
        uint32_t r = tok_rand() % 100, cp;
        if (r < 40) cp = 'a' + tok_rand() % 26;
        else if (r < 50) cp = ' ';
        else if (r < 54) cp = "\n\t\r0123456789.,"[tok_rand() % 15];
        else if (r < 58) { const char *b = bits[tok_rand() % (sizeof bits / sizeof *bits)]; memcpy(out + n, b, strlen(b)); n += strlen(b); continue; }
        else if (r < 70) cp = 0xa0 + tok_rand() % 0x200;
        else if (r < 80) cp = 0x4e00 + tok_rand() % 0x5000;
        else if (r < 85) cp = 0x1f300 + tok_rand() % 0x300;
        else if (r < 88) cp = tok_rand() % 0x20;
        else cp = tok_rand() % 0x110000;
        if ((cp >= 0xd800 && cp < 0xe000) || cp == 0x2581) cp = 'x';
        n += tok_put_cp(out + n, cp);
    }
    return n;
}

static int tok_valid_utf8(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t l = gemma2__u8len((const unsigned char *)s + i, n - i);
        if (l == 1 && (unsigned char)s[i] >= 0x80) return 0;
        i += l;
    }
    return 1;
}

static void tok_roundtrip(int spm, int random_bytes, int iters)
{
    gemma2_model *m = tok_model(spm);
    char *text = (char *)malloc(4096), *back = (char *)malloc(4096 * 3);
    int32_t *ids = (int32_t *)malloc(sizeof *ids * 4100);
    int it, k, bad_special = 0, bad_round = 0;
    if (!m) { CHECK(0, "tokenizer loads"); return; }
    for (it = 0; it < iters; it++) {
        size_t n;
        int f, flags;
        if (random_bytes) {
            n = tok_rand() % 300;
            for (k = 0; k < (int)n; k++) text[k] = tok_rand() % 3 ? (char)(tok_rand() % 256) : "ab <>\n"[tok_rand() % 6];
            for (k = 0; k + 3 <= (int)n; k++) if (!memcmp(text + k, "\xe2\x96\x81", 3)) text[k] = 'x';
        } else n = tok_random_text(text, 400);
        for (f = 0; f < 2; f++) {
            int g, b;
            flags = f ? GEMMA2_TOKENIZE_SPECIAL : 0;
            g = gemma2_tokenize(m, text, n, ids, 4100, flags);
            CHECK(g >= 0 && g <= (int)n, "tokenize: %d ids for %d bytes", g, (int)n);
            if (g < 0) continue;
            if (!f) for (k = 0; k < g; k++) if (gemma2_token_is_special(m, ids[k])) bad_special++;
            b = gemma2_detokenize(m, ids, g, back, 4096 * 3, 0);
            if (b != (int)n || memcmp(back, text, n)) {
                if (!bad_round) fprintf(stderr, "    round trip differs: %d bytes in, %d out\n", (int)n, b);
                bad_round++;
            }
        }
    }
    CHECK(bad_special == 0, "%d special ids produced without GEMMA2_TOKENIZE_SPECIAL", bad_special);
    CHECK(bad_round == 0, "%d round trips differ", bad_round);
    free(text);
    free(back);
    free(ids);
}

static void test_tok_roundtrip_unicode(void) { tok_roundtrip(0, 0, 300); tok_roundtrip(1, 0, 300); }
static void test_tok_roundtrip_bytes(void) { tok_roundtrip(0, 1, 300); tok_roundtrip(1, 1, 300); }

/* Streaming: push + flush equals one gemma2_detokenize with GEMMA2_DETOKENIZE_UTF8, and is always valid UTF-8. */
static void tok_stream(int spm)
{
    gemma2_model *m = tok_model(spm);
    int32_t ids[64];
    char whole[8192], part[8192], buf[512];
    int it, k, fl;
    if (!m) { CHECK(0, "tokenizer loads"); return; }
    for (it = 0; it < 400; it++) {
        int n = 1 + (int)(tok_rand() % 40), w, p = 0, r;
        gemma2_detok d;
        for (k = 0; k < n; k++) {
            uint32_t r2 = tok_rand() % 10;
            /* mostly byte tokens (217..472), so that characters split and break */
            ids[k] = r2 < 6 ? (int32_t)(217 + tok_rand() % 256) : r2 < 7 ? (int32_t)(tok_rand() % 8) : (int32_t)(tok_rand() % 256000);
        }
        for (fl = 0; fl < 2; fl++) {
            int flags = fl ? GEMMA2_DETOKENIZE_SKIP_CONTROL : 0;
            w = gemma2_detokenize(m, ids, n, whole, sizeof whole, flags | GEMMA2_DETOKENIZE_UTF8);
            CHECK(w >= 0 && tok_valid_utf8(whole, (size_t)w), "detokenize UTF8 output is valid UTF-8");
            gemma2_detok_init(&d, m, flags);
            p = 0;
            for (k = 0; k < n; k++) {
                r = gemma2_detok_push(&d, ids[k], buf, sizeof buf);
                CHECK(r >= 0 && r <= (int)sizeof buf, "push %d", r);
                if (r < 0 || r > (int)sizeof buf) break;
                CHECK(tok_valid_utf8(buf, (size_t)r), "push emits valid UTF-8");
                memcpy(part + p, buf, (size_t)r);
                p += r;
            }
            r = gemma2_detok_flush(&d, buf, sizeof buf);
            if (r > 0) { memcpy(part + p, buf, (size_t)r); p += r; }
            CHECK(p == w && !memcmp(part, whole, (size_t)w), "stream (%d bytes) == whole (%d bytes)", p, w);
        }
    }
    {
        /* a buffer too small: nothing consumed, the count returned */
        gemma2_detok d;
        int32_t e4 = 217 + 0xe4, b8 = 217 + 0xb8, ad = 217 + 0xad, world = 2134;
        gemma2_detok_init(&d, m, 0);
        CHECK(gemma2_detok_push(&d, e4, buf, sizeof buf) == 0, "E4 held");
        CHECK(gemma2_detok_push(&d, b8, buf, sizeof buf) == 0, "E4 B8 held");
        CHECK(gemma2_detok_push(&d, ad, buf, 2) == 3, "needs 3");
        CHECK(gemma2_detok_push(&d, ad, buf, 3) == 3 && !memcmp(buf, "\xe4\xb8\xad", 3), "then writes U+4E2D");
        CHECK(gemma2_detok_push(&d, e4, buf, sizeof buf) == 0, "E4 held");
        k = gemma2_detok_push(&d, world, buf, sizeof buf);
        CHECK(k == 9 && !memcmp(buf, "\xef\xbf\xbd world", 9), "unfinished char then a word: %d", k);
        CHECK(gemma2_detok_push(&d, 256000, buf, sizeof buf) == GEMMA2_ERROR_BAD_TOKEN, "bad id");
        CHECK(gemma2_detok_flush(&d, buf, sizeof buf) == 0, "nothing pending");
    }
}

static void test_tok_stream_json(void) { tok_stream(0); }
static void test_tok_stream_model(void) { tok_stream(1); }

/* Long and adversarial inputs must finish quickly (the BPE is O(n log n)). */
static void test_tok_long_inputs(void)
{
    int spm, k;
    size_t n = 200000;
    char *text = (char *)malloc(n);
    int32_t *ids = (int32_t *)malloc(sizeof *ids * (n + 2));
    for (spm = 0; spm < 2; spm++) {
        gemma2_model *m = tok_model(spm);
        int g;
        if (!m) { CHECK(0, "tokenizer loads"); continue; }
        memset(text, ' ', n);
        g = gemma2_tokenize(m, text, n, ids, (int)n + 2, 0);
        CHECK(g > 0 && g <= 200000 / 16, "200000 spaces: %d ids", g);
        memset(text, 'a', n);
        g = gemma2_tokenize(m, text, n, ids, (int)n + 2, 0);
        CHECK(g > 0 && g < (int)n, "200000 a: %d ids", g);
        for (k = 0; k < (int)n; k++) text[k] = (char)(0x80 + k % 64);
        g = gemma2_tokenize(m, text, n, ids, (int)n + 2, 0);
        CHECK(g == (int)n, "200000 continuation bytes: %d ids", g);
        for (k = 0; k < (int)n; k++) text[k] = "ab "[k % 3];
        g = gemma2_tokenize(m, text, n, ids, 10, 0);
        CHECK(g > 10, "count beyond max_ids: %d", g);
    }
    free(text);
    free(ids);
}

static void test_tok_api_errors(void)
{
    gemma2_model none, *m = tok_model(0);
    int32_t ids[4] = {0, 0, 0, 0};
    char buf[16];
    size_t len;
    memset(&none, 0, sizeof none);
    CHECK(gemma2_tokenize(&none, "a", 1, ids, 4, 0) == GEMMA2_ERROR_NO_TOKENIZER, "no tokenizer");
    CHECK(gemma2_detokenize(&none, ids, 1, buf, 16, 0) == GEMMA2_ERROR_NO_TOKENIZER, "no tokenizer");
    CHECK(gemma2_tokenize(NULL, "a", 1, ids, 4, 0) == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL model");
    if (!m) { CHECK(0, "tokenizer loads"); return; }
    CHECK(gemma2_tokenize(m, NULL, 1, ids, 4, 0) == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL text");
    CHECK(gemma2_tokenize(m, NULL, 0, ids, 4, 0) == 0, "empty text");
    CHECK(gemma2_tokenize(m, "", 0, ids, 4, GEMMA2_TOKENIZE_ADD_BOS) == 1 && ids[0] == 2, "empty text + bos");
    CHECK(gemma2_tokenize(m, "a", 1, ids, -1, 0) == GEMMA2_ERROR_INVALID_ARGUMENT, "negative max_ids");
    CHECK(gemma2_tokenize(m, "a", 1, NULL, 4, 0) == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL ids");
    CHECK(gemma2_tokenize(m, "a", 1, ids, 4, 64) == GEMMA2_ERROR_INVALID_ARGUMENT, "unknown flag");
    ids[0] = 256000;
    CHECK(gemma2_detokenize(m, ids, 1, buf, 16, 0) == GEMMA2_ERROR_BAD_TOKEN, "id out of range");
    ids[0] = -1;
    CHECK(gemma2_detokenize(m, ids, 1, buf, 16, 0) == GEMMA2_ERROR_BAD_TOKEN, "negative id");
    CHECK(gemma2_detokenize(m, ids, -1, buf, 16, 0) == GEMMA2_ERROR_INVALID_ARGUMENT, "negative n");
    CHECK(gemma2_detokenize(m, NULL, 0, NULL, 0, 0) == 0, "nothing");
    CHECK(gemma2_token_piece(m, 2134, &len) && len == 8 && !memcmp(gemma2_token_piece(m, 2134, &len), "\xe2\x96\x81world", 8), "piece");
    CHECK(gemma2_token_piece(m, 256000, &len) == NULL && len == 0, "piece out of range");
    CHECK(gemma2_token_id(m, "<start_of_turn>", 15) == 106, "id of <start_of_turn>");
    CHECK(gemma2_token_id(m, "no such piece", 13) == -1, "missing piece");
    CHECK(gemma2_token_bos(m) == 2 && gemma2_token_eos(m) == 1, "bos/eos");
    CHECK(gemma2_token_is_special(m, 106) && !gemma2_token_is_special(m, 4) && gemma2_token_is_control(m, 1), "special flags");
    m = tok_model(1);
    if (m) {
        CHECK(gemma2_token_bos(m) == 2 && gemma2_token_eos(m) == 1, "model bos/eos");
        CHECK(gemma2_token_is_special(m, 107) && gemma2_token_is_special(m, 3) && !gemma2_token_is_control(m, 106), "model flags");
    }
}

/* Through gemma2_load, tokenizer only (the test model folders hold no tokenizer: name one). */
static void test_tok_via_load(void)
{
    gemma2_options o;
    gemma2_model *m;
    char err[256];
    int32_t ids[8];
    int k;
    for (k = 0; k < 2; k++) {
        memset(&o, 0, sizeof o);
        o.tokenizer_only = 1;
        o.tokenizer_path = g2t_path(k ? "tokenizer/tokenizer.model" : "tokenizer/tokenizer.json");
        m = gemma2_load(g2t_path("models/tiny-gqa"), &o, err, sizeof err);
        CHECK(m != NULL, "gemma2_load tokenizer_only: %s", m ? "" : err);
        if (!m) continue;
        CHECK(gemma2_tokenize(m, "hello world", 11, ids, 8, GEMMA2_TOKENIZE_ADD_BOS) == 3 && ids[0] == 2 && ids[1] == 17534 && ids[2] == 2134,
              "hello world through gemma2_load");
        gemma2_free(m);
    }
}

/* ---- small hand-made tokenizers and corrupt files ------------------------ */


static void test_tok_small_json(void)
{
    /* merges by rank, leftmost ties, an added token, byte fallback, a non-special and a special added token */
    const char *js =
        "{\"added_tokens\": [{\"id\": 0, \"content\": \"<s>\", \"special\": true}, {\"id\": 9, \"content\": \"<x>\", \"special\": false}],"
        " \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"},"
        " \"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"<s>\": 0, \"a\": 1, \"b\": 2, \"ab\": 3, \"\\u2581\": 4,"
        " \"\\u2581a\": 5, \"bb\": 6, \"<0x41>\": 7, \"<0xC3>\": 8, \"<x>\": 9, \"<0xA9>\": 10, \"<\": 11, \"s\": 12, \">\": 13, \"<unk>\": 14}, \"unk_token\": \"<unk>\","
        " \"merges\": [\"b b\", [\"a\", \"b\"], \"\\u2581 a\"]}}";
    gemma2_model m;
    char err[256];
    int32_t ids[16];
    int n;
    CHECK(tok_load_mem(js, strlen(js), &m, err, sizeof err) == 0, "small json: %s", err);
    if (!m.tok) return;
    n = gemma2_tokenize(&m, "abbb", 4, ids, 16, 0);  /* b b first (rank 0), leftmost: a, bb, b */
    CHECK(n == 3 && ids[0] == 1 && ids[1] == 6 && ids[2] == 2, "abbb -> a bb b (%d)", n);
    n = gemma2_tokenize(&m, " ab<x>A\xc3\xa9", 9, ids, 16, 0);
    /* "a b" (rank 1) before "▁ a" (rank 2) */
    CHECK(n == 6 && ids[0] == 4 && ids[1] == 3 && ids[2] == 9 && ids[3] == 7 && ids[4] == 8 && ids[5] == 10, "byte fallback (%d)", n);
    n = gemma2_tokenize(&m, "<s>", 3, ids, 16, 0);
    CHECK(n == 3 && ids[0] == 11, "special as text (%d)", n);
    n = gemma2_tokenize(&m, "<s>", 3, ids, 16, GEMMA2_TOKENIZE_SPECIAL);
    CHECK(n == 1 && ids[0] == 0, "special matched (%d)", n);
    gemma2__tokenizer_free(m.tok);
}

static void test_tok_corrupt_json(void)
{
    static const char *bad[] = {
        "", "{", "{}", "{\"model\": {}}", "{\"model\": {\"vocab\": []}}",
        "{\"model\": {\"vocab\": {\"a\": -1}}}",
        "{\"model\": {\"vocab\": {\"a\": 5000000}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 0}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 2}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1.5}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"a\\u0000\": 1, \"\\x\": 2}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"ab\"]}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [5]}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\"]]}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": \"a b\"}}",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": {\"a\": 0}}}",
        "{\"normalizer\": {\"type\": \"NFC\"}, \"model\": {\"vocab\": {\"a\": 0}}}",
        "{\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"model\": {\"vocab\": {\"a\": 0}}}",
        "{\"added_tokens\": [{\"id\": 0, \"content\": \"b\"}], \"model\": {\"vocab\": {\"a\": 0}}}",
        "{\"added_tokens\": [{\"id\": 7}], \"model\": {\"vocab\": {\"a\": 0}}}",
        "{\"added_tokens\": {}, \"model\": {\"vocab\": {\"a\": 0}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"\": 1}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}"};
    size_t k, size;
    gemma2_model m;
    char err[256];
    char *real;
    for (k = 0; k < sizeof bad / sizeof *bad; k++) {
        err[0] = 0;
        CHECK(tok_load_mem(bad[k], strlen(bad[k]), &m, err, sizeof err) < 0 && m.tok == NULL && err[0], "should fail: %s", bad[k]);
        gemma2__tokenizer_free(m.tok);
    }
    /* the real file, cut short */
    real = (char *)g2t_read_file(g2t_path("tokenizer/tokenizer.json"), &size);
    CHECK(real != NULL, "tokenizer.json readable");
    if (real) {
        size_t cuts[] = {1, 1000, 3000000, 9000000, 0};
        cuts[4] = size - 2;
        for (k = 0; k < sizeof cuts / sizeof *cuts; k++) {
            CHECK(tok_load_mem(real, cuts[k], &m, err, sizeof err) < 0 && m.tok == NULL, "cut at %d should fail", (int)cuts[k]);
            gemma2__tokenizer_free(m.tok);
        }
        free(real);
    }
    CHECK(gemma2__tokenizer_load(&m.tok, g2t_path("tokenizer/no-such-file.json"), err, sizeof err) == GEMMA2_ERROR_IO, "missing file");
    {
        /* random corruption of a small valid file: an error or a working tokenizer, never a crash */
        const char *js =
            "{\"added_tokens\": [{\"id\": 0, \"content\": \"<s>\", \"special\": true}, {\"id\": 5, \"content\": \"<x>\"}],"
            " \"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"<s>\": 0, \"a\": 1, \"b\": 2, \"ab\": 3,"
            " \"\\u2581\": 4, \"<x>\": 5, \"<0x41>\": 6, \"\\u2581a\": 7, \"<unk>\": 8}, \"unk_token\": \"<unk>\","
            " \"merges\": [\"a b\", [\"\\u2581\", \"a\"]]}}";
        size_t n = strlen(js);
        char *copy = (char *)malloc(n);
        int it, ok = 0;
        for (it = 0; it < 3000; it++) {
            int flips = 1 + (int)(tok_rand() % 3), f;
            memcpy(copy, js, n);
            for (f = 0; f < flips; f++) copy[tok_rand() % n] = "{}[]\",:0123456789 ab\\u-"[tok_rand() % 23];
            if (tok_load_mem(copy, tok_rand() % 8 ? n : tok_rand() % n, &m, err, sizeof err) == 0) {
                int32_t ids[64];
                char out[256];
                int k = gemma2_tokenize(&m, "ab a<x><s>A\xc3\xa9", 13, ids, 64, GEMMA2_TOKENIZE_SPECIAL);
                if (k > 0) gemma2_detokenize(&m, ids, k < 64 ? k : 64, out, sizeof out, GEMMA2_DETOKENIZE_UTF8);
                ok++;
            }
            gemma2__tokenizer_free(m.tok);
        }
        CHECK(ok > 0 && ok < 3000, "some mutations load (%d)", ok);
        free(copy);
    }
}

/* Protobuf writer for hand-made SentencePiece models. */
typedef struct tok_pb { uint8_t *p; size_t n, cap; } tok_pb;
static void tok_pb_byte(tok_pb *b, uint8_t x)
{
    if (b->n == b->cap) { b->cap = b->cap ? b->cap * 2 : 256; b->p = (uint8_t *)realloc(b->p, b->cap); }
    b->p[b->n++] = x;
}
static void tok_pb_varint(tok_pb *b, uint64_t v) { while (v >= 0x80) { tok_pb_byte(b, (uint8_t)(v | 0x80)); v >>= 7; } tok_pb_byte(b, (uint8_t)v); }
static void tok_pb_bytes(tok_pb *b, int field, const void *d, size_t n)
{
    size_t k;
    tok_pb_varint(b, (uint64_t)field << 3 | 2);
    tok_pb_varint(b, n);
    for (k = 0; k < n; k++) tok_pb_byte(b, ((const uint8_t *)d)[k]);
}
static void tok_pb_uint(tok_pb *b, int field, uint64_t v) { tok_pb_varint(b, (uint64_t)field << 3); tok_pb_varint(b, v); }
static void tok_pb_piece(tok_pb *b, const char *s, float score, int type)
{
    tok_pb m;
    uint32_t u;
    memset(&m, 0, sizeof m);
    tok_pb_bytes(&m, 1, s, strlen(s));
    memcpy(&u, &score, 4);
    tok_pb_varint(&m, 2 << 3 | 5);
    tok_pb_byte(&m, (uint8_t)u); tok_pb_byte(&m, (uint8_t)(u >> 8)); tok_pb_byte(&m, (uint8_t)(u >> 16)); tok_pb_byte(&m, (uint8_t)(u >> 24));
    if (type != 1) tok_pb_uint(&m, 3, (uint64_t)type);
    tok_pb_bytes(b, 1, m.p, m.n);
    free(m.p);
}

/* <unk> <s> </s>, bytes, a user-defined piece, and a few normal ones (scores decide the merges). */
static tok_pb tok_small_spm(int model_type)
{
    tok_pb b, t, nm;
    char name[8];
    int k;
    memset(&b, 0, sizeof b);
    memset(&t, 0, sizeof t);
    memset(&nm, 0, sizeof nm);
    tok_pb_piece(&b, "<unk>", 0, 2);
    tok_pb_piece(&b, "<s>", 0, 3);
    tok_pb_piece(&b, "</s>", 0, 3);
    for (k = 0; k < 256; k++) { snprintf(name, sizeof name, "<0x%02X>", k); tok_pb_piece(&b, name, 0, 6); }
    tok_pb_piece(&b, "<x>", 0, 4);
    tok_pb_piece(&b, "a", -1, 1);
    tok_pb_piece(&b, "b", -2, 1);
    tok_pb_piece(&b, "bb", -3, 1);    /* id 262 */
    tok_pb_piece(&b, "ab", -4, 1);    /* id 263 */
    tok_pb_piece(&b, "\xe2\x96\x81", -5, 1);
    tok_pb_piece(&b, "\xe2\x96\x81" "a", -0.5f, 1); /* id 265 */
    tok_pb_uint(&t, 3, (uint64_t)model_type);
    tok_pb_uint(&t, 35, 1);
    tok_pb_uint(&t, 40, 0);
    tok_pb_uint(&t, 41, 1);
    tok_pb_uint(&t, 42, 2);
    tok_pb_bytes(&b, 2, t.p, t.n);
    tok_pb_bytes(&nm, 1, "identity", 8);
    tok_pb_uint(&nm, 3, 0);
    tok_pb_uint(&nm, 4, 0);
    tok_pb_bytes(&b, 3, nm.p, nm.n);
    tok_pb_uint(&b, 99, 12345); /* an unknown field: skipped */
    free(t.p);
    free(nm.p);
    return b;
}

static void test_tok_small_spm(void)
{
    tok_pb b = tok_small_spm(2);
    gemma2_model m;
    char err[256], out[64];
    int32_t ids[16];
    int n;
    CHECK(tok_load_mem(b.p, b.n, &m, err, sizeof err) == 0, "small model: %s", err);
    if (m.tok) {
        n = gemma2_tokenize(&m, "abb a<x>\xc3\xa9", 10, ids, 16, 0);
        /* a b b: b+b (-3) beats a+b (-4); then ' a' (-0.5); <x> whole; é by bytes */
        CHECK(n == 6 && ids[0] == 260 && ids[1] == 262 && ids[2] == 265 && ids[3] == 259 && ids[4] == 3 + 0xc3 && ids[5] == 3 + 0xa9,
              "small model ids (%d: %d %d %d %d)", n, ids[0], ids[1], ids[2], ids[3]);
        n = gemma2_tokenize(&m, "<s>", 3, ids, 16, GEMMA2_TOKENIZE_SPECIAL);
        CHECK(n == 1 && ids[0] == 1, "control pieces are matched with GEMMA2_TOKENIZE_SPECIAL (%d)", n);
        n = gemma2_tokenize(&m, "a<unk><s>", 9, ids, 16, GEMMA2_TOKENIZE_SPECIAL);
        CHECK(n == 3 && ids[0] == 260 && ids[1] == 0 && ids[2] == 1, "unknown and control pieces (%d)", n);
        n = gemma2_tokenize(&m, "<s>", 3, ids, 16, 0);
        CHECK(n == 3 && ids[0] == 3 + '<', "control pieces are text without the flag (%d)", n);
        ids[0] = 1; ids[1] = 260; ids[2] = 0;
        n = gemma2_detokenize(&m, ids, 3, out, sizeof out, GEMMA2_DETOKENIZE_SKIP_CONTROL);
        CHECK(n == 6 && !memcmp(out, "a \xe2\x81\x87 ", 6), "SentencePiece decode: [%.*s]", n > 0 ? n : 0, out);
        gemma2__tokenizer_free(m.tok);
    }
    free(b.p);
    b = tok_small_spm(1);
    CHECK(tok_load_mem(b.p, b.n, &m, err, sizeof err) == GEMMA2_ERROR_UNSUPPORTED, "unigram is unsupported");
    free(b.p);
}

static void test_tok_corrupt_spm(void)
{
    tok_pb b = tok_small_spm(2), x;
    gemma2_model m;
    char err[256];
    size_t k, size;
    int it, ok = 0;
    uint8_t *real, *copy;
    static const uint8_t bad_varint[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    static const uint8_t bad_len[] = {0x0a, 0x7f, 0x0a, 0x01, 'a'};
    static const uint8_t bad_wire[] = {0x0b, 0x00};
    /* every truncation of a valid file: an error or a tokenizer, never a crash */
    for (k = 0; k < b.n; k++) {
        if (tok_load_mem(b.p, k, &m, err, sizeof err) == 0) ok++;
        gemma2__tokenizer_free(m.tok);
    }
    CHECK(ok < (int)b.n, "truncations load? %d", ok);
    /* random corruption */
    copy = (uint8_t *)malloc(b.n);
    for (it = 0; it < 3000; it++) {
        int flips = 1 + (int)(tok_rand() % 4), f;
        memcpy(copy, b.p, b.n);
        for (f = 0; f < flips; f++) copy[tok_rand() % b.n] = (uint8_t)tok_rand();
        if (tok_load_mem(copy, b.n, &m, err, sizeof err) == 0) {
            int32_t ids[64];
            char out[512];
            int n = gemma2_tokenize(&m, "abb a<x><s>\xc3\xa9 zz", 16, ids, 64, GEMMA2_TOKENIZE_SPECIAL);
            if (n > 0) gemma2_detokenize(&m, ids, n < 64 ? n : 64, out, sizeof out, GEMMA2_DETOKENIZE_UTF8);
        }
        gemma2__tokenizer_free(m.tok);
    }
    free(copy);
    CHECK(tok_load_mem(bad_varint, sizeof bad_varint, &m, err, sizeof err) == GEMMA2_ERROR_FORMAT, "bad varint");
    CHECK(tok_load_mem(bad_len, sizeof bad_len, &m, err, sizeof err) == GEMMA2_ERROR_FORMAT, "length past the end");
    CHECK(tok_load_mem(bad_wire, sizeof bad_wire, &m, err, sizeof err) == GEMMA2_ERROR_FORMAT, "group wire type");
    memset(&x, 0, sizeof x);
    tok_pb_piece(&x, "a", 0, 9);
    CHECK(tok_load_mem(x.p, x.n, &m, err, sizeof err) < 0, "unknown piece type");
    x.n = 0;
    tok_pb_piece(&x, "<0x4G>", 0, 6);
    CHECK(tok_load_mem(x.p, x.n, &m, err, sizeof err) < 0, "bad byte piece");
    free(x.p);
    free(b.p);
    /* the real file: cut short, and a few corrupted bytes */
    real = (uint8_t *)g2t_read_file(g2t_path("tokenizer/tokenizer.model"), &size);
    CHECK(real != NULL, "tokenizer.model readable");
    if (real) {
        size_t cuts[] = {1, 7, 100000, 0};
        cuts[3] = size - 1;
        for (k = 0; k < sizeof cuts / sizeof *cuts; k++) {
            CHECK(tok_load_mem(real, cuts[k], &m, err, sizeof err) < 0, "cut at %d should fail", (int)cuts[k]);
            gemma2__tokenizer_free(m.tok);
        }
        for (it = 0; it < 6; it++) {
            size_t at = tok_rand() % size;
            uint8_t keep = real[at];
            real[at] = (uint8_t)tok_rand();
            if (tok_load_mem(real, size, &m, err, sizeof err) == 0) {
                int32_t ids[64];
                gemma2_tokenize(&m, "Hello world <start_of_turn>", 27, ids, 64, GEMMA2_TOKENIZE_SPECIAL);
            }
            gemma2__tokenizer_free(m.tok);
            real[at] = keep;
        }
        free(real);
    }
}

/* A tokenizer that cannot give ids for every text (no unknown piece, and no byte fallback for every byte) is refused
   at load, instead of tokenizing to id -1. */
static void test_tok_needs_unk(void)
{
    static const char *refused[] = {
        "{\"model\": {\"vocab\": {\"a\": 0}}}",
        "{\"model\": {\"byte_fallback\": true, \"vocab\": {\"a\": 0, \"<0x62>\": 1}}}",
        "{\"model\": {\"vocab\": {\"a\": 0, \"<unk>\": 1}, \"unk_token\": \"<nope>\"}}"};
    const char *ok = "{\"model\": {\"vocab\": {\"a\": 0, \"<unk>\": 1}, \"unk_token\": \"<unk>\"}}";
    gemma2_model m;
    char err[256];
    int32_t ids[8];
    size_t k;
    int n;
    for (k = 0; k < sizeof refused / sizeof *refused; k++) {
        err[0] = 0;
        CHECK(tok_load_mem(refused[k], strlen(refused[k]), &m, err, sizeof err) == GEMMA2_ERROR_UNSUPPORTED && !m.tok && err[0],
              "refused: %s", refused[k]);
        if (m.tok) {
            n = gemma2_tokenize(&m, "ab", 2, ids, 8, 0);
            CHECK(0, "it loaded, and \"ab\" gives %d ids: %d %d", n, n > 0 ? ids[0] : 0, n > 1 ? ids[1] : 0);
            gemma2__tokenizer_free(m.tok);
        }
    }
    CHECK(tok_load_mem(ok, strlen(ok), &m, err, sizeof err) == 0, "with <unk>: %s", err);
    if (m.tok) {
        n = gemma2_tokenize(&m, "ab", 2, ids, 8, 0);
        CHECK(n == 2 && ids[0] == 0 && ids[1] == 1, "ab -> a <unk> (%d)", n);
        gemma2__tokenizer_free(m.tok);
    }
}

/* gemma2_detok_init cannot fail: flags that gemma2_detokenize refuses make every push and flush fail the same way. */
static void test_tok_detok_flags(void)
{
    gemma2_model *m = tok_model(0);
    gemma2_detok d;
    char buf[64];
    int32_t id = 2134;
    if (!m) { CHECK(0, "tokenizer loads"); return; }
    CHECK(gemma2_detokenize(m, &id, 1, buf, sizeof buf, 64) == GEMMA2_ERROR_INVALID_ARGUMENT, "detokenize: unknown flag");
    gemma2_detok_init(&d, m, 64);
    CHECK(gemma2_detok_push(&d, id, buf, sizeof buf) == GEMMA2_ERROR_INVALID_ARGUMENT, "push: unknown flag");
    CHECK(gemma2_detok_flush(&d, buf, sizeof buf) == GEMMA2_ERROR_INVALID_ARGUMENT, "flush: unknown flag");
    gemma2_detok_init(&d, m, GEMMA2_DETOKENIZE_SKIP_CONTROL | GEMMA2_DETOKENIZE_UTF8);
    CHECK(gemma2_detok_push(&d, id, buf, sizeof buf) == 6 && !memcmp(buf, " world", 6), "known flags work");
    gemma2_detok_init(&d, NULL, 0);
    CHECK(gemma2_detok_push(&d, id, buf, sizeof buf) == GEMMA2_ERROR_INVALID_ARGUMENT, "no model");
}

/* Pieces matched whole, leftmost-longest, against a plain reference, on random small tokenizers: added tokens over
   {a, b, c} (some special), text over {a, b, c, x}, everything else byte pieces. */
static void test_tok_match_reference(void)
{
    char js[8192], text[64], pat[16][8];
    int it, k, bad = 0, loaded = 0;
    for (it = 0; it < 300; it++) {
        int np = 1 + (int)(tok_rand() % 14), o, q, special[16];
        gemma2_model m;
        char err[256];
        o = sprintf(js, "{\"added_tokens\": [");
        for (k = 0; k < np; k++) {
            int len = 1 + (int)(tok_rand() % 5), c, dup = 0;
            for (c = 0; c < len; c++) pat[k][c] = "abc"[tok_rand() % 3];
            pat[k][len] = 0;
            for (c = 0; c < k; c++) dup |= !strcmp(pat[c], pat[k]);
            if (dup) { k--; np--; continue; }
            special[k] = tok_rand() % 3 == 0;
            o += sprintf(js + o, "%s{\"id\": %d, \"content\": \"%s\", \"special\": %s}", k ? ", " : "", 257 + k, pat[k], special[k] ? "true" : "false");
        }
        o += sprintf(js + o, "], \"model\": {\"byte_fallback\": true, \"unk_token\": \"<unk>\", \"vocab\": {\"<unk>\": 0");
        for (k = 0; k < 256; k++) o += sprintf(js + o, ", \"<0x%02X>\": %d", k, 1 + k);
        for (k = 0; k < np; k++) o += sprintf(js + o, ", \"%s\": %d", pat[k], 257 + k);
        sprintf(js + o, "}}}");
        if (tok_load_mem(js, strlen(js), &m, err, sizeof err) != 0) { CHECK(0, "load: %s", err); continue; }
        loaded++;
        for (q = 0; q < 20; q++) {
            int n = (int)(tok_rand() % 40), f;
            for (k = 0; k < n; k++) text[k] = "abcx"[tok_rand() % 4];
            for (f = 0; f < 2; f++) {
                int32_t got[64], want[64];
                int ng = gemma2_tokenize(&m, text, (size_t)n, got, 64, f ? GEMMA2_TOKENIZE_SPECIAL : 0), nw = 0, i = 0;
                while (i < n) {
                    int best = -1, bl = 0;
                    for (k = 0; k < np; k++) {
                        int l = (int)strlen(pat[k]);
                        if ((f || !special[k]) && l > bl && i + l <= n && !memcmp(text + i, pat[k], (size_t)l)) { best = k; bl = l; }
                    }
                    if (best >= 0) { want[nw++] = 257 + best; i += bl; }
                    else want[nw++] = 1 + (unsigned char)text[i++];
                }
                if (ng != nw || memcmp(got, want, sizeof *got * (size_t)nw)) {
                    if (!bad) fprintf(stderr, "    tokenizer %d text %.*s flags %d: %d ids, want %d\n", it, n, text, f, ng, nw);
                    bad++;
                }
            }
        }
        gemma2__tokenizer_free(m.tok);
    }
    CHECK(bad == 0 && loaded == 300, "%d of %d tokenizations differ from the reference", bad, loaded * 40);
}

/* Work that must stay O(n log n) on any file: sizes at which quadratic code takes minutes (one 400 KB piece split at
   every character with both halves hashed; a 60 KB added token walked from each of 200 KB text positions) finish
   here in milliseconds. The results are checked too. */
static void test_tok_no_quadratic(void)
{
    size_t big = 400000, k;
    char err[256], *s = (char *)malloc(big + 1);
    gemma2_model m;
    int32_t *ids = (int32_t *)malloc(sizeof *ids * 300000);
    int n;
    /* tokenizer.model with one piece of 400 000 characters (no half of it is a piece but "a") */
    {
        tok_pb b = tok_small_spm(2), x;
        memset(&x, 0, sizeof x);
        for (k = 0; k < big; k++) s[k] = "ab"[(k * 7 + k / 3) % 2];
        s[big] = 0;
        tok_pb_piece(&x, s, -9, 1);
        for (k = 0; k < x.n; k++) tok_pb_byte(&b, x.p[k]);
        CHECK(tok_load_mem(b.p, b.n, &m, err, sizeof err) == 0, "model with a 400 KB piece: %s", err);
        if (m.tok) {
            n = gemma2_tokenize(&m, "abb a", 5, ids, 16, 0);
            CHECK(n == 3 && ids[0] == 260 && ids[1] == 262 && ids[2] == 265, "still tokenizes (%d)", n);
            gemma2__tokenizer_free(m.tok);
        }
        free(b.p);
        free(x.p);
    }
    /* tokenizer.json with an added token of 60 000 'a' then 'b', and 200 000 'a' of text (plus one match at the end) */
    {
        size_t tl = 60000, tn = 200000, o;
        char *js = (char *)malloc(2 * tl + 4096), *text = (char *)malloc(tn + tl + 2);
        o = (size_t)sprintf(js, "{\"added_tokens\": [{\"id\": 2, \"content\": \"");
        memset(js + o, 'a', tl);
        o += tl;
        o += (size_t)sprintf(js + o, "b\"}], \"model\": {\"unk_token\": \"<unk>\", \"vocab\": {\"a\": 0, \"<unk>\": 1, \"");
        memset(js + o, 'a', tl);
        o += tl;
        o += (size_t)sprintf(js + o, "b\": 2}}}");
        CHECK(tok_load_mem(js, o, &m, err, sizeof err) == 0, "json with a 60 KB added token: %s", err);
        memset(text, 'a', tn + tl);
        text[tn + tl] = 'b';
        if (m.tok) {
            n = gemma2_tokenize(&m, text, tn + tl + 1, ids, 300000, 0);
            CHECK(n == (int)tn + 1 && ids[0] == 0 && ids[tn - 1] == 0 && ids[tn] == 2, "200 000 a then the token (%d)", n);
            gemma2__tokenizer_free(m.tok);
        }
        free(js);
        free(text);
    }
    free(s);
    free(ids);
}

/* Long words without spaces on the real tokenizers: 1 MB of one character, of random bytes, of random letters. */
static void test_tok_long_words(void)
{
    size_t n = 1 << 20, k;
    char *text = (char *)malloc(n);
    int32_t *ids = (int32_t *)malloc(sizeof *ids * (n + 2));
    int spm, kind;
    for (spm = 0; spm < 2; spm++) {
        gemma2_model *m = tok_model(spm);
        if (!m) { CHECK(0, "tokenizer loads"); continue; }
        for (kind = 0; kind < 4; kind++) {
            int g, b;
            char *back = (char *)malloc(n * 3 + 16);
            for (k = 0; k < n; k++)
                text[k] = kind == 0 ? 'a' : kind == 1 ? (char)(tok_rand() % 256) : kind == 2 ? (char)('a' + tok_rand() % 26) : "\xe4\xb8\xad"[k % 3];
            if (kind == 1) for (k = 0; k + 3 <= n; k++) if (!memcmp(text + k, "\xe2\x96\x81", 3)) text[k] = 'x';
            for (k = 0; k < n; k++) if (text[k] == ' ') text[k] = 'y';
            g = gemma2_tokenize(m, text, n, ids, (int)n + 2, 0);
            CHECK(g > 0 && g <= (int)n, "%s kind %d: %d ids", spm ? "model" : "json", kind, g);
            b = g > 0 ? gemma2_detokenize(m, ids, g, back, n * 3 + 16, 0) : -1;
            CHECK(b == (int)n && !memcmp(back, text, n), "%s kind %d: round trip", spm ? "model" : "json", kind);
            free(back);
        }
    }
    free(text);
    free(ids);
}

/* chat render + tokenize(SPECIAL) == chat tokenize ids, on both files: in tests/test_chat.c */

/* The examples the tokenizer section of gemma2.h quotes (its comment "How Gemma's tokenizer behaves, by example"):
   each is a case of cases.jsonl with the ids quoted (so the comment quotes the references), and both files give
   them (tokenizer.json the case's ids, tokenizer.model its spm_ids when it has them); with the pieces and merge
   ranks the comment names. */
typedef struct tok_example {
    const char *name;
    int spm;                    /* which file's ids: 0 tokenizer.json (and tokenizer.model, without spm_ids), 1 tokenizer.model */
    int n;
    int32_t ids[12];
    const char *pieces[12];     /* NULL: not quoted */
} tok_example;

static void test_tok_section_examples(void)
{
    static const tok_example ex[] = {
        {"en_hello_world", 0, 2, {17534, 2134}, {"hello", "\xe2\x96\x81world"}},
        {"bytes_cjk_ext_b", 0, 12, {457, 377, 345, 345, 457, 377, 345, 346, 457, 387, 371, 382},
         {"<0xF0>", "<0xA0>", "<0x80>", "<0x80>", "<0xF0>", "<0xA0>", "<0x80>", "<0x81>", "<0xF0>", "<0xAA>", "<0x9A>", "<0xA5>"}},
        {"num_digits_split", 0, 5, {235274, 235284, 235304, 235310, 235308}, {"1", "2", "3", "4", "5"}},
        {"ws_inner_runs", 0, 9, {235250, 139, 235268, 140, 235260, 141, 235258, 142, 235249},
         {"a", "\xe2\x96\x81\xe2\x96\x81", "b", "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81", "c", "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81", "d",
          "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81", "e"}},
        {"ws_32_spaces", 0, 2, {153, 153}, {NULL}},
        {"ws_32_spaces", 1, 2, {168, 235248}, {NULL}},
        {"sp_unused99", 0, 5, {235322, 45526, 235315, 235315, 235313}, {"<", "unused", "9", "9", ">"}},
        {"sp_unused99", 1, 1, {255999}, {"<unused99>"}},
    };
    int e, f, i, k;
    int n = tok_load_cases();
    for (e = 0; e < (int)(sizeof ex / sizeof ex[0]); e++) {
        const tok_case *c = NULL;
        for (k = 0; k < n; k++)
            if (!tok_cases[k].decode && !strcmp(tok_cases[k].name, ex[e].name)) c = &tok_cases[k];
        CHECK(c != NULL, "%s: not in cases.jsonl", ex[e].name);
        if (!c) continue;
        {
            const int32_t *ref = ex[e].spm && c->spm_ids ? c->spm_ids : c->ids;
            int n_ref = ex[e].spm && c->spm_ids ? c->n_spm_ids : c->n_ids;
            CHECK(n_ref == ex[e].n && !memcmp(ref, ex[e].ids, sizeof(int32_t) * (size_t)n_ref), "%s: the quoted ids are not the reference's", ex[e].name);
        }
        /* tokenizer.json example: json, and the model too when the references agree; a model example: the model */
        for (f = ex[e].spm; f <= (ex[e].spm || !c->spm_ids ? 1 : 0); f++) {
            gemma2_model *m = tok_model(f);
            int32_t got[64];
            int g;
            if (!m) { CHECK(0, "tokenizer %d loads", f); continue; }
            g = gemma2_tokenize(m, c->text, c->text_len, got, 64, 0);
            CHECK(g == ex[e].n && !memcmp(got, ex[e].ids, sizeof(int32_t) * (size_t)ex[e].n), "%s (%s): ids differ", ex[e].name, f ? "model" : "json");
            for (i = 0; i < ex[e].n && ex[e].pieces[0]; i++) {
                size_t len = 0;
                const char *pc = gemma2_token_piece(m, ex[e].ids[i], &len);
                CHECK(pc && len == strlen(ex[e].pieces[i]) && !memcmp(pc, ex[e].pieces[i], len), "%s: piece of %d", ex[e].name, ex[e].ids[i]);
            }
        }
    }
    /* byte pieces are ids 217 + byte (byte 9's id holds "\t"); the runs of '▁' reach 31 (168) and no further; '▁' + '▁' merges before '▁' + 'b' */
    {
        gemma2_model *m = tok_model(0);
        gemma2__merge mg;
        int32_t sp, b, sp2;
        uint32_t r_sp = 0, r_b = 0;
        char run[32 * 3 + 1];
        if (!m) return;
        for (i = 0; i < 256; i++) {
            char want[8];
            size_t len = 0;
            const char *pc = gemma2_token_piece(m, 217 + i, &len);
            snprintf(want, sizeof want, i == 9 ? "\t" : "<0x%02X>", i);
            CHECK(pc && len == strlen(want) && !memcmp(pc, want, len), "id %d is not %s", 217 + i, want);
        }
        for (i = 0; i < 32; i++) memcpy(run + 3 * i, "\xe2\x96\x81", 3);
        CHECK(gemma2_token_id(m, run, 31 * 3) == 168 && gemma2_token_id(m, run, 32 * 3) < 0, "runs of '\xe2\x96\x81' end at 31 (id 168)");
        sp = gemma2_token_id(m, run, 3);
        sp2 = gemma2_token_id(m, run, 6);
        b = gemma2_token_id(m, "b", 1);
        CHECK(sp == 235248 && sp2 == 139 && b == 235268, "ids of '\xe2\x96\x81', '\xe2\x96\x81\xe2\x96\x81', 'b'");
        CHECK(gemma2__tok_merge(m->tok, sp, sp, &mg) && mg.id == 139 && (r_sp = mg.prio) == 465, "'\xe2\x96\x81' + '\xe2\x96\x81': rank %u", r_sp);
        CHECK(gemma2__tok_merge(m->tok, sp, b, &mg) && (r_b = mg.prio) == 1440, "'\xe2\x96\x81' + 'b': rank %u", r_b);
    }
}

void suite_tokenizer(void)
{
    g2t_run("tokenizer/section_examples", test_tok_section_examples);
    g2t_run("tokenizer/cases_json", test_tok_cases_json);
    g2t_run("tokenizer/cases_model", test_tok_cases_model);
    g2t_run("tokenizer/decode_raw", test_tok_decode_raw);
    g2t_run("tokenizer/added_249", test_tok_249_added);
    g2t_run("tokenizer/roundtrip_unicode", test_tok_roundtrip_unicode);
    g2t_run("tokenizer/roundtrip_bytes", test_tok_roundtrip_bytes);
    g2t_run("tokenizer/stream_json", test_tok_stream_json);
    g2t_run("tokenizer/stream_model", test_tok_stream_model);
    g2t_run("tokenizer/long_inputs", test_tok_long_inputs);
    g2t_run("tokenizer/api_errors", test_tok_api_errors);
    g2t_run("tokenizer/via_load", test_tok_via_load);
    g2t_run("tokenizer/small_json", test_tok_small_json);
    g2t_run("tokenizer/corrupt_json", test_tok_corrupt_json);
    g2t_run("tokenizer/small_model", test_tok_small_spm);
    g2t_run("tokenizer/corrupt_model", test_tok_corrupt_spm);
    g2t_run("tokenizer/needs_unk", test_tok_needs_unk);
    g2t_run("tokenizer/detok_flags", test_tok_detok_flags);
    g2t_run("tokenizer/match_reference", test_tok_match_reference);
    g2t_run("tokenizer/no_quadratic", test_tok_no_quadratic);
    g2t_run("tokenizer/long_words", test_tok_long_words);
    {
        int k;
        for (k = 0; k < 2; k++) if (tok_state[k] > 0) { gemma2__tokenizer_free(tok_models[k].tok); tok_models[k].tok = NULL; tok_state[k] = 0; }
        for (k = 0; k < tok_n_cases; k++) {
            free(tok_cases[k].text); free(tok_cases[k].spm_text); free(tok_cases[k].ids); free(tok_cases[k].spm_ids);
        }
        free(tok_cases);
        tok_cases = NULL;
        tok_n_cases = 0;
    }
}
