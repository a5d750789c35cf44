#!/usr/bin/env bash
# The public API against its own OpenAPI document: Schemathesis (pinned, in a virtualenv)
# fuzzes every operation of /openapi.json on a live `sie serve --model tiny` (the real
# binary, 127.0.0.1 on a free port, a temporary data directory), once with the API key
# `sie serve` prints on first start and once with none. Every answer must be no 5xx, with
# a documented status, content type, headers and body. Bounded by --max-examples, so a run
# takes a few minutes; run by .ci/run after the cargo tests.
#
#   tools/ci/schemathesis.sh            # uses target/debug/sie (build it first)
#   SIE=path/to/sie ST_EXAMPLES=200 tools/ci/schemathesis.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
sie=${SIE:-$root/target/debug/sie}
venv=${ST_VENV:-$root/target/schemathesis-venv}
examples=${ST_EXAMPLES:-100}
version=4.32.5

[ -x "$sie" ] || { echo "no sie binary at $sie; build it with cargo build -p sie" >&2; exit 1; }
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
root_url="http://127.0.0.1:$port"
# Rate limits high enough that the fuzzer reaches the handlers (429 is documented and
# checked all the same when it comes); one worker runs what the fuzzer queues.
"$sie" serve --model tiny --data-dir "$work/data" --listen "127.0.0.1:$port" \
  --key-rate-limit 1000 --key-burst 1000 --org-rate-limit 1000 --org-burst 1000 \
  >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
key=
for _ in $(seq 1 240); do
  key=$(sed -n 's/^api key: //p' "$work/serve.out" | head -n 1)
  [ -n "$key" ] && python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "$root_url/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.err" >&2; echo "sie serve exited" >&2; exit 1; }
  sleep 0.5
done
[ -n "$key" ] || { cat "$work/serve.err" >&2; echo "sie serve printed no API key" >&2; exit 1; }

# The organization `sie serve` makes, so the keyed run reaches past the 404 of an unknown one.
cat >"$work/schemathesis.toml" <<TOML
[parameters]
"path.org" = "default"
TOML

# One worker: with more, Python 3.11's parser is entered from several threads and
# Schemathesis' coverage phase fails on its own ("AST constructor recursion depth mismatch").
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
# From a file with the server as base URL: loaded from its URL, Schemathesis would leave
# the document's own operation (GET /openapi.json) out.
python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())' \
  "$root_url/openapi.json" >"$work/openapi.json"
run() {
  # From the temporary directory, where Schemathesis leaves its cache (.schemathesis/).
  (cd "$work" && "$venv/bin/st" --no-color --config-file "$work/schemathesis.toml" run "$work/openapi.json" --url "$root_url" \
    --checks "$checks" --max-examples "$examples" --seed 1 --workers 1 \
    --phases examples,coverage,fuzzing,stateful --request-timeout 30 --warnings off "$@")
}
status=0
echo "== with the API key"
run -H "Salad-Api-Key: $key" || status=$?
echo "== without a key"
run || status=$?
if [ "$status" -ne 0 ]; then
  echo "== sie serve's log (last lines)"
  tail -n 50 "$work/serve.err"
fi
exit "$status"
