//! Drawing the Identities tab: one row per address.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::Widget;

use super::super::state::IdentitiesTab;
use super::{table, title};

impl Widget for &IdentitiesTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let shown = self.list.visible_len();
        table(
            area,
            buf,
            title(
                "Identities: one row per address (u unlink, l link, b block, B unblock)",
                shown,
                self.list.items.len(),
                &self.list.filter,
                self.list.loaded,
            ),
            (
                &["USER", "ADDRESS"],
                &[Constraint::Length(10), Constraint::Min(10)],
            ),
            &self.list,
            shown,
            |r| {
                vec![
                    r.user_id.to_string(),
                    r.address
                        .as_ref()
                        .map_or_else(|| "(no address)".to_owned(), ToString::to_string),
                ]
            },
        );
    }
}
