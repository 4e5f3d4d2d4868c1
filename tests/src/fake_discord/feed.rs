//! Driving the fake from a test: gateway control (dropping the socket, Reconnect, Invalid
//! Session, close codes), the gateway settings, and feeding `MESSAGE_CREATE` dispatches, which
//! are queued while no session is live and admitted to a session by its intents.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::json::{
    MessageParts, attachment_json, bot_author_json, gateway_message, iso8601, message_core,
    user_json,
};
use super::{
    BOT_USER_ID, Control, DISCORD_EPOCH_MS, Dispatch, FakeDiscord, Incoming, PendingEvent,
    Recorded, Session, StoredMessage, intents, take_target,
};
use crate::support::lock;

impl FakeDiscord {
    /// Shuts the live gateway socket down abruptly (no close frame), keeping
    /// the session resumable: the client must RESUME, and dispatches pushed
    /// meanwhile are replayed. Targets the newest open connection if no
    /// session is live. Returns false if there was no connection.
    pub fn drop_connection(&self) -> bool {
        let mut st = lock(&self.shared.state);
        let target = take_target(&mut st);
        let sent = match target.and_then(|id| st.conns.iter().find(|c| c.id == id)) {
            Some(entry) => {
                entry.handle.kill();
                entry.control.send(Control::Drop).is_ok()
            }
            None => false,
        };
        drop(st);
        self.shared.wake();
        sent
    }

    /// Sends Reconnect (op 7) on the live connection (serenity then opens a
    /// new connection and RESUMEs); dispatches are held from now on until
    /// that happens. Returns false if there was no connection.
    pub fn send_reconnect(&self) -> bool {
        self.control(Control::Reconnect)
    }

    /// Ends the session (it can no longer be resumed) and sends Invalid
    /// Session (op 9, `d: false`) on the live connection; the client must
    /// Identify again. Dispatches not yet written to a socket are delivered
    /// after the next READY. Returns false if there was no connection (the
    /// session is ended anyway).
    pub fn invalidate_session(&self) -> bool {
        let mut st = lock(&self.shared.state);
        if let Some(old) = st.session.take() {
            let mut carried = undelivered(old);
            carried.extend(st.pending.drain(..));
            st.pending = carried;
        }
        drop(st);
        self.control(Control::Invalidate)
    }

    /// Closes the live connection with a close frame `code` (e.g. 4000 to
    /// make the client resume, 4009 session timeout, 4004 authentication
    /// failed). Returns false if there was no connection.
    pub fn close_connection(&self, code: u16, reason: &str) -> bool {
        self.control(Control::Close(code, reason.to_owned()))
    }

    fn control(&self, control: Control) -> bool {
        let mut st = lock(&self.shared.state);
        let target = take_target(&mut st);
        let sent = match target.and_then(|id| st.conns.iter().find(|c| c.id == id)) {
            Some(entry) => entry.control.send(control).is_ok(),
            None => false,
        };
        drop(st);
        self.shared.wake();
        sent
    }

    /// When true, even the right token is rejected: REST answers 401 (except
    /// the unauthenticated `GET /api/v10/gateway`) and Identify/Resume get
    /// close code 4004.
    pub fn set_reject_token(&self, reject: bool) {
        lock(&self.shared.state).reject_token = reject;
    }

    /// Heartbeat interval announced in the next Hello frames (default 1 s).
    pub fn set_heartbeat_interval(&self, interval: Duration) {
        lock(&self.shared.state).heartbeat_interval = interval;
    }

    /// Whether heartbeats are acknowledged (op 11); default true. Without
    /// acks serenity declares the connection zombied after one interval and
    /// restarts the shard (a fresh Identify).
    pub fn set_heartbeat_ack(&self, ack: bool) {
        lock(&self.shared.state).ack_heartbeats = ack;
    }

    /// Identifies asking for any of these intent bits are closed with 4014
    /// (Disallowed intents), e.g. [`intents::MESSAGE_CONTENT`] for a bot
    /// whose privileged intent is not enabled. Default 0.
    pub fn set_disallowed_intents(&self, mask: u64) {
        lock(&self.shared.state).disallowed_intents = mask;
    }

    /// Whether messages the bot posts are echoed back as `MESSAGE_CREATE`
    /// dispatches (author = the bot), as real Discord does. Default true.
    pub fn set_echo_sent(&self, echo: bool) {
        lock(&self.shared.state).echo_sent = echo;
    }

    /// Whether a `message_reference` to a message the fake does not know is
    /// rejected (400, code 50035 `REPLIES_UNKNOWN_MESSAGE`) unless
    /// `fail_if_not_exists` is false, as real Discord does. Default true.
    pub fn set_strict_references(&self, strict: bool) {
        lock(&self.shared.state).strict_references = strict;
    }

    // ----- feeding messages ----------------------------------------------

    /// A direct message from `author_id` in DM channel `channel_id`; returns
    /// its message id.
    pub fn push_dm(&self, channel_id: u64, author_id: u64, content: &str) -> u64 {
        self.push_message(Incoming {
            channel_id,
            author_id,
            content: content.to_owned(),
            ..Incoming::default()
        })
    }

    /// A guild message; with `mentions_bot` the content starts with
    /// `<@BOT_ID> ` and `mentions` includes the bot user.
    pub fn push_guild_message(
        &self,
        guild_id: u64,
        channel_id: u64,
        author_id: u64,
        content: &str,
        mentions_bot: bool,
    ) -> u64 {
        self.push_message(Incoming {
            channel_id,
            guild_id: Some(guild_id),
            author_id,
            content: content.to_owned(),
            mention_bot: mentions_bot,
            ..Incoming::default()
        })
    }

    /// A reply to `reply_to` in `channel_id` (a guild channel if a guild
    /// message was pushed or echoed there before, else a DM channel). A reply
    /// to the bot's message pings (mentions) the bot, as Discord clients do
    /// by default.
    pub fn push_reply(&self, channel_id: u64, author_id: u64, content: &str, reply_to: u64) -> u64 {
        let guild_id = self.channel_guild(channel_id);
        self.push_message(Incoming {
            channel_id,
            guild_id,
            author_id,
            content: content.to_owned(),
            reply_to: Some(reply_to),
            ..Incoming::default()
        })
    }

    /// A message from another bot (`author.bot = true`) in `channel_id`
    /// (guild inferred as for [`push_reply`](Self::push_reply)).
    pub fn push_from_bot(&self, channel_id: u64, author_id: u64, content: &str) -> u64 {
        let guild_id = self.channel_guild(channel_id);
        self.push_message(Incoming {
            channel_id,
            guild_id,
            author_id,
            author_bot: true,
            content: content.to_owned(),
            ..Incoming::default()
        })
    }

    fn channel_guild(&self, channel_id: u64) -> Option<u64> {
        let st = lock(&self.shared.state);
        st.channel_guilds.get(&channel_id).copied().flatten()
    }

    /// Dispatches `MESSAGE_CREATE` for `msg` (queued if no session is live)
    /// and returns its message id.
    ///
    /// # Panics
    /// If `channel_id`, `author_id`, `guild_id` or `reply_to` is zero.
    pub fn push_message(&self, msg: Incoming) -> u64 {
        assert!(
            msg.channel_id != 0
                && msg.author_id != 0
                && msg.guild_id != Some(0)
                && msg.reply_to != Some(0),
            "FakeDiscord: ids must be nonzero snowflakes (serenity drops the event otherwise)"
        );
        let mut st = lock(&self.shared.state);
        let id = next_snowflake(&mut st);
        st.channel_guilds.insert(msg.channel_id, msg.guild_id);
        let is_own = msg.author_id == BOT_USER_ID;
        let author = if is_own {
            bot_author_json()
        } else {
            let name = msg
                .author_name
                .clone()
                .unwrap_or_else(|| format!("user{}", msg.author_id));
            user_json(msg.author_id, &name, msg.author_bot)
        };
        let content = match (msg.mention_bot, msg.content.is_empty()) {
            (false, _) => msg.content.clone(),
            (true, true) => format!("<@{BOT_USER_ID}>"),
            (true, false) => format!("<@{BOT_USER_ID}> {}", msg.content),
        };
        let mut mentioned: Vec<Value> = Vec::new();
        if msg.mention_bot {
            mentioned.push(bot_author_json());
        }
        let referenced = msg
            .reply_to
            .and_then(|r| st.messages.get(&r))
            .map(|m| (m.core.clone(), m.author_id, m.author.clone()));
        if let Some((_, ref_author_id, ref_author)) = &referenced {
            let already = mentioned
                .iter()
                .any(|u| u.get("id") == Some(&json!(ref_author_id.to_string())));
            if *ref_author_id != msg.author_id && !already {
                mentioned.push(ref_author.clone());
            }
        }
        let mentions_bot = mentioned
            .iter()
            .any(|u| u.get("id") == Some(&json!(BOT_USER_ID.to_string())));
        let attachments: Vec<Value> = msg
            .attachments
            .iter()
            .map(|a| {
                let att_id = next_snowflake(&mut st);
                attachment_json(msg.channel_id, att_id, a)
            })
            .collect();
        let timestamp = iso8601(SystemTime::now());
        let core = message_core(&MessageParts {
            id,
            channel_id: msg.channel_id,
            guild_id: msg.guild_id,
            author: author.clone(),
            content,
            timestamp: timestamp.clone(),
            mentions: &mentioned,
            attachments,
            reply_to: msg.reply_to,
        });
        let d = gateway_message(
            &core,
            msg.guild_id,
            &mentioned,
            &timestamp,
            msg.reply_to
                .map(|_| referenced.as_ref().map(|(c, _, _)| c.clone())),
        );
        st.messages.insert(
            id,
            StoredMessage {
                core,
                author_id: msg.author_id,
                author,
            },
        );
        let event = PendingEvent {
            t: "MESSAGE_CREATE",
            d,
            message_id: Some(id),
            guild: msg.guild_id.is_some(),
            content_exempt: msg.guild_id.is_none() || mentions_bot || is_own,
        };
        enqueue(&mut st, event);
        drop(st);
        self.shared.wake();
        id
    }
}

/// Events of a finished session that were never written to a socket.
pub(super) fn undelivered(old: Session) -> VecDeque<PendingEvent> {
    let upto = old.delivered_upto;
    old.log
        .into_iter()
        .filter(|d| d.seq > upto)
        .map(|d| d.event)
        .collect()
}

/// Puts `event` into the session (assigning its sequence number) or, without
/// a session, into the queue delivered after the next READY.
pub(super) fn enqueue(st: &mut Recorded, event: PendingEvent) {
    let Recorded {
        session,
        pending,
        withheld,
        ..
    } = st;
    match session {
        Some(s) => admit(s, event, withheld),
        None => pending.push_back(event),
    }
}

/// Applies the session's intents to `event` and appends it to the log.
pub(super) fn admit(session: &mut Session, event: PendingEvent, withheld: &mut usize) {
    let needed = if event.guild {
        intents::GUILD_MESSAGES
    } else {
        intents::DIRECT_MESSAGES
    };
    if event.t == "MESSAGE_CREATE" && session.intents & needed == 0 {
        *withheld += 1;
        return;
    }
    let mut d = event.d.clone();
    let strip = event.t == "MESSAGE_CREATE"
        && session.intents & intents::MESSAGE_CONTENT == 0
        && !event.content_exempt;
    if strip && let Some(obj) = d.as_object_mut() {
        obj.insert("content".into(), json!(""));
        obj.insert("embeds".into(), json!([]));
        obj.insert("attachments".into(), json!([]));
        obj.insert("components".into(), json!([]));
        obj.remove("poll");
    }
    session.seq += 1;
    session.log.push(Dispatch {
        seq: session.seq,
        event,
        d,
    });
}

pub(super) fn next_snowflake(st: &mut Recorded) -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    // Worker 1, process 0; the increment bits absorb same-millisecond ids.
    let candidate = (ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | (1 << 17);
    let id = candidate.max(st.last_snowflake.saturating_add(1));
    st.last_snowflake = id;
    id
}
