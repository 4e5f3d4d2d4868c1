//! `gatewayctl ratelimits`: the outbound rate-limit buckets — each channel's channel-wide
//! bucket and its hottest per-chat buckets, with tokens left, sends waiting, times throttled
//! and platform-requested pauses.

use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{Channel, channel_or};
use crate::output::{Format, Out, Table, ago, now_ms, text, time};

/// One GCRA bucket in JSON.
#[derive(Debug, Serialize)]
struct Bucket {
    /// The chat; null for the channel-wide bucket.
    chat_id: Option<String>,
    per_second: f64,
    burst: u32,
    tokens: f64,
    queued: u64,
    throttled: u64,
    paused_until_at_ms: Option<i64>,
}

impl Bucket {
    fn from_pb(b: &pb::Bucket) -> Self {
        Self {
            chat_id: text(&b.chat_id),
            per_second: b.per_second,
            burst: b.burst,
            tokens: b.tokens,
            queued: b.queued,
            throttled: b.throttled,
            paused_until_at_ms: time(b.paused_until_ms),
        }
    }
}

/// One channel's buckets in JSON.
#[derive(Debug, Serialize)]
struct ChannelLimits {
    channel: Option<Channel>,
    throttled_total: u64,
    channel_bucket: Option<Bucket>,
    chats: Vec<Bucket>,
}

/// `ratelimits` in JSON.
#[derive(Debug, Serialize)]
struct RateLimits {
    channels: Vec<ChannelLimits>,
}

/// Runs `ratelimits`.
pub async fn run(mut api: Api, format: Format, hottest: Option<u32>) -> anyhow::Result<()> {
    let r = api
        .client
        .list_rate_limits(pb::ListRateLimitsRequest {
            hottest: hottest.unwrap_or(0),
        })
        .await
        .map_err(|s| api.error(s))?
        .into_inner();
    let limits = RateLimits {
        channels: r
            .channels
            .iter()
            .map(|c| ChannelLimits {
                channel: Channel::from_pb(&c.channel),
                throttled_total: c.throttled_total,
                channel_bucket: c.channel_bucket.as_ref().map(Bucket::from_pb),
                chats: c.chats.iter().map(Bucket::from_pb).collect(),
            })
            .collect(),
    };
    let out = Out;
    if format == Format::Json {
        return out.json(&limits);
    }
    let now = now_ms();
    let mut t = Table::new(&[
        "CHANNEL",
        "CHAT",
        "RATE/S",
        "BURST",
        "TOKENS",
        "QUEUED",
        "THROTTLED",
        "PAUSED",
    ]);
    for c in &limits.channels {
        let name = channel_or(c.channel.as_ref(), "?").to_owned();
        if c.channel_bucket.is_none() && c.chats.is_empty() {
            t.row(vec![
                name,
                "(no buckets)".to_owned(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                c.throttled_total.to_string(),
            ]);
            continue;
        }
        for (chat, b) in c
            .channel_bucket
            .iter()
            .map(|b| ("(channel)".to_owned(), b))
            .chain(
                c.chats
                    .iter()
                    .map(|b| (b.chat_id.clone().unwrap_or_default(), b)),
            )
        {
            t.row(vec![
                name.clone(),
                chat,
                format!("{:.2}", b.per_second),
                b.burst.to_string(),
                format!("{:.1}", b.tokens),
                b.queued.to_string(),
                b.throttled.to_string(),
                b.paused_until_at_ms.map_or("-".to_owned(), |p| ago(p, now)),
            ]);
        }
    }
    if t.is_empty() {
        return out.line("no channels enabled");
    }
    out.table(&t)
}
