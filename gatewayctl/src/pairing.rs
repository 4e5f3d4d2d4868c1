//! `gatewayctl pairing`: senders waiting for the operator's approval — list them, approve one
//! (their kept messages are answered in order), or deny one (never answered).

use clap::Subcommand;
use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::channel_cell;
use crate::output::{Format, Out, Table, ago, now_ms, utc};

/// `pairing …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List pending pairing requests, oldest first.
    List,
    /// Approve a request: the sender's user may talk to the agent from now on.
    Approve {
        /// The code the sender was told.
        code: String,
    },
    /// Deny a request: it is removed and its kept messages are never answered.
    Deny {
        /// The code the sender was told.
        code: String,
    },
}

/// One pairing request in JSON.
#[derive(Debug, Serialize)]
pub struct Pairing {
    code: String,
    channel: String,
    sender_id: String,
    display_name: Option<String>,
    first_seen: String,
    expires_at: String,
    kept_messages: u32,
}

impl Pairing {
    fn from_pb(p: &pb::PairingRequest) -> Self {
        Self {
            code: p.code.clone(),
            channel: p.channel.clone(),
            sender_id: p.sender_id.clone(),
            display_name: (!p.display_name.is_empty()).then(|| p.display_name.clone()),
            first_seen: utc(p.first_seen_ms, true),
            expires_at: utc(p.expires_at_ms, true),
            kept_messages: p.kept_messages,
        }
    }
}

/// `pairing approve` in JSON.
#[derive(Debug, Serialize)]
struct Approved {
    code: String,
    user_id: i64,
    answered: u32,
}

/// `pairing deny` in JSON.
#[derive(Debug, Serialize)]
struct Denied {
    code: String,
}

/// Runs `pairing …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    let out = Out;
    match cmd {
        Cmd::List => {
            let r = api
                .client
                .list_pairing(pb::ListPairingRequest {})
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            if format == Format::Json {
                let list: Vec<Pairing> = r.requests.iter().map(Pairing::from_pb).collect();
                return out.json(&list);
            }
            if r.requests.is_empty() {
                return out.line("no pending pairing requests");
            }
            let now = now_ms();
            let mut t = Table::new(&[
                "CODE", "CHANNEL", "SENDER", "NAME", "SEEN", "EXPIRES", "KEPT",
            ]);
            for p in &r.requests {
                t.row(vec![
                    p.code.clone(),
                    channel_cell(&p.channel),
                    p.sender_id.clone(),
                    p.display_name.clone(),
                    ago(p.first_seen_ms, now),
                    utc(p.expires_at_ms, false),
                    p.kept_messages.to_string(),
                ]);
            }
            out.table(&t)
        }
        Cmd::Approve { code } => {
            let r = api
                .client
                .approve_pairing(pb::ApprovePairingRequest { code: code.clone() })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            if format == Format::Json {
                return out.json(&Approved {
                    code,
                    user_id: r.user_id,
                    answered: r.answered,
                });
            }
            out.line(format!(
                "approved {code}: user {} may talk to the agent; {} kept message(s) being answered",
                r.user_id, r.answered
            ))
        }
        Cmd::Deny { code } => {
            api.client
                .deny_pairing(pb::DenyPairingRequest { code: code.clone() })
                .await
                .map_err(|s| api.error(s))?;
            if format == Format::Json {
                return out.json(&Denied { code });
            }
            out.line(format!(
                "denied {code}; its kept messages will not be answered"
            ))
        }
    }
}
