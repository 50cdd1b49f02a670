/* The portability programs' shared declarations: each of tp_model.c and tp_tokenizer.c does one
   real thing with the library and says whether it matched the fixtures' references. */
#ifndef TP_H
#define TP_H
int tp_model(const char *data);     /* 0 if tiny-gqa's greedy tokens are the reference's */
int tp_tokenizer(const char *data); /* 0 if a text tokenizes and decodes back to itself */
#endif
