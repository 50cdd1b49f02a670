/* tokenize: text in, token ids and pieces out, and the text decoded back.

     examples/tokenize --model-dir gemma-2-2b-it "Hello, world"
     echo "Hello" | examples/tokenize --tokenizer tests/data/tokenizer/tokenizer.model
     examples/tokenize --tokenizer tokenizer.json --special --bos "<start_of_turn>user"

   --model-dir DIR   a Gemma 2 folder: tokenizer.json, else tokenizer.model (config.json must be there too)
   --tokenizer FILE  a tokenizer.json or tokenizer.model by itself
   --special         match special tokens written in the text (<start_of_turn>, <bos>, ...)
   --bos             prepend <bos>
   Without text arguments the text is read from standard input. */
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    fprintf(stderr, "usage: tokenize (--model-dir DIR | --tokenizer FILE) [--special] [--bos] [TEXT ...]\n");
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *file = NULL;
    char err[512], *text = NULL, *back;
    size_t len = 0, cap = 0;
    int flags = 0, i, n, k, first_text = 0;
    int32_t *ids;
    gemma2_model *m;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model-dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "--special")) flags |= GEMMA2_TOKENIZE_SPECIAL;
        else if (!strcmp(argv[i], "--bos")) flags |= GEMMA2_TOKENIZE_ADD_BOS;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(); return 0; }
        else if (!strcmp(argv[i], "--")) { first_text = i + 1; break; }
        else if (argv[i][0] == '-' && argv[i][1] == '-') { usage(); return 2; }
        else { first_text = i; break; }
    }
    if (!dir == !file) { usage(); return 2; }
    if (dir) {
        gemma2_options o;
        memset(&o, 0, sizeof o);
        o.tokenizer_only = 1;
        m = gemma2_load(dir, &o, err, sizeof err);
    } else m = gemma2_load_tokenizer(file, err, sizeof err);
    if (!m) { fprintf(stderr, "tokenize: %s\n", err); return 1; }

    /* the text: the arguments joined by spaces, else all of stdin */
    if (first_text > 0) {
        for (i = first_text; i < argc; i++) {
            size_t l = strlen(argv[i]);
            if (len + l + 2 > cap) { cap = (len + l + 2) * 2; text = (char *)realloc(text, cap); }
            if (i > first_text) text[len++] = ' ';
            memcpy(text + len, argv[i], l);
            len += l;
        }
    } else {
        size_t r;
        do {
            if (len + 4096 > cap) { cap = (len + 4096) * 2; text = (char *)realloc(text, cap); }
            r = fread(text + len, 1, cap - len, stdin);
            len += r;
        } while (r > 0);
    }
    if (!text) text = (char *)calloc(1, 1);

    n = gemma2_tokenize(m, text, len, NULL, 0, flags); /* how many, then for real */
    if (n < 0) { fprintf(stderr, "tokenize: %s\n", gemma2_error_string(n)); return 1; }
    ids = (int32_t *)malloc(sizeof *ids * (size_t)(n > 0 ? n : 1));
    gemma2_tokenize(m, text, len, ids, n, flags);
    printf("%d tokens\n", n);
    for (k = 0; k < n; k++) {
        size_t pl;
        const char *p = gemma2_token_piece(m, ids[k], &pl);
        printf("%8d  ", (int)ids[k]);
        /* show the piece as stored ('▁' for a space), with control characters escaped */
        for (; pl > 0; p++, pl--) {
            unsigned char c = (unsigned char)*p;
            if (c == '\n') printf("\\n");
            else if (c == '\t') printf("\\t");
            else if (c == '\r') printf("\\r");
            else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
            else putchar(c);
        }
        printf("%s\n", gemma2_token_is_special(m, ids[k]) ? "  (special)" : "");
    }
    k = gemma2_detokenize(m, ids, n, NULL, 0, 0);
    back = (char *)malloc((size_t)(k > 0 ? k : 0) + 1);
    gemma2_detokenize(m, ids, n, back, (size_t)k, 0);
    if (flags & GEMMA2_TOKENIZE_ADD_BOS) printf("decoded (%d bytes):\n", k);
    else printf("decoded (%d bytes, %s the input):\n", k, (size_t)k == len && !memcmp(back, text, len) ? "same as" : "differs from");
    fwrite(back, 1, (size_t)k, stdout);
    printf("\n");
    free(back);
    free(ids);
    free(text);
    gemma2_free(m);
    return 0;
}
