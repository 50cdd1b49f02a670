/* A very small test harness: cases run by name, CHECKs count failures inside a case,
   and the run ends with the line "N passed, N failed" that CI reads. */
#ifndef GEMMA2_TEST_H
#define GEMMA2_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "../gemma2.h"

#ifdef __cplusplus
extern "C" {
#endif

extern int g2t_case_failed;    /* CHECKs failed in the current case */
extern const char *g2t_data;   /* the tests/data folder */

/* Runs one named case (skipped unless its name contains the filter given on the command line). */
void g2t_run(const char *name, void (*fn)(void));
/* path into tests/data, in a static rotating buffer (good for a few calls at once) */
const char *g2t_path(const char *rel);
/* Reads a whole file; NULL if missing. *size gets its length. Free with free(). */
void *g2t_read_file(const char *path, size_t *size);
/* Loads the fixture model tests/data/models/NAME with options o (may be NULL); a failure is a
   failed CHECK that names the model and says why, and NULL. */
gemma2_model *g2t_load(const char *name, const gemma2_options *o);

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            g2t_case_failed++;                                                 \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
        }                                                                      \
    } while (0)

/* Suites: one per test file, each calling g2t_run for its cases. */
void suite_json(void);
void suite_model(void);
void suite_loader(void);
void suite_kernels(void);
void suite_tokenizer(void);
void suite_sampler(void);
void suite_chat(void);
void suite_generate(void);
void suite_session(void);
void suite_api(void);
void suite_trace(void);
void suite_saved(void);
void suite_batch(void);

#ifdef __cplusplus
}
#endif
#endif
