//! A shard's connection: TCP on the core's io_uring executor (glommio) → TLS (rustls, driven
//! sans-IO) → WebSocket framing (tungstenite over an in-memory pipe).
//!
//! No async-tungstenite or futures-rustls in between: bytes move from the socket into rustls,
//! plaintext into the pipe tungstenite reads from, and back the same way, with buffers owned
//! here and reused for the life of the connection.
//!
//! Cancel safety: [`Connection::read_message`] may be dropped at any await (the driver races it
//! with timers); everything received stays in the connection's buffers. Writes are queued in
//! `pending` and written by [`Connection::flush`], which is never raced.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Bytes read from the socket per read call.
const SOCKET_READ_BYTES: usize = 16 * 1024;

/// A `ws://` or `wss://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path without a trailing slash ("" for the root).
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("'{0}': a gateway URL starts with ws:// or wss://")]
    Scheme(String),
    #[error("'{0}': no host")]
    Host(String),
    #[error("'{0}': invalid port")]
    Port(String),
}

impl GatewayUrl {
    pub fn parse(url: &str) -> Result<GatewayUrl, UrlError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        // Discord's URLs carry no query, but a user-given one might: keep only the path.
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(index) => (&rest[..index], rest[index..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = crate::url::split_authority(authority, if tls { 443 } else { 80 })
            .map_err(|error| match error {
                crate::url::AuthorityError::Host => UrlError::Host(url.to_owned()),
                crate::url::AuthorityError::Port => UrlError::Port(url.to_owned()),
            })?;
        Ok(GatewayUrl {
            tls,
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// The URL to request, with the gateway query (`v=10&encoding=json[&compress=…]`).
    pub fn request_url(&self, query: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!(
            "{scheme}://{}:{}{}/?{query}",
            self.host_for_url(),
            self.port,
            self.path
        )
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("resolving {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid TLS server name {0}")]
    ServerName(String),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("the server closed the TCP connection")]
    Eof,
}

/// In-memory duplex the WebSocket reads from and writes to.
#[derive(Debug, Default)]
struct Pipe {
    incoming: Vec<u8>,
    incoming_pos: usize,
    outgoing: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.incoming[self.incoming_pos..];
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.incoming_pos += n;
        if self.incoming_pos == self.incoming.len() {
            self.incoming.clear();
            self.incoming_pos = 0;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An open gateway WebSocket.
pub struct Connection {
    tcp: TcpStream,
    tls: Option<rustls::ClientConnection>,
    ws: WebSocket<Pipe>,
    read_buf: Box<[u8]>,
    /// Ciphertext (or plaintext without TLS) waiting for the socket.
    pending: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens TCP (+ TLS) and performs the WebSocket handshake for `url` with `query`.
    /// Resolution of a host name uses the system resolver once per call; IP literals (and
    /// the mock) never block.
    pub async fn connect(
        url: &GatewayUrl,
        query: &str,
        tls_config: &Arc<rustls::ClientConfig>,
        ws_config: WebSocketConfig,
        connect_timeout: Duration,
    ) -> Result<Connection, TransportError> {
        let addr = resolve(&url.host, url.port)?;
        let tcp = TcpStream::connect_timeout(addr, connect_timeout)
            .await
            .map_err(|e| TransportError::Connect(e.into()))?;
        tcp.set_nodelay(true)
            .map_err(|e| TransportError::Connect(e.into()))?;
        let tls = if url.tls {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| TransportError::ServerName(url.host.clone()))?;
            Some(rustls::ClientConnection::new(Arc::clone(tls_config), name)?)
        } else {
            None
        };
        let mut io = Io {
            tcp,
            tls,
            read_buf: vec![0; SOCKET_READ_BYTES].into_boxed_slice(),
            pending: Vec::new(),
        };
        io.finish_tls_handshake().await?;

        let request = url.request_url(query);
        let mut attempt =
            tungstenite::client::client_with_config(request, Pipe::default(), Some(ws_config));
        let ws = loop {
            match attempt {
                Ok((ws, _response)) => break ws,
                Err(HandshakeError::Failure(error)) => return Err(error.into()),
                Err(HandshakeError::Interrupted(mut mid)) => {
                    let pipe = mid.get_mut().get_mut();
                    io.queue_plaintext(&mut pipe.outgoing)?;
                    io.flush().await?;
                    let n = io.read_socket().await?;
                    io.ingest(n, &mut mid.get_mut().get_mut().incoming)?;
                    attempt = mid.handshake();
                }
            }
        };
        let Io {
            tcp,
            tls,
            read_buf,
            pending,
        } = io;
        let mut connection = Connection {
            tcp,
            tls,
            ws,
            read_buf,
            pending,
        };
        connection.queue_ws_output()?;
        connection.flush().await?;
        Ok(connection)
    }

    /// The next WebSocket message (text, binary, close, ping/pong). Cancel safe.
    pub async fn read_message(&mut self) -> Result<Message, TransportError> {
        loop {
            match self.ws.read() {
                Ok(message) => {
                    // Pongs and close replies tungstenite queued go out with the next flush.
                    self.queue_ws_output()?;
                    return Ok(message);
                }
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.queue_ws_output()?;
                    let n = read_into(&mut self.tcp, &mut self.read_buf).await?;
                    let incoming = &mut self.ws.get_mut().incoming;
                    ingest(
                        &mut self.tls,
                        &self.read_buf[..n],
                        incoming,
                        &mut self.pending,
                    )?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Queues a text message; [`flush`](Self::flush) writes it.
    pub fn queue_text(&mut self, text: &[u8]) -> Result<(), TransportError> {
        let text = std::str::from_utf8(text)
            .map_err(|_| tungstenite::Error::Utf8(String::from("outbound payload")))?;
        self.ws.write(Message::text(text))?;
        self.queue_ws_output()
    }

    /// Queues a close frame with `code`.
    pub fn queue_close(&mut self, code: u16) -> Result<(), TransportError> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        match self.ws.close(Some(frame)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(error) => return Err(error.into()),
        }
        self.queue_ws_output()
    }

    /// Writes everything queued. Not cancel safe: do not race it.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        write_pending(&mut self.tcp, &mut self.pending).await
    }

    /// Bytes queued for the socket.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn queue_ws_output(&mut self) -> Result<(), TransportError> {
        match self.ws.flush() {
            Ok(()) => {}
            Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(error) => return Err(error.into()),
        }
        let outgoing = &mut self.ws.get_mut().outgoing;
        queue_plaintext(&mut self.tls, outgoing, &mut self.pending)
    }
}

/// The socket and TLS halves before the WebSocket exists (during the handshakes).
struct Io {
    tcp: TcpStream,
    tls: Option<rustls::ClientConnection>,
    read_buf: Box<[u8]>,
    pending: Vec<u8>,
}

impl Io {
    async fn finish_tls_handshake(&mut self) -> Result<(), TransportError> {
        loop {
            let Some(tls) = &mut self.tls else {
                return Ok(());
            };
            while tls.wants_write() {
                tls.write_tls(&mut self.pending)?;
            }
            if !tls.is_handshaking() {
                break;
            }
            write_pending(&mut self.tcp, &mut self.pending).await?;
            let n = read_into(&mut self.tcp, &mut self.read_buf).await?;
            let mut discard = Vec::new();
            ingest(
                &mut self.tls,
                &self.read_buf[..n],
                &mut discard,
                &mut self.pending,
            )?;
        }
        self.flush().await
    }

    fn queue_plaintext(&mut self, plaintext: &mut Vec<u8>) -> Result<(), TransportError> {
        queue_plaintext(&mut self.tls, plaintext, &mut self.pending)
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        write_pending(&mut self.tcp, &mut self.pending).await
    }

    async fn read_socket(&mut self) -> Result<usize, TransportError> {
        read_into(&mut self.tcp, &mut self.read_buf).await
    }

    fn ingest(&mut self, n: usize, incoming: &mut Vec<u8>) -> Result<(), TransportError> {
        ingest(
            &mut self.tls,
            &self.read_buf[..n],
            incoming,
            &mut self.pending,
        )
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, TransportError> {
    let resolve_error = |source| TransportError::Resolve {
        host: host.to_owned(),
        source,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| resolve_error(io::Error::new(io::ErrorKind::NotFound, "no address")))
}

async fn read_into(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<usize, TransportError> {
    use futures_lite::AsyncReadExt;
    match tcp.read(buf).await? {
        0 => Err(TransportError::Eof),
        n => Ok(n),
    }
}

async fn write_pending(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> Result<(), TransportError> {
    use futures_lite::AsyncWriteExt;
    while !pending.is_empty() {
        let n = tcp.write(pending).await?;
        if n == 0 {
            return Err(TransportError::Eof);
        }
        pending.drain(..n);
    }
    Ok(())
}

/// Moves bytes read from the socket through TLS (if any) into the WebSocket's input.
fn ingest(
    tls: &mut Option<rustls::ClientConnection>,
    mut received: &[u8],
    incoming: &mut Vec<u8>,
    pending: &mut Vec<u8>,
) -> Result<(), TransportError> {
    let Some(tls) = tls else {
        incoming.extend_from_slice(received);
        return Ok(());
    };
    while !received.is_empty() {
        tls.read_tls(&mut received)?;
        let state = tls.process_new_packets()?;
        let mut plaintext = state.plaintext_bytes_to_read();
        while plaintext > 0 {
            let start = incoming.len();
            incoming.resize(start + plaintext, 0);
            let n = match tls.reader().read(&mut incoming[start..]) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => return Err(error.into()),
            };
            incoming.truncate(start + n);
            if n == 0 {
                break;
            }
            plaintext -= n;
        }
        while tls.wants_write() {
            tls.write_tls(pending)?;
        }
    }
    Ok(())
}

/// Moves plaintext the WebSocket wrote through TLS (if any) into `pending`.
fn queue_plaintext(
    tls: &mut Option<rustls::ClientConnection>,
    plaintext: &mut Vec<u8>,
    pending: &mut Vec<u8>,
) -> Result<(), TransportError> {
    if plaintext.is_empty() {
        return Ok(());
    }
    match tls {
        None => pending.append(plaintext),
        Some(tls) => {
            tls.writer().write_all(plaintext)?;
            plaintext.clear();
            while tls.wants_write() {
                tls.write_tls(pending)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_parse() {
        let url = GatewayUrl::parse("wss://gateway.discord.gg").unwrap();
        assert_eq!(
            url,
            GatewayUrl {
                tls: true,
                host: "gateway.discord.gg".into(),
                port: 443,
                path: String::new()
            }
        );
        assert_eq!(
            url.request_url("v=10&encoding=json"),
            "wss://gateway.discord.gg:443/?v=10&encoding=json"
        );
        let url = GatewayUrl::parse("ws://127.0.0.1:4000/resume/").unwrap();
        assert_eq!((url.port, url.path.as_str()), (4000, "/resume"));
        assert_eq!(url.request_url("v=10"), "ws://127.0.0.1:4000/resume/?v=10");
        let url = GatewayUrl::parse("ws://[::1]:9/?v=9").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 9));
        assert_eq!(url.request_url("v=10"), "ws://[::1]:9/?v=10");
        assert!(matches!(
            GatewayUrl::parse("http://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            GatewayUrl::parse("ws://:1"),
            Err(UrlError::Host(_))
        ));
        assert!(matches!(
            GatewayUrl::parse("ws://h:x"),
            Err(UrlError::Port(_))
        ));
    }

    #[test]
    fn the_pipe_would_block_when_empty() {
        let mut pipe = Pipe::default();
        let mut buf = [0u8; 4];
        assert_eq!(
            pipe.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        pipe.incoming.extend_from_slice(b"abcdef");
        assert_eq!(pipe.read(&mut buf).unwrap(), 4);
        assert_eq!(pipe.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ef");
        assert!(pipe.incoming.is_empty());
    }
}
