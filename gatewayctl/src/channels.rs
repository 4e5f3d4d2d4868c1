//! `gatewayctl channels`: every enabled channel's health and counters, and reconnecting one
//! (lifts a credentials hold and probes it; on success its dead letters are retried).

use clap::Subcommand;
use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{Channel, ChannelInfo, channels_table};
use crate::output::{Format, Out, now_ms};

/// `channels …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List every enabled channel with its health and counters.
    List,
    /// Lift a credentials hold and probe the channel.
    Reconnect {
        /// The channel, e.g. `telegram`.
        #[arg(value_name = "CHANNEL")]
        channel: Channel,
    },
}

/// `channels list` in JSON.
#[derive(Debug, Serialize)]
struct ChannelList {
    channels: Vec<ChannelInfo>,
}

/// Runs `channels …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    let out = Out;
    let channels = match cmd {
        Cmd::List => {
            let r = api
                .client
                .list_channels(pb::ListChannelsRequest {})
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            let list = ChannelList {
                channels: r.channels.iter().map(ChannelInfo::from_pb).collect(),
            };
            if format == Format::Json {
                return out.json(&list);
            }
            list.channels
        }
        Cmd::Reconnect { channel } => {
            let r = api
                .client
                .reconnect_channel(pb::ReconnectChannelRequest {
                    channel: channel.to_pb(),
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            let info = r
                .channel
                .as_ref()
                .map(ChannelInfo::from_pb)
                .ok_or_else(|| {
                    anyhow::anyhow!("gatewayd sent no state for channel {}", channel.name())
                })?;
            if format == Format::Json {
                return out.json(&info);
            }
            out.line(format!(
                "{} is {} after the reconnect",
                channel.name(),
                info.state.name()
            ))?;
            vec![info]
        }
    };
    if channels.is_empty() {
        return out.line("no channels enabled");
    }
    out.table(&channels_table(&channels, now_ms()))
}
