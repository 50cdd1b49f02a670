/* topk: load a Gemma 2 folder and print the k most likely next tokens after the given ids.

     ./examples/topk MODEL_DIR [-k K] [-t THREADS] [--tokenizer FILE] ID [ID ...]

   Prints one line per token: id, logit and, with --tokenizer, the token's text (control
   characters escaped). Example (tests/data has a tiny random model with the real vocabulary):
     ./examples/topk tests/data/models/tiny-realvocab --tokenizer tests/data/tokenizer/tokenizer.json 2 106 1645 108
*/
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *dir = NULL, *tok = NULL;
    int k = 10, n = 0, i, j, rc;
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(argc > 1 ? argc : 1));
    gemma2_options opt;
    char err[512];
    gemma2_model *m;
    gemma2_session *s;
    const float *logits;
    int *best;
    opt = gemma2_options_default();
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-k") && i + 1 < argc) k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) opt.n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tok = argv[++i];
        else if (!dir) dir = argv[i];
        else {
            char *end;
            long v = strtol(argv[i], &end, 10);
            if (*end || v < 0 || v > INT32_MAX) { fprintf(stderr, "topk: \"%s\" is not a token id\n", argv[i]); return 2; }
            ids[n++] = (int32_t)v;
        }
    }
    if (!dir || n == 0 || k < 1) {
        fprintf(stderr, "usage: topk MODEL_DIR [-k K] [-t THREADS] [--tokenizer FILE] ID [ID ...]\n");
        return 2;
    }
    opt.no_tokenizer = tok == NULL; /* ids in, ids out: the tokenizer only to show the tokens' text */
    opt.tokenizer_path = tok;
    m = gemma2_load(dir, &opt, err, sizeof err);
    if (!m) { fprintf(stderr, "topk: %s\n", err); return 1; }
    s = gemma2_session_new_ex(m, n, &rc);
    if (!s) {
        if (rc == GEMMA2_ERROR_UNSUPPORTED)
            fprintf(stderr, "topk: %d ids are more than the %d positions of %s\n", n, gemma2_model_config(m)->max_position_embeddings, dir);
        else
            fprintf(stderr, "topk: %s: %s\n", dir, gemma2_error_string(rc));
        gemma2_free(m);
        return 1;
    }
    rc = gemma2_eval(s, ids, n, NULL);
    if (rc != 0) { fprintf(stderr, "topk: %s\n", gemma2_error_string(rc)); gemma2_session_free(s); gemma2_free(m); return 1; }
    logits = gemma2_logits(s);
    if (k > gemma2_vocab_size(m)) k = gemma2_vocab_size(m);
    /* partial selection: keep the k best seen so far, in order */
    best = (int *)malloc(sizeof(int) * (size_t)k);
    for (i = 0; i < k; i++) best[i] = -1;
    for (i = 0; i < gemma2_vocab_size(m); i++) {
        if (best[k - 1] >= 0 && logits[i] <= logits[best[k - 1]]) continue;
        for (j = k - 1; j > 0 && (best[j - 1] < 0 || logits[i] > logits[best[j - 1]]); j--) best[j] = best[j - 1];
        best[j] = i;
    }
    for (i = 0; i < k; i++) {
        printf("%d\t%.4f", best[i], logits[best[i]]);
        if (tok) {
            size_t len = 0, c;
            const char *piece = gemma2_token_piece(m, best[i], &len);
            putchar('\t');
            for (c = 0; piece && c < len; c++) {
                unsigned char b = (unsigned char)piece[c];
                if (b == '\n') fputs("\\n", stdout);
                else if (b < 0x20 || b == 0x7f) printf("\\x%02x", b);
                else putchar(b);
            }
        }
        putchar('\n');
    }
    free(best);
    free(ids);
    gemma2_session_free(s);
    gemma2_free(m);
    return 0;
}
