#!/usr/bin/env bash
# W2 on a three-master Redis Cluster this script starts (loopback, no persistence), in
# alternating runs: the flow in one namespace on one master (--shards 1); the chain's
# three topics on three shards (--shards 3, bench/flows/w2_spread.toml); and the flow
# spread over three shards by journey (--shards 3 --spread-by journey, w2_c32.toml). For each run: chains/s, Redis commands executed per master (INFO commandstats,
# scripts' inner commands included) and their spread around the mean, and the Redis CPU
# per chain summed over the masters, which is what scales when masters have machines of
# their own (here they share this machine's cores).
#
#   bench/cluster.sh                 # REPS=3, 200,000 chains per run
#   NOBUILD=1 REPS=5 bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
CHAINS="${CHAINS:-200000}"
[ -n "${NOBUILD:-}" ] || cargo build --release --example w2_chain >/dev/null
DIR="$(mktemp -d)"
PORTS=()
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
for i in 0 1 2; do
  port=$(( 17100 + i )); mkdir -p "$DIR/n$i"
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
    --save '' --appendonly no --dir "$DIR/n$i" >/dev/null 2>&1 &
  PIDS+=("$!"); PORTS+=("$port")
done
for port in "${PORTS[@]}"; do until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done; done
redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
until redis-cli -p "${PORTS[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
calls() { redis-cli -p "$1" info commandstats | awk -F'[=,]' '/^cmdstat_/ {s += $2} END {print s + 0}'; }

run() { # SHARDS FLOW [SPREAD_BY]
  local c0=() t0=() c1=() t1=()
  for i in 0 1 2; do c0+=("$(calls "${PORTS[$i]}")"); t0+=("$(ticks "${PIDS[$i]}")"); done
  local line
  line="$(BENCH_BROKER="redis://127.0.0.1:${PORTS[0]}" BENCH_SHARDS="$1" BENCH_SPREAD_BY="${3:-topic}" target/release/examples/w2_chain "$2" "$CHAINS" 2>/dev/null | grep '^RESULT')"
  for i in 0 1 2; do c1+=("$(calls "${PORTS[$i]}")"); t1+=("$(ticks "${PIDS[$i]}")"); done
  local per=() cpu=0
  for i in 0 1 2; do per+=("$(( c1[i] - c0[i] ))"); cpu=$(( cpu + t1[i] - t0[i] )); done
  local rate; rate="$(sed -E 's/.*chains_per_s=([0-9.]+).*/\1/' <<<"$line")"
  awk -v a="${per[0]}" -v b="${per[1]}" -v c="${per[2]}" -v cpu="$cpu" -v n="$CHAINS" -v rate="$rate" -v s="$1" -v by="${3:-topic}" 'BEGIN {
    m = (a + b + c) / 3; d = 0
    for (i = 0; i < 3; i++) { x = (i == 0 ? a : (i == 1 ? b : c)); dev = (x - m) / m * 100; if (dev < 0) dev = -dev; if (dev > d) d = dev }
    # ticks are 1/100 s: CPU µs per chain = ticks * 10000 / chains
    printf "shards=%s spread_by=%s chains_per_s=%s commands_per_master=%d,%d,%d max_dev_from_mean=%.1f%% redis_cpu_us_per_chain=%.1f\n", s, by, rate, a, b, c, d, cpu * 10000 / n
  }'
}

for rep in $(seq "$REPS"); do
  run 1 bench/flows/w2_c32.toml
  run 3 bench/flows/w2_spread.toml
  run 3 bench/flows/w2_c32.toml journey
done
