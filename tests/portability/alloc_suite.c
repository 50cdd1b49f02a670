/* The whole test program with the library's allocations through GEMMA2_MALLOC / REALLOC / FREE
   (tests/alloc_counting.h's counting allocator): the suite must pass, and once it is over every
   allocation the library made must have been freed. Usage as tests/gemma2_test. */
#if !defined(_WIN32) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE
#endif
#include "../alloc_counting.h"

int g2t_suite_main(int argc, char **argv);
#define main g2t_suite_main
#include "../gemma2_test.c"
#undef main

int main(int argc, char **argv)
{
    int rc = g2t_suite_main(argc, argv);
    long live = __atomic_load_n(&at_live, __ATOMIC_SEQ_CST);
    if (live != 0) {
        fprintf(stderr, "%ld of the library's %ld allocations never freed\n", live, __atomic_load_n(&at_count, __ATOMIC_SEQ_CST));
        return 1;
    }
    printf("every one of the library's %ld allocations freed\n", __atomic_load_n(&at_count, __ATOMIC_SEQ_CST));
    return rc;
}
