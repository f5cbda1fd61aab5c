// discord.js from login to first messages, against a gateway at --api (the mock gateway).
//
//   node discordjs-login.mjs --api http://127.0.0.1:PORT/api --token TOKEN \
//     [--shards auto|N] [--messages 20] [--timeout-ms 45000] [--debug]
//
// Logs in (REST `GET /gateway/bot`, then the gateway URL it returns), waits for `shardReady` on
// every shard and `clientReady`, fetches the bot user and its application through the library's
// REST client, waits for --messages `messageCreate` events and one acknowledged heartbeat on
// every shard, closes, and prints ONE JSON summary line on stdout. Exit 0 only when all of
// that happened; 1 on any error, unrecoverable close or timeout (the script always stops by
// itself). Driven by tests/tests/discord_js.rs; diagnostics go to stderr.
//
// Per shard the summary counts dispatches as they arrive (`raw`: sequences, gaps, types) and the
// `messageCreate` events discord.js raises; a MESSAGE_CREATE that raised none is counted as
// `not_delivered_reply_first` when a reply to it was handled first (see below), else as
// `not_delivered_other`.

import { parseArgs } from 'node:util';
import { Client, Events, GatewayIntentBits, Routes, version } from 'discord.js';

const { values: args } = parseArgs({
  options: {
    api: { type: 'string' },
    token: { type: 'string' },
    shards: { type: 'string', default: 'auto' },
    messages: { type: 'string', default: '20' },
    'timeout-ms': { type: 'string', default: '45000' },
    debug: { type: 'boolean', default: false },
  },
  strict: true,
});

function fail(reason) {
  process.stderr.write(`discordjs-login: ${reason}\n`);
  process.exit(1);
}

if (!args.api || !args.token) fail('--api and --token are required');
const messagesWanted = Number(args.messages);
const timeoutMs = Number(args['timeout-ms']);
if (!Number.isInteger(messagesWanted) || messagesWanted < 1) fail('--messages must be a positive integer');
if (!Number.isInteger(timeoutMs) || timeoutMs < 1) fail('--timeout-ms must be a positive integer');

const started = Date.now();
const deadline = setTimeout(() => {
  fail(`timed out after ${timeoutMs} ms; progress: ${JSON.stringify(progress())}`);
}, timeoutMs);

process.on('unhandledRejection', (error) => fail(`unhandled rejection: ${error?.stack ?? error}`));
process.on('uncaughtException', (error) => fail(`uncaught exception: ${error?.stack ?? error}`));

const shardOptions =
  args.shards === 'auto' ? { shards: 'auto' } : (() => {
    const count = Number(args.shards);
    if (!Number.isInteger(count) || count < 1) fail('--shards must be auto or a positive integer');
    return { shards: [...Array(count).keys()], shardCount: count };
  })();

// The intents of the events the mock's default mix sends (it does not filter by intents).
const client = new Client({
  intents: [
    GatewayIntentBits.Guilds,
    GatewayIntentBits.GuildMembers,
    GatewayIntentBits.GuildPresences,
    GatewayIntentBits.GuildMessages,
    GatewayIntentBits.GuildMessageReactions,
    GatewayIntentBits.GuildMessageTyping,
    GatewayIntentBits.MessageContent,
    GatewayIntentBits.DirectMessages,
    GatewayIntentBits.DirectMessageReactions,
    GatewayIntentBits.DirectMessageTyping,
  ],
  // REST requests go to `${api}/v10/...`; the gateway URL comes from `GET /gateway/bot`.
  rest: { api: args.api },
  ...shardOptions,
});

/** Per shard id: what arrived. */
const shards = new Map();
function shard(id) {
  if (!shards.has(id)) {
    shards.set(id, {
      ready: false,
      messages: 0,
      messages_out_of_order: 0,
      last_message_seq: 0,
      raw_message_creates: 0,
      dispatches: 0,
      first_seq: null,
      last_seq: null,
      seq_gaps: 0,
      by_type: {},
    });
  }
  return shards.get(id);
}

let clientReady = false;
let finishing = false;
/** MESSAGE_CREATE dispatches seen raw and not yet turned into a `messageCreate`: id -> seq. */
const pendingMessages = new Map();
/** Pending messages whose reply was handled first (its `referenced_message` cached them). */
const repliedFirst = new Set();

function progress() {
  return {
    client_ready: clientReady,
    shards: Object.fromEntries(
      [...shards].map(([id, s]) => [id, { ready: s.ready, messages: s.messages, ping: client.ws.shards.get(id)?.ping }]),
    ),
  };
}

client.on(Events.Raw, (packet, shardId) => {
  const s = shard(shardId);
  s.dispatches += 1;
  s.by_type[packet.t] = (s.by_type[packet.t] ?? 0) + 1;
  if (packet.t === 'MESSAGE_CREATE') {
    s.raw_message_creates += 1;
    pendingMessages.set(packet.d.id, { seq: packet.s, shard: shardId });
  }
  if (typeof packet.s === 'number') {
    if (s.last_seq !== null && packet.s !== s.last_seq + 1) s.seq_gaps += 1;
    if (s.first_seq === null) s.first_seq = packet.s;
    s.last_seq = packet.s;
  }
});
client.on(Events.ShardReady, (id) => {
  shard(id).ready = true;
});
client.on(Events.ShardDisconnect, (event, id) => {
  if (!finishing) fail(`shard ${id} disconnected for good (close ${event.code})`);
});
client.on(Events.ShardError, (error, id) => fail(`shard ${id} error: ${error?.stack ?? error}`));
client.on(Events.Error, (error) => fail(`client error: ${error?.stack ?? error}`));
client.on(Events.Warn, (message) => process.stderr.write(`discordjs-login: warn: ${message}\n`));
if (args.debug) client.on(Events.Debug, (message) => process.stderr.write(`${message}\n`));

client.on(Events.MessageCreate, (message) => {
  const s = shard(message.guild?.shardId ?? 0); // DMs belong to shard 0
  s.messages += 1;
  // discord.js queues what arrives before `clientReady` and handles that backlog one packet per
  // event-loop turn afterwards, while newer packets are handled at once: count the reordering.
  const seq = pendingMessages.get(message.id)?.seq;
  pendingMessages.delete(message.id);
  if (seq !== undefined) {
    if (seq < s.last_message_seq) s.messages_out_of_order += 1;
    else s.last_message_seq = seq;
  }
  // A reply handled before the message it answers caches that message from its
  // `referenced_message`; discord.js then emits nothing for the message's own MESSAGE_CREATE.
  const answered = message.reference?.messageId;
  if (answered && pendingMessages.has(answered)) repliedFirst.add(answered);
  check();
});
client.once(Events.ClientReady, () => {
  clientReady = true;
  check();
});

/** Every shard ready, with its messages and an acknowledged heartbeat. */
function done() {
  if (!clientReady) return false;
  for (const [id, wsShard] of client.ws.shards) {
    const s = shard(id);
    if (!s.ready || s.messages < messagesWanted || wsShard.ping < 0) return false;
  }
  return client.ws.shards.size > 0;
}

// Heartbeat acknowledgements raise no client event, so also look now and then.
const poll = setInterval(check, 100);

function check() {
  if (finishing || !done()) return;
  finishing = true;
  clearInterval(poll);
  finish().catch((error) => fail(`finishing: ${error?.stack ?? error}`));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function finish() {
  // Let the backlog drain: afterwards every raw MESSAGE_CREATE has become a `messageCreate`
  // (new ones are handled in the turn they arrive) or is one discord.js will never emit.
  const settleBy = Date.now() + 3000;
  const unexplained = () => [...pendingMessages.keys()].some((id) => !repliedFirst.has(id));
  while (unexplained() && Date.now() < settleBy) await sleep(20);
  const perShard = structuredClone(Object.fromEntries([...shards].sort(([a], [b]) => a - b)));
  for (const s of Object.values(perShard)) {
    delete s.last_message_seq;
    s.not_delivered_reply_first = 0;
    s.not_delivered_other = 0;
  }
  for (const [id, { shard: shardId }] of pendingMessages) {
    perShard[shardId][repliedFirst.has(id) ? 'not_delivered_reply_first' : 'not_delivered_other'] += 1;
  }

  const readyUserId = client.user.id;
  const readyApplicationId = client.application.id;
  const readyApplicationFlags = client.application.flags.bitfield;
  const restUser = await client.rest.get(Routes.user());
  const oauth2Application = await client.rest.get(Routes.oauth2CurrentApplication());
  const application = await client.application.fetch(); // GET /applications/@me
  const summary = {
    library: 'discord.js',
    version,
    node: process.version,
    ready_user: {
      id: readyUserId,
      username: client.user.username,
      discriminator: client.user.discriminator,
      bot: client.user.bot,
    },
    ready_application: { id: readyApplicationId, flags: readyApplicationFlags },
    rest_user: {
      id: restUser.id,
      username: restUser.username,
      discriminator: restUser.discriminator,
      bot: restUser.bot,
    },
    rest_application: {
      id: application.id,
      name: application.name,
      flags: application.flags.bitfield,
      bot_public: application.botPublic,
      bot_require_code_grant: application.botRequireCodeGrant,
      owner_id: application.owner?.id ?? null,
      approximate_guild_count: application.approximateGuildCount,
    },
    oauth2_application: { id: oauth2Application.id, bot_id: oauth2Application.bot?.id ?? null },
    shard_count: client.options.shardCount,
    shards_ready: [...shards].filter(([, s]) => s.ready).map(([id]) => id).sort((a, b) => a - b),
    guilds: client.guilds.cache.size,
    shards: perShard,
    ping_ms: Object.fromEntries([...client.ws.shards].map(([id, s]) => [id, s.ping])),
    elapsed_ms: Date.now() - started,
  };
  await client.destroy();
  clearTimeout(deadline);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.exit(0);
}

client.login(args.token).catch((error) => fail(`login: ${error?.stack ?? error}`));
