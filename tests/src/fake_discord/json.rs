//! The JSON shapes of the fake: users, members, attachments and messages as REST and the gateway
//! carry them, READY, gateway frames, and Discord's timestamp format.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{
    APPLICATION_FLAGS, BOT_DISCRIMINATOR, BOT_USER_ID, BOT_USERNAME, IncomingAttachment, TRACE,
};

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, the format of Discord timestamps
/// (RFC 3339, which serenity's `Timestamp` parses).
pub(super) fn iso8601(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
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
/// The bot user as `GET /users/@me` and READY's `user` carry it.
pub(super) fn bot_user_json() -> Value {
    json!({
        "id": BOT_USER_ID.to_string(),
        "username": BOT_USERNAME,
        "global_name": null,
        "discriminator": BOT_DISCRIMINATOR,
        "avatar": null,
        "bot": true,
        "verified": true,
        "mfa_enabled": false,
        "email": null,
        "flags": 0,
        "public_flags": 0,
        "premium_type": 0,
        "locale": "en-US",
        "banner": null,
        "accent_color": null,
        "avatar_decoration_data": null,
        "bio": "",
    })
}

/// The bot user as a message author or mention.
pub(super) fn bot_author_json() -> Value {
    let mut u = user_json(BOT_USER_ID, BOT_USERNAME, true);
    if let Some(obj) = u.as_object_mut() {
        obj.insert("discriminator".into(), json!(BOT_DISCRIMINATOR));
        obj.insert("global_name".into(), Value::Null);
    }
    u
}

/// A user as a message author or mention (new-style username: discriminator
/// `"0"`).
pub(super) fn user_json(id: u64, name: &str, bot: bool) -> Value {
    json!({
        "id": id.to_string(),
        "username": name,
        "discriminator": "0",
        "global_name": if bot { Value::Null } else { json!(name) },
        "avatar": null,
        "public_flags": 0,
        "flags": 0,
        "bot": bot,
        "banner": null,
        "accent_color": null,
        "avatar_decoration_data": null,
        "primary_guild": null,
    })
}

/// A partial guild member (as in MESSAGE_CREATE `member` and `mentions[].member`).
fn member_json(joined_at: &str) -> Value {
    json!({
        "roles": [],
        "joined_at": joined_at,
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "nick": null,
        "avatar": null,
        "banner": null,
        "communication_disabled_until": null,
    })
}

pub(super) fn attachment_json(channel_id: u64, id: u64, a: &IncomingAttachment) -> Value {
    let url = format!(
        "https://cdn.discordapp.com/attachments/{channel_id}/{id}/{}",
        a.filename
    );
    let proxy = format!(
        "https://media.discordapp.net/attachments/{channel_id}/{id}/{}",
        a.filename
    );
    let mut v = json!({
        "id": id.to_string(),
        "filename": a.filename,
        "size": a.size,
        "url": url,
        "proxy_url": proxy,
    });
    if let (Some(ct), Some(obj)) = (&a.content_type, v.as_object_mut()) {
        obj.insert("content_type".into(), json!(ct));
    }
    v
}

pub(super) struct MessageParts<'a> {
    pub(super) id: u64,
    pub(super) channel_id: u64,
    pub(super) guild_id: Option<u64>,
    pub(super) author: Value,
    pub(super) content: String,
    pub(super) timestamp: String,
    pub(super) mentions: &'a [Value],
    pub(super) attachments: Vec<Value>,
    pub(super) reply_to: Option<u64>,
}

/// The message object shared by REST and the gateway: every field
/// serenity's `Message` requires, without `guild_id`, `member` and
/// `referenced_message` (see [`gateway_message`]).
pub(super) fn message_core(p: &MessageParts<'_>) -> Value {
    let mut v = json!({
        "id": p.id.to_string(),
        "channel_id": p.channel_id.to_string(),
        "author": p.author,
        "content": p.content,
        "timestamp": p.timestamp,
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": p.mentions,
        "mention_roles": [],
        "attachments": p.attachments,
        "embeds": [],
        "pinned": false,
        "type": if p.reply_to.is_some() { 19 } else { 0 },
        "flags": 0,
        "components": [],
    });
    if let (Some(reply_to), Some(obj)) = (p.reply_to, v.as_object_mut()) {
        let mut reference = json!({
            "type": 0,
            "message_id": reply_to.to_string(),
            "channel_id": p.channel_id.to_string(),
        });
        if let (Some(g), Some(r)) = (p.guild_id, reference.as_object_mut()) {
            r.insert("guild_id".into(), json!(g.to_string()));
        }
        obj.insert("message_reference".into(), reference);
    }
    v
}

/// `MESSAGE_CREATE`'s `d`: the core plus `guild_id` and `member` (and
/// `mentions[].member`) for guild messages, and `referenced_message` for
/// replies (`Some(None)`: a reply to an unknown message, sent as `null`).
pub(super) fn gateway_message(
    core: &Value,
    guild_id: Option<u64>,
    mentions: &[Value],
    timestamp: &str,
    referenced: Option<Option<Value>>,
) -> Value {
    let mut d = core.clone();
    let Some(obj) = d.as_object_mut() else {
        return d;
    };
    if let Some(g) = guild_id {
        obj.insert("guild_id".into(), json!(g.to_string()));
        obj.insert("member".into(), member_json(timestamp));
        let with_members: Vec<Value> = mentions
            .iter()
            .map(|u| {
                let mut u = u.clone();
                if let Some(o) = u.as_object_mut() {
                    o.insert("member".into(), member_json(timestamp));
                }
                u
            })
            .collect();
        obj.insert("mentions".into(), Value::Array(with_members));
    }
    if let Some(referenced) = referenced {
        obj.insert(
            "referenced_message".into(),
            referenced.unwrap_or(Value::Null),
        );
    }
    d
}

pub(super) fn ready_payload(session_id: &str, ws_url: &str, shard: Option<(u64, u64)>) -> Value {
    let mut d = json!({
        "v": 10,
        "user": bot_user_json(),
        "user_settings": {},
        "guilds": [],
        "guild_join_requests": [],
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": ws_url,
        "application": {"id": BOT_USER_ID.to_string(), "flags": APPLICATION_FLAGS},
        "geo_ordered_rtc_regions": ["fake"],
        "auth": {},
        "_trace": [TRACE],
    });
    if let (Some((id, total)), Some(obj)) = (shard, d.as_object_mut()) {
        obj.insert("shard".into(), json!([id, total]));
    }
    d
}

pub(super) fn dispatch_frame(t: &str, seq: u64, d: &Value) -> String {
    json!({"t": t, "s": seq, "op": 0, "d": d}).to_string()
}

pub(super) fn op_frame(op: u64, d: Value) -> String {
    json!({"t": null, "s": null, "op": op, "d": d}).to_string()
}
