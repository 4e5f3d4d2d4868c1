//! Drawing the Rate limits tab: a gauge per bucket (tokens left of the burst), red while a
//! platform-requested pause lasts.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, LineGauge, Paragraph, Widget};

use super::super::state::RateLimitsTab;
use crate::output::duration;

impl Widget for &RateLimitsTab {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let block = Block::bordered().title(" Rate limits: tokens left of the burst ");
        let inner = block.inner(area);
        block.render(area, buf);
        if !self.loaded {
            Paragraph::new("loading…").render(inner, buf);
            return;
        }
        Line::from("CHANNEL / CHAT  TOKENS    RATE QUEUE THROTTLED".bold()).render(
            Rect {
                height: inner.height.min(1),
                ..inner
            },
            buf,
        );
        let mut y = inner.y + 1;
        let bottom = inner.y + inner.height;
        let now = self.now_ms;
        let gauge = |buf: &mut Buffer, label: String, b: &super::super::state::Bucket, y: u16| {
            let ratio = if b.burst == 0 {
                0.0
            } else {
                (b.tokens / f64::from(b.burst)).clamp(0.0, 1.0)
            };
            let paused = b
                .paused_until_ms
                .filter(|until| *until > now)
                .map(|until| {
                    let secs = u64::try_from(until - now).unwrap_or(0).div_ceil(1000);
                    format!(" paused {}", duration(secs))
                })
                .unwrap_or_default();
            let label = format!(
                "{label:<14}{:>4.1}/{:<3}{:>5}/s {:<5} {:<9}{paused:<12}",
                b.tokens,
                b.burst,
                format!("{:.1}", b.per_second),
                b.queued,
                b.throttled,
            );
            let color = if paused.is_empty() {
                Color::Green
            } else {
                Color::Red
            };
            LineGauge::default()
                .ratio(ratio)
                .label(label)
                .filled_symbol("█")
                .unfilled_symbol("░")
                .filled_style(Style::new().fg(color))
                .render(
                    Rect {
                        x: inner.x,
                        y,
                        width: inner.width,
                        height: 1,
                    },
                    buf,
                );
        };
        for c in &self.channels {
            if y >= bottom {
                break;
            }
            match &c.bucket {
                Some(b) => gauge(buf, c.channel.clone(), b, y),
                None => Line::from(c.channel.as_str()).render(
                    Rect {
                        height: 1,
                        y,
                        ..inner
                    },
                    buf,
                ),
            }
            y += 1;
            for chat in &c.chats {
                if y >= bottom {
                    break;
                }
                gauge(buf, format!("  {}", chat.chat_id), chat, y);
                y += 1;
            }
        }
    }
}
