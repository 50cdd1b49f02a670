#include "test.h"

void suite_sampler(void) {}
