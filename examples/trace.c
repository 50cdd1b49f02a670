/* trace - watch a prompt go through Gemma 2, layer by layer.

     ./examples/trace -m MODEL_DIR -p TEXT [--tokenizer FILE] [-k TOP] [-t THREADS]
     ./examples/trace -m MODEL_DIR --ids ID,ID,... [-k TOP] [-t THREADS]      (no tokenizer needed)
     ./examples/trace -m MODEL_DIR --shapes [--ctx N] [--gbps GB_PER_S] [--gflops GFLOP_PER_S]

   The first form prints the prompt's tokens (id and piece), then one line per decoder layer:
     layer N  sliding|global  |x| of the last token's residual stream after the layer,
              the attention entropy of the last token's query heads (mean and range, in nats,
              beside its maximum log(keys seen): a head that spreads its weight evenly has the
              maximum, one that looks at a single key has 0),
              the logit lens (the tokens the residual stream would predict if the model stopped
              at this layer: gemma2_logit_lens), and the time this layer spent in matrix
              products, in attention and in the rest (norms, RoPE, the GELU gate),
   and finally the greedy next token. The second form prints the model's shapes and what follows
   from them: parameters per part, bytes, FLOPs and KV-cache bytes per token (examples/README.md
   walks through those numbers for the real 2B, 9B and 27B), at context N (default: the model's
   maximum); given a machine's read bandwidth and arithmetic peak, also the speed they allow.

   On the tiny fixture with the real vocabulary (random weights: the tokens mean nothing):
     ./examples/trace -m tests/data/models/tiny-realvocab --tokenizer tests/data/tokenizer/tokenizer.json -p "Hello world"

   Built by make. The test suite compiles this file with GEMMA2_TRACE_NO_MAIN and checks its
   numbers against the fixtures' reference hidden states (tests/test_trace.c). */
#ifndef GEMMA2_TRACE_NO_MAIN
#define GEMMA2_IMPLEMENTATION
#endif
#include "../gemma2.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#endif

#define TRACE_TOPK_MAX 16

static double trace_now(void)
{
#if defined(_WIN32)
    LARGE_INTEGER f, c;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return (double)c.QuadPart / (double)f.QuadPart;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

/* What the trace of one prompt found, per residual-stream slice: slice 0 is the embedding, slice
   l+1 the stream after decoder layer l (as in the fixtures' hidden_states.f32). */
typedef struct trace_layer {
    double norm;                  /* |x| of the last token */
    int top[TRACE_TOPK_MAX];      /* logit lens: the best ids, highest first */
    float top_logit[TRACE_TOPK_MAX];
    /* decoder layers only (slices 1..L), for the last token: */
    int n_keys;                   /* keys its queries see */
    double ent_mean, ent_min, ent_max;
    int ent_heads;
    double t_op[3];               /* seconds per gemma2_trace_op, over every pass of the prompt */
} trace_layer;

typedef struct trace_result {
    int L, H, V, k, n_ids, last;  /* last = the last token's position */
    trace_layer *layer;           /* [L+1] */
    float *x_last;                /* [L+1][H] the last token's residual stream per slice */
    float *lens_last;             /* [V] the logit lens of the last slice (equals the model's logits) */
    double t_outside[3];          /* embedding, RoPE angles, output logits */
    double t_begin;
    int next;                     /* the greedy next token */
    float next_logit;
} trace_result;

static void trace_event(void *user, const gemma2_trace_event *ev)
{
    trace_result *r = (trace_result *)user;
    if (ev->kind == GEMMA2_TRACE_EV_STEP_BEGIN) {
        r->t_begin = trace_now();
    } else if (ev->kind == GEMMA2_TRACE_EV_STEP_END) {
        double dt = trace_now() - r->t_begin;
        if (ev->layer >= 0) r->layer[ev->layer + 1].t_op[ev->op] += dt;
        else r->t_outside[ev->op] += dt;
    } else if (ev->kind == GEMMA2_TRACE_EV_RESIDUAL) {
        /* the last token is in the last pass (a long prompt goes through in chunks) */
        if (ev->pos0 + ev->n - 1 == r->last)
            memcpy(r->x_last + (size_t)ev->layer * r->H, ev->x + (size_t)(ev->n - 1) * r->H, sizeof(float) * (size_t)r->H);
    } else if (ev->kind == GEMMA2_TRACE_EV_ATTENTION && ev->pos == r->last) {
        trace_layer *t = &r->layer[ev->layer + 1];
        double e = 0;
        int i;
        for (i = 0; i < ev->n_keys; i++)
            if (ev->weights[i] > 0) e -= (double)ev->weights[i] * log((double)ev->weights[i]);
        if (t->ent_heads == 0 || e < t->ent_min) t->ent_min = e;
        if (t->ent_heads == 0 || e > t->ent_max) t->ent_max = e;
        t->ent_mean += e;
        t->ent_heads++;
        t->n_keys = ev->n_keys;
    }
}

/* The k best of v[0..n), highest first. */
static void trace_topk(const float *v, int n, int k, int *best, float *val)
{
    int i, j;
    for (i = 0; i < k; i++) best[i] = -1;
    for (i = 0; i < n; i++) {
        if (best[k - 1] >= 0 && v[i] <= v[best[k - 1]]) continue;
        for (j = k - 1; j > 0 && (best[j - 1] < 0 || v[i] > v[best[j - 1]]); j--) best[j] = best[j - 1];
        best[j] = i;
    }
    for (i = 0; i < k; i++) val[i] = best[i] >= 0 ? v[best[i]] : 0;
}

static void trace_result_free(trace_result *r)
{
    free(r->layer);
    free(r->x_last);
    free(r->lens_last);
    memset(r, 0, sizeof *r);
}

/* Evaluates ids[0..n) in a fresh session with every trace event on, then the logit lens of each
   slice. Returns 0 or a negative gemma2 error code (err gets a line). */
static int trace_collect(gemma2_model *m, const int32_t *ids, int n, int k, trace_result *r, char *err, size_t err_size)
{
    const gemma2_config *c = gemma2_model_config(m);
    gemma2_session *s;
    float *lens;
    int rc, l, i;
    memset(r, 0, sizeof *r);
    if (n < 1) { snprintf(err, err_size, "the prompt has no tokens"); return GEMMA2_ERROR_INVALID_ARGUMENT; }
    r->L = c->num_hidden_layers; r->H = c->hidden_size; r->V = c->vocab_size; r->n_ids = n; r->last = n - 1;
    r->k = k < 1 ? 1 : k > TRACE_TOPK_MAX ? TRACE_TOPK_MAX : k;
    if (r->k > r->V) r->k = r->V;
    r->layer = (trace_layer *)calloc((size_t)r->L + 1, sizeof *r->layer);
    r->x_last = (float *)calloc((size_t)(r->L + 1) * (size_t)r->H, sizeof(float));
    r->lens_last = (float *)calloc((size_t)r->V, sizeof(float));
    if (!r->layer || !r->x_last || !r->lens_last) { trace_result_free(r); snprintf(err, err_size, "out of memory"); return GEMMA2_ERROR_OUT_OF_MEMORY; }
    s = gemma2_session_new_ex(m, n, &rc);
    if (!s) { trace_result_free(r); snprintf(err, err_size, "session for %d tokens: %s", n, gemma2_error_string(rc)); return rc; }
    gemma2_session_set_trace_ex(s, trace_event, r, GEMMA2_TRACE_RESIDUAL | GEMMA2_TRACE_ATTENTION | GEMMA2_TRACE_STEPS);
    rc = gemma2_eval(s, ids, n, NULL);
    if (rc == 0) {
        const float *logits = gemma2_logits(s);
        int best;
        float val;
        trace_topk(logits, r->V, 1, &best, &val);
        r->next = best;
        r->next_logit = val;
    }
    gemma2_session_free(s);
    if (rc != 0) { trace_result_free(r); snprintf(err, err_size, "eval: %s", gemma2_error_string(rc)); return rc; }
    for (l = 1; l <= r->L; l++)
        if (r->layer[l].ent_heads) r->layer[l].ent_mean /= r->layer[l].ent_heads;
    lens = r->lens_last;
    for (l = 0; l <= r->L; l++) {
        double ss = 0;
        const float *x = r->x_last + (size_t)l * r->H;
        for (i = 0; i < r->H; i++) ss += (double)x[i] * x[i];
        r->layer[l].norm = sqrt(ss);
        rc = gemma2_logit_lens(m, x, 1, lens); /* the last slice's stays in lens_last */
        if (rc != 0) { trace_result_free(r); snprintf(err, err_size, "logit lens: %s", gemma2_error_string(rc)); return rc; }
        trace_topk(lens, r->V, r->k, r->layer[l].top, r->layer[l].top_logit);
    }
    return 0;
}

/* A token's text, control characters escaped, in quotes; its id when there is no tokenizer. */
static void trace_piece(FILE *out, const gemma2_model *m, int id, int have_tok)
{
    size_t len = 0, i;
    const char *p = have_tok ? gemma2_token_piece(m, id, &len) : NULL;
    if (!p) { fprintf(out, "#%d", id); return; }
    fputc('"', out);
    for (i = 0; i < len; i++) {
        unsigned char b = (unsigned char)p[i];
        if (b == '\n') fputs("\\n", out);
        else if (b == '"' || b == '\\') fprintf(out, "\\%c", b);
        else if (b < 0x20 || b == 0x7f) fprintf(out, "\\x%02x", b);
        else fputc(b, out);
    }
    fputc('"', out);
}

static void trace_print(FILE *out, const gemma2_model *m, const int32_t *ids, const trace_result *r, int have_tok)
{
    const gemma2_config *c = gemma2_model_config(m);
    int i, l, j;
    fprintf(out, "prompt: %d tokens\n", r->n_ids);
    for (i = 0; i < r->n_ids; i++) {
        fprintf(out, "  %4d  %6d  ", i, ids[i]);
        trace_piece(out, m, ids[i], have_tok);
        fputc('\n', out);
    }
    fprintf(out, "last token (position %d): |x| of its residual stream, entropy of its attention heads in nats (mean [min, max] of the "
                 "maximum log(keys)), logit lens top %d, time per operation over the whole prompt\n", r->last, r->k);
    fprintf(out, "embedding  |x| %9.3f  lens", r->layer[0].norm);
    for (j = 0; j < r->k; j++) { fputc(' ', out); trace_piece(out, m, r->layer[0].top[j], have_tok); }
    fprintf(out, "  (%.2f ms)\n", 1e3 * (r->t_outside[GEMMA2_TRACE_OP_OTHER]));
    for (l = 1; l <= r->L; l++) {
        const trace_layer *t = &r->layer[l];
        fprintf(out, "layer %2d %-7s |x| %9.3f  entropy %.3f [%.3f, %.3f] of %.3f  lens", l - 1, (l - 1) % 2 == 0 ? "sliding" : "global",
                t->norm, t->ent_mean, t->ent_min, t->ent_max, log((double)(t->n_keys > 0 ? t->n_keys : 1)));
        for (j = 0; j < r->k; j++) { fputc(' ', out); trace_piece(out, m, t->top[j], have_tok); }
        fprintf(out, "  matmul %.2f ms  attention %.2f ms  other %.2f ms\n", 1e3 * t->t_op[GEMMA2_TRACE_OP_MATMUL],
                1e3 * t->t_op[GEMMA2_TRACE_OP_ATTENTION], 1e3 * t->t_op[GEMMA2_TRACE_OP_OTHER]);
    }
    fprintf(out, "output logits (final norm, tied embedding, softcap %g): %.2f ms\n", c->final_logit_softcapping,
            1e3 * r->t_outside[GEMMA2_TRACE_OP_MATMUL]);
    fprintf(out, "next token (greedy): %d ", r->next);
    trace_piece(out, m, r->next, have_tok);
    fprintf(out, "  logit %.4f\n", r->next_logit);
}

/* ---- shapes: what a config.json implies ---- */

typedef struct trace_shapes {
    /* parameters */
    double embed, attn, mlp, norms, final_norm;  /* attn, mlp, norms: per layer */
    double layers, total;
    /* per token, decoding at context length ctx */
    double matmul_flops;                         /* 2 per weight of every product, the tied output projection included */
    double att_flops;                            /* scores and weighted values over the keys each layer sees at ctx */
    double weight_bytes_bf16;                    /* all weights, read once per decode step */
    double kv_bytes_token_f32, kv_bytes_token_bf16; /* one position's keys and values, all layers */
    double kv_bytes_ctx_f32, kv_bytes_ctx_f32_nowindow; /* the cache at ctx, with the sliding window and without */
    double att_flops_nowindow;                   /* att_flops if every layer were global */
    int n_sliding, n_global, ctx;
} trace_shapes;

static void trace_shapes_compute(const gemma2_config *c, int ctx, trace_shapes *sh)
{
    double V = c->vocab_size, H = c->hidden_size, I = c->intermediate_size, L = c->num_hidden_layers;
    double qd = (double)c->num_attention_heads * c->head_dim, kvd = (double)c->num_key_value_heads * c->head_dim;
    int l;
    memset(sh, 0, sizeof *sh);
    sh->ctx = ctx;
    sh->embed = V * H;
    sh->attn = H * qd + 2 * H * kvd + qd * H;
    sh->mlp = 3 * H * I;
    sh->norms = 4 * H;
    sh->final_norm = H;
    sh->layers = L * (sh->attn + sh->mlp + sh->norms);
    sh->total = sh->embed + sh->layers + sh->final_norm;
    sh->matmul_flops = 2 * (L * (sh->attn + sh->mlp) + sh->embed);
    sh->weight_bytes_bf16 = 2 * sh->total;
    sh->kv_bytes_token_f32 = L * 2 * kvd * 4;
    sh->kv_bytes_token_bf16 = L * 2 * kvd * 2;
    for (l = 0; l < c->num_hidden_layers; l++) {
        int sliding = l % 2 == 0, keys = sliding && c->sliding_window < ctx ? c->sliding_window : ctx;
        if (sliding) sh->n_sliding++;
        else sh->n_global++;
        sh->att_flops += 4 * qd * keys; /* q.k and p*v: 2 flops each per query dimension and key */
        sh->att_flops_nowindow += 4 * qd * ctx;
        sh->kv_bytes_ctx_f32 += 2 * kvd * 4 * keys;
        sh->kv_bytes_ctx_f32_nowindow += 2 * kvd * 4 * ctx;
    }
}

/* gbps, gflops: a machine's measured read bandwidth and arithmetic peak (0: not given), for
   the bounds they set on decode (bytes) and prefill (arithmetic). */
static void trace_print_shapes(FILE *out, const char *dir, const gemma2_config *c, const trace_shapes *sh, double gbps, double gflops)
{
    int H = c->hidden_size, I = c->intermediate_size, qd = c->num_attention_heads * c->head_dim, kvd = c->num_key_value_heads * c->head_dim;
    fprintf(out, "%s: V %d, H %d, I %d, L %d (%d sliding-window, %d global), heads %d, kv heads %d, head_dim %d, W %d\n", dir, c->vocab_size,
            c->hidden_size, c->intermediate_size, c->num_hidden_layers, sh->n_sliding, sh->n_global, c->num_attention_heads, c->num_key_value_heads,
            c->head_dim, c->sliding_window);
    fprintf(out, "  tensors: embed_tokens [%d, %d]; per layer q_proj [%d, %d], k_proj and v_proj [%d, %d], o_proj [%d, %d], gate_proj and "
                 "up_proj [%d, %d], down_proj [%d, %d], 4 norms [%d]; norm [%d]\n",
            c->vocab_size, H, qd, H, kvd, H, H, qd, I, H, H, I, H, H);
    fprintf(out, "  parameters: embedding %.0f, per layer: attention %.0f + feed-forward %.0f + norms %.0f; all layers %.0f; final norm %.0f\n",
            sh->embed, sh->attn, sh->mlp, sh->norms, sh->layers, sh->final_norm);
    fprintf(out, "  total parameters %.0f (%.3f G), bf16 bytes %.0f (%.3f GB; embedding %.1f%%)\n", sh->total, sh->total * 1e-9,
            sh->weight_bytes_bf16, sh->weight_bytes_bf16 * 1e-9, 100 * sh->embed / sh->total);
    fprintf(out, "  per token: matrix-product FLOPs %.0f (%.3f G); attention FLOPs at %d positions %.0f (%.0f if every layer were global)\n",
            sh->matmul_flops, sh->matmul_flops * 1e-9, sh->ctx, sh->att_flops, sh->att_flops_nowindow);
    fprintf(out, "  FLOPs per weight byte (bf16): decode %.3f; a prompt chunk of 128 tokens reads each weight once: %.1f\n",
            sh->matmul_flops / sh->weight_bytes_bf16, 128 * sh->matmul_flops / sh->weight_bytes_bf16);
    fprintf(out, "  KV cache per token: %.0f bytes float32, %.0f bytes bf16\n", sh->kv_bytes_token_f32, sh->kv_bytes_token_bf16);
    fprintf(out, "  KV cache at %d positions, float32: %.0f bytes with the sliding window (W keys on sliding layers), %.0f without "
                 "(%.1f%% saved)\n", sh->ctx, sh->kv_bytes_ctx_f32, sh->kv_bytes_ctx_f32_nowindow,
            sh->kv_bytes_ctx_f32_nowindow > 0 ? 100 * (1 - sh->kv_bytes_ctx_f32 / sh->kv_bytes_ctx_f32_nowindow) : 0.0);
    if (gbps > 0)
        fprintf(out, "  at %g GB/s: decode reads %.3f GB of bf16 weights per token (at context 0): at most %.2f tokens/s; "
                     "at %d positions with a float32 cache, %.3f GB: %.2f tokens/s\n", gbps, sh->weight_bytes_bf16 * 1e-9,
                gbps * 1e9 / sh->weight_bytes_bf16, sh->ctx, (sh->weight_bytes_bf16 + sh->kv_bytes_ctx_f32) * 1e-9,
                gbps * 1e9 / (sh->weight_bytes_bf16 + sh->kv_bytes_ctx_f32));
    if (gflops > 0)
        fprintf(out, "  at %g GFLOP/s: prefill at most %.1f tokens/s (matrix products only); decode would take %.4f s of arithmetic "
                     "per token\n", gflops, gflops * 1e9 / sh->matmul_flops, sh->matmul_flops / (gflops * 1e9));
    if (gbps > 0 && gflops > 0) {
        double rd = sh->weight_bytes_bf16 / (gbps * 1e9), ar = sh->matmul_flops / (gflops * 1e9);
        fprintf(out, "  so a decode step needs %.4f s to read the weights and %.4f s of arithmetic (%s-bound); a 128-token prompt chunk "
                     "%.4f s to read them and %.4f s of arithmetic (%s-bound)\n", rd, ar, rd > ar ? "bandwidth" : "arithmetic", rd, 128 * ar,
                rd > 128 * ar ? "bandwidth" : "arithmetic");
    }
}

/* ---- the program ---- */

static int trace_main(int argc, char **argv, FILE *out, FILE *errf)
{
    const char *dir = NULL, *prompt = NULL, *tokfile = NULL, *idlist = NULL;
    int k = 5, threads = 0, shapes = 0, ctx = 0, i, n, rc;
    double gbps = 0, gflops = 0;
    gemma2_options opt = gemma2_options_default();
    gemma2_model *m;
    int32_t *ids;
    trace_result r;
    char err[512];
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "-p") && i + 1 < argc) prompt = argv[++i];
        else if (!strcmp(argv[i], "--ids") && i + 1 < argc) idlist = argv[++i];
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tokfile = argv[++i];
        else if (!strcmp(argv[i], "-k") && i + 1 < argc) k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc) ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gbps") && i + 1 < argc) gbps = atof(argv[++i]);
        else if (!strcmp(argv[i], "--gflops") && i + 1 < argc) gflops = atof(argv[++i]);
        else if (!strcmp(argv[i], "--shapes")) shapes = 1;
        else { dir = NULL; break; }
    }
    if (!dir || (!shapes && !prompt == !idlist) || k < 1 || k > TRACE_TOPK_MAX || ctx < 0) {
        fprintf(errf, "usage: trace -m MODEL_DIR (-p TEXT [--tokenizer FILE] | --ids ID,ID,...) [-k TOP (1..%d)] [-t THREADS]\n"
                      "       trace -m MODEL_DIR --shapes [--ctx N] [--gbps READ_BANDWIDTH] [--gflops PEAK]\n", TRACE_TOPK_MAX);
        return 2;
    }
    if (shapes) { /* config.json only: no weights, no tokenizer */
        trace_shapes sh;
        opt.tokenizer_only = 1;
        opt.no_tokenizer = 1;
        m = gemma2_load(dir, &opt, err, sizeof err);
        if (!m) { fprintf(errf, "trace: %s\n", err); return 1; }
        trace_shapes_compute(gemma2_model_config(m), ctx ? ctx : gemma2_model_config(m)->max_position_embeddings, &sh);
        trace_print_shapes(out, dir, gemma2_model_config(m), &sh, gbps, gflops);
        gemma2_free(m);
        return 0;
    }
    opt.n_threads = threads;
    opt.tokenizer_path = tokfile;
    m = gemma2_load(dir, &opt, err, sizeof err);
    if (!m) { fprintf(errf, "trace: %s\n", err); return 1; }
    if (idlist) { /* ids as given (no <bos> added), for models without a tokenizer */
        const char *p = idlist;
        ids = (int32_t *)malloc(sizeof(int32_t) * (strlen(idlist) / 2 + 1));
        for (n = 0; ids && *p;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 0 || v >= gemma2_vocab_size(m) || (*end && *end != ',')) {
                fprintf(errf, "trace: --ids: \"%s\" is not a list of token ids below %d\n", idlist, gemma2_vocab_size(m));
                free(ids);
                gemma2_free(m);
                return 2;
            }
            ids[n++] = (int32_t)v;
            p = *end ? end + 1 : end;
        }
    } else {
        n = gemma2_tokenize(m, prompt, strlen(prompt), NULL, 0, GEMMA2_TOKENIZE_ADD_BOS);
        ids = n > 0 ? (int32_t *)malloc(sizeof(int32_t) * (size_t)n) : NULL;
        if (n > 0 && ids) n = gemma2_tokenize(m, prompt, strlen(prompt), ids, n, GEMMA2_TOKENIZE_ADD_BOS);
    }
    if (n <= 0 || !ids) {
        fprintf(errf, "trace: tokenizing the prompt: %s\n", n < 0 ? gemma2_error_string(n) : "out of memory");
        free(ids);
        gemma2_free(m);
        return 1;
    }
    rc = trace_collect(m, ids, n, k, &r, err, sizeof err);
    if (rc != 0) {
        fprintf(errf, "trace: %s\n", err);
        free(ids);
        gemma2_free(m);
        return 1;
    }
    trace_print(out, m, ids, &r, gemma2_has_tokenizer(m));
    trace_result_free(&r);
    free(ids);
    gemma2_free(m);
    return 0;
}

#ifndef GEMMA2_TRACE_NO_MAIN
int main(int argc, char **argv)
{
    return trace_main(argc, argv, stdout, stderr);
}
#endif
