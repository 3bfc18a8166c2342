#!/usr/bin/env bash
# edaflow's benchmark workloads (see bench/README.md), median of REPS runs each.
#
#   bench/run.sh                 # everything: w1 w2 w2b w3 scale reload query tracked
#                                #   plus, on a private redis-server: w1r w2r w2r8 w2r32 w3r w3r_inproc queryr
#   bench/run.sh w1 w3           # a subset
#   REPS=5 bench/run.sh w1       # more repetitions
#   NOBUILD=1 BIN=/tmp/a bench/run.sh queryr   # a saved binary, no rebuild (A/B runs)
#
# Needs wrk and curl (apt-get install wrk curl). Builds the release binary and the
# harnesses (bench/harness/, built as cargo examples) first. Servers bind 127.0.0.1 on
# PORT (default 18900) and are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
PORT="${PORT:-18900}"
OUT="${OUT:-target/bench}"
mkdir -p "$OUT"
URL="http://127.0.0.1:$PORT"
POST_LUA="$(pwd)/bench/wrk/post.lua"
BIN="${BIN:-target/release/edaflow}" # BIN=/tmp/edaflow-a for A/B runs of a saved binary

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

start_edaflow() { # FLOW [ARGS...] -> sets PID, waits for /healthz
  local flow="$1"; shift
  "$BIN" run "$flow" --listen "127.0.0.1:$PORT" --no-watch --log-format json "$@" >"$OUT/edaflow.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "$URL/healthz" && return 0; sleep 0.05; done
  echo "edaflow did not start; see $OUT/edaflow.log" >&2; exit 1
}
stop_edaflow() { kill -INT "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap 'kill "${PID:-}" "${RPID:-}" 2>/dev/null || true' EXIT

# The Redis workloads run on a redis-server of their own (RPORT, default 18979), without
# persistence unless AOF=yes, started fresh for each workload and stopped by PID.
RPORT="${RPORT:-18979}"
RURL="redis://127.0.0.1:$RPORT"
start_redis() {
  RDIR="$(mktemp -d)"
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly "${AOF:-no}" --dir "$RDIR" >"$OUT/redis.log" 2>&1 &
  RPID=$!
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server did not start; see $OUT/redis.log" >&2; exit 1
}
stop_redis() { kill "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; rm -rf "$RDIR"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system CPU, in clock ticks
# Commands Redis executed (top level and inside scripts), and script calls (round trips
# that run a script): from INFO commandstats.
redis_calls() { redis-cli -p "$RPORT" info commandstats | awk -F'[:=,]' '/^cmdstat_/ {s += $3} END {print s + 0}'; }
redis_evals() { redis-cli -p "$RPORT" info commandstats | awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {s += $3} END {print s + 0}'; }
redis_top() { redis-cli -p "$RPORT" info stats | awk -F: '/^total_commands_processed:/ {print $2 + 0}'; }

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
    acc+=("$(awk -v a=$((a1 - a0)) -v us="$(field duration_us "$line")" 'BEGIN{printf "%.0f", a / (us / 1e6)}')")
    rej+=("$(field err_status "$line")")
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

w1r() {
  local rps=() acc=() rej=() p99=() per=() evals=() share=() hwm=() lost=()
  for rep in $(seq "$REPS"); do
    start_redis
    start_edaflow "${W1R_FLOW:-bench/flows/w1_c16.toml}" --broker "$RURL"
    wrk_run 3s >/dev/null
    for _ in $(seq 200); do [ "$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')" = "$(metric 'edaflow_http_requests_total{outcome="accepted"}')" ] && break; sleep 0.05; done
    local before c0 e0 r0 p0; before="$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')"
    c0="$(redis_calls)"; e0="$(redis_evals)"; r0="$(ticks "$RPID")"; p0="$(ticks "$PID")"
    local a0; a0="$(metric 'edaflow_http_requests_total{outcome="accepted"}')"
    local out; out="$(wrk_run 10s)"; echo "$out" >"$OUT/w1r-wrk-$rep.txt"
    # wrk counts every answer; only a 202 put an event in Redis (a 503 is back-pressure).
    local a1; a1="$(metric 'edaflow_http_requests_total{outcome="accepted"}')"
    local line; line="$(grep '^RESULT' <<<"$out")"
    for _ in $(seq 200); do [ "$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')" = "$(metric 'edaflow_http_requests_total{outcome="accepted"}')" ] && break; sleep 0.05; done
    local after; after="$(metric 'edaflow_subscriber_handled_total{subscriber="count"}')"
    local n=$((after - before)) r1 p1; r1="$(ticks "$RPID")"; p1="$(ticks "$PID")"
    rps+=("$(field rps "$line")"); p99+=("$(awk -v u="$(field p99_us "$line")" 'BEGIN{print u/1000}')")
    acc+=("$(awk -v a=$((a1 - a0)) -v us="$(field duration_us "$line")" 'BEGIN{printf "%.0f", a / (us / 1e6)}')")
    rej+=("$(field err_status "$line")")
    per+=("$(awk -v c=$(( $(redis_calls) - c0 )) -v n="$n" 'BEGIN{printf "%.1f", c/n}')")
    evals+=("$(awk -v c=$(( $(redis_evals) - e0 )) -v n="$n" 'BEGIN{printf "%.2f", c/n}')")
    share+=("$(awk -v r=$((r1 - r0)) -v p=$((p1 - p0)) 'BEGIN{printf "%.2f", r/p}')")
    hwm+=("$(awk -v k="$(hwm_kib "$PID")" 'BEGIN{printf "%.1f", k/1024}')")
    lost+=("$(( $(field requests "$line") - n ))")
    say "w1r rep $rep: $line handled=$n redis_cpu_ticks=$((r1 - r0)) edaflow_cpu_ticks=$((p1 - p0))"
    stop_edaflow; stop_redis
  done
  echo "== W1 HTTP ingest on Redis, ${W1R_FLOW:-bench/flows/w1_c16.toml} (loopback, no persistence; median of $REPS) =="
  report "req/s (every answer)" "${rps[@]}"; report "accepted req/s (202)" "${acc[@]}"
  report "non-2xx answers (503 back-pressure)" "${rej[@]}"
  report "p99 ms" "${p99[@]}"; report "peak RSS MiB" "${hwm[@]}"
  report "Redis commands per event (incl. in scripts)" "${per[@]}"; report "script calls per event" "${evals[@]}"
  report "Redis CPU / edaflow CPU" "${share[@]}"; report "wrk requests - events handled" "${lost[@]}"
}

# An example on Redis: RESULT line plus Redis commands per chain/job and the CPU split
# (the example's own CPU from /usr/bin/time).
run_on_redis() { # NAME EXAMPLE ARGS... -> sets LINE, PER, EVALS, SHARE
  local c0 e0 r0; c0="$(redis_calls)"; e0="$(redis_evals)"; r0="$(ticks "$RPID")"
  local out; out="$( { BENCH_BROKER="$RURL" /usr/bin/time -f 'TIME %U %S' "target/release/examples/$2" "${@:3}" 2>&1 >&3 | grep '^TIME' >"$OUT/$1.time"; } 3>&1 )"
  LINE="$(grep '^RESULT' <<<"$out")"
  local r1; r1="$(ticks "$RPID")"
  local own; own="$(awk '{printf "%.0f", ($2 + $3) * 100}' "$OUT/$1.time")"
  local n; n="$(field chains "$LINE")"; [ -n "$n" ] || n="$(field n "$LINE")"
  PER="$(awk -v c=$(( $(redis_calls) - c0 )) -v n="$n" 'BEGIN{printf "%.1f", c/n}')"
  EVALS="$(awk -v c=$(( $(redis_evals) - e0 )) -v n="$n" 'BEGIN{printf "%.2f", c/n}')"
  SHARE="$(awk -v r=$((r1 - r0)) -v p="$own" 'BEGIN{printf "%.2f", r/p}')"
}

w2r() {
  local cps=() per=() evals=() share=() hwm=()
  for rep in $(seq "$REPS"); do
    start_redis
    run_on_redis w2r w2_chain bench/flows/w2.toml 50000
    say "w2r rep $rep: $LINE commands_per_chain=$PER scripts_per_chain=$EVALS redis_cpu/edaflow_cpu=$SHARE"
    cps+=("$(field chains_per_s "$LINE")"); per+=("$PER"); evals+=("$EVALS"); share+=("$SHARE")
    hwm+=("$(awk -v k="$(field peak_rss_kib "$LINE")" 'BEGIN{printf "%.1f", k/1024}')")
    stop_redis
  done
  echo "== W2 three-hop chain on Redis, 50,000 events, effects and acks committed atomically (median of $REPS) =="
  report "chains/s" "${cps[@]}"; report "peak RSS MiB" "${hwm[@]}"
  report "Redis commands per chain (incl. in scripts)" "${per[@]}"; report "script calls per chain" "${evals[@]}"
  report "Redis CPU / edaflow CPU" "${share[@]}"
}

w2r8() {
  local cps=() per=() share=()
  for rep in $(seq "$REPS"); do
    start_redis
    run_on_redis w2r8 w2_chain bench/flows/w2_c8.toml 50000
    say "w2r8 rep $rep: $LINE commands_per_chain=$PER scripts_per_chain=$EVALS redis_cpu/edaflow_cpu=$SHARE"
    cps+=("$(field chains_per_s "$LINE")"); per+=("$PER"); share+=("$SHARE")
    stop_redis
  done
  echo "== W2 on Redis with 8 workers per subscriber (bench/flows/w2_c8.toml; median of $REPS) =="
  report "chains/s" "${cps[@]}"; report "Redis commands per chain (incl. in scripts)" "${per[@]}"
  report "Redis CPU / edaflow CPU" "${share[@]}"
}

w2r32() {
  local cps=() per=() share=() hwm=()
  for rep in $(seq "$REPS"); do
    start_redis
    run_on_redis w2r32 w2_chain bench/flows/w2_c32.toml 200000
    say "w2r32 rep $rep: $LINE commands_per_chain=$PER scripts_per_chain=$EVALS redis_cpu/edaflow_cpu=$SHARE"
    cps+=("$(field chains_per_s "$LINE")"); per+=("$PER"); share+=("$SHARE")
    hwm+=("$(awk -v k="$(field peak_rss_kib "$LINE")" 'BEGIN{printf "%.1f", k/1024}')")
    stop_redis
  done
  echo "== W2 on Redis with 32 workers per subscriber, 200,000 events (bench/flows/w2_c32.toml; median of $REPS) =="
  report "chains/s" "${cps[@]}"; report "peak RSS MiB" "${hwm[@]}"
  report "Redis commands per chain (incl. in scripts)" "${per[@]}"
  report "Redis CPU / edaflow CPU" "${share[@]}"
}

# W3 on Redis. The handler emits a durable `done` event per job (w3r), or records in the
# process as BullMQ's benchmark worker does, its commit then the ack alone (w3r_inproc).
w3r() { w3_on_redis w3r bench/flows/w3.toml "the handler emits a durable done event"; }
w3r_inproc() { BENCH_W3_RECORD=log w3_on_redis w3r_inproc bench/flows/w3_inproc.toml "the handler records in process"; }

w3_on_redis() { # NAME FLOW WHAT
  local total=() drain=() p50=() p99=() max=() per=() share=() dups=()
  for rep in $(seq "$REPS"); do
    start_redis
    run_on_redis "$1" w3_deferred "$2" 20000
    say "$1 rep $rep: $LINE commands_per_job=$PER redis_cpu/edaflow_cpu=$SHARE"
    total+=("$(field total_ms "$LINE")"); drain+=("$(field drain_jobs_per_s "$LINE")")
    p50+=("$(field late_p50_ms "$LINE")"); p99+=("$(field late_p99_ms "$LINE")"); max+=("$(field late_max_ms "$LINE")")
    per+=("$PER"); share+=("$SHARE"); dups+=("$(field duplicates "$LINE")")
    stop_redis
  done
  echo "== W3 on Redis: 20,000 jobs, 1 s delay, one burst, 50 workers; $3 (median of $REPS) =="
  report "total ms (burst start to last job)" "${total[@]}"; report "drain jobs/s" "${drain[@]}"
  report "lateness p50 ms" "${p50[@]}"; report "lateness p99 ms" "${p99[@]}"; report "lateness max ms" "${max[@]}"
  report "Redis commands per job (incl. in scripts)" "${per[@]}"; report "Redis CPU / edaflow CPU" "${share[@]}"
  report "duplicates" "${dups[@]}"
}

queryr() {
  # flows/cqrs.toml with 8 workers on each query subscriber (queries need no order; on
  # Redis each worker waits two round trips per query, so one worker cannot keep up).
  mkdir -p "$OUT/cqrs8" && cp -r flows/cqrs "$OUT/cqrs8/"
  sed 's/^script = "cqrs\/\(get_order\|orders_by_customer\).rhai"$/&\nconcurrency = 8/' flows/cqrs.toml >"$OUT/cqrs8/cqrs.toml"
  local rps=() p50=() p99=() errs=()
  for rep in $(seq "$REPS"); do
    start_redis
    start_edaflow "$OUT/cqrs8/cqrs.toml" --broker "$RURL"
    curl -sf -XPOST -H 'Content-Type: application/json' -d '{"order_id": 1, "customer": "ann", "total": 49.99}' "$URL/topics/orders.command.place" >/dev/null
    for _ in $(seq 100); do curl -sf -XPOST -H 'Content-Type: application/json' -d '{"order_id": 1}' "$URL/query/orders.query.get" | grep -q '"found":true' && break; sleep 0.05; done
    wrk -t1 -c32 -d3s -s bench/wrk/query.lua "$URL/query/orders.query.get" >/dev/null
    local line; line="$(wrk -t1 -c32 -d10s --latency -s bench/wrk/query.lua "$URL/query/orders.query.get" | grep '^RESULT')"
    say "queryr rep $rep: $line"
    rps+=("$(field rps "$line")"); p50+=("$(awk -v u="$(field p50_us "$line")" 'BEGIN{print u/1000}')")
    p99+=("$(awk -v u="$(field p99_us "$line")" 'BEGIN{print u/1000}')"); errs+=("$(field err_status "$line")")
    stop_edaflow; stop_redis
  done
  echo "== query round trip on Redis, 8 query workers, POST /query/orders.query.get answered from a Redis store (median of $REPS) =="
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

traced() {
  local none=() context=() export=()
  for rep in $(seq "$REPS"); do
    none+=("$(field chains_per_s "$(BENCH_TRACE=none target/release/examples/w2_chain bench/flows/w2.toml 200000 2>/dev/null | grep '^RESULT')")")
    context+=("$(field chains_per_s "$(BENCH_TRACE=context target/release/examples/w2_chain bench/flows/w2.toml 200000 2>/dev/null | grep '^RESULT')")")
    export+=("$(field chains_per_s "$(BENCH_TRACE=export target/release/examples/w2_chain bench/flows/w2.toml 200000 2>/dev/null | grep '^RESULT')")")
    say "traced rep $rep: none ${none[-1]} context ${context[-1]} export ${export[-1]}"
  done
  echo "== trace context and span export on W2, alternating runs (median of $REPS) =="
  report "W2 chains/s, no trace context" "${none[@]}"; report "W2 chains/s, traceparent, export off" "${context[@]}"
  report "W2 chains/s, traceparent, OTLP export to a loopback sink" "${export[@]}"
}

scale() {
  echo "== queue scaling: 10^4 .. 10^6 pending items (one run) =="
  target/release/examples/queue_scale 2>/dev/null | grep '^RESULT'
}

reload() {
  echo "== hot reload latency (one run of 50 edits each) =="
  target/release/examples/reload_latency 2>/dev/null | grep '^RESULT'
}

if [ -z "${NOBUILD:-}" ]; then # NOBUILD=1: measure the binaries as they are
  say "building release binary and harnesses"
  cargo build --release --bin edaflow --examples >/dev/null 2>&1
fi
sel=("$@"); [ "${#sel[@]}" -gt 0 ] || sel=(w1 w2 w2b w3 scale reload query tracked traced w1r w2r w2r8 w2r32 w3r w3r_inproc queryr)
echo "edaflow $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
for w in "${sel[@]}"; do "$w"; echo; done
