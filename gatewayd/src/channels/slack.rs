//! The Slack channel: the Events API (signed HTTP requests to `events_path`) or Socket Mode (a
//! WebSocket opened with `apps.connections.open`) in, `chat.postMessage` out.
//!
//! Identity: at listener start `auth.test` (bot token) gives the bot's user id and bot id, shared
//! with the webhook handler and the socket; an event arriving before they are known waits a short
//! bounded time for them, else gets 503 so Slack delivers it again. Events of this bot (its
//! `bot_id`, or `user` equal to its user id) are dropped, as are events without a user and the
//! `app_home` tab.
//!
//! Normalization: `channel_type` `im` is a direct chat; `channel`, `group` and `mpim` are group
//! chats (an `app_mention`, which carries no `channel_type`, is told by its channel id: `D…` is a
//! direct chat). A group message is `mentioned` when it mentions the bot (`<@BOTUSER>` in the
//! text, or an `app_mention` event), for the access checks' mention rule
//! (`require_mention_in_groups`, alias `require_mention_in_channels`, on by default); the bot's
//! own mention is removed from the text. `files[]` become `file` attachments (file id,
//! name). **Edits and deletions (`message_changed`, `message_deleted`) are acknowledged and not
//! answered again**, as Telegram edits are: the agent already answered the original.
//!
//! Thread encoding (inside this adapter only; the store has no thread column): a message not in a
//! thread, or a thread's parent, is `channel_message_id = "{channel}:{ts}"`; a message in a thread
//! is `"{channel}:{ts}:{thread_ts}"` with `reply_to = "{channel}:{thread_ts}"`. Delivery hands the
//! inbound `channel_message_id` back as the reply's `reply_to`, and the sender sets `thread_ts` from
//! its third part, so every chunk of a reply goes to the thread the message came from, and a
//! message outside a thread is answered in the channel. Slack ids and timestamps never hold `:`;
//! an event whose channel or ts holds one is dropped.
//!
//! Dedupe: the inbox's `(channel, channel_message_id)` key. Slack's retries (`X-Slack-Retry-Num`),
//! a redelivered envelope, and the `message` and `app_mention` events of one message all give
//! the same key, so each is answered once. A bounded in-memory set of recent `event_id`s
//! ([`RecentIds`]) answers repeats of events that are not messages without work; correctness
//! never depends on it. Every event is acknowledged (a 2xx, or the envelope's ack) only after its
//! commit; a failed commit is not acknowledged, so Slack delivers it again.
//!
//! Modules: `events` (the webhook and its signature), `socket` (Socket Mode), `send` (the sender
//! and its error table), `normalize` (events into inbound messages).

mod events;
mod normalize;
mod send;
mod socket;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;
use tokio::sync::watch;

use super::adapter::{BuildEnv, ChannelAdapter, ListenerCtx, Route, WebhookCtx};
use super::supervise::{Connection, Link, keep_connected, stopped};
use super::webhook::error;
use super::{ChannelSender, SendError};
use crate::config::{
    Config, ConfigError, HumanDuration, MIN, Number, NumericKey, SEC, channel_key, check_secret,
    check_url, millis,
};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::ChannelKind;
use crate::send::{Limit, Unit};

pub use events::{SignatureError, sign, verify};
pub use normalize::{Callback, normalize};
pub use send::{SlackSender, classify_code};

/// The Slack channel.
pub const KIND: ChannelKind = ChannelKind::new("slack");

/// Slack's recommended limit on one message (`text` is truncated past 40,000).
pub const LIMIT: Limit = Limit {
    max: 4000,
    unit: Unit::Chars,
};

/// Largest Events API body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// How long an event waits for the bot's identity (`auth.test`) before it gets 503.
pub const IDENTITY_WAIT: Duration = Duration::from_secs(5);

/// How the Slack channel receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlackMode {
    /// The HTTP Events API: Slack POSTs signed events to `events_path` (needs a public URL).
    Events,
    /// Socket Mode: the gateway opens a WebSocket to Slack (works behind NAT).
    Socket,
}

/// `[channels.slack]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Connect the Slack app.
    pub enabled: bool,
    /// `events` (HTTP Events API) or `socket` (Socket Mode).
    pub mode: SlackMode,
    /// Environment variable holding the bot token (`xoxb-…`).
    pub bot_token_env: Option<String>,
    /// File holding the bot token (alternative to `bot_token_env`).
    pub bot_token_file: Option<PathBuf>,
    /// Events mode: environment variable holding the app's signing secret.
    pub signing_secret_env: Option<String>,
    /// Events mode: file holding the signing secret (alternative to `signing_secret_env`).
    pub signing_secret_file: Option<PathBuf>,
    /// Socket mode: environment variable holding the app-level token (`xapp-…`).
    pub app_token_env: Option<String>,
    /// Socket mode: file holding the app-level token (alternative to `app_token_env`).
    pub app_token_file: Option<PathBuf>,
    /// The Web API root.
    pub api_url: String,
    /// Events mode: the path on the HTTP listener that receives events.
    pub events_path: String,
    /// Socket mode: how often a Ping is sent; a socket silent this long after one is replaced.
    pub ping_interval: HumanDuration,
    /// Timeout of one Web API request.
    pub request_timeout: HumanDuration,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: SlackMode::Events,
            bot_token_env: None,
            bot_token_file: None,
            signing_secret_env: None,
            signing_secret_file: None,
            app_token_env: None,
            app_token_file: None,
            api_url: "https://slack.com/api".to_owned(),
            events_path: DEFAULT_EVENTS_PATH.to_owned(),
            ping_interval: HumanDuration(Duration::from_secs(10)),
            request_timeout: HumanDuration(Duration::from_secs(15)),
        }
    }
}

const DEFAULT_EVENTS_PATH: &str = "/channels/slack/events";

/// The bot as `auth.test` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotIdentity {
    /// The bot user's id (`U…`): mentions are `<@user_id>`.
    pub user_id: String,
    /// The bot's id (`B…`), on the messages it posts.
    pub bot_id: Option<String>,
}

/// The bounded set of recently committed `event_id`s: a fast path for repeats, never the only
/// dedupe.
pub struct RecentIds {
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
    cap: usize,
}

impl RecentIds {
    /// A set that keeps the last `cap` ids.
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
            cap,
        }
    }

    /// Whether `id` was noted.
    pub fn contains(&self, id: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .contains(id)
    }

    /// Notes `id`, forgetting the oldest past the cap.
    pub fn note(&self, id: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *guard;
        if !set.insert(id.to_owned()) {
            return;
        }
        order.push_back(id.to_owned());
        while order.len() > self.cap {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }
}

/// Why an event was not taken.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The bot's identity is not known yet (`auth.test` has not answered).
    NoIdentity,
    /// The inbox could not commit it.
    Store(crate::store::StoreError),
}

/// What both listeners share: the inbox, the bot's identity and the recent event ids.
pub(crate) struct Intake {
    inbox: Arc<Inbox>,
    identity: watch::Receiver<Option<BotIdentity>>,
    recent: RecentIds,
}

impl Intake {
    /// Takes one `event_callback`: normalizes it and commits it. `Ok` means it may be
    /// acknowledged (committed, a duplicate, or not answered).
    pub(crate) async fn take(&self, callback: &Callback) -> Result<(), Refused> {
        if let Some(id) = callback.event_id.as_deref()
            && self.recent.contains(id)
        {
            tracing::debug!(
                message = "Repeated Slack event acknowledged.",
                event_id = id
            );
            return Ok(());
        }
        let mut identity = self.identity.clone();
        let known = tokio::time::timeout(IDENTITY_WAIT, async move {
            identity
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|bot| bot.clone())
        })
        .await;
        let Ok(Some(bot)) = known else {
            return Err(Refused::NoIdentity);
        };
        if let Some(msg) = normalize(callback, &bot) {
            self.inbox.accept(msg).await.map_err(Refused::Store)?;
        }
        if let Some(id) = callback.event_id.as_deref() {
            self.recent.note(id);
        }
        Ok(())
    }
}

/// The Slack adapter: the sender, and the webhook or the socket.
pub struct SlackAdapter {
    mode: SlackMode,
    sender: Arc<SlackSender>,
    signing_secret: Option<String>,
    app_token: Option<String>,
    events_path: String,
    ping_interval: Duration,
    identity: watch::Sender<Option<BotIdentity>>,
    intake: Mutex<Option<Arc<Intake>>>,
}

impl SlackAdapter {
    /// The intake over `inbox`, made once (the webhook and the listener share it).
    fn intake(&self, inbox: &Arc<Inbox>) -> Arc<Intake> {
        let mut slot = self.intake.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert_with(|| {
            Arc::new(Intake {
                inbox: inbox.clone(),
                identity: self.identity.subscribe(),
                recent: RecentIds::new(4096),
            })
        })
        .clone()
    }
}

/// Events mode's connection: `auth.test`, then nothing to hold open until the gateway stops.
struct Identify {
    sender: Arc<SlackSender>,
    identity: watch::Sender<Option<BotIdentity>>,
}

impl Connection for Identify {
    fn failure_message(&self) -> &'static str {
        "Slack auth.test failed."
    }

    async fn connect(&mut self, link: &mut Link) -> Result<(), SendError> {
        let bot = self.sender.auth_test().await?;
        tracing::info!(message = "Slack bot identified.", user_id = %bot.user_id);
        self.identity.send_replace(Some(bot));
        link.connected();
        stopped(&mut link.shutdown).await;
        Ok(())
    }
}

fn secret(key: &str, env: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<String> {
    Config::secret(key, env, file)
        .map_err(|e| anyhow::anyhow!(e))?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{key}_env is required (or {key}_file)"))
}

impl ChannelAdapter for SlackAdapter {
    const KIND: ChannelKind = KIND;
    const MENTIONS: bool = true;
    type Config = SlackConfig;
    const NUMERIC_KEYS: &'static [NumericKey] = &[
        channel_key(
            "channels.slack.ping_interval",
            millis(SEC, 10 * MIN),
            Some(Number::Duration(Duration::from_secs(10))),
        ),
        channel_key(
            "channels.slack.request_timeout",
            millis(SEC, 5 * MIN),
            Some(Number::Duration(Duration::from_secs(15))),
        ),
    ];

    fn enabled(config: &SlackConfig) -> bool {
        config.enabled
    }

    fn validate(sl: &SlackConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_owned(),
                line: None,
                message,
            })
        };
        if let Err(e) = check_url("channels.slack.api_url", &sl.api_url) {
            err(&e.path, e.message);
        }
        if !sl.events_path.starts_with('/') {
            err(
                "channels.slack.events_path",
                format!("`{}` must start with `/`", sl.events_path),
            );
        }
        if !sl.enabled {
            return errors;
        }
        let secrets = [
            (
                "bot_token",
                "the bot token (xoxb-…)",
                &sl.bot_token_env,
                &sl.bot_token_file,
                true,
            ),
            (
                "signing_secret",
                "events mode needs the app's signing secret, so forged events are refused;",
                &sl.signing_secret_env,
                &sl.signing_secret_file,
                sl.mode == SlackMode::Events,
            ),
            (
                "app_token",
                "socket mode needs the app-level token (xapp-…, scope connections:write);",
                &sl.app_token_env,
                &sl.app_token_file,
                sl.mode == SlackMode::Socket,
            ),
        ];
        for (name, what, env, file, required) in secrets {
            if !required {
                continue;
            }
            if let Some(e) = check_secret("channels.slack", name, what, env, file, true) {
                err(&e.path, e.message);
            }
        }
        errors
    }

    fn default_rates() -> RateSettings {
        // Slack: about 1 message/s per channel with short bursts; chat.postMessage is a
        // special tier, so the channel-wide rate is kept well under what a workspace allows.
        RateSettings {
            per_second: Some(10.0),
            burst: Some(10),
            per_chat_per_second: Some(1.0),
            per_chat_burst: Some(3),
        }
    }

    fn build(sl: &SlackConfig, _: &BuildEnv) -> anyhow::Result<Self> {
        let bot_token = secret(
            "channels.slack.bot_token",
            &sl.bot_token_env,
            &sl.bot_token_file,
        )?;
        let (signing_secret, app_token) = match sl.mode {
            SlackMode::Events => (
                Some(secret(
                    "channels.slack.signing_secret",
                    &sl.signing_secret_env,
                    &sl.signing_secret_file,
                )?),
                None,
            ),
            SlackMode::Socket => (
                None,
                Some(secret(
                    "channels.slack.app_token",
                    &sl.app_token_env,
                    &sl.app_token_file,
                )?),
            ),
        };
        let sender = SlackSender::new(&bot_token, &sl.api_url, sl.request_timeout.get())
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            mode: sl.mode,
            sender: Arc::new(sender),
            signing_secret,
            app_token,
            events_path: sl.events_path.clone(),
            ping_interval: sl.ping_interval.get(),
            identity: watch::Sender::new(None),
            intake: Mutex::new(None),
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.sender.clone()
    }

    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route> {
        let Some(secret) = &self.signing_secret else {
            return Vec::new();
        };
        let hook = events::Hook {
            intake: self.intake(&ctx.inbox),
            secret: Arc::from(secret.as_bytes()),
            body_timeout: ctx.body_timeout,
        };
        vec![Route {
            path: self.events_path.clone(),
            handler: post(events::slack_event)
                .layer(DefaultBodyLimit::disable())
                .with_state(hook),
        }]
    }

    fn disabled_routes() -> Vec<Route> {
        vec![Route {
            path: DEFAULT_EVENTS_PATH.to_owned(),
            handler: post(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "the Slack channel is disabled; set [channels.slack] enabled = true".to_owned(),
                )
            }),
        }]
    }

    fn announce(&self, http: std::net::SocketAddr) -> Vec<String> {
        match self.mode {
            SlackMode::Events => vec![format!(
                "Slack channel: Events API at http://{http}{} (the app's Request URL must reach it)",
                self.events_path
            )],
            SlackMode::Socket => vec!["Slack channel: Socket Mode".to_owned()],
        }
    }

    async fn run(self: Arc<Self>, ctx: ListenerCtx) {
        match (self.mode, &self.app_token) {
            (SlackMode::Socket, Some(app_token)) => {
                let socket = socket::Socket::new(
                    self.sender.clone(),
                    app_token.clone(),
                    self.identity.clone(),
                    self.intake(&ctx.inbox),
                    self.ping_interval,
                );
                keep_connected(KIND.as_str(), socket, &ctx).await;
            }
            _ => {
                let identify = Identify {
                    sender: self.sender.clone(),
                    identity: self.identity.clone(),
                };
                keep_connected(KIND.as_str(), identify, &ctx).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> Vec<String> {
        let parsed: SlackConfig = toml::from_str(toml).expect("a [channels.slack] table");
        SlackAdapter::validate(&parsed)
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn each_mode_requires_its_own_secret() {
        let events = check("enabled = true\nbot_token_env = \"SLACK_TEST_UNSET_1\"\n");
        assert!(
            events
                .iter()
                .any(|e| e.starts_with("channels.slack.bot_token_env:")
                    && e.contains("SLACK_TEST_UNSET_1")
                    && e.contains("export it")),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e.starts_with("channels.slack.signing_secret_env:")),
            "{events:?}"
        );
        assert!(
            !events.iter().any(|e| e.contains("app_token")),
            "{events:?}"
        );
        let socket = check("enabled = true\nmode = \"socket\"\nbot_token_env = \"X\"\n");
        assert!(
            socket
                .iter()
                .any(|e| e.starts_with("channels.slack.app_token_env:")),
            "{socket:?}"
        );
        assert!(
            !socket.iter().any(|e| e.contains("signing_secret")),
            "{socket:?}"
        );
        let bad = check("api_url = \"slack\"\nevents_path = \"events\"\n");
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(check("").is_empty(), "a disabled default section is valid");
    }

    #[test]
    fn recent_ids_forget_the_oldest_past_the_cap() {
        let ids = RecentIds::new(2);
        for id in ["a", "b", "a", "c"] {
            ids.note(id);
        }
        assert!(!ids.contains("a") && ids.contains("b") && ids.contains("c"));
    }
}
