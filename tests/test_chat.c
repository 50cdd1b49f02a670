#include "test.h"

void suite_chat(void) {}
