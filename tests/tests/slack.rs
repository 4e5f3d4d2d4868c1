//! The Slack channel through the real `gatewayd` binary against `FakeSlack`: the Events API
//! (the `url_verification` challenge, request signatures refused with nothing stored, a
//! redelivered event and the `app_mention` twin of a message answered once, direct and group
//! chats, the mention rule, threads), Socket Mode (envelopes acknowledged after their commit, a
//! `disconnect` followed by a new connection before the old socket closes, a silent socket
//! replaced), and sending: replies split within 4000 characters, every error class ending where
//! the table says (429 and 5xx retried, `ok:false` codes retried, dead-lettered or held for
//! re-authentication as `gatewayctl channels list` shows), a lost `chat.postMessage` response
//! not posted again, and a SIGKILL between the inbox commit and the reply.
//!
//! The agent is the `openai` provider on `FakeOpenAi` (replies are `llm: <text>`). Stored state
//! and `gatewayctl` output have no change notification, so those are polled; everything the fake
//! sees is waited for with its Notify-based waits.

use std::time::Duration;

use gateway_tests::fake_slack::{
    BOT_ID, BOT_USER_ID, FakeSlack, Post, Signing, SlackFault, SocketCmd,
};
use gateway_tests::{
    FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, inspect, last_user_content, poll_until_async,
};
use serde_json::{Value, json};

const BOT_TOKEN: &str = "xoxb-slack-test-token";
const APP_TOKEN: &str = "xapp-slack-test-token";
const SIGNING_SECRET: &str = "slack-signing-secret-42";
const EVENTS_PATH: &str = "/channels/slack/events";

struct Setup {
    gw: Gateway,
    slack: FakeSlack,
    llm: FakeOpenAi,
}

/// Starts the fakes and the daemon in `mode`; `extra` goes into `[channels.slack]`.
async fn start(mode: &str, extra: &str) -> Setup {
    let slack = FakeSlack::start(BOT_TOKEN, APP_TOKEN, SIGNING_SECRET).await;
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\n\
         [channels.slack]\nenabled = true\nmode = \"{mode}\"\nbot_token_env = \"SLACK_BOT_TOKEN\"\n\
         signing_secret_env = \"SLACK_SIGNING_SECRET\"\napp_token_env = \"SLACK_APP_TOKEN\"\n\
         api_url = \"{}\"\nrequest_timeout = \"2s\"\n{extra}\n",
        llm.base_url(),
        slack.api_url()
    ));
    for (k, v) in [
        ("SLACK_BOT_TOKEN", BOT_TOKEN),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
        ("SLACK_APP_TOKEN", APP_TOKEN),
    ] {
        opts.env.push((k.to_owned(), v.to_owned()));
    }
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    Setup { gw, slack, llm }
}

impl Setup {
    fn url(&self) -> String {
        format!("{}{EVENTS_PATH}", self.gw.http_base())
    }

    /// Delivers `body` signed per `signing`; the status.
    async fn deliver(&self, body: &Value, signing: Signing, retry: Option<u32>) -> (u16, String) {
        self.slack
            .deliver(&self.url(), body, signing, retry)
            .await
            .expect("POST the event")
    }

    /// A correctly signed message event from `user` in `channel`; its `ts`.
    async fn say(&self, channel: &str, kind: &str, user: &str, text: &str) -> String {
        let (body, ts) = self.slack.message_event(channel, kind, user, text, None);
        let (status, answer) = self.deliver(&body, Signing::Correct, None).await;
        assert_eq!(status, 200, "{answer}\n{}", self.gw.stderr_tail(30));
        ts
    }

    /// Waits until the successful posts to `channel` satisfy `pred`; returns them.
    async fn wait_posts_in(
        &self,
        channel: &str,
        what: &str,
        pred: impl Fn(&[Post]) -> bool,
    ) -> Vec<Post> {
        let of = |p: &[Post]| -> Vec<Post> {
            p.iter()
                .filter(|p| p.channel == channel && p.is_success())
                .cloned()
                .collect()
        };
        match self.slack.wait_posts(|p| pred(&of(p)), TIMEOUT).await {
            Ok(p) => of(&p),
            Err(e) => panic!(
                "waiting for {what}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits for a successful post with `text` in `channel`.
    async fn wait_reply(&self, channel: &str, text: &str) -> Post {
        let posts = self
            .wait_posts_in(channel, &format!("`{text}` in {channel}"), |p| {
                p.iter().any(|p| p.text == text)
            })
            .await;
        posts
            .into_iter()
            .find(|p| p.text == text)
            .expect("found by the wait")
    }

    /// Every post with `text` in `channel`, accepted or not.
    fn posts_of(&self, channel: &str, text: &str) -> Vec<Post> {
        self.slack
            .posts()
            .into_iter()
            .filter(|p| p.channel == channel && p.text == text)
            .collect()
    }

    /// Sends a message in the direct chat `channel` and waits for its reply, so every earlier
    /// reply in it has gone out (replies in a chat leave in order).
    async fn barrier(&self, channel: &str, text: &str) {
        self.say(channel, "im", "UBARRIER", text).await;
        self.wait_reply(channel, &format!("llm: {text}")).await;
    }

    async fn inbox_keys(&self) -> Vec<(String, String, String)> {
        inspect::inbox(&self.gw, "slack", "")
            .await
            .expect("ListInbox")
            .into_iter()
            .map(|r| (r.channel_message_id, r.chat_type, r.reply_to))
            .collect()
    }

    async fn slack_listed(&self) -> Value {
        let listed = self.gw.gatewayctl_json(&["channels", "list"]).await;
        listed["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["channel"] == "slack"))
            .cloned()
            .unwrap_or_else(|| panic!("slack is listed: {listed}"))
    }

    async fn wait_listed_state(&self, state: &str) -> Value {
        if let Err(e) = poll_until_async(
            TIMEOUT,
            &format!("gatewayctl shows slack {state}"),
            || async { self.slack_listed().await["state"] == state },
        )
        .await
        {
            panic!(
                "{e}: {}\n{}",
                self.slack_listed().await,
                self.gw.stderr_tail(40)
            );
        }
        self.slack_listed().await
    }

    async fn outbox_statuses(&self, chat: &str) -> Vec<String> {
        inspect::outbox(&self.gw, "slack", chat)
            .await
            .expect("ListOutbox")
            .iter()
            .map(|r| inspect::status_name(r.status).to_owned())
            .collect()
    }

    async fn dead_letters(&self, chat: &str) -> Vec<inspect_pb::OutboxEntry> {
        inspect::outbox(&self.gw, "slack", chat)
            .await
            .expect("ListOutbox")
            .into_iter()
            .filter(|r| inspect::status_name(r.status) == "dead")
            .collect()
    }
}

use gateway_proto::admin as inspect_pb;

// ---------------------------------------------------------------------------------------------
// Events API
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_mode_answers_direct_group_and_threaded_messages() {
    let s = start("events", "").await;
    // The handshake is signed too, and answers its challenge.
    let (status, answer) = s
        .deliver(
            &json!({"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}),
            Signing::Correct,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    // A direct chat: answered in the channel, not in a thread.
    let ts = s.say("D100", "im", "U1", "hello in a DM").await;
    let reply = s.wait_reply("D100", "llm: hello in a DM").await;
    assert_eq!(reply.thread_ts, None, "{reply:?}");
    assert!(
        reply.metadata_id.is_some(),
        "the chunk id rides in the metadata"
    );
    s.say("D100", "im", "U1", "/whoami").await;
    let whoami = s
        .wait_posts_in("D100", "the /whoami answer", |p| {
            p.iter()
                .any(|p| p.text.contains("This conversation: user:"))
        })
        .await;
    assert!(
        whoami.iter().any(|p| p.text.contains("slack:U1")),
        "{whoami:#?}"
    );

    // A channel: only a mention is answered, and the mention is not given to the agent.
    let quiet = s
        .say("C200", "channel", "U2", "chatter without the bot")
        .await;
    let asked = s
        .say(
            "C200",
            "channel",
            "U2",
            &format!("<@{BOT_USER_ID}> a question for the bot"),
        )
        .await;
    s.wait_reply("C200", "llm: a question for the bot").await;
    s.say(
        "C200",
        "channel",
        "U2",
        &format!("<@{BOT_USER_ID}> /whoami"),
    )
    .await;
    let whoami = s
        .wait_posts_in("C200", "the group /whoami", |p| {
            p.iter().any(|p| p.text.contains("group:slack:C200"))
        })
        .await;
    assert!(!whoami.is_empty());
    for (channel, kind) in [("G300", "group"), ("G301", "mpim")] {
        s.say(channel, kind, "U3", &format!("hi <@{BOT_USER_ID}>"))
            .await;
        s.wait_reply(channel, "llm: hi").await;
    }

    // A message in a thread is answered in that thread.
    let parent = s.slack.next_ts();
    let (body, in_thread) = s.slack.message_event(
        "C200",
        "channel",
        "U2",
        &format!("<@{BOT_USER_ID}> in the thread"),
        Some(&parent),
    );
    assert_eq!(s.deliver(&body, Signing::Correct, None).await.0, 200);
    let reply = s.wait_reply("C200", "llm: in the thread").await;
    assert_eq!(
        reply.thread_ts.as_deref(),
        Some(parent.as_str()),
        "{reply:?}"
    );

    let keys = s.inbox_keys().await;
    let key = |k: &str| keys.iter().find(|(id, _, _)| id == k).cloned();
    assert_eq!(
        key(&format!("D100:{ts}")).map(|k| k.1),
        Some("direct".to_owned()),
        "{keys:#?}"
    );
    assert_eq!(
        key(&format!("C200:{asked}")).map(|k| k.1),
        Some("group".to_owned())
    );
    assert_eq!(
        key(&format!("C200:{quiet}")).map(|k| k.1),
        Some("group".to_owned()),
        "an unmentioned channel message is stored (and dropped by the mention rule)"
    );
    assert!(
        !s.llm
            .requests()
            .iter()
            .map(last_user_content)
            .any(|t| t.contains("chatter without the bot")),
        "the agent never saw the unmentioned message"
    );
    assert_eq!(
        key(&format!("C200:{in_thread}:{parent}")).map(|k| k.2),
        Some(format!("C200:{parent}")),
        "{keys:#?}"
    );
    assert!(
        s.llm
            .requests()
            .iter()
            .all(|r| !r.to_string().contains(BOT_USER_ID)),
        "the bot's mention is stripped"
    );
    assert!(
        !s.slack.posts().iter().any(|p| p.text.contains("chatter")),
        "the unmentioned message is not answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_and_nothing_is_stored() {
    let s = start("events", "").await;
    for (signing, names) in [
        (Signing::WrongSecret, "does not match"),
        (Signing::StaleTimestamp, "5 minutes"),
        (Signing::BadHex, "hex"),
        (Signing::Unsigned, "missing"),
    ] {
        let (body, _) =
            s.slack
                .message_event("D400", "im", "U4", &format!("forged {signing:?}"), None);
        let (status, answer) = s.deliver(&body, signing, None).await;
        assert_eq!(status, 401, "{signing:?}: {answer}");
        assert!(
            answer.contains(names),
            "{signing:?} names what was wrong: {answer}"
        );
        assert!(!answer.contains(SIGNING_SECRET), "{answer}");
    }
    // Forged but otherwise valid JSON: still nothing in the store, nothing asked.
    assert!(
        s.inbox_keys().await.is_empty(),
        "refused events are not stored"
    );
    assert!(s.llm.requests().is_empty(), "refused events reach nobody");
    assert!(
        !s.gw.stderr_log().contains(SIGNING_SECRET),
        "the secret is never logged"
    );

    // Signed correctly, the same request is taken.
    s.say("D400", "im", "U4", "signed right").await;
    s.wait_reply("D400", "llm: signed right").await;
    let (status, _) = s
        .slack
        .deliver(&s.url(), &json!("not an object"), Signing::Correct, None)
        .await
        .expect("POST");
    assert_eq!(
        status, 400,
        "a signed body that is not an event is a bad request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_and_its_app_mention_are_answered_once() {
    let s = start("events", "").await;
    let text = format!("<@{BOT_USER_ID}> answer me once");
    let (body, ts) = s.slack.message_event("C500", "channel", "U5", &text, None);
    assert_eq!(s.deliver(&body, Signing::Correct, None).await.0, 200);
    // Slack's retries carry the same body and the retry headers.
    for n in 1..=3 {
        assert_eq!(
            s.deliver(&body, Signing::Correct, Some(n)).await.0,
            200,
            "retry {n}"
        );
    }
    // The same message as an `app_mention`: another event id, the same (channel, ts).
    let mention = s.slack.callback(json!({
        "type": "app_mention", "channel": "C500", "user": "U5", "text": text, "ts": ts, "event_ts": ts,
    }));
    assert_eq!(s.deliver(&mention, Signing::Correct, None).await.0, 200);
    s.wait_reply("C500", "llm: answer me once").await;
    s.barrier("D501", "after the repeats").await;
    // The mention is a reply in C500 too; give it the same barrier there.
    let n = s.posts_of("C500", "llm: answer me once").len();
    assert_eq!(n, 1, "answered once: {:#?}", s.slack.posts());
    let asked = s
        .llm
        .requests()
        .iter()
        .filter(|r| gateway_tests::last_user_content(r) == "answer me once")
        .count();
    assert_eq!(asked, 1, "one agent turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_bot_messages_and_edits_are_acknowledged_and_not_answered() {
    let s = start("events", "").await;
    let mut own = s
        .slack
        .message_event("D600", "im", "U6", "from my own bot", None)
        .0;
    own["event"]["bot_id"] = json!(BOT_ID);
    assert_eq!(s.deliver(&own, Signing::Correct, None).await.0, 200);
    let own_user = s
        .slack
        .message_event("D600", "im", BOT_USER_ID, "my own user", None)
        .0;
    assert_eq!(s.deliver(&own_user, Signing::Correct, None).await.0, 200);
    let ts = s.say("D600", "im", "U6", "original").await;
    s.wait_reply("D600", "llm: original").await;
    let edit = s.slack.callback(json!({
        "type": "message", "subtype": "message_changed", "channel": "D600", "channel_type": "im",
        "hidden": true, "ts": s.slack.next_ts(),
        "message": {"type": "message", "user": "U6", "text": "edited", "ts": ts},
    }));
    assert_eq!(s.deliver(&edit, Signing::Correct, None).await.0, 200);
    s.barrier("D600", "after the edit").await;
    let texts: Vec<String> = s.slack.posts().iter().map(|p| p.text.clone()).collect();
    assert_eq!(
        texts,
        ["llm: original", "llm: after the edit"],
        "only people's new messages are answered"
    );
}

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_is_split_within_4000_characters_in_its_thread() {
    let s = start("events", "").await;
    let parent = s.slack.next_ts();
    let text = "word ".repeat(1500);
    let (body, _) = s
        .slack
        .message_event("D700", "im", "U7", &text, Some(&parent));
    assert_eq!(s.deliver(&body, Signing::Correct, None).await.0, 200);
    let expected: String = format!("llm: {text}").split_whitespace().collect();
    let chunks = s
        .wait_posts_in("D700", "every chunk", |p| {
            p.iter()
                .map(|p| p.text.split_whitespace().collect::<String>())
                .collect::<String>()
                .len()
                >= expected.len()
        })
        .await;
    assert!(chunks.len() >= 2, "{chunks:#?}");
    for c in &chunks {
        let n = c.text.chars().count();
        assert!((1..=4000).contains(&n), "a chunk of {n} characters");
        assert_eq!(
            c.thread_ts.as_deref(),
            Some(parent.as_str()),
            "every chunk goes to the thread"
        );
    }
    assert!(chunks[0].text.chars().count() > 3000, "cut near the limit");
    let joined: String = chunks
        .iter()
        .map(|c| c.text.split_whitespace().collect::<String>())
        .collect();
    assert_eq!(joined, expected);
    assert!(
        s.slack.posts().iter().all(Post::is_success),
        "nothing refused as too long"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_ends_where_the_table_says() {
    let s = start("events", "").await;
    assert_eq!(s.wait_listed_state("connected").await["state"], "connected");

    // 429 with Retry-After: retried no earlier than asked.
    s.slack
        .push_fault("chat.postMessage", SlackFault::RateLimited(1));
    s.say("D801", "im", "U8", "rate limited").await;
    s.wait_reply("D801", "llm: rate limited").await;
    let tries = s.posts_of("D801", "llm: rate limited");
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0].status, 429);
    assert!(
        tries[1].at - tries[0].at >= Duration::from_secs(1),
        "{tries:#?}"
    );

    // A 5xx, and the retryable ok:false codes: retried.
    for (chat, fault) in [
        ("D802", SlackFault::Status(503)),
        ("D803", SlackFault::Error("ratelimited".to_owned())),
        ("D804", SlackFault::Error("rate_limited".to_owned())),
        ("D805", SlackFault::Error("internal_error".to_owned())),
    ] {
        s.slack.push_fault("chat.postMessage", fault.clone());
        s.say(chat, "im", "U8", "retried").await;
        s.wait_reply(chat, "llm: retried").await;
        let tries = s.posts_of(chat, "llm: retried");
        assert_eq!(tries.len(), 2, "{fault:?}: {tries:#?}");
        assert!(!tries[0].is_success() && tries[1].is_success(), "{fault:?}");
    }

    // The permanent codes: a dead letter after one attempt.
    for (chat, code) in [
        ("D811", "channel_not_found"),
        ("D812", "not_in_channel"),
        ("D813", "is_archived"),
        ("D814", "msg_too_long"),
    ] {
        s.slack
            .push_fault("chat.postMessage", SlackFault::Error(code.to_owned()));
        s.say(chat, "im", "U8", "doomed").await;
        if let Err(e) = poll_until_async(TIMEOUT, &format!("{code} is a dead letter"), || async {
            s.dead_letters(chat).await.len() == 1
        })
        .await
        {
            panic!(
                "{e}: {:?}\n{}",
                s.outbox_statuses(chat).await,
                s.gw.stderr_tail(30)
            );
        }
        let dead = &s.dead_letters(chat).await[0];
        assert_eq!(dead.attempts, 1, "{code}: not retried: {dead:?}");
        assert_eq!(s.posts_of(chat, "llm: doomed").len(), 1, "{code}");
    }

    // The auth codes: the channel is held for re-authentication, shown by gatewayctl, and the
    // held reply goes out once after the reconnect.
    for (i, code) in [
        "invalid_auth",
        "token_revoked",
        "account_inactive",
        "not_authed",
    ]
    .into_iter()
    .enumerate()
    {
        let chat = format!("D82{i}");
        s.slack
            .set_mode("chat.postMessage", Some(SlackFault::Error(code.to_owned())));
        s.say(&chat, "im", "U8", &format!("held by {code}")).await;
        let listed = s.wait_listed_state("reauth_needed").await;
        let last_error = listed["last_error"].as_str().unwrap_or_default();
        assert!(last_error.contains(code), "{code}: {listed}");
        assert!(!last_error.contains(BOT_TOKEN), "{listed}");
        assert!(
            s.dead_letters(&chat).await.is_empty(),
            "{code}: held, not dead"
        );
        s.slack.set_mode("chat.postMessage", None);
        let after =
            s.gw.gatewayctl_json(&["channels", "reconnect", "slack"])
                .await;
        assert_eq!(after["state"], "connected", "{after}");
        s.wait_reply(&chat, &format!("llm: held by {code}")).await;
        let ok = s
            .posts_of(&chat, &format!("llm: held by {code}"))
            .iter()
            .filter(|p| p.is_success())
            .count();
        assert_eq!(ok, 1, "{code}: the held reply is sent once");
    }
    assert!(
        !s.gw.stderr_log().contains(BOT_TOKEN),
        "the token is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_post_response_is_checked_and_not_posted_again() {
    let s = start("events", "").await;
    for (chat, thread) in [("C900", None), ("C901", Some(s.slack.next_ts()))] {
        s.slack
            .push_fault("chat.postMessage", SlackFault::LoseResponse);
        let text = format!("<@{BOT_USER_ID}> lost once");
        let (body, _) = s
            .slack
            .message_event(chat, "channel", "U9", &text, thread.as_deref());
        assert_eq!(s.deliver(&body, Signing::Correct, None).await.0, 200);
        let method = if thread.is_some() {
            "conversations.replies"
        } else {
            "conversations.history"
        };
        s.slack
            .wait_calls(method, 1, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(30)));
        if let Err(e) = poll_until_async(TIMEOUT, "the reply is delivered", || async {
            s.outbox_statuses(chat).await == ["delivered"]
        })
        .await
        {
            panic!(
                "{e}: {:?}\n{}",
                s.outbox_statuses(chat).await,
                s.gw.stderr_tail(30)
            );
        }
        let posts = s.posts_of(chat, "llm: lost once");
        assert_eq!(
            posts.len(),
            1,
            "posted once, found by the check: {posts:#?}"
        );
        assert!(posts[0].is_stored() && posts[0].status == 0, "{posts:#?}");
    }
    // Without a lost response there is no check before posting.
    let checks =
        s.slack.calls_of("conversations.history") + s.slack.calls_of("conversations.replies");
    s.barrier("D902", "no check needed").await;
    assert_eq!(
        s.slack.calls_of("conversations.history") + s.slack.calls_of("conversations.replies"),
        checks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_the_commit_and_the_reply_still_replies_once() {
    let mut s = start("events", "").await;
    s.llm.hold("killed mid-turn");
    let (body, ts) = s
        .slack
        .message_event("D950", "im", "U95", "killed mid-turn", None);
    assert_eq!(
        s.deliver(&body, Signing::Correct, None).await.0,
        200,
        "answered after the commit"
    );
    s.llm
        .wait_held("killed mid-turn", 1, TIMEOUT)
        .await
        .expect("the turn reaches the agent");
    assert!(
        s.inbox_keys()
            .await
            .iter()
            .any(|k| k.0 == format!("D950:{ts}")),
        "committed before the 200"
    );
    s.gw.kill().await;
    s.llm.release("killed mid-turn");
    s.gw.restart().await.expect("restart");
    s.wait_reply("D950", "llm: killed mid-turn").await;
    // Slack, having seen the connection die, delivers the event again: answered once.
    assert_eq!(s.deliver(&body, Signing::Correct, Some(1)).await.0, 200);
    s.barrier("D950", "after the restart").await;
    assert_eq!(
        s.posts_of("D950", "llm: killed mid-turn").len(),
        1,
        "{:#?}",
        s.slack.posts()
    );
}

// ---------------------------------------------------------------------------------------------
// Socket Mode
// ---------------------------------------------------------------------------------------------

async fn wait_open(s: &Setup, n: usize) -> Vec<gateway_tests::fake_slack::Connection> {
    match s.slack.wait_connections(|c| c.len() >= n, TIMEOUT).await {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{}", s.gw.stderr_tail(40)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_acknowledges_each_envelope_after_its_commit() {
    let s = start("socket", "").await;
    wait_open(&s, 1).await;
    s.wait_listed_state("connected").await;
    let (body, ts) = s
        .slack
        .message_event("D1000", "im", "U10", "over the socket", None);
    let envelope = s.slack.push_envelope(&body).expect("an envelope");
    assert_eq!(
        s.slack.wait_ack(&envelope, TIMEOUT).await.expect("acked"),
        1
    );
    assert!(
        s.inbox_keys()
            .await
            .iter()
            .any(|k| k.0 == format!("D1000:{ts}")),
        "acknowledged only once committed"
    );
    s.wait_reply("D1000", "llm: over the socket").await;

    // A group message with a mention; and one without, acknowledged, stored and not answered.
    let (quiet, quiet_ts) = s
        .slack
        .message_event("C1001", "channel", "U10", "no mention", None);
    let quiet_env = s.slack.push_envelope(&quiet).expect("an envelope");
    s.slack.wait_ack(&quiet_env, TIMEOUT).await.expect("acked");
    let (body, _) = s.slack.message_event(
        "C1001",
        "channel",
        "U10",
        &format!("<@{BOT_USER_ID}> group"),
        None,
    );
    s.slack.push_envelope(&body).expect("an envelope");
    s.wait_reply("C1001", "llm: group").await;
    assert!(
        s.inbox_keys()
            .await
            .iter()
            .any(|k| k.0 == format!("C1001:{quiet_ts}")),
        "the unmentioned message is stored"
    );
    assert!(
        !s.llm
            .requests()
            .iter()
            .map(last_user_content)
            .any(|t| t.contains("no mention")),
        "and never reaches the agent"
    );
    // Redelivered envelope: acknowledged, answered once.
    let again = s.slack.push_envelope(&body).expect("an envelope");
    s.slack.wait_ack(&again, TIMEOUT).await.expect("acked");
    s.barrier_socket("D1002", "socket barrier").await;
    assert_eq!(s.posts_of("C1001", "llm: group").len(), 1);
}

impl Setup {
    async fn barrier_socket(&self, channel: &str, text: &str) {
        let (body, _) = self
            .slack
            .message_event(channel, "im", "UBARRIER", text, None);
        self.slack.push_envelope(&body).expect("an envelope");
        self.wait_reply(channel, &format!("llm: {text}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_opens_the_next_socket_before_the_old_one_closes() {
    let s = start("socket", "").await;
    wait_open(&s, 1).await;
    s.slack
        .socket_cmd(SocketCmd::Disconnect {
            reason: "warning".to_owned(),
            close_after: Duration::from_secs(3),
        })
        .expect("disconnect");
    // A message crosses the switch on the old socket, and Slack sends it again on the new one.
    let (body, _) = s
        .slack
        .message_event("D1100", "im", "U11", "across the switch", None);
    let old = s
        .slack
        .push_envelope_on(1, &body)
        .expect("on the old socket");
    assert_eq!(
        s.slack
            .wait_ack(&old, TIMEOUT)
            .await
            .expect("acked on the old socket"),
        1
    );
    let conns = s
        .slack
        .wait_connections(|c| c.len() >= 2 && c[0].closed_at.is_some(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let closed = conns[0].closed_at.expect("closed");
    assert!(
        conns[1].opened_at < closed,
        "the new socket opened before the old one closed: {conns:#?}"
    );
    let again = s
        .slack
        .push_envelope_on(2, &body)
        .expect("on the new socket");
    assert_eq!(
        s.slack
            .wait_ack(&again, TIMEOUT)
            .await
            .expect("acked on the new"),
        2
    );
    s.wait_reply("D1100", "llm: across the switch").await;
    s.barrier_socket("D1100", "after the switch").await;
    assert_eq!(
        s.posts_of("D1100", "llm: across the switch").len(),
        1,
        "answered once"
    );
    assert_eq!(s.slack.calls_of("apps.connections.open"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_replaced() {
    let s = start("socket", "ping_interval = \"1s\"\n").await;
    wait_open(&s, 1).await;
    s.wait_listed_state("connected").await;
    s.slack.socket_cmd(SocketCmd::GoSilent).expect("go silent");
    let conns = wait_open(&s, 2).await;
    assert!(conns[0].silent, "{conns:#?}");
    assert!(
        gateway_tests::strip_ansi(&s.gw.stderr_log()).contains("silent"),
        "the replacement is logged"
    );
    s.wait_listed_state("connected").await;
    s.barrier_socket("D1200", "on the replacement").await;
}
