/* A counting allocator for the library (GEMMA2_MALLOC / REALLOC / FREE) that can fail the k-th
   allocation: at_live is the number of allocations not yet freed. Used by tests/alloc_test.c and
   by the portability run's whole-suite build (tests/portability/alloc_suite.c). Include it before
   gemma2.h, after any feature macro. */
#ifndef ALLOC_COUNTING_H
#define ALLOC_COUNTING_H
#include <stdlib.h>

static long at_count;        /* allocations attempted since the last at_arm */
static long at_fail_at;      /* fail this one (1-based); 0: none */
static long at_failed;       /* allocations made to fail */
static long at_live;         /* allocations not yet freed */

/* Sessions' worker threads may allocate, so the counters are atomic. */
static int at_should_fail(void)
{
    long k = __atomic_add_fetch(&at_count, 1, __ATOMIC_SEQ_CST);
    if (k == __atomic_load_n(&at_fail_at, __ATOMIC_SEQ_CST)) { __atomic_add_fetch(&at_failed, 1, __ATOMIC_SEQ_CST); return 1; }
    return 0;
}

static void *at_malloc(size_t n)
{
    void *p;
    if (at_should_fail()) return NULL;
    p = malloc(n);
    if (p) __atomic_add_fetch(&at_live, 1, __ATOMIC_SEQ_CST);
    return p;
}

static void *at_realloc(void *p, size_t n)
{
    void *q;
    if (at_should_fail()) return NULL;
    q = realloc(p, n);
    if (q && !p) __atomic_add_fetch(&at_live, 1, __ATOMIC_SEQ_CST);
    return q;
}

static void at_free(void *p)
{
    if (p) __atomic_sub_fetch(&at_live, 1, __ATOMIC_SEQ_CST);
    free(p);
}

#define GEMMA2_MALLOC(sz) at_malloc(sz)
#define GEMMA2_REALLOC(p, sz) at_realloc(p, sz)
#define GEMMA2_FREE(p) at_free(p)

#endif
