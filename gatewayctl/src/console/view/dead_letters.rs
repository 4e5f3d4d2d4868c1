//! Drawing the Dead letters tab: the table with marks and, when open, the detail pane with
//! the error history.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Stylize;
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Widget};

use super::super::state::DeadLettersTab;
use super::{split, table, title};
use crate::output::ago;

impl Widget for &DeadLettersTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let shown = self.list.visible_len();
        let (top, bottom) = split(area, self.detail.is_some());
        let mut heading = title(
            "Dead letters",
            shown,
            usize::try_from(self.total).unwrap_or(usize::MAX),
            &self.list.filter,
            self.list.loaded,
        );
        if !self.marked.is_empty() {
            heading.push_str(&format!("· {} marked ", self.marked.len()));
        }
        table(
            top,
            buf,
            heading,
            (
                &[
                    "",
                    "ID",
                    "CHANNEL",
                    "CHAT",
                    "ATT",
                    "CLASS",
                    "DEAD",
                    "LAST ERROR",
                ],
                &[
                    Constraint::Length(1),
                    Constraint::Length(6),
                    Constraint::Length(8),
                    Constraint::Length(12),
                    Constraint::Length(3),
                    Constraint::Length(9),
                    Constraint::Length(8),
                    Constraint::Min(10),
                ],
            ),
            &self.list,
            shown,
            |d| {
                let mark = if self.marked.contains(&d.id) { "*" } else { "" };
                vec![
                    mark.to_owned(),
                    d.id.to_string(),
                    d.channel.clone(),
                    d.chat_id.clone(),
                    d.attempts.to_string(),
                    d.class.name().to_owned(),
                    ago(d.dead_at_ms.unwrap_or(0), self.now_ms),
                    d.last_error.clone(),
                ]
            },
        );
        let (Some(rect), Some(d)) = (bottom, &self.detail) else {
            return;
        };
        let mut lines = vec![
            Line::from(format!(
                "to {}:{} · {}",
                d.letter.channel,
                d.letter.chat_id,
                d.letter.text.replace('\n', " ")
            )),
            Line::from("error history".bold()),
        ];
        lines.extend(d.errors.iter().map(|e| {
            Line::from(format!(
                "#{:<2} {:>8}  {:<9} {}",
                e.attempt,
                ago(e.at_ms, self.now_ms),
                e.class.name(),
                e.error
            ))
        }));
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(
                " dead letter {} (r retry, d drop, Esc closes) ",
                d.letter.id
            )))
            .render(rect, buf);
    }
}
