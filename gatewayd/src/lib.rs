//! gatewayd: a hub-and-spoke gateway that puts AI agents on chat channels.
//!
//! The modules follow the path of a message: a channel adapter normalizes it
//! ([`channels`], [`message`]), the [`inbox`] commits and deduplicates it, [`identity`] finds the
//! person, the [`session`] router hands it to that conversation's worker, the [`agent`] answers,
//! the turn and its reply are committed to the [`store`], and [`delivery`] sends the reply back
//! through the adapter. [`events`] carries every state change to whoever watches, [`admin`] serves
//! the operator's gRPC API, and [`http`] and [`runtime`] wire it all to the network and to the
//! process's life, with [`supervise`] watching every long-lived task.
//! [`budget`] decides, before an agent turn, whether the sender may still spend LLM tokens.

pub mod access;
pub mod admin;
pub mod agent;
pub mod budget;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod events;
pub mod http;
pub mod identity;
pub mod inbox;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod runtime;
pub mod send;
pub mod session;
pub mod store;
pub mod supervise;
pub mod workflow;
