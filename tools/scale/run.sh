#!/usr/bin/env bash
# Many shards on this host against the mock gateway (TLS) at a low event rate: time until every
# shard is active, the engine's resident memory, and the mock's ledger (identifies, violations).
#
#   cargo build --release -p shardgate -p mock-gateway -p fake-bot
#   tools/scale/run.sh [SHARDS=10000] [MAX_CONCURRENCY=512] [SETTLE_S=20]
#   COMPRESSION=none tools/scale/run.sh 10000
#   SHARDGATE_ARGS='--read-coalesce-ms 0' tools/scale/run.sh 10000   # extra `shardgate run` flags
#
# Needs `ulimit -n` above SHARDS for the engine and the mock, curl and python3. Work files go
# to $SCALE_DIR (default /tmp/shardgate-scale). Stops only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
shards=${1:-10000}
max_concurrency=${2:-512}
settle_s=${3:-20}
compression=${COMPRESSION:-zstd-stream}
dir=${SCALE_DIR:-/tmp/shardgate-scale}
bin=target/release
rm -rf "$dir" && mkdir -p "$dir/data"

"$bin/mock-gateway" --threads 2 --listen 127.0.0.1:47500 --resume-listen 127.0.0.1:47501 \
    --tls --ca-out "$dir/ca.pem" --guilds $((shards * 2)) --recommended-shards "$shards" \
    --max-concurrency "$max_concurrency" --session-start-total 1000000 --rate 0.1 \
    --guild-create-bytes 2000 --replay-bytes-max 16384 > "$dir/mock.log" 2>&1 &
mock=$!
"$bin/fake-bot" --listen 127.0.0.1:47600 > "$dir/bot.log" 2>&1 &
bot=$!
trap 'kill $mock $bot 2>/dev/null; wait $mock $bot 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    [ -s "$dir/ca.pem" ] && break
    sleep 0.1
done
kill -0 "$mock" 2>/dev/null || { echo "the mock did not start; see $dir/mock.log" >&2; exit 1; }

start=$(date +%s.%N)
DISCORD_TOKEN=mock-token "$bin/shardgate" run --api-base https://127.0.0.1:47500/api/v10 \
    --ca-file "$dir/ca.pem" --forward-url http://127.0.0.1:47600/events --cores 2 \
    --data-dir "$dir/data" --admin-addr 127.0.0.1:47700 --compression "$compression" \
    --log "${LOG:-info}" --log-format json ${SHARDGATE_ARGS:-} > "$dir/engine.log" 2>&1 &
engine=$!
active=0
for _ in $(seq 1 900); do
    sleep 1
    kill -0 "$engine" 2>/dev/null || { echo "the engine exited; see $dir/engine.log" >&2; exit 1; }
    active=$(curl -s 127.0.0.1:47700/readyz |
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
curl -sk https://127.0.0.1:47500/_mock/ledger > "$dir/ledger.json"
kill -TERM "$engine"
wait "$engine" && code=0 || code=$?
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
