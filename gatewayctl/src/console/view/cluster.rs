//! Drawing the Cluster tab: a summary line, then one row per instance (its age, last heartbeat,
//! state, partitions as a count and ranges, other leases); the instance the console is connected
//! to is marked with `*`.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::Widget;

use super::super::state::ClusterTab;
use super::{table, title};
use crate::model::millis;
use crate::output::duration;

impl Widget for &ClusterTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let [top, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
        Line::from(self.summary()).render(top, buf);
        let me = self.cluster.as_ref().and_then(|c| c.instance_id.clone());
        let shown = self.list.visible_len();
        table(
            rest,
            buf,
            title(
                "Cluster",
                shown,
                self.list.items.len(),
                &self.list.filter,
                self.list.loaded,
            ),
            (
                &[
                    "INSTANCE",
                    "AGE",
                    "HEARTBEAT",
                    "STATE",
                    "PARTITIONS",
                    "LEASES",
                ],
                &[
                    Constraint::Length(14),
                    Constraint::Length(7),
                    Constraint::Length(10),
                    Constraint::Length(7),
                    Constraint::Length(18),
                    Constraint::Min(10),
                ],
            ),
            &self.list,
            shown,
            |i| {
                let marked = me.as_deref() == Some(i.instance_id.as_str());
                vec![
                    if marked {
                        format!("{} *", i.instance_id)
                    } else {
                        i.instance_id.clone()
                    },
                    duration(i.age_ms / 1000),
                    format!("{} ago", millis(i.heartbeat_age_ms)),
                    i.state().to_owned(),
                    i.partitions_text(),
                    i.leases_text(),
                ]
            },
        );
    }
}
