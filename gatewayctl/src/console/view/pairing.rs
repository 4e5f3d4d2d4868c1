//! Drawing the Pairing tab: one row per pending request.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::Widget;

use super::super::state::PairingTab;
use super::{table, title};
use crate::output::ago;

impl Widget for &PairingTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let shown = self.list.visible_len();
        table(
            area,
            buf,
            title(
                "Pairing: senders waiting for approval (a approve, d deny)",
                shown,
                self.list.items.len(),
                &self.list.filter,
                self.list.loaded,
            ),
            (
                &["CODE", "CHANNEL", "SENDER", "NAME", "SEEN", "KEPT"],
                &[
                    Constraint::Length(7),
                    Constraint::Length(9),
                    Constraint::Length(16),
                    Constraint::Min(10),
                    Constraint::Length(8),
                    Constraint::Length(4),
                ],
            ),
            &self.list,
            shown,
            |p| {
                vec![
                    p.code.clone(),
                    p.channel.clone(),
                    p.sender_id.clone(),
                    p.display_name.clone(),
                    ago(p.first_seen_ms, self.now_ms),
                    p.kept_messages.to_string(),
                ]
            },
        );
    }
}
