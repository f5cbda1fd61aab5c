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
# Needs bash and python3 (for HTTP without curl, and for JSON).

WORLD_PIDS=()

# world_init DIR BIN_DIR
world_init() {
    WORLD_DIR=$1
    WORLD_BIN=$2
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
