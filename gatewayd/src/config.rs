//! Configuration: the TOML file `gatewayd` reads at start, its defaults and its validation.
//!
//! Every key is part of the operator interface and is documented in README.md. Unknown keys are
//! rejected (`deny_unknown_fields`), and [`Config::load`] reports *every* problem at once, each
//! with its key path and, where the file says, its line. Secrets are never written in the file:
//! they are referenced through `*_env` (an environment variable name) or `*_file` (a path).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::delivery::rate_limit::RateSettings;
use crate::message::ChannelKind;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[gateway]`: data directory and session limits.
    pub gateway: GatewayConfig,
    /// `[http]`: the HTTP listener (WebChat, webhooks, health).
    pub http: HttpConfig,
    /// `[admin]`: the gRPC admin listener.
    pub admin: AdminConfig,
    /// `[log]`: log level and log directory.
    pub log: LogConfig,
    /// `[agent]`: which LLM provider answers.
    pub agent: AgentConfig,
    /// `[channels.*]`: the channel adapters.
    pub channels: ChannelsConfig,
    /// `[delivery]`: retries of outbound sends.
    pub delivery: DeliveryConfig,
    /// `[rate_limits.<channel>]`: overrides of the built-in outbound rate limits.
    pub rate_limits: BTreeMap<String, RateSettings>,
    /// `[workflows]`: where workflow files are.
    pub workflows: WorkflowsConfig,
    /// `[tools]`: settings of the built-in tools.
    pub tools: ToolsConfig,
    /// `[store]`: the database's backend, file and retention of its rows.
    pub store: StoreConfig,
}

/// `[store]`: where the database is and how long it keeps what it no longer needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store's backend; one of [`STORE_BACKENDS`].
    pub backend: String,
    /// The database file; relative to `gateway.data_dir`. `None`: `gateway.db` there.
    pub path: Option<PathBuf>,
    /// Done inbox rows and delivered outbox rows older than this are pruned; a redelivery of
    /// a message older than this is treated as new.
    pub dedupe_window: HumanDuration,
    /// Transcript entries older than this are pruned, except each session's last
    /// `gateway.history_window` entries; `"forever"` (the default) keeps them all.
    pub transcript_retention: TranscriptRetention,
    /// How often the pruner runs.
    pub prune_interval: HumanDuration,
}

/// The accepted values of `store.backend`.
pub const STORE_BACKENDS: &[&str] = &["sqlite"];

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "sqlite".to_owned(),
            path: None,
            dedupe_window: HumanDuration(Duration::from_secs(7 * 86_400)),
            transcript_retention: TranscriptRetention::Forever,
            prune_interval: HumanDuration(Duration::from_secs(5 * 60)),
        }
    }
}

/// How long transcript entries are kept: a duration, or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranscriptRetention {
    /// Never pruned.
    Forever,
    /// Pruned once older than this.
    For(Duration),
}

impl<'de> Deserialize<'de> for TranscriptRetention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected \"forever\" or a duration such as \"30d\", \"12h\" or a whole number of seconds",
            )
        })?;
        match raw {
            Raw::Seconds(s) => Ok(Self::For(Duration::from_secs(s))),
            Raw::Text(t) if t.trim() == "forever" => Ok(Self::Forever),
            Raw::Text(t) => parse_duration(&t)
                .map(Self::For)
                .map_err(|e| serde::de::Error::custom(format!("{e}, or \"forever\""))),
        }
    }
}

/// `[workflows]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowsConfig {
    /// Load and run workflows.
    pub enabled: bool,
    /// Directory of `*.toml` workflow files; relative to the configuration file's directory.
    pub dir: PathBuf,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("workflows"),
        }
    }
}

/// `[tools]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Hosts `http_get` may fetch from (exact names, or `*.example.com`); empty: none.
    pub http_allowlist: Vec<String>,
    /// Largest response body `http_get` returns; the rest is cut and marked truncated.
    pub http_max_bytes: usize,
    /// Timeout of one tool call.
    pub timeout: HumanDuration,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            http_allowlist: Vec::new(),
            http_max_bytes: 256 * 1024,
            timeout: HumanDuration(Duration::from_secs(15)),
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Directory for the database and logs; relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// Most sessions kept resident in memory (LRU beyond that).
    pub max_sessions: usize,
    /// A resident session idle this long is swept out of memory (its history stays stored).
    pub idle_timeout: HumanDuration,
    /// How many recent turns a session keeps in memory and sends to the agent.
    pub history_window: usize,
    /// Capacity of one session's mailbox of waiting messages.
    pub mailbox_capacity: usize,
    /// At shutdown, how long session workers may take to finish the messages they hold; what
    /// is unfinished then stays pending and is replayed at the next start.
    pub shutdown_grace: HumanDuration,
    /// Most addresses whose user is cached in memory (least recently resolved evicted first).
    pub identity_cache_size: usize,
}

/// The largest `gateway.identity_cache_size` (about 12 GB of cache at ~122 bytes an address).
pub const MAX_IDENTITY_CACHE_SIZE: usize = 100_000_000;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            max_sessions: 10_000,
            idle_timeout: HumanDuration(Duration::from_secs(30 * 60)),
            history_window: 20,
            mailbox_capacity: 64,
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
            identity_cache_size: crate::identity::DEFAULT_CACHE_SIZE,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener.
    pub listen: String,
    /// How long a connection may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open. 100ms to 1h.
    pub header_timeout: HumanDuration,
    /// How long a client may take to send a request body. 100ms to 1h.
    pub body_timeout: HumanDuration,
    /// Connections served at once (WebSockets included); more are answered 503 and closed.
    /// 1 to 1000000.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_timeout: HumanDuration(Duration::from_secs(30)),
            max_connections: 16_384,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the gRPC admin API.
    pub enabled: bool,
    /// Address of the gRPC admin listener.
    pub listen: String,
    /// Name of the environment variable holding the bearer token callers must present.
    pub token_env: Option<String>,
    /// Path of a file holding the bearer token (alternative to `token_env`).
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:50051".to_owned(),
            token_env: None,
            token_file: None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or `gatewayd=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
    /// Directory of the daily rolling log file; relative paths are relative to `data_dir`.
    pub dir: PathBuf,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            dir: PathBuf::from("logs"),
        }
    }
}

/// Which agent provider answers messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Offline and deterministic: replies with the message text.
    Echo,
    /// Any OpenAI-compatible `/v1/chat/completions` endpoint.
    Openai,
}

impl AgentConfig {
    /// The provider's name, as written in the file.
    pub fn provider_name(&self) -> &'static str {
        match self.provider {
            ProviderKind::Echo => "echo",
            ProviderKind::Openai => "openai",
        }
    }
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// `echo` or `openai`.
    pub provider: ProviderKind,
    /// Base URL of the OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// Name of the environment variable holding the API key (optional for local servers).
    pub api_key_env: Option<String>,
    /// Path of a file holding the API key (alternative to `api_key_env`).
    pub api_key_file: Option<PathBuf>,
    /// System prompt sent first in every request.
    pub system_prompt: Option<String>,
    /// Most LLM requests in flight at once, across all sessions.
    pub max_concurrent: usize,
    /// Timeout of one LLM request.
    pub timeout: HumanDuration,
    /// Attempts of one turn before the user gets an error reply.
    pub max_attempts: u32,
    /// Base delay of the exponential backoff between attempts.
    pub retry_backoff: HumanDuration,
    /// Most tool-call rounds in one turn before the agent answers without more tools.
    pub max_tool_steps: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            provider: ProviderKind::Echo,
            base_url: "http://127.0.0.1:11434/v1".to_owned(),
            model: "llama3.2".to_owned(),
            api_key_env: None,
            api_key_file: None,
            system_prompt: None,
            max_concurrent: 16,
            timeout: HumanDuration(Duration::from_secs(60)),
            max_attempts: 3,
            retry_backoff: HumanDuration(Duration::from_millis(500)),
            max_tool_steps: 5,
        }
    }
}

/// `[channels]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// `[channels.webchat]`.
    pub webchat: WebChatConfig,
    /// `[channels.http]`.
    pub http: HttpChannelConfig,
    /// `[channels.telegram]`.
    pub telegram: TelegramConfig,
    /// `[channels.discord]`.
    pub discord: DiscordConfig,
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
    /// In guild channels, answer only messages that mention the bot.
    pub require_mention_in_guilds: bool,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_env: None,
            token_file: None,
            api_url: "https://discord.com".to_owned(),
            require_mention_in_guilds: true,
        }
    }
}

/// `[channels.webchat]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebChatConfig {
    /// Serve the chat page at `/` and the WebSocket at `/ws`.
    pub enabled: bool,
    /// Largest accepted message text, in bytes.
    pub max_message_bytes: usize,
}

impl Default for WebChatConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// `[channels.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpChannelConfig {
    /// Accept messages at `POST /channels/http/messages`.
    pub enabled: bool,
    /// Where replies are POSTed as JSON.
    pub callback_url: Option<String>,
    /// Largest accepted message text, in bytes.
    pub max_message_bytes: usize,
    /// Timeout of one callback request.
    pub timeout: HumanDuration,
    /// Replies longer than this many characters are split into several callbacks.
    pub max_reply_chars: Option<usize>,
}

impl Default for HttpChannelConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            callback_url: None,
            max_message_bytes: 64 * 1024,
            timeout: HumanDuration(Duration::from_secs(10)),
            max_reply_chars: None,
        }
    }
}

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Send attempts of one reply before it becomes a dead letter.
    pub max_attempts: u32,
    /// Base delay of the exponential backoff (full jitter) between attempts.
    pub retry_backoff: HumanDuration,
    /// Longest delay between two attempts.
    pub max_backoff: HumanDuration,
    /// How often a channel that is `down` is probed.
    pub probe_interval: HumanDuration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_backoff: HumanDuration(Duration::from_millis(500)),
            max_backoff: HumanDuration(Duration::from_secs(60)),
            probe_interval: HumanDuration(Duration::from_secs(120)),
        }
    }
}

/// A duration written as `"250ms"`, `"30s"`, `"5m"`, `"2h"` or a whole number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration itself.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// What a duration looks like, for error messages.
pub const DURATION_FORMS: &str =
    "a duration such as \"250ms\", \"30s\", \"5m\", \"2h\" or a whole number of seconds";

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; expected {DURATION_FORMS}"))?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`; use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_millis(n.saturating_mul(unit_ms)))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_FORMS)
            }

            fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<Self::Value, E> {
                Ok(HumanDuration(Duration::from_secs(secs)))
            }

            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                u64::try_from(secs)
                    .map(|s| HumanDuration(Duration::from_secs(s)))
                    .map_err(|_| {
                        E::custom(format!("`{secs}` is negative; expected {DURATION_FORMS}"))
                    })
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `agent.max_concurrent`.
    pub path: String,
    /// 1-based line in the file, where known.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {}): {}", self.path, line, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one file, printed one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file that was read.
    pub file: PathBuf,
    /// The problems, in file order where known.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} has {} error(s):",
            self.file.display(),
            self.errors.len()
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates the file at `path`, returning every error at once.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: path.to_path_buf(),
            errors,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![ConfigError {
                path: "(file)".to_owned(),
                line: None,
                message: format!(
                    "cannot read the configuration file: {e}; pass --config PATH or set GATEWAYD_CONFIG"
                ),
            }])
        })?;
        let mut config = Self::parse(&text).map_err(fail)?;
        if config.workflows.dir.is_relative()
            && let Some(parent) = path.parent()
        {
            config.workflows.dir = parent.join(&config.workflows.dir);
        }
        Ok(config)
    }

    /// Parses and validates configuration text, returning every problem at once: a TOML
    /// syntax error alone (nothing after it can be read), otherwise every key of the wrong type
    /// or unknown, then every value out of its range or inconsistent with another.
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigError>> {
        let mut doc: toml::Table = match toml::from_str(text) {
            Ok(doc) => doc,
            Err(e) => return Err(vec![parse_error(text, &e)]),
        };
        let mut errors = Vec::new();
        // Each pass reports the first key serde refuses, removes it (its default takes its
        // place) and tries again, so one run names every bad key.
        let mut removed: Vec<String> = Vec::new();
        let mut parsed = None;
        for _ in 0..MAX_PARSE_PASSES {
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(doc.clone())) {
                Ok(config) => {
                    parsed = Some(config);
                    break;
                }
                Err(e) => {
                    let keys: Vec<String> = e
                        .path()
                        .iter()
                        .map_while(|segment| match segment {
                            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                            _ => None,
                        })
                        .collect();
                    let path = keys.join(".");
                    errors.push(ConfigError {
                        line: line_of_key(text, &path),
                        path: if path.is_empty() {
                            "(file)".to_owned()
                        } else {
                            path.clone()
                        },
                        message: e.into_inner().message().trim().replace('\n', " "),
                    });
                    if !remove_key(&mut doc, &keys) {
                        break;
                    }
                    removed.push(path);
                }
            }
        }
        if let Some(config) = &parsed {
            let under_removed = |path: &str| {
                removed.iter().any(|r| {
                    path == r
                        || path
                            .strip_prefix(r.as_str())
                            .is_some_and(|rest| rest.starts_with('.'))
                })
            };
            for mut e in config.validate() {
                if !under_removed(&e.path) {
                    e.line = line_of_key(text, &e.path);
                    errors.push(e);
                }
            }
        }
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        match parsed {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(errors),
        }
    }

    /// Checks values that parse but make no sense, returning every problem found: every
    /// numeric key against its range in [`NUMERIC_KEYS`], every URL key with [`check_url`],
    /// and the rules that tie keys together.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for key in NUMERIC_KEYS {
            for (path, value) in key.read(self) {
                if let Err(message) = key.range.check(value) {
                    errors.push(ConfigError {
                        path,
                        line: None,
                        message,
                    });
                }
            }
        }
        let mut url = |key: &str, value: &str| {
            if let Err(e) = check_url(key, value) {
                errors.push(e);
            }
        };
        url("agent.base_url", &self.agent.base_url);
        url("channels.telegram.api_url", &self.channels.telegram.api_url);
        url("channels.discord.api_url", &self.channels.discord.api_url);
        if let Some(callback) = &self.channels.http.callback_url {
            url("channels.http.callback_url", callback);
        }
        if let Some(webhook) = &self.channels.telegram.webhook_url {
            url("channels.telegram.webhook_url", webhook);
        }
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_owned(),
                line: None,
                message,
            })
        };
        if let Err(e) = self.http.listen.parse::<SocketAddr>() {
            err(
                "http.listen",
                format!(
                    "`{}` is not an address: {e}; write e.g. \"127.0.0.1:8080\"",
                    self.http.listen
                ),
            );
        }
        match self.admin.listen.parse::<SocketAddr>() {
            Err(e) => err(
                "admin.listen",
                format!(
                    "`{}` is not an address: {e}; write e.g. \"127.0.0.1:50051\"",
                    self.admin.listen
                ),
            ),
            Ok(addr)
                if self.admin.enabled
                    && !addr.ip().is_loopback()
                    && self.admin.token_env.is_none()
                    && self.admin.token_file.is_none() =>
            {
                err(
                    "admin.listen",
                    format!(
                        "{addr} is not a loopback address and no token is set; set admin.token_env or admin.token_file, or listen on 127.0.0.1"
                    ),
                )
            }
            Ok(_) => {}
        }
        if self.admin.token_env.is_some() && self.admin.token_file.is_some() {
            err(
                "admin.token_env",
                "set only one of token_env and token_file".to_owned(),
            );
        }
        if let Some(var) = &self.admin.token_env
            && std::env::var(var).map_or(true, |v| v.trim().is_empty())
        {
            err(
                "admin.token_env",
                format!(
                    "environment variable `{var}` is not set or empty; export it or remove the key"
                ),
            );
        }
        if let Some(file) = &self.admin.token_file
            && !file.is_file()
        {
            err(
                "admin.token_file",
                format!("`{}` is not a readable file", file.display()),
            );
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            err(
                "log.level",
                format!("`{}` is not a log filter: {e}", self.log.level),
            );
        }
        let agent = &self.agent;
        if agent.provider == ProviderKind::Openai && agent.model.trim().is_empty() {
            err("agent.model", "must name a model".to_owned());
        }
        if agent.api_key_env.is_some() && agent.api_key_file.is_some() {
            err(
                "agent.api_key_env",
                "set only one of api_key_env and api_key_file".to_owned(),
            );
        }
        if let Some(var) = &agent.api_key_env
            && std::env::var_os(var).is_none()
        {
            err(
                "agent.api_key_env",
                format!("environment variable `{var}` is not set; export it or remove the key"),
            );
        }
        if let Some(file) = &agent.api_key_file
            && !file.is_file()
        {
            err(
                "agent.api_key_file",
                format!("`{}` is not a readable file", file.display()),
            );
        }
        let http = &self.channels.http;
        if http.enabled && http.callback_url.is_none() {
            err(
                "channels.http.callback_url",
                "required when channels.http.enabled = true; replies are POSTed there".to_owned(),
            );
        }
        let tg = &self.channels.telegram;
        let dc = &self.channels.discord;
        if !self.channels.webchat.enabled && !http.enabled && !tg.enabled && !dc.enabled {
            err(
                "channels",
                "no channel is enabled; enable channels.webchat, http, telegram or discord"
                    .to_owned(),
            );
        }
        for (prefix, enabled, token_env, token_file) in [
            (
                "channels.telegram",
                tg.enabled,
                &tg.token_env,
                &tg.token_file,
            ),
            (
                "channels.discord",
                dc.enabled,
                &dc.token_env,
                &dc.token_file,
            ),
        ] {
            if !enabled {
                continue;
            }
            match (token_env, token_file) {
                (None, None) => err(
                    &format!("{prefix}.token_env"),
                    "the bot token is required: set token_env (an environment variable) or token_file".to_owned(),
                ),
                (Some(_), Some(_)) => err(
                    &format!("{prefix}.token_env"),
                    "set only one of token_env and token_file".to_owned(),
                ),
                (Some(var), None) if std::env::var(var).map_or(true, |v| v.trim().is_empty()) => err(
                    &format!("{prefix}.token_env"),
                    format!("environment variable `{var}` is not set or empty; export it"),
                ),
                (None, Some(file)) if !file.is_file() => err(
                    &format!("{prefix}.token_file"),
                    format!("`{}` is not a readable file", file.display()),
                ),
                _ => {}
            }
        }
        if tg.enabled && tg.mode == TelegramMode::Webhook {
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
        if let Err(e) = crate::agent::tools::HttpGet::new(
            &self.tools.http_allowlist,
            self.tools.http_max_bytes.max(1),
            Duration::from_secs(1),
        ) {
            err("tools.http_allowlist", e);
        }
        if !STORE_BACKENDS.contains(&self.store.backend.as_str()) {
            err(
                "store.backend",
                format!(
                    "unknown backend `{}`; accepted values: {}",
                    self.store.backend,
                    STORE_BACKENDS.join(", ")
                ),
            );
        }
        if self
            .store
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            err(
                "store.path",
                "is empty; name the database file, e.g. \"gateway.db\", or leave the key out"
                    .to_owned(),
            );
        }
        for name in self.rate_limits.keys() {
            if name.parse::<ChannelKind>().is_err() {
                let known: Vec<&str> = ChannelKind::ALL.iter().map(|c| c.as_str()).collect();
                err(
                    &format!("rate_limits.{name}"),
                    format!(
                        "unknown channel `{name}`; known channels: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        errors
    }

    /// What the store prunes and how often, from `[store]` and `gateway.history_window`.
    pub fn store_retention(&self) -> crate::store::Retention {
        crate::store::Retention {
            dedupe_window: self.store.dedupe_window.get(),
            transcript: match self.store.transcript_retention {
                TranscriptRetention::Forever => None,
                TranscriptRetention::For(d) => Some(d),
            },
            history_window: self.gateway.history_window,
            interval: self.store.prune_interval.get(),
            ..crate::store::Retention::default()
        }
    }

    /// The rate settings of `channel`: the built-in defaults with the file's overrides.
    pub fn rate_settings(&self, channel: ChannelKind) -> RateSettings {
        let defaults = RateSettings::default_for(channel);
        match self.rate_limits.get(channel.as_str()) {
            Some(over) => defaults.merged(over),
            None => defaults,
        }
    }

    /// The log directory, resolved against `data_dir` when relative.
    pub fn log_dir(&self) -> PathBuf {
        if self.log.dir.is_absolute() {
            self.log.dir.clone()
        } else {
            self.gateway.data_dir.join(&self.log.dir)
        }
    }

    /// The database file: `store.path` resolved against `data_dir` when relative, by default
    /// `gateway.db` in `data_dir`.
    pub fn database_path(&self) -> PathBuf {
        match &self.store.path {
            Some(path) => self.gateway.data_dir.join(path),
            None => self.gateway.data_dir.join("gateway.db"),
        }
    }

    /// Reads a secret through its `*_env` or `*_file` indirection; `key` names it in errors.
    pub fn secret(
        key: &str,
        env: &Option<String>,
        file: &Option<PathBuf>,
    ) -> Result<Option<String>, String> {
        if let Some(var) = env {
            return std::env::var(var)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|_| format!("{key}_env: environment variable `{var}` is not set"));
        }
        if let Some(file) = file {
            return std::fs::read_to_string(file)
                .map(|s| Some(s.trim().to_owned()))
                .map_err(|e| format!("{key}_file: cannot read `{}`: {e}", file.display()));
        }
        Ok(None)
    }

    /// Reads the admin token through its `*_env` or `*_file` indirection.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.admin.token_env {
            return std::env::var(var)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|_| format!("admin.token_env: environment variable `{var}` is not set"));
        }
        if let Some(file) = &self.admin.token_file {
            return std::fs::read_to_string(file)
                .map(|s| Some(s.trim().to_owned()))
                .map_err(|e| format!("admin.token_file: cannot read `{}`: {e}", file.display()));
        }
        Ok(None)
    }

    /// Reads the agent API key through its `*_env` or `*_file` indirection.
    pub fn agent_api_key(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.agent.api_key_env {
            return std::env::var(var).map(Some).map_err(|_| {
                format!("agent.api_key_env: environment variable `{var}` is not set")
            });
        }
        if let Some(file) = &self.agent.api_key_file {
            return std::fs::read_to_string(file)
                .map(|s| Some(s.trim().to_owned()))
                .map_err(|e| format!("agent.api_key_file: cannot read `{}`: {e}", file.display()));
        }
        Ok(None)
    }
}

/// Most passes [`Config::parse`] makes to collect type errors (each pass removes one key).
const MAX_PARSE_PASSES: usize = 256;

/// Removes the key at `keys` from `doc`; false if there is nothing to remove there.
fn remove_key(doc: &mut toml::Table, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut table = doc;
    for key in parents {
        match table.get_mut(key) {
            Some(toml::Value::Table(inner)) => table = inner,
            _ => return false,
        }
    }
    table.remove(last).is_some()
}

/// Checks the URL key `key`: an `http://` or `https://` URL with a host. Every URL key of the
/// configuration goes through this one check, so each says the same thing.
pub fn check_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let fail = |message: String| ConfigError {
        path: key.to_owned(),
        line: None,
        message,
    };
    let url = reqwest::Url::parse(value.trim()).map_err(|e| {
        fail(format!(
            "`{value}` is not a URL ({e}); write e.g. \"https://example.com\""
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail(format!(
            "`{value}` must be an http:// or https:// URL, not {}://",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail(format!("`{value}` has no host")));
    }
    Ok(())
}

/// The allowed values of one numeric key, both ends included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// A whole number.
    Int(u64, u64),
    /// A finite number (NaN and infinities are refused).
    Float(f64, f64),
    /// A duration.
    Duration(Duration, Duration),
}

/// One numeric value read from a configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A whole number.
    Int(u64),
    /// A decimal number.
    Float(f64),
    /// A duration.
    Duration(Duration),
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(n) => write!(f, "{n}"),
            Number::Float(x) => write!(f, "{x}"),
            Number::Duration(d) => f.write_str(&format_duration(*d)),
        }
    }
}

/// `d` in the largest unit that writes it exactly: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

impl Range {
    /// The lower and upper end, as written in the README.
    pub fn ends(&self) -> (Number, Number) {
        match *self {
            Range::Int(lo, hi) => (Number::Int(lo), Number::Int(hi)),
            Range::Float(lo, hi) => (Number::Float(lo), Number::Float(hi)),
            Range::Duration(lo, hi) => (Number::Duration(lo), Number::Duration(hi)),
        }
    }

    /// Whether `value` is allowed; the error says the range and the value.
    pub fn check(&self, value: Number) -> Result<(), String> {
        let inside = match (*self, value) {
            (Range::Int(lo, hi), Number::Int(v)) => (lo..=hi).contains(&v),
            (Range::Float(lo, hi), Number::Float(v)) => v.is_finite() && (lo..=hi).contains(&v),
            (Range::Duration(lo, hi), Number::Duration(v)) => (lo..=hi).contains(&v),
            _ => false,
        };
        if inside {
            Ok(())
        } else {
            Err(format!("must be from {self}; got {value}"))
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lo, hi) = self.ends();
        match self {
            Range::Duration(..) => write!(f, "\"{lo}\" to \"{hi}\""),
            _ => write!(f, "{lo} to {hi}"),
        }
    }
}

/// Where a numeric key's value is read from.
#[derive(Clone, Copy)]
enum Reader {
    /// A key with one value in the configuration.
    Config(fn(&Config) -> Option<Number>),
    /// A key of every `[rate_limits.<channel>]` table.
    Rate(fn(&RateSettings) -> Option<Number>),
}

/// A numeric key and its range. `path` writes `*` for a table name of the operator's choice
/// (`rate_limits.*.per_second`).
#[derive(Clone, Copy)]
pub struct NumericKey {
    /// The dotted key path.
    pub path: &'static str,
    /// The values `validate()` accepts.
    pub range: Range,
    reader: Reader,
}

impl fmt::Debug for NumericKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumericKey")
            .field("path", &self.path)
            .field("range", &self.range)
            .finish()
    }
}

impl NumericKey {
    /// The values this key has in `config`, each with its full key path (none for an unset
    /// optional key, one per table for `rate_limits.*`).
    pub fn read(&self, config: &Config) -> Vec<(String, Number)> {
        match self.reader {
            Reader::Config(read) => read(config)
                .map(|v| (self.path.to_owned(), v))
                .into_iter()
                .collect(),
            Reader::Rate(read) => {
                let leaf = self.path.rsplit('.').next().unwrap_or(self.path);
                config
                    .rate_limits
                    .iter()
                    .filter_map(|(name, settings)| {
                        read(settings).map(|v| (format!("rate_limits.{name}.{leaf}"), v))
                    })
                    .collect()
            }
        }
    }

    /// The built-in default of this key for `channel`'s rate limits, or of the key itself.
    pub fn default_values(&self) -> Vec<Number> {
        match self.reader {
            Reader::Config(read) => read(&Config::default()).into_iter().collect(),
            Reader::Rate(read) => ChannelKind::ALL
                .iter()
                .filter_map(|c| read(&RateSettings::default_for(*c)))
                .collect(),
        }
    }
}

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
const MIB: u64 = 1024 * 1024;

const fn ints(lo: u64, hi: u64) -> Range {
    Range::Int(lo, hi)
}

const fn millis(lo: u64, hi: u64) -> Range {
    Range::Duration(Duration::from_millis(lo), Duration::from_millis(hi))
}

const fn key(path: &'static str, range: Range, read: fn(&Config) -> Option<Number>) -> NumericKey {
    NumericKey {
        path,
        range,
        reader: Reader::Config(read),
    }
}

const fn rate(
    path: &'static str,
    range: Range,
    read: fn(&RateSettings) -> Option<Number>,
) -> NumericKey {
    NumericKey {
        path,
        range,
        reader: Reader::Rate(read),
    }
}

fn int(n: impl TryInto<u64>) -> Option<Number> {
    Some(Number::Int(n.try_into().unwrap_or(u64::MAX)))
}

fn dur(d: HumanDuration) -> Option<Number> {
    Some(Number::Duration(d.get()))
}

/// Every numeric key and its range: what `validate()` checks and README.md's Configuration
/// section lists. A new numeric key is one line here (a unit test fails until it is).
pub static NUMERIC_KEYS: &[NumericKey] = &[
    key("gateway.max_sessions", ints(1, 10_000_000), |c| {
        int(c.gateway.max_sessions)
    }),
    key("gateway.idle_timeout", millis(100, 30 * DAY), |c| {
        dur(c.gateway.idle_timeout)
    }),
    key("gateway.history_window", ints(1, 10_000), |c| {
        int(c.gateway.history_window)
    }),
    key("gateway.mailbox_capacity", ints(1, 65_536), |c| {
        int(c.gateway.mailbox_capacity)
    }),
    key(
        "gateway.identity_cache_size",
        ints(1, MAX_IDENTITY_CACHE_SIZE as u64),
        |c| int(c.gateway.identity_cache_size),
    ),
    key("gateway.shutdown_grace", millis(0, HOUR), |c| {
        dur(c.gateway.shutdown_grace)
    }),
    key("http.header_timeout", millis(100, HOUR), |c| {
        dur(c.http.header_timeout)
    }),
    key("http.body_timeout", millis(100, HOUR), |c| {
        dur(c.http.body_timeout)
    }),
    key("http.max_connections", ints(1, 1_000_000), |c| {
        int(c.http.max_connections)
    }),
    key("agent.max_concurrent", ints(1, 10_000), |c| {
        int(c.agent.max_concurrent)
    }),
    key("agent.timeout", millis(100, HOUR), |c| dur(c.agent.timeout)),
    key("agent.max_attempts", ints(1, 100), |c| {
        int(c.agent.max_attempts)
    }),
    key("agent.retry_backoff", millis(0, 10 * MIN), |c| {
        dur(c.agent.retry_backoff)
    }),
    key("agent.max_tool_steps", ints(1, 100), |c| {
        int(c.agent.max_tool_steps)
    }),
    key(
        "channels.webchat.max_message_bytes",
        ints(1, 16 * MIB),
        |c| int(c.channels.webchat.max_message_bytes),
    ),
    key("channels.http.max_message_bytes", ints(1, 16 * MIB), |c| {
        int(c.channels.http.max_message_bytes)
    }),
    key("channels.http.timeout", millis(100, 10 * MIN), |c| {
        dur(c.channels.http.timeout)
    }),
    key("channels.http.max_reply_chars", ints(64, 1_000_000), |c| {
        c.channels.http.max_reply_chars.and_then(int)
    }),
    key("channels.telegram.poll_timeout", millis(SEC, HOUR), |c| {
        dur(c.channels.telegram.poll_timeout)
    }),
    key("delivery.max_attempts", ints(1, 1_000), |c| {
        int(c.delivery.max_attempts)
    }),
    key("delivery.retry_backoff", millis(0, HOUR), |c| {
        dur(c.delivery.retry_backoff)
    }),
    key("delivery.max_backoff", millis(1, DAY), |c| {
        dur(c.delivery.max_backoff)
    }),
    key("delivery.probe_interval", millis(10, DAY), |c| {
        dur(c.delivery.probe_interval)
    }),
    key("tools.http_max_bytes", ints(1, 64 * MIB), |c| {
        int(c.tools.http_max_bytes)
    }),
    key("tools.timeout", millis(10, HOUR), |c| dur(c.tools.timeout)),
    key("store.dedupe_window", millis(MIN, 3650 * DAY), |c| {
        dur(c.store.dedupe_window)
    }),
    key(
        "store.transcript_retention",
        millis(HOUR, 36_500 * DAY),
        |c| match c.store.transcript_retention {
            TranscriptRetention::Forever => None,
            TranscriptRetention::For(d) => Some(Number::Duration(d)),
        },
    ),
    key("store.prune_interval", millis(SEC, DAY), |c| {
        dur(c.store.prune_interval)
    }),
    rate(
        "rate_limits.*.per_second",
        Range::Float(0.001, 1_000_000.0),
        |r| r.per_second.map(Number::Float),
    ),
    rate("rate_limits.*.burst", ints(1, 1_000_000), |r| {
        r.burst.and_then(int)
    }),
    rate(
        "rate_limits.*.per_chat_per_second",
        Range::Float(0.001, 1_000_000.0),
        |r| r.per_chat_per_second.map(Number::Float),
    ),
    rate("rate_limits.*.per_chat_burst", ints(1, 1_000_000), |r| {
        r.per_chat_burst.and_then(int)
    }),
];

fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|span| line_at(text, span.start));
    let message = e.message().trim().replace('\n', " ");
    // serde names the offending key in its message; the span points at it in the file.
    let path = e
        .span()
        .and_then(|span| key_path_at(text, span.start))
        .unwrap_or_else(|| "(syntax)".to_owned());
    ConfigError {
        path,
        line,
        message,
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |prefix| prefix.matches('\n').count())
        + 1
}

/// The dotted path of the key whose key or value span contains `offset`, found in the parsed
/// document (the innermost one, searching every table).
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    fn walk(
        table: &toml::de::DeTable<'_>,
        prefix: &mut Vec<String>,
        offset: usize,
    ) -> Option<String> {
        for (key, value) in table.iter() {
            prefix.push(key.get_ref().to_string());
            if let toml::de::DeValue::Table(inner) = value.get_ref()
                && let Some(found) = walk(inner, prefix, offset)
            {
                return Some(found);
            }
            let contains = |span: std::ops::Range<usize>| {
                span.start <= offset && offset < span.end.max(span.start + 1)
            };
            if contains(key.span()) || contains(value.span()) {
                return Some(prefix.join("."));
            }
            prefix.pop();
        }
        None
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    walk(doc.get_ref(), &mut Vec::new(), offset)
}

/// The 1-based line where the key at dotted `path` is written or, for a key that is missing
/// (a required key left out), the line of the nearest enclosing table that is written.
pub fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for part in path.split('.') {
        let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref() == part) else {
            return found;
        };
        found = Some(line_at(text, key.span().start));
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return found,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::parse("").expect("empty config is valid");
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.admin.listen, "127.0.0.1:50051");
        assert_eq!(c.gateway.data_dir, PathBuf::from("data"));
        assert_eq!(c.agent.provider, ProviderKind::Echo);
        assert!(c.channels.webchat.enabled);
        assert_eq!(c.channels.webchat.max_message_bytes, 65536);
    }

    #[test]
    fn durations_parse_in_every_unit() {
        for (text, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("7", 7_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn store_retention_defaults_parse_and_ranges() {
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.store.dedupe_window.get(), Duration::from_secs(7 * 86_400));
        assert_eq!(c.store.transcript_retention, TranscriptRetention::Forever);
        assert_eq!(c.store.prune_interval.get(), Duration::from_secs(300));
        let c = Config::parse(
            "[store]\ndedupe_window = \"2d\"\ntranscript_retention = \"90d\"\nprune_interval = \"30s\"\n",
        )
        .expect("valid");
        assert_eq!(c.store.dedupe_window.get(), Duration::from_secs(2 * 86_400));
        assert_eq!(
            c.store.transcript_retention,
            TranscriptRetention::For(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(
            Config::parse("[store]\ntranscript_retention = \"forever\"\n")
                .expect("forever")
                .store
                .transcript_retention,
            TranscriptRetention::Forever
        );
        for (toml, path) in [
            ("dedupe_window = \"10s\"", "store.dedupe_window"),
            ("dedupe_window = \"3651d\"", "store.dedupe_window"),
            (
                "transcript_retention = \"5m\"",
                "store.transcript_retention",
            ),
            ("prune_interval = \"0s\"", "store.prune_interval"),
            ("prune_interval = \"2d\"", "store.prune_interval"),
        ] {
            let errs = Config::parse(&format!("[store]\n{toml}\n")).expect_err(toml);
            assert!(errs.iter().any(|e| e.path == path), "{toml}: {errs:?}");
        }
        let errs = Config::parse("[store]\ntranscript_retention = \"always\"\n")
            .expect_err("not a retention");
        assert!(
            errs.iter().any(|e| e.message.contains("forever")),
            "{errs:?}"
        );
        assert!(Config::parse("[store]\nbogus = 1\n").is_err());
    }

    #[test]
    fn store_backend_accepts_sqlite_only_and_names_the_accepted_values() {
        assert_eq!(Config::parse("").expect("defaults").store.backend, "sqlite");
        let c = Config::parse("[store]\nbackend = \"sqlite\"\n").expect("sqlite");
        assert_eq!(c.store.backend, "sqlite");
        let errs = Config::parse("[store]\nbackend = \"postgres\"\n").expect_err("postgres");
        let e = errs
            .iter()
            .find(|e| e.path == "store.backend")
            .unwrap_or_else(|| panic!("no store.backend error: {errs:?}"));
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.message.contains("`postgres`") && e.message.contains("accepted values: sqlite"),
            "{e}"
        );
        let mut c = Config::parse("").expect("defaults");
        c.store.backend = "SQLite".to_owned();
        assert!(
            c.validate().iter().any(|e| e.path == "store.backend"),
            "the name is exact"
        );
        let errs = Config::parse("[store]\nbackend = 1\n").expect_err("not a string");
        assert!(errs.iter().any(|e| e.path == "store.backend"), "{errs:?}");
    }

    #[test]
    fn store_path_defaults_to_gateway_db_and_is_relative_to_the_data_dir() {
        let c = Config::parse("[gateway]\ndata_dir = \"/var/lib/gw\"\n").expect("defaults");
        assert_eq!(c.store.path, None);
        assert_eq!(c.database_path(), PathBuf::from("/var/lib/gw/gateway.db"));
        let c = Config::parse(
            "[gateway]\ndata_dir = \"/var/lib/gw\"\n[store]\npath = \"db/main.sqlite\"\n",
        )
        .expect("relative");
        assert_eq!(
            c.database_path(),
            PathBuf::from("/var/lib/gw/db/main.sqlite")
        );
        let c = Config::parse(
            "[gateway]\ndata_dir = \"/var/lib/gw\"\n[store]\npath = \"/srv/gw.db\"\n",
        )
        .expect("absolute");
        assert_eq!(c.database_path(), PathBuf::from("/srv/gw.db"));
        let errs = Config::parse("[store]\npath = \"\"\n").expect_err("empty");
        assert!(errs.iter().any(|e| e.path == "store.path"), "{errs:?}");
        let errs = Config::parse("[store]\npath = 3\n").expect_err("not a path");
        assert!(errs.iter().any(|e| e.path == "store.path"), "{errs:?}");
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let errs = Config::parse("[gateway]\nmax_sessions = 5\n\n[agent]\nmodle = \"x\"\n")
            .expect_err("typo must be rejected");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(5), "{errs:?}");
        assert!(errs[0].message.contains("modle"), "{errs:?}");
    }

    #[test]
    fn every_semantic_error_is_reported_at_once_with_lines() {
        let text = "[gateway]\nmax_sessions = 0\n[http]\nlisten = \"nowhere\"\n[agent]\nprovider = \"openai\"\nbase_url = \"not a url\"\nmax_concurrent = 0\n";
        let errs = Config::parse(text).expect_err("invalid");
        let paths: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            paths,
            vec![
                ("gateway.max_sessions", Some(2)),
                ("http.listen", Some(4)),
                ("agent.base_url", Some(7)),
                ("agent.max_concurrent", Some(8)),
            ]
        );
    }

    #[test]
    fn a_missing_key_points_at_its_table() {
        let errs =
            Config::parse("[gateway]\n\n[channels.http]\nenabled = true\n").expect_err("invalid");
        assert_eq!(errs[0].path, "channels.http.callback_url");
        assert_eq!(errs[0].line, Some(3), "the [channels.http] header");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let errs = Config::parse("[gateway]\nmax_sessions = \"many\"\n").expect_err("invalid");
        assert_eq!(errs[0].line, Some(2));
        assert!(errs[0].path.contains("max_sessions"), "{errs:?}");
    }

    /// Every numeric key serde reads in [`Config`], found by deserializing it from a tracing
    /// deserializer that answers every struct field, optional value and map entry: so a key
    /// added to any section, with or without a default, shows up here.
    mod trace {
        use std::cell::RefCell;

        use serde::de::value::{Error, SeqDeserializer, StrDeserializer};
        use serde::de::{DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
        use serde::forward_to_deserialize_any;

        /// What kind of value a key was asked as.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Kind {
            Int,
            Float,
            /// `deserialize_any`: a duration (the only such key in the file).
            Any,
        }

        pub type Found = RefCell<Vec<(String, Kind)>>;

        pub struct Tracer<'a> {
            pub path: String,
            pub found: &'a Found,
        }

        impl Tracer<'_> {
            fn note(&self, kind: Kind) {
                self.found.borrow_mut().push((self.path.clone(), kind));
            }
        }

        struct Fields<'a> {
            path: String,
            keys: Vec<&'static str>,
            next: usize,
            found: &'a Found,
        }

        impl<'de> MapAccess<'de> for Fields<'_> {
            type Error = Error;

            fn next_key_seed<K: DeserializeSeed<'de>>(
                &mut self,
                seed: K,
            ) -> Result<Option<K::Value>, Error> {
                match self.keys.get(self.next) {
                    Some(key) => {
                        let key: StrDeserializer<'_, Error> = key.into_deserializer();
                        seed.deserialize(key).map(Some)
                    }
                    None => Ok(None),
                }
            }

            fn next_value_seed<V: DeserializeSeed<'de>>(
                &mut self,
                seed: V,
            ) -> Result<V::Value, Error> {
                let key = self.keys.get(self.next).copied().unwrap_or("?");
                self.next += 1;
                let path = if self.path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{}.{key}", self.path)
                };
                seed.deserialize(Tracer {
                    path,
                    found: self.found,
                })
            }
        }

        macro_rules! ints {
            ($($method:ident),*) => {$(
                fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                    self.note(Kind::Int);
                    visitor.visit_u8(1)
                }
            )*};
        }

        impl<'de> serde::Deserializer<'de> for Tracer<'_> {
            type Error = Error;

            fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.note(Kind::Any);
                visitor.visit_u64(1)
            }

            ints!(
                deserialize_u8,
                deserialize_u16,
                deserialize_u32,
                deserialize_u64,
                deserialize_i8,
                deserialize_i16,
                deserialize_i32,
                deserialize_i64
            );

            fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.note(Kind::Float);
                visitor.visit_f64(1.0)
            }

            fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.note(Kind::Float);
                visitor.visit_f64(1.0)
            }

            fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.visit_bool(false)
            }

            fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.visit_str("x")
            }

            fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.visit_str("x")
            }

            fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.visit_some(self)
            }

            fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.visit_seq(SeqDeserializer::<_, Error>::new(std::iter::empty::<u8>()))
            }

            fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.visit_map(Fields {
                    path: self.path,
                    keys: vec!["*"],
                    next: 0,
                    found: self.found,
                })
            }

            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                visitor: V,
            ) -> Result<V::Value, Error> {
                visitor.visit_map(Fields {
                    path: self.path,
                    keys: fields.to_vec(),
                    next: 0,
                    found: self.found,
                })
            }

            fn deserialize_enum<V: Visitor<'de>>(
                self,
                _name: &'static str,
                variants: &'static [&'static str],
                visitor: V,
            ) -> Result<V::Value, Error> {
                let first: StrDeserializer<'_, Error> =
                    variants.first().copied().unwrap_or("x").into_deserializer();
                visitor.visit_enum(first)
            }

            fn deserialize_newtype_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                visitor: V,
            ) -> Result<V::Value, Error> {
                visitor.visit_newtype_struct(self)
            }

            forward_to_deserialize_any! {
                i128 u128 char bytes byte_buf unit unit_struct tuple tuple_struct identifier
                ignored_any
            }
        }
    }

    fn traced_numeric_keys() -> Vec<(String, trace::Kind)> {
        let found = trace::Found::default();
        Config::deserialize(trace::Tracer {
            path: String::new(),
            found: &found,
        })
        .expect("the tracer answers every key");
        found.into_inner()
    }

    #[test]
    fn the_range_table_covers_every_numeric_key() {
        let traced = traced_numeric_keys();
        assert!(traced.len() >= 20, "the tracer found the keys: {traced:?}");
        for (path, kind) in &traced {
            let entry = NUMERIC_KEYS
                .iter()
                .find(|k| k.path == path)
                .unwrap_or_else(|| {
                    panic!("numeric key `{path}` has no range in NUMERIC_KEYS; add one line there")
                });
            let expected = match entry.range {
                Range::Int(..) => trace::Kind::Int,
                Range::Float(..) => trace::Kind::Float,
                Range::Duration(..) => trace::Kind::Any,
            };
            assert_eq!(*kind, expected, "{path}: its range is of the wrong kind");
        }
        for key in NUMERIC_KEYS {
            assert!(
                traced.iter().any(|(p, _)| p == key.path),
                "NUMERIC_KEYS lists `{}`, which is not a key of the file",
                key.path
            );
        }
    }

    #[test]
    fn every_default_is_inside_its_range_and_every_range_is_ordered() {
        for key in NUMERIC_KEYS {
            let (lo, hi) = key.range.ends();
            key.range
                .check(lo)
                .unwrap_or_else(|e| panic!("{}: {e}", key.path));
            key.range
                .check(hi)
                .unwrap_or_else(|e| panic!("{}: {e}", key.path));
            for value in key.default_values() {
                key.range
                    .check(value)
                    .unwrap_or_else(|e| panic!("the default of {}: {e}", key.path));
            }
        }
    }

    #[test]
    fn the_readme_lists_every_numeric_range() {
        let readme = include_str!("../../README.md");
        for key in NUMERIC_KEYS {
            let row = format!("| `{}` | {} |", key.path, key.range);
            assert!(
                readme.contains(&row),
                "README.md's Configuration section must have the row\n{row}"
            );
        }
    }

    #[test]
    fn out_of_range_values_name_the_key_line_and_range() {
        for (text, path, line) in [
            (
                "[rate_limits.http]\nper_second = 1e-12\n",
                "rate_limits.http.per_second",
                2,
            ),
            (
                "[rate_limits.http]\nper_chat_per_second = 1e-300\n",
                "rate_limits.http.per_chat_per_second",
                2,
            ),
            (
                "[rate_limits.webchat]\nper_chat_per_second = nan\n",
                "rate_limits.webchat.per_chat_per_second",
                2,
            ),
            (
                "[rate_limits.webchat]\nper_second = inf\n",
                "rate_limits.webchat.per_second",
                2,
            ),
            (
                "[rate_limits.webchat]\nper_second = -1.0\n",
                "rate_limits.webchat.per_second",
                2,
            ),
            (
                "[agent]\nmax_concurrent = 2305843009213693952\n",
                "agent.max_concurrent",
                2,
            ),
            (
                "[gateway]\n\nmailbox_capacity = 2305843009213693952\n",
                "gateway.mailbox_capacity",
                3,
            ),
            (
                "[delivery]\nprobe_interval = 0\n",
                "delivery.probe_interval",
                2,
            ),
            (
                "[gateway]\nidle_timeout = \"0ms\"\n",
                "gateway.idle_timeout",
                2,
            ),
            (
                "[channels.telegram]\npoll_timeout = 18446744073709551615\n",
                "channels.telegram.poll_timeout",
                2,
            ),
            (
                "[channels.telegram]\npoll_timeout = \"999999999999d\"\n",
                "channels.telegram.poll_timeout",
                2,
            ),
        ] {
            let errs = Config::parse(text).expect_err(text);
            assert_eq!(errs.len(), 1, "{text}: {errs:?}");
            assert_eq!(errs[0].path, path, "{text}: {errs:?}");
            assert_eq!(errs[0].line, Some(line), "{text}: {errs:?}");
        }
        let errs = Config::parse("[agent]\nmax_concurrent = 0\n").expect_err("0");
        assert_eq!(errs[0].message, "must be from 1 to 10000; got 0");
        let errs = Config::parse("[gateway]\nidle_timeout = \"50ms\"\n").expect_err("50ms");
        assert_eq!(
            errs[0].message,
            "must be from \"100ms\" to \"30d\"; got 50ms"
        );
    }

    #[test]
    fn every_type_error_and_every_semantic_error_is_reported_in_one_pass() {
        let text = "[gateway]\nbogus = 1\nidle_timeout = \"abc\"\nmax_sessions = 0\n[agent]\nprovider = \"foo\"\n[channels.http]\nenabled = true\ntimeout = -5\n";
        let errs = Config::parse(text).expect_err("invalid");
        let found: Vec<(&str, Option<usize>)> =
            errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            found,
            vec![
                ("gateway.bogus", Some(2)),
                ("gateway.idle_timeout", Some(3)),
                ("gateway.max_sessions", Some(4)),
                ("agent.provider", Some(6)),
                // The missing callback_url points at its table.
                ("channels.http.callback_url", Some(7)),
                ("channels.http.timeout", Some(9)),
            ],
            "{errs:#?}"
        );
        assert!(
            errs[0].message.contains("unknown field `bogus`"),
            "{errs:?}"
        );
        assert!(errs[1].message.contains(DURATION_FORMS), "{errs:?}");
        assert!(errs[3].message.contains("foo"), "{errs:?}");
        assert!(errs[5].message.contains(DURATION_FORMS), "{errs:?}");
        assert!(!errs[5].message.contains("untagged"), "{errs:?}");
    }

    #[test]
    fn a_removed_key_takes_its_default_and_is_not_reported_twice() {
        // The bad callback_url is reported for its type, not again as missing.
        let errs = Config::parse("[channels.http]\nenabled = true\ncallback_url = 5\n")
            .expect_err("invalid");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "channels.http.callback_url");
        let errs = Config::parse("rate_limits = 5\n[agent]\nmax_attempts = 0\n").expect_err("x");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["rate_limits", "agent.max_attempts"], "{errs:?}");
    }

    #[test]
    fn durations_of_every_wrong_shape_say_what_a_duration_looks_like() {
        for value in ["-5", "\"abc\"", "1.5", "true", "\"\"", "[1]", "\"-5s\""] {
            let text = format!("[agent]\ntimeout = {value}\n");
            let errs = Config::parse(&text).expect_err(&text);
            assert_eq!(errs.len(), 1, "{text}: {errs:?}");
            assert_eq!(errs[0].path, "agent.timeout", "{text}: {errs:?}");
            assert!(errs[0].message.contains(DURATION_FORMS), "{text}: {errs:?}");
        }
    }

    #[test]
    fn every_url_key_is_checked_the_same_way() {
        let bad = [
            "ftp://x",
            "not a url",
            "",
            "http://",
            "file:///etc/passwd",
            "mailto:a@b.c",
        ];
        let good = ["http://127.0.0.1:9/x", "https://example.com"];
        for (key, table, extra) in [
            ("agent.base_url", "[agent]", ""),
            ("channels.telegram.api_url", "[channels.telegram]", ""),
            ("channels.discord.api_url", "[channels.discord]", ""),
            (
                "channels.http.callback_url",
                "[channels.http]",
                "enabled = true\n",
            ),
            ("channels.telegram.webhook_url", "[channels.telegram]", ""),
        ] {
            let leaf = key.rsplit('.').next().expect("a leaf");
            for value in bad {
                let text = format!("{table}\n{extra}{leaf} = {value:?}\n");
                let errs = Config::parse(&text).expect_err(&text);
                assert_eq!(errs.len(), 1, "{text}: {errs:?}");
                assert_eq!(errs[0].path, key, "{text}: {errs:?}");
                assert!(errs[0].line.is_some(), "{text}: {errs:?}");
                assert!(check_url(key, value).is_err(), "{key} = {value:?}");
            }
            for value in good {
                let text = format!("{table}\n{extra}{leaf} = {value:?}\n");
                Config::parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            }
        }
    }

    #[test]
    fn telegram_webhook_mode_needs_a_webhook_url() {
        let text = "[channels.telegram]\nenabled = true\ntoken_file = \"/nonexistent\"\nmode = \"webhook\"\n";
        let errs = Config::parse(text).expect_err("invalid");
        assert!(
            errs.iter()
                .any(|e| e.path == "channels.telegram.webhook_url"),
            "{errs:?}"
        );
    }

    /// What the daemon builds from a value that never went through `validate()` (a
    /// `Config` made in code) degrades instead of panicking.
    #[tokio::test]
    async fn values_past_validation_degrade_without_panicking() {
        use crate::delivery::rate_limit::ChannelLimits;
        for (rate, burst) in [(1e-300, u32::MAX), (1e-12, 1), (1e300, 0), (f64::NAN, 5)] {
            let limits = ChannelLimits::new(
                ChannelKind::Http,
                RateSettings {
                    per_second: Some(rate),
                    burst: Some(burst),
                    per_chat_per_second: Some(rate),
                    per_chat_burst: Some(burst),
                },
            );
            // The first send of a bucket is never held.
            tokio::time::timeout(Duration::from_secs(5), limits.acquire("c"))
                .await
                .unwrap_or_else(|_| panic!("rate {rate}, burst {burst}: the first send waits"));
        }
        crate::agent::llm::OpenAi::new(
            "http://127.0.0.1:9/v1",
            "m",
            None,
            Duration::MAX,
            usize::MAX,
        )
        .expect("a client with the largest limits");
        let _bot = crate::channels::telegram::bot("1:x", "http://127.0.0.1:9", Duration::MAX)
            .expect("a bot with the longest poll");
    }

    proptest::proptest! {
        /// Garbled and generated TOML never panics the parser, and every error names a key or a
        /// line.
        #[test]
        fn prop_config_text_never_panics_and_errors_are_located(
            text in garbled_config(),
        ) {
            if let Err(errors) = Config::parse(&text) {
                proptest::prop_assert!(!errors.is_empty());
                for e in &errors {
                    proptest::prop_assert!(
                        e.line.is_some() || (!e.path.is_empty() && !e.path.starts_with('(')),
                        "{e:?} in {text:?}"
                    );
                }
            }
        }
    }

    /// Config text from fragments of real keys, values of every type, and raw noise.
    fn garbled_config() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let tables = prop::sample::select(vec![
            "[gateway]",
            "[http]",
            "[admin]",
            "[log]",
            "[agent]",
            "[channels.webchat]",
            "[channels.http]",
            "[channels.telegram]",
            "[channels.discord]",
            "[delivery]",
            "[rate_limits.http]",
            "[rate_limits.nope]",
            "[tools]",
            "[workflows]",
            "[[gateway]]",
            "[channels]",
            "[rate_limits]",
            "",
        ]);
        let keys = prop::sample::select(
            NUMERIC_KEYS
                .iter()
                .map(|k| k.path.rsplit('.').next().unwrap_or(k.path))
                .chain([
                    "enabled",
                    "listen",
                    "callback_url",
                    "base_url",
                    "provider",
                    "mode",
                    "webhook_url",
                    "data_dir",
                    "level",
                    "bogus",
                    "api_url",
                    "http_allowlist",
                ])
                .collect::<Vec<_>>(),
        );
        let values = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|x| format!("{x:?}")),
            Just("nan".to_owned()),
            Just("-inf".to_owned()),
            Just("true".to_owned()),
            "[a-z0-9 :/.]{0,12}".prop_map(|s| format!("{s:?}")),
            "[0-9]{1,25}(ms|s|m|h|d|x)?".prop_map(|s| format!("{s:?}")),
            Just("[1, \"a\"]".to_owned()),
            Just("{ a = 1 }".to_owned()),
            "\\PC{0,8}",
        ];
        let line = prop_oneof![
            tables.prop_map(str::to_owned),
            (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
            "\\PC{0,20}",
        ];
        prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    #[test]
    fn identity_cache_size_is_range_checked() {
        for bad in ["0", "100000001"] {
            let text = format!("[gateway]\nidentity_cache_size = {bad}\n");
            let errs = Config::parse(&text).expect_err("out of range");
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].path, "gateway.identity_cache_size");
            assert!(errs[0].message.contains("1 to 100000000"), "{errs:?}");
        }
        let ok = Config::parse("[gateway]\nidentity_cache_size = 1\n").expect("valid");
        assert_eq!(ok.gateway.identity_cache_size, 1);
        let default = Config::parse("").expect("valid");
        assert_eq!(default.gateway.identity_cache_size, 100_000);
    }
}
