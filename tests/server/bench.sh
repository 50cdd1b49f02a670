#!/usr/bin/env bash
# make bench-server: starts examples/server on MODEL_DIR (one slot, --port 0) and runs
# tests/server/bench_server against it. THREADS (default 2) and N_TOKENS (default 200) from the
# environment; the fixture's tokenizer is used when the folder has none.
#
#   tests/server/bench.sh [MODEL_DIR]
set -u
cd "$(dirname "$0")/../.."
model=${1:-tests/data/models/tiny-realvocab}
threads=${THREADS:-2}
ntok=${N_TOKENS:-200}
tok=
[ -f "$model/tokenizer.json" ] || [ -f "$model/tokenizer.model" ] || tok=tests/data/tokenizer/tokenizer.json
log=$(mktemp -d)
examples/server -m "$model" ${tok:+--tokenizer $tok} --port 0 --parallel 1 -t "$threads" >"$log/out" 2>"$log/err" &
pid=$!
port=
for _ in $(seq 3000); do
  port=$(sed -n 's/^server: listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log/out")
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then echo "server did not start:"; cat "$log/out" "$log/err"; kill $pid 2>/dev/null; exit 1; fi
tests/server/bench_server "$model" "$port" "$ntok" "$threads" $tok
rc=$?
kill -TERM $pid
wait $pid
rm -rf "$log"
exit $rc
