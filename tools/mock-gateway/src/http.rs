//! The listeners: HTTP/1.1 (optionally TLS) carrying REST, the `/_mock/*` control API and
//! WebSocket upgrades to the gateway.
//!
//! Routes on the main listener:
//! - REST, `GET` only: `/api/v10/gateway` (no token, as on Discord), and with
//!   `Authorization: Bot <token>`: `/api/v10/gateway/bot`, `/api/v10/users/@me` (the bot user),
//!   `/api/v10/applications/@me` and `/api/v10/oauth2/applications/@me` (its application). The
//!   user and application agree with READY's `d.user` and `d.application` (same ids, names,
//!   flags).
//! - `GET /_mock/ledger`, `GET /_mock/events` (`{"recording": b, "events": [...]}`, every world
//!   event once, with `--record-events`), `POST /_mock/guilds {"count": N}`,
//!   `POST /_mock/recommended-shards {"shards": N}` (`null`: back to the default),
//!   `POST /_mock/fault {"shard": N, "kind": "reconnect"}` (with `"total": T`, only the sessions
//!   of `T` shards), `POST /_mock/resume-url {"down": b}`,
//!   `POST /_mock/resume-delay {"ms": N}`
//! - any path with `Upgrade: websocket`: the gateway.
//!
//! What the REST side accepts, and how it fails, in the order it decides:
//! - Paths: the route after `/api/v10`, `/api/v9` or plain `/api` (discord.js sends some routes
//!   without a version); the routes answer the same under all three. A query string is ignored
//!   (`?with_counts=true` and the like). `%40` is read as `@`. Nothing else is normalised: a
//!   trailing slash, a doubled slash or another version (`/api/v8`, `/api/v11`) is an unknown
//!   route.
//! - Unknown route under `/api` (and any other unknown path): 404
//!   `{"message": "404: Not Found", "code": 0}`.
//! - Known route, method other than `GET` (including `HEAD`): 405
//!   `{"message": "405: Method Not Allowed", "code": 0}` with `Allow: GET`.
//! - Known route that needs the token, without `Authorization: Bot <token>` (or after the token
//!   was reset): 401 `{"message": "401: Unauthorized", "code": 0}` and an
//!   `authentication_failed` violation in the ledger.
//!
//! The resume listener only upgrades; it can be taken down (connections refused) to model a
//! dead `resume_gateway_url`.

mod rest;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT, UPGRADE,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::conn;
use crate::ledger::ViolationKind;
use crate::state::{Control, Fault, Shared};
use rest::Route;

/// Control request bodies are small.
const CONTROL_BODY_BYTES_MAX: usize = 64 * 1024;

/// Which listener a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Main,
    Resume,
}

/// Accepts connections forever. The resume listener closes its socket while it is "down"
/// and binds the same address again when it comes back.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    which: Listener,
) {
    let addr = listener.local_addr().ok();
    let mut listener = Some(listener);
    let mut down = shared.resume_down.subscribe();
    loop {
        if which == Listener::Resume && *down.borrow_and_update() {
            listener = None;
            // Wait for the listener to come back up.
            while *down.borrow_and_update() {
                if down.changed().await.is_err() {
                    return;
                }
            }
        }
        if listener.is_none() {
            let Some(addr) = addr else { return };
            match TcpListener::bind(addr).await {
                Ok(rebound) => listener = Some(rebound),
                Err(error) => {
                    tracing::error!(%addr, %error, "cannot bind the resume listener again");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(bound) = &listener else { continue };
        let accepted = tokio::select! {
            accepted = bound.accept() => accepted,
            _ = down.changed(), if which == Listener::Resume => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(
                    Arc::clone(&shared),
                    stream,
                    peer,
                    tls.clone(),
                    which,
                ));
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    which: Listener,
) {
    let service = service_fn(move |request| handle(Arc::clone(&shared), request, which));
    let builder = hyper::server::conn::http1::Builder::new();
    let result = match tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls_stream) => {
                builder
                    .serve_connection(TokioIo::new(tls_stream), service)
                    .with_upgrades()
                    .await
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
        },
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    which: Listener,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if is_websocket_upgrade(&request) {
        return Ok(upgrade(shared, request, which));
    }
    if which == Listener::Resume {
        return Ok(not_found());
    }
    let path = request.uri().path().to_owned();
    let response = match (request.method(), path.as_str()) {
        (_, api) if api == "/api" || api.starts_with("/api/") => {
            api_response(&shared, &request, &api["/api".len()..])
        }
        (&Method::GET, "/_mock/ledger") => json_response(
            StatusCode::OK,
            &serde_json::to_value(shared.ledger.snapshot()).unwrap_or_default(),
        ),
        (&Method::GET, "/_mock/events") => json_response(
            StatusCode::OK,
            &json!({
                "recording": shared.ledger.records_events(),
                "events": serde_json::to_value(shared.ledger.events()).unwrap_or_default(),
            }),
        ),
        (&Method::POST, "/_mock/recommended-shards") => match read_json(request).await {
            Ok(body) => match body.get("shards") {
                Some(Value::Null) => set_recommended_shards(&shared, None),
                Some(shards) => match shards.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(shards) if shards > 0 => set_recommended_shards(&shared, Some(shards)),
                    _ => bad_request("body must be {\"shards\": N} with N >= 1, or null"),
                },
                None => bad_request("body must be {\"shards\": N} with N >= 1, or null"),
            },
            Err(response) => response,
        },
        (&Method::POST, "/_mock/guilds") => match read_json(request).await {
            Ok(body) => match body.get("count").and_then(Value::as_u64) {
                Some(count) => {
                    shared.set_guild_count(count as usize);
                    let recommended = shared.lock().recommended_shards(&shared.config);
                    json_response(
                        StatusCode::OK,
                        &json!({ "guilds": count, "recommended_shards": recommended }),
                    )
                }
                None => bad_request("body must be {\"count\": N}"),
            },
            Err(response) => response,
        },
        (&Method::POST, "/_mock/fault") => match read_json(request).await {
            Ok(body) => {
                let shard = body.get("shard").and_then(Value::as_u64).map(|s| s as u32);
                let total = body.get("total").and_then(Value::as_u64).map(|t| t as u32);
                let fault = body
                    .get("kind")
                    .and_then(Value::as_str)
                    .and_then(Fault::parse);
                match (shard, fault) {
                    (Some(shard), Some(fault)) => {
                        let connections =
                            shared.broadcast(Some(shard), total, || Control::Fault(fault));
                        json_response(StatusCode::OK, &json!({ "connections": connections }))
                    }
                    _ => bad_request(
                        "body must be {\"shard\": N, \"kind\": K} with K one of reconnect, \
                         invalid_session_resumable, invalid_session, close_<code>, drop, zombie, \
                         stall, corrupt, truncated, server_heartbeat",
                    ),
                }
            }
            Err(response) => response,
        },
        (&Method::POST, "/_mock/resume-delay") => match read_json(request).await {
            Ok(body) => match body.get("ms").and_then(Value::as_u64) {
                Some(ms) => {
                    shared
                        .resume_delay_ms
                        .store(ms, std::sync::atomic::Ordering::Relaxed);
                    json_response(StatusCode::OK, &json!({ "ms": ms }))
                }
                None => bad_request("body must be {\"ms\": N}"),
            },
            Err(response) => response,
        },
        (&Method::POST, "/_mock/resume-url") => match read_json(request).await {
            Ok(body) => match body.get("down").and_then(Value::as_bool) {
                Some(down) => {
                    shared.resume_down.send_replace(down);
                    json_response(StatusCode::OK, &json!({ "down": down }))
                }
                None => bad_request("body must be {\"down\": true|false}"),
            },
            Err(response) => response,
        },
        _ => not_found(),
    };
    Ok(response)
}

fn set_recommended_shards(shared: &Shared, shards: Option<u32>) -> Response<Full<Bytes>> {
    let mut state = shared.lock();
    state.recommended_shards = shards;
    let shards = state.recommended_shards(&shared.config);
    json_response(StatusCode::OK, &json!({ "shards": shards }))
}

/// Answers a request under `/api`; `after_api` is its path past `/api`.
fn api_response(
    shared: &Shared,
    request: &Request<Incoming>,
    after_api: &str,
) -> Response<Full<Bytes>> {
    let Some(route) = Route::parse(after_api) else {
        return not_found();
    };
    if request.method() != Method::GET {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "message": "405: Method Not Allowed", "code": 0 }),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    if route.needs_token() && !authorized(shared, request) {
        shared.ledger.violation(
            None,
            ViolationKind::AuthenticationFailed,
            format!(
                "GET {} without a valid Authorization: Bot <token>",
                route.template()
            ),
            None,
        );
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "message": "401: Unauthorized", "code": 0 }),
        );
    }
    match route {
        Route::Gateway => json_response(StatusCode::OK, &json!({ "url": shared.main_ws_url })),
        Route::GatewayBot => gateway_bot(shared),
        Route::CurrentUser => json_response(StatusCode::OK, &rest::current_user()),
        Route::CurrentApplication | Route::OAuth2CurrentApplication => {
            let guilds = shared.lock().guilds.len();
            json_response(StatusCode::OK, &rest::application(guilds))
        }
    }
}

/// Whether the request carries `Authorization: Bot <token>` for the mock's token, and the
/// token has not been reset.
fn authorized(shared: &Shared, request: &Request<Incoming>) -> bool {
    let expected = format!("Bot {}", shared.config.token);
    request
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes())
        && shared.token_valid.load(Ordering::Acquire)
}

fn gateway_bot(shared: &Shared) -> Response<Full<Bytes>> {
    let config = &shared.config;
    let (shards, remaining, reset_after_ms) = {
        let mut state = shared.lock();
        let now = Instant::now();
        if now >= state.reset_at {
            state.remaining = config.session_start_total;
            state.reset_at =
                now + std::time::Duration::from_millis(config.session_start_reset_after_ms);
        }
        let reset_after_ms = state.reset_at.saturating_duration_since(now).as_millis() as u64;
        (
            state.recommended_shards(config),
            state.remaining,
            reset_after_ms,
        )
    };
    json_response(
        StatusCode::OK,
        &json!({
            "url": shared.main_ws_url,
            "shards": shards,
            "session_start_limit": {
                "total": config.session_start_total,
                "remaining": remaining,
                "reset_after": reset_after_ms,
                "max_concurrency": config.max_concurrency,
            }
        }),
    )
}

fn is_websocket_upgrade(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers.contains_key("sec-websocket-key")
}

fn upgrade(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    which: Listener,
) -> Response<Full<Bytes>> {
    let Some(key) = request.headers().get("sec-websocket-key") else {
        return bad_request("missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let query = request.uri().query().unwrap_or_default().to_owned();
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                conn::serve(
                    shared,
                    TokioIo::new(upgraded),
                    &query,
                    which == Listener::Resume,
                )
                .await;
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

async fn read_json(request: Request<Incoming>) -> Result<Value, Response<Full<Bytes>>> {
    let body = Limited::new(request.into_body(), CONTROL_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|_| bad_request("body unreadable or over 64 KiB"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|_| bad_request("body is not JSON"))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn bad_request(reason: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({ "message": reason, "code": 50035 }),
    )
}

fn not_found() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "message": "404: Not Found", "code": 0 }),
    )
}
