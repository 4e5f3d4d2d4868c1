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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

use crate::support::{ConnHandle, Server, ShutdownSignal, lock, shutdown_channel, wait_notified};

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

    /// Shuts the live gateway socket down abruptly (no close frame), keeping
    /// the session resumable: the client must RESUME, and dispatches pushed
    /// meanwhile are replayed. Targets the newest open connection if no
    /// session is live. Returns false if there was no connection.
    pub fn drop_connection(&self) -> bool {
        let mut st = lock(&self.shared.state);
        let target = take_target(&mut st);
        let sent = match target.and_then(|id| st.conns.iter().find(|c| c.id == id)) {
            Some(entry) => {
                entry.handle.kill();
                entry.control.send(Control::Drop).is_ok()
            }
            None => false,
        };
        drop(st);
        self.shared.wake();
        sent
    }

    /// Sends Reconnect (op 7) on the live connection (serenity then opens a
    /// new connection and RESUMEs); dispatches are held from now on until
    /// that happens. Returns false if there was no connection.
    pub fn send_reconnect(&self) -> bool {
        self.control(Control::Reconnect)
    }

    /// Ends the session (it can no longer be resumed) and sends Invalid
    /// Session (op 9, `d: false`) on the live connection; the client must
    /// Identify again. Dispatches not yet written to a socket are delivered
    /// after the next READY. Returns false if there was no connection (the
    /// session is ended anyway).
    pub fn invalidate_session(&self) -> bool {
        let mut st = lock(&self.shared.state);
        if let Some(old) = st.session.take() {
            let mut carried = undelivered(old);
            carried.extend(st.pending.drain(..));
            st.pending = carried;
        }
        drop(st);
        self.control(Control::Invalidate)
    }

    /// Closes the live connection with a close frame `code` (e.g. 4000 to
    /// make the client resume, 4009 session timeout, 4004 authentication
    /// failed). Returns false if there was no connection.
    pub fn close_connection(&self, code: u16, reason: &str) -> bool {
        self.control(Control::Close(code, reason.to_owned()))
    }

    fn control(&self, control: Control) -> bool {
        let mut st = lock(&self.shared.state);
        let target = take_target(&mut st);
        let sent = match target.and_then(|id| st.conns.iter().find(|c| c.id == id)) {
            Some(entry) => entry.control.send(control).is_ok(),
            None => false,
        };
        drop(st);
        self.shared.wake();
        sent
    }

    /// When true, even the right token is rejected: REST answers 401 (except
    /// the unauthenticated `GET /api/v10/gateway`) and Identify/Resume get
    /// close code 4004.
    pub fn set_reject_token(&self, reject: bool) {
        lock(&self.shared.state).reject_token = reject;
    }

    /// Heartbeat interval announced in the next Hello frames (default 1 s).
    pub fn set_heartbeat_interval(&self, interval: Duration) {
        lock(&self.shared.state).heartbeat_interval = interval;
    }

    /// Whether heartbeats are acknowledged (op 11); default true. Without
    /// acks serenity declares the connection zombied after one interval and
    /// restarts the shard (a fresh Identify).
    pub fn set_heartbeat_ack(&self, ack: bool) {
        lock(&self.shared.state).ack_heartbeats = ack;
    }

    /// Identifies asking for any of these intent bits are closed with 4014
    /// (Disallowed intents), e.g. [`intents::MESSAGE_CONTENT`] for a bot
    /// whose privileged intent is not enabled. Default 0.
    pub fn set_disallowed_intents(&self, mask: u64) {
        lock(&self.shared.state).disallowed_intents = mask;
    }

    /// Whether messages the bot posts are echoed back as `MESSAGE_CREATE`
    /// dispatches (author = the bot), as real Discord does. Default true.
    pub fn set_echo_sent(&self, echo: bool) {
        lock(&self.shared.state).echo_sent = echo;
    }

    /// Whether a `message_reference` to a message the fake does not know is
    /// rejected (400, code 50035 `REPLIES_UNKNOWN_MESSAGE`) unless
    /// `fail_if_not_exists` is false, as real Discord does. Default true.
    pub fn set_strict_references(&self, strict: bool) {
        lock(&self.shared.state).strict_references = strict;
    }

    // ----- feeding messages ----------------------------------------------

    /// A direct message from `author_id` in DM channel `channel_id`; returns
    /// its message id.
    pub fn push_dm(&self, channel_id: u64, author_id: u64, content: &str) -> u64 {
        self.push_message(Incoming {
            channel_id,
            author_id,
            content: content.to_owned(),
            ..Incoming::default()
        })
    }

    /// A guild message; with `mentions_bot` the content starts with
    /// `<@BOT_ID> ` and `mentions` includes the bot user.
    pub fn push_guild_message(
        &self,
        guild_id: u64,
        channel_id: u64,
        author_id: u64,
        content: &str,
        mentions_bot: bool,
    ) -> u64 {
        self.push_message(Incoming {
            channel_id,
            guild_id: Some(guild_id),
            author_id,
            content: content.to_owned(),
            mention_bot: mentions_bot,
            ..Incoming::default()
        })
    }

    /// A reply to `reply_to` in `channel_id` (a guild channel if a guild
    /// message was pushed or echoed there before, else a DM channel). A reply
    /// to the bot's message pings (mentions) the bot, as Discord clients do
    /// by default.
    pub fn push_reply(&self, channel_id: u64, author_id: u64, content: &str, reply_to: u64) -> u64 {
        let guild_id = self.channel_guild(channel_id);
        self.push_message(Incoming {
            channel_id,
            guild_id,
            author_id,
            content: content.to_owned(),
            reply_to: Some(reply_to),
            ..Incoming::default()
        })
    }

    /// A message from another bot (`author.bot = true`) in `channel_id`
    /// (guild inferred as for [`push_reply`](Self::push_reply)).
    pub fn push_from_bot(&self, channel_id: u64, author_id: u64, content: &str) -> u64 {
        let guild_id = self.channel_guild(channel_id);
        self.push_message(Incoming {
            channel_id,
            guild_id,
            author_id,
            author_bot: true,
            content: content.to_owned(),
            ..Incoming::default()
        })
    }

    fn channel_guild(&self, channel_id: u64) -> Option<u64> {
        let st = lock(&self.shared.state);
        st.channel_guilds.get(&channel_id).copied().flatten()
    }

    /// Dispatches `MESSAGE_CREATE` for `msg` (queued if no session is live)
    /// and returns its message id.
    ///
    /// # Panics
    /// If `channel_id`, `author_id`, `guild_id` or `reply_to` is zero.
    pub fn push_message(&self, msg: Incoming) -> u64 {
        assert!(
            msg.channel_id != 0
                && msg.author_id != 0
                && msg.guild_id != Some(0)
                && msg.reply_to != Some(0),
            "FakeDiscord: ids must be nonzero snowflakes (serenity drops the event otherwise)"
        );
        let mut st = lock(&self.shared.state);
        let id = next_snowflake(&mut st);
        st.channel_guilds.insert(msg.channel_id, msg.guild_id);
        let is_own = msg.author_id == BOT_USER_ID;
        let author = if is_own {
            bot_author_json()
        } else {
            let name = msg
                .author_name
                .clone()
                .unwrap_or_else(|| format!("user{}", msg.author_id));
            user_json(msg.author_id, &name, msg.author_bot)
        };
        let content = match (msg.mention_bot, msg.content.is_empty()) {
            (false, _) => msg.content.clone(),
            (true, true) => format!("<@{BOT_USER_ID}>"),
            (true, false) => format!("<@{BOT_USER_ID}> {}", msg.content),
        };
        let mut mentioned: Vec<Value> = Vec::new();
        if msg.mention_bot {
            mentioned.push(bot_author_json());
        }
        let referenced = msg
            .reply_to
            .and_then(|r| st.messages.get(&r))
            .map(|m| (m.core.clone(), m.author_id, m.author.clone()));
        if let Some((_, ref_author_id, ref_author)) = &referenced {
            let already = mentioned
                .iter()
                .any(|u| u.get("id") == Some(&json!(ref_author_id.to_string())));
            if *ref_author_id != msg.author_id && !already {
                mentioned.push(ref_author.clone());
            }
        }
        let mentions_bot = mentioned
            .iter()
            .any(|u| u.get("id") == Some(&json!(BOT_USER_ID.to_string())));
        let attachments: Vec<Value> = msg
            .attachments
            .iter()
            .map(|a| {
                let att_id = next_snowflake(&mut st);
                attachment_json(msg.channel_id, att_id, a)
            })
            .collect();
        let timestamp = iso8601(SystemTime::now());
        let core = message_core(&MessageParts {
            id,
            channel_id: msg.channel_id,
            guild_id: msg.guild_id,
            author: author.clone(),
            content,
            timestamp: timestamp.clone(),
            mentions: &mentioned,
            attachments,
            reply_to: msg.reply_to,
        });
        let d = gateway_message(
            &core,
            msg.guild_id,
            &mentioned,
            &timestamp,
            msg.reply_to
                .map(|_| referenced.as_ref().map(|(c, _, _)| c.clone())),
        );
        st.messages.insert(
            id,
            StoredMessage {
                core,
                author_id: msg.author_id,
                author,
            },
        );
        let event = PendingEvent {
            t: "MESSAGE_CREATE",
            d,
            message_id: Some(id),
            guild: msg.guild_id.is_some(),
            content_exempt: msg.guild_id.is_none() || mentions_bot || is_own,
        };
        enqueue(&mut st, event);
        drop(st);
        self.shared.wake();
        id
    }

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

/// Events of a finished session that were never written to a socket.
fn undelivered(old: Session) -> VecDeque<PendingEvent> {
    let upto = old.delivered_upto;
    old.log
        .into_iter()
        .filter(|d| d.seq > upto)
        .map(|d| d.event)
        .collect()
}

/// Puts `event` into the session (assigning its sequence number) or, without
/// a session, into the queue delivered after the next READY.
fn enqueue(st: &mut Recorded, event: PendingEvent) {
    let Recorded {
        session,
        pending,
        withheld,
        ..
    } = st;
    match session {
        Some(s) => admit(s, event, withheld),
        None => pending.push_back(event),
    }
}

/// Applies the session's intents to `event` and appends it to the log.
fn admit(session: &mut Session, event: PendingEvent, withheld: &mut usize) {
    let needed = if event.guild {
        intents::GUILD_MESSAGES
    } else {
        intents::DIRECT_MESSAGES
    };
    if event.t == "MESSAGE_CREATE" && session.intents & needed == 0 {
        *withheld += 1;
        return;
    }
    let mut d = event.d.clone();
    let strip = event.t == "MESSAGE_CREATE"
        && session.intents & intents::MESSAGE_CONTENT == 0
        && !event.content_exempt;
    if strip && let Some(obj) = d.as_object_mut() {
        obj.insert("content".into(), json!(""));
        obj.insert("embeds".into(), json!([]));
        obj.insert("attachments".into(), json!([]));
        obj.insert("components".into(), json!([]));
        obj.remove("poll");
    }
    session.seq += 1;
    session.log.push(Dispatch {
        seq: session.seq,
        event,
        d,
    });
}

fn next_snowflake(st: &mut Recorded) -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    // Worker 1, process 0; the increment bits absorb same-millisecond ids.
    let candidate = (ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | (1 << 17);
    let id = candidate.max(st.last_snowflake.saturating_add(1));
    st.last_snowflake = id;
    id
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, the format of Discord timestamps
/// (RFC 3339, which serenity's `Timestamp` parses).
fn iso8601(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ----- JSON shapes ---------------------------------------------------------

/// The bot user as `GET /users/@me` and READY's `user` carry it.
fn bot_user_json() -> Value {
    json!({
        "id": BOT_USER_ID.to_string(),
        "username": BOT_USERNAME,
        "global_name": null,
        "discriminator": BOT_DISCRIMINATOR,
        "avatar": null,
        "bot": true,
        "verified": true,
        "mfa_enabled": false,
        "email": null,
        "flags": 0,
        "public_flags": 0,
        "premium_type": 0,
        "locale": "en-US",
        "banner": null,
        "accent_color": null,
        "avatar_decoration_data": null,
        "bio": "",
    })
}

/// The bot user as a message author or mention.
fn bot_author_json() -> Value {
    let mut u = user_json(BOT_USER_ID, BOT_USERNAME, true);
    if let Some(obj) = u.as_object_mut() {
        obj.insert("discriminator".into(), json!(BOT_DISCRIMINATOR));
        obj.insert("global_name".into(), Value::Null);
    }
    u
}

/// A user as a message author or mention (new-style username: discriminator
/// `"0"`).
fn user_json(id: u64, name: &str, bot: bool) -> Value {
    json!({
        "id": id.to_string(),
        "username": name,
        "discriminator": "0",
        "global_name": if bot { Value::Null } else { json!(name) },
        "avatar": null,
        "public_flags": 0,
        "flags": 0,
        "bot": bot,
        "banner": null,
        "accent_color": null,
        "avatar_decoration_data": null,
        "primary_guild": null,
    })
}

/// A partial guild member (as in MESSAGE_CREATE `member` and `mentions[].member`).
fn member_json(joined_at: &str) -> Value {
    json!({
        "roles": [],
        "joined_at": joined_at,
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "nick": null,
        "avatar": null,
        "banner": null,
        "communication_disabled_until": null,
    })
}

fn attachment_json(channel_id: u64, id: u64, a: &IncomingAttachment) -> Value {
    let url = format!(
        "https://cdn.discordapp.com/attachments/{channel_id}/{id}/{}",
        a.filename
    );
    let proxy = format!(
        "https://media.discordapp.net/attachments/{channel_id}/{id}/{}",
        a.filename
    );
    let mut v = json!({
        "id": id.to_string(),
        "filename": a.filename,
        "size": a.size,
        "url": url,
        "proxy_url": proxy,
    });
    if let (Some(ct), Some(obj)) = (&a.content_type, v.as_object_mut()) {
        obj.insert("content_type".into(), json!(ct));
    }
    v
}

struct MessageParts<'a> {
    id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    author: Value,
    content: String,
    timestamp: String,
    mentions: &'a [Value],
    attachments: Vec<Value>,
    reply_to: Option<u64>,
}

/// The message object shared by REST and the gateway: every field
/// serenity's `Message` requires, without `guild_id`, `member` and
/// `referenced_message` (see [`gateway_message`]).
fn message_core(p: &MessageParts<'_>) -> Value {
    let mut v = json!({
        "id": p.id.to_string(),
        "channel_id": p.channel_id.to_string(),
        "author": p.author,
        "content": p.content,
        "timestamp": p.timestamp,
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": p.mentions,
        "mention_roles": [],
        "attachments": p.attachments,
        "embeds": [],
        "pinned": false,
        "type": if p.reply_to.is_some() { 19 } else { 0 },
        "flags": 0,
        "components": [],
    });
    if let (Some(reply_to), Some(obj)) = (p.reply_to, v.as_object_mut()) {
        let mut reference = json!({
            "type": 0,
            "message_id": reply_to.to_string(),
            "channel_id": p.channel_id.to_string(),
        });
        if let (Some(g), Some(r)) = (p.guild_id, reference.as_object_mut()) {
            r.insert("guild_id".into(), json!(g.to_string()));
        }
        obj.insert("message_reference".into(), reference);
    }
    v
}

/// `MESSAGE_CREATE`'s `d`: the core plus `guild_id` and `member` (and
/// `mentions[].member`) for guild messages, and `referenced_message` for
/// replies (`Some(None)`: a reply to an unknown message, sent as `null`).
fn gateway_message(
    core: &Value,
    guild_id: Option<u64>,
    mentions: &[Value],
    timestamp: &str,
    referenced: Option<Option<Value>>,
) -> Value {
    let mut d = core.clone();
    let Some(obj) = d.as_object_mut() else {
        return d;
    };
    if let Some(g) = guild_id {
        obj.insert("guild_id".into(), json!(g.to_string()));
        obj.insert("member".into(), member_json(timestamp));
        let with_members: Vec<Value> = mentions
            .iter()
            .map(|u| {
                let mut u = u.clone();
                if let Some(o) = u.as_object_mut() {
                    o.insert("member".into(), member_json(timestamp));
                }
                u
            })
            .collect();
        obj.insert("mentions".into(), Value::Array(with_members));
    }
    if let Some(referenced) = referenced {
        obj.insert(
            "referenced_message".into(),
            referenced.unwrap_or(Value::Null),
        );
    }
    d
}

fn ready_payload(session_id: &str, ws_url: &str, shard: Option<(u64, u64)>) -> Value {
    let mut d = json!({
        "v": 10,
        "user": bot_user_json(),
        "user_settings": {},
        "guilds": [],
        "guild_join_requests": [],
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": ws_url,
        "application": {"id": BOT_USER_ID.to_string(), "flags": APPLICATION_FLAGS},
        "geo_ordered_rtc_regions": ["fake"],
        "auth": {},
        "_trace": [TRACE],
    });
    if let (Some((id, total)), Some(obj)) = (shard, d.as_object_mut()) {
        obj.insert("shard".into(), json!([id, total]));
    }
    d
}

fn dispatch_frame(t: &str, seq: u64, d: &Value) -> String {
    json!({"t": t, "s": seq, "op": 0, "d": d}).to_string()
}

fn op_frame(op: u64, d: Value) -> String {
    json!({"t": null, "s": null, "op": op, "d": d}).to_string()
}

// ----- gateway ------------------------------------------------------------

async fn gateway_upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let query = uri.query().unwrap_or_default().to_owned();
    ws.on_upgrade(move |socket| gateway_socket(shared, conn, query, socket))
}

/// Per-connection state.
struct Conn {
    id: u64,
    query: String,
    /// Identified or resumed on this connection.
    authed: bool,
    /// Highest sequence number sent on this connection.
    sent_upto: u64,
}

enum Step {
    Shutdown,
    Control(Option<Control>),
    Events,
    Frame(Option<Result<Message, axum::Error>>),
}

async fn gateway_socket(shared: Arc<Shared>, handle: ConnHandle, query: String, socket: WebSocket) {
    let mut socket = socket;
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let (id, interval) = {
        let mut st = lock(&shared.state);
        st.next_conn_id += 1;
        let id = st.next_conn_id;
        st.conns.push(ConnEntry {
            id,
            handle: handle.clone(),
            control: control_tx,
        });
        st.connections_total += 1;
        st.ws_queries.push(query.clone());
        (id, st.heartbeat_interval)
    };
    shared.wake();
    let mut conn = Conn {
        id,
        query,
        authed: false,
        sent_upto: 0,
    };
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let hello = op_frame(
        10,
        json!({"heartbeat_interval": interval_ms, "_trace": [TRACE]}),
    );
    if send_text(&mut socket, hello).await {
        run_socket(&shared, &handle, &mut conn, &mut socket, &mut control_rx).await;
    }
    {
        let mut st = lock(&shared.state);
        st.conns.retain(|c| c.id != id);
        if st.active_conn == Some(id) {
            st.active_conn = None;
        }
    }
    shared.wake();
}

async fn run_socket(
    shared: &Shared,
    handle: &ConnHandle,
    conn: &mut Conn,
    socket: &mut WebSocket,
    control_rx: &mut mpsc::UnboundedReceiver<Control>,
) {
    let mut events = shared.events.subscribe();
    loop {
        // Mark the current version seen before reading the log, so an event
        // pushed after the flush below always wakes the select.
        events.borrow_and_update();
        if !flush(shared, conn, socket).await {
            return;
        }
        let step = tokio::select! {
            biased;
            () = shared.shutdown.wait() => Step::Shutdown,
            control = control_rx.recv() => Step::Control(control),
            frame = socket.recv() => Step::Frame(frame),
            changed = events.changed() => match changed {
                Ok(()) => Step::Events,
                Err(_) => Step::Shutdown,
            },
        };
        match step {
            Step::Shutdown | Step::Control(Some(Control::Drop)) => {
                handle.kill();
                return;
            }
            Step::Control(None) | Step::Frame(None | Some(Err(_))) => return,
            Step::Control(Some(Control::Reconnect)) => {
                if !send_text(socket, op_frame(7, Value::Null)).await {
                    return;
                }
            }
            Step::Control(Some(Control::Invalidate)) => {
                conn.authed = false;
                if !send_text(socket, op_frame(9, json!(false))).await {
                    return;
                }
            }
            Step::Control(Some(Control::Close(code, reason))) => {
                close(socket, code, &reason).await;
                return;
            }
            Step::Events => {}
            Step::Frame(Some(Ok(msg))) => {
                if !handle_frame(shared, conn, socket, msg).await {
                    return;
                }
            }
        }
    }
}

/// Sends the session's dispatches this connection has not sent yet (only on
/// the live connection). False if the socket failed.
async fn flush(shared: &Shared, conn: &mut Conn, socket: &mut WebSocket) -> bool {
    if !conn.authed {
        return true;
    }
    let (session_id, batch) = {
        let st = lock(&shared.state);
        if st.active_conn != Some(conn.id) {
            return true;
        }
        let Some(s) = &st.session else {
            return true;
        };
        let batch: Vec<(u64, String, Option<u64>)> = s
            .log
            .iter()
            .filter(|d| d.seq > conn.sent_upto)
            .map(|d| {
                (
                    d.seq,
                    dispatch_frame(d.event.t, d.seq, &d.d),
                    d.event.message_id,
                )
            })
            .collect();
        (s.id.clone(), batch)
    };
    for (seq, frame, message_id) in batch {
        if !send_text(socket, frame).await {
            return false;
        }
        conn.sent_upto = seq;
        mark_written(shared, &session_id, seq, message_id);
    }
    true
}

fn mark_written(shared: &Shared, session_id: &str, seq: u64, message_id: Option<u64>) {
    {
        let mut st = lock(&shared.state);
        if let Some(s) = st.session.as_mut().filter(|s| s.id == session_id) {
            s.delivered_upto = s.delivered_upto.max(seq);
        }
        if let Some(id) = message_id {
            st.written_ids.insert(id);
        }
    }
    shared.changed.notify_waiters();
}

async fn send_text(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // The peer may already be gone; the connection ends either way.
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Handles one frame from the client; false ends the connection.
async fn handle_frame(
    shared: &Shared,
    conn: &mut Conn,
    socket: &mut WebSocket,
    msg: Message,
) -> bool {
    match msg {
        Message::Text(text) => handle_payload(shared, conn, socket, text.as_str()).await,
        Message::Binary(_) => {
            close(socket, 4002, "Error while decoding payload.").await;
            false
        }
        Message::Close(frame) => {
            if let Some(frame) = frame {
                lock(&shared.state).client_closes.push(frame.code);
                shared.changed.notify_waiters();
            }
            false
        }
        Message::Ping(_) | Message::Pong(_) => true,
    }
}

async fn handle_payload(
    shared: &Shared,
    conn: &mut Conn,
    socket: &mut WebSocket,
    text: &str,
) -> bool {
    let Some((op, d)) = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        let op = v.get("op").and_then(Value::as_u64)?;
        Some((op, v.get("d").cloned().unwrap_or(Value::Null)))
    }) else {
        close(socket, 4002, "Error while decoding payload.").await;
        return false;
    };
    match op {
        1 => {
            let ack = {
                let mut st = lock(&shared.state);
                st.heartbeats += 1;
                st.last_heartbeat_seq = d.as_u64();
                st.ack_heartbeats
            };
            shared.changed.notify_waiters();
            !ack || send_text(socket, op_frame(11, Value::Null)).await
        }
        2 => identify(shared, conn, socket, d).await,
        6 => resume(shared, conn, socket, &d).await,
        // Presence update, voice state, request guild members, soundboard.
        3 | 4 | 8 | 31 if conn.authed => true,
        3 | 4 | 8 | 31 => {
            close(socket, 4003, "Not authenticated.").await;
            false
        }
        _ => {
            close(socket, 4001, "Unknown opcode.").await;
            false
        }
    }
}

fn token_ok(st: &Recorded, token: &str) -> bool {
    !st.reject_token && token.strip_prefix("Bot ").unwrap_or(token) == st.token
}

async fn identify(shared: &Shared, conn: &mut Conn, socket: &mut WebSocket, d: Value) -> bool {
    if conn.authed {
        close(socket, 4005, "Already authenticated.").await;
        return false;
    }
    let shard = d.get("shard").and_then(Value::as_array).and_then(|a| {
        let id = a.first()?.as_u64()?;
        let total = a.get(1)?.as_u64()?;
        Some((id, total))
    });
    let mut info = IdentifyInfo {
        token: d
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        intents: d.get("intents").and_then(Value::as_u64).unwrap_or(0),
        properties: d.get("properties").cloned().unwrap_or(Value::Null),
        compress: d.get("compress").and_then(Value::as_bool),
        shard,
        accepted: false,
        query: conn.query.clone(),
        raw: d.clone(),
    };
    let has_intents = d.get("intents").and_then(Value::as_u64).is_some();
    let outcome = {
        let mut st = lock(&shared.state);
        let verdict = if !token_ok(&st, &info.token) {
            Err((4004, "Authentication failed."))
        } else if !has_intents {
            Err((4013, "Invalid intent(s)."))
        } else if info.intents & st.disallowed_intents != 0 {
            Err((4014, "Disallowed intent(s)."))
        } else {
            Ok(())
        };
        match verdict {
            Err(e) => {
                st.identifies.push(info);
                Err(e)
            }
            Ok(()) => {
                let mut carried = st.session.take().map(undelivered).unwrap_or_default();
                carried.extend(st.pending.drain(..));
                let mut session = Session {
                    id: format!("{:032x}", rand::random::<u128>()),
                    intents: info.intents,
                    seq: 1,
                    log: Vec::new(),
                    delivered_upto: 1,
                };
                for event in carried {
                    admit(&mut session, event, &mut st.withheld);
                }
                let ready = ready_payload(&session.id, &shared.ws_url(), info.shard);
                st.session = Some(session);
                st.active_conn = Some(conn.id);
                info.accepted = true;
                st.identifies.push(info);
                Ok(dispatch_frame("READY", 1, &ready))
            }
        }
    };
    shared.wake();
    match outcome {
        Err((code, reason)) => {
            close(socket, code, reason).await;
            false
        }
        Ok(frame) => {
            conn.authed = true;
            conn.sent_upto = 1;
            send_text(socket, frame).await
        }
    }
}

enum ResumeOutcome {
    Close(u16, &'static str),
    Invalid,
    Resumed {
        session_id: String,
        replay: Vec<(u64, String, Option<u64>)>,
        resumed_seq: u64,
    },
}

async fn resume(shared: &Shared, conn: &mut Conn, socket: &mut WebSocket, d: &Value) -> bool {
    if conn.authed {
        close(socket, 4005, "Already authenticated.").await;
        return false;
    }
    let token = d.get("token").and_then(Value::as_str).unwrap_or_default();
    let session_id = d
        .get("session_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(client_seq) = d.get("seq").and_then(Value::as_u64) else {
        close(socket, 4002, "Error while decoding payload.").await;
        return false;
    };
    let outcome = {
        let mut st = lock(&shared.state);
        if !token_ok(&st, token) {
            ResumeOutcome::Close(4004, "Authentication failed.")
        } else {
            let resumed = match st.session.as_mut() {
                Some(s) if s.id == session_id && client_seq > s.seq => {
                    Err(ResumeOutcome::Close(4007, "Invalid seq."))
                }
                Some(s) if s.id == session_id => {
                    let replay = s
                        .log
                        .iter()
                        .filter(|d| d.seq > client_seq)
                        .map(|d| {
                            (
                                d.seq,
                                dispatch_frame(d.event.t, d.seq, &d.d),
                                d.event.message_id,
                            )
                        })
                        .collect();
                    s.seq += 1;
                    Ok(ResumeOutcome::Resumed {
                        session_id: s.id.clone(),
                        replay,
                        resumed_seq: s.seq,
                    })
                }
                _ => Err(ResumeOutcome::Invalid),
            };
            match resumed {
                Ok(r) => {
                    st.active_conn = Some(conn.id);
                    st.resumes += 1;
                    r
                }
                Err(ResumeOutcome::Invalid) => {
                    st.failed_resumes += 1;
                    ResumeOutcome::Invalid
                }
                Err(other) => other,
            }
        }
    };
    shared.wake();
    match outcome {
        ResumeOutcome::Close(code, reason) => {
            close(socket, code, reason).await;
            false
        }
        ResumeOutcome::Invalid => send_text(socket, op_frame(9, json!(false))).await,
        ResumeOutcome::Resumed {
            session_id,
            replay,
            resumed_seq,
        } => {
            conn.authed = true;
            for (seq, frame, message_id) in replay {
                if !send_text(socket, frame).await {
                    return false;
                }
                mark_written(shared, &session_id, seq, message_id);
            }
            conn.sent_upto = resumed_seq;
            send_text(
                socket,
                dispatch_frame("RESUMED", resumed_seq, &json!({"_trace": [TRACE]})),
            )
            .await
        }
    }
}

// ----- REST ---------------------------------------------------------------

enum RestRoute {
    Gateway,
    GatewayBot,
    UsersMe,
    Messages(u64),
    Typing(u64),
    NotFound,
}

fn route(method: &Method, path: &str) -> RestRoute {
    let Some(api) = path.strip_prefix("/api/v10/") else {
        return RestRoute::NotFound;
    };
    let segments: Vec<&str> = api.split('/').collect();
    let snowflake = |s: &str| s.parse::<u64>().ok().filter(|n| *n != 0);
    match (method, segments.as_slice()) {
        (&Method::GET, ["gateway"]) => RestRoute::Gateway,
        (&Method::GET, ["gateway", "bot"]) => RestRoute::GatewayBot,
        (&Method::GET, ["users", "@me"]) => RestRoute::UsersMe,
        (&Method::POST, ["channels", id, "messages"]) => {
            snowflake(id).map_or(RestRoute::NotFound, RestRoute::Messages)
        }
        (&Method::POST, ["channels", id, "typing"]) => {
            snowflake(id).map_or(RestRoute::NotFound, RestRoute::Typing)
        }
        _ => RestRoute::NotFound,
    }
}

async fn rest(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let path = uri.path().to_owned();
    let index = {
        let mut st = lock(&shared.state);
        st.rest.push(RestCall {
            method: method.to_string(),
            path: path.clone(),
            authorization: authorization.clone(),
            status: 0,
            at: Instant::now(),
        });
        st.rest.len() - 1
    };
    shared.changed.notify_waiters();
    let (status, response) = handle_rest(
        &shared,
        &conn,
        &method,
        &path,
        authorization.as_deref(),
        &body,
    )
    .await;
    if let Some(status) = status {
        if let Some(call) = lock(&shared.state).rest.get_mut(index) {
            call.status = status;
        }
        shared.changed.notify_waiters();
    }
    response
}

/// Answers one REST request; the status is `None` when the connection was
/// dropped instead.
async fn handle_rest(
    shared: &Shared,
    conn: &ConnHandle,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> (Option<u16>, Response) {
    let route = route(method, path);
    if matches!(route, RestRoute::NotFound) {
        return answer(discord_error(404, "404: Not Found", 0));
    }
    // `GET /gateway` needs no authentication on real Discord either.
    if !matches!(route, RestRoute::Gateway) {
        let st = lock(&shared.state);
        let ok = !st.reject_token && authorization == Some(format!("Bot {}", st.token).as_str());
        drop(st);
        if !ok {
            return answer(discord_error(401, "401: Unauthorized", 0));
        }
    }
    match route {
        RestRoute::Gateway => answer(ok_json(
            StatusCode::OK,
            &json!({"url": shared.ws_url()}),
            "gateway",
        )),
        RestRoute::GatewayBot => answer(ok_json(
            StatusCode::OK,
            &json!({
                "url": shared.ws_url(),
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }),
            "gateway/bot",
        )),
        RestRoute::UsersMe => answer(ok_json(StatusCode::OK, &bot_user_json(), "users/@me")),
        RestRoute::Typing(channel_id) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            rate_limit_headers(resp.headers_mut(), &format!("typing/{channel_id}"));
            answer(resp)
        }
        RestRoute::Messages(channel_id) => post_message(shared, conn, channel_id, body).await,
        RestRoute::NotFound => answer(discord_error(404, "404: Not Found", 0)),
    }
}

fn answer(resp: Response) -> (Option<u16>, Response) {
    (Some(resp.status().as_u16()), resp)
}

fn snowflake_value(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

async fn post_message(
    shared: &Shared,
    conn: &ConnHandle,
    channel_id: u64,
    body: &[u8],
) -> (Option<u16>, Response) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let raw = parsed
        .clone()
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into_owned()));
    let (index, fault) = {
        let mut st = lock(&shared.state);
        let fault = match &st.mode {
            Some(mode) => Some(mode.clone()),
            None => st.faults.pop_front(),
        };
        st.sent.push(SentMessage {
            channel_id,
            content: raw
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            reference_message_id: raw
                .get("message_reference")
                .and_then(|r| r.get("message_id"))
                .and_then(snowflake_value),
            status_returned: 0,
            at: Instant::now(),
            message_id: None,
            raw,
        });
        (st.sent.len() - 1, fault)
    };
    shared.changed.notify_waiters();

    let response = match fault {
        Some(DcFault::Status(code)) => Err(status_error(code)),
        Some(DcFault::RateLimited {
            retry_after,
            global,
        }) => Err(rate_limited(
            retry_after,
            global,
            &format!("messages/{channel_id}"),
        )),
        Some(DcFault::Unauthorized) => Err(discord_error(401, "401: Unauthorized", 0)),
        Some(DcFault::Drop) => {
            conn.kill();
            return (None, StatusCode::SERVICE_UNAVAILABLE.into_response());
        }
        Some(DcFault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        None => Ok(()),
    };
    let response = match (response, parsed) {
        (Err(resp), _) => resp,
        (Ok(()), None) => discord_error(400, "The request body contains invalid JSON.", 50109),
        (Ok(()), Some(body)) => {
            let mut st = lock(&shared.state);
            match create_message(&mut st, channel_id, &body) {
                Ok((message, id)) => {
                    if let Some(sent) = st.sent.get_mut(index) {
                        sent.message_id = Some(id);
                    }
                    ok_json(StatusCode::OK, &message, &format!("messages/{channel_id}"))
                }
                Err(resp) => *resp,
            }
        }
    };
    let status = response.status().as_u16();
    if let Some(sent) = lock(&shared.state).sent.get_mut(index) {
        sent.status_returned = status;
    }
    shared.wake();
    (Some(status), response)
}

/// Validates and stores a message the bot posts; returns the REST message
/// object and its id (and echoes it as a dispatch if enabled).
fn create_message(
    st: &mut Recorded,
    channel_id: u64,
    body: &Value,
) -> Result<(Value, u64), Box<Response>> {
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let non_empty = |k: &str| {
        body.get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if content.is_empty()
        && !non_empty("embeds")
        && !non_empty("sticker_ids")
        && !non_empty("attachments")
        && body.get("poll").is_none_or(Value::is_null)
    {
        return Err(Box::new(discord_error(
            400,
            "Cannot send an empty message",
            50006,
        )));
    }
    if content.chars().count() > CONTENT_LIMIT {
        return Err(Box::new(form_error(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            "Must be 2000 or fewer in length.",
        )));
    }
    let reference = body.get("message_reference").filter(|r| !r.is_null());
    let mut reply_to = reference
        .and_then(|r| r.get("message_id"))
        .and_then(snowflake_value);
    if let Some(r) = reply_to
        && st.strict_references
        && !st.messages.contains_key(&r)
    {
        let fail = reference
            .and_then(|r| r.get("fail_if_not_exists"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if fail {
            return Err(Box::new(form_error(
                "message_reference",
                "REPLIES_UNKNOWN_MESSAGE",
                "Unknown message",
            )));
        }
        reply_to = None;
    }
    let referenced = reply_to.and_then(|r| st.messages.get(&r));
    // A reply pings the replied-to author unless allowed_mentions says not to.
    let ping = match body.get("allowed_mentions").filter(|a| !a.is_null()) {
        None => true,
        Some(a) => a.get("replied_user").and_then(Value::as_bool) == Some(true),
    };
    let mut mentions = Vec::new();
    if let Some(r) = referenced
        && ping
        && r.author_id != BOT_USER_ID
    {
        mentions.push(r.author.clone());
    }
    let referenced = referenced.map(|r| r.core.clone());
    let guild_id = st.channel_guilds.get(&channel_id).copied().flatten();
    let id = next_snowflake(st);
    let timestamp = iso8601(SystemTime::now());
    let core = message_core(&MessageParts {
        id,
        channel_id,
        guild_id,
        author: bot_author_json(),
        content: content.to_owned(),
        timestamp: timestamp.clone(),
        mentions: &mentions,
        attachments: Vec::new(),
        reply_to,
    });
    let mut rest_message = core.clone();
    if let (Some(_), Some(obj)) = (reply_to, rest_message.as_object_mut()) {
        obj.insert(
            "referenced_message".into(),
            referenced.clone().unwrap_or(Value::Null),
        );
    }
    if st.echo_sent {
        let d = gateway_message(
            &core,
            guild_id,
            &mentions,
            &timestamp,
            reply_to.map(|_| referenced),
        );
        enqueue(
            st,
            PendingEvent {
                t: "MESSAGE_CREATE",
                d,
                message_id: Some(id),
                guild: guild_id.is_some(),
                content_exempt: true,
            },
        );
    }
    st.messages.insert(
        id,
        StoredMessage {
            core,
            author_id: BOT_USER_ID,
            author: bot_author_json(),
        },
    );
    Ok((rest_message, id))
}

/// A 400 "Invalid Form Body" (code 50035) naming one field.
fn form_error(field: &str, code: &str, message: &str) -> Response {
    let body = json!({
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": {field: {"_errors": [{"code": code, "message": message}]}},
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn discord_error(status: u16, message: &str, code: u64) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"message": message, "code": code});
    (status, axum::Json(body)).into_response()
}

/// The error body real Discord sends for `status`.
fn status_error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match code.as_u16() {
        403 => discord_error(403, "Missing Permissions", 50013),
        404 => discord_error(404, "Unknown Channel", 10003),
        429 => discord_error(429, "You are being rate limited.", 0),
        n => {
            let reason = code.canonical_reason().unwrap_or("Error");
            discord_error(n, &format!("{n}: {reason}"), 0)
        }
    }
}

fn ok_json(status: StatusCode, body: &Value, bucket_key: &str) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    rate_limit_headers(resp.headers_mut(), bucket_key);
    resp
}

fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A stable, Discord-looking bucket hash for a route.
fn bucket_hash(key: &str) -> String {
    // FNV-1a, twice with different seeds for 32 hex digits.
    let fnv = |seed: u64| {
        key.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

/// Per-route headers of a successful response: a limit so generous that
/// `remaining` never reaches 0 (serenity's rate limiter, if used, only
/// sleeps at 0). serenity parses limit/remaining as i64 and
/// reset/reset-after as f64; an unparsable value fails the request.
fn rate_limit_headers(headers: &mut HeaderMap, bucket_key: &str) {
    insert_header(headers, "x-ratelimit-limit", &RATE_LIMIT.to_string());
    insert_header(
        headers,
        "x-ratelimit-remaining",
        &(RATE_LIMIT - 1).to_string(),
    );
    insert_header(
        headers,
        "x-ratelimit-reset",
        &format!("{:.3}", epoch_secs() + 1.0),
    );
    insert_header(headers, "x-ratelimit-reset-after", "1.000");
    insert_header(headers, "x-ratelimit-bucket", &bucket_hash(bucket_key));
}

/// A 429 as real Discord sends it.
fn rate_limited(retry_after: f64, global: bool, bucket_key: &str) -> Response {
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": global,
    });
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let headers = resp.headers_mut();
    // Whole seconds, rounded up, like Discord's header.
    let whole = format!("{:.0}", retry_after.max(0.0).ceil());
    insert_header(headers, "retry-after", &whole);
    if global {
        insert_header(headers, "x-ratelimit-global", "true");
        insert_header(headers, "x-ratelimit-scope", "global");
    } else {
        insert_header(headers, "x-ratelimit-limit", "5");
        insert_header(headers, "x-ratelimit-remaining", "0");
        insert_header(
            headers,
            "x-ratelimit-reset",
            &format!("{:.3}", epoch_secs() + retry_after),
        );
        insert_header(
            headers,
            "x-ratelimit-reset-after",
            &format!("{retry_after:.3}"),
        );
        insert_header(headers, "x-ratelimit-bucket", &bucket_hash(bucket_key));
        insert_header(headers, "x-ratelimit-scope", "user");
    }
    resp
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

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
