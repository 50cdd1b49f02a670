# gemma2.h - build the CLI and the examples, run the tests and the benchmarks.
#
#   make                  the CLI (./gemma2) and the examples (examples/topk, tokenize, perplexity, quantize, trace, server);
#                         each compiles the whole library, so make -j builds them side by side
#   make test             the test suite: gcc -O2 -Werror, clang with ASan + UBSan, C++; the
#                         allocation-failure sweep (ASan + UBSan); sessions on several threads
#                         under clang's TSan; test-portability; examples/server with real clients
#                         (test-server); a short run of every fuzz target (fuzz-smoke); then ARM64 under
#                         qemu (TSan, fuzz and ARM64 parts are skipped with a note when their runtime or
#                         tools are missing)
#   make test-native      only the native parts (everything but test-portability, test-server, fuzz-smoke
#                         and ARM64)
#   make test-portability the library built as host projects might (tests/portability/run.sh): strict
#                         warnings with gcc/clang C99/C11 and C++11/C++20, tcc, several translation
#                         units, GEMMA2_STATIC twice, nm and macro hygiene, the suite under each
#                         build switch and with a counting allocator
#   make test-server      examples/server (the -O2 build, then ASan + UBSan with leak checks) on a fixture
#                         model, with curl, node and the openai npm package (installed into tests/server/npm
#                         at test time); skipped with a note without curl or node
#   make test-arm64       only the ARM64 suite under qemu
#   make fuzz             the libFuzzer targets in tests/fuzz/, each run FUZZ_TIME seconds (default 60)
#                         from its committed corpus (copied to tests/fuzz/work/: runs leave the repo alone)
#   make fuzz-smoke       the same, FUZZ_SMOKE_TIME seconds each (default 20; part of make test)
#   make bench            bench-tokenizer, bench-server, then bench-model (not part of the tests)
#   make bench-server     the server's added time per decoded token at 1 slot against the library's;
#                         on BENCH_SERVER_MODEL (default: the tiny-realvocab fixture)
#   make bench-model      speed benchmark on random-weight 2B checkpoints in bench-data/;
#                         flags through BENCH_ARGS, e.g. make bench-model BENCH_ARGS=--preload
#   make bench-model-data only write that 2B checkpoint, with generation_config.json and the real
#                         tokenizer, so that ./gemma2 -m bench-data/gemma-2-2b-random runs on it
#   make bench-tokenizer  tokenizer speed (against SentencePiece when libsentencepiece-dev is installed)
#   make clean            remove every binary the above build
#
# Overridable: CC, CLANG, CXX, CFLAGS, ARM64_CC, QEMU_ARM64, FUZZ_TIME, FUZZ_SMOKE_TIME
# (e.g. make test CC=clang CFLAGS=-O3).

CC         ?= cc
CLANG      ?= clang
CXX        ?= g++
CFLAGS     ?= -O2 -g
ARM64_CC   ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64

# The cross tools are looked up while make reads this file, not in a recipe, so that make -n
# runs nothing; without them the ARM64 binary is not built and its run prints a note.
HAVE_ARM64 := $(and $(shell command -v $(ARM64_CC) 2>/dev/null),$(shell command -v $(QEMU_ARM64) 2>/dev/null))
ARM64_TEST  = $(if $(HAVE_ARM64),tests/gemma2_test_arm64)
# Likewise clang's TSan runtime (libclang-rt-N-dev on Debian): found if a trivial program links.
HAVE_TSAN := $(shell echo 'int main(void){return 0;}' | $(CLANG) -fsanitize=thread -x c - -o /dev/null 2>/dev/null && echo yes)
TSAN_TEST  = $(if $(HAVE_TSAN),tests/gemma2_test_tsan)

STD    = -std=c99
WARN   = -Wall -Wextra -Werror
LDLIBS = -lm -lpthread
SAN    = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
TSAN   = -fsanitize=thread -fno-omit-frame-pointer

EXAMPLES = examples/topk examples/tokenize examples/perplexity examples/quantize examples/trace examples/server
TESTS    = tests/gemma2_test tests/gemma2_test_asan tests/gemma2_test_cxx
BENCHES  = tests/bench_model tests/bench_tokenizer

.PHONY: all test test-native test-portability test-server bench-server test-arm64 fuzz fuzz-smoke fuzz-seeds bench bench-model bench-model-data bench-tokenizer clean

# ---------------------------------------------------------------- build: the CLI and the examples
# Each example defines GEMMA2_IMPLEMENTATION itself, so each compiles the whole library;
# make -j builds them side by side.

all: gemma2 $(EXAMPLES)

gemma2: examples/gemma2.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ examples/gemma2.c $(LDLIBS)

examples/%: examples/%.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ $< $(LDLIBS)

# ---------------------------------------------------------------- test
# The suite #includes the CLI (examples/gemma2.c, without its main) to test it in-process.
TEST_SRC = tests/gemma2_test.c $(wildcard tests/test_*.c) tests/test.h gemma2.h examples/gemma2.c examples/trace.c

tests/gemma2_test: $(TEST_SRC)
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ tests/gemma2_test.c $(LDLIBS)

tests/gemma2_test_asan: $(TEST_SRC)
	$(CLANG) $(STD) -O1 -g $(WARN) $(SAN) -o $@ tests/gemma2_test.c $(LDLIBS)

tests/gemma2_test_cxx: $(TEST_SRC)
	$(CXX) -x c++ -std=c++11 -O2 $(WARN) -o $@ tests/gemma2_test.c $(LDLIBS)

# Every allocation made to fail in turn (tests/alloc_test.c defines GEMMA2_MALLOC & co.).
tests/alloc_test: tests/alloc_test.c gemma2.h
	$(CLANG) $(STD) -O1 -g $(WARN) $(SAN) -o $@ tests/alloc_test.c $(LDLIBS)

# Data races: one model shared by sessions on several threads, and the thread pool.
tests/gemma2_test_tsan: $(TEST_SRC)
	$(CLANG) $(STD) -O1 -g $(WARN) $(TSAN) -o $@ tests/gemma2_test.c $(LDLIBS)

ifneq ($(HAVE_TSAN),)
define run-tsan
@echo "== clang, TSan: sessions on threads, the pool, batches" && ./tests/gemma2_test_tsan session/threads && ./tests/gemma2_test_tsan kernels/pool && ./tests/gemma2_test_tsan batch/errors
endef
else
define run-tsan
@echo "== TSan: skipped ($(CLANG) -fsanitize=thread does not link: install libclang-rt-dev)"
endef
endif

test-native: $(TESTS) tests/alloc_test $(TSAN_TEST)
	@echo "== gcc -O2" && ./tests/gemma2_test
	@echo "== clang, ASan + UBSan" && ./tests/gemma2_test_asan
	@echo "== C++" && ./tests/gemma2_test_cxx
	@echo "== allocation failures, clang, ASan + UBSan" && ./tests/alloc_test
	$(run-tsan)

# The emulated run, the slowest, comes last: its recipe waits for test-native even under make -j
# (which still cross-builds its binary alongside), and a serial make reaches the cross build only
# after the native results are out.
test: test-native test-portability test-server fuzz-smoke $(ARM64_TEST)
	$(run-arm64)

# ---------------------------------------------------------------- portability
# One script, one line of output per step (see its header); it builds into tests/portability/build.
# Serial make runs it after test-native, as listed in test's prerequisites.
test-portability:
	GCC=$(CC) CLANG=$(CLANG) sh tests/portability/run.sh

# ---------------------------------------------------------------- server
# The server from outside, with real clients; the ASan build also checks for leaks at its exit.
tests/server/server_asan: examples/server.c gemma2.h
	$(CLANG) $(STD) -O1 -g $(WARN) $(SAN) -o $@ examples/server.c $(LDLIBS)

test-server: gemma2 examples/server tests/server/server_asan
	tests/server/run.sh ./gemma2 examples/server tests/server/server_asan

# ---------------------------------------------------------------- bench
# Not part of the tests: bench-model writes 5.2 GB of random weights into bench-data/ on its
# first run. make bench runs the two in turn, never side by side, so neither disturbs the other.

tests/bench_model: tests/bench_model.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ tests/bench_model.c $(LDLIBS)

# With SentencePiece when its C++ library links, else on its own.
tests/bench_tokenizer: tests/bench_tokenizer.c gemma2.h
	$(CXX) -x c++ -std=c++17 -O2 -DGEMMA2_BENCH_SPM -o $@ tests/bench_tokenizer.c -lsentencepiece $(LDLIBS) 2>/dev/null || \
	$(CC) $(STD) -O2 -o $@ tests/bench_tokenizer.c $(LDLIBS)

RUN_BENCH_TOKENIZER = ./tests/bench_tokenizer tests/data 4
RUN_BENCH_MODEL     = ./tests/bench_model $(BENCH_ARGS)

bench: $(BENCHES) examples/server tests/server/bench_server
	$(RUN_BENCH_TOKENIZER)
	$(RUN_BENCH_SERVER)
	$(RUN_BENCH_MODEL)

tests/server/bench_server: tests/server/bench_server.c gemma2.h
	$(CC) $(STD) $(CFLAGS) $(WARN) -o $@ tests/server/bench_server.c $(LDLIBS)

BENCH_SERVER_MODEL ?= tests/data/models/tiny-realvocab
RUN_BENCH_SERVER    = tests/server/bench.sh $(BENCH_SERVER_MODEL)

bench-server: examples/server tests/server/bench_server
	$(RUN_BENCH_SERVER)

bench-model: tests/bench_model
	$(RUN_BENCH_MODEL)

# Only the 2B random-weight checkpoint, ready for ./gemma2 -m bench-data/gemma-2-2b-random
bench-model-data: tests/bench_model
	./tests/bench_model --write-only

bench-tokenizer: tests/bench_tokenizer
	$(RUN_BENCH_TOKENIZER)

# ---------------------------------------------------------------- fuzz: libFuzzer targets
# tests/fuzz/fuzz_*.c, one target each (fuzz_tokenizer_file.c twice: tokenizer.json and tokenizer.model),
# with clang's libFuzzer, ASan and UBSan. The library is compiled once (gemma2_impl.o) and linked into every
# target. Each run starts from a copy of tests/fuzz/corpus/TARGET in tests/fuzz/work/TARGET, where new inputs
# and any crash-* / timeout-* / leak-* file go; a finding fails the run. Needs clang's libFuzzer runtime
# (Debian: libclang-rt-14-dev, which .ci/run installs); looked up while make reads this file, like the cross
# tools, so that make -n runs nothing.
FUZZ_TIME       ?= 60
FUZZ_SMOKE_TIME ?= 20
FUZZ_TARGETS = load_weights load_quant load_config load_index tokenizer_json tokenizer_model tokenize chat sampler session_load
FUZZ_BINS    = $(FUZZ_TARGETS:%=tests/fuzz/fuzz_%)
FUZZ_CFLAGS  = $(STD) -O1 -g $(WARN) -fno-sanitize-recover=all -fno-omit-frame-pointer
HAVE_FUZZ   := $(wildcard $(shell $(CLANG) -print-file-name=libclang_rt.fuzzer-$(shell uname -m 2>/dev/null).a 2>/dev/null))

# Per target: the longest input (its seeds' size and then some), and the JSON/safetensors dictionary.
FUZZ_ARGS_load_weights    = -max_len=16384 -dict=tests/fuzz/json.dict
FUZZ_ARGS_load_quant      = -max_len=8192 -dict=tests/fuzz/json.dict
FUZZ_ARGS_load_config     = -max_len=4096 -dict=tests/fuzz/json.dict
FUZZ_ARGS_load_index      = -max_len=8192 -dict=tests/fuzz/json.dict
FUZZ_ARGS_tokenizer_json  = -max_len=16384 -dict=tests/fuzz/json.dict
FUZZ_ARGS_tokenizer_model = -max_len=16384
FUZZ_ARGS_tokenize        = -max_len=6000
FUZZ_ARGS_chat            = -max_len=2048
FUZZ_ARGS_sampler         = -max_len=4096
FUZZ_ARGS_session_load    = -max_len=16384

tests/fuzz/gemma2_impl.o: tests/fuzz/gemma2_impl.c gemma2.h
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ tests/fuzz/gemma2_impl.c

tests/fuzz/fuzz_tokenizer_json: tests/fuzz/fuzz_tokenizer_file.c tests/fuzz/fuzz_common.h tests/fuzz/gemma2_impl.o
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -DFZ_TOKENIZER_FILE='"tokenizer.json"' -o $@ $< tests/fuzz/gemma2_impl.o $(LDLIBS)

tests/fuzz/fuzz_tokenizer_model: tests/fuzz/fuzz_tokenizer_file.c tests/fuzz/fuzz_common.h tests/fuzz/gemma2_impl.o
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -DFZ_TOKENIZER_FILE='"tokenizer.model"' -o $@ $< tests/fuzz/gemma2_impl.o $(LDLIBS)

tests/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h tests/fuzz/fuzz_real_tokenizer.h tests/fuzz/gemma2_impl.o
	$(CLANG) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< tests/fuzz/gemma2_impl.o $(LDLIBS)

# $(1): seconds per target. Run from the repository's root: tokenize and chat read tests/data/tokenizer.
ifneq ($(HAVE_FUZZ),)
define run-fuzz
@for t in $(FUZZ_TARGETS); do \
	rm -rf tests/fuzz/work/$$t && mkdir -p tests/fuzz/work/$$t && cp tests/fuzz/corpus/$$t/* tests/fuzz/work/$$t/ && \
	echo "== fuzz $$t ($(1) s)" && \
	case $$t in load_weights) a='$(FUZZ_ARGS_load_weights)';; load_quant) a='$(FUZZ_ARGS_load_quant)';; \
	  load_config) a='$(FUZZ_ARGS_load_config)';; load_index) a='$(FUZZ_ARGS_load_index)';; \
	  tokenizer_json) a='$(FUZZ_ARGS_tokenizer_json)';; tokenizer_model) a='$(FUZZ_ARGS_tokenizer_model)';; \
	  tokenize) a='$(FUZZ_ARGS_tokenize)';; chat) a='$(FUZZ_ARGS_chat)';; session_load) a='$(FUZZ_ARGS_session_load)';; \
	  *) a='$(FUZZ_ARGS_sampler)';; esac; \
	./tests/fuzz/fuzz_$$t tests/fuzz/work/$$t $$a -max_total_time=$(1) -timeout=10 -rss_limit_mb=2048 \
	  -artifact_prefix=tests/fuzz/work/$$t- -print_final_stats=1 2>tests/fuzz/work/$$t.log; rc=$$?; \
	grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^stat::peak_rss_mb' tests/fuzz/work/$$t.log | tr '\n' ' '; echo; \
	if [ $$rc -ne 0 ]; then tail -n 60 tests/fuzz/work/$$t.log; echo "fuzz $$t: FAILED (log: tests/fuzz/work/$$t.log)"; exit 1; fi; \
done
endef
FUZZ_DEPS = $(FUZZ_BINS)
else
define run-fuzz
@echo "== fuzz: skipped ($(CLANG)'s libFuzzer runtime is not installed; Debian: libclang-rt-14-dev)"
endef
FUZZ_DEPS =
endif

fuzz: $(FUZZ_DEPS)
	$(call run-fuzz,$(FUZZ_TIME))

fuzz-smoke: $(FUZZ_DEPS)
	$(call run-fuzz,$(FUZZ_SMOKE_TIME))

# Rewrites the loader targets' seeds from the tiny model the targets build (see fuzz_load_quant.c); the
# tokenizer seeds come from tests/fuzz/minimise_tokenizers.py.
fuzz-seeds: tests/fuzz/fuzz_load_quant tests/fuzz/fuzz_session_load
	GEMMA2_FUZZ_WRITE_SEEDS=tests/fuzz/corpus ./tests/fuzz/fuzz_load_quant
	GEMMA2_FUZZ_WRITE_SEEDS=tests/fuzz/corpus ./tests/fuzz/fuzz_session_load

# ---------------------------------------------------------------- cross: ARM64 under qemu-user
# The NEON kernels, cross-built statically: the whole suite on qemu's default CPU, which has
# BF16 (so both the neon and neon-bf16 kernel sets run), then the kernel tests as a Cortex-A72,
# where run-time detection must not pick BFDOT. Needs: apt-get install gcc-aarch64-linux-gnu
# libc6-dev-arm64-cross qemu-user.
ifneq ($(HAVE_ARM64),)
define run-arm64
@echo "== arm64 (NEON + BF16) under qemu" && $(QEMU_ARM64) ./tests/gemma2_test_arm64
@echo "== arm64 kernels on a Cortex-A72 (no BF16) under qemu" && $(QEMU_ARM64) -cpu cortex-a72 ./tests/gemma2_test_arm64 kernels
endef
else
define run-arm64
@echo "== arm64: skipped ($(ARM64_CC) or $(QEMU_ARM64) not installed)"
endef
endif

tests/gemma2_test_arm64: $(TEST_SRC)
	$(ARM64_CC) $(STD) -O2 $(WARN) -static -o $@ tests/gemma2_test.c $(LDLIBS)

test-arm64: $(ARM64_TEST)
	$(run-arm64)

# ---------------------------------------------------------------- clean

clean:
	rm -f gemma2 $(EXAMPLES) $(TESTS) tests/server/server_asan tests/server/bench_server tests/alloc_test tests/gemma2_test_tsan tests/gemma2_test_arm64 $(BENCHES) $(FUZZ_BINS) tests/fuzz/gemma2_impl.o
	rm -rf tests/fuzz/work tests/portability/build
