/* gemma2 - chat with a Gemma 2 model, or generate text, from the command line.

     ./gemma2 -m gemma-2-2b-it -p "Why is the sky blue?"      one chat turn; the reply streams to stdout
     ./gemma2 -m gemma-2-2b-it -i                             interactive multi-turn chat
     ./gemma2 -m gemma-2-2b --raw -p "The capital of France"  plain text continuation (no chat template)
     echo "Why is the sky blue?" | ./gemma2 -m gemma-2-2b-it   the prompt from stdin (not a terminal)

   stdout holds only the generated text (ending with a newline in a one-shot run); everything else
   (progress, timings, errors) goes to stderr. Run with --help for the flags; llama.cpp's common
   spellings are accepted beside ours, its GPU and log flags are accepted and ignored.

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
#include <io.h>
#else
#include <sys/time.h>
#include <sys/stat.h>
#include <unistd.h>
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

/* Ctrl-C. The handler only counts (cli_sigint); the program acts on the count where it can: the
   token and prompt callbacks stop a reply (a prompt stopped halfway is taken back), the idle prompt
   says how to quit and quits at the second one, a one-shot run exits with 130 (the shell's 128 +
   SIGINT). The test suite raises SIGINT from cli_test_hook, which runs at the points where a key
   press would land: at = CLI_AT_READ (n: the line read), CLI_AT_TOKEN (n: the token streamed) or
   CLI_AT_PROMPT (n: the prompt tokens evaluated). */
enum { CLI_AT_READ, CLI_AT_TOKEN, CLI_AT_PROMPT };
static volatile sig_atomic_t cli_interrupted;
static void (*cli_test_hook)(int at, int n); /* NULL in the program */

static int cli_sigint(void)
{
    if (cli_interrupted < 100) cli_interrupted++;
    return cli_interrupted;
}

static void cli_on_sigint(int sig)
{
    (void)sig;
#if defined(_WIN32)
    signal(SIGINT, cli_on_sigint); /* Windows resets the handler at each delivery */
#endif
    /* A long prompt looks at the count only at its first token: a third Ctrl-C while busy gets
       the default action, which ends the program at once. */
    if (cli_sigint() >= 3) { signal(SIGINT, SIG_DFL); raise(SIGINT); }
}

static int cli_isatty(FILE *f)
{
#if defined(_WIN32)
    return _isatty(_fileno(f));
#else
    return isatty(fileno(f));
#endif
}

#define CLI_MAX_STOPS 16
#define CLI_MAX_BIAS 64

typedef struct cli_opts {
    const char *model, *prompt, *prompt_file, *tokenizer, *system;
    const char *prompt_cache; /* --prompt-cache FILE */
    const char *stops[CLI_MAX_STOPS];
    int n_stops;
    int raw, interactive, single_turn, n_predict, n_threads, n_ctx, ignore_eos, seed_given, no_mmap, kv_bf16, compute_bf16;
    int cache_k, cache_v;  /* -ctk / -ctv: 0 unset, 1 f32, 2 bf16 */
    int verbose_prompt;
    int prompt_from_pipe;  /* no -p, -f or -i, and stdin is not a terminal: stdin is the prompt */
    int weights;      /* GEMMA2_WEIGHTS_Q8 / _Q4 from --q8 / --q4, else 0 (as stored) */
    gemma2_logit_bias bias[CLI_MAX_BIAS];
    gemma2_sampler_params sp;
} cli_opts;

static void cli_usage(FILE *o)
{
    fprintf(o,
        "usage: gemma2 -m MODEL_DIR (-p PROMPT | -f FILE | -i | < FILE) [options]\n"
        "\n"
        "  -m, --model DIR         Hugging Face Gemma 2 folder (config.json, *.safetensors, tokenizer), or\n"
        "                          one saved by examples/quantize (runs in its format, no flag needed)\n"
        "  -p, --prompt TEXT       the prompt: one user turn in the chat template (see --raw)\n"
        "  -f, --file FILE         read the prompt from a file (- = stdin). With no -p, -f or -i the\n"
        "                          prompt is read from stdin when stdin is not a terminal\n"
        "  -i, --interactive, -cnv, --conversation\n"
        "                          multi-turn chat on the terminal (/help lists its commands)\n"
        "  -st, --single-turn      one chat turn, then exit (what -p does without -i)\n"
        "      --raw, -no-cnv, --no-conversation\n"
        "                          no chat template: <bos> + the prompt as plain text, continued\n"
        "                          (special tokens written in it, e.g. <start_of_turn>, are matched)\n"
        "      --mmap, --no-mmap   map the weight files (the default: instant load, as fast once read)\n"
        "                          or read them into memory first (they then stay in memory when the\n"
        "                          page cache is under pressure)\n"
        "      --kv-bf16           KV cache in bf16: half its memory, faster at long contexts (not exact)\n"
        "  -ctk, --cache-type-k, -ctv, --cache-type-v TYPE\n"
        "                          f32 (the default) or bf16 (= --kv-bf16); K and V have one type here\n"
        "      --compute-bf16      bf16 activations in the matrix products (AVX512_BF16 CPUs): ~1.8x\n"
        "                          faster prompts (not exact)\n"
        "      --q8                quantize the weights to 8 bits at load (about half of bf16; not exact)\n"
        "      --q4                quantize the projections to 4 bits at load, the embedding to 8 bits\n"
        "                          (about a third of bf16; not exact). To do it once: examples/quantize\n"
        "      --system, -sys, --system-prompt TEXT\n"
        "                          a system prompt (folded into the first user turn)\n"
        "      --tokenizer FILE    tokenizer.json or tokenizer.model (default: the model folder's)\n"
        "  -n, --n-predict, --predict N\n"
        "                          most tokens to generate (default -1, or -2: until end of turn or\n"
        "                          context full; 0: none, the prompt is only evaluated)\n"
        "  -c, --ctx-size N        context size in tokens (default 4096; 0 = the model's maximum; more\n"
        "                          than the maximum is lowered to it, with a note on stderr)\n"
        "  -t, --threads N         threads (default, 0 or -1: all cores; more than the cores is lowered\n"
        "                          to their number, with a note on stderr)\n"
        "      --temp T            temperature (default 0.8; 0 = greedy)\n"
        "      --top-k N           top-k (default 40; 0 = off)\n"
        "      --top-p P           top-p (default 0.95; 1 = off)\n"
        "      --min-p P           min-p (default 0.05; 0 = off)\n"
        "      --repeat-penalty R  repetition penalty (default 1.0 = off)\n"
        "      --repeat-last-n N   tokens the penalties look back over (default 64; 0 = all)\n"
        "      --presence-penalty P, --frequency-penalty F   (default 0 = off)\n"
        "  -l, --logit-bias ID+B   add B to token ID's logit (ID-B subtracts, ID-inf forbids); repeatable\n"
        "  -s, --seed N            random seed (default, or -1: from the clock, printed on stderr)\n"
        "      --stop, -r, --reverse-prompt TEXT\n"
        "                          stop when the text contains TEXT (not printed); repeatable\n"
        "      --ignore-eos        do not stop at end-of-turn / eos tokens\n"
        "      --verbose-prompt    print the prompt's token ids and pieces on stderr\n"
        "      --prompt-cache FILE the prompt's evaluated state: reused from FILE for the longest\n"
        "                          prefix it shares with this prompt, saved there after the prompt\n"
        "                          (a file of another model or -ctk type is replaced; not with -i)\n"
        "  -ngl, --n-gpu-layers N, --color, --log-disable, -fa, --flash-attn, --mlock\n"
        "                          llama.cpp's GPU and log options: accepted and ignored (a note says so)\n"
        "      --version           the library version\n"
        "  -h, --help              this help\n"
        "\n"
        "Flags that take a value also take it as --flag=VALUE (or -f=VALUE).\n");
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

/* llama.cpp's TOKEN(+|-)BIAS: 15043+1, 15043-1.5, 15043-inf. */
static int cli_logit_bias(const char *s, gemma2_logit_bias *b)
{
    char *end, *e2;
    long id;
    double v;
    if (!s || *s < '0' || *s > '9') return 0;
    id = strtol(s, &end, 10);
    if ((*end != '+' && *end != '-') || id > 2147483647L) return 0;
    v = strtod(end, &e2);
    if (*e2 || e2 == end + 1 || v != v) return 0;
    b->token = (int32_t)id;
    b->bias = (float)v;
    return 1;
}

enum {
    CLI_HELP = 1, CLI_VERSION, CLI_INTERACTIVE, CLI_SINGLE_TURN, CLI_RAW, CLI_NO_MMAP, CLI_MMAP, CLI_KV_BF16,
    CLI_COMPUTE_BF16, CLI_Q8, CLI_Q4, CLI_IGNORE_EOS, CLI_VERBOSE_PROMPT, CLI_MODEL, CLI_PROMPT, CLI_FILE, CLI_SYSTEM,
    CLI_TOKENIZER, CLI_N_PREDICT, CLI_CTX, CLI_THREADS, CLI_TEMP, CLI_TOP_K, CLI_TOP_P, CLI_MIN_P, CLI_REPEAT_PENALTY,
    CLI_REPEAT_LAST_N, CLI_PRESENCE, CLI_FREQUENCY, CLI_SEED, CLI_STOP, CLI_LOGIT_BIAS, CLI_CACHE_K, CLI_CACHE_V,
    CLI_PROMPT_CACHE, CLI_IGNORED
};

/* Every name the parser knows. takes: 0 no value, 1 a value, 2 an optional on/off/auto (newer
   llama.cpp gives --flash-attn and --color one, older ones none). */
typedef struct cli_flag { const char *name; int id, takes; } cli_flag;
static const cli_flag cli_flags[] = {
    {"-h", CLI_HELP, 0}, {"--help", CLI_HELP, 0}, {"--version", CLI_VERSION, 0},
    {"-i", CLI_INTERACTIVE, 0}, {"--interactive", CLI_INTERACTIVE, 0}, {"-cnv", CLI_INTERACTIVE, 0},
    {"--conversation", CLI_INTERACTIVE, 0}, {"-st", CLI_SINGLE_TURN, 0}, {"--single-turn", CLI_SINGLE_TURN, 0},
    {"--raw", CLI_RAW, 0}, {"-no-cnv", CLI_RAW, 0}, {"--no-conversation", CLI_RAW, 0},
    {"--no-mmap", CLI_NO_MMAP, 0}, {"--mmap", CLI_MMAP, 0}, {"--kv-bf16", CLI_KV_BF16, 0},
    {"--compute-bf16", CLI_COMPUTE_BF16, 0}, {"--q8", CLI_Q8, 0}, {"--q4", CLI_Q4, 0},
    {"--ignore-eos", CLI_IGNORE_EOS, 0}, {"--verbose-prompt", CLI_VERBOSE_PROMPT, 0},
    {"-m", CLI_MODEL, 1}, {"--model", CLI_MODEL, 1}, {"-p", CLI_PROMPT, 1}, {"--prompt", CLI_PROMPT, 1},
    {"-f", CLI_FILE, 1}, {"--file", CLI_FILE, 1}, {"--system", CLI_SYSTEM, 1}, {"-sys", CLI_SYSTEM, 1},
    {"--system-prompt", CLI_SYSTEM, 1}, {"--tokenizer", CLI_TOKENIZER, 1},
    {"-n", CLI_N_PREDICT, 1}, {"--n-predict", CLI_N_PREDICT, 1}, {"--predict", CLI_N_PREDICT, 1},
    {"-c", CLI_CTX, 1}, {"--ctx-size", CLI_CTX, 1}, {"-t", CLI_THREADS, 1}, {"--threads", CLI_THREADS, 1},
    {"--temp", CLI_TEMP, 1}, {"--top-k", CLI_TOP_K, 1}, {"--top-p", CLI_TOP_P, 1}, {"--min-p", CLI_MIN_P, 1},
    {"--repeat-penalty", CLI_REPEAT_PENALTY, 1}, {"--repeat-last-n", CLI_REPEAT_LAST_N, 1},
    {"--presence-penalty", CLI_PRESENCE, 1}, {"--frequency-penalty", CLI_FREQUENCY, 1},
    {"-s", CLI_SEED, 1}, {"--seed", CLI_SEED, 1}, {"--stop", CLI_STOP, 1}, {"-r", CLI_STOP, 1},
    {"--reverse-prompt", CLI_STOP, 1}, {"-l", CLI_LOGIT_BIAS, 1}, {"--logit-bias", CLI_LOGIT_BIAS, 1},
    {"-ctk", CLI_CACHE_K, 1}, {"--cache-type-k", CLI_CACHE_K, 1}, {"-ctv", CLI_CACHE_V, 1},
    {"--cache-type-v", CLI_CACHE_V, 1}, {"--prompt-cache", CLI_PROMPT_CACHE, 1},
    {"-ngl", CLI_IGNORED, 1}, {"--n-gpu-layers", CLI_IGNORED, 1}, {"--color", CLI_IGNORED, 2},
    {"--log-disable", CLI_IGNORED, 0}, {"-fa", CLI_IGNORED, 2}, {"--flash-attn", CLI_IGNORED, 2},
    {"--mlock", CLI_IGNORED, 0},
};

static const cli_flag *cli_flag_find(const char *name, size_t len)
{
    size_t k;
    for (k = 0; k < sizeof cli_flags / sizeof cli_flags[0]; k++)
        if (strlen(cli_flags[k].name) == len && !memcmp(cli_flags[k].name, name, len)) return &cli_flags[k];
    return NULL;
}

/* Returns 0, or 1 after printing a one-line error (2 for --help and --version). */
static int cli_parse(int argc, char **argv, cli_opts *o, FILE *in, FILE *out, FILE *err)
{
    int i, cores = gemma2_cpu_count();
    char ignored[256] = "";
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
        const char *a = argv[i], *v = NULL, *eq = NULL;
        const cli_flag *f;
        size_t len = strlen(a);
        int ok = 1;
        if (a[0] == '-' && (eq = strchr(a, '=')) != NULL) len = (size_t)(eq - a); /* --flag=value, -f=value */
        /* looked up before anything else, so that an unknown flag is called unknown wherever it is */
        if (a[0] != '-' || !(f = cli_flag_find(a, len))) {
            fprintf(err, "gemma2: error: unknown argument '%s' (see --help)\n", a);
            return 1;
        }
        if (eq) {
            if (f->takes == 0) { fprintf(err, "gemma2: error: %.*s takes no value (see --help)\n", (int)len, a); return 1; }
            v = eq + 1;
        } else if (f->takes == 1) {
            if (i + 1 >= argc) { fprintf(err, "gemma2: error: %s needs a value (see --help)\n", a); return 1; }
            v = argv[++i];
        } else if (f->takes == 2 && i + 1 < argc &&
                   (!strcmp(argv[i + 1], "on") || !strcmp(argv[i + 1], "off") || !strcmp(argv[i + 1], "auto"))) {
            v = argv[++i];
        }
        switch (f->id) {
        case CLI_HELP: cli_usage(out); return 2;
        case CLI_VERSION: fprintf(out, "gemma2 %s\n", GEMMA2_VERSION_STRING); return 2;
        case CLI_INTERACTIVE: o->interactive = 1; break;
        case CLI_SINGLE_TURN: o->single_turn = 1; break;
        case CLI_RAW: o->raw = 1; break;
        case CLI_NO_MMAP: o->no_mmap = 1; break;
        case CLI_MMAP: o->no_mmap = 0; break;
        case CLI_KV_BF16: o->cache_k = o->cache_v = 2; break;
        case CLI_COMPUTE_BF16: o->compute_bf16 = 1; break;
        case CLI_Q8: case CLI_Q4: {
            int w = f->id == CLI_Q8 ? GEMMA2_WEIGHTS_Q8 : GEMMA2_WEIGHTS_Q4;
            if (o->weights && o->weights != w) { fprintf(err, "gemma2: error: give --q8 or --q4, not both\n"); return 1; }
            o->weights = w;
            break;
        }
        case CLI_IGNORE_EOS: o->ignore_eos = 1; break;
        case CLI_VERBOSE_PROMPT: o->verbose_prompt = 1; break;
        case CLI_MODEL: o->model = v; break;
        case CLI_PROMPT: o->prompt = v; break;
        case CLI_FILE: o->prompt_file = v; break;
        case CLI_SYSTEM: o->system = v; break;
        case CLI_TOKENIZER: o->tokenizer = v; break;
        case CLI_PROMPT_CACHE: o->prompt_cache = v; break;
        /* llama.cpp: -1 = no limit, -2 = until the context is full; both are "until end of turn
           or the context is full" here */
        case CLI_N_PREDICT: ok = cli_int(v, -2, 1 << 30, &o->n_predict); break;
        case CLI_CTX: ok = cli_int(v, 0, 2147483647L, &o->n_ctx); break;
        case CLI_THREADS:
            ok = cli_int(v, -1, 2147483647L, &o->n_threads);
            if (ok && o->n_threads < 0) o->n_threads = 0;
            if (ok && o->n_threads > cores) {
                fprintf(err, "gemma2: note: -t %d is more than the %d cores: using %d threads\n", o->n_threads, cores, cores);
                o->n_threads = cores;
            }
            break;
        case CLI_TEMP: ok = cli_float(v, 0, 100, &o->sp.temperature); break;
        case CLI_TOP_K: ok = cli_int(v, 0, 1 << 30, &o->sp.top_k); break;
        case CLI_TOP_P: ok = cli_float(v, 0, 1, &o->sp.top_p); break;
        case CLI_MIN_P: ok = cli_float(v, 0, 1, &o->sp.min_p); break;
        case CLI_REPEAT_PENALTY: ok = cli_float(v, 0, 100, &o->sp.repetition_penalty); break;
        case CLI_REPEAT_LAST_N: ok = cli_int(v, 0, 1 << 30, &o->sp.penalty_last_n); break;
        case CLI_PRESENCE: ok = cli_float(v, -100, 100, &o->sp.presence_penalty); break;
        case CLI_FREQUENCY: ok = cli_float(v, -100, 100, &o->sp.frequency_penalty); break;
        case CLI_SEED:
            if (!strcmp(v, "-1")) { o->seed_given = 0; break; } /* llama.cpp's "random" */
            {
                char *end;
                unsigned long long s = strtoull(v, &end, 10);
                ok = *v && *v != '-' && !*end;
                o->sp.seed = (uint64_t)s;
                o->seed_given = 1;
            }
            break;
        case CLI_STOP:
            if (o->n_stops == CLI_MAX_STOPS) { fprintf(err, "gemma2: error: at most %d --stop strings\n", CLI_MAX_STOPS); return 1; }
            if (!*v) { fprintf(err, "gemma2: error: %.*s needs a non-empty string\n", (int)len, a); return 1; }
            o->stops[o->n_stops++] = v;
            break;
        case CLI_LOGIT_BIAS:
            if (o->sp.n_logit_bias == CLI_MAX_BIAS) { fprintf(err, "gemma2: error: at most %d --logit-bias\n", CLI_MAX_BIAS); return 1; }
            ok = cli_logit_bias(v, &o->bias[o->sp.n_logit_bias]);
            if (ok) o->sp.n_logit_bias++;
            break;
        case CLI_CACHE_K: case CLI_CACHE_V: {
            int t = !strcmp(v, "f32") ? 1 : !strcmp(v, "bf16") ? 2 : 0;
            if (!t) { fprintf(err, "gemma2: error: bad value '%s' for %.*s: the KV cache here is f32 or bf16\n", v, (int)len, a); return 1; }
            if (f->id == CLI_CACHE_K) o->cache_k = t; else o->cache_v = t;
            break;
        }
        case CLI_IGNORED:
            if (strlen(ignored) + len + 3 < sizeof ignored) {
                if (ignored[0]) strcat(ignored, ", ");
                strncat(ignored, a, len);
            }
            break;
        }
        if (!ok) { fprintf(err, "gemma2: error: bad value '%s' for %.*s (see --help)\n", v, (int)len, a); return 1; }
    }
    if (ignored[0]) fprintf(err, "gemma2: note: ignored %s (GPU and log options: this program runs on the CPU and logs to stderr)\n", ignored);
    if (o->cache_k && o->cache_v && o->cache_k != o->cache_v) {
        fprintf(err, "gemma2: error: -ctk and -ctv differ: the K and V caches have one type here (f32 or bf16)\n");
        return 1;
    }
    o->kv_bf16 = o->cache_k == 2 || o->cache_v == 2;
    o->sp.logit_bias = o->sp.n_logit_bias ? o->bias : NULL;
    if (o->single_turn) o->interactive = 0;
    if (!o->model) { fprintf(err, "gemma2: error: no model: give -m MODEL_DIR (see --help)\n"); return 1; }
    if (o->prompt && o->prompt_file) { fprintf(err, "gemma2: error: give -p or -f, not both\n"); return 1; }
    if (!o->prompt && !o->prompt_file && !o->interactive) {
        /* `echo question | gemma2 -m DIR` and `gemma2 -m DIR < file`: stdin is the prompt. A terminal is
           not read: waiting there for an end of input nobody knows to type looks like a hang. */
        if (cli_isatty(in)) { fprintf(err, "gemma2: error: no prompt: give -p TEXT, -f FILE, -i, or pipe the prompt into stdin (see --help)\n"); return 1; }
        o->prompt_file = "-";
        o->prompt_from_pipe = 1;
    }
    if (o->interactive && o->prompt_file && !strcmp(o->prompt_file, "-")) { fprintf(err, "gemma2: error: -f - and -i both read stdin: give the prompt with -p or -f FILE\n"); return 1; }
    if (o->interactive && o->n_predict == 0) { fprintf(err, "gemma2: error: -n 0 generates nothing: not with -i\n"); return 1; }
    if (o->raw && o->interactive) { fprintf(err, "gemma2: error: --raw and -i do not go together (-i is a chat)\n"); return 1; }
    /* the chat keeps its turns in the session from position 0: a restored prefix is not one of them */
    if (o->prompt_cache && o->interactive) { fprintf(err, "gemma2: error: --prompt-cache is for one prompt: not with -i\n"); return 1; }
    if (o->raw && o->system) { fprintf(err, "gemma2: error: --system needs the chat template (not --raw)\n"); return 1; }
    return 0;
}

/* The rest of the stream f, or NULL with the reason in *why. A NUL byte is refused: the prompt is
   a C string, and text with NULs is not a UTF-8 prompt (UTF-16, a binary). */
static char *cli_read_stream(FILE *f, const char **why)
{
    char *buf = NULL;
    size_t n = 0, cap = 0;
    *why = "cannot read the prompt";
    for (;;) {
        size_t got;
        if (cap - n < 4096) {
            char *p = (char *)realloc(buf, cap * 2 + 4097);
            if (!p) { free(buf); *why = "out of memory reading the prompt"; return NULL; }
            buf = p;
            cap = cap * 2 + 4097;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) { free(buf); return NULL; } /* a read error is not the end of the text */
    if (memchr(buf, 0, n)) {
        free(buf);
        *why = "holds NUL bytes: a prompt is UTF-8 text (is it UTF-16, or a binary file?)";
        return NULL;
    }
    buf[n] = 0;
    return buf;
}

/* The prompt file's text, or NULL with the reason in *why. Pipes are read like files (-f <(cmd),
   -f /dev/stdin); a folder is refused rather than read as an empty prompt. */
static char *cli_read_file(const char *path, const char **why)
{
    FILE *f;
    char *buf;
#if defined(_WIN32)
    /* paths are UTF-8 (main converts the command line): the wide-character functions take them
       whatever the ANSI code page is */
    wchar_t w[4096];
    DWORD a;
    *why = "cannot read the prompt file";
    if (MultiByteToWideChar(CP_UTF8, 0, path, -1, w, (int)(sizeof w / sizeof *w)) <= 0) return NULL;
    a = GetFileAttributesW(w);
    if (a != INVALID_FILE_ATTRIBUTES && (a & FILE_ATTRIBUTE_DIRECTORY)) { *why = "is a folder, not a file"; return NULL; }
    if (!(f = _wfopen(w, L"rb"))) return NULL;
#else
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) {
        *why = S_ISDIR(st.st_mode) ? "is a folder, not a file" : "is not a regular file";
        return NULL;
    }
    *why = "cannot read the prompt file";
    if (!(f = fopen(path, "rb"))) return NULL;
#endif
    buf = cli_read_stream(f, why);
    fclose(f);
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
    FILE *out, *err;
    int tty_err;      /* stderr is a terminal: progress redrawn in place */
    int prompt_shown; /* the prompt's progress is on screen */
    double t_first;   /* time of the first token: the prompt is evaluated by then */
    int n_tokens;
    size_t n_bytes;
    char last;        /* the last byte written: one-shot output ends with a newline, not two */
} cli_stream;

static int cli_on_token(void *user, int32_t token, const char *text, size_t len)
{
    cli_stream *st = (cli_stream *)user;
    if (token >= 0 && st->n_tokens++ == 0) st->t_first = cli_now();
    if (len) {
        fwrite(text, 1, len, st->out);
        fflush(st->out);
        st->n_bytes += len;
        st->last = text[len - 1];
    }
    if (cli_test_hook && token >= 0) cli_test_hook(CLI_AT_TOKEN, st->n_tokens);
    return cli_interrupted != 0;
}

/* A long prompt takes seconds per pass (128 tokens) before the first word: say how far it is, for
   prompts of more than one pass. On a terminal the line is erased once the prompt is in. */
static int cli_on_prompt(void *user, int done, int total)
{
    cli_stream *st = (cli_stream *)user;
    if (cli_test_hook) cli_test_hook(CLI_AT_PROMPT, done);
    if (done < total || st->prompt_shown) {
        if (!st->tty_err) fprintf(st->err, "prompt: %d/%d tokens\n", done, total);
        else if (done < total) fprintf(st->err, "\rprompt: %d/%d tokens", done, total);
        else fprintf(st->err, "\r%40s\r", "");
        fflush(st->err);
        st->prompt_shown = 1;
    }
    return cli_interrupted != 0;
}

/* On a terminal one line redrawn with \r; in a log file (stderr not a terminal) whole lines, a few
   of them, rather than a run of \r-joined updates. */
typedef struct cli_progress_state { FILE *err; int tty, last; } cli_progress_state;

static int cli_progress(void *user, float f)
{
    cli_progress_state *p = (cli_progress_state *)user;
    int pct = (int)(f * 100.0f + 0.5f);
    if (p->tty) fprintf(p->err, "\rloading model: %3d%%", pct);
    else if (pct / 25 > p->last) { p->last = pct / 25; fprintf(p->err, "loading model: %d%%\n", pct); }
    fflush(p->err);
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

/* The timings line, llama.cpp style. t0: before the prompt; st->t_first: first token; t1: done.
   The first token's step is in the prompt's time, so generation speed counts the tokens after it. */
static void cli_timings(FILE *err, const gemma2_generate_result *r, const cli_stream *st, double t0, double t1)
{
    double tp = (st->n_tokens ? st->t_first : t1) - t0, tg = st->n_tokens ? t1 - st->t_first : 0;
    int ng = r->n_generated > 1 ? r->n_generated - 1 : 0;
    fprintf(err, "prompt: %d tokens in %.2f s (%.1f tokens/s, %.2f ms/token) | generation: %d tokens in %.2f s "
                 "(%.1f tokens/s, %.2f ms/token) | total %.2f s | stop: %s\n",
            r->n_prompt, tp, tp > 0 ? r->n_prompt / tp : 0.0, r->n_prompt > 0 ? tp * 1e3 / r->n_prompt : 0.0,
            r->n_generated, tg, (tg > 0 && ng > 0) ? ng / tg : 0.0, (tg > 0 && ng > 0) ? tg * 1e3 / ng : 0.0,
            t1 - t0, cli_stop_name(r->stop_reason));
}

/* The first prompt's ids as they will be evaluated: for the chat, the conversation so far (system
   and the user turn, with <bos> and the generation prompt); for --raw, <bos> + the text. Returns
   their number (*ids malloc'd) or a negative error. */
static int cli_prompt_ids(const gemma2_model *m, const cli_opts *o, const char *prompt, int32_t **ids)
{
    int32_t dummy;
    int n;
    *ids = NULL;
    if (o->raw) {
        int bos = gemma2_model_config(m)->bos_token_id;
        n = gemma2_tokenize(m, prompt, strlen(prompt), &dummy, 0, GEMMA2_TOKENIZE_SPECIAL);
        if (n < 0) return n;
        if (!(*ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + 1)))) return GEMMA2_ERROR_OUT_OF_MEMORY;
        n = gemma2_tokenize(m, prompt, strlen(prompt), *ids + 1, n, GEMMA2_TOKENIZE_SPECIAL);
        if (n > 0 && (*ids)[1] == bos) memmove(*ids, *ids + 1, sizeof(int32_t) * (size_t)n); /* <bos> once */
        else { (*ids)[0] = bos; n++; }
        return n;
    } else {
        gemma2_message msgs[2];
        int k = 0;
        if (o->system) { msgs[k].role = "system"; msgs[k++].content = o->system; }
        msgs[k].role = "user";
        msgs[k++].content = prompt;
        n = gemma2_chat_tokenize(m, msgs, k, 1, &dummy, 0);
        if (n < 0) return n;
        if (!(*ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + 1)))) return GEMMA2_ERROR_OUT_OF_MEMORY;
        return gemma2_chat_tokenize(m, msgs, k, 1, *ids, n);
    }
}

/* --verbose-prompt: id and piece of every prompt token, control bytes escaped. */
static void cli_print_ids(FILE *err, const gemma2_model *m, const int32_t *ids, int n)
{
    int i;
    fprintf(err, "prompt: %d tokens\n", n);
    for (i = 0; i < n; i++) {
        size_t len = 0, k;
        const char *p = gemma2_token_piece(m, ids[i], &len);
        fprintf(err, "%6d -> '", (int)ids[i]);
        for (k = 0; p && k < len; k++) {
            unsigned char c = (unsigned char)p[k];
            if (c == '\n') fputs("\\n", err);
            else if (c == '\t') fputs("\\t", err);
            else if (c == '\\' || c == '\'') fprintf(err, "\\%c", c);
            else if (c < 32 || c == 127) fprintf(err, "\\x%02x", c);
            else fputc(c, err);
        }
        fputs("'\n", err);
    }
}

/* --prompt-cache: *s gets the prompt ids[0..n) evaluated, from FILE's saved session where it
   shares a prefix with them (rewound to the longest common one; the rest evaluated), and the
   result is saved back to FILE. A FILE that does not load (missing, of another model or KV type,
   damaged, longer than -c) is a note, and the prompt is evaluated afresh. *reused: tokens taken
   from FILE. Returns 0 or a negative error (the evaluation's; a failed save is only a note). */
static int cli_prompt_cache(const gemma2_model *m, const char *file, gemma2_session **s, const int32_t *ids, int n, int *reused, FILE *err)
{
    char emsg[512];
    gemma2_session *c;
    FILE *probe = fopen(file, "rb");
    int rc, lcp = 0, pos;
    *reused = 0;
    if (probe) {
        fclose(probe);
        c = gemma2_session_load(m, file, gemma2_session_n_ctx(*s), &rc, emsg, sizeof emsg);
        if (!c) fprintf(err, "gemma2: note: --prompt-cache: %s; evaluating the prompt afresh\n", emsg);
        else {
            const int32_t *t = gemma2_session_tokens(c);
            pos = gemma2_session_pos(c);
            while (lcp < pos && lcp < n && t[lcp] == ids[lcp]) lcp++;
            /* the whole saved prompt again: its logits are in the file, nothing to recompute */
            rc = lcp == pos && gemma2_logits(c) ? 0 : lcp > 0 ? gemma2_session_rewind(c, lcp) : 0;
            if (lcp > 0 && rc == 0) {
                gemma2_session_free(*s);
                *s = c;
                *reused = lcp;
            } else gemma2_session_free(c);
        }
    }
    if ((rc = gemma2_eval(*s, ids + *reused, n - *reused, NULL)) != 0) return rc;
    fprintf(err, "prompt cache: %d of %d prompt tokens reused from %s\n", *reused, n, file);
    if (gemma2_session_save(*s, file, emsg, sizeof emsg) != 0) fprintf(err, "gemma2: note: --prompt-cache: not saved: %s\n", emsg);
    return 0;
}

static void cli_chat_help(FILE *err)
{
    fprintf(err, "  /help          this list\n"
                 "  /reset         forget the conversation (the system prompt stays)\n"
                 "  /undo          forget the last exchange (your message and the reply)\n"
                 "  /regen         generate the last reply again\n"
                 "  /quit, /exit   leave (so do Ctrl-D, and Ctrl-C twice at the prompt)\n"
                 "  Ctrl-C during a reply stops it. A message that starts with / is sent when typed\n"
                 "  after a space (the space is not sent).\n");
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
    cli_progress_state ps;
    char emsg[512], *file_prompt = NULL;
    const char *prompt, *why = NULL;
    int32_t *ids = NULL;
    int rc, exit_code = 1, n_replies = 0, weights, saved, n_ids = 0, n_ctx_max, tty_err = cli_isatty(err), sig_set = 0;
    double t0, t1;
#if defined(_WIN32)
    void (*old_sigint)(int);
#else
    struct sigaction sa, old_sa;
#endif

    rc = cli_parse(argc, argv, &o, in, out, err);
    if (rc) return rc == 2 ? 0 : 2;
    if (o.prompt_file) {
        int from_stdin = !strcmp(o.prompt_file, "-");
        file_prompt = from_stdin ? cli_read_stream(in, &why) : cli_read_file(o.prompt_file, &why);
        if (!file_prompt) { fprintf(err, "gemma2: error: %s: %s\n", from_stdin ? "stdin" : o.prompt_file, why); return 1; }
        if (o.prompt_from_pipe && !file_prompt[strspn(file_prompt, " \t\r\n")]) {
            fprintf(err, "gemma2: error: no prompt: stdin was empty; give -p TEXT, -f FILE or -i (see --help)\n");
            free(file_prompt);
            return 1;
        }
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
    ps.err = err;
    ps.tty = tty_err;
    ps.last = -1;
    mo.progress = cli_progress;
    mo.progress_user = &ps;
    t0 = cli_now();
    m = gemma2_load(o.model, &mo, emsg, sizeof emsg);
    if (tty_err) fprintf(err, "\r");
    if (!m) { fprintf(err, "gemma2: error: %s\n", emsg); goto done; }
    if (!gemma2_has_tokenizer(m)) { /* prompts are text: say where the tokenizer was looked for */
        fprintf(err, "gemma2: error: no tokenizer.json or tokenizer.model in %s (use --tokenizer FILE)\n", o.model);
        goto done;
    }
    fprintf(err, "loaded %s in %.2f s: %d layers, vocab %d, %.2f GB of weights%s, kernels %s%s%s\n", o.model, cli_now() - t0,
            gemma2_model_config(m)->num_hidden_layers, gemma2_vocab_size(m), (double)gemma2_model_weight_bytes(m) / 1e9,
            o.no_mmap ? " (read into memory)" : "", gemma2_model_kernels(m), o.compute_bf16 ? ", compute bf16" : "",
            o.kv_bf16 ? ", KV cache bf16" : "");
    /* said after loading: only then is it known whether the folder was saved quantized already */
    weights = gemma2_model_weights(m, &saved);
    if (weights == GEMMA2_WEIGHTS_Q8 || weights == GEMMA2_WEIGHTS_Q4)
        fprintf(err, "weights %s%s, %s\n", weights == GEMMA2_WEIGHTS_Q8 ? "q8" : "q4", weights == GEMMA2_WEIGHTS_Q4 ? " (embedding q8)" : "",
                saved ? "as saved in the folder" : "quantized at load");
    {
        int k;
        for (k = 0; k < o.sp.n_logit_bias; k++)
            if (o.bias[k].token >= gemma2_vocab_size(m)) {
                fprintf(err, "gemma2: error: --logit-bias token %d is not in the vocabulary (0..%d)\n", (int)o.bias[k].token, gemma2_vocab_size(m) - 1);
                goto done;
            }
    }
    /* One rule for -c: 0 and anything above the model's positions mean the maximum, said on stderr
       when it was asked for explicitly. */
    n_ctx_max = gemma2_model_config(m)->max_position_embeddings;
    if (o.n_ctx > n_ctx_max) fprintf(err, "gemma2: note: -c %d is more than this model's %d positions: using %d\n", o.n_ctx, n_ctx_max, n_ctx_max);
    if (o.n_ctx == 0 || o.n_ctx > n_ctx_max) o.n_ctx = n_ctx_max;
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
    gp.on_prompt = cli_on_prompt;
    gp.user = &st;
    cli_interrupted = 0;
#if defined(_WIN32)
    old_sigint = signal(SIGINT, cli_on_sigint);
#else
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a Ctrl-C at the prompt must end the read that waits for a line */
    sigaction(SIGINT, &sa, &old_sa);
#endif
    sig_set = 1;

    if (prompt) {
        n_ids = cli_prompt_ids(m, &o, prompt, &ids);
        if (n_ids < 0) { fprintf(err, "gemma2: error: tokenizing the prompt: %s\n", gemma2_error_string(n_ids)); goto done; }
        if (o.verbose_prompt) cli_print_ids(err, m, ids, n_ids);
        if (n_ids > o.n_ctx) {
            fprintf(err, "gemma2: error: the prompt is %d tokens; the context holds %d (%s)\n", n_ids, o.n_ctx,
                    o.n_ctx == n_ctx_max ? "this model's maximum" : "-c");
            if (!o.interactive) goto done;
            prompt = NULL;
        }
    }
    memset(&st, 0, sizeof st);
    st.out = out;
    st.err = err;
    st.tty_err = tty_err;
    if (o.prompt_cache && prompt) { /* one prompt (not -i): its ids are what the chat or --raw would evaluate */
        int reused = 0;
        t0 = cli_now();
        rc = cli_prompt_cache(m, o.prompt_cache, &s, ids, n_ids, &reused, err);
        if (rc) { fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc)); goto done; }
        memset(&res, 0, sizeof res);
        if (o.n_predict != 0) rc = gemma2_generate(s, NULL, 0, &gp, &res);
        else res.stop_reason = GEMMA2_STOP_MAX_TOKENS;
        res.n_prompt = n_ids - reused;
        t1 = cli_now();
        if (st.n_bytes && st.last != '\n') fputc('\n', out);
        fflush(out);
        if (rc) { fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc)); goto done; }
        cli_timings(err, &res, &st, t0, t1);
        exit_code = res.stop_reason == GEMMA2_STOP_CALLBACK && cli_interrupted ? 130 : 0;
        goto done;
    }
    if (!o.interactive && o.n_predict == 0) { /* the prompt only: its time, nothing generated */
        t0 = cli_now();
        rc = gemma2_eval(s, ids, n_ids, NULL);
        t1 = cli_now();
        if (rc) { fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc)); goto done; }
        memset(&res, 0, sizeof res);
        res.n_prompt = n_ids;
        res.stop_reason = GEMMA2_STOP_MAX_TOKENS;
        cli_timings(err, &res, &st, t0, t1);
        exit_code = cli_interrupted ? 130 : 0;
        goto done;
    }

    if (o.raw) {
        t0 = cli_now();
        rc = gemma2_generate(s, ids, n_ids, &gp, &res);
        t1 = cli_now();
        if (st.n_bytes && st.last != '\n') fputc('\n', out);
        fflush(out);
        if (rc) { fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc)); goto done; }
        cli_timings(err, &res, &st, t0, t1);
        exit_code = res.stop_reason == GEMMA2_STOP_CALLBACK && cli_interrupted ? 130 : 0;
        goto done;
    }

    chat = gemma2_chat_new_ex(s, o.system, &rc);
    if (!chat) {
        if (rc == GEMMA2_ERROR_UNSUPPORTED)
            fprintf(err, "gemma2: error: this model's tokenizer has no <start_of_turn>/<end_of_turn> (not a Gemma chat vocabulary?)\n");
        else fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc));
        goto done;
    }
    if (o.interactive) {
        fprintf(err, "interactive chat: type a message and press Enter; /help lists the commands; Ctrl-C stops a reply, "
                     "/quit or Ctrl-D leaves\n");
        if (prompt) fprintf(err, "> %s\n", prompt); /* the first question, as if typed */
    }
    if (prompt) {
        t0 = cli_now();
        rc = gemma2_chat_say(chat, prompt, &gp, &res);
        t1 = cli_now();
        if (o.interactive) fputc('\n', out);
        else if (st.n_bytes && st.last != '\n') fputc('\n', out);
        fflush(out);
        if (rc) { fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc)); if (!o.interactive) goto done; }
        else cli_timings(err, &res, &st, t0, t1);
        if (!o.interactive) {
            exit_code = rc == 0 && res.stop_reason == GEMMA2_STOP_CALLBACK && cli_interrupted ? 130 : 0;
            goto done;
        }
    }
    if (o.interactive) {
        int warned = 0, n_reads = 0;
        cli_interrupted = 0;
        for (;;) {
            char *line;
            int regen = 0;
            fprintf(err, "> ");
            fflush(err);
            if (cli_test_hook) cli_test_hook(0, ++n_reads);
            line = cli_read_line(in);
            if (cli_interrupted) {
                /* Ctrl-C at the prompt: the terminal has dropped the line being typed (and so is what
                   was read). The first one says how to leave, a second one in a row leaves. */
                int quit = warned || cli_interrupted > 1;
                free(line);
                clearerr(in);
                cli_interrupted = 0;
                fputc('\n', err);
                if (quit) break;
                fprintf(err, "(Ctrl-C again, /quit or Ctrl-D to leave)\n");
                warned = 1;
                continue;
            }
            warned = 0;
            if (!line) { fputc('\n', err); break; } /* end of input: leave the shell on a line of its own */
            if (line[0] == '/') {
                if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) { free(line); break; }
                if (!strcmp(line, "/help")) cli_chat_help(err);
                else if (!strcmp(line, "/reset")) { gemma2_chat_reset(chat); fprintf(err, "(conversation cleared)\n"); }
                else if (!strcmp(line, "/undo")) fprintf(err, gemma2_chat_undo(chat) == 0 ? "(last exchange removed)\n" : "(nothing to undo)\n");
                else if (!strcmp(line, "/regen")) {
                    if (gemma2_chat_turns(chat)) regen = 1;
                    else fprintf(err, "(nothing to regenerate: no reply yet)\n");
                }
                /* not sent to the model: a mistyped command is almost never a message */
                else fprintf(err, "(unknown command %s, /help lists them)\n", line);
                if (!regen) { free(line); continue; }
            }
            if (!line[strspn(line, " \t")]) { free(line); continue; }
            memset(&st, 0, sizeof st);
            st.out = out;
            st.err = err;
            st.tty_err = tty_err;
            t0 = cli_now();
            gp.sampler.seed = o.sp.seed + (uint64_t)++n_replies; /* a fresh random stream per reply (else /regen repeats itself) */
            if (regen) rc = gemma2_chat_regenerate(chat, &gp, &res);
            else rc = gemma2_chat_say(chat, line, &gp, &res);
            t1 = cli_now();
            free(line);
            fputc('\n', out);
            fflush(out);
            if (rc == GEMMA2_ERROR_CONTEXT_FULL)
                fprintf(err, "(the message does not fit: %d of the context's %d tokens are free; /undo or /reset, or start with a larger -c)\n",
                        gemma2_session_n_ctx(s) - gemma2_session_pos(s), gemma2_session_n_ctx(s));
            else if (rc) fprintf(err, "gemma2: error: %s\n", gemma2_error_string(rc));
            else {
                cli_timings(err, &res, &st, t0, t1);
                if (res.stop_reason == GEMMA2_STOP_CONTEXT_FULL) fprintf(err, "(the context is full: /undo or /reset to go on)\n");
            }
            cli_interrupted = 0; /* the Ctrl-C that stopped this reply is spent */
        }
    }
    exit_code = 0;
done:
    if (sig_set) {
#if defined(_WIN32)
        signal(SIGINT, old_sigint != SIG_ERR ? old_sigint : SIG_DFL);
#else
        sigaction(SIGINT, &old_sa, NULL);
#endif
    }
    free(ids);
    free(file_prompt);
    gemma2_chat_free(chat);
    gemma2_session_free(s);
    gemma2_free(m);
    return exit_code;
}

#ifndef GEMMA2_CLI_NO_MAIN
#if defined(_WIN32)
#include <shellapi.h>
/* Windows hands main its arguments in the ANSI code page, which cannot spell every folder name:
   the command line is taken again in UTF-16 and turned into the UTF-8 the library takes. The
   console is switched to UTF-8 too, so that replies print as written. */
int main(int argc, char **argv)
{
    int n = 0, i, rc;
    wchar_t **wv = CommandLineToArgvW(GetCommandLineW(), &n);
    char **u = wv && n > 0 ? (char **)calloc((size_t)n + 1, sizeof *u) : NULL;
    for (i = 0; u && i < n; i++) {
        int len = WideCharToMultiByte(CP_UTF8, 0, wv[i], -1, NULL, 0, NULL, NULL);
        if (len <= 0 || !(u[i] = (char *)malloc((size_t)len))) break;
        WideCharToMultiByte(CP_UTF8, 0, wv[i], -1, u[i], len, NULL, NULL);
    }
    SetConsoleOutputCP(CP_UTF8);
    rc = u && i == n ? cli_main(n, u, stdin, stdout, stderr) : cli_main(argc, argv, stdin, stdout, stderr);
    for (i = 0; u && i < n; i++) free(u[i]);
    free(u);
    if (wv) LocalFree(wv);
    return rc;
}
#else
int main(int argc, char **argv)
{
    return cli_main(argc, argv, stdin, stdout, stderr);
}
#endif
#endif
