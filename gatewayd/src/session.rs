//! Sessions: one per conversation, each with its own worker so a conversation's messages are
//! handled in order while conversations run in parallel.
//!
//! [`router::Router`] maps a message to its [`SessionKey`](crate::message::SessionKey) and hands
//! it to that session's worker. Resident sessions are bounded (`gateway.max_sessions`, LRU) and
//! swept when idle (`gateway.idle_timeout`). Evicting loses nothing: every turn is committed to
//! the store before its reply is sent, and a session that comes back reloads its window.

pub mod commands;
pub mod router;
pub mod worker;

use std::sync::Arc;

use crate::agent::Agent;
use crate::delivery::Delivery;
use crate::events::EventBus;
use crate::identity::Identity;
use crate::store::SharedStore;

/// What every session worker shares.
pub struct Context {
    /// The durable state.
    pub store: SharedStore,
    /// Address → user resolution and linking.
    pub identity: Arc<Identity>,
    /// The agent.
    pub agent: Arc<Agent>,
    /// Outbound delivery.
    pub delivery: Delivery,
    /// The events bus.
    pub events: EventBus,
    /// Turns kept in memory and sent to the agent.
    pub history_window: usize,
    /// The workflow engine, for `/run`.
    pub workflows: Option<Arc<crate::workflow::run::Engine>>,
    /// Where a worker reports a panic it restarted from.
    pub supervisor: Arc<crate::supervise::Supervisor>,
    /// The LLM budgets checked before each agent turn.
    pub budgets: Arc<crate::budget::Budgets>,
    /// Who may talk to the agent (block, DM and group policies, pairing).
    pub access: Arc<crate::access::Access>,
    /// Multi-instance mode: which partitions this instance owns, and their fences.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}
