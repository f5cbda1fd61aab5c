# Shell helpers for the scripts in tools/: start the mock gateway, the fake bot and the engine
# on free ports (port 0, each reports the address it bound), with their output in a work
# directory, and stop whatever was started. Source it; it defines functions and nothing runs.
#
#   . tools/lib/world.sh
#   world_init "$(mktemp -d)" target/release     # work dir, folder of the three binaries
#   world_start_mock --tls --guilds 40           # sets MOCK_API_BASE, MOCK_HTTP, MOCK_CA
#   world_start_bot --secret s3cret              # sets BOT_URL
#   world_start_engine --total-shards 4 ...      # sets ENGINE_PID, ENGINE_ADMIN (after listening)
#   world_get "$ENGINE_ADMIN/readyz"             # a GET, body on stdout (python3)
#   world_stop                                   # SIGTERM to what is still running
#
# A fleet (several engines sharing one Redis):
#   world_start_redis                            # sets REDIS_PID, REDIS_URL (a free port)
#   world_start_engine_n 1 --redis-url "$REDIS_URL" ...   # sets ENGINE_PIDS[1], ENGINE_ADMINS[1]
#   world_reap_engine 1                          # after a kill -9: wait for it, forget it
#   world_stop_engines                           # SIGTERM to each engine left, then wait
#   world_redis XINFO STREAM k                   # one command to that Redis, the reply as JSON
#
# Worlds one after another (a fresh mock, bot and engine per run, one Redis throughout):
#   world_stop_one "$ENGINE_PID"                 # SIGTERM to one process, wait, forget it
#
# Needs bash and python3 (for HTTP without curl, and for JSON); redis-server and redis-cli for
# the Redis functions.

WORLD_PIDS=()
ENGINE_PIDS=()
ENGINE_ADMINS=()

# world_init DIR BIN_DIR
world_init() {
    WORLD_DIR=$1
    WORLD_BIN=$2
    local bin
    mkdir -p "$WORLD_DIR"
    for bin in shardgate mock-gateway fake-bot; do
        [ -x "$WORLD_BIN/$bin" ] || {
            echo "no $WORLD_BIN/$bin: build it first (cargo build --release -p shardgate -p mock-gateway -p fake-bot)" >&2
            return 1
        }
    done
    command -v python3 >/dev/null || {
        echo "python3 is needed (for HTTP and JSON)" >&2
        return 1
    }
}

# world_wait_for FILE PATTERN PID WHAT: waits up to 20 s for a line matching PATTERN in FILE,
# prints the first match; fails if PID exits first.
world_wait_for() {
    local file=$1 pattern=$2 pid=$3 what=$4 line
    for _ in $(seq 1 200); do
        line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$what did not start; its output is in $WORLD_DIR" >&2
    return 1
}

# world_start_mock ARGS...: the mock gateway on free ports. Its CA (with --tls) goes to
# $WORLD_DIR/mock-ca.pem.
world_start_mock() {
    "$WORLD_BIN/mock-gateway" --listen 127.0.0.1:0 --resume-listen 127.0.0.1:0 \
        --ca-out "$WORLD_DIR/mock-ca.pem" "$@" \
        >"$WORLD_DIR/mock.out" 2>"$WORLD_DIR/mock.log" &
    MOCK_PID=$!
    WORLD_PIDS+=("$MOCK_PID")
    MOCK_API_BASE=$(world_wait_for "$WORLD_DIR/mock.out" '^api_base=' "$MOCK_PID" "the mock gateway") || return 1
    MOCK_API_BASE=${MOCK_API_BASE#api_base=}
    MOCK_HTTP=${MOCK_API_BASE%/api/v10}
    MOCK_CA="$WORLD_DIR/mock-ca.pem"
}

# world_start_bot ARGS...: the fake bot on a free port.
world_start_bot() {
    "$WORLD_BIN/fake-bot" --listen 127.0.0.1:0 "$@" \
        >"$WORLD_DIR/bot.out" 2>"$WORLD_DIR/bot.log" &
    BOT_PID=$!
    WORLD_PIDS+=("$BOT_PID")
    BOT_URL=$(world_wait_for "$WORLD_DIR/bot.out" 'listening on http://' "$BOT_PID" "the fake bot") || return 1
    BOT_URL=${BOT_URL##*listening on }
}

# world_start_engine ARGS...: `shardgate run` with the admin API on a free port and its log in
# $WORLD_DIR/engine.log (copied to stderr too when WORLD_ENGINE_LOG_TO_STDERR=1). Info lines
# are needed to learn the admin address: keep --log at info or below for shardgate::admin.
world_start_engine() {
    if [ "${WORLD_ENGINE_LOG_TO_STDERR:-0}" = 1 ]; then
        "$WORLD_BIN/shardgate" run --admin-addr 127.0.0.1:0 "$@" \
            2> >(tee "$WORLD_DIR/engine.log" >&2) >/dev/null &
    else
        "$WORLD_BIN/shardgate" run --admin-addr 127.0.0.1:0 "$@" \
            2>"$WORLD_DIR/engine.log" >/dev/null &
    fi
    ENGINE_PID=$!
    WORLD_PIDS+=("$ENGINE_PID")
    ENGINE_ADMIN=$(world_wait_for "$WORLD_DIR/engine.log" 'admin API listening' "$ENGINE_PID" "shardgate") || return 1
    ENGINE_ADMIN=$(printf '%s' "$ENGINE_ADMIN" | grep -oE '127\.0\.0\.1:[0-9]+' | head -n1)
    ENGINE_ADMIN="http://$ENGINE_ADMIN"
}

# world_start_redis ARGS...: a redis-server of its own on a free loopback port, no persistence,
# its log in $WORLD_DIR/redis.log. (Redis cannot listen on port 0 and report the port: the port
# is one the kernel just gave out, so another process could take it in between; then this fails.)
world_start_redis() {
    command -v redis-server >/dev/null || {
        echo "redis-server is needed (Debian: apt-get install redis-server)" >&2
        return 1
    }
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no "$@" \
        >"$WORLD_DIR/redis.log" 2>&1 &
    REDIS_PID=$!
    WORLD_PIDS+=("$REDIS_PID")
    world_wait_for "$WORLD_DIR/redis.log" 'Ready to accept connections' "$REDIS_PID" \
        "redis-server" >/dev/null || return 1
    REDIS_URL="redis://127.0.0.1:$port/"
}

# world_redis ARGS...: one command to the Redis of world_start_redis (redis-cli), its reply as
# JSON on stdout (RESP3 maps become objects).
world_redis() {
    command -v redis-cli >/dev/null || {
        echo "redis-cli is needed (Debian: apt-get install redis-tools)" >&2
        return 1
    }
    redis-cli -u "$REDIS_URL" --json "$@"
}

# world_start_engine_n N ARGS...: engine number N of several (a fleet), as world_start_engine
# but with its log in $WORLD_DIR/engine-N.log, its pid in ENGINE_PIDS[N] and its admin base URL
# in ENGINE_ADMINS[N].
world_start_engine_n() {
    local n=$1 admin
    shift
    "$WORLD_BIN/shardgate" run --admin-addr 127.0.0.1:0 "$@" \
        2>"$WORLD_DIR/engine-$n.log" >/dev/null &
    ENGINE_PIDS[n]=$!
    WORLD_PIDS+=("${ENGINE_PIDS[n]}")
    admin=$(world_wait_for "$WORLD_DIR/engine-$n.log" 'admin API listening' "${ENGINE_PIDS[n]}" \
        "shardgate $n") || return 1
    ENGINE_ADMINS[n]="http://$(printf '%s' "$admin" | grep -oE '127\.0\.0\.1:[0-9]+' | head -n1)"
}

# world_reap_engine N: waits for engine N (one that was killed) and forgets it.
world_reap_engine() {
    wait "${ENGINE_PIDS[$1]}" 2>/dev/null || true
    unset "ENGINE_PIDS[$1]" "ENGINE_ADMINS[$1]"
}

# world_stop_engines: SIGTERM to every engine of world_start_engine_n left, then waits for them;
# fails (after waiting for all) if any did not exit 0.
world_stop_engines() {
    local n code=0
    for n in "${!ENGINE_PIDS[@]}"; do
        kill -TERM "${ENGINE_PIDS[n]}" 2>/dev/null || true
    done
    for n in "${!ENGINE_PIDS[@]}"; do
        wait "${ENGINE_PIDS[n]}" || {
            echo "shardgate $n exited with status $?; its log is $WORLD_DIR/engine-$n.log" >&2
            code=1
        }
    done
    ENGINE_PIDS=()
    ENGINE_ADMINS=()
    return "$code"
}

# world_get URL: the body of a GET (https with the mock's CA), or nothing and status 1.
world_get() {
    python3 - "$1" "${MOCK_CA:-}" <<'PY'
import ssl, sys, urllib.error, urllib.request
url, ca = sys.argv[1], sys.argv[2]
context = ssl.create_default_context(cafile=ca) if url.startswith("https") and ca else None
try:
    with urllib.request.urlopen(url, timeout=5, context=context) as answer:
        sys.stdout.write(answer.read().decode())
except urllib.error.HTTPError as error:
    sys.stdout.write(error.read().decode())
except OSError:
    sys.exit(1)
PY
}

# world_stop_engine: SIGTERM to the engine and its exit status (0 a clean stop).
world_stop_engine() {
    kill -TERM "$ENGINE_PID" 2>/dev/null || true
    local code=0
    wait "$ENGINE_PID" || code=$?
    return "$code"
}

# world_stop_one PID: SIGTERM to one process started here, waits for it and forgets it (so that
# world_stop does not signal its pid again); returns its exit status, 0 a clean stop.
world_stop_one() {
    local pid=$1 code=0 kept=() other
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || code=$?
    for other in "${WORLD_PIDS[@]}"; do
        [ "$other" = "$pid" ] || kept+=("$other")
    done
    WORLD_PIDS=(${kept[@]+"${kept[@]}"})
    return "$code"
}

# world_stop: SIGTERM to everything started that still runs, then wait for it.
world_stop() {
    local pid
    for pid in "${WORLD_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${WORLD_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    WORLD_PIDS=()
}
