#!/usr/bin/env bash
# OPC UA load (issue 17): one OPC UA server (node-opcua by default, PEER=asyncua for the
# Python one, which takes many minutes to make 10,000 nodes) with N Double variables that all
# change every second, one tidegate device subscribing to all of them; tidegate's RSS and CPU while it
# runs, and the readings per second that reach a local MQTT subscriber beside the value changes
# per second the server really made (its `CHANGES` lines).
#
#   cargo build --release && benches/opcua/load.sh [N=10000] [SECONDS=60]
#
# tidegate runs with MALLOC_ARENA_MAX=2, as its systemd unit sets it (set the variable to
# override: MALLOC_ARENA_MAX=64 is glibc's default). SAMPLING=<duration> adds a
# sampling_interval to every tag; PUBLISHING=<duration> sets the publishing interval (1s);
# QUEUE=<n> sets broker.max_queued_messages (default 1000: a subscriber that falls more than
# that behind loses QoS 0 readings, counted as the broker's dropped publishes).
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
  printf 'gateway:\n  data_dir: %s/data\nbroker:\n  listeners: [{bind: 127.0.0.1:0}]\n  max_queued_messages: %s\nweb: {enabled: false}\nlog: {format: text, level: info}\n' "$work" "${QUEUE:-1000}"
  printf 'devices:\n  - name: load\n    driver: opcua\n    endpoint: opc.tcp://127.0.0.1:%s/tidegate/\n    publishing_interval: %s\n    tags:\n' "$port" "${PUBLISHING:-1s}"
  extra=${SAMPLING:+, sampling_interval: $SAMPLING}
  for i in $(seq 0 $((N - 1))); do printf '      - {name: l%s, node_id: "ns=2;s=Load/%s", publish_every: 0s%s}\n' "$i" "$i" "$extra"; done
} > "$work/tidegate.yaml"

MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} "$BIN" run -c "$work/tidegate.yaml" 2> "$work/tidegate.log" &
tg=$!
pids+=($tg)
for _ in $(seq 1 300); do grep -q "tidegate is running" "$work/tidegate.log" 2>/dev/null && break; sleep 0.2; done
mqtt=$(grep -o "MQTT broker listening on [0-9.]*:[0-9]*" "$work/tidegate.log" | grep -o "[0-9]*$" | head -1)

# Warm-up: the subscription is made and the first values arrive.
sleep 20
ticks=$(getconf CLK_TCK)
server=${pids[0]}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
changes() { awk '/^CHANGES/{n=$2} END{print n+0}' "$work/server.out"; }
sys() { timeout 5 mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t "$1" -C 1 2>/dev/null || echo 0; }
d0=$(sys '$SYS/broker/publish/messages/dropped')
c0=$(cpu "$tg"); s0=$(cpu "$server"); o0=$(changes); t0=$(date +%s.%N); l0=$(cat /proc/loadavg)
count=0
if [ -n "$mqtt" ] && command -v mosquitto_sub >/dev/null; then
  count=$(timeout "$SECS" mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t 'devices/load/#' 2>/dev/null | wc -l || true)
else
  sleep "$SECS"
fi
c1=$(cpu "$tg"); s1=$(cpu "$server"); o1=$(changes); t1=$(date +%s.%N); l1=$(cat /proc/loadavg)
d1=$(sys '$SYS/broker/publish/messages/dropped')
mem() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$tg/status"; }
awk -v c0="$c0" -v c1="$c1" -v s0="$s0" -v s1="$s1" -v t0="$t0" -v t1="$t1" -v hz="$ticks" \
    -v rss="$(mem VmRSS)" -v hwm="$(mem VmHWM)" -v anon="$(mem RssAnon)" -v file="$(mem RssFile)" \
    -v n="$N" -v count="$count" -v o0="$o0" -v o1="$o1" -v d0="$d0" -v d1="$d1" 'BEGIN {
  printf "items %d, %.0f s measured\n", n, t1 - t0
  printf "tidegate CPU: %.1f %% of one core\n", 100 * (c1 - c0) / hz / (t1 - t0)
  printf "tidegate RSS: %.1f MiB (peak %.1f MiB; anonymous %.1f MiB, file %.1f MiB)\n", rss / 1024, hwm / 1024, anon / 1024, file / 1024
  printf "server CPU: %.1f %% of one core\n", 100 * (s1 - s0) / hz / (t1 - t0)
  printf "value changes the server made: %.0f /s\n", (o1 - o0) / (t1 - t0)
  printf "readings on MQTT: %.0f /s\n", count / (t1 - t0)
  printf "readings the broker dropped for the (slower) subscriber: %.0f /s\n", (d1 - d0) / (t1 - t0)
}'
echo "load average before: $l0"
echo "load average after:  $l1"
echo "OPC UA sessions made: $(grep -c "OPC UA session up" "$work/tidegate.log") (1 = no reconnect while data flowed)"
echo "log lines at WARN or ERROR: $(grep -c " WARN \| ERROR " "$work/tidegate.log" || true)"
echo "opcua/dropped: $(timeout 3 mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t "\$SYS/tidegate/devices/load/opcua/dropped" -C 1 2>/dev/null || echo n/a)"
