# gemma2.h - build the CLI and the examples, run the tests and the benchmarks.
#
#   make                  the CLI (./gemma2) and the examples (examples/topk, tokenize, perplexity, quantize, trace, server);
#                         each compiles the whole library, so make -j builds them side by side
#   make test             builds every binary it runs, JOBS at a time (default: the CPU count), then runs
#                         the test suite: gcc -O2 -Werror, clang with ASan + UBSan, C++; the
#                         allocation-failure sweep (ASan + UBSan); sessions on several threads
#                         under clang's TSan; test-portability; examples/server with real clients
#                         (test-server); a short run of every fuzz target (fuzz-smoke); then ARM64 under
#                         qemu and the other platforms: Windows (mingw-w64) under wine, RISC-V 64, 32-bit
#                         x86 and big-endian s390x under qemu-user (a subset of the suite on the last three:
#                         CROSS_SUBSET, S390X_CASES; TSan, fuzz and the emulated parts are skipped with a
#                         note when their runtime or tools are missing)
#   make test-all         make test, with the whole suite on every emulated platform
#   make test-native      only the native parts (everything but test-portability, test-server, fuzz-smoke
#                         and the emulated runs)
#   make test-portability the library built as host projects might (tests/portability/run.sh): strict
#                         warnings with gcc/clang C99/C11 and C++11/C++20, tcc, several translation
#                         units, GEMMA2_STATIC twice, nm and macro hygiene, the suite under each
#                         build switch and with a counting allocator
#   make test-server      examples/server (the -O2 build, then ASan + UBSan with leak checks) on a fixture
#                         model, with curl, node and the openai npm package (installed into tests/server/npm
#                         at test time); skipped with a note without curl or node
#   make test-arm64       only the ARM64 suite under qemu
#   make test-windows     only the Windows suite under wine (test-riscv64, test-i686, test-s390x likewise)
#   make fuzz             the libFuzzer targets in tests/fuzz/, each run FUZZ_TIME seconds (default 60)
#                         from its committed corpus (copied to tests/fuzz/work/: runs leave the repo alone)
#   make fuzz-smoke       the same, FUZZ_SMOKE_TIME seconds each (default 10; part of make test)
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
# Overridable: CC, CLANG, CXX, CFLAGS, ARM64_CC, QEMU_ARM64, MINGW_CC, WINE, RISCV64_CC, QEMU_RISCV64,
# I686_CC, QEMU_I386, S390X_CC, QEMU_S390X, CROSS_SUBSET, FUZZ_TIME, FUZZ_SMOKE_TIME
# (e.g. make test CC=clang CFLAGS=-O3).

CC         ?= cc
CLANG      ?= clang
CXX        ?= g++
CFLAGS     ?= -O2 -g
ARM64_CC   ?= aarch64-linux-gnu-gcc
QEMU_ARM64 ?= qemu-aarch64
MINGW_CC   ?= x86_64-w64-mingw32-gcc
WINE       ?= $(firstword $(wildcard /usr/lib/wine/wine64) wine64)
RISCV64_CC ?= riscv64-linux-gnu-gcc
QEMU_RISCV64 ?= qemu-riscv64
I686_CC    ?= i686-linux-gnu-gcc
QEMU_I386  ?= qemu-i386
S390X_CC   ?= s390x-linux-gnu-gcc
QEMU_S390X ?= qemu-s390x

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

.PHONY: all test test-all test-bins test-run test-run-all test-native test-portability test-server bench-server test-arm64 test-windows test-riscv64 test-i686 test-s390x fuzz fuzz-smoke fuzz-seeds bench bench-model bench-model-data bench-tokenizer clean

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
# make test first builds every binary it runs, JOBS at a time (a sub-make: the runs that follow
# are never disturbed by a build), then runs them in turn.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
TEST_BINS = $(TESTS) tests/alloc_test $(TSAN_TEST) gemma2 examples/server tests/server/server_asan $(FUZZ_DEPS) $(ARM64_TEST) $(CROSS_TESTS)

test-bins:
	$(MAKE) -j$(JOBS) $(TEST_BINS)

test: test-bins
	$(MAKE) test-run

test-all: test-bins
	$(MAKE) test-run-all

test-run: test-native test-portability test-server fuzz-smoke $(ARM64_TEST) $(CROSS_TESTS)
	$(call run-arm64,$(ARM64_SKIP))
	$(call run-windows,)
	$(call run-riscv64,$(CROSS_SUBSET))
	$(call run-i686,$(CROSS_SUBSET))
	$(call run-s390x,)

test-run-all: test-native test-portability test-server fuzz-smoke $(ARM64_TEST) $(CROSS_TESTS)
	$(call run-arm64,)
	$(call run-cross,)

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
FUZZ_SMOKE_TIME ?= 10
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
# The whole suite but ARM64_SKIP: cases whose code has no NEON path (flag parsing, the sampler)
# or that repeat one path many times over (the rewind sweep, saving and restoring sessions at
# every point: 4 minutes under qemu); they run natively, and make test-all runs them here too.
ARM64_SKIP = -session/rewind -generate/cli-flags -sampler/top_p_large_vocab -saved/continue
ifneq ($(HAVE_ARM64),)
define run-arm64
@echo "== arm64 (NEON + BF16) under qemu$(if $(1), (without: $(1)))" && $(QEMU_ARM64) ./tests/gemma2_test_arm64 $(1)
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
	$(call run-arm64,)

# ---------------------------------------------------------------- cross: Windows under wine, other CPUs under qemu-user
# Needs: apt-get install mingw-w64 wine64 gcc-riscv64-linux-gnu gcc-i686-linux-gnu gcc-s390x-linux-gnu
# qemu-user. Each binary is built (static, like ARM64's) only when its compiler and its emulator are
# found, and each run otherwise prints why it was skipped.
#   windows   x86-64 mingw-w64 (its Win32 thread model), the test program and the CLI, run by wine in
#             a private prefix, tests/wine-prefix (first use sets it up with wineboot and waits for
#             it, a few seconds; mscoree and mshtml are left out so that it never asks to install
#             Mono or Gecko). If wine cannot start the CLI there, the run stops with what the
#             prefix holds. AVX2 / AVX-512 kernels
#             as on Linux. -Wno-maybe-uninitialized: mingw's gcc 12 warns about xo[] in the AVX-512
#             f32 tile, which is only read when it was loaded (Linux gcc and clang agree).
#   riscv64   the scalar kernels, with threads; i686: 32-bit pointers and size_t (SSE2, no AVX
#             kernels); s390x: big-endian.
# What make test runs on them (make test-all and make test-windows etc. run everything):
#   under wine, the whole suite: wine runs the x86-64 code natively (about 2 min here).
#   CROSS_SUBSET, under qemu on RISC-V 64 and i686: qemu runs the scalar code 10-40 times slower than
#     the machine, and the whole suite would add an hour to CI. These cases check what differs on
#     those CPUs: the forward pass against the references (GQA, Q4, a sliding window shorter than the
#     prompt), the loader's size and offset checks with 32-bit size_t (and a 3 GiB checkpoint refused),
#     the tokenizers, the sampler, the chat template and generation; about 40 s (RISC-V) and 95 s
#     (i686) here.
# On s390x every checkpoint is refused (big-endian hosts are not supported: the weights are
# little-endian and used in place), so only the cases that need no weights run there, and the one
# that checks the refusal (but the sampler's 256000-token draws, which take minutes under qemu there
# and test nothing about byte order).
S390X_CASES = json/ tokenizer/ sampler/ loader/byte-order -sampler/top_p_large_vocab
CROSS_SUBSET ?= json/ model/tiny-gqa model/long-odd model/q4 loader/bad-files loader/config-values loader/byte-order \
                loader/utf8-path loader/too-large tokenizer/cases_json tokenizer/cases_model sampler/greedy sampler/seed \
                chat/fixtures generate/greedy generate/stop_rules session/n_ctx
WINEPREFIX_DIR = $(CURDIR)/tests/wine-prefix
WINE_ENV = WINEPREFIX=$(WINEPREFIX_DIR) WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
WINESERVER ?= $(firstword $(wildcard $(dir $(WINE))wineserver) wineserver)

HAVE_WINDOWS := $(and $(shell command -v $(MINGW_CC) 2>/dev/null),$(shell command -v $(WINE) 2>/dev/null))
HAVE_RISCV64 := $(and $(shell command -v $(RISCV64_CC) 2>/dev/null),$(shell command -v $(QEMU_RISCV64) 2>/dev/null))
HAVE_I686    := $(and $(shell command -v $(I686_CC) 2>/dev/null),$(shell command -v $(QEMU_I386) 2>/dev/null))
HAVE_S390X   := $(and $(shell command -v $(S390X_CC) 2>/dev/null),$(shell command -v $(QEMU_S390X) 2>/dev/null))
WINDOWS_TEST = $(if $(HAVE_WINDOWS),tests/gemma2_test.exe gemma2.exe)
RISCV64_TEST = $(if $(HAVE_RISCV64),tests/gemma2_test_riscv64)
I686_TEST    = $(if $(HAVE_I686),tests/gemma2_test_i686)
S390X_TEST   = $(if $(HAVE_S390X),tests/gemma2_test_s390x)
CROSS_TESTS  = $(WINDOWS_TEST) $(RISCV64_TEST) $(I686_TEST) $(S390X_TEST)

tests/gemma2_test.exe: $(TEST_SRC)
	$(MINGW_CC) $(STD) -O2 $(WARN) -Wno-maybe-uninitialized -static -o $@ tests/gemma2_test.c -lm

gemma2.exe: examples/gemma2.c gemma2.h
	$(MINGW_CC) $(STD) -O2 $(WARN) -Wno-maybe-uninitialized -static -o $@ examples/gemma2.c -lm

tests/gemma2_test_riscv64: $(TEST_SRC)
	$(RISCV64_CC) $(STD) -O2 $(WARN) -static -o $@ tests/gemma2_test.c $(LDLIBS)

tests/gemma2_test_i686: $(TEST_SRC)
	$(I686_CC) $(STD) -O2 $(WARN) -static -o $@ tests/gemma2_test.c $(LDLIBS)

tests/gemma2_test_s390x: $(TEST_SRC)
	$(S390X_CC) $(STD) -O2 $(WARN) -static -o $@ tests/gemma2_test.c $(LDLIBS)

# $(1): the filters (empty: the whole suite). Each platform's line says what ran.
ifneq ($(HAVE_WINDOWS),)
define run-windows
@echo "== windows (mingw-w64, x86-64) under wine$(if $(1), (subset: $(1)))" && \
	{ [ -f $(WINEPREFIX_DIR)/system.reg ] || { $(WINE_ENV) $(WINE) wineboot --init >/dev/null 2>&1; $(WINE_ENV) $(WINESERVER) -w; }; } && \
	{ $(WINE_ENV) $(WINE) gemma2.exe --version >/dev/null || { echo "wine cannot start a program (prefix $(WINEPREFIX_DIR)):"; \
	  df -h $(WINEPREFIX_DIR); ls $(WINEPREFIX_DIR) $(WINEPREFIX_DIR)/drive_c/windows/system32 2>&1 | head -n 20; false; }; } && \
	$(WINE_ENV) $(WINE) tests/gemma2_test.exe $(1) && \
	echo "== windows: the CLI reads a prompt file with CRLF line ends" && \
	printf 'Hello\r\nworld\r\n' > $(WINEPREFIX_DIR)/prompt.txt && \
	$(WINE_ENV) $(WINE) gemma2.exe -m tests/data/models/tiny-realvocab --tokenizer tests/data/tokenizer/tokenizer.json -f $(WINEPREFIX_DIR)/prompt.txt -n 4 --seed 1 > $(WINEPREFIX_DIR)/out.txt && \
	echo "   ok ($$(wc -c < $(WINEPREFIX_DIR)/out.txt) bytes out)"
endef
else
define run-windows
@echo "== windows: skipped ($(MINGW_CC) or $(WINE) not installed)"
endef
endif
ifneq ($(HAVE_RISCV64),)
define run-riscv64
@echo "== riscv64 (scalar kernels, threads) under qemu$(if $(1), (subset: $(1)))" && $(QEMU_RISCV64) ./tests/gemma2_test_riscv64 $(1)
endef
else
define run-riscv64
@echo "== riscv64: skipped ($(RISCV64_CC) or $(QEMU_RISCV64) not installed)"
endef
endif
ifneq ($(HAVE_I686),)
define run-i686
@echo "== i686 (32-bit) under qemu$(if $(1), (subset: $(1)))" && $(QEMU_I386) ./tests/gemma2_test_i686 $(1)
endef
else
define run-i686
@echo "== i686: skipped ($(I686_CC) or $(QEMU_I386) not installed)"
endef
endif
ifneq ($(HAVE_S390X),)
define run-s390x
@echo "== s390x (big-endian: checkpoints refused, the tokenizer runs) under qemu: $(S390X_CASES) $(1)" && $(QEMU_S390X) ./tests/gemma2_test_s390x $(S390X_CASES) $(1)
endef
else
define run-s390x
@echo "== s390x: skipped ($(S390X_CC) or $(QEMU_S390X) not installed)"
endef
endif
define run-cross
$(call run-windows,$(1))
$(call run-riscv64,$(1))
$(call run-i686,$(1))
$(call run-s390x,$(1))
endef

test-windows: $(WINDOWS_TEST)
	$(call run-windows,)

test-riscv64: $(RISCV64_TEST)
	$(call run-riscv64,)

test-i686: $(I686_TEST)
	$(call run-i686,)

test-s390x: $(S390X_TEST)
	$(call run-s390x,)

# ---------------------------------------------------------------- clean

clean:
	rm -f gemma2 $(EXAMPLES) $(TESTS) tests/server/server_asan tests/server/bench_server tests/alloc_test tests/gemma2_test_tsan tests/gemma2_test_arm64 tests/gemma2_test.exe gemma2.exe tests/gemma2_test_riscv64 tests/gemma2_test_i686 tests/gemma2_test_s390x $(BENCHES) $(FUZZ_BINS) tests/fuzz/gemma2_impl.o
	rm -rf tests/fuzz/work tests/portability/build tests/wine-prefix
