//! `gatewayctl events`: follows the gateway's live event stream (WatchEvents) until
//! interrupted, one line per event — `<UTC time> <kind> key=value …` as a table-style line, or
//! one JSON object per line with `--output json`. A watcher that falls behind gets a `lagged`
//! event; the operator resyncs with the list commands.

use gateway_proto::admin as pb;
use pb::watch_events_response::Event as E;
use serde::Serialize;
use serde_json::Value;

use crate::client::Api;
use crate::model::{Channel, ChannelState, NodeState, RunState};
use crate::output::{Format, Out, text, utc};

/// One event in JSON: `at_ms`, `kind`, and the kind's fields.
#[derive(Debug, Serialize)]
struct Event {
    at_ms: i64,
    #[serde(flatten)]
    event: Kind,
}

/// What happened, tagged by `kind`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Kind {
    MessageIn {
        inbox_id: i64,
        channel: Option<Channel>,
        chat_id: String,
    },
    MessageOut {
        outbox_id: i64,
        channel: Option<Channel>,
        chat_id: String,
    },
    SessionCreated {
        key: String,
    },
    SessionEvicted {
        key: String,
        reason: String,
    },
    TurnCommitted {
        key: String,
        inbox_id: i64,
    },
    IdentityLinked {
        user_id: i64,
        merged_user_id: i64,
    },
    IdentityUnlinked {
        user_id: i64,
        new_user_id: i64,
    },
    DeliveryFailed {
        outbox_id: i64,
        channel: Option<Channel>,
        attempts: u32,
        error: String,
    },
    DeadLettered {
        outbox_id: i64,
        channel: Option<Channel>,
        error: String,
    },
    ChannelStateChanged {
        channel: Option<Channel>,
        state: ChannelState,
        error: Option<String>,
    },
    RateLimited {
        channel: Option<Channel>,
        chat_id: Option<String>,
        pause_ms: u64,
    },
    DeadLettersRetried {
        channel: Option<Channel>,
        count: u64,
    },
    Lagged {
        missed: u64,
    },
    RunChanged {
        run_id: i64,
        workflow: String,
        state: RunState,
        error: Option<String>,
    },
    NodeChanged {
        run_id: i64,
        node: String,
        state: NodeState,
        error: Option<String>,
    },
    /// An event this build of gatewayctl does not know.
    Unknown {},
}

impl Kind {
    fn from_pb(e: Option<E>) -> Kind {
        let ch = |name: String| Channel::from_pb(&name);
        match e {
            Some(E::MessageIn(m)) => Kind::MessageIn {
                inbox_id: m.inbox_id,
                channel: ch(m.channel),
                chat_id: m.chat_id,
            },
            Some(E::MessageOut(m)) => Kind::MessageOut {
                outbox_id: m.outbox_id,
                channel: ch(m.channel),
                chat_id: m.chat_id,
            },
            Some(E::SessionCreated(s)) => Kind::SessionCreated { key: s.key },
            Some(E::SessionEvicted(s)) => Kind::SessionEvicted {
                key: s.key,
                reason: s.reason,
            },
            Some(E::TurnCommitted(t)) => Kind::TurnCommitted {
                key: t.key,
                inbox_id: t.inbox_id,
            },
            Some(E::IdentityLinked(l)) => Kind::IdentityLinked {
                user_id: l.user_id,
                merged_user_id: l.merged_user_id,
            },
            Some(E::IdentityUnlinked(u)) => Kind::IdentityUnlinked {
                user_id: u.user_id,
                new_user_id: u.new_user_id,
            },
            Some(E::DeliveryFailed(d)) => Kind::DeliveryFailed {
                outbox_id: d.outbox_id,
                channel: ch(d.channel),
                attempts: d.attempts,
                error: d.error,
            },
            Some(E::DeadLettered(d)) => Kind::DeadLettered {
                outbox_id: d.outbox_id,
                channel: ch(d.channel),
                error: d.error,
            },
            Some(E::ChannelStateChanged(c)) => Kind::ChannelStateChanged {
                channel: ch(c.channel),
                state: ChannelState::from_pb(c.state),
                error: text(&c.error),
            },
            Some(E::RateLimited(r)) => Kind::RateLimited {
                channel: ch(r.channel),
                chat_id: text(&r.chat_id),
                pause_ms: r.pause_ms,
            },
            Some(E::DeadLettersRetried(d)) => Kind::DeadLettersRetried {
                channel: ch(d.channel),
                count: d.count,
            },
            Some(E::Lagged(l)) => Kind::Lagged { missed: l.missed },
            Some(E::RunChanged(r)) => Kind::RunChanged {
                run_id: r.run_id,
                workflow: r.workflow,
                state: RunState::from_pb(r.state),
                error: text(&r.error),
            },
            Some(E::NodeChanged(n)) => Kind::NodeChanged {
                run_id: n.run_id,
                node: n.node,
                state: NodeState::from_pb(n.state),
                error: text(&n.error),
            },
            None => Kind::Unknown {},
        }
    }
}

/// `<time> <kind> key=value …`: fields in name order, null fields left out, values quoted
/// when they are empty or hold spaces, quotes or `=`.
fn line(event: &Event) -> anyhow::Result<String> {
    let Value::Object(fields) = serde_json::to_value(&event.event)? else {
        anyhow::bail!("an event did not serialize to an object");
    };
    let kind = fields
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let mut pairs: Vec<(&String, &Value)> = fields
        .iter()
        .filter(|(k, v)| k.as_str() != "kind" && !v.is_null())
        .collect();
    pairs.sort_by_key(|(k, _)| k.as_str());
    let mut out = format!("{} {kind}", utc(event.at_ms, true));
    for (key, value) in pairs {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
        if plain {
            out.push_str(&format!(" {key}={value}"));
        } else {
            out.push_str(&format!(" {key}={value:?}"));
        }
    }
    Ok(out)
}

/// Runs `events` until Ctrl-C (exit 0) or until gatewayd ends the stream (an error).
pub async fn run(mut api: Api, format: Format, addr: &str) -> anyhow::Result<()> {
    let mut stream = api
        .client
        .watch_events(pb::WatchEventsRequest {})
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    // Install the Ctrl-C handler (on its first poll) before saying we are watching, so an
    // interrupt right after the notice already ends the command cleanly.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    tokio::select! {
        biased;
        _ = &mut interrupted => return Ok(()),
        () = std::future::ready(()) => {}
    }
    // The server subscribes before it answers, so from here on nothing is missed.
    eprintln!("gatewayctl: watching events of gatewayd at {addr}; Ctrl-C to stop");
    let out = Out;
    loop {
        let item = tokio::select! {
            item = stream.message() => item.transpose(),
            _ = &mut interrupted => return Ok(()),
        };
        let response = match item {
            Some(Ok(r)) => r,
            Some(Err(status)) => return Err(api.stream_error(status)),
            None => anyhow::bail!("gatewayd at {addr} closed the event stream"),
        };
        let event = Event {
            at_ms: response.at_ms,
            event: Kind::from_pb(response.event),
        };
        match format {
            Format::Json => out.json_line(&event)?,
            Format::Table => out.line(line(&event)?)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_as_one_line_of_sorted_fields() {
        let event = Event {
            at_ms: 1_750_000_000_123,
            event: Kind::MessageIn {
                inbox_id: 5,
                channel: "http".parse().ok(),
                chat_id: "chat-1".into(),
            },
        };
        assert_eq!(
            line(&event).expect("line"),
            "2025-06-15T15:06:40.123Z message_in channel=http chat_id=chat-1 inbox_id=5"
        );
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"at_ms": 1_750_000_000_123_i64, "kind": "message_in",
                "inbox_id": 5, "channel": "http", "chat_id": "chat-1"})
        );
        let failed = Event {
            at_ms: 0,
            event: Kind::ChannelStateChanged {
                channel: "webchat".parse().ok(),
                state: ChannelState::ReauthNeeded,
                error: Some("401 \"no\"".into()),
            },
        };
        assert_eq!(
            line(&failed).expect("line"),
            "1970-01-01T00:00:00.000Z channel_state_changed channel=webchat error=\"401 \\\"no\\\"\" state=reauth_needed"
        );
        let node = Event {
            at_ms: 0,
            event: Kind::from_pb(Some(E::NodeChanged(pb::NodeChanged {
                run_id: 7,
                node: "fetch".into(),
                state: pb::NodeState::Failed as i32,
                error: "not allowed".into(),
            }))),
        };
        assert_eq!(
            line(&node).expect("line"),
            "1970-01-01T00:00:00.000Z node_changed error=\"not allowed\" node=fetch run_id=7 state=failed"
        );
        let run = Event {
            at_ms: 0,
            event: Kind::from_pb(Some(E::RunChanged(pb::RunChanged {
                run_id: 7,
                workflow: "daily_report".into(),
                state: pb::RunState::Succeeded as i32,
                error: String::new(),
            }))),
        };
        assert_eq!(
            line(&run).expect("line"),
            "1970-01-01T00:00:00.000Z run_changed run_id=7 state=succeeded workflow=daily_report"
        );
        assert_eq!(
            serde_json::to_value(&run).expect("json"),
            serde_json::json!({"at_ms": 0, "kind": "run_changed", "run_id": 7,
                "workflow": "daily_report", "state": "succeeded", "error": null})
        );
        let unknown = Event {
            at_ms: 0,
            event: Kind::from_pb(None),
        };
        assert_eq!(
            line(&unknown).expect("line"),
            "1970-01-01T00:00:00.000Z unknown"
        );
    }
}
