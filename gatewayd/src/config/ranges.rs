//! Every numeric key and its range, [`NUMERIC_KEYS`]: what `validate()` checks and README.md
//! lists. Channel adapters declare the keys of their own sections with [`channel_key`].

use std::fmt;
use std::time::Duration;

use super::MAX_IDENTITY_CACHE_SIZE;
use super::{Config, HumanDuration, TranscriptRetention, format_duration, parse_duration};
use crate::delivery::rate_limit::RateSettings;

/// The allowed values of one numeric key, both ends included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// A whole number.
    Int(u64, u64),
    /// A finite number (NaN and infinities are refused).
    Float(f64, f64),
    /// A duration.
    Duration(Duration, Duration),
}

/// One numeric value read from a configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A whole number.
    Int(u64),
    /// A decimal number.
    Float(f64),
    /// A duration.
    Duration(Duration),
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(n) => write!(f, "{n}"),
            Number::Float(x) => write!(f, "{x}"),
            Number::Duration(d) => f.write_str(&format_duration(*d)),
        }
    }
}

impl Range {
    /// The lower and upper end, as written in the README.
    pub fn ends(&self) -> (Number, Number) {
        match *self {
            Range::Int(lo, hi) => (Number::Int(lo), Number::Int(hi)),
            Range::Float(lo, hi) => (Number::Float(lo), Number::Float(hi)),
            Range::Duration(lo, hi) => (Number::Duration(lo), Number::Duration(hi)),
        }
    }

    /// Whether `value` is allowed; the error says the range and the value.
    pub fn check(&self, value: Number) -> Result<(), String> {
        let inside = match (*self, value) {
            (Range::Int(lo, hi), Number::Int(v)) => (lo..=hi).contains(&v),
            (Range::Float(lo, hi), Number::Float(v)) => v.is_finite() && (lo..=hi).contains(&v),
            (Range::Duration(lo, hi), Number::Duration(v)) => (lo..=hi).contains(&v),
            _ => false,
        };
        if inside {
            Ok(())
        } else {
            Err(format!("must be from {self}; got {value}"))
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lo, hi) = self.ends();
        match self {
            Range::Duration(..) => write!(f, "\"{lo}\" to \"{hi}\""),
            _ => write!(f, "{lo} to {hi}"),
        }
    }
}

/// Where a numeric key's value is read from.
#[derive(Clone, Copy)]
enum Reader {
    /// A key with one value in the configuration.
    Config(fn(&Config) -> Option<Number>),
    /// A key of every `[rate_limits.<channel>]` table.
    Rate(fn(&RateSettings) -> Option<Number>),
    /// A key of a `[channels.<name>]` section, read from the section as written (its adapter
    /// deserializes it and reports a wrong type), with the adapter's default.
    Section(Option<Number>),
}

/// A numeric key and its range. `path` writes `*` for a table name of the operator's choice
/// (`rate_limits.*.per_second`).
#[derive(Clone, Copy)]
pub struct NumericKey {
    /// The dotted key path.
    pub path: &'static str,
    /// The values `validate()` accepts.
    pub range: Range,
    reader: Reader,
}

impl fmt::Debug for NumericKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumericKey")
            .field("path", &self.path)
            .field("range", &self.range)
            .finish()
    }
}

impl NumericKey {
    /// The values this key has in `config`, each with its full key path (none for an unset
    /// optional key, one per table for `rate_limits.*`).
    pub fn read(&self, config: &Config) -> Vec<(String, Number)> {
        match self.reader {
            Reader::Config(read) => read(config)
                .map(|v| (self.path.to_owned(), v))
                .into_iter()
                .collect(),
            Reader::Section(_) => section_number(config, self.path, self.range)
                .map(|v| (self.path.to_owned(), v))
                .into_iter()
                .collect(),
            Reader::Rate(read) => {
                let leaf = self.path.rsplit('.').next().unwrap_or(self.path);
                config
                    .rate_limits
                    .iter()
                    .filter_map(|(name, settings)| {
                        read(settings).map(|v| (format!("rate_limits.{name}.{leaf}"), v))
                    })
                    .collect()
            }
        }
    }

    /// The built-in default of this key (for `rate_limits.*`, of every channel in `rates`, the
    /// adapters' defaults).
    pub fn default_values(&self, rates: &[RateSettings]) -> Vec<Number> {
        match self.reader {
            Reader::Config(read) => read(&Config::default()).into_iter().collect(),
            Reader::Section(default) => default.into_iter().collect(),
            Reader::Rate(read) => rates.iter().filter_map(read).collect(),
        }
    }
}

pub const SEC: u64 = 1_000;
pub const MIN: u64 = 60 * SEC;
pub const HOUR: u64 = 60 * MIN;
pub const DAY: u64 = 24 * HOUR;
pub const MIB: u64 = 1024 * 1024;
/// The largest token budget (a day's): far beyond any real one, and well inside the store's
/// `i64` counts.
pub const MAX_BUDGET_TOKENS: u64 = 1_000_000_000_000_000;
/// The largest turn budget (a minute's).
pub const MAX_BUDGET_TURNS: u64 = 1_000_000;

pub const fn ints(lo: u64, hi: u64) -> Range {
    Range::Int(lo, hi)
}

pub const fn millis(lo: u64, hi: u64) -> Range {
    Range::Duration(Duration::from_millis(lo), Duration::from_millis(hi))
}

const fn key(path: &'static str, range: Range, read: fn(&Config) -> Option<Number>) -> NumericKey {
    NumericKey {
        path,
        range,
        reader: Reader::Config(read),
    }
}

/// A numeric key of a channel section, `channels.<name>.<key>`, with its adapter's default
/// (`None` for an optional key without one).
pub const fn channel_key(path: &'static str, range: Range, default: Option<Number>) -> NumericKey {
    NumericKey {
        path,
        range,
        reader: Reader::Section(default),
    }
}

/// The number at `path` (`channels.<name>.<key>`) as written, read the way `range` measures it:
/// a whole number, a decimal, or a duration (`"30s"` or whole seconds). `None` when the key is
/// not set or is not a number of that kind (the adapter's own parse reports that).
fn section_number(config: &Config, path: &str, range: Range) -> Option<Number> {
    let mut keys = path.split('.');
    let (Some("channels"), Some(name), Some(key), None) =
        (keys.next(), keys.next(), keys.next(), keys.next())
    else {
        return None;
    };
    let value = config.channels.get(name)?.get(key)?;
    match (range, value) {
        (Range::Int(..), toml::Value::Integer(n)) => u64::try_from(*n).ok().map(Number::Int),
        (Range::Float(..), toml::Value::Float(x)) => Some(Number::Float(*x)),
        (Range::Float(..), toml::Value::Integer(n)) => Some(Number::Float(*n as f64)),
        (Range::Duration(..), toml::Value::Integer(n)) => u64::try_from(*n)
            .ok()
            .map(|s| Number::Duration(Duration::from_secs(s))),
        (Range::Duration(..), toml::Value::String(s)) => {
            parse_duration(s).ok().map(Number::Duration)
        }
        _ => None,
    }
}

const fn rate(
    path: &'static str,
    range: Range,
    read: fn(&RateSettings) -> Option<Number>,
) -> NumericKey {
    NumericKey {
        path,
        range,
        reader: Reader::Rate(read),
    }
}

fn int(n: impl TryInto<u64>) -> Option<Number> {
    Some(Number::Int(n.try_into().unwrap_or(u64::MAX)))
}

fn dur(d: HumanDuration) -> Option<Number> {
    Some(Number::Duration(d.get()))
}

/// Every numeric key and its range: what `validate()` checks and README.md's Configuration
/// section lists. A new numeric key is one line here (a unit test fails until it is).
pub static NUMERIC_KEYS: &[NumericKey] = &[
    key("gateway.max_sessions", ints(1, 10_000_000), |c| {
        int(c.gateway.max_sessions)
    }),
    key("gateway.idle_timeout", millis(100, 30 * DAY), |c| {
        dur(c.gateway.idle_timeout)
    }),
    key("gateway.history_window", ints(1, 10_000), |c| {
        int(c.gateway.history_window)
    }),
    key("gateway.mailbox_capacity", ints(1, 65_536), |c| {
        int(c.gateway.mailbox_capacity)
    }),
    key(
        "gateway.identity_cache_size",
        ints(1, MAX_IDENTITY_CACHE_SIZE as u64),
        |c| int(c.gateway.identity_cache_size),
    ),
    key("gateway.shutdown_grace", millis(0, HOUR), |c| {
        dur(c.gateway.shutdown_grace)
    }),
    key("http.header_timeout", millis(100, HOUR), |c| {
        dur(c.http.header_timeout)
    }),
    key("http.body_timeout", millis(100, HOUR), |c| {
        dur(c.http.body_timeout)
    }),
    key("http.max_connections", ints(1, 1_000_000), |c| {
        int(c.http.max_connections)
    }),
    key("agent.max_concurrent", ints(1, 10_000), |c| {
        int(c.agent.max_concurrent)
    }),
    key("agent.timeout", millis(100, HOUR), |c| dur(c.agent.timeout)),
    key("agent.max_attempts", ints(1, 100), |c| {
        int(c.agent.max_attempts)
    }),
    key("agent.retry_backoff", millis(0, 10 * MIN), |c| {
        dur(c.agent.retry_backoff)
    }),
    key("agent.max_tool_steps", ints(1, 100), |c| {
        int(c.agent.max_tool_steps)
    }),
    key("delivery.max_attempts", ints(1, 1_000), |c| {
        int(c.delivery.max_attempts)
    }),
    key("delivery.retry_backoff", millis(0, HOUR), |c| {
        dur(c.delivery.retry_backoff)
    }),
    key("delivery.max_backoff", millis(1, DAY), |c| {
        dur(c.delivery.max_backoff)
    }),
    key("delivery.probe_interval", millis(10, DAY), |c| {
        dur(c.delivery.probe_interval)
    }),
    key("tools.http_max_bytes", ints(1, 64 * MIB), |c| {
        int(c.tools.http_max_bytes)
    }),
    key("tools.timeout", millis(10, HOUR), |c| dur(c.tools.timeout)),
    key("store.dedupe_window", millis(MIN, 3650 * DAY), |c| {
        dur(c.store.dedupe_window)
    }),
    key(
        "store.transcript_retention",
        millis(HOUR, 36_500 * DAY),
        |c| match c.store.transcript_retention {
            TranscriptRetention::Forever => None,
            TranscriptRetention::For(d) => Some(Number::Duration(d)),
        },
    ),
    key("store.prune_interval", millis(SEC, DAY), |c| {
        dur(c.store.prune_interval)
    }),
    key("store.max_connections", ints(1, 1_000), |c| {
        int(c.store.max_connections)
    }),
    key("cluster.partitions", ints(1, 4_096), |c| {
        int(c.cluster.partitions)
    }),
    key("cluster.lease_ttl", millis(SEC, MIN), |c| {
        dur(c.cluster.lease_ttl)
    }),
    key("cluster.renew_interval", millis(100, 30 * SEC), |c| {
        dur(c.cluster.renew_interval)
    }),
    key(
        "budgets.user_tokens_per_day",
        ints(1, MAX_BUDGET_TOKENS),
        |c| c.budgets.user_tokens_per_day.and_then(int),
    ),
    key(
        "budgets.user_turns_per_minute",
        ints(1, MAX_BUDGET_TURNS),
        |c| c.budgets.user_turns_per_minute.and_then(int),
    ),
    key(
        "budgets.global_tokens_per_day",
        ints(1, MAX_BUDGET_TOKENS),
        |c| c.budgets.global_tokens_per_day.and_then(int),
    ),
    key("access.pairing_ttl", millis(SEC, 30 * DAY), |c| {
        dur(c.access.pairing_ttl)
    }),
    key("access.max_pending_per_channel", ints(1, 100_000), |c| {
        int(c.access.max_pending_per_channel)
    }),
    rate(
        "rate_limits.*.per_second",
        Range::Float(0.001, 1_000_000.0),
        |r| r.per_second.map(Number::Float),
    ),
    rate("rate_limits.*.burst", ints(1, 1_000_000), |r| {
        r.burst.and_then(int)
    }),
    rate(
        "rate_limits.*.per_chat_per_second",
        Range::Float(0.001, 1_000_000.0),
        |r| r.per_chat_per_second.map(Number::Float),
    ),
    rate("rate_limits.*.per_chat_burst", ints(1, 1_000_000), |r| {
        r.per_chat_burst.and_then(int)
    }),
];
