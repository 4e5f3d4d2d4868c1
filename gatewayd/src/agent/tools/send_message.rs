//! `send_message`: sends a message to a user or a chat, only through the outbox (via an
//! [`OutboxSink`]), and only where its [`SendScope`] allows.
//!
//! The scope (`[tools.send_message] scope`) applies to calls made for a user: an agent turn, and
//! a workflow a user started (by a chat command, or by their turn through `run_workflow`). The
//! target is resolved to one chat first (a user to the direct chat they wrote from last), then
//! checked: `same_chat` allows only the chat the turn came from; `same_user` also the direct
//! chats of the turn's user on any linked address ([`OutboxSink::is_direct_chat_of`]); `any`
//! everything. A call without a user (a workflow run by an operator) is not restricted. A
//! refusal is a [`ToolError::NotAllowed`] the model reads, a log line, and a count in
//! `gateway_tool_refusals_total{tool}`.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Tool, ToolCallContext, ToolError, ToolSpec};
use crate::message::{ChannelKind, UserId};

/// Where `send_message` may send, for a call made for a user: `[tools.send_message] scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendScope {
    /// Only the chat the turn came from.
    SameChat,
    /// The chat the turn came from and the direct chats of the turn's user.
    #[default]
    SameUser,
    /// Any chat.
    Any,
}

impl SendScope {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SameChat => "same_chat",
            Self::SameUser => "same_user",
            Self::Any => "any",
        }
    }
}

/// Resolves `target` to one chat and checks it against `scope` for a call made for `user` from
/// `origin`; the chat to send to, or the refusal (logged and counted).
pub async fn check_scope(
    scope: SendScope,
    sink: &dyn OutboxSink,
    user: Option<UserId>,
    origin: Option<&(ChannelKind, String)>,
    target: MessageTarget,
) -> Result<MessageTarget, ToolError> {
    let Some(user) = user else {
        return Ok(target);
    };
    if scope == SendScope::Any {
        return Ok(target);
    }
    let (channel, chat_id) = match target {
        MessageTarget::Chat { channel, chat_id } => (channel, chat_id),
        MessageTarget::User(to) => sink
            .direct_chat_of_user(to)
            .await
            .map_err(ToolError::Failed)?
            .ok_or_else(|| {
                ToolError::Failed(format!("user {to} has no direct chat with the gateway yet"))
            })?,
    };
    let same_chat = origin.is_some_and(|(c, id)| *c == channel && *id == chat_id);
    let allowed = match scope {
        SendScope::Any => true,
        SendScope::SameChat => same_chat,
        SendScope::SameUser => {
            same_chat
                || sink
                    .is_direct_chat_of(user, channel, &chat_id)
                    .await
                    .map_err(ToolError::Failed)?
        }
    };
    if allowed {
        return Ok(MessageTarget::Chat { channel, chat_id });
    }
    let what = match scope {
        SendScope::SameChat => "the chat this turn came from",
        _ => "this user's own chats",
    };
    tracing::warn!(
        message = "send_message refused by its scope.",
        scope = scope.as_str(),
        user,
        channel = %channel,
        chat_id = %chat_id,
    );
    metrics::counter!("gateway_tool_refusals_total", "tool" => "send_message").increment(1);
    Err(ToolError::NotAllowed(format!(
        "send_message may only send to {what} (tools.send_message.scope = \"{}\")",
        scope.as_str()
    )))
}

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
    /// The direct chat `user` wrote from last, where a message to them goes.
    async fn direct_chat_of_user(
        &self,
        user: UserId,
    ) -> Result<Option<(ChannelKind, String)>, String>;
    /// Whether `chat_id` on `channel` is a direct chat of `user` (any of their linked addresses).
    async fn is_direct_chat_of(
        &self,
        user: UserId,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<bool, String>;
}

/// `send_message`: sends a message to a user or a chat, through the outbox.
pub struct SendMessage {
    spec: ToolSpec,
    sink: Arc<dyn OutboxSink>,
    scope: SendScope,
}

/// Longest `send_message` text, in characters; delivery splits it for each channel.
const SEND_MAX_CHARS: u64 = 8000;

impl SendMessage {
    /// The tool, sending through `sink` to one of `channels` (the gateway's channel names),
    /// anywhere: [`with_scope`](Self::with_scope) restricts it.
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
            scope: SendScope::Any,
        }
    }

    /// The tool restricted to `scope` for calls made for a user.
    pub fn with_scope(mut self, scope: SendScope) -> Self {
        self.scope = scope;
        self
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

    async fn call(&self, args: Value, ctx: &ToolCallContext) -> Result<Value, ToolError> {
        let target = message_target(&args)?;
        let text = args
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::InvalidArguments("field `text` is required".to_owned()))?
            .to_owned();
        let target = check_scope(
            self.scope,
            self.sink.as_ref(),
            ctx.user,
            ctx.origin.as_ref(),
            target,
        )
        .await?;
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
        async fn direct_chat_of_user(
            &self,
            user: UserId,
        ) -> Result<Option<(ChannelKind, String)>, String> {
            Ok(OWNED
                .iter()
                .find(|(u, _, _)| *u == user)
                .map(|(_, c, id)| (ChannelKind::new(c), (*id).to_owned())))
        }
        async fn is_direct_chat_of(
            &self,
            user: UserId,
            channel: ChannelKind,
            chat_id: &str,
        ) -> Result<bool, String> {
            Ok(OWNED
                .iter()
                .any(|(u, c, id)| *u == user && *c == channel.as_str() && *id == chat_id))
        }
    }

    /// The direct chats of users 1 (two linked addresses) and 2, newest first.
    const OWNED: [(UserId, &str, &str); 3] = [
        (1, "telegram", "100"),
        (1, "webchat", "w1"),
        (2, "telegram", "200"),
    ];

    #[tokio::test]
    async fn the_scope_allows_the_users_own_chats_and_refuses_the_rest() {
        let sink = Arc::new(Sink::default());
        let telegram = ChannelKind::new("telegram");
        let chat = |c: &'static str, id: &str| MessageTarget::Chat {
            channel: ChannelKind::new(c),
            chat_id: id.to_owned(),
        };
        let origin = (telegram, "100".to_owned());
        let check = |scope, user, target| {
            let sink = sink.clone();
            let origin = origin.clone();
            async move { check_scope(scope, sink.as_ref(), user, Some(&origin), target).await }
        };
        let refused_user = Err(ToolError::NotAllowed(
            "send_message may only send to this user's own chats (tools.send_message.scope = \"same_user\")"
                .to_owned(),
        ));
        let refused_chat = Err(ToolError::NotAllowed(
            "send_message may only send to the chat this turn came from (tools.send_message.scope = \"same_chat\")"
                .to_owned(),
        ));
        use SendScope::*;
        // same_user: the origin, the user's other linked chat, the user themselves.
        assert_eq!(
            check(SameUser, Some(1), chat("telegram", "100")).await,
            Ok(chat("telegram", "100"))
        );
        assert_eq!(
            check(SameUser, Some(1), chat("webchat", "w1")).await,
            Ok(chat("webchat", "w1"))
        );
        assert_eq!(
            check(SameUser, Some(1), MessageTarget::User(1)).await,
            Ok(chat("telegram", "100"))
        );
        assert_eq!(
            check(SameUser, Some(1), chat("telegram", "200")).await,
            refused_user
        );
        assert_eq!(
            check(SameUser, Some(1), MessageTarget::User(2)).await,
            refused_user
        );
        assert_eq!(
            check(SameUser, Some(1), chat("webchat", "100")).await,
            refused_user
        );
        // same_chat: only the origin.
        assert_eq!(
            check(SameChat, Some(1), chat("telegram", "100")).await,
            Ok(chat("telegram", "100"))
        );
        assert_eq!(
            check(SameChat, Some(1), chat("webchat", "w1")).await,
            refused_chat
        );
        assert_eq!(
            check(SameChat, Some(1), MessageTarget::User(2)).await,
            refused_chat
        );
        // any, and a call without a user (an operator's workflow), are not restricted.
        assert_eq!(
            check(Any, Some(1), chat("telegram", "200")).await,
            Ok(chat("telegram", "200"))
        );
        assert_eq!(
            check(SameChat, None, MessageTarget::User(2)).await,
            Ok(MessageTarget::User(2))
        );
        assert_eq!(
            check(SameUser, Some(1), MessageTarget::User(9)).await,
            Err(ToolError::Failed(
                "user 9 has no direct chat with the gateway yet".to_owned()
            ))
        );
        assert!(
            sink.0.lock().expect("lock").is_empty(),
            "a check sends nothing"
        );
    }

    #[tokio::test]
    async fn a_refused_send_message_reaches_the_model_and_sends_nothing() {
        let sink = Arc::new(Sink::default());
        let reg = ToolRegistry::new();
        reg.register(
            Arc::new(
                SendMessage::new(sink.clone(), vec!["telegram"]).with_scope(SendScope::SameUser),
            ),
            Duration::from_secs(1),
        )
        .expect("register");
        let ctx = ToolCallContext {
            session: Some(crate::message::SessionKey::User(1)),
            origin: Some((ChannelKind::new("telegram"), "100".to_owned())),
            user: Some(1),
        };
        let got = reg
            .call(
                "send_message",
                json!({"text": "hi", "channel": "telegram", "chat_id": "200"}),
                &ctx,
            )
            .await;
        assert!(
            matches!(&got, Err(ToolError::NotAllowed(m)) if m.contains("same_user")),
            "{got:?}"
        );
        assert_eq!(
            reg.call("send_message", json!({"text": "hi", "user_id": 1}), &ctx)
                .await,
            Ok(json!({"outbox_id": 1, "status": "queued"}))
        );
        assert_eq!(
            sink.0.lock().expect("lock").clone(),
            [(
                MessageTarget::Chat {
                    channel: ChannelKind::new("telegram"),
                    chat_id: "100".to_owned()
                },
                "hi".to_owned()
            )]
        );
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
