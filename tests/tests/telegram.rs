//! The Telegram channel through the real `gatewayd` binary against `FakeTelegram` (the Bot API
//! as teloxide speaks it): polling that acknowledges an update only once it is committed (and so
//! survives a SIGKILL), webhook mode with its `setWebhook` registration and secret header, how
//! updates are normalized (texts, captions with their photo's file id, documents, replies,
//! private / group / supergroup chats, edits that are acknowledged but not answered again),
//! replies split at 4096 UTF-16 code units, and what each Bot API error leads to: a 429's
//! `retry_after` is waited out in that chat only, a blocked bot is a dead letter, and an invalid
//! token holds the channel as `reauth_needed` until `gatewayctl channels reconnect telegram`.
//!
//! The agent is the `openai` provider on `FakeOpenAi` (replies are `llm: <text>`). The stored
//! state (read through the admin API) and `gatewayctl` output have no change notification, so
//! those are polled; everything the fakes see is waited for with their Notify-based waits.

use std::process::Command;
use std::time::Duration;

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_client::AdminClient;
use gateway_tests::fake_telegram::{ChatSpec, FakeTelegram, MAX_TEXT_UTF16, SentMessage, TgFault};
use gateway_tests::{
    FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, gatewayctl_bin, inspect, last_user_content,
    poll_until, poll_until_async,
};
use serde_json::Value;
use tonic::transport::Channel;

const TOKEN: &str = "4242:telegram-test-token";
const SECRET: &str = "webhook-Secret_42";
const WEBHOOK_PATH: &str = "/channels/telegram/webhook";

/// A gateway with the Telegram channel on the fake, and the agent on the fake LLM.
struct Setup {
    gw: Gateway,
    tg: FakeTelegram,
    llm: FakeOpenAi,
}

/// Group chats in these tests are about sessions and payloads; the mention rule, on by default,
/// is tested in `access.rs`.
const ANSWER_EVERY_GROUP_MESSAGE: &str = "require_mention_in_groups = false\n";

/// Starts the fakes and the daemon; `telegram_extra` goes into `[channels.telegram]`.
async fn start(telegram_extra: &str) -> Setup {
    let tg = FakeTelegram::start(TOKEN).await;
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\n\
         [channels.telegram]\nenabled = true\ntoken_env = \"TG_TOKEN\"\napi_url = \"{}\"\n\
         poll_timeout = \"1s\"\n{telegram_extra}\n",
        llm.base_url(),
        tg.api_url()
    ));
    opts.env.push(("TG_TOKEN".to_owned(), TOKEN.to_owned()));
    opts.env
        .push(("TG_WEBHOOK_SECRET".to_owned(), SECRET.to_owned()));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    Setup { gw, tg, llm }
}

impl Setup {
    /// Waits until the accepted sends to `chat` satisfy `pred`; returns them.
    async fn wait_sent_to(
        &self,
        chat: i64,
        what: &str,
        pred: impl Fn(&[&SentMessage]) -> bool,
    ) -> Vec<SentMessage> {
        let chat = chat.to_string();
        let of_chat = |s: &[SentMessage]| -> Vec<SentMessage> {
            s.iter().filter(|m| m.chat_id == chat).cloned().collect()
        };
        match self
            .tg
            .wait_sent(|s| pred(&of_chat(s).iter().collect::<Vec<_>>()), TIMEOUT)
            .await
        {
            Ok(s) => of_chat(&s),
            Err(e) => panic!(
                "waiting for {what}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits for the (first-chunk) reply to message `message_id` in `chat`.
    async fn wait_reply(&self, chat: i64, message_id: i64) -> SentMessage {
        let sent = self
            .wait_sent_to(chat, &format!("the reply to {chat}:{message_id}"), |s| {
                s.iter().any(|m| m.reply_to_message_id == Some(message_id))
            })
            .await;
        sent.into_iter()
            .find(|m| m.reply_to_message_id == Some(message_id))
            .expect("found by the wait")
    }

    /// Every send call referencing `message_id` in `chat`, accepted or not.
    fn attempts_for(&self, chat: i64, message_id: i64) -> Vec<SentMessage> {
        self.tg
            .sent()
            .into_iter()
            .filter(|m| m.chat_id == chat.to_string() && m.reply_to_message_id == Some(message_id))
            .collect()
    }

    /// Sends `text` in `chat` and waits for its reply, so every earlier reply of the chat has
    /// gone out (a chat's replies leave in order).
    async fn barrier(&self, chat: &ChatSpec, from: i64, text: &str) {
        let id = self.tg.push_text(chat, from, text);
        self.wait_reply(chat.id(), id).await;
    }

    async fn admin(&self) -> AdminClient<Channel> {
        let channel = Channel::from_shared(self.gw.admin_url())
            .expect("admin uri")
            .connect()
            .await
            .expect("connect to the admin API");
        AdminClient::new(channel)
    }

    /// The Telegram channel in `ListChannels`.
    async fn channel_info(&self) -> pb::ChannelInfo {
        let mut admin = self.admin().await;
        admin
            .list_channels(pb::ListChannelsRequest {})
            .await
            .expect("ListChannels")
            .into_inner()
            .channels
            .into_iter()
            .find(|c| c.channel == "telegram")
            .expect("telegram is listed")
    }

    /// The texts the agent was asked, in order.
    fn agent_inputs(&self) -> Vec<String> {
        self.llm.requests().iter().map(last_user_content).collect()
    }

    /// The statuses of the Telegram outbox rows of `chat`, oldest first, through `ListOutbox`.
    async fn outbox_statuses(&self, chat: &str) -> Vec<String> {
        inspect::outbox(&self.gw, "telegram", chat)
            .await
            .expect("ListOutbox")
            .iter()
            .map(|r| inspect::status_name(r.status).to_owned())
            .collect()
    }

    /// Reads one inbox row (`chat_type`, `reply_to`) by its Telegram key `<chat>:<message>`,
    /// through `ListInbox`.
    async fn inbox_row(&self, key: &str) -> Option<(String, Option<String>)> {
        inspect::inbox(&self.gw, "telegram", "")
            .await
            .expect("ListInbox")
            .into_iter()
            .find(|r| r.channel_message_id == key)
            .map(|r| (r.chat_type, (!r.reply_to.is_empty()).then_some(r.reply_to)))
    }
}

/// Runs `gatewayctl --addr <admin> --output json ARGS…`, expecting success; returns its JSON.
async fn gatewayctl(gw: &Gateway, args: &[&str]) -> Value {
    gw.gatewayctl_json(args).await
}

fn telegram_of(channels: &Value) -> Value {
    channels["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel"] == "telegram"))
        .cloned()
        .unwrap_or_else(|| panic!("telegram is listed: {channels}"))
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

// ---------------------------------------------------------------------------------------------
// Polling and webhook
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_acknowledges_an_update_only_once_it_is_committed() {
    let mut s = start("").await;
    let chat = ChatSpec::private(42);

    // The turn is held at the agent: the update is committed and being answered.
    s.llm.hold("committed then killed");
    let update = s.tg.make_update_text(&chat, 42, "committed then killed");
    let message_id = update["message"]["message_id"]
        .as_i64()
        .expect("message_id");
    let update_id = s.tg.push_raw(update.clone());
    s.llm
        .wait_held("committed then killed", 1, TIMEOUT)
        .await
        .expect("the turn reaches the agent");
    assert_eq!(
        s.inbox_row(&format!("42:{message_id}")).await.map(|r| r.0),
        Some("direct".to_owned()),
        "the update is in the inbox"
    );
    // Only then is the update confirmed to Telegram, by the next poll's offset.
    s.tg.wait_acked_offset(update_id + 1, TIMEOUT)
        .await
        .expect("the offset moves past the committed update");

    // A SIGKILL mid-turn loses nothing: the restarted daemon answers from its inbox.
    s.gw.kill().await;
    s.llm.release("committed then killed");
    s.gw.restart().await.expect("restart");
    let reply = s.wait_reply(42, message_id).await;
    assert_eq!(reply.text, "llm: committed then killed");
    assert!(s.tg.acked_offset() > update_id);

    // Killed again after the reply (once it is recorded as delivered: a kill between Telegram's
    // 200 and that record sends the reply again, the known at-least-once window of delivery), the
    // daemon does not answer the acknowledged update again, and a redelivery of the very same
    // update (as after a crash before the offset moved) is recognised as a duplicate.
    if let Err(e) = poll_until_async(TIMEOUT, "the reply is recorded as delivered", || async {
        s.outbox_statuses("42").await == ["delivered"]
    })
    .await
    {
        panic!("{e}: {:?}", s.outbox_statuses("42").await);
    }
    s.gw.kill().await;
    s.gw.restart().await.expect("restart");
    s.tg.push_raw(update);
    s.tg.wait_all_acked(TIMEOUT)
        .await
        .expect("the redelivered update is fetched and acknowledged");
    s.barrier(&chat, 42, "after the redelivery").await;
    let replies = s.attempts_for(42, message_id);
    assert_eq!(
        replies.len(),
        1,
        "answered once across kills and a redelivery: {replies:#?}\n--- gatewayd stderr ---\n{}",
        s.gw.stderr_tail(60)
    );
    let asked = s
        .agent_inputs()
        .iter()
        .filter(|t| *t == "committed then killed")
        .count();
    assert_eq!(
        asked, 2,
        "one turn cut short by the kill, one that answered; none after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_registers_the_webhook_and_checks_the_secret() {
    let s = start(&format!(
        "mode = \"webhook\"\nwebhook_url = \"https://bot.example.test/tg/hook\"\n\
         webhook_path = \"{WEBHOOK_PATH}\"\nwebhook_secret_env = \"TG_WEBHOOK_SECRET\"\n"
    ))
    .await;
    let hook =
        s.tg.wait_webhook(|w| w.is_some(), TIMEOUT)
            .await
            .expect("setWebhook at start")
            .expect("a webhook");
    assert_eq!(hook.url, "https://bot.example.test/tg/hook");
    assert_eq!(hook.secret_token.as_deref(), Some(SECRET));
    assert_eq!(s.tg.get_updates_calls(), 0, "no polling in webhook mode");

    let chat = ChatSpec::private(77);
    let update = s.tg.make_update_text(&chat, 77, "through the webhook");
    let message_id = update["message"]["message_id"]
        .as_i64()
        .expect("message_id");
    let url = format!("{}{WEBHOOK_PATH}", s.gw.http_base());
    let post = |secret: Option<&str>| {
        let mut req = s.gw.client().post(&url).json(&update);
        if let Some(secret) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", secret);
        }
        async move { req.send().await.expect("POST the update").status().as_u16() }
    };
    assert_eq!(post(None).await, 401, "no secret");
    assert_eq!(post(Some("webhook-Secret_43")).await, 401, "a wrong secret");
    assert_eq!(post(Some("")).await, 401, "an empty secret");
    assert!(s.llm.requests().is_empty(), "refused updates reach nobody");
    assert_eq!(
        s.inbox_row(&format!("77:{message_id}")).await,
        None,
        "refused updates are not stored"
    );

    assert_eq!(post(Some(SECRET)).await, 200, "the right secret");
    let reply = s.wait_reply(77, message_id).await;
    assert_eq!(reply.text, "llm: through the webhook");

    // Telegram redelivers what it thinks failed: the same update is answered once.
    assert_eq!(post(Some(SECRET)).await, 200);
    let next = s.tg.make_update_text(&chat, 77, "the next one");
    let next_id = next["message"]["message_id"].as_i64().expect("message_id");
    let resp =
        s.gw.client()
            .post(&url)
            .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
            .json(&next)
            .send()
            .await
            .expect("POST the next update");
    assert_eq!(resp.status().as_u16(), 200);
    s.wait_reply(77, next_id).await;
    assert_eq!(s.attempts_for(77, message_id).len(), 1, "answered once");
    assert_eq!(s.tg.get_updates_calls(), 0, "still no polling");

    // A declared body over the webhook's limit is refused before any of it is sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.gw.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-telegram-bot-api-secret-token: {SECRET}\r\ncontent-length: 1000000000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("write headers");
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_captions_documents_and_replies_reach_the_agent() {
    let s = start(ANSWER_EVERY_GROUP_MESSAGE).await;
    let private = ChatSpec::private(42);
    let group = ChatSpec::group(-4242, "Team");

    let id = s.tg.push_text(&private, 42, "plain text");
    let reply = s.wait_reply(42, id).await;
    assert_eq!(reply.text, "llm: plain text");

    // A caption is the text; the photo (its largest size) comes as its file id.
    let photo =
        s.tg.push_caption_photo(&group, 7, "look at this", "PHOTO-FILE-1");
    let reply = s.wait_reply(-4242, photo).await;
    let input = s.agent_inputs().pop().expect("a request");
    assert!(input.starts_with("look at this"), "{input:?}");
    assert!(
        input.contains("PHOTO-FILE-1]") && !input.contains("PHOTO-FILE-1_s"),
        "the largest photo's file id reaches the agent: {input:?}"
    );
    assert!(
        reply.text.contains("PHOTO-FILE-1"),
        "the agent's answer is sent back: {reply:?}"
    );

    // A document without a caption is its name and file id.
    let doc =
        s.tg.push_document(&private, 42, None, "DOC-FILE-9", "report.pdf");
    s.wait_reply(42, doc).await;
    let input = s.agent_inputs().pop().expect("a request");
    assert!(
        input.contains("report.pdf") && input.contains("DOC-FILE-9"),
        "{input:?}"
    );

    // A reply keeps the id of the message it answers, and is itself answered by reference.
    let answer = s.tg.push_reply(&group, 8, "and about that photo", photo);
    let reply = s.wait_reply(-4242, answer).await;
    assert_eq!(reply.text, "llm: and about that photo");
    assert_eq!(
        s.inbox_row(&format!("-4242:{answer}")).await,
        Some(("group".to_owned(), Some(format!("-4242:{photo}")))),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_chats_are_direct_and_groups_and_supergroups_are_group_sessions() {
    let s = start(ANSWER_EVERY_GROUP_MESSAGE).await;
    let chats = [
        (ChatSpec::private(42), 42, "user:", "direct"),
        (
            ChatSpec::group(-4242, "Team"),
            7,
            "group:telegram:-4242",
            "group",
        ),
        (
            ChatSpec::supergroup(-1_001_234_567_890, "Ops"),
            7,
            "group:telegram:-1001234567890",
            "group",
        ),
    ];
    for (chat, from, session, chat_type) in chats {
        let id = s.tg.push_text(&chat, from, "/whoami");
        let reply = s.wait_reply(chat.id(), id).await;
        assert!(
            reply
                .text
                .contains(&format!("This conversation: {session}")),
            "{chat:?}: {reply:?}"
        );
        assert_eq!(
            reply.text.contains("(a group chat has its own session)"),
            chat_type == "group",
            "{reply:?}"
        );
        assert!(
            reply.text.contains(&format!("telegram:{from}")),
            "{reply:?}"
        );
        assert_eq!(
            s.inbox_row(&format!("{}:{id}", chat.id()))
                .await
                .map(|r| r.0),
            Some(chat_type.to_owned()),
            "{chat:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_messages_are_acknowledged_and_not_answered_again() {
    let s = start("").await;
    let chat = ChatSpec::private(55);
    let first = s.tg.push_text(&chat, 55, "first version");
    s.wait_reply(55, first).await;

    let edit = s.tg.push_edit(&chat, 55, first, "second version");
    s.tg.wait_acked_offset(edit + 1, TIMEOUT)
        .await
        .expect("the edit is acknowledged");
    let next = s.tg.push_text(&chat, 55, "a new message");
    s.wait_reply(55, next).await;

    let sent = s.attempts_for(55, first);
    assert_eq!(sent.len(), 1, "the edit is not answered: {sent:#?}");
    assert_eq!(
        s.tg.sent().len(),
        2,
        "two messages, two replies: {:#?}",
        s.tg.sent()
    );
    assert_eq!(
        s.agent_inputs(),
        ["first version", "a new message"],
        "the edit never reaches the agent"
    );
}

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_split_at_4096_utf16_code_units() {
    let s = start("").await;
    let chat = ChatSpec::private(42);
    // 3005 characters but 5255 UTF-16 code units: one message by characters, too long by the
    // unit Telegram counts (the fake refuses it with 400 "message is too long").
    let text = "😀😀😀 ".repeat(750);
    let expected = format!("llm: {text}");
    assert!(expected.chars().count() < MAX_TEXT_UTF16);
    assert!(expected.encode_utf16().count() > MAX_TEXT_UTF16);
    let id = s.tg.push_text(&chat, 42, &text);
    let want = squeeze(&expected);
    let chunks = s
        .wait_sent_to(42, "every chunk", |m| {
            squeeze(&m.iter().map(|m| m.text.as_str()).collect::<String>()).len() >= want.len()
        })
        .await;
    assert_eq!(chunks.len(), 2, "{chunks:#?}");
    for c in &chunks {
        let units = c.text.encode_utf16().count();
        assert!(units <= MAX_TEXT_UTF16, "a chunk of {units} UTF-16 units");
    }
    assert!(
        chunks[0].text.encode_utf16().count() > MAX_TEXT_UTF16 / 2,
        "the cut is near the limit, not early: {}",
        chunks[0].text.encode_utf16().count()
    );
    assert_eq!(
        chunks[0].reply_to_message_id,
        Some(id),
        "the first chunk replies"
    );
    assert_eq!(chunks[1].reply_to_message_id, None, "the rest follow it");
    let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(squeeze(&joined), want);
    assert!(
        s.tg.sent().iter().all(SentMessage::is_success),
        "nothing was refused as too long: {:#?}",
        s.tg.sent()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_pauses_that_chat_as_told() {
    let s = start("").await;
    let (slow, other) = (ChatSpec::private(61), ChatSpec::private(62));
    s.tg.push_fault("sendMessage", TgFault::RetryAfter(2));
    let id = s.tg.push_text(&slow, 61, "told to wait");
    s.tg.wait_calls("sendMessage", 1, TIMEOUT)
        .await
        .expect("the first attempt");
    // Another chat is not paused meanwhile.
    let other_id = s.tg.push_text(&other, 62, "not paused");
    let other_reply = s.wait_reply(62, other_id).await;
    let reply = s.wait_reply(61, id).await;
    let tries = s.attempts_for(61, id);
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0].status_returned, 429);
    assert!(tries[1].is_success());
    let waited = tries[1].at - tries[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "the retry came {waited:?} after a 429 with retry_after = 2"
    );
    assert!(
        other_reply.at < reply.at,
        "the other chat went out during the pause"
    );
    assert_eq!(
        s.channel_info().await.state,
        pb::ChannelState::Connected as i32,
        "a chat's 429 does not count against the channel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_bot_is_a_permanent_dead_letter() {
    let s = start("").await;
    let chat = ChatSpec::private(71);
    s.tg.set_mode("sendMessage", Some(TgFault::Blocked));
    let id = s.tg.push_text(&chat, 71, "you blocked me");
    let mut admin = s.admin().await;
    let request = || pb::ListDeadLettersRequest {
        channel: "telegram".to_owned(),
        ..Default::default()
    };
    {
        let admin = admin.clone();
        poll_until_async(TIMEOUT, "the reply is a dead letter", || {
            let mut admin = admin.clone();
            async move {
                admin
                    .list_dead_letters(request())
                    .await
                    .is_ok_and(|r| r.into_inner().total == 1)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    }
    let dead = admin
        .list_dead_letters(request())
        .await
        .expect("ListDeadLetters")
        .into_inner()
        .dead_letters;
    let d = &dead[0];
    assert_eq!(d.error_class, pb::ErrorClass::Permanent as i32, "{d:?}");
    assert_eq!(d.chat_id, "71");
    assert_eq!(d.text, "llm: you blocked me");
    assert_eq!(d.attempts, 1, "not retried: {d:?}");
    assert!(d.last_error.to_lowercase().contains("blocked"), "{d:?}");
    assert_eq!(s.attempts_for(71, id).len(), 1);
    assert_ne!(
        s.channel_info().await.state,
        pb::ChannelState::ReauthNeeded as i32,
        "a blocked bot is about one chat, not the credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_token_holds_the_channel_until_gatewayctl_reconnects_it() {
    let s = start("").await;
    let chat = ChatSpec::private(81);
    s.tg.set_mode("sendMessage", Some(TgFault::Unauthorized));
    let id = s.tg.push_text(&chat, 81, "held for the operator");

    poll_until_async(
        TIMEOUT,
        "gatewayctl shows telegram as reauth_needed",
        || async {
            telegram_of(&gatewayctl(&s.gw, &["channels", "list"]).await)["state"] == "reauth_needed"
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let listed = telegram_of(&gatewayctl(&s.gw, &["channels", "list"]).await);
    let last_error = listed["last_error"].as_str().unwrap_or_default();
    assert!(
        !last_error.is_empty(),
        "the refusal is shown to the operator: {listed}"
    );
    let tries = s.attempts_for(81, id);
    assert!(
        !tries.is_empty() && tries.iter().all(|t| t.status_returned == 401),
        "{tries:#?}"
    );
    let dead = gatewayctl(&s.gw, &["deadletters", "list"]).await;
    assert_eq!(dead["total"], 0, "held, not dead-lettered: {dead}");

    s.tg.set_mode("sendMessage", None);
    let after = gatewayctl(&s.gw, &["channels", "reconnect", "telegram"]).await;
    assert_eq!(after["state"], "connected", "{after}");
    let reply = s.wait_reply(81, id).await;
    assert_eq!(reply.text, "llm: held for the operator");
    let ok = s
        .attempts_for(81, id)
        .iter()
        .filter(|t| t.is_success())
        .count();
    assert_eq!(ok, 1, "the held reply is sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_while_polling_stops_polling_instead_of_looping() {
    let s = start("").await;
    s.tg.wait_get_updates_calls(1, TIMEOUT)
        .await
        .expect("polling");
    s.tg.set_mode("getUpdates", Some(TgFault::Unauthorized));
    poll_until_async(TIMEOUT, "telegram is reauth_needed", || async {
        s.channel_info().await.state == pb::ChannelState::ReauthNeeded as i32
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let refused = s.tg.get_updates_calls();
    // Two operator round trips, each a whole gatewayctl process: a poller looping on the refused
    // token (a retry every 0.5–32 s) would show more calls.
    for _ in 0..2 {
        let listed = telegram_of(&gatewayctl(&s.gw, &["channels", "list"]).await);
        assert_eq!(listed["state"], "reauth_needed", "{listed}");
    }
    assert_eq!(
        s.tg.get_updates_calls(),
        refused,
        "no polling while the token is refused: {:?}",
        s.tg.api_calls()
            .iter()
            .map(|c| (c.method.clone(), c.status_returned))
            .collect::<Vec<_>>()
    );

    s.tg.set_mode("getUpdates", None);
    let after = gatewayctl(&s.gw, &["channels", "reconnect", "telegram"]).await;
    assert_eq!(after["state"], "connected", "{after}");
    let chat = ChatSpec::private(91);
    let id = s.tg.push_text(&chat, 91, "polling again");
    let reply = s.wait_reply(91, id).await;
    assert_eq!(reply.text, "llm: polling again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_errors_never_reveal_the_bot_token() {
    let setup = start("").await;
    // Every poll's connection is dropped: teloxide reports a network error whose own text names
    // the request URL, and with it the token.
    setup.tg.set_mode("getUpdates", Some(TgFault::Drop));
    let gw = &setup.gw;
    poll_until(TIMEOUT, "a polling failure is logged", || {
        gateway_tests::strip_ansi(&gw.stderr_log()).contains("Telegram polling failed.")
    })
    .await
    .expect("failure logged");
    let channels = Command::new(gatewayctl_bin())
        .args([
            "--addr",
            &gw.admin_url(),
            "--output",
            "json",
            "channels",
            "list",
        ])
        .output()
        .expect("gatewayctl");
    let listed = String::from_utf8_lossy(&channels.stdout).into_owned();
    assert!(listed.contains("telegram"), "{listed}");
    let secret_part = TOKEN.split(':').nth(1).expect("token secret part");
    for (what, text) in [("stderr log", gw.stderr_log()), ("admin API", listed)] {
        assert!(
            !text.contains(secret_part),
            "the token leaked into the {what}:\n{text}"
        );
    }
    setup.tg.set_mode("getUpdates", None);
}
