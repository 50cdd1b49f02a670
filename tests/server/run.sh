#!/usr/bin/env bash
# make test-server: examples/server on the tiny-realvocab fixture (with the real tokenizer), tested from
# outside by tests/server/test.mjs with curl, node's http, raw sockets and the official `openai` npm
# package. Each given server binary is tested in turn (make passes the -O2 build and an ASan + UBSan
# build; the ASan run also checks for leaks at exit). Skipped with a note when curl or node is missing;
# the openai part is skipped with a note when npm cannot install the package (offline).
#
#   tests/server/run.sh CLI SERVER...
set -u
cd "$(dirname "$0")/../.."
cli=$1
shift
model=tests/data/models/tiny-realvocab
tok=tests/data/tokenizer/tokenizer.json

for t in curl node; do
  if ! command -v $t >/dev/null 2>&1; then echo "== server: skipped ($t is not installed)"; exit 0; fi
done

# The openai package, installed at test time into tests/server/npm (not committed).
npmdir=tests/server/npm
openai_arg=
if [ -f $npmdir/node_modules/openai/package.json ]; then
  openai_arg=$npmdir
elif command -v npm >/dev/null 2>&1; then
  mkdir -p $npmdir
  [ -f $npmdir/package.json ] || echo '{"name": "gemma2-server-test", "private": true}' > $npmdir/package.json
  if timeout 180 npm install --prefix $npmdir --no-audit --no-fund --silent openai >$npmdir/install.log 2>&1; then
    openai_arg=$npmdir
  else
    echo "== server: note: npm could not install openai (offline?): the openai client part is skipped (log: $npmdir/install.log)"
  fi
else
  echo "== server: note: npm is not installed: the openai client part is skipped"
fi

status=0
for server in "$@"; do
  log=$(mktemp -d)
  echo "== server: $server"
  ASAN_OPTIONS=detect_leaks=1:exitcode=86 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$server" -m $model --tokenizer $tok --port 0 --parallel 2 --queue 6 -c 4096 -t 1 >"$log/out" 2>"$log/err" &
  pid=$!
  port=
  for _ in $(seq 600); do
    port=$(sed -n 's/^server: listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log/out")
    [ -n "$port" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    echo "server did not start:"; cat "$log/out" "$log/err"; kill $pid 2>/dev/null; status=1; continue
  fi
  timeout 900 node tests/server/test.mjs "$port" "$cli" $model $tok $openai_arg || status=1
  # a clean exit on SIGTERM: every slot, queued request and connection freed (LeakSanitizer checks it)
  kill -TERM $pid
  wait $pid
  rc=$?
  if [ $rc -ne 0 ] || grep -q "ERROR: \(Address\|Leak\)Sanitizer\|runtime error" "$log/err"; then
    echo "server exited with $rc:"; tail -n 60 "$log/err"; status=1
  else
    echo "server: clean exit"
  fi
  rm -rf "$log"
done
exit $status
