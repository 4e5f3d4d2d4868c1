//! Splitting a reply into chunks that fit a channel's message limit.
//!
//! A split prefers a paragraph break, then a line break, then a space, and only then cuts
//! between two grapheme clusters; it never cuts inside one (emoji ZWJ sequences, flags,
//! combining marks stay whole). When a cut falls inside a Markdown code fence, the chunk is
//! closed with a fence and the next one reopens it with the same info string, so each chunk
//! renders on its own. Every character of the text lands in exactly one chunk's body, in order;
//! the added fence markers are the only extra text, and the limit counts them.

use unicode_segmentation::UnicodeSegmentation;

pub use crate::send::{Limit, Unit};

/// One chunk: the fence reopened before it, its share of the text, the fence closed after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// A fence reopening a code block cut by the previous split (`"```lang\n"`), or empty.
    pub prefix: String,
    /// This chunk's part of the original text.
    pub body: String,
    /// A fence closing a code block this split cuts (`"\n```"`), or empty.
    pub suffix: String,
}

impl Chunk {
    /// The text to send.
    pub fn text(&self) -> String {
        format!("{}{}{}", self.prefix, self.body, self.suffix)
    }
}

const FENCE: &str = "```";
const CLOSE: &str = "\n```";
/// Longest info string carried into a reopened fence; longer ones reopen as a bare fence.
const MAX_INFO: usize = 16;
/// Room kept free in every chunk of a text with fences, for the markers a split may add.
const FENCE_RESERVE: usize = CLOSE.len() + FENCE.len() + MAX_INFO + 1;

/// Splits `text` into chunks within `limit`; a text that fits is one chunk.
pub fn split(text: &str, limit: Limit) -> Vec<String> {
    split_chunks(text, limit).iter().map(Chunk::text).collect()
}

/// Like [`split`], keeping each chunk's parts apart.
pub fn split_chunks(text: &str, limit: Limit) -> Vec<Chunk> {
    let max = limit.max.max(1);
    if limit.unit.len(text) <= max {
        return vec![Chunk {
            body: text.to_owned(),
            ..Chunk::default()
        }];
    }
    let has_fence = text.contains(FENCE);
    // Very small limits cannot hold fence markers; split plainly then.
    let fences = has_fence && max > FENCE_RESERVE * 2;
    let budget = if fences { max - FENCE_RESERVE } else { max };
    // A grapheme longer than a whole chunk (a pathological ZWJ run) is the one thing that must
    // be cut; it is cut between its characters.
    let graphemes: Vec<&str> = text
        .graphemes(true)
        .flat_map(|g| {
            if limit.unit.len(g) <= budget {
                vec![g]
            } else {
                g.char_indices()
                    .map(|(i, c)| &g[i..i + c.len_utf8()])
                    .collect()
            }
        })
        .collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut open_info: Option<String> = None;
    while start < graphemes.len() {
        let prefix = match &open_info {
            Some(info) => format!("{FENCE}{info}\n"),
            None => String::new(),
        };
        let end = cut(&graphemes, start, budget, limit.unit);
        let body: String = graphemes[start..end].concat();
        let still_open = fence_state_after(&body, open_info.clone());
        let suffix = match (&still_open, end < graphemes.len() && fences) {
            (Some(_), true) => CLOSE.to_owned(),
            _ => String::new(),
        };
        chunks.push(Chunk {
            prefix: if fences { prefix } else { String::new() },
            body,
            suffix,
        });
        open_info = if fences { still_open } else { None };
        start = end;
    }
    chunks
}

/// The end (exclusive grapheme index) of the chunk starting at `start`.
fn cut(graphemes: &[&str], start: usize, budget: usize, unit: Unit) -> usize {
    let mut used = 0;
    let mut end = start;
    while end < graphemes.len() {
        let len = unit.len(graphemes[end]);
        if used + len > budget {
            break;
        }
        used += len;
        end += 1;
    }
    if end == graphemes.len() {
        return end;
    }
    if end == start {
        // A single character wider than the budget (only with a limit of 1 UTF-16 unit).
        return start + 1;
    }
    let window = &graphemes[start..end];
    // Prefer a paragraph break, then a line break, then a space; keep the break in this chunk.
    let after = |pred: &dyn Fn(usize) -> bool| (1..window.len()).rev().find(|&i| pred(i));
    let is_nl = |g: &str| g == "\n" || g == "\r\n";
    let paragraph = after(&|i| is_nl(window[i]) && is_nl(window[i - 1]));
    let line = after(&|i| is_nl(window[i]));
    let space = after(&|i| window[i].chars().all(char::is_whitespace));
    // Do not make a chunk less than a quarter full just to split at a nicer place.
    let min = window.len() / 4;
    for candidate in [paragraph, line, space].into_iter().flatten() {
        if candidate >= min {
            return start + candidate + 1;
        }
    }
    end
}

/// Whether a fence is open after `body`, given the state before it: the open fence's info string.
fn fence_state_after(body: &str, mut open: Option<String>) -> Option<String> {
    for line in body.split('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(FENCE) {
            open = match open {
                Some(_) => None,
                None => {
                    let info = rest.trim();
                    Some(if info.len() <= MAX_INFO && !info.contains('`') {
                        info.to_owned()
                    } else {
                        String::new()
                    })
                }
            };
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chars(max: usize) -> Limit {
        Limit {
            max,
            unit: Unit::Chars,
        }
    }

    fn check_invariants(text: &str, limit: Limit) -> Vec<Chunk> {
        let chunks = split_chunks(text, limit);
        for c in &chunks {
            assert!(
                limit.unit.len(&c.text()) <= limit.max,
                "chunk over {}: {:?}",
                limit.max,
                c.text()
            );
            assert!(!c.body.is_empty(), "empty chunk in {chunks:?}");
        }
        let joined: String = chunks.iter().map(|c| c.body.as_str()).collect();
        assert_eq!(joined, text, "bodies must concatenate back to the text");
        chunks
    }

    /// One row of the table: text, limit, and the expected chunk texts.
    fn check(text: &str, limit: Limit, expected: &[&str]) {
        let chunks = check_invariants(text, limit);
        let got: Vec<String> = chunks.iter().map(Chunk::text).collect();
        assert_eq!(got, expected, "text {text:?}");
    }

    #[test]
    fn table() {
        check("short", chars(10), &["short"]);
        check(
            "para one\n\npara two",
            chars(12),
            &["para one\n\n", "para two"],
        );
        check("line one\nline two", chars(12), &["line one\n", "line two"]);
        check("alpha beta gamma", chars(11), &["alpha beta ", "gamma"]);
        check("abcdefghij", chars(4), &["abcd", "efgh", "ij"]);
        // CJK: one char each, no spaces.
        check("你好世界你好", chars(4), &["你好世界", "你好"]);
        // A family emoji (ZWJ sequence, 7 chars) is never cut.
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        check(
            &format!("ab{family}cd"),
            chars(8),
            &["ab", &format!("{family}c"), "d"],
        );
        // Flags are two regional indicators; combining marks stay with their base.
        check("🇫🇷🇩🇪🇯🇵", chars(4), &["🇫🇷🇩🇪", "🇯🇵"]);
        check(
            "e\u{301}e\u{301}e\u{301}",
            chars(4),
            &["e\u{301}e\u{301}", "e\u{301}"],
        );
    }

    #[test]
    fn telegram_counts_utf16_units() {
        // Each emoji is 2 UTF-16 units: a limit of 4 units holds two of them.
        let limit = Limit {
            max: 4,
            unit: Unit::Utf16,
        };
        check("😀😀😀", limit, &["😀😀", "😀"]);
    }

    #[test]
    fn signal_counts_utf8_bytes_and_keeps_graphemes_whole() {
        // "é" as e + U+0301 is 3 bytes, each emoji 4: a limit of 8 bytes holds two of either,
        // and the 18-byte family emoji is never cut.
        let limit = Limit {
            max: 8,
            unit: Unit::Utf8Bytes,
        };
        check("😀😀😀", limit, &["😀😀", "😀"]);
        check(
            "e\u{301}e\u{301}e\u{301}",
            limit,
            &["e\u{301}e\u{301}", "e\u{301}"],
        );
        let family = "👨\u{200d}👩\u{200d}👧";
        let chunks = check_invariants(
            &format!("ab {family} cd"),
            Limit {
                max: 20,
                unit: Unit::Utf8Bytes,
            },
        );
        assert!(
            chunks.iter().any(|c| c.body.contains(family)),
            "the grapheme stays whole: {chunks:?}"
        );
    }

    #[test]
    fn a_ten_thousand_character_word_is_cut_within_the_limit() {
        let word = "x".repeat(10_000);
        let chunks = check_invariants(&word, chars(2000));
        assert_eq!(chunks.len(), 5);
    }

    #[test]
    fn a_cut_code_fence_is_closed_and_reopened() {
        let code: String = (0..40).map(|i| format!("let x{i} = {i};\n")).collect();
        let text = format!("Here:\n```rust\n{code}```\nDone.");
        let chunks = check_invariants(&text, chars(200));
        assert!(chunks.len() > 2, "{chunks:?}");
        assert!(
            chunks[0].suffix == CLOSE,
            "first chunk closes the fence: {chunks:?}"
        );
        assert_eq!(
            chunks[1].prefix, "```rust\n",
            "next chunk reopens it with its language"
        );
        let last = chunks.last().expect("chunks");
        assert!(last.suffix.is_empty());
        for c in &chunks {
            let fences = c
                .text()
                .lines()
                .filter(|l| l.trim_start().starts_with(FENCE))
                .count();
            assert_eq!(
                fences % 2,
                0,
                "every chunk's fences are balanced: {:?}",
                c.text()
            );
        }
    }

    proptest! {
        #[test]
        fn chunks_fit_and_concatenate_back(
            text in "(\\PC|\n|```|👨\u{200d}👩\u{200d}👧|🇫🇷|e\u{301}| ){0,400}",
            max in 1usize..300,
            unit in 0u8..3,
        ) {
            // The widest grapheme the text can hold is the 18-byte family emoji.
            let limit = match unit {
                0 => Limit { max: max.max(2), unit: Unit::Chars },
                1 => Limit { max: max.max(2), unit: Unit::Utf16 },
                _ => Limit { max: max.max(18), unit: Unit::Utf8Bytes },
            };
            let chunks = split_chunks(&text, limit);
            for c in &chunks {
                prop_assert!(limit.unit.len(&c.text()) <= limit.max, "chunk {:?} over {}", c.text(), limit.max);
            }
            let joined: String = chunks.iter().map(|c| c.body.as_str()).collect();
            prop_assert_eq!(joined, text);
        }
    }
}
