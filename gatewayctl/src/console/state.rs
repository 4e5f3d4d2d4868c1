//! The console's state and its pure logic: [`App`] holds one struct per tab (each in
//! `state/<tab>.rs`, owning its selection and its keys), the connection, the status line and
//! at most one popup; [`update`] applies one [`Input`] and returns at most one [`Intent`] for
//! the event loop to carry out. Global keys (quit, help, tab switching, the `/` filter) and the
//! popups are handled here; every other key goes to the active tab's `update_input`, which
//! answers with a [`TabIntent`] that the App acts on. The rows the tabs show are converted
//! from proto in `state/data.rs`; views never see proto.
//!
//! **Invariant:** nothing here does I/O or reads the clock; the loop sets [`App::set_now`]
//! before each input, so every test (and snapshot) is deterministic.

mod action;
mod channels;
mod cluster;
mod data;
mod dead_letters;
mod identities;
mod list;
mod modal;
mod overview;
mod pairing;
mod rate_limits;
mod runs;
mod sessions;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

pub use self::action::{Action, Letters, LinkOther};
pub use self::channels::ChannelsTab;
pub use self::cluster::ClusterTab;
pub use self::data::UsageToday;
#[cfg(test)]
pub use self::data::{AttemptError, Entry, RunNode};
pub use self::data::{
    Bucket, ChannelLimits, DeadLetter, DeadLetterDetail, Event, Identity, Overview, Run, Session,
    SessionDetail,
};
pub use self::dead_letters::DeadLettersTab;
pub use self::identities::IdentitiesTab;
pub use self::list::{Filterable, List, scroll_offset};
pub use self::modal::{Form, FormInput, FormKind, Modal};
pub use self::overview::OverviewTab;
pub use self::pairing::PairingTab;
pub use self::rate_limits::RateLimitsTab;
pub use self::runs::RunsTab;
pub use self::sessions::SessionsTab;
use crate::model::ChannelInfo;

/// Sessions fetched per page of ListSessions.
pub const SESSION_PAGE: u32 = 200;
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
    Overview(Box<Overview>),
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
    Pairing(Vec<data::Pairing>),
    Cluster(crate::model::Cluster),
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
    Pairing,
    Cluster,
}

/// What a tab's key handling asks of the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TabIntent {
    /// Nothing more to do.
    None,
    /// Fetch some data.
    Fetch(Fetch),
    /// An action: asked first when it needs confirmation, else sent at once.
    Propose(Action),
    /// Open a form.
    Form(Form),
    /// The key cannot act: say why on the status line.
    Refuse(String),
}

/// The tabs, in order (keys 1–9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Sessions,
    Channels,
    RateLimits,
    DeadLetters,
    Runs,
    Identities,
    Pairing,
    Cluster,
}

impl Tab {
    /// Every tab in order.
    pub const ALL: [Tab; 9] = [
        Tab::Overview,
        Tab::Sessions,
        Tab::Channels,
        Tab::RateLimits,
        Tab::DeadLetters,
        Tab::Runs,
        Tab::Identities,
        Tab::Pairing,
        Tab::Cluster,
    ];

    /// The title in the tab bar.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Sessions => "Sessions",
            Tab::Channels => "Channels",
            Tab::RateLimits => "Limits",
            Tab::DeadLetters => "Dead",
            Tab::Runs => "Runs",
            Tab::Identities => "Identities",
            Tab::Pairing => "Pairing",
            Tab::Cluster => "Cluster",
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
            Tab::Pairing => Fetch::Pairing,
            Tab::Cluster => Fetch::Cluster,
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

/// A transient line at the bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub text: String,
    pub error: bool,
    pub until_ms: i64,
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
    pub cluster: ClusterTab,
    pub dead_letters: DeadLettersTab,
    pub runs: RunsTab,
    pub identities: IdentitiesTab,
    pub pairing: PairingTab,
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
            cluster: ClusterTab::default(),
            dead_letters: DeadLettersTab::default(),
            runs: RunsTab::default(),
            identities: IdentitiesTab::default(),
            pairing: PairingTab::default(),
        }
    }

    /// Sets the clock for the next input and draw.
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        self.overview.now_ms = now_ms;
        self.sessions.now_ms = now_ms;
        self.channels.now_ms = now_ms;
        self.rate_limits.now_ms = now_ms;
        self.cluster.now_ms = now_ms;
        self.dead_letters.now_ms = now_ms;
        self.runs.now_ms = now_ms;
        self.pairing.now_ms = now_ms;
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
            Tab::Pairing => Some(&self.pairing.list.filter),
            Tab::Cluster => Some(&self.cluster.list.filter),
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
            Tab::Pairing => Some(&mut self.pairing.list.filter),
            Tab::Cluster => Some(&mut self.cluster.list.filter),
            Tab::Overview | Tab::RateLimits => None,
        }
    }

    fn clamp_all(&mut self) {
        self.sessions.list.clamp();
        self.channels.list.clamp();
        self.dead_letters.list.clamp();
        self.runs.list.clamp();
        self.identities.list.clamp();
        self.pairing.list.clamp();
        self.cluster.list.clamp();
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
        self.dead_letters.sent(&action);
        Intent::Rpc(action)
    }

    fn apply(&mut self, data: Data) -> Option<Intent> {
        match data {
            Data::Overview(o) => self.overview.sample(*o),
            Data::Sessions {
                after,
                sessions,
                next_cursor,
            } => self.sessions.page(after, sessions, next_cursor),
            Data::Session(d) => self.sessions.detail = Some(d),
            Data::Channels(c) => self.channels.list.replace(c),
            Data::RateLimits(r) => self.rate_limits.replace(r),
            Data::Cluster(c) => self.cluster.replace(c),
            Data::DeadLetters { items, total } => self.dead_letters.replace(items, total),
            Data::DeadLetter(d) => self.dead_letters.detail = Some(d),
            Data::Runs(r) => self.runs.list.replace(r),
            Data::Run(r) => self.runs.detail = Some(r),
            Data::Identities(i) => self.identities.list.replace(i),
            Data::Pairing(p) => self.pairing.list.replace(p),
        }
        None
    }

    /// The fetch that refreshes the current tab and its open detail.
    fn refresh_current(&self) -> Intent {
        Intent::Fetch(match self.tab {
            Tab::Sessions => self.sessions.refresh(),
            Tab::DeadLetters => self.dead_letters.refresh(),
            Tab::Runs => self.runs.refresh(),
            tab => tab.fetch(),
        })
    }

    /// Hands a key to the active tab and acts on what it asks.
    fn tab_key(&mut self, code: KeyCode) -> Option<Intent> {
        let intent = match self.tab {
            Tab::Overview | Tab::RateLimits => TabIntent::None,
            Tab::Sessions => self.sessions.update_input(code),
            Tab::Channels => self.channels.update_input(code),
            Tab::DeadLetters => self.dead_letters.update_input(code),
            Tab::Runs => self.runs.update_input(code),
            Tab::Identities => self.identities.update_input(code),
            Tab::Pairing => self.pairing.update_input(code),
            Tab::Cluster => self.cluster.update_input(code),
        };
        match intent {
            TabIntent::None => None,
            TabIntent::Fetch(f) => Some(Intent::Fetch(f)),
            TabIntent::Propose(action) => self.propose(action),
            TabIntent::Form(form) => {
                self.modal = Some(Modal::Form(form));
                None
            }
            TabIntent::Refuse(why) => {
                self.say(why, true);
                None
            }
        }
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
            if app.tab == Tab::Cluster && app.conn == Conn::Connected {
                return Some(Intent::Fetch(Fetch::Cluster));
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
                app.overview.record_error(ev.at_ms, e);
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
        Some(Modal::Form(mut form)) => {
            return match form.update_input(k.code) {
                FormInput::Open => {
                    app.modal = Some(Modal::Form(form));
                    None
                }
                FormInput::Cancel => None,
                FormInput::Submit(action) => app.propose(action),
            };
        }
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
        KeyCode::Char(c @ '1'..='9') => app.switch(Tab::ALL[c as usize - '1' as usize]),
        KeyCode::Char('/') if app.filter().is_some() => {
            app.filtering = true;
            None
        }
        code => app.tab_key(code),
    }
}

/// The "retrying in Ns" of a lost connection.
pub fn retry_in_secs(retry_at_ms: i64, now_ms: i64) -> u64 {
    u64::try_from((retry_at_ms - now_ms).max(0))
        .unwrap_or(0)
        .div_ceil(1000)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use gateway_proto::admin as pb;
    use pb::watch_events_response::Event as E;

    use super::*;
    use crate::model::{Address, Channel, ChannelState, ErrorClass, NodeState, RunState};

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
                store_backend: "sqlite".into(),
                store_error: None,
                usage: Some(UsageToday {
                    global_tokens: 1_250_000,
                    global_budget: Some(5_000_000),
                    top_users: vec![(3, 900_000, 41), (7, 300_000, 12), (1, 50_000, 2)],
                }),
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
        app.pairing.list.replace(vec![data::Pairing {
            code: "K7QX2M".into(),
            channel: "telegram".into(),
            sender_id: "12345".into(),
            display_name: "Ada".into(),
            first_seen_ms: NOW - 120_000,
            expires_at_ms: NOW + 3_480_000,
            kept_messages: 2,
        }]);
        let member =
            |id: &str, hb: u64, live: bool, leaving: bool, parts: Vec<u32>, leases: &[&str]| {
                crate::model::ClusterMember {
                    instance_id: id.into(),
                    age_ms: 3_725_000,
                    heartbeat_age_ms: hb,
                    live,
                    leaving,
                    version: "0.1.0".into(),
                    advertise_url: None,
                    partitions: parts,
                    leases: leases.iter().map(|l| (*l).to_owned()).collect(),
                }
            };
        app.cluster.replace(crate::model::Cluster {
            enabled: true,
            instance_id: Some("gw-a".into()),
            partitions: 64,
            lease_ttl_ms: 3_000,
            instances: vec![
                member(
                    "gw-a",
                    240,
                    true,
                    false,
                    (0..22).collect(),
                    &["conn:telegram"],
                ),
                member(
                    "gw-b",
                    610,
                    true,
                    false,
                    (22..43).collect(),
                    &["singleton:scheduler"],
                ),
                member("gw-c", 900, false, true, vec![43, 45, 46, 47], &[]),
                member("gw-d", 9_400, false, false, Vec::new(), &[]),
            ],
            unowned_partitions: 17,
        });
        app
    }

    #[test]
    fn approve_and_deny_on_the_pairing_tab_ask_first() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('8'));
        assert_eq!(app.tab, Tab::Pairing);
        assert_eq!(press(&mut app, KeyCode::Char('a')), None);
        assert_eq!(
            app.modal,
            Some(Modal::Confirm(Action::ApprovePairing {
                code: "K7QX2M".into()
            }))
        );
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            Some(Intent::Rpc(Action::ApprovePairing {
                code: "K7QX2M".into()
            }))
        );
        press(&mut app, KeyCode::Char('d'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            Some(Intent::Rpc(Action::DenyPairing {
                code: "K7QX2M".into()
            }))
        );
    }

    #[test]
    fn block_and_unblock_on_the_identities_tab() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('7'));
        press(&mut app, KeyCode::Char('b'));
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            Some(Intent::Rpc(Action::BlockUser { user_id: 1 }))
        );
        assert_eq!(
            press(&mut app, KeyCode::Char('B')),
            Some(Intent::Rpc(Action::UnblockUser { user_id: 1 }))
        );
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
        assert_eq!(app.tab, Tab::Cluster);
        press(&mut app, KeyCode::BackTab);
        assert_eq!(app.tab, Tab::Pairing);
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
