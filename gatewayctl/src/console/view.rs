//! Drawing the console: the tab bar, the status line and the popups (help, confirm, form)
//! here, and one `impl Widget for &Tab` per tab in `view/<tab>.rs`. Views only read state;
//! they never fetch nor mutate, and they never read the clock (each tab carries the `now_ms`
//! the loop set).
//!
//! **Invariant:** tables build rows only for what fits on screen (the window around the
//! selection), so a console over many thousands of sessions draws as fast as over ten.

mod channels;
mod cluster;
mod dead_letters;
mod identities;
mod overview;
mod pairing;
mod rate_limits;
mod runs;
mod sessions;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Clear, Paragraph, Row, StatefulWidget, Table, TableState, Tabs, Widget,
};

use super::state::{App, Conn, Filterable, List, Modal, Tab, retry_in_secs, scroll_offset};
use crate::model::ChannelState;

/// Every key, as the help overlay lists it (also in gatewayctl/README.md).
pub const KEYS: &[(&str, &str)] = &[
    ("Tab Shift-Tab", "next / previous tab"),
    ("1-9", "go to a tab"),
    ("↑ ↓ j k", "move the selection"),
    ("PgUp PgDn g G", "page up / down, first / last row"),
    ("/", "filter the table (Enter keeps it, Esc clears)"),
    ("Enter", "details: session, dead letter, run"),
    ("Esc", "close the details or a popup"),
    ("e", "evict the session (Sessions)"),
    ("Space", "mark / unmark the dead letter (Dead letters)"),
    (
        "r  d",
        "retry / drop the marked dead letters, else the selected one",
    ),
    ("R  D", "retry / drop all dead letters of the row's channel"),
    ("c", "reconnect the channel (Channels)"),
    ("u", "unlink the address (Identities)"),
    ("l", "link a user or an address to a user (Identities)"),
    ("w", "run a workflow: name, k=v inputs (Runs)"),
    ("y  n", "confirm / cancel"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

fn selected_style() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

fn state_color(s: ChannelState) -> Color {
    match s {
        ChannelState::Connected => Color::Green,
        ChannelState::Starting | ChannelState::Reconnecting => Color::Yellow,
        ChannelState::ReauthNeeded | ChannelState::Down => Color::Red,
        ChannelState::Unspecified => Color::Gray,
    }
}

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let [bar, body, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(0),
            Constraint::Length(1),
        ])
        .areas(area);
        // Each title with its key while the whole bar fits; on a narrower screen the keys
        // (1-9, in order, as the help says) are left out so that every title still shows.
        let numbered: Vec<String> = Tab::ALL
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{} {}", i + 1, t.title()))
            .collect();
        let width: usize = numbered.iter().map(|t| t.chars().count() + 1).sum();
        let titles: Vec<String> = if width <= usize::from(bar.width) + 1 {
            numbered
        } else {
            Tab::ALL.iter().map(|t| t.title().to_owned()).collect()
        };
        let index = Tab::ALL.iter().position(|t| *t == self.tab).unwrap_or(0);
        Tabs::new(titles)
            .select(index)
            .divider(" ")
            .padding("", "")
            .highlight_style(selected_style().bold())
            .render(bar, buf);
        match self.tab {
            Tab::Overview => self.overview.render(body, buf),
            Tab::Sessions => self.sessions.render(body, buf),
            Tab::Channels => self.channels.render(body, buf),
            Tab::RateLimits => self.rate_limits.render(body, buf),
            Tab::DeadLetters => self.dead_letters.render(body, buf),
            Tab::Runs => self.runs.render(body, buf),
            Tab::Identities => self.identities.render(body, buf),
            Tab::Pairing => self.pairing.render(body, buf),
            Tab::Cluster => self.cluster.render(body, buf),
        }
        status_line(self).render(status, buf);
        match &self.modal {
            None => {}
            Some(Modal::Help) => help(area, buf),
            Some(Modal::Confirm(action)) => {
                let q = action.question().unwrap_or_default();
                let text = vec![
                    Line::from(format!("{q} y/n").bold()),
                    Line::from("y: do it   n / Esc: cancel".dim()),
                ];
                popup(area, buf, "Confirm", text, Color::Yellow);
            }
            Some(Modal::Form(form)) => {
                let title = match form.kind {
                    super::state::FormKind::Link => "Link to a user",
                    super::state::FormKind::RunWorkflow => "Run a workflow",
                };
                let mut text: Vec<Line> = form
                    .fields
                    .iter()
                    .enumerate()
                    .map(|(i, (label, value))| {
                        let cursor = if i == form.focus { "█" } else { "" };
                        let style = if i == form.focus {
                            Style::new().bold()
                        } else {
                            Style::new()
                        };
                        Line::from(vec![
                            Span::raw(format!("{label:<16}")),
                            Span::styled(format!("{value}{cursor}"), style),
                        ])
                    })
                    .collect();
                if form.kind == super::state::FormKind::Link {
                    text.push(Line::from(
                        "a user id merges that user; CHANNEL:SENDER_ID moves an address".dim(),
                    ));
                }
                if let Some(e) = &form.error {
                    text.push(Line::from(e.as_str().red()));
                }
                text.push(Line::from(
                    "Tab: next field  Enter: submit  Esc: cancel".dim(),
                ));
                popup(area, buf, title, text, Color::Cyan);
            }
        }
    }
}

fn status_line(app: &App) -> Line<'_> {
    if app.filtering {
        return Line::from(format!("/{}█", app.filter().unwrap_or("")));
    }
    if let Some(s) = &app.status {
        let style = if s.error {
            Style::new().red()
        } else {
            Style::new().green()
        };
        return Line::from(Span::styled(s.text.clone(), style));
    }
    match &app.conn {
        Conn::Connecting => Line::from(format!("connecting to {}…", app.addr)),
        Conn::Connected => Line::from(vec![
            Span::raw(format!("connected to {}", app.addr)).green(),
            Span::raw("  ? help  q quit").dim(),
        ]),
        Conn::Disconnected { error, retry_at_ms } => Line::from(Span::styled(
            format!(
                "disconnected, retrying in {}s: {error}",
                retry_in_secs(*retry_at_ms, app.now_ms)
            ),
            Style::new().red().bold(),
        )),
    }
}

/// A centered box of `lines` with a border and a title, over whatever is below.
fn popup(area: Rect, buf: &mut Buffer, title: &str, lines: Vec<Line>, color: Color) {
    let width = lines
        .iter()
        .map(Line::width)
        .max()
        .unwrap_or(0)
        .max(title.len() + 2)
        .saturating_add(4)
        .min(usize::from(area.width)) as u16;
    let height = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    Clear.render(rect, buf);
    Paragraph::new(lines)
        .block(
            Block::bordered()
                .title(format!(" {title} "))
                .border_style(Style::new().fg(color))
                .padding(ratatui::widgets::Padding::horizontal(1)),
        )
        .render(rect, buf);
}

fn help(area: Rect, buf: &mut Buffer) {
    let lines = KEYS
        .iter()
        .map(|(k, what)| Line::from(vec![format!("{k:<14}").bold(), Span::raw(*what)]))
        .collect();
    popup(area, buf, "Keys (any key closes)", lines, Color::Cyan);
}

#[cfg(test)]
thread_local! {
    /// Rows built by [`table`] on this thread (tests check that only what fits is built).
    pub static ROWS_BUILT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A bordered table of `list`'s `shown` filtered rows that builds only the rows that fit,
/// keeping the selection in view.
fn table<T: Filterable>(
    area: Rect,
    buf: &mut Buffer,
    title: String,
    (header, widths): (&[&str], &[Constraint]),
    list: &List<T>,
    shown: usize,
    row: impl Fn(&T) -> Vec<String>,
) {
    let (len, selected) = (shown, list.selected);
    let block = Block::bordered().title(title);
    // Borders and the header take three rows.
    let height = usize::from(area.height.saturating_sub(3));
    let offset = scroll_offset(selected, height);
    let rows: Vec<Row> = list
        .window(offset, height)
        .into_iter()
        .map(|item| {
            #[cfg(test)]
            ROWS_BUILT.with(|n| n.set(n.get() + 1));
            Row::new(row(item))
        })
        .collect();
    let mut state = TableState::default().with_selected((len > 0).then(|| selected - offset));
    StatefulWidget::render(
        Table::new(rows, widths.to_vec())
            .header(Row::new(header.to_vec()).bold())
            .block(block)
            .column_spacing(1)
            .highlight_symbol(">")
            .row_highlight_style(selected_style()),
        area,
        buf,
        &mut state,
    );
}

/// "Sessions (40, filter: user:1)" and the like.
fn title(name: &str, shown: usize, total: usize, filter: &str, loaded: bool) -> String {
    match (loaded, filter.is_empty()) {
        (false, _) => format!(" {name} (loading…) "),
        (true, true) => format!(" {name} ({total}) "),
        (true, false) => format!(" {name} ({shown} of {total}, filter: {filter}) "),
    }
}

/// The table's area and, when a detail is open, the detail's.
fn split(area: Rect, detail: bool) -> (Rect, Option<Rect>) {
    if !detail {
        return (area, None);
    }
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(area);
    (top, Some(bottom))
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::KeyCode;

    use super::super::state::tests::{NOW, fixture, press, typed};
    use super::super::state::{
        Action, ApiUpdate, Data, DeadLetterDetail, Entry, Input, SessionDetail, update,
    };
    use super::*;

    fn draw(app: &App) -> Terminal<TestBackend> {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("test terminal");
        terminal
            .draw(|f| f.render_widget(app, f.area()))
            .expect("draw");
        terminal
    }

    #[test]
    fn every_tab_at_80x24() {
        let mut app = fixture();
        for (key, name) in [
            ('1', "overview"),
            ('2', "sessions"),
            ('3', "channels"),
            ('4', "rate_limits"),
            ('5', "dead_letters"),
            ('6', "runs"),
            ('7', "identities"),
            ('8', "pairing"),
            ('9', "cluster"),
        ] {
            press(&mut app, KeyCode::Char(key));
            insta::assert_snapshot!(name, draw(&app).backend());
        }
    }

    #[test]
    fn help_overlay() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('?'));
        insta::assert_snapshot!(draw(&app).backend());
    }

    #[test]
    fn confirm_modal_for_evict() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char('e'));
        assert!(matches!(
            app.modal,
            Some(Modal::Confirm(Action::EvictSession { .. }))
        ));
        insta::assert_snapshot!(draw(&app).backend());
    }

    #[test]
    fn run_workflow_form() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('6'));
        press(&mut app, KeyCode::Char('w'));
        press(&mut app, KeyCode::Tab);
        typed(&mut app, "topic=Rust");
        insta::assert_snapshot!(draw(&app).backend());
    }

    #[test]
    fn details_of_a_session_a_dead_letter_and_a_run() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        let session = app.sessions.list.items[0].clone();
        update(
            &mut app,
            Input::Api(ApiUpdate::Data(Data::Session(SessionDetail {
                session,
                transcript: vec![
                    Entry {
                        role: "user",
                        text: "hello from alice".into(),
                        at_ms: NOW - 8_000,
                    },
                    Entry {
                        role: "assistant",
                        text: "hello from alice".into(),
                        at_ms: NOW - 7_900,
                    },
                ],
            }))),
        );
        insta::assert_snapshot!("session_detail", draw(&app).backend());

        press(&mut app, KeyCode::Char('5'));
        let letter = app.dead_letters.list.items[0].clone();
        update(
            &mut app,
            Input::Api(ApiUpdate::Data(Data::DeadLetter(DeadLetterDetail {
                letter,
                errors: vec![
                    super::super::state::AttemptError {
                        at_ms: NOW - 70_000,
                        attempt: 1,
                        class: crate::model::ErrorClass::Retryable,
                        error: "connection refused".into(),
                    },
                    super::super::state::AttemptError {
                        at_ms: NOW - 60_000,
                        attempt: 2,
                        class: crate::model::ErrorClass::Retryable,
                        error: "503 Service Unavailable".into(),
                    },
                ],
            }))),
        );
        insta::assert_snapshot!("dead_letter_detail", draw(&app).backend());

        press(&mut app, KeyCode::Char('6'));
        let run = app.runs.list.items[0].clone();
        update(&mut app, Input::Api(ApiUpdate::Data(Data::Run(run))));
        insta::assert_snapshot!("run_detail", draw(&app).backend());
        // Esc closes the detail.
        press(&mut app, KeyCode::Esc);
        assert!(app.runs.detail.is_none());
    }

    #[test]
    fn disconnected_and_filtered() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        press(&mut app, KeyCode::Char('/'));
        typed(&mut app, "user:1");
        press(&mut app, KeyCode::Enter);
        update(
            &mut app,
            Input::Api(ApiUpdate::Disconnected {
                error: "cannot reach gatewayd".into(),
                retry_in_ms: 4_000,
            }),
        );
        insta::assert_snapshot!(draw(&app).backend());
    }

    #[test]
    fn only_visible_rows_are_built_and_the_selection_stays_in_view() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        for _ in 0..30 {
            press(&mut app, KeyCode::Down);
        }
        let terminal = draw(&app);
        let screen = format!("{}", terminal.backend());
        assert!(screen.contains("user:31"), "{screen}");
        assert!(!screen.contains("user:1 "), "{screen}");
    }

    #[test]
    fn dead_letters_with_marked_rows() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('5'));
        press(&mut app, KeyCode::Char(' '));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char(' '));
        assert_eq!(app.dead_letters.marked.len(), 2);
        insta::assert_snapshot!(draw(&app).backend());
    }

    #[test]
    fn confirm_a_channel_wide_retry() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('5'));
        press(&mut app, KeyCode::Char('R'));
        insta::assert_snapshot!(draw(&app).backend());
    }

    #[test]
    fn link_form_with_an_address() {
        let mut app = fixture();
        press(&mut app, KeyCode::Char('7'));
        press(&mut app, KeyCode::Char('l'));
        press(&mut app, KeyCode::Tab);
        typed(&mut app, "http:");
        press(&mut app, KeyCode::Enter);
        insta::assert_snapshot!(draw(&app).backend());
    }

    #[test]
    fn sessions_tab_with_100_000_sessions_builds_only_the_rows_that_fit() {
        use super::super::state::Session;
        let mut app = fixture();
        press(&mut app, KeyCode::Char('2'));
        let sessions = (1..=100_000)
            .map(|i| Session {
                key: format!("user:{i}"),
                group: false,
                last_channel: "http".into(),
                last_active_ms: Some(NOW - 1_000),
                turns: 1,
                resident: true,
                in_flight: 0,
            })
            .collect();
        update(
            &mut app,
            Input::Api(ApiUpdate::Data(Data::Sessions {
                after: None,
                sessions,
                next_cursor: None,
            })),
        );
        // 24 rows: the tab bar, the status line, two borders and the header leave 19.
        let fit = 24 - 2 - 3;
        for (key, first, last) in [
            (KeyCode::Home, "user:1 ", "user:19 "),
            (KeyCode::End, "user:99982 ", "user:100000 "),
        ] {
            press(&mut app, key);
            ROWS_BUILT.with(|n| n.set(0));
            let screen = format!("{}", draw(&app).backend());
            assert_eq!(ROWS_BUILT.with(std::cell::Cell::get), fit, "{screen}");
            assert!(screen.contains("Sessions (100000)"), "{screen}");
            let lines: Vec<&str> = screen.lines().collect();
            assert_eq!(lines.len(), 24, "{screen}");
            assert!(lines[3].contains(first), "{screen}");
            assert!(lines[21].contains(last), "{screen}");
        }
        // The last row is the selected one.
        let screen = format!("{}", draw(&app).backend());
        assert!(screen.contains(">user:100000 "), "{screen}");
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = fixture();
        for (w, h) in [(10, 3), (1, 1), (40, 8), (200, 60)] {
            for key in ['1', '2', '3', '4', '5', '6', '7', '?'] {
                press(&mut app, KeyCode::Char(key));
                let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
                t.draw(|f| f.render_widget(&app, f.area())).expect("draw");
            }
            press(&mut app, KeyCode::Esc);
        }
    }
}
