//! What a BlueBubbles server sends and answers, and how its messages become inbox messages: the
//! response envelope ([`Envelope`]: `status`, `message`, `data`, `metadata`, `error`), the
//! webhook event (`{"type", "data"}`), and the normalization of one message ([`normalize`]),
//! shared by the webhook and the catch-up through `message/query` (both carry the same
//! message shape).
//!
//! Invariants: a message is read field by field from a JSON value, so a field of an unexpected
//! type or a missing one is a skip with a reason ([`Skip`]), never a parse error or a panic; the
//! gateway's own messages (`isFromMe`) are never normalized into inbox messages.

use serde::Deserialize;
use serde_json::Value;

use super::KIND;
use crate::message::{Attachment, ChatType, InboundMessage, now_ms};

/// The marker of a group chat's guid (`iMessage;+;chat123…`); a direct chat has `;-;`.
pub const GROUP_MARKER: &str = ";+;";

/// The character iMessage puts in a message's text where an attachment sits.
const OBJECT_REPLACEMENT: char = '\u{fffc}';

/// Every BlueBubbles answer: `{"status", "message", "data", "metadata", "error"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Envelope {
    /// The HTTP status, repeated.
    pub status: u16,
    /// What happened, e.g. `Message sent!`.
    pub message: String,
    /// The answer's data (a message, a list of messages, `"pong"`).
    pub data: Value,
    /// Paging of a list: `total`, `offset`, `limit`.
    pub metadata: Option<Metadata>,
    /// Why a request was refused.
    pub error: Option<ApiError>,
}

/// `metadata` of a list answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// How many messages match in all.
    pub total: Option<u64>,
    /// The offset of this page.
    pub offset: Option<u64>,
    /// The page size asked for.
    pub limit: Option<u64>,
}

/// `error` of a refused request.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ApiError {
    /// `Validation Error`, `iMessage Error`, `Authentication Error`, `Server Error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong.
    pub message: String,
}

impl Envelope {
    /// `"{error.type}: {error.message}"`, or the envelope's `message`, whichever is there.
    pub fn describe(&self) -> String {
        let parts: Vec<&str> = match &self.error {
            Some(e) => [e.kind.as_str(), e.message.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
            None => Vec::new(),
        };
        match (parts.as_slice(), self.message.is_empty()) {
            ([], true) => "no error given".to_owned(),
            ([], false) => self.message.clone(),
            (parts, true) => parts.join(": "),
            (parts, false) => format!("{} ({})", parts.join(": "), self.message),
        }
    }
}

/// Why a message is not an inbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The gateway's own message (`isFromMe`), also the echo of its replies.
    FromMe,
    /// No `guid`: it cannot be deduplicated.
    NoGuid,
    /// No `chats[0].guid`: nowhere to answer.
    NoChat,
    /// No `handle.address`: nobody to answer.
    NoHandle,
    /// A tapback (reaction) to another message.
    Reaction,
    /// Neither text nor attachments (a group event, a renamed chat).
    Empty,
}

impl Skip {
    /// Whether the operator should hear of it: a message from someone that cannot be answered.
    pub fn is_warning(self) -> bool {
        matches!(self, Skip::NoGuid | Skip::NoChat | Skip::NoHandle)
    }

    /// The reason, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::FromMe => "sent from this Mac (isFromMe)",
            Skip::NoGuid => "the message has no guid",
            Skip::NoChat => "the message has no chats[0].guid",
            Skip::NoHandle => "the message has no handle.address",
            Skip::Reaction => "a tapback",
            Skip::Empty => "no text and no attachments",
        }
    }
}

/// A non-empty string at `v`.
fn text_at(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.trim().is_empty())
}

/// Milliseconds since the epoch at `v` (an integer, or a float some versions send).
pub fn millis_at(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 9.0e15)
            .map(|f| f as i64)
    })
}

/// `dateCreated` of a message, in ms.
pub fn date_created(m: &Value) -> Option<i64> {
    millis_at(&m["dateCreated"])
}

/// Whether the message is the gateway's (the Mac's) own.
pub fn is_from_me(m: &Value) -> bool {
    m["isFromMe"].as_bool().unwrap_or(false)
}

/// The kind of an attachment, from its MIME type and name.
fn attachment_kind(mime: &str, name: &str) -> &'static str {
    let mime = mime.to_ascii_lowercase();
    if mime.starts_with("image/") {
        "photo"
    } else if mime.starts_with("video/") {
        "video"
    } else if mime.starts_with("audio/") {
        // A voice note is `Audio Message.caf`.
        if name.ends_with(".caf") {
            "voice"
        } else {
            "audio"
        }
    } else if mime.is_empty() {
        "file"
    } else {
        "document"
    }
}

/// Turns one message (a `new-message` event's `data`, or one of `message/query`'s) into an
/// inbox message, or says why not.
pub fn normalize(m: &Value) -> Result<InboundMessage, Skip> {
    if is_from_me(m) {
        return Err(Skip::FromMe);
    }
    let guid = text_at(&m["guid"]).ok_or(Skip::NoGuid)?;
    if text_at(&m["associatedMessageGuid"]).is_some()
        && (m["associatedMessageType"].is_string() || m["associatedMessageType"].is_number())
    {
        return Err(Skip::Reaction);
    }
    let chat = m["chats"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(|c| text_at(&c["guid"]))
        .ok_or(Skip::NoChat)?;
    let handle = &m["handle"];
    let sender = text_at(&handle["address"]).ok_or(Skip::NoHandle)?;
    let text: String = m["text"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| *c != OBJECT_REPLACEMENT)
        .collect();
    let attachments: Vec<Attachment> = m["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let id = text_at(&a["guid"])?;
            let name = text_at(&a["transferName"]);
            let mime = a["mimeType"].as_str().unwrap_or_default();
            Some(Attachment {
                kind: attachment_kind(mime, name.unwrap_or_default()).to_owned(),
                file_id: id.to_owned(),
                name: name.map(str::to_owned),
            })
        })
        .collect();
    if text.trim().is_empty() && attachments.is_empty() {
        return Err(Skip::Empty);
    }
    Ok(InboundMessage {
        channel: KIND,
        channel_message_id: guid.to_owned(),
        chat_id: chat.to_owned(),
        chat_type: if chat.contains(GROUP_MARKER) {
            ChatType::Group
        } else {
            ChatType::Direct
        },
        sender_id: sender.to_owned(),
        sender_name: text_at(&handle["displayName"]).map(str::to_owned),
        text: text.trim().to_owned(),
        reply_to: text_at(&m["threadOriginatorGuid"]).map(str::to_owned),
        attachments,
        received_at_ms: date_created(m).unwrap_or_else(now_ms),
        mentioned: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> Value {
        json!({
            "originalROWID": 41, "guid": "p:0/5C0B7A1E-1F0A-4C0E-9C7B-3A1B2C3D4E5F",
            "text": "hello there", "attributedBody": null,
            "handle": {"originalROWID": 3, "address": "+15551234567", "service": "iMessage",
                       "country": "us", "uncanonicalizedId": null},
            "handleId": 3, "otherHandle": 0, "attachments": [], "subject": null, "error": 0,
            "dateCreated": 1_733_212_800_123_i64, "dateRead": null, "dateDelivered": null,
            "isDelivered": true, "isFromMe": false, "hasDdResults": false, "isArchived": false,
            "itemType": 0, "groupTitle": null, "groupActionType": 0, "balloonBundleId": null,
            "associatedMessageGuid": null, "associatedMessageType": null,
            "expressiveSendStyleId": null, "threadOriginatorGuid": null, "hasPayloadData": false,
            "chats": [{"originalROWID": 7, "guid": "iMessage;-;+15551234567", "style": 45,
                       "chatIdentifier": "+15551234567", "isArchived": false, "displayName": ""}],
        })
    }

    #[test]
    fn a_direct_message_is_normalized() {
        let m = normalize(&message()).expect("a message");
        assert_eq!(m.channel, KIND);
        assert_eq!(
            m.channel_message_id,
            "p:0/5C0B7A1E-1F0A-4C0E-9C7B-3A1B2C3D4E5F"
        );
        assert_eq!(m.chat_id, "iMessage;-;+15551234567");
        assert_eq!(m.chat_type, ChatType::Direct);
        assert_eq!(m.sender_id, "+15551234567");
        assert_eq!(m.sender_name, None);
        assert_eq!(m.text, "hello there");
        assert_eq!(m.reply_to, None);
        assert!(m.attachments.is_empty());
        assert_eq!(m.received_at_ms, 1_733_212_800_123);
    }

    #[test]
    fn a_group_reply_with_attachments_keeps_its_thread_and_files() {
        let mut v = message();
        v["chats"][0]["guid"] = json!("iMessage;+;chat493787366418410785");
        v["text"] = json!("\u{fffc}look");
        v["threadOriginatorGuid"] = json!("p:0/ORIGINAL");
        v["attachments"] = json!([
            {"guid": "att-1", "transferName": "IMG_0001.HEIC", "mimeType": "image/heic"},
            {"guid": "att-2", "transferName": "Audio Message.caf", "mimeType": "audio/x-caf"},
            {"guid": "att-3", "transferName": "notes.pdf", "mimeType": "application/pdf"},
            {"guid": "att-4", "transferName": null, "mimeType": null},
            {"transferName": "no guid"},
        ]);
        let m = normalize(&v).expect("a message");
        assert_eq!(m.chat_type, ChatType::Group);
        assert_eq!(m.chat_id, "iMessage;+;chat493787366418410785");
        assert_eq!(m.text, "look", "the attachment marker is dropped");
        assert_eq!(m.reply_to.as_deref(), Some("p:0/ORIGINAL"));
        let kinds: Vec<(&str, &str, Option<&str>)> = m
            .attachments
            .iter()
            .map(|a| (a.kind.as_str(), a.file_id.as_str(), a.name.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("photo", "att-1", Some("IMG_0001.HEIC")),
                ("voice", "att-2", Some("Audio Message.caf")),
                ("document", "att-3", Some("notes.pdf")),
                ("file", "att-4", None),
            ]
        );
    }

    #[test]
    fn null_text_with_an_attachment_is_an_empty_text() {
        let mut v = message();
        v["text"] = Value::Null;
        v["attachments"] =
            json!([{"guid": "att-9", "transferName": "a.mov", "mimeType": "video/quicktime"}]);
        let m = normalize(&v).expect("a message");
        assert_eq!(m.text, "");
        assert_eq!(m.attachments[0].kind, "video");
    }

    #[test]
    fn what_cannot_be_answered_is_skipped_with_its_reason() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = message();
            f(&mut v);
            normalize(&v).err()
        };
        assert_eq!(with(&|v| v["isFromMe"] = json!(true)), Some(Skip::FromMe));
        assert_eq!(with(&|v| v["guid"] = Value::Null), Some(Skip::NoGuid));
        assert_eq!(with(&|v| v["chats"] = json!([])), Some(Skip::NoChat));
        assert_eq!(
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("chats"));
            }),
            Some(Skip::NoChat)
        );
        assert_eq!(with(&|v| v["handle"] = Value::Null), Some(Skip::NoHandle));
        assert_eq!(
            with(&|v| v["handle"] = json!({"address": 5})),
            Some(Skip::NoHandle)
        );
        assert_eq!(with(&|v| v["text"] = json!("  ")), Some(Skip::Empty));
        assert_eq!(
            with(&|v| {
                v["associatedMessageGuid"] = json!("p:0/OTHER");
                v["associatedMessageType"] = json!("love");
                v["text"] = json!("Loved “hello”");
            }),
            Some(Skip::Reaction)
        );
        assert!(Skip::NoChat.is_warning() && !Skip::FromMe.is_warning());
    }

    #[test]
    fn any_json_value_is_read_without_a_panic() {
        for v in [
            Value::Null,
            json!([]),
            json!("text"),
            json!(42),
            json!({"guid": 1, "chats": "x", "handle": [], "text": {}, "dateCreated": "soon"}),
            json!({"guid": "g", "chats": [{"guid": "iMessage;-;a"}], "handle": {"address": "a"},
                   "text": "t", "dateCreated": -1.5e300, "attachments": {"guid": "x"}}),
        ] {
            let _ = normalize(&v);
        }
        let mut v = message();
        v["dateCreated"] = json!(1_733_212_800_123.0);
        assert_eq!(
            normalize(&v).expect("a message").received_at_ms,
            1_733_212_800_123
        );
    }

    #[test]
    fn envelopes_describe_their_error() {
        let e: Envelope = serde_json::from_value(json!({
            "status": 500, "message": "Message Send Error",
            "error": {"type": "iMessage Error", "message": "Failed to send message!"},
        }))
        .expect("an envelope");
        assert_eq!(
            e.describe(),
            "iMessage Error: Failed to send message! (Message Send Error)"
        );
        let e: Envelope = serde_json::from_value(
            json!({"status": 400, "message": "Message is already queued to be sent!"}),
        )
        .expect("an envelope");
        assert_eq!(e.describe(), "Message is already queued to be sent!");
        let e: Envelope = serde_json::from_value(json!({
            "status": 200, "message": "Success", "data": [], "metadata": {"total": 3, "offset": 0, "limit": 100}
        }))
        .expect("an envelope");
        assert_eq!(e.metadata.and_then(|m| m.total), Some(3));
    }
}
