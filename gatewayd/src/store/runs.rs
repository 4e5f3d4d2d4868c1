//! Workflow runs as stored: where a run was started from, its state, and the state and
//! output of each of its nodes, so an unfinished run resumes without re-running finished nodes.

use crate::message::{ChannelKind, UserId};

/// Where a workflow run was started from, so `message` nodes can answer there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunOrigin {
    /// The channel.
    pub channel: ChannelKind,
    /// The chat.
    pub chat_id: String,
    /// The user who started it, if known.
    pub user: Option<UserId>,
    /// What started it: `chat`, `operator`, or `agent`.
    pub trigger: String,
}

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Not finished.
    Running,
    /// Every node finished or was skipped.
    Succeeded,
    /// A node failed after its retries.
    Failed,
}

impl RunStatus {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A node's state within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Not started.
    Pending,
    /// Started and not finished (after a crash: to be run again).
    Running,
    /// Finished with an output.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// On a branch not taken.
    Skipped,
}

impl NodeStatus {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            _ => return None,
        })
    }

    /// Whether the node will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped)
    }
}

/// One node of a run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// The node id.
    pub node: String,
    /// Its state.
    pub status: NodeStatus,
    /// Its output, once succeeded.
    pub output: Option<serde_json::Value>,
    /// Its last error.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When it started, ms since the epoch.
    pub started_at_ms: Option<i64>,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run id.
    pub id: i64,
    /// The workflow's name.
    pub workflow: String,
    /// Its inputs.
    pub inputs: serde_json::Value,
    /// Where it was started from.
    pub origin: Option<RunOrigin>,
    /// Its state.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
    /// Its nodes that have a state (in no particular order).
    pub nodes: Vec<NodeRecord>,
}
