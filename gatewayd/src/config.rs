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

mod access;
mod duration;
mod parse;
mod ranges;
mod sections;

pub use access::*;
pub use duration::*;
pub use parse::*;
pub use ranges::*;
pub use sections::*;

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
    /// `[channels.<name>]`: each channel adapter's own section, as written. Each adapter parses
    /// and validates its own (`channels::registry::check`); `runtime::parse_config` does both.
    pub channels: BTreeMap<String, toml::Table>,
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
    /// `[access]`: who may talk to the agent (defaults of every channel) and pairing limits.
    pub access: AccessConfig,
    /// `[budgets]`: limits on what each user, and the gateway, may spend on the LLM.
    pub budgets: BudgetsConfig,
    /// `[cluster]`: several instances on one shared database.
    pub cluster: ClusterConfig,
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
    /// `check` adds the errors of the channel sections (`channels::registry::check`).
    pub fn load(path: &Path, check: SectionCheck) -> Result<Self, ConfigErrors> {
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
        let mut config = Self::parse_with(&text, check).map_err(fail)?;
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
    ///
    /// This checks everything but the inside of `[channels.<name>]` sections, which belong to
    /// their adapters: `channels::registry::parse_config` checks both, as `gatewayd` does.
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigError>> {
        Self::parse_with(text, |_, _| Vec::new())
    }

    /// [`Config::parse`], with `check` adding the errors of the channel sections in the same run
    /// (`channels::registry::check`).
    pub fn parse_with(text: &str, check: SectionCheck) -> Result<Self, Vec<ConfigError>> {
        match Self::parse_report(text, check) {
            (Some(config), errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(errors),
        }
    }

    /// [`Config::parse`], returning what it could read (defaults in place of refused keys) beside
    /// every error, so the channel sections can be checked in the same run.
    pub fn parse_report(text: &str, check: SectionCheck) -> (Option<Self>, Vec<ConfigError>) {
        let doc: toml::Table = match toml::from_str(text) {
            Ok(doc) => doc,
            Err(e) => return (None, vec![parse_error(text, &e)]),
        };
        let Passes {
            value: parsed,
            mut errors,
            removed,
        } = deserialize_in_passes::<Config>(doc, "", text);
        if let Some(config) = &parsed {
            for mut e in config.validate() {
                if !under_removed(&removed, &e.path) {
                    e.line = line_of_key(text, &e.path);
                    errors.push(e);
                }
            }
            for mut e in check(config, text) {
                if e.line.is_none() {
                    e.line = line_of_key(text, &e.path);
                }
                errors.push(e);
            }
        }
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        (parsed, errors)
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
        self.validate_store_url(&mut err);
        self.validate_cluster(&mut err);
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
        errors
    }

    /// The `[cluster]` keys: a cluster needs the shared backend, a relay secret and an id others
    /// can tell apart. (A `renew_interval` longer than half the `lease_ttl` is not refused: the
    /// runtime renews at half the lease instead, and says so, see `ClusterConfig::renew_every`.)
    fn validate_cluster(&self, err: &mut impl FnMut(&str, String)) {
        let cluster = &self.cluster;
        if let Some(id) = &cluster.instance_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            err(
                "cluster.instance_id",
                format!(
                    "`{id}` is not an instance id: use 1 to 64 letters, digits, `.`, `_` or `-`, e.g. \"gw-1\""
                ),
            );
        }
        if let Some(url) = &cluster.advertise_url
            && let Err(e) = check_url("cluster.advertise_url", url)
        {
            err(&e.path, e.message);
        }
        if !cluster.enabled {
            return;
        }
        if self.store.backend != "postgres" {
            err(
                "cluster.enabled",
                format!(
                    "a cluster shares its state through PostgreSQL, but store.backend is `{}`; set [store] backend = \"postgres\" (see \"Running several instances\" in README.md)",
                    self.store.backend
                ),
            );
        }
        if cluster.secret_env.is_none() && cluster.secret_file.is_none() {
            err(
                "cluster.secret_env",
                "a cluster needs the secret its instances share for their relay: set secret_env = \"GATEWAY_CLUSTER_SECRET\" (a variable holding at least 16 random characters) or secret_file = \"/run/secrets/cluster_secret\"".to_owned(),
            );
        } else if let Some(e) = parse::check_secret(
            "cluster",
            "secret",
            "the cluster secret",
            &cluster.secret_env,
            &cluster.secret_file,
            true,
        ) {
            err(&e.path, e.message);
        }
    }

    /// The `[store]` URL keys: `postgres` needs exactly one of `url_env` and `url_file`, naming
    /// a libpq URL; `sqlite` takes neither. The URL itself is never part of a message.
    fn validate_store_url(&self, err: &mut impl FnMut(&str, String)) {
        let store = &self.store;
        if store.backend != "postgres" {
            for (key, set) in [
                ("store.url_env", store.url_env.is_some()),
                ("store.url_file", store.url_file.is_some()),
            ] {
                if set {
                    err(
                        key,
                        format!(
                            "is only used with backend = \"postgres\" (the backend is `{}`); remove it or set backend = \"postgres\"",
                            store.backend
                        ),
                    );
                }
            }
            return;
        }
        if store.url_env.is_none() && store.url_file.is_none() {
            err(
                "store.url_env",
                "backend = \"postgres\" needs the database URL: set url_env = \"DATABASE_URL\" (a variable holding e.g. postgres://gateway:secret@db.example:5432/gateway) or url_file = \"/run/secrets/database_url\"".to_owned(),
            );
            return;
        }
        if let Some(e) = parse::check_secret(
            "store",
            "url",
            "the database URL",
            &store.url_env,
            &store.url_file,
            true,
        ) {
            err(&e.path, e.message);
            return;
        }
        match self.store_url() {
            Ok(Some(url)) => {
                if let Err(e) = crate::store::postgres::parse_url(&url) {
                    let key = if store.url_env.is_some() {
                        "store.url_env"
                    } else {
                        "store.url_file"
                    };
                    err(key, e.to_string());
                }
            }
            Ok(None) => {}
            Err(e) => {
                let key = if store.url_env.is_some() {
                    "store.url_env"
                } else {
                    "store.url_file"
                };
                err(key, e);
            }
        }
    }

    /// The cluster's shared relay secret (`None` when none is configured).
    pub fn cluster_secret(&self) -> Result<Option<String>, String> {
        Self::secret(
            "cluster.secret",
            &self.cluster.secret_env,
            &self.cluster.secret_file,
        )
    }

    /// The PostgreSQL URL through `store.url_env` or `store.url_file`; `None` when neither is set.
    pub fn store_url(&self) -> Result<Option<String>, String> {
        Self::secret("store.url", &self.store.url_env, &self.store.url_file)
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

    /// The rate settings of `channel`: its adapter's `defaults` with the file's overrides.
    pub fn rate_settings(&self, channel: ChannelKind, defaults: RateSettings) -> RateSettings {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::channels::registry::parse_config;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse_config("").expect("empty config is valid");
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.admin.listen, "127.0.0.1:50051");
        assert_eq!(c.gateway.data_dir, PathBuf::from("data"));
        assert_eq!(c.agent.provider, ProviderKind::Echo);
        assert!(c.channels.is_empty(), "every channel section defaults");
        assert_eq!(
            crate::channels::registry::enabled(&c),
            vec![ChannelKind::new("webchat")]
        );
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
        let c = parse_config("").expect("defaults");
        assert_eq!(c.store.dedupe_window.get(), Duration::from_secs(7 * 86_400));
        assert_eq!(c.store.transcript_retention, TranscriptRetention::Forever);
        assert_eq!(c.store.prune_interval.get(), Duration::from_secs(300));
        let c = parse_config(
            "[store]\ndedupe_window = \"2d\"\ntranscript_retention = \"90d\"\nprune_interval = \"30s\"\n",
        )
        .expect("valid");
        assert_eq!(c.store.dedupe_window.get(), Duration::from_secs(2 * 86_400));
        assert_eq!(
            c.store.transcript_retention,
            TranscriptRetention::For(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(
            parse_config("[store]\ntranscript_retention = \"forever\"\n")
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
            let errs = parse_config(&format!("[store]\n{toml}\n")).expect_err(toml);
            assert!(errs.iter().any(|e| e.path == path), "{toml}: {errs:?}");
        }
        let errs = parse_config("[store]\ntranscript_retention = \"always\"\n")
            .expect_err("not a retention");
        assert!(
            errs.iter().any(|e| e.message.contains("forever")),
            "{errs:?}"
        );
        assert!(parse_config("[store]\nbogus = 1\n").is_err());
    }

    #[test]
    fn send_message_scope_defaults_to_same_user_and_names_the_accepted_values() {
        use crate::agent::tools::SendScope;
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.tools.send_message.scope, SendScope::SameUser);
        for (value, want) in [
            ("same_chat", SendScope::SameChat),
            ("same_user", SendScope::SameUser),
            ("any", SendScope::Any),
        ] {
            let text = format!(
                "[tools]\nhttp_max_bytes = 1024\n[tools.send_message]\nscope = \"{value}\"\n"
            );
            let c = Config::parse(&text).expect(value);
            assert_eq!(c.tools.send_message.scope, want);
            assert_eq!(
                c.tools.http_max_bytes, 1024,
                "the other [tools] keys still work"
            );
        }
        let errs =
            Config::parse("[tools.send_message]\nscope = \"everyone\"\n").expect_err("everyone");
        let e = errs
            .iter()
            .find(|e| e.path == "tools.send_message.scope")
            .unwrap_or_else(|| panic!("no tools.send_message.scope error: {errs:?}"));
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.message.contains("`everyone`") && e.message.contains("same_chat"),
            "{e}"
        );
    }

    #[test]
    fn store_backend_accepts_sqlite_and_postgres_and_names_the_accepted_values() {
        assert_eq!(Config::parse("").expect("defaults").store.backend, "sqlite");
        let c = Config::parse("[store]\nbackend = \"sqlite\"\n").expect("sqlite");
        assert_eq!(c.store.backend, "sqlite");
        let errs = Config::parse("[store]\nbackend = \"mysql\"\n").expect_err("mysql");
        let e = errs
            .iter()
            .find(|e| e.path == "store.backend")
            .unwrap_or_else(|| panic!("no store.backend error: {errs:?}"));
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.message.contains("`mysql`")
                && e.message.contains("accepted values: sqlite, postgres"),
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
    fn postgres_needs_exactly_one_readable_url_and_never_shows_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("db_url");
        std::fs::write(&file, "postgres://gw:hunter2@127.0.0.1:5432/gw\n").expect("write");
        let text = format!(
            "[store]\nbackend = \"postgres\"\nurl_file = \"{}\"\nmax_connections = 4\n",
            file.display()
        );
        let c = Config::parse(&text).expect("postgres with a URL file");
        assert_eq!(c.store.max_connections, 4);
        assert_eq!(
            c.store_url().expect("readable").as_deref(),
            Some("postgres://gw:hunter2@127.0.0.1:5432/gw"),
            "trimmed"
        );
        assert_eq!(
            Config::parse("").expect("defaults").store.max_connections,
            16
        );
        let path_of = |text: &str| -> Vec<(String, String)> {
            Config::parse(text)
                .expect_err(text)
                .into_iter()
                .map(|e| (e.path, e.message))
                .collect()
        };
        let errs = path_of("[store]\nbackend = \"postgres\"\n");
        assert!(
            errs.iter().any(|(p, m)| p == "store.url_env"
                && m.contains("url_env = \"DATABASE_URL\"")
                && m.contains("postgres://")),
            "{errs:?}"
        );
        let errs = path_of(&format!(
            "[store]\nbackend = \"postgres\"\nurl_env = \"GW_TEST_UNSET_DATABASE_URL\"\nurl_file = \"{}\"\n",
            file.display()
        ));
        assert!(
            errs.iter()
                .any(|(p, m)| p == "store.url_env" && m.contains("only one")),
            "{errs:?}"
        );
        let errs =
            path_of("[store]\nbackend = \"postgres\"\nurl_env = \"GW_TEST_UNSET_DATABASE_URL\"\n");
        assert!(
            errs.iter().any(|(p, m)| p == "store.url_env"
                && m.contains("GW_TEST_UNSET_DATABASE_URL")
                && m.contains("not set")),
            "{errs:?}"
        );
        let errs = path_of("[store]\nbackend = \"postgres\"\nurl_file = \"/nonexistent/db_url\"\n");
        assert!(errs.iter().any(|(p, _)| p == "store.url_file"), "{errs:?}");
        std::fs::write(&file, "postgres://gw@127.0.0.1/gw?sslmode=require").expect("write");
        let errs = path_of(&text);
        assert!(
            errs.iter()
                .any(|(p, m)| p == "store.url_file" && m.contains("sslmode=require")),
            "{errs:?}"
        );
        std::fs::write(&file, "postgres://gw:hunter2@127.0.0.1:notaport/gw").expect("write");
        let errs = path_of(&text);
        assert!(
            errs.iter()
                .any(|(p, m)| p == "store.url_file" && m.contains("libpq URL")),
            "{errs:?}"
        );
        assert!(
            errs.iter().all(|(_, m)| !m.contains("hunter2")),
            "the password is never shown: {errs:?}"
        );
        for n in ["0", "1001"] {
            std::fs::write(&file, "postgres://gw@127.0.0.1/gw").expect("write");
            let errs =
                path_of(&text.replace("max_connections = 4", &format!("max_connections = {n}")));
            assert!(
                errs.iter().any(|(p, _)| p == "store.max_connections"),
                "{n}: {errs:?}"
            );
        }
        let errs = path_of(&format!("[store]\nurl_file = \"{}\"\n", file.display()));
        assert!(
            errs.iter()
                .any(|(p, m)| p == "store.url_file" && m.contains("backend = \"postgres\"")),
            "{errs:?}"
        );
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
        let errs = parse_config("[gateway]\nmax_sessions = 5\n\n[agent]\nmodle = \"x\"\n")
            .expect_err("typo must be rejected");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(5), "{errs:?}");
        assert!(errs[0].message.contains("modle"), "{errs:?}");
    }

    #[test]
    fn every_semantic_error_is_reported_at_once_with_lines() {
        let text = "[gateway]\nmax_sessions = 0\n[http]\nlisten = \"nowhere\"\n[agent]\nprovider = \"openai\"\nbase_url = \"not a url\"\nmax_concurrent = 0\n";
        let errs = parse_config(text).expect_err("invalid");
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
            parse_config("[gateway]\n\n[channels.http]\nenabled = true\n").expect_err("invalid");
        assert_eq!(errs[0].path, "channels.http.callback_url");
        assert_eq!(errs[0].line, Some(3), "the [channels.http] header");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let errs = parse_config("[gateway]\nmax_sessions = \"many\"\n").expect_err("invalid");
        assert_eq!(errs[0].line, Some(2));
        assert!(errs[0].path.contains("max_sessions"), "{errs:?}");
    }

    /// Every numeric key serde reads in [`Config`], found by deserializing it from a tracing
    /// deserializer that answers every struct field, optional value and map entry: so a key
    /// added to any section, with or without a default, shows up here.
    pub(crate) mod trace {
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

    /// Every numeric key a `T` reads, under `prefix`, with the kind of number it asks for.
    pub(crate) fn traced<T: serde::de::DeserializeOwned>(
        prefix: &str,
    ) -> Vec<(String, trace::Kind)> {
        let found = trace::Found::default();
        T::deserialize(trace::Tracer {
            path: prefix.to_owned(),
            found: &found,
        })
        .expect("the tracer answers every key");
        found.into_inner()
    }

    /// Every numeric key of the file: the core's and each channel section's.
    fn traced_numeric_keys() -> Vec<(String, trace::Kind)> {
        // The channel sections are read by their adapters, below.
        let mut all: Vec<_> = traced::<Config>("")
            .into_iter()
            .filter(|(path, _)| !path.starts_with("channels."))
            .collect();
        for a in crate::channels::registry::ADAPTERS {
            all.extend(a.traced_numeric_keys());
        }
        all
    }

    #[test]
    fn the_range_table_covers_every_numeric_key() {
        let traced = traced_numeric_keys();
        assert!(traced.len() >= 20, "the tracer found the keys: {traced:?}");
        for (path, kind) in &traced {
            let entry = crate::channels::registry::numeric_keys()
                .into_iter()
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
        for key in crate::channels::registry::numeric_keys() {
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
            for value in key.default_values(&crate::channels::registry::default_rates()) {
                key.range
                    .check(value)
                    .unwrap_or_else(|e| panic!("the default of {}: {e}", key.path));
            }
        }
    }

    #[test]
    fn the_readme_lists_every_numeric_range() {
        let readme = include_str!("../../README.md");
        for key in crate::channels::registry::numeric_keys() {
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
            let errs = parse_config(text).expect_err(text);
            assert_eq!(errs.len(), 1, "{text}: {errs:?}");
            assert_eq!(errs[0].path, path, "{text}: {errs:?}");
            assert_eq!(errs[0].line, Some(line), "{text}: {errs:?}");
        }
        let errs = parse_config("[agent]\nmax_concurrent = 0\n").expect_err("0");
        assert_eq!(errs[0].message, "must be from 1 to 10000; got 0");
        let errs = parse_config("[gateway]\nidle_timeout = \"50ms\"\n").expect_err("50ms");
        assert_eq!(
            errs[0].message,
            "must be from \"100ms\" to \"30d\"; got 50ms"
        );
    }

    #[test]
    fn every_type_error_and_every_semantic_error_is_reported_in_one_pass() {
        let text = "[gateway]\nbogus = 1\nidle_timeout = \"abc\"\nmax_sessions = 0\n[agent]\nprovider = \"foo\"\n[channels.http]\nenabled = true\ntimeout = -5\n";
        let errs = parse_config(text).expect_err("invalid");
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
        let errs = parse_config("[channels.http]\nenabled = true\ncallback_url = 5\n")
            .expect_err("invalid");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "channels.http.callback_url");
        let errs = parse_config("rate_limits = 5\n[agent]\nmax_attempts = 0\n").expect_err("x");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["rate_limits", "agent.max_attempts"], "{errs:?}");
    }

    #[test]
    fn durations_of_every_wrong_shape_say_what_a_duration_looks_like() {
        for value in ["-5", "\"abc\"", "1.5", "true", "\"\"", "[1]", "\"-5s\""] {
            let text = format!("[agent]\ntimeout = {value}\n");
            let errs = parse_config(&text).expect_err(&text);
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
                let errs = parse_config(&text).expect_err(&text);
                assert_eq!(errs.len(), 1, "{text}: {errs:?}");
                assert_eq!(errs[0].path, key, "{text}: {errs:?}");
                assert!(errs[0].line.is_some(), "{text}: {errs:?}");
                assert!(check_url(key, value).is_err(), "{key} = {value:?}");
            }
            for value in good {
                let text = format!("{table}\n{extra}{leaf} = {value:?}\n");
                parse_config(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            }
        }
    }

    #[test]
    fn telegram_webhook_mode_needs_a_webhook_url() {
        let text = "[channels.telegram]\nenabled = true\ntoken_file = \"/nonexistent\"\nmode = \"webhook\"\n";
        let errs = parse_config(text).expect_err("invalid");
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
                ChannelKind::new("http"),
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
            if let Err(errors) = parse_config(&text) {
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
            let errs = parse_config(&text).expect_err("out of range");
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].path, "gateway.identity_cache_size");
            assert!(errs[0].message.contains("1 to 100000000"), "{errs:?}");
        }
        let ok = parse_config("[gateway]\nidentity_cache_size = 1\n").expect("valid");
        assert_eq!(ok.gateway.identity_cache_size, 1);
        let default = parse_config("").expect("valid");
        assert_eq!(default.gateway.identity_cache_size, 100_000);
    }
}
