//! The Pairing tab: senders waiting for the operator's approval, oldest first; `a` approves the
//! selected request (its kept messages are answered) and `d` denies it.

use ratatui::crossterm::event::KeyCode;

use super::TabIntent;
use super::action::Action;
use super::data::Pairing;
use super::list::{List, movement};

/// The Pairing tab.
#[derive(Debug, Clone, Default)]
pub struct PairingTab {
    pub list: List<Pairing>,
    pub now_ms: i64,
}

impl PairingTab {
    /// The tab's keys: movement, `a`, `d`.
    pub fn update_input(&mut self, code: KeyCode) -> TabIntent {
        if let Some(delta) = movement(code) {
            self.list.step(delta);
            return TabIntent::None;
        }
        let Some(code_of) = self.list.current().map(|p| p.code.clone()) else {
            return TabIntent::None;
        };
        match code {
            KeyCode::Char('a') => TabIntent::Propose(Action::ApprovePairing { code: code_of }),
            KeyCode::Char('d') => TabIntent::Propose(Action::DenyPairing { code: code_of }),
            _ => TabIntent::None,
        }
    }
}
