/* libFuzzer target: the sampler with arbitrary logits (any float bit pattern: NaN, infinities, subnormals) and
   parameters. Checks what section 1.5 promises: the result is an id in [0, vocab) or a negative error code
   (GEMMA2_ERROR_INVALID_ARGUMENT when nothing can be drawn); a token banned with a -INFINITY bias is never drawn;
   greedy decoding without penalties or biases gives the argmax, ties to the lowest id; the same seed gives the
   same token; the logits are not modified.
   Input: a 48-byte parameter block (below), then the logits (4 bytes each, repeated to fill the vocabulary). */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    return 0;
}

static float fz_f32(const uint8_t *p) { float f; memcpy(&f, p, 4); return f; }
static int32_t fz_i32(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gemma2_sampler_params sp;
    gemma2_logit_bias bias[8];
    gemma2_sampler *smp;
    int32_t hist[32];
    float *logits, *copy;
    int V, nb, nh, i, a, b, k;
    size_t nl;
    if (size < 48) return 0;
    memset(&sp, 0, sizeof sp);
    /* 0..1 V, 2 knobs: which parameters are set (else 0/off), 3 n_logit_bias, 4 n_history */
    V = 1 + (int)((data[0] | data[1] << 8) % 3000);
    sp.temperature = data[2] & 1 ? fz_f32(data + 8) : (data[2] & 2 ? 0.8f : 0.0f);
    sp.top_k = data[2] & 4 ? fz_i32(data + 12) % 4096 : 0;
    sp.top_p = data[2] & 8 ? fz_f32(data + 16) : 0;
    sp.min_p = data[2] & 16 ? fz_f32(data + 20) : 0;
    sp.repetition_penalty = data[2] & 32 ? fz_f32(data + 24) : 0;
    sp.frequency_penalty = data[2] & 64 ? fz_f32(data + 28) : 0;
    sp.presence_penalty = data[2] & 128 ? fz_f32(data + 32) : 0;
    sp.penalty_last_n = fz_i32(data + 36) % 64;
    memcpy(&sp.seed, data + 40, 8);
    nb = data[3] % 9;
    nh = data[4] % 33;
    data += 48;
    size -= 48;
    /* biases and history take their values from the front of the logit bytes */
    for (i = 0; i < nb; i++) {
        bias[i].token = size >= 4 * (size_t)i + 4 ? (int32_t)(fz_i32(data + 4 * i) % (V + 2)) : i;
        bias[i].bias = i % 2 ? -INFINITY : (size >= 4 * (size_t)i + 8 ? fz_f32(data + 4 * i + 4) : 1.0f);
    }
    for (i = 0; i < nh; i++) hist[i] = size > (size_t)i ? (int32_t)((data[i] * 977u) % (unsigned)V) : 0;
    sp.logit_bias = nb ? bias : NULL;
    sp.n_logit_bias = nb;
    nl = size / 4;
    logits = (float *)malloc(sizeof(float) * (size_t)V);
    copy = (float *)malloc(sizeof(float) * (size_t)V);
    for (i = 0; i < V; i++) logits[i] = nl ? fz_f32(data + 4 * ((size_t)i % nl)) : 0.0f;
    memcpy(copy, logits, sizeof(float) * (size_t)V);
    smp = gemma2_sampler_new(V, &sp);
    if (!smp) goto done;
    a = gemma2_sampler_sample(smp, logits, nh ? hist : NULL, nh);
    FZ_CHECK((a >= 0 && a < V) || a == GEMMA2_ERROR_INVALID_ARGUMENT || a == GEMMA2_ERROR_NUMERIC);
    FZ_CHECK(!memcmp(copy, logits, sizeof(float) * (size_t)V));
    gemma2_sampler_seed(smp, sp.seed);
    b = gemma2_sampler_sample(smp, logits, nh ? hist : NULL, nh);
    FZ_CHECK(a == b);
    if (a >= 0) {
        /* a token banned by a single -INFINITY bias (and no other bias on it) is never drawn */
        int banned = 0, others = 0;
        for (k = 0; k < nb; k++)
            if (bias[k].token == a) { if (bias[k].bias == -INFINITY) banned++; else others++; }
        FZ_CHECK(!(banned == 1 && others == 0));
        if (sp.temperature <= 0 && nb == 0 && !(sp.repetition_penalty != 0 && sp.repetition_penalty != 1) &&
            sp.frequency_penalty == 0 && sp.presence_penalty == 0) {
            /* greedy without penalties: the argmax of the logits that are numbers, ties to the lowest id */
            for (i = 0; i < V; i++) {
                if (logits[i] != logits[i]) continue;
                FZ_CHECK(!(logits[i] > logits[a]) && !(i < a && logits[i] == logits[a]));
            }
            FZ_CHECK(logits[a] == logits[a] && logits[a] != -INFINITY);
        }
    }
    gemma2_sampler_free(smp);
done:
    free(logits);
    free(copy);
    return 0;
}
