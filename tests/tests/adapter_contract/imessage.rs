//! The iMessage side of the adapter contract, on `FakeBlueBubbles`: a direct chat is
//! `iMessage;-;+1555200nnnn` and a group `iMessage;+;chat…`; the fake gives each message a
//! guid (`p:0/…`). The channel sends with `private-api`, so a reply names the message it
//! answers (`selectedMessageGuid`, on the first chunk); AppleScript sends carry no reference
//! and are covered by the channel's own tests. A message is limited to 4000 characters by the
//! fake; faults are for the next send, not per chat, since the contract sends nothing else
//! meanwhile; the outage is the server dropping the reply's first three connections before
//! taking the message (the listener's own reconnect and catch-up, which wait for its 15-second
//! ping, are in `tests/imessage.rs`). The built-in 1/s limit is raised so the cases run quickly.

use gateway_tests::fake_bluebubbles::{self, BbFault, FakeBlueBubbles, direct_chat, group_chat};
use gateway_tests::{Gateway, TIMEOUT};

use super::{Capabilities, Chat, Env, Limit, PlatformFault, PlatformSide, Sent, Unit};

const PASSWORD: &str = "contract-bb-password";
const WEBHOOK_PATH: &str = "/channels/imessage/webhook";

/// A BlueBubbles server, faked.
pub(crate) struct IMessage {
    bb: FakeBlueBubbles,
}

impl IMessage {
    /// The person writing in `chat`.
    fn address(chat: Chat) -> String {
        match chat {
            Chat::Direct(n) => format!("+1555200{n:04}"),
            Chat::Group(n) => format!("+1555299{n:04}"),
        }
    }
}

impl PlatformSide for IMessage {
    const NAME: &'static str = "imessage";

    async fn start() -> Self {
        IMessage {
            bb: FakeBlueBubbles::start(PASSWORD).await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            limit: Some(Limit {
                max: fake_bluebubbles::MAX_TEXT_CHARS,
                unit: Unit::Chars,
            }),
            platform_errors: true,
        }
    }

    fn config(&self) -> String {
        format!(
            "[channels.imessage]\nenabled = true\nserver_url = \"{}\"\npassword_env = \"BB_PASSWORD\"\n\
             webhook_path = \"{WEBHOOK_PATH}\"\nsend_method = \"private-api\"\n\n\
             [rate_limits.imessage]\nper_second = 100\nburst = 100\n",
            self.bb.server_url()
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("BB_PASSWORD".to_owned(), PASSWORD.to_owned())]
    }

    fn chat_id(&self, chat: Chat) -> String {
        match chat {
            Chat::Direct(_) => direct_chat(&Self::address(chat)),
            Chat::Group(n) => group_chat(n),
        }
    }

    async fn send_text(&mut self, gw: &Gateway, chat: Chat, text: &str, _seq: u64) -> String {
        let message = self
            .bb
            .incoming(&Self::address(chat), &self.chat_id(chat), text);
        let url = format!("{}{WEBHOOK_PATH}", gw.http_base());
        let (guid, status) = self.bb.receive(&url, message).await;
        assert_eq!(status, 200, "the webhook with the password is taken");
        guid
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        sent_in(&self.bb.sent(), &self.chat_id(chat))
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let to = self.chat_id(chat);
        // Only accepted sends count: a send is recorded on arrival, before it is answered.
        let accepted = |s: &[fake_bluebubbles::SentText]| -> Vec<Sent> {
            sent_in(s, &to).into_iter().filter(|s| s.ok).collect()
        };
        self.bb
            .wait_sent(|s| pred(&accepted(s)), TIMEOUT)
            .await
            .map(|s| accepted(&s))
    }

    fn inject_fault(&self, _chat: Chat, fault: PlatformFault) {
        match fault {
            PlatformFault::RateLimited { secs } => {
                self.bb.push_fault(BbFault::RateLimited { secs });
            }
            PlatformFault::ServerError => self.bb.push_fault(BbFault::ServerError),
            PlatformFault::Unauthorized => self.bb.set_mode(Some(BbFault::Unauthorized)),
        }
    }

    fn clear_faults(&self, _chat: Chat) {
        self.bb.set_mode(None);
    }

    /// The server drops the connection of the reply's first three tries.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        for _ in 0..3 {
            self.bb.push_fault(BbFault::Drop);
        }
        let to = self.chat_id(chat);
        let id = self.send_text(&env.gw, chat, text, seq).await;
        self.bb
            .wait_sent(
                |s| {
                    s.iter()
                        .filter(|m| m.chat_guid == to && m.status_returned == 0)
                        .count()
                        >= 3
                },
                TIMEOUT,
            )
            .await
            .expect("three dropped sends");
        id
    }
}

/// The `message/text` sends in `chat_guid`, as sends.
fn sent_in(all: &[fake_bluebubbles::SentText], chat_guid: &str) -> Vec<Sent> {
    all.iter()
        .filter(|s| s.chat_guid == chat_guid)
        .map(|s| Sent {
            text: s.message.clone(),
            reply_to: s.selected_message_guid.clone(),
            at: s.at,
            ok: s.is_success(),
            part: None,
        })
        .collect()
}
