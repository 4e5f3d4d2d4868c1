//! What the store keeps and for how long ([`Retention`]), and what it reports about its
//! size and contents ([`StorageStats`]).

/// The database's size and contents, as `gatewayctl status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Bytes on disk: the database file and its write-ahead log.
    pub database_bytes: u64,
    /// Rows per table, as counted by the last prune pass (or at start), in table order.
    pub table_rows: Vec<(String, u64)>,
    /// When those rows were counted, ms since the epoch (0: not yet).
    pub counted_at_ms: i64,
}

/// What the store prunes, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Done inbox rows and delivered or dropped outbox rows older than this are pruned.
    pub dedupe_window: std::time::Duration,
    /// Transcript entries older than this are pruned (`None`: kept forever), except each
    /// session's last `history_window` entries.
    pub transcript: Option<std::time::Duration>,
    /// Entries of each session that are never pruned (`gateway.history_window`).
    pub history_window: usize,
    /// How often a prune pass runs.
    pub interval: std::time::Duration,
    /// Most rows one prune transaction deletes.
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            dedupe_window: std::time::Duration::from_secs(7 * 86_400),
            transcript: None,
            history_window: 20,
            interval: std::time::Duration::from_secs(300),
            batch: 1000,
        }
    }
}
