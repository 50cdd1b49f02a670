/* Tokenizer benchmark: load time and memory of each format, encode speed on a few MB of mixed text (C source,
   English prose, the fixture's multilingual and whitespace cases), compared in the same run with SentencePiece's
   own C++ encoder on the same tokenizer.model when this file is built as C++ with GEMMA2_BENCH_SPM (the Makefile
   does that when libsentencepiece is installed). Not a test: numbers only, plus a check that the ids agree.
   Usage: bench_tokenizer [tests/data] [MB] */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime, getrusage */
#endif
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#endif
#ifdef GEMMA2_BENCH_SPM
#include <sentencepiece_processor.h>
#include <string>
#include <vector>
#endif

static double bench_now(void)
{
#if defined(__unix__) || defined(__APPLE__)
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static long bench_maxrss_kb(void)
{
#if defined(__unix__) || defined(__APPLE__)
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
#else
    return 0;
#endif
}

static char *bench_read(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *p;
    long k;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    k = ftell(f);
    fseek(f, 0, SEEK_SET);
    p = (char *)malloc((size_t)k + 1);
    if (p && fread(p, 1, (size_t)k, f) != (size_t)k) { free(p); p = NULL; }
    fclose(f);
    *n = (size_t)k;
    return p;
}

/* Bytes a loaded tokenizer holds. */
static size_t bench_tok_bytes(const gemma2__tokenizer *t)
{
    size_t b = sizeof *t + t->off[t->n] + ((size_t)t->n + 1) * 4 + (size_t)t->n + ((size_t)t->pmask + 1) * 8 +
               (size_t)t->n_ac * sizeof *t->ac;
    if (t->prio) b += (size_t)t->n * 4;
    if (t->mtab) b += ((size_t)t->mmask + 1) * sizeof *t->mtab;
    if (t->ascii_pair) b += 128 * 128 * sizeof *t->ascii_pair;
    return b;
}

/* The text: the library source, the fixture README, and the text of every fixture case, repeated to `mb` MB. */
static char *bench_text(const char *data_dir, size_t mb, size_t *n_out)
{
    char path[1024], *parts[3], *out;
    size_t sizes[3], want = mb << 20, n = 0, k;
    snprintf(path, sizeof path, "%s/../../gemma2.h", data_dir);
    parts[0] = bench_read(path, &sizes[0]);
    snprintf(path, sizeof path, "%s/tokenizer/README.md", data_dir);
    parts[1] = bench_read(path, &sizes[1]);
    snprintf(path, sizeof path, "%s/tokenizer/cases.jsonl", data_dir);
    parts[2] = NULL;
    sizes[2] = 0;
    {
        /* the case texts, unescaped */
        size_t sz, i = 0;
        char *cases = bench_read(path, &sz);
        if (cases) {
            parts[2] = (char *)malloc(sz + 1);
            while (i < sz) {
                size_t e = i;
                gemma2__json j;
                char err[64];
                while (e < sz && cases[e] != '\n') e++;
                if (gemma2__json_parse(&j, cases + i, e - i, err, sizeof err) == 0) {
                    int32_t t = gemma2__json_get(&j, 0, "text");
                    if (gemma2__json_is(&j, t, GEMMA2__JSTRING) && !gemma2__json_get(&j, 0, "kind")) {
                        int64_t l = gemma2__json_unescape(&j, t, parts[2] + sizes[2]);
                        /* keep the text valid UTF-8 without NULs so that every encoder sees the same string */
                        if (l > 0 && !memchr(parts[2] + sizes[2], 0, (size_t)l)) { sizes[2] += (size_t)l; parts[2][sizes[2]++] = '\n'; }
                    }
                }
                gemma2__json_free(&j);
                i = e + 1;
            }
            free(cases);
        }
    }
    out = (char *)malloc(want + 1);
    while (n < want) {
        for (k = 0; k < 3 && n < want; k++) {
            size_t c;
            if (!parts[k] || !sizes[k]) continue;
            c = sizes[k] < want - n ? sizes[k] : want - n;
            memcpy(out + n, parts[k], c);
            n += c;
        }
        if (!parts[0] && !parts[1] && !parts[2]) break;
    }
    /* do not end inside a UTF-8 character */
    while (n > 0 && ((unsigned char)out[n - 1] & 0xc0) == 0x80) n--;
    if (n > 0 && (unsigned char)out[n - 1] >= 0xc0) n--;
    out[n] = 0;
    for (k = 0; k < 3; k++) free(parts[k]);
    *n_out = n;
    return out;
}

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : "tests/data";
    size_t mb = argc > 2 ? (size_t)atoi(argv[2]) : 4, n_text, fi;
    char *text = bench_text(data, mb ? mb : 4, &n_text);
    int32_t *ids[2] = {NULL, NULL}, *whole_ids[2] = {NULL, NULL};
    int n_ids[2] = {0, 0};
    double ours_mbs[2] = {0, 0}, ours_line_mbs[2] = {0, 0};
    size_t n_line_ids[2] = {0, 0};
    static const char *names[2] = {"tokenizer.json", "tokenizer.model"};
    if (!text || n_text == 0) { fprintf(stderr, "no text: run from the repository root\n"); return 1; }
    printf("text: %.2f MB (C source, English, multilingual and whitespace fixture cases)\n", (double)n_text / 1048576.0);
    for (fi = 0; fi < 2; fi++) {
        size_t f = 1 - fi; /* tokenizer.model first: its peak memory is the smaller */
        gemma2_model m;
        char path[1024], err[256];
        double t0, t1, best = 1e9;
        long rss0 = bench_maxrss_kb();
        int rep, rc = 0;
        memset(&m, 0, sizeof m);
        snprintf(path, sizeof path, "%s/tokenizer/%s", data, names[f]);
        for (rep = 0; rep < 3; rep++) {
            if (m.tok) gemma2__tokenizer_free(m.tok);
            t0 = bench_now();
            rc = gemma2__tokenizer_load(&m.tok, path, err, sizeof err);
            t1 = bench_now();
            if (rc) { fprintf(stderr, "%s\n", err); return 1; }
            if (t1 - t0 < best) best = t1 - t0;
        }
        printf("%-16s load %6.1f ms, holds %5.1f MB, peak RSS during load +%.1f MB\n", names[f], best * 1e3,
               (double)bench_tok_bytes(m.tok) / 1048576.0, (double)(bench_maxrss_kb() - rss0) / 1024.0);
        ids[f] = (int32_t *)malloc(sizeof(int32_t) * (n_text + 2));
        whole_ids[f] = (int32_t *)malloc(sizeof(int32_t) * (n_text + 2));
        best = 1e9;
        for (rep = 0; rep < 3; rep++) {
            t0 = bench_now();
            n_ids[f] = gemma2_tokenize(&m, text, n_text, whole_ids[f], (int)n_text + 2, GEMMA2_TOKENIZE_SPECIAL);
            t1 = bench_now();
            if (t1 - t0 < best) best = t1 - t0;
        }
        ours_mbs[f] = (double)n_text / 1048576.0 / best;
        printf("%-16s encode %7.1f MB/s (%d ids), whole text in one call\n", names[f], ours_mbs[f], n_ids[f]);
        best = 1e9;
        for (rep = 0; rep < 3; rep++) {
            size_t i = 0;
            n_line_ids[f] = 0;
            t0 = bench_now();
            while (i < n_text) {
                size_t e = i;
                int k;
                while (e < n_text && text[e] != '\n') e++;
                k = gemma2_tokenize(&m, text + i, e - i, ids[f] + n_line_ids[f], (int)(n_text + 2 - n_line_ids[f]), GEMMA2_TOKENIZE_SPECIAL);
                if (k > 0) n_line_ids[f] += (size_t)k;
                i = e + 1;
            }
            t1 = bench_now();
            if (t1 - t0 < best) best = t1 - t0;
        }
        ours_line_mbs[f] = (double)n_text / 1048576.0 / best;
        printf("%-16s encode %7.1f MB/s (%d ids), line by line\n", names[f], ours_line_mbs[f], (int)n_line_ids[f]);
        gemma2__tokenizer_free(m.tok);
    }
#ifdef GEMMA2_BENCH_SPM
    {
        sentencepiece::SentencePieceProcessor sp;
        std::vector<int> spids;
        char path[1024];
        double t0, t1, best = 1e9, spm_mbs, spm_line_mbs;
        int rep;
        long rss0 = bench_maxrss_kb();
        snprintf(path, sizeof path, "%s/tokenizer/tokenizer.model", data);
        t0 = bench_now();
        if (!sp.Load(path).ok()) { fprintf(stderr, "SentencePiece cannot load %s\n", path); return 1; }
        t1 = bench_now();
        printf("SentencePiece    load %6.1f ms, peak RSS during load +%.1f MB\n", (t1 - t0) * 1e3, (double)(bench_maxrss_kb() - rss0) / 1024.0);
        for (rep = 0; rep < 2; rep++) {
            spids.clear();
            t0 = bench_now();
            sp.Encode(std::string(text, n_text), &spids);
            t1 = bench_now();
            if (t1 - t0 < best) best = t1 - t0;
        }
        spm_mbs = (double)n_text / 1048576.0 / best;
        printf("SentencePiece    encode %7.1f MB/s (%d ids), whole text in one call\n", spm_mbs, (int)spids.size());
        {
            int same = (int)spids.size() == n_ids[1], k;
            for (k = 0; same && k < n_ids[1]; k++) same = spids[(size_t)k] == whole_ids[1][k];
            printf("  ids of tokenizer.model %s SentencePiece's\n", same ? "identical to" : "DIFFER from");
        }
        best = 1e9;
        for (rep = 0; rep < 3; rep++) {
            size_t i = 0;
            std::vector<int> line;
            spids.clear();
            t0 = bench_now();
            while (i < n_text) {
                size_t e = i;
                while (e < n_text && text[e] != '\n') e++;
                sp.Encode(std::string_view(text + i, e - i), &line);
                spids.insert(spids.end(), line.begin(), line.end());
                i = e + 1;
            }
            t1 = bench_now();
            if (t1 - t0 < best) best = t1 - t0;
        }
        spm_line_mbs = (double)n_text / 1048576.0 / best;
        printf("SentencePiece    encode %7.1f MB/s (%d ids), line by line\n", spm_line_mbs, (int)spids.size());
        {
            size_t k;
            int same = spids.size() == n_line_ids[1];
            for (k = 0; same && k < n_line_ids[1]; k++) same = spids[k] == ids[1][k];
            printf("  ids of tokenizer.model %s SentencePiece's\n", same ? "identical to" : "DIFFER from");
        }
        printf("ratio, line by line: tokenizer.model %.1fx SentencePiece, tokenizer.json %.1fx (target >= 5x)\n",
               ours_line_mbs[1] / spm_line_mbs, ours_line_mbs[0] / spm_line_mbs);
        printf("ratio, whole text:   tokenizer.model %.1fx SentencePiece, tokenizer.json %.1fx\n",
               ours_mbs[1] / spm_mbs, ours_mbs[0] / spm_mbs);
    }
#else
    printf("SentencePiece: not built in (install libsentencepiece-dev, then make bench-tokenizer)\n");
#endif
    for (fi = 0; fi < 2; fi++) { free(ids[fi]); free(whole_ids[fi]); }
    free(text);
    return 0;
}
