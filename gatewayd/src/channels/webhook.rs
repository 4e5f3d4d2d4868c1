//! What webhook handlers share: reading a request body within a size limit and a deadline
//! ([`read_body`]), the JSON error answer ([`error`]), and the listener's connection slot
//! ([`ConnectionSlot`]) that an upgraded socket keeps. The HTTP listener (`crate::http`) and the
//! adapters' own routes both use them, so every route refuses oversized or slow bodies the same
//! way.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

/// A JSON error answer: `{"accepted": false, "error": message}`.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"accepted": false, "error": message}))).into_response()
}

/// Reads a request body of at most `limit` bytes within `timeout`. A declared `Content-Length`
/// over the limit is refused with 413 before any of the body is read; a body that grows over it
/// gets 413 too (`too_large` says why), and one that does not arrive in time gets 408. Both close
/// the connection, since the rest of the body is not read.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
    too_large: impl Fn() -> String,
) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        drain(body, timeout);
        return Err(closing(error(StatusCode::PAYLOAD_TOO_LARGE, too_large())));
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(closing(error(StatusCode::PAYLOAD_TOO_LARGE, too_large()))),
        Err(_) => Err(closing(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (http.body_timeout)",
                timeout.as_millis()
            ),
        ))),
    }
}

/// Most bytes of a refused body read and thrown away so its sender sees the answer.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
/// Longest a refused body is read and thrown away before the connection closes.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// Reads and discards the rest of a refused body in the background, for at most `timeout`
/// (and never longer than [`DRAIN_FOR`]) and [`DRAIN_MAX`] bytes, while the answer goes out. Closing a socket with unread data in it makes
/// the kernel reset the connection, and a client still sending its body would then see a reset
/// instead of the 413 (the lingering close of other HTTP servers).
fn drain(body: Body, timeout: Duration) {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut left = DRAIN_MAX;
        let _ = tokio::time::timeout(timeout.min(DRAIN_FOR), async {
            while let Some(Ok(chunk)) = stream.next().await {
                left = left.saturating_sub(chunk.len());
                if left == 0 {
                    break;
                }
            }
        })
        .await;
    });
}

/// Marks a response as the connection's last.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// One of the listener's `http.max_connections` slots, held while its connection is open. The
/// accept loop puts it in each request's extensions, so an upgraded WebSocket can keep it.
#[derive(Clone)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl ConnectionSlot {
    /// The slot that `permit` holds.
    pub fn new(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: Arc::new(permit),
        }
    }
}
