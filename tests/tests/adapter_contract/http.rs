//! The HTTP-channel side of the adapter contract: users post to gatewayd's HTTP listener, and
//! replies arrive at a `FakeCallback` webhook receiver. A direct chat is `dm-<n>` (sender
//! `user-<n>`), a group `room-<n>` (sender `member-<n>`); the client picks each message's id
//! (`m-<seq>`). Replies are limited to 100 characters (`max_reply_chars`) and numbered by
//! `part`; faults are per chat; the outage is the callback dropping connections.

use gateway_tests::{CallbackFault, Delivery, FakeCallback, Gateway, TIMEOUT};
use serde_json::json;

use super::{Capabilities, Chat, Env, Limit, PlatformFault, PlatformSide, Sent, Unit};

/// The HTTP channel with its callback receiver.
pub(crate) struct HttpCallback {
    callback: FakeCallback,
}

impl PlatformSide for HttpCallback {
    const NAME: &'static str = "http";

    async fn start() -> Self {
        HttpCallback {
            callback: FakeCallback::start().await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            limit: Some(Limit {
                max: 100,
                unit: Unit::Chars,
            }),
            platform_errors: true,
        }
    }

    fn config(&self) -> String {
        format!(
            "[channels.http]\nenabled = true\ncallback_url = \"{}\"\nmax_reply_chars = 100\n",
            self.callback.url()
        )
    }

    fn chat_id(&self, chat: Chat) -> String {
        match chat {
            Chat::Direct(n) => format!("dm-{n}"),
            Chat::Group(n) => format!("room-{n}"),
        }
    }

    async fn send_text(&mut self, gw: &Gateway, chat: Chat, text: &str, seq: u64) -> String {
        let id = format!("m-{seq}");
        let (sender, chat_type) = match chat {
            Chat::Direct(n) => (format!("user-{n}"), "direct"),
            Chat::Group(n) => (format!("member-{n}"), "group"),
        };
        let body = json!({"message_id": id, "chat_id": self.chat_id(chat), "sender_id": sender,
                          "text": text, "chat_type": chat_type});
        let reply = gw.post_http_message(&body).await.expect("post");
        assert_eq!(reply.status, 202, "{}", reply.text);
        id
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        sent_in(&self.callback.received(), &self.chat_id(chat))
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let chat_id = self.chat_id(chat);
        self.callback
            .wait_delivered(|d| pred(&sent_in(d, &chat_id)), TIMEOUT)
            .await
            .map(|d| sent_in(&d, &chat_id))
    }

    fn inject_fault(&self, chat: Chat, fault: PlatformFault) {
        let chat_id = self.chat_id(chat);
        match fault {
            PlatformFault::RateLimited { secs } => self.callback.push_fault_for_chat(
                &chat_id,
                CallbackFault::Status429 {
                    retry_after: secs.to_string(),
                },
            ),
            PlatformFault::ServerError => {
                self.callback
                    .push_fault_for_chat(&chat_id, CallbackFault::Status(503));
            }
            PlatformFault::Unauthorized => {
                self.callback
                    .set_chat_mode(&chat_id, Some(CallbackFault::Status(401)));
            }
        }
    }

    fn clear_faults(&self, chat: Chat) {
        self.callback.set_chat_mode(&self.chat_id(chat), None);
    }

    /// The callback drops the connection of the reply's first three tries.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        let chat_id = self.chat_id(chat);
        for _ in 0..3 {
            self.callback
                .push_fault_for_chat(&chat_id, CallbackFault::Drop);
        }
        let id = self.send_text(&env.gw, chat, text, seq).await;
        self.callback
            .wait_received(
                |d| {
                    d.iter()
                        .filter(|d| d.chat_id == chat_id && d.status_returned == 0)
                        .count()
                        >= 3
                },
                TIMEOUT,
            )
            .await
            .expect("three dropped callbacks");
        id
    }
}

/// The callbacks in `chat_id`, as sends.
fn sent_in(all: &[Delivery], chat_id: &str) -> Vec<Sent> {
    all.iter()
        .filter(|d| d.chat_id == chat_id)
        .map(|d| Sent {
            text: d.text.clone(),
            reply_to: d.reply_to.clone(),
            at: d.at,
            ok: d.is_delivered(),
            part: d.body["part"]["index"]
                .as_u64()
                .zip(d.body["part"]["count"].as_u64()),
        })
        .collect()
}
