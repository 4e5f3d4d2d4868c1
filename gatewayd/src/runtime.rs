//! Startup, supervision and shutdown: builds every part from the configuration, replays what a
//! previous run left unfinished, serves, and on a signal stops in the order that loses nothing.
//!
//! [`Gateway::start`]: open the store, build identity, agent, delivery and the router, bind the
//! listener (a port in use is a one-line error naming the key), re-send pending outbox rows,
//! replay pending inbox rows, then serve in the background. [`Gateway::shutdown`]: refuse new
//! input, let session workers finish what they hold (up to `gateway.shutdown_grace`), let
//! delivery lanes finish their in-flight sends, then close the store. Whatever is unfinished
//! stays pending for the next run. The handle's fields are the core's services, which the
//! binary's signal handling and the tests drive the same way.
//!
//! Every long-lived task is spawned through the [`Supervisor`]: the periodic loops (session
//! sweeper, channel prober, rate-limit upkeep) and the Telegram and Discord listeners are
//! restarted after a panic; the HTTP server and the admin API cannot be, so a panic or an
//! error end of either marks the gateway not ready, as does a panic of the store's writer
//! thread (watched through a probe). Session workers and delivery lanes restart themselves in
//! place and report to the same supervisor.
//!
//! In multi-instance mode (`[cluster] enabled`) start replays nothing globally: it joins the
//! cluster (one membership round), and each partition this instance gains (then and later) has
//! its resident sessions marked stale, its pending replies queued, its unfinished workflow runs
//! resumed and its pending inbox rows picked up. Shutdown first hands every partition over
//! ([`Cluster::leave`]), so the survivors take over at once.

mod cluster_mode;
mod services;

use cluster_mode::{cluster_relay, leadership, scheduler, start_cluster};
pub use services::builtin_tools;
use services::{LateRunner, WorkflowServices};
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::tools::{
    CurrentTime, HttpGet, MessageTarget, OutboxSink, RunWorkflow, SendMessage, SendScope, Tool,
    ToolCallContext, ToolRegistry, WorkflowRunner, check_scope,
};
use crate::agent::{Agent, Echo, Provider, llm::OpenAi};
use crate::channels::adapter::{BuildEnv, HealthReporter, ListenerCtx, WebhookCtx};
use crate::channels::registry;
use crate::cluster::leader::{Leadership, SCHEDULER_LEASE};
use crate::cluster::{Cluster, Ownership};
use crate::config::{Config, ProviderKind};
use crate::delivery::rate_limit::RateSettings;
use crate::delivery::{Delivery, RetryPolicy};
use crate::events::EventBus;
use crate::identity::Identity;
use crate::inbox::Inbox;
use crate::message::ChannelKind;
use crate::outbox::Outbox;
use crate::send::ChannelSender;
use crate::session::Context;
use crate::session::router::Router;
use crate::store::RunOrigin;
use crate::store::SharedStore;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::supervise::{ADMIN_API, FaultInjector, HTTP_SERVER, STORE_WRITER, Supervisor};
use crate::workflow::run::{Engine, NodeServices};

/// How often idle per-chat rate-limit buckets are forgotten.
const RETAIN_EVERY: Duration = Duration::from_secs(60);
/// How long shutdown waits for the channel listeners (and the scheduler) to stop.
const LISTENERS_GRACE: Duration = Duration::from_secs(5);

/// Builds the provider the configuration names.
pub fn provider(config: &Config) -> anyhow::Result<Arc<dyn Provider>> {
    Ok(match config.agent.provider {
        ProviderKind::Echo => Arc::new(Echo),
        ProviderKind::Openai => {
            let key = config.agent_api_key().map_err(|e| anyhow!(e))?;
            Arc::new(
                OpenAi::new(
                    &config.agent.base_url,
                    &config.agent.model,
                    key,
                    config.agent.timeout.get(),
                    config.agent.max_concurrent,
                )
                .map_err(|e| anyhow!(e))?,
            )
        }
    })
}

/// A running gateway: its services, and the tasks that serve them.
pub struct Gateway {
    /// Who may talk to the agent: pairing, approvals, blocks.
    pub access: Arc<crate::access::Access>,
    /// The durable state.
    pub store: SharedStore,
    /// The events bus.
    pub events: EventBus,
    /// Identities.
    pub identity: Arc<Identity>,
    /// Sessions.
    pub router: Arc<Router>,
    /// Outbound delivery, channel health, rate limits, dead letters.
    pub delivery: Delivery,
    /// The inbox.
    pub inbox: Arc<Inbox>,
    /// Where the HTTP listener is bound.
    pub http_addr: SocketAddr,
    /// Where the admin API listens, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The channels that are enabled.
    pub channels: Vec<ChannelKind>,
    /// Where each channel is reached, for the operator (printed at start).
    pub announce: Vec<String>,
    /// When it started.
    pub started_at: Instant,
    /// What panicked or failed, and whether the gateway is ready.
    pub supervisor: Arc<Supervisor>,
    /// Multi-instance mode: membership, partitions and their fences.
    pub cluster: Option<Arc<Cluster>>,
    config: Config,
    ready: Arc<AtomicBool>,
    closing: watch::Sender<bool>,
    stop_server: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    listeners: Vec<JoinHandle<()>>,
}

/// Opens the store `[store] backend` names. The writer probe and its fault injection are
/// SQLite's (its single writer thread); PostgreSQL has no such thread.
async fn open_store(config: &Config, supervisor: &Supervisor) -> anyhow::Result<SharedStore> {
    if config.store.backend == "postgres" {
        let url = config
            .store_url()
            .map_err(anyhow::Error::msg)?
            .context("store.url_env or store.url_file must name the database URL")?;
        let parsed = crate::store::postgres::parse_url(&url)?;
        let target = crate::store::postgres::describe(&parsed);
        let store = PostgresStore::open_config(
            parsed,
            config.store_retention(),
            config.store.max_connections,
        )
        .await
        .with_context(|| format!("cannot open the PostgreSQL database {target}"))?;
        return Ok(Arc::new(store));
    }
    let db_path = config.database_path();
    let sqlite = Arc::new(
        SqliteStore::open_with(&db_path, config.store_retention())
            .with_context(|| format!("cannot open the database {}", db_path.display()))?,
    );
    let watched = Arc::downgrade(&sqlite);
    supervisor.add_probe(
        STORE_WRITER,
        Box::new(move || watched.upgrade().and_then(|s| s.writer_failure())),
    );
    let target = Arc::downgrade(&sqlite);
    supervisor.injector().add_trigger(
        STORE_WRITER,
        Box::new(move || {
            if let Some(s) = target.upgrade() {
                s.panic_writer();
            }
        }),
    );
    Ok(sqlite)
}

impl Gateway {
    /// Starts everything; returns once the listener is bound and unfinished work is resumed.
    /// `config_path` is only used in messages.
    pub async fn start(config: Config, config_path: &str) -> anyhow::Result<Self> {
        let supervisor = Supervisor::new();
        let store = open_store(&config, &supervisor).await?;
        let leadership = leadership(&config, &store);
        if let Some(l) = &leadership {
            // Pruning is scheduled work: only the scheduler's holder prunes.
            l.store().set_pruning(false);
        }
        // Record metrics from the first event on, not from the first scrape.
        crate::metrics::handle();
        let events = EventBus::new(4096);
        let cluster = if config.cluster.enabled {
            let shared = store
                .clone()
                .cluster_store()
                .context("cluster.enabled needs store.backend = \"postgres\"")?;
            // Without `cluster.advertise_url`, the bound listener's address, once bound.
            let settings = crate::cluster::Settings {
                instance_id: config.cluster.instance_id(),
                partitions: config.cluster.partitions,
                lease_ttl: config.cluster.lease_ttl.get(),
                renew_interval: config.cluster.renew_every(),
            };
            if config.cluster.renew_every() < config.cluster.renew_interval.get() {
                tracing::warn!(
                    message = "cluster.renew_interval is more than half of cluster.lease_ttl; renewing at half the lease instead.",
                    renew_interval_ms =
                        u64::try_from(config.cluster.renew_interval.get().as_millis())
                            .unwrap_or(u64::MAX),
                    lease_ttl_ms = u64::try_from(config.cluster.lease_ttl.get().as_millis())
                        .unwrap_or(u64::MAX),
                );
            }
            Some(Cluster::new(
                &settings,
                shared,
                config.cluster.advertise_url.clone(),
            ))
        } else {
            None
        };
        // A link made on another instance would not drop this one's cached resolutions.
        let identity = Arc::new(match &cluster {
            Some(_) => Identity::uncached(store.clone(), events.clone()),
            None => Identity::with_cache_size(
                store.clone(),
                events.clone(),
                config.gateway.identity_cache_size,
            ),
        });
        let (closing, closing_rx) = watch::channel(false);
        let socket_relay = cluster_relay(&config, &store)?;
        if let Some(relay) = &socket_relay {
            relay.start().await;
        }
        let adapters = registry::build(
            &config,
            &BuildEnv {
                closing: closing_rx.clone(),
                socket_relay: socket_relay
                    .clone()
                    .map(|r| r as Arc<dyn crate::cluster::relay::SocketRelay>),
            },
        )?;
        let senders: Vec<(Arc<dyn ChannelSender>, RateSettings)> = adapters
            .iter()
            .map(|a| (a.sender(), registry::rate_settings(&config, a.kind())))
            .collect();
        let channels: Vec<ChannelKind> = senders.iter().map(|(s, _)| s.kind()).collect();
        let delivery = Delivery::supervised(
            store.clone(),
            events.clone(),
            senders,
            RetryPolicy {
                max_attempts: config.delivery.max_attempts,
                base: config.delivery.retry_backoff.get(),
                max: config.delivery.max_backoff.get(),
            },
            supervisor.clone(),
        );
        delivery.set_inbound_kept(config.store.dedupe_window.get());
        if config.cluster.enabled
            && let Some(cluster) = store.clone().cluster_store()
        {
            delivery.share_rate_limits(&cluster);
        }
        let mut outbox = Outbox::new(store.clone(), delivery.clone());
        if let Some(c) = &cluster {
            delivery.set_cluster(c.clone());
            outbox = outbox.with_cluster(c.clone());
        }
        let outbox = Arc::new(outbox);
        let runner = Arc::new(LateRunner::default());
        let tools = builtin_tools(&config, outbox.clone(), runner.clone())?;
        let agent = Arc::new(
            Agent::new(
                provider(&config)?,
                config.agent.system_prompt.clone(),
                config.agent.max_attempts,
                config.agent.retry_backoff.get(),
            )
            .with_tools(tools.clone(), config.agent.max_tool_steps),
        );
        let workflows = config.workflows.enabled.then(|| {
            let services = Arc::new(WorkflowServices {
                agent: agent.clone(),
                tools: tools.clone(),
                outbox: outbox.clone(),
                channels: channels.iter().copied().collect(),
                scope: config.tools.send_message.scope,
            });
            Engine::load(
                config.workflows.dir.clone(),
                store.clone(),
                events.clone(),
                services,
            )
        });
        if let (Some(engine), Some(c)) = (&workflows, &cluster) {
            engine.set_cluster(c.clone());
        }
        if let (Some(engine), Ok(mut slot)) = (&workflows, runner.engine.write()) {
            *slot = Some(Arc::downgrade(engine));
        }
        let access = Arc::new(crate::access::Access::new(
            &config,
            crate::channels::registry::access(&config),
            store.clone(),
            delivery.clone(),
        ));
        for warning in crate::channels::registry::access_warnings(&config) {
            tracing::warn!(message = "Access is open on a public listener.", detail = %warning);
        }
        let ctx = Arc::new(Context {
            store: store.clone(),
            identity: identity.clone(),
            agent,
            workflows: workflows.clone(),
            delivery: delivery.clone(),
            events: events.clone(),
            history_window: config.gateway.history_window,
            supervisor: supervisor.clone(),
            budgets: Arc::new(crate::budget::Budgets::new(config.budgets, store.clone())),
            access: access.clone(),
            cluster: cluster.clone(),
        });
        let router = Router::new(
            ctx,
            config.gateway.max_sessions,
            config.gateway.mailbox_capacity,
        );
        let mut inbox = Inbox::new(store.clone(), router.clone(), events.clone());
        if let Some(c) = &cluster {
            inbox = inbox.with_cluster(c.clone());
        }
        let inbox = Arc::new(inbox);

        let addr: SocketAddr =
            config.http.listen.parse().with_context(|| {
                format!("http.listen `{}` is not an address", config.http.listen)
            })?;
        let listener = bind(addr, "http.listen", "[http] listen", config_path).await?;
        let http_addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let admin_listener = if config.admin.enabled {
            let addr: SocketAddr = config.admin.listen.parse().with_context(|| {
                format!("admin.listen `{}` is not an address", config.admin.listen)
            })?;
            Some(bind(addr, "admin.listen", "[admin] listen", config_path).await?)
        } else {
            None
        };
        let admin_token = config.admin_token().map_err(|e| anyhow!(e))?;

        let mut background = Vec::new();
        let (resent, replayed) = match &cluster {
            // A clustered instance takes up only the work of the partitions it gains.
            Some(c) => {
                if config.cluster.advertise_url.is_none() {
                    c.set_advertise_url(format!("http://{http_addr}"));
                }
                start_cluster(
                    c,
                    &supervisor,
                    &inbox,
                    &router,
                    &delivery,
                    workflows.as_ref(),
                    &mut background,
                )
                .await;
                (0, 0)
            }
            None => {
                let pending_out = store.outbox_pending().await?;
                let resent = pending_out.len();
                delivery.enqueue(pending_out);
                (resent, inbox.replay().await?)
            }
        };
        if let Some(engine) = workflows.as_ref().filter(|_| cluster.is_none()) {
            let resumed = engine.resume_unfinished().await?;
            if resumed > 0 {
                tracing::info!(
                    message = "Resumed unfinished workflow runs.",
                    runs = resumed
                );
            }
        }
        if resent + replayed > 0 {
            tracing::info!(
                message = "Resumed unfinished work from the previous run.",
                replayed_inbound = replayed,
                resent_outbound = resent
            );
        }

        // Tasks under a leader lease: awaited at shutdown, so their leases are released.
        let mut listeners = Vec::new();
        let (stop_server, stop_rx) = watch::channel(false);
        {
            let router = router.clone();
            let idle = config.gateway.idle_timeout.get();
            let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
            background.push(every_tick(
                &supervisor,
                "session sweeper",
                every,
                move || {
                    router.sweep(idle);
                    async {}
                },
            ));
        }
        {
            let delivery = delivery.clone();
            background.push(every_tick(
                &supervisor,
                "channel prober",
                config.delivery.probe_interval.get(),
                move || {
                    let delivery = delivery.clone();
                    async move { delivery.probe_down().await }
                },
            ));
        }
        background.push(tokio::spawn(inbox.clone().recover_stranded()));
        {
            let access = access.clone();
            let every = (config.access.pairing_ttl.get() / 4)
                .clamp(Duration::from_millis(250), Duration::from_secs(60));
            match &leadership {
                None => background.push(every_tick(
                    &supervisor,
                    "pairing expiry",
                    every,
                    move || {
                        let access = access.clone();
                        async move { access.expire().await }
                    },
                )),
                Some(l) => listeners.push(scheduler(
                    &supervisor,
                    l.clone(),
                    stop_server.subscribe(),
                    access,
                    every,
                )),
            }
        }
        #[cfg(unix)]
        {
            let access = access.clone();
            background.push(supervisor.spawn_restarting("allow-file reload", move || {
                let access = access.clone();
                async move { reload_on_sighup(&access).await }
            }));
        }
        {
            let delivery = delivery.clone();
            background.push(every_tick(
                &supervisor,
                "rate-limit upkeep",
                RETAIN_EVERY,
                move || {
                    delivery.retain_recent();
                    async {}
                },
            ));
        }

        let ready = Arc::new(AtomicBool::new(false));
        let hooks = WebhookCtx {
            inbox: inbox.clone(),
            body_timeout: config.http.body_timeout.get(),
            receipts: crate::channels::adapter::Receipts::new(store.clone()),
            cursors: crate::channels::adapter::Cursors::new(store.clone()),
            inbound_kept: config.store.dedupe_window.get(),
        };
        let app = crate::http::router(
            crate::http::AppState {
                store: store.clone(),
                ready: ready.clone(),
                supervisor: supervisor.clone(),
                router: router.clone(),
            },
            adapters
                .iter()
                .flat_map(|a| a.routes(&hooks))
                .chain(
                    socket_relay
                        .iter()
                        .map(|r| crate::channels::adapter::Route {
                            path: crate::cluster::relay::RELAY_PATH.to_owned(),
                            handler: r.handler(),
                        }),
                )
                .collect(),
            registry::disabled_routes(&config),
        )?;
        let http_client = reqwest::Client::builder()
            .build()
            .context("cannot build the HTTP client")?;
        for adapter in &adapters {
            let ctx = ListenerCtx {
                inbox: inbox.clone(),
                health: HealthReporter::new(adapter.kind(), delivery.clone()),
                shutdown: stop_server.subscribe(),
                http: http_client.clone(),
                cursors: hooks.cursors.clone(),
                inbound_kept: hooks.inbound_kept,
                leadership: leadership.clone(),
            };
            listeners.push(adapter.start(ctx, &supervisor));
        }
        let announce: Vec<String> = adapters
            .iter()
            .flat_map(|a| a.announce(http_addr))
            .collect();
        let limits = crate::http::ServeLimits {
            header_timeout: config.http.header_timeout.get(),
            max_connections: config.http.max_connections,
        };
        let server = supervisor.spawn_critical(
            HTTP_SERVER,
            crate::http::serve(listener, app, limits, stop_rx),
        );
        let admin_addr =
            match admin_listener {
                Some(l) => {
                    let addr = l.local_addr().context("cannot read the admin address")?;
                    let state = crate::admin::AdminState {
                        store: store.clone(),
                        events: events.clone(),
                        identity: identity.clone(),
                        router: router.clone(),
                        delivery: delivery.clone(),
                        started_at: Instant::now(),
                        max_sessions: config.gateway.max_sessions,
                        provider: config.agent.provider_name(),
                        workflows: workflows.clone(),
                        supervisor: supervisor.clone(),
                        access: access.clone(),
                        cluster: crate::admin::ClusterInfo::new(
                            &config.cluster,
                            cluster.as_ref().map_or_else(
                                || config.cluster.instance_id(),
                                |c| c.instance_id().to_owned(),
                            ),
                        ),
                    };
                    let stop = stop_server.subscribe();
                    background.push(supervisor.spawn_critical(
                        ADMIN_API,
                        crate::admin::serve(l, state, admin_token, stop),
                    ));
                    Some(addr)
                }
                None => None,
            };
        ready.store(true, Ordering::Release);
        tracing::info!(message = "gatewayd started.", http = %http_addr, provider = config.agent.provider_name(), data_dir = %config.gateway.data_dir.display());
        Ok(Self {
            access,
            store,
            events,
            identity,
            router,
            delivery,
            inbox,
            http_addr,
            admin_addr,
            channels,
            announce,
            started_at: Instant::now(),
            supervisor,
            cluster,
            config,
            ready,
            closing,
            stop_server,
            server,
            background,
            listeners,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The test-only fault injector: makes a session worker, a delivery lane or a named part
    /// panic. Nothing outside the process can reach it.
    #[doc(hidden)]
    pub fn faults(&self) -> &FaultInjector {
        self.supervisor.injector()
    }

    /// Stops in the order that loses nothing; see the module docs.
    pub async fn shutdown(self) {
        tracing::info!(message = "Shutting down: no new messages are accepted.");
        self.ready.store(false, Ordering::Release);
        if let Some(cluster) = &self.cluster {
            // Hand every partition over at once; a turn still running here is then fenced
            // at its commit and answered by the new owner.
            cluster.leave().await;
        }
        let _ = self.closing.send(true);
        let _ = self.stop_server.send(true);
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(message = "HTTP server task failed.", error = %e),
            Err(_) => tracing::warn!(message = "Open HTTP connections did not close in time."),
        }
        // Listeners stop on the signal; under a lease, their lease is released once stopped.
        let listeners = futures_util::future::join_all(self.listeners);
        if tokio::time::timeout(LISTENERS_GRACE, listeners)
            .await
            .is_err()
        {
            tracing::warn!(message = "Channel listeners did not stop in time.");
        }
        for task in &self.background {
            task.abort();
        }
        self.router
            .shutdown(self.config.gateway.shutdown_grace.get())
            .await;
        self.delivery.shutdown(Duration::from_secs(5)).await;
        let (inbox_pending, outbox_pending, dead) = self.store.counts().await.unwrap_or((0, 0, 0));
        self.store.close().await;
        tracing::info!(
            message = "gatewayd stopped.",
            inbox_pending,
            outbox_pending,
            dead_letters = dead
        );
    }
}

/// Binds `addr`; a port in use is one line naming the key to change.
async fn bind(
    addr: SocketAddr,
    key: &str,
    section: &str,
    config_path: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow!(
            "{key}: {addr} is already in use; stop the other process or set another {section} in {config_path}"
        )),
        Err(e) => Err(anyhow!("{key}: cannot listen on {addr}: {e}")),
    }
}

/// Runs `f` every `period` until aborted, as the restartable part `component`: a panic in `f`
/// is logged and counted, and the ticking goes on.
fn every_tick<F, Fut>(
    supervisor: &Arc<Supervisor>,
    component: &'static str,
    period: Duration,
    f: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    supervisor.spawn_restarting(component, move || {
        let f = f.clone();
        async move {
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                f().await;
            }
        }
    })
}

/// Runs the gateway until `shutdown` resolves, printing where it listens.
pub async fn run(
    config: Config,
    config_path: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let gateway = Gateway::start(config, config_path).await?;
    let local = gateway.http_addr;
    println!("http listening on {local}");
    for line in &gateway.announce {
        println!("{line}");
    }
    if let Some(admin) = gateway.admin_addr {
        println!("admin listening on {admin}");
    }
    println!("gatewayd ready");
    shutdown.await;
    gateway.shutdown().await;
    Ok(())
}

/// Reads the allow files again on every SIGHUP, until the gateway stops.
#[cfg(unix)]
async fn reload_on_sighup(access: &crate::access::Access) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(message = "Cannot listen for SIGHUP; allow files are read only at start.", %error);
            std::future::pending::<()>().await;
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!(message = "SIGHUP received; reloading the allow files.");
        access.reload_allow_files();
    }
}
