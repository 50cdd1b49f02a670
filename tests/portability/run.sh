#!/bin/sh
# The portability run (make test-portability): builds gemma2.h the ways a host project might and
# runs what it builds. One line per step says what ran; the first failure stops the run.
#
#   1. strict warnings: gcc and clang, -std=c99 and -std=c11, STRICT below, on the implementation,
#      plain and with each build switch; gcc again at -O3 -march=native (its flow warnings);
#      the implementation as C++ with g++ and clang++, -std=c++11 and -std=c++20
#   2. tcc compiling the scalar, thread-less build of the test program and running part of it
#   3. the implementation in one unit, the declarations included from two others, one program
#   4. GEMMA2_STATIC in two units of one program, each with its private copy
#   5. embedding hygiene: no external symbol outside gemma2_, no writable data, no macro outside
#      GEMMA2_* / GEMMA2__* (besides _DEFAULT_SOURCE), the version in line 1 = the version macros
#   6. the test program with each build switch, and with a counting allocator that checks every
#      allocation the library made is freed
#
# Run from the repository root. Environment: GCC, CLANG, GXX, CLANGXX, TCC (compilers; a missing
# one is skipped with a note, except gcc); PORT_OUT (build folder, default tests/portability/build);
# PORT_SUITES=0 skips step 6, the slowest.
set -eu

GCC=${GCC:-gcc}
CLANG=${CLANG:-clang}
GXX=${GXX:-g++}
CLANGXX=${CLANGXX:-clang++}
TCC=${TCC:-tcc}
OUT=${PORT_OUT:-tests/portability/build}
P=tests/portability
LIBS="-lm -lpthread"

# What a strict host project might use. No suppression is needed: every warning these raised was
# fixed in the header.
STRICT="-Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wcast-qual -Wundef -Werror"
STRICT_CXX="-Wall -Wextra -Wpedantic -Werror"
# The test program's own flags (as the Makefile's): its test code is not held to STRICT.
SUITE="-std=c99 -O2 -Wall -Wextra -Werror"
SWITCHES="GEMMA2_NO_SIMD GEMMA2_NO_THREADS GEMMA2_NO_MMAP GEMMA2_STATIC"

mkdir -p "$OUT"
have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "== portability: $*"; }
run() { "$@" || { echo "portability: FAILED: $*"; exit 1; }; }

# ---- 1. strict warnings
# gcc reports unused functions and flow warnings only when it generates code, so it compiles
# (-O0 for the matrix: those warnings do not depend on the level; -O2 and -O3 below for the
# flow ones); clang reports them all from its front end, so -fsyntax-only is enough for it.
for std in c99 c11; do
    for sw in "" $SWITCHES "GEMMA2_NO_SIMD -DGEMMA2_NO_THREADS -DGEMMA2_NO_MMAP"; do
        d=${sw:+-D$sw}
        run $GCC -std=$std -O0 $STRICT $d -c $P/tp_impl.c -o "$OUT/strict.o"
        say "$GCC -std=$std${d:+ $d}: the implementation compiles with STRICT warnings"
        if have $CLANG; then
            run $CLANG -std=$std $STRICT $d -fsyntax-only $P/tp_impl.c
            say "$CLANG -std=$std${d:+ $d}: the implementation compiles with STRICT warnings"
        fi
    done
done
have $CLANG || say "clang: skipped ($CLANG not installed)"
run $GCC -std=c99 -O2 $STRICT -c $P/tp_impl.c -o "$OUT/tp_impl.o"
say "$GCC -std=c99 -O2: the implementation compiles with STRICT warnings"
run $GCC -std=c11 -O3 -march=native $STRICT -c $P/tp_impl.c -o "$OUT/strict.o"
say "$GCC -std=c11 -O3 -march=native: the implementation compiles with STRICT warnings"
for cxx in $GXX $CLANGXX; do
    if ! have $cxx; then say "$cxx: skipped (not installed)"; continue; fi
    for std in c++11 c++20; do
        run $cxx -x c++ -std=$std -O0 $STRICT_CXX -c $P/tp_impl.c -o "$OUT/strict.o"
        say "$cxx -std=$std: the implementation compiles as C++ with $STRICT_CXX"
    done
done

# ---- 2. tcc: the scalar build (tcc has no SIMD intrinsics, and no atomics, so no thread pool).
# The whole suite takes tcc's unoptimised code many minutes; these cases (the JSON reader, the
# forward pass on four fixtures, chat templates) take seconds.
if have $TCC; then
    run $TCC -DGEMMA2_NO_SIMD -DGEMMA2_NO_THREADS -o "$OUT/gemma2_test_tcc" tests/gemma2_test.c $LIBS
    for f in json/ model/tiny-gqa model/tiny-27b-style model/tiny-mha-f32-sharded model/long-odd chat/; do
        run "$OUT/gemma2_test_tcc" $f >"$OUT/tcc.log" 2>&1 || { cat "$OUT/tcc.log"; exit 1; }
        say "tcc, GEMMA2_NO_SIMD + GEMMA2_NO_THREADS: tests/gemma2_test $f: $(tail -n 1 "$OUT/tcc.log")"
    done
else
    say "tcc: skipped ($TCC not installed; Debian: apt-get install tcc)"
fi

# ---- 3. one implementation unit, two units with the declarations only, one program
for u in model tokenizer main; do run $GCC -std=c99 -O2 $STRICT -c $P/tp_$u.c -o "$OUT/tp_$u.o"; done
run $GCC -o "$OUT/tp_shared" "$OUT/tp_impl.o" "$OUT/tp_model.o" "$OUT/tp_tokenizer.o" "$OUT/tp_main.o" $LIBS
r=$("$OUT/tp_shared") || { echo "portability: FAILED: $OUT/tp_shared: $r"; exit 1; }
say "implementation in one unit, declarations in two ($GCC, STRICT): $r"

# ---- 4. GEMMA2_STATIC in two units of one program
for u in model tokenizer; do run $GCC -std=c99 -O1 $STRICT -DTP_STATIC -c $P/tp_$u.c -o "$OUT/tp_static_$u.o"; done
ext=$(nm -g --defined-only "$OUT/tp_static_model.o" "$OUT/tp_static_tokenizer.o" | awk 'NF == 3 && $3 ~ /^gemma2_/ {print $3}')
[ -z "$ext" ] || { echo "portability: FAILED: GEMMA2_STATIC left external symbols: $ext"; exit 1; }
run $GCC -o "$OUT/tp_static" "$OUT/tp_static_model.o" "$OUT/tp_static_tokenizer.o" "$OUT/tp_main.o" $LIBS
r=$("$OUT/tp_static") || { echo "portability: FAILED: $OUT/tp_static: $r"; exit 1; }
say "GEMMA2_STATIC in two units, a private copy each, nothing external ($GCC, STRICT): $r"

# ---- 5. embedding hygiene
# Symbols: the implementation's external names all start with gemma2_ (nm -g: defined, external).
bad=$(nm -g --defined-only "$OUT/tp_impl.o" | awk 'NF == 3 && $3 !~ /^gemma2_/ {print $3}')
[ -z "$bad" ] || { echo "portability: FAILED: external symbols outside gemma2_: $bad"; exit 1; }
say "nm: every external symbol of the implementation starts with gemma2_"
# Writable data: none (d/D .data, b/B .bss, g/G/s/S small data, v/V weak data). Compiled without
# PIC, where constant tables holding pointers are read-only data (r) rather than relocated .data.
for sw in "" $SWITCHES; do
    d=${sw:+-D$sw}
    run $GCC -std=c99 -O1 -fno-pic $d -c $P/tp_impl.c -o "$OUT/nopic.o"
    w=$(nm "$OUT/nopic.o" | awk 'NF == 3 && $2 ~ /^[dDbBgGsSvV]$/ {print $3}')
    [ -z "$w" ] || { echo "portability: FAILED: writable global or static data ($d): $w"; exit 1; }
done
say "nm: no writable global or static data (no .data/.bss symbols), plain and with each switch"
# Macros: the names the header adds to those its system headers define. The baseline unit
# includes every system header gemma2.h includes (those that exist here) under the same
# _DEFAULT_SOURCE; the header may then only add GEMMA2_* / GEMMA2__* names.
: >"$OUT/sys.h"
grep -o '^ *# *include <[^>]*>' gemma2.h | sed 's/.*<\(.*\)>/\1/' | sort -u | while read -r h; do
    if echo "#include <$h>" | $GCC -std=c99 -E -x c - >/dev/null 2>&1; then echo "#include <$h>" >>"$OUT/sys.h"; fi
done
for impl in 0 1; do
    if [ $impl = 1 ]; then pre="#define GEMMA2_IMPLEMENTATION"; base="#define _DEFAULT_SOURCE 1"; else pre=; base=; fi
    printf '%s\n#include "%s/sys.h"\n' "$base" "$(pwd)/$OUT" >"$OUT/macros_base.c"
    printf '%s\n#include "%s/gemma2.h"\n#include "%s/sys.h"\n' "$pre" "$(pwd)" "$(pwd)/$OUT" >"$OUT/macros_lib.c"
    for u in base lib; do $GCC -std=c99 -dM -E "$OUT/macros_$u.c" | awk '{print $2}' | sed 's/(.*//' | sort -u >"$OUT/macros_$u.txt"; done
    added=$(comm -13 "$OUT/macros_base.txt" "$OUT/macros_lib.txt" | grep -v -e '^GEMMA2_' -e '^_DEFAULT_SOURCE$' -e '^GEMMA2_IMPLEMENTATION$' || true)
    [ -z "$added" ] || { echo "portability: FAILED: the header defines macros outside GEMMA2_*: $added"; exit 1; }
done
say "macros: the header defines only GEMMA2_* / GEMMA2__* (and _DEFAULT_SOURCE under GEMMA2_IMPLEMENTATION)"
# Version: the macros agree with each other and with line 1.
v=$(printf '#include "gemma2.h"\nGEMMA2_VERSION_MAJOR.GEMMA2_VERSION_MINOR.GEMMA2_VERSION_PATCH GEMMA2_VERSION_STRING\n' |
    $GCC -E -P -I. -x c - | tail -n 1 | tr -d ' ')
num=${v%%\"*}; str=$(echo "$v" | sed 's/^[^"]*"\(.*\)"$/\1/')
[ "$num" = "$str" ] || { echo "portability: FAILED: GEMMA2_VERSION_MAJOR.MINOR.PATCH is $num, GEMMA2_VERSION_STRING \"$str\""; exit 1; }
head -n 1 gemma2.h | grep -q "^/\* gemma2.h - v$str - " || { echo "portability: FAILED: line 1 of gemma2.h does not say v$str"; exit 1; }
say "version: GEMMA2_VERSION_* and line 1 of gemma2.h say $str"

# ---- 6. the test program with each switch, and with a counting allocator
if [ "${PORT_SUITES:-1}" = 0 ]; then say "the test program's switch builds: skipped (PORT_SUITES=0)"; exit 0; fi
# The whole suite each, but GEMMA2_NO_SIMD: its scalar kernels make the session, generation and
# sampler suites take minutes, and the default build's kernel tests already hold every SIMD set
# to those kernels; here the forward pass on every fixture and the kernel tests run.
# Two builds at a time, then two runs at a time (each run's output in its own log, reported in
# order): the suites share nothing on disk (temporary folders are mkdtemp's).
suite_args() { [ "$1" != GEMMA2_NO_SIMD ] || echo "model/ kernels/"; }
pair() {
    pids=""
    for sw in "$@"; do
        if [ $sw = alloc ]; then $GCC $SUITE -o "$OUT/gemma2_test_$sw" $P/alloc_suite.c $LIBS >"$OUT/build_$sw.log" 2>&1 &
        else $GCC $SUITE -D$sw -o "$OUT/gemma2_test_$sw" tests/gemma2_test.c $LIBS >"$OUT/build_$sw.log" 2>&1 & fi
        pids="$pids $!"
    done
    for pid in $pids; do wait $pid || { cat "$OUT"/build_*.log; echo "portability: FAILED: a switch build"; exit 1; }; done
    pids=""
    for sw in "$@"; do
        "$OUT/gemma2_test_$sw" $(suite_args $sw) >"$OUT/suite_$sw.log" 2>&1 &
        pids="$pids $!"
    done
    i=0
    for pid in $pids; do
        i=$((i + 1)); eval "sw=\${$i}" # the i-th name given
        if ! wait $pid; then tail -n 40 "$OUT/suite_$sw.log"; echo "portability: FAILED: the suite with $sw"; exit 1; fi
        if [ $sw = alloc ]; then say "$GCC, GEMMA2_MALLOC/REALLOC/FREE counting: tests/gemma2_test: $(tail -n 2 "$OUT/suite_$sw.log" | tr '\n' ' ')"
        else say "$GCC -D$sw: tests/gemma2_test $(suite_args $sw): $(tail -n 1 "$OUT/suite_$sw.log")"; fi
    done
}
pair GEMMA2_NO_SIMD GEMMA2_NO_THREADS
pair GEMMA2_NO_MMAP GEMMA2_STATIC
pair alloc
