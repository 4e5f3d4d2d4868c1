//! The Runs tab: workflow runs newest first, a detail pane with every node's state, and `w`
//! to start a run from a small form.

use ratatui::crossterm::event::KeyCode;

use super::data::Run;
use super::list::{List, movement};
use super::modal::{Form, FormKind};
use super::{Fetch, TabIntent};

/// The Workflows/Runs tab.
#[derive(Debug, Clone, Default)]
pub struct RunsTab {
    pub list: List<Run>,
    pub detail: Option<Run>,
    pub now_ms: i64,
}

impl RunsTab {
    /// The fetch that refreshes the tab, or its open detail.
    pub fn refresh(&self) -> Fetch {
        match &self.detail {
            Some(r) => Fetch::Run { id: r.id },
            None => Fetch::Runs,
        }
    }

    /// The tab's keys: movement, Enter, Esc, `w`.
    pub fn update_input(&mut self, code: KeyCode) -> TabIntent {
        if let Some(delta) = movement(code) {
            self.list.step(delta);
            return TabIntent::None;
        }
        match code {
            KeyCode::Enter => self.list.current().map_or(TabIntent::None, |r| {
                TabIntent::Fetch(Fetch::Run { id: r.id })
            }),
            KeyCode::Esc => {
                self.detail = None;
                TabIntent::None
            }
            KeyCode::Char('w') => {
                let first = self
                    .list
                    .current()
                    .map(|r| r.workflow.clone())
                    .unwrap_or_default();
                TabIntent::Form(Form::new(FormKind::RunWorkflow, first))
            }
            _ => TabIntent::None,
        }
    }
}
