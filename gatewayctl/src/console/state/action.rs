//! The operator's actions, as the console hands them to the API task, and the question each
//! destructive or wide one asks before it is sent.

use crate::model::{Address, Channel};

/// Which dead letters an action covers: the DeadLetterSelector of RetryDeadLetters and
/// DropDeadLetters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Letters {
    /// These ids, in the table's order.
    Ids(Vec<i64>),
    /// Every dead letter of this channel (also those not loaded or hidden by the filter).
    Channel(Channel),
}

impl Letters {
    /// "dead letter 7", "3 dead letters", "all http dead letters".
    pub fn describe(&self) -> String {
        match self {
            Letters::Ids(ids) => match ids.as_slice() {
                [id] => format!("dead letter {id}"),
                ids => format!("{} dead letters", ids.len()),
            },
            Letters::Channel(c) => format!("all {} dead letters", c.name()),
        }
    }
}

/// What a link joins to the user that stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOther {
    /// Another user, merged in (LinkIdentities `merge_user_id`).
    User(i64),
    /// One address, moved over (LinkIdentities `address`).
    Address(Address),
}

/// An operator action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    EvictSession { key: String },
    RetryDeadLetters { letters: Letters },
    DropDeadLetters { letters: Letters },
    ReconnectChannel { channel: Channel },
    UnlinkAddress { address: Address },
    LinkIdentities { user_id: i64, other: LinkOther },
    RunWorkflow { name: String, inputs_json: String },
    BlockUser { user_id: i64 },
    UnblockUser { user_id: i64 },
    ApprovePairing { code: String },
    DenyPairing { code: String },
}

impl Action {
    /// The confirmation question for a destructive or wide action; None when it needs none.
    pub fn question(&self) -> Option<String> {
        match self {
            Action::EvictSession { key } => Some(format!("Evict {key}?")),
            Action::DropDeadLetters { letters } => Some(format!("Drop {}?", letters.describe())),
            Action::RetryDeadLetters {
                letters: letters @ Letters::Channel(_),
            } => Some(format!("Retry {}?", letters.describe())),
            Action::UnlinkAddress { address } => Some(format!("Unlink {address}?")),
            Action::LinkIdentities {
                user_id,
                other: LinkOther::User(merge),
            } => Some(format!("Merge user {merge} into user {user_id}?")),
            Action::LinkIdentities {
                user_id,
                other: LinkOther::Address(address),
            } => Some(format!("Move {address} to user {user_id}?")),
            Action::ReconnectChannel { channel } => Some(format!("Reconnect {}?", channel.name())),
            Action::BlockUser { user_id } => Some(format!("Block user {user_id}?")),
            Action::ApprovePairing { code } => Some(format!("Approve pairing request {code}?")),
            Action::DenyPairing { code } => Some(format!("Deny pairing request {code}?")),
            // Retrying chosen letters and starting a run destroy nothing: they act at once.
            Action::RetryDeadLetters {
                letters: Letters::Ids(_),
            }
            | Action::RunWorkflow { .. }
            | Action::UnblockUser { .. } => None,
        }
    }
}
