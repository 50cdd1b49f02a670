/* gemma2.h - v0.2.0 - run Google's Gemma 2 language models on the CPU, in one C header.

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
     Everywhere else just #include "gemma2.h". Link with -lm -lpthread:
         cc -O2 -march=native -o hello hello.c -lm -lpthread
     On Linux and the BSDs, include it there before any system header (or build in a mode that
     shows them, such as gcc's default gnu17): strict -std=c99 hides MAP_ANONYMOUS and madvise,
     and gemma2.h asks for _DEFAULT_SOURCE to get them. Without them it still works, only without
     2 MiB pages for the weights; GEMMA2_HUGEPAGES (0 or 1, defined by the implementation) says
     which, and GEMMA2_REQUIRE_HUGEPAGES makes going without them an #error (see BUILD SWITCHES).

         static int print_text(void *user, int32_t token, const char *text, size_t len)
         {
             (void)user; (void)token;
             fwrite(text, 1, len, stdout);   // whole UTF-8 characters, as they complete
             return 0;                       // nonzero stops
         }

         int main(void)
         {
             char err[256];
             gemma2_model *m = gemma2_load("gemma-2-2b-it", NULL, err, sizeof err);
             if (!m) { fprintf(stderr, "%s\n", err); return 1; }
             gemma2_session *s = gemma2_session_new(m, 0);   // 0: the model's whole context
             int32_t ids[64];
             int n = gemma2_tokenize(m, "The capital of France is", 24, ids, 64, GEMMA2_TOKENIZE_ADD_BOS);
             gemma2_generate_params gp = gemma2_generate_params_default();   // greedy
             gp.max_new_tokens = 16;
             gp.on_token = print_text;
             int rc = s && n > 0 && n <= 64 ? gemma2_generate(s, ids, n, &gp, NULL) : -1;
             if (rc < 0) fprintf(stderr, "%s\n", gemma2_error_string(rc));
             gemma2_session_free(s);
             gemma2_free(m);
             return rc < 0;
         }
     Lower level: gemma2_eval(s, ids, n, NULL) then gemma2_logits(s) (vocab_size floats).
     Several chats at once, sharing every read of the weights: gemma2_batch_new, then
     gemma2_generator_new per chat and gemma2_generate_step until none runs (1.5).

   BUILD SWITCHES (define before the #include that has GEMMA2_IMPLEMENTATION)
     GEMMA2_STATIC         all functions static (private copy in one translation unit; several units
                           of one program may each have their own). Functions a unit does not call
                           do not warn as unused (GCC/Clang attribute)
     GEMMA2_MALLOC(sz) / GEMMA2_REALLOC(p,sz) / GEMMA2_FREE(p)
                           your allocator: define all three or none
     GEMMA2_ASSERT(x)      internal consistency checks (default: assert.h; define empty to drop)
     GEMMA2_NO_MMAP        read files into memory instead of mapping them
     GEMMA2_NO_THREADS     no thread pool: everything runs on the calling thread. Required with a
                           compiler that has neither GCC/Clang atomic builtins nor MSVC's (tcc):
                           without it such a build stops with an #error saying so
     GEMMA2_NO_SIMD        scalar kernels only (the reference implementation)
     GEMMA2_POOL_SPIN      how long idle worker threads spin before sleeping (default 20000 pauses)
     GEMMA2_REQUIRE_HUGEPAGES
                           make a build that cannot ask for 2 MiB pages (MAP_ANONYMOUS and
                           madvise(MADV_HUGEPAGE) hidden by strict ISO mode, or an OS without
                           them: everything but Linux) an #error instead of a slower fallback.
                           Either way the implementation defines GEMMA2_HUGEPAGES to 1 or 0 after
                           its system headers, for a program to test (#if GEMMA2_HUGEPAGES)

   TABLE OF CONTENTS
     Part 1  Public API (declarations)
       1.1  Versions, linkage, result codes
       1.2  Options and loading
       1.3  Sessions and evaluation
       1.4  Tokenizer
       1.5  Sampling, generation and chat
     Part 2  Implementation (under GEMMA2_IMPLEMENTATION)
       2.1  Platform: allocation, errors, small helpers
       2.2  Internal interfaces: weight formats, the kernel contract, prototypes
       2.3  Kernels: scalar reference, and the weight-format table
       2.4  The model: weights and sessions
       2.5  The forward pass (a plain reference, then the fast one as named steps)
       2.6  Sessions
       2.7  Sampler
       2.8  Generation and chat
       2.9  Tokenizer
       2.10 Loading: JSON, files, safetensors, config, weights; saving quantized checkpoints
       2.11 Thread pool
       2.12 Kernels: SIMD sets (x86-64 AVX2 / AVX-512, ARM64 NEON / BF16) and their selection
     License

   READING GUIDE
     To learn the model, start at section 2.5: gemma2__forward_reference is Gemma 2 for one
     token in ~60 lines of plain C (the 2B shapes are in the comment above it); the fast
     forward pass below it has the same steps, one named function each (gemma2__layer_forward).
     examples/README.md walks from config.json to a sampled token with the real 2B/9B/27B
     numbers, and examples/trace shows a prompt layer by layer (gemma2_session_set_trace_ex).
     The kernels it calls are in 2.3 (scalar reference) and, for speed, 2.12 (SIMD). Section
     2.2 is the contract between the two: weight formats and kernel sets as separate axes,
     with the checklists for adding either. The tokenizer (2.9) and the loader (2.10) stand on
     their own. Public declarations come first (Part 1), with their rules beside them.

   ERRORS
     Functions that can fail return a negative GEMMA2_ERROR_* code (gemma2_error_string names it)
     or, for those returning a pointer, NULL: gemma2_load and gemma2_load_tokenizer also write a
     one-line reason naming the file, tensor or field into err; the *_new_ex variants also give
     the code through rc. Every *_free accepts NULL. Getters given NULL (or an id outside the
     vocabulary) return NULL, 0, -1 or GEMMA2_ERROR_INVALID_ARGUMENT, as each declaration says;
     the declarations also say what a failed call leaves (e.g. gemma2_eval after
     GEMMA2_ERROR_NUMERIC).

   MEMORY
     Weights: mapped from the safetensors files (shared with the page cache) when they are used
     as stored; converted (GEMMA2_WEIGHTS_BF16 from F32, Q8, Q4) or read (preload,
     GEMMA2_NO_MMAP) copies are allocated once at load: gemma2_model_weight_bytes says how much.
     Each session allocates its KV cache (layers x n_ctx x kv heads x head_dim x 2, in F32 or
     BF16: gemma2_options.kv_cache) and scratch for the activations when it is created.
     Every allocation goes through GEMMA2_MALLOC / REALLOC / FREE.

   EMBEDDING
     Every external symbol starts with gemma2_ (private ones with gemma2__, all static), and
     every macro the header defines with GEMMA2_ or GEMMA2__, except _DEFAULT_SOURCE (see QUICK
     START), which the implementation defines before its system headers. No writable global or
     static data. Version: GEMMA2_VERSION_MAJOR / _MINOR / _PATCH and GEMMA2_VERSION_STRING.
     The implementation compiles warning-free as C99 and C11 with gcc and clang under -Wall
     -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wcast-qual -Wundef,
     and as C++11 and C++20 with g++ and clang++; make test-portability checks all of it.

   PLATFORMS
     Tested: x86-64 Linux (gcc, clang, g++, clang++, tcc; AVX2 / AVX-512 kernels chosen at run
     time, scalar otherwise) and ARM64 Linux (NEON, BF16 when the CPU has it; under qemu in the
     tests). Other systems and CPUs, and what is tested on each: see the README.

   THREADS AND STATE
     The library keeps no global mutable state, never prints and never exits.
     A gemma2_model is read-only after gemma2_load and may be shared by any number
     of sessions on any threads. A gemma2_session is one sequence (its KV cache and
     position) and must be used by one thread at a time; it owns its worker threads.
     A gemma2_batch (several sessions in one pass; the generators run on one) is used by one
     thread at a time, and so is every session and generator it is given, during the call.
     Evaluating uses up to ~30 KB of the calling thread's stack (kernel scratch).
*/

#ifndef GEMMA2_H_INCLUDED
#define GEMMA2_H_INCLUDED

/* The implementation maps files and memory with MAP_ANONYMOUS and madvise(MADV_HUGEPAGE),
   which glibc and the BSDs declare only when the build asks for more than ISO C (compilers'
   default gnu modes do; -std=c99 does not). This only takes effect when it comes before the
   first system header of the translation unit. */
#if defined(GEMMA2_IMPLEMENTATION) && !defined(_WIN32) && !defined(_DEFAULT_SOURCE) && !defined(_GNU_SOURCE)
#define _DEFAULT_SOURCE 1
#endif

/* ===========================================================================
   1.1  Versions, linkage, result codes
   =========================================================================== */

#include <stddef.h>
#include <stdint.h>

#define GEMMA2_VERSION_MAJOR 0
#define GEMMA2_VERSION_MINOR 2
#define GEMMA2_VERSION_PATCH 0
#define GEMMA2_VERSION_STRING "0.2.0"

#ifndef GEMMA2_DEF
#ifdef GEMMA2_STATIC
/* A program calls only some of its private copy's functions; the rest must not warn as unused. */
#if defined(__GNUC__) || defined(__clang__)
#define GEMMA2_DEF static __attribute__((unused))
#else
#define GEMMA2_DEF static
#endif
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
    GEMMA2_ERROR_IO               =  -3, /* a file could not be opened, mapped, read or written */
    GEMMA2_ERROR_FORMAT           =  -4, /* a file is malformed, truncated or inconsistent */
    GEMMA2_ERROR_UNSUPPORTED      =  -5, /* valid, but not something this library runs */
    GEMMA2_ERROR_BAD_TOKEN        =  -6, /* a token id outside [0, vocab_size) */
    GEMMA2_ERROR_CONTEXT_FULL     =  -7, /* the tokens do not fit in the session's n_ctx */
    GEMMA2_ERROR_NO_TOKENIZER     =  -8, /* the model was loaded without a tokenizer */
    GEMMA2_ERROR_NO_WEIGHTS       =  -9, /* the model was loaded tokenizer-only */
    GEMMA2_ERROR_CHAT_FORMAT      = -10, /* roles out of order, unknown role */
    GEMMA2_ERROR_CANCELLED        = -11, /* a callback asked to stop */
    GEMMA2_ERROR_NUMERIC          = -12  /* NaN or infinity where a number is needed: computed by the model
                                             (broken weights), or NaN in logits given to the sampler */
};

/* A static, readable name for a result code ("context full", ...). */
GEMMA2_DEF const char *gemma2_error_string(int code);

/* ===========================================================================
   1.2  Options and loading
   =========================================================================== */

/* How weights are held in memory (gemma2_options.weights). */
enum {
    GEMMA2_WEIGHTS_AUTO = 0, /* as stored: BF16 used in place from the mapping, F32 kept F32 (exact), F16 widened to F32;
                                a folder written by gemma2_save_quantized in its Q8 or Q4, in place */
    GEMMA2_WEIGHTS_BF16 = 1, /* F32/F16 checkpoints converted to bf16 once at load (half the memory and bandwidth) */
    GEMMA2_WEIGHTS_F16  = 2, /* F16 checkpoints kept as F16, used in place (exact, half the memory of widening them);
                                no kernel set has F16 products yet, so they run the scalar reference: slow.
                                Other dtypes as AUTO */
    GEMMA2_WEIGHTS_Q8   = 3, /* every projection matrix and the embedding quantized to 8 bits at load (from BF16,
                                F16 or F32): blocks of 32 weights with one fp16 scale, 8.5 bits per weight
                                (llama.cpp's Q8_0). The matrix products quantize their activations the same way
                                and use integer dot products. Cost on quant-a, a fixture with trained-like
                                weight statistics (tests: model/q8): next-token KL ~3e-3 on average, the same
                                top token at ~86% of positions */
    GEMMA2_WEIGHTS_Q4   = 4, /* every projection matrix quantized to 4 bits at load, blocks of 32 weights with
                                an fp16 scale and minimum, 5 bits per weight (llama.cpp's Q4_1); the embedding,
                                which is also the output projection, in Q8. On quant-a (tests: model/q4): KL
                                ~0.19, the same top token at ~41% of positions (random weights have none of a
                                trained model's redundancy: every matrix's rounding reaches the output; compare
                                formats by these numbers, not with a trained model's quality loss). Q8 and Q4 can
                                also be done once and saved: gemma2_save_quantized */
    GEMMA2_WEIGHTS_COUNT     /* one past the last value */
};

/* Arithmetic precision of the matrix products (gemma2_options.compute). BF16 applies to bf16
   weights on CPUs with bf16 dot products (AVX512_BF16; elsewhere it computes in float32).
   Its cost, measured on the tiny reference models (tests: model/compute_bf16): next-token
   KL divergence from the float32 references 6e-5..1.2e-3 on average (at most 9e-3), the same
   top token at 118 of 120 positions, logits within 0.1-0.7 of the references. */
enum {
    GEMMA2_COMPUTE_F32  = 0, /* activations in float32, weights widened in registers: matches the references */
    GEMMA2_COMPUTE_BF16 = 1, /* activations rounded to bf16 before the weight products: ~1.8x faster prompts */
    GEMMA2_COMPUTE_COUNT     /* one past the last value */
};

/* Number format of the KV cache (gemma2_options.kv_cache). The cache holds, per layer, each
   position's keys and values (2B: 8 KB per position per layer in float32); at long contexts
   decoding reads it all for every token next to the weights (2B at 8k positions: 1.3 GB in
   float32 beside 5.2 GB of weights), and it sets the memory a long sequence needs.
   Sliding-window layers keep only the last W (+ chunk) positions in either format. */
enum {
    GEMMA2_KV_F32  = 0, /* float32: exact, matches the references */
    GEMMA2_KV_BF16 = 1, /* bf16 (keys after RoPE, values; rounded to nearest even): half the memory and
                           traffic; scores and sums stay float32. Cost on the reference models (tests:
                           model/kv_bf16, model/long-odd): next-token KL 1.5e-5..6e-4 on average (2.4e-3
                           over 300 tokens), the same top token at 140/140 (292/300) positions */
    GEMMA2_KV_COUNT     /* one past the last value */
};

/* Kernel sets (gemma2_options.kernels). AUTO picks the best one the CPU has at run time; the
   others force exactly that set (tests and benchmarks run every one the machine has). */
enum {
    GEMMA2_KERNELS_AUTO        = 0,
    GEMMA2_KERNELS_SCALAR      = 1, /* the plain-C reference */
    GEMMA2_KERNELS_AVX2        = 2, /* x86-64 AVX2 + FMA + F16C */
    GEMMA2_KERNELS_AVX512      = 3, /* x86-64 AVX-512 F/DQ/BW/VL */
    GEMMA2_KERNELS_NEON        = 4, /* ARM64 NEON */
    GEMMA2_KERNELS_AVX512_BF16 = 5, /* AVX-512 plus bf16 dot products (vdpbf16ps, AVX512_BF16) */
    GEMMA2_KERNELS_NEON_BF16   = 6, /* NEON plus bf16 dot products (BFDOT, FEAT_BF16) */
    GEMMA2_KERNELS_COUNT            /* one past the last value */
};

/* Called while loading; fraction in [0, 1]. Return nonzero to cancel the load. */
typedef int (*gemma2_progress_fn)(void *user, float fraction);

/* All-zero means defaults: pass NULL, or start from gemma2_options_default() and set fields. */
typedef struct gemma2_options {
    int n_threads;              /* worker threads per session; 0 = all cores */
    int weights;                /* GEMMA2_WEIGHTS_* */
    int compute;                /* GEMMA2_COMPUTE_* */
    int kernels;                /* GEMMA2_KERNELS_*: force a kernel set (an error if this CPU lacks it) */
    int tokenizer_only;         /* nonzero: read config.json and the tokenizer only, no weights (cheap) */
    int no_tokenizer;           /* nonzero: skip the tokenizer (gemma2_tokenize then fails) */
    int preload;                /* nonzero: read the weight files into memory (2 MiB pages where the OS
                                   gives them) instead of mapping them (0, the default). Loading then
                                   reads every byte first; afterwards both stream equally fast (measured:
                                   "Why mapping is the default" in section 2.10), but preloaded weights
                                   stay in memory when the page cache is under pressure */
    const char *tokenizer_path; /* NULL: MODEL_DIR/tokenizer.json, else MODEL_DIR/tokenizer.model.
                                   Otherwise this file (.json or SentencePiece .model), used as given. */
    gemma2_progress_fn progress;/* optional load progress */
    void *progress_user;
    int kv_cache;               /* GEMMA2_KV_*: number format of the sessions' KV caches */
} gemma2_options;

/* The defaults (all zero). `gemma2_options o = {0};` means the same in C, but C++ compilers warn
   on it with -Wextra (missing field initializers); these warn nowhere. Same for the
   parameter structs of section 1.5: gemma2_sampler_params_default, gemma2_generate_params_default. */
GEMMA2_DEF gemma2_options gemma2_options_default(void);
/* The online CPUs (what n_threads 0 means), at least 1, at most 1024. */
GEMMA2_DEF int gemma2_cpu_count(void);

/* The architecture, as read from config.json. */
typedef struct gemma2_config {
    int vocab_size;              /* V */
    int hidden_size;             /* H */
    int intermediate_size;       /* I */
    int num_hidden_layers;       /* L */
    int num_attention_heads;     /* nH */
    int num_key_value_heads;     /* nKV */
    int head_dim;                /* hd */
    int max_position_embeddings; /* at most 2^20: a config.json with more is refused */
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
   reason naming the file/tensor/field into err (if err_size > 0). A folder written by
   gemma2_save_quantized loads in the format it was saved in, mapped in place, with
   opt->weights AUTO or that same format; asking it for another (BF16, F16, the other Q)
   is GEMMA2_ERROR_UNSUPPORTED: the original weights are not in it. Every file read (the folder's,
   and opt->tokenizer_path) must be a regular file: a folder or a FIFO under its name is an error
   (GEMMA2_ERROR_IO), never read. Symbolic links are followed (the Hugging Face cache links every
   file of a snapshot to a blob). */
GEMMA2_DEF gemma2_model *gemma2_load(const char *model_dir, const gemma2_options *opt, char *err, size_t err_size);
/* Frees a model and unmaps its files (NULL: nothing). Free its sessions first. */
GEMMA2_DEF void gemma2_free(gemma2_model *m);
/* The vocabulary size; GEMMA2_ERROR_INVALID_ARGUMENT for NULL. */
GEMMA2_DEF int gemma2_vocab_size(const gemma2_model *m);
/* The parsed config.json (owned by the model); NULL for NULL. */
GEMMA2_DEF const gemma2_config *gemma2_model_config(const gemma2_model *m);
/* Bytes of weights this model holds: mapped from the files plus converted copies (0 for NULL). */
GEMMA2_DEF size_t gemma2_model_weight_bytes(const gemma2_model *m);
/* Name of the kernel set in use ("avx512-bf16", "scalar", ...; "none" for NULL or a tokenizer-only model). */
GEMMA2_DEF const char *gemma2_model_kernels(const gemma2_model *m);
/* The GEMMA2_WEIGHTS_* the weights are held in: gemma2_options.weights as given, except that a
   folder written by gemma2_save_quantized answers its Q8 or Q4 (AUTO means: as stored). saved
   (may be NULL) tells those apart from weights quantized at load: 1 when they were saved
   quantized and are used as they are in the file. A negative error if m is NULL. */
GEMMA2_DEF int gemma2_model_weights(const gemma2_model *m, int *saved);

/* Quantizes a checkpoint folder once and writes a folder that gemma2_load maps in place, with
   no work at load: weights is GEMMA2_WEIGHTS_Q8 or GEMMA2_WEIGHTS_Q4, and each matrix gets
   exactly the bytes gemma2_load(in_dir) with opt.weights = weights would compute, so the
   saved folder gives bit-identical results (a 27B bf16 checkpoint of 54 GB: 29 GB in Q8,
   17.5 GB in Q4). Writes out_dir/model.safetensors (the format: "Quantized checkpoints" in
   section 2.2) and copies config.json, generation_config.json, tokenizer.json,
   tokenizer.model, tokenizer_config.json and special_tokens_map.json where in_dir has them.
     - out_dir is created if missing (not its parents); it must not be in_dir, nor hold a
       model.safetensors.index.json (gemma2_load would read the shards it names instead).
     - The input is mapped and quantized one matrix at a time (on n_threads threads): memory
       holds one quantized matrix at most (the largest, the embedding: 1.25 GB for 27B Q8),
       and where files are mapped with POSIX mmap, the input pages read are dropped from
       the process after each tensor (madvise MADV_DONTNEED).
     - The file is written as model.safetensors.partial and renamed when complete; an
       existing model.safetensors is removed just before the copies and the rename, so a
       failed, cancelled or interrupted save never leaves a loadable half or mixed folder.
       On failure the partial file is removed; files already copied stay.
     - opt may be NULL; only n_threads (0 = all cores) and progress / progress_user (the
       fraction of the bytes written; nonzero cancels: GEMMA2_ERROR_CANCELLED) are used.
   Returns 0, or a negative error with a one-line reason in err (a folder that is already
   quantized: GEMMA2_ERROR_UNSUPPORTED; a full disk: GEMMA2_ERROR_IO).
       char err[256];
       if (gemma2_save_quantized("gemma-2-9b-it", "gemma-2-9b-it-q4", GEMMA2_WEIGHTS_Q4, NULL, err, sizeof err) != 0)
           fprintf(stderr, "%s\n", err);
       gemma2_model *m = gemma2_load("gemma-2-9b-it-q4", NULL, err, sizeof err);   // Q4, no flag needed */
GEMMA2_DEF int gemma2_save_quantized(const char *in_dir, const char *out_dir, int weights, const gemma2_options *opt,
                                     char *err, size_t err_size);

/* The loader's JSON reader, for programs that take JSON from outside (examples/server reads its
   requests with it): the same bounded parser that reads config.json and tokenizer.json, so hostile
   text (deep nesting, huge strings, bad escapes) fails cleanly. A document is a flat array of nodes;
   node 0 is the root. Every function takes node ids it returned and answers -1 / 0 for a bad one. */
enum { GEMMA2_JSON_NULL, GEMMA2_JSON_FALSE, GEMMA2_JSON_TRUE, GEMMA2_JSON_NUMBER, GEMMA2_JSON_STRING,
       GEMMA2_JSON_ARRAY, GEMMA2_JSON_OBJECT };
typedef struct gemma2_json gemma2_json;
/* NULL on malformed JSON (a one-line reason with the byte offset in err) or out of memory. The text
   must outlive the document (strings are read from it). */
GEMMA2_DEF gemma2_json *gemma2_json_parse(const char *text, size_t size, char *err, size_t err_size);
GEMMA2_DEF void gemma2_json_free(gemma2_json *j);
GEMMA2_DEF int gemma2_json_type(const gemma2_json *j, int node);           /* GEMMA2_JSON_*, or -1 */
GEMMA2_DEF int gemma2_json_count(const gemma2_json *j, int node);          /* array elements; object members */
/* First element of an array, or first KEY of an object (its value is the key's next); -1 if empty.
   next: the following sibling, or -1. */
GEMMA2_DEF int gemma2_json_child(const gemma2_json *j, int node);
GEMMA2_DEF int gemma2_json_next(const gemma2_json *j, int node);
/* The value of key in an object (keys compared as written, unescaped keys only), -1 if absent. */
GEMMA2_DEF int gemma2_json_get(const gemma2_json *j, int obj, const char *key);
/* A number's value: 1 and *out set, or 0 if node is not a well-formed number. */
GEMMA2_DEF int gemma2_json_number(const gemma2_json *j, int node, double *out);
/* A string's bytes, unescaped (a lone surrogate escape becomes U+FFFD): returns the length and writes
   at most cap bytes plus a NUL when it fits (cap = the return value + 1 gives a C string), never more
   than the string's length as written in the text. Negative: GEMMA2_ERROR_INVALID_ARGUMENT (node not
   a string), GEMMA2_ERROR_FORMAT (a bad escape), GEMMA2_ERROR_OUT_OF_MEMORY. */
GEMMA2_DEF int64_t gemma2_json_string(const gemma2_json *j, int node, char *out, size_t cap);

/* ===========================================================================
   1.3  Sessions and evaluation
   =========================================================================== */

/* n_ctx = the most tokens the session holds: 0 means the model's max_position_embeddings;
   negative, or more than max_position_embeddings, fails (NULL) at once, before anything is
   allocated. NULL also when out of memory or for a model loaded without weights. The KV
   cache is allocated for n_ctx up front but its pages are not touched until positions are
   evaluated. */
GEMMA2_DEF gemma2_session *gemma2_session_new(const gemma2_model *m, int n_ctx);
/* The same, and the reason when it fails: *rc (rc may be NULL) is set to 0 on success, else to
   GEMMA2_ERROR_INVALID_ARGUMENT (m NULL, n_ctx negative), GEMMA2_ERROR_UNSUPPORTED (n_ctx above
   max_position_embeddings), GEMMA2_ERROR_NO_WEIGHTS (a model loaded tokenizer-only) or
   GEMMA2_ERROR_OUT_OF_MEMORY (memory or worker threads could not be had, or the KV cache for
   n_ctx would not fit in the address space). The same holds for gemma2_sampler_new_ex and
   gemma2_chat_new_ex: the plain functions are these with rc NULL. */
GEMMA2_DEF gemma2_session *gemma2_session_new_ex(const gemma2_model *m, int n_ctx, int *rc);
/* Sessions may be freed before or after their model (this reads nothing of the model). */
GEMMA2_DEF void gemma2_session_free(gemma2_session *s);

/* Appends n tokens at the current position. logits == NULL: only the last token's logits are
   computed (read them with gemma2_logits); otherwise n * vocab floats, one row per token.
   Returns 0, or a negative error code (bad token id, context full, ...) and leaves the session
   unchanged. GEMMA2_ERROR_NUMERIC: a logit it computed is NaN or infinite, which only broken
   weights (a NaN or an infinity in the checkpoint, or values that overflow float32) produce; the
   tokens are then taken back as by gemma2_session_rewind to the position before the call (the
   previous token's logits are computed again), or, should that computation fail as well, the
   session is emptied (position 0). The rows written to `logits` are then unspecified (a NaN also
   reaches the call's earlier tokens: attention weighs later keys by exact zeros, and 0 * NaN is
   NaN). The check reads every logit computed, 1 MB per row of Gemma's 256000: ~0.15 ms, 0.1-0.2%
   of a 2B decode step, ~1% of a prompt token's share when all rows are asked for. */
GEMMA2_DEF int gemma2_eval(gemma2_session *s, const int32_t *ids, int n, float *logits);
/* The logits of the last evaluated token (vocab_size floats), or NULL before any eval. */
GEMMA2_DEF const float *gemma2_logits(const gemma2_session *s);

/* Tokens in the cache, the context size, the pos tokens so far; s NULL gives
   GEMMA2_ERROR_INVALID_ARGUMENT, GEMMA2_ERROR_INVALID_ARGUMENT and NULL. */
GEMMA2_DEF int gemma2_session_pos(const gemma2_session *s);
GEMMA2_DEF int gemma2_session_n_ctx(const gemma2_session *s);
GEMMA2_DEF const int32_t *gemma2_session_tokens(const gemma2_session *s);
/* Forgets everything from position pos on (0 <= pos <= current), and recomputes the logits
   of token pos - 1 as a fresh session evaluating the same pos tokens gives them (up to float
   rounding of a different batching). Cheap, except when a sliding-window layer's ring buffer
   no longer holds the keys token pos - 1 needs (only ever after going back more than 127
   positions from the furthest one reached): then the tokens before pos are evaluated again.
   Returns 0 or a negative error. GEMMA2_ERROR_NUMERIC (a broken model: the recomputed logits
   are not finite) leaves pos - 1 tokens, or none when the tokens were evaluated again. */
GEMMA2_DEF int gemma2_session_rewind(gemma2_session *s, int pos);

/* Tracing: fn is called after the embedding (layer 0) and after each decoder layer l
   (layer l+1) with the residual stream x[n][hidden_size] of the n tokens at positions
   pos0..pos0+n-1 being evaluated. For learning tools, logit lens and tests. NULL to stop
   (s NULL: nothing happens). */
typedef void (*gemma2_trace_fn)(void *user, int layer, int pos0, int n, const float *x);
GEMMA2_DEF void gemma2_session_set_trace(gemma2_session *s, gemma2_trace_fn fn, void *user);

/* Richer tracing, for tools that look inside a pass (examples/trace.c): one callback receives
   events of the kinds asked for in `what` (an OR of the GEMMA2_TRACE_* bits below), on the
   thread that called gemma2_eval (or gemma2_session_rewind, whose recomputation is a pass too),
   in model order. It may be set together with gemma2_session_set_trace; each gets its own calls.
   The pointers in an event are valid only during the call. Nothing is computed for a kind not
   asked for, and without a callback each step costs one NULL check. The library reads no clock:
   a tool times the steps with its own between a step's BEGIN and END.
     GEMMA2_TRACE_RESIDUAL   x = the residual stream [n][hidden_size] of the pass's n tokens at
                             positions pos0..pos0+n-1, after the embedding (layer 0) and after
                             each decoder layer l (layer l+1): what gemma2_session_set_trace gives.
     GEMMA2_TRACE_ATTENTION  after layer `layer`'s attention step, once per token of the pass and
                             query head: weights = the softmax probabilities of token `pos`'s
                             query head `head` over the key positions key0..key0+n_keys-1 it sees
                             (the causal range, cut to the last sliding_window keys on sliding
                             layers); they sum to 1. Recomputed from the cache for the trace (the
                             fast attention never holds them all at once): n_keys dot products
                             per head and token, noticeable only for long prompts.
     GEMMA2_TRACE_STEPS      STEP_BEGIN and STEP_END around each step of the pass: step = its
                             name ("embed", "rope_angles", "input_norm", "qkv_proj", "rope_and_cache",
                             "attention", "o_proj", "post_attention_norm_residual",
                             "pre_feedforward_norm", "gate_up_proj", "gelu_gate", "down_proj",
                             "post_feedforward_norm_residual", "output_logits", as the functions of
                             section 2.5), op = what kind of work it is; layer = the decoder layer,
                             -1 for the embedding, the RoPE angles and the output logits. */
enum {
    GEMMA2_TRACE_RESIDUAL  = 1,
    GEMMA2_TRACE_ATTENTION = 2,
    GEMMA2_TRACE_STEPS     = 4
};
typedef enum gemma2_trace_kind {
    GEMMA2_TRACE_EV_RESIDUAL,
    GEMMA2_TRACE_EV_ATTENTION,
    GEMMA2_TRACE_EV_STEP_BEGIN,
    GEMMA2_TRACE_EV_STEP_END
} gemma2_trace_kind;
typedef enum gemma2_trace_op {
    GEMMA2_TRACE_OP_MATMUL,     /* products with weight matrices (q/k/v, o, gate/up, down, the logits) */
    GEMMA2_TRACE_OP_ATTENTION,  /* scores, softcap, softmax and the weighted sum over the KV cache */
    GEMMA2_TRACE_OP_OTHER       /* per-token work: embedding, norms, RoPE and cache writes, GELU gate */
} gemma2_trace_op;
typedef struct gemma2_trace_event {
    gemma2_trace_kind kind;
    int layer;                  /* see above */
    int pos0, n;                /* the pass: n tokens at positions pos0.. */
    const float *x;             /* RESIDUAL: [n][hidden_size] */
    int pos, head, key0, n_keys;/* ATTENTION */
    const float *weights;       /* ATTENTION: [n_keys] */
    const char *step;           /* STEP_*: the step's name */
    gemma2_trace_op op;         /* STEP_* */
} gemma2_trace_event;
typedef void (*gemma2_trace_ex_fn)(void *user, const gemma2_trace_event *ev);
/* fn NULL (or what 0) stops. */
GEMMA2_DEF void gemma2_session_set_trace_ex(gemma2_session *s, gemma2_trace_ex_fn fn, void *user, unsigned what);

/* The logit lens: the logits the model would give if its last layer ended at this residual
   stream: softcap(RMSNorm(x) (1 + norm) embed_tokens^T), the same final norm, tied output
   projection and final softcap as the model's last step, for n rows x[n][hidden_size], into
   logits[n][vocab_size]. For the residual after the last layer it is the model's own logits.
   Runs on the calling thread with the model's kernels (so it may be called from a trace
   callback); allocates a little scratch. Returns 0, GEMMA2_ERROR_INVALID_ARGUMENT,
   GEMMA2_ERROR_NO_WEIGHTS or GEMMA2_ERROR_OUT_OF_MEMORY. */
GEMMA2_DEF int gemma2_logit_lens(const gemma2_model *m, const float *x, int n, float *logits);
/* Saved sessions. A session's state (its tokens, KV cache and last logits) written to a file or
   a buffer, and a new session made from it that continues exactly as the original would: the
   same logits, bit for bit, on the same build and options. A long system prompt is evaluated
   once and then restored, which costs reading its KV cache instead of computing it (tests/
   bench_model.c --only-saved times a 2k-token 2B session against evaluating its prompt).
     Contents: the tokens, the position, the KV cache in the model's kv_cache format (global
   layers: every position; sliding-window layers: only the positions their ring still holds, at
   most W + 127), the last logits, and a model fingerprint: the config's values, every weight
   matrix's shape and held format (BF16 weights and the same weights quantized at load differ),
   and a hash of the first and last 4 KiB of the embedding, the first layer's q_proj, the last
   layer's down_proj and the final norm. The kernel set and compute precision are not part of
   it: a session restored under other ones continues within their rounding.
     Format (version 1, little-endian): "GEM2SESS", u32 version, u32 kv format (GEMMA2_KV_*);
   u32 x 9 config integers (vocab_size .. sliding_window in gemma2_config's order) and u32 x 5
   float bits (query_pre_attn_scalar .. rope_theta); u32 matrix count 1 + 7 L, then per matrix
   (embedding, then per layer q k v o gate up down) u32 format, rows, cols; u64 weight hash;
   u32 n_ctx, pos, has_logits; i32 tokens[pos]; f32 logits[vocab_size] when has_logits; per layer
   u32 first (the first position kept; 0 on global layers), then keys and then values, each
   [kv heads][pos - first][head_dim] in the kv format; last a u64 checksum of all bytes before it
   (8-byte little-endian words w, the last one zero-padded: h = (h ^ w) * 0x100000001b3,
   h ^= h >> 29, from h = 0xcbf29ce484222325, then the same step with w = the byte count).
     Loading treats the bytes as untrusted: every count, size, position and token id is checked
   before anything is allocated, and the checksum before anything is copied. Errors (rc, and a
   one-line reason naming the file, or "session buffer", and the field): GEMMA2_ERROR_FORMAT (not
   a saved session, truncated, corrupted, a field out of range), GEMMA2_ERROR_UNSUPPORTED (a newer
   version; another model, naming the first value that differs; another kv_cache format;
   n_ctx above max_position_embeddings), GEMMA2_ERROR_CONTEXT_FULL (n_ctx below the saved
   position), GEMMA2_ERROR_INVALID_ARGUMENT, GEMMA2_ERROR_NO_WEIGHTS, GEMMA2_ERROR_IO,
   GEMMA2_ERROR_OUT_OF_MEMORY.
     n_ctx of the new session: 0 means the saved session's; otherwise as gemma2_session_new, and
   at least the saved position. Threads: the model's n_threads, as any new session.

   Writes the saved session into buf (cap bytes). *size (may be NULL) gets the bytes it takes,
   whatever cap is: buf NULL with cap 0 only asks. Returns 0, or GEMMA2_ERROR_INVALID_ARGUMENT
   (s NULL, or cap too small: nothing useful is written). */
GEMMA2_DEF int gemma2_session_save_buffer(const gemma2_session *s, void *buf, size_t cap, size_t *size);
/* Writes it to path: into path.partial, renamed to path when complete (a failed save leaves
   no half file under path). Returns 0 or a negative error with the reason in err. */
GEMMA2_DEF int gemma2_session_save(const gemma2_session *s, const char *path, char *err, size_t err_size);
/* A new session from a saved one (see above); NULL on failure with *rc (may be NULL) and err. */
GEMMA2_DEF gemma2_session *gemma2_session_load_buffer(const gemma2_model *m, const void *buf, size_t len, int n_ctx,
                                                      int *rc, char *err, size_t err_size);
GEMMA2_DEF gemma2_session *gemma2_session_load(const gemma2_model *m, const char *path, int n_ctx, int *rc,
                                               char *err, size_t err_size);
/* Batches: new tokens for several sessions of one model in one forward pass, so that every
   weight matrix is read once for all of them (a chat server's slots, characters of a game,
   several drafts). Decoding one token is bound by reading the weights; N tokens together cost
   the read once plus N tokens of arithmetic, so that N sessions decode in not much more time
   than one (tests/bench_model.c measures it: make bench). A gemma2_batch is the pass's scratch (activations for max_tokens
   tokens, the logits of the rows asked for) and its thread pool; the sessions keep their own
   KV cache, position and sliding-window rings, and attention runs per session, over its own
   cache. A batch serves any sessions of its model, a different set on every call (sessions
   join and leave between calls), one call at a time; like a session, it is used by one
   thread at a time, and so is each session it is given, for the duration of the call.

   gemma2_batch_new: max_tokens (1..GEMMA2_BATCH_MAX_TOKENS) is the most tokens one call takes,
   summed over its sessions; n_threads 0 = the model's gemma2_options.n_threads. Allocates
   ~(max_tokens + 2) x (6 H + 2 I + 3 nH hd) floats of activations plus max_tokens x vocab_size
   floats for logits (pages of the latter touched only as rows are used); the attention
   scratch grows on a call whose sessions have a larger n_ctx than any before (nH/nKV x 16 x
   n_ctx floats per thread), the only allocation a call ever makes. *rc (may be NULL): 0, or
   GEMMA2_ERROR_INVALID_ARGUMENT, GEMMA2_ERROR_NO_WEIGHTS, GEMMA2_ERROR_OUT_OF_MEMORY.

   gemma2_batch_eval: appends ids[i][0..n[i]) to session s[i] for every i < n_sessions, as
   gemma2_eval(s[i], ids[i], n[i], logits ? logits[i] : NULL) would:
     - n[i] may be 0 (that session is left alone), and at most 128 (the tokens a session
       evaluates in one pass: its sliding-window rings hold that many beyond the window). A
       longer prompt goes in over several calls.
     - logits NULL, or logits[i] NULL: only the last token's logits, read with gemma2_logits(s[i]);
       otherwise logits[i] receives n[i] x vocab_size floats, one row per token.
     - Results do not depend on the other sessions of the call, nor on their order, nor on
       max_tokens or the thread count: a session's logits and cache are bit-identical whichever
       sessions share its calls. A session with several tokens takes the several-token matrix
       products, as gemma2_eval does. A session with one token takes the one-token kernels'
       arithmetic where the kernel set has small-batch kernels for the weights' format, which
       read each weight once for all such sessions (AVX-512 with bf16 weights; the kernel
       contract's batch_lone): then every result is bit-identical to gemma2_eval's, the last
       row's logits included. Elsewhere one-token sessions share the several-token products,
       which may sum in another order than the one-token kernels (here: AVX-512 with F32
       weights), and logits then differ from gemma2_eval's by float32 rounding. Bound, held on
       every fixture and kernel set (tests: batch/agree): |batch - gemma2_eval| <= 1e-4 x
       (1 + |logit|) after one call, and after 40 calls on each path (the caches then differ
       too) 1e-3 x (1 + |logit|), or 1e-1 x (1 + |logit|) with a bf16 KV cache or
       GEMMA2_COMPUTE_BF16, which round the difference further (measured on the F32 fixtures:
       2e-6 after one call, 5e-5 after 40).
     - Everything is checked before anything changes: a NULL or repeated session, a session of
       another model, n[i] < 0 or > 128, a NULL ids[i] with n[i] > 0, more than max_tokens in
       all (GEMMA2_ERROR_INVALID_ARGUMENT), a bad id (GEMMA2_ERROR_BAD_TOKEN), a session whose
       context is full (GEMMA2_ERROR_CONTEXT_FULL), or no memory for the attention scratch:
       the call returns that error with every session unchanged, and status[i] (status may be
       NULL; else n_sessions ints) names the session at fault (its error; 0 for the others).
     - GEMMA2_ERROR_NUMERIC (broken weights) applies per session, as in gemma2_eval: a session
       whose logits came out non-finite has its tokens taken back (status[i] =
       GEMMA2_ERROR_NUMERIC); the others keep theirs (status 0). The call then returns
       GEMMA2_ERROR_NUMERIC, else 0.
     - Sessions' trace callbacks are not called.
   Decoding 8 chats, one token each per step:
       gemma2_batch *b = gemma2_batch_new(m, 8, 0, NULL);
       gemma2_session *ss[8]; const int32_t *ip[8]; int32_t next[8]; int ones[8];
       ... each ss[i] holds its prompt; next[i] = its sampled token; ip[i] = &next[i]; ones[i] = 1;
       rc = gemma2_batch_eval(b, ss, ip, ones, 8, NULL, NULL);
       ... sample next[i] from gemma2_logits(ss[i]) ... */
#define GEMMA2_BATCH_MAX_TOKENS 65536
typedef struct gemma2_batch gemma2_batch;
GEMMA2_DEF gemma2_batch *gemma2_batch_new(const gemma2_model *m, int max_tokens, int n_threads, int *rc);
GEMMA2_DEF void gemma2_batch_free(gemma2_batch *b);
GEMMA2_DEF int gemma2_batch_eval(gemma2_batch *b, gemma2_session *const *s, const int32_t *const *ids, const int *n, int n_sessions,
                                 float *const *logits, int *status);

/* ===========================================================================
   1.4  Tokenizer
   =========================================================================== */

#define GEMMA2_TOKENIZE_ADD_BOS  1  /* prepend <bos> */
#define GEMMA2_TOKENIZE_SPECIAL  2  /* match special tokens written in the text, as the reference tokenizers do;
                                       without it they are plain text (what user content in a chat must use) */
#define GEMMA2_DETOKENIZE_SKIP_CONTROL 1 /* gemma2_detokenize: leave out control tokens (<bos>, <eos>, <pad>, ...) */

/* Returns the number of ids the text needs (writes at most max_ids), or a negative error. */
GEMMA2_DEF int gemma2_tokenize(const gemma2_model *m, const char *text, size_t len, int32_t *ids, int max_ids, int flags);
/* Returns the number of bytes the text needs (writes at most cap, plus a NUL when it fits, as
   gemma2_chat_render does: cap = the return value + 1 gives a C string), or a negative error.
   flags 0: every token's text. */
GEMMA2_DEF int gemma2_detokenize(const gemma2_model *m, const int32_t *ids, int n, char *out, size_t cap, int flags);

/* Notes on gemma2_tokenize / gemma2_detokenize:
   - Both tokenizer files give the ids of their reference: tokenizer.json those of transformers (with
     split_special_tokens when GEMMA2_TOKENIZE_SPECIAL is not given), tokenizer.model those of SentencePiece, except
     that with GEMMA2_TOKENIZE_SPECIAL its CONTROL and UNKNOWN pieces (<bos>, <eos>, <pad>, <unk>) written in the
     text are matched as tokens, as transformers does, so that gemma2_chat_render + GEMMA2_TOKENIZE_SPECIAL gives
     the same ids with either file. They differ only on runs of 32+ spaces and where tokenizer.json lacks added
     tokens that tokenizer.model has as user-defined pieces.
   - A tokenizer file must be able to give ids for any text: one with neither an unknown-token piece nor byte
     fallback pieces for all 256 bytes is refused at load (GEMMA2_ERROR_UNSUPPORTED), so gemma2_tokenize only ever
     writes ids of the vocabulary.
   - Loading and tokenizing take time O(n log n) or less in the size of the file and of the text, whatever they
     hold (long pieces, long added tokens, long words without spaces).
   - Text that is not valid UTF-8 is accepted: each byte that is not part of a valid character becomes its byte
     piece <0xNN>, so decode(encode(x)) == x for any bytes (a literal '▁' in the text comes back as ' ').
   - gemma2_detokenize with flags 0 returns the exact bytes, byte pieces included, even when they are not UTF-8.
     With GEMMA2_DETOKENIZE_SKIP_CONTROL, tokenizer.json leaves out its special tokens (transformers'
     skip_special_tokens) and tokenizer.model its CONTROL pieces, writing UNKNOWN as " ⁇ " (SentencePiece). */
#define GEMMA2_DETOKENIZE_UTF8 2 /* gemma2_detokenize: replace invalid UTF-8 from byte pieces (<0xNN>) with U+FFFD the way
                                    the format's reference does: tokenizer.json one per maximal invalid subsequence
                                    (transformers.js / Python's "replace"), tokenizer.model one per invalid byte
                                    (SentencePiece). Without it the bytes are returned exactly as the tokens hold them. */

/* A model that holds only a tokenizer, read from one file (tokenizer.json or a SentencePiece tokenizer.model, told
   apart by content), for tools that need no config.json and no weights. gemma2_vocab_size is the tokenizer's;
   sessions cannot be made from it. Free with gemma2_free. NULL and a reason in err on failure. */
GEMMA2_DEF gemma2_model *gemma2_load_tokenizer(const char *path, char *err, size_t err_size);

/* 1 if m has a tokenizer, 0 if not (or m NULL). gemma2_load reads MODEL_DIR/tokenizer.json, else
   MODEL_DIR/tokenizer.model, and a folder with neither still loads (ids in, logits out): this tells
   a program to ask for one (gemma2_options.tokenizer_path) before anything fails with
   GEMMA2_ERROR_NO_TOKENIZER. */
GEMMA2_DEF int gemma2_has_tokenizer(const gemma2_model *m);

/* Tokenizer details (all take a model loaded with a tokenizer; ids outside the vocabulary give NULL / 0 / -1). */
/* The piece of a token as stored in the vocabulary ("▁world", "<0x0A>", "<bos>"), *len its bytes (not NUL-terminated
   in general: use len). NULL if there is no tokenizer or id is out of range. */
GEMMA2_DEF const char *gemma2_token_piece(const gemma2_model *m, int32_t id, size_t *len);
/* The id of a piece (exact bytes, as gemma2_token_piece returns them), or -1. */
GEMMA2_DEF int32_t gemma2_token_id(const gemma2_model *m, const char *piece, size_t len);
/* 1 for special tokens: those matched in text only with GEMMA2_TOKENIZE_SPECIAL and never produced without it.
   tokenizer.json: added tokens flagged "special" (<pad> <eos> <bos> <unk> <start_of_turn> <end_of_turn>);
   tokenizer.model: CONTROL and UNKNOWN pieces, plus <start_of_turn> / <end_of_turn> (the proto has no flag for them). */
GEMMA2_DEF int gemma2_token_is_special(const gemma2_model *m, int32_t id);
/* 1 for the tokens GEMMA2_DETOKENIZE_SKIP_CONTROL leaves out: tokenizer.json its special tokens (as transformers'
   skip_special_tokens), tokenizer.model its CONTROL pieces (as SentencePiece, which writes UNKNOWN as " ⁇ " then). */
GEMMA2_DEF int gemma2_token_is_control(const gemma2_model *m, int32_t id);
/* Special ids the tokenizer file names (-1 when absent). */
GEMMA2_DEF int32_t gemma2_token_bos(const gemma2_model *m);
GEMMA2_DEF int32_t gemma2_token_eos(const gemma2_model *m);

/* Incremental detokenizer, for streaming generated text. Feed ids one at a time; each call writes only text that is
   complete, valid UTF-8: a character whose bytes arrive as several byte tokens (<0xE4><0xB8><0xAD>) is held back
   until it is whole, and invalid sequences become U+FFFD (as GEMMA2_DETOKENIZE_UTF8 does). The concatenated
   output of push... then flush equals gemma2_detokenize(m, ids, n, ..., flags | GEMMA2_DETOKENIZE_UTF8).
       gemma2_detok d;
       char buf[256];
       gemma2_detok_init(&d, m, GEMMA2_DETOKENIZE_SKIP_CONTROL);
       for each generated id: { int k = gemma2_detok_push(&d, id, buf, sizeof buf); if (k > 0) fwrite(buf, 1, k, stdout); }
       k = gemma2_detok_flush(&d, buf, sizeof buf);   (an unfinished character at the end becomes U+FFFD)
   The state is a plain struct (no allocation, nothing to free); copy it to fork a stream. */
typedef struct gemma2_detok {
    const gemma2_model *m;
    int flags;             /* GEMMA2_DETOKENIZE_* */
    /* private: the bytes of an unfinished UTF-8 character */
    unsigned char pend[4];
    int n_pend, need;      /* bytes held; continuation bytes still expected */
    unsigned char lo, hi;  /* allowed range of the next continuation byte */
} gemma2_detok;
/* flags: GEMMA2_DETOKENIZE_SKIP_CONTROL or 0 (GEMMA2_DETOKENIZE_UTF8 is implied). init cannot fail: an unknown flag
   (or m NULL) is kept in the state, and every push and flush then returns GEMMA2_ERROR_INVALID_ARGUMENT, as
   gemma2_detokenize does for the same flags. */
GEMMA2_DEF void gemma2_detok_init(gemma2_detok *d, const gemma2_model *m, int flags);
/* Returns the number of bytes of text this token completes. If that is more than cap, nothing is written and the
   state is unchanged (call again with a larger buffer); 256 bytes always suffice for Gemma (a token writes at most
   9 bytes for an unfinished character before it, then its own text, at most 93 bytes for Gemma's longest piece).
   Negative: an error (bad id, no tokenizer, bad argument). */
GEMMA2_DEF int gemma2_detok_push(gemma2_detok *d, int32_t id, char *out, size_t cap);
/* Ends the stream: an unfinished character becomes U+FFFD. Same return convention; the state is reset after. */
GEMMA2_DEF int gemma2_detok_flush(gemma2_detok *d, char *out, size_t cap);

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
   No step sorts the whole vocabulary: top-k is a partial selection (a heap of k); top-p without
   top-k buckets the tokens by log-probability and sorts only the one bucket where the nucleus
   ends (two O(V) passes). */

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
   Preallocates everything it needs: sampling never allocates. NULL on bad argument (a NaN in any float
   parameter or bias included) or out of memory. */
GEMMA2_DEF gemma2_sampler *gemma2_sampler_new(int vocab_size, const gemma2_sampler_params *p);
/* The same, with the reason in *rc (see gemma2_session_new_ex): GEMMA2_ERROR_INVALID_ARGUMENT or
   GEMMA2_ERROR_OUT_OF_MEMORY. */
GEMMA2_DEF gemma2_sampler *gemma2_sampler_new_ex(int vocab_size, const gemma2_sampler_params *p, int *rc);
/* All zero (greedy, no penalties), without C++'s -Wextra warning on `= {0}` (see gemma2_options_default). */
GEMMA2_DEF gemma2_sampler_params gemma2_sampler_params_default(void);
GEMMA2_DEF void gemma2_sampler_free(gemma2_sampler *smp);
/* Restarts the random stream as if created with this seed (smp NULL: nothing happens). */
GEMMA2_DEF void gemma2_sampler_seed(gemma2_sampler *smp, uint64_t seed);
/* Picks a token from logits[vocab_size] (not modified). history[0..n_history) are the tokens so
   far (e.g. gemma2_session_tokens), used only by the penalties; may be NULL when n_history is 0.
   Returns the token id (always in [0, vocab_size)), or a negative error:
   GEMMA2_ERROR_NUMERIC if any logit is NaN (even a banned one: the numbers are broken, and the
   sampler does not guess), GEMMA2_ERROR_INVALID_ARGUMENT if every token is impossible (-inf).
   Infinities and extreme parameters mean their limits, and no NaN ever arises inside:
   - +inf is certain: if any token's logit is +inf (from the model, the bias or a penalty), only the
     +inf tokens remain, each equally likely; greedy takes the lowest id of them, and top-k keeps
     the top_k lowest ids of them (the candidate order breaks ties by id).
   - -inf is impossible. A bias of -INFINITY bans the token even if its logit is +inf, and a -inf
     logit stays -inf whatever bias is added. A logit that is +inf or -inf is not moved by the
     penalties (a penalty may make a finite logit infinite: repetition_penalty +inf sends negative
     logits to -inf and positive ones to 0; frequency/presence +inf ban a repeated token, -inf make
     it certain; if the two are infinite with opposite signs, the frequency term wins).
   - temperature -> 0+ (even a denormal such as 1e-40) is the limit of softmax(logit / T): only the
     tokens with the highest logit remain, drawn uniformly (temperature <= 0 is plain greedy, ties
     to the lowest id); temperature +inf (or huge) is uniform over the tokens that are not -inf.
   - top_k >= vocab_size, top_p >= 1 and min_p <= 0 are off; a tiny top_p keeps only the best
     token; min_p > 1 (or +inf) keeps only the tokens tied with the best. */
GEMMA2_DEF int gemma2_sampler_sample(gemma2_sampler *smp, const float *logits, const int32_t *history, int n_history);

/* --- Generation ------------------------------------------------------------ */

/* Why generation ended (gemma2_generate_result.stop_reason). */
enum {
    GEMMA2_STOP_EOS = 1,          /* sampled an end-of-sequence id (config eos ids or stop_ids) */
    GEMMA2_STOP_MAX_TOKENS = 2,   /* max_new_tokens reached */
    GEMMA2_STOP_STRING = 3,       /* the text reached one of the stop strings */
    GEMMA2_STOP_CALLBACK = 4,     /* on_token or on_prompt returned nonzero */
    GEMMA2_STOP_CONTEXT_FULL = 5  /* the session holds n_ctx tokens: nothing more fits */
};
/* A static, readable name for a GEMMA2_STOP_* ("end of sequence", "max tokens", ...); "none" for 0
   (a result whose call failed before generating), "unknown" for anything else. */
GEMMA2_DEF const char *gemma2_stop_reason_string(int reason);

/* Streaming: called for every generated token (eos excluded) with the text it completes: whole
   UTF-8 characters only (a character split over byte tokens arrives with its last token; invalid
   bytes arrive as U+FFFD: the text comes from gemma2_detok, control tokens skipped), with any text that could begin a stop string held back until it is
   known not to (and never delivered if it does). So len may be 0. After generation ends, one
   last call with token -1 delivers held-back text, if any. Return nonzero to stop. The text is
   not NUL-terminated and is valid only during the call. */
typedef int (*gemma2_token_fn)(void *user, int32_t token, const char *text, size_t len);
/* Prompt progress: done of total prompt tokens are evaluated. Nonzero stops (see on_prompt). */
typedef int (*gemma2_prompt_fn)(void *user, int done, int total);

/* All-zero means: greedy, until an eos id or the context is full, no stop strings. */
typedef struct gemma2_generate_params {
    gemma2_sampler_params sampler;   /* every call starts the random stream at sampler.seed: same seed,
                                        same reply (change it for another, e.g. to regenerate) */
    int max_new_tokens;              /* <= 0: no limit (until eos or the context is full) */
    const char *const *stop_strings; /* n_stop_strings NUL-terminated strings, matched on the text */
    int n_stop_strings;
    const int32_t *stop_ids;         /* more ids that end generation, beside the model's eos ids */
    int n_stop_ids;
    int ignore_eos;                  /* nonzero: the model's eos ids do not stop generation */
    gemma2_token_fn on_token;        /* optional streaming callback */
    gemma2_prompt_fn on_prompt;      /* optional: called after each pass over the prompt (128 tokens; the
                                        last may be shorter), for a progress display. The prompt gives the
                                        same logits with or without it. Nonzero stops: the prompt is taken
                                        back (gemma2_session_rewind to where the call began) and
                                        gemma2_generate returns 0 with stop_reason GEMMA2_STOP_CALLBACK */
    void *user;                      /* passed to on_token and on_prompt */
} gemma2_generate_params;
/* All zero (see above), without C++'s -Wextra warning on `= {0}` (see gemma2_options_default). */
GEMMA2_DEF gemma2_generate_params gemma2_generate_params_default(void);

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
   session, ...), GEMMA2_ERROR_NUMERIC if the model computed NaN or infinity (as gemma2_eval: the
   session then ends before the token whose evaluation failed, the prompt's or a generated one).
   Reaching n_ctx while generating is not an error: stop_reason CONTEXT_FULL.
   res may be NULL. The text streamed by on_token, concatenated, is the text of the generated tokens
   (cut before a stop string). */
GEMMA2_DEF int gemma2_generate(gemma2_session *s, const int32_t *prompt, int n_prompt,
                               const gemma2_generate_params *p, gemma2_generate_result *res);

/* Several generations at once: a generator is one gemma2_generate (its session, prompt,
   parameters, callbacks and result), advanced one step at a time, and gemma2_generate_step
   advances any set of them together through one gemma2_batch_eval, so that their sessions
   share every read of the weights (see gemma2_batch_new). Generators join and leave between
   steps: pass whichever are running. A chat server's slots, a game's characters:
       gemma2_batch *b = gemma2_batch_new(m, 512, 0, NULL);
       gemma2_generator *g[2];
       g[0] = gemma2_generator_new(s0, prompt0, n0, &params0, NULL);  (each its own session)
       g[1] = gemma2_generator_new(s1, prompt1, n1, &params1, NULL);
       while (gemma2_generate_step(b, g, 2) > 0) {}                    (on_token streams each)
       gemma2_generator_done(g[0], &res0); ... gemma2_generator_free(g[0]); ...

   gemma2_generator_new: checks as gemma2_generate does (the same errors in *rc, may be NULL;
   NULL on failure) and copies the prompt; nothing is evaluated yet. The session must not be
   used otherwise until the generator is done (or freed).
   gemma2_generate_step: per generator, its next prompt pass (the 128 tokens gemma2_generate's
   passes take; less when the batch's max_tokens has no more room, and the generator then
   continues in later steps) or its next token; on_prompt and on_token are called as in
   gemma2_generate. Generators that are decoding get their token first, then prompts share
   the room left (with less room than generators, the step starts one further on each time,
   so all progress). Returns how many of the n are still running (0: all done), or an error for
   the call: GEMMA2_ERROR_INVALID_ARGUMENT (NULL, a generator of another model, one given or
   one session twice), or what gemma2_batch_eval returns for the whole call, e.g. out of
   memory: then no session changed, and the next step retries (a token already sampled is
   kept, so the stream is the same). A generator's own failure (a NaN in its logits) ends that
   generator with the error, as gemma2_generate would return it; the others go on.
   Each generator gives what gemma2_generate gives with the same session state, prompt and
   parameters: the same tokens, text, stop reason and counts; its logits are bit-identical
   where the kernel set computes a batch's one-token sessions as gemma2_eval does (batch_lone:
   AVX-512, bf16 weights), else equal within the bound given at gemma2_batch_eval, and a prompt
   cut into other passes (a batch with less room than its passes) may differ in the last bits.
   gemma2_generator_done: 0 while running; 1 when finished, or the negative error that ended
   it; res (may be NULL) as gemma2_generate's so far. */
typedef struct gemma2_generator gemma2_generator;
GEMMA2_DEF gemma2_generator *gemma2_generator_new(gemma2_session *s, const int32_t *prompt, int n_prompt,
                                                  const gemma2_generate_params *p, int *rc);
GEMMA2_DEF void gemma2_generator_free(gemma2_generator *g);
GEMMA2_DEF int gemma2_generate_step(gemma2_batch *b, gemma2_generator *const *g, int n);
GEMMA2_DEF int gemma2_generator_done(const gemma2_generator *g, gemma2_generate_result *res);

/* --- Scoring --------------------------------------------------------------- */

/* Log-probabilities (natural log) of a continuation: logprobs[i] = log P(cont[i] | everything before).
   Evaluates prompt and then cont at the session's position in batches (all rows of logits from
   one gemma2_eval per batch of up to 64 tokens); n_prompt may be 0 to score after what the session
   holds already. greedy (may be NULL): greedy[i] = 1 when cont[i] is the argmax. Afterwards the
   session holds prompt + cont (rewind to reuse the prompt). Returns 0 or a negative error
   (CONTEXT_FULL if they do not fit, NUMERIC if the model computed NaN or infinity: the session
   is then rewound to where it was). */
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
/* The same, with the reason in *rc (see gemma2_session_new_ex): GEMMA2_ERROR_INVALID_ARGUMENT (s NULL
   or not empty), GEMMA2_ERROR_NO_TOKENIZER (the model has none: see gemma2_has_tokenizer),
   GEMMA2_ERROR_UNSUPPORTED (its vocabulary has no <start_of_turn> / <end_of_turn>: not a Gemma chat
   tokenizer) or GEMMA2_ERROR_OUT_OF_MEMORY. */
GEMMA2_DEF gemma2_chat *gemma2_chat_new_ex(gemma2_session *s, const char *system, int *rc);
GEMMA2_DEF void gemma2_chat_free(gemma2_chat *c);
/* Adds a user turn and generates the model's reply (streamed through p->on_token). Returns 0 or
   a negative error, as gemma2_generate (GEMMA2_ERROR_INVALID_ARGUMENT for c or user_content NULL).
   On CONTEXT_FULL for the user turn the chat and session are left as they were. */
GEMMA2_DEF int gemma2_chat_say(gemma2_chat *c, const char *user_content, const gemma2_generate_params *p,
                               gemma2_generate_result *res);
/* Forgets the last reply and generates it again (use another seed for another reply). Returns 0
   or a negative error, as gemma2_generate; GEMMA2_ERROR_INVALID_ARGUMENT when there is no reply. */
GEMMA2_DEF int gemma2_chat_regenerate(gemma2_chat *c, const gemma2_generate_params *p, gemma2_generate_result *res);
/* Forgets the last exchange (user turn and reply); returns 0, or GEMMA2_ERROR_INVALID_ARGUMENT if none. */
GEMMA2_DEF int gemma2_chat_undo(gemma2_chat *c);
/* Forgets the whole conversation (the system prompt stays). Returns 0 or a negative error
   (GEMMA2_ERROR_INVALID_ARGUMENT for NULL). */
GEMMA2_DEF int gemma2_chat_reset(gemma2_chat *c);
/* Number of completed exchanges (user turn + reply); 0 for NULL. */
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

/* No floating-point contraction in the implementation, whatever the build's -ffp-contract:
   the quantized products must give the same bits in every kernel of a set (decode and prefill,
   any thread split), and a compiler that fuses a multiply and an add in one kernel but not in
   another breaks that (g++ fuses by default, as gcc does in its GNU modes). Kernels that want
   fused multiply-adds say so with the intrinsics. Restored at the end of the implementation. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

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
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#endif

#define GEMMA2__MIN(a, b) ((a) < (b) ? (a) : (b))
#define GEMMA2__MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__) || defined(__clang__)
#define GEMMA2__MAYBE_UNUSED __attribute__((unused)) /* helpers some builds have no caller for */
#define GEMMA2__PREFETCH(p) __builtin_prefetch(p)
#else
#define GEMMA2__MAYBE_UNUSED
#define GEMMA2__PREFETCH(p) ((void)0)
#endif

/* 1 on a big-endian host (s390x, some POWER and MIPS), where files' little-endian numbers
   would need swapping. A run-time test: no compiler agrees on a macro for it, and it folds to
   a constant anyway. */
static int gemma2__big_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 0;
}

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

/* Paths are UTF-8 on every platform. Windows' narrow file functions (fopen, CreateFileA) read
   them in the ANSI code page instead, where a folder named in another script cannot even be
   spelled, so on Windows every path goes to the wide-character functions. A path that is not
   valid UTF-8 is taken in the ANSI code page, as the narrow functions would. */
#if defined(GEMMA2__WINDOWS)
/* path as a fresh wide string (GEMMA2_FREE it), or NULL */
static wchar_t *gemma2__wpath(const char *path)
{
    UINT cp = CP_UTF8;
    DWORD flags = MB_ERR_INVALID_CHARS;
    wchar_t *w;
    int n = MultiByteToWideChar(cp, flags, path, -1, NULL, 0);
    if (n <= 0) { cp = CP_ACP; flags = 0; n = MultiByteToWideChar(cp, flags, path, -1, NULL, 0); }
    if (n <= 0 || !(w = (wchar_t *)GEMMA2_MALLOC((size_t)n * sizeof *w))) return NULL;
    if (MultiByteToWideChar(cp, flags, path, -1, w, n) != n) { GEMMA2_FREE(w); return NULL; }
    return w;
}

/* fopen for a UTF-8 path; mode is ASCII ("rb", "wb") */
static FILE *gemma2__fopen(const char *path, const char *mode)
{
    wchar_t wmode[8], *w = gemma2__wpath(path);
    FILE *fp = NULL;
    size_t i;
    for (i = 0; i + 1 < sizeof wmode / sizeof *wmode && mode[i]; i++) wmode[i] = (wchar_t)(unsigned char)mode[i];
    wmode[i] = 0;
    if (w) fp = _wfopen(w, wmode);
    GEMMA2_FREE(w);
    return fp;
}

/* GetFileAttributes for a UTF-8 path */
static DWORD gemma2__file_attributes(const char *path)
{
    wchar_t *w = gemma2__wpath(path);
    DWORD a = w ? GetFileAttributesW(w) : INVALID_FILE_ATTRIBUTES;
    GEMMA2_FREE(w);
    return a;
}

static int gemma2__remove(const char *path)
{
    wchar_t *w = gemma2__wpath(path);
    int rc = w ? _wremove(w) : -1;
    GEMMA2_FREE(w);
    return rc;
}

/* rename, replacing an existing to as POSIX rename does (_wrename would refuse) */
static int gemma2__rename(const char *from, const char *to)
{
    wchar_t *a = gemma2__wpath(from), *b = gemma2__wpath(to);
    int rc = a && b && MoveFileExW(a, b, MOVEFILE_REPLACE_EXISTING) ? 0 : -1;
    GEMMA2_FREE(a);
    GEMMA2_FREE(b);
    return rc;
}
#else
static FILE *gemma2__fopen(const char *path, const char *mode) { return fopen(path, mode); }
static int gemma2__remove(const char *path) { return remove(path); }
static int gemma2__rename(const char *from, const char *to) { return rename(from, to); }
#endif

/* Text from a file (a tensor or shard name, a config value) made fit to quote in an error
   message: control bytes, backslashes and bytes that are not UTF-8 written as \n, \t, \\, \xNN,
   and whatever does not fit in buf (cap >= 4 bytes) cut with "...". A file cannot then break the
   one-line rule of messages, nor fill a screen. Returns buf. */
static const char *gemma2__esc(char *buf, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0, used, k;
    while (i < n) {
        char piece[4];
        const char *p = piece;
        size_t plen = 2;
        unsigned char c = u[i];
        used = 1;
        piece[0] = '\\';
        if (c >= 0x20 && c < 0x7f && c != '\\') { p = s + i; plen = 1; }
        else if (c == '\\') piece[1] = '\\';
        else if (c == '\n') piece[1] = 'n';
        else if (c == '\r') piece[1] = 'r';
        else if (c == '\t') piece[1] = 't';
        else {
            /* a whole, well-formed UTF-8 character is kept (no overlong forms, surrogates or
               code points past U+10FFFF); any other byte is \xNN */
            size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
            unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80, hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
            if (len && len <= n - i && u[i + 1] >= lo && u[i + 1] <= hi) {
                for (k = 2; k < len && u[i + k] >= 0x80 && u[i + k] <= 0xbf; k++) {}
                if (k == len) { p = s + i; plen = used = len; }
            }
            if (p == piece) { piece[1] = 'x'; piece[2] = hex[c >> 4]; piece[3] = hex[c & 15]; plen = 4; }
        }
        /* room for "..." stays whenever more text follows */
        if (o + plen + (i + used < n ? 3 : 0) > cap - 1) { memcpy(buf + o, "...", 3); o += 3; break; }
        memcpy(buf + o, p, plen);
        o += plen;
        i += used;
    }
    buf[o] = 0;
    return buf;
}

/* Bytes of the buffers that file text is quoted through (gemma2__esc): up to ~70 of it. */
#define GEMMA2__ESC_CAP 72

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

/* n * size bytes, not zeroed; NULL if the product overflows. */
static void *gemma2__malloc_n(size_t n, size_t size)
{
    if (size != 0 && n > (size_t)-1 / size) return NULL;
    return GEMMA2_MALLOC(n * size > 0 ? n * size : 1);
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

/* float32 -> IEEE half, round to nearest even; subnormal halves kept, overflow to infinity,
   NaN kept quiet (the Q8 scales). */
static GEMMA2__MAYBE_UNUSED uint16_t gemma2__f32_to_f16(float f)
{
    uint32_t u, sign, a;
    memcpy(&u, &f, 4);
    sign = (u >> 16) & 0x8000u;
    a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds past the largest half */
    if (a >= 0x38800000u) {                                   /* a normal half (>= 2^-14): rebias, round */
        uint32_t r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (a < 0x33000000u) return (uint16_t)sign;               /* below 2^-25 (2^-25 itself ties to 0) */
    {   /* a subnormal half: the value in units of 2^-24 is m 2^(e - 126), e <= 112 */
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e, h = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
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
    /* the usual cause is a folder without a tokenizer file: name the way out */
    case GEMMA2_ERROR_NO_TOKENIZER: return "model has no tokenizer (no tokenizer.json or tokenizer.model in its folder; "
                                           "see gemma2_options.tokenizer_path)";
    case GEMMA2_ERROR_NO_WEIGHTS: return "model was loaded without weights";
    case GEMMA2_ERROR_CHAT_FORMAT: return "bad chat message order or role";
    case GEMMA2_ERROR_CANCELLED: return "cancelled";
    case GEMMA2_ERROR_NUMERIC: return "non-finite values (NaN or infinity)";
    default: return "unknown error";
    }
}

GEMMA2_DEF gemma2_options gemma2_options_default(void)
{
    gemma2_options o;
    memset(&o, 0, sizeof o);
    return o;
}

/* ===========================================================================
   2.2  Internal interfaces: weight formats, the kernel contract, prototypes
   ===========================================================================
   Everything below talks to the kernels through this section. Two independent axes:

     weight format   how a matrix is stored (F32, BF16, F16, ...): gemma2__wformats[]
     kernel set      which instructions run (scalar, AVX2, AVX-512, NEON, ...): gemma2__kernels

   A kernel set offers one matrix product per weight format; a set that has none for a
   format leaves the slot NULL and the format's scalar reference product runs instead, so a
   format that no set knows yet is computed correctly (slowly), never misread as another. */

/* ---- weight formats ----------------------------------------------------------------------

   A matrix is row-major W[rows][cols] and is applied as y = W x (PyTorch's Linear layout:
   each output is the dot product of one row with the input). A row is a sequence of blocks
   of `block` elements, `block_bytes` bytes each; a partial last block still takes a whole
   block's bytes. Plain number formats are blocks of one element. */
enum { GEMMA2__WF_F32, GEMMA2__WF_BF16, GEMMA2__WF_F16, GEMMA2__WF_Q8, GEMMA2__WF_Q4, GEMMA2__WF_COUNT };

/* Q8 (llama.cpp's Q8_0): blocks of 32 weights along a row, each 34 bytes: the scale
   d = absmax / 127 as IEEE fp16 (2 bytes, little-endian), then the 32 quants
   q = round-half-away-from-zero(x / d) as int8 (an all-zero block has d = 0 and q = 0). A
   partial last block is padded with zero quants, so kernels read whole blocks, no masks.
   Interleaving scale and quants keeps one stream per row for the decode kernels; the quants
   are then at odd 2-byte offsets, which unaligned 32-byte loads take at full speed. */
#define GEMMA2__Q8_BLOCK 32
#define GEMMA2__Q8_BYTES 34

/* Q4 (llama.cpp's Q4_1: a scale and a minimum): blocks of 32 weights along a row, each 20
   bytes: d = (max - min) / 15 and m = min as IEEE fp16 (2 bytes each, little-endian), then
   16 bytes of 4-bit quants q in 0..15, x ~ d q + m, with q = round((x - m) / d) computed
   from the stored (fp16) d and m and clamped to 0..15. Byte i holds element i in its low
   nibble and element i + 16 in its high nibble, so one 16-byte load, masked and shifted,
   gives elements 0..15 and 16..31 in order. A partial last block has zero quants past its
   end (the activations are zero there, so they add nothing), a constant block d = 0.
   5 bits per weight. The minimum is worth its 0.5 bit: on quant-a (heavy-tailed weights
   with outlier columns, like trained ones) symmetric 4-bit blocks (d only) score a mean
   next-token KL of 0.32, this format 0.18 (tests: model/q4).
   Speed (2B shape, 2 cores, integer products on AVX512_VNNI; README "Speed"): Q8 (8.5 bits per
   weight) decodes at 94-105% of the read bandwidth at its bytes per token, about twice the
   weights per second of bf16; Q4 (5 bits, embedding Q8) at 69-92%, 2.7x; prefill runs the
   int8 dot products at 64-68% of their measured peak, several times the bf16 dot rate. */
#define GEMMA2__Q4_BLOCK 32
#define GEMMA2__Q4_BYTES 20

/* Quantized checkpoints (gemma2_save_quantized writes them, gemma2_load maps them in place).
   A standard safetensors file, so generic tools can list, copy and checksum it:
     __metadata__   {"format": "pt", "gemma2.quantization": "q8" or "q4",
                     "gemma2.quantization_version": "1"}
     each matrix gemma2_load binds (the embedding; per layer q, k, v, o, gate, up, down):
                    dtype "U8", shape [rows, gemma2__row_bytes(format, cols)], holding exactly
                    the rows of blocks a matrix has in memory (the layouts above), so binding
                    it is a pointer into the mapping. The scheme gives each matrix's format
                    through gemma2__weights_format, the rule quantizing at load follows too:
                    q8 = every matrix Q8 (GEMMA2_WEIGHTS_Q8), q4 = the embedding Q8 and the
                    projections Q4 (GEMMA2_WEIGHTS_Q4).
     every other tensor (the norms): dtype, shape and bytes as in the input.
   Order: the other tensors first, 4-byte dtypes, then 2-byte, then 1-byte, each in the
   input's order; then the matrices in the loader's order (the embedding, then layer by
   layer). No gaps, and the header is padded with spaces to a multiple of 8, so every
   tensor starts aligned to its element size. The version changes whenever a block layout
   does: a loader refuses versions newer than its own and schemes it does not know
   (GEMMA2_ERROR_UNSUPPORTED), and U8 matrices in a file that names no scheme or of another
   shape (GEMMA2_ERROR_FORMAT). */
#define GEMMA2__QUANT_VERSION 1

typedef struct gemma2__mat {
    const void *data; /* rows x gemma2__row_bytes(format, cols) bytes */
    int format;       /* GEMMA2__WF_* */
    int rows, cols;
} gemma2__mat;

/* Activation layouts ("packs"). Some kernels want the activations in another form than
   float32 rows; which one is the kernel set's own decision (its pack_kind), the forward pass
   only calls gemma2__pack. The layouts are shared by the sets, so they are defined once here
   and have a scalar reference (gemma2__pack_ref) that the tests hold every set's pack to:
     NONE     x as it is: float32 [T][K]
     BF16     x rounded to bf16, [T][K] (bf16 dot products: GEMMA2_COMPUTE_BF16)
     XT_F32   x transposed: row j holds column j of every token (prefill register tiles)
     XT_BF16  the same over column pairs: row j holds bf16 columns 2j and 2j+1 per token
     X3       each token split exactly into three bf16 parts, x = hi + mid + lo, per 32
              columns 32 hi then 32 mid then 32 lo, zero padded; tokens gemma2__x3_elems(K)
              apart (float32 decode on bf16 dot products)
     Q8       per token, its columns quantized in blocks of 32 as Q8 weights are (dx = absmax/127
              in float32, q = round-half-away(x / dx) as int8, zero padded), laid out per token
              as nb = ceil(K/32) blocks of 32 int8 quants, then nb float32 scales dx, then nb
              float32 block sums sx = dx * (sum of the block's quants), which Q4's minimum
              multiplies: 40 nb bytes per token (integer dot products on Q8 and Q4 weights)
     Q8T      the same quants, dx and sx, transposed for the prefill tiles of the integer dot
              products: tokens in runs of 16, per run and block (run-major) 704 bytes at
              gemma2__q8t_off: 8 groups of 4 columns x 16 tokens x 4 quants (group g, token l:
              bytes 64 g + 4 l, quants of columns 4g..4g+3 of the block), then 16 float32 dx, 16
              float32 sx, 16 int32 c = -128 (sum of the block's quants), tokens past T all zero
     EO       per token, per 32 columns its 16 even columns then its 16 odd ones, float32, zero
              padded; tokens gemma2__eo_elems(K) apart (a batch's one-token sessions on bf16
              weights: the split the one-token kernel makes in registers, made once)
   Transposed layouts store (row j, token t) at gemma2__xt_off: tokens in runs of 32, each run
   holding every row, 4 bytes per value; tokens past T are zero up to a multiple of 16 (no
   kernel reads further). */
enum { GEMMA2__PACK_NONE, GEMMA2__PACK_BF16, GEMMA2__PACK_XT_F32, GEMMA2__PACK_XT_BF16, GEMMA2__PACK_X3, GEMMA2__PACK_Q8, GEMMA2__PACK_Q8T, GEMMA2__PACK_EO,
       GEMMA2__PACK_COUNT };

static GEMMA2__MAYBE_UNUSED size_t gemma2__xt_off(int rows, int j, int t) { return ((size_t)(t >> 5) * (size_t)rows + (size_t)j) * 32 + (size_t)(t & 31); }
static size_t gemma2__x3_elems(int K) { return (size_t)(K + 31) / 32 * 96; }
static size_t gemma2__eo_elems(int K) { return (size_t)(K + 31) / 32 * 32; }
/* Bytes of one token in the Q8 layout: nb blocks of quants, then nb scales at 32 nb, then nb
   block sums at 36 nb. */
static size_t gemma2__q8_tok_bytes(int K) { return (size_t)(K + 31) / 32 * 40; }
/* Byte offset of (run of 16 tokens v, block b) in the Q8T layout of nb blocks per token. */
#define GEMMA2__Q8T_BYTES 704
static GEMMA2__MAYBE_UNUSED size_t gemma2__q8t_off(int nb, int v, int b) { return ((size_t)v * (size_t)nb + (size_t)b) * GEMMA2__Q8T_BYTES; }

/* Rows of a layout: the unit in which gemma2__pack splits it over threads. */
static int gemma2__pack_rows(int kind, int T, int K)
{
    switch (kind) {
    case GEMMA2__PACK_BF16: return T;
    case GEMMA2__PACK_XT_F32: return K;
    case GEMMA2__PACK_XT_BF16: return (K + 1) / 2;
    case GEMMA2__PACK_X3: return T;
    case GEMMA2__PACK_EO: return T;
    case GEMMA2__PACK_Q8: return T;
    case GEMMA2__PACK_Q8T: return (K + 31) / 32;
    default: return 0;
    }
}

/* Bytes of a layout for T tokens of K columns (a buffer of gemma2__pack_bytes_max holds any). */
static size_t gemma2__pack_bytes(int kind, int T, int K)
{
    switch (kind) {
    case GEMMA2__PACK_BF16: return (size_t)T * (size_t)K * 2;
    case GEMMA2__PACK_XT_F32:
    case GEMMA2__PACK_XT_BF16: return (size_t)K * (size_t)((T + 31) & ~31) * 4;
    case GEMMA2__PACK_X3: return (size_t)T * gemma2__x3_elems(K) * 2;
    case GEMMA2__PACK_EO: return (size_t)T * gemma2__eo_elems(K) * 4;
    case GEMMA2__PACK_Q8: return (size_t)T * gemma2__q8_tok_bytes(K);
    case GEMMA2__PACK_Q8T: return gemma2__q8t_off((K + 31) / 32, (T + 15) / 16, 0);
    default: return 0;
    }
}

static size_t gemma2__pack_bytes_max(int T, int K)
{
    size_t b = 0;
    int kind;
    for (kind = 1; kind < GEMMA2__PACK_COUNT; kind++) b = GEMMA2__MAX(b, gemma2__pack_bytes(kind, T, K));
    return b;
}

/* One matrix product Y[t][r] = sum_k W[r][k] X[t][k], t < T, over rows [r0, r1) so that
   threads can split it. */
typedef struct gemma2__matmul_args {
    float *y;            /* [T][ldy] */
    int ldy;
    const float *x;      /* [T][w->cols] float32 activations, always given */
    int T;
    const gemma2__mat *w;
    const void *xp;      /* x in the layout xp_kind, made by the set's pack, or NULL */
    int xp_kind;         /* GEMMA2__PACK_* */
    int lone;            /* 1: each token as if alone (a batch's one-token sessions; see batch_lone) */
} gemma2__matmul_args;

typedef void (*gemma2__matmul_fn)(const gemma2__matmul_args *a, int r0, int r1);

/* A weight format: one row of the table gemma2__wformats (section 2.3). */
typedef struct gemma2__wformat {
    const char *name;
    int block;            /* elements per block along a row */
    int block_bytes;      /* bytes per block */
    /* dst[0 .. n) = elements k0 .. k0+n-1 of a row, widened to float (k0 a multiple of block):
       for lookups (the embedding), the reference forward pass and the tests */
    void (*to_float)(float *dst, const void *row, int k0, int n);
    /* a row of K floats into the format (gemma2__row_bytes(format, K) bytes): quantizing at
       load and saving quantized checkpoints */
    void (*from_float)(void *row, const float *x, int K);
    /* the scalar reference product: what a kernel set's matmul for this format must compute */
    gemma2__matmul_fn matmul_ref;
} gemma2__wformat;

static const gemma2__wformat *gemma2__wformat_of(int format); /* its row of gemma2__wformats */
static size_t gemma2__row_bytes(int format, int cols);
static const uint8_t *gemma2__mat_row(const gemma2__mat *w, int r);

/* ---- the kernel contract -------------------------------------------------------------------

   A kernel set is a struct of function pointers and a few numbers, filled by a named init
   function (gemma2__kernels_init_scalar, _avx2, _avx512, _avx512bf16, _neon, _neonbf16). Each
   init starts from the set below it (scalar, then AVX2 or AVX-512, then +BF16) and sets only
   what it changes, so every entry always holds something that works.

   Required (the scalar set fills them all; a SIMD set may keep them):
     dot, axpy, rmsnorm, gelu_mul, softcap, softmax, rope, to_bf16, from_bf16,
     att_scores, att_values          as documented beside each entry below; results may differ
                                     from the scalar ones by float32 rounding, except rope,
                                     to_bf16 and from_bf16, which must give the same bits. NaN
                                     and infinities must come out where the scalar ones put them
                                     (every result finite, +-inf or NaN as there), so that a
                                     broken model fails the same way on every set.
   Per weight format (matmul[GEMMA2__WF_*]):
     NULL                            the format's reference product runs (gemma2__wformats).
     a function                      computes rows [r0, r1) of y for any T >= 1; it must accept
                                     xp_kind NONE (read x) and any layout its own pack_kind
                                     asks for. Its result for one output must not depend on the
                                     other tokens of a call of two or more tokens, nor on how
                                     rows are split (so chunking and thread counts never change
                                     results); a lone token may take another summation order.
   Optional:
     pack_kind, pack                 the activation layout matmul[format] wants and the function
                                     that writes it (rows [j0, j1) of gemma2__pack_rows); NULL
                                     pack_kind means NONE everywhere. Every layout is
                                     bit-identical to gemma2__pack_ref's.
     att_scores_bf16, att_values_bf16
                                     attention straight from a bf16 KV cache; NULL: the rows are
                                     widened with from_bf16 a few at a time into scratch.
     batch_lone[format]              nonzero: matmul[format] takes calls with lone = 1, T >= 2
                                     tokens in the layout pack_kind gives for one token, and
                                     computes each token bit for bit as a call with it alone,
                                     reading each weight once for all of them. A batch's
                                     one-token sessions then go that way, and their results
                                     equal gemma2_eval's; elsewhere they share the several-token
                                     path with the batch's other tokens.
   Numbers (the scalar init sets defaults):
     split_rows[2]                   matmul rows go to threads in multiples of this, for one
                                     token [0] and for several [1] (whole register tiles)
     pack_unit                       pack rows go to threads in multiples of this
     att_prefetch_rows               how many rows past the ones they read the attention
                                     kernels prefetch (the scratch they may read is padded)
     x3_min_cols                     set-specific: the X3 layout for matrices wider than this

   Adding an instruction set:
     1. an id GEMMA2_KERNELS_* before GEMMA2_KERNELS_COUNT (public enum);
     2. its kernels in section 2.12 under an #if for the compiler and architecture, with
        per-function target attributes so that one build runs on every CPU of the family;
     3. gemma2__kernels_init_NAME: call the init of the set below, then set what changes;
     4. a row in gemma2__kernel_sets (section 2.12) with the run-time CPU check. Selection,
        the tests and the benchmark iterate that list: nothing else changes. If this machine
        cannot run the set, add an emulated run to the Makefile's cross section.
   Adding a weight format:
     1. an id GEMMA2__WF_* before GEMMA2__WF_COUNT;
     2. its row in gemma2__wformats (section 2.3): block, bytes, to_float, reference product;
     3. the loader's rule for when a tensor becomes this format (gemma2__weights_format, 2.10,
        which quantizing at load and saved files both follow); a format that can be saved
        also needs a scheme name (gemma2__quant_schemes), and changing the blocks of a saved
        format means a new GEMMA2__QUANT_VERSION;
     4. optionally, per kernel set, a matmul[GEMMA2__WF_NEW] (and a pack_kind case).
     The fixture suite then runs the format on every kernel set. */
typedef struct gemma2__kernels {
    const char *name;
    int id;                                        /* GEMMA2_KERNELS_* */
    gemma2__matmul_fn matmul[GEMMA2__WF_COUNT];    /* NULL: the format's reference product */
    /* a row of K floats into a format, bit for bit what the format's from_float writes
       (quantizing at load and saving); NULL: that from_float */
    void (*from_float[GEMMA2__WF_COUNT])(void *row, const float *x, int K);
    /* the layout matmul[format] wants for T tokens of K columns (GEMMA2__PACK_*); compute_bf16:
       GEMMA2_COMPUTE_BF16 was asked for; lone: a call with lone = 1 (see batch_lone). NULL:
       always GEMMA2__PACK_NONE */
    int (*pack_kind)(const struct gemma2__kernels *k, int format, int T, int K, int compute_bf16, int lone);
    void (*pack)(void *xp, int kind, const float *x, int T, int K, int j0, int j1);
    float (*dot)(const float *a, const float *b, int n);            /* sum a[i] b[i] */
    void (*axpy)(float *y, float a, const float *x, int n);         /* y += a x */
    /* out = x / sqrt(mean(x^2) + eps) * w1 where w1 = 1 + weight (precomputed) */
    void (*rmsnorm)(float *out, const float *x, const float *w1, int n, float eps);
    /* g[i] = gelu_tanh(g[i]) * u[i] */
    void (*gelu_mul)(float *g, const float *u, int n);
    /* x[i] = cap * tanh(x[i] / cap) (attention-score and final-logit soft-capping) */
    void (*softcap)(float *x, int n, float cap);
    /* x[i] = exp(x[i] - max x) / sum_j exp(x[j] - max x) */
    void (*softmax)(float *x, int n);
    /* RoPE on n_heads consecutive heads of hd floats (hd even), rotate-half pairing: for
       i < hd/2, (a, b) = (x[i], x[i + hd/2]) becomes (a cos_i - b sin_i, b cos_i + a sin_i),
       with cs = cos[hd/2] then sin[hd/2] of this token's position */
    void (*rope)(float *x, int n_heads, int hd, const float *cs);
    /* dst[i] = bf16(src[i]), round to nearest even, bit-exact with gemma2__f32_to_bf16 */
    void (*to_bf16)(uint16_t *dst, const float *src, int n);
    /* dst[i] = float(src[i]): bf16 widened, exact (the bf16 KV cache) */
    void (*from_bf16)(float *dst, const uint16_t *src, int n);
    /* Attention, for `group` query heads q[g] (hd floats each) that share one kv head, over
       n consecutive cached rows of hd floats (K, V):
         att_scores: s[g * lds + a] = scale * (q[g] . K[a])
         att_values: out[g] += sum_a s[g * lds + a] V[a] */
    void (*att_scores)(const struct gemma2__kernels *k, float *s, int lds, const float *q, int group, int hd, const float *K, int n, float scale);
    void (*att_values)(const struct gemma2__kernels *k, float *out, const float *s, int lds, int group, int hd, const float *V, int n);
    /* the same reading bf16 cached rows (GEMMA2_KV_BF16), or NULL */
    void (*att_scores_bf16)(const struct gemma2__kernels *k, float *s, int lds, const float *q, int group, int hd, const uint16_t *K, int n, float scale);
    void (*att_values_bf16)(const struct gemma2__kernels *k, float *out, const float *s, int lds, int group, int hd, const uint16_t *V, int n);
    int batch_lone[GEMMA2__WF_COUNT];
    int split_rows[2];
    int pack_unit;
    int att_prefetch_rows;
    int x3_min_cols;
} gemma2__kernels;

/* The matrix product a set runs for a format: its own, or the format's reference. */
static gemma2__matmul_fn gemma2__matmul_for(const gemma2__kernels *k, int format);
/* Fills k with the set `want` (GEMMA2_KERNELS_*; AUTO: the best this CPU runs). Returns 0, or
   GEMMA2_ERROR_UNSUPPORTED if this CPU or build cannot run it (section 2.12). */
static int gemma2__kernels_select(int want, gemma2__kernels *k);

/* ---- thread pool (section 2.11) ----------------------------------------------------------- */

typedef struct gemma2__pool gemma2__pool;
/* fn(ctx, task, n_tasks) runs once for every task in [0, n_tasks), spread over the pool's
   threads (the caller's included); gemma2__pool_run returns when all have finished. */
typedef void (*gemma2__task_fn)(void *ctx, int task, int n_tasks);
static gemma2__pool *gemma2__pool_new(int n_threads);
static void gemma2__pool_free(gemma2__pool *p);
static int gemma2__pool_size(const gemma2__pool *p);
static void gemma2__pool_run(gemma2__pool *p, gemma2__task_fn fn, void *ctx, int n_tasks);
static int gemma2__cpu_count(void);

/* ---- files, JSON and the tokenizer (sections 2.9, 2.10) ------------------------------------ */

typedef struct gemma2__file gemma2__file;
static void gemma2__file_close(gemma2__file *f);

/* The JSON reader's document: a flat array of nodes (a DOM without pointers). Strings are
   spans of the source text (still escaped); numbers too. Every node knows its first child
   and next sibling; an object's children alternate key, value. */
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

static int gemma2__json_parse(gemma2__json *j, const char *text, size_t size, char *err, size_t err_size);
static void gemma2__json_free(gemma2__json *j);
static int32_t gemma2__json_get(const gemma2__json *j, int32_t obj, const char *key);
static int gemma2__json_is(const gemma2__json *j, int32_t node, int type);
static int gemma2__json_number(const gemma2__json *j, int32_t node, double *out);
static int gemma2__json_int(const gemma2__json *j, int32_t node, int *out);
static int64_t gemma2__json_unescape(const gemma2__json *j, int32_t node, char *out);
static int gemma2__json_streq(const gemma2__json *j, int32_t node, const char *s);
static int gemma2__utf8_put(char *out, uint32_t cp);

typedef struct gemma2__tokenizer gemma2__tokenizer;
/* Reads tokenizer.json (Hugging Face) or tokenizer.model (SentencePiece), chosen by content. */
static int gemma2__tokenizer_load(gemma2__tokenizer **out, const char *path, char *err, size_t err_size);
static void gemma2__tokenizer_free(gemma2__tokenizer *t);

/* ===========================================================================
   2.3  Kernels: scalar reference, and the weight-format table
   ===========================================================================
   Plain C, one operation at a time: the definition every SIMD kernel set is tested
   against, and what runs under GEMMA2_NO_SIMD. Two families matter for speed, and the
   SIMD versions in 2.12 compute the same (to rounding) and differ in how they feed the hardware:
   products with weight matrices (gemma2__ref_matvec in 2.5, the formats' matmuls below), bound
   by memory bandwidth for one token and by arithmetic for many, and attention over the KV
   cache (gemma2__att_scores_generic, gemma2__att_values_generic), bound by bandwidth over
   the cache. The rest (RMSNorm, softcap, softmax, GELU, RoPE) are short passes over vectors
   in cache, a few percent of the time (section 2.12 has the measured split). */

/* Attention from the set's own dot and axpy: the reference (with the scalar set) and the
   portable version for sets without a kernel of their own. Each key row is read once for
   all the query heads that share it. */
static void gemma2__att_scores_generic(const gemma2__kernels *k, float *s, int lds, const float *q, int group, int hd, const float *K,
                                       int n, float scale)
{
    int a, g;
    for (a = 0; a < n; a++)
        for (g = 0; g < group; g++) s[(size_t)g * lds + a] = k->dot(q + (size_t)g * hd, K + (size_t)a * hd, hd) * scale;
}

static void gemma2__att_values_generic(const gemma2__kernels *k, float *out, const float *s, int lds, int group, int hd, const float *V, int n)
{
    int a, g;
    for (a = 0; a < n; a++)
        for (g = 0; g < group; g++) k->axpy(out + (size_t)g * hd, s[(size_t)g * lds + a], V + (size_t)a * hd, hd);
}

static void gemma2__softmax_scalar(float *x, int n)
{
    float mx = -INFINITY, sum = 0;
    int i;
    for (i = 0; i < n; i++) if (x[i] > mx) mx = x[i];
    for (i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    for (i = 0; i < n; i++) x[i] /= sum;
}

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

/* Soft-capping, Gemma 2's bound on attention scores and final logits: x = cap tanh(x / cap). */
static void gemma2__softcap_scalar(float *x, int n, float cap)
{
    int i;
    for (i = 0; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

/* RoPE, "rotate half" layout (the Hugging Face one; Google's JAX code splits the same way): the
   pair (x[i], x[i + hd/2]) turns by the angle pos * theta^(-2i/hd), for every head of the
   token. The SIMD versions do the same multiplies and adds in the same order (no FMA), so
   every kernel set gives the same bits as this one (unless the compiler contracts these). */
static void gemma2__rope_scalar(float *x, int n_heads, int hd, const float *cs)
{
    int h, i, half = hd / 2;
    for (h = 0; h < n_heads; h++, x += hd)
        for (i = 0; i < half; i++) {
            float a = x[i], b = x[i + half], co = cs[i], si = cs[half + i];
            x[i] = a * co - b * si;
            x[i + half] = b * co + a * si;
        }
}

/* Floats to bf16 (the bf16 KV cache; the bf16 activation layouts). */
static void gemma2__to_bf16_scalar(uint16_t *dst, const float *src, int n)
{
    int i;
    for (i = 0; i < n; i++) dst[i] = gemma2__f32_to_bf16(src[i]);
}

static void gemma2__from_bf16_scalar(float *dst, const uint16_t *src, int n)
{
    int i;
    for (i = 0; i < n; i++) dst[i] = gemma2__bf16_to_f32(src[i]);
}


/* ---- weight formats: widening and the reference product ---- */

static void gemma2__to_float_f32(float *dst, const void *row, int k0, int n) { memcpy(dst, (const float *)row + k0, (size_t)n * sizeof(float)); }

static void gemma2__to_float_bf16(float *dst, const void *row, int k0, int n)
{
    const uint16_t *p = (const uint16_t *)row + k0;
    int i;
    for (i = 0; i < n; i++) dst[i] = gemma2__bf16_to_f32(p[i]);
}

static void gemma2__to_float_f16(float *dst, const void *row, int k0, int n)
{
    const uint16_t *p = (const uint16_t *)row + k0;
    int i;
    for (i = 0; i < n; i++) dst[i] = gemma2__f16_to_f32(p[i]);
}

static void gemma2__from_float_f32(void *row, const float *x, int K) { memcpy(row, x, (size_t)K * sizeof(float)); }
static void gemma2__from_float_bf16(void *row, const float *x, int K) { gemma2__to_bf16_scalar((uint16_t *)row, x, K); }
static void gemma2__from_float_f16(void *row, const float *x, int K)
{
    int i;
    for (i = 0; i < K; i++) ((uint16_t *)row)[i] = gemma2__f32_to_f16(x[i]);
}

/* The reference product for formats whose elements widen exactly to float: each output is
   the plain sequential sum over the columns of w[k] * x[k], in float32. The row is widened
   256 columns at a time (a multiple of every block size) into a stack buffer. */
#define GEMMA2__REF_COLS 256
static void gemma2__matmul_ref_widen(const gemma2__matmul_args *a, int r0, int r1)
{
    const gemma2__mat *w = a->w;
    void (*to_float)(float *, const void *, int, int) = gemma2__wformat_of(w->format)->to_float;
    float buf[GEMMA2__REF_COLS];
    int K = w->cols, r, t, k0, k;
    for (r = r0; r < r1; r++) {
        const uint8_t *row = gemma2__mat_row(w, r);
        for (t = 0; t < a->T; t++) a->y[(size_t)t * a->ldy + r] = 0;
        for (k0 = 0; k0 < K; k0 += GEMMA2__REF_COLS) {
            int n = GEMMA2__MIN(GEMMA2__REF_COLS, K - k0);
            to_float(buf, row, k0, n);
            for (t = 0; t < a->T; t++) {
                const float *x = a->x + (size_t)t * K + k0;
                float s = a->y[(size_t)t * a->ldy + r];
                for (k = 0; k < n; k++) s += buf[k] * x[k];
                a->y[(size_t)t * a->ldy + r] = s;
            }
        }
    }
}

/* Q8 (layout beside GEMMA2__WF_Q8). Quantizing one block of n <= 32 values: into q[32] (zero
   padded) with the scale d = absmax / 127 in float32, q = round-half-away(x / d). Weights store
   fp16(d) (the quants are from the float32 d, as llama.cpp's Q8_0 does), activations keep d.
   A block holding a NaN gets d = NaN, one holding an infinity d = inf, and both all-zero quants:
   the block then adds NaN (inf or NaN times 0) to every product that reads it, as a NaN in a
   float product would, and no NaN reaches a float -> int conversion (undefined in C). */
static float gemma2__q8_quantize(int8_t *q, const float *x, int n)
{
    float amax = 0, d;
    int i, nan = 0;
    for (i = 0; i < n; i++) { amax = GEMMA2__MAX(amax, fabsf(x[i])); nan |= x[i] != x[i]; }
    d = nan ? NAN : amax / 127.0f;
    for (i = 0; i < GEMMA2__Q8_BLOCK; i++) q[i] = (int8_t)(i < n && d != 0 && d < INFINITY ? (int)roundf(x[i] / d) : 0);
    return d;
}

/* One row of K floats into Q8 (gemma2__row_bytes(GEMMA2__WF_Q8, K) bytes). */
static void gemma2__q8_quantize_row(void *row, const float *x, int K)
{
    uint8_t *dst = (uint8_t *)row;
    int k0;
    for (k0 = 0; k0 < K; k0 += GEMMA2__Q8_BLOCK, dst += GEMMA2__Q8_BYTES) {
        uint16_t h = gemma2__f32_to_f16(gemma2__q8_quantize((int8_t *)(dst + 2), x + k0, GEMMA2__MIN(GEMMA2__Q8_BLOCK, K - k0)));
        memcpy(dst, &h, 2);
    }
}

static void gemma2__to_float_q8(float *dst, const void *row, int k0, int n)
{
    const uint8_t *b = (const uint8_t *)row + (size_t)(k0 / GEMMA2__Q8_BLOCK) * GEMMA2__Q8_BYTES;
    int i;
    for (i = 0; i < n; i++) {
        const uint8_t *blk = b + (size_t)(i / GEMMA2__Q8_BLOCK) * GEMMA2__Q8_BYTES;
        uint16_t h;
        memcpy(&h, blk, 2);
        dst[i] = gemma2__f16_to_f32(h) * (float)(int8_t)blk[2 + i % GEMMA2__Q8_BLOCK];
    }
}

/* The block sum of the Q8 layout: dx times the integer sum of the quants (exact in float). */
static float gemma2__q8_block_sum(const int8_t *q, float d)
{
    int i, sum = 0;
    for (i = 0; i < 32; i++) sum += q[i];
    return d * (float)sum;
}

/* One token of the Q8 activation layout (GEMMA2__PACK_Q8). */
static void gemma2__q8_pack_token(uint8_t *dst, const float *x, int K)
{
    int nb = (K + 31) / 32, b;
    float *d = (float *)(void *)(dst + (size_t)nb * 32), *sx = d + nb;
    for (b = 0; b < nb; b++) {
        int8_t *q = (int8_t *)dst + (size_t)b * 32;
        d[b] = gemma2__q8_quantize(q, x + (size_t)b * 32, GEMMA2__MIN(32, K - b * 32));
        sx[b] = gemma2__q8_block_sum(q, d[b]);
    }
}

/* The reference product for Q8 weights: integer dot products on activations quantized like
   the weights (GEMMA2__PACK_Q8, made here from x if they come unpacked). Per token and row:
     y = sum over blocks b, in order, of (float)(dw_b * dx_b) * (float)idot_b   (float32)
   with idot_b the exact int32 dot of the block's 32 weight and 32 activation quants. Kernels
   compute the same integer dots exactly; their float sums may take another order.
   Unpacked activations are quantized 8 blocks (256 columns) at a time into a stack buffer. */
static void gemma2__matmul_ref_q8(const gemma2__matmul_args *a, int r0, int r1)
{
    const gemma2__mat *w = a->w;
    const int K = w->cols, nb = (K + 31) / 32;
    const size_t rb = gemma2__row_bytes(GEMMA2__WF_Q8, K);
    int8_t qbuf[8 * 32];
    float dbuf[8];
    int t, r, b0, b, i;
    for (t = 0; t < a->T; t++) {
        float *y = a->y + (size_t)t * a->ldy;
        const uint8_t *xp = a->xp_kind == GEMMA2__PACK_Q8 ? (const uint8_t *)a->xp + (size_t)t * gemma2__q8_tok_bytes(K) : NULL;
        for (r = r0; r < r1; r++) y[r] = 0;
        for (b0 = 0; b0 < nb; b0 += 8) {
            int n = GEMMA2__MIN(8, nb - b0);
            const int8_t *xq;
            const float *xd;
            if (xp) { xq = (const int8_t *)xp + (size_t)b0 * 32; xd = (const float *)(const void *)(xp + (size_t)nb * 32) + b0; }
            else {
                const float *x = a->x + (size_t)t * K;
                for (b = 0; b < n; b++) dbuf[b] = gemma2__q8_quantize(qbuf + b * 32, x + (size_t)(b0 + b) * 32, GEMMA2__MIN(32, K - (b0 + b) * 32));
                xq = qbuf; xd = dbuf;
            }
            for (r = r0; r < r1; r++) {
                const uint8_t *blk = (const uint8_t *)w->data + (size_t)r * rb + (size_t)b0 * GEMMA2__Q8_BYTES;
                float s = y[r];
                for (b = 0; b < n; b++, blk += GEMMA2__Q8_BYTES) {
                    const int8_t *wq = (const int8_t *)(blk + 2);
                    int32_t idot = 0;
                    uint16_t h;
                    float scale;
                    for (i = 0; i < 32; i++) idot += (int32_t)wq[i] * (int32_t)xq[b * 32 + i];
                    memcpy(&h, blk, 2);
                    scale = gemma2__f16_to_f32(h) * xd[b];
                    s += scale * (float)idot;
                }
                y[r] = s;
            }
        }
    }
}

/* Q4 (layout beside GEMMA2__WF_Q4). One block of n <= 32 values into 20 bytes. As in Q8, a
   NaN in the block makes d and m NaN, and a d or m that is not finite (NaN, or an infinity in
   the block, or a range past fp16's 65504) gives all-zero quants. */
static void gemma2__q4_quantize_block(uint8_t *blk, const float *x, int n)
{
    float lo = x[0], hi = x[0], d, m, id;
    uint16_t hd, hm;
    uint8_t q[32];
    int i, nan = x[0] != x[0], ok;
    for (i = 1; i < n; i++) { lo = GEMMA2__MIN(lo, x[i]); hi = GEMMA2__MAX(hi, x[i]); nan |= x[i] != x[i]; }
    if (nan) lo = hi = NAN;
    hd = gemma2__f32_to_f16((hi - lo) / 15.0f);
    hm = gemma2__f32_to_f16(lo);
    d = gemma2__f16_to_f32(hd);
    m = gemma2__f16_to_f32(hm);
    ok = d < INFINITY && m > -INFINITY && m < INFINITY;
    id = d != 0 ? 1.0f / d : 0.0f;
    for (i = 0; i < 32; i++) {
        int v = i < n && ok ? (int)roundf((x[i] - m) * id) : 0;
        q[i] = (uint8_t)(v < 0 ? 0 : v > 15 ? 15 : v);
    }
    memcpy(blk, &hd, 2);
    memcpy(blk + 2, &hm, 2);
    for (i = 0; i < 16; i++) blk[4 + i] = (uint8_t)(q[i] | q[i + 16] << 4);
}

static void gemma2__q4_quantize_row(void *row, const float *x, int K)
{
    uint8_t *dst = (uint8_t *)row;
    int k0;
    for (k0 = 0; k0 < K; k0 += GEMMA2__Q4_BLOCK, dst += GEMMA2__Q4_BYTES) gemma2__q4_quantize_block(dst, x + k0, GEMMA2__MIN(GEMMA2__Q4_BLOCK, K - k0));
}

/* Quant i (0..31) of a Q4 block. */
static int gemma2__q4_quant(const uint8_t *blk, int i) { return i < 16 ? blk[4 + i] & 15 : blk[4 + i - 16] >> 4; }

static void gemma2__to_float_q4(float *dst, const void *row, int k0, int n)
{
    const uint8_t *b = (const uint8_t *)row + (size_t)(k0 / GEMMA2__Q4_BLOCK) * GEMMA2__Q4_BYTES;
    int i;
    for (i = 0; i < n; i++) {
        const uint8_t *blk = b + (size_t)(i / GEMMA2__Q4_BLOCK) * GEMMA2__Q4_BYTES;
        uint16_t hd, hm;
        memcpy(&hd, blk, 2);
        memcpy(&hm, blk + 2, 2);
        dst[i] = gemma2__f16_to_f32(hd) * (float)gemma2__q4_quant(blk, i % GEMMA2__Q4_BLOCK) + gemma2__f16_to_f32(hm);
    }
}

/* The reference product for Q4 weights, on the Q8 activation layout (made here from x if it
   comes unpacked). With x ~ dx qx per block, sum_k (dw qw + mw) x ~ dw dx idot + mw sx,
   sx = dx sum(qx) the layout's block sum. Per token and row:
     y = sum over blocks b, in order, of ((float)(dw_b * dx_b) * (float)idot_b + mw_b * sx_b)
   in float32, each step rounded as written (a multiply, a multiply, an add, an add; no
   fused multiply-add), idot_b the exact int32 dot of the 32 weight and activation quants. */
static void gemma2__matmul_ref_q4(const gemma2__matmul_args *a, int r0, int r1)
{
    const gemma2__mat *w = a->w;
    const int K = w->cols, nb = (K + 31) / 32;
    const size_t rb = gemma2__row_bytes(GEMMA2__WF_Q4, K);
    int8_t qbuf[8 * 32];
    float dbuf[8], sbuf[8];
    int t, r, b0, b, i;
    for (t = 0; t < a->T; t++) {
        float *y = a->y + (size_t)t * a->ldy;
        const uint8_t *xp = a->xp_kind == GEMMA2__PACK_Q8 ? (const uint8_t *)a->xp + (size_t)t * gemma2__q8_tok_bytes(K) : NULL;
        for (r = r0; r < r1; r++) y[r] = 0;
        for (b0 = 0; b0 < nb; b0 += 8) {
            int n = GEMMA2__MIN(8, nb - b0);
            const int8_t *xq;
            const float *xd, *xs;
            if (xp) {
                xq = (const int8_t *)xp + (size_t)b0 * 32;
                xd = (const float *)(const void *)(xp + (size_t)nb * 32) + b0;
                xs = xd + nb;
            } else {
                const float *x = a->x + (size_t)t * K;
                for (b = 0; b < n; b++) {
                    dbuf[b] = gemma2__q8_quantize(qbuf + b * 32, x + (size_t)(b0 + b) * 32, GEMMA2__MIN(32, K - (b0 + b) * 32));
                    sbuf[b] = gemma2__q8_block_sum(qbuf + b * 32, dbuf[b]);
                }
                xq = qbuf; xd = dbuf; xs = sbuf;
            }
            for (r = r0; r < r1; r++) {
                const uint8_t *blk = (const uint8_t *)w->data + (size_t)r * rb + (size_t)b0 * GEMMA2__Q4_BYTES;
                float s = y[r];
                for (b = 0; b < n; b++, blk += GEMMA2__Q4_BYTES) {
                    int32_t idot = 0;
                    uint16_t hd, hm;
                    float scale, t1, t2;
                    for (i = 0; i < 32; i++) idot += gemma2__q4_quant(blk, i) * (int32_t)xq[b * 32 + i];
                    memcpy(&hd, blk, 2);
                    memcpy(&hm, blk + 2, 2);
                    scale = gemma2__f16_to_f32(hd) * xd[b];
                    t1 = scale * (float)idot;
                    t2 = gemma2__f16_to_f32(hm) * xs[b];
                    s += t1 + t2;
                }
                y[r] = s;
            }
        }
    }
}

/* The weight formats. A new format is a row here (see "Adding a weight format" in 2.2). */
static const gemma2__wformat gemma2__wformats[GEMMA2__WF_COUNT] = {
    /* name    block  bytes  to_float               from_float               reference product */
    {"f32",    1,     4,     gemma2__to_float_f32,  gemma2__from_float_f32,  gemma2__matmul_ref_widen},
    {"bf16",   1,     2,     gemma2__to_float_bf16, gemma2__from_float_bf16, gemma2__matmul_ref_widen},
    {"f16",    1,     2,     gemma2__to_float_f16,  gemma2__from_float_f16,  gemma2__matmul_ref_widen},
    {"q8",     32,    34,    gemma2__to_float_q8,   gemma2__q8_quantize_row, gemma2__matmul_ref_q8},
    {"q4",     32,    20,    gemma2__to_float_q4,   gemma2__q4_quantize_row, gemma2__matmul_ref_q4},
};

static const gemma2__wformat *gemma2__wformat_of(int format) { return &gemma2__wformats[format]; }

static size_t gemma2__row_bytes(int format, int cols)
{
    const gemma2__wformat *f = &gemma2__wformats[format];
    return (size_t)((cols + f->block - 1) / f->block) * (size_t)f->block_bytes;
}

static const uint8_t *gemma2__mat_row(const gemma2__mat *w, int r)
{
    return (const uint8_t *)w->data + (size_t)r * gemma2__row_bytes(w->format, w->cols);
}

/* Row r of w widened to float (w->cols floats). */
static void gemma2__mat_row_float(const gemma2__mat *w, int r, float *dst)
{
    gemma2__wformats[w->format].to_float(dst, gemma2__mat_row(w, r), 0, w->cols);
}

static gemma2__matmul_fn gemma2__matmul_for(const gemma2__kernels *k, int format)
{
    GEMMA2_ASSERT(format >= 0 && format < GEMMA2__WF_COUNT);
    return k->matmul[format] ? k->matmul[format] : gemma2__wformats[format].matmul_ref;
}

/* ---- activation layouts: the reference of every kernel set's pack ---- */

/* The exact three-way split of x into bf16 parts: hi = bf16(x), mid = bf16(x - hi),
   lo = bf16(x - hi - mid). Each subtraction is exact in float32 (the operands are within a
   factor of 2^-8 of each other), and 3 x 8 significant bits cover a float's 24: hi + mid + lo
   == x for every float of magnitude 2^-100 .. 2^127 (below that the parts would be
   subnormal, which vdpbf16ps reads as zero: an error under 2^-120). */
static void gemma2__to_bf16x3_scalar(uint16_t *dst, const float *x, int n)
{
    int i, b;
    memset(dst, 0, gemma2__x3_elems(n) * sizeof(uint16_t));
    for (i = 0; i < n; i++) {
        uint16_t *blk = dst + (size_t)(i / 32) * 96;
        float r = x[i];
        for (b = 0; b < 3; b++) {
            uint16_t h = gemma2__f32_to_bf16(r);
            blk[32 * b + i % 32] = h;
            r -= gemma2__bf16_to_f32(h);
        }
    }
}

/* Rows [j0, j1) of layout `kind` (GEMMA2__PACK_*) for x [T][K], element by element. */
static GEMMA2__MAYBE_UNUSED void gemma2__pack_ref(void *xp, int kind, const float *x, int T, int K, int j0, int j1)
{
    int j, t, rows = gemma2__pack_rows(kind, T, K), Tp = (T + 15) & ~15;
    uint32_t *o = (uint32_t *)xp;
    switch (kind) {
    case GEMMA2__PACK_BF16:
        for (t = j0; t < j1; t++) gemma2__to_bf16_scalar((uint16_t *)xp + (size_t)t * K, x + (size_t)t * K, K);
        break;
    case GEMMA2__PACK_X3:
        for (t = j0; t < j1; t++) gemma2__to_bf16x3_scalar((uint16_t *)xp + (size_t)t * gemma2__x3_elems(K), x + (size_t)t * K, K);
        break;
    case GEMMA2__PACK_EO:
        for (t = j0; t < j1; t++) {
            float *o32 = (float *)xp + (size_t)t * gemma2__eo_elems(K);
            int k;
            memset(o32, 0, gemma2__eo_elems(K) * sizeof(float));
            for (k = 0; k < K; k++) o32[k / 32 * 32 + (k % 2) * 16 + k % 32 / 2] = x[(size_t)t * K + k];
        }
        break;
    case GEMMA2__PACK_Q8:
        for (t = j0; t < j1; t++) gemma2__q8_pack_token((uint8_t *)xp + (size_t)t * gemma2__q8_tok_bytes(K), x + (size_t)t * K, K);
        break;
    case GEMMA2__PACK_Q8T: /* rows are blocks */
        for (j = j0; j < j1; j++)
            for (t = 0; t < Tp; t += 16) {
                uint8_t *o8 = (uint8_t *)xp + gemma2__q8t_off(rows, t / 16, j);
                float *od = (float *)(void *)(o8 + 512);
                int32_t *oc = (int32_t *)(void *)(o8 + 640);
                int l, i;
                memset(o8, 0, GEMMA2__Q8T_BYTES);
                for (l = 0; l < 16 && t + l < T; l++) {
                    int8_t q[32];
                    int32_t sum = 0;
                    float d = gemma2__q8_quantize(q, x + (size_t)(t + l) * K + (size_t)j * 32, GEMMA2__MIN(32, K - j * 32));
                    for (i = 0; i < 32; i++) { o8[64 * (i / 4) + 4 * l + i % 4] = (uint8_t)q[i]; sum += q[i]; }
                    od[l] = d;
                    od[16 + l] = gemma2__q8_block_sum(q, d);
                    oc[l] = -128 * sum;
                }
            }
        break;
    case GEMMA2__PACK_XT_F32:
    case GEMMA2__PACK_XT_BF16:
        for (j = j0; j < j1; j++)
            for (t = 0; t < Tp; t++) {
                uint32_t v = 0;
                if (t < T) {
                    const float *xr = x + (size_t)t * K;
                    if (kind == GEMMA2__PACK_XT_F32) memcpy(&v, xr + j, 4);
                    else v = (uint32_t)gemma2__f32_to_bf16(xr[2 * j]) | (2 * j + 1 < K ? (uint32_t)gemma2__f32_to_bf16(xr[2 * j + 1]) << 16 : 0u);
                }
                o[gemma2__xt_off(rows, j, t)] = v;
            }
        break;
    default: break;
    }
}

/* ---- the scalar set: the base every other set starts from ---- */

static void gemma2__kernels_init_scalar(gemma2__kernels *k)
{
    int f;
    memset(k, 0, sizeof *k);
    k->name = "scalar";
    k->id = GEMMA2_KERNELS_SCALAR;
    for (f = 0; f < GEMMA2__WF_COUNT; f++) k->matmul[f] = NULL; /* the reference products */
    k->dot = gemma2__dot_scalar;
    k->axpy = gemma2__axpy_scalar;
    k->rmsnorm = gemma2__rmsnorm_scalar;
    k->gelu_mul = gemma2__gelu_mul_scalar;
    k->softcap = gemma2__softcap_scalar;
    k->softmax = gemma2__softmax_scalar;
    k->rope = gemma2__rope_scalar;
    k->to_bf16 = gemma2__to_bf16_scalar;
    k->from_bf16 = gemma2__from_bf16_scalar;
    k->att_scores = gemma2__att_scores_generic;
    k->att_values = gemma2__att_values_generic;
    /* Threads take matrix rows in multiples of 16 for one token (whole 8-row decode groups and
       64-byte lines of y) and 48 for several (whole prefill row blocks); sets with other tile
       shapes change these. */
    k->split_rows[0] = 16;
    k->split_rows[1] = 48;
    k->pack_unit = 16;
    k->att_prefetch_rows = 0;
    k->x3_min_cols = INT_MAX;
}

/* ===========================================================================
   2.4  The model: weights and sessions
   ===========================================================================
   Shapes, with the 2B numbers: V = 256000 vocabulary, H = 2304 hidden, I = 9216
   feed-forward, L = 26 layers, nH = 8 query heads, nKV = 4 kv heads, hd = 256 per head,
   W = 4096 sliding window. */

/* One decoder layer's weights. */
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
    int files_in_use;              /* some weights point into the files (else they are closed after loading) */
    gemma2__block *owned;          /* allocations freed with the model */
    size_t weight_bytes;
    gemma2__kernels kern;          /* the kernel set, chosen at load (gemma2_options.kernels) */
    gemma2__tokenizer *tok;        /* NULL when loaded without a tokenizer */
    gemma2__pool *load_pool;       /* threads for converting weights, only during gemma2_load */
};

/* How many tokens one pass through the layers handles at once. Prompts are cut into
   chunks of this size: each weight matrix is then read once per chunk instead of once per
   token (prefill becomes arithmetic-bound), while the scratch buffers stay small. */
#define GEMMA2__CHUNK 128

/* One session's tokens in a batch's pass (section 2.6): rows t0..t0+C-1 of the pass, at
   positions pos0.. of session s, whose attention blocks (b0..) start at its own first token. */
typedef struct gemma2__seg {
    gemma2_session *s;
    int t0, C, pos0, b0;
} gemma2__seg;

struct gemma2_session {
    const gemma2_model *m;
    int n_layers;            /* the model's, for gemma2_session_free (which may run after gemma2_free) */
    int n_ctx;               /* capacity in tokens */
    int chunk;               /* tokens per pass, <= GEMMA2__CHUNK (smaller only in tests, to exercise the rings) */
    int pos;                 /* tokens evaluated so far = next position */
    int hi;                  /* highest pos reached since the sliding rings were last refilled */
    int32_t *tokens;         /* [n_ctx] the tokens at positions 0..pos-1 */
    /* KV cache, per layer: k[l], v[l] are [nKV][slots[l]][hd] (each kv head's positions are
       contiguous, so attention streams them with no page crossing per key). Global layers keep every
       position (slots = n_ctx); sliding-window layers keep a ring of the last W + CHUNK - 1
       positions (position p lives in slot p % slots), enough for every query of a chunk
       to see its W keys. Stored as float32 in k, v (GEMMA2_KV_F32: exact), or as bf16 in
       kb, vb (GEMMA2_KV_BF16: half the bytes; k[l], v[l] are then NULL). */
    float **k, **v;
    uint16_t **kb, **vb;     /* NULL unless GEMMA2_KV_BF16 */
    float *kvtmp;            /* GEMMA2_KV_BF16 without bf16 attention kernels: [n_threads][KV_BLK + pad][hd] rows widened for the
                                attention kernels, a few at a time (they stay in L1) */
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
    float *scores;           /* [n_threads][ATT_QB * nH/nKV][n_ctx] attention scores of one work item (block of
                                tokens x query-head group) per thread */
    float *attq;             /* [n_threads][2][ATT_QB * nH/nKV][hd] a work item's queries and outputs, packed */
    void *xp;                /* gemma2__pack_bytes_max(C, max(H, I, nH*hd)) bytes: the activations of a
                                matrix product in the layout the kernel set asks for (gemma2__pack) */
    float *logits;           /* [V] logits of the last evaluated token */
    int has_logits;
    int undoing;             /* gemma2_eval is taking back tokens with non-finite logits (no second undo inside) */
    gemma2__pool *pool;
    gemma2_trace_fn trace;
    void *trace_user;
    gemma2_trace_ex_fn trace_ex; /* gemma2_session_set_trace_ex: NULL, or called for the kinds in trace_what */
    void *trace_ex_user;
    unsigned trace_what;
    /* Only on a batch's scratch, which has no KV cache of its own: the sessions whose tokens
       the pass holds, each reading and writing its own cache. NULL on sessions. */
    const gemma2__seg *seg;
    int n_seg;
    int n_lone;              /* the pass's first n_lone tokens (or, for the logits, rows) are one-token sessions' */
};

/* ===========================================================================
   2.5  The forward pass
   ===========================================================================
   Gemma 2, token ids in, next-token logits out. Per token, with the 2B numbers:

     x = embed_tokens[id] * sqrt(H)                       [H = 2304]
     26 times (layers alternate: even ones see the last W = 4096 positions, odd ones all):
       h = RMSNorm(x) (1 + input_layernorm)
       q, k, v = h Wq, h Wk, h Wv                         [8 x 256], [4 x 256], [4 x 256]
       q, k = RoPE(q, k, position); k, v into the cache
       a = softmax(softcap50(q k^T / sqrt(256)) + causal/window mask) v, per query head,
           query head h reading kv head h / 2 (grouped-query attention)
       x = x + RMSNorm(a Wo) (1 + post_attention_layernorm)
       h = RMSNorm(x) (1 + pre_feedforward_layernorm)
       x = x + RMSNorm((gelu_tanh(h Wgate) * (h Wup)) Wdown) (1 + post_feedforward_layernorm)
                                                          [I = 9216 between]
     logits = softcap30(RMSNorm(x) (1 + norm) embed_tokens^T)   [V = 256000, tied embedding]

   Gemma 2's peculiarities by name, with the 2B numbers (each is commented again where it happens):
   - (1+w) RMSNorm: RMSNorm(x) = x / sqrt(mean(x^2) + 1e-6) * (1 + w); the checkpoint stores w
     (initialised at 0), the loader keeps 1 + w in float32 (gemma2__bind_norm, gemma2__rmsnorm_scalar).
   - Four norms per layer: input_layernorm and pre_feedforward_layernorm on each sublayer's input,
     post_attention_layernorm and post_feedforward_layernorm on its output before the residual add
     (Llama has only the first two); 26 x 4 = 104 vectors of 2304, and model.norm at the end.
   - sqrt(H) embedding scale: x = embed_tokens[id] * sqrt(H), the factor in float32 as both reference
     implementations compute it (tests/data/models/README.md, convention 1). Hugging Face running in
     bf16 rounds the factor to bf16: for the 2B sqrt(2304) = 48 either way, for the 9B 59.8665 becomes
     59.75, for the 27B 67.8822 becomes 68.0. gemma2__embed.
   - query_pre_attn_scalar: scores are q.k * query_pre_attn_scalar^-1/2: 256 for the 2B and 9B
     (= head_dim, so 1/16), but 144 for the 27B (= H / nH = 4608 / 32, not its head_dim 128).
   - Attention-logit softcap before masking: scores go through 50 tanh(s / 50) (attn_logit_softcapping),
     then the causal / window mask, then softmax (gemma2__softcap_scalar; in gemma2__att_task the
     masked keys are never scored at all).
   - Alternating sliding-window / global layers: layers 0, 2, 4, ... see the last W = 4096 positions
     (the query's own included), layers 1, 3, 5, ... all of them (gemma2__layer.sliding).
   - GQA (grouped-query attention): 8 query heads share 4 kv heads, query head h reading kv head
     h / (nH / nKV) = h / 2: the KV cache and its reads are half what 8 kv heads would need.
   - RoPE rotate-half: q and k (not v) of each head turn pairwise, (x[i], x[i + 128]) by the angle
     pos * 10000^(-2i/256), i < 128 (gemma2__rope_scalar); not the interleaved pairs (x[2i], x[2i+1]).
   - GELU-tanh gating (GeGLU): the feed-forward is down(gelu_tanh(gate(h)) * up(h)) with the tanh
     approximation of GELU (gelu_pytorch_tanh; gemma2__gelu_tanh), 2304 -> 9216 -> 2304.
   - Tied embeddings: there is no lm_head; the logits are the final hidden state times embed_tokens^T,
     the same [256000, 2304] matrix the embedding reads one row of (gemma2__output_logits).
   - Final logit softcap: logits = 30 tanh(logits / 30) (final_logit_softcapping).

   First the same model in its plainest form (one token, scalar kernels, no threads): read it
   to learn the model, and the tests hold the fast version to it on every fixture. Then the
   fast version: a chunk of tokens per pass (each weight read once per chunk), matrix products
   through the kernel set on the thread pool, a ring-buffer KV cache for the sliding-window
   layers. Its steps are named as in the list above. Where the fast version differs, the
   reference says the same thing simply:
   - chunks: gemma2__forward takes up to GEMMA2__CHUNK tokens per pass, every step on all of them;
     the reference takes one token, and a prompt is that token after token.
   - per-token steps (gemma2__each_token): the reference's lines between its matrix products,
     run for each token of the chunk, split over the pool.
   - the KV cache: position p lives in row p of the reference's kc / vc; the fast cache keeps
     each kv head's positions contiguous and, on sliding layers, a ring (slot p % slots).
   - kernel tables (s->m->kern.rmsnorm, .softcap, .rope, the matmuls of gemma2__mat_formats):
     the set chosen at load; the reference calls the scalar kernels of section 2.3 directly, and
     the tests hold every set to those. */

/* ---- the plain forward pass ---- */

/* y[r] = W[r] . x, one row widened to float at a time (row: w->cols floats of scratch). */
static void gemma2__ref_matvec(const gemma2__mat *w, const float *x, float *y, float *row)
{
    int r, k;
    for (r = 0; r < w->rows; r++) {
        float s = 0;
        gemma2__mat_row_float(w, r, row);
        for (k = 0; k < w->cols; k++) s += row[k] * x[k];
        y[r] = s;
    }
}

/* Logits (V floats) for token id at position pos, given the keys and values of positions
   0..pos-1 in kc, vc ([L][n_ctx][nKV * hd] each, n_ctx > pos); this token's keys and values
   are stored there too. Uses the scalar reference kernels whatever the model's kernel set,
   and reads weights in any format through its to_float. Returns 0 or GEMMA2_ERROR_OUT_OF_MEMORY. */
static GEMMA2__MAYBE_UNUSED int gemma2__forward_reference(const gemma2_model *m, float *kc, float *vc, int n_ctx, int32_t id, int pos, float *logits)
{
    const gemma2_config *c = &m->cfg;
    int H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim, nH = c->num_attention_heads, nKV = c->num_key_value_heads;
    int qd = nH * hd, kvd = nKV * hd, V = c->vocab_size, widest = GEMMA2__MAX(GEMMA2__MAX(H, I), qd), l, h, i, p;
    float eps = c->rms_norm_eps, scale = 1.0f / sqrtf(c->query_pre_attn_scalar), *x, *xn, *q, *att, *o, *g, *u, *sc, *row, *cs;
    float *buf = (float *)gemma2__calloc((size_t)H * 3 + (size_t)qd * 2 + (size_t)I * 2 + (size_t)pos + 1 + (size_t)widest + (size_t)hd, sizeof(float));
    if (!buf) return GEMMA2_ERROR_OUT_OF_MEMORY;
    x = buf; xn = x + H; o = xn + H; q = o + H; att = q + qd; g = att + qd; u = g + I; sc = u + I; row = sc + pos + 1; cs = row + widest;

    /* embedding, scaled by sqrt(H) in float32 */
    gemma2__mat_row_float(&m->embed, id, x);
    for (i = 0; i < H; i++) x[i] *= (float)sqrt((double)H);
    /* RoPE angles of this position: theta^(-2i/hd) in float32, then cos and sin */
    for (i = 0; i < hd / 2; i++) {
        float ang = (float)pos * (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)hd));
        cs[i] = (float)cos((double)ang);
        cs[hd / 2 + i] = (float)sin((double)ang);
    }
    for (l = 0; l < c->num_hidden_layers; l++) {
        const gemma2__layer *L = &m->layers[l];
        float *K = kc + (size_t)l * n_ctx * kvd, *Vc = vc + (size_t)l * n_ctx * kvd;
        int lo = L->sliding ? GEMMA2__MAX(0, pos - c->sliding_window + 1) : 0; /* the first key this layer sees */
        /* attention block */
        gemma2__rmsnorm_scalar(xn, x, L->attn_norm, H, eps);
        gemma2__ref_matvec(&L->wq, xn, q, row);
        gemma2__ref_matvec(&L->wk, xn, K + (size_t)pos * kvd, row);
        gemma2__ref_matvec(&L->wv, xn, Vc + (size_t)pos * kvd, row);
        gemma2__rope_scalar(q, nH, hd, cs);
        gemma2__rope_scalar(K + (size_t)pos * kvd, nKV, hd, cs);
        for (h = 0; h < nH; h++) {
            int kvh = h / (nH / nKV);
            for (p = lo; p <= pos; p++) sc[p - lo] = gemma2__dot_scalar(q + (size_t)h * hd, K + (size_t)p * kvd + (size_t)kvh * hd, hd) * scale;
            if (c->attn_logit_softcapping > 0) gemma2__softcap_scalar(sc, pos - lo + 1, c->attn_logit_softcapping);
            gemma2__softmax_scalar(sc, pos - lo + 1);
            memset(att + (size_t)h * hd, 0, (size_t)hd * sizeof(float));
            for (p = lo; p <= pos; p++) gemma2__axpy_scalar(att + (size_t)h * hd, sc[p - lo], Vc + (size_t)p * kvd + (size_t)kvh * hd, hd);
        }
        gemma2__ref_matvec(&L->wo, att, o, row);
        gemma2__rmsnorm_scalar(o, o, L->post_attn_norm, H, eps);
        for (i = 0; i < H; i++) x[i] += o[i];
        /* feed-forward block */
        gemma2__rmsnorm_scalar(xn, x, L->pre_ffw_norm, H, eps);
        gemma2__ref_matvec(&L->wgate, xn, g, row);
        gemma2__ref_matvec(&L->wup, xn, u, row);
        gemma2__gelu_mul_scalar(g, u, I);
        gemma2__ref_matvec(&L->wdown, g, o, row);
        gemma2__rmsnorm_scalar(o, o, L->post_ffw_norm, H, eps);
        for (i = 0; i < H; i++) x[i] += o[i];
    }
    /* final norm, the tied output projection, the final softcap */
    gemma2__rmsnorm_scalar(xn, x, m->final_norm, H, eps);
    gemma2__ref_matvec(&m->embed, xn, logits, row);
    if (c->final_logit_softcapping > 0) gemma2__softcap_scalar(logits, V, c->final_logit_softcapping);
    GEMMA2_FREE(buf);
    return 0;
}

/* ---- the fast forward pass: matrix products ---- */

/* y = W x for all rows of W, for up to GEMMA2__MM_MAX matrices at once (q, k and v read the
   same input, so do gate and up: one dispatch and one wait instead of three), split across
   the pool. Tasks are contiguous slabs of rows, in multiples of the set's split_rows (whole
   register tiles, whole cache lines of y), many per thread: with 2
   threads on a busy machine, a thread that starts late or runs slow is balanced by the other
   (measured: 32 tasks per thread gave 5-10% more decode speed than 4), and the per-task
   cost is one atomic increment. */
#define GEMMA2__MM_MAX 3
#define GEMMA2__TASKS_DECODE 32  /* tasks per thread */
#define GEMMA2__TASKS_PREFILL 8

typedef struct gemma2__matmul_job {
    const gemma2__kernels *k;
    const gemma2__matmul_args *a;
    int n, chunk[GEMMA2__MM_MAX], first[GEMMA2__MM_MAX + 1]; /* matrix i owns tasks first[i] .. first[i + 1] - 1 */
} gemma2__matmul_job;

static void gemma2__matmul_task(void *ctx, int task, int n_tasks)
{
    const gemma2__matmul_job *j = (const gemma2__matmul_job *)ctx;
    int i = 0, r0, r1;
    (void)n_tasks;
    while (i + 1 < j->n && task >= j->first[i + 1]) i++;
    r0 = (task - j->first[i]) * j->chunk[i];
    r1 = GEMMA2__MIN(r0 + j->chunk[i], j->a[i].w->rows);
    if (r0 < r1) gemma2__matmul_for(j->k, j->a[i].w->format)(&j->a[i], r0, r1);
}

static GEMMA2__MAYBE_UNUSED void gemma2__matmul_n(gemma2__pool *p, const gemma2__kernels *k, const gemma2__matmul_args *a, int n)
{
    gemma2__matmul_job j;
    int nt = p ? gemma2__pool_size(p) : 1, i;
    GEMMA2_ASSERT(n >= 1 && n <= GEMMA2__MM_MAX);
    if (nt <= 1) {
        for (i = 0; i < n; i++) gemma2__matmul_for(k, a[i].w->format)(&a[i], 0, a[i].w->rows);
        return;
    }
    j.k = k; j.a = a; j.n = n; j.first[0] = 0;
    for (i = 0; i < n; i++) {
        int rows = a[i].w->rows, several = a[i].T > 1 && !a[i].lone, unit = k->split_rows[several];
        int per = several ? GEMMA2__TASKS_PREFILL : GEMMA2__TASKS_DECODE, chunk = (rows + nt * per - 1) / (nt * per);
        chunk = GEMMA2__MAX(several ? unit : 4 * unit, (chunk + unit - 1) / unit * unit);
        j.chunk[i] = chunk;
        j.first[i + 1] = j.first[i] + (rows + chunk - 1) / chunk;
    }
    gemma2__pool_run(p, gemma2__matmul_task, &j, j.first[n]);
}


/* Packs the activations x of a[0..n) (matrices of the same width reading the same x) into
   buf in the layout the kernel set asks for, rows split over the pool, and points each a[i]
   at it. Matrices of another format than a[0], whose set wants another layout, read x as it
   is (every matmul accepts GEMMA2__PACK_NONE). The forward pass, the tests and the benchmark
   all prepare products through this one helper. */
typedef struct gemma2__pack_job {
    const gemma2__kernels *k;
    void *xp;
    const float *x;
    int kind, T, K, rows, per;
} gemma2__pack_job;

static void gemma2__pack_task(void *ctx, int task, int n_tasks)
{
    const gemma2__pack_job *j = (const gemma2__pack_job *)ctx;
    int j0 = task * j->per, j1 = GEMMA2__MIN(j0 + j->per, j->rows);
    (void)n_tasks;
    if (j0 < j1) j->k->pack(j->xp, j->kind, j->x, j->T, j->K, j0, j1);
}

static void gemma2__pack(gemma2__pool *p, const gemma2__kernels *k, gemma2__matmul_args *a, int n, void *buf, int compute_bf16)
{
    gemma2__pack_job j;
    int i, nt = p ? gemma2__pool_size(p) : 1, unit = GEMMA2__MAX(1, k->pack_unit);
    j.kind = k->pack_kind ? k->pack_kind(k, a[0].w->format, a[0].T, a[0].w->cols, compute_bf16, a[0].lone) : GEMMA2__PACK_NONE;
    for (i = 0; i < n; i++) {
        int kind = i == 0 ? j.kind : k->pack_kind ? k->pack_kind(k, a[i].w->format, a[i].T, a[i].w->cols, compute_bf16, a[i].lone) : GEMMA2__PACK_NONE;
        a[i].xp = kind == j.kind && kind != GEMMA2__PACK_NONE ? buf : NULL;
        a[i].xp_kind = a[i].xp ? kind : GEMMA2__PACK_NONE;
    }
    if (j.kind == GEMMA2__PACK_NONE) return;
    GEMMA2_ASSERT(j.kind < GEMMA2__PACK_COUNT && k->pack); /* the contract: pack_kind comes with pack */
    j.k = k; j.xp = buf; j.x = a[0].x; j.T = a[0].T; j.K = a[0].w->cols;
    j.rows = gemma2__pack_rows(j.kind, j.T, j.K);
    j.per = GEMMA2__MAX(4 * unit, ((j.rows + 2 * nt - 1) / (2 * nt) + unit - 1) / unit * unit);
    if (nt <= 1 || j.rows <= j.per) { k->pack(buf, j.kind, j.x, j.T, j.K, 0, j.rows); return; }
    gemma2__pool_run(p, gemma2__pack_task, &j, (j.rows + j.per - 1) / j.per);
}

/* y[i] = x W[i]^T for the chunk's T tokens, for n <= 3 matrices of the same width that read
   the same x (q, k, v; gate, up): packed once, then one dispatch over the pool. */
static void gemma2__matmuls_part(gemma2_session *s, const float *x, int T, int lone, int n, const gemma2__mat *const *w, float *const *y, const int *ldy)
{
    gemma2__matmul_args a[GEMMA2__MM_MAX];
    int i;
    for (i = 0; i < n; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].y = y[i];
        a[i].ldy = ldy[i];
        a[i].x = x;
        a[i].T = T;
        a[i].w = w[i];
        a[i].lone = lone && T > 1;
    }
    gemma2__pack(s->pool, &s->m->kern, a, n, s->xp, s->m->opt.compute == GEMMA2_COMPUTE_BF16);
    gemma2__matmul_n(s->pool, &s->m->kern, a, n);
}

static void gemma2__matmuls(gemma2_session *s, const float *x, int T, int n, const gemma2__mat *const *w, float *const *y, const int *ldy)
{
    float *y2[GEMMA2__MM_MAX];
    int i, n_lone = s->seg ? s->n_lone : 0;
    if (!s->seg) { gemma2__matmuls_part(s, x, T, 0, n, w, y, ldy); return; }
    for (i = 0; i < n; i++) if (!s->m->kern.batch_lone[w[i]->format]) n_lone = 0;
    /* A batch. A session's results must not depend on which others share its pass. Where the
       kernel set computes several tokens each as if alone (batch_lone: the same bits as the
       one-token kernels, each weight read once for all), the one-token sessions' tokens, the
       first n_lone, go that way: then they equal gemma2_eval's. The other tokens take the
       several-token path, which never depends on the other tokens of the call; a lone token
       there gets a second row to make it several, whose output is discarded (the scratch has
       room for it; the rest of a pass with one-token sessions first holds two or more). */
    if (n_lone > 0) {
        gemma2__matmuls_part(s, x, n_lone, 1, n, w, y, ldy);
        if (T == n_lone) return;
        GEMMA2_ASSERT(T - n_lone >= 2);
        for (i = 0; i < n; i++) y2[i] = y[i] + (size_t)n_lone * (size_t)ldy[i];
        x += (size_t)n_lone * (size_t)w[0]->cols;
        y = y2;
        T -= n_lone;
    }
    gemma2__matmuls_part(s, x, T == 1 ? 2 : T, 0, n, w, y, ldy);
}

static void gemma2__matmul1(gemma2_session *s, float *y, int ldy, const float *x, int T, const gemma2__mat *w)
{
    gemma2__matmuls(s, x, T, 1, &w, &y, &ldy);
}

/* ---- the fast forward pass: attention ---- */

/* Attention of C queries (positions pos0..pos0+C-1) over the cache of one layer.

   Work items are (block of up to GEMMA2__ATT_QB tokens, kv head). The query heads that share
   a kv head, for all tokens of the block, are scored together: each cached key and value row
   is then read once per block rather than once per query head and token (grouped-query
   attention exists to save exactly this traffic; blocks of tokens save it again in prefill,
   where every token of a chunk reads the same keys). A block scores the union of its
   tokens' key ranges, in tiles of GEMMA2__ATT_KT keys that stay in L2 while all its queries
   pass over them; each query then keeps only its own range (causal, and the sliding window):
   the softmax runs over that range and the scores outside it become exact zeros, which add
   nothing in the weighted sum of values. A query's value sums run over its keys in the same
   order as when its token is alone (the extra terms are exact zeros); a score may take
   another of the kernel's paths (keys batched or single), so results agree to rounding.
   Measured on the 2B shape, 2 threads, same process, old and new alternating: a 512-token
   prompt +3%; tokens 3072-3584 of a long prompt 45 -> 57 tokens/s (+27%), where the
   per-token version re-read each kv head's 3-4 MB of keys and values for every token. */
#define GEMMA2__ATT_QB 16
#define GEMMA2__ATT_KT 128

typedef struct gemma2__att_job {
    gemma2_session *s;       /* the scratch (scores, packed queries) */
    const gemma2__seg *seg;  /* each session's tokens: their own cache and blocks */
    int layer, n_seg, n_blocks;
} gemma2__att_job;

/* The attention kernels over n cached rows of one kv head from slot s0 on (no wrap), for nq
   queries (rows of q and out, hd apart; scores rows lds apart): scores into sc, or weighted
   values added to out. A bf16 cache goes to the set's bf16 kernels (AVX-512: widened in
   registers), or else is widened GEMMA2__KV_BLK rows at a time into the task's scratch, which
   stays in L1 while the float32 kernel reads it. */
#define GEMMA2__KV_BLK 16

/* Rows of one task's scratch: the block, then padding as far as the set's attention kernels
   prefetch past the rows they read (att_prefetch_rows), so that those prefetches land in
   memory no other thread writes (a neighbour's scratch would bounce between the cores: when
   the AVX-512 kernels still read through the scratch, 2B decode at 8k positions with 2
   threads measured 4.0 tokens/s without the padding, 6.0 with it). */
static int gemma2__kvtmp_rows(const gemma2__kernels *k) { return GEMMA2__KV_BLK + k->att_prefetch_rows; }

static void gemma2__att_rows(gemma2_session *s, int layer, int kvh, int s0, int n, float *sc, int lds, const float *q, float *out, int nq,
                             float scale, float *tmp)
{
    const gemma2__kernels *kern = &s->m->kern;
    const int hd = s->m->cfg.head_dim;
    const size_t base = ((size_t)kvh * (size_t)s->slots[layer] + (size_t)s0) * (size_t)hd;
    int a;
    if (!s->kb) {
        if (q) kern->att_scores(kern, sc, lds, q, nq, hd, s->k[layer] + base, n, scale);
        else kern->att_values(kern, out, sc, lds, nq, hd, s->v[layer] + base, n);
        return;
    }
    if (kern->att_scores_bf16) {
        if (q) kern->att_scores_bf16(kern, sc, lds, q, nq, hd, s->kb[layer] + base, n, scale);
        else kern->att_values_bf16(kern, out, sc, lds, nq, hd, s->vb[layer] + base, n);
        return;
    }
    for (a = 0; a < n; a += GEMMA2__KV_BLK) {
        int nb = GEMMA2__MIN(GEMMA2__KV_BLK, n - a), e;
        const uint16_t *src = (q ? s->kb[layer] : s->vb[layer]) + base + (size_t)a * (size_t)hd;
        /* the block after this one, one prefetch per 64-byte line (as in the f32 kernels) */
        for (e = 0; e < GEMMA2__MIN(GEMMA2__KV_BLK, n - a - nb) * hd; e += 32) GEMMA2__PREFETCH(src + (size_t)nb * hd + e);
        kern->from_bf16(tmp, src, nb * hd);
        if (q) kern->att_scores(kern, sc + a, lds, q, nq, hd, tmp, nb, scale);
        else kern->att_values(kern, out, sc + a, lds, nq, hd, tmp, nb);
    }
}

/* The same over positions lo..lo+n-1: the ring (position p in slot p % slots) wraps at most
   once, and the rows go in tiles of `tile`. */
static void gemma2__att_keys(gemma2_session *s, int layer, int kvh, int lo, int n, int tile, float *sc, int lds, const float *q, float *out,
                             int nq, float scale, float *tmp)
{
    int slots = s->slots[layer], a = 0;
    while (a < n) {
        int s0 = (lo + a) % slots, m = GEMMA2__MIN(GEMMA2__MIN(n - a, slots - s0), tile);
        gemma2__att_rows(s, layer, kvh, s0, m, sc + a, lds, q, out, nq, scale, tmp);
        a += m;
    }
}

/* The segment that attention block b (counted over the whole pass) belongs to. */
static const gemma2__seg *gemma2__seg_of_block(const gemma2__seg *seg, int n_seg, int b)
{
    int e = 0;
    while (e + 1 < n_seg && b >= seg[e + 1].b0) e++;
    return &seg[e];
}

static void gemma2__att_task(void *ctx, int task, int n_tasks)
{
    const gemma2__att_job *j = (const gemma2__att_job *)ctx;
    gemma2_session *s = j->s;
    const gemma2_config *c = &s->m->cfg;
    const gemma2__kernels *kern = &s->m->kern;
    int nH = c->num_attention_heads, nKV = c->num_key_value_heads, hd = c->head_dim, qd = nH * hd;
    int group = nH / nKV, W = s->m->layers[j->layer].sliding ? c->sliding_window : 0;
    int nb = j->n_blocks, i, t, g;
    size_t per = (size_t)GEMMA2__ATT_QB * (size_t)group * (size_t)hd, gh = (size_t)group * (size_t)hd * sizeof(float);
    float *scores = s->scores + (size_t)task * GEMMA2__ATT_QB * (size_t)group * (size_t)s->n_ctx;
    float *qp = s->attq + (size_t)task * 2 * per, *op = qp + per;
    float *tmp = s->kvtmp ? s->kvtmp + (size_t)task * (size_t)gemma2__kvtmp_rows(kern) * (size_t)hd : NULL;
    /* scores are scaled by query_pre_attn_scalar^-1/2 (not head_dim^-1/2: they differ for 27B) */
    float scale = 1.0f / sqrtf(c->query_pre_attn_scalar), cap = c->attn_logit_softcapping;
    for (i = task; i < nb * nKV; i += n_tasks) {
        int b = i / nKV, kvh = i % nKV, h0 = kvh * group; /* query heads h0.. read kv head kvh = h / (nH/nKV) */
        const gemma2__seg *sg = gemma2__seg_of_block(j->seg, j->n_seg, b);
        gemma2_session *kv = sg->s; /* the session whose cache these tokens read */
        int pos0 = sg->pos0 - sg->t0; /* token t is at position pos0 + t */
        int t0 = sg->t0 + (b - sg->b0) * GEMMA2__ATT_QB, t1 = GEMMA2__MIN(t0 + GEMMA2__ATT_QB, sg->t0 + sg->C), nq = (t1 - t0) * group;
        /* keys: the union of the tokens' ranges [lo(p), p], lo(p) = p - W + 1 (>= 0) on sliding layers */
        int p1 = pos0 + t1 - 1, lo = W ? GEMMA2__MAX(0, pos0 + t0 - W + 1) : 0, n = p1 - lo + 1;
        int tile = t1 - t0 > 1 ? GEMMA2__ATT_KT : n;
        const float *q = s->q + (size_t)t0 * qd + (size_t)h0 * hd;
        float *out = s->att + (size_t)t0 * qd + (size_t)h0 * hd;
        if (t1 - t0 > 1) { /* the block's queries packed as rows [t][g] (one token's group is contiguous already) */
            for (t = t0; t < t1; t++) memcpy(qp + (size_t)(t - t0) * group * hd, s->q + (size_t)t * qd + (size_t)h0 * hd, gh);
            q = qp;
            out = op;
        }
        gemma2__att_keys(kv, j->layer, kvh, lo, n, tile, scores, n, q, NULL, nq, scale, tmp);
        for (t = t0; t < t1; t++) {
            int p = pos0 + t, a0 = (W ? GEMMA2__MAX(0, p - W + 1) : 0) - lo, a1 = p - lo + 1; /* this query's keys: [a0, a1) */
            for (g = 0; g < group; g++) {
                float *sc = scores + (size_t)((t - t0) * group + g) * (size_t)n;
                if (cap > 0) kern->softcap(sc + a0, a1 - a0, cap); /* softcap before the causal mask (keys past p are never scored) */
                kern->softmax(sc + a0, a1 - a0);
                memset(sc, 0, (size_t)a0 * sizeof(float));
                memset(sc + a1, 0, (size_t)(n - a1) * sizeof(float));
            }
        }
        memset(out, 0, (size_t)nq * hd * sizeof(float));
        gemma2__att_keys(kv, j->layer, kvh, lo, n, tile, scores, n, NULL, out, nq, scale, tmp);
        if (t1 - t0 > 1)
            for (t = t0; t < t1; t++) memcpy(s->att + (size_t)t * qd + (size_t)h0 * hd, op + (size_t)(t - t0) * group * hd, gh);
    }
}

/* ---- the fast forward pass: steps token by token ----
   Between the matrix products every step works on each token alone: for a chunk of tokens
   they are split over the pool (in prefill they would otherwise leave the other threads idle
   for ~2-3% of the time), for one token they run inline. */

typedef void (*gemma2__token_step)(gemma2_session *s, int layer, int pos0, int t);

typedef struct gemma2__step_job {
    gemma2_session *s;
    gemma2__token_step fn;
    int layer, pos0, C;
} gemma2__step_job;

static void gemma2__step_task(void *ctx, int task, int n_tasks)
{
    const gemma2__step_job *j = (const gemma2__step_job *)ctx;
    int t;
    for (t = task; t < j->C; t += n_tasks) j->fn(j->s, j->layer, j->pos0, t);
}

static void gemma2__each_token(gemma2_session *s, int layer, int pos0, int C, gemma2__token_step fn)
{
    gemma2__step_job j;
    if (C == 1 || gemma2__pool_size(s->pool) <= 1) {
        int t;
        for (t = 0; t < C; t++) fn(s, layer, pos0, t);
        return;
    }
    j.s = s; j.fn = fn; j.layer = layer; j.pos0 = pos0; j.C = C;
    gemma2__pool_run(s->pool, gemma2__step_task, &j, gemma2__pool_size(s->pool));
}

/* x = embed_tokens[id] * sqrt(H) (the sqrt(H) embedding scale; 2B: 48), the factor in float32 as
   the references compute it (not rounded to bf16 as Hugging Face does when it runs in bf16:
   sqrt(3072) would be 55.5). Shapes: ids [C] -> x [C][H]. */
static void gemma2__embed(gemma2_session *s, const int32_t *ids, int C)
{
    const gemma2_model *m = s->m;
    int H = m->cfg.hidden_size, t, i;
    float normalizer = (float)sqrt((double)H);
    for (t = 0; t < C; t++) {
        float *x = s->x + (size_t)t * H;
        gemma2__mat_row_float(&m->embed, ids[t], x);
        for (i = 0; i < H; i++) x[i] *= normalizer;
    }
}

/* cos and sin of each token's RoPE angles pos * theta^(-2i/hd), shared by all layers. */
static void gemma2__rope_angles(gemma2_session *s, int pos0, int C)
{
    int hd = s->m->cfg.head_dim, t, i, e;
    for (t = 0; t < C; t++) {
        float *cs = s->rope + (size_t)t * hd;
        int p = pos0 + t;
        /* in a batch, the position within its own session */
        for (e = 0; s->seg && e < s->n_seg; e++)
            if (t >= s->seg[e].t0 && t < s->seg[e].t0 + s->seg[e].C) p = s->seg[e].pos0 + t - s->seg[e].t0;
        for (i = 0; i < hd / 2; i++) {
            float ang = (float)p * s->inv_freq[i];
            cs[i] = (float)cos((double)ang);
            cs[hd / 2 + i] = (float)sin((double)ang);
        }
    }
}

/* xn = RMSNorm(x) (1 + input_layernorm): the attention block's input. */
static void gemma2__input_norm(gemma2_session *s, int l, int pos0, int t)
{
    int H = s->m->cfg.hidden_size;
    (void)pos0;
    s->m->kern.rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, s->m->layers[l].attn_norm, H, s->m->cfg.rms_norm_eps);
}

/* q, k, v = xn Wq^T, xn Wk^T, xn Wv^T: one pass over the three matrices (the reference's three
   gemma2__ref_matvec). 2B: [C][2304] -> q [C][2048], k and v [C][1024] (4 kv heads of 256). */
static void gemma2__qkv_proj(gemma2_session *s, int l, int C)
{
    const gemma2__layer *L = &s->m->layers[l];
    const gemma2__mat *w[3] = {&L->wq, &L->wk, &L->wv};
    float *y[3] = {s->q, s->kk, s->vv};
    int ld[3] = {L->wq.rows, L->wk.rows, L->wv.rows};
    gemma2__matmuls(s, s->xn, C, 3, w, y, ld);
}

/* Rotate q and k by the token's position (RoPE, rotate-half pairing), then store k and v in
   the layer's cache: slot pos % slots (a ring on sliding-window layers). The reference does the
   same with gemma2__rope_scalar and row pos of its cache. 2B: q [8][256], k and v [4][256]. */
static void gemma2__rope_and_cache(gemma2_session *s, int l, int pos0, int t)
{
    const gemma2_config *c = &s->m->cfg;
    const gemma2__kernels *kern = &s->m->kern;
    int hd = c->head_dim, nH = c->num_attention_heads, nKV = c->num_key_value_heads, qd = nH * hd, kvd = nKV * hd, h, p = pos0 + t, e;
    gemma2_session *kv = s; /* whose cache: in a batch, the token's own session's, at its position there */
    int slot;
    for (e = 0; s->seg && e < s->n_seg; e++)
        if (t >= s->seg[e].t0 && t < s->seg[e].t0 + s->seg[e].C) { kv = s->seg[e].s; p = s->seg[e].pos0 + t - s->seg[e].t0; }
    slot = p % kv->slots[l];
    kern->rope(s->q + (size_t)t * qd, nH, hd, s->rope + (size_t)t * hd);
    kern->rope(s->kk + (size_t)t * kvd, nKV, hd, s->rope + (size_t)t * hd);
    for (h = 0; h < nKV; h++) {
        size_t at = ((size_t)h * kv->slots[l] + (size_t)slot) * hd;
        if (kv->kb) {
            kern->to_bf16(kv->kb[l] + at, s->kk + (size_t)t * kvd + (size_t)h * hd, hd);
            kern->to_bf16(kv->vb[l] + at, s->vv + (size_t)t * kvd + (size_t)h * hd, hd);
        } else {
            memcpy(kv->k[l] + at, s->kk + (size_t)t * kvd + (size_t)h * hd, (size_t)hd * sizeof(float));
            memcpy(kv->v[l] + at, s->vv + (size_t)t * kvd + (size_t)h * hd, (size_t)hd * sizeof(float));
        }
    }
}

/* att = attention of the chunk's queries over the layer's cache (above): in the reference, the
   loop over heads h (scores, softcap, softmax, weighted values). 2B: att [C][8 * 256]. */
static void gemma2__attention(gemma2_session *s, int l, int pos0, int C)
{
    gemma2__att_job j;
    gemma2__seg one;
    j.s = s; j.layer = l;
    if (s->seg) { /* a batch: blocks never span two sessions */
        j.seg = s->seg; j.n_seg = s->n_seg;
        j.n_blocks = s->seg[s->n_seg - 1].b0 + (s->seg[s->n_seg - 1].C + GEMMA2__ATT_QB - 1) / GEMMA2__ATT_QB;
    } else {
        one.s = s; one.t0 = 0; one.C = C; one.pos0 = pos0; one.b0 = 0;
        j.seg = &one; j.n_seg = 1; j.n_blocks = (C + GEMMA2__ATT_QB - 1) / GEMMA2__ATT_QB;
    }
    gemma2__pool_run(s->pool, gemma2__att_task, &j, gemma2__pool_size(s->pool));
}

/* o = att Wo^T: the heads, concatenated, projected back to H. */
static void gemma2__o_proj(gemma2_session *s, int l, int C)
{
    gemma2__matmul1(s, s->o, s->m->cfg.hidden_size, s->att, C, &s->m->layers[l].wo);
}

/* x += RMSNorm(o) (1 + post_attention_layernorm): Gemma 2 norms a sublayer's output too,
   not only its input, before adding it to the residual stream. */
static void gemma2__post_attention_norm_residual(gemma2_session *s, int l, int pos0, int t)
{
    int H = s->m->cfg.hidden_size, i;
    float *x = s->x + (size_t)t * H, *o = s->o + (size_t)t * H;
    (void)pos0;
    s->m->kern.rmsnorm(o, o, s->m->layers[l].post_attn_norm, H, s->m->cfg.rms_norm_eps);
    for (i = 0; i < H; i++) x[i] += o[i];
}

/* xn = RMSNorm(x) (1 + pre_feedforward_layernorm): the feed-forward block's input. */
static void gemma2__pre_feedforward_norm(gemma2_session *s, int l, int pos0, int t)
{
    int H = s->m->cfg.hidden_size;
    (void)pos0;
    s->m->kern.rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, s->m->layers[l].pre_ffw_norm, H, s->m->cfg.rms_norm_eps);
}

/* g, u = xn Wgate^T, xn Wup^T: one pass over both matrices. 2B: [C][2304] -> [C][9216] each. */
static void gemma2__gate_up_proj(gemma2_session *s, int l, int C)
{
    const gemma2__layer *L = &s->m->layers[l];
    const gemma2__mat *w[2] = {&L->wgate, &L->wup};
    float *y[2] = {s->g, s->u};
    int ld[2] = {L->wgate.rows, L->wup.rows};
    gemma2__matmuls(s, s->xn, C, 2, w, y, ld);
}

/* g = gelu_tanh(g) * u: the gated feed-forward (GeGLU, GELU-tanh gating): the gate decides, per
   one of the I = 9216 features, how much of the up projection passes. */
static void gemma2__gelu_gate(gemma2_session *s, int l, int pos0, int t)
{
    int I = s->m->cfg.intermediate_size;
    (void)l; (void)pos0;
    s->m->kern.gelu_mul(s->g + (size_t)t * I, s->u + (size_t)t * I, I);
}

/* o = g Wdown^T: back from I to H (2B: 9216 -> 2304). */
static void gemma2__down_proj(gemma2_session *s, int l, int C)
{
    gemma2__matmul1(s, s->o, s->m->cfg.hidden_size, s->g, C, &s->m->layers[l].wdown);
}

/* x += RMSNorm(o) (1 + post_feedforward_layernorm). */
static void gemma2__post_feedforward_norm_residual(gemma2_session *s, int l, int pos0, int t)
{
    int H = s->m->cfg.hidden_size, i;
    float *x = s->x + (size_t)t * H, *o = s->o + (size_t)t * H;
    (void)pos0;
    s->m->kern.rmsnorm(o, o, s->m->layers[l].post_ffw_norm, H, s->m->cfg.rms_norm_eps);
    for (i = 0; i < H; i++) x[i] += o[i];
}

/* ---- tracing (gemma2_session_set_trace_ex) ----
   Called between steps, on the calling thread, only when a callback is set: a pass without
   one pays a NULL check per step. */

static void gemma2__trace_emit(gemma2_session *s, gemma2_trace_event *ev, gemma2_trace_kind kind, int layer, int pos0, int C)
{
    ev->kind = kind;
    ev->layer = layer;
    ev->pos0 = pos0;
    ev->n = C;
    s->trace_ex(s->trace_ex_user, ev);
}

static void gemma2__trace_step(gemma2_session *s, gemma2_trace_kind kind, const char *name, gemma2_trace_op op, int layer, int pos0, int C)
{
    gemma2_trace_event ev;
    if (!(s->trace_what & GEMMA2_TRACE_STEPS)) return;
    memset(&ev, 0, sizeof ev);
    ev.step = name;
    ev.op = op;
    gemma2__trace_emit(s, &ev, kind, layer, pos0, C);
}

static void gemma2__trace_residual(gemma2_session *s, int layer, int pos0, int C)
{
    gemma2_trace_event ev;
    if (!(s->trace_what & GEMMA2_TRACE_RESIDUAL)) return;
    memset(&ev, 0, sizeof ev);
    ev.x = s->x;
    gemma2__trace_emit(s, &ev, GEMMA2_TRACE_EV_RESIDUAL, layer, pos0, C);
}

/* Each query head's attention probabilities, recomputed from the (RoPE'd) queries still in
   s->q and the layer's cache with the same kernels as gemma2__att_task, one head and token at
   a time into the first row of the scores scratch (free once the attention step is done). */
static void gemma2__trace_attention(gemma2_session *s, int l, int pos0, int C)
{
    const gemma2_config *c = &s->m->cfg;
    const gemma2__kernels *kern = &s->m->kern;
    int nH = c->num_attention_heads, hd = c->head_dim, group = nH / c->num_key_value_heads, t, h;
    int W = s->m->layers[l].sliding ? c->sliding_window : 0;
    float scale = 1.0f / sqrtf(c->query_pre_attn_scalar), cap = c->attn_logit_softcapping, *sc = s->scores;
    gemma2_trace_event ev;
    if (!(s->trace_what & GEMMA2_TRACE_ATTENTION)) return;
    memset(&ev, 0, sizeof ev);
    for (t = 0; t < C; t++) {
        int p = pos0 + t, lo = W ? GEMMA2__MAX(0, p - W + 1) : 0, n = p - lo + 1;
        for (h = 0; h < nH; h++) {
            gemma2__att_keys(s, l, h / group, lo, n, n, sc, n, s->q + ((size_t)t * nH + (size_t)h) * hd, NULL, 1, scale, s->kvtmp);
            if (cap > 0) kern->softcap(sc, n, cap);
            kern->softmax(sc, n);
            ev.pos = p; ev.head = h; ev.key0 = lo; ev.n_keys = n; ev.weights = sc;
            gemma2__trace_emit(s, &ev, GEMMA2_TRACE_EV_ATTENTION, l, pos0, C);
        }
    }
}

/* A step of the pass between its trace events (when a trace is set). */
#define GEMMA2__STEP(s, name, op, l, pos0, C, call)                                                    \
    do {                                                                                             \
        if ((s)->trace_ex) gemma2__trace_step(s, GEMMA2_TRACE_EV_STEP_BEGIN, name, op, l, pos0, C);  \
        call;                                                                                        \
        if ((s)->trace_ex) gemma2__trace_step(s, GEMMA2_TRACE_EV_STEP_END, name, op, l, pos0, C);    \
    } while (0)
#define GEMMA2__MM GEMMA2_TRACE_OP_MATMUL
#define GEMMA2__ATT GEMMA2_TRACE_OP_ATTENTION
#define GEMMA2__OTHER GEMMA2_TRACE_OP_OTHER

/* One decoder layer for the chunk's C tokens at positions pos0.. */
static void gemma2__layer_forward(gemma2_session *s, int l, int pos0, int C)
{
    /* attention block */
    GEMMA2__STEP(s, "input_norm", GEMMA2__OTHER, l, pos0, C, gemma2__each_token(s, l, pos0, C, gemma2__input_norm));
    GEMMA2__STEP(s, "qkv_proj", GEMMA2__MM, l, pos0, C, gemma2__qkv_proj(s, l, C));
    GEMMA2__STEP(s, "rope_and_cache", GEMMA2__OTHER, l, pos0, C, gemma2__each_token(s, l, pos0, C, gemma2__rope_and_cache));
    GEMMA2__STEP(s, "attention", GEMMA2__ATT, l, pos0, C, gemma2__attention(s, l, pos0, C));
    if (s->trace_ex) gemma2__trace_attention(s, l, pos0, C);
    GEMMA2__STEP(s, "o_proj", GEMMA2__MM, l, pos0, C, gemma2__o_proj(s, l, C));
    GEMMA2__STEP(s, "post_attention_norm_residual", GEMMA2__OTHER, l, pos0, C,
                 gemma2__each_token(s, l, pos0, C, gemma2__post_attention_norm_residual));
    /* feed-forward block */
    GEMMA2__STEP(s, "pre_feedforward_norm", GEMMA2__OTHER, l, pos0, C, gemma2__each_token(s, l, pos0, C, gemma2__pre_feedforward_norm));
    GEMMA2__STEP(s, "gate_up_proj", GEMMA2__MM, l, pos0, C, gemma2__gate_up_proj(s, l, C));
    GEMMA2__STEP(s, "gelu_gate", GEMMA2__OTHER, l, pos0, C, gemma2__each_token(s, l, pos0, C, gemma2__gelu_gate));
    GEMMA2__STEP(s, "down_proj", GEMMA2__MM, l, pos0, C, gemma2__down_proj(s, l, C));
    GEMMA2__STEP(s, "post_feedforward_norm_residual", GEMMA2__OTHER, l, pos0, C,
                 gemma2__each_token(s, l, pos0, C, gemma2__post_feedforward_norm_residual));
}

/* logits = softcap(RMSNorm(x) (1 + norm) embed_tokens^T) for n tokens from token `first` on:
   the output projection is the embedding matrix itself (tied embeddings, 2B: [256000, 2304], 1.2 GB
   of bf16 read per decode step for this product alone), then the final logit softcap, 30 tanh(l / 30). */
static void gemma2__output_logits(gemma2_session *s, int first, int n, float *logits)
{
    const gemma2_model *m = s->m;
    int H = m->cfg.hidden_size, V = m->cfg.vocab_size, t;
    float cap = m->cfg.final_logit_softcapping;
    for (t = 0; t < n; t++) m->kern.rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)(first + t) * H, m->final_norm, H, m->cfg.rms_norm_eps);
    gemma2__matmul1(s, logits, V, s->xn, n, &m->embed);
    if (cap > 0)
        for (t = 0; t < n; t++) m->kern.softcap(logits + (size_t)t * V, V, cap);
}

/* The model, for C tokens at positions pos0..pos0+C-1. Writes the logits of the tokens
   t >= first_logit into logits[(t - first_logit) * V] (none if first_logit >= C). */
static void gemma2__forward(gemma2_session *s, const int32_t *ids, int C, int pos0, float *logits, int first_logit)
{
    int l;
    GEMMA2_ASSERT(C >= 1 && C <= GEMMA2__CHUNK && pos0 + C <= s->n_ctx); /* the scratch holds one chunk */
    GEMMA2__STEP(s, "embed", GEMMA2__OTHER, -1, pos0, C, gemma2__embed(s, ids, C));
    if (s->trace) s->trace(s->trace_user, 0, pos0, C, s->x);
    if (s->trace_ex) gemma2__trace_residual(s, 0, pos0, C);
    GEMMA2__STEP(s, "rope_angles", GEMMA2__OTHER, -1, pos0, C, gemma2__rope_angles(s, pos0, C));
    for (l = 0; l < s->m->cfg.num_hidden_layers; l++) {
        gemma2__layer_forward(s, l, pos0, C);
        if (s->trace) s->trace(s->trace_user, l + 1, pos0, C, s->x);
        if (s->trace_ex) gemma2__trace_residual(s, l + 1, pos0, C);
    }
    if (first_logit < C)
        GEMMA2__STEP(s, "output_logits", GEMMA2__MM, -1, pos0, C, gemma2__output_logits(s, first_logit, C - first_logit, logits));
}

/* The logit lens (1.3): gemma2__output_logits for rows the caller holds, on the calling
   thread (pool NULL), with its own scratch so that it may run inside a trace callback. */
GEMMA2_DEF int gemma2_logit_lens(const gemma2_model *m, const float *x, int n, float *logits)
{
    gemma2__matmul_args a;
    float *xn;
    void *xp;
    int H, V, t;
    if (!m || !x || !logits || n < 0) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (!m->has_weights) return GEMMA2_ERROR_NO_WEIGHTS;
    H = m->cfg.hidden_size;
    V = m->cfg.vocab_size;
    xn = (float *)gemma2__calloc((size_t)H, sizeof(float));
    xp = gemma2__calloc(gemma2__pack_bytes_max(1, H), 1);
    if (!xn || !xp) { GEMMA2_FREE(xn); GEMMA2_FREE(xp); return GEMMA2_ERROR_OUT_OF_MEMORY; }
    for (t = 0; t < n; t++) {
        float *y = logits + (size_t)t * V;
        m->kern.rmsnorm(xn, x + (size_t)t * H, m->final_norm, H, m->cfg.rms_norm_eps);
        memset(&a, 0, sizeof a);
        a.y = y; a.ldy = V; a.x = xn; a.T = 1; a.w = &m->embed;
        gemma2__pack(NULL, &m->kern, &a, 1, xp, m->opt.compute == GEMMA2_COMPUTE_BF16);
        gemma2__matmul_n(NULL, &m->kern, &a, 1);
        if (m->cfg.final_logit_softcapping > 0) m->kern.softcap(y, V, m->cfg.final_logit_softcapping);
    }
    GEMMA2_FREE(xn);
    GEMMA2_FREE(xp);
    return 0;
}

/* The model for a batch's pass (section 2.6): C tokens of the sessions in sc->seg, each at its
   own positions and reading its own cache, through one scratch, so each matrix is read once for
   all of them (the first sc->n_lone tokens one-token sessions'). Writes the logits of the
   tokens rows[0..n_rows) (increasing) into out[j * V]. */
static void gemma2__forward_batch(gemma2_session *sc, const int32_t *ids, int C, const int *rows, int n_rows, int n_lone_rows, float *out)
{
    int H = sc->m->cfg.hidden_size, l, j;
    gemma2__embed(sc, ids, C);
    gemma2__rope_angles(sc, 0, C);
    for (l = 0; l < sc->m->cfg.num_hidden_layers; l++) gemma2__layer_forward(sc, l, 0, C);
    /* the rows asked for, moved to the front (rows[j] >= j, so none is overwritten before it moves) */
    for (j = 0; j < n_rows; j++)
        if (rows[j] != j) memcpy(sc->x + (size_t)j * H, sc->x + (size_t)rows[j] * H, (size_t)H * sizeof(float));
    /* the first n_lone_rows are the one row of a session, as gemma2_eval's output projection
       computes it for the last token alone */
    sc->n_lone = n_lone_rows;
    if (n_rows > 0) gemma2__output_logits(sc, 0, n_rows, out);
}

/* ===========================================================================
   2.6  Sessions
   =========================================================================== */

GEMMA2_DEF void gemma2_session_free(gemma2_session *s)
{
    int l;
    if (!s) return;
    /* Reads nothing of the model (which may already be freed), and copes with any allocation
       of a half-built session missing. */
    for (l = 0; l < s->n_layers; l++) {
        if (s->k) GEMMA2_FREE(s->k[l]);
        if (s->v) GEMMA2_FREE(s->v[l]);
        if (s->kb) GEMMA2_FREE(s->kb[l]);
        if (s->vb) GEMMA2_FREE(s->vb[l]);
    }
    GEMMA2_FREE(s->k); GEMMA2_FREE(s->v); GEMMA2_FREE(s->kb); GEMMA2_FREE(s->vb); GEMMA2_FREE(s->kvtmp); GEMMA2_FREE(s->slots);
    GEMMA2_FREE(s->tokens);
    GEMMA2_FREE(s->x); GEMMA2_FREE(s->xn); GEMMA2_FREE(s->q); GEMMA2_FREE(s->kk); GEMMA2_FREE(s->vv);
    GEMMA2_FREE(s->att); GEMMA2_FREE(s->o); GEMMA2_FREE(s->g); GEMMA2_FREE(s->u);
    GEMMA2_FREE(s->rope); GEMMA2_FREE(s->inv_freq); GEMMA2_FREE(s->scores); GEMMA2_FREE(s->attq); GEMMA2_FREE(s->xp);
    GEMMA2_FREE(s->logits);
    if (s->pool) gemma2__pool_free(s->pool);
    GEMMA2_FREE(s);
}

/* Positions a layer's KV cache holds: every one on global layers, a ring on sliding-window
   layers (see struct gemma2_session). */
static int gemma2__session_slots(const gemma2_model *m, int l, int n_ctx, int chunk)
{
    const gemma2_config *c = &m->cfg;
    if (m->layers[l].sliding && (int64_t)c->sliding_window + chunk - 1 < n_ctx) return c->sliding_window + chunk - 1;
    return n_ctx;
}

/* The bytes of a session's buffers that grow with n_ctx (KV cache, tokens, attention scores),
   or 0 if that overflows: checked before anything is allocated, so that an impossible
   context fails at once rather than after gigabytes have been committed. */
static uint64_t gemma2__session_bytes(const gemma2_model *m, int n_ctx, int chunk, int nt)
{
    const gemma2_config *c = &m->cfg;
    uint64_t kvd = (uint64_t)c->num_key_value_heads * (uint64_t)c->head_dim, elt = m->opt.kv_cache == GEMMA2_KV_BF16 ? 2 : 4;
    uint64_t total = (uint64_t)n_ctx * sizeof(int32_t), t;
    int l;
    for (l = 0; l < c->num_hidden_layers; l++) {
        if (!gemma2__mul_ok((uint64_t)gemma2__session_slots(m, l, n_ctx, chunk), kvd * elt * 2, &t) || t > UINT64_MAX - total) return 0;
        total += t;
    }
    if (!gemma2__mul_ok((uint64_t)nt * GEMMA2__ATT_QB * (uint64_t)(c->num_attention_heads / c->num_key_value_heads) * sizeof(float),
                        (uint64_t)n_ctx, &t) || t > UINT64_MAX - total)
        return 0;
    return total + t;
}

/* A session of n_ctx positions evaluating `chunk` tokens at a time, with scratch for `rows`
   tokens and nt threads; kv 0 makes a batch's scratch instead: no KV cache (its sessions have
   theirs; n_layers 0, so nothing reads or frees one), attention scores for n_ctx positions. */
static gemma2_session *gemma2__session_alloc(const gemma2_model *m, int n_ctx, int chunk, int rows, int nt, int kv)
{
    gemma2_session *s;
    const gemma2_config *c;
    size_t C = (size_t)rows, H, I, qd, kvd, widest;
    uint64_t bytes;
    int l, i;
    if (!m || !m->has_weights || n_ctx < 0) return NULL;
    c = &m->cfg;
    if (n_ctx == 0) n_ctx = c->max_position_embeddings;
    H = (size_t)c->hidden_size; I = (size_t)c->intermediate_size;
    qd = (size_t)c->num_attention_heads * (size_t)c->head_dim;
    kvd = (size_t)c->num_key_value_heads * (size_t)c->head_dim;
    widest = GEMMA2__MAX(GEMMA2__MAX(H, I), qd);
    bytes = gemma2__session_bytes(m, n_ctx, chunk, nt);
    if (bytes == 0 || bytes > (uint64_t)((size_t)-1 / 2)) return NULL;
    s = (gemma2_session *)gemma2__calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->n_layers = kv ? c->num_hidden_layers : 0;
    s->n_ctx = n_ctx;
    s->chunk = chunk;
    s->pool = gemma2__pool_new(nt);
    /* Neither tokens nor scores is zeroed: only positions below pos are read, and every score
       a query uses is computed first. */
    s->tokens = (int32_t *)gemma2__malloc_n((size_t)n_ctx, sizeof(int32_t));
    s->k = (float **)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(float *));
    s->v = (float **)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(float *));
    s->slots = (int *)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(int));
    if (m->opt.kv_cache == GEMMA2_KV_BF16) {
        s->kb = (uint16_t **)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(uint16_t *));
        s->vb = (uint16_t **)gemma2__calloc((size_t)c->num_hidden_layers, sizeof(uint16_t *));
        if (!m->kern.att_scores_bf16) /* scratch only for sets that widen through it */
            s->kvtmp = (float *)gemma2__calloc((size_t)nt * (size_t)gemma2__kvtmp_rows(&m->kern) * (size_t)c->head_dim, sizeof(float));
        if (!s->kb || !s->vb || (!m->kern.att_scores_bf16 && !s->kvtmp)) { gemma2_session_free(s); return NULL; }
    }
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
    s->scores = (float *)gemma2__malloc_n((size_t)nt * GEMMA2__ATT_QB * (size_t)(c->num_attention_heads / c->num_key_value_heads) * (size_t)n_ctx,
                                          sizeof(float));
    s->attq = (float *)gemma2__calloc((size_t)nt * 2 * GEMMA2__ATT_QB * (size_t)(c->num_attention_heads / c->num_key_value_heads) * (size_t)c->head_dim,
                                      sizeof(float));
    s->xp = gemma2__calloc(gemma2__pack_bytes_max((int)C, (int)widest), 1);
    s->logits = (float *)gemma2__calloc((size_t)c->vocab_size, sizeof(float));
    if (!s->pool || !s->tokens || !s->k || !s->v || !s->slots || !s->x || !s->xn || !s->q || !s->kk || !s->vv || !s->att ||
        !s->o || !s->g || !s->u || !s->rope || !s->inv_freq || !s->scores || !s->attq || !s->xp || !s->logits) {
        gemma2_session_free(s);
        return NULL;
    }
    for (l = 0; kv && l < c->num_hidden_layers; l++) {
        int slots = gemma2__session_slots(m, l, n_ctx, chunk);
        s->slots[l] = slots;
        /* Not zeroed: a slot is always written before it is read, and untouched pages of a
           large cache cost no RSS until the sequence grows into them. */
        if (s->kb) {
            s->kb[l] = (uint16_t *)gemma2__malloc_n((size_t)slots * kvd, sizeof(uint16_t));
            s->vb[l] = (uint16_t *)gemma2__malloc_n((size_t)slots * kvd, sizeof(uint16_t));
            if (!s->kb[l] || !s->vb[l]) { gemma2_session_free(s); return NULL; }
        } else {
            s->k[l] = (float *)gemma2__malloc_n((size_t)slots * kvd, sizeof(float));
            s->v[l] = (float *)gemma2__malloc_n((size_t)slots * kvd, sizeof(float));
            if (!s->k[l] || !s->v[l]) { gemma2_session_free(s); return NULL; }
        }
    }
    /* inv_freq in float32, as both references build it */
    for (i = 0; i < c->head_dim / 2; i++) s->inv_freq[i] = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->head_dim));
    return s;
}

static gemma2_session *gemma2__session_new(const gemma2_model *m, int n_ctx, int chunk)
{
    if (!m) return NULL;
    return gemma2__session_alloc(m, n_ctx, chunk, GEMMA2__CHUNK, m->opt.n_threads < 1 ? 1 : m->opt.n_threads, 1);
}

GEMMA2_DEF gemma2_session *gemma2_session_new_ex(const gemma2_model *m, int n_ctx, int *rc)
{
    gemma2_session *s = NULL;
    int r = 0;
    /* Arguments are told apart here, so that a NULL from gemma2__session_new after them can only
       mean resources (memory, threads, or an n_ctx whose cache no size_t can hold). */
    if (!m || n_ctx < 0) r = GEMMA2_ERROR_INVALID_ARGUMENT;
    else if (!m->has_weights) r = GEMMA2_ERROR_NO_WEIGHTS;
    /* past the positions the model was trained for (RoPE angles it has never seen) */
    else if (n_ctx > m->cfg.max_position_embeddings) r = GEMMA2_ERROR_UNSUPPORTED;
    else if (!(s = gemma2__session_new(m, n_ctx, GEMMA2__CHUNK))) r = GEMMA2_ERROR_OUT_OF_MEMORY;
    if (rc) *rc = r;
    return s;
}

GEMMA2_DEF gemma2_session *gemma2_session_new(const gemma2_model *m, int n_ctx) { return gemma2_session_new_ex(m, n_ctx, NULL); }

/* Nonzero if one of x[0..n) is NaN or infinite: all exponent bits set, the one case where
   adding 1 to the exponent field carries into the sign bit. Integer ORs in 8 independent
   chains, which compilers vectorize. */
static int gemma2__any_nonfinite(const float *x, size_t n)
{
    uint32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, u, all = 0;
    size_t i = 0;
    int k;
    for (; i + 8 <= n; i += 8)
        for (k = 0; k < 8; k++) {
            memcpy(&u, x + i + (size_t)k, 4);
            acc[k] |= (u & 0x7f800000u) + 0x00800000u;
        }
    for (; i < n; i++) {
        memcpy(&u, x + i, 4);
        all |= (u & 0x7f800000u) + 0x00800000u;
    }
    for (k = 0; k < 8; k++) all |= acc[k];
    return (all >> 31) != 0;
}

/* Takes back the tokens from pos0 on after their logits came out non-finite, so that the
   failed call leaves the session as the other failures do: a rewind, which also rebuilds
   sliding rings the call overwrote. The rewind evaluates again tokens that gave finite logits
   before; if that fails anyway (it cannot undo in turn), the session is emptied. */
static void gemma2__eval_undo(gemma2_session *s, int pos0)
{
    int rc;
    s->undoing = 1;
    rc = gemma2_session_rewind(s, pos0);
    s->undoing = 0;
    if (rc != 0) {
        s->pos = 0;
        s->hi = 0;
        s->has_logits = 0;
    }
}

GEMMA2_DEF int gemma2_eval(gemma2_session *s, const int32_t *ids, int n, float *logits)
{
    int i, done = 0, V, pos0;
    if (!s || (!ids && n > 0) || n < 0) return GEMMA2_ERROR_INVALID_ARGUMENT;
    V = s->m->cfg.vocab_size;
    /* Everything is checked before anything changes, so a failed call leaves the session as it was. */
    for (i = 0; i < n; i++) if (ids[i] < 0 || ids[i] >= V) return GEMMA2_ERROR_BAD_TOKEN;
    if (n > s->n_ctx - s->pos) return GEMMA2_ERROR_CONTEXT_FULL;
    if (n == 0) return 0;
    pos0 = s->pos;
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
    /* Every kernel set lets a NaN or infinity reach the logits (they propagate as in the scalar
       code), so this one check catches a broken model wherever it went wrong. */
    if (gemma2__any_nonfinite(logits ? logits : s->logits, (size_t)(logits ? n : 1) * (size_t)V)) {
        if (!s->undoing) gemma2__eval_undo(s, pos0);
        return GEMMA2_ERROR_NUMERIC;
    }
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

GEMMA2_DEF void gemma2_session_set_trace_ex(gemma2_session *s, gemma2_trace_ex_fn fn, void *user, unsigned what)
{
    if (!s) return;
    s->trace_ex = what ? fn : NULL;
    s->trace_ex_user = user;
    s->trace_what = fn ? what : 0;
}

GEMMA2_DEF int gemma2_session_rewind(gemma2_session *s, int pos)
{
    const gemma2_config *c;
    int l, ring = 0;
    if (!s || pos < 0 || pos > s->pos) return GEMMA2_ERROR_INVALID_ARGUMENT;
    c = &s->m->cfg;
    for (l = 0; l < c->num_hidden_layers; l++) if (s->slots[l] < s->n_ctx) ring = s->slots[l];
    s->has_logits = 0;
    /* A sliding ring holds positions hi - slots .. pos - 1 intact (a position below hi that is
       evaluated again only overwrites its own slot). The cheap path below evaluates token
       pos - 1 again, which needs the keys from pos - W on (one more than the next token needs);
       if any of those were overwritten, rebuild the cache from the start. */
    if (ring && GEMMA2__MAX(0, s->hi - ring) > GEMMA2__MAX(0, pos - c->sliding_window)) {
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

/* ---- saved sessions (the format: section 1.3) ---------------------------------------------- */

#define GEMMA2__SESS_VERSION 1
#define GEMMA2__SESS_HASH0 0xcbf29ce484222325ull

/* The checksum's step on one 8-byte word: FNV's multiply, with a shift that lets the high bits
   reach the low ones (plain FNV on words would leave a flip in a word's top byte to the top
   byte). One multiply per 8 bytes: hashing a 2B session's 400 MB costs ~0.1 s. */
static uint64_t gemma2__sess_mix(uint64_t h, uint64_t w)
{
    h = (h ^ w) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t gemma2__sess_word(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 |
           (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

/* The checksum of p[0..n) in one pass (the writer below computes the same incrementally). */
static uint64_t gemma2__sess_hash(const uint8_t *p, size_t n)
{
    uint64_t h = GEMMA2__SESS_HASH0;
    uint8_t last[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i;
    for (i = 0; i + 8 <= n; i += 8) h = gemma2__sess_mix(h, gemma2__sess_word(p + i));
    if (i < n) { memcpy(last, p + i, n - i); h = gemma2__sess_mix(h, gemma2__sess_word(last)); }
    return gemma2__sess_mix(h, (uint64_t)n);
}

/* The model fingerprint's weight hash: the first and last 4 KiB of a few tensors as held. */
static uint64_t gemma2__sess_weights_hash(const gemma2_model *m)
{
    const gemma2_config *c = &m->cfg;
    const gemma2__mat *mats[3];
    const uint8_t *p[4];
    size_t n[4], k, a;
    uint64_t h = GEMMA2__SESS_HASH0;
    mats[0] = &m->embed;
    mats[1] = &m->layers[0].wq;
    mats[2] = &m->layers[c->num_hidden_layers - 1].wdown;
    for (k = 0; k < 3; k++) {
        p[k] = (const uint8_t *)mats[k]->data;
        n[k] = (size_t)mats[k]->rows * gemma2__row_bytes(mats[k]->format, mats[k]->cols);
    }
    p[3] = (const uint8_t *)m->final_norm;
    n[3] = (size_t)c->hidden_size * sizeof(float);
    for (k = 0; k < 4; k++) {
        a = GEMMA2__MIN(n[k], (size_t)4096);
        h ^= gemma2__sess_hash(p[k], a) + k;
        h = gemma2__sess_mix(h, gemma2__sess_hash(p[k] + n[k] - a, a));
    }
    return h;
}

/* Value i of the fingerprint in file order (config integers, float bits, the matrix count, then
   per matrix format, rows, cols), one at a time: neither saving nor loading allocates for it. */
static int gemma2__sess_fp_count(const gemma2_model *m) { return 15 + 3 * (1 + 7 * m->cfg.num_hidden_layers); }

static uint32_t gemma2__sess_fp(const gemma2_model *m, int i)
{
    const gemma2_config *c = &m->cfg;
    const gemma2__mat *w;
    uint32_t u;
    float f;
    int t;
    switch (i) {
    case 0: return (uint32_t)c->vocab_size;
    case 1: return (uint32_t)c->hidden_size;
    case 2: return (uint32_t)c->intermediate_size;
    case 3: return (uint32_t)c->num_hidden_layers;
    case 4: return (uint32_t)c->num_attention_heads;
    case 5: return (uint32_t)c->num_key_value_heads;
    case 6: return (uint32_t)c->head_dim;
    case 7: return (uint32_t)c->max_position_embeddings;
    case 8: return (uint32_t)c->sliding_window;
    case 14: return (uint32_t)(1 + 7 * c->num_hidden_layers);
    default: break;
    }
    if (i < 14) {
        f = i == 9 ? c->query_pre_attn_scalar : i == 10 ? c->attn_logit_softcapping : i == 11 ? c->final_logit_softcapping :
            i == 12 ? c->rms_norm_eps : c->rope_theta;
        memcpy(&u, &f, 4);
        return u;
    }
    t = (i - 15) / 3;
    if (t == 0) w = &m->embed;
    else {
        const gemma2__layer *ly = &m->layers[(t - 1) / 7];
        const gemma2__mat *mm[7];
        mm[0] = &ly->wq; mm[1] = &ly->wk; mm[2] = &ly->wv; mm[3] = &ly->wo; mm[4] = &ly->wgate; mm[5] = &ly->wup; mm[6] = &ly->wdown;
        w = mm[(t - 1) % 7];
    }
    return (uint32_t)((i - 15) % 3 == 0 ? w->format : (i - 15) % 3 == 1 ? w->rows : w->cols);
}

/* Names a fingerprint value by its index, for "another model: <name> is X in the file, Y here". */
static void gemma2__sess_fp_name(int i, char *buf, size_t cap)
{
    static const char *const cfg[15] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window",
                                        "query_pre_attn_scalar (bits)", "attn_logit_softcapping (bits)", "final_logit_softcapping (bits)",
                                        "rms_norm_eps (bits)", "rope_theta (bits)", "number of weight matrices"};
    static const char *const mat[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    static const char *const what[3] = {"format", "rows", "cols"};
    int t;
    if (i < 15) { snprintf(buf, cap, "%s", cfg[i]); return; }
    t = (i - 15) / 3;
    if (t == 0) snprintf(buf, cap, "embed_tokens %s", what[(i - 15) % 3]);
    else snprintf(buf, cap, "layer %d %s %s", (t - 1) / 7, mat[(t - 1) % 7], what[(i - 15) % 3]);
}

/* The first position a layer's part of a saved session holds: 0 on global layers; on sliding
   ones the oldest position the ring still holds intact (see gemma2_session_rewind). */
static int gemma2__sess_first(const gemma2_session *s, int l)
{
    if (s->slots[l] >= s->n_ctx) return 0;
    return GEMMA2__MIN(s->pos, GEMMA2__MAX(0, s->hi - s->slots[l]));
}

/* Where a save goes: a buffer (bytes past cap are only counted), a FILE, or nowhere (sizing);
   the checksum is taken on the way. */
typedef struct gemma2__sess_out {
    uint8_t *buf;
    size_t cap, n;
    FILE *fp;
    int failed;      /* a write to fp failed */
    uint64_t h;
    uint8_t pend[8]; /* bytes of a checksum word not complete yet */
    int np;
} gemma2__sess_out;

static void gemma2__sess_put(gemma2__sess_out *o, const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    size_t i = 0;
    if (o->buf && o->n < o->cap) memcpy(o->buf + o->n, p, GEMMA2__MIN(len, o->cap - o->n));
    if (o->fp && !o->failed && len > 0 && fwrite(p, 1, len, o->fp) != len) o->failed = 1;
    o->n += len;
    while (o->np > 0 && o->np < 8 && i < len) o->pend[o->np++] = p[i++];
    if (o->np == 8) { o->h = gemma2__sess_mix(o->h, gemma2__sess_word(o->pend)); o->np = 0; }
    for (; i + 8 <= len; i += 8) o->h = gemma2__sess_mix(o->h, gemma2__sess_word(p + i));
    while (i < len) o->pend[o->np++] = p[i++];
}

static void gemma2__sess_put_u32(gemma2__sess_out *o, uint32_t v)
{
    uint8_t b[4];
    b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); b[2] = (uint8_t)(v >> 16); b[3] = (uint8_t)(v >> 24);
    gemma2__sess_put(o, b, 4);
}

static void gemma2__sess_put_u64(gemma2__sess_out *o, uint64_t v)
{
    gemma2__sess_put_u32(o, (uint32_t)v);
    gemma2__sess_put_u32(o, (uint32_t)(v >> 32));
}

/* The whole saved session into o. Arrays go out as they are in memory: the library already
   takes the host to be little-endian (safetensors are used in place). */
static void gemma2__sess_write(const gemma2_session *s, gemma2__sess_out *o)
{
    const gemma2_model *m = s->m;
    const gemma2_config *c = &m->cfg;
    const int nkv = c->num_key_value_heads, hd = c->head_dim;
    const size_t elt = s->kb ? 2 : 4;
    uint64_t h;
    int i, l, kv, hh, p;
    o->h = GEMMA2__SESS_HASH0;
    gemma2__sess_put(o, "GEM2SESS", 8);
    gemma2__sess_put_u32(o, GEMMA2__SESS_VERSION);
    gemma2__sess_put_u32(o, s->kb ? GEMMA2_KV_BF16 : GEMMA2_KV_F32);
    for (i = 0; i < gemma2__sess_fp_count(m); i++) gemma2__sess_put_u32(o, gemma2__sess_fp(m, i));
    gemma2__sess_put_u64(o, gemma2__sess_weights_hash(m));
    gemma2__sess_put_u32(o, (uint32_t)s->n_ctx);
    gemma2__sess_put_u32(o, (uint32_t)s->pos);
    gemma2__sess_put_u32(o, (uint32_t)(s->has_logits ? 1 : 0));
    gemma2__sess_put(o, s->tokens, (size_t)s->pos * sizeof(int32_t));
    if (s->has_logits) gemma2__sess_put(o, s->logits, (size_t)c->vocab_size * sizeof(float));
    for (l = 0; l < c->num_hidden_layers; l++) {
        int first = gemma2__sess_first(s, l), slots = s->slots[l];
        gemma2__sess_put_u32(o, (uint32_t)first);
        for (kv = 0; kv < 2; kv++)
            for (hh = 0; hh < nkv; hh++)
                for (p = first; p < s->pos; p++) {
                    size_t at = ((size_t)hh * (size_t)slots + (size_t)(p % slots)) * (size_t)hd;
                    const void *row = s->kb ? (const void *)((kv ? s->vb[l] : s->kb[l]) + at) : (const void *)((kv ? s->v[l] : s->k[l]) + at);
                    gemma2__sess_put(o, row, (size_t)hd * elt);
                }
    }
    /* the checksum covers every byte before it: finish the pending word and the length */
    h = o->h;
    if (o->np > 0) {
        memset(o->pend + o->np, 0, (size_t)(8 - o->np));
        h = gemma2__sess_mix(h, gemma2__sess_word(o->pend));
    }
    h = gemma2__sess_mix(h, (uint64_t)o->n);
    gemma2__sess_put_u64(o, h);
}

GEMMA2_DEF int gemma2_session_save_buffer(const gemma2_session *s, void *buf, size_t cap, size_t *size)
{
    gemma2__sess_out o;
    if (size) *size = 0;
    if (!s || (!buf && cap > 0)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    memset(&o, 0, sizeof o);
    gemma2__sess_write(s, &o); /* sizing only: nothing is copied */
    if (size) *size = o.n;
    if (!buf && cap == 0) return 0;
    if (cap < o.n) return GEMMA2_ERROR_INVALID_ARGUMENT;
    memset(&o, 0, sizeof o);
    o.buf = (uint8_t *)buf;
    o.cap = cap;
    gemma2__sess_write(s, &o);
    return 0;
}

/* A little-endian u32 at p (the caller has checked the bytes are there). */
static uint32_t gemma2__sess_u32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* Loads a saved session from bytes; name is the file's path, or "session buffer", for errors. */
static gemma2_session *gemma2__sess_load(const gemma2_model *m, const char *name, const uint8_t *p, size_t len, int n_ctx,
                                         int *rc, char *err, size_t err_size)
{
    const gemma2_config *c;
    gemma2_session *s = NULL;
    size_t off, need, elt, row, at;
    uint64_t layer_bytes;
    uint32_t ver, kvf, fv, mv, saved_ctx, pos, has_logits, u;
    const uint8_t *tok, *lg, *kvdata;
    int r, i, l, nfp, ring_lo;
    char what[96];
#define GEMMA2__SESS_FAIL(code, ...) do { r = gemma2__fail(err, err_size, code, __VA_ARGS__); goto fail; } while (0)
    if (!m || !p) { r = gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "%s: no model or no bytes", name); goto fail; }
    if (!m->has_weights) GEMMA2__SESS_FAIL(GEMMA2_ERROR_NO_WEIGHTS, "%s: the model was loaded without weights", name);
    if (n_ctx < 0) GEMMA2__SESS_FAIL(GEMMA2_ERROR_INVALID_ARGUMENT, "%s: n_ctx %d is negative", name, n_ctx);
    c = &m->cfg;
    nfp = gemma2__sess_fp_count(m);
    if (len < 16 || memcmp(p, "GEM2SESS", 8) != 0) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: not a saved gemma2 session (no GEM2SESS magic)", name);
    ver = gemma2__sess_u32(p + 8);
    if (ver != GEMMA2__SESS_VERSION) GEMMA2__SESS_FAIL(ver > GEMMA2__SESS_VERSION ? GEMMA2_ERROR_UNSUPPORTED : GEMMA2_ERROR_FORMAT,
                                                       "%s: version %u, this build reads version %d", name, ver, GEMMA2__SESS_VERSION);
    kvf = gemma2__sess_u32(p + 12);
    if (kvf > GEMMA2_KV_BF16) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: kv format %u is not one (0 f32, 1 bf16)", name, kvf);
    off = 16;
    /* The fingerprint, value by value against the model: a file of another model stops at its
       first difference, before any size it gives is believed. */
    for (i = 0; i < nfp; i++, off += 4) {
        if (len - off < 4) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: truncated in the model fingerprint", name);
        fv = gemma2__sess_u32(p + off);
        mv = gemma2__sess_fp(m, i);
        if (fv != mv) {
            gemma2__sess_fp_name(i, what, sizeof what);
            GEMMA2__SESS_FAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: saved with another model: %s is %u in the file, %u in this model", name, what, fv, mv);
        }
    }
    if (len - off < 8 + 12) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: truncated after the model fingerprint", name);
    if (gemma2__sess_word(p + off) != gemma2__sess_weights_hash(m))
        GEMMA2__SESS_FAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: saved with another model: the weights' hash differs (same shapes, other weights)", name);
    off += 8;
    if ((int)kvf != (m->opt.kv_cache == GEMMA2_KV_BF16 ? GEMMA2_KV_BF16 : GEMMA2_KV_F32))
        GEMMA2__SESS_FAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: the KV cache is %s in the file, %s in this model's options (kv_cache)", name,
                          kvf ? "bf16" : "f32", kvf ? "f32" : "bf16");
    saved_ctx = gemma2__sess_u32(p + off);
    pos = gemma2__sess_u32(p + off + 4);
    has_logits = gemma2__sess_u32(p + off + 8);
    off += 12;
    if (saved_ctx < 1 || saved_ctx > (uint32_t)c->max_position_embeddings)
        GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: n_ctx %u is outside 1..%d (max_position_embeddings)", name, saved_ctx, c->max_position_embeddings);
    if (pos > saved_ctx) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: position %u is past its n_ctx %u", name, pos, saved_ctx);
    if (has_logits > 1) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: has_logits is %u, not 0 or 1", name, has_logits);
    if (n_ctx == 0) n_ctx = (int)saved_ctx;
    if (n_ctx > c->max_position_embeddings)
        GEMMA2__SESS_FAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: n_ctx %d is above max_position_embeddings %d", name, n_ctx, c->max_position_embeddings);
    if ((uint32_t)n_ctx < pos) GEMMA2__SESS_FAIL(GEMMA2_ERROR_CONTEXT_FULL, "%s: %u saved tokens do not fit in n_ctx %d", name, pos, n_ctx);
    /* tokens and logits (sizes bounded: pos <= 2^20, vocab_size by the config) */
    need = (size_t)pos * 4;
    if (len - off < need) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: truncated in the tokens (%u expected)", name, pos);
    tok = p + off;
    for (i = 0; i < (int)pos; i++) {
        u = gemma2__sess_u32(tok + (size_t)i * 4);
        if (u >= (uint32_t)c->vocab_size) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: token %d is %d, outside the vocabulary (%d)", name, i, (int32_t)u, c->vocab_size);
    }
    off += need;
    need = has_logits ? (size_t)c->vocab_size * 4 : 0;
    if (len - off < need) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: truncated in the logits", name);
    lg = p + off;
    if (has_logits) {
        float f;
        for (i = 0; i < c->vocab_size; i++) {
            memcpy(&f, lg + (size_t)i * 4, 4);
            if (f != f || f > 3.4e38f || f < -3.4e38f) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: logit %d is not finite", name, i);
        }
    }
    off += need;
    /* The KV layers: each u32 first, then 2 * kv heads * (pos - first) rows. Every first is
       checked against the session this makes, so that the ring takes the rows and keeps the
       keys the next token needs. */
    elt = kvf ? 2 : 4;
    row = (size_t)c->head_dim * elt;
    kvdata = p + off;
    at = off;
    ring_lo = 0;
    for (l = 0; l < c->num_hidden_layers; l++) {
        int slots = gemma2__session_slots(m, l, n_ctx, GEMMA2__CHUNK);
        uint32_t first;
        if (len - at < 4) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: truncated at layer %d's KV cache", name, l);
        first = gemma2__sess_u32(p + at);
        if (first > pos) GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: layer %d's first position %u is past the position %u", name, l, first, pos);
        /* a layer that keeps every position (global, or a window as long as n_ctx) must have them all */
        if (slots >= n_ctx && first != 0)
            GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: layer %d starts at position %u, not 0 (at n_ctx %d it keeps every position)", name, l,
                              first, n_ctx);
        if (pos - first > (uint32_t)slots)
            GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: layer %d holds %u positions, its cache at n_ctx %d only %d", name, l, pos - first, n_ctx, slots);
        if ((int64_t)first > GEMMA2__MAX(0, (int64_t)pos - c->sliding_window))
            GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: layer %d starts at position %u, too late for the sliding window %d at position %u", name, l,
                              first, c->sliding_window, pos);
        if (first > (uint32_t)ring_lo) ring_lo = (int)first;
        if (!gemma2__mul_ok((uint64_t)(pos - first) * 2 * (uint64_t)c->num_key_value_heads, (uint64_t)row, &layer_bytes) ||
            layer_bytes > (uint64_t)(len - at - 4))
            GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: truncated in layer %d's KV cache", name, l);
        at += 4 + (size_t)layer_bytes;
    }
    if (len - at != 8)
        GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: %s after layer %d's KV cache (%zu bytes left, 8 expected: the checksum)", name,
                          len - at < 8 ? "truncated" : "extra bytes", c->num_hidden_layers - 1, len - at);
    if (gemma2__sess_hash(p, at) != gemma2__sess_word(p + at))
        GEMMA2__SESS_FAIL(GEMMA2_ERROR_FORMAT, "%s: checksum mismatch (the file is corrupted)", name);
    /* Everything is checked: now the session. */
    if (!(s = gemma2__session_new(m, n_ctx, GEMMA2__CHUNK))) GEMMA2__SESS_FAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory for the session", name);
    memcpy(s->tokens, tok, (size_t)pos * 4);
    if (has_logits) memcpy(s->logits, lg, (size_t)c->vocab_size * 4);
    s->has_logits = (int)has_logits;
    s->pos = (int)pos;
    at = 0;
    for (l = 0; l < c->num_hidden_layers; l++) {
        int first = (int)gemma2__sess_u32(kvdata + at), slots = s->slots[l], kv, hh, q;
        at += 4;
        for (kv = 0; kv < 2; kv++)
            for (hh = 0; hh < c->num_key_value_heads; hh++)
                for (q = first; q < (int)pos; q++, at += row) {
                    size_t dst = ((size_t)hh * (size_t)slots + (size_t)(q % slots)) * (size_t)c->head_dim;
                    void *to = s->kb ? (void *)((kv ? s->vb[l] : s->kb[l]) + dst) : (void *)((kv ? s->v[l] : s->k[l]) + dst);
                    memcpy(to, kvdata + at, row);
                }
    }
    /* hi as the rewind sees it: rings hold positions hi - slots .. pos - 1 */
    s->hi = (int)pos;
    for (l = 0; l < c->num_hidden_layers; l++)
        if (s->slots[l] < s->n_ctx && ring_lo > 0) s->hi = GEMMA2__MAX(s->hi, ring_lo + s->slots[l]);
    if (rc) *rc = 0;
    if (err && err_size > 0) err[0] = 0;
    return s;
fail:
#undef GEMMA2__SESS_FAIL
    gemma2_session_free(s);
    if (rc) *rc = r;
    return NULL;
}

GEMMA2_DEF gemma2_session *gemma2_session_load_buffer(const gemma2_model *m, const void *buf, size_t len, int n_ctx,
                                                      int *rc, char *err, size_t err_size)
{
    return gemma2__sess_load(m, "session buffer", (const uint8_t *)buf, len, n_ctx, rc, err, err_size);
}

/* ---- batches: several sessions in one pass ----
   The pass's activations live in the batch's scratch (a session without a KV cache, with the
   batch's pool); gemma2__seg tells the position-dependent steps (RoPE, the cache writes,
   attention) whose cache and positions each token has. Everything between them is per token
   or a matrix product over all tokens, so the sessions share every weight read. */
struct gemma2_batch {
    const gemma2_model *m;
    gemma2_session *sc;  /* scratch for max(max_tokens, 2) tokens: a lone token still takes the tiled products */
    int max_tokens;
    gemma2__seg *seg;    /* [max_tokens] the sessions with tokens in this pass */
    int32_t *ids;        /* [max_tokens] their tokens, session after session */
    int *rows;           /* [max_tokens] the tokens whose logits are computed */
    float *out;          /* [max(max_tokens, 2)][V] those logits; pages touched only as rows are used */
    void *gen_args;      /* gemma2_generate_step's arguments to gemma2_batch_eval, for gen_cap generators */
    int gen_cap;
    unsigned gen_turn;   /* steps so far: where the next step starts handing out room */
};

GEMMA2_DEF void gemma2_batch_free(gemma2_batch *b)
{
    if (!b) return;
    gemma2_session_free(b->sc);
    GEMMA2_FREE(b->seg); GEMMA2_FREE(b->ids); GEMMA2_FREE(b->rows); GEMMA2_FREE(b->out); GEMMA2_FREE(b->gen_args);
    GEMMA2_FREE(b);
}

GEMMA2_DEF gemma2_batch *gemma2_batch_new(const gemma2_model *m, int max_tokens, int n_threads, int *rc)
{
    gemma2_batch *b = NULL;
    int r = 0, rows = GEMMA2__MAX(max_tokens, 2);
    if (!m || max_tokens < 1 || max_tokens > GEMMA2_BATCH_MAX_TOKENS || n_threads < 0) r = GEMMA2_ERROR_INVALID_ARGUMENT;
    else if (!m->has_weights) r = GEMMA2_ERROR_NO_WEIGHTS;
    else if (!(b = (gemma2_batch *)gemma2__calloc(1, sizeof *b))) r = GEMMA2_ERROR_OUT_OF_MEMORY;
    else {
        b->m = m;
        b->max_tokens = max_tokens;
        /* attention scratch for one position: it grows to the sessions' n_ctx on their first eval */
        b->sc = gemma2__session_alloc(m, 1, GEMMA2__CHUNK, rows, n_threads > 0 ? n_threads : GEMMA2__MAX(1, m->opt.n_threads), 0);
        b->seg = (gemma2__seg *)gemma2__calloc((size_t)max_tokens, sizeof(gemma2__seg));
        b->ids = (int32_t *)gemma2__calloc((size_t)max_tokens, sizeof(int32_t));
        b->rows = (int *)gemma2__calloc((size_t)max_tokens, sizeof(int));
        b->out = (float *)gemma2__malloc_n((size_t)rows * (size_t)m->cfg.vocab_size, sizeof(float));
        if (!b->sc || !b->seg || !b->ids || !b->rows || !b->out) { gemma2_batch_free(b); b = NULL; r = GEMMA2_ERROR_OUT_OF_MEMORY; }
    }
    if (rc) *rc = r;
    return b;
}

/* Checks session i's part of a batch_eval call; 0 or its error. */
static int gemma2__batch_check(const gemma2_batch *b, gemma2_session *const *s, const int32_t *const *ids, const int *n, int i)
{
    int k;
    if (!s[i] || s[i]->m != b->m || n[i] < 0 || (n[i] > 0 && (!ids || !ids[i]))) return GEMMA2_ERROR_INVALID_ARGUMENT;
    for (k = 0; k < i; k++) if (s[k] == s[i]) return GEMMA2_ERROR_INVALID_ARGUMENT;
    /* a sliding ring holds the last W + chunk - 1 positions: enough for at most `chunk` new queries */
    if (n[i] > s[i]->chunk) return GEMMA2_ERROR_INVALID_ARGUMENT;
    for (k = 0; k < n[i]; k++) if (ids[i][k] < 0 || ids[i][k] >= b->m->cfg.vocab_size) return GEMMA2_ERROR_BAD_TOKEN;
    if (n[i] > s[i]->n_ctx - s[i]->pos) return GEMMA2_ERROR_CONTEXT_FULL;
    return 0;
}

/* A session's group in the pass (0: one token; 1: several, the last row's logits; 2: several,
   every row's). */
static int gemma2__batch_group(int n, int all_rows) { return n == 1 ? 0 : all_rows ? 2 : 1; }

GEMMA2_DEF int gemma2_batch_eval(gemma2_batch *b, gemma2_session *const *s, const int32_t *const *ids, const int *n, int n_sessions,
                                 float *const *logits, int *status)
{
    gemma2_session *sc;
    int i, grp, rc = 0, total = 0, n_seg = 0, n_rows = 0, n_lone = 0, n_lone_rows = 0, max_ctx = 0, V;
    if (!b || n_sessions < 0 || (n_sessions > 0 && (!s || !n))) return GEMMA2_ERROR_INVALID_ARGUMENT;
    sc = b->sc;
    V = b->m->cfg.vocab_size;
    if (status) for (i = 0; i < n_sessions; i++) status[i] = 0;
    /* Everything is checked, and the scratch grown, before anything changes: a failed call
       leaves every session as it was. */
    for (i = 0; i < n_sessions; i++) {
        int r = gemma2__batch_check(b, s, ids, n, i);
        if (r) { if (status) status[i] = r; return r; }
        total += n[i];
        max_ctx = GEMMA2__MAX(max_ctx, s[i]->n_ctx);
    }
    if (total > b->max_tokens) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (total == 0) return 0;
    if (max_ctx > sc->n_ctx) {
        const gemma2_config *c = &b->m->cfg;
        size_t per = (size_t)gemma2__pool_size(sc->pool) * GEMMA2__ATT_QB * (size_t)(c->num_attention_heads / c->num_key_value_heads);
        float *scores = (float *)gemma2__malloc_n(per * (size_t)max_ctx, sizeof(float));
        if (!scores) return GEMMA2_ERROR_OUT_OF_MEMORY;
        GEMMA2_FREE(sc->scores);
        sc->scores = scores;
        sc->n_ctx = max_ctx;
    }
    /* The pass: each session's tokens together, its attention blocks counted from its first.
       Sessions in three groups, each in the caller's order: one token; several with the last
       row's logits; several with every row's. The first group's tokens and the first two
       groups' logits rows are then the first of the pass, where the products may take them
       as gemma2_eval takes one token (gemma2__matmuls). */
    total = 0;
    for (grp = 0; grp < 3; grp++)
        for (i = 0; i < n_sessions; i++) {
            gemma2__seg *g = &b->seg[n_seg];
            int t, all = logits && logits[i];
            if (n[i] == 0 || grp != gemma2__batch_group(n[i], all)) continue;
            g->s = s[i]; g->t0 = total; g->C = n[i]; g->pos0 = s[i]->pos;
            g->b0 = n_seg ? b->seg[n_seg - 1].b0 + (b->seg[n_seg - 1].C + GEMMA2__ATT_QB - 1) / GEMMA2__ATT_QB : 0;
            memcpy(b->ids + total, ids[i], (size_t)n[i] * sizeof(int32_t));
            for (t = all ? 0 : n[i] - 1; t < n[i]; t++) b->rows[n_rows++] = total + t;
            total += n[i];
            if (grp == 0) n_lone++;
            if (grp < 2) n_lone_rows++;
            n_seg++;
        }
    sc->seg = b->seg;
    sc->n_seg = n_seg;
    sc->n_lone = n_lone;
    gemma2__forward_batch(sc, b->ids, total, b->rows, n_rows, n_lone_rows, b->out);
    sc->seg = NULL;
    /* each session as gemma2_eval leaves it, the logits copied out of the pass's rows (in the
       pass's order) */
    n_rows = 0;
    for (grp = 0; grp < 3; grp++) {
        for (i = 0; i < n_sessions; i++) {
            gemma2_session *e = s[i];
            int pos0 = e->pos, k = n[i];
            const float *rows;
            if (k == 0 || grp != gemma2__batch_group(k, logits && logits[i])) continue;
            rows = b->out + (size_t)n_rows * V;
            memmove(e->tokens + pos0, ids[i], (size_t)k * sizeof(int32_t));
            e->pos += k;
            if (e->pos > e->hi) e->hi = e->pos;
            if (logits && logits[i]) {
                memcpy(logits[i], rows, (size_t)k * V * sizeof(float));
                n_rows += k;
            } else n_rows++;
            memcpy(e->logits, b->out + (size_t)(n_rows - 1) * V, (size_t)V * sizeof(float));
            e->has_logits = 1;
            if (gemma2__any_nonfinite(rows, (size_t)(logits && logits[i] ? k : 1) * (size_t)V)) {
                if (!e->undoing) gemma2__eval_undo(e, pos0);
                if (status) status[i] = GEMMA2_ERROR_NUMERIC;
                rc = GEMMA2_ERROR_NUMERIC;
            }
        }
    }
    return rc;
}

/* ===========================================================================
   2.7  Sampler
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

#define GEMMA2__NBUCKET 4096 /* top-p buckets: 32 nats / 4096 = 0.0078 nats wide */

struct gemma2_sampler {
    gemma2_sampler_params p;     /* logit_bias points at `bias` below */
    int V;
    gemma2_logit_bias *bias;
    uint64_t rng[4];
    float *w;                    /* [V] working logits */
    int32_t *cand;               /* [V] candidate ids */
    double *e;                   /* [V] exp(w - max) of the candidates */
    int32_t *count;              /* [V] occurrences in the penalty window; all zero between calls */
    int32_t *tmp;                /* [V] top-p: bucket of each candidate, then the cut bucket's ids */
    double *bucket_mass;         /* [GEMMA2__NBUCKET] */
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
    GEMMA2_FREE(smp->tmp);
    GEMMA2_FREE(smp->bucket_mass);
    GEMMA2_FREE(smp);
}

/* The parameters a sampler accepts: counts in range, and no NaN anywhere (every other float, the
   infinities included, has a meaning: see gemma2_sampler_sample). */
static int gemma2__sampler_params_ok(const gemma2_sampler_params *p)
{
    int k;
    if (!p) return 1;
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias) || p->penalty_last_n < 0) return 0;
    if (p->temperature != p->temperature || p->top_p != p->top_p || p->min_p != p->min_p ||
        p->repetition_penalty != p->repetition_penalty || p->frequency_penalty != p->frequency_penalty ||
        p->presence_penalty != p->presence_penalty) return 0;
    for (k = 0; k < p->n_logit_bias; k++) if (p->logit_bias[k].bias != p->logit_bias[k].bias) return 0;
    return 1;
}

GEMMA2_DEF gemma2_sampler *gemma2_sampler_new_ex(int vocab_size, const gemma2_sampler_params *p, int *rc)
{
    gemma2_sampler *smp;
    if (rc) *rc = GEMMA2_ERROR_INVALID_ARGUMENT;
    if (vocab_size <= 0 || !gemma2__sampler_params_ok(p)) return NULL;
    if (rc) *rc = GEMMA2_ERROR_OUT_OF_MEMORY;
    smp = (gemma2_sampler *)gemma2__calloc(1, sizeof *smp);
    if (!smp) return NULL;
    if (p) smp->p = *p;
    smp->V = vocab_size;
    smp->w = (float *)gemma2__calloc((size_t)vocab_size, sizeof(float));
    smp->cand = (int32_t *)gemma2__calloc((size_t)vocab_size, sizeof(int32_t));
    smp->e = (double *)gemma2__calloc((size_t)vocab_size, sizeof(double));
    smp->count = (int32_t *)gemma2__calloc((size_t)vocab_size, sizeof(int32_t));
    smp->tmp = (int32_t *)gemma2__calloc((size_t)vocab_size, sizeof(int32_t));
    smp->bucket_mass = (double *)gemma2__calloc(GEMMA2__NBUCKET, sizeof(double));
    if (smp->p.n_logit_bias > 0) {
        smp->bias = (gemma2_logit_bias *)gemma2__calloc((size_t)smp->p.n_logit_bias, sizeof(gemma2_logit_bias));
        if (smp->bias) memcpy(smp->bias, smp->p.logit_bias, (size_t)smp->p.n_logit_bias * sizeof(gemma2_logit_bias));
    }
    if (!smp->w || !smp->cand || !smp->e || !smp->count || !smp->tmp || !smp->bucket_mass || (smp->p.n_logit_bias > 0 && !smp->bias)) {
        gemma2_sampler_free(smp);
        return NULL;
    }
    smp->p.logit_bias = smp->bias;
    gemma2_sampler_seed(smp, smp->p.seed);
    if (rc) *rc = 0;
    return smp;
}

GEMMA2_DEF gemma2_sampler *gemma2_sampler_new(int vocab_size, const gemma2_sampler_params *p)
{
    return gemma2_sampler_new_ex(vocab_size, p, NULL);
}

GEMMA2_DEF gemma2_sampler_params gemma2_sampler_params_default(void)
{
    gemma2_sampler_params p;
    memset(&p, 0, sizeof p);
    return p;
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

/* Steps 1-3: bias and penalties, into smp->w; GEMMA2_ERROR_NUMERIC for a NaN logit. Every
   operation is arranged so that infinities give infinities, never NaN (inf - inf, 0 * inf): see
   the rules at gemma2_sampler_sample. */
static int gemma2__sampler_adjust(gemma2_sampler *smp, const float *logits, const int32_t *hist, int n_hist)
{
    const gemma2_sampler_params *p = &smp->p;
    float *w = smp->w;
    int V = smp->V, k, nan = 0;
    for (k = 0; k < V; k++) { w[k] = logits[k]; nan |= logits[k] != logits[k]; }
    if (nan) return GEMMA2_ERROR_NUMERIC;
    for (k = 0; k < p->n_logit_bias; k++) {
        int32_t id = p->logit_bias[k].token;
        float b = p->logit_bias[k].bias;
        if (id < 0 || id >= V) continue;
        if (b == -INFINITY || w[id] == -INFINITY) w[id] = -INFINITY; /* a ban beats +inf */
        else w[id] += b; /* +inf + +inf, or an overflow: +inf, certain */
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
            float x;
            if (id < 0 || id >= V || smp->count[id] == 0) continue;
            c = smp->count[id];
            smp->count[id] = 0;
            x = w[id];
            if (x == INFINITY || x == -INFINITY) continue; /* certain / impossible whatever the penalty */
            if (p->repetition_penalty > 0 && p->repetition_penalty != 1.0f && x != 0)
                x = x > 0 ? x / p->repetition_penalty : x * p->repetition_penalty;
            if (x != INFINITY && x != -INFINITY) {
                float sub = (float)c * p->frequency_penalty + p->presence_penalty;
                x -= sub == sub ? sub : (float)c * p->frequency_penalty; /* opposite infinities: frequency wins */
            }
            w[id] = x;
        }
    }
    return 0;
}

GEMMA2_DEF int gemma2_sampler_sample(gemma2_sampler *smp, const float *logits, const int32_t *history, int n_history)
{
    const gemma2_sampler_params *p;
    float *w, maxw = -INFINITY;
    int V, i, n = 0, best = -1, sorted = 0, rc;
    double Z = 0, total, u, acc;
    if (!smp || !logits || n_history < 0 || (n_history > 0 && !history)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    p = &smp->p;
    V = smp->V;
    w = smp->w;
    if ((rc = gemma2__sampler_adjust(smp, logits, history, n_history)) != 0) return rc;

    /* 4. greedy; also finds the maximum (ties and several +inf: the lowest id) */
    for (i = 0; i < V; i++)
        if (w[i] > maxw) { maxw = w[i]; best = i; }
    if (best < 0) return GEMMA2_ERROR_INVALID_ARGUMENT; /* everything -inf */
    if (!(p->temperature > 0)) return best;

    /* 5. temperature. From here on every candidate's w is finite and the best is 0, so that no
       exp(w - max) below is inf - inf. +inf logits are certain: only they stay, all equal. Other
       temperatures divide the distance to the best in double: a tiny T sends every token below
       the best to -inf (the T -> 0 limit) instead of overflowing 1/T, and T = +inf makes every
       allowed token 0 (uniform). T = 1 changes nothing. */
    if (maxw == INFINITY) {
        for (i = 0; i < V; i++) w[i] = w[i] == INFINITY ? 0.0f : -INFINITY;
        maxw = 0;
    } else if (p->temperature != 1.0f) {
        double T = (double)p->temperature;
        for (i = 0; i < V; i++)
            if (w[i] != -INFINITY) w[i] = (float)(((double)w[i] - (double)maxw) / T);
        maxw = 0;
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
            /* No sort of the vocabulary: bucket the candidates by how far below the best they
               are (GEMMA2__NBUCKET buckets over 32 nats; beyond that the probability is < 1e-14
               of the best), find the bucket where the running mass reaches top_p, keep every
               token of the buckets above it, and sort only that one bucket's tokens to cut it
               exactly. Kept tokens stay in id order, the cut bucket in candidate order: a fixed
               order for the draw. */
            double *bm = smp->bucket_mass, acc0 = 0;
            int32_t *bi = smp->tmp;
            int B, j = 0, nm = 0;
            memset(bm, 0, sizeof(double) * GEMMA2__NBUCKET);
            for (i = 0; i < n; i++) {
                double d = ((double)maxw - (double)w[smp->cand[i]]) * (GEMMA2__NBUCKET / 32.0);
                int b = d < GEMMA2__NBUCKET - 1 ? (int)d : GEMMA2__NBUCKET - 1;
                bi[i] = b;
                bm[b] += smp->e[i];
            }
            for (B = 0; B < GEMMA2__NBUCKET - 1 && acc0 + bm[B] < need; B++) acc0 += bm[B];
            for (i = 0; i < n; i++) {
                int b = bi[i];
                if (b < B) { smp->cand[j] = smp->cand[i]; smp->e[j] = smp->e[i]; j++; }
                else if (b == B) bi[nm++] = smp->cand[i]; /* nm <= i: entry i was read already */
            }
            gemma2__cand_sort(w, bi, nm);
            for (i = 0; i < nm && (acc0 < need || j == 0); i++) {
                smp->cand[j] = bi[i];
                smp->e[j] = exp((double)w[bi[i]] - (double)maxw);
                acc0 += smp->e[j++];
            }
            n = j;
        } else {
            acc = 0;
            for (i = 0; i < n; i++) {
                acc += smp->e[i];
                if (acc >= need) { n = i + 1; break; }
            }
        }
    }

    /* 8. min-p: p >= min_p * p_max, i.e. e >= min_p (the best has e = 1; min_p > 1 keeps the tokens
       tied with it) */
    if (p->min_p > 0 && n > 1) {
        double mp = p->min_p > 1 ? 1.0 : (double)p->min_p;
        int j = 0;
        for (i = 0; i < n; i++)
            if (smp->e[i] >= mp) { smp->cand[j] = smp->cand[i]; smp->e[j] = smp->e[i]; j++; }
        n = j; /* never 0: the best token is a candidate and has e == 1 */
    }
    if (n <= 0) return best;

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
   2.8  Generation and chat
   =========================================================================== */

/* Generation needs the session's model (eos ids, vocabulary, tokenizer). */
static const gemma2_model *gemma2__gen_model(const gemma2_session *s) { return s->m; }

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

/* --- streaming text: stop strings ------------------------------------------------ */

/* Text pieces come from the tokenizer's incremental detokenizer (gemma2_detok: whole UTF-8
   characters only, invalid bytes as U+FFFD the way the tokenizer format's reference does). Here
   they wait in `hold` while they could still be the start of a stop string. The buffer is
   allocated once per generation and grows only if a piece is unusually long. */
typedef struct gemma2__stream {
    char *hold;              /* decoded text not yet delivered */
    size_t nhold, hold_cap;
    const char *const *stops;
    int n_stops;
    size_t max_stop;
} gemma2__stream;

/* Makes room for `extra` more bytes (and a NUL). */
static int gemma2__stream_reserve(gemma2__stream *st, size_t extra)
{
    size_t need = st->nhold + extra + 1;
    if (need > st->hold_cap) {
        void *p = GEMMA2_REALLOC(st->hold, need);
        if (!p) return GEMMA2_ERROR_OUT_OF_MEMORY;
        st->hold = (char *)p;
        st->hold_cap = need;
    }
    return 0;
}

static void gemma2__stream_free(gemma2__stream *st)
{
    GEMMA2_FREE(st->hold);
    memset(st, 0, sizeof *st);
}

/* Appends the text that token id completes (id < 0: the end of the stream) to hold. A model
   loaded without a tokenizer streams no text. */
static int gemma2__stream_push(gemma2__stream *st, gemma2_detok *dt, int32_t id)
{
    int n, rc;
    for (;;) {
        size_t avail = st->hold_cap - st->nhold - 1;
        n = id >= 0 ? gemma2_detok_push(dt, id, st->hold + st->nhold, avail) : gemma2_detok_flush(dt, st->hold + st->nhold, avail);
        if (n == GEMMA2_ERROR_NO_TOKENIZER) return 0;
        if (n < 0) return n;
        if ((size_t)n <= avail) break;
        if ((rc = gemma2__stream_reserve(st, (size_t)n)) != 0) return rc; /* nothing was consumed: retry */
    }
    st->nhold += (size_t)n;
    return 0;
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

GEMMA2_DEF const char *gemma2_stop_reason_string(int reason)
{
    switch (reason) {
    case 0: return "none";
    case GEMMA2_STOP_EOS: return "end of sequence";
    case GEMMA2_STOP_MAX_TOKENS: return "max tokens";
    case GEMMA2_STOP_STRING: return "stop string";
    case GEMMA2_STOP_CALLBACK: return "stopped by callback";
    case GEMMA2_STOP_CONTEXT_FULL: return "context full";
    default: return "unknown";
    }
}

GEMMA2_DEF gemma2_generate_params gemma2_generate_params_default(void)
{
    gemma2_generate_params p;
    memset(&p, 0, sizeof p);
    return p;
}

/* The prompt, one pass at a time when someone watches its progress. gemma2_eval cuts a prompt
   into the same passes (s->chunk tokens from the session's position), so the results are the
   same; a pass that is not the last only also computes its last row's logits. A failure or a
   stop takes the whole prompt back, as one gemma2_eval would have left it. */
static int gemma2__generate_prompt(gemma2_session *s, const int32_t *prompt, int n, const gemma2_generate_params *p, int *stopped)
{
    int done = 0, rc, pos0 = s->pos;
    if (!p->on_prompt) return gemma2_eval(s, prompt, n, NULL);
    while (done < n) {
        int c = GEMMA2__MIN(s->chunk, n - done);
        rc = gemma2_eval(s, prompt + done, c, NULL);
        if (rc == 0 && p->on_prompt(p->user, done + c, n) != 0) *stopped = 1;
        if (rc != 0 || *stopped) {
            if (s->pos > pos0) gemma2_session_rewind(s, pos0);
            return rc;
        }
        done += c;
    }
    return 0;
}

/* One generation's state, shared by gemma2_generate (one session, gemma2_eval) and the
   generators (several sessions, gemma2_batch_eval): the same rules in the same order, so that
   both stop, stream and count alike. A step: gemma2__gen_next picks the token to evaluate (or
   ends the generation), the caller evaluates it, gemma2__gen_after streams it. */
struct gemma2_generator {
    gemma2_session *s;
    gemma2_generate_params p;
    gemma2_sampler *smp;
    gemma2__stream st;
    gemma2_detok dt;
    gemma2_generate_result r;
    int32_t *prompt;      /* generators: their copy of the prompt, fed pass by pass */
    int n_prompt, fed;
    int32_t pending;      /* sampled, not yet evaluated (-1: none): a failed batch call keeps it */
    int stopped;          /* no more tokens: r.stop_reason says why, or rc */
    int done, rc;         /* finished (held-back text delivered), and the error if any */
};

/* Checks the parameters and sets g up for session s. 0 or an error; gemma2__gen_free releases
   what it allocated either way. */
static int gemma2__gen_init(gemma2_generator *g, gemma2_session *s, const int32_t *prompt, int n_prompt, const gemma2_generate_params *params)
{
    const gemma2_model *m;
    int i;
    memset(g, 0, sizeof *g);
    g->r.stop_id = -1;
    g->pending = -1;
    if (!s || n_prompt < 0 || (n_prompt > 0 && !prompt)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    g->s = s;
    if (params) g->p = *params;
    if (g->p.n_stop_strings < 0 || (g->p.n_stop_strings > 0 && !g->p.stop_strings) || g->p.n_stop_ids < 0 ||
        (g->p.n_stop_ids > 0 && !g->p.stop_ids) || !gemma2__sampler_params_ok(&g->p.sampler)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < g->p.n_stop_strings; i++) {
        if (!g->p.stop_strings[i]) return GEMMA2_ERROR_INVALID_ARGUMENT;
        g->st.max_stop = GEMMA2__MAX(g->st.max_stop, strlen(g->p.stop_strings[i]));
    }
    g->st.stops = g->p.stop_strings;
    g->st.n_stops = g->p.n_stop_strings;
    m = gemma2__gen_model(s);
    if (n_prompt == 0 && (gemma2_session_pos(s) == 0 || !gemma2_logits(s))) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (n_prompt > gemma2_session_n_ctx(s) - gemma2_session_pos(s)) return GEMMA2_ERROR_CONTEXT_FULL;
    g->smp = gemma2_sampler_new(gemma2_vocab_size(m), &g->p.sampler);
    if (!g->smp || gemma2__stream_reserve(&g->st, g->st.max_stop + 512) != 0) return GEMMA2_ERROR_OUT_OF_MEMORY;
    gemma2_detok_init(&g->dt, m, GEMMA2_DETOKENIZE_SKIP_CONTROL);
    return 0;
}

static void gemma2__gen_free(gemma2_generator *g)
{
    gemma2_sampler_free(g->smp);
    gemma2__stream_free(&g->st);
    GEMMA2_FREE(g->prompt);
    g->smp = NULL;
    g->prompt = NULL;
}

/* The next token to evaluate, from the session's logits: 1 and *tok, or 0 when the generation
   ends here (g->stopped; g->rc on a sampler error). A token sampled before and not yet
   evaluated comes back as it was. */
static int gemma2__gen_next(gemma2_generator *g, int32_t *tok)
{
    const gemma2_config *cfg = gemma2_model_config(gemma2__gen_model(g->s));
    int i, is_stop = 0;
    int32_t t = g->pending;
    if (g->stopped) return 0;
    if (t < 0) {
        if (g->p.max_new_tokens > 0 && g->r.n_generated >= g->p.max_new_tokens) { g->r.stop_reason = GEMMA2_STOP_MAX_TOKENS; g->stopped = 1; return 0; }
        t = gemma2_sampler_sample(g->smp, gemma2_logits(g->s), gemma2_session_tokens(g->s), gemma2_session_pos(g->s));
        if (t < 0) { g->rc = t; g->stopped = 1; return 0; }
        if (!g->p.ignore_eos)
            for (i = 0; i < cfg->n_eos; i++) is_stop |= cfg->eos_token_ids[i] == t;
        for (i = 0; i < g->p.n_stop_ids; i++) is_stop |= g->p.stop_ids[i] == t;
        if (is_stop) { g->r.stop_reason = GEMMA2_STOP_EOS; g->r.stop_id = t; g->stopped = 1; return 0; }
        if (gemma2_session_pos(g->s) >= gemma2_session_n_ctx(g->s)) { g->r.stop_reason = GEMMA2_STOP_CONTEXT_FULL; g->stopped = 1; return 0; }
    }
    g->pending = t;
    *tok = t;
    return 1;
}

/* After tok was evaluated into the session: counts it and streams its text (stop strings,
   on_token). */
static void gemma2__gen_after(gemma2_generator *g, int32_t tok)
{
    size_t keep, emit;
    long at;
    int rc;
    g->pending = -1;
    g->r.n_generated++;
    if ((rc = gemma2__stream_push(&g->st, &g->dt, tok)) != 0) { g->rc = rc; g->stopped = 1; return; }
    at = gemma2__stream_match(&g->st, &keep);
    if (at >= 0) { emit = (size_t)at; g->stopped = 1; g->r.stop_reason = GEMMA2_STOP_STRING; }
    else emit = g->st.nhold - keep;
    if (g->p.on_token && g->p.on_token(g->p.user, tok, g->st.hold, emit) != 0 && !g->stopped) {
        g->stopped = 1;
        g->r.stop_reason = GEMMA2_STOP_CALLBACK;
    }
    if (g->r.stop_reason == GEMMA2_STOP_STRING) g->st.nhold = 0;
    else { memmove(g->st.hold, g->st.hold + emit, g->st.nhold - emit); g->st.nhold -= emit; }
}

/* The end: delivers what was held back (an incomplete character, as U+FFFD, and the start of
   a stop string that never completed). */
static void gemma2__gen_finish(gemma2_generator *g)
{
    if (g->r.stop_reason != GEMMA2_STOP_STRING && g->rc == 0) {
        int rc = gemma2__stream_push(&g->st, &g->dt, -1);
        if (rc != 0) g->rc = rc;
        else if (g->st.nhold && g->p.on_token) g->p.on_token(g->p.user, -1, g->st.hold, g->st.nhold);
    }
    g->stopped = 1;
    g->done = 1;
}

GEMMA2_DEF int gemma2_generate(gemma2_session *s, const int32_t *prompt, int n_prompt,
                               const gemma2_generate_params *params, gemma2_generate_result *res)
{
    gemma2_generator g;
    int rc, stopped = 0;
    int32_t tok;
    rc = gemma2__gen_init(&g, s, prompt, n_prompt, params);
    if (res) *res = g.r;
    if (rc != 0) { gemma2__gen_free(&g); return rc; }
    if (n_prompt > 0 && (rc = gemma2__generate_prompt(s, prompt, n_prompt, &g.p, &stopped)) != 0) goto done;
    if (stopped) { g.r.stop_reason = GEMMA2_STOP_CALLBACK; goto done; }
    g.r.n_prompt = n_prompt;
    while (gemma2__gen_next(&g, &tok)) {
        if ((g.rc = gemma2_eval(s, &tok, 1, NULL)) != 0) break;
        gemma2__gen_after(&g, tok);
    }
    gemma2__gen_finish(&g);
    rc = g.rc;
done:
    gemma2__gen_free(&g);
    if (res) *res = g.r;
    return rc;
}

/* --- several generations at once ------------------------------------------------- */

GEMMA2_DEF gemma2_generator *gemma2_generator_new(gemma2_session *s, const int32_t *prompt, int n_prompt, const gemma2_generate_params *p,
                                                  int *rc)
{
    gemma2_generator *g = (gemma2_generator *)gemma2__calloc(1, sizeof *g);
    int r = g ? gemma2__gen_init(g, s, prompt, n_prompt, p) : GEMMA2_ERROR_OUT_OF_MEMORY;
    if (r == 0 && n_prompt > 0) {
        g->prompt = (int32_t *)gemma2__malloc_n((size_t)n_prompt, sizeof(int32_t));
        if (!g->prompt) r = GEMMA2_ERROR_OUT_OF_MEMORY;
        else {
            memcpy(g->prompt, prompt, (size_t)n_prompt * sizeof(int32_t));
            g->n_prompt = n_prompt;
        }
    }
    if (rc) *rc = r;
    if (r != 0) { gemma2_generator_free(g); return NULL; }
    return g;
}

GEMMA2_DEF void gemma2_generator_free(gemma2_generator *g)
{
    if (!g) return;
    gemma2__gen_free(g);
    GEMMA2_FREE(g);
}

GEMMA2_DEF int gemma2_generator_done(const gemma2_generator *g, gemma2_generate_result *res)
{
    if (!g) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (res) *res = g->r;
    return !g->done ? 0 : g->rc ? g->rc : 1;
}

/* What a generator puts in this step's call: its next prompt pass (the session's pass, or
   what the call has room for), or one token; 0 when it waits or has finished. */
static int gemma2__gen_want(gemma2_generator *g, int room, const int32_t **ids)
{
    int n;
    if (g->done || room < 1) return 0;
    if (g->fed < g->n_prompt) {
        n = GEMMA2__MIN(GEMMA2__MIN(g->s->chunk, g->n_prompt - g->fed), room);
        *ids = g->prompt + g->fed;
        return n;
    }
    if (!gemma2__gen_next(g, &g->pending)) { gemma2__gen_finish(g); return 0; }
    *ids = &g->pending;
    return 1;
}

GEMMA2_DEF int gemma2_generate_step(gemma2_batch *b, gemma2_generator *const *gens, int n)
{
    gemma2_session **ss;
    const int32_t **ids;
    int *nn, *st, i, j, k, first, room, rc, running = 0;
    if (!b || n < 0 || (n > 0 && !gens)) return GEMMA2_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < n; i++) {
        if (!gens[i] || gens[i]->s->m != b->m) return GEMMA2_ERROR_INVALID_ARGUMENT;
        for (k = 0; k < i; k++) if (gens[k] == gens[i] || gens[k]->s == gens[i]->s) return GEMMA2_ERROR_INVALID_ARGUMENT;
    }
    if (n == 0) return 0;
    /* the call's arguments, n of each, in the batch's scratch (grown here, the only allocation) */
    if (n > b->gen_cap) {
        void *p = gemma2__malloc_n((size_t)n, sizeof(void *) * 2 + sizeof(int) * 2);
        if (!p) return GEMMA2_ERROR_OUT_OF_MEMORY;
        GEMMA2_FREE(b->gen_args);
        b->gen_args = p;
        b->gen_cap = n;
    }
    ss = (gemma2_session **)b->gen_args;
    ids = (const int32_t **)(void *)(ss + n);
    nn = (int *)(void *)(ids + n);
    st = nn + n;
    for (i = 0; i < n; i++) { ss[i] = gens[i]->s; nn[i] = 0; ids[i] = NULL; }
    /* one token each for the generators that are decoding, then prompt passes in the room left;
       each step starts one generator further on, so that with less room than generators none
       waits for the others to finish */
    room = b->max_tokens;
    first = (int)(b->gen_turn++ % (unsigned)n);
    for (k = 0; k < 2; k++)
        for (j = 0; j < n; j++) {
            i = (first + j) % n;
            if ((gens[i]->fed < gens[i]->n_prompt) != k) continue;
            nn[i] = gemma2__gen_want(gens[i], room, &ids[i]);
            room -= nn[i];
        }
    for (i = 0; i < n; i++) running += nn[i] > 0;
    if (running > 0) {
        rc = gemma2_batch_eval(b, ss, ids, nn, n, NULL, st);
        if (rc != 0 && rc != GEMMA2_ERROR_NUMERIC) return rc; /* nothing changed; a sampled token stays pending */
        for (i = 0; i < n; i++) {
            gemma2_generator *g = gens[i];
            if (nn[i] == 0) continue;
            if (st[i] != 0) { g->rc = st[i]; gemma2__gen_finish(g); }
            else if (g->fed < g->n_prompt) {
                g->fed += nn[i];
                if (g->p.on_prompt && g->p.on_prompt(g->p.user, g->fed, g->n_prompt) != 0) {
                    /* as gemma2_generate: the prompt is taken back */
                    gemma2_session_rewind(g->s, gemma2_session_pos(g->s) - g->fed);
                    g->r.stop_reason = GEMMA2_STOP_CALLBACK;
                    g->stopped = g->done = 1;
                } else if (g->fed == g->n_prompt) g->r.n_prompt = g->n_prompt;
            } else gemma2__gen_after(g, ids[i][0]);
        }
    }
    running = 0;
    for (i = 0; i < n; i++) {
        if (gens[i]->stopped && !gens[i]->done) gemma2__gen_finish(gens[i]);
        running += !gens[i]->done;
    }
    return running;
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

GEMMA2_DEF gemma2_chat *gemma2_chat_new_ex(gemma2_session *s, const char *system, int *rc)
{
    gemma2_chat *c;
    int r;
    if (rc) *rc = GEMMA2_ERROR_INVALID_ARGUMENT;
    if (!s || gemma2_session_pos(s) != 0) return NULL;
    if (rc) *rc = GEMMA2_ERROR_OUT_OF_MEMORY;
    c = (gemma2_chat *)gemma2__calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = s;
    c->m = gemma2__gen_model(s);
    /* NO_TOKENIZER, or UNSUPPORTED for a vocabulary without the markers (gemma2__marker_id) */
    if ((r = gemma2__chat_markers(c->m, &c->ids)) != 0 || (system && !(c->system = gemma2__strdup(system)))) {
        if (rc) *rc = r != 0 ? r : GEMMA2_ERROR_OUT_OF_MEMORY;
        gemma2_chat_free(c);
        return NULL;
    }
    if (rc) *rc = 0;
    return c;
}

GEMMA2_DEF gemma2_chat *gemma2_chat_new(gemma2_session *s, const char *system) { return gemma2_chat_new_ex(s, system, NULL); }

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


/* ===========================================================================
   2.9  Tokenizer
   =========================================================================== */

/* Two file formats, one engine. Both describe the same kind of model: a vocabulary of byte strings ("pieces"), a
   set of pieces matched whole in the text before anything else (tokenizer.json's added_tokens, SentencePiece's
   USER_DEFINED pieces), and BPE over the rest, where ' ' is first written '▁'. They differ in where the BPE
   priority comes from: tokenizer.json lists merges (left, right) by rank, SentencePiece merges any two neighbours
   whose concatenation is a piece, highest score first. Both break ties to the leftmost pair.

   Memory: the pieces live in one arena (NUL after each, offsets in off[]), piece -> id is an open-addressing table
   holding (hash, id) so that a probe rarely touches the arena; merges are a table keyed by the id pair. For
   Gemma's 256000 pieces and 580604 merges that is about 2.4 MB of pieces, 4 MB of piece table, 8 MB + 2.3 MB of
   merges (tokenizer.json only), 1 MB of SentencePiece priorities (tokenizer.model only).

   Speed: BPE is the classic heap of candidate pairs with lazy deletion (O(n log n)). When no piece holds '▁' after
   another character (true of Gemma: pieces start with their '▁'), no merge can cross the point before a '▁' that
   follows a non-'▁' character, so each such "word" is merged on its own: the result is identical and the heaps
   stay tiny. Encoding also keeps a per-call cache of words already seen (text repeats its words). Nothing is
   quadratic on any file or text: pieces matched whole are found by an automaton in one pass (gemma2__ac_node), every
   merge is one table look-up (gemma2__tok_spm_pairs), and loading touches each piece's bytes a bounded number of
   times.

   Where this follows the references, and where not:
   - tokenizer.json: added tokens are cut out of the raw text first, leftmost-longest (all of them with
     GEMMA2_TOKENIZE_SPECIAL, else all but those flagged "special"); their lstrip / rstrip / single_word /
     normalized flags are not applied (Gemma's files set none). A character that is no piece becomes its byte
     pieces before merging (as the Rust tokenizers library does). Only the Replace(" " -> "▁") normalizer and no
     pre-tokenizer are supported: other files are refused with GEMMA2_ERROR_UNSUPPORTED, never mis-tokenized.
   - tokenizer.model: ModelProto with model_type BPE and an identity normalizer without dummy prefix or whitespace
     removal (else GEMMA2_ERROR_UNSUPPORTED). USER_DEFINED pieces are matched longest-first after ' ' -> '▁',
     CONTROL / UNKNOWN pieces only with GEMMA2_TOKENIZE_SPECIAL (as transformers does with its special tokens; never
     in SentencePiece, which is the flag off); merges by piece score. UNUSED pieces are never produced (SentencePiece merges
     into them and splits them again; Gemma has none). <start_of_turn> / <end_of_turn> count as special (matched
     only with GEMMA2_TOKENIZE_SPECIAL) although the proto has no flag for it: transformers treats them so.
   - Invalid UTF-8 in the input: each such byte is a symbol of its own and ends as its byte piece (the references
     cannot take such input: SentencePiece would first replace it with U+FFFD). */

/* How Gemma's tokenizer behaves, by example. The ids are the reference tokenizers' (each example is a case of
   tests/data/tokenizer/cases.jsonl, named here; tokenizer/section_examples checks every one against both files).
   - BPE merges. The text becomes characters, ' ' written '▁' (a character of its own), and then the pair of
     neighbours that comes first in the merge list is joined, again and again, until no listed pair is left (with
     tokenizer.model: the pair whose joined piece has the highest score). en_hello_world: "hello world" ->
     17534 "hello", 2134 "▁world": the space stays with the word after it, so "world" at the start of a text and
     after a space are different tokens. Pieces are whatever the merges built: common words whole, rare ones in
     fragments that need not be morphemes.
   - Byte fallback. A character with no piece of its own is written as its UTF-8 bytes, one piece per byte,
     "<0x00>".."<0xFF>" = ids 217..472 (id 217 + byte; but 226, byte 9, is the piece "\t" itself):
     bytes_cjk_ext_b: "\U00020000\U00020001\U0002A6A5" -> 457 377 345 345, 457 377 345 346, 457 387 371 382, the
     first = <0xF0> <0xA0> <0x80> <0x80>. So every text has ids, and no <unk> is produced for ordinary text
     (gemma2__tok_byte_piece).
   - Digits. The vocabulary has a piece for each digit and none for two or more (the SentencePiece model was
     trained with split_digits), so no merge ever joins digits: num_digits_split: "12345" -> 235274 235284 235304
     235310 235308, one token per digit, and a number costs as many tokens as it has digits. Nor is there "▁7":
     a space before a number is a token of its own (235248 "▁").
   - Whitespace runs. There are pieces for runs of 2 to 31 '▁' (139 "▁▁" ... 168, 31 of them), and the merge
     '▁' + '▁' (rank 465 in tokenizer.json) comes before '▁' + a letter (such as '▁' + 'b', rank 1440): a run
     of spaces is merged into one piece first, and it keeps the space that would have started the next word.
     ws_inner_runs: "a  b   c    d     e" -> 235250 "a", 139 "▁▁", 235268 "b", 140 "▁▁▁", 235260 "c", 141 "▁▁▁▁",
     235258 "d", 142 "▁▁▁▁▁", 235249 "e" (the letters without '▁'). Newlines likewise ("\n" 108 ... 31 of them 138),
     and tabs.
   - tokenizer.json vs tokenizer.model. Both are the same vocabulary; tokenizer.json lists the merges in order
     (BPE by rank), tokenizer.model gives each piece a score (BPE by the joined piece's score), and the two
     orders disagree only where pieces can be built in several ways. ws_32_spaces: 32 spaces are 153 153 (16 +
     16: rank order doubles the runs) from tokenizer.json but 168 235248 (31 + 1: the highest-scoring piece
     first) from tokenizer.model, as transformers and SentencePiece give them. And pieces that tokenizer.model
     marks USER_DEFINED are matched whole, where tokenizer.json (whose added_tokens lack the last 32 ids) must
     build them by merges: sp_unused99: "<unused99>" is 255999 from tokenizer.model, 235322 "<", 45526 "unused",
     235315 "9", 235315 "9", 235313 ">" from tokenizer.json. */

#define GEMMA2__TA_SPECIAL 1  /* matched in text only with GEMMA2_TOKENIZE_SPECIAL; never the result of a merge */
#define GEMMA2__TA_CONTROL 2  /* left out by GEMMA2_DETOKENIZE_SKIP_CONTROL */
#define GEMMA2__TA_BYTE    4  /* "<0xNN>": stands for one byte */
#define GEMMA2__TA_UNK     8  /* SentencePiece UNKNOWN: written as unk_surface when skipping control tokens */
#define GEMMA2__TA_MERGE  16  /* SentencePiece: may be the result of a merge (NORMAL, USER_DEFINED) */
#define GEMMA2__TA_MATCH  32  /* matched whole in the text before BPE (added token / user-defined piece) */

enum { GEMMA2__TOK_HF = 0, GEMMA2__TOK_SPM = 1 };

/* Vocabulary ids must fit the 20-bit fields of a merge key. */
#define GEMMA2__TOK_MAX_VOCAB 0xfffff
#define GEMMA2__TOK_MAX_MERGES 0xffffff

/* A merge: the piece it makes and its priority (smaller first). */
typedef struct gemma2__merge { uint32_t prio; int32_t id; } gemma2__merge;
/* A slot of the merge table: key = (hi << 32 | lo) = (left << 44) | (right << 24) | prio, all ones when empty, and
   the piece made. 12 bytes, so that one look-up touches one place (a look-up is most of the encoding time). */
typedef struct gemma2__mslot { uint32_t lo, hi; int32_t id; } gemma2__mslot;

/* The pieces matched whole (added tokens / user-defined pieces) as an Aho-Corasick automaton over their REVERSED
   strings, so that a scan of the text from its end finds, at every position, the longest piece that starts there:
   the node reached after reading text[i..] backwards spells (reversed) the longest text[i..i+k) that ends some piece,
   and the pieces its failure chain ends on are exactly those that start at i. Children are contiguous and sorted by
   byte (binary search), so a step costs O(log 256) and a scan O(n) whatever the pieces (a plain trie walk from every
   position costs the length of the longest partial match, quadratic for a long piece). */
typedef struct gemma2__ac_node {
    int32_t first, fail;  /* first child (index); the node of the longest proper suffix (0 = root) */
    int32_t best[2];      /* the longest piece starting where this node's text starts: [0] without special pieces,
                             [1] with them; -1 if none */
    uint16_t nchild;
    uint8_t byte;
} gemma2__ac_node;

struct gemma2__tokenizer {
    int format;                /* GEMMA2__TOK_* */
    int32_t n;                 /* vocabulary size */
    char *arena;               /* every piece, each followed by a NUL */
    uint32_t *off;             /* [n + 1]: piece i starts at off[i] and has off[i+1] - off[i] - 1 bytes */
    uint8_t *attr;             /* [n] GEMMA2__TA_* */
    uint64_t *ptab;            /* piece -> id: (hash << 32) | (id + 1); 0 = empty */
    uint32_t pmask;
    uint32_t *prio;            /* SentencePiece: [n] merge order: the dense rank of the score, highest first */
    gemma2__mslot *mtab;       /* merges by id pair (open addressing) */
    uint32_t mmask;
    int32_t n_merges;
    gemma2__merge *ascii_pair; /* [128 * 128]: the merge of two ASCII characters' pieces (id -1: none). Most first
                                  look-ups in text are these: 128 KB that stay in cache instead of a miss or two */
    gemma2__ac_node *ac;       /* the pieces matched whole (see above); node 0 is the root; NULL if there are none */
    int32_t n_ac;
    int32_t ac_root[256];      /* the root's step for each byte (its child, or 0) */
    size_t ac_maxlen;          /* the longest piece matched whole */
    /* SentencePiece merges two symbols whenever their concatenation is a piece, even where a symbol is a character
       that is no piece (or a special one). Such characters that can merge get "virtual" ids from n on, so that the
       merge table covers them too; they are never output. */
    uint64_t *vkey;            /* open addressing: a character's key (gemma2__tok_vkey), 0 = empty */
    int32_t *vval;             /* its virtual id */
    uint32_t vmask;
    int32_t n_virtual;
    int32_t byte_id[256];      /* byte fallback piece <0xNN> (-1: none) */
    int32_t char1[128];        /* the piece of each ASCII character (-1: none): the hot path skips the hash */
    int32_t bos, eos, unk;
    int byte_fallback;
    int escape_ws;             /* ' ' -> '▁' before BPE */
    int chunk_words;           /* BPE may run word by word (see above) */
    size_t max_piece;
    char unk_surface[32];
    size_t unk_surface_len;
};

static void gemma2__tokenizer_free(gemma2__tokenizer *t)
{
    if (!t) return;
    GEMMA2_FREE(t->arena);
    GEMMA2_FREE(t->off);
    GEMMA2_FREE(t->attr);
    GEMMA2_FREE(t->ptab);
    GEMMA2_FREE(t->prio);
    GEMMA2_FREE(t->mtab);
    GEMMA2_FREE(t->ascii_pair);
    GEMMA2_FREE(t->ac);
    GEMMA2_FREE(t->vkey);
    GEMMA2_FREE(t->vval);
    GEMMA2_FREE(t);
}

/* A fast string hash (8 bytes per step); only ever compared within one process. The length is mixed in only at the
   end, so that the hashes of all prefixes of a string come from one pass over it (gemma2__tok_spm_pairs). */
#define GEMMA2__TH_SEED 0x9e3779b97f4a7c15ull
static uint64_t gemma2__th_word(uint64_t h, uint64_t w)
{
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    return h ^ (h >> 32);
}
static uint32_t gemma2__th_end(uint64_t h, const char *tail, size_t k, size_t n) /* k < 8 bytes left, n in all */
{
    uint64_t w = 0;
    if (k) { memcpy(&w, tail, k); h = (h ^ w) * 0xff51afd7ed558ccdull; }
    h ^= (uint64_t)n * 0xd6e8feb86659fd93ull;
    h ^= h >> 29;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 32;
    return (uint32_t)h;
}
static uint32_t gemma2__tok_hash(const char *s, size_t n)
{
    uint64_t h = GEMMA2__TH_SEED, w;
    size_t k = n;
    while (k >= 8) {
        memcpy(&w, s, 8);
        h = gemma2__th_word(h, w);
        s += 8;
        k -= 8;
    }
    return gemma2__th_end(h, s, k, n);
}
/* The same kind of hash taken from the end of the string (for suffixes; a table of its own). */
static uint32_t gemma2__tok_rhash(const char *s, size_t n)
{
    uint64_t h = GEMMA2__TH_SEED, w;
    size_t k = n;
    while (k >= 8) {
        memcpy(&w, s + k - 8, 8);
        h = gemma2__th_word(h, w);
        k -= 8;
    }
    return gemma2__th_end(h, s, k, n);
}

static size_t gemma2__tok_len(const gemma2__tokenizer *t, int32_t id) { return t->off[id + 1] - t->off[id] - 1; }
static const char *gemma2__tok_str(const gemma2__tokenizer *t, int32_t id) { return t->arena + t->off[id]; }


/* The id of piece s[0, n) whose hash is h, or -1. */
static int32_t gemma2__tok_find_h(const gemma2__tokenizer *t, const char *s, size_t n, uint32_t h)
{
    uint32_t i = h & t->pmask;
    for (;; i = (i + 1) & t->pmask) {
        uint64_t e = t->ptab[i];
        int32_t id;
        if (!e) return -1;
        if ((uint32_t)(e >> 32) != h) continue;
        id = (int32_t)(uint32_t)e - 1;
        if (gemma2__tok_len(t, id) == n && !memcmp(gemma2__tok_str(t, id), s, n)) return id;
    }
}

static int32_t gemma2__tok_find(const gemma2__tokenizer *t, const char *s, size_t n)
{
    return gemma2__tok_find_h(t, s, n, gemma2__tok_hash(s, n));
}

/* Length of the UTF-8 character at s (1..4), or 1 for a byte that does not start a valid one. */
static size_t gemma2__u8len(const unsigned char *s, size_t n)
{
    unsigned c = s[0], lo = 0x80, hi = 0xbf;
    size_t need, k;
    if (c < 0xc2) return 1;
    if (c < 0xe0) need = 1;
    else if (c < 0xf0) { need = 2; if (c == 0xe0) lo = 0xa0; else if (c == 0xed) hi = 0x9f; }
    else if (c < 0xf5) { need = 3; if (c == 0xf0) lo = 0x90; else if (c == 0xf4) hi = 0x8f; }
    else return 1;
    if (n <= need) return 1;
    if (s[1] < lo || s[1] > hi) return 1;
    for (k = 2; k <= need; k++) if (s[k] < 0x80 || s[k] > 0xbf) return 1;
    return need + 1;
}

/* "<0xNN>" -> NN, or -1. */
static int gemma2__tok_byte_piece(const char *s, size_t n)
{
    int v = 0, k;
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    for (k = 3; k < 5; k++) {
        char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else return -1;
    }
    return v;
}

/* The child of AC node s for byte c, or -1 (binary search: children are sorted). */
static int32_t gemma2__ac_child(const gemma2__tokenizer *t, int32_t s, unsigned c)
{
    int32_t lo = t->ac[s].first, hi = lo + t->ac[s].nchild;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (t->ac[mid].byte < c) lo = mid + 1;
        else hi = mid;
    }
    return lo < t->ac[s].first + t->ac[s].nchild && t->ac[lo].byte == c ? lo : -1;
}

/* The automaton's step from node s on byte c (failure links followed; amortized O(1) steps per byte). */
static int32_t gemma2__ac_next(const gemma2__tokenizer *t, int32_t s, unsigned c)
{
    for (;;) {
        int32_t x;
        if (s == 0) return t->ac_root[c];
        if ((x = gemma2__ac_child(t, s, c)) >= 0) return x;
        s = t->ac[s].fail;
    }
}

/* Builds the automaton of the pieces flagged GEMMA2__TA_MATCH (see gemma2__ac_node): a trie of the reversed strings
   made through a hash of edges (so that a node with many children costs no scan), renumbered breadth-first with
   each node's children together and sorted, then failure links and longest matches in that order. */
static int gemma2__ac_build(gemma2__tokenizer *t)
{
    size_t total = 1, cap = 16, k;
    int32_t i, nn = 1, head, tail;
    uint64_t *edge = NULL;           /* hash of edges: (parent << 8 | byte) + 1, 0 = empty; echild the child */
    int32_t *echild = NULL, *child = NULL, *sib = NULL, *term = NULL, *order = NULL;
    uint8_t *byte = NULL;
    int rc = -1;
    t->n_ac = 0;
    t->ac_maxlen = 0;
    for (i = 0; i < t->n; i++)
        if ((t->attr[i] & GEMMA2__TA_MATCH) && gemma2__tok_len(t, i) > 0) {
            total += gemma2__tok_len(t, i);
            if (gemma2__tok_len(t, i) > t->ac_maxlen) t->ac_maxlen = gemma2__tok_len(t, i);
        }
    if (total == 1) return 0;
    if (total > 0x7ffffffe / 2) return -1;
    while (cap < total * 2) cap *= 2;
    edge = (uint64_t *)GEMMA2_MALLOC(cap * sizeof *edge);
    echild = (int32_t *)GEMMA2_MALLOC(cap * sizeof *echild);
    child = (int32_t *)GEMMA2_MALLOC(total * sizeof *child);
    sib = (int32_t *)GEMMA2_MALLOC(total * sizeof *sib);
    term = (int32_t *)GEMMA2_MALLOC(total * sizeof *term);
    order = (int32_t *)GEMMA2_MALLOC(total * sizeof *order);
    byte = (uint8_t *)GEMMA2_MALLOC(total);
    t->ac = (gemma2__ac_node *)GEMMA2_MALLOC(total * sizeof *t->ac);
    if (!edge || !echild || !child || !sib || !term || !order || !byte || !t->ac) goto done;
    memset(edge, 0, cap * sizeof *edge);
    child[0] = sib[0] = term[0] = -1;
    byte[0] = 0;
    for (i = 0; i < t->n; i++) {
        const unsigned char *s = (const unsigned char *)gemma2__tok_str(t, i);
        size_t len = gemma2__tok_len(t, i);
        int32_t node = 0;
        if (!(t->attr[i] & GEMMA2__TA_MATCH) || len == 0) continue;
        for (k = len; k-- > 0;) {
            uint64_t key = (((uint64_t)(uint32_t)node << 8) | s[k]) + 1;
            size_t j = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (cap - 1);
            while (edge[j] && edge[j] != key) j = (j + 1) & (cap - 1);
            if (!edge[j]) {
                edge[j] = key;
                echild[j] = nn;
                child[nn] = term[nn] = -1;
                byte[nn] = s[k];
                sib[nn] = child[node];
                child[node] = nn;
                nn++;
            }
            node = echild[j];
        }
        if (term[node] < 0) term[node] = i;
    }
    /* breadth-first order; a node's new index is its place in `order`, its children follow each other sorted */
    order[0] = 0;
    for (head = 0, tail = 1; head < tail; head++) {
        int32_t u = order[head], c, first = tail, a, b;
        for (c = child[u]; c >= 0; c = sib[c]) order[tail++] = c;
        /* sort order[first, tail) by byte: insertion sort for a few, else by counting over the 256 values */
        if (tail - first <= 16) {
            for (a = first + 1; a < tail; a++) {
                int32_t x = order[a];
                for (b = a; b > first && byte[order[b - 1]] > byte[x]; b--) order[b] = order[b - 1];
                order[b] = x;
            }
        } else {
            int32_t slot[256];
            for (a = 0; a < 256; a++) slot[a] = -1;
            for (a = first; a < tail; a++) slot[byte[order[a]]] = order[a];
            for (a = 0, b = first; a < 256; a++) if (slot[a] >= 0) order[b++] = slot[a];
        }
        t->ac[head].first = first;
        t->ac[head].nchild = (uint16_t)(tail - first);
        t->ac[head].byte = byte[u];
        t->ac[head].best[0] = t->ac[head].best[1] = term[u]; /* the piece ending here; completed below */
    }
    t->n_ac = nn;
    for (k = 0; k < 256; k++) t->ac_root[k] = 0;
    t->ac[0].fail = 0;
    t->ac[0].best[0] = t->ac[0].best[1] = -1;
    for (head = 0; head < nn; head++) {
        int32_t v, end = t->ac[head].first + t->ac[head].nchild;
        for (v = t->ac[head].first; v < end; v++) {
            unsigned c = t->ac[v].byte;
            int32_t f = 0, own = t->ac[v].best[0], m;
            if (head == 0) t->ac_root[c] = v;
            else f = gemma2__ac_next(t, t->ac[head].fail, c);
            t->ac[v].fail = f;
            for (m = 0; m < 2; m++)
                t->ac[v].best[m] = own >= 0 && (m || !(t->attr[own] & GEMMA2__TA_SPECIAL)) ? own : t->ac[f].best[m];
        }
    }
    rc = 0;
done:
    GEMMA2_FREE(edge);
    GEMMA2_FREE(echild);
    GEMMA2_FREE(child);
    GEMMA2_FREE(sib);
    GEMMA2_FREE(term);
    GEMMA2_FREE(order);
    GEMMA2_FREE(byte);
    return rc;
}

/* Everything after the pieces are known: the piece table, byte and ASCII tables, the automaton of the pieces matched
   whole, checks. */
static int gemma2__tok_finish(gemma2__tokenizer *t, const char *name, char *err, size_t err_size)
{
    uint32_t cap = 16;
    int32_t i;
    while (cap < (uint32_t)t->n * 2u) cap *= 2;
    t->ptab = (uint64_t *)gemma2__calloc(cap, sizeof *t->ptab);
    if (!t->ptab) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
    t->pmask = cap - 1;
    for (i = 0; i < 256; i++) t->byte_id[i] = -1;
    for (i = 0; i < 128; i++) t->char1[i] = -1;
    t->chunk_words = 1;
    t->max_piece = 0;
    for (i = 0; i < t->n; i++) {
        const char *s = gemma2__tok_str(t, i);
        size_t n = gemma2__tok_len(t, i), k;
        uint32_t h = gemma2__tok_hash(s, n), j = h & t->pmask;
        int b;
        for (;; j = (j + 1) & t->pmask) {
            uint64_t e = t->ptab[j];
            int32_t o;
            if (!e) break;
            o = (int32_t)(uint32_t)e - 1;
            if ((uint32_t)(e >> 32) == h && gemma2__tok_len(t, o) == n && !memcmp(gemma2__tok_str(t, o), s, n))
                return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: pieces %d and %d are the same string", name, (int)o, (int)i);
        }
        t->ptab[j] = ((uint64_t)h << 32) | (uint64_t)(uint32_t)(i + 1);
        if (n > t->max_piece) t->max_piece = n;
        if (n == 0 && !(t->attr[i] & (GEMMA2__TA_CONTROL | GEMMA2__TA_UNK)))
            return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: piece %d is empty", name, (int)i);
        if ((t->attr[i] & GEMMA2__TA_BYTE) && (b = gemma2__tok_byte_piece(s, n)) >= 0 && t->byte_id[b] < 0) t->byte_id[b] = i;
        if (n == 1 && (unsigned char)s[0] < 128 && !(t->attr[i] & GEMMA2__TA_SPECIAL)) t->char1[(unsigned char)s[0]] = i;
        /* '▁' (e2 96 81) after anything but another '▁' inside a piece: merges could cross word starts */
        for (k = 1; k + 3 <= n && t->chunk_words; k++)
            if (!memcmp(s + k, "\xe2\x96\x81", 3) && (k < 3 || memcmp(s + k - 3, "\xe2\x96\x81", 3))) t->chunk_words = 0;
    }
    /* tokenizer.json names byte 0x09 "\t" (so that tab-run merges exist): the one-character ASCII pieces stand in
       for missing byte pieces */
    for (i = 0; i < 128; i++) if (t->byte_id[i] < 0) t->byte_id[i] = t->char1[i];
    if (gemma2__ac_build(t) != 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
    return 0;
}

/* The merge of pieces (l, r) into *out; 0 if there is none. */
static int gemma2__tok_merge(const gemma2__tokenizer *t, int32_t l, int32_t r, gemma2__merge *out)
{
    uint64_t pair = ((uint64_t)(uint32_t)l << 20) | (uint64_t)(uint32_t)r;
    uint32_t i;
    if (!t->mtab) return 0;
    for (i = (uint32_t)((pair * 0x9e3779b97f4a7c15ull) >> 40) & t->mmask;; i = (i + 1) & t->mmask) {
        const gemma2__mslot *m = &t->mtab[i];
        uint64_t k = ((uint64_t)m->hi << 32) | m->lo;
        if (k == ~(uint64_t)0) return 0;
        if ((k >> 24) == pair) { out->prio = (uint32_t)(k & 0xffffff); out->id = m->id; return 1; }
    }
}

/* An empty merge table with room for n merges. */
static int gemma2__tok_mtab_new(gemma2__tokenizer *t, size_t n)
{
    uint32_t cap = 16;
    while (cap < n + n / 2) cap *= 2;
    t->mtab = (gemma2__mslot *)GEMMA2_MALLOC((size_t)cap * sizeof *t->mtab);
    if (!t->mtab) return -1;
    memset(t->mtab, 0xff, (size_t)cap * sizeof *t->mtab);
    t->mmask = cap - 1;
    return 0;
}

static int gemma2__tok_ascii_pairs(gemma2__tokenizer *t, const char *name, char *err, size_t err_size)
{
    int a, b;
    t->ascii_pair = (gemma2__merge *)GEMMA2_MALLOC(128 * 128 * sizeof *t->ascii_pair);
    if (!t->ascii_pair) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
    for (a = 0; a < 128; a++)
        for (b = 0; b < 128; b++) {
            gemma2__merge *o = &t->ascii_pair[a * 128 + b];
            if (t->char1[a] < 0 || t->char1[b] < 0 || !gemma2__tok_merge(t, t->char1[a], t->char1[b], o)) { o->prio = 0; o->id = -1; }
        }
    return 0;
}

/* ---- tokenizer.json ---------------------------------------------------- */

/* A string node decoded into buf (which holds at least its raw length); -1 if not a string or badly escaped. */
static int64_t gemma2__tok_jstr(const gemma2__json *j, int32_t node, char *buf)
{
    if (!gemma2__json_is(j, node, GEMMA2__JSTRING)) return -1;
    return gemma2__json_unescape(j, node, buf);
}

/* Only the normalizer Gemma uses is supported: Replace(" " -> "▁"), possibly inside a Sequence. */
static int gemma2__tok_hf_normalizer_ok(const gemma2__json *j, int32_t node)
{
    if (node < 0 || gemma2__json_is(j, node, GEMMA2__JNULL)) return 1;
    if (gemma2__json_streq(j, gemma2__json_get(j, node, "type"), "Sequence")) {
        int32_t seq = gemma2__json_get(j, node, "normalizers"), c;
        if (!gemma2__json_is(j, seq, GEMMA2__JARRAY)) return 0;
        for (c = j->nodes[seq].child; c >= 0; c = j->nodes[c].next) if (!gemma2__tok_hf_normalizer_ok(j, c)) return 0;
        return 1;
    }
    return gemma2__json_streq(j, gemma2__json_get(j, node, "type"), "Replace") &&
           gemma2__json_streq(j, gemma2__json_get(j, gemma2__json_get(j, node, "pattern"), "String"), " ") &&
           gemma2__json_streq(j, gemma2__json_get(j, node, "content"), "\xe2\x96\x81");
}

static void gemma2__tok_merge_put(gemma2__tokenizer *t, uint64_t pair, uint32_t prio, int32_t id)
{
    uint32_t i = (uint32_t)((pair * 0x9e3779b97f4a7c15ull) >> 40) & t->mmask;
    uint64_t k;
    for (;; i = (i + 1) & t->mmask) {
        k = ((uint64_t)t->mtab[i].hi << 32) | t->mtab[i].lo;
        if (k == ~(uint64_t)0 || (k >> 24) == pair) break;
    }
    /* a repeated pair keeps the later rank, as transformers' and transformers.js' maps do */
    k = (pair << 24) | prio;
    t->mtab[i].lo = (uint32_t)k;
    t->mtab[i].hi = (uint32_t)(k >> 32);
    t->mtab[i].id = id;
}

static int gemma2__tok_load_json(gemma2__tokenizer *t, const char *text, size_t size, const char *name, char *err, size_t err_size)
{
    gemma2__json j;
    int32_t root, model, vocab, merges, added, c, *node_of = NULL;
    int64_t maxlen = 0, total = 0;
    char *buf = NULL;
    int rc = 0, id, n = 0, k;
    char jerr[160];
    if (gemma2__json_parse(&j, text, size, jerr, sizeof jerr) != 0) {
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: %s", name, jerr);
    }
#define GEMMA2__TJFAIL(code, ...) do { rc = gemma2__fail(err, err_size, code, __VA_ARGS__); goto done; } while (0)
    root = 0;
    model = gemma2__json_get(&j, root, "model");
    vocab = gemma2__json_get(&j, model, "vocab");
    merges = gemma2__json_get(&j, model, "merges");
    added = gemma2__json_get(&j, root, "added_tokens");
    if (!gemma2__json_is(&j, model, GEMMA2__JOBJECT) || !gemma2__json_is(&j, vocab, GEMMA2__JOBJECT))
        GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: no model.vocab object", name);
    c = gemma2__json_get(&j, model, "type");
    if (c >= 0 && !gemma2__json_streq(&j, c, "BPE")) GEMMA2__TJFAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: model.type is not BPE", name);
    if (!gemma2__tok_hf_normalizer_ok(&j, gemma2__json_get(&j, root, "normalizer")))
        GEMMA2__TJFAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: unsupported normalizer (only Replace \" \" -> \"\xe2\x96\x81\")", name);
    c = gemma2__json_get(&j, root, "pre_tokenizer");
    if (c >= 0 && !gemma2__json_is(&j, c, GEMMA2__JNULL)) GEMMA2__TJFAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: pre_tokenizer is not supported", name);
    if (added >= 0 && !gemma2__json_is(&j, added, GEMMA2__JARRAY)) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: added_tokens is not an array", name);
    if (merges >= 0 && !gemma2__json_is(&j, merges, GEMMA2__JARRAY)) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: model.merges is not an array", name);
    c = gemma2__json_get(&j, model, "byte_fallback");
    t->byte_fallback = gemma2__json_is(&j, c, GEMMA2__JTRUE);
    t->escape_ws = 1;

    /* the vocabulary size: one past the largest id of the vocab and the added tokens */
    for (c = j.nodes[vocab].child; c >= 0; c = j.nodes[j.nodes[c].next].next) {
        if (!gemma2__json_int(&j, j.nodes[c].next, &id) || id < 0 || id >= GEMMA2__TOK_MAX_VOCAB)
            GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: model.vocab: bad or out-of-range id at byte %u", name, (unsigned)j.nodes[j.nodes[c].next].start);
        if (id >= n) n = id + 1;
    }
    if (added >= 0) for (c = j.nodes[added].child; c >= 0; c = j.nodes[c].next) {
        if (!gemma2__json_int(&j, gemma2__json_get(&j, c, "id"), &id) || id < 0 || id >= GEMMA2__TOK_MAX_VOCAB ||
            !gemma2__json_is(&j, gemma2__json_get(&j, c, "content"), GEMMA2__JSTRING))
            GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: added_tokens: an entry without a valid id and content (byte %u)", name, (unsigned)j.nodes[c].start);
        if (id >= n) n = id + 1;
    }
    if (n == 0) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: empty vocabulary", name);
    t->n = n;
    node_of = (int32_t *)GEMMA2_MALLOC((size_t)n * sizeof *node_of);
    t->off = (uint32_t *)GEMMA2_MALLOC(((size_t)n + 1) * sizeof *t->off);
    t->attr = (uint8_t *)gemma2__calloc((size_t)n, 1);
    if (!node_of || !t->off || !t->attr) GEMMA2__TJFAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
    for (k = 0; k < n; k++) node_of[k] = -1;
    for (c = j.nodes[vocab].child; c >= 0; c = j.nodes[j.nodes[c].next].next) {
        gemma2__json_int(&j, j.nodes[c].next, &id);
        if (node_of[id] >= 0) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: model.vocab: id %d appears twice", name, id);
        node_of[id] = c;
        if ((int64_t)j.nodes[c].len > maxlen) maxlen = j.nodes[c].len;
    }
    if (added >= 0) for (c = j.nodes[added].child; c >= 0; c = j.nodes[c].next) {
        int32_t s = gemma2__json_get(&j, c, "content");
        gemma2__json_int(&j, gemma2__json_get(&j, c, "id"), &id);
        if ((int64_t)j.nodes[s].len > maxlen) maxlen = j.nodes[s].len;
        t->attr[id] |= GEMMA2__TA_MATCH;
        if (gemma2__json_is(&j, gemma2__json_get(&j, c, "special"), GEMMA2__JTRUE)) t->attr[id] |= GEMMA2__TA_SPECIAL | GEMMA2__TA_CONTROL;
        if (node_of[id] < 0) node_of[id] = s;
        else if (j.nodes[node_of[id]].len != j.nodes[s].len ||
                 memcmp(j.text + j.nodes[node_of[id]].start, j.text + j.nodes[s].start, j.nodes[s].len))
            GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: added token %d differs from the vocabulary's piece", name, id);
    }
    for (k = 0; k < n; k++) {
        if (node_of[k] < 0) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: no piece has id %d (the ids must be 0..%d)", name, k, n - 1);
        total += (int64_t)j.nodes[node_of[k]].len + 1;
    }
    if (total >= 0xffffffffll) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: vocabulary too large", name);
    t->arena = (char *)GEMMA2_MALLOC((size_t)total);
    buf = (char *)GEMMA2_MALLOC(((size_t)maxlen * 2 + 8) * 16); /* 16 merges at a time, below */
    if (!t->arena || !buf) GEMMA2__TJFAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
    total = 0;
    for (k = 0; k < n; k++) {
        int64_t len = gemma2__tok_jstr(&j, node_of[k], t->arena + total);
        if (len < 0) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: piece %d: bad string escape", name, k);
        t->off[k] = (uint32_t)total;
        total += len;
        t->arena[total++] = 0;
        if (gemma2__tok_byte_piece(t->arena + t->off[k], (size_t)len) >= 0) t->attr[k] |= GEMMA2__TA_BYTE;
    }
    t->off[n] = (uint32_t)total;
    if ((rc = gemma2__tok_finish(t, name, err, err_size)) != 0) goto done;

    c = gemma2__json_get(&j, model, "unk_token");
    t->unk = -1;
    if (gemma2__json_is(&j, c, GEMMA2__JSTRING) && j.nodes[c].len <= (uint32_t)maxlen * 2) {
        int64_t len = gemma2__tok_jstr(&j, c, buf);
        if (len >= 0) t->unk = gemma2__tok_find(t, buf, (size_t)len);
    }
    /* <bos>: what the post-processor prepends; <eos> by name (the file says nothing else about it) */
    t->bos = -1;
    c = gemma2__json_get(&j, gemma2__json_get(&j, root, "post_processor"), "single");
    if (gemma2__json_is(&j, c, GEMMA2__JARRAY) && j.nodes[c].child >= 0) {
        int32_t s = gemma2__json_get(&j, gemma2__json_get(&j, j.nodes[c].child, "SpecialToken"), "id");
        if (gemma2__json_is(&j, s, GEMMA2__JSTRING) && j.nodes[s].len <= (uint32_t)maxlen * 2) {
            int64_t len = gemma2__tok_jstr(&j, s, buf);
            if (len >= 0) t->bos = gemma2__tok_find(t, buf, (size_t)len);
        }
    }
    if (t->bos < 0) t->bos = gemma2__tok_find(t, "<bos>", 5);
    t->eos = gemma2__tok_find(t, "<eos>", 5);

    /* merges: "left right" strings, or [left, right] pairs in newer files */
    if (merges >= 0 && j.nodes[merges].count > 0) {
        int32_t rank = 0;
        if (j.nodes[merges].count > GEMMA2__TOK_MAX_MERGES) GEMMA2__TJFAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: too many merges", name);
        if (gemma2__tok_mtab_new(t, (size_t)j.nodes[merges].count) != 0) GEMMA2__TJFAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
        /* 1.7 M piece look-ups, nearly all cache misses: they are made 16 merges at a time, their table slots
           prefetched first so that the misses overlap */
        c = j.nodes[merges].child;
        while (c >= 0) {
            int64_t bl[16][2];
            uint32_t bh[16][3];
            int nb, q;
            for (nb = 0; nb < 16 && c >= 0; nb++, rank++, c = j.nodes[c].next) {
                int64_t la, lb;
                char *sp, *bb = buf + (size_t)nb * ((size_t)maxlen * 2 + 8);
                if (gemma2__json_is(&j, c, GEMMA2__JSTRING)) {
                    if (j.nodes[c].len > (uint32_t)maxlen * 2) GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: merge %d is too long", name, (int)rank);
                    la = gemma2__tok_jstr(&j, c, bb);
                    if (la < 0 || !(sp = (char *)memchr(bb, ' ', (size_t)la)) || memchr(sp + 1, ' ', (size_t)(bb + la - sp - 1)))
                        GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: merge %d is not \"left right\"", name, (int)rank);
                    lb = bb + la - sp - 1;
                    la = sp - bb;
                    memmove(sp, sp + 1, (size_t)lb); /* bb = left right, contiguous */
                } else if (gemma2__json_is(&j, c, GEMMA2__JARRAY) && j.nodes[c].count == 2) {
                    int32_t x = j.nodes[c].child, y = j.nodes[x].next;
                    if (!gemma2__json_is(&j, x, GEMMA2__JSTRING) || !gemma2__json_is(&j, y, GEMMA2__JSTRING) ||
                        j.nodes[x].len > (uint32_t)maxlen || j.nodes[y].len > (uint32_t)maxlen ||
                        (la = gemma2__tok_jstr(&j, x, bb)) < 0 || (lb = gemma2__tok_jstr(&j, y, bb + la)) < 0)
                        GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: merge %d is not a pair of strings", name, (int)rank);
                } else GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: merge %d is neither a string nor a pair", name, (int)rank);
                bl[nb][0] = la;
                bl[nb][1] = lb;
                bh[nb][0] = gemma2__tok_hash(bb, (size_t)la);
                bh[nb][1] = gemma2__tok_hash(bb + la, (size_t)lb);
                bh[nb][2] = gemma2__tok_hash(bb, (size_t)(la + lb));
                for (q = 0; q < 3; q++) GEMMA2__PREFETCH(&t->ptab[bh[nb][q] & t->pmask]);
            }
            for (q = 0; q < nb; q++) {
                const char *bb = buf + (size_t)q * ((size_t)maxlen * 2 + 8);
                int32_t rk = rank - nb + q;
                int32_t a = gemma2__tok_find_h(t, bb, (size_t)bl[q][0], bh[q][0]);
                int32_t b = gemma2__tok_find_h(t, bb + bl[q][0], (size_t)bl[q][1], bh[q][1]);
                int32_t r = gemma2__tok_find_h(t, bb, (size_t)(bl[q][0] + bl[q][1]), bh[q][2]);
                if (a < 0 || b < 0 || r < 0)
                    GEMMA2__TJFAIL(GEMMA2_ERROR_FORMAT, "%s: merge %d: %s is not in the vocabulary", name, (int)rk,
                                   a < 0 ? "its left piece" : b < 0 ? "its right piece" : "the merged piece");
                /* a merge must never make a special token (they are matched in the text, or are plain text) */
                if (!(t->attr[r] & GEMMA2__TA_SPECIAL)) gemma2__tok_merge_put(t, ((uint64_t)a << 20) | (uint64_t)b, (uint32_t)rk, r);
            }
        }
        t->n_merges = rank;
    }
    rc = gemma2__tok_ascii_pairs(t, name, err, err_size);
done:
#undef GEMMA2__TJFAIL
    GEMMA2_FREE(node_of);
    GEMMA2_FREE(buf);
    gemma2__json_free(&j);
    return rc;
}

/* ---- tokenizer.model (SentencePiece ModelProto) ------------------------- */

/* A protobuf reader over [p, end): fields in order, unknown ones skipped by their wire type. */
typedef struct gemma2__pb { const uint8_t *p, *end; } gemma2__pb;

static int gemma2__pb_varint(gemma2__pb *r, uint64_t *v)
{
    uint64_t x = 0;
    int shift = 0;
    while (r->p < r->end && shift < 64) {
        uint8_t b = *r->p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *v = x; return 1; }
        shift += 7;
    }
    return 0;
}

/* The next field: 1, or 0 at the end, or -1 if malformed. Length-delimited fields give *data and *v = length. */
static int gemma2__pb_next(gemma2__pb *r, uint32_t *field, int *wt, uint64_t *v, const uint8_t **data)
{
    uint64_t key;
    int k;
    if (r->p == r->end) return 0;
    if (!gemma2__pb_varint(r, &key) || (key >> 3) == 0 || (key >> 3) > 0x1fffffff) return -1;
    *field = (uint32_t)(key >> 3);
    *wt = (int)(key & 7);
    switch (*wt) {
    case 0: return gemma2__pb_varint(r, v) ? 1 : -1;
    case 1:
    case 5: {
        int nb = *wt == 1 ? 8 : 4;
        if (r->end - r->p < nb) return -1;
        *v = 0;
        for (k = nb - 1; k >= 0; k--) *v = (*v << 8) | r->p[k];
        r->p += nb;
        return 1;
    }
    case 2:
        if (!gemma2__pb_varint(r, v) || *v > (uint64_t)(r->end - r->p)) return -1;
        *data = r->p;
        r->p += (size_t)*v;
        return 1;
    default: return -1; /* groups (3, 4) are not used by ModelProto */
    }
}

enum { GEMMA2__SPM_NORMAL = 1, GEMMA2__SPM_UNKNOWN = 2, GEMMA2__SPM_CONTROL = 3, GEMMA2__SPM_USER = 4,
       GEMMA2__SPM_UNUSED = 5, GEMMA2__SPM_BYTE = 6 };

/* One SentencePiece message: its piece string, score and type. 0, or -1 if malformed. */
static int gemma2__spm_piece(const uint8_t *data, size_t size, const uint8_t **s, size_t *len, float *score, int *type)
{
    gemma2__pb r;
    uint32_t f;
    int wt, rc;
    uint64_t v;
    const uint8_t *d = NULL;
    r.p = data;
    r.end = data + size;
    *s = NULL;
    *len = 0;
    *score = 0;
    *type = GEMMA2__SPM_NORMAL;
    while ((rc = gemma2__pb_next(&r, &f, &wt, &v, &d)) > 0) {
        if (f == 1 && wt == 2) { *s = d; *len = (size_t)v; }
        else if (f == 2 && wt == 5) { uint32_t u = (uint32_t)v; memcpy(score, &u, 4); }
        else if (f == 3 && wt == 0) *type = (int)(v > 100 ? 100 : v);
    }
    return rc < 0 || !*s ? -1 : 0;
}

#include <stdlib.h> /* qsort */

static int gemma2__u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* A character (1 to 4 bytes) as a nonzero key. */
static uint64_t gemma2__tok_vkey(const char *s, size_t n)
{
    uint32_t w = 0;
    memcpy(&w, s, n);
    return ((uint64_t)n << 32) | w;
}

static uint32_t gemma2__tok_vslot(uint64_t key, uint32_t mask) { return (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & mask; }

/* The virtual id of a character that has no usable piece, or -1 (see gemma2__tokenizer). */
static int32_t gemma2__tok_vfind(const gemma2__tokenizer *t, const char *s, size_t n)
{
    uint64_t key;
    uint32_t i;
    if (!t->vkey || n > 4) return -1;
    key = gemma2__tok_vkey(s, n);
    for (i = gemma2__tok_vslot(key, t->vmask); t->vkey[i]; i = (i + 1) & t->vmask)
        if (t->vkey[i] == key) return t->vval[i];
    return -1;
}

/* The virtual id of character s[0, n), made if new; -1 when out of memory or of ids. */
static int32_t gemma2__tok_vid(gemma2__tokenizer *t, const char *s, size_t n)
{
    int32_t v = gemma2__tok_vfind(t, s, n);
    uint64_t key = gemma2__tok_vkey(s, n);
    uint32_t i;
    if (v >= 0) return v;
    if (t->n + t->n_virtual >= GEMMA2__TOK_MAX_VOCAB) return -1;
    if (!t->vkey || (uint32_t)(t->n_virtual + 1) * 2 > t->vmask) {
        uint32_t nc = t->vkey ? (t->vmask + 1) * 2 : 64, k;
        uint64_t *nk = (uint64_t *)gemma2__calloc(nc, sizeof *nk);
        int32_t *nv = (int32_t *)GEMMA2_MALLOC((size_t)nc * sizeof *nv);
        if (!nk || !nv) { GEMMA2_FREE(nk); GEMMA2_FREE(nv); return -1; }
        for (k = 0; t->vkey && k <= t->vmask; k++)
            if (t->vkey[k]) {
                for (i = gemma2__tok_vslot(t->vkey[k], nc - 1); nk[i]; i = (i + 1) & (nc - 1)) {}
                nk[i] = t->vkey[k];
                nv[i] = t->vval[k];
            }
        GEMMA2_FREE(t->vkey);
        GEMMA2_FREE(t->vval);
        t->vkey = nk;
        t->vval = nv;
        t->vmask = nc - 1;
    }
    for (i = gemma2__tok_vslot(key, t->vmask); t->vkey[i]; i = (i + 1) & t->vmask) {}
    t->vkey[i] = key;
    t->vval[i] = t->n + t->n_virtual;
    return t->n + t->n_virtual++;
}

/* SentencePiece merges any two neighbours whose concatenation is a piece. Every such pair of pieces is listed here
   once, at load, so that encoding looks merges up by id pair, as for tokenizer.json, instead of hashing strings
   (about 600 000 pairs for Gemma). The splits of a piece that matter are at its character boundaries (a symbol
   boundary is a character boundary of the text, and a piece is made of whole symbols), with both halves pieces.
   Trying every split hashes O(len^2) bytes per piece; instead each piece gets its longest proper prefix that is a
   piece (pp) and its longest proper suffix that is a piece (sp), both at its character boundaries, found with
   prefix hashes that one pass yields (and suffix hashes from the end, in a table of their own). The prefix pieces
   of a piece are then the chain pp, pp(pp), ... (a prefix piece shorter than pp is a prefix piece of pp, at one of
   its boundaries), the suffix pieces likewise, and the splits are where the two chains meet: O(len) per piece.
   A half that is one character with no usable piece (none, or a special one) gets a virtual id (see the struct). */
static int gemma2__tok_spm_pairs(gemma2__tokenizer *t, const char *name, char *err, size_t err_size)
{
    uint64_t *pairs = NULL, *rtab = NULL, *hs = NULL;
    int32_t *res = NULL, *pp = NULL, *sp = NULL, *mark = NULL;
    uint32_t *rank = NULL, *stamp = NULL, *bnd = NULL, rmask, cap2 = 16;
    size_t n = 0, cap = 0, k, nr, maxp = t->max_piece;
    int32_t i;
    int rc = GEMMA2_ERROR_OUT_OF_MEMORY;
    while (cap2 < (uint32_t)t->n * 2u) cap2 *= 2;
    rmask = cap2 - 1;
    rtab = (uint64_t *)gemma2__calloc(cap2, sizeof *rtab);
    pp = (int32_t *)GEMMA2_MALLOC((size_t)t->n * sizeof *pp);
    sp = (int32_t *)GEMMA2_MALLOC((size_t)t->n * sizeof *sp);
    mark = (int32_t *)GEMMA2_MALLOC((maxp + 1) * sizeof *mark);
    stamp = (uint32_t *)gemma2__calloc(maxp + 1, sizeof *stamp);
    bnd = (uint32_t *)GEMMA2_MALLOC((maxp + 1) * sizeof *bnd);
    hs = (uint64_t *)GEMMA2_MALLOC((maxp / 8 + 2) * sizeof *hs);
    if (!rtab || !pp || !sp || !mark || !stamp || !bnd || !hs) goto fail;
    for (i = 0; i < t->n; i++) {
        const char *s = gemma2__tok_str(t, i);
        size_t len = gemma2__tok_len(t, i);
        uint32_t h, j;
        if (len == 0) continue;
        h = gemma2__tok_rhash(s, len);
        for (j = h & rmask; rtab[j]; j = (j + 1) & rmask) {}
        rtab[j] = ((uint64_t)h << 32) | (uint64_t)(uint32_t)(i + 1);
    }
    /* pp and sp of every piece */
    for (i = 0; i < t->n; i++) {
        const char *s = gemma2__tok_str(t, i);
        size_t len = gemma2__tok_len(t, i), nb = 0, b, q;
        uint64_t w, h;
        pp[i] = sp[i] = -1;
        if (len == 0) continue;
        for (b = gemma2__u8len((const unsigned char *)s, len); b < len; b += gemma2__u8len((const unsigned char *)s + b, len - b))
            bnd[nb++] = (uint32_t)b; /* the inner character boundaries */
        if (nb == 0) continue;
        /* hs[q]: the hash state after the first q words */
        for (h = GEMMA2__TH_SEED, q = 0; q * 8 + 8 <= len; q++) { hs[q] = h; memcpy(&w, s + q * 8, 8); h = gemma2__th_word(h, w); }
        hs[q] = h;
        for (q = nb; q-- > 0;) {
            b = bnd[q];
            if ((pp[i] = gemma2__tok_find_h(t, s, b, gemma2__th_end(hs[b / 8], s + b / 8 * 8, b % 8, b))) >= 0) break;
        }
        /* the same from the end: hs[q] after the last q words */
        for (h = GEMMA2__TH_SEED, q = 0; q * 8 + 8 <= len; q++) { hs[q] = h; memcpy(&w, s + len - q * 8 - 8, 8); h = gemma2__th_word(h, w); }
        hs[q] = h;
        for (q = 0; q < nb && sp[i] < 0; q++) {
            size_t L = len - bnd[q];
            uint32_t hh = gemma2__th_end(hs[L / 8], s + bnd[q], L % 8, L), j;
            for (j = hh & rmask; rtab[j]; j = (j + 1) & rmask) {
                int32_t o = (int32_t)(uint32_t)rtab[j] - 1;
                if ((uint32_t)(rtab[j] >> 32) == hh && gemma2__tok_len(t, o) == L && !memcmp(gemma2__tok_str(t, o), s + bnd[q], L)) { sp[i] = o; break; }
            }
        }
    }
    GEMMA2_FREE(rtab);
    rtab = NULL;
    /* the pairs: where the prefix chain and the suffix chain of a piece meet */
#define GEMMA2__SPM_PAIR(l, r) do { \
        if (n == cap) { \
            void *p1, *p2; \
            cap = cap ? cap * 2 : 65536; \
            p1 = GEMMA2_REALLOC(pairs, cap * sizeof *pairs); \
            if (p1) pairs = (uint64_t *)p1; \
            p2 = GEMMA2_REALLOC(res, cap * sizeof *res); \
            if (p2) res = (int32_t *)p2; \
            if (!p1 || !p2) goto fail; \
        } \
        pairs[n] = ((uint64_t)(uint32_t)(l) << 20) | (uint64_t)(uint32_t)(r); \
        res[n++] = i; \
    } while (0)
    for (i = 0; i < t->n; i++) {
        const char *s = gemma2__tok_str(t, i);
        size_t len = gemma2__tok_len(t, i), c1, cl, b;
        uint32_t now = (uint32_t)i + 1;
        int32_t q, rest = -1, lastp = -1, vf, vl;
        int fu, lu;
        if (!(t->attr[i] & GEMMA2__TA_MERGE) || len == 0) continue;
        c1 = gemma2__u8len((const unsigned char *)s, len);
        if (c1 >= len) continue; /* one character: no split */
        for (cl = c1; cl + gemma2__u8len((const unsigned char *)s + cl, len - cl) < len;) cl += gemma2__u8len((const unsigned char *)s + cl, len - cl);
        for (q = pp[i]; q >= 0; q = pp[q]) { size_t L = gemma2__tok_len(t, q); mark[L] = q; stamp[L] = now; }
        for (q = sp[i]; q >= 0; q = sp[q]) {
            b = len - gemma2__tok_len(t, q);
            if (b == c1) rest = q;
            if (b == cl) lastp = q;
            if (stamp[b] == now) GEMMA2__SPM_PAIR(mark[b], q);
        }
        /* a first or last character without a usable piece: its virtual id with the other half */
        fu = stamp[c1] == now && !(t->attr[mark[c1]] & GEMMA2__TA_SPECIAL);
        lu = lastp >= 0 && !(t->attr[lastp] & GEMMA2__TA_SPECIAL);
        if (!fu && ((cl == c1 && !lu) || rest >= 0)) {
            if ((vf = gemma2__tok_vid(t, s, c1)) < 0) goto fail;
            if (cl == c1 && !lu) {
                if ((vl = gemma2__tok_vid(t, s + cl, len - cl)) < 0) goto fail;
                GEMMA2__SPM_PAIR(vf, vl);
            } else GEMMA2__SPM_PAIR(vf, rest);
        }
        if (!lu && stamp[cl] == now && !(cl == c1 && !fu)) {
            if ((vl = gemma2__tok_vid(t, s + cl, len - cl)) < 0) goto fail;
            GEMMA2__SPM_PAIR(mark[cl], vl);
        }
    }
#undef GEMMA2__SPM_PAIR
    if (n > GEMMA2__TOK_MAX_MERGES) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: too many merge pairs", name); goto out; }
    /* the table holds 24-bit priorities: the scores become their dense ranks (equal scores stay equal) */
    rank = (uint32_t *)GEMMA2_MALLOC((size_t)t->n * sizeof *rank);
    if (!rank || gemma2__tok_mtab_new(t, n) != 0) goto fail;
    memcpy(rank, t->prio, (size_t)t->n * sizeof *rank);
    qsort(rank, (size_t)t->n, sizeof *rank, gemma2__u32_cmp);
    for (k = 0, nr = 0; k < (size_t)t->n; k++) if (k == 0 || rank[k] != rank[nr - 1]) rank[nr++] = rank[k];
    for (i = 0; i < t->n; i++) {
        size_t lo = 0, hi = nr;
        while (lo < hi) { size_t mid = (lo + hi) / 2; if (rank[mid] < t->prio[i]) lo = mid + 1; else hi = mid; }
        t->prio[i] = (uint32_t)lo;
    }
    for (k = 0; k < n; k++) gemma2__tok_merge_put(t, pairs[k], t->prio[res[k]], res[k]);
    t->n_merges = (int32_t)n;
    rc = 0;
    goto out;
fail:
    rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory (merge pairs)", name);
out:
    GEMMA2_FREE(pairs);
    GEMMA2_FREE(res);
    GEMMA2_FREE(rank);
    GEMMA2_FREE(rtab);
    GEMMA2_FREE(pp);
    GEMMA2_FREE(sp);
    GEMMA2_FREE(mark);
    GEMMA2_FREE(stamp);
    GEMMA2_FREE(bnd);
    GEMMA2_FREE(hs);
    return rc;
}

static int gemma2__tok_load_spm(gemma2__tokenizer *t, const uint8_t *data, size_t size, const char *name, char *err, size_t err_size)
{
    gemma2__pb r, q;
    uint32_t f;
    int wt, rc, model_type = 1, add_dummy = 1, remove_ws = 1, user_byte_fallback = 0;
    uint64_t v, total = 0;
    const uint8_t *d = NULL;
    int64_t unk_id = 0, bos_id = 1, eos_id = 2;
    int32_t n = 0, i;
    size_t charsmap = 0;
    /* pass 1: count the pieces and their bytes, read the trainer and normalizer specs */
    t->escape_ws = 1;
    memcpy(t->unk_surface, " \xe2\x81\x87 ", 5);
    t->unk_surface_len = 5;
    r.p = data;
    r.end = data + size;
    while ((rc = gemma2__pb_next(&r, &f, &wt, &v, &d)) > 0) {
        if (f == 1 && wt == 2) {
            const uint8_t *s;
            size_t len;
            float score;
            int type;
            if (gemma2__spm_piece(d, (size_t)v, &s, &len, &score, &type) != 0)
                return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: piece %d is malformed", name, (int)n);
            if (n >= GEMMA2__TOK_MAX_VOCAB) return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: too many pieces", name);
            n++;
            total += len + 1;
        } else if ((f == 2 || f == 3) && wt == 2) {
            int rc2;
            uint32_t g;
            uint64_t w;
            const uint8_t *e = NULL;
            q.p = d;
            q.end = d + v;
            while ((rc2 = gemma2__pb_next(&q, &g, &wt, &w, &e)) > 0) {
                if (f == 2 && wt == 0) { /* TrainerSpec */
                    if (g == 3) model_type = (int)(w > 100 ? 100 : w);
                    else if (g == 35) user_byte_fallback = w != 0;
                    else if (g == 40) unk_id = (int32_t)w;
                    else if (g == 41) bos_id = (int32_t)w;
                    else if (g == 42) eos_id = (int32_t)w;
                    else if (g == 24 && w) return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: treat_whitespace_as_suffix is not supported", name);
                } else if (f == 2 && wt == 2 && g == 44) {
                    if (w >= sizeof t->unk_surface) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: unk_surface too long", name);
                    memcpy(t->unk_surface, e, (size_t)w);
                    t->unk_surface_len = (size_t)w;
                } else if (f == 3 && wt == 0) { /* NormalizerSpec */
                    if (g == 3) add_dummy = w != 0;
                    else if (g == 4) remove_ws = w != 0;
                    else if (g == 5) t->escape_ws = w != 0;
                } else if (f == 3 && wt == 2 && g == 2) charsmap = (size_t)w;
            }
            if (rc2 < 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: malformed %s", name, f == 2 ? "trainer_spec" : "normalizer_spec");
        }
    }
    if (rc < 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: not a SentencePiece model (malformed protobuf at byte %zu)", name, (size_t)(r.p - data));
    if (n == 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: no pieces (not a SentencePiece model?)", name);
    if (model_type != 2) return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: model_type %d is not BPE", name, model_type);
    if (add_dummy || remove_ws || charsmap)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: normalizer not supported (only identity, without dummy prefix or whitespace removal)", name);
    if (total >= 0xffffffffull) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: vocabulary too large", name);
    t->n = n;
    t->byte_fallback = user_byte_fallback;
    t->arena = (char *)GEMMA2_MALLOC((size_t)total);
    t->off = (uint32_t *)GEMMA2_MALLOC(((size_t)n + 1) * sizeof *t->off);
    t->attr = (uint8_t *)gemma2__calloc((size_t)n, 1);
    t->prio = (uint32_t *)GEMMA2_MALLOC((size_t)n * sizeof *t->prio);
    if (!t->arena || !t->off || !t->attr || !t->prio) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
    /* pass 2: the pieces */
    r.p = data;
    total = 0;
    i = 0;
    while (gemma2__pb_next(&r, &f, &wt, &v, &d) > 0) {
        const uint8_t *s;
        size_t len;
        float score;
        int type;
        uint32_t u;
        uint8_t a = 0;
        if (f != 1 || wt != 2) continue;
        gemma2__spm_piece(d, (size_t)v, &s, &len, &score, &type);
        t->off[i] = (uint32_t)total;
        memcpy(t->arena + total, s, len);
        total += len;
        t->arena[total++] = 0;
        if (score != score) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: piece %d has a NaN score", name, (int)i);
        /* priority: the float's bits turned into an unsigned key that grows as the score falls */
        memcpy(&u, &score, 4);
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
        t->prio[i] = ~u;
        switch (type) {
        case GEMMA2__SPM_NORMAL: a = GEMMA2__TA_MERGE; break;
        /* matched whole in the text only with GEMMA2_TOKENIZE_SPECIAL (as transformers matches its special tokens;
           SentencePiece itself never matches them, which is GEMMA2_TOKENIZE_SPECIAL off) */
        case GEMMA2__SPM_UNKNOWN: a = GEMMA2__TA_MATCH | GEMMA2__TA_SPECIAL | GEMMA2__TA_UNK; break;
        case GEMMA2__SPM_CONTROL: a = GEMMA2__TA_MATCH | GEMMA2__TA_SPECIAL | GEMMA2__TA_CONTROL; break;
        case GEMMA2__SPM_USER:
            /* the chat markers are special for transformers; nothing in the proto says so */
            if ((len == 15 && !memcmp(s, "<start_of_turn>", 15)) || (len == 13 && !memcmp(s, "<end_of_turn>", 13)))
                a = GEMMA2__TA_MATCH | GEMMA2__TA_SPECIAL;
            else a = GEMMA2__TA_MATCH | GEMMA2__TA_MERGE;
            break;
        case GEMMA2__SPM_UNUSED: a = 0; break; /* never produced (SentencePiece re-splits them) */
        case GEMMA2__SPM_BYTE:
            if (gemma2__tok_byte_piece((const char *)s, len) < 0)
                return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: BYTE piece %d is not <0xNN>", name, (int)i);
            a = GEMMA2__TA_BYTE;
            break;
        default: return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: piece %d has unknown type %d", name, (int)i, type);
        }
        t->attr[i] = a;
        i++;
    }
    t->off[n] = (uint32_t)total;
    if ((rc = gemma2__tok_finish(t, name, err, err_size)) != 0) return rc;
    if ((rc = gemma2__tok_spm_pairs(t, name, err, err_size)) != 0 || (rc = gemma2__tok_ascii_pairs(t, name, err, err_size)) != 0) return rc;
    t->unk = unk_id >= 0 && unk_id < n && (t->attr[unk_id] & GEMMA2__TA_UNK) ? (int32_t)unk_id : -1;
    t->bos = bos_id >= 0 && bos_id < n ? (int32_t)bos_id : -1;
    t->eos = eos_id >= 0 && eos_id < n ? (int32_t)eos_id : -1;
    return 0;
}

/* Loads from memory (name is for messages). */
static int gemma2__tokenizer_load_mem(gemma2__tokenizer **out, const uint8_t *data, size_t size, const char *name, char *err, size_t err_size)
{
    gemma2__tokenizer *t;
    size_t i = 0;
    int rc;
    *out = NULL;
    t = (gemma2__tokenizer *)gemma2__calloc(1, sizeof *t);
    if (!t) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", name);
    while (i < size && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r')) i++;
    if (i < size && data[i] == '{') {
        t->format = GEMMA2__TOK_HF;
        rc = gemma2__tok_load_json(t, (const char *)data, size, name, err, err_size);
    } else {
        t->format = GEMMA2__TOK_SPM;
        rc = gemma2__tok_load_spm(t, data, size, name, err, err_size);
    }
    if (rc == 0 && t->unk < 0) {
        /* text with a character that is no piece must still get ids: refuse a file that has neither an unknown piece
           nor byte pieces for all 256 bytes, rather than return ids that are not in the vocabulary */
        int b = 0;
        if (t->byte_fallback) for (b = 0; b < 256 && t->byte_id[b] >= 0; b++) {}
        if (b < 256) rc = gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: no unknown-token piece and no byte fallback "
                                       "for every byte (byte %d): some text would have no ids", name, b);
    }
    if (rc != 0) { gemma2__tokenizer_free(t); return rc; }
    *out = t;
    return 0;
}

/* ---- encoding ------------------------------------------------------------ */

typedef struct gemma2__sym { uint32_t start, len; int32_t id, prev, next; } gemma2__sym;
typedef struct gemma2__cand { uint64_t order; uint32_t len; int32_t id; } gemma2__cand; /* order: priority << 32 | left */

/* A cached word: its text at wtext + text, its ids at wids + ids. */
typedef struct gemma2__centry { uint32_t hash, len; size_t text, ids, n; } gemma2__centry;

/* Per-call state: output, scratch, and the word cache. */
typedef struct gemma2__enc {
    const gemma2__tokenizer *t;
    int32_t *ids;
    int64_t max, n;
    int special;
    gemma2__sym *sym;
    size_t sym_cap;
    gemma2__cand *heap;
    size_t heap_n, heap_cap;
    char *norm;
    size_t norm_cap;
    uint32_t *ctab;            /* word cache: slot -> entry + 1, 0 = empty */
    uint32_t cmask;
    gemma2__centry *cent;
    size_t n_cent, cent_cap;
    char *wtext;
    size_t wtext_n, wtext_cap;
    int32_t *wids;
    size_t wids_n, wids_cap;
    int32_t *lm;               /* the longest whole-matched piece at each position of a stretch of text, or -1 */
    size_t lm_cap;
    int oom;
} gemma2__enc;

static void gemma2__enc_emit(gemma2__enc *e, int32_t id)
{
    if (e->n < e->max) e->ids[e->n] = id;
    e->n++;
}

/* Grows an array to hold need elements; on failure sets *oom and keeps the old one. */
static void *gemma2__grow(void *p, size_t *cap, size_t need, size_t elem, int *oom)
{
    size_t c = *cap ? *cap : 64;
    void *q;
    if (need <= *cap) return p;
    while (c < need && c <= ((size_t)-1 / 2)) c *= 2;
    if (c < need || c > (size_t)-1 / elem || !(q = GEMMA2_REALLOC(p, c * elem))) { *oom = 1; return p; }
    *cap = c;
    return q;
}
#define GEMMA2__GROW(e, ptr, cap, need, T) ((ptr) = (T *)gemma2__grow((ptr), &(cap), (need), sizeof(T), &(e)->oom), !(e)->oom)

static void gemma2__heap_push(gemma2__enc *e, gemma2__cand c)
{
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (e->heap[up].order <= c.order) break;
        e->heap[i] = e->heap[up];
        i = up;
    }
    e->heap[i] = c;
}

static gemma2__cand gemma2__heap_pop(gemma2__enc *e)
{
    gemma2__cand top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && e->heap[c + 1].order < e->heap[c].order) c++;
        if (e->heap[c].order >= last.order) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0) e->heap[i] = last;
    return top;
}

/* Queues the merge of symbol a with its right neighbour, if the model has one. */
static void gemma2__bpe_try(gemma2__enc *e, const char *s, int32_t a)
{
    const gemma2__tokenizer *t = e->t;
    const gemma2__sym *A, *B;
    gemma2__cand c;
    uint32_t key;
    int32_t id;
    gemma2__merge mg;
    unsigned ca, cb;
    if (a < 0 || (A = &e->sym[a])->next < 0) return;
    B = &e->sym[A->next];
    if (A->id < 0 || B->id < 0) return;
    /* both formats: the id pair table (SentencePiece's is built at load from the splits of its pieces, characters
       without a usable piece included through their virtual ids) */
    ca = (unsigned char)s[A->start];
    cb = (unsigned char)s[B->start];
    if (A->len == 1 && B->len == 1 && ca < 128 && cb < 128 && A->id == t->char1[ca] && B->id == t->char1[cb]) {
        mg = t->ascii_pair[ca * 128 + cb];
        if (mg.id < 0) return;
    } else if (!gemma2__tok_merge(t, A->id, B->id, &mg)) return;
    key = mg.prio;
    id = mg.id;
    c.order = ((uint64_t)key << 32) | (uint32_t)a;
    c.len = A->len + B->len;
    c.id = id;
    gemma2__heap_push(e, c);
}

/* BPE over s[0, n) (normalized text, no pieces matched whole inside); the ids are appended to out. */
static void gemma2__bpe(gemma2__enc *e, const char *s, size_t n, int32_t *out, size_t *n_out)
{
    const gemma2__tokenizer *t = e->t;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, k;
    int32_t ns = 0, a;
    if (!GEMMA2__GROW(e, e->sym, e->sym_cap, n, gemma2__sym) || !GEMMA2__GROW(e, e->heap, e->heap_cap, 3 * n + 1, gemma2__cand)) return;
    while (i < n) {
        size_t L = u[i] < 0x80 ? 1 : gemma2__u8len(u + i, n - i);
        int32_t id = L == 1 && u[i] < 0x80 ? t->char1[u[i]] : gemma2__tok_find(t, s + i, L);
        if (id >= 0 && (t->attr[id] & GEMMA2__TA_SPECIAL)) id = -1;
        if (id < 0 && t->vkey) id = gemma2__tok_vfind(t, s + i, L); /* SentencePiece: may still merge */
        if (id < 0 && t->format == GEMMA2__TOK_HF) {
            /* tokenizer.json: an unknown character becomes its byte pieces before merging */
            for (k = 0; k < L; k++, ns++) {
                e->sym[ns].start = (uint32_t)(i + k);
                e->sym[ns].len = 1;
                e->sym[ns].id = t->byte_fallback ? t->byte_id[u[i + k]] : -1;
                e->sym[ns].prev = ns - 1;
                e->sym[ns].next = ns + 1;
            }
        } else {
            e->sym[ns].start = (uint32_t)i;
            e->sym[ns].len = (uint32_t)L;
            e->sym[ns].id = id;
            e->sym[ns].prev = ns - 1;
            e->sym[ns].next = ns + 1;
            ns++;
        }
        i += L;
    }
    if (ns == 0) return;
    e->sym[ns - 1].next = -1;
    e->heap_n = 0;
    for (a = 0; a + 1 < ns; a++) gemma2__bpe_try(e, s, a);
    while (e->heap_n > 0) {
        gemma2__cand c = gemma2__heap_pop(e);
        gemma2__sym *A, *B;
        a = (int32_t)(uint32_t)c.order;
        A = &e->sym[a];
        /* stale entries: a symbol only grows, so an unchanged total length means the same pair */
        if (A->len == 0 || A->next < 0) continue;
        B = &e->sym[A->next];
        if (A->len + B->len != c.len) continue;
        A->id = c.id;
        A->len = c.len;
        B->len = 0;
        A->next = B->next;
        if (B->next >= 0) e->sym[B->next].prev = a;
        gemma2__bpe_try(e, s, A->prev);
        gemma2__bpe_try(e, s, a);
    }
    for (a = 0; a >= 0; a = e->sym[a].next) {
        const gemma2__sym *A = &e->sym[a];
        if (A->id >= 0 && A->id < t->n) out[(*n_out)++] = A->id; /* not a virtual id: a character left unmerged */
        else if (t->byte_fallback) {
            for (k = 0; k < A->len; k++) {
                int32_t b = t->byte_id[u[A->start + k]];
                out[(*n_out)++] = b >= 0 ? b : t->unk;
            }
        } else out[(*n_out)++] = t->unk;
    }
}

/* One word: from the cache, or BPE then cached. A word's ids are at most its bytes. */
static void gemma2__enc_word(gemma2__enc *e, const char *s, size_t n)
{
    uint32_t h, i;
    size_t k, j, first;
    gemma2__centry *ce;
    if (e->oom || n == 0) return;
    if (!e->ctab) {
        /* no cache (short text): straight through */
        size_t cnt = 0;
        if (!GEMMA2__GROW(e, e->wids, e->wids_cap, n, int32_t)) return;
        gemma2__bpe(e, s, n, e->wids, &cnt);
        for (k = 0; k < cnt; k++) gemma2__enc_emit(e, e->wids[k]);
        return;
    }
    h = gemma2__tok_hash(s, n);
    for (i = h & e->cmask;; i = (i + 1) & e->cmask) {
        uint32_t x = e->ctab[i];
        if (!x) break;
        ce = &e->cent[x - 1];
        if (ce->hash == h && ce->len == n && !memcmp(e->wtext + ce->text, s, n)) {
            for (k = 0; k < ce->n; k++) gemma2__enc_emit(e, e->wids[ce->ids + k]);
            return;
        }
    }
    first = e->wids_n;
    if (!GEMMA2__GROW(e, e->wids, e->wids_cap, first + n, int32_t)) return;
    k = first;
    gemma2__bpe(e, s, n, e->wids, &k);
    if (e->oom) return;
    for (j = first; j < k; j++) gemma2__enc_emit(e, e->wids[j]);
    /* cache it while the table is under half full and the word is short (long runs rarely repeat) */
    if (n <= 64 && e->n_cent < (e->cmask + 1) / 2 && GEMMA2__GROW(e, e->cent, e->cent_cap, e->n_cent + 1, gemma2__centry) &&
        GEMMA2__GROW(e, e->wtext, e->wtext_cap, e->wtext_n + n, char)) {
        ce = &e->cent[e->n_cent];
        ce->hash = h;
        ce->len = (uint32_t)n;
        ce->text = e->wtext_n;
        ce->ids = first;
        ce->n = k - first;
        memcpy(e->wtext + e->wtext_n, s, n);
        e->wtext_n += n;
        e->wids_n = k;
        for (i = h & e->cmask; e->ctab[i]; i = (i + 1) & e->cmask) {}
        e->ctab[i] = (uint32_t)++e->n_cent;
    }
}

/* Normalized text without whole-matched pieces: word by word when that is exact (see the top of this section). */
static void gemma2__enc_plain(gemma2__enc *e, const char *s, size_t n)
{
    size_t i = 0, start = 0;
    int prev_ws = 1;
    if (!e->t->chunk_words) {
        size_t cnt = 0;
        if (!GEMMA2__GROW(e, e->wids, e->wids_cap, n, int32_t)) return;
        gemma2__bpe(e, s, n, e->wids, &cnt);
        for (i = 0; i < cnt; i++) gemma2__enc_emit(e, e->wids[i]);
        return;
    }
    while (i < n) {
        if ((unsigned char)s[i] == 0xe2 && i + 2 < n && (unsigned char)s[i + 1] == 0x96 && (unsigned char)s[i + 2] == 0x81) {
            if (!prev_ws && i > start) { gemma2__enc_word(e, s + start, i - start); start = i; }
            prev_ws = 1;
            i += 3;
        } else { prev_ws = 0; i++; }
    }
    gemma2__enc_word(e, s + start, n - start);
}

/* ' ' -> '▁' into e->norm (when the model escapes whitespace); returns the text to encode. */
static const char *gemma2__enc_normalize(gemma2__enc *e, const char *s, size_t n, size_t *out_n)
{
    size_t i, o = 0;
    if (!e->t->escape_ws || !memchr(s, ' ', n)) { *out_n = n; return s; }
    if (!GEMMA2__GROW(e, e->norm, e->norm_cap, 3 * n, char)) { *out_n = 0; return s; }
    for (i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(e->norm + o, "\xe2\x96\x81", 3); o += 3; }
        else e->norm[o++] = s[i];
    }
    *out_n = o;
    return e->norm;
}

GEMMA2_DEF int gemma2_tokenize(const gemma2_model *m, const char *text, size_t len, int32_t *ids, int max_ids, int flags)
{
    const gemma2__tokenizer *t;
    gemma2__enc e;
    const unsigned char *u;
    const char *s;
    size_t i, start, n, mlen = 0;
    int rc;
    if (!m || (!text && len > 0) || max_ids < 0 || (!ids && max_ids > 0) ||
        (flags & ~(GEMMA2_TOKENIZE_ADD_BOS | GEMMA2_TOKENIZE_SPECIAL)) || len > (size_t)INT_MAX - 2)
        return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (!(t = m->tok)) return GEMMA2_ERROR_NO_TOKENIZER;
    memset(&e, 0, sizeof e);
    e.t = t;
    e.ids = ids;
    e.max = max_ids;
    e.special = (flags & GEMMA2_TOKENIZE_SPECIAL) != 0;
    if ((flags & GEMMA2_TOKENIZE_ADD_BOS) && t->bos >= 0) gemma2__enc_emit(&e, t->bos);
    if (len >= 4096 && t->chunk_words) {
        /* a word cache pays off on longer texts */
        uint32_t cap = 1024;
        while (cap < len / 4 && cap < (1u << 20)) cap *= 2;
        e.ctab = (uint32_t *)gemma2__calloc(cap, sizeof *e.ctab);
        e.cmask = cap - 1;
    }
    /* tokenizer.json cuts added tokens out of the raw text; SentencePiece matches user-defined pieces after ' ' -> '▁' */
    if (t->format == GEMMA2__TOK_SPM) { s = gemma2__enc_normalize(&e, text ? text : "", len, &n); }
    else { s = text ? text : ""; n = len; }
    u = (const unsigned char *)s;
    /* Pieces matched whole, leftmost-longest: from position i, the longest one that starts there, else the next
       character. The automaton gives the longest piece at every position of a stretch [i, end) from one scan of the
       text backwards from end + ac_maxlen (what lies further cannot change a match in the stretch); stretches of at
       least ac_maxlen bytes keep the scan O(n) in all. */
    for (i = start = 0; i < n && !e.oom && t->ac;) {
        size_t seg = i, end = n - i > GEMMA2__MAX(t->ac_maxlen, (size_t)65536) ? i + GEMMA2__MAX(t->ac_maxlen, (size_t)65536) : n;
        size_t j = n - end > t->ac_maxlen ? end + t->ac_maxlen : n;
        int32_t st = 0;
        if (!GEMMA2__GROW(&e, e.lm, e.lm_cap, end - seg, int32_t)) break;
        while (j > seg) {
            st = gemma2__ac_next(t, st, u[--j]);
            if (j < end) e.lm[j - seg] = t->ac[st].best[e.special];
        }
        while (i < end && !e.oom) {
            int32_t id = e.lm[i - seg];
            if (id >= 0) {
                mlen = gemma2__tok_len(t, id);
                if (i > start) {
                    if (t->format == GEMMA2__TOK_HF) {
                        size_t nn;
                        const char *p = gemma2__enc_normalize(&e, s + start, i - start, &nn);
                        gemma2__enc_plain(&e, p, nn);
                    } else gemma2__enc_plain(&e, s + start, i - start);
                }
                gemma2__enc_emit(&e, id);
                i += mlen;
                start = i;
            } else i += u[i] < 0x80 ? 1 : gemma2__u8len(u + i, n - i);
        }
    }
    if (start < n && !e.oom) {
        if (t->format == GEMMA2__TOK_HF) {
            size_t nn;
            const char *p = gemma2__enc_normalize(&e, s + start, n - start, &nn);
            gemma2__enc_plain(&e, p, nn);
        } else gemma2__enc_plain(&e, s + start, n - start);
    }
    rc = e.oom ? GEMMA2_ERROR_OUT_OF_MEMORY : (int)e.n;
    GEMMA2_FREE(e.sym);
    GEMMA2_FREE(e.heap);
    GEMMA2_FREE(e.norm);
    GEMMA2_FREE(e.ctab);
    GEMMA2_FREE(e.cent);
    GEMMA2_FREE(e.wtext);
    GEMMA2_FREE(e.wids);
    GEMMA2_FREE(e.lm);
    return rc;
}

/* ---- decoding ------------------------------------------------------------ */

typedef struct gemma2__sink { char *out; size_t cap, n; } gemma2__sink;

static void gemma2__sink_put(gemma2__sink *k, const char *p, size_t n)
{
    if (k->n < k->cap) memcpy(k->out + k->n, p, GEMMA2__MIN(n, k->cap - k->n));
    k->n += n;
}

/* The bytes held are not a character: U+FFFD for them (one, or one per byte as SentencePiece). */
static void gemma2__u8_bad(gemma2_detok *d, gemma2__sink *k, int per_byte)
{
    int r = per_byte ? d->n_pend : 1;
    while (r-- > 0) gemma2__sink_put(k, "\xef\xbf\xbd", 3);
    d->n_pend = d->need = 0;
}

/* Feeds one byte to the UTF-8 check; complete characters go to the sink. Invalid input is replaced by U+FFFD per
   maximal invalid subsequence (the Unicode "best practice" that TextDecoder and Python follow). */
static void gemma2__u8_feed(gemma2_detok *d, gemma2__sink *k, unsigned char b, int per_byte)
{
    if (d->need) {
        if (b >= d->lo && b <= d->hi) {
            d->pend[d->n_pend++] = b;
            d->lo = 0x80;
            d->hi = 0xbf;
            if (--d->need == 0) { gemma2__sink_put(k, (const char *)d->pend, (size_t)d->n_pend); d->n_pend = 0; }
            return;
        }
        gemma2__u8_bad(d, k, per_byte); /* then b starts afresh */
    }
    if (b < 0x80) { char c = (char)b; gemma2__sink_put(k, &c, 1); return; }
    d->lo = 0x80;
    d->hi = 0xbf;
    if (b >= 0xc2 && b < 0xe0) d->need = 1;
    else if (b >= 0xe0 && b < 0xf0) { d->need = 2; if (b == 0xe0) d->lo = 0xa0; else if (b == 0xed) d->hi = 0x9f; }
    else if (b >= 0xf0 && b < 0xf5) { d->need = 3; if (b == 0xf0) d->lo = 0x90; else if (b == 0xf4) d->hi = 0x8f; }
    else { gemma2__sink_put(k, "\xef\xbf\xbd", 3); return; }
    d->pend[0] = b;
    d->n_pend = 1;
}

static void gemma2__u8_end(gemma2_detok *d, gemma2__sink *k, int per_byte)
{
    if (d->need) gemma2__u8_bad(d, k, per_byte);
}

static void gemma2__u8_put(gemma2_detok *d, gemma2__sink *k, const char *p, size_t n, int utf8, int per_byte)
{
    size_t i;
    if (!utf8) { gemma2__sink_put(k, p, n); return; }
    for (i = 0; i < n; i++) gemma2__u8_feed(d, k, (unsigned char)p[i], per_byte);
}

/* One token's text into the sink. d carries an unfinished character between byte tokens (GEMMA2_DETOKENIZE_UTF8). */
static void gemma2__detok_one(const gemma2__tokenizer *t, gemma2_detok *d, int32_t id, int flags, gemma2__sink *k)
{
    int utf8 = (flags & GEMMA2_DETOKENIZE_UTF8) != 0, spm = t->format == GEMMA2__TOK_SPM;
    uint8_t a = t->attr[id];
    const char *s = gemma2__tok_str(t, id);
    size_t n = gemma2__tok_len(t, id), i, j;
    if (flags & GEMMA2_DETOKENIZE_SKIP_CONTROL) {
        /* transformers drops special ids before decoding (a byte run goes on across them); SentencePiece ends the
           run at a control token, and writes UNKNOWN as its unk_surface */
        if (a & GEMMA2__TA_CONTROL) { if (spm && utf8) gemma2__u8_end(d, k, spm); return; }
        if (spm && (a & GEMMA2__TA_UNK)) {
            if (utf8) gemma2__u8_end(d, k, spm);
            gemma2__u8_put(d, k, t->unk_surface, t->unk_surface_len, utf8, spm);
            return;
        }
    }
    if (a & GEMMA2__TA_BYTE) {
        char c = (char)gemma2__tok_byte_piece(s, n);
        gemma2__u8_put(d, k, &c, 1, utf8, spm);
        return;
    }
    if (utf8) gemma2__u8_end(d, k, spm); /* any other token ends a run of byte tokens */
    for (i = j = 0; i + 3 <= n; i++) {
        if (s[i] == '\xe2' && s[i + 1] == '\x96' && s[i + 2] == '\x81') {
            gemma2__u8_put(d, k, s + j, i - j, utf8, spm);
            gemma2__u8_put(d, k, " ", 1, utf8, spm);
            i += 2;
            j = i + 1;
        }
    }
    gemma2__u8_put(d, k, s + j, n - j, utf8, spm);
}

GEMMA2_DEF int gemma2_detokenize(const gemma2_model *m, const int32_t *ids, int n, char *out, size_t cap, int flags)
{
    const gemma2__tokenizer *t;
    gemma2_detok d;
    gemma2__sink k;
    int i;
    if (!m || n < 0 || (!ids && n > 0) || (!out && cap > 0) ||
        (flags & ~(GEMMA2_DETOKENIZE_SKIP_CONTROL | GEMMA2_DETOKENIZE_UTF8)))
        return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (!(t = m->tok)) return GEMMA2_ERROR_NO_TOKENIZER;
    for (i = 0; i < n; i++) if (ids[i] < 0 || ids[i] >= t->n) return GEMMA2_ERROR_BAD_TOKEN;
    memset(&d, 0, sizeof d);
    k.out = out;
    k.cap = cap;
    k.n = 0;
    for (i = 0; i < n; i++) gemma2__detok_one(t, &d, ids[i], flags, &k);
    gemma2__u8_end(&d, &k, t->format == GEMMA2__TOK_SPM);
    if (k.n > (size_t)INT_MAX) return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (k.n < cap) out[k.n] = 0; /* as gemma2_chat_render: a C string whenever there is room */
    return (int)k.n;
}

GEMMA2_DEF int gemma2_has_tokenizer(const gemma2_model *m) { return m && m->tok ? 1 : 0; }

GEMMA2_DEF void gemma2_detok_init(gemma2_detok *d, const gemma2_model *m, int flags)
{
    if (!d) return;
    memset(d, 0, sizeof *d);
    d->m = m;
    d->flags = flags | GEMMA2_DETOKENIZE_UTF8;
}

/* push (id >= 0) or flush (id < 0): counted first, written only if it fits */
static int gemma2__detok_step(gemma2_detok *d, int32_t id, int flush, char *out, size_t cap)
{
    const gemma2__tokenizer *t;
    gemma2_detok tmp;
    gemma2__sink k;
    /* unknown flags given to gemma2_detok_init (which cannot fail) are refused here, as gemma2_detokenize does */
    if (!d || !d->m || (!out && cap > 0) || (d->flags & ~(GEMMA2_DETOKENIZE_SKIP_CONTROL | GEMMA2_DETOKENIZE_UTF8)))
        return GEMMA2_ERROR_INVALID_ARGUMENT;
    if (!(t = d->m->tok)) return GEMMA2_ERROR_NO_TOKENIZER;
    if (!flush && (id < 0 || id >= t->n)) return GEMMA2_ERROR_BAD_TOKEN;
    tmp = *d;
    k.out = NULL;
    k.cap = 0;
    k.n = 0;
    if (flush) gemma2__u8_end(&tmp, &k, t->format == GEMMA2__TOK_SPM);
    else gemma2__detok_one(t, &tmp, id, d->flags, &k);
    if (k.n > cap) return k.n > (size_t)INT_MAX ? GEMMA2_ERROR_INVALID_ARGUMENT : (int)k.n;
    k.out = out;
    k.cap = cap;
    k.n = 0;
    if (flush) gemma2__u8_end(d, &k, t->format == GEMMA2__TOK_SPM);
    else gemma2__detok_one(t, d, id, d->flags, &k);
    return (int)k.n;
}

GEMMA2_DEF int gemma2_detok_push(gemma2_detok *d, int32_t id, char *out, size_t cap) { return gemma2__detok_step(d, id, 0, out, cap); }
GEMMA2_DEF int gemma2_detok_flush(gemma2_detok *d, char *out, size_t cap) { return gemma2__detok_step(d, -1, 1, out, cap); }

/* ---- token details ----------------------------------------------------------- */

GEMMA2_DEF const char *gemma2_token_piece(const gemma2_model *m, int32_t id, size_t *len)
{
    if (len) *len = 0;
    if (!m || !m->tok || id < 0 || id >= m->tok->n) return NULL;
    if (len) *len = gemma2__tok_len(m->tok, id);
    return gemma2__tok_str(m->tok, id);
}

GEMMA2_DEF int32_t gemma2_token_id(const gemma2_model *m, const char *piece, size_t len)
{
    if (!m || !m->tok || (!piece && len > 0)) return -1;
    return gemma2__tok_find(m->tok, piece ? piece : "", len);
}

GEMMA2_DEF int gemma2_token_is_special(const gemma2_model *m, int32_t id)
{
    return m && m->tok && id >= 0 && id < m->tok->n && (m->tok->attr[id] & GEMMA2__TA_SPECIAL) != 0;
}

GEMMA2_DEF int gemma2_token_is_control(const gemma2_model *m, int32_t id)
{
    return m && m->tok && id >= 0 && id < m->tok->n && (m->tok->attr[id] & GEMMA2__TA_CONTROL) != 0;
}

GEMMA2_DEF gemma2_model *gemma2_load_tokenizer(const char *path, char *err, size_t err_size)
{
    gemma2_model *m;
    if (!path) { gemma2__fail(err, err_size, 0, "gemma2_load_tokenizer: path is NULL"); return NULL; }
    m = (gemma2_model *)gemma2__calloc(1, sizeof *m);
    if (!m) { gemma2__fail(err, err_size, 0, "%s: out of memory", path); return NULL; }
    if (gemma2__tokenizer_load(&m->tok, path, err, err_size) != 0) { GEMMA2_FREE(m); return NULL; }
    m->opt.tokenizer_only = 1;
    m->cfg.vocab_size = m->tok->n;
    m->cfg.bos_token_id = m->tok->bos;
    m->cfg.pad_token_id = -1;
    if (m->tok->eos >= 0) { m->cfg.n_eos = 1; m->cfg.eos_token_ids[0] = m->tok->eos; }
    return m;
}

GEMMA2_DEF int32_t gemma2_token_bos(const gemma2_model *m) { return m && m->tok ? m->tok->bos : -1; }
GEMMA2_DEF int32_t gemma2_token_eos(const gemma2_model *m) { return m && m->tok ? m->tok->eos : -1; }

/* ===========================================================================
   2.10 Loading: JSON, files, safetensors, config, weights; saving quantized checkpoints
   =========================================================================== */

/* ---- JSON reader --------------------------------------------------------------------------- */

/* Parses a whole JSON text into a flat array of nodes (a DOM without pointers).
   Strings are kept as spans of the source text (still escaped); numbers too.
   Every node knows its first child and next sibling, so walking is cheap; an
   object's children alternate key, value. Depth is bounded (no stack overflow on
   hostile input) and every byte is checked (no reads past the end). tokenizer.json
   is 17.5 MB with ~2.2 M nodes: the parser is a single pass with no per-node
   allocation. */

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

/* ---- JSON reader: the public wrappers ------------------------------------------------------- */

struct gemma2_json { gemma2__json doc; };

static int gemma2__json_node_ok(const gemma2_json *j, int node) { return j && node >= 0 && node < j->doc.n; }

GEMMA2_DEF gemma2_json *gemma2_json_parse(const char *text, size_t size, char *err, size_t err_size)
{
    gemma2_json *j;
    if (!text && size > 0) { gemma2__fail(err, err_size, 0, "gemma2_json_parse: text is NULL"); return NULL; }
    j = (gemma2_json *)gemma2__calloc(1, sizeof *j);
    if (!j) { gemma2__fail(err, err_size, 0, "out of memory parsing JSON"); return NULL; }
    if (gemma2__json_parse(&j->doc, text ? text : "", size, err, err_size) != 0) {
        gemma2__json_free(&j->doc);
        GEMMA2_FREE(j);
        return NULL;
    }
    return j;
}

GEMMA2_DEF void gemma2_json_free(gemma2_json *j)
{
    if (!j) return;
    gemma2__json_free(&j->doc);
    GEMMA2_FREE(j);
}

GEMMA2_DEF int gemma2_json_type(const gemma2_json *j, int node) { return gemma2__json_node_ok(j, node) ? j->doc.nodes[node].type : -1; }

GEMMA2_DEF int gemma2_json_count(const gemma2_json *j, int node)
{
    if (!gemma2__json_node_ok(j, node)) return 0;
    return j->doc.nodes[node].type == GEMMA2__JOBJECT ? j->doc.nodes[node].count / 2 : j->doc.nodes[node].count;
}

GEMMA2_DEF int gemma2_json_child(const gemma2_json *j, int node) { return gemma2__json_node_ok(j, node) ? j->doc.nodes[node].child : -1; }
GEMMA2_DEF int gemma2_json_next(const gemma2_json *j, int node) { return gemma2__json_node_ok(j, node) ? j->doc.nodes[node].next : -1; }

GEMMA2_DEF int gemma2_json_get(const gemma2_json *j, int obj, const char *key)
{
    return gemma2__json_node_ok(j, obj) && key ? gemma2__json_get(&j->doc, obj, key) : -1;
}

GEMMA2_DEF int gemma2_json_number(const gemma2_json *j, int node, double *out)
{
    return gemma2__json_node_ok(j, node) && out ? gemma2__json_number(&j->doc, node, out) : 0;
}

GEMMA2_DEF int64_t gemma2_json_string(const gemma2_json *j, int node, char *out, size_t cap)
{
    char *tmp;
    int64_t n;
    if (!gemma2__json_node_ok(j, node) || j->doc.nodes[node].type != GEMMA2__JSTRING || (cap > 0 && !out))
        return GEMMA2_ERROR_INVALID_ARGUMENT;
    /* unescaping writes up to the raw length, which may exceed cap: decode into a scratch copy */
    tmp = (char *)GEMMA2_MALLOC((size_t)j->doc.nodes[node].len + 1);
    if (!tmp) return GEMMA2_ERROR_OUT_OF_MEMORY;
    n = gemma2__json_unescape(&j->doc, node, tmp);
    if (n < 0) { GEMMA2_FREE(tmp); return GEMMA2_ERROR_FORMAT; }
    if (cap > 0) {
        memcpy(out, tmp, (size_t)GEMMA2__MIN((uint64_t)n, (uint64_t)cap));
        if ((uint64_t)n < cap) out[n] = 0;
    }
    GEMMA2_FREE(tmp);
    return n;
}

/* ---- files: mapping and reading ------------------------------------------------------------ */

/* A file's bytes, mapped read-only where the OS allows (so multi-GB weights cost no copy
   and no RSS until touched, and pages are shared between processes), else read into memory.

   Why mapping is the default. Measured on Linux 6.18 / ext4, 2 cores, 2B bf16 weights, the
   mapped and the preloaded model loaded side by side and timed in alternation (tests/bench_model,
   which also counts page faults): prefill and decode agree within the run-to-run noise (0.95-1.08
   either way), and after the first prompt neither takes a page fault. The file arrives in the
   page cache in 2 MiB folios when read through the aligned, huge-page-advised mapping below
   (smaps FilePmdMapped = the whole file; ~2.5k faults to map 5.2 GB), so the TLB sees what it
   sees with anonymous huge pages. A file still cached in 4 KiB pages (just written or copied)
   costs ~80k faults on first touch (the kernel maps 16 pages per fault) and streamed no slower.
   Where the mapping loses is a cold page cache: the first prompt then reads the file from disk
   as it first touches each page. The kernel's fault-time readahead overlaps most of that read
   with the arithmetic (a cold 512-token prompt took 14.4-14.7 s against 13.3-13.8 s warm, for
   a file that takes 3.9 s to read at this disk's 1.3 GB/s), while preloading pays all of it
   before the prompt (load 2.8-3.5 s). Two ways to hide the rest did not work: posix_fadvise /
   MADV_WILLNEED read only the first few hundred KB (Linux caps one hint at the readahead
   size), and a background thread faulting the weights in (MADV_POPULATE_READ) in the forward
   pass's order made the cold first prompt 0.6-1.7 s slower, taking CPU from the two compute
   threads. Preloading is still the choice where the page cache is under pressure: clean file
   pages are the first thing the kernel reclaims, and a mapped model then rereads them from
   disk, while anonymous memory (with no swap) stays. */
struct gemma2__file {
    const uint8_t *data;
    size_t size;
    int mapped;     /* 1: data maps the file, 2: anonymous memory holding a copy (preload), both
                       released with munmap; 0: data is an allocation */
#ifdef GEMMA2__WINDOWS
    void *hfile, *hmap;
#endif
};

#if defined(GEMMA2__WINDOWS)
/* windows.h is in (2.1): files are read with ReadFile whether or not they are mapped */
#elif defined(__unix__) || defined(__APPLE__)
/* open/fstat/read also without mapping: only they can refuse a FIFO or a folder before blocking
   on it or reading garbage (stdio's fopen waits for a FIFO's writer) */
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#define GEMMA2__POSIX_FILES 1
#if !defined(GEMMA2_NO_MMAP)
#include <sys/mman.h>
#define GEMMA2__POSIX_MMAP 1
#endif
#endif

/* Whether this build can ask for 2 MiB pages (documented under BUILD SWITCHES). The fallback is
   silent at run time (the weights still load, only with more TLB misses), so a build that must
   not lose them says so with GEMMA2_REQUIRE_HUGEPAGES; the usual cause is strict -std=c99 with a
   system header included before this file, which hides MAP_ANONYMOUS and madvise. */
#if defined(GEMMA2__POSIX_MMAP) && (defined(MAP_ANONYMOUS) || defined(MAP_ANON)) && defined(MADV_HUGEPAGE)
#define GEMMA2_HUGEPAGES 1
#else
#define GEMMA2_HUGEPAGES 0
#endif
#if defined(GEMMA2_REQUIRE_HUGEPAGES) && !GEMMA2_HUGEPAGES
#error "gemma2.h: GEMMA2_REQUIRE_HUGEPAGES, but MAP_ANONYMOUS or madvise(MADV_HUGEPAGE) is not declared: include gemma2.h before any system header, define _DEFAULT_SOURCE, or build in a GNU mode (-std=gnu99)"
#endif

/* Every file is checked to be a regular file (symlinks are followed: the Hugging Face cache links
   each file of a snapshot to a blob) before it is read: a folder has no size to read (stdio's
   ftell says LONG_MAX), and opening a FIFO for reading waits for a writer, forever. On POSIX
   the check is on the descriptor that is then read (O_NONBLOCK: the open itself must not wait;
   it changes nothing for a regular file); under GEMMA2_NO_MMAP, plain stdio, a folder fails at
   its first read, and a FIFO can still block (stdio has no way to ask). */

#if defined(GEMMA2__POSIX_FILES)
#include <errno.h>

/* Opens path for reading if it is a regular file; *fd, *size. Else a one-line reason. */
static int gemma2__open_regular(const char *path, int *fd, size_t *size, char *err, size_t err_size)
{
    struct stat st;
    const char *kind;
    *fd = open(path, O_RDONLY | O_NONBLOCK);
#ifdef EOVERFLOW
    /* a 32-bit build without large-file offsets cannot open (or, on some systems, stat) a file of
       2 GiB or more */
    if (*fd < 0 && errno == EOVERFLOW)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: too large for this build's address space", path);
#endif
    if (*fd < 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot open", path);
    if (fstat(*fd, &st) != 0) {
        int too_large = 0;
#ifdef EOVERFLOW
        too_large = errno == EOVERFLOW;
#endif
        close(*fd);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, too_large ? "%s: too large for this build's address space" : "%s: cannot stat", path);
    }
    if (!S_ISREG(st.st_mode)) {
        kind = S_ISDIR(st.st_mode) ? " (it is a folder)" : S_ISFIFO(st.st_mode) ? " (it is a FIFO)" :
               S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? " (it is a device)" : "";
        close(*fd);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: is not a regular file%s", path, kind);
    }
    if (st.st_size < 0 || (uint64_t)st.st_size >= (uint64_t)((size_t)-1 / 2)) {
        close(*fd);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: too large for this build's address space", path);
    }
    *size = (size_t)st.st_size;
    return 0;
}

/* n bytes from fd into buf; 0 if they all came. */
static int gemma2__read_fd(int fd, uint8_t *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t got = read(fd, buf + done, GEMMA2__MIN(n - done, (size_t)1 << 30));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        done += (size_t)got;
    }
    return 0;
}
#elif defined(GEMMA2__WINDOWS)
/* Opens path for reading if it is a regular file; *h, *size. A folder opens with no CreateFile
   flags used here: say why instead of "cannot open". FILE_SHARE_DELETE, as on POSIX, lets the
   files of a loaded model be deleted or replaced (the open handle keeps the old contents). */
static int gemma2__open_regular(const char *path, HANDLE *h, size_t *size, char *err, size_t err_size)
{
    LARGE_INTEGER sz;
    wchar_t *w = gemma2__wpath(path);
    DWORD a;
    if (!w) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot open (not a valid path)", path);
    a = GetFileAttributesW(w);
    if (a != INVALID_FILE_ATTRIBUTES && (a & FILE_ATTRIBUTE_DIRECTORY)) {
        GEMMA2_FREE(w);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: is not a regular file (it is a folder)", path);
    }
    *h = CreateFileW(w, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_DELETE, NULL, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    GEMMA2_FREE(w);
    if (*h == INVALID_HANDLE_VALUE) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot open", path);
    if (GetFileType(*h) != FILE_TYPE_DISK) { /* a pipe or a device */
        CloseHandle(*h);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: is not a regular file", path);
    }
    if (!GetFileSizeEx(*h, &sz)) { CloseHandle(*h); return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot stat", path); }
    if (sz.QuadPart < 0 || (uint64_t)sz.QuadPart >= (uint64_t)((size_t)-1 / 2)) {
        CloseHandle(*h);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: too large for this build's address space", path);
    }
    *size = (size_t)sz.QuadPart;
    return 0;
}

/* n bytes from h into buf; 0 if they all came. */
static int gemma2__read_handle(HANDLE h, uint8_t *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        DWORD got = 0, want = (DWORD)GEMMA2__MIN(n - done, (size_t)1 << 30);
        if (!ReadFile(h, buf + done, want, &got, NULL) || got == 0) return -1;
        done += got;
    }
    return 0;
}
#endif

/* Reads a whole file (the fallback, and for small files). */
static int gemma2__file_read(gemma2__file *f, const char *path, char *err, size_t err_size)
{
#if defined(GEMMA2__POSIX_FILES)
    size_t n = 0;
    int fd, rc;
    uint8_t *buf;
    memset(f, 0, sizeof *f);
    if ((rc = gemma2__open_regular(path, &fd, &n, err, err_size)) != 0) return rc;
    buf = (uint8_t *)GEMMA2_MALLOC(n + 1);
    if (!buf) { close(fd); return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory (%zu bytes)", path, n); }
    rc = gemma2__read_fd(fd, buf, n);
    close(fd);
    if (rc != 0) { GEMMA2_FREE(buf); return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: read error", path); }
#elif defined(GEMMA2__WINDOWS)
    size_t n;
    HANDLE h;
    int rc;
    uint8_t *buf;
    memset(f, 0, sizeof *f);
    if ((rc = gemma2__open_regular(path, &h, &n, err, err_size)) != 0) return rc;
    buf = (uint8_t *)GEMMA2_MALLOC(n + 1);
    if (!buf) { CloseHandle(h); return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory (%zu bytes)", path, n); }
    rc = gemma2__read_handle(h, buf, n);
    CloseHandle(h);
    if (rc != 0) { GEMMA2_FREE(buf); return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: read error", path); }
#else
    FILE *fp;
    long n;
    uint8_t *buf;
    memset(f, 0, sizeof *f);
    if (!(fp = gemma2__fopen(path, "rb"))) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot open", path);
    /* a folder can open with fopen, and its "size" is not one: only a first read tells */
    if (getc(fp) == EOF && ferror(fp)) {
        fclose(fp);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot be read (is not a regular file?)", path);
    }
    if (fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot determine size", path);
    }
    buf = (uint8_t *)((unsigned long)n < (size_t)-1 ? GEMMA2_MALLOC((size_t)n + 1) : NULL);
    if (!buf) { fclose(fp); return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory (%ld bytes)", path, n); }
    if (n > 0 && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        fclose(fp);
        GEMMA2_FREE(buf);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: read error", path);
    }
    fclose(fp);
#endif
    buf[n] = 0; /* a terminator past the end: harmless, and handy for text */
    f->data = buf;
    f->size = (size_t)n;
    return 0;
}

#if defined(GEMMA2__POSIX_MMAP)
/* Maps a whole file read-only at a 2 MiB-aligned address. Why: where the page cache holds
   the file in large folios, the kernel can then map them with 2 MiB page-table entries,
   and streaming multi-GB weights through fewer TLB entries is measurably faster (4 KiB
   pages also stop the hardware prefetcher at every page boundary). The slack around the
   aligned window is returned at once. */
static void *gemma2__mmap_aligned(int fd, size_t size)
{
#if defined(MAP_ANONYMOUS) || defined(MAP_ANON)
#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif
    const size_t align = (size_t)2 << 20;
    uint8_t *r, *a;
    void *p;
    if (size < align || size > (size_t)-1 - 2 * align) return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    r = (uint8_t *)mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if ((void *)r == MAP_FAILED) return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    a = (uint8_t *)(((uintptr_t)r + align - 1) & ~(uintptr_t)(align - 1));
    p = mmap(a, size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) { munmap(r, size + align); return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0); }
    if (a > r) munmap(r, (size_t)(a - r));
    if (r + size + align > a + size) munmap(a + size, (size_t)(r + size + align - (a + size)));
#ifdef MADV_HUGEPAGE
    madvise(p, size, MADV_HUGEPAGE); /* a hint; ignored where file THP is not supported */
#endif
    return p;
#else /* strict ISO mode hides MAP_ANONYMOUS: plain mapping */
    return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
#endif
}
#endif

/* Maps a file read-only (or reads it under GEMMA2_NO_MMAP). */
static int gemma2__file_map(gemma2__file *f, const char *path, char *err, size_t err_size)
{
#if defined(GEMMA2__POSIX_MMAP)
    size_t size = 0; /* set by gemma2__open_regular on success; gcc -O3 cannot see that */
    void *p;
    int fd, rc;
    memset(f, 0, sizeof *f);
    if ((rc = gemma2__open_regular(path, &fd, &size, err, err_size)) != 0) return rc;
    if (size == 0) { close(fd); return gemma2__file_read(f, path, err, err_size); }
    p = gemma2__mmap_aligned(fd, size);
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED) return gemma2__file_read(f, path, err, err_size);
    f->data = (const uint8_t *)p;
    f->size = size;
    f->mapped = 1;
    return 0;
#elif !defined(GEMMA2_NO_MMAP) && defined(GEMMA2__WINDOWS)
    size_t size;
    HANDLE h, m;
    void *p;
    int rc;
    memset(f, 0, sizeof *f);
    if ((rc = gemma2__open_regular(path, &h, &size, err, err_size)) != 0) return rc;
    if (size == 0) { CloseHandle(h); return gemma2__file_read(f, path, err, err_size); }
    m = CreateFileMappingW(h, NULL, PAGE_READONLY, 0, 0, NULL);
    if (!m) { CloseHandle(h); return gemma2__file_read(f, path, err, err_size); }
    p = MapViewOfFile(m, FILE_MAP_READ, 0, 0, 0);
    if (!p) { CloseHandle(m); CloseHandle(h); return gemma2__file_read(f, path, err, err_size); }
    f->data = (const uint8_t *)p;
    f->size = size;
    f->mapped = 1;
    f->hfile = h;
    f->hmap = m;
    return 0;
#else
    return gemma2__file_read(f, path, err, err_size);
#endif
}

/* Reads a whole file into fresh anonymous memory, 2 MiB-aligned and advised for huge pages
   (gemma2_options.preload). Falls back to an ordinary allocation where there is no mmap. */
static int gemma2__file_preload(gemma2__file *f, const char *path, char *err, size_t err_size)
{
#if defined(GEMMA2__POSIX_MMAP) && (defined(MAP_ANONYMOUS) || defined(MAP_ANON))
#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif
    const size_t align = (size_t)2 << 20, page = 4096;
    uint8_t *r, *a;
    size_t size, len, keep;
    int fd, rc;
    memset(f, 0, sizeof *f);
    if ((rc = gemma2__open_regular(path, &fd, &size, err, err_size)) != 0) return rc;
    if (size < align || size > (size_t)-1 - 2 * align) { close(fd); return gemma2__file_read(f, path, err, err_size); }
    len = size + align;
    r = (uint8_t *)mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if ((void *)r == MAP_FAILED) { close(fd); return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory (%zu bytes)", path, size); }
    a = (uint8_t *)(((uintptr_t)r + align - 1) & ~(uintptr_t)(align - 1));
    keep = (size + page - 1) & ~(page - 1);
    if (a > r) munmap(r, (size_t)(a - r));
    if (r + len > a + keep) munmap(a + keep, (size_t)(r + len - (a + keep)));
#ifdef MADV_HUGEPAGE
    madvise(a, keep, MADV_HUGEPAGE);
#endif
    rc = gemma2__read_fd(fd, a, size);
    close(fd);
    if (rc != 0) {
        munmap(a, keep);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: read error", path);
    }
    mprotect(a, keep, PROT_READ); /* weights are read-only from here on */
    f->data = a;
    f->size = size;
    f->mapped = 2; /* released with munmap, like a file mapping */
    return 0;
#else
    return gemma2__file_read(f, path, err, err_size);
#endif
}

/* Drops the pages of data[0 .. n) (rounded out to whole pages) from the process's mapping of
   the file: a pass that reads each part of a file once (gemma2_save_quantized) then never
   holds more than it is working on, however large the file; pages touched again are read
   back from the file. Only for mappings of the file: on anonymous memory MADV_DONTNEED
   would zero the bytes. Elsewhere a no-op. */
static void gemma2__file_release(const gemma2__file *f, const uint8_t *data, size_t n)
{
#if defined(GEMMA2__POSIX_MMAP) && defined(MADV_DONTNEED)
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096, lo = (uintptr_t)f->data, hi, a, b;
    if (f->mapped != 1 || n == 0 || data < f->data || n > f->size || (size_t)(data - f->data) > f->size - n) return;
    hi = (lo + f->size + page - 1) & ~(page - 1);
    a = (uintptr_t)data & ~(page - 1);
    b = ((uintptr_t)data + n + page - 1) & ~(page - 1);
    if (a < lo) a = lo;
    if (b > hi) b = hi;
    if (b > a) madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
#else
    (void)f; (void)data; (void)n;
#endif
}

static void gemma2__file_close(gemma2__file *f)
{
    if (!f->data) return;
    /* Through uintptr_t: the bytes are read-only to everyone else, but this owner releases them. */
    if (!f->mapped) GEMMA2_FREE((void *)(uintptr_t)f->data);
#if defined(GEMMA2__POSIX_MMAP)
    else munmap((void *)(uintptr_t)f->data, f->size);
#elif !defined(GEMMA2_NO_MMAP) && defined(GEMMA2__WINDOWS)
    else { UnmapViewOfFile(f->data); CloseHandle(f->hmap); CloseHandle(f->hfile); }
#endif
    memset(f, 0, sizeof *f);
}

/* Whether something is there under that name (reading it then says if it is not a file). */
static int gemma2__file_exists(const char *path)
{
#if defined(GEMMA2__POSIX_FILES)
    struct stat st;
    return stat(path, &st) == 0;
#elif defined(GEMMA2__WINDOWS)
    return gemma2__file_attributes(path) != INVALID_FILE_ATTRIBUTES;
#else
    FILE *fp = gemma2__fopen(path, "rb");
    if (!fp) return 0;
    fclose(fp);
    return 1;
#endif
}

/* ---- safetensors --------------------------------------------------------------------------- */

/* A safetensors file is: an 8-byte little-endian header length N, N bytes of JSON
   ({"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...,
   "__metadata__": {...}}), then the tensor bytes; offsets are relative to the end of the
   header. Nothing in it is trusted: every span is checked against the file size and
   against shape x dtype size before a pointer into the file is handed out. U8 tensors are
   quantized matrices, meaningful only in a file whose metadata names the scheme (the
   format beside GEMMA2__QUANT_VERSION). */

enum { GEMMA2__ST_F32, GEMMA2__ST_BF16, GEMMA2__ST_F16, GEMMA2__ST_U8, GEMMA2__ST_COUNT };

/* safetensors' name and the element size of each GEMMA2__ST_* */
static const char *const gemma2__st_names[GEMMA2__ST_COUNT] = {"F32", "BF16", "F16", "U8"};
static const int gemma2__st_esize[GEMMA2__ST_COUNT] = {4, 2, 2, 1};

/* The quantization schemes a file can name, and the GEMMA2_WEIGHTS_* each one is. */
static const struct gemma2__quant_scheme { const char *name; int weights; } gemma2__quant_schemes[] = {
    {"q8", GEMMA2_WEIGHTS_Q8},
    {"q4", GEMMA2_WEIGHTS_Q4},
};
#define GEMMA2__N_QUANT_SCHEMES ((int)(sizeof gemma2__quant_schemes / sizeof gemma2__quant_schemes[0]))

/* The name of GEMMA2_WEIGHTS_* value w, for messages and the file's metadata. */
static const char *gemma2__weights_name(int w)
{
    static const char *const names[GEMMA2_WEIGHTS_COUNT] = {"auto", "bf16", "f16", "q8", "q4"};
    return w >= 0 && w < GEMMA2_WEIGHTS_COUNT ? names[w] : "?";
}

typedef struct gemma2__tensor {
    char *name;
    int dtype;              /* GEMMA2__ST_* */
    int ndim;
    int64_t shape[4];
    const uint8_t *data;    /* inside the file's mapping */
    uint64_t nbytes;
    int file;               /* index into the model's files */
    int quant;              /* the scheme its file names (GEMMA2_WEIGHTS_Q8 / _Q4), or 0 */
} gemma2__tensor;

typedef struct gemma2__tensors {
    gemma2__tensor *t;
    int n, cap;
    int quant;              /* the scheme the files name (they must agree), or 0 */
    gemma2__tensor **by_name; /* every tensor, sorted by name (gemma2__tensors_index), for lookups:
                               a header may name a million tensors, so nothing here is O(n) per name */
} gemma2__tensors;

static void gemma2__tensors_free(gemma2__tensors *ts)
{
    int i;
    for (i = 0; i < ts->n; i++) GEMMA2_FREE(ts->t[i].name);
    GEMMA2_FREE(ts->t);
    GEMMA2_FREE(ts->by_name);
    memset(ts, 0, sizeof *ts);
}

/* By name, then by position: the order is total, so the first of two equal names is the one read first. */
static int gemma2__tensor_cmp(const void *a, const void *b)
{
    const gemma2__tensor *x = *(const gemma2__tensor *const *)a, *y = *(const gemma2__tensor *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : x < y ? -1 : x > y;
}

/* Sorts the tensors of every file read into ts->by_name and refuses a name given twice (files
   names the shards, for the message). */
static int gemma2__tensors_index(gemma2__tensors *ts, const char *dir, char *const *files, char *err, size_t err_size)
{
    int i;
    GEMMA2_FREE(ts->by_name);
    if (!(ts->by_name = (gemma2__tensor **)gemma2__malloc_n((size_t)ts->n + 1, sizeof *ts->by_name)))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    for (i = 0; i < ts->n; i++) ts->by_name[i] = &ts->t[i];
    if (ts->n > 1) qsort(ts->by_name, (size_t)ts->n, sizeof *ts->by_name, gemma2__tensor_cmp);
    for (i = 1; i < ts->n; i++)
        if (!strcmp(ts->by_name[i - 1]->name, ts->by_name[i]->name)) {
            const gemma2__tensor *a = ts->by_name[i - 1], *b = ts->by_name[i];
            char q[GEMMA2__ESC_CAP], fa[GEMMA2__ESC_CAP], fb[GEMMA2__ESC_CAP];
            gemma2__esc(q, sizeof q, a->name, strlen(a->name));
            gemma2__esc(fa, sizeof fa, files[a->file], strlen(files[a->file]));
            if (a->file == b->file) return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s/%s: tensor %s appears twice", dir, fa, q);
            return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: tensor %s appears in both %s and %s", dir, q, fa,
                                gemma2__esc(fb, sizeof fb, files[b->file], strlen(files[b->file])));
        }
    return 0;
}

/* The tensor of that name (binary search of the index), or NULL. */
static const gemma2__tensor *gemma2__tensors_find(const gemma2__tensors *ts, const char *name)
{
    int lo = 0, hi = ts->n;
    GEMMA2_ASSERT(ts->by_name || ts->n == 0);
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(ts->by_name[mid]->name, name);
        if (c == 0) return ts->by_name[mid];
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

/* The quantization scheme a header's __metadata__ names (*quant: GEMMA2_WEIGHTS_Q8 / _Q4), or
   *quant = 0 when it names none. A scheme this build does not know, or a version newer than
   GEMMA2__QUANT_VERSION, is GEMMA2_ERROR_UNSUPPORTED: its blocks would be misread. */
static int gemma2__safetensors_scheme(const gemma2__json *j, int *quant, const char *path, char *err, size_t err_size)
{
    int32_t meta = gemma2__json_get(j, 0, "__metadata__"), qs, qv;
    char scheme[24] = "", version[24] = "", qscheme[GEMMA2__ESC_CAP], qversion[GEMMA2__ESC_CAP];
    int k, v = 0, known = -1;
    *quant = 0;
    if (!gemma2__json_is(j, meta, GEMMA2__JOBJECT) || (qs = gemma2__json_get(j, meta, "gemma2.quantization")) < 0) return 0;
    qv = gemma2__json_get(j, meta, "gemma2.quantization_version");
    if (!gemma2__json_is(j, qs, GEMMA2__JSTRING) || j->nodes[qs].len >= sizeof scheme)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: \"gemma2.quantization\" in __metadata__ must be a short string", path);
    scheme[GEMMA2__MAX(0, gemma2__json_unescape(j, qs, scheme))] = 0;
    if (gemma2__json_is(j, qv, GEMMA2__JSTRING) && j->nodes[qv].len < sizeof version) {
        int64_t l = gemma2__json_unescape(j, qv, version);
        version[GEMMA2__MAX(0, l)] = 0;
        for (k = 0; version[k] >= '0' && version[k] <= '9' && v < 100000; k++) v = v * 10 + (version[k] - '0');
        if (k == 0 || version[k]) v = 0;
    }
    if (v <= 0)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: __metadata__ names the quantization \"%s\" but no valid "
                            "\"gemma2.quantization_version\" (a string such as \"1\")", path, gemma2__esc(qscheme, sizeof qscheme, scheme, strlen(scheme)));
    for (k = 0; k < GEMMA2__N_QUANT_SCHEMES; k++)
        if (!strcmp(scheme, gemma2__quant_schemes[k].name)) known = k;
    if (known < 0 || v > GEMMA2__QUANT_VERSION) {
        char names[64] = "";
        for (k = 0; k < GEMMA2__N_QUANT_SCHEMES; k++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "", gemma2__quant_schemes[k].name);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: weights quantized as \"%s\" version %s, which this build "
                            "cannot read (it reads %s up to version %d)", path, gemma2__esc(qscheme, sizeof qscheme, scheme, strlen(scheme)),
                            gemma2__esc(qversion, sizeof qversion, version, strlen(version)), names, GEMMA2__QUANT_VERSION);
    }
    *quant = gemma2__quant_schemes[known].weights;
    return 0;
}

/* Adds every tensor of one mapped safetensors file (path is for messages only). A name given
   twice, in one file or in two, is found by gemma2__tensors_index once all are read. */
static int gemma2__safetensors_read(gemma2__tensors *ts, const gemma2__file *f, int file_index, const char *path,
                                    char *err, size_t err_size)
{
    uint64_t hlen = 0, data_size;
    const uint8_t *data;
    gemma2__json j;
    char jerr[160];
    int32_t c;
    int k, rc = 0, quant = 0;
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
    if ((rc = gemma2__safetensors_scheme(&j, &quant, path, err, err_size)) != 0) { gemma2__json_free(&j); return rc; }
    if (quant && ts->quant && quant != ts->quant) {
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: quantized as %s, but another file of the folder as %s", path,
                            gemma2__weights_name(quant), gemma2__weights_name(ts->quant));
    }
    if (quant) ts->quant = quant;
    for (c = j.nodes[0].child; c >= 0 && rc == 0; c = j.nodes[j.nodes[c].next].next) {
        int32_t v = j.nodes[c].next, dt, sh, off, e;
        gemma2__tensor t;
        uint64_t begin = 0, end = 0, elems = 1, esize;
        double d;
        int64_t nl;
        char qn[GEMMA2__ESC_CAP]; /* the name as messages quote it */
        memset(&t, 0, sizeof t);
        t.name = (char *)GEMMA2_MALLOC(j.nodes[c].len + 1);
        if (!t.name) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", path); break; }
        nl = gemma2__json_unescape(&j, c, t.name);
        if (nl < 0) { GEMMA2_FREE(t.name); rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: bad tensor name", path); break; }
        t.name[nl] = 0;
        if (!strcmp(t.name, "__metadata__")) { GEMMA2_FREE(t.name); continue; }
        gemma2__esc(qn, sizeof qn, t.name, (size_t)nl);
#define GEMMA2__ST_BAD(...) do { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, __VA_ARGS__); GEMMA2_FREE(t.name); goto next; } while (0)
        /* names are C strings from here on: one with a NUL would pass for its first part */
        if (strlen(t.name) != (size_t)nl) GEMMA2__ST_BAD("%s: tensor %s: the name holds a NUL byte", path, qn);
        if (!gemma2__json_is(&j, v, GEMMA2__JOBJECT)) GEMMA2__ST_BAD("%s: tensor %s: entry is not an object", path, qn);
        dt = gemma2__json_get(&j, v, "dtype");
        sh = gemma2__json_get(&j, v, "shape");
        off = gemma2__json_get(&j, v, "data_offsets");
        for (t.dtype = 0; t.dtype < GEMMA2__ST_COUNT && !gemma2__json_streq(&j, dt, gemma2__st_names[t.dtype]); t.dtype++) {}
        if (t.dtype == GEMMA2__ST_COUNT)
            GEMMA2__ST_BAD("%s: tensor %s: unsupported or missing dtype (BF16, F16, F32 are supported, and U8 for quantized matrices)", path, qn);
        esize = (uint64_t)gemma2__st_esize[t.dtype];
        if (!gemma2__json_is(&j, sh, GEMMA2__JARRAY) || j.nodes[sh].count > 4)
            GEMMA2__ST_BAD("%s: tensor %s: shape must be an array of at most 4 sizes", path, qn);
        for (e = j.nodes[sh].child; e >= 0; e = j.nodes[e].next) {
            if (!gemma2__json_number(&j, e, &d) || d < 0 || d != floor(d) || d > 9007199254740992.0)
                GEMMA2__ST_BAD("%s: tensor %s: bad shape entry", path, qn);
            t.shape[t.ndim++] = (int64_t)d;
            if (!gemma2__mul_ok(elems, (uint64_t)d, &elems)) GEMMA2__ST_BAD("%s: tensor %s: shape overflows", path, qn);
        }
        if (!gemma2__json_is(&j, off, GEMMA2__JARRAY) || j.nodes[off].count != 2)
            GEMMA2__ST_BAD("%s: tensor %s: data_offsets must be [begin, end]", path, qn);
        e = j.nodes[off].child;
        if (!gemma2__json_number(&j, e, &d) || d < 0 || d != floor(d) || d > 1e18) GEMMA2__ST_BAD("%s: tensor %s: bad data_offsets", path, qn);
        begin = (uint64_t)d;
        if (!gemma2__json_number(&j, j.nodes[e].next, &d) || d < 0 || d != floor(d) || d > 1e18) GEMMA2__ST_BAD("%s: tensor %s: bad data_offsets", path, qn);
        end = (uint64_t)d;
        if (begin > end || end > data_size)
            GEMMA2__ST_BAD("%s: tensor %s: data_offsets [%llu, %llu] outside the %llu data bytes", path, qn,
                           (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
        if (!gemma2__mul_ok(elems, esize, &t.nbytes) || t.nbytes != end - begin)
            GEMMA2__ST_BAD("%s: tensor %s: %llu bytes of data but its shape needs %llu", path, qn,
                           (unsigned long long)(end - begin), (unsigned long long)(elems * esize));
        t.data = data + begin;
        t.file = file_index;
        t.quant = quant;
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

/* ---- config.json and generation_config.json ------------------------------------------------ */

/* Reads a Gemma 2 config.json. Unknown keys are ignored; missing optional keys take
   transformers' Gemma2Config defaults; impossible values are errors naming the field. */

#define GEMMA2__MAX_POSITIONS (1 << 20) /* the largest max_position_embeddings accepted */

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
    if (gemma2__json_parse(&j, text, size, jerr, sizeof jerr) != 0) {
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: not a JSON object: %s", path, jerr);
    }
    if (!gemma2__json_is(&j, 0, GEMMA2__JOBJECT)) {
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: not a JSON object", path);
    }
    n = gemma2__json_get(&j, 0, "model_type");
    if (!gemma2__json_streq(&j, n, "gemma2")) {
        char got[GEMMA2__ESC_CAP] = "missing", *mt;
        int64_t l;
        if (gemma2__json_is(&j, n, GEMMA2__JSTRING) && (mt = (char *)GEMMA2_MALLOC((size_t)j.nodes[n].len + 1)) != NULL) {
            if ((l = gemma2__json_unescape(&j, n, mt)) >= 0) gemma2__esc(got, sizeof got, mt, (size_t)l);
            else memcpy(got, "?", 2);
            GEMMA2_FREE(mt);
        }
        gemma2__json_free(&j);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: model_type is \"%s\", expected \"gemma2\"", path, got);
    }
    /* The upper bounds keep every size product far from overflow in 64 bits (V x H < 2^40 elements);
       whether they fit a 32-bit size_t is checked below. max_position_embeddings is what a session
       of n_ctx 0 holds: Gemma 2 has 8192, the longest Gemma context is 128K; 2^20 leaves room for
       extended variants and refuses a config that would have every such session ask for terabytes. */
    if ((rc = gemma2__cfg_int(&j, "vocab_size", -1, 1, 1 << 22, &cfg->vocab_size, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "hidden_size", -1, 1, 1 << 16, &cfg->hidden_size, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "intermediate_size", -1, 1, 1 << 18, &cfg->intermediate_size, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "num_hidden_layers", -1, 1, 1024, &cfg->num_hidden_layers, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "num_attention_heads", -1, 1, 1024, &cfg->num_attention_heads, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "num_key_value_heads", cfg->num_attention_heads, 1, 1024, &cfg->num_key_value_heads, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "head_dim", cfg->hidden_size / cfg->num_attention_heads, 2, 4096, &cfg->head_dim, path, err, err_size)) ||
        (rc = gemma2__cfg_int(&j, "max_position_embeddings", 8192, 1, GEMMA2__MAX_POSITIONS, &cfg->max_position_embeddings, path, err, err_size)) ||
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
    {   /* The largest matrix in its widest format (F32: 4 bytes an element; Q8, Q4 and bf16 take
           less) and a layer's KV cache at max_position_embeddings (float32) must fit in size_t with
           room to spare: the loader and the sessions compute their sizes in it. Never binding in
           64 bits; on 32-bit builds it names the field instead of wrapping around. */
        const uint64_t lim = (uint64_t)((size_t)-1 / 2), H = (uint64_t)cfg->hidden_size;
        const uint64_t qd = (uint64_t)cfg->num_attention_heads * (uint64_t)cfg->head_dim;
        const uint64_t kvd = (uint64_t)cfg->num_key_value_heads * (uint64_t)cfg->head_dim;
        const char *what = NULL;
        if ((uint64_t)cfg->vocab_size * H * 4 > lim) what = "vocab_size x hidden_size";
        else if ((uint64_t)cfg->intermediate_size * H * 4 > lim) what = "intermediate_size x hidden_size";
        else if (qd * H * 4 > lim) what = "num_attention_heads x head_dim x hidden_size";
        else if ((uint64_t)mpe * kvd * 4 > lim) what = "max_position_embeddings x num_key_value_heads x head_dim";
        if (what) {
            rc = gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: %s is too large for this build (%d-bit sizes)", path, what,
                              (int)(sizeof(size_t) * CHAR_BIT));
            goto done;
        }
    }
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

/* Adds generation_config.json's eos_token_id (an int or a list) to cfg's eos ids, keeping the
   ones config.json gave and skipping duplicates (gemma-2-*-it: config.json says 1, and
   generation_config.json [1, 107]: <end_of_turn> is what ends a chat reply). A missing file is
   not an error (many folders have none); a malformed one is GEMMA2_ERROR_FORMAT, one that
   cannot be read GEMMA2_ERROR_IO. */
static int gemma2__read_generation_config(gemma2_config *cfg, const char *dir, char *err, size_t err_size)
{
    gemma2__file f;
    gemma2__json j;
    char *path = gemma2__path_join(dir, "generation_config.json"), jerr[160];
    int rc = 0;
    if (!path) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    if (!gemma2__file_exists(path)) { GEMMA2_FREE(path); return 0; }
    if ((rc = gemma2__file_read(&f, path, err, err_size)) != 0) { GEMMA2_FREE(path); return rc; }
    if (gemma2__json_parse(&j, (const char *)f.data, f.size, jerr, sizeof jerr) != 0)
        rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: %s", path, jerr);
    else /* the same rules as config.json's */
        rc = gemma2__cfg_eos(cfg, &j, gemma2__json_get(&j, 0, "eos_token_id"), path, err, err_size);
    gemma2__json_free(&j);
    gemma2__file_close(&f);
    GEMMA2_FREE(path);
    return rc;
}

/* F32 -> BF16 once at load (GEMMA2_WEIGHTS_BF16), in 1M-element chunks over the pool. */
typedef struct gemma2__convert_job {
    uint16_t *dst;
    const float *src;
    size_t n;
} gemma2__convert_job;

#define GEMMA2__CONVERT_CHUNK ((size_t)1 << 20)

static void gemma2__convert_task(void *ctx, int task, int n_tasks)
{
    const gemma2__convert_job *j = (const gemma2__convert_job *)ctx;
    size_t i0 = (size_t)task * GEMMA2__CONVERT_CHUNK, i1 = GEMMA2__MIN(i0 + GEMMA2__CONVERT_CHUNK, j->n), i;
    (void)n_tasks;
    for (i = i0; i < i1; i++) j->dst[i] = gemma2__f32_to_bf16(j->src[i]);
}

static GEMMA2__MAYBE_UNUSED void gemma2__convert_f32_to_bf16(gemma2__pool *p, uint16_t *dst, const float *src, size_t n)
{
    gemma2__convert_job j;
    size_t n_tasks = (n + GEMMA2__CONVERT_CHUNK - 1) / GEMMA2__CONVERT_CHUNK;
    j.dst = dst; j.src = src; j.n = n;
    if (n == 0) return;
    if (!p || n_tasks > (size_t)INT_MAX) { size_t i; for (i = 0; i < n; i++) dst[i] = gemma2__f32_to_bf16(src[i]); return; }
    gemma2__pool_run(p, gemma2__convert_task, &j, (int)n_tasks);
}

/* A tokenizer file, mapped for the parse (section 2.9 reads it from memory). */
static int gemma2__tokenizer_load(gemma2__tokenizer **out, const char *path, char *err, size_t err_size)
{
    gemma2__file f;
    int rc;
    *out = NULL;
    if ((rc = gemma2__file_map(&f, path, err, err_size)) != 0) return rc;
    rc = gemma2__tokenizer_load_mem(out, f.data, f.size, path, err, err_size);
    gemma2__file_close(&f);
    return rc;
}

/* ---- binding the weights, gemma2_load ------------------------------------------------------ */

static void *gemma2__own(gemma2_model *m, size_t bytes)
{
    /* Owned blocks are chained through a header; the payload is 64-byte aligned for SIMD loads,
       and a block of 2 MiB or more (converted and quantized weights) is 2 MiB-aligned and
       advised for huge pages before it is first written: the kernels then stream it through
       2 MiB TLB entries (where the OS grants them), as they do preloaded weights. */
    const size_t huge = (size_t)2 << 20, align = bytes >= huge ? huge : 64;
    uint8_t *raw, *payload;
    gemma2__block *b;
    if (bytes > (size_t)-1 - align - sizeof(gemma2__block)) return NULL;
    raw = (uint8_t *)GEMMA2_MALLOC(bytes + align + sizeof(gemma2__block));
    if (!raw) return NULL;
    b = (gemma2__block *)raw;
    b->next = m->owned;
    m->owned = b;
    payload = raw + sizeof(gemma2__block);
    payload += (align - ((uintptr_t)payload & (align - 1))) & (align - 1);
#if defined(GEMMA2__POSIX_MMAP) && defined(MADV_HUGEPAGE)
    if (align == huge) madvise(payload, bytes & ~(huge - 1), MADV_HUGEPAGE);
#endif
    return payload;
}


static int gemma2__strp_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Maps model.safetensors, or every shard named by model.safetensors.index.json. */
static int gemma2__open_weights(gemma2_model *m, const char *dir, gemma2__tensors *ts, char *err, size_t err_size)
{
    char *index_path;
    char **names = NULL;
    int n_names = 0, rc = 0, i, k;
    /* Tensors are little-endian and are used where they lie in the mapped file (and the
       quantized blocks' scales likewise): a big-endian host would compute on byte-swapped
       numbers, silently. Refused here, so gemma2_load and gemma2_save_quantized both say so;
       the tokenizer (tokenizer_only, gemma2_load_tokenizer) reads nothing byte-order-bound. */
    if (gemma2__big_endian())
        return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: big-endian hosts are not supported (the weights are "
                            "little-endian and used in place); the tokenizer alone loads (gemma2_load_tokenizer)", dir);
    index_path = gemma2__path_join(dir, "model.safetensors.index.json");
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
        /* The shard files, each checked to be a plain name in the folder (no separators, no control
           bytes or backslashes, UTF-8: it then also quotes cleanly in messages), then sorted and each
           kept once: an index may have a million entries. */
        for (c = j.nodes[wm].child; c >= 0; c = j.nodes[j.nodes[c].next].next) {
            int32_t v = j.nodes[c].next;
            char name[512], plain[4 * 512 + 4];
            int64_t l;
            if (!gemma2__json_is(&j, v, GEMMA2__JSTRING) || j.nodes[v].len >= sizeof name ||
                (l = gemma2__json_unescape(&j, v, name)) <= 0) {
                rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: weight_map values must be file names", index_path);
                goto index_done;
            }
            name[l] = 0;
            gemma2__esc(plain, sizeof plain, name, (size_t)l); /* room for all of it: equal if nothing needed escaping */
            if (strcmp(plain, name) || (int64_t)strlen(name) != l || strchr(name, '/') || strchr(name, ':') || !strcmp(name, "..") || !strcmp(name, ".")) {
                rc = gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "%s: shard name \"%s\" must be a plain file name in the model folder",
                                  index_path, gemma2__esc(plain, GEMMA2__ESC_CAP, name, (size_t)l));
                goto index_done;
            }
            if (!(names[n_names] = gemma2__strdup(name))) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory"); goto index_done; }
            n_names++;
        }
        qsort(names, (size_t)n_names, sizeof *names, gemma2__strp_cmp);
        for (i = k = 0; i < n_names; i++) {
            if (k > 0 && !strcmp(names[k - 1], names[i])) { GEMMA2_FREE(names[i]); names[i] = NULL; }
            else { names[k] = names[i]; if (k++ < i) names[i] = NULL; }
        }
        n_names = k;
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
        rc = m->opt.preload ? gemma2__file_preload(&m->files[i], path, err, err_size)
                            : gemma2__file_map(&m->files[i], path, err, err_size);
        if (rc == 0) {
            m->n_files = i + 1;
            rc = gemma2__safetensors_read(ts, &m->files[i], i, path, err, err_size);
        }
        GEMMA2_FREE(path);
    }
    if (rc == 0) rc = gemma2__tensors_index(ts, dir, names, err, err_size);
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
    if (t->dtype == GEMMA2__ST_U8)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "tensor %s: dtype U8, but norms are stored as F32, BF16 or F16", name);
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

/* Quantizing a stored matrix at load (Q8, Q4): tasks of rows over the load pool, each row
   widened to float32 (from F32, BF16 or F16, aligned or not) into a scratch row, then written
   in the format by its from_float. */
typedef struct gemma2__quant_job {
    uint8_t *dst;
    const uint8_t *src;
    int dtype, format, rows, cols, per;
    void (*from_float)(void *row, const float *x, int K);
    int failed;                       /* a task could not allocate its scratch row */
} gemma2__quant_job;

/* Row r of a stored tensor of `cols` elements of dtype (GEMMA2__ST_F32/BF16/F16) as floats. */
static void gemma2__stored_row_float(float *row, const uint8_t *src, int dtype, size_t r, int cols)
{
    size_t esize = dtype == GEMMA2__ST_F32 ? 4 : 2;
    const uint8_t *p = src + r * (size_t)cols * esize;
    int i;
    uint16_t h;
    if (dtype == GEMMA2__ST_F32) memcpy(row, p, (size_t)cols * 4);
    else if (dtype == GEMMA2__ST_BF16) for (i = 0; i < cols; i++) { memcpy(&h, p + 2 * (size_t)i, 2); row[i] = gemma2__bf16_to_f32(h); }
    else for (i = 0; i < cols; i++) { memcpy(&h, p + 2 * (size_t)i, 2); row[i] = gemma2__f16_to_f32(h); }
}

static void gemma2__quant_task(void *ctx, int task, int n_tasks)
{
    gemma2__quant_job *j = (gemma2__quant_job *)ctx;
    int r0 = task * j->per, r1 = GEMMA2__MIN(r0 + j->per, j->rows), r;
    size_t rb = gemma2__row_bytes(j->format, j->cols);
    float *row = (float *)gemma2__malloc_n((size_t)j->cols, sizeof(float));
    (void)n_tasks;
    if (!row) { j->failed = 1; return; }
    for (r = r0; r < r1; r++) {
        gemma2__stored_row_float(row, j->src, j->dtype, (size_t)r, j->cols);
        j->from_float(j->dst + (size_t)r * rb, row, j->cols);
    }
    GEMMA2_FREE(row);
}

/* rows x cols stored elements at src into `format` at dst, with the set's from_float; on the
   pool if there is one. */
static int gemma2__quantize(gemma2__pool *p, const gemma2__kernels *k, uint8_t *dst, int format, const uint8_t *src, int dtype, int rows, int cols)
{
    gemma2__quant_job j;
    int n_tasks;
    j.from_float = k->from_float[format] ? k->from_float[format] : gemma2__wformat_of(format)->from_float;
    j.dst = dst; j.src = src; j.dtype = dtype; j.format = format; j.rows = rows; j.cols = cols; j.failed = 0;
    j.per = GEMMA2__MAX(1, (int)((1u << 18) / (unsigned)GEMMA2__MAX(cols, 1))); /* ~256K weights a task */
    n_tasks = (rows + j.per - 1) / j.per;
    if (!p) { int i; for (i = 0; i < n_tasks; i++) gemma2__quant_task(&j, i, n_tasks); }
    else gemma2__pool_run(p, gemma2__quant_task, &j, n_tasks);
    return j.failed ? GEMMA2_ERROR_OUT_OF_MEMORY : 0;
}

/* The format matrix `name` is held in, from gemma2_options.weights and the stored dtype. The
   one place this is decided: quantizing at load, saving quantized files (gemma2_save_quantized
   with weights = the scheme) and reading them back (gemma2_load with weights = the file's
   scheme) all ask here, so they cannot disagree.
     stored BF16                  BF16, used in place from the mapping
     stored F32                   F32 in place; BF16 (a converted copy) under GEMMA2_WEIGHTS_BF16
     stored F16                   F16 in place under GEMMA2_WEIGHTS_F16; else widened to F32, or
                                  rounded to BF16 under GEMMA2_WEIGHTS_BF16 (copies)
     any, under GEMMA2_WEIGHTS_Q8  Q8 (quantized at load, or in place from a saved U8 tensor),
                                  the embedding included
     any, under GEMMA2_WEIGHTS_Q4  Q4, but the embedding Q8: it is also the output projection,
                                  and the logits are the most sensitive product
     stored U8, otherwise         -1: quantized data means nothing without its scheme */
static int gemma2__weights_format(int weights, int dtype, const char *name)
{
    if (weights == GEMMA2_WEIGHTS_Q8) return GEMMA2__WF_Q8;
    if (weights == GEMMA2_WEIGHTS_Q4) return !strcmp(name, "model.embed_tokens.weight") ? GEMMA2__WF_Q8 : GEMMA2__WF_Q4;
    switch (dtype) {
    case GEMMA2__ST_F32: return weights == GEMMA2_WEIGHTS_BF16 ? GEMMA2__WF_BF16 : GEMMA2__WF_F32;
    case GEMMA2__ST_F16: return weights == GEMMA2_WEIGHTS_BF16 ? GEMMA2__WF_BF16 : weights == GEMMA2_WEIGHTS_F16 ? GEMMA2__WF_F16 : GEMMA2__WF_F32;
    case GEMMA2__ST_BF16: return GEMMA2__WF_BF16;
    default: return -1;
    }
}

/* A saved quantized matrix (dtype U8, format fmt), checked against the [rows, cols] the
   config gives: shape [rows, gemma2__row_bytes(fmt, cols)] and exactly that many bytes. The
   kernels read blocks unaligned, so any address will do. */
static int gemma2__check_quantized(const gemma2__tensor *t, int fmt, int rows, int cols, char *err, size_t err_size)
{
    size_t rb = gemma2__row_bytes(fmt, cols);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != (int64_t)rb || t->nbytes != (uint64_t)rows * rb)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "tensor %s: U8 of shape [%lld%s%lld], expected [%d, %zu] (%d rows of %d "
                            "weights in %s blocks)", t->name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                            t->ndim > 1 ? (long long)t->shape[1] : 0LL, rows, rb, rows, cols, gemma2__wformat_of(fmt)->name);
    return 0;
}

/* A weight matrix, in the format gemma2__weights_format chooses. Data that is not aligned to
   its element size in the file is copied (the kernels load whole elements); saved quantized
   matrices (U8) are used in place. The chosen format must be one this build knows (it is: the
   choice is made here). */
static int gemma2__bind_mat(gemma2_model *m, const gemma2__tensors *ts, const char *name, int rows, int cols, gemma2__mat *out,
                            char *err, size_t err_size)
{
    const gemma2__tensor *t = gemma2__tensors_find(ts, name);
    size_t n = (size_t)rows * (size_t)cols, i, bytes;
    int rc, fmt, esize;
    void *dst;
    if (t && t->dtype == GEMMA2__ST_U8) {
        if (!t->quant)
            return gemma2__fail(err, err_size, GEMMA2_ERROR_FORMAT, "tensor %s: dtype U8 (quantized blocks) in a file whose "
                                "__metadata__ names no \"gemma2.quantization\" scheme", name);
        /* gemma2_load made m->opt.weights the files' scheme, so this is the saved format */
        fmt = gemma2__weights_format(m->opt.weights, t->dtype, name);
        GEMMA2_ASSERT(fmt == GEMMA2__WF_Q8 || fmt == GEMMA2__WF_Q4);
        if ((rc = gemma2__check_quantized(t, fmt, rows, cols, err, err_size)) != 0) return rc;
        out->rows = rows;
        out->cols = cols;
        out->format = fmt;
        out->data = t->data;
        m->files_in_use = 1;
        m->weight_bytes += (size_t)t->nbytes;
        return 0;
    }
    if ((rc = gemma2__want(ts, name, rows, cols, &t, m, err, err_size)) != 0) return rc;
    esize = gemma2__st_esize[t->dtype];
    fmt = gemma2__weights_format(m->opt.weights, t->dtype, name);
    GEMMA2_ASSERT(fmt >= 0 && fmt < GEMMA2__WF_COUNT);
    out->rows = rows;
    out->cols = cols;
    out->format = fmt;
    bytes = (size_t)rows * gemma2__row_bytes(fmt, cols);
    m->weight_bytes += bytes;
    /* in place: the stored dtype is the format, and aligned */
    if (((t->dtype == GEMMA2__ST_BF16 && fmt == GEMMA2__WF_BF16) || (t->dtype == GEMMA2__ST_F32 && fmt == GEMMA2__WF_F32) ||
         (t->dtype == GEMMA2__ST_F16 && fmt == GEMMA2__WF_F16)) && ((uintptr_t)t->data & (uintptr_t)(esize - 1)) == 0) {
        out->data = t->data;
        m->files_in_use = 1;
        return 0;
    }
    if (!(dst = gemma2__own(m, bytes)))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "tensor %s: out of memory converting to %s", name, gemma2__wformat_of(fmt)->name);
    out->data = dst;
    if (fmt == GEMMA2__WF_Q8 || fmt == GEMMA2__WF_Q4) {
        if (gemma2__quantize(m->load_pool, &m->kern, (uint8_t *)dst, fmt, t->data, t->dtype, rows, cols) != 0)
            return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "tensor %s: out of memory quantizing to %s", name, gemma2__wformat_of(fmt)->name);
        return 0;
    }
    if (t->dtype == GEMMA2__ST_F32 && fmt == GEMMA2__WF_BF16 && ((uintptr_t)t->data & 3) == 0) {
        gemma2__convert_f32_to_bf16(m->load_pool, (uint16_t *)dst, (const float *)t->data, n);
        return 0;
    }
    for (i = 0; i < n; i++) { /* element by element: unaligned data, F16 */
        float v;
        uint16_t h = 0;
        if (t->dtype == GEMMA2__ST_F32) memcpy(&v, t->data + 4 * i, 4);
        else {
            memcpy(&h, t->data + 2 * i, 2);
            v = t->dtype == GEMMA2__ST_BF16 ? gemma2__bf16_to_f32(h) : gemma2__f16_to_f32(h);
        }
        if (fmt == GEMMA2__WF_F32) ((float *)dst)[i] = v;
        else if (fmt == GEMMA2__WF_F16) ((uint16_t *)dst)[i] = h; /* only ever from F16 */
        else ((uint16_t *)dst)[i] = t->dtype == GEMMA2__ST_BF16 ? h : gemma2__f32_to_bf16(v);
    }
    return 0;
}

/* What gemma2_load binds, in its order: model.embed_tokens.weight [V, H], model.norm.weight
   [H], then per layer the tensors below (named model.layers.{l}.NAME), each a norm [H] or a
   matrix [rows, cols] in sizes of the config. gemma2_save_quantized walks the same list, so a
   saved file holds exactly the matrices the loader reads. */
enum { GEMMA2__DIM_NORM, GEMMA2__DIM_H, GEMMA2__DIM_I, GEMMA2__DIM_Q, GEMMA2__DIM_KV };
static const struct gemma2__layer_tensor {
    const char *name;
    size_t off;       /* of the field in gemma2__layer: const float * for a norm, gemma2__mat for a matrix */
    int rows, cols;   /* GEMMA2__DIM_*; rows GEMMA2__DIM_NORM: a norm */
} gemma2__layer_tensors[] = {
    {"input_layernorm.weight",            offsetof(gemma2__layer, attn_norm),      GEMMA2__DIM_NORM, GEMMA2__DIM_NORM},
    {"post_attention_layernorm.weight",   offsetof(gemma2__layer, post_attn_norm), GEMMA2__DIM_NORM, GEMMA2__DIM_NORM},
    {"pre_feedforward_layernorm.weight",  offsetof(gemma2__layer, pre_ffw_norm),   GEMMA2__DIM_NORM, GEMMA2__DIM_NORM},
    {"post_feedforward_layernorm.weight", offsetof(gemma2__layer, post_ffw_norm),  GEMMA2__DIM_NORM, GEMMA2__DIM_NORM},
    {"self_attn.q_proj.weight",           offsetof(gemma2__layer, wq),             GEMMA2__DIM_Q,    GEMMA2__DIM_H},
    {"self_attn.k_proj.weight",           offsetof(gemma2__layer, wk),             GEMMA2__DIM_KV,   GEMMA2__DIM_H},
    {"self_attn.v_proj.weight",           offsetof(gemma2__layer, wv),             GEMMA2__DIM_KV,   GEMMA2__DIM_H},
    {"self_attn.o_proj.weight",           offsetof(gemma2__layer, wo),             GEMMA2__DIM_H,    GEMMA2__DIM_Q},
    {"mlp.gate_proj.weight",              offsetof(gemma2__layer, wgate),          GEMMA2__DIM_I,    GEMMA2__DIM_H},
    {"mlp.up_proj.weight",                offsetof(gemma2__layer, wup),            GEMMA2__DIM_I,    GEMMA2__DIM_H},
    {"mlp.down_proj.weight",              offsetof(gemma2__layer, wdown),          GEMMA2__DIM_H,    GEMMA2__DIM_I},
};
#define GEMMA2__N_LAYER_TENSORS ((int)(sizeof gemma2__layer_tensors / sizeof gemma2__layer_tensors[0]))

static int gemma2__dim(const gemma2_config *c, int d)
{
    switch (d) {
    case GEMMA2__DIM_H: return c->hidden_size;
    case GEMMA2__DIM_I: return c->intermediate_size;
    case GEMMA2__DIM_Q: return c->num_attention_heads * c->head_dim;
    case GEMMA2__DIM_KV: return c->num_key_value_heads * c->head_dim;
    default: return 0;
    }
}

/* Tensor i of the 2 + L * GEMMA2__N_LAYER_TENSORS that gemma2_load binds, in its order: the
   name, and rows x cols of a matrix, or rows = 0 and cols = H for a norm. */
static void gemma2__bound_tensor(const gemma2_config *c, int i, char *name, size_t cap, int *rows, int *cols)
{
    const struct gemma2__layer_tensor *lt;
    if (i < 2) {
        snprintf(name, cap, "%s", i == 0 ? "model.embed_tokens.weight" : "model.norm.weight");
        *rows = i == 0 ? c->vocab_size : 0;
        *cols = c->hidden_size;
        return;
    }
    lt = &gemma2__layer_tensors[(i - 2) % GEMMA2__N_LAYER_TENSORS];
    snprintf(name, cap, "model.layers.%d.%s", (i - 2) / GEMMA2__N_LAYER_TENSORS, lt->name);
    *rows = lt->rows == GEMMA2__DIM_NORM ? 0 : gemma2__dim(c, lt->rows);
    *cols = lt->rows == GEMMA2__DIM_NORM ? c->hidden_size : gemma2__dim(c, lt->cols);
}

/* NaN and infinity in the weights are not looked for here. Scanning the 2B checkpoint's 5.2 GB
   of bf16 matrices took 2.1-2.3 s from the mapping (one thread, pages faulted in), against
   0.006 s for a load that maps them and lets the first tokens page them in, and 1.6 s on top
   of a 5.1 s preload. A non-finite weight reaches the logits instead (NaN propagates the same
   way on every kernel set, and quantizing at load keeps such blocks non-finite), where
   gemma2_eval reports GEMMA2_ERROR_NUMERIC for ~0.15 ms per token. A soft-cap can absorb an
   infinity (an infinite score or logit becomes +-cap) until the token behind it is read. */
static int gemma2__bind_weights(gemma2_model *m, const gemma2__tensors *ts, char *err, size_t err_size)
{
    const gemma2_config *c = &m->cfg;
    const int L = c->num_hidden_layers, n = 2 + L * GEMMA2__N_LAYER_TENSORS;
    int i, l, rows, cols, rc;
    char name[160];
    m->layers = (gemma2__layer *)gemma2__own(m, (size_t)L * sizeof(gemma2__layer));
    if (!m->layers) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    /* Gemma 2 alternates local and global attention, starting with local on layer 0. */
    for (l = 0; l < L; l++) m->layers[l].sliding = (l % 2) == 0;
    for (i = 0; i < n; i++) {
        const int k = (i - 2) % GEMMA2__N_LAYER_TENSORS;
        void *field = i == 0 ? (void *)&m->embed : i == 1 ? (void *)&m->final_norm
                    : (void *)((char *)&m->layers[(i - 2) / GEMMA2__N_LAYER_TENSORS] + gemma2__layer_tensors[k].off);
        gemma2__bound_tensor(c, i, name, sizeof name, &rows, &cols);
        rc = rows ? gemma2__bind_mat(m, ts, name, rows, cols, (gemma2__mat *)field, err, err_size)
                  : gemma2__bind_norm(m, ts, name, (const float **)field, err, err_size);
        if (rc) return rc;
        if (i >= 2 && k == GEMMA2__N_LAYER_TENSORS - 1 &&
            (rc = gemma2__progress(m, 0.1f + 0.9f * (float)((i - 2) / GEMMA2__N_LAYER_TENSORS + 1) / (float)L, err, err_size)))
            return rc;
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


/* gemma2_load, with its result code (the public call reports only the message). */
static int gemma2__load(const char *model_dir, const gemma2_options *opt, gemma2_model **out, char *err, size_t err_size)
{
    gemma2_model *m;
    gemma2__tensors ts;
    gemma2__file cf;
    char *path = NULL;
    int rc;
    *out = NULL;
    if (err && err_size) err[0] = 0;
    if (!model_dir) return gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_load: model_dir is NULL");
    if (opt && (opt->n_threads < 0 || opt->weights < 0 || opt->weights >= GEMMA2_WEIGHTS_COUNT || opt->compute < 0 ||
                opt->compute >= GEMMA2_COMPUTE_COUNT || opt->kernels < 0 || opt->kernels >= GEMMA2_KERNELS_COUNT || opt->kv_cache < 0 ||
                opt->kv_cache >= GEMMA2_KV_COUNT))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_load: an option is out of range (n_threads, weights, "
                            "compute, kernels or kv_cache)");
    m = (gemma2_model *)gemma2__calloc(1, sizeof *m);
    if (!m) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    memset(&ts, 0, sizeof ts);
    if (opt) m->opt = *opt;
    if (m->opt.n_threads == 0) m->opt.n_threads = gemma2__cpu_count();

    /* config.json */
    if (!(path = gemma2__path_join(model_dir, "config.json"))) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory"); goto fail; }
    if ((rc = gemma2__file_read(&cf, path, err, err_size)) != 0) goto fail;
    rc = gemma2__config_parse(&m->cfg, (const char *)cf.data, cf.size, path, err, err_size);
    gemma2__file_close(&cf);
    if (rc) goto fail;
    /* generation_config.json's eos ids (below) */
    if ((rc = gemma2__read_generation_config(&m->cfg, model_dir, err, err_size)) != 0) goto fail;
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
    if (m->opt.tokenizer_only) { *out = m; return 0; }

    if (gemma2__kernels_select(m->opt.kernels, &m->kern) != 0) { rc = gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "gemma2_load: the kernel set asked for (%d) is not available on this CPU or build", m->opt.kernels); goto fail; }
    if ((rc = gemma2__progress(m, 0.0f, err, err_size)) != 0) goto fail;
    if ((rc = gemma2__open_weights(m, model_dir, &ts, err, err_size)) != 0) goto fail;
    if ((rc = gemma2__progress(m, 0.1f, err, err_size)) != 0) goto fail;
    if (ts.quant) {
        /* Saved quantized: the matrices are in the file as they will be in memory, and only in
           that format (turning Q8 into Q4, say, would quantize twice: not what quantizing the
           original gives). From here on weights is the files' scheme, which is what
           gemma2__weights_format then answers for every matrix. */
        if (m->opt.weights != GEMMA2_WEIGHTS_AUTO && m->opt.weights != ts.quant) {
            rc = gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "%s: the weights were saved quantized as %s (%s) and cannot be "
                              "loaded as %s: load them as stored (GEMMA2_WEIGHTS_AUTO), or %s the original checkpoint", model_dir,
                              gemma2__weights_name(ts.quant), ts.quant == GEMMA2_WEIGHTS_Q4 ? "the embedding q8, the projections q4" : "every matrix",
                              gemma2__weights_name(m->opt.weights), m->opt.weights == GEMMA2_WEIGHTS_Q8 || m->opt.weights == GEMMA2_WEIGHTS_Q4 ? "quantize" : "load");
            goto fail;
        }
        m->opt.weights = ts.quant;
    } else if (m->opt.weights == GEMMA2_WEIGHTS_BF16 || m->opt.weights == GEMMA2_WEIGHTS_Q8 || m->opt.weights == GEMMA2_WEIGHTS_Q4)
        m->load_pool = gemma2__pool_new(m->opt.n_threads);
    rc = gemma2__bind_weights(m, &ts, err, err_size);
    gemma2__pool_free(m->load_pool);
    m->load_pool = NULL;
    if (rc != 0) goto fail;
    gemma2__tensors_free(&ts);
    if (!m->files_in_use) { /* every weight was copied (quantized): the files are no longer needed */
        int i;
        for (i = 0; i < m->n_files; i++) gemma2__file_close(&m->files[i]);
    }
    m->has_weights = 1;
    *out = m;
    return 0;
fail:
    GEMMA2_FREE(path);
    gemma2__tensors_free(&ts);
    gemma2_free(m);
    return rc;
}

GEMMA2_DEF gemma2_model *gemma2_load(const char *model_dir, const gemma2_options *opt, char *err, size_t err_size)
{
    gemma2_model *m;
    gemma2__load(model_dir, opt, &m, err, err_size);
    return m;
}

GEMMA2_DEF int gemma2_vocab_size(const gemma2_model *m) { return m ? m->cfg.vocab_size : GEMMA2_ERROR_INVALID_ARGUMENT; }
GEMMA2_DEF const gemma2_config *gemma2_model_config(const gemma2_model *m) { return m ? &m->cfg : NULL; }
GEMMA2_DEF size_t gemma2_model_weight_bytes(const gemma2_model *m) { return m ? m->weight_bytes : 0; }
GEMMA2_DEF const char *gemma2_model_kernels(const gemma2_model *m) { return m && m->kern.name ? m->kern.name : "none"; }

GEMMA2_DEF int gemma2_model_weights(const gemma2_model *m, int *saved)
{
    int q;
    if (saved) *saved = 0;
    if (!m) return GEMMA2_ERROR_INVALID_ARGUMENT;
    /* Quantizing at load copies every matrix (and the files are then closed); a saved quantized
       folder is the one case where Q8/Q4 matrices point into the files. */
    q = m->opt.weights == GEMMA2_WEIGHTS_Q8 || m->opt.weights == GEMMA2_WEIGHTS_Q4;
    if (saved) *saved = q && m->has_weights && m->files_in_use;
    return m->opt.weights;
}

/* ---- saving quantized checkpoints ---------------------------------------------------------- */

#if defined(GEMMA2__WINDOWS)
/* windows.h is in (2.1) */
#elif defined(__unix__) || defined(__APPLE__)
#include <sys/types.h>
#include <sys/stat.h>  /* mkdir, stat */
#define GEMMA2__POSIX_FS 1
#endif

/* A text buffer that grows; a failed allocation is remembered and reported once, at the end. */
typedef struct gemma2__sbuf {
    char *p;
    size_t n, cap;
    int failed;
} gemma2__sbuf;

static void gemma2__sbuf_add(gemma2__sbuf *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (b->cap - b->n < n + 1) {
        size_t cap = GEMMA2__MAX(b->cap * 2, b->n + n + 256);
        char *p = (char *)GEMMA2_REALLOC(b->p, cap);
        if (!p) { b->failed = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void gemma2__sbuf_str(gemma2__sbuf *b, const char *s) { gemma2__sbuf_add(b, s, strlen(s)); }

static void gemma2__sbuf_u64(gemma2__sbuf *b, uint64_t v)
{
    char t[24];
    snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    gemma2__sbuf_str(b, t);
}

/* s as a JSON string, quotes included (the names come from the input's JSON, unescaped). */
static void gemma2__sbuf_jstr(gemma2__sbuf *b, const char *s)
{
    gemma2__sbuf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        if (c == '"' || c == '\\') { e[0] = '\\'; e[1] = (char)c; gemma2__sbuf_add(b, e, 2); }
        else if (c < 0x20) { snprintf(e, sizeof e, "\\u%04x", (unsigned)c); gemma2__sbuf_add(b, e, 6); }
        else gemma2__sbuf_add(b, s, 1);
    }
    gemma2__sbuf_add(b, "\"", 1);
}

/* 1 when a and b name the same folder: the same text up to trailing separators, or the same
   device and inode (the same volume and file index on Windows), however they are spelled. */
static int gemma2__same_dir(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    while (na > 1 && (a[na - 1] == '/' || a[na - 1] == '\\')) na--;
    while (nb > 1 && (b[nb - 1] == '/' || b[nb - 1] == '\\')) nb--;
    if (na == nb && !memcmp(a, b, na)) return 1;
#if defined(GEMMA2__POSIX_FS)
    {
        struct stat sa, sb;
        if (stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino) return 1;
    }
#elif defined(GEMMA2__WINDOWS)
    {
        /* the same volume and file index ("..", links, short names); folders open only with
           FILE_FLAG_BACKUP_SEMANTICS, and asking for no access right works on any of them */
        BY_HANDLE_FILE_INFORMATION ia, ib;
        HANDLE h[2];
        int k, same;
        for (k = 0; k < 2; k++) {
            wchar_t *w = gemma2__wpath(k ? b : a);
            h[k] = w ? CreateFileW(w, 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                                   FILE_FLAG_BACKUP_SEMANTICS, NULL) : INVALID_HANDLE_VALUE;
            GEMMA2_FREE(w);
        }
        same = h[0] != INVALID_HANDLE_VALUE && h[1] != INVALID_HANDLE_VALUE && GetFileInformationByHandle(h[0], &ia) &&
               GetFileInformationByHandle(h[1], &ib) && ia.dwVolumeSerialNumber == ib.dwVolumeSerialNumber &&
               ia.nFileIndexHigh == ib.nFileIndexHigh && ia.nFileIndexLow == ib.nFileIndexLow;
        for (k = 0; k < 2; k++) if (h[k] != INVALID_HANDLE_VALUE) CloseHandle(h[k]);
        if (same) return 1;
    }
#endif
    return 0;
}

/* Creates folder dir unless it exists (its parent must). */
static int gemma2__make_dir(const char *dir, char *err, size_t err_size)
{
#if defined(GEMMA2__POSIX_FS)
    struct stat st;
    if (stat(dir, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: exists and is not a folder", dir);
    if (mkdir(dir, 0777) != 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot create the folder", dir);
    return 0;
#elif defined(GEMMA2__WINDOWS)
    DWORD a = gemma2__file_attributes(dir);
    wchar_t *w;
    BOOL made;
    if (a != INVALID_FILE_ATTRIBUTES)
        return (a & FILE_ATTRIBUTE_DIRECTORY) ? 0 : gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: exists and is not a folder", dir);
    w = gemma2__wpath(dir);
    made = w && CreateDirectoryW(w, NULL);
    GEMMA2_FREE(w);
    if (!made) return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot create the folder", dir);
    return 0;
#else
    (void)dir; (void)err; (void)err_size; /* no portable way: the folder must exist (creating the file in it says so) */
    return 0;
#endif
}

/* Copies a small file (read whole, then written). */
static int gemma2__copy_file(const char *from, const char *to, char *err, size_t err_size)
{
    gemma2__file f;
    FILE *fp;
    int rc = gemma2__file_read(&f, from, err, err_size), bad;
    if (rc) return rc;
    if (!(fp = gemma2__fopen(to, "wb"))) {
        gemma2__file_close(&f);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot create", to);
    }
    bad = f.size > 0 && fwrite(f.data, 1, f.size, fp) != f.size;
    bad |= fclose(fp) != 0;
    gemma2__file_close(&f);
    return bad ? gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: write error (disk full?)", to) : 0;
}

/* One tensor of the output, in file order. */
typedef struct gemma2__save_item {
    const gemma2__tensor *t;   /* the input tensor */
    int fmt;                   /* GEMMA2__WF_* a matrix is quantized to; -1: copied as stored */
    int rows, cols;
    uint64_t bytes;            /* in the output */
} gemma2__save_item;

GEMMA2_DEF int gemma2_save_quantized(const char *in_dir, const char *out_dir, int weights, const gemma2_options *opt,
                                     char *err, size_t err_size)
{
    static const char *const side_files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
                                             "tokenizer_config.json", "special_tokens_map.json"};
    gemma2_model *m = NULL;         /* holds the input's config and its mapped files */
    gemma2__tensors ts;
    gemma2__save_item *items = NULL, *mats = NULL;
    uint8_t *is_mat = NULL;         /* [ts.n] 1 for the tensors in mats */
    gemma2__sbuf hdr;
    gemma2__pool *pool = NULL;
    gemma2__file cf;
    FILE *fp = NULL;
    uint8_t *buf = NULL, len8[8];
    char *path = NULL, *tmp = NULL, *dst = NULL, name[160];
    const char *scheme = gemma2__weights_name(weights);
    uint64_t total = 0, done = 0, largest = 0, off = 0;
    int rc = 0, n_items = 0, n_mats = 0, n_bound, i, k, esize;

    if (err && err_size) err[0] = 0;
    memset(&ts, 0, sizeof ts);
    memset(&hdr, 0, sizeof hdr);
    if (!in_dir || !out_dir) return gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_save_quantized: in_dir or out_dir is NULL");
    if (weights != GEMMA2_WEIGHTS_Q8 && weights != GEMMA2_WEIGHTS_Q4)
        return gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_save_quantized: weights must be GEMMA2_WEIGHTS_Q8 or "
                            "GEMMA2_WEIGHTS_Q4 (got %d)", weights);
    if (opt && opt->n_threads < 0) return gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_save_quantized: n_threads is negative");
    if (gemma2__same_dir(in_dir, out_dir))
        return gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_save_quantized: out_dir %s is in_dir: write the "
                            "quantized folder to another one", out_dir);
    if (!(m = (gemma2_model *)gemma2__calloc(1, sizeof *m))) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    if (opt) {
        m->opt.n_threads = opt->n_threads;
        m->opt.progress = opt->progress;
        m->opt.progress_user = opt->progress_user;
    }
    if (gemma2__kernels_select(opt ? opt->kernels : GEMMA2_KERNELS_AUTO, &m->kern) != 0) { /* the set's from_float: the same bytes, faster */
        gemma2_free(m);
        return gemma2__fail(err, err_size, GEMMA2_ERROR_UNSUPPORTED, "gemma2_save_quantized: the kernel set asked for (%d) is not available "
                            "on this CPU or build", opt->kernels);
    }

#define GEMMA2__SAVE_FAIL(...) do { rc = gemma2__fail(err, err_size, __VA_ARGS__); goto done; } while (0)
    /* The input, read as gemma2_load reads it: the config gives the shapes of what gets bound. */
    if (!(path = gemma2__path_join(in_dir, "config.json"))) GEMMA2__SAVE_FAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    if ((rc = gemma2__file_read(&cf, path, err, err_size)) != 0) goto done;
    rc = gemma2__config_parse(&m->cfg, (const char *)cf.data, cf.size, path, err, err_size);
    gemma2__file_close(&cf);
    if (rc) goto done;
    if ((rc = gemma2__read_generation_config(&m->cfg, in_dir, err, err_size)) != 0) goto done;
    if ((rc = gemma2__open_weights(m, in_dir, &ts, err, err_size)) != 0) goto done;
    if (ts.quant)
        GEMMA2__SAVE_FAIL(GEMMA2_ERROR_UNSUPPORTED, "%s: already quantized (%s): save from the original checkpoint", in_dir, gemma2__weights_name(ts.quant));

    /* What to write: every tensor the loader binds is checked as it checks it, so the saved
       folder loads; the matrices are quantized (format: gemma2__weights_format, as at load),
       everything else is copied. */
    items = (gemma2__save_item *)gemma2__calloc((size_t)ts.n + 1, sizeof *items);
    mats = (gemma2__save_item *)gemma2__calloc((size_t)ts.n + 1, sizeof *mats);
    is_mat = (uint8_t *)gemma2__calloc((size_t)ts.n + 1, 1);
    if (!items || !mats || !is_mat) GEMMA2__SAVE_FAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    n_bound = 2 + m->cfg.num_hidden_layers * GEMMA2__N_LAYER_TENSORS;
    for (i = 0; i < n_bound; i++) {
        const gemma2__tensor *t = NULL;
        int rows, cols;
        gemma2__bound_tensor(&m->cfg, i, name, sizeof name, &rows, &cols);
        if ((rc = gemma2__want(&ts, name, rows ? rows : cols, rows ? cols : 0, &t, m, err, err_size)) != 0) goto done;
        if (t->dtype == GEMMA2__ST_U8)
            GEMMA2__SAVE_FAIL(GEMMA2_ERROR_FORMAT, "tensor %s: dtype U8 (quantized blocks) in a file whose __metadata__ names no "
                              "\"gemma2.quantization\" scheme", name);
        if (!rows) continue;
        mats[n_mats].t = t;
        is_mat[t - ts.t] = 1;
        mats[n_mats].fmt = gemma2__weights_format(weights, t->dtype, name);
        mats[n_mats].rows = rows;
        mats[n_mats].cols = cols;
        mats[n_mats].bytes = (uint64_t)rows * gemma2__row_bytes(mats[n_mats].fmt, cols);
        largest = GEMMA2__MAX(largest, mats[n_mats].bytes);
        n_mats++;
    }
    for (esize = 4; esize >= 1; esize /= 2) /* the others first, widest elements first: all stay aligned */
        for (i = 0; i < ts.n; i++) {
            if (is_mat[i] || gemma2__st_esize[ts.t[i].dtype] != esize) continue;
            items[n_items].t = &ts.t[i];
            items[n_items].fmt = -1;
            items[n_items++].bytes = ts.t[i].nbytes;
        }
    memcpy(items + n_items, mats, (size_t)n_mats * sizeof *mats);
    n_items += n_mats;

    /* The header: metadata, then the tensors in file order; padded so the data starts at a
       multiple of 8. */
    gemma2__sbuf_str(&hdr, "{\"__metadata__\":{\"format\":\"pt\",\"gemma2.quantization\":");
    gemma2__sbuf_jstr(&hdr, scheme);
    gemma2__sbuf_str(&hdr, ",\"gemma2.quantization_version\":\"");
    gemma2__sbuf_u64(&hdr, GEMMA2__QUANT_VERSION);
    gemma2__sbuf_str(&hdr, "\"}");
    for (i = 0; i < n_items; i++) {
        const gemma2__save_item *it = &items[i];
        gemma2__sbuf_str(&hdr, ",");
        gemma2__sbuf_jstr(&hdr, it->t->name);
        gemma2__sbuf_str(&hdr, ":{\"dtype\":\"");
        gemma2__sbuf_str(&hdr, gemma2__st_names[it->fmt >= 0 ? GEMMA2__ST_U8 : it->t->dtype]);
        gemma2__sbuf_str(&hdr, "\",\"shape\":[");
        if (it->fmt >= 0) {
            gemma2__sbuf_u64(&hdr, (uint64_t)it->rows);
            gemma2__sbuf_str(&hdr, ",");
            gemma2__sbuf_u64(&hdr, (uint64_t)gemma2__row_bytes(it->fmt, it->cols));
        } else
            for (k = 0; k < it->t->ndim; k++) {
                if (k) gemma2__sbuf_str(&hdr, ",");
                gemma2__sbuf_u64(&hdr, (uint64_t)it->t->shape[k]);
            }
        gemma2__sbuf_str(&hdr, "],\"data_offsets\":[");
        gemma2__sbuf_u64(&hdr, off);
        gemma2__sbuf_str(&hdr, ",");
        gemma2__sbuf_u64(&hdr, off + it->bytes);
        gemma2__sbuf_str(&hdr, "]}");
        off += it->bytes;
    }
    gemma2__sbuf_str(&hdr, "}");
    while (!hdr.failed && (8 + hdr.n) % 8) gemma2__sbuf_str(&hdr, " ");
    if (hdr.failed) GEMMA2__SAVE_FAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    total = off;
    if (largest > (uint64_t)((size_t)-1 / 2) || !(buf = (uint8_t *)GEMMA2_MALLOC((size_t)largest)))
        GEMMA2__SAVE_FAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "gemma2_save_quantized: out of memory (%llu bytes for the largest quantized matrix)",
                          (unsigned long long)largest);

    /* The output: a partial file, renamed once complete. */
    if ((rc = gemma2__make_dir(out_dir, err, err_size)) != 0) goto done;
    GEMMA2_FREE(path);
    if (!(path = gemma2__path_join(out_dir, "model.safetensors.index.json")) ||
        !(tmp = gemma2__path_join(out_dir, "model.safetensors.partial")) || !(dst = gemma2__path_join(out_dir, "model.safetensors")))
        GEMMA2__SAVE_FAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
    if (gemma2__file_exists(path))
        GEMMA2__SAVE_FAIL(GEMMA2_ERROR_INVALID_ARGUMENT, "%s: gemma2_load would read the shards it names instead of the saved "
                          "model.safetensors: remove it, or save to another folder", path);
    if (!(fp = gemma2__fopen(tmp, "wb"))) GEMMA2__SAVE_FAIL(GEMMA2_ERROR_IO, "%s: cannot create", tmp);
    for (k = 0; k < 8; k++) len8[k] = (uint8_t)((uint64_t)hdr.n >> (8 * k));
    if (fwrite(len8, 1, 8, fp) != 8 || fwrite(hdr.p, 1, hdr.n, fp) != hdr.n) GEMMA2__SAVE_FAIL(GEMMA2_ERROR_IO, "%s: write error (disk full?)", tmp);
    pool = gemma2__pool_new(m->opt.n_threads > 0 ? m->opt.n_threads : gemma2__cpu_count()); /* NULL: quantize on this thread */
    for (i = 0; i < n_items; i++) {
        const gemma2__save_item *it = &items[i];
        const uint8_t *src = it->t->data;
        if (it->fmt >= 0) {
            if (gemma2__quantize(pool, &m->kern, buf, it->fmt, it->t->data, it->t->dtype, it->rows, it->cols) != 0)
                GEMMA2__SAVE_FAIL(GEMMA2_ERROR_OUT_OF_MEMORY, "tensor %s: out of memory quantizing to %s", it->t->name, gemma2__wformat_of(it->fmt)->name);
            src = buf;
        }
        if (it->bytes > 0 && fwrite(src, 1, (size_t)it->bytes, fp) != it->bytes)
            GEMMA2__SAVE_FAIL(GEMMA2_ERROR_IO, "%s: write error at tensor %s (disk full?)", tmp,
                              gemma2__esc(name, sizeof name, it->t->name, strlen(it->t->name)));
        gemma2__file_release(&m->files[it->t->file], it->t->data, (size_t)it->t->nbytes);
        done += it->bytes;
        if (m->opt.progress && m->opt.progress(m->opt.progress_user, (float)((double)done / (double)(total ? total : 1))))
            GEMMA2__SAVE_FAIL(GEMMA2_ERROR_CANCELLED, "saving cancelled by the progress callback");
    }
    k = fflush(fp) != 0 || ferror(fp);
    k |= fclose(fp) != 0;
    fp = NULL;
    if (k) GEMMA2__SAVE_FAIL(GEMMA2_ERROR_IO, "%s: write error (disk full?)", tmp);

    /* The old weights go before anything of the new folder lands beside them; the new ones
       arrive last, whole. */
    gemma2__remove(dst);
    for (k = 0; k < (int)(sizeof side_files / sizeof side_files[0]); k++) {
        char *from = gemma2__path_join(in_dir, side_files[k]), *to = gemma2__path_join(out_dir, side_files[k]);
        if (!from || !to) rc = gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "out of memory");
        else if (gemma2__file_exists(from)) rc = gemma2__copy_file(from, to, err, err_size);
        GEMMA2_FREE(from);
        GEMMA2_FREE(to);
        if (rc) goto done;
    }
    if (gemma2__rename(tmp, dst) != 0) GEMMA2__SAVE_FAIL(GEMMA2_ERROR_IO, "%s: cannot rename it to %s", tmp, dst);
#undef GEMMA2__SAVE_FAIL
done:
    if (fp) fclose(fp);
    if (rc && tmp) gemma2__remove(tmp);
    gemma2__pool_free(pool);
    GEMMA2_FREE(buf);
    GEMMA2_FREE(hdr.p);
    GEMMA2_FREE(items);
    GEMMA2_FREE(mats);
    GEMMA2_FREE(is_mat);
    GEMMA2_FREE(path);
    GEMMA2_FREE(tmp);
    GEMMA2_FREE(dst);
    gemma2__tensors_free(&ts);
    gemma2_free(m);
    return rc;
}

/* ---- saved sessions to and from files (the format and its checks are in section 2.6) ------- */

GEMMA2_DEF int gemma2_session_save(const gemma2_session *s, const char *path, char *err, size_t err_size)
{
    gemma2__sess_out o;
    char *tmp;
    int bad;
    if (!s || !path) return gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_session_save: no session or no path");
    if (!(tmp = (char *)gemma2__malloc_n(strlen(path) + 9, 1))) return gemma2__fail(err, err_size, GEMMA2_ERROR_OUT_OF_MEMORY, "%s: out of memory", path);
    memcpy(tmp, path, strlen(path));
    memcpy(tmp + strlen(path), ".partial", 9);
    memset(&o, 0, sizeof o);
    if (!(o.fp = fopen(tmp, "wb"))) {
        bad = gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot create", tmp);
        GEMMA2_FREE(tmp);
        return bad;
    }
    gemma2__sess_write(s, &o);
    bad = o.failed || fflush(o.fp) != 0 || ferror(o.fp);
    bad |= fclose(o.fp) != 0;
    if (bad) {
        remove(tmp);
        bad = gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: write error (disk full?)", tmp);
        GEMMA2_FREE(tmp);
        return bad;
    }
    /* rename replaces an existing file on POSIX; Windows wants it gone first */
    if (rename(tmp, path) != 0 && (remove(path), rename(tmp, path) != 0)) {
        remove(tmp);
        bad = gemma2__fail(err, err_size, GEMMA2_ERROR_IO, "%s: cannot rename it to %s", tmp, path);
        GEMMA2_FREE(tmp);
        return bad;
    }
    GEMMA2_FREE(tmp);
    return 0;
}

GEMMA2_DEF gemma2_session *gemma2_session_load(const gemma2_model *m, const char *path, int n_ctx, int *rc,
                                               char *err, size_t err_size)
{
    gemma2__file f;
    gemma2_session *s;
    int r;
    if (!path) {
        r = gemma2__fail(err, err_size, GEMMA2_ERROR_INVALID_ARGUMENT, "gemma2_session_load: no path");
        if (rc) *rc = r;
        return NULL;
    }
    /* mapped: the bytes are hashed and copied into the cache once, never read into a buffer first */
    if ((r = gemma2__file_map(&f, path, err, err_size)) != 0) {
        if (rc) *rc = r;
        return NULL;
    }
    s = gemma2__sess_load(m, path, f.data, f.size, n_ctx, rc, err, err_size);
    gemma2__file_close(&f);
    return s;
}

/* ===========================================================================
   2.11 Thread pool
   =========================================================================== */

/* The pool runs one parallel step at a time: fn(ctx, task, n_tasks) for every task,
   spread over the session's threads (the calling thread works too), then returns.
   Sessions own their pool, so a shared model never needs locks.

   Design (why it looks like this):
   - Workers are created once, in gemma2__pool_new, and live until gemma2__pool_free:
     a forward pass issues hundreds of parallel steps per token, so creating threads per
     step (tens of microseconds each) would cost more than small steps take to compute.
   - The whole state of a step lives in ONE 64-bit word, `work`: a 16-bit generation, the
     number of tasks (24 bits) and the next unclaimed task (24 bits). A thread claims a
     task with a compare-and-swap that bumps the index only if the generation and count
     are those it read, so a late worker can never claim a task of a step that has
     already finished, nor mix up one step's function with another's task number. fn and
     ctx are written before the word is published (release) and read after a successful
     claim (acquire); the step cannot end while a claimed task is unfinished, so they are
     stable while read.
   - Tasks are handed out dynamically (whoever is free takes the next one), so a worker
     that wakes late or is preempted only means the others take more tasks; the caller
     also works, and finishes the step alone if nobody else shows up.
   - Between steps, workers spin briefly (steps follow each other within microseconds
     during a forward pass), then sleep on a condition variable so an idle session costs
     no CPU. The publisher takes the mutex only if someone may be asleep. */

#if defined(GEMMA2__WINDOWS)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>   /* threads, GetSystemInfo */
#if !defined(GEMMA2_NO_THREADS)
#define GEMMA2__THREADS_WIN32 1
#endif
#else
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>    /* sysconf */
#endif
#if !defined(GEMMA2_NO_THREADS)
#include <pthread.h>
#include <sched.h>
#define GEMMA2__THREADS_PTHREAD 1
#endif
#endif

/* Atomics: GCC/Clang builtins (C and C++ alike), Interlocked* on MSVC. All are sequentially
   consistent, which the sleep/wake handshake below relies on; the cost is irrelevant here. */
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#define GEMMA2__LOAD64(p) ((uint64_t)InterlockedCompareExchange64((volatile LONG64 *)(p), 0, 0))
#define GEMMA2__STORE64(p, v) ((void)InterlockedExchange64((volatile LONG64 *)(p), (LONG64)(v)))
#define GEMMA2__CAS64(p, expect, desired) \
    ((uint64_t)InterlockedCompareExchange64((volatile LONG64 *)(p), (LONG64)(desired), (LONG64)(expect)) == (uint64_t)(expect))
#define GEMMA2__LOAD32(p) ((int)InterlockedCompareExchange((volatile LONG *)(p), 0, 0))
#define GEMMA2__STORE32(p, v) ((void)InterlockedExchange((volatile LONG *)(p), (LONG)(v)))
#define GEMMA2__ADD32(p, v) ((int)InterlockedExchangeAdd((volatile LONG *)(p), (LONG)(v)))
#define GEMMA2__PAUSE() YieldProcessor()
#elif !defined(__GNUC__) && !defined(__clang__) && defined(GEMMA2_NO_THREADS)
/* A compiler with neither (tcc): without worker threads the pool is only ever touched by the
   calling thread, so plain loads and stores are exact. */
#define GEMMA2__LOAD64(p) (*(p))
#define GEMMA2__STORE64(p, v) ((void)(*(p) = (v)))
#define GEMMA2__CAS64(p, expect, desired) (*(p) == (expect) ? (*(p) = (desired), 1) : ((expect) = *(p), 0))
#define GEMMA2__LOAD32(p) (*(p))
#define GEMMA2__STORE32(p, v) ((void)(*(p) = (v)))
#define GEMMA2__ADD32(p, v) ((*(p) += (v)) - (v))
#define GEMMA2__PAUSE() ((void)0)
#elif !defined(__GNUC__) && !defined(__clang__)
#error "gemma2.h: no atomic operations known for this compiler; define GEMMA2_NO_THREADS"
#else
#define GEMMA2__LOAD64(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define GEMMA2__STORE64(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define GEMMA2__CAS64(p, expect, desired) \
    __atomic_compare_exchange_n((p), &(expect), (desired), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)
#define GEMMA2__LOAD32(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define GEMMA2__STORE32(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define GEMMA2__ADD32(p, v) __atomic_fetch_add((p), (v), __ATOMIC_SEQ_CST)
#if defined(__x86_64__) || defined(__i386__)
#define GEMMA2__PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define GEMMA2__PAUSE() __asm__ __volatile__("yield")
#else
#define GEMMA2__PAUSE() ((void)0)
#endif
#endif

/* How long idle threads spin before sleeping (iterations of a pause instruction, each a
   few to ~100 cycles): long enough to bridge the gap between two matrix products in a
   forward pass, short enough that a session between tokens goes quiet within ~0.1 ms. */
#ifndef GEMMA2_POOL_SPIN
#define GEMMA2_POOL_SPIN 20000
#endif

#define GEMMA2__WORK_GEN(w) ((uint32_t)((w) >> 48))
#define GEMMA2__WORK_N(w) ((int)(((w) >> 24) & 0xffffffu))
#define GEMMA2__WORK_NEXT(w) ((int)((w) & 0xffffffu))
#define GEMMA2__WORK_MAX_TASKS 0xffffff

struct gemma2__pool {
    int n_threads;               /* including the caller */
    uint64_t work;               /* gen:16 | n_tasks:24 | next:24, see above */
    int done;                    /* tasks finished in the current step */
    int sleepers;                /* workers that may be waiting on `wake` */
    int stop;
    gemma2__task_fn fn;
    void *ctx;
#if defined(GEMMA2__THREADS_PTHREAD)
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t *threads;
#elif defined(GEMMA2__THREADS_WIN32)
    CRITICAL_SECTION mu;
    CONDITION_VARIABLE wake;
    HANDLE *threads;
#endif
    int n_started;               /* worker threads actually running */
};

/* Claims and runs tasks of the step `w` was read from until none are left. */
static void gemma2__pool_drain(gemma2__pool *p, uint64_t w)
{
    for (;;) {
        uint32_t gen = GEMMA2__WORK_GEN(w);
        int i = GEMMA2__WORK_NEXT(w), n = GEMMA2__WORK_N(w);
        if (i >= n) return;
        if (GEMMA2__CAS64(&p->work, w, w + 1)) {
            p->fn(p->ctx, i, n);
            GEMMA2__ADD32(&p->done, 1);
        }
        w = GEMMA2__LOAD64(&p->work);
        if (GEMMA2__WORK_GEN(w) != gen) return; /* that step is over (another one began) */
    }
}

#if defined(GEMMA2__THREADS_PTHREAD) || defined(GEMMA2__THREADS_WIN32)
static void gemma2__pool_worker(gemma2__pool *p)
{
    uint32_t seen = GEMMA2__WORK_GEN(GEMMA2__LOAD64(&p->work));
    for (;;) {
        uint64_t w = GEMMA2__LOAD64(&p->work);
        int spin = 0;
        while (GEMMA2__WORK_GEN(w) == seen && !GEMMA2__LOAD32(&p->stop)) {
            if (++spin < GEMMA2_POOL_SPIN) { GEMMA2__PAUSE(); w = GEMMA2__LOAD64(&p->work); continue; }
            /* sleep: announce first, then re-check under the mutex (the publisher stores
               the word before reading `sleepers`, so one of us sees the other) */
            GEMMA2__ADD32(&p->sleepers, 1);
#if defined(GEMMA2__THREADS_PTHREAD)
            pthread_mutex_lock(&p->mu);
            while (GEMMA2__WORK_GEN(GEMMA2__LOAD64(&p->work)) == seen && !GEMMA2__LOAD32(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
#else
            EnterCriticalSection(&p->mu);
            while (GEMMA2__WORK_GEN(GEMMA2__LOAD64(&p->work)) == seen && !GEMMA2__LOAD32(&p->stop))
                SleepConditionVariableCS(&p->wake, &p->mu, INFINITE);
            LeaveCriticalSection(&p->mu);
#endif
            GEMMA2__ADD32(&p->sleepers, -1);
            w = GEMMA2__LOAD64(&p->work);
            spin = 0;
        }
        if (GEMMA2__LOAD32(&p->stop)) return;
        seen = GEMMA2__WORK_GEN(w);
        gemma2__pool_drain(p, w);
    }
}
#endif

#if defined(GEMMA2__THREADS_PTHREAD)
static void *gemma2__pool_thread(void *arg) { gemma2__pool_worker((gemma2__pool *)arg); return NULL; }
#elif defined(GEMMA2__THREADS_WIN32)
static DWORD WINAPI gemma2__pool_thread(LPVOID arg) { gemma2__pool_worker((gemma2__pool *)arg); return 0; }
#endif

static void gemma2__pool_free(gemma2__pool *p)
{
    if (!p) return;
#if defined(GEMMA2__THREADS_PTHREAD) || defined(GEMMA2__THREADS_WIN32)
    /* a pool made for one thread never initialised its lock: a zeroed CRITICAL_SECTION reads
       as held, and entering it waits forever (a zeroed pthread mutex happens to work) */
    if (p->threads) {
        int i;
        GEMMA2__STORE32(&p->stop, 1);
#if defined(GEMMA2__THREADS_PTHREAD)
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        for (i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
#else
        EnterCriticalSection(&p->mu);
        WakeAllConditionVariable(&p->wake);
        LeaveCriticalSection(&p->mu);
        for (i = 0; i < p->n_started; i++) { WaitForSingleObject(p->threads[i], INFINITE); CloseHandle(p->threads[i]); }
        DeleteCriticalSection(&p->mu);
#endif
        GEMMA2_FREE(p->threads);
    }
#endif
    GEMMA2_FREE(p);
}

/* n_threads counts the caller: 1 = no worker threads. NULL if out of memory. If the OS
   refuses some threads, the pool simply runs with fewer. */
static gemma2__pool *gemma2__pool_new(int n_threads)
{
    gemma2__pool *p = (gemma2__pool *)gemma2__calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads < 1 ? 1 : n_threads;
#if defined(GEMMA2__THREADS_PTHREAD) || defined(GEMMA2__THREADS_WIN32)
    if (p->n_threads > 1) {
        int i;
#if defined(GEMMA2__THREADS_PTHREAD)
        p->threads = (pthread_t *)gemma2__calloc((size_t)p->n_threads - 1, sizeof *p->threads);
        if (!p->threads) { GEMMA2_FREE(p); return NULL; }
        if (pthread_mutex_init(&p->mu, NULL) != 0) { GEMMA2_FREE(p->threads); GEMMA2_FREE(p); return NULL; }
        if (pthread_cond_init(&p->wake, NULL) != 0) {
            pthread_mutex_destroy(&p->mu); GEMMA2_FREE(p->threads); GEMMA2_FREE(p); return NULL;
        }
        for (i = 0; i < p->n_threads - 1; i++) {
            if (pthread_create(&p->threads[i], NULL, gemma2__pool_thread, p) != 0) break;
            p->n_started++;
        }
#else
        p->threads = (HANDLE *)gemma2__calloc((size_t)p->n_threads - 1, sizeof *p->threads);
        if (!p->threads) { GEMMA2_FREE(p); return NULL; }
        InitializeCriticalSection(&p->mu);
        InitializeConditionVariable(&p->wake);
        for (i = 0; i < p->n_threads - 1; i++) {
            p->threads[i] = CreateThread(NULL, 0, gemma2__pool_thread, p, 0, NULL);
            if (!p->threads[i]) break;
            p->n_started++;
        }
#endif
        p->n_threads = p->n_started + 1;
    }
#else
    p->n_threads = 1; /* GEMMA2_NO_THREADS: everything inline */
#endif
    return p;
}

static int gemma2__pool_size(const gemma2__pool *p) { return p->n_threads; }

/* Runs fn(ctx, t, n_tasks) for t = 0 .. n_tasks-1, each exactly once, and returns when all
   have finished. Not reentrant: call it from the pool's owner only, never from a task. */
static void gemma2__pool_run(gemma2__pool *p, gemma2__task_fn fn, void *ctx, int n_tasks)
{
    uint64_t w;
    int t;
    if (n_tasks <= 0) return;
    if (p->n_threads <= 1 || n_tasks == 1 || n_tasks > GEMMA2__WORK_MAX_TASKS) {
        for (t = 0; t < n_tasks; t++) fn(ctx, t, n_tasks);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    GEMMA2__STORE32(&p->done, 0);
    w = GEMMA2__LOAD64(&p->work);
    w = ((uint64_t)((GEMMA2__WORK_GEN(w) + 1) & 0xffffu) << 48) | ((uint64_t)n_tasks << 24);
    GEMMA2__STORE64(&p->work, w); /* publish: fn, ctx and done are visible to whoever sees this */
    if (GEMMA2__LOAD32(&p->sleepers) > 0) {
#if defined(GEMMA2__THREADS_PTHREAD)
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
#elif defined(GEMMA2__THREADS_WIN32)
        EnterCriticalSection(&p->mu);
        WakeAllConditionVariable(&p->wake);
        LeaveCriticalSection(&p->mu);
#endif
    }
    gemma2__pool_drain(p, w);
    /* every task is claimed; wait for the ones other threads are still running */
    for (t = 0; GEMMA2__LOAD32(&p->done) < n_tasks; t++) {
        GEMMA2__PAUSE();
#if defined(GEMMA2__THREADS_PTHREAD)
        if (t > GEMMA2_POOL_SPIN) sched_yield(); /* oversubscribed machine: let the worker run */
#elif defined(GEMMA2__THREADS_WIN32)
        if (t > GEMMA2_POOL_SPIN) SwitchToThread();
#endif
    }
}

/* Number of online CPUs, or 1 if unknown. */
static int gemma2__cpu_count(void)
{
#if defined(GEMMA2__WINDOWS)
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    return si.dwNumberOfProcessors > 0 ? (int)si.dwNumberOfProcessors : 1;
#elif defined(_SC_NPROCESSORS_ONLN)
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)(n > 1024 ? 1024 : n) : 1;
#else
    return 1;
#endif
}

GEMMA2_DEF int gemma2_cpu_count(void) { return gemma2__cpu_count(); }

/* ===========================================================================
   2.12 Kernels: SIMD sets (x86-64 AVX2 / AVX-512, ARM64 NEON / BF16) and their selection
   =========================================================================== */

/* ---------------------------------------------------------------------------
   Why the matrix products look the way they do

   Everything that matters for speed is y = W x with W in bf16 (or f32) and x in f32.

   Decode (T == 1) is bound by memory bandwidth: every weight byte is used for exactly one
   multiply-add, and a 2B model streams ~5 GB of weights per token. The kernel's only job is
   to keep the memory system saturated: it walks 8 rows at once (8 sequential streams keep
   enough cache-line misses in flight for one core), prefetches each stream 1 KB ahead in
   software, uses 8 independent accumulators, reads each weight byte exactly once, widens
   bf16 to f32 in registers (bf16 is the top half of an f32) and reduces across lanes only
   once per row. Threads take many small slabs of rows (gemma2__matmul_n) so that neither waits.
   Fewer instructions per weight byte leave room for more misses in flight, so where the CPU
   has bf16 dot products the float32 decode can use them too, on x split exactly into three
   bf16 parts (gemma2__matvec_512x3: still float32 arithmetic). Whether that pays depends on
   the CPU, and it is off by default (x3_min_cols, in gemma2__kernels_init_avx512bf16).

   Prefill (T > 1, AVX-512) reuses each loaded weight for many tokens, which turns the
   product compute-bound. The AVX-512 tile turns the problem around: 16 tokens sit across
   the lanes of a register, and the tile holds 12 rows x 32 tokens of outputs in 24
   accumulators. Per pair of columns it loads 2 registers of activations (from a transposed
   copy, xt, made once per input matrix) and broadcasts each row's two bf16 weights with one
   32-bit load from the weights as they are stored: no packing, no copy. That is 14 loads per
   48 FMAs (f32) or 24 vdpbf16ps (GEMMA2_COMPUTE_BF16), no horizontal sums and no shuffles
   in the loop: it runs at ~82-94% of the FMA or vdpbf16ps peak measured on this machine.
   Blocks of 48 rows x 512 columns x 128 tokens keep the xt slice in L2 and the weights in
   L1 while the tiles pass over them.

   Consistency. In every path a given output is computed by the same sequence of operations
   whatever other tokens share the call: the prefill tile sums each output sequentially over
   the columns, in one accumulator lane. So chunking a prompt never changes its results as
   long as each chunk has at least two tokens. One token alone goes through the decode
   kernel, whose 16 lanes sum interleaved columns: a different order, so results agree to
   rounding (~1e-6 relative), not to the bit. F32 weights take the same tile, their weights
   broadcast as floats. (AVX2 and NEON use row-dot tiles with the same order as decode,
   bit-identical.)

   Tails: masked loads read zeros past the last column, so any K works without touching
   memory past a row; odd K reads the last weight as 16 bits. Rows and tokens left over
   after whole tiles get smaller tiles (the tile function is instantiated per shape, so
   every shape keeps its accumulators in registers).

   Q8 and Q4 weights run on integer dot products (AVX512_VNNI) with results equal to their
   reference products bit for bit; their own notes are with their kernels below.

   Each kernel family at a glance: what limits it, its register tile and why that shape, and
   how close it comes, as measured (tests/BENCHMARKS.md; fractions are of the limits measured
   in the same run, on the 2-core development VMs described there):
   - matrix-vector, bf16 / f32 weights (decode): read bandwidth, 1 FLOP per bf16 weight byte.
     8 rows at a time on every set, because 8 sequential streams keep enough misses in flight
     for one core, with 8 independent accumulators to hide the FMA latency. Kernel:
     22.0 GB/s on a VM whose read bandwidth measured 21-23 GB/s; F32 weights 84-99% of the read
     bandwidth; in the model, 2B decode 70-94% (bf16 compute, 2 threads), 80-99% (1 thread).
   - prefill tile, bf16 / f32 weights (several tokens): arithmetic, 128 FLOPs per weight byte
     in a 128-token chunk. AVX-512: 12 rows x 32 tokens, 24 accumulators of 16 lanes out of
     32 registers, leaving room for the 2 activation registers and the broadcast weights: 14
     loads per 48 FMAs, so the loads never set the pace. Float32: 97-100% of the
     FMA peak with operands in L1, 85-94% as blocked for real matrices, 80-84% over a whole
     prompt; with vdpbf16ps, 2B prefill 60-75% of that peak (2 threads), 74-86% (1 thread).
     AVX2 (16 registers): 4 rows x 3 tokens, 12 accumulators + 3 activations + 1 weight;
     NEON (32 registers, 4 lanes): 4 rows x 4 tokens; AVX-512 F32 weights without the
     transposed copy: 4 rows x 6 tokens (24 accumulators).
   - Q8 / Q4 matrix-vector (decode): read bandwidth at the format's bytes, plus unpacking.
     Kernel: Q8 23.1 GB/s, Q4 16.8 GB/s (bf16 22.0 in the same run); 2B decode Q8 94-105% of
     the read bandwidth, Q4 69-73% (2 threads); Q4 spends more instructions per byte read
     (its nibbles are unpacked before the dot products).
   - Q8 / Q4 prefill tile: the integer dot product (vpdpbusd, 64 multiply-adds per
     instruction). 6 rows x 32 tokens: 12 int32 and 12 float accumulators; the float steps per
     block hold it to ~75% (Q8) and ~65% (Q4) of the vpdpbusd peak alone in L1; in the model
     2B prefill 68% (Q8) and 64% (Q4) of the int8-dot peak (2 threads). AVX2: 8 rows x 8
     tokens (rows turned into column groups once per block); NEON: 4 rows x 4 tokens.
   - attention (att_scores / att_values): read bandwidth over the KV cache in decode (each key
     and value read once per kv head and block of 16 tokens, for all the query heads sharing
     it): one core at 8k positions, 14 -> 22 GB/s with the software prefetch.
   - element-wise kernels (RMSNorm, softcap, softmax, GELU, RoPE): a few passes over vectors
     already in cache; about 7.5% of float32 prefill time in all (attention 3%, RoPE and cache
     writes 1%, norms, residuals and GELU 2%, logits 0.5%).
   --------------------------------------------------------------------------- */

/* Shared by the SIMD sets: tile functions take their shape as constant arguments and are
   force-inlined into each call site, and their small loops fully unrolled, so that every
   shape gets its own copy with the accumulator arrays held in registers. */
#if defined(__GNUC__) || defined(__clang__)
#define GEMMA2__ALWAYS_INLINE static inline __attribute__((always_inline))
#define GEMMA2__UNROLL _Pragma("GCC unroll 8")
#define GEMMA2__ALIGN64 __attribute__((aligned(64)))
#else
#define GEMMA2__ALWAYS_INLINE static inline
#define GEMMA2__UNROLL
#define GEMMA2__ALIGN64
#endif

/* Rows [r0, r1) of one token tile of TT tokens: 4-row tiles, then single rows. */
#define GEMMA2__ROWS_TILED(TILE, r0, r1, t, TT, ...)                      \
    do {                                                                   \
        int r_ = (r0);                                                     \
        for (; r_ + 4 <= (r1); r_ += 4) TILE(a, r_, t, 4, TT, __VA_ARGS__); \
        for (; r_ < (r1); r_++) TILE(a, r_, t, 1, TT, __VA_ARGS__);         \
    } while (0)

/* Element idx of an F32 or BF16 matrix, widened: the scalar column tails of the row-dot
   kernels (AVX2, NEON), which handle those two formats. */
static GEMMA2__MAYBE_UNUSED float gemma2__w_at(const gemma2__mat *w, size_t idx)
{
    if (w->format == GEMMA2__WF_BF16) return gemma2__bf16_to_f32(((const uint16_t *)w->data)[idx]);
    return ((const float *)w->data)[idx];
}

/* Where a Q8 / Q4 tile of the AVX2 and NEON kernels reads: rows r .. r+7 (or fewer), tokens
   from t on, in the Q8 activation layout. Rows past the R real ones repeat the last real one,
   so a tile always has whole vectors of rows; only the real ones are stored. */
typedef struct gemma2__qtile {
    const uint8_t *w0; /* row r, block 0 */
    const uint8_t *x0; /* token t in the layout: nb blocks of quants, nb scales, nb sums */
    size_t tb;         /* bytes per token of the layout */
    size_t off[8];     /* byte offset of each tile row from w0 */
    int nb, bytes;     /* blocks per row, bytes per weight block */
} gemma2__qtile;

GEMMA2__ALWAYS_INLINE void gemma2__qtile_begin(gemma2__qtile *c, const gemma2__matmul_args *a, int r, int R, int t, const int q4)
{
    int i;
    c->nb = (a->w->cols + 31) / 32;
    c->bytes = q4 ? GEMMA2__Q4_BYTES : GEMMA2__Q8_BYTES;
    c->w0 = (const uint8_t *)a->w->data + (size_t)r * (size_t)c->nb * (size_t)c->bytes;
    c->tb = gemma2__q8_tok_bytes(a->w->cols);
    c->x0 = (const uint8_t *)a->xp + (size_t)t * c->tb;
    for (i = 0; i < 8; i++) c->off[i] = (size_t)GEMMA2__MIN(i, R - 1) * (size_t)c->nb * (size_t)c->bytes;
}

/* Token j's scale (dx) and block sum (sx) arrays in a tile. */
GEMMA2__ALWAYS_INLINE const float *gemma2__qtile_xd(const gemma2__qtile *c, int j)
{
    return (const float *)(const void *)(c->x0 + (size_t)j * c->tb + (size_t)c->nb * 32);
}

#if !defined(GEMMA2_NO_SIMD) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GEMMA2__X86 1
/* g++ 12 reports -Wmaybe-uninitialized inside its own AVX-512 intrinsics (they start from
   _mm512_undefined_*(), a deliberate self-initialization); silence that for the header. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* Per-function targets: this one file runs on any x86-64; what runs is picked at run time. */
#define GEMMA2__T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define GEMMA2__T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define GEMMA2__T_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#define GEMMA2__T_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/* ---- CPU features (asked each time a kernel set is selected: no global caches) ---- */

static void gemma2__cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    unsigned a, b, c, d;
    __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    r[0] = a; r[1] = b; r[2] = c; r[3] = d;
}

/* XCR0: which register files the OS saves on context switch (AVX needs YMM, AVX-512 ZMM too). */
static uint64_t gemma2__xgetbv0(void)
{
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

enum { GEMMA2__CPU_AVX2 = 1, GEMMA2__CPU_AVX512 = 2, GEMMA2__CPU_AVX512BF16 = 4, GEMMA2__CPU_AVX512VNNI = 8 };

static int gemma2__x86_features(void)
{
    unsigned r[4], max_leaf, l1c, l7b, l7c, l71a = 0;
    uint64_t xcr0;
    int f = 0;
    gemma2__cpuid(0, 0, r);
    max_leaf = r[0];
    if (max_leaf < 7) return 0;
    gemma2__cpuid(1, 0, r);
    l1c = r[2];
    if (!(l1c & (1u << 27)) || !(l1c & (1u << 28))) return 0; /* OSXSAVE, AVX */
    xcr0 = gemma2__xgetbv0();
    if ((xcr0 & 6) != 6) return 0;
    gemma2__cpuid(7, 0, r);
    l7b = r[1];
    l7c = r[2];
    if (r[0] >= 1) { gemma2__cpuid(7, 1, r); l71a = r[0]; }
    if ((l7b & (1u << 5)) && (l1c & (1u << 12)) && (l1c & (1u << 29))) f |= GEMMA2__CPU_AVX2; /* AVX2 FMA F16C */
    if ((f & GEMMA2__CPU_AVX2) && (xcr0 & 0xe0) == 0xe0 && (l7b & (1u << 16)) && (l7b & (1u << 17)) &&
        (l7b & (1u << 30)) && (l7b & (1u << 31))) {                               /* F DQ BW VL */
        f |= GEMMA2__CPU_AVX512;
        if (l71a & (1u << 5)) f |= GEMMA2__CPU_AVX512BF16;
        if (l7c & (1u << 11)) f |= GEMMA2__CPU_AVX512VNNI;
    }
    return f;
}

/* ======================= AVX-512 ======================= */

/* Mask of the first min(max(left, 0), 16) lanes: the tail of a loop over 16-lane steps. */
static inline __mmask16 gemma2__mask16(int left)
{
    return (__mmask16)(left >= 16 ? 0xffffu : left <= 0 ? 0u : (1u << left) - 1);
}

/* Transposes 16 x 16 32-bit elements in registers: r[i] holds row i, on return r[j] holds
   column j. Unpack 32-bit, unpack 64-bit, then two 128-bit lane shuffles: the textbook
   4-stage network, 64 shuffles for 256 elements. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__transpose16_512(__m512i r[16])
{
    __m512i t[16], u[16];
    int i, c;
    GEMMA2__UNROLL for (i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* u[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c */
    GEMMA2__UNROLL for (i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    GEMMA2__UNROLL for (c = 0; c < 4; c++) {
        __m512i a = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), b = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        __m512i a2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), b2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(a, a2, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(a, a2, 0xdd);
        r[4 + c] = _mm512_shuffle_i32x4(b, b2, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(b, b2, 0xdd);
    }
}

/* ---- decode: one token at a time ----------------------------------------------------

   R = 8 rows at once: a single core's read rate is limited by how many cache-line misses it
   keeps in flight, and 8 concurrent sequential streams measured ~25% faster than 4 (16 gained
   nothing more). On top of the hardware prefetchers, each row stream is prefetched
   GEMMA2__PF bytes ahead in software: with 8 streams the hardware ones start too late at
   every page, and this measured 10-20% more bandwidth on one core (1024 was the best of
   512..4096). */
#define GEMMA2__PF 1024

/* F32 weights (F32 checkpoints kept as stored). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__matvec_512f(const gemma2__matmul_args *a, const float *x, float *y, int r, const int R)
{
    const int K = a->w->cols;
    const float *w0 = (const float *)a->w->data + (size_t)r * (size_t)K;
    __m512 acc[8];
    int i, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            const float *p = w0 + (size_t)i * K + k;
            _mm_prefetch((const char *)p + GEMMA2__PF, _MM_HINT_T0);
            acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(p), xv, acc[i]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
        GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + (size_t)i * K + k), xv, acc[i]);
    }
    GEMMA2__UNROLL for (i = 0; i < R; i++) y[r + i] = _mm512_reduce_add_ps(acc[i]);
}

/* BF16 weights, f32 activations. One 64-byte load holds 32 weights; seen as 16 32-bit lanes,
   lane l holds columns 2l and 2l+1 of the block (little-endian: 2l in the low half). Shifting
   a lane left by 16 gives column 2l as a float, masking off its low half gives column 2l+1:
   two one-cycle integer ops widen a whole load, exactly. x is split to match, its even and
   odd columns gathered by two permutes per 32 columns, shared by the 8 rows. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__matvec_512bh(const gemma2__matmul_args *a, const float *x, float *y, int r, const int R)
{
    const int K = a->w->cols;
    const uint16_t *w0 = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[8];
    int i, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
        __m512 xe = _mm512_permutex2var_ps(x0, ie, x1), xo = _mm512_permutex2var_ps(x0, io, x1);
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            const uint16_t *p = w0 + (size_t)i * K + k;
            __m512i wv = _mm512_loadu_si512((const void *)p);
            _mm_prefetch((const char *)p + GEMMA2__PF, _MM_HINT_T0);
            acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), xe, acc[i]);
            acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, hi)), xo, acc[i]);
        }
    }
    if (k < K) { /* 1..31 columns left: masked loads read zeros past the end */
        int n = K - k;
        __mmask16 m0 = gemma2__mask16(n), m1 = gemma2__mask16(n - 16);
        __mmask32 mw = (__mmask32)((1u << n) - 1);
        __m512 x0 = _mm512_maskz_loadu_ps(m0, x + k), x1 = _mm512_maskz_loadu_ps(m1, x + k + 16);
        __m512 xe = _mm512_permutex2var_ps(x0, ie, x1), xo = _mm512_permutex2var_ps(x0, io, x1);
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            __m512i wv = _mm512_maskz_loadu_epi16(mw, w0 + (size_t)i * K + k);
            acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), xe, acc[i]);
            acc[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, hi)), xo, acc[i]);
        }
    }
    GEMMA2__UNROLL for (i = 0; i < R; i++) y[r + i] = _mm512_reduce_add_ps(acc[i]);
}

/* BF16 weights with vdpbf16ps on bf16 activations (GEMMA2_COMPUTE_BF16): the weights are used
   as loaded, 32 multiply-adds per instruction. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512BF16 void gemma2__matvec_512dp(const gemma2__matmul_args *a, const uint16_t *xb, float *y, int r, const int R)
{
    const int K = a->w->cols;
    const uint16_t *w0 = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    __m512 acc[8];
    int i, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        __m512i xv = _mm512_loadu_si512((const void *)(xb + k));
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            const uint16_t *p = w0 + (size_t)i * K + k;
            _mm_prefetch((const char *)p + GEMMA2__PF, _MM_HINT_T0);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512((const void *)p), (__m512bh)xv);
        }
    }
    if (k < K) {
        __mmask32 m = (__mmask32)((1u << (K - k)) - 1);
        __m512i xv = _mm512_maskz_loadu_epi16(m, xb + k);
        GEMMA2__UNROLL for (i = 0; i < R; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_maskz_loadu_epi16(m, w0 + (size_t)i * K + k), (__m512bh)xv);
    }
    GEMMA2__UNROLL for (i = 0; i < R; i++) y[r + i] = _mm512_reduce_add_ps(acc[i]);
}

/* Float32 decode with bf16 dot products (the default GEMMA2_COMPUTE_F32 on CPUs with
   AVX512_BF16). x comes split exactly into three bf16 parts (GEMMA2__PACK_X3), so that three
   vdpbf16ps per 32 weights compute w*hi + w*mid + w*lo = w*x: products of bf16 numbers are
   exact in float32 and the sums are float32 additions, as with FMAs on widened weights (the
   measured difference is at the float32 rounding level, ~1e-8 of the sum of |terms|). The
   point is the instruction count: 1 load + 3 dot products per 64 weight bytes instead of
   1 load + 2 widening ops + 2 FMAs, which leaves room for more cache misses in flight (on
   the 2304 x 9216 down projection: 46 vs 37 GB/s). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512BF16 void gemma2__matvec_512x3(const gemma2__matmul_args *a, const uint16_t *x3, float *y, int r, const int R)
{
    const int K = a->w->cols;
    const uint16_t *w0 = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    __m512 acc[8];
    int i, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        const uint16_t *xp = x3 + (size_t)k * 3;
        __m512i h = _mm512_loadu_si512((const void *)xp), md = _mm512_loadu_si512((const void *)(xp + 32));
        __m512i lo = _mm512_loadu_si512((const void *)(xp + 64));
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            const uint16_t *p = w0 + (size_t)i * K + k;
            __m512i wv = _mm512_loadu_si512((const void *)p);
            _mm_prefetch((const char *)p + GEMMA2__PF, _MM_HINT_T0);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv, (__m512bh)lo); /* smallest first */
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv, (__m512bh)md);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv, (__m512bh)h);
        }
    }
    if (k < K) { /* the padded last block: masked weights, x parts are zero past K */
        const uint16_t *xp = x3 + (size_t)k * 3;
        __mmask32 m = (__mmask32)((1u << (K - k)) - 1);
        __m512i h = _mm512_loadu_si512((const void *)xp), md = _mm512_loadu_si512((const void *)(xp + 32));
        __m512i lo = _mm512_loadu_si512((const void *)(xp + 64));
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            __m512i wv = _mm512_maskz_loadu_epi16(m, w0 + (size_t)i * K + k);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv, (__m512bh)lo);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv, (__m512bh)md);
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv, (__m512bh)h);
        }
    }
    GEMMA2__UNROLL for (i = 0; i < R; i++) y[r + i] = _mm512_reduce_add_ps(acc[i]);
}

/* Each token of the call in turn through a matrix-vector kernel (decode; also any call that
   brings no transposed activations). */
#define GEMMA2__MATVECS(NAME, TARGET, KERNEL, XT, XSRC)                                          \
    static TARGET void NAME(const gemma2__matmul_args *a, int r0, int r1)                        \
    {                                                                                            \
        int t, r;                                                                                \
        for (t = 0; t < a->T; t++) {                                                             \
            const XT *x = XSRC + (size_t)t * (size_t)a->w->cols;                                 \
            float *y = a->y + (size_t)t * (size_t)a->ldy;                                        \
            for (r = r0; r + 8 <= r1; r += 8) KERNEL(a, x, y, r, 8);                             \
            for (; r < r1; r++) KERNEL(a, x, y, r, 1);                                           \
        }                                                                                        \
    }
GEMMA2__MATVECS(gemma2__matvecs_512f, GEMMA2__T_AVX512, gemma2__matvec_512f, float, a->x)
GEMMA2__MATVECS(gemma2__matvecs_512bh, GEMMA2__T_AVX512, gemma2__matvec_512bh, float, a->x)
GEMMA2__MATVECS(gemma2__matvecs_512dp, GEMMA2__T_AVX512BF16, gemma2__matvec_512dp, uint16_t, (const uint16_t *)a->xp)
GEMMA2__MATVECS(gemma2__matvecs_512x3, GEMMA2__T_AVX512BF16, gemma2__matvec_512x3, uint16_t, (const uint16_t *)a->xp)

/* ---- a batch's one-token sessions: several tokens, each as if alone ---------------------

   Decoding N sessions together should cost one read of the weights, not N. These kernels
   take B <= 4 tokens at a time through the one-token kernels' loop (the same blocks, the same
   instructions per token, each token's 16 lanes summed as there), so every output is bit for
   bit what the one-token kernel gives, while each 64-byte weight load (and its widening)
   serves all B tokens. Registers set the shape: R rows x B tokens of accumulators plus the
   tokens' activations for the block must fit in 32, so R = 8 rows for up to 2 tokens, 4 for
   3 or 4. More tokens go 4 at a time over the same rows, which are then in L1/L2 (4 rows of
   9216 bf16 weights are 72 KB): DRAM still sees each weight once. The several-token tiles
   above put 16 tokens across a register's lanes; with fewer than 16 they waste lanes and
   still pay for every weight, which is why a small batch does not go there. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512BF16 void gemma2__matvec_512x3_n(const gemma2__matmul_args *a, const uint16_t *x3, float *y, int r, const int R,
                                                                      const int B)
{
    const int K = a->w->cols;
    const size_t xs = gemma2__x3_elems(K); /* one token's X3 elements */
    const uint16_t *w0 = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    __m512 acc[8][4];
    int i, b, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) GEMMA2__UNROLL for (b = 0; b < B; b++) acc[i][b] = _mm512_setzero_ps();
    for (; k < K; k += 32) {
        __m512i h[4], md[4], lo[4];
        __mmask32 m = K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (K - k)) - 1);
        GEMMA2__UNROLL for (b = 0; b < B; b++) {
            const uint16_t *xp = x3 + (size_t)b * xs + (size_t)k * 3;
            h[b] = _mm512_loadu_si512((const void *)xp);
            md[b] = _mm512_loadu_si512((const void *)(xp + 32));
            lo[b] = _mm512_loadu_si512((const void *)(xp + 64));
        }
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            const uint16_t *p = w0 + (size_t)i * K + k;
            __m512i wv = _mm512_maskz_loadu_epi16(m, p); /* the full mask on all but the last block */
            _mm_prefetch((const char *)p + GEMMA2__PF, _MM_HINT_T0);
            GEMMA2__UNROLL for (b = 0; b < B; b++) {
                acc[i][b] = _mm512_dpbf16_ps(acc[i][b], (__m512bh)wv, (__m512bh)lo[b]); /* as matvec_512x3 */
                acc[i][b] = _mm512_dpbf16_ps(acc[i][b], (__m512bh)wv, (__m512bh)md[b]);
                acc[i][b] = _mm512_dpbf16_ps(acc[i][b], (__m512bh)wv, (__m512bh)h[b]);
            }
        }
    }
    GEMMA2__UNROLL for (b = 0; b < B; b++) GEMMA2__UNROLL for (i = 0; i < R; i++)
        y[(size_t)b * (size_t)a->ldy + r + i] = _mm512_reduce_add_ps(acc[i][b]);
}

/* The same for FMAs on widened weights (gemma2__matvec_512bh), x in the EO layout: its split
   into even and odd columns made once per call rather than once per group of rows, which
   with 4 rows per group would take as many permutes as FMAs. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__matvec_512bh_n(const gemma2__matmul_args *a, const float *x, float *y, int r, const int R, const int B)
{
    const int K = a->w->cols;
    const size_t xs = gemma2__eo_elems(K);
    const uint16_t *w0 = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[8][4];
    int i, b, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) GEMMA2__UNROLL for (b = 0; b < B; b++) acc[i][b] = _mm512_setzero_ps();
    for (; k < K; k += 32) {
        const int n = K - k;
        __mmask32 mw = n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1);
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            const uint16_t *p = w0 + (size_t)i * K + k;
            __m512i wv = _mm512_maskz_loadu_epi16(mw, p);
            __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), wo = _mm512_castsi512_ps(_mm512_and_si512(wv, hi));
            _mm_prefetch((const char *)p + GEMMA2__PF, _MM_HINT_T0);
            GEMMA2__UNROLL for (b = 0; b < B; b++) { /* as matvec_512bh */
                const float *xb = x + (size_t)b * xs + k;
                acc[i][b] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xb), acc[i][b]);
                acc[i][b] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xb + 16), acc[i][b]);
            }
        }
    }
    GEMMA2__UNROLL for (b = 0; b < B; b++) GEMMA2__UNROLL for (i = 0; i < R; i++)
        y[(size_t)b * (size_t)a->ldy + r + i] = _mm512_reduce_add_ps(acc[i][b]);
}

/* Rows [r0, r1) for all T tokens: per group of rows, the tokens 4 at a time. */
#define GEMMA2__MATVECS_N(NAME, TARGET, KERNEL, XT, XSRC, XSTRIDE)                                  \
    static TARGET void NAME(const gemma2__matmul_args *a, int r0, int r1)                           \
    {                                                                                               \
        const XT *x = XSRC;                                                                         \
        int r = r0, t, rr;                                                                          \
        while (r < r1) {                                                                            \
            rr = r1 - r >= 8 ? 8 : r1 - r >= 4 ? 4 : 1;                                             \
            for (t = 0; t < a->T; t += 4) {                                                         \
                const XT *xt = x + (size_t)t * (XSTRIDE);                                           \
                float *y = a->y + (size_t)t * (size_t)a->ldy;                                       \
                switch ((a->T - t >= 4 ? 4 : a->T - t) * 10 + (rr == 8 ? 8 : rr == 4 ? 4 : 1)) {    \
                case 18: KERNEL(a, xt, y, r, 8, 1); break;                                          \
                case 28: KERNEL(a, xt, y, r, 8, 2); break;                                          \
                case 38: KERNEL(a, xt, y, r, 4, 3); KERNEL(a, xt, y, r + 4, 4, 3); break;           \
                case 48: KERNEL(a, xt, y, r, 4, 4); KERNEL(a, xt, y, r + 4, 4, 4); break;           \
                case 14: KERNEL(a, xt, y, r, 4, 1); break;                                          \
                case 24: KERNEL(a, xt, y, r, 4, 2); break;                                          \
                case 34: KERNEL(a, xt, y, r, 4, 3); break;                                          \
                case 44: KERNEL(a, xt, y, r, 4, 4); break;                                          \
                case 11: KERNEL(a, xt, y, r, 1, 1); break;                                          \
                case 21: KERNEL(a, xt, y, r, 1, 2); break;                                          \
                case 31: KERNEL(a, xt, y, r, 1, 3); break;                                          \
                default: KERNEL(a, xt, y, r, 1, 4); break;                                          \
                }                                                                                   \
            }                                                                                       \
            r += rr;                                                                                \
        }                                                                                           \
    }
GEMMA2__MATVECS_N(gemma2__matvecs_512x3_n, GEMMA2__T_AVX512BF16, gemma2__matvec_512x3_n, uint16_t, (const uint16_t *)a->xp, gemma2__x3_elems(a->w->cols))
GEMMA2__MATVECS_N(gemma2__matvecs_512bh_n, GEMMA2__T_AVX512, gemma2__matvec_512bh_n, float, (const float *)a->xp, gemma2__eo_elems(a->w->cols))

/* ---- prefill: many tokens, transposed activations (bf16 and F32 weights) ----------------

   With many tokens each weight can serve several of them, and the product becomes bound by
   arithmetic; what matters then is how many multiply-adds each loaded register feeds. The
   tile puts 16 tokens across the lanes of a register and keeps 12 rows x 32 tokens of
   outputs in 24 accumulators. Per pair of columns it loads the 32 tokens' activations (2
   registers, from the transposed copy xt) and, for each of the 12 rows, broadcasts that row's
   two weights (one 32-bit load straight from the row-major weights: no packing, no copy) and
   does 4 FMAs (f32) or 2 vdpbf16ps (bf16 compute: the pair is exactly its operand). That is
   14 loads per 48 FMAs, no horizontal sums and no shuffles: the FMA units, not the loads,
   set the pace. (Blocking around the tile, below, keeps its operands in L1 and L2; the
   weights come from DRAM once per call.)

   xt, packed once per activation matrix (GEMMA2__PACK_XT_F32 or GEMMA2__PACK_XT_BF16), in
   blocks of 32 tokens, each block a [rows][32] matrix (gemma2__xt_off):
     f32:  xt[t / 32][k][t % 32] = x[t][k]                                   (rows = K)
     bf16: xt[t / 32][j][t % 32] = bf16(x[t][2j]) | bf16(x[t][2j+1]) << 16   (rows = ceil(K/2);
           a zero high half if K is odd)
   zero padded up to a multiple of 16 tokens. A tile reads its 32 tokens' activations for
   successive columns from one contiguous run of memory (128 bytes per column): the plain
   [K][T] transpose made it read 128 bytes every T * 4 bytes, a stride that maps the reads
   onto a few L1 sets and defeats the prefetchers once T is large (measured with 512-token
   calls, 2 threads: +7% on the 9216 x 2304 gate projection, +12-15% on the 2304 x 9216 down
   projection; at the forward pass's 128-token chunks the difference is within noise).

   Each output is the plain sequential sum over k, one FMA per column (f32; even column then
   odd) or one vdpbf16ps per pair, in one accumulator lane: a token's result does not depend
   on which other tokens share the call, as long as there are at least two (one token goes
   through the matrix-vector kernel, which sums 16 interleaved partial sums: the results then
   differ in the last bits, as any two summation orders do). */

#define GEMMA2__MR 12

/* Two bf16 weights as one 32-bit value (rows start at any element: an unaligned load). */
GEMMA2__ALWAYS_INLINE int gemma2__ld_pair(const uint16_t *p) { int v; memcpy(&v, p, 4); return v; }

/* Blocking. A tile reads a slice of xt for its 32 tokens at every step; over all K that is
   more than L2 holds (K x 128 tokens x 4 bytes = 1.2 MB for K = 2304), so the loops around
   the tiles cut the work into blocks: GEMMA2__XT_RB rows x GEMMA2__XT_KC column pairs x up to
   128 tokens. A block's xt slice (KC pairs x 128 tokens, 128-256 KB) stays in L2 while the
   block's 4 row tiles pass over it, and its weights (48 rows x 512 columns, 48 KB) are read
   from DRAM once. Partial sums wait between column blocks in a small buffer on the stack,
   laid out like the accumulators (rows x tokens); only when a row block is complete are they
   written to y, transposed. */
#define GEMMA2__XT_RB 48  /* rows per block: 4 tiles of 12 */
#define GEMMA2__XT_KC 256 /* column pairs per block */
#define GEMMA2__XT_TC 128 /* tokens per block */

/* One tile: rows r..r+MR of the block (acc rows at buf + (r - rb) * TC), the first 16*NR
   tokens of the 32-token block of xt at `xt`, column pairs [j0, j1) plus, if `tail`, the odd
   last column. Continues from the partial sums in buf unless j0 == 0. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__xtile_512(const gemma2__matmul_args *a, const float *xt, float *buf, int r, int j0, int j1,
                                                            int tail, const int MR, const int NR)
{
    const int K = a->w->cols;
    const uint16_t *w = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[GEMMA2__MR][2];
    int i, v, j;
    _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) _Pragma("GCC unroll 2") for (v = 0; v < NR; v++)
        acc[i][v] = j0 ? _mm512_load_ps(buf + (size_t)i * GEMMA2__XT_TC + 16 * v) : _mm512_setzero_ps();
    for (j = j0; j < j1; j++) {
        __m512 xe[2], xo[2];
        _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) {
            xe[v] = _mm512_loadu_ps(xt + (size_t)(2 * j) * 32 + 16 * v);
            xo[v] = _mm512_loadu_ps(xt + (size_t)(2 * j + 1) * 32 + 16 * v);
        }
        _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) {
            __m512i wv = _mm512_set1_epi32(gemma2__ld_pair(w + (size_t)i * K + 2 * j));
            __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), wo = _mm512_castsi512_ps(_mm512_and_si512(wv, hi));
            _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) {
                acc[i][v] = _mm512_fmadd_ps(xe[v], we, acc[i][v]);
                acc[i][v] = _mm512_fmadd_ps(xo[v], wo, acc[i][v]);
            }
        }
    }
    if (tail) { /* the last column alone: its weight read as 16 bits, nothing past the row */
        __m512 xe[2];
        _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) xe[v] = _mm512_loadu_ps(xt + (size_t)(2 * j) * 32 + 16 * v);
        _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) {
            __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_set1_epi32((int)w[(size_t)i * K + 2 * j]), 16));
            _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) acc[i][v] = _mm512_fmadd_ps(xe[v], we, acc[i][v]);
        }
    }
    _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) _Pragma("GCC unroll 2") for (v = 0; v < NR; v++)
        _mm512_store_ps(buf + (size_t)i * GEMMA2__XT_TC + 16 * v, acc[i][v]);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512BF16 void gemma2__xtile_512dp(const gemma2__matmul_args *a, const uint32_t *xt, float *buf, int r, int j0,
                                                                  int j1, int tail, const int MR, const int NR)
{
    const int K = a->w->cols;
    const uint16_t *w = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    __m512 acc[GEMMA2__MR][2];
    int i, v, j;
    _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) _Pragma("GCC unroll 2") for (v = 0; v < NR; v++)
        acc[i][v] = j0 ? _mm512_load_ps(buf + (size_t)i * GEMMA2__XT_TC + 16 * v) : _mm512_setzero_ps();
    for (j = j0; j < j1 + tail; j++) {
        __m512i xv[2];
        _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) xv[v] = _mm512_loadu_si512((const void *)(xt + (size_t)j * 32 + 16 * v));
        _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) {
            /* the odd last column: its weight read as 16 bits, nothing past the row */
            __m512i wv = _mm512_set1_epi32(j < j1 ? gemma2__ld_pair(w + (size_t)i * K + 2 * j) : (int)w[(size_t)i * K + 2 * j]);
            _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)xv[v], (__m512bh)wv);
        }
    }
    _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) _Pragma("GCC unroll 2") for (v = 0; v < NR; v++)
        _mm512_store_ps(buf + (size_t)i * GEMMA2__XT_TC + 16 * v, acc[i][v]);
}

/* The same tile for F32 weights (checkpoints kept as stored): each row's two weights are
   broadcast as floats, straight from memory into the FMAs; no widening. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__xtile_512f(const gemma2__matmul_args *a, const float *xt, float *buf, int r, int j0, int j1,
                                                             int tail, const int MR, const int NR)
{
    const int K = a->w->cols;
    const float *w = (const float *)a->w->data + (size_t)r * (size_t)K;
    __m512 acc[GEMMA2__MR][2];
    int i, v, j;
    _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) _Pragma("GCC unroll 2") for (v = 0; v < NR; v++)
        acc[i][v] = j0 ? _mm512_load_ps(buf + (size_t)i * GEMMA2__XT_TC + 16 * v) : _mm512_setzero_ps();
    for (j = j0; j < j1 + tail; j++) {
        __m512 xe[2], xo[2];
        const int odd = j < j1; /* the odd last column has no partner */
        _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) {
            xe[v] = _mm512_loadu_ps(xt + (size_t)(2 * j) * 32 + 16 * v);
            if (odd) xo[v] = _mm512_loadu_ps(xt + (size_t)(2 * j + 1) * 32 + 16 * v);
        }
        _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) {
            __m512 we = _mm512_set1_ps(w[(size_t)i * K + 2 * j]);
            _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) acc[i][v] = _mm512_fmadd_ps(xe[v], we, acc[i][v]);
            if (odd) {
                __m512 wo = _mm512_set1_ps(w[(size_t)i * K + 2 * j + 1]);
                _Pragma("GCC unroll 2") for (v = 0; v < NR; v++) acc[i][v] = _mm512_fmadd_ps(xo[v], wo, acc[i][v]);
            }
        }
    }
    _Pragma("GCC unroll 16") for (i = 0; i < MR; i++) _Pragma("GCC unroll 2") for (v = 0; v < NR; v++)
        _mm512_store_ps(buf + (size_t)i * GEMMA2__XT_TC + 16 * v, acc[i][v]);
}

/* Tiles of one block: rows [rb, re) in 12s, 4s and 1s, tokens [0, tc) in 32s then 16s. */
#define GEMMA2__XT_TILES(TILE, MR_, XT_T)                                                                \
    for (t = 0; t < tc; t += 32) {                                                                     \
        const XT_T *xtb = (const XT_T *)a->xp + gemma2__xt_off(xrows, 0, t0 + t);                       \
        if (tc - t > 16) TILE(a, xtb, buf + (size_t)(r - rb) * GEMMA2__XT_TC + t, r, j0, j1, tail, MR_, 2); \
        else TILE(a, xtb, buf + (size_t)(r - rb) * GEMMA2__XT_TC + t, r, j0, j1, tail, MR_, 1);        \
    }

#define GEMMA2__XT_DRIVER(NAME, TARGET, TILE, XT_T)                                                       \
    static TARGET void NAME(const gemma2__matmul_args *a, int r0, int r1)                                \
    {                                                                                                    \
        GEMMA2__ALIGN64 float buf[GEMMA2__XT_RB * GEMMA2__XT_TC];                                         \
        const int K = a->w->cols, np = K / 2, odd = K & 1;                                               \
        const int xrows = gemma2__pack_rows(a->xp_kind, a->T, K);                                        \
        int t0, rb, r, j0, t, i;                                                                         \
        for (t0 = 0; t0 < a->T; t0 += GEMMA2__XT_TC) {                                                   \
            int tc = GEMMA2__MIN(GEMMA2__XT_TC, a->T - t0);                                              \
            for (rb = r0; rb < r1; rb += GEMMA2__XT_RB) {                                                \
                int re = GEMMA2__MIN(rb + GEMMA2__XT_RB, r1);                                            \
                for (j0 = 0; j0 < np || (j0 == 0 && odd); j0 += GEMMA2__XT_KC) {                          \
                    int j1 = GEMMA2__MIN(j0 + GEMMA2__XT_KC, np), tail = odd && j1 == np;                 \
                    r = rb;                                                                              \
                    for (; r + GEMMA2__MR <= re; r += GEMMA2__MR) GEMMA2__XT_TILES(TILE, GEMMA2__MR, XT_T) \
                    for (; r + 4 <= re; r += 4) GEMMA2__XT_TILES(TILE, 4, XT_T)                          \
                    for (; r < re; r++) GEMMA2__XT_TILES(TILE, 1, XT_T)                                  \
                }                                                                                        \
                for (t = 0; t < tc; t++) {                                                               \
                    float *y = a->y + (size_t)(t0 + t) * (size_t)a->ldy;                                 \
                    for (i = rb; i < re; i++) y[i] = buf[(size_t)(i - rb) * GEMMA2__XT_TC + t];           \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
    }
GEMMA2__XT_DRIVER(gemma2__matmul_512_xt, GEMMA2__T_AVX512, gemma2__xtile_512, float)
GEMMA2__XT_DRIVER(gemma2__matmul_512_xtdp, GEMMA2__T_AVX512BF16, gemma2__xtile_512dp, uint32_t)
GEMMA2__XT_DRIVER(gemma2__matmul_512_xtf, GEMMA2__T_AVX512, gemma2__xtile_512f, float)

/* ---- prefill with F32 weights and no xt: row-dot register tiles ----
   F32 matrices called without transposed activations take 4 rows x 6 tokens per tile: 24
   accumulators, each holding 16 partial sums of one (row, token) output, reduced once at the
   end. A 16-row block of weights stays in L2 while the tokens pass 6 at a time. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__tile_512(const gemma2__matmul_args *a, int r, int t, const int RR, const int TT)
{
    const int K = a->w->cols;
    const float *w0 = (const float *)a->w->data + (size_t)r * (size_t)K;
    const float *x0 = a->x + (size_t)t * (size_t)K;
    __m512 acc[4][6];
    int i, j, k = 0;
    GEMMA2__UNROLL for (i = 0; i < RR; i++) GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        __m512 xv[6];
        GEMMA2__UNROLL for (j = 0; j < TT; j++) xv[j] = _mm512_loadu_ps(x0 + (size_t)j * K + k);
        GEMMA2__UNROLL for (i = 0; i < RR; i++) {
            __m512 wv = _mm512_loadu_ps(w0 + (size_t)i * K + k);
            GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        __m512 xv[6];
        GEMMA2__UNROLL for (j = 0; j < TT; j++) xv[j] = _mm512_maskz_loadu_ps(m, x0 + (size_t)j * K + k);
        GEMMA2__UNROLL for (i = 0; i < RR; i++) {
            __m512 wv = _mm512_maskz_loadu_ps(m, w0 + (size_t)i * K + k);
            GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    GEMMA2__UNROLL for (j = 0; j < TT; j++) GEMMA2__UNROLL for (i = 0; i < RR; i++)
        a->y[(size_t)(t + j) * a->ldy + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

#define GEMMA2__TILE_F(a, r, t, RR, TT, dummy) gemma2__tile_512(a, r, t, RR, TT)

static GEMMA2__T_AVX512 void gemma2__matmul_512_f32w(const gemma2__matmul_args *a, int r0, int r1)
{
    int rb, t;
    for (rb = r0; rb < r1; rb += 16) {
        int re = GEMMA2__MIN(rb + 16, r1);
        for (t = 0; t + 6 <= a->T; t += 6) GEMMA2__ROWS_TILED(GEMMA2__TILE_F, rb, re, t, 6, 0);
        switch (a->T - t) {
        case 5: GEMMA2__ROWS_TILED(GEMMA2__TILE_F, rb, re, t, 5, 0); break;
        case 4: GEMMA2__ROWS_TILED(GEMMA2__TILE_F, rb, re, t, 4, 0); break;
        case 3: GEMMA2__ROWS_TILED(GEMMA2__TILE_F, rb, re, t, 3, 0); break;
        case 2: GEMMA2__ROWS_TILED(GEMMA2__TILE_F, rb, re, t, 2, 0); break;
        case 1: GEMMA2__ROWS_TILED(GEMMA2__TILE_F, rb, re, t, 1, 0); break;
        default: break;
        }
    }
}

/* ---- Q8 and Q4 weights: integer dot products (AVX512_VNNI) ---------------------------

   Exactness. The reference products (gemma2__matmul_ref_q8, _q4) sum each output over its
   row's blocks in order, with float32 steps on an exact int32 dot of 32 weight and 32
   activation quants per block. These kernels compute the same integer dots exactly (integer
   adds in any order) and then the same float32 steps in the same order (convert, multiply
   dw x dx, multiply, add; for Q4 also m x sx and one more add, t1 + t2 first), one output
   per lane, so their results are the reference's to the bit whatever the kernel, tile,
   thread split or chunking. The float steps go through the _round_ intrinsics (with the
   current rounding): GNU C's -ffp-contract=fast fuses the plain ones into FMAs, which round
   once where the reference rounds twice.

   Signs. vpdpbusd multiplies unsigned bytes by signed bytes, four at a time into int32
   lanes. Q4 quants (0..15) are unsigned as they are. Q8 weight quants are signed: flipped to
   w + 128 (xor 0x80) they are unsigned, and the dot gains 128 times the sum of the
   activation quants, which is the same for every row: it is subtracted once per block and
   token, as the accumulators' starting value (decode: -128 x each lane's four activation
   quants, so that a row's lanes add up to the correction; prefill: the Q8T layout's c).

   Decode (one token) is bound by memory: 34 (Q8) or 20 (Q4) bytes per 32 weights, each used
   once. Two things decide how close it gets:
   - The instructions per byte, which share the out-of-order window with the misses in
     flight. The kernel takes 16 rows at once and leaves their 16 block dots in the 16 lanes
     of one register: Q8 fills 8 registers with two rows' 32 quants each (a load and an
     insert), one vpdpbusd each against the activation block in both halves, then a tree of
     7 interleave-and-add steps (14 shuffles, 7 exact integer adds) puts row i's dot in lane
     i; Q4 puts four rows' 16 nibble bytes in a register (a load, three inserts), masks and
     shifts out the low (elements 0..15) and high (16..31) nibbles, two vpdpbusd against the
     activation halves, a 3-step tree. One 32-bit gather brings the 16 rows' block heads (Q8:
     d; Q4: d and m), and the float steps run for 16 rows at once in one accumulator: no
     reduction per row at the end. That is 78 instructions per 16 rows and block for Q8
     without the prefetches, where the 8-row kernel that reduced each row's block dot on its
     own took 118.
   - The access pattern. The 16 rows are read as 16 streams, and the hardware prefetchers
     follow about one stream per 4 KB page: neighbouring rows of a 2304-wide matrix (2448
     bytes in Q8, 1440 in Q4) share pages and defeat them. Plain reads in the kernels'
     pattern, one thread: 9.4 (Q8) and 7.1 GB/s (Q4) with neighbouring rows, 13.6 and 10.9
     with the rows 4 apart, against 13.5 for the bf16 kernels' 8 rows of 4.6 KB. So a group
     is rows r, r+S, .., r+15S (S groups interleaved over 16 S rows), S the smallest power of
     2 that puts the streams 8 KB apart (up to 8). Software prefetch 1 KB ahead, every other
     block (Q8) or every third (Q4: 60 bytes, each line once), measured best of every 1..6
     blocks and none.

   Prefill (several tokens) is bound by the integer dot products: each weight serves every
   token, and a 512-bit vpdpbusd does 64 multiply-adds. The tile turns the product around as
   the bf16 prefill tile does: 16 tokens across the lanes of a register, 6 rows x 32 tokens
   of outputs. Activations come quantized and transposed (GEMMA2__PACK_Q8T): per block,
   group of 4 columns and 16 tokens one register of 64 bytes, each lane a token's 4 quants;
   weights are broadcast 4 quants (32 bits) at a time. Per block that is 8 x 12 vpdpbusd into
   12 int32 accumulators, then the float steps into 12 float accumulators. The float steps,
   4 instructions per 8 vpdpbusd (Q8; 6 for Q4), are what keeps the tile from the vpdpbusd
   peak: alone in L1 it runs at ~75% of it (Q8) and ~65% (Q4). The weight blocks are first
   unpacked, 48 rows x 8 blocks at a time, into a small panel (Q8: xor 0x80; Q4: nibbles into
   bytes; the heads as floats): done once for all the call's tokens, it leaves the tile
   nothing but loads, broadcasts and vpdpbusd. The panel and the 8-block slice of the
   activations stay in L1 while the tiles pass over them, and the next panel's weights,
   the only bytes that come from memory, are prefetched meanwhile (and in the last panel the
   lines of y the sums go to: 3% on 1 thread).

   Why vpdpbusd and not vdpbf16ps on exact bf16 quants, on the AVX512_BF16 set too: int8
   quants are exact in bf16 and vdpbf16ps would sum their products exactly in float32, with
   the same float steps per block, but it does 32 multiply-adds per instruction to
   vpdpbusd's 64, and on the CPU this was tuned on (Intel Xeon, Emerald Rapids) it issues one
   every 2 cycles to vpdpbusd's two per cycle: 1/8 of the integer rate (12 independent
   chains each: 8.9 vs 2.3 ns per 12). On CPUs whose vdpbf16ps issues more than twice as
   often as their vpdpbusd (AMD Zen 5 is said to) a bf16 tile could do more multiply-adds per
   second; that was not measured here. */

/* Float32 steps that must not become fused multiply-adds (see above). */
#define GEMMA2__MUL_NF(a, b) _mm512_mul_round_ps((a), (b), _MM_FROUND_CUR_DIRECTION)
#define GEMMA2__ADD_NF(a, b) _mm512_add_round_ps((a), (b), _MM_FROUND_CUR_DIRECTION)

/* -- activations: the Q8 layouts (GEMMA2__PACK_Q8, _Q8T), 32 columns at a time -- */

/* x[0 .. n) (n <= 32, zeros past n) quantized as gemma2__q8_quantize does, bit for bit:
   d = absmax / 127, q = round-half-away-from-zero(x / d) by a true division (the remainder
   after truncation is exact, and rounds away at 1/2 as roundf does), all zero if d == 0 or d
   is not finite (d = NaN if the block holds a NaN).
   Returns the 32 quants; *d_out = d, *sum_out = the integer sum of the quants. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m256i gemma2__q8_quant32_512(const float *x, int n, float *d_out, int32_t *sum_out)
{
    __m512 a = _mm512_maskz_loadu_ps(gemma2__mask16(n), x), b = _mm512_maskz_loadu_ps(gemma2__mask16(n - 16), x + 16);
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), sgn = _mm512_set1_ps(-0.0f);
    float d = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b))) / 127.0f;
    __m512 v[2], t;
    __m512i q[2];
    int i;
    if (_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q)) d = NAN;
    *d_out = d;
    if (!(d != 0 && d < INFINITY)) { *sum_out = 0; return _mm256_setzero_si256(); }
    v[0] = _mm512_div_ps(a, _mm512_set1_ps(d));
    v[1] = _mm512_div_ps(b, _mm512_set1_ps(d));
    for (i = 0; i < 2; i++) {
        __mmask16 up;
        t = _mm512_roundscale_ps(v[i], _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v[i], t)), half, _CMP_GE_OQ);
        t = _mm512_mask_add_ps(t, up, t, _mm512_or_ps(_mm512_and_ps(v[i], sgn), one));
        q[i] = _mm512_cvttps_epi32(t);
    }
    *sum_out = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(q[0])), _mm512_cvtepi32_epi8(q[1]), 1);
}

/* GEMMA2__PACK_Q8: tokens [j0, j1), block by block. */
static GEMMA2__T_AVX512 void gemma2__pack_q8_avx512(uint8_t *xp, const float *x, int K, int j0, int j1)
{
    const int nb = (K + 31) / 32;
    int t, b;
    for (t = j0; t < j1; t++) {
        uint8_t *o = xp + (size_t)t * gemma2__q8_tok_bytes(K);
        float *od = (float *)(void *)(o + (size_t)nb * 32);
        for (b = 0; b < nb; b++) {
            int32_t sum;
            _mm256_storeu_si256((__m256i *)(void *)(o + (size_t)b * 32), gemma2__q8_quant32_512(x + (size_t)t * K + (size_t)b * 32, K - b * 32, &od[b], &sum));
            od[nb + b] = od[b] * (float)sum;
        }
    }
}

/* GEMMA2__PACK_Q8T: blocks [j0, j1), two at a time per run of 16 tokens: each token's 64
   quants are one register, and the 16 x 16 transpose turns them into the 16 (group, block)
   registers of the layout. */
static GEMMA2__T_AVX512 void gemma2__pack_q8t_avx512(uint8_t *xp, const float *x, int T, int K, int j0, int j1)
{
    const int nb = (K + 31) / 32;
    int t, b, l, g;
    for (t = 0; t < T; t += 16)
        for (b = j0; b < j1; b += 2) {
            const int nblk = GEMMA2__MIN(2, j1 - b);
            uint8_t *o[2];
            __m512i q[16];
            o[0] = xp + gemma2__q8t_off(nb, t / 16, b);
            o[1] = o[0] + GEMMA2__Q8T_BYTES;
            for (l = 0; l < 16; l++) {
                __m256i h[2];
                int k;
                h[1] = _mm256_setzero_si256();
                for (k = 0; k < nblk; k++) {
                    float *od = (float *)(void *)(o[k] + 512);
                    int32_t *oc = (int32_t *)(void *)(o[k] + 640);
                    if (t + l < T) {
                        int32_t sum;
                        h[k] = gemma2__q8_quant32_512(x + (size_t)(t + l) * K + (size_t)(b + k) * 32, K - (b + k) * 32, &od[l], &sum);
                        od[16 + l] = od[l] * (float)sum;
                        oc[l] = -128 * sum;
                    } else {
                        h[k] = _mm256_setzero_si256();
                        od[l] = od[16 + l] = 0;
                        oc[l] = 0;
                    }
                }
                q[l] = _mm512_inserti64x4(_mm512_castsi256_si512(h[0]), h[1], 1);
            }
            gemma2__transpose16_512(q);
            for (g = 0; g < 8 * nblk; g++) _mm512_storeu_si512((void *)(o[g / 8] + 64 * (g % 8)), q[g]);
        }
}

/* -- decode -- */

/* Row j (0..15, a constant once unrolled) of 16 rows rb bytes apart, the first at p, the
   ninth at p8: base + index x scale with the index one of rb, 3 rb, 5 rb, 7 rb, so that the
   16 streams take 6 registers. */
GEMMA2__ALWAYS_INLINE const uint8_t *gemma2__row16(const uint8_t *p, const uint8_t *p8, const size_t *m, int j)
{
    const uint8_t *b = j < 8 ? p : p8;
    switch (j & 7) {
    case 0: return b;
    case 1: return b + m[0];
    case 2: return b + 2 * m[0];
    case 3: return b + m[1];
    case 4: return b + 4 * m[0];
    case 5: return b + m[2];
    case 6: return b + 2 * m[1];
    default: return b + m[3];
    }
}

/* y[S i] = v[i] for the lanes i of keep. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__store16(float *y, int S, __mmask16 keep, __m512 v)
{
    if (S == 1) _mm512_mask_storeu_ps(y, keep, v);
    else _mm512_mask_i32scatter_ps(y, keep, _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(S)), v, 4);
}

/* Rows r, r+S, .., r+15S of one token, quants xq (nb blocks of 32) and scales xd; stores
   the rows of `keep` (a lane mask). */
static GEMMA2__T_AVX512VNNI void gemma2__matvec_q8x16(const gemma2__matmul_args *a, const int8_t *xq, const float *xd, float *y, int r, int S, __mmask16 keep)
{
    const int K = a->w->cols, nb = (K + 31) / 32;
    const size_t rb = gemma2__row_bytes(GEMMA2__WF_Q8, K) * (size_t)S, m[4] = {rb, 3 * rb, 5 * rb, 7 * rb};
    const uint8_t *p = (const uint8_t *)a->w->data + (size_t)r * (rb / (size_t)S), *p8 = p + 8 * rb, *pf = p + GEMMA2__PF, *pf8 = p8 + GEMMA2__PF;
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const __m512i vrb = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)rb));
    __m512 acc = _mm512_setzero_ps();
    int b, j;
    for (b = 0; b < nb; b++, p += GEMMA2__Q8_BYTES, p8 += GEMMA2__Q8_BYTES, pf += GEMMA2__Q8_BYTES, pf8 += GEMMA2__Q8_BYTES) {
        const __m512i xv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(xq + (size_t)b * 32)));
        const __m512i c = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, xv));
        __m512i d[8], e01, e23, e45, e67, f0, f1, dots;
        __m512 scale;
        /* register j holds rows j and j+4 (j < 4), j+4 and j+8 (j >= 4): the tree below then
           leaves row i in lane i */
        GEMMA2__UNROLL for (j = 0; j < 8; j++) {
            const uint8_t *ra = gemma2__row16(p, p8, m, j < 4 ? j : j + 4), *rc = gemma2__row16(p, p8, m, j < 4 ? j + 4 : j + 8);
            __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)(ra + 2))),
                                            _mm256_loadu_si256((const __m256i *)(const void *)(rc + 2)), 1);
            if (b & 1) {
                _mm_prefetch((const char *)gemma2__row16(pf, pf8, m, j < 4 ? j : j + 4), _MM_HINT_T0);
                _mm_prefetch((const char *)gemma2__row16(pf, pf8, m, j < 4 ? j + 4 : j + 8), _MM_HINT_T0);
            }
            d[j] = _mm512_dpbusd_epi32(c, _mm512_xor_si512(wv, bias), xv);
        }
        /* per 128-bit lane: pairs of lanes, then quads, then the two halves of each row */
        e01 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[0], d[1]), _mm512_unpackhi_epi32(d[0], d[1]));
        e23 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[2], d[3]), _mm512_unpackhi_epi32(d[2], d[3]));
        e45 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[4], d[5]), _mm512_unpackhi_epi32(d[4], d[5]));
        e67 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[6], d[7]), _mm512_unpackhi_epi32(d[6], d[7]));
        f0 = _mm512_add_epi32(_mm512_unpacklo_epi64(e01, e23), _mm512_unpackhi_epi64(e01, e23));
        f1 = _mm512_add_epi32(_mm512_unpacklo_epi64(e45, e67), _mm512_unpackhi_epi64(e45, e67));
        dots = _mm512_add_epi32(_mm512_shuffle_i32x4(f0, f1, 0x88), _mm512_shuffle_i32x4(f0, f1, 0xdd));
        /* the 16 rows' fp16 d: 32-bit gathers (d and 2 quants, inside the block), low halves */
        scale = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(vrb, (const void *)p, 1)));
        scale = GEMMA2__MUL_NF(scale, _mm512_set1_ps(xd[b]));
        acc = GEMMA2__ADD_NF(acc, GEMMA2__MUL_NF(scale, _mm512_cvtepi32_ps(dots)));
    }
    gemma2__store16(y + r, S, keep, acc);
}

/* The same for Q4: register j holds rows j, j+4, j+8, j+12 (times S) in its 128-bit lanes. */
static GEMMA2__T_AVX512VNNI void gemma2__matvec_q4x16(const gemma2__matmul_args *a, const int8_t *xq, const float *xd, float *y, int r, int S, __mmask16 keep)
{
    const int K = a->w->cols, nb = (K + 31) / 32;
    const size_t rb = gemma2__row_bytes(GEMMA2__WF_Q4, K) * (size_t)S, m[4] = {rb, 3 * rb, 5 * rb, 7 * rb};
    const uint8_t *p = (const uint8_t *)a->w->data + (size_t)r * (rb / (size_t)S), *p8 = p + 8 * rb, *pf = p + GEMMA2__PF, *pf8 = p8 + GEMMA2__PF;
    const float *xs = xd + nb;
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    const __m512i vrb = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)rb));
    __m512 acc = _mm512_setzero_ps();
    int b, j, l;
    for (b = 0; b < nb; b++, p += GEMMA2__Q4_BYTES, p8 += GEMMA2__Q4_BYTES, pf += GEMMA2__Q4_BYTES, pf8 += GEMMA2__Q4_BYTES) {
        const int8_t *xb = xq + (size_t)b * 32;
        const __m512i xlo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)xb));
        const __m512i xhi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(xb + 16)));
        __m512i d[4], e01, e23, dots, g;
        __m512 t1, t2;
        GEMMA2__UNROLL for (j = 0; j < 4; j++) {
            __m512i wv = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(const void *)(gemma2__row16(p, p8, m, j) + 4)));
            wv = _mm512_inserti32x4(wv, _mm_loadu_si128((const __m128i *)(const void *)(gemma2__row16(p, p8, m, j + 4) + 4)), 1);
            wv = _mm512_inserti32x4(wv, _mm_loadu_si128((const __m128i *)(const void *)(gemma2__row16(p, p8, m, j + 8) + 4)), 2);
            wv = _mm512_inserti32x4(wv, _mm_loadu_si128((const __m128i *)(const void *)(gemma2__row16(p, p8, m, j + 12) + 4)), 3);
            d[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(wv, lo4), xlo);
            d[j] = _mm512_dpbusd_epi32(d[j], _mm512_and_si512(_mm512_srli_epi16(wv, 4), lo4), xhi);
        }
        if (b % 3 == 0) GEMMA2__UNROLL for (l = 0; l < 16; l++) _mm_prefetch((const char *)gemma2__row16(pf, pf8, m, l), _MM_HINT_T0);
        e01 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[0], d[1]), _mm512_unpackhi_epi32(d[0], d[1]));
        e23 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[2], d[3]), _mm512_unpackhi_epi32(d[2], d[3]));
        dots = _mm512_add_epi32(_mm512_unpacklo_epi64(e01, e23), _mm512_unpackhi_epi64(e01, e23));
        /* d and m of the 16 rows: one 32-bit gather, low and high halves */
        g = _mm512_i32gather_epi32(vrb, (const void *)p, 1);
        t1 = GEMMA2__MUL_NF(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(g)), _mm512_set1_ps(xd[b]));
        t1 = GEMMA2__MUL_NF(t1, _mm512_cvtepi32_ps(dots));
        t2 = GEMMA2__MUL_NF(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))), _mm512_set1_ps(xs[b]));
        acc = GEMMA2__ADD_NF(acc, GEMMA2__ADD_NF(t1, t2));
    }
    gemma2__store16(y + r, S, keep, acc);
}

/* -- prefill -- */

/* Shapes, measured on 1 thread over q, k, v, o, gate, up and down of 2B for 128 tokens (the
   weights from memory): 6 x 2 tiles were 2-3% faster than 4 x 3, 5 x 2 and 7 x 2 within
   noise; 16-block panels 5% slower than 8 (the activations' slice then leaves L1); 4-block
   panels and 96-row panels no better. */
#ifndef GEMMA2__QT_MR
#define GEMMA2__QT_MR 6   /* rows per tile */
#define GEMMA2__QT_NR 2   /* runs of 16 tokens per tile (at most 4) */
#define GEMMA2__QT_RB 48  /* rows per panel: a multiple of the tile's rows */
#define GEMMA2__QT_KB 8   /* blocks per panel */
#endif


#define GEMMA2__QT_TC 128 /* tokens per pass */

/* The panel: rows [r, r+nr) x blocks [b0, b0+nblk) of a Q8 or Q4 matrix as 32 unsigned
   quants per row and block (row i, block b at pq + (i KB + b) 32), d and m as floats. Needs
   KB == 8 (one 8-lane gather per row). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512VNNI void gemma2__qpanel_512(const gemma2__mat *w, int r, int nr, int b0, int nblk, uint8_t *pq, float *pd, float *pm, const int Q4)
{
    const size_t rb = gemma2__row_bytes(w->format, w->cols), bb = Q4 ? GEMMA2__Q4_BYTES : GEMMA2__Q8_BYTES;
    const __m256i heads = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)bb));
    const __mmask8 mb = (__mmask8)((1u << nblk) - 1);
    int i, b;
    for (i = 0; i < nr; i++) {
        const uint8_t *blk = (const uint8_t *)w->data + (size_t)(r + i) * rb + (size_t)b0 * bb;
        /* the blocks' heads (d; Q4: d and m) with one gather */
        const __m256i h = _mm256_mmask_i32gather_epi32(_mm256_setzero_si256(), mb, heads, (const void *)blk, 1);
        _mm256_storeu_ps(pd + i * GEMMA2__QT_KB, _mm256_cvtph_ps(_mm256_cvtepi32_epi16(h)));
        if (Q4) _mm256_storeu_ps(pm + i * GEMMA2__QT_KB, _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(h, 16))));
        for (b = 0; b < nblk; b++, blk += bb) {
            __m256i q;
            if (Q4) {
                __m128i nib = _mm_loadu_si128((const __m128i *)(const void *)(blk + 4)), m4 = _mm_set1_epi8(0x0f);
                q = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(nib, m4)), _mm_and_si128(_mm_srli_epi16(nib, 4), m4), 1);
            } else
                q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(blk + 2)), _mm256_set1_epi8((char)0x80));
            _mm256_storeu_si256((__m256i *)(void *)(pq + (size_t)(i * GEMMA2__QT_KB + b) * 32), q);
        }
    }
}

/* One tile: panel rows [0, MR) (at pq, pd, pm) x NR runs of 16 tokens (run v of block b at
   xb + v xrun + b 704), over the panel's first nblk blocks; the outputs' running sums in buf
   (row i, run v at buf + i TC + 16 v), started from zero if `first`. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512VNNI void gemma2__qtile_512(const uint8_t *pq, const float *pd, const float *pm, const uint8_t *xb, size_t xrun,
                                                                float *buf, int nblk, int first, const int MR, const int NR, const int Q4)
{
    __m512 y[GEMMA2__QT_MR][GEMMA2__QT_NR];
    __m512i acc[GEMMA2__QT_MR][GEMMA2__QT_NR];
    int i, v, b, g;
    GEMMA2__UNROLL for (i = 0; i < MR; i++) GEMMA2__UNROLL for (v = 0; v < NR; v++)
        y[i][v] = first ? _mm512_setzero_ps() : _mm512_load_ps(buf + (size_t)i * GEMMA2__QT_TC + 16 * v);
    for (b = 0; b < nblk; b++) {
        const uint8_t *xp = xb + (size_t)b * GEMMA2__Q8T_BYTES;
        GEMMA2__UNROLL for (i = 0; i < MR; i++) GEMMA2__UNROLL for (v = 0; v < NR; v++)
            acc[i][v] = Q4 ? _mm512_setzero_si512() : _mm512_loadu_si512((const void *)(xp + (size_t)v * xrun + 640));
        GEMMA2__UNROLL for (g = 0; g < 8; g++) {
            __m512i xv[GEMMA2__QT_NR];
            GEMMA2__UNROLL for (v = 0; v < NR; v++) xv[v] = _mm512_loadu_si512((const void *)(xp + (size_t)v * xrun + 64 * g));
            GEMMA2__UNROLL for (i = 0; i < MR; i++) {
                int32_t wq;
                __m512i wv;
                memcpy(&wq, pq + (size_t)(i * GEMMA2__QT_KB + b) * 32 + 4 * g, 4);
                wv = _mm512_set1_epi32(wq);
                GEMMA2__UNROLL for (v = 0; v < NR; v++) acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], wv, xv[v]);
            }
        }
        GEMMA2__UNROLL for (i = 0; i < MR; i++) {
            const __m512 dw = _mm512_set1_ps(pd[i * GEMMA2__QT_KB + b]);
            GEMMA2__UNROLL for (v = 0; v < NR; v++) {
                const float *xd = (const float *)(const void *)(xp + (size_t)v * xrun + 512);
                __m512 t = GEMMA2__MUL_NF(GEMMA2__MUL_NF(dw, _mm512_loadu_ps(xd)), _mm512_cvtepi32_ps(acc[i][v]));
                if (Q4) t = GEMMA2__ADD_NF(t, GEMMA2__MUL_NF(_mm512_set1_ps(pm[i * GEMMA2__QT_KB + b]), _mm512_loadu_ps(xd + 16)));
                y[i][v] = GEMMA2__ADD_NF(y[i][v], t);
            }
        }
    }
    GEMMA2__UNROLL for (i = 0; i < MR; i++) GEMMA2__UNROLL for (v = 0; v < NR; v++)
        _mm512_store_ps(buf + (size_t)i * GEMMA2__QT_TC + 16 * v, y[i][v]);
}

/* Prefetches rows [r, r+nr) x blocks [b0, b0+nblk) of a Q8 or Q4 matrix (the next panel,
   while the tiles work on this one: its bytes come from memory, once per call). */
GEMMA2__ALWAYS_INLINE void gemma2__qprefetch(const gemma2__mat *w, int r, int nr, int b0, int nblk)
{
    const size_t rb = gemma2__row_bytes(w->format, w->cols), bb = (size_t)gemma2__wformat_of(w->format)->block_bytes;
    int i;
    size_t o;
    for (i = 0; i < nr; i++) {
        const char *p = (const char *)w->data + (size_t)(r + i) * rb + (size_t)b0 * bb;
        for (o = 0; o < (size_t)nblk * bb; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
        _mm_prefetch(p + (size_t)nblk * bb - 1, _MM_HINT_T0);
    }
}

/* The finished sums of nr rows (from row rb) x tc tokens (from token t0) in buf, to y:
   transposed 16 x 16 at a time in registers, element by element at the edges. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__qout_512(const gemma2__matmul_args *a, const float *buf, int rb, int nr, int t0, int tc)
{
    int i, t, l;
    for (i = 0; i < nr; i += 16)
        for (t = 0; t < tc; t += 16)
            if (i + 16 <= nr && t + 16 <= tc) {
                __m512i v[16];
                float *y = a->y + (size_t)(t0 + t) * (size_t)a->ldy + rb + i;
                _Pragma("GCC unroll 16") for (l = 0; l < 16; l++) v[l] = _mm512_castps_si512(_mm512_load_ps(buf + (size_t)(i + l) * GEMMA2__QT_TC + t));
                gemma2__transpose16_512(v);
                _Pragma("GCC unroll 16") for (l = 0; l < 16; l++) _mm512_storeu_ps(y + (size_t)l * (size_t)a->ldy, _mm512_castsi512_ps(v[l]));
            } else {
                int r, u;
                for (u = t; u < GEMMA2__MIN(t + 16, tc); u++)
                    for (r = i; r < GEMMA2__MIN(i + 16, nr); r++) a->y[(size_t)(t0 + u) * (size_t)a->ldy + rb + r] = buf[(size_t)r * GEMMA2__QT_TC + u];
            }
}

/* Prefetches the lines of y that rows [rb, rb+nr) of tokens [t, t+n) will be written to. */
GEMMA2__ALWAYS_INLINE void gemma2__qprefetch_y(const gemma2__matmul_args *a, int rb, int nr, int t, int n)
{
    int u;
    for (u = t; u < GEMMA2__MIN(t + n, a->T); u++) {
        const char *p = (const char *)(a->y + (size_t)u * (size_t)a->ldy + rb);
        size_t o;
        for (o = 0; o < (size_t)nr * 4; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
        _mm_prefetch(p + (size_t)nr * 4 - 1, _MM_HINT_T0);
    }
}

#define GEMMA2__QTILES(MR_)                                                                                       \
    do {                                                                                                          \
        const uint8_t *pq_ = pq + (size_t)i * GEMMA2__QT_KB * 32;                                                 \
        const float *pd_ = pd + i * GEMMA2__QT_KB, *pm_ = pm + i * GEMMA2__QT_KB;                                 \
        float *bf_ = buf + (size_t)i * GEMMA2__QT_TC + 16 * v;                                                    \
        if (v == 0 && pnr > 0) gemma2__qprefetch(a->w, pr + i, GEMMA2__MIN(MR_, pnr - i), pb, pnb);               \
        if (last) gemma2__qprefetch_y(a, rb, nr, 16 * (v0 + v) + (i / GEMMA2__QT_MR) * 4, 4);       \
        switch (GEMMA2__MIN(GEMMA2__QT_NR, nv - v)) {                                                            \
        case 4: gemma2__qtile_512(pq_, pd_, pm_, xb, xrun, bf_, nblk, kb == 0, MR_, GEMMA2__MIN(4, GEMMA2__QT_NR), Q4); break; \
        case 3: gemma2__qtile_512(pq_, pd_, pm_, xb, xrun, bf_, nblk, kb == 0, MR_, GEMMA2__MIN(3, GEMMA2__QT_NR), Q4); break; \
        case 2: gemma2__qtile_512(pq_, pd_, pm_, xb, xrun, bf_, nblk, kb == 0, MR_, 2, Q4); break;                \
        default: gemma2__qtile_512(pq_, pd_, pm_, xb, xrun, bf_, nblk, kb == 0, MR_, 1, Q4); break;               \
        }                                                                                                         \
    } while (0)

/* Rows [r0, r1) for all tokens on the Q8T layout: per pass of up to 128 tokens and block of
   48 rows, the columns 8 blocks at a time (a panel), each panel's tiles with the token runs
   outside and the rows inside; the running sums wait in buf and go to y when the row block
   is done. While the tiles of one panel run, the first pass over its rows prefetches the
   next panel's weights (rows pr.., blocks pb..): they come from memory, and the panel would
   otherwise wait for them (6% on 1 thread); the last panel prefetches the lines of y. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512VNNI void gemma2__matmul_qt_512(const gemma2__matmul_args *a, int r0, int r1, const int Q4)
{
    GEMMA2__ALIGN64 float buf[GEMMA2__QT_RB * GEMMA2__QT_TC];
    GEMMA2__ALIGN64 uint8_t pq[GEMMA2__QT_RB * GEMMA2__QT_KB * 32];
    float pd[GEMMA2__QT_RB * GEMMA2__QT_KB], pm[GEMMA2__QT_RB * GEMMA2__QT_KB];
    const int K = a->w->cols, nb = (K + 31) / 32, nvt = (a->T + 15) / 16;
    const size_t xrun = gemma2__q8t_off(nb, 1, 0);
    int v0, rb, kb, v, i;
    for (v0 = 0; v0 < nvt; v0 += GEMMA2__QT_TC / 16) {
        const int nv = GEMMA2__MIN(GEMMA2__QT_TC / 16, nvt - v0);
        for (rb = r0; rb < r1; rb += GEMMA2__QT_RB) {
            const int nr = GEMMA2__MIN(GEMMA2__QT_RB, r1 - rb);
            for (kb = 0; kb < nb; kb += GEMMA2__QT_KB) {
                const int nblk = GEMMA2__MIN(GEMMA2__QT_KB, nb - kb), last = kb + GEMMA2__QT_KB >= nb; /* the last panel */
                /* the next panel: the next blocks of these rows, or the first of the next rows */
                const int pr = last ? rb + GEMMA2__QT_RB : rb, pb = last ? 0 : kb + GEMMA2__QT_KB;
                const int pnr = GEMMA2__MIN(GEMMA2__QT_RB, r1 - pr), pnb = GEMMA2__MIN(GEMMA2__QT_KB, nb - pb);
                gemma2__qpanel_512(a->w, rb, nr, kb, nblk, pq, pd, pm, Q4);
                for (v = 0; v < nv; v += GEMMA2__QT_NR) {
                    const uint8_t *xb = (const uint8_t *)a->xp + gemma2__q8t_off(nb, v0 + v, kb);
                    for (i = 0; i + GEMMA2__QT_MR <= nr; i += GEMMA2__QT_MR) GEMMA2__QTILES(GEMMA2__QT_MR);
                    for (; i < nr; i++) GEMMA2__QTILES(1);
                }
            }
            gemma2__qout_512(a, buf, rb, nr, 16 * v0, GEMMA2__MIN(a->T - 16 * v0, GEMMA2__QT_TC));
        }
    }
}

static GEMMA2__T_AVX512VNNI void gemma2__matmul_qt_q8(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_qt_512(a, r0, r1, 0); }
static GEMMA2__T_AVX512VNNI void gemma2__matmul_qt_q4(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_qt_512(a, r0, r1, 1); }

/* Q8 or Q4 weights: several tokens on the transposed layout (Q8T) through the tiles, tokens
   on the Q8 layout through the decode kernel one at a time; unpacked activations take the
   reference, which quantizes them itself (the same results). */
static GEMMA2__T_AVX512VNNI void gemma2__matmul_avx512vnni_q(const gemma2__matmul_args *a, int r0, int r1, int q4)
{
    const int K = a->w->cols, nb = (K + 31) / 32;
    int t, r, S, S0, k;
    if (a->xp_kind == GEMMA2__PACK_Q8T) {
        if (q4) gemma2__matmul_qt_q4(a, r0, r1);
        else gemma2__matmul_qt_q8(a, r0, r1);
        return;
    }
    if (a->xp_kind != GEMMA2__PACK_Q8) {
        if (q4) gemma2__matmul_ref_q4(a, r0, r1);
        else gemma2__matmul_ref_q8(a, r0, r1);
        return;
    }
    /* 16 rows at a time, S rows apart (S groups interleaved over 16 S rows) so that each of the
       16 streams has its 4 KB pages to itself: streams that share pages defeat the hardware
       prefetchers, which follow one stream per page (measured on plain reads with the Q8 and Q4
       decode patterns, one thread: 9.4 and 7.1 GB/s with neighbouring rows, 13.6 and 10.9 rows 4
       apart, 13.5 for the bf16 kernels' 8 rows of 4.6 KB). S: the smallest power of 2 that puts
       the streams 8 KB apart, smaller where the rows left are too few. The last few rows go as
       the last 16 of the matrix, keeping only the new ones (the same arithmetic: the same bits),
       or through the reference below 16 rows. */
    for (S0 = 1; S0 < 8 && (size_t)S0 * gemma2__row_bytes(a->w->format, K) < 8192; S0 *= 2) {}
    for (t = 0; t < a->T; t++) {
        const uint8_t *xp = (const uint8_t *)a->xp + (size_t)t * gemma2__q8_tok_bytes(K);
        const int8_t *xq = (const int8_t *)xp;
        const float *xd = (const float *)(const void *)(xp + (size_t)nb * 32);
        float *y = a->y + (size_t)t * (size_t)a->ldy;
        r = r0;
        for (S = S0; S >= 1; S /= 2)
            for (; r + 16 * S <= r1; r += 16 * S)
                for (k = 0; k < S; k++) {
                    if (q4) gemma2__matvec_q4x16(a, xq, xd, y, r + k, S, 0xffff);
                    else gemma2__matvec_q8x16(a, xq, xd, y, r + k, S, 0xffff);
                }
        if (r < r1) {
            int r16 = r1 - 16;
            __mmask16 keep = (__mmask16)(0xffffu << (r - r16));
            if (r16 < 0) {
                gemma2__matmul_args a1 = *a;
                a1.y = y; a1.xp = xp; a1.T = 1;
                if (q4) gemma2__matmul_ref_q4(&a1, r, r1);
                else gemma2__matmul_ref_q8(&a1, r, r1);
            } else if (q4) gemma2__matvec_q4x16(a, xq, xd, y, r16, 1, keep);
            else gemma2__matvec_q8x16(a, xq, xd, y, r16, 1, keep);
        }
    }
}

static GEMMA2__T_AVX512VNNI void gemma2__matmul_avx512vnni_q8(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_avx512vnni_q(a, r0, r1, 0); }
static GEMMA2__T_AVX512VNNI void gemma2__matmul_avx512vnni_q4(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_avx512vnni_q(a, r0, r1, 1); }

/* Per weight format: one token: matrix-vector. More: the transposed-activation tiles when
   they come packed (float32 xt, also for F32 weights), otherwise row-dot tiles (F32 weights)
   or token by token (BF16). */
static GEMMA2__T_AVX512 void gemma2__matmul_avx512_f32(const gemma2__matmul_args *a, int r0, int r1)
{
    if (a->T == 1) gemma2__matvecs_512f(a, r0, r1);
    else if (a->xp_kind == GEMMA2__PACK_XT_F32) gemma2__matmul_512_xtf(a, r0, r1);
    else gemma2__matmul_512_f32w(a, r0, r1);
}

static GEMMA2__T_AVX512 void gemma2__matmul_avx512_bf16(const gemma2__matmul_args *a, int r0, int r1)
{
    if (a->T > 1 && a->xp_kind == GEMMA2__PACK_XT_F32) gemma2__matmul_512_xt(a, r0, r1);
    else if (a->T > 1 && a->xp_kind == GEMMA2__PACK_EO) gemma2__matvecs_512bh_n(a, r0, r1);
    else gemma2__matvecs_512bh(a, r0, r1);
}

/* The same, plus vdpbf16ps on bf16 activations (rows or a bf16 xt) or on the exact
   three-part split of x (X3: float32 decode). */
static GEMMA2__T_AVX512BF16 void gemma2__matmul_avx512bf16_bf16(const gemma2__matmul_args *a, int r0, int r1)
{
    if (a->T > 1 && a->xp_kind == GEMMA2__PACK_XT_BF16) gemma2__matmul_512_xtdp(a, r0, r1);
    else if (a->xp_kind == GEMMA2__PACK_BF16) gemma2__matvecs_512dp(a, r0, r1);
    else if (a->xp_kind == GEMMA2__PACK_X3) {
        if (a->T == 1) gemma2__matvecs_512x3(a, r0, r1);
        else gemma2__matvecs_512x3_n(a, r0, r1);
    } else gemma2__matmul_avx512_bf16(a, r0, r1);
}

/* Layouts. Several tokens: transposed, for the register tiles (bf16 pairs when bf16
   arithmetic was asked for and the weights are bf16, else floats, F32 weights included).
   One token: bf16 rows for bf16 arithmetic; in float32 the three-part split where it is
   faster than FMAs on widened weights (x3_min_cols: see there). Q8 and Q4 weights (with
   AVX512_VNNI): quantized activations, transposed (Q8T) for several tokens. */
static int gemma2__pack_kind_avx512(const gemma2__kernels *k, int format, int T, int K, int compute_bf16, int lone)
{
    int bf = compute_bf16 && k->id == GEMMA2_KERNELS_AVX512_BF16 && format == GEMMA2__WF_BF16;
    int x3 = k->id == GEMMA2_KERNELS_AVX512_BF16 && format == GEMMA2__WF_BF16 && K > k->x3_min_cols;
    if (format == GEMMA2__WF_Q8 || format == GEMMA2__WF_Q4) return !k->matmul[format] ? GEMMA2__PACK_NONE : T > 1 ? GEMMA2__PACK_Q8T : GEMMA2__PACK_Q8;
    if (format != GEMMA2__WF_F32 && format != GEMMA2__WF_BF16) return GEMMA2__PACK_NONE;
    if (T > 1 && lone && format == GEMMA2__WF_BF16) return bf ? GEMMA2__PACK_BF16 : x3 ? GEMMA2__PACK_X3 : GEMMA2__PACK_EO;
    if (T > 1) return bf ? GEMMA2__PACK_XT_BF16 : GEMMA2__PACK_XT_F32;
    if (bf) return GEMMA2__PACK_BF16;
    if (x3) return GEMMA2__PACK_X3;
    return GEMMA2__PACK_NONE;
}

static GEMMA2__T_AVX512 float gemma2__dot_avx512(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static GEMMA2__T_AVX512 void gemma2__axpy_avx512(float *y, float a, const float *x, int n)
{
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static GEMMA2__T_AVX512 void gemma2__rmsnorm_avx512(float *out, const float *x, const float *w1, int n, float eps)
{
    float scale = 1.0f / sqrtf(gemma2__dot_avx512(x, x, n) / (float)n + eps);
    __m512 sv = _mm512_set1_ps(scale);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), sv), _mm512_loadu_ps(w1 + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), sv), _mm512_maskz_loadu_ps(m, w1 + i)));
    }
}

/* exp(x) for 16 lanes: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial (rel. error
   ~2e-7), 2^n put straight into the exponent field. x is first clamped to [-87, 88.37], where
   2^n stays a normal float: below, the result is exp(-87) (callers only need it tiny); above
   ln(FLT_MAX) = 88.7228 it is +inf, as expf gives (gelu_tanh(-inf) is then NaN, as in the
   scalar code); in between 2.4e38. A NaN stays NaN: x86's max and min return their second
   operand when either is NaN, so x goes second. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m512 gemma2__exp_512(__m512 x)
{
    __m512 n, r, p, c = _mm512_min_ps(_mm512_set1_ps(88.37f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
    n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), c);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    p = _mm512_set1_ps(1.3981999507e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    p = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23)));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(88.7228394f), _CMP_GT_OQ), p, _mm512_set1_ps(INFINITY));
}

/* gelu_tanh(u) = u (1 + tanh(z)) / 2 = u / (1 + exp(-2z)), z = sqrt(2/pi) (u + 0.044715 u^3):
   one exp and one division, no tanh. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m512 gemma2__gelu_512(__m512 u)
{
    __m512 u3 = _mm512_mul_ps(_mm512_mul_ps(u, u), u);
    __m512 z2 = _mm512_mul_ps(_mm512_fmadd_ps(u3, _mm512_set1_ps(0.044715f), u), _mm512_set1_ps(-1.5957691216057308f));
    return _mm512_div_ps(u, _mm512_add_ps(_mm512_set1_ps(1.0f), gemma2__exp_512(z2)));
}

static GEMMA2__T_AVX512 void gemma2__gelu_mul_avx512(float *g, const float *u, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(g + i, _mm512_mul_ps(gemma2__gelu_512(_mm512_loadu_ps(g + i)), _mm512_loadu_ps(u + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(gemma2__gelu_512(_mm512_maskz_loadu_ps(m, g + i)), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* cap tanh(x / cap), v = x (1 / cap), for every cap the config accepts. tanh(|v|) is
   (1 - e) / (1 + e) with e = exp(-2|v|) for |v| >= 0.625, where e <= 0.29 so 1 - e loses
   nothing; below, that form cancels (with a cap far above the logits, e.g. 1e9, every result
   came out 0), so there it is Cephes' odd polynomial for tanhf, |v| + |v|^3 P(v^2) (relative
   error ~2e-7 on [0, 0.625]). The sign goes back on last; NaN propagates through both forms,
   +-inf gives +-cap. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m512 gemma2__softcap_512(__m512 x, __m512 cap, __m512 inv)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 sign = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u)));
    __m512 av = _mm512_abs_ps(_mm512_mul_ps(x, inv)), z = _mm512_mul_ps(av, av);
    __m512 e = gemma2__exp_512(_mm512_mul_ps(av, _mm512_set1_ps(-2.0f)));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(av, _mm512_set1_ps(0.625f), _CMP_LT_OQ), t, _mm512_fmadd_ps(_mm512_mul_ps(p, z), av, av));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_mul_ps(t, cap)), _mm512_castps_si512(sign)));
}

static GEMMA2__T_AVX512 void gemma2__softcap_avx512(float *x, int n, float cap)
{
    __m512 c = _mm512_set1_ps(cap), inv = _mm512_set1_ps(1.0f / cap);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gemma2__softcap_512(_mm512_loadu_ps(x + i), c, inv));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, gemma2__softcap_512(_mm512_maskz_loadu_ps(m, x + i), c, inv));
    }
}

/* Round to nearest even in integer arithmetic (bit-exact with the scalar; vcvtneps2bf16 would
   flush subnormals), NaNs kept quiet. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m256i gemma2__to_bf16_512(__m512 f)
{
    __m512i u = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

static GEMMA2__T_AVX512 void gemma2__from_bf16_avx512(float *dst, const uint16_t *src, int n)
{
    int i = 0;
    for (; i < n; i += 16) {
        __mmask16 m = gemma2__mask16(n - i);
        __m256i h = _mm256_maskz_loadu_epi16(m, src + i);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
}

static GEMMA2__T_AVX512 void gemma2__to_bf16_avx512(uint16_t *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), gemma2__to_bf16_512(_mm512_loadu_ps(src + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(dst + i, m, gemma2__to_bf16_512(_mm512_maskz_loadu_ps(m, src + i)));
    }
}

/* The X3 layout: 16 columns at a time, each part rounded with gemma2__to_bf16_512 (bit-exact with
   the scalar reference) and subtracted in float32. */
static GEMMA2__T_AVX512 void gemma2__to_bf16x3_avx512(uint16_t *dst, const float *x, int n)
{
    int i, b;
    for (i = 0; i < n || (i & 31); i += 16) { /* whole 32-column blocks: the padding gets zeros */
        __mmask16 m = gemma2__mask16(n - i);
        uint16_t *blk = dst + (size_t)(i / 32) * 96 + (i & 16);
        __m512 r = _mm512_maskz_loadu_ps(m, x + i);
        for (b = 0; b < 3; b++) {
            __m256i h = gemma2__to_bf16_512(r);
            _mm256_storeu_si256((__m256i *)(blk + 32 * b), h);
            r = _mm512_sub_ps(r, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        }
    }
}

/* The transposed layouts for the prefill tiles: rows [j0, j1) of xt (columns of x for
   GEMMA2__PACK_XT_F32, column pairs for GEMMA2__PACK_XT_BF16), 16 tokens x 16 rows at a time
   through the register transpose;
   the ragged edges (and the zero padding up to a multiple of 16 tokens) element by element. */
static GEMMA2__T_AVX512 void gemma2__prep_xt_avx512(void *xt, const float *x, int T, int K, int kind, int j0, int j1)
{
    const int Tp = (T + 15) & ~15, rows = gemma2__pack_rows(kind, T, K);
    const int bf = kind == GEMMA2__PACK_XT_BF16, per = bf ? 32 : 16; /* x columns per 16 xt rows */
    uint32_t *o = (uint32_t *)xt;
    int t, j, i;
    for (t = 0; t < Tp; t += 16)
        for (j = j0; j < j1; j += 16) {
            if (t + 16 <= T && j + 16 <= j1 && (j + 16) * (per / 16) <= K) {
                __m512i v[16];
                GEMMA2__UNROLL for (i = 0; i < 16; i++) {
                    const float *xr = x + (size_t)(t + i) * (size_t)K + (size_t)j * (size_t)(per / 16);
                    if (bf) v[i] = _mm512_inserti64x4(_mm512_castsi256_si512(gemma2__to_bf16_512(_mm512_loadu_ps(xr))),
                                                      gemma2__to_bf16_512(_mm512_loadu_ps(xr + 16)), 1);
                    else v[i] = _mm512_castps_si512(_mm512_loadu_ps(xr));
                }
                gemma2__transpose16_512(v);
                GEMMA2__UNROLL for (i = 0; i < 16; i++) _mm512_storeu_si512((void *)(o + gemma2__xt_off(rows, j + i, t)), v[i]);
            } else {
                int jj, tt, je = GEMMA2__MIN(j + 16, j1);
                for (jj = j; jj < je; jj++)
                    for (tt = t; tt < t + 16; tt++) {
                        uint32_t val = 0;
                        if (tt < T) {
                            const float *xr = x + (size_t)tt * (size_t)K;
                            if (!bf) memcpy(&val, xr + jj, 4);
                            else val = (uint32_t)gemma2__f32_to_bf16(xr[2 * jj]) | (2 * jj + 1 < K ? (uint32_t)gemma2__f32_to_bf16(xr[2 * jj + 1]) << 16 : 0u);
                        }
                        o[gemma2__xt_off(rows, jj, tt)] = val;
                    }
            }
        }
}

/* ---- attention ----
   Scores: 8 keys x 2 query heads (16 keys x 1; 4 keys x 4 queries when a block of tokens
   comes together) at a time in 16 accumulators, over head_dim in steps of 16 (masked tail):
   each key row is loaded once for all those queries (grouped-query attention) and several
   rows stream at once; the 16 horizontal sums are done together by a shuffle tree. Values:
   the output rows live in registers (2 queries x 128 dims = 16 accumulators, or 4 x 64)
   while all n value rows stream past once, each weighted by its broadcast probability: no
   load/store of the output per key.
   The same kernels read a bf16 cache (GEMMA2_KV_BF16; BF = 1): each row segment is widened in
   registers as it is loaded, so only the bf16 bytes come from memory. */

/* 16 elements (masked) of a cached row at element offset off: float32, or bf16 widened. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m512 gemma2__ldrow_512(const void *p, size_t off, __mmask16 m, const int BF)
{
    if (BF) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + off)), 16));
    return _mm512_maskz_loadu_ps(m, (const float *)p + off);
}
#define GEMMA2__PFROW(p, off, BF) _mm_prefetch((const char *)(p) + (off) * ((BF) ? 2 : 4), _MM_HINT_T0)

/* The sum of a's 16 lanes in the order in which gemma2__hsum16_512 sums each of its inputs,
   per 128-bit block (a0 + a2) + (a1 + a3), then (B0 + B1) + (B2 + B3): a score is then the same
   float whether the 16-key kernel or the one for the leftover keys computes it, so scores do
   not depend on how many keys a chunk of tokens gives the call (and neither do the results). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 float gemma2__hsum1_512(__m512 a)
{
    a = _mm512_add_ps(a, _mm512_permute_ps(a, 0x4e));
    a = _mm512_add_ps(a, _mm512_permute_ps(a, 0xb1));
    a = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, 0xb1));
    a = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, 0x4e));
    return _mm512_cvtss_f32(a);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__att_sc_512(float *s, int lds, const float *q, int hd, const void *K, int a, const int NA,
                                                             const int NG, float scale, const int BF)
{
    __m512 acc[2][4];
    int g, i, d;
    GEMMA2__UNROLL for (g = 0; g < NG; g++) GEMMA2__UNROLL for (i = 0; i < NA; i++) acc[g][i] = _mm512_setzero_ps();
    for (d = 0; d < hd; d += 16) {
        __mmask16 m = gemma2__mask16(hd - d);
        __m512 qv[2];
        GEMMA2__UNROLL for (g = 0; g < NG; g++) qv[g] = _mm512_maskz_loadu_ps(m, q + (size_t)g * hd + d);
        GEMMA2__UNROLL for (i = 0; i < NA; i++) {
            __m512 kv = gemma2__ldrow_512(K, (size_t)(a + i) * hd + d, m, BF);
            GEMMA2__UNROLL for (g = 0; g < NG; g++) acc[g][i] = _mm512_fmadd_ps(qv[g], kv, acc[g][i]);
        }
    }
    GEMMA2__UNROLL for (g = 0; g < NG; g++) GEMMA2__UNROLL for (i = 0; i < NA; i++)
        s[(size_t)g * lds + a + i] = gemma2__hsum1_512(acc[g][i]) * scale;
}

/* The 16 horizontal sums of 16 accumulators at once: lane i of the result is the sum of all
   lanes of a[i]. Four rounds of shuffle-and-add (15 adds in all) instead of 16 separate
   reductions of ~8 dependent operations each. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m512 gemma2__hsum16_512(const __m512 a[16])
{
    __m512 t[8], u[4], v0, v1;
    int i;
    GEMMA2__UNROLL for (i = 0; i < 8; i++) /* per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3] of a = a[2i], b = a[2i+1] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    GEMMA2__UNROLL for (i = 0; i < 4; i++) /* per block: the block sums of a[4i .. 4i+3] */
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[2 * i]), _mm512_castps_pd(t[2 * i + 1]))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[2 * i]), _mm512_castps_pd(t[2 * i + 1]))));
    v0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    v1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xdd));
}

/* Decoding at long contexts streams the whole cache once per token, 1 KB per key row, and a
   single stream does not keep enough cache misses in flight: the rows GEMMA2__ATT_PF keys
   ahead (values: twice that) are prefetched, one prefetch per line read. Measured on one
   core over 52 kv heads x 8192 positions (2.2 GB, scores + softmax + values): 14 -> 22 GB/s;
   the distance hardly matters between 8 and 32 keys. */
#define GEMMA2__ATT_PF 16

/* 16 scores at once: keys a..a+16/NG of NG (1, 2 or 4) queries, accumulator g * (16/NG) + key.
   More queries per key row means fewer row loads per FMA: 4 queries x 4 keys load 8 registers
   per 16 FMAs, 2 x 8 load 10 (when a block of tokens is scored together, gemma2__att_task, the
   key rows come from L2 and their loads set the pace). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__att_sc16_512(float *s, int lds, const float *q, int hd, const void *K, int a, const int NG,
                                                               float scale, const int BF)
{
    const int NA = 16 / NG;
    __m512 acc[16], r;
    int g, i, d;
    GEMMA2__UNROLL for (i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (d = 0; d < hd; d += 16) {
        __mmask16 m = gemma2__mask16(hd - d);
        __m512 qv[4];
        GEMMA2__UNROLL for (g = 0; g < NG; g++) qv[g] = _mm512_maskz_loadu_ps(m, q + (size_t)g * hd + d);
        _Pragma("GCC unroll 16") for (i = 0; i < NA; i++) {
            __m512 kv = gemma2__ldrow_512(K, (size_t)(a + i) * hd + d, m, BF);
            GEMMA2__PFROW(K, (size_t)(a + i + GEMMA2__ATT_PF) * hd + d, BF);
            GEMMA2__UNROLL for (g = 0; g < NG; g++) acc[g * NA + i] = _mm512_fmadd_ps(qv[g], kv, acc[g * NA + i]);
        }
    }
    r = _mm512_mul_ps(gemma2__hsum16_512(acc), _mm512_set1_ps(scale));
    if (NG == 1) _mm512_storeu_ps(s + a, r);
    else if (NG == 2) {
        _mm256_storeu_ps(s + a, _mm512_castps512_ps256(r));
        _mm256_storeu_ps(s + lds + a, _mm512_extractf32x8_ps(r, 1));
    } else {
        _mm_storeu_ps(s + a, _mm512_castps512_ps128(r));
        _mm_storeu_ps(s + lds + a, _mm512_extractf32x4_ps(r, 1));
        _mm_storeu_ps(s + 2 * (size_t)lds + a, _mm512_extractf32x4_ps(r, 2));
        _mm_storeu_ps(s + 3 * (size_t)lds + a, _mm512_extractf32x4_ps(r, 3));
    }
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__att_scores_512(float *s, int lds, const float *q, int group, int hd, const void *K, int n,
                                                                 float scale, const int BF)
{
    int g = 0, a;
    for (; g + 4 <= group; g += 4) {
        for (a = 0; a + 4 <= n; a += 4) gemma2__att_sc16_512(s + (size_t)g * lds, lds, q + (size_t)g * hd, hd, K, a, 4, scale, BF);
        for (; a < n; a++) {
            gemma2__att_sc_512(s + (size_t)g * lds, lds, q + (size_t)g * hd, hd, K, a, 1, 2, scale, BF);
            gemma2__att_sc_512(s + (size_t)(g + 2) * lds, lds, q + (size_t)(g + 2) * hd, hd, K, a, 1, 2, scale, BF);
        }
    }
    for (; g + 2 <= group; g += 2) {
        for (a = 0; a + 8 <= n; a += 8) gemma2__att_sc16_512(s + (size_t)g * lds, lds, q + (size_t)g * hd, hd, K, a, 2, scale, BF);
        for (; a < n; a++) gemma2__att_sc_512(s + (size_t)g * lds, lds, q + (size_t)g * hd, hd, K, a, 1, 2, scale, BF);
    }
    for (; g < group; g++) {
        for (a = 0; a + 16 <= n; a += 16) gemma2__att_sc16_512(s + (size_t)g * lds, lds, q + (size_t)g * hd, hd, K, a, 1, scale, BF);
        for (; a < n; a++) gemma2__att_sc_512(s + (size_t)g * lds, lds, q + (size_t)g * hd, hd, K, a, 1, 1, scale, BF);
    }
}

static GEMMA2__T_AVX512 void gemma2__att_scores_avx512(const gemma2__kernels *k, float *s, int lds, const float *q, int group, int hd,
                                                       const float *K, int n, float scale)
{
    (void)k;
    gemma2__att_scores_512(s, lds, q, group, hd, K, n, scale, 0);
}

static GEMMA2__T_AVX512 void gemma2__att_scores_bf16_avx512(const gemma2__kernels *k, float *s, int lds, const float *q, int group, int hd,
                                                            const uint16_t *K, int n, float scale)
{
    (void)k;
    gemma2__att_scores_512(s, lds, q, group, hd, K, n, scale, 1);
}

/* out[g][d .. d + 16 NV) += sum_a s[g][a] V[a][d ..], the last vector masked by ml; NG x NV <= 16
   accumulators (2 x 8, or 4 x 4 when a block of tokens brings many queries: half the value-row
   loads per FMA). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__att_v_512(float *out, const float *s, int lds, int hd, const void *V, int n, int d,
                                                            const int NV, const int NG, __mmask16 ml, const int BF)
{
    __m512 acc[4][8];
    int g, v, a;
    GEMMA2__UNROLL for (g = 0; g < NG; g++) GEMMA2__UNROLL for (v = 0; v < NV; v++)
        acc[g][v] = _mm512_maskz_loadu_ps(v == NV - 1 ? ml : (__mmask16)0xffff, out + (size_t)g * hd + d + 16 * v);
    for (a = 0; a < n; a++) {
        __m512 sv[4];
        GEMMA2__UNROLL for (g = 0; g < NG; g++) sv[g] = _mm512_set1_ps(s[(size_t)g * lds + a]);
        GEMMA2__UNROLL for (v = 0; v < NV; v++) {
            __m512 vv = gemma2__ldrow_512(V, (size_t)a * hd + d + 16 * v, v == NV - 1 ? ml : (__mmask16)0xffff, BF);
            GEMMA2__PFROW(V, (size_t)(a + 2 * GEMMA2__ATT_PF) * hd + d + 16 * v, BF);
            GEMMA2__UNROLL for (g = 0; g < NG; g++) acc[g][v] = _mm512_fmadd_ps(sv[g], vv, acc[g][v]);
        }
    }
    GEMMA2__UNROLL for (g = 0; g < NG; g++) GEMMA2__UNROLL for (v = 0; v < NV; v++)
        _mm512_mask_storeu_ps(out + (size_t)g * hd + d + 16 * v, v == NV - 1 ? ml : (__mmask16)0xffff, acc[g][v]);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 void gemma2__att_values_512(float *out, const float *s, int lds, int group, int hd, const void *V, int n,
                                                                 const int BF)
{
    int g = 0, d;
    for (; g + 4 <= group; g += 4) {
        float *o = out + (size_t)g * hd;
        const float *sg = s + (size_t)g * lds;
        for (d = 0; d + 64 <= hd; d += 64) gemma2__att_v_512(o, sg, lds, hd, V, n, d, 4, 4, (__mmask16)0xffff, BF);
        for (; d < hd; d += 16) gemma2__att_v_512(o, sg, lds, hd, V, n, d, 1, 4, gemma2__mask16(hd - d), BF);
    }
    for (; g < group; g += 2) {
        float *o = out + (size_t)g * hd;
        const float *sg = s + (size_t)g * lds;
        for (d = 0; d + 128 <= hd; d += 128) {
            if (group - g >= 2) gemma2__att_v_512(o, sg, lds, hd, V, n, d, 8, 2, (__mmask16)0xffff, BF);
            else gemma2__att_v_512(o, sg, lds, hd, V, n, d, 8, 1, (__mmask16)0xffff, BF);
        }
        for (; d < hd; d += 16) {
            __mmask16 m = gemma2__mask16(hd - d);
            if (group - g >= 2) gemma2__att_v_512(o, sg, lds, hd, V, n, d, 1, 2, m, BF);
            else gemma2__att_v_512(o, sg, lds, hd, V, n, d, 1, 1, m, BF);
        }
    }
}

static GEMMA2__T_AVX512 void gemma2__att_values_avx512(const gemma2__kernels *k, float *out, const float *s, int lds, int group, int hd,
                                                       const float *V, int n)
{
    (void)k;
    gemma2__att_values_512(out, s, lds, group, hd, V, n, 0);
}

static GEMMA2__T_AVX512 void gemma2__att_values_bf16_avx512(const gemma2__kernels *k, float *out, const float *s, int lds, int group, int hd,
                                                            const uint16_t *V, int n)
{
    (void)k;
    gemma2__att_values_512(out, s, lds, group, hd, V, n, 1);
}

static GEMMA2__T_AVX512 void gemma2__softmax_avx512(float *x, int n)
{
    __m512 mv = _mm512_set1_ps(-INFINITY), sv = _mm512_setzero_ps(), inv;
    float mx;
    int i;
    for (i = 0; i < n; i += 16) {
        __mmask16 m = gemma2__mask16(n - i);
        mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, x + i));
    }
    mx = _mm512_reduce_max_ps(mv);
    mv = _mm512_set1_ps(mx);
    for (i = 0; i < n; i += 16) {
        __mmask16 m = gemma2__mask16(n - i);
        __m512 e = gemma2__exp_512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv));
        sv = _mm512_add_ps(sv, _mm512_maskz_mov_ps(m, e));
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sv));
    for (i = 0; i < n; i += 16) {
        __mmask16 m = gemma2__mask16(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

/* RoPE, 16 pairs at a time (the scalar reference's operations, so the same bits). */
static GEMMA2__T_AVX512 void gemma2__rope_avx512(float *x, int n_heads, int hd, const float *cs)
{
    int h, i, half = hd / 2;
    for (h = 0; h < n_heads; h++, x += hd)
        for (i = 0; i < half; i += 16) {
            __mmask16 m = gemma2__mask16(half - i);
            __m512 a = _mm512_maskz_loadu_ps(m, x + i), b = _mm512_maskz_loadu_ps(m, x + half + i);
            __m512 co = _mm512_maskz_loadu_ps(m, cs + i), si = _mm512_maskz_loadu_ps(m, cs + half + i);
            _mm512_mask_storeu_ps(x + i, m, _mm512_sub_ps(_mm512_mul_ps(a, co), _mm512_mul_ps(b, si)));
            _mm512_mask_storeu_ps(x + half + i, m, _mm512_add_ps(_mm512_mul_ps(b, co), _mm512_mul_ps(a, si)));
        }
}

/* One token's EO layout: the permutes of gemma2__matvec_512bh, stored. */
static GEMMA2__T_AVX512 void gemma2__eo_avx512(float *dst, const float *x, int K)
{
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    int k;
    for (k = 0; k < K; k += 32) {
        __m512 x0 = _mm512_maskz_loadu_ps(gemma2__mask16(K - k), x + k), x1 = _mm512_maskz_loadu_ps(gemma2__mask16(K - k - 16), x + k + 16);
        _mm512_storeu_ps(dst + k, _mm512_permutex2var_ps(x0, ie, x1));
        _mm512_storeu_ps(dst + k + 16, _mm512_permutex2var_ps(x0, io, x1));
    }
}

/* Every layout pack_kind_avx512 asks for. */
static GEMMA2__T_AVX512 void gemma2__pack_avx512(void *xp, int kind, const float *x, int T, int K, int j0, int j1)
{
    int t;
    if (kind == GEMMA2__PACK_XT_F32 || kind == GEMMA2__PACK_XT_BF16) gemma2__prep_xt_avx512(xp, x, T, K, kind, j0, j1);
    else if (kind == GEMMA2__PACK_BF16) for (t = j0; t < j1; t++) gemma2__to_bf16_avx512((uint16_t *)xp + (size_t)t * K, x + (size_t)t * K, K);
    else if (kind == GEMMA2__PACK_Q8) gemma2__pack_q8_avx512((uint8_t *)xp, x, K, j0, j1);
    else if (kind == GEMMA2__PACK_Q8T) gemma2__pack_q8t_avx512((uint8_t *)xp, x, T, K, j0, j1);
    else if (kind == GEMMA2__PACK_EO) for (t = j0; t < j1; t++) gemma2__eo_avx512((float *)xp + (size_t)t * gemma2__eo_elems(K), x + (size_t)t * K, K);
    else gemma2__pack_ref(xp, kind, x, T, K, j0, j1);
}

static GEMMA2__T_AVX512BF16 void gemma2__pack_avx512bf16(void *xp, int kind, const float *x, int T, int K, int j0, int j1)
{
    int t;
    if (kind == GEMMA2__PACK_X3)
        for (t = j0; t < j1; t++) gemma2__to_bf16x3_avx512((uint16_t *)xp + (size_t)t * gemma2__x3_elems(K), x + (size_t)t * K, K);
    else gemma2__pack_avx512(xp, kind, x, T, K, j0, j1);
}

/* ---- quantizing rows (Q8, Q4): the formats' from_float, 16 lanes at a time ----------------

   Bit for bit the scalar gemma2__q8_quantize_row / gemma2__q4_quantize_row: the same IEEE
   divisions and products, and round-half-away-from-zero (roundf) built from exact steps:
   t = trunc(v), f = v - t (exact), then t +- 1 where |f| >= 0.5. The block's scales are
   converted by the scalar gemma2__f32_to_f16, once per 32 weights. A partial last block takes
   the scalar path. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX512 __m512i gemma2__round_away_512(__m512 v)
{
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(v, t);
    __mmask16 up = _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ), dn = _mm512_cmp_ps_mask(f, _mm512_set1_ps(-0.5f), _CMP_LE_OQ);
    __m512i r = _mm512_cvttps_epi32(t);
    r = _mm512_mask_add_epi32(r, up, r, _mm512_set1_epi32(1));
    return _mm512_mask_sub_epi32(r, dn, r, _mm512_set1_epi32(1));
}

static GEMMA2__T_AVX512 void gemma2__q8_quantize_row_avx512(void *row, const float *x, int K)
{
    uint8_t *dst = (uint8_t *)row;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    int k0;
    for (k0 = 0; k0 + 32 <= K; k0 += 32, dst += GEMMA2__Q8_BYTES) {
        __m512 x0 = _mm512_loadu_ps(x + k0), x1 = _mm512_loadu_ps(x + k0 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(x0, absmask), _mm512_and_ps(x1, absmask))), d = amax / 127.0f;
        uint16_t h;
        if (_mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q)) d = NAN;
        h = gemma2__f32_to_f16(d);
        memcpy(dst, &h, 2);
        if (!(d != 0 && d < INFINITY)) { memset(dst + 2, 0, 32); continue; }
        _mm_storeu_si128((__m128i *)(void *)(dst + 2), _mm512_cvtepi32_epi8(gemma2__round_away_512(_mm512_div_ps(x0, _mm512_set1_ps(d)))));
        _mm_storeu_si128((__m128i *)(void *)(dst + 18), _mm512_cvtepi32_epi8(gemma2__round_away_512(_mm512_div_ps(x1, _mm512_set1_ps(d)))));
    }
    if (k0 < K) gemma2__q8_quantize_row(dst, x + k0, K - k0);
}

static GEMMA2__T_AVX512 void gemma2__q4_quantize_row_avx512(void *row, const float *x, int K)
{
    uint8_t *dst = (uint8_t *)row;
    int k0;
    for (k0 = 0; k0 + 32 <= K; k0 += 32, dst += GEMMA2__Q4_BYTES) {
        __m512 x0 = _mm512_loadu_ps(x + k0), x1 = _mm512_loadu_ps(x + k0 + 16), vm, vid;
        float lo = _mm512_reduce_min_ps(_mm512_min_ps(x0, x1)), hi = _mm512_reduce_max_ps(_mm512_max_ps(x0, x1)), d, m, id;
        uint16_t hd, hm;
        __m512i q0, q1, zero = _mm512_setzero_si512(), fifteen = _mm512_set1_epi32(15);
        if (_mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q)) lo = hi = NAN;
        hd = gemma2__f32_to_f16((hi - lo) / 15.0f);
        hm = gemma2__f32_to_f16(lo);
        d = _cvtsh_ss(hd); /* exact, as gemma2__f16_to_f32 (calling that from here costs an SSE/AVX transition) */
        m = _cvtsh_ss(hm);
        if (!(d < INFINITY && m > -INFINITY && m < INFINITY)) { /* not finite: zero quants, as the scalar */
            memcpy(dst, &hd, 2);
            memcpy(dst + 2, &hm, 2);
            memset(dst + 4, 0, 16);
            continue;
        }
        id = d != 0 ? 1.0f / d : 0.0f;
        vm = _mm512_set1_ps(m);
        vid = _mm512_set1_ps(id);
        q0 = gemma2__round_away_512(_mm512_mul_ps(_mm512_sub_ps(x0, vm), vid));
        q1 = gemma2__round_away_512(_mm512_mul_ps(_mm512_sub_ps(x1, vm), vid));
        q0 = _mm512_min_epi32(_mm512_max_epi32(q0, zero), fifteen);
        q1 = _mm512_min_epi32(_mm512_max_epi32(q1, zero), fifteen);
        memcpy(dst, &hd, 2);
        memcpy(dst + 2, &hm, 2);
        _mm_storeu_si128((__m128i *)(void *)(dst + 4), _mm512_cvtepi32_epi8(_mm512_or_si512(q0, _mm512_slli_epi32(q1, 4))));
    }
    if (k0 < K) gemma2__q4_quantize_row(dst, x + k0, K - k0);
}

static void gemma2__kernels_init_avx512(gemma2__kernels *k)
{
    gemma2__kernels_init_scalar(k);
    k->name = "avx512";
    k->id = GEMMA2_KERNELS_AVX512;
    k->matmul[GEMMA2__WF_F32] = gemma2__matmul_avx512_f32;
    k->matmul[GEMMA2__WF_BF16] = gemma2__matmul_avx512_bf16;
    /* Q8 and Q4 on integer dot products where the CPU has them (also for the AVX512_BF16
       set: see the Q8 and Q4 kernels); else the reference products */
    if (gemma2__x86_features() & GEMMA2__CPU_AVX512VNNI) {
        k->matmul[GEMMA2__WF_Q8] = gemma2__matmul_avx512vnni_q8;
        k->matmul[GEMMA2__WF_Q4] = gemma2__matmul_avx512vnni_q4;
    }
    k->from_float[GEMMA2__WF_Q8] = gemma2__q8_quantize_row_avx512;
    k->from_float[GEMMA2__WF_Q4] = gemma2__q4_quantize_row_avx512;
    k->pack_kind = gemma2__pack_kind_avx512;
    k->pack = gemma2__pack_avx512;
    k->dot = gemma2__dot_avx512;
    k->axpy = gemma2__axpy_avx512;
    k->rmsnorm = gemma2__rmsnorm_avx512;
    k->gelu_mul = gemma2__gelu_mul_avx512;
    k->softcap = gemma2__softcap_avx512;
    k->softmax = gemma2__softmax_avx512;
    k->rope = gemma2__rope_avx512;
    k->to_bf16 = gemma2__to_bf16_avx512;
    k->from_bf16 = gemma2__from_bf16_avx512;
    k->att_scores = gemma2__att_scores_avx512;
    k->att_values = gemma2__att_values_avx512;
    k->att_scores_bf16 = gemma2__att_scores_bf16_avx512;
    k->att_values_bf16 = gemma2__att_values_bf16_avx512;
    k->split_rows[1] = GEMMA2__XT_RB; /* whole prefill row blocks */
    k->batch_lone[GEMMA2__WF_BF16] = 1; /* the _n kernels (GEMMA2_COMPUTE_BF16's bf16 rows: token by token) */
    k->att_prefetch_rows = 2 * GEMMA2__ATT_PF;
}

/* Where the float32 decode goes through the three-part bf16 split (X3) instead of FMAs on
   widened weights: matrices wider than x3_min_cols. Both read the same bytes, and which one
   keeps more of them in flight depends on the shape and the CPU. Measured on Zen 5, 1 GB of
   matrices per pass, 1 and 2 threads: the split 7-10% faster on the 2304 x 9216 down
   projection of 2B and 0-7% faster on 9B's 3584-column matrices, FMAs 5-8% faster on 2B's
   2304-column ones; in 2B's model 8.59 tokens/s with the split on the down projection only,
   8.31 with FMAs everywhere (2 threads). On a Xeon with AMX (Sapphire Rapids class), 2
   threads, the same down projection: the split 15% slower (1.0 vs 0.85 ms), and in a
   batch's one-token sessions, where the split costs three dot products per weight per
   token, 4 tokens took 3.8 ms against 1.2 ms with FMAs: the dot products, not the memory,
   set the pace. So the split is off (INT_MAX): the gain where it has one is ~3% of one
   session's decode, the loss in a batch 3x on a quarter of the weights. Set x3_min_cols to
   3072 to have it; the tests reach it that way (kernels/pack, kernels/matmul_lone). */
static void gemma2__kernels_init_avx512bf16(gemma2__kernels *k)
{
    gemma2__kernels_init_avx512(k);
    k->name = "avx512-bf16";
    k->id = GEMMA2_KERNELS_AVX512_BF16;
    k->matmul[GEMMA2__WF_BF16] = gemma2__matmul_avx512bf16_bf16;
    k->pack = gemma2__pack_avx512bf16;
    k->x3_min_cols = INT_MAX;
}

/* ======================= AVX2 + FMA =======================
   Row-dot design with 8 lanes and 16 registers: decode walks 8 rows at once; the prefill
   tile is 4 rows x 3 tokens (12 accumulators + 3 activation vectors + 1 weight vector),
   each accumulator holding 8 partial sums of one output, reduced at the end. The last K % 8 columns go
   through small zero-padded copies (AVX2 has no 16-bit masked loads). */

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 __m256 gemma2__w8_256(const void *row, int bf16, int k)
{
    if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k))), 16));
    return _mm256_loadu_ps((const float *)row + k);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 float gemma2__hsum_256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 void gemma2__tile_256(const gemma2__matmul_args *a, int r, int t, const int RR,
                                                         const int TT, const int bf16)
{
    const int K = a->w->cols;
    const size_t esz = bf16 ? 2 : 4;
    const char *w0 = (const char *)a->w->data + (size_t)r * (size_t)K * esz;
    const float *x0 = a->x + (size_t)t * (size_t)K;
    __m256 acc[4][3];
    int i, j, k = 0;
    GEMMA2__UNROLL for (i = 0; i < RR; i++) GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) {
        __m256 xv[3];
        GEMMA2__UNROLL for (j = 0; j < TT; j++) xv[j] = _mm256_loadu_ps(x0 + (size_t)j * K + k);
        GEMMA2__UNROLL for (i = 0; i < RR; i++) {
            __m256 wv = gemma2__w8_256(w0 + (size_t)i * K * esz, bf16, k);
            GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    if (k < K) {
        float xt[3][8], wt[8];
        int n = K - k, e;
        GEMMA2__UNROLL for (j = 0; j < TT; j++) for (e = 0; e < 8; e++) xt[j][e] = e < n ? x0[(size_t)j * K + k + e] : 0.0f;
        GEMMA2__UNROLL for (i = 0; i < RR; i++) {
            __m256 wv;
            for (e = 0; e < 8; e++) wt[e] = e < n ? gemma2__w_at(a->w, (size_t)(r + i) * K + k + e) : 0.0f;
            wv = _mm256_loadu_ps(wt);
            GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xt[j]), acc[i][j]);
        }
    }
    GEMMA2__UNROLL for (j = 0; j < TT; j++) GEMMA2__UNROLL for (i = 0; i < RR; i++)
        a->y[(size_t)(t + j) * a->ldy + r + i] = gemma2__hsum_256(acc[i][j]);
}

/* Decode: 8 rows at once (8 sequential streams in flight, see gemma2__matvec_512), with the
   tile's arithmetic per row, zero-padded tail included. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 void gemma2__matvec_256(const gemma2__matmul_args *a, int r, const int R, const int bf16)
{
    const int K = a->w->cols;
    const size_t esz = bf16 ? 2 : 4;
    const char *w0 = (const char *)a->w->data + (size_t)r * (size_t)K * esz;
    __m256 acc[8];
    int i, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) {
        __m256 xv = _mm256_loadu_ps(a->x + k);
        GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = _mm256_fmadd_ps(gemma2__w8_256(w0 + (size_t)i * K * esz, bf16, k), xv, acc[i]);
    }
    if (k < K) {
        float xt[8], wt[8];
        int n = K - k, e;
        for (e = 0; e < 8; e++) xt[e] = e < n ? a->x[k + e] : 0.0f;
        GEMMA2__UNROLL for (i = 0; i < R; i++) {
            for (e = 0; e < 8; e++) wt[e] = e < n ? gemma2__w_at(a->w, (size_t)(r + i) * K + k + e) : 0.0f;
            acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(wt), _mm256_loadu_ps(xt), acc[i]);
        }
    }
    GEMMA2__UNROLL for (i = 0; i < R; i++) a->y[r + i] = gemma2__hsum_256(acc[i]);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 void gemma2__matmul_256_impl(const gemma2__matmul_args *a, int r0, int r1, const int bf16)
{
    int rb, t;
    if (a->T == 1) {
        int r = r0;
        for (; r + 8 <= r1; r += 8) gemma2__matvec_256(a, r, 8, bf16);
        for (; r < r1; r++) gemma2__matvec_256(a, r, 1, bf16);
        return;
    }
    for (rb = r0; rb < r1; rb += 16) {
        int re = GEMMA2__MIN(rb + 16, r1);
        for (t = 0; t + 3 <= a->T; t += 3) GEMMA2__ROWS_TILED(gemma2__tile_256, rb, re, t, 3, bf16);
        if (a->T - t == 2) GEMMA2__ROWS_TILED(gemma2__tile_256, rb, re, t, 2, bf16);
        else if (a->T - t == 1) GEMMA2__ROWS_TILED(gemma2__tile_256, rb, re, t, 1, bf16);
    }
}

static GEMMA2__T_AVX2 void gemma2__matmul_256_bf16w(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_256_impl(a, r0, r1, 1); }
static GEMMA2__T_AVX2 void gemma2__matmul_256_f32w(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_256_impl(a, r0, r1, 0); }


static GEMMA2__T_AVX2 float gemma2__dot_avx2(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    float s;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s = gemma2__hsum_256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static GEMMA2__T_AVX2 void gemma2__axpy_avx2(float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static GEMMA2__T_AVX2 void gemma2__rmsnorm_avx2(float *out, const float *x, const float *w1, int n, float eps)
{
    float scale = 1.0f / sqrtf(gemma2__dot_avx2(x, x, n) / (float)n + eps);
    __m256 sv = _mm256_set1_ps(scale);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), _mm256_loadu_ps(w1 + i)));
    for (; i < n; i++) out[i] = x[i] * scale * w1[i];
}

/* exp(x) for 8 lanes, as gemma2__exp_512 (the same clamps, +inf past ln(FLT_MAX), NaN kept). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 __m256 gemma2__exp_256(__m256 x)
{
    __m256 n, r, p, c = _mm256_min_ps(_mm256_set1_ps(88.37f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
    n = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), c);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    p = _mm256_set1_ps(1.3981999507e-3f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    p = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
    return _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.7228394f), _CMP_GT_OQ));
}

static GEMMA2__T_AVX2 void gemma2__gelu_mul_avx2(float *g, const float *u, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i);
        __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
        __m256 z2 = _mm256_mul_ps(_mm256_fmadd_ps(v3, _mm256_set1_ps(0.044715f), v), _mm256_set1_ps(-1.5957691216057308f));
        __m256 ge = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), gemma2__exp_256(z2)));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(ge, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = gemma2__gelu_tanh(g[i]) * u[i];
}

/* cap tanh(x / cap) as gemma2__softcap_512: the polynomial below |v| = 0.625, (1 - e) / (1 + e) above. */
static GEMMA2__T_AVX2 void gemma2__softcap_avx2(float *x, int n, float cap)
{
    __m256 c = _mm256_set1_ps(cap), inv = _mm256_set1_ps(1.0f / cap), one = _mm256_set1_ps(1.0f);
    __m256 signbit = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 av = _mm256_andnot_ps(signbit, _mm256_mul_ps(v, inv)), z = _mm256_mul_ps(av, av);
        __m256 e = gemma2__exp_256(_mm256_mul_ps(av, _mm256_set1_ps(-2.0f)));
        __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
        __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
        t = _mm256_blendv_ps(t, _mm256_fmadd_ps(_mm256_mul_ps(p, z), av, av), _mm256_cmp_ps(av, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
        _mm256_storeu_ps(x + i, _mm256_or_ps(_mm256_mul_ps(t, c), _mm256_and_ps(v, signbit)));
    }
    for (; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

static GEMMA2__T_AVX2 void gemma2__from_bf16_avx2(float *dst, const uint16_t *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i))), 16)));
    for (; i < n; i++) dst[i] = gemma2__bf16_to_f32(src[i]);
}

static GEMMA2__T_AVX2 void gemma2__to_bf16_avx2(uint16_t *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
        __m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
        r = _mm256_blendv_epi8(r, qn, nan);
        r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08); /* lanes 0 and 2 hold the 8 results */
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_castsi256_si128(r));
    }
    for (; i < n; i++) dst[i] = gemma2__f32_to_bf16(src[i]);
}

/* Softmax: max, then exp and sum, then scale (8 lanes; the few left over in scalar code). */
static GEMMA2__T_AVX2 void gemma2__softmax_avx2(float *x, int n)
{
    __m256 mv = _mm256_set1_ps(-INFINITY), sv = _mm256_setzero_ps(), b;
    float mx, sum;
    int i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    b = _mm256_max_ps(mv, _mm256_permute2f128_ps(mv, mv, 1));
    b = _mm256_max_ps(b, _mm256_shuffle_ps(b, b, 0x4e));
    b = _mm256_max_ps(b, _mm256_shuffle_ps(b, b, 0xb1));
    mx = _mm256_cvtss_f32(b);
    for (; i < n; i++) if (x[i] > mx) mx = x[i];
    mv = _mm256_set1_ps(mx);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = gemma2__exp_256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        sv = _mm256_add_ps(sv, e);
        _mm256_storeu_ps(x + i, e);
    }
    sum = gemma2__hsum_256(sv);
    for (; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    sv = _mm256_set1_ps(1.0f / sum);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
    for (; i < n; i++) x[i] *= 1.0f / sum;
}

/* RoPE, 8 pairs at a time (the scalar reference's operations, so the same bits). */
static GEMMA2__T_AVX2 void gemma2__rope_avx2(float *x, int n_heads, int hd, const float *cs)
{
    int h, i, half = hd / 2;
    for (h = 0; h < n_heads; h++, x += hd) {
        for (i = 0; i + 8 <= half; i += 8) {
            __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + half + i);
            __m256 co = _mm256_loadu_ps(cs + i), si = _mm256_loadu_ps(cs + half + i);
            _mm256_storeu_ps(x + i, _mm256_sub_ps(_mm256_mul_ps(a, co), _mm256_mul_ps(b, si)));
            _mm256_storeu_ps(x + half + i, _mm256_add_ps(_mm256_mul_ps(b, co), _mm256_mul_ps(a, si)));
        }
        for (; i < half; i++) {
            float a = x[i], b = x[i + half], co = cs[i], si = cs[half + i];
            x[i] = a * co - b * si;
            x[i + half] = b * co + a * si;
        }
    }
}

/* ---- Q8 and Q4 weights: integer dot products (AVX2; AVX-VNNI where the CPU has it) ----

   The reference products (gemma2__matmul_ref_q8, _q4) sum each output over its row's blocks,
   in order, in float32, of terms made from the block's exact integer dot product idot of 32
   weight quants and 32 activation quants (GEMMA2__PACK_Q8). These kernels compute the same
   integer dots and then exactly the reference's float operations in the same order, so their
   results are the reference's to the bit, whatever the tile, the thread split or the chunking.

   Integer dots. vpmaddubsw multiplies unsigned by signed bytes and adds adjacent products
   into int16 (saturating); vpmaddwd by ones adds adjacent int16 pairs into int32: each int32
   lane gets 4 products. Q4 quants (0..15) are the unsigned operand as they are: a pair is at
   most 2 x 15 x 127. Q8 weights are signed, so the sign trick: |w| as the unsigned operand
   and x with w's sign (vpsignb: -x where w < 0, 0 where w == 0) give the products w x
   exactly; a pair is at most 2 x 128 x 127 = 32512 < 32767 (|w| reads as 128 even for a
   stored -128; activation quants are within +-127), so vpmaddubsw never saturates. With
   AVX-VNNI, vpdpbusd (VEX) does both steps and adds into the lane without any int16 step,
   which also lets Q8 prefill use x + 128 as the unsigned operand (below).

   One token (decode, gemma2__qdec_*): 8 rows at once, each stream prefetched GEMMA2__PF bytes
   ahead once per 64 bytes (the streams of gemma2__matvec_256). Per block, each row's 32 quants
   meet the token's into 8 int32 lanes; 4 rows' vectors are summed across lanes together by two
   levels of vphaddd, and a cross-half add finishes the 8 rows' idots (integer, exact).

   Several tokens (gemma2__qtile_*, 8 rows x GEMMA2__Q256_TT tokens): those sums across lanes
   would cost more than the products, once per row and token. Instead each block of the 8
   rows is turned into column groups once (gemma2__qtrans_256: lane i of V[k] holds row i's
   quants 4k .. 4k+3), shared by the tile's tokens; each token then broadcasts its 4 quants of
   each group and the products accumulate in place: lane i ends holding row i's idot. Q4:
   (nibbles, x). Q8 with vpdpbusd: (x + 128, w) = idot + 128 sum(w), less 128 sum(w) made once
   per block from (128, w). Q8 without: (|w|, x with w's sign), |w| once per block. Measured
   on 2304 x 2304, 64 tokens, one core (Sapphire Rapids; the 8-row sums across lanes before):
   Q4 2.4x (VNNI) and 1.4x faster, Q8 1.3-1.4x faster; 8 tokens per tile beat 4 and 6.

   Float steps, 8 rows per register, lane by lane, as the reference writes them: dw * dx (the
   rows' fp16 block heads, d and for Q4 m, come in with one 32-bit gather), times (float)idot
   (exact: |idot| < 2^24), plus mw * sx for Q4, added to the row's sum. GCC in its GNU modes
   (its default) contracts a multiply and a dependent add into an FMA even across intrinsics,
   which rounds once where the reference rounds twice: every product goes through
   GEMMA2__NOFUSE_256, an empty asm that hides how the value was made (no instruction). Row
   tails take a tile of repeated rows (gemma2__qtile), token tails smaller tiles: every output
   gets the same lane-wise operations, so one token alone and in a tile give the same bits. */
#define GEMMA2__NOFUSE_256(v) __asm__("" : "+x"(v))
#define GEMMA2__Q256_TT 8 /* tokens per prefill tile (at least 4) */

#if (defined(__clang__) && !defined(__apple_build_version__) && __clang_major__ >= 12) || \
    (defined(__apple_build_version__) && __clang_major__ >= 13) || (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11)
#define GEMMA2__AVXVNNI 1
#define GEMMA2__T_AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
#endif

/* CPUID leaf 7 subleaf 1, EAX bit 4: AVX-VNNI (with AVX2, which the set already needs). */
static int gemma2__has_avxvnni(void)
{
    unsigned r[4];
    if (!(gemma2__x86_features() & GEMMA2__CPU_AVX2)) return 0;
    gemma2__cpuid(7, 0, r);
    if (r[0] < 1) return 0;
    gemma2__cpuid(7, 1, r);
    return (r[0] >> 4) & 1;
}

/* acc plus the products of unsigned u and signed s (32 bytes each), each int32 lane adding
   its own 4. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 __m256i gemma2__qacc_256(__m256i acc, __m256i u, __m256i s)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

#if defined(GEMMA2__AVXVNNI)
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVXVNNI __m256i gemma2__qacc_vnni(__m256i acc, __m256i u, __m256i s)
{
    return _mm256_dpbusd_avx_epi32(acc, u, s);
}
#endif

/* One row's block against a token's quants xv (decode): returns the unsigned operand (Q4: the
   32 nibbles; Q8: |w|) and sets the signed one (Q4: x; Q8: x with w's sign). The Q4 nibble
   bytes go to both halves; the upper half shifts right by 4 (within 64-bit lanes: the bits
   that come in from the next byte are masked off with the rest), and every byte keeps its low
   nibble: elements 0..15 | 16..31, the activations' order. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 __m256i gemma2__qrow_256(const uint8_t *blk, __m256i xv, __m256i *s, const int q4)
{
    if (q4) {
        __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(blk + 4)));
        *s = xv;
        return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(15));
    } else {
        __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)(blk + 2));
        *s = _mm256_sign_epi8(xv, w);
        return _mm256_abs_epi8(w);
    }
}

/* Block b of the tile's 8 rows as column groups: V[k] lane i holds row i's quants 4k .. 4k+3
   (Q8: int8 as stored; Q4: 0..15). Each register holds two rows (i in the low half, i + 4 in
   the high half), so a 4 x 4 transpose of 32-bit groups within the halves (8 unpacks) turns
   16 bytes of each of the 8 rows into 4 groups: Q8's 32 bytes take two; Q4's 16 bytes take
   one, whose low nibbles are groups 0-3 (elements 0..15) and high nibbles groups 4-7. */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 void gemma2__qtrans4_256(const uint8_t *p, const size_t *off, int o, __m256i *P)
{
    __m256i R[4], t0, t1, t2, t3;
    int i;
    GEMMA2__UNROLL for (i = 0; i < 4; i++)
        R[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(p + off[i] + o))),
                                       _mm_loadu_si128((const __m128i *)(const void *)(p + off[i + 4] + o)), 1);
    t0 = _mm256_unpacklo_epi32(R[0], R[1]); /* r0 g0, r1 g0, r0 g1, r1 g1 | the same for r4, r5 */
    t1 = _mm256_unpackhi_epi32(R[0], R[1]); /* groups 2, 3 */
    t2 = _mm256_unpacklo_epi32(R[2], R[3]);
    t3 = _mm256_unpackhi_epi32(R[2], R[3]);
    P[0] = _mm256_unpacklo_epi64(t0, t2); /* r0 g0, r1 g0, r2 g0, r3 g0 | r4 .. r7 g0 */
    P[1] = _mm256_unpackhi_epi64(t0, t2);
    P[2] = _mm256_unpacklo_epi64(t1, t3);
    P[3] = _mm256_unpackhi_epi64(t1, t3);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 void gemma2__qtrans_256(const uint8_t *p, const size_t *off, __m256i *V, const int q4)
{
    int k;
    if (q4) {
        gemma2__qtrans4_256(p, off, 4, V);
        GEMMA2__UNROLL for (k = 0; k < 4; k++) {
            V[k + 4] = _mm256_and_si256(_mm256_srli_epi16(V[k], 4), _mm256_set1_epi8(15));
            V[k] = _mm256_and_si256(V[k], _mm256_set1_epi8(15));
        }
    } else {
        gemma2__qtrans4_256(p, off, 2, V);
        gemma2__qtrans4_256(p, off, 18, V + 4);
    }
}

/* 4 bytes of a token's quants in every lane, broadcast from memory: a load, no shuffle (from
   a 4-byte integer, GCC merges neighbouring ones into one vector load and a shuffle each,
   on the port the transposes need). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 __m256i gemma2__qbcast_256(const uint8_t *q)
{
    return _mm256_castps_si256(_mm256_broadcast_ss((const float *)(const void *)q));
}

/* Block b's heads of the tile's 8 rows as floats: one 32-bit gather (Q8: d and two quants;
   Q4: d, m), the halves sorted into d0..d7 | m0..m7, each widened by vcvtph2ps (exact). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 void gemma2__qheads_256(const uint8_t *p, __m256i voff, __m256 *dw, __m256 *mw, const int q4)
{
    const __m256i sel = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    __m256i h = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(_mm256_i32gather_epi32((const int *)(const void *)p, voff, 1), sel), 0xd8);
    *dw = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    *mw = q4 ? _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)) : _mm256_setzero_ps();
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 __m256i gemma2__qvoff_256(const gemma2__qtile *c)
{
    return _mm256_setr_epi32((int)c->off[0], (int)c->off[1], (int)c->off[2], (int)c->off[3], (int)c->off[4], (int)c->off[5], (int)c->off[6], (int)c->off[7]);
}

/* One block's float steps for one token, 8 rows lane by lane, as the reference writes them:
   acc + ((dw * dx) * (float)idot [+ mw * sx]). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 __m256 gemma2__qstep_256(__m256 acc, __m256i idot, __m256 dw, __m256 mw, const float *xd, int nb, int b, const int q4)
{
    __m256 t1 = _mm256_mul_ps(_mm256_mul_ps(dw, _mm256_set1_ps(xd[b])), _mm256_cvtepi32_ps(idot));
    GEMMA2__NOFUSE_256(t1);
    if (q4) {
        __m256 t2 = _mm256_mul_ps(mw, _mm256_set1_ps(xd[nb + b]));
        GEMMA2__NOFUSE_256(t2);
        t1 = _mm256_add_ps(t1, t2);
    }
    return _mm256_add_ps(acc, t1);
}

GEMMA2__ALWAYS_INLINE GEMMA2__T_AVX2 void gemma2__qstore_256(const gemma2__matmul_args *a, int r, int R, int t, const __m256 *acc, const int TT)
{
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(R), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    int j;
    GEMMA2__UNROLL for (j = 0; j < TT; j++) {
        float *y = a->y + (size_t)(t + j) * (size_t)a->ldy + r;
        if (R == 8) _mm256_storeu_ps(y, acc[j]);
        else _mm256_maskstore_ps(y, mask, acc[j]);
    }
}

/* The decode step, the prefill tile and the product, instantiated once per integer dot (ACC:
   plain AVX2 or AVX-VNNI; a function built for a target with vpdpbusd cannot be inlined into
   one without it, so each gets its own copy of the same loops). X128: ACC takes x + 128 as
   its unsigned operand (vpdpbusd does; vpmaddubsw would saturate). */
#define GEMMA2__Q256_KERNELS(SFX, TARGET, ACC, X128)                                                                \
    GEMMA2__ALWAYS_INLINE TARGET void gemma2__qdec_##SFX(const gemma2__matmul_args *a, int r, int R, const int q4)   \
    {                                                                                                                \
        gemma2__qtile c;                                                                                             \
        __m256i voff;                                                                                                \
        __m256 acc = _mm256_setzero_ps(), dw, mw;                                                                    \
        int b, i;                                                                                                    \
        gemma2__qtile_begin(&c, a, r, R, 0, q4);                                                                     \
        voff = gemma2__qvoff_256(&c);                                                                                \
        for (b = 0; b < c.nb; b++) {                                                                                 \
            const uint8_t *p = c.w0 + (size_t)b * (size_t)c.bytes;                                                   \
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)(c.x0 + (size_t)b * 32));           \
            __m256i h[2], d01 = _mm256_setzero_si256();                                                              \
            if (((size_t)b * (size_t)c.bytes & 63) < (size_t)c.bytes) {                                              \
                GEMMA2__UNROLL for (i = 0; i < 8; i++) _mm_prefetch((const char *)(p + c.off[i]) + GEMMA2__PF, _MM_HINT_T0); \
            }                                                                                                        \
            GEMMA2__UNROLL for (i = 0; i < 8; i += 2) { /* rows i, i + 1 */                                          \
                __m256i s0, s1, u0 = gemma2__qrow_256(p + c.off[i], xv, &s0, q4), u1 = gemma2__qrow_256(p + c.off[i + 1], xv, &s1, q4); \
                __m256i d = _mm256_hadd_epi32(ACC(_mm256_setzero_si256(), u0, s0), ACC(_mm256_setzero_si256(), u1, s1)); \
                if (i % 4 == 0) d01 = d;                                                                             \
                else h[i / 4] = _mm256_hadd_epi32(d01, d); /* rows i-2 .. i+1 over lanes 0-3 | over lanes 4-7 */     \
            }                                                                                                        \
            gemma2__qheads_256(p, voff, &dw, &mw, q4);                                                               \
            acc = gemma2__qstep_256(acc, _mm256_add_epi32(_mm256_permute2x128_si256(h[0], h[1], 0x20), _mm256_permute2x128_si256(h[0], h[1], 0x31)), \
                                    dw, mw, gemma2__qtile_xd(&c, 0), c.nb, b, q4);                                   \
        }                                                                                                            \
        gemma2__qstore_256(a, r, R, 0, &acc, 1);                                                                     \
    }                                                                                                                \
                                                                                                                     \
    GEMMA2__ALWAYS_INLINE TARGET void gemma2__qtile_##SFX(const gemma2__matmul_args *a, int r, int R, int t, const int TT, \
                                                          const int q4)                                              \
    {                                                                                                                \
        gemma2__qtile c;                                                                                             \
        __m256i voff;                                                                                                \
        __m256 acc[GEMMA2__Q256_TT], dw, mw;                                                                         \
        int b, j, k;                                                                                                 \
        gemma2__qtile_begin(&c, a, r, R, t, q4);                                                                     \
        voff = gemma2__qvoff_256(&c);                                                                                \
        GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[j] = _mm256_setzero_ps();                                        \
        for (b = 0; b < c.nb; b++) {                                                                                 \
            const uint8_t *p = c.w0 + (size_t)b * (size_t)c.bytes;                                                   \
            __m256i V[8], A[8], wsum = _mm256_setzero_si256();                                                       \
            gemma2__qtrans_256(p, c.off, V, q4);                                                                     \
            if (!q4 && X128) { /* 128 sum(w) per row */                                                              \
                GEMMA2__UNROLL for (k = 0; k < 8; k++) wsum = ACC(wsum, _mm256_set1_epi8(-128), V[k]);               \
            } else if (!q4) { /* |w| */                                                                              \
                GEMMA2__UNROLL for (k = 0; k < 8; k++) A[k] = _mm256_abs_epi8(V[k]);                                 \
            }                                                                                                        \
            gemma2__qheads_256(p, voff, &dw, &mw, q4);                                                               \
            GEMMA2__UNROLL for (j = 0; j < TT; j++) {                                                                \
                const uint8_t *xq = c.x0 + (size_t)j * c.tb + (size_t)b * 32;                                        \
                __m256i idot = _mm256_setzero_si256();                                                               \
                if (q4) {                                                                                            \
                    GEMMA2__UNROLL for (k = 0; k < 8; k++) idot = ACC(idot, V[k], gemma2__qbcast_256(xq + 4 * k));   \
                } else if (X128) {                                                                                   \
                    GEMMA2__UNROLL for (k = 0; k < 8; k++)                                                           \
                        idot = ACC(idot, _mm256_xor_si256(gemma2__qbcast_256(xq + 4 * k), _mm256_set1_epi8(-128)), V[k]); \
                    idot = _mm256_sub_epi32(idot, wsum);                                                             \
                } else {                                                                                             \
                    GEMMA2__UNROLL for (k = 0; k < 8; k++)                                                           \
                        idot = ACC(idot, A[k], _mm256_sign_epi8(gemma2__qbcast_256(xq + 4 * k), V[k]));               \
                }                                                                                                    \
                acc[j] = gemma2__qstep_256(acc[j], idot, dw, mw, gemma2__qtile_xd(&c, j), c.nb, b, q4);              \
            }                                                                                                        \
        }                                                                                                            \
        gemma2__qstore_256(a, r, R, t, acc, TT);                                                                     \
    }                                                                                                                \
                                                                                                                     \
    GEMMA2__ALWAYS_INLINE TARGET void gemma2__qmatmul_##SFX(const gemma2__matmul_args *a, int r0, int r1, const int q4) \
    {                                                                                                                \
        int r, t;                                                                                                    \
        if (a->xp_kind != GEMMA2__PACK_Q8) { /* the reference quantizes x itself: the same results */               \
            if (q4) gemma2__matmul_ref_q4(a, r0, r1);                                                                \
            else gemma2__matmul_ref_q8(a, r0, r1);                                                                   \
            return;                                                                                                  \
        }                                                                                                            \
        for (r = r0; r < r1; r += 8) {                                                                               \
            int R = GEMMA2__MIN(8, r1 - r);                                                                          \
            if (a->T == 1) {                                                                                         \
                gemma2__qdec_##SFX(a, r, R, q4);                                                                     \
                continue;                                                                                            \
            }                                                                                                        \
            for (t = 0; t + GEMMA2__Q256_TT <= a->T; t += GEMMA2__Q256_TT) gemma2__qtile_##SFX(a, r, R, t, GEMMA2__Q256_TT, q4); \
            for (; t + 4 <= a->T; t += 4) gemma2__qtile_##SFX(a, r, R, t, 4, q4);                                   \
            switch (a->T - t) {                                                                                      \
            case 1: gemma2__qtile_##SFX(a, r, R, t, 1, q4); break;                                                   \
            case 2: gemma2__qtile_##SFX(a, r, R, t, 2, q4); break;                                                   \
            case 3: gemma2__qtile_##SFX(a, r, R, t, 3, q4); break;                                                   \
            default: break;                                                                                          \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
                                                                                                                     \
    static TARGET void gemma2__matmul_##SFX##_q8(const gemma2__matmul_args *a, int r0, int r1) { gemma2__qmatmul_##SFX(a, r0, r1, 0); } \
    static TARGET void gemma2__matmul_##SFX##_q4(const gemma2__matmul_args *a, int r0, int r1) { gemma2__qmatmul_##SFX(a, r0, r1, 1); }

GEMMA2__Q256_KERNELS(avx2, GEMMA2__T_AVX2, gemma2__qacc_256, 0)
#if defined(GEMMA2__AVXVNNI)
GEMMA2__Q256_KERNELS(avxvnni, GEMMA2__T_AVXVNNI, gemma2__qacc_vnni, 1)
#endif

/* Q8 and Q4 products on integer dots: vpdpbusd if vnni (and the build has it), else
   vpmaddubsw + vpmaddwd. The tests call this with vnni 0 to run the other path too. */
static void gemma2__kernels_avx2_q(gemma2__kernels *k, int vnni)
{
    k->matmul[GEMMA2__WF_Q8] = gemma2__matmul_avx2_q8;
    k->matmul[GEMMA2__WF_Q4] = gemma2__matmul_avx2_q4;
#if defined(GEMMA2__AVXVNNI)
    if (vnni) {
        k->matmul[GEMMA2__WF_Q8] = gemma2__matmul_avxvnni_q8;
        k->matmul[GEMMA2__WF_Q4] = gemma2__matmul_avxvnni_q4;
    }
#else
    (void)vnni;
#endif
}

/* The layout the products want: Q8 activations for Q8 and Q4 weights; F32 and BF16 weights
   read x as it is. */
static int gemma2__pack_kind_avx2(const gemma2__kernels *k, int format, int T, int K, int compute_bf16, int lone)
{
    (void)T; (void)K; (void)compute_bf16; (void)lone;
    return (format == GEMMA2__WF_Q8 || format == GEMMA2__WF_Q4) && k->matmul[format] ? GEMMA2__PACK_Q8 : GEMMA2__PACK_NONE;
}

static void gemma2__kernels_init_avx2(gemma2__kernels *k)
{
    gemma2__kernels_init_scalar(k);
    k->name = "avx2";
    k->id = GEMMA2_KERNELS_AVX2;
    k->matmul[GEMMA2__WF_F32] = gemma2__matmul_256_f32w;
    k->matmul[GEMMA2__WF_BF16] = gemma2__matmul_256_bf16w;
    gemma2__kernels_avx2_q(k, gemma2__has_avxvnni());
    k->pack_kind = gemma2__pack_kind_avx2;
    k->pack = gemma2__pack_ref;
    k->dot = gemma2__dot_avx2;
    k->axpy = gemma2__axpy_avx2;
    k->rmsnorm = gemma2__rmsnorm_avx2;
    k->gelu_mul = gemma2__gelu_mul_avx2;
    k->softcap = gemma2__softcap_avx2;
    k->softmax = gemma2__softmax_avx2;
    k->rope = gemma2__rope_avx2;
    k->to_bf16 = gemma2__to_bf16_avx2;
    k->from_bf16 = gemma2__from_bf16_avx2;
}

#endif /* GEMMA2__X86 */

/* ======================= ARM64 NEON =======================
   Same design with 4 lanes and 32 registers: decode walks 8 rows at once; the prefill tile
   is 4 rows x 4 tokens (16 accumulators + 4 activation vectors + 1 weight vector). bf16 is
   widened by vshll_n_u16(.., 16), the exact "shift into the top half". exp (for GELU,
   soft-capping and softmax) is the AVX-512 code's polynomial, 4 lanes wide. */
#if !defined(GEMMA2_NO_SIMD) && defined(__aarch64__)
#define GEMMA2__NEON 1
#include <arm_neon.h>

GEMMA2__ALWAYS_INLINE float32x4_t gemma2__w4_neon(const void *row, int bf16, int k)
{
    if (bf16) return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)row + k), 16));
    return vld1q_f32((const float *)row + k);
}

GEMMA2__ALWAYS_INLINE void gemma2__matvec_neon(const gemma2__matmul_args *a, int r, const int R, const int bf16)
{
    const int K = a->w->cols;
    const size_t esz = bf16 ? 2 : 4;
    const char *w0 = (const char *)a->w->data + (size_t)r * (size_t)K * esz;
    float32x4_t acc[8];
    int i, k = 0;
    GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = vdupq_n_f32(0.0f);
    for (; k + 4 <= K; k += 4) {
        float32x4_t xv = vld1q_f32(a->x + k);
        GEMMA2__UNROLL for (i = 0; i < R; i++) acc[i] = vfmaq_f32(acc[i], gemma2__w4_neon(w0 + (size_t)i * K * esz, bf16, k), xv);
    }
    GEMMA2__UNROLL for (i = 0; i < R; i++) {
        float sum = vaddvq_f32(acc[i]);
        int e;
        for (e = k; e < K; e++) sum += gemma2__w_at(a->w, (size_t)(r + i) * K + e) * a->x[e];
        a->y[r + i] = sum;
    }
}

GEMMA2__ALWAYS_INLINE void gemma2__tile_neon(const gemma2__matmul_args *a, int r, int t, const int RR, const int TT, const int bf16)
{
    const int K = a->w->cols;
    const size_t esz = bf16 ? 2 : 4;
    const char *w0 = (const char *)a->w->data + (size_t)r * (size_t)K * esz;
    const float *x0 = a->x + (size_t)t * (size_t)K;
    float32x4_t acc[4][4];
    int i, j, k = 0;
    GEMMA2__UNROLL for (i = 0; i < RR; i++) GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = vdupq_n_f32(0.0f);
    for (; k + 4 <= K; k += 4) {
        float32x4_t xv[4];
        GEMMA2__UNROLL for (j = 0; j < TT; j++) xv[j] = vld1q_f32(x0 + (size_t)j * K + k);
        GEMMA2__UNROLL for (i = 0; i < RR; i++) {
            float32x4_t wv = gemma2__w4_neon(w0 + (size_t)i * K * esz, bf16, k);
            GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = vfmaq_f32(acc[i][j], wv, xv[j]);
        }
    }
    GEMMA2__UNROLL for (j = 0; j < TT; j++) GEMMA2__UNROLL for (i = 0; i < RR; i++) {
        float sum = vaddvq_f32(acc[i][j]);
        int e;
        for (e = k; e < K; e++) sum += gemma2__w_at(a->w, (size_t)(r + i) * K + e) * x0[(size_t)j * K + e];
        a->y[(size_t)(t + j) * a->ldy + r + i] = sum;
    }
}

GEMMA2__ALWAYS_INLINE void gemma2__matmul_neon_impl(const gemma2__matmul_args *a, int r0, int r1, const int bf16)
{
    int rb, t, r;
    if (a->T == 1) {
        for (r = r0; r + 8 <= r1; r += 8) gemma2__matvec_neon(a, r, 8, bf16);
        for (; r < r1; r++) gemma2__matvec_neon(a, r, 1, bf16);
        return;
    }
    for (rb = r0; rb < r1; rb += 16) {
        int re = GEMMA2__MIN(rb + 16, r1);
        for (t = 0; t + 4 <= a->T; t += 4) GEMMA2__ROWS_TILED(gemma2__tile_neon, rb, re, t, 4, bf16);
        if (a->T - t == 3) GEMMA2__ROWS_TILED(gemma2__tile_neon, rb, re, t, 3, bf16);
        else if (a->T - t == 2) GEMMA2__ROWS_TILED(gemma2__tile_neon, rb, re, t, 2, bf16);
        else if (a->T - t == 1) GEMMA2__ROWS_TILED(gemma2__tile_neon, rb, re, t, 1, bf16);
    }
}

static void gemma2__matmul_neon_f32(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_neon_impl(a, r0, r1, 0); }
static void gemma2__matmul_neon_bf16(const gemma2__matmul_args *a, int r0, int r1) { gemma2__matmul_neon_impl(a, r0, r1, 1); }

static float gemma2__dot_neon(const float *a, const float *b, int n)
{
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
    float s;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void gemma2__axpy_neon(float *y, float a, const float *x, int n)
{
    float32x4_t av = vdupq_n_f32(a);
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), av, vld1q_f32(x + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static void gemma2__rmsnorm_neon(float *out, const float *x, const float *w1, int n, float eps)
{
    float scale = 1.0f / sqrtf(gemma2__dot_neon(x, x, n) / (float)n + eps);
    float32x4_t sv = vdupq_n_f32(scale);
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vmulq_f32(vmulq_f32(vld1q_f32(x + i), sv), vld1q_f32(w1 + i)));
    for (; i < n; i++) out[i] = x[i] * scale * w1[i];
}

static void gemma2__from_bf16_neon(float *dst, const uint16_t *src, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(src + i), 16)));
    for (; i < n; i++) dst[i] = gemma2__bf16_to_f32(src[i]);
}

static void gemma2__to_bf16_neon(uint16_t *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32x4_t u = vreinterpretq_u32_f32(vld1q_f32(src + i));
        uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
        uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff))), 16);
        uint32x4_t nan = vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fffffff)), vdupq_n_u32(0x7f800000));
        r = vbslq_u32(nan, vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40)), r);
        vst1_u16(dst + i, vmovn_u32(r));
    }
    for (; i < n; i++) dst[i] = gemma2__f32_to_bf16(src[i]);
}

/* exp(x) for 4 lanes: the same reduction, polynomial, clamps and +inf past ln(FLT_MAX) as
   gemma2__exp_512 (ARM's max and min return NaN when either operand is NaN). */
GEMMA2__ALWAYS_INLINE float32x4_t gemma2__exp_neon(float32x4_t x)
{
    float32x4_t n, r, p, c = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(88.37f));
    n = vrndnq_f32(vmulq_f32(c, vdupq_n_f32(1.44269504088896341f)));
    r = vfmsq_f32(c, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    p = vdupq_n_f32(1.3981999507e-3f);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    p = vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), vshlq_n_s32(vcvtnq_s32_f32(n), 23)));
    return vbslq_f32(vcgtq_f32(x, vdupq_n_f32(88.7228394f)), vdupq_n_f32(INFINITY), p);
}

/* GELU (tanh form) as u / (1 + exp(-2z)), as in gemma2__gelu_512. */
static void gemma2__gelu_mul_neon(float *g, const float *u, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(g + i);
        float32x4_t v3 = vmulq_f32(vmulq_f32(v, v), v);
        float32x4_t z2 = vmulq_f32(vfmaq_f32(v, v3, vdupq_n_f32(0.044715f)), vdupq_n_f32(-1.5957691216057308f));
        float32x4_t ge = vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), gemma2__exp_neon(z2)));
        vst1q_f32(g + i, vmulq_f32(ge, vld1q_f32(u + i)));
    }
    for (; i < n; i++) g[i] = gemma2__gelu_tanh(g[i]) * u[i];
}

/* cap tanh(x / cap) as gemma2__softcap_512: the polynomial below |v| = 0.625, (1 - e) / (1 + e) above. */
static void gemma2__softcap_neon(float *x, int n, float cap)
{
    const float32x4_t c = vdupq_n_f32(cap), inv = vdupq_n_f32(1.0f / cap), one = vdupq_n_f32(1.0f);
    const uint32x4_t signbit = vdupq_n_u32(0x80000000u);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        float32x4_t av = vabsq_f32(vmulq_f32(v, inv)), z = vmulq_f32(av, av);
        float32x4_t e = gemma2__exp_neon(vmulq_f32(av, vdupq_n_f32(-2.0f)));
        float32x4_t t = vdivq_f32(vsubq_f32(one, e), vaddq_f32(one, e));
        float32x4_t p = vdupq_n_f32(-5.70498872745e-3f);
        p = vfmaq_f32(vdupq_n_f32(2.06390887954e-2f), p, z);
        p = vfmaq_f32(vdupq_n_f32(-5.37397155531e-2f), p, z);
        p = vfmaq_f32(vdupq_n_f32(1.33314422036e-1f), p, z);
        p = vfmaq_f32(vdupq_n_f32(-3.33332819422e-1f), p, z);
        t = vbslq_f32(vcltq_f32(av, vdupq_n_f32(0.625f)), vfmaq_f32(av, vmulq_f32(p, z), av), t);
        uint32x4_t r = vorrq_u32(vreinterpretq_u32_f32(vmulq_f32(t, c)), vandq_u32(vreinterpretq_u32_f32(v), signbit));
        vst1q_f32(x + i, vreinterpretq_f32_u32(r));
    }
    for (; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

static void gemma2__softmax_neon(float *x, int n)
{
    float32x4_t mv = vdupq_n_f32(-INFINITY), sv = vdupq_n_f32(0.0f);
    float mx, sum;
    int i = 0;
    for (; i + 4 <= n; i += 4) mv = vmaxq_f32(mv, vld1q_f32(x + i));
    mx = vmaxvq_f32(mv);
    for (; i < n; i++) if (x[i] > mx) mx = x[i];
    mv = vdupq_n_f32(mx);
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t e = gemma2__exp_neon(vsubq_f32(vld1q_f32(x + i), mv));
        sv = vaddq_f32(sv, e);
        vst1q_f32(x + i, e);
    }
    sum = vaddvq_f32(sv);
    for (; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    sv = vdupq_n_f32(1.0f / sum);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), sv));
    for (; i < n; i++) x[i] *= 1.0f / sum;
}

/* RoPE, 4 pairs at a time (the scalar reference's operations: vmulq/vsubq, never fused). */
static void gemma2__rope_neon(float *x, int n_heads, int hd, const float *cs)
{
    int h, i, half = hd / 2;
    for (h = 0; h < n_heads; h++, x += hd) {
        for (i = 0; i + 4 <= half; i += 4) {
            float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + half + i);
            float32x4_t co = vld1q_f32(cs + i), si = vld1q_f32(cs + half + i);
            vst1q_f32(x + i, vsubq_f32(vmulq_f32(a, co), vmulq_f32(b, si)));
            vst1q_f32(x + half + i, vaddq_f32(vmulq_f32(b, co), vmulq_f32(a, si)));
        }
        for (; i < half; i++) {
            float a = x[i], b = x[i + half], co = cs[i], si = cs[half + i];
            x[i] = a * co - b * si;
            x[i + half] = b * co + a * si;
        }
    }
}

/* ---- Q8 and Q4 weights: integer dot products (sdot with FEAT_DotProd, else widening
   multiplies) ----
   The reference's integer dots and float steps exactly, as the AVX2 kernels (see there), so
   the results are its bits. Per row and block, an int32x4 whose lanes sum to idot: sdot (4
   products into each lane, two per block), or without it smull + smlal2 (8 products, summed
   in pairs into int16) and sadalp (pairs of those into int32). The int16 pair sums cannot
   wrap: |w| <= 128 and |x| <= 127 (activation quants; Q4 quants are 0..15, which fit int8
   as they are), so a pair is at most 2 x 128 x 127 = 32512. Then 4 rows' vectors become one
   vector of their 4 idots (two levels of addp, exact), and the float steps run 4 rows per
   register, lane by lane: dw * dx (the rows' fp16 block heads loaded lane by lane, widened
   by fcvtl, exact), times (float)idot, plus mw * sx for Q4, added to the row's sum.
   GEMMA2__NOFUSE_NEON keeps each product rounded (GCC's GNU modes would otherwise contract
   vmulq + vaddq into fmla, one rounding where the reference has two).
   One token: 8 rows at once (8 streams). Several: tiles of 4 rows x 4 tokens (16 int32
   accumulators, 8 activation and 2 weight registers), each weight block loaded once for 4
   tokens. Row tails repeat the last row (gemma2__qtile), token tails take smaller tiles. */
#define GEMMA2__NOFUSE_NEON(v) __asm__("" : "+w"(v))

#if defined(__ARM_FEATURE_DOTPROD)
#define GEMMA2__NEON_DOT 1
#define GEMMA2__T_NEONDOT
#elif defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10 && defined(__linux__)
#define GEMMA2__NEON_DOT 2
#define GEMMA2__T_NEONDOT __attribute__((target("arch=armv8.2-a+dotprod")))
#include <sys/auxv.h>
#endif

static int gemma2__neon_has_dotprod(void)
{
#if defined(GEMMA2__NEON_DOT) && GEMMA2__NEON_DOT == 1
    return 1;
#elif defined(GEMMA2__NEON_DOT)
    return (getauxval(AT_HWCAP) & (1ul << 20)) != 0; /* HWCAP_ASIMDDP */
#else
    return 0;
#endif
}

/* A row's block quants as two int8x16: elements 0..15 and 16..31 (Q4: the low and the high
   nibbles of its 16 bytes). */
GEMMA2__ALWAYS_INLINE void gemma2__qrow_neon(const uint8_t *blk, int8x16_t *w, const int q4)
{
    if (q4) {
        uint8x16_t v = vld1q_u8(blk + 4);
        w[0] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(15)));
        w[1] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    } else {
        w[0] = vld1q_s8((const int8_t *)(blk + 2));
        w[1] = vld1q_s8((const int8_t *)(blk + 18));
    }
}

GEMMA2__ALWAYS_INLINE int32x4_t gemma2__qdot_neon(const int8x16_t *w, const int8x16_t *x)
{
    int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w[0]), vget_low_s8(x[0])), w[0], x[0]);
    int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w[1]), vget_low_s8(x[1])), w[1], x[1]);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

#if defined(GEMMA2__NEON_DOT)
GEMMA2__ALWAYS_INLINE GEMMA2__T_NEONDOT int32x4_t gemma2__qdot_sdot(const int8x16_t *w, const int8x16_t *x)
{
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w[0], x[0]), w[1], x[1]);
}
#endif

/* The end of block b for rows 4g..4g+3 of the tile: d[j][i] is row i's dot vector for token
   j; acc[j][g] (the 4 rows' sums) takes the reference's float steps. */
GEMMA2__ALWAYS_INLINE void gemma2__qblock_neon(const gemma2__qtile *c, int b, const uint8_t *p, int g, int32x4_t (*d)[8], float32x4_t (*acc)[2],
                                               const int TT, const int q4)
{
    uint32x4_t h = vdupq_n_u32(0);
    uint32_t v;
    float32x4_t dw, mw = vdupq_n_f32(0.0f);
    int j;
    /* the 4 block heads: Q8 d (and two quants), Q4 d and m */
    memcpy(&v, p + c->off[4 * g], 4); h = vsetq_lane_u32(v, h, 0);
    memcpy(&v, p + c->off[4 * g + 1], 4); h = vsetq_lane_u32(v, h, 1);
    memcpy(&v, p + c->off[4 * g + 2], 4); h = vsetq_lane_u32(v, h, 2);
    memcpy(&v, p + c->off[4 * g + 3], 4); h = vsetq_lane_u32(v, h, 3);
    dw = vcvt_f32_f16(vreinterpret_f16_u16(vmovn_u32(h)));
    if (q4) mw = vcvt_f32_f16(vreinterpret_f16_u16(vshrn_n_u32(h, 16)));
    GEMMA2__UNROLL for (j = 0; j < TT; j++) {
        const float *xd = gemma2__qtile_xd(c, j);
        int32x4_t dots = vpaddq_s32(vpaddq_s32(d[j][4 * g], d[j][4 * g + 1]), vpaddq_s32(d[j][4 * g + 2], d[j][4 * g + 3]));
        float32x4_t t1 = vmulq_f32(vmulq_n_f32(dw, xd[b]), vcvtq_f32_s32(dots));
        GEMMA2__NOFUSE_NEON(t1);
        if (q4) {
            float32x4_t t2 = vmulq_n_f32(mw, xd[c->nb + b]);
            GEMMA2__NOFUSE_NEON(t2);
            t1 = vaddq_f32(t1, t2);
        }
        acc[j][g] = vaddq_f32(acc[j][g], t1);
    }
}

GEMMA2__ALWAYS_INLINE void gemma2__qstore_neon(const gemma2__matmul_args *a, int r, int R, int t, float32x4_t (*acc)[2], const int RR, const int TT)
{
    int j, g;
    GEMMA2__UNROLL for (j = 0; j < TT; j++) GEMMA2__UNROLL for (g = 0; g < RR / 4; g++) {
        float *y = a->y + (size_t)(t + j) * (size_t)a->ldy + r + 4 * g;
        if (R >= 4 * g + 4) vst1q_f32(y, acc[j][g]);
        else if (R > 4 * g) {
            float tmp[4];
            vst1q_f32(tmp, acc[j][g]);
            memcpy(y, tmp, (size_t)(R - 4 * g) * sizeof(float));
        }
    }
}

/* The tile (RR = 4 or 8 rows, R of them real, x TT <= 4 tokens) and the product, once per
   integer dot: a function built for FEAT_DotProd cannot be inlined into one without it. */
#define GEMMA2__QNEON_KERNELS(SFX, TARGET, DOT)                                                                     \
    GEMMA2__ALWAYS_INLINE TARGET void gemma2__qtile_##SFX(const gemma2__matmul_args *a, int r, int R, int t, const int RR, \
                                                          const int TT, const int q4)                                \
    {                                                                                                                \
        gemma2__qtile c;                                                                                             \
        float32x4_t acc[4][2];                                                                                       \
        int b, g, i, j;                                                                                              \
        gemma2__qtile_begin(&c, a, r, R, t, q4);                                                                     \
        GEMMA2__UNROLL for (j = 0; j < TT; j++) GEMMA2__UNROLL for (g = 0; g < RR / 4; g++) acc[j][g] = vdupq_n_f32(0.0f); \
        for (b = 0; b < c.nb; b++) {                                                                                 \
            const uint8_t *p = c.w0 + (size_t)b * (size_t)c.bytes;                                                   \
            int8x16_t xv[4][2];                                                                                      \
            int32x4_t d[4][8];                                                                                       \
            GEMMA2__UNROLL for (j = 0; j < TT; j++) {                                                                \
                const int8_t *xq = (const int8_t *)(c.x0 + (size_t)j * c.tb + (size_t)b * 32);                      \
                xv[j][0] = vld1q_s8(xq);                                                                             \
                xv[j][1] = vld1q_s8(xq + 16);                                                                        \
            }                                                                                                        \
            GEMMA2__UNROLL for (i = 0; i < RR; i++) {                                                                \
                int8x16_t w[2];                                                                                      \
                gemma2__qrow_neon(p + c.off[i], w, q4);                                                              \
                GEMMA2__UNROLL for (j = 0; j < TT; j++) d[j][i] = DOT(w, xv[j]);                                     \
            }                                                                                                        \
            GEMMA2__UNROLL for (g = 0; g < RR / 4; g++) gemma2__qblock_neon(&c, b, p, g, d, acc, TT, q4);            \
        }                                                                                                            \
        gemma2__qstore_neon(a, r, R, t, acc, RR, TT);                                                                \
    }                                                                                                                \
                                                                                                                     \
    GEMMA2__ALWAYS_INLINE TARGET void gemma2__qmatmul_##SFX(const gemma2__matmul_args *a, int r0, int r1, const int q4) \
    {                                                                                                                \
        int r, t;                                                                                                    \
        if (a->xp_kind != GEMMA2__PACK_Q8) { /* the reference quantizes x itself: the same results */               \
            if (q4) gemma2__matmul_ref_q4(a, r0, r1);                                                                \
            else gemma2__matmul_ref_q8(a, r0, r1);                                                                   \
            return;                                                                                                  \
        }                                                                                                            \
        if (a->T == 1) {                                                                                             \
            for (r = r0; r < r1; r += 8) gemma2__qtile_##SFX(a, r, GEMMA2__MIN(8, r1 - r), 0, 8, 1, q4);             \
            return;                                                                                                  \
        }                                                                                                            \
        for (r = r0; r < r1; r += 4) {                                                                               \
            int R = GEMMA2__MIN(4, r1 - r);                                                                          \
            for (t = 0; t + 4 <= a->T; t += 4) gemma2__qtile_##SFX(a, r, R, t, 4, 4, q4);                            \
            if (a->T - t == 3) gemma2__qtile_##SFX(a, r, R, t, 4, 3, q4);                                            \
            else if (a->T - t == 2) gemma2__qtile_##SFX(a, r, R, t, 4, 2, q4);                                       \
            else if (a->T - t == 1) gemma2__qtile_##SFX(a, r, R, t, 4, 1, q4);                                       \
        }                                                                                                            \
    }                                                                                                                \
                                                                                                                     \
    static TARGET void gemma2__matmul_##SFX##_q8(const gemma2__matmul_args *a, int r0, int r1) { gemma2__qmatmul_##SFX(a, r0, r1, 0); } \
    static TARGET void gemma2__matmul_##SFX##_q4(const gemma2__matmul_args *a, int r0, int r1) { gemma2__qmatmul_##SFX(a, r0, r1, 1); }

GEMMA2__QNEON_KERNELS(neon, , gemma2__qdot_neon)
#if defined(GEMMA2__NEON_DOT)
GEMMA2__QNEON_KERNELS(sdot, GEMMA2__T_NEONDOT, gemma2__qdot_sdot)
#endif

/* Q8 and Q4 products on integer dots: sdot if dot (and the build has it), else widening
   multiplies. Both NEON sets; the tests call this with dot 0 to run the other path too. */
static void gemma2__kernels_neon_q(gemma2__kernels *k, int dot)
{
    k->matmul[GEMMA2__WF_Q8] = gemma2__matmul_neon_q8;
    k->matmul[GEMMA2__WF_Q4] = gemma2__matmul_neon_q4;
#if defined(GEMMA2__NEON_DOT)
    if (dot) {
        k->matmul[GEMMA2__WF_Q8] = gemma2__matmul_sdot_q8;
        k->matmul[GEMMA2__WF_Q4] = gemma2__matmul_sdot_q4;
    }
#else
    (void)dot;
#endif
}

/* Q8 activations for Q8 and Q4 weights; F32 and BF16 weights read x as it is. */
static int gemma2__pack_kind_neon(const gemma2__kernels *k, int format, int T, int K, int compute_bf16, int lone)
{
    (void)T; (void)K; (void)compute_bf16; (void)lone;
    return (format == GEMMA2__WF_Q8 || format == GEMMA2__WF_Q4) && k->matmul[format] ? GEMMA2__PACK_Q8 : GEMMA2__PACK_NONE;
}

static void gemma2__kernels_init_neon(gemma2__kernels *k)
{
    gemma2__kernels_init_scalar(k);
    k->name = "neon";
    k->id = GEMMA2_KERNELS_NEON;
    k->matmul[GEMMA2__WF_F32] = gemma2__matmul_neon_f32;
    k->matmul[GEMMA2__WF_BF16] = gemma2__matmul_neon_bf16;
    gemma2__kernels_neon_q(k, gemma2__neon_has_dotprod());
    k->pack_kind = gemma2__pack_kind_neon;
    k->pack = gemma2__pack_ref;
    k->dot = gemma2__dot_neon;
    k->axpy = gemma2__axpy_neon;
    k->rmsnorm = gemma2__rmsnorm_neon;
    k->gelu_mul = gemma2__gelu_mul_neon;
    k->softcap = gemma2__softcap_neon;
    k->softmax = gemma2__softmax_neon;
    k->rope = gemma2__rope_neon;
    k->to_bf16 = gemma2__to_bf16_neon;
    k->from_bf16 = gemma2__from_bf16_neon;
}

/* ---- ARMv8.6 BF16 (FEAT_BF16): BFDOT for GEMMA2_COMPUTE_BF16 ----
   BFDOT multiplies 4 pairs of bf16 numbers per instruction and adds each pair's two products
   into one float lane: twice the multiply-adds of an FMA on widened weights, as vdpbf16ps
   does on x86. Built where the compiler targets the feature (-march=armv8.6-a, Apple M2...) or,
   with GCC on Linux, per function and used when the kernel reports HWCAP2_BF16 (Graviton 3,
   Neoverse V1/N2; qemu's default CPU). Every output is one lane-wise sum over the columns in
   the same order whatever the tile, so a token's results do not depend on the call's other
   tokens. The columns past the last multiple of 8 go through one zero-padded block. */
#if defined(__ARM_FEATURE_BF16_VECTOR_ARITHMETIC)
#define GEMMA2__NEON_BF16 1
#define GEMMA2__T_NEONBF16
#elif defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10 && defined(__linux__)
#define GEMMA2__NEON_BF16 2
#define GEMMA2__T_NEONBF16 __attribute__((target("arch=armv8.2-a+bf16")))
#include <sys/auxv.h>
#endif

#if defined(GEMMA2__NEON_BF16)
static int gemma2__neon_has_bf16(void)
{
#if GEMMA2__NEON_BF16 == 1
    return 1;
#else
    return (getauxval(AT_HWCAP2) & (1ul << 14)) != 0; /* HWCAP2_BF16 */
#endif
}

/* RR rows x TT tokens of outputs (RR x TT <= 16 accumulators; 8 x 1 for decode). */
GEMMA2__ALWAYS_INLINE GEMMA2__T_NEONBF16 void gemma2__tile_neonbf(const gemma2__matmul_args *a, int r, int t, const int RR, const int TT)
{
    const int K = a->w->cols;
    const uint16_t *w0 = (const uint16_t *)a->w->data + (size_t)r * (size_t)K;
    const uint16_t *x0 = (const uint16_t *)a->xp + (size_t)t * (size_t)K;
    float32x4_t acc[8][4];
    int i, j, k = 0;
    GEMMA2__UNROLL for (i = 0; i < RR; i++) GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = vdupq_n_f32(0.0f);
    for (; k + 8 <= K; k += 8) {
        bfloat16x8_t xv[4];
        GEMMA2__UNROLL for (j = 0; j < TT; j++) xv[j] = vreinterpretq_bf16_u16(vld1q_u16(x0 + (size_t)j * K + k));
        GEMMA2__UNROLL for (i = 0; i < RR; i++) {
            bfloat16x8_t wv = vreinterpretq_bf16_u16(vld1q_u16(w0 + (size_t)i * K + k));
            GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = vbfdotq_f32(acc[i][j], wv, xv[j]);
        }
    }
    if (k < K) {
        uint16_t pad[8];
        bfloat16x8_t xv[4];
        GEMMA2__UNROLL for (j = 0; j < TT; j++) {
            memset(pad, 0, sizeof pad);
            memcpy(pad, x0 + (size_t)j * K + k, (size_t)(K - k) * sizeof(uint16_t));
            xv[j] = vreinterpretq_bf16_u16(vld1q_u16(pad));
        }
        GEMMA2__UNROLL for (i = 0; i < RR; i++) {
            bfloat16x8_t wv;
            memset(pad, 0, sizeof pad);
            memcpy(pad, w0 + (size_t)i * K + k, (size_t)(K - k) * sizeof(uint16_t));
            wv = vreinterpretq_bf16_u16(vld1q_u16(pad));
            GEMMA2__UNROLL for (j = 0; j < TT; j++) acc[i][j] = vbfdotq_f32(acc[i][j], wv, xv[j]);
        }
    }
    GEMMA2__UNROLL for (j = 0; j < TT; j++) GEMMA2__UNROLL for (i = 0; i < RR; i++)
        a->y[(size_t)(t + j) * a->ldy + r + i] = vaddvq_f32(acc[i][j]);
}

#define GEMMA2__TILE_NBF(a, r, t, RR, TT, dummy) gemma2__tile_neonbf(a, r, t, RR, TT)

/* BF16 weights with bf16 activations (PACK_BF16) through BFDOT; float32 as the NEON set. */
static GEMMA2__T_NEONBF16 void gemma2__matmul_neonbf16_bf16(const gemma2__matmul_args *a, int r0, int r1)
{
    int rb, r, t;
    if (a->xp_kind != GEMMA2__PACK_BF16) {
        gemma2__matmul_neon_bf16(a, r0, r1);
        return;
    }
    if (a->T == 1) {
        for (r = r0; r + 8 <= r1; r += 8) gemma2__tile_neonbf(a, r, 0, 8, 1);
        for (; r < r1; r++) gemma2__tile_neonbf(a, r, 0, 1, 1);
        return;
    }
    for (rb = r0; rb < r1; rb += 16) {
        int re = GEMMA2__MIN(rb + 16, r1);
        for (t = 0; t + 4 <= a->T; t += 4) GEMMA2__ROWS_TILED(GEMMA2__TILE_NBF, rb, re, t, 4, 0);
        if (a->T - t == 3) GEMMA2__ROWS_TILED(GEMMA2__TILE_NBF, rb, re, t, 3, 0);
        else if (a->T - t == 2) GEMMA2__ROWS_TILED(GEMMA2__TILE_NBF, rb, re, t, 2, 0);
        else if (a->T - t == 1) GEMMA2__ROWS_TILED(GEMMA2__TILE_NBF, rb, re, t, 1, 0);
    }
}

static int gemma2__pack_kind_neonbf16(const gemma2__kernels *k, int format, int T, int K, int compute_bf16, int lone)
{
    if (compute_bf16 && format == GEMMA2__WF_BF16) return GEMMA2__PACK_BF16;
    return gemma2__pack_kind_neon(k, format, T, K, compute_bf16, lone);
}

static void gemma2__pack_neonbf16(void *xp, int kind, const float *x, int T, int K, int j0, int j1)
{
    int t;
    if (kind != GEMMA2__PACK_BF16) { gemma2__pack_ref(xp, kind, x, T, K, j0, j1); return; }
    for (t = j0; t < j1; t++) gemma2__to_bf16_neon((uint16_t *)xp + (size_t)t * K, x + (size_t)t * K, K);
}

static void gemma2__kernels_init_neonbf16(gemma2__kernels *k)
{
    gemma2__kernels_init_neon(k);
    k->name = "neon-bf16";
    k->id = GEMMA2_KERNELS_NEON_BF16;
    k->matmul[GEMMA2__WF_BF16] = gemma2__matmul_neonbf16_bf16;
    k->pack_kind = gemma2__pack_kind_neonbf16;
    k->pack = gemma2__pack_neonbf16;
}
#endif /* GEMMA2__NEON_BF16 */
#endif /* NEON */

/* ---- the list of kernel sets, best first ----
   Selection walks it for the first set this CPU runs (or the one asked for); the tests and the
   benchmark walk it too. A set this build does not have keeps its row with init NULL. */

typedef struct gemma2__kernel_set {
    int id;                          /* GEMMA2_KERNELS_* */
    int (*available)(void);          /* nonzero if this CPU runs it */
    void (*init)(gemma2__kernels *k);
} gemma2__kernel_set;

#if defined(GEMMA2__X86)
static int gemma2__has_avx512bf16(void) { return (gemma2__x86_features() & GEMMA2__CPU_AVX512BF16) != 0; }
static int gemma2__has_avx512(void) { return (gemma2__x86_features() & GEMMA2__CPU_AVX512) != 0; }
static int gemma2__has_avx2(void) { return (gemma2__x86_features() & GEMMA2__CPU_AVX2) != 0; }
#define GEMMA2__SET_X86(f, init) f, init
#else
#define GEMMA2__SET_X86(f, init) NULL, NULL
#endif
#if defined(GEMMA2__NEON_BF16)
#define GEMMA2__SET_NEON_BF16(f, init) f, init
#else
#define GEMMA2__SET_NEON_BF16(f, init) NULL, NULL
#endif
#if defined(GEMMA2__NEON)
static int gemma2__has_neon(void) { return 1; } /* ARM64 always has it */
#define GEMMA2__SET_NEON(f, init) f, init
#else
#define GEMMA2__SET_NEON(f, init) NULL, NULL
#endif
static int gemma2__has_scalar(void) { return 1; }

static const gemma2__kernel_set gemma2__kernel_sets[] = {
    {GEMMA2_KERNELS_AVX512_BF16, GEMMA2__SET_X86(gemma2__has_avx512bf16, gemma2__kernels_init_avx512bf16)},
    {GEMMA2_KERNELS_AVX512, GEMMA2__SET_X86(gemma2__has_avx512, gemma2__kernels_init_avx512)},
    {GEMMA2_KERNELS_AVX2, GEMMA2__SET_X86(gemma2__has_avx2, gemma2__kernels_init_avx2)},
    {GEMMA2_KERNELS_NEON_BF16, GEMMA2__SET_NEON_BF16(gemma2__neon_has_bf16, gemma2__kernels_init_neonbf16)},
    {GEMMA2_KERNELS_NEON, GEMMA2__SET_NEON(gemma2__has_neon, gemma2__kernels_init_neon)},
    {GEMMA2_KERNELS_SCALAR, gemma2__has_scalar, gemma2__kernels_init_scalar},
};
#define GEMMA2__N_KERNEL_SETS ((int)(sizeof gemma2__kernel_sets / sizeof gemma2__kernel_sets[0]))

static int gemma2__kernels_select(int want, gemma2__kernels *k)
{
    int i;
    for (i = 0; i < GEMMA2__N_KERNEL_SETS; i++) {
        const gemma2__kernel_set *ks = &gemma2__kernel_sets[i];
        if ((want == GEMMA2_KERNELS_AUTO || want == ks->id) && ks->init && ks->available()) {
            ks->init(k);
            return 0;
        }
    }
    return GEMMA2_ERROR_UNSUPPORTED;
}

#if defined(__clang__)
#pragma clang fp contract(on)
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

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
