//! `[access]`: who may talk to the agent. The same DM and group keys (`dm_policy`, `allow`,
//! `allow_file`, `group_policy`, `groups`, `require_mention_in_groups`) also live in each
//! `[channels.<name>]` section, where they override `[access]` for that channel; the registry
//! strips them from the section before its adapter reads it ([`CHANNEL_ACCESS_KEYS`], and the
//! older per-platform spellings of the mention rule in [`MENTION_ALIASES`]) and parses them into
//! a [`ChannelAccess`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, HumanDuration};

/// Who may write to the agent in a direct chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    /// Anyone.
    Open,
    /// Approved users; an unknown sender gets a pairing code for the operator to approve.
    Pairing,
    /// Only the addresses and users in `allow` / `allow_file`.
    Allowlist,
    /// No one: direct messages are dropped.
    Disabled,
}

impl DmPolicy {
    /// Its name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            DmPolicy::Open => "open",
            DmPolicy::Pairing => "pairing",
            DmPolicy::Allowlist => "allowlist",
            DmPolicy::Disabled => "disabled",
        }
    }
}

/// Which group chats the agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupPolicy {
    /// Every group.
    #[default]
    Open,
    /// Only the chat ids in `groups`.
    Allowlist,
    /// No group: group messages are dropped.
    Disabled,
}

impl GroupPolicy {
    /// Its name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupPolicy::Open => "open",
            GroupPolicy::Allowlist => "allowlist",
            GroupPolicy::Disabled => "disabled",
        }
    }
}

/// The keys of a `[channels.<name>]` section that belong to access control, not to the adapter.
pub const CHANNEL_ACCESS_KEYS: &[&str] = &[
    "dm_policy",
    "allow",
    "allow_file",
    "group_policy",
    "groups",
    "require_mention_in_groups",
];

/// Older names of `require_mention_in_groups`, each accepted in one channel's section only:
/// `(channel, key)`.
pub const MENTION_ALIASES: &[(&str, &str)] = &[
    ("discord", "require_mention_in_guilds"),
    ("slack", "require_mention_in_channels"),
];

/// `[access]`: the defaults of every channel, and the pairing limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// The DM policy of every channel that sets none; unset: `pairing` for platform channels,
    /// `open` for WebChat and HTTP while `http.listen` is loopback.
    pub dm_policy: Option<DmPolicy>,
    /// Addresses (`telegram:12345`) and user ids allowed under `allowlist`.
    pub allow: Vec<String>,
    /// A file of more `allow` entries, one a line (`#` starts a comment); re-read on SIGHUP.
    pub allow_file: Option<PathBuf>,
    /// The group policy of every channel that sets none.
    pub group_policy: GroupPolicy,
    /// Group chat ids allowed under `group_policy = "allowlist"`.
    pub groups: Vec<String>,
    /// In group chats, answer only messages that address the bot (mention it, or reply to
    /// it), on the platforms that have mentions (Telegram, Discord, Slack, Signal).
    pub require_mention_in_groups: bool,
    /// How long a pairing request waits for the operator.
    pub pairing_ttl: HumanDuration,
    /// Pending pairing requests per channel; beyond it a new sender is told to try later.
    pub max_pending_per_channel: usize,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            dm_policy: None,
            allow: Vec::new(),
            allow_file: None,
            group_policy: GroupPolicy::Open,
            groups: Vec::new(),
            require_mention_in_groups: true,
            pairing_ttl: HumanDuration(Duration::from_secs(3600)),
            max_pending_per_channel: 100,
        }
    }
}

/// The access keys of one `[channels.<name>]` section, each overriding `[access]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelAccess {
    /// `dm_policy`.
    pub dm_policy: Option<DmPolicy>,
    /// `allow`.
    pub allow: Option<Vec<String>>,
    /// `allow_file`.
    pub allow_file: Option<PathBuf>,
    /// `group_policy`.
    pub group_policy: Option<GroupPolicy>,
    /// `groups`.
    pub groups: Option<Vec<String>>,
    /// `require_mention_in_groups` (or the channel's alias of it).
    pub require_mention_in_groups: Option<bool>,
}

/// Checks one `allow` entry: a user id (a whole number) or an address `<channel>:<sender id>`.
/// `channels` is the known channel names; `path` names the key in the error.
pub fn check_allow_entry(entry: &str, channels: &[&str], path: &str) -> Result<(), ConfigError> {
    let entry = entry.trim();
    let fail = |message: String| ConfigError {
        path: path.to_owned(),
        line: None,
        message,
    };
    if entry.parse::<i64>().is_ok_and(|n| n > 0) {
        return Ok(());
    }
    match entry.split_once(':') {
        Some((channel, sender)) if !sender.trim().is_empty() => {
            if channels.contains(&channel) {
                Ok(())
            } else {
                Err(fail(format!(
                    "`{entry}` names no known channel; write `<channel>:<sender id>` with one of {}, or a user id",
                    channels.join(", ")
                )))
            }
        }
        _ => Err(fail(format!(
            "`{entry}` is neither a user id nor an address; write e.g. \"telegram:12345\" or \"42\""
        ))),
    }
}

/// The access settings one channel ends up with: its section's keys over `[access]` over the
/// built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// The DM policy.
    pub dm: DmPolicy,
    /// Allowed addresses and user ids (`allow`).
    pub allow: Vec<String>,
    /// The file of more allowed entries.
    pub allow_file: Option<PathBuf>,
    /// The group policy.
    pub group: GroupPolicy,
    /// Allowed group chat ids.
    pub groups: Vec<String>,
    /// Group messages must address the bot (only ever set on platforms that have mentions).
    pub require_mention: bool,
}

impl ChannelPolicy {
    /// `section` over `access`; `default_dm` when neither sets a DM policy. `mentions`: whether
    /// the platform has mentions; the mention rule applies only where it does.
    pub fn resolve(
        access: &AccessConfig,
        section: &ChannelAccess,
        default_dm: DmPolicy,
        mentions: bool,
    ) -> Self {
        Self {
            dm: section.dm_policy.or(access.dm_policy).unwrap_or(default_dm),
            allow: section
                .allow
                .clone()
                .unwrap_or_else(|| access.allow.clone()),
            allow_file: section
                .allow_file
                .clone()
                .or_else(|| access.allow_file.clone()),
            group: section.group_policy.unwrap_or(access.group_policy),
            groups: section
                .groups
                .clone()
                .unwrap_or_else(|| access.groups.clone()),
            require_mention: mentions
                && section
                    .require_mention_in_groups
                    .unwrap_or(access.require_mention_in_groups),
        }
    }
}

/// Reads an allow file: one entry a line, `#` starts a comment, blank lines skipped.
pub fn read_allow_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the allow file `{}`: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}
