//! Durations as the configuration writes them: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` or a
//! whole number of seconds ([`HumanDuration`], [`parse_duration`]), and back
//! ([`format_duration`]).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as `"250ms"`, `"30s"`, `"5m"`, `"2h"` or a whole number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration itself.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// What a duration looks like, for error messages.
pub const DURATION_FORMS: &str =
    "a duration such as \"250ms\", \"30s\", \"5m\", \"2h\" or a whole number of seconds";

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; expected {DURATION_FORMS}"))?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`; use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_millis(n.saturating_mul(unit_ms)))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_FORMS)
            }

            fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<Self::Value, E> {
                Ok(HumanDuration(Duration::from_secs(secs)))
            }

            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                u64::try_from(secs)
                    .map(|s| HumanDuration(Duration::from_secs(s)))
                    .map_err(|_| {
                        E::custom(format!("`{secs}` is negative; expected {DURATION_FORMS}"))
                    })
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `d` in the largest unit that writes it exactly: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
