#include "test.h"

/* Chat format tests: every case of tests/data/chat/cases.jsonl (see its README), plus the
   trimming rules on their own. */

static gemma2_model *chat_models[2]; /* [0] tokenizer.json, [1] tokenizer.model */

static gemma2_model *chat_get_model_fmt(int spm)
{
    if (!chat_models[spm]) {
        gemma2_options o;
        char err[256];
        memset(&o, 0, sizeof o);
        o.tokenizer_only = 1;
        o.tokenizer_path = g2t_path(spm ? "tokenizer/tokenizer.model" : "tokenizer/tokenizer.json");
        chat_models[spm] = gemma2_load(g2t_path("models/tiny-realvocab"), &o, err, sizeof err);
        CHECK(chat_models[spm] != NULL, "load tokenizer: %s", err);
    }
    return chat_models[spm];
}

static gemma2_model *chat_get_model(void) { return chat_get_model_fmt(0); }

static int chat_ids_eq(const int32_t *a, int na, const int32_t *b, int nb)
{
    return na == nb && (na == 0 || !memcmp(a, b, sizeof(int32_t) * (size_t)na));
}

static void chat_print_ids(const char *label, const int32_t *a, int n)
{
    int i;
    fprintf(stderr, "    %s (%d):", label, n);
    for (i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", (int)a[i]);
    fprintf(stderr, "\n");
}

/* Our stricter rule: optional leading system (then at least one message), then user,
   assistant|model, user, ... */
static int chat_valid_for_us(const gemma2_message *msgs, int n)
{
    int i = 0, t = 0;
    if (n > 0 && !strcmp(msgs[0].role, "system")) { if (n < 2) return 0; i = 1; }
    for (; i < n; i++, t++) {
        if (t % 2 == 0 && strcmp(msgs[i].role, "user")) return 0;
        if (t % 2 == 1 && strcmp(msgs[i].role, "assistant") && strcmp(msgs[i].role, "model")) return 0;
    }
    return 1;
}

/* Every case on one tokenizer file: the ids are transformers' (tokenizer.json); tokenizer.model must give the same,
   gemma2_chat_render + GEMMA2_TOKENIZE_SPECIAL included (its CONTROL pieces such as <bos> are matched then). */
static void chat_fixtures(int spm)
{
    gemma2_model *m = chat_get_model_fmt(spm);
    char *text, *line, *next;
    size_t size;
    int n_cases = 0, n_rendered = 0, n_errors = 0, n_diff_checked = 0;
    if (!m) return;
    text = (char *)g2t_read_file(g2t_path("chat/cases.jsonl"), &size);
    CHECK(text != NULL, "cases.jsonl missing");
    if (!text) return;
    for (line = text; line && *line; line = next) {
        gemma2__json j;
        char err[128], *name, *ref_text;
        gemma2_message msgs[32];
        char *owned[64];
        int n_owned = 0, n_msgs = 0, gen = 0, n_ids = 0, n_safe = 0, k, r, tmpl_error, ours_ok;
        int32_t root, c, *ids, *safe, *out = (int32_t *)malloc(sizeof(int32_t) * 65536);
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (!*line) continue;
        if (gemma2__json_parse(&j, line, strlen(line), err, sizeof err) != 0) { CHECK(0, "bad line: %s", err); continue; }
        root = 0;
        name = g2t_json_str(&j, gemma2__json_get(&j, root, "name"), NULL);
        gen = gemma2__json_is(&j, gemma2__json_get(&j, root, "add_generation_prompt"), GEMMA2__JTRUE);
        tmpl_error = gemma2__json_is(&j, gemma2__json_get(&j, root, "error"), GEMMA2__JSTRING);
        ref_text = g2t_json_str(&j, gemma2__json_get(&j, root, "text"), NULL);
        ids = g2t_json_ids(&j, gemma2__json_get(&j, root, "ids"), &n_ids);
        safe = g2t_json_ids(&j, gemma2__json_get(&j, root, "ids_user_content_as_text"), &n_safe);
        for (c = j.nodes[gemma2__json_get(&j, root, "messages")].child; c >= 0 && n_msgs < 32; c = j.nodes[c].next) {
            msgs[n_msgs].role = owned[n_owned++] = g2t_json_str(&j, gemma2__json_get(&j, c, "role"), NULL);
            msgs[n_msgs].content = owned[n_owned++] = g2t_json_str(&j, gemma2__json_get(&j, c, "content"), NULL);
            n_msgs++;
        }
        n_cases++;
        ours_ok = chat_valid_for_us(msgs, n_msgs);
        r = gemma2_chat_tokenize(m, msgs, n_msgs, gen, out, 65536);
        if (!ours_ok) {
            int rr = gemma2_chat_render(msgs, n_msgs, gen, (char *)out, 65536);
            CHECK(r == GEMMA2_ERROR_CHAT_FORMAT && rr == GEMMA2_ERROR_CHAT_FORMAT, "%s: must be rejected (%d, %d)", name, r, rr);
            n_errors++;
        } else if (tmpl_error) {
            /* a leading system message: we fold it into the first user turn */
            gemma2_message folded[32];
            char *both;
            int32_t *out2 = (int32_t *)malloc(sizeof(int32_t) * 65536);
            int r2;
            size_t l1 = strlen(msgs[0].content), l2 = strlen(msgs[1].content);
            CHECK(!strcmp(msgs[0].role, "system"), "%s: only system folding differs from the template", name);
            both = (char *)malloc(l1 + l2 + 3);
            memcpy(both, msgs[0].content, l1);
            memcpy(both + l1, "\n\n", 2);
            memcpy(both + l1 + 2, msgs[1].content, l2 + 1);
            folded[0].role = "user";
            folded[0].content = both;
            for (k = 2; k < n_msgs; k++) folded[k - 1] = msgs[k];
            r2 = gemma2_chat_tokenize(m, folded, n_msgs - 1, gen, out2, 65536);
            CHECK(r > 0 && r == r2 && chat_ids_eq(out, r, out2, r2), "%s: system folding (%d vs %d)", name, r, r2);
            free(both);
            free(out2);
        } else {
            char *rendered = (char *)malloc(1 << 20);
            int32_t *sp = (int32_t *)malloc(sizeof(int32_t) * 65536);
            int nr, ns;
            n_rendered++;
            CHECK(r == n_safe && chat_ids_eq(out, r, safe, n_safe), "%s: %s: gemma2_chat_tokenize != ids_user_content_as_text", spm ? "model" : "json", name);
            if (!(r == n_safe && chat_ids_eq(out, r, safe, n_safe))) { chat_print_ids("got", out, r); chat_print_ids("want", safe, n_safe); }
            /* the size query alone */
            CHECK(gemma2_chat_tokenize(m, msgs, n_msgs, gen, NULL, 0) == n_safe, "%s: size query", name);
            nr = gemma2_chat_render(msgs, n_msgs, gen, rendered, 1 << 20);
            CHECK(nr >= 0 && (size_t)nr == strlen(ref_text) && !memcmp(rendered, ref_text, (size_t)nr), "%s: rendered text differs", name);
            /* the text with special matching reproduces transformers' apply_chat_template ids */
            ns = gemma2_tokenize(m, rendered, (size_t)nr, sp, 65536, GEMMA2_TOKENIZE_SPECIAL);
            CHECK(chat_ids_eq(sp, ns, ids, n_ids), "%s: %s: render + tokenize(SPECIAL) != ids", spm ? "model" : "json", name);
            if (!chat_ids_eq(sp, ns, ids, n_ids)) { chat_print_ids("got", sp, ns); chat_print_ids("want", ids, n_ids); }
            if (!chat_ids_eq(ids, n_ids, safe, n_safe)) n_diff_checked++;
            free(sp);
            free(rendered);
        }
        for (k = 0; k < n_owned; k++) free(owned[k]);
        free(name);
        free(ref_text);
        free(ids);
        free(safe);
        free(out);
        gemma2__json_free(&j);
    }
    CHECK(n_cases == 48, "cases %d", n_cases);
    CHECK(n_rendered == 37 && n_errors == 10 && n_diff_checked == 6, "rendered %d, rejected %d, injection cases %d",
          n_rendered, n_errors, n_diff_checked);
    free(text);
}

static void test_chat_fixtures(void) { chat_fixtures(0); }
static void test_chat_fixtures_model(void) { chat_fixtures(1); }

static void test_chat_strip(void)
{
    struct { const char *in, *out; } cases[] = {
        {"  a b  ", "a b"}, {"\t\n\v\f\r x \x1c\x1d\x1e\x1f", "x"}, {"\xc2\x85\xc2\xa0y\xe3\x80\x80", "y"},
        {"\xe2\x80\x8bz\xe2\x80\x8b", "\xe2\x80\x8bz\xe2\x80\x8b"}, /* U+200B is not whitespace */
        {"\xef\xbb\xbfz", "\xef\xbb\xbfz"},                         /* nor U+FEFF */
        {"\xe2\x80\x80\xe2\x80\x8a\xe2\x80\xa8\xe2\x80\xa9\xe2\x80\xaf\xe2\x81\x9fq\xe1\x9a\x80", "q"},
        {"   ", ""}, {"", ""}, {"\xff \xff", "\xff \xff"}, {" \xe2\x80", "\xe2\x80"}};
    size_t k;
    for (k = 0; k < sizeof cases / sizeof *cases; k++) {
        size_t b, e, n = strlen(cases[k].in);
        gemma2__py_strip(cases[k].in, n, &b, &e);
        CHECK(e - b == strlen(cases[k].out) && !memcmp(cases[k].in + b, cases[k].out, e - b), "strip case %d", (int)k);
    }
}

static void test_chat_errors(void)
{
    gemma2_model *m = chat_get_model();
    gemma2_message msgs[3];
    int32_t ids[64];
    char buf[256];
    int n;
    if (!m) return;
    msgs[0].role = "system"; msgs[0].content = "  Be brief.\n ";
    msgs[1].role = "user"; msgs[1].content = " Hi ";
    msgs[2].role = "system"; msgs[2].content = "again";
    n = gemma2_chat_render(msgs, 2, 1, buf, sizeof buf);
    CHECK(n > 0 && !strcmp(buf, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"), "fold: %s", buf);
    CHECK(gemma2_chat_render(msgs, 3, 1, buf, sizeof buf) == GEMMA2_ERROR_CHAT_FORMAT, "system after user");
    CHECK(gemma2_chat_render(msgs, 1, 1, buf, sizeof buf) == GEMMA2_ERROR_CHAT_FORMAT, "system alone");
    CHECK(gemma2_chat_render(NULL, 0, 1, buf, sizeof buf) == 26 && !strcmp(buf, "<bos><start_of_turn>model\n"), "empty");
    /* truncation: the size is still reported, nothing written past cap */
    memset(buf, 'x', sizeof buf);
    CHECK(gemma2_chat_render(msgs, 2, 0, buf, 4) > 4 && buf[4] == 'x', "cap respected");
    CHECK(gemma2_chat_tokenize(m, msgs, 2, 1, ids, 3) > 3, "max_ids: the size needed");
    msgs[1].role = NULL;
    CHECK(gemma2_chat_tokenize(m, msgs, 2, 1, ids, 64) == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL role");
    CHECK(gemma2_chat_tokenize(NULL, msgs, 2, 1, ids, 64) == GEMMA2_ERROR_INVALID_ARGUMENT, "NULL model");
}

void suite_chat(void)
{
    g2t_run("chat/strip", test_chat_strip);
    g2t_run("chat/fixtures", test_chat_fixtures);
    g2t_run("chat/fixtures_model", test_chat_fixtures_model);
    g2t_run("chat/errors", test_chat_errors);
    gemma2_free(chat_models[0]);
    gemma2_free(chat_models[1]);
    chat_models[0] = chat_models[1] = NULL;
}
