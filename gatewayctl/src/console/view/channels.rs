//! Drawing the Channels tab: one row per enabled channel, named as the gateway names it.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::widgets::Widget;

use super::super::state::ChannelsTab;
use super::{table, title};
use crate::model::{ChannelInfo, ChannelState, channel_or};
use crate::output::ago;

fn channel_state(c: &ChannelInfo, now: i64) -> String {
    match (c.state, c.next_attempt_at_ms) {
        (ChannelState::Reconnecting, Some(next)) => {
            format!("reconnecting #{} ({})", c.reconnect_attempt, ago(next, now))
        }
        (ChannelState::Reconnecting, None) => format!("reconnecting #{}", c.reconnect_attempt),
        (state, _) => state.name().to_owned(),
    }
}

impl Widget for &ChannelsTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let shown = self.list.visible_len();
        table(
            area,
            buf,
            title(
                "Channels",
                shown,
                self.list.items.len(),
                &self.list.filter,
                self.list.loaded,
            ),
            (
                &[
                    "CHANNEL",
                    "STATE",
                    "SINCE",
                    "SENT",
                    "FAIL",
                    "RECONN",
                    "LAST ERROR",
                ],
                &[
                    Constraint::Length(8),
                    Constraint::Length(24),
                    Constraint::Length(8),
                    Constraint::Length(6),
                    Constraint::Length(5),
                    Constraint::Length(6),
                    Constraint::Min(10),
                ],
            ),
            &self.list,
            shown,
            |c| {
                vec![
                    channel_or(c.channel.as_ref(), "?").to_owned(),
                    channel_state(c, self.now_ms),
                    ago(c.since_at_ms.unwrap_or(0), self.now_ms),
                    c.sent.to_string(),
                    c.failed.to_string(),
                    c.reconnects.to_string(),
                    c.last_error.clone().unwrap_or_default(),
                ]
            },
        );
    }
}
