//! Just enough HTTP/1.1 server for the admin API: one request per connection, bounded in size
//! and time, answered with `Connection: close`. Blocking std sockets on the admin's own threads.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// The request line and headers are at most this big (431 beyond).
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// A body is at most this big (413 beyond). Commands are 4 KiB at most; this leaves room for a
/// clear 400 that says so instead of a bare 413.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Headers per request.
const HEADERS_MAX: usize = 32;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query (after `?`), empty if none.
    pub query: String,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of `name` in the query (`a=1&b=2`), undecoded.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

/// An answer: status, JSON or text body, extra headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub const JSON: &'static str = "application/json";
    /// Prometheus text exposition format 0.0.4.
    pub const PROMETHEUS: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: Self::JSON,
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }

    /// `{"error": reason}`.
    pub fn error(status: u16, reason: impl std::fmt::Display) -> Response {
        Response::json(status, &serde_json::json!({ "error": reason.to_string() }))
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// Why a request could not be read; each maps to the status that says so.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request head is larger than {HEAD_BYTES_MAX} bytes")]
    HeadTooLarge,
    #[error("request body is larger than {BODY_BYTES_MAX} bytes")]
    BodyTooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("chunked bodies are not supported; send Content-Length")]
    Chunked,
    /// The client went away or was too slow: nothing to answer.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The answer, if the client is still there to read one.
    pub fn response(&self) -> Option<Response> {
        let status = match self {
            RequestError::HeadTooLarge => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::Malformed(_) => 400,
            RequestError::Chunked => 411,
            RequestError::Io(_) => return None,
        };
        Some(Response::error(status, self))
    }
}

/// Reads one request (head, then a `Content-Length` body), within the size bounds.
pub fn read_request(stream: &mut impl Read) -> Result<Request, RequestError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // Where the search for the blank line goes on: each byte is looked at about once, however
    // small the pieces a client sends.
    let mut searched = 0;
    let head_bytes = loop {
        if let Some(end) = find_head_end(&buffer, searched) {
            break end;
        }
        searched = buffer.len().saturating_sub(3);
        if buffer.len() > HEAD_BYTES_MAX {
            return Err(RequestError::HeadTooLarge);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    if head_bytes > HEAD_BYTES_MAX {
        return Err(RequestError::HeadTooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buffer[..head_bytes]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(RequestError::Malformed("incomplete head".into()));
        }
        Err(error) => return Err(RequestError::Malformed(error.to_string())),
    }
    let method = parsed.method.unwrap_or_default().to_owned();
    let target = parsed.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let mut content_length: Option<usize> = None;
    let mut authorization = None;
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            // Digits only (RFC 9110 §8.6: no sign, no spaces inside); repeats must agree.
            let value = header.value.trim_ascii();
            let length = (!value.is_empty() && value.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(value).ok()?.parse::<usize>().ok())
                .flatten()
                .ok_or_else(|| RequestError::Malformed("invalid Content-Length".into()))?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(RequestError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::Chunked);
        } else if header.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(header.value.to_vec());
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > BODY_BYTES_MAX {
        return Err(RequestError::BodyTooLarge);
    }
    let mut body = buffer.split_off(head_bytes);
    if body.len() > content_length {
        return Err(RequestError::Malformed(
            "more bytes than Content-Length (one request per connection)".into(),
        ));
    }
    let already = body.len();
    body.resize(content_length, 0);
    stream.read_exact(&mut body[already..])?;
    Ok(Request {
        method,
        path,
        query,
        authorization,
        body,
    })
}

/// Writes `response` with `Connection: close`.
pub fn write_response(stream: &mut TcpStream, response: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()
}

/// The length of the head (through its blank line), searching from `from`.
fn find_head_end(buffer: &[u8], from: usize) -> Option<usize> {
    buffer
        .get(from..)?
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Request, RequestError> {
        read_request(&mut &bytes[..])
    }

    #[test]
    fn a_request_with_a_body_and_a_query_parses() {
        let request = read(
            b"POST /commands?shard_id=3&x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\n\
              Content-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/commands");
        assert_eq!(request.query_value("shard_id"), Some("3"));
        assert_eq!(request.query_value("x"), Some(""));
        assert_eq!(request.query_value("y"), None);
        assert_eq!(request.authorization.as_deref(), Some(&b"Bearer k"[..]));
        assert_eq!(request.body, b"hello");
    }

    /// A reader that hands out one byte per read, as a client sending tiny segments does.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            out[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_parses() {
        let bytes = b"POST /commands?shard_id=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let request = read_request(&mut Trickle(bytes)).unwrap();
        assert_eq!(
            (request.path.as_str(), request.body.as_slice()),
            ("/commands", &b"{}"[..])
        );
        // A blank line split across reads at every offset is still found.
        for at in 0..bytes.len() {
            let (first, second) = bytes.split_at(at);
            let mut reader = first.chain(second);
            assert_eq!(read_request(&mut reader).unwrap().body, b"{}");
        }
    }

    #[test]
    fn hostile_requests_are_refused_with_the_right_status() {
        let huge_head = [b"GET / HTTP/1.1\r\nX: ".to_vec(), vec![b'a'; 20_000]].concat();
        let status = |bytes: &[u8]| read(bytes).unwrap_err().response().map(|r| r.status);
        assert_eq!(status(&huge_head), Some(431));
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Some(413)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(411)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(status(b"\x00\x01 nonsense\r\n\r\n"), Some(400));
        for length in ["+5", "-5", "5 5", "0x5", ""] {
            let request = format!("POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\nhello");
            assert_eq!(status(request.as_bytes()), Some(400), "{length:?}");
        }
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\nhello"),
            Some(400)
        );
        // Repeats that agree are one length.
        let agreed =
            read(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
        assert_eq!(agreed.body, b"hello");
        // Cut short: the client is gone, nothing to answer.
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
            None
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\n"), None);
    }
}
