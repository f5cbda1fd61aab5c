#!/usr/bin/env python3
"""A minimal bot endpoint for shardgate, in Python with the standard library only.

shardgate POSTs batches to --forward-url: a JSON array of envelopes
{"shard_id": N, "payload": {"t": ..., "s": ..., "op": 0, "d": ...}} (plus "guild_create" on
GUILD_CREATEs and "notice" on the engine's own notices; docs/forwarding.md has the contract).
Answer 2xx only once the batch is handled: shardgate retries anything else, so a crash before
the answer means the batch comes again (at least once), never that it is lost.

    FORWARD_SECRET=s3cret python3 examples/receivers/bot.py --listen 127.0.0.1:9000
    shardgate run ... --forward-url http://127.0.0.1:9000/events   # same FORWARD_SECRET

Prints one line per event on stdout; put your bot's logic in handle_event().
"""

import argparse
import hmac
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A batch is at most --batch-bytes-max of payloads (1 MiB by default) plus envelopes, or one
# larger record alone (up to --payload-bytes-max); refuse anything beyond this.
BODY_BYTES_MAX = 64 * 1024 * 1024
SECRET = os.environ.get("FORWARD_SECRET", "").encode()
# shardgate posts several batches at once (--batches-in-flight, over as many connections), each
# from other shards than the rest; one shard's batches never overlap. The lock keeps this
# example's printed lines whole; handle_event's own state per shard needs none.
OUTPUT = threading.Lock()


def handle_event(shard_id, payload, guild_create):
    """One Discord dispatch, in order per shard. Replace this with the bot's own logic."""
    extra = f" guild_create={guild_create}" if guild_create else ""
    print(f"event shard={shard_id} seq={payload['s']} type={payload['t']}{extra}")


def handle_notice(shard_id, notice, payload):
    """An engine notice: SHARD_READY (payload {"guilds": N}) or ALL_SHARDS_READY ({"shards": N})."""
    print(f"notice shard={shard_id} {notice} {json.dumps(payload)}")


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: shardgate reuses one connection

    def do_POST(self):
        if SECRET and not hmac.compare_digest(self.headers.get("Authorization", "").encode(), SECRET):
            return self.answer(401)
        length = int(self.headers.get("Content-Length") or 0)
        if length > BODY_BYTES_MAX:
            return self.answer(413)
        try:
            batch = json.loads(self.rfile.read(length))
        except ValueError:
            return self.answer(400)
        with OUTPUT:
            for envelope in batch:
                if "notice" in envelope:
                    handle_notice(envelope["shard_id"], envelope["notice"], envelope["payload"])
                else:
                    handle_event(envelope["shard_id"], envelope["payload"], envelope.get("guild_create"))
            sys.stdout.flush()
        self.answer(204)  # the whole batch is acknowledged

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass  # one line per request would drown the events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9000", help="HOST:PORT; port 0 picks a free one")
    host, port = parser.parse_args().listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Receiver)
    print(f"listening on http://{host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
