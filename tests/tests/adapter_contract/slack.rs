//! The Slack side of the adapter contract, on `FakeSlack` in Socket Mode: a direct chat is the
//! DM `D{1000 + n}` with user `U{1000 + n}`, a group is channel `C{4000 + n}` with member
//! `U{2000 + n}` (mentions are not required, so the texts reach the agent as sent). Each message
//! is sent in a thread of its own, so a reply references it by `thread_ts` (the message's
//! reference is that thread's `ts`); a chunk after the first of a split reply (its metadata id
//! ends in `-2`, `-3`, …) is counted as the reply's continuation. A message is limited to 4000
//! characters; faults are per method (`chat.postMessage`); the outage is the socket closed while
//! `apps.connections.open` fails, and the event is delivered on the next connection, as Slack
//! holds events while an app has no socket.

use gateway_tests::fake_slack::{self, FakeSlack, Post, SlackFault, SocketCmd};
use gateway_tests::{Gateway, TIMEOUT};

use super::{Capabilities, Chat, Env, Limit, PlatformFault, PlatformSide, Sent, Unit};

const BOT_TOKEN: &str = "xoxb-contract-token";
const APP_TOKEN: &str = "xapp-contract-token";

/// Slack, faked.
pub(crate) struct Slack {
    slack: FakeSlack,
}

impl PlatformSide for Slack {
    const NAME: &'static str = "slack";

    async fn start() -> Self {
        Slack {
            slack: FakeSlack::start(BOT_TOKEN, APP_TOKEN, "contract-signing-secret").await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            limit: Some(Limit {
                max: fake_slack::MAX_TEXT_CHARS,
                unit: Unit::Chars,
            }),
            platform_errors: true,
        }
    }

    fn config(&self) -> String {
        format!(
            "[channels.slack]\nenabled = true\nmode = \"socket\"\nbot_token_env = \"SLACK_BOT_TOKEN\"\n\
             app_token_env = \"SLACK_APP_TOKEN\"\napi_url = \"{}\"\nrequire_mention_in_channels = false\n",
            self.slack.api_url()
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SLACK_BOT_TOKEN".to_owned(), BOT_TOKEN.to_owned()),
            ("SLACK_APP_TOKEN".to_owned(), APP_TOKEN.to_owned()),
        ]
    }

    async fn ready(&self, _gw: &Gateway) {
        self.slack
            .wait_connections(|c| c.iter().any(|c| c.closed_at.is_none()), TIMEOUT)
            .await
            .expect("the gateway opens a Socket Mode connection");
    }

    fn chat_id(&self, chat: Chat) -> String {
        slack_chat(chat).0
    }

    async fn send_text(&mut self, _gw: &Gateway, chat: Chat, text: &str, _seq: u64) -> String {
        let (channel, kind, user) = slack_chat(chat);
        let thread = self.slack.next_ts();
        let (body, _) = self
            .slack
            .message_event(&channel, kind, &user, text, Some(&thread));
        self.slack
            .push_envelope(&body)
            .expect("an open Socket Mode connection");
        thread
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        sent_in(&self.slack.posts(), &self.chat_id(chat))
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let channel = self.chat_id(chat);
        self.slack
            .wait_posts(|p| pred(&sent_in(p, &channel)), TIMEOUT)
            .await
            .map(|p| sent_in(&p, &channel))
    }

    fn inject_fault(&self, _chat: Chat, fault: PlatformFault) {
        match fault {
            PlatformFault::RateLimited { secs } => self
                .slack
                .push_fault("chat.postMessage", SlackFault::RateLimited(secs)),
            PlatformFault::ServerError => self
                .slack
                .push_fault("chat.postMessage", SlackFault::Status(500)),
            PlatformFault::Unauthorized => self.slack.set_mode(
                "chat.postMessage",
                Some(SlackFault::Error("invalid_auth".to_owned())),
            ),
        }
    }

    fn clear_faults(&self, _chat: Chat) {
        self.slack.set_mode("chat.postMessage", None);
    }

    /// The socket closes and `apps.connections.open` fails twice; the event waits at Slack and
    /// is delivered on the next connection.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        let opened = self.slack.calls_of("apps.connections.open");
        let before = self.slack.connections().len();
        self.slack
            .set_mode("apps.connections.open", Some(SlackFault::Status(503)));
        self.slack
            .socket_cmd(SocketCmd::Close)
            .expect("an open connection to close");
        self.slack
            .wait_calls("apps.connections.open", opened + 2, TIMEOUT)
            .await
            .expect("two refused reconnects");
        self.slack.set_mode("apps.connections.open", None);
        self.slack
            .wait_connections(
                |c| c.len() > before && c.last().is_some_and(|c| c.closed_at.is_none()),
                TIMEOUT,
            )
            .await
            .expect("a new connection after the outage");
        self.send_text(&env.gw, chat, text, seq).await
    }
}

/// Slack: DM `D{1000 + n}` with `U{1000 + n}`, or channel `C{4000 + n}` with `U{2000 + n}`.
fn slack_chat(chat: Chat) -> (String, &'static str, String) {
    match chat {
        Chat::Direct(n) => (format!("D{}", 1000 + n), "im", format!("U{}", 1000 + n)),
        Chat::Group(n) => (
            format!("C{}", 4000 + n),
            "channel",
            format!("U{}", 2000 + n),
        ),
    }
}

/// Whether a post is a chunk after the first of a split reply (metadata id `<outbox>-<n>`, n > 1).
fn continues(p: &Post) -> bool {
    p.metadata_id
        .as_deref()
        .and_then(|id| id.rsplit_once('-'))
        .is_some_and(|(_, n)| n != "1")
}

/// The posts in `channel`, as sends.
fn sent_in(all: &[Post], channel: &str) -> Vec<Sent> {
    all.iter()
        .filter(|p| p.channel == channel)
        .map(|p| Sent {
            text: p.text.clone(),
            reply_to: if continues(p) {
                None
            } else {
                p.thread_ts.clone()
            },
            at: p.at,
            ok: p.is_success(),
            part: None,
        })
        .collect()
}
