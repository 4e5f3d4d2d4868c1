//! The Dead letters tab: the dead letters with marks (Space), a detail pane with the error
//! history, retry / drop of the marked rows or else the selected one (`r` `d`), and of every
//! dead letter of the selected row's channel (`R` `D`).
//!
//! **Invariant:** only ids still in the list stay marked; a refresh forgets the others.

use std::collections::BTreeSet;

use ratatui::crossterm::event::KeyCode;

use super::action::{Action, Letters};
use super::data::{DeadLetter, DeadLetterDetail};
use super::list::{List, movement};
use super::{Fetch, TabIntent};
use crate::model::Channel;

/// The Dead letters tab.
#[derive(Debug, Clone, Default)]
pub struct DeadLettersTab {
    pub list: List<DeadLetter>,
    pub total: u64,
    pub detail: Option<DeadLetterDetail>,
    /// The ids marked with Space (only ids still in the list; a refresh forgets the others).
    pub marked: BTreeSet<i64>,
    pub now_ms: i64,
}

impl DeadLettersTab {
    /// Marks or unmarks the selected row.
    fn toggle_mark(&mut self) {
        let Some(id) = self.list.current().map(|d| d.id) else {
            return;
        };
        if !self.marked.remove(&id) {
            self.marked.insert(id);
        }
    }

    /// The marked rows in the table's order (also those the filter hides), or else the
    /// selected one.
    fn chosen(&self) -> Option<Letters> {
        if self.marked.is_empty() {
            return self.list.current().map(|d| Letters::Ids(vec![d.id]));
        }
        let ids: Vec<i64> = self
            .list
            .items
            .iter()
            .map(|d| d.id)
            .filter(|id| self.marked.contains(id))
            .collect();
        (!ids.is_empty()).then_some(Letters::Ids(ids))
    }

    /// Takes a fetch's answer; marks of letters that are gone are forgotten.
    pub fn replace(&mut self, items: Vec<DeadLetter>, total: u64) {
        self.marked.retain(|id| items.iter().any(|d| d.id == *id));
        self.list.replace(items);
        self.total = total;
    }

    /// Forgets the marks of letters an action was sent for.
    pub fn sent(&mut self, action: &Action) {
        if let Action::RetryDeadLetters {
            letters: Letters::Ids(ids),
        }
        | Action::DropDeadLetters {
            letters: Letters::Ids(ids),
        } = action
        {
            self.marked.retain(|id| !ids.contains(id));
        }
    }

    /// The fetch that refreshes the tab, or its open detail.
    pub fn refresh(&self) -> Fetch {
        match &self.detail {
            Some(d) => Fetch::DeadLetter { id: d.letter.id },
            None => Fetch::DeadLetters,
        }
    }

    /// The channel of the selected dead letter, for `R` and `D`; why not, when it names none.
    fn selected_channel(&self) -> Option<Result<Channel, String>> {
        let letter = self.list.current()?;
        Some(
            channel_named(&letter.channel)
                .ok_or_else(|| format!("dead letter {} names no channel", letter.id)),
        )
    }

    /// The tab's keys: movement, Enter, Esc, Space, `r` `d` `R` `D`.
    pub fn update_input(&mut self, code: KeyCode) -> TabIntent {
        if let Some(delta) = movement(code) {
            self.list.step(delta);
            return TabIntent::None;
        }
        let channel_wide = |tab: &Self, make: fn(Letters) -> Action| match tab.selected_channel() {
            None => TabIntent::None,
            Some(Ok(c)) => TabIntent::Propose(make(Letters::Channel(c))),
            Some(Err(why)) => TabIntent::Refuse(why),
        };
        let chosen = |tab: &Self, make: fn(Letters) -> Action| {
            tab.chosen()
                .map_or(TabIntent::None, |l| TabIntent::Propose(make(l)))
        };
        let retry = |letters| Action::RetryDeadLetters { letters };
        let drop = |letters| Action::DropDeadLetters { letters };
        match code {
            KeyCode::Enter => self.list.current().map_or(TabIntent::None, |d| {
                TabIntent::Fetch(Fetch::DeadLetter { id: d.id })
            }),
            KeyCode::Esc => {
                self.detail = None;
                TabIntent::None
            }
            KeyCode::Char(' ') => {
                self.toggle_mark();
                TabIntent::None
            }
            KeyCode::Char('r') => chosen(self, retry),
            KeyCode::Char('d') => chosen(self, drop),
            KeyCode::Char('R') => channel_wide(self, retry),
            KeyCode::Char('D') => channel_wide(self, drop),
            _ => TabIntent::None,
        }
    }
}

/// The channel with this name (as in a table cell); None for `-` (none).
fn channel_named(name: &str) -> Option<Channel> {
    (name != "-").then(|| name.parse().ok()).flatten()
}
