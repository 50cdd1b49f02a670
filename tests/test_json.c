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
    int n = 0;
    int64_t len;
    CHECK(gemma2__json_parse(&j, s, strlen(s), err, sizeof err) == 0, "%s", err);
    CHECK(gemma2__json_number(&j, gemma2__json_get(&j, 0, "eps"), &d) && (float)d == 1e-6f, "eps %g", d);
    CHECK(gemma2__json_int(&j, gemma2__json_get(&j, 0, "n"), &n) && n == 8192, "n %d", n);
    CHECK(gemma2__json_is(&j, gemma2__json_get(&j, 0, "x"), GEMMA2__JNULL), "null");
    CHECK(gemma2__json_get(&j, 0, "missing") < 0, "missing key");
    len = gemma2__json_unescape(&j, gemma2__json_get(&j, 0, "s"), buf);
    CHECK(len == 8 && !memcmp(buf, "a\"\xc3\xa9\xf0\x9f\x98\x80", 8), "unescape len %d", (int)len);
    CHECK(j.nodes[gemma2__json_get(&j, 0, "arr")].count == 2, "array count");
    gemma2__json_free(&j);
}

void suite_json(void)
{
    g2t_run("json/valid", test_json_valid);
    g2t_run("json/invalid", test_json_invalid);
    g2t_run("json/depth", test_json_depth);
    g2t_run("json/values", test_json_values);
}
