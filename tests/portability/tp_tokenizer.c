/* A text through the fixture tokenizer and back. TP_STATIC: as in tp_model.c. */
#ifdef TP_STATIC
#define GEMMA2_STATIC
#define GEMMA2_IMPLEMENTATION
#endif
#include "../../gemma2.h"
#include "tp.h"
#include <stdio.h>
#include <string.h>

int tp_tokenizer(const char *data)
{
    static const char text[] = "Portable C: \xc3\xa9t\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac, tabs\tand  spaces.";
    char path[1024], err[256], back[256];
    int32_t ids[128];
    gemma2_model *t;
    int n, k;
    snprintf(path, sizeof path, "%s/tokenizer/tokenizer.json", data);
    t = gemma2_load_tokenizer(path, err, sizeof err);
    if (!t) { fprintf(stderr, "tp_tokenizer: %s\n", err); return 1; }
    n = gemma2_tokenize(t, text, strlen(text), ids, 128, 0);
    k = n > 0 ? gemma2_detokenize(t, ids, n, back, sizeof back, 0) : n;
    gemma2_free(t);
    if (n <= 0 || n > 128) { fprintf(stderr, "tp_tokenizer: tokenize returned %d\n", n); return 1; }
    if (k < 0 || (size_t)k != strlen(text) || memcmp(back, text, (size_t)k) != 0) {
        fprintf(stderr, "tp_tokenizer: the text did not decode back to itself (%d)\n", k);
        return 1;
    }
    return 0;
}
