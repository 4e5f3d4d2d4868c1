//! Startup, supervision and shutdown: builds every part from the configuration, replays what a
//! previous run left unfinished, serves, and on a signal stops in the order that loses nothing.
//!
//! Start: open the store, build identity, agent, delivery and the router, bind the listener
//! (a port in use is a one-line error naming the key), re-send pending outbox rows, replay
//! pending inbox rows, then serve and print the address. Stop: refuse new input, let session
//! workers finish what they hold (up to a grace period), let delivery lanes finish their
//! in-flight sends, then close the store. Whatever is unfinished stays pending for the next run.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio::sync::watch;

use crate::agent::{Agent, Echo, Provider, llm::OpenAi};
use crate::channels::ChannelSender;
use crate::channels::http::HttpSender;
use crate::channels::webchat::WebChat;
use crate::config::{Config, ProviderKind};
use crate::delivery::{Delivery, RetryPolicy};
use crate::events::EventBus;
use crate::identity::Identity;
use crate::inbox::Inbox;
use crate::session::Context;
use crate::session::router::Router;
use crate::store::SharedStore;
use crate::store::sqlite::SqliteStore;

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

/// Runs the gateway until `shutdown` resolves. `config_path` is only used in messages.
pub async fn run(
    config: Config,
    config_path: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db_path = config.database_path();
    let store: SharedStore = Arc::new(
        SqliteStore::open(&db_path)
            .with_context(|| format!("cannot open the database {}", db_path.display()))?,
    );
    let events = EventBus::new(4096);
    let identity = Arc::new(Identity::new(store.clone(), events.clone()));
    let agent = Arc::new(Agent::new(
        provider(&config)?,
        config.agent.system_prompt.clone(),
        config.agent.max_attempts,
        config.agent.retry_backoff.get(),
    ));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut senders: Vec<Arc<dyn ChannelSender>> = Vec::new();
    let webchat = config.channels.webchat.enabled.then(|| {
        WebChat::new(
            config.channels.webchat.max_message_bytes,
            closing_rx.clone(),
        )
    });
    if let Some(w) = &webchat {
        senders.push(w.clone());
    }
    if config.channels.http.enabled {
        let url = config
            .channels
            .http
            .callback_url
            .clone()
            .ok_or_else(|| anyhow!("channels.http.callback_url is required"))?;
        senders.push(Arc::new(
            HttpSender::new(url, config.channels.http.timeout.get()).map_err(|e| anyhow!(e))?,
        ));
    }
    let delivery = Delivery::new(
        store.clone(),
        events.clone(),
        senders,
        RetryPolicy {
            max_attempts: config.delivery.max_attempts,
            base: config.delivery.retry_backoff.get(),
            max: config.delivery.max_backoff.get(),
        },
    );
    if let Some(w) = &webchat {
        w.attach_delivery(delivery.clone());
    }
    let ctx = Arc::new(Context {
        store: store.clone(),
        identity,
        agent,
        delivery: delivery.clone(),
        events: events.clone(),
        history_window: config.gateway.history_window,
    });
    let router = Router::new(
        ctx,
        config.gateway.max_sessions,
        config.gateway.mailbox_capacity,
    );
    let inbox = Arc::new(Inbox::new(store.clone(), router.clone(), events.clone()));

    let addr: SocketAddr = config
        .http
        .listen
        .parse()
        .with_context(|| format!("http.listen `{}` is not an address", config.http.listen))?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(anyhow!(
                "http.listen: {addr} is already in use; stop the other process or set another [http] listen in {config_path}"
            ));
        }
        Err(e) => return Err(anyhow!("http.listen: cannot listen on {addr}: {e}")),
    };
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let pending_out = store.outbox_pending().await?;
    let resent = pending_out.len();
    delivery.enqueue(pending_out);
    let replayed = inbox.replay().await?;
    if resent + replayed > 0 {
        tracing::info!(
            message = "Resumed unfinished work from the previous run.",
            replayed_inbound = replayed,
            resent_outbound = resent
        );
    }

    let sweeper = {
        let router = router.clone();
        let idle = config.gateway.idle_timeout.get();
        let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                router.sweep(idle);
            }
        })
    };

    let ready = Arc::new(AtomicBool::new(false));
    let app = crate::http::router(crate::http::AppState {
        inbox,
        store: store.clone(),
        webchat: webchat.clone(),
        http_channel_max_bytes: config
            .channels
            .http
            .enabled
            .then_some(config.channels.http.max_message_bytes),
        ready: ready.clone(),
    });
    ready.store(true, Ordering::Release);
    tracing::info!(message = "gatewayd started.", http = %local, provider = config.agent.provider_name(), data_dir = %config.gateway.data_dir.display());
    println!("http listening on {local}");
    if webchat.is_some() {
        println!("WebChat: open http://{local}/");
    }
    if config.channels.http.enabled {
        println!("HTTP channel: POST http://{local}/channels/http/messages");
    }

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut serve_stop = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = serve_stop.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });
    let _ = stop_rx.wait_for(|s| *s).await;
    tracing::info!(message = "Shutting down: no new messages are accepted.");
    ready.store(false, Ordering::Release);
    let _ = closing_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(message = "HTTP server ended with an error.", error = %e),
        Ok(Err(e)) => tracing::warn!(message = "HTTP server task failed.", error = %e),
        Err(_) => tracing::warn!(message = "Open HTTP connections did not close in time."),
    }
    sweeper.abort();
    router.shutdown(config.gateway.shutdown_grace.get()).await;
    delivery.shutdown(Duration::from_secs(5)).await;
    let (inbox_pending, outbox_pending, dead) = store.counts().await.unwrap_or((0, 0, 0));
    store.close().await;
    tracing::info!(
        message = "gatewayd stopped.",
        inbox_pending,
        outbox_pending,
        dead_letters = dead
    );
    Ok(())
}
