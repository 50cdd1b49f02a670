/* libFuzzer target: a tokenizer file read by gemma2_load_tokenizer, which tells tokenizer.json and a
   SentencePiece tokenizer.model apart by content. Built twice with FZ_TOKENIZER_FILE naming the file it is
   written to, so each corpus (tokenizer_json, tokenizer_model) keeps to its format. A file that loads is used:
   every piece looked up and found again, a fixed text and the start of the input tokenized and detokenized,
   streamed through gemma2_detok. Nothing is compared with a reference: any vocabulary must be safe to use. */
#include "fuzz_common.h"

#ifndef FZ_TOKENIZER_FILE
#define FZ_TOKENIZER_FILE "tokenizer.json"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    fz_tmpdir();
    return 0;
}

static void fz_use_text(const gemma2_model *m, const char *text, size_t len, int flags)
{
    int32_t ids[512];
    char out[4096];
    int n = gemma2_tokenize(m, text, len, ids, 512, flags), V = gemma2_vocab_size(m), i, k;
    gemma2_detok d;
    if (n < 0) return;
    if (n > 512) n = 512;
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            fprintf(stderr, "id %d of %d is %d, outside the vocabulary of %d (flags %d)\n", i, n, ids[i], V, flags);
            FZ_CHECK(!"ids in [0, vocab)");
        }
    k = gemma2_detokenize(m, ids, n, out, sizeof out, 0);
    (void)gemma2_detokenize(m, ids, n, out, 7, GEMMA2_DETOKENIZE_SKIP_CONTROL | GEMMA2_DETOKENIZE_UTF8);
    (void)k;
    gemma2_detok_init(&d, m, GEMMA2_DETOKENIZE_SKIP_CONTROL);
    for (i = 0; i < n; i++) (void)gemma2_detok_push(&d, ids[i], out, sizeof out);
    (void)gemma2_detok_flush(&d, out, sizeof out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char text[] = "Hello, world! <start_of_turn>user\n  tabs\t\tand \xe2\x96\x81 \xff\xfe caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 <bos>";
    gemma2_model *m;
    char err[256];
    int V, i;
    fz_write(FZ_TOKENIZER_FILE, data, size);
    m = gemma2_load_tokenizer(fz_path(FZ_TOKENIZER_FILE), err, sizeof err);
    if (!m) { fz_check_err(err); return 0; }
    V = gemma2_vocab_size(m);
    FZ_CHECK(V > 0);
    for (i = 0; i < V && i < 4096; i++) {
        size_t len = 0;
        const char *p = gemma2_token_piece(m, i, &len);
        if (p) {
            int32_t id = gemma2_token_id(m, p, len);
            FZ_CHECK(id >= 0 && id < V); /* a piece listed twice may give the other id */
        }
        (void)gemma2_token_is_special(m, i);
        (void)gemma2_token_is_control(m, i);
    }
    { size_t len; FZ_CHECK(gemma2_token_piece(m, V, &len) == NULL && gemma2_token_piece(m, -1, &len) == NULL); }
    FZ_CHECK(gemma2_token_bos(m) >= -1 && gemma2_token_bos(m) < V && gemma2_token_eos(m) >= -1 && gemma2_token_eos(m) < V);
    fz_use_text(m, text, sizeof text - 1, 0);
    fz_use_text(m, text, sizeof text - 1, GEMMA2_TOKENIZE_SPECIAL | GEMMA2_TOKENIZE_ADD_BOS);
    fz_use_text(m, (const char *)data, size < 256 ? size : 256, GEMMA2_TOKENIZE_SPECIAL);
    gemma2_free(m);
    return 0;
}
