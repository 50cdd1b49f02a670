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

/* The i-th kernel set of the library's list, if this machine runs it (into k). */
static int kern_get(int i, gemma2__kernels *k)
{
    const gemma2__kernel_set *ks = &gemma2__kernel_sets[i];
    if (!ks->init || !ks->available()) return 0;
    ks->init(k);
    return 1;
}

/* Random weights in a format, rows x cols, and the same values widened to float (wf). F16
   values are drawn as bit patterns with exponents that keep them normal; Q8 and Q4 rows are
   random floats quantized (every 7th row scaled by 1e-3, so that block scales differ a lot). */
static void *kern_weights(int format, int rows, int cols, float *wf)
{
    size_t i, n = (size_t)rows * cols;
    if (format == GEMMA2__WF_Q8 || format == GEMMA2__WF_Q4) {
        size_t rb = gemma2__row_bytes(format, cols);
        uint8_t *w = (uint8_t *)malloc((size_t)rows * rb);
        float *row = (float *)malloc((size_t)cols * sizeof(float));
        int r, k;
        for (r = 0; r < rows; r++) {
            for (k = 0; k < cols; k++) row[k] = kern_rand() * (r % 7 == 3 ? 1e-3f : 1.0f) * (k % 32 == 5 ? 8.0f : 1.0f);
            gemma2__wformat_of(format)->from_float(w + (size_t)r * rb, row, cols);
            gemma2__wformat_of(format)->to_float(wf + (size_t)r * cols, w + (size_t)r * rb, 0, cols);
        }
        free(row);
        return w;
    } else if (format == GEMMA2__WF_F32) {
        float *w = (float *)malloc(n * sizeof(float));
        for (i = 0; i < n; i++) w[i] = wf[i] = kern_rand();
        return w;
    } else {
        uint16_t *w = (uint16_t *)malloc(n * sizeof(uint16_t));
        for (i = 0; i < n; i++) {
            if (format == GEMMA2__WF_BF16) { w[i] = gemma2__f32_to_bf16(kern_rand()); wf[i] = gemma2__bf16_to_f32(w[i]); }
            else {
                uint16_t h = (uint16_t)(((kern_rng >> 20) & 0x8000u) | ((uint16_t)(8 + (kern_rng >> 7) % 8) << 10) | ((kern_rng >> 30) & 0x3ffu));
                (void)kern_rand();
                w[i] = h;
                wf[i] = gemma2__f16_to_f32(h);
            }
        }
        return w;
    }
}

/* Prepares a (one matrix) as the forward pass does, through gemma2__pack; a second time in
   two pieces split at a row that is not a multiple of 16, to check that pieces compose.
   Returns the layout (GEMMA2__PACK_*); buf must hold gemma2__pack_bytes_max. */
static int kern_pack(const gemma2__kernels *k, gemma2__matmul_args *a, void *buf, int compute_bf16)
{
    gemma2__pack(NULL, k, a, 1, buf, compute_bf16);
    if (a->xp_kind != GEMMA2__PACK_NONE) {
        int rows = gemma2__pack_rows(a->xp_kind, a->T, a->w->cols), cut = rows / 3;
        memset(buf, 0xa5, gemma2__pack_bytes(a->xp_kind, a->T, a->w->cols));
        if (cut > 0) k->pack(buf, a->xp_kind, a->x, a->T, a->w->cols, 0, cut);
        k->pack(buf, a->xp_kind, a->x, a->T, a->w->cols, cut, rows);
    }
    return a->xp_kind;
}

/* One matmul case against the format's reference product: rows [r0, r1) of a rows x K matrix,
   T tokens, packed as the set asks (compute_bf16 as GEMMA2_COMPUTE_BF16), or not packed at all
   (use_pack 0: every matmul must accept GEMMA2__PACK_NONE). */
static void kern_check_matmul(const gemma2__kernels *k, int format, int rows, int K, int T, int r0, int r1, int compute_bf16, int use_pack)
{
    size_t nw = (size_t)rows * K, i;
    int ldy = rows + 3, t, r, kk, kind = GEMMA2__PACK_NONE, dp, exact = format == GEMMA2__WF_Q8 || format == GEMMA2__WF_Q4;
    float *wf = (float *)malloc(nw * sizeof(float));
    void *w_data = kern_weights(format, rows, K, wf);
    float *x = (float *)malloc((size_t)T * K * sizeof(float));
    float *xr = (float *)malloc((size_t)T * K * sizeof(float));
    float *y = (float *)malloc((size_t)T * ldy * sizeof(float));
    float *yr = (float *)malloc((size_t)T * ldy * sizeof(float));
    void *buf = malloc(gemma2__pack_bytes_max(T, K));
    gemma2__mat w;
    gemma2__matmul_args a, ar;
    int bad = 0;
    for (i = 0; i < (size_t)T * K; i++) x[i] = kern_rand() * 2.0f;
    if ((format == GEMMA2__WF_Q8 || format == GEMMA2__WF_Q4) && T > 1) for (i = 0; i < (size_t)GEMMA2__MIN(K, 32); i++) x[(size_t)K + i] = 0; /* an all-zero block */
    for (i = 0; i < (size_t)T * ldy; i++) y[i] = yr[i] = 12345.0f;
    w.data = w_data; w.format = format; w.rows = rows; w.cols = K;
    memset(&a, 0, sizeof a);
    a.y = y; a.ldy = ldy; a.x = x; a.T = T; a.w = &w;
    if (use_pack) kind = kern_pack(k, &a, buf, compute_bf16);
    dp = kind == GEMMA2__PACK_BF16 || kind == GEMMA2__PACK_XT_BF16; /* the kernel will use bf16 activations */
    for (i = 0; i < (size_t)T * K; i++) xr[i] = dp ? gemma2__bf16_to_f32(gemma2__f32_to_bf16(x[i])) : x[i];
    ar = a; ar.y = yr; ar.x = xr; ar.xp = NULL; ar.xp_kind = GEMMA2__PACK_NONE;
    /* Q8, Q4: the reference quantizes x itself (xr stays x); kernels compute its integer dots
       exactly and then its float operations in its order, so they must give its bits. Other
       formats: a tolerance on the sum of |terms| (float32 summation order). */
    gemma2__matmul_for(k, format)(&a, r0, r1);
    gemma2__wformat_of(format)->matmul_ref(&ar, r0, r1);
    for (t = 0; t < T && !bad; t++)
        for (r = 0; r < ldy && !bad; r++) {
            float got = y[(size_t)t * ldy + r], want = yr[(size_t)t * ldy + r], mag = 0;
            if (r < r0 || r >= r1) {
                if (got != 12345.0f) { CHECK(0, "%s: row %d outside [%d,%d) written", k->name, r, r0, r1); bad = 1; }
                continue;
            }
            for (kk = 0; kk < K; kk++) mag += fabsf(wf[(size_t)r * K + kk] * xr[(size_t)t * K + kk]);
            if (exact ? memcmp(&got, &want, sizeof got) != 0 : !(fabsf(got - want) <= (dp ? 1e-4f : 1e-5f) * mag + 1e-6f)) {
                CHECK(0, "%s %s rows %d K %d T %d [%d,%d) compute_bf16 %d pack %d: y[%d][%d] = %.9g, want %.9g", k->name,
                      gemma2__wformat_of(format)->name, rows, K, T, r0, r1, compute_bf16, kind, t, r, got, want);
                bad = 1;
            }
        }
    free(wf); free(w_data); free(x); free(xr); free(y); free(yr); free(buf);
}

/* Q8, Q4: groups of 8 rows plus tails, many blocks, the fixtures' widths (72, 40, 48: partial
   blocks), token tiles and more tokens than one prefill block */
static void kern_check_q(const gemma2__kernels *k)
{
    int f, up;
    for (f = GEMMA2__WF_Q8; f <= GEMMA2__WF_Q4; f++)
        for (up = 0; up < 2; up++) {
            kern_check_matmul(k, f, 70, 300, 3, 1, 69, 0, up);
            kern_check_matmul(k, f, 61, 2304 + 7, 2, 0, 61, 0, up);
            kern_check_matmul(k, f, 40, 72, 5, 0, 40, 0, up);
            kern_check_matmul(k, f, 33, 40, 1, 0, 33, 0, up);
            kern_check_matmul(k, f, 33, 48, 2, 8, 32, 0, up);
            kern_check_matmul(k, f, 45, 104, 37, 3, 44, 0, up);
            kern_check_matmul(k, f, 70, 520, 150, 0, 70, 0, up);
            kern_check_matmul(k, f, 19, 2304, 1, 0, 19, 0, up);
        }
}

static void kern_test_matmul(void)
{
    static const int Ks[] = {1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 257};
    int s, f, ki, T, cb, up, n_sets = 0;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
        n_sets++;
        for (f = 0; f < GEMMA2__WF_COUNT; f++)
            for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++)
                for (T = 1; T <= 9; T++)
                    for (cb = 0; cb < 2; cb++)
                        for (up = 0; up < 2; up++) {
                            kern_check_matmul(&k, f, 23, Ks[ki], T, 0, 23, cb, up);
                            kern_check_matmul(&k, f, 23, Ks[ki], T, 3, 19, cb, up);
                            kern_check_matmul(&k, f, 23, Ks[ki], T, 5, 6, cb, up);
                        }
        for (cb = 0; cb < 2; cb++) {
            /* bigger: several row blocks and tiles (16 / 12 / 4 / 1 rows), token tiles (6, 16, 32) plus tails */
            kern_check_matmul(&k, GEMMA2__WF_BF16, 70, 300, 14, 1, 69, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_BF16, 70, 300, 13, 0, 70, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_BF16, 61, 301, 33, 0, 61, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_BF16, 61, 301, 47, 2, 59, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_F32, 37, 129, 20, 2, 35, cb, 1);
            /* several column blocks (512) and token groups (48), with tails in both */
            kern_check_matmul(&k, GEMMA2__WF_BF16, 21, 1100, 53, 0, 21, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_BF16, 21, 1100, 53, 3, 20, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_F32, 18, 1031, 50, 1, 18, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_F16, 18, 1031, 50, 1, 18, cb, 1);
            /* more tokens than one prefill block (128) */
            kern_check_matmul(&k, GEMMA2__WF_BF16, 30, 71, 150, 0, 30, cb, 1);
            kern_check_matmul(&k, GEMMA2__WF_BF16, 30, 71, 150, 1, 29, cb, 1);
        }
        kern_check_q(&k);
        /* the X3 layout on every width where the set has it */
        if (k.x3_min_cols < INT_MAX) {
            gemma2__kernels k3 = k;
            k3.x3_min_cols = 0;
            for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++) kern_check_matmul(&k3, GEMMA2__WF_BF16, 37, Ks[ki], 1, 0, 37, 0, 1);
        }
    }
    CHECK(n_sets >= 1, "no kernel set at all");
}

/* The Q8 and Q4 products' integer-dot paths that a set's init passes over on this CPU: AVX2
   without AVX-VNNI, NEON without dotprod (both sets). The best path runs in kernels/matmul. */
static void kern_test_matmul_q_paths(void)
{
    int s;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
#if defined(GEMMA2__X86)
        if (k.id == GEMMA2_KERNELS_AVX2) { gemma2__kernels_avx2_q(&k, 0); kern_check_q(&k); }
#endif
#if defined(GEMMA2__NEON)
        if (k.id == GEMMA2_KERNELS_NEON || k.id == GEMMA2_KERNELS_NEON_BF16) { gemma2__kernels_neon_q(&k, 0); kern_check_q(&k); }
#endif
    }
}

/* Q8 and Q4 on shapes that reach every path of the SIMD kernels, bit for bit against the
   reference: decode in groups of 16 rows several rows apart (short rows make the groups
   sparse) with tails in every position, row ranges that start and end anywhere; prefill
   tiles with row, token and column tails, several panels of columns, several passes of
   tokens. */
static void kern_test_matmul_q(void)
{
    static const int shapes[][5] = {
        /* rows, K, T, r0, r1 */
        {300, 72, 1, 0, 300}, {300, 72, 1, 7, 293}, {150, 2304 + 7, 1, 0, 150}, {150, 2304, 1, 16, 144},
        {37, 64, 1, 0, 37}, {37, 64, 1, 21, 37}, {13, 40, 1, 0, 13}, {200, 9216 / 8, 1, 3, 200},
        {97, 300, 2, 0, 97}, {97, 300, 16, 1, 96}, {50, 1000, 33, 0, 50}, {48, 256, 32, 0, 48},
        {61, 520, 129, 5, 61}, {7, 33, 17, 0, 7}};
    int s, f, i, up;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
        for (f = GEMMA2__WF_Q8; f <= GEMMA2__WF_Q4; f++)
            for (i = 0; i < (int)(sizeof shapes / sizeof shapes[0]); i++)
                for (up = 0; up < 2; up++) kern_check_matmul(&k, f, shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], shapes[i][4], 0, up);
    }
}

/* fp32 -> fp16 (the Q8 scales): every finite half survives the round trip; the midpoints
   between neighbouring halves tie to the even one, and a float just beside a midpoint goes to
   the nearer half; past the largest half (midpoint 65520 included) is infinity. */
static void kern_test_f16(void)
{
    uint32_t h;
    int bad = 0;
    for (h = 0; h < 0x10000u && bad < 5; h++) {
        uint16_t got;
        float f = gemma2__f16_to_f32((uint16_t)h);
        if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue; /* NaN */
        got = gemma2__f32_to_f16(f);
        if (got != h) { CHECK(0, "f16 %04x -> %g -> %04x", (unsigned)h, f, (unsigned)got); bad++; }
        if ((h & 0x7fffu) < 0x7c00u) { /* a finite half and the next one up in magnitude */
            uint16_t up = (uint16_t)(h + 1);
            int top = (h & 0x7fffu) == 0x7bffu; /* the next one up is infinity: the midpoint is 65520 */
            float mid = top ? ((h & 0x8000u) ? -65520.0f : 65520.0f) : (float)(((double)f + (double)gemma2__f16_to_f32(up)) / 2);
            uint16_t even = (h & 1u) ? up : (uint16_t)h;
            uint16_t want_mid = top ? (uint16_t)((h & 0x8000u) | 0x7c00u) : even;
            uint16_t lo = gemma2__f32_to_f16(nextafterf(mid, 0.0f)), hi = gemma2__f32_to_f16(nextafterf(mid, (h & 0x8000u) ? -INFINITY : INFINITY));
            if (gemma2__f32_to_f16(mid) != want_mid || lo != h || hi != up) {
                CHECK(0, "f16 midpoint after %04x: %04x (want %04x), below %04x, above %04x", (unsigned)h, gemma2__f32_to_f16(mid), want_mid, lo, hi);
                bad++;
            }
        }
    }
    CHECK(gemma2__f32_to_f16(1e6f) == 0x7c00u && gemma2__f32_to_f16(-1e6f) == 0xfc00u, "overflow to infinity");
    CHECK(gemma2__f32_to_f16(1e-9f) == 0 && gemma2__f32_to_f16(-1e-9f) == 0x8000u, "underflow to zero");
}

/* Every set's from_float (quantizing at load) writes exactly the bytes of the format's scalar
   from_float: random rows of several widths (partial last blocks), rows with exact ties at .5
   of a quant step, all-zero and constant blocks, tiny and large magnitudes, blocks holding a
   NaN or an infinity. */
static void kern_test_from_float(void)
{
    static const int Ks[] = {1, 31, 32, 33, 64, 72, 100, 2304};
    int s, f, ki, v, i;
    float *x = (float *)malloc(2304 * sizeof(float));
    uint8_t *want = (uint8_t *)malloc(2304 * 4), *got = (uint8_t *)malloc(2304 * 4);
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
        for (f = 0; f < GEMMA2__WF_COUNT; f++) {
            void (*ff)(void *, const float *, int) = k.from_float[f] ? k.from_float[f] : gemma2__wformat_of(f)->from_float;
            for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++)
                for (v = 0; v < 7; v++) {
                    int K = Ks[ki];
                    size_t rb = gemma2__row_bytes(f, K);
                    for (i = 0; i < K; i++) {
                        float r = kern_rand();
                        switch (v) {
                        case 0: x[i] = r; break;
                        case 1: x[i] = i % 32 == 0 ? 15.875f : 0.125f * (float)((i * 7) % 254 - 127) + (i % 3 ? 0.0625f : 0.0f); break; /* q8 ties */
                        case 2: x[i] = i % 32 == 0 ? 0.0f : (i % 32 == 1 ? 1.875f : 0.125f * (float)(i % 15) + 0.0625f); break;        /* q4 ties */
                        case 3: x[i] = i / 32 % 2 ? 0.0f : 0.75f; break;                                                          /* zero and constant blocks */
                        case 4: x[i] = r * 1e-6f; break;
                        case 5: x[i] = r * 3e3f; break;
                        default: x[i] = i % 37 == 5 ? NAN : i % 53 == 20 ? INFINITY : i % 71 == 40 ? -INFINITY : r; break; /* non-finite blocks */
                        }
                    }
                    memset(want, 0x5a, rb); memset(got, 0x5a, rb);
                    gemma2__wformat_of(f)->from_float(want, x, K);
                    ff(got, x, K);
                    CHECK(!memcmp(want, got, rb), "%s: from_float %s K %d case %d differs from the scalar", k.name, gemma2__wformat_of(f)->name, K, v);
                }
        }
    }
    free(x); free(want); free(got);
}

/* Q8 quantization as defined: d = absmax / 127 stored as fp16, round half away from zero, an
   all-zero block has d = 0, a partial block is padded with zero quants. */
static void kern_test_q8_quantize(void)
{
    float x[40], back[40];
    uint8_t row[2 * GEMMA2__Q8_BYTES];
    uint16_t h;
    int i;
    for (i = 0; i < 40; i++) x[i] = 0;
    x[0] = 127.0f; x[1] = 0.5f; x[2] = -0.5f; x[3] = 1.5f; x[4] = -2.5f; x[5] = -127.0f; x[6] = 3.49f;
    x[33] = 0; /* block 2: columns 32..39, all zero */
    memset(row, 0xa5, sizeof row);
    gemma2__q8_quantize_row(row, x, 40);
    memcpy(&h, row, 2);
    CHECK(h == 0x3c00u, "d of the first block: %04x, want 1.0", h);
    CHECK((int8_t)row[2] == 127 && (int8_t)row[3] == 1 && (int8_t)row[4] == -1 && (int8_t)row[5] == 2 && (int8_t)row[6] == -3 &&
          (int8_t)row[7] == -127 && (int8_t)row[8] == 3, "quants %d %d %d %d %d %d %d", (int8_t)row[2], (int8_t)row[3], (int8_t)row[4],
          (int8_t)row[5], (int8_t)row[6], (int8_t)row[7], (int8_t)row[8]);
    memcpy(&h, row + GEMMA2__Q8_BYTES, 2);
    CHECK(h == 0, "all-zero block: d %04x", h);
    for (i = 0; i < 32; i++) CHECK(row[GEMMA2__Q8_BYTES + 2 + i] == 0, "padding quant %d is %d", i, row[GEMMA2__Q8_BYTES + 2 + i]);
    gemma2__to_float_q8(back, row, 32, 8);
    for (i = 0; i < 8; i++) CHECK(back[i] == 0, "to_float of the zero block");
    gemma2__to_float_q8(back, row, 0, 40);
    CHECK(back[0] == 127.0f && back[4] == -3.0f && back[39] == 0, "to_float");
    x[32] = 0.3f; /* a partial block: d = 0.3 / 127 rounded to fp16 */
    gemma2__q8_quantize_row(row, x, 40);
    memcpy(&h, row + GEMMA2__Q8_BYTES, 2);
    CHECK(h == gemma2__f32_to_f16(0.3f / 127.0f) && (int8_t)row[GEMMA2__Q8_BYTES + 2] == 127 && row[GEMMA2__Q8_BYTES + 3] == 0, "partial block");
}

/* The list of kernel sets: every id once; a forced set is exactly that set; AUTO is the first
   the CPU has in the list's order of preference; unknown ids fail. */
static void kern_test_selection(void)
{
    int seen[GEMMA2_KERNELS_COUNT] = {0}, i, first = -1, best_id = -1;
    gemma2__kernels k;
    for (i = 0; i < GEMMA2__N_KERNEL_SETS; i++) {
        int id = gemma2__kernel_sets[i].id;
        CHECK(id > GEMMA2_KERNELS_AUTO && id < GEMMA2_KERNELS_COUNT, "set %d has id %d", i, id);
        if (id > 0 && id < GEMMA2_KERNELS_COUNT) seen[id]++;
        if (kern_get(i, &k)) {
            CHECK(gemma2__kernels_select(id, &k) == 0 && k.id == id, "asked for set %d, got %s (%d)", id, k.name, k.id);
            if (first < 0) { first = i; best_id = k.id; }
        } else
            CHECK(gemma2__kernels_select(id, &k) == GEMMA2_ERROR_UNSUPPORTED, "set %d is not available but can be selected", id);
    }
    for (i = 1; i < GEMMA2_KERNELS_COUNT; i++) CHECK(seen[i] == 1, "kernel set id %d is listed %d times", i, seen[i]);
    CHECK(first >= 0, "no kernel set at all");
    CHECK(gemma2__kernels_select(GEMMA2_KERNELS_AUTO, &k) == 0 && first >= 0 && k.id == best_id, "AUTO picked %s, not the best set", k.name);
    CHECK(gemma2__kernels_select(GEMMA2_KERNELS_SCALAR, &k) == 0 && k.id == GEMMA2_KERNELS_SCALAR, "SCALAR is always there");
    CHECK(gemma2__kernels_select(99, &k) == GEMMA2_ERROR_UNSUPPORTED, "unknown kernel set");
    CHECK(gemma2__kernels_select(GEMMA2_KERNELS_COUNT, &k) == GEMMA2_ERROR_UNSUPPORTED, "GEMMA2_KERNELS_COUNT is no set");
    /* every set fills every required entry */
    for (i = 0; i < GEMMA2__N_KERNEL_SETS; i++) {
        if (!kern_get(i, &k)) continue;
        CHECK(k.name && k.dot && k.axpy && k.rmsnorm && k.gelu_mul && k.softcap && k.softmax && k.rope && k.to_bf16 && k.from_bf16 &&
              k.att_scores && k.att_values && k.split_rows[0] > 0 && k.split_rows[1] > 0 && k.pack_unit > 0,
              "%s leaves a required entry empty", k.name);
        CHECK(!k.pack_kind == !k.pack, "%s: pack_kind and pack come together", k.name);
        CHECK(!k.att_scores_bf16 == !k.att_values_bf16, "%s: the bf16 attention kernels come together", k.name);
    }
}

/* Every layout a set's pack produces (for calls of several tokens, and of several tokens each
   as if alone) is bit-identical to the reference layout, whatever the row pieces it is made in. */
static void kern_test_pack(void)
{
    static const int Ts[] = {1, 2, 5, 16, 17, 33, 40}, Ks[] = {1, 2, 15, 16, 17, 33, 100, 257};
    int s, f, ti, ki, cb, lone;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k) || !k.pack_kind) continue;
        k.x3_min_cols = 0; /* reach X3 on every width */
        for (f = 0; f < GEMMA2__WF_COUNT; f++)
            for (ti = 0; ti < (int)(sizeof Ts / sizeof Ts[0]); ti++)
                for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++)
                    for (cb = 0; cb < 4; cb++) {
                        int T = Ts[ti], K = Ks[ki], kind, rows, cut, t, j;
                        size_t bytes, i;
                        float *x;
                        uint8_t *p1, *p2;
                        lone = cb >> 1;
                        kind = k.pack_kind(&k, f, T, K, cb & 1, lone);
                        if (kind == GEMMA2__PACK_NONE) continue;
                        CHECK(kind > 0 && kind < GEMMA2__PACK_COUNT, "%s: pack kind %d", k.name, kind);
                        bytes = gemma2__pack_bytes(kind, T, K);
                        x = (float *)malloc((size_t)T * K * sizeof(float));
                        p1 = (uint8_t *)malloc(bytes); p2 = (uint8_t *)malloc(bytes);
                        for (i = 0; i < (size_t)T * K; i++) x[i] = kern_rand() * (i % 5 == 0 ? 1e20f : 3.0f);
                        memset(p1, 0xee, bytes); memset(p2, 0xee, bytes);
                        rows = gemma2__pack_rows(kind, T, K);
                        cut = rows / 2 + 1 > rows ? rows : rows / 2 + 1;
                        if (cut > 0) k.pack(p1, kind, x, T, K, 0, cut);
                        k.pack(p1, kind, x, T, K, cut, rows);
                        gemma2__pack_ref(p2, kind, x, T, K, 0, rows);
                        if (kind == GEMMA2__PACK_XT_F32 || kind == GEMMA2__PACK_XT_BF16) {
                            /* tokens are defined up to a multiple of 16 */
                            int bad = 0;
                            for (j = 0; j < rows && !bad; j++)
                                for (t = 0; t < ((T + 15) & ~15) && !bad; t++) {
                                    size_t o = gemma2__xt_off(rows, j, t) * 4;
                                    if (memcmp(p1 + o, p2 + o, 4)) { CHECK(0, "%s pack %d T %d K %d: row %d token %d differs", k.name, kind, T, K, j, t); bad = 1; }
                                }
                        } else
                            CHECK(!memcmp(p1, p2, bytes), "%s pack %d T %d K %d differs from the reference", k.name, kind, T, K);
                        free(x); free(p1); free(p2);
                    }
    }
}

/* A token's outputs must not depend on which other tokens share the call, or results would
   change with the prompt's chunking. Bit-exact for every set and shape, with one documented
   exception: a token alone may take another kernel (the matrix-vector one) that sums in
   another order than the prefill tile; there it is compared with a tolerance, and
   bit-exactness is asked of every call of >= 2 tokens. */
static void kern_test_matmul_consistent(void)
{
    static const int Ks[] = {5, 16, 33, 100, 2304 + 7};
    int s, f, ki, cb, T = 7, rows = 37, t, r;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
        for (f = 0; f < GEMMA2__WF_COUNT; f++)
            for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++)
                for (cb = 0; cb < 2; cb++) {
                    int K = Ks[ki], bad = 0, kind_all, kind_one;
                    size_t i, nw = (size_t)rows * K;
                    float *wf = (float *)malloc(nw * sizeof(float)), *x = (float *)malloc((size_t)T * K * sizeof(float));
                    void *w_data = kern_weights(f, rows, K, wf);
                    float *yall = (float *)malloc((size_t)T * rows * sizeof(float)), *y1 = (float *)malloc((size_t)2 * rows * sizeof(float));
                    float *x2 = (float *)malloc((size_t)2 * K * sizeof(float));
                    void *buf = malloc(gemma2__pack_bytes_max(T, K));
                    gemma2__mat w;
                    gemma2__matmul_args a;
                    for (i = 0; i < (size_t)T * K; i++) x[i] = kern_rand();
                    w.data = w_data; w.format = f; w.rows = rows; w.cols = K;
                    memset(&a, 0, sizeof a);
                    a.y = yall; a.ldy = rows; a.x = x; a.T = T; a.w = &w;
                    kind_all = kern_pack(&k, &a, buf, cb);
                    gemma2__matmul_for(&k, f)(&a, 0, rows);
                    for (t = 0; t < T && !bad; t++) {
                        /* alone */
                        memset(&a, 0, sizeof a);
                        a.y = y1; a.ldy = rows; a.x = x + (size_t)t * K; a.T = 1; a.w = &w;
                        kind_one = kern_pack(&k, &a, buf, cb);
                        gemma2__matmul_for(&k, f)(&a, 0, rows);
                        for (r = 0; r < rows && !bad; r++) {
                            float got = y1[r], want = yall[(size_t)t * rows + r];
                            int same = kind_all != kind_one ? fabsf(got - want) <= (kind_all == GEMMA2__PACK_XT_BF16 ? 1e-4f : 1e-5f) * sqrtf((float)K) * 2.0f
                                                            : memcmp(&got, &want, sizeof(float)) == 0;
                            if (!same) {
                                CHECK(0, "%s %s K %d compute_bf16 %d: token %d row %d alone %.9g, in a batch %.9g", k.name, gemma2__wformat_of(f)->name, K, cb, t, r, got, want);
                                bad = 1;
                            }
                        }
                        /* with another partner: token t first, then token (t + 3) % T */
                        memcpy(x2, x + (size_t)t * K, (size_t)K * sizeof(float));
                        memcpy(x2 + K, x + (size_t)((t + 3) % T) * K, (size_t)K * sizeof(float));
                        memset(&a, 0, sizeof a);
                        a.y = y1; a.ldy = rows; a.x = x2; a.T = 2; a.w = &w;
                        kern_pack(&k, &a, buf, cb);
                        gemma2__matmul_for(&k, f)(&a, 0, rows);
                        for (r = 0; r < rows && !bad; r++)
                            if (memcmp(&y1[r], &yall[(size_t)t * rows + r], sizeof(float)) != 0) {
                                CHECK(0, "%s %s K %d compute_bf16 %d: token %d row %d in a pair %.9g, in a batch %.9g", k.name, gemma2__wformat_of(f)->name, K, cb, t, r,
                                      y1[r], yall[(size_t)t * rows + r]);
                                bad = 1;
                            }
                    }
                    free(wf); free(x); free(w_data); free(yall); free(y1); free(x2); free(buf);
                }
    }
}

/* A batch's one-token sessions (batch_lone): T tokens in one call with lone = 1 give, bit for
   bit, what each gives alone, on every set and format that declares it, at widths on both
   sides of x3_min_cols (0: every width takes X3 where the set has it), odd row counts and
   token counts past the kernels' groups of 4. */
static void kern_test_matmul_lone(void)
{
    static const int Ks[] = {5, 33, 100, 2304 + 7}, Ts[] = {2, 3, 4, 5, 8, 9};
    int s, f, ki, ti, cb, x3, rows = 37, t, r, n_lone = 0;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
        for (x3 = 0; x3 < 2; x3++) {
            if (x3) k.x3_min_cols = 0;
            for (f = 0; f < GEMMA2__WF_COUNT; f++) {
                if (!k.batch_lone[f]) continue;
                for (ki = 0; ki < (int)(sizeof Ks / sizeof Ks[0]); ki++)
                    for (ti = 0; ti < (int)(sizeof Ts / sizeof Ts[0]); ti++)
                        for (cb = 0; cb < 2; cb++) {
                            int K = Ks[ki], T = Ts[ti], bad = 0;
                            size_t i, nw = (size_t)rows * K;
                            float *wf = (float *)malloc(nw * sizeof(float)), *x = (float *)malloc((size_t)T * K * sizeof(float));
                            void *w_data = kern_weights(f, rows, K, wf);
                            float *yall = (float *)malloc((size_t)T * rows * sizeof(float)), *y1 = (float *)malloc((size_t)rows * sizeof(float));
                            void *buf = malloc(gemma2__pack_bytes_max(T, K));
                            gemma2__mat w;
                            gemma2__matmul_args a;
                            for (i = 0; i < (size_t)T * K; i++) x[i] = kern_rand();
                            w.data = w_data; w.format = f; w.rows = rows; w.cols = K;
                            memset(&a, 0, sizeof a);
                            a.y = yall; a.ldy = rows; a.x = x; a.T = T; a.w = &w; a.lone = 1;
                            kern_pack(&k, &a, buf, cb);
                            /* rows in two pieces, as threads split them */
                            gemma2__matmul_for(&k, f)(&a, 0, 16);
                            gemma2__matmul_for(&k, f)(&a, 16, rows);
                            n_lone++;
                            for (t = 0; t < T && !bad; t++) {
                                memset(&a, 0, sizeof a);
                                a.y = y1; a.ldy = rows; a.x = x + (size_t)t * K; a.T = 1; a.w = &w;
                                kern_pack(&k, &a, buf, cb);
                                gemma2__matmul_for(&k, f)(&a, 0, rows);
                                for (r = 0; r < rows && !bad; r++)
                                    if (memcmp(&y1[r], &yall[(size_t)t * rows + r], sizeof(float)) != 0) {
                                        CHECK(0, "%s %s K %d T %d compute_bf16 %d x3 %d: token %d row %d alone %.9g, lone in %d %.9g", k.name,
                                              gemma2__wformat_of(f)->name, K, T, cb, x3, t, r, y1[r], T, yall[(size_t)t * rows + r]);
                                        bad = 1;
                                    }
                            }
                            free(wf); free(x); free(w_data); free(yall); free(y1); free(buf);
                        }
            }
        }
    }
    if (getenv("GEMMA2_TEST_VERBOSE")) fprintf(stderr, "      %d lone calls checked\n", n_lone);
}

static int kern_close(float got, float want, float rel, float abs_tol)
{
    return fabsf(got - want) <= rel * fabsf(want) + abs_tol;
}

static void kern_test_vector_ops(void)
{
    static const int Ns[] = {1, 3, 8, 15, 16, 17, 33, 100, 2304, 2305};
    int s, ni, i;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels ks, *k = &ks;
        if (!kern_get(s, &ks)) continue;
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

/* The pooled helpers the forward pass and the loader use: pack + matmul over 3 threads equal
   the same on one thread, bit for bit (rows and pack pieces split differently). */
static void kern_test_pooled_helpers(void)
{
    gemma2__kernels k;
    gemma2__pool *p = gemma2__pool_new(3);
    int rows = 1000, K = 77, T = 3, i, bad = 0, cb;
    size_t n = ((size_t)1 << 21) + 5;
    uint16_t *wb = (uint16_t *)malloc((size_t)rows * K * sizeof(uint16_t));
    float *x = (float *)malloc((size_t)T * K * sizeof(float)), *y = (float *)malloc((size_t)T * rows * sizeof(float));
    float *yr = (float *)malloc((size_t)T * rows * sizeof(float)), *src = (float *)malloc(n * sizeof(float));
    uint16_t *d1 = (uint16_t *)malloc(n * sizeof(uint16_t));
    void *buf = malloc(gemma2__pack_bytes_max(T, K));
    gemma2__mat w;
    gemma2__matmul_args a;
    gemma2__kernels_select(GEMMA2_KERNELS_AUTO, &k);
    for (i = 0; i < rows * K; i++) wb[i] = gemma2__f32_to_bf16(kern_rand());
    for (i = 0; i < T * K; i++) x[i] = kern_rand();
    w.data = wb; w.format = GEMMA2__WF_BF16; w.rows = rows; w.cols = K;
    for (cb = 0; cb < 2; cb++) {
        memset(&a, 0, sizeof a);
        a.y = y; a.ldy = rows; a.x = x; a.T = T; a.w = &w;
        gemma2__pack(p, &k, &a, 1, buf, cb);
        gemma2__matmul_n(p, &k, &a, 1);
        a.y = yr;
        gemma2__pack(NULL, &k, &a, 1, buf, cb);
        gemma2__matmul_n(NULL, &k, &a, 1);
        for (i = 0; i < T * rows && !bad; i++) if (memcmp(&y[i], &yr[i], 4)) { CHECK(0, "pooled matmul at %d: %g vs %g", i, y[i], yr[i]); bad = 1; }
    }
    for (i = 0; i < (int)n; i++) src[i] = kern_rand() * 100.0f;
    gemma2__convert_f32_to_bf16(p, d1, src, n);
    for (i = 0; i < (int)n; i++) if (d1[i] != gemma2__f32_to_bf16(src[i])) { CHECK(0, "convert at %d", i); break; }
    gemma2__pool_free(p);
    free(wb); free(x); free(y); free(yr); free(src); free(d1); free(buf);
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
    gemma2__kernels scalar;
    gemma2__kernels_init_scalar(&scalar);
    for (s_ = 0; s_ < GEMMA2__N_KERNEL_SETS; s_++) {
        gemma2__kernels ks, *k = &ks;
        if (!kern_get(s_, &ks)) continue;
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
                    gemma2__att_scores_generic(&scalar, s2, lds, q, group, hd, K, n, 0.3f);
                    bad = kern_att_differs(k, "att_scores", hd, group, n, s1, s2, group * lds, 1e-5f * sqrtf((float)hd));
                    k->att_values(k, o1, s1, lds, group, hd, V, n);
                    gemma2__att_values_generic(&scalar, o2, s1, lds, group, hd, V, n);
                    bad = bad || kern_att_differs(k, "att_values", hd, group, n, o1, o2, group * hd + 1, 1e-5f * (float)n);
                    if (k->att_scores_bf16) { /* bf16 rows read directly == the reference on the widened rows */
                        uint16_t *Kb = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)n * hd), *Vb = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)n * hd);
                        gemma2__to_bf16_scalar(Kb, K, n * hd);
                        gemma2__to_bf16_scalar(Vb, V, n * hd);
                        gemma2__from_bf16_scalar(K, Kb, n * hd);
                        gemma2__from_bf16_scalar(V, Vb, n * hd);
                        for (i = 0; i < group * lds; i++) s1[i] = s2[i] = -5.0f;
                        k->att_scores_bf16(k, s1, lds, q, group, hd, Kb, n, 0.3f);
                        gemma2__att_scores_generic(&scalar, s2, lds, q, group, hd, K, n, 0.3f);
                        bad = bad || kern_att_differs(k, "att_scores_bf16", hd, group, n, s1, s2, group * lds, 1e-5f * sqrtf((float)hd));
                        for (i = 0; i < group * hd; i++) o1[i] = o2[i] = kern_rand();
                        k->att_values_bf16(k, o1, s1, lds, group, hd, Vb, n);
                        gemma2__att_values_generic(&scalar, o2, s1, lds, group, hd, V, n);
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
    }
    /* the exact three-part bf16 split (the reference layout the sets are held to): exact */
    for (ni = 1; ni <= 100; ni += 33) {
        float x[100];
        uint16_t b3[384];
        int bad = 0;
        for (i = 0; i < ni; i++) x[i] = kern_rand() * (i % 3 == 0 ? 1e30f : i % 3 == 1 ? 1e-25f : 1.0f); /* within 2^-100 .. 2^127 */
        gemma2__pack_ref(b3, GEMMA2__PACK_X3, x, 1, ni, 0, 1);
        for (i = 0; i < ni && !bad; i++) {
            const uint16_t *blk = b3 + (size_t)(i / 32) * 96 + i % 32;
            float back = gemma2__bf16_to_f32(blk[0]) + gemma2__bf16_to_f32(blk[32]) + gemma2__bf16_to_f32(blk[64]);
            if (back != x[i]) { CHECK(0, "x3 split: %.9g split into parts summing to %.9g", x[i], back); bad = 1; }
        }
    }
}

/* A key's score must not depend on how many keys are scored in the call (the number changes
   with the chunking of a prompt, and so would the logits): every set's att_scores over the
   first n keys gives, bit for bit, the first n scores of a call over more keys. */
static void kern_test_att_scores_consistent(void)
{
    static const int hds[] = {16, 17, 64, 256}, groups[] = {1, 2, 3, 4, 6, 8};
    enum { NK = 40, LDS = 48 };
    int s, hi, gi, n, i, g;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
        for (hi = 0; hi < 4; hi++)
            for (gi = 0; gi < 6; gi++) {
                int hd = hds[hi], group = groups[gi], bad = 0;
                float *q = (float *)malloc(sizeof(float) * (size_t)group * hd), *K = (float *)malloc(sizeof(float) * NK * (size_t)hd);
                float *all = (float *)malloc(sizeof(float) * (size_t)group * LDS), *part = (float *)malloc(sizeof(float) * (size_t)group * LDS);
                uint16_t *Kb = (uint16_t *)malloc(sizeof(uint16_t) * NK * (size_t)hd);
                for (i = 0; i < group * hd; i++) q[i] = kern_rand();
                for (i = 0; i < NK * hd; i++) K[i] = kern_rand();
                gemma2__to_bf16_scalar(Kb, K, NK * hd);
                k.att_scores(&k, all, LDS, q, group, hd, K, NK, 0.3f);
                for (n = 1; n < NK && !bad; n++) {
                    k.att_scores(&k, part, LDS, q, group, hd, K, n, 0.3f);
                    for (g = 0; g < group && !bad; g++)
                        for (i = 0; i < n && !bad; i++)
                            if (memcmp(&part[g * LDS + i], &all[g * LDS + i], sizeof(float))) {
                                CHECK(0, "%s att_scores hd %d group %d: key %d of query %d is %.9g over %d keys, %.9g over %d", k.name, hd, group, i, g,
                                      part[g * LDS + i], n, all[g * LDS + i], NK);
                                bad = 1;
                            }
                }
                if (k.att_scores_bf16) {
                    k.att_scores_bf16(&k, all, LDS, q, group, hd, Kb, NK, 0.3f);
                    for (n = 1; n < NK && !bad; n++) {
                        k.att_scores_bf16(&k, part, LDS, q, group, hd, Kb, n, 0.3f);
                        for (g = 0; g < group && !bad; g++)
                            for (i = 0; i < n && !bad; i++)
                                if (memcmp(&part[g * LDS + i], &all[g * LDS + i], sizeof(float))) {
                                    CHECK(0, "%s att_scores_bf16 hd %d group %d: key %d of query %d differs over %d keys", k.name, hd, group, i, g, n);
                                    bad = 1;
                                }
                    }
                }
                free(q); free(K); free(all); free(part); free(Kb);
            }
    }
}

/* 0 finite, 1 +inf, 2 -inf, 3 NaN: what the kernel sets must agree on beside the values. */
static int kern_class(float v) { return v != v ? 3 : v == INFINITY ? 1 : v == -INFINITY ? 2 : 0; }

/* Soft-capping on every set against the scalar reference (cap tanh(x / cap) with the C
   library's tanhf), over caps far beyond Gemma's 30 and 50 (the config accepts up to 1e9) and
   x from subnormal to FLT_MAX, around the points where an implementation may switch formulas.
   The bound, relative to the reference: the scalar rounds x / cap once and tanhf is within an
   ulp or so (together ~2e-7); a SIMD set rounds 1 / cap and x (1 / cap) (~1.2e-7), its tanh is
   within ~2.5e-7 (a polynomial for small arguments, (1 - e) / (1 + e) with e = exp(-2|v|) <= 0.29
   otherwise, so no cancellation), and the final product by cap rounds once in each (~1.2e-7):
   about 7e-7 in the worst case, so 1e-6. Where v = x / cap is below FLT_MIN both round it to a
   multiple of 2^-149, so there the results only agree to cap 2^-148 in absolute terms. Zeros
   keep their sign. The reference itself is held to the same bound against double precision. */
static void kern_test_softcap_range(void)
{
    static const float caps[] = {1e-3f, 0.1f, 1.0f, 30.0f, 50.0f, 1e3f, 1e6f, 1e9f, 1e12f, 1e20f, 1e30f};
    static const float fr[] = {1e-30f, 1e-12f, 1e-7f, 1e-4f, 1e-3f, 0.01f, 0.1f, 0.3f, 0.5f, 0.55f, 0.6f, 0.62f, 0.625f,
                               0.63f, 0.7f, 1.0f, 1.5f, 2.0f, 3.0f, 5.0f, 8.0f, 9.0f, 10.0f, 20.0f, 50.0f, 1e3f, 1e10f};
    static const float abs_x[] = {0.0f, 1e-45f, 1e-40f, 1.1754944e-38f, 1e-30f, 1e-10f, 1.0f, 1e10f, 1e30f, 3.4028235e38f, INFINITY};
    enum { NX = 2 * (27 + 11) + 64 };
    int s, ci, i, off, check_ref = 1;
    float x[NX], y1[NX + 1], y2[NX + 1];
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        float worst = 0;
        if (!kern_get(s, &k)) continue;
        for (ci = 0; ci < (int)(sizeof caps / sizeof caps[0]); ci++) {
            float cap = caps[ci];
            int n = 0, bad = 0;
            for (i = 0; i < (int)(sizeof fr / sizeof fr[0]); i++) { x[n++] = fr[i] * cap; x[n++] = -fr[i] * cap * 1.0001f; }
            for (i = 0; i < (int)(sizeof abs_x / sizeof abs_x[0]); i++) { x[n++] = abs_x[i]; x[n++] = -abs_x[i]; }
            for (; n < NX; n++) x[n] = kern_rand() * cap * (n % 3 == 0 ? 0.01f : n % 3 == 1 ? 1.0f : 4.0f);
            for (off = 0; off < 3; off++) { /* the same values in other lanes and in the tails */
                int m = NX - off;
                memcpy(y1, x + off, (size_t)m * sizeof(float));
                memcpy(y2, x + off, (size_t)m * sizeof(float));
                y1[m] = y2[m] = -7.0f;
                k.softcap(y1, m, cap);
                gemma2__softcap_scalar(y2, m, cap);
                CHECK(y1[m] == -7.0f, "%s softcap wrote past n", k.name);
                for (i = 0; i < m && !bad; i++) {
                    float tol = 1e-6f * fabsf(y2[i]) + ldexpf(cap, -148), d = fabsf(y1[i] - y2[i]);
                    double truth = (double)cap * tanh((double)x[off + i] / (double)cap);
                    if (kern_class(y1[i]) != kern_class(y2[i]) || !(d <= tol) || (y2[i] == 0 && signbit(y1[i]) != signbit(y2[i]))) {
                        CHECK(0, "%s softcap cap %g x %.9g: %.9g, reference %.9g", k.name, cap, x[off + i], y1[i], y2[i]);
                        bad = 1;
                    }
                    if (check_ref && !(fabs((double)y2[i] - truth) <= 1e-6 * fabs(truth) + ldexp((double)cap, -148))) {
                        CHECK(0, "reference softcap cap %g x %.9g: %.9g, in double %.17g", cap, x[off + i], y2[i], truth);
                        bad = 1;
                    }
                    if (y2[i] != 0 && d / fabsf(y2[i]) > worst) worst = d / fabsf(y2[i]);
                }
            }
        }
        printf("      %s softcap: worst relative difference from the reference %.3g\n", k.name, worst);
        check_ref = 0; /* once is enough */
    }
}

/* NaN and infinities: every set gives, element for element, the class (finite, +inf, -inf,
   NaN) the scalar reference gives, so a broken model looks the same on every set. The
   reference's rules: NaN propagates everywhere it can reach (softmax: one NaN makes the row
   NaN; rmsnorm: the whole vector; a product: its outputs); an infinite score makes a softmax
   row NaN (inf - inf); soft-capping maps +-inf to +-cap. */
static void kern_test_nonfinite(void)
{
    const float specials[] = {NAN, -NAN, INFINITY, -INFINITY, 1e30f, 3.4028235e38f};
    static const int Ns[] = {1, 5, 16, 17, 40};
    int s, ni, si, pi, i;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels ks, *k = &ks;
        gemma2__kernels ref;
        if (!kern_get(s, &ks)) continue;
        gemma2__kernels_init_scalar(&ref);
        for (ni = 0; ni < (int)(sizeof Ns / sizeof Ns[0]); ni++)
            for (si = 0; si < (int)(sizeof specials / sizeof specials[0]); si++)
                for (pi = 0; pi < 3; pi++) {
                    int n = Ns[ni], pos = pi == 0 ? 0 : pi == 1 ? n / 2 : n - 1, op, bad = 0;
                    float sp = specials[si], a[40], b[40], y1[41], y2[41], d1, d2;
                    const char *what = "";
                    for (i = 0; i < n; i++) { a[i] = kern_rand() * 3.0f; b[i] = kern_rand(); }
                    for (op = 0; op < 11 && !bad; op++) {
                        int m = n;
                        for (i = 0; i < n; i++) y1[i] = y2[i] = a[i];
                        y1[n] = y2[n] = -7.0f;
                        switch (op) {
                        case 0: what = "softcap 30"; y1[pos] = y2[pos] = sp; k->softcap(y1, n, 30.0f); ref.softcap(y2, n, 30.0f); break;
                        case 1: what = "softcap 1e6"; y1[pos] = y2[pos] = sp; k->softcap(y1, n, 1e6f); ref.softcap(y2, n, 1e6f); break;
                        case 2: what = "softmax"; y1[pos] = y2[pos] = sp; k->softmax(y1, n); ref.softmax(y2, n); break;
                        case 3: what = "rmsnorm x"; a[pos] = sp; k->rmsnorm(y1, a, b, n, 1e-6f); ref.rmsnorm(y2, a, b, n, 1e-6f); a[pos] = 1; break;
                        case 4: what = "rmsnorm w"; b[pos] = sp; k->rmsnorm(y1, a, b, n, 1e-6f); ref.rmsnorm(y2, a, b, n, 1e-6f); b[pos] = 1; break;
                        case 5: what = "gelu_mul g"; y1[pos] = y2[pos] = sp; k->gelu_mul(y1, b, n); ref.gelu_mul(y2, b, n); break;
                        case 6: what = "gelu_mul u"; b[pos] = sp; k->gelu_mul(y1, b, n); ref.gelu_mul(y2, b, n); b[pos] = 0.5f; break;
                        case 7: what = "axpy"; b[pos] = sp; k->axpy(y1, 0.37f, b, n); ref.axpy(y2, 0.37f, b, n); b[pos] = 0.5f; break;
                        case 8: what = "axpy a"; k->axpy(y1, sp, b, n); ref.axpy(y2, sp, b, n); break;
                        case 9: /* dot: one result */
                            what = "dot"; a[pos] = sp; d1 = k->dot(a, b, n); d2 = ref.dot(a, b, n); a[pos] = 1;
                            y1[0] = d1; y2[0] = d2; m = 1; break;
                        default: /* rope: pairs, two heads when n allows */
                            if (n < 2) { m = 0; break; }
                            {
                                int hd = n % 2 ? n - 1 : n, half = hd / 2;
                                float cs[40];
                                for (i = 0; i < half; i++) { cs[i] = cosf(0.3f * (float)i); cs[half + i] = sinf(0.3f * (float)i); }
                                what = "rope"; y1[pos % hd] = y2[pos % hd] = sp;
                                k->rope(y1, 1, hd, cs); ref.rope(y2, 1, hd, cs);
                                m = hd;
                            }
                            break;
                        }
                        for (i = 0; i < m && !bad; i++)
                            if (kern_class(y1[i]) != kern_class(y2[i])) {
                                CHECK(0, "%s %s n %d: %g at %d gives %g at %d, the reference %g", k->name, what, n, sp, pos, y1[i], i, y2[i]);
                                bad = 1;
                            }
                        if (op != 9 && y1[n] != -7.0f) { CHECK(0, "%s %s wrote past n", k->name, what); bad = 1; }
                    }
                }
        /* attention: a NaN or infinity in a query, a key, a score or a value */
        for (si = 0; si < (int)(sizeof specials / sizeof specials[0]); si++) {
            enum { HD = 20, G = 3, NK = 21, LDS = 24 };
            float q[G * HD], K[NK * HD], V[NK * HD], s1[G * LDS], s2[G * LDS], o1[G * HD], o2[G * HD];
            int where, bad = 0;
            for (where = 0; where < 4 && !bad; where++) {
                for (i = 0; i < G * HD; i++) q[i] = kern_rand();
                for (i = 0; i < NK * HD; i++) { K[i] = kern_rand(); V[i] = kern_rand(); }
                for (i = 0; i < G * LDS; i++) s1[i] = s2[i] = 0.25f;
                for (i = 0; i < G * HD; i++) o1[i] = o2[i] = 0;
                if (where == 0) q[HD + 7] = specials[si];
                if (where == 1) K[17 * HD + 3] = specials[si];
                if (where == 3) V[9 * HD + 19] = specials[si];
                k->att_scores(k, s1, LDS, q, G, HD, K, NK, 0.3f);
                ref.att_scores(&ref, s2, LDS, q, G, HD, K, NK, 0.3f);
                if (where == 2) s1[LDS + 11] = s2[LDS + 11] = specials[si];
                k->att_values(k, o1, s1, LDS, G, HD, V, NK);
                ref.att_values(&ref, o2, s2, LDS, G, HD, V, NK);
                for (i = 0; i < G * LDS && !bad; i++)
                    if (i % LDS < NK && kern_class(s1[i]) != kern_class(s2[i])) { CHECK(0, "%s att_scores, %g in place %d: score %d %g vs %g", k->name, specials[si], where, i, s1[i], s2[i]); bad = 1; }
                for (i = 0; i < G * HD && !bad; i++)
                    if (kern_class(o1[i]) != kern_class(o2[i])) { CHECK(0, "%s att_values, %g in place %d: out %d %g vs %g", k->name, specials[si], where, i, o1[i], o2[i]); bad = 1; }
            }
        }
    }
}

/* A NaN in the activations or the weights of a matrix product reaches its outputs on every
   set and format as in the format's reference product (for Q8 and Q4 activations: the whole
   block's scale becomes NaN, so every output of that token). */
static void kern_test_nonfinite_matmul(void)
{
    static const int Ts[] = {1, 3, 20};
    int s, f, ti, cb, where;
    for (s = 0; s < GEMMA2__N_KERNEL_SETS; s++) {
        gemma2__kernels k;
        if (!kern_get(s, &k)) continue;
        for (f = 0; f < GEMMA2__WF_COUNT; f++)
            for (ti = 0; ti < 3; ti++)
                for (cb = 0; cb < 2; cb++)
                    for (where = 0; where < 2; where++) {
                        int rows = 37, K = 300, T = Ts[ti], ldy = rows, bad = 0;
                        size_t i;
                        float *wf = (float *)malloc((size_t)rows * K * sizeof(float)), *x = (float *)malloc((size_t)T * K * sizeof(float));
                        float *y = (float *)malloc((size_t)T * ldy * sizeof(float)), *yr = (float *)malloc((size_t)T * ldy * sizeof(float));
                        void *w_data, *buf = malloc(gemma2__pack_bytes_max(T, K));
                        gemma2__mat w;
                        gemma2__matmul_args a, ar;
                        for (i = 0; i < (size_t)T * K; i++) x[i] = kern_rand();
                        x[(size_t)(T / 2) * K + 77] = NAN; /* one token's activation */
                        w_data = kern_weights(f, rows, K, wf);
                        if (where == 1) { /* a weight (plain formats; quantized ones carry it in a block scale) */
                            size_t at = (size_t)11 * K + 100;
                            if (f == GEMMA2__WF_F32) ((float *)w_data)[at] = NAN;
                            else if (f == GEMMA2__WF_BF16 || f == GEMMA2__WF_F16) ((uint16_t *)w_data)[at] = 0x7e00u;
                            else {
                                uint16_t h = 0x7e00u; /* the scale of row 11's fourth block */
                                memcpy((uint8_t *)w_data + 11 * gemma2__row_bytes(f, K) + 3 * (size_t)gemma2__wformat_of(f)->block_bytes, &h, 2);
                            }
                            x[(size_t)(T / 2) * K + 77] = 0.5f;
                        }
                        w.data = w_data; w.format = f; w.rows = rows; w.cols = K;
                        memset(&a, 0, sizeof a);
                        a.y = y; a.ldy = ldy; a.x = x; a.T = T; a.w = &w;
                        kern_pack(&k, &a, buf, cb);
                        ar = a; ar.y = yr; ar.xp = NULL; ar.xp_kind = GEMMA2__PACK_NONE;
                        gemma2__matmul_for(&k, f)(&a, 0, rows);
                        gemma2__wformat_of(f)->matmul_ref(&ar, 0, rows);
                        for (i = 0; i < (size_t)T * ldy && !bad; i++)
                            if (kern_class(y[i]) != kern_class(yr[i]) || (where == 0 && (int)(i / ldy) == T / 2 && kern_class(yr[i]) != 3)) {
                                CHECK(0, "%s %s T %d compute_bf16 %d NaN in the %s: y[%d][%d] %g, reference %g", k.name, gemma2__wformat_of(f)->name, T, cb,
                                      where ? "weights" : "activations", (int)(i / ldy), (int)(i % ldy), y[i], yr[i]);
                                bad = 1;
                            }
                        free(wf); free(x); free(y); free(yr); free(w_data); free(buf);
                    }
    }
}

void suite_kernels(void)
{
    g2t_run("kernels/selection", kern_test_selection);
    g2t_run("kernels/f16", kern_test_f16);
    g2t_run("kernels/q8_quantize", kern_test_q8_quantize);
    g2t_run("kernels/from_float", kern_test_from_float);
    g2t_run("kernels/pack", kern_test_pack);
    g2t_run("kernels/matmul", kern_test_matmul);
    g2t_run("kernels/matmul_q_paths", kern_test_matmul_q_paths);
    g2t_run("kernels/matmul_q", kern_test_matmul_q);
    g2t_run("kernels/matmul_consistent", kern_test_matmul_consistent);
    g2t_run("kernels/matmul_lone", kern_test_matmul_lone);
    g2t_run("kernels/vector_ops", kern_test_vector_ops);
    g2t_run("kernels/attention", kern_test_attention);
    g2t_run("kernels/att_scores_consistent", kern_test_att_scores_consistent);
    g2t_run("kernels/softcap_range", kern_test_softcap_range);
    g2t_run("kernels/nonfinite", kern_test_nonfinite);
    g2t_run("kernels/nonfinite_matmul", kern_test_nonfinite_matmul);
    g2t_run("kernels/pool", kern_test_pool);
    g2t_run("kernels/pooled_helpers", kern_test_pooled_helpers);
}
