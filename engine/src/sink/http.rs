//! The sink's HTTP/1.1 client: one keep-alive connection to the bot, blocking, on the sink
//! thread (never on a core).
//!
//! Just enough HTTP for the forwarding contract: `POST` with `Content-Length`, the answer's
//! status, and its body skipped (Content-Length or chunked) so the connection can be reused.
//! Every read and write has a deadline; any error drops the connection and the next request
//! opens a new one. The secret goes into the `Authorization` header and nowhere else.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// The answer's head is at most this big; more is a broken or hostile bot.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Bodies of answers are skipped up to this size; a bigger one closes the connection.
const RESPONSE_BODY_BYTES_MAX: u64 = 1024 * 1024;

/// A parsed `http(s)://host[:port]/path` forwarding URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("'{0}' must start with http:// or https://")]
    Scheme(String),
    #[error("'{0}' has no host")]
    Host(String),
    #[error("'{0}' has an invalid port")]
    Port(String),
}

impl ForwardUrl {
    pub fn parse(url: &str) -> Result<ForwardUrl, UrlError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        let (authority, path) = match rest.find('/') {
            Some(index) => (&rest[..index], &rest[index..]),
            None => (rest, "/"),
        };
        let (host, port) = crate::url::split_authority(authority, if tls { 443 } else { 80 })
            .map_err(|error| match error {
                crate::url::AuthorityError::Host => UrlError::Host(url.to_owned()),
                crate::url::AuthorityError::Port => UrlError::Port(url.to_owned()),
            })?;
        Ok(ForwardUrl {
            tls,
            host,
            port,
            path: path.to_owned(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: io::Error,
    },
    /// A connect, read or write that did not finish within the client's timeout.
    #[error("{stage}: timed out after {}", duration_text(*.timeout))]
    TimedOut { stage: Stage, timeout: Duration },
    /// Certificate problems are said in words with their fix ([`crate::tls::error_text`]).
    #[error("TLS: {}", crate::tls::error_text(.0))]
    Tls(#[from] rustls::Error),
    #[error("invalid TLS server name {0}")]
    ServerName(String),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The certificate the trust store did not verify, if that is why the request failed.
    pub fn untrusted_certificate(&self) -> Option<crate::tls::UntrustedCertificate> {
        match self {
            HttpError::Tls(error) => crate::tls::UntrustedCertificate::from_rustls(error),
            _ => None,
        }
    }
}

/// Where a request was when its timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connecting,
    /// The TLS handshake (which rustls drives from the first write) and the request.
    Sending,
    WaitingForResponse,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connecting => "connecting",
            Stage::Sending => "sending the request",
            Stage::WaitingForResponse => "waiting for the response",
        })
    }
}

/// `10 s` for whole seconds, `250 ms` otherwise.
fn duration_text(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 && duration.as_secs() > 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// Names an I/O error of `stage`: a socket timeout (a blocking socket with a timeout reports
/// `WouldBlock`, "Resource temporarily unavailable") becomes [`HttpError::TimedOut`], and a TLS
/// error rustls wrapped into `io::Error` comes back out as [`HttpError::Tls`].
fn io_error(error: io::Error, stage: Stage, timeout: Duration) -> HttpError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            return HttpError::TimedOut { stage, timeout };
        }
        _ => {}
    }
    if error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
    {
        let inner = error
            .into_inner()
            .expect("get_ref just saw an inner error")
            .downcast::<rustls::Error>()
            .expect("is::<rustls::Error>() just said so");
        return HttpError::Tls(*inner);
    }
    HttpError::Io(error)
}

enum Connection {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>),
}

impl Connection {
    fn reader(&mut self) -> &mut dyn BufRead {
        match self {
            Connection::Plain(stream) => stream,
            Connection::Tls(stream) => stream.as_mut(),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Connection::Plain(stream) => stream.get_mut(),
            Connection::Tls(stream) => stream.get_mut(),
        }
    }
}

/// A keep-alive client for one forwarding URL.
pub struct HttpClient {
    url: ForwardUrl,
    /// `Authorization` header value, if any. Never logged.
    authorization: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    connection: Option<Connection>,
    head: Vec<u8>,
    /// Connections opened so far (1 while keep-alive holds).
    pub connections_opened: u64,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "[redacted]"),
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub fn new(
        url: ForwardUrl,
        authorization: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> HttpClient {
        HttpClient {
            url,
            authorization,
            tls,
            timeout,
            connection: None,
            head: Vec::with_capacity(512),
            connections_opened: 0,
        }
    }

    /// POSTs `body` (JSON) and returns the status. On any error the connection is dropped.
    pub fn post_json(&mut self, body: &[u8]) -> Result<u16, HttpError> {
        let result = self.try_post(body);
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// GETs the URL's path and returns the status and body (at most 1 MiB). Used at startup
    /// for `/gateway/bot`.
    pub fn get(&mut self) -> Result<(u16, Vec<u8>), HttpError> {
        let result = self.try_request("GET", &[], true);
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// Drops the connection (the next request opens a new one).
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    fn try_post(&mut self, body: &[u8]) -> Result<u16, HttpError> {
        self.try_request("POST", body, false)
            .map(|(status, _)| status)
    }

    fn try_request(
        &mut self,
        method: &str,
        body: &[u8],
        capture: bool,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        if self.connection.is_none() {
            self.connection = Some(self.connect()?);
            self.connections_opened += 1;
        }
        self.head.clear();
        write!(
            self.head,
            "{method} {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: shardgate\r\n",
            self.url.path,
            self.url.host,
            self.url.port,
            body.len()
        )?;
        if let Some(authorization) = &self.authorization {
            self.head.extend_from_slice(b"Authorization: ");
            self.head.extend_from_slice(authorization.as_bytes());
            self.head.extend_from_slice(b"\r\n");
        }
        self.head.extend_from_slice(b"\r\n");
        let connection = self
            .connection
            .as_mut()
            .ok_or(HttpError::Malformed("no connection"))?;
        let timeout = self.timeout;
        let writer = connection.writer();
        writer
            .write_all(&self.head)
            .and_then(|()| writer.write_all(body))
            .and_then(|()| writer.flush())
            .map_err(|error| io_error(error, Stage::Sending, timeout))?;
        let mut captured = Vec::new();
        let (status, keep_alive) =
            read_response(connection.reader(), capture.then_some(&mut captured)).map_err(
                |error| match error {
                    HttpError::Io(error) => io_error(error, Stage::WaitingForResponse, timeout),
                    other => other,
                },
            )?;
        if !keep_alive {
            self.connection = None;
        }
        Ok((status, captured))
    }

    fn connect(&self) -> Result<Connection, HttpError> {
        let connect_error = |source| HttpError::Connect {
            host: self.url.host.clone(),
            port: self.url.port,
            source,
        };
        let addrs = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(connect_error)?;
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        let stream = match stream {
            Some(stream) => stream,
            None if last_error.kind() == io::ErrorKind::TimedOut => {
                return Err(HttpError::TimedOut {
                    stage: Stage::Connecting,
                    timeout: self.timeout,
                });
            }
            None => return Err(connect_error(last_error)),
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        match (&self.tls, self.url.tls) {
            (Some(config), true) => {
                let name = ServerName::try_from(self.url.host.clone())
                    .map_err(|_| HttpError::ServerName(self.url.host.clone()))?;
                let session = rustls::ClientConnection::new(Arc::clone(config), name)?;
                let tls = rustls::StreamOwned::new(session, stream);
                Ok(Connection::Tls(Box::new(BufReader::with_capacity(
                    8 * 1024,
                    tls,
                ))))
            }
            (None, true) => Err(HttpError::Malformed(
                "https URL without a TLS configuration",
            )),
            (_, false) => Ok(Connection::Plain(BufReader::with_capacity(
                8 * 1024,
                stream,
            ))),
        }
    }
}

/// Reads a response head and skips its body; returns the status and whether the connection
/// may be reused.
fn read_response(
    reader: &mut dyn BufRead,
    capture: Option<&mut Vec<u8>>,
) -> Result<(u16, bool), HttpError> {
    let mut head = Vec::with_capacity(256);
    loop {
        let before = head.len();
        let read = reader
            .take((RESPONSE_HEAD_BYTES_MAX - head.len()) as u64)
            .read_until(b'\n', &mut head)?;
        if read == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the response",
            ));
        }
        if head[before..] == *b"\r\n" || head[before..] == *b"\n" {
            break;
        }
        if head.len() >= RESPONSE_HEAD_BYTES_MAX {
            return Err(HttpError::Malformed("response head over 16 KiB"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HttpError::Malformed("unparsable response head")),
    }
    let status = response.code.ok_or(HttpError::Malformed("no status"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut keep_alive = response.version == Some(1);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
            );
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((status, keep_alive));
    }
    if chunked {
        skip_chunked(reader, capture)?;
    } else if let Some(length) = content_length {
        if length > RESPONSE_BODY_BYTES_MAX {
            return Ok((status, false));
        }
        let skipped = match capture {
            Some(body) => io::copy(&mut reader.take(length), body)?,
            None => io::copy(&mut reader.take(length), &mut io::sink())?,
        };
        if skipped != length {
            return Err(HttpError::Malformed("body shorter than Content-Length"));
        }
    } else {
        // Body delimited by the connection closing: not reusable.
        return Ok((status, false));
    }
    Ok((status, keep_alive))
}

fn skip_chunked(
    reader: &mut dyn BufRead,
    mut capture: Option<&mut Vec<u8>>,
) -> Result<(), HttpError> {
    let mut total = 0u64;
    let mut line = Vec::with_capacity(32);
    loop {
        line.clear();
        reader.take(1024).read_until(b'\n', &mut line)?;
        let text = std::str::from_utf8(&line).map_err(|_| HttpError::Malformed("chunk size"))?;
        let size_text = text.trim().split(';').next().unwrap_or_default();
        let size =
            u64::from_str_radix(size_text, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        total += size;
        if total > RESPONSE_BODY_BYTES_MAX {
            return Err(HttpError::Malformed("chunked body over 1 MiB"));
        }
        if size == 0 {
            // Trailers until the empty line.
            loop {
                line.clear();
                if reader.take(1024).read_until(b'\n', &mut line)? == 0
                    || line == b"\r\n"
                    || line == b"\n"
                {
                    return Ok(());
                }
            }
        }
        match capture.as_deref_mut() {
            Some(body) => {
                io::copy(&mut reader.take(size), body)?;
                io::copy(&mut reader.take(2), &mut io::sink())?;
            }
            None => {
                io::copy(&mut reader.take(size + 2), &mut io::sink())?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn forward_urls_parse_with_defaults() {
        let url = ForwardUrl::parse("http://127.0.0.1:9000/events").unwrap();
        assert_eq!(
            url,
            ForwardUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/events".into()
            }
        );
        let url = ForwardUrl::parse("https://bot.internal").unwrap();
        assert_eq!((url.tls, url.port, url.path.as_str()), (true, 443, "/"));
        let url = ForwardUrl::parse("http://[::1]/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 80));
        let url = ForwardUrl::parse("http://[::1]:8080/x?y=1").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 8080, "/x?y=1")
        );
        assert!(matches!(
            ForwardUrl::parse("ftp://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            ForwardUrl::parse("http://:80/"),
            Err(UrlError::Host(_))
        ));
        assert!(matches!(
            ForwardUrl::parse("http://h:99999/"),
            Err(UrlError::Port(_))
        ));
    }

    #[test]
    fn responses_are_read_and_their_bodies_skipped() {
        let wire = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops!HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 503 x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let mut reader = Cursor::new(&wire[..]);
        assert_eq!(read_response(&mut reader, None).unwrap(), (204, true));
        assert_eq!(read_response(&mut reader, None).unwrap(), (500, true));
        assert_eq!(read_response(&mut reader, None).unwrap(), (200, true));
        assert_eq!(read_response(&mut reader, None).unwrap(), (503, false));
        assert!(read_response(&mut reader, None).is_err());
    }

    #[test]
    fn hostile_responses_are_errors_not_panics() {
        for wire in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
        ] {
            assert!(
                read_response(&mut Cursor::new(wire), None).is_err(),
                "{wire:?}"
            );
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(20_000));
        assert!(read_response(&mut Cursor::new(huge.as_bytes()), None).is_err());
    }

    #[test]
    fn a_server_that_accepts_and_never_answers_is_a_timeout_not_an_io_error() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", silent.local_addr().unwrap());
        let holder = std::thread::spawn(move || silent.accept().map(|(stream, _)| stream));
        let mut client = HttpClient::new(
            ForwardUrl::parse(&url).unwrap(),
            None,
            None,
            Duration::from_millis(250),
        );
        let error = client.post_json(b"[]").unwrap_err();
        assert!(
            matches!(
                error,
                HttpError::TimedOut {
                    stage: Stage::WaitingForResponse,
                    timeout
                } if timeout == Duration::from_millis(250)
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "waiting for the response: timed out after 250 ms"
        );
        drop(holder.join().unwrap());
    }

    #[test]
    fn timeouts_read_in_seconds_when_whole_and_in_ms_otherwise() {
        let text = |timeout| {
            HttpError::TimedOut {
                stage: Stage::Connecting,
                timeout,
            }
            .to_string()
        };
        assert_eq!(
            text(Duration::from_secs(10)),
            "connecting: timed out after 10 s"
        );
        assert_eq!(
            text(Duration::from_millis(1500)),
            "connecting: timed out after 1500 ms"
        );
        assert_eq!(
            text(Duration::from_millis(300)),
            "connecting: timed out after 300 ms"
        );
    }

    #[test]
    fn a_tls_error_inside_an_io_error_comes_out_named() {
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let error = io_error(wrapped, Stage::Sending, Duration::from_secs(1));
        assert_eq!(
            error.untrusted_certificate(),
            Some(crate::tls::UntrustedCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        );
        assert!(error.to_string().contains("--ca-file <PEM>"), "{error}");
        let plain = io_error(
            io::Error::from(io::ErrorKind::ConnectionReset),
            Stage::Sending,
            Duration::from_secs(1),
        );
        assert!(matches!(plain, HttpError::Io(_)), "{plain:?}");
    }

    #[test]
    fn debug_hides_the_secret() {
        let client = HttpClient::new(
            ForwardUrl::parse("http://127.0.0.1:1/").unwrap(),
            Some("very-secret".into()),
            None,
            Duration::from_secs(1),
        );
        assert!(!format!("{client:?}").contains("very-secret"));
    }
}
