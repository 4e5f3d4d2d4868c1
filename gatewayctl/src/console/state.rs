//! The console's state and its pure logic: [`App`] with one small struct per tab, the
//! conversions from the admin API's proto messages into console types (views never see
//! proto), and [`update`], which applies one [`Input`] and returns at most one [`Intent`] for
//! the event loop to carry out.
//!
//! **Invariant:** nothing here does I/O or reads the clock; the loop sets [`App::set_now`]
//! before each input, so every test (and snapshot) is deterministic.

use std::collections::{BTreeSet, VecDeque};

use gateway_proto::admin as pb;
use pb::watch_events_response::Event as E;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::model::{
    Address, Channel, ChannelInfo, ChannelState, ErrorClass, NodeState, RunState, channel_cell,
    channel_or,
};
use crate::output::{duration, text, time};

/// Sessions fetched per page of ListSessions.
pub const SESSION_PAGE: u32 = 200;
/// Overview samples kept for the sparklines (one a second).
pub const SAMPLES: usize = 120;
/// Recent errors kept on the Overview tab.
const RECENT_ERRORS: usize = 50;
/// How long a status line stays.
const STATUS_MS: i64 = 6_000;

/// Everything the loop feeds into [`update`].
#[derive(Debug)]
pub enum Input {
    /// A key press.
    Key(KeyEvent),
    /// Something from the API task.
    Api(ApiUpdate),
    /// One second passed.
    Tick,
    /// The terminal changed size (the next draw adapts).
    Resize,
}

/// What the API task reports, already in console types.
#[derive(Debug)]
pub enum ApiUpdate {
    /// Connected (or reconnected) to gatewayd.
    Connected,
    /// The connection is gone; the next try is in `retry_in_ms`.
    Disconnected { error: String, retry_in_ms: i64 },
    /// A fetch's result.
    Data(Data),
    /// A fetch failed.
    FetchFailed(String),
    /// One event of WatchEvents.
    Event(Event),
    /// An action succeeded: a sentence for the status line.
    ActionDone(String),
    /// An action failed: the server's message.
    ActionFailed(String),
}

/// Fetched data.
#[derive(Debug)]
pub enum Data {
    Overview(Overview),
    /// One page of sessions; `after` is the cursor it was fetched with (None: the first page).
    Sessions {
        after: Option<String>,
        sessions: Vec<Session>,
        next_cursor: Option<String>,
    },
    Session(SessionDetail),
    Channels(Vec<ChannelInfo>),
    RateLimits(Vec<ChannelLimits>),
    DeadLetters {
        items: Vec<DeadLetter>,
        total: u64,
    },
    DeadLetter(DeadLetterDetail),
    Runs(Vec<Run>),
    Run(Run),
    Identities(Vec<Identity>),
}

/// What the loop should do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Leave the console.
    Quit,
    /// Fetch some data.
    Fetch(Fetch),
    /// Carry out an action (already confirmed).
    Rpc(Action),
}

/// Data the API task can fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    Overview,
    /// A page of sessions after this cursor (None: the first page).
    Sessions {
        after: Option<String>,
    },
    Session {
        key: String,
    },
    Channels,
    RateLimits,
    DeadLetters,
    DeadLetter {
        id: i64,
    },
    Runs,
    Run {
        id: i64,
    },
    Identities,
}

/// Which dead letters an action covers: the DeadLetterSelector of RetryDeadLetters and
/// DropDeadLetters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Letters {
    /// These ids, in the table's order.
    Ids(Vec<i64>),
    /// Every dead letter of this channel (also those not loaded or hidden by the filter).
    Channel(Channel),
}

impl Letters {
    /// "dead letter 7", "3 dead letters", "all http dead letters".
    fn describe(&self) -> String {
        match self {
            Letters::Ids(ids) => match ids.as_slice() {
                [id] => format!("dead letter {id}"),
                ids => format!("{} dead letters", ids.len()),
            },
            Letters::Channel(c) => format!("all {} dead letters", c.name()),
        }
    }
}

/// What a link joins to the user that stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOther {
    /// Another user, merged in (LinkIdentities `merge_user_id`).
    User(i64),
    /// One address, moved over (LinkIdentities `address`).
    Address(Address),
}

/// An operator action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    EvictSession { key: String },
    RetryDeadLetters { letters: Letters },
    DropDeadLetters { letters: Letters },
    ReconnectChannel { channel: Channel },
    UnlinkAddress { address: Address },
    LinkIdentities { user_id: i64, other: LinkOther },
    RunWorkflow { name: String, inputs_json: String },
}

impl Action {
    /// The confirmation question for a destructive or wide action; None when it needs none.
    pub fn question(&self) -> Option<String> {
        match self {
            Action::EvictSession { key } => Some(format!("Evict {key}?")),
            Action::DropDeadLetters { letters } => Some(format!("Drop {}?", letters.describe())),
            Action::RetryDeadLetters {
                letters: letters @ Letters::Channel(_),
            } => Some(format!("Retry {}?", letters.describe())),
            Action::UnlinkAddress { address } => Some(format!("Unlink {address}?")),
            Action::LinkIdentities {
                user_id,
                other: LinkOther::User(merge),
            } => Some(format!("Merge user {merge} into user {user_id}?")),
            Action::LinkIdentities {
                user_id,
                other: LinkOther::Address(address),
            } => Some(format!("Move {address} to user {user_id}?")),
            Action::ReconnectChannel { channel } => Some(format!("Reconnect {}?", channel.name())),
            // Retrying chosen letters and starting a run destroy nothing: they act at once.
            Action::RetryDeadLetters {
                letters: Letters::Ids(_),
            }
            | Action::RunWorkflow { .. } => None,
        }
    }
}

/// The tabs, in order (keys 1–7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Sessions,
    Channels,
    RateLimits,
    DeadLetters,
    Runs,
    Identities,
}

impl Tab {
    /// Every tab in order.
    pub const ALL: [Tab; 7] = [
        Tab::Overview,
        Tab::Sessions,
        Tab::Channels,
        Tab::RateLimits,
        Tab::DeadLetters,
        Tab::Runs,
        Tab::Identities,
    ];

    /// The title in the tab bar.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Sessions => "Sessions",
            Tab::Channels => "Channels",
            Tab::RateLimits => "Limits",
            Tab::DeadLetters => "Dead letters",
            Tab::Runs => "Runs",
            Tab::Identities => "Identities",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }

    /// The fetch that refreshes this tab.
    fn fetch(self) -> Fetch {
        match self {
            Tab::Overview => Fetch::Overview,
            Tab::Sessions => Fetch::Sessions { after: None },
            Tab::Channels => Fetch::Channels,
            Tab::RateLimits => Fetch::RateLimits,
            Tab::DeadLetters => Fetch::DeadLetters,
            Tab::Runs => Fetch::Runs,
            Tab::Identities => Fetch::Identities,
        }
    }
}

/// The connection to gatewayd as the console sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Connected,
    /// Lost; retrying at `retry_at_ms`.
    Disconnected {
        error: String,
        retry_at_ms: i64,
    },
}

/// A popup over the tabs; at most one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modal {
    Help,
    /// "Evict user:3? y/n".
    Confirm(Action),
    /// A small form (link, run workflow).
    Form(Form),
}

/// What a form is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    /// The user that stays, and a user id to merge into it or an address to move to it.
    Link,
    /// A workflow name and `k=v` inputs.
    RunWorkflow,
}

/// A form: labelled text fields, one focused; Enter submits, Esc cancels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub kind: FormKind,
    pub fields: Vec<(&'static str, String)>,
    pub focus: usize,
    /// Why the last submit was refused.
    pub error: Option<String>,
}

impl Form {
    fn new(kind: FormKind, first: String) -> Self {
        let labels: &[&'static str] = match kind {
            FormKind::Link => &["keep user id", "user or address"],
            FormKind::RunWorkflow => &["workflow", "inputs k=v …"],
        };
        let mut fields: Vec<(&'static str, String)> =
            labels.iter().map(|l| (*l, String::new())).collect();
        if let Some(f) = fields.first_mut() {
            f.1 = first;
        }
        Self {
            kind,
            fields,
            focus: 0,
            error: None,
        }
    }

    /// The action the form describes, or why it is not valid.
    pub fn action(&self) -> Result<Action, String> {
        let field = |i: usize| self.fields.get(i).map_or("", |f| f.1.trim());
        match self.kind {
            FormKind::Link => {
                let id = |i: usize| {
                    field(i)
                        .parse::<i64>()
                        .ok()
                        .filter(|v| *v > 0)
                        .ok_or_else(|| format!("{} must be a user id", self.fields[i].0))
                };
                let user_id = id(0)?;
                let other = field(1);
                // An address always has a colon (`http:alice`); a user id never does.
                let other =
                    if other.contains(':') {
                        LinkOther::Address(other.parse::<Address>()?)
                    } else {
                        let merge = other.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(
                            || {
                                "give a user id or an address CHANNEL:SENDER_ID, e.g. http:alice"
                                    .to_owned()
                            },
                        )?;
                        if merge == user_id {
                            return Err("the two user ids are the same".to_owned());
                        }
                        LinkOther::User(merge)
                    };
                Ok(Action::LinkIdentities { user_id, other })
            }
            FormKind::RunWorkflow => {
                let name = field(0);
                if name.is_empty() {
                    return Err("the workflow name is empty".to_owned());
                }
                let inputs = field(1)
                    .split_whitespace()
                    .map(crate::workflows::parse_input)
                    .collect::<Result<Vec<_>, _>>()?;
                let inputs_json = crate::workflows::inputs_object(inputs)
                    .map_err(|e| e.to_string())?
                    .to_string();
                Ok(Action::RunWorkflow {
                    name: name.to_owned(),
                    inputs_json,
                })
            }
        }
    }
}

/// A transient line at the bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub text: String,
    pub error: bool,
    pub until_ms: i64,
}

/// A list with a selection and a filter, shared by the table tabs.
#[derive(Debug, Clone)]
pub struct List<T> {
    pub items: Vec<T>,
    /// Index into the filtered rows.
    pub selected: usize,
    pub filter: String,
    pub loaded: bool,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            selected: 0,
            filter: String::new(),
            loaded: false,
        }
    }
}

/// Something that can be matched by the `/` filter.
pub trait Filterable {
    /// The text the filter searches (case-insensitive).
    fn haystack(&self) -> String;
}

impl<T: Filterable> List<T> {
    /// The rows that pass the filter.
    pub fn visible(&self) -> Vec<&T> {
        self.passing().collect()
    }

    fn passing(&self) -> impl Iterator<Item = &T> {
        let needle = self.filter.to_lowercase();
        self.items
            .iter()
            .filter(move |i| needle.is_empty() || i.haystack().to_lowercase().contains(&needle))
    }

    /// How many rows pass the filter; without a filter this costs nothing.
    pub fn visible_len(&self) -> usize {
        if self.filter.is_empty() {
            self.items.len()
        } else {
            self.passing().count()
        }
    }

    /// At most `len` rows that pass the filter, from the `offset`th on. Without a filter this
    /// touches only those rows, so a table over 100 000 items draws as fast as over ten.
    pub fn window(&self, offset: usize, len: usize) -> Vec<&T> {
        if self.filter.is_empty() {
            let end = self.items.len().min(offset.saturating_add(len));
            self.items
                .get(offset.min(end)..end)
                .unwrap_or_default()
                .iter()
                .collect()
        } else {
            self.passing().skip(offset).take(len).collect()
        }
    }

    /// The selected row.
    pub fn current(&self) -> Option<&T> {
        self.window(self.selected, 1).first().copied()
    }

    fn replace(&mut self, items: Vec<T>) {
        self.items = items;
        self.loaded = true;
        self.clamp();
    }

    fn clamp(&mut self) {
        let n = self.visible_len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }

    fn step(&mut self, delta: isize) {
        let n = self.visible_len();
        if n == 0 {
            self.selected = 0;
            return;
        }
        self.selected = self.selected.saturating_add_signed(delta).min(n - 1);
    }
}

/// The first visible row for a window of `height` rows that shows `selected`.
pub fn scroll_offset(selected: usize, height: usize) -> usize {
    if height == 0 {
        return 0;
    }
    selected.saturating_sub(height - 1)
}

// ---- console types and their conversions from proto ------------------------------------

/// GetOverview.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub version: String,
    pub uptime_seconds: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub rate_in: f64,
    pub rate_out: f64,
    pub sessions_resident: u64,
    pub sessions_capacity: u64,
    pub sessions_stored: u64,
    pub channels: Vec<(String, ChannelState)>,
    pub dead_letters: u64,
    pub outbox_pending: u64,
    pub inbox_pending: u64,
    pub agent_provider: String,
}

impl From<pb::GetOverviewResponse> for Overview {
    fn from(o: pb::GetOverviewResponse) -> Self {
        Self {
            version: o.version,
            uptime_seconds: o.uptime_seconds,
            messages_in: o.messages_in,
            messages_out: o.messages_out,
            rate_in: o.rate_in_per_second,
            rate_out: o.rate_out_per_second,
            sessions_resident: o.sessions_resident,
            sessions_capacity: o.sessions_capacity,
            sessions_stored: o.sessions_stored,
            channels: o
                .channels
                .iter()
                .map(|c| (channel_cell(&c.channel), ChannelState::from_pb(c.state)))
                .collect(),
            dead_letters: o.dead_letters,
            outbox_pending: o.outbox_pending,
            inbox_pending: o.inbox_pending,
            agent_provider: o.agent_provider,
        }
    }
}

/// One session row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub key: String,
    pub group: bool,
    pub last_channel: String,
    pub last_active_ms: Option<i64>,
    pub turns: u64,
    pub resident: bool,
    pub in_flight: u64,
}

impl From<pb::SessionInfo> for Session {
    fn from(s: pb::SessionInfo) -> Self {
        Self {
            group: s.kind == pb::SessionKind::Group as i32,
            last_channel: channel_cell(&s.last_channel),
            last_active_ms: time(s.last_active_ms),
            turns: s.turns,
            resident: s.resident,
            in_flight: s.in_flight,
            key: s.key,
        }
    }
}

impl Filterable for Session {
    fn haystack(&self) -> String {
        format!("{} {}", self.key, self.last_channel)
    }
}

/// One transcript entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub role: &'static str,
    pub text: String,
    pub at_ms: i64,
}

/// GetSession: a session and its transcript tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetail {
    pub session: Session,
    pub transcript: Vec<Entry>,
}

impl TryFrom<pb::GetSessionResponse> for SessionDetail {
    type Error = String;
    fn try_from(r: pb::GetSessionResponse) -> Result<Self, String> {
        let session = r.session.ok_or("gatewayd sent no session")?.into();
        let transcript = r
            .transcript
            .into_iter()
            .map(|e| Entry {
                role: match pb::Role::try_from(e.role) {
                    Ok(pb::Role::User) => "user",
                    Ok(pb::Role::Assistant) => "assistant",
                    Ok(pb::Role::Notice) => "notice",
                    _ => "?",
                },
                text: e.text,
                at_ms: e.at_ms,
            })
            .collect();
        Ok(Self {
            session,
            transcript,
        })
    }
}

impl Filterable for ChannelInfo {
    fn haystack(&self) -> String {
        format!(
            "{} {} {}",
            channel_or(self.channel.as_ref(), "?"),
            self.state.name(),
            self.last_error.as_deref().unwrap_or("")
        )
    }
}

/// One rate-limit bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub chat_id: String,
    pub per_second: f64,
    pub burst: u32,
    pub tokens: f64,
    pub queued: u64,
    pub throttled: u64,
    pub paused_until_ms: Option<i64>,
}

impl From<pb::Bucket> for Bucket {
    fn from(b: pb::Bucket) -> Self {
        Self {
            chat_id: b.chat_id,
            per_second: b.per_second,
            burst: b.burst,
            tokens: b.tokens,
            queued: b.queued,
            throttled: b.throttled,
            paused_until_ms: time(b.paused_until_ms),
        }
    }
}

/// One channel's buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelLimits {
    pub channel: String,
    pub bucket: Option<Bucket>,
    pub chats: Vec<Bucket>,
    pub throttled_total: u64,
}

impl From<pb::ChannelRateLimits> for ChannelLimits {
    fn from(c: pb::ChannelRateLimits) -> Self {
        Self {
            channel: channel_cell(&c.channel),
            bucket: c.channel_bucket.map(Into::into),
            chats: c.chats.into_iter().map(Into::into).collect(),
            throttled_total: c.throttled_total,
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub channel: String,
    pub chat_id: String,
    pub text: String,
    pub attempts: u32,
    pub last_error: String,
    pub class: ErrorClass,
    pub dead_at_ms: Option<i64>,
}

impl From<pb::DeadLetter> for DeadLetter {
    fn from(d: pb::DeadLetter) -> Self {
        Self {
            id: d.id,
            channel: channel_cell(&d.channel),
            chat_id: d.chat_id,
            text: d.text,
            attempts: d.attempts,
            last_error: d.last_error,
            class: ErrorClass::from_pb(d.error_class),
            dead_at_ms: time(d.dead_at_ms),
        }
    }
}

impl Filterable for DeadLetter {
    fn haystack(&self) -> String {
        format!(
            "{} {} {} {}",
            self.id, self.channel, self.chat_id, self.last_error
        )
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    pub at_ms: i64,
    pub attempt: u32,
    pub class: ErrorClass,
    pub error: String,
}

/// GetDeadLetter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterDetail {
    pub letter: DeadLetter,
    pub errors: Vec<AttemptError>,
}

impl TryFrom<pb::GetDeadLetterResponse> for DeadLetterDetail {
    type Error = String;
    fn try_from(r: pb::GetDeadLetterResponse) -> Result<Self, String> {
        Ok(Self {
            letter: r.dead_letter.ok_or("gatewayd sent no dead letter")?.into(),
            errors: r
                .errors
                .into_iter()
                .map(|e| AttemptError {
                    at_ms: e.at_ms,
                    attempt: e.attempt,
                    class: ErrorClass::from_pb(e.error_class),
                    error: e.error,
                })
                .collect(),
        })
    }
}

/// One node of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNode {
    pub id: String,
    pub kind: String,
    pub state: NodeState,
    pub attempts: u32,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub error: String,
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: i64,
    pub workflow: String,
    pub state: RunState,
    pub trigger: String,
    pub error: String,
    pub created_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub nodes: Vec<RunNode>,
}

impl From<pb::Run> for Run {
    fn from(r: pb::Run) -> Self {
        Self {
            id: r.id,
            workflow: r.workflow,
            state: RunState::from_pb(r.state),
            trigger: r.trigger,
            error: r.error,
            created_at_ms: time(r.created_at_ms),
            finished_at_ms: time(r.finished_at_ms),
            nodes: r
                .nodes
                .into_iter()
                .map(|n| RunNode {
                    id: n.id,
                    kind: n.kind,
                    state: NodeState::from_pb(n.state),
                    attempts: n.attempts,
                    started_at_ms: time(n.started_at_ms),
                    finished_at_ms: time(n.finished_at_ms),
                    error: n.error,
                })
                .collect(),
        }
    }
}

impl Filterable for Run {
    fn haystack(&self) -> String {
        format!("{} {} {}", self.id, self.workflow, self.state.name())
    }
}

/// One row of the Identities tab: a user and one of their addresses (None: no address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub address: Option<Address>,
}

impl Identity {
    /// One row per address (a user without addresses gets one row).
    pub fn rows(i: pb::Identity) -> Vec<Identity> {
        let addresses: Vec<Address> = i.addresses.iter().filter_map(Address::from_pb).collect();
        if addresses.is_empty() {
            return vec![Identity {
                user_id: i.user_id,
                address: None,
            }];
        }
        addresses
            .into_iter()
            .map(|a| Identity {
                user_id: i.user_id,
                address: Some(a),
            })
            .collect()
    }
}

impl Filterable for Identity {
    fn haystack(&self) -> String {
        format!(
            "user:{} {}",
            self.user_id,
            self.address
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        )
    }
}

/// An event of WatchEvents, reduced to what the console acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_ms: i64,
    /// Which tabs' data it changes.
    pub affects: Vec<Tab>,
    /// An error line for the Overview's "recent errors", when it is one.
    pub error: Option<String>,
    /// The stream fell behind: refresh everything.
    pub lagged: bool,
}

impl From<pb::WatchEventsResponse> for Event {
    fn from(r: pb::WatchEventsResponse) -> Self {
        use Tab::*;
        let ch = channel_cell;
        let (affects, error, lagged): (Vec<Tab>, Option<String>, bool) = match r.event {
            Some(E::MessageIn(_) | E::MessageOut(_)) => (vec![RateLimits], None, false),
            Some(E::SessionCreated(_) | E::SessionEvicted(_) | E::TurnCommitted(_)) => {
                (vec![Sessions], None, false)
            }
            Some(E::IdentityLinked(_) | E::IdentityUnlinked(_)) => {
                (vec![Identities, Sessions], None, false)
            }
            Some(E::DeliveryFailed(d)) => (
                vec![Channels],
                Some(format!(
                    "{} send failed (attempt {}): {}",
                    ch(&d.channel),
                    d.attempts,
                    d.error
                )),
                false,
            ),
            Some(E::DeadLettered(d)) => (
                vec![DeadLetters],
                Some(format!("{} dead letter: {}", ch(&d.channel), d.error)),
                false,
            ),
            Some(E::ChannelStateChanged(c)) => (
                vec![Channels],
                text(&c.error).map(|e| {
                    format!(
                        "{} {}: {e}",
                        ch(&c.channel),
                        ChannelState::from_pb(c.state).name()
                    )
                }),
                false,
            ),
            Some(E::RateLimited(r)) => (
                vec![RateLimits],
                Some(format!(
                    "{} rate limited chat {} for {}",
                    ch(&r.channel),
                    r.chat_id,
                    duration(r.pause_ms.div_ceil(1000))
                )),
                false,
            ),
            Some(E::DeadLettersRetried(_)) => (vec![DeadLetters], None, false),
            Some(E::RunChanged(r)) => (
                vec![Runs],
                text(&r.error).map(|e| format!("run {} ({}) failed: {e}", r.run_id, r.workflow)),
                false,
            ),
            Some(E::NodeChanged(_)) => (vec![Runs], None, false),
            Some(E::Lagged(_)) => (Tab::ALL.to_vec(), None, true),
            None => (Vec::new(), None, false),
        };
        Self {
            at_ms: r.at_ms,
            affects,
            error,
            lagged,
        }
    }
}

// ---- tabs ------------------------------------------------------------------------------

/// The Overview tab.
#[derive(Debug, Clone, Default)]
pub struct OverviewTab {
    pub overview: Option<Overview>,
    /// Rates in tenths of a message per second, oldest first.
    pub rate_in: VecDeque<u64>,
    pub rate_out: VecDeque<u64>,
    /// (at_ms, text), newest first.
    pub errors: VecDeque<(i64, String)>,
    pub now_ms: i64,
}

impl OverviewTab {
    fn sample(&mut self, o: Overview) {
        for (samples, rate) in [
            (&mut self.rate_in, o.rate_in),
            (&mut self.rate_out, o.rate_out),
        ] {
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            // Rates are never negative; tenths keep a slow trickle visible.
            samples.push_back((rate.max(0.0) * 10.0).round() as u64);
        }
        self.overview = Some(o);
    }
}

/// The Sessions tab: pages of ListSessions, a filter, and a detail pane.
#[derive(Debug, Clone, Default)]
pub struct SessionsTab {
    pub list: List<Session>,
    /// The cursor for the next page (None: everything is loaded).
    pub next_cursor: Option<String>,
    /// A page is being fetched.
    pub paging: bool,
    pub detail: Option<SessionDetail>,
    pub now_ms: i64,
}

/// The Channels tab.
#[derive(Debug, Clone, Default)]
pub struct ChannelsTab {
    pub list: List<ChannelInfo>,
    pub now_ms: i64,
}

/// The Rate limits tab.
#[derive(Debug, Clone, Default)]
pub struct RateLimitsTab {
    pub channels: Vec<ChannelLimits>,
    pub loaded: bool,
    pub now_ms: i64,
}

/// The Dead letters tab.
#[derive(Debug, Clone, Default)]
pub struct DeadLettersTab {
    pub list: List<DeadLetter>,
    pub total: u64,
    pub detail: Option<DeadLetterDetail>,
    /// The ids marked with Space (only ids still in the list; a refresh forgets the others).
    pub marked: BTreeSet<i64>,
    pub now_ms: i64,
}

impl DeadLettersTab {
    /// Marks or unmarks the selected row.
    fn toggle_mark(&mut self) {
        let Some(id) = self.list.current().map(|d| d.id) else {
            return;
        };
        if !self.marked.remove(&id) {
            self.marked.insert(id);
        }
    }

    /// The marked rows in the table's order (also those the filter hides), or else the
    /// selected one.
    fn chosen(&self) -> Option<Letters> {
        if self.marked.is_empty() {
            return self.list.current().map(|d| Letters::Ids(vec![d.id]));
        }
        let ids: Vec<i64> = self
            .list
            .items
            .iter()
            .map(|d| d.id)
            .filter(|id| self.marked.contains(id))
            .collect();
        (!ids.is_empty()).then_some(Letters::Ids(ids))
    }

    fn replace(&mut self, items: Vec<DeadLetter>) {
        self.marked.retain(|id| items.iter().any(|d| d.id == *id));
        self.list.replace(items);
    }
}

/// The Workflows/Runs tab.
#[derive(Debug, Clone, Default)]
pub struct RunsTab {
    pub list: List<Run>,
    pub detail: Option<Run>,
    pub now_ms: i64,
}

/// The Identities tab.
#[derive(Debug, Clone, Default)]
pub struct IdentitiesTab {
    pub list: List<Identity>,
}

/// The whole console.
#[derive(Debug, Clone)]
pub struct App {
    pub addr: String,
    pub tab: Tab,
    pub conn: Conn,
    pub modal: Option<Modal>,
    /// The `/` filter is being typed.
    pub filtering: bool,
    pub status: Option<StatusLine>,
    pub now_ms: i64,
    pub overview: OverviewTab,
    pub sessions: SessionsTab,
    pub channels: ChannelsTab,
    pub rate_limits: RateLimitsTab,
    pub dead_letters: DeadLettersTab,
    pub runs: RunsTab,
    pub identities: IdentitiesTab,
}

impl App {
    /// A console for gatewayd at `addr`, not yet connected.
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            tab: Tab::Overview,
            conn: Conn::Connecting,
            modal: None,
            filtering: false,
            status: None,
            now_ms: 0,
            overview: OverviewTab::default(),
            sessions: SessionsTab::default(),
            channels: ChannelsTab::default(),
            rate_limits: RateLimitsTab::default(),
            dead_letters: DeadLettersTab::default(),
            runs: RunsTab::default(),
            identities: IdentitiesTab::default(),
        }
    }

    /// Sets the clock for the next input and draw.
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        self.overview.now_ms = now_ms;
        self.sessions.now_ms = now_ms;
        self.channels.now_ms = now_ms;
        self.rate_limits.now_ms = now_ms;
        self.dead_letters.now_ms = now_ms;
        self.runs.now_ms = now_ms;
        if self.status.as_ref().is_some_and(|s| s.until_ms <= now_ms) {
            self.status = None;
        }
    }

    fn say(&mut self, text: String, error: bool) {
        self.status = Some(StatusLine {
            text,
            error,
            until_ms: self.now_ms + STATUS_MS,
        });
    }

    /// The filter of the current tab, if it has one.
    pub fn filter(&self) -> Option<&str> {
        match self.tab {
            Tab::Sessions => Some(&self.sessions.list.filter),
            Tab::Channels => Some(&self.channels.list.filter),
            Tab::DeadLetters => Some(&self.dead_letters.list.filter),
            Tab::Runs => Some(&self.runs.list.filter),
            Tab::Identities => Some(&self.identities.list.filter),
            Tab::Overview | Tab::RateLimits => None,
        }
    }

    fn filter_mut(&mut self) -> Option<&mut String> {
        match self.tab {
            Tab::Sessions => Some(&mut self.sessions.list.filter),
            Tab::Channels => Some(&mut self.channels.list.filter),
            Tab::DeadLetters => Some(&mut self.dead_letters.list.filter),
            Tab::Runs => Some(&mut self.runs.list.filter),
            Tab::Identities => Some(&mut self.identities.list.filter),
            Tab::Overview | Tab::RateLimits => None,
        }
    }

    fn clamp_all(&mut self) {
        self.sessions.list.clamp();
        self.channels.list.clamp();
        self.dead_letters.list.clamp();
        self.runs.list.clamp();
        self.identities.list.clamp();
    }

    /// Moves the selection of the current tab; may ask for the next page of sessions.
    fn step(&mut self, delta: isize) -> Option<Intent> {
        match self.tab {
            Tab::Sessions => {
                self.sessions.list.step(delta);
                let at_end = self.sessions.list.selected + 1 >= self.sessions.list.visible_len();
                if at_end
                    && delta > 0
                    && !self.sessions.paging
                    && let Some(after) = self.sessions.next_cursor.clone()
                {
                    self.sessions.paging = true;
                    return Some(Intent::Fetch(Fetch::Sessions { after: Some(after) }));
                }
                None
            }
            Tab::Channels => {
                self.channels.list.step(delta);
                None
            }
            Tab::DeadLetters => {
                self.dead_letters.list.step(delta);
                None
            }
            Tab::Runs => {
                self.runs.list.step(delta);
                None
            }
            Tab::Identities => {
                self.identities.list.step(delta);
                None
            }
            Tab::Overview | Tab::RateLimits => None,
        }
    }

    fn switch(&mut self, tab: Tab) -> Option<Intent> {
        self.tab = tab;
        self.filtering = false;
        Some(Intent::Fetch(tab.fetch()))
    }

    /// Asks for confirmation, or acts at once for a harmless action.
    fn propose(&mut self, action: Action) -> Option<Intent> {
        if action.question().is_some() {
            self.modal = Some(Modal::Confirm(action));
            None
        } else {
            Some(self.send(action))
        }
    }

    /// Sends an (approved) action; the dead letters it names are no longer marked.
    fn send(&mut self, action: Action) -> Intent {
        if let Action::RetryDeadLetters {
            letters: Letters::Ids(ids),
        }
        | Action::DropDeadLetters {
            letters: Letters::Ids(ids),
        } = &action
        {
            self.dead_letters.marked.retain(|id| !ids.contains(id));
        }
        Intent::Rpc(action)
    }

    /// The channel of the selected dead letter, for `R` and `D`.
    fn selected_letter_channel(&mut self) -> Option<Channel> {
        let letter = self.dead_letters.list.current()?;
        let channel = channel_named(&letter.channel);
        if channel.is_none() {
            let text = format!("dead letter {} names no channel", letter.id);
            self.say(text, true);
        }
        channel
    }

    fn apply(&mut self, data: Data) -> Option<Intent> {
        match data {
            Data::Overview(o) => self.overview.sample(o),
            Data::Sessions {
                after,
                sessions,
                next_cursor,
            } => {
                let tab = &mut self.sessions;
                tab.paging = false;
                if after.is_none() {
                    tab.list.replace(sessions);
                } else {
                    let mut all = std::mem::take(&mut tab.list.items);
                    all.extend(sessions);
                    tab.list.replace(all);
                }
                tab.next_cursor = next_cursor;
            }
            Data::Session(d) => self.sessions.detail = Some(d),
            Data::Channels(c) => self.channels.list.replace(c),
            Data::RateLimits(r) => {
                self.rate_limits.channels = r;
                self.rate_limits.loaded = true;
            }
            Data::DeadLetters { items, total } => {
                self.dead_letters.replace(items);
                self.dead_letters.total = total;
            }
            Data::DeadLetter(d) => self.dead_letters.detail = Some(d),
            Data::Runs(r) => self.runs.list.replace(r),
            Data::Run(r) => self.runs.detail = Some(r),
            Data::Identities(i) => self.identities.list.replace(i),
        }
        None
    }

    /// The fetch that refreshes the current tab and its open detail.
    fn refresh_current(&self) -> Intent {
        let fetch = match self.tab {
            Tab::Sessions => match &self.sessions.detail {
                Some(d) => Fetch::Session {
                    key: d.session.key.clone(),
                },
                None => Fetch::Sessions { after: None },
            },
            Tab::DeadLetters => match &self.dead_letters.detail {
                Some(d) => Fetch::DeadLetter { id: d.letter.id },
                None => Fetch::DeadLetters,
            },
            Tab::Runs => match &self.runs.detail {
                Some(r) => Fetch::Run { id: r.id },
                None => Fetch::Runs,
            },
            tab => tab.fetch(),
        };
        Intent::Fetch(fetch)
    }
}

/// Applies one input; returns what the loop should do.
pub fn update(app: &mut App, input: Input) -> Option<Intent> {
    match input {
        Input::Tick => {
            // The Overview's samples are taken every second whatever the tab; the Rate limits
            // tab is live too (its countdowns and buckets change without events).
            if app.tab == Tab::RateLimits && app.conn == Conn::Connected {
                return Some(Intent::Fetch(Fetch::RateLimits));
            }
            (app.conn == Conn::Connected).then_some(Intent::Fetch(Fetch::Overview))
        }
        Input::Resize => None,
        Input::Api(u) => api_update(app, u),
        Input::Key(k) => key(app, k),
    }
}

fn api_update(app: &mut App, u: ApiUpdate) -> Option<Intent> {
    match u {
        ApiUpdate::Connected => {
            app.conn = Conn::Connected;
            Some(app.refresh_current())
        }
        ApiUpdate::Disconnected { error, retry_in_ms } => {
            app.conn = Conn::Disconnected {
                error,
                retry_at_ms: app.now_ms + retry_in_ms,
            };
            app.sessions.paging = false;
            None
        }
        ApiUpdate::Data(d) => app.apply(d),
        ApiUpdate::FetchFailed(e) => {
            app.sessions.paging = false;
            app.say(e, true);
            None
        }
        ApiUpdate::ActionDone(s) => {
            app.say(s, false);
            Some(app.refresh_current())
        }
        ApiUpdate::ActionFailed(e) => {
            app.say(e, true);
            None
        }
        ApiUpdate::Event(ev) => {
            if let Some(e) = ev.error {
                let errors = &mut app.overview.errors;
                errors.push_front((ev.at_ms, e));
                errors.truncate(RECENT_ERRORS);
            }
            (ev.lagged || ev.affects.contains(&app.tab)).then(|| app.refresh_current())
        }
    }
}

fn key(app: &mut App, k: KeyEvent) -> Option<Intent> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Intent::Quit);
    }
    match app.modal.take() {
        Some(Modal::Help) => {
            // Any key closes help; `q` still quits.
            return (k.code == KeyCode::Char('q')).then_some(Intent::Quit);
        }
        Some(Modal::Confirm(action)) => {
            return match k.code {
                KeyCode::Char('y' | 'Y') => Some(app.send(action)),
                KeyCode::Char('n' | 'N') | KeyCode::Esc => None,
                _ => {
                    app.modal = Some(Modal::Confirm(action));
                    None
                }
            };
        }
        Some(Modal::Form(form)) => return form_key(app, form, k),
        None => {}
    }
    if app.filtering {
        match k.code {
            KeyCode::Enter => app.filtering = false,
            KeyCode::Esc => {
                app.filtering = false;
                if let Some(f) = app.filter_mut() {
                    f.clear();
                }
            }
            KeyCode::Backspace => {
                if let Some(f) = app.filter_mut() {
                    f.pop();
                }
            }
            KeyCode::Char(c) => {
                if let Some(f) = app.filter_mut() {
                    f.push(c);
                }
            }
            _ => {}
        }
        app.clamp_all();
        return None;
    }
    match k.code {
        KeyCode::Char('q') => Some(Intent::Quit),
        KeyCode::Char('?') => {
            app.modal = Some(Modal::Help);
            None
        }
        KeyCode::Tab => app.switch(Tab::ALL[(app.tab.index() + 1) % Tab::ALL.len()]),
        KeyCode::BackTab => {
            app.switch(Tab::ALL[(app.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()])
        }
        KeyCode::Char(c @ '1'..='7') => app.switch(Tab::ALL[c as usize - '1' as usize]),
        KeyCode::Down | KeyCode::Char('j') => app.step(1),
        KeyCode::Up | KeyCode::Char('k') => app.step(-1),
        KeyCode::PageDown => app.step(10),
        KeyCode::PageUp => app.step(-10),
        KeyCode::Home | KeyCode::Char('g') => app.step(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => app.step(isize::MAX / 2),
        KeyCode::Char('/') if app.filter().is_some() => {
            app.filtering = true;
            None
        }
        KeyCode::Esc => {
            match app.tab {
                Tab::Sessions => app.sessions.detail = None,
                Tab::DeadLetters => app.dead_letters.detail = None,
                Tab::Runs => app.runs.detail = None,
                _ => {}
            }
            None
        }
        KeyCode::Enter => match app.tab {
            Tab::Sessions => app
                .sessions
                .list
                .current()
                .map(|s| Intent::Fetch(Fetch::Session { key: s.key.clone() })),
            Tab::DeadLetters => app
                .dead_letters
                .list
                .current()
                .map(|d| Intent::Fetch(Fetch::DeadLetter { id: d.id })),
            Tab::Runs => app
                .runs
                .list
                .current()
                .map(|r| Intent::Fetch(Fetch::Run { id: r.id })),
            _ => None,
        },
        KeyCode::Char(c) => action_key(app, c),
        _ => None,
    }
}

/// The tab-specific action keys.
fn action_key(app: &mut App, c: char) -> Option<Intent> {
    let action = match (app.tab, c) {
        (Tab::Sessions, 'e') => Action::EvictSession {
            key: app.sessions.list.current()?.key.clone(),
        },
        (Tab::DeadLetters, ' ') => {
            app.dead_letters.toggle_mark();
            return None;
        }
        (Tab::DeadLetters, 'r') => Action::RetryDeadLetters {
            letters: app.dead_letters.chosen()?,
        },
        (Tab::DeadLetters, 'd') => Action::DropDeadLetters {
            letters: app.dead_letters.chosen()?,
        },
        (Tab::DeadLetters, 'R') => Action::RetryDeadLetters {
            letters: Letters::Channel(app.selected_letter_channel()?),
        },
        (Tab::DeadLetters, 'D') => Action::DropDeadLetters {
            letters: Letters::Channel(app.selected_letter_channel()?),
        },
        (Tab::Channels, 'c') => Action::ReconnectChannel {
            channel: app.channels.list.current()?.channel.clone()?,
        },
        (Tab::Identities, 'u') => Action::UnlinkAddress {
            address: app.identities.list.current()?.address.clone()?,
        },
        (Tab::Identities, 'l') => {
            let first = app
                .identities
                .list
                .current()
                .map(|i| i.user_id.to_string())
                .unwrap_or_default();
            app.modal = Some(Modal::Form(Form::new(FormKind::Link, first)));
            return None;
        }
        (Tab::Runs, 'w') => {
            let first = app
                .runs
                .list
                .current()
                .map(|r| r.workflow.clone())
                .unwrap_or_default();
            app.modal = Some(Modal::Form(Form::new(FormKind::RunWorkflow, first)));
            return None;
        }
        _ => return None,
    };
    app.propose(action)
}

fn form_key(app: &mut App, mut form: Form, k: KeyEvent) -> Option<Intent> {
    let n = form.fields.len();
    match k.code {
        KeyCode::Esc => return None,
        KeyCode::Tab | KeyCode::Down => form.focus = (form.focus + 1) % n,
        KeyCode::BackTab | KeyCode::Up => form.focus = (form.focus + n - 1) % n,
        KeyCode::Backspace => {
            if let Some(f) = form.fields.get_mut(form.focus) {
                f.1.pop();
            }
        }
        KeyCode::Char(c) => {
            if let Some(f) = form.fields.get_mut(form.focus) {
                f.1.push(c);
            }
        }
        KeyCode::Enter => match form.action() {
            Ok(action) => return app.propose(action),
            Err(e) => form.error = Some(e),
        },
        _ => {}
    }
    app.modal = Some(Modal::Form(form));
    None
}

/// The channel with this name (as in a table cell); None for `-` (none).
fn channel_named(name: &str) -> Option<Channel> {
    (name != "-").then(|| name.parse().ok()).flatten()
}

/// The "retrying in Ns" of a lost connection.
pub fn retry_in_secs(retry_at_ms: i64, now_ms: i64) -> u64 {
    u64::try_from((retry_at_ms - now_ms).max(0))
        .unwrap_or(0)
        .div_ceil(1000)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed console with data on every tab, at `NOW`.
    pub const NOW: i64 = 1_750_000_000_000;

    pub fn fixture() -> App {
        let mut app = App::new("http://127.0.0.1:50051");
        app.conn = Conn::Connected;
        app.set_now(NOW);
        for (i, rate) in [0.0, 0.5, 1.2, 3.0, 2.0, 0.8, 4.5, 3.3, 1.0, 0.2]
            .iter()
            .enumerate()
        {
            app.overview.sample(Overview {
                version: "0.1.0".into(),
                uptime_seconds: 3_725,
                messages_in: 120 + i as u64,
                messages_out: 118 + i as u64,
                rate_in: *rate,
                rate_out: rate / 2.0,
                sessions_resident: 3,
                sessions_capacity: 10,
                sessions_stored: 42,
                channels: vec![
                    ("webchat".into(), ChannelState::Connected),
                    ("http".into(), ChannelState::Reconnecting),
                ],
                dead_letters: 2,
                outbox_pending: 1,
                inbox_pending: 0,
                agent_provider: "echo".into(),
            });
        }
        app.overview.errors.push_front((
            NOW - 5_000,
            "http send failed (attempt 2): 503 Service Unavailable".into(),
        ));
        app.sessions.list.replace(
            (1..=40)
                .map(|i| Session {
                    key: format!("user:{i}"),
                    group: false,
                    last_channel: "http".into(),
                    last_active_ms: Some(NOW - i * 7_000),
                    turns: i as u64,
                    resident: i % 4 != 0,
                    in_flight: u64::from(i == 2),
                })
                .collect(),
        );
        app.sessions.next_cursor = Some("user:40".into());
        app.channels.list.replace(vec![
            ChannelInfo {
                channel: "webchat".parse().ok(),
                state: ChannelState::Connected,
                since_at_ms: Some(NOW - 3_600_000),
                last_error: None,
                reconnect_attempt: 0,
                next_attempt_at_ms: None,
                sent: 311,
                failed: 0,
                reconnects: 0,
            },
            ChannelInfo {
                channel: "http".parse().ok(),
                state: ChannelState::Reconnecting,
                since_at_ms: Some(NOW - 20_000),
                last_error: Some("503 Service Unavailable".into()),
                reconnect_attempt: 3,
                next_attempt_at_ms: Some(NOW + 4_000),
                sent: 57,
                failed: 9,
                reconnects: 1,
            },
        ]);
        let bucket = |chat: &str, tokens: f64, paused: Option<i64>| Bucket {
            chat_id: chat.into(),
            per_second: 1.0,
            burst: 3,
            tokens,
            queued: 2,
            throttled: 5,
            paused_until_ms: paused,
        };
        app.rate_limits.channels = vec![
            ChannelLimits {
                channel: "http".into(),
                bucket: Some(bucket("", 1.5, None)),
                chats: vec![
                    bucket("busy", 0.0, Some(NOW + 12_000)),
                    bucket("alice", 2.0, None),
                ],
                throttled_total: 10,
            },
            ChannelLimits {
                channel: "webchat".into(),
                bucket: Some(bucket("", 3.0, None)),
                chats: vec![],
                throttled_total: 0,
            },
        ];
        app.rate_limits.loaded = true;
        app.dead_letters.list.replace(vec![
            DeadLetter {
                id: 7,
                channel: "http".into(),
                chat_id: "alice".into(),
                text: "hello there".into(),
                attempts: 5,
                last_error: "503 Service Unavailable".into(),
                class: ErrorClass::Retryable,
                dead_at_ms: Some(NOW - 60_000),
            },
            DeadLetter {
                id: 9,
                channel: "http".into(),
                chat_id: "bob".into(),
                text: "bye".into(),
                attempts: 1,
                last_error: "400 unknown chat".into(),
                class: ErrorClass::Permanent,
                dead_at_ms: Some(NOW - 30_000),
            },
        ]);
        app.dead_letters.total = 2;
        let node = |id: &str, state: NodeState, started: Option<i64>, fin: Option<i64>| RunNode {
            id: id.into(),
            kind: "code".into(),
            state,
            attempts: 1,
            started_at_ms: started,
            finished_at_ms: fin,
            error: String::new(),
        };
        app.runs.list.replace(vec![
            Run {
                id: 12,
                workflow: "daily_report".into(),
                state: RunState::Succeeded,
                trigger: "cli".into(),
                error: String::new(),
                created_at_ms: Some(NOW - 90_000),
                finished_at_ms: Some(NOW - 88_000),
                nodes: vec![
                    node(
                        "fetch",
                        NodeState::Succeeded,
                        Some(NOW - 90_000),
                        Some(NOW - 89_500),
                    ),
                    node("urgent", NodeState::Skipped, None, None),
                    node(
                        "summary",
                        NodeState::Succeeded,
                        Some(NOW - 89_500),
                        Some(NOW - 88_000),
                    ),
                ],
            },
            Run {
                id: 13,
                workflow: "triage".into(),
                state: RunState::Failed,
                trigger: "chat".into(),
                error: "node classify: timeout".into(),
                created_at_ms: Some(NOW - 10_000),
                finished_at_ms: Some(NOW - 4_000),
                nodes: vec![],
            },
        ]);
        app.identities.list.replace(vec![
            Identity {
                user_id: 1,
                address: Some("http:alice".parse().expect("address")),
            },
            Identity {
                user_id: 1,
                address: Some("webchat:a1b2".parse().expect("address")),
            },
            Identity {
                user_id: 3,
                address: Some("http:bob".parse().expect("address")),
            },
        ]);
        app
    }

    pub fn press(app: &mut App, code: KeyCode) -> Option<Intent> {
        update(app, Input::Key(KeyEvent::from(code)))
    }

    pub fn typed(app: &mut App, text: &str) -> Option<Intent> {
        let mut last = None;
        for c in text.chars() {
            last = press(app, KeyCode::Char(c));
        }
        last
    }

    pub fn channel(name: &str) -> Channel {
        name.parse().expect("a channel name")
    }

    fn rpc(action: Action) -> Option<Intent> {
        Some(Intent::Rpc(action))
    }

    #[test]
    fn evict_asks_first_and_y_evicts_the_selected_session() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char('j'));
        assert_eq!(press(&mut app, KeyCode::Char('e')), None);
        assert_eq!(
            app.modal,
            Some(Modal::Confirm(Action::EvictSession {
                key: "user:3".into()
            }))
        );
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::EvictSession {
                key: "user:3".into()
            })
        );
        assert_eq!(app.modal, None);
        // `n` cancels without an intent.
        press(&mut app, KeyCode::Char('e'));
        assert_eq!(press(&mut app, KeyCode::Char('n')), None);
        assert_eq!(app.modal, None);
    }

    #[test]
    fn retry_and_drop_act_on_the_selected_dead_letter() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('5'));
        press(&mut app, KeyCode::Down);
        assert_eq!(
            press(&mut app, KeyCode::Char('r')),
            rpc(Action::RetryDeadLetters {
                letters: Letters::Ids(vec![9])
            }),
            "retrying destroys nothing, so it needs no confirmation"
        );
        press(&mut app, KeyCode::Up);
        press(&mut app, KeyCode::Char('d'));
        assert!(matches!(app.modal, Some(Modal::Confirm(_))));
        assert_eq!(press(&mut app, KeyCode::Char('n')), None);
        press(&mut app, KeyCode::Char('d'));
        assert_eq!(
            app.modal.as_ref().and_then(|m| match m {
                Modal::Confirm(a) => a.question(),
                _ => None,
            }),
            Some("Drop dead letter 7?".to_owned())
        );
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::DropDeadLetters {
                letters: Letters::Ids(vec![7])
            })
        );
    }

    /// The fixture's dead letters (7 and 9 on http) and two more: 11 on webchat, 12 on http.
    fn four_dead_letters() -> App {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('5'));
        let mut items = app.dead_letters.list.items.clone();
        for (id, channel) in [(11, "webchat"), (12, "http")] {
            items.push(DeadLetter {
                id,
                channel: channel.into(),
                ..items[0].clone()
            });
        }
        update(
            &mut app,
            Input::Api(ApiUpdate::Data(Data::DeadLetters { items, total: 4 })),
        );
        app
    }

    fn question(app: &App) -> Option<String> {
        match &app.modal {
            Some(Modal::Confirm(a)) => a.question(),
            _ => None,
        }
    }

    #[test]
    fn space_marks_rows_and_r_retries_the_marked_ids_in_table_order() {
        let mut app = four_dead_letters();
        // Mark 12 (last row), 7 (first), 11 (third); unmark and re-mark 7.
        press(&mut app, KeyCode::End);
        assert_eq!(press(&mut app, KeyCode::Char(' ')), None);
        press(&mut app, KeyCode::Home);
        press(&mut app, KeyCode::Char(' '));
        press(&mut app, KeyCode::Char(' '));
        assert_eq!(app.dead_letters.marked, BTreeSet::from([12]));
        press(&mut app, KeyCode::Char(' '));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char(' '));
        assert_eq!(app.dead_letters.marked, BTreeSet::from([7, 11, 12]));
        // The selection is on 11, but `r` takes the marked rows, at once.
        assert_eq!(
            press(&mut app, KeyCode::Char('r')),
            rpc(Action::RetryDeadLetters {
                letters: Letters::Ids(vec![7, 11, 12])
            })
        );
        assert!(app.dead_letters.marked.is_empty(), "sent ids are unmarked");
        // With nothing marked, `r` is back to the selected row.
        assert_eq!(
            press(&mut app, KeyCode::Char('r')),
            rpc(Action::RetryDeadLetters {
                letters: Letters::Ids(vec![11])
            })
        );
    }

    #[test]
    fn d_drops_the_marked_ids_after_asking_and_n_keeps_the_marks() {
        let mut app = four_dead_letters();
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char(' '));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char(' '));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char(' '));
        assert_eq!(press(&mut app, KeyCode::Char('d')), None);
        assert_eq!(question(&app).as_deref(), Some("Drop 3 dead letters?"));
        assert_eq!(press(&mut app, KeyCode::Char('n')), None);
        assert_eq!(app.modal, None);
        assert_eq!(app.dead_letters.marked, BTreeSet::from([9, 11, 12]));
        press(&mut app, KeyCode::Char('d'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::DropDeadLetters {
                letters: Letters::Ids(vec![9, 11, 12])
            })
        );
        assert!(app.dead_letters.marked.is_empty());
    }

    #[test]
    fn marks_of_letters_gone_after_a_refresh_are_forgotten() {
        let mut app = four_dead_letters();
        press(&mut app, KeyCode::Char(' '));
        press(&mut app, KeyCode::End);
        press(&mut app, KeyCode::Char(' '));
        let items: Vec<DeadLetter> = app.dead_letters.list.items[1..].to_vec();
        update(
            &mut app,
            Input::Api(ApiUpdate::Data(Data::DeadLetters { items, total: 3 })),
        );
        assert_eq!(app.dead_letters.marked, BTreeSet::from([12]));
        // A filter that hides a marked row does not unmark it: `r` still takes it.
        press(&mut app, KeyCode::Char('/'));
        typed(&mut app, "webchat");
        press(&mut app, KeyCode::Enter);
        assert_eq!(
            press(&mut app, KeyCode::Char('r')),
            rpc(Action::RetryDeadLetters {
                letters: Letters::Ids(vec![12])
            })
        );
    }

    #[test]
    fn shift_r_and_shift_d_act_on_the_selected_rows_channel_after_asking() {
        let mut app = four_dead_letters();
        // Marks do not matter to the channel-wide forms.
        press(&mut app, KeyCode::Char(' '));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Down);
        assert_eq!(press(&mut app, KeyCode::Char('R')), None);
        assert_eq!(
            question(&app).as_deref(),
            Some("Retry all webchat dead letters?")
        );
        assert_eq!(press(&mut app, KeyCode::Char('n')), None);
        assert_eq!(app.modal, None);
        press(&mut app, KeyCode::Char('R'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::RetryDeadLetters {
                letters: Letters::Channel(channel("webchat"))
            })
        );
        assert_eq!(app.dead_letters.marked, BTreeSet::from([7]));
        press(&mut app, KeyCode::Up);
        assert_eq!(press(&mut app, KeyCode::Char('D')), None);
        assert_eq!(
            question(&app).as_deref(),
            Some("Drop all http dead letters?")
        );
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        press(&mut app, KeyCode::Char('D'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::DropDeadLetters {
                letters: Letters::Channel(channel("http"))
            })
        );
    }

    #[test]
    fn channel_wide_forms_refuse_an_unknown_channel() {
        let mut app = four_dead_letters();
        app.dead_letters.list.items[0].channel = "-".into();
        assert_eq!(press(&mut app, KeyCode::Char('R')), None);
        assert_eq!(app.modal, None);
        assert!(app.status.as_ref().is_some_and(|s| s.error));
    }

    #[test]
    fn dead_letter_keys_on_an_empty_table_do_nothing() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('5'));
        update(
            &mut app,
            Input::Api(ApiUpdate::Data(Data::DeadLetters {
                items: vec![],
                total: 0,
            })),
        );
        for c in [' ', 'r', 'd', 'R', 'D'] {
            assert_eq!(press(&mut app, KeyCode::Char(c)), None);
            assert_eq!(app.modal, None);
        }
    }

    #[test]
    fn reconnect_acts_on_the_selected_channel() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('3'));
        press(&mut app, KeyCode::Char('j'));
        press(&mut app, KeyCode::Char('c'));
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        press(&mut app, KeyCode::Char('c'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::ReconnectChannel {
                channel: channel("http")
            })
        );
    }

    #[test]
    fn unlink_and_link_on_the_identities_tab() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('7'));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char('u'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::UnlinkAddress {
                address: "webchat:a1b2".parse().expect("address")
            })
        );
        // `l` opens the form with the selected user as the one that stays.
        press(&mut app, KeyCode::Char('l'));
        press(&mut app, KeyCode::Tab);
        assert_eq!(typed(&mut app, "x"), None);
        press(&mut app, KeyCode::Enter);
        let Some(Modal::Form(form)) = &app.modal else {
            panic!("the form stays open on a bad id: {:?}", app.modal);
        };
        assert_eq!(
            form.error.as_deref(),
            Some("give a user id or an address CHANNEL:SENDER_ID, e.g. http:alice")
        );
        press(&mut app, KeyCode::Backspace);
        typed(&mut app, "3");
        assert_eq!(press(&mut app, KeyCode::Enter), None);
        assert_eq!(question(&app).as_deref(), Some("Merge user 3 into user 1?"));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::LinkIdentities {
                user_id: 1,
                other: LinkOther::User(3)
            })
        );
    }

    /// Opens the link form on user 1 and types `other` into the second field.
    fn link_form(other: &str) -> App {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('7'));
        press(&mut app, KeyCode::Char('l'));
        press(&mut app, KeyCode::Tab);
        typed(&mut app, other);
        app
    }

    fn form_error(app: &App) -> Option<String> {
        match &app.modal {
            Some(Modal::Form(f)) => f.error.clone(),
            other => panic!("the form should still be open: {other:?}"),
        }
    }

    #[test]
    fn link_takes_an_address_and_moves_it_after_asking() {
        let mut app = link_form("http:bob");
        assert_eq!(press(&mut app, KeyCode::Enter), None);
        assert_eq!(question(&app).as_deref(), Some("Move http:bob to user 1?"));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::LinkIdentities {
                user_id: 1,
                other: LinkOther::Address(Address {
                    channel: channel("http"),
                    sender_id: "bob".into()
                })
            })
        );
        // Which channels exist is the gateway's to say: any name goes to it.
        let mut app = link_form("fax:1");
        press(&mut app, KeyCode::Enter);
        assert_eq!(question(&app).as_deref(), Some("Move fax:1 to user 1?"));
        // `n` cancels an address link too.
        let mut app = link_form("webchat:a:b");
        press(&mut app, KeyCode::Enter);
        assert_eq!(press(&mut app, KeyCode::Char('n')), None);
        assert_eq!(app.modal, None);
    }

    #[test]
    fn link_with_a_bad_second_field_sends_nothing_and_says_why() {
        for (input, error) in [
            (
                ":123",
                "the channel before `:123` is empty; expected CHANNEL:SENDER_ID, e.g. http:alice",
            ),
            ("http:", "the sender id after `http:` is empty"),
            (
                "-4",
                "give a user id or an address CHANNEL:SENDER_ID, e.g. http:alice",
            ),
            (
                "",
                "give a user id or an address CHANNEL:SENDER_ID, e.g. http:alice",
            ),
            ("1", "the two user ids are the same"),
        ] {
            let mut app = link_form(input);
            assert_eq!(press(&mut app, KeyCode::Enter), None, "{input}");
            assert_eq!(form_error(&app).as_deref(), Some(error), "{input}");
        }
    }

    #[test]
    fn run_workflow_takes_a_name_and_inputs() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('6'));
        press(&mut app, KeyCode::Char('w'));
        // The name starts as the selected run's workflow.
        for _ in 0.."daily_report".len() {
            press(&mut app, KeyCode::Backspace);
        }
        typed(&mut app, "triage");
        press(&mut app, KeyCode::Tab);
        typed(&mut app, "topic=Rust n=3");
        assert_eq!(
            press(&mut app, KeyCode::Enter),
            rpc(Action::RunWorkflow {
                name: "triage".into(),
                inputs_json: r#"{"n":3,"topic":"Rust"}"#.into()
            })
        );
        press(&mut app, KeyCode::Char('w'));
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        assert_eq!(app.modal, None);
    }

    #[test]
    fn the_filter_narrows_the_rows_and_actions_follow_it() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        press(&mut app, KeyCode::Char('/'));
        // While filtering, letters are text, not commands.
        assert_eq!(typed(&mut app, "user:12"), None);
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.sessions.list.visible().len(), 1);
        press(&mut app, KeyCode::Char('e'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            rpc(Action::EvictSession {
                key: "user:12".into()
            })
        );
    }

    #[test]
    fn keys_switch_tabs_and_q_quits() {
        let mut app = fixture();
        assert_eq!(
            press(&mut app, KeyCode::Tab),
            Some(Intent::Fetch(Fetch::Sessions { after: None }))
        );
        press(&mut app, KeyCode::BackTab);
        press(&mut app, KeyCode::BackTab);
        assert_eq!(app.tab, Tab::Identities);
        press(&mut app, KeyCode::Char('?'));
        assert_eq!(app.modal, Some(Modal::Help));
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        assert_eq!(press(&mut app, KeyCode::Char('q')), Some(Intent::Quit));
    }

    #[test]
    fn the_last_row_asks_for_the_next_page_once() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        assert_eq!(
            press(&mut app, KeyCode::End),
            Some(Intent::Fetch(Fetch::Sessions {
                after: Some("user:40".into())
            }))
        );
        assert_eq!(press(&mut app, KeyCode::Down), None, "already paging");
        update(
            &mut app,
            Input::Api(ApiUpdate::Data(Data::Sessions {
                after: Some("user:40".into()),
                sessions: vec![Session {
                    key: "user:41".into(),
                    group: false,
                    last_channel: "http".into(),
                    last_active_ms: None,
                    turns: 0,
                    resident: true,
                    in_flight: 0,
                }],
                next_cursor: None,
            })),
        );
        assert_eq!(app.sessions.list.items.len(), 41);
        assert_eq!(press(&mut app, KeyCode::End), None, "no more pages");
    }

    #[test]
    fn events_refresh_only_the_affected_tab_and_errors_reach_the_overview() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        let event = |e: E| {
            Input::Api(ApiUpdate::Event(
                pb::WatchEventsResponse {
                    at_ms: NOW,
                    event: Some(e),
                }
                .into(),
            ))
        };
        assert_eq!(
            update(
                &mut app,
                event(E::SessionEvicted(pb::SessionEvicted {
                    key: "user:1".into(),
                    reason: "operator".into()
                }))
            ),
            Some(Intent::Fetch(Fetch::Sessions { after: None }))
        );
        assert_eq!(
            update(
                &mut app,
                event(E::DeadLettered(pb::DeadLettered {
                    outbox_id: 4,
                    channel: "http".into(),
                    error: "400 bad".into()
                }))
            ),
            None
        );
        assert_eq!(
            app.overview.errors.front().map(|e| e.1.as_str()),
            Some("http dead letter: 400 bad")
        );
    }

    #[test]
    fn a_lost_connection_counts_down_and_results_show_then_fade() {
        let mut app = fixture();
        update(
            &mut app,
            Input::Api(ApiUpdate::Disconnected {
                error: "refused".into(),
                retry_in_ms: 4_000,
            }),
        );
        assert_eq!(update(&mut app, Input::Tick), None, "no fetch while down");
        app.set_now(NOW + 1_500);
        let Conn::Disconnected { retry_at_ms, .. } = app.conn else {
            panic!("disconnected")
        };
        assert_eq!(retry_in_secs(retry_at_ms, app.now_ms), 3);
        update(
            &mut app,
            Input::Api(ApiUpdate::ActionFailed("NOT_FOUND: no such".into())),
        );
        assert!(app.status.as_ref().is_some_and(|s| s.error));
        app.set_now(NOW + 60_000);
        assert_eq!(app.status, None);
    }
}
