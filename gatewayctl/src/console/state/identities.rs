//! The Identities tab: one row per address, `u` to unlink the selected address and `l` to
//! link a user or an address to the selected user (a small form).

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
    /// The tab's keys: movement, `u`, `l`.
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
            _ => TabIntent::None,
        }
    }
}
