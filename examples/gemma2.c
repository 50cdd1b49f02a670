/* gemma2 - chat with a Gemma 2 model, or generate text, from the command line.

     ./gemma2 -m gemma-2-2b-it -p "Why is the sky blue?"      one chat turn; the reply streams to stdout
     ./gemma2 -m gemma-2-2b-it -i                             interactive multi-turn chat
     ./gemma2 -m gemma-2-2b --raw -p "The capital of France"  plain text continuation (no chat template)

   stdout holds only the generated text; everything else (progress, timings, errors) goes to
   stderr. Run with --help for the flags (llama.cpp's names where it has them).

   Build: make (or: cc -O2 -o gemma2 examples/gemma2.c -lm -lpthread).
   The whole program is cli_main(); the test suite compiles this file with GEMMA2_CLI_NO_MAIN and
   calls cli_main with its own streams, so the CLI is tested in-process. */
#ifndef GEMMA2_CLI_NO_MAIN
#define GEMMA2_IMPLEMENTATION
#endif
#include "../gemma2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <sys/time.h>
#include <sys/stat.h>
#endif

static double cli_now(void)
{
#if defined(_WIN32)
    LARGE_INTEGER f, c;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return (double)c.QuadPart / (double)f.QuadPart;
#else
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
#endif
}

/* Ctrl-C stops the reply being generated (a second one, while idle, quits). */
static volatile sig_atomic_t cli_interrupted;
static void cli_on_sigint(int sig) { (void)sig; cli_interrupted = 1; }

#define CLI_MAX_STOPS 16

typedef struct cli_opts {
    const char *model, *prompt, *prompt_file, *tokenizer, *system;
    const char *stops[CLI_MAX_STOPS];
    int n_stops;
    int raw, interactive, n_predict, n_threads, n_ctx, ignore_eos, seed_given, no_mmap, kv_bf16, compute_bf16;
    int weights;      /* GEMMA2_WEIGHTS_Q8 / _Q4 from --q8 / --q4, else 0 (as stored) */
    gemma2_sampler_params sp;
} cli_opts;

static void cli_usage(FILE *o)
{
    fprintf(o,
        "usage: gemma2 -m MODEL_DIR (-p PROMPT | -f FILE | -i) [options]\n"
        "\n"
        "  -m, --model DIR         Hugging Face Gemma 2 folder (config.json, *.safetensors, tokenizer), or\n"
        "                          one saved by examples/quantize (runs in its format, no flag needed)\n"
        "  -p, --prompt TEXT       the prompt: one user turn in the chat template (see --raw)\n"
        "  -f, --file FILE         read the prompt from a file\n"
        "  -i, --interactive       multi-turn chat on the terminal (/reset, /undo, /regen, /quit)\n"
        "      --raw               no chat template: <bos> + the prompt as plain text, continued\n"
        "                          (special tokens written in it, e.g. <start_of_turn>, are matched)\n"
        "      --mmap, --no-mmap   map the weight files (the default: instant load, as fast once read)\n"
        "                          or read them into memory first (they then stay in memory when the\n"
        "                          page cache is under pressure)\n"
        "      --kv-bf16           KV cache in bf16: half its memory, faster at long contexts (not exact)\n"
        "      --compute-bf16      bf16 activations in the matrix products (AVX512_BF16 CPUs): ~1.8x\n"
        "                          faster prompts (not exact)\n"
        "      --q8                quantize the weights to 8 bits at load (about half of bf16; not exact)\n"
        "      --q4                quantize the projections to 4 bits at load, the embedding to 8 bits\n"
        "                          (about a third of bf16; not exact). To do it once: examples/quantize\n"
        "      --system TEXT       a system prompt (folded into the first user turn)\n"
        "      --tokenizer FILE    tokenizer.json or tokenizer.model (default: the model folder's)\n"
        "  -n, --n-predict N       most tokens to generate (default -1: until end of turn or context full)\n"
        "  -c, --ctx-size N        context size in tokens (default 4096; 0 = the model's maximum)\n"
        "  -t, --threads N         threads (default: all cores)\n"
        "      --temp T            temperature (default 0.8; 0 = greedy)\n"
        "      --top-k N           top-k (default 40; 0 = off)\n"
        "      --top-p P           top-p (default 0.95; 1 = off)\n"
        "      --min-p P           min-p (default 0.05; 0 = off)\n"
        "      --repeat-penalty R  repetition penalty (default 1.0 = off)\n"
        "      --repeat-last-n N   tokens the penalties look back over (default 64; 0 = all)\n"
        "      --presence-penalty P, --frequency-penalty F   (default 0 = off)\n"
        "      --seed N            random seed (default: from the clock, printed on stderr)\n"
        "      --stop TEXT         stop when the text contains TEXT (not printed); repeatable\n"
        "      --ignore-eos        do not stop at end-of-turn / eos tokens\n"
        "  -h, --help              this help\n");
}

static int cli_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    long v;
    if (!s || !*s) return 0;
    v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

static int cli_float(const char *s, double lo, double hi, float *out)
{
    char *end;
    double v;
    if (!s || !*s) return 0;
    v = strtod(s, &end);
    if (*end || !(v >= lo && v <= hi)) return 0;
    *out = (float)v;
    return 1;
}

/* Returns 0, or 1 after printing a one-line error (2 for --help). */
static int cli_parse(int argc, char **argv, cli_opts *o, FILE *out, FILE *err)
{
    int i;
    memset(o, 0, sizeof *o);
    o->n_predict = -1;
    o->n_ctx = 4096;
    o->sp.temperature = 0.8f;
    o->sp.top_k = 40;
    o->sp.top_p = 0.95f;
    o->sp.min_p = 0.05f;
    o->sp.repetition_penalty = 1.0f;
    o->sp.penalty_last_n = 64;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1, takes = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { cli_usage(out); return 2; }
        else if (!strcmp(a, "-i") || !strcmp(a, "--interactive")) { o->interactive = 1; takes = 0; }
        else if (!strcmp(a, "--raw")) { o->raw = 1; takes = 0; }
        else if (!strcmp(a, "--no-mmap")) { o->no_mmap = 1; takes = 0; }
        else if (!strcmp(a, "--mmap")) { o->no_mmap = 0; takes = 0; }
        else if (!strcmp(a, "--kv-bf16")) { o->kv_bf16 = 1; takes = 0; }
        else if (!strcmp(a, "--compute-bf16")) { o->compute_bf16 = 1; takes = 0; }
        else if (!strcmp(a, "--q8") || !strcmp(a, "--q4")) {
            int w = a[3] == '8' ? GEMMA2_WEIGHTS_Q8 : GEMMA2_WEIGHTS_Q4;
            if (o->weights && o->weights != w) { fprintf(err, "gemma2: error: give --q8 or --q4, not both\n"); return 1; }
            o->weights = w;
            takes = 0;
        }
        else if (!strcmp(a, "--ignore-eos")) { o->ignore_eos = 1; takes = 0; }
        else if (!v && a[0] == '-') { fprintf(err, "gemma2: error: %s needs a value (see --help)\n", a); return 1; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) o->prompt_file = v;
        else if (!strcmp(a, "--system")) o->system = v;
        else if (!strcmp(a, "--tokenizer")) o->tokenizer = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) ok = cli_int(v, -1, 1 << 30, &o->n_predict);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) ok = cli_int(v, 0, 1 << 24, &o->n_ctx);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) ok = cli_int(v, 1, 4096, &o->n_threads);
        else if (!strcmp(a, "--temp")) ok = cli_float(v, 0, 100, &o->sp.temperature);
        else if (!strcmp(a, "--top-k")) ok = cli_int(v, 0, 1 << 30, &o->sp.top_k);
        else if (!strcmp(a, "--top-p")) ok = cli_float(v, 0, 1, &o->sp.top_p);
        else if (!strcmp(a, "--min-p")) ok = cli_float(v, 0, 1, &o->sp.min_p);
        else if (!strcmp(a, "--repeat-penalty")) ok = cli_float(v, 0, 100, &o->sp.repetition_penalty);
        else if (!strcmp(a, "--repeat-last-n")) ok = cli_int(v, 0, 1 << 30, &o->sp.penalty_last_n);
        else if (!strcmp(a, "--presence-penalty")) ok = cli_float(v, -100, 100, &o->sp.presence_penalty);
        else if (!strcmp(a, "--frequency-penalty")) ok = cli_float(v, -100, 100, &o->sp.frequency_penalty);
        else if (!strcmp(a, "--seed")) {
            char *end;
            unsigned long long s = v ? strtoull(v, &end, 10) : 0;
            ok = v && *v && *v != '-' && !*end;
            o->sp.seed = (uint64_t)s;
            o->seed_given = 1;
        } else if (!strcmp(a, "--stop")) {
            if (o->n_stops == CLI_MAX_STOPS) { fprintf(err, "gemma2: error: at most %d --stop strings\n", CLI_MAX_STOPS); return 1; }
            if (!*v) { fprintf(err, "gemma2: error: --stop needs a non-empty string\n"); return 1; }
            o->stops[o->n_stops++] = v;
        } else { fprintf(err, "gemma2: error: unknown argument '%s' (see --help)\n", a); return 1; }
        if (!ok) { fprintf(err, "gemma2: error: bad value '%s' for %s (see --help)\n", v, a); return 1; }
        i += takes;
    }
    if (!o->model) { fprintf(err, "gemma2: error: no model: give -m MODEL_DIR (see --help)\n"); return 1; }
    if (o->prompt && o->prompt_file) { fprintf(err, "gemma2: error: give -p or -f, not both\n"); return 1; }
    if (!o->prompt && !o->prompt_file && !o->interactive) { fprintf(err, "gemma2: error: no prompt: give -p TEXT, -f FILE or -i (see --help)\n"); return 1; }
    if (o->raw && o->interactive) { fprintf(err, "gemma2: error: --raw and -i do not go together (-i is a chat)\n"); return 1; }
    if (o->raw && o->system) { fprintf(err, "gemma2: error: --system needs the chat template (not --raw)\n"); return 1; }
    return 0;
}

/* The prompt file's text, or NULL with the reason in *why. Pipes are read like files (-f <(cmd),
   -f /dev/stdin); a folder is refused rather than read as an empty prompt. A NUL byte is refused
   too: the prompt is a C string, and text with NULs is not a UTF-8 prompt (UTF-16, a binary). */
static char *cli_read_file(const char *path, const char **why)
{
    FILE *f;
    char *buf = NULL;
    size_t n = 0, cap = 0;
#if !defined(_WIN32)
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) {
        *why = S_ISDIR(st.st_mode) ? "is a folder, not a file" : "is not a regular file";
        return NULL;
    }
#endif
    *why = "cannot read the prompt file";
    if (!(f = fopen(path, "rb"))) return NULL;
    for (;;) {
        size_t got;
        if (cap - n < 4096) {
            char *p = (char *)realloc(buf, cap * 2 + 4097);
            if (!p) { free(buf); fclose(f); *why = "out of memory reading the prompt file"; return NULL; }
            buf = p;
            cap = cap * 2 + 4097;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) { fclose(f); free(buf); return NULL; } /* a read error is not the end of the text */
    fclose(f);
    if (memchr(buf, 0, n)) {
        free(buf);
        *why = "holds NUL bytes: a prompt is UTF-8 text (is it UTF-16, or a binary file?)";
        return NULL;
    }
    buf[n] = 0;
    return buf;
}

/* One line from in, without its newline (malloc'd), or NULL at end of input. */
static char *cli_read_line(FILE *in)
{
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int c;
    while ((c = fgetc(in)) != EOF && c != '\n') {
        if (n + 2 > cap) {
            char *p = (char *)realloc(buf, cap * 2 + 256);
            if (!p) { free(buf); return NULL; }
            buf = p;
            cap = cap * 2 + 256;
        }
        buf[n++] = (char)c;
    }
    if (c == EOF && n == 0) { free(buf); return NULL; }
    if (!buf) { buf = (char *)malloc(1); if (!buf) return NULL; }
    if (n > 0 && buf[n - 1] == '\r') n--;
    buf[n] = 0;
    return buf;
}

typedef struct cli_stream {
    FILE *out;
    double t_first;   /* time of the first token: the prompt is evaluated by then */
    int n_tokens;
} cli_stream;

static int cli_on_token(void *user, int32_t token, const char *text, size_t len)
{
    cli_stream *st = (cli_stream *)user;
    if (token >= 0 && st->n_tokens++ == 0) st->t_first = cli_now();
    if (len) { fwrite(text, 1, len, st->out); fflush(st->out); }
    return cli_interrupted != 0;
}

static int cli_progress(void *user, float f)
{
    FILE *err = (FILE *)user;
    fprintf(err, "\rloading model: %3d%%", (int)(f * 100.0f + 0.5f));
    fflush(err);
    return 0;
}

static const char *cli_stop_name(int r)
{
    switch (r) {
    case GEMMA2_STOP_EOS: return "end of turn";
    case GEMMA2_STOP_MAX_TOKENS: return "-n reached";
    case GEMMA2_STOP_STRING: return "stop string";
    case GEMMA2_STOP_CALLBACK: return "interrupted";
    case GEMMA2_STOP_CONTEXT_FULL: return "context full";
    default: return "?";
    }
}

/* The timings line, llama.cpp style. t0: before the prompt; st->t_first: first token; t1: done. */
static void cli_timings(FILE *err, const gemma2_generate_result *r, const cli_stream *st, double t0, double t1)
{
    double tp = (st->n_tokens ? st->t_first : t1) - t0, tg = st->n_tokens ? t1 - st->t_first : 0;
    fprintf(err, "prompt: %d tokens in %.2f s (%.1f tokens/s) | generation: %d tokens in %.2f s (%.1f tokens/s) | stop: %s\n",
            r->n_prompt, tp, tp > 0 ? r->n_prompt / tp : 0.0, r->n_generated, tg,
            (tg > 0 && r->n_generated > 1) ? (r->n_generated - 1) / tg : 0.0, cli_stop_name(r->stop_reason));
}

static int cli_main(int argc, char **argv, FILE *in, FILE *out, FILE *err)
{
    cli_opts o;
    gemma2_options mo;
    gemma2_model *m = NULL;
    gemma2_session *s = NULL;
    gemma2_chat *chat = NULL;
    gemma2_generate_params gp;
    gemma2_generate_result res;
    cli_stream st;
    char emsg[512], *file_prompt = NULL;
    const char *prompt, *why = NULL;
    int32_t *ids = NULL;
    int rc, exit_code = 1, n_replies = 0, weights, saved;
    double t0, t1;

    rc = cli_parse(argc, argv, &o, out, err);
    if (rc) return rc == 2 ? 0 : 2;
    if (o.prompt_file && !(file_prompt = cli_read_file(o.prompt_file, &why))) {
        fprintf(err, "gemma2: error: %s: %s\n", o.prompt_file, why);
        return 1;
    }
    prompt = file_prompt ? file_prompt : o.prompt;
    if (!o.seed_given) o.sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);

    memset(&mo, 0, sizeof mo);
    mo.n_threads = o.n_threads;
    mo.tokenizer_path = o.tokenizer;
    mo.preload = o.no_mmap;
    mo.kv_cache = o.kv_bf16 ? GEMMA2_KV_BF16 : GEMMA2_KV_F32;
    mo.compute = o.compute_bf16 ? GEMMA2_COMPUTE_BF16 : GEMMA2_COMPUTE_F32;
    mo.weights = o.weights;
    mo.progress = cli_progress;
    mo.progress_user = err;
    t0 = cli_now();
    m = gemma2_load(o.model, &mo, emsg, sizeof emsg);
    fprintf(err, "\r");
    if (!m) { fprintf(err, "gemma2: error: %s\n", emsg); goto done; }
    fprintf(err, "loaded %s in %.2f s: %d layers, vocab %d, %.2f GB of weights%s, kernels %s%s%s\n", o.model, cli_now() - t0,
            gemma2_model_config(m)->num_hidden_layers, gemma2_vocab_size(m), (double)gemma2_model_weight_bytes(m) / 1e9,
            o.no_mmap ? " (read into memory)" : "", gemma2_model_kernels(m), o.compute_bf16 ? ", compute bf16" : "",
            o.kv_bf16 ? ", KV cache bf16" : "");
    /* said after loading: only then is it known whether the folder was saved quantized already */
    weights = gemma2_model_weights(m, &saved);
    if (weights == GEMMA2_WEIGHTS_Q8 || weights == GEMMA2_WEIGHTS_Q4)
        fprintf(err, "weights %s%s, %s\n", weights == GEMMA2_WEIGHTS_Q8 ? "q8" : "q4", weights == GEMMA2_WEIGHTS_Q4 ? " (embedding q8)" : "",
                saved ? "as saved in the folder" : "quantized at load");
    if (o.n_ctx > gemma2_model_config(m)->max_position_embeddings) o.n_ctx = gemma2_model_config(m)->max_position_embeddings;
    s = gemma2_session_new(m, o.n_ctx);
    if (!s) { fprintf(err, "gemma2: error: cannot create a session of %d tokens (out of memory?)\n", o.n_ctx); goto done; }
    fprintf(err, "context %d tokens | sampling: temp %.2f, top-k %d, top-p %.2f, min-p %.2f, repeat-penalty %.2f (last %d), seed %llu\n",
            gemma2_session_n_ctx(s), o.sp.temperature, o.sp.top_k, o.sp.top_p, o.sp.min_p, o.sp.repetition_penalty,
            o.sp.penalty_last_n, (unsigned long long)o.sp.seed);

    memset(&gp, 0, sizeof gp);
    gp.sampler = o.sp;
    gp.max_new_tokens = o.n_predict > 0 ? o.n_predict : 0;
    gp.stop_strings = o.stops;
    gp.n_stop_strings = o.n_stops;
    gp.ignore_eos = o.ignore_eos;
    gp.on_token = cli_on_token;
    gp.user = &st;
    signal(SIGINT, cli_on_sigint);

    if (o.raw) {
        int32_t dummy;
        int n = gemma2_tokenize(m, prompt, strlen(prompt), &dummy, 0, GEMMA2_TOKENIZE_SPECIAL), bos = gemma2_model_config(m)->bos_token_id;
        if (n < 0) { fprintf(err, "gemma2: error: tokenizing the prompt: %s\n", gemma2_error_string(n)); goto done; }
        ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + 1));
        if (!ids) goto done;
        n = gemma2_tokenize(m, prompt, strlen(prompt), ids + 1, n, GEMMA2_TOKENIZE_SPECIAL);
        ids[0] = bos;
        /* <bos> once: the prompt may start with it already */
        memset(&st, 0, sizeof st);
        st.out = out;
        t0 = cli_now();
        if (n > 0 && ids[1] == bos) rc = gemma2_generate(s, ids + 1, n, &gp, &res);
        else rc = gemma2_generate(s, ids, n + 1, &gp, &res);
        t1 = cli_now();
        fflush(out);
        fprintf(err, "\n");
        if (rc) { fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc)); goto done; }
        cli_timings(err, &res, &st, t0, t1);
        exit_code = 0;
        goto done;
    }

    chat = gemma2_chat_new(s, o.system);
    if (!chat) { fprintf(err, "gemma2: error: this model's tokenizer has no <start_of_turn>/<end_of_turn> (not a Gemma chat vocabulary?)\n"); goto done; }
    if (prompt) {
        memset(&st, 0, sizeof st);
        st.out = out;
        t0 = cli_now();
        rc = gemma2_chat_say(chat, prompt, &gp, &res);
        t1 = cli_now();
        fflush(out);
        if (o.interactive) fputc('\n', out); else fprintf(err, "\n");
        if (rc) { fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc)); if (!o.interactive) goto done; }
        else cli_timings(err, &res, &st, t0, t1);
    }
    if (o.interactive) {
        fprintf(err, "interactive chat: type a message and press Enter; /reset forgets the conversation, /undo the last exchange, "
                     "/regen redoes the last reply, /quit (or end of input) leaves; Ctrl-C stops a reply\n");
        for (;;) {
            char *line;
            cli_interrupted = 0;
            fprintf(err, "> ");
            fflush(err);
            line = cli_read_line(in);
            if (!line || !strcmp(line, "/quit") || !strcmp(line, "/exit")) { free(line); break; }
            if (!strcmp(line, "/reset")) { gemma2_chat_reset(chat); fprintf(err, "(conversation cleared)\n"); free(line); continue; }
            if (!strcmp(line, "/undo")) {
                fprintf(err, gemma2_chat_undo(chat) == 0 ? "(last exchange removed)\n" : "(nothing to undo)\n");
                free(line);
                continue;
            }
            if (!line[0]) { free(line); continue; }
            memset(&st, 0, sizeof st);
            st.out = out;
            t0 = cli_now();
            gp.sampler.seed = o.sp.seed + (uint64_t)++n_replies; /* a fresh random stream per reply (else /regen repeats itself) */
            if (!strcmp(line, "/regen")) rc = gemma2_chat_turns(chat) ? gemma2_chat_regenerate(chat, &gp, &res) : GEMMA2_ERROR_INVALID_ARGUMENT;
            else rc = gemma2_chat_say(chat, line, &gp, &res);
            t1 = cli_now();
            free(line);
            fputc('\n', out);
            fflush(out);
            if (rc == GEMMA2_ERROR_CONTEXT_FULL) fprintf(err, "(the context is full: /undo or /reset, or start with a larger -c)\n");
            else if (rc) fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc));
            else {
                cli_timings(err, &res, &st, t0, t1);
                if (res.stop_reason == GEMMA2_STOP_CONTEXT_FULL) fprintf(err, "(the context is full: /undo or /reset to go on)\n");
            }
        }
    }
    exit_code = 0;
done:
    signal(SIGINT, SIG_DFL);
    free(ids);
    free(file_prompt);
    gemma2_chat_free(chat);
    gemma2_session_free(s);
    gemma2_free(m);
    return exit_code;
}

#ifndef GEMMA2_CLI_NO_MAIN
int main(int argc, char **argv)
{
    return cli_main(argc, argv, stdin, stdout, stderr);
}
#endif
