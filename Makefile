# gemma2.h - build the examples and run the tests.
#   make          the CLI (./gemma2) and the examples
#   make test     the whole test suite: gcc -Werror, clang with ASan/UBSan, C++ build
#   make bench    benchmarks (not part of the tests)

CC      ?= cc
CLANG   ?= clang
CXX     ?= g++
WARN     = -Wall -Wextra -Werror
CFLAGS  ?= -O2 -g
STD      = -std=c99
LDLIBS   = -lm -lpthread
SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

TEST_SRC = tests/gemma2_test.c $(wildcard tests/test_*.c) tests/test.h gemma2.h

EXAMPLES = examples/topk

all: $(EXAMPLES)

examples/%: examples/%.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ $< $(LDLIBS)

tests/gemma2_test: $(TEST_SRC)
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ tests/gemma2_test.c $(LDLIBS)

tests/gemma2_test_asan: $(TEST_SRC)
	$(CLANG) $(STD) -O1 -g $(WARN) $(SAN) -o $@ tests/gemma2_test.c $(LDLIBS)

tests/gemma2_test_cxx: $(TEST_SRC)
	$(CXX) -x c++ -std=c++11 -O2 $(WARN) -o $@ tests/gemma2_test.c $(LDLIBS)

test: tests/gemma2_test tests/gemma2_test_asan tests/gemma2_test_cxx
	@echo "== gcc -O2" && ./tests/gemma2_test
	@echo "== clang, ASan + UBSan" && ./tests/gemma2_test_asan
	@echo "== C++" && ./tests/gemma2_test_cxx

clean:
	rm -f tests/gemma2_test tests/gemma2_test_asan tests/gemma2_test_cxx gemma2 $(EXAMPLES)

.PHONY: all test clean bench

# --- generation (issue 4): the CLI and the perplexity example; the tests compile the CLI in
all: gemma2 examples/perplexity
gemma2: examples/gemma2.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ examples/gemma2.c $(LDLIBS)
tests/gemma2_test tests/gemma2_test_asan tests/gemma2_test_cxx: examples/gemma2.c
