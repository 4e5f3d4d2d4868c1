//! A session worker: takes one conversation's messages from its mailbox, one at a time, and
//! turns each into a committed turn and its replies.
//!
//! For each message: re-check the sender's user (a link may have moved them to another session,
//! in which case the message is routed there), run a gateway command or an agent turn, commit the
//! transcript entries, the reply and the inbox `done` mark in one store transaction, and only
//! then hand the reply to delivery. If the commit cannot be made the message stays pending in the
//! inbox and is replayed at the next start, so nothing acknowledged is lost.
//!
//! Just before an agent turn (after gateway commands) the sender's LLM budgets are checked
//! ([`crate::budget`]): a refused message is committed to the transcript without reaching the
//! agent, answered with the refusal once per window. An agent turn's token usage is committed
//! with the turn.
//!
//! In multi-instance mode a worker acts only while this instance owns its session's partition
//! (checked before the message is handled and again before an agent turn), and commits the turn
//! under the partition's fence: a commit the store refuses as fenced (the lease moved while the
//! turn ran, e.g. the process was paused) is settled without a retry and without a reply, and
//! the message stays pending for the new owner.
//!
//! A panic while handling a message restarts the worker in place (see [`run`]): the message is
//! handled again from its pending inbox row, at most [`MAX_TURN_PANICS`] times, then answered
//! with a generic error reply; other sessions never notice.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt as _;
use std::panic::AssertUnwindSafe;
use tokio::sync::mpsc;

use super::commands;
use super::router::{Router, Shared};
use crate::access::Gate;
use crate::events::Event;
use crate::message::{InboundMessage, SessionKey, UserId, now_ms};
use crate::store::{NewReply, Role, StoreError, TranscriptEntry, TurnRecord};
use crate::supervise::{SESSION_WORKER, panic_message};

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
    /// The tokens an agent turn spent, recorded with the turn.
    pub usage: Option<crate::agent::Usage>,
    /// Commit without sending the reply (a budget refusal the sender was already told of).
    pub silent: bool,
}

/// A worker's memory of its conversation.
pub struct SessionState {
    /// The conversation.
    pub key: SessionKey,
    /// The recent history window; `None` until loaded from the store.
    pub window: Option<VecDeque<TranscriptEntry>>,
}

const COMMIT_ATTEMPTS: u32 = 5;

/// Panics on one inbox row after which it is answered with [`SET_ASIDE_REPLY`] and not tried
/// again.
pub const MAX_TURN_PANICS: u32 = 3;

/// The reply to a message that made its worker panic [`MAX_TURN_PANICS`] times.
pub const SET_ASIDE_REPLY: &str = "Sorry, something went wrong inside the gateway while handling this message, so it was set aside. Please try again, or put it another way.";

/// The message a worker is handling.
struct InHand {
    job: Box<Job>,
    /// Panics while handling it.
    panics: u32,
    /// Its turn is committed (or it was handed to another session): a panic after this point
    /// must not handle it again.
    settled: bool,
}

/// Runs until the router closes the mailbox (eviction or shutdown) and it is drained.
///
/// A panic while handling a message restarts the worker: what it held in memory (the history
/// window) is dropped and reloaded from the store, and the message is handled again from its
/// inbox row, which is still pending because a turn commits atomically. A message that panics
/// [`MAX_TURN_PANICS`] times is answered with [`SET_ASIDE_REPLY`] and marked done, so it cannot
/// hold its conversation forever. The mailbox lives outside the restart, so no queued message
/// is lost and their order is kept.
pub async fn run(
    router: Arc<Router>,
    key: SessionKey,
    mut rx: mpsc::Receiver<Box<Job>>,
    shared: Arc<Shared>,
    _done: mpsc::Sender<()>,
) {
    let mut state = SessionState { key, window: None };
    let mut in_hand: Option<InHand> = None;
    loop {
        let served = AssertUnwindSafe(serve(&router, &mut state, &mut rx, &shared, &mut in_hand))
            .catch_unwind()
            .await;
        let panic = match served {
            Ok(()) => return,
            Err(p) => panic_message(&*p),
        };
        state.window = None;
        router
            .context()
            .supervisor
            .restarted(SESSION_WORKER, &panic);
        let Some(mut held) = in_hand.take() else {
            continue;
        };
        if held.settled {
            finish(&shared);
            continue;
        }
        held.panics += 1;
        if held.panics < MAX_TURN_PANICS {
            tracing::warn!(message = "Handling the message again after a panic.", session = %state.key, inbox_id = held.job.inbox_id, panics = held.panics);
            in_hand = Some(held);
            continue;
        }
        tracing::error!(message = "A message made its session worker panic too often; it is answered with an error reply and set aside.", session = %state.key, inbox_id = held.job.inbox_id, panics = held.panics);
        let outcome = Outcome {
            entries: vec![
                user_entry(&held.job),
                TranscriptEntry {
                    role: Role::Notice,
                    text: SET_ASIDE_REPLY.to_owned(),
                    at_ms: now_ms().max(held.job.msg.received_at_ms),
                    channel: Some(held.job.msg.channel),
                },
            ],
            reply: SET_ASIDE_REPLY.to_owned(),
            reset: false,
            usage: None,
            silent: false,
        };
        let mut settled = false;
        let answered = AssertUnwindSafe(commit(
            &router,
            &mut state,
            &held.job,
            outcome,
            &mut settled,
        ))
        .catch_unwind()
        .await;
        if let Err(p) = answered {
            state.window = None;
            tracing::error!(message = "Cannot set aside a message that panics; it stays pending and is replayed at next start.", inbox_id = held.job.inbox_id, panic = %panic_message(&*p));
        }
        finish(&shared);
    }
}

/// The worker's loop: the message in hand first (after a restart), then the mailbox.
async fn serve(
    router: &Arc<Router>,
    state: &mut SessionState,
    rx: &mut mpsc::Receiver<Box<Job>>,
    shared: &Shared,
    in_hand: &mut Option<InHand>,
) {
    loop {
        if in_hand.is_none() {
            let Some(job) = rx.recv().await else { return };
            *in_hand = Some(InHand {
                job,
                panics: 0,
                settled: false,
            });
        }
        if shared.stale.swap(false, Ordering::AcqRel) {
            state.window = None;
        }
        if let Some(held) = in_hand.as_mut() {
            // Boxed so that an idle worker's task holds only this loop's state, not the
            // (larger) state of a message in progress.
            Box::pin(handle(router, state, &held.job, &mut held.settled)).await;
            // Multi-instance mode: a message left pending (a write failed) is the owner's
            // pickup's to route again, here or on the instance that owns it next.
            if !held.settled
                && let Some(c) = &router.context().cluster
            {
                c.claims().release(held.job.inbox_id);
            }
        }
        *in_hand = None;
        finish(shared);
    }
}

/// One message is finished with.
fn finish(shared: &Shared) {
    shared.last_active_ms.store(now_ms(), Ordering::Release);
    shared.in_flight.fetch_sub(1, Ordering::AcqRel);
}

async fn handle(router: &Arc<Router>, state: &mut SessionState, job: &Job, settled: &mut bool) {
    let ctx = router.context().clone();
    ctx.supervisor.injector().turn(&job.msg.text);
    if !owns(&ctx, state, job) {
        return;
    }
    if let SessionKey::User(owner) = state.key {
        match ctx.identity.resolve(&job.msg.address()).await {
            Ok(current) if current != owner => {
                // Linked or unlinked since it was routed: it belongs to another session now.
                *settled = true;
                if let Some(c) = &ctx.cluster {
                    c.claims().release(job.inbox_id);
                }
                if let Err(e) = router.route(job.inbox_id, job.msg.clone()).await {
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
    // One read for the access checks and the budget check.
    let flags = match ctx.store.access_flags(job.user).await {
        Ok(flags) => flags,
        Err(e) => {
            tracing::error!(message = "Cannot check the sender's access; the message stays pending until restart.", inbox_id = job.inbox_id, error = %e);
            return;
        }
    };
    match ctx
        .access
        .gate(job.inbox_id, &job.msg, job.user, &flags)
        .await
    {
        Ok(Gate::Through) => {}
        Ok(Gate::Handled) => {
            *settled = true;
            // Dropped (done) or kept for pairing (left out of the owner's pickup until it is
            // approved): either way nothing routes it again by itself.
            if let Some(c) = &ctx.cluster {
                c.claims().release(job.inbox_id);
            }
            return;
        }
        Ok(Gate::Refuse(reply)) => {
            let notice = TranscriptEntry {
                role: Role::Notice,
                text: reply.clone(),
                at_ms: now_ms().max(job.msg.received_at_ms),
                channel: Some(job.msg.channel),
            };
            let entries = vec![user_entry(job), notice];
            let outcome = Outcome {
                entries,
                reply,
                reset: false,
                usage: None,
                silent: false,
            };
            return commit(router, state, job, outcome, settled).await;
        }
        Err(e) => {
            tracing::error!(message = "Cannot check the sender's access; the message stays pending until restart.", inbox_id = job.inbox_id, error = %e);
            return;
        }
    }
    let outcome = match commands::parse(&job.msg.text) {
        Some(cmd) => commands::execute(cmd, router, state, job).await,
        None if !owns(&ctx, state, job) => return,
        None => match agent_turn(&ctx, state, job, flags.budget).await {
            Some(o) => o,
            None => return,
        },
    };
    commit(router, state, job, outcome, settled).await;
}

/// Multi-instance mode: whether this instance still owns the session's partition. If not, the
/// message is left pending for the owner (its claim given back) and nothing more is done here.
fn owns(ctx: &super::Context, state: &mut SessionState, job: &Job) -> bool {
    let Some(cluster) = &ctx.cluster else {
        return true;
    };
    if cluster.fence_for_key(&state.key).is_some() {
        return true;
    }
    cluster.claims().release(job.inbox_id);
    // Whatever this worker remembers may be outdated once another instance has answered.
    state.window = None;
    tracing::debug!(message = "Not handling a message of a partition this instance does not own; its owner answers it.", session = %state.key, inbox_id = job.inbox_id);
    false
}

async fn load_window(ctx: &super::Context, state: &mut SessionState) -> Result<(), StoreError> {
    if state.window.is_none() {
        let history = ctx.store.history(&state.key, ctx.history_window).await?;
        state.window = Some(history.into());
    }
    Ok(())
}

async fn agent_turn(
    ctx: &super::Context,
    state: &mut SessionState,
    job: &Job,
    own_budget: crate::store::BudgetOverride,
) -> Option<Outcome> {
    if let Err(e) = load_window(ctx, state).await {
        tracing::error!(message = "Cannot load session history; the message stays pending until restart.", session = %state.key, error = %e);
        return None;
    }
    // Borrowed, not cloned: a full window is `history_window` texts copied for every message.
    let window: &[TranscriptEntry] = match state.window.as_mut() {
        Some(w) => w.make_contiguous(),
        None => &[],
    };
    if let Some(refusal) = ctx.budgets.check_with(job.user, now_ms(), own_budget).await {
        return Some(refused(job, refusal));
    }
    let user_entry = user_entry(job);
    let input = user_entry.text.clone();
    let started = std::time::Instant::now();
    let tool_ctx = crate::agent::tools::ToolCallContext {
        session: Some(state.key.clone()),
        origin: Some((job.msg.channel, job.msg.chat_id.clone())),
        user: Some(job.user),
    };
    let (role, reply, usage) = match ctx.agent.respond_counted(window, &input, &tool_ctx).await {
        Ok((reply, usage)) => (Role::Assistant, reply, Some(usage)),
        Err(e) => {
            tracing::error!(message = "Agent turn failed after retries; the user gets an error reply.", session = %state.key, inbox_id = job.inbox_id, provider = ctx.agent.provider_name(), error = %e);
            (
                Role::Notice,
                format!(
                    "Sorry, the assistant could not answer just now ({}). Your message is saved; please try again in a moment.",
                    e.user_reason()
                ),
                None,
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
        usage,
        silent: false,
    })
}

/// The outcome of a message refused for its budget: the message is kept in the transcript,
/// with the refusal as a notice when the sender is told (once per window), else alone and
/// without a reply.
fn refused(job: &Job, refusal: crate::budget::Refusal) -> Outcome {
    let mut entries = vec![user_entry(job)];
    let silent = refusal.reply.is_none();
    let reply = refusal.reply.unwrap_or_default();
    if !silent {
        entries.push(TranscriptEntry {
            role: Role::Notice,
            text: reply.clone(),
            at_ms: now_ms().max(job.msg.received_at_ms),
            channel: Some(job.msg.channel),
        });
    }
    Outcome {
        entries,
        reply,
        reset: false,
        usage: None,
        silent,
    }
}

/// The transcript entry of what the user said.
fn user_entry(job: &Job) -> TranscriptEntry {
    TranscriptEntry {
        role: Role::User,
        text: job.msg.agent_input(),
        at_ms: job.msg.received_at_ms,
        channel: Some(job.msg.channel),
    }
}

/// Commits the turn and hands its reply to delivery; `settled` is set as soon as the turn is
/// committed (now, or already before).
async fn commit(
    router: &Arc<Router>,
    state: &mut SessionState,
    job: &Job,
    outcome: Outcome,
    settled: &mut bool,
) {
    let ctx = router.context();
    let mut record = TurnRecord {
        inbox_id: job.inbox_id,
        session: state.key.clone(),
        entries: outcome.entries.clone(),
        replies: vec![NewReply {
            channel: job.msg.channel,
            chat_id: job.msg.chat_id.clone(),
            text: outcome.reply,
            reply_to: Some(job.msg.channel_message_id.clone()),
        }],
        fence: None,
    };
    if outcome.silent {
        record.replies.clear();
    }
    if let Some(cluster) = &ctx.cluster {
        match cluster.fence_for_key(&state.key) {
            Some(fence) => record.fence = Some(fence),
            None => {
                fenced(
                    ctx,
                    state,
                    job,
                    "the partition's lease is no longer held here",
                );
                return;
            }
        }
    }
    let usage = outcome.usage.map(|u| crate::store::UsageRecord {
        user: job.user,
        session: state.key.clone(),
        inbox_id: job.inbox_id,
        at_ms: now_ms(),
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        estimated: u.estimated,
    });
    let mut attempt = 1;
    let rows = loop {
        match ctx
            .store
            .commit_turn_with_usage(record.clone(), usage.clone())
            .await
        {
            Ok(rows) => {
                if let Some(u) = &outcome.usage {
                    crate::budget::record_metrics(u);
                }
                *settled = true;
                if let Some(c) = &ctx.cluster {
                    c.claims().settled(job.inbox_id);
                }
                break rows;
            }
            Err(StoreError::Conflict(e)) => {
                tracing::warn!(message = "Turn already committed; not answering twice.", inbox_id = job.inbox_id, detail = %e);
                *settled = true;
                if let Some(c) = &ctx.cluster {
                    c.claims().settled(job.inbox_id);
                }
                return;
            }
            Err(StoreError::Fenced(e)) => {
                fenced(ctx, state, job, &e);
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
    let partition = record.fence.as_ref().and_then(|f| f.partition());
    ctx.delivery.enqueue_in(rows, partition);
}

/// A turn this instance may no longer commit: nothing of it is kept or sent, the message stays
/// pending, and the partition's new owner answers it.
fn fenced(ctx: &super::Context, state: &mut SessionState, job: &Job, detail: &str) {
    tracing::warn!(message = "Turn fenced: this instance lost the session's partition; the new owner answers it.", session = %state.key, inbox_id = job.inbox_id, detail);
    metrics::counter!("gateway_cluster_fenced_commits_total").increment(1);
    state.window = None;
    if let Some(c) = &ctx.cluster {
        c.claims().release(job.inbox_id);
    }
}
