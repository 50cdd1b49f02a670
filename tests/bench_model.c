/* Speed benchmark: random-weight checkpoints of the real Gemma-2 2B (and optionally
   9B) shapes, measured against this machine's own memory bandwidth and FLOP/s.

     make bench-model                         2B, 1 and 2 threads: f32 and bf16 compute, Q8 and Q4 weights
     ./tests/bench_model [--9b | --only-9b] [--threads N] [--kernels-only] [--preload] [--max-ctx N] [--kv-bf16] [--quantized] [--big-q4]
                         [--no-paths | --only-paths | --only-saved] [--no-batch | --only-batch] [--data DIR]

   The models are written once into bench-data/ (gitignored) as ordinary Hugging Face folders
   (config.json + model.safetensors, bf16), by the small generator below; 2B is 5.2 GB, 9B is
   18.5 GB. Reported per configuration: load time, time to first token (512-token prompt, the
   first run after loading, page faults included), prefill tokens/s (best of 3 more runs),
   decode tokens/s at context 0 / 1k / 4k / 8k (best of 3 runs of 8 tokens), achieved weight
   bandwidth, peak RSS; and as fractions of the same run's measured streaming-read bandwidth
   (the best of plain and decode-pattern reads) and FMA, bf16-dot and int8-dot (vpdpbusd)
   peaks. GEMMA2_WEIGHTS_Q8 and _Q4 run once per thread count (load time includes the
   quantization; decode fractions are at their real bytes per token). Weights are mapped (the default)
   or, with --preload, read into anonymous huge pages (gemma2_options.preload). --kv-bf16 runs
   every configuration with GEMMA2_KV_BF16 (the KV cache in bf16: decode at long contexts);
   --quantized runs only the Q8 and Q4 configurations.
   --write-only writes the checkpoints (2B; with --9b also 9B) and stops: each folder gets
   generation_config.json (eos 1 and 107) and the real tokenizer.json, so ./gemma2 -m DIR runs on
   it as on a real download (make bench-model-data).
   Every 2B run starts with what users get without options beside --preload (--no-paths skips it,
   --only-paths runs only it): per thread count and compute mode, both paths loaded from a cold
   page cache, time to first token (load + first prompt), then prefill and decode timed in
   alternation, with page-fault counts (bench_paths).
   Then a saved session (bench_saved; --only-saved runs only it): a 2048-token prompt at 2
   threads, saved with gemma2_session_save and restored with gemma2_session_load from the warm
   file and from a buffer, against the time the prompt took to evaluate (the target: < 10%).
   Then batched decoding at 2 threads (bench_batch; --no-batch skips it, --only-batch runs only
   it): aggregate decode tokens/s of 1, 4 and 8 sessions through gemma2_batch_eval and their
   ratio to one session's gemma2_eval.
   Decode at context N sets the session position directly over a KV cache filled with synthetic
   values: the work per token is the same as after a real N-token prompt, without spending
   minutes prefilling it. Peak RSS therefore includes the whole 8k-token KV cache. */
#define _POSIX_C_SOURCE 200809L
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

static double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double bench_rss_gb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss * 1024.0 / 1e9; /* ru_maxrss is in KB on Linux */
}

/* ---------------------------------------------------------------- the generator */

typedef struct bench_shape {
    const char *name;
    int V, H, I, L, nH, nKV, hd;
} bench_shape;

static const bench_shape bench_2b = {"gemma-2-2b-random", 256000, 2304, 9216, 26, 8, 4, 256};
static const bench_shape bench_9b = {"gemma-2-9b-random", 256000, 3584, 14336, 42, 16, 8, 256};
static const bench_shape bench_9b_q4 = {"gemma-2-9b-random-q4", 256000, 3584, 14336, 42, 16, 8, 256};
static const bench_shape bench_27b_q4 = {"gemma-2-27b-random-q4", 256000, 4608, 36864, 46, 32, 16, 128};

typedef struct bench_tensor {
    char name[96];
    long rows, cols; /* cols == 0: a vector */
} bench_tensor;

static int bench_tensors(const bench_shape *s, bench_tensor *t)
{
    int n = 0, l;
    static const char *mats[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    static const char *norms[4] = {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                                   "post_feedforward_layernorm"};
    long qd = (long)s->nH * s->hd, kvd = (long)s->nKV * s->hd;
    long shp[7][2];
    shp[0][0] = qd; shp[0][1] = s->H; shp[1][0] = kvd; shp[1][1] = s->H; shp[2][0] = kvd; shp[2][1] = s->H;
    shp[3][0] = s->H; shp[3][1] = qd; shp[4][0] = s->I; shp[4][1] = s->H; shp[5][0] = s->I; shp[5][1] = s->H;
    shp[6][0] = s->H; shp[6][1] = s->I;
    if (t) { snprintf(t[n].name, 96, "model.embed_tokens.weight"); t[n].rows = s->V; t[n].cols = s->H; }
    n++;
    for (l = 0; l < s->L; l++) {
        int i;
        for (i = 0; i < 4; i++) { if (t) { snprintf(t[n].name, 96, "model.layers.%d.%s.weight", l, norms[i]); t[n].rows = s->H; t[n].cols = 0; } n++; }
        for (i = 0; i < 7; i++) { if (t) { snprintf(t[n].name, 96, "model.layers.%d.%s.weight", l, mats[i]); t[n].rows = shp[i][0]; t[n].cols = shp[i][1]; } n++; }
    }
    if (t) { snprintf(t[n].name, 96, "model.norm.weight"); t[n].rows = s->H; t[n].cols = 0; }
    n++;
    return n;
}

/* Random bf16 values, uniform with standard deviation ~0.02 (the scale of trained weights). */
static void bench_fill(uint16_t *buf, size_t n, uint64_t *rng)
{
    size_t i;
    uint64_t x = *rng;
    for (i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        buf[i] = gemma2__f32_to_bf16((float)((int32_t)(x >> 40) - (1 << 23)) * (0.0346f / (float)(1 << 23)));
    }
    *rng = x;
}

static int bench_write_config(const char *dir, const bench_shape *s)
{
    char path[1024];
    FILE *f;
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\n  \"architectures\": [\"Gemma2ForCausalLM\"],\n  \"model_type\": \"gemma2\",\n"
               "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
               "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n"
               "  \"head_dim\": %d,\n  \"query_pre_attn_scalar\": %d,\n  \"sliding_window\": 4096,\n"
               "  \"attn_logit_softcapping\": 50.0,\n  \"final_logit_softcapping\": 30.0,\n"
               "  \"max_position_embeddings\": 8192,\n  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 10000.0,\n"
               "  \"hidden_activation\": \"gelu_pytorch_tanh\",\n  \"bos_token_id\": 2,\n  \"eos_token_id\": 1,\n"
               "  \"pad_token_id\": 0,\n  \"torch_dtype\": \"bfloat16\"\n}\n",
            s->V, s->H, s->I, s->L, s->nH, s->nKV, s->hd, s->hd == 128 ? 144 : 256); /* 27B scales queries by 1/sqrt(H / nH) */
    fclose(f);
    return 0;
}

/* Makes DIR usable as the CLI uses a real download: generation_config.json with Gemma's two end
   tokens (eos 1 and <end_of_turn> 107), and the real Gemma tokenizer copied from the tests'
   data (the vocabulary is the real one; the weights are random, so the text is noise). */
static int bench_cli_ready(const char *dir)
{
    char path[1100];
    FILE *f, *in;
    struct stat st;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (stat(path, &st) != 0) {
        if (!(f = fopen(path, "w"))) return -1;
        fprintf(f, "{\n  \"bos_token_id\": 2,\n  \"eos_token_id\": [1, 107],\n  \"pad_token_id\": 0\n}\n");
        if (fclose(f) != 0) return -1;
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (stat(path, &st) != 0 && (in = fopen("tests/data/tokenizer/tokenizer.json", "rb")) != NULL) {
        char buf[1 << 16];
        size_t n;
        int bad = 0;
        if (!(f = fopen(path, "wb"))) { fclose(in); return -1; }
        while ((n = fread(buf, 1, sizeof buf, in)) > 0) bad |= fwrite(buf, 1, n, f) != n;
        fclose(in);
        if (fclose(f) != 0 || bad) { remove(path); return -1; }
    }
    return 0;
}

/* Closes the JSON header hdr[0 .. len) (room for 8 more bytes), pads it with spaces so the
   data starts 8-byte aligned, and writes the length and the header to DIR/model.safetensors;
   the open file, for the tensor data, or NULL. */
static FILE *bench_create_safetensors(const char *dir, char *hdr, size_t len)
{
    char path[1100];
    uint64_t hl;
    FILE *f;
    int i;
    hdr[len++] = '}';
    while (len % 8) hdr[len++] = ' ';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!(f = fopen(path, "wb"))) return NULL;
    hl = (uint64_t)len;
    for (i = 0; i < 8; i++) fputc((int)(((uint64_t)hl >> (8 * i)) & 0xff), f);
    if (fwrite(hdr, 1, len, f) != len) { fclose(f); return NULL; }
    return f;
}

static int bench_write_model(const char *dir, const bench_shape *s)
{
    char *hdr;
    int n = bench_tensors(s, NULL), i;
    bench_tensor *t = (bench_tensor *)calloc((size_t)n, sizeof *t);
    size_t cap = (size_t)n * 160 + 64, len = 0, off = 0, chunk = (size_t)1 << 22;
    uint16_t *buf = (uint16_t *)malloc(chunk * 2);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    FILE *f;
    double t0 = bench_now();
    if (!t || !buf) return -1;
    bench_tensors(s, t);
    mkdir("bench-data", 0755);
    mkdir(dir, 0755);
    if (bench_write_config(dir, s) != 0) return -1;
    /* the safetensors header: JSON, padded with spaces so the data starts 8-byte aligned */
    hdr = (char *)malloc(cap);
    if (!hdr) return -1;
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (i = 0; i < n; i++) {
        size_t bytes = (size_t)t[i].rows * (size_t)(t[i].cols ? t[i].cols : 1) * 2;
        if (t[i].cols)
            len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%ld,%ld],\"data_offsets\":[%zu,%zu]}",
                                    t[i].name, t[i].rows, t[i].cols, off, off + bytes);
        else
            len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%ld],\"data_offsets\":[%zu,%zu]}",
                                    t[i].name, t[i].rows, off, off + bytes);
        off += bytes;
    }
    if (!(f = bench_create_safetensors(dir, hdr, len))) return -1;
    for (i = 0; i < n; i++) {
        size_t left = (size_t)t[i].rows * (size_t)(t[i].cols ? t[i].cols : 1);
        while (left > 0) {
            size_t c = left < chunk ? left : chunk;
            bench_fill(buf, c, &rng);
            if (fwrite(buf, 2, c, f) != c) { fclose(f); return -1; }
            left -= c;
        }
    }
    if (fclose(f) != 0) return -1;
    fprintf(stderr, "wrote %s (%.1f GB) in %.0f s\n", dir, (double)off / 1e9, bench_now() - t0);
    free(hdr); free(buf); free(t);
    return 0;
}

static int bench_ensure_model(const char *dir, const bench_shape *s)
{
    char path[1024];
    struct stat st;
    size_t expect = 0;
    int n = bench_tensors(s, NULL), i;
    bench_tensor *t = (bench_tensor *)calloc((size_t)n, sizeof *t);
    bench_tensors(s, t);
    for (i = 0; i < n; i++) expect += (size_t)t[i].rows * (size_t)(t[i].cols ? t[i].cols : 1) * 2;
    free(t);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) == 0 && (size_t)st.st_size > expect) return bench_cli_ready(dir); /* already there */
    fprintf(stderr, "writing %s (%.1f GB of random bf16 weights)...\n", dir, (double)expect / 1e9);
    return bench_write_model(dir, s) != 0 ? -1 : bench_cli_ready(dir);
}

/* A 4-bit checkpoint written directly in gemma2_save_quantized's format (a 27B bf16 file, 54
   GB, does not fit on the disk the benchmark runs on): bf16 norms first, then every matrix as
   U8 rows of blocks, Q8 for the embedding and Q4 for the projections, under the "q4" scheme.
   Each matrix repeats 64 rows of random weights quantized by the library itself (speed depends
   on the shapes, not on the values). */
static int bench_write_q4(const char *dir, const bench_shape *s)
{
    char *hdr;
    int n = bench_tensors(s, NULL), i, pass;
    bench_tensor *t = (bench_tensor *)calloc((size_t)n, sizeof *t);
    size_t cap = (size_t)n * 200 + 200, len = 0, off = 0, maxrb = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    uint16_t *b16;
    float *row;
    uint8_t *rows;
    FILE *f;
    double t0 = bench_now();
    if (!t) return -1;
    bench_tensors(s, t);
    for (i = 0; i < n; i++)
        if (t[i].cols) maxrb = GEMMA2__MAX(maxrb, gemma2__row_bytes(i == 0 ? GEMMA2__WF_Q8 : GEMMA2__WF_Q4, (int)t[i].cols));
    b16 = (uint16_t *)malloc((size_t)s->I * 2 + (size_t)s->H * 2 + 64);
    row = (float *)malloc(((size_t)s->I + (size_t)s->H) * sizeof(float));
    rows = (uint8_t *)malloc(64 * maxrb);
    hdr = (char *)malloc(cap);
    if (!b16 || !row || !rows || !hdr) return -1;
    mkdir("bench-data", 0755);
    mkdir(dir, 0755);
    if (bench_write_config(dir, s) != 0) return -1;
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\",\"gemma2.quantization\":\"q4\",\"gemma2.quantization_version\":\"1\"}");
    for (pass = 0; pass < 2; pass++) /* the norms, then the matrices */
        for (i = 0; i < n; i++) {
            int fmt = i == 0 ? GEMMA2__WF_Q8 : GEMMA2__WF_Q4;
            size_t bytes;
            if ((pass == 0) != (t[i].cols == 0)) continue;
            if (!t[i].cols) {
                bytes = (size_t)t[i].rows * 2;
                len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%ld],\"data_offsets\":[%zu,%zu]}", t[i].name, t[i].rows, off, off + bytes);
            } else {
                size_t rb = gemma2__row_bytes(fmt, (int)t[i].cols);
                bytes = (size_t)t[i].rows * rb;
                len += (size_t)snprintf(hdr + len, cap - len, ",\"%s\":{\"dtype\":\"U8\",\"shape\":[%ld,%zu],\"data_offsets\":[%zu,%zu]}", t[i].name, t[i].rows, rb, off, off + bytes);
            }
            off += bytes;
        }
    if (!(f = bench_create_safetensors(dir, hdr, len))) return -1;
    for (pass = 0; pass < 2; pass++)
        for (i = 0; i < n; i++) {
            int fmt = i == 0 ? GEMMA2__WF_Q8 : GEMMA2__WF_Q4, r, k, cols = (int)t[i].cols;
            size_t rb;
            long left;
            if ((pass == 0) != (t[i].cols == 0)) continue;
            if (!cols) {
                bench_fill(b16, (size_t)t[i].rows, &rng);
                if (fwrite(b16, 2, (size_t)t[i].rows, f) != (size_t)t[i].rows) { fclose(f); return -1; }
                continue;
            }
            rb = gemma2__row_bytes(fmt, cols);
            for (r = 0; r < 64; r++) {
                bench_fill(b16, (size_t)cols, &rng);
                for (k = 0; k < cols; k++) row[k] = gemma2__bf16_to_f32(b16[k]);
                gemma2__wformat_of(fmt)->from_float(rows + (size_t)r * rb, row, cols);
            }
            for (left = t[i].rows; left > 0; left -= 64) {
                size_t c = (size_t)(left < 64 ? left : 64);
                if (fwrite(rows, rb, c, f) != c) { fclose(f); return -1; }
            }
        }
    if (fclose(f) != 0) return -1;
    fprintf(stderr, "wrote %s (%.1f GB) in %.0f s\n", dir, (double)off / 1e9, bench_now() - t0);
    free(hdr); free(b16); free(row); free(rows); free(t);
    return 0;
}

static int bench_ensure_q4(const char *dir, const bench_shape *s)
{
    char path[1100];
    struct stat st;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) == 0 && st.st_size > (off_t)1 << 30) return 0; /* already there */
    fprintf(stderr, "writing %s (random Q4 weights)...\n", dir);
    return bench_write_q4(dir, s);
}

/* A bf16 checkpoint quantized to Q4 by gemma2_save_quantized in a child process, so that the
   peak RSS printed is the saver's own: it streams, a matrix at a time. */
static int bench_save_q4(const char *in, const char *out, int nt)
{
    struct rusage ru;
    int status = 0;
    double t0 = bench_now();
    pid_t pid;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        gemma2_options o;
        char err[256];
        memset(&o, 0, sizeof o);
        o.n_threads = nt;
        _exit(gemma2_save_quantized(in, out, GEMMA2_WEIGHTS_Q4, &o, err, sizeof err) == 0 ? 0 : (fprintf(stderr, "%s\n", err), 1));
    }
    if (pid < 0 || wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    {
        char path[1100];
        struct stat st;
        snprintf(path, sizeof path, "%s/model.safetensors", out);
        printf("save %s as Q4 (gemma2_save_quantized, %d threads): %.0f s, peak RSS %.2f GB, file %.2f GB\n", in, nt, bench_now() - t0,
               (double)ru.ru_maxrss * 1024.0 / 1e9, stat(path, &st) == 0 ? (double)st.st_size / 1e9 : 0.0);
    }
    return 0;
}

/* ---------------------------------------------------------------- machine limits */

typedef struct bench_read_job {
    const uint64_t *buf;
    size_t n;      /* uint64 words */
    int simd;      /* 1: bench_read512 */
    uint64_t sink[64];
} bench_read_job;

#if defined(GEMMA2__X86)
/* The fastest read this machine does, so that the fractions below are honest: 64-byte loads
   over 8 neighbouring 4.5 KB runs at a time, each prefetched 1 KB ahead (the access pattern
   of the decode kernels, which walk 8 weight rows at once). */
static GEMMA2__T_AVX512 uint64_t bench_read512(const uint64_t *p, size_t words)
{
    const size_t run = 576; /* words: 4608 bytes, a 2304-wide bf16 row */
    size_t g, i;
    __m512i acc[8];
    int s;
    for (s = 0; s < 8; s++) acc[s] = _mm512_setzero_si512();
    for (g = 0; g + 8 * run <= words; g += 8 * run)
        for (i = 0; i < run; i += 8)
            for (s = 0; s < 8; s++) {
                const uint64_t *q = p + g + (size_t)s * run + i;
                _mm_prefetch((const char *)q + 1024, _MM_HINT_T0);
                acc[s] = _mm512_xor_si512(acc[s], _mm512_loadu_si512((const void *)q));
            }
    for (s = 1; s < 8; s++) acc[0] = _mm512_xor_si512(acc[0], acc[s]);
    return (uint64_t)_mm512_reduce_add_epi64(acc[0]);
}
#endif

static void bench_read_task(void *ctx, int task, int n_tasks)
{
    bench_read_job *j = (bench_read_job *)ctx;
    size_t per = j->n / (size_t)n_tasks, i0 = per * (size_t)task, i;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    const uint64_t *p = j->buf + i0;
#if defined(GEMMA2__X86)
    if (j->simd) { j->sink[task & 63] = bench_read512(p, per); return; }
#endif
    /* 4 independent xor chains: the compiler vectorizes this into wide loads */
    for (i = 0; i + 4 <= per; i += 4) { a ^= p[i]; b ^= p[i + 1]; c ^= p[i + 2]; d ^= p[i + 3]; }
    j->sink[task & 63] = a ^ b ^ c ^ d;
}

/* Streaming read bandwidth (GB/s) over a buffer far bigger than the caches: the best of 10
   runs of each read loop (plain, and the decode kernels' pattern where AVX-512 exists). */
static double bench_read_bw(gemma2__pool *p, uint64_t *buf, size_t bytes)
{
    bench_read_job j;
    double best = 0;
    int r;
    memset(&j, 0, sizeof j);
    j.buf = buf;
    j.n = bytes / 8;
    for (r = 0; r < 20; r++) {
#if defined(GEMMA2__X86)
        j.simd = (r & 1) && (gemma2__x86_features() & GEMMA2__CPU_AVX512);
#endif
        double t0 = bench_now(), dt;
        gemma2__pool_run(p, bench_read_task, &j, gemma2__pool_size(p));
        dt = bench_now() - t0;
        if ((double)bytes / dt / 1e9 > best) best = (double)bytes / dt / 1e9;
    }
    return best;
}

#if defined(GEMMA2__X86)
/* FMA peak: 12 independent accumulator chains hide the 4-cycle latency at 2 FMAs per cycle. */
static GEMMA2__T_AVX512 double bench_fma512(long iters)
{
    __m512 a[12], m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f), s;
    long it;
    int i;
    for (i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (it = 0; it < iters; it++) {
        _Pragma("GCC unroll 16") for (i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    }
    s = a[0];
    for (i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return (double)_mm512_reduce_add_ps(s);
}

static GEMMA2__T_AVX512BF16 double bench_dpbf512(long iters)
{
    __m512 a[12], s;
    __m512i x = _mm512_set1_epi16(0x3f80), y = _mm512_set1_epi16(0x3a83);
    long it;
    int i;
    for (i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (it = 0; it < iters; it++) {
        _Pragma("GCC unroll 16") for (i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)x, (__m512bh)y);
    }
    s = a[0];
    for (i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
    return (double)_mm512_reduce_add_ps(s);
}

/* 64 int8 multiply-adds per instruction, counted as 128 operations. */
static GEMMA2__T_AVX512VNNI double bench_dpbusd512(long iters)
{
    __m512i a[12], s, x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-5);
    long it;
    int i;
    for (i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
    for (it = 0; it < iters; it++) {
        _Pragma("GCC unroll 16") for (i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
    }
    s = a[0];
    for (i = 1; i < 12; i++) s = _mm512_add_epi32(s, a[i]);
    return (double)_mm512_reduce_add_epi32(s);
}

static GEMMA2__T_AVX2 double bench_fma256(long iters)
{
    __m256 a[12], m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f), s;
    long it;
    int i;
    for (i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (it = 0; it < iters; it++) {
        _Pragma("GCC unroll 16") for (i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    }
    s = a[0];
    for (i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    return (double)gemma2__hsum_256(s);
}
#endif

typedef struct bench_flop_job {
    int kind; /* 0 f32 FMA, 1 bf16 dot, 2 int8 dot */
    int width;
    long iters;
    double sink[64];
} bench_flop_job;

static void bench_flop_task(void *ctx, int task, int n_tasks)
{
    bench_flop_job *j = (bench_flop_job *)ctx;
    double r = 0;
    (void)n_tasks;
#if defined(GEMMA2__X86)
    if (j->kind == 1) r = bench_dpbf512(j->iters);
    else if (j->kind == 2) r = bench_dpbusd512(j->iters);
    else if (j->width == 16) r = bench_fma512(j->iters);
    else r = bench_fma256(j->iters);
#endif
    j->sink[task & 63] = r;
}

/* Peak GFLOP/s over all the pool's threads; kind 1: vdpbf16ps (64 flops per instruction), kind
   2: vpdpbusd (128 integer operations per instruction). 0 if absent. */
static double bench_peak(gemma2__pool *p, int kind)
{
    bench_flop_job j;
    double best = 0, flops_per_iter;
    int r;
    memset(&j, 0, sizeof j);
    j.kind = kind;
    j.iters = 2000000; /* ~0.05 s a run: short runs, best of many, dodge other processes' time slices */
#if defined(GEMMA2__X86)
    {
        int f = gemma2__x86_features();
        if (kind == 1 && !(f & GEMMA2__CPU_AVX512BF16)) return 0;
        if (kind == 2 && !(f & GEMMA2__CPU_AVX512VNNI)) return 0;
        if (!(f & GEMMA2__CPU_AVX2)) return 0;
        j.width = (f & GEMMA2__CPU_AVX512) ? 16 : 8;
    }
#else
    return 0;
#endif
    flops_per_iter = 12.0 * 2.0 * (kind == 2 ? 64 : kind == 1 ? 32 : j.width);
    for (r = 0; r < 20; r++) {
        double t0 = bench_now(), dt;
        gemma2__pool_run(p, bench_flop_task, &j, gemma2__pool_size(p));
        dt = bench_now() - t0;
        if (flops_per_iter * (double)j.iters * gemma2__pool_size(p) / dt / 1e9 > best)
            best = flops_per_iter * (double)j.iters * gemma2__pool_size(p) / dt / 1e9;
    }
    return best;
}

/* ---------------------------------------------------------------- kernel-level */

/* One product as the forward pass runs it: pack (inside the timing), then the rows over the
   pool. Returns the best of 5 runs in seconds, and the layout the set chose in *kind. */
static double bench_matmul(gemma2__pool *p, const gemma2__kernels *k, gemma2__matmul_args *a, void *buf, int compute_bf16, int *kind)
{
    double best = 1e30;
    int r;
    for (r = 0; r < 5; r++) {
        double t0 = bench_now();
        gemma2__pack(p, k, a, 1, buf, compute_bf16);
        gemma2__matmul_n(p, k, a, 1);
        if (bench_now() - t0 < best) best = bench_now() - t0;
    }
    *kind = a->xp_kind;
    return best;
}

static void bench_kernels(int nt, double bw, double peak32, double peakbf, double peaki8)
{
    gemma2__kernels k;
    gemma2__pool *p = gemma2__pool_new(nt);
    int V = 256000, H = 2304, I = 9216, T = 128, mode, kind;
    size_t i;
    uint64_t rng = 12345;
    uint16_t *w = (uint16_t *)malloc((size_t)V * H * 2);
    float *x = (float *)malloc((size_t)T * I * 4), *y = (float *)malloc((size_t)T * V * 4);
    void *buf = malloc(gemma2__pack_bytes_max(T, I));
    gemma2__mat m;
    gemma2__matmul_args a;
    gemma2__kernels_select(GEMMA2_KERNELS_AUTO, &k);
    bench_fill(w, (size_t)V * H, &rng);
    for (i = 0; i < (size_t)T * I; i++) x[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    /* decode: the 256000 x 2304 output projection, 1.18 GB, far beyond the caches */
    m.data = w; m.format = GEMMA2__WF_BF16; m.rows = V; m.cols = H;
    memset(&a, 0, sizeof a);
    a.y = y; a.ldy = V; a.x = x; a.T = 1; a.w = &m;
    /* mode 0: f32 with FMAs; 1: bf16 dot products on bf16 activations (GEMMA2_COMPUTE_BF16);
       2: f32 on the exact bf16 split (what the model's default decode uses on wide matrices) */
    for (mode = 0; mode < 3; mode++) {
        gemma2__kernels kk = k;
        double best;
        kk.x3_min_cols = mode == 2 ? 0 : INT_MAX;
        best = bench_matmul(p, &kk, &a, buf, mode == 1, &kind);
        if ((mode == 1 && kind != GEMMA2__PACK_BF16) || (mode == 2 && kind != GEMMA2__PACK_X3)) continue; /* the set has no such path */
        printf("  kernel %-12s %d thr  decode matvec 256000x2304 bf16 (%s): %6.1f GB/s = %3.0f%% of read bandwidth\n", k.name, nt,
               mode == 1 ? "bf16 dot" : mode == 2 ? "f32, bf16x3" : "f32, FMA", (double)V * H * 2 / best / 1e9, 100.0 * (double)V * H * 2 / best / 1e9 / bw);
    }
    /* F32 weights (checkpoints kept as stored, GEMMA2_WEIGHTS_AUTO): the same bytes as floats, 128000 x
       2304 for decode (GB/s to compare with the bf16 line above) and the gate shape for 128 tokens */
    {
        float *wf = (float *)malloc((size_t)V / 2 * H * 4);
        if (wf) {
            double best;
            for (i = 0; i < (size_t)V / 2 * H; i++) wf[i] = gemma2__bf16_to_f32(w[i]);
            m.data = wf; m.format = GEMMA2__WF_F32; m.rows = V / 2; m.cols = H;
            a.T = 1; a.ldy = V;
            best = bench_matmul(p, &k, &a, buf, 0, &kind);
            printf("  kernel %-12s %d thr  decode matvec 128000x2304 f32 weights:   %6.1f GB/s = %3.0f%% of read bandwidth\n", k.name, nt,
                   (double)V / 2 * H * 4 / best / 1e9, 100.0 * (double)V / 2 * H * 4 / best / 1e9 / bw);
            m.rows = I; a.T = T; a.ldy = I;
            best = bench_matmul(p, &k, &a, buf, 0, &kind);
            printf("  kernel %-12s %d thr  prefill 9216x2304 f32 weights x %d tokens: %6.1f GFLOP/s = %3.0f%% of f32 FMA peak\n", k.name, nt, T,
                   2.0 * I * H * T / best / 1e9, 100.0 * 2.0 * I * H * T / best / 1e9 / peak32);
        }
        free(wf);
    }
    /* prefill: gate projection 9216 x 2304 for 128 tokens (the activations' packing, which the
       forward pass does once per matrix input, inside the timing) */
    m.data = w; m.format = GEMMA2__WF_BF16; m.rows = I; m.cols = H;
    a.ldy = I; a.T = T;
    for (mode = 0; mode < 2; mode++) {
        double best = bench_matmul(p, &k, &a, buf, mode, &kind), gf;
        if (mode == 1 && kind != GEMMA2__PACK_XT_BF16 && kind != GEMMA2__PACK_BF16) continue;
        gf = 2.0 * I * H * T / best / 1e9;
        printf("  kernel %-12s %d thr  prefill 9216x2304 x %d tokens (%s): %6.1f GFLOP/s = %3.0f%% of %s peak\n", k.name, nt, T,
               mode ? "bf16 dot" : "f32", gf, 100.0 * gf / (mode ? peakbf : peak32), mode ? "bf16-dot" : "f32 FMA");
    }
    /* Q8 and Q4 weights (GEMMA2_WEIGHTS_Q8, _Q4): the same values quantized; decode on the
       output projection's shape (GB/s of quantized bytes), prefill on the gate projection's
       (integer operations, as fractions of the vpdpbusd peak) */
    for (mode = GEMMA2__WF_Q8; mode <= GEMMA2__WF_Q4; mode++) {
        size_t rb = gemma2__row_bytes(mode, H);
        uint8_t *wq = (uint8_t *)malloc((size_t)V * rb);
        double best, gb, go;
        if (!wq) continue;
        gemma2__quantize(p, &k, wq, mode, (const uint8_t *)w, GEMMA2__ST_BF16, V, H);
        m.data = wq; m.format = mode; m.rows = V; m.cols = H;
        a.T = 1; a.ldy = V;
        best = bench_matmul(p, &k, &a, buf, 0, &kind);
        gb = (double)V * rb / best / 1e9;
        printf("  kernel %-12s %d thr  decode matvec 256000x2304 %s weights:     %6.1f GB/s = %3.0f%% of read bandwidth\n", k.name, nt,
               gemma2__wformat_of(mode)->name, gb, 100.0 * gb / bw);
        m.rows = I; a.T = T; a.ldy = I;
        best = bench_matmul(p, &k, &a, buf, 0, &kind);
        go = 2.0 * I * H * T / best / 1e9;
        printf("  kernel %-12s %d thr  prefill 9216x2304 %s weights x %d tokens: %6.1f GOP/s = %3.0f%% of int8-dot peak\n", k.name, nt,
               gemma2__wformat_of(mode)->name, T, go, peaki8 > 0 ? 100.0 * go / peaki8 : 0.0);
        free(wq);
    }
    gemma2__pool_free(p);
    free(w); free(x); free(y); free(buf);
}

/* ---------------------------------------------------------------- the model */

static int bench_preload; /* --preload: weights read into anonymous huge pages instead of mapped */
static int bench_max_ctx = 8192; /* --max-ctx: the longest context measured (the KV cache is sized for it) */
static int bench_kv = GEMMA2_KV_F32; /* --kv-bf16 */

static void bench_faults(long *minflt, long *majflt)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *minflt = ru.ru_minflt;
    *majflt = ru.ru_majflt;
}

static void bench_drop_cache(const char *dir)
{
    char path[1100];
    int fd;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fd = open(path, O_RDONLY);
    if (fd >= 0) { posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); close(fd); }
}

/* Streaming read bandwidth measured again on a fresh 512 MB buffer (GB/s), or 0. */
static double bench_read_again(int nt)
{
    size_t bytes = (size_t)1 << 29;
    uint64_t *buf = (uint64_t *)malloc(bytes);
    gemma2__pool *p = gemma2__pool_new(nt);
    double r = 0;
    if (buf && p) {
        memset(buf, 1, bytes);
        r = bench_read_bw(p, buf, bytes);
    }
    gemma2__pool_free(p);
    free(buf);
    return r;
}

/* One configuration. *bw and the peaks are the best this run has measured with nt threads;
   they are measured again after the configuration (other tenants of this machine make them
   drift by +-30% over minutes, and by 2x when they run on the other core), and the fractions
   use the best of all the measurements. */
static void bench_model(const char *dir, const bench_shape *s, int nt, int compute, int weights, double *bw, double *peak32, double *peakbf,
                        double *peaki8)
{
    double dts[4], rss, again, pk[3];
    gemma2_options opt;
    gemma2_model *m;
    gemma2_session *ss;
    char err[256];
    int32_t *ids;
    int P = 512, i, ci, ndec = 8;
    static const int ctxs[4] = {0, 1024, 4096, 8192};
    double t0, load, ttft, pre, flops_tok = 0, wbytes;
    /* Mapped weights: start from a cold page cache, as on first use. Pages that the generator
       wrote (or another program read) sit in the cache in whatever page size that left them;
       faulted in through gemma2's 2 MiB-aligned, huge-page-advised mapping they arrive as
       2 MiB pages, and streaming them is then as fast as from anonymous huge pages. */
    if (!bench_preload) bench_drop_cache(dir);
    memset(&opt, 0, sizeof opt);
    opt.n_threads = nt;
    opt.compute = compute;
    opt.weights = weights;
    opt.no_tokenizer = 1;
    opt.preload = bench_preload;
    opt.kv_cache = bench_kv;
    t0 = bench_now();
    m = gemma2_load(dir, &opt, err, sizeof err);
    load = bench_now() - t0;
    if (!m) { printf("load failed: %s\n", err); return; }
    ss = gemma2__session_new(m, bench_max_ctx + 64, GEMMA2__CHUNK);
    if (!ss) { printf("session failed\n"); gemma2_free(m); return; }
    /* a KV cache full of plausible values, as after a real 8k-token prompt (untouched pages
       would all read the one shared zero page and flatter long-context decode) */
    {
        size_t kvd = (size_t)s->nKV * s->hd, e, n;
        for (i = 0; i < s->L; i++) {
            n = (size_t)ss->slots[i] * kvd;
            for (e = 0; e < n; e++) {
                float kv = (float)((e * 2654435761u) % 2001) * 1e-3f - 1.0f;
                if (ss->kb) { ss->kb[i][e] = gemma2__f32_to_bf16(kv); ss->vb[i][e] = gemma2__f32_to_bf16(kv * 0.5f); }
                else { ss->k[i][e] = kv; ss->v[i][e] = kv * 0.5f; }
            }
        }
    }
    ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)P);
    for (i = 0; i < P; i++) ids[i] = 2 + (i * 7919) % (s->V - 2);
    wbytes = (double)gemma2_model_weight_bytes(m);
    /* flops per prompt token: every matrix once (2 per weight), attention (QK and PV) at its position */
    {
        double qd = (double)s->nH * s->hd, kvd = (double)s->nKV * s->hd;
        double per_layer = qd * s->H + 2 * kvd * s->H + s->H * qd + 3.0 * s->I * s->H;
        flops_tok = 2.0 * per_layer * s->L + 2.0 * 2.0 * qd * (P / 2.0) * s->L;
    }
    t0 = bench_now();
    gemma2_eval(ss, ids, P, NULL);
    ttft = bench_now() - t0;
    /* warm: the best of 3 (this machine shares its cores; the best run is the one least disturbed) */
    pre = 1e30;
    for (i = 0; i < 3; i++) {
        gemma2_session_rewind(ss, 0);
        t0 = bench_now();
        gemma2_eval(ss, ids, P, NULL);
        if (bench_now() - t0 < pre) pre = bench_now() - t0;
    }
    if (weights == GEMMA2_WEIGHTS_Q8 || weights == GEMMA2_WEIGHTS_Q4) {
        printf("%s  %d thread%s  weights %s  kernels %s%s\n", s->name, nt, nt > 1 ? "s" : " ", weights == GEMMA2_WEIGHTS_Q8 ? "q8" : "q4",
               gemma2_model_kernels(m), bench_kv == GEMMA2_KV_BF16 ? "  KV cache bf16" : "");
        printf("  load %.3f s (reading and quantizing)   time to first token (512-token prompt, cold) %.2f s\n", load, ttft);
    } else {
        printf("%s  %d thread%s  compute %s  kernels %s%s\n", s->name, nt, nt > 1 ? "s" : " ", compute ? "bf16" : "f32 ", gemma2_model_kernels(m),
               bench_kv == GEMMA2_KV_BF16 ? "  KV cache bf16" : "");
        printf("  load %.3f s   time to first token (512-token prompt, cold) %.2f s\n", load, ttft);
    }
    for (ci = 0; ci < 4; ci++) {
        double dt = 1e30;
        if (ctxs[ci] > bench_max_ctx) { dts[ci] = 0; continue; }
        int32_t tok = 1234;
        int rep;
        for (rep = 0; rep < 3; rep++) { /* best of 3 runs of ndec tokens */
            gemma2_session_rewind(ss, 0);
            ss->pos = ctxs[ci]; /* see the top of the file */
            ss->hi = ctxs[ci];
            gemma2_eval(ss, &tok, 1, NULL); /* warm-up */
            t0 = bench_now();
            for (i = 0; i < ndec; i++) gemma2_eval(ss, &tok, 1, NULL);
            if ((bench_now() - t0) / ndec < dt) dt = (bench_now() - t0) / ndec;
        }
        dts[ci] = dt;
    }
    rss = bench_rss_gb(); /* before the re-measurement's buffer */
    free(ids);
    gemma2_session_free(ss);
    gemma2_free(m);
    again = bench_read_again(nt);
    if (again > *bw) *bw = again;
    {
        gemma2__pool *p = gemma2__pool_new(nt);
        for (i = 0; i < 3; i++) pk[i] = p ? bench_peak(p, i) : 0;
        gemma2__pool_free(p);
        if (pk[0] > *peak32) *peak32 = pk[0];
        if (pk[1] > *peakbf) *peakbf = pk[1];
        if (pk[2] > *peaki8) *peaki8 = pk[2];
    }
    {
        double op = (flops_tok * P + 2.0 * s->V * s->H) / pre / 1e9;
        if (weights == GEMMA2_WEIGHTS_Q8 || weights == GEMMA2_WEIGHTS_Q4)
            printf("  prefill pp512 %.1f tok/s  %.0f GOP/s = %.0f%% of int8-dot peak, %.0f%% of bf16-dot peak\n", P / pre, op,
                   *peaki8 > 0 ? 100.0 * op / *peaki8 : 0.0, *peakbf > 0 ? 100.0 * op / *peakbf : 0.0);
        else
            printf("  prefill pp512 %.1f tok/s  %.0f GFLOP/s = %.0f%% of f32 FMA peak, %.0f%% of bf16-dot peak\n", P / pre, op, 100.0 * op / *peak32,
                   *peakbf > 0 ? 100.0 * op / *peakbf : 0.0);
    }
    for (ci = 0; ci < 4; ci++)
        if (dts[ci] > 0) printf("  decode @ctx %-5d %6.2f tok/s  %5.1f GB/s of weights = %3.0f%% of read bandwidth (ceiling %.2f tok/s)\n", ctxs[ci], 1.0 / dts[ci],
               wbytes / dts[ci] / 1e9, 100.0 * wbytes / dts[ci] / 1e9 / *bw, *bw * 1e9 / wbytes);
    printf("  measured again after this configuration: read bandwidth %.1f GB/s, f32 FMA %.0f GFLOP/s, bf16-dot %.0f GFLOP/s, int8-dot %.0f GOP/s;\n"
           "  best of the run: %.1f GB/s, %.0f GFLOP/s, %.0f GFLOP/s, %.0f GOP/s\n", again, pk[0], pk[1], pk[2], *bw, *peak32, *peakbf, *peaki8);
    printf("  peak RSS %.2f GB (weights %.2f GB)\n", rss, wbytes / 1e9);
    fflush(stdout);
}

/* ---------------------------------------------------------------- batched decoding */

/* Aggregate decode tokens/s of 1, 4 and 8 sessions decoding together through gemma2_batch_eval
   (each weight read once per step for all of them), beside one session alone through gemma2_eval,
   on one loaded model (bf16 weights as stored), in one run: the four are timed in turn, round
   after round, and each keeps its best round, so that drift of a shared machine hits all alike.
   The sessions first take a 16-token prompt each (different texts), then decode at positions
   16.. */
static void bench_batch(const char *dir, const bench_shape *s, int nt)
{
    enum { NS = 8, P = 16, NDEC = 8, ROUNDS = 3 };
    static const int sizes[3] = {1, 4, 8};
    gemma2_options opt;
    gemma2_model *m;
    gemma2_batch *b;
    gemma2_session *ss[NS], *solo;
    char err[256];
    int32_t prompt[NS][P], next[NS];
    const int32_t *ip[NS];
    int n[NS], i, k, r, c, ok = 1;
    double best[4] = {1e30, 1e30, 1e30, 1e30}, t0;
    memset(&opt, 0, sizeof opt);
    opt.n_threads = nt;
    opt.no_tokenizer = 1;
    opt.preload = bench_preload;
    m = gemma2_load(dir, &opt, err, sizeof err);
    if (!m) { printf("load failed: %s\n", err); return; }
    b = gemma2_batch_new(m, NS * P, nt, NULL);
    solo = gemma2_session_new(m, 512);
    for (k = 0; k < NS; k++) {
        ss[k] = gemma2_session_new(m, 512);
        ok = ok && ss[k];
        for (i = 0; i < P; i++) prompt[k][i] = 2 + (int32_t)(((k + 1) * 7919 + i * 104729) % (s->V - 2));
        ip[k] = prompt[k];
        n[k] = P;
    }
    if (!b || !solo || !ok) { printf("batch setup failed\n"); goto done; }
    if (gemma2_eval(solo, prompt[0], P, NULL) != 0 || gemma2_batch_eval(b, ss, ip, n, NS, NULL, NULL) != 0) { printf("batch prompt failed\n"); goto done; }
    for (k = 0; k < NS; k++) { next[k] = 1234 + k; ip[k] = &next[k]; n[k] = 1; }
    for (r = 0; r < ROUNDS; r++) {
        /* each run decodes NDEC tokens at the same positions: rewind the sessions to the prompt */
        gemma2_session_rewind(solo, P);
        gemma2_eval(solo, next, 1, NULL); /* warm-up */
        t0 = bench_now();
        for (i = 0; i < NDEC; i++) gemma2_eval(solo, next, 1, NULL);
        if (bench_now() - t0 < best[0]) best[0] = bench_now() - t0;
        gemma2_session_rewind(solo, P);
        for (c = 0; c < 3; c++) {
            for (k = 0; k < sizes[c]; k++) gemma2_session_rewind(ss[k], P);
            gemma2_batch_eval(b, ss, ip, n, sizes[c], NULL, NULL); /* warm-up */
            t0 = bench_now();
            for (i = 0; i < NDEC; i++) gemma2_batch_eval(b, ss, ip, n, sizes[c], NULL, NULL);
            if (bench_now() - t0 < best[c + 1]) best[c + 1] = bench_now() - t0;
            for (k = 0; k < sizes[c]; k++) gemma2_session_rewind(ss[k], P);
        }
    }
    printf("%s  %d thread%s  batched decode (weights %s, kernels %s; best of %d rounds of %d steps, timed in turn)\n", s->name, nt, nt > 1 ? "s" : " ",
           "bf16", gemma2_model_kernels(m), ROUNDS, NDEC);
    printf("  1 session, gemma2_eval:        %6.2f tok/s\n", NDEC / best[0]);
    for (c = 0; c < 3; c++)
        printf("  %d session%s, gemma2_batch_eval: %6.2f tok/s in all = %.2fx the single session (target: %s)\n", sizes[c], sizes[c] > 1 ? "s" : " ",
               sizes[c] * NDEC / best[c + 1], sizes[c] * best[0] / best[c + 1], c == 0 ? "-" : c == 1 ? ">= 3x" : ">= 5x");
    fflush(stdout);
done:
    for (k = 0; k < NS; k++) gemma2_session_free(ss[k]);
    gemma2_session_free(solo);
    gemma2_batch_free(b);
    gemma2_free(m);
}

/* ---------------------------------------------------------------- default path against preload */

/* What a user gets without options (mapped weights) beside opt.preload = 1, on one model, one
   thread count and one compute mode. Each path is loaded from a cold page cache and its first
   512-token prompt timed (time to first token = load + that prompt, page faults included); then
   both stay loaded (two copies of the weights) and are measured in alternation, prefill and
   decode, so that a change in the machine's speed (other tenants) hits both alike: each figure
   is the best of its 3 runs. Page faults are counted per phase (getrusage). */
static void bench_paths(const char *dir, const bench_shape *s, int nt, int compute)
{
    enum { P = 512, NDEC = 16, REPS = 3 };
    gemma2_model *m[2] = {NULL, NULL};
    gemma2_session *ss[2] = {NULL, NULL};
    double load[2], first[2], pre[2] = {1e30, 1e30}, dec[2] = {1e30, 1e30}, t0;
    long f0, j0, f1, j1, ffirst[2], jfirst[2], fsteady[2] = {0, 0}, jsteady[2] = {0, 0};
    int32_t ids[P];
    char err[256];
    int k, r, i;
    for (i = 0; i < P; i++) ids[i] = 2 + (i * 7919) % (s->V - 2);
    for (i = 0; i < 2; i++) {
        gemma2_options opt;
        k = 1 - i; /* preload first: its read leaves the page cache unmapped, so it can be dropped again */
        memset(&opt, 0, sizeof opt);
        opt.n_threads = nt;
        opt.compute = compute;
        opt.no_tokenizer = 1;
        opt.preload = k;
        bench_drop_cache(dir);
        bench_faults(&f0, &j0);
        t0 = bench_now();
        m[k] = gemma2_load(dir, &opt, err, sizeof err);
        load[k] = bench_now() - t0;
        if (!m[k]) { printf("load failed: %s\n", err); goto done; }
        ss[k] = gemma2_session_new(m[k], P + 64);
        if (!ss[k]) { printf("session failed\n"); goto done; }
        t0 = bench_now();
        gemma2_eval(ss[k], ids, P, NULL);
        first[k] = bench_now() - t0;
        bench_faults(&f1, &j1);
        ffirst[k] = f1 - f0;
        jfirst[k] = j1 - j0;
    }
    for (r = 0; r < REPS; r++)
        for (i = 0; i < 2; i++) {
            int32_t tok = 1234;
            double t;
            k = (r & 1) ? 1 - i : i; /* ABBAAB: neither path always runs first */
            bench_faults(&f0, &j0);
            gemma2_session_rewind(ss[k], 0);
            t0 = bench_now();
            gemma2_eval(ss[k], ids, P, NULL);
            t = bench_now() - t0;
            if (t < pre[k]) pre[k] = t;
            gemma2_session_rewind(ss[k], 1);
            t0 = bench_now();
            for (int d = 0; d < NDEC; d++) gemma2_eval(ss[k], &tok, 1, NULL);
            t = (bench_now() - t0) / NDEC;
            if (t < dec[k]) dec[k] = t;
            bench_faults(&f1, &j1);
            fsteady[k] += f1 - f0;
            jsteady[k] += j1 - j0;
        }
    printf("%s  %d thread%s  compute %s: the default (mapped) path beside preload, measured in alternation\n", s->name, nt, nt > 1 ? "s" : " ",
           compute ? "bf16" : "f32 ");
    for (k = 0; k < 2; k++)
        printf("  %-8s load %6.3f s + first prompt %6.2f s = time to first token %6.2f s  (page faults %ld minor, %ld major)\n"
               "           prefill pp512 %6.1f tok/s  decode %5.2f tok/s  (page faults in %d runs: %ld minor, %ld major)\n",
               k ? "preload" : "default", load[k], first[k], load[k] + first[k], ffirst[k], jfirst[k], P / pre[k], 1.0 / dec[k], REPS, fsteady[k],
               jsteady[k]);
    printf("  default / preload: prefill %.2f, decode %.2f; time to first token %.2f s against %.2f s for mapped load + preloaded prompt\n",
           pre[1] / pre[0], dec[1] / dec[0], load[0] + first[0], load[0] + first[1]);
    fflush(stdout);
done:
    for (k = 0; k < 2; k++) { gemma2_session_free(ss[k]); gemma2_free(m[k]); }
}

/* Saved sessions: a 2k-token prompt evaluated, saved to a file, and restored (gemma2_session_load,
   the file warm in the page cache, as when a program reuses its saved prompt), against evaluating the
   prompt again. The restored session must give the original's logits exactly. */
static void bench_saved(const char *data, const char *dir, const bench_shape *s, int nt)
{
    enum { P = 2048 };
    gemma2_options opt;
    gemma2_model *m;
    gemma2_session *ss, *r;
    char err[256], path[1100];
    int32_t *ids;
    double t0, pre, save, restore = 1e30, restore_buf = 1e30;
    size_t bytes = 0;
    unsigned char *buf;
    int i, same = 0;
    memset(&opt, 0, sizeof opt);
    opt.n_threads = nt;
    opt.no_tokenizer = 1;
    opt.preload = bench_preload;
    opt.kv_cache = bench_kv;
    m = gemma2_load(dir, &opt, err, sizeof err);
    if (!m) { printf("load failed: %s\n", err); return; }
    ss = gemma2_session_new(m, P + 64);
    ids = (int32_t *)malloc(sizeof(int32_t) * P);
    if (!ss || !ids) { printf("session failed\n"); gemma2_free(m); free(ids); return; }
    for (i = 0; i < P; i++) ids[i] = 2 + (i * 7919) % (s->V - 2);
    gemma2_eval(ss, ids, 16, NULL); /* the weights paged in before the timing */
    gemma2_session_rewind(ss, 0);
    t0 = bench_now();
    gemma2_eval(ss, ids, P, NULL);
    pre = bench_now() - t0;
    snprintf(path, sizeof path, "%s/saved-%d.session", data, P);
    t0 = bench_now();
    if (gemma2_session_save(ss, path, err, sizeof err) != 0) { printf("save failed: %s\n", err); goto done; }
    save = bench_now() - t0;
    /* the best of 3 each (shared cores) */
    for (i = 0; i < 3; i++) {
        t0 = bench_now();
        r = gemma2_session_load(m, path, 0, NULL, err, sizeof err);
        if (bench_now() - t0 < restore) restore = bench_now() - t0;
        if (!r) { printf("restore failed: %s\n", err); goto done; }
        same = gemma2_logits(r) && !memcmp(gemma2_logits(r), gemma2_logits(ss), sizeof(float) * (size_t)s->V);
        gemma2_session_free(r);
    }
    gemma2_session_save_buffer(ss, NULL, 0, &bytes);
    buf = (unsigned char *)malloc(bytes);
    if (buf && gemma2_session_save_buffer(ss, buf, bytes, NULL) == 0)
        for (i = 0; i < 3; i++) {
            t0 = bench_now();
            r = gemma2_session_load_buffer(m, buf, bytes, 0, NULL, err, sizeof err);
            if (bench_now() - t0 < restore_buf) restore_buf = bench_now() - t0;
            gemma2_session_free(r);
        }
    free(buf);
    printf("%s  %d thread%s  saved session of %d tokens (KV %s, %.0f MB): prompt evaluated in %.2f s; saved in %.2f s; restored in %.3f s "
           "from the file (%.3f s from a buffer) = %.1f%% of evaluating the prompt (target < 10%%); logits after restore %s\n",
           s->name, nt, nt > 1 ? "s" : " ", P, bench_kv == GEMMA2_KV_BF16 ? "bf16" : "f32", bytes / 1e6, pre, save, restore, restore_buf,
           100.0 * restore / pre, same ? "bit-identical" : "DIFFER");
    remove(path);
done:
    free(ids);
    gemma2_session_free(ss);
    gemma2_free(m);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int want9 = 0, only_nt = 0, kernels_only = 0, quant_only = 0, big = 0, paths = 1, write_only = 0, saved_only = 0, batch = 1, i, nt;
    const char *data = "bench-data";
    char d2[1024], d9[1024];
    size_t bytes = (size_t)1 << 29; /* 512 MB: 16x the L3 */
    uint64_t *buf;
    double bw[3] = {0, 0, 0}, pk32[3] = {0, 0, 0}, pkbf[3] = {0, 0, 0}, pki8[3] = {0, 0, 0};
    /* the configurations measured per model and thread count: compute, weights */
    static const int confs[4][2] = {{GEMMA2_COMPUTE_F32, GEMMA2_WEIGHTS_AUTO}, {GEMMA2_COMPUTE_BF16, GEMMA2_WEIGHTS_AUTO},
                                    {GEMMA2_COMPUTE_F32, GEMMA2_WEIGHTS_Q8}, {GEMMA2_COMPUTE_F32, GEMMA2_WEIGHTS_Q4}};
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--9b")) want9 = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) only_nt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--kernels-only")) kernels_only = 1;
        else if (!strcmp(argv[i], "--data") && i + 1 < argc) data = argv[++i];
        else if (!strcmp(argv[i], "--preload")) bench_preload = 1;
        else if (!strcmp(argv[i], "--max-ctx") && i + 1 < argc) bench_max_ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only-9b")) want9 = 2;
        else if (!strcmp(argv[i], "--kv-bf16")) bench_kv = GEMMA2_KV_BF16;
        else if (!strcmp(argv[i], "--quantized")) quant_only = 1;
        else if (!strcmp(argv[i], "--big-q4")) big = 1;
        else if (!strcmp(argv[i], "--no-paths")) paths = 0;
        else if (!strcmp(argv[i], "--write-only")) write_only = 1;
        else if (!strcmp(argv[i], "--only-paths")) paths = 2;
        else if (!strcmp(argv[i], "--only-saved")) saved_only = 1;
        else if (!strcmp(argv[i], "--only-batch")) paths = 3;
        else if (!strcmp(argv[i], "--no-batch")) batch = 0;
        else {
            fprintf(stderr, "usage: %s [--9b | --only-9b] [--threads N] [--kernels-only] [--preload] [--max-ctx N] [--kv-bf16] [--quantized] [--big-q4] [--no-paths | --only-paths | --only-saved] [--no-batch | --only-batch] [--write-only] [--data DIR]\n", argv[0]);
            return 2;
        }
    }
    if (getenv("BENCH_9B")) want9 = 1;
    snprintf(d2, sizeof d2, "%s/%s", data, bench_2b.name);
    snprintf(d9, sizeof d9, "%s/%s", data, bench_9b.name);
    if (write_only) { /* the checkpoints only, ready for ./gemma2 -m DIR */
        if (want9 != 2 && bench_ensure_model(d2, &bench_2b) != 0) { fprintf(stderr, "cannot write %s\n", d2); return 1; }
        if (want9 && bench_ensure_model(d9, &bench_9b) != 0) { fprintf(stderr, "cannot write %s\n", d9); return 1; }
        if (want9 != 2) printf("ready: ./gemma2 -m %s -p \"...\"\n", d2);
        if (want9) printf("ready: ./gemma2 -m %s -p \"...\"\n", d9);
        return 0;
    }
    {
        gemma2__kernels k;
        gemma2__kernels_select(GEMMA2_KERNELS_AUTO, &k);
        printf("gemma2.h %s benchmark, %d CPUs, kernels %s\n", GEMMA2_VERSION_STRING, gemma2__cpu_count(), k.name);
    }
    buf = (uint64_t *)malloc(bytes);
    if (!buf) return 1;
    memset(buf, 1, bytes);
    for (nt = 1; nt <= 2; nt++) {
        gemma2__pool *p;
        if (only_nt && nt != only_nt) continue;
        p = gemma2__pool_new(nt);
        bw[nt] = bench_read_bw(p, buf, bytes);
        pk32[nt] = bench_peak(p, 0);
        pkbf[nt] = bench_peak(p, 1);
        pki8[nt] = bench_peak(p, 2);
        printf("machine, %d thread%s: streaming read %.1f GB/s, f32 FMA peak %.0f GFLOP/s, bf16-dot peak %.0f GFLOP/s, int8-dot peak %.0f GOP/s\n", nt,
               nt > 1 ? "s" : "", bw[nt], pk32[nt], pkbf[nt], pki8[nt]);
        gemma2__pool_free(p);
    }
    free(buf);
    for (nt = 1; nt <= 2; nt++) if (!only_nt || nt == only_nt) bench_kernels(nt, bw[nt], pk32[nt], pkbf[nt], pki8[nt]);
    fflush(stdout);
    if (kernels_only) return 0;
    if (big) {
        /* 9B: its bf16 checkpoint quantized by streaming; 27B: written in Q4 directly */
        char d9q[1024], d27[1024], path[1100];
        struct stat st;
        snprintf(d9q, sizeof d9q, "%s/%s", data, bench_9b_q4.name);
        snprintf(d27, sizeof d27, "%s/%s", data, bench_27b_q4.name);
        snprintf(path, sizeof path, "%s/model.safetensors", d9q);
        if (bench_ensure_model(d9, &bench_9b) != 0) { fprintf(stderr, "cannot write %s\n", d9); return 1; }
        if (stat(path, &st) != 0 && bench_save_q4(d9, d9q, 2) != 0) { fprintf(stderr, "cannot save %s\n", d9q); return 1; }
        if (bench_ensure_q4(d27, &bench_27b_q4) != 0) { fprintf(stderr, "cannot write %s\n", d27); return 1; }
        for (nt = 2; nt >= 1; nt--) {
            if (only_nt && nt != only_nt) continue;
            bench_model(d9q, &bench_9b_q4, nt, 0, GEMMA2_WEIGHTS_Q4, &bw[nt], &pk32[nt], &pkbf[nt], &pki8[nt]);
            bench_model(d27, &bench_27b_q4, nt, 0, GEMMA2_WEIGHTS_Q4, &bw[nt], &pk32[nt], &pkbf[nt], &pki8[nt]);
        }
        return 0;
    }
    if (want9 != 2 && bench_ensure_model(d2, &bench_2b) != 0) { fprintf(stderr, "cannot write %s\n", d2); return 1; }
    /* saved sessions: 2B, 2 threads */
    if (want9 != 2 && !quant_only && paths != 3 && (!only_nt || only_nt == 2)) bench_saved(data, d2, &bench_2b, 2);
    if (saved_only) return 0;
    /* batched decoding: 2B, 2 threads (the targets' configuration) */
    if (want9 != 2 && !quant_only && (batch || paths == 3) && (!only_nt || only_nt == 2)) bench_batch(d2, &bench_2b, 2);
    if (paths == 3) return 0;
    /* the default path beside preload: 2B, 2 and 1 threads, f32 and bf16 compute */
    for (nt = 2; nt >= 1 && want9 != 2 && paths && !quant_only; nt--)
        if (!only_nt || nt == only_nt) { bench_paths(d2, &bench_2b, nt, GEMMA2_COMPUTE_F32); bench_paths(d2, &bench_2b, nt, GEMMA2_COMPUTE_BF16); }
    if (paths == 2) return 0;
    for (nt = 2; nt >= 1 && want9 != 2; nt--) {
        int c;
        if (only_nt && nt != only_nt) continue;
        for (c = quant_only ? 2 : 0; c < 4; c++) bench_model(d2, &bench_2b, nt, confs[c][0], confs[c][1], &bw[nt], &pk32[nt], &pkbf[nt], &pki8[nt]);
    }
    if (want9) {
        if (bench_ensure_model(d9, &bench_9b) != 0) { fprintf(stderr, "cannot write %s\n", d9); return 1; }
        for (nt = 2; nt >= 1; nt--) {
            int c;
            if (only_nt && nt != only_nt) continue;
            for (c = quant_only ? 2 : 0; c < 4; c++) bench_model(d9, &bench_9b, nt, confs[c][0], confs[c][1], &bw[nt], &pk32[nt], &pkbf[nt], &pki8[nt]);
        }
    }
    return 0;
}
