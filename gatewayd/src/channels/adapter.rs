//! The contract every channel adapter implements, [`ChannelAdapter`], and the narrow handles
//! it is given: [`ListenerCtx`] for its listener, [`WebhookCtx`] for its webhook routes, and
//! [`HealthReporter`], the only part of delivery an adapter sees.
//!
//! An adapter builds itself from its own config section (as a vector sink does), gives
//! delivery its [`ChannelSender`], and listens: with a long-lived connection under
//! [`super::supervise::keep_connected`], with webhook routes on the HTTP listener, or both. It
//! knows nothing of sessions or agents: what it receives goes to the inbox, nowhere else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::cluster::leader::Leadership;
use crate::config::{ConfigError, NumericKey};
use crate::delivery::Delivery;
use crate::delivery::rate_limit::RateSettings;
use crate::inbox::Inbox;
use crate::message::ChannelKind;
use crate::send::{ChannelSender, ErrorClass};
pub use crate::store::ReceiptStatus;
use crate::store::SharedStore;

/// One channel: its config section, its sender, its routes and its listener.
///
/// The registry (`channels::registry`) lists every adapter; the gateway starts each one whose
/// section says it is enabled, and nothing else in the daemon names a channel.
pub trait ChannelAdapter: Sized + Send + Sync + 'static {
    /// The channel's name: its `[channels.<name>]` section, its store and API name.
    const KIND: ChannelKind;

    /// `[channels.<name>]`, with defaults for every key left out.
    type Config: DeserializeOwned + Default + Send + Sync + 'static;

    /// Every numeric key of the section and its range (`config::channel_key`); the registry
    /// checks them and README.md lists them.
    const NUMERIC_KEYS: &'static [NumericKey] = &[];

    /// Whether the platform has mentions, so the adapter sets
    /// [`InboundMessage::mentioned`](crate::message::InboundMessage::mentioned) in group chats.
    const MENTIONS: bool = false;

    /// Whether the section turns the channel on.
    fn enabled(config: &Self::Config) -> bool;

    /// Checks a parsed section, enabled or not, returning every problem (key paths in full:
    /// `channels.<name>.<key>`): what a disabled channel's section says is checked too, what only
    /// an enabled channel needs (its secrets) only when it is enabled. Ranges of
    /// [`Self::NUMERIC_KEYS`] are already checked.
    fn validate(config: &Self::Config) -> Vec<ConfigError>;

    /// The outbound rate limits when `[rate_limits.<name>]` does not override them.
    fn default_rates() -> RateSettings;

    /// Builds the adapter from a valid section: resolves its secrets, builds its sender.
    fn build(config: &Self::Config, env: &BuildEnv) -> anyhow::Result<Self>;

    /// The sending half, for delivery (it declares the split limit).
    fn sender(&self) -> Arc<dyn ChannelSender>;

    /// Webhook routes on the HTTP listener (absolute paths); none by default.
    fn routes(&self, _ctx: &WebhookCtx) -> Vec<Route> {
        Vec::new()
    }

    /// What the channel's paths answer while it is disabled (a 404 that says how to enable it);
    /// none by default.
    fn disabled_routes() -> Vec<Route> {
        Vec::new()
    }

    /// Lines printed at start for the operator (where to reach the channel).
    fn announce(&self, _http: std::net::SocketAddr) -> Vec<String> {
        Vec::new()
    }

    /// The listener: runs until `ctx.shutdown`. Channels that only take webhooks keep the
    /// default, which returns at once.
    fn run(self: Arc<Self>, ctx: ListenerCtx) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

/// What building an adapter may use besides its own section.
#[derive(Clone)]
pub struct BuildEnv {
    /// Set when the gateway starts stopping (WebChat closes its sockets on it).
    pub closing: watch::Receiver<bool>,
    /// In a cluster: where WebChat reaches its chats' sockets that other instances hold.
    pub socket_relay: Option<Arc<dyn crate::cluster::relay::SocketRelay>>,
}

/// One webhook route: an absolute path and its handler.
pub struct Route {
    /// The path on the HTTP listener, e.g. `/channels/telegram/webhook`.
    pub path: String,
    /// The handler, with its state already applied.
    pub handler: axum::routing::MethodRouter,
}

/// What webhook handlers are given.
#[derive(Clone)]
pub struct WebhookCtx {
    /// Where inbound messages go: commit before acknowledging.
    pub inbox: Arc<Inbox>,
    /// How long a client may take to send a request body (`http.body_timeout`).
    pub body_timeout: Duration,
    /// Where the platform's receipts for sent messages go.
    pub receipts: Receipts,
    /// The channels' durable watermarks (where a catch-up starts).
    pub cursors: Cursors,
    /// How long the inbox keeps a committed message's dedupe key (`store.dedupe_window`): a
    /// platform's redelivery of a message older than this can no longer be recognised as a
    /// repeat, so an adapter that receives replays drops such stale messages instead.
    pub inbound_kept: Duration,
}

/// What a platform reports about messages it accepted (delivered, read, failed), recorded on
/// the replies they belong to so the operator sees them (`gatewayctl outbox list`). The only
/// part of the store an adapter sees.
#[derive(Clone)]
pub struct Receipts {
    store: SharedStore,
}

impl Receipts {
    /// Receipts recorded in `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// Records what the platform reported about the message it knows as `platform_id`: it only
    /// moves forward (`sent → delivered → read`, `failed` from any), and one that arrives
    /// before its send is recorded is kept for it. `Err` means nothing was recorded: answer the
    /// platform so that it reports again.
    pub async fn record(
        &self,
        channel: ChannelKind,
        platform_id: &str,
        status: ReceiptStatus,
        error: Option<&str>,
    ) -> Result<(), String> {
        match self
            .store
            .record_receipt(channel, platform_id, status, error)
            .await
        {
            Ok(outbox_id) => {
                if status == ReceiptStatus::Failed {
                    tracing::warn!(message = "The platform could not deliver a sent reply.", %channel, platform_id, outbox_id, error = error.unwrap_or_default());
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What a listener is given, and nothing more.
#[derive(Clone)]
pub struct ListenerCtx {
    /// Where inbound messages go: commit before acknowledging.
    pub inbox: Arc<Inbox>,
    /// The channel's health as delivery and the operator see it.
    pub health: HealthReporter,
    /// Becomes `true` when the gateway stops.
    pub shutdown: watch::Receiver<bool>,
    /// The gateway's pooled HTTP client, for adapters that speak plain HTTP.
    pub http: reqwest::Client,
    /// The channels' durable watermarks (where a catch-up starts).
    pub cursors: Cursors,
    /// How long the inbox keeps a committed message's dedupe key; see
    /// [`WebhookCtx::inbound_kept`].
    pub inbound_kept: Duration,
    /// Multi-instance mode: the leader leases a long-lived connection runs under
    /// ([`super::supervise::keep_connected`] takes `conn:<channel>`); `None` on a single
    /// instance.
    pub leadership: Option<Leadership>,
}

/// Durable watermarks an adapter keeps beside the messages it commits: one number per channel
/// and name, such as the platform time of the newest committed message, from which the channel
/// asks its platform for what arrived while the gateway was down. A watermark only moves
/// forward. The only other part of the store an adapter sees.
///
/// Advance a watermark only after the messages it covers are committed: a crash in between then
/// leaves it behind, the next catch-up fetches those messages again, and the inbox's dedupe
/// absorbs them.
#[derive(Clone)]
pub struct Cursors {
    store: SharedStore,
}

impl Cursors {
    /// Watermarks kept in `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// Watermark `name` of `channel`; `None` until it is first advanced.
    pub async fn get(&self, channel: ChannelKind, name: &str) -> Result<Option<i64>, String> {
        self.store
            .cursor(channel, name)
            .await
            .map_err(|e| e.to_string())
    }

    /// Moves watermark `name` of `channel` to `value` if that is later; returns the value now
    /// stored.
    pub async fn advance(
        &self,
        channel: ChannelKind,
        name: &str,
        value: i64,
    ) -> Result<i64, String> {
        self.store
            .advance_cursor(channel, name, value)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A channel's health, as its listener reports it: connected, failed (and when it tries
/// again), and the hold while its credentials are refused.
#[derive(Clone)]
pub struct HealthReporter {
    kind: ChannelKind,
    delivery: Delivery,
}

impl HealthReporter {
    /// The reporter of `kind`'s health in `delivery`.
    pub fn new(kind: ChannelKind, delivery: Delivery) -> Self {
        Self { kind, delivery }
    }

    /// The channel this reports on.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The listener is connected (or its last request succeeded).
    pub fn connected(&self) {
        self.delivery.channel_succeeded(self.kind);
    }

    /// The listener failed; `retry_in` is when it tries again. An [`ErrorClass::Auth`] failure
    /// holds the channel (sends and listener) until the operator reconnects it.
    pub fn failed(&self, class: ErrorClass, error: &str, retry_in: Duration) {
        self.delivery
            .channel_failed(self.kind, class, error, retry_in);
    }

    /// A chat's client is back (it reconnected): send what waits for it now.
    pub fn nudge(&self, chat_id: &str) {
        self.delivery.nudge(self.kind, chat_id);
    }

    /// Waits while the channel is held for re-authentication, or until `shutdown`.
    pub async fn wait_sendable(&self, shutdown: &mut watch::Receiver<bool>) {
        self.delivery.wait_sendable(self.kind, shutdown).await;
    }
}
