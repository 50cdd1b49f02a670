/* gemma2.h - v0.1.0 - run Google's Gemma 2 language models on the CPU, in one C header.

   Public domain or MIT, your choice: see the end of this file.

   WHAT IT IS
     A single-header C library that loads a Hugging Face Gemma 2 checkpoint folder
     (config.json, *.safetensors, tokenizer.json or tokenizer.model) and runs it:
     tokenizer, forward pass, sampling, chat. No dependencies beyond the C standard
     library and the operating system (file mapping, threads), each switchable off.

   QUICK START
     In exactly ONE C or C++ file:
         #define GEMMA2_IMPLEMENTATION
         #include "gemma2.h"
     Everywhere else just #include "gemma2.h".

         char err[256];
         gemma2_model *m = gemma2_load("gemma-2-2b-it", NULL, err, sizeof err);
         if (!m) { fprintf(stderr, "%s\n", err); return 1; }
         gemma2_session *s = gemma2_session_new(m, 0);
         int32_t ids[] = {2, 651, 6037};              // <bos> The capital
         if (gemma2_eval(s, ids, 3, NULL) == 0) {
             const float *logits = gemma2_logits(s);   // vocab_size floats
             ...
         }
         gemma2_session_free(s);
         gemma2_free(m);

   BUILD SWITCHES (define before the #include that has GEMMA2_IMPLEMENTATION)
     GEMMA2_STATIC         all functions static (private copy in one translation unit)
     GEMMA2_MALLOC(sz) / GEMMA2_REALLOC(p,sz) / GEMMA2_FREE(p)
                           your allocator: define all three or none
     GEMMA2_ASSERT(x)      internal consistency checks (default: assert.h; define empty to drop)
     GEMMA2_NO_MMAP        read files into memory instead of mapping them
     GEMMA2_NO_THREADS     no thread pool: everything runs on the calling thread
     GEMMA2_NO_SIMD        scalar kernels only (the reference implementation)

   TABLE OF CONTENTS
     Part 1  Public API (declarations)
       1.1  Versions, linkage, result codes
       1.2  Options and loading
       1.3  Sessions and evaluation
       1.4  Tokenizer
       1.5  Sampling, generation and chat
     Part 2  Implementation (under GEMMA2_IMPLEMENTATION)
       2.1  Platform: allocation, errors, small helpers
       2.2  JSON reader
       2.3  Files: mapping and reading
       2.4  Safetensors
       2.5  Config (config.json)
       2.6  Thread pool
       2.7  Kernels: scalar reference
       2.8  Kernels: SIMD (x86-64 AVX2 / AVX-512, ARM64 NEON) and dispatch
       2.9  Model loading
       2.10 The forward pass
       2.11 Sessions
       2.12 Tokenizer
       2.13 Sampler
       2.14 Generation and chat
     License

   THREADS AND STATE
     The library keeps no global mutable state, never prints and never exits.
     A gemma2_model is read-only after gemma2_load and may be shared by any number
     of sessions on any threads. A gemma2_session is one sequence (its KV cache and
     position) and must be used by one thread at a time; it owns its worker threads.
*/

#ifndef GEMMA2_H_INCLUDED
#define GEMMA2_H_INCLUDED

/* ===========================================================================
   1.1  Versions, linkage, result codes
   =========================================================================== */

#include <stddef.h>
#include <stdint.h>

#define GEMMA2_VERSION_MAJOR 0
#define GEMMA2_VERSION_MINOR 1
#define GEMMA2_VERSION_PATCH 0
#define GEMMA2_VERSION_STRING "0.1.0"

#ifndef GEMMA2_DEF
#ifdef GEMMA2_STATIC
#define GEMMA2_DEF static
#else
#define GEMMA2_DEF extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Every function that can fail returns one of these (negative) or a count/0. */
enum {
    GEMMA2_OK                     =   0,
    GEMMA2_ERROR_INVALID_ARGUMENT =  -1, /* NULL pointer, negative count, unknown option value */
    GEMMA2_ERROR_OUT_OF_MEMORY    =  -2,
    GEMMA2_ERROR_IO               =  -3, /* a file could not be opened, mapped or read */
    GEMMA2_ERROR_FORMAT           =  -4, /* a file is malformed, truncated or inconsistent */
    GEMMA2_ERROR_UNSUPPORTED      =  -5, /* valid, but not something this library runs */
    GEMMA2_ERROR_BAD_TOKEN        =  -6, /* a token id outside [0, vocab_size) */
    GEMMA2_ERROR_CONTEXT_FULL     =  -7, /* the tokens do not fit in the session's n_ctx */
    GEMMA2_ERROR_NO_TOKENIZER     =  -8, /* the model was loaded without a tokenizer */
    GEMMA2_ERROR_NO_WEIGHTS       =  -9, /* the model was loaded tokenizer-only */
    GEMMA2_ERROR_CHAT_FORMAT      = -10, /* roles out of order, unknown role */
    GEMMA2_ERROR_CANCELLED        = -11  /* a callback asked to stop */
};

/* A static, readable name for a result code ("context full", ...). */
GEMMA2_DEF const char *gemma2_error_string(int code);

/* ===========================================================================
   1.2  Options and loading
   =========================================================================== */

/* How weights are held in memory (gemma2_options.weights). */
enum {
    GEMMA2_WEIGHTS_AUTO = 0, /* as stored: BF16 used in place from the mapping, F32 kept F32 (exact), F16 widened to F32 */
    GEMMA2_WEIGHTS_BF16 = 1  /* F32/F16 checkpoints converted to bf16 once at load (half the memory and bandwidth) */
};

/* Arithmetic precision of the matrix products (gemma2_options.compute). */
enum {
    GEMMA2_COMPUTE_F32  = 0, /* activations in float32, weights widened in registers: matches the references */
    GEMMA2_COMPUTE_BF16 = 1  /* activations rounded to bf16 where that doubles throughput (as transformers in bf16) */
};

/* Kernel sets (gemma2_options.kernels). AUTO picks the best one the CPU has at run time. */
enum {
    GEMMA2_KERNELS_AUTO   = 0,
    GEMMA2_KERNELS_SCALAR = 1, /* the plain-C reference */
    GEMMA2_KERNELS_AVX2   = 2, /* x86-64 AVX2 + FMA + F16C */
    GEMMA2_KERNELS_AVX512 = 3, /* x86-64 AVX-512 F/BW/VL (+ BF16 dot products when the CPU has them) */
    GEMMA2_KERNELS_NEON   = 4  /* ARM64 */
};

/* Called while loading; fraction in [0, 1]. Return nonzero to cancel the load. */
typedef int (*gemma2_progress_fn)(void *user, float fraction);

/* All-zero means defaults (use `gemma2_options o = {0};` or pass NULL). */
typedef struct gemma2_options {
    int n_threads;              /* worker threads per session; 0 = all cores */
    int weights;                /* GEMMA2_WEIGHTS_* */
    int compute;                /* GEMMA2_COMPUTE_* */
    int kernels;                /* GEMMA2_KERNELS_*: force a kernel set (an error if this CPU lacks it) */
    int tokenizer_only;         /* nonzero: read config.json and the tokenizer only, no weights (cheap) */
    int no_tokenizer;           /* nonzero: skip the tokenizer (gemma2_tokenize then fails) */
    const char *tokenizer_path; /* NULL: MODEL_DIR/tokenizer.json, else MODEL_DIR/tokenizer.model.
                                   Otherwise this file (.json or SentencePiece .model), used as given. */
    gemma2_progress_fn progress;/* optional load progress */
    void *progress_user;
} gemma2_options;

/* The architecture, as read from config.json. */
typedef struct gemma2_config {
    int vocab_size;              /* V */
    int hidden_size;             /* H */
    int intermediate_size;       /* I */
    int num_hidden_layers;       /* L */
    int num_attention_heads;     /* nH */
    int num_key_value_heads;     /* nKV */
    int head_dim;                /* hd */
    int max_position_embeddings;
    int sliding_window;          /* W: keys a local layer sees, counting the query's own */
    float query_pre_attn_scalar; /* scores are scaled by query_pre_attn_scalar^-0.5 */
    float attn_logit_softcapping;  /* 0 = none */
    float final_logit_softcapping; /* 0 = none */
    float rms_norm_eps;
    float rope_theta;
    int bos_token_id;
    int pad_token_id;
    int n_eos;                   /* eos ids from config.json, then generation_config.json */
    int eos_token_ids[8];
} gemma2_config;

typedef struct gemma2_model gemma2_model;     /* read-only after load; shareable by sessions */
typedef struct gemma2_session gemma2_session; /* one sequence: KV cache and position */

/* Loads a Hugging Face Gemma 2 folder. On failure returns NULL and writes a one-line
   reason naming the file/tensor/field into err (if err_size > 0). */
GEMMA2_DEF gemma2_model *gemma2_load(const char *model_dir, const gemma2_options *opt, char *err, size_t err_size);
GEMMA2_DEF void gemma2_free(gemma2_model *m);
GEMMA2_DEF int gemma2_vocab_size(const gemma2_model *m);
GEMMA2_DEF const gemma2_config *gemma2_model_config(const gemma2_model *m);
/* Bytes of weights this model holds: mapped from the files plus converted copies. */
GEMMA2_DEF size_t gemma2_model_weight_bytes(const gemma2_model *m);
/* Name of the kernel set in use ("avx512-bf16", "scalar", ...). */
GEMMA2_DEF const char *gemma2_model_kernels(const gemma2_model *m);

/* ===========================================================================
   1.3  Sessions and evaluation
   =========================================================================== */

/* n_ctx = 0: max_position_embeddings. NULL on failure (out of memory, bad argument). */
GEMMA2_DEF gemma2_session *gemma2_session_new(const gemma2_model *m, int n_ctx);
GEMMA2_DEF void gemma2_session_free(gemma2_session *s);

/* Appends n tokens at the current position. logits == NULL: only the last token's logits are
   computed (read them with gemma2_logits); otherwise n * vocab floats, one row per token.
   Returns 0, or a negative error code (bad token id, context full, ...) and leaves the session
   unchanged. */
GEMMA2_DEF int gemma2_eval(gemma2_session *s, const int32_t *ids, int n, float *logits);
/* The logits of the last evaluated token (vocab_size floats), or NULL before any eval. */
GEMMA2_DEF const float *gemma2_logits(const gemma2_session *s);

GEMMA2_DEF int gemma2_session_pos(const gemma2_session *s);    /* tokens in the cache */
GEMMA2_DEF int gemma2_session_n_ctx(const gemma2_session *s);
GEMMA2_DEF const int32_t *gemma2_session_tokens(const gemma2_session *s); /* the pos tokens so far */
/* Forgets everything from position pos on (0 <= pos <= current). Cheap, except when a
   sliding-window layer's ring buffer no longer holds the keys position pos needs: then the
   tokens before pos that it needs are evaluated again. Returns 0 or a negative error. */
GEMMA2_DEF int gemma2_session_rewind(gemma2_session *s, int pos);

/* Tracing: fn is called after the embedding (layer 0) and after each decoder layer l
   (layer l+1) with the residual stream x[n][hidden_size] of the n tokens at positions
   pos0..pos0+n-1 being evaluated. For learning tools, logit lens and tests. NULL to stop. */
typedef void (*gemma2_trace_fn)(void *user, int layer, int pos0, int n, const float *x);
GEMMA2_DEF void gemma2_session_set_trace(gemma2_session *s, gemma2_trace_fn fn, void *user);

/* ===========================================================================
   1.4  Tokenizer
   =========================================================================== */

#define GEMMA2_TOKENIZE_ADD_BOS  1  /* prepend <bos> */
#define GEMMA2_TOKENIZE_SPECIAL  2  /* match special tokens written in the text, as the reference tokenizers do;
                                       without it they are plain text (what user content in a chat must use) */
#define GEMMA2_DETOKENIZE_SKIP_CONTROL 1 /* gemma2_detokenize: leave out control tokens (<bos>, <eos>, <pad>, ...) */

/* Returns the number of ids the text needs (writes at most max_ids), or a negative error. */
GEMMA2_DEF int gemma2_tokenize(const gemma2_model *m, const char *text, size_t len, int32_t *ids, int max_ids, int flags);
/* Returns the number of bytes the text needs (writes at most cap, no NUL counted), or a negative error.
   flags 0: every token's text. */
GEMMA2_DEF int gemma2_detokenize(const gemma2_model *m, const int32_t *ids, int n, char *out, size_t cap, int flags);

/* @@TOKENIZER-API@@ (more tokenizer declarations go here) */

/* ===========================================================================
   1.5  Sampling, generation and chat
   =========================================================================== */

/* --- Sampler ---------------------------------------------------------------

   A sampler turns a row of logits into one token id. Its steps, always in this order
   (the order of transformers' logits processors, which the Gemma model cards use):
     1. logit bias       logit[id] += bias (-INFINITY bans a token)
     2. repetition       over the distinct tokens of the last penalty_last_n history tokens:
                         logit > 0 ? logit / repetition_penalty : logit * repetition_penalty
                         (transformers' RepetitionPenaltyLogitsProcessor, llama.cpp's repeat_penalty)
     3. frequency and    logit -= count * frequency_penalty + (count > 0) * presence_penalty,
        presence         count = occurrences in the same window (OpenAI's definition)
     4. greedy           temperature <= 0: the argmax, done (ties: the lowest id)
     5. temperature      logit /= temperature
     6. top-k            keep the top_k highest (ties broken by lower id)
     7. top-p            softmax; keep the smallest set of most probable tokens whose mass >= top_p
     8. min-p            keep tokens with p >= min_p * p_max
     9. draw             renormalise, draw with the sampler's own PRNG (xoshiro256**, seeded by
                         splitmix64): the same seed gives the same tokens on every platform
                         (given the same logits) and for any thread count.
   No step sorts the whole vocabulary: top-k is a partial selection; top-p first gathers the
   tokens above a probability threshold that provably contains the nucleus (usually a few
   hundred of 256000), and sorts only those. */

typedef struct gemma2_logit_bias {
    int32_t token;
    float bias;          /* added to the logit; -INFINITY forbids the token */
} gemma2_logit_bias;

/* All-zero means: greedy decoding with no penalties. Every field's zero is "off"/default. */
typedef struct gemma2_sampler_params {
    float temperature;          /* <= 0: greedy (argmax). 1: the model's distribution */
    int top_k;                  /* <= 0: off */
    float top_p;                /* <= 0 or >= 1: off */
    float min_p;                /* <= 0: off */
    float repetition_penalty;   /* 0 or 1: off; 1.1 ~ mild (transformers/llama.cpp meaning) */
    float frequency_penalty;    /* 0: off */
    float presence_penalty;     /* 0: off */
    int penalty_last_n;         /* window of history tokens the three penalties look at;
                                   0: the whole history (transformers' behaviour, prompt included) */
    const gemma2_logit_bias *logit_bias; /* copied by gemma2_sampler_new */
    int n_logit_bias;
    uint64_t seed;              /* the random stream; 0 is a seed like any other (fixed, reproducible) */
} gemma2_sampler_params;

typedef struct gemma2_sampler gemma2_sampler;

/* A sampler for logits of vocab_size entries (gemma2_vocab_size(m)); p NULL = greedy.
   Preallocates everything it needs: sampling never allocates. NULL on bad argument/out of memory. */
GEMMA2_DEF gemma2_sampler *gemma2_sampler_new(int vocab_size, const gemma2_sampler_params *p);
GEMMA2_DEF void gemma2_sampler_free(gemma2_sampler *smp);
/* Restarts the random stream as if created with this seed. */
GEMMA2_DEF void gemma2_sampler_seed(gemma2_sampler *smp, uint64_t seed);
/* Picks a token from logits[vocab_size] (not modified). history[0..n_history) are the tokens so
   far (e.g. gemma2_session_tokens), used only by the penalties; may be NULL when n_history is 0.
   Returns the token id, or a negative error (GEMMA2_ERROR_INVALID_ARGUMENT if every logit is
   -inf or NaN after the bias). */
GEMMA2_DEF int gemma2_sampler_sample(gemma2_sampler *smp, const float *logits, const int32_t *history, int n_history);

/* --- Generation ------------------------------------------------------------ */

/* Why generation ended (gemma2_generate_result.stop_reason). */
enum {
    GEMMA2_STOP_EOS = 1,          /* sampled an end-of-sequence id (config eos ids or stop_ids) */
    GEMMA2_STOP_MAX_TOKENS = 2,   /* max_new_tokens reached */
    GEMMA2_STOP_STRING = 3,       /* the text reached one of the stop strings */
    GEMMA2_STOP_CALLBACK = 4,     /* on_token returned nonzero */
    GEMMA2_STOP_CONTEXT_FULL = 5  /* the session holds n_ctx tokens: nothing more fits */
};

/* Streaming: called for every generated token (eos excluded) with the text it completes: whole
   UTF-8 characters only (a character split over byte tokens arrives with its last token; invalid
   bytes arrive as U+FFFD), with any text that could begin a stop string held back until it is
   known not to (and never delivered if it does). So len may be 0. After generation ends, one
   last call with token -1 delivers held-back text, if any. Return nonzero to stop. The text is
   not NUL-terminated and is valid only during the call. */
typedef int (*gemma2_token_fn)(void *user, int32_t token, const char *text, size_t len);

/* All-zero means: greedy, until an eos id or the context is full, no stop strings. */
typedef struct gemma2_generate_params {
    gemma2_sampler_params sampler;
    int max_new_tokens;              /* <= 0: no limit (until eos or the context is full) */
    const char *const *stop_strings; /* n_stop_strings NUL-terminated strings, matched on the text */
    int n_stop_strings;
    const int32_t *stop_ids;         /* more ids that end generation, beside the model's eos ids */
    int n_stop_ids;
    int ignore_eos;                  /* nonzero: the model's eos ids do not stop generation */
    gemma2_token_fn on_token;        /* optional streaming callback */
    void *user;
} gemma2_generate_params;

typedef struct gemma2_generate_result {
    int n_prompt;      /* prompt tokens evaluated */
    int n_generated;   /* tokens generated and evaluated into the session (the stop id not counted) */
    int stop_reason;   /* GEMMA2_STOP_* */
    int32_t stop_id;   /* the eos/stop id sampled (GEMMA2_STOP_EOS), else -1 */
} gemma2_generate_result;

/* Evaluates prompt[0..n_prompt) at the session's position (n_prompt may be 0 to continue from
   the last evaluated token), then samples tokens one by one. Every generated token is evaluated
   into the session (so gemma2_logits(s) continues from it) except a sampled eos/stop id, which is
   never evaluated nor streamed. A stop string is never streamed; the token that completed it stays
   in the session. Returns 0, or a negative error: GEMMA2_ERROR_CONTEXT_FULL if the prompt does not
   fit (the session is then unchanged), GEMMA2_ERROR_INVALID_ARGUMENT (n_prompt 0 on an empty
   session, ...). Reaching n_ctx while generating is not an error: stop_reason CONTEXT_FULL.
   res may be NULL. The text streamed by on_token, concatenated, is the text of the generated tokens
   (cut before a stop string). */
GEMMA2_DEF int gemma2_generate(gemma2_session *s, const int32_t *prompt, int n_prompt,
                               const gemma2_generate_params *p, gemma2_generate_result *res);

/* --- Scoring --------------------------------------------------------------- */

/* Log-probabilities (natural log) of a continuation: logprobs[i] = log P(cont[i] | everything before).
   Evaluates prompt and then cont at the session's position in batches (all rows of logits from
   one gemma2_eval per batch of up to 64 tokens); n_prompt may be 0 to score after what the session
   holds already. greedy (may be NULL): greedy[i] = 1 when cont[i] is the argmax. Afterwards the
   session holds prompt + cont (rewind to reuse the prompt). Returns 0 or a negative error
   (CONTEXT_FULL if they do not fit: the session is then rewound to where it was). */
GEMMA2_DEF int gemma2_score(gemma2_session *s, const int32_t *prompt, int n_prompt,
                            const int32_t *cont, int n_cont, float *logprobs, int *greedy);

/* --- Chat ------------------------------------------------------------------

   The Gemma 2 chat format, as the model's chat template renders it:
     <bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n{content}<end_of_turn>\n ...
   and, with add_generation_prompt, a final <start_of_turn>model\n.
   Content is trimmed like Python's str.strip(). Roles: "user", "assistant" (written "model") or
   "model", alternating and starting with "user"; one leading "system" message is allowed and is
   folded into the first user turn as trim(system) + "\n\n" + trim(user) (just trim(user) when the
   system text is blank), the way Gemma 3's template does it (the Gemma 2 template rejects system
   messages: the models were not trained with one, so this is the customary workaround). Anything else
   (another role, a role out of order, system elsewhere or alone) is GEMMA2_ERROR_CHAT_FORMAT:
   deliberately stricter than the template, which renders unknown roles verbatim. */

typedef struct gemma2_message { const char *role; const char *content; } gemma2_message;

/* ids of the conversation in the Gemma chat format (with <bos>), user content as plain text;
   returns the number of ids needed (writes at most max_ids) or a negative error. */
GEMMA2_DEF int gemma2_chat_tokenize(const gemma2_model *m, const gemma2_message *msgs, int n_msgs,
                                    int add_generation_prompt, int32_t *ids, int max_ids);

/* The same conversation as text (with "<bos>"), exactly what the Jinja template renders for
   conversations this API accepts. Returns the bytes needed (writes at most cap, plus a NUL when it
   fits) or a negative error. Needs no model. NOTE: tokenizing this text with GEMMA2_TOKENIZE_SPECIAL
   (what transformers' apply_chat_template(tokenize=True) does) lets marker strings typed into
   content act as real markers; gemma2_chat_tokenize does not. */
GEMMA2_DEF int gemma2_chat_render(const gemma2_message *msgs, int n_msgs, int add_generation_prompt,
                                  char *out, size_t cap);

/* A multi-turn conversation kept in a session's KV cache: each turn evaluates only its new tokens
   (for a user turn: the <end_of_turn>\n that closes the previous reply, the user turn and
   <start_of_turn>model\n). The session must be empty (pos 0) when the chat is created and must
   only be used through the chat while it lives. */
typedef struct gemma2_chat gemma2_chat;

/* system may be NULL (none): it is folded into the first user turn (see above). */
GEMMA2_DEF gemma2_chat *gemma2_chat_new(gemma2_session *s, const char *system);
GEMMA2_DEF void gemma2_chat_free(gemma2_chat *c);
/* Adds a user turn and generates the model's reply (streamed through p->on_token). On
   CONTEXT_FULL for the user turn the chat and session are left as they were. */
GEMMA2_DEF int gemma2_chat_say(gemma2_chat *c, const char *user_content, const gemma2_generate_params *p,
                               gemma2_generate_result *res);
/* Forgets the last reply and generates it again (use another seed for another reply). */
GEMMA2_DEF int gemma2_chat_regenerate(gemma2_chat *c, const gemma2_generate_params *p, gemma2_generate_result *res);
/* Forgets the last exchange (user turn and reply); returns 0, or GEMMA2_ERROR_INVALID_ARGUMENT if none. */
GEMMA2_DEF int gemma2_chat_undo(gemma2_chat *c);
/* Forgets the whole conversation (the system prompt stays). */
GEMMA2_DEF int gemma2_chat_reset(gemma2_chat *c);
/* Number of completed exchanges (user turn + reply). */
GEMMA2_DEF int gemma2_chat_turns(const gemma2_chat *c);


#ifdef __cplusplus
}
#endif

#endif /* GEMMA2_H_INCLUDED */

/* ###########################################################################
   Part 2: Implementation
   ########################################################################### */

#ifdef GEMMA2_IMPLEMENTATION
#ifndef GEMMA2_IMPLEMENTATION_DONE
#define GEMMA2_IMPLEMENTATION_DONE

/* ===========================================================================
   2.1  Platform: allocation, errors, small helpers
   =========================================================================== */

#include <string.h>
#include <stdarg.h>
#include <stdio.h>   /* vsnprintf for error messages, FILE for plain reads; never prints */
#include <math.h>
#include <limits.h>

#if defined(GEMMA2_MALLOC) && defined(GEMMA2_FREE) && defined(GEMMA2_REALLOC)
/* all three given */
#elif !defined(GEMMA2_MALLOC) && !defined(GEMMA2_FREE) && !defined(GEMMA2_REALLOC)
#include <stdlib.h>
#define GEMMA2_MALLOC(sz) malloc(sz)
#define GEMMA2_REALLOC(p, sz) realloc(p, sz)
#define GEMMA2_FREE(p) free(p)
#else
#error "gemma2.h: define all of GEMMA2_MALLOC, GEMMA2_REALLOC and GEMMA2_FREE, or none of them"
#endif

#ifndef GEMMA2_ASSERT
#include <assert.h>
#define GEMMA2_ASSERT(x) assert(x)
#endif

#if defined(_WIN32)
#define GEMMA2__WINDOWS 1
#endif

#define GEMMA2__MIN(a, b) ((a) < (b) ? (a) : (b))
#define GEMMA2__MAX(a, b) ((a) > (b) ? (a) : (b))

/* Writes a one-line reason into err; returns code so callers can `return gemma2__fail(...)`. */
static int gemma2__fail(char *err, size_t err_size, int code, const char *fmt, ...)
{
    if (err && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void *gemma2__calloc(size_t n, size_t size)
{
    void *p;
    size_t bytes;
    if (size != 0 && n > (size_t)-1 / size) return NULL;
    bytes = n * size;
    p = GEMMA2_MALLOC(bytes > 0 ? bytes : 1);
    if (p) memset(p, 0, bytes);
    return p;
}

/* Overflow-checked size arithmetic: the product of file-given numbers must never wrap. */
static int gemma2__mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static char *gemma2__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = (char *)GEMMA2_MALLOC(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* path = dir + "/" + name, in a fresh allocation. */
static char *gemma2__path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = (char *)GEMMA2_MALLOC(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    if (a > 0 && dir[a - 1] != '/' && dir[a - 1] != '\\') p[a++] = '/';
    memcpy(p + a, name, b + 1);
    return p;
}

/* bfloat16 is the upper half of a float32: widening is a shift, exact. */
static float gemma2__bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* float32 -> bfloat16, round to nearest even (NaN kept quiet). */
static uint16_t gemma2__f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* IEEE half -> float32 (for F16 checkpoints, widened once at load). */
static float gemma2__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    float f;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    memcpy(&f, &u, 4);
    return f;
}

/* ===========================================================================
   2.2  JSON reader
   ===========================================================================
   Parses a whole JSON text into a flat array of nodes (a DOM without pointers).
   Strings are kept as spans of the source text (still escaped); numbers too.
   Every node knows its first child and next sibling, so walking is cheap; an
   object's children alternate key, value. Depth is bounded (no stack overflow on
   hostile input) and every byte is checked (no reads past the end). tokenizer.json
   is 17.5 MB with ~2.2 M nodes: the parser is a single pass with no per-node
   allocation. */

enum { GEMMA2__JNULL, GEMMA2__JFALSE, GEMMA2__JTRUE, GEMMA2__JNUMBER, GEMMA2__JSTRING, GEMMA2__JARRAY, GEMMA2__JOBJECT };

typedef struct gemma2__jnode {
    uint32_t start;   /* offset of the value in the text (for strings: after the opening quote) */
    uint32_t len;     /* bytes (for strings: up to the closing quote, escapes included) */
    int32_t  next;    /* next sibling, or -1 */
    int32_t  child;   /* first child (arrays, objects), or -1 */
    int32_t  count;   /* children (objects: keys + values) */
    uint8_t  type;
    uint8_t  escaped; /* strings: contains a backslash */
} gemma2__jnode;

typedef struct gemma2__json {
    const char *text;
    size_t size;
    gemma2__jnode *nodes;
    int32_t n, cap;
} gemma2__json;

#define GEMMA2__JSON_MAX_DEPTH 128

static void gemma2__json_free(gemma2__json *j)
{
    GEMMA2_FREE(j->nodes);
    j->nodes = NULL;
    j->n = j->cap = 0;
}

static int32_t gemma2__json_new(gemma2__json *j, int type, size_t start)
{
    gemma2__jnode *nd;
    if (j->n == j->cap) {
        int32_t cap = j->cap ? j->cap : 64;
        void *p;
        if (cap > INT32_MAX / 2) return -1;
        cap *= 2;
        p = GEMMA2_REALLOC(j->nodes, (size_t)cap * sizeof(gemma2__jnode));
        if (!p) return -1;
        j->nodes = (gemma2__jnode *)p;
        j->cap = cap;
    }
    nd = &j->nodes[j->n];
    nd->start = (uint32_t)start;
    nd->len = 0;
    nd->next = nd->child = -1;
    nd->count = 0;
    nd->type = (uint8_t)type;
    nd->escaped = 0;
    return j->n++;
}

static size_t gemma2__json_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
    return i;
}

/* Links node id as the next child of the innermost open container. */
static void gemma2__json_link(gemma2__json *j, int32_t parent, int32_t *last, int32_t id)
{
    if (*last < 0) j->nodes[parent].child = id; else j->nodes[*last].next = id;
    j->nodes[parent].count++;
    *last = id;
}

/* Parses the text; returns 0, or -1 with a reason (with byte offset) in err. */
static int gemma2__json_parse(gemma2__json *j, const char *text, size_t size, char *err, size_t err_size)
{
    /* Iterative: an explicit stack of open containers and of the last child linked in each. */
    int32_t stack[GEMMA2__JSON_MAX_DEPTH], last[GEMMA2__JSON_MAX_DEPTH];
    int depth = 0, expect_key = 0, just_opened = 0;
    size_t i = 0;
    memset(j, 0, sizeof *j);
    j->text = text;
    j->size = size;
    if (size >= 0xffffffffu) return gemma2__fail(err, err_size, -1, "JSON text too large (%zu bytes)", size);
    for (;;) {
        int32_t id;
        char c;
        i = gemma2__json_ws(text, i, size);
        if (i >= size) return gemma2__fail(err, err_size, -1, "unexpected end of JSON at byte %zu", i);
        c = text[i];
        if (just_opened && (c == ']' || c == '}')) goto close; /* empty container */
        just_opened = 0;
        if (expect_key && c != '"') return gemma2__fail(err, err_size, -1, "expected a string key at byte %zu", i);
        if (c == '{' || c == '[') {
            if (depth == GEMMA2__JSON_MAX_DEPTH) return gemma2__fail(err, err_size, -1, "JSON nested too deeply at byte %zu", i);
            id = gemma2__json_new(j, c == '{' ? GEMMA2__JOBJECT : GEMMA2__JARRAY, i);
            if (id < 0) return gemma2__fail(err, err_size, -1, "out of memory parsing JSON");
            if (depth > 0) gemma2__json_link(j, stack[depth - 1], &last[depth - 1], id);
            stack[depth] = id;
            last[depth] = -1;
            depth++;
            i++;
            expect_key = (c == '{');
            just_opened = 1;
            continue;
        }
        if (c == '"') {
            size_t k = i + 1;
            int esc = 0;
            while (k < size && text[k] != '"') {
                unsigned char ch = (unsigned char)text[k];
                if (ch < 0x20) return gemma2__fail(err, err_size, -1, "control character in JSON string at byte %zu", k);
                if (ch == '\\') { esc = 1; k += 2; } else k++;
            }
            if (k >= size) return gemma2__fail(err, err_size, -1, "unterminated JSON string at byte %zu", i);
            id = gemma2__json_new(j, GEMMA2__JSTRING, i + 1);
            if (id < 0) return gemma2__fail(err, err_size, -1, "out of memory parsing JSON");
            j->nodes[id].len = (uint32_t)(k - i - 1);
            j->nodes[id].escaped = (uint8_t)esc;
            i = k + 1;
        } else {
            int type;
            size_t k = i;
            if (c == 't' && size - i >= 4 && !memcmp(text + i, "true", 4)) { type = GEMMA2__JTRUE; k += 4; }
            else if (c == 'f' && size - i >= 5 && !memcmp(text + i, "false", 5)) { type = GEMMA2__JFALSE; k += 5; }
            else if (c == 'n' && size - i >= 4 && !memcmp(text + i, "null", 4)) { type = GEMMA2__JNULL; k += 4; }
            else if (c == '-' || (c >= '0' && c <= '9')) {
                /* the exact grammar is checked when the number is read (gemma2__json_number) */
                type = GEMMA2__JNUMBER;
                k++;
                while (k < size && ((text[k] >= '0' && text[k] <= '9') || text[k] == '.' || text[k] == 'e' ||
                                    text[k] == 'E' || text[k] == '+' || text[k] == '-')) k++;
            } else return gemma2__fail(err, err_size, -1, "unexpected character 0x%02x in JSON at byte %zu", (unsigned char)c, i);
            id = gemma2__json_new(j, type, i);
            if (id < 0) return gemma2__fail(err, err_size, -1, "out of memory parsing JSON");
            j->nodes[id].len = (uint32_t)(k - i);
            i = k;
        }
        if (depth > 0) {
            gemma2__json_link(j, stack[depth - 1], &last[depth - 1], id);
            if (expect_key) {
                i = gemma2__json_ws(text, i, size);
                if (i >= size || text[i] != ':') return gemma2__fail(err, err_size, -1, "expected ':' at byte %zu", i);
                i++;
                expect_key = 0;
                continue;
            }
        }
        /* After a complete value: a comma, the end of its container(s), or the end of the text. */
        for (;;) {
            if (depth == 0) {
                i = gemma2__json_ws(text, i, size);
                if (i != size) return gemma2__fail(err, err_size, -1, "trailing characters after JSON at byte %zu", i);
                return 0;
            }
            i = gemma2__json_ws(text, i, size);
            if (i >= size) return gemma2__fail(err, err_size, -1, "unexpected end of JSON at byte %zu", i);
            c = text[i];
            if (c == ',') {
                i++;
                expect_key = (j->nodes[stack[depth - 1]].type == GEMMA2__JOBJECT);
                break;
            }
        close:
            if ((c == ']' && j->nodes[stack[depth - 1]].type == GEMMA2__JARRAY) ||
                (c == '}' && j->nodes[stack[depth - 1]].type == GEMMA2__JOBJECT)) {
                gemma2__jnode *open = &j->nodes[stack[depth - 1]];
                open->len = (uint32_t)(i + 1 - open->start);
                i++;
                depth--;
                just_opened = 0;
                expect_key = 0;
                continue;
            }
            return gemma2__fail(err, err_size, -1, "expected ',' or a matching bracket at byte %zu", i);
        }
    }
}

/* Member of an object by key (keys compared raw: config keys never need escapes). -1 if absent. */
static int32_t gemma2__json_get(const gemma2__json *j, int32_t obj, const char *key)
{
    size_t kl = strlen(key);
    int32_t c;
    if (obj < 0 || j->nodes[obj].type != GEMMA2__JOBJECT) return -1;
    for (c = j->nodes[obj].child; c >= 0 && j->nodes[c].next >= 0; c = j->nodes[j->nodes[c].next].next) {
        const gemma2__jnode *k = &j->nodes[c];
        if (k->len == kl && !memcmp(j->text + k->start, key, kl)) return k->next;
    }
    return -1;
}

static int gemma2__json_is(const gemma2__json *j, int32_t node, int type)
{
    return node >= 0 && j->nodes[node].type == type;
}

/* Number -> double. Own parser (strtod depends on the C locale's decimal point).
   Returns 0 if the node is not a well-formed JSON number. */
static int gemma2__json_number(const gemma2__json *j, int32_t node, double *out)
{
    const char *s;
    size_t n, i = 0;
    double mant = 0, v;
    int neg = 0, exp10 = 0, eneg = 0, e = 0, digits = 0;
    if (!gemma2__json_is(j, node, GEMMA2__JNUMBER)) return 0;
    s = j->text + j->nodes[node].start;
    n = j->nodes[node].len;
    if (i < n && s[i] == '-') { neg = 1; i++; }
    while (i < n && s[i] >= '0' && s[i] <= '9') { mant = mant * 10 + (s[i] - '0'); i++; digits++; }
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') { mant = mant * 10 + (s[i] - '0'); exp10--; i++; digits++; }
    }
    if (!digits) return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) { eneg = s[i] == '-'; i++; }
        if (i >= n) return 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') { if (e < 10000) e = e * 10 + (s[i] - '0'); i++; }
        exp10 += eneg ? -e : e;
    }
    if (i != n) return 0;
    /* Divide by an exact power of ten rather than multiply by an inexact one: 1e-06 and 0.02 come out right. */
    v = mant;
    if (exp10 < 0) v = v / pow(10.0, -exp10); else if (exp10 > 0) v = v * pow(10.0, exp10);
    *out = neg ? -v : v;
    return 1;
}

/* Integer member: returns 1 and stores it if node is an integral number within int range. */
static int gemma2__json_int(const gemma2__json *j, int32_t node, int *out)
{
    double d;
    if (!gemma2__json_number(j, node, &d)) return 0;
    if (d != floor(d) || d < INT_MIN || d > INT_MAX) return 0;
    *out = (int)d;
    return 1;
}

/* Appends the UTF-8 encoding of code point cp to out; returns bytes written (1..4). */
static int gemma2__utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xc0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static int gemma2__hex4(const char *s, uint32_t *v)
{
    int k;
    *v = 0;
    for (k = 0; k < 4; k++) {
        char c = s[k];
        *v <<= 4;
        if (c >= '0' && c <= '9') *v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') *v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') *v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    return 1;
}

/* Decodes a string node into out (at most its raw length bytes are needed: unescaping
   never grows the text). Returns the decoded length, or -1 on a bad escape. A lone
   surrogate \uD800 is written as U+FFFD (JSON allows it, UTF-8 cannot hold it). */
static int64_t gemma2__json_unescape(const gemma2__json *j, int32_t node, char *out)
{
    const char *s = j->text + j->nodes[node].start;
    size_t n = j->nodes[node].len, i = 0, o = 0;
    if (!j->nodes[node].escaped) { memcpy(out, s, n); return (int64_t)n; }
    while (i < n) {
        char c = s[i];
        if (c != '\\') { out[o++] = c; i++; continue; }
        if (i + 1 >= n) return -1;
        c = s[i + 1];
        i += 2;
        switch (c) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (i + 4 > n || !gemma2__hex4(s + i, &cp)) return -1;
            i += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && i + 6 <= n && s[i] == '\\' && s[i + 1] == 'u' &&
                gemma2__hex4(s + i + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            } else if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
            /* \uXXXX is 6 bytes and yields at most 3; a surrogate pair is 12 and yields 4 */
            o += (size_t)gemma2__utf8_put(out + o, cp);
            break;
        }
        default: return -1;
        }
    }
    return (int64_t)o;
}

/* String member compared to a C string (exact bytes after unescaping). */
static int gemma2__json_streq(const gemma2__json *j, int32_t node, const char *s)
{
    char buf[256];
    size_t sl = strlen(s);
    int64_t n;
    if (!gemma2__json_is(j, node, GEMMA2__JSTRING) || j->nodes[node].len >= sizeof buf) return 0;
    n = gemma2__json_unescape(j, node, buf);
    return n == (int64_t)sl && !memcmp(buf, s, sl);
}

/* ===========================================================================
   2.3  Files: mapping and reading
   =========================================================================== */

/* A file's bytes, mapped read-only where the OS allows (so multi-GB weights cost no copy
   and no RSS until touched, and pages are shared between processes), else read into memory. */
typedef struct gemma2__file {
    const uint8_t *data;
    size_t size;
    int mapped;     /* 1: data is a mapping, 0: data is an allocation */
#ifdef GEMMA2__WINDOWS
    void *hfile, *hmap;
#endif
} gemma2__file;

#if !defined(GEMMA2_NO_MMAP) && defined(GEMMA2__WINDOWS)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#elif !defined(GEMMA2_NO_MMAP) && (defined(__unix__) || defined(__APPLE__))
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#define GEMMA2__POSIX_MMAP 1
#endif

/* Reads a whole file with stdio (the fallback, and for small files). */
static int gemma2__file_read(gemma2__file *f, const char *path, char *err, size_t err_size)
{
    FILE *fp = fopen(path, "rb");
    long n;
    uint8_t *buf;
    memset(f, 0, sizeof *f);
    if (!fp) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot open", path);
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot determine size", path);
    }
    buf = (uint8_t *)GEMMA2_MALLOC((size_t)n + 1);
    if (!buf) { fclose(fp); return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory (%ld bytes)", path, n); }
    if (n > 0 && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        fclose(fp);
        GEMMA2_FREE(buf);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: read error", path);
    }
    fclose(fp);
    buf[n] = 0; /* a terminator past the end: harmless, and handy for text */
    f->data = buf;
    f->size = (size_t)n;
    return 0;
}

/* Maps a file read-only (or reads it under GEMMA2_NO_MMAP). */
static int gemma2__file_map(gemma2__file *f, const char *path, char *err, size_t err_size)
{
#if defined(GEMMA2__POSIX_MMAP)
    struct stat st;
    void *p;
    int fd = open(path, O_RDONLY);
    memset(f, 0, sizeof *f);
    if (fd < 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot open", path);
    if (fstat(fd, &st) != 0) { close(fd); return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot stat", path); }
    if (st.st_size == 0) { close(fd); return gemma2__file_read(f, path, err, err_size); }
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED) return gemma2__file_read(f, path, err, err_size);
    f->data = (const uint8_t *)p;
    f->size = (size_t)st.st_size;
    f->mapped = 1;
    return 0;
#elif !defined(GEMMA2_NO_MMAP) && defined(GEMMA2__WINDOWS)
    LARGE_INTEGER sz;
    HANDLE h, m;
    void *p;
    memset(f, 0, sizeof *f);
    h = CreateFileA(path, GENERIC_READ, FILE_SHARE_READ, NULL, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    if (h == INVALID_HANDLE_VALUE) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot open", path);
    if (!GetFileSizeEx(h, &sz) || sz.QuadPart == 0) { CloseHandle(h); return gemma2__file_read(f, path, err, err_size); }
    m = CreateFileMappingA(h, NULL, PAGE_READONLY, 0, 0, NULL);
    if (!m) { CloseHandle(h); return gemma2__file_read(f, path, err, err_size); }
    p = MapViewOfFile(m, FILE_MAP_READ, 0, 0, 0);
    if (!p) { CloseHandle(m); CloseHandle(h); return gemma2__file_read(f, path, err, err_size); }
    f->data = (const uint8_t *)p;
    f->size = (size_t)sz.QuadPart;
    f->mapped = 1;
    f->hfile = h;
    f->hmap = m;
    return 0;
#else
    return gemma2__file_read(f, path, err, err_size);
#endif
}

static void gemma2__file_close(gemma2__file *f)
{
    if (!f->data) return;
    if (!f->mapped) GEMMA2_FREE((void *)f->data);
#if defined(GEMMA2__POSIX_MMAP)
    else munmap((void *)f->data, f->size);
#elif !defined(GEMMA2_NO_MMAP) && defined(GEMMA2__WINDOWS)
    else { UnmapViewOfFile(f->data); CloseHandle(f->hmap); CloseHandle(f->hfile); }
#endif
    memset(f, 0, sizeof *f);
}

static int gemma2__file_exists(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    fclose(fp);
    return 1;
}

/* ===========================================================================
   2.4  Safetensors
   =========================================================================== */

/* A safetensors file is: an 8-byte little-endian header length N, N bytes of JSON
   ({"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...,
   "__metadata__": {...}}), then the tensor bytes; offsets are relative to the end of the
   header. Nothing in it is trusted: every span is checked against the file size and
   against shape x dtype size before a pointer into the file is handed out. */

enum { GEMMA2__ST_F32, GEMMA2__ST_BF16, GEMMA2__ST_F16 };

typedef struct gemma2__tensor {
    char *name;
    int dtype;              /* GEMMA2__ST_* */
    int ndim;
    int64_t shape[4];
    const uint8_t *data;    /* inside the file's mapping */
    uint64_t nbytes;
    int file;               /* index into the model's files */
} gemma2__tensor;

typedef struct gemma2__tensors {
    gemma2__tensor *t;
    int n, cap;
} gemma2__tensors;

static void gemma2__tensors_free(gemma2__tensors *ts)
{
    int i;
    for (i = 0; i < ts->n; i++) GEMMA2_FREE(ts->t[i].name);
    GEMMA2_FREE(ts->t);
    memset(ts, 0, sizeof *ts);
}

static const gemma2__tensor *gemma2__tensors_find(const gemma2__tensors *ts, const char *name)
{
    int i;
    for (i = 0; i < ts->n; i++)
        if (!strcmp(ts->t[i].name, name)) return &ts->t[i];
    return NULL;
}

/* Adds every tensor of one mapped safetensors file (path is for messages only). */
static int gemma2__safetensors_read(gemma2__tensors *ts, const gemma2__file *f, int file_index, const char *path,
                                    char *err, size_t err_size)
{
    uint64_t hlen = 0, data_size;
    const uint8_t *data;
    gemma2__json j;
    char jerr[160];
    int32_t c;
    int k, rc = 0;
    if (f->size < 8) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: too short for a safetensors file (%zu bytes)", path, f->size);
    for (k = 7; k >= 0; k--) hlen = (hlen << 8) | f->data[k];
    if (hlen < 2 || hlen > f->size - 8 || hlen > 100u * 1024 * 1024)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: header length %llu does not fit the file size %zu",
                            path, (unsigned long long)hlen, f->size);
    data = f->data + 8 + hlen;
    data_size = f->size - 8 - hlen;
    if (gemma2__json_parse(&j, (const char *)f->data + 8, (size_t)hlen, jerr, sizeof jerr) != 0) {
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: bad header: %s", path, jerr);
    }
    if (!gemma2__json_is(&j, 0, GEMMA2__JOBJECT)) {
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: header is not a JSON object", path);
    }
    for (c = j.nodes[0].child; c >= 0 && rc == 0; c = j.nodes[j.nodes[c].next].next) {
        int32_t v = j.nodes[c].next, dt, sh, off, e;
        gemma2__tensor t;
        uint64_t begin = 0, end = 0, elems = 1, esize;
        double d;
        int64_t nl;
        memset(&t, 0, sizeof t);
        t.name = (char *)GEMMA2_MALLOC(j.nodes[c].len + 1);
        if (!t.name) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", path); break; }
        nl = gemma2__json_unescape(&j, c, t.name);
        if (nl < 0) { GEMMA2_FREE(t.name); rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: bad tensor name", path); break; }
        t.name[nl] = 0;
        if (!strcmp(t.name, "__metadata__")) { GEMMA2_FREE(t.name); continue; }
#define GEMMA2__ST_BAD(...) do { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, __VA_ARGS__); GEMMA2_FREE(t.name); goto next; } while (0)
        if (!gemma2__json_is(&j, v, GEMMA2__JOBJECT)) GEMMA2__ST_BAD("%s: tensor %s: entry is not an object", path, t.name);
        dt = gemma2__json_get(&j, v, "dtype");
        sh = gemma2__json_get(&j, v, "shape");
        off = gemma2__json_get(&j, v, "data_offsets");
        if (gemma2__json_streq(&j, dt, "F32")) { t.dtype = GEMMA2__ST_F32; esize = 4; }
        else if (gemma2__json_streq(&j, dt, "BF16")) { t.dtype = GEMMA2__ST_BF16; esize = 2; }
        else if (gemma2__json_streq(&j, dt, "F16")) { t.dtype = GEMMA2__ST_F16; esize = 2; }
        else GEMMA2__ST_BAD("%s: tensor %s: unsupported or missing dtype (BF16, F16, F32 are supported)", path, t.name);
        if (!gemma2__json_is(&j, sh, GEMMA2__JARRAY) || j.nodes[sh].count > 4)
            GEMMA2__ST_BAD("%s: tensor %s: shape must be an array of at most 4 sizes", path, t.name);
        for (e = j.nodes[sh].child; e >= 0; e = j.nodes[e].next) {
            if (!gemma2__json_number(&j, e, &d) || d < 0 || d != floor(d) || d > 9007199254740992.0)
                GEMMA2__ST_BAD("%s: tensor %s: bad shape entry", path, t.name);
            t.shape[t.ndim++] = (int64_t)d;
            if (!gemma2__mul_ok(elems, (uint64_t)d, &elems)) GEMMA2__ST_BAD("%s: tensor %s: shape overflows", path, t.name);
        }
        if (!gemma2__json_is(&j, off, GEMMA2__JARRAY) || j.nodes[off].count != 2)
            GEMMA2__ST_BAD("%s: tensor %s: data_offsets must be [begin, end]", path, t.name);
        e = j.nodes[off].child;
        if (!gemma2__json_number(&j, e, &d) || d < 0 || d != floor(d) || d > 1e18) GEMMA2__ST_BAD("%s: tensor %s: bad data_offsets", path, t.name);
        begin = (uint64_t)d;
        if (!gemma2__json_number(&j, j.nodes[e].next, &d) || d < 0 || d != floor(d) || d > 1e18) GEMMA2__ST_BAD("%s: tensor %s: bad data_offsets", path, t.name);
        end = (uint64_t)d;
        if (begin > end || end > data_size)
            GEMMA2__ST_BAD("%s: tensor %s: data_offsets [%llu, %llu] outside the %llu data bytes", path, t.name,
                           (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
        if (!gemma2__mul_ok(elems, esize, &t.nbytes) || t.nbytes != end - begin)
            GEMMA2__ST_BAD("%s: tensor %s: %llu bytes of data but its shape needs %llu", path, t.name,
                           (unsigned long long)(end - begin), (unsigned long long)(elems * esize));
        if (gemma2__tensors_find(ts, t.name)) GEMMA2__ST_BAD("%s: tensor %s appears twice", path, t.name);
        t.data = data + begin;
        t.file = file_index;
        if (ts->n == ts->cap) {
            int cap = ts->cap ? ts->cap * 2 : 256;
            void *p = GEMMA2_REALLOC(ts->t, (size_t)cap * sizeof *ts->t);
            if (!p) { GEMMA2_FREE(t.name); rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", path); break; }
            ts->t = (gemma2__tensor *)p;
            ts->cap = cap;
        }
        ts->t[ts->n++] = t;
#undef GEMMA2__ST_BAD
    next:;
    }
    gemma2__json_free(&j);
    return rc;
}

/* ===========================================================================
   2.5  Config (config.json)
   =========================================================================== */

/* Reads a Gemma 2 config.json. Unknown keys are ignored; missing optional keys take
   transformers' Gemma2Config defaults; impossible values are errors naming the field. */

static int gemma2__cfg_int(const gemma2__json *j, const char *key, int def, int lo, int hi, int *out,
                           const char *path, char *err, size_t err_size)
{
    int32_t n = gemma2__json_get(j, 0, key);
    int v = def;
    if (n >= 0 && !gemma2__json_is(j, n, GEMMA2__JNULL) && !gemma2__json_int(j, n, &v))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"%s\" must be an integer", path, key);
    if (n < 0 && def < lo) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"%s\" is missing", path, key);
    if (v < lo || v > hi) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"%s\" = %d is out of range [%d, %d]", path, key, v, lo, hi);
    *out = v;
    return 0;
}

/* A float that may be null (null = 0 = "off" for the softcaps). */
static int gemma2__cfg_float(const gemma2__json *j, const char *key, double def, double lo, double hi, float *out,
                             const char *path, char *err, size_t err_size)
{
    int32_t n = gemma2__json_get(j, 0, key);
    double v = def;
    if (n >= 0 && gemma2__json_is(j, n, GEMMA2__JNULL)) v = 0;
    else if (n >= 0 && !gemma2__json_number(j, n, &v))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"%s\" must be a number", path, key);
    if (!(v >= lo && v <= hi)) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"%s\" = %g is out of range", path, key, v);
    *out = (float)v;
    return 0;
}

/* eos_token_id: an int or a list of ints; appended to cfg->eos_token_ids without duplicates. */
static int gemma2__cfg_eos(gemma2_config *cfg, const gemma2__json *j, int32_t n, const char *path, char *err, size_t err_size)
{
    int32_t e = n;
    int single = gemma2__json_is(j, n, GEMMA2__JNUMBER);
    if (n < 0 || gemma2__json_is(j, n, GEMMA2__JNULL)) return 0;
    if (!single && !gemma2__json_is(j, n, GEMMA2__JARRAY))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"eos_token_id\" must be an integer or a list", path);
    if (!single) e = j->nodes[n].child;
    for (; e >= 0; e = single ? -1 : j->nodes[e].next) {
        int v, k, dup = 0;
        if (!gemma2__json_int(j, e, &v) || v < 0 || v >= cfg->vocab_size)
            return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"eos_token_id\" holds an id outside the vocabulary", path);
        for (k = 0; k < cfg->n_eos; k++) dup |= cfg->eos_token_ids[k] == v;
        if (!dup && cfg->n_eos < (int)(sizeof cfg->eos_token_ids / sizeof cfg->eos_token_ids[0])) cfg->eos_token_ids[cfg->n_eos++] = v;
    }
    return 0;
}

static int gemma2__config_parse(gemma2_config *cfg, const char *text, size_t size, const char *path, char *err, size_t err_size)
{
    gemma2__json j;
    char jerr[160];
    int32_t n;
    int rc = 0, mpe;
    memset(cfg, 0, sizeof *cfg);
    if (gemma2__json_parse(&j, text, size, jerr, sizeof jerr) != 0 || !gemma2__json_is(&j, 0, GEMMA2__JOBJECT)) {
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: not a JSON object: %s", path, jerr);
    }
    n = gemma2__json_get(&j, 0, "model_type");
    if (!gemma2__json_streq(&j, n, "gemma2")) {
        char got[64] = "missing";
        if (gemma2__json_is(&j, n, GEMMA2__JSTRING) && j.nodes[n].len < sizeof got) {
            int64_t l = gemma2__json_unescape(&j, n, got);
            got[l < 0 ? 0 : l] = 0;
        }
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: model_type is \"%s\", expected \"gemma2\"", path, got);
    }
    /* The upper bounds keep every size product far from overflow (V x H < 2^40 elements). */
    if ((rc = gemma2__cfg_int(&j, "vocab_size", -1, 1, 1 << 22, &cfg->vocab_size, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "hidden_size", -1, 1, 1 << 16, &cfg->hidden_size, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "intermediate_size", -1, 1, 1 << 18, &cfg->intermediate_size, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "num_hidden_layers", -1, 1, 1024, &cfg->num_hidden_layers, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "num_attention_heads", -1, 1, 1024, &cfg->num_attention_heads, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "num_key_value_heads", cfg->num_attention_heads, 1, 1024, &cfg->num_key_value_heads, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "head_dim", cfg->hidden_size / cfg->num_attention_heads, 2, 4096, &cfg->head_dim, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "max_position_embeddings", 8192, 1, 1 << 24, &cfg->max_position_embeddings, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "bos_token_id", 2, 0, cfg->vocab_size - 1, &cfg->bos_token_id, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "pad_token_id", 0, 0, cfg->vocab_size - 1, &cfg->pad_token_id, path, err, err_size)))
        goto done;
    mpe = cfg->max_position_embeddings;
    n = gemma2__json_get(&j, 0, "sliding_window");
    if ((rc = gemma2__cfg_int(&j, n >= 0 ? "sliding_window" : "sliding_window_size", 4096, 1, 1 << 24, &cfg->sliding_window, path, err, err_size)) ||
        (rc = gemma2__cfg_float(&j, "query_pre_attn_scalar", cfg->head_dim, 1e-6, 1e9, &cfg->query_pre_attn_scalar, path, err, err_size)) ||
        (rc = gemma2__cfg_float(&j, "attn_logit_softcapping", 50.0, 0, 1e9, &cfg->attn_logit_softcapping, path, err, err_size)) ||
        (rc = gemma2__cfg_float(&j, "final_logit_softcapping", 30.0, 0, 1e9, &cfg->final_logit_softcapping, path, err, err_size)) ||
        (rc = gemma2__cfg_float(&j, "rms_norm_eps", 1e-6, 0, 1, &cfg->rms_norm_eps, path, err, err_size)) ||
        (rc = gemma2__cfg_float(&j, "rope_theta", 10000.0, 1.0, 1e12, &cfg->rope_theta, path, err, err_size)))
        goto done;
    (void)mpe;
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0) {
        rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                          path, cfg->num_attention_heads, cfg->num_key_value_heads);
        goto done;
    }
    if (cfg->head_dim % 2) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: head_dim (%d) must be even for RoPE", path, cfg->head_dim); goto done; }
    /* The activation: Gemma 2 uses the tanh approximation of GELU under either key name. */
    n = gemma2__json_get(&j, 0, "hidden_activation");
    if (n < 0 || gemma2__json_is(&j, n, GEMMA2__JNULL)) n = gemma2__json_get(&j, 0, "hidden_act");
    if (n >= 0 && !gemma2__json_streq(&j, n, "gelu_pytorch_tanh") && !gemma2__json_streq(&j, n, "gelu_tanh")) {
        rc = gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: hidden_activation must be \"gelu_pytorch_tanh\"", path);
        goto done;
    }
    n = gemma2__json_get(&j, 0, "eos_token_id");
    if (n < 0) { cfg->eos_token_ids[0] = 1 < cfg->vocab_size ? 1 : 0; cfg->n_eos = 1; }
    else rc = gemma2__cfg_eos(cfg, &j, n, path, err, err_size);
done:
    gemma2__json_free(&j);
    return rc;
}

/* ===========================================================================
   2.6  Thread pool
   =========================================================================== */

/* The pool runs one parallel step at a time: fn(ctx, task, n_tasks) for every task,
   spread over the session's threads (the calling thread works too), then returns.
   Sessions own their pool, so a shared model never needs locks. */
typedef void (*gemma2__task_fn)(void *ctx, int task, int n_tasks);

typedef struct gemma2__pool {
    int n_threads;
} gemma2__pool;

static gemma2__pool *gemma2__pool_new(int n_threads)
{
    gemma2__pool *p = (gemma2__pool *)gemma2__calloc(1, sizeof *p);
    if (p) p->n_threads = n_threads < 1 ? 1 : n_threads;
    return p;
}

static void gemma2__pool_free(gemma2__pool *p) { GEMMA2_FREE(p); }

static int gemma2__pool_size(const gemma2__pool *p) { return p->n_threads; }

static void gemma2__pool_run(gemma2__pool *p, gemma2__task_fn fn, void *ctx, int n_tasks)
{
    int t;
    (void)p;
    for (t = 0; t < n_tasks; t++) fn(ctx, t, n_tasks);
}

/* Number of online CPUs, or 1 if unknown. */
static int gemma2__cpu_count(void) { return 1; }

/* ===========================================================================
   2.7  Kernels: scalar reference
   =========================================================================== */

/* Weight storage types. A matrix is row-major W[rows][cols] and is applied as y = W x
   (PyTorch's Linear layout: each output is the dot product of one row with the input).
   Quantized types will join this list; a kernel set handles every type it lists. */
enum { GEMMA2__DT_F32 = 0, GEMMA2__DT_BF16 = 1, GEMMA2__DT_COUNT };

typedef struct gemma2__mat {
    const void *data; /* rows * cols elements of dtype */
    int dtype;        /* GEMMA2__DT_* */
    int rows, cols;
} gemma2__mat;

/* One matrix product Y[t][r] = sum_k W[r][k] X[t][k], t < T, over a range of rows so that
   threads can split it. Activations X are float32; with GEMMA2_COMPUTE_BF16 the caller
   also hands a bf16 copy (xb) that kernels with bf16 dot products use instead. */
typedef struct gemma2__matmul_args {
    float *y;            /* [T][ldy] */
    int ldy;
    const float *x;      /* [T][w->cols] */
    const uint16_t *xb;  /* [T][w->cols] bf16 copy of x, or NULL */
    int T;
    const gemma2__mat *w;
} gemma2__matmul_args;

/* A kernel set: one function per hot operation. The scalar set below is the reference
   that every SIMD set is tested against. */
typedef struct gemma2__kernels {
    const char *name;
    int id;               /* GEMMA2_KERNELS_* */
    int wants_bf16_x;     /* matmul reads xb (bf16 activations) when given */
    void (*matmul)(const gemma2__matmul_args *a, int r0, int r1);
    float (*dot)(const float *a, const float *b, int n);            /* sum a[i] b[i] */
    void (*axpy)(float *y, float a, const float *x, int n);         /* y += a x */
    /* out = x / sqrt(mean(x^2) + eps) * w1 where w1 = 1 + weight (precomputed) */
    void (*rmsnorm)(float *out, const float *x, const float *w1, int n, float eps);
    /* g[i] = gelu_tanh(g[i]) * u[i] */
    void (*gelu_mul)(float *g, const float *u, int n);
} gemma2__kernels;

/* --- the scalar reference ------------------------------------------------ */

static float gemma2__dot_scalar(const float *a, const float *b, int n)
{
    float s = 0;
    int i;
    for (i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void gemma2__axpy_scalar(float *y, float a, const float *x, int n)
{
    int i;
    for (i = 0; i < n; i++) y[i] += a * x[i];
}

/* Element k of a weight row, widened to float. */
static float gemma2__w_at(const gemma2__mat *w, size_t idx)
{
    if (w->dtype == GEMMA2__DT_BF16) return gemma2__bf16_to_f32(((const uint16_t *)w->data)[idx]);
    return ((const float *)w->data)[idx];
}

static void gemma2__matmul_scalar(const gemma2__matmul_args *a, int r0, int r1)
{
    const gemma2__mat *w = a->w;
    int K = w->cols, r, t, k;
    for (r = r0; r < r1; r++) {
        size_t row = (size_t)r * (size_t)K;
        for (t = 0; t < a->T; t++) {
            const float *x = a->x + (size_t)t * K;
            float s = 0;
            if (w->dtype == GEMMA2__DT_BF16) {
                const uint16_t *wr = (const uint16_t *)w->data + row;
                for (k = 0; k < K; k++) s += gemma2__bf16_to_f32(wr[k]) * x[k];
            } else {
                const float *wr = (const float *)w->data + row;
                for (k = 0; k < K; k++) s += wr[k] * x[k];
            }
            a->y[(size_t)t * a->ldy + r] = s;
        }
    }
}

/* RMSNorm as Gemma defines it: the weight is stored as w and applied as (1 + w); here w1
   already holds 1 + w (computed once at load, in float32 as the references do). */
static void gemma2__rmsnorm_scalar(float *out, const float *x, const float *w1, int n, float eps)
{
    float ss = 0, scale;
    int i;
    for (i = 0; i < n; i++) ss += x[i] * x[i];
    scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = x[i] * scale * w1[i];
}

/* GELU, tanh approximation (`gelu_pytorch_tanh`); the exact erf form differs by ~1e-2 in logits. */
static float gemma2__gelu_tanh(float u)
{
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * u * (1.0f + tanhf(c * (u + 0.044715f * u * u * u)));
}

static void gemma2__gelu_mul_scalar(float *g, const float *u, int n)
{
    int i;
    for (i = 0; i < n; i++) g[i] = gemma2__gelu_tanh(g[i]) * u[i];
}

static const gemma2__kernels gemma2__kernels_scalar = {
    "scalar", GEMMA2_KERNELS_SCALAR, 0,
    gemma2__matmul_scalar, gemma2__dot_scalar, gemma2__axpy_scalar,
    gemma2__rmsnorm_scalar, gemma2__gelu_mul_scalar
};

/* ===========================================================================
   2.8  Kernels: SIMD (x86-64 AVX2 / AVX-512, ARM64 NEON) and dispatch
   =========================================================================== */

/* Picks the kernel set: `want` is a GEMMA2_KERNELS_* value (AUTO = the best this CPU runs).
   Returns NULL if the CPU (or this build) cannot run the one asked for. */
static const gemma2__kernels *gemma2__kernels_select(int want)
{
    if (want == GEMMA2_KERNELS_AUTO || want == GEMMA2_KERNELS_SCALAR) return &gemma2__kernels_scalar;
    return NULL;
}

/* ===========================================================================
   2.9  Model loading
   =========================================================================== */

/* The tokenizer lives in section 2.12; the model only holds it. */
typedef struct gemma2__tokenizer gemma2__tokenizer;
/* Reads tokenizer.json (Hugging Face) or tokenizer.model (SentencePiece), chosen by content. */
static int gemma2__tokenizer_load(gemma2__tokenizer **out, const char *path, char *err, size_t err_size);
static void gemma2__tokenizer_free(gemma2__tokenizer *t);

/* One decoder layer's weights. Shapes: H hidden, nH heads, nKV kv heads, hd head_dim, I intermediate. */
typedef struct gemma2__layer {
    const float *attn_norm;      /* [H] input_layernorm, stored as 1 + w */
    const float *post_attn_norm; /* [H] post_attention_layernorm, 1 + w */
    const float *pre_ffw_norm;   /* [H] pre_feedforward_layernorm, 1 + w */
    const float *post_ffw_norm;  /* [H] post_feedforward_layernorm, 1 + w */
    gemma2__mat wq;              /* [nH*hd, H]  q_proj */
    gemma2__mat wk;              /* [nKV*hd, H] k_proj */
    gemma2__mat wv;              /* [nKV*hd, H] v_proj */
    gemma2__mat wo;              /* [H, nH*hd]  o_proj */
    gemma2__mat wgate;           /* [I, H]      gate_proj */
    gemma2__mat wup;             /* [I, H]      up_proj */
    gemma2__mat wdown;           /* [H, I]      down_proj */
    int sliding;                 /* 1 on layers 0, 2, 4, ...: attends to the last W positions only */
} gemma2__layer;

/* A block of memory the model owns (converted weights, norm vectors). */
typedef struct gemma2__block { struct gemma2__block *next; } gemma2__block;

struct gemma2_model {
    gemma2_config cfg;
    gemma2_options opt;            /* as given, defaults filled in */
    int has_weights;               /* 0 when loaded tokenizer-only */
    gemma2__mat embed;             /* [V, H] embed_tokens; also the (tied) output projection */
    const float *final_norm;       /* [H] model.norm, 1 + w */
    gemma2__layer *layers;         /* [L] */
    gemma2__file *files;           /* the safetensors files, mapped */
    int n_files;
    gemma2__block *owned;          /* allocations freed with the model */
    size_t weight_bytes;
    const gemma2__kernels *kern;
    gemma2__tokenizer *tok;        /* NULL when loaded without a tokenizer */
};

static void *gemma2__own(gemma2_model *m, size_t bytes)
{
    /* Owned blocks are chained through a header; the payload is 64-byte aligned for SIMD loads. */
    uint8_t *raw = (uint8_t *)GEMMA2_MALLOC(bytes + 64 + sizeof(gemma2__block));
    gemma2__block *b;
    uint8_t *payload;
    if (!raw) return NULL;
    b = (gemma2__block *)raw;
    b->next = m->owned;
    m->owned = b;
    payload = raw + sizeof(gemma2__block);
    payload += (64 - ((uintptr_t)payload & 63)) & 63;
    return payload;
}

GEMMA2_DEF const char *gemma2_error_string(int code)
{
    switch (code) {
    case GEMMA2_OK: return "ok";
    case GEMMA2_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case GEMMA2_ERROR_OUT_OF_MEMORY: return "out of memory";
    case GEMMA2_ERROR_IO: return "cannot read file";
    case GEMMA2_ERROR_FORMAT: return "malformed file";
    case GEMMA2_ERROR_UNSUPPORTED: return "unsupported";
    case GEMMA2_ERROR_BAD_TOKEN: return "token id out of range";
    case GEMMA2_ERROR_CONTEXT_FULL: return "context full";
    case GEMMA2_ERROR_NO_TOKENIZER: return "model has no tokenizer";
    case GEMMA2_ERROR_NO_WEIGHTS: return "model was loaded without weights";
    case GEMMA2_ERROR_CHAT_FORMAT: return "bad chat message order or role";
    case GEMMA2_ERROR_CANCELLED: return "cancelled";
    default: return "unknown error";
    }
}

/* Maps model.safetensors, or every shard named by model.safetensors.index.json. */
static int gemma2__open_weights(gemma2_model *m, const char *dir, gemma2__tensors *ts, char *err, size_t err_size)
{
    char *index_path = gemma2__path_join(dir, "model.safetensors.index.json");
    char **names = NULL;
    int n_names = 0, rc = 0, i;
    if (!index_path) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    if (gemma2__file_exists(index_path)) {
        gemma2__file f;
        gemma2__json j;
        char jerr[160];
        int32_t wm, c;
        if ((rc = gemma2__file_read(&f, index_path, err, err_size)) != 0) { GEMMA2_FREE(index_path); return rc; }
        if (gemma2__json_parse(&j, (const char *)f.data, f.size, jerr, sizeof jerr) != 0) {
            rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: %s", index_path, jerr);
            goto index_done;
        }
        wm = gemma2__json_get(&j, 0, "weight_map");
        if (!gemma2__json_is(&j, wm, GEMMA2__JOBJECT) || j.nodes[wm].count == 0) {
            rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: no \"weight_map\" object", index_path);
            goto index_done;
        }
        names = (char **)gemma2__calloc((size_t)j.nodes[wm].count / 2, sizeof(char *));
        if (!names) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory"); goto index_done; }
        /* The distinct shard files, each checked to stay inside the folder. */
        for (c = j.nodes[wm].child; c >= 0; c = j.nodes[j.nodes[c].next].next) {
            int32_t v = j.nodes[c].next;
            char name[512];
            int64_t l;
            int dup = 0, k;
            if (!gemma2__json_is(&j, v, GEMMA2__JSTRING) || j.nodes[v].len >= sizeof name ||
                (l = gemma2__json_unescape(&j, v, name)) <= 0) {
                rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: weight_map values must be file names", index_path);
                goto index_done;
            }
            name[l] = 0;
            if ((int64_t)strlen(name) != l || strchr(name, '/') || strchr(name, '\\') || strchr(name, ':') || !strcmp(name, "..") || !strcmp(name, ".")) {
                rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: shard name \"%s\" must be a plain file name in the model folder", index_path, name);
                goto index_done;
            }
            for (k = 0; k < n_names; k++) dup |= !strcmp(names[k], name);
            if (!dup) {
                if (!(names[n_names] = gemma2__strdup(name))) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory"); goto index_done; }
                n_names++;
            }
        }
    index_done:
        gemma2__json_free(&j);
        gemma2__file_close(&f);
    } else {
        names = (char **)gemma2__calloc(1, sizeof(char *));
        if (!names || !(names[0] = gemma2__strdup("model.safetensors"))) rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
        else n_names = 1;
    }
    GEMMA2_FREE(index_path);
    if (rc == 0) {
        m->files = (gemma2__file *)gemma2__calloc((size_t)n_names, sizeof(gemma2__file));
        if (!m->files) rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    }
    for (i = 0; i < n_names && rc == 0; i++) {
        char *path = gemma2__path_join(dir, names[i]);
        if (!path) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory"); break; }
        rc = gemma2__file_map(&m->files[i], path, err, err_size);
        if (rc == 0) {
            m->n_files = i + 1;
            rc = gemma2__safetensors_read(ts, &m->files[i], i, path, err, err_size);
        }
        GEMMA2_FREE(path);
    }
    for (i = 0; i < n_names; i++) GEMMA2_FREE(names ? names[i] : NULL);
    GEMMA2_FREE(names);
    return rc;
}

static int gemma2__progress(gemma2_model *m, float f, char *err, size_t err_size)
{
    if (m->opt.progress && m->opt.progress(m->opt.progress_user, f))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_CANCELLED, "loading cancelled by the progress callback");
    return 0;
}

/* Finds a tensor and checks its shape: [d0] when d1 == 0, else [d0, d1]. */
static int gemma2__want(const gemma2__tensors *ts, const char *name, int64_t d0, int64_t d1, const gemma2__tensor **out,
                        const gemma2_model *m, char *err, size_t err_size)
{
    const gemma2__tensor *t = gemma2__tensors_find(ts, name);
    int nd = d1 ? 2 : 1;
    (void)m;
    if (!t) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "tensor %s is missing from the checkpoint", name);
    if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        if (nd == 2)
            return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "tensor %s has shape [%lld%s%lld], expected [%lld, %lld]", name,
                                (long long)t->shape[0], t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL,
                                (long long)d0, (long long)d1);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "tensor %s has %d dimensions or size %lld, expected [%lld]", name,
                            t->ndim, (long long)t->shape[0], (long long)d0);
    }
    *out = t;
    return 0;
}

/* A norm vector: widened to float32 and stored as 1 + w (Gemma's RMSNorm scale). */
static int gemma2__bind_norm(gemma2_model *m, const gemma2__tensors *ts, const char *name, const float **out, char *err, size_t err_size)
{
    const gemma2__tensor *t;
    int H = m->cfg.hidden_size, i, rc;
    float *w;
    if ((rc = gemma2__want(ts, name, H, 0, &t, m, err, err_size)) != 0) return rc;
    if (!(w = (float *)gemma2__own(m, (size_t)H * sizeof(float)))) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    for (i = 0; i < H; i++) {
        float v;
        uint16_t h;
        if (t->dtype == GEMMA2__ST_F32) memcpy(&v, t->data + 4 * (size_t)i, 4);
        else {
            memcpy(&h, t->data + 2 * (size_t)i, 2);
            v = t->dtype == GEMMA2__ST_BF16 ? gemma2__bf16_to_f32(h) : gemma2__f16_to_f32(h);
        }
        w[i] = 1.0f + v;
    }
    m->weight_bytes += (size_t)H * sizeof(float);
    *out = w;
    return 0;
}

/* A weight matrix: BF16 (and F32 unless converting) used in place from the mapping;
   F16, misaligned data, and F32 under GEMMA2_WEIGHTS_BF16 become an owned copy. */
static int gemma2__bind_mat(gemma2_model *m, const gemma2__tensors *ts, const char *name, int rows, int cols, gemma2__mat *out,
                            char *err, size_t err_size)
{
    const gemma2__tensor *t;
    size_t n = (size_t)rows * (size_t)cols, i;
    int rc, want_bf16 = m->opt.weights == GEMMA2_WEIGHTS_BF16;
    if ((rc = gemma2__want(ts, name, rows, cols, &t, m, err, err_size)) != 0) return rc;
    out->rows = rows;
    out->cols = cols;
    if (t->dtype == GEMMA2__ST_BF16 && ((uintptr_t)t->data & 1) == 0) {
        out->data = t->data;
        out->dtype = GEMMA2__DT_BF16;
        m->weight_bytes += n * 2;
        return 0;
    }
    if (t->dtype == GEMMA2__ST_F32 && !want_bf16 && ((uintptr_t)t->data & 3) == 0) {
        out->data = t->data;
        out->dtype = GEMMA2__DT_F32;
        m->weight_bytes += n * 4;
        return 0;
    }
    if (want_bf16 || t->dtype == GEMMA2__ST_BF16) {
        uint16_t *dst = (uint16_t *)gemma2__own(m, n * 2);
        if (!dst) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "tensor %s: out of memory converting to bf16", name);
        for (i = 0; i < n; i++) {
            float v;
            uint16_t h;
            if (t->dtype == GEMMA2__ST_F32) { memcpy(&v, t->data + 4 * i, 4); dst[i] = gemma2__f32_to_bf16(v); }
            else if (t->dtype == GEMMA2__ST_F16) { memcpy(&h, t->data + 2 * i, 2); dst[i] = gemma2__f32_to_bf16(gemma2__f16_to_f32(h)); }
            else memcpy(&dst[i], t->data + 2 * i, 2);
        }
        out->data = dst;
        out->dtype = GEMMA2__DT_BF16;
        m->weight_bytes += n * 2;
    } else {
        float *dst = (float *)gemma2__own(m, n * 4);
        if (!dst) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "tensor %s: out of memory converting to f32", name);
        for (i = 0; i < n; i++) {
            uint16_t h;
            if (t->dtype == GEMMA2__ST_F16) { memcpy(&h, t->data + 2 * i, 2); dst[i] = gemma2__f16_to_f32(h); }
            else memcpy(&dst[i], t->data + 4 * i, 4);
        }
        out->data = dst;
        out->dtype = GEMMA2__DT_F32;
        m->weight_bytes += n * 4;
    }
    return 0;
}

static int gemma2__bind_weights(gemma2_model *m, const gemma2__tensors *ts, char *err, size_t err_size)
{
    const gemma2_config *c = &m->cfg;
    int H = c->hidden_size, I = c->intermediate_size, qd = c->num_attention_heads * c->head_dim;
    int kvd = c->num_key_value_heads * c->head_dim, l, rc;
    char name[128];
    if ((rc = gemma2__bind_mat(m, ts, "model.embed_tokens.weight", c->vocab_size, H, &m->embed, err, err_size)) ||
        (rc = gemma2__bind_norm(m, ts, "model.norm.weight", &m->final_norm, err, err_size)))
        return rc;
    m->layers = (gemma2__layer *)gemma2__own(m, (size_t)c->num_hidden_layers * sizeof(gemma2__layer));
    if (!m->layers) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    for (l = 0; l < c->num_hidden_layers; l++) {
        gemma2__layer *L = &m->layers[l];
#define GEMMA2__N(s) (snprintf(name, sizeof name, "model.layers.%d." s, l), name)
        if ((rc = gemma2__bind_norm(m, ts, GEMMA2__N("input_layernorm.weight"), &L->attn_norm, err, err_size)) ||
            (rc = gemma2__bind_norm(m, ts, GEMMA2__N("post_attention_layernorm.weight"), &L->post_attn_norm, err, err_size)) ||
            (rc = gemma2__bind_norm(m, ts, GEMMA2__N("pre_feedforward_layernorm.weight"), &L->pre_ffw_norm, err, err_size)) ||
            (rc = gemma2__bind_norm(m, ts, GEMMA2__N("post_feedforward_layernorm.weight"), &L->post_ffw_norm, err, err_size)) ||
            (rc = gemma2__bind_mat(m, ts, GEMMA2__N("self_attn.q_proj.weight"), qd, H, &L->wq, err, err_size)) ||
            (rc = gemma2__bind_mat(m, ts, GEMMA2__N("self_attn.k_proj.weight"), kvd, H, &L->wk, err, err_size)) ||
            (rc = gemma2__bind_mat(m, ts, GEMMA2__N("self_attn.v_proj.weight"), kvd, H, &L->wv, err, err_size)) ||
            (rc = gemma2__bind_mat(m, ts, GEMMA2__N("self_attn.o_proj.weight"), H, qd, &L->wo, err, err_size)) ||
            (rc = gemma2__bind_mat(m, ts, GEMMA2__N("mlp.gate_proj.weight"), I, H, &L->wgate, err, err_size)) ||
            (rc = gemma2__bind_mat(m, ts, GEMMA2__N("mlp.up_proj.weight"), I, H, &L->wup, err, err_size)) ||
            (rc = gemma2__bind_mat(m, ts, GEMMA2__N("mlp.down_proj.weight"), H, I, &L->wdown, err, err_size)))
            return rc;
#undef GEMMA2__N
        /* Gemma 2 alternates local and global attention, starting with local on layer 0. */
        L->sliding = (l % 2) == 0;
        if ((rc = gemma2__progress(m, 0.1f + 0.9f * (float)(l + 1) / (float)c->num_hidden_layers, err, err_size))) return rc;
    }
    return 0;
}

GEMMA2_DEF void gemma2_free(gemma2_model *m)
{
    int i;
    if (!m) return;
    if (m->tok) gemma2__tokenizer_free(m->tok);
    for (i = 0; i < m->n_files; i++) gemma2__file_close(&m->files[i]);
    GEMMA2_FREE(m->files);
    while (m->owned) {
        gemma2__block *b = m->owned;
        m->owned = b->next;
        GEMMA2_FREE(b);
    }
    GEMMA2_FREE(m);
}

static int gemma2__read_generation_config(gemma2_config *cfg, const char *dir); /* in 2.14 */

GEMMA2_DEF gemma2_model *gemma2_load(const char *model_dir, const gemma2_options *opt, char *err, size_t err_size)
{
    gemma2_model *m;
    gemma2__tensors ts;
    gemma2__file cf;
    char *path = NULL;
    int rc;
    if (err && err_size) err[0] = 0;
    if (!model_dir) { gemma2__fail(err, err_size, 0, "gemma2_load: model_dir is NULL"); return NULL; }
    if (opt && (opt->n_threads < 0 || opt->weights < 0 || opt->weights > GEMMA2_WEIGHTS_BF16 || opt->compute < 0 ||
                opt->compute > GEMMA2_COMPUTE_BF16 || opt->kernels < 0 || opt->kernels > GEMMA2_KERNELS_NEON)) {
        gemma2__fail(err, err_size, 0, "gemma2_load: an option is out of range (n_threads, weights, compute or kernels)");
        return NULL;
    }
    m = (gemma2_model *)gemma2__calloc(1, sizeof *m);
    if (!m) { gemma2__fail(err, err_size, 0, "out of memory"); return NULL; }
    memset(&ts, 0, sizeof ts);
    if (opt) m->opt = *opt;
    if (m->opt.n_threads == 0) m->opt.n_threads = gemma2__cpu_count();

    /* config.json */
    if (!(path = gemma2__path_join(model_dir, "config.json"))) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory"); goto fail; }
    if ((rc = gemma2__file_read(&cf, path, err, err_size)) != 0) goto fail;
    rc = gemma2__config_parse(&m->cfg, (const char *)cf.data, cf.size, path, err, err_size);
    gemma2__file_close(&cf);
    if (rc) goto fail;
    /* generation_config.json's eos ids (section 2.14) */
    if ((rc = gemma2__read_generation_config(&m->cfg, model_dir)) != 0) { gemma2__fail(err, err_size, rc, "%s/generation_config.json: malformed (eos_token_id)", model_dir); goto fail; }
    GEMMA2_FREE(path);
    path = NULL;

    /* The tokenizer: an explicit file, else tokenizer.json (what transformers reads), else tokenizer.model. */
    if (!m->opt.no_tokenizer) {
        if (m->opt.tokenizer_path) path = gemma2__strdup(m->opt.tokenizer_path);
        else {
            path = gemma2__path_join(model_dir, "tokenizer.json");
            if (path && !gemma2__file_exists(path)) {
                GEMMA2_FREE(path);
                path = gemma2__path_join(model_dir, "tokenizer.model");
                if (path && !gemma2__file_exists(path)) { GEMMA2_FREE(path); path = NULL; if (m->opt.tokenizer_only) {
                    rc = gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: no tokenizer.json or tokenizer.model", model_dir); goto fail; } goto no_tok; }
            }
        }
        if (!path) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory"); goto fail; }
        if ((rc = gemma2__tokenizer_load(&m->tok, path, err, err_size)) != 0) goto fail;
        GEMMA2_FREE(path);
        path = NULL;
    }
no_tok:
    if (m->opt.tokenizer_only) return m;

    m->kern = gemma2__kernels_select(m->opt.kernels);
    if (!m->kern) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "gemma2_load: the kernel set asked for (%d) is not available on this CPU or build", m->opt.kernels); goto fail; }
    if ((rc = gemma2__progress(m, 0.0f, err, err_size)) != 0) goto fail;
    if ((rc = gemma2__open_weights(m, model_dir, &ts, err, err_size)) != 0) goto fail;
    if ((rc = gemma2__progress(m, 0.1f, err, err_size)) != 0) goto fail;
    if ((rc = gemma2__bind_weights(m, &ts, err, err_size)) != 0) goto fail;
    gemma2__tensors_free(&ts);
    m->has_weights = 1;
    return m;
fail:
    (void)rc;
    GEMMA2_FREE(path);
    gemma2__tensors_free(&ts);
    gemma2_free(m);
    return NULL;
}

GEMMA2_DEF int gemma2_vocab_size(const gemma2_model *m) { return m ? m->cfg.vocab_size : GEMMA2_ERROR_INVALID_ARGUMENT; }
GEMMA2_DEF const gemma2_config *gemma2_model_config(const gemma2_model *m) { return m ? &m->cfg : NULL; }
GEMMA2_DEF size_t gemma2_model_weight_bytes(const gemma2_model *m) { return m ? m->weight_bytes : 0; }
GEMMA2_DEF const char *gemma2_model_kernels(const gemma2_model *m) { return m && m->kern ? m->kern->name : "none"; }

/* ===========================================================================
   2.10 The forward pass
   =========================================================================== */

/* How many tokens one pass through the layers handles at once. Prompts are cut into
   chunks of this size: each weight matrix is then read once per chunk instead of once per
   token (prefill becomes arithmetic-bound), while the scratch buffers stay small. */
#define GEMMA2__CHUNK 128

struct gemma2_session {
    const gemma2_model *m;
    int n_ctx;               /* capacity in tokens */
    int chunk;               /* tokens per pass, <= GEMMA2__CHUNK (smaller only in tests, to exercise the rings) */
    int pos;                 /* tokens evaluated so far = next position */
    int hi;                  /* highest pos reached since the sliding rings were last refilled */
    int32_t *tokens;         /* [n_ctx] the tokens at positions 0..pos-1 */
    /* KV cache, per layer: k[l], v[l] are [slots[l]][nKV * hd]. Global layers keep every
       position (slots = n_ctx); sliding-window layers keep a ring of the last W + CHUNK - 1
       positions (position p lives in slot p % slots), enough for every query of a chunk
       to see its W keys. Stored as float32: exact, and attention is a small part of the
       time next to the weight matrices. */
    float **k, **v;
    int *slots;
    /* Scratch for one chunk of C <= GEMMA2__CHUNK tokens. */
    float *x;                /* [C][H]   the residual stream */
    float *xn;               /* [C][H]   normed input of a sublayer */
    float *q;                /* [C][nH*hd] */
    float *kk, *vv;          /* [C][nKV*hd] */
    float *att;              /* [C][nH*hd] attention output (heads concatenated) */
    float *o;                /* [C][H]   output of o_proj / down_proj */
    float *g, *u;            /* [C][I]   gate and up projections */
    float *rope;             /* [C][hd]  cos (first hd/2) and sin (last hd/2) per token */
    float *inv_freq;         /* [hd/2]   theta^(-2i/hd) */
    float *scores;           /* [n_threads][n_ctx] attention scores, one row per thread */
    uint16_t *xb;            /* [C][max(H, I, nH*hd)] bf16 activations (GEMMA2_COMPUTE_BF16) */
    float *logits;           /* [V] logits of the last evaluated token */
    int has_logits;
    gemma2__pool *pool;
    gemma2_trace_fn trace;
    void *trace_user;
};

/* y = W x for the chunk: the rows of W are split over the pool's threads. */
typedef struct gemma2__mm_job {
    const gemma2__kernels *k;
    gemma2__matmul_args a;
} gemma2__mm_job;

static void gemma2__mm_task(void *ctx, int task, int n_tasks)
{
    const gemma2__mm_job *j = (const gemma2__mm_job *)ctx;
    int rows = j->a.w->rows;
    /* Split on multiples of 16 rows so every thread's block starts aligned for the kernels. */
    int per = ((rows + n_tasks - 1) / n_tasks + 15) & ~15;
    int r0 = task * per, r1 = GEMMA2__MIN(rows, r0 + per);
    if (r0 < r1) j->k->matmul(&j->a, r0, r1);
}

static void gemma2__forward_matmul(gemma2_session *s, float *y, int ldy, const float *x, int T, const gemma2__mat *w)
{
    gemma2__mm_job j;
    j.k = s->m->kern;
    j.a.y = y;
    j.a.ldy = ldy;
    j.a.x = x;
    j.a.xb = NULL;
    j.a.T = T;
    j.a.w = w;
    if (s->m->opt.compute == GEMMA2_COMPUTE_BF16 && j.k->wants_bf16_x && w->dtype == GEMMA2__DT_BF16) {
        size_t i, n = (size_t)T * (size_t)w->cols;
        for (i = 0; i < n; i++) s->xb[i] = gemma2__f32_to_bf16(x[i]);
        j.a.xb = s->xb;
    }
    gemma2__pool_run(s->pool, gemma2__mm_task, &j, gemma2__pool_size(s->pool));
}

/* Attention of C queries (positions pos0..pos0+C-1) over the cache of one layer. */
typedef struct gemma2__att_job {
    gemma2_session *s;
    int layer, pos0, C;
} gemma2__att_job;

static void gemma2__att_task(void *ctx, int task, int n_tasks)
{
    const gemma2__att_job *j = (const gemma2__att_job *)ctx;
    gemma2_session *s = j->s;
    const gemma2_config *c = &s->m->cfg;
    const gemma2__kernels *kern = s->m->kern;
    int nH = c->num_attention_heads, hd = c->head_dim, kvd = c->num_key_value_heads * hd;
    int group = nH / c->num_key_value_heads, slots = s->slots[j->layer];
    int sliding = s->m->layers[j->layer].sliding, i;
    float *sc = s->scores + (size_t)task * (size_t)s->n_ctx;
    const float *K = s->k[j->layer], *V = s->v[j->layer];
    /* scores are scaled by query_pre_attn_scalar^-1/2 (not head_dim^-1/2: they differ for 27B) */
    float scale = 1.0f / sqrtf(c->query_pre_attn_scalar), cap = c->attn_logit_softcapping;
    for (i = task; i < j->C * nH; i += n_tasks) {
        int t = i / nH, h = i % nH, p = j->pos0 + t, kvh = h / group; /* query head h reads kv head h / (nH/nKV) */
        int lo = sliding ? GEMMA2__MAX(0, p - c->sliding_window + 1) : 0, n = p - lo + 1, a;
        const float *q = s->q + (size_t)t * nH * hd + (size_t)h * hd;
        float *out = s->att + (size_t)t * nH * hd + (size_t)h * hd, mx = -INFINITY, sum = 0;
        for (a = 0; a < n; a++) {
            const float *kr = K + (size_t)((lo + a) % slots) * kvd + (size_t)kvh * hd;
            float x = kern->dot(q, kr, hd) * scale;
            if (cap > 0) x = cap * tanhf(x / cap); /* softcap before the (implicit) causal mask */
            sc[a] = x;
            if (x > mx) mx = x;
        }
        for (a = 0; a < n; a++) { sc[a] = expf(sc[a] - mx); sum += sc[a]; }
        memset(out, 0, (size_t)hd * sizeof(float));
        for (a = 0; a < n; a++) {
            const float *vr = V + (size_t)((lo + a) % slots) * kvd + (size_t)kvh * hd;
            kern->axpy(out, sc[a] / sum, vr, hd);
        }
    }
}

/* RoPE, "rotate half" layout: the pair (x[i], x[i + hd/2]) turns by angle p * theta^(-2i/hd). */
static void gemma2__rope(float *x, const float *cs, int hd)
{
    int i, half = hd / 2;
    for (i = 0; i < half; i++) {
        float a = x[i], b = x[i + half], co = cs[i], si = cs[half + i];
        x[i] = a * co - b * si;
        x[i + half] = b * co + a * si;
    }
}

/* The model, for C tokens at positions pos0..pos0+C-1. Writes the logits of the tokens
   t >= first_logit into logits[(t - first_logit) * V] (none if first_logit >= C). */
static void gemma2__forward(gemma2_session *s, const int32_t *ids, int C, int pos0, float *logits, int first_logit)
{
    const gemma2_model *m = s->m;
    const gemma2_config *c = &m->cfg;
    const gemma2__kernels *kern = m->kern;
    int H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim, nH = c->num_attention_heads;
    int nKV = c->num_key_value_heads, qd = nH * hd, kvd = nKV * hd, V = c->vocab_size, t, l, i;
    float eps = c->rms_norm_eps, normalizer = (float)sqrt((double)H);

    /* Embedding, scaled by sqrt(H) (in float32, as the references compute it). */
    for (t = 0; t < C; t++) {
        float *x = s->x + (size_t)t * H;
        for (i = 0; i < H; i++) x[i] = gemma2__w_at(&m->embed, (size_t)ids[t] * H + i) * normalizer;
    }
    if (s->trace) s->trace(s->trace_user, 0, pos0, C, s->x);

    /* cos/sin of every token's position, shared by all layers. */
    for (t = 0; t < C; t++) {
        float *cs = s->rope + (size_t)t * hd;
        for (i = 0; i < hd / 2; i++) {
            float ang = (float)(pos0 + t) * s->inv_freq[i];
            cs[i] = (float)cos((double)ang);
            cs[hd / 2 + i] = (float)sin((double)ang);
        }
    }

    for (l = 0; l < c->num_hidden_layers; l++) {
        const gemma2__layer *L = &m->layers[l];
        gemma2__att_job aj;

        /* --- attention block: x = x + post_norm(attention(pre_norm(x))) --- */
        for (t = 0; t < C; t++) kern->rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, L->attn_norm, H, eps);
        gemma2__forward_matmul(s, s->q, qd, s->xn, C, &L->wq);
        gemma2__forward_matmul(s, s->kk, kvd, s->xn, C, &L->wk);
        gemma2__forward_matmul(s, s->vv, kvd, s->xn, C, &L->wv);
        for (t = 0; t < C; t++) {
            int p = pos0 + t, slot = p % s->slots[l], h;
            for (h = 0; h < nH; h++) gemma2__rope(s->q + (size_t)t * qd + (size_t)h * hd, s->rope + (size_t)t * hd, hd);
            for (h = 0; h < nKV; h++) gemma2__rope(s->kk + (size_t)t * kvd + (size_t)h * hd, s->rope + (size_t)t * hd, hd);
            memcpy(s->k[l] + (size_t)slot * kvd, s->kk + (size_t)t * kvd, (size_t)kvd * sizeof(float));
            memcpy(s->v[l] + (size_t)slot * kvd, s->vv + (size_t)t * kvd, (size_t)kvd * sizeof(float));
        }
        aj.s = s;
        aj.layer = l;
        aj.pos0 = pos0;
        aj.C = C;
        gemma2__pool_run(s->pool, gemma2__att_task, &aj, gemma2__pool_size(s->pool));
        gemma2__forward_matmul(s, s->o, H, s->att, C, &L->wo);
        for (t = 0; t < C; t++) {
            float *x = s->x + (size_t)t * H, *o = s->o + (size_t)t * H;
            kern->rmsnorm(o, o, L->post_attn_norm, H, eps);
            for (i = 0; i < H; i++) x[i] += o[i];
        }

        /* --- feed-forward block: x = x + post_norm(down(gelu(gate(h)) * up(h))), h = pre_norm(x) --- */
        for (t = 0; t < C; t++) kern->rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, L->pre_ffw_norm, H, eps);
        gemma2__forward_matmul(s, s->g, I, s->xn, C, &L->wgate);
        gemma2__forward_matmul(s, s->u, I, s->xn, C, &L->wup);
        for (t = 0; t < C; t++) kern->gelu_mul(s->g + (size_t)t * I, s->u + (size_t)t * I, I);
        gemma2__forward_matmul(s, s->o, H, s->g, C, &L->wdown);
        for (t = 0; t < C; t++) {
            float *x = s->x + (size_t)t * H, *o = s->o + (size_t)t * H;
            kern->rmsnorm(o, o, L->post_ffw_norm, H, eps);
            for (i = 0; i < H; i++) x[i] += o[i];
        }
        if (s->trace) s->trace(s->trace_user, l + 1, pos0, C, s->x);
    }

    /* --- output: final norm, tied projection onto the embedding, final softcap --- */
    if (first_logit < C) {
        int n = C - first_logit;
        float cap = c->final_logit_softcapping;
        for (t = 0; t < n; t++) kern->rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)(first_logit + t) * H, m->final_norm, H, eps);
        gemma2__forward_matmul(s, logits, V, s->xn, n, &m->embed);
        if (cap > 0) {
            size_t k, total = (size_t)n * (size_t)V;
            for (k = 0; k < total; k++) logits[k] = cap * tanhf(logits[k] / cap);
        }
    }
}

/* ===========================================================================
   2.11 Sessions
   =========================================================================== */

GEMMA2_DEF void gemma2_session_free(gemma2_session *s)
{
    int l;
    if (!s) return;
    if (s->k) for (l = 0; l < s->m->cfg.num_hidden_layers; l++) { GEMMA2_FREE(s->k[l]); GEMMA2_FREE(s->v[l]); }
    GEMMA2_FREE(s->k); GEMMA2_FREE(s->v); GEMMA2_FREE(s->slots);
    GEMMA2_FREE(s->tokens);
    GEMMA2_FREE(s->x); GEMMA2_FREE(s->xn); GEMMA2_FREE(s->q); GEMMA2_FREE(s->kk); GEMMA2_FREE(s->vv);
    GEMMA2_FREE(s->att); GEMMA2_FREE(s->o); GEMMA2_FREE(s->g); GEMMA2_FREE(s->u);
    GEMMA2_FREE(s->rope); GEMMA2_FREE(s->inv_freq); GEMMA2_FREE(s->scores); GEMMA2_FREE(s->xb);
    GEMMA2_FREE(s->logits);
    if (s->pool) gemma2__pool_free(s->pool);
    GEMMA2_FREE(s);
}

static gemma2_session *gemma2__session_new(const gemma2_model *m, int n_ctx, int chunk)
{
    gemma2_session *s;
    const gemma2_config *c;
    size_t C = GEMMA2__CHUNK, H, I, qd, kvd, widest;
    int l, i, nt;
    if (!m || !m->has_weights || n_ctx < 0) return NULL;
    c = &m->cfg;
    if (n_ctx == 0) n_ctx = c->max_position_embeddings;
    H = (size_t)c->hidden_size; I = (size_t)c->intermediate_size;
    qd = (size_t)c->num_attention_heads * (size_t)c->head_dim;
    kvd = (size_t)c->num_key_value_heads * (size_t)c->head_dim;
    widest = GEMMA2__MAX(GEMMA2__MAX(H, I), qd);
    s = (gemma2_session *)gemma2__calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->n_ctx = n_ctx;
    s->chunk = chunk;
    nt = m->opt.n_threads < 1 ? 1 : m->opt.n_threads;
    s->pool = gemma2__pool_new(nt);
    s->tokens = (int32_t *)gemma2__calloc((size_t)n_ctx, sizeof(int32_t));
    s->k = (float **)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(float *));
    s->v = (float **)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(float *));
    s->slots = (int *)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(int));
    s->x = (float *)gemma2__calloc(C * H, sizeof(float));
    s->xn = (float *)gemma2__calloc(C * H, sizeof(float));
    s->q = (float *)gemma2__calloc(C * qd, sizeof(float));
    s->kk = (float *)gemma2__calloc(C * kvd, sizeof(float));
    s->vv = (float *)gemma2__calloc(C * kvd, sizeof(float));
    s->att = (float *)gemma2__calloc(C * qd, sizeof(float));
    s->o = (float *)gemma2__calloc(C * H, sizeof(float));
    s->g = (float *)gemma2__calloc(C * I, sizeof(float));
    s->u = (float *)gemma2__calloc(C * I, sizeof(float));
    s->rope = (float *)gemma2__calloc(C * (size_t)c->head_dim, sizeof(float));
    s->inv_freq = (float *)gemma2__calloc((size_t)c->head_dim / 2, sizeof(float));
    s->scores = (float *)gemma2__calloc((size_t)nt * (size_t)n_ctx, sizeof(float));
    s->xb = (uint16_t *)gemma2__calloc(C * widest, sizeof(uint16_t));
    s->logits = (float *)gemma2__calloc((size_t)c->vocab_size, sizeof(float));
    if (!s->pool || !s->tokens || !s->k || !s->v || !s->slots || !s->x || !s->xn || !s->q || !s->kk || !s->vv || !s->att ||
        !s->o || !s->g || !s->u || !s->rope || !s->inv_freq || !s->scores || !s->xb || !s->logits) {
        gemma2_session_free(s);
        return NULL;
    }
    for (l = 0; l < c->num_hidden_layers; l++) {
        int slots = n_ctx;
        if (m->layers[l].sliding && (int64_t)c->sliding_window + chunk - 1 < n_ctx) slots = c->sliding_window + chunk - 1;
        s->slots[l] = slots;
        s->k[l] = (float *)gemma2__calloc((size_t)slots * kvd, sizeof(float));
        s->v[l] = (float *)gemma2__calloc((size_t)slots * kvd, sizeof(float));
        if (!s->k[l] || !s->v[l]) { gemma2_session_free(s); return NULL; }
    }
    /* inv_freq in float32, as both references build it */
    for (i = 0; i < c->head_dim / 2; i++) s->inv_freq[i] = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim));
    return s;
}

GEMMA2_DEF gemma2_session *gemma2_session_new(const gemma2_model *m, int n_ctx)
{
    return gemma2__session_new(m, n_ctx, GEMMA2__CHUNK);
}

GEMMA2_DEF int gemma2_eval(gemma2_session *s, const int32_t *ids, int n, float *logits)
{
    int i, done = 0, V;
    if (!s || (!ids && n > 0) || n < 0) return GEMMA2_ERROR_INVALID_ARGUMENT;
    V = s->m->cfg.vocab_size;
    /* Everything is checked before anything changes, so a failed call leaves the session as it was. */
    for (i = 0; i < n; i++) if (ids[i] < 0 || ids[i] >= V) return GEMMA2_ERROR_BAD_TOKEN;
    if (n > s->n_ctx - s->pos) return GEMMA2_ERROR_CONTEXT_FULL;
    if (n == 0) return 0;
    memmove(s->tokens + s->pos, ids, (size_t)n * sizeof(int32_t));
    while (done < n) {
        int C = GEMMA2__MIN(s->chunk, n - done);
        const int32_t *chunk = s->tokens + s->pos;
        if (logits) gemma2__forward(s, chunk, C, s->pos, logits + (size_t)done * V, 0);
        else gemma2__forward(s, chunk, C, s->pos, s->logits, done + C == n ? C - 1 : C);
        s->pos += C;
        done += C;
    }
    if (logits) memcpy(s->logits, logits + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
    s->has_logits = 1;
    if (s->pos > s->hi) s->hi = s->pos;
    return 0;
}

GEMMA2_DEF const float *gemma2_logits(const gemma2_session *s) { return s && s->has_logits ? s->logits : NULL; }
GEMMA2_DEF int gemma2_session_pos(const gemma2_session *s) { return s ? s->pos : GEMMA2_ERROR_INVALID_ARGUMENT; }
GEMMA2_DEF int gemma2_session_n_ctx(const gemma2_session *s) { return s ? s->n_ctx : GEMMA2_ERROR_INVALID_ARGUMENT; }
GEMMA2_DEF const int32_t *gemma2_session_tokens(const gemma2_session *s) { return s ? s->tokens : NULL; }

GEMMA2_DEF void gemma2_session_set_trace(gemma2_session *s, gemma2_trace_fn fn, void *user)
{
    if (!s) return;
    s->trace = fn;
    s->trace_user = user;
}

GEMMA2_DEF int gemma2_session_rewind(gemma2_session *s, int pos)
{
    const gemma2_config *c;
    int l, ring = 0;
    if (!s || pos < 0 || pos > s->pos) return GEMMA2_ERROR_INVALID_ARGUMENT;
    c = &s->m->cfg;
    for (l = 0; l < c->num_hidden_layers; l++) if (s->slots[l] < s->n_ctx) ring = s->slots[l];
    s->has_logits = 0;
    /* A sliding ring holds positions >= hi - slots intact. The next token (at pos) needs
       pos - W + 1 onward; if those were overwritten, rebuild the cache from the start. */
    if (ring && GEMMA2__MAX(0, s->hi - ring) > GEMMA2__MAX(0, pos - c->sliding_window + 1)) {
        s->pos = 0;
        s->hi = 0;
        if (pos == 0) return 0;
        return gemma2_eval(s, s->tokens, pos, NULL);
    }
    s->pos = pos;
    if (pos > 0) {
        /* The logits after a rewind are those of token pos-1: recompute just that token. */
        s->pos = pos - 1;
        return gemma2_eval(s, s->tokens + pos - 1, 1, NULL);
    }
    return 0;
}

/* ===========================================================================
   2.12 Tokenizer
   =========================================================================== */

/* @@TOKENIZER@@ */
/* (temporary until the tokenizer lands: no tokenizer format is understood yet) */
struct gemma2__tokenizer { int unused; };
static int gemma2__tokenizer_load(gemma2__tokenizer **out, const char *path, char *err, size_t err_size)
{
    *out = NULL;
    return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: tokenizer not implemented yet", path);
}
static void gemma2__tokenizer_free(gemma2__tokenizer *t) { GEMMA2_FREE(t); }

/* ===========================================================================
   2.13 Sampler
   =========================================================================== */

/* The PRNG is xoshiro256** (Blackman and Vigna), seeded through splitmix64: fast, good
   statistics, and fully specified integer arithmetic, so a seed means the same stream on every
   platform (rand() does not). */
static uint64_t gemma2__splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t gemma2__rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t gemma2__xoshiro_next(uint64_t st[4])
{
    uint64_t r = gemma2__rotl64(st[1] * 5, 7) * 9, t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = gemma2__rotl64(st[3], 45);
    return r;
}

/* Uniform double in [0, 1) from the top 53 bits. */
static double gemma2__rand01(uint64_t st[4])
{
    return (double)(gemma2__xoshiro_next(st) >> 11) * (1.0 / 9007199254740992.0);
}

struct gemma2_sampler {
    gemma2_sampler_params p;     /* logit_bias points at `bias` below */
    int V;
    gemma2_logit_bias *bias;
    uint64_t rng[4];
    float *w;                    /* [V] working logits */
    int32_t *cand;               /* [V] candidate ids */
    double *e;                   /* [V] exp(w - max) of the candidates */
    int32_t *count;              /* [V] occurrences in the penalty window; all zero between calls */
};

GEMMA2_DEF void gemma2_sampler_seed(gemma2_sampler *smp, uint64_t seed)
{
    uint64_t x = seed;
    int k;
    if (!smp) return;
    for (k = 0; k < 4; k++) smp->rng[k] = gemma2__splitmix64(&x);
}

GEMMA2_DEF void gemma2_sampler_free(gemma2_sampler *smp)
{
    if (!smp) return;
    GEMMA2_FREE(smp->bias);
    GEMMA2_FREE(smp->w);
    GEMMA2_FREE(smp->cand);
    GEMMA2_FREE(smp->e);
    GEMMA2_FREE(smp->count);
    GEMMA2_FREE(smp);
}

GEMMA2_DEF gemma2_sampler *gemma2_sampler_new(int vocab_size, const gemma2_sampler_params *p)
{
    gemma2_sampler *smp;
    if (vocab_size <= 0) return NULL;
    if (p && (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias) || p->penalty_last_n < 0)) return NULL;
    smp = (gemma2_sampler *)gemma2__calloc(1, sizeof *smp);
    if (!smp) return NULL;
    if (p) smp->p = *p;
    smp->V = vocab_size;
    smp->w = (float *)gemma2__calloc((size_t)vocab_size, sizeof(float));
    smp->cand = (int32_t *)gemma2__calloc((size_t)vocab_size, sizeof(int32_t));
    smp->e = (double *)gemma2__calloc((size_t)vocab_size, sizeof(double));
    smp->count = (int32_t *)gemma2__calloc((size_t)vocab_size, sizeof(int32_t));
    if (smp->p.n_logit_bias > 0) {
        smp->bias = (gemma2_logit_bias *)gemma2__calloc((size_t)smp->p.n_logit_bias, sizeof(gemma2_logit_bias));
        if (smp->bias) memcpy(smp->bias, smp->p.logit_bias, (size_t)smp->p.n_logit_bias * sizeof(gemma2_logit_bias));
    }
    if (!smp->w || !smp->cand || !smp->e || !smp->count || (smp->p.n_logit_bias > 0 && !smp->bias)) {
        gemma2_sampler_free(smp);
        return NULL;
    }
    smp->p.logit_bias = smp->bias;
    gemma2_sampler_seed(smp, smp->p.seed);
    return smp;
}

/* The candidate order used everywhere: higher logit first, ties to the lower id. A total order,
   so partial selections and sorts give the same result on every platform (qsort is not stable
   and differs between C libraries). */
static int gemma2__cand_before(const float *w, int32_t a, int32_t b)
{
    return w[a] > w[b] || (w[a] == w[b] && a < b);
}

/* Sift-down in a heap whose root is the element that comes LAST in candidate order
   (a "min-heap" of the best so far). */
static void gemma2__heap_down(const float *w, int32_t *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        int32_t t;
        if (l < n && gemma2__cand_before(w, h[m], h[l])) m = l;
        if (r < n && gemma2__cand_before(w, h[m], h[r])) m = r;
        if (m == i) return;
        t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

/* Sorts h[0..n) into candidate order (best first): heapsort, O(n log n), no recursion. */
static void gemma2__cand_sort(const float *w, int32_t *h, int n)
{
    int i;
    for (i = n / 2 - 1; i >= 0; i--) gemma2__heap_down(w, h, n, i);
    for (i = n - 1; i > 0; i--) {
        int32_t t = h[0]; h[0] = h[i]; h[i] = t; /* the worst goes to the back */
        gemma2__heap_down(w, h, i, 0);
    }
}

/* Steps 1-3: bias and penalties, into smp->w. */
static void gemma2__sampler_adjust(gemma2_sampler *smp, const float *logits, const int32_t *hist, int n_hist)
{
    const gemma2_sampler_params *p = &smp->p;
    float *w = smp->w;
    int V = smp->V, k;
    memcpy(w, logits, (size_t)V * sizeof(float));
    for (k = 0; k < p->n_logit_bias; k++) {
        int32_t id = p->logit_bias[k].token;
        if (id >= 0 && id < V) w[id] += p->logit_bias[k].bias;
    }
    if (hist && n_hist > 0 && ((p->repetition_penalty > 0 && p->repetition_penalty != 1.0f) ||
                               p->frequency_penalty != 0 || p->presence_penalty != 0)) {
        int start = (p->penalty_last_n > 0 && n_hist > p->penalty_last_n) ? n_hist - p->penalty_last_n : 0;
        for (k = start; k < n_hist; k++)
            if (hist[k] >= 0 && hist[k] < V) smp->count[hist[k]]++;
        /* each distinct token once; resetting its count marks it done and leaves count all zero */
        for (k = start; k < n_hist; k++) {
            int32_t id = hist[k];
            int c;
            if (id < 0 || id >= V || smp->count[id] == 0) continue;
            c = smp->count[id];
            smp->count[id] = 0;
            if (p->repetition_penalty > 0 && p->repetition_penalty != 1.0f)
                w[id] = w[id] > 0 ? w[id] / p->repetition_penalty : w[id] * p->repetition_penalty;
            w[id] -= (float)c * p->frequency_penalty + p->presence_penalty;
        }
    }
}

GEMMA2_DEF int gemma2_sampler_sample(gemma2_sampler *smp, const float *logits, const int32_t *history, int n_history)
{
    const gemma2_sampler_params *p;
    float *w, maxw = -INFINITY;
    int V, i, n = 0, best = -1, sorted = 0;
    double Z = 0, total, u, acc;
    if (!smp || !logits || n_history < 0 || (n_history > 0 && !history)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    p = &smp->p;
    V = smp->V;
    w = smp->w;
    gemma2__sampler_adjust(smp, logits, history, n_history);

    /* 4. greedy; also finds the maximum. NaN counts as -inf. */
    for (i = 0; i < V; i++) {
        if (w[i] != w[i]) { w[i] = -INFINITY; continue; }
        if (w[i] > maxw) { maxw = w[i]; best = i; }
    }
    if (best < 0) return GEMMA2_ERROR_INVALID_ARGUMENT; /* everything -inf */
    if (!(p->temperature > 0)) return best;

    /* 5. temperature (after this w is in "scaled logit" units; the order is unchanged) */
    if (p->temperature != 1.0f) {
        float inv = 1.0f / p->temperature;
        for (i = 0; i < V; i++) w[i] *= inv;
        maxw *= inv;
    }

    /* 6. top-k: a partial selection with a heap of the k best, then a sort of those k */
    if (p->top_k > 0 && p->top_k < V) {
        int k = p->top_k;
        for (i = 0; i < V; i++) {
            if (w[i] == -INFINITY) continue;
            if (n < k) {
                int j = n++;
                smp->cand[j] = i;
                /* sift up */
                while (j > 0 && gemma2__cand_before(w, smp->cand[(j - 1) / 2], smp->cand[j])) {
                    int32_t t = smp->cand[j]; smp->cand[j] = smp->cand[(j - 1) / 2]; smp->cand[(j - 1) / 2] = t;
                    j = (j - 1) / 2;
                }
            } else if (gemma2__cand_before(w, i, smp->cand[0])) {
                smp->cand[0] = i;
                gemma2__heap_down(w, smp->cand, n, 0);
            }
        }
        gemma2__cand_sort(w, smp->cand, n);
        sorted = 1;
        for (i = 0; i < n; i++) { smp->e[i] = exp((double)w[smp->cand[i]] - (double)maxw); Z += smp->e[i]; }
    } else {
        for (i = 0; i < V; i++) {
            if (w[i] == -INFINITY) continue;
            smp->cand[n] = i;
            smp->e[n] = exp((double)w[i] - (double)maxw);
            Z += smp->e[n];
            n++;
        }
    }

    /* 7. top-p: the smallest best-first prefix with mass >= top_p. */
    if (p->top_p > 0 && p->top_p < 1 && n > 1) {
        double need = (double)p->top_p * Z;
        if (!sorted) {
            /* Gather the tokens with probability >= t. They are a best-first prefix of the whole
               order, so if their mass reaches top_p the nucleus lies inside them. Start high
               and lower t until it does: one O(V) pass each, usually one or two. */
            double t = 1e-3;
            for (;;) {
                int m = 0;
                double mass = 0;
                if (t < 1e-14) t = 0; /* degenerate flat distribution: take everything */
                for (i = 0; i < n; i++)
                    if (smp->e[i] >= t * Z) { mass += smp->e[i]; m++; }
                if (mass >= need || t == 0) {
                    int j = 0;
                    for (i = 0; i < n; i++)
                        if (smp->e[i] >= t * Z) smp->cand[j++] = smp->cand[i];
                    n = m;
                    break;
                }
                t /= 32;
            }
            gemma2__cand_sort(w, smp->cand, n);
            for (i = 0; i < n; i++) smp->e[i] = exp((double)w[smp->cand[i]] - (double)maxw);
            sorted = 1;
        }
        acc = 0;
        for (i = 0; i < n; i++) {
            acc += smp->e[i];
            if (acc >= need) { n = i + 1; break; }
        }
    }

    /* 8. min-p: p >= min_p * p_max, i.e. e >= min_p (the best has e = 1) */
    if (p->min_p > 0 && n > 1) {
        int j = 0;
        for (i = 0; i < n; i++)
            if (smp->e[i] >= (double)p->min_p) { smp->cand[j] = smp->cand[i]; smp->e[j] = smp->e[i]; j++; }
        n = j; /* never 0: the best token has e == 1 >= min_p when min_p <= 1 */
        if (n == 0) return best;
    }

    /* 9. draw: walk the cumulative distribution in candidate order */
    total = 0;
    for (i = 0; i < n; i++) total += smp->e[i];
    u = gemma2__rand01(smp->rng) * total;
    acc = 0;
    for (i = 0; i < n; i++) {
        acc += smp->e[i];
        if (u < acc) return smp->cand[i];
    }
    return smp->cand[n - 1]; /* rounding at the very top */
}


/* ===========================================================================
   2.14 Generation and chat
   =========================================================================== */

/* Generation needs the session's model (eos ids, vocabulary, tokenizer). */
static const gemma2_model *gemma2__gen_model(const gemma2_session *s) { return s->m; }

/* --- generation_config.json ------------------------------------------------ */

/* Adds generation_config.json's eos_token_id (an int or a list) to cfg's eos ids, keeping the
   ones config.json gave and skipping duplicates (gemma-2-*-it: config.json says 1, and
   generation_config.json [1, 107]: <end_of_turn> is what ends a chat reply). A missing file is
   not an error (many folders have none); a malformed one is GEMMA2_ERROR_FORMAT. */
static int gemma2__read_generation_config(gemma2_config *cfg, const char *dir)
{
    gemma2__file f;
    gemma2__json j;
    char *path = gemma2__path_join(dir, "generation_config.json");
    int32_t node, c;
    int rc = 0;
    if (!path) return GEMMA2_ERROR_OUT_OF_MEMORY;
    if (!gemma2__file_exists(path)) { GEMMA2_FREE(path); return 0; }
    rc = gemma2__file_read(&f, path, NULL, 0);
    GEMMA2_FREE(path);
    if (rc) return rc;
    if (gemma2__json_parse(&j, (const char *)f.data, f.size, NULL, 0) != 0) {
        gemma2__json_free(&j);
        gemma2__file_close(&f);
        return GEMMA2_ERROR_FORMAT;
    }
    node = gemma2__json_get(&j, 0, "eos_token_id");
    if (gemma2__json_is(&j, node, GEMMA2__JARRAY)) c = j.nodes[node].child;
    else c = node;
    while (c >= 0) {
        int id, k, dup = 0;
        if (gemma2__json_int(&j, c, &id)) {
            for (k = 0; k < cfg->n_eos; k++) dup |= cfg->eos_token_ids[k] == id;
            if (!dup && id >= 0 && cfg->n_eos < (int)(sizeof cfg->eos_token_ids / sizeof cfg->eos_token_ids[0]))
                cfg->eos_token_ids[cfg->n_eos++] = id;
        } else if (!gemma2__json_is(&j, c, GEMMA2__JNULL)) rc = GEMMA2_ERROR_FORMAT;
        c = (c == node) ? -1 : j.nodes[c].next;
    }
    gemma2__json_free(&j);
    gemma2__file_close(&f);
    return rc;
}

/* --- small growable id vector (per call or per turn, never per token) ------ */

typedef struct gemma2__ids { int32_t *v; int n, cap; } gemma2__ids;

static int gemma2__ids_reserve(gemma2__ids *a, int extra)
{
    if (extra < 0 || a->n > INT_MAX - extra) return GEMMA2_ERROR_OUT_OF_MEMORY;
    if (a->n + extra > a->cap) {
        int cap = a->cap ? a->cap : 64;
        void *p;
        while (cap < a->n + extra) cap = cap > INT_MAX / 2 ? INT_MAX : cap * 2;
        p = GEMMA2_REALLOC(a->v, (size_t)cap * sizeof(int32_t));
        if (!p) return GEMMA2_ERROR_OUT_OF_MEMORY;
        a->v = (int32_t *)p;
        a->cap = cap;
    }
    return 0;
}

static int gemma2__ids_push(gemma2__ids *a, int32_t id)
{
    int rc = gemma2__ids_reserve(a, 1);
    if (rc) return rc;
    a->v[a->n++] = id;
    return 0;
}

/* Appends the ids of text (flags as gemma2_tokenize). */
static int gemma2__ids_tokenize(gemma2__ids *a, const gemma2_model *m, const char *text, size_t len, int flags)
{
    int32_t dummy;
    int need = gemma2_tokenize(m, text, len, &dummy, 0, flags), rc;
    if (need < 0) return need;
    if ((rc = gemma2__ids_reserve(a, need)) != 0) return rc;
    need = gemma2_tokenize(m, text, len, a->v + a->n, need, flags);
    if (need < 0) return need;
    a->n += need;
    return 0;
}

/* --- Python str.strip() ----------------------------------------------------- */

/* str.isspace() code points: what Jinja's |trim (Python's str.strip()) removes. Not U+200B, not U+FEFF. */
static int gemma2__py_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes one well-formed UTF-8 sequence at s[0..n); returns its length, or 0 if it is not one
   (invalid bytes are never whitespace, so trimming stops there). */
static int gemma2__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    int len, k;
    uint32_t v;
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xc2 && c <= 0xdf) { len = 2; v = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; v = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; v = c & 0x07; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[k] & 0x3f);
    }
    if ((len == 3 && (v < 0x800 || (v >= 0xd800 && v < 0xe000))) || (len == 4 && (v < 0x10000 || v > 0x10ffff))) return 0;
    *cp = v;
    return len;
}

/* Trims s[0..n) like Python's str.strip(): sets *b, *e to the kept span. */
static void gemma2__py_strip(const char *s, size_t n, size_t *b, size_t *e)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, j = n;
    uint32_t cp;
    int len;
    while (i < n && (len = gemma2__utf8_decode(u + i, n - i, &cp)) > 0 && gemma2__py_isspace(cp)) i += (size_t)len;
    while (j > i) {
        size_t k = j - 1;
        while (k > i && j - k < 4 && (u[k] & 0xc0) == 0x80) k--; /* back to a lead byte */
        len = gemma2__utf8_decode(u + k, j - k, &cp);
        if (len <= 0 || k + (size_t)len != j || !gemma2__py_isspace(cp)) break;
        j = k;
    }
    *b = i;
    *e = j;
}

/* --- chat format -------------------------------------------------------------- */

/* One turn after validation: the role as written and its content (with a folded system prompt). */
typedef struct gemma2__turn {
    const char *role;       /* "user" or "model" */
    const char *prefix;     /* system content to fold in front (first user turn), or NULL */
    const char *content;
} gemma2__turn;

/* Checks the roles and maps them to turns (at most n_msgs). Returns the number of turns or
   GEMMA2_ERROR_CHAT_FORMAT / INVALID_ARGUMENT. */
static int gemma2__chat_turns(const gemma2_message *msgs, int n_msgs, gemma2__turn *turns)
{
    int i = 0, t = 0;
    const char *sys = NULL;
    if (n_msgs < 0 || (n_msgs > 0 && !msgs)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (n_msgs > 0 && msgs[0].role && !strcmp(msgs[0].role, "system")) {
        if (n_msgs < 2) return GEMMA2_ERROR_CHAT_FORMAT; /* nothing to fold it into */
        sys = msgs[0].content ? msgs[0].content : "";
        i = 1;
    }
    for (; i < n_msgs; i++, t++) {
        const char *r = msgs[i].role;
        if (!r) return GEMMA2_ERROR_INVALID_ARGUMENT;
        if (t % 2 == 0) {
            if (strcmp(r, "user")) return GEMMA2_ERROR_CHAT_FORMAT;
            turns[t].role = "user";
        } else {
            if (strcmp(r, "assistant") && strcmp(r, "model")) return GEMMA2_ERROR_CHAT_FORMAT;
            turns[t].role = "model";
        }
        turns[t].prefix = t == 0 ? sys : NULL;
        turns[t].content = msgs[i].content ? msgs[i].content : "";
    }
    return t;
}

/* role + "\n" + [strip(prefix) + "\n\n"] + strip(content), in a fresh allocation, NUL-terminated.
   (Gemma 3's template writes the system text + "\n\n" before the first user content; we trim the
   system text too, and leave it out when it is empty.) */
static char *gemma2__turn_text(const gemma2__turn *t, size_t *len_out)
{
    size_t rl = strlen(t->role), pl = t->prefix ? strlen(t->prefix) : 0, cl = strlen(t->content), b, e, n;
    char *buf = (char *)GEMMA2_MALLOC(rl + 1 + pl + 2 + cl + 1);
    if (!buf) return NULL;
    memcpy(buf, t->role, rl);
    buf[rl] = '\n';
    n = rl + 1;
    if (t->prefix) {
        gemma2__py_strip(t->prefix, pl, &b, &e);
        if (e > b) {
            memcpy(buf + n, t->prefix + b, e - b);
            memcpy(buf + n + (e - b), "\n\n", 2);
            n += e - b + 2;
        }
    }
    gemma2__py_strip(t->content, cl, &b, &e);
    memcpy(buf + n, t->content + b, e - b);
    n += e - b;
    buf[n] = 0;
    *len_out = n;
    return buf;
}

/* Looks up a marker written as text ("<start_of_turn>") as its single id. */
static int gemma2__marker_id(const gemma2_model *m, const char *marker)
{
    int32_t ids[4];
    int n = gemma2_tokenize(m, marker, strlen(marker), ids, 4, GEMMA2_TOKENIZE_SPECIAL);
    if (n < 0) return n;
    return n == 1 ? ids[0] : GEMMA2_ERROR_UNSUPPORTED;
}

typedef struct gemma2__chat_ids { int32_t bos, sot, eot; } gemma2__chat_ids;

static int gemma2__chat_markers(const gemma2_model *m, gemma2__chat_ids *c)
{
    int sot, eot;
    memset(c, 0, sizeof *c);
    if (!m) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if ((sot = gemma2__marker_id(m, "<start_of_turn>")) < 0) return sot;
    if ((eot = gemma2__marker_id(m, "<end_of_turn>")) < 0) return eot;
    c->bos = gemma2_model_config(m)->bos_token_id;
    c->sot = sot;
    c->eot = eot;
    return 0;
}

/* Appends <start_of_turn> E(role\n strip(content)) <end_of_turn> E("\n"); or, for the generation
   prompt (t == NULL), <start_of_turn> E("model\n"). Content is tokenized with flags 0: marker
   strings in it stay text. */
static int gemma2__chat_append_turn(gemma2__ids *a, const gemma2_model *m, const gemma2__chat_ids *c, const gemma2__turn *t)
{
    int rc;
    if ((rc = gemma2__ids_push(a, c->sot)) != 0) return rc;
    if (!t) return gemma2__ids_tokenize(a, m, "model\n", 6, 0);
    {
        size_t len;
        char *text = gemma2__turn_text(t, &len);
        if (!text) return GEMMA2_ERROR_OUT_OF_MEMORY;
        rc = gemma2__ids_tokenize(a, m, text, len, 0);
        GEMMA2_FREE(text);
    }
    if (rc) return rc;
    if ((rc = gemma2__ids_push(a, c->eot)) != 0) return rc;
    return gemma2__ids_tokenize(a, m, "\n", 1, 0);
}

GEMMA2_DEF int gemma2_chat_tokenize(const gemma2_model *m, const gemma2_message *msgs, int n_msgs,
                                    int add_generation_prompt, int32_t *ids, int max_ids)
{
    gemma2__turn *turns;
    gemma2__chat_ids c = {0, 0, 0};
    gemma2__ids a;
    int n, i, rc;
    if (!m || max_ids < 0 || (max_ids > 0 && !ids)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if ((rc = gemma2__chat_markers(m, &c)) != 0) return rc;
    turns = (gemma2__turn *)gemma2__calloc((size_t)(n_msgs > 0 ? n_msgs : 1), sizeof *turns);
    if (!turns) return GEMMA2_ERROR_OUT_OF_MEMORY;
    n = gemma2__chat_turns(msgs, n_msgs, turns);
    if (n < 0) { GEMMA2_FREE(turns); return n; }
    memset(&a, 0, sizeof a);
    rc = gemma2__ids_push(&a, c.bos);
    for (i = 0; i < n && !rc; i++) rc = gemma2__chat_append_turn(&a, m, &c, &turns[i]);
    if (!rc && add_generation_prompt) rc = gemma2__chat_append_turn(&a, m, &c, NULL);
    GEMMA2_FREE(turns);
    if (rc) { GEMMA2_FREE(a.v); return rc; }
    if (max_ids > 0) memcpy(ids, a.v, (size_t)GEMMA2__MIN(a.n, max_ids) * sizeof(int32_t));
    GEMMA2_FREE(a.v);
    return a.n;
}

/* Appends s to out (bounded by cap), counting every byte. */
static void gemma2__put(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n < cap) memcpy(out + *n, s, GEMMA2__MIN(len, cap - *n));
    *n += len;
}

GEMMA2_DEF int gemma2_chat_render(const gemma2_message *msgs, int n_msgs, int add_generation_prompt,
                                  char *out, size_t cap)
{
    gemma2__turn *turns;
    size_t n = 0;
    int nt, i;
    if (cap > 0 && !out) return GEMMA2_ERROR_INVALID_ARGUMENT;
    turns = (gemma2__turn *)gemma2__calloc((size_t)(n_msgs > 0 ? n_msgs : 1), sizeof *turns);
    if (!turns) return GEMMA2_ERROR_OUT_OF_MEMORY;
    nt = gemma2__chat_turns(msgs, n_msgs, turns);
    if (nt < 0) { GEMMA2_FREE(turns); return nt; }
    gemma2__put(out, cap, &n, "<bos>", 5);
    for (i = 0; i < nt; i++) {
        size_t len;
        char *text = gemma2__turn_text(&turns[i], &len);
        if (!text) { GEMMA2_FREE(turns); return GEMMA2_ERROR_OUT_OF_MEMORY; }
        gemma2__put(out, cap, &n, "<start_of_turn>", 15);
        gemma2__put(out, cap, &n, text, len);
        gemma2__put(out, cap, &n, "<end_of_turn>\n", 14);
        GEMMA2_FREE(text);
    }
    if (add_generation_prompt) gemma2__put(out, cap, &n, "<start_of_turn>model\n", 21);
    GEMMA2_FREE(turns);
    if (n > (size_t)INT_MAX) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (n < cap) out[n] = 0;
    return (int)n;
}

/* --- streaming text: UTF-8 assembly and stop strings ------------------------- */

/* Turns token bytes into text pieces that are safe to hand out: whole UTF-8 characters only
   (an incomplete character waits for the next token; invalid bytes become U+FFFD, one per
   maximal invalid subsequence, as WHATWG decoders do), and nothing that might be the start of
   a stop string until it is known not to be. All buffers are allocated once per generation. */
typedef struct gemma2__stream {
    unsigned char tail[4];   /* an incomplete UTF-8 character carried to the next token */
    int ntail;
    char *scratch;           /* tail + a token's bytes */
    size_t scratch_cap;
    char *hold;              /* decoded text not yet delivered */
    size_t nhold, hold_cap;
    const char *const *stops;
    int n_stops;
    size_t max_stop;
} gemma2__stream;

static int gemma2__stream_reserve(gemma2__stream *st, size_t piece_len)
{
    /* every input byte yields at most 3 output bytes (U+FFFD) */
    size_t need_scratch = piece_len + 4, need_hold = st->max_stop + 3 * (piece_len + 4) + 1;
    if (need_scratch > st->scratch_cap) {
        void *p = GEMMA2_REALLOC(st->scratch, need_scratch);
        if (!p) return GEMMA2_ERROR_OUT_OF_MEMORY;
        st->scratch = (char *)p;
        st->scratch_cap = need_scratch;
    }
    if (st->nhold + need_hold > st->hold_cap) {
        void *p = GEMMA2_REALLOC(st->hold, st->nhold + need_hold);
        if (!p) return GEMMA2_ERROR_OUT_OF_MEMORY;
        st->hold = (char *)p;
        st->hold_cap = st->nhold + need_hold;
    }
    return 0;
}

static void gemma2__stream_free(gemma2__stream *st)
{
    GEMMA2_FREE(st->scratch);
    GEMMA2_FREE(st->hold);
    memset(st, 0, sizeof *st);
}

static void gemma2__hold_fffd(gemma2__stream *st)
{
    memcpy(st->hold + st->nhold, "\xef\xbf\xbd", 3);
    st->nhold += 3;
}

/* Decodes tail + bytes into hold. final: no more bytes will come (an incomplete tail is invalid). */
static void gemma2__stream_utf8(gemma2__stream *st, const char *bytes, size_t n, int final)
{
    unsigned char *s = (unsigned char *)st->scratch;
    size_t len = (size_t)st->ntail + n, i = 0;
    memcpy(s, st->tail, (size_t)st->ntail);
    if (n) memcpy(s + st->ntail, bytes, n);
    st->ntail = 0;
    while (i < len) {
        unsigned char c = s[i];
        int need, k;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c < 0x80) { st->hold[st->nhold++] = (char)c; i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) need = 2;
        else if (c >= 0xe0 && c <= 0xef) { need = 3; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
        else if (c >= 0xf0 && c <= 0xf4) { need = 4; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
        else { gemma2__hold_fffd(st); i++; continue; }
        for (k = 1; k < need && i + (size_t)k < len; k++) {
            unsigned char d = s[i + (size_t)k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xbf)) break;
        }
        if (k == need) {
            memcpy(st->hold + st->nhold, s + i, (size_t)need);
            st->nhold += (size_t)need;
            i += (size_t)need;
        } else if (i + (size_t)k == len && !final) {
            memcpy(st->tail, s + i, (size_t)k); /* incomplete so far: wait for more */
            st->ntail = k;
            break;
        } else {
            gemma2__hold_fffd(st); /* the maximal valid prefix is one error */
            i += (size_t)k;
        }
    }
}

/* Finds the first complete stop string in hold: returns its offset, or -1. Also reports in
   *keep how many trailing bytes could still begin a stop string. */
static long gemma2__stream_match(const gemma2__stream *st, size_t *keep)
{
    long best = -1;
    size_t h = st->nhold, k;
    int i;
    *keep = 0;
    for (i = 0; i < st->n_stops; i++) {
        const char *sp = st->stops[i];
        size_t sl = strlen(sp), off;
        if (sl == 0) continue;
        for (off = 0; off + sl <= h; off++) {
            if (best >= 0 && (long)off >= best) break;
            if (!memcmp(st->hold + off, sp, sl)) { best = (long)off; break; }
        }
        /* longest proper prefix of sp that ends hold */
        for (k = GEMMA2__MIN(sl - 1, h); k > *keep; k--)
            if (!memcmp(st->hold + h - k, sp, k)) { *keep = k; break; }
    }
    return best;
}

/* --- generation ---------------------------------------------------------------- */

/* Bytes of one token for streaming, exactly as the token holds them (byte pieces stay raw bytes,
   so the characters they spell are assembled across tokens by gemma2__stream_utf8), into *buf
   (grown only for an unusually long piece, so not per token in practice). A model loaded
   without a tokenizer streams no text (tokens only). */
static int gemma2__token_bytes(const gemma2_model *m, int32_t id, char **buf, size_t *cap)
{
    int n = gemma2_detokenize(m, &id, 1, *buf, *cap, GEMMA2_DETOKENIZE_SKIP_CONTROL);
    if (n == GEMMA2_ERROR_NO_TOKENIZER) return 0;
    if (n < 0) return n;
    if ((size_t)n > *cap) {
        void *p = GEMMA2_REALLOC(*buf, (size_t)n);
        if (!p) return GEMMA2_ERROR_OUT_OF_MEMORY;
        *buf = (char *)p;
        *cap = (size_t)n;
        n = gemma2_detokenize(m, &id, 1, *buf, *cap, GEMMA2_DETOKENIZE_SKIP_CONTROL);
    }
    return n;
}

GEMMA2_DEF int gemma2_generate(gemma2_session *s, const int32_t *prompt, int n_prompt,
                               const gemma2_generate_params *params, gemma2_generate_result *res)
{
    gemma2_generate_params p;
    gemma2_generate_result r;
    const gemma2_model *m;
    const gemma2_config *cfg;
    gemma2_sampler *smp = NULL;
    gemma2__stream st;
    char *piece = NULL;
    size_t piece_cap = 256;
    int rc = 0, i, stopped = 0;
    memset(&r, 0, sizeof r);
    r.stop_id = -1;
    memset(&st, 0, sizeof st);
    if (res) *res = r;
    if (!s || n_prompt < 0 || (n_prompt > 0 && !prompt)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (params) p = *params; else memset(&p, 0, sizeof p);
    if (p.n_stop_strings < 0 || (p.n_stop_strings > 0 && !p.stop_strings) || p.n_stop_ids < 0 ||
        (p.n_stop_ids > 0 && !p.stop_ids)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < p.n_stop_strings; i++) {
        if (!p.stop_strings[i]) return GEMMA2_ERROR_INVALID_ARGUMENT;
        st.max_stop = GEMMA2__MAX(st.max_stop, strlen(p.stop_strings[i]));
    }
    st.stops = p.stop_strings;
    st.n_stops = p.n_stop_strings;
    m = gemma2__gen_model(s);
    cfg = gemma2_model_config(m);
    if (n_prompt == 0 && (gemma2_session_pos(s) == 0 || !gemma2_logits(s))) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (n_prompt > gemma2_session_n_ctx(s) - gemma2_session_pos(s)) return GEMMA2_ERROR_CONTEXT_FULL;

    smp = gemma2_sampler_new(gemma2_vocab_size(m), &p.sampler);
    piece = (char *)GEMMA2_MALLOC(piece_cap);
    if (!smp || !piece || gemma2__stream_reserve(&st, piece_cap) != 0) { rc = GEMMA2_ERROR_OUT_OF_MEMORY; goto done; }
    if (n_prompt > 0 && (rc = gemma2_eval(s, prompt, n_prompt, NULL)) != 0) goto done;
    r.n_prompt = n_prompt;

    while (!stopped) {
        int32_t tok;
        int is_stop = 0, n;
        size_t keep, emit;
        long at;
        if (p.max_new_tokens > 0 && r.n_generated >= p.max_new_tokens) { r.stop_reason = GEMMA2_STOP_MAX_TOKENS; break; }
        tok = gemma2_sampler_sample(smp, gemma2_logits(s), gemma2_session_tokens(s), gemma2_session_pos(s));
        if (tok < 0) { rc = tok; break; }
        if (!p.ignore_eos)
            for (i = 0; i < cfg->n_eos; i++) is_stop |= cfg->eos_token_ids[i] == tok;
        for (i = 0; i < p.n_stop_ids; i++) is_stop |= p.stop_ids[i] == tok;
        if (is_stop) { r.stop_reason = GEMMA2_STOP_EOS; r.stop_id = tok; break; }
        if (gemma2_session_pos(s) >= gemma2_session_n_ctx(s)) { r.stop_reason = GEMMA2_STOP_CONTEXT_FULL; break; }
        if ((rc = gemma2_eval(s, &tok, 1, NULL)) != 0) break;
        r.n_generated++;

        n = gemma2__token_bytes(m, tok, &piece, &piece_cap);
        if (n < 0) { rc = n; break; }
        if ((rc = gemma2__stream_reserve(&st, (size_t)n)) != 0) break;
        gemma2__stream_utf8(&st, piece, (size_t)n, 0);
        at = gemma2__stream_match(&st, &keep);
        if (at >= 0) { emit = (size_t)at; stopped = 1; r.stop_reason = GEMMA2_STOP_STRING; }
        else emit = st.nhold - keep;
        if (p.on_token && p.on_token(p.user, tok, st.hold, emit) != 0 && !stopped) {
            stopped = 1;
            r.stop_reason = GEMMA2_STOP_CALLBACK;
        }
        if (r.stop_reason == GEMMA2_STOP_STRING) st.nhold = 0;
        else { memmove(st.hold, st.hold + emit, st.nhold - emit); st.nhold -= emit; }
    }
    /* Deliver what was held back: an incomplete character (as U+FFFD) and the start of a stop
       string that never completed. */
    if (r.stop_reason != GEMMA2_STOP_STRING && rc == 0) {
        if (st.ntail) gemma2__stream_utf8(&st, NULL, 0, 1);
        if (st.nhold && p.on_token) p.on_token(p.user, -1, st.hold, st.nhold);
    }
done:
    gemma2_sampler_free(smp);
    GEMMA2_FREE(piece);
    gemma2__stream_free(&st);
    if (res) *res = r;
    return rc;
}

/* --- scoring --------------------------------------------------------------------- */

/* log softmax(row)[id], in double. */
static float gemma2__logprob(const float *row, int V, int32_t id, int *is_argmax)
{
    double mx = -INFINITY, sum = 0;
    int i, best = 0;
    for (i = 0; i < V; i++) if (row[i] > mx) { mx = row[i]; best = i; }
    for (i = 0; i < V; i++) sum += exp((double)row[i] - mx);
    if (is_argmax) *is_argmax = best == id;
    return (float)((double)row[id] - mx - log(sum));
}

GEMMA2_DEF int gemma2_score(gemma2_session *s, const int32_t *prompt, int n_prompt,
                            const int32_t *cont, int n_cont, float *logprobs, int *greedy)
{
    enum { CHUNK = 32 }; /* rows per batch: 32 x 256000 floats = 32 MB */
    const gemma2_model *m;
    float *rows;
    int V, pos0, j, rc = 0, chunk;
    if (!s || n_prompt < 0 || n_cont < 0 || (n_prompt > 0 && !prompt) || (n_cont > 0 && (!cont || !logprobs)))
        return GEMMA2_ERROR_INVALID_ARGUMENT;
    m = gemma2__gen_model(s);
    V = gemma2_vocab_size(m);
    pos0 = gemma2_session_pos(s);
    if (n_prompt == 0 && n_cont > 0 && (pos0 == 0 || !gemma2_logits(s))) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (n_prompt > gemma2_session_n_ctx(s) - pos0 || n_cont > gemma2_session_n_ctx(s) - pos0 - n_prompt)
        return GEMMA2_ERROR_CONTEXT_FULL;
    for (j = 0; j < n_cont; j++) if (cont[j] < 0 || cont[j] >= V) return GEMMA2_ERROR_BAD_TOKEN;
    if (n_prompt > 0 && (rc = gemma2_eval(s, prompt, n_prompt, NULL)) != 0) return rc;
    if (n_cont == 0) return 0;
    logprobs[0] = gemma2__logprob(gemma2_logits(s), V, cont[0], greedy);
    chunk = GEMMA2__MIN(n_cont, CHUNK);
    rows = (float *)gemma2__calloc((size_t)chunk * (size_t)V, sizeof(float));
    if (!rows) { gemma2_session_rewind(s, pos0); return GEMMA2_ERROR_OUT_OF_MEMORY; }
    for (j = 0; j < n_cont; j += chunk) {
        int c = GEMMA2__MIN(chunk, n_cont - j), r;
        if ((rc = gemma2_eval(s, cont + j, c, rows)) != 0) break;
        /* row r predicts the token after cont[j + r] */
        for (r = 0; r < c && j + r + 1 < n_cont; r++)
            logprobs[j + r + 1] = gemma2__logprob(rows + (size_t)r * V, V, cont[j + r + 1], greedy ? &greedy[j + r + 1] : NULL);
    }
    GEMMA2_FREE(rows);
    if (rc) gemma2_session_rewind(s, pos0);
    return rc;
}

/* --- multi-turn chat ----------------------------------------------------------------- */

struct gemma2_chat {
    gemma2_session *s;
    const gemma2_model *m;
    char *system;          /* NULL: none */
    gemma2__chat_ids ids;
    int n, cap;            /* exchanges so far */
    int *turn_pos;         /* [n] session position where exchange k's tokens begin */
    int *reply_pos;        /* [n] position where its reply begins (after <start_of_turn>model\n) */
};

GEMMA2_DEF gemma2_chat *gemma2_chat_new(gemma2_session *s, const char *system)
{
    gemma2_chat *c;
    if (!s || gemma2_session_pos(s) != 0) return NULL;
    c = (gemma2_chat *)gemma2__calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = s;
    c->m = gemma2__gen_model(s);
    if (gemma2__chat_markers(c->m, &c->ids) != 0 || (system && !(c->system = gemma2__strdup(system)))) {
        gemma2_chat_free(c);
        return NULL;
    }
    return c;
}

GEMMA2_DEF void gemma2_chat_free(gemma2_chat *c)
{
    if (!c) return;
    GEMMA2_FREE(c->system);
    GEMMA2_FREE(c->turn_pos);
    GEMMA2_FREE(c->reply_pos);
    GEMMA2_FREE(c);
}

GEMMA2_DEF int gemma2_chat_turns(const gemma2_chat *c) { return c ? c->n : 0; }

GEMMA2_DEF int gemma2_chat_say(gemma2_chat *c, const char *user_content, const gemma2_generate_params *p,
                               gemma2_generate_result *res)
{
    gemma2__ids a;
    gemma2__turn t;
    int rc, start;
    if (res) memset(res, 0, sizeof *res);
    if (!c || !user_content) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        int *tp = (int *)GEMMA2_REALLOC(c->turn_pos, (size_t)cap * sizeof(int)), *rp;
        if (!tp) return GEMMA2_ERROR_OUT_OF_MEMORY;
        c->turn_pos = tp;
        rp = (int *)GEMMA2_REALLOC(c->reply_pos, (size_t)cap * sizeof(int));
        if (!rp) return GEMMA2_ERROR_OUT_OF_MEMORY;
        c->reply_pos = rp;
        c->cap = cap;
    }
    memset(&a, 0, sizeof a);
    t.role = "user";
    t.content = user_content;
    t.prefix = (c->n == 0) ? c->system : NULL;
    /* the previous reply's sampled <end_of_turn> was not kept: close it, then the new turn */
    if (c->n == 0) rc = gemma2__ids_push(&a, c->ids.bos);
    else if ((rc = gemma2__ids_push(&a, c->ids.eot)) == 0) rc = gemma2__ids_tokenize(&a, c->m, "\n", 1, 0);
    if (!rc) rc = gemma2__chat_append_turn(&a, c->m, &c->ids, &t);
    if (!rc) rc = gemma2__chat_append_turn(&a, c->m, &c->ids, NULL);
    if (rc) { GEMMA2_FREE(a.v); return rc; }
    start = gemma2_session_pos(c->s);
    rc = gemma2_generate(c->s, a.v, a.n, p, res);
    if (gemma2_session_pos(c->s) >= start + a.n) { /* the turn is in (even if generation failed later) */
        c->turn_pos[c->n] = start;
        c->reply_pos[c->n] = start + a.n;
        c->n++;
    }
    GEMMA2_FREE(a.v);
    return rc;
}

GEMMA2_DEF int gemma2_chat_regenerate(gemma2_chat *c, const gemma2_generate_params *p, gemma2_generate_result *res)
{
    int rc, rp;
    if (res) memset(res, 0, sizeof *res);
    if (!c || c->n == 0) return GEMMA2_ERROR_INVALID_ARGUMENT;
    rp = c->reply_pos[c->n - 1];
    /* a rewind recomputes the logits of the position before it: the reply's first token's */
    if ((rc = gemma2_session_rewind(c->s, rp)) != 0) return rc;
    return gemma2_generate(c->s, NULL, 0, p, res);
}

GEMMA2_DEF int gemma2_chat_undo(gemma2_chat *c)
{
    int rc;
    if (!c || c->n == 0) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if ((rc = gemma2_session_rewind(c->s, c->turn_pos[c->n - 1])) != 0) return rc;
    c->n--;
    return 0;
}

GEMMA2_DEF int gemma2_chat_reset(gemma2_chat *c)
{
    int rc;
    if (!c) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if ((rc = gemma2_session_rewind(c->s, 0)) != 0) return rc;
    c->n = 0;
    return 0;
}


#endif /* GEMMA2_IMPLEMENTATION_DONE */
#endif /* GEMMA2_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
This software is available under 2 licenses -- choose whichever you prefer.
------------------------------------------------------------------------------
ALTERNATIVE A - MIT License
Copyright (c) 2026 The gemma2.h authors
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
ALTERNATIVE B - Public Domain (www.unlicense.org)
This is free and unencumbered software released into the public domain.
Anyone is free to copy, modify, publish, use, compile, sell, or distribute this
software, either in source code form or as a compiled binary, for any purpose,
commercial or non-commercial, and by any means.
In jurisdictions that recognize copyright laws, the author or authors of this
software dedicate any and all copyright interest in the software to the public
domain. We make this dedication in the spirit of welcoming the continued
development of the software and to the benefit of the public at large. We
intend this dedication to be an overt act of relinquishment in perpetuity of
all present and future rights to this software under copyright law.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN
ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
------------------------------------------------------------------------------
*/
