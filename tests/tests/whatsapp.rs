//! The WhatsApp channel through the real `gatewayd` binary against `FakeWhatsApp` (the Cloud
//! API, and Meta's side of the webhook: signed, ASCII-escaped JSON): the GET verification
//! handshake; a direct chat's round trip (the Cloud API has no group chats, so the direct chat
//! is the whole round trip); the signature failures (wrong secret, bad hex, missing header),
//! refused with nothing stored (Meta's signature carries no timestamp, so there is no stale
//! timestamp case); a redelivered POST answered once; a long reply split within 4096
//! characters; every class of `error.code` ending where it should (rate limits retried then
//! delivered, token codes holding the channel as `reauth_needed` in `gatewayctl channels list`
//! until `gatewayctl channels reconnect`, 131047 and 131026 dead letters whose error says why in
//! `gatewayctl deadletters show`); a reply to a chat outside the 24-hour customer-service window
//! (a workflow's message to a chat that never wrote, and one to a chat whose last message was
//! made 25 hours old in the store) dead-lettered saying why, with no request to the Cloud API; a `failed` status of a delivered reply recorded on it and shown by
//! `gatewayctl outbox list`; and a SIGKILL between the inbox commit and the reply, after which
//! the reply still arrives, once.
//!
//! The agent is the `openai` provider on `FakeOpenAi` (replies are `llm: <text>`). Stored state
//! and `gatewayctl` output have no change notification, so those are polled; what the fakes see
//! is waited for with their Notify-based waits.

use std::time::Duration;

use gateway_proto::admin as pb;
use gateway_tests::fake_whatsapp::{FakeWhatsApp, MAX_TEXT_CHARS, SentMessage, Signing, WaFault};
use gateway_tests::{
    FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, inspect, last_user_content, poll_until_async,
};
use serde_json::Value;

const TOKEN: &str = "EAAG-whatsapp-test-token";
const APP_SECRET: &str = "wa-app-secret-42";
const VERIFY_TOKEN: &str = "wa-verify-token";
const PHONE_NUMBER_ID: &str = "106540352242922";
const WEBHOOK_PATH: &str = "/channels/whatsapp/webhook";

/// A gateway with the WhatsApp channel on the fake, and the agent on the fake LLM.
struct Setup {
    gw: Gateway,
    wa: FakeWhatsApp,
    llm: FakeOpenAi,
}

/// Starts the fakes and the daemon; `extra` is appended to the config.
async fn start(extra: &str) -> Setup {
    let wa = FakeWhatsApp::start(TOKEN, PHONE_NUMBER_ID, APP_SECRET).await;
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\n\
         [channels.whatsapp]\nenabled = true\naccess_token_env = \"WA_TOKEN\"\n\
         app_secret_env = \"WA_APP_SECRET\"\nverify_token_env = \"WA_VERIFY_TOKEN\"\n\
         phone_number_id = \"{PHONE_NUMBER_ID}\"\napi_url = \"{}\"\nwebhook_path = \"{WEBHOOK_PATH}\"\n\n{extra}\n",
        llm.base_url(),
        wa.api_url()
    ));
    opts.env.push(("WA_TOKEN".to_owned(), TOKEN.to_owned()));
    opts.env
        .push(("WA_APP_SECRET".to_owned(), APP_SECRET.to_owned()));
    opts.env
        .push(("WA_VERIFY_TOKEN".to_owned(), VERIFY_TOKEN.to_owned()));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    Setup { gw, wa, llm }
}

impl Setup {
    fn url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.gw.http_base())
    }

    /// Delivers a text from `from` as Meta does; returns its wamid.
    async fn send_text(&self, from: &str, text: &str) -> String {
        let (id, env) = self.wa.text_message(from, "Ada L", text, None);
        let status = self.wa.deliver(&self.url(), &env, Signing::Good).await;
        assert_eq!(status, 200, "the signed webhook is taken");
        id
    }

    /// Waits until the sends to `to` satisfy `pred`; returns them.
    async fn wait_sent_to(
        &self,
        to: &str,
        what: &str,
        pred: impl Fn(&[&SentMessage]) -> bool,
    ) -> Vec<SentMessage> {
        let of = |s: &[SentMessage]| -> Vec<SentMessage> {
            s.iter().filter(|m| m.to == to).cloned().collect()
        };
        match self
            .wa
            .wait_sent(|s| pred(&of(s).iter().collect::<Vec<_>>()), TIMEOUT)
            .await
        {
            Ok(s) => of(&s),
            Err(e) => panic!(
                "waiting for {what}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits for the accepted reply (first chunk) to `wamid` in the chat of `to`.
    async fn wait_reply(&self, to: &str, wamid: &str) -> SentMessage {
        let sent = self
            .wait_sent_to(to, &format!("the reply to {wamid}"), |s| {
                s.iter()
                    .any(|m| m.context_message_id.as_deref() == Some(wamid) && m.is_success())
            })
            .await;
        sent.into_iter()
            .find(|m| m.context_message_id.as_deref() == Some(wamid) && m.is_success())
            .expect("found by the wait")
    }

    /// Every send answering `wamid`, accepted or not.
    fn attempts_for(&self, wamid: &str) -> Vec<SentMessage> {
        self.wa
            .sent()
            .into_iter()
            .filter(|m| m.context_message_id.as_deref() == Some(wamid))
            .collect()
    }

    /// Sends `text` from `from` and waits for its reply: every earlier reply in that chat has
    /// gone out (a chat's replies leave in order).
    async fn barrier(&self, from: &str, text: &str) {
        let id = self.send_text(from, text).await;
        self.wait_reply(from, &id).await;
    }

    fn agent_inputs(&self) -> Vec<String> {
        self.llm.requests().iter().map(last_user_content).collect()
    }

    /// `whatsapp` in `gatewayctl channels list`.
    async fn listed(&self) -> Value {
        self.gw.channel_listed("whatsapp").await
    }

    /// Waits until `n` WhatsApp dead letters exist; returns `gatewayctl deadletters list`.
    async fn wait_dead_letters(&self, n: u64) -> Value {
        self.gw.wait_dead_letters("whatsapp", n).await
    }
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

// ---------------------------------------------------------------------------------------------
// The webhook
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verification_handshake_answers_the_challenge_only_with_the_verify_token() {
    let s = start("").await;
    let url = s.url();
    let (status, body) =
        s.wa.verify(&url, "subscribe", VERIFY_TOKEN, "1158201444")
            .await;
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    let (status, body) = s.wa.verify(&url, "subscribe", "wrong", "1158201444").await;
    assert_eq!(status, 403, "a wrong verify token: {body}");
    assert!(!body.contains("1158201444"), "{body}");
    let (status, _) =
        s.wa.verify(&url, "unsubscribe", VERIFY_TOKEN, "1158201444")
            .await;
    assert_eq!(status, 403, "another mode");
}

/// WhatsApp Cloud API messages are 1:1 (the API has no group chats): the direct chat is the
/// whole round trip, and there is no group case to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_chat_round_trips_with_escaped_text_media_and_reply_context() {
    let s = start("").await;
    let from = "15551234567";
    let text = "Grüße aus Köln 😀";
    let id = s.send_text(from, text).await;
    let reply = s.wait_reply(from, &id).await;
    assert_eq!(
        reply.text,
        format!("llm: {text}"),
        "the escapes were decoded"
    );
    assert_eq!(reply.raw["messaging_product"], "whatsapp");
    assert_eq!(reply.raw["recipient_type"], "individual");
    assert!(reply.token_ok, "the access token is sent as a Bearer token");

    let rows = inspect::inbox(&s.gw, "whatsapp", from)
        .await
        .expect("ListInbox");
    let row = rows
        .iter()
        .find(|r| r.channel_message_id == id)
        .expect("the message is stored under its wamid");
    assert_eq!(row.chat_type, "direct");
    assert_eq!(row.sender_id, from);
    assert_eq!(
        row.sender_name, "Ada L",
        "the contact's profile name is kept as the sender's display name"
    );

    // A captioned image replying to the gateway's reply: the caption is the text, the media id
    // an attachment, and `context.id` the reply reference.
    let image_id = s.wa.next_wamid();
    let reply_wamid = reply.wamid.clone().expect("the reply's wamid");
    let env = s.wa.messages_envelope(
        from,
        "Ada L",
        vec![serde_json::json!({
            "from": from, "id": image_id, "timestamp": "1700000000", "type": "image",
            "image": {"id": "1479537139650973", "caption": "see this", "mime_type": "image/jpeg", "sha256": "x"},
            "context": {"from": "15550783881", "id": reply_wamid},
        })],
    );
    assert_eq!(s.wa.deliver(&s.url(), &env, Signing::Good).await, 200);
    s.wait_reply(from, &image_id).await;
    let input = s.agent_inputs().last().cloned().unwrap_or_default();
    assert!(
        input.contains("see this") && input.contains("1479537139650973"),
        "{input}"
    );
    let rows = inspect::inbox(&s.gw, "whatsapp", from)
        .await
        .expect("ListInbox");
    let row = rows
        .iter()
        .find(|r| r.channel_message_id == image_id)
        .expect("stored");
    assert_eq!(row.reply_to, reply_wamid);

    // A reaction is acknowledged and not answered.
    let reaction = s.wa.messages_envelope(
        from,
        "Ada L",
        vec![serde_json::json!({
            "from": from, "id": s.wa.next_wamid(), "timestamp": "1700000001", "type": "reaction",
            "reaction": {"message_id": reply_wamid, "emoji": "👍"},
        })],
    );
    assert_eq!(s.wa.deliver(&s.url(), &reaction, Signing::Good).await, 200);
    s.barrier(from, "after the reaction").await;
    assert_eq!(
        s.agent_inputs().len(),
        3,
        "the reaction reached no agent: {:?}",
        s.agent_inputs()
    );
}

/// Meta's `X-Hub-Signature-256` has no timestamp: there is no stale-timestamp case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_failures_are_refused_and_nothing_is_stored() {
    let s = start("").await;
    let from = "15557654321";
    let (id, env) = s.wa.text_message(from, "Mallory", "forged", None);
    for (signing, what) in [
        (Signing::WrongSecret, "a wrong secret"),
        (Signing::BadHex, "bad hex"),
        (Signing::Missing, "no header"),
    ] {
        assert_eq!(
            s.wa.deliver(&s.url(), &env, signing).await,
            401,
            "{what} is refused"
        );
    }
    let bad_json = b"{\"object\": ";
    assert_eq!(
        s.wa.deliver_raw(&s.url(), bad_json, Signing::Good).await,
        400,
        "a signed body that is not JSON"
    );
    assert!(
        inspect::inbox(&s.gw, "whatsapp", "")
            .await
            .expect("ListInbox")
            .is_empty(),
        "nothing refused is stored"
    );
    assert!(
        s.llm.requests().is_empty(),
        "nothing refused reaches the agent"
    );

    assert_eq!(s.wa.deliver(&s.url(), &env, Signing::Good).await, 200);
    let reply = s.wait_reply(from, &id).await;
    assert_eq!(reply.text, "llm: forged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_numbers_webhook_is_acknowledged_and_ignored() {
    let s = start("").await;
    let from = "15550003131";
    let (_, mut env) =
        s.wa.text_message(from, "Ada L", "for the other number", None);
    env["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] =
        serde_json::json!("999999999999999");
    assert_eq!(
        s.wa.deliver(&s.url(), &env, Signing::Good).await,
        200,
        "acknowledged, so Meta does not redeliver it"
    );
    s.barrier(from, "for this number").await;
    assert_eq!(
        s.agent_inputs(),
        ["for this number"],
        "another number's message reached no agent"
    );
    assert_eq!(
        inspect::inbox(&s.gw, "whatsapp", from)
            .await
            .expect("ListInbox")
            .len(),
        1,
        "and was not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_channel_answers_its_path_with_how_to_enable_it() {
    let gw = Gateway::start(GatewayOptions::with_config(
        "[channels.webchat]\nenabled = true\n",
    ))
    .await
    .expect("start gatewayd");
    let reply = gw
        .post_json(WEBHOOK_PATH, &serde_json::json!({}))
        .await
        .expect("POST");
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert!(
        reply.text.contains("channels.whatsapp.enabled = true"),
        "{}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_answered_once() {
    let s = start("").await;
    let from = "15550001111";
    let (id, env) = s.wa.text_message(from, "Ada L", "only once", None);
    let body = FakeWhatsApp::body_of(&env);
    assert_eq!(s.wa.deliver_raw(&s.url(), &body, Signing::Good).await, 200);
    s.wait_reply(from, &id).await;
    assert_eq!(
        s.wa.deliver_raw(&s.url(), &body, Signing::Good).await,
        200,
        "a redelivery is acknowledged"
    );
    s.barrier(from, "after the redelivery").await;
    assert_eq!(s.attempts_for(&id).len(), 1, "answered once");
    let asked = s
        .agent_inputs()
        .iter()
        .filter(|t| *t == "only once")
        .count();
    assert_eq!(asked, 1, "one agent turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_is_split_within_4096_characters() {
    let s = start("").await;
    let from = "15550002222";
    let text = "Ünïcödé wörds ".repeat(600);
    let expected = format!("llm: {text}");
    assert!(expected.chars().count() > 2 * MAX_TEXT_CHARS);
    let id = s.send_text(from, &text).await;
    let want = squeeze(&expected);
    // A send is recorded on arrival, before it is answered: wait for the accepted ones.
    let chunks: Vec<SentMessage> = s
        .wait_sent_to(from, "every chunk", |m| {
            let accepted = m.iter().filter(|m| m.is_success());
            squeeze(&accepted.map(|m| m.text.as_str()).collect::<String>()).len() >= want.len()
        })
        .await
        .into_iter()
        .filter(SentMessage::is_success)
        .collect();
    assert_eq!(chunks.len(), 3, "{chunks:#?}");
    assert_eq!(s.wa.sent().len(), 3, "no chunk was refused or sent twice");
    for c in &chunks {
        assert!(c.is_success(), "{c:?}");
        let n = c.text.chars().count();
        assert!(n <= MAX_TEXT_CHARS, "a chunk of {n} characters");
    }
    assert!(
        chunks[0].text.chars().count() > MAX_TEXT_CHARS / 2,
        "the cut is near the limit"
    );
    assert_eq!(chunks[0].context_message_id.as_deref(), Some(id.as_str()));
    assert!(
        chunks[1..].iter().all(|c| c.context_message_id.is_none()),
        "only the first chunk replies"
    );
    let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(squeeze(&joined), want);
}

// ---------------------------------------------------------------------------------------------
// Error classes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_codes_are_retried_then_delivered() {
    let s = start("").await;
    // 429 + Retry-After: retried no earlier than asked.
    let from = "15550003333";
    s.wa.push_fault(WaFault::RateLimited { secs: 1 });
    let id = s.send_text(from, "throughput").await;
    s.wait_reply(from, &id).await;
    let tries = s.attempts_for(&id);
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0].status_returned, 429);
    assert!(
        tries[1].at - tries[0].at >= Duration::from_secs(1),
        "retried after Retry-After"
    );
    // The codes of the table, as HTTP 400 and 429 bodies.
    for (n, code) in [131056, 130429, 4, 80007].into_iter().enumerate() {
        let from = format!("1555000400{n}");
        s.wa.push_fault(WaFault::code(code));
        let id = s.send_text(&from, &format!("code {code}")).await;
        s.wait_reply(&from, &id).await;
        let tries = s.attempts_for(&id);
        assert_eq!(tries.len(), 2, "{code}: one refusal, one retry: {tries:#?}");
        assert!(
            !tries[0].is_success() && tries[1].is_success(),
            "{tries:#?}"
        );
    }
    // A 5xx and a lost response are retried too (a lost response may send twice: the Cloud
    // API has no idempotency key).
    let from = "15550005555";
    s.wa.push_fault(WaFault::ServerError);
    let id = s.send_text(from, "server error").await;
    s.wait_reply(from, &id).await;
    assert_eq!(s.attempts_for(&id).len(), 2);
    s.wa.push_fault(WaFault::LoseResponse);
    let id = s.send_text(from, "lost answer").await;
    s.wait_reply(from, &id).await;
    let tries = s.attempts_for(&id);
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0].status_returned, 0, "the first answer was lost");
    assert_eq!(s.wa.sent().iter().filter(|m| m.is_success()).count(), 7);
    // The fake answers before the gateway reads the answer: wait for it to count the success.
    poll_until_async(
        TIMEOUT,
        "the channel is connected after the retries",
        || async { s.listed().await["state"] == "connected" },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", s.gw.stderr_tail(40)));
    let dead = s.gw.gatewayctl_json(&["deadletters", "list"]).await;
    assert_eq!(dead["total"], 0, "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_codes_hold_the_channel_as_reauth_needed_until_reconnected() {
    let s = start("").await;
    // A webhook channel has no connection of its own: it is `starting` until a send succeeds.
    let listed = s.listed().await;
    assert_eq!(listed["state"], "starting", "{listed}");
    assert_eq!(listed["last_error"], Value::Null, "{listed}");

    let from = "15550006666";
    s.wa.set_mode(Some(WaFault::Unauthorized));
    let id = s.send_text(from, "held for the operator").await;
    poll_until_async(
        TIMEOUT,
        "gatewayctl shows whatsapp as reauth_needed",
        || async { s.listed().await["state"] == "reauth_needed" },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let listed = s.listed().await;
    let last_error = listed["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("190"), "the code is shown: {listed}");
    assert!(!last_error.contains(TOKEN), "never the token: {listed}");
    let mut admin = inspect::admin(&s.gw).await.expect("admin");
    let info = admin
        .list_channels(pb::ListChannelsRequest {})
        .await
        .expect("ListChannels")
        .into_inner()
        .channels
        .into_iter()
        .find(|c| c.channel == "whatsapp")
        .expect("listed");
    assert_eq!(
        info.state,
        pb::ChannelState::ReauthNeeded as i32,
        "{info:?}"
    );
    let dead = s.gw.gatewayctl_json(&["deadletters", "list"]).await;
    assert_eq!(dead["total"], 0, "held, not dead-lettered: {dead}");

    // A permission code (10, HTTP 403) holds it too; then the fixed token is reconnected.
    s.wa.set_mode(Some(WaFault::code(10)));
    let after =
        s.gw.gatewayctl_json(&["channels", "reconnect", "whatsapp"])
            .await;
    assert_eq!(
        after["state"], "connected",
        "the probe does not check send permission: {after}"
    );
    poll_until_async(TIMEOUT, "a 403 with code 10 holds it again", || async {
        s.listed().await["state"] == "reauth_needed"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));

    s.wa.set_mode(None);
    let after =
        s.gw.gatewayctl_json(&["channels", "reconnect", "whatsapp"])
            .await;
    assert_eq!(after["state"], "connected", "{after}");
    let reply = s.wait_reply(from, &id).await;
    assert_eq!(reply.text, "llm: held for the operator");
    let ok = s
        .attempts_for(&id)
        .iter()
        .filter(|t| t.is_success())
        .count();
    assert_eq!(ok, 1, "the held reply is sent once");
    assert!(
        s.wa.probes()
            .iter()
            .any(|(token_ok, status)| *token_ok && *status == 200),
        "the reconnect probed the number: {:?}",
        s.wa.probes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_and_undeliverable_codes_are_dead_letters_that_say_why() {
    let s = start("").await;
    let (window, gone) = ("15550007777", "15550008888");
    s.wa.push_fault(WaFault::code(131047));
    let window_id = s.send_text(window, "a day later").await;
    s.wait_dead_letters(1).await;
    s.wa.push_fault(WaFault::code(131026));
    let gone_id = s.send_text(gone, "not on whatsapp").await;
    let list = s.wait_dead_letters(2).await;
    for (chat, wamid, words) in [
        (window, &window_id, ["131047", "24-hour"]),
        (gone, &gone_id, ["131026", "cannot be delivered"]),
    ] {
        let d = list["dead_letters"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["chat_id"] == chat))
            .unwrap_or_else(|| panic!("a dead letter for {chat}: {list}"));
        assert_eq!(d["error_class"], "permanent", "{d}");
        assert_eq!(d["attempts"], 1, "not retried: {d}");
        let id = d["id"].to_string();
        let show = s.gw.gatewayctl_json(&["deadletters", "show", &id]).await;
        let error = show["errors"][0]["error"].as_str().unwrap_or_default();
        for w in words {
            assert!(
                error.contains(w),
                "`{w}` in the dead letter's error: {show}"
            );
        }
        assert_eq!(s.attempts_for(wamid).len(), 1, "sent once");
    }
    let listed = s.listed().await;
    assert_ne!(
        listed["state"], "reauth_needed",
        "one chat's refusal: {listed}"
    );
}

// ---------------------------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_the_inbox_commit_and_the_reply_still_answers_once() {
    let mut s = start("").await;
    let from = "15550009999";
    let text = "committed then killed";
    s.llm.hold(text);
    let id = s.send_text(from, text).await;
    s.llm
        .wait_held(text, 1, TIMEOUT)
        .await
        .expect("the turn reaches the agent");
    assert!(
        inspect::inbox(&s.gw, "whatsapp", from)
            .await
            .expect("ListInbox")
            .iter()
            .any(|r| r.channel_message_id == id),
        "acknowledged only after the commit"
    );
    s.gw.kill().await;
    s.llm.release(text);
    s.gw.restart().await.expect("restart");
    let reply = s.wait_reply(from, &id).await;
    assert_eq!(reply.text, format!("llm: {text}"));
    s.barrier(from, "after the restart").await;
    let ok = s
        .attempts_for(&id)
        .iter()
        .filter(|t| t.is_success())
        .count();
    assert_eq!(ok, 1, "answered once: {:#?}", s.wa.sent());
}

// ---------------------------------------------------------------------------------------------
// The 24-hour window and delivery statuses
// ---------------------------------------------------------------------------------------------

/// A workflow whose message node writes to a WhatsApp chat that never wrote to the business.
const COLD_MESSAGE: &str = r#"
name = "cold_message"

[[nodes]]
id = "hello"
kind = "message"
channel = "whatsapp"
chat_id = "15550012345"
text = "are you there?"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_outside_the_24_hour_window_is_a_dead_letter_saying_why_and_never_sent() {
    let dir = tempfile::tempdir().expect("a workflows dir");
    std::fs::write(dir.path().join("cold_message.toml"), COLD_MESSAGE).expect("write workflow");
    let s = start(&format!(
        "[workflows]\nenabled = true\ndir = {}\n",
        gateway_tests::gateway::toml_string(&dir.path().to_string_lossy())
    ))
    .await;
    let run =
        s.gw.gatewayctl_json(&["workflows", "run", "cold_message", "--wait"])
            .await;
    let list = s.wait_dead_letters(1).await;
    let d = &list["dead_letters"][0];
    assert_eq!(d["chat_id"], "15550012345", "{list}");
    assert_eq!(d["error_class"], "permanent", "not retried: {d}");
    let show =
        s.gw.gatewayctl_json(&["deadletters", "show", &d["id"].to_string()])
            .await;
    let error = show["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("24-hour") && error.contains("no message from chat 15550012345"),
        "the dead letter says why: {show}"
    );
    assert!(
        s.wa.sent().is_empty(),
        "nothing was sent to be refused: {:#?} (run: {run})",
        s.wa.sent()
    );

    // Once the person writes, the window is open and a reply goes out.
    let id = s.send_text("15550012345", "now I wrote").await;
    s.wait_reply("15550012345", &id).await;
}

/// A workflow whose message node writes to the chat that last wrote 25 hours ago.
const LATE_MESSAGE: &str = r#"
name = "late_message"

[[nodes]]
id = "hello"
kind = "message"
channel = "whatsapp"
chat_id = "15550024680"
text = "sorry for the wait"
"#;

/// The chat's last message is made 25 hours old in the store (a stopped gateway; SQL on its
/// database, whichever the backend), then a message to it is a dead letter naming the age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_a_day_after_the_last_message_is_a_dead_letter_naming_its_age() {
    let dir = tempfile::tempdir().expect("a workflows dir");
    std::fs::write(dir.path().join("late_message.toml"), LATE_MESSAGE).expect("write workflow");
    let mut s = start(&format!(
        "[workflows]\nenabled = true\ndir = {}\n",
        gateway_tests::gateway::toml_string(&dir.path().to_string_lossy())
    ))
    .await;
    let from = "15550024680";
    let id = s.send_text(from, "hello yesterday").await;
    s.wait_reply(from, &id).await;
    s.gw.stop().await.expect("stop gatewayd");
    s.gw.execute_sql(&format!(
        "UPDATE inbox SET received_at = received_at - 25 * 3600 * 1000 \
         WHERE channel = 'whatsapp' AND chat_id = '{from}';"
    ))
    .await
    .expect("age the stored message");
    s.gw.restart().await.expect("restart");
    let sent_before = s.wa.sent().len();

    s.gw.gatewayctl_json(&["workflows", "run", "late_message", "--wait"])
        .await;
    let list = s.wait_dead_letters(1).await;
    let d = &list["dead_letters"][0];
    assert_eq!(d["chat_id"], from, "{list}");
    let show =
        s.gw.gatewayctl_json(&["deadletters", "show", &d["id"].to_string()])
            .await;
    let error = show["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("24-hour") && error.contains("last wrote 25.0 hours ago"),
        "the dead letter says why: {show}"
    );
    assert_eq!(
        s.wa.sent().len(),
        sent_before,
        "nothing was sent to be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_status_of_a_delivered_reply_is_recorded_on_it_and_shown_by_gatewayctl() {
    let s = start("").await;
    let from = "15550013579";
    let id = s.send_text(from, "will it arrive").await;
    let reply = s.wait_reply(from, &id).await;
    let wamid = reply.wamid.clone().expect("the reply's wamid");
    let outbox = || async {
        let list =
            s.gw.gatewayctl_json(&["outbox", "list", "--channel", "whatsapp", "--chat", from])
                .await;
        list["entries"]
            .as_array()
            .and_then(|e| e.first())
            .cloned()
            .unwrap_or_else(|| panic!("one reply in the outbox: {list}"))
    };
    poll_until_async(TIMEOUT, "the reply is delivered", || async {
        outbox().await["status"] == "delivered"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));

    // Statuses arrive: delivered, then failed with Meta's error.
    let delivered = s.wa.status_envelope(&wamid, from, "delivered", None);
    assert_eq!(s.wa.deliver(&s.url(), &delivered, Signing::Good).await, 200);
    poll_until_async(TIMEOUT, "the receipt says delivered", || async {
        outbox().await["receipt_status"] == "delivered"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", outbox_json(&s, from)));
    let failed = s.wa.status_envelope(
        &wamid,
        from,
        "failed",
        Some((
            131026,
            "Message undeliverable",
            "the recipient's phone cannot receive it",
        )),
    );
    assert_eq!(s.wa.deliver(&s.url(), &failed, Signing::Good).await, 200);
    poll_until_async(TIMEOUT, "the receipt says failed", || async {
        outbox().await["receipt_status"] == "failed"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", outbox_json(&s, from)));
    let entry = outbox().await;
    let error = entry["receipt_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("131026")
            && error.contains("Message undeliverable")
            && error.contains("the recipient's phone cannot receive it"),
        "{entry}"
    );
    assert_eq!(
        entry["status"], "delivered",
        "the send itself did succeed: {entry}"
    );

    // A status for a message the gateway does not know is taken, not refused; a forged one is.
    let unknown = s.wa.status_envelope("wamid.UNKNOWN", from, "read", None);
    assert_eq!(s.wa.deliver(&s.url(), &unknown, Signing::Good).await, 200);
    let read = s.wa.status_envelope(&wamid, from, "read", None);
    assert_eq!(s.wa.deliver(&s.url(), &read, Signing::Missing).await, 401);
    assert_eq!(
        outbox().await["receipt_status"],
        "failed",
        "the forged status changed nothing"
    );
}

/// The outbox of `from` as gatewayctl shows it, for a failure message.
fn outbox_json(s: &Setup, from: &str) -> String {
    let out = std::process::Command::new(gateway_tests::gatewayctl_bin())
        .args(["--addr", &s.gw.admin_url(), "--output", "json"])
        .args(["outbox", "list", "--channel", "whatsapp", "--chat", from])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("gatewayctl did not run: {e}"),
    }
}
