//! The fake's Socket Mode: `apps.connections.open` hands out a one-time ticket, and
//! `GET /link/?ticket=…` upgrades to a WebSocket that sends `hello`, carries the envelopes the
//! test pushes (to the newest open connection), records each acknowledgement by `envelope_id`
//! with the connection it came on, and obeys [`SocketCmd`]s: a `disconnect` frame with the
//! socket closed a little later, a plain close, or silence (it stops reading, so pings go
//! unanswered, and sends nothing more).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Shared;
use crate::support::lock;

/// What a test tells the newest open connection to do.
#[derive(Debug, Clone)]
pub enum SocketCmd {
    /// Send `{"type":"disconnect","reason":…}`, then close the socket after `close_after`.
    Disconnect {
        /// `warning`, `refresh_requested`, …
        reason: String,
        /// How long the old socket stays open after the frame.
        close_after: Duration,
    },
    /// Close the socket now.
    Close,
    /// Stop reading and sending: pings go unanswered.
    GoSilent,
}

enum Out {
    Text(String),
    Cmd(SocketCmd),
}

/// One Socket Mode connection, as the fake saw it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// 1-based, in order of opening.
    pub id: usize,
    /// When the WebSocket opened (its `hello` went out then).
    pub opened_at: Instant,
    /// When it closed, if it did.
    pub closed_at: Option<Instant>,
    /// Whether it went silent.
    pub silent: bool,
}

#[derive(Default)]
pub(crate) struct SocketState {
    tickets: Vec<(String, bool)>,
    conns: Vec<(Connection, Option<mpsc::UnboundedSender<Out>>)>,
    pub(crate) acks: Vec<(String, usize)>,
    next_envelope: u64,
}

impl SocketState {
    pub(crate) fn connections(&self) -> Vec<Connection> {
        self.conns.iter().map(|(c, _)| c.clone()).collect()
    }

    fn newest_open(&self) -> Option<&mpsc::UnboundedSender<Out>> {
        self.conns
            .iter()
            .rev()
            .find(|(c, tx)| c.closed_at.is_none() && !c.silent && tx.is_some())
            .and_then(|(_, tx)| tx.as_ref())
    }
}

pub(crate) fn new_ticket(shared: &Shared) -> String {
    let mut st = lock(&shared.state);
    let ticket = format!("ticket-{}", st.socket.tickets.len() + 1);
    st.socket.tickets.push((ticket.clone(), false));
    ticket
}

pub(crate) fn push_envelope(
    shared: &Shared,
    callback: &Value,
    on: Option<usize>,
) -> anyhow::Result<String> {
    let mut st = lock(&shared.state);
    st.socket.next_envelope += 1;
    let id = format!("env-{:06}", st.socket.next_envelope);
    let frame = json!({"envelope_id": id, "type": "events_api", "payload": callback,
                       "accepts_response_payload": false});
    let tx = match on {
        Some(n) => st
            .socket
            .conns
            .get(n.wrapping_sub(1))
            .and_then(|(c, tx)| tx.as_ref().filter(|_| c.closed_at.is_none())),
        None => st.socket.newest_open(),
    }
    .ok_or_else(|| anyhow::anyhow!("no open Socket Mode connection {on:?}"))?;
    tx.send(Out::Text(frame.to_string()))
        .map_err(|_| anyhow::anyhow!("the connection is gone"))?;
    Ok(id)
}

pub(crate) fn command(shared: &Shared, cmd: SocketCmd) -> anyhow::Result<()> {
    let st = lock(&shared.state);
    let tx = st
        .socket
        .newest_open()
        .ok_or_else(|| anyhow::anyhow!("no open Socket Mode connection"))?;
    tx.send(Out::Cmd(cmd))
        .map_err(|_| anyhow::anyhow!("the connection is gone"))
}

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ticket = query.get("ticket").cloned().unwrap_or_default();
    let valid = {
        let mut st = lock(&shared.state);
        match st
            .socket
            .tickets
            .iter_mut()
            .find(|(t, used)| *t == ticket && !used)
        {
            Some((_, used)) => {
                *used = true;
                true
            }
            None => false,
        }
    };
    if !valid {
        return (axum::http::StatusCode::UNAUTHORIZED, "invalid ticket").into_response();
    }
    ws.on_upgrade(move |socket| run(shared, socket))
}

fn set_closed(shared: &Shared, id: usize) {
    let mut st = lock(&shared.state);
    if let Some((c, tx)) = st.socket.conns.get_mut(id - 1)
        && c.closed_at.is_none()
    {
        c.closed_at = Some(Instant::now());
        *tx = None;
    }
    drop(st);
    shared.wake();
}

async fn run(shared: Arc<Shared>, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut st = lock(&shared.state);
        let id = st.socket.conns.len() + 1;
        st.socket.conns.push((
            Connection {
                id,
                opened_at: Instant::now(),
                closed_at: None,
                silent: false,
            },
            Some(tx.clone()),
        ));
        id
    };
    let hello = json!({"type": "hello", "num_connections": id,
                       "connection_info": {"app_id": "A0FAKE"},
                       "debug_info": {"host": "fake", "approximate_connection_time": 3600}});
    if socket.send(Message::text(hello.to_string())).await.is_err() {
        set_closed(&shared, id);
        return;
    }
    shared.wake();
    let mut close_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = async {
            match close_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t)
                        && let Some(env) = v.get("envelope_id").and_then(Value::as_str)
                    {
                        lock(&shared.state).socket.acks.push((env.to_owned(), id));
                        shared.wake();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            out = rx.recv() => match out {
                Some(Out::Text(t)) => {
                    if socket.send(Message::text(t)).await.is_err() {
                        break;
                    }
                }
                Some(Out::Cmd(SocketCmd::Disconnect { reason, close_after })) => {
                    let frame = json!({"type": "disconnect", "reason": reason,
                                       "debug_info": {"host": "fake"}});
                    if socket.send(Message::text(frame.to_string())).await.is_err() {
                        break;
                    }
                    close_at = Some(tokio::time::Instant::now() + close_after);
                }
                Some(Out::Cmd(SocketCmd::Close)) | None => break,
                Some(Out::Cmd(SocketCmd::GoSilent)) => {
                    if let Some((c, _)) = lock(&shared.state).socket.conns.get_mut(id - 1) {
                        c.silent = true;
                    }
                    shared.wake();
                    // Neither reads (so no pong) nor writes, until the peer goes or the fake stops.
                    tokio::select! {
                        () = shared.shutdown.wait() => {}
                        _ = rx.recv() => {}
                    }
                    break;
                }
            },
            () = deadline => break,
            () = shared.shutdown.wait() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    set_closed(&shared, id);
}
