//! The gateway WebSocket: Hello, Identify (READY), Resume (replay by sequence number, then
//! RESUMED), heartbeats and their acknowledgements, dispatch of queued events, and the
//! test-driven drops, Reconnect, Invalid Session and close codes.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::Uri;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::feed::{admit, undelivered};
use super::json::{dispatch_frame, op_frame, ready_payload};
use super::{ConnEntry, Control, IdentifyInfo, Recorded, Session, Shared, TRACE};
use crate::support::{ConnHandle, lock};

pub(super) async fn gateway_upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let query = uri.query().unwrap_or_default().to_owned();
    ws.on_upgrade(move |socket| gateway_socket(shared, conn, query, socket))
}

/// Per-connection state.
struct Conn {
    id: u64,
    query: String,
    /// Identified or resumed on this connection.
    authed: bool,
    /// Highest sequence number sent on this connection.
    sent_upto: u64,
}

enum Step {
    Shutdown,
    Control(Option<Control>),
    Events,
    Frame(Option<Result<Message, axum::Error>>),
}

async fn gateway_socket(shared: Arc<Shared>, handle: ConnHandle, query: String, socket: WebSocket) {
    let mut socket = socket;
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let (id, interval) = {
        let mut st = lock(&shared.state);
        st.next_conn_id += 1;
        let id = st.next_conn_id;
        st.conns.push(ConnEntry {
            id,
            handle: handle.clone(),
            control: control_tx,
        });
        st.connections_total += 1;
        st.ws_queries.push(query.clone());
        (id, st.heartbeat_interval)
    };
    shared.wake();
    let mut conn = Conn {
        id,
        query,
        authed: false,
        sent_upto: 0,
    };
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let hello = op_frame(
        10,
        json!({"heartbeat_interval": interval_ms, "_trace": [TRACE]}),
    );
    if send_text(&mut socket, hello).await {
        run_socket(&shared, &handle, &mut conn, &mut socket, &mut control_rx).await;
    }
    {
        let mut st = lock(&shared.state);
        st.conns.retain(|c| c.id != id);
        if st.active_conn == Some(id) {
            st.active_conn = None;
        }
    }
    shared.wake();
}

async fn run_socket(
    shared: &Shared,
    handle: &ConnHandle,
    conn: &mut Conn,
    socket: &mut WebSocket,
    control_rx: &mut mpsc::UnboundedReceiver<Control>,
) {
    let mut events = shared.events.subscribe();
    loop {
        // Mark the current version seen before reading the log, so an event
        // pushed after the flush below always wakes the select.
        events.borrow_and_update();
        if !flush(shared, conn, socket).await {
            return;
        }
        let step = tokio::select! {
            biased;
            () = shared.shutdown.wait() => Step::Shutdown,
            control = control_rx.recv() => Step::Control(control),
            frame = socket.recv() => Step::Frame(frame),
            changed = events.changed() => match changed {
                Ok(()) => Step::Events,
                Err(_) => Step::Shutdown,
            },
        };
        match step {
            Step::Shutdown | Step::Control(Some(Control::Drop)) => {
                handle.kill();
                return;
            }
            Step::Control(None) | Step::Frame(None | Some(Err(_))) => return,
            Step::Control(Some(Control::Reconnect)) => {
                if !send_text(socket, op_frame(7, Value::Null)).await {
                    return;
                }
            }
            Step::Control(Some(Control::Invalidate)) => {
                conn.authed = false;
                if !send_text(socket, op_frame(9, json!(false))).await {
                    return;
                }
            }
            Step::Control(Some(Control::Close(code, reason))) => {
                close(socket, code, &reason).await;
                return;
            }
            Step::Events => {}
            Step::Frame(Some(Ok(msg))) => {
                if !handle_frame(shared, conn, socket, msg).await {
                    return;
                }
            }
        }
    }
}

/// Sends the session's dispatches this connection has not sent yet (only on
/// the live connection). False if the socket failed.
async fn flush(shared: &Shared, conn: &mut Conn, socket: &mut WebSocket) -> bool {
    if !conn.authed {
        return true;
    }
    let (session_id, batch) = {
        let st = lock(&shared.state);
        if st.active_conn != Some(conn.id) {
            return true;
        }
        let Some(s) = &st.session else {
            return true;
        };
        let batch: Vec<(u64, String, Option<u64>)> = s
            .log
            .iter()
            .filter(|d| d.seq > conn.sent_upto)
            .map(|d| {
                (
                    d.seq,
                    dispatch_frame(d.event.t, d.seq, &d.d),
                    d.event.message_id,
                )
            })
            .collect();
        (s.id.clone(), batch)
    };
    for (seq, frame, message_id) in batch {
        if !send_text(socket, frame).await {
            return false;
        }
        conn.sent_upto = seq;
        mark_written(shared, &session_id, seq, message_id);
    }
    true
}

fn mark_written(shared: &Shared, session_id: &str, seq: u64, message_id: Option<u64>) {
    {
        let mut st = lock(&shared.state);
        if let Some(s) = st.session.as_mut().filter(|s| s.id == session_id) {
            s.delivered_upto = s.delivered_upto.max(seq);
        }
        if let Some(id) = message_id {
            st.written_ids.insert(id);
        }
    }
    shared.changed.notify_waiters();
}

async fn send_text(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // The peer may already be gone; the connection ends either way.
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Handles one frame from the client; false ends the connection.
async fn handle_frame(
    shared: &Shared,
    conn: &mut Conn,
    socket: &mut WebSocket,
    msg: Message,
) -> bool {
    match msg {
        Message::Text(text) => handle_payload(shared, conn, socket, text.as_str()).await,
        Message::Binary(_) => {
            close(socket, 4002, "Error while decoding payload.").await;
            false
        }
        Message::Close(frame) => {
            if let Some(frame) = frame {
                lock(&shared.state).client_closes.push(frame.code);
                shared.changed.notify_waiters();
            }
            false
        }
        Message::Ping(_) | Message::Pong(_) => true,
    }
}

async fn handle_payload(
    shared: &Shared,
    conn: &mut Conn,
    socket: &mut WebSocket,
    text: &str,
) -> bool {
    let Some((op, d)) = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        let op = v.get("op").and_then(Value::as_u64)?;
        Some((op, v.get("d").cloned().unwrap_or(Value::Null)))
    }) else {
        close(socket, 4002, "Error while decoding payload.").await;
        return false;
    };
    match op {
        1 => {
            let ack = {
                let mut st = lock(&shared.state);
                st.heartbeats += 1;
                st.last_heartbeat_seq = d.as_u64();
                st.ack_heartbeats
            };
            shared.changed.notify_waiters();
            !ack || send_text(socket, op_frame(11, Value::Null)).await
        }
        2 => identify(shared, conn, socket, d).await,
        6 => resume(shared, conn, socket, &d).await,
        // Presence update, voice state, request guild members, soundboard.
        3 | 4 | 8 | 31 if conn.authed => true,
        3 | 4 | 8 | 31 => {
            close(socket, 4003, "Not authenticated.").await;
            false
        }
        _ => {
            close(socket, 4001, "Unknown opcode.").await;
            false
        }
    }
}

fn token_ok(st: &Recorded, token: &str) -> bool {
    !st.reject_token && token.strip_prefix("Bot ").unwrap_or(token) == st.token
}

async fn identify(shared: &Shared, conn: &mut Conn, socket: &mut WebSocket, d: Value) -> bool {
    if conn.authed {
        close(socket, 4005, "Already authenticated.").await;
        return false;
    }
    let shard = d.get("shard").and_then(Value::as_array).and_then(|a| {
        let id = a.first()?.as_u64()?;
        let total = a.get(1)?.as_u64()?;
        Some((id, total))
    });
    let mut info = IdentifyInfo {
        token: d
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        intents: d.get("intents").and_then(Value::as_u64).unwrap_or(0),
        properties: d.get("properties").cloned().unwrap_or(Value::Null),
        compress: d.get("compress").and_then(Value::as_bool),
        shard,
        accepted: false,
        query: conn.query.clone(),
        raw: d.clone(),
    };
    let has_intents = d.get("intents").and_then(Value::as_u64).is_some();
    let outcome = {
        let mut st = lock(&shared.state);
        let verdict = if !token_ok(&st, &info.token) {
            Err((4004, "Authentication failed."))
        } else if !has_intents {
            Err((4013, "Invalid intent(s)."))
        } else if info.intents & st.disallowed_intents != 0 {
            Err((4014, "Disallowed intent(s)."))
        } else {
            Ok(())
        };
        match verdict {
            Err(e) => {
                st.identifies.push(info);
                Err(e)
            }
            Ok(()) => {
                let mut carried = st.session.take().map(undelivered).unwrap_or_default();
                carried.extend(st.pending.drain(..));
                let mut session = Session {
                    id: format!("{:032x}", rand::random::<u128>()),
                    intents: info.intents,
                    seq: 1,
                    log: Vec::new(),
                    delivered_upto: 1,
                };
                for event in carried {
                    admit(&mut session, event, &mut st.withheld);
                }
                let ready = ready_payload(&session.id, &shared.ws_url(), info.shard);
                st.session = Some(session);
                st.active_conn = Some(conn.id);
                info.accepted = true;
                st.identifies.push(info);
                Ok(dispatch_frame("READY", 1, &ready))
            }
        }
    };
    shared.wake();
    match outcome {
        Err((code, reason)) => {
            close(socket, code, reason).await;
            false
        }
        Ok(frame) => {
            conn.authed = true;
            conn.sent_upto = 1;
            send_text(socket, frame).await
        }
    }
}

enum ResumeOutcome {
    Close(u16, &'static str),
    Invalid,
    Resumed {
        session_id: String,
        replay: Vec<(u64, String, Option<u64>)>,
        resumed_seq: u64,
    },
}

async fn resume(shared: &Shared, conn: &mut Conn, socket: &mut WebSocket, d: &Value) -> bool {
    if conn.authed {
        close(socket, 4005, "Already authenticated.").await;
        return false;
    }
    let token = d.get("token").and_then(Value::as_str).unwrap_or_default();
    let session_id = d
        .get("session_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(client_seq) = d.get("seq").and_then(Value::as_u64) else {
        close(socket, 4002, "Error while decoding payload.").await;
        return false;
    };
    let outcome = {
        let mut st = lock(&shared.state);
        if !token_ok(&st, token) {
            ResumeOutcome::Close(4004, "Authentication failed.")
        } else {
            let resumed = match st.session.as_mut() {
                Some(s) if s.id == session_id && client_seq > s.seq => {
                    Err(ResumeOutcome::Close(4007, "Invalid seq."))
                }
                Some(s) if s.id == session_id => {
                    let replay = s
                        .log
                        .iter()
                        .filter(|d| d.seq > client_seq)
                        .map(|d| {
                            (
                                d.seq,
                                dispatch_frame(d.event.t, d.seq, &d.d),
                                d.event.message_id,
                            )
                        })
                        .collect();
                    s.seq += 1;
                    Ok(ResumeOutcome::Resumed {
                        session_id: s.id.clone(),
                        replay,
                        resumed_seq: s.seq,
                    })
                }
                _ => Err(ResumeOutcome::Invalid),
            };
            match resumed {
                Ok(r) => {
                    st.active_conn = Some(conn.id);
                    st.resumes += 1;
                    r
                }
                Err(ResumeOutcome::Invalid) => {
                    st.failed_resumes += 1;
                    ResumeOutcome::Invalid
                }
                Err(other) => other,
            }
        }
    };
    shared.wake();
    match outcome {
        ResumeOutcome::Close(code, reason) => {
            close(socket, code, reason).await;
            false
        }
        ResumeOutcome::Invalid => send_text(socket, op_frame(9, json!(false))).await,
        ResumeOutcome::Resumed {
            session_id,
            replay,
            resumed_seq,
        } => {
            conn.authed = true;
            for (seq, frame, message_id) in replay {
                if !send_text(socket, frame).await {
                    return false;
                }
                mark_written(shared, &session_id, seq, message_id);
            }
            conn.sent_upto = resumed_seq;
            send_text(
                socket,
                dispatch_frame("RESUMED", resumed_seq, &json!({"_trace": [TRACE]})),
            )
            .await
        }
    }
}
