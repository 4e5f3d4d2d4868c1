//! The Discord channel through the real `gatewayd` binary against `FakeDiscord` (gateway
//! WebSocket and REST as serenity speaks them): Identify with the intents for direct messages,
//! guild messages and message content; heartbeats; a dropped socket resumed without a new
//! Identify (and a fresh Identify only when the session is invalidated), with nothing lost;
//! direct messages as the person's session and each guild channel as a group session;
//! `require_mention_in_guilds` answering only mentions and stripping the mention from the agent's
//! input; replies split at 2000 characters with the reference on the first chunk; a REST 429's
//! `retry_after` honoured; and a refused token ending as `reauth_needed` instead of a reconnect
//! loop, until `gatewayctl channels reconnect discord`.
//!
//! The agent is the `openai` provider on `FakeOpenAi` (replies are `llm: <text>`). Admin state and
//! `gatewayctl` output are polled; everything the fakes see is waited for with their waits.

use std::time::Duration;

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_client::AdminClient;
use gateway_tests::fake_discord::{DcFault, FakeDiscord, SentMessage, intents};
use gateway_tests::{
    FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, last_user_content, poll_until_async,
};
use serde_json::Value;
use tonic::transport::Channel;

const TOKEN: &str = "discord.test.token";
const GUILD: u64 = 31_337;

/// A gateway with the Discord channel on the fake, and the agent on the fake LLM.
struct Setup {
    gw: Gateway,
    dc: FakeDiscord,
    llm: FakeOpenAi,
}

/// Starts the fakes and the daemon; `prepare` sets the fake up before the daemon connects, and
/// `discord_extra` goes into `[channels.discord]`.
async fn start(discord_extra: &str, prepare: impl FnOnce(&FakeDiscord)) -> Setup {
    let dc = FakeDiscord::start(TOKEN).await;
    prepare(&dc);
    let llm = FakeOpenAi::start().await;
    let mut opts = GatewayOptions::with_config(format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\n\
         [channels.discord]\nenabled = true\ntoken_env = \"DC_TOKEN\"\napi_url = \"{}\"\n{discord_extra}\n",
        llm.base_url(),
        dc.url()
    ));
    opts.env.push(("DC_TOKEN".to_owned(), TOKEN.to_owned()));
    let gw = Gateway::start(opts).await.expect("start gatewayd");
    Setup { gw, dc, llm }
}

/// Started, with the session READY.
async fn start_identified(discord_extra: &str) -> Setup {
    let s = start(discord_extra, |_| {}).await;
    s.dc.wait_identified(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    s
}

impl Setup {
    /// Waits until the accepted sends to `channel` satisfy `pred`; returns them.
    async fn wait_sent_to(
        &self,
        channel: u64,
        what: &str,
        pred: impl Fn(&[&SentMessage]) -> bool,
    ) -> Vec<SentMessage> {
        let of_channel = |s: &[SentMessage]| -> Vec<SentMessage> {
            s.iter()
                .filter(|m| m.channel_id == channel)
                .cloned()
                .collect()
        };
        match self
            .dc
            .wait_sent(|s| pred(&of_channel(s).iter().collect::<Vec<_>>()), TIMEOUT)
            .await
        {
            Ok(s) => of_channel(&s),
            Err(e) => panic!(
                "waiting for {what}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits for the (first-chunk) reply to `message_id` in `channel`.
    async fn wait_reply(&self, channel: u64, message_id: u64) -> SentMessage {
        let sent = self
            .wait_sent_to(channel, &format!("the reply to {message_id}"), |s| {
                s.iter().any(|m| m.reference_message_id == Some(message_id))
            })
            .await;
        sent.into_iter()
            .find(|m| m.reference_message_id == Some(message_id))
            .expect("found by the wait")
    }

    /// Every send referencing `message_id`, accepted or not.
    fn attempts_for(&self, message_id: u64) -> Vec<SentMessage> {
        self.dc
            .sent()
            .into_iter()
            .filter(|m| m.reference_message_id == Some(message_id))
            .collect()
    }

    /// The agent's inputs, in order.
    fn agent_inputs(&self) -> Vec<String> {
        self.llm.requests().iter().map(last_user_content).collect()
    }

    async fn admin(&self) -> AdminClient<Channel> {
        let channel = Channel::from_shared(self.gw.admin_url())
            .expect("admin uri")
            .connect()
            .await
            .expect("connect to the admin API");
        AdminClient::new(channel)
    }

    /// Polls `ListChannels` until discord is in `state`.
    async fn wait_state(&self, state: pb::ChannelState, what: &str) {
        let admin = self.admin().await;
        poll_until_async(TIMEOUT, what, || {
            let mut admin = admin.clone();
            async move {
                admin
                    .list_channels(pb::ListChannelsRequest {})
                    .await
                    .is_ok_and(|r| {
                        r.into_inner()
                            .channels
                            .iter()
                            .any(|c| c.channel == "discord" && c.state == state as i32)
                    })
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.gw.stderr_tail(40)));
    }
}

/// Runs `gatewayctl --addr <admin> --output json ARGS…`, expecting success; returns its JSON.
async fn gatewayctl(gw: &Gateway, args: &[&str]) -> Value {
    gw.gatewayctl_json(args).await
}

fn discord_of(channels: &Value) -> Value {
    channels["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel"] == "discord"))
        .cloned()
        .unwrap_or_else(|| panic!("discord is listed: {channels}"))
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

// ---------------------------------------------------------------------------------------------
// The gateway connection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_asks_for_the_message_intents_and_heartbeats_follow() {
    let s = start("", |dc| {
        dc.set_heartbeat_interval(Duration::from_millis(200))
    })
    .await;
    s.dc.wait_identified(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let identifies = s.dc.identifies();
    assert_eq!(identifies.len(), 1, "{identifies:#?}");
    let id = &identifies[0];
    let wanted = intents::GUILD_MESSAGES | intents::DIRECT_MESSAGES | intents::MESSAGE_CONTENT;
    assert_eq!(
        id.intents & wanted,
        wanted,
        "GUILD_MESSAGES, DIRECT_MESSAGES and MESSAGE_CONTENT: intents {:#b}",
        id.intents
    );
    assert_eq!(id.token, format!("Bot {TOKEN}"));
    assert!(id.accepted);

    s.dc.wait_heartbeats(3, TIMEOUT)
        .await
        .expect("heartbeats keep the session alive");
    let dm = s.dc.push_dm(5001, 6001, "are you there");
    let reply = s.wait_reply(5001, dm).await;
    assert_eq!(reply.content, "llm: are you there");
    s.dc.wait_heartbeats(s.dc.heartbeats() + 1, TIMEOUT)
        .await
        .expect("a heartbeat after the dispatch");
    assert!(
        s.dc.last_heartbeat_seq().is_some_and(|seq| seq >= 2),
        "heartbeats carry the last sequence number seen (READY is 1, the DM after it): {:?}",
        s.dc.last_heartbeat_seq()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_is_resumed_without_a_new_identify_and_loses_nothing() {
    let s = start_identified("").await;
    let first = s.dc.push_dm(5002, 6002, "before the drop");
    s.wait_reply(5002, first).await;

    assert!(s.dc.drop_connection(), "a live connection");
    let during = s.dc.push_dm(5002, 6002, "sent while the socket was down");
    s.dc.wait_resume_count(1, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let reply = s.wait_reply(5002, during).await;
    assert_eq!(reply.content, "llm: sent while the socket was down");
    assert_eq!(s.dc.identify_count(), 1, "resumed, not identified again");
    assert_eq!(s.dc.failed_resume_count(), 0);
    s.wait_state(pb::ChannelState::Connected, "connected after the resume")
        .await;

    // Only an invalidated session needs a new Identify; what was pending is still answered.
    assert!(s.dc.invalidate_session(), "a live connection");
    let after = s.dc.push_dm(5002, 6002, "after the invalidation");
    s.dc.wait_identify_count(2, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let reply = s.wait_reply(5002, after).await;
    assert_eq!(reply.content, "llm: after the invalidation");
    for id in [first, during, after] {
        assert_eq!(s.attempts_for(id).len(), 1, "message {id} answered once");
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions and mentions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_are_the_persons_session_and_guild_channels_are_group_sessions() {
    let s = start_identified("").await;
    let (alice, bob) = (6101, 6102);
    let (channel_a, channel_b, dm) = (7101, 7102, 5101);

    let id = s.dc.push_dm(dm, alice, "/whoami");
    let reply = s.wait_reply(dm, id).await;
    assert!(
        reply.content.contains("This conversation: user:") && !reply.content.contains("group chat"),
        "{reply:?}"
    );
    assert!(
        reply.content.contains(&format!("discord:{alice}")),
        "{reply:?}"
    );

    for (channel, author) in [(channel_a, alice), (channel_a, bob), (channel_b, alice)] {
        let id =
            s.dc.push_guild_message(GUILD, channel, author, "/whoami", true);
        let reply = s.wait_reply(channel, id).await;
        assert!(
            reply
                .content
                .contains(&format!("This conversation: group:discord:{channel} ")),
            "one session per guild channel, whoever writes: {reply:?}"
        );
    }

    // Alice and Bob share channel A's history; Alice's direct chat does not see it.
    let id =
        s.dc.push_guild_message(GUILD, channel_a, alice, "alpha in the channel", true);
    s.wait_reply(channel_a, id).await;
    let id =
        s.dc.push_guild_message(GUILD, channel_a, bob, "beta in the channel", true);
    s.wait_reply(channel_a, id).await;
    let id = s.dc.push_dm(dm, alice, "gamma in private");
    s.wait_reply(dm, id).await;
    let requests = s.llm.requests();
    let history = |r: &Value| r["messages"].to_string();
    let beta = requests
        .iter()
        .find(|r| last_user_content(r) == "beta in the channel")
        .expect("beta reached the agent");
    assert!(
        history(beta).contains("alpha in the channel"),
        "a guild channel is one session for all its members: {beta}"
    );
    let gamma = requests
        .iter()
        .find(|r| last_user_content(r) == "gamma in private")
        .expect("gamma reached the agent");
    assert!(
        !history(gamma).contains("alpha in the channel"),
        "a group chat is never merged into a direct chat: {gamma}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_mention_only_mentions_are_answered_without_the_mention() {
    let s = start_identified("require_mention_in_guilds = true\n").await;
    let channel = 7201;
    let unmentioned =
        s.dc.push_guild_message(GUILD, channel, 6201, "chatting among ourselves", false);
    s.dc.wait_dispatched(unmentioned, TIMEOUT)
        .await
        .expect("the gateway delivered it to the bot");
    let mentioned =
        s.dc.push_guild_message(GUILD, channel, 6201, "what do you think", true);
    let reply = s.wait_reply(channel, mentioned).await;
    assert_eq!(reply.content, "llm: what do you think");

    // The later, mentioned message is answered; the earlier one in the same channel was not.
    assert!(s.attempts_for(unmentioned).is_empty(), "{:#?}", s.dc.sent());
    assert_eq!(s.dc.sent().len(), 1, "one reply in all: {:#?}", s.dc.sent());
    assert_eq!(
        s.agent_inputs(),
        ["what do you think"],
        "the agent sees only the mentioned message, without the mention"
    );

    // Direct messages need no mention.
    let dm = s.dc.push_dm(5201, 6201, "privately");
    s.wait_reply(5201, dm).await;
}

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_split_at_2000_characters_with_the_reference_on_the_first_chunk() {
    let s = start_identified("").await;
    // 3005 characters (and 5255 UTF-16 code units, 9005 bytes): two messages by characters.
    let text = "😀😀😀 ".repeat(750);
    let expected = format!("llm: {text}");
    let id = s.dc.push_dm(5301, 6301, &text);
    let want = squeeze(&expected);
    let chunks = s
        .wait_sent_to(5301, "every chunk", |m| {
            squeeze(&m.iter().map(|m| m.content.as_str()).collect::<String>()).len() >= want.len()
        })
        .await;
    assert_eq!(chunks.len(), 2, "{chunks:#?}");
    for c in &chunks {
        let chars = c.content.chars().count();
        assert!(chars <= 2000, "a chunk of {chars} characters");
    }
    assert!(
        chunks[0].content.chars().count() > 1000,
        "cut by characters near the limit, not by bytes or UTF-16 units: {}",
        chunks[0].content.chars().count()
    );
    assert_eq!(chunks[0].reference_message_id, Some(id));
    assert_eq!(chunks[1].reference_message_id, None, "the rest follow it");
    let joined: String = chunks.iter().map(|c| c.content.as_str()).collect();
    assert_eq!(squeeze(&joined), want);
    assert!(
        s.dc.sent().iter().all(SentMessage::is_success),
        "{:#?}",
        s.dc.sent()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_429_retry_after_is_honoured() {
    let s = start_identified("").await;
    s.dc.push_fault(DcFault::RateLimited {
        retry_after: 1.5,
        global: false,
    });
    let id = s.dc.push_dm(5401, 6401, "slow down");
    let reply = s.wait_reply(5401, id).await;
    assert_eq!(reply.content, "llm: slow down");
    let tries = s.attempts_for(id);
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0].status_returned, 429);
    assert!(tries[1].is_success());
    let waited = tries[1].at - tries[0].at;
    assert!(
        waited >= Duration::from_millis(1500),
        "the retry came {waited:?} after a 429 with retry_after = 1.5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_429_retry_after_pauses_that_chat_at_most_an_hour_and_breaks_nothing() {
    let s = start_identified("").await;
    // 1e300 s: a Duration overflow if taken as it is. The chat is paused (capped at an hour);
    // the daemon and the other chats go on.
    s.dc.push_fault(DcFault::RateLimited {
        retry_after: 1e300,
        global: false,
    });
    let held = s.dc.push_dm(5402, 6402, "wait forever?");
    // The fake's wait sees accepted sends only; the refused attempt is polled for.
    gateway_tests::poll_until(TIMEOUT, "the first attempt", || {
        !s.attempts_for(held).is_empty()
    })
    .await
    .expect("the first attempt");
    let other = s.dc.push_dm(5403, 6403, "meanwhile");
    let reply = s.wait_reply(5403, other).await;
    assert_eq!(reply.content, "llm: meanwhile");
    assert_eq!(s.attempts_for(held).len(), 1, "the limited chat waits");
    // The chat's pause is there, and ends within the hour.
    let hour_from_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        + 3_600_000
        + 60_000;
    poll_until_async(TIMEOUT, "the chat's pause is listed", || async {
        let limits = gatewayctl(&s.gw, &["ratelimits"]).await;
        paused_until(&limits, "5402").is_some_and(|until| until <= hour_from_now)
    })
    .await
    .expect("paused for at most an hour");
}

/// `paused_until_at_ms` of the bucket of `chat` anywhere in `v`.
fn paused_until(v: &Value, chat: &str) -> Option<i64> {
    match v {
        Value::Object(m) => {
            if m.get("chat_id").and_then(Value::as_str) == Some(chat)
                && let Some(p) = m.get("paused_until_at_ms").and_then(Value::as_i64)
            {
                return Some(p);
            }
            m.values().find_map(|x| paused_until(x, chat))
        }
        Value::Array(a) => a.iter().find_map(|x| paused_until(x, chat)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_ends_as_reauth_needed_not_a_reconnect_loop() {
    let s = start("", |dc| dc.set_reject_token(true)).await;
    s.wait_state(pb::ChannelState::ReauthNeeded, "discord is reauth_needed")
        .await;
    let listed = discord_of(&gatewayctl(&s.gw, &["channels", "list"]).await);
    assert_eq!(listed["state"], "reauth_needed", "{listed}");
    assert!(
        listed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401")),
        "the refusal is shown to the operator: {listed}"
    );
    let me = s.dc.rest_calls("/api/v10/users/@me");
    let identifies = s.dc.identifies().len();
    let connections = s.dc.connection_count();
    assert!(me <= 2, "the token is checked, not hammered: {me} calls");
    assert_eq!(identifies, 0, "no Identify with a refused token");

    // A message written meanwhile waits on Discord's side.
    let dm =
        s.dc.push_dm(5501, 6501, "written while the bot was locked out");
    // Two operator round trips, each a whole gatewayctl process: a reconnect loop would show
    // more token checks, connections or Identify attempts.
    for _ in 0..2 {
        let again = discord_of(&gatewayctl(&s.gw, &["channels", "list"]).await);
        assert_eq!(again["state"], "reauth_needed", "{again}");
    }
    assert_eq!(s.dc.rest_calls("/api/v10/users/@me"), me);
    assert_eq!(s.dc.identifies().len(), identifies);
    assert_eq!(s.dc.connection_count(), connections);
    assert!(s.dc.sent().is_empty());

    // Fixed on Discord's side, the operator reconnects; the bot connects and catches up.
    s.dc.set_reject_token(false);
    let after = gatewayctl(&s.gw, &["channels", "reconnect", "discord"]).await;
    assert_eq!(after["state"], "connected", "{after}");
    s.dc.wait_identified(TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.stderr_tail(40)));
    let reply = s.wait_reply(5501, dm).await;
    assert_eq!(reply.content, "llm: written while the bot was locked out");

    // A token revoked mid-session: the gateway closes with 4004 (authentication failed), and
    // that too holds the channel instead of reconnecting in a loop.
    s.dc.set_reject_token(true);
    assert!(
        s.dc.close_connection(4004, "Authentication failed."),
        "a live connection"
    );
    s.wait_state(
        pb::ChannelState::ReauthNeeded,
        "a 4004 close makes discord reauth_needed",
    )
    .await;
    let me = s.dc.rest_calls("/api/v10/users/@me");
    let identifies = s.dc.identifies().len();
    let connections = s.dc.connection_count();
    for _ in 0..2 {
        let again = discord_of(&gatewayctl(&s.gw, &["channels", "list"]).await);
        assert_eq!(again["state"], "reauth_needed", "{again}");
    }
    assert_eq!(
        (
            s.dc.rest_calls("/api/v10/users/@me"),
            s.dc.identifies().len(),
            s.dc.connection_count()
        ),
        (me, identifies, connections),
        "no reconnect loop after a 4004"
    );
}
