//! The Signal side of the adapter contract, on `FakeSignal` (a signal-cli HTTP daemon): a direct
//! chat is person `uuid(100 + n)`, a group is `group_id(n)` written in by person `uuid(200 + n)`,
//! and a message's reference is `<author uuid>:<timestamp>`, which the reply quotes. A message
//! is limited to 2000 bytes of UTF-8; faults are for the next send, not per chat, since the
//! contract sends nothing else meanwhile, and the 401 is Signal's captcha demand (a result with
//! a `token`). The outage is signal-cli restarting: the event stream closes, and the stream the
//! gateway opens next stays silent until `stream_idle_timeout` replaces it.

use std::time::Duration;

use gateway_tests::fake_signal::{self, FakeSignal, SignalFault, StreamMode, group_id, uuid};
use gateway_tests::{Gateway, TIMEOUT};

use super::{Capabilities, Chat, Env, Limit, PlatformFault, PlatformSide, Sent, Unit};

const ACCOUNT: &str = "+15550001111";

/// signal-cli, faked.
pub(crate) struct Signal {
    sig: FakeSignal,
}

impl PlatformSide for Signal {
    const NAME: &'static str = "signal";

    async fn start() -> Self {
        let sig = FakeSignal::start(ACCOUNT).await;
        sig.set_keepalive(Duration::from_millis(200));
        Signal { sig }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            limit: Some(Limit {
                max: fake_signal::MAX_TEXT_BYTES,
                unit: Unit::Utf8Bytes,
            }),
            platform_errors: true,
        }
    }

    fn config(&self) -> String {
        format!(
            "[channels.signal]\nenabled = true\naccount = \"{ACCOUNT}\"\nrpc_url = \"{}\"\nrequire_mention_in_groups = false\n\
             stream_idle_timeout = \"1s\"\n\n\
             [rate_limits.signal]\nper_second = 100.0\nburst = 100\nper_chat_per_second = 100.0\nper_chat_burst = 100\n",
            self.sig.rpc_url()
        )
    }

    async fn ready(&self, _gw: &Gateway) {
        self.sig
            .wait_streams(|s| s.iter().any(|x| x.closed.is_none()), TIMEOUT)
            .await
            .expect("the gateway opened its event stream");
    }

    fn chat_id(&self, chat: Chat) -> String {
        match chat {
            Chat::Direct(n) => uuid(100 + u32::try_from(n).unwrap_or(0)),
            Chat::Group(n) => group_id(u32::try_from(n).unwrap_or(0)),
        }
    }

    async fn send_text(&mut self, _gw: &Gateway, chat: Chat, text: &str, _seq: u64) -> String {
        match chat {
            Chat::Direct(_) => self
                .sig
                .write(&self.chat_id(chat), "Contract", None, text, None),
            Chat::Group(n) => {
                let author = uuid(200 + u32::try_from(n).unwrap_or(0));
                self.sig
                    .write(&author, "Contract", Some(&self.chat_id(chat)), text, None)
            }
        }
    }

    fn sent(&self, chat: Chat) -> Vec<Sent> {
        sent_in(&self.sig.sends(), &self.chat_id(chat))
    }

    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let to = self.chat_id(chat);
        let accepted = |s: &[fake_signal::SignalSend]| -> Vec<Sent> {
            sent_in(s, &to).into_iter().filter(|s| s.ok).collect()
        };
        self.sig
            .wait_sends(|s| pred(&accepted(s)), TIMEOUT)
            .await
            .map(|s| accepted(&s))
    }

    fn inject_fault(&self, _chat: Chat, fault: PlatformFault) {
        match fault {
            PlatformFault::RateLimited { secs } => self.sig.push_fault(SignalFault::Result {
                kind: "RATE_LIMIT_FAILURE",
                retry_after: Some(secs),
            }),
            PlatformFault::ServerError => self.sig.push_fault(SignalFault::Http(500)),
            PlatformFault::Unauthorized => self.sig.set_mode(Some(SignalFault::CaptchaToken)),
        }
    }

    fn clear_faults(&self, _chat: Chat) {
        self.sig.set_mode(None);
    }

    /// signal-cli restarts: the stream closes, and the next one is silent until replaced.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String {
        let before = self.sig.streams().len();
        self.sig.queue_streams(&[StreamMode::Silent]);
        self.sig.close_streams();
        self.sig
            .wait_streams(|s| s.len() > before, TIMEOUT)
            .await
            .expect("the gateway reconnected");
        let id = self.send_text(&env.gw, chat, text, seq).await;
        assert_eq!(self.sig.pending(), 1, "the silent stream did not take it");
        self.sig
            .wait_streams(|s| s.len() > before + 1, TIMEOUT)
            .await
            .expect("the silent stream was replaced");
        id
    }
}

/// The sends to `to`, as sends; a send's reference is the message it quotes.
fn sent_in(all: &[fake_signal::SignalSend], to: &str) -> Vec<Sent> {
    all.iter()
        .filter(|s| s.chat() == to)
        .map(|s| Sent {
            text: s.message.clone(),
            reply_to: match (&s.quote_author, s.quote_timestamp) {
                (Some(a), Some(ts)) => Some(format!("{a}:{ts}")),
                _ => None,
            },
            at: s.at,
            ok: s.ok,
            part: None,
        })
        .collect()
}
