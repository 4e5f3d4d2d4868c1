//! The one list of channel adapters, [`ADAPTERS`], and what the gateway does with it: check
//! every `[channels.<name>]` section ([`check`]), list every numeric key ([`numeric_keys`]),
//! and build and start the enabled channels ([`build`], [`Built::start`]).
//!
//! Adding a channel is its adapter file and one line in [`ADAPTERS`]; nothing else in the
//! daemon, the admin API or `gatewayctl` names a channel.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::task::JoinHandle;

use super::adapter::{BuildEnv, ChannelAdapter, ListenerCtx, Route, WebhookCtx};
use super::{discord, http, imessage, signal, slack, telegram, webchat, whatsapp};
use crate::config::{
    CHANNEL_ACCESS_KEYS, ChannelAccess, ChannelPolicy, Config, ConfigError, DmPolicy,
    MENTION_ALIASES, NumericKey, check_allow_entry, deserialize_in_passes, under_removed,
};
use crate::delivery::rate_limit::RateSettings;
use crate::message::ChannelKind;
use crate::send::ChannelSender;
use crate::supervise::Supervisor;

/// Every channel adapter, in display order.
pub static ADAPTERS: &[&dyn Entry] = &[
    &Of::<webchat::WebChatAdapter>(PhantomData),
    &Of::<http::HttpAdapter>(PhantomData),
    &Of::<telegram::TelegramAdapter>(PhantomData),
    &Of::<discord::DiscordAdapter>(PhantomData),
    &Of::<slack::SlackAdapter>(PhantomData),
    &Of::<whatsapp::WhatsAppAdapter>(PhantomData),
    &Of::<signal::SignalAdapter>(PhantomData),
    &Of::<imessage::IMessageAdapter>(PhantomData),
];

/// One adapter as the registry drives it, whatever its config type.
pub trait Entry: Send + Sync {
    /// The channel.
    fn kind(&self) -> ChannelKind;
    /// The numeric keys of its section.
    fn numeric_keys(&self) -> &'static [NumericKey];
    /// Its built-in outbound rate limits.
    fn default_rates(&self) -> RateSettings;
    /// Whether `config` enables it (a section that does not parse counts as disabled).
    fn enabled(&self, config: &Config) -> bool;
    /// Every problem of its section in `config` (`text` is the file, for line numbers).
    fn check(&self, config: &Config, text: &str) -> Vec<ConfigError>;
    /// What its paths answer while it is disabled.
    fn disabled_routes(&self) -> Vec<Route>;
    /// Every numeric key its config type reads (for the range table's unit test).
    #[cfg(test)]
    fn traced_numeric_keys(&self) -> Vec<(String, crate::config::tests::trace::Kind)>;
    /// Builds the adapter if its section enables it.
    fn build(&self, config: &Config, env: &BuildEnv) -> anyhow::Result<Option<Box<dyn Built>>>;
    /// Whether the platform has mentions (its messages carry a meaningful `mentioned` flag).
    fn mentions(&self) -> bool;
}

/// A built adapter, ready to start.
pub trait Built: Send + Sync {
    /// The channel.
    fn kind(&self) -> ChannelKind;
    /// Its sending half.
    fn sender(&self) -> Arc<dyn ChannelSender>;
    /// Its webhook routes.
    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route>;
    /// Lines printed at start for the operator.
    fn announce(&self, http: std::net::SocketAddr) -> Vec<String>;
    /// Starts its listener under `supervisor` (restarted with backoff if it panics).
    fn start(&self, ctx: ListenerCtx, supervisor: &Arc<Supervisor>) -> JoinHandle<()>;
}

/// The entry of adapter `A`.
pub struct Of<A>(PhantomData<fn() -> A>);

fn section<A: ChannelAdapter>(
    config: &Config,
    text: &str,
) -> (Option<A::Config>, Vec<String>, Vec<ConfigError>) {
    let prefix = format!("channels.{}", A::KIND);
    let mut table = config
        .channels
        .get(A::KIND.as_str())
        .cloned()
        .unwrap_or_default();
    for key in CHANNEL_ACCESS_KEYS {
        table.remove(*key);
    }
    for key in mention_aliases(A::KIND.as_str()) {
        table.remove(key);
    }
    let passes = deserialize_in_passes::<A::Config>(table, &prefix, text);
    (passes.value, passes.removed, passes.errors)
}

impl<A: ChannelAdapter> Entry for Of<A> {
    fn kind(&self) -> ChannelKind {
        A::KIND
    }

    fn mentions(&self) -> bool {
        A::MENTIONS
    }

    fn numeric_keys(&self) -> &'static [NumericKey] {
        A::NUMERIC_KEYS
    }

    fn default_rates(&self) -> RateSettings {
        A::default_rates()
    }

    fn enabled(&self, config: &Config) -> bool {
        section::<A>(config, "").0.is_some_and(|c| A::enabled(&c))
    }

    fn check(&self, config: &Config, text: &str) -> Vec<ConfigError> {
        let (parsed, removed, mut errors) = section::<A>(config, text);
        let Some(parsed) = parsed else {
            return errors;
        };
        let mut found = Vec::new();
        for key in A::NUMERIC_KEYS {
            for (path, value) in key.read(config) {
                if let Err(message) = key.range.check(value) {
                    found.push(ConfigError {
                        path,
                        line: None,
                        message,
                    });
                }
            }
        }
        found.extend(A::validate(&parsed));
        errors.extend(
            found
                .into_iter()
                .filter(|e| !under_removed(&removed, &e.path)),
        );
        errors
    }

    fn disabled_routes(&self) -> Vec<Route> {
        A::disabled_routes()
    }

    #[cfg(test)]
    fn traced_numeric_keys(&self) -> Vec<(String, crate::config::tests::trace::Kind)> {
        crate::config::tests::traced::<A::Config>(&format!("channels.{}", A::KIND))
    }

    fn build(&self, config: &Config, env: &BuildEnv) -> anyhow::Result<Option<Box<dyn Built>>> {
        let (parsed, _, errors) = section::<A>(config, "");
        let parsed = match parsed {
            Some(p) if errors.is_empty() => p,
            _ => {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::bail!("invalid [channels.{}]: {}", A::KIND, list.join("; "));
            }
        };
        if !A::enabled(&parsed) {
            return Ok(None);
        }
        let adapter = A::build(&parsed, env)?;
        Ok(Some(Box::new(BuiltOf(Arc::new(adapter)))))
    }
}

struct BuiltOf<A>(Arc<A>);

impl<A: ChannelAdapter> Built for BuiltOf<A> {
    fn kind(&self) -> ChannelKind {
        A::KIND
    }

    fn sender(&self) -> Arc<dyn ChannelSender> {
        self.0.sender()
    }

    fn routes(&self, ctx: &WebhookCtx) -> Vec<Route> {
        self.0.routes(ctx)
    }

    fn announce(&self, http: std::net::SocketAddr) -> Vec<String> {
        self.0.announce(http)
    }

    fn start(&self, ctx: ListenerCtx, supervisor: &Arc<Supervisor>) -> JoinHandle<()> {
        let adapter = self.0.clone();
        supervisor.spawn_restarting(listener_name(A::KIND), move || {
            adapter.clone().run(ctx.clone())
        })
    }
}

/// `"<channel> listener"`, the supervised component's name (made once per channel).
pub fn listener_name(kind: ChannelKind) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<ChannelKind, &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    names
        .entry(kind)
        .or_insert_with(|| Box::leak(format!("{kind} listener").into_boxed_str()))
}

/// The adapter of `name`, if the gateway has one.
pub fn get(name: &str) -> Option<&'static dyn Entry> {
    ADAPTERS.iter().copied().find(|a| a.kind().as_str() == name)
}

/// Every channel name the gateway has, in display order.
pub fn names() -> Vec<&'static str> {
    ADAPTERS.iter().map(|a| a.kind().as_str()).collect()
}

/// The channel named `name`, or an error naming the known ones.
pub fn kind(name: &str) -> Result<ChannelKind, String> {
    get(name).map(|a| a.kind()).ok_or_else(|| {
        format!(
            "unknown channel `{name}`; known channels: {}",
            names().join(", ")
        )
    })
}

/// The channels `config` enables, in display order.
pub fn enabled(config: &Config) -> Vec<ChannelKind> {
    ADAPTERS
        .iter()
        .filter(|a| a.enabled(config))
        .map(|a| a.kind())
        .collect()
}

/// The rate settings of `kind`: its adapter's defaults with the file's overrides.
pub fn rate_settings(config: &Config, kind: ChannelKind) -> RateSettings {
    let defaults = get(kind.as_str()).map_or_else(RateSettings::default, |a| a.default_rates());
    config.rate_settings(kind, defaults)
}

/// Every numeric key: the core's (`config::NUMERIC_KEYS`) and each adapter's.
pub fn numeric_keys() -> Vec<&'static NumericKey> {
    crate::config::NUMERIC_KEYS
        .iter()
        .chain(ADAPTERS.iter().flat_map(|a| a.numeric_keys().iter()))
        .collect()
}

/// The built-in rate limits of every channel, for the defaults of `rate_limits.*` keys.
pub fn default_rates() -> Vec<RateSettings> {
    ADAPTERS.iter().map(|a| a.default_rates()).collect()
}

/// Checks what [`Config::parse`] leaves to the adapters: every `[channels.<name>]` section by its
/// adapter, that each section and `[rate_limits.<name>]` table names a known channel, and that
/// at least one channel is enabled. The [`crate::config::SectionCheck`] of `gatewayd`.
pub fn check(config: &Config, text: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let err = |path: String, message: String| ConfigError {
        path,
        line: None,
        message,
    };
    for name in config.channels.keys() {
        if let Err(message) = kind(name) {
            errors.push(err(format!("channels.{name}"), message));
        }
    }
    for name in config.rate_limits.keys() {
        if let Err(message) = kind(name) {
            errors.push(err(format!("rate_limits.{name}"), message));
        }
    }
    for adapter in ADAPTERS {
        errors.extend(adapter.check(config, text));
    }
    errors.extend(check_access(config, text));
    if enabled(config).is_empty() {
        errors.push(err(
            "channels".to_owned(),
            format!(
                "no channel is enabled; enable one of channels.{}",
                names().join(", channels.")
            ),
        ));
    }
    errors
}

/// Reads, parses and checks the file at `path`, the channel sections included.
pub fn load_config(path: &std::path::Path) -> Result<Config, crate::config::ConfigErrors> {
    Config::load(path, check)
}

/// Parses and checks configuration text, the channel sections included.
pub fn parse_config(text: &str) -> Result<Config, Vec<ConfigError>> {
    Config::parse_with(text, check)
}

/// What the paths of every channel that `config` leaves disabled answer.
pub fn disabled_routes(config: &Config) -> Vec<Route> {
    ADAPTERS
        .iter()
        .filter(|a| !a.enabled(config))
        .flat_map(|a| a.disabled_routes())
        .collect()
}

/// Builds every enabled channel.
pub fn build(config: &Config, env: &BuildEnv) -> anyhow::Result<Vec<Box<dyn Built>>> {
    let mut built = Vec::new();
    for adapter in ADAPTERS {
        if let Some(b) = adapter.build(config, env)? {
            built.push(b);
        }
    }
    Ok(built)
}

/// The channels whose direct messages are open by default while `http.listen` is loopback
/// (they are reached through the gateway's own listener); every other channel pairs.
const OPEN_WHILE_LOOPBACK: &[ChannelKind] = &[webchat::KIND, http::KIND];

/// The older names of `require_mention_in_groups` that channel `name`'s section accepts.
fn mention_aliases(name: &str) -> impl Iterator<Item = &'static str> + '_ {
    MENTION_ALIASES
        .iter()
        .filter(move |(channel, _)| *channel == name)
        .map(|(_, key)| *key)
}

/// The access keys of `name`'s section (the rest of it is its adapter's), with every refused key
/// named by its full path. The channel's alias of `require_mention_in_groups` counts as it;
/// setting both is an error.
fn access_section(config: &Config, name: &str, text: &str) -> (ChannelAccess, Vec<ConfigError>) {
    let Some(section) = config.channels.get(name) else {
        return (ChannelAccess::default(), Vec::new());
    };
    let mut errors = Vec::new();
    let mut table: toml::Table = section
        .iter()
        .filter(|(k, _)| CHANNEL_ACCESS_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for alias in mention_aliases(name) {
        let Some(value) = section.get(alias) else {
            continue;
        };
        if table.contains_key("require_mention_in_groups") {
            errors.push(ConfigError {
                path: format!("channels.{name}.{alias}"),
                line: None,
                message: format!(
                    "`{alias}` is another name of `require_mention_in_groups`, which is set too; keep only `require_mention_in_groups`"
                ),
            });
            continue;
        }
        table.insert("require_mention_in_groups".to_owned(), value.clone());
    }
    let passes = deserialize_in_passes::<ChannelAccess>(table, &format!("channels.{name}"), text);
    errors.extend(passes.errors);
    (passes.value.unwrap_or_default(), errors)
}

/// Whether `http.listen` is a loopback address (an unparsable one counts as not).
fn http_is_loopback(config: &Config) -> bool {
    config
        .http
        .listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// The built-in DM policy of `kind` under `config`'s `http.listen`.
fn default_dm(config: &Config, kind: ChannelKind) -> DmPolicy {
    if OPEN_WHILE_LOOPBACK.contains(&kind) && http_is_loopback(config) {
        DmPolicy::Open
    } else {
        DmPolicy::Pairing
    }
}

/// The access policy of every channel: its section's keys over `[access]` over the defaults.
pub fn access(config: &Config) -> Vec<(ChannelKind, ChannelPolicy)> {
    ADAPTERS
        .iter()
        .map(|a| {
            let kind = a.kind();
            let (section, _) = access_section(config, kind.as_str(), "");
            let policy = ChannelPolicy::resolve(
                &config.access,
                &section,
                default_dm(config, kind),
                a.mentions(),
            );
            (kind, policy)
        })
        .collect()
}

/// Warnings for the operator (not errors): an enabled WebChat or HTTP channel whose DM policy
/// is `open` while `http.listen` is not loopback, so anyone who reaches the address talks to
/// the agent.
pub fn access_warnings(config: &Config) -> Vec<String> {
    if http_is_loopback(config) {
        return Vec::new();
    }
    let enabled = enabled(config);
    access(config)
        .into_iter()
        .filter(|(kind, policy)| {
            OPEN_WHILE_LOOPBACK.contains(kind)
                && enabled.contains(kind)
                && policy.dm == DmPolicy::Open
        })
        .map(|(kind, _)| {
            format!(
                "channels.{kind}: dm_policy is \"open\" while http.listen ({}) is not a loopback address, so anyone who reaches it talks to the agent; set channels.{kind}.dm_policy = \"pairing\" or \"allowlist\", or listen on 127.0.0.1",
                config.http.listen
            )
        })
        .collect()
}

/// Every problem of the access keys: `[access]`'s and each channel section's `allow` entries,
/// their `allow_file`s, and the channel sections' access keys themselves.
fn check_access(config: &Config, text: &str) -> Vec<ConfigError> {
    let mut errors = allow_errors("access", &config.access.allow, &config.access.allow_file);
    for name in config.channels.keys() {
        let Some(entry) = get(name) else {
            continue;
        };
        let (section, errs) = access_section(config, name, text);
        errors.extend(errs);
        if section.require_mention_in_groups == Some(true) && !entry.mentions() {
            errors.push(ConfigError {
                path: format!("channels.{name}.require_mention_in_groups"),
                line: None,
                message: format!(
                    "the {name} channel does not see mentions, so no group message could pass this rule; remove the key (mentions are seen on {})",
                    ADAPTERS
                        .iter()
                        .filter(|a| a.mentions())
                        .map(|a| a.kind().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        errors.extend(allow_errors(
            &format!("channels.{name}"),
            section.allow.as_deref().unwrap_or_default(),
            &section.allow_file,
        ));
    }
    errors
}

/// Every bad entry of `allow` and of the `allow_file` (or that the file cannot be read), under
/// the section `path`.
fn allow_errors(
    path: &str,
    allow: &[String],
    file: &Option<std::path::PathBuf>,
) -> Vec<ConfigError> {
    let channels = names();
    let mut errors = Vec::new();
    for entry in allow {
        if let Err(e) = check_allow_entry(entry, &channels, &format!("{path}.allow")) {
            errors.push(e);
        }
    }
    if let Some(file) = file {
        match crate::config::read_allow_file(file) {
            Ok(lines) => {
                for entry in lines {
                    if let Err(mut e) =
                        check_allow_entry(&entry, &channels, &format!("{path}.allow_file"))
                    {
                        e.message = format!("in `{}`: {}", file.display(), e.message);
                        errors.push(e);
                    }
                }
            }
            Err(message) => errors.push(ConfigError {
                path: format!("{path}.allow_file"),
                line: None,
                message,
            }),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platforms_with_mentions_are_telegram_discord_slack_and_signal() {
        let mut with: Vec<&str> = ADAPTERS
            .iter()
            .filter(|a| a.mentions())
            .map(|a| a.kind().as_str())
            .collect();
        with.sort_unstable();
        assert_eq!(with, ["discord", "signal", "slack", "telegram"]);
    }

    #[test]
    fn every_adapter_has_a_valid_unique_name() {
        let mut seen = std::collections::HashSet::new();
        for a in ADAPTERS {
            let name = a.kind().as_str();
            assert!(crate::message::is_channel_name(name), "{name}");
            assert!(seen.insert(name), "{name} is listed twice");
            assert_eq!(ChannelKind::parse(name), Ok(a.kind()));
        }
    }

    #[test]
    fn unknown_sections_and_rate_tables_name_the_known_channels() {
        let errs = parse_config("[channels.slackk]\nenabled = true\n[rate_limits.tg]\nburst = 1\n")
            .expect_err("unknown names");
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"channels.slackk"), "{errs:?}");
        assert!(paths.contains(&"rate_limits.tg"), "{errs:?}");
        assert!(
            errs.iter()
                .all(|e| e.message.contains("webchat, http, telegram, discord")),
            "{errs:?}"
        );
    }

    #[test]
    fn no_enabled_channel_is_an_error() {
        let errs = parse_config("[channels.webchat]\nenabled = false\n").expect_err("none");
        assert!(errs.iter().any(|e| e.path == "channels"), "{errs:?}");
    }
}
