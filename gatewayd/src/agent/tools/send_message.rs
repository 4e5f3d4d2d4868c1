//! `send_message`: sends a message to a user or a chat, only through the outbox (via an
//! [`OutboxSink`]).

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Tool, ToolCallContext, ToolError, ToolSpec};
use crate::message::{ChannelKind, UserId};

/// Where `send_message` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageTarget {
    /// A user, on a channel linked to them.
    User(UserId),
    /// A chat on one channel.
    Chat {
        /// The channel.
        channel: ChannelKind,
        /// The platform's chat id.
        chat_id: String,
    },
}

/// Where `send_message` puts messages: the outbox. An implementation commits the row before it
/// hands it to delivery, as every other reply.
#[async_trait]
pub trait OutboxSink: Send + Sync {
    /// Commits `text` for `target` to the outbox, hands it to delivery, and returns the outbox id.
    async fn send(&self, target: MessageTarget, text: String) -> Result<i64, String>;
}

/// `send_message`: sends a message to a user or a chat, through the outbox.
pub struct SendMessage {
    spec: ToolSpec,
    sink: Arc<dyn OutboxSink>,
}

/// Longest `send_message` text, in characters; delivery splits it for each channel.
const SEND_MAX_CHARS: u64 = 8000;

impl SendMessage {
    /// The tool, sending through `sink` to one of `channels` (the gateway's channel names).
    pub fn new(sink: Arc<dyn OutboxSink>, channels: Vec<&'static str>) -> Self {
        Self {
            spec: ToolSpec {
                name: "send_message".to_owned(),
                description: "Sends a message to a user (by `user_id`) or to a chat (by `channel` \
                              and `chat_id`). Give either `user_id`, or `channel` and `chat_id`."
                    .to_owned(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "text": {"type": "string", "description": "The message.", "minLength": 1, "maxLength": SEND_MAX_CHARS},
                        "user_id": {"type": "integer", "description": "The gateway user to message.", "minimum": 1},
                        "channel": {"type": "string", "description": "The channel of the chat.", "enum": channels},
                        "chat_id": {"type": "string", "description": "The chat on that channel.", "minLength": 1}
                    },
                    "required": ["text"],
                    "additionalProperties": false
                }),
            },
            sink,
        }
    }
}

/// The target named by `send_message` arguments.
fn message_target(args: &Value) -> Result<MessageTarget, ToolError> {
    let user = args.get("user_id").and_then(Value::as_i64);
    let channel = args.get("channel").and_then(Value::as_str);
    let chat = args.get("chat_id").and_then(Value::as_str);
    let invalid = |m: &str| Err(ToolError::InvalidArguments(m.to_owned()));
    match (user, channel, chat) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            invalid("give either `user_id`, or `channel` and `chat_id`, not both")
        }
        (Some(id), None, None) => Ok(MessageTarget::User(id)),
        (None, Some(channel), Some(chat)) => {
            let channel = ChannelKind::from_str(channel)
                .map_err(|e| ToolError::InvalidArguments(format!("field `channel`: {e}")))?;
            Ok(MessageTarget::Chat {
                channel,
                chat_id: chat.to_owned(),
            })
        }
        (None, Some(_), None) => invalid("field `chat_id` is required with `channel`"),
        (None, None, Some(_)) => invalid("field `channel` is required with `chat_id`"),
        (None, None, None) => invalid("give `user_id`, or `channel` and `chat_id`"),
    }
}

#[async_trait]
impl Tool for SendMessage {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, args: Value, _ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let target = message_target(&args)?;
        let text = args
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidArguments("field `text` is required".to_owned()))?
            .to_owned();
        let id = self
            .sink
            .send(target, text)
            .await
            .map_err(ToolError::Failed)?;
        Ok(json!({"outbox_id": id, "status": "queued"}))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::ToolRegistry;

    use super::*;

    #[derive(Default)]
    struct Sink(Mutex<Vec<(MessageTarget, String)>>);

    #[async_trait]
    impl OutboxSink for Sink {
        async fn send(&self, target: MessageTarget, text: String) -> Result<i64, String> {
            let mut sent = self.0.lock().map_err(|e| e.to_string())?;
            if text == "fail" {
                return Err("the store is closed".to_owned());
            }
            sent.push((target, text));
            i64::try_from(sent.len()).map_err(|e| e.to_string())
        }
    }

    #[tokio::test]
    async fn send_message_goes_to_the_outbox_for_a_user_or_a_chat() {
        let sink = Arc::new(Sink::default());
        let reg = ToolRegistry::new();
        reg.register(
            Arc::new(SendMessage::new(
                sink.clone(),
                vec!["webchat", "http", "telegram", "discord"],
            )),
            Duration::from_secs(1),
        )
        .expect("register");
        let ctx = ToolCallContext::default();
        let send = |args: Value| {
            let reg = reg.clone();
            let ctx = ctx.clone();
            async move { reg.call("send_message", args, &ctx).await }
        };
        assert_eq!(
            send(json!({"text": "hi", "user_id": 3})).await,
            Ok(json!({"outbox_id": 1, "status": "queued"}))
        );
        assert_eq!(
            send(json!({"text": "yo", "channel": "telegram", "chat_id": "42"})).await,
            Ok(json!({"outbox_id": 2, "status": "queued"}))
        );
        let refused = [
            (
                json!({"text": "x"}),
                "give `user_id`, or `channel` and `chat_id`",
            ),
            (
                json!({"text": "x", "user_id": 1, "chat_id": "1"}),
                "not both",
            ),
            (
                json!({"text": "x", "channel": "discord"}),
                "field `chat_id` is required with `channel`",
            ),
            (
                json!({"text": "x", "chat_id": "1"}),
                "field `channel` is required with `chat_id`",
            ),
            (
                json!({"text": "x", "channel": "irc", "chat_id": "1"}),
                "field `channel`: must be one of",
            ),
            (
                json!({"text": "", "user_id": 1}),
                "field `text`: must be at least 1 characters long",
            ),
            (json!({"user_id": 1}), "field `text` is required"),
        ];
        for (args, want) in refused {
            let got = send(args.clone()).await;
            assert!(
                matches!(&got, Err(ToolError::InvalidArguments(m)) if m.contains(want)),
                "{args}: {got:?}"
            );
        }
        assert_eq!(
            send(json!({"text": "fail", "user_id": 1})).await,
            Err(ToolError::Failed("the store is closed".to_owned()))
        );
        let sent = sink.0.lock().expect("lock").clone();
        assert_eq!(
            sent,
            [
                (MessageTarget::User(3), "hi".to_owned()),
                (
                    MessageTarget::Chat {
                        channel: ChannelKind::new("telegram"),
                        chat_id: "42".to_owned()
                    },
                    "yo".to_owned()
                ),
            ]
        );
    }
}
