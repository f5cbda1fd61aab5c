#!/usr/bin/env bash
# A reshard under traffic, measured: shardgate runs FROM shards against the mock gateway (TLS,
# the identify window at Discord's 5 s, MAX_CONCURRENCY buckets), then POST /reshard asks for TO.
# Prints the time from the request to the switch next to the identify floor, the engine's CPU
# and resident memory before, during and after the overlap, and the merge's figures (peak keys,
# duplicates, skew). (Exactly-once delivery across the switch is what engine/tests/reshard.rs
# checks; this measures.)
#
#   cargo build --release -p shardgate -p mock-gateway -p fake-bot
#   tools/reshard/run.sh [FROM=64] [TO=128] [MAX_CONCURRENCY=16] [RATE=20]
#   BIN_DIR=target/debug tools/reshard/run.sh 8 16 4 20      # the debug binaries, smaller
#
# RATE is events/s per shard of the FROM set. Needs python3 and `ulimit -n` above 2 × TO.
# Every port is picked free (tools/lib/world.sh); work files go to $RESHARD_DIR (default a new
# temporary directory, removed unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
from=${1:-64}
to=${2:-128}
max_concurrency=${3:-16}
rate=${4:-20}
dir=${RESHARD_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/shardgate-reshard.XXXXXX")}
mkdir -p "$dir/data"
. tools/lib/world.sh
world_init "$dir" "${BIN_DIR:-target/release}"
finish() {
    world_stop
    [ "${KEEP:-0}" = 1 ] && echo "work directory kept: $dir" || rm -rf "$dir"
}
trap finish EXIT

# 20 guilds per FROM shard: about 10 per TO shard.
world_start_mock --tls --guilds $((from * 20)) --recommended-shards "$from" \
    --max-concurrency "$max_concurrency" --session-start-total 100000 --rate "$rate" \
    --guild-create-bytes 2000
world_start_bot
DISCORD_TOKEN=mock-token world_start_engine --api-base "$MOCK_API_BASE" --ca-file "$MOCK_CA" \
    --forward-url "$BOT_URL/events" --total-shards "$from" --reshard off \
    --data-dir "$dir/data" --log info --log-format json
engine=$ENGINE_PID

python3 - "$ENGINE_ADMIN" "$MOCK_HTTP" "$MOCK_CA" "$BOT_URL" "$engine" "$from" "$to" \
    "$max_concurrency" <<'PY'
import json, os, ssl, sys, time, urllib.request

admin, mock, ca, bot, pid, frm, to, mc = sys.argv[1:]
frm, to, mc = int(frm), int(to), int(mc)
context = ssl.create_default_context(cafile=ca)
hz = os.sysconf("SC_CLK_TCK")

def call(url, method="GET", body=None):
    request = urllib.request.Request(url, method=method, data=body)
    ctx = context if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=ctx) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")

def cpu_s():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

def wait(what, done, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if done():
            return
        time.sleep(0.25)
    sys.exit(f"timed out waiting for {what}")

wait("every shard ready", lambda: call(f"{admin}/readyz")[0] == 200, 600)
time.sleep(3)
# Steady state before: CPU per second and memory.
c0, t0 = cpu_s(), time.time()
time.sleep(10)
before_cpu = (cpu_s() - c0) / (time.time() - t0)
before_rss = rss_mib()

status, answer = call(f"{admin}/reshard", "POST", json.dumps({"total_shards": to}).encode())
if status != 202:
    sys.exit(f"POST /reshard answered {status}: {answer}")
asked = time.time()
floor = answer["current"]["identify_floor_s"]
c1 = cpu_s()
peak_rss = rss_mib()
switched = None
while True:
    status, state = call(f"{admin}/reshard")
    peak_rss = max(peak_rss, rss_mib())
    if state["current"] is None:
        break
    if switched is None and state["current"]["phase"] == "draining":
        switched = time.time()
    if time.time() - asked > floor * 3 + 300:
        sys.exit(f"the reshard did not finish: {state}")
    time.sleep(0.2)
done = time.time()
overlap_cpu = (cpu_s() - c1) / (done - asked)
last = state["last"]
if last is None or last["outcome"] != "finished":
    sys.exit(f"the reshard did not finish: {last}")
time.sleep(3)
c2, t2 = cpu_s(), time.time()
time.sleep(10)
after_cpu = (cpu_s() - c2) / (time.time() - t2)
after_rss = rss_mib()
merge = last.get("merge") or {}

print(f"reshard {frm} -> {to} shards at max_concurrency {mc}:")
print(f"  request to switch {(switched or done) - asked:.1f} s, to the end {done - asked:.1f} s;"
      f" identify floor {floor:.1f} s")
print(f"  engine CPU: {before_cpu * 100:.1f} % of one CPU before, {overlap_cpu * 100:.1f} % "
      f"during the reshard, {after_cpu * 100:.1f} % after")
print(f"  engine RSS: {before_rss:.0f} MiB before, {peak_rss:.0f} MiB at the peak, "
      f"{after_rss:.0f} MiB after")
print(f"  merge: {merge.get('duplicates')} duplicates dropped, {merge.get('delivered')} delivered, "
      f"{merge.get('released_unmatched')} released unmatched, {merge.get('expired_unmatched')} "
      f"expired unmatched; peak {merge.get('peak_keys')} keys waiting for a twin")
print(f"  skew between the sets: {merge.get('skew_p99_ms', 0):.1f} ms (99th percentile), "
      f"{merge.get('max_skew_ms', 0):.1f} ms at most; span {merge.get('span_s', 0):.1f} s")
PY
world_stop_engine || { echo "the engine did not stop cleanly" >&2; exit 1; }
