//! Drawing the Sessions tab: the table of sessions and, when open, the detail pane with the
//! transcript tail.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Stylize;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Widget};

use super::super::state::SessionsTab;
use super::{split, table, title};
use crate::output::ago;

impl Widget for &SessionsTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let shown = self.list.visible_len();
        let (top, bottom) = split(area, self.detail.is_some());
        let more = if self.next_cursor.is_some() { "+" } else { "" };
        let name = format!("Sessions{more}");
        table(
            top,
            buf,
            title(
                &name,
                shown,
                self.list.items.len(),
                &self.list.filter,
                self.list.loaded,
            ),
            (
                &[
                    "KEY", "KIND", "CHANNEL", "TURNS", "RESIDENT", "BUSY", "ACTIVE",
                ],
                &[
                    Constraint::Min(16),
                    Constraint::Length(6),
                    Constraint::Length(8),
                    Constraint::Length(6),
                    Constraint::Length(8),
                    Constraint::Length(4),
                    Constraint::Length(10),
                ],
            ),
            &self.list,
            shown,
            |s| {
                vec![
                    s.key.clone(),
                    if s.group { "group" } else { "direct" }.to_owned(),
                    s.last_channel.clone(),
                    s.turns.to_string(),
                    if s.resident { "yes" } else { "no" }.to_owned(),
                    s.in_flight.to_string(),
                    ago(s.last_active_ms.unwrap_or(0), self.now_ms),
                ]
            },
        );
        let (Some(rect), Some(d)) = (bottom, &self.detail) else {
            return;
        };
        let s = &d.session;
        let mut lines = vec![Line::from(format!(
            "{} turns · {} · last on {} · {}",
            s.turns,
            if s.resident { "resident" } else { "stored" },
            s.last_channel,
            ago(s.last_active_ms.unwrap_or(0), self.now_ms)
        ))];
        if d.transcript.is_empty() {
            lines.push(Line::from("no transcript".dim()));
        }
        // The newest entries that fit (two rows go to the border, one to the summary).
        let fit = usize::from(rect.height.saturating_sub(3));
        let skip = d.transcript.len().saturating_sub(fit);
        lines.extend(d.transcript.iter().skip(skip).map(|e| {
            let role = match e.role {
                "user" => format!("{:>9} ", e.role).cyan(),
                "assistant" => format!("{:>9} ", e.role).green(),
                _ => format!("{:>9} ", e.role).dim(),
            };
            Line::from(vec![role, Span::raw(e.text.replace('\n', " "))])
        }));
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(" {} (Esc closes) ", s.key)))
            .render(rect, buf);
    }
}
