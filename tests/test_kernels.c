/* Kernels and thread pool: every kernel set this machine runs is compared against the scalar
   reference on random data with awkward sizes; the pool is checked for exactly-once execution. */
#include "test.h"

static uint64_t kern_rng = 88172645463325252ull;

static float kern_rand(void) /* uniform in [-1, 1) */
{
    kern_rng ^= kern_rng << 13;
    kern_rng ^= kern_rng >> 7;
    kern_rng ^= kern_rng << 17;
    return (float)((double)(kern_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static const int kern_sets[] = {GEMMA2_KERNELS_SCALAR, GEMMA2_KERNELS_AVX2, GEMMA2_KERNELS_AVX512, GEMMA2_KERNELS_NEON,
                                GEMMA2_KERNELS_AVX512_BF16, GEMMA2_KERNELS_NEON_BF16};
#define KERN_N_SETS ((int)(sizeof kern_sets / sizeof kern_sets[0]))

/* Fills a's activation copies as the forward pass would: xb (bf16 copy) when asked for, and
   for T >= 2 with a set that has prep_xt, the transposed xt (bf16 pairs if bf16 activations
   were asked for and the set uses them); for T == 1 in float32 with a set that has
   to_bf16x3, the three-part split x3. Returns the buffer to free (or NULL). */
static void *kern_prepare(const gemma2__kernels *k, gemma2__matmul_args *a, int use_xb, int use_xt)
{
    void *xt = NULL;
    if (use_xt && k->to_bf16x3 && a->T == 1 && a->w->dtype == GEMMA2__DT_BF16 && !(use_xb && k->wants_bf16_x)) {
        uint16_t *x3 = (uint16_t *)malloc(gemma2__x3_size(a->w->cols) * sizeof(uint16_t));
        k->to_bf16x3(x3, a->x, a->w->cols);
        a->x3 = x3;
        a->xb = NULL;
        return x3;
    }
    if (use_xt && k->prep_xt && a->T >= 2) {
        int kind = use_xb && k->wants_bf16_x && a->w->dtype == GEMMA2__DT_BF16 ? GEMMA2__XT_BF16 : GEMMA2__XT_F32;
        xt = malloc(gemma2__xt_size(a->T, a->w->cols));
        /* in two calls, the second starting at a row that is not a multiple of 16 */
        k->prep_xt(xt, a->x, a->T, a->w->cols, kind, 0, gemma2__xt_rows(a->w->cols, kind) / 3);
        k->prep_xt(xt, a->x, a->T, a->w->cols, kind, gemma2__xt_rows(a->w->cols, kind) / 3, gemma2__xt_rows(a->w->cols, kind));
        a->xt = xt;
        a->xt_kind = kind;
        a->xb = NULL;
    }
    return xt;
}

/* One matmul case against the reference: rows [r0, r1) of a rows x K matrix, T tokens. */
static void kern_check_matmul(const gemma2__kernels *k, int dtype, int rows, int K, int T, int r0, int r1, int use_xb, int use_xt)
{
    size_t nw = (size_t)rows * K, i;
    int ldy = rows + 3, t, r, kk;
    float *wf = (float *)malloc(nw * sizeof(float));
    uint16_t *wb = (uint16_t *)malloc(nw * sizeof(uint16_t));
    float *x = (float *)malloc((size_t)T * K * sizeof(float));
    float *xr = (float *)malloc((size_t)T * K * sizeof(float));
    uint16_t *xb = (uint16_t *)malloc((size_t)T * K * sizeof(uint16_t));
    float *y = (float *)malloc((size_t)T * ldy * sizeof(float));
    float *yr = (float *)malloc((size_t)T * ldy * sizeof(float));
    gemma2__mat w;
    gemma2__matmul_args a, ar;
    void *xt;
    int bad = 0;
    int dp = use_xb && k->wants_bf16_x && dtype == GEMMA2__DT_BF16; /* the kernel will use bf16 activations */
    for (i = 0; i < nw; i++) { wb[i] = gemma2__f32_to_bf16(kern_rand()); wf[i] = dtype == GEMMA2__DT_BF16 ? gemma2__bf16_to_f32(wb[i]) : kern_rand(); }
    for (i = 0; i < (size_t)T * K; i++) {
        x[i] = kern_rand() * 2.0f;
        xb[i] = gemma2__f32_to_bf16(x[i]);
        xr[i] = dp ? gemma2__bf16_to_f32(xb[i]) : x[i];
    }
    for (i = 0; i < (size_t)T * ldy; i++) y[i] = yr[i] = 12345.0f;
    w.data = dtype == GEMMA2__DT_BF16 ? (const void *)wb : (const void *)wf;
    w.dtype = dtype; w.rows = rows; w.cols = K;
    memset(&a, 0, sizeof a);
    a.y = y; a.ldy = ldy; a.x = x; a.xb = use_xb ? xb : NULL; a.T = T; a.w = &w;
    ar = a; ar.y = yr; ar.x = xr; ar.xb = NULL;
    xt = kern_prepare(k, &a, use_xb, use_xt);
    k->matmul(&a, r0, r1);
    gemma2__matmul_scalar(&ar, r0, r1);
    for (t = 0; t < T && !bad; t++)
        for (r = 0; r < ldy && !bad; r++) {
            float got = y[(size_t)t * ldy + r], want = yr[(size_t)t * ldy + r], mag = 0;
            if (r < r0 || r >= r1) {
                if (got != 12345.0f) { CHECK(0, "%s: row %d outside [%d,%d) written", k->name, r, r0, r1); bad = 1; }
                continue;
            }
            for (kk = 0; kk < K; kk++) mag += fabsf(wf[(size_t)r * K + kk] * xr[(size_t)t * K + kk]);
            if (!(fabsf(got - want) <= (dp ? 1e-4f : 1e-5f) * mag + 1e-6f)) {
                CHECK(0, "%s dtype %d rows %d K %d T %d [%d,%d) xb %d xt %d: y[%d][%d] = %g, want %g", k->name, dtype, rows, K, T, r0,
                      r1, use_xb, xt != NULL, t, r, got, want);
                bad = 1;
            }
        }
    free(wf); free(wb); free(x); free(xr); free(xb); free(y); free(yr); free(xt);
}

static void kern_test_matmul(void)
{
    static const int Ks[] = {1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 257};
    int s, dt, ki, T, xbm, xtm, n_sets = 0;
    for (s = 0; s < KERN_N_SETS; s++) {
        const gemma2__kernels *k = gemma2__kernels_select(kern_sets[s]);
        if (!k) continue;
        n_sets++;
        for (dt = 0; dt < GEMMA2__DT_COUNT; dt++)
            for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++)
                for (T = 1; T <= 9; T++)
                    for (xbm = 0; xbm < 2; xbm++)
                        for (xtm = 0; xtm < (k->prep_xt ? 2 : 1); xtm++) {
                            kern_check_matmul(k, dt, 23, Ks[ki], T, 0, 23, xbm, xtm);
                            kern_check_matmul(k, dt, 23, Ks[ki], T, 3, 19, xbm, xtm);
                            kern_check_matmul(k, dt, 23, Ks[ki], T, 5, 6, xbm, xtm);
                        }
        for (xtm = 0; xtm < (k->prep_xt ? 2 : 1); xtm++) {
            /* bigger: several row blocks and tiles (16 / 12 / 4 / 1 rows), token tiles (6, 16, 32) plus tails */
            kern_check_matmul(k, GEMMA2__DT_BF16, 70, 300, 14, 1, 69, 0, xtm);
            kern_check_matmul(k, GEMMA2__DT_BF16, 70, 300, 13, 0, 70, 1, xtm);
            kern_check_matmul(k, GEMMA2__DT_BF16, 61, 301, 33, 0, 61, 0, xtm);
            kern_check_matmul(k, GEMMA2__DT_BF16, 61, 301, 47, 2, 59, 1, xtm);
            kern_check_matmul(k, GEMMA2__DT_F32, 37, 129, 20, 2, 35, 0, xtm);
            /* several column blocks (512) and token groups (48), with tails in both */
            kern_check_matmul(k, GEMMA2__DT_BF16, 21, 1100, 53, 0, 21, 0, xtm);
            kern_check_matmul(k, GEMMA2__DT_BF16, 21, 1100, 53, 3, 20, 1, xtm);
            kern_check_matmul(k, GEMMA2__DT_F32, 18, 1031, 50, 1, 18, 0, xtm);
            /* more tokens than one prefill block (128) */
            kern_check_matmul(k, GEMMA2__DT_BF16, 30, 71, 150, 0, 30, 0, xtm);
            kern_check_matmul(k, GEMMA2__DT_BF16, 30, 71, 150, 1, 29, 1, xtm);
        }
    }
    CHECK(n_sets >= 1, "no kernel set at all");
    CHECK(gemma2__kernels_select(GEMMA2_KERNELS_AUTO) != NULL, "AUTO must always find a kernel set");
    { /* a forced set is exactly that set; AUTO is the first the CPU has in order of preference */
        static const int best_first[] = {GEMMA2_KERNELS_AVX512_BF16, GEMMA2_KERNELS_AVX512, GEMMA2_KERNELS_AVX2,
                                         GEMMA2_KERNELS_NEON_BF16, GEMMA2_KERNELS_NEON, GEMMA2_KERNELS_SCALAR};
        const gemma2__kernels *best = NULL;
        int b;
        for (b = 0; b < (int)(sizeof best_first / sizeof best_first[0]); b++) {
            const gemma2__kernels *k = gemma2__kernels_select(best_first[b]);
            if (!k) continue;
            CHECK(k->id == best_first[b], "asked for set %d, got %s (%d)", best_first[b], k->name, k->id);
            if (!best) best = k;
        }
        CHECK(gemma2__kernels_select(GEMMA2_KERNELS_AUTO) == best, "AUTO picked %s, not the best set", gemma2__kernels_select(GEMMA2_KERNELS_AUTO)->name);
    }
    CHECK(gemma2__kernels_select(GEMMA2_KERNELS_SCALAR) == &gemma2__kernels_scalar, "SCALAR is always there");
    CHECK(gemma2__kernels_select(99) == NULL, "unknown kernel set");
}

/* A token's outputs must not depend on which other tokens share the call, or results would
   change with the prompt's chunking. Bit-exact for every set and shape, with one documented
   exception: in sets with transposed-activation prefill kernels (prep_xt), a token alone goes
   through the matrix-vector kernel, which sums in another order than the prefill tile, so
   there it is compared with a tolerance, and bit-exactness is asked of every call of >= 2 tokens. */
static void kern_test_matmul_consistent(void)
{
    static const int Ks[] = {5, 16, 33, 100, 2304 + 7};
    int s, dt, ki, xbm, T = 7, rows = 37, t, r;
    for (s = 0; s < KERN_N_SETS; s++) {
        const gemma2__kernels *k = gemma2__kernels_select(kern_sets[s]);
        if (!k) continue;
        for (dt = 0; dt < GEMMA2__DT_COUNT; dt++)
            for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++)
                for (xbm = 0; xbm < 2; xbm++) {
                    int K = Ks[ki], bad = 0, split = k->prep_xt != NULL;
                    size_t i, nw = (size_t)rows * K;
                    float *wf = (float *)malloc(nw * sizeof(float)), *x = (float *)malloc((size_t)T * K * sizeof(float));
                    uint16_t *wb = (uint16_t *)malloc(nw * sizeof(uint16_t)), *xb = (uint16_t *)malloc((size_t)T * K * sizeof(uint16_t));
                    float *yall = (float *)malloc((size_t)T * rows * sizeof(float)), *y1 = (float *)malloc((size_t)2 * rows * sizeof(float));
                    float *x2 = (float *)malloc((size_t)2 * K * sizeof(float));
                    uint16_t *xb2 = (uint16_t *)malloc((size_t)2 * K * sizeof(uint16_t));
                    void *xt;
                    gemma2__mat w;
                    gemma2__matmul_args a;
                    for (i = 0; i < nw; i++) { wf[i] = kern_rand(); wb[i] = gemma2__f32_to_bf16(wf[i]); }
                    for (i = 0; i < (size_t)T * K; i++) { x[i] = kern_rand(); xb[i] = gemma2__f32_to_bf16(x[i]); }
                    w.data = dt == GEMMA2__DT_BF16 ? (const void *)wb : (const void *)wf;
                    w.dtype = dt; w.rows = rows; w.cols = K;
                    memset(&a, 0, sizeof a);
                    a.y = yall; a.ldy = rows; a.x = x; a.xb = xbm ? xb : NULL; a.T = T; a.w = &w;
                    xt = kern_prepare(k, &a, xbm, 1);
                    k->matmul(&a, 0, rows);
                    free(xt);
                    for (t = 0; t < T && !bad; t++) {
                        /* alone */
                        memset(&a, 0, sizeof a);
                        a.y = y1; a.ldy = rows; a.x = x + (size_t)t * K; a.xb = xbm ? xb + (size_t)t * K : NULL; a.T = 1; a.w = &w;
                        k->matmul(&a, 0, rows);
                        for (r = 0; r < rows && !bad; r++) {
                            float got = y1[r], want = yall[(size_t)t * rows + r];
                            int same = split ? fabsf(got - want) <= (xbm && k->wants_bf16_x ? 1e-4f : 1e-5f) * sqrtf((float)K) * 2.0f
                                             : memcmp(&got, &want, sizeof(float)) == 0;
                            if (!same) {
                                CHECK(0, "%s dtype %d K %d xb %d: token %d row %d alone %.9g, in a batch %.9g", k->name, dt, K, xbm, t, r, got, want);
                                bad = 1;
                            }
                        }
                        /* with another partner: token t first, then token (t + 3) % T */
                        memcpy(x2, x + (size_t)t * K, (size_t)K * sizeof(float));
                        memcpy(x2 + K, x + (size_t)((t + 3) % T) * K, (size_t)K * sizeof(float));
                        memcpy(xb2, xb + (size_t)t * K, (size_t)K * sizeof(uint16_t));
                        memcpy(xb2 + K, xb + (size_t)((t + 3) % T) * K, (size_t)K * sizeof(uint16_t));
                        memset(&a, 0, sizeof a);
                        a.y = y1; a.ldy = rows; a.x = x2; a.xb = xbm ? xb2 : NULL; a.T = 2; a.w = &w;
                        xt = kern_prepare(k, &a, xbm, 1);
                        k->matmul(&a, 0, rows);
                        free(xt);
                        for (r = 0; r < rows && !bad; r++)
                            if (memcmp(&y1[r], &yall[(size_t)t * rows + r], sizeof(float)) != 0) {
                                CHECK(0, "%s dtype %d K %d xb %d: token %d row %d in a pair %.9g, in a batch %.9g", k->name, dt, K, xbm, t, r,
                                      y1[r], yall[(size_t)t * rows + r]);
                                bad = 1;
                            }
                    }
                    free(wf); free(x); free(wb); free(xb); free(yall); free(y1); free(x2); free(xb2);
                }
    }
}

static int kern_close(float got, float want, float rel, float abs_tol)
{
    return fabsf(got - want) <= rel * fabsf(want) + abs_tol;
}

static void kern_test_vector_ops(void)
{
    static const int Ns[] = {1, 3, 8, 15, 16, 17, 33, 100, 2304, 2305};
    int s, ni, i;
    for (s = 0; s < KERN_N_SETS; s++) {
        const gemma2__kernels *k = gemma2__kernels_select(kern_sets[s]);
        if (!k) continue;
        for (ni = 0; ni < (int)(sizeof Ns / sizeof Ns[0]); ni++) {
            int n = Ns[ni], bad = 0;
            float *a = (float *)malloc((size_t)n * sizeof(float)), *b = (float *)malloc((size_t)n * sizeof(float));
            float *y1 = (float *)malloc((size_t)(n + 1) * sizeof(float)), *y2 = (float *)malloc((size_t)(n + 1) * sizeof(float));
            uint16_t *h1 = (uint16_t *)malloc((size_t)(n + 1) * sizeof(uint16_t)), *h2 = (uint16_t *)malloc((size_t)(n + 1) * sizeof(uint16_t));
            float mag = 0, d1, d2;
            for (i = 0; i < n; i++) { a[i] = kern_rand() * 3.0f; b[i] = kern_rand(); mag += fabsf(a[i] * b[i]); }
            d1 = k->dot(a, b, n);
            d2 = gemma2__dot_scalar(a, b, n);
            CHECK(fabsf(d1 - d2) <= 1e-5f * mag + 1e-6f, "%s dot n %d: %g vs %g", k->name, n, d1, d2);

            for (i = 0; i <= n; i++) y1[i] = y2[i] = (float)i * 0.25f;
            k->axpy(y1, 0.37f, a, n);
            gemma2__axpy_scalar(y2, 0.37f, a, n);
            for (i = 0; i <= n && !bad; i++) if (!kern_close(y1[i], y2[i], 1e-6f, 1e-6f)) { CHECK(0, "%s axpy n %d at %d", k->name, n, i); bad = 1; }

            y1[n] = y2[n] = -7.0f; bad = 0;
            k->rmsnorm(y1, a, b, n, 1e-6f);
            gemma2__rmsnorm_scalar(y2, a, b, n, 1e-6f);
            for (i = 0; i <= n && !bad; i++) if (!kern_close(y1[i], y2[i], 1e-5f, 1e-6f)) { CHECK(0, "%s rmsnorm n %d at %d: %g vs %g", k->name, n, i, y1[i], y2[i]); bad = 1; }

            /* GELU over a wide range, including the saturated ends */
            for (i = 0; i < n; i++) y1[i] = y2[i] = a[i] * (i % 5 == 0 ? 40.0f : 2.0f);
            y1[n] = y2[n] = -7.0f; bad = 0;
            k->gelu_mul(y1, b, n);
            gemma2__gelu_mul_scalar(y2, b, n);
            for (i = 0; i <= n && !bad; i++) if (!kern_close(y1[i], y2[i], 1e-5f, 1e-6f)) { CHECK(0, "%s gelu_mul n %d at %d: %g vs %g", k->name, n, i, y1[i], y2[i]); bad = 1; }

            for (i = 0; i < n; i++) y1[i] = y2[i] = a[i] * (i % 3 == 0 ? 100.0f : 10.0f);
            y1[n] = y2[n] = -7.0f; bad = 0;
            k->softcap(y1, n, 30.0f);
            gemma2__softcap_scalar(y2, n, 30.0f);
            for (i = 0; i <= n && !bad; i++) if (!kern_close(y1[i], y2[i], 1e-5f, 3e-6f)) { CHECK(0, "%s softcap n %d at %d: %g vs %g", k->name, n, i, y1[i], y2[i]); bad = 1; }

            /* bf16 rounding must be bit-exact: random values plus ties, subnormals, inf, NaN */
            for (i = 0; i < n; i++) {
                uint32_t u;
                float f = a[i];
                if (i % 7 == 1) { u = 0x3f808000u + ((uint32_t)i << 17); memcpy(&f, &u, 4); }       /* exact ties */
                if (i % 7 == 2) { u = 0x00012345u + (uint32_t)i; memcpy(&f, &u, 4); }               /* subnormal */
                if (i % 11 == 3) { u = 0x7f800000u; memcpy(&f, &u, 4); }                             /* inf */
                if (i % 13 == 4) { u = 0x7f800001u + ((uint32_t)i << 8); memcpy(&f, &u, 4); }        /* NaN */
                if (i % 17 == 5) { u = 0x7f7fffffu; memcpy(&f, &u, 4); }                             /* rounds to inf */
                y1[i] = f;
            }
            h1[n] = h2[n] = 0xabcd; bad = 0;
            k->to_bf16(h1, y1, n);
            gemma2__to_bf16_scalar(h2, y1, n);
            for (i = 0; i <= n && !bad; i++) if (h1[i] != h2[i]) { CHECK(0, "%s to_bf16 n %d at %d: %04x vs %04x", k->name, n, i, h1[i], h2[i]); bad = 1; }

            /* and back (the bf16 KV cache): exact, every bit pattern the loop above made, nothing past n written */
            y1[n] = y2[n] = -7.0f; bad = 0;
            k->from_bf16(y1, h1, n);
            gemma2__from_bf16_scalar(y2, h1, n);
            for (i = 0; i <= n && !bad; i++)
                if (memcmp(&y1[i], &y2[i], 4) != 0 || (i < n && gemma2__f32_to_bf16(y1[i]) != h1[i])) {
                    CHECK(0, "%s from_bf16 n %d at %d: %g vs %g", k->name, n, i, y1[i], y2[i]); bad = 1;
                }
            free(a); free(b); free(y1); free(y2); free(h1); free(h2);
        }
        /* RoPE: every set against the reference, and the reference against the rotation worked
           out in double precision; the float after the last head must stay untouched */
        {
            static const int hds[] = {2, 8, 10, 34, 64, 256};
            int hi, nh;
            for (hi = 0; hi < (int)(sizeof hds / sizeof hds[0]); hi++)
                for (nh = 1; nh <= 3; nh += 2) {
                    int hd = hds[hi], half = hds[hi] / 2, n = nh * hds[hi], pos = 1000 + 37 * hi, bad = 0, h;
                    float x1[3 * 256 + 1], x2[3 * 256 + 1], x0[3 * 256], cs[256];
                    for (i = 0; i < half; i++) {
                        double ang = (double)(float)pos * (double)(float)pow(10000.0, -2.0 * i / hd);
                        cs[i] = (float)cos(ang);
                        cs[half + i] = (float)sin(ang);
                    }
                    for (i = 0; i < n; i++) x0[i] = x1[i] = x2[i] = kern_rand() * 4.0f;
                    x1[n] = x2[n] = -7.0f;
                    k->rope(x1, nh, hd, cs);
                    gemma2__rope_scalar(x2, nh, hd, cs);
                    for (i = 0; i <= n && !bad; i++)
                        if (!kern_close(x1[i], x2[i], 1e-6f, 1e-6f)) { CHECK(0, "%s rope hd %d heads %d at %d: %g vs %g", k->name, hd, nh, i, x1[i], x2[i]); bad = 1; }
                    for (h = 0; h < nh && !bad && s == 0; h++)
                        for (i = 0; i < half && !bad; i++) {
                            const float *o = x0 + h * hd;
                            double re = (double)o[i] * cs[i] - (double)o[half + i] * cs[half + i];
                            double im = (double)o[half + i] * cs[i] + (double)o[i] * cs[half + i];
                            if (fabs(re - x2[h * hd + i]) > 1e-5 || fabs(im - x2[h * hd + half + i]) > 1e-5) {
                                CHECK(0, "rope reference hd %d head %d pair %d: (%g, %g) vs (%g, %g)", hd, h, i, x2[h * hd + i], x2[h * hd + half + i], re, im);
                                bad = 1;
                            }
                        }
                }
        }
    }
}

/* --- the pool --- */

typedef struct kern_pool_ctx {
    int *count; /* per task */
    int calls;
} kern_pool_ctx;

static void kern_pool_task(void *ctx, int task, int n_tasks)
{
    kern_pool_ctx *c = (kern_pool_ctx *)ctx;
    (void)n_tasks;
    GEMMA2__ADD32(&c->count[task], 1);
    GEMMA2__ADD32(&c->calls, 1);
}

static void kern_test_pool(void)
{
    int nt, rep, i;
    CHECK(gemma2__cpu_count() >= 1, "cpu count");
    for (nt = 1; nt <= 8; nt++) {
        gemma2__pool *p = gemma2__pool_new(nt);
        int *count = (int *)calloc(200, sizeof(int));
        int expect[200];
        kern_pool_ctx c;
        memset(expect, 0, sizeof expect);
        CHECK(p != NULL, "pool_new(%d)", nt);
        if (!p) { free(count); continue; }
#if defined(GEMMA2_NO_THREADS)
        CHECK(gemma2__pool_size(p) == 1, "no threads");
#else
        CHECK(gemma2__pool_size(p) == nt, "pool size %d, want %d", gemma2__pool_size(p), nt);
#endif
        c.count = count;
        for (rep = 0; rep < 2000; rep++) {
            int n = 1 + (rep * 37) % 200;
            c.calls = 0;
            gemma2__pool_run(p, kern_pool_task, &c, n);
            for (i = 0; i < n; i++) expect[i]++;
            if (c.calls != n) { CHECK(0, "threads %d rep %d: %d calls for %d tasks", nt, rep, c.calls, n); break; }
        }
        gemma2__pool_run(p, kern_pool_task, &c, 0); /* no tasks: a no-op */
        for (i = 0; i < 200; i++) if (count[i] != expect[i]) { CHECK(0, "threads %d: task %d ran %d times, want %d", nt, i, count[i], expect[i]); break; }
        gemma2__pool_free(p);
        free(count);
    }
    gemma2__pool_free(NULL);
}

/* The pooled helpers the forward pass and the loader use. */
static void kern_test_pooled_helpers(void)
{
    const gemma2__kernels *k = gemma2__kernels_select(GEMMA2_KERNELS_AUTO);
    gemma2__pool *p = gemma2__pool_new(3);
    int rows = 1000, K = 77, T = 3, i, bad = 0;
    size_t n = ((size_t)1 << 21) + 5;
    uint16_t *wb = (uint16_t *)malloc((size_t)rows * K * sizeof(uint16_t));
    float *x = (float *)malloc((size_t)T * K * sizeof(float)), *y = (float *)malloc((size_t)T * rows * sizeof(float));
    float *yr = (float *)malloc((size_t)T * rows * sizeof(float)), *src = (float *)malloc(n * sizeof(float));
    uint16_t *d1 = (uint16_t *)malloc(n * sizeof(uint16_t));
    gemma2__mat w;
    gemma2__matmul_args a;
    for (i = 0; i < rows * K; i++) wb[i] = gemma2__f32_to_bf16(kern_rand());
    for (i = 0; i < T * K; i++) x[i] = kern_rand();
    w.data = wb; w.dtype = GEMMA2__DT_BF16; w.rows = rows; w.cols = K;
    memset(&a, 0, sizeof a);
    a.y = y; a.ldy = rows; a.x = x; a.xb = NULL; a.T = T; a.w = &w;
    gemma2__matmul(p, k, &a);
    a.y = yr;
    gemma2__matmul_scalar(&a, 0, rows);
    for (i = 0; i < T * rows && !bad; i++) if (!kern_close(y[i], yr[i], 1e-4f, 1e-4f)) { CHECK(0, "pooled matmul at %d: %g vs %g", i, y[i], yr[i]); bad = 1; }
    for (i = 0; i < (int)n; i++) src[i] = kern_rand() * 100.0f;
    gemma2__convert_f32_to_bf16(p, d1, src, n);
    for (i = 0; i < (int)n; i++) if (d1[i] != gemma2__f32_to_bf16(src[i])) { CHECK(0, "convert at %d", i); break; }
    gemma2__pool_free(p);
    free(wb); free(x); free(y); free(yr); free(src); free(d1);
}

/* 1 (after one CHECK naming the first difference) if got[0..count) is not within 1e-5 relative,
   abs_tol absolute, of want. */
static int kern_att_differs(const gemma2__kernels *k, const char *what, int hd, int group, int n, const float *got, const float *want,
                            int count, float abs_tol)
{
    int i;
    for (i = 0; i < count; i++)
        if (!kern_close(got[i], want[i], 1e-5f, abs_tol)) {
            CHECK(0, "%s %s hd %d group %d n %d at %d: %g vs %g", k->name, what, hd, group, n, i, got[i], want[i]);
            return 1;
        }
    return 0;
}

/* Attention pieces against the reference (dot/axpy of the scalar set): odd head sizes, query
   groups of 1-6 heads and blocks of queries (up to 32 rows), key counts around the 4-key
   steps; softmax of wide-ranging scores. */
static void kern_test_attention(void)
{
    static const int hds[] = {1, 10, 16, 17, 130, 256}, groups[] = {1, 2, 3, 4, 6, 11, 32}, ns[] = {1, 3, 8, 9, 16, 17, 37};
    int s_, hi, gi, ni, i, lds = 40;
    for (s_ = 0; s_ < KERN_N_SETS; s_++) {
        const gemma2__kernels *k = gemma2__kernels_select(kern_sets[s_]);
        if (!k) continue;
        for (hi = 0; hi < 6; hi++)
            for (gi = 0; gi < 4; gi++)
                for (ni = 0; ni < 7; ni++) {
                    int hd = hds[hi], group = groups[gi], n = ns[ni], bad = 0;
                    float *q = (float *)malloc(sizeof(float) * (size_t)group * hd), *K = (float *)malloc(sizeof(float) * (size_t)n * hd);
                    float *V = (float *)malloc(sizeof(float) * (size_t)n * hd), *s1 = (float *)malloc(sizeof(float) * (size_t)group * lds);
                    float *s2 = (float *)malloc(sizeof(float) * (size_t)group * lds), *o1 = (float *)malloc(sizeof(float) * (size_t)group * hd + 4);
                    float *o2 = (float *)malloc(sizeof(float) * (size_t)group * hd + 4);
                    for (i = 0; i < group * hd; i++) { q[i] = kern_rand(); o1[i] = o2[i] = kern_rand(); }
                    o1[group * hd] = o2[group * hd] = 77.0f;
                    for (i = 0; i < n * hd; i++) { K[i] = kern_rand(); V[i] = kern_rand(); }
                    for (i = 0; i < group * lds; i++) s1[i] = s2[i] = -5.0f;
                    k->att_scores(k, s1, lds, q, group, hd, K, n, 0.3f);
                    gemma2__att_scores_generic(&gemma2__kernels_scalar, s2, lds, q, group, hd, K, n, 0.3f);
                    bad = kern_att_differs(k, "att_scores", hd, group, n, s1, s2, group * lds, 1e-5f * sqrtf((float)hd));
                    k->att_values(k, o1, s1, lds, group, hd, V, n);
                    gemma2__att_values_generic(&gemma2__kernels_scalar, o2, s1, lds, group, hd, V, n);
                    bad = bad || kern_att_differs(k, "att_values", hd, group, n, o1, o2, group * hd + 1, 1e-5f * (float)n);
                    if (k->att_scores_bf16) { /* bf16 rows read directly == the reference on the widened rows */
                        uint16_t *Kb = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)n * hd), *Vb = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)n * hd);
                        gemma2__to_bf16_scalar(Kb, K, n * hd);
                        gemma2__to_bf16_scalar(Vb, V, n * hd);
                        gemma2__from_bf16_scalar(K, Kb, n * hd);
                        gemma2__from_bf16_scalar(V, Vb, n * hd);
                        for (i = 0; i < group * lds; i++) s1[i] = s2[i] = -5.0f;
                        k->att_scores_bf16(k, s1, lds, q, group, hd, Kb, n, 0.3f);
                        gemma2__att_scores_generic(&gemma2__kernels_scalar, s2, lds, q, group, hd, K, n, 0.3f);
                        bad = bad || kern_att_differs(k, "att_scores_bf16", hd, group, n, s1, s2, group * lds, 1e-5f * sqrtf((float)hd));
                        for (i = 0; i < group * hd; i++) o1[i] = o2[i] = kern_rand();
                        k->att_values_bf16(k, o1, s1, lds, group, hd, Vb, n);
                        gemma2__att_values_generic(&gemma2__kernels_scalar, o2, s1, lds, group, hd, V, n);
                        bad = bad || kern_att_differs(k, "att_values_bf16", hd, group, n, o1, o2, group * hd + 1, 1e-5f * (float)n);
                        free(Kb); free(Vb);
                    }
                    free(q); free(K); free(V); free(s1); free(s2); free(o1); free(o2);
                }
        for (ni = 1; ni <= 70; ni += 23) {
            float x1[80], x2[80], sum = 0;
            int bad = 0;
            for (i = 0; i < 80; i++) x1[i] = x2[i] = kern_rand() * (i % 7 == 0 ? 60.0f : 5.0f);
            k->softmax(x1, ni);
            gemma2__softmax_scalar(x2, ni);
            for (i = 0; i < 80 && !bad; i++) {
                if (i < ni) sum += x1[i];
                if (!kern_close(x1[i], x2[i], 1e-5f, 1e-7f)) { CHECK(0, "%s softmax n %d at %d: %g vs %g", k->name, ni, i, x1[i], x2[i]); bad = 1; }
            }
            CHECK(fabsf(sum - 1.0f) < 1e-5f, "%s softmax n %d sums to %g", k->name, ni, sum);
        }
        /* the exact three-part bf16 split: bit-exact with the reference, and exact */
        if (k->to_bf16x3)
            for (ni = 1; ni <= 100; ni += 33) {
                float x[100];
                uint16_t a3[384], b3[384];
                int bad = 0;
                for (i = 0; i < ni; i++) x[i] = kern_rand() * (i % 3 == 0 ? 1e30f : i % 3 == 1 ? 1e-25f : 1.0f); /* within 2^-100 .. 2^127 */
                memset(a3, 0xee, sizeof a3);
                k->to_bf16x3(a3, x, ni);
                gemma2__to_bf16x3_scalar(b3, x, ni);
                CHECK(!memcmp(a3, b3, gemma2__x3_size(ni) * sizeof(uint16_t)), "%s to_bf16x3 n %d differs from the reference", k->name, ni);
                for (i = 0; i < ni && !bad; i++) {
                    const uint16_t *blk = b3 + (size_t)(i / 32) * 96 + i % 32;
                    float back = gemma2__bf16_to_f32(blk[0]) + gemma2__bf16_to_f32(blk[32]) + gemma2__bf16_to_f32(blk[64]);
                    if (back != x[i]) { CHECK(0, "to_bf16x3: %.9g split into parts summing to %.9g", x[i], back); bad = 1; }
                }
            }
    }
}

void suite_kernels(void)
{
    g2t_run("kernels/matmul", kern_test_matmul);
    g2t_run("kernels/matmul_consistent", kern_test_matmul_consistent);
    g2t_run("kernels/vector_ops", kern_test_vector_ops);
    g2t_run("kernels/attention", kern_test_attention);
    g2t_run("kernels/pool", kern_test_pool);
    g2t_run("kernels/pooled_helpers", kern_test_pooled_helpers);
}
