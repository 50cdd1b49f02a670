/* libFuzzer target: tokenize, detokenize and streaming detokenization on the real Gemma tokenizer, in both file
   formats, with arbitrary bytes, ids and flags, checking what section 1.4 promises:
     - every id is in [0, vocab); the count needed does not depend on max_ids, and no more than max_ids are written;
     - decode(encode(x)) == x for any bytes, with or without GEMMA2_TOKENIZE_SPECIAL (special-token strings are
       matched and written back as themselves), where a literal U+2581 comes back as ' ', after the <bos> that
       GEMMA2_TOKENIZE_ADD_BOS puts first;
     - GEMMA2_DETOKENIZE_UTF8 gives valid UTF-8;
     - gemma2_detok_push... then gemma2_detok_flush, concatenated, equal gemma2_detokenize with the same flags
       plus GEMMA2_DETOKENIZE_UTF8; a too small buffer leaves the stream unchanged.
   Input: byte 0 holds the choices (bit 0 tokenizer.model, bit 1 SPECIAL, bit 2 ADD_BOS, bits 3-4 the
   detokenize flags, bit 5: the rest is ids, 3 bytes each, instead of text), then the text or the ids. */
#include "fuzz_common.h"
#include "fuzz_real_tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    fz_load_real_tokenizers();
    return 0;
}

/* 1 if s[0..n) is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static int fz_valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], need, lo = 0x80, hi = 0xbf, k;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c >= 0xe0 && c <= 0xef) { need = 2; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
        else if (c >= 0xf0 && c <= 0xf4) { need = 3; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
        else return 0;
        if (n - i - 1 < need) return 0;
        for (k = 1; k <= need; k++) {
            unsigned b = s[i + k];
            if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xbf)) return 0;
        }
        i += need + 1;
    }
    return 1;
}

/* Detokenizes ids[0..n) with flags; checks the size query and the streaming detokenizer against it. */
static void fz_detok_checks(const gemma2_model *m, const int32_t *ids, int n, int flags, int all_valid)
{
    int need = gemma2_detokenize(m, ids, n, NULL, 0, flags), i, got, total = 0;
    char *out, *stream, small[3];
    gemma2_detok d;
    if (!all_valid) { FZ_CHECK(need < 0); return; }
    FZ_CHECK(need >= 0);
    out = (char *)malloc((size_t)need + 1);
    FZ_CHECK(gemma2_detokenize(m, ids, n, out, (size_t)need, flags) == need);
    if (flags & GEMMA2_DETOKENIZE_UTF8) FZ_CHECK(fz_valid_utf8((const unsigned char *)out, (size_t)need));
    free(out);
    /* the stream, against the whole with GEMMA2_DETOKENIZE_UTF8 */
    need = gemma2_detokenize(m, ids, n, NULL, 0, flags | GEMMA2_DETOKENIZE_UTF8);
    FZ_CHECK(need >= 0);
    out = (char *)malloc((size_t)need + 1);
    stream = (char *)malloc((size_t)need + 512);
    FZ_CHECK(gemma2_detokenize(m, ids, n, out, (size_t)need, flags | GEMMA2_DETOKENIZE_UTF8) == need);
    gemma2_detok_init(&d, m, flags);
    for (i = 0; i <= n; i++) {
        gemma2_detok before = d;
        /* first into a buffer too small for most tokens: then nothing is written and the state stays */
        got = i < n ? gemma2_detok_push(&d, ids[i], small, sizeof small) : gemma2_detok_flush(&d, small, sizeof small);
        FZ_CHECK(got >= 0);
        if (got > (int)sizeof small) {
            FZ_CHECK(before.n_pend == d.n_pend && before.need == d.need && !memcmp(before.pend, d.pend, sizeof d.pend) &&
                     before.lo == d.lo && before.hi == d.hi && before.flags == d.flags);
            got = i < n ? gemma2_detok_push(&d, ids[i], stream + total, 256) : gemma2_detok_flush(&d, stream + total, 256);
            FZ_CHECK(got >= 0 && got <= 256);
        } else if (got > 0) memcpy(stream + total, small, (size_t)got);
        total += got;
        FZ_CHECK(total <= need);
    }
    FZ_CHECK(total == need && !memcmp(stream, out, (size_t)need));
    free(out);
    free(stream);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const gemma2_model *m;
    int sel, V, detok_flags;
    if (size < 1) return 0;
    sel = data[0];
    m = fz_tok[sel & 1];
    V = gemma2_vocab_size(m);
    detok_flags = (sel >> 3) & 3;
    data++;
    size--;
    if (sel & 32) { /* ids, 3 bytes each: mostly in range, some out of it */
        int n = (int)(size / 3), i, valid = 1;
        int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + 1));
        for (i = 0; i < n; i++) {
            uint32_t v = (uint32_t)data[3 * i] | (uint32_t)data[3 * i + 1] << 8 | (uint32_t)data[3 * i + 2] << 16;
            ids[i] = v < 0xf00000 ? (int32_t)(v % (uint32_t)V) : (int32_t)(v - 0xf80000) * 4096; /* negative, or >= V */
            if (ids[i] < 0 || ids[i] >= V) valid = 0;
        }
        fz_detok_checks(m, ids, n, detok_flags, valid);
        free(ids);
    } else {
        const char *text = (const char *)data;
        int tflags = (sel & 2 ? GEMMA2_TOKENIZE_SPECIAL : 0) | (sel & 4 ? GEMMA2_TOKENIZE_ADD_BOS : 0);
        int n = gemma2_tokenize(m, text, size, NULL, 0, tflags), n2, i, skip, dn;
        int32_t *ids, *few;
        char *dec, *want;
        size_t wn = 0, j;
        FZ_CHECK(n >= 0);
        ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)n + 1);
        /* an exact-size buffer, and a short one: ASan catches a write past max_ids */
        FZ_CHECK(gemma2_tokenize(m, text, size, ids, n, tflags) == n);
        few = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n / 2) + 1);
        n2 = gemma2_tokenize(m, text, size, few, n / 2, tflags);
        FZ_CHECK(n2 == n);
        free(few);
        for (i = 0; i < n; i++) FZ_CHECK(ids[i] >= 0 && ids[i] < V);
        skip = 0;
        if (tflags & GEMMA2_TOKENIZE_ADD_BOS) { FZ_CHECK(n >= 1 && ids[0] == gemma2_token_bos(m)); skip = 1; }
        /* decode(encode(x)) == x, U+2581 as ' ' */
        want = (char *)malloc(size + 1);
        for (j = 0; j < size; j++) {
            if (j + 2 < size && !memcmp(text + j, "\xe2\x96\x81", 3)) { want[wn++] = ' '; j += 2; }
            else want[wn++] = text[j];
        }
        dn = gemma2_detokenize(m, ids + skip, n - skip, NULL, 0, 0);
        FZ_CHECK(dn >= 0);
        dec = (char *)malloc((size_t)dn + 1);
        FZ_CHECK(gemma2_detokenize(m, ids + skip, n - skip, dec, (size_t)dn, 0) == dn);
        if ((size_t)dn != wn || memcmp(dec, want, wn)) {
            fprintf(stderr, "round trip: %zu bytes in, %d bytes back (%s, flags %d)\n", wn, dn, sel & 1 ? "tokenizer.model" : "tokenizer.json", tflags);
            FZ_CHECK(!"decode(encode(x)) == x");
        }
        free(dec);
        free(want);
        fz_detok_checks(m, ids, n, detok_flags, 1);
        free(ids);
    }
    return 0;
}
