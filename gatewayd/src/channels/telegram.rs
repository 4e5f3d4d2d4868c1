//! The Telegram channel (teloxide): long polling or a webhook in, `sendMessage` out.
//!
//! Normalization: private chats are direct chats, groups and supergroups are group chats
//! (channel posts are ignored); the text is the message text or the media caption; photos,
//! documents, audio, video, voice notes and stickers become attachments by file id; a reply keeps
//! the id of the message it answers. Telegram message ids are per chat, so the dedupe key is
//! `<chat id>:<message id>`. A group message is `mentioned` when an entity mentions the bot
//! (`@username`, a `text_mention` of its id, or a command `/cmd@username`) or it replies to one
//! of the bot's messages; the bot's id is the token's prefix and its username comes from `getMe`
//! when the listener starts
//! ([`BotIdentity`]). **Edited messages are acknowledged and not answered again:** the
//! agent already answered the original, and answering each edit would surprise the person.
//!
//! Polling acknowledges updates only by the next `getUpdates` offset, and the offset moves past
//! an update only after it is committed to the inbox, so a crash never loses one. The webhook
//! checks `X-Telegram-Bot-Api-Secret-Token` in constant time and answers 200 only after the
//! commit (a 5xx makes Telegram redeliver). In multi-instance mode one instance polls, under the
//! lease `conn:telegram`, with the offset kept in the lease (see `Poll`). Replies are split at
//! 4096 UTF-16 code units. Errors:
//! `retry_after` → retry exactly then; network, 5xx, unreadable answers → retry; an invalid token
//! → re-authentication needed; a blocked bot, an unknown chat, any other 4xx → permanent.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use teloxide::payloads::{GetUpdatesSetters, SendMessageSetters, SetWebhookSetters};
use teloxide::requests::Requester;
use teloxide::types::{ChatId, Message, MessageId, ReplyParameters, Update, UpdateKind};
use teloxide::{ApiError, Bot, RequestError};

use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::adapter::{BuildEnv, ChannelAdapter, ListenerCtx, Route, WebhookCtx};
use super::supervise::{Connection, Link, keep_connected, stopped};
use super::webhook::{error, read_body};
use super::{ChannelSender, ErrorClass, OutgoingChunk, SendError};
use crate::config::{
    Config, ConfigError, HOUR, HumanDuration, Number, NumericKey, SEC, channel_key, check_secret,
    check_url, millis,
};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::{Attachment, ChannelKind, ChatType, InboundMessage, now_ms};
use crate::send::{Limit, Sent, Unit};

/// The Telegram channel.
pub const KIND: ChannelKind = ChannelKind::new("telegram");
/// Largest Telegram webhook body accepted.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Telegram's limit on one message.
pub const LIMIT: Limit = Limit {
    max: 4096,
    unit: Unit::Utf16,
};

/// Builds the bot client for `api_url`. Its HTTP timeout outlasts a long poll of
/// `poll_timeout` (teloxide's default client gives up after 17 s, shorter than a 30 s poll).
pub fn bot(token: &str, api_url: &str, poll_timeout: Duration) -> Result<Bot, String> {
    let url = reqwest::Url::parse(api_url)
        .map_err(|e| format!("channels.telegram.api_url `{api_url}` is not a URL: {e}"))?;
    let client = teloxide::net::default_reqwest_settings()
        .timeout(poll_timeout.saturating_add(Duration::from_secs(15)))
        .build()
        .map_err(|e| format!("cannot build the Telegram HTTP client: {e}"))?;
    Ok(Bot::with_client(token, client).set_api_url(url))
}

/// Classifies a teloxide error into the delivery classes.
pub fn classify(e: &RequestError) -> SendError {
    let text = e.to_string();
    match e {
        RequestError::RetryAfter(secs) => SendError::Retryable {
            message: text,
            retry_after: Some(secs.duration().min(super::MAX_PLATFORM_DELAY)),
            global: false,
        },
        RequestError::Network(_) | RequestError::InvalidJson { .. } | RequestError::Io(_) => {
            SendError::retryable(text)
        }
        RequestError::MigrateToChatId(_) => SendError::Permanent(text),
        RequestError::Api(api) => match api {
            ApiError::InvalidToken => SendError::Auth(text),
            ApiError::Unknown(description) => {
                let d = description.to_ascii_lowercase();
                if d.starts_with("bad request")
                    || d.starts_with("forbidden")
                    || d.starts_with("not found")
                {
                    SendError::Permanent(text)
                } else if d.starts_with("unauthorized") {
                    SendError::Auth(text)
                } else {
                    // Internal Server Error, Bad Gateway, Too Many Requests without parameters…
                    SendError::retryable(text)
                }
            }
            _ => SendError::Permanent(text),
        },
    }
}

/// The sending half.
pub struct TelegramSender {
    bot: Bot,
}

impl TelegramSender {
    /// A sender over `bot`.
    pub fn new(bot: Bot) -> Self {
        Self { bot }
    }
}

fn parse_chat(chat_id: &str) -> Result<ChatId, SendError> {
    chat_id
        .parse::<i64>()
        .map(ChatId)
        .map_err(|_| SendError::Permanent(format!("`{chat_id}` is not a Telegram chat id")))
}

#[async_trait]
impl ChannelSender for TelegramSender {
    fn kind(&self) -> ChannelKind {
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
        let msg = chunk.message;
        let chat = parse_chat(&msg.chat_id)?;
        let mut request = self.bot.send_message(chat, chunk.text);
        // Only the first chunk carries the reference; the rest follow it.
        let reply_to = msg
            .reply_to
            .as_deref()
            .and_then(|r| r.rsplit_once(':'))
            .and_then(|(_, id)| id.parse::<i32>().ok());
        if let (Some(id), 0) = (reply_to, chunk.index) {
            request = request.reply_parameters(
                ReplyParameters::new(MessageId(id)).allow_sending_without_reply(),
            );
        }
        request
            .await
            .map(|_| Sent::default())
            .map_err(|e| classify(&e))
    }

    async fn probe(&self) -> Result<(), SendError> {
        self.bot
            .get_me()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }
}

/// Who the bot is, for `mentioned`: its user id (the token's prefix) and its `@username` (from
/// `getMe`; unknown until the listener asked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotIdentity {
    /// The bot's user id.
    pub id: Option<u64>,
    /// The bot's username, without `@`.
    pub username: Option<String>,
}

impl BotIdentity {
    /// The identity a token names: its id is the part before `:`.
    pub fn from_token(token: &str) -> Self {
        Self {
            id: token.split_once(':').and_then(|(id, _)| id.parse().ok()),
            username: None,
        }
    }

    fn is(&self, user: &teloxide::types::User) -> bool {
        self.id == Some(user.id.0)
    }
}

/// The identity shared by the listener (which learns the username) and the normalizers.
type SharedIdentity = Arc<std::sync::RwLock<BotIdentity>>;

fn identity(shared: &SharedIdentity) -> BotIdentity {
    shared
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Asks `getMe` for the bot's username and records it; a failure is logged and leaves mentions
/// by `@username` unseen until the next attempt.
async fn learn_username(bot: &Bot, shared: &SharedIdentity) {
    if identity(shared).username.is_some() {
        return;
    }
    match bot.get_me().await {
        Ok(me) => {
            let mut id = shared
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            id.id = Some(me.user.id.0);
            id.username = me.user.username.clone();
        }
        Err(e) => {
            tracing::warn!(message = "Cannot read the Telegram bot's username (getMe); @-mentions of it are not recognised yet.", error = %e);
        }
    }
}

/// Whether group message `m` addresses the bot `me`.
fn mentions_bot(m: &Message, me: &BotIdentity) -> bool {
    use teloxide::types::MessageEntityKind;
    if m.reply_to_message()
        .and_then(|r| r.from.as_ref())
        .is_some_and(|u| me.is(u))
    {
        return true;
    }
    let entities = m
        .parse_entities()
        .or_else(|| m.parse_caption_entities())
        .unwrap_or_default();
    entities.iter().any(|e| match e.kind() {
        MessageEntityKind::Mention => me.username.as_deref().is_some_and(|name| {
            e.text()
                .strip_prefix('@')
                .is_some_and(|t| t.eq_ignore_ascii_case(name))
        }),
        MessageEntityKind::TextMention { user } => me.is(user),
        // `/help@this_bot`: a command addressed to this bot by name.
        MessageEntityKind::BotCommand => me.username.as_deref().is_some_and(|name| {
            e.text()
                .split_once('@')
                .is_some_and(|(_, to)| to.eq_ignore_ascii_case(name))
        }),
        _ => false,
    })
}

/// Turns an update into an inbound message; `None` for updates the gateway does not answer.
/// `me` is the bot, for `mentioned`.
pub fn normalize(update: &Update, me: &BotIdentity) -> Option<InboundMessage> {
    match &update.kind {
        UpdateKind::Message(m) => normalize_message(m, me),
        UpdateKind::EditedMessage(m) => {
            tracing::debug!(
                message = "Edited Telegram message acknowledged, not answered again.",
                chat_id = m.chat.id.0,
                message_id = m.id.0
            );
            None
        }
        _ => None,
    }
}

fn normalize_message(m: &Message, me: &BotIdentity) -> Option<InboundMessage> {
    let from = m.from.as_ref()?;
    if from.is_bot {
        return None;
    }
    let chat_type = if m.chat.is_private() {
        ChatType::Direct
    } else if m.chat.is_group() || m.chat.is_supergroup() {
        ChatType::Group
    } else {
        return None;
    };
    let mut attachments = Vec::new();
    let mut attach = |kind: &str, file_id: String, name: Option<String>| {
        attachments.push(Attachment {
            kind: kind.to_owned(),
            file_id,
            name,
        });
    };
    if let Some(largest) = m
        .photo()
        .and_then(|sizes| sizes.iter().max_by_key(|p| p.width * p.height))
    {
        attach("photo", largest.file.id.to_string(), None);
    }
    if let Some(d) = m.document() {
        attach("document", d.file.id.to_string(), d.file_name.clone());
    }
    if let Some(a) = m.audio() {
        attach("audio", a.file.id.to_string(), a.file_name.clone());
    }
    if let Some(v) = m.video() {
        attach("video", v.file.id.to_string(), v.file_name.clone());
    }
    if let Some(v) = m.voice() {
        attach("voice", v.file.id.to_string(), None);
    }
    if let Some(s) = m.sticker() {
        attach("sticker", s.file.id.to_string(), None);
    }
    let text = m.text().or(m.caption()).unwrap_or_default().to_owned();
    if text.trim().is_empty() && attachments.is_empty() {
        return None;
    }
    let chat = m.chat.id.0;
    let mentioned = chat_type == ChatType::Group && mentions_bot(m, me);
    Some(InboundMessage {
        channel: KIND,
        channel_message_id: format!("{chat}:{}", m.id.0),
        chat_id: chat.to_string(),
        chat_type,
        sender_id: from.id.0.to_string(),
        text,
        reply_to: m.reply_to_message().map(|r| format!("{chat}:{}", r.id.0)),
        attachments,
        sender_name: Some(from.full_name()).filter(|n| !n.trim().is_empty()),
        received_at_ms: now_ms(),
        mentioned,
    })
}

/// How long before the lease's local deadline a long poll must have ended: its `timeout` is
/// the time left minus this, in whole seconds.
const POLL_MARGIN: Duration = Duration::from_millis(500);

/// The `getUpdates` timeout, in whole seconds: `poll_timeout`, and under a lease at most the
/// time left to its deadline minus [`POLL_MARGIN`] (0 is a short poll).
fn poll_secs(poll_timeout: Duration, time_left: Option<Duration>) -> u32 {
    let mut d = poll_timeout;
    if let Some(left) = time_left {
        d = d.min(left.saturating_sub(POLL_MARGIN));
    }
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The poll offset stored in a lease's metadata (`{"offset": N}`), if it is readable.
fn stored_offset(meta: &str) -> Option<i32> {
    let value: serde_json::Value = serde_json::from_str(meta).ok()?;
    i32::try_from(value.get("offset")?.as_i64()?).ok()
}

/// One long-poll connection: `getUpdates` in a loop, committing each update before the
/// offset moves past it. The offset and whether the webhook was cleared outlive a failed
/// attempt.
///
/// In multi-instance mode it polls only under the lease `conn:telegram` ([`Link::lease`]): it
/// starts from the offset stored in the lease's metadata, stores each new offset there (a write
/// the store refuses once the lease is lost) before a `getUpdates` confirms it to Telegram, asks
/// for a long poll no longer than the time left to the lease's deadline, and starts none after
/// it; so a poller frozen past its lease has no poll open when the next holder starts. A `409
/// Conflict` re-checks the lease before the next attempt, which waits out the backoff.
struct Poll {
    bot: Bot,
    me: SharedIdentity,
    inbox: Arc<Inbox>,
    poll_timeout: Duration,
    offset: i32,
    webhook_cleared: bool,
    /// The lease epoch whose stored offset was read.
    loaded_epoch: Option<i64>,
}

impl Poll {
    /// Under a lease held at a new epoch, continues from the offset its metadata stores.
    async fn load_offset(&mut self, link: &Link) -> Result<(), SendError> {
        let Some(lease) = link.lease() else {
            return Ok(());
        };
        if self.loaded_epoch == Some(lease.epoch()) {
            return Ok(());
        }
        let meta = lease.meta().await.map_err(|e| {
            SendError::retryable(format!("cannot read the stored Telegram offset: {e}"))
        })?;
        match meta.as_deref().map(|m| (m, stored_offset(m))) {
            Some((_, Some(offset))) => self.offset = offset,
            Some((raw, None)) => {
                tracing::warn!(
                    message = "The stored Telegram offset is unreadable; polling from the last known one.",
                    meta = raw,
                    offset = self.offset
                );
            }
            None => {}
        }
        tracing::info!(
            message = "Telegram polling starts under the lease.",
            epoch = lease.epoch(),
            offset = self.offset
        );
        self.loaded_epoch = Some(lease.epoch());
        Ok(())
    }

    /// Under a lease, stores the offset before a poll confirms it; `Err` (and the offset back
    /// to `previous`) if the store refuses, so Telegram is never told of it.
    async fn store_offset(&mut self, link: &Link, previous: i32) -> Result<(), SendError> {
        let Some(lease) = link.lease() else {
            return Ok(());
        };
        if self.offset == previous {
            return Ok(());
        }
        let meta = json!({ "offset": self.offset }).to_string();
        if let Err(e) = lease.set_meta(&meta).await {
            self.offset = previous;
            return Err(SendError::retryable(format!(
                "cannot store the Telegram offset under the lease: {e}"
            )));
        }
        Ok(())
    }
}

impl Connection for Poll {
    fn failure_message(&self) -> &'static str {
        "Telegram polling failed."
    }

    async fn connect(&mut self, link: &mut Link) -> Result<(), SendError> {
        self.load_offset(link).await?;
        // Once a connection: a failure is retried with the next one.
        learn_username(&self.bot, &self.me).await;
        loop {
            // A send refused for its credentials holds the listener too.
            let health = link.health().clone();
            health.wait_sendable(&mut link.shutdown).await;
            if link.stopping() {
                return Ok(());
            }
            let result = if self.webhook_cleared {
                let timeout = poll_secs(self.poll_timeout, link.lease().map(|l| l.time_left()));
                let request = self.bot.get_updates().offset(self.offset).timeout(timeout);
                tokio::select! {
                    r = request => r,
                    () = stopped(&mut link.shutdown) => return Ok(()),
                }
            } else {
                // Polling is refused while a webhook is registered.
                self.bot.delete_webhook().await.map(|_| Vec::new())
            };
            let updates = match result {
                Ok(updates) => updates,
                Err(RequestError::Api(ApiError::TerminatedByOtherGetUpdates)) => {
                    return Err(self.conflict(link).await);
                }
                Err(e) => return Err(classify(&e)),
            };
            self.webhook_cleared = true;
            link.connected();
            let me = identity(&self.me);
            let previous = self.offset;
            for update in updates {
                if let Some(msg) = normalize(&update, &me) {
                    match self.inbox.commit(msg).await {
                        Ok(committed) => self.inbox.dispatch(committed).await,
                        Err(e) => {
                            // Not acknowledged: the update comes again with the next poll.
                            tracing::error!(message = "Cannot commit a Telegram update; it will be fetched again.", update_id = update.id.0, error = %e);
                            break;
                        }
                    }
                }
                self.offset = i32::try_from(update.id.0)
                    .unwrap_or(i32::MAX)
                    .saturating_add(1);
            }
            self.store_offset(link, previous).await?;
        }
    }
}

impl Poll {
    /// Another `getUpdates` ended ours. Under a lease, whether it still holds decides what the
    /// error says (the lease's renewal stops this poller if it is lost); either way the next
    /// attempt waits out the backoff, never a tight loop.
    async fn conflict(&self, link: &Link) -> SendError {
        let Some(lease) = link.lease() else {
            return SendError::retryable("409 Conflict: another getUpdates is polling this bot");
        };
        match lease.holds().await {
            Ok(true) => SendError::retryable(
                "409 Conflict: another getUpdates is polling this bot, though this instance holds the lease; is a gateway outside the cluster polling it?",
            ),
            Ok(false) => SendError::retryable(
                "409 Conflict: the lease conn:telegram moved to another instance",
            ),
            Err(e) => SendError::retryable(format!(
                "409 Conflict: another getUpdates is polling this bot; the lease cannot be checked: {e}"
            )),
        }
    }
}

/// Registers the webhook with Telegram (webhook mode, when `webhook_url` is set).
pub async fn register_webhook(bot: &Bot, url: &str, secret: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(url)
        .map_err(|e| format!("channels.telegram.webhook_url `{url}` is not a URL: {e}"))?;
    bot.set_webhook(url)
        .secret_token(secret.to_owned())
        .await
        .map(|_| ())
        .map_err(|e| format!("setWebhook failed: {e}"))
}

/// How the Telegram channel receives updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramMode {
    /// Long polling with `getUpdates` (works behind NAT; the default).
    Polling,
    /// Telegram POSTs updates to `webhook_path` on the HTTP listener.
    Webhook,
}

/// `[channels.telegram]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelegramConfig {
    /// Connect the Telegram bot.
    pub enabled: bool,
    /// Environment variable holding the bot token (from @BotFather).
    pub token_env: Option<String>,
    /// File holding the bot token (alternative to `token_env`).
    pub token_file: Option<PathBuf>,
    /// `polling` or `webhook`.
    pub mode: TelegramMode,
    /// The Bot API root.
    pub api_url: String,
    /// Long-poll timeout of one `getUpdates`.
    pub poll_timeout: HumanDuration,
    /// Webhook mode: the public HTTPS URL Telegram should POST to (registered with
    /// `setWebhook` at start); required in webhook mode.
    pub webhook_url: Option<String>,
    /// Webhook mode: the path on the HTTP listener that receives updates.
    pub webhook_path: String,
    /// Webhook mode: environment variable holding the secret Telegram sends in
    /// `X-Telegram-Bot-Api-Secret-Token`.
    pub webhook_secret_env: Option<String>,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_env: None,
            token_file: None,
            mode: TelegramMode::Polling,
            api_url: "https://api.telegram.org".to_owned(),
            poll_timeout: HumanDuration(Duration::from_secs(30)),
            webhook_url: None,
            webhook_path: "/channels/telegram/webhook".to_owned(),
            webhook_secret_env: None,
        }
    }
}

/// The Telegram adapter: the bot, its sender, and polling or the webhook.
pub struct TelegramAdapter {
    bot: Bot,
    me: SharedIdentity,
    mode: TelegramMode,
    poll_timeout: Duration,
    webhook: Option<(String, String, String)>,
}

/// What the webhook handler needs.
#[derive(Clone)]
struct Hook {
    me: SharedIdentity,
    inbox: Arc<Inbox>,
    secret: String,
    body_timeout: Duration,
}

impl ChannelAdapter for TelegramAdapter {
    const KIND: ChannelKind = KIND;
    const MENTIONS: bool = true;
    type Config = TelegramConfig;
    const NUMERIC_KEYS: &'static [NumericKey] = &[channel_key(
        "channels.telegram.poll_timeout",
        millis(SEC, HOUR),
        Some(Number::Duration(Duration::from_secs(30))),
    )];

    fn enabled(config: &TelegramConfig) -> bool {
        config.enabled
    }

    fn validate(tg: &TelegramConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_owned(),
                line: None,
                message,
            })
        };
        for (key, url) in [
            ("channels.telegram.api_url", Some(&tg.api_url)),
            ("channels.telegram.webhook_url", tg.webhook_url.as_ref()),
        ] {
            if let Some(Err(e)) = url.map(|u| check_url(key, u)) {
                err(&e.path, e.message);
            }
        }
        if !tg.enabled {
            return errors;
        }
        if let Some(e) = check_secret(
            "channels.telegram",
            "token",
            "the bot token",
            &tg.token_env,
            &tg.token_file,
            true,
        ) {
            err(&e.path, e.message);
        }
        if tg.mode == TelegramMode::Webhook {
            if tg.webhook_url.is_none() {
                err(
                    "channels.telegram.webhook_url",
                    "required in webhook mode: the public https:// URL that reaches webhook_path, registered with setWebhook at start".to_owned(),
                );
            }
            if !tg.webhook_path.starts_with('/') {
                err(
                    "channels.telegram.webhook_path",
                    "must start with `/`".to_owned(),
                );
            }
            match &tg.webhook_secret_env {
                None => err(
                    "channels.telegram.webhook_secret_env",
                    "webhook mode needs a secret so forged updates are refused; set webhook_secret_env".to_owned(),
                ),
                Some(var) if std::env::var(var).map_or(true, |v| v.trim().is_empty()) => err(
                    "channels.telegram.webhook_secret_env",
                    format!("environment variable `{var}` is not set or empty; export it"),
                ),
                Some(_) => {}
            }
        }
        errors
    }

    fn default_rates() -> RateSettings {
        // Telegram: about 30/s per bot, 1/s per chat.
        RateSettings {
            per_second: Some(5.0),
            burst: Some(5),
            per_chat_per_second: Some(1.0),
            per_chat_burst: Some(3),
        }
    }

    fn build(tg: &TelegramConfig, _: &BuildEnv) -> anyhow::Result<Self> {
        let token = Config::secret("channels.telegram.token", &tg.token_env, &tg.token_file)
            .map_err(|e| anyhow::anyhow!(e))?
            .ok_or_else(|| anyhow::anyhow!("channels.telegram.token_env is required"))?;
        let bot =
            bot(&token, &tg.api_url, tg.poll_timeout.get()).map_err(|e| anyhow::anyhow!(e))?;
        let webhook = match tg.mode {
            TelegramMode::Polling => None,
            TelegramMode::Webhook => {
                let secret = Config::secret(
                    "channels.telegram.webhook_secret",
                    &tg.webhook_secret_env,
                    &None,
                )
                .map_err(|e| anyhow::anyhow!(e))?
                .ok_or_else(|| {
                    anyhow::anyhow!("channels.telegram.webhook_secret_env is required")
                })?;
                Some((
                    tg.webhook_path.clone(),
                    secret,
                    tg.webhook_url.clone().unwrap_or_default(),
                ))
            }
        };
        Ok(Self {
            bot,
            me: Arc::new(std::sync::RwLock::new(BotIdentity::from_token(&token))),
            mode: tg.mode,
            poll_timeout: tg.poll_timeout.get(),
            webhook,
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        Arc::new(TelegramSender::new(self.bot.clone()))
    }

    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route> {
        let Some((path, secret, _)) = &self.webhook else {
            return Vec::new();
        };
        let hook = Hook {
            me: self.me.clone(),
            inbox: ctx.inbox.clone(),
            secret: secret.clone(),
            body_timeout: ctx.body_timeout,
        };
        vec![Route {
            path: path.clone(),
            handler: post(telegram_update)
                .layer(DefaultBodyLimit::disable())
                .with_state(hook),
        }]
    }

    async fn run(self: Arc<Self>, ctx: ListenerCtx) {
        match (self.mode, &self.webhook) {
            (TelegramMode::Polling, _) => {
                let poll = Poll {
                    bot: self.bot.clone(),
                    me: self.me.clone(),
                    inbox: ctx.inbox.clone(),
                    poll_timeout: self.poll_timeout,
                    offset: 0,
                    webhook_cleared: false,
                    loaded_epoch: None,
                };
                keep_connected(KIND.as_str(), poll, &ctx).await;
            }
            (TelegramMode::Webhook, Some((_, secret, url))) => {
                match register_webhook(&self.bot, url, secret).await {
                    Ok(()) => {
                        ctx.health.connected();
                        learn_username(&self.bot, &self.me).await;
                    }
                    Err(e) => {
                        tracing::error!(message = "Cannot register the Telegram webhook; register it yourself or fix channels.telegram.webhook_url.", error = %e);
                        ctx.health.failed(ErrorClass::Retryable, &e, Duration::ZERO);
                    }
                }
            }
            (TelegramMode::Webhook, None) => {}
        }
    }
}

async fn telegram_update(State(hook): State<Hook>, headers: HeaderMap, body: Body) -> Response {
    use subtle::ConstantTimeEq;
    let given = headers
        .get("x-telegram-bot-api-secret-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(given.ct_eq(hook.secret.as_bytes())) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Telegram-Bot-Api-Secret-Token".to_owned(),
        );
    }
    let too_large = || format!("body is larger than {BODY_LIMIT} bytes");
    let body = match read_body(&headers, body, BODY_LIMIT, hook.body_timeout, too_large).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let update: teloxide::types::Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a Telegram update: {e}"),
            );
        }
    };
    let Some(msg) = normalize(&update, &identity(&hook.me)) else {
        return (StatusCode::OK, Json(json!({"ok": true}))).into_response();
    };
    match hook.inbox.accept(msg).await {
        Ok(_) => (StatusCode::OK, Json(json!({"ok": true}))).into_response(),
        Err(e) => {
            tracing::error!(message = "Cannot commit a Telegram update; Telegram will redeliver it.", update_id = update.id.0, error = %e);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the update right now".to_owned(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_poll_under_a_lease_ends_before_its_deadline() {
        let thirty = Duration::from_secs(30);
        assert_eq!(poll_secs(thirty, None), 30);
        assert_eq!(poll_secs(thirty, Some(Duration::from_millis(2500))), 2);
        assert_eq!(poll_secs(thirty, Some(Duration::from_millis(1499))), 0);
        assert_eq!(poll_secs(thirty, Some(Duration::ZERO)), 0);
        assert_eq!(poll_secs(Duration::from_secs(1), Some(thirty)), 1);
    }

    #[test]
    fn the_stored_offset_is_read_leniently() {
        assert_eq!(stored_offset(r#"{"offset": 42}"#), Some(42));
        assert_eq!(stored_offset(r#"{"offset": "42"}"#), None);
        assert_eq!(stored_offset(r#"{"offset": 99999999999}"#), None);
        assert_eq!(stored_offset("not json"), None);
        assert_eq!(stored_offset("{}"), None);
    }

    /// Normalizes as a bot whose identity is not known.
    fn norm(u: &Update) -> Option<InboundMessage> {
        normalize(u, &BotIdentity::default())
    }

    #[test]
    fn a_group_message_is_mentioned_by_username_text_mention_or_reply_to_the_bot() {
        let me = BotIdentity {
            id: Some(777),
            username: Some("gate_bot".to_owned()),
        };
        let group = serde_json::json!({"id": -100, "type": "supergroup", "title": "g"});
        let private = serde_json::json!({"id": 42, "type": "private", "first_name": "Ada"});
        let bot = serde_json::json!({"id": 777, "is_bot": true, "first_name": "Gate", "username": "gate_bot"});
        let other_bot = serde_json::json!({"id": 778, "is_bot": true, "first_name": "Else"});
        let mention = |name: &str| {
            let text = format!("hey @{name} hi");
            let len = name.len() + 1;
            serde_json::json!({"text": text, "entities": [{"type": "mention", "offset": 4, "length": len}]})
        };
        let cases = [
            (group.clone(), mention("gate_bot"), true, "@username"),
            (
                group.clone(),
                mention("Gate_Bot"),
                true,
                "@username, any case",
            ),
            (
                group.clone(),
                mention("other_bot"),
                false,
                "another @username",
            ),
            (
                group.clone(),
                serde_json::json!({"text": "hey Gate", "entities": [{"type": "text_mention", "offset": 4, "length": 4, "user": bot}]}),
                true,
                "text_mention of the bot",
            ),
            (
                group.clone(),
                serde_json::json!({"text": "thanks", "reply_to_message": {
                    "message_id": 5, "date": 1_700_000_000, "chat": group, "from": bot, "text": "an answer"}}),
                true,
                "reply to the bot",
            ),
            (
                group.clone(),
                serde_json::json!({"text": "thanks", "reply_to_message": {
                    "message_id": 5, "date": 1_700_000_000, "chat": group, "from": other_bot, "text": "x"}}),
                false,
                "reply to someone else",
            ),
            (
                group.clone(),
                serde_json::json!({"caption": "look @gate_bot", "photo": [{"file_id": "p", "file_unique_id": "u", "width": 1, "height": 1}],
                    "caption_entities": [{"type": "mention", "offset": 5, "length": 9}]}),
                true,
                "@username in a caption",
            ),
            (
                group.clone(),
                serde_json::json!({"text": "/help@gate_bot", "entities": [{"type": "bot_command", "offset": 0, "length": 14}]}),
                true,
                "a command addressed to the bot",
            ),
            (
                group.clone(),
                serde_json::json!({"text": "/help@other_bot", "entities": [{"type": "bot_command", "offset": 0, "length": 15}]}),
                false,
                "a command addressed to another bot",
            ),
            (
                group.clone(),
                serde_json::json!({"text": "/help", "entities": [{"type": "bot_command", "offset": 0, "length": 5}]}),
                false,
                "a command addressed to no bot in particular",
            ),
            (
                group.clone(),
                serde_json::json!({"text": "just talking"}),
                false,
                "no mention",
            ),
            (
                private,
                mention("gate_bot"),
                false,
                "a direct chat is never `mentioned`",
            ),
        ];
        for (chat, extra, want, what) in cases {
            let u = update(serde_json::json!({"update_id": 1, "message": message(chat, extra)}));
            let m = normalize(&u, &me).unwrap_or_else(|| panic!("{what}: {u:?}"));
            assert_eq!(m.mentioned, want, "{what}");
        }
        // Without the username (getMe not answered yet), the id still recognises a reply.
        let by_id = BotIdentity::from_token("777:secret");
        assert_eq!(
            by_id,
            BotIdentity {
                id: Some(777),
                username: None
            }
        );
        let u = update(
            serde_json::json!({"update_id": 1, "message": message(group.clone(), mention("gate_bot"))}),
        );
        assert!(!normalize(&u, &by_id).expect("message").mentioned);
    }

    fn update(json: serde_json::Value) -> Update {
        // Parsed from text, as it arrives: teloxide's `Update` does not read from a `Value`.
        serde_json::from_str(&json.to_string()).expect("a valid update")
    }

    fn message(chat: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
        let mut m = serde_json::json!({
            "message_id": 7, "date": 1_700_000_000,
            "chat": chat,
            "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        m
    }

    #[test]
    fn updates_normalize() {
        let private = serde_json::json!({"id": 42, "type": "private", "first_name": "Ada"});
        let group = serde_json::json!({"id": -100123, "type": "supergroup", "title": "Ops"});
        let u = update(
            serde_json::json!({"update_id": 1, "message": message(private.clone(), serde_json::json!({"text": "hi"}))}),
        );
        let m = norm(&u).unwrap_or_else(|| panic!("text message: {u:?}"));
        assert_eq!(
            (
                m.chat_type,
                m.text.as_str(),
                m.channel_message_id.as_str(),
                m.sender_id.as_str()
            ),
            (ChatType::Direct, "hi", "42:7", "42")
        );

        let photo = serde_json::json!({"caption": "look", "photo": [
            {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90},
            {"file_id": "big", "file_unique_id": "b", "width": 800, "height": 600}]});
        let m = norm(&update(
            serde_json::json!({"update_id": 2, "message": message(group.clone(), photo)}),
        ))
        .expect("photo");
        assert_eq!(m.chat_type, ChatType::Group);
        assert_eq!(m.text, "look");
        assert_eq!(m.attachments[0].file_id, "big");
        assert!(m.agent_input().contains("[photo attached: big]"));

        let reply = serde_json::json!({"text": "yes", "reply_to_message": message(group.clone(), serde_json::json!({"message_id": 3, "text": "q"}))});
        let m = norm(&update(
            serde_json::json!({"update_id": 3, "message": message(group, reply)}),
        ))
        .expect("reply");
        assert_eq!(m.reply_to.as_deref(), Some("-100123:3"));

        let edited = serde_json::json!({"update_id": 4, "edited_message": message(private, serde_json::json!({"text": "hi!", "edit_date": 1_700_000_100}))});
        assert!(
            norm(&update(edited)).is_none(),
            "edits are not answered again"
        );
    }

    #[test]
    fn errors_are_classified() {
        use teloxide::types::Seconds;
        assert_eq!(
            classify(&RequestError::RetryAfter(Seconds::from_seconds(3))).class(),
            ErrorClass::Retryable
        );
        assert_eq!(
            classify(&RequestError::Api(ApiError::InvalidToken)).class(),
            ErrorClass::Auth
        );
        assert_eq!(
            classify(&RequestError::Api(ApiError::BotBlocked)).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&RequestError::Api(ApiError::Unknown(
                "Internal Server Error".into()
            )))
            .class(),
            ErrorClass::Retryable
        );
        assert_eq!(
            classify(&RequestError::Api(ApiError::Unknown(
                "Bad Request: message is empty".into()
            )))
            .class(),
            ErrorClass::Permanent
        );
    }
}

#[cfg(test)]
mod props {
    //! Generated updates, as Telegram (or a forger of its webhook) could send them: parsing and
    //! normalizing never panic, and a text message is normalized exactly. Cases: `PROPTEST_CASES`.
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn chat() -> impl Strategy<Value = (serde_json::Value, Option<ChatType>, i64)> {
        (any::<i64>(), 0..4usize).prop_map(|(id, kind)| match kind {
            0 => (
                json!({"id": id, "type": "private", "first_name": "A"}),
                Some(ChatType::Direct),
                id,
            ),
            1 => (
                json!({"id": id, "type": "group", "title": "G"}),
                Some(ChatType::Group),
                id,
            ),
            2 => (
                json!({"id": id, "type": "supergroup", "title": "S"}),
                Some(ChatType::Group),
                id,
            ),
            _ => (json!({"id": id, "type": "channel", "title": "C"}), None, id),
        })
    }

    proptest! {
        #[test]
        fn prop_telegram_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(update) = serde_json::from_slice::<Update>(&body) {
                let _ = normalize(&update, &BotIdentity::default());
            }
        }

        #[test]
        fn prop_telegram_update_normalizes_exactly(
            update_id in any::<u32>(),
            message_id in any::<i32>(),
            (chat, chat_type, chat_id) in chat(),
            sender in 1..i64::MAX,
            is_bot in any::<bool>(),
            text in proptest::option::of("[^\u{0}]{0,30}"),
            reply_to in proptest::option::of(any::<i32>()),
        ) {
            let mut message = json!({
                "message_id": message_id, "date": 1_700_000_000,
                "chat": chat,
                "from": {"id": sender, "is_bot": is_bot, "first_name": "Ada"},
            });
            if let Some(t) = &text {
                message["text"] = json!(t);
            }
            if let Some(r) = reply_to {
                message["reply_to_message"] = json!({
                    "message_id": r, "date": 1_700_000_000, "chat": message["chat"].clone(), "text": "q"
                });
            }
            let raw = json!({"update_id": update_id, "message": message}).to_string();
            let update = serde_json::from_str::<Update>(&raw)
                .map_err(|e| TestCaseError::fail(format!("not an update ({e}): {raw}")))?;
            let got = normalize(&update, &BotIdentity::default());
            let answerable = !is_bot
                && chat_type.is_some()
                && text.as_deref().is_some_and(|t| !t.trim().is_empty());
            match got {
                None => prop_assert!(!answerable, "{raw} was not normalized"),
                Some(m) => {
                    prop_assert!(answerable, "{raw} normalized as {m:?}");
                    prop_assert_eq!(m.channel_message_id, format!("{chat_id}:{message_id}"));
                    prop_assert_eq!(m.chat_id, chat_id.to_string());
                    prop_assert_eq!(Some(m.chat_type), chat_type);
                    prop_assert_eq!(m.sender_id, sender.to_string());
                    prop_assert_eq!(Some(m.text), text);
                    prop_assert_eq!(m.reply_to, reply_to.map(|r| format!("{chat_id}:{r}")));
                }
            }
        }

        #[test]
        fn prop_telegram_retry_after_is_bounded(secs in any::<u32>()) {
            let e = classify(&RequestError::RetryAfter(teloxide::types::Seconds::from_seconds(secs)));
            match e {
                SendError::Retryable { retry_after: Some(d), .. } => {
                    prop_assert!(d <= super::super::MAX_PLATFORM_DELAY);
                    prop_assert_eq!(d, Duration::from_secs(u64::from(secs)).min(super::super::MAX_PLATFORM_DELAY));
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
