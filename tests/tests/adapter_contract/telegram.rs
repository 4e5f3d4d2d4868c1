//! The Telegram side of the adapter contract, on `FakeTelegram`: a direct chat is the private
//! chat of user `1000 + n`, a group is chat `-(4000 + n)` with member `2000 + n`, and the
//! platform numbers each message. A message is limited to `MAX_TEXT_UTF16` UTF-16 code units;
//! faults are per method (`sendMessage`), not per chat, since the contract sends nothing else
//! meanwhile; the outage is `getUpdates` dropping its connections.

use std::time::{Duration, Instant};

use gateway_tests::fake_telegram::{self, ChatSpec, FakeTelegram, TgFault};
use gateway_tests::{Gateway, TIMEOUT};

use super::{Capabilities, Chat, Env, Limit, PlatformFault, PlatformSide, Sent, Unit};

const TG_TOKEN: &str = "123456:contract-token";

/// Telegram's Bot API, faked.
pub(crate) struct Telegram {
    tg: FakeTelegram,
}

impl PlatformSide for Telegram {
    const NAME: &'static str = "telegram";

    async fn start() -> Self {
        Telegram {
            tg: FakeTelegram::start(TG_TOKEN).await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            limit: Some(Limit {
                max: fake_telegram::MAX_TEXT_UTF16,
                unit: Unit::Utf16,
            }),
            platform_errors: true,
        }
    }

    fn config(&self) -> String {
        format!(
            "[channels.telegram]\nenabled = true\ntoken_env = \"TG_TOKEN\"\napi_url = \"{}\"\npoll_timeout = \"1s\"\nrequire_mention_in_groups = false\n",
            self.tg.api_url()
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("TG_TOKEN".to_owned(), TG_TOKEN.to_owned())]
    }

    fn chat_id(&self, chat: Chat) -> String {
        tg_chat(chat).0.id().to_string()
    }

    async fn send_text(&mut self, _gw: &Gateway, chat: Chat, text: &str, _seq: u64) -> String {
        let (spec, user) = tg_chat(chat);
        self.tg.push_text(&spec, user, text).to_string()
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        sent_in(&self.tg.sent(), &self.chat_id(chat))
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let chat_id = self.chat_id(chat);
        self.tg
            .wait_sent(|s| pred(&sent_in(s, &chat_id)), TIMEOUT)
            .await
            .map(|s| sent_in(&s, &chat_id))
    }

    fn inject_fault(&self, _chat: Chat, fault: PlatformFault) {
        match fault {
            PlatformFault::RateLimited { secs } => {
                self.tg.push_fault("sendMessage", TgFault::RetryAfter(secs));
            }
            // teloxide sleeps 10 s on a 5xx before returning the error; this is that once.
            PlatformFault::ServerError => self.tg.push_fault(
                "sendMessage",
                TgFault::Status {
                    code: 500,
                    description: "Internal Server Error".to_owned(),
                },
            ),
            PlatformFault::Unauthorized => {
                self.tg.set_mode("sendMessage", Some(TgFault::Unauthorized));
            }
        }
    }

    fn clear_faults(&self, _chat: Chat) {
        self.tg.set_mode("sendMessage", None);
    }

    /// `getUpdates` is dropped while the message waits there, and polling backs off.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        let start = Instant::now();
        self.tg.set_mode("getUpdates", Some(TgFault::Drop));
        let calls = self.tg.get_updates_calls();
        // The parked long poll ends at its timeout; the next one is dropped.
        self.tg
            .wait_get_updates_calls(calls + 1, TIMEOUT)
            .await
            .expect("a dropped poll");
        let id = self.send_text(&env.gw, chat, text, seq).await;
        self.tg
            .wait_get_updates_calls(calls + 3, TIMEOUT)
            .await
            .expect("two more dropped polls");
        self.tg.set_mode("getUpdates", None);
        let dropped: Vec<Instant> = self
            .tg
            .api_calls()
            .iter()
            .filter(|c| c.method == "getUpdates" && c.status_returned == 0 && c.at > start)
            .map(|c| c.at)
            .collect();
        assert!(dropped.len() >= 3, "{dropped:?}");
        let gaps: Vec<Duration> = dropped.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps[0] >= Duration::from_millis(100) && gaps[1] > gaps[0],
            "telegram: polling backs off after failures; gaps {gaps:?}"
        );
        id
    }
}

/// Telegram: a private chat with user `1000 + n`, or group `-(4000 + n)` with member `2000 + n`.
fn tg_chat(chat: Chat) -> (ChatSpec, i64) {
    match chat {
        Chat::Direct(n) => {
            let user = 1000 + n as i64;
            (ChatSpec::private(user), user)
        }
        Chat::Group(n) => (
            ChatSpec::group(-(4000 + n as i64), &format!("Contract {n}")),
            2000 + n as i64,
        ),
    }
}

/// The `sendMessage` calls in `chat_id`, as sends.
fn sent_in(all: &[fake_telegram::SentMessage], chat_id: &str) -> Vec<Sent> {
    all.iter()
        .filter(|s| s.chat_id == chat_id)
        .map(|s| Sent {
            text: s.text.clone(),
            reply_to: s.reply_to_message_id.map(|id| id.to_string()),
            at: s.at,
            ok: s.is_success(),
            part: None,
        })
        .collect()
}
