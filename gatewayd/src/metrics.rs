//! Prometheus metrics at `GET /metrics`: counters and histograms recorded where things happen
//! (through the `metrics` crate), gauges read from the core when scraped.
//!
//! Series: `gateway_messages_in_total{channel}`, `gateway_messages_out_total{channel}`,
//! `gateway_delivery_failures_total{channel}`, `gateway_dead_lettered_total{channel}`,
//! `gateway_rate_limit_waits_total{channel}`, `gateway_tool_calls_total{tool,outcome}`,
//! `gateway_turn_seconds` (histogram), and the gauges
//! `gateway_outbox_pending`, `gateway_inbox_pending`, `gateway_dead_letters`,
//! `gateway_sessions_resident`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::session::router::Router;
use crate::store::SharedStore;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls reuse it.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("gateway_turn_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(message = "Metrics recorder not installed.", error = %e);
                    None
                }
            }
        })
        .as_ref()
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
