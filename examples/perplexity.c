/* perplexity - how well a Gemma 2 model predicts a text file.

     ./examples/perplexity -m MODEL_DIR -f text.txt [-c 512] [-t THREADS] [--tokenizer FILE]

   The text is tokenized (plain text, no special tokens) and cut into windows of c - 1 tokens; each
   window is scored after a <bos> on a fresh context with gemma2_score (one batched pass per
   window, every token's log-probability). Prints the running perplexity per window on stderr and
   the final figure, exp(mean negative log-likelihood) over all scored tokens, on stdout.
   Windows are independent (no overlap), as llama.cpp's perplexity tool does it. */
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

int main(int argc, char **argv)
{
    const char *model = NULL, *file = NULL, *tok = NULL;
    int n_ctx = 512, n_threads = 0, i, n, win, w, rc;
    gemma2_options o;
    gemma2_model *m;
    gemma2_session *s;
    char err[512], *text;
    long len;
    FILE *f;
    int32_t *ids, bos, dummy;
    float *lp;
    double nll = 0;
    long scored = 0;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "perplexity: error: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "-f")) file = v;
        else if (!strcmp(a, "-c")) n_ctx = atoi(v);
        else if (!strcmp(a, "-t")) n_threads = atoi(v);
        else if (!strcmp(a, "--tokenizer")) tok = v;
        else { fprintf(stderr, "perplexity: error: unknown argument %s\nusage: perplexity -m MODEL_DIR -f FILE [-c N] [-t N] [--tokenizer FILE]\n", a); return 2; }
        i++;
    }
    if (!model || !file || n_ctx < 2) { fprintf(stderr, "usage: perplexity -m MODEL_DIR -f FILE [-c N (>= 2)] [-t N] [--tokenizer FILE]\n"); return 2; }
    f = fopen(file, "rb");
    if (!f) { fprintf(stderr, "perplexity: error: %s: cannot open\n", file); return 1; }
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = (char *)malloc((size_t)len + 1);
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) { fprintf(stderr, "perplexity: error: %s: cannot read\n", file); return 1; }
    fclose(f);

    o = gemma2_options_default();
    o.n_threads = n_threads;
    o.tokenizer_path = tok;
    m = gemma2_load(model, &o, err, sizeof err);
    if (!m) { fprintf(stderr, "perplexity: error: %s\n", err); return 1; }
    /* a folder without a tokenizer file loads (ids-only use is legitimate): say where it looked */
    if (!gemma2_has_tokenizer(m)) {
        fprintf(stderr, "perplexity: error: no tokenizer.json or tokenizer.model in %s (use --tokenizer FILE)\n", model);
        return 1;
    }
    n = gemma2_tokenize(m, text, (size_t)len, &dummy, 0, 0);
    if (n < 0) { fprintf(stderr, "perplexity: error: tokenizing: %s\n", gemma2_error_string(n)); return 1; }
    /* no tokens means no average: exp(0 / 0) would print nan and look like a result */
    if (n == 0) { fprintf(stderr, "perplexity: error: %s: no text to score (empty file)\n", file); return 1; }
    ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + 1));
    lp = (float *)malloc(sizeof(float) * (size_t)n_ctx);
    n = gemma2_tokenize(m, text, (size_t)len, ids, n, 0);
    s = gemma2_session_new_ex(m, n_ctx, &rc);
    if (!s && rc == GEMMA2_ERROR_UNSUPPORTED)
        fprintf(stderr, "perplexity: error: -c %d is more than the %d positions of %s\n", n_ctx,
                gemma2_model_config(m)->max_position_embeddings, model);
    else if (!s) fprintf(stderr, "perplexity: error: -c %d: %s\n", n_ctx, gemma2_error_string(rc));
    if (!s) return 1;
    if (!ids || !lp) { fprintf(stderr, "perplexity: error: out of memory\n"); return 1; }
    bos = gemma2_model_config(m)->bos_token_id;
    win = n_ctx - 1;
    fprintf(stderr, "%d tokens, %d windows of up to %d\n", n, (n + win - 1) / win, win);
    for (w = 0; w * win < n; w++) {
        int k = n - w * win < win ? n - w * win : win, j;
        gemma2_session_rewind(s, 0);
        rc = gemma2_score(s, &bos, 1, ids + w * win, k, lp, NULL);
        if (rc) { fprintf(stderr, "perplexity: error: %s\n", gemma2_error_string(rc)); return 1; }
        for (j = 0; j < k; j++) nll -= lp[j];
        scored += k;
        fprintf(stderr, "[%d] %.4f\n", w + 1, exp(nll / (double)scored));
    }
    printf("perplexity: %.4f over %ld tokens\n", exp(nll / (double)scored), scored);
    gemma2_session_free(s);
    gemma2_free(m);
    free(ids);
    free(lp);
    free(text);
    return 0;
}
