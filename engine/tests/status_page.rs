//! The status page (`GET /` on the admin address) in a real browser: Chromium driven over
//! WebDriver (chromedriver, through fantoccini) against the real binary, the mock gateway and
//! the fake bot. The page asks for the admin token once; its grid shows every shard ready; a
//! fault injected in the mock turns a cell to resuming and back; the reconnect action, after its
//! confirmation, reaches the mock's ledger. Screenshots go to `target/browser-screenshots/` for a
//! person to look at.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`; `.ci/run` installs
//! them); `CHROMIUM` and `CHROMEDRIVER` name other binaries. A missing one fails the test with
//! what to install: it is never skipped.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, LOG_WARN_AND_ADMIN, command_without_admin, free_port, http, wait_until};
use fake_bot::{BotConfig, FakeBot};
use fantoccini::{Client, ClientBuilder, Locator};
use mock_gateway::{Fault, MockConfig, MockGateway};
use serde_json::{Value, json};

const SHARDS: u32 = 16;
const TOKEN: &str = "status-page-t0ken";

#[test]
fn the_page_shows_the_shards_follows_a_fault_and_reconnects_a_shard() {
    let dir = std::env::temp_dir().join(format!("shardgate-status-page-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            seed: Some(19),
            guilds: 64,
            max_concurrency: 16,
            rate: 20.0,
            events_per_shard: 1_000_000,
            guild_create_bytes: 1000,
            // Longer than the resume delay below: the mock answers heartbeats after it.
            heartbeat_interval_ms: 10_000,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut command = command_without_admin(&mock, &bot, &dir);
    command
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(["--log", LOG_WARN_AND_ADMIN])
        .args(["--total-shards", &SHARDS.to_string(), "--cores", "2"])
        .env("SHARDGATE_ADMIN_TOKEN", TOKEN);
    let (_engine, admin) = Engine::spawn_with_admin(&mut command);
    wait_until("the admin API to answer", Duration::from_secs(20), || {
        TcpStream::connect(admin).is_ok()
    });
    wait_until("every shard to be ready", Duration::from_secs(30), || {
        http(admin, "GET", "/readyz", Some(TOKEN), b"").0 == 200
    });

    // Over plain HTTP first: the page needs no token and carries no data; the summary it
    // polls needs the token and agrees with /shards.
    let (status, headers, page) = http(admin, "GET", "/", None, b"");
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        header("content-security-policy")
            .unwrap()
            .contains("connect-src 'self'")
    );
    assert!(page.contains("<title>shardgate</title>"));
    assert_eq!(http(admin, "POST", "/", None, b"").0, 405);
    assert_eq!(http(admin, "GET", "/shards/summary", None, b"").0, 401);
    let (status, _, summary) = http(admin, "GET", "/shards/summary", Some(TOKEN), b"");
    assert_eq!(status, 200, "{summary}");
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["sets"].as_array().unwrap().len(), 1, "{summary}");
    let set = &summary["sets"][0];
    assert_eq!(set["role"], "live");
    assert_eq!(set["shard_count"], json!(SHARDS));
    assert_eq!(set["ranges"], json!([[0, SHARDS - 1]]));
    let active = summary["states"]
        .as_array()
        .unwrap()
        .iter()
        .position(|state| state == "active")
        .unwrap();
    let digit = char::from(b'0' + active as u8);
    assert_eq!(
        set["states"],
        json!(digit.to_string().repeat(SHARDS as usize))
    );
    assert_eq!(summary["cores"].as_array().unwrap().len(), 2, "{summary}");
    for core in summary["cores"].as_array().unwrap() {
        assert_eq!(core["shards"], json!(SHARDS / 2), "{summary}");
        assert!(core["cpu_s"].as_f64().unwrap() > 0.0, "{summary}");
    }
    assert!(summary["process"]["resident_bytes"].as_u64().unwrap() > 0);

    let browser = Browser::start();
    let shots = Screenshots::new();
    let url = format!("http://{admin}/");
    browser.run(browser.client.goto(&url)).unwrap();

    // The token, asked once.
    browser.wait_for("the token dialog", || {
        browser.attr("#login", "open").is_some()
    });
    let input = browser.find("#token-input");
    browser.run(input.send_keys(TOKEN)).unwrap();
    browser.run(browser.find("#login-submit").click()).unwrap();

    // Every shard ready: each cell of the grid, and the title.
    let every_cell_ready = || {
        let cells = browser.cells();
        cells.len() == SHARDS as usize && cells.iter().all(|(_, state)| state == "ready")
    };
    browser.wait_for("every cell to show ready", every_cell_ready);
    let cells = browser.cells();
    let ids: Vec<u32> = cells.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (0..SHARDS).collect::<Vec<_>>());
    browser.wait_for("the title to count every shard ready", || {
        browser.text("#grid-title") == format!("Shards: {SHARDS} of {SHARDS} ready")
    });
    browser.wait_for("the totals to show events flowing", || {
        browser.text("[data-total=events-in] .value") != "–"
            && browser.text("[data-total=reachable] .value") == "yes"
    });
    // Both cores' CPU has a figure once two summaries arrived.
    browser.wait_for("the cores' CPU", || {
        let text = browser.text("#cores");
        text.matches(" %").count() == 3
    });
    // The delivery table: the one route, where it goes and how many batches it has in flight.
    browser.wait_for("the delivery table", || {
        let text = browser.text("#routes");
        text.contains("default") && text.contains("http → http://") && text.contains("4 in flight")
    });
    shots.take(&browser, "1-every-shard-ready");

    // Asked once: a reload in the same tab does not ask again, and the token is in no URL.
    browser.run(browser.client.refresh()).unwrap();
    browser.wait_for("the grid after a reload", every_cell_ready);
    assert_eq!(
        browser.attr("#login", "open"),
        None,
        "the token was asked again"
    );
    let current = browser.run(browser.client.current_url()).unwrap();
    assert!(!current.as_str().contains(TOKEN), "{current}");
    assert_eq!(current.as_str(), url);

    // A fault: the mock drops shard 3's connection and answers its RESUME 5 s late. The cell
    // turns to resuming, and back to ready once the session resumed.
    mock.set_resume_delay(Duration::from_secs(5));
    assert_eq!(mock.inject_fault(3, Fault::Drop), 1);
    browser.wait_for("shard 3's cell to show resuming", || {
        browser.cell_state(3) == "resuming"
    });
    browser.run(browser.find("#s-3").click()).unwrap();
    browser.wait_for("the selected shard's state in words", || {
        browser
            .text("#shard-detail")
            .contains("state\nresuming (resuming)")
            || browser
                .text("#shard-detail")
                .contains("state resuming (resuming)")
    });
    assert!(browser.text("#notready").contains("resuming (1): 3"));
    shots.take(&browser, "2-shard-3-resuming");
    browser.wait_for("shard 3's cell to show ready again", || {
        browser.cell_state(3) == "ready"
    });
    mock.set_resume_delay(Duration::ZERO);
    assert_eq!(mock.ledger().shards[&3].resumes, 1);
    // The selected shard's figures, as the page shows them.
    browser.wait_for("shard 3's figures", || {
        let detail = browser.text("#shard-detail");
        detail.contains("reconnects\n1") || detail.contains("reconnects 1")
    });

    // The reconnect action, behind its confirmation: cancelled first, then confirmed.
    let goto = browser.find("#goto-id");
    browser.run(goto.send_keys("5")).unwrap();
    browser.run(browser.find("#goto button").click()).unwrap();
    browser.wait_for("shard 5 selected", || {
        browser
            .attr("#s-5", "class")
            .unwrap_or_default()
            .contains("selected")
    });
    browser.run(browser.find("#reconnect").click()).unwrap();
    browser.wait_for("the confirmation", || {
        browser.attr("#confirm", "open").is_some()
    });
    assert!(browser.text("#confirm-text").contains("Reconnect shard 5?"));
    browser.run(browser.find("#confirm-no").click()).unwrap();
    assert_eq!(browser.attr("#confirm", "open"), None);
    browser.run(browser.find("#reconnect").click()).unwrap();
    browser.wait_for("the confirmation", || {
        browser.attr("#confirm", "open").is_some()
    });
    shots.take(&browser, "3-reconnect-confirmation");
    browser.run(browser.find("#confirm-yes").click()).unwrap();
    browser.wait_for("the answer under the buttons", || {
        browser.text("#shard-message") == "shard 5: reconnect (resume) requested"
    });
    wait_until(
        "shard 5's resume in the mock's ledger",
        Duration::from_secs(20),
        || mock.ledger().shards[&5].resumes == 1,
    );
    browser.wait_for("every cell ready after the reconnect", every_cell_ready);
    shots.take(&browser, "4-after-the-reconnect");

    let ledger = mock.ledger();
    assert_eq!(
        ledger.shards[&5].identifies, 1,
        "the reconnect resumed: no identify"
    );
    assert_eq!(
        ledger.shards[&5].resumes, 1,
        "one confirmed reconnect, one resume"
    );
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    let (_, _, shard) = http(admin, "GET", "/shards/5", Some(TOKEN), b"");
    assert_eq!(
        serde_json::from_str::<Value>(&shard).unwrap()["reconnects"],
        json!(1)
    );
    drop(browser);
    let _ = std::fs::remove_dir_all(&dir);
}

/// chromedriver with a headless Chromium, and a WebDriver session on it. Calls block on its own
/// runtime so that the test reads top to bottom.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Client,
    driver: Child,
}

impl Browser {
    fn start() -> Browser {
        let chromium = binary(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let chromedriver = binary("CHROMEDRIVER", &["chromedriver"]);
        let port = free_port().port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut driver = DriverGuard(Some(driver));
        wait_until("chromedriver to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1100",
                         "--hide-scrollbars"],
            }),
        );
        let client = runtime
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .unwrap_or_else(|e| panic!("no WebDriver session with {}: {e}", chromium.display()));
        Browser {
            runtime,
            client,
            driver: driver.0.take().unwrap(),
        }
    }

    fn run<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.run(self.client.find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.run(self.find(css).attr(name)).unwrap()
    }

    /// The element's text as the browser renders it ("" while it is not there).
    fn text(&self, css: &str) -> String {
        match self.run(self.client.find(Locator::Css(css))) {
            Ok(element) => self.run(element.text()).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The text state a shard's cell shows ("" before the cell exists).
    fn cell_state(&self, shard: u32) -> String {
        match self.run(self.client.find(Locator::Css(&format!("#s-{shard}")))) {
            Ok(cell) => self
                .run(cell.attr("data-state"))
                .unwrap()
                .unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Every cell of the live set's grid: its shard id and the text state it shows.
    fn cells(&self) -> Vec<(u32, String)> {
        let cells = self
            .run(
                self.client
                    .find_all(Locator::Css("#grids .grid[data-role=live] i")),
            )
            .unwrap();
        cells
            .iter()
            .map(|cell| {
                let id = self.run(cell.attr("id")).unwrap().unwrap_or_default();
                let state = self
                    .run(cell.attr("data-state"))
                    .unwrap()
                    .unwrap_or_default();
                (
                    id.trim_start_matches("s-").parse().unwrap_or(u32::MAX),
                    state,
                )
            })
            .collect()
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    /// Ends the session (Chromium exits with it), also when the test failed, then chromedriver.
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.runtime.block_on(client.close());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Stops chromedriver if the session never started.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `$VARIABLE`, else the first of `names` on the PATH; fails with what to install.
fn binary(variable: &str, names: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "none of {names:?} is on the PATH (and {variable} is not set): the status page test \
         needs Chromium and ChromeDriver; on Debian: apt-get install chromium chromium-driver"
    );
}

/// Where screenshots go: `target/browser-screenshots/` (next to `CARGO_TARGET_TMPDIR`).
struct Screenshots(PathBuf);

impl Screenshots {
    fn new() -> Screenshots {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.parent().unwrap_or(tmp).join("browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        Screenshots(dir)
    }

    fn take(&self, browser: &Browser, name: &str) {
        let png = browser.run(browser.client.screenshot()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        let path = self.0.join(format!("status-page-{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}
