//! The router: message → user → session key → that session's worker.
//!
//! Resident sessions live in one LRU map behind a mutex that is held only for map operations,
//! never across an `.await`. Each entry counts the messages handed to its worker and not yet
//! finished; only a session with none in flight is evicted, and because that count is raised
//! under the same lock that eviction takes, a message is never handed to a worker that is going
//! away. An evicted worker's mailbox is closed and the worker exits; the next message for that
//! key starts a new worker, which reloads the history from the store. When every resident
//! session is busy the map may exceed `max_sessions` for a moment rather than block or drop.
//!
//! A panic never disables routing: the map's lock is taken through poisoning (the map holds no
//! invariant a panic can break half way), and a worker found gone (its mailbox closed while
//! the router is not shutting down) is replaced by a new one for the same key.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lru::LruCache;
use tokio::sync::mpsc;

use super::Context;
use super::worker::{self, Job};
use crate::events::Event;
use crate::message::{InboundMessage, SessionKey, UserId, now_ms};
use crate::store::StoreError;

/// Why a message could not be routed (it stays pending in the inbox).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Identity resolution failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// State shared between the router and one worker.
#[derive(Debug, Default)]
pub struct Shared {
    /// Messages handed to the worker and not yet finished.
    pub in_flight: AtomicUsize,
    /// Last activity, ms since the epoch.
    pub last_active_ms: AtomicI64,
    /// Set when the stored history changed under the worker (a link); it reloads.
    pub stale: AtomicBool,
}

struct Handle {
    /// Jobs are boxed: a bounded channel allocates its slots in blocks of 32 up front, so an
    /// idle session's mailbox costs 32 pointers rather than 32 whole jobs (~5.6 KiB).
    tx: mpsc::Sender<Box<Job>>,
    shared: Arc<Shared>,
}

/// A resident session as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidentSession {
    /// The key.
    pub key: SessionKey,
    /// Messages in flight.
    pub in_flight: usize,
    /// Last activity, ms since the epoch.
    pub last_active_ms: i64,
}

/// Largest mailbox a worker gets (tokio's channels refuse more permits than this).
const MAX_MAILBOX: usize = tokio::sync::Semaphore::MAX_PERMITS;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Routes messages to session workers.
pub struct Router {
    ctx: Arc<Context>,
    sessions: Mutex<LruCache<SessionKey, Handle>>,
    max_sessions: usize,
    mailbox: usize,
    workers_done: Mutex<Option<mpsc::Sender<()>>>,
    workers_done_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Router {
    /// A router keeping at most `max_sessions` resident, each with a mailbox of `mailbox`.
    pub fn new(ctx: Arc<Context>, max_sessions: usize, mailbox: usize) -> Arc<Self> {
        let (done_tx, done_rx) = mpsc::channel(1);
        Arc::new(Self {
            ctx,
            sessions: Mutex::new(LruCache::unbounded()),
            max_sessions: max_sessions.max(1),
            mailbox: mailbox.clamp(1, MAX_MAILBOX),
            workers_done: Mutex::new(Some(done_tx)),
            workers_done_rx: tokio::sync::Mutex::new(done_rx),
        })
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Hands a committed inbound message to its session's worker. Waits while the mailbox is
    /// full (back-pressure on the channel), never drops. In multi-instance mode a message
    /// already handed to a worker here is not handed over again (see
    /// [`Claims`](crate::cluster::Claims)).
    pub async fn route(
        self: &Arc<Self>,
        inbox_id: i64,
        msg: InboundMessage,
    ) -> Result<(), RouteError> {
        let (user, key) = self.locate(&msg).await?;
        if let Some(cluster) = &self.ctx.cluster {
            let p = cluster.partition_of(&key);
            if cluster.fence_for(p).is_some() && !cluster.claims().claim(inbox_id, p) {
                // Already handed to a worker here (by the owner's pickup).
                return Ok(());
            }
        }
        self.route_located(inbox_id, msg, user, key).await
    }

    /// [`Router::route`] for a message already located (its user and session key). In
    /// multi-instance mode a message whose session's partition is not owned here is not
    /// handed to a worker: its inbox row is filed under that partition, for its owner.
    pub async fn route_located(
        self: &Arc<Self>,
        inbox_id: i64,
        msg: InboundMessage,
        user: UserId,
        key: SessionKey,
    ) -> Result<(), RouteError> {
        if let Some(cluster) = &self.ctx.cluster {
            let p = cluster.partition_of(&key);
            if cluster.fence_for(p).is_none() {
                cluster.claims().release(inbox_id);
                cluster.store().inbox_move(inbox_id, p).await?;
                return Ok(());
            }
        }
        let mut job = Box::new(Job {
            inbox_id,
            msg,
            user,
        });
        // The second try only follows a worker found gone, which the first try removed.
        for _ in 0..2 {
            let (tx, shared) = self.checkout(&key)?;
            match tx.send(job).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    if !self.forget_gone(&key, &shared) {
                        return Err(RouteError::ShuttingDown);
                    }
                }
            }
        }
        Err(RouteError::ShuttingDown)
    }

    /// Removes `key`'s entry if it is still the worker behind `shared`, whose mailbox is
    /// closed; returns whether routing may try again (false while shutting down).
    fn forget_gone(&self, key: &SessionKey, shared: &Arc<Shared>) -> bool {
        if lock(&self.workers_done).is_none() {
            return false;
        }
        let mut sessions = lock(&self.sessions);
        if sessions
            .peek(key)
            .is_some_and(|h| Arc::ptr_eq(&h.shared, shared))
        {
            sessions.pop(key);
            tracing::error!(message = "A session worker was gone; a new one takes its messages.", session = %key);
        }
        true
    }

    /// The first half of [`Router::route`]: the sender's user (through the identity cache, or
    /// the store on a miss, which creates an unknown address's user) and the session key the
    /// message belongs to. Starts no worker and hands nothing over.
    pub async fn locate(&self, msg: &InboundMessage) -> Result<(UserId, SessionKey), RouteError> {
        let user = self.ctx.identity.resolve(&msg.address()).await?;
        Ok((user, SessionKey::for_message(msg, user)))
    }

    /// Finds or starts the worker for `key` and counts one more message in flight.
    fn checkout(
        self: &Arc<Self>,
        key: &SessionKey,
    ) -> Result<(mpsc::Sender<Box<Job>>, Arc<Shared>), RouteError> {
        let mut evicted = Vec::new();
        let result = {
            let mut sessions = lock(&self.sessions);
            if let Some(h) = sessions.get(key) {
                h.shared.in_flight.fetch_add(1, Ordering::AcqRel);
                (h.tx.clone(), h.shared.clone())
            } else {
                let done = lock(&self.workers_done)
                    .clone()
                    .ok_or(RouteError::ShuttingDown)?;
                let (tx, rx) = mpsc::channel(self.mailbox);
                let shared = Arc::new(Shared::default());
                shared.in_flight.store(1, Ordering::Release);
                shared.last_active_ms.store(now_ms(), Ordering::Release);
                tokio::spawn(worker::run(
                    self.clone(),
                    key.clone(),
                    rx,
                    shared.clone(),
                    done,
                ));
                sessions.put(
                    key.clone(),
                    Handle {
                        tx: tx.clone(),
                        shared: shared.clone(),
                    },
                );
                self.ctx.events.publish(Event::SessionCreated {
                    session: key.clone(),
                });
                // Over capacity: evict the least recently used sessions that are idle.
                let excess = sessions.len().saturating_sub(self.max_sessions);
                if excess > 0 {
                    let victims: Vec<SessionKey> = sessions
                        .iter()
                        .rev()
                        .filter(|(k, h)| {
                            *k != key && h.shared.in_flight.load(Ordering::Acquire) == 0
                        })
                        .take(excess)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in victims {
                        sessions.pop(&k);
                        evicted.push(k);
                    }
                }
                (tx, shared)
            }
        };
        for session in evicted {
            tracing::debug!(message = "Session evicted.", session = %session, reason = "lru");
            self.ctx.events.publish(Event::SessionEvicted {
                session,
                reason: "lru",
            });
        }
        Ok(result)
    }

    /// Marks every resident session of partition `p` (of `partitions`) stale: another instance
    /// may have answered in it while this one did not own it.
    pub fn invalidate_partition(&self, p: u32, partitions: u32) {
        for (key, h) in lock(&self.sessions).iter() {
            if crate::cluster::partition_of(key, partitions) == p {
                h.shared.stale.store(true, Ordering::Release);
            }
        }
    }

    /// Marks a resident session's window stale so its worker reloads it from the store.
    pub fn invalidate(&self, key: &SessionKey) {
        if let Some(h) = lock(&self.sessions).peek(key) {
            h.shared.stale.store(true, Ordering::Release);
        }
    }

    /// Evicts sessions idle for longer than `idle`; returns how many went.
    pub fn sweep(&self, idle: Duration) -> usize {
        let cutoff = now_ms().saturating_sub(i64::try_from(idle.as_millis()).unwrap_or(i64::MAX));
        let evicted: Vec<SessionKey> = {
            let mut sessions = lock(&self.sessions);
            let victims: Vec<SessionKey> = sessions
                .iter()
                .filter(|(_, h)| {
                    h.shared.in_flight.load(Ordering::Acquire) == 0
                        && h.shared.last_active_ms.load(Ordering::Acquire) <= cutoff
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in &victims {
                sessions.pop(k);
            }
            victims
        };
        let n = evicted.len();
        for session in evicted {
            tracing::debug!(message = "Session evicted.", session = %session, reason = "idle");
            self.ctx.events.publish(Event::SessionEvicted {
                session,
                reason: "idle",
            });
        }
        n
    }

    /// Evicts one session if it has nothing in flight. Returns whether it was resident.
    pub fn evict(&self, key: &SessionKey) -> Result<bool, String> {
        let removed = {
            let mut sessions = lock(&self.sessions);
            match sessions.peek(key) {
                None => return Ok(false),
                Some(h) if h.shared.in_flight.load(Ordering::Acquire) > 0 => {
                    return Err(format!(
                        "session {key} is busy; try again when its turn finishes"
                    ));
                }
                Some(_) => sessions.pop(key).is_some(),
            }
        };
        if removed {
            self.ctx.events.publish(Event::SessionEvicted {
                session: key.clone(),
                reason: "operator",
            });
        }
        Ok(removed)
    }

    /// One resident session, without touching its LRU position.
    pub fn peek(&self, key: &SessionKey) -> Option<ResidentSession> {
        let sessions = lock(&self.sessions);
        sessions.peek(key).map(|h| ResidentSession {
            key: key.clone(),
            in_flight: h.shared.in_flight.load(Ordering::Acquire),
            last_active_ms: h.shared.last_active_ms.load(Ordering::Acquire),
        })
    }

    /// The resident sessions, most recently used first.
    pub fn resident(&self) -> Vec<ResidentSession> {
        let sessions = lock(&self.sessions);
        sessions
            .iter()
            .map(|(k, h)| ResidentSession {
                key: k.clone(),
                in_flight: h.shared.in_flight.load(Ordering::Acquire),
                last_active_ms: h.shared.last_active_ms.load(Ordering::Acquire),
            })
            .collect()
    }

    /// How many sessions are resident.
    pub fn resident_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Closes every mailbox and waits up to `grace` for workers to finish what they hold.
    /// Messages not finished by then stay pending in the inbox and are replayed at next start.
    pub async fn shutdown(&self, grace: Duration) {
        lock(&self.workers_done).take();
        lock(&self.sessions).clear();
        let mut rx = self.workers_done_rx.lock().await;
        if tokio::time::timeout(grace, rx.recv()).await.is_err() {
            tracing::warn!(
                message = "Session workers did not finish in time; their messages stay pending and are replayed at next start."
            );
        }
    }
}
