//! Outbound rate limits: GCRA buckets (governor) per channel and per chat, and the pauses a
//! platform asks for with `429 Retry-After`.
//!
//! Before every send a lane calls [`ChannelLimits::acquire`], which waits, in order, for any
//! pause on the channel, any pause on the chat, the channel's bucket and the chat's bucket.
//! Waiting is cheap (a timer per waiting lane) and never drops anything. The state of every
//! bucket — tokens left, sends waiting, times throttled, paused-until — is readable at any time
//! for the admin API and the console. Idle per-chat buckets are forgotten by
//! [`ChannelLimits::retain_recent`], which the runtime calls periodically.
//!
//! In a cluster ([`ChannelLimits::share`]) the buckets are the database's instead of governor's,
//! so every instance spends from the same ones: a send takes a token from the channel's row
//! (`<channel>`) and the chat's row (`<channel>:<chat>`) of `rate_buckets` together, or from
//! neither, at the database server's clock ([`ClusterStore::rate_take`]); when refused it waits
//! exactly as long as the store says and asks again. A `Retry-After` pause
//! ([`ChannelLimits::pause_for`]) is written to that row too, so every instance waits it out.
//! The emission interval is `ceil(1000 / per_second)` whole ms and the tolerance `interval *
//! (burst - 1)`, the same bucket governor keeps (a burst of `burst`, then one send per interval);
//! rounding the interval up means a shared bucket never allows more than its settings, at most a
//! little less (30/s is one send per 34 ms), and allows at most 1000 sends a second. The state
//! shown for a shared bucket is what this instance's last take saw, refilled since.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter, clock, state};

use crate::message::ChannelKind;
use crate::store::cluster::{ClusterStore, RateBucket, RateTake};

/// Rates for one channel; `None` means no limit at that level.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateSettings {
    /// Sends per second across the whole channel.
    pub per_second: Option<f64>,
    /// Sends allowed at once across the channel.
    pub burst: Option<u32>,
    /// Sends per second to one chat.
    pub per_chat_per_second: Option<f64>,
    /// Sends allowed at once to one chat.
    pub per_chat_burst: Option<u32>,
}

impl RateSettings {
    /// Settings from the file over the defaults: keys the file sets win.
    pub fn merged(self, over: &RateSettings) -> Self {
        Self {
            per_second: over.per_second.or(self.per_second),
            burst: over.burst.or(self.burst),
            per_chat_per_second: over.per_chat_per_second.or(self.per_chat_per_second),
            per_chat_burst: over.per_chat_burst.or(self.per_chat_burst),
        }
    }

    /// Checks the values; errors name the key under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        for (key, rate) in [
            ("per_second", self.per_second),
            ("per_chat_per_second", self.per_chat_per_second),
        ] {
            if let Some(r) = rate
                && !(r.is_finite() && r > 0.0 && r <= 1_000_000.0)
            {
                errors.push((
                    format!("{prefix}.{key}"),
                    "must be more than 0 and at most 1000000".to_owned(),
                ));
            }
        }
        for (key, burst) in [
            ("burst", self.burst),
            ("per_chat_burst", self.per_chat_burst),
        ] {
            if burst == Some(0) {
                errors.push((format!("{prefix}.{key}"), "must be at least 1".to_owned()));
            }
        }
        errors
    }
}

/// Longest period between two sends (0.001/s) and largest burst a bucket is built with, so
/// that governor's nanosecond arithmetic cannot overflow whatever the settings say.
const MAX_PERIOD: Duration = Duration::from_secs(1000);
const MAX_BURST: u32 = 1_000_000;

fn quota(per_second: f64, burst: u32) -> Option<Quota> {
    if !(per_second.is_finite() && per_second > 0.0) {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / per_second)
        .unwrap_or(MAX_PERIOD)
        .min(MAX_PERIOD);
    let burst = NonZeroU32::new(burst.clamp(1, MAX_BURST))?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

type Direct = RateLimiter<
    state::NotKeyed,
    state::InMemoryState,
    clock::DefaultClock,
    StateInformationMiddleware,
>;
type Keyed = RateLimiter<
    String,
    state::keyed::DefaultKeyedStateStore<String>,
    clock::DefaultClock,
    StateInformationMiddleware,
>;

/// Longest and shortest waits after the shared store failed to answer a take.
const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(2);

/// A shared bucket's GCRA in whole ms: `(interval, tolerance)`, or `None` without a limit.
fn shared_gcra(per_second: Option<f64>, burst: Option<u32>) -> Option<(i64, i64)> {
    let per_second = per_second.filter(|r| r.is_finite() && *r > 0.0)?;
    let max_ms = MAX_PERIOD.as_secs_f64() * 1000.0;
    // The tiny subtraction keeps an exact quotient (1000 / 0.8 = 1250) from rounding up on a
    // last-bit error; the clamp keeps the cast in range.
    let interval = (1000.0 / per_second - 1e-9).ceil().clamp(1.0, max_ms);
    #[allow(clippy::cast_possible_truncation)]
    let interval = interval as i64;
    let burst = i64::from(burst.unwrap_or(1).clamp(1, MAX_BURST));
    Some((interval, interval.saturating_mul(burst - 1)))
}

/// Tokens a shared bucket has left right after a take moved its `tat` to `tat` at `now`.
fn tokens_left(now: i64, tat: i64, (interval, tolerance): (i64, i64)) -> u32 {
    let left = (now + tolerance - tat).div_euclid(interval.max(1)) + 1;
    u32::try_from(left.max(0)).unwrap_or(u32::MAX)
}

/// The database's buckets, once [`ChannelLimits::share`] is called.
struct Shared {
    store: Arc<dyn ClusterStore>,
    channel: Option<(i64, i64)>,
    chat: Option<(i64, i64)>,
}

/// A bucket as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketState {
    /// The chat, or `None` for the channel-wide bucket.
    pub chat_id: Option<String>,
    /// Sends per second.
    pub per_second: f64,
    /// Burst size.
    pub burst: u32,
    /// Sends that could go right now (estimated from the last send and the refill since).
    pub tokens: f64,
    /// Sends currently waiting on this bucket.
    pub queued: u64,
    /// Times a send had to wait on this bucket.
    pub throttled: u64,
    /// When a platform-requested pause ends, if one is in force.
    pub paused_until: Option<Instant>,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    remaining: u32,
    at: Option<Instant>,
    queued: u64,
    throttled: u64,
    paused_until: Option<Instant>,
}

/// Most hot per-chat buckets kept in the stats view.
const MAX_CHAT_STATS: usize = 10_000;

/// The limits of one channel.
pub struct ChannelLimits {
    channel: ChannelKind,
    settings: RateSettings,
    global: Option<Direct>,
    per_chat: Option<Keyed>,
    channel_stats: Mutex<Stats>,
    chat_stats: Mutex<HashMap<String, Stats>>,
    throttled_total: AtomicU64,
    shared: OnceLock<Shared>,
}

impl ChannelLimits {
    /// Limits of `channel` with `settings`.
    pub fn new(channel: ChannelKind, settings: RateSettings) -> Self {
        let global = settings
            .per_second
            .and_then(|r| quota(r, settings.burst.unwrap_or(1)))
            .map(|q| RateLimiter::direct(q).with_middleware::<StateInformationMiddleware>());
        let per_chat = settings
            .per_chat_per_second
            .and_then(|r| quota(r, settings.per_chat_burst.unwrap_or(1)))
            .map(|q| RateLimiter::keyed(q).with_middleware::<StateInformationMiddleware>());
        Self {
            channel,
            settings,
            global,
            per_chat,
            channel_stats: Mutex::new(Stats::default()),
            chat_stats: Mutex::new(HashMap::new()),
            throttled_total: AtomicU64::new(0),
            shared: OnceLock::new(),
        }
    }

    /// Keeps this channel's buckets and pauses in `store`'s `rate_buckets`, shared by every
    /// instance of the cluster, instead of in this process. Only the first call counts.
    pub fn share(&self, store: Arc<dyn ClusterStore>) {
        let shared = Shared {
            store,
            channel: shared_gcra(self.settings.per_second, self.settings.burst),
            chat: shared_gcra(
                self.settings.per_chat_per_second,
                self.settings.per_chat_burst,
            ),
        };
        if self.shared.set(shared).is_err() {
            tracing::debug!(message = "The rate limits are already shared.", channel = %self.channel);
        }
    }

    /// Whether the buckets are the cluster's ([`ChannelLimits::share`]).
    pub fn is_shared(&self) -> bool {
        self.shared.get().is_some()
    }

    /// The shared row of the channel's bucket.
    fn channel_key(&self) -> String {
        self.channel.as_str().to_owned()
    }

    /// The shared row of a chat's bucket.
    fn chat_key(&self, chat_id: &str) -> String {
        format!("{}:{chat_id}", self.channel.as_str())
    }

    /// Pauses the chat (or with `None` the whole channel) for `pause`, as a platform's
    /// `Retry-After` asks: here at once, and in a cluster also in the shared row, so that every
    /// instance waits it out.
    pub async fn pause_for(&self, chat_id: Option<&str>, pause: Duration) {
        let until = Instant::now() + pause;
        match chat_id {
            Some(chat) => self.pause_chat(chat, until),
            None => self.pause_channel(until),
        }
        let Some(shared) = self.shared.get() else {
            return;
        };
        let key = chat_id.map_or_else(|| self.channel_key(), |c| self.chat_key(c));
        let ms = i64::try_from(pause.as_millis()).unwrap_or(i64::MAX);
        if let Err(error) = shared.store.rate_pause(&key, ms).await {
            tracing::warn!(message = "Cannot share a platform's pause; only this instance waits it out.", channel = %self.channel, %error);
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> RateSettings {
        self.settings
    }

    /// Pauses the whole channel until `until` (a global 429).
    pub fn pause_channel(&self, until: Instant) {
        if let Ok(mut s) = self.channel_stats.lock() {
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    /// Pauses one chat until `until` (a 429 for that chat).
    pub fn pause_chat(&self, chat_id: &str, until: Instant) {
        if let Ok(mut m) = self.chat_stats.lock() {
            let s = m.entry(chat_id.to_owned()).or_default();
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        }
    }

    fn pause_of(&self, chat_id: &str) -> Option<Instant> {
        let now = Instant::now();
        let channel = self.channel_stats.lock().ok().and_then(|s| s.paused_until);
        let chat = self
            .chat_stats
            .lock()
            .ok()
            .and_then(|m| m.get(chat_id).and_then(|s| s.paused_until));
        [channel, chat]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .max()
    }

    /// Waits until a send to `chat_id` is allowed, and takes its token.
    pub async fn acquire(&self, chat_id: &str) {
        let mut waited = false;
        self.with_chat(chat_id, |s| s.queued += 1);
        if let Ok(mut s) = self.channel_stats.lock() {
            s.queued += 1;
        }
        while let Some(until) = self.pause_of(chat_id) {
            self.note_wait(&mut waited);
            tokio::time::sleep_until(until.into()).await;
        }
        if let Some(shared) = self.shared.get() {
            self.acquire_shared(shared, chat_id, &mut waited).await;
        } else {
            self.acquire_local(chat_id, &mut waited).await;
        }
        self.with_chat(chat_id, |s| s.queued = s.queued.saturating_sub(1));
        if let Ok(mut s) = self.channel_stats.lock() {
            s.queued = s.queued.saturating_sub(1);
        }
    }

    /// Takes the tokens from the shared buckets, waiting as long as the store says each time
    /// it refuses, and retrying (with a growing wait) while the store does not answer: a send
    /// never goes out without its tokens.
    async fn acquire_shared(&self, shared: &Shared, chat_id: &str, waited: &mut bool) {
        let channel_key = self.channel_key();
        let chat_key = self.chat_key(chat_id);
        let bucket = |key: &str, gcra: Option<(i64, i64)>| {
            let (interval_ms, tolerance_ms) = gcra.unwrap_or((0, 0));
            RateBucket {
                key: key.to_owned(),
                interval_ms,
                tolerance_ms,
            }
        };
        let buckets = [
            bucket(&channel_key, shared.channel),
            bucket(&chat_key, shared.chat),
        ];
        let mut retry = STORE_RETRY_MIN;
        loop {
            match shared.store.rate_take(&buckets).await {
                Ok(RateTake::Granted { at_ms, tats }) => {
                    let now = Instant::now();
                    for (key, tat) in tats {
                        if key == channel_key
                            && let Some(gcra) = shared.channel
                            && let Ok(mut s) = self.channel_stats.lock()
                        {
                            s.remaining = tokens_left(at_ms, tat, gcra);
                            s.at = Some(now);
                        } else if key == chat_key
                            && let Some(gcra) = shared.chat
                        {
                            self.with_chat(chat_id, |s| {
                                s.remaining = tokens_left(at_ms, tat, gcra);
                                s.at = Some(now);
                            });
                        }
                    }
                    return;
                }
                Ok(RateTake::Wait { ms, key, paused }) => {
                    self.note_wait(waited);
                    let wait = Duration::from_millis(u64::try_from(ms).unwrap_or(1).max(1));
                    let until = Instant::now() + wait;
                    let on_channel = key == channel_key;
                    let mark = |s: &mut Stats| {
                        if paused {
                            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
                        } else {
                            s.throttled += 1;
                            s.remaining = 0;
                            s.at = Some(Instant::now());
                        }
                    };
                    if on_channel {
                        if let Ok(mut s) = self.channel_stats.lock() {
                            mark(&mut s);
                        }
                    } else {
                        self.with_chat(chat_id, mark);
                    }
                    tokio::time::sleep(wait).await;
                    retry = STORE_RETRY_MIN;
                }
                Err(error) => {
                    if retry == STORE_RETRY_MIN {
                        tracing::warn!(message = "Cannot take a shared rate-limit token; the send waits until the store answers.", channel = %self.channel, %error);
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(STORE_RETRY_MAX);
                }
            }
        }
    }

    /// Takes the tokens from this process's governor buckets.
    async fn acquire_local(&self, chat_id: &str, waited: &mut bool) {
        if let Some(global) = &self.global {
            let snapshot = match global.check() {
                Ok(s) => s,
                Err(_) => {
                    self.note_wait(waited);
                    if let Ok(mut s) = self.channel_stats.lock() {
                        s.throttled += 1;
                    }
                    global.until_ready().await
                }
            };
            if let Ok(mut s) = self.channel_stats.lock() {
                s.remaining = snapshot.remaining_burst_capacity();
                s.at = Some(Instant::now());
            }
        }
        if let Some(per_chat) = &self.per_chat {
            let key = chat_id.to_owned();
            let snapshot = match per_chat.check_key(&key) {
                Ok(s) => s,
                Err(_) => {
                    self.note_wait(waited);
                    self.with_chat(chat_id, |s| s.throttled += 1);
                    per_chat.until_key_ready(&key).await
                }
            };
            self.with_chat(chat_id, |s| {
                s.remaining = snapshot.remaining_burst_capacity();
                s.at = Some(Instant::now());
            });
        }
    }

    /// Counts a send that has to wait, once per send, when its wait begins (as the buckets do).
    fn note_wait(&self, waited: &mut bool) {
        if !*waited {
            *waited = true;
            self.throttled_total.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("gateway_rate_limit_waits_total", "channel" => self.channel.as_str())
                .increment(1);
        }
    }

    fn with_chat(&self, chat_id: &str, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut m) = self.chat_stats.lock() {
            if m.len() >= MAX_CHAT_STATS && !m.contains_key(chat_id) {
                return;
            }
            f(m.entry(chat_id.to_owned()).or_default());
        }
    }

    /// Times any send on this channel had to wait.
    pub fn throttled_total(&self) -> u64 {
        self.throttled_total.load(Ordering::Relaxed)
    }

    /// The channel bucket (if any) and the `hottest` per-chat buckets, busiest first.
    pub fn buckets(&self, hottest: usize) -> (Option<BucketState>, Vec<BucketState>) {
        let now = Instant::now();
        let view = |chat_id: Option<String>, s: &Stats, per_second: f64, burst: u32| {
            let refill = s.at.map_or(f64::from(burst), |at| {
                now.duration_since(at).as_secs_f64() * per_second
            });
            BucketState {
                chat_id,
                per_second,
                burst,
                tokens: (f64::from(s.remaining) + refill).min(f64::from(burst)),
                queued: s.queued,
                throttled: s.throttled,
                paused_until: s.paused_until.filter(|t| *t > now),
            }
        };
        let channel = self.channel_stats.lock().ok().map(|s| {
            view(
                None,
                &s,
                self.settings.per_second.unwrap_or(0.0),
                self.settings
                    .per_second
                    .map_or(0, |_| self.settings.burst.unwrap_or(1)),
            )
        });
        let channel = channel.filter(|c| c.per_second > 0.0 || c.paused_until.is_some());
        let mut chats: Vec<BucketState> = self
            .chat_stats
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, s)| {
                        view(
                            Some(k.clone()),
                            s,
                            self.settings.per_chat_per_second.unwrap_or(0.0),
                            self.settings
                                .per_chat_per_second
                                .map_or(0, |_| self.settings.per_chat_burst.unwrap_or(1)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        chats.sort_by(|a, b| {
            (b.queued, b.throttled, b.paused_until.is_some())
                .cmp(&(a.queued, a.throttled, a.paused_until.is_some()))
                .then_with(|| a.tokens.total_cmp(&b.tokens))
        });
        chats.truncate(hottest);
        (channel, chats)
    }

    /// Forgets per-chat buckets that are full again and have nothing waiting.
    pub fn retain_recent(&self) {
        if let Some(per_chat) = &self.per_chat {
            per_chat.retain_recent();
        }
        let now = Instant::now();
        let rate = self.settings.per_chat_per_second.unwrap_or(1.0).max(1e-6);
        let burst = f64::from(self.settings.per_chat_burst.unwrap_or(1));
        if let Ok(mut m) = self.chat_stats.lock() {
            m.retain(|_, s| {
                let refilled = s.at.is_none_or(|at| {
                    f64::from(s.remaining) + now.duration_since(at).as_secs_f64() * rate >= burst
                });
                s.queued > 0 || s.paused_until.is_some_and(|t| t > now) || !refilled
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_chat_bucket_spaces_sends_at_its_rate() {
        let limits = ChannelLimits::new(
            ChannelKind::new("http"),
            RateSettings {
                per_second: None,
                burst: None,
                per_chat_per_second: Some(20.0),
                per_chat_burst: Some(2),
            },
        );
        let start = Instant::now();
        for _ in 0..6 {
            limits.acquire("c").await;
        }
        // 2 at once, then 4 more at 50 ms each.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        let (_, chats) = limits.buckets(5);
        assert_eq!(chats[0].chat_id.as_deref(), Some("c"));
        assert!(chats[0].throttled >= 4, "{chats:?}");
        // Another chat is not slowed by this one: its first send never waits.
        limits.acquire("d").await;
        let (_, chats) = limits.buckets(5);
        let d = chats
            .iter()
            .find(|c| c.chat_id.as_deref() == Some("d"))
            .expect("bucket d");
        assert_eq!(d.throttled, 0, "{chats:?}");
    }

    #[tokio::test]
    async fn a_pause_holds_that_chat_only() {
        let limits = ChannelLimits::new(ChannelKind::new("http"), RateSettings::default());
        let until = Instant::now() + Duration::from_millis(1000);
        limits.pause_chat("slow", until);
        let (_, chats) = limits.buckets(10);
        assert!(
            chats.iter().any(|c| c.paused_until == Some(until)),
            "{chats:?}"
        );
        limits.acquire("fast").await;
        assert!(
            Instant::now() < until,
            "another chat does not wait for the pause"
        );
        limits.acquire("slow").await;
        assert!(Instant::now() >= until);
        let (_, chats) = limits.buckets(10);
        assert!(
            chats.iter().all(|c| c.paused_until.is_none()),
            "the pause is over"
        );
    }

    #[test]
    fn settings_merge_and_validate() {
        let base = RateSettings {
            per_chat_per_second: Some(10.0),
            per_chat_burst: Some(10),
            ..RateSettings::default()
        };
        let merged = base.merged(&RateSettings {
            per_second: Some(3.0),
            burst: None,
            per_chat_per_second: None,
            per_chat_burst: Some(0),
        });
        assert_eq!(merged.per_second, Some(3.0));
        assert_eq!(merged.per_chat_per_second, Some(10.0));
        let errors = merged.validate("rate_limits.webchat");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "rate_limits.webchat.per_chat_burst");
    }
}
