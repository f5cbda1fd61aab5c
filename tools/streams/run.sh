#!/usr/bin/env bash
# What the Redis Streams sink costs next to the HTTP sink: the same mock stream (ws://, seed 42,
# 16 guilds, every identify bucket open, the mock as fast as the engine reads: `--rate 0`, the
# firehose of tools/compare), once with `shardgate run --sink http` to the fake bot and once with
# `--sink redis-streams` to a redis-server of this script's own, alternating (http, streams,
# http, streams, …), REPEAT runs of each. Each run gets a fresh mock, engine and data directory
# (and bot); Redis is flushed before each. Prints per run, over SECONDS of steady state (from
# WARMUP_S after every shard is ready):
#   - records delivered per second (the engine's shardgate_sink_records_delivered_total);
#   - the engine's CPU per delivered record, µs (utime + stime of the shardgate process, every
#     thread, from /proc/PID/stat), and its share of one CPU;
#   - the receiver's CPU per record, apart: the fake bot's (http) or redis-server's (streams);
#   - the mock's share of one CPU (at 100 % the mock, not the engine, sets records/s);
# then the medians per sink and the ratio streams / http of the engine's CPU per record.
#
#   cargo build --release -p shardgate -p mock-gateway -p fake-bot
#   tools/streams/run.sh [SHARDS=8] [SECONDS=20] [MODE=zstd-stream]
#   REPEAT=3 CORES=2 tools/streams/run.sh 8 30 none
#   BIN_DIR=target/debug tools/streams/run.sh 2 5             # the debug binaries, a quick look
#   SHARDGATE_ARGS='--batch-events-max 1000' tools/streams/run.sh   # extra flags, both sinks
#   BASELINE_BIN=/tmp/old/shardgate tools/streams/run.sh    # streams with another build too
#
# BASELINE_BIN names another shardgate binary (an older commit's, say): each round then runs
# http, streams with BASELINE_BIN (`redis-streams@baseline`), and streams with BIN_DIR's, on the
# same mock, bot and Redis, and the summary adds the ratio of the two streams builds. Take that
# ratio, from one run, rather than comparing figures of runs made at different times.
#
# MODE is the gateway compression (`--compression`). Both sinks run with `--cores CORES`
# (default 1) and compare's firehose flags `--backlog-rate 0 --spill-bytes-max 0` (no backlog
# pacing, no disk spill: a slow receiver backpressures the cores). The streams go to
# `--stream-key shardgate-bench --stream-partitions PARTITIONS` (default 1) with
# `--stream-maxlen STREAM_MAXLEN` (default 100000, so that trimming runs throughout the window).
# Both sinks run alone (no fleet). FLEET=1 makes both a one-host fleet on the same Redis
# (`--host-id streams-bench --host-lease-ms 1000 --shard-lease-ms 2000`; the shards start one
# shard lease late), to see the fleet's own cost beside the sink's. A shardgate from before
# `--fleet` (where `--redis-url` always made a fleet host) runs the streams that way regardless.
#
# Needs python3, redis-server (7 or later) and redis-cli. Every port is picked free
# (tools/lib/world.sh); work files go to $STREAMS_DIR (default a new temporary directory,
# removed unless KEEP=1). Stops only the processes it started; exit status 1 when a run failed
# (an engine that did not stay ready, failed deliveries, dropped records, an unclean stop).
set -euo pipefail
cd "$(dirname "$0")/../.."
shards=${1:-8}
seconds=${2:-20}
mode=${3:-zstd-stream}
repeat=${REPEAT:-2}
cores=${CORES:-1}
partitions=${PARTITIONS:-1}
maxlen=${STREAM_MAXLEN:-100000}
warmup_s=${WARMUP_S:-3}
bin_dir=${BIN_DIR:-target/release}
dir=${STREAMS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/shardgate-streams.XXXXXX")}
mkdir -p "$dir"
. tools/lib/world.sh
world_init "$dir" "$bin_dir"
command -v redis-cli >/dev/null || {
    echo "redis-cli is needed (Debian: apt-get install redis-tools)" >&2
    exit 2
}
finish() {
    local code=$?
    world_stop
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work directory kept: $dir"
    else
        rm -rf "$dir"
        [ "$code" = 0 ] || echo "the logs went with $dir: run again with KEEP=1 to keep them" >&2
    fi
}
trap finish EXIT

# In a fleet (FLEET=1), short leases: a fleet's shards start one shard lease after its start.
fleet_args=(--host-id streams-bench --cluster-name streams-bench --host-lease-ms 1000
    --shard-lease-ms 2000)
http_fleet=()
if "$bin_dir/shardgate" run --help | grep -q -- '--fleet <'; then
    if [ "${FLEET:-0}" = 1 ]; then
        http_fleet=("${fleet_args[@]}")
        streams_fleet=(--fleet on "${fleet_args[@]}")
        fleet_note="both sinks a one-host fleet on that Redis (FLEET=1), --shard-lease-ms 2000"
    else
        streams_fleet=()
        fleet_note="both sinks alone (no fleet)"
    fi
else
    # A shardgate from before --fleet: --redis-url makes it a fleet host, whatever the sink.
    streams_fleet=("${fleet_args[@]}")
    if [ "${FLEET:-0}" = 1 ]; then
        http_fleet=("${fleet_args[@]}")
        fleet_note="both sinks a one-host fleet on that Redis (FLEET=1), --shard-lease-ms 2000"
    else
        fleet_note="http alone, streams a one-host fleet (this shardgate has no --fleet)"
    fi
fi

world_start_redis
redis_pid=$REDIS_PID
echo "streams: $shards shards, $mode, shardgate --cores $cores, mock --rate 0 (as fast as the" \
    "engine reads), $seconds s windows after ${warmup_s} s of warm-up, $repeat runs per sink;" \
    "streams: $partitions partition(s), --stream-maxlen $maxlen; $fleet_note"

# BASELINE_BIN's shardgate beside BIN_DIR's mock and bot, in a folder of its own.
sinks=(http redis-streams)
if [ -n "${BASELINE_BIN:-}" ]; then
    [ -x "$BASELINE_BIN" ] || {
        echo "BASELINE_BIN=$BASELINE_BIN is not an executable" >&2
        exit 2
    }
    mkdir -p "$dir/baseline-bin"
    ln -sf "$(realpath "$BASELINE_BIN")" "$dir/baseline-bin/shardgate"
    for bin in mock-gateway fake-bot; do
        ln -sf "$(realpath "$bin_dir/$bin")" "$dir/baseline-bin/$bin"
    done
    sinks=(http redis-streams@baseline redis-streams)
    echo "redis-streams@baseline: $BASELINE_BIN; redis-streams: $bin_dir/shardgate"
fi

# run_one N SINK: one run; appends its figures (a JSON line) to $dir/results.jsonl. SINK is
# http, redis-streams, or redis-streams@baseline (BASELINE_BIN's shardgate, streams).
run_one() {
    local n=$1 sink=$2 receiver_pid code=0 run_bin=$bin_dir
    local -a sink_args
    [ "$sink" = redis-streams@baseline ] && run_bin=$dir/baseline-bin
    world_init "$dir/run-$n-${sink/@/-}" "$run_bin"
    world_redis FLUSHALL >/dev/null || return 1
    world_start_mock --seed 42 --guilds 16 --recommended-shards "$shards" \
        --max-concurrency "$shards" --rate 0 || return 1
    if [ "$sink" = http ]; then
        world_start_bot || return 1
        receiver_pid=$BOT_PID
        sink_args=(--sink http --forward-url "$BOT_URL/events")
        [ ${#http_fleet[@]} = 0 ] || sink_args+=(--redis-url "$REDIS_URL" "${http_fleet[@]}")
    else
        receiver_pid=$redis_pid
        sink_args=(--sink redis-streams --redis-url "$REDIS_URL" --stream-key shardgate-bench
            --stream-partitions "$partitions" --stream-maxlen "$maxlen" "${streams_fleet[@]}")
    fi
    # shellcheck disable=SC2086 # SHARDGATE_ARGS is split into flags on purpose
    DISCORD_TOKEN=mock-token world_start_engine --api-base "$MOCK_API_BASE" \
        --total-shards "$shards" --compression "$mode" --cores "$cores" \
        --data-dir "$WORLD_DIR/data" --log info --backlog-rate 0 --spill-bytes-max 0 \
        "${sink_args[@]}" ${SHARDGATE_ARGS:-} || {
        tail -n 5 "$WORLD_DIR/engine.log" >&2
        return 1
    }
    python3 - "$n" "$sink" "$ENGINE_ADMIN" "$ENGINE_PID" "$receiver_pid" "$MOCK_PID" "$shards" \
        "$seconds" "$warmup_s" "$REDIS_URL" "$partitions" "${BOT_URL:-}" \
        "$dir/results.jsonl" <<'PY' || code=1
import json, os, subprocess, sys, time, urllib.error, urllib.request

(n, sink, admin, engine, receiver, mock, shards, seconds, warmup_s, redis_url, partitions,
 bot, results) = sys.argv[1:]
engine, receiver, mock, shards = int(engine), int(receiver), int(mock), int(shards)
seconds, warmup_s, partitions = float(seconds), float(warmup_s), int(partitions)
hz = os.sysconf("SC_CLK_TCK")

def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()

def cpu_s(pid):
    """utime + stime of the whole process (every thread), in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz

def metric(text, name):
    """The sum of a metric family's samples in a Prometheus text page."""
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")

def metrics():
    page = get(f"{admin}/metrics")[1]
    return {name: metric(page, f"shardgate_{name}") for name in (
        "sink_records_delivered_total", "sink_delivery_failures_total",
        "records_dropped_total", "reconnects_total", "ring_full_waits_total")}

def ready():
    status, body = get(f"{admin}/readyz")
    return status == 200 and json.loads(body).get("shards_active") == shards

def entries_added():
    """Entries XADDed to every partition since the flush (XINFO STREAM's entries-added)."""
    total = 0
    for partition in range(partitions):
        out = subprocess.run(["redis-cli", "-u", redis_url, "--json", "XINFO", "STREAM",
                              f"shardgate-bench:{partition}"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.startswith("{"):
            total += json.loads(out.stdout)["entries-added"]
    return total

deadline = time.time() + 120
while not ready():
    if time.time() > deadline:
        sys.exit(f"run {n} {sink}: not every shard ready after 120 s")
    time.sleep(0.1)
time.sleep(warmup_s)
m0, t0 = metrics(), time.monotonic()
c0 = {pid: cpu_s(pid) for pid in (engine, receiver, mock)}
time.sleep(seconds)
c1 = {pid: cpu_s(pid) for pid in (engine, receiver, mock)}
m1, t1 = metrics(), time.monotonic()
# Right after the window: the receiver's own count of what it took, beside the engine's.
if sink == "http":
    totals = json.loads(get(f"{bot}/_bot/report")[1])["totals"]
    received = totals["records"]
    # Not "gaps": the redundant MESSAGE_UPDATEs the engine's filter drops are gaps to the bot.
    problems = {k: totals[k] for k in ("duplicates", "out_of_order") if totals.get(k)}
else:
    received, problems = entries_added(), {}
still_ready = ready()
wall = t1 - t0
delta = {k: m1[k] - m0[k] for k in m0}
records = delta["sink_records_delivered_total"]
cpu = {pid: c1[pid] - c0[pid] for pid in c0}
r = {
    "run": int(n), "sink": sink, "wall_s": wall, "records": records,
    "records_per_s": records / wall,
    "engine_us": cpu[engine] / records * 1e6 if records else float("nan"),
    "engine_share": cpu[engine] / wall,
    "receiver_us": cpu[receiver] / records * 1e6 if records else float("nan"),
    "receiver_share": cpu[receiver] / wall,
    "mock_share": cpu[mock] / wall,
    "delivered_total": m1["sink_records_delivered_total"], "received_total": received,
    "failures": delta["sink_delivery_failures_total"], "dropped": delta["records_dropped_total"],
    "reconnects": delta["reconnects_total"], "ring_full_waits": delta["ring_full_waits_total"],
    "receiver_problems": problems, "ready_after": still_ready,
}
with open(results, "a") as out:
    out.write(json.dumps(r) + "\n")
receiver = "fake bot" if sink == "http" else "redis-server"
got = "the bot holds" if sink == "http" else "Redis counts as added"
print(f"run {n} {sink}: {r['records_per_s']:,.0f} records/s over {wall:.1f} s; engine "
      f"{r['engine_us']:.2f} µs CPU/record ({r['engine_share'] * 100:.0f} % of a CPU); {receiver} "
      f"{r['receiver_us']:.2f} µs/record ({r['receiver_share'] * 100:.0f} %); mock "
      f"{r['mock_share'] * 100:.0f} %; delivered {r['delivered_total']:,.0f} in all, {got} "
      f"{received:,.0f}; failures {r['failures']:.0f}, dropped {r['dropped']:.0f}, reconnects "
      f"{r['reconnects']:.0f}, ring-full waits {r['ring_full_waits']:.0f}"
      + (f"; the bot counts {problems}" if problems else "")
      + ("" if still_ready else "; NOT every shard ready at the end"), flush=True)
PY
    world_stop_one "$ENGINE_PID" || {
        echo "run $n $sink: shardgate exited with status $? after SIGTERM; its log is" \
            "$WORLD_DIR/engine.log" >&2
        code=1
    }
    [ "$sink" = http ] && { world_stop_one "$BOT_PID" || true; }
    world_stop_one "$MOCK_PID" || true
    BOT_URL=
    return "$code"
}

status=0
n=0
for _ in $(seq 1 "$repeat"); do
    for sink in "${sinks[@]}"; do
        n=$((n + 1))
        run_one "$n" "$sink" || status=1
    done
done

python3 - "$dir/results.jsonl" <<'PY' || status=1
import json, statistics, sys

try:
    runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
except FileNotFoundError:
    sys.exit("no run gave figures")
bad = [r["run"] for r in runs
       if r["failures"] or r["dropped"] or not r["ready_after"] or not r["records"]]
if bad:
    print(f"runs with failed deliveries, dropped records, a shard not ready or nothing delivered:"
          f" {bad}")
ok = [r for r in runs if r["run"] not in bad]
rows = {}
for sink, receiver in (("http", "fake bot"), ("redis-streams@baseline", "redis-server"),
                       ("redis-streams", "redis-server")):
    mine = [r for r in ok if r["sink"] == sink]
    if not mine:
        continue
    rows[sink] = {k: statistics.median(r[k] for r in mine)
                  for k in ("records_per_s", "engine_us", "engine_share", "receiver_us",
                            "receiver_share", "mock_share")}
    rows[sink]["runs"], rows[sink]["receiver"] = len(mine), receiver
print()
print("medians | runs | records/s | engine µs CPU/record | engine % of a CPU | receiver "
      "µs CPU/record | receiver % | mock %")
for sink, m in rows.items():
    print(f"{sink} | {m['runs']} | {m['records_per_s']:,.0f} | {m['engine_us']:.2f} | "
          f"{m['engine_share'] * 100:.0f} | {m['receiver_us']:.2f} ({m['receiver']}) | "
          f"{m['receiver_share'] * 100:.0f} | {m['mock_share'] * 100:.0f}")
for name in ("redis-streams@baseline", "redis-streams"):
    if "http" in rows and name in rows:
        h, s = rows["http"], rows[name]
        print(f"{name} / http: engine CPU per record {s['engine_us'] / h['engine_us']:.2f}, "
              f"records/s {s['records_per_s'] / h['records_per_s']:.2f}; redis-server's CPU per "
              f"record against the fake bot's {s['receiver_us'] / h['receiver_us']:.2f}")
if "redis-streams@baseline" in rows and "redis-streams" in rows:
    b, s = rows["redis-streams@baseline"], rows["redis-streams"]
    print(f"redis-streams / redis-streams@baseline: engine CPU per record "
          f"{s['engine_us'] / b['engine_us']:.2f}, records/s "
          f"{s['records_per_s'] / b['records_per_s']:.2f}, redis-server CPU per record "
          f"{s['receiver_us'] / b['receiver_us']:.2f}")
    # Per round (the runs of one round ran back to back), the same ratio: its spread says how
    # much of the medians' ratio is noise.
    rounds = {}
    for r in ok:
        if r["sink"] != "http":
            rounds.setdefault((r["run"] - 1) // 3, {})[r["sink"]] = r["engine_us"]
    per_round = [v["redis-streams"] / v["redis-streams@baseline"] for v in rounds.values()
                 if len(v) == 2]
    if per_round:
        print("per round, engine CPU per record new / baseline: "
              + ", ".join(f"{x:.2f}" for x in per_round))
sys.exit(1 if bad else 0)
PY
exit "$status"
