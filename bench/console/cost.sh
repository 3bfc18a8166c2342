#!/usr/bin/env bash
# What an open console costs W1 (HTTP ingest) and W2 (three-hop chain), memory broker:
# alternating runs of three arms in one sitting, PAIRS times each:
#   none    nothing watches the process
#   stream  `curl` holds the console's aggregate stream open (the server's cost alone)
#   page    headless Chromium has the console open on its graph (server and browser, on
#           the same two cores)
#
#   bench/console/cost.sh            # both workloads, PAIRS=5
#   PAIRS=3 bench/console/cost.sh w2
#   NOBUILD=1 bench/console/cost.sh  # the release binary and harness as built
#
# Needs wrk, curl and Debian's chromium. Results go to stdout (medians and each run).
set -euo pipefail
cd "$(dirname "$0")/../.."
PAIRS="${PAIRS:-5}"
PORT="${PORT:-18900}"
OUT="${OUT:-target/bench/console}"
mkdir -p "$OUT"
BIN="${BIN:-target/release/edaflow}"
POST_LUA="$(pwd)/bench/wrk/post.lua"
W2_PORT=18901 # the http producer of bench/flows/w2_console.toml
W2_COUNT="${W2_COUNT:-1000000}"

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
up() { for _ in $(seq 200); do curl -sf -o /dev/null "$1/healthz" && return 0; sleep 0.05; done; echo "no server at $1" >&2; exit 1; }

WATCHER=""
watch_start() { # ARM URL
  case "$1" in
    none) ;;
    stream) curl -sN "$2/console/stream" >/dev/null 2>&1 & WATCHER=$! ;;
    page)
      # A session of its own, so that stopping it stops every Chromium process.
      setsid chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-quic --no-first-run --window-size=1366,768 \
        --user-data-dir="$(mktemp -d)" --remote-debugging-port=0 "$2/#/graph" \
        >"$OUT/chromium.log" 2>&1 &
      WATCHER=$! ;;
  esac
}
watch_stop() {
  if [ -n "$WATCHER" ]; then
    kill -- "-$WATCHER" 2>/dev/null || kill "$WATCHER" 2>/dev/null || true
    wait "$WATCHER" 2>/dev/null || true
  fi
  WATCHER=""
}
trap 'watch_stop; kill "${PID:-}" 2>/dev/null || true' EXIT

if [ -z "${NOBUILD:-}" ]; then
  cargo build --release --bin edaflow --example w2_chain >&2
fi

w1_run() { # ARM -> "rps p99_ms"
  "$BIN" run bench/flows/w1.toml --listen "127.0.0.1:$PORT" --no-watch --log-format json >"$OUT/edaflow.log" 2>&1 &
  PID=$!
  up "http://127.0.0.1:$PORT"
  watch_start "$1" "http://127.0.0.1:$PORT"
  sleep 3 # the page loads and opens its stream
  wrk -t1 -c32 -d3s -s "$POST_LUA" "http://127.0.0.1:$PORT/topics/orderCreated" >/dev/null
  local line; line="$(wrk -t1 -c32 -d10s --latency -s "$POST_LUA" "http://127.0.0.1:$PORT/topics/orderCreated" | grep '^RESULT')"
  watch_stop
  kill -INT "$PID"; wait "$PID" 2>/dev/null || true
  echo "$(field rps "$line") $(awk -v u="$(field p99_us "$line")" 'BEGIN{print u/1000}')"
}

w2_run() { # ARM -> chains/s
  BENCH_WAIT_PAGE=1 target/release/examples/w2_chain bench/flows/w2_console.toml "$W2_COUNT" >"$OUT/w2.out" 2>"$OUT/w2.err" &
  PID=$!
  up "http://127.0.0.1:$W2_PORT"
  if [ "$1" = none ]; then
    # An idle connection tells the harness to start, as the page's would.
    exec 3<>"/dev/tcp/127.0.0.1/$W2_PORT"
  fi
  watch_start "$1" "http://127.0.0.1:$W2_PORT"
  wait "$PID"
  [ "$1" = none ] && exec 3>&-
  watch_stop
  field chains_per_s "$(grep '^RESULT' "$OUT/w2.out")"
}

workloads=("$@"); [ ${#workloads[@]} -eq 0 ] && workloads=(w1 w2)
for w in "${workloads[@]}"; do
  declare -A results=()
  for pair in $(seq "$PAIRS"); do
    for arm in none stream page; do
      r="$("${w}_run" "$arm")"
      say "$w pair $pair $arm: $r"
      results[$arm]+="$r"$'\n'
    done
  done
  echo "== $w: medians of $PAIRS alternating runs =="
  for arm in none stream page; do
    col1="$(printf '%s' "${results[$arm]}" | awk 'NF {print $1}' | median)"
    if [ "$w" = w1 ]; then
      col2="$(printf '%s' "${results[$arm]}" | awk 'NF {print $2}' | median)"
      printf '%-7s %10s req/s   p99 %s ms   runs: %s\n' "$arm" "$col1" "$col2" "$(printf '%s' "${results[$arm]}" | awk 'NF {printf "%s ", $1}')"
    else
      printf '%-7s %10s chains/s   runs: %s\n' "$arm" "$col1" "$(printf '%s' "${results[$arm]}" | awk 'NF {printf "%s ", $1}')"
    fi
  done
  unset results
done
