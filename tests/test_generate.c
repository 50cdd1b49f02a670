#include "test.h"

void suite_generate(void) {}
