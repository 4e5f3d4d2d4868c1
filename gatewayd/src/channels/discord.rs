//! The Discord channel (serenity): the gateway in, REST `POST /channels/{id}/messages` out.
//!
//! The bot connects with the intents for direct messages, guild messages and message content.
//! serenity keeps the gateway alive (heartbeats, resume after a dropped socket, reconnects); its
//! shard stage changes drive the channel's health. Direct messages are direct chats; guild
//! channels are group chats keyed by channel id; a guild message is `mentioned` when it mentions
//! the bot or replies to it (the mention is removed from the text), for the access checks'
//! mention rule (`require_mention_in_groups`, alias `require_mention_in_guilds`). Messages
//! from bots, including this one, are ignored. Replies are split at 2000 characters and the first
//! chunk references the message it answers. The token is checked with `GET /users/@me` before
//! each connection, so an invalid token ends as `ReauthNeeded` instead of a reconnect loop, and so
//! does a gateway close for failed authentication. Replies are sent with our own REST client, so a
//! 429's `retry_after` (and whether it is `global`) reaches delivery, which pauses exactly that
//! long; 401 is an auth problem, 403 (missing permissions) and other 4xx are permanent.
//!
//! In multi-instance mode the gateway connection runs on one instance, under the lease
//! `conn:discord`, and is our own client of the gateway protocol (`discord/resumable.rs`), so
//! that the next holder RESUMEs the session the last one stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serenity::all::{
    Context, EventHandler, GatewayIntents, Http, HttpBuilder, Message, Ready, ResumedEvent,
};
use serenity::gateway::{ConnectionStage, GatewayError, ShardStageUpdateEvent};

use std::path::PathBuf;

use serde::Deserialize;

use super::adapter::{BuildEnv, ChannelAdapter, HealthReporter, ListenerCtx};
use super::supervise::{Connection, Link, keep_connected, stopped};
use super::{ChannelSender, ErrorClass, OutgoingChunk, SendError, classify_status};
use crate::config::{Config, ConfigError, check_secret, check_url};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::{Attachment, ChannelKind, ChatType, InboundMessage, now_ms};
use crate::send::{Limit, Sent, Unit};

mod resumable;

/// The Discord channel.
pub const KIND: ChannelKind = ChannelKind::new("discord");

/// Discord's limit on one message.
pub const LIMIT: Limit = Limit {
    max: 2000,
    unit: Unit::Chars,
};

/// The intents the bot asks for.
pub fn intents() -> GatewayIntents {
    GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
}

/// serenity's REST client for `api_url` (the real `https://discord.com`, or a proxy in front of
/// it; serenity's own rate limiter would bypass a proxy, so it is off then).
pub fn http(token: &str, api_url: &str) -> Http {
    let builder = HttpBuilder::new(token);
    if api_url.trim_end_matches('/') == "https://discord.com" {
        builder.build()
    } else {
        builder
            .proxy(api_url.trim_end_matches('/'))
            .ratelimiter_disabled(true)
            .build()
    }
}

/// Classifies a serenity error into the delivery classes.
pub fn classify(e: &serenity::Error) -> SendError {
    let text = e.to_string();
    match e {
        serenity::Error::Http(http) => match http.status_code() {
            Some(status) => classify_status(status.as_u16(), None, &text),
            None => SendError::retryable(text),
        },
        serenity::Error::Gateway(
            GatewayError::InvalidAuthentication
            | GatewayError::InvalidGatewayIntents
            | GatewayError::DisallowedGatewayIntents,
        ) => SendError::Auth(text),
        serenity::Error::Model(_) | serenity::Error::Json(_) => SendError::Permanent(text),
        _ => SendError::retryable(text),
    }
}

/// The sending half: REST over its own pooled client.
pub struct DiscordSender {
    client: reqwest::Client,
    api: String,
    authorization: String,
}

impl DiscordSender {
    /// A sender for the bot `token` against `api_url`.
    pub fn new(token: &str, api_url: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("cannot build the Discord HTTP client: {e}"))?;
        Ok(Self {
            client,
            api: format!("{}/api/v10", api_url.trim_end_matches('/')),
            authorization: format!("Bot {token}"),
        })
    }

    async fn request(&self, request: reqwest::RequestBuilder) -> Result<(), SendError> {
        let resp = request
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .send()
            .await
            .map_err(|e| {
                SendError::retryable(format!("Discord unreachable: {}", e.without_url()))
            })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(());
        }
        let header_retry = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_retry_after);
        let global_header = resp
            .headers()
            .get("x-ratelimit-global")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let detail: String = body
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("no message")
            .chars()
            .take(200)
            .collect();
        Err(classify_rest(
            status,
            &body,
            header_retry,
            global_header,
            &detail,
        ))
    }
}

/// Classifies a Discord REST error: 429 carries `retry_after` (body seconds, or the header) and
/// `global`; 401 is auth; 403 (missing permissions) and other 4xx are permanent; 5xx retryable.
fn classify_rest(
    status: u16,
    body: &serde_json::Value,
    header_retry: Option<Duration>,
    global_header: bool,
    detail: &str,
) -> SendError {
    let message = format!("HTTP {status}: {detail}");
    match status {
        429 => SendError::Retryable {
            message,
            retry_after: body
                .get("retry_after")
                .and_then(serde_json::Value::as_f64)
                .and_then(super::platform_delay_secs)
                .or(header_retry),
            global: global_header
                || body.get("global").and_then(serde_json::Value::as_bool) == Some(true),
        },
        401 => SendError::Auth(message),
        s if s >= 500 => SendError::retryable(message),
        _ => SendError::Permanent(message),
    }
}

fn snowflake(id: &str, what: &str) -> Result<u64, SendError> {
    id.parse::<u64>()
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| SendError::Permanent(format!("`{id}` is not a Discord {what} id")))
}

#[async_trait]
impl ChannelSender for DiscordSender {
    fn kind(&self) -> ChannelKind {
        KIND
    }

    fn split_limit(&self) -> Option<Limit> {
        Some(LIMIT)
    }

    async fn send(&self, chunk: &OutgoingChunk<'_>) -> Result<Sent, SendError> {
        let msg = chunk.message;
        let channel = snowflake(&msg.chat_id, "channel")?;
        let mut body = serde_json::json!({
            "content": chunk.text,
            "allowed_mentions": {"parse": []},
        });
        if chunk.index == 0
            && let Some(id) = msg
                .reply_to
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
                .filter(|n| *n != 0)
        {
            body["message_reference"] = serde_json::json!({
                "message_id": id.to_string(),
                "channel_id": channel.to_string(),
                "fail_if_not_exists": false,
            });
        }
        let url = format!("{}/channels/{channel}/messages", self.api);
        self.request(self.client.post(url).json(&body))
            .await
            .map(|()| Sent::default())
    }

    async fn probe(&self) -> Result<(), SendError> {
        let url = format!("{}/users/@me", self.api);
        self.request(self.client.get(url)).await
    }
}

struct Handler {
    inbox: Arc<Inbox>,
    health: HealthReporter,
    bot_id: AtomicU64,
}

/// Turns a gateway message into an inbound message for the bot `bot` (its user id); `None` for
/// what is not answered. The mention rule is applied later, by the access checks, from
/// `mentioned`.
pub(crate) fn normalize_message(msg: &Message, bot: u64) -> Option<InboundMessage> {
    if msg.author.bot {
        return None;
    }
    let guild = msg.guild_id.is_some();
    let mut text = msg.content.clone();
    // `mentioned`: the bot in `mentions`, or a reply to one of its messages.
    let addressed = guild
        && (msg.mentions.iter().any(|u| u.id.get() == bot)
            || msg
                .referenced_message
                .as_ref()
                .is_some_and(|r| r.author.id.get() == bot));
    if guild {
        text = text
            .replace(&format!("<@{bot}>"), "")
            .replace(&format!("<@!{bot}>"), "")
            .trim()
            .to_owned();
    }
    let attachments: Vec<Attachment> = msg
        .attachments
        .iter()
        .map(|a| Attachment {
            kind: a
                .content_type
                .as_deref()
                .and_then(|t| t.split('/').next())
                .map_or("file", |t| match t {
                    "image" => "photo",
                    "video" => "video",
                    "audio" => "audio",
                    _ => "document",
                })
                .to_owned(),
            file_id: a.url.clone(),
            name: Some(a.filename.clone()),
        })
        .collect();
    if text.trim().is_empty() && attachments.is_empty() {
        return None;
    }
    Some(InboundMessage {
        channel: KIND,
        channel_message_id: msg.id.get().to_string(),
        chat_id: msg.channel_id.get().to_string(),
        chat_type: if guild {
            ChatType::Group
        } else {
            ChatType::Direct
        },
        sender_id: msg.author.id.get().to_string(),
        text,
        reply_to: msg
            .message_reference
            .as_ref()
            .and_then(|r| r.message_id)
            .map(|id| id.get().to_string()),
        attachments,
        sender_name: Some(
            msg.author
                .global_name
                .clone()
                .unwrap_or_else(|| msg.author.name.clone()),
        )
        .filter(|n| !n.trim().is_empty()),
        received_at_ms: now_ms(),
        mentioned: addressed,
    })
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _: Context, ready: Ready) {
        self.bot_id.store(ready.user.id.get(), Ordering::Release);
        tracing::info!(message = "Discord gateway ready.", bot = %ready.user.name);
        self.health.connected();
    }

    async fn resume(&self, _: Context, _: ResumedEvent) {
        tracing::info!(message = "Discord gateway session resumed.");
        self.health.connected();
    }

    async fn shard_stage_update(&self, _: Context, event: ShardStageUpdateEvent) {
        if matches!(
            event.new,
            ConnectionStage::Connecting | ConnectionStage::Resuming | ConnectionStage::Disconnected
        ) && event.old == ConnectionStage::Connected
        {
            self.health.failed(
                ErrorClass::Retryable,
                "gateway connection lost; reconnecting",
                Duration::from_secs(1),
            );
        }
    }

    async fn message(&self, _: Context, msg: Message) {
        let bot = self.bot_id.load(Ordering::Acquire);
        let Some(inbound) = normalize_message(&msg, bot) else {
            return;
        };
        if let Err(e) = self.inbox.accept(inbound).await {
            tracing::error!(message = "Cannot commit a Discord message.", message_id = msg.id.get(), error = %e);
        }
    }
}

/// One gateway connection: checks the token (`GET /users/@me`), connects, and runs until the
/// connection ends or the gateway stops. Under a lease (multi-instance mode) the connection is
/// [`resumable::Resumable`], whose session another instance can resume; else serenity's.
struct Gateway {
    token: String,
    api_url: String,
    handler: Arc<Handler>,
    resumable: resumable::Resumable,
}

impl Connection for Gateway {
    fn failure_message(&self) -> &'static str {
        "Discord connection failed."
    }

    async fn connect(&mut self, link: &mut Link) -> Result<(), SendError> {
        let http = http(&self.token, &self.api_url);
        let me = http.get_current_user().await.map_err(|e| classify(&e))?;
        self.handler.bot_id.store(me.id.get(), Ordering::Release);
        if link.lease().is_some() {
            return self.resumable.connect(link).await;
        }
        let mut client = serenity::client::ClientBuilder::new_with_http(http, intents())
            .event_handler_arc(self.handler.clone())
            .await
            .map_err(|e| classify(&e))?;
        let shards = client.shard_manager.clone();
        let result = tokio::select! {
            r = client.start() => r,
            () = stopped(&mut link.shutdown) => {
                shards.shutdown_all().await;
                return Ok(());
            }
        };
        match result {
            Ok(()) => Err(SendError::retryable("the gateway connection ended")),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// `[channels.discord]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscordConfig {
    /// Connect the Discord bot.
    pub enabled: bool,
    /// Environment variable holding the bot token.
    pub token_env: Option<String>,
    /// File holding the bot token (alternative to `token_env`).
    pub token_file: Option<PathBuf>,
    /// The API root (its gateway URL is asked from `GET /api/v10/gateway`).
    pub api_url: String,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_env: None,
            token_file: None,
            api_url: "https://discord.com".to_owned(),
        }
    }
}

/// The Discord adapter: the REST sender and the gateway listener.
pub struct DiscordAdapter {
    token: String,
    api_url: String,
    sender: Arc<DiscordSender>,
}

impl ChannelAdapter for DiscordAdapter {
    const KIND: ChannelKind = KIND;
    const MENTIONS: bool = true;
    type Config = DiscordConfig;

    fn enabled(config: &DiscordConfig) -> bool {
        config.enabled
    }

    fn validate(dc: &DiscordConfig) -> Vec<ConfigError> {
        let mut errors: Vec<ConfigError> = check_url("channels.discord.api_url", &dc.api_url)
            .err()
            .into_iter()
            .collect();
        if !dc.enabled {
            return errors;
        }
        errors.extend(check_secret(
            "channels.discord",
            "token",
            "the bot token",
            &dc.token_env,
            &dc.token_file,
            true,
        ));
        errors
    }

    fn default_rates() -> RateSettings {
        // Discord: 5 per 5 s per channel; 50/s per bot.
        RateSettings {
            per_second: Some(5.0),
            burst: Some(5),
            per_chat_per_second: Some(1.0),
            per_chat_burst: Some(5),
        }
    }

    fn build(dc: &DiscordConfig, _: &BuildEnv) -> anyhow::Result<Self> {
        let token = Config::secret("channels.discord.token", &dc.token_env, &dc.token_file)
            .map_err(|e| anyhow::anyhow!(e))?
            .ok_or_else(|| anyhow::anyhow!("channels.discord.token_env is required"))?;
        let sender = DiscordSender::new(&token, &dc.api_url).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            token,
            api_url: dc.api_url.clone(),
            sender: Arc::new(sender),
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.sender.clone()
    }

    async fn run(self: Arc<Self>, ctx: ListenerCtx) {
        let handler = Arc::new(Handler {
            inbox: ctx.inbox.clone(),
            health: ctx.health.clone(),
            bot_id: AtomicU64::new(0),
        });
        let gateway = Gateway {
            token: self.token.clone(),
            api_url: self.api_url.clone(),
            handler: handler.clone(),
            resumable: resumable::Resumable {
                token: self.token.clone(),
                api_url: self.api_url.clone(),
                handler,
                http: ctx.http.clone(),
                session: None,
                loaded_epoch: None,
            },
        };
        keep_connected(KIND.as_str(), gateway, &ctx).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_errors_are_classified() {
        let body = serde_json::json!({"message": "You are being rate limited.", "retry_after": 1.5, "global": false});
        match classify_rest(429, &body, Some(Duration::from_secs(2)), false, "limited") {
            SendError::Retryable {
                retry_after,
                global,
                ..
            } => {
                assert_eq!(
                    retry_after,
                    Some(Duration::from_millis(1500)),
                    "the body is more precise"
                );
                assert!(!global);
            }
            other => panic!("{other:?}"),
        }
        let null = serde_json::Value::Null;
        assert!(matches!(
            classify_rest(429, &null, Some(Duration::from_secs(2)), true, "x"),
            SendError::Retryable {
                retry_after: Some(_),
                global: true,
                ..
            }
        ));
        for (status, class) in [
            (401, ErrorClass::Auth),
            (403, ErrorClass::Permanent),
            (404, ErrorClass::Permanent),
            (502, ErrorClass::Retryable),
        ] {
            assert_eq!(
                classify_rest(status, &null, None, false, "x").class(),
                class,
                "{status}"
            );
        }
    }
}

#[cfg(test)]
mod props {
    //! Generated Discord payloads: a 429 body's `retry_after` of any value (negative, NaN, huge,
    //! not a number) never panics and never asks for more than the cap; gateway messages
    //! normalize exactly. Cases: `PROPTEST_CASES`.
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::send::MAX_PLATFORM_DELAY;

    fn message(
        id: u64,
        channel: u64,
        author: u64,
        bot: bool,
        content: &str,
        guild: Option<u64>,
    ) -> serde_json::Value {
        let mut m = json!({
            "id": id.to_string(), "channel_id": channel.to_string(),
            "author": {"id": author.to_string(), "username": "ada", "discriminator": "0000",
                       "avatar": null, "bot": bot, "global_name": null},
            "content": content, "timestamp": "2024-01-01T00:00:00.000000+00:00",
            "edited_timestamp": null, "tts": false, "mention_everyone": false,
            "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": false, "type": 0,
        });
        if let Some(g) = guild {
            m["guild_id"] = json!(g.to_string());
        }
        m
    }

    #[test]
    fn a_gateway_message_parses() {
        let m: Message = serde_json::from_value(message(1, 2, 3, false, "hi", None))
            .expect("the generated shape is a Discord message");
        let n = normalize_message(&m, 99).expect("a direct message is answered");
        assert_eq!(
            (
                n.channel_message_id.as_str(),
                n.chat_id.as_str(),
                n.text.as_str()
            ),
            ("1", "2", "hi")
        );
    }

    #[test]
    fn a_guild_message_is_mentioned_by_the_bots_id_or_a_reply_to_the_bot() {
        let user = |id: u64, bot: bool| {
            json!({"id": id.to_string(), "username": "u", "discriminator": "0000",
                   "avatar": null, "bot": bot, "global_name": null})
        };
        let normalized = |extra: serde_json::Value, guild: Option<u64>| {
            let mut raw = message(1, 2, 3, false, "hello there", guild);
            if let (Some(m), Some(extra)) = (raw.as_object_mut(), extra.as_object()) {
                m.extend(extra.clone());
            }
            let m: Message = serde_json::from_value(raw).expect("a Discord message");
            normalize_message(&m, 99)
        };
        let to_bot = json!({"mentions": [user(99, true)]});
        let to_other = json!({"mentions": [user(7, false)]});
        let reply = |author: u64| {
            let mut r = message(5, 2, author, author == 99, "earlier", Some(10));
            r["author"] = user(author, author == 99);
            json!({"referenced_message": r, "message_reference": {"message_id": "5", "channel_id": "2"}})
        };
        let flag = |extra| normalized(extra, Some(10)).map(|n| n.mentioned);
        assert_eq!(flag(to_bot.clone()), Some(true), "the bot in mentions");
        assert_eq!(flag(to_other), Some(false), "someone else mentioned");
        assert_eq!(flag(json!({})), Some(false), "no mention");
        assert_eq!(flag(reply(99)), Some(true), "a reply to the bot");
        assert_eq!(flag(reply(7)), Some(false), "a reply to someone else");
        assert_eq!(
            normalized(to_bot, None).map(|n| n.mentioned),
            Some(false),
            "a direct message is never `mentioned`"
        );
    }

    proptest! {
        #[test]
        fn prop_discord_429_retry_after_is_bounded(
            secs in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), Just(1e300), Just(-0.0)],
            header in proptest::option::of(0..100_000u64),
            global in any::<bool>(),
        ) {
            let body = json!({"message": "You are being rate limited.", "retry_after": secs, "global": global});
            let header = header.map(Duration::from_secs);
            match classify_rest(429, &body, header, false, "limited") {
                SendError::Retryable { retry_after, global: g, .. } => {
                    prop_assert_eq!(g, global);
                    if let Some(d) = retry_after {
                        prop_assert!(d <= MAX_PLATFORM_DELAY.max(header.unwrap_or_default()));
                    }
                    if secs.is_finite() && secs >= 0.0 {
                        prop_assert!(retry_after.is_some());
                    }
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }

        #[test]
        fn prop_discord_error_body_never_panics(
            status in 400..600u16,
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let _ = classify_rest(status, &body, None, false, "x");
        }

        #[test]
        fn prop_retry_after_header_never_panics(value in any::<String>()) {
            if let Some(d) = crate::send::parse_retry_after(&value) {
                prop_assert!(d <= MAX_PLATFORM_DELAY);
            }
        }

        #[test]
        fn prop_retry_after_header_numbers(secs in any::<u64>(), frac in proptest::option::of(0..1000u32)) {
            let value = match frac {
                Some(f) => format!("{secs}.{f:03}"),
                None => secs.to_string(),
            };
            let d = crate::send::parse_retry_after(&value);
            prop_assert!(d.is_some_and(|d| d <= MAX_PLATFORM_DELAY), "{value}: {d:?}");
        }

        #[test]
        fn prop_discord_message_normalizes_exactly(
            id in 1..u64::MAX, channel in 1..u64::MAX, author in 1..u64::MAX,
            bot in any::<bool>(),
            content in "[^\u{0}]{0,30}",
            guild in proptest::option::of(1..u64::MAX),
        ) {
            let raw = message(id, channel, author, bot, &content, guild);
            let Ok(m) = serde_json::from_value::<Message>(raw.clone()) else {
                return Err(TestCaseError::fail(format!("not a message: {raw}")));
            };
            let got = normalize_message(&m, 42);
            let answerable = !(bot || content.trim().is_empty());
            match got {
                None => prop_assert!(!answerable, "{raw} was not normalized"),
                Some(n) => {
                    prop_assert!(answerable, "{raw} normalized as {n:?}");
                    prop_assert_eq!(n.channel_message_id, id.to_string());
                    prop_assert_eq!(n.chat_id, channel.to_string());
                    prop_assert_eq!(n.sender_id, author.to_string());
                    prop_assert_eq!(n.chat_type, if guild.is_some() { ChatType::Group } else { ChatType::Direct });
                    let expected = if guild.is_some() { content.trim().to_owned() } else { content.clone() };
                    prop_assert_eq!(n.text, expected);
                }
            }
        }
    }
}
