//! Access control through the real `gatewayd` binary on `FakeTelegram`: pairing (the code
//! reply, the message kept from the agent, `gatewayctl pairing approve` answering the kept
//! messages in order, deny, expiry, the pending cap, `pairing list --output json`), `/whoami`
//! and `/help` before pairing and `/link` refused, the allowlist reloaded on SIGHUP, the group
//! allowlist and the mention rule on Telegram and Discord, block / unblock, and the order of the
//! checks (dedupe, block, access, commands).
//!
//! The agent is the `openai` provider on `FakeOpenAi` (replies are `llm: <text>`); what reached
//! it is read from its recorded requests. Stored state is read through the admin API and polled.

use std::process::Command;

use gateway_proto::admin as pb;
use gateway_tests::fake_telegram::{ChatSpec, FakeTelegram, SentMessage};
use gateway_tests::{
    FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, gatewayctl_bin, inspect, last_user_content,
    poll_until, poll_until_async,
};
use serde_json::Value;

const TOKEN: &str = "4242:telegram-test-token";

struct Setup {
    gw: Gateway,
    tg: FakeTelegram,
    llm: FakeOpenAi,
}

/// Starts the fakes and the daemon with `access` as the `[access]` section's keys and
/// `telegram_extra` in `[channels.telegram]`.
async fn start(access: &str, telegram_extra: &str) -> Setup {
    let tg = FakeTelegram::start(TOKEN).await;
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [access]\n{access}\n\n\
         [channels.telegram]\nenabled = true\ntoken_env = \"TG_TOKEN\"\napi_url = \"{}\"\n\
         poll_timeout = \"1s\"\n{telegram_extra}\n",
        llm.base_url(),
        tg.api_url()
    ));
    opts.env.push(("TG_TOKEN".to_owned(), TOKEN.to_owned()));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    Setup { gw, tg, llm }
}

impl Setup {
    /// Waits until the sends to `chat` satisfy `pred`; returns them.
    async fn wait_sent_to(
        &self,
        chat: i64,
        what: &str,
        pred: impl Fn(&[SentMessage]) -> bool,
    ) -> Vec<SentMessage> {
        let chat = chat.to_string();
        let of_chat = |s: &[SentMessage]| -> Vec<SentMessage> {
            s.iter().filter(|m| m.chat_id == chat).cloned().collect()
        };
        match self.tg.wait_sent(|s| pred(&of_chat(s)), TIMEOUT).await {
            Ok(s) => of_chat(&s),
            Err(e) => panic!(
                "waiting for {what}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits for the reply to message `id` in `chat`.
    async fn wait_reply(&self, chat: i64, id: i64) -> SentMessage {
        let sent = self
            .wait_sent_to(chat, &format!("the reply to {chat}:{id}"), |s| {
                s.iter().any(|m| m.reply_to_message_id == Some(id))
            })
            .await;
        sent.into_iter()
            .find(|m| m.reply_to_message_id == Some(id))
            .expect("found by the wait")
    }

    fn sent_to(&self, chat: i64) -> Vec<SentMessage> {
        self.tg
            .sent()
            .into_iter()
            .filter(|m| m.chat_id == chat.to_string())
            .collect()
    }

    /// The texts the agent was asked, in order.
    fn agent_inputs(&self) -> Vec<String> {
        self.llm.requests().iter().map(last_user_content).collect()
    }

    /// Runs `gatewayctl ARGS`; panics naming stderr unless it succeeds.
    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(gatewayctl_bin())
            .arg("--addr")
            .arg(self.gw.admin_url())
            .args(args)
            .output()
            .expect("run gatewayctl");
        assert!(
            out.status.success(),
            "gatewayctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `gatewayctl --output json pairing list`.
    fn pairing_list(&self) -> Vec<Value> {
        let text = self.ctl(&["--output", "json", "pairing", "list"]);
        let value: Value = serde_json::from_str(&text).expect("JSON");
        value.as_array().expect("an array").clone()
    }

    /// Waits until every inbox row of `chat` is done, `count` of them.
    async fn wait_inbox_done(&self, chat: i64, count: usize) -> Vec<pb::InboxEntry> {
        let chat = chat.to_string();
        let mut rows = Vec::new();
        poll_until_async(
            TIMEOUT,
            &format!("{count} inbox rows of {chat} done"),
            || {
                let chat = chat.clone();
                let gw = &self.gw;
                async move {
                    inspect::inbox(gw, "telegram", &chat).await.is_ok_and(|r| {
                        r.len() == count && r.iter().all(|e| e.state == pb::InboxState::Done as i32)
                    })
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.gw.stderr_tail(40)));
        if let Ok(r) = inspect::inbox(&self.gw, "telegram", &chat).await {
            rows = r;
        }
        rows
    }
}

/// The code in a pairing reply.
fn code_of(text: &str) -> String {
    let at = text
        .find("pairing approve ")
        .unwrap_or_else(|| panic!("no code in {text:?}"));
    text[at + "pairing approve ".len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

fn is_pairing_reply(m: &SentMessage) -> bool {
    m.text.contains("Your access code is")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_keeps_messages_from_the_agent_and_answers_them_in_order_once_approved() {
    let s = start("dm_policy = \"pairing\"", "").await;
    let alice = ChatSpec::private(501);
    let first = s.tg.push_text(&alice, 501, "hello one");
    let reply = s.wait_reply(501, first).await;
    assert!(is_pairing_reply(&reply), "{reply:?}");
    let code = code_of(&reply.text);
    assert_eq!(code.len(), 6, "{code}");
    let second = s.tg.push_text(&alice, 501, "hello two");
    // `/whoami` and `/help` are answered before pairing; `/link` is refused.
    let whoami = s.tg.push_text(&alice, 501, "/whoami");
    let whoami = s.wait_reply(501, whoami).await;
    assert!(whoami.text.contains("telegram:501"), "{whoami:?}");
    let help = s.tg.push_text(&alice, 501, "/help");
    assert!(s.wait_reply(501, help).await.text.contains("/whoami"));
    let link = s.tg.push_text(&alice, 501, "/link");
    let link = s.wait_reply(501, link).await;
    assert!(link.text.contains("not available"), "{link:?}");
    // One pairing reply only, and nothing reached the agent.
    let pairing: Vec<_> = s
        .sent_to(501)
        .into_iter()
        .filter(is_pairing_reply)
        .collect();
    assert_eq!(pairing.len(), 1, "{pairing:?}");
    assert!(
        s.sent_to(501)
            .iter()
            .all(|m| m.reply_to_message_id != Some(second))
    );
    assert!(s.agent_inputs().is_empty(), "{:?}", s.agent_inputs());

    let list = s.pairing_list();
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = list[0].as_object().expect("an object");
    let mut keys: Vec<&str> = entry.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "channel",
            "code",
            "display_name",
            "expires_at",
            "first_seen",
            "kept_messages",
            "sender_id"
        ]
    );
    assert_eq!(entry["code"], code.as_str());
    assert_eq!(entry["channel"], "telegram");
    assert_eq!(entry["sender_id"], "501");
    assert_eq!(entry["kept_messages"], 2);
    assert!(
        entry["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{entry:?}"
    );

    let approved = s.ctl(&["pairing", "approve", &code.to_ascii_lowercase()]);
    assert!(approved.contains("approved"), "{approved}");
    // The first message's pairing reply also answers it: wait for the agent's answers.
    let answers = s
        .wait_sent_to(501, "the kept messages answered", |sent| {
            sent.iter().filter(|m| m.text.starts_with("llm: ")).count() == 2
        })
        .await;
    let answers: Vec<_> = answers
        .iter()
        .filter(|m| m.text.starts_with("llm: "))
        .map(|m| (m.reply_to_message_id, m.text.as_str()))
        .collect();
    assert_eq!(
        answers,
        [
            (Some(first), "llm: hello one"),
            (Some(second), "llm: hello two")
        ]
    );
    assert_eq!(s.agent_inputs(), ["hello one", "hello two"]);
    // From now on the sender talks to the agent directly, and the request is gone.
    let third = s.tg.push_text(&alice, 501, "hello three");
    assert_eq!(s.wait_reply(501, third).await.text, "llm: hello three");
    assert!(s.pairing_list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_the_pending_cap_and_expiry() {
    let s = start(
        "dm_policy = \"pairing\"\nmax_pending_per_channel = 1\npairing_ttl = \"3s\"",
        "",
    )
    .await;
    // Denied: removed, not told, never answered.
    let a = s.tg.push_text(ChatSpec::private(601), 601, "a");
    let code = code_of(&s.wait_reply(601, a).await.text);
    s.ctl(&["pairing", "deny", &code]);
    assert!(s.pairing_list().is_empty());
    s.wait_inbox_done(601, 1).await;
    // The cap: one pending; the next new sender is told to try later and nothing is stored.
    let b = s.tg.push_text(ChatSpec::private(602), 602, "b");
    let first_code = code_of(&s.wait_reply(602, b).await.text);
    let c = s.tg.push_text(ChatSpec::private(603), 603, "c");
    let later = s.wait_reply(603, c).await;
    assert!(later.text.contains("try again later"), "{later:?}");
    let list = s.pairing_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["sender_id"], "602");
    s.wait_inbox_done(603, 1).await;
    // Expiry: the request disappears; a new message starts a new request with a new reply.
    poll_until(TIMEOUT, "the pairing request expired", || {
        s.pairing_list().is_empty()
    })
    .await
    .expect("expired");
    let d = s.tg.push_text(ChatSpec::private(602), 602, "d");
    let new_code = code_of(&s.wait_reply(602, d).await.text);
    assert_ne!(new_code, first_code);
    // "b" expired unanswered, "d" is kept (pending) under the new request.
    let rows = inspect::inbox(&s.gw, "telegram", "602")
        .await
        .expect("ListInbox");
    let states: Vec<i32> = rows.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [pb::InboxState::Done as i32, pb::InboxState::Pending as i32],
        "{rows:?}"
    );
    assert!(s.agent_inputs().is_empty(), "{:?}", s.agent_inputs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_is_reloaded_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("allow.txt");
    std::fs::write(&file, "# who may talk\ntelegram:701\n").expect("write");
    let s = start(
        &format!(
            "dm_policy = \"allowlist\"\nallow_file = {}",
            gateway_tests::gateway::toml_string(&file.to_string_lossy())
        ),
        "",
    )
    .await;
    let ok = s.tg.push_text(ChatSpec::private(701), 701, "allowed");
    assert_eq!(s.wait_reply(701, ok).await.text, "llm: allowed");
    s.tg.push_text(ChatSpec::private(702), 702, "not yet");
    s.wait_inbox_done(702, 1).await;
    assert!(s.sent_to(702).is_empty(), "{:?}", s.sent_to(702));
    assert_eq!(s.agent_inputs(), ["allowed"]);

    std::fs::write(&file, "telegram:701\ntelegram:702 # added\n").expect("write");
    let pid = s.gw.pid().expect("running");
    let killed = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    poll_until(TIMEOUT, "the allow file is reloaded", || {
        s.gw.stderr_log().contains("Allow file reloaded.")
    })
    .await
    .expect("reloaded");
    let now = s.tg.push_text(ChatSpec::private(702), 702, "now allowed");
    assert_eq!(s.wait_reply(702, now).await.text, "llm: now allowed");
}

/// The value of the metric line `series` (`name{labels}`) in `/metrics`; 0 when absent.
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = gw.get("/metrics").await.expect("metrics").text;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_allowlist_and_the_mention_rule_on_telegram() {
    // `require_mention_in_groups` is on by default: nothing in the config sets it.
    let s = start(
        "dm_policy = \"open\"",
        "group_policy = \"allowlist\"\ngroups = [\"-100500\"]",
    )
    .await;
    let allowed = ChatSpec::group(-100500, "allowed");
    let other = ChatSpec::group(-100600, "other");
    // A group that is not allowed: dropped even when it mentions the bot.
    s.tg.push_text(&other, 901, "@gateway_bot are you there");
    s.wait_inbox_done(-100600, 1).await;
    // The allowed group: what does not address the bot is dropped; a mention, a command
    // addressed to the bot by name, and a reply to the bot are answered.
    s.tg.push_text(&allowed, 901, "chatting among ourselves");
    s.wait_inbox_done(-100500, 1).await;
    let mention = s.tg.push_text(&allowed, 901, "hey @gateway_bot what is up");
    let answer = s.wait_reply(-100500, mention).await;
    assert_eq!(answer.text, "llm: hey @gateway_bot what is up");
    let command = s.tg.push_text(&allowed, 902, "/whoami@gateway_bot");
    let whoami = s.wait_reply(-100500, command).await;
    assert!(
        whoami.text.contains("group:telegram:-100500"),
        "{}",
        whoami.text
    );
    let bot_message = answer.message_id.expect("the reply was sent");
    let reply =
        s.tg.push_reply(&allowed, 902, "and what about this", bot_message);
    assert_eq!(
        s.wait_reply(-100500, reply).await.text,
        "llm: and what about this"
    );
    s.tg.push_text(&allowed, 902, "/whoami@another_bot");
    s.wait_inbox_done(-100500, 5).await;
    assert!(
        s.sent_to(-100600).is_empty(),
        "nothing is replied to a dropped message"
    );
    assert_eq!(
        s.agent_inputs(),
        ["hey @gateway_bot what is up", "and what about this"]
    );
    assert_eq!(
        s.sent_to(-100500).len(),
        3,
        "the mention, the command and the reply are answered, nothing else"
    );
    let drops = |reason: &'static str| {
        format!("gateway_access_dropped_total{{channel=\"telegram\",reason=\"{reason}\"}}")
    };
    assert_eq!(metric(&s.gw, &drops("group_not_allowed")).await, 1.0);
    assert_eq!(metric(&s.gw, &drops("not_mentioned")).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mention_rule_is_set_per_channel_over_access() {
    let s = start(
        "dm_policy = \"open\"\nrequire_mention_in_groups = true",
        "require_mention_in_groups = false",
    )
    .await;
    let group = ChatSpec::group(-100700, "chatty");
    let id = s.tg.push_text(&group, 903, "no mention needed here");
    assert_eq!(
        s.wait_reply(-100700, id).await.text,
        "llm: no mention needed here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_run_in_order_dedupe_block_access_commands() {
    let s = start("dm_policy = \"pairing\"", "").await;
    let chat = ChatSpec::private(601);
    // Dedupe first: the same message delivered twice is one inbox row and one answer. `/help`
    // passes the access check of a sender who is not approved (commands come after access, and
    // `/help` is let through).
    let update = s.tg.make_update_text(&chat, 601, "/help");
    let help = update["message"]["message_id"].as_i64().expect("an id");
    let mut again = update.clone();
    if let Some(u) = again.as_object_mut() {
        u.remove("update_id");
    }
    s.tg.push_raw(update);
    s.tg.push_raw(again);
    assert!(s.wait_reply(601, help).await.text.contains("/whoami"));
    // A message after the repeat, so both copies have been taken when it is answered.
    let hello = s.tg.push_text(&chat, 601, "hello");
    assert!(is_pairing_reply(&s.wait_reply(601, hello).await));
    let rows = inspect::inbox(&s.gw, "telegram", "601")
        .await
        .expect("inbox");
    assert_eq!(rows.len(), 2, "the repeat is not stored again: {rows:?}");
    // Block comes before the access policy and commands: a blocked sender's `/help` is not
    // answered, and they are not told a pairing code.
    let listed: Value = serde_json::from_str(&s.ctl(&[
        "--output",
        "json",
        "identities",
        "list",
        "--channel",
        "telegram",
    ]))
    .expect("JSON");
    let user = listed["identities"][0]["user_id"]
        .as_i64()
        .expect("a user id")
        .to_string();
    s.ctl(&["identities", "block", &user]);
    s.tg.push_text(&chat, 601, "/help");
    poll_until_async(
        TIMEOUT,
        "the blocked `/help` is stored as blocked",
        || async {
            inspect::inbox(&s.gw, "telegram", "601")
                .await
                .is_ok_and(|r| r.len() == 3 && r[2].state == pb::InboxState::Blocked as i32)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", s.gw.stderr_tail(40)));
    assert_eq!(
        s.sent_to(601).len(),
        2,
        "only the first /help and the pairing reply were sent"
    );
    assert!(s.agent_inputs().is_empty(), "nothing reached the agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_is_stored_and_never_answered_until_unblocked() {
    let s = start("dm_policy = \"open\"", "").await;
    let chat = ChatSpec::private(801);
    let hi = s.tg.push_text(&chat, 801, "hi");
    s.wait_reply(801, hi).await;
    let listed: Value = serde_json::from_str(&s.ctl(&[
        "--output",
        "json",
        "identities",
        "list",
        "--channel",
        "telegram",
    ]))
    .expect("JSON");
    let user = listed["identities"][0]["user_id"]
        .as_i64()
        .expect("a user id")
        .to_string();
    s.ctl(&["identities", "block", &user]);
    let hidden = s.tg.push_text(&chat, 801, "hidden");
    poll_until_async(
        TIMEOUT,
        "the blocked message is stored as blocked",
        || async {
            inspect::inbox(&s.gw, "telegram", "801")
                .await
                .is_ok_and(|r| r.len() == 2 && r[1].state == pb::InboxState::Blocked as i32)
        },
    )
    .await
    .expect("blocked");
    assert!(
        s.sent_to(801)
            .iter()
            .all(|m| m.reply_to_message_id != Some(hidden))
    );
    s.ctl(&["identities", "unblock", &user]);
    let back = s.tg.push_text(&chat, 801, "back");
    assert_eq!(s.wait_reply(801, back).await.text, "llm: back");
    assert_eq!(s.agent_inputs(), ["hi", "back"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_allowlist_and_the_mention_rule_on_discord() {
    use gateway_tests::fake_discord::FakeDiscord;
    const DC_TOKEN: &str = "discord.test.token";
    const GUILD: u64 = 31_337;
    let dc = FakeDiscord::start(DC_TOKEN).await;
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [access]\ngroup_policy = \"disabled\"\n\n\
         [channels.discord]\nenabled = true\ntoken_env = \"DC_TOKEN\"\napi_url = \"{}\"\n\
         group_policy = \"allowlist\"\ngroups = [\"7001\"]\n",
        llm.base_url(),
        dc.url()
    ));
    opts.env.push(("DC_TOKEN".to_owned(), DC_TOKEN.to_owned()));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    dc.wait_identified(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr_tail(40)));
    dc.push_guild_message(GUILD, 7002, 6101, "in another channel", true);
    poll_until_async(TIMEOUT, "the other channel's message is done", || async {
        inspect::inbox(&gw, "discord", "7002")
            .await
            .is_ok_and(|r| r.len() == 1 && r[0].state == pb::InboxState::Done as i32)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.stderr_tail(40)));
    let id = dc.push_guild_message(GUILD, 7001, 6101, "in the allowed channel", true);
    let sent = dc
        .wait_sent(
            |s| s.iter().any(|m| m.reference_message_id == Some(id)),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.stderr_tail(40)));
    assert!(sent.iter().all(|m| m.channel_id == 7001), "{sent:?}");
    // The mention rule (on by default): a message that does not mention the bot is dropped; a
    // reply to the bot's message addresses it.
    dc.push_guild_message(GUILD, 7001, 6101, "among ourselves", false);
    let bot_reply = sent
        .iter()
        .find(|m| m.reference_message_id == Some(id))
        .and_then(|m| m.message_id)
        .expect("the reply was sent");
    let follow_up = dc.push_reply(7001, 6102, "a follow-up", bot_reply);
    dc.wait_sent(
        |s| s.iter().any(|m| m.reference_message_id == Some(follow_up)),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.stderr_tail(40)));
    poll_until_async(TIMEOUT, "the unmentioned message is done", || async {
        inspect::inbox(&gw, "discord", "7001")
            .await
            .is_ok_and(|r| r.len() == 3 && r.iter().all(|e| e.state == pb::InboxState::Done as i32))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.stderr_tail(40)));
    let inputs: Vec<String> = llm.requests().iter().map(last_user_content).collect();
    assert_eq!(inputs.len(), 2, "{inputs:?}");
    assert!(inputs[0].contains("in the allowed channel"), "{inputs:?}");
    assert!(inputs[1].contains("a follow-up"), "{inputs:?}");
    assert_eq!(
        metric(
            &gw,
            "gateway_access_dropped_total{channel=\"discord\",reason=\"not_mentioned\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_mention_in_guilds_stays_the_name_of_the_rule_on_discord() {
    use gateway_tests::fake_discord::FakeDiscord;
    const DC_TOKEN: &str = "discord.test.token";
    let dc = FakeDiscord::start(DC_TOKEN).await;
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [access]\ndm_policy = \"open\"\n\n\
         [channels.discord]\nenabled = true\ntoken_env = \"DC_TOKEN\"\napi_url = \"{}\"\n\
         require_mention_in_guilds = false\n",
        llm.base_url(),
        dc.url()
    ));
    opts.env.push(("DC_TOKEN".to_owned(), DC_TOKEN.to_owned()));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    dc.wait_identified(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr_tail(40)));
    let id = dc.push_guild_message(31_337, 7003, 6103, "no mention needed", false);
    dc.wait_sent(
        |s| s.iter().any(|m| m.reference_message_id == Some(id)),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.stderr_tail(40)));
}

#[test]
fn check_config_warns_about_open_web_channels_on_a_public_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |text: &str| {
        let path = dir.path().join("gatewayd.toml");
        std::fs::write(&path, text).expect("write");
        let out = Command::new(gateway_tests::gateway::gatewayd_bin().expect("gatewayd"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run gatewayd");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let data = gateway_tests::gateway::toml_string(&dir.path().join("data").to_string_lossy());
    let open = check(&format!(
        "[gateway]\ndata_dir = {data}\n[http]\nlisten = \"0.0.0.0:8080\"\n\
         [channels.webchat]\nenabled = true\ndm_policy = \"open\"\n"
    ));
    assert!(
        open.contains("warning: channels.webchat: dm_policy is \"open\""),
        "{open}"
    );
    // By default a public listener pairs WebChat senders: no warning.
    let paired = check(&format!(
        "[gateway]\ndata_dir = {data}\n[http]\nlisten = \"0.0.0.0:8080\"\n\
         [channels.webchat]\nenabled = true\n"
    ));
    assert!(!paired.contains("warning"), "{paired}");
}
