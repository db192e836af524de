#!/usr/bin/env bash
# OPC UA load (issue 17): one OPC UA server (node-opcua by default, PEER=asyncua for the
# Python one, which takes many minutes to make 10,000 nodes) with N Double variables that all
# change every second, one tidegate device subscribing to all of them; tidegate's RSS and CPU while it
# runs, and the readings per second that reach a local MQTT subscriber.
#
#   cargo build --release && benches/opcua/load.sh [N=10000] [SECONDS=60]
#
# Needs node with tests/peers/node-opcua installed (or python3 with asyncua; .ci/run installs
# both) and mosquitto_sub. Traffic stays on
# 127.0.0.1; everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
SECS=${2:-60}
BIN=${BIN:-target/release/tidegate}
work=$(mktemp -d)
pids=()
cleanup() { cp "$work/tidegate.log" "${KEEP_LOG:-/dev/null}" 2>/dev/null || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

PEER=${PEER:-node-opcua}
case "$PEER" in
  node-opcua) node tests/peers/node-opcua/server.js --dir "$work/server" --items "$N" > "$work/server.out" 2>/dev/null & ;;
  asyncua) python3 tests/peers/asyncua_server.py --dir "$work/server" --items "$N" > "$work/server.out" 2>/dev/null & ;;
  *) echo "PEER must be node-opcua or asyncua" >&2; exit 2 ;;
esac
pids+=($!)
for _ in $(seq 1 3000); do grep -q READY "$work/server.out" 2>/dev/null && break; sleep 0.2; done
port=$(awk '/READY/{print $2}' "$work/server.out")
[ -n "$port" ] || { echo "the $PEER server did not start" >&2; exit 1; }
echo "peer: $PEER"

{
  printf 'gateway:\n  data_dir: %s/data\nbroker:\n  listeners: [{bind: 127.0.0.1:0}]\nweb: {enabled: false}\nlog: {format: text, level: info}\n' "$work"
  printf 'devices:\n  - name: load\n    driver: opcua\n    endpoint: opc.tcp://127.0.0.1:%s/tidegate/\n    publishing_interval: 1s\n    tags:\n' "$port"
  for i in $(seq 0 $((N - 1))); do printf '      - {name: l%s, node_id: "ns=2;s=Load/%s", publish_every: 0s}\n' "$i" "$i"; done
} > "$work/tidegate.yaml"

"$BIN" run -c "$work/tidegate.yaml" 2> "$work/tidegate.log" &
tg=$!
pids+=($tg)
for _ in $(seq 1 300); do grep -q "tidegate is running" "$work/tidegate.log" 2>/dev/null && break; sleep 0.2; done
mqtt=$(grep -o "MQTT broker listening on [0-9.]*:[0-9]*" "$work/tidegate.log" | grep -o "[0-9]*$" | head -1)

# Warm-up: the subscription is made and the first values arrive.
sleep 20
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$tg/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
count=0
if [ -n "$mqtt" ] && command -v mosquitto_sub >/dev/null; then
  count=$(timeout "$SECS" mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t 'devices/load/#' 2>/dev/null | wc -l || true)
else
  sleep "$SECS"
fi
c1=$(cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/{print $2}' "/proc/$tg/status")
hwm=$(awk '/VmHWM/{print $2}' "/proc/$tg/status")
awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$ticks" -v rss="$rss" -v hwm="$hwm" \
    -v n="$N" -v count="$count" -v secs="$SECS" 'BEGIN {
  printf "items %d, %d s measured\n", n, secs
  printf "tidegate CPU: %.1f %% of one core\n", 100 * (c1 - c0) / hz / (t1 - t0)
  printf "tidegate RSS: %.1f MiB (peak %.1f MiB)\n", rss / 1024, hwm / 1024
  printf "readings on MQTT: %.0f /s\n", count / secs
}'
echo "OPC UA sessions made: $(grep -c "OPC UA session up" "$work/tidegate.log") (1 = no reconnect while data flowed)"
echo "log lines at WARN or ERROR: $(grep -c " WARN \| ERROR " "$work/tidegate.log" || true)"
echo "opcua/dropped: $(timeout 3 mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t "\$SYS/tidegate/devices/load/opcua/dropped" -C 1 2>/dev/null || echo n/a)"
