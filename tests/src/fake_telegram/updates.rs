//! Updates: the `make_update_*` builders, the `push_*` helpers that queue updates with increasing
//! update ids and per-chat message ids, acknowledgement by `offset`, and the long-polling
//! `getUpdates` (one poll at a time; a newer poll or a webhook ends it with `409 Conflict`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::json::{
    api_error, document_json, message_base, ok, photo_sizes, unix_now, user_json, without_reply,
};
use axum::response::Response;

use super::request::param_i64;
use super::{
    CONFLICT_OTHER_POLL, CONFLICT_SET_WEBHOOK, CONFLICT_WEBHOOK, ChatSpec, FakeTelegram,
    PollInterval, Shared,
};
use crate::support::{lock, wait_notified};

impl FakeTelegram {
    /// Builds a `message` update with `text` from user `from_user_id` in
    /// `chat`, allocating its `update_id` and the chat's next `message_id`
    /// and remembering the message (for replies), without queueing it.
    pub fn make_update_text(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        text: &str,
    ) -> Value {
        self.make_message_update(chat.into(), from_user_id, |m| {
            m.insert("text".into(), json!(text));
            let found = entities(text);
            if !found.is_empty() {
                m.insert("entities".into(), Value::Array(found));
            }
        })
    }

    /// Builds a photo `message` update with `caption`; the largest size has
    /// file id `file_id`, a 90×90 thumbnail `{file_id}_s` comes first.
    pub fn make_update_caption_photo(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: &str,
        file_id: &str,
    ) -> Value {
        self.make_message_update(chat.into(), from_user_id, |m| {
            m.insert("photo".into(), photo_sizes(file_id, 48_000));
            m.insert("caption".into(), json!(caption));
        })
    }

    /// Builds a document `message` update, with a caption if given.
    pub fn make_update_document(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: Option<&str>,
        file_id: &str,
        file_name: &str,
    ) -> Value {
        self.make_message_update(chat.into(), from_user_id, |m| {
            m.insert(
                "document".into(),
                document_json(file_id, Some(file_name), None, 1234),
            );
            if let Some(c) = caption {
                m.insert("caption".into(), json!(c));
            }
        })
    }

    /// Builds a text `message` update replying to message
    /// `reply_to_message_id` of the same chat (embedded as
    /// `reply_to_message`; a minimal stand-in if the fake never saw it).
    pub fn make_update_reply(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        text: &str,
        reply_to_message_id: i64,
    ) -> Value {
        let chat = chat.into();
        let original = {
            let mut st = lock(&self.shared.state);
            let state = st.chat(&chat);
            match state.messages.get(&reply_to_message_id) {
                Some(m) => without_reply(m),
                None => json!({
                    "message_id": reply_to_message_id,
                    "date": unix_now(),
                    "chat": state.chat.clone(),
                    "text": "",
                }),
            }
        };
        self.make_message_update(chat, from_user_id, |m| {
            m.insert("text".into(), json!(text));
            m.insert("reply_to_message".into(), original);
        })
    }

    /// Builds an `edited_message` update changing the text (or the caption,
    /// for a media message) of `message_id` to `new_text`.
    pub fn make_update_edit(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        message_id: i64,
        new_text: &str,
    ) -> Value {
        let chat = chat.into();
        let mut st = lock(&self.shared.state);
        let update_id = st.alloc_update_id();
        let state = st.chat(&chat);
        let mut msg = match state.messages.get(&message_id) {
            Some(Value::Object(m)) => m.clone(),
            _ => message_base(
                &state.chat,
                &user_json(from_user_id),
                message_id,
                unix_now(),
            ),
        };
        if msg.contains_key("caption") {
            msg.insert("caption".into(), json!(new_text));
        } else {
            msg.insert("text".into(), json!(new_text));
        }
        msg.insert("edit_date".into(), json!(unix_now()));
        let msg = Value::Object(msg);
        state.messages.insert(message_id, msg.clone());
        json!({"update_id": update_id, "edited_message": msg})
    }

    fn make_message_update(
        &self,
        chat: ChatSpec,
        from_user_id: i64,
        fill: impl FnOnce(&mut Map<String, Value>),
    ) -> Value {
        let mut st = lock(&self.shared.state);
        let update_id = st.alloc_update_id();
        let state = st.chat(&chat);
        let message_id = state.next_message_id;
        state.next_message_id += 1;
        let mut msg = message_base(
            &state.chat,
            &user_json(from_user_id),
            message_id,
            unix_now(),
        );
        fill(&mut msg);
        let msg = Value::Object(msg);
        state.messages.insert(message_id, msg.clone());
        json!({"update_id": update_id, "message": msg})
    }

    /// Queues a text message; returns its `message_id`.
    pub fn push_text(&self, chat: impl Into<ChatSpec>, from_user_id: i64, text: &str) -> i64 {
        let update = self.make_update_text(chat, from_user_id, text);
        self.push_message_update(update)
    }

    /// Queues a photo with a caption; returns its `message_id`.
    pub fn push_caption_photo(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: &str,
        file_id: &str,
    ) -> i64 {
        let update = self.make_update_caption_photo(chat, from_user_id, caption, file_id);
        self.push_message_update(update)
    }

    /// Queues a document; returns its `message_id`.
    pub fn push_document(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        caption: Option<&str>,
        file_id: &str,
        file_name: &str,
    ) -> i64 {
        let update = self.make_update_document(chat, from_user_id, caption, file_id, file_name);
        self.push_message_update(update)
    }

    /// Queues a reply to `reply_to_message_id`; returns its `message_id`.
    pub fn push_reply(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        text: &str,
        reply_to_message_id: i64,
    ) -> i64 {
        let update = self.make_update_reply(chat, from_user_id, text, reply_to_message_id);
        self.push_message_update(update)
    }

    /// Queues an `edited_message` update; returns its `update_id`.
    pub fn push_edit(
        &self,
        chat: impl Into<ChatSpec>,
        from_user_id: i64,
        message_id: i64,
        new_text: &str,
    ) -> i64 {
        let update = self.make_update_edit(chat, from_user_id, message_id, new_text);
        self.push_raw(update)
    }

    /// Queues any update JSON as is; an `update_id` is assigned if missing
    /// (later assigned ids continue above the highest seen). Returns the
    /// `update_id`.
    pub fn push_raw(&self, mut update: Value) -> i64 {
        let id = {
            let mut st = lock(&self.shared.state);
            let id = match update.get("update_id").and_then(Value::as_i64) {
                Some(id) => {
                    st.next_update_id = st.next_update_id.max(id.saturating_add(1));
                    id
                }
                None => {
                    let id = st.alloc_update_id();
                    if let Value::Object(m) = &mut update {
                        m.insert("update_id".into(), json!(id));
                    }
                    id
                }
            };
            st.queue.push_back(update);
            id
        };
        self.shared.changed.notify_waiters();
        id
    }

    fn push_message_update(&self, update: Value) -> i64 {
        let message_id = update
            .pointer("/message/message_id")
            .and_then(Value::as_i64)
            .unwrap_or_default();
        self.push_raw(update);
        message_id
    }

    /// Highest `offset` of a `getUpdates` call that was processed (not
    /// faulted); `0` if none. Every update below it is acknowledged.
    pub fn acked_offset(&self) -> i64 {
        lock(&self.shared.state).acked_offset
    }

    /// Every `offset` parameter seen by `getUpdates` (with a valid token),
    /// in arrival order, including calls answered with a fault.
    pub fn offsets_seen(&self) -> Vec<i64> {
        lock(&self.shared.state).offsets_seen.clone()
    }

    /// Updates queued and not yet acknowledged.
    pub fn pending_updates(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    /// Waits until no update is pending (all acknowledged by an `offset`).
    pub async fn wait_all_acked(&self, timeout: Duration) -> anyhow::Result<()> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            lock(&self.shared.state).queue.is_empty().then_some(())
        })
        .await;
        got.ok_or_else(|| {
            let st = lock(&self.shared.state);
            let ids: Vec<i64> = st.queue.iter().filter_map(update_id).collect();
            anyhow::anyhow!(
                "FakeTelegram: timed out after {timeout:?} waiting for all updates to be \
                 acknowledged; still pending: {ids:?}; offsets seen: {:?}",
                st.offsets_seen
            )
        })
    }

    /// Waits until a processed `getUpdates` carried an offset `>= offset`.
    pub async fn wait_acked_offset(&self, offset: i64, timeout: Duration) -> anyhow::Result<()> {
        let got = wait_notified(&self.shared.changed, timeout, || {
            (lock(&self.shared.state).acked_offset >= offset).then_some(())
        })
        .await;
        got.ok_or_else(|| {
            anyhow::anyhow!(
                "FakeTelegram: timed out after {timeout:?} waiting for offset >= {offset}; \
                 offsets seen: {:?}",
                self.offsets_seen()
            )
        })
    }
}

pub(super) fn update_id(update: &Value) -> Option<i64> {
    update.get("update_id").and_then(Value::as_i64)
}

/// The update's type: its first key other than `update_id`.
pub(super) fn update_kind(update: &Value) -> Option<&str> {
    update
        .as_object()?
        .keys()
        .find(|k| k.as_str() != "update_id")
        .map(String::as_str)
}

/// What a parked `getUpdates` ends with.
enum PollOutcome {
    Updates(Vec<Value>),
    Conflict(&'static str),
}

/// Long-polling `getUpdates`. `None` if the fake shut down meanwhile.
pub(super) async fn get_updates(
    shared: &Shared,
    p: &Map<String, Value>,
    peer: Option<std::net::SocketAddr>,
) -> Option<(u16, Response)> {
    let mut held = HeldPoll::open(shared, peer, p);
    let answer = get_updates_held(shared, p).await;
    held.status = answer.as_ref().map(|(status, _)| *status);
    answer
}

/// A poll's interval in the record, closed when the poll ends or is dropped (its connection
/// closed).
struct HeldPoll<'a> {
    shared: &'a Shared,
    index: usize,
    status: Option<u16>,
}

impl<'a> HeldPoll<'a> {
    fn open(
        shared: &'a Shared,
        peer: Option<std::net::SocketAddr>,
        p: &Map<String, Value>,
    ) -> HeldPoll<'a> {
        let mut st = lock(&shared.state);
        st.polls.push(PollInterval {
            peer,
            offset: param_i64(p, "offset"),
            timeout_s: param_i64(p, "timeout").unwrap_or(0),
            start: Instant::now(),
            end: None,
            status: None,
        });
        HeldPoll {
            shared,
            index: st.polls.len() - 1,
            status: None,
        }
    }
}

impl Drop for HeldPoll<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        if let Some(poll) = st.polls.get_mut(self.index) {
            poll.end = Some(Instant::now());
            poll.status = self.status;
        }
    }
}

async fn get_updates_held(shared: &Shared, p: &Map<String, Value>) -> Option<(u16, Response)> {
    let offset = param_i64(p, "offset");
    let limit = param_i64(p, "limit")
        .filter(|l| *l > 0)
        .map_or(100, |l| l.min(100));
    let limit = usize::try_from(limit).unwrap_or(100);
    let timeout = param_i64(p, "timeout").unwrap_or(0).max(0);
    let timeout = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
    let allowed: Option<Vec<String>> = p.get("allowed_updates").and_then(|v| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
    });

    let generation = {
        let mut st = lock(&shared.state);
        if st.webhook.is_some() {
            return Some(api_error(409, CONFLICT_WEBHOOK));
        }
        match offset {
            Some(o) if o > 0 => {
                st.queue.retain(|u| update_id(u).is_none_or(|id| id >= o));
                st.acked_offset = st.acked_offset.max(o);
            }
            Some(o) if o < 0 => {
                // The last -o updates are kept, all earlier ones forgotten.
                let keep = usize::try_from(o.unsigned_abs()).unwrap_or(usize::MAX);
                let drop_n = st.queue.len().saturating_sub(keep);
                st.queue.drain(..drop_n);
            }
            _ => {}
        }
        if let Some(list) = allowed {
            // Persistent, as in the real API; an empty list means the default.
            st.allowed_updates = (!list.is_empty()).then_some(list);
        }
        st.poll_generation += 1;
        st.poll_generation
    };
    // Wakes an older parked poll (superseded) and waiters on the ack.
    shared.changed.notify_waiters();

    let check = || {
        let mut st = lock(&shared.state);
        if st.poll_generation != generation {
            return Some(PollOutcome::Conflict(CONFLICT_OTHER_POLL));
        }
        if st.webhook.is_some() {
            return Some(PollOutcome::Conflict(CONFLICT_SET_WEBHOOK));
        }
        // Updates of types not allowed are never delivered: forget them.
        let queue = std::mem::take(&mut st.queue);
        let kept: VecDeque<Value> = queue.into_iter().filter(|u| st.is_allowed(u)).collect();
        st.queue = kept;
        let batch: Vec<Value> = st.queue.iter().take(limit).cloned().collect();
        (!batch.is_empty()).then_some(PollOutcome::Updates(batch))
    };
    let outcome = tokio::select! {
        o = wait_notified(&shared.changed, timeout, check) => o,
        () = shared.shutdown.wait() => return None,
    };
    Some(match outcome {
        Some(PollOutcome::Conflict(description)) => api_error(409, description),
        Some(PollOutcome::Updates(batch)) => ok(Value::Array(batch)),
        None => ok(json!([])),
    })
}

/// The entities Telegram's servers mark in a message's `text`: `@username` mentions and
/// `/command` (or `/command@bot`) bot commands, each at the start of a word, with offsets and
/// lengths in UTF-16 code units as the Bot API gives them.
pub fn entities(text: &str) -> Vec<Value> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut offset = 0usize;
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let at_word_start = prev.is_none_or(char::is_whitespace);
        if at_word_start && (c == '@' || c == '/') {
            let rest = &text[i + 1..];
            let name_len = rest.find(|c: char| !name_char(c)).unwrap_or(rest.len());
            let mut len = name_len;
            if c == '/' && rest[name_len..].starts_with('@') {
                let to = &rest[name_len + 1..];
                let to_len = to.find(|c: char| !name_char(c)).unwrap_or(to.len());
                if to_len > 0 {
                    len = name_len + 1 + to_len;
                }
            }
            if name_len > 0 {
                let kind = if c == '@' { "mention" } else { "bot_command" };
                // Every character of an entity is ASCII: one UTF-16 unit each.
                out.push(json!({"type": kind, "offset": offset, "length": len + 1}));
                for _ in 0..len {
                    chars.next();
                }
                offset += len + 1;
                prev = text[i..i + len + 1].chars().last();
                continue;
            }
        }
        offset += c.len_utf16();
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_and_commands_are_marked_in_utf16_units() {
        assert_eq!(
            entities("/help@gateway_bot now"),
            vec![json!({"type": "bot_command", "offset": 0, "length": 17})]
        );
        assert_eq!(
            entities("👋 hi @gateway_bot, and a@b is no mention"),
            vec![json!({"type": "mention", "offset": 6, "length": 12})]
        );
        assert_eq!(
            entities("/start"),
            vec![json!({"type": "bot_command", "offset": 0, "length": 6})]
        );
        assert!(entities("just talking / @ ").is_empty());
    }
}
