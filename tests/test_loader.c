#include "test.h"

void suite_loader(void) {}
