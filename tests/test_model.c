#include "test.h"

void suite_model(void) {}
