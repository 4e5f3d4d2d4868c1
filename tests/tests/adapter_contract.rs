//! The channel-adapter contract: one body of checks, [`adapter_contract`], that every channel
//! adapter passes, run against the real `gatewayd` once per adapter with that platform's fake:
//! WebChat over its WebSocket, the HTTP channel with `FakeCallback`, Telegram with `FakeTelegram`
//! and Discord with `FakeDiscord` (vector's `run_and_assert_sink_compliance`, applied to our
//! adapters). The agent is the `openai` provider on `FakeOpenAi`, so a reply is `llm: <text>`,
//! always longer than its input.
//!
//! The contract, step by step:
//! 1. a text message in gives one agent turn and one reply out, to the same chat, referencing the
//!    message it answers (WebChat `reply_to` = the client id, HTTP `reply_to` = `message_id`,
//!    Telegram `reply_parameters.message_id`, Discord `message_reference`);
//! 2. a group message gets the group's own session (`/whoami` names `group:<channel>:<chat>`);
//! 3. a reply longer than the platform's limit arrives as ordered chunks within the limit, the
//!    first one referencing the message;
//! 4. a platform 429 is retried no earlier than it asked, a 5xx is retried, a 401 holds the
//!    channel as `reauth_needed` (admin `ListChannels`) until `ReconnectChannel`, and then the held
//!    reply goes out, once;
//! 5. a disconnect is followed by a reconnect, and the message that crossed it is answered once;
//!
//! and, at the end, every message was answered exactly once (checked after a barrier message per
//! chat, since replies in one chat go out in order).
//!
//! What an adapter cannot do is skipped through its [`Capabilities`] with a printed reason, never
//! silently: WebChat has no groups, no length limit and no platform error statuses.
//!
//! The platforms are an enum ([`Adapter`]) rather than a trait: the tests crate has no
//! `async_trait`, and a `match` per operation keeps each platform's way of doing it in one place.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_client::AdminClient;
use gateway_tests::fake_discord::{self, DcFault, FakeDiscord};
use gateway_tests::fake_telegram::{self, ChatSpec, FakeTelegram, TgFault};
use gateway_tests::{
    CallbackFault, Delivery, FakeCallback, FakeOpenAi, Gateway, GatewayOptions, TIMEOUT,
    WebChatClient, last_user_content, poll_until_async,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

const TG_TOKEN: &str = "123456:contract-token";
const DC_TOKEN: &str = "contract.discord.token";
/// The guild of every Discord group chat in the contract.
const GUILD: u64 = 90_001;

// ---------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------

/// Every adapter passes this, whatever its platform.
async fn adapter_contract(p: &mut Platform) {
    a_text_message_gets_one_turn_and_one_reply_in_the_same_chat(p).await;
    a_group_message_gets_the_group_session(p).await;
    a_long_reply_arrives_in_chunks_within_the_limit(p).await;
    platform_errors_are_retried_or_held_for_reauth(p).await;
    a_disconnect_is_followed_by_a_reconnect_and_loses_nothing(p).await;
    every_message_was_answered_exactly_once(p).await;
}

async fn a_text_message_gets_one_turn_and_one_reply_in_the_same_chat(p: &mut Platform) {
    let chat = Chat::Direct(1);
    let before = p.llm.requests().len();
    let text = format!("hello from {}", p.caps.name);
    let id = p.send(chat, &text).await;
    let replies = p.wait_replies(chat, &id, 1).await;
    assert_eq!(replies[0].text, format!("llm: {text}"), "{replies:#?}");
    assert_eq!(replies[0].reply_to.as_deref(), Some(id.as_str()));

    let requests = p.llm.requests();
    assert_eq!(
        requests.len(),
        before + 1,
        "{}: one message is one agent turn",
        p.caps.name
    );
    assert_eq!(last_user_content(&requests[before]), text);

    // A direct chat is the person's session.
    let id = p.send(chat, "/whoami").await;
    let whoami = &p.wait_replies(chat, &id, 1).await[0];
    assert!(
        squeeze(&whoami.text).contains(&squeeze("This conversation: user:")),
        "{}: a direct chat is the user's session: {whoami:?}",
        p.caps.name
    );
    assert_eq!(
        p.llm.requests().len(),
        before + 1,
        "commands never reach the agent"
    );
}

async fn a_group_message_gets_the_group_session(p: &mut Platform) {
    if !p.caps.groups {
        eprintln!("{}: skipping the group step: no group chats", p.caps.name);
        return;
    }
    let chat = Chat::Group(1);
    let id = p.send(chat, "/whoami").await;
    let whoami = &p.wait_replies(chat, &id, 1).await[0];
    let key = format!("group:{}:{}", p.caps.name, p.chat_id(chat));
    assert!(
        squeeze(&whoami.text).contains(&squeeze(&format!("This conversation: {key}"))),
        "{}: a group chat is keyed by channel and chat ({key}): {whoami:?}",
        p.caps.name
    );
    assert!(
        squeeze(&whoami.text).contains(&squeeze("(a group chat has its own session)")),
        "{whoami:?}"
    );

    let text = "a question for the group";
    let id = p.send(chat, text).await;
    let reply = &p.wait_replies(chat, &id, 1).await[0];
    assert_eq!(reply.text, format!("llm: {text}"));
}

async fn a_long_reply_arrives_in_chunks_within_the_limit(p: &mut Platform) {
    let Some(limit) = p.caps.limit else {
        eprintln!(
            "{}: skipping the chunking step: no limit on a message",
            p.caps.name
        );
        return;
    };
    let chat = Chat::Direct(2);
    // Emoji make characters, UTF-16 code units and bytes all differ.
    let unit = "😀😀😀 ";
    let text = unit.repeat((limit.max * 3 / 2).div_ceil(limit.unit.len(unit)));
    let expected = format!("llm: {text}");
    assert!(limit.unit.len(&expected) > limit.max);
    let id = p.send(chat, &text).await;
    let want = squeeze(&expected);
    let chunks = p
        .wait_sent(chat, "every chunk of the long reply", |s| {
            squeeze(&s.iter().map(|c| c.text.as_str()).collect::<String>()).len() >= want.len()
        })
        .await;
    let barrier = p.barrier(chat).await;
    let sent = p.attempts(chat);
    let chunks_after = &sent[..sent.len() - 1];
    assert_eq!(
        chunks_after.len(),
        chunks.len(),
        "{}: no chunk is sent twice (barrier {barrier})",
        p.caps.name
    );
    assert!(
        chunks.len() >= 2,
        "{}: a reply of {} {:?} over a limit of {} is split: {chunks:#?}",
        p.caps.name,
        limit.unit.len(&expected),
        limit.unit,
        limit.max
    );
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.ok, "{}: chunk {i} was refused: {c:?}", p.caps.name);
        let len = limit.unit.len(&c.text);
        assert!(
            (1..=limit.max).contains(&len),
            "{}: chunk {i} is {len} {:?}, limit {}",
            p.caps.name,
            limit.unit,
            limit.max
        );
    }
    assert_eq!(
        chunks[0].reply_to.as_deref(),
        Some(id.as_str()),
        "{}: the first chunk references the message",
        p.caps.name
    );
    let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        squeeze(&joined),
        want,
        "{}: the chunks, in order, are the reply",
        p.caps.name
    );
}

async fn platform_errors_are_retried_or_held_for_reauth(p: &mut Platform) {
    if !p.caps.platform_errors {
        eprintln!(
            "{}: skipping the platform-error step: sends are not answered with statuses",
            p.caps.name
        );
        return;
    }
    let name = p.caps.name;

    // 429: retried, and no earlier than the platform asked.
    let chat = Chat::Direct(3);
    p.inject(chat, PlatformFault::RateLimited { secs: 1 });
    let id = p.send(chat, "rate limited once").await;
    p.wait_replies(chat, &id, 1).await;
    let tries = p.attempts_for(chat, &id);
    assert_eq!(tries.len(), 2, "{name}: one 429, one retry: {tries:#?}");
    assert!(!tries[0].ok && tries[1].ok, "{name}: {tries:#?}");
    let waited = tries[1].at.duration_since(tries[0].at);
    assert!(
        waited >= Duration::from_secs(1),
        "{name}: the retry after a 429 with retry_after = 1 s came after {waited:?}"
    );

    // 5xx: retried.
    let chat = Chat::Direct(4);
    p.inject(chat, PlatformFault::ServerError);
    let id = p.send(chat, "server error once").await;
    p.wait_replies(chat, &id, 1).await;
    let tries = p.attempts_for(chat, &id);
    assert_eq!(tries.len(), 2, "{name}: one 5xx, one retry: {tries:#?}");
    assert!(!tries[0].ok && tries[1].ok, "{name}: {tries:#?}");

    // 401: the channel is held as reauth_needed, nothing is dead-lettered, and the operator's
    // reconnect (after the credentials are fixed) sends the held reply.
    let chat = Chat::Direct(5);
    p.inject(chat, PlatformFault::Unauthorized);
    let id = p.send(chat, "credentials refused").await;
    let held = p
        .wait_state(
            pb::ChannelState::ReauthNeeded,
            "a 401 makes it reauth_needed",
        )
        .await;
    assert!(
        !held.last_error.is_empty(),
        "{name}: the refusal is kept for the operator: {held:?}"
    );
    let tries = p.attempts_for(chat, &id);
    assert!(
        !tries.is_empty() && tries.iter().all(|t| !t.ok),
        "{name}: {tries:#?}"
    );
    let dead = p.dead_letters().await;
    assert_eq!(dead.total, 0, "{name}: held, not dead-lettered: {dead:?}");

    p.clear_faults(chat);
    let mut admin = p.admin.clone();
    let after = admin
        .reconnect_channel(pb::ReconnectChannelRequest {
            channel: p.caps.channel.to_owned(),
        })
        .await
        .expect("ReconnectChannel")
        .into_inner()
        .channel
        .expect("the channel after the reconnect");
    assert_eq!(
        after.state,
        pb::ChannelState::Connected as i32,
        "{name}: the reconnect with good credentials connects: {after:?}"
    );
    let replies = p.wait_replies(chat, &id, 1).await;
    assert_eq!(replies[0].text, "llm: credentials refused");
}

async fn a_disconnect_is_followed_by_a_reconnect_and_loses_nothing(p: &mut Platform) {
    let chat = Chat::Direct(6);
    let text = "across the outage";
    let before = p.llm.requests().len();
    let id = p.send_through_outage(chat, text).await;
    let replies = p.wait_replies(chat, &id, 1).await;
    assert_eq!(replies[0].text, format!("llm: {text}"));
    let turns: Vec<String> = p.llm.requests()[before..]
        .iter()
        .map(last_user_content)
        .collect();
    assert_eq!(turns, [text], "{}: one agent turn", p.caps.name);
    p.wait_state(
        pb::ChannelState::Connected,
        "the channel is connected again after the outage",
    )
    .await;
}

async fn every_message_was_answered_exactly_once(p: &mut Platform) {
    let asked = p.asked.clone();
    let mut chats: Vec<Chat> = Vec::new();
    for (chat, _) in &asked {
        if !chats.contains(chat) {
            chats.push(*chat);
        }
    }
    for chat in chats {
        p.barrier(chat).await;
    }
    for (chat, id) in &asked {
        let n = p.replies_to(*chat, id).len();
        assert_eq!(
            n,
            1,
            "{}: message {id} in {chat:?} got {n} replies: {:#?}",
            p.caps.name,
            p.attempts(*chat)
        );
    }
}

/// Removes whitespace, which a split may drop at its cut.
fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

// ---------------------------------------------------------------------------------------------
// One test per adapter
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webchat_passes_the_adapter_contract() {
    let mut p = Platform::webchat().await;
    adapter_contract(&mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_passes_the_adapter_contract() {
    let mut p = Platform::http().await;
    adapter_contract(&mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_passes_the_adapter_contract() {
    let mut p = Platform::telegram().await;
    adapter_contract(&mut p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_passes_the_adapter_contract() {
    let mut p = Platform::discord().await;
    adapter_contract(&mut p).await;
}

// ---------------------------------------------------------------------------------------------
// Platforms
// ---------------------------------------------------------------------------------------------

/// How a platform measures its limit on one message.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Chars,
    Utf16,
}

impl Unit {
    fn len(self, s: &str) -> usize {
        match self {
            Unit::Chars => s.chars().count(),
            Unit::Utf16 => s.encode_utf16().count(),
        }
    }
}

/// A platform's limit on one message.
#[derive(Debug, Clone, Copy)]
struct Limit {
    max: usize,
    unit: Unit,
}

/// What an adapter can do; the contract skips what it cannot, saying so.
#[derive(Debug, Clone, Copy)]
struct Capabilities {
    /// The channel in the admin API.
    channel: &'static str,
    /// The channel's name in session keys and addresses.
    name: &'static str,
    /// The platform has group chats.
    groups: bool,
    /// The platform limits the length of one message.
    limit: Option<Limit>,
    /// The platform answers sends with statuses (429, 5xx, 401).
    platform_errors: bool,
}

/// A conversation, numbered; each platform maps it to its own ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Chat {
    Direct(u64),
    Group(u64),
}

/// One send of a reply (or of a chunk) as the platform saw it.
#[derive(Debug, Clone)]
struct Sent {
    text: String,
    /// The platform's reference to the message it answers.
    reply_to: Option<String>,
    at: Instant,
    /// The platform accepted it.
    ok: bool,
    /// `(index from 1, count)` where the platform numbers the chunks of a reply (HTTP).
    part: Option<(u64, u64)>,
}

impl Sent {
    /// The first (or only) chunk of a reply. Telegram and Discord reference the message only
    /// from the first chunk; HTTP numbers its chunks.
    fn starts_reply(&self) -> bool {
        self.reply_to.is_some() && self.part.is_none_or(|(index, _)| index == 1)
    }
}

/// The replies to message `id` among the accepted sends `sent`, each with the text of all its
/// chunks and whether every chunk has arrived (known where the platform numbers them).
fn assemble(sent: &[Sent], id: &str) -> Vec<(Sent, bool)> {
    let ok: Vec<&Sent> = sent.iter().filter(|s| s.ok).collect();
    let mut out = Vec::new();
    for (i, first) in ok.iter().enumerate() {
        if first.reply_to.as_deref() != Some(id) || !first.starts_reply() {
            continue;
        }
        let mut whole = (*first).clone();
        let rest = &ok[i + 1..];
        let complete = match first.part {
            Some((_, count)) => {
                let mut next = 2;
                for c in rest {
                    if c.reply_to.as_deref() == Some(id) && c.part == Some((next, count)) {
                        whole.text.push_str(&c.text);
                        next += 1;
                    }
                }
                next > count
            }
            None => {
                for c in rest.iter().take_while(|c| c.reply_to.is_none()) {
                    whole.text.push_str(&c.text);
                }
                true
            }
        };
        out.push((whole, complete));
    }
    out
}

/// An answer the platform gives to the gateway's next send.
#[derive(Debug, Clone, Copy)]
enum PlatformFault {
    /// 429 with the platform's own retry-after.
    RateLimited { secs: u64 },
    /// A 5xx.
    ServerError,
    /// 401 until cleared.
    Unauthorized,
}

/// The platform side of one adapter: its fake, and how to talk through it.
enum Adapter {
    WebChat(WebChatSide),
    Http(FakeCallback),
    Telegram(FakeTelegram),
    Discord(FakeDiscord),
}

/// WebChat: one browser socket per chat, and every reply frame read from it.
#[derive(Default)]
struct WebChatSide {
    sockets: HashMap<String, WebChatClient>,
    seen: HashMap<String, Vec<Sent>>,
}

/// A running gateway with one adapter under test.
struct Platform {
    caps: Capabilities,
    adapter: Adapter,
    gw: Gateway,
    llm: FakeOpenAi,
    admin: AdminClient<Channel>,
    /// Every message sent and expected to get exactly one reply referencing it.
    asked: Vec<(Chat, String)>,
    next_id: u64,
}

fn base_config(llm: &FakeOpenAi) -> String {
    format!(
        "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nretry_backoff = \"10ms\"\n\n\
         [delivery]\nretry_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 20\n\n",
        llm.base_url()
    )
}

impl Platform {
    async fn webchat() -> Platform {
        let llm = FakeOpenAi::start().await;
        let opts = GatewayOptions::with_config(base_config(&llm));
        let caps = Capabilities {
            channel: "webchat",
            name: "webchat",
            groups: false,
            limit: None,
            platform_errors: false,
        };
        Platform::launch(caps, Adapter::WebChat(WebChatSide::default()), llm, opts).await
    }

    async fn http() -> Platform {
        let llm = FakeOpenAi::start().await;
        let callback = FakeCallback::start().await;
        let opts = GatewayOptions::with_config(format!(
            "{}[channels.http]\nenabled = true\ncallback_url = \"{}\"\nmax_reply_chars = 100\n",
            base_config(&llm),
            callback.url()
        ));
        let caps = Capabilities {
            channel: "http",
            name: "http",
            groups: true,
            limit: Some(Limit {
                max: 100,
                unit: Unit::Chars,
            }),
            platform_errors: true,
        };
        Platform::launch(caps, Adapter::Http(callback), llm, opts).await
    }

    async fn telegram() -> Platform {
        let llm = FakeOpenAi::start().await;
        let tg = FakeTelegram::start(TG_TOKEN).await;
        let mut opts = GatewayOptions::with_config(format!(
            "{}[channels.telegram]\nenabled = true\ntoken_env = \"TG_TOKEN\"\napi_url = \"{}\"\npoll_timeout = \"1s\"\n",
            base_config(&llm),
            tg.api_url()
        ));
        opts.env.push(("TG_TOKEN".to_owned(), TG_TOKEN.to_owned()));
        let caps = Capabilities {
            channel: "telegram",
            name: "telegram",
            groups: true,
            limit: Some(Limit {
                max: fake_telegram::MAX_TEXT_UTF16,
                unit: Unit::Utf16,
            }),
            platform_errors: true,
        };
        Platform::launch(caps, Adapter::Telegram(tg), llm, opts).await
    }

    async fn discord() -> Platform {
        let llm = FakeOpenAi::start().await;
        let dc = FakeDiscord::start(DC_TOKEN).await;
        let mut opts = GatewayOptions::with_config(format!(
            "{}[channels.discord]\nenabled = true\ntoken_env = \"DC_TOKEN\"\napi_url = \"{}\"\n",
            base_config(&llm),
            dc.url()
        ));
        opts.env.push(("DC_TOKEN".to_owned(), DC_TOKEN.to_owned()));
        let caps = Capabilities {
            channel: "discord",
            name: "discord",
            groups: true,
            limit: Some(Limit {
                max: 2000,
                unit: Unit::Chars,
            }),
            platform_errors: true,
        };
        let p = Platform::launch(caps, Adapter::Discord(dc), llm, opts).await;
        if let Adapter::Discord(dc) = &p.adapter {
            dc.wait_identified(TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", p.gw.stderr_tail(40)));
        }
        p
    }

    async fn launch(
        caps: Capabilities,
        adapter: Adapter,
        llm: FakeOpenAi,
        opts: GatewayOptions,
    ) -> Platform {
        let gw = Gateway::start(opts).await.expect("start gatewayd");
        let channel = Channel::from_shared(gw.admin_url())
            .expect("admin uri")
            .connect()
            .await
            .expect("connect to the admin API");
        Platform {
            caps,
            adapter,
            gw,
            llm,
            admin: AdminClient::new(channel),
            asked: Vec::new(),
            next_id: 0,
        }
    }

    /// The platform's id of `chat`.
    fn chat_id(&self, chat: Chat) -> String {
        match (&self.adapter, chat) {
            (Adapter::WebChat(_), Chat::Direct(n) | Chat::Group(n)) => format!("contract-{n}"),
            (Adapter::Http(_), Chat::Direct(n)) => format!("dm-{n}"),
            (Adapter::Http(_), Chat::Group(n)) => format!("room-{n}"),
            (Adapter::Telegram(_), _) => tg_chat(chat).0.id().to_string(),
            (Adapter::Discord(_), _) => dc_chat(chat).0.to_string(),
        }
    }

    /// Sends `text` as a user in `chat`; returns the platform's reference to the message.
    async fn send(&mut self, chat: Chat, text: &str) -> String {
        self.next_id += 1;
        let chat_id = self.chat_id(chat);
        let id = match &mut self.adapter {
            Adapter::WebChat(side) => {
                let id = format!("c-{}", self.next_id);
                side.send(&self.gw, &chat_id, &id, text).await;
                id
            }
            Adapter::Http(_) => {
                let id = format!("m-{}", self.next_id);
                let (sender, chat_type) = match chat {
                    Chat::Direct(n) => (format!("user-{n}"), "direct"),
                    Chat::Group(n) => (format!("member-{n}"), "group"),
                };
                let body = json!({"message_id": id, "chat_id": chat_id, "sender_id": sender,
                                  "text": text, "chat_type": chat_type});
                let reply = self.gw.post_http_message(&body).await.expect("post");
                assert_eq!(reply.status, 202, "{}", reply.text);
                id
            }
            Adapter::Telegram(tg) => {
                let (spec, user) = tg_chat(chat);
                tg.push_text(&spec, user, text).to_string()
            }
            Adapter::Discord(dc) => {
                let (channel, author) = dc_chat(chat);
                let id = match chat {
                    Chat::Direct(_) => dc.push_dm(channel, author, text),
                    Chat::Group(_) => dc.push_guild_message(GUILD, channel, author, text, true),
                };
                id.to_string()
            }
        };
        self.asked.push((chat, id.clone()));
        id
    }

    /// Every send the platform saw in `chat`, accepted or not, in order.
    fn attempts(&self, chat: Chat) -> Vec<Sent> {
        let chat_id = self.chat_id(chat);
        match &self.adapter {
            Adapter::WebChat(side) => side.seen.get(&chat_id).cloned().unwrap_or_default(),
            Adapter::Http(callback) => http_sent(&callback.received(), &chat_id),
            Adapter::Telegram(tg) => tg_sent(&tg.sent(), &chat_id),
            Adapter::Discord(dc) => dc_sent(&dc.sent(), &chat_id),
        }
    }

    /// The sends in `chat` referencing the message `id`, accepted or not.
    fn attempts_for(&self, chat: Chat, id: &str) -> Vec<Sent> {
        self.attempts(chat)
            .into_iter()
            .filter(|s| s.reply_to.as_deref() == Some(id))
            .collect()
    }

    /// The replies to the message `id` in `chat` (chunks joined).
    fn replies_to(&self, chat: Chat, id: &str) -> Vec<Sent> {
        assemble(&self.attempts(chat), id)
            .into_iter()
            .map(|(reply, _)| reply)
            .collect()
    }

    /// Waits until the accepted sends in `chat` satisfy `pred`; returns them.
    async fn wait_sent(
        &mut self,
        chat: Chat,
        what: &str,
        pred: impl Fn(&[Sent]) -> bool,
    ) -> Vec<Sent> {
        let chat_id = self.chat_id(chat);
        let accepted = |all: Vec<Sent>| all.into_iter().filter(|s| s.ok).collect::<Vec<_>>();
        let got = match &mut self.adapter {
            Adapter::WebChat(side) => side.wait(&chat_id, &pred).await,
            Adapter::Http(callback) => callback
                .wait_delivered(|d| pred(&http_sent(d, &chat_id)), TIMEOUT)
                .await
                .map(|d| http_sent(&d, &chat_id)),
            Adapter::Telegram(tg) => tg
                .wait_sent(|s| pred(&tg_sent(s, &chat_id)), TIMEOUT)
                .await
                .map(|s| tg_sent(&s, &chat_id)),
            Adapter::Discord(dc) => dc
                .wait_sent(|s| pred(&dc_sent(s, &chat_id)), TIMEOUT)
                .await
                .map(|s| dc_sent(&s, &chat_id)),
        };
        match got {
            Ok(sent) => accepted(sent),
            Err(e) => panic!(
                "{}: waiting for {what} in {chat:?}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                self.caps.name,
                self.gw.stderr_tail(40)
            ),
        }
    }

    /// Waits for `n` complete replies to `id` in `chat`; returns them (chunks joined).
    async fn wait_replies(&mut self, chat: Chat, id: &str, n: usize) -> Vec<Sent> {
        let complete = |s: &[Sent]| {
            assemble(s, id)
                .into_iter()
                .filter(|(_, complete)| *complete)
                .map(|(reply, _)| reply)
                .collect::<Vec<_>>()
        };
        let sent = self
            .wait_sent(chat, &format!("{n} reply(ies) to {id}"), |s| {
                complete(s).len() >= n
            })
            .await;
        complete(&sent)
    }

    /// Sends a message in `chat` and waits for its reply: every reply to an earlier message of
    /// the chat has been sent by then (a chat's replies go out in order). Returns its id.
    async fn barrier(&mut self, chat: Chat) -> String {
        let id = self.send(chat, "barrier").await;
        self.wait_replies(chat, &id, 1).await;
        id
    }

    /// Makes the platform answer the gateway's next send in `chat` with `fault` (a 401 stays
    /// until [`clear_faults`](Self::clear_faults)).
    fn inject(&self, chat: Chat, fault: PlatformFault) {
        let chat_id = self.chat_id(chat);
        match &self.adapter {
            Adapter::WebChat(_) => panic!("WebChat has no platform errors"),
            Adapter::Http(callback) => match fault {
                PlatformFault::RateLimited { secs } => callback.push_fault_for_chat(
                    &chat_id,
                    CallbackFault::Status429 {
                        retry_after: secs.to_string(),
                    },
                ),
                PlatformFault::ServerError => {
                    callback.push_fault_for_chat(&chat_id, CallbackFault::Status(503));
                }
                PlatformFault::Unauthorized => {
                    callback.set_chat_mode(&chat_id, Some(CallbackFault::Status(401)));
                }
            },
            // The Telegram and Discord fakes fault by method, not by chat: the contract sends
            // nothing else meanwhile.
            Adapter::Telegram(tg) => match fault {
                PlatformFault::RateLimited { secs } => {
                    tg.push_fault("sendMessage", TgFault::RetryAfter(secs));
                }
                // teloxide sleeps 10 s on a 5xx before returning the error; this is that once.
                PlatformFault::ServerError => tg.push_fault(
                    "sendMessage",
                    TgFault::Status {
                        code: 500,
                        description: "Internal Server Error".to_owned(),
                    },
                ),
                PlatformFault::Unauthorized => {
                    tg.set_mode("sendMessage", Some(TgFault::Unauthorized));
                }
            },
            Adapter::Discord(dc) => match fault {
                PlatformFault::RateLimited { secs } => dc.push_fault(DcFault::RateLimited {
                    retry_after: secs as f64,
                    global: false,
                }),
                PlatformFault::ServerError => dc.push_fault(DcFault::Status(502)),
                PlatformFault::Unauthorized => dc.set_mode(Some(DcFault::Unauthorized)),
            },
        }
    }

    /// Lifts a sticky fault of [`inject`](Self::inject).
    fn clear_faults(&self, chat: Chat) {
        let chat_id = self.chat_id(chat);
        match &self.adapter {
            Adapter::WebChat(_) => {}
            Adapter::Http(callback) => callback.set_chat_mode(&chat_id, None),
            Adapter::Telegram(tg) => tg.set_mode("sendMessage", None),
            Adapter::Discord(dc) => dc.set_mode(None),
        }
    }

    /// Sends `text` in `chat` so that it crosses an outage of the platform link, and brings the
    /// link back; returns the message's reference. Each platform breaks what its adapter depends
    /// on: WebChat the browser's socket (the reply is queued while it is closed), HTTP the
    /// callback (dropped connections), Telegram `getUpdates` (dropped while the message waits
    /// there), Discord the gateway socket (the message is pushed while no session is live).
    async fn send_through_outage(&mut self, chat: Chat, text: &str) -> String {
        let chat_id = self.chat_id(chat);
        match &self.adapter {
            Adapter::WebChat(_) => {
                // The turn is held until the socket is closed, so the reply finds no browser.
                self.llm.hold(text);
                let id = self.send(chat, text).await;
                self.llm
                    .wait_held(text, 1, TIMEOUT)
                    .await
                    .expect("the turn reaches the agent");
                if let Adapter::WebChat(side) = &mut self.adapter {
                    side.disconnect(&chat_id).await;
                }
                let failed = self.channel_info().await.failed;
                self.llm.release(text);
                let admin = self.admin.clone();
                poll_until_async(
                    TIMEOUT,
                    "the reply is tried while the browser is away",
                    || {
                        let mut admin = admin.clone();
                        async move {
                            channel_of(&mut admin, "webchat")
                                .await
                                .is_some_and(|c| c.failed > failed)
                        }
                    },
                )
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{e}: a reply sent to a closed socket would be lost\n{}",
                        self.gw.stderr_tail(40)
                    )
                });
                if let Adapter::WebChat(side) = &mut self.adapter {
                    side.connect(&self.gw, &chat_id).await;
                }
                id
            }
            Adapter::Http(callback) => {
                for _ in 0..3 {
                    callback.push_fault_for_chat(&chat_id, CallbackFault::Drop);
                }
                let id = self.send(chat, text).await;
                if let Adapter::Http(callback) = &self.adapter {
                    callback
                        .wait_received(
                            |d| {
                                d.iter()
                                    .filter(|d| d.chat_id == chat_id && d.status_returned == 0)
                                    .count()
                                    >= 3
                            },
                            TIMEOUT,
                        )
                        .await
                        .expect("three dropped callbacks");
                }
                id
            }
            Adapter::Telegram(tg) => {
                let start = Instant::now();
                tg.set_mode("getUpdates", Some(TgFault::Drop));
                let calls = tg.get_updates_calls();
                // The parked long poll ends at its timeout; the next one is dropped.
                tg.wait_get_updates_calls(calls + 1, TIMEOUT)
                    .await
                    .expect("a dropped poll");
                let id = self.send(chat, text).await;
                let Adapter::Telegram(tg) = &self.adapter else {
                    unreachable!("matched above")
                };
                tg.wait_get_updates_calls(calls + 3, TIMEOUT)
                    .await
                    .expect("two more dropped polls");
                tg.set_mode("getUpdates", None);
                let dropped: Vec<Instant> = tg
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
            Adapter::Discord(dc) => {
                let identifies = dc.identify_count();
                let resumes = dc.resume_count();
                assert!(dc.drop_connection(), "a live gateway connection to drop");
                let id = self.send(chat, text).await;
                let Adapter::Discord(dc) = &self.adapter else {
                    unreachable!("matched above")
                };
                dc.wait_resume_count(resumes + 1, TIMEOUT)
                    .await
                    .unwrap_or_else(|e| panic!("{e}\n{}", self.gw.stderr_tail(40)));
                assert_eq!(
                    dc.identify_count(),
                    identifies,
                    "discord: the session is resumed, not identified again"
                );
                id
            }
        }
    }

    /// This channel in the admin API's `ListChannels`.
    async fn channel_info(&self) -> pb::ChannelInfo {
        let mut admin = self.admin.clone();
        channel_of(&mut admin, self.caps.channel)
            .await
            .unwrap_or_else(|| panic!("{} is not in ListChannels", self.caps.name))
    }

    /// Polls `ListChannels` until this channel is in `state`; returns it then.
    async fn wait_state(&self, state: pb::ChannelState, what: &str) -> pb::ChannelInfo {
        let admin = self.admin.clone();
        let channel = self.caps.channel;
        let reached = poll_until_async(TIMEOUT, what, || {
            let mut admin = admin.clone();
            async move {
                channel_of(&mut admin, channel)
                    .await
                    .is_some_and(|c| c.state == state as i32)
            }
        })
        .await;
        if let Err(e) = reached {
            panic!(
                "{}: {e}; now {:?}\n{}",
                self.caps.name,
                self.channel_info().await,
                self.gw.stderr_tail(40)
            );
        }
        self.channel_info().await
    }

    /// This channel's dead letters.
    async fn dead_letters(&self) -> pb::ListDeadLettersResponse {
        let mut admin = self.admin.clone();
        admin
            .list_dead_letters(pb::ListDeadLettersRequest {
                channel: self.caps.channel.to_owned(),
                ..Default::default()
            })
            .await
            .expect("ListDeadLetters")
            .into_inner()
    }
}

async fn channel_of(admin: &mut AdminClient<Channel>, channel: &str) -> Option<pb::ChannelInfo> {
    let list = admin
        .list_channels(pb::ListChannelsRequest {})
        .await
        .expect("ListChannels")
        .into_inner();
    list.channels.into_iter().find(|c| c.channel == channel)
}

impl WebChatSide {
    async fn connect(&mut self, gw: &Gateway, chat_id: &str) {
        let socket = WebChatClient::connect(&gw.ws_url(chat_id))
            .await
            .expect("connect the browser");
        self.sockets.insert(chat_id.to_owned(), socket);
    }

    async fn disconnect(&mut self, chat_id: &str) {
        if let Some(socket) = self.sockets.remove(chat_id) {
            socket.close().await.expect("close the browser's socket");
        }
    }

    /// Sends a message frame and reads frames up to its ack.
    async fn send(&mut self, gw: &Gateway, chat_id: &str, id: &str, text: &str) {
        if !self.sockets.contains_key(chat_id) {
            self.connect(gw, chat_id).await;
        }
        let socket = self.sockets.get_mut(chat_id).expect("connected above");
        socket.send_message(id, text).await.expect("send a frame");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let frame = self.read(chat_id, deadline).await;
            if frame["type"] == "ack" && frame["id"] == id {
                assert_eq!(frame["duplicate"], false, "{frame}");
                return;
            }
        }
    }

    /// Reads frames until `pred` holds over every reply frame of the chat.
    async fn wait(
        &mut self,
        chat_id: &str,
        pred: &impl Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let seen = self.seen.get(chat_id).cloned().unwrap_or_default();
            if pred(&seen) {
                return Ok(seen);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("timed out; replies so far: {seen:#?}");
            }
            self.read(chat_id, deadline).await;
        }
    }

    /// Reads one frame, recording a reply; panics on an error frame or a timeout.
    async fn read(&mut self, chat_id: &str, deadline: Instant) -> Value {
        let socket = self
            .sockets
            .get_mut(chat_id)
            .unwrap_or_else(|| panic!("no browser connected for {chat_id}"));
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = socket.recv(left).await.unwrap_or_else(|e| {
            panic!(
                "webchat {chat_id}: {e:#}; replies so far: {:#?}",
                self.seen.get(chat_id)
            )
        });
        match frame["type"].as_str() {
            Some("message") => self.seen.entry(chat_id.to_owned()).or_default().push(Sent {
                text: frame["text"].as_str().unwrap_or_default().to_owned(),
                reply_to: frame["reply_to"].as_str().map(str::to_owned),
                at: Instant::now(),
                ok: true,
                part: None,
            }),
            Some("ack") => {}
            _ => panic!("webchat {chat_id}: unexpected frame {frame}"),
        }
        frame
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

/// Discord: DM channel `5000 + n` with user `6000 + n`, or guild channel `7000 + n` with member
/// `8000 + n`.
fn dc_chat(chat: Chat) -> (u64, u64) {
    match chat {
        Chat::Direct(n) => (5000 + n, 6000 + n),
        Chat::Group(n) => (7000 + n, 8000 + n),
    }
}

fn http_sent(all: &[Delivery], chat_id: &str) -> Vec<Sent> {
    all.iter()
        .filter(|d| d.chat_id == chat_id)
        .map(|d| Sent {
            text: d.text.clone(),
            reply_to: d.reply_to.clone(),
            at: d.at,
            ok: d.is_delivered(),
            part: d.body["part"]["index"]
                .as_u64()
                .zip(d.body["part"]["count"].as_u64()),
        })
        .collect()
}

fn tg_sent(all: &[fake_telegram::SentMessage], chat_id: &str) -> Vec<Sent> {
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

fn dc_sent(all: &[fake_discord::SentMessage], chat_id: &str) -> Vec<Sent> {
    all.iter()
        .filter(|s| s.channel_id.to_string() == chat_id)
        .map(|s| Sent {
            text: s.content.clone(),
            reply_to: s.reference_message_id.map(|id| id.to_string()),
            at: s.at,
            ok: s.is_success(),
            part: None,
        })
        .collect()
}
