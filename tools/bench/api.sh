#!/usr/bin/env bash
# API throughput on loopback with wrk (Debian package `wrk`): POST create-task and GET
# status, against `sie serve` with no in-process workers (so the engine does not compete
# for the CPU), then the latency from a task's creation to its first step with one idle
# worker. Usage: tools/bench/api.sh [path/to/sie]   (default target/release/sie)
set -euo pipefail
sie=${1:-target/release/sie}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

start() { # start DATA_DIR WORKERS -> prints base URL and key to files
  "$sie" serve --model tiny --listen 127.0.0.1:0 --data-dir "$1" --workers "$2" \
    --org-queue-cap 100000000 --global-queue-cap 100000000 \
    --key-rate-limit 0 --org-rate-limit 0 > "$1.out" 2>/dev/null &
  for _ in $(seq 100); do grep -q '^api key:' "$1.out" 2>/dev/null && break; sleep 0.2; done
}

start "$dir/api" 0
addr=$(grep -o 'http://127.0.0.1:[0-9]*' "$dir/api.out" | head -1)
export SIE_KEY=$(grep '^api key:' "$dir/api.out" | awk '{print $3}')
base="$addr/api/beta/organizations/default/inference-endpoints/stable-diffusion-2-1"

url=$(curl -s -X POST "$base" -H "Salad-Api-Key: $SIE_KEY" -H 'Content-Type: application/json' \
  -d '{"modelInputs": {"prompt": "x"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["resultUrl"])')
echo "== GET status of a queued task, queue of 1 (2 threads, 16 connections, 15 s)"
wrk -t2 -c16 -d15s --latency -s tools/bench/get.lua "$url" | grep -E 'Requests/sec|50%|99%|Non-2xx|requests in'
echo "== POST create-task (2 threads, 16 connections, 15 s)"
wrk -t2 -c16 -d15s --latency -s tools/bench/post.lua "$base" | grep -E 'Requests/sec|50%|99%|Non-2xx|requests in'
echo "== GET status of a queued task behind the queue POST just filled (2 threads, 16 connections, 15 s)"
wrk -t2 -c16 -d15s --latency -s tools/bench/get.lua "$url" | grep -E 'Requests/sec|50%|99%|Non-2xx|requests in'

echo "== creation to first step, one idle worker (5 tasks of 50 steps at 64x64)"
start "$dir/one" 1
addr=$(grep -o 'http://127.0.0.1:[0-9]*' "$dir/one.out" | head -1)
key=$(grep '^api key:' "$dir/one.out" | awk '{print $3}')
base="$addr/api/beta/organizations/default/inference-endpoints/stable-diffusion-2-1"
python3 - "$base" "$key" <<'PY'
import json, sys, time, urllib.request
base, key = sys.argv[1], sys.argv[2]
def call(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body, headers={"Salad-Api-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
for i in range(5):
    time.sleep(1.5)  # let the worker go idle
    t0 = time.perf_counter()
    url = call("POST", base, json.dumps({"modelInputs": {"prompt": "x", "num_inference_steps": 50, "width": 64, "height": 64, "seed": i}}).encode())["resultUrl"]
    t_accepted = time.perf_counter()
    while call("GET", url)["status"] == "pending":
        time.sleep(0.05)
    t = call("GET", url)["modelOutputs"]["$timings"]
    print(f"task {i}: 202 after {1000*(t_accepted-t0):.1f} ms; leased {t['queue']} ms after creation; "
          f"first step done {t['queue'] + t['first_step']} ms after creation (of which text encoding and one UNet step {t['first_step']} ms)")
PY
