//! The Identities tab: one row per address, `u` to unlink the selected address and `l` to
//! link a user or an address to the selected user (a small form); `b` blocks the selected
//! user and `B` unblocks them.

use ratatui::crossterm::event::KeyCode;

use super::TabIntent;
use super::action::Action;
use super::data::Identity;
use super::list::{List, movement};
use super::modal::{Form, FormKind};

/// The Identities tab.
#[derive(Debug, Clone, Default)]
pub struct IdentitiesTab {
    pub list: List<Identity>,
}

impl IdentitiesTab {
    /// The tab's keys: movement, `u`, `l`, `b`, `B`.
    pub fn update_input(&mut self, code: KeyCode) -> TabIntent {
        if let Some(delta) = movement(code) {
            self.list.step(delta);
            return TabIntent::None;
        }
        match code {
            KeyCode::Char('u') => self
                .list
                .current()
                .and_then(|i| i.address.clone())
                .map_or(TabIntent::None, |address| {
                    TabIntent::Propose(Action::UnlinkAddress { address })
                }),
            KeyCode::Char('l') => {
                let first = self
                    .list
                    .current()
                    .map(|i| i.user_id.to_string())
                    .unwrap_or_default();
                TabIntent::Form(Form::new(FormKind::Link, first))
            }
            KeyCode::Char('b') => self.list.current().map_or(TabIntent::None, |i| {
                TabIntent::Propose(Action::BlockUser { user_id: i.user_id })
            }),
            KeyCode::Char('B') => self.list.current().map_or(TabIntent::None, |i| {
                TabIntent::Propose(Action::UnblockUser { user_id: i.user_id })
            }),
            _ => TabIntent::None,
        }
    }
}
