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
