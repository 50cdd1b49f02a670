/* The test runner: every suite, then one summary line.
   Usage: gemma2_test [filter ...]: a case runs when its name contains one of the filters (all
   run when none is given), and none that starts with '-' and then names a part of it (-rewind
   skips session/rewind): the emulated runs leave out their slowest cases that way. */
#include "test.h"
#include <time.h>

int g2t_case_failed;
const char *g2t_data = "tests/data";
static const char *g2t_filter;  /* the first filter, for the message when nothing matched */
static char **g2t_filters;
static int g2t_n_filters, g2t_passed, g2t_failed;
static int g2t_times;  /* GEMMA2_TEST_TIMES set: each line gives the case's processor time (all threads) */

static int g2t_selected(const char *name)
{
    int i, any_include = 0, included = 0;
    for (i = 0; i < g2t_n_filters; i++) {
        const char *f = g2t_filters[i];
        if (f[0] == '-' && f[1]) { if (strstr(name, f + 1)) return 0; }
        else { any_include = 1; if (strstr(name, f)) included = 1; }
    }
    return !any_include || included;
}

void g2t_run(const char *name, void (*fn)(void))
{
    if (!g2t_selected(name)) return;
    clock_t t0 = clock();
    g2t_case_failed = 0;
    fn();
    if (g2t_case_failed) { g2t_failed++; fprintf(stderr, "FAILED %s", name); }
    else { g2t_passed++; fprintf(stderr, "ok     %s", name); }
    if (g2t_times) fprintf(stderr, "  (%.2f s)", (double)(clock() - t0) / CLOCKS_PER_SEC);
    fputc('\n', stderr);
}

const char *g2t_path(const char *rel)
{
    static char buf[8][1024];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 1024, "%s/%s", g2t_data, rel);
    return p;
}

gemma2_model *g2t_load(const char *name, const gemma2_options *o)
{
    char dir[512], err[256];
    gemma2_model *m;
    snprintf(dir, sizeof dir, "%s%s", g2t_path("models/"), name);
    m = gemma2_load(dir, o, err, sizeof err);
    CHECK(m != NULL, "%s: load: %s", name, err);
    return m;
}

void *g2t_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    char *p;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    p = (char *)malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) { free(p); p = NULL; }
    if (p) p[n] = 0;
    fclose(f);
    if (size) *size = (size_t)n;
    return p;
}

int main(int argc, char **argv)
{
    const char *d = getenv("GEMMA2_TEST_DATA");
    if (d) g2t_data = d;
    g2t_times = getenv("GEMMA2_TEST_TIMES") != NULL;
    if (argc > 1) { g2t_filter = argv[1]; g2t_filters = argv + 1; g2t_n_filters = argc - 1; }
    suite_json();
    suite_model();
    suite_loader();
    suite_kernels();
    suite_tokenizer();
    suite_sampler();
    suite_chat();
    suite_generate();
    suite_session();
    suite_api();
    suite_trace();
    suite_saved();
    suite_batch();
    printf("%d passed, %d failed\n", g2t_passed, g2t_failed);
    if (g2t_filter && g2t_passed + g2t_failed == 0) { /* a mistyped filter must not pass as "0 failed" */
        fprintf(stderr, "no test case name contains \"%s\"\n", g2t_filter);
        return 1;
    }
    return g2t_failed ? 1 : 0;
}

/* JSON helpers for the fixture files (the library's own reader; these tests see its internals). */

/* A string node as a fresh NUL-terminated copy (malloc); *len its length (may hold NULs). NULL if not a string. */
static char *g2t_json_str(const gemma2__json *j, int32_t node, size_t *len)
{
    char *s;
    int64_t n;
    if (!gemma2__json_is(j, node, GEMMA2__JSTRING)) return NULL;
    s = (char *)malloc(j->nodes[node].len + 1);
    n = gemma2__json_unescape(j, node, s);
    if (n < 0) { free(s); return NULL; }
    s[n] = 0;
    if (len) *len = (size_t)n;
    return s;
}

/* An array of integers as a malloc'd array, *n its length (a non-integer entry reads as -1). NULL if not an array. */
static int32_t *g2t_json_ids(const gemma2__json *j, int32_t node, int *n)
{
    int32_t *ids, c;
    int k = 0, v;
    *n = 0;
    if (!gemma2__json_is(j, node, GEMMA2__JARRAY)) return NULL;
    ids = (int32_t *)malloc(sizeof *ids * (size_t)(j->nodes[node].count + 1));
    for (c = j->nodes[node].child; c >= 0; c = j->nodes[c].next) {
        if (!gemma2__json_int(j, c, &v)) v = -1;
        ids[k++] = v;
    }
    *n = k;
    return ids;
}
