// A minimal bot endpoint for shardgate, in Node.js (18 or later) with no dependencies.
//
// shardgate POSTs batches to --forward-url: a JSON array of envelopes
// {"shard_id": N, "payload": {"t": ..., "s": ..., "op": 0, "d": ...}} (plus "guild_create" on
// GUILD_CREATEs and "notice" on the engine's own notices; docs/forwarding.md has the contract).
// Answer 2xx only once the batch is handled: shardgate retries anything else, so a crash before
// the answer means the batch comes again (at least once), never that it is lost.
//
//   FORWARD_SECRET=s3cret node examples/receivers/bot.mjs --listen 127.0.0.1:9000
//   shardgate run ... --forward-url http://127.0.0.1:9000/events   # same FORWARD_SECRET
//
// Prints one line per event on stdout; put your bot's logic in handleEvent().

import { createServer } from "node:http";
import { timingSafeEqual } from "node:crypto";

// A batch is at most --batch-bytes-max of payloads (1 MiB by default) plus envelopes, or one
// larger record alone (up to --payload-bytes-max); refuse anything beyond this.
const BODY_BYTES_MAX = 64 * 1024 * 1024;
const SECRET = Buffer.from(process.env.FORWARD_SECRET ?? "");

// One Discord dispatch, in order per shard. Replace this with the bot's own logic.
function handleEvent(shardId, payload, guildCreate) {
  const extra = guildCreate ? ` guild_create=${guildCreate}` : "";
  console.log(`event shard=${shardId} seq=${payload.s} type=${payload.t}${extra}`);
}

// An engine notice: SHARD_READY (payload {"guilds": N}) or ALL_SHARDS_READY ({"shards": N}).
function handleNotice(shardId, notice, payload) {
  console.log(`notice shard=${shardId} ${notice} ${JSON.stringify(payload)}`);
}

function authorized(header) {
  if (SECRET.length === 0) return true;
  const presented = Buffer.from(header ?? "");
  return presented.length === SECRET.length && timingSafeEqual(presented, SECRET);
}

const server = createServer((request, response) => {
  const answer = (status) => response.writeHead(status, { "Content-Length": 0 }).end();
  if (request.method !== "POST") return answer(405);
  if (!authorized(request.headers.authorization)) return answer(401);
  const chunks = [];
  let bytes = 0;
  request.on("data", (chunk) => {
    bytes += chunk.length;
    if (bytes > BODY_BYTES_MAX) {
      answer(413);
      request.destroy();
    } else {
      chunks.push(chunk);
    }
  });
  request.on("end", () => {
    let batch;
    try {
      batch = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return answer(400);
    }
    for (const envelope of batch) {
      if ("notice" in envelope) {
        handleNotice(envelope.shard_id, envelope.notice, envelope.payload);
      } else {
        handleEvent(envelope.shard_id, envelope.payload, envelope.guild_create);
      }
    }
    answer(204); // the whole batch is acknowledged
  });
});

const at = process.argv.indexOf("--listen");
const listen = at >= 0 ? process.argv[at + 1] : "127.0.0.1:9000";
const split = listen.lastIndexOf(":");
const host = listen.slice(0, split);
server.listen(Number(listen.slice(split + 1)), host, () => {
  console.log(`listening on http://${host}:${server.address().port}/`);
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
