#!/usr/bin/env python3
"""A minimal worker for shardgate's Redis Streams sink, in Python with redis-py.

With --sink redis-streams shardgate XADDs every record to the stream
{--stream-key}:{shard_id % --stream-partitions}. An entry's fields: shard, seq, type (the event
name), kind (dispatch, guild_create:backfill|join|return, or notice:NAME), guild (when the event
has one), id (shard:seq:session tag: a second copy of an event has the same id) and
payload (the gateway payload's bytes exactly as Discord sent them). docs/forwarding.md has the
contract.

This worker reads every partition stream through a consumer group and acknowledges an entry
(XACK) only once it is handled: a worker that dies before that leaves its entries pending, and
another worker of the group claims them (XAUTOCLAIM) once they have been idle for
--claim-min-idle-ms. So each entry is handled at least once; copies of an event (a replay after
shardgate crashed) carry the same id, and the worker drops those it has seen. Run one worker per
name; a worker started again under its name first reads its own pending entries.

    apt-get install python3-redis   # or: pip install redis
    python3 examples/consumers/stream_consumer.py --redis-url redis://127.0.0.1:6379/0 \
        --stream-key shardgate:events --partitions 1 --group bot --consumer worker-1
    shardgate run ... --sink redis-streams --redis-url redis://127.0.0.1:6379/0

Prints one line per event on stdout; put your bot's logic in handle_event().
"""

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections import OrderedDict

import redis


def handle_event(shard_id, payload, guild_create):
    """One Discord dispatch, in order per shard. Replace this with the bot's own logic."""
    extra = f" guild_create={guild_create}" if guild_create else ""
    print(f"event shard={shard_id} seq={payload['s']} type={payload['t']}{extra}")


def handle_notice(shard_id, notice, payload):
    """An engine notice: SHARD_READY (payload {"guilds": N}) or ALL_SHARDS_READY ({"shards": N})."""
    print(f"notice shard={shard_id} {notice} {json.dumps(payload)}")


class SeenIds:
    """The ids of the last `size` events handled, to drop second copies.

    A copy comes soon after its first copy: shardgate writes one again only when it replays from
    its last saved session position after a crash (at most --session-save-interval-ms of events
    back, 1 s by default) or sends a batch to Redis again after a broken connection. So a bounded
    window of recent ids is enough: 100,000 ids (about 10 MB here) is minutes of a busy shard.
    A per-shard "last sequence" would be smaller, but it drops real events: the sequence starts
    again at 1 with each new Discord session, and an entry claimed from a dead worker arrives
    after newer ones. Copies handed to two different workers are not caught here: where an
    event must never act twice, store its id with its effect (a unique key in the bot's
    database, or SET id 1 NX EX 3600 in Redis) instead.
    """

    def __init__(self, size):
        self.size = size
        self.ids = OrderedDict()

    def __contains__(self, event_id):
        return event_id in self.ids

    def add(self, event_id):
        self.ids[event_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)  # the oldest


def handle_entry(fields, seen):
    """One stream entry. Raises KeyError or ValueError for an entry that is not shardgate's."""
    shard_id = int(fields[b"shard"])
    kind = fields[b"kind"].decode()
    payload = json.loads(fields[b"payload"])
    if kind.startswith("notice:"):
        # Notices are not deduplicated: their id (sequence 0) is the same for two sessions'
        # identical notices.
        handle_notice(shard_id, kind[len("notice:"):], payload)
        return
    event_id = fields[b"id"]
    if event_id in seen:
        return  # a second copy of an event handled already
    guild_create = kind.split(":", 1)[1] if kind.startswith("guild_create:") else None
    handle_event(shard_id, payload, guild_create)
    seen.add(event_id)


def handle_entries(client, key, group, entries, seen):
    """Handles entries of one stream in order, then acknowledges them all at once."""
    for entry_id, flat in entries:
        if flat is None:
            continue  # pending, but trimmed away by MAXLEN since: nothing left to handle
        fields = dict(zip(flat[0::2], flat[1::2]))
        try:
            handle_entry(fields, seen)
        except (KeyError, ValueError) as error:
            # Acknowledged all the same: left pending, it would be claimed again forever.
            print(f"skipping entry {entry_id.decode()} of {key}: {error!r}", file=sys.stderr)
    sys.stdout.flush()
    if entries:
        client.xack(key, group, *[entry_id for entry_id, _ in entries])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--stream-key", default="shardgate:events", help="shardgate's --stream-key")
    parser.add_argument("--partitions", type=int, default=1, help="shardgate's --stream-partitions")
    parser.add_argument("--group", default="bot")
    parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--block-ms", type=int, default=5000, help="longest wait for new entries")
    parser.add_argument("--count", type=int, default=100, help="most entries per read")
    parser.add_argument("--claim-min-idle-ms", type=int, default=60000)
    parser.add_argument("--seen-ids", type=int, default=100000, help="event ids kept to drop copies")
    args = parser.parse_args()

    # A read waits up to --block-ms for entries: the socket must wait longer than that.
    client = redis.Redis.from_url(
        args.redis_url, socket_connect_timeout=5, socket_timeout=args.block_ms / 1000 + 10
    )
    # Raw replies, read below: the same shape whatever redis-py's version, and a pending entry
    # that was trimmed away (its fields nil) does not break the parser.
    for command in ("XREADGROUP", "XAUTOCLAIM"):
        client.set_response_callback(command, lambda response, **options: response)
    keys = [f"{args.stream_key}:{partition}" for partition in range(args.partitions)]
    seen = SeenIds(args.seen_ids)

    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))

    connected = announced = False
    next_claim = 0.0
    delay = 0.1
    while not stopping:
        try:
            if not connected:
                for key in keys:
                    try:
                        client.xgroup_create(key, args.group, id="0", mkstream=True)
                    except redis.exceptions.ResponseError as error:
                        if "BUSYGROUP" not in str(error):
                            raise
                if announced:
                    print("Redis is back", file=sys.stderr)
                else:
                    print(f"consuming {', '.join(keys)} as {args.group}/{args.consumer}", flush=True)
                    announced = True
                # First what this worker was given before and never acknowledged.
                for key in keys:
                    while True:
                        reply = client.xreadgroup(args.group, args.consumer, {key: "0"}, count=args.count)
                        entries = reply[0][1] if reply else []
                        if not entries:
                            break
                        handle_entries(client, key, args.group, entries, seen)
                connected = True
            if time.monotonic() >= next_claim:
                # Then what dead workers left: entries idle for longer than --claim-min-idle-ms.
                for key in keys:
                    cursor = "0-0"
                    while True:
                        reply = client.xautoclaim(
                            key, args.group, args.consumer, args.claim_min_idle_ms, cursor, count=args.count
                        )
                        cursor, entries = reply[0], reply[1]
                        if entries:
                            print(f"claimed {len(entries)} pending entries of {key}", file=sys.stderr)
                        handle_entries(client, key, args.group, entries, seen)
                        if cursor in (b"0-0", "0-0"):
                            break
                next_claim = time.monotonic() + args.claim_min_idle_ms / 2000
            reply = client.xreadgroup(
                args.group, args.consumer, {key: ">" for key in keys}, count=args.count, block=args.block_ms
            )
            for key, entries in reply or []:
                handle_entries(client, key.decode(), args.group, entries, seen)
            delay = 0.1
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
            # Redis went away: the unacknowledged entries stay pending; read them on return.
            print(f"Redis: {error}; retrying in {delay:.1f} s", file=sys.stderr)
            connected = False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


if __name__ == "__main__":
    main()
