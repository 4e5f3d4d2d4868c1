//! The Discord gateway connection of multi-instance mode: our own client of the gateway
//! protocol (v10, JSON), because a session must be resumable by *another* process, and
//! serenity's shard can resume only the session it identified itself (its session id cannot
//! be given to it).
//!
//! Under the lease `conn:discord` the session (`session_id`, `resume_gateway_url`, the last
//! sequence number whose event is committed) is stored in the lease's metadata about every
//! second and when the connection ends; a new holder reads it and sends RESUME to the stored
//! URL, and Discord replays what it dispatched after that sequence number (the inbox dedupes
//! what was committed already). A refused resume (INVALID_SESSION) IDENTIFYs afresh. On its way
//! out the connection closes with code 4000, which keeps the session resumable (1000 would
//! end it). Close codes: 4004 is an invalid token (re-authentication needed), 4010–4014 a
//! configuration Discord refuses (permanent); 4007 and 4009 end the session (IDENTIFY next);
//! any other close or a missed heartbeat acknowledgement reconnects and resumes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Handler, intents, normalize_message};
use crate::channels::supervise::{Link, stopped};
use crate::send::SendError;

/// How often the session is stored in the lease while it moves.
const STORE_EVERY: Duration = Duration::from_secs(1);
/// How long the gateway may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// The close code that ends a connection but keeps its session resumable.
const CLOSE_RESUMABLE: u16 = 4000;

/// A gateway session another connection (or instance) may resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The session's id, from READY.
    pub session_id: String,
    /// Where to resume it, from READY.
    pub resume_gateway_url: String,
    /// The last sequence number whose event is committed.
    pub seq: u64,
}

impl StoredSession {
    /// The session stored in a lease's metadata, if it is readable.
    pub fn parse(meta: &str) -> Option<StoredSession> {
        serde_json::from_str(meta).ok()
    }
}

/// The resumable gateway connection: its session outlives a failed attempt and, through the
/// lease, the instance.
pub(super) struct Resumable {
    pub(super) token: String,
    pub(super) api_url: String,
    pub(super) handler: Arc<Handler>,
    pub(super) http: reqwest::Client,
    pub(super) session: Option<StoredSession>,
    /// The lease epoch whose stored session was read.
    pub(super) loaded_epoch: Option<i64>,
}

/// `url` with the gateway's version and encoding (and the root path, so a bare host is a
/// valid request target).
fn with_query(url: &str) -> Result<String, SendError> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| {
        SendError::retryable(format!("the Discord gateway URL `{url}` is not a URL: {e}"))
    })?;
    parsed.set_query(Some("v=10&encoding=json"));
    Ok(parsed.to_string())
}

fn text(v: &Value) -> WsMessage {
    WsMessage::text(v.to_string())
}

impl Resumable {
    /// Under a lease held at a new epoch, takes the session its metadata stores.
    async fn load(&mut self, link: &Link) -> Result<(), SendError> {
        let Some(lease) = link.lease() else {
            return Ok(());
        };
        if self.loaded_epoch == Some(lease.epoch()) {
            return Ok(());
        }
        let meta = lease.meta().await.map_err(|e| {
            SendError::retryable(format!("cannot read the stored Discord session: {e}"))
        })?;
        if let Some(raw) = meta {
            match StoredSession::parse(&raw) {
                Some(s) => self.session = Some(s),
                None => {
                    tracing::warn!(
                        message = "The stored Discord session is unreadable; identifying afresh."
                    );
                    self.session = None;
                }
            }
        }
        self.loaded_epoch = Some(lease.epoch());
        Ok(())
    }

    /// Stores the session in the lease (fenced; nothing is stored once the lease is lost).
    async fn store(&self, link: &Link) {
        let (Some(lease), Some(session)) = (link.lease(), &self.session) else {
            return;
        };
        let Ok(meta) = serde_json::to_string(session) else {
            return;
        };
        if let Err(error) = lease.set_meta(&meta).await {
            tracing::warn!(message = "Cannot store the Discord session in the lease.", %error);
        }
    }

    /// The gateway URL to identify at (`GET /api/v10/gateway`).
    async fn gateway_url(&self) -> Result<String, SendError> {
        let url = format!("{}/api/v10/gateway", self.api_url.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| SendError::retryable(format!("GET /gateway: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| SendError::retryable(format!("GET /gateway answered {status}: {e}")))?;
        body.get("url")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                SendError::retryable(format!("GET /gateway answered {status} without a url"))
            })
    }

    pub(super) async fn connect(&mut self, link: &mut Link) -> Result<(), SendError> {
        self.load(link).await?;
        let result = self.session_run(link).await;
        self.store(link).await;
        result
    }

    async fn session_run(&mut self, link: &mut Link) -> Result<(), SendError> {
        let url = match &self.session {
            Some(s) => s.resume_gateway_url.clone(),
            None => self.gateway_url().await?,
        };
        let (mut ws, _) = tokio::select! {
            r = tokio_tungstenite::connect_async(with_query(&url)?) => r
                .map_err(|e| SendError::retryable(format!("cannot connect to the Discord gateway: {e}")))?,
            () = stopped(&mut link.shutdown) => return Ok(()),
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, ws.next())
            .await
            .map_err(|_| SendError::retryable("the Discord gateway sent no Hello"))?;
        let interval = match hello {
            Some(Ok(WsMessage::Text(t))) => serde_json::from_str::<Value>(&t)
                .ok()
                .filter(|v| v.get("op").and_then(Value::as_u64) == Some(10))
                .and_then(|v| v.pointer("/d/heartbeat_interval").and_then(Value::as_u64))
                .ok_or_else(|| {
                    SendError::retryable("the Discord gateway's first frame is not Hello")
                })?,
            other => {
                return Err(SendError::retryable(format!(
                    "the Discord gateway closed before Hello: {other:?}"
                )));
            }
        };
        let greeting = match &self.session {
            Some(s) => json!({"op": 6, "d": {
                "token": self.token, "session_id": s.session_id, "seq": s.seq,
            }}),
            None => json!({"op": 2, "d": {
                "token": self.token,
                "intents": intents().bits(),
                "properties": {"os": std::env::consts::OS, "browser": "gatewayd", "device": "gatewayd"},
            }}),
        };
        ws.send(text(&greeting))
            .await
            .map_err(|e| SendError::retryable(format!("cannot greet the Discord gateway: {e}")))?;

        let mut heartbeat = tokio::time::interval(Duration::from_millis(interval.max(100)));
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut acked = true;
        let mut stored = self.session.clone();
        let mut next_store = Instant::now() + STORE_EVERY;
        loop {
            tokio::select! {
                () = stopped(&mut link.shutdown) => {
                    let _ = ws.send(WsMessage::Close(Some(CloseFrame {
                        code: CloseCode::from(CLOSE_RESUMABLE),
                        reason: "handing over".into(),
                    }))).await;
                    return Ok(());
                }
                _ = heartbeat.tick() => {
                    if !acked {
                        return Err(SendError::retryable("the Discord gateway did not acknowledge a heartbeat"));
                    }
                    acked = false;
                    let seq = self.session.as_ref().map(|s| s.seq);
                    ws.send(text(&json!({"op": 1, "d": seq}))).await
                        .map_err(|e| SendError::retryable(format!("heartbeat: {e}")))?;
                }
                () = tokio::time::sleep_until(next_store) => {
                    next_store = Instant::now() + STORE_EVERY;
                    if stored != self.session {
                        self.store(link).await;
                        stored = self.session.clone();
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(WsMessage::Text(t))) => {
                        let Ok(v) = serde_json::from_str::<Value>(&t) else {
                            tracing::warn!(message = "Unreadable Discord gateway frame; ignored.");
                            continue;
                        };
                        match v.get("op").and_then(Value::as_u64) {
                            Some(0) => self.dispatch(&v, &url, link).await,
                            Some(1) => {
                                let seq = self.session.as_ref().map(|s| s.seq);
                                ws.send(text(&json!({"op": 1, "d": seq}))).await
                                    .map_err(|e| SendError::retryable(format!("heartbeat: {e}")))?;
                            }
                            Some(7) => return Err(SendError::retryable("the Discord gateway asked to reconnect")),
                            Some(9) => {
                                if v.get("d").and_then(Value::as_bool) != Some(true) {
                                    self.session = None;
                                }
                                return Err(SendError::retryable("the Discord gateway invalidated the session"));
                            }
                            Some(11) => acked = true,
                            _ => {}
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        return Err(self.closed(code));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(SendError::retryable(format!("the Discord gateway connection failed: {e}"))),
                    None => return Err(SendError::retryable("the Discord gateway connection ended")),
                }
            }
        }
    }

    /// A dispatch: READY and RESUMED mark the connection up, MESSAGE_CREATE is committed; the
    /// sequence number moves only after the event is handled.
    async fn dispatch(&mut self, v: &Value, url: &str, link: &Link) {
        let seq = v.get("s").and_then(Value::as_u64);
        match v.get("t").and_then(Value::as_str) {
            Some("READY") => {
                let id = v.pointer("/d/session_id").and_then(Value::as_str);
                let resume = v
                    .pointer("/d/resume_gateway_url")
                    .and_then(Value::as_str)
                    .unwrap_or(url);
                if let Some(id) = id {
                    self.session = Some(StoredSession {
                        session_id: id.to_owned(),
                        resume_gateway_url: resume.to_owned(),
                        seq: 0,
                    });
                }
                if let Some(bot) = v
                    .pointer("/d/user/id")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    self.handler
                        .bot_id
                        .store(bot, std::sync::atomic::Ordering::Release);
                }
                tracing::info!(message = "Discord gateway ready (identified).");
                link.connected();
            }
            Some("RESUMED") => {
                tracing::info!(message = "Discord gateway session resumed.");
                link.connected();
            }
            Some("MESSAGE_CREATE") => {
                let d = v.get("d").cloned().unwrap_or(Value::Null);
                match serde_json::from_value::<serenity::all::Message>(d) {
                    Ok(msg) => {
                        let bot = self
                            .handler
                            .bot_id
                            .load(std::sync::atomic::Ordering::Acquire);
                        if let Some(inbound) = normalize_message(&msg, bot)
                            && let Err(e) = self.handler.inbox.accept(inbound).await
                        {
                            tracing::error!(message = "Cannot commit a Discord message.", message_id = msg.id.get(), error = %e);
                            // Not past it: a resume replays it.
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(message = "Unreadable Discord message event; skipped.", %error);
                    }
                }
            }
            _ => {}
        }
        if let (Some(seq), Some(session)) = (seq, self.session.as_mut()) {
            session.seq = session.seq.max(seq);
        }
    }

    /// What a close with `code` means for the next attempt.
    fn closed(&mut self, code: u16) -> SendError {
        match code {
            4004 => {
                SendError::Auth("the Discord gateway refused the token (close 4004)".to_owned())
            }
            4010..=4014 => SendError::Permanent(format!(
                "the Discord gateway refused the connection's settings (close {code})"
            )),
            4007 | 4009 => {
                self.session = None;
                SendError::retryable(format!(
                    "the Discord gateway ended the session (close {code})"
                ))
            }
            _ => SendError::retryable(format!(
                "the Discord gateway closed the connection (close {code})"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_session_round_trips_and_junk_is_refused() {
        let s = StoredSession {
            session_id: "abc".to_owned(),
            resume_gateway_url: "wss://gateway.example".to_owned(),
            seq: 42,
        };
        let text = serde_json::to_string(&s).expect("serialize");
        assert_eq!(StoredSession::parse(&text), Some(s));
        assert_eq!(StoredSession::parse("{}"), None);
        assert_eq!(StoredSession::parse("not json"), None);
        assert_eq!(
            StoredSession::parse(r#"{"session_id":"a","resume_gateway_url":"u","seq":-1}"#),
            None
        );
    }

    #[test]
    fn the_gateway_url_gets_version_and_encoding() {
        assert_eq!(
            with_query("wss://g.example").ok().as_deref(),
            Some("wss://g.example/?v=10&encoding=json")
        );
        assert_eq!(
            with_query("ws://127.0.0.1:9/?v=9").ok().as_deref(),
            Some("ws://127.0.0.1:9/?v=10&encoding=json")
        );
        assert!(with_query("not a url").is_err());
    }
}
