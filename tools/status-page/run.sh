#!/usr/bin/env bash
# What the status page costs the engine at scale: many shards against the mock gateway (TLS, a
# low event rate, as tools/scale/run.sh), then the engine's CPU measured in alternating windows
# without and with the page open in headless Chromium (polling as an operator's tab does), in
# one run. Also: the page's first whole grid and its script time per update (from the page
# itself), and what the endpoints it polls cost per call.
#
#   cargo build --release -p shardgate -p mock-gateway -p fake-bot
#   tools/status-page/run.sh [SHARDS=10000] [WINDOW_S=30] [ROUNDS=2]
#
# Needs `ulimit -n` above SHARDS, python3, chromium and chromedriver (Debian: chromium,
# chromium-driver). Work files go to $STATUS_PAGE_DIR (default /tmp/shardgate-status-page).
# Stops only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
shards=${1:-10000}
window_s=${2:-30}
rounds=${3:-2}
dir=${STATUS_PAGE_DIR:-/tmp/shardgate-status-page}
rm -rf "$dir" && mkdir -p "$dir/data"
command -v chromedriver >/dev/null || { echo "chromedriver is needed (Debian: chromium-driver)" >&2; exit 1; }
. tools/lib/world.sh
world_init "$dir" "${BIN_DIR:-target/release}"
trap world_stop EXIT

world_start_mock --threads 2 --tls --guilds $((shards * 2)) --recommended-shards "$shards" \
    --max-concurrency 512 --session-start-total 1000000 --rate 0.1 \
    --guild-create-bytes 2000 --replay-bytes-max 16384
world_start_bot
DISCORD_TOKEN=mock-token world_start_engine --api-base "$MOCK_API_BASE" --ca-file "$MOCK_CA" \
    --forward-url "$BOT_URL/events" --cores 2 --data-dir "$dir/data" --log info \
    --log-format json ${SHARDGATE_ARGS:-}
engine=$ENGINE_PID
for _ in $(seq 1 900); do
    sleep 1
    kill -0 "$engine" 2>/dev/null || { echo "the engine exited; see $dir/engine.log" >&2; exit 1; }
    active=$(world_get "$ENGINE_ADMIN/readyz" |
        python3 -c "import sys, json; print(json.load(sys.stdin)['shards_active'])" 2>/dev/null ||
        echo 0)
    [ "$active" -ge "$shards" ] && break
done
echo "$active of $shards shards active; settling 10 s"
sleep 10

# chromedriver cannot report a port it chose: take one the kernel just gave out.
driver_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chromedriver --port="$driver_port" >"$dir/chromedriver.log" 2>&1 </dev/null &
WORLD_PIDS+=("$!")
sleep 1

chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome)
python3 - "$engine" "$ENGINE_ADMIN" "$driver_port" "$shards" "$window_s" "$rounds" "$chromium" "$dir" <<'PY'
import base64, json, os, statistics, sys, time, urllib.request

engine, admin, driver_port, shards, window_s, rounds, chromium, work_dir = sys.argv[1:]
shards, window_s, rounds = int(shards), float(window_s), int(rounds)
driver = f"http://127.0.0.1:{driver_port}"
hz = os.sysconf("SC_CLK_TCK")

def cpu_s():
    with open(f"/proc/{engine}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz

def rss_mib():
    with open(f"/proc/{engine}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

def webdriver(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(driver + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)["value"]

def page(session, script):
    return webdriver("POST", f"/session/{session}/execute/sync", {"script": script, "args": []})

def window():
    start_cpu, start = cpu_s(), time.monotonic()
    time.sleep(window_s)
    return (cpu_s() - start_cpu) / (time.monotonic() - start) * 100

# What one call of each endpoint the page polls costs, measured from outside.
def timed_get(path, n=20):
    times, size = [], 0
    for _ in range(n):
        start = time.monotonic()
        with urllib.request.urlopen(admin + path, timeout=10) as answer:
            size = len(answer.read())
        times.append((time.monotonic() - start) * 1000)
    return statistics.median(times), size
calls = {path: timed_get(path) for path in ["/healthz", "/status", "/shards/summary", "/reshard"]}
calls["/shards"] = timed_get("/shards", 5)

# The engine's CPU per call: calls back to back, less what the engine spends meanwhile anyway
# (its rate over the 10 s before). The page's cost per second follows from its poll schedule.
def cpu_per_call_ms(path, n=300):
    idle_cpu, idle_start = cpu_s(), time.monotonic()
    time.sleep(10)
    idle_rate = (cpu_s() - idle_cpu) / (time.monotonic() - idle_start)
    start_cpu, start = cpu_s(), time.monotonic()
    for _ in range(n):
        with urllib.request.urlopen(admin + path, timeout=10) as answer:
            answer.read()
    busy = cpu_s() - start_cpu - idle_rate * (time.monotonic() - start)
    return busy / n * 1000
per_call = {path: cpu_per_call_ms(path) for path in ["/healthz", "/status", "/shards/summary", "/reshard"]}
# One open page: /status and /shards/summary each second, /reshard every 2 s.
page_ms_per_s = per_call["/status"] + per_call["/shards/summary"] + per_call["/reshard"] / 2

without, with_page, first_grid, render, frame, updates = [], [], [], [], [], []
for round_ in range(rounds):
    without.append(window())
    session = webdriver("POST", "/session", {"capabilities": {"alwaysMatch": {
        "goog:chromeOptions": {"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                        "--disable-dev-shm-usage", "--window-size=1400,1100"]}}}})["sessionId"]
    webdriver("POST", f"/session/{session}/url", {"url": admin + "/"})
    deadline = time.monotonic() + 60
    while True:
        cells = page(session, "return document.querySelectorAll('#grids .grid[data-role=live] i[data-state]').length")
        if cells == shards:
            break
        if time.monotonic() > deadline:
            sys.exit(f"the page shows {cells} of {shards} cells after 60 s")
        time.sleep(0.2)
    first_grid.append(float(page(session, "return document.body.dataset.firstGridMs")))
    before = int(page(session, "return document.body.dataset.updates"))
    start = time.monotonic()
    with_page.append(window())
    after = int(page(session, "return document.body.dataset.updates"))
    updates.append((after - before) / (time.monotonic() - start))
    render.append(float(page(session, "return document.body.dataset.renderMs")))
    frame.append(float(page(session, "return document.body.dataset.frameMs")))
    title = page(session, "return document.getElementById('grid-title').textContent")
    if round_ == 0:
        shot = webdriver("GET", f"/session/{session}/screenshot")
        path = os.path.join(work_dir, f"status-page-{shards}.png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot))
        print(f"screenshot: {path}")
    webdriver("DELETE", f"/session/{session}")
    print(f"round {round_ + 1}: engine CPU {without[-1]:.2f} % without the page, "
          f"{with_page[-1]:.2f} % with it; {updates[-1]:.2f} updates/s; {title}")

mean = statistics.mean
print(f"{shards} shards: engine CPU {mean(without):.2f} % of one CPU without the page, "
      f"{mean(with_page):.2f} % with it open (+{mean(with_page) - mean(without):.2f} points; "
      f"{rounds} rounds of {window_s:.0f} s each, alternating); RSS {rss_mib():.0f} MiB")
print(f"page: first whole grid {mean(first_grid):.0f} ms after navigation; "
      f"{mean(updates):.2f} updates/s; script per update {mean(render):.1f} ms, "
      f"to the next frame {mean(frame):.1f} ms")
for path, (ms, size) in calls.items():
    cost = f"; engine CPU {per_call[path]:.2f} ms per call" if path in per_call else ""
    print(f"GET {path}: {ms:.1f} ms median answer, {size / 1024:.1f} KiB{cost}")
print(f"one open page, from the per-call figures: {page_ms_per_s:.1f} ms of engine CPU per second "
      f"= {page_ms_per_s / 10:.2f} % of one CPU")
PY
