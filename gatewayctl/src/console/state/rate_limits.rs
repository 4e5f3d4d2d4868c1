//! The Rate limits tab: each channel's bucket and its hottest chats, refreshed every second
//! while it is shown. It has no keys of its own.

use super::data::ChannelLimits;

/// The Rate limits tab.
#[derive(Debug, Clone, Default)]
pub struct RateLimitsTab {
    pub channels: Vec<ChannelLimits>,
    pub loaded: bool,
    pub now_ms: i64,
}

impl RateLimitsTab {
    /// Takes a fetch's answer.
    pub fn replace(&mut self, channels: Vec<ChannelLimits>) {
        self.channels = channels;
        self.loaded = true;
    }
}
