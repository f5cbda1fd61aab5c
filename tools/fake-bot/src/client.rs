//! A small HTTP/1.1 client for a running fake bot over one keep-alive connection: post batches,
//! fetch the report, turn the knobs. For tests and tools that run the `fake-bot` binary or an
//! in-process bot.
//!
//! Must not: retry, or pretend to be the engine's delivery path; every answer is handed back as
//! it came. Needs a tokio runtime (the connection is driven by a spawned task).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::Secret;
use crate::report::{Control, Knobs, Report};

/// How long a connect or one exchange may take before [`ClientError::Timeout`], unless changed
/// with [`BotClient::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive connection to a fake bot.
pub struct BotClient {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    timeout: Duration,
}

/// An answer: status and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the bot answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("cannot parse the bot's answer: {0}")]
    Json(#[from] serde_json::Error),
}

impl BotClient {
    /// Connects, giving up after [`DEFAULT_TIMEOUT`].
    pub async fn connect(addr: SocketAddr) -> Result<BotClient, ClientError> {
        let stream = tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(DEFAULT_TIMEOUT))?
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "client connection ended");
            }
        });
        let host = HeaderValue::from_str(&addr.to_string())
            .expect("a socket address is a valid header value");
        Ok(BotClient {
            sender,
            host,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets how long one exchange may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends any request (a `Host` header is added if missing) and reads the whole answer.
    pub async fn send(&mut self, mut request: Request<Full<Bytes>>) -> Result<Answer, ClientError> {
        request
            .headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        let timeout = self.timeout;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// POSTs a batch body to `path` as the engine would (`Content-Type: application/json`,
    /// `Authorization: <secret>` when given).
    pub async fn post_batch(
        &mut self,
        path: &str,
        secret: Option<&Secret>,
        body: impl Into<Bytes>,
    ) -> Result<Answer, ClientError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(secret) = secret {
            request = request.header(header::AUTHORIZATION, secret.expose());
        }
        self.send(request.body(Full::new(body.into()))?).await
    }

    /// `GET /_bot/report`, parsed.
    pub async fn report(&mut self) -> Result<Report, ClientError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri("/_bot/report")
            .body(Full::new(Bytes::new()))?;
        let answer = expect_ok(self.send(request).await?)?;
        Ok(serde_json::from_slice(&answer.body)?)
    }

    /// `POST /_bot/control`; returns the knobs now in force.
    pub async fn control(&mut self, control: &Control) -> Result<Knobs, ClientError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/_bot/control")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(control)?)))?;
        let answer = expect_ok(self.send(request).await?)?;
        Ok(serde_json::from_slice(&answer.body)?)
    }

    /// True once the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// Fetches the report of the bot at `addr` over a fresh connection.
pub async fn fetch_report(addr: SocketAddr) -> Result<Report, ClientError> {
    BotClient::connect(addr).await?.report().await
}

fn expect_ok(answer: Answer) -> Result<Answer, ClientError> {
    if answer.status.is_success() {
        Ok(answer)
    } else {
        Err(ClientError::Status {
            status: answer.status,
            body: String::from_utf8_lossy(&answer.body).into_owned(),
        })
    }
}
