#!/usr/bin/env bash
# Many shards on this host against the mock gateway (TLS) at a low event rate: time until every
# shard is active, the engine's resident memory, and the mock's ledger (identifies, violations).
#
#   cargo build --release -p shardgate -p mock-gateway -p fake-bot
#   tools/scale/run.sh [SHARDS=10000] [MAX_CONCURRENCY=512] [SETTLE_S=20]
#   COMPRESSION=none tools/scale/run.sh 10000
#   BIN_DIR=target/debug tools/scale/run.sh 50 50 2              # the debug binaries
#   SHARDGATE_ARGS='--read-coalesce-ms 0' tools/scale/run.sh 10000   # extra `shardgate run` flags
#   RATE=0.0001 tools/scale/run.sh 1000 512 60   # idle shards: heartbeats only (default RATE=0.1/s)
#
# Needs `ulimit -n` above SHARDS for the engine and the mock, and python3. Every port is picked
# free (tools/lib/world.sh). Work files go to $SCALE_DIR (default /tmp/shardgate-scale). Stops
# only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
shards=${1:-10000}
max_concurrency=${2:-512}
settle_s=${3:-20}
compression=${COMPRESSION:-zstd-stream}
dir=${SCALE_DIR:-/tmp/shardgate-scale}
rm -rf "$dir" && mkdir -p "$dir/data"
. tools/lib/world.sh
world_init "$dir" "${BIN_DIR:-target/release}"
trap world_stop EXIT

world_start_mock --threads 2 --tls --guilds $((shards * 2)) --recommended-shards "$shards" \
    --max-concurrency "$max_concurrency" --session-start-total 1000000 --rate "${RATE:-0.1}" \
    --guild-create-bytes 2000 --replay-bytes-max 16384
world_start_bot

start=$(date +%s.%N)
DISCORD_TOKEN=mock-token world_start_engine --api-base "$MOCK_API_BASE" --ca-file "$MOCK_CA" \
    --forward-url "$BOT_URL/events" --cores 2 --data-dir "$dir/data" \
    --compression "$compression" --log "${LOG:-info}" --log-format json ${SHARDGATE_ARGS:-}
engine=$ENGINE_PID
active=0
for _ in $(seq 1 900); do
    sleep 1
    kill -0 "$engine" 2>/dev/null || { echo "the engine exited; see $dir/engine.log" >&2; exit 1; }
    active=$(world_get "$ENGINE_ADMIN/readyz" |
        python3 -c "import sys, json; print(json.load(sys.stdin)['shards_active'])" 2>/dev/null ||
        echo 0)
    [ "$active" -ge "$shards" ] && break
done
ready=$(date +%s.%N)
# The engine's CPU while every shard is connected and idle but for the mock's trickle.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$engine/stat"; }
settle_from=$(cpu_ticks)
sleep "$settle_s"
settle_ticks=$(($(cpu_ticks) - settle_from))
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$engine/status")
world_get "$MOCK_HTTP/_mock/ledger" > "$dir/ledger.json"
world_stop_engine && code=0 || code=$?
python3 - "$dir/ledger.json" "$shards" "$active" "$start" "$ready" "$rss_kib" "$compression" "$code" \
    "$settle_ticks" "$(getconf CLK_TCK)" "$settle_s" <<'PY'
import collections, json, sys
ledger, shards, active, start, ready, rss_kib, compression, code, ticks, hz, settle = sys.argv[1:]
l = json.load(open(ledger))
kinds = collections.Counter(v["kind"] for v in l["violations"])
print(f"{shards} shards, {compression}: {active} active after {float(ready) - float(start):.1f} s; "
      f"RSS {int(rss_kib) / 1024:.0f} MiB = {int(rss_kib) / int(shards):.1f} KiB per shard; "
      f"identifies {l['identifies_total']}, connections {l['connections_total']}, "
      f"violations {len(l['violations'])} {dict(kinds)}; "
      f"engine CPU while settled {int(ticks) / int(hz) / float(settle) * 100:.1f} % of one CPU; "
      f"engine exit {code}")
PY
