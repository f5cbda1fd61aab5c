//! In a fleet, a command for a shard that runs on another host goes to that host's admin API:
//! one blocking HTTP/1.1 POST from the admin thread (never a core), bounded in time and size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a forwarded command may take, connect to answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes read back (an admin answer is a small JSON object).
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

/// POSTs `body` to `http://{addr}{path}` with the caller's `Authorization` (the fleet's hosts
/// share the admin token); the status and body of the answer.
pub fn post(
    addr: &str,
    path: &str,
    authorization: Option<&[u8]>,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|_| format!("the host's admin address '{addr}' is not host:port"))?;
    let mut stream = TcpStream::connect_timeout(&target, FORWARD_TIMEOUT)
        .map_err(|error| format!("cannot connect to {addr}: {error}"))?;
    let io = |error: std::io::Error| format!("{addr}: {error}");
    stream.set_read_timeout(Some(FORWARD_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(FORWARD_TIMEOUT))
        .map_err(io)?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    if let Some(authorization) = authorization {
        head.extend_from_slice(b"Authorization: ");
        head.extend_from_slice(authorization);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let split = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr} answered without a complete head"))?;
    let status = std::str::from_utf8(&answer[..split])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr} answered without a status"))?;
    Ok((status, answer[split + 4..].to_vec()))
}
