//! Leader leases: a named long-lived job (a channel's connection, `conn:<channel>`; the
//! scheduled work, `singleton:scheduler`) that runs on exactly one instance of a cluster at a
//! time ([`Leadership`]).
//!
//! [`Leadership::run`] waits until it acquires the lease (trying again every renewal
//! interval), starts the job with a [`LeaseGuard`], renews every renewal interval, and stops the
//! job when a renewal says the lease is gone, when its local deadline passes, or when the
//! gateway stops. It always **awaits the job's exit** before it lets go of the lease (released
//! at once on shutdown, so another instance takes over without waiting for the expiry).
//!
//! The local deadline is the moment the last successful acquire or renewal was *sent*, plus
//! the TTL, minus a margin ([`Leadership::margin`]): the database started the lease's TTL after
//! that request left, so the deadline falls before the server-side expiry, and a holder that
//! stops by its deadline has stopped before any other instance can acquire the lease. A holder
//! frozen past its deadline (SIGSTOP, a stalled host) wakes up with the deadline passed and
//! stops before it does anything else; what it writes meanwhile under its [`Fence`] is refused
//! by the store. Each held lease is the gauge `gateway_cluster_leader{lease="<name>"}` (1 while
//! held here, 0 otherwise).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::StoreError;
use crate::store::cluster::{ClusterStore, Fence, LeaseHeld};

/// The smallest margin between the local deadline and the lease's expiry on the server.
const MIN_MARGIN: Duration = Duration::from_millis(50);

/// The lease name of channel `channel`'s long-lived connection.
pub fn conn_lease(channel: &str) -> String {
    format!("conn:{channel}")
}

/// The lease name of the scheduled work that runs once in the cluster.
pub const SCHEDULER_LEASE: &str = "singleton:scheduler";

/// Runs named jobs under leader leases; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    store: Arc<dyn ClusterStore>,
    instance_id: Arc<str>,
    ttl: Duration,
    renew_interval: Duration,
}

/// What a job holding a lease is given: its fence, its deadline, and the signal to stop.
#[derive(Clone)]
pub struct LeaseGuard {
    fence: Fence,
    store: Arc<dyn ClusterStore>,
    deadline: watch::Receiver<Instant>,
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("fence", &self.fence)
            .field("deadline", &self.deadline())
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    /// The proof of the lease, for fenced writes.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.fence.lease
    }

    /// The epoch it is held at.
    pub fn epoch(&self) -> i64 {
        self.fence.epoch
    }

    /// The local moment by which the job must have stopped, unless a renewal moves it on: the
    /// send time of the last successful acquire or renewal, plus the TTL, minus the margin.
    pub fn deadline(&self) -> Instant {
        *self.deadline.borrow()
    }

    /// How long until [`Self::deadline`] (zero once it passed).
    pub fn time_left(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// Whether the job must stop: the lease is lost, its deadline passed, or the gateway stops.
    pub fn is_lost(&self) -> bool {
        *self.stop.borrow() || Instant::now() >= self.deadline()
    }

    /// Resolves when the job must stop (see [`Self::is_lost`]).
    pub async fn lost(&self) {
        let mut stop = self.stop.clone();
        let mut deadline = self.deadline.clone();
        loop {
            let at = *deadline.borrow_and_update();
            if *stop.borrow_and_update() || Instant::now() >= at {
                return;
            }
            tokio::select! {
                r = stop.changed() => if r.is_err() { return },
                r = deadline.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(at) => return,
            }
        }
    }

    /// The stop signal as a watch (becomes `true` when the job must stop), for code that takes
    /// a shutdown receiver.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// The lease's stored metadata (what the previous holder left, such as a poll offset).
    pub async fn meta(&self) -> Result<Option<String>, StoreError> {
        self.store.lease_meta(&self.fence.lease).await
    }

    /// Stores `meta` on the lease, only while the fence holds (else [`StoreError::Fenced`]).
    pub async fn set_meta(&self, meta: &str) -> Result<(), StoreError> {
        self.store.set_lease_meta(&self.fence, meta).await
    }

    /// Whether the database still says this instance holds the lease at this epoch.
    pub async fn holds(&self) -> Result<bool, StoreError> {
        self.store.fence_holds(&self.fence).await
    }
}

/// Why a holder let go of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The gateway stops: released at once.
    Shutdown,
    /// The job returned on its own: released, acquired again later.
    JobEnded,
    /// The local deadline passed without a successful renewal.
    Deadline,
    /// A renewal answered that the lease is no longer held.
    Lost,
}

type Renewal = Pin<Box<dyn Future<Output = (Instant, Result<Vec<LeaseHeld>, StoreError>)> + Send>>;

/// Awaits `f` if there is one, else never resolves.
async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Resolves once `shutdown` is `true` (at once if it is, or if its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn gauge(name: &str, held: bool) {
    metrics::gauge!("gateway_cluster_leader", "lease" => name.to_owned()).set(if held {
        1.0
    } else {
        0.0
    });
}

impl Leadership {
    /// Leases of `store` held as `instance_id`, each for `ttl`, renewed every `renew_interval`.
    pub fn new(
        store: Arc<dyn ClusterStore>,
        instance_id: impl Into<Arc<str>>,
        ttl: Duration,
        renew_interval: Duration,
    ) -> Self {
        Self {
            store,
            instance_id: instance_id.into(),
            ttl,
            renew_interval: renew_interval.max(Duration::from_millis(1)),
        }
    }

    /// This instance's id, the owner of every lease it acquires.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The store the leases are in.
    pub fn store(&self) -> &Arc<dyn ClusterStore> {
        &self.store
    }

    /// How long before the lease's server-side expiry the local deadline falls: a sixth of the
    /// TTL, at least 50 ms, at most half of it.
    pub fn margin(&self) -> Duration {
        (self.ttl / 6).max(MIN_MARGIN).min(self.ttl / 2)
    }

    fn deadline_after(&self, sent: Instant) -> Instant {
        sent + self.ttl.saturating_sub(self.margin())
    }

    /// Runs `job` under the lease `name` until `shutdown`: see the module documentation. Each
    /// time the lease is acquired, `job` is called with a fresh [`LeaseGuard`]; the future it
    /// returns must stop soon after [`LeaseGuard::lost`] resolves.
    pub async fn run<F, Fut>(&self, name: &str, mut shutdown: watch::Receiver<bool>, mut job: F)
    where
        F: FnMut(LeaseGuard) -> Fut,
        Fut: Future<Output = ()>,
    {
        gauge(name, false);
        let names = vec![name.to_owned()];
        loop {
            if *shutdown.borrow() {
                return;
            }
            let sent = Instant::now();
            match self
                .store
                .lease_acquire(&names, &self.instance_id, self.ttl)
                .await
            {
                Ok(held) => {
                    if let Some(h) = held.into_iter().find(|h| h.name == name) {
                        let ending = self
                            .hold(name, h.epoch, sent, &mut shutdown, &mut job)
                            .await;
                        if ending == Ending::Shutdown {
                            return;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(message = "Cannot try to acquire a lease; trying again.", lease = name, %error);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.renew_interval) => {}
                () = stopped(&mut shutdown) => return,
            }
        }
    }

    /// Holds the lease acquired at `epoch` (the acquire was sent at `sent`): runs the job,
    /// renews, stops the job, awaits its exit, lets go.
    async fn hold<F, Fut>(
        &self,
        name: &str,
        epoch: i64,
        sent: Instant,
        shutdown: &mut watch::Receiver<bool>,
        job: &mut F,
    ) -> Ending
    where
        F: FnMut(LeaseGuard) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (deadline_tx, deadline_rx) = watch::channel(self.deadline_after(sent));
        let (stop_tx, stop_rx) = watch::channel(false);
        let guard = LeaseGuard {
            fence: Fence {
                lease: Arc::from(name),
                owner: self.instance_id.clone(),
                epoch,
            },
            store: self.store.clone(),
            deadline: deadline_rx,
            stop: stop_rx,
        };
        tracing::info!(message = "Acquired a lease; its job starts here.", lease = name, epoch, instance = %self.instance_id);
        gauge(name, true);
        let mut running = std::pin::pin!(job(guard));
        let mut job_done = false;
        let mut renewing: Option<Renewal> = None;
        let mut next_renew = Instant::now() + self.renew_interval;
        let ending = loop {
            let deadline = *deadline_tx.borrow();
            tokio::select! {
                () = &mut running => {
                    job_done = true;
                    break Ending::JobEnded;
                }
                () = stopped(shutdown) => break Ending::Shutdown,
                () = tokio::time::sleep_until(deadline) => break Ending::Deadline,
                (sent, result) = maybe(&mut renewing) => {
                    renewing = None;
                    match result {
                        Ok(held) if held.iter().any(|h| h.name == name && h.epoch == epoch) => {
                            let next = self.deadline_after(sent);
                            deadline_tx.send_if_modified(|d| {
                                let later = next > *d;
                                if later {
                                    *d = next;
                                }
                                later
                            });
                        }
                        Ok(_) => break Ending::Lost,
                        Err(error) => {
                            tracing::warn!(message = "Cannot renew a lease; trying again until its deadline.", lease = name, epoch, %error);
                        }
                    }
                }
                () = tokio::time::sleep_until(next_renew), if renewing.is_none() => {
                    next_renew = Instant::now() + self.renew_interval;
                    renewing = Some(self.renewal(name));
                }
            }
        };
        let _ = stop_tx.send(true);
        if !job_done {
            if ending == Ending::Shutdown {
                // Still ours: keep it renewed while the job winds down, so no one else starts
                // before it has stopped.
                loop {
                    tokio::select! {
                        () = &mut running => break,
                        (sent, result) = maybe(&mut renewing) => {
                            renewing = None;
                            if let Ok(held) = result
                                && held.iter().any(|h| h.name == name && h.epoch == epoch)
                            {
                                let next = self.deadline_after(sent);
                                deadline_tx.send_if_modified(|d| {
                                    let later = next > *d;
                                    if later {
                                        *d = next;
                                    }
                                    later
                                });
                            }
                        }
                        () = tokio::time::sleep_until(next_renew), if renewing.is_none() => {
                            next_renew = Instant::now() + self.renew_interval;
                            renewing = Some(self.renewal(name));
                        }
                    }
                }
            } else {
                running.await;
            }
        }
        gauge(name, false);
        match ending {
            Ending::Shutdown | Ending::JobEnded | Ending::Deadline => {
                if let Err(error) = self
                    .store
                    .lease_release(&[name.to_owned()], &self.instance_id)
                    .await
                {
                    tracing::warn!(message = "Cannot release a lease; it expires on its own.", lease = name, epoch, %error);
                }
            }
            Ending::Lost => {}
        }
        match ending {
            Ending::Shutdown => {
                tracing::info!(
                    message = "Released a lease: the gateway stops.",
                    lease = name,
                    epoch
                );
            }
            Ending::JobEnded => {
                tracing::info!(
                    message = "A lease's job ended; released.",
                    lease = name,
                    epoch
                );
            }
            Ending::Deadline => {
                tracing::warn!(
                    message = "A lease was not renewed in time; its job stopped.",
                    lease = name,
                    epoch
                );
            }
            Ending::Lost => {
                tracing::warn!(
                    message = "A lease was lost to another instance; its job stopped.",
                    lease = name,
                    epoch
                );
            }
        }
        ending
    }

    fn renewal(&self, name: &str) -> Renewal {
        let store = self.store.clone();
        let me = self.instance_id.clone();
        let names = vec![name.to_owned()];
        let ttl = self.ttl;
        Box::pin(async move {
            let sent = Instant::now();
            (sent, store.lease_renew(&names, &me, ttl).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names() {
        assert_eq!(conn_lease("telegram"), "conn:telegram");
        assert_eq!(SCHEDULER_LEASE, "singleton:scheduler");
    }
}
