//! An incremental parser of server-sent events (the `text/event-stream` format of
//! signal-cli's `/api/v1/events`): bytes go in as they arrive, whole events come out.
//!
//! Lines end in `\n`, `\r\n` or `\r`; `event:` names the event, `data:` lines are joined with
//! `\n`, a line starting with `:` is a comment (signal-cli's keepalive), `id:` and `retry:` are
//! read and ignored, and a blank line ends the event. A line longer than the parser's limit is an
//! error (the stream is replaced), so a broken or hostile stream cannot grow memory without bound.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `message` when the event names none.
    pub name: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The parser's state between chunks.
#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    after_cr: bool,
    name: Option<String>,
    data: Option<String>,
    max_line: usize,
}

/// A line longer than the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event-stream line is longer than {0} bytes")]
pub struct LineTooLong(pub usize);

impl Parser {
    /// A parser refusing lines over `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            name: None,
            data: None,
            max_line,
        }
    }

    /// Feeds `bytes`; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, LineTooLong> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    if self.line.len() >= self.max_line {
                        return Err(LineTooLong(self.max_line));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let data = self.data.take();
            let name = self.name.take();
            return data.map(|data| Event {
                name: name.unwrap_or_else(|| "message".to_owned()),
                data,
            });
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.find(':') {
            Some(i) => {
                let value = &text[i + 1..];
                (&text[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&*text, ""),
        };
        match field {
            "event" => self.name = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new(1024);
        chunks
            .iter()
            .flat_map(|c| p.feed(c).expect("within the limit"))
            .collect()
    }

    #[test]
    fn events_keepalives_and_split_chunks() {
        let events = all(&[
            b":\n\nevent:receive\nda",
            b"ta:{\"a\":1}\n",
            b"\n:\n\nevent: receive\r\ndata: x\r\ndata: y\r\n\r\n",
        ]);
        assert_eq!(
            events,
            vec![
                Event {
                    name: "receive".into(),
                    data: "{\"a\":1}".into()
                },
                Event {
                    name: "receive".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn an_event_without_a_name_is_a_message_and_one_without_data_is_nothing() {
        let events = all(&[b"data:1\n\nevent:receive\n\nid:7\n\n"]);
        assert_eq!(
            events,
            vec![Event {
                name: "message".into(),
                data: "1".into()
            }]
        );
    }

    #[test]
    fn a_line_over_the_limit_is_an_error() {
        let mut p = Parser::new(8);
        assert_eq!(p.feed(b"data:123456789"), Err(LineTooLong(8)));
    }

    #[test]
    fn a_lone_cr_ends_a_line() {
        assert_eq!(
            all(&[b"event:receive\rdata:z\r\r"]),
            vec![Event {
                name: "receive".into(),
                data: "z".into()
            }]
        );
    }
}
