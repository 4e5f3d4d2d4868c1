//! The inbox: where every inbound message is committed before its channel is acknowledged.
//!
//! [`Inbox::commit`] makes the message durable and deduplicates it by
//! `(channel, channel_message_id)`; only after it returns may an adapter acknowledge (a webhook's
//! 2xx, a WebChat `ack`). [`Inbox::dispatch`] then hands a new message to the router. A message
//! that is committed but not finished — the daemon stopped, or routing failed — is replayed by
//! [`Inbox::replay`] at the next start, so an acknowledged message is never lost.
//!
//! While the disk is full the commit fails, so the adapter refuses the message (503, a WebChat
//! `unavailable` frame, a Telegram offset left where it was) and the sender tries again. A
//! message that was committed before the disk filled but whose routing or turn could not be
//! written is remembered as stranded; [`Inbox::recover_stranded`] routes it again as soon as
//! the store reports that writes succeed again, without a restart.
//!
//! In multi-instance mode a message may arrive at any instance. [`Inbox::commit`] resolves the
//! sender's session first and commits the row into that session's partition (with a
//! `NOTIFY gateway_inbox` in the same transaction); [`Inbox::dispatch`] hands it to a worker
//! here only while this instance owns the partition. Otherwise the owner takes it up: its
//! [`Inbox::run_pickup`] loop reads the pending rows of its partitions every
//! [`PICKUP_INTERVAL`], at once on a wake-up or a gained partition, and routes those it has not
//! handed over already ([`crate::cluster::Claims`]). Rows kept for pairing are left out of the
//! pickup until they are approved.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::events::{Event, EventBus};
use crate::message::{InboundMessage, SessionKey, UserId};
use crate::session::router::{RouteError, Router};
use crate::store::{InboxOutcome, SharedStore, StoreError};

/// How often the owner of partitions polls their pending inbox rows (multi-instance mode).
pub const PICKUP_INTERVAL: Duration = Duration::from_millis(200);

/// A committed inbound message, ready to dispatch.
#[derive(Debug)]
pub struct Committed {
    /// Inbox row id (of the first copy, for a duplicate).
    pub inbox_id: i64,
    /// Whether this was a repeat of a message already committed.
    pub duplicate: bool,
    message: Option<InboundMessage>,
    /// Multi-instance mode: the sender's user and session, resolved before the commit.
    located: Option<(UserId, SessionKey)>,
}

/// The inbox.
pub struct Inbox {
    store: SharedStore,
    router: Arc<Router>,
    events: EventBus,
    cluster: Option<Arc<Cluster>>,
}

impl Inbox {
    /// An inbox over `store` that dispatches to `router`.
    pub fn new(store: SharedStore, router: Arc<Router>, events: EventBus) -> Self {
        Self {
            store,
            router,
            events,
            cluster: None,
        }
    }

    /// Multi-instance mode: rows are committed into their session's partition, and handed to
    /// a worker here only while this instance owns it.
    #[must_use]
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Commits `msg` durably; a repeat is reported, not stored again.
    pub async fn commit(&self, msg: InboundMessage) -> Result<Committed, StoreError> {
        let (outcome, located) = match &self.cluster {
            None => (self.store.inbox_commit(&msg).await?, None),
            Some(cluster) => {
                let (user, key) = self.router.locate(&msg).await.map_err(|e| match e {
                    RouteError::Store(e) => e,
                    RouteError::ShuttingDown => StoreError::Closed,
                })?;
                let p = cluster.partition_of(&key);
                let outcome = cluster.store().inbox_commit_in(&msg, p).await?;
                (outcome, Some((user, key)))
            }
        };
        Ok(match outcome {
            InboxOutcome::New(inbox_id) => {
                self.events.publish(Event::MessageIn {
                    inbox_id,
                    channel: msg.channel,
                    chat_id: msg.chat_id.clone(),
                });
                Committed {
                    inbox_id,
                    duplicate: false,
                    message: Some(msg),
                    located,
                }
            }
            InboxOutcome::Duplicate(inbox_id) => {
                tracing::debug!(message = "Duplicate inbound message ignored.", channel = %msg.channel, inbox_id);
                Committed {
                    inbox_id,
                    duplicate: true,
                    message: None,
                    located: None,
                }
            }
        })
    }

    /// Hands a newly committed message to its session. A failure is logged; the message stays
    /// pending and is replayed at the next start.
    pub async fn dispatch(&self, committed: Committed) {
        let Some(msg) = committed.message else { return };
        let routed = match (&self.cluster, committed.located) {
            (Some(cluster), Some((user, key))) => {
                let p = cluster.partition_of(&key);
                // Not owned here: the row waits in the shared inbox for the owner's pickup.
                if cluster.fence_for(p).is_none() || !cluster.claims().claim(committed.inbox_id, p)
                {
                    return;
                }
                self.router
                    .route_located(committed.inbox_id, msg, user, key)
                    .await
            }
            _ => self.router.route(committed.inbox_id, msg).await,
        };
        if let Err(e) = routed {
            if let Some(c) = &self.cluster {
                c.claims().release(committed.inbox_id);
            }
            self.store.note_stranded(committed.inbox_id);
            tracing::error!(message = "Message committed but not routed; it is routed again once the store recovers, or at next start.", inbox_id = committed.inbox_id, error = %e);
        }
    }

    /// Runs until the store closes: after each recovery from a full disk, routes again every
    /// pending message whose handling failed on a write. A turn that was committed meanwhile
    /// is not committed twice (the store refuses a second turn for one inbox row).
    pub async fn recover_stranded(self: Arc<Self>) {
        let mut recoveries = self.store.recoveries();
        while recoveries.changed().await.is_ok() {
            let stranded = match self.store.take_stranded().await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(message = "Cannot read the stranded messages; they are replayed at next start.", %error);
                    continue;
                }
            };
            if !stranded.is_empty() {
                tracing::info!(
                    message = "Routing stranded messages again.",
                    count = stranded.len()
                );
            }
            for p in stranded {
                if let Err(e) = self.router.route(p.inbox_id, p.message).await {
                    self.store.note_stranded(p.inbox_id);
                    tracing::error!(message = "Cannot route a stranded message.", inbox_id = p.inbox_id, error = %e);
                }
            }
        }
    }

    /// Commits then dispatches; returns whether it was a duplicate.
    pub async fn accept(&self, msg: InboundMessage) -> Result<bool, StoreError> {
        let committed = self.commit(msg).await?;
        let duplicate = committed.duplicate;
        self.dispatch(committed).await;
        Ok(duplicate)
    }

    /// Multi-instance mode: routes the pending rows of the partitions this instance owns that
    /// are not yet handed to a worker here. A row whose session now hashes elsewhere (a link
    /// moved its sender) is filed under that partition instead, for its owner. Rows without a
    /// partition are the holder of partition 0's to file. Returns how many it routed.
    pub async fn pickup(&self) -> Result<usize, StoreError> {
        let Some(cluster) = &self.cluster else {
            return Ok(0);
        };
        let owned = cluster.owned();
        if owned.is_empty() {
            return Ok(0);
        }
        let polled: BTreeSet<u32> = owned.iter().copied().collect();
        let unassigned = polled.contains(&0);
        let seq = cluster.claims().begin_poll();
        let rows = cluster.store().inbox_pending_in(&owned, unassigned).await?;
        let pending: HashSet<i64> = rows.iter().map(|(r, _)| r.inbox_id).collect();
        cluster.claims().finish_poll(seq, &polled, &pending);
        let mut routed = 0;
        for (row, filed) in rows {
            if cluster.claims().is_claimed(row.inbox_id) {
                continue;
            }
            let (user, key) = match self.router.locate(&row.message).await {
                Ok(located) => located,
                Err(RouteError::ShuttingDown) => return Ok(routed),
                Err(RouteError::Store(e)) => return Err(e),
            };
            let p = cluster.partition_of(&key);
            if filed != Some(p) {
                cluster.store().inbox_move(row.inbox_id, p).await?;
                if cluster.fence_for(p).is_none() {
                    continue;
                }
            }
            if cluster.fence_for(p).is_none() || !cluster.claims().claim(row.inbox_id, p) {
                continue;
            }
            match self
                .router
                .route_located(row.inbox_id, row.message, user, key)
                .await
            {
                Ok(()) => routed += 1,
                Err(e) => {
                    cluster.claims().release(row.inbox_id);
                    tracing::warn!(message = "Cannot route a pending message; the next pickup tries again.", inbox_id = row.inbox_id, error = %e);
                }
            }
        }
        Ok(routed)
    }

    /// Multi-instance mode: runs [`Inbox::pickup`] every [`PICKUP_INTERVAL`], at once when a
    /// partition is gained, and at once on a wake-up from another instance's commit
    /// (`LISTEN gateway_inbox`, reconnected when lost; only a hint, the poll is the truth).
    pub async fn run_pickup(self: Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut ownership = cluster.subscribe();
        let mut wakeups: Option<tokio::sync::mpsc::Receiver<Option<u32>>> = None;
        let mut next_listen = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(PICKUP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if wakeups.is_none() && tokio::time::Instant::now() >= next_listen {
                match cluster.store().listen_inbox().await {
                    Ok(rx) => wakeups = Some(rx),
                    Err(error) => {
                        tracing::debug!(message = "Cannot listen for inbox wake-ups; polling only.", %error);
                        next_listen = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                _ = tick.tick() => {}
                changed = ownership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                hint = async {
                    match wakeups.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match hint {
                        // Another instance's commit into a partition not owned here.
                        Some(Some(p)) if cluster.fence_for(p).is_none() => continue,
                        Some(_) => {}
                        None => {
                            wakeups = None;
                            next_listen = tokio::time::Instant::now();
                        }
                    }
                }
            }
            if cluster.is_leaving() {
                return;
            }
            if let Err(error) = self.pickup().await {
                tracing::warn!(message = "Cannot read the pending messages of the owned partitions; trying again.", %error);
            }
        }
    }

    /// Routes every committed message that has no finished turn, oldest first.
    pub async fn replay(&self) -> Result<usize, StoreError> {
        let pending = self.store.inbox_pending().await?;
        let n = pending.len();
        for p in pending {
            if let Err(e) = self.router.route(p.inbox_id, p.message).await {
                tracing::error!(message = "Cannot replay a pending message.", inbox_id = p.inbox_id, error = %e);
            }
        }
        Ok(n)
    }
}
