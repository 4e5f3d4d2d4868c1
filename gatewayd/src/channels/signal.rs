//! The Signal channel, through a local signal-cli daemon (`signal-cli -a NUMBER daemon --http`):
//! its server-sent event stream in, JSON-RPC `send` out. It owns `[channels.signal]`, the
//! listener (below) and the sender ([`sender`]); the payloads and their normalization are in
//! [`payload`], the event-stream parser in [`sse`].
//!
//! The listener reads `GET {rpc_url}/api/v1/events?account=…` under the shared supervisor
//! (`supervise::keep_connected`), so it reconnects with backoff and reports health like every
//! listener. A stream that delivers no bytes at all, not even signal-cli's 15-second keepalive,
//! for `stream_idle_timeout` is dead and replaced. Keepalives alone do not prove a stream
//! delivers events (streams have gone deaf while still sending them), so the stream is also
//! renewed every `stream_max_age`: the new stream is opened before the old one is closed, and the
//! old one is still read for a few seconds, so no event falls between them; the inbox's dedupe
//! absorbs what both carry. Only `dataMessage` envelopes become messages (sync messages of the
//! account's own devices, receipts, typing and the rest are ignored), keyed on
//! `(sourceUuid, timestamp)`. A message the inbox cannot commit is retried until it is, since
//! signal-cli does not send an event twice.
//!
//! While the gateway is down, signal-cli run with `--receive-mode on-connection` does not
//! fetch messages from the Signal servers, which keep them queued; the next stream gets them
//! (the catch-up). A daemon that receives on its own start hands events to no one while no
//! stream is open.
//!
//! Sending: replies are split at 2000 bytes of UTF-8 (signal-cli turns a longer body into an
//! attachment), never inside a grapheme; the first chunk quotes the message it answers.

pub mod payload;
pub mod sender;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::adapter::{BuildEnv, ChannelAdapter, ListenerCtx};
use super::supervise::{Connection, Link, keep_connected, stopped};
use super::{ChannelSender, SendError};
use crate::config::{
    ConfigError, DAY, HOUR, HumanDuration, MIN, Number, NumericKey, SEC, channel_key, check_url,
    millis,
};
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::ChannelKind;
use crate::send::{Limit, Unit};

pub use sender::SignalSender;

/// The Signal channel.
pub const KIND: ChannelKind = ChannelKind::new("signal");
/// signal-cli's limit on a message body, in bytes of UTF-8.
pub const LIMIT: Limit = Limit {
    max: 2000,
    unit: Unit::Utf8Bytes,
};
/// Longest line of the event stream accepted (an event with large attachments' metadata fits).
const MAX_LINE: usize = 4 * 1024 * 1024;
/// How long the old stream is still read after its replacement opened.
const OVERLAP: Duration = Duration::from_secs(5);
/// When a renewal that could not open a stream is tried again (the old stream stays meanwhile).
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// `[channels.signal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    /// Connect the Signal number.
    pub enabled: bool,
    /// The number registered with signal-cli, in E.164 form (`+15550001111`).
    pub account: String,
    /// The signal-cli daemon's HTTP address (`daemon --http 127.0.0.1:8080`).
    pub rpc_url: String,
    /// How long one event stream is used before it is renewed.
    pub stream_max_age: HumanDuration,
    /// How long a stream may deliver no bytes at all before it is taken for dead.
    pub stream_idle_timeout: HumanDuration,
    /// How long one send may take.
    pub request_timeout: HumanDuration,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            account: String::new(),
            rpc_url: "http://127.0.0.1:8080".to_owned(),
            stream_max_age: HumanDuration(Duration::from_secs(600)),
            stream_idle_timeout: HumanDuration(Duration::from_secs(45)),
            request_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// The Signal adapter: the sender and what the listener needs.
pub struct SignalAdapter {
    sender: Arc<SignalSender>,
    stream_client: reqwest::Client,
    events_url: String,
    rpc_url: String,
    account: String,
    max_age: Duration,
    idle: Duration,
}

impl ChannelAdapter for SignalAdapter {
    const KIND: ChannelKind = KIND;
    const MENTIONS: bool = true;
    type Config = SignalConfig;
    const NUMERIC_KEYS: &'static [NumericKey] = &[
        channel_key(
            "channels.signal.stream_max_age",
            millis(SEC, DAY),
            Some(Number::Duration(Duration::from_secs(600))),
        ),
        channel_key(
            "channels.signal.stream_idle_timeout",
            millis(SEC, HOUR),
            Some(Number::Duration(Duration::from_secs(45))),
        ),
        channel_key(
            "channels.signal.request_timeout",
            millis(SEC, 5 * MIN),
            Some(Number::Duration(Duration::from_secs(30))),
        ),
    ];

    fn enabled(config: &SignalConfig) -> bool {
        config.enabled
    }

    fn validate(sg: &SignalConfig) -> Vec<ConfigError> {
        let mut errors: Vec<ConfigError> = check_url("channels.signal.rpc_url", &sg.rpc_url)
            .err()
            .into_iter()
            .collect();
        let account_error = if sg.account.is_empty() {
            sg.enabled.then(|| {
                "required: the number registered with signal-cli, e.g. \"+15550001111\"".to_owned()
            })
        } else if !payload::is_number(&sg.account) {
            Some(format!(
                "`{}` is not a phone number in E.164 form: `+`, the country code and the number, e.g. \"+15550001111\"",
                sg.account
            ))
        } else {
            None
        };
        if let Some(message) = account_error {
            errors.push(ConfigError {
                path: "channels.signal.account".to_owned(),
                line: None,
                message,
            });
        }
        errors
    }

    fn default_rates() -> RateSettings {
        // Signal publishes no limits; signal-cli users meet RATE_LIMIT_FAILURE and captchas when
        // a number sends fast, so one message a second with a small burst for the number, and
        // one every two seconds to one chat.
        RateSettings {
            per_second: Some(1.0),
            burst: Some(3),
            per_chat_per_second: Some(0.5),
            per_chat_burst: Some(1),
        }
    }

    fn build(sg: &SignalConfig, _: &BuildEnv) -> anyhow::Result<Self> {
        let sender = SignalSender::new(&sg.rpc_url, &sg.account, sg.request_timeout.get())
            .map_err(|e| anyhow::anyhow!(e))?;
        // No overall timeout: the stream lives for `stream_max_age`; its silence is timed per read.
        let stream_client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the Signal HTTP client: {e}"))?;
        let base = sg.rpc_url.trim_end_matches('/');
        Ok(Self {
            sender: Arc::new(sender),
            stream_client,
            events_url: format!("{base}/api/v1/events"),
            rpc_url: base.to_owned(),
            account: sg.account.clone(),
            max_age: sg.stream_max_age.get(),
            idle: sg.stream_idle_timeout.get(),
        })
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.sender.clone()
    }

    fn announce(&self, _http: std::net::SocketAddr) -> Vec<String> {
        vec![format!(
            "Signal: {} through signal-cli at {}",
            self.account, self.rpc_url
        )]
    }

    async fn run(self: Arc<Self>, ctx: ListenerCtx) {
        let stream = Stream {
            adapter: self.clone(),
            inbox: ctx.inbox.clone(),
        };
        keep_connected(KIND.as_str(), stream, &ctx).await;
    }
}

/// The listener's connection: one event stream at a time, renewed.
struct Stream {
    adapter: Arc<SignalAdapter>,
    inbox: Arc<Inbox>,
}

/// One open event stream.
struct Open {
    response: reqwest::Response,
    parser: sse::Parser,
    opened: Instant,
}

/// How one read of a stream ended.
enum Read {
    Bytes(axum::body::Bytes),
    Failed(SendError),
}

impl Open {
    /// The next bytes, or why there are none: closed, failed, or silent for `idle`.
    async fn read(&mut self, idle: Duration) -> Read {
        match tokio::time::timeout(idle, self.response.chunk()).await {
            Ok(Ok(Some(bytes))) => Read::Bytes(bytes),
            Ok(Ok(None)) => {
                Read::Failed(SendError::retryable("signal-cli closed the event stream"))
            }
            Ok(Err(e)) => Read::Failed(SendError::retryable(format!(
                "the event stream failed: {}",
                e.without_url()
            ))),
            Err(_) => Read::Failed(SendError::retryable(format!(
                "no bytes on signal-cli's event stream for {} ms, not even its keepalive \
                 (channels.signal.stream_idle_timeout); replacing it",
                idle.as_millis()
            ))),
        }
    }
}

impl Stream {
    /// Opens an event stream.
    async fn open(&self) -> Result<Open, SendError> {
        let a = &self.adapter;
        let request = a
            .stream_client
            .get(&a.events_url)
            .query(&[("account", a.account.as_str())])
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send();
        // signal-cli may be slow to send the headers; as slow as the stream may be silent.
        let response = match tokio::time::timeout(a.idle, request).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(SendError::retryable(format!(
                    "signal-cli unreachable at {}: {}",
                    a.rpc_url,
                    e.without_url()
                )));
            }
            Err(_) => {
                return Err(SendError::retryable(format!(
                    "signal-cli at {} did not answer the event stream's request in {} ms",
                    a.rpc_url,
                    a.idle.as_millis()
                )));
            }
        };
        let status = response.status().as_u16();
        match status {
            200 => Ok(Open {
                response,
                parser: sse::Parser::new(MAX_LINE),
                opened: Instant::now(),
            }),
            400 => Err(SendError::Permanent(format!(
                "signal-cli at {} does not serve {} (HTTP 400 on /api/v1/events): check \
                 channels.signal.account, or start the daemon with `signal-cli -a {} daemon --http`",
                a.rpc_url, a.account, a.account
            ))),
            404 => Err(SendError::Permanent(format!(
                "{} has no /api/v1/events (HTTP 404): channels.signal.rpc_url must be a \
                 signal-cli daemon started with --http",
                a.rpc_url
            ))),
            _ => Err(crate::send::classify_status(
                status,
                None,
                "GET /api/v1/events",
            )),
        }
    }

    /// Feeds `bytes` of a stream to its parser and commits the messages they complete.
    async fn take(
        &self,
        parser: &mut sse::Parser,
        bytes: &[u8],
        link: &mut Link,
    ) -> Result<(), SendError> {
        let events = parser
            .feed(bytes)
            .map_err(|e| SendError::retryable(format!("the event stream is broken: {e}")))?;
        for event in events {
            if event.name != "receive" {
                continue;
            }
            let data: payload::ReceiveData = match serde_json::from_str(&event.data) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(message = "A Signal event that is not a receive notification was skipped.", channel = %KIND, error = %e, bytes = event.data.len());
                    continue;
                }
            };
            if let Some(exception) = &data.exception {
                tracing::warn!(message = "signal-cli could not decrypt or read a message; it is not answered.", channel = %KIND, exception = %exception);
            }
            let Some(envelope) = data.into_envelope() else {
                continue;
            };
            match payload::normalize(&envelope, &self.adapter.account) {
                Ok(msg) => self.commit(msg, link).await,
                Err(skip) => {
                    tracing::debug!(message = "A Signal envelope was not a message to answer.", channel = %KIND, reason = ?skip, timestamp = envelope.timestamp);
                }
            }
        }
        Ok(())
    }

    /// Commits `msg`, trying again until it is committed or the gateway stops.
    async fn commit(&self, msg: crate::message::InboundMessage, link: &mut Link) {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.inbox.accept(msg.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(message = "Cannot commit a Signal message; trying again (signal-cli does not send it twice).", channel = %KIND, message_id = %msg.channel_message_id, error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(&mut link.shutdown) => {
                    tracing::error!(message = "The gateway stopped before a Signal message could be committed; it is lost.", channel = %KIND, message_id = %msg.channel_message_id);
                    return;
                }
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// Reads the stream being replaced, if there is one, until its deadline; `None` once it is done.
async fn read_old(old: &mut Option<(Open, Instant)>, idle: Duration) -> Option<Read> {
    let Some((open, until)) = old.as_mut() else {
        return std::future::pending().await;
    };
    tokio::select! {
        read = open.read(idle) => Some(read),
        () = tokio::time::sleep_until(*until) => None,
    }
}

impl Connection for Stream {
    fn failure_message(&self) -> &'static str {
        "Signal event stream failed."
    }

    async fn connect(&mut self, link: &mut Link) -> Result<(), SendError> {
        let (idle, max_age) = (self.adapter.idle, self.adapter.max_age);
        let mut current = self.open().await?;
        link.connected();
        let mut renew_at = current.opened + max_age;
        let mut old: Option<(Open, Instant)> = None;
        loop {
            tokio::select! {
                read = current.read(idle) => match read {
                    Read::Bytes(bytes) => self.take(&mut current.parser, &bytes, link).await?,
                    Read::Failed(e) => return Err(e),
                },
                read = read_old(&mut old, idle) => match read {
                    Some(Read::Bytes(bytes)) => {
                        if let Some((open, _)) = old.as_mut() {
                            let parser = &mut open.parser;
                            if let Err(e) = self.take(parser, &bytes, link).await {
                                tracing::debug!(message = "The replaced Signal stream ended.", channel = %KIND, error = %e);
                                old = None;
                            }
                        }
                    }
                    Some(Read::Failed(_)) | None => old = None,
                },
                () = tokio::time::sleep_until(renew_at) => match self.open().await {
                    Ok(new) => {
                        tracing::info!(message = "Signal event stream renewed (channels.signal.stream_max_age).", channel = %KIND, age_ms = u64::try_from(current.opened.elapsed().as_millis()).unwrap_or(u64::MAX));
                        renew_at = new.opened + max_age;
                        old = Some((std::mem::replace(&mut current, new), Instant::now() + OVERLAP));
                    }
                    Err(e) => {
                        tracing::warn!(message = "Cannot open a new Signal event stream; the current one stays for now.", channel = %KIND, error = %e, retry_in_ms = u64::try_from(RENEW_RETRY.as_millis()).unwrap_or(u64::MAX));
                        renew_at = Instant::now() + RENEW_RETRY;
                    }
                },
                () = stopped(&mut link.shutdown) => return Ok(()),
            }
        }
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
            "[channels.signal]\nenabled = true\naccount = \"15550001111\"\nrpc_url = \"ftp://x\"\n\
             stream_max_age = \"0s\"\n",
        )
        .expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for key in [
            "channels.signal.account",
            "channels.signal.rpc_url",
            "channels.signal.stream_max_age",
        ] {
            assert!(paths.contains(&key), "{key} in {errs:?}");
        }
        let errs = parse("[channels.signal]\nenabled = true\n").expect_err("no account");
        assert!(
            errs.iter()
                .any(|e| e.path == "channels.signal.account" && e.message.contains("required")),
            "{errs:?}"
        );
        parse("[channels.webchat]\nenabled = true\n[channels.signal]\nenabled = false\n")
            .expect("a disabled section needs no account");
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = SignalConfig::default();
        assert_eq!(c.rpc_url, "http://127.0.0.1:8080");
        assert_eq!(c.stream_max_age.get(), Duration::from_secs(600));
        assert_eq!(c.stream_idle_timeout.get(), Duration::from_secs(45));
        assert_eq!(LIMIT.max, 2000);
        let r = SignalAdapter::default_rates();
        assert_eq!(
            (
                r.per_second,
                r.burst,
                r.per_chat_per_second,
                r.per_chat_burst
            ),
            (Some(1.0), Some(3), Some(0.5), Some(1))
        );
    }
}
