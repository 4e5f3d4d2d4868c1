//! Who may talk to the agent: the checks a message passes after the inbox's dedupe and before
//! gateway commands and the agent, in this order: block, then the access policy (the DM policy
//! in a direct chat; in a group the group policy, then the mention rule: with
//! `require_mention_in_groups`, on a platform that has mentions, a group message that does not
//! address the bot is dropped).
//!
//! [`decide`] is the decision table, without I/O. [`Access::gate`] applies it to one message:
//! a blocked sender's message is marked done as `blocked`; a message a policy refuses is marked
//! done unanswered and counted in `gateway_access_dropped_total{channel,reason}`; a message of a
//! sender who is not approved under `pairing` is kept under a pairing request (its inbox row
//! stays pending, so a restart keeps it too) and the sender is told a code, at most once per
//! [`PAIRING_REPLY_INTERVAL`]. `/help` and `/whoami` are answered for such a sender; `/link` is
//! refused, so linking cannot bypass pairing. [`Access::approve`] approves the sender's user
//! durably and hands back the kept messages, to be routed again in order.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::config::{ChannelPolicy, Config, DmPolicy, GroupPolicy, read_allow_file};
use crate::delivery::Delivery;
use crate::identity::Identity;
use crate::message::{Address, ChannelKind, ChatType, InboundMessage, UserId, now_ms};
use crate::store::{
    Kept, NewReply, PairingMessage, PairingRequest, PendingInbound, SharedStore, StoreError,
};

/// Minimum time between two pairing replies to one pending sender.
pub const PAIRING_REPLY_INTERVAL: Duration = Duration::from_secs(600);

/// Messages kept per pending sender; older ones are marked done, unanswered.
pub const KEPT_PER_SENDER: usize = 5;

/// The alphabet of pairing codes: no `0`/`O`, `1`/`I`/`L`.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// Characters of a pairing code.
const CODE_LEN: usize = 6;

/// Senders told "try later" that are remembered (so each is told once per interval); the
/// memory is cleared when it is full.
const TRY_LATER_MEMORY: usize = 10_000;

/// The reply to a sender whose channel has as many pending requests as allowed.
pub const TRY_LATER_REPLY: &str =
    "This assistant has too many pending access requests right now. Please try again later.";

/// The reply to `/link` from a sender who is not approved yet.
pub const LINK_REFUSED_REPLY: &str = "/link is not available until the operator approves you. Ask them to approve the code you were sent (gatewayctl pairing approve CODE).";

/// The pairing reply with `code`.
pub fn pairing_reply(code: &str) -> String {
    format!(
        "This assistant answers only people its operator has approved. Your access code is {code}: ask the operator to run `gatewayctl pairing approve {code}`. Your message is kept and will be answered once you are approved."
    )
}

/// What the policy says about one message, before any I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// On to gateway commands and the agent.
    Through,
    /// Dropped unanswered, for `reason` (the metric's label).
    Drop(&'static str),
    /// The sender is not approved under `pairing`.
    Pair,
}

/// The facts about a sender that [`decide`] needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sender {
    /// Its address or user is in the allowlist.
    pub allowed: bool,
    /// Its user is approved (pairing).
    pub approved: bool,
}

/// The decision table: `policy` applied to a message in a chat of `chat_type` (group chat
/// `chat_id`) from `sender`; `mentioned`: the group message addresses the bot.
pub fn decide(
    policy: &ChannelPolicy,
    chat_type: ChatType,
    chat_id: &str,
    mentioned: bool,
    sender: Sender,
) -> Decision {
    match chat_type {
        ChatType::Group => match policy.group {
            GroupPolicy::Disabled => Decision::Drop("group_disabled"),
            GroupPolicy::Allowlist if !policy.groups.iter().any(|g| g == chat_id) => {
                Decision::Drop("group_not_allowed")
            }
            _ if policy.require_mention && !mentioned => Decision::Drop("not_mentioned"),
            _ => Decision::Through,
        },
        ChatType::Direct => match policy.dm {
            DmPolicy::Open => Decision::Through,
            DmPolicy::Disabled => Decision::Drop("dm_disabled"),
            DmPolicy::Allowlist if sender.allowed => Decision::Through,
            DmPolicy::Allowlist => Decision::Drop("not_allowed"),
            DmPolicy::Pairing if sender.approved || sender.allowed => Decision::Through,
            DmPolicy::Pairing => Decision::Pair,
        },
    }
}

/// What the worker does with a message after [`Access::gate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// On to gateway commands and the agent.
    Through,
    /// Answer with this notice instead (committed as the message's turn).
    Refuse(String),
    /// Handled here (dropped, blocked or kept); nothing more to do.
    Handled,
}

/// One channel's policy and its allowlist (the `allow` entries and the `allow_file`'s).
struct Channel {
    policy: ChannelPolicy,
    allowed: HashSet<String>,
}

/// The access checks of the gateway.
pub struct Access {
    store: SharedStore,
    delivery: Delivery,
    channels: RwLock<HashMap<ChannelKind, Channel>>,
    pairing_ttl: Duration,
    max_pending: usize,
    try_later: std::sync::Mutex<HashMap<(ChannelKind, String), Instant>>,
}

impl Access {
    /// The checks of `policies` (each channel's, from `channels::registry::access`), with the
    /// pairing limits of `config`. An `allow_file` that cannot be read counts as empty (and is
    /// logged); `check-config` reports it.
    pub fn new(
        config: &Config,
        policies: Vec<(ChannelKind, ChannelPolicy)>,
        store: SharedStore,
        delivery: Delivery,
    ) -> Self {
        let channels = policies
            .into_iter()
            .map(|(kind, policy)| {
                let allowed = allowlist(kind, &policy);
                (kind, Channel { policy, allowed })
            })
            .collect();
        Self {
            store,
            delivery,
            channels: RwLock::new(channels),
            pairing_ttl: config.access.pairing_ttl.get(),
            max_pending: config.access.max_pending_per_channel,
            try_later: std::sync::Mutex::default(),
        }
    }

    /// Reads every `allow_file` again (on SIGHUP); a file that cannot be read keeps its
    /// channel's previous list.
    pub fn reload_allow_files(&self) {
        let Ok(mut channels) = self.channels.write() else {
            return;
        };
        for (kind, channel) in channels.iter_mut() {
            let Some(file) = &channel.policy.allow_file else {
                continue;
            };
            match read_allow_file(file) {
                Ok(lines) => {
                    let mut allowed: HashSet<String> = channel
                        .policy
                        .allow
                        .iter()
                        .map(|a| a.trim().to_owned())
                        .collect();
                    let count = lines.len();
                    allowed.extend(lines);
                    channel.allowed = allowed;
                    tracing::info!(message = "Allow file reloaded.", channel = %kind, file = %file.display(), entries = count);
                }
                Err(error) => {
                    tracing::warn!(message = "Cannot reload the allow file; the channel keeps its previous allowlist.", channel = %kind, %error);
                }
            }
        }
    }

    /// The checks for one message of `user` (inbox row `inbox_id`), before gateway commands:
    /// block, then the channel's policy, on the user's `flags` as the worker read them
    /// ([`Store::access_flags`](crate::store::Store::access_flags)). `Err` leaves the message
    /// pending (replayed at start).
    pub async fn gate(
        &self,
        inbox_id: i64,
        msg: &InboundMessage,
        user: UserId,
        flags: &crate::store::UserFlags,
    ) -> Result<Gate, StoreError> {
        let (approved, blocked) = (flags.approved, flags.blocked);
        if blocked {
            self.store.inbox_drop(inbox_id, true).await?;
            dropped(msg.channel, "blocked");
            tracing::info!(message = "Message of a blocked user dropped.", channel = %msg.channel, inbox_id, user);
            return Ok(Gate::Handled);
        }
        let decision = {
            let channels = self
                .channels
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(channel) = channels.get(&msg.channel) else {
                return Ok(Gate::Through);
            };
            let address = msg.address().to_string();
            let sender = Sender {
                allowed: channel.allowed.contains(&address)
                    || channel.allowed.contains(&user.to_string()),
                approved,
            };
            decide(
                &channel.policy,
                msg.chat_type,
                &msg.chat_id,
                msg.mentioned,
                sender,
            )
        };
        match decision {
            Decision::Through => Ok(Gate::Through),
            Decision::Drop(reason) => {
                self.store.inbox_drop(inbox_id, false).await?;
                dropped(msg.channel, reason);
                tracing::info!(message = "Message dropped by the access policy.", channel = %msg.channel, inbox_id, reason);
                Ok(Gate::Handled)
            }
            Decision::Pair => match command_name(&msg.text).as_deref() {
                Some("help" | "whoami") => Ok(Gate::Through),
                Some("link") => Ok(Gate::Refuse(LINK_REFUSED_REPLY.to_owned())),
                _ => self.keep(inbox_id, msg, user).await.map(|()| Gate::Handled),
            },
        }
    }

    /// Keeps the message of a sender who is not approved, and tells them the code (or to try
    /// later) when due.
    async fn keep(
        &self,
        inbox_id: i64,
        msg: &InboundMessage,
        user: UserId,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let ttl = i64::try_from(self.pairing_ttl.as_millis()).unwrap_or(i64::MAX);
        let interval = i64::try_from(PAIRING_REPLY_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        let kept = self
            .store
            .pairing_keep(PairingMessage {
                inbox_id,
                channel: msg.channel,
                sender_id: msg.sender_id.clone(),
                user_id: user,
                display_name: msg.sender_name.clone(),
                now_ms: now,
                expires_at_ms: now.saturating_add(ttl),
                new_code: new_code(),
                keep_max: KEPT_PER_SENDER,
                max_pending: self.max_pending,
                reply_interval_ms: interval,
            })
            .await?;
        let reply = match kept {
            Kept::Kept { code, reply, new } => {
                if new {
                    tracing::info!(message = "New pairing request.", channel = %msg.channel, code = %code, user);
                }
                reply.then(|| pairing_reply(&code))
            }
            Kept::Settled => None,
            Kept::Full => {
                dropped(msg.channel, "pairing_full");
                tracing::info!(message = "Pairing requests are full for the channel; the sender is told to try later.", channel = %msg.channel, inbox_id);
                self.try_later_due(msg).then(|| TRY_LATER_REPLY.to_owned())
            }
        };
        if let Some(text) = reply {
            let row = self
                .store
                .outbox_put(NewReply {
                    channel: msg.channel,
                    chat_id: msg.chat_id.clone(),
                    text,
                    reply_to: Some(msg.channel_message_id.clone()),
                })
                .await?;
            self.delivery.enqueue(vec![row]);
        }
        Ok(())
    }

    /// Whether the sender of `msg` is due a "try later" reply (once per reply interval).
    fn try_later_due(&self, msg: &InboundMessage) -> bool {
        let mut told = self
            .try_later
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (msg.channel, msg.sender_id.clone());
        let now = Instant::now();
        if told
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < PAIRING_REPLY_INTERVAL)
        {
            return false;
        }
        if told.len() >= TRY_LATER_MEMORY {
            told.clear();
        }
        told.insert(key, now);
        true
    }

    /// Removes the expired pairing requests (their kept messages are marked done, unanswered).
    pub async fn expire(&self) {
        if let Err(error) = self.store.pairing_expire(now_ms()).await {
            tracing::warn!(message = "Cannot remove expired pairing requests; tried again later.", %error);
        }
    }

    /// The pending pairing requests.
    pub async fn pending(&self) -> Result<Vec<PairingRequest>, StoreError> {
        self.store.pairing_list(now_ms()).await
    }

    /// Approves the request `code`: the sender's current user (linked addresses included) is
    /// approved durably. Returns the request and its kept messages, oldest first, to be routed
    /// again.
    pub async fn approve(
        &self,
        code: &str,
        identity: &Identity,
    ) -> Result<(PairingRequest, Vec<PendingInbound>), StoreError> {
        let code = normalize_code(code);
        let now = now_ms();
        let request = self.store.pairing_get(&code, now).await?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "no pending pairing request `{code}`; see `gatewayctl pairing list`"
            ))
        })?;
        let user = identity
            .resolve(&Address {
                channel: request.channel,
                sender_id: request.sender_id.clone(),
            })
            .await?;
        let request = self.store.pairing_approve(&code, user, now).await?;
        let kept = self.store.inbox_rows(&request.kept).await?;
        tracing::info!(message = "Pairing request approved.", channel = %request.channel, code = %code, user, kept = kept.len());
        Ok((request, kept))
    }

    /// Denies the request `code`: it is removed and its kept messages are marked done,
    /// unanswered; the sender is not told.
    pub async fn deny(&self, code: &str) -> Result<PairingRequest, StoreError> {
        let code = normalize_code(code);
        let request = self.store.pairing_deny(&code, now_ms()).await?;
        tracing::info!(message = "Pairing request denied.", channel = %request.channel, code = %code);
        Ok(request)
    }

    /// Blocks or unblocks `user`.
    pub async fn set_blocked(&self, user: UserId, blocked: bool) -> Result<(), StoreError> {
        self.store.set_blocked(user, blocked).await?;
        tracing::info!(
            message = if blocked {
                "User blocked."
            } else {
                "User unblocked."
            },
            user
        );
        Ok(())
    }
}

/// Counts a dropped message.
fn dropped(channel: ChannelKind, reason: &'static str) {
    metrics::counter!("gateway_access_dropped_total", "channel" => channel.as_str(), "reason" => reason)
        .increment(1);
}

/// The allowlist of one channel: its `allow` entries and its `allow_file`'s.
fn allowlist(kind: ChannelKind, policy: &ChannelPolicy) -> HashSet<String> {
    let mut allowed: HashSet<String> = policy.allow.iter().map(|a| a.trim().to_owned()).collect();
    if let Some(file) = &policy.allow_file {
        match read_allow_file(file) {
            Ok(lines) => allowed.extend(lines),
            Err(error) => {
                tracing::warn!(message = "Cannot read the allow file; it counts as empty until it is reloaded (SIGHUP).", channel = %kind, %error);
            }
        }
    }
    allowed
}

/// A new pairing code.
fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect()
}

/// A code as the operator may type it: trimmed, upper case.
fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// The name of the gateway command `text` starts with (`/help@bot` is `help`), lower case.
fn command_name(text: &str) -> Option<String> {
    let word = text.trim().strip_prefix('/')?.split_whitespace().next()?;
    let name = word.split('@').next().unwrap_or(word);
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::registry::parse_config;

    fn policy(dm: DmPolicy, group: GroupPolicy) -> ChannelPolicy {
        ChannelPolicy {
            dm,
            allow: Vec::new(),
            allow_file: None,
            group,
            groups: vec!["-100".to_owned()],
            require_mention: false,
        }
    }

    #[test]
    fn the_decision_table() {
        use ChatType::{Direct, Group};
        use Decision::{Drop, Pair, Through};
        let nobody = Sender::default();
        let allowed = Sender {
            allowed: true,
            approved: false,
        };
        let approved = Sender {
            allowed: false,
            approved: true,
        };
        let open = GroupPolicy::Open;
        let cases = [
            (DmPolicy::Open, open, Direct, "c", nobody, Through),
            (
                DmPolicy::Disabled,
                open,
                Direct,
                "c",
                allowed,
                Drop("dm_disabled"),
            ),
            (DmPolicy::Allowlist, open, Direct, "c", allowed, Through),
            (
                DmPolicy::Allowlist,
                open,
                Direct,
                "c",
                approved,
                Drop("not_allowed"),
            ),
            (DmPolicy::Pairing, open, Direct, "c", nobody, Pair),
            (DmPolicy::Pairing, open, Direct, "c", approved, Through),
            (DmPolicy::Pairing, open, Direct, "c", allowed, Through),
            (DmPolicy::Disabled, open, Group, "-1", nobody, Through),
            (
                DmPolicy::Open,
                GroupPolicy::Disabled,
                Group,
                "-100",
                nobody,
                Drop("group_disabled"),
            ),
            (
                DmPolicy::Open,
                GroupPolicy::Allowlist,
                Group,
                "-100",
                nobody,
                Through,
            ),
            (
                DmPolicy::Open,
                GroupPolicy::Allowlist,
                Group,
                "-1",
                allowed,
                Drop("group_not_allowed"),
            ),
        ];
        for (dm, group, chat, id, sender, want) in cases {
            assert_eq!(
                decide(&policy(dm, group), chat, id, false, sender),
                want,
                "{dm:?} {group:?} {chat:?} {id} {sender:?}"
            );
        }
    }

    fn base(extra: &str) -> String {
        format!("[channels.telegram]\nenabled = true\ntoken_env = \"PATH\"\n{extra}")
    }

    #[test]
    fn defaults_pair_platform_channels_and_open_local_web_channels() {
        let config = parse_config(&base("[channels.webchat]\nenabled = true\n")).expect("valid");
        let access = crate::channels::registry::access(&config);
        let dm = |name: &str| {
            access
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, p)| p.dm)
        };
        assert_eq!(dm("telegram"), Some(DmPolicy::Pairing));
        assert_eq!(dm("webchat"), Some(DmPolicy::Open));
        assert_eq!(dm("http"), Some(DmPolicy::Open));
        assert!(crate::channels::registry::access_warnings(&config).is_empty());
        let public = parse_config(&format!(
            "[http]\nlisten = \"0.0.0.0:8080\"\n{}",
            base("[channels.webchat]\nenabled = true\n")
        ))
        .expect("valid");
        let access = crate::channels::registry::access(&public);
        let webchat = access.iter().find(|(k, _)| k.as_str() == "webchat");
        assert_eq!(webchat.map(|(_, p)| p.dm), Some(DmPolicy::Pairing));
        let open = parse_config(&format!(
            "[http]\nlisten = \"0.0.0.0:8080\"\n{}",
            base("[channels.webchat]\nenabled = true\ndm_policy = \"open\"\n")
        ))
        .expect("valid");
        let warnings = crate::channels::registry::access_warnings(&open);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("channels.webchat"), "{warnings:?}");
    }

    #[test]
    fn a_channel_section_overrides_access() {
        let config = parse_config(&format!(
            "[access]\ndm_policy = \"allowlist\"\nallow = [\"telegram:1\"]\ngroup_policy = \"disabled\"\n{}",
            base("dm_policy = \"pairing\"\ngroups = [\"-5\"]\ngroup_policy = \"allowlist\"\n")
        ))
        .expect("valid");
        let access = crate::channels::registry::access(&config);
        let get = |name: &str| {
            access
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, p)| p.clone())
                .expect("channel")
        };
        let telegram = get("telegram");
        assert_eq!(telegram.dm, DmPolicy::Pairing);
        assert_eq!(telegram.group, GroupPolicy::Allowlist);
        assert_eq!(telegram.groups, vec!["-5".to_owned()]);
        assert_eq!(telegram.allow, vec!["telegram:1".to_owned()]);
        let discord = get("discord");
        assert_eq!(discord.dm, DmPolicy::Allowlist);
        assert_eq!(discord.group, GroupPolicy::Disabled);
    }

    #[test]
    fn bad_values_name_the_key_and_the_allowed_values() {
        let errs = parse_config(&format!(
            "[access]\ndm_policy = \"closed\"\nallow = [\"nochannel:1\", \"x\"]\n{}",
            base("group_policy = \"some\"\nallow_file = \"/nonexistent/allow.txt\"\n")
        ))
        .expect_err("invalid");
        let find = |path: &str| {
            errs.iter()
                .find(|e| e.path == path)
                .map(|e| e.message.clone())
                .unwrap_or_else(|| panic!("no error at {path}: {errs:?}"))
        };
        let dm = find("access.dm_policy");
        assert!(
            dm.contains("open")
                && dm.contains("pairing")
                && dm.contains("allowlist")
                && dm.contains("disabled"),
            "{dm}"
        );
        let group = find("channels.telegram.group_policy");
        assert!(
            group.contains("allowlist") && group.contains("disabled"),
            "{group}"
        );
        assert!(find("access.allow").contains("nochannel:1"), "{errs:?}");
        assert!(find("channels.telegram.allow_file").contains("/nonexistent/allow.txt"));
        assert_eq!(
            errs.iter().filter(|e| e.path == "access.allow").count(),
            2,
            "{errs:?}"
        );
    }

    #[test]
    fn a_group_message_that_does_not_address_the_bot_is_dropped_under_the_mention_rule() {
        let mut p = policy(DmPolicy::Open, GroupPolicy::Open);
        p.require_mention = true;
        let nobody = Sender::default();
        let group = |p: &ChannelPolicy, chat, mentioned| {
            decide(p, ChatType::Group, chat, mentioned, nobody)
        };
        assert_eq!(group(&p, "-1", false), Decision::Drop("not_mentioned"));
        assert_eq!(group(&p, "-1", true), Decision::Through);
        assert_eq!(
            decide(&p, ChatType::Direct, "c", false, nobody),
            Decision::Through,
            "the rule is about groups only"
        );
        p.group = GroupPolicy::Allowlist;
        assert_eq!(
            group(&p, "-1", true),
            Decision::Drop("group_not_allowed"),
            "a mention does not open a group that is not allowed"
        );
        assert_eq!(group(&p, "-100", false), Decision::Drop("not_mentioned"));
        assert_eq!(group(&p, "-100", true), Decision::Through);
    }

    #[test]
    fn the_mention_rule_defaults_on_where_mentions_exist_and_keeps_the_old_names() {
        let config = parse_config(&format!(
            "{}[channels.discord]\nrequire_mention_in_guilds = false\n[channels.slack]\nrequire_mention_in_channels = true\n[channels.signal]\nrequire_mention_in_groups = false\n",
            base("")
        ))
        .expect("valid");
        let access = crate::channels::registry::access(&config);
        let rule = |name: &str| {
            access
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, p)| p.require_mention)
                .expect("channel")
        };
        assert!(rule("telegram"), "on by default");
        assert!(!rule("discord"), "require_mention_in_guilds is its alias");
        assert!(rule("slack"), "require_mention_in_channels is its alias");
        assert!(!rule("signal"));
        assert!(!rule("whatsapp"), "no mentions, no rule");
        let off = parse_config(&format!(
            "[access]\nrequire_mention_in_groups = false\n{}",
            base("")
        ))
        .expect("valid");
        let access = crate::channels::registry::access(&off);
        assert!(access.iter().all(|(_, p)| !p.require_mention));

        let errs = parse_config(&format!(
            "{}require_mention_in_guilds = true\n[channels.discord]\nrequire_mention_in_guilds = true\nrequire_mention_in_groups = false\n[channels.whatsapp]\nrequire_mention_in_groups = true\n",
            base("")
        ))
        .expect_err("invalid");
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"channels.discord.require_mention_in_guilds"),
            "both names set: {errs:?}"
        );
        assert!(
            paths.contains(&"channels.whatsapp.require_mention_in_groups"),
            "a channel without mentions: {errs:?}"
        );
        assert!(
            paths.iter().any(|p| p.starts_with("channels.telegram")),
            "Discord's alias is not Telegram's: {errs:?}"
        );
    }

    #[test]
    fn command_names() {
        assert_eq!(command_name(" /Help@bot x").as_deref(), Some("help"));
        assert_eq!(command_name("/link ABC").as_deref(), Some("link"));
        assert_eq!(command_name("hello /link"), None);
    }
}
