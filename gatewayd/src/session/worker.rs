//! A session worker: takes one conversation's messages from its mailbox, one at a time, and
//! turns each into a committed turn and its replies.
//!
//! For each message: re-check the sender's user (a link may have moved them to another session,
//! in which case the message is routed there), run a gateway command or an agent turn, commit the
//! transcript entries, the reply and the inbox `done` mark in one store transaction, and only
//! then hand the reply to delivery. If the commit cannot be made the message stays pending in the
//! inbox and is replayed at the next start, so nothing acknowledged is lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::commands;
use super::router::{Router, Shared};
use crate::events::Event;
use crate::message::{InboundMessage, SessionKey, UserId, now_ms};
use crate::store::{NewReply, Role, StoreError, TranscriptEntry, TurnRecord};

/// One message for a worker.
#[derive(Debug)]
pub struct Job {
    /// Inbox row id.
    pub inbox_id: i64,
    /// The message.
    pub msg: InboundMessage,
    /// The sender's user, as resolved when routed.
    pub user: UserId,
}

/// What handling one message produced, before it is committed.
pub struct Outcome {
    /// Entries to append to the transcript.
    pub entries: Vec<TranscriptEntry>,
    /// The reply text.
    pub reply: String,
    /// Whether the session starts afresh (`/reset`).
    pub reset: bool,
}

/// A worker's memory of its conversation.
pub struct SessionState {
    /// The conversation.
    pub key: SessionKey,
    /// The recent history window; `None` until loaded from the store.
    pub window: Option<VecDeque<TranscriptEntry>>,
}

const COMMIT_ATTEMPTS: u32 = 5;

/// Runs until the router closes the mailbox (eviction or shutdown) and it is drained.
pub async fn run(
    router: Arc<Router>,
    key: SessionKey,
    mut rx: mpsc::Receiver<Box<Job>>,
    shared: Arc<Shared>,
    _done: mpsc::Sender<()>,
) {
    let mut state = SessionState { key, window: None };
    while let Some(job) = rx.recv().await {
        if shared.stale.swap(false, Ordering::AcqRel) {
            state.window = None;
        }
        // Boxed so that an idle worker's task holds only this loop's state, not the (larger)
        // state of a message in progress.
        Box::pin(handle(&router, &mut state, *job)).await;
        shared.last_active_ms.store(now_ms(), Ordering::Release);
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle(router: &Arc<Router>, state: &mut SessionState, job: Job) {
    let ctx = router.context().clone();
    if let SessionKey::User(owner) = state.key {
        match ctx.identity.resolve(&job.msg.address()).await {
            Ok(current) if current != owner => {
                // Linked or unlinked since it was routed: it belongs to another session now.
                if let Err(e) = router.route(job.inbox_id, job.msg).await {
                    tracing::error!(message = "Cannot re-route a message; it stays pending until restart.", inbox_id = job.inbox_id, error = %e);
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(message = "Cannot resolve the sender; the message stays pending until restart.", inbox_id = job.inbox_id, error = %e);
                return;
            }
        }
    }
    let outcome = match commands::parse(&job.msg.text) {
        Some(cmd) => commands::execute(cmd, router, state, &job).await,
        None => match agent_turn(&ctx, state, &job).await {
            Some(o) => o,
            None => return,
        },
    };
    commit(router, state, job, outcome).await;
}

async fn load_window(ctx: &super::Context, state: &mut SessionState) -> Result<(), StoreError> {
    if state.window.is_none() {
        let history = ctx.store.history(&state.key, ctx.history_window).await?;
        state.window = Some(history.into());
    }
    Ok(())
}

async fn agent_turn(ctx: &super::Context, state: &mut SessionState, job: &Job) -> Option<Outcome> {
    if let Err(e) = load_window(ctx, state).await {
        tracing::error!(message = "Cannot load session history; the message stays pending until restart.", session = %state.key, error = %e);
        return None;
    }
    // Borrowed, not cloned: a full window is `history_window` texts copied for every message.
    let window: &[TranscriptEntry] = match state.window.as_mut() {
        Some(w) => w.make_contiguous(),
        None => &[],
    };
    let input = job.msg.agent_input();
    let user_entry = TranscriptEntry {
        role: Role::User,
        text: input.clone(),
        at_ms: job.msg.received_at_ms,
        channel: Some(job.msg.channel),
    };
    let started = std::time::Instant::now();
    let tool_ctx = crate::agent::tools::ToolCallContext {
        session: Some(state.key.clone()),
        origin: Some((job.msg.channel, job.msg.chat_id.clone())),
        user: Some(job.user),
    };
    let (role, reply) = match ctx
        .agent
        .respond_with_tools(window, &input, &tool_ctx)
        .await
    {
        Ok(reply) => (Role::Assistant, reply),
        Err(e) => {
            tracing::error!(message = "Agent turn failed after retries; the user gets an error reply.", session = %state.key, inbox_id = job.inbox_id, provider = ctx.agent.provider_name(), error = %e);
            (
                Role::Notice,
                format!(
                    "Sorry, the assistant could not answer just now ({}). Your message is saved; please try again in a moment.",
                    e.user_reason()
                ),
            )
        }
    };
    let elapsed = started.elapsed();
    metrics::histogram!("gateway_turn_seconds").record(elapsed.as_secs_f64());
    tracing::debug!(message = "Agent turn done.", session = %state.key, elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    Some(Outcome {
        entries: vec![
            user_entry,
            TranscriptEntry {
                role,
                text: reply.clone(),
                at_ms: now_ms().max(job.msg.received_at_ms),
                channel: Some(job.msg.channel),
            },
        ],
        reply,
        reset: false,
    })
}

async fn commit(router: &Arc<Router>, state: &mut SessionState, job: Job, outcome: Outcome) {
    let ctx = router.context();
    let record = TurnRecord {
        inbox_id: job.inbox_id,
        session: state.key.clone(),
        entries: outcome.entries.clone(),
        replies: vec![NewReply {
            channel: job.msg.channel,
            chat_id: job.msg.chat_id.clone(),
            text: outcome.reply,
            reply_to: Some(job.msg.channel_message_id.clone()),
        }],
    };
    let mut attempt = 1;
    let rows = loop {
        match ctx.store.commit_turn(record.clone()).await {
            Ok(rows) => break rows,
            Err(StoreError::Conflict(e)) => {
                tracing::warn!(message = "Turn already committed; not answering twice.", inbox_id = job.inbox_id, detail = %e);
                return;
            }
            Err(e) if attempt < COMMIT_ATTEMPTS && !matches!(e, StoreError::Closed) => {
                tracing::warn!(message = "Turn commit failed; retrying.", inbox_id = job.inbox_id, attempt, error = %e);
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(message = "Turn not committed; the message stays pending and is replayed at next start.", inbox_id = job.inbox_id, error = %e);
                return;
            }
        }
    };
    if outcome.reset {
        state.window = Some(VecDeque::new());
    } else if let Some(window) = state.window.as_mut() {
        window.extend(outcome.entries);
        while window.len() > ctx.history_window {
            window.pop_front();
        }
    }
    ctx.events.publish(Event::TurnCommitted {
        session: state.key.clone(),
        inbox_id: job.inbox_id,
    });
    ctx.delivery.enqueue(rows);
}
