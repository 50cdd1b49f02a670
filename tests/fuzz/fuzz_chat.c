/* libFuzzer target: gemma2_chat_render and gemma2_chat_tokenize with arbitrary roles and contents, on the real Gemma
   tokenizer (both formats), checking what section 1.5 and the README promise:
     - the two agree on which conversations are valid (GEMMA2_ERROR_CHAT_FORMAT from both or from neither);
     - for a valid one, gemma2_chat_tokenize gives the ids of gemma2_chat_render's text tokenized with
       GEMMA2_TOKENIZE_SPECIAL, provided no content holds a special-token string (those are plain text in
       gemma2_chat_tokenize, markers in the rendered text: the documented difference);
     - the sizes returned do not depend on the buffer given, and nothing is written past it.
   Input: byte 0 (bit 0 add_generation_prompt, bit 1 tokenizer.model), then messages separated by 0x00, each a role
   byte (user, model, assistant, system, another role, or: the role is the text up to the first 0x01) and the
   content. */
#include "fuzz_common.h"
#include "fuzz_real_tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    fz_load_real_tokenizers();
    return 0;
}

/* 1 if text holds a string that GEMMA2_TOKENIZE_SPECIAL matches as a special token. */
static int fz_has_special(const gemma2_model *m, const char *text)
{
    size_t len = strlen(text);
    int n = gemma2_tokenize(m, text, len, NULL, 0, GEMMA2_TOKENIZE_SPECIAL), i, found = 0;
    int32_t *ids;
    FZ_CHECK(n >= 0);
    ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)n + 1);
    FZ_CHECK(gemma2_tokenize(m, text, len, ids, n, GEMMA2_TOKENIZE_SPECIAL) == n);
    for (i = 0; i < n; i++) found |= gemma2_token_is_special(m, ids[i]);
    free(ids);
    return found;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const roles[6] = {"user", "model", "assistant", "system", "Assistant", "tool"};
    gemma2_message msgs[16];
    char *buf, *p, *end, *text;
    const gemma2_model *m;
    int n = 0, agp, r, t, i, special = 0, nt;
    int32_t *ids, *ids2;
    if (size < 1) return 0;
    agp = data[0] & 1;
    m = fz_tok[(data[0] >> 1) & 1];
    buf = (char *)malloc(size + 1);
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = 0;
    p = buf;
    end = buf + size - 1;
    while (p < end && n < 16) {
        unsigned char rb = (unsigned char)*p++;
        char *c = p, *one;
        if (rb % 8 < 6) msgs[n].role = roles[rb % 8];
        else if (rb % 8 == 6) msgs[n].role = "user";
        else { /* a role of its own */
            one = (char *)memchr(c, 1, strlen(c));
            msgs[n].role = c;
            if (one) { *one = 0; c = one + 1; } else c += strlen(c);
        }
        msgs[n].content = c;
        special |= fz_has_special(m, c);
        n++;
        p = c + strlen(c) + 1;
    }
    r = gemma2_chat_render(msgs, n, agp, NULL, 0);
    t = gemma2_chat_tokenize(m, msgs, n, agp, NULL, 0);
    FZ_CHECK((r == GEMMA2_ERROR_CHAT_FORMAT) == (t == GEMMA2_ERROR_CHAT_FORMAT));
    if (r < 0 || t < 0) { FZ_CHECK(r < 0 && t < 0); free(buf); return 0; }
    text = (char *)malloc((size_t)r + 1);
    FZ_CHECK(gemma2_chat_render(msgs, n, agp, text, (size_t)r) == r); /* exactly r: no room for the NUL */
    FZ_CHECK(gemma2_chat_render(msgs, n, agp, text, (size_t)r + 1) == r && text[r] == 0);
    ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)t + 1);
    FZ_CHECK(gemma2_chat_tokenize(m, msgs, n, agp, ids, t) == t);
    if (t > 1) {
        int32_t *few = (int32_t *)malloc(sizeof(int32_t) * (size_t)(t / 2));
        FZ_CHECK(gemma2_chat_tokenize(m, msgs, n, agp, few, t / 2) == t);
        free(few);
    }
    /* The rendered text starts with "<bos>": tokenizer.json matches it with GEMMA2_TOKENIZE_SPECIAL, tokenizer.model
       never matches its CONTROL pieces in text (as SentencePiece; section 1.4), so the <bos> is compared apart. */
    FZ_CHECK(r >= 5 && !memcmp(text, "<bos>", 5) && t >= 1 && ids[0] == gemma2_token_bos(m));
    if (!special) {
        nt = gemma2_tokenize(m, text + 5, (size_t)r - 5, NULL, 0, GEMMA2_TOKENIZE_SPECIAL);
        FZ_CHECK(nt >= 0);
        ids2 = (int32_t *)malloc(sizeof(int32_t) * (size_t)(nt + 1));
        ids2[0] = gemma2_token_bos(m);
        FZ_CHECK(gemma2_tokenize(m, text + 5, (size_t)r - 5, ids2 + 1, nt, GEMMA2_TOKENIZE_SPECIAL) == nt);
        nt++;
        if (nt != t || memcmp(ids, ids2, sizeof(int32_t) * (size_t)t)) {
            for (i = 0; i < t || i < nt; i++)
                if (i >= t || i >= nt || ids[i] != ids2[i]) {
                    fprintf(stderr, "chat_tokenize (%d ids) != tokenize(render, SPECIAL) (%d ids) from id %d\n", t, nt, i);
                    break;
                }
            fprintf(stderr, "rendered (%d bytes): ", r);
            for (i = 0; i < r; i++) fprintf(stderr, (unsigned char)text[i] < 0x20 || (unsigned char)text[i] >= 0x7f ? "\\x%02x" : "%c", (unsigned char)text[i]);
            fprintf(stderr, "\nchat_tokenize:");
            for (i = 0; i < t; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\ntokenize(render, SPECIAL):");
            for (i = 0; i < nt; i++) fprintf(stderr, " %d", ids2[i]);
            fprintf(stderr, "\n");
            FZ_CHECK(!"chat_tokenize == tokenize(chat_render, SPECIAL)");
        }
        free(ids2);
    }
    free(ids);
    free(text);
    free(buf);
    return 0;
}
