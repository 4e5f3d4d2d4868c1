//! What the WhatsApp Cloud API POSTs to the webhook, and how it becomes inbox messages and
//! delivery receipts: the envelope (`object`, `entry[].changes[].value`), the signature check
//! over the raw body ([`verify_signature`]), the GET handshake ([`verify_challenge`]), message
//! normalization ([`normalize`]) and status events ([`receipt`]).
//!
//! Invariants: the signature is checked in constant time over the bytes exactly as received,
//! before anything is parsed; parsing is lenient about what it does not read (unknown fields and
//! types are ignored, never an error), so a payload of a newer API version is still answered;
//! nothing here panics on any input.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::KIND;
use crate::message::{Attachment, ChatType, InboundMessage, now_ms};

/// The header Meta signs each webhook POST with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Why a webhook POST's signature was refused (the 401's text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    /// The header is not `sha256=<64 hex digits>`.
    #[error("X-Hub-Signature-256 is not `sha256=<hex HMAC-SHA256>`")]
    Malformed,
    /// The HMAC does not match the body under the app secret.
    #[error("X-Hub-Signature-256 does not match the body (check channels.whatsapp.app_secret_env)")]
    Mismatch,
}

/// Checks `header` (the `X-Hub-Signature-256` value) against the HMAC-SHA256 of `body` under
/// `app_secret`, in constant time.
pub fn verify_signature(
    app_secret: &[u8],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_part = header
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    let given = hex::decode(hex_part).map_err(|_| SignatureError::Malformed)?;
    if given.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// The GET verification handshake: the challenge to answer when `mode` is `subscribe` and
/// `token` equals `verify_token` (compared in constant time), else `None` (a 403).
pub fn verify_challenge<'a>(
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&'a str>,
    verify_token: &str,
) -> Option<&'a str> {
    use subtle::ConstantTimeEq;
    if mode != Some("subscribe") {
        return None;
    }
    let token = token?;
    if !bool::from(token.as_bytes().ct_eq(verify_token.as_bytes())) {
        return None;
    }
    challenge
}

/// The webhook envelope.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Envelope {
    /// `whatsapp_business_account`.
    pub object: String,
    /// One entry per business account.
    pub entry: Vec<Entry>,
}

/// One business account's part of a POST.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Entry {
    /// The business account id.
    pub id: String,
    /// What changed.
    pub changes: Vec<Change>,
}

/// One change: `field` is `messages` for messages and statuses.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Change {
    /// `messages` (the only field the gateway reads).
    pub field: String,
    /// The messages, statuses or errors.
    pub value: Value,
}

/// The value of a `messages` change.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Value {
    /// `whatsapp`.
    pub messaging_product: String,
    /// Which business number this is for.
    pub metadata: Metadata,
    /// The senders' profiles.
    pub contacts: Vec<Contact>,
    /// Messages from users.
    pub messages: Vec<Message>,
    /// What happened to messages the business sent.
    pub statuses: Vec<Status>,
    /// Errors reported asynchronously.
    pub errors: Vec<ApiError>,
}

/// `metadata` of a change.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// The number as displayed.
    pub display_phone_number: String,
    /// The phone number id the change is for.
    pub phone_number_id: String,
}

/// A sender's contact card.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Contact {
    /// The profile.
    pub profile: Profile,
    /// The sender's WhatsApp id.
    pub wa_id: String,
}

/// A sender's profile.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// The display name the user chose.
    pub name: String,
}

/// One inbound message.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Message {
    /// The sender's WhatsApp id (digits, no `+`).
    pub from: String,
    /// The message id (`wamid.…`), unique.
    pub id: String,
    /// Unix seconds, as a string.
    pub timestamp: String,
    /// `text`, `image`, `audio`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `context` of a reply.
    pub context: Option<Context>,
    /// `text` messages.
    pub text: Option<Text>,
    /// `image` messages.
    pub image: Option<Media>,
    /// `audio` messages (voice notes too).
    pub audio: Option<Media>,
    /// `video` messages.
    pub video: Option<Media>,
    /// `document` messages.
    pub document: Option<Media>,
    /// `sticker` messages.
    pub sticker: Option<Media>,
    /// `location` messages.
    pub location: Option<Location>,
    /// `contacts` messages (shared contact cards), read loosely.
    pub contacts: Option<Vec<serde_json::Value>>,
    /// `interactive` replies (buttons, lists).
    pub interactive: Option<Interactive>,
    /// `button` replies (template quick replies).
    pub button: Option<Button>,
    /// `reaction` messages.
    pub reaction: Option<Reaction>,
}

/// What a reply answers.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Context {
    /// Who sent the message answered.
    pub from: String,
    /// The id of the message answered.
    pub id: String,
}

/// A text body.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Text {
    /// The text.
    pub body: String,
}

/// A media object, by id.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Media {
    /// The media id (downloaded through the Graph API, never by the gateway).
    pub id: String,
    /// The caption, if any.
    pub caption: Option<String>,
    /// The file name (documents).
    pub filename: Option<String>,
    /// The MIME type.
    pub mime_type: Option<String>,
}

/// A shared location.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Location {
    /// Latitude.
    pub latitude: f64,
    /// Longitude.
    pub longitude: f64,
    /// The place's name.
    pub name: Option<String>,
    /// The place's address.
    pub address: Option<String>,
}

/// An interactive reply.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Interactive {
    /// `button_reply` or `list_reply`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The button chosen.
    pub button_reply: Option<Choice>,
    /// The list row chosen.
    pub list_reply: Option<Choice>,
}

/// A chosen button or list row.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Choice {
    /// The id the business gave it.
    pub id: String,
    /// Its title, as the user saw it.
    pub title: String,
}

/// A template quick-reply button press.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Button {
    /// The button's text.
    pub text: String,
    /// The payload the business gave it.
    pub payload: String,
}

/// A reaction to a message.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reaction {
    /// The message reacted to.
    pub message_id: String,
    /// The emoji (empty when removed).
    pub emoji: String,
}

/// A status of a message the business sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The sent message's id (`wamid.…`).
    pub id: String,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    /// Unix seconds, as a string.
    pub timestamp: String,
    /// Who it was sent to.
    pub recipient_id: String,
    /// Why it failed.
    pub errors: Vec<ApiError>,
}

/// An error as the Cloud API reports it (in a status, a value, or a send's answer).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ApiError {
    /// The error code (branch on this).
    pub code: i64,
    /// A short title.
    pub title: String,
    /// The message.
    pub message: String,
    /// Details.
    pub error_data: Option<ErrorData>,
}

/// `error_data` of an error.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ErrorData {
    /// A longer explanation.
    pub details: String,
}

impl ApiError {
    /// `"{code} {title}: {message} ({details})"`, the parts that are there.
    pub fn describe(&self) -> String {
        let mut out = self.code.to_string();
        if !self.title.is_empty() {
            out.push(' ');
            out.push_str(&self.title);
        }
        if !self.message.is_empty() && self.message != self.title {
            out.push_str(": ");
            out.push_str(&self.message);
        }
        if let Some(d) = self.error_data.as_ref().filter(|d| !d.details.is_empty()) {
            out.push_str(" (");
            out.push_str(&d.details);
            out.push(')');
        }
        out
    }
}

/// What a status event reports about one sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The sent message's id.
    pub platform_id: String,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: String,
    /// Why it failed (`failed` only).
    pub error: Option<String>,
}

/// The receipt of a status event; `None` for a status without an id or of an unknown kind.
pub fn receipt(status: &Status) -> Option<Receipt> {
    if status.id.is_empty()
        || !matches!(
            status.status.as_str(),
            "sent" | "delivered" | "read" | "failed"
        )
    {
        return None;
    }
    let error = (status.status == "failed").then(|| {
        if status.errors.is_empty() {
            "failed (no reason given)".to_owned()
        } else {
            status
                .errors
                .iter()
                .map(ApiError::describe)
                .collect::<Vec<_>>()
                .join("; ")
        }
    });
    Some(Receipt {
        platform_id: status.id.clone(),
        status: status.status.clone(),
        error,
    })
}

/// The display name of `wa_id` among a change's contacts.
pub fn display_name<'a>(value: &'a Value, wa_id: &str) -> Option<&'a str> {
    value
        .contacts
        .iter()
        .find(|c| c.wa_id == wa_id)
        .or_else(|| value.contacts.first().filter(|_| value.contacts.len() == 1))
        .map(|c| c.profile.name.as_str())
        .filter(|n| !n.is_empty())
}

/// Turns one inbound message into an inbox message; `None` for what the gateway does not
/// answer (reactions, `unsupported`, `system`, `order`, unknown types, empty messages).
pub fn normalize(m: &Message) -> Option<InboundMessage> {
    if m.from.is_empty() || m.id.is_empty() {
        return None;
    }
    let mut attachments = Vec::new();
    let text = match m.kind.as_str() {
        "text" => m.text.as_ref().map(|t| t.body.clone()).unwrap_or_default(),
        "image" | "audio" | "video" | "document" | "sticker" => {
            let media = match m.kind.as_str() {
                "image" => m.image.as_ref(),
                "audio" => m.audio.as_ref(),
                "video" => m.video.as_ref(),
                "document" => m.document.as_ref(),
                _ => m.sticker.as_ref(),
            }?;
            if media.id.is_empty() {
                return None;
            }
            attachments.push(Attachment {
                kind: m.kind.clone(),
                file_id: media.id.clone(),
                name: media.filename.clone().filter(|n| !n.is_empty()),
            });
            media.caption.clone().unwrap_or_default()
        }
        "location" => {
            let l = m.location.as_ref()?;
            let mut text = format!("[location: {}, {}", l.latitude, l.longitude);
            let place: Vec<&str> = [l.name.as_deref(), l.address.as_deref()]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect();
            if !place.is_empty() {
                text.push_str(" (");
                text.push_str(&place.join(", "));
                text.push(')');
            }
            text.push(']');
            text
        }
        "contacts" => {
            let cards: Vec<String> = m
                .contacts
                .iter()
                .flatten()
                .map(contact_card)
                .filter(|c| !c.is_empty())
                .collect();
            if cards.is_empty() {
                return None;
            }
            cards
                .iter()
                .map(|c| format!("[contact: {c}]"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        "interactive" => {
            let i = m.interactive.as_ref()?;
            i.button_reply
                .as_ref()
                .or(i.list_reply.as_ref())
                .map(|c| c.title.clone())
                .unwrap_or_default()
        }
        "button" => m
            .button
            .as_ref()
            .map(|b| b.text.clone())
            .unwrap_or_default(),
        "reaction" => {
            tracing::debug!(
                message = "WhatsApp reaction acknowledged, not answered.",
                message_id = %m.id
            );
            return None;
        }
        other => {
            tracing::debug!(
                message = "WhatsApp message type acknowledged, not answered.",
                kind = %other,
                message_id = %m.id
            );
            return None;
        }
    };
    if text.trim().is_empty() && attachments.is_empty() {
        return None;
    }
    Some(InboundMessage {
        channel: KIND,
        channel_message_id: m.id.clone(),
        chat_id: m.from.clone(),
        chat_type: ChatType::Direct,
        sender_id: m.from.clone(),
        text,
        reply_to: m
            .context
            .as_ref()
            .map(|c| c.id.clone())
            .filter(|id| !id.is_empty()),
        attachments,
        sender_name: None,
        received_at_ms: now_ms(),
        mentioned: false,
    })
}

/// `Name +phone, +phone` of a shared contact card.
fn contact_card(card: &serde_json::Value) -> String {
    let name = card["name"]["formatted_name"].as_str().unwrap_or_default();
    let phones: Vec<&str> = card["phones"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["phone"].as_str())
        .collect();
    [name.to_owned(), phones.join(", ")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
