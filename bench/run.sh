#!/usr/bin/env bash
# edaflow's benchmark workloads (see bench/README.md), median of REPS runs each.
#
#   bench/run.sh                 # everything: w1 w2 w2b w3 scale reload query tracked
#   bench/run.sh w1 w3           # a subset
#   REPS=5 bench/run.sh w1       # more repetitions
#
# Needs wrk and curl (apt-get install wrk curl). Builds the release binary and examples
# first. Servers bind 127.0.0.1 on PORT (default 18900) and are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
PORT="${PORT:-18900}"
OUT="${OUT:-target/bench}"
mkdir -p "$OUT"
URL="http://127.0.0.1:$PORT"
POST_LUA="$(pwd)/bench/wrk/post.lua"
BIN=target/release/edaflow

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
metric() { curl -sf "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
# report NAME VALUES... -> "NAME median (min..max)"
report() {
  local name="$1"; shift
  local sorted; sorted="$(printf '%s\n' "$@" | sort -g)"
  printf '%-44s %12s   (%s .. %s)\n' "$name" "$(median <<<"$sorted")" "$(head -1 <<<"$sorted")" "$(tail -1 <<<"$sorted")"
}

start_edaflow() { # FLOW -> sets PID, waits for /healthz
  "$BIN" run "$1" --listen "127.0.0.1:$PORT" --no-watch --log-format json >"$OUT/edaflow.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "$URL/healthz" && return 0; sleep 0.05; done
  echo "edaflow did not start; see $OUT/edaflow.log" >&2; exit 1
}
stop_edaflow() { kill -INT "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap 'kill "${PID:-}" 2>/dev/null || true' EXIT

wrk_run() { # DURATION -> wrk output with a RESULT line
  wrk -t1 -c32 -d"$1" --latency -s "$POST_LUA" "$URL/topics/orderCreated"
}

w1() {
  local rps=() p50=() p99=() hwm=() idle=() lost=()
  for rep in $(seq "$REPS"); do
    start_edaflow bench/flows/w1.toml
    sleep 0.5; idle+=("$(( $(rss_kib "$PID") / 1024 ))")
    wrk_run 3s >/dev/null
    local before; before="$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')"
    local out; out="$(wrk_run 10s)"; echo "$out" >"$OUT/w1-wrk-$rep.txt"
    local line; line="$(grep '^RESULT' <<<"$out")"
    for _ in $(seq 100); do [ "$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')" = "$(metric 'edaflow_http_requests_total{outcome="accepted"}')" ] && break; sleep 0.05; done
    local after; after="$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')"
    rps+=("$(field rps "$line")"); p50+=("$(awk -v u="$(field p50_us "$line")" 'BEGIN{print u/1000}')")
    p99+=("$(awk -v u="$(field p99_us "$line")" 'BEGIN{print u/1000}')")
    hwm+=("$(awk -v k="$(hwm_kib "$PID")" 'BEGIN{printf "%.1f", k/1024}')")
    lost+=("$(( $(field requests "$line") - (after - before) ))")
    say "w1 rep $rep: $line handled=$((after - before))"
    stop_edaflow
  done
  echo "== W1 HTTP ingest, memory broker (median of $REPS) =="
  report "req/s" "${rps[@]}"; report "p50 ms" "${p50[@]}"; report "p99 ms" "${p99[@]}"
  report "peak RSS MiB (VmHWM)" "${hwm[@]}"; report "idle RSS MiB (VmRSS after start)" "${idle[@]}"
  report "wrk requests - events handled" "${lost[@]}"
}

w2() {
  local cps=() hwm=()
  for rep in $(seq "$REPS"); do
    local line; line="$(target/release/examples/w2_chain bench/flows/w2.toml 200000 2>/dev/null | grep '^RESULT')"
    say "w2 rep $rep: $line"
    cps+=("$(field chains_per_s "$line")"); hwm+=("$(awk -v k="$(field peak_rss_kib "$line")" 'BEGIN{printf "%.1f", k/1024}')")
  done
  echo "== W2 three-hop Rhai chain, 200,000 events from a generator (median of $REPS) =="
  report "chains/s" "${cps[@]}"; report "peak RSS MiB" "${hwm[@]}"
}

w2b() {
  local rps=() p99=() cps=() drain=() hwm=() refused=()
  for rep in $(seq "$REPS"); do
    start_edaflow bench/flows/w2b.toml
    wrk_run 3s >/dev/null
    for _ in $(seq 200); do [ "$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')" = "$(metric 'edaflow_http_requests_total{outcome="accepted"}')" ] && break; sleep 0.05; done
    local c0 a0; c0="$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')"; a0="$(metric 'edaflow_http_requests_total{outcome="backpressured"}')"
    local out; out="$(wrk_run 10s)"; echo "$out" >"$OUT/w2b-wrk-$rep.txt"
    local t_end; t_end="$(date +%s.%N)"
    local line; line="$(grep '^RESULT' <<<"$out")"
    for _ in $(seq 400); do [ "$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')" = "$(metric 'edaflow_http_requests_total{outcome="accepted"}')" ] && break; sleep 0.05; done
    drain+=("$(awk -v a="$(date +%s.%N)" -v b="$t_end" 'BEGIN{printf "%.2f", a-b}')")
    local c1; c1="$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')"
    local a1; a1="$(metric 'edaflow_http_requests_total{outcome="backpressured"}')"
    rps+=("$(field rps "$line")"); p99+=("$(awk -v u="$(field p99_us "$line")" 'BEGIN{print u/1000}')")
    cps+=("$(awk -v c=$((c1 - c0)) -v d="$(field duration_us "$line")" 'BEGIN{printf "%.0f", c/(d/1e6)}')")
    refused+=("$((a1 - a0))")
    hwm+=("$(awk -v k="$(hwm_kib "$PID")" 'BEGIN{printf "%.1f", k/1024}')")
    say "w2b rep $rep: $line completions=$((c1 - c0)) refused_503=$((a1 - a0))"
    stop_edaflow
  done
  echo "== W2b the W2 chain fed through HTTP (median of $REPS) =="
  report "POST req/s (wrk)" "${rps[@]}"; report "POST p99 ms" "${p99[@]}"
  report "chain completions/s over the wrk window" "${cps[@]}"; report "drain after wrk ended, s" "${drain[@]}"
  report "requests refused 503 (back-pressure)" "${refused[@]}"; report "peak RSS MiB" "${hwm[@]}"
}

w3() {
  local total=() drain=() p50=() p99=() max=() hwm=()
  for rep in $(seq "$REPS"); do
    local line; line="$(target/release/examples/w3_deferred bench/flows/w3.toml 20000 2>/dev/null | grep '^RESULT')"
    say "w3 rep $rep: $line"
    total+=("$(field total_ms "$line")"); drain+=("$(field drain_jobs_per_s "$line")")
    p50+=("$(field late_p50_ms "$line")"); p99+=("$(field late_p99_ms "$line")"); max+=("$(field late_max_ms "$line")")
    hwm+=("$(awk -v k="$(field peak_rss_kib "$line")" 'BEGIN{printf "%.1f", k/1024}')")
  done
  echo "== W3 20,000 jobs, 1 s delay, one burst, 50 workers (median of $REPS) =="
  report "total ms (burst start to last job)" "${total[@]}"; report "drain jobs/s" "${drain[@]}"
  report "lateness p50 ms" "${p50[@]}"; report "lateness p99 ms" "${p99[@]}"; report "lateness max ms" "${max[@]}"
  report "peak RSS MiB" "${hwm[@]}"
}

query() {
  local rps=() p50=() p99=() errs=()
  for rep in $(seq "$REPS"); do
    start_edaflow flows/cqrs.toml
    curl -sf -XPOST -H 'Content-Type: application/json' -d '{"order_id": 1, "customer": "ann", "total": 49.99}' "$URL/topics/orders.command.place" >/dev/null
    for _ in $(seq 100); do curl -sf -XPOST -H 'Content-Type: application/json' -d '{"order_id": 1}' "$URL/query/orders.query.get" | grep -q '"found":true' && break; sleep 0.05; done
    wrk -t1 -c32 -d3s -s bench/wrk/query.lua "$URL/query/orders.query.get" >/dev/null
    local line; line="$(wrk -t1 -c32 -d10s --latency -s bench/wrk/query.lua "$URL/query/orders.query.get" | grep '^RESULT')"
    say "query rep $rep: $line"
    rps+=("$(field rps "$line")"); p50+=("$(awk -v u="$(field p50_us "$line")" 'BEGIN{print u/1000}')")
    p99+=("$(awk -v u="$(field p99_us "$line")" 'BEGIN{print u/1000}')"); errs+=("$(field err_status "$line")")
    stop_edaflow
  done
  echo "== query round trip, POST /query/orders.query.get answered from a store (median of $REPS) =="
  report "req/s" "${rps[@]}"; report "p50 ms" "${p50[@]}"; report "p99 ms" "${p99[@]}"; report "non-2xx answers" "${errs[@]}"
}

tracked() {
  local plain=() with=()
  for rep in $(seq "$REPS"); do
    plain+=("$(field chains_per_s "$(target/release/examples/w2_chain bench/flows/w2.toml 200000 2>/dev/null | grep '^RESULT')")")
    with+=("$(field chains_per_s "$(target/release/examples/w2_chain bench/flows/w2_tracked.toml 200000 2>/dev/null | grep '^RESULT')")")
    say "tracked rep $rep: plain ${plain[-1]} tracked ${with[-1]}"
  done
  echo "== chain tracking overhead on W2, alternating runs (median of $REPS) =="
  report "W2 chains/s, untracked" "${plain[@]}"; report "W2 chains/s, with [chains.w2]" "${with[@]}"
}

scale() {
  echo "== queue scaling: 10^4 .. 10^6 pending items (one run) =="
  target/release/examples/queue_scale 2>/dev/null | grep '^RESULT'
}

reload() {
  echo "== hot reload latency (one run of 50 edits each) =="
  target/release/examples/reload_latency 2>/dev/null | grep '^RESULT'
}

say "building release binary and examples"
cargo build --release --bin edaflow --examples >/dev/null 2>&1
sel=("$@"); [ "${#sel[@]}" -gt 0 ] || sel=(w1 w2 w2b w3 scale reload query tracked)
echo "edaflow $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
for w in "${sel[@]}"; do "$w"; echo; done
