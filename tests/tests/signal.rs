//! The Signal channel through the real `gatewayd` binary against `FakeSignal` (a signal-cli HTTP
//! daemon: server-sent events in, JSON-RPC `send` out): a direct and a group round trip, each
//! reply quoting the message it answers; a long reply split within 2000 bytes of UTF-8 and never
//! inside a grapheme; a zombie stream (keepalives, no events) renewed after `stream_max_age` and
//! a silent one replaced after `stream_idle_timeout`, the messages written meanwhile answered;
//! the renewal's overlap answered once; messages written while gatewayd is stopped answered
//! once after it starts; sync messages, receipts and malformed events skipped; every class of
//! send failure ending where it should (rate-limit and network failures and -5 retried, an
//! unregistered recipient a dead letter, a captcha holding the channel as `reauth_needed` with
//! its reason until `gatewayctl channels reconnect`); and an account the daemon does not serve
//! shown on the channel.
//!
//! The agent is the `openai` provider on `FakeOpenAi` (replies are `llm: <text>`). Stored state
//! and `gatewayctl` output have no change notification, so those are polled; what the fake sees
//! is waited for with its Notify-based waits.

use std::time::Duration;

use gateway_tests::fake_signal::{
    FakeSignal, MAX_TEXT_BYTES, SignalFault, SignalSend, StreamMode, group_id, uuid,
};
use gateway_tests::{FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, inspect, poll_until_async};
use serde_json::{Value, json};

const ACCOUNT: &str = "+15550001111";

/// A gateway with the Signal channel on the fake, and the agent on the fake LLM.
struct Setup {
    gw: Gateway,
    sig: FakeSignal,
    _llm: FakeOpenAi,
}

/// Group chats in these tests are about sessions and payloads; the mention rule, on by default,
/// is tested in `access.rs`.
const ANSWER_EVERY_GROUP_MESSAGE: &str = "require_mention_in_groups = false\n";

/// Starts the fakes (streams keep alive every 100 ms; `modes` are the first streams' modes) and
/// the daemon; `extra` goes into `[channels.signal]`.
async fn start(modes: &[StreamMode], extra: &str) -> Setup {
    let sig = FakeSignal::start(ACCOUNT).await;
    sig.set_keepalive(Duration::from_millis(100));
    sig.queue_streams(modes);
    let llm = FakeOpenAi::start().await;
    let opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\n\
         [rate_limits.signal]\nper_second = 100.0\nburst = 100\nper_chat_per_second = 100.0\nper_chat_burst = 100\n\n\
         [channels.signal]\nenabled = true\naccount = \"{ACCOUNT}\"\nrpc_url = \"{}\"\n{extra}\n",
        llm.base_url(),
        sig.rpc_url()
    ));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    Setup { gw, sig, _llm: llm }
}

impl Setup {
    /// Waits until the sends to `chat` satisfy `pred`; returns them.
    async fn wait_sent_to(
        &self,
        chat: &str,
        what: &str,
        pred: impl Fn(&[&SignalSend]) -> bool,
    ) -> Vec<SignalSend> {
        let of = |s: &[SignalSend]| -> Vec<SignalSend> {
            s.iter().filter(|m| m.chat() == chat).cloned().collect()
        };
        match self
            .sig
            .wait_sends(|s| pred(&of(s).iter().collect::<Vec<_>>()), TIMEOUT)
            .await
        {
            Ok(s) => of(&s),
            Err(e) => panic!(
                "waiting for {what}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits for the accepted reply (first chunk) quoting `id` in `chat`.
    async fn wait_reply(&self, chat: &str, id: &str) -> SignalSend {
        let quotes = |m: &SignalSend| quotes(m, id) && m.ok;
        let sent = self
            .wait_sent_to(chat, &format!("the reply to {id}"), |s| {
                s.iter().any(|m| quotes(m))
            })
            .await;
        sent.into_iter().find(quotes).expect("found by the wait")
    }

    /// Every send quoting `id`, accepted or not.
    fn attempts_for(&self, id: &str) -> Vec<SignalSend> {
        self.sig
            .sends()
            .into_iter()
            .filter(|m| quotes(m, id))
            .collect()
    }

    /// `from` writes `text` in a direct chat and its reply arrives: every earlier reply in that
    /// chat has gone out.
    async fn barrier(&self, from: &str, text: &str) {
        let id = self.sig.write(from, "Ada", None, text, None);
        self.wait_reply(from, &id).await;
    }

    /// `signal` in `gatewayctl channels list`.
    async fn listed(&self) -> Value {
        self.gw.channel_listed("signal").await
    }

    /// Waits until `n` Signal dead letters exist; returns `gatewayctl deadletters list`.
    async fn wait_dead_letters(&self, n: u64) -> Value {
        self.gw.wait_dead_letters("signal", n).await
    }
}

/// Whether `m` quotes the message `id` (`<author>:<timestamp>`).
fn quotes(m: &SignalSend, id: &str) -> bool {
    match (&m.quote_author, m.quote_timestamp) {
        (Some(a), Some(ts)) => format!("{a}:{ts}") == id,
        _ => false,
    }
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_group_chats_round_trip_and_each_reply_quotes_its_message() {
    let s = start(&[], ANSWER_EVERY_GROUP_MESSAGE).await;
    let ada = uuid(1);
    let id = s.sig.write(&ada, "Ada", None, "hello signal", None);
    let reply = s.wait_reply(&ada, &id).await;
    assert_eq!(reply.message, "llm: hello signal");
    assert_eq!(
        reply.recipient.as_deref(),
        Some(ada.as_str()),
        "to the sender's UUID"
    );
    assert_eq!(reply.group_id, None);
    assert_eq!(reply.account.as_deref(), Some(ACCOUNT));

    // A direct chat is the person's session; a group has its own.
    let id = s.sig.write(&ada, "Ada", None, "/whoami", None);
    let whoami = s.wait_reply(&ada, &id).await;
    assert!(
        squeeze(&whoami.message).contains(&squeeze("This conversation: user:")),
        "{whoami:?}"
    );
    let group = group_id(1);
    let id = s.sig.write(&ada, "Ada", Some(&group), "/whoami", None);
    let whoami = s.wait_reply(&group, &id).await;
    assert_eq!(
        whoami.group_id.as_deref(),
        Some(group.as_str()),
        "to the group"
    );
    assert_eq!(whoami.recipient, None);
    assert!(
        squeeze(&whoami.message).contains(&squeeze(&format!(
            "This conversation: group:signal:{group}"
        ))),
        "{whoami:?}"
    );
    let id = s.sig.write(
        &uuid(2),
        "Grace",
        Some(&group),
        "a question for the group",
        None,
    );
    let reply = s.wait_reply(&group, &id).await;
    assert_eq!(reply.message, "llm: a question for the group");
    assert_eq!(reply.quote_author.as_deref(), Some(uuid(2).as_str()));

    // A message quoting another is answered like any other, and its reply quotes it.
    let (quoted_author, quoted_ts) = (ada.clone(), 1_600_000_000_000);
    let id = s.sig.write(
        &ada,
        "Ada",
        None,
        "about that",
        Some((&quoted_author, quoted_ts)),
    );
    let reply = s.wait_reply(&ada, &id).await;
    assert_eq!(reply.message, "llm: about that");
    let rows = inspect::inbox(&s.gw, "signal", &ada)
        .await
        .expect("ListInbox");
    let row = rows
        .iter()
        .find(|r| r.channel_message_id == id)
        .expect("stored under <uuid>:<timestamp>");
    assert_eq!(
        row.reply_to,
        format!("{quoted_author}:{quoted_ts}"),
        "the quote is its reply reference"
    );
    assert_eq!(row.sender_name, "Ada", "sourceName is the display name");
    assert_eq!(row.sender_id, ada);
    assert_eq!(row.chat_type, "direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_is_split_within_2000_bytes_and_never_inside_a_grapheme() {
    let s = start(&[], "").await;
    let ada = uuid(3);
    // A family emoji is one grapheme of 18 bytes (three people joined by zero-width joiners).
    let family = "👨\u{200d}👩\u{200d}👧";
    let text = format!("{family} ").repeat(3 * MAX_TEXT_BYTES / (family.len() + 1));
    let expected = format!("llm: {text}");
    let id = s.sig.write(&ada, "Ada", None, &text, None);
    let want = squeeze(&expected);
    let chunks = s
        .wait_sent_to(&ada, "every chunk", |c| {
            squeeze(&c.iter().map(|m| m.message.as_str()).collect::<String>()).len() >= want.len()
        })
        .await;
    s.barrier(&ada, "barrier").await;
    let after = s.sig.sends();
    assert_eq!(after.len(), chunks.len() + 1, "no chunk sent twice");
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.ok, "chunk {i}: {c:?}");
        assert!(
            (1..=MAX_TEXT_BYTES).contains(&c.message.len()),
            "chunk {i} is {} bytes",
            c.message.len()
        );
        let words = c.message.trim_start_matches("llm:").split_whitespace();
        for w in words {
            assert_eq!(w, family, "chunk {i} splits a grapheme: {w:?}");
        }
    }
    assert!(
        quotes(&chunks[0], &id),
        "the first chunk quotes the message"
    );
    assert!(
        chunks[1..].iter().all(|c| c.quote_timestamp.is_none()),
        "later chunks quote nothing"
    );
    let joined: String = chunks.iter().map(|c| c.message.as_str()).collect();
    assert_eq!(squeeze(&joined), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_stream_is_renewed_and_the_messages_written_after_it_arrive() {
    let s = start(
        &[StreamMode::Zombie],
        "stream_max_age = \"2s\"\nstream_idle_timeout = \"1s\"\n",
    )
    .await;
    s.sig
        .wait_streams(|st| !st.is_empty(), TIMEOUT)
        .await
        .expect("the first stream");
    let ada = uuid(4);
    // The zombie takes nothing: the message waits at signal-cli for a stream that listens.
    let id = s.sig.write(&ada, "Ada", None, "are you there?", None);
    assert_eq!(s.sig.pending(), 1, "the zombie stream did not take it");
    let reply = s.wait_reply(&ada, &id).await;
    assert_eq!(reply.message, "llm: are you there?");
    let streams = s.sig.streams();
    assert_eq!(streams[0].mode, StreamMode::Zombie);
    assert_eq!(streams[1].mode, StreamMode::Live);
    let age = streams[1].opened.duration_since(streams[0].opened);
    assert!(
        age >= Duration::from_millis(1900),
        "renewed at stream_max_age, not before: {age:?}"
    );
    assert!(
        streams[0].closed.is_none_or(|c| c >= streams[1].opened),
        "the new stream opened before the old one closed: {streams:#?}"
    );
    let log = s.gw.stderr_log();
    assert!(log.contains("Signal event stream renewed"), "{log}");
    assert!(
        !log.contains("stream_idle_timeout); replacing it"),
        "keepalives kept the zombie from looking idle: the renewal found it"
    );
    // Later messages keep arriving.
    let id = s.sig.write(&ada, "Ada", None, "and now?", None);
    s.wait_reply(&ada, &id).await;
    assert_eq!(s.attempts_for(&id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_replaced_after_the_idle_timeout() {
    let s = start(&[StreamMode::Silent], "stream_idle_timeout = \"1s\"\n").await;
    s.sig
        .wait_streams(|st| !st.is_empty(), TIMEOUT)
        .await
        .expect("the first stream");
    let ada = uuid(5);
    let id = s.sig.write(&ada, "Ada", None, "hello?", None);
    let reply = s.wait_reply(&ada, &id).await;
    assert_eq!(reply.message, "llm: hello?");
    let streams = s.sig.streams();
    assert_eq!(streams[0].mode, StreamMode::Silent);
    let gap = streams[1].opened.duration_since(streams[0].opened);
    assert!(
        gap >= Duration::from_millis(900),
        "replaced after 1 s of silence: {gap:?}"
    );
    let log = s.gw.stderr_log();
    assert!(
        log.contains("stream_idle_timeout"),
        "the log says why: {log}"
    );
    poll_until_async(TIMEOUT, "signal is connected again", || async {
        s.listed().await["state"] == "connected"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", s.gw.stderr_tail(30)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_both_streams_of_a_renewal_carry_is_answered_once() {
    let s = start(&[], "stream_max_age = \"1s\"\n").await;
    // Wait for an overlap: the renewed stream is open and the old one is still read.
    s.sig
        .wait_streams(
            |st| st.len() >= 2 && st[st.len() - 2].closed.is_none(),
            TIMEOUT,
        )
        .await
        .expect("a renewal");
    let ada = uuid(6);
    let id = s.sig.write(&ada, "Ada", None, "twice on the wire", None);
    s.wait_reply(&ada, &id).await;
    let carried = s.sig.streams().iter().filter(|st| st.events > 0).count();
    assert!(
        carried >= 2,
        "both streams carried the event: {:#?}",
        s.sig.streams()
    );
    s.barrier(&ada, "barrier").await;
    assert_eq!(s.attempts_for(&id).len(), 1, "answered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_while_gatewayd_is_stopped_are_answered_once_after_it_starts() {
    let mut s = start(&[], "").await;
    let ada = uuid(7);
    s.barrier(&ada, "before the stop").await;
    s.gw.stop().await.expect("stop");
    s.sig
        .wait_streams(|st| st.iter().all(|x| x.closed.is_some()), TIMEOUT)
        .await
        .expect("the stream closed with gatewayd");
    let first = s.sig.write(&ada, "Ada", None, "while you were out", None);
    let second = s.sig.write(&uuid(8), "Bob", None, "me too", None);
    assert_eq!(
        s.sig.pending(),
        2,
        "signal-cli keeps them for the next stream"
    );
    s.gw.restart().await.expect("restart");
    s.wait_reply(&ada, &first).await;
    s.wait_reply(&uuid(8), &second).await;
    // Another stop and start answers nothing again.
    s.gw.stop().await.expect("stop");
    s.gw.restart().await.expect("restart");
    s.barrier(&ada, "after the second start").await;
    for id in [&first, &second] {
        assert_eq!(s.attempts_for(id).len(), 1, "{id} answered once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_messages_receipts_and_malformed_events_are_skipped() {
    let mut s = start(&[], "").await;
    let ada = uuid(9);
    s.sig.event("this is not json");
    s.sig
        .event(r#"{"account":"+15550001111","envelope":{"sourceUuid":7}}"#);
    s.sig.envelope(json!({"sourceUuid": ada, "timestamp": 5, "syncMessage": {"sentMessage": {"destinationUuid": uuid(2), "message": "from my phone", "timestamp": 5}}}));
    s.sig.envelope(json!({"sourceUuid": ada, "timestamp": 6, "receiptMessage": {"when": 6, "isDelivery": true, "timestamps": [1]}}));
    s.sig.envelope(json!({"sourceUuid": ada, "timestamp": 7, "typingMessage": {"action": "STARTED", "timestamp": 7}}));
    s.sig.envelope(json!({"sourceUuid": ada, "timestamp": 8, "dataMessage": {"timestamp": 8, "reaction": {"emoji": "👍", "targetAuthorUuid": uuid(2), "targetSentTimestamp": 1, "isRemove": false}}}));
    s.sig.envelope(json!({"sourceUuid": ada, "sourceNumber": ACCOUNT, "timestamp": 9, "dataMessage": {"timestamp": 9, "message": "my own"}}));
    s.barrier(&ada, "a real one").await;
    assert_eq!(
        s.sig.sends().len(),
        1,
        "only the real message is answered: {:#?}",
        s.sig.sends()
    );
    assert!(s.gw.is_running(), "malformed events do not stop gatewayd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_network_and_minus_5_failures_are_retried_then_delivered() {
    let s = start(&[], ANSWER_EVERY_GROUP_MESSAGE).await;
    for (n, fault, at_least) in [
        (
            20,
            SignalFault::Result {
                kind: "RATE_LIMIT_FAILURE",
                retry_after: Some(1),
            },
            Duration::from_secs(1),
        ),
        (
            21,
            SignalFault::Result {
                kind: "NETWORK_FAILURE",
                retry_after: None,
            },
            Duration::ZERO,
        ),
        (
            22,
            SignalFault::Code {
                code: -5,
                message: "Failed to send message due to rate limiting",
            },
            Duration::ZERO,
        ),
        (23, SignalFault::Http(503), Duration::ZERO),
        (24, SignalFault::Drop, Duration::ZERO),
    ] {
        let chat = uuid(n);
        s.sig.push_fault(fault.clone());
        let id = s.sig.write(&chat, "Ada", None, "try again", None);
        s.wait_reply(&chat, &id).await;
        let tries = s.attempts_for(&id);
        assert_eq!(
            tries.len(),
            2,
            "{fault:?}: one failure, one retry: {tries:#?}"
        );
        assert!(!tries[0].ok && tries[1].ok, "{fault:?}: {tries:#?}");
        let waited = tries[1].at.duration_since(tries[0].at);
        assert!(waited >= at_least, "{fault:?}: retried after {waited:?}");
    }
    // A group send never throws: its results say it failed, and it is retried.
    let group = group_id(2);
    s.sig.push_fault(SignalFault::Result {
        kind: "NETWORK_FAILURE",
        retry_after: None,
    });
    let id = s
        .sig
        .write(&uuid(25), "Ada", Some(&group), "group retry", None);
    s.wait_reply(&group, &id).await;
    assert_eq!(s.attempts_for(&id).len(), 2);
    let dead = s.gw.gatewayctl_json(&["deadletters", "list"]).await;
    assert_eq!(dead["total"], 0, "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_recipient_is_a_dead_letter_that_says_why() {
    let s = start(&[], "").await;
    let chat = uuid(30);
    s.sig.push_fault(SignalFault::Result {
        kind: "UNREGISTERED_FAILURE",
        retry_after: None,
    });
    let id = s.sig.write(&chat, "Ada", None, "gone", None);
    let list = s.wait_dead_letters(1).await;
    let d = &list["dead_letters"][0];
    assert_eq!(d["error_class"], "permanent", "{d}");
    assert_eq!(d["attempts"], 1, "not retried: {d}");
    let show =
        s.gw.gatewayctl_json(&["deadletters", "show", &d["id"].to_string()])
            .await;
    let error = show["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("UNREGISTERED_FAILURE") && error.contains("not registered"),
        "{show}"
    );
    assert_eq!(s.attempts_for(&id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_holds_the_channel_as_reauth_needed_with_its_reason_until_reconnected() {
    let s = start(&[], "").await;
    for (n, fault) in [
        (40, SignalFault::CaptchaToken),
        (
            41,
            SignalFault::Code {
                code: -6,
                message: "Captcha rejected",
            },
        ),
    ] {
        let chat = uuid(n);
        s.sig.set_mode(Some(fault.clone()));
        let id = s.sig.write(&chat, "Ada", None, "held", None);
        poll_until_async(TIMEOUT, "signal is reauth_needed", || async {
            s.listed().await["state"] == "reauth_needed"
        })
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: {e}\n{}", s.gw.stderr_tail(40)));
        let listed = s.listed().await;
        let reason = listed["last_error"].as_str().unwrap_or_default();
        assert!(
            reason.contains("captcha") && reason.contains("submitRateLimitChallenge"),
            "{fault:?}: the operator is told what to do: {listed}"
        );
        let dead = s.gw.gatewayctl_json(&["deadletters", "list"]).await;
        assert_eq!(dead["total"], 0, "held, not dead-lettered: {dead}");
        s.sig.set_mode(None);
        let after =
            s.gw.gatewayctl_json(&["channels", "reconnect", "signal"])
                .await;
        assert_eq!(after["state"], "connected", "{after}");
        s.wait_reply(&chat, &id).await;
        let ok = s.attempts_for(&id).iter().filter(|t| t.ok).count();
        assert_eq!(ok, 1, "{fault:?}: the held reply is sent once");
    }
    assert!(s.sig.checks() >= 2, "each reconnect probed /api/v1/check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_daemon_does_not_serve_is_shown_on_the_channel() {
    let sig = FakeSignal::start("+15559990000").await;
    let opts = GatewayOptions::with_config(format!(
        "[channels.signal]\nenabled = true\naccount = \"{ACCOUNT}\"\nrpc_url = \"{}\"\n",
        sig.rpc_url()
    ));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    poll_until_async(TIMEOUT, "the channel shows the refusal", || async {
        let all = gw.gatewayctl_json(&["channels", "list"]).await;
        all["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["channel"] == "signal"))
            .and_then(|c| c["last_error"].as_str())
            .is_some_and(|e| e.contains("does not serve") && e.contains(ACCOUNT))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr_tail(30)));
}
