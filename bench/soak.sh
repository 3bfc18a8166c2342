#!/usr/bin/env bash
# The soak: the W2b flow (HTTP ingest into a three-hop Rhai chain) at half its measured
# maximum rate, for SOAK_SECONDS (default 600) on each broker, sampling every 10 s the
# process's RSS, the work pending (events accepted whose chain has not completed, plus
# entries pending in Redis) and the chains completed. Passes when RSS stays flat (the last
# sample within SOAK_RSS_SLACK_PCT, default 20 %, of the first after warm-up) and nothing is
# pending once the load stops.
#
#   bench/soak.sh                      # memory, then redis (a private redis-server)
#   BROKERS=memory SOAK_SECONDS=60 bench/soak.sh
#   NOBUILD=1 bench/soak.sh            # the release binary and soak_load already built
#
# Samples go to target/bench/soak-BROKER.csv; a summary per broker is printed at the end.
# Needs wrk, curl and (for Redis) redis-server and redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS="${SOAK_SECONDS:-600}"
BROKERS="${BROKERS:-memory redis}"
SLACK="${SOAK_RSS_SLACK_PCT:-20}"
PORT="${PORT:-18900}"
RPORT="${RPORT:-18979}"
OUT="${OUT:-target/bench}"
URL="http://127.0.0.1:$PORT"
BIN="target/release/edaflow"
FLOW="bench/flows/w2b.toml"
mkdir -p "$OUT"

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
metric() { curl -sf "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
handled() { metric 'edaflow_subscriber_handled_total{subscriber="count"}'; }
accepted() { metric 'edaflow_http_requests_total{outcome="accepted"}'; }
redis_pending() { # entries delivered and not acknowledged, over every topic stream
  [ -n "${RPID:-}" ] || { echo 0; return; }
  local total=0
  for key in $(redis-cli -p "$RPORT" --scan --pattern 'edaflow:{w2b}:t:*'); do
    local n; n="$(redis-cli -p "$RPORT" xinfo groups "$key" | awk 'prev == "pending" {s += $1} {prev = $1} END {print s + 0}')"
    total=$((total + n))
  done
  echo "$total"
}

if [ -z "${NOBUILD:-}" ]; then
  say "building the release binary and the load generator"
  cargo build --release --quiet --bin edaflow --example soak_load
fi

start_redis() {
  RDIR="$(mktemp -d)"
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RDIR" >"$OUT/soak-redis.log" 2>&1 &
  RPID=$!
  for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server did not start" >&2; exit 1
}
stop_redis() { kill "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; rm -rf "$RDIR"; RPID=""; }
start_edaflow() {
  "$BIN" run "$FLOW" --listen "127.0.0.1:$PORT" --no-watch --log-format json "$@" >"$OUT/soak-edaflow.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "$URL/healthz" && return 0; sleep 0.05; done
  echo "edaflow did not start; see $OUT/soak-edaflow.log" >&2; exit 1
}
stop_edaflow() { kill -INT "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap 'kill "${PID:-}" "${RPID:-}" "${LPID:-}" 2>/dev/null || true' EXIT
drain() { # waits up to 60 s for every accepted event's chain to complete
  for _ in $(seq 1200); do [ "$(handled)" = "$(accepted)" ] && [ "$(redis_pending)" = 0 ] && return 0; sleep 0.05; done
  return 1
}

SUMMARY=()
for broker in $BROKERS; do
  args=()
  RPID=""
  if [ "$broker" = redis ]; then start_redis; args=(--broker "redis://127.0.0.1:$RPORT"); fi
  start_edaflow "${args[@]}"

  # The maximum: chains completed per second under a saturating load (wrk, 32 connections).
  wrk -t1 -c32 -d5s -s bench/wrk/post.lua "$URL/topics/orderCreated" >/dev/null
  drain || true
  c0="$(handled)"; t0="$(date +%s.%N)"
  wrk -t1 -c32 -d15s -s bench/wrk/post.lua "$URL/topics/orderCreated" >/dev/null
  c1="$(handled)"; t1="$(date +%s.%N)"
  max="$(awk -v c=$((c1 - c0)) -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", c/(b-a)}')"
  rate=$((max / 2))
  drain || { echo "the saturating run did not drain" >&2; exit 1; }
  say "$broker: measured maximum $max chains/s; soaking at $rate/s for ${SOAK_SECONDS}s"

  csv="$OUT/soak-$broker.csv"
  echo "t_s,rss_kib,pending,redis_pending,accepted,handled,refused" >"$csv"
  a0="$(accepted)"; h0="$(handled)"; r0="$(metric 'edaflow_http_requests_total{outcome="backpressured"}')"
  target/release/examples/soak_load "$URL" "$rate" "$SOAK_SECONDS" 32 >"$OUT/soak-load-$broker.txt" &
  LPID=$!
  start="$(date +%s)"
  while kill -0 "$LPID" 2>/dev/null; do
    sleep 10
    # Handled first: an event is counted accepted a moment after its chain may have run.
    h="$(handled)"; a="$(accepted)"; r="$(metric 'edaflow_http_requests_total{outcome="backpressured"}')"
    row="$(( $(date +%s) - start )),$(rss_kib "$PID"),$((a - h)),$(redis_pending),$((a - a0)),$((h - h0)),$((r - r0))"
    echo "$row" >>"$csv"
    say "$broker: $row"
  done
  wait "$LPID" || true
  LPID=""
  drained=yes; drain || drained=no
  a="$(accepted)"; h="$(handled)"
  echo "$(( $(date +%s) - start )),$(rss_kib "$PID"),$((a - h)),$(redis_pending),$((a - a0)),$((h - h0)),$(( $(metric 'edaflow_http_requests_total{outcome="backpressured"}') - r0 ))" >>"$csv"
  load="$(grep '^RESULT' "$OUT/soak-load-$broker.txt" || true)"
  # RSS: the first sample after a minute of warm-up, and the last one under load.
  rss_start="$(awk -F, 'NR > 1 && $1 >= 60 {print $2; exit}' "$csv")"
  rss_end="$(awk -F, 'NR > 1 {last = prev; prev = $2} END {print last}' "$csv")"
  rss_max="$(awk -F, 'NR > 1 && $2 > m {m = $2} END {print m}' "$csv")"
  flat="$(awk -v s="${rss_start:-0}" -v e="${rss_end:-0}" -v k="$SLACK" 'BEGIN{print (s > 0 && e <= s * (1 + k / 100)) ? "yes" : "no"}')"
  SUMMARY+=("$broker: max $max chains/s, soak $rate/s for ${SOAK_SECONDS}s; accepted $((a - a0)), chains completed $((h - h0)), pending after the load $((a - h)) (redis pending $(redis_pending)), drained $drained; RSS at 1 min $((rss_start / 1024)) MiB, at the end $((rss_end / 1024)) MiB, max $((rss_max / 1024)) MiB, flat $flat; load: $load")
  stop_edaflow
  [ -n "$RPID" ] && stop_redis
done
echo "== soak ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs) =="
printf '%s\n' "${SUMMARY[@]}"
