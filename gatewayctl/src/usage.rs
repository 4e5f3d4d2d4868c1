//! `gatewayctl usage`: LLM tokens per user over a period (the current UTC day unless `--since`
//! says otherwise), most tokens first, with the day's global use against the budgets.

use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::output::{Format, Out, Table, now_ms};

/// `usage` in JSON: one object per user.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UserUsage {
    user_id: i64,
    prompt_tokens: u64,
    completion_tokens: u64,
    turns: u64,
    estimated: bool,
}

/// A period back from now: a whole number and a unit, `s`, `m`, `h`, `d` or `w` (`7d`, `12h`).
pub fn parse_since(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a period; write e.g. 7d, 12h or 30m"))?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => {
            return Err(format!(
                "`{s}` has no unit; write e.g. 7d, 12h, 30m, 90s or 2w"
            ));
        }
    };
    n.checked_mul(unit_ms)
        .filter(|ms| i64::try_from(*ms).is_ok())
        .ok_or_else(|| format!("`{s}` is too long a period"))
}

fn limit(value: Option<u64>) -> String {
    value.map_or_else(|| "no limit".to_owned(), |n| n.to_string())
}

/// Runs `usage`.
pub async fn run(
    mut api: Api,
    format: Format,
    user: Option<i64>,
    since_ms: Option<u64>,
) -> anyhow::Result<()> {
    let out = Out;
    let now = now_ms();
    let since = match since_ms {
        Some(back) => now.saturating_sub(i64::try_from(back).unwrap_or(i64::MAX)),
        // The current UTC day.
        None => now - now.rem_euclid(86_400_000),
    };
    let r = api
        .client
        .list_usage(pb::ListUsageRequest {
            user_id: user,
            since_ms: since,
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let users: Vec<UserUsage> = r
        .users
        .iter()
        .map(|u| UserUsage {
            user_id: u.user_id,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            turns: u.turns,
            estimated: u.estimated,
        })
        .collect();
    if format == Format::Json {
        return out.json(&users);
    }
    let mut t = Table::new(&[
        "USER",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
        "TURNS",
        "ESTIMATED",
    ]);
    for u in &users {
        t.row(vec![
            u.user_id.to_string(),
            u.prompt_tokens.to_string(),
            u.completion_tokens.to_string(),
            u.prompt_tokens
                .saturating_add(u.completion_tokens)
                .to_string(),
            u.turns.to_string(),
            if u.estimated { "yes" } else { "no" }.to_owned(),
        ]);
    }
    if t.is_empty() {
        out.line("no usage in this period")?;
    } else {
        out.table(&t)?;
    }
    out.line(format!(
        "today (UTC): {} tokens of the global budget ({}); per user: {} tokens/day, {} turns/minute",
        r.global_tokens_today,
        limit(r.global_tokens_per_day),
        limit(r.user_tokens_per_day),
        limit(r.user_turns_per_minute),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_with_their_unit() {
        assert_eq!(parse_since("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_since("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_since("30m"), Ok(30 * 60_000));
        assert_eq!(parse_since("90s"), Ok(90_000));
        assert_eq!(parse_since("2w"), Ok(14 * 86_400_000));
        assert!(parse_since("7").expect_err("no unit").contains("no unit"));
        assert!(parse_since("d").is_err());
        assert!(parse_since("7y").is_err());
        assert!(parse_since("99999999999999999w").is_err());
    }
}
