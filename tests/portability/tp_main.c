/* Runs both units: one program whose units each use the library (a shared implementation, or
   each its private GEMMA2_STATIC copy). Usage: tp [data folder, default tests/data] */
#include "tp.h"
#include <stdio.h>

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : "tests/data";
    int bad = tp_model(data) + tp_tokenizer(data);
    printf(bad ? "FAILED\n" : "ok: tiny-gqa's greedy tokens and a tokenizer round trip\n");
    return bad != 0;
}
