//! Prometheus metrics at `GET /metrics`: counters and histograms recorded where things happen
//! (through the `metrics` crate), gauges read from the core when scraped.
//!
//! Series: `gateway_messages_in_total{channel}`, `gateway_messages_out_total{channel}`,
//! `gateway_delivery_failures_total{channel}`, `gateway_dead_lettered_total{channel}`,
//! `gateway_rate_limit_waits_total{channel}`, `gateway_tool_calls_total{tool,outcome}`,
//! `gateway_turn_seconds` (histogram), and the gauges
//! `gateway_outbox_pending`, `gateway_inbox_pending`, `gateway_dead_letters`,
//! `gateway_sessions_resident`. The budgets (`budget`) add `gateway_llm_tokens_total{kind}`
//! (`kind` is `prompt` or `completion`; each committed agent turn's tokens, reported or
//! estimated) and `gateway_budget_refusals_total` (agent turns refused for a budget).
//!
//! The recorder keeps every histogram sample in a buffer until it is drained into the histogram's
//! buckets. A scrape drains them, but most deployments are never scraped, so a background thread
//! (`metrics-upkeep`) drains them every [`UPKEEP_INTERVAL`]: memory stays flat with or without a
//! Prometheus scraper.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::session::router::Router;
use crate::store::SharedStore;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the upkeep thread drains buffered histogram samples.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Upkeep passes run so far (by every upkeep thread of the process).
static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// Installs the process-wide recorder once, with its upkeep thread; later calls reuse it.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .upkeep_timeout(UPKEEP_INTERVAL)
                .set_buckets_for_metric(
                    Matcher::Full("gateway_turn_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    spawn_upkeep(h.clone(), UPKEEP_INTERVAL);
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(message = "Metrics recorder not installed.", error = %e);
                    None
                }
            }
        })
        .as_ref()
}

/// Starts a thread that runs the recorder's upkeep (draining histogram samples into their
/// buckets) every `every`, for the life of the process. A thread rather than a task: the recorder
/// is process-wide and outlives any one tokio runtime.
fn spawn_upkeep(handle: PrometheusHandle, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
                UPKEEPS.fetch_add(1, Ordering::Relaxed);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "Metrics upkeep thread not started; histogram samples are drained only by scrapes.");
    }
}

/// Upkeep passes run so far.
pub fn upkeep_runs() -> u64 {
    UPKEEPS.load(Ordering::Relaxed)
}

/// Renders the exposition text, reading the gauges from the core first.
pub async fn render(store: &SharedStore, router: &Router) -> Option<String> {
    let handle = handle()?;
    if let Ok((inbox, outbox, dead)) = store.counts().await {
        metrics::gauge!("gateway_inbox_pending").set(inbox as f64);
        metrics::gauge!("gateway_outbox_pending").set(outbox as f64);
        metrics::gauge!("gateway_dead_letters").set(dead as f64);
    }
    metrics::gauge!("gateway_sessions_resident").set(router.resident_count() as f64);
    Some(handle.render())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn upkeep_thread_runs_on_its_interval() {
        // A recorder of its own (not installed globally), with a short upkeep interval.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let before = upkeep_runs();
        spawn_upkeep(handle.clone(), Duration::from_millis(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        while upkeep_runs() < before + 2 {
            assert!(Instant::now() < deadline, "no upkeep pass within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn handle_installs_once() {
        let a = handle().map(|h| h as *const PrometheusHandle);
        let b = handle().map(|h| h as *const PrometheusHandle);
        assert!(a.is_some(), "recorder installed");
        assert_eq!(a, b, "the same handle on every call");
    }
}
