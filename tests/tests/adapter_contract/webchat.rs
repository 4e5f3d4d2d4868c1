//! The WebChat side of the adapter contract: one browser socket per chat, and every reply frame
//! read from it. A chat's id is `contract-<n>` and the client picks each message's id
//! (`c-<seq>`). WebChat has no groups, no length limit and no platform error statuses; its
//! outage is the browser's socket closing while a reply is on its way.

use std::collections::HashMap;
use std::time::Instant;

use gateway_tests::{Gateway, TIMEOUT, WebChatClient};
use serde_json::Value;

use super::{Capabilities, Chat, Env, PlatformFault, PlatformSide, Sent};

/// WebChat: one browser socket per chat, and every reply frame read from it.
#[derive(Default)]
pub(crate) struct WebChat {
    sockets: HashMap<String, WebChatClient>,
    seen: HashMap<String, Vec<Sent>>,
}

impl PlatformSide for WebChat {
    const NAME: &'static str = "webchat";

    async fn start() -> Self {
        WebChat::default()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: false,
            limit: None,
            platform_errors: false,
        }
    }

    fn config(&self) -> String {
        String::new()
    }

    fn chat_id(&self, chat: Chat) -> String {
        match chat {
            Chat::Direct(n) | Chat::Group(n) => format!("contract-{n}"),
        }
    }

    async fn send_text(&mut self, gw: &Gateway, chat: Chat, text: &str, seq: u64) -> String {
        let id = format!("c-{seq}");
        let chat_id = self.chat_id(chat);
        self.send_frame(gw, &chat_id, &id, text).await;
        id
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        self.seen
            .get(&self.chat_id(chat))
            .cloned()
            .unwrap_or_default()
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let chat_id = self.chat_id(chat);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let seen = self.seen.get(&chat_id).cloned().unwrap_or_default();
            if pred(&seen) {
                return Ok(seen);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("timed out; replies so far: {seen:#?}");
            }
            self.read(&chat_id, deadline).await;
        }
    }

    fn inject_fault(&self, _chat: Chat, fault: PlatformFault) {
        panic!("WebChat has no platform errors: cannot inject {fault:?}");
    }

    fn clear_faults(&self, _chat: Chat) {}

    /// The turn is held at the agent until the browser's socket is closed, so the reply finds
    /// no browser; it must be tried (and fail), and reach the browser once it is back.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        let chat_id = self.chat_id(chat);
        env.llm.hold(text);
        let id = self.send_text(&env.gw, chat, text, seq).await;
        env.llm
            .wait_held(text, 1, TIMEOUT)
            .await
            .expect("the turn reaches the agent");
        self.disconnect(&chat_id).await;
        let failed = env.channel_info().await.failed;
        env.llm.release(text);
        env.wait_channel(
            "the reply is tried while the browser is away (a reply sent to a closed socket \
             would be lost)",
            |c| c.failed > failed,
        )
        .await;
        self.connect(&env.gw, &chat_id).await;
        id
    }
}

impl WebChat {
    async fn connect(&mut self, gw: &Gateway, chat_id: &str) {
        let socket = WebChatClient::connect(&gw.ws_url(chat_id))
            .await
            .expect("connect the browser");
        self.sockets.insert(chat_id.to_owned(), socket);
    }

    async fn disconnect(&mut self, chat_id: &str) {
        if let Some(socket) = self.sockets.remove(chat_id) {
            socket.close().await.expect("close the browser's socket");
        }
    }

    /// Sends a message frame and reads frames up to its ack.
    async fn send_frame(&mut self, gw: &Gateway, chat_id: &str, id: &str, text: &str) {
        if !self.sockets.contains_key(chat_id) {
            self.connect(gw, chat_id).await;
        }
        let socket = self.sockets.get_mut(chat_id).expect("connected above");
        socket.send_message(id, text).await.expect("send a frame");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let frame = self.read(chat_id, deadline).await;
            if frame["type"] == "ack" && frame["id"] == id {
                assert_eq!(frame["duplicate"], false, "{frame}");
                return;
            }
        }
    }

    /// Reads one frame, recording a reply; panics on an error frame or a timeout.
    async fn read(&mut self, chat_id: &str, deadline: Instant) -> Value {
        let socket = self
            .sockets
            .get_mut(chat_id)
            .unwrap_or_else(|| panic!("no browser connected for {chat_id}"));
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = socket.recv(left).await.unwrap_or_else(|e| {
            panic!(
                "webchat {chat_id}: {e:#}; replies so far: {:#?}",
                self.seen.get(chat_id)
            )
        });
        match frame["type"].as_str() {
            Some("message") => self.seen.entry(chat_id.to_owned()).or_default().push(Sent {
                text: frame["text"].as_str().unwrap_or_default().to_owned(),
                reply_to: frame["reply_to"].as_str().map(str::to_owned),
                at: Instant::now(),
                ok: true,
                part: None,
            }),
            Some("ack") => {}
            _ => panic!("webchat {chat_id}: unexpected frame {frame}"),
        }
        frame
    }
}
