/* The implementation, alone in its translation unit (tp_model.c and tp_tokenizer.c include only
   the declarations). */
#define GEMMA2_IMPLEMENTATION
#include "../../gemma2.h"
