//! Channel adapters: each one listens on its platform, normalizes what arrives into an
//! [`InboundMessage`](crate::message::InboundMessage) for the inbox, and sends what delivery gives
//! it. Adapters know nothing of sessions or agents.
//!
//! Sending is the [`ChannelSender`] trait. Its errors carry their class, which decides what
//! delivery does next: retry with backoff, hold the channel for re-authentication, or move the
//! reply to the dead letters.

pub mod adapter;
pub mod discord;
pub mod http;
pub mod imessage;
pub mod registry;
pub mod signal;
pub mod slack;
pub mod supervise;
pub mod telegram;
pub mod webchat;
pub mod webhook;
pub mod whatsapp;

pub use crate::send::{
    ChannelSender, ErrorClass, Limit, MAX_PLATFORM_DELAY, OutgoingChunk, SendError, Sent, Unit,
    classify_status, parse_retry_after, platform_delay_secs,
};
