//! Drawing the Overview tab: the version line, the sessions gauge, the traffic sparklines,
//! the queues and the store's health, every channel's state at a glance (coloured by state, whatever the channel),
//! today's LLM usage (the gateway's tokens against its budget, the top users), and the recent
//! errors.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Gauge, Paragraph, Sparkline, Widget};

use super::super::state::{OverviewTab, UsageToday};
use super::state_color;
use crate::output::{ago, duration};

impl Widget for &OverviewTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let block = Block::bordered().title(" Overview ");
        let inner = block.inner(area);
        block.render(area, buf);
        let Some(o) = &self.overview else {
            Paragraph::new("waiting for gatewayd…").render(inner, buf);
            return;
        };
        let [
            head,
            gauge,
            sparks,
            queues,
            channels,
            usage_area,
            errors_area,
        ] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(4),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(2),
            Constraint::Min(0),
        ])
        .areas(inner);
        Line::from(format!(
            "gatewayd {} · up {} · agent {} · in {} · out {}",
            o.version,
            duration(o.uptime_seconds),
            o.agent_provider,
            o.messages_in,
            o.messages_out
        ))
        .render(head, buf);
        let ratio = if o.sessions_capacity == 0 {
            0.0
        } else {
            (o.sessions_resident as f64 / o.sessions_capacity as f64).min(1.0)
        };
        Gauge::default()
            .ratio(ratio)
            .label(format!(
                "sessions {}/{} resident · {} stored",
                o.sessions_resident, o.sessions_capacity, o.sessions_stored
            ))
            .gauge_style(Style::new().fg(Color::Blue).bg(Color::Black))
            .render(gauge, buf);
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(sparks);
        for (rect, name, rate, samples, color) in [
            (left, "in", o.rate_in, &self.rate_in, Color::Green),
            (right, "out", o.rate_out, &self.rate_out, Color::Cyan),
        ] {
            let [label, spark] =
                Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(rect);
            Line::from(format!("{name} {rate:.1}/s")).render(label, buf);
            // The newest samples that fit, right-aligned in time.
            let width = usize::from(spark.width.saturating_sub(1));
            let skip = samples.len().saturating_sub(width);
            let data: Vec<u64> = samples.iter().skip(skip).copied().collect();
            Sparkline::default()
                .data(&data)
                .style(Style::new().fg(color))
                .render(spark, buf);
        }
        let store = if o.store_backend.is_empty() {
            "store"
        } else {
            o.store_backend.as_str()
        };
        match &o.store_error {
            // The counts come from the store: while it does not answer they are not shown.
            Some(e) => Line::from(vec![
                format!("store {store} UNAVAILABLE").red().bold(),
                Span::raw(format!(": {e}")),
            ]),
            None => Line::from(vec![
                Span::raw("dead letters "),
                if o.dead_letters > 0 {
                    o.dead_letters.to_string().red().bold()
                } else {
                    o.dead_letters.to_string().into()
                },
                Span::raw(format!(
                    " · outbox {} · inbox {} · store {store} ok",
                    o.outbox_pending, o.inbox_pending
                )),
            ]),
        }
        .render(queues, buf);
        let mut spans = vec![Span::raw("channels ")];
        for (name, state) in &o.channels {
            spans.push(Span::raw(format!("{name} ")));
            spans.push(Span::styled(
                format!("{}  ", state.name()),
                Style::new().fg(state_color(*state)),
            ));
        }
        Line::from(spans).render(channels, buf);
        render_usage(o.usage.as_ref(), usage_area, buf);
        let mut lines = vec![Line::from("recent errors".bold())];
        if self.errors.is_empty() {
            lines.push(Line::from("none".dim()));
        }
        lines.extend(self.errors.iter().map(|(at, e)| {
            Line::from(vec![
                format!("{:>8}  ", ago(*at, self.now_ms)).dim(),
                Span::raw(e.as_str()),
            ])
        }));
        Paragraph::new(lines).render(errors_area, buf);
    }
}

/// Today's usage: a gauge of the gateway's tokens against its budget (a plain line without a
/// budget), then the top users.
fn render_usage(usage: Option<&UsageToday>, area: Rect, buf: &mut Buffer) {
    let [total, users] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let Some(u) = usage else {
        Line::from("tokens today: not reported by gatewayd".dim()).render(total, buf);
        return;
    };
    match u.global_budget {
        Some(budget) if budget > 0 => {
            let ratio = (u.global_tokens as f64 / budget as f64).min(1.0);
            let color = if u.global_tokens >= budget {
                Color::Red
            } else {
                Color::Magenta
            };
            Gauge::default()
                .ratio(ratio)
                .label(format!(
                    "tokens today (UTC) {} of {} global budget",
                    u.global_tokens, budget
                ))
                .gauge_style(Style::new().fg(color).bg(Color::Black))
                .render(total, buf);
        }
        _ => Line::from(format!(
            "tokens today (UTC) {} · no global budget",
            u.global_tokens
        ))
        .render(total, buf),
    }
    let mut spans = vec![Span::raw("top users ")];
    if u.top_users.is_empty() {
        spans.push("none today".dim());
    }
    for (user, tokens, turns) in &u.top_users {
        spans.push(Span::raw(format!("{user}: {tokens} tok/{turns} turns  ")));
    }
    Line::from(spans).render(users, buf);
}
