//! Drawing the Runs tab: the table of runs and, when open, the run's nodes with their states.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Span;
use ratatui::widgets::{Block, Row, Table, Widget};

use super::super::state::RunsTab;
use super::{split, table, title};
use crate::model::{NodeState, RunState};
use crate::output::ago;

fn took(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) if e >= s => format!("{:.1}s", (e - s) as f64 / 1000.0),
        (Some(_), None) => "…".to_owned(),
        _ => "-".to_owned(),
    }
}

impl Widget for &RunsTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let shown = self.list.visible_len();
        let (top, bottom) = split(area, self.detail.is_some());
        table(
            top,
            buf,
            title(
                "Workflow runs",
                shown,
                self.list.items.len(),
                &self.list.filter,
                self.list.loaded,
            ),
            (
                &[
                    "ID", "WORKFLOW", "STATE", "TRIGGER", "STARTED", "TOOK", "ERROR",
                ],
                &[
                    Constraint::Length(5),
                    Constraint::Length(14),
                    Constraint::Length(9),
                    Constraint::Length(7),
                    Constraint::Length(8),
                    Constraint::Length(6),
                    Constraint::Min(10),
                ],
            ),
            &self.list,
            shown,
            |r| {
                vec![
                    r.id.to_string(),
                    r.workflow.clone(),
                    r.state.name().to_owned(),
                    r.trigger.clone(),
                    ago(r.created_at_ms.unwrap_or(0), self.now_ms),
                    took(r.created_at_ms, r.finished_at_ms),
                    r.error.clone(),
                ]
            },
        );
        let (Some(rect), Some(r)) = (bottom, &self.detail) else {
            return;
        };
        let color = |s: NodeState| match s {
            NodeState::Succeeded => Color::Green,
            NodeState::Failed => Color::Red,
            NodeState::Running => Color::Yellow,
            _ => Color::Gray,
        };
        let rows: Vec<Row> = r
            .nodes
            .iter()
            .map(|n| {
                Row::new(vec![
                    ratatui::widgets::Cell::from(n.id.clone()),
                    n.kind.clone().into(),
                    Span::styled(n.state.name(), Style::new().fg(color(n.state))).into(),
                    n.attempts.to_string().into(),
                    took(n.started_at_ms, n.finished_at_ms).into(),
                    n.error.clone().into(),
                ])
            })
            .collect();
        let state = match r.state {
            RunState::Failed => format!("failed: {}", r.error),
            s => s.name().to_owned(),
        };
        let nodes = Table::new(
            rows,
            [
                Constraint::Length(14),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(3),
                Constraint::Length(6),
                Constraint::Min(10),
            ],
        )
        .header(Row::new(["NODE", "KIND", "STATE", "ATT", "TOOK", "ERROR"]).bold())
        .block(Block::bordered().title(format!(
            " run {} of {} · {state} (Esc closes) ",
            r.id, r.workflow
        )));
        Widget::render(nodes, rect, buf);
    }
}
