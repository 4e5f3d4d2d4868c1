//! The iMessage channel through a BlueBubbles server running on a Mac signed in to iMessage:
//! its webhook in, its REST API out (`POST {server_url}/api/v1/message/text`), both
//! authenticated by the server password in the query string (`?password=`). It owns
//! `[channels.imessage]`, the webhook route on `webhook_path`, the sender ([`sender`]) and a
//! listener that keeps the server in sight and catches up on what the webhook missed; the
//! message shape and its normalization are in [`payload`].
//!
//! The webhook (`POST {webhook_path}?password=…`) is refused with 401, and nothing stored,
//! unless the password matches (compared in constant time: BlueBubbles signs nothing). A
//! `new-message` event from someone else (`isFromMe: false`) becomes an inbox message: the
//! dedupe key is the message `guid`, the chat is `chats[0].guid` (`;+;` a group, `;-;` a direct
//! chat), the sender `handle.address`, a reply keeps `threadOriginatorGuid`, attachments are
//! kept by their guid. The gateway's own messages (`isFromMe: true`, which BlueBubbles also
//! reports, its replies included) and every other event are acknowledged and never answered; a
//! message without a chat or a sender is acknowledged and logged. The webhook answers 200 only
//! after the message is committed (503 otherwise).
//!
//! BlueBubbles replays old webhooks after its own restart, and never retries a failed one. So
//! a message older than the inbox keeps dedupe keys (`store.dedupe_window`) is dropped, since
//! its key may be gone and it would be answered again; and the listener catches up: it pings the
//! server, then asks `message/query` for every message since the watermark (`after`, inclusive,
//! never earlier than the dedupe window; `sort` `ASC`, paged by `limit` and `offset`), commits
//! those from others (the dedupe absorbs the ones the webhook brought), and advances the
//! watermark (`last_message_ms`) after each page to the newest `dateCreated` in it. It does so at
//! start, after every reconnect, and every `catch_up_interval` (15 s) between them, so a webhook that
//! never came (the gateway was down or unreachable, or answered 503) is made up within that
//! interval. Only the catch-up moves the watermark: a webhook's message may be newer than one
//! that never arrived, and must not carry the watermark past it. The very first start only sets
//! the watermark to now: the Mac's history is not answered. A failed catch-up ends the
//! connection, and the shared supervisor backs off and reconnects (a 401 holds the channel for
//! re-authentication).
//!
//! Sending: replies are split at 4000 characters; `send_method` is `apple-script` (the default,
//! which cannot reply to a given message) or `private-api` (the first chunk then carries
//! `selectedMessageGuid`, a threaded reply). Each chunk's `tempGuid` is stable across retries, so
//! a retry BlueBubbles already has queued is counted as sent; a send cut at `request_timeout`
//! (private-api sends can hang) is retried; a 500 `iMessage Error` is retried, a 401 holds the
//! channel, another 400 is a dead letter.

pub mod payload;
pub mod sender;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ChannelSender;
use super::adapter::{BuildEnv, ChannelAdapter, Cursors, ListenerCtx, Route, WebhookCtx};
use super::supervise::{Connection, Link, keep_connected, stopped};
use super::webhook::{error, read_body};
use crate::config::{
    Config, ConfigError, HOUR, HumanDuration, MIN, Number, NumericKey, SEC, channel_key,
    check_secret, check_url, millis,
};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::{ChannelKind, now_ms};
use crate::send::{Limit, SendError, Unit};

pub use sender::BlueBubbles;

/// The iMessage channel.
pub const KIND: ChannelKind = ChannelKind::new("imessage");
/// Largest webhook body accepted.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The length of one message the channel sends.
pub const LIMIT: Limit = Limit {
    max: 4000,
    unit: Unit::Chars,
};
/// The default webhook path.
pub const DEFAULT_WEBHOOK_PATH: &str = "/channels/imessage/webhook";
/// The watermark: `dateCreated` (ms) of the newest committed message.
pub const CURSOR: &str = "last_message_ms";
/// How often the listener catches up between reconnects by default (each catch-up also proves
/// the server is reachable).
pub const DEFAULT_CATCH_UP_INTERVAL: Duration = Duration::from_secs(15);
/// Messages asked for per `message/query` page.
pub const PAGE: u64 = 100;

/// How BlueBubbles sends a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMethod {
    /// Through AppleScript driving Messages.app (works everywhere; no threaded replies).
    AppleScript,
    /// Through the Private API helper (threaded replies; needs SIP partly disabled).
    PrivateApi,
}

impl SendMethod {
    /// The name BlueBubbles and the config use.
    pub fn as_str(self) -> &'static str {
        match self {
            SendMethod::AppleScript => "apple-script",
            SendMethod::PrivateApi => "private-api",
        }
    }

    /// The method named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "apple-script" => Some(SendMethod::AppleScript),
            "private-api" => Some(SendMethod::PrivateApi),
            _ => None,
        }
    }
}

/// `[channels.imessage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IMessageConfig {
    /// Connect the BlueBubbles server.
    pub enabled: bool,
    /// The BlueBubbles server, e.g. `http://192.168.1.20:1234`.
    pub server_url: String,
    /// Environment variable holding the server password.
    pub password_env: Option<String>,
    /// File holding the server password (alternative to `password_env`).
    pub password_file: Option<PathBuf>,
    /// The path on the HTTP listener that BlueBubbles' webhook calls.
    pub webhook_path: String,
    /// `apple-script` or `private-api`.
    pub send_method: String,
    /// How long one request to the server may take (a send included).
    pub request_timeout: HumanDuration,
    /// How often the listener asks the server for messages the webhook did not bring.
    pub catch_up_interval: HumanDuration,
}

impl Default for IMessageConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            server_url: String::new(),
            password_env: None,
            password_file: None,
            webhook_path: DEFAULT_WEBHOOK_PATH.to_owned(),
            send_method: SendMethod::AppleScript.as_str().to_owned(),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            catch_up_interval: HumanDuration(DEFAULT_CATCH_UP_INTERVAL),
        }
    }
}

/// The iMessage adapter: the server's API and the webhook's password.
pub struct IMessageAdapter {
    api: Arc<BlueBubbles>,
    password: Arc<str>,
    webhook_path: String,
    catch_up_interval: Duration,
}

/// What the webhook handler needs (the inbox comes with the routes).
#[derive(Clone)]
struct Hook {
    password: Arc<str>,
    inbox: Option<Arc<Inbox>>,
    inbound_kept: Duration,
    body_timeout: Duration,
}

impl ChannelAdapter for IMessageAdapter {
    const KIND: ChannelKind = KIND;
    type Config = IMessageConfig;
    const NUMERIC_KEYS: &'static [NumericKey] = &[
        channel_key(
            "channels.imessage.request_timeout",
            millis(SEC, 5 * MIN),
            Some(Number::Duration(Duration::from_secs(30))),
        ),
        channel_key(
            "channels.imessage.catch_up_interval",
            millis(SEC, HOUR),
            Some(Number::Duration(DEFAULT_CATCH_UP_INTERVAL)),
        ),
    ];

    fn enabled(config: &IMessageConfig) -> bool {
        config.enabled
    }

    fn validate(im: &IMessageConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_owned(),
                line: None,
                message,
            });
        };
        if !im.server_url.is_empty()
            && let Err(e) = check_url("channels.imessage.server_url", &im.server_url)
        {
            err(&e.path, e.message);
        }
        if !im.webhook_path.starts_with('/') {
            err(
                "channels.imessage.webhook_path",
                format!(
                    "`{}` must start with `/`, e.g. \"{DEFAULT_WEBHOOK_PATH}\"",
                    im.webhook_path
                ),
            );
        }
        if SendMethod::parse(&im.send_method).is_none() {
            err(
                "channels.imessage.send_method",
                format!(
                    "`{}` is not a send method: use \"apple-script\" (the default) or \"private-api\" (threaded replies; needs the BlueBubbles Private API helper)",
                    im.send_method
                ),
            );
        }
        if !im.enabled {
            return errors;
        }
        if im.server_url.is_empty() {
            err(
                "channels.imessage.server_url",
                "required: the BlueBubbles server's address, e.g. \"http://192.168.1.20:1234\""
                    .to_owned(),
            );
        }
        if let Some(e) = check_secret(
            "channels.imessage",
            "password",
            "the BlueBubbles server password",
            &im.password_env,
            &im.password_file,
            true,
        ) {
            err(&e.path, e.message);
        }
        errors
    }

    fn default_rates() -> RateSettings {
        // One Mac sends every message through Messages.app, one at a time: 1/s, no burst.
        RateSettings {
            per_second: Some(1.0),
            burst: Some(1),
            per_chat_per_second: None,
            per_chat_burst: None,
        }
    }

    fn build(im: &IMessageConfig, _: &BuildEnv) -> anyhow::Result<Self> {
        let password = Config::secret(
            "channels.imessage.password",
            &im.password_env,
            &im.password_file,
        )
        .map_err(|e| anyhow::anyhow!(e))?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("channels.imessage.password_env is required (or password_file); set it")
        })?;
        let method = SendMethod::parse(&im.send_method).ok_or_else(|| {
            anyhow::anyhow!(
                "channels.imessage.send_method must be \"apple-script\" or \"private-api\""
            )
        })?;
        let api = BlueBubbles::new(&im.server_url, &password, im.request_timeout.get(), method)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            api: Arc::new(api),
            password: password.into(),
            webhook_path: im.webhook_path.clone(),
            catch_up_interval: im.catch_up_interval.get(),
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.api.clone()
    }

    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route> {
        let hook = Hook {
            password: self.password.clone(),
            inbox: Some(ctx.inbox.clone()),
            inbound_kept: ctx.inbound_kept,
            body_timeout: ctx.body_timeout,
        };
        vec![Route {
            path: self.webhook_path.clone(),
            handler: post(webhook)
                .layer(DefaultBodyLimit::disable())
                .with_state(hook),
        }]
    }

    fn disabled_routes() -> Vec<Route> {
        let disabled = || async {
            error(
                StatusCode::NOT_FOUND,
                "the iMessage channel is disabled; set channels.imessage.enabled = true".to_owned(),
            )
        };
        vec![Route {
            path: DEFAULT_WEBHOOK_PATH.to_owned(),
            handler: post(disabled),
        }]
    }

    fn announce(&self, http: std::net::SocketAddr) -> Vec<String> {
        vec![format!(
            "iMessage webhook: http://{http}{}?password=<the server password> (add it in BlueBubbles > API & Webhooks, at an address the Mac can reach)",
            self.webhook_path
        )]
    }

    async fn run(self: Arc<Self>, ctx: ListenerCtx) {
        let listener = Listener {
            api: self.api.clone(),
            inbox: ctx.inbox.clone(),
            cursors: ctx.cursors.clone(),
            inbound_kept: ctx.inbound_kept,
            interval: self.catch_up_interval,
        };
        keep_connected(KIND.as_str(), listener, &ctx).await;
    }
}

/// Milliseconds of `d`, saturated.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Committed (or already committed before): the watermark may move to it.
    Committed,
    /// Not for the inbox (the gateway's own, a tapback, unanswerable) or too old.
    Passed,
}

/// Commits one message (a webhook's or a catch-up's) unless it is not for the inbox or older
/// than the dedupe keys are kept. `Err` is the store's refusal.
async fn take(
    inbox: &Inbox,
    m: &Value,
    inbound_kept: Duration,
    via: &str,
) -> Result<Taken, String> {
    let msg = match payload::normalize(m) {
        Ok(msg) => msg,
        Err(skip) => {
            let guid = m["guid"].as_str().unwrap_or_default();
            if skip.is_warning() {
                tracing::warn!(message = "iMessage message acknowledged but not answered: there is nothing to answer.", channel = %KIND, via, guid, reason = skip.reason());
            } else {
                tracing::debug!(message = "iMessage message acknowledged, not answered.", channel = %KIND, via, guid, reason = skip.reason());
            }
            return Ok(Taken::Passed);
        }
    };
    let oldest = now_ms().saturating_sub(ms(inbound_kept));
    if msg.received_at_ms < oldest {
        tracing::info!(
            message = "iMessage message older than store.dedupe_window dropped: a replay whose dedupe key may be gone would be answered again.",
            channel = %KIND,
            via,
            guid = %msg.channel_message_id,
            date_created_ms = msg.received_at_ms
        );
        return Ok(Taken::Passed);
    }
    inbox
        .accept(msg)
        .await
        .map(|_duplicate| Taken::Committed)
        .map_err(|e| e.to_string())
}

/// A POST of BlueBubbles' webhook.
async fn webhook(
    State(hook): State<Hook>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(inbox) = hook.inbox.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the iMessage channel is not started".to_owned(),
        );
    };
    let given = query
        .get("password")
        .map(String::as_str)
        .unwrap_or_default();
    let matches: bool = {
        use subtle::ConstantTimeEq;
        given.as_bytes().ct_eq(hook.password.as_bytes()).into()
    };
    if !matches {
        let why = if given.is_empty() {
            "missing ?password= (the BlueBubbles server password)"
        } else {
            "?password= does not match channels.imessage.password_env"
        };
        tracing::warn!(message = "iMessage webhook refused.", channel = %KIND, error = why);
        return error(StatusCode::UNAUTHORIZED, why.to_owned());
    }
    let too_large = || format!("body is larger than {BODY_LIMIT} bytes");
    let body = match read_body(&headers, body, BODY_LIMIT, hook.body_timeout, too_large).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a BlueBubbles webhook event: the body is not JSON: {e}"),
            );
        }
    };
    let Some(kind) = event["type"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "not a BlueBubbles webhook event: expected {\"type\": \"new-message\", \"data\": {…}}"
                .to_owned(),
        );
    };
    if kind != "new-message" {
        tracing::debug!(message = "iMessage webhook event acknowledged, not answered.", channel = %KIND, event = kind);
        return ok();
    }
    let data = &event["data"];
    match take(&inbox, data, hook.inbound_kept, "webhook").await {
        Ok(_) => ok(),
        Err(e) => {
            tracing::error!(message = "Cannot commit an iMessage message; the listener's next catch-up fetches it again.", channel = %KIND, guid = data["guid"].as_str().unwrap_or_default(), error = %e);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the message right now".to_owned(),
            )
        }
    }
}

fn ok() -> Response {
    (StatusCode::OK, Json(json!({"ok": true}))).into_response()
}

/// The listener's connection: a ping, a catch-up, then a catch-up every `catch_up_interval`.
struct Listener {
    api: Arc<BlueBubbles>,
    inbox: Arc<Inbox>,
    cursors: Cursors,
    inbound_kept: Duration,
    interval: Duration,
}

impl Listener {
    /// Commits every message since the watermark; see the module documentation.
    async fn catch_up(&self, link: &Link) -> Result<(), SendError> {
        let store = |e: String| SendError::retryable(format!("the store refused: {e}"));
        let Some(cursor) = self.cursors.get(KIND, CURSOR).await.map_err(store)? else {
            let now = now_ms();
            self.cursors
                .advance(KIND, CURSOR, now)
                .await
                .map_err(store)?;
            tracing::info!(message = "iMessage catch-up starts from now: the first start answers nothing of the Mac's history.", channel = %KIND, after_ms = now);
            return Ok(());
        };
        let after = cursor.max(now_ms().saturating_sub(ms(self.inbound_kept)));
        let mut offset: u64 = 0;
        let mut committed = 0usize;
        loop {
            if link.stopping() {
                return Ok(());
            }
            let body = json!({
                "limit": PAGE, "offset": offset, "after": after, "sort": "ASC",
                "with": ["chat", "handle"],
            });
            let (page, total) = self.api.query(&body).await?;
            let mut newest: Option<i64> = None;
            for m in &page {
                if take(&self.inbox, m, self.inbound_kept, "catch-up")
                    .await
                    .map_err(store)?
                    == Taken::Committed
                {
                    committed += 1;
                }
                newest = newest.max(payload::date_created(m));
            }
            if let Some(newest) = newest {
                self.cursors
                    .advance(KIND, CURSOR, newest)
                    .await
                    .map_err(store)?;
            }
            offset = offset.saturating_add(u64::try_from(page.len()).unwrap_or(u64::MAX));
            if (page.len() as u64) < PAGE || total.is_some_and(|t| offset >= t) {
                break;
            }
        }
        tracing::info!(message = "iMessage catch-up done.", channel = %KIND, after_ms = after, fetched = offset, committed);
        Ok(())
    }
}

impl Connection for Listener {
    async fn connect(&mut self, link: &mut Link) -> Result<(), SendError> {
        // Every request is cut by the gateway's stop: a catch-up cut between its commit and its
        // watermark only fetches that page again next time.
        let mut shutdown = link.shutdown.clone();
        tokio::select! {
            r = self.api.ping() => r?,
            () = stopped(&mut shutdown) => return Ok(()),
        }
        link.connected();
        tokio::select! {
            r = self.catch_up(link) => r?,
            () = stopped(&mut shutdown) => return Ok(()),
        }
        let start = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(start, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stopped(&mut shutdown) => return Ok(()),
            }
            tokio::select! {
                r = self.api.ping() => r?,
                () = stopped(&mut shutdown) => return Ok(()),
            }
            tokio::select! {
                r = self.catch_up(link) => r?,
                () = stopped(&mut shutdown) => return Ok(()),
            }
        }
    }

    fn failure_message(&self) -> &'static str {
        "BlueBubbles server unreachable; reconnecting, then catching up."
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<crate::config::Config, Vec<ConfigError>> {
        super::super::registry::parse_config(text)
    }

    #[test]
    fn the_section_is_checked_with_full_key_paths() {
        let errs = parse(
            "[channels.imessage]\nenabled = true\nserver_url = \"ftp://mac\"\nwebhook_path = \"hook\"\n\
             send_method = \"carrier-pigeon\"\npassword_env = \"IM_TEST_UNSET_PASSWORD\"\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for key in [
            "channels.imessage.server_url",
            "channels.imessage.webhook_path",
            "channels.imessage.send_method",
            "channels.imessage.password_env",
        ] {
            assert!(paths.contains(&key), "{key} in {errs:?}");
        }
        let method = errs
            .iter()
            .find(|e| e.path == "channels.imessage.send_method")
            .expect("the send method's error");
        assert!(
            method.message.contains("apple-script") && method.message.contains("private-api"),
            "both methods are named: {method:?}"
        );
        let unset = errs
            .iter()
            .find(|e| e.path == "channels.imessage.password_env")
            .expect("the password's error");
        assert!(
            unset
                .message
                .contains("`IM_TEST_UNSET_PASSWORD` is not set or empty; export it"),
            "{unset:?}"
        );
    }

    #[test]
    fn an_enabled_section_needs_a_server_and_a_password() {
        let errs = parse("[channels.imessage]\nenabled = true\n").expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"channels.imessage.server_url")
                && paths.contains(&"channels.imessage.password_env"),
            "{errs:?}"
        );
        let errs = parse(
            "[channels.webchat]\nenabled = true\n[channels.imessage]\nrequest_timeout = \"10m\"\n",
        )
        .expect_err("out of range");
        assert!(
            errs.iter()
                .any(|e| e.path == "channels.imessage.request_timeout"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_a_disabled_section_needs_no_secrets() {
        let errs =
            parse("[channels.webchat]\nenabled = true\n[channels.imessage]\npassword = \"x\"\n")
                .expect_err("unknown key");
        assert!(
            errs.iter().any(|e| e.path.starts_with("channels.imessage")),
            "{errs:?}"
        );
        parse("[channels.webchat]\nenabled = true\n[channels.imessage]\nenabled = false\nsend_method = \"private-api\"\n")
            .expect("a disabled section without a server or secrets is valid");
        let errs = parse(
            "[channels.webchat]\nenabled = true\n[channels.imessage]\nsend_method = \"applescript\"\n",
        )
        .expect_err("a disabled section's send method is still checked");
        assert!(
            errs.iter()
                .any(|e| e.path == "channels.imessage.send_method"),
            "{errs:?}"
        );
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = IMessageConfig::default();
        assert_eq!(c.webhook_path, "/channels/imessage/webhook");
        assert_eq!(c.send_method, "apple-script");
        assert_eq!(c.request_timeout.get(), Duration::from_secs(30));
        let r = IMessageAdapter::default_rates();
        assert_eq!(
            (
                r.per_second,
                r.burst,
                r.per_chat_per_second,
                r.per_chat_burst
            ),
            (Some(1.0), Some(1), None, None)
        );
        assert_eq!(
            SendMethod::parse("private-api"),
            Some(SendMethod::PrivateApi)
        );
        assert_eq!(
            SendMethod::parse("apple-script"),
            Some(SendMethod::AppleScript)
        );
        assert_eq!(SendMethod::parse("AppleScript"), None);
    }
}
