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
//! The embedded backend is [`sqlite::SqliteStore`]; the shared one, which several instances
//! may use at once, is [`postgres::PostgresStore`] (`[store] backend = "postgres"`). The trait and its
//! error live here; the records it takes and returns live in `records`, `dead`, `runs`,
//! `inspect` and `retention`, all re-exported.

pub mod cluster;
pub mod postgres;
pub mod sqlite;

mod access;
mod dead;
mod inspect;
mod records;
mod retention;
mod runs;
mod usage;

pub use access::{Kept, PairingMessage, PairingRequest, UserFlags};
pub use dead::{AttemptError, DeadLetter, DeadSelector};
pub use inspect::{
    InboxFilter, InboxRecord, OutboxFilter, OutboxRecord, OutboxStatus, ReceiptStatus, TracedEntry,
};
pub use records::{
    InboxOutcome, NewReply, PendingInbound, Role, SessionFilter, StoredSession, TranscriptEntry,
    TurnRecord, UserRecord,
};
pub use retention::{Retention, StorageStats};
pub use runs::{NodeRecord, NodeStatus, RunOrigin, RunRecord, RunStatus};
pub use usage::{BudgetOverride, UsageRecord, UsageTotal};

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
    /// A write made under a lease that has since expired or moved to another instance; nothing
    /// of it was kept ([`cluster::Fence`]).
    #[error("fenced: {0}")]
    Fenced(String),
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

    /// Whether `chat_id` on `channel` is a direct chat of `user`: one of the user's addresses
    /// wrote to the gateway from it (an inbox row, or the chat its address remembers after the
    /// row was pruned).
    async fn is_direct_chat_of(
        &self,
        user: UserId,
        channel: ChannelKind,
        chat_id: &str,
    ) -> Result<bool, StoreError>;

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

    /// The backend's name, as `[store] backend` spells it (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Whether the database answers now: a round trip to it, or `Err` naming why not.
    /// `/readyz` and `gatewayctl status` report it.
    async fn ping(&self) -> Result<(), StoreError>;

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

    /// The coordination of several instances, on a backend that several may share (`None`
    /// for the embedded one).
    fn cluster_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn cluster::ClusterStore>> {
        None
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

    /// [`Store::commit_turn`] with the tokens the turn spent, inserted in the same transaction.
    async fn commit_turn_with_usage(
        &self,
        turn: TurnRecord,
        usage: Option<UsageRecord>,
    ) -> Result<Vec<OutboundMessage>, StoreError>;

    /// Usage since `since_ms` summed per user (only `user`'s with `Some`), most tokens first.
    async fn usage_totals(
        &self,
        user: Option<UserId>,
        since_ms: i64,
    ) -> Result<Vec<UsageTotal>, StoreError>;

    /// When `user`'s agent turns since `since_ms` were made, oldest first.
    async fn turn_times(&self, user: UserId, since_ms: i64) -> Result<Vec<i64>, StoreError>;

    /// `user`'s budget override (empty if none was set).
    async fn budget_override(&self, user: UserId) -> Result<BudgetOverride, StoreError>;

    /// Sets `user`'s budget override; an empty one removes it.
    async fn set_budget_override(
        &self,
        user: UserId,
        limits: BudgetOverride,
    ) -> Result<(), StoreError>;
    /// Marks inbox row `inbox_id` done without a turn (no reply), recording `blocked` when its
    /// sender is blocked; a row already done is left as it is.
    async fn inbox_drop(&self, inbox_id: i64, blocked: bool) -> Result<(), StoreError>;

    /// Whether `user` (or a user merged into it) is approved, whether it is blocked, and its
    /// budget override: everything the worker checks before a message, in one read.
    async fn access_flags(&self, user: UserId) -> Result<UserFlags, StoreError>;

    /// Blocks or unblocks `user`; `NotFound` if there is no such user.
    async fn set_blocked(&self, user: UserId, blocked: bool) -> Result<(), StoreError>;

    /// Keeps a message of a sender who is not approved under its pairing request (made if
    /// there is none), in one transaction: expired requests are removed first (their kept
    /// messages marked done), at most `keep_max` messages are kept (older ones marked done),
    /// and a new request beyond `max_pending` for the channel stores nothing.
    async fn pairing_keep(&self, msg: PairingMessage) -> Result<Kept, StoreError>;

    /// The pending (not expired at `now_ms`) pairing requests, oldest first.
    async fn pairing_list(&self, now_ms: i64) -> Result<Vec<PairingRequest>, StoreError>;

    /// The pending request of `code` (not expired at `now_ms`), if any.
    async fn pairing_get(
        &self,
        code: &str,
        now_ms: i64,
    ) -> Result<Option<PairingRequest>, StoreError>;

    /// Approves `user` durably and removes the request `code`, returning it (with the kept
    /// inbox ids, to be answered); `NotFound` if no such request is pending.
    async fn pairing_approve(
        &self,
        code: &str,
        user: UserId,
        now_ms: i64,
    ) -> Result<PairingRequest, StoreError>;

    /// Removes the request `code` and marks its kept messages done, unanswered; `NotFound` if no
    /// such request is pending.
    async fn pairing_deny(&self, code: &str, now_ms: i64) -> Result<PairingRequest, StoreError>;

    /// Removes every request expired at `now_ms`, marking its kept messages done, unanswered.
    async fn pairing_expire(&self, now_ms: i64) -> Result<(), StoreError>;

    /// The inbox rows `ids` that are not done yet, in the order given.
    async fn inbox_rows(&self, ids: &[i64]) -> Result<Vec<PendingInbound>, StoreError>;
}

/// A shared handle to whichever backend is configured.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// The channel kind stored in a text column.
pub(crate) fn parse_channel(s: &str) -> Result<ChannelKind, StoreError> {
    s.parse()
        .map_err(|e: String| StoreError::Database(format!("corrupt row: {e}")))
}
