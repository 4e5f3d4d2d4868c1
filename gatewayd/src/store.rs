//! The durable state of the gateway behind one trait: inbox, transcripts, outbox, identities.
//!
//! Every backend keeps these promises, which the rest of the daemon relies on:
//! - [`Store::inbox_commit`] returns only after the message is durable, and reports a repeat of
//!   `(channel, channel_message_id)` as a duplicate instead of storing it twice.
//! - [`Store::commit_turn`] is atomic: the transcript entries, the outbox rows and the inbox row's
//!   `done` mark are committed together or not at all. So a message gets at most one committed
//!   agent turn, and a reply is in the outbox before anything tries to send it.
//! - Outbox rows only ever move `pending → delivered` or `pending → dead`.
//! - A write that fails for lack of disk space ([`StoreError::Full`]) changes nothing; the
//!   store keeps serving reads, and [`Store::recoveries`] ticks once writes succeed again.
//!
//! Retention: done inbox rows and delivered (or dropped) outbox rows are pruned once older
//! than the dedupe window, transcript entries once older than the transcript retention except
//! each session's last history window; pending rows and dead letters are never pruned.
//!
//! The embedded backend is [`sqlite::SqliteStore`]; the trait is shaped so that a shared backend
//! (Redis) can implement the same operations for several instances.

pub mod sqlite;

use async_trait::async_trait;

use crate::message::{Address, ChannelKind, InboundMessage, OutboundMessage, SessionKey, UserId};
use crate::send::ErrorClass;

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the database's size limit) is full; nothing of the write was kept.
    #[error("the disk is full: {0}")]
    Full(String),
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// The store's writer has stopped (the daemon is shutting down).
    #[error("the store is closed")]
    Closed,
    /// An operation named something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An operation was refused because of the current state.
    #[error("{0}")]
    Conflict(String),
}

/// The result of committing an inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxOutcome {
    /// Stored for the first time under this inbox id.
    New(i64),
    /// Seen before; carries the id of the first copy.
    Duplicate(i64),
}

/// An inbound message that was committed but has no finished turn yet.
#[derive(Debug, Clone)]
pub struct PendingInbound {
    /// Inbox row id.
    pub inbox_id: i64,
    /// The message.
    pub message: InboundMessage,
}

/// Who wrote a transcript entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person.
    User,
    /// The agent.
    Assistant,
    /// A gateway notice (an error reply); kept in the transcript, not sent to the agent.
    Notice,
    /// The start of a fresh session (`/reset`); entries before it are history, not context.
    Reset,
}

impl Role {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Notice => "notice",
            Self::Reset => "reset",
        }
    }

    /// Parses a stored role name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Self::User,
            "assistant" => Self::Assistant,
            "notice" => Self::Notice,
            "reset" => Self::Reset,
            _ => return None,
        })
    }
}

/// One stored line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptEntry {
    /// Who wrote it.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The channel it was said on (the inbound channel for both sides of a turn).
    pub channel: Option<ChannelKind>,
}

/// A reply to commit with a turn.
#[derive(Debug, Clone)]
pub struct NewReply {
    /// Channel to send on.
    pub channel: ChannelKind,
    /// Chat to send to.
    pub chat_id: String,
    /// The text.
    pub text: String,
    /// The channel message id it answers.
    pub reply_to: Option<String>,
}

/// Everything one finished turn changes, committed atomically by [`Store::commit_turn`].
#[derive(Debug, Clone)]
pub struct TurnRecord {
    /// The inbox row this turn answers; marked done.
    pub inbox_id: i64,
    /// The conversation.
    pub session: SessionKey,
    /// Entries to append to the transcript, in order.
    pub entries: Vec<TranscriptEntry>,
    /// Replies to put in the outbox, in order.
    pub replies: Vec<NewReply>,
}

/// A stored user with their addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The user id.
    pub id: UserId,
    /// Every address linked to the user, sorted.
    pub addresses: Vec<Address>,
}

/// The durable state of the gateway.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits an inbound message, deduplicated by `(channel, channel_message_id)`.
    async fn inbox_commit(&self, msg: &InboundMessage) -> Result<InboxOutcome, StoreError>;

    /// When the newest inbound message of `chat_id` on `channel` arrived (ms since the epoch);
    /// `None` when none is on record. Delivery asks it for channels with a reply window.
    async fn last_inbound_at(
        &self,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<Option<i64>, StoreError>;

    /// Records the platform's id of chunk `chunk` of outbox row `id`, so the platform's later
    /// receipts for it ([`Store::record_receipt`]) land on the row.
    async fn outbox_platform_id(
        &self,
        id: i64,
        chunk: u32,
        channel: ChannelKind,
        platform_id: &str,
    ) -> Result<(), StoreError>;

    /// Records a platform's receipt for the message it knows as `platform_id`. A receipt only
    /// moves forward (`sent → delivered → read`, `failed` from any); an older one changes
    /// nothing. A receipt that arrives before the send is recorded is kept and joined to the row
    /// when it is. Returns the outbox id when the row is known.
    async fn record_receipt(
        &self,
        channel: ChannelKind,
        platform_id: &str,
        status: ReceiptStatus,
        error: Option<&str>,
    ) -> Result<Option<i64>, StoreError>;

    /// Watermark `name` of `channel`: a durable number an adapter keeps beside the messages it
    /// commits (where its catch-up starts: the platform time of the newest message it
    /// committed). `None` until it is first advanced.
    async fn cursor(&self, channel: ChannelKind, name: &str) -> Result<Option<i64>, StoreError>;

    /// Moves watermark `name` of `channel` to `value` when that is later than the stored value;
    /// a watermark never moves back. Returns the value now stored.
    async fn advance_cursor(
        &self,
        channel: ChannelKind,
        name: &str,
        value: i64,
    ) -> Result<i64, StoreError>;

    /// Inbound messages without a finished turn, oldest first (replayed at start).
    async fn inbox_pending(&self) -> Result<Vec<PendingInbound>, StoreError>;

    /// Commits a finished turn atomically and returns the new outbox rows.
    async fn commit_turn(&self, turn: TurnRecord) -> Result<Vec<OutboundMessage>, StoreError>;

    /// The last `limit` entries of a session since its last reset, oldest first.
    async fn history(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<TranscriptEntry>, StoreError>;

    /// Outbox rows still to send, oldest first.
    async fn outbox_pending(&self) -> Result<Vec<OutboundMessage>, StoreError>;

    /// Marks an outbox row delivered.
    async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError>;

    /// Records that the first `chunks_sent` chunks of a split reply were delivered.
    async fn outbox_progress(&self, id: i64, chunks_sent: u32) -> Result<(), StoreError>;

    /// Records a failed attempt on an outbox row that stays pending, in its error history.
    async fn outbox_attempt_failed(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Moves an outbox row to the dead letters, with the error that put it there.
    async fn outbox_dead(
        &self,
        id: i64,
        attempts: u32,
        class: ErrorClass,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Dead letters, oldest first, optionally of one channel, after id `after` (a cursor).
    async fn dead_letters(
        &self,
        channel: Option<ChannelKind>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// One dead letter with its error history.
    async fn dead_letter(&self, id: i64) -> Result<(DeadLetter, Vec<AttemptError>), StoreError>;

    /// Moves the selected dead letters back to pending (attempts reset) and returns them.
    async fn retry_dead(&self, selector: &DeadSelector)
    -> Result<Vec<OutboundMessage>, StoreError>;

    /// Drops the selected dead letters (kept as `dropped` for the record); returns how many.
    async fn drop_dead(&self, selector: &DeadSelector) -> Result<u64, StoreError>;

    /// The user an address belongs to, creating a new isolated user for an unknown address.
    async fn resolve_address(&self, address: &Address) -> Result<UserId, StoreError>;

    /// A user and their addresses.
    async fn user(&self, id: UserId) -> Result<UserRecord, StoreError>;

    /// Merges user `merge` into user `keep`: addresses and transcripts move to `keep`, and the
    /// transcripts interleave in time order.
    async fn link_users(&self, keep: UserId, merge: UserId) -> Result<(), StoreError>;

    /// Moves `address` to a new user of its own and returns that user; history stays behind.
    async fn unlink_address(&self, address: &Address) -> Result<UserId, StoreError>;

    /// Stores a one-time link code for `user`, valid until `expires_at_ms`.
    async fn put_link_code(
        &self,
        code: &str,
        user: UserId,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Consumes a link code: returns its user if it exists, is unused and has not expired.
    async fn take_link_code(&self, code: &str, now_ms: i64) -> Result<Option<UserId>, StoreError>;

    /// Counts rows, for health checks and tests: (inbox pending, outbox pending, dead letters).
    async fn counts(&self) -> Result<(u64, u64, u64), StoreError>;

    /// Stored sessions ordered by key, after the key `after`, matching `filter`.
    async fn list_sessions(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredSession>, StoreError>;

    /// One stored session.
    async fn session(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError>;

    /// How many sessions are stored.
    async fn count_sessions(&self) -> Result<u64, StoreError>;

    /// Users ordered by id, after the id `after`, optionally only those with an address on
    /// `channel`.
    async fn list_users(
        &self,
        channel: Option<ChannelKind>,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError>;

    /// Moves one address to `user` (creating it if unknown), leaving the rest of its previous
    /// user behind; history stays where it is.
    async fn attach_address(&self, user: UserId, address: &Address) -> Result<(), StoreError>;

    /// The direct chat a user wrote from last: (channel, chat id).
    async fn last_direct_chat(
        &self,
        user: UserId,
    ) -> Result<Option<(ChannelKind, String)>, StoreError>;

    /// Commits a reply that answers no inbound message (a tool or workflow sending one).
    async fn outbox_put(&self, reply: NewReply) -> Result<OutboundMessage, StoreError>;

    /// Creates a workflow run in state `running`; returns its id.
    async fn run_create(
        &self,
        workflow: &str,
        inputs: &serde_json::Value,
        origin: Option<&RunOrigin>,
    ) -> Result<i64, StoreError>;

    /// Records the state of one node of a run (insert or replace).
    async fn run_node(&self, run: i64, node: &NodeRecord) -> Result<(), StoreError>;

    /// Marks a run finished (`succeeded` or `failed`) with its error.
    async fn run_finish(
        &self,
        run: i64,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError>;

    /// One run with its nodes.
    async fn run_get(&self, run: i64) -> Result<RunRecord, StoreError>;

    /// Runs, newest first, before the id `before`, optionally of one workflow.
    async fn run_list(
        &self,
        workflow: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Every run still `running` (to resume after a restart), oldest first.
    async fn runs_unfinished(&self) -> Result<Vec<RunRecord>, StoreError>;

    /// The database's size on disk and its rows per table (counted by the pruner, not live).
    async fn storage(&self) -> Result<StorageStats, StoreError>;

    /// Whether writes are failing for lack of disk space.
    fn disk_full(&self) -> bool {
        false
    }

    /// A counter that ticks each time writes succeed again after the disk was full.
    fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }

    /// Remembers that the inbound message `inbox_id` could not be handled because a write
    /// failed; it is handed out again by [`Store::take_stranded`] after a recovery.
    fn note_stranded(&self, _inbox_id: i64) {}

    /// The inbound messages noted as stranded (by [`Store::note_stranded`] or a failed
    /// [`Store::commit_turn`]) that are still pending, oldest first; the list is cleared.
    async fn take_stranded(&self) -> Result<Vec<PendingInbound>, StoreError> {
        Ok(Vec::new())
    }

    /// Test hook: how many turn commits failed on a write (not counting refused repeats).
    #[doc(hidden)]
    fn failed_turn_commits(&self) -> u64 {
        0
    }

    /// Test hook: limits the database to `pages` pages (at least its current size), or lifts
    /// the limit with `None`, to simulate a full disk. Returns the current page count.
    #[doc(hidden)]
    async fn set_page_limit(&self, _pages: Option<u64>) -> Result<u64, StoreError> {
        Err(StoreError::Conflict(
            "not supported by this store".to_owned(),
        ))
    }

    /// Flushes and stops writing. Later writes fail with [`StoreError::Closed`].
    async fn close(&self);

    /// Inbox rows matching `filter`, oldest first, after the id `after` (a cursor). Read-only.
    async fn list_inbox(
        &self,
        filter: &InboxFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<InboxRecord>, StoreError>;

    /// Outbox rows matching `filter`, oldest first, after the id `after` (a cursor); with
    /// `with_errors`, each with its error history. Read-only.
    async fn list_outbox(
        &self,
        filter: &OutboxFilter,
        after: Option<i64>,
        limit: usize,
        with_errors: bool,
    ) -> Result<Vec<OutboxRecord>, StoreError>;

    /// Like [`Store::history`], each entry with the inbox id of the turn that wrote it.
    async fn history_traced(
        &self,
        session: &SessionKey,
        limit: usize,
    ) -> Result<Vec<TracedEntry>, StoreError>;
}

/// The database's size and contents, as `gatewayctl status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Bytes on disk: the database file and its write-ahead log.
    pub database_bytes: u64,
    /// Rows per table, as counted by the last prune pass (or at start), in table order.
    pub table_rows: Vec<(String, u64)>,
    /// When those rows were counted, ms since the epoch (0: not yet).
    pub counted_at_ms: i64,
}

/// What the store prunes, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Done inbox rows and delivered or dropped outbox rows older than this are pruned.
    pub dedupe_window: std::time::Duration,
    /// Transcript entries older than this are pruned (`None`: kept forever), except each
    /// session's last `history_window` entries.
    pub transcript: Option<std::time::Duration>,
    /// Entries of each session that are never pruned (`gateway.history_window`).
    pub history_window: usize,
    /// How often a prune pass runs.
    pub interval: std::time::Duration,
    /// Most rows one prune transaction deletes.
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            dedupe_window: std::time::Duration::from_secs(7 * 86_400),
            transcript: None,
            history_window: 20,
            interval: std::time::Duration::from_secs(300),
            batch: 1000,
        }
    }
}

/// A reply that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The outbox row.
    pub message: OutboundMessage,
    /// The last error.
    pub last_error: String,
    /// The class of the last error.
    pub class: ErrorClass,
    /// When the reply was committed, ms since the epoch.
    pub created_at_ms: i64,
    /// When it became a dead letter, ms since the epoch.
    pub dead_at_ms: i64,
}

/// One failed attempt in a reply's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// Its class.
    pub class: ErrorClass,
    /// What happened.
    pub error: String,
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadSelector {
    /// These ids (ids that are not dead letters are ignored).
    Ids(Vec<i64>),
    /// Every dead letter of a channel, optionally only those whose last error had one of
    /// `classes` (recovery retries only the ones a recovery can help).
    Channel {
        /// The channel.
        channel: ChannelKind,
        /// Only these classes, or all.
        classes: Option<Vec<ErrorClass>>,
    },
}

/// A stored conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The key.
    pub key: SessionKey,
    /// When its first turn was committed, ms since the epoch.
    pub created_at_ms: i64,
    /// When its last turn was committed.
    pub last_active_ms: i64,
    /// Turns committed.
    pub turns: u64,
    /// The channel of the last message.
    pub last_channel: Option<ChannelKind>,
}

/// Which stored sessions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only the direct session of this user.
    pub user: Option<UserId>,
    /// Only sessions whose last message came on this channel.
    pub channel: Option<ChannelKind>,
}

/// Where a workflow run was started from, so `message` nodes can answer there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunOrigin {
    /// The channel.
    pub channel: ChannelKind,
    /// The chat.
    pub chat_id: String,
    /// The user who started it, if known.
    pub user: Option<UserId>,
    /// What started it: `chat`, `operator`, or `agent`.
    pub trigger: String,
}

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Not finished.
    Running,
    /// Every node finished or was skipped.
    Succeeded,
    /// A node failed after its retries.
    Failed,
}

impl RunStatus {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A node's state within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Not started.
    Pending,
    /// Started and not finished (after a crash: to be run again).
    Running,
    /// Finished with an output.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// On a branch not taken.
    Skipped,
}

impl NodeStatus {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            _ => return None,
        })
    }

    /// Whether the node will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped)
    }
}

/// One node of a run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// The node id.
    pub node: String,
    /// Its state.
    pub status: NodeStatus,
    /// Its output, once succeeded.
    pub output: Option<serde_json::Value>,
    /// Its last error.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When it started, ms since the epoch.
    pub started_at_ms: Option<i64>,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run id.
    pub id: i64,
    /// The workflow's name.
    pub workflow: String,
    /// Its inputs.
    pub inputs: serde_json::Value,
    /// Where it was started from.
    pub origin: Option<RunOrigin>,
    /// Its state.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
    /// Its nodes that have a state (in no particular order).
    pub nodes: Vec<NodeRecord>,
}

/// A shared handle to whichever backend is configured.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// The channel kind stored in a text column.
pub(crate) fn parse_channel(s: &str) -> Result<ChannelKind, StoreError> {
    s.parse()
        .map_err(|e: String| StoreError::Database(format!("corrupt row: {e}")))
}

/// A transcript entry with the inbox row whose turn wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedEntry {
    /// The entry.
    pub entry: TranscriptEntry,
    /// The inbox id of its turn; `None` for entries no inbound message caused.
    pub inbox_id: Option<i64>,
}

/// Which inbox rows [`Store::list_inbox`] returns; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    /// Only this channel (its stored name).
    pub channel: Option<String>,
    /// Only this chat.
    pub chat_id: Option<String>,
    /// Only rows whose turn is committed (`true`) or not yet (`false`).
    pub done: Option<bool>,
}

/// One inbox row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    /// The inbox id.
    pub id: i64,
    /// The channel's stored name.
    pub channel: String,
    /// The channel's id for the message (the deduplication key).
    pub channel_message_id: String,
    /// The chat.
    pub chat_id: String,
    /// `direct` or `group`.
    pub chat_type: String,
    /// The sender on that channel.
    pub sender_id: String,
    /// The platform's display name of the sender, if it gave one.
    pub sender_name: Option<String>,
    /// The text.
    pub text: String,
    /// The channel message id it replies to.
    pub reply_to: Option<String>,
    /// When it was committed, ms since the epoch.
    pub received_at_ms: i64,
    /// Whether its agent turn is committed.
    pub done: bool,
}

/// An outbox row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    /// Still to send.
    Pending,
    /// Sent.
    Delivered,
    /// A dead letter.
    Dead,
    /// A dead letter that was dropped.
    Dropped,
}

impl OutboxStatus {
    /// Stable lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Dropped => "dropped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "dead" => Self::Dead,
            "dropped" => Self::Dropped,
            _ => return None,
        })
    }
}

/// What a platform reported about a message it accepted (WhatsApp's `statuses[]`), in the
/// order it can only move forward: `sent → delivered → read`, and `failed` from any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReceiptStatus {
    /// The platform sent it on.
    Sent,
    /// It reached the person's device.
    Delivered,
    /// The person read it.
    Read,
    /// The platform could not deliver it after accepting it.
    Failed,
}

impl ReceiptStatus {
    /// Stable lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored (or platform) name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// Which outbox rows [`Store::list_outbox`] returns; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxFilter {
    /// Only this channel (its stored name).
    pub channel: Option<String>,
    /// Only this chat.
    pub chat_id: Option<String>,
    /// Only this status.
    pub status: Option<OutboxStatus>,
}

/// One outbox row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// The outbox id.
    pub id: i64,
    /// The inbox row it answers, if any.
    pub inbox_id: Option<i64>,
    /// The channel's stored name.
    pub channel: String,
    /// The chat.
    pub chat_id: String,
    /// The text.
    pub text: String,
    /// The channel message id it answers.
    pub reply_to: Option<String>,
    /// Its status.
    pub status: OutboxStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Chunks of a split reply already delivered.
    pub chunks_sent: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The class of the last error.
    pub class: Option<ErrorClass>,
    /// When it was committed, ms since the epoch.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its failed attempts, oldest first (filled only when asked for).
    pub errors: Vec<AttemptError>,
    /// What the platform last reported about it after accepting it (the least advanced of its
    /// chunks, `failed` first); `None` when the platform reports nothing.
    pub receipt: Option<ReceiptStatus>,
    /// The platform's error with a `failed` receipt.
    pub receipt_error: Option<String>,
}
