//! Slack events into inbound messages: the `event_callback` envelope ([`Callback`]), the inner
//! event ([`Event`]) and [`normalize`], which applies the channel's rules (see the module doc of
//! `channels::slack`): chat types, the bot's own events, edits, the mention rule and the thread
//! encoding. Parsing is lenient about fields it does not read and never panics on what arrives.

use serde::Deserialize;

use super::{BotIdentity, KIND};
use crate::message::{Attachment, ChatType, InboundMessage, now_ms};

/// An Events API request body, or a Socket Mode envelope's payload.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Callback {
    /// `url_verification`, `event_callback`, `app_rate_limited`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `url_verification`: what to answer.
    pub challenge: Option<String>,
    /// `event_callback`: the event's worldwide id (`Ev…`).
    pub event_id: Option<String>,
    /// `event_callback`: the event.
    pub event: Option<Event>,
}

/// One inner event (`message`, `app_mention`, …), with the fields the gateway reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    /// `message`, `app_mention`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `message_changed`, `message_deleted`, `bot_message`, `file_share`, …
    pub subtype: Option<String>,
    /// The channel id (`C…`, `D…`, `G…`).
    pub channel: Option<String>,
    /// `channel`, `group`, `im`, `mpim` or `app_home`.
    pub channel_type: Option<String>,
    /// The author.
    pub user: Option<String>,
    /// Set on messages a bot posted.
    pub bot_id: Option<String>,
    /// The text (mentions are `<@U…>`).
    pub text: Option<String>,
    /// The message's timestamp, its id within the channel.
    pub ts: Option<String>,
    /// The thread's parent, for a message in a thread.
    pub thread_ts: Option<String>,
    /// Files shared with the message.
    pub files: Vec<File>,
}

/// A file shared in a message.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct File {
    /// The file id (`F…`).
    pub id: String,
    /// Its name.
    pub name: Option<String>,
}

/// Subtypes that are a person's message.
const ANSWERED_SUBTYPES: &[&str] = &["file_share", "thread_broadcast", "me_message"];

fn plain(s: &Option<String>) -> Option<&str> {
    s.as_deref()
        .filter(|s| !s.is_empty() && !s.contains(':') && !s.chars().any(char::is_whitespace))
}

/// Turns an `event_callback` into an inbound message for the bot `bot`; `None` for what is not
/// answered. Whether a group message mentions the bot is `mentioned`, for the access checks'
/// mention rule.
pub fn normalize(callback: &Callback, bot: &BotIdentity) -> Option<InboundMessage> {
    if callback.kind != "event_callback" {
        return None;
    }
    let event = callback.event.as_ref()?;
    let mention_event = match event.kind.as_str() {
        "message" => false,
        "app_mention" => true,
        _ => return None,
    };
    match event.subtype.as_deref() {
        None => {}
        Some(s) if ANSWERED_SUBTYPES.contains(&s) => {}
        Some(s @ ("message_changed" | "message_deleted")) => {
            tracing::debug!(
                message = "Slack edit or deletion acknowledged, not answered again.",
                subtype = s,
                channel = event.channel.as_deref().unwrap_or_default()
            );
            return None;
        }
        Some(_) => return None,
    }
    let own_bot = bot.bot_id.is_some() && event.bot_id == bot.bot_id;
    let user = event.user.as_deref().filter(|u| !u.is_empty())?;
    if own_bot || user == bot.user_id {
        return None;
    }
    let channel = plain(&event.channel)?;
    let ts = plain(&event.ts)?;
    let chat_type = match event.channel_type.as_deref() {
        Some("im") => ChatType::Direct,
        Some("channel" | "group" | "mpim") => ChatType::Group,
        Some(_) => return None,
        None if channel.starts_with('D') => ChatType::Direct,
        None => ChatType::Group,
    };
    let mut text = event.text.clone().unwrap_or_default();
    let tag = format!("<@{}", bot.user_id);
    let mentioned = mention_event || mentions(&text, &tag);
    if mentioned {
        text = strip_mention(&text, &tag);
    }
    let attachments: Vec<Attachment> = event
        .files
        .iter()
        .filter(|f| !f.id.is_empty())
        .map(|f| Attachment {
            kind: "file".to_owned(),
            file_id: f.id.clone(),
            name: f.name.clone(),
        })
        .collect();
    if text.trim().is_empty() && attachments.is_empty() {
        return None;
    }
    let thread = plain(&event.thread_ts).filter(|t| *t != ts);
    let (channel_message_id, reply_to) = match thread {
        Some(t) => (
            format!("{channel}:{ts}:{t}"),
            Some(format!("{channel}:{t}")),
        ),
        None => (format!("{channel}:{ts}"), None),
    };
    Some(InboundMessage {
        channel: KIND,
        channel_message_id,
        chat_id: channel.to_owned(),
        chat_type,
        sender_id: user.to_owned(),
        text,
        reply_to,
        attachments,
        sender_name: None,
        received_at_ms: now_ms(),
        mentioned: chat_type == ChatType::Group && mentioned,
    })
}

/// Whether `text` holds the mention `tag` (`<@U…`), as `<@U…>` or `<@U…|name>`.
fn mentions(text: &str, tag: &str) -> bool {
    text.match_indices(tag)
        .any(|(i, _)| matches!(text[i + tag.len()..].chars().next(), Some('>' | '|')))
}

/// `text` without the mentions `tag` (`<@U…>` or `<@U…|name>`), trimmed.
fn strip_mention(text: &str, tag: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(tag) {
        let after = &rest[i + tag.len()..];
        match after.find('>') {
            Some(end) if after.starts_with('>') || after.starts_with('|') => {
                out.push_str(&rest[..i]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(&rest[..i + tag.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The thread a reply goes to: the third part of `"{channel}:{ts}:{thread_ts}"`, if any.
pub fn reply_thread(reply_to: Option<&str>) -> Option<&str> {
    let mut parts = reply_to?.split(':');
    let (_, _, thread) = (parts.next()?, parts.next()?, parts.next()?);
    (!thread.is_empty() && parts.next().is_none()).then_some(thread)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bot() -> BotIdentity {
        BotIdentity {
            user_id: "UBOT".to_owned(),
            bot_id: Some("BBOT".to_owned()),
        }
    }

    fn callback(event: serde_json::Value) -> Callback {
        serde_json::from_value(json!({"type": "event_callback", "event_id": "Ev1", "event": event}))
            .expect("a callback")
    }

    fn message(channel: &str, channel_type: &str, text: &str) -> serde_json::Value {
        json!({"type": "message", "channel": channel, "channel_type": channel_type,
               "user": "U1", "text": text, "ts": "1700000000.000100"})
    }

    fn check(event: serde_json::Value) -> Option<InboundMessage> {
        normalize(&callback(event), &bot())
    }

    #[test]
    fn a_group_message_is_mentioned_by_app_mention_or_the_bots_tag() {
        let flag = |event: serde_json::Value| check(event).map(|m| m.mentioned);
        assert_eq!(flag(message("C1", "channel", "<@UBOT> hi")), Some(true));
        assert_eq!(
            flag(message("C1", "channel", "hi <@UBOT|gate>")),
            Some(true)
        );
        assert_eq!(flag(message("C1", "channel", "hi <@UOTHER>")), Some(false));
        assert_eq!(flag(message("C1", "channel", "hi <@UBOTX>")), Some(false));
        assert_eq!(flag(message("C1", "channel", "just talking")), Some(false));
        let mut app_mention = message("C1", "channel", "hi");
        app_mention["type"] = json!("app_mention");
        assert_eq!(flag(app_mention), Some(true));
        assert_eq!(
            flag(message("D1", "im", "<@UBOT> hi")),
            Some(false),
            "a direct message is never `mentioned`"
        );
    }

    #[test]
    fn chat_types_follow_channel_type() {
        for (channel, channel_type, want) in [
            ("D1", "im", Some(ChatType::Direct)),
            ("C1", "channel", Some(ChatType::Group)),
            ("G1", "group", Some(ChatType::Group)),
            ("G2", "mpim", Some(ChatType::Group)),
            ("D1", "app_home", None),
        ] {
            let got = check(message(channel, channel_type, "hello"));
            assert_eq!(got.as_ref().map(|m| m.chat_type), want, "{channel_type}");
            if let Some(m) = got {
                assert_eq!(
                    (m.chat_id.as_str(), m.sender_id.as_str(), m.text.as_str()),
                    (channel, "U1", "hello")
                );
                assert_eq!(m.channel_message_id, format!("{channel}:1700000000.000100"));
                assert_eq!(m.reply_to, None);
            }
        }
    }

    #[test]
    fn own_bot_and_userless_events_are_dropped() {
        let mut own = message("D1", "im", "echo");
        own["bot_id"] = json!("BBOT");
        assert!(check(own).is_none(), "own bot_id");
        let mut own_user = message("D1", "im", "echo");
        own_user["user"] = json!("UBOT");
        assert!(check(own_user).is_none(), "own user id");
        let mut other_bot = message("D1", "im", "from another app");
        other_bot["bot_id"] = json!("BOTHER");
        assert!(check(other_bot).is_some(), "another bot with a user");
        let mut userless = message("D1", "im", "no user");
        userless["user"] = serde_json::Value::Null;
        assert!(check(userless).is_none(), "no user");
    }

    #[test]
    fn edits_and_deletions_are_not_answered() {
        for subtype in [
            "message_changed",
            "message_deleted",
            "bot_message",
            "channel_join",
        ] {
            let mut e = message("D1", "im", "changed");
            e["subtype"] = json!(subtype);
            assert!(check(e).is_none(), "{subtype}");
        }
        let mut shared = message("D1", "im", "a file");
        shared["subtype"] = json!("file_share");
        shared["files"] = json!([{"id": "F1", "name": "report.pdf"}]);
        let m = check(shared).expect("file_share is answered");
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(
            (
                m.attachments[0].kind.as_str(),
                m.attachments[0].file_id.as_str()
            ),
            ("file", "F1")
        );
        assert_eq!(m.attachments[0].name.as_deref(), Some("report.pdf"));
    }

    #[test]
    fn threads_are_encoded_in_the_ids() {
        let mut e = message("C1", "channel", "in a thread <@UBOT>");
        e["thread_ts"] = json!("1699999999.000001");
        let m = check(e).expect("threaded");
        assert_eq!(
            m.channel_message_id,
            "C1:1700000000.000100:1699999999.000001"
        );
        assert_eq!(m.reply_to.as_deref(), Some("C1:1699999999.000001"));
        assert_eq!(
            reply_thread(Some(&m.channel_message_id)),
            Some("1699999999.000001")
        );
        let mut parent = message("C1", "channel", "<@UBOT> parent");
        parent["thread_ts"] = json!("1700000000.000100");
        let m = check(parent).expect("a thread's parent");
        assert_eq!(m.channel_message_id, "C1:1700000000.000100");
        assert_eq!(reply_thread(Some(&m.channel_message_id)), None);
        assert_eq!(reply_thread(None), None);
        assert_eq!(reply_thread(Some("C1:1:2:3")), None);
        let mut colon = message("C1", "channel", "<@UBOT> x");
        colon["ts"] = json!("1:2");
        assert!(check(colon).is_none(), "a `:` would break the encoding");
    }

    #[test]
    fn the_bots_mention_is_removed_from_the_text() {
        let unmentioned = check(message("C1", "channel", "no mention")).expect("a message");
        assert!(!unmentioned.mentioned, "the access checks drop it");
        assert_eq!(unmentioned.text, "no mention");
        let other = check(message("C1", "channel", "<@UBOTX> not me")).expect("a message");
        assert!(
            !other.mentioned && other.text == "<@UBOTX> not me",
            "another user whose id starts with the bot's: {other:?}"
        );
        let m = check(message("C1", "channel", "hey <@UBOT> what's up")).expect("mention");
        assert_eq!(m.text, "hey what's up");
        let m = check(message("C1", "channel", "<@UBOT|gw> hi")).expect("named mention");
        assert_eq!(m.text, "hi");
        assert!(
            check(message("D1", "im", "dm without mention")).is_some(),
            "DMs are always answered"
        );
        let mention = json!({"type": "app_mention", "channel": "C1", "user": "U1",
                             "text": "<@UBOT> via app_mention", "ts": "1700000000.000100"});
        let m = check(mention).expect("app_mention");
        assert_eq!(m.chat_type, ChatType::Group);
        assert_eq!(m.text, "via app_mention");
        assert_eq!(
            m.channel_message_id, "C1:1700000000.000100",
            "the same key as its message event"
        );
        assert!(
            check(message("C1", "channel", "<@UBOT>")).is_none(),
            "empty"
        );
    }

    #[test]
    fn other_callbacks_are_not_messages() {
        let verify: Callback =
            serde_json::from_value(json!({"type": "url_verification", "challenge": "c"}))
                .expect("parses");
        assert!(normalize(&verify, &bot()).is_none());
        let other = callback(json!({"type": "reaction_added", "user": "U1"}));
        assert!(normalize(&other, &bot()).is_none());
    }
}

#[cfg(test)]
mod props {
    //! Arbitrary bytes, as a forger of the webhook could send them: parsing and normalizing never
    //! panic. Cases: `PROPTEST_CASES`.
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn prop_slack_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(cb) = serde_json::from_slice::<Callback>(&body) {
                let bot = BotIdentity { user_id: "UBOT".to_owned(), bot_id: None };
                let _ = normalize(&cb, &bot);
            }
        }

        #[test]
        fn prop_slack_text_never_panics(text in "\\PC{0,60}", tag in "<@[A-Z]{0,5}") {
            let _ = mentions(&text, &tag);
            let _ = strip_mention(&text, &tag);
            let _ = reply_thread(Some(&text));
        }
    }
}
