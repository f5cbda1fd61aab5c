#!/usr/bin/env bash
# A fleet measured: HOSTS shardgate processes share SHARDS shards through one Redis of this
# script's own, against the mock gateway (TLS, Discord's 5 s identify window, MAX_CONCURRENCY
# buckets) and the fake bot. Prints
#   - the fleet limiter's identify throughput: the time from the first identify to the last
#     (the mock's log) next to the bucket floor (ceil(SHARDS / MAX_CONCURRENCY) - 1) × 5 s,
#     the mock's identify violations, and Redis round trips per identify (the hosts' /metrics);
#   - a failover: after 5 s of steady traffic, kill -9 of the host holding the most shards,
#     then the time until a live host holds each of its shards (the survivors' logs; GET
#     /cluster on a survivor, polled every 100 ms, beside it) and until each is connected again
#     at the mock (the mock's log), next to the shard lease; identifies after the kill (0: every
#     shard resumed), overlapping sessions (0), what the bot got twice (in seconds of each
#     shard's traffic) and what it misses against the mock's ledger (0).
# (Correctness under every failure is what engine/tests/fleet.rs checks; this measures.)
#
#   cargo build --release -p shardgate -p mock-gateway -p fake-bot
#   tools/fleet/run.sh [SHARDS=300] [HOSTS=3] [MAX_CONCURRENCY=16] [RATE=5]
#   BIN_DIR=target/debug tools/fleet/run.sh 32 2 8 5           # the debug binaries, smaller
#   SHARDGATE_ARGS='--session-save-interval-ms 200' tools/fleet/run.sh   # extra `shardgate run` flags
#
# The defaults put about 100 shards on each host, so the failover moves about 100. The leases
# are short so that it is quick: --host-lease-ms 2000 --shard-lease-ms 5000 (HOST_LEASE_MS,
# SHARD_LEASE_MS; shardgate's defaults are 10000 and 15000). RATE is events/s per shard.
# Needs redis-server (7 or later), python3, and `ulimit -n` above 4 × SHARDS (raised to the
# hard limit if it is lower). Every port is picked free (tools/lib/world.sh); work files go to
# $FLEET_DIR (default a new temporary directory, removed unless KEEP=1). Stops only the
# processes it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
shards=${1:-300}
hosts=${2:-3}
max_concurrency=${3:-16}
rate=${4:-5}
host_lease_ms=${HOST_LEASE_MS:-2000}
shard_lease_ms=${SHARD_LEASE_MS:-5000}
[ "$hosts" -ge 2 ] || { echo "HOSTS must be 2 or more: one is killed" >&2; exit 2; }
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((shards * 4 + 256)) ]; then
    ulimit -n "$(ulimit -Hn)"
    [ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((shards * 4 + 256)) ] || {
        echo "ulimit -n is $(ulimit -n): raise it above $((shards * 4 + 256))" >&2
        exit 2
    }
fi
dir=${FLEET_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/shardgate-fleet.XXXXXX")}
mkdir -p "$dir"
. tools/lib/world.sh
world_init "$dir" "${BIN_DIR:-target/release}"
finish() {
    local code=$?
    [ -f "$dir/killed" ] && [ -n "${ENGINE_PIDS[$(cat "$dir/killed")]:-}" ] &&
        world_reap_engine "$(cat "$dir/killed")"
    world_stop_engines || true
    world_stop
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work directory kept: $dir"
    else
        rm -rf "$dir"
        [ "$code" = 0 ] || echo "the logs went with $dir: run again with KEEP=1 to keep them" >&2
    fi
}
trap finish EXIT

world_start_redis
# Five guilds per shard; the mock logs each identify and resume (with its time) at debug.
world_start_mock --tls --guilds $((shards * 5)) --recommended-shards "$shards" \
    --max-concurrency "$max_concurrency" --session-start-total 100000 --rate "$rate" \
    --log info,mock_gateway::conn=debug
world_start_bot
started=$(date +%s.%N)
for n in $(seq 1 "$hosts"); do
    # shellcheck disable=SC2086 # SHARDGATE_ARGS is split into flags on purpose
    DISCORD_TOKEN=mock-token world_start_engine_n "$n" --api-base "$MOCK_API_BASE" \
        --ca-file "$MOCK_CA" --forward-url "$BOT_URL/events" --total-shards "$shards" \
        --cores 1 --data-dir "$dir/data-$n" --log info \
        --redis-url "$REDIS_URL" --cluster-name fleet-bench --host-id "host-$n" \
        --host-lease-ms "$host_lease_ms" --shard-lease-ms "$shard_lease_ms" ${SHARDGATE_ARGS:-}
done

# bash reports the host the measurement kills ("Killed") on its own stderr once the measurement
# ends: noise here, so the shell's stderr is set aside meanwhile (the measurement keeps its own).
exec 3>&2 2>/dev/null
status=0
python3 - "$dir" "$MOCK_HTTP" "$MOCK_CA" "$BOT_URL" "$shards" "$max_concurrency" "$rate" \
    "$host_lease_ms" "$shard_lease_ms" "$started" \
    "$(IFS=,; echo "${ENGINE_PIDS[*]}")" "$(IFS=,; echo "${ENGINE_ADMINS[*]}")" 2>&3 <<'PY' || status=$?
import collections, datetime, json, math, os, re, signal, ssl, sys, time, urllib.request

(work, mock, ca, bot, shards, mc, rate, host_lease_ms, shard_lease_ms, started, pids,
 admins) = sys.argv[1:]
shards, mc, rate = int(shards), int(mc), float(rate)
host_lease_s, shard_lease_s = int(host_lease_ms) / 1000, int(shard_lease_ms) / 1000
started = float(started)
# Host n (from 1) is host-n.
pids = dict(enumerate(map(int, pids.split(",")), 1))
admins = dict(enumerate(admins.split(","), 1))
context = ssl.create_default_context(cafile=ca)
WINDOW_S = 5.0

def fetch(url):
    ctx = context if url.startswith("https") else None
    with urllib.request.urlopen(url, timeout=30, context=ctx) as answer:
        return answer.read().decode()

def get(url):
    try:
        return json.loads(fetch(url))
    except urllib.error.HTTPError as error:
        return json.loads(error.read() or b"null")

def alive(n):
    try:
        state = open(f"/proc/{pids[n]}/stat").read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False

def metric(text, name):
    """The sum of a metric family's samples in a Prometheus text page."""
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")

LINE = re.compile(r"^(\S+)\s+DEBUG\b.*\b(identified|resumed) shard=(\d+)")

GRANTED = re.compile(r"^(\S+)\s+INFO\b.*shard lease granted.*\bshard=(\d+)")

def granted_after(n, after):
    """{shard: unix time} of the leases host n's log says it was granted after `after`."""
    out = {}
    for line in open(os.path.join(work, f"engine-{n}.log")):
        match = GRANTED.match(line)
        if match:
            at = datetime.datetime.fromisoformat(match[1].replace("Z", "+00:00")).timestamp()
            if at > after:
                out.setdefault(int(match[2]), at)
    return out

def mock_log():
    """(unix time, "identified" | "resumed", shard) for each line of the mock's log."""
    out = []
    for line in open(os.path.join(work, "mock.log")):
        match = LINE.match(line)
        if match:
            at = datetime.datetime.fromisoformat(match[1].replace("Z", "+00:00")).timestamp()
            out.append((at, match[2], int(match[3])))
    return out

def received(report, only=None):
    """{(shard, session id): the sequences the bot got} from its report."""
    out = {}
    for shard, entry in report["shards"].items():
        if only is not None and int(shard) not in only:
            continue
        for run in entry["runs"]:
            seqs = out.setdefault((int(shard), run.get("session_id")), set())
            for first, last in run["ranges"]:
                seqs.update(range(first, last + 1))
    return out

def optional(session):
    """What the bot may or may not get: redundant MESSAGE_UPDATEs, cut payloads."""
    return set(session.get("redundant_update_seqs", [])) | set(session.get("truncated_seqs", []))

def missing(ledger, report):
    """Events the bot had to get and did not, as tools/lib/check_delivery.py counts them: per
    session, every dispatch up to the highest sequence the bot got, but the optional ones."""
    got, count = received(report), 0
    for shard, entry in ledger["shards"].items():
        for session in entry["sessions"]:
            seqs = got.get((int(shard), session["session_id"]), set())
            skip = optional(session)
            count += sum(1 for seq in range(session["first_seq"],
                                            min(session["last_seq"], max(seqs, default=0)) + 1)
                         if seq not in skip and seq not in seqs)
    return count

def wait(what, done, timeout, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for n in pids:
            if not alive(n):
                sys.exit(f"host-{n} exited while waiting for {what}; see {work}/engine-{n}.log")
        answer = done()
        if answer:
            return answer
        time.sleep(every)
    sys.exit(f"timed out after {timeout:.0f} s waiting for {what}")

floor_s = (math.ceil(shards / mc) - 1) * WINDOW_S
plan = re.search(r"identify_floor_ms=(\d+)", open(os.path.join(work, "engine-1.log")).read())

# 1. Every shard identified and running: each host ready, every shard leased, every identify in.
def all_running():
    try:
        owned = 0
        for admin in admins.values():
            ready = get(f"{admin}/readyz")
            if not ready.get("ready"):
                return False
            owned += ready["shards_owned"]
        cluster = get(f"{admins[1]}/cluster")
        return (owned == shards and len(cluster["leases"]) == shards
                and get(f"{mock}/_mock/ledger")["identifies_total"] >= shards)
    except OSError:
        return False
wait("every shard running", all_running, shard_lease_s + floor_s * 3 + 120)

identifies = sorted(at for at, kind, _ in mock_log() if kind == "identified")
span_s = identifies[-1] - identifies[0]
granted, round_trips = {}, {}
for n, admin in admins.items():
    page = fetch(f"{admin}/metrics")
    granted[n] = metric(page, "shardgate_fleet_identifies_granted_total")
    round_trips[n] = metric(page, "shardgate_fleet_identify_round_trips_total")
ledger = get(f"{mock}/_mock/ledger")
kinds = collections.Counter(v["kind"] for v in ledger["violations"])

print(f"fleet: {shards} shards on {len(pids)} hosts (--cores 1 each), max_concurrency {mc}, "
      f"{rate:g} events/s per shard, --host-lease-ms {host_lease_ms} --shard-lease-ms "
      f"{shard_lease_ms}")
print(f"identify: {len(identifies)} identifies (ledger {ledger['identifies_total']}) from the "
      f"first to the last in {span_s:.1f} s; floor (ceil({shards}/{mc}) - 1) x 5 s = "
      f"{floor_s:.1f} s; ratio {span_s / floor_s if floor_s else float('nan'):.3f}")
if plan:
    print(f"  the engine's own floor (its safety margin added): {int(plan[1]) / 1000:.2f} s; "
          f"ratio {span_s / (int(plan[1]) / 1000):.3f}")
print(f"  first identify {identifies[0] - started:.1f} s after the first host started (a new "
      f"fleet waits one shard lease, {shard_lease_s:g} s)")
print(f"  granted per host: " + ", ".join(f"host-{n} {granted[n]:.0f}" for n in granted))
print(f"  violations: identify_too_fast {kinds.get('identify_too_fast', 0)}, all kinds "
      f"{len(ledger['violations'])} {dict(kinds) if kinds else ''}".rstrip())
print(f"  Redis round trips per identify: {sum(round_trips.values()):.0f} / "
      f"{sum(granted.values()):.0f} = "
      f"{sum(round_trips.values()) / max(sum(granted.values()), 1):.2f} "
      f"(" + ", ".join(f"host-{n} {round_trips[n]:.0f}" for n in round_trips) + ")")

# 2. Steady traffic, then kill -9 the host holding the most shards.
steady, steady_at = get(f"{mock}/_mock/ledger"), time.time()
time.sleep(5)
cluster = get(f"{admins[1]}/cluster")
held = {int(h["id"].split("-")[1]): set(h["leased"]) for h in cluster["hosts"]}
victim = max(held, key=lambda n: len(held[n]))
moved = held[victim]
survivors = [n for n in pids if n != victim]
names = {f"host-{n}" for n in survivors}
before, before_at = get(f"{mock}/_mock/ledger"), time.time()
report_before = get(f"{bot}/_bot/report")
bot_before = report_before["totals"]
def connections(ledger, shard):
    entry = ledger["shards"].get(str(shard), {})
    return entry.get("identifies", 0) + entry.get("resumes", 0)
connected_before = {s: connections(before, s) for s in moved}
os.kill(pids[victim], signal.SIGKILL)
killed = time.time()
open(os.path.join(work, "killed"), "w").write(str(victim))
del pids[victim], admins[victim]

def all_held():
    try:
        leases = get(f"{admins[survivors[0]]}/cluster")["leases"]
    except OSError:
        return None
    if all(leases.get(str(s), {}).get("host") in names for s in moved):
        return time.time()
    return None
polled_at = wait("a live host to hold every shard of the killed host", all_held,
               shard_lease_s * 4 + 60, every=0.1)
def all_connected():
    try:
        ledger = get(f"{mock}/_mock/ledger")
    except OSError:
        return None
    return all(connections(ledger, s) > connected_before[s] for s in moved)
wait("every shard of the killed host connected at the mock", all_connected, 60, every=0.25)
first_back = {}
for at, kind, shard in mock_log():
    if at > killed and shard in moved and shard not in first_back:
        first_back[shard] = (at, kind)
connected_at = max(at for at, _ in first_back.values())
taken = {}
for n in survivors:
    for shard, at in granted_after(n, killed).items():
        if shard in moved:
            taken[shard] = min(at, taken.get(shard, at))
held_at = max(taken.values()) if len(taken) == len(moved) else polled_at
back_by = collections.Counter(kind for _, kind in first_back.values())

# 3. Every shard running on the survivors; then the ledger and the bot.
def survivors_ready():
    try:
        ready = [get(f"{admins[n]}/readyz") for n in survivors]
    except OSError:
        return False
    return all(r.get("ready") for r in ready) and sum(r["shards_owned"] for r in ready) == shards
wait("every shard running on the survivors", survivors_ready, 60)
time.sleep(3)  # the bot gets the replays
after = get(f"{mock}/_mock/ledger")
report_after = get(f"{bot}/_bot/report")
bot_after = report_after["totals"]
# The events of the moved shards the bot got for the first time after the kill, below the
# highest it had then: redundant MESSAGE_UPDATEs the killed host's filter had dropped (the new
# host's starts empty and lets them through), or anything else.
got_before, late_redundant, late_other = received(report_before, moved), 0, 0
sessions = {(int(shard), session["session_id"]): session
            for shard, entry in after["shards"].items() for session in entry["sessions"]}
for key, seqs in received(report_after, moved).items():
    had = got_before.get(key, set())
    late = {seq for seq in seqs - had if seq < max(had, default=0)}
    skip = optional(sessions.get(key, {}))
    late_redundant += len(late & skip)
    late_other += len(late - skip)
# What each moved shard got twice, in seconds of its own traffic (its dispatches per second
# over the steady window before the kill).
def dispatches(ledger, shard):
    return sum(s["dispatches"] for s in ledger["shards"].get(str(shard), {}).get("sessions", []))
twice_s = []
for shard in moved:
    per_s = (dispatches(before, shard) - dispatches(steady, shard)) / (before_at - steady_at)
    twice = (report_after["shards"].get(str(shard), {}).get("duplicates", 0)
             - report_before["shards"].get(str(shard), {}).get("duplicates", 0))
    twice_s.append(twice / per_s if per_s else 0.0)
twice_s.sort()
kinds_after = collections.Counter(v["kind"] for v in after["violations"])
cluster = get(f"{admins[survivors[0]]}/cluster")
spread = ", ".join(f"{h['id']} {len(h['leased'])}" for h in cluster["hosts"])

print(f"failover: kill -9 host-{victim}, which held {len(moved)} shards, after 5 s of steady "
      f"traffic")
print(f"  every one held by a live host after {held_at - killed:.2f} s (the survivors' logs; "
      f"GET /cluster, polled every 100 ms, saw it at {polled_at - killed:.2f} s), connected "
      f"again at the mock after {connected_at - killed:.2f} s (its log); shard lease "
      f"{shard_lease_s:g} s: ratios {(held_at - killed) / shard_lease_s:.2f} and "
      f"{(connected_at - killed) / shard_lease_s:.2f}")
print(f"  came back by {back_by.get('resumed', 0)} resumes and {back_by.get('identified', 0)} "
      f"identifies; after the kill the mock counted "
      f"{after['identifies_total'] - before['identifies_total']} identifies and "
      f"{after['resumes_total'] - before['resumes_total']} resumes")
print(f"  overlapping sessions {after['overlapping_sessions']}; violations "
      f"{len(after['violations'])} {dict(kinds_after) if kinds_after else ''}".rstrip())
print(f"  the bot got {bot_after['duplicates'] - bot_before['duplicates']} events twice (those "
      f"after the last saved session), "
      f"{bot_after['out_of_order'] - bot_before['out_of_order']} out of order: "
      f"{late_redundant} redundant MESSAGE_UPDATEs the killed host had dropped, {late_other} "
      f"others; missing over the whole run (against the mock's ledger): "
      f"{missing(after, report_after)}")
print(f"  per moved shard, what the bot got twice in seconds of that shard's traffic: mean "
      f"{sum(twice_s) / len(twice_s):.2f} s, median {twice_s[len(twice_s) // 2]:.2f} s, most "
      f"{twice_s[-1]:.2f} s")
print(f"  shards held now: {spread}")
PY
exec 2>&3 3>&-
[ "$status" = 0 ] || exit "$status"
world_reap_engine "$(cat "$dir/killed")"
world_stop_engines || { echo "a surviving host did not stop cleanly" >&2; exit 1; }
echo "stopped: every surviving host exited 0 after SIGTERM"
