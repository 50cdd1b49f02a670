/* The real Gemma tokenizer (tests/data/tokenizer, or $GEMMA2_FUZZ_TOKENIZER_DIR), both files, loaded once per
   fuzzer process: fz_tok[0] from tokenizer.json, fz_tok[1] from tokenizer.model. */
static gemma2_model *fz_tok[2];

static void fz_load_real_tokenizers(void)
{
    const char *dir = getenv("GEMMA2_FUZZ_TOKENIZER_DIR");
    char err[256];
    int k;
    if (!dir || !*dir) dir = "tests/data/tokenizer";
    for (k = 0; k < 2; k++) {
        const char *p = fz_path_in(dir, k ? "tokenizer.model" : "tokenizer.json");
        if (!(fz_tok[k] = gemma2_load_tokenizer(p, err, sizeof err))) {
            fprintf(stderr, "%s (run from the repository's root, or set GEMMA2_FUZZ_TOKENIZER_DIR)\n", err);
            abort();
        }
    }
}
