//! `gatewayctl console`: the live operator console (ratatui). This file owns the terminal and
//! the one event loop; `state` holds the data and the pure key/update logic, `view` draws it,
//! and `api` is the task that talks to gatewayd.
//!
//! The loop is a `tokio::select!` over a closed set of inputs — a key, an update from the API
//! task, a one-second tick, a resize — each turned into an [`Input`], applied by
//! [`state::update`], which returns at most one [`Intent`] that the loop carries out (quit,
//! or send a fetch/action to the API task).
//!
//! **Invariant:** the terminal is restored however the console ends — on `q`, on an error
//! (the [`TerminalGuard`] drops) and on a panic (ratatui's panic hook restores it before the
//! message is printed).

mod api;
mod state;
mod view;

use std::time::Duration;

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};
use tokio::sync::mpsc;

use self::api::Request;
use self::state::{App, Input, Intent};
use crate::output::now_ms;

/// Restores the terminal when dropped (normal exit and errors; panics go through the hook
/// that [`ratatui::try_init`] installs).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What the terminal-reading thread sends.
enum TermInput {
    Key(ratatui::crossterm::event::KeyEvent),
    Resize,
}

/// Runs the console against gatewayd at `addr` until the operator quits.
pub async fn run(addr: String, token: Option<String>) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("the console needs a terminal; use the other commands in scripts");
    }
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let _guard = TerminalGuard;

    let (req_tx, req_rx) = mpsc::channel::<Request>(64);
    let (upd_tx, mut upd_rx) = mpsc::channel(256);
    let api_task = tokio::spawn(api::run(addr.clone(), token, req_rx, upd_tx));

    // crossterm's reader blocks, so it gets its own thread; it stops once the loop is gone.
    let (term_tx, mut term_rx) = mpsc::channel::<TermInput>(64);
    std::thread::spawn(move || {
        while !term_tx.is_closed() {
            match event::poll(Duration::from_millis(200)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => break,
            }
            let input = match event::read() {
                Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => TermInput::Key(k),
                Ok(TermEvent::Resize(..)) => TermInput::Resize,
                Ok(_) => continue,
                Err(_) => break,
            };
            if term_tx.blocking_send(input).is_err() {
                break;
            }
        }
    });

    let mut app = App::new(&addr);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result = loop {
        app.set_now(now_ms());
        if let Err(e) = terminal.draw(|f| f.render_widget(&app, f.area())) {
            break Err(anyhow::Error::new(e).context("cannot draw the console"));
        }
        let input = tokio::select! {
            t = term_rx.recv() => match t {
                Some(TermInput::Key(k)) => Input::Key(k),
                Some(TermInput::Resize) => Input::Resize,
                None => break Err(anyhow::anyhow!("lost the terminal's input")),
            },
            u = upd_rx.recv() => match u {
                Some(u) => Input::Api(u),
                None => break Err(anyhow::anyhow!("the connection task stopped")),
            },
            _ = tick.tick() => Input::Tick,
        };
        app.set_now(now_ms());
        let request = match state::update(&mut app, input) {
            None => continue,
            Some(Intent::Quit) => break Ok(()),
            Some(Intent::Fetch(f)) => Request::Fetch(f),
            Some(Intent::Rpc(a)) => Request::Rpc(a),
        };
        // A full queue means gatewayd is slow: drop a fetch (the next tick or event asks
        // again) rather than freeze the screen; actions wait for room.
        match request {
            Request::Fetch(_) => {
                let _ = req_tx.try_send(request);
            }
            Request::Rpc(_) => {
                if req_tx.send(request).await.is_err() {
                    break Err(anyhow::anyhow!("the connection task stopped"));
                }
            }
        }
    };
    api_task.abort();
    drop(terminal);
    result
}
