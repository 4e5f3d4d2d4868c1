//! How gatewayctl prints: a tiny table formatter that fits every table into 80 columns
//! (long cells are cut with "…"), human-readable times ("12s ago", or a UTC timestamp), and
//! JSON documents serialized from gatewayctl's own serde structs. Everything goes through
//! [`Out`], so a closed pipe (`gatewayctl … | head`) ends the command quietly instead of
//! panicking.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Width every table fits in.
pub const WIDTH: usize = 80;

/// Space between two columns.
const GAP: &str = "  ";

/// Narrowest a column is squeezed to (its cells then show a few characters and "…").
const MIN_COLUMN: usize = 4;

/// `--output`: human tables or one JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    // Tables and lines for people, fitting 80 columns.
    Table,
    // One JSON document per command (JSON lines for `events`); see gatewayctl/README.md.
    Json,
}

/// Standard output. Writes fail with an `io::Error` instead of panicking.
pub struct Out;

impl Out {
    /// Prints one line.
    pub fn line(&self, line: impl AsRef<str>) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(line.as_ref().as_bytes())?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
        Ok(())
    }

    /// Prints `value` as one pretty JSON document.
    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        self.line(serde_json::to_string_pretty(value)?)
    }

    /// Prints `value` as one compact JSON line (for streams).
    pub fn json_line<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        self.line(serde_json::to_string(value)?)
    }

    /// Prints `label` and `value` as one field of a detail view, e.g. `chat        room-1`:
    /// the value starts at column 14 and long values wrap to 80 columns, indented alike.
    pub fn field(&self, label: &str, value: impl AsRef<str>) -> anyhow::Result<()> {
        const INDENT: usize = 13;
        let lines = wrap(value.as_ref(), WIDTH - INDENT);
        for (i, line) in lines.iter().enumerate() {
            let label = if i == 0 { label } else { "" };
            self.line(format!("{label:<INDENT$}{line}").trim_end())?;
        }
        Ok(())
    }

    /// Prints a table.
    pub fn table(&self, table: &Table) -> anyhow::Result<()> {
        for line in table.render(WIDTH) {
            self.line(line)?;
        }
        Ok(())
    }
}

/// A table: a header and rows of cells, rendered with two spaces between columns.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    wrap_last: bool,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            wrap_last: false,
        }
    }

    /// Wraps the last column (free text such as a transcript) onto more lines instead of
    /// cutting it.
    pub fn wrap_last(mut self) -> Self {
        self.wrap_last = true;
        self
    }

    /// Adds a row; missing cells are empty, extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| clean(&c)).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The lines of the table, each at most `width` columns wide. The widest columns give
    /// way first; their cells are cut with "…".
    pub fn render(&self, width: usize) -> Vec<String> {
        let n = self.header.len();
        if n == 0 {
            return Vec::new();
        }
        let mut widths: Vec<usize> = (0..n)
            .map(|i| {
                std::iter::once(&self.header[i])
                    .chain(self.rows.iter().map(|r| &r[i]))
                    .map(|c| text_width(c))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let total = |w: &[usize]| w.iter().sum::<usize>() + GAP.len() * (n - 1);
        while total(&widths) > width {
            let Some((widest, &w)) = widths.iter().enumerate().max_by_key(|(_, w)| **w) else {
                break;
            };
            if w <= MIN_COLUMN {
                break;
            }
            widths[widest] -= 1;
        }
        let mut lines = Vec::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let last = if self.wrap_last {
                wrap(&row[n - 1], widths[n - 1])
            } else {
                vec![row[n - 1].clone()]
            };
            for (k, tail) in last.iter().enumerate() {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    let cell = match (i == n - 1, k) {
                        (true, _) => tail,
                        (false, 0) => cell,
                        (false, _) => "",
                    };
                    if i > 0 {
                        line.push_str(GAP);
                    }
                    let cell = truncate(cell, widths[i]);
                    let pad = widths[i].saturating_sub(text_width(&cell));
                    line.push_str(&cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                lines.push(line.trim_end().to_owned());
            }
        }
        lines
    }
}

/// Wraps free text at spaces into lines of at most `width` columns, keeping its own line
/// breaks; a word longer than a line is cut. Empty text is one empty line.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let paragraph = clean(paragraph);
        let mut line = String::new();
        for mut word in paragraph.split(' ').filter(|w| !w.is_empty()) {
            while text_width(word) > width {
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                }
                let (head, tail) = word.split_at(cut_at(word, width));
                lines.push(head.to_owned());
                word = tail;
            }
            let used = text_width(&line);
            if used > 0 && used + 1 + text_width(word) > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() || lines.is_empty() || paragraph.trim().is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// The byte index where `s` reaches `width` columns (at least one character).
fn cut_at(s: &str, width: usize) -> usize {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += char_width(c);
        if used > width {
            return if i == 0 { c.len_utf8() } else { i };
        }
    }
    s.len()
}

/// Replaces control characters (newlines, tabs) with spaces so a cell stays on one line.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Cuts `s` to at most `width` columns, ending with "…" when something was cut.
pub fn truncate(s: &str, width: usize) -> String {
    if text_width(s) <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = char_width(c);
        if used + w > width - 1 {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// Columns `s` takes on a terminal.
pub fn text_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// Columns one character takes: 0 for combining marks and joiners, 2 for East Asian wide
/// characters and emoji, 1 otherwise. A small approximation of Unicode's East Asian Width,
/// enough to keep chat text in a table aligned.
fn char_width(c: char) -> usize {
    match u32::from(c) {
        0x0300..=0x036F | 0x200B..=0x200F | 0x20D0..=0x20FF | 0xFE00..=0xFE0F => 0,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A time for a table: "12s ago", "5m ago", "3h ago" within a day, "in 4s" within an hour
/// ahead, else a UTC timestamp; "-" for 0 (never).
pub fn ago(at_ms: i64, now_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".to_owned();
    }
    let secs = (now_ms - at_ms) / 1000;
    match secs {
        s if (0..60).contains(&s) => format!("{s}s ago"),
        s if (60..3600).contains(&s) => format!("{}m ago", s / 60),
        s if (3600..86_400).contains(&s) => format!("{}h ago", s / 3600),
        s if (-3600..0).contains(&s) => format!("in {}", duration(s.unsigned_abs())),
        _ => utc(at_ms, false),
    }
}

/// A number of seconds as "3s", "4m 5s", "2h 3m" or "5d 1h".
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A UTC timestamp: "2025-06-01 12:00:00Z", or with `rfc3339` "2025-06-01T12:00:00.123Z".
pub fn utc(at_ms: i64, rfc3339: bool) -> String {
    let secs = at_ms.div_euclid(1000);
    let millis = at_ms.rem_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    if rfc3339 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}Z")
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `Some(ms)` for a set time, `None` for 0 (the proto's "not set").
pub fn time(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

/// `Some(s)` for a non-empty string, `None` for "" (the proto's "not set").
pub fn text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_that_fits_is_aligned_and_untouched() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["1".into(), "alice".into()]);
        t.row(vec!["200".into(), "bob".into()]);
        assert_eq!(t.render(80), ["ID   NAME", "1    alice", "200  bob"]);
    }

    #[test]
    fn a_wide_table_is_cut_to_the_width_with_an_ellipsis() {
        let mut t = Table::new(&["ID", "CHAT", "TEXT"]);
        let long = "x".repeat(300);
        t.row(vec!["7".into(), "chat-1".into(), long.clone()]);
        t.row(vec!["8".into(), "c".repeat(100), "short".into()]);
        let lines = t.render(80);
        for line in &lines {
            assert!(text_width(line) <= 80, "{line:?} is {}", text_width(line));
        }
        assert!(lines[1].ends_with('…'), "{}", lines[1]);
        assert!(lines[1].starts_with("7   chat-1"), "{}", lines[1]);
        assert!(lines[2].contains("cccc…"), "{}", lines[2]);
        assert!(lines[2].ends_with("short"), "{}", lines[2]);
    }

    #[test]
    fn many_wide_columns_still_fit() {
        let header = ["A", "B", "C", "D", "E", "F", "G", "H"];
        let mut t = Table::new(&header);
        t.row(header.iter().map(|_| "y".repeat(40)).collect());
        for line in t.render(80) {
            assert!(text_width(&line) <= 80, "{line:?}");
        }
    }

    #[test]
    fn a_wrapped_last_column_continues_under_itself() {
        let mut t = Table::new(&["WHO", "TEXT"]).wrap_last();
        t.row(vec!["user".into(), "word ".repeat(30)]);
        let lines = t.render(40);
        assert!(lines.len() > 3, "{lines:?}");
        assert!(lines.iter().all(|l| text_width(l) <= 40), "{lines:?}");
        assert!(lines[1].starts_with("user  word"), "{lines:?}");
        assert!(lines[2].starts_with("      word"), "{lines:?}");
        assert_eq!(lines.concat().matches("word").count(), 30);
    }

    #[test]
    fn cells_stay_on_one_line_and_wide_characters_count_double() {
        let mut t = Table::new(&["TEXT"]);
        t.row(vec!["two\nlines\tand a tab".into()]);
        assert_eq!(t.render(80)[1], "two lines and a tab");
        assert_eq!(text_width("日本語"), 6);
        assert_eq!(text_width("e\u{301}"), 1);
        assert_eq!(truncate("日本語テキスト", 7), "日本語…");
        assert!(text_width(&truncate("😀😀😀😀😀", 6)) <= 6);
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello!", 5), "hell…");
    }

    #[test]
    fn free_text_wraps_at_spaces_and_keeps_its_line_breaks() {
        assert_eq!(wrap("one two three four", 9), ["one two", "three", "four"]);
        assert_eq!(wrap("first\nsecond", 80), ["first", "second"]);
        assert_eq!(wrap("", 80), [""]);
        let long = "x".repeat(25);
        let lines = wrap(&format!("a {long} b"), 10);
        assert!(lines.iter().all(|l| text_width(l) <= 10), "{lines:?}");
        assert_eq!(lines.concat().replace(' ', ""), format!("a{long}b"));
    }

    #[test]
    fn times_read_like_a_person_would_say_them() {
        let now = 1_750_000_000_000;
        assert_eq!(ago(now - 12_000, now), "12s ago");
        assert_eq!(ago(now - 5 * 60_000, now), "5m ago");
        assert_eq!(ago(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(ago(now + 4_000, now), "in 4s");
        assert_eq!(ago(0, now), "-");
        assert_eq!(ago(86_400_000, now), "1970-01-02 00:00:00Z");
        assert_eq!(utc(1_750_000_000_123, true), "2025-06-15T15:06:40.123Z");
        assert_eq!(utc(951_782_400_000, false), "2000-02-29 00:00:00Z");
        assert_eq!(duration(3), "3s");
        assert_eq!(duration(3_725), "1h 2m");
        assert_eq!(duration(90_000), "1d 1h");
    }
}
