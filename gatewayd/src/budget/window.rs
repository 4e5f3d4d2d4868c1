//! The arithmetic of the budget windows: the UTC calendar day of the token budgets, the sliding
//! 60 seconds of the turn budget, and how a reset time is told to a user.

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;
/// The sliding window of `user_turns_per_minute`.
pub const MINUTE_MS: i64 = 60_000;

/// The start (00:00 UTC) of the UTC day that holds `now_ms`.
pub fn day_start(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(DAY_MS)
}

/// The next 00:00 UTC after `now_ms`, when the day's token budgets reset.
pub fn next_midnight(now_ms: i64) -> i64 {
    day_start(now_ms).saturating_add(DAY_MS)
}

/// The earliest time a turn is counted in the sliding minute that ends at `now_ms`: a turn at
/// `t` counts while `now_ms - t < 60 s`.
pub fn minute_start(now_ms: i64) -> i64 {
    now_ms - MINUTE_MS + 1
}

/// When another turn is allowed, if `limit` turns in the sliding minute are used up: `times` are
/// the turns at or after [`minute_start`], oldest first. With `count >= limit` turns in the
/// window, the window has room again once the `(count - limit + 1)`-th oldest leaves it.
pub fn turns_reset_at(times: &[i64], limit: u64, now_ms: i64) -> Option<i64> {
    let start = minute_start(now_ms);
    let inside: Vec<i64> = times.iter().copied().filter(|t| *t >= start).collect();
    let count = u64::try_from(inside.len()).unwrap_or(u64::MAX);
    if count < limit {
        return None;
    }
    let leaving = usize::try_from(count - limit).unwrap_or(usize::MAX);
    inside.get(leaving).map(|t| t.saturating_add(MINUTE_MS))
}

/// How long until `at_ms`, for a person: `45 s`, `12 min`, `3 h 12 min` (rounded up, so "in
/// 1 s" is never said of a time already past).
pub fn until(now_ms: i64, at_ms: i64) -> String {
    let secs = (at_ms.saturating_sub(now_ms).max(0) + 999) / 1000;
    if secs < 60 {
        return format!("{} s", secs.max(1));
    }
    let mins = (secs + 59) / 60;
    if mins < 60 {
        return format!("{mins} min");
    }
    let (h, m) = (mins / 60, mins % 60);
    if m == 0 {
        format!("{h} h")
    } else {
        format!("{h} h {m} min")
    }
}

/// `at_ms` as a UTC time of day, `HH:MM:SS`.
pub fn clock(at_ms: i64) -> String {
    let secs = at_ms.rem_euclid(DAY_MS) / 1000;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-03 21:47:30.250 UTC.
    const T: i64 = 1_796_334_450_250;

    #[test]
    fn the_day_is_the_utc_calendar_day() {
        assert_eq!(clock(day_start(T)), "00:00:00");
        assert_eq!(T - day_start(T), (21 * 3600 + 47 * 60 + 30) * 1000 + 250);
        assert_eq!(next_midnight(T) - day_start(T), DAY_MS);
        // Midnight itself starts a new day.
        assert_eq!(day_start(day_start(T)), day_start(T));
        assert_eq!(next_midnight(day_start(T)), day_start(T) + DAY_MS);
        assert_eq!(day_start(day_start(T) - 1), day_start(T) - DAY_MS);
        assert_eq!(clock(T), "21:47:30");
    }

    #[test]
    fn the_turn_window_slides_over_sixty_seconds() {
        let times = [T - 59_000, T - 30_000, T - 1_000];
        // Room left: no reset.
        assert_eq!(turns_reset_at(&times, 4, T), None);
        // Full at 3: room again when the oldest leaves the window.
        assert_eq!(turns_reset_at(&times, 3, T), Some(T + 1_000));
        // Over the limit (a lowered override): room when enough of them leave.
        assert_eq!(turns_reset_at(&times, 2, T), Some(T + 30_000));
        assert_eq!(turns_reset_at(&times, 1, T), Some(T + 59_000));
        // A turn exactly 60 s old no longer counts; one 59.999 s old does.
        assert_eq!(turns_reset_at(&[T - 60_000], 1, T), None);
        assert_eq!(turns_reset_at(&[T - 59_999], 1, T), Some(T + 1));
        assert_eq!(minute_start(T), T - 59_999);
        // Once the window has passed the same turns allow another.
        assert_eq!(turns_reset_at(&times, 3, T + 1_000), None);
    }

    #[test]
    fn the_wait_is_said_rounded_up() {
        assert_eq!(until(T, T), "1 s");
        assert_eq!(until(T, T + 1), "1 s");
        assert_eq!(until(T, T + 45_000), "45 s");
        assert_eq!(until(T, T + 60_000), "1 min");
        assert_eq!(until(T, T + 61_000), "2 min");
        assert_eq!(until(T, T + 3_600_000), "1 h");
        assert_eq!(until(T, T + (3 * 60 + 12) * 60_000), "3 h 12 min");
        assert_eq!(until(T, T - 5_000), "1 s");
    }
}
