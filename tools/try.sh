#!/usr/bin/env bash
# Try shardgate as it runs in production, three processes, without Discord: a simulated Discord
# (tools/mock-gateway, over TLS), a bot endpoint (tools/fake-bot) and `shardgate run` between
# them. Every port is picked free, every file goes to a private temporary directory, and all
# three stop at the end (or at Ctrl-C). Then the bot's report is checked against what the
# simulated Discord sent.
#
#   tools/try.sh                        # builds the release binaries first (minutes, once)
#   tools/try.sh --duration 60 --shards 8 --compression zlib-stream
#   tools/try.sh --profile dev          # the debug binaries (what `cargo test` builds)
#   tools/try.sh --keep                 # keep the work directory (logs, ledger, report)
#
# Exit 0 when every event arrived once and in order and the engine stopped cleanly.
# Needs bash, cargo (unless --no-build) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=30
shards=4
compression=zstd-stream
profile=release
build=1
keep=0
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --compression) compression=$2; shift 2 ;;
        --profile) profile=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "try.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case $profile in
    release) bin_dir=target/release ;;
    dev) bin_dir=target/debug ;;
    *) echo "try.sh: --profile is release or dev, not '$profile'" >&2; exit 2 ;;
esac
if [ "$build" = 1 ]; then
    echo "== building (cargo build --profile $profile -p shardgate -p mock-gateway -p fake-bot)"
    cargo build --quiet --profile "$profile" -p shardgate -p mock-gateway -p fake-bot
fi

. tools/lib/world.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/shardgate-try.XXXXXX")
world_init "$work" "$bin_dir"
finish() {
    world_stop
    if [ "$keep" = 1 ]; then
        echo "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap finish EXIT
trap 'exit 130' INT TERM

secret=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
echo "== simulated Discord: $shards shards, 10 guilds each, 50 events/s per shard, over TLS"
world_start_mock --tls --guilds $((shards * 10)) --recommended-shards "$shards" \
    --max-concurrency "$shards" --rate 50
echo "   api_base=$MOCK_API_BASE  (CA in $MOCK_CA)"
echo "== the bot: fake-bot, checks every batch"
FORWARD_SECRET=$secret world_start_bot
echo "   $BOT_URL"
echo "== shardgate run (its log follows)"
echo "   DISCORD_TOKEN=mock-token FORWARD_SECRET=… shardgate run --api-base $MOCK_API_BASE \\"
echo "       --ca-file $MOCK_CA --forward-url $BOT_URL/events \\"
echo "       --compression $compression --data-dir $work/data --admin-addr 127.0.0.1:0"
DISCORD_TOKEN=mock-token FORWARD_SECRET=$secret WORLD_ENGINE_LOG_TO_STDERR=1 world_start_engine \
    --api-base "$MOCK_API_BASE" --ca-file "$MOCK_CA" --forward-url "$BOT_URL/events" \
    --compression "$compression" --data-dir "$work/data"
echo "== admin API: $ENGINE_ADMIN  (try: curl -s $ENGINE_ADMIN/status)"

deadline=$((SECONDS + duration))
while [ $SECONDS -lt $deadline ]; do
    sleep 5
    kill -0 "$ENGINE_PID" 2>/dev/null || break
    world_get "$ENGINE_ADMIN/status" | python3 -c '
import json, sys
status = json.load(sys.stdin)
shards, events, sink = status["shards"], status["events"], status["sink"]
print("-- %d/%d shards ready, %d events in, %d delivered to the bot, %d redundant updates dropped"
      % (shards["ready"], shards["owned"], events["dispatches_received"],
         sink["records_delivered"], events["dropped_redundant_message_update"]))
' || true
done

echo "== stopping shardgate (SIGTERM: shards close resumably, the queue is flushed)"
code=0
world_stop_engine || code=$?
world_get "$MOCK_HTTP/_mock/ledger" >"$work/ledger.json"
world_get "$BOT_URL/_bot/report" >"$work/report.json"
echo "== the bot's events against the simulated Discord's ledger"
checked=0
python3 tools/lib/check_delivery.py "$work/ledger.json" "$work/report.json" || checked=$?
if [ "$code" != 0 ]; then
    echo "shardgate exited $code" >&2
    exit 1
fi
exit "$checked"
