//! The tables of the configuration file other than the channels, access and rate limits: their
//! types and built-in defaults (`[gateway]`, `[http]`, `[admin]`, `[log]`, `[agent]`,
//! `[delivery]`, `[store]`, `[workflows]`, `[tools]`, `[budgets]`, `[cluster]`). Validation across tables
//! lives with [`Config`](super::Config).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// `[budgets]`: LLM spending limits; an absent key is no limit. Tokens per day are counted over
/// the UTC calendar day, turns per minute over a sliding 60 seconds. `gatewayctl budgets set`
/// overrides the user limits for one user.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Prompt plus completion tokens one user may spend per UTC day.
    pub user_tokens_per_day: Option<u64>,
    /// Agent turns one user may have in any 60 seconds.
    pub user_turns_per_minute: Option<u64>,
    /// Prompt plus completion tokens the whole gateway may spend per UTC day.
    pub global_tokens_per_day: Option<u64>,
}

/// `[cluster]`: several instances sharing one PostgreSQL database (multi-instance mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Run as one member of a cluster (needs `store.backend = "postgres"`).
    pub enabled: bool,
    /// This instance's name in the cluster; `None`: the hostname plus the process id.
    pub instance_id: Option<String>,
    /// How many partitions sessions hash into; every instance of a cluster must agree.
    pub partitions: u32,
    /// How long a lease (a partition, a channel's connection, a singleton job) lasts unless
    /// renewed; an instance that dies is replaced after about this long.
    pub lease_ttl: HumanDuration,
    /// How often an instance heartbeats, renews its leases and rebalances.
    pub renew_interval: HumanDuration,
    /// Where the other instances reach this one's HTTP listener (WebChat replies whose socket
    /// is held here); `None`: `http://` plus `http.listen`.
    pub advertise_url: Option<String>,
    /// The environment variable holding the secret the instances share for their relay.
    pub secret_env: Option<String>,
    /// A file holding that secret (alternative to `secret_env`).
    pub secret_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            instance_id: None,
            partitions: 64,
            lease_ttl: HumanDuration(Duration::from_secs(3)),
            renew_interval: HumanDuration(Duration::from_secs(1)),
            advertise_url: None,
            secret_env: None,
            secret_file: None,
        }
    }
}

impl ClusterConfig {
    /// How often the instance renews: `renew_interval`, but at most half of `lease_ttl`, so a
    /// lease never lapses between two renewals.
    pub fn renew_every(&self) -> Duration {
        self.renew_interval.get().min(self.lease_ttl.get() / 2)
    }

    /// `instance_id`, or the hostname plus the process id.
    pub fn instance_id(&self) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gatewayd".to_owned());
        format!("{host}-{}", std::process::id())
    }
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
    /// `postgres`: the environment variable holding the database's libpq URL.
    pub url_env: Option<String>,
    /// `postgres`: a file holding the database's libpq URL (alternative to `url_env`).
    pub url_file: Option<PathBuf>,
    /// `postgres`: connections the store's pool keeps open at most.
    pub max_connections: usize,
}

/// The accepted values of `store.backend`.
pub const STORE_BACKENDS: &[&str] = &["sqlite", "postgres"];

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "sqlite".to_owned(),
            path: None,
            dedupe_window: HumanDuration(Duration::from_secs(7 * 86_400)),
            transcript_retention: TranscriptRetention::Forever,
            prune_interval: HumanDuration(Duration::from_secs(5 * 60)),
            url_env: None,
            url_file: None,
            max_connections: crate::store::postgres::DEFAULT_MAX_CONNECTIONS,
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
    /// `[tools.send_message]`.
    pub send_message: SendMessageToolConfig,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            http_allowlist: Vec::new(),
            http_max_bytes: 256 * 1024,
            timeout: HumanDuration(Duration::from_secs(15)),
            send_message: SendMessageToolConfig::default(),
        }
    }
}

/// `[tools.send_message]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendMessageToolConfig {
    /// Where the tool may send for a user's turn: `same_chat`, `same_user` or `any`.
    pub scope: crate::agent::tools::SendScope,
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
