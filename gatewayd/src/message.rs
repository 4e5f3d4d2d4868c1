//! The one message format every channel is normalized into, and the types that name channels,
//! people and conversations.
//!
//! Adapters build an [`InboundMessage`]; the agent and delivery never see a platform's own
//! format. A conversation is a [`SessionKey`]: a direct chat is keyed by user (so linked channels
//! share it), a group chat by `(channel, chat)`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A channel, by its stable lowercase name (`"webchat"`, `"telegram"`): the name used in the
/// store, the config (`[channels.<name>]`), the admin API and the logs.
///
/// The set of channels is not fixed here: each adapter declares its own kind with
/// [`ChannelKind::new`], and the registry of adapters (`channels::registry`) says which exist.
/// A name read from outside (the store, a workflow file, an admin request) becomes a kind through
/// [`ChannelKind::parse`], which checks only its form; whether a channel of that name is built in
/// or enabled is the registry's and delivery's question, answered with an error that names it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKind(&'static str);

/// The longest channel name.
pub const MAX_CHANNEL_NAME: usize = 32;

/// The most distinct channel names one process keeps: names are interned once and never freed,
/// so a store full of made-up names cannot grow the process without bound.
const MAX_INTERNED: usize = 1024;

/// Why a text is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// Empty, too long, or with characters other than `a-z`, `0-9`, `_` and `-`.
    #[error(
        "`{0}` is not a channel name (1 to 32 characters: a-z, 0-9, `_` or `-`, starting with a letter)"
    )]
    Invalid(String),
    /// More distinct names than one process keeps.
    #[error("too many distinct channel names (more than 1024); `{0}` is refused")]
    TooMany(String),
}

impl ChannelKind {
    /// The kind named `name`; for an adapter's own constant. `name` must be a valid channel name
    /// (the registry's unit test checks every adapter's).
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The kind named `text`, interned: two parses of one name give equal kinds. Checks the
    /// name's form only.
    pub fn parse(text: &str) -> Result<Self, ChannelNameError> {
        if !is_channel_name(text) {
            return Err(ChannelNameError::Invalid(
                text.chars().take(MAX_CHANNEL_NAME + 8).collect(),
            ));
        }
        intern(text).map(Self)
    }

    /// Stable lowercase name, used in the store, config and logs.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// Whether `text` has the form of a channel name.
pub fn is_channel_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_CHANNEL_NAME
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn intern(text: &str) -> Result<&'static str, ChannelNameError> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Mutex::default);
    let mut names = names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(text) {
        return Ok(known);
    }
    if names.len() >= MAX_INTERNED {
        return Err(ChannelNameError::TooMany(text.to_owned()));
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    names.insert(leaked);
    Ok(leaked)
}

impl fmt::Debug for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelKind({})", self.0)
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).map_err(|e| e.to_string())
    }
}

impl Serialize for ChannelKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether a chat is one person talking to the agent or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    /// One person and the agent.
    Direct,
    /// Several people; keyed by `(channel, chat)` and never merged with a direct chat.
    Group,
}

impl ChatType {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }
}

impl FromStr for ChatType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(Self::Direct),
            "group" => Ok(Self::Group),
            other => Err(format!("unknown chat type `{other}`")),
        }
    }
}

/// Where a person can be reached: a sender id on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address {
    /// The channel.
    pub channel: ChannelKind,
    /// The platform's id of the sender.
    pub sender_id: String,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.channel, self.sender_id)
    }
}

/// A person, recognised across the channels linked to them.
pub type UserId = i64;

/// A message as it arrived, in the gateway's own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The channel it came from.
    pub channel: ChannelKind,
    /// The platform's id of the message: with `channel`, the dedupe key.
    pub channel_message_id: String,
    /// The chat it was written in; replies go back here.
    pub chat_id: String,
    /// Direct or group chat.
    pub chat_type: ChatType,
    /// Who wrote it.
    pub sender_id: String,
    /// The name the platform shows for the sender (Signal's `sourceName`, a Telegram first
    /// name), when it gives one; informational only, never an identity.
    pub sender_name: Option<String>,
    /// The text (or a media caption).
    pub text: String,
    /// The platform's id of the message this one replies to, if any.
    pub reply_to: Option<String>,
    /// Files attached to the message, by the platform's file ids.
    pub attachments: Vec<Attachment>,
    /// Arrival time, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// In a group chat, whether the message addresses the bot: an @-mention of it, or a reply
    /// to one of its messages; false in direct chats, and on channels without mentions.
    pub mentioned: bool,
}

/// A file attached to an inbound message, referenced by the platform's id (never downloaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `photo`, `document`, `audio`, `video`, `voice`, `sticker`, or `file`.
    pub kind: String,
    /// The platform's file id (or URL, where the platform gives one).
    pub file_id: String,
    /// The file name, if the platform gives one.
    pub name: Option<String>,
}

impl InboundMessage {
    /// What the agent reads: the text, then one line per attachment.
    pub fn agent_input(&self) -> String {
        let mut out = self.text.clone();
        for a in &self.attachments {
            if !out.is_empty() {
                out.push('\n');
            }
            match &a.name {
                Some(name) => {
                    out.push_str(&format!("[{} attached: {name} ({})]", a.kind, a.file_id))
                }
                None => out.push_str(&format!("[{} attached: {}]", a.kind, a.file_id)),
            }
        }
        out
    }

    /// The sender's address.
    pub fn address(&self) -> Address {
        Address {
            channel: self.channel,
            sender_id: self.sender_id.clone(),
        }
    }
}

/// Identifies one conversation, and so one agent session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionKey {
    /// A direct chat, shared by every channel linked to the user.
    User(UserId),
    /// A group chat on one channel.
    Group(ChannelKind, String),
}

impl SessionKey {
    /// The key of the conversation a message from `user` belongs to.
    pub fn for_message(msg: &InboundMessage, user: UserId) -> Self {
        match msg.chat_type {
            ChatType::Direct => Self::User(user),
            ChatType::Group => Self::Group(msg.channel, msg.chat_id.clone()),
        }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::Group(channel, chat) => write!(f, "group:{channel}:{chat}"),
        }
    }
}

impl FromStr for SessionKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(id) = s.strip_prefix("user:") {
            return id
                .parse()
                .map(Self::User)
                .map_err(|_| format!("bad user id in session key `{s}`"));
        }
        if let Some(rest) = s.strip_prefix("group:")
            && let Some((channel, chat)) = rest.split_once(':')
        {
            return Ok(Self::Group(channel.parse()?, chat.to_owned()));
        }
        Err(format!(
            "`{s}` is not a session key; expected user:<id> or group:<channel>:<chat>"
        ))
    }
}

/// A reply on its way out, as committed to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Outbox row id: unique, and the message id the channel sees.
    pub id: i64,
    /// Channel to send on.
    pub channel: ChannelKind,
    /// Chat to send to.
    pub chat_id: String,
    /// The text.
    pub text: String,
    /// The channel message id this answers, if any.
    pub reply_to: Option<String>,
    /// Send attempts made so far.
    pub attempts: u32,
    /// Chunks of a split reply already delivered; a retry resumes after them.
    pub chunks_sent: u32,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds: `2024-02-29T23:59:59.999Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_round_trip() {
        for key in [
            SessionKey::User(42),
            SessionKey::Group(ChannelKind::new("http"), "team:ops".to_owned()),
        ] {
            assert_eq!(key.to_string().parse::<SessionKey>(), Ok(key));
        }
        assert!("nonsense".parse::<SessionKey>().is_err());
        assert!("group:Pigeon!:1".parse::<SessionKey>().is_err());
    }
}
