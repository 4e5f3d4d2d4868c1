//! A fake Discord server (REST API v10 and the gateway WebSocket) for
//! end-to-end tests of the Discord channel, speaking exactly what `serenity`
//! 0.12 expects. One listener on 127.0.0.1 serves both: `GET /` upgrades to
//! the gateway (serenity connects to the URL from `GET /api/v10/gateway` with
//! `?v=10` appended; JSON text frames, no transport compression) and
//! everything under `/api/v10` is REST. The gateway sends Hello, accepts
//! Identify (READY) and Resume (replay of the missed dispatches by sequence
//! number, then RESUMED), acknowledges heartbeats, and on demand drops the
//! socket, sends Reconnect (op 7), Invalid Session (op 9) or a close code
//! (4004 for a rejected token). Tests feed `MESSAGE_CREATE` dispatches with
//! the `push_*` methods (queued while no session is live, delivered after the
//! next READY/RESUMED) and inspect what the client posted to
//! `POST /api/v10/channels/{id}/messages` with [`FakeDiscord::sent`] and
//! [`FakeDiscord::wait_sent`]. REST faults (error statuses, a 429 with
//! Discord's rate-limit headers, dropped connections, delays) are queued FIFO
//! or set as a sticky mode, like the other fakes.
//!
//! serenity must be pointed here with
//! `HttpBuilder::new(token).proxy(fake.url()).ratelimiter_disabled(true)`:
//! serenity 0.12's rate limiter builds its requests without the proxy, so
//! with the limiter enabled every REST call (including the gateway URL
//! lookup) goes to the real `https://discord.com`.
//!
//! Waiting is Notify-based: every gateway transition, recorded request and
//! response wakes the `wait_*` helpers, which re-check their condition.

mod feed;
mod gateway;
mod json;
mod rest;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};
use gateway::gateway_upgrade;
use rest::rest;

/// The bot user's id (also the application id, as for every modern bot).
const BOT_USER_ID: u64 = 1_187_000_000_000_000_001;
/// The bot user's name.
const BOT_USERNAME: &str = "fake-bot";
/// Bots keep legacy four-digit discriminators.
const BOT_DISCRIMINATOR: &str = "4821";
/// 2015-01-01T00:00:00Z, the epoch of Discord snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
/// Heartbeat interval announced in Hello unless changed (real Discord: ~41 s).
const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1_000);
/// Discord's limit on `content`, in characters.
const CONTENT_LIMIT: usize = 2000;
/// `GATEWAY_MESSAGE_CONTENT_LIMITED`: the message-content intent is enabled.
const APPLICATION_FLAGS: u64 = 1 << 19;
/// Value of the `_trace` arrays Discord attaches to Hello/READY/RESUMED.
const TRACE: &str = "[\"fake-discord\",{\"micros\":0}]";
/// Generous per-route limit announced on successful responses.
const RATE_LIMIT: u64 = 10_000;

/// Gateway intent bits (as Identify sends them) that change what the fake
/// dispatches: without `GUILD_MESSAGES` / `DIRECT_MESSAGES` the matching
/// `MESSAGE_CREATE`s are withheld, and without `MESSAGE_CONTENT` guild
/// messages that neither mention the bot nor come from it arrive with empty
/// `content`, `embeds`, `attachments` and `components` — as on real Discord.
pub mod intents {
    /// `GUILDS`.
    pub const GUILDS: u64 = 1 << 0;
    /// `GUILD_MESSAGES`.
    pub const GUILD_MESSAGES: u64 = 1 << 9;
    /// `DIRECT_MESSAGES`.
    pub const DIRECT_MESSAGES: u64 = 1 << 12;
    /// `MESSAGE_CONTENT` (privileged).
    pub const MESSAGE_CONTENT: u64 = 1 << 15;
}

/// How the fake answers one `POST /api/v10/channels/{id}/messages`.
#[derive(Debug, Clone, PartialEq)]
pub enum DcFault {
    /// Answer with this status and a Discord JSON error body
    /// `{"message":..,"code":..}` (no rate-limit headers, even for 429).
    Status(u16),
    /// Answer `429` with body `{"message":"You are being rate limited.",
    /// "retry_after":..,"global":..}` and the headers real Discord sends:
    /// `Retry-After` (whole seconds, rounded up) and `X-RateLimit-Scope`,
    /// plus `X-RateLimit-Limit/Remaining/Reset/Reset-After/Bucket` for a
    /// per-route limit or `X-RateLimit-Global: true` for the global one.
    RateLimited {
        /// Seconds to wait (body `retry_after`, header `X-RateLimit-Reset-After`).
        retry_after: f64,
        /// Global rather than per-route limit.
        global: bool,
    },
    /// Answer `401` with `{"message":"401: Unauthorized","code":0}`.
    Unauthorized,
    /// Close the TCP connection without sending any response.
    Drop,
    /// Wait this long, then handle the request normally.
    Delay(Duration),
}

/// One `POST /api/v10/channels/{id}/messages` received by the fake.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// Channel id from the path.
    pub channel_id: u64,
    /// `content` of the body (empty if missing).
    pub content: String,
    /// `message_reference.message_id` of the body, if any.
    pub reference_message_id: Option<u64>,
    /// Status the fake answered with; `0` while no response has been sent
    /// (pending delay, dropped connection).
    pub status_returned: u16,
    /// When the request arrived.
    pub at: Instant,
    /// Id of the created message (2xx only).
    pub message_id: Option<u64>,
    /// The full request body as JSON (a JSON string holding the raw text if
    /// the body was not valid JSON).
    pub raw: Value,
}

impl SentMessage {
    /// True if the fake answered with a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_returned)
    }
}

/// One Identify (op 2) received, accepted or not.
#[derive(Debug, Clone)]
pub struct IdentifyInfo {
    /// `d.token` exactly as sent (serenity sends `Bot <token>`).
    pub token: String,
    /// `d.intents` (0 if missing).
    pub intents: u64,
    /// `d.properties` (`{"os","browser","device"}`).
    pub properties: Value,
    /// `d.compress` (serenity sends `true`: payload compression allowed; the
    /// fake still answers with uncompressed text frames, which serenity reads).
    pub compress: Option<bool>,
    /// `d.shard` as `(shard_id, shard_count)`.
    pub shard: Option<(u64, u64)>,
    /// Whether a READY was sent for it.
    pub accepted: bool,
    /// Query string of the WebSocket connection it came on (serenity: `v=10`).
    pub query: String,
    /// The whole `d` object.
    pub raw: Value,
}

/// One REST request received.
#[derive(Debug, Clone)]
pub struct RestCall {
    /// HTTP method.
    pub method: String,
    /// Request path, e.g. `/api/v10/users/@me`.
    pub path: String,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// Status answered; `0` while pending or when the connection was dropped.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

/// A file attached to an [`Incoming`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingAttachment {
    /// File name.
    pub filename: String,
    /// MIME type, e.g. `image/png`.
    pub content_type: Option<String>,
    /// Size in bytes.
    pub size: u32,
}

/// A message a user posts, for [`FakeDiscord::push_message`]. All ids must be
/// nonzero (serenity rejects a zero snowflake and drops the whole event).
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    /// Channel the message is posted in.
    pub channel_id: u64,
    /// Guild of the channel; `None` for a direct message.
    pub guild_id: Option<u64>,
    /// Author's user id (the bot's own id makes it the bot's message).
    pub author_id: u64,
    /// Author's username (default `user{author_id}`).
    pub author_name: Option<String>,
    /// Whether the author is a bot.
    pub author_bot: bool,
    /// Text; with `mention_bot` it is prefixed with `<@BOT_ID> `.
    pub content: String,
    /// Mention the bot: prefix the content and add the bot to `mentions`.
    pub mention_bot: bool,
    /// Reply to this message id (type 19, `message_reference`, and — if the
    /// fake knows the message — `referenced_message` and a reply ping of its
    /// author in `mentions`).
    pub reply_to: Option<u64>,
    /// Attachments (CDN-style URLs are generated).
    pub attachments: Vec<IncomingAttachment>,
}

/// An event waiting for (or carried into) a session.
#[derive(Debug, Clone)]
struct PendingEvent {
    t: &'static str,
    d: Value,
    message_id: Option<u64>,
    guild: bool,
    /// Content survives a missing MESSAGE_CONTENT intent (DM, mention, own).
    content_exempt: bool,
}

/// An event with its sequence number in a session.
#[derive(Debug)]
struct Dispatch {
    seq: u64,
    event: PendingEvent,
    /// `d` as dispatched (content stripped for a missing intent).
    d: Value,
}

#[derive(Debug)]
struct Session {
    id: String,
    intents: u64,
    /// Last sequence number assigned.
    seq: u64,
    log: Vec<Dispatch>,
    /// Highest sequence number written to a socket.
    delivered_upto: u64,
}

#[derive(Debug)]
enum Control {
    Drop,
    Reconnect,
    Invalidate,
    Close(u16, String),
}

#[derive(Debug)]
struct ConnEntry {
    id: u64,
    handle: ConnHandle,
    control: mpsc::UnboundedSender<Control>,
}

#[derive(Debug)]
struct StoredMessage {
    /// The message without `guild_id`, `member` and `referenced_message`.
    core: Value,
    author_id: u64,
    author: Value,
}

#[derive(Debug)]
struct Recorded {
    token: String,
    reject_token: bool,
    heartbeat_interval: Duration,
    ack_heartbeats: bool,
    disallowed_intents: u64,
    echo_sent: bool,
    strict_references: bool,

    session: Option<Session>,
    /// Events pushed while no session exists.
    pending: VecDeque<PendingEvent>,
    /// The connection dispatches go to (READY or RESUMED sent on it).
    active_conn: Option<u64>,
    /// Open connections, oldest first.
    conns: Vec<ConnEntry>,
    next_conn_id: u64,
    connections_total: usize,
    ws_queries: Vec<String>,
    identifies: Vec<IdentifyInfo>,
    resumes: usize,
    failed_resumes: usize,
    heartbeats: usize,
    last_heartbeat_seq: Option<u64>,
    withheld: usize,
    client_closes: Vec<u16>,
    written_ids: HashSet<u64>,

    messages: HashMap<u64, StoredMessage>,
    channel_guilds: HashMap<u64, Option<u64>>,
    last_snowflake: u64,

    sent: Vec<SentMessage>,
    faults: VecDeque<DcFault>,
    mode: Option<DcFault>,
    rest: Vec<RestCall>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<Recorded>,
    changed: Notify,
    /// Bumped whenever an event enters a session, so connection tasks flush.
    events: watch::Sender<u64>,
    shutdown: ShutdownSignal,
    ws_url: OnceLock<String>,
}

impl Shared {
    fn ws_url(&self) -> String {
        self.ws_url.get().cloned().unwrap_or_default()
    }

    /// Wakes the `wait_*` helpers and the connection tasks.
    fn wake(&self) {
        self.events.send_modify(|v| *v = v.wrapping_add(1));
        self.changed.notify_waiters();
    }
}

/// The fake Discord server. Dropping it shuts the server down and closes
/// every gateway connection.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    server: Server,
}

impl std::fmt::Debug for FakeDiscord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDiscord")
            .field("addr", &self.server.addr)
            .finish_non_exhaustive()
    }
}

impl FakeDiscord {
    /// Starts the server on `127.0.0.1:<ephemeral>`, accepting `token`
    /// (with or without a `Bot ` prefix).
    pub async fn start(token: &str) -> FakeDiscord {
        let (shutdown_tx, shutdown) = shutdown_channel();
        let (events, _) = watch::channel(0);
        let token = token.strip_prefix("Bot ").unwrap_or(token).to_owned();
        let shared = Arc::new(Shared {
            state: Mutex::new(Recorded {
                token,
                reject_token: false,
                heartbeat_interval: DEFAULT_HEARTBEAT,
                ack_heartbeats: true,
                disallowed_intents: 0,
                echo_sent: true,
                strict_references: true,
                session: None,
                pending: VecDeque::new(),
                active_conn: None,
                conns: Vec::new(),
                next_conn_id: 0,
                connections_total: 0,
                ws_queries: Vec::new(),
                identifies: Vec::new(),
                resumes: 0,
                failed_resumes: 0,
                heartbeats: 0,
                last_heartbeat_seq: None,
                withheld: 0,
                client_closes: Vec::new(),
                written_ids: HashSet::new(),
                messages: HashMap::new(),
                channel_guilds: HashMap::new(),
                last_snowflake: 0,
                sent: Vec::new(),
                faults: VecDeque::new(),
                mode: None,
                rest: Vec::new(),
            }),
            changed: Notify::new(),
            events,
            shutdown,
            ws_url: OnceLock::new(),
        });
        let router = Router::new()
            .route("/", get(gateway_upgrade))
            .fallback(rest)
            .with_state(Arc::clone(&shared));
        let server = Server::start(router, shutdown_tx)
            .await
            .expect("FakeDiscord: failed to bind 127.0.0.1:0");
        // Set before any client can know the port, so handlers always see it.
        let _ = shared.ws_url.set(format!("ws://{}", server.addr));
        FakeDiscord { shared, server }
    }

    /// Base URL for `HttpBuilder::proxy`: `http://127.0.0.1:PORT` (serenity
    /// replaces `https://discord.com` with it, so REST arrives as
    /// `{url}/api/v10/...`).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The gateway URL `GET /api/v10/gateway` returns: `ws://127.0.0.1:PORT`.
    pub fn ws_url(&self) -> String {
        self.shared.ws_url()
    }

    /// The bound socket address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// The bot user's id (also the application id).
    pub fn bot_user_id(&self) -> u64 {
        BOT_USER_ID
    }

    /// The bot user's username.
    pub fn bot_username(&self) -> &'static str {
        BOT_USERNAME
    }

    // ----- gateway state -------------------------------------------------

    /// Number of accepted Identifies (READY sent).
    pub fn identify_count(&self) -> usize {
        let st = lock(&self.shared.state);
        st.identifies.iter().filter(|i| i.accepted).count()
    }

    /// Every Identify received, accepted or not, in order.
    pub fn identifies(&self) -> Vec<IdentifyInfo> {
        lock(&self.shared.state).identifies.clone()
    }

    /// Number of successful Resumes (RESUMED sent).
    pub fn resume_count(&self) -> usize {
        lock(&self.shared.state).resumes
    }

    /// Number of Resumes answered with Invalid Session (unknown session).
    pub fn failed_resume_count(&self) -> usize {
        lock(&self.shared.state).failed_resumes
    }

    /// Number of Heartbeats (op 1) received.
    pub fn heartbeats(&self) -> usize {
        lock(&self.shared.state).heartbeats
    }

    /// The `d` (last sequence number) of the latest Heartbeat.
    pub fn last_heartbeat_seq(&self) -> Option<u64> {
        lock(&self.shared.state).last_heartbeat_seq
    }

    /// Number of gateway WebSocket connections accepted so far.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.state).connections_total
    }

    /// Query strings of every gateway connection (serenity sends `v=10`).
    pub fn ws_queries(&self) -> Vec<String> {
        lock(&self.shared.state).ws_queries.clone()
    }

    /// Close codes of the close frames clients sent (serenity sends 4000
    /// when it restarts a shard, 1000 on shutdown).
    pub fn client_close_codes(&self) -> Vec<u16> {
        lock(&self.shared.state).client_closes.clone()
    }

    /// Current session id (`None` before the first READY or after
    /// [`invalidate_session`](Self::invalidate_session)).
    pub fn session_id(&self) -> Option<String> {
        let st = lock(&self.shared.state);
        st.session.as_ref().map(|s| s.id.clone())
    }

    /// True while a session is READY/RESUMED on an open connection.
    pub fn is_live(&self) -> bool {
        is_live(&lock(&self.shared.state))
    }

    /// Number of dispatches withheld because the session's intents lacked
    /// `GUILD_MESSAGES` / `DIRECT_MESSAGES`.
    pub fn withheld_count(&self) -> usize {
        lock(&self.shared.state).withheld
    }

    /// Waits until a session is READY on an open connection (after at least
    /// one accepted Identify).
    pub async fn wait_identified(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state("a session is READY", timeout, |st| {
            st.identifies.iter().any(|i| i.accepted) && is_live(st)
        })
        .await
    }

    /// Waits until at least `n` Identifies were accepted.
    pub async fn wait_identify_count(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state(&format!("{n} accepted identifies"), timeout, |st| {
            st.identifies.iter().filter(|i| i.accepted).count() >= n
        })
        .await
    }

    /// Waits until at least `n` Resumes succeeded.
    pub async fn wait_resume_count(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state(&format!("{n} successful resumes"), timeout, |st| {
            st.resumes >= n
        })
        .await
    }

    /// Waits until at least `n` Heartbeats arrived.
    pub async fn wait_heartbeats(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state(&format!("{n} heartbeats"), timeout, |st| st.heartbeats >= n)
            .await
    }

    /// Waits until a session is live again (READY or RESUMED on an open
    /// connection), e.g. after [`drop_connection`](Self::drop_connection).
    pub async fn wait_live(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state("a live session", timeout, is_live).await
    }

    /// Waits until the `MESSAGE_CREATE` of `message_id` has been written to a
    /// gateway socket.
    pub async fn wait_dispatched(&self, message_id: u64, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state(
            &format!("message {message_id} is dispatched"),
            timeout,
            |st| st.written_ids.contains(&message_id),
        )
        .await
    }

    async fn wait_state(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Recorded) -> bool,
    ) -> anyhow::Result<()> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            check(&lock(&self.shared.state)).then_some(())
        })
        .await;
        got.ok_or_else(|| {
            anyhow::anyhow!(
                "FakeDiscord: timed out after {timeout:?} waiting until {what}; gateway: {}",
                gateway_summary(&lock(&self.shared.state))
            )
        })
    }

    // ----- gateway control -----------------------------------------------
    // ----- REST recording and faults ---------------------------------------

    /// Every `POST .../messages` received, in arrival order, whatever it was
    /// answered.
    pub fn sent(&self) -> Vec<SentMessage> {
        lock(&self.shared.state).sent.clone()
    }

    /// Waits until `pred(&successful)` holds, where `successful` are the
    /// `POST .../messages` answered 2xx, and returns them. On timeout the
    /// error lists everything that arrived with the statuses returned.
    pub async fn wait_sent(
        &self,
        pred: impl Fn(&[SentMessage]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<SentMessage>> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            let ok = successful(&lock(&self.shared.state));
            pred(&ok).then_some(ok)
        })
        .await;
        got.ok_or_else(|| {
            let all = self.sent();
            let lines: Vec<String> = all
                .iter()
                .map(|s| {
                    format!(
                        "  [{}] channel={} reference={:?} content={:?}",
                        s.status_returned, s.channel_id, s.reference_message_id, s.content
                    )
                })
                .collect();
            anyhow::anyhow!(
                "FakeDiscord: timed out after {timeout:?} waiting for the sent predicate; \
                 {} succeeded (2xx) out of {} received:\n{}\ngateway: {}",
                all.iter().filter(|s| s.is_success()).count(),
                all.len(),
                lines.join("\n"),
                gateway_summary(&lock(&self.shared.state))
            )
        })
    }

    /// Number of REST requests whose path starts with `path_prefix` (e.g.
    /// `/api/v10/users/@me`), whatever they were answered.
    pub fn rest_calls(&self, path_prefix: &str) -> usize {
        let st = lock(&self.shared.state);
        st.rest
            .iter()
            .filter(|c| c.path.starts_with(path_prefix))
            .count()
    }

    /// Every REST request received, in arrival order.
    pub fn rest_log(&self) -> Vec<RestCall> {
        lock(&self.shared.state).rest.clone()
    }

    /// Queues a fault for the next `POST .../messages` (FIFO).
    pub fn push_fault(&self, fault: DcFault) {
        lock(&self.shared.state).faults.push_back(fault);
    }

    /// Number of queued faults not yet consumed.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.state).faults.len()
    }

    /// Makes every `POST .../messages` get `mode` until cleared with `None`
    /// (queued faults are not consumed meanwhile).
    pub fn set_mode(&self, mode: Option<DcFault>) {
        lock(&self.shared.state).mode = mode;
    }
}

fn is_live(st: &Recorded) -> bool {
    st.session.is_some()
        && st
            .active_conn
            .is_some_and(|id| st.conns.iter().any(|c| c.id == id))
}

/// Takes the connection a control command is for: the live one (which stops
/// receiving dispatches from now on), else the newest open one.
fn take_target(st: &mut Recorded) -> Option<u64> {
    st.active_conn
        .take()
        .or_else(|| st.conns.last().map(|c| c.id))
}

fn successful(st: &Recorded) -> Vec<SentMessage> {
    st.sent.iter().filter(|s| s.is_success()).cloned().collect()
}

fn gateway_summary(st: &Recorded) -> String {
    let accepted = st.identifies.iter().filter(|i| i.accepted).count();
    let (session, seq) = match &st.session {
        Some(s) => (Some(s.id.as_str()), s.seq),
        None => (None, 0),
    };
    format!(
        "identifies={} (accepted {accepted}), resumes={} (failed {}), heartbeats={}, \
         connections={} (open {}), live={}, session={session:?}, seq={seq}, \
         queued without session={}, withheld for intents={}, client close codes={:?}",
        st.identifies.len(),
        st.resumes,
        st.failed_resumes,
        st.heartbeats,
        st.connections_total,
        st.conns.len(),
        is_live(st),
        st.pending.len(),
        st.withheld,
        st.client_closes
    )
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use futures_util::{SinkExt as _, StreamExt as _};
    use serde_json::json;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use super::json::iso8601;
    use super::*;

    const TOKEN: &str = "test-token";
    const WAIT: Duration = Duration::from_secs(10);
    /// What the gateway adapter asks for: DMs, guild messages, content.
    const ALL: u64 = intents::GUILD_MESSAGES | intents::DIRECT_MESSAGES | intents::MESSAGE_CONTENT;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    #[derive(Debug)]
    enum Frame {
        Json(Value),
        /// Close frame code, or `None` for a connection that ended without one.
        Closed(Option<u16>),
    }

    /// A gateway client sending what serenity's `WsClient` sends.
    struct Gw {
        ws: Ws,
    }

    impl Gw {
        /// Connects like serenity's `shard.rs`, which builds
        /// `Url::parse("{url}?v=10")` — normalized by the `url` crate to
        /// `ws://127.0.0.1:PORT/?v=10`, i.e. `GET /?v=10` — then reads Hello.
        async fn connect(fake: &FakeDiscord) -> (Gw, Value) {
            let url = format!("{}/?v=10", fake.ws_url());
            let (ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("gateway connect");
            let mut gw = Gw { ws };
            let hello = gw.json().await;
            assert_eq!(hello["op"], 10, "first frame is Hello: {hello}");
            (gw, hello)
        }

        async fn next(&mut self) -> Frame {
            loop {
                let msg = tokio::time::timeout(WAIT, self.ws.next())
                    .await
                    .expect("timed out waiting for a gateway frame");
                match msg {
                    Some(Ok(WsMessage::Text(t))) => {
                        return Frame::Json(
                            serde_json::from_str(t.as_str()).expect("frame is JSON"),
                        );
                    }
                    Some(Ok(WsMessage::Close(f))) => {
                        return Frame::Closed(f.map(|f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Frame::Closed(None),
                }
            }
        }

        async fn json(&mut self) -> Value {
            match self.next().await {
                Frame::Json(v) => v,
                Frame::Closed(code) => {
                    panic!("gateway closed ({code:?}) while a frame was expected")
                }
            }
        }

        async fn send(&mut self, v: Value) {
            self.ws
                .send(WsMessage::Text(v.to_string().into()))
                .await
                .expect("gateway send");
        }

        /// serenity's Identify payload (ws.rs `send_identify`).
        async fn send_identify(&mut self, token: &str, intents: u64) {
            self.send(json!({
                "op": 2,
                "d": {
                    "compress": true,
                    "token": format!("Bot {token}"),
                    "large_threshold": 250,
                    "shard": [0, 1],
                    "intents": intents,
                    "properties": {"browser": "serenity", "device": "serenity", "os": "linux"},
                    "presence": {"afk": false, "status": "online",
                                 "since": {"secs_since_epoch": 0, "nanos_since_epoch": 0},
                                 "activities": []},
                },
            }))
            .await;
        }

        /// Identifies and returns READY's `d`.
        async fn identify(&mut self, intents: u64) -> Value {
            self.send_identify(TOKEN, intents).await;
            let ready = self.json().await;
            assert_eq!(ready["op"], 0, "{ready}");
            assert_eq!(ready["t"], "READY", "{ready}");
            assert_eq!(ready["s"], 1, "{ready}");
            ready["d"].clone()
        }

        async fn send_resume(&mut self, session_id: &str, seq: u64) {
            self.send(json!({
                "op": 6,
                "d": {"session_id": session_id, "token": format!("Bot {TOKEN}"), "seq": seq},
            }))
            .await;
        }

        /// Reads frames until the connection ends; returns the close code.
        async fn closed(&mut self) -> Option<u16> {
            loop {
                if let Frame::Closed(code) = self.next().await {
                    return code;
                }
            }
        }
    }

    fn snowflake(v: &Value) -> u64 {
        let n = v
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("not a snowflake string: {v}"));
        assert_ne!(n, 0, "snowflakes are NonZeroU64 in serenity");
        n
    }

    fn is_rfc3339(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 32
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && s.ends_with("+00:00")
            && s[..4]
                .bytes()
                .chain(s[20..26].bytes())
                .all(|c| c.is_ascii_digit())
    }

    fn opt_string(v: &Value, field: &str, what: &str) {
        assert!(
            v.get(field).is_none_or(|f| f.is_null() || f.is_string()),
            "{what}.{field} must be null or a string: {v}"
        );
    }

    /// serenity `model::user::User`: required `id`, `username`; the rest is
    /// optional or defaulted but must have the right type when present.
    fn check_user(u: &Value, what: &str) {
        snowflake(&u["id"]);
        assert!(u["username"].is_string(), "{what}.username: {u}");
        // `discriminator` deserializes from a digit string or integer (0 → None).
        if let Some(d) = u.get("discriminator").filter(|d| !d.is_null()) {
            let ok = d.as_u64().is_some() || d.as_str().is_some_and(|s| s.parse::<u16>().is_ok());
            assert!(ok, "{what}.discriminator: {u}");
        }
        opt_string(u, "global_name", what);
        opt_string(u, "avatar", what);
        opt_string(u, "banner", what);
        for flag in ["bot", "system", "mfa_enabled"] {
            assert!(
                u.get(flag).is_none_or(Value::is_boolean),
                "{what}.{flag}: {u}"
            );
        }
        for num in ["flags", "public_flags", "premium_type"] {
            assert!(u.get(num).is_none_or(|f| f.is_u64()), "{what}.{num}: {u}");
        }
        if let Some(member) = u.get("member") {
            check_member(member, &format!("{what}.member"));
        }
    }

    /// serenity `model::guild::PartialMember`: required `roles`.
    fn check_member(m: &Value, what: &str) {
        assert!(m["roles"].is_array(), "{what}.roles: {m}");
        for ts in ["joined_at", "premium_since"] {
            if let Some(t) = m.get(ts).filter(|t| !t.is_null()) {
                assert!(t.as_str().is_some_and(is_rfc3339), "{what}.{ts}: {m}");
            }
        }
        for flag in ["deaf", "mute", "pending"] {
            assert!(
                m.get(flag).is_none_or(Value::is_boolean),
                "{what}.{flag}: {m}"
            );
        }
    }

    /// serenity `model::channel::Attachment`: required `id`, `filename`,
    /// `proxy_url`, `size` (u32), `url`.
    fn check_attachment(a: &Value) {
        snowflake(&a["id"]);
        for s in ["filename", "proxy_url", "url"] {
            assert!(a[s].is_string(), "attachment.{s}: {a}");
        }
        assert!(
            a["size"].as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
            "{a}"
        );
        opt_string(a, "content_type", "attachment");
    }

    /// serenity `model::channel::Message`, field by field: the non-`Option`,
    /// non-`default` fields are `id`, `channel_id`, `author`, `content`,
    /// `timestamp`, `tts`, `mention_everyone`, `mentions`, `mention_roles`,
    /// `attachments`, `embeds`, `pinned` and `type`; a missing one makes
    /// serenity drop the whole MESSAGE_CREATE.
    fn check_message(m: &Value) {
        snowflake(&m["id"]);
        snowflake(&m["channel_id"]);
        check_user(&m["author"], "author");
        assert!(m["content"].is_string(), "content: {m}");
        assert!(
            m["timestamp"].as_str().is_some_and(is_rfc3339),
            "timestamp: {m}"
        );
        assert!(
            m["edited_timestamp"].is_null()
                || m["edited_timestamp"].as_str().is_some_and(is_rfc3339),
            "edited_timestamp: {m}"
        );
        for b in ["tts", "mention_everyone", "pinned"] {
            assert!(m[b].is_boolean(), "{b}: {m}");
        }
        for (i, u) in m["mentions"]
            .as_array()
            .expect("mentions array")
            .iter()
            .enumerate()
        {
            check_user(u, &format!("mentions[{i}]"));
        }
        for r in m["mention_roles"].as_array().expect("mention_roles array") {
            snowflake(r);
        }
        for a in m["attachments"].as_array().expect("attachments array") {
            check_attachment(a);
        }
        assert!(m["embeds"].is_array(), "embeds: {m}");
        assert!(
            m["type"].as_u64().is_some_and(|t| t <= 255),
            "type (u8): {m}"
        );
        assert!(m.get("flags").is_none_or(|f| f.is_u64()), "flags: {m}");
        assert!(
            m.get("components").is_none_or(Value::is_array),
            "components: {m}"
        );
        if let Some(g) = m.get("guild_id") {
            snowflake(g);
        }
        if let Some(member) = m.get("member") {
            check_member(member, "member");
        }
        // `MessageReference`: `channel_id` is required, `message_id` optional.
        if let Some(r) = m.get("message_reference") {
            snowflake(&r["channel_id"]);
            snowflake(&r["message_id"]);
            assert!(r.get("type").is_none_or(|t| t.is_u64()), "{r}");
        }
        if let Some(r) = m.get("referenced_message").filter(|r| !r.is_null()) {
            check_message(r);
        }
    }

    /// serenity `model::gateway::Ready`: required `v` (u8), `user`,
    /// `guilds`, `session_id`, `resume_gateway_url`, `application {id, flags}`;
    /// `shard` optional as `[u32, u32]`.
    fn check_ready(d: &Value, fake: &FakeDiscord) {
        assert_eq!(d["v"], 10);
        check_user(&d["user"], "user");
        assert_eq!(snowflake(&d["user"]["id"]), fake.bot_user_id());
        assert_eq!(d["user"]["bot"], true);
        assert!(d["guilds"].is_array());
        assert!(d["session_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(d["resume_gateway_url"], fake.ws_url());
        assert_eq!(snowflake(&d["application"]["id"]), fake.bot_user_id());
        assert!(d["application"]["flags"].is_u64());
        assert_eq!(d["shard"], json!([0, 1]));
    }

    fn message_d(frame: &Value, seq: u64) -> Value {
        assert_eq!(frame["op"], 0, "{frame}");
        assert_eq!(frame["t"], "MESSAGE_CREATE", "{frame}");
        assert_eq!(frame["s"], seq, "{frame}");
        let d = frame["d"].clone();
        check_message(&d);
        d
    }

    fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("missing header {name}"))
    }

    async fn post(fake: &FakeDiscord, channel: u64, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!(
                "{}/api/v10/channels/{channel}/messages",
                fake.url()
            ))
            .header("Authorization", format!("Bot {TOKEN}"))
            .json(&body)
            .send()
            .await
            .expect("POST messages")
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.123456+00:00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000000+00:00");
        assert!(is_rfc3339(&iso8601(SystemTime::now())));
    }

    #[tokio::test]
    async fn rest_users_me_gateway_and_not_found() {
        let fake = FakeDiscord::start(TOKEN).await;
        let http = reqwest::Client::new();
        let auth = format!("Bot {TOKEN}");

        let me = http
            .get(format!("{}/api/v10/users/@me", fake.url()))
            .header("Authorization", &auth)
            .send()
            .await
            .expect("GET users/@me");
        assert_eq!(me.status(), 200);
        // serenity's rate limiter parses these as i64 / f64.
        assert!(header(&me, "x-ratelimit-limit").parse::<i64>().is_ok());
        assert!(
            header(&me, "x-ratelimit-remaining")
                .parse::<i64>()
                .expect("remaining")
                > 0
        );
        assert!(header(&me, "x-ratelimit-reset").parse::<f64>().is_ok());
        assert!(
            header(&me, "x-ratelimit-reset-after")
                .parse::<f64>()
                .is_ok()
        );
        assert_eq!(header(&me, "x-ratelimit-bucket").len(), 32);
        let me: Value = me.json().await.expect("user JSON");
        check_user(&me, "users/@me");
        assert_eq!(snowflake(&me["id"]), fake.bot_user_id());
        assert_eq!(me["username"], fake.bot_username());
        assert_eq!(me["bot"], true);

        let bad = http
            .get(format!("{}/api/v10/users/@me", fake.url()))
            .header("Authorization", "Bot wrong")
            .send()
            .await
            .expect("GET users/@me");
        assert_eq!(bad.status(), 401);
        let body: Value = bad.json().await.expect("error JSON");
        assert_eq!(body, json!({"message": "401: Unauthorized", "code": 0}));

        // `GET /gateway` needs no token (serenity's `get_gateway`).
        let gw: Value = http
            .get(format!("{}/api/v10/gateway", fake.url()))
            .send()
            .await
            .expect("GET gateway")
            .json()
            .await
            .expect("gateway JSON");
        assert_eq!(gw, json!({"url": fake.ws_url()}));
        assert!(fake.ws_url().starts_with("ws://127.0.0.1:"));

        let bot: Value = http
            .get(format!("{}/api/v10/gateway/bot", fake.url()))
            .header("Authorization", &auth)
            .send()
            .await
            .expect("GET gateway/bot")
            .json()
            .await
            .expect("gateway/bot JSON");
        assert_eq!(bot["url"], fake.ws_url());
        assert_eq!(bot["shards"], 1);
        for k in ["total", "remaining", "reset_after", "max_concurrency"] {
            assert!(bot["session_start_limit"][k].is_u64(), "{k}: {bot}");
        }

        let typing = http
            .post(format!("{}/api/v10/channels/42/typing", fake.url()))
            .header("Authorization", &auth)
            .send()
            .await
            .expect("POST typing");
        assert_eq!(typing.status(), 204);

        for path in [
            "/api/v10/nope",
            "/api/v9/users/@me",
            "/api/v10/channels/abc/messages",
        ] {
            let resp = http
                .get(format!("{}{path}", fake.url()))
                .header("Authorization", &auth)
                .send()
                .await
                .expect("GET unknown");
            assert_eq!(resp.status(), 404, "{path}");
            let body: Value = resp.json().await.expect("error JSON");
            assert_eq!(body, json!({"message": "404: Not Found", "code": 0}));
        }

        assert_eq!(fake.rest_calls("/api/v10/users/@me"), 2);
        assert_eq!(fake.rest_calls("/api/v10/gateway"), 2);
        assert_eq!(fake.rest_calls("/api/v10/gateway/bot"), 1);
        let log = fake.rest_log();
        assert_eq!(log[0].status, 200);
        assert_eq!(log[1].status, 401);
        assert_eq!(log[0].authorization.as_deref(), Some(auth.as_str()));
    }

    #[tokio::test]
    async fn identify_ready_heartbeat_and_message_create() {
        let fake = FakeDiscord::start(TOKEN).await;
        fake.set_heartbeat_interval(Duration::from_millis(41_250));
        // Pushed before anyone connects: delivered right after READY.
        let early = fake.push_dm(500, 600, "before ready");

        let (mut gw, hello) = Gw::connect(&fake).await;
        assert_eq!(hello["d"]["heartbeat_interval"], 41_250);
        let ready = gw.identify(ALL).await;
        check_ready(&ready, &fake);
        fake.wait_identified(WAIT).await.expect("identified");
        assert_eq!(fake.identify_count(), 1);
        assert_eq!(fake.session_id().as_deref(), ready["session_id"].as_str());
        let id = &fake.identifies()[0];
        assert_eq!(id.token, format!("Bot {TOKEN}"));
        assert_eq!(id.intents, ALL);
        assert_eq!(id.properties["browser"], "serenity");
        assert_eq!(id.compress, Some(true));
        assert_eq!(id.shard, Some((0, 1)));
        assert_eq!(id.query, "v=10");

        let d = message_d(&gw.json().await, 2);
        assert_eq!(snowflake(&d["id"]), early);
        assert_eq!(d["content"], "before ready");
        assert!(
            d.get("guild_id").is_none() && d.get("member").is_none(),
            "{d}"
        );

        gw.send(json!({"op": 1, "d": 2})).await;
        let ack = gw.json().await;
        assert_eq!(ack["op"], 11, "{ack}");
        assert_eq!(fake.heartbeats(), 1);
        assert_eq!(fake.last_heartbeat_seq(), Some(2));

        let dm = fake.push_dm(500, 600, "hello bot");
        let d = message_d(&gw.json().await, 3);
        assert_eq!(snowflake(&d["id"]), dm);
        assert_eq!(snowflake(&d["channel_id"]), 500);
        assert_eq!(snowflake(&d["author"]["id"]), 600);
        assert_eq!(d["author"]["bot"], false);
        assert_eq!(d["author"]["discriminator"], "0");
        assert_eq!(d["type"], 0);
        fake.wait_dispatched(dm, WAIT).await.expect("dispatched");

        let gm = fake.push_guild_message(700, 701, 600, "hi there", true);
        let d = message_d(&gw.json().await, 4);
        assert_eq!(snowflake(&d["id"]), gm);
        assert_eq!(snowflake(&d["guild_id"]), 700);
        assert_eq!(d["content"], format!("<@{}> hi there", fake.bot_user_id()));
        assert_eq!(snowflake(&d["mentions"][0]["id"]), fake.bot_user_id());
        assert!(d["mentions"][0]["member"]["roles"].is_array());
        assert!(d["member"]["roles"].is_array());

        let quiet = fake.push_guild_message(700, 701, 600, "no mention", false);
        let d = message_d(&gw.json().await, 5);
        assert_eq!(snowflake(&d["id"]), quiet);
        assert_eq!(d["mentions"], json!([]));

        // A reply to the bot's echoed message pings the bot.
        let resp = post(&fake, 701, json!({"content": "bot says"})).await;
        assert_eq!(resp.status(), 200);
        let sent: Value = resp.json().await.expect("message JSON");
        check_message(&sent);
        let echo = message_d(&gw.json().await, 6);
        assert_eq!(echo["id"], sent["id"]);
        assert_eq!(snowflake(&echo["author"]["id"]), fake.bot_user_id());
        assert_eq!(echo["author"]["bot"], true);
        assert_eq!(snowflake(&echo["guild_id"]), 700);

        let bot_msg = snowflake(&sent["id"]);
        let reply = fake.push_reply(701, 600, "answering you", bot_msg);
        let d = message_d(&gw.json().await, 7);
        assert_eq!(snowflake(&d["id"]), reply);
        assert_eq!(d["type"], 19);
        assert_eq!(snowflake(&d["message_reference"]["message_id"]), bot_msg);
        assert_eq!(snowflake(&d["message_reference"]["guild_id"]), 700);
        assert_eq!(d["referenced_message"]["id"], sent["id"]);
        assert_eq!(snowflake(&d["mentions"][0]["id"]), fake.bot_user_id());

        let other = fake.push_from_bot(701, 900, "beep");
        let d = message_d(&gw.json().await, 8);
        assert_eq!(snowflake(&d["id"]), other);
        assert_eq!(d["author"]["bot"], true);
        assert_eq!(snowflake(&d["guild_id"]), 700);

        let with_file = fake.push_message(Incoming {
            channel_id: 500,
            author_id: 600,
            content: "see file".into(),
            attachments: vec![IncomingAttachment {
                filename: "cat.png".into(),
                content_type: Some("image/png".into()),
                size: 1234,
            }],
            ..Incoming::default()
        });
        let d = message_d(&gw.json().await, 9);
        assert_eq!(snowflake(&d["id"]), with_file);
        assert_eq!(d["attachments"][0]["content_type"], "image/png");
        assert_eq!(d["attachments"][0]["size"], 1234);
    }

    #[tokio::test]
    async fn drop_and_resume_replays_missed_dispatches() {
        let fake = FakeDiscord::start(TOKEN).await;
        let (mut gw, _) = Gw::connect(&fake).await;
        let ready = gw.identify(ALL).await;
        let session_id = ready["session_id"].as_str().expect("session_id").to_owned();
        let first = fake.push_dm(10, 20, "first");
        assert_eq!(snowflake(&message_d(&gw.json().await, 2)["id"]), first);

        assert!(fake.drop_connection());
        assert!(!fake.is_live());
        let missed = fake.push_dm(10, 20, "while away");
        assert_eq!(gw.closed().await, None, "dropped without a close frame");

        // serenity resumes right after connecting, before reading Hello.
        let (mut gw, _) = Gw::connect(&fake).await;
        gw.send_resume(&session_id, 2).await;
        let d = message_d(&gw.json().await, 3);
        assert_eq!(snowflake(&d["id"]), missed);
        let resumed = gw.json().await;
        assert_eq!(resumed["t"], "RESUMED", "{resumed}");
        assert_eq!(resumed["s"], 4, "{resumed}");
        fake.wait_resume_count(1, WAIT).await.expect("resumed");
        fake.wait_live(WAIT).await.expect("live");
        assert_eq!(fake.identify_count(), 1);

        // New dispatches continue the sequence.
        let after = fake.push_dm(10, 20, "after");
        assert_eq!(snowflake(&message_d(&gw.json().await, 5)["id"]), after);

        // Resuming from an older seq replays everything after it.
        assert!(fake.close_connection(4000, "Unknown error."));
        assert_eq!(gw.closed().await, Some(4000));
        let (mut gw, _) = Gw::connect(&fake).await;
        gw.send_resume(&session_id, 1).await;
        for (seq, id) in [(2, first), (3, missed), (5, after)] {
            assert_eq!(snowflake(&message_d(&gw.json().await, seq)["id"]), id);
        }
        let resumed = gw.json().await;
        assert_eq!(
            (resumed["t"].clone(), resumed["s"].clone()),
            (json!("RESUMED"), json!(6))
        );

        // An unknown session is answered with Invalid Session (op 9, false).
        let (mut other, _) = Gw::connect(&fake).await;
        other.send_resume("not-a-session", 1).await;
        let invalid = other.json().await;
        assert_eq!(
            (invalid["op"].clone(), invalid["d"].clone()),
            (json!(9), json!(false))
        );
        assert_eq!(fake.failed_resume_count(), 1);
    }

    #[tokio::test]
    async fn reconnect_and_invalid_session() {
        let fake = FakeDiscord::start(TOKEN).await;
        let (mut gw, _) = Gw::connect(&fake).await;
        let ready = gw.identify(ALL).await;
        let session_id = ready["session_id"].as_str().expect("session_id").to_owned();

        assert!(fake.send_reconnect());
        let op7 = gw.json().await;
        assert_eq!(op7["op"], 7, "{op7}");
        let held = fake.push_dm(10, 20, "held until resume");
        let (mut gw2, _) = Gw::connect(&fake).await;
        drop(gw);
        gw2.send_resume(&session_id, 1).await;
        assert_eq!(snowflake(&message_d(&gw2.json().await, 2)["id"]), held);
        assert_eq!(gw2.json().await["t"], "RESUMED");

        assert!(fake.invalidate_session());
        let op9 = gw2.json().await;
        assert_eq!(
            (op9["op"].clone(), op9["d"].clone()),
            (json!(9), json!(false))
        );
        assert_eq!(fake.session_id(), None);
        let queued = fake.push_dm(10, 20, "queued without a session");

        // The old session cannot be resumed; a fresh Identify gets READY and
        // then the queued message.
        let (mut gw3, _) = Gw::connect(&fake).await;
        drop(gw2);
        gw3.send_resume(&session_id, 3).await;
        assert_eq!(gw3.json().await["op"], 9);
        let ready2 = gw3.identify(ALL).await;
        assert_ne!(ready2["session_id"], ready["session_id"]);
        assert_eq!(snowflake(&message_d(&gw3.json().await, 2)["id"]), queued);
        fake.wait_identify_count(2, WAIT)
            .await
            .expect("two identifies");
    }

    #[tokio::test]
    async fn wrong_token_closes_with_4004() {
        let fake = FakeDiscord::start(TOKEN).await;
        let (mut gw, _) = Gw::connect(&fake).await;
        gw.send_identify("wrong", ALL).await;
        assert_eq!(gw.closed().await, Some(4004));
        assert_eq!(fake.identify_count(), 0);
        assert!(!fake.identifies()[0].accepted);

        // A revoked token: REST 401 and 4004 on Identify.
        fake.set_reject_token(true);
        let (mut gw, _) = Gw::connect(&fake).await;
        gw.send_identify(TOKEN, ALL).await;
        assert_eq!(gw.closed().await, Some(4004));
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v10/users/@me", fake.url()))
            .header("Authorization", format!("Bot {TOKEN}"))
            .send()
            .await
            .expect("GET users/@me");
        assert_eq!(resp.status(), 401);

        fake.set_reject_token(false);
        fake.set_disallowed_intents(intents::MESSAGE_CONTENT);
        let (mut gw, _) = Gw::connect(&fake).await;
        gw.send_identify(TOKEN, ALL).await;
        assert_eq!(gw.closed().await, Some(4014));
        fake.set_disallowed_intents(0);
        let (mut gw, _) = Gw::connect(&fake).await;
        gw.identify(ALL).await;
        // A second Identify on the same connection.
        gw.send_identify(TOKEN, ALL).await;
        assert_eq!(gw.closed().await, Some(4005));
    }

    #[tokio::test]
    async fn intents_filter_and_strip_content() {
        let fake = FakeDiscord::start(TOKEN).await;
        let (mut gw, _) = Gw::connect(&fake).await;
        gw.identify(intents::GUILD_MESSAGES | intents::DIRECT_MESSAGES)
            .await;
        fake.push_guild_message(1, 2, 3, "secret", false);
        assert_eq!(message_d(&gw.json().await, 2)["content"], "");
        fake.push_guild_message(1, 2, 3, "for you", true);
        assert_eq!(
            message_d(&gw.json().await, 3)["content"],
            format!("<@{}> for you", fake.bot_user_id())
        );
        fake.push_dm(4, 3, "dm text");
        assert_eq!(message_d(&gw.json().await, 4)["content"], "dm text");

        let (mut gw, _) = Gw::connect(&fake).await;
        gw.identify(intents::GUILD_MESSAGES).await;
        fake.push_dm(4, 3, "withheld");
        let shown = fake.push_guild_message(1, 2, 3, "shown", true);
        assert_eq!(snowflake(&message_d(&gw.json().await, 2)["id"]), shown);
        assert_eq!(fake.withheld_count(), 1);
    }

    #[tokio::test]
    async fn post_messages_records_validates_and_replies() {
        let fake = FakeDiscord::start(TOKEN).await;
        let asked = fake.push_dm(55, 66, "question");

        let resp = post(
            &fake,
            55,
            json!({
                "content": "answer",
                "tts": false,
                "embeds": [],
                "sticker_ids": [],
                "attachments": [],
                "enforce_nonce": false,
                "message_reference": {"type": 0, "message_id": asked.to_string(),
                                      "channel_id": "55", "guild_id": null,
                                      "fail_if_not_exists": null},
            }),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert!(
            header(&resp, "x-ratelimit-remaining")
                .parse::<i64>()
                .expect("remaining")
                > 0
        );
        let msg: Value = resp.json().await.expect("message JSON");
        check_message(&msg);
        assert_eq!(msg["content"], "answer");
        assert_eq!(msg["type"], 19);
        assert_eq!(snowflake(&msg["author"]["id"]), fake.bot_user_id());
        assert_eq!(snowflake(&msg["referenced_message"]["id"]), asked);
        assert_eq!(
            snowflake(&msg["mentions"][0]["id"]),
            66,
            "reply pings by default"
        );

        let sent = fake
            .wait_sent(|s| s.len() == 1, WAIT)
            .await
            .expect("one sent");
        assert_eq!(sent[0].channel_id, 55);
        assert_eq!(sent[0].content, "answer");
        assert_eq!(sent[0].reference_message_id, Some(asked));
        assert_eq!(sent[0].status_returned, 200);
        assert_eq!(sent[0].message_id, Some(snowflake(&msg["id"])));

        let unknown = post(
            &fake,
            55,
            json!({"content": "x", "message_reference": {"message_id": "12345"}}),
        )
        .await;
        assert_eq!(unknown.status(), 400);
        let body: Value = unknown.json().await.expect("error JSON");
        assert_eq!(body["code"], 50035);
        assert_eq!(
            body["errors"]["message_reference"]["_errors"][0]["code"],
            "REPLIES_UNKNOWN_MESSAGE"
        );
        let lenient = post(
            &fake,
            55,
            json!({"content": "y", "message_reference": {"message_id": 12345, "fail_if_not_exists": false}}),
        )
        .await;
        assert_eq!(lenient.status(), 200);
        let lenient: Value = lenient.json().await.expect("message JSON");
        assert_eq!(lenient["type"], 0);
        assert!(lenient.get("message_reference").is_none());

        let empty = post(&fake, 55, json!({"content": "", "embeds": []})).await;
        assert_eq!(empty.status(), 400);
        assert_eq!(empty.json::<Value>().await.expect("JSON")["code"], 50006);
        let long = post(&fake, 55, json!({"content": "é".repeat(2001)})).await;
        assert_eq!(long.status(), 400);
        assert_eq!(long.json::<Value>().await.expect("JSON")["code"], 50035);
        let exact = post(&fake, 55, json!({"content": "é".repeat(2000)})).await;
        assert_eq!(exact.status(), 200);
        let garbage = reqwest::Client::new()
            .post(format!("{}/api/v10/channels/55/messages", fake.url()))
            .header("Authorization", format!("Bot {TOKEN}"))
            .body("{not json")
            .send()
            .await
            .expect("POST");
        assert_eq!(garbage.status(), 400);
        let unauth = reqwest::Client::new()
            .post(format!("{}/api/v10/channels/55/messages", fake.url()))
            .json(&json!({"content": "x"}))
            .send()
            .await
            .expect("POST");
        assert_eq!(unauth.status(), 401);

        let all = fake.sent();
        let statuses: Vec<u16> = all.iter().map(|s| s.status_returned).collect();
        assert_eq!(statuses, [200, 400, 200, 400, 400, 200, 400]);
        assert_eq!(all[6].raw, json!("{not json"));
        assert_eq!(fake.rest_calls("/api/v10/channels/55/messages"), 8);

        let err = fake
            .wait_sent(|s| s.len() > 10, Duration::from_millis(50))
            .await
            .expect_err("times out");
        let text = format!("{err}");
        assert!(
            text.contains("3 succeeded (2xx) out of 7 received"),
            "{text}"
        );
        assert!(text.contains("[400] channel=55"), "{text}");
    }

    #[tokio::test]
    async fn rest_faults_rate_limit_and_modes() {
        let fake = FakeDiscord::start(TOKEN).await;
        fake.push_fault(DcFault::RateLimited {
            retry_after: 1.5,
            global: false,
        });
        fake.push_fault(DcFault::RateLimited {
            retry_after: 0.25,
            global: true,
        });
        fake.push_fault(DcFault::Status(503));
        fake.push_fault(DcFault::Unauthorized);
        fake.push_fault(DcFault::Drop);
        fake.push_fault(DcFault::Delay(Duration::from_millis(50)));
        assert_eq!(fake.pending_faults(), 6);

        let limited = post(&fake, 9, json!({"content": "a"})).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(header(&limited, "retry-after"), "2");
        assert_eq!(header(&limited, "x-ratelimit-limit"), "5");
        assert_eq!(header(&limited, "x-ratelimit-remaining"), "0");
        assert_eq!(header(&limited, "x-ratelimit-reset-after"), "1.500");
        assert!(
            header(&limited, "x-ratelimit-reset")
                .parse::<f64>()
                .expect("reset")
                > 1e9
        );
        assert_eq!(header(&limited, "x-ratelimit-bucket").len(), 32);
        assert_eq!(header(&limited, "x-ratelimit-scope"), "user");
        assert!(limited.headers().get("x-ratelimit-global").is_none());
        let body: Value = limited.json().await.expect("429 JSON");
        assert_eq!(
            body,
            json!({"message": "You are being rate limited.", "retry_after": 1.5, "global": false})
        );

        let global = post(&fake, 9, json!({"content": "b"})).await;
        assert_eq!(global.status(), 429);
        assert_eq!(header(&global, "retry-after"), "1");
        assert_eq!(header(&global, "x-ratelimit-global"), "true");
        assert_eq!(header(&global, "x-ratelimit-scope"), "global");
        assert_eq!(global.json::<Value>().await.expect("JSON")["global"], true);

        let unavailable = post(&fake, 9, json!({"content": "c"})).await;
        assert_eq!(unavailable.status(), 503);
        assert_eq!(
            unavailable.json::<Value>().await.expect("JSON"),
            json!({"message": "503: Service Unavailable", "code": 0})
        );
        let unauthorized = post(&fake, 9, json!({"content": "d"})).await;
        assert_eq!(unauthorized.status(), 401);
        assert_eq!(
            unauthorized.json::<Value>().await.expect("JSON"),
            json!({"message": "401: Unauthorized", "code": 0})
        );
        let dropped = reqwest::Client::new()
            .post(format!("{}/api/v10/channels/9/messages", fake.url()))
            .header("Authorization", format!("Bot {TOKEN}"))
            .json(&json!({"content": "e"}))
            .send()
            .await;
        assert!(dropped.is_err(), "dropped connection: {dropped:?}");
        let delayed = post(&fake, 9, json!({"content": "f"})).await;
        assert_eq!(delayed.status(), 200);
        let ok = post(&fake, 9, json!({"content": "g"})).await;
        assert_eq!(ok.status(), 200);

        fake.set_mode(Some(DcFault::Status(403)));
        for _ in 0..2 {
            let resp = post(&fake, 9, json!({"content": "h"})).await;
            assert_eq!(resp.status(), 403);
            assert_eq!(resp.json::<Value>().await.expect("JSON")["code"], 50013);
        }
        fake.set_mode(None);

        let statuses: Vec<u16> = fake.sent().iter().map(|s| s.status_returned).collect();
        assert_eq!(statuses, [429, 429, 503, 401, 0, 200, 200, 403, 403]);
        let ok = fake
            .wait_sent(|s| s.len() == 2, WAIT)
            .await
            .expect("two successes");
        assert_eq!(ok[0].content, "f");
        assert_eq!(ok[1].content, "g");
        assert_eq!(fake.pending_faults(), 0);
    }
}
