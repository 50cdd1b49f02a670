/* The library for the fuzz targets, compiled once with coverage and sanitizers and linked into each. */
#define GEMMA2_IMPLEMENTATION
#include "../../gemma2.h"
