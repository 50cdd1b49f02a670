/* Greedy decoding of tiny-gqa from its reference prompt must give the reference's tokens. With
   TP_STATIC this unit has its own private copy of the library (GEMMA2_STATIC); otherwise it
   includes only the declarations and links to tp_impl.c. */
#ifdef TP_STATIC
#define GEMMA2_STATIC
#define GEMMA2_IMPLEMENTATION
#endif
#include "../../gemma2.h"
#include "tp.h"
#include <stdio.h>

/* tests/data/models/tiny-gqa/reference.json: prompt_ids and greedy_ids (computed by the
   fixture's oracle, see tests/data/models/README.md). */
static const int32_t tp_prompt[20] = {2, 184, 88, 249, 416, 283, 113, 49, 503, 133, 503, 108, 432, 182, 206, 316, 14, 500, 140, 219};
static const int32_t tp_greedy[12] = {403, 104, 147, 191, 123, 254, 96, 147, 147, 253, 340, 345};

typedef struct tp_ids {
    int32_t ids[16];
    int n;
} tp_ids;

static int tp_collect(void *user, int32_t token, const char *text, size_t len)
{
    tp_ids *t = (tp_ids *)user;
    (void)text; (void)len;
    if (t->n < 16) t->ids[t->n] = token;
    t->n++;
    return 0;
}

int tp_model(const char *data)
{
    char dir[1024], err[256];
    gemma2_options o = gemma2_options_default();
    gemma2_generate_params gp = gemma2_generate_params_default();
    gemma2_model *m;
    gemma2_session *s;
    tp_ids got;
    int i, rc;
    snprintf(dir, sizeof dir, "%s/models/tiny-gqa", data);
    o.no_tokenizer = 1;
    m = gemma2_load(dir, &o, err, sizeof err);
    if (!m) { fprintf(stderr, "tp_model: %s\n", err); return 1; }
    s = gemma2_session_new(m, 64);
    got.n = 0;
    gp.max_new_tokens = 12;
    gp.ignore_eos = 1;
    gp.on_token = tp_collect;
    gp.user = &got;
    rc = s ? gemma2_generate(s, tp_prompt, 20, &gp, NULL) : GEMMA2_ERROR_OUT_OF_MEMORY;
    gemma2_session_free(s);
    gemma2_free(m);
    if (rc < 0) { fprintf(stderr, "tp_model: %s\n", gemma2_error_string(rc)); return 1; }
    if (got.n != 12) { fprintf(stderr, "tp_model: %d tokens, not 12\n", got.n); return 1; }
    for (i = 0; i < 12; i++)
        if (got.ids[i] != tp_greedy[i]) { fprintf(stderr, "tp_model: token %d is %d, not %d\n", i, (int)got.ids[i], (int)tp_greedy[i]); return 1; }
    return 0;
}
