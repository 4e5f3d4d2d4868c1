//! The WhatsApp side of the adapter contract, on `FakeWhatsApp`: a direct chat is the user
//! `1555100nnnn` (their `wa_id`), and the fake numbers each message (`wamid.…`). The Cloud API
//! has no group chats (its conversations are 1:1), so the group case is skipped. A message is
//! limited to 4096 characters; faults are for the next send, not per chat, since the contract
//! sends nothing else meanwhile; the outage is the Cloud API dropping the reply's first three
//! connections before taking the message.

use gateway_tests::fake_whatsapp::{self, FakeWhatsApp, Signing, WaFault};
use gateway_tests::{Gateway, TIMEOUT};

use super::{Capabilities, Chat, Env, Limit, PlatformFault, PlatformSide, Sent, Unit};

const TOKEN: &str = "EAAG-contract-token";
const APP_SECRET: &str = "contract-app-secret";
const PHONE_NUMBER_ID: &str = "106540352242922";
const WEBHOOK_PATH: &str = "/channels/whatsapp/webhook";

/// The WhatsApp Cloud API, faked.
pub(crate) struct WhatsApp {
    wa: FakeWhatsApp,
}

impl PlatformSide for WhatsApp {
    const NAME: &'static str = "whatsapp";

    async fn start() -> Self {
        WhatsApp {
            wa: FakeWhatsApp::start(TOKEN, PHONE_NUMBER_ID, APP_SECRET).await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: false,
            limit: Some(Limit {
                max: fake_whatsapp::MAX_TEXT_CHARS,
                unit: Unit::Chars,
            }),
            platform_errors: true,
        }
    }

    fn config(&self) -> String {
        format!(
            "[channels.whatsapp]\nenabled = true\naccess_token_env = \"WA_TOKEN\"\n\
             app_secret_env = \"WA_APP_SECRET\"\nverify_token_env = \"WA_VERIFY_TOKEN\"\n\
             phone_number_id = \"{PHONE_NUMBER_ID}\"\napi_url = \"{}\"\nwebhook_path = \"{WEBHOOK_PATH}\"\n",
            self.wa.api_url()
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WA_TOKEN".to_owned(), TOKEN.to_owned()),
            ("WA_APP_SECRET".to_owned(), APP_SECRET.to_owned()),
            ("WA_VERIFY_TOKEN".to_owned(), "contract-verify".to_owned()),
        ]
    }

    fn chat_id(&self, chat: Chat) -> String {
        match chat {
            Chat::Direct(n) | Chat::Group(n) => format!("1555100{n:04}"),
        }
    }

    async fn send_text(&mut self, gw: &Gateway, chat: Chat, text: &str, _seq: u64) -> String {
        let from = self.chat_id(chat);
        let (id, env) = self.wa.text_message(&from, "Contract", text, None);
        let url = format!("{}{WEBHOOK_PATH}", gw.http_base());
        let status = self.wa.deliver(&url, &env, Signing::Good).await;
        assert_eq!(status, 200, "the signed webhook is taken");
        id
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        sent_in(&self.wa.sent(), &self.chat_id(chat))
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let to = self.chat_id(chat);
        // Only accepted sends count: a send is recorded on arrival, before it is answered.
        let accepted = |s: &[fake_whatsapp::SentMessage]| -> Vec<Sent> {
            sent_in(s, &to).into_iter().filter(|s| s.ok).collect()
        };
        self.wa
            .wait_sent(|s| pred(&accepted(s)), TIMEOUT)
            .await
            .map(|s| accepted(&s))
    }

    fn inject_fault(&self, _chat: Chat, fault: PlatformFault) {
        match fault {
            PlatformFault::RateLimited { secs } => {
                self.wa.push_fault(WaFault::RateLimited { secs });
            }
            PlatformFault::ServerError => self.wa.push_fault(WaFault::ServerError),
            PlatformFault::Unauthorized => self.wa.set_mode(Some(WaFault::Unauthorized)),
        }
    }

    fn clear_faults(&self, _chat: Chat) {
        self.wa.set_mode(None);
    }

    /// The Cloud API drops the connection of the reply's first three tries.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        for _ in 0..3 {
            self.wa.push_fault(WaFault::Drop);
        }
        let to = self.chat_id(chat);
        let id = self.send_text(&env.gw, chat, text, seq).await;
        self.wa
            .wait_sent(
                |s| {
                    s.iter()
                        .filter(|m| m.to == to && m.status_returned == 0)
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

/// The `/messages` sends to `to`, as sends.
fn sent_in(all: &[fake_whatsapp::SentMessage], to: &str) -> Vec<Sent> {
    all.iter()
        .filter(|s| s.to == to)
        .map(|s| Sent {
            text: s.text.clone(),
            reply_to: s.context_message_id.clone(),
            at: s.at,
            ok: s.is_success(),
            part: None,
        })
        .collect()
}
