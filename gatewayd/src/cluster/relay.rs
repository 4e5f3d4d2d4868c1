//! The WebChat reply relay between the instances of a cluster.
//!
//! A WebChat socket lives on the instance the browser connected to, but its chat's replies are
//! sent by whichever instance owns the session. Each instance records the chats it holds a socket
//! of in `webchat_sockets` ([`ClusterStore::webchat_socket_opened`]); a reply for a chat with no
//! socket here is POSTed to [`RELAY_PATH`] on the `advertise_url` of every live holder (a
//! heartbeat younger than `cluster.lease_ttl`), with `Authorization: Bearer <cluster secret>`.
//! The holder checks the secret in constant time, queues the frame on its sockets of the chat
//! and answers 200 when one took it, 404 when it holds none. The send counts as sent when any
//! holder took it; otherwise it stays a retryable error, as for a chat with no socket at all.
//!
//! The relay is the WebChat adapter's [`SocketRelay`]: the adapter knows only that trait and
//! [`LocalSockets`] (defined here, so this module depends on no adapter), and the route is
//! mounted only in cluster mode.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;

use crate::store::cluster::ClusterStore;

/// The path on every instance's HTTP listener that takes relayed WebChat frames.
pub const RELAY_PATH: &str = "/cluster/webchat";
/// Longest relayed body: a reply frame of any length WebChat sends (16 MiB of text) escaped; the
/// relay route is only reached with the cluster secret.
const MAX_BODY: usize = 128 * 1024 * 1024;
/// How long one relay request (connect, send, answer) may take; a holder that is paused or gone
/// costs the send at most this, and the reply is retried.
const RELAY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long recording a socket may take before it is given up (logged).
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest chat id the relay route takes (WebChat's own limit is lower).
const MAX_CHAT_ID_BYTES: usize = 1024;
/// How long the relay route waits for a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the sockets of this process's chats are reached from outside it: a relay hands a frame
/// for `chat_id` to every open socket of that chat here.
pub trait LocalSockets: Send + Sync {
    /// Queues `frame` on every open socket of `chat_id` here; how many took it.
    fn push(&self, chat_id: &str, frame: &str) -> usize;
}

/// The sockets of a chat that other processes hold (several gateway instances behind one load
/// balancer): WebChat records its own and asks the relay to carry a frame it cannot send here.
#[async_trait]
pub trait SocketRelay: Send + Sync {
    /// Gives the relay this adapter's sockets, for frames relayed to them (held weakly).
    fn attach(&self, local: Weak<dyn LocalSockets>);
    /// The first socket of `chat_id` opened here.
    async fn opened(&self, chat_id: &str);
    /// The last socket of `chat_id` here closed.
    async fn closed(&self, chat_id: &str);
    /// Carries `frame` to the sockets of `chat_id` held elsewhere: `Ok(true)` when one took
    /// it, `Ok(false)` when no other process holds one, `Err` (the reason) when none could be
    /// reached.
    async fn forward(&self, chat_id: &str, frame: &str) -> Result<bool, String>;
}

/// The relay of one instance: its records in the shared database, its client for the other
/// instances, and (once WebChat is built) the local sockets relayed frames go to.
pub struct Relay {
    store: Arc<dyn ClusterStore>,
    me: String,
    alive_within: Duration,
    secret: String,
    client: reqwest::Client,
    local: OnceLock<Weak<dyn LocalSockets>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("me", &self.me)
            .field("alive_within", &self.alive_within)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay of instance `me`: holders whose heartbeat is older than `alive_within`
    /// (`cluster.lease_ttl`) are not relayed to; `secret` is the cluster's shared secret.
    pub fn new(
        store: Arc<dyn ClusterStore>,
        me: String,
        alive_within: Duration,
        secret: String,
    ) -> anyhow::Result<Arc<Relay>> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(RELAY_TIMEOUT)
            .connect_timeout(RELAY_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the relay's HTTP client: {e}"))?;
        Ok(Arc::new(Relay {
            store,
            me,
            alive_within,
            secret,
            client,
            local: OnceLock::new(),
        }))
    }

    /// Forgets the sockets an earlier run of this instance recorded (a killed process leaves
    /// them); call before the listener takes connections.
    pub async fn start(&self) {
        match tokio::time::timeout(RECORD_TIMEOUT, self.store.webchat_sockets_clear(&self.me)).await
        {
            Ok(Ok(n)) if n > 0 => tracing::info!(
                message = "Forgot the WebChat sockets of this instance's previous run.",
                sockets = n
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                message = "Cannot forget this instance's earlier WebChat sockets.",
                error = %e
            ),
            Err(_) => tracing::warn!(
                message = "Forgetting this instance's earlier WebChat sockets timed out."
            ),
        }
    }

    /// The handler of the relay route, [`RELAY_PATH`], for the HTTP listener.
    pub fn handler(self: &Arc<Self>) -> MethodRouter {
        post(receive).with_state(self.clone())
    }

    /// Posts `body` to one holder; whether it took the frame.
    async fn post_to(&self, holder: &str, url: &str, body: &Value) -> Result<bool, String> {
        let url = format!("{}{RELAY_PATH}", url.trim_end_matches('/'));
        let resp = self
            .client
            .post(&url)
            .bearer_auth(&self.secret)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{holder}: {}", without_url(&e)))?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(format!("{holder} answered {other}")),
        }
    }

    async fn record(&self, chat_id: &str, opened: bool) {
        let done = if opened {
            tokio::time::timeout(
                RECORD_TIMEOUT,
                self.store.webchat_socket_opened(chat_id, &self.me),
            )
            .await
        } else {
            tokio::time::timeout(
                RECORD_TIMEOUT,
                self.store.webchat_socket_closed(chat_id, &self.me),
            )
            .await
        };
        let error = match done {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", RECORD_TIMEOUT.as_secs()),
        };
        tracing::warn!(
            message = "Cannot record a WebChat socket for the cluster; replies sent by other instances may not reach it.",
            chat_id = %chat_id,
            opened,
            %error
        );
    }
}

/// Whether `headers` carry `Authorization: Bearer <secret>` (compared in constant time).
fn bearer_matches(headers: &HeaderMap, secret: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(secret.as_bytes()))
}

/// A reqwest error's text without its URL (the holder is named instead).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    kind.to_owned()
}

#[async_trait]
impl SocketRelay for Relay {
    fn attach(&self, local: Weak<dyn LocalSockets>) {
        let _ = self.local.set(local);
    }

    async fn opened(&self, chat_id: &str) {
        self.record(chat_id, true).await;
    }

    async fn closed(&self, chat_id: &str) {
        self.record(chat_id, false).await;
    }

    async fn forward(&self, chat_id: &str, frame: &str) -> Result<bool, String> {
        let holders = self
            .store
            .webchat_socket_holders(chat_id, &self.me, self.alive_within)
            .await
            .map_err(|e| format!("cannot look up the instances holding the chat: {e}"))?;
        if holders.is_empty() {
            metrics::counter!("gateway_cluster_relay_sends_total", "outcome" => "no_holder")
                .increment(1);
            return Ok(false);
        }
        let body = json!({"chat_id": chat_id, "frame": frame});
        let answers = futures_util::future::join_all(
            holders
                .iter()
                .map(|h| self.post_to(&h.instance_id, &h.advertise_url, &body)),
        )
        .await;
        let mut took = false;
        let mut errors = Vec::new();
        for answer in answers {
            match answer {
                Ok(t) => took |= t,
                Err(e) => errors.push(e),
            }
        }
        let outcome = if took {
            "delivered"
        } else if errors.is_empty() {
            "no_socket"
        } else {
            "failed"
        };
        metrics::counter!("gateway_cluster_relay_sends_total", "outcome" => outcome).increment(1);
        if took || errors.is_empty() {
            Ok(took)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// A JSON error answer, as the other routes of the listener give them.
fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        axum::Json(json!({"accepted": false, "error": message})),
    )
        .into_response()
}

/// `POST /cluster/webchat`: `{"chat_id": "..", "frame": ".."}` from another instance.
async fn receive(State(relay): State<Arc<Relay>>, headers: HeaderMap, body: Body) -> Response {
    if !bearer_matches(&headers, &relay.secret) {
        metrics::counter!("gateway_cluster_relay_received_total", "outcome" => "refused")
            .increment(1);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "the cluster relay needs Authorization: Bearer <cluster secret>".to_owned(),
        );
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a relayed frame is limited to {MAX_BODY} bytes"),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            );
        }
    };
    let parsed: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {e}"),
            );
        }
    };
    let Some(chat_id) = parsed.get("chat_id").and_then(Value::as_str) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "field `chat_id` must be a string".to_owned(),
        );
    };
    if chat_id.is_empty() || chat_id.len() > MAX_CHAT_ID_BYTES {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("field `chat_id` must be 1 to {MAX_CHAT_ID_BYTES} bytes"),
        );
    }
    let Some(frame) = parsed.get("frame").and_then(Value::as_str) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "field `frame` must be a string".to_owned(),
        );
    };
    let local = relay.local.get().and_then(Weak::upgrade);
    let delivered = local.map_or(0, |l| l.push(chat_id, frame));
    if delivered == 0 {
        metrics::counter!("gateway_cluster_relay_received_total", "outcome" => "no_socket")
            .increment(1);
        return refuse(
            StatusCode::NOT_FOUND,
            "no open WebChat socket for this chat on this instance".to_owned(),
        );
    }
    metrics::counter!("gateway_cluster_relay_received_total", "outcome" => "delivered")
        .increment(1);
    (StatusCode::OK, axum::Json(json!({"delivered": delivered}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(h) = authorization {
            headers.insert(header::AUTHORIZATION, h.parse().expect("header literal"));
        }
        headers
    }

    #[test]
    fn the_secret_is_checked_exactly() {
        let secret = "s3cret-s3cret-16";
        assert!(bearer_matches(
            &headers(Some("Bearer s3cret-s3cret-16")),
            secret
        ));
        assert!(!bearer_matches(
            &headers(Some("Bearer s3cret-s3cret-1")),
            secret
        ));
        assert!(!bearer_matches(
            &headers(Some("Bearer s3cret-s3cret-166")),
            secret
        ));
        assert!(!bearer_matches(
            &headers(Some("bearer s3cret-s3cret-16")),
            secret
        ));
        assert!(!bearer_matches(&headers(Some("s3cret-s3cret-16")), secret));
        assert!(!bearer_matches(&headers(None), secret));
    }
}
