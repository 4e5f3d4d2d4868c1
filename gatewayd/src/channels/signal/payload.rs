//! What signal-cli sends and answers, as serde types, and their translation: an event of the
//! stream into an [`InboundMessage`] ([`normalize`]), a message id into a quote reference and
//! back ([`message_id`], [`Reference`]), a chat id into a recipient ([`Recipient`]).
//!
//! Ids: a direct chat and its sender are the sender's `sourceUuid` (the number can be hidden);
//! a group chat is its base64 `groupId`; a message is `<sourceUuid>:<timestamp>`, the pair that
//! identifies a Signal message, which is the dedupe key and what a quote names
//! (`quoteAuthor` + `quoteTimestamp`).

use serde::Deserialize;

use super::KIND;
use crate::message::{Attachment, ChatType, InboundMessage};

/// The `data` of a `receive` event: `{account, envelope}` over the event stream, or wrapped in
/// `{subscription, result}` as `subscribeReceive` notifications are.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReceiveData {
    pub account: Option<String>,
    pub envelope: Option<Envelope>,
    pub result: Option<Box<ReceiveData>>,
    pub exception: Option<serde_json::Value>,
}

impl ReceiveData {
    /// The envelope, wherever the event put it.
    pub fn into_envelope(self) -> Option<Envelope> {
        self.envelope
            .or_else(|| self.result.and_then(|r| r.into_envelope()))
    }
}

/// One envelope: who sent it, when, and exactly one kind of content.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Envelope {
    pub source_uuid: Option<String>,
    pub source_number: Option<String>,
    pub source_name: Option<String>,
    pub timestamp: i64,
    pub data_message: Option<DataMessage>,
    pub sync_message: Option<serde_json::Value>,
}

/// A message someone wrote.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DataMessage {
    pub timestamp: i64,
    pub message: Option<String>,
    pub group_info: Option<GroupInfo>,
    pub quote: Option<Quote>,
    pub mentions: Vec<Mention>,
    pub attachments: Vec<SignalAttachment>,
    pub reaction: Option<serde_json::Value>,
    pub remote_delete: Option<serde_json::Value>,
}

/// The group a message was written in.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GroupInfo {
    pub group_id: String,
}

/// The message a message replies to.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Quote {
    pub id: i64,
    pub author: Option<String>,
    pub author_uuid: Option<String>,
    pub author_number: Option<String>,
}

/// A mention in a message's text (`name` is the mentioned account's number or uuid).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Mention {
    pub name: Option<String>,
    pub number: Option<String>,
    pub uuid: Option<String>,
}

/// Whether group message `dm` addresses `account`: a mention of it, or a quote of its message.
fn addresses(dm: &DataMessage, account: &str) -> bool {
    let is_me = |s: &Option<String>| s.as_deref() == Some(account);
    dm.mentions
        .iter()
        .any(|m| is_me(&m.number) || is_me(&m.uuid) || is_me(&m.name))
        || dm
            .quote
            .as_ref()
            .is_some_and(|q| is_me(&q.author) || is_me(&q.author_number) || is_me(&q.author_uuid))
}

/// A file of a message (signal-cli stores it; the id is its file name there).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SignalAttachment {
    pub id: String,
    pub content_type: String,
    pub filename: Option<String>,
}

/// A message's id: `<author uuid>:<timestamp>`.
pub fn message_id(author: &str, timestamp: i64) -> String {
    format!("{author}:{timestamp}")
}

/// What a reply quotes: the quoted message's author and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub author: String,
    pub timestamp: i64,
}

impl Reference {
    /// The reference a message id names; `None` for an id of another shape.
    pub fn parse(id: &str) -> Option<Self> {
        let (author, ts) = id.rsplit_once(':')?;
        let timestamp = ts.parse().ok()?;
        (!author.is_empty()).then(|| Self {
            author: author.to_owned(),
            timestamp,
        })
    }
}

/// Where a reply to a chat goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A person, by UUID (or number).
    Person(String),
    /// A group, by its base64 id.
    Group(String),
}

impl Recipient {
    /// The recipient of chat `chat_id`: a UUID or a `+` number is a person, anything else a
    /// group id.
    pub fn of_chat(chat_id: &str) -> Self {
        if is_uuid(chat_id) || is_number(chat_id) {
            Self::Person(chat_id.to_owned())
        } else {
            Self::Group(chat_id.to_owned())
        }
    }
}

/// Whether `s` is a UUID in its 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `s` is a phone number in E.164 form (`+` and 7 to 15 digits).
pub fn is_number(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Why an envelope is not a message to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not a `dataMessage` (a receipt, typing, a sync of the account's own devices, …).
    NotAMessage,
    /// A message with nothing to answer (a reaction, a deletion, a group update).
    Empty,
    /// Written by the account itself.
    Own,
    /// No `sourceUuid` to key the sender on.
    NoSender,
}

/// The inbound message of `envelope`, received by `account`.
pub fn normalize(envelope: &Envelope, account: &str) -> Result<InboundMessage, Skip> {
    let Some(dm) = &envelope.data_message else {
        return Err(Skip::NotAMessage);
    };
    if envelope.source_number.as_deref() == Some(account) {
        return Err(Skip::Own);
    }
    let Some(sender) = envelope.source_uuid.as_deref().filter(|s| !s.is_empty()) else {
        return Err(Skip::NoSender);
    };
    let text = dm.message.clone().unwrap_or_default();
    let attachments: Vec<Attachment> = dm
        .attachments
        .iter()
        .filter(|a| !a.id.is_empty())
        .map(|a| Attachment {
            kind: attachment_kind(&a.content_type).to_owned(),
            file_id: a.id.clone(),
            name: a.filename.clone(),
        })
        .collect();
    if text.trim().is_empty() && attachments.is_empty() {
        return Err(Skip::Empty);
    }
    let timestamp = if envelope.timestamp > 0 {
        envelope.timestamp
    } else {
        dm.timestamp
    };
    let (chat_id, chat_type) = match dm.group_info.as_ref().filter(|g| !g.group_id.is_empty()) {
        Some(g) => (g.group_id.clone(), ChatType::Group),
        None => (sender.to_owned(), ChatType::Direct),
    };
    let reply_to = dm.quote.as_ref().and_then(|q| {
        let author = q
            .author_uuid
            .as_deref()
            .or(q.author.as_deref())
            .or(q.author_number.as_deref())
            .filter(|a| !a.is_empty())?;
        Some(message_id(author, q.id))
    });
    Ok(InboundMessage {
        channel: KIND,
        channel_message_id: message_id(sender, timestamp),
        chat_id,
        chat_type,
        sender_id: sender.to_owned(),
        sender_name: envelope
            .source_name
            .clone()
            .filter(|n| !n.trim().is_empty()),
        text,
        reply_to,
        attachments,
        received_at_ms: timestamp,
        mentioned: chat_type == ChatType::Group && addresses(dm, account),
    })
}

/// The attachment kind of a MIME type.
fn attachment_kind(content_type: &str) -> &'static str {
    match content_type.split('/').next().unwrap_or_default() {
        "image" => "photo",
        "audio" => "audio",
        "video" => "video",
        _ => "document",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "+15550001111";
    const ADA: &str = "0c4ad1f0-9b5e-4b8e-9a51-2a5f3c1d7e11";

    fn envelope(json: &str) -> Envelope {
        serde_json::from_str::<ReceiveData>(json)
            .expect("valid")
            .into_envelope()
            .expect("an envelope")
    }

    #[test]
    fn a_group_message_is_mentioned_by_a_mention_or_a_quote_of_the_account() {
        let group = r#""groupInfo":{"groupId":"Z3JvdXA=","type":"DELIVER"}"#;
        let flag = |extra: &str, group: &str| {
            let e = envelope(&format!(
                r#"{{"envelope":{{"sourceUuid":"{ADA}","timestamp":5,
                "dataMessage":{{"timestamp":5,"message":"￼ hi"{group}{extra}}}}}}}"#
            ));
            normalize(&e, ME).expect("a message").mentioned
        };
        let g = format!(",{group}");
        let mention = |who: &str| {
            format!(r#","mentions":[{{"name":"{who}","number":"{who}","start":0,"length":1}}]"#)
        };
        assert!(flag(&mention(ME), &g), "a mention of the account's number");
        assert!(
            flag(
                r#","mentions":[{"uuid":"x","number":"+15550001111","start":0,"length":1}]"#,
                &g
            ),
            "number matches though the uuid is unknown"
        );
        assert!(
            !flag(&mention("+15559999999"), &g),
            "someone else mentioned"
        );
        assert!(
            flag(
                &format!(r#","quote":{{"id":3,"author":"{ME}","authorNumber":"{ME}","text":"q"}}"#),
                &g
            ),
            "a quote of the account's message"
        );
        assert!(
            !flag(
                &format!(r#","quote":{{"id":3,"authorUuid":"{ADA}","text":"q"}}"#),
                &g
            ),
            "a quote of someone else"
        );
        assert!(!flag("", &g), "no mention");
        assert!(
            !flag(&mention(ME), ""),
            "a direct message is never `mentioned`"
        );
    }

    #[test]
    fn a_direct_message_is_keyed_on_the_uuid_and_its_timestamp() {
        let e = envelope(&format!(
            r#"{{"account":"{ME}","envelope":{{"source":"+4915","sourceNumber":null,"sourceUuid":"{ADA}",
            "sourceName":"Ada","sourceDevice":1,"timestamp":1631458508784,
            "dataMessage":{{"timestamp":1631458508784,"message":"hi","expiresInSeconds":0,"viewOnce":false}}}}}}"#
        ));
        let m = normalize(&e, ME).expect("a message");
        assert_eq!(m.chat_id, ADA);
        assert_eq!(m.sender_id, ADA);
        assert_eq!(m.chat_type, ChatType::Direct);
        assert_eq!(m.channel_message_id, format!("{ADA}:1631458508784"));
        assert_eq!(m.sender_name.as_deref(), Some("Ada"));
        assert_eq!(m.text, "hi");
        assert_eq!(m.reply_to, None);
    }

    #[test]
    fn a_group_message_with_a_quote_and_an_attachment() {
        let e = envelope(&format!(
            r#"{{"envelope":{{"sourceUuid":"{ADA}","timestamp":5,
            "dataMessage":{{"timestamp":5,"message":null,
              "groupInfo":{{"groupId":"Z3JvdXAtaWQtMzItYnl0ZXMtbG9uZy1hYmNkZWZnaA==","type":"DELIVER"}},
              "quote":{{"id":3,"author":"+1555","authorUuid":"{ADA}","text":"q"}},
              "attachments":[{{"id":"a1.jpg","contentType":"image/jpeg","filename":"cat.jpg","size":10}}]}}}}}}"#
        ));
        let m = normalize(&e, ME).expect("a message");
        assert_eq!(m.chat_type, ChatType::Group);
        assert_eq!(m.chat_id, "Z3JvdXAtaWQtMzItYnl0ZXMtbG9uZy1hYmNkZWZnaA==");
        assert_eq!(m.reply_to, Some(format!("{ADA}:3")));
        assert_eq!(m.attachments[0].kind, "photo");
        assert_eq!(m.attachments[0].name.as_deref(), Some("cat.jpg"));
        assert_eq!(
            Recipient::of_chat(&m.chat_id),
            Recipient::Group(m.chat_id.clone())
        );
        assert_eq!(Recipient::of_chat(ADA), Recipient::Person(ADA.to_owned()));
    }

    #[test]
    fn sync_receipts_reactions_and_own_messages_are_skipped() {
        let sync = envelope(&format!(
            r#"{{"envelope":{{"sourceUuid":"{ADA}","timestamp":1,"syncMessage":{{"sentMessage":{{"message":"x"}}}}}}}}"#
        ));
        assert_eq!(normalize(&sync, ME).err(), Some(Skip::NotAMessage));
        let reaction = envelope(&format!(
            r#"{{"envelope":{{"sourceUuid":"{ADA}","timestamp":1,"dataMessage":{{"timestamp":1,"reaction":{{"emoji":"x"}}}}}}}}"#
        ));
        assert_eq!(normalize(&reaction, ME).err(), Some(Skip::Empty));
        let own = envelope(&format!(
            r#"{{"envelope":{{"sourceUuid":"{ADA}","sourceNumber":"{ME}","timestamp":1,"dataMessage":{{"message":"x"}}}}}}"#
        ));
        assert_eq!(normalize(&own, ME).err(), Some(Skip::Own));
        let anonymous = envelope(r#"{"envelope":{"timestamp":1,"dataMessage":{"message":"x"}}}"#);
        assert_eq!(normalize(&anonymous, ME).err(), Some(Skip::NoSender));
    }

    #[test]
    fn references_round_trip() {
        let id = message_id(ADA, 42);
        assert_eq!(
            Reference::parse(&id),
            Some(Reference {
                author: ADA.to_owned(),
                timestamp: 42
            })
        );
        assert_eq!(Reference::parse("nonsense"), None);
        assert_eq!(Reference::parse(":5"), None);
        assert!(is_number("+15550001111") && !is_number("15550001111"));
    }

    #[test]
    fn a_subscription_notification_is_unwrapped() {
        let d: ReceiveData = serde_json::from_str(&format!(
            r#"{{"subscription":0,"result":{{"envelope":{{"sourceUuid":"{ADA}","timestamp":9,"dataMessage":{{"message":"m"}}}}}}}}"#
        ))
        .expect("valid");
        assert_eq!(d.into_envelope().map(|e| e.timestamp), Some(9));
    }
}
