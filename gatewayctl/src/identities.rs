//! `gatewayctl identities`: list people and their addresses, show one, link two people (or an
//! address to a person), and split an address off into a person of its own.

use clap::{ArgGroup, Subcommand};
use gateway_proto::admin as pb;
use serde::Serialize;

use crate::client::Api;
use crate::model::{Address, Channel, channel_filter};
use crate::output::{Format, Out, Table, text};

/// `identities …`.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// List users and their addresses, by id.
    List {
        /// Only users with an address on this channel.
        #[arg(long, value_name = "CHANNEL")]
        channel: Option<Channel>,
        /// Most users per page (server default 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start after this cursor (the `next_cursor` of the previous page).
        #[arg(long, value_name = "C")]
        cursor: Option<String>,
    },
    /// Show one user and their addresses.
    Show {
        /// The user id.
        user_id: i64,
    },
    /// Merge another user into USER_ID, or attach an address to USER_ID.
    #[command(
        group(ArgGroup::new("other").required(true).args(["user", "address"])),
        override_usage = "gatewayctl identities link <USER_ID> --user <OTHER_ID>\n       \
                          gatewayctl identities link <USER_ID> --address <CHANNEL:SENDER_ID>"
    )]
    Link {
        /// The user that remains.
        user_id: i64,
        /// Merge this user (all their addresses and history) into USER_ID.
        #[arg(long, value_name = "OTHER_ID")]
        user: Option<i64>,
        /// Move this address to USER_ID (created if unknown), e.g. `http:alice`.
        #[arg(long, value_name = "CHANNEL:SENDER_ID")]
        address: Option<Address>,
    },
    /// Split an address off into a user of its own; the history stays behind.
    Unlink {
        /// The address, e.g. `http:alice`.
        #[arg(value_name = "CHANNEL:SENDER_ID")]
        address: Address,
    },
    /// Block a user: their messages are stored as blocked, never answered.
    Block {
        /// The user id.
        user_id: i64,
    },
    /// Unblock a user.
    Unblock {
        /// The user id.
        user_id: i64,
    },
}

/// `identities block` / `unblock` in JSON.
#[derive(Debug, Serialize)]
struct Blocked {
    user_id: i64,
    blocked: bool,
}

/// One user in JSON.
#[derive(Debug, Serialize)]
pub struct Identity {
    user_id: i64,
    addresses: Vec<Address>,
}

impl Identity {
    fn from_pb(i: &pb::Identity) -> Self {
        Self {
            user_id: i.user_id,
            addresses: i.addresses.iter().filter_map(Address::from_pb).collect(),
        }
    }

    fn addresses(&self) -> String {
        let all: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        all.join(", ")
    }
}

/// `identities list` in JSON.
#[derive(Debug, Serialize)]
struct IdentityList {
    identities: Vec<Identity>,
    next_cursor: Option<String>,
}

/// `identities unlink` in JSON.
#[derive(Debug, Serialize)]
struct Unlinked {
    address: Address,
    previous_user_id: i64,
    new_user_id: i64,
}

/// Runs `identities …`.
pub async fn run(mut api: Api, format: Format, cmd: Cmd) -> anyhow::Result<()> {
    let out = Out;
    match cmd {
        Cmd::List {
            channel,
            limit,
            cursor,
        } => {
            let page = api
                .client
                .list_identities(pb::ListIdentitiesRequest {
                    cursor: cursor.unwrap_or_default(),
                    limit: limit.unwrap_or(0),
                    channel: channel_filter(channel.as_ref()),
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            let list = IdentityList {
                identities: page.identities.iter().map(Identity::from_pb).collect(),
                next_cursor: text(&page.next_cursor),
            };
            if format == Format::Json {
                return out.json(&list);
            }
            let mut t = Table::new(&["USER", "ADDRESSES"]);
            for i in &list.identities {
                t.row(vec![i.user_id.to_string(), i.addresses()]);
            }
            if t.is_empty() {
                out.line("no users")?;
            } else {
                out.table(&t)?;
            }
            if let Some(next) = list.next_cursor {
                out.line(format!("more: --cursor {next}"))?;
            }
            Ok(())
        }
        Cmd::Show { user_id } => {
            let r = api
                .client
                .get_identity(pb::GetIdentityRequest { user_id })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            print_identity(format, r.identity.as_ref(), user_id)
        }
        Cmd::Link {
            user_id,
            user,
            address,
        } => {
            let other = match (user, address) {
                (Some(merge), _) => pb::link_identities_request::Other::MergeUserId(merge),
                (None, Some(a)) => pb::link_identities_request::Other::Address(a.to_pb()),
                (None, None) => anyhow::bail!("say what to link: --user OTHER_ID or --address"),
            };
            let r = api
                .client
                .link_identities(pb::LinkIdentitiesRequest {
                    user_id,
                    other: Some(other),
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            print_identity(format, r.identity.as_ref(), user_id)
        }
        Cmd::Unlink { address } => {
            let r = api
                .client
                .unlink_address(pb::UnlinkAddressRequest {
                    address: Some(address.to_pb()),
                })
                .await
                .map_err(|s| api.error(s))?
                .into_inner();
            let u = Unlinked {
                address,
                previous_user_id: r.previous_user_id,
                new_user_id: r.new_user_id,
            };
            if format == Format::Json {
                return out.json(&u);
            }
            out.line(format!(
                "unlinked {}: now user {}; the shared history stays with user {}",
                u.address, u.new_user_id, u.previous_user_id
            ))
        }
        Cmd::Block { user_id } | Cmd::Unblock { user_id } => {
            let blocked = matches!(cmd, Cmd::Block { .. });
            if blocked {
                api.client
                    .block_user(pb::BlockUserRequest { user_id })
                    .await
                    .map_err(|s| api.error(s))?;
            } else {
                api.client
                    .unblock_user(pb::UnblockUserRequest { user_id })
                    .await
                    .map_err(|s| api.error(s))?;
            }
            if format == Format::Json {
                return out.json(&Blocked { user_id, blocked });
            }
            out.line(if blocked {
                format!("blocked user {user_id}: their messages are stored, never answered")
            } else {
                format!("unblocked user {user_id}")
            })
        }
    }
}

fn print_identity(
    format: Format,
    identity: Option<&pb::Identity>,
    user_id: i64,
) -> anyhow::Result<()> {
    let identity = identity
        .map(Identity::from_pb)
        .ok_or_else(|| anyhow::anyhow!("gatewayd sent no identity for user {user_id}"))?;
    let out = Out;
    if format == Format::Json {
        return out.json(&identity);
    }
    out.field("user", identity.user_id.to_string())?;
    if identity.addresses.is_empty() {
        return out.field("addresses", "none");
    }
    for (i, a) in identity.addresses.iter().enumerate() {
        out.field(if i == 0 { "addresses" } else { "" }, a.to_string())?;
    }
    Ok(())
}
