//! The iMessage channel through the real `gatewayd` binary against `FakeBlueBubbles` (the
//! server's REST API, and the Mac's side of the webhook): a direct (`;-;`) and a group (`;+;`)
//! round trip; a reply's reference (`selectedMessageGuid` with private-api, none with
//! AppleScript, and the person's `threadOriginatorGuid` kept on the inbox row); a long reply
//! split within 4000 characters, in order; the webhook's password refused with nothing stored,
//! and the events that are acknowledged without an answer (the Mac's own messages, other
//! events, messages without a chat); replayed webhooks (the same guid again, also after a
//! restart, and a week-old message never seen) answered zero more times; the catch-up through
//! `message/query` answering what arrived while gatewayd was stopped exactly once (never the
//! Mac's own messages, never the history before the first start), and what arrived while the
//! server's ping failed once the listener reconnected; and every class of send error ending where
//! it should (500 retried, 400 a dead letter with the server's message, 401 holding the channel as
//! `reauth_needed` until `gatewayctl channels reconnect`, a hanging send cut at
//! `request_timeout` whose retry the server answers "already queued" and which counts as sent,
//! once).
//!
//! The agent is the `openai` provider on `FakeOpenAi` (replies are `llm: <text>`). Stored state
//! and `gatewayctl` output have no change notification, so those are polled; what the fake sees
//! is waited for with its Notify-based waits.

use std::time::Duration;

use gateway_tests::fake_bluebubbles::{
    BbFault, FakeBlueBubbles, MAX_TEXT_CHARS, PingMode, SentText, direct_chat, group_chat,
};
use gateway_tests::{
    FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, inspect, last_user_content, poll_until_async,
    replies,
};
use serde_json::{Value, json};

const PASSWORD: &str = "bb-server-password-42";
const WEBHOOK_PATH: &str = "/channels/imessage/webhook";
/// Long enough for the listener's next ping (every `catch_up_interval`), its backoff and a
/// catch-up.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway with the iMessage channel on the fake, and the agent on the fake LLM.
struct Setup {
    gw: Gateway,
    bb: FakeBlueBubbles,
    llm: FakeOpenAi,
}

/// `send_method = "private-api"`: replies carry `selectedMessageGuid`, so a reply names the
/// message it answers.
const PRIVATE: &str = "send_method = \"private-api\"\n";

/// Starts the fakes and the daemon; `keys` go into `[channels.imessage]`, `extra` after it.
async fn start_with(keys: &str, extra: &str) -> Setup {
    launch(FakeBlueBubbles::start(PASSWORD).await, keys, extra).await
}

/// Starts the agent's fake and the daemon on the BlueBubbles fake `bb`.
async fn launch(bb: FakeBlueBubbles, keys: &str, extra: &str) -> Setup {
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\n\
         [channels.imessage]\nenabled = true\nserver_url = \"{}\"\npassword_env = \"BB_PASSWORD\"\n\
         webhook_path = \"{WEBHOOK_PATH}\"\n{keys}\n\
         [rate_limits.imessage]\nper_second = 100\nburst = 100\n\n{extra}\n",
        llm.base_url(),
        bb.server_url()
    ));
    opts.env
        .push(("BB_PASSWORD".to_owned(), PASSWORD.to_owned()));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    Setup { gw, bb, llm }
}

async fn start(keys: &str) -> Setup {
    start_with(keys, "").await
}

impl Setup {
    fn url(&self) -> String {
        format!("{}{WEBHOOK_PATH}", self.gw.http_base())
    }

    /// A person at `address` writes `text` in `chat`: stored and delivered by webhook; returns
    /// the message's guid.
    async fn say(&self, address: &str, chat: &str, text: &str) -> String {
        let (guid, status) = self
            .bb
            .receive(&self.url(), self.bb.incoming(address, chat, text))
            .await;
        assert_eq!(status, 200, "the webhook with the password is taken");
        guid
    }

    /// Waits until the sends satisfy `pred`, within `timeout`; returns them.
    async fn wait_sent_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[SentText]) -> bool,
    ) -> Vec<SentText> {
        match self.bb.wait_sent(pred, timeout).await {
            Ok(s) => s,
            Err(e) => panic!(
                "waiting for {what}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits, within `timeout`, for the accepted reply (first chunk) selecting `guid` in `chat`.
    async fn wait_reply_for(&self, chat: &str, guid: &str, timeout: Duration) -> SentText {
        let is_reply =
            |m: &SentText| m.chat_guid == chat && m.selected_message_guid.as_deref() == Some(guid);
        let sent = self
            .wait_sent_for(&format!("the reply to {guid}"), timeout, |s| {
                s.iter().any(|m| is_reply(m) && m.is_success())
            })
            .await;
        sent.into_iter()
            .find(|m| is_reply(m) && m.is_success())
            .expect("found by the wait")
    }

    async fn wait_reply(&self, chat: &str, guid: &str) -> SentText {
        self.wait_reply_for(chat, guid, TIMEOUT).await
    }

    /// Every send selecting `guid`, accepted or not.
    fn attempts_for(&self, guid: &str) -> Vec<SentText> {
        self.bb
            .sent()
            .into_iter()
            .filter(|m| m.selected_message_guid.as_deref() == Some(guid))
            .collect()
    }

    /// The accepted replies to `guid`.
    fn replies_to(&self, guid: &str) -> usize {
        self.attempts_for(guid)
            .iter()
            .filter(|m| m.is_success())
            .count()
    }

    /// Writes in `chat` and waits for the reply: every earlier reply in the chat has gone out.
    async fn barrier(&self, address: &str, chat: &str) {
        let guid = self.say(address, chat, "barrier").await;
        self.wait_reply(chat, &guid).await;
    }

    fn agent_inputs(&self) -> Vec<String> {
        self.llm.requests().iter().map(last_user_content).collect()
    }

    /// `imessage` in `gatewayctl channels list`.
    async fn listed(&self) -> Value {
        self.gw.channel_listed("imessage").await
    }

    async fn wait_state(&self, state: &str) {
        poll_until_async(TIMEOUT, &format!("imessage is {state}"), || async {
            self.listed().await["state"] == state
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.gw.stderr_tail(40)));
    }

    /// Waits until `n` iMessage dead letters exist; returns `gatewayctl deadletters list`.
    async fn wait_dead_letters(&self, n: u64) -> Value {
        self.gw.wait_dead_letters("imessage", n).await
    }

    /// The gateway's own messages the fake stored with text `text`.
    fn own_messages(&self, text: &str) -> usize {
        self.bb
            .messages()
            .iter()
            .filter(|m| m["isFromMe"] == true && m["text"] == text)
            .count()
    }
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

// ---------------------------------------------------------------------------------------------
// Round trips and references
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_and_a_group_chat_round_trip() {
    let s = start(PRIVATE).await;
    let ada = "+15551230001";
    let chat = direct_chat(ada);
    let text = "Grüße aus Köln 😀";
    let guid = s.say(ada, &chat, text).await;
    let reply = s.wait_reply(&chat, &guid).await;
    assert_eq!(reply.message, format!("llm: {text}"));
    assert_eq!(reply.method, "private-api");
    assert!(reply.password_ok, "the password is sent in the query");
    assert!(reply.temp_guid.starts_with("gatewayd-"), "{reply:?}");
    let rows = inspect::inbox(&s.gw, "imessage", &chat)
        .await
        .expect("ListInbox");
    let row = rows
        .iter()
        .find(|r| r.channel_message_id == guid)
        .expect("the message is stored under its guid");
    assert_eq!(row.chat_type, "direct");
    assert_eq!(row.sender_id, ada);
    assert_eq!(row.text, text);

    // A group: `;+;` in the chat guid; /whoami names the group's own session.
    let group = group_chat(1);
    let id = s.say("+15551230002", &group, "/whoami").await;
    let whoami = s.wait_reply(&group, &id).await;
    assert_eq!(
        replies::whoami_conversation(&whoami.message),
        format!("group:imessage:{group} (a group chat has its own session)"),
        "{whoami:?}"
    );
    let id = s
        .say("+15551230003", &group, "a question for the group")
        .await;
    let reply = s.wait_reply(&group, &id).await;
    assert_eq!(reply.message, "llm: a question for the group");
    let rows = inspect::inbox(&s.gw, "imessage", &group)
        .await
        .expect("ListInbox");
    let row = rows
        .iter()
        .find(|r| r.channel_message_id == id)
        .expect("stored");
    assert_eq!(row.chat_type, "group");
    assert_eq!(row.sender_id, "+15551230003");
    assert_eq!(
        s.agent_inputs(),
        [text, "a question for the group"],
        "commands never reach the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_keeps_its_reference_through_private_api() {
    let s = start(PRIVATE).await;
    let ada = "+15551230011";
    let chat = direct_chat(ada);
    let first = s.say(ada, &chat, "first").await;
    let reply = s.wait_reply(&chat, &first).await;
    // The person answers the gateway's reply in a thread.
    let mut threaded = s.bb.incoming(ada, &chat, "in the thread");
    let reply_guid = reply.guid.clone().expect("the reply's guid");
    threaded["threadOriginatorGuid"] = json!(reply_guid);
    let (id, status) = s.bb.receive(&s.url(), threaded).await;
    assert_eq!(status, 200);
    let answer = s.wait_reply(&chat, &id).await;
    assert_eq!(answer.selected_message_guid.as_deref(), Some(id.as_str()));
    let rows = inspect::inbox(&s.gw, "imessage", &chat)
        .await
        .expect("ListInbox");
    let row = rows
        .iter()
        .find(|r| r.channel_message_id == id)
        .expect("stored");
    assert_eq!(
        row.reply_to, reply_guid,
        "threadOriginatorGuid is the reference"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_script_sends_carry_no_reply_reference() {
    // The default method.
    let s = start("").await;
    let ada = "+15551230021";
    let chat = direct_chat(ada);
    s.say(ada, &chat, "plain").await;
    let sent = s
        .wait_sent_for("the reply", TIMEOUT, |m| {
            m.iter()
                .any(|m| m.is_success() && m.message == "llm: plain")
        })
        .await;
    let reply = sent
        .iter()
        .find(|m| m.message == "llm: plain")
        .expect("found by the wait");
    assert_eq!(reply.method, "apple-script");
    assert_eq!(reply.chat_guid, chat);
    assert_eq!(
        reply.selected_message_guid, None,
        "AppleScript cannot reply to a given message"
    );
    assert!(!reply.temp_guid.is_empty(), "AppleScript needs a tempGuid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_is_split_within_4000_characters_in_order() {
    let s = start(PRIVATE).await;
    let ada = "+15551230031";
    let chat = direct_chat(ada);
    let text = "Ünïcödé wörds ".repeat(600);
    let expected = format!("llm: {text}");
    assert!(expected.chars().count() > 2 * MAX_TEXT_CHARS);
    let guid = s.say(ada, &chat, &text).await;
    let want = squeeze(&expected);
    let chunks: Vec<SentText> = s
        .wait_sent_for("every chunk", TIMEOUT, |m| {
            let accepted = m.iter().filter(|m| m.chat_guid == chat && m.is_success());
            squeeze(&accepted.map(|m| m.message.as_str()).collect::<String>()).len() >= want.len()
        })
        .await
        .into_iter()
        .filter(|m| m.chat_guid == chat && m.is_success())
        .collect();
    assert_eq!(chunks.len(), 3, "{chunks:#?}");
    assert_eq!(s.bb.sent().len(), 3, "no chunk was refused or sent twice");
    for c in &chunks {
        let n = c.message.chars().count();
        assert!(n <= MAX_TEXT_CHARS, "a chunk of {n} characters");
    }
    assert!(
        chunks[0].message.chars().count() > MAX_TEXT_CHARS / 2,
        "the cut is near the limit"
    );
    assert_eq!(
        chunks[0].selected_message_guid.as_deref(),
        Some(guid.as_str())
    );
    assert!(
        chunks[1..]
            .iter()
            .all(|c| c.selected_message_guid.is_none()),
        "only the first chunk replies"
    );
    let temps: Vec<&str> = chunks.iter().map(|c| c.temp_guid.as_str()).collect();
    let outbox_id = temps[0]
        .strip_prefix("gatewayd-")
        .and_then(|t| t.strip_suffix("-1"))
        .unwrap_or_else(|| panic!("a chunk's tempGuid: {temps:?}"));
    assert_eq!(
        temps,
        [1, 2, 3].map(|n| format!("gatewayd-{outbox_id}-{n}")),
        "one tempGuid per chunk"
    );
    let joined: String = chunks.iter().map(|c| c.message.as_str()).collect();
    assert_eq!(
        squeeze(&joined),
        want,
        "the chunks, in order, are the reply"
    );
}

// ---------------------------------------------------------------------------------------------
// The webhook
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_what_is_not_a_message_is_not_answered() {
    let s = start(PRIVATE).await;
    let ada = "+15551230041";
    let chat = direct_chat(ada);
    let msg = s.bb.incoming(ada, &chat, "forged");
    let event = json!({"type": "new-message", "data": msg});
    assert_eq!(
        s.bb.deliver_event(&s.url(), &event, Some("not-the-password"))
            .await,
        401,
        "a wrong password"
    );
    assert_eq!(
        s.bb.deliver_event(&s.url(), &event, None).await,
        401,
        "no password"
    );
    assert_eq!(
        s.bb.deliver_raw(&s.url(), b"{\"type\": \"new-mess").await,
        400,
        "a body that is not JSON"
    );
    // Acknowledged, never answered: the Mac's own message, another event, a message with no
    // chat, a message with no sender.
    let mut own = s.bb.incoming(ada, &chat, "sent from my iPhone");
    own["isFromMe"] = json!(true);
    own["handle"] = Value::Null;
    assert_eq!(s.bb.deliver(&s.url(), &own).await, 200);
    let typing = json!({"type": "typing-indicator", "data": {"display": true, "guid": chat}});
    assert_eq!(
        s.bb.deliver_event(&s.url(), &typing, Some(PASSWORD)).await,
        200
    );
    let mut no_chat = s.bb.incoming(ada, &chat, "nowhere");
    no_chat.as_object_mut().map(|o| o.remove("chats"));
    assert_eq!(s.bb.deliver(&s.url(), &no_chat).await, 200);
    let mut no_handle = s.bb.incoming(ada, &chat, "nobody");
    no_handle["handle"] = Value::Null;
    assert_eq!(s.bb.deliver(&s.url(), &no_handle).await, 200);

    s.barrier(ada, &chat).await;
    assert_eq!(
        s.agent_inputs(),
        ["barrier"],
        "only the barrier reached the agent"
    );
    let rows = inspect::inbox(&s.gw, "imessage", "")
        .await
        .expect("ListInbox");
    assert_eq!(rows.len(), 1, "only the barrier is stored: {rows:?}");
    assert!(
        s.gw.stderr_log().contains("no chats[0].guid"),
        "the message without a chat is logged"
    );
    assert!(
        !s.gw.stderr_log().contains(PASSWORD),
        "the password is never logged"
    );

    // The forged message with the right password is answered.
    assert_eq!(s.bb.deliver(&s.url(), &msg).await, 200);
    let guid = msg["guid"].as_str().expect("a guid");
    assert_eq!(s.wait_reply(&chat, guid).await.message, "llm: forged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_channel_answers_its_path_with_how_to_enable_it() {
    let gw = Gateway::start(GatewayOptions::with_config(
        "[channels.webchat]\nenabled = true\n",
    ))
    .await
    .expect("start gatewayd");
    let reply = gw.post_json(WEBHOOK_PATH, &json!({})).await.expect("POST");
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert!(
        reply.text.contains("channels.imessage.enabled = true"),
        "{}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_webhooks_are_answered_zero_more_times() {
    let mut s = start(PRIVATE).await;
    let ada = "+15551230051";
    let chat = direct_chat(ada);
    let guid = s.say(ada, &chat, "only once").await;
    s.wait_reply(&chat, &guid).await;
    assert_eq!(
        s.bb.replay(&s.url(), &guid).await,
        200,
        "a replay is acknowledged"
    );
    s.barrier(ada, &chat).await;
    assert_eq!(s.replies_to(&guid), 1, "the replay is not answered");

    // BlueBubbles restarts and replays it again, after gatewayd restarted too.
    s.gw.stop().await.expect("stop gatewayd");
    s.gw.restart().await.expect("restart");
    assert_eq!(s.bb.replay(&s.url(), &guid).await, 200);
    // A week-old message the gateway never saw: its dedupe key would be gone, so it is dropped.
    let old = s.bb.incoming_aged(
        ada,
        &chat,
        "from last week",
        Duration::from_secs(7 * 86_400 + 3600),
    );
    let (old_guid, status) = s.bb.receive(&s.url(), old).await;
    assert_eq!(status, 200, "acknowledged, so BlueBubbles moves on");
    s.barrier(ada, &chat).await;
    assert_eq!(s.replies_to(&guid), 1, "answered once in all");
    assert_eq!(
        s.replies_to(&old_guid),
        0,
        "the week-old replay is not answered"
    );
    let asked = s.agent_inputs();
    assert_eq!(
        asked.iter().filter(|t| *t == "only once").count(),
        1,
        "{asked:?}"
    );
    assert!(!asked.iter().any(|t| t == "from last week"), "{asked:?}");
    assert!(
        !inspect::inbox(&s.gw, "imessage", &chat)
            .await
            .expect("ListInbox")
            .iter()
            .any(|r| r.channel_message_id == old_guid),
        "the stale message is not stored"
    );
}

// ---------------------------------------------------------------------------------------------
// Catch-up
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_arrived_while_gatewayd_was_stopped_are_answered_once_after_it_starts() {
    let before_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut s = start(PRIVATE).await;
    let ada = "+15551230061";
    let chat = direct_chat(ada);
    let group = group_chat(6);
    let first = s.say(ada, &chat, "before the stop").await;
    s.wait_reply(&chat, &first).await;
    s.gw.stop().await.expect("stop gatewayd");

    // BlueBubbles gets these while the gateway is down, and never retries their webhooks.
    let down_1 = s.bb.store(s.bb.incoming(ada, &chat, "while you were down"));
    let down_2 =
        s.bb.store(s.bb.incoming("+15551230062", &group, "the group too"));
    let mut own = s.bb.incoming(ada, &chat, "sent from my iPhone");
    own["isFromMe"] = json!(true);
    own["handle"] = Value::Null;
    let own_guid = s.bb.store(own);
    let queries_before = s.bb.queries().len();

    s.gw.restart().await.expect("restart");
    let reply = s.wait_reply(&chat, &down_1).await;
    assert_eq!(reply.message, "llm: while you were down");
    s.wait_reply(&group, &down_2).await;
    let queries = s.bb.queries();
    let q = queries
        .get(queries_before)
        .unwrap_or_else(|| panic!("a catch-up query: {queries:?}"));
    assert_eq!(q["sort"], "ASC", "{q}");
    assert_eq!(q["with"], json!(["chat", "handle"]), "{q}");
    assert_eq!(q["offset"], 0, "{q}");
    assert_eq!(q["limit"], 100, "{q}");
    let (after, down_at) = (
        q["after"].as_i64().unwrap_or_default(),
        s.bb.stored(&down_1).expect("stored")["dateCreated"]
            .as_i64()
            .unwrap_or_default(),
    );
    // The watermark is the first start's clock, or the newest dateCreated a catch-up committed
    // since: never the Mac's whole history, and never past what arrived meanwhile.
    assert!(
        before_start <= after && after <= down_at,
        "from the watermark (set at the first start, {before_start} or later), \
         not after what arrived meanwhile ({down_at}): {q}"
    );

    s.barrier(ada, &chat).await;
    s.barrier("+15551230062", &group).await;
    // A restart more: the catch-up fetches them again, and the dedupe absorbs them.
    s.gw.stop().await.expect("stop gatewayd");
    s.gw.restart().await.expect("restart");
    s.bb.wait_queries(|q| q.len() > queries_before + 1, TIMEOUT)
        .await
        .expect("a catch-up after the second restart");
    s.barrier(ada, &chat).await;
    for (guid, what) in [
        (&first, "before the stop"),
        (&down_1, "direct"),
        (&down_2, "group"),
    ] {
        assert_eq!(s.replies_to(guid), 1, "{what} is answered exactly once");
    }
    assert_eq!(
        s.replies_to(&own_guid),
        0,
        "the Mac's own message is never answered"
    );
    let asked = s.agent_inputs();
    assert!(
        !asked.iter().any(|t| t == "sent from my iPhone"),
        "{asked:?}"
    );
    assert!(
        !asked.iter().any(|t| t.starts_with("llm: ")),
        "the gateway's own replies, which BlueBubbles stores too, are never answered: {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_answers_none_of_the_macs_history() {
    // The Mac has a conversation from before gatewayd was ever started.
    let bb = FakeBlueBubbles::start(PASSWORD).await;
    let ada = "+15551230071";
    let chat = direct_chat(ada);
    let old =
        bb.store(bb.incoming_aged(ada, &chat, "an old conversation", Duration::from_secs(60)));
    let mut s = launch(bb, PRIVATE, "").await;
    s.wait_state("connected").await;
    s.barrier(ada, &chat).await;
    // A restart catches up from the watermark, which the first start set: still not answered.
    let queries = s.bb.queries().len();
    s.gw.stop().await.expect("stop gatewayd");
    s.gw.restart().await.expect("restart");
    s.bb.wait_queries(|q| q.len() > queries, TIMEOUT)
        .await
        .expect("a catch-up after the restart");
    s.barrier(ada, &chat).await;
    assert_eq!(s.replies_to(&old), 0, "the history is not answered");
    assert!(
        !s.agent_inputs().iter().any(|t| t == "an old conversation"),
        "{:?}",
        s.agent_inputs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_ping_the_listener_reconnects_and_catches_up() {
    let s = start(&format!("{PRIVATE}catch_up_interval = \"1s\"\n")).await;
    let ada = "+15551230081";
    let chat = direct_chat(ada);
    s.barrier(ada, &chat).await;
    s.wait_state("connected").await;

    s.bb.set_ping_mode(PingMode::Fail);
    s.bb.wait_pings(|p| p.contains(&500), RECONNECT_TIMEOUT)
        .await
        .expect("the listener's next ping fails");
    poll_until_async(TIMEOUT, "imessage is no longer connected", || async {
        s.listed().await["state"] != "connected"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    // Meanwhile the webhook does not reach the gateway: only the Mac has the message.
    let lost =
        s.bb.store(s.bb.incoming(ada, &chat, "sent during the outage"));
    let queries_before = s.bb.queries().len();
    s.bb.set_ping_mode(PingMode::Ok);
    let reply = s.wait_reply_for(&chat, &lost, RECONNECT_TIMEOUT).await;
    assert_eq!(reply.message, "llm: sent during the outage");
    assert!(s.bb.queries().len() > queries_before, "found by a catch-up");
    s.wait_state("connected").await;
    s.barrier(ada, &chat).await;
    assert_eq!(s.replies_to(&lost), 1, "answered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_came_is_made_up_by_the_next_catch_up_despite_newer_ones() {
    let s = start(&format!("{PRIVATE}catch_up_interval = \"1s\"\n")).await;
    let ada = "+15551230085";
    let chat = direct_chat(ada);
    s.barrier(ada, &chat).await;
    // The Mac has a message whose webhook never reached the gateway, then one whose did.
    let queries_before = s.bb.queries().len();
    let lost =
        s.bb.store(s.bb.incoming(ada, &chat, "the webhook was lost"));
    let later = s.say(ada, &chat, "this one came").await;
    s.wait_reply(&chat, &later).await;
    let reply = s.wait_reply(&chat, &lost).await;
    assert_eq!(reply.message, "llm: the webhook was lost");
    assert!(
        s.bb.queries().len() > queries_before,
        "found by a periodic catch-up, not a reconnect"
    );
    // Both stay answered once, through more catch-ups.
    s.bb.wait_queries(|q| q.len() >= queries_before + 3, TIMEOUT)
        .await
        .expect("more catch-ups");
    s.barrier(ada, &chat).await;
    assert_eq!(s.replies_to(&lost), 1);
    assert_eq!(s.replies_to(&later), 1);
}

// ---------------------------------------------------------------------------------------------
// Error classes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_imessage_error_is_retried_then_delivered() {
    let s = start(PRIVATE).await;
    let ada = "+15551230091";
    let chat = direct_chat(ada);
    s.bb.push_fault(BbFault::ServerError);
    s.bb.push_fault(BbFault::ServerError);
    let guid = s.say(ada, &chat, "try again").await;
    s.wait_reply(&chat, &guid).await;
    let tries = s.attempts_for(&guid);
    assert_eq!(tries.len(), 3, "{tries:#?}");
    assert_eq!(
        tries.iter().map(|t| t.status_returned).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    assert!(
        tries.iter().all(|t| t.temp_guid == tries[0].temp_guid),
        "a retry keeps its tempGuid"
    );
    assert_eq!(s.own_messages("llm: try again"), 1);
    let dead = s.gw.gatewayctl_json(&["deadletters", "list"]).await;
    assert_eq!(dead["total"], 0, "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_a_dead_letter_with_the_servers_message() {
    let s = start(PRIVATE).await;
    let ada = "+15551230101";
    let chat = direct_chat(ada);
    s.bb.push_fault(BbFault::BadRequest);
    let guid = s.say(ada, &chat, "to a chat that is gone").await;
    let list = s.wait_dead_letters(1).await;
    let d = &list["dead_letters"][0];
    assert_eq!(d["chat_id"], chat.as_str(), "{list}");
    assert_eq!(d["error_class"], "permanent", "{d}");
    assert_eq!(d["attempts"], 1, "not retried: {d}");
    let show =
        s.gw.gatewayctl_json(&["deadletters", "show", &d["id"].to_string()])
            .await;
    let error = show["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("400")
            && error.contains("Validation Error")
            && error.contains("Chat does not exist"),
        "the dead letter says why: {show}"
    );
    assert!(!error.contains(PASSWORD), "{show}");
    assert_eq!(s.attempts_for(&guid).len(), 1, "sent once");
    assert_ne!(s.listed().await["state"], "reauth_needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_holds_the_channel_as_reauth_needed_until_reconnected() {
    let s = start(PRIVATE).await;
    let ada = "+15551230111";
    let chat = direct_chat(ada);
    s.bb.set_mode(Some(BbFault::Unauthorized));
    let guid = s.say(ada, &chat, "held for the operator").await;
    s.wait_state("reauth_needed").await;
    let listed = s.listed().await;
    let last_error = listed["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("401"), "the status is shown: {listed}");
    assert!(
        !last_error.contains(PASSWORD),
        "never the password: {listed}"
    );
    let dead = s.gw.gatewayctl_json(&["deadletters", "list"]).await;
    assert_eq!(dead["total"], 0, "held, not dead-lettered: {dead}");

    s.bb.set_mode(None);
    let after =
        s.gw.gatewayctl_json(&["channels", "reconnect", "imessage"])
            .await;
    assert_eq!(after["state"], "connected", "{after}");
    let reply = s.wait_reply(&chat, &guid).await;
    assert_eq!(reply.message, "llm: held for the operator");
    assert_eq!(s.replies_to(&guid), 1, "the held reply is sent once");
    assert!(
        s.bb.pings().contains(&200),
        "the reconnect pinged the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_send_is_cut_at_request_timeout_and_its_already_queued_retry_counts_as_sent() {
    let s = start(&format!("{PRIVATE}request_timeout = \"1s\"\n")).await;
    let ada = "+15551230121";
    let chat = direct_chat(ada);
    // The server takes the message, then hangs far longer than request_timeout.
    s.bb.push_fault(BbFault::Hang(Duration::from_secs(8)));
    let guid = s.say(ada, &chat, "a slow Mac").await;
    let tries = s
        .wait_sent_for("the retry after the timeout", TIMEOUT, |m| {
            m.iter()
                .filter(|m| m.selected_message_guid.as_deref() == Some(guid.as_str()))
                .any(|m| m.already_queued)
        })
        .await;
    let tries: Vec<&SentText> = tries
        .iter()
        .filter(|m| m.selected_message_guid.as_deref() == Some(guid.as_str()))
        .collect();
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(
        tries[0].temp_guid, tries[1].temp_guid,
        "the retry keeps its tempGuid"
    );
    let gap = tries[1].at.duration_since(tries[0].at);
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(6),
        "cut at the 1 s request_timeout, not after the 8 s hang: {gap:?}"
    );
    assert_eq!(tries[1].status_returned, 400);
    // Counted as sent: the outbox row is done and nothing is dead-lettered or sent again.
    poll_until_async(TIMEOUT, "the reply is delivered", || async {
        let list =
            s.gw.gatewayctl_json(&["outbox", "list", "--channel", "imessage", "--chat", &chat])
                .await;
        list["entries"][0]["status"] == "delivered"
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    s.barrier(ada, &chat).await;
    assert_eq!(s.own_messages("llm: a slow Mac"), 1, "sent once");
    assert_eq!(s.attempts_for(&guid).len(), 2, "no third try");
    let dead = s.gw.gatewayctl_json(&["deadletters", "list"]).await;
    assert_eq!(dead["total"], 0, "{dead}");
    assert!(
        s.gw.stderr_log().contains("already has this chunk queued"),
        "the log says why it counts as sent"
    );
}
