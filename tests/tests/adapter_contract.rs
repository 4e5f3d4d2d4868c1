//! The channel-adapter contract: one list of cases, [`cases`], that every channel adapter passes,
//! run against the real `gatewayd` once per adapter with that platform's fake: WebChat over its
//! WebSocket, the HTTP channel with `FakeCallback`, Telegram with `FakeTelegram` and Discord with
//! `FakeDiscord` (vector's `run_and_assert_sink_compliance`, applied to our adapters). The agent
//! is the `openai` provider on `FakeOpenAi`, so a reply is `llm: <text>`, always longer than its
//! input.
//!
//! The contract, case by case:
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
//! 6. every message was answered exactly once (checked after a barrier message per chat, since
//!    replies in one chat go out in order).
//!
//! A case names the capability it needs ([`Needs`]); an adapter whose [`Capabilities`] lack it
//! skips the case with a printed reason, never silently: WebChat has no groups, no length limit
//! and no platform error statuses. The runner prints one line per case and adapter (`ok`,
//! `skipped: <reason>` or `FAILED`).
//!
//! The cases speak to a platform only through [`PlatformSide`], the platform side of one adapter:
//! start its fake and name the gatewayd config that points the channel at it, send a user's text
//! in a chat, read back every send the gateway made there, inject a platform fault, and carry a
//! message across an outage of the link. Each platform's impl is its own file under
//! `adapter_contract/`, and [`Platform`] wraps it with the running gateway, the agent's fake and
//! the admin API.
//!
//! Adding a channel to the suite: write `adapter_contract/<channel>.rs` with a type implementing
//! [`PlatformSide`] (its `NAME` is the channel's name in config, session keys and the admin API),
//! declare it below with the other platform modules, and add one line
//! `<channel>_passes_the_adapter_contract => <channel>::<Type>` to the `adapters!` list. Every
//! case then runs for it, in its own `#[tokio::test]`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_client::AdminClient;
use gateway_tests::{
    FakeOpenAi, Gateway, GatewayOptions, TIMEOUT, last_user_content, poll_until_async,
};
use tonic::transport::Channel;

// An integration test's root looks for its modules beside it in `tests/`, where cargo would take
// each file for a test of its own; the platforms live in `adapter_contract/` instead.
#[path = "adapter_contract/discord.rs"]
mod discord;
#[path = "adapter_contract/http.rs"]
mod http;
#[path = "adapter_contract/imessage.rs"]
mod imessage;
#[path = "adapter_contract/signal.rs"]
mod signal;
#[path = "adapter_contract/slack.rs"]
mod slack;
#[path = "adapter_contract/telegram.rs"]
mod telegram;
#[path = "adapter_contract/webchat.rs"]
mod webchat;
#[path = "adapter_contract/whatsapp.rs"]
mod whatsapp;

// ---------------------------------------------------------------------------------------------
// The adapters: one test each
// ---------------------------------------------------------------------------------------------

/// One `#[tokio::test]` per adapter, each running every case of [`cases`] against it.
macro_rules! adapters {
    ($($test:ident => $side:ty),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                run_contract::<$side>().await;
            }
        )*
    };
}

adapters! {
    webchat_passes_the_adapter_contract => webchat::WebChat,
    http_passes_the_adapter_contract => http::HttpCallback,
    telegram_passes_the_adapter_contract => telegram::Telegram,
    discord_passes_the_adapter_contract => discord::Discord,
    slack_passes_the_adapter_contract => slack::Slack,
    whatsapp_passes_the_adapter_contract => whatsapp::WhatsApp,
    signal_passes_the_adapter_contract => signal::Signal,
    imessage_passes_the_adapter_contract => imessage::IMessage,
}

// ---------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------

/// A case's body, borrowing the adapter under test for as long as it runs.
type CaseFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One case of the contract: its function's name is what it checks.
struct Case<S> {
    name: &'static str,
    needs: Needs,
    run: for<'a> fn(&'a mut Platform<S>) -> CaseFuture<'a>,
}

/// Every case of the contract, in the order they run; each runs for every adapter.
fn cases<S: PlatformSide>() -> [Case<S>; 6] {
    macro_rules! case {
        ($case:ident, $needs:expr) => {
            Case {
                name: stringify!($case),
                needs: $needs,
                run: |p| Box::pin($case(p)),
            }
        };
    }
    [
        case!(
            a_text_message_gets_one_turn_and_one_reply_in_the_same_chat,
            Needs::Nothing
        ),
        case!(a_group_message_gets_the_group_session, Needs::Groups),
        case!(
            a_long_reply_arrives_in_chunks_within_the_limit,
            Needs::Limit
        ),
        case!(
            platform_errors_are_retried_or_held_for_reauth,
            Needs::PlatformErrors
        ),
        case!(
            a_disconnect_is_followed_by_a_reconnect_and_loses_nothing,
            Needs::Nothing
        ),
        case!(every_message_was_answered_exactly_once, Needs::Nothing),
    ]
}

/// What a case needs of the platform; an adapter without it skips the case, saying why.
#[derive(Debug, Clone, Copy)]
enum Needs {
    Nothing,
    /// Group chats.
    Groups,
    /// A limit on the length of one message.
    Limit,
    /// Sends answered with statuses (429, 5xx, 401).
    PlatformErrors,
}

impl Needs {
    /// Why an adapter with `caps` cannot run the case, if it cannot.
    fn missing(self, caps: &Capabilities) -> Option<&'static str> {
        match self {
            Needs::Nothing => None,
            Needs::Groups => (!caps.groups).then_some("no group chats"),
            Needs::Limit => caps.limit.is_none().then_some("no limit on a message"),
            Needs::PlatformErrors => {
                (!caps.platform_errors).then_some("sends are not answered with statuses")
            }
        }
    }
}

/// Runs every case against a gateway with the adapter `S`, printing a line per case.
async fn run_contract<S: PlatformSide>() {
    let mut p = Platform::<S>::start().await;
    for case in cases::<S>() {
        let what = case.name.replace('_', " ");
        if let Some(reason) = case.needs.missing(&p.caps) {
            eprintln!("{}: {what}: skipped: {reason}", S::NAME);
            continue;
        }
        let started = Instant::now();
        let failed = FailedLine {
            adapter: S::NAME,
            case: &what,
        };
        (case.run)(&mut p).await;
        drop(failed);
        eprintln!("{}: {what}: ok ({:.1?})", S::NAME, started.elapsed());
    }
}

/// Prints the `FAILED` line of a case that panics.
struct FailedLine<'a> {
    adapter: &'static str,
    case: &'a str,
}

impl Drop for FailedLine<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}: {}: FAILED", self.adapter, self.case);
        }
    }
}

async fn a_text_message_gets_one_turn_and_one_reply_in_the_same_chat<S: PlatformSide>(
    p: &mut Platform<S>,
) {
    let name = S::NAME;
    let chat = Chat::Direct(1);
    let before = p.env.llm.requests().len();
    let text = format!("hello from {name}");
    let id = p.send(chat, &text).await;
    let replies = p.wait_replies(chat, &id, 1).await;
    assert_eq!(replies[0].text, format!("llm: {text}"), "{replies:#?}");
    assert_eq!(replies[0].reply_to.as_deref(), Some(id.as_str()));

    let requests = p.env.llm.requests();
    assert_eq!(
        requests.len(),
        before + 1,
        "{name}: one message is one agent turn"
    );
    assert_eq!(last_user_content(&requests[before]), text);

    // A direct chat is the person's session.
    let id = p.send(chat, "/whoami").await;
    let whoami = &p.wait_replies(chat, &id, 1).await[0];
    assert!(
        squeeze(&whoami.text).contains(&squeeze("This conversation: user:")),
        "{name}: a direct chat is the user's session: {whoami:?}"
    );
    assert_eq!(
        p.env.llm.requests().len(),
        before + 1,
        "commands never reach the agent"
    );
}

async fn a_group_message_gets_the_group_session<S: PlatformSide>(p: &mut Platform<S>) {
    let name = S::NAME;
    let chat = Chat::Group(1);
    let id = p.send(chat, "/whoami").await;
    let whoami = &p.wait_replies(chat, &id, 1).await[0];
    let key = format!("group:{name}:{}", p.side.chat_id(chat));
    assert!(
        squeeze(&whoami.text).contains(&squeeze(&format!("This conversation: {key}"))),
        "{name}: a group chat is keyed by channel and chat ({key}): {whoami:?}"
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

async fn a_long_reply_arrives_in_chunks_within_the_limit<S: PlatformSide>(p: &mut Platform<S>) {
    let name = S::NAME;
    let Some(limit) = p.caps.limit else {
        panic!("{name}: the chunking case runs only where a message has a limit");
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
    let sent = p.side.sent(chat);
    let chunks_after = &sent[..sent.len() - 1];
    assert_eq!(
        chunks_after.len(),
        chunks.len(),
        "{name}: no chunk is sent twice (barrier {barrier})"
    );
    assert!(
        chunks.len() >= 2,
        "{name}: a reply of {} {:?} over a limit of {} is split: {chunks:#?}",
        limit.unit.len(&expected),
        limit.unit,
        limit.max
    );
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.ok, "{name}: chunk {i} was refused: {c:?}");
        let len = limit.unit.len(&c.text);
        assert!(
            (1..=limit.max).contains(&len),
            "{name}: chunk {i} is {len} {:?}, limit {}",
            limit.unit,
            limit.max
        );
    }
    assert_eq!(
        chunks[0].reply_to.as_deref(),
        Some(id.as_str()),
        "{name}: the first chunk references the message"
    );
    let joined: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        squeeze(&joined),
        want,
        "{name}: the chunks, in order, are the reply"
    );
}

async fn platform_errors_are_retried_or_held_for_reauth<S: PlatformSide>(p: &mut Platform<S>) {
    let name = S::NAME;

    // 429: retried, and no earlier than the platform asked.
    let chat = Chat::Direct(3);
    p.side
        .inject_fault(chat, PlatformFault::RateLimited { secs: 1 });
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
    p.side.inject_fault(chat, PlatformFault::ServerError);
    let id = p.send(chat, "server error once").await;
    p.wait_replies(chat, &id, 1).await;
    let tries = p.attempts_for(chat, &id);
    assert_eq!(tries.len(), 2, "{name}: one 5xx, one retry: {tries:#?}");
    assert!(!tries[0].ok && tries[1].ok, "{name}: {tries:#?}");

    // 401: the channel is held as reauth_needed, nothing is dead-lettered, and the operator's
    // reconnect (after the credentials are fixed) sends the held reply.
    let chat = Chat::Direct(5);
    p.side.inject_fault(chat, PlatformFault::Unauthorized);
    let id = p.send(chat, "credentials refused").await;
    let held = p
        .env
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
    let dead = p.env.dead_letters().await;
    assert_eq!(dead.total, 0, "{name}: held, not dead-lettered: {dead:?}");

    p.side.clear_faults(chat);
    let after = p.env.reconnect().await;
    assert_eq!(
        after.state,
        pb::ChannelState::Connected as i32,
        "{name}: the reconnect with good credentials connects: {after:?}"
    );
    let replies = p.wait_replies(chat, &id, 1).await;
    assert_eq!(replies[0].text, "llm: credentials refused");
}

async fn a_disconnect_is_followed_by_a_reconnect_and_loses_nothing<S: PlatformSide>(
    p: &mut Platform<S>,
) {
    let chat = Chat::Direct(6);
    let text = "across the outage";
    let before = p.env.llm.requests().len();
    let id = p.send_through_outage(chat, text).await;
    let replies = p.wait_replies(chat, &id, 1).await;
    assert_eq!(replies[0].text, format!("llm: {text}"));
    let turns: Vec<String> = p.env.llm.requests()[before..]
        .iter()
        .map(last_user_content)
        .collect();
    assert_eq!(turns, [text], "{}: one agent turn", S::NAME);
    p.env
        .wait_state(
            pb::ChannelState::Connected,
            "the channel is connected again after the outage",
        )
        .await;
}

async fn every_message_was_answered_exactly_once<S: PlatformSide>(p: &mut Platform<S>) {
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
            S::NAME,
            p.side.sent(*chat)
        );
    }
}

/// Removes whitespace, which a split may drop at its cut.
fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

// ---------------------------------------------------------------------------------------------
// The platform side of an adapter
// ---------------------------------------------------------------------------------------------

/// The platform side of one adapter: the fake server its channel talks to, and how a user and
/// the platform act through it. Chats are the contract's [`Chat`]s; each platform maps them to
/// its own ids.
trait PlatformSide: Sized {
    /// The channel's name in config, session keys and the admin API.
    const NAME: &'static str;

    /// Starts the platform's fake (before the gateway).
    async fn start() -> Self;

    /// What the platform has; the contract skips the cases it lacks, saying so.
    fn capabilities(&self) -> Capabilities;

    /// The gatewayd config section that enables the channel against this fake.
    fn config(&self) -> String;

    /// Environment variables that [`config`](Self::config) names (tokens).
    fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Waits, once gatewayd runs, until its adapter is attached to the platform.
    async fn ready(&self, _gw: &Gateway) {}

    /// The platform's id of `chat`.
    fn chat_id(&self, chat: Chat) -> String;

    /// Sends `text` as a user in `chat`; returns the platform's reference to the message.
    /// `seq` is unique per message, for platforms where the client picks the id.
    async fn send_text(&mut self, gw: &Gateway, chat: Chat, text: &str, seq: u64) -> String;

    /// Every send the platform saw from the gateway in `chat`, accepted or not, in order.
    fn sent(&self, chat: Chat) -> Vec<Sent>;

    /// Waits until the accepted sends in `chat` satisfy `pred`; returns them.
    async fn wait_sent(
        &mut self,
        chat: Chat,
        pred: &dyn Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>>;

    /// Makes the platform answer the gateway's next send in `chat` with `fault` (a 401 stays
    /// until [`clear_faults`](Self::clear_faults)).
    fn inject_fault(&self, chat: Chat, fault: PlatformFault);

    /// Lifts a sticky fault of [`inject_fault`](Self::inject_fault).
    fn clear_faults(&self, chat: Chat);

    /// Sends `text` (as [`send_text`](Self::send_text) with `seq`) so that it crosses an outage
    /// of the platform link, and brings the link back; returns the message's reference. Each
    /// platform breaks what its adapter depends on.
    async fn send_through_outage(&mut self, env: &Env, chat: Chat, text: &str, seq: u64) -> String;
}

/// How a platform measures its limit on one message.
#[derive(Debug, Clone, Copy)]
enum Unit {
    Chars,
    Utf16,
    Utf8Bytes,
}

impl Unit {
    fn len(self, s: &str) -> usize {
        match self {
            Unit::Chars => s.chars().count(),
            Unit::Utf16 => s.encode_utf16().count(),
            Unit::Utf8Bytes => s.len(),
        }
    }
}

/// A platform's limit on one message.
#[derive(Debug, Clone, Copy)]
struct Limit {
    max: usize,
    unit: Unit,
}

/// What a platform has; the contract skips what it lacks, saying so.
#[derive(Debug, Clone, Copy)]
struct Capabilities {
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

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

/// The running gateway with one channel under test, the agent's fake, and the admin API.
struct Env {
    /// The channel under test.
    channel: &'static str,
    gw: Gateway,
    llm: FakeOpenAi,
    admin: AdminClient<Channel>,
}

/// One adapter under test: its platform side and the gateway it is wired to.
struct Platform<S> {
    side: S,
    caps: Capabilities,
    env: Env,
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

impl<S: PlatformSide> Platform<S> {
    /// Starts the agent's fake, the platform's fake, and gatewayd with the channel enabled.
    async fn start() -> Platform<S> {
        let llm = FakeOpenAi::start().await;
        let side = S::start().await;
        let mut opts =
            GatewayOptions::with_config(format!("{}{}", base_config(&llm), side.config()));
        opts.env.extend(side.env());
        let gw = Gateway::start(opts).await.expect("start gatewayd");
        let channel = Channel::from_shared(gw.admin_url())
            .expect("admin uri")
            .connect()
            .await
            .expect("connect to the admin API");
        side.ready(&gw).await;
        Platform {
            caps: side.capabilities(),
            side,
            env: Env {
                channel: S::NAME,
                gw,
                llm,
                admin: AdminClient::new(channel),
            },
            asked: Vec::new(),
            next_id: 0,
        }
    }

    /// Sends `text` as a user in `chat`; returns the platform's reference to the message.
    async fn send(&mut self, chat: Chat, text: &str) -> String {
        self.next_id += 1;
        let id = self
            .side
            .send_text(&self.env.gw, chat, text, self.next_id)
            .await;
        self.asked.push((chat, id.clone()));
        id
    }

    /// Sends `text` in `chat` across an outage of the platform link (see
    /// [`PlatformSide::send_through_outage`]); returns the message's reference.
    async fn send_through_outage(&mut self, chat: Chat, text: &str) -> String {
        self.next_id += 1;
        let id = self
            .side
            .send_through_outage(&self.env, chat, text, self.next_id)
            .await;
        self.asked.push((chat, id.clone()));
        id
    }

    /// The sends in `chat` referencing the message `id`, accepted or not.
    fn attempts_for(&self, chat: Chat, id: &str) -> Vec<Sent> {
        self.side
            .sent(chat)
            .into_iter()
            .filter(|s| s.reply_to.as_deref() == Some(id))
            .collect()
    }

    /// The replies to the message `id` in `chat` (chunks joined).
    fn replies_to(&self, chat: Chat, id: &str) -> Vec<Sent> {
        assemble(&self.side.sent(chat), id)
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
        match self.side.wait_sent(chat, &pred).await {
            Ok(sent) => sent.into_iter().filter(|s| s.ok).collect(),
            Err(e) => panic!(
                "{}: waiting for {what} in {chat:?}: {e:#}\n--- gatewayd stderr (tail) ---\n{}",
                S::NAME,
                self.env.gw.stderr_tail(40)
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
}

/// The admin API's name of the channel named `name` (the API carries channels as their names).
fn admin_channel(name: &str) -> String {
    name.to_owned()
}

impl Env {
    /// This channel in the admin API's `ListChannels`.
    async fn channel_info(&self) -> pb::ChannelInfo {
        channel_of(&self.admin, self.channel)
            .await
            .unwrap_or_else(|| panic!("{} is not in ListChannels", self.channel))
    }

    /// Polls `ListChannels` until `pred` holds for this channel, or panics naming `what`.
    async fn wait_channel(&self, what: &str, pred: impl Fn(&pb::ChannelInfo) -> bool) {
        let pred = &pred;
        let reached = poll_until_async(TIMEOUT, what, || async move {
            channel_of(&self.admin, self.channel)
                .await
                .is_some_and(|c| pred(&c))
        })
        .await;
        if let Err(e) = reached {
            panic!(
                "{}: {e}; now {:?}\n{}",
                self.channel,
                self.channel_info().await,
                self.gw.stderr_tail(40)
            );
        }
    }

    /// Polls `ListChannels` until this channel is in `state`; returns it then.
    async fn wait_state(&self, state: pb::ChannelState, what: &str) -> pb::ChannelInfo {
        self.wait_channel(what, |c| c.state == state as i32).await;
        self.channel_info().await
    }

    /// `ReconnectChannel` for this channel; returns the channel after it.
    async fn reconnect(&self) -> pb::ChannelInfo {
        let mut admin = self.admin.clone();
        admin
            .reconnect_channel(pb::ReconnectChannelRequest {
                channel: admin_channel(self.channel),
            })
            .await
            .expect("ReconnectChannel")
            .into_inner()
            .channel
            .expect("the channel after the reconnect")
    }

    /// This channel's dead letters.
    async fn dead_letters(&self) -> pb::ListDeadLettersResponse {
        let mut admin = self.admin.clone();
        admin
            .list_dead_letters(pb::ListDeadLettersRequest {
                channel: admin_channel(self.channel),
                ..Default::default()
            })
            .await
            .expect("ListDeadLetters")
            .into_inner()
    }
}

/// The channel named `name` in `ListChannels`.
async fn channel_of(admin: &AdminClient<Channel>, name: &str) -> Option<pb::ChannelInfo> {
    let mut admin = admin.clone();
    let list = admin
        .list_channels(pb::ListChannelsRequest {})
        .await
        .expect("ListChannels")
        .into_inner();
    list.channels
        .into_iter()
        .find(|c| c.channel == admin_channel(name))
}
