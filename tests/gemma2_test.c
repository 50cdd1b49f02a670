/* The test program, built as ONE translation unit (C, and again as C++): the library's
   implementation is compiled in here so that tests can reach its private gemma2__ functions
   (the JSON reader, the kernels' scalar references) as well as the public API. */
/* POSIX for the tests' temporary folders (mkdtemp) */
#if !defined(_WIN32) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE
#endif
#define GEMMA2_IMPLEMENTATION
#include "../gemma2.h"
#include "test.h"

/* Windows (mingw-w64): the few POSIX file calls the tests use, over the C runtime. Paths such
   as "/tmp/..." work under wine, where the current drive's root is the Unix root. */
#if defined(_WIN32)
#include <io.h>
#include <direct.h>
#include <process.h>
#include <errno.h>
#include <time.h>
#include <dirent.h>
#include <sys/stat.h>
#define mkdir(p, mode) _mkdir(p)
#define lstat(p, st) stat(p, st)
/* Not _mktemp: it makes at most 26 names per process id, and wine reuses small process ids, so
   folders left by an earlier run (a failed case keeps its files) can use them all up. */
static char *g2t_mkdtemp(char *tmpl)
{
    static unsigned long seq;
    size_t n = strlen(tmpl);
    int tries, k;
    if (n < 6) return NULL;
    for (tries = 0; tries < 1000; tries++) {
        unsigned long v = ((unsigned long)time(NULL) * 2654435761u) ^ ((unsigned long)_getpid() * 40503u) ^ (++seq * 2246822519u);
        for (k = 0; k < 6; k++) { tmpl[n - 6 + (size_t)k] = "abcdefghijklmnopqrstuvwxyz0123456789"[v % 36]; v /= 36; }
        if (_mkdir(tmpl) == 0) return tmpl;
        if (errno != EEXIST) return NULL;
    }
    return NULL;
}
#define mkdtemp(t) g2t_mkdtemp(t)
#endif

#include "test_main.c"
#include "test_json.c"
#include "test_model.c"
#include "test_loader.c"
#include "test_kernels.c"
#include "test_tokenizer.c"
#include "test_sampler.c"
#include "test_chat.c"
#include "test_generate.c"
#include "test_session.c"
#include "test_api.c"
#include "test_trace.c"
#include "test_saved.c"
#include "test_batch.c"
