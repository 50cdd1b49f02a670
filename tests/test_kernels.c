#include "test.h"

void suite_kernels(void) {}
