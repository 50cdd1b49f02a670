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

# --- tokenizer: example and benchmark (the benchmark compares with SentencePiece when libsentencepiece-dev is installed)
all: examples/tokenize
examples/tokenize: examples/tokenize.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ examples/tokenize.c $(LDLIBS)
tests/bench_tokenizer: tests/bench_tokenizer.c gemma2.h
	$(CXX) -x c++ -std=c++17 -O2 -DGEMMA2_BENCH_SPM -o $@ tests/bench_tokenizer.c -lsentencepiece $(LDLIBS) 2>/dev/null || \
	$(CC) $(STD) -O2 -o $@ tests/bench_tokenizer.c $(LDLIBS)
bench-tokenizer: tests/bench_tokenizer
	./tests/bench_tokenizer tests/data 4
bench: bench-tokenizer
.PHONY: bench-tokenizer

# --- speed benchmark (issue 5): random-weight 2B (and --9b) checkpoints in bench-data/ ---
tests/bench_model: tests/bench_model.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ tests/bench_model.c $(LDLIBS)

bench-model: tests/bench_model
	./tests/bench_model $(BENCH_ARGS)

bench: bench-model
.PHONY: bench-model

# --- ARM64: the NEON kernels, cross-built statically and run under qemu-user: the whole suite on
#     qemu's default CPU, which has BF16 (so both the neon and neon-bf16 sets run), then the kernel
#     tests as a Cortex-A72, where the run-time detection must not pick BFDOT.
#     (apt-get install gcc-aarch64-linux-gnu qemu-user; skipped with a note when absent)
ARM64_CC   ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64

tests/gemma2_test_arm64: $(TEST_SRC)
	$(ARM64_CC) $(STD) -O2 $(WARN) -static -o $@ tests/gemma2_test.c $(LDLIBS)

test-arm64:
	@if command -v $(ARM64_CC) >/dev/null 2>&1 && command -v $(QEMU_ARM64) >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory tests/gemma2_test_arm64 && echo "== arm64 (NEON + BF16) under qemu" && $(QEMU_ARM64) ./tests/gemma2_test_arm64 && \
	  echo "== arm64 kernels on a Cortex-A72 (no BF16) under qemu" && $(QEMU_ARM64) -cpu cortex-a72 ./tests/gemma2_test_arm64 kernels; \
	else echo "== arm64: skipped ($(ARM64_CC) or $(QEMU_ARM64) not installed)"; fi

test: test-arm64
.PHONY: test-arm64

# --- generation (issue 4): the CLI and the perplexity example; the tests compile the CLI in
all: gemma2 examples/perplexity
gemma2: examples/gemma2.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ examples/gemma2.c $(LDLIBS)
tests/gemma2_test tests/gemma2_test_asan tests/gemma2_test_cxx tests/gemma2_test_arm64: examples/gemma2.c
