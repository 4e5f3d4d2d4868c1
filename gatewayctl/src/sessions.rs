//! `gatewayctl sessions`: list conversations (resident and stored), show one with the tail of
//! its transcript, and evict a resident one from memory (its history stays stored).

use clap::Subcommand;
use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{Channel, channel_cell, channel_filter, channel_or};
use crate::output::{Format, Out, Table, ago, now_ms, text, time};

/// `sessions …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List sessions, ordered by key.
    List {
        /// Only the direct session of this user.
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
        user: Option<i64>,
        /// Only sessions whose last message came on this channel.
        #[arg(long, value_name = "CHANNEL")]
        channel: Option<Channel>,
        /// Only sessions resident in memory.
        #[arg(long)]
        resident: bool,
        /// Most sessions per page (server default 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start after this cursor (the `next_cursor` of the previous page).
        #[arg(long, value_name = "C")]
        cursor: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one session and the tail of its transcript.
    Show {
        /// The session key: `user:<id>` or `group:<channel>:<chat>`.
        key: String,
        /// Transcript entries to show, newest last (server default 20).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=500))]
        tail: Option<u32>,
    },
    /// Evict a resident session from memory; its history stays stored.
    Evict {
        /// The session key.
        key: String,
    },
}

/// Direct or group.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Not reported.
    Unspecified,
    /// One person, shared by every channel linked to them.
    Direct,
    /// A group chat on one channel.
    Group,
}

/// One session in JSON.
#[derive(Debug, Serialize)]
pub struct Session {
    key: String,
    kind: Kind,
    user_id: Option<i64>,
    last_channel: Option<Channel>,
    created_at_ms: Option<i64>,
    last_active_at_ms: Option<i64>,
    turns: u64,
    resident: bool,
    in_flight: u64,
}

impl Session {
    fn from_pb(s: &pb::SessionInfo) -> Self {
        Self {
            key: s.key.clone(),
            kind: match pb::SessionKind::try_from(s.kind) {
                Ok(pb::SessionKind::Direct) => Kind::Direct,
                Ok(pb::SessionKind::Group) => Kind::Group,
                _ => Kind::Unspecified,
            },
            user_id: (s.user_id != 0).then_some(s.user_id),
            last_channel: Channel::from_pb(&s.last_channel),
            created_at_ms: time(s.created_at_ms),
            last_active_at_ms: time(s.last_active_ms),
            turns: s.turns,
            resident: s.resident,
            in_flight: s.in_flight,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Direct => "direct",
            Kind::Group => "group",
            Kind::Unspecified => "-",
        }
    }
}

/// `sessions list` in JSON.
#[derive(Debug, Serialize)]
struct SessionList {
    sessions: Vec<Session>,
    next_cursor: Option<String>,
}

/// Who said a transcript entry.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    Unspecified,
    User,
    Assistant,
    Notice,
}

/// One transcript entry in JSON.
#[derive(Debug, Serialize)]
struct Entry {
    role: Role,
    text: String,
    channel: Option<Channel>,
    at_ms: i64,
}

/// `sessions show` in JSON.
#[derive(Debug, Serialize)]
struct SessionShow {
    session: Session,
    transcript: Vec<Entry>,
}

/// `sessions evict` in JSON.
#[derive(Debug, Serialize)]
struct Evicted {
    key: String,
    evicted: bool,
}

/// Runs `sessions …`.
pub async fn run(api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::List {
            user,
            channel,
            resident,
            limit,
            cursor,
            all,
        } => {
            let request = pb::ListSessionsRequest {
                cursor: cursor.unwrap_or_default(),
                limit: limit.unwrap_or(0),
                user_id: user.unwrap_or(0),
                channel: channel_filter(channel.as_ref()),
                resident_only: resident,
            };
            list(api, format, request, all).await
        }
        Cmd::Show { key, tail } => show(api, format, key, tail.unwrap_or(0)).await,
        Cmd::Evict { key } => evict(api, format, key).await,
    }
}

async fn list(
    mut api: Api,
    format: Format,
    mut request: pb::ListSessionsRequest,
    all: bool,
) -> anyhow::Result<()> {
    let mut sessions = Vec::new();
    let next_cursor = loop {
        let page = api
            .client
            .list_sessions(request.clone())
            .await
            .map_err(|s| api.error(s))?
            .into_inner();
        sessions.extend(page.sessions.iter().map(Session::from_pb));
        if !all || page.next_cursor.is_empty() || page.next_cursor == request.cursor {
            break text(&page.next_cursor);
        }
        request.cursor = page.next_cursor;
    };
    let out = Out;
    if format == Format::Json {
        return out.json(&SessionList {
            sessions,
            next_cursor,
        });
    }
    let now = now_ms();
    let mut t = Table::new(&[
        "KEY",
        "KIND",
        "USER",
        "CHANNEL",
        "TURNS",
        "RESIDENT",
        "LAST ACTIVE",
    ]);
    for s in &sessions {
        t.row(vec![
            s.key.clone(),
            s.kind_name().to_owned(),
            s.user_id.map_or("-".to_owned(), |u| u.to_string()),
            channel_or(s.last_channel.as_ref(), "-").to_owned(),
            s.turns.to_string(),
            if s.resident && s.in_flight > 0 {
                format!("yes, {} busy", s.in_flight)
            } else if s.resident {
                "yes".to_owned()
            } else {
                "no".to_owned()
            },
            ago(s.last_active_at_ms.unwrap_or(0), now),
        ]);
    }
    if t.is_empty() {
        out.line("no sessions")?;
    } else {
        out.table(&t)?;
    }
    if let Some(next) = next_cursor {
        out.line(format!("more: --cursor {next} (or --all)"))?;
    }
    Ok(())
}

async fn show(mut api: Api, format: Format, key: String, tail: u32) -> anyhow::Result<()> {
    let r = api
        .client
        .get_session(pb::GetSessionRequest {
            key: key.clone(),
            tail,
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let session = r
        .session
        .as_ref()
        .map(Session::from_pb)
        .ok_or_else(|| anyhow::anyhow!("gatewayd sent no session for {key}"))?;
    let transcript: Vec<Entry> = r
        .transcript
        .iter()
        .map(|e| Entry {
            role: match pb::Role::try_from(e.role) {
                Ok(pb::Role::User) => Role::User,
                Ok(pb::Role::Assistant) => Role::Assistant,
                Ok(pb::Role::Notice) => Role::Notice,
                _ => Role::Unspecified,
            },
            text: e.text.clone(),
            channel: Channel::from_pb(&e.channel),
            at_ms: e.at_ms,
        })
        .collect();
    let out = Out;
    if format == Format::Json {
        return out.json(&SessionShow {
            session,
            transcript,
        });
    }
    let now = now_ms();
    let s = &session;
    out.field("session", format!("{} ({})", s.key, s.kind_name()))?;
    if let Some(user) = s.user_id {
        out.field("user", user.to_string())?;
    }
    out.field("channel", channel_or(s.last_channel.as_ref(), "-"))?;
    out.field("turns", s.turns.to_string())?;
    out.field(
        "resident",
        if s.resident {
            format!("yes, {} message(s) in flight", s.in_flight)
        } else {
            "no".to_owned()
        },
    )?;
    out.field("created", ago(s.created_at_ms.unwrap_or(0), now))?;
    out.field("last active", ago(s.last_active_at_ms.unwrap_or(0), now))?;
    out.line("")?;
    if r.transcript.is_empty() {
        return out.line("no transcript since the last reset");
    }
    let mut t = Table::new(&["WHEN", "CHANNEL", "WHO", "TEXT"]).wrap_last();
    for (entry, raw) in transcript.iter().zip(&r.transcript) {
        t.row(vec![
            ago(entry.at_ms, now),
            channel_cell(&raw.channel),
            match entry.role {
                Role::User => "user",
                Role::Assistant => "agent",
                Role::Notice => "notice",
                Role::Unspecified => "-",
            }
            .to_owned(),
            entry.text.clone(),
        ]);
    }
    out.table(&t)
}

async fn evict(mut api: Api, format: Format, key: String) -> anyhow::Result<()> {
    let evicted = api
        .client
        .evict_session(pb::EvictSessionRequest { key: key.clone() })
        .await
        .map_err(|s| api.error(s))?
        .into_inner()
        .evicted;
    let out = Out;
    if format == Format::Json {
        return out.json(&Evicted { key, evicted });
    }
    out.line(if evicted {
        format!("evicted {key} from memory; its history stays stored")
    } else {
        format!("{key} was not resident; nothing to evict")
    })
}
