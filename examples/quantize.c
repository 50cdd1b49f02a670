/* quantize: quantize a Gemma 2 checkpoint folder once and save it, so that loading it later
   maps the quantized weights in place instead of quantizing them every time.

     ./examples/quantize IN_DIR OUT_DIR --q4|--q8 [-t THREADS]

   OUT_DIR gets model.safetensors (every matrix in Q8, or the projections in Q4 and the
   embedding in Q8) and copies of the config and tokenizer files; ./gemma2 -m OUT_DIR then
   runs it with no flag. Example (the quantization fixture in tests/data):
     ./examples/quantize tests/data/models/quant-a /tmp/quant-a-q4 --q4
*/
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if !defined(_WIN32)
#include <sys/time.h>
#endif

static double now(void)
{
#if defined(_WIN32)
    return (double)clock() / CLOCKS_PER_SEC;
#else
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
#endif
}

/* Called after every tensor written; prints only when the percentage changes. */
static int on_progress(void *user, float fraction)
{
    int *last = (int *)user, pct = (int)(fraction * 100.0f);
    if (pct != *last) {
        fprintf(stderr, "\rquantizing: %3d%%", pct);
        fflush(stderr);
        *last = pct;
    }
    return 0;
}

/* Bytes of a file, or -1. */
static long long file_size(const char *dir, const char *name)
{
    char path[4096];
    FILE *f;
    long long n;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!(f = fopen(path, "rb"))) return -1;
    n = fseek(f, 0, SEEK_END) == 0 ? (long long)ftell(f) : -1;
    fclose(f);
    return n;
}

int main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    int weights = 0, i, rc, last_pct = -1;
    gemma2_options opt;
    char err[512];
    double t0;
    long long size;
    memset(&opt, 0, sizeof opt);
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--q4")) weights = GEMMA2_WEIGHTS_Q4;
        else if (!strcmp(argv[i], "--q8")) weights = GEMMA2_WEIGHTS_Q8;
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 4096) { fprintf(stderr, "quantize: bad thread count '%s'\n", argv[i]); return 2; }
            opt.n_threads = (int)v;
        } else if (argv[i][0] == '-') { fprintf(stderr, "quantize: unknown argument '%s'\n", argv[i]); return 2; }
        else if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else { fprintf(stderr, "quantize: one input and one output folder, please ('%s' is a third)\n", argv[i]); return 2; }
    }
    if (!in || !out || !weights) {
        fprintf(stderr, "usage: quantize IN_DIR OUT_DIR --q4|--q8 [-t THREADS]\n"
                        "  --q8  every matrix in 8 bits (blocks of 32 with an fp16 scale: 8.5 bits per weight)\n"
                        "  --q4  the projections in 4 bits (blocks of 32 with an fp16 scale and minimum: 5 bits per\n"
                        "        weight), the embedding, which is also the output projection, in 8 bits\n"
                        "  -t N  threads (default: all cores)\n");
        return 2;
    }
    opt.progress = on_progress;
    opt.progress_user = &last_pct;
    t0 = now();
    rc = gemma2_save_quantized(in, out, weights, &opt, err, sizeof err);
    fprintf(stderr, "\n");
    if (rc != 0) { fprintf(stderr, "quantize: %s\n", err); return 1; }
    size = file_size(out, "model.safetensors");
    printf("wrote %s/model.safetensors (%s): %.2f %s (%lld bytes) in %.2f s\n", out,
           weights == GEMMA2_WEIGHTS_Q4 ? "q4, embedding q8" : "q8", (double)size / (size >= 1000000000 ? 1e9 : 1e6),
           size >= 1000000000 ? "GB" : "MB", size, now() - t0);
    return 0;
}
