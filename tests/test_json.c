#include "test.h"

static int json_ok(const char *s)
{
    gemma2__json j;
    char err[128];
    int r = gemma2__json_parse(&j, s, strlen(s), err, sizeof err);
    gemma2__json_free(&j);
    return r == 0;
}

static void test_json_valid(void)
{
    const char *good[] = {"{}", "[]", " {\"a\": [1, 2.5e-3, -0, true, false, null, \"x\\u00e9\\n\"]} ",
                          "[[[]],{}]", "\"s\"", "12", "{\"a\":{\"b\":{}}}"};
    size_t k;
    for (k = 0; k < sizeof good / sizeof *good; k++) CHECK(json_ok(good[k]), "should parse: %s", good[k]);
}

static void test_json_invalid(void)
{
    const char *bad[] = {"", "{", "[1,]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "[1 2]", "{1:2}", "[}", "{]",
                         "\"abc", "tru", "[1]]", "{} x", "[\"a\nb\"]", "{\"a\":1 \"b\":2}", ",", "[,1]"};
    size_t k;
    for (k = 0; k < sizeof bad / sizeof *bad; k++) CHECK(!json_ok(bad[k]), "should fail: %s", bad[k]);
}

static void test_json_depth(void)
{
    char buf[1000];
    memset(buf, '[', 999);
    buf[999] = 0;
    CHECK(!json_ok(buf), "deep nesting must fail cleanly");
}

static void test_json_values(void)
{
    const char *s = "{\"eps\": 1e-06, \"n\": 8192, \"x\": null, \"s\": \"a\\\"\\u00e9\\ud83d\\ude00\", \"arr\": [1, 107]}";
    gemma2__json j;
    char err[128], buf[64];
    double d = 0;
    volatile float f, want;
    int n = 0;
    int64_t len;
    CHECK(gemma2__json_parse(&j, s, strlen(s), err, sizeof err) == 0, "%s", err);
    CHECK(gemma2__json_number(&j, gemma2__json_get(&j, 0, "eps"), &d), "eps");
    /* through float variables: where FLT_EVAL_METHOD is 1 (s390x in ISO C mode) (float)d == 1e-6f
       compares in double precision, and the double constant 1e-6 is not the float nearest it */
    f = (float)d;
    want = 1e-6f;
    CHECK(f == want, "eps %g", d);
    CHECK(gemma2__json_int(&j, gemma2__json_get(&j, 0, "n"), &n) && n == 8192, "n %d", n);
    CHECK(gemma2__json_is(&j, gemma2__json_get(&j, 0, "x"), GEMMA2__JNULL), "null");
    CHECK(gemma2__json_get(&j, 0, "missing") < 0, "missing key");
    len = gemma2__json_unescape(&j, gemma2__json_get(&j, 0, "s"), buf);
    CHECK(len == 8 && !memcmp(buf, "a\"\xc3\xa9\xf0\x9f\x98\x80", 8), "unescape len %d", (int)len);
    CHECK(j.nodes[gemma2__json_get(&j, 0, "arr")].count == 2, "array count");
    gemma2__json_free(&j);
}

/* Sizes a hostile file can have: nesting a million deep fails cleanly (the parser keeps its own
   bounded stack: no recursion), and a 16 MB string and an object of 300,000 keys parse in one pass. */
static void test_json_large(void)
{
    const size_t deep = 1000000, big = (size_t)16 << 20;
    const int keys = 300000;
    char *buf = (char *)malloc(big + 16), err[128];
    gemma2__json j;
    size_t n = 0;
    int k, v = -1;
    if (!buf) { CHECK(0, "malloc"); return; }
    memset(buf, '[', deep);
    CHECK(gemma2__json_parse(&j, buf, deep, err, sizeof err) != 0 && strstr(err, "nested too deeply"), "deep: %s", err);
    gemma2__json_free(&j);
    buf[0] = '"';
    memset(buf + 1, 'a', big);
    buf[big + 1] = '"';
    CHECK(gemma2__json_parse(&j, buf, big + 2, err, sizeof err) == 0 && j.n == 1 && j.nodes[0].len == big, "long string: %s", err);
    gemma2__json_free(&j);
    n += (size_t)sprintf(buf + n, "{");
    for (k = 0; k < keys; k++) n += (size_t)sprintf(buf + n, "%s\"k%d\": %d", k ? "," : "", k, k);
    n += (size_t)sprintf(buf + n, "}");
    CHECK(gemma2__json_parse(&j, buf, n, err, sizeof err) == 0 && j.nodes[0].count == 2 * keys, "many keys: %s", err);
    CHECK(gemma2__json_int(&j, gemma2__json_get(&j, 0, "k299999"), &v) && v == keys - 1, "last key: %d", v);
    gemma2__json_free(&j);
    free(buf);
}

/* The public wrappers: walking, strings cut to a buffer, bad nodes answered, not read. */
static void test_json_public(void)
{
    const char *s = "{\"a\": [1, \"x\\u00e9y\"], \"b\": {}, \"c\": \"\\q\"}";
    char err[128], buf[8];
    gemma2_json *j = gemma2_json_parse(s, strlen(s), err, sizeof err);
    int a, e0, e1;
    double d = 0;
    CHECK(j != NULL, "%s", err);
    if (!j) return;
    CHECK(gemma2_json_type(j, 0) == GEMMA2_JSON_OBJECT && gemma2_json_count(j, 0) == 3, "root");
    a = gemma2_json_get(j, 0, "a");
    CHECK(gemma2_json_type(j, a) == GEMMA2_JSON_ARRAY && gemma2_json_count(j, a) == 2, "a");
    e0 = gemma2_json_child(j, a);
    e1 = gemma2_json_next(j, e0);
    CHECK(gemma2_json_number(j, e0, &d) && d == 1 && gemma2_json_next(j, e1) == -1, "elements");
    CHECK(gemma2_json_string(j, e1, buf, sizeof buf) == 4 && !strcmp(buf, "x\xc3\xa9y"), "string %s", buf);
    CHECK(gemma2_json_string(j, e1, buf, 2) == 4 && buf[0] == 'x', "cut");
    CHECK(gemma2_json_string(j, gemma2_json_get(j, 0, "c"), buf, sizeof buf) == GEMMA2_ERROR_FORMAT, "bad escape");
    CHECK(gemma2_json_string(j, e0, buf, sizeof buf) == GEMMA2_ERROR_INVALID_ARGUMENT, "not a string");
    CHECK(gemma2_json_child(j, gemma2_json_get(j, 0, "b")) == -1 && gemma2_json_get(j, 0, "zz") == -1, "empty, absent");
    CHECK(gemma2_json_type(j, -1) == -1 && gemma2_json_type(j, 1000) == -1 && gemma2_json_child(j, 1000) == -1 &&
          gemma2_json_get(j, a, "x") == -1 && !gemma2_json_number(j, 1000, &d), "bad nodes");
    gemma2_json_free(j);
    CHECK(gemma2_json_parse("[1,", 3, err, sizeof err) == NULL && strstr(err, "byte"), "malformed: %s", err);
    gemma2_json_free(NULL);
}

void suite_json(void)
{
    g2t_run("json/public", test_json_public);
    g2t_run("json/valid", test_json_valid);
    g2t_run("json/invalid", test_json_invalid);
    g2t_run("json/depth", test_json_depth);
    g2t_run("json/values", test_json_values);
    g2t_run("json/large", test_json_large);
}
