//! The WhatsApp channel on Meta's official WhatsApp Cloud API (not WhatsApp Web): a signed
//! webhook in, `POST {api_url}/{phone_number_id}/messages` out. It owns `[channels.whatsapp]`,
//! the webhook routes on `webhook_path` (GET for Meta's verification handshake, POST for
//! messages and statuses) and the sender ([`sender`]); the payload and its normalization are in
//! [`payload`].
//!
//! The webhook answers the GET handshake with `hub.challenge` only for `hub.mode=subscribe` and
//! the configured verify token (else 403). A POST is refused with 401, and nothing stored,
//! unless `X-Hub-Signature-256` is the HMAC-SHA256 of the raw body under the app secret
//! (checked in constant time, before parsing; Meta's signature has no timestamp, so there is no
//! staleness check: a replay of a signed body is answered once by the inbox's dedupe). It
//! answers 200 only after every message of the POST is committed to the inbox (503 otherwise,
//! and Meta redelivers; the inbox dedupes on the `wamid`). Changes for another phone number id
//! than `phone_number_id` are acknowledged and ignored (logged): one app can serve several
//! numbers, and another number's webhook is not this gateway's.
//!
//! Normalization: WhatsApp Cloud API conversations are one-to-one (the API has no group chats),
//! so every chat is direct: chat and sender are the sender's `wa_id`, the dedupe key is the
//! `wamid`, and a reply keeps `context.id`. Text is `text.body` or the media caption; image,
//! audio, video, document and sticker become attachments by media id (kind as WhatsApp names
//! it, a document's file name); a location and shared contacts become a bracketed text line;
//! a button or list choice is its title as text. Reactions, `unsupported`, `system`, `order`
//! and unknown types are acknowledged and not answered. The sender's profile name is only
//! logged at debug level: an inbound message has no field for it. Status events (`sent`,
//! `delivered`, `read`, `failed`) are recorded on the reply they belong to, by its `wamid`
//! (a `failed` one with `"{code} {title}: {message} ({details})"`), where `gatewayctl outbox
//! list` shows them; one that cannot be recorded gets a 503, so Meta sends it again.
//!
//! Sending: replies are split at 4096 characters; the first chunk carries `context.message_id`,
//! and each chunk's `wamid` is handed to delivery for its receipts. The sender declares the
//! 24-hour customer-service window ([`sender::REPLY_WINDOW`]): delivery dead-letters a reply to a
//! chat whose last message is older, saying why, without sending it.
//! Errors are classed by `error.code` ([`sender::classify`]): rate limits retry, token and
//! permission codes hold the channel for re-authentication, 131047 (outside the 24-hour
//! window) and 131026 (undeliverable) are dead letters that say why.

pub mod payload;
pub mod sender;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::ChannelSender;
use super::adapter::{BuildEnv, ChannelAdapter, ReceiptStatus, Receipts, Route, WebhookCtx};
use super::webhook::{error, read_body};
use crate::config::{
    Config, ConfigError, HumanDuration, MIN, Number, NumericKey, SEC, channel_key, check_secret,
    check_url, millis,
};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::ChannelKind;
use crate::send::{Limit, Unit};

pub use sender::WhatsAppSender;

/// The WhatsApp channel.
pub const KIND: ChannelKind = ChannelKind::new("whatsapp");
/// Largest webhook body accepted.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The Cloud API's limit on `text.body`.
pub const LIMIT: Limit = Limit {
    max: 4096,
    unit: Unit::Chars,
};
/// The default webhook path.
pub const DEFAULT_WEBHOOK_PATH: &str = "/channels/whatsapp/webhook";

/// `[channels.whatsapp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhatsAppConfig {
    /// Connect the WhatsApp Business number.
    pub enabled: bool,
    /// Environment variable holding the access token (a system user's permanent token).
    pub access_token_env: Option<String>,
    /// File holding the access token (alternative to `access_token_env`).
    pub access_token_file: Option<PathBuf>,
    /// Environment variable holding the app secret, which signs every webhook POST.
    pub app_secret_env: Option<String>,
    /// File holding the app secret (alternative to `app_secret_env`).
    pub app_secret_file: Option<PathBuf>,
    /// Environment variable holding the verify token of the webhook's GET handshake.
    pub verify_token_env: Option<String>,
    /// File holding the verify token (alternative to `verify_token_env`).
    pub verify_token_file: Option<PathBuf>,
    /// The business phone number's id (not the number itself).
    pub phone_number_id: String,
    /// The Graph API root with its version.
    pub api_url: String,
    /// The path on the HTTP listener that Meta calls.
    pub webhook_path: String,
    /// How long one request to the Cloud API may take.
    pub request_timeout: HumanDuration,
}

impl Default for WhatsAppConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            access_token_env: None,
            access_token_file: None,
            app_secret_env: None,
            app_secret_file: None,
            verify_token_env: None,
            verify_token_file: None,
            phone_number_id: String::new(),
            api_url: "https://graph.facebook.com/v21.0".to_owned(),
            webhook_path: DEFAULT_WEBHOOK_PATH.to_owned(),
            request_timeout: HumanDuration(Duration::from_secs(15)),
        }
    }
}

/// The WhatsApp adapter: the sender and the webhook's secrets.
pub struct WhatsAppAdapter {
    sender: Arc<WhatsAppSender>,
    hook: Hook,
    webhook_path: String,
}

/// What the webhook handlers need (the inbox comes with the routes).
#[derive(Clone)]
struct Hook {
    app_secret: Arc<str>,
    verify_token: Arc<str>,
    phone_number_id: Arc<str>,
    inbox: Option<Arc<Inbox>>,
    receipts: Option<Receipts>,
    body_timeout: Duration,
}

impl ChannelAdapter for WhatsAppAdapter {
    const KIND: ChannelKind = KIND;
    type Config = WhatsAppConfig;
    const NUMERIC_KEYS: &'static [NumericKey] = &[channel_key(
        "channels.whatsapp.request_timeout",
        millis(SEC, 5 * MIN),
        Some(Number::Duration(Duration::from_secs(15))),
    )];

    fn enabled(config: &WhatsAppConfig) -> bool {
        config.enabled
    }

    fn validate(wa: &WhatsAppConfig) -> Vec<ConfigError> {
        let mut errors: Vec<ConfigError> = check_url("channels.whatsapp.api_url", &wa.api_url)
            .err()
            .into_iter()
            .collect();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_owned(),
                line: None,
                message,
            });
        };
        if !wa.webhook_path.starts_with('/') {
            err(
                "channels.whatsapp.webhook_path",
                format!(
                    "`{}` must start with `/`, e.g. \"{DEFAULT_WEBHOOK_PATH}\"",
                    wa.webhook_path
                ),
            );
        }
        if !wa.phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            err(
                "channels.whatsapp.phone_number_id",
                format!(
                    "`{}` is not a phone number id: it is all digits, shown under WhatsApp > API Setup in the Meta app dashboard",
                    wa.phone_number_id
                ),
            );
        }
        if !wa.enabled {
            return errors;
        }
        if wa.phone_number_id.is_empty() {
            err(
                "channels.whatsapp.phone_number_id",
                "required: the business number's id from WhatsApp > API Setup in the Meta app dashboard".to_owned(),
            );
        }
        for (name, what, env, file) in [
            (
                "access_token",
                "the Cloud API access token",
                &wa.access_token_env,
                &wa.access_token_file,
            ),
            (
                "app_secret",
                "the app secret that signs webhooks",
                &wa.app_secret_env,
                &wa.app_secret_file,
            ),
            (
                "verify_token",
                "the webhook verify token",
                &wa.verify_token_env,
                &wa.verify_token_file,
            ),
        ] {
            if let Some(e) = check_secret("channels.whatsapp", name, what, env, file, true) {
                err(&e.path, e.message);
            }
        }
        errors
    }

    fn default_rates() -> RateSettings {
        // Cloud API: 80 messages/s per number by default; about one message per 6 s to one
        // user before the pair limit (131056) is hit, so 0.8/s per chat with no burst.
        RateSettings {
            per_second: Some(80.0),
            burst: Some(80),
            per_chat_per_second: Some(0.8),
            per_chat_burst: Some(1),
        }
    }

    fn build(wa: &WhatsAppConfig, _: &BuildEnv) -> anyhow::Result<Self> {
        let secret = |name: &str, env: &Option<String>, file: &Option<PathBuf>| {
            Config::secret(&format!("channels.whatsapp.{name}"), env, file)
                .map_err(|e| anyhow::anyhow!(e))?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "channels.whatsapp.{name}_env is required (or {name}_file); set it"
                    )
                })
        };
        let token = secret("access_token", &wa.access_token_env, &wa.access_token_file)?;
        let app_secret = secret("app_secret", &wa.app_secret_env, &wa.app_secret_file)?;
        let verify_token = secret("verify_token", &wa.verify_token_env, &wa.verify_token_file)?;
        let sender = WhatsAppSender::new(
            &wa.api_url,
            &wa.phone_number_id,
            &token,
            wa.request_timeout.get(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            sender: Arc::new(sender),
            hook: Hook {
                app_secret: app_secret.into(),
                verify_token: verify_token.into(),
                phone_number_id: wa.phone_number_id.as_str().into(),
                inbox: None,
                receipts: None,
                body_timeout: Duration::from_secs(10),
            },
            webhook_path: wa.webhook_path.clone(),
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.sender.clone()
    }

    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route> {
        let hook = Hook {
            inbox: Some(ctx.inbox.clone()),
            receipts: Some(ctx.receipts.clone()),
            body_timeout: ctx.body_timeout,
            ..self.hook.clone()
        };
        vec![Route {
            path: self.webhook_path.clone(),
            handler: get(verify)
                .post(events)
                .layer(DefaultBodyLimit::disable())
                .with_state(hook),
        }]
    }

    fn disabled_routes() -> Vec<Route> {
        let disabled = || async {
            error(
                StatusCode::NOT_FOUND,
                "the WhatsApp channel is disabled; set channels.whatsapp.enabled = true".to_owned(),
            )
        };
        vec![Route {
            path: DEFAULT_WEBHOOK_PATH.to_owned(),
            handler: get(disabled).post(disabled),
        }]
    }

    fn announce(&self, http: std::net::SocketAddr) -> Vec<String> {
        vec![format!(
            "WhatsApp webhook: http://{http}{} (the callback URL in the Meta app dashboard is its public https:// address)",
            self.webhook_path
        )]
    }
}

/// The GET verification handshake.
async fn verify(
    State(hook): State<Hook>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let param = |k: &str| query.get(k).map(String::as_str);
    match payload::verify_challenge(
        param("hub.mode"),
        param("hub.verify_token"),
        param("hub.challenge"),
        &hook.verify_token,
    ) {
        Some(challenge) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge.to_owned(),
        )
            .into_response(),
        None => {
            tracing::warn!(
                message = "WhatsApp webhook verification refused: hub.mode is not subscribe or hub.verify_token does not match channels.whatsapp.verify_token_env.",
                channel = %KIND
            );
            error(
                StatusCode::FORBIDDEN,
                "hub.mode must be subscribe and hub.verify_token must match".to_owned(),
            )
        }
    }
}

/// A POST of messages and statuses.
async fn events(State(hook): State<Hook>, headers: HeaderMap, body: Body) -> Response {
    let (Some(inbox), Some(receipts)) = (hook.inbox.clone(), hook.receipts.clone()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the WhatsApp channel is not started".to_owned(),
        );
    };
    let too_large = || format!("body is larger than {BODY_LIMIT} bytes");
    let body = match read_body(&headers, body, BODY_LIMIT, hook.body_timeout, too_large).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let signature = headers
        .get(payload::SIGNATURE_HEADER)
        .map(axum::http::HeaderValue::as_bytes);
    if let Err(e) = payload::verify_signature(hook.app_secret.as_bytes(), signature, &body) {
        tracing::warn!(message = "WhatsApp webhook refused.", channel = %KIND, error = %e);
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let envelope: payload::Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a WhatsApp webhook payload: {e}"),
            );
        }
    };
    let mut failed = false;
    for change in envelope.entry.iter().flat_map(|e| &e.changes) {
        let value = &change.value;
        if !value.metadata.phone_number_id.is_empty()
            && *value.metadata.phone_number_id != *hook.phone_number_id
        {
            tracing::warn!(
                message = "WhatsApp webhook for another phone number ignored; check channels.whatsapp.phone_number_id.",
                channel = %KIND,
                phone_number_id = %value.metadata.phone_number_id
            );
            continue;
        }
        for m in &value.messages {
            let Some(mut msg) = payload::normalize(m) else {
                continue;
            };
            msg.sender_name = payload::display_name(value, &m.from).map(str::to_owned);
            if let Err(e) = inbox.accept(msg).await {
                tracing::error!(message = "Cannot commit a WhatsApp message; Meta will redeliver it.", channel = %KIND, message_id = %m.id, error = %e);
                failed = true;
            }
        }
        for status in &value.statuses {
            let Some((r, kind)) = payload::receipt(status)
                .and_then(|r| ReceiptStatus::parse(&r.status).map(|k| (r, k)))
            else {
                continue;
            };
            if let Err(e) = receipts
                .record(KIND, &r.platform_id, kind, r.error.as_deref())
                .await
            {
                tracing::error!(message = "Cannot record a WhatsApp status; Meta will redeliver it.", channel = %KIND, platform_id = %r.platform_id, status = %r.status, error = %e);
                failed = true;
            }
        }
        for e in &value.errors {
            tracing::warn!(message = "WhatsApp reports an error.", channel = %KIND, error = %e.describe());
        }
    }
    if failed {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot store the messages or statuses right now".to_owned(),
        );
    }
    (StatusCode::OK, Json(json!({"ok": true}))).into_response()
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
            "[channels.whatsapp]\nenabled = true\nphone_number_id = \"10654x\"\napi_url = \"ftp://x\"\n\
             webhook_path = \"hook\"\naccess_token_env = \"WA_TEST_UNSET_TOKEN\"\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for key in [
            "channels.whatsapp.phone_number_id",
            "channels.whatsapp.api_url",
            "channels.whatsapp.webhook_path",
            "channels.whatsapp.access_token_env",
            "channels.whatsapp.app_secret_env",
            "channels.whatsapp.verify_token_env",
        ] {
            assert!(paths.contains(&key), "{key} in {errs:?}");
        }
        let unset = errs
            .iter()
            .find(|e| e.path == "channels.whatsapp.access_token_env")
            .expect("token error");
        assert!(
            unset
                .message
                .contains("`WA_TEST_UNSET_TOKEN` is not set or empty; export it"),
            "{unset:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_a_disabled_section_needs_no_secrets() {
        let errs =
            parse("[channels.webchat]\nenabled = true\n[channels.whatsapp]\nphone_id = \"1\"\n")
                .expect_err("unknown key");
        assert!(
            errs.iter().any(|e| e.path.starts_with("channels.whatsapp")),
            "{errs:?}"
        );
        parse("[channels.webchat]\nenabled = true\n[channels.whatsapp]\nenabled = false\nphone_number_id = \"1\"\n")
            .expect("a disabled section without secrets is valid");
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = WhatsAppConfig::default();
        assert_eq!(c.api_url, "https://graph.facebook.com/v21.0");
        assert_eq!(c.webhook_path, "/channels/whatsapp/webhook");
        let r = WhatsAppAdapter::default_rates();
        assert_eq!(
            (
                r.per_second,
                r.burst,
                r.per_chat_per_second,
                r.per_chat_burst
            ),
            (Some(80.0), Some(80), Some(0.8), Some(1))
        );
    }
}
