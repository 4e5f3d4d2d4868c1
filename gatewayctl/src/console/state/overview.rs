//! The Overview tab: the latest GetOverview, a minute or two of traffic samples for the
//! sparklines, and the recent errors the event stream reported. It has no keys of its own.

use std::collections::VecDeque;

use super::data::Overview;

/// Overview samples kept for the sparklines (one a second).
pub const SAMPLES: usize = 120;
/// Recent errors kept on the Overview tab.
pub const RECENT_ERRORS: usize = 50;

/// The Overview tab.
#[derive(Debug, Clone, Default)]
pub struct OverviewTab {
    pub overview: Option<Overview>,
    /// Rates in tenths of a message per second, oldest first.
    pub rate_in: VecDeque<u64>,
    pub rate_out: VecDeque<u64>,
    /// (at_ms, text), newest first.
    pub errors: VecDeque<(i64, String)>,
    pub now_ms: i64,
}

impl OverviewTab {
    /// Takes one overview: the latest figures and one more sample of each rate.
    pub fn sample(&mut self, o: Overview) {
        for (samples, rate) in [
            (&mut self.rate_in, o.rate_in),
            (&mut self.rate_out, o.rate_out),
        ] {
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            // Rates are never negative; tenths keep a slow trickle visible.
            samples.push_back((rate.max(0.0) * 10.0).round() as u64);
        }
        self.overview = Some(o);
    }

    /// Keeps an error line from the event stream, newest first.
    pub fn record_error(&mut self, at_ms: i64, error: String) {
        self.errors.push_front((at_ms, error));
        self.errors.truncate(RECENT_ERRORS);
    }
}
