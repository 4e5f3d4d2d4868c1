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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
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
    /// `setWebhook` at start); leave unset to register it yourself.
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

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration; write e.g. \"500ms\", \"30s\", \"5m\"")
    })?;
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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Self(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(Self)
                .map_err(serde::de::Error::custom),
        }
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

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigError>> {
        let config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => return Err(vec![parse_error(text, &e)]),
        };
        let mut errors = config.validate();
        for e in &mut errors {
            e.line = line_of_key(text, &e.path);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Checks values that parse but make no sense, returning every problem found.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_owned(),
                line: None,
                message,
            })
        };
        if self.gateway.max_sessions == 0 {
            err("gateway.max_sessions", "must be at least 1".to_owned());
        }
        if self.gateway.idle_timeout.get() < Duration::from_millis(100) {
            err("gateway.idle_timeout", "must be at least 100ms".to_owned());
        }
        if self.gateway.history_window == 0 {
            err("gateway.history_window", "must be at least 1".to_owned());
        }
        if self.gateway.mailbox_capacity == 0 {
            err("gateway.mailbox_capacity", "must be at least 1".to_owned());
        }
        if !(1..=MAX_IDENTITY_CACHE_SIZE).contains(&self.gateway.identity_cache_size) {
            err(
                "gateway.identity_cache_size",
                format!("must be from 1 to {MAX_IDENTITY_CACHE_SIZE}"),
            );
        }
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
        if agent.provider == ProviderKind::Openai {
            if let Err(e) = reqwest::Url::parse(&agent.base_url) {
                err(
                    "agent.base_url",
                    format!("`{}` is not a URL: {e}", agent.base_url),
                );
            }
            if agent.model.trim().is_empty() {
                err("agent.model", "must name a model".to_owned());
            }
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
        if agent.max_concurrent == 0 {
            err("agent.max_concurrent", "must be at least 1".to_owned());
        }
        if agent.max_attempts == 0 {
            err("agent.max_attempts", "must be at least 1".to_owned());
        }
        if agent.timeout.get().is_zero() {
            err("agent.timeout", "must be more than 0".to_owned());
        }
        let http = &self.channels.http;
        if http.enabled {
            match &http.callback_url {
                None => err(
                    "channels.http.callback_url",
                    "required when channels.http.enabled = true; replies are POSTed there"
                        .to_owned(),
                ),
                Some(url) => match reqwest::Url::parse(url) {
                    Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                    Ok(_) => err(
                        "channels.http.callback_url",
                        format!("`{url}` must be an http:// or https:// URL"),
                    ),
                    Err(e) => err(
                        "channels.http.callback_url",
                        format!("`{url}` is not a URL: {e}"),
                    ),
                },
            }
        }
        for (path, bytes) in [
            (
                "channels.webchat.max_message_bytes",
                self.channels.webchat.max_message_bytes,
            ),
            ("channels.http.max_message_bytes", http.max_message_bytes),
        ] {
            if bytes == 0 {
                err(path, "must be at least 1".to_owned());
            }
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
        for (prefix, enabled, token_env, token_file, api_url) in [
            (
                "channels.telegram",
                tg.enabled,
                &tg.token_env,
                &tg.token_file,
                &tg.api_url,
            ),
            (
                "channels.discord",
                dc.enabled,
                &dc.token_env,
                &dc.token_file,
                &dc.api_url,
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
            if let Err(e) = reqwest::Url::parse(api_url) {
                err(
                    &format!("{prefix}.api_url"),
                    format!("`{api_url}` is not a URL: {e}"),
                );
            }
        }
        if tg.enabled && tg.mode == TelegramMode::Webhook {
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
        if self.delivery.max_attempts == 0 {
            err("delivery.max_attempts", "must be at least 1".to_owned());
        }
        if self.delivery.probe_interval.get() < Duration::from_millis(10) {
            err(
                "delivery.probe_interval",
                "must be at least 10ms".to_owned(),
            );
        }
        if http.max_reply_chars.is_some_and(|n| n < 64) {
            err(
                "channels.http.max_reply_chars",
                "must be at least 64 characters".to_owned(),
            );
        }
        if let Err(e) = crate::agent::tools::HttpGet::new(
            &self.tools.http_allowlist,
            self.tools.http_max_bytes.max(1),
            Duration::from_secs(1),
        ) {
            err("tools.http_allowlist", e);
        }
        if self.tools.http_max_bytes == 0 {
            err("tools.http_max_bytes", "must be at least 1".to_owned());
        }
        for (name, settings) in &self.rate_limits {
            let prefix = format!("rate_limits.{name}");
            if name.parse::<ChannelKind>().is_err() {
                let known: Vec<&str> = ChannelKind::ALL.iter().map(|c| c.as_str()).collect();
                err(
                    &prefix,
                    format!(
                        "unknown channel `{name}`; known channels: {}",
                        known.join(", ")
                    ),
                );
            }
            for (path, message) in settings.validate(&prefix) {
                err(&path, message);
            }
        }
        errors
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

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.gateway.data_dir.join("gateway.db")
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
