//! The Channels tab: every enabled channel's health and counters as the gateway names them,
//! and `c` to reconnect the selected one.

use ratatui::crossterm::event::KeyCode;

use super::TabIntent;
use super::action::Action;
use super::list::{List, movement};
use crate::model::ChannelInfo;

/// The Channels tab.
#[derive(Debug, Clone, Default)]
pub struct ChannelsTab {
    pub list: List<ChannelInfo>,
    pub now_ms: i64,
}

impl ChannelsTab {
    /// The tab's keys: movement and `c`.
    pub fn update_input(&mut self, code: KeyCode) -> TabIntent {
        if let Some(delta) = movement(code) {
            self.list.step(delta);
            return TabIntent::None;
        }
        match code {
            KeyCode::Char('c') => self
                .list
                .current()
                .and_then(|c| c.channel.clone())
                .map_or(TabIntent::None, |channel| {
                    TabIntent::Propose(Action::ReconnectChannel { channel })
                }),
            _ => TabIntent::None,
        }
    }
}
