//! The `mock-gateway` binary, run as scripts run it: stdout and stderr are pipes. Its
//! `key=value` lines on stdout name its addresses; its logs on stderr must be plain text (no
//! ANSI colour codes, which belong on a terminal only), whatever `NO_COLOR` says.
//!
//! Every wait is bounded; the child is killed if the test fails early.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Upper bound of each wait (startup line, HTTP answer, exit after SIGTERM).
const WAIT_MAX: Duration = Duration::from_secs(10);

/// Kills the child when the test ends before it does.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `GET path` on `host:port` without a token; returns the status line.
fn get_status_line(host: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(host).expect("connecting to the mock");
    stream
        .set_read_timeout(Some(WAIT_MAX))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let child = Command::new(env!("CARGO_BIN_EXE_mock-gateway"))
        .args(["--listen", "127.0.0.1:0", "--resume-listen", "127.0.0.1:0"])
        .args(["--log", "info", "--guilds", "2"])
        // tracing-subscriber leaves colour off when NO_COLOR is set; the test must see what
        // the binary itself decides.
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mock-gateway");
    let mut mock = Running(child);
    let stdout = mock.0.stdout.take().expect("piped stdout");
    let mut stderr = mock.0.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });

    // stdout: one `key=value` line each; `api_base` comes after the seed and the ws URLs.
    let (lines_out, lines_in) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_out.send(line).is_err() {
                break;
            }
        }
    });
    let mut keys = Vec::new();
    let api_base = loop {
        let line = lines_in
            .recv_timeout(WAIT_MAX)
            .unwrap_or_else(|_| panic!("no api_base= line on stdout; saw {keys:?}"));
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("stdout line is not key=value: {line:?}"));
        keys.push(key.to_owned());
        if key == "api_base" {
            break value.to_owned();
        }
    };
    assert_eq!(keys, ["seed", "ws_url", "resume_ws_url", "api_base"]);
    let host = api_base
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/api/v10"))
        .unwrap_or_else(|| panic!("unexpected api_base {api_base:?}"));

    // A request without the token: a warning (the violation) besides the startup line.
    let status = get_status_line(host, "/api/v10/gateway/bot");
    assert!(status.contains(" 401 "), "{status}");

    // SIGTERM: the mock stops cleanly and prints its summary on stderr.
    let pid = mock.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("running kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT_MAX;
    let status = loop {
        if let Some(status) = mock.0.try_wait().expect("child status") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mock-gateway still running {WAIT_MAX:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    let stderr = stderr_reader.join().expect("stderr reader");
    let text = String::from_utf8_lossy(&stderr);
    assert!(text.contains("mock gateway up"), "{text}");
    assert!(
        text.contains("violation") && text.contains("AuthenticationFailed"),
        "the refused request is logged: {text}"
    );
    assert!(text.contains("violations=1"), "{text}");
    assert!(
        !stderr.contains(&0x1b),
        "ESC (0x1b) in stderr written to a pipe: {text:?}"
    );
}
