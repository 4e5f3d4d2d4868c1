//! The Discord side of the adapter contract, on `FakeDiscord`: a direct chat is DM channel
//! `5000 + n` with user `6000 + n`, a group is channel `7000 + n` of one guild with member
//! `8000 + n`, and the platform numbers each message. A message is limited to 2000 characters;
//! faults apply to the next REST send, whatever its channel, since the contract sends nothing
//! else meanwhile; the outage is the gateway socket dropping, with the message pushed while no
//! session is live, and the session must be resumed.

use gateway_tests::fake_discord::{self, DcFault, FakeDiscord};
use gateway_tests::{Gateway, TIMEOUT};

use super::{Capabilities, Chat, Env, Limit, PlatformFault, PlatformSide, Sent, Unit};

const DC_TOKEN: &str = "contract.discord.token";
/// The guild of every Discord group chat in the contract.
const GUILD: u64 = 90_001;

/// Discord's REST API and gateway, faked.
pub(crate) struct Discord {
    dc: FakeDiscord,
}

impl PlatformSide for Discord {
    const NAME: &'static str = "discord";

    async fn start() -> Self {
        Discord {
            dc: FakeDiscord::start(DC_TOKEN).await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            limit: Some(Limit {
                max: 2000,
                unit: Unit::Chars,
            }),
            platform_errors: true,
        }
    }

    fn config(&self) -> String {
        format!(
            "[channels.discord]\nenabled = true\ntoken_env = \"DC_TOKEN\"\napi_url = \"{}\"\n",
            self.dc.url()
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("DC_TOKEN".to_owned(), DC_TOKEN.to_owned())]
    }

    async fn ready(&self, gw: &Gateway) {
        self.dc
            .wait_identified(TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr_tail(40)));
    }

    fn chat_id(&self, chat: Chat) -> String {
        dc_chat(chat).0.to_string()
    }

    async fn send_text(&mut self, _gw: &Gateway, chat: Chat, text: &str, _seq: u64) -> String {
        let (channel, author) = dc_chat(chat);
        let id = match chat {
            Chat::Direct(_) => self.dc.push_dm(channel, author, text),
            Chat::Group(_) => self
                .dc
                .push_guild_message(GUILD, channel, author, text, true),
        };
        id.to_string()
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        sent_in(&self.dc.sent(), &self.chat_id(chat))
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let chat_id = self.chat_id(chat);
        self.dc
            .wait_sent(|s| pred(&sent_in(s, &chat_id)), TIMEOUT)
            .await
            .map(|s| sent_in(&s, &chat_id))
    }

    fn inject_fault(&self, _chat: Chat, fault: PlatformFault) {
        match fault {
            PlatformFault::RateLimited { secs } => self.dc.push_fault(DcFault::RateLimited {
                retry_after: secs as f64,
                global: false,
            }),
            PlatformFault::ServerError => self.dc.push_fault(DcFault::Status(502)),
            PlatformFault::Unauthorized => self.dc.set_mode(Some(DcFault::Unauthorized)),
        }
    }

    fn clear_faults(&self, _chat: Chat) {
        self.dc.set_mode(None);
    }

    /// The gateway socket drops and the message is pushed while no session is live; the
    /// adapter resumes the session rather than identifying again.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        let identifies = self.dc.identify_count();
        let resumes = self.dc.resume_count();
        assert!(
            self.dc.drop_connection(),
            "a live gateway connection to drop"
        );
        let id = self.send_text(&env.gw, chat, text, seq).await;
        self.dc
            .wait_resume_count(resumes + 1, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", env.gw.stderr_tail(40)));
        assert_eq!(
            self.dc.identify_count(),
            identifies,
            "discord: the session is resumed, not identified again"
        );
        id
    }
}

/// Discord: DM channel `5000 + n` with user `6000 + n`, or guild channel `7000 + n` with member
/// `8000 + n`.
fn dc_chat(chat: Chat) -> (u64, u64) {
    match chat {
        Chat::Direct(n) => (5000 + n, 6000 + n),
        Chat::Group(n) => (7000 + n, 8000 + n),
    }
}

/// The `POST .../messages` calls in `chat_id`, as sends.
fn sent_in(all: &[fake_discord::SentMessage], chat_id: &str) -> Vec<Sent> {
    all.iter()
        .filter(|s| s.channel_id.to_string() == chat_id)
        .map(|s| Sent {
            text: s.content.clone(),
            reply_to: s.reference_message_id.map(|id| id.to_string()),
            at: s.at,
            ok: s.is_success(),
            part: None,
        })
        .collect()
}
