#include "test.h"

void suite_tokenizer(void) {}
