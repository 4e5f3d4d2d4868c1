//! Multi-instance mode in the runtime: the WebChat relay, the first membership round and the
//! takeover of gained partitions, and the leader leases of connections and scheduled work.

use super::*;

/// In cluster mode, the relay that carries WebChat replies to the instance holding the socket.
pub(super) fn cluster_relay(
    config: &Config,
    store: &SharedStore,
) -> anyhow::Result<Option<Arc<crate::cluster::relay::Relay>>> {
    if !config.cluster.enabled {
        return Ok(None);
    }
    let cluster = store.clone().cluster_store().context(
        "cluster.enabled needs a store several instances share: set [store] backend = \"postgres\"",
    )?;
    let secret = config
        .cluster_secret()
        .map_err(|e| anyhow!(e))?
        .context("cluster.enabled needs cluster.secret_env or cluster.secret_file")?;
    crate::cluster::relay::Relay::new(
        cluster,
        config.cluster.instance_id(),
        config.cluster.lease_ttl.get(),
        secret,
    )
    .map(Some)
}

/// Multi-instance mode: the first membership round (so this instance starts with the
/// partitions that are free), then the supervised membership loop, the inbox pickup, and the
/// takeover of each partition gained: its resident sessions marked stale, its pending replies
/// queued, its unfinished workflow runs resumed (its pending inbox rows are the pickup's).
pub(super) async fn start_cluster(
    cluster: &Arc<Cluster>,
    supervisor: &Arc<Supervisor>,
    inbox: &Arc<Inbox>,
    router: &Arc<Router>,
    delivery: &Delivery,
    workflows: Option<&Arc<Engine>>,
    background: &mut Vec<JoinHandle<()>>,
) {
    let ownership = cluster.subscribe();
    match cluster.tick().await {
        Ok(report) => tracing::info!(
            message = "Joined the cluster.",
            instance = cluster.instance_id(),
            live = report.live.len(),
            partitions = report.acquired.len()
        ),
        Err(error) => {
            tracing::warn!(message = "The first cluster membership round failed; retrying.", %error);
        }
    }
    {
        let cluster = cluster.clone();
        background
            .push(supervisor.spawn_restarting("cluster membership", move || cluster.clone().run()));
    }
    {
        let inbox = inbox.clone();
        background
            .push(supervisor.spawn_restarting("inbox pickup", move || inbox.clone().run_pickup()));
    }
    let takeover = Arc::new(Takeover {
        cluster: cluster.clone(),
        router: router.clone(),
        delivery: delivery.clone(),
        workflows: workflows.cloned(),
        seen: std::sync::Mutex::new(None),
    });
    let first = Some(ownership);
    let slot = Arc::new(tokio::sync::Mutex::new(first));
    background.push(supervisor.spawn_restarting("partition takeover", move || {
        let takeover = takeover.clone();
        let slot = slot.clone();
        async move {
            let rx = slot.lock().await.take();
            let mut rx = match rx {
                Some(rx) => rx,
                None => takeover.cluster.subscribe(),
            };
            loop {
                let now: Ownership = rx.borrow_and_update().clone();
                takeover.apply(&now).await;
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }));
}

/// What a gained partition's work is handed to.
struct Takeover {
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    delivery: Delivery,
    workflows: Option<Arc<Engine>>,
    /// The ownership last acted on.
    seen: std::sync::Mutex<Option<Ownership>>,
}

impl Takeover {
    async fn apply(&self, now: &Ownership) {
        let before = self.seen.lock().ok().and_then(|s| s.clone());
        let gained: Vec<u32> = now
            .iter()
            .filter(|(p, epoch)| before.as_ref().and_then(|b| b.get(p)) != Some(epoch))
            .map(|(p, _)| *p)
            .collect();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(now.clone());
        }
        if gained.is_empty() {
            return;
        }
        let partitions = self.cluster.partitions();
        for p in &gained {
            self.router.invalidate_partition(*p, partitions);
        }
        let unassigned = gained.contains(&0);
        match self
            .cluster
            .store()
            .outbox_pending_in(&gained, unassigned)
            .await
        {
            Ok(rows) => {
                if !rows.is_empty() {
                    tracing::info!(
                        message = "Sending the pending replies of gained partitions.",
                        count = rows.len()
                    );
                }
                self.delivery.enqueue_parted(rows);
            }
            Err(error) => {
                tracing::warn!(message = "Cannot read the pending replies of gained partitions; they are sent at the next gain.", %error);
            }
        }
        if let Some(engine) = &self.workflows {
            match engine.resume_partitions(&gained, unassigned).await {
                Ok(0) => {}
                Ok(runs) => tracing::info!(
                    message = "Resumed the workflow runs of gained partitions.",
                    runs
                ),
                Err(error) => {
                    tracing::warn!(message = "Cannot resume the workflow runs of gained partitions.", %error);
                }
            }
        }
    }
}

/// Multi-instance mode: the leader leases of this instance (`None` on a single instance).
pub(super) fn leadership(config: &Config, store: &SharedStore) -> Option<Leadership> {
    if !config.cluster.enabled {
        return None;
    }
    let cluster = store.clone().cluster_store()?;
    Some(Leadership::new(
        cluster,
        config.cluster.instance_id(),
        config.cluster.lease_ttl.get(),
        config.cluster.renew_every(),
    ))
}

/// The scheduled work that runs once in the cluster, on the holder of `singleton:scheduler`:
/// the pairing expiry every `every`, and the store's pruning while held.
pub(super) fn scheduler(
    supervisor: &Arc<Supervisor>,
    leadership: Leadership,
    shutdown: watch::Receiver<bool>,
    access: Arc<crate::access::Access>,
    every: Duration,
) -> JoinHandle<()> {
    supervisor.spawn_restarting("scheduler", move || {
        let leadership = leadership.clone();
        let shutdown = shutdown.clone();
        let access = access.clone();
        async move {
            leadership
                .run(SCHEDULER_LEASE, shutdown, |guard| {
                    let access = access.clone();
                    let store = leadership.store().clone();
                    async move {
                        store.set_pruning(true);
                        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tick.tick().await;
                        loop {
                            tokio::select! {
                                _ = tick.tick() => access.expire().await,
                                () = guard.lost() => break,
                            }
                        }
                        store.set_pruning(false);
                    }
                })
                .await;
        }
    })
}
