//! The Sessions tab: pages of ListSessions (the next page is asked for when the selection
//! reaches the last row), the `/` filter, a detail pane with the transcript tail, and `e` to
//! evict the selected session.

use ratatui::crossterm::event::KeyCode;

use super::action::Action;
use super::data::{Session, SessionDetail};
use super::list::{List, movement};
use super::{Fetch, TabIntent};

/// The Sessions tab: pages of ListSessions, a filter, and a detail pane.
#[derive(Debug, Clone, Default)]
pub struct SessionsTab {
    pub list: List<Session>,
    /// The cursor for the next page (None: everything is loaded).
    pub next_cursor: Option<String>,
    /// A page is being fetched.
    pub paging: bool,
    pub detail: Option<SessionDetail>,
    pub now_ms: i64,
}

impl SessionsTab {
    /// Takes one page; `after` is the cursor it was fetched with (None: the first page).
    pub fn page(&mut self, after: Option<String>, sessions: Vec<Session>, next: Option<String>) {
        self.paging = false;
        if after.is_none() {
            self.list.replace(sessions);
        } else {
            let mut all = std::mem::take(&mut self.list.items);
            all.extend(sessions);
            self.list.replace(all);
        }
        self.next_cursor = next;
    }

    /// The fetch that refreshes the tab, or its open detail.
    pub fn refresh(&self) -> Fetch {
        match &self.detail {
            Some(d) => Fetch::Session {
                key: d.session.key.clone(),
            },
            None => Fetch::Sessions { after: None },
        }
    }

    /// The tab's keys: movement (asking for the next page at the end), Enter, Esc, `e`.
    pub fn update_input(&mut self, code: KeyCode) -> TabIntent {
        if let Some(delta) = movement(code) {
            self.list.step(delta);
            let at_end = self.list.selected + 1 >= self.list.visible_len();
            if at_end
                && delta > 0
                && !self.paging
                && let Some(after) = self.next_cursor.clone()
            {
                self.paging = true;
                return TabIntent::Fetch(Fetch::Sessions { after: Some(after) });
            }
            return TabIntent::None;
        }
        let Some(current) = self.list.current() else {
            if code == KeyCode::Esc {
                self.detail = None;
            }
            return TabIntent::None;
        };
        match code {
            KeyCode::Enter => TabIntent::Fetch(Fetch::Session {
                key: current.key.clone(),
            }),
            KeyCode::Char('e') => TabIntent::Propose(Action::EvictSession {
                key: current.key.clone(),
            }),
            KeyCode::Esc => {
                self.detail = None;
                TabIntent::None
            }
            _ => TabIntent::None,
        }
    }
}
