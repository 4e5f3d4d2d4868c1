//! The HTTP listener (axum): the WebChat page and socket, the HTTP channel's webhook,
//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Handlers parse every body themselves, with their own size limits, so malformed, oversized
//! or non-UTF-8 input gets a JSON error naming what is wrong and never a panic. A declared
//! `Content-Length` above a route's limit is refused with 413 before any of the body is read, and
//! a body that does not arrive within `http.body_timeout` gets 408.
//!
//! [`serve`] is the accept loop (HTTP/1.1, with upgrades for the WebChat socket): every connection
//! holds one of `http.max_connections` slots for as long as it is open (a WebSocket keeps its slot
//! until it closes); a connection beyond that is answered 503 and closed at once. Request headers
//! must arrive within `http.header_timeout`, which also closes idle keep-alive connections.
//!
//! `/healthz` answers 200 `ok` whenever this listener serves: the process is alive. `/readyz`
//! answers 200 `ready` only when the gateway can take traffic: started and not stopping, the
//! store answering a round trip ([`store_health`], within [`STORE_PING_TIMEOUT`]), and no part
//! that cannot be restarted failed; otherwise 503 with a text body that says why, naming each
//! failed part or the store's backend and its error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::channels::adapter::Route;
use crate::channels::webhook::{ConnectionSlot, error};
use crate::session::router::Router as SessionRouter;
use crate::store::SharedStore;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The store, for readiness.
    pub store: SharedStore,
    /// Set once channels are started; cleared at shutdown.
    pub ready: Arc<AtomicBool>,
    /// Which parts failed, for readiness.
    pub supervisor: Arc<crate::supervise::Supervisor>,
    /// Sessions, for the metrics gauges.
    pub router: Arc<SessionRouter>,
}

/// Paths the listener serves itself; an adapter's route may not take one.
pub const OWN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Builds the router: the listener's own paths, then every adapter's routes (`routes`, from
/// the enabled channels; `fallbacks`, what disabled ones answer on their paths). A path
/// taken twice is an error naming it, never a panic.
pub fn router(
    state: AppState,
    routes: Vec<Route>,
    fallbacks: Vec<Route>,
) -> anyhow::Result<Router> {
    let mut router: Router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let mut taken: Vec<String> = OWN_PATHS.iter().map(|p| (*p).to_owned()).collect();
    for route in routes {
        if taken.contains(&route.path) {
            anyhow::bail!(
                "the path {} is taken twice on the HTTP listener; give one of the channels another webhook path",
                route.path
            );
        }
        taken.push(route.path.clone());
        router = router.route(&route.path, route.handler);
    }
    for route in fallbacks {
        if !taken.contains(&route.path) {
            taken.push(route.path.clone());
            router = router.route(&route.path, route.handler);
        }
    }
    Ok(router.fallback(|| async {
        error(
            StatusCode::NOT_FOUND,
            "no such path; the chat page is at /, messages at POST /channels/http/messages"
                .to_owned(),
        )
    }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let ready = state.supervisor.ready().is_ok();
    metrics::gauge!("gateway_ready").set(if ready { 1.0 } else { 0.0 });
    match crate::metrics::render(&state.store, &state.router).await {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics are unavailable\n").into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n").into_response();
    }
    if let Err(failed) = state.supervisor.ready() {
        let mut body = String::from(
            "not ready: a part of the gateway failed and cannot be restarted; restart gatewayd\n",
        );
        for f in failed {
            body.push_str(&format!("failed: {}: {}\n", f.component, f.message));
        }
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    match store_health(&state.store).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the {} store is unavailable: {why}\n",
                state.store.backend()
            ),
        )
            .into_response(),
    }
}

/// How long [`store_health`] waits for the database's answer.
pub const STORE_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the store answers a round trip now ([`crate::store::Store::ping`]), within
/// [`STORE_PING_TIMEOUT`]; `Err` says why not and where to look. `/readyz` and the admin API's
/// overview report it.
pub async fn store_health(store: &SharedStore) -> Result<(), String> {
    let hint = match store.backend() {
        "postgres" => {
            "check that the database of [store] url_env (or url_file) is up and reachable"
        }
        _ => "check the database file at [store] path and its disk",
    };
    match tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e}; {hint}")),
        Err(_) => Err(format!(
            "no answer within {} s; {hint}",
            STORE_PING_TIMEOUT.as_secs()
        )),
    }
}

/// The listener's limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// How long a connection may take to send a request's headers (and stay idle between
    /// requests).
    pub header_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
}

/// What a connection beyond `http.max_connections` gets before it is closed.
const BUSY: &str =
    "{\"accepted\":false,\"error\":\"too many connections (http.max_connections); retry later\"}";

/// Serves `app` on `listener` until `stop` turns true, then lets open requests finish (each
/// connection is told to close after its current request) and returns once every connection
/// task has ended. Sets `TCP_NODELAY` on every accepted connection: a WebChat reply or a small
/// HTTP response must not wait for the peer's delayed ACK (Nagle; up to ~40 ms on Linux).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of descriptors, most likely: pause instead of spinning.
                    tracing::error!(message = "Cannot accept an HTTP connection.", error = %e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(message = "Too many HTTP connections; refusing one.", %peer, max_connections = limits.max_connections);
            tokio::spawn(refuse(tcp));
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(message = "Cannot set TCP_NODELAY.", error = %e);
        }
        let slot = ConnectionSlot::new(permit);
        let app = app.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(slot.clone());
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, request.map(Body::new)).await }
            });
            let conn = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let finished = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            let result = match finished {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(message = "HTTP connection ended with an error.", %peer, error = %e);
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection beyond the limit with 503 and closes it, within a second.
async fn refuse(mut tcp: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection before the
        // client has read the answer.
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
