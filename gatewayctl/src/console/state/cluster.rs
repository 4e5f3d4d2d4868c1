//! The Cluster tab: the cluster's instances with their heartbeats, state and what each holds,
//! refreshed every second while it is shown (heartbeat ages change without events). Only the
//! movement keys and the `/` filter.

use ratatui::crossterm::event::KeyCode;

use super::TabIntent;
use super::list::{Filterable, List, movement};
use crate::model::{Cluster, ClusterMember};

/// The Cluster tab.
#[derive(Debug, Clone, Default)]
pub struct ClusterTab {
    pub list: List<ClusterMember>,
    /// The last answer without its instances (they are in `list`); `None` before one.
    pub cluster: Option<Cluster>,
    pub now_ms: i64,
}

impl ClusterTab {
    /// Takes a fetch's answer.
    pub fn replace(&mut self, mut cluster: Cluster) {
        let members = std::mem::take(&mut cluster.instances);
        self.cluster = Some(cluster);
        self.list.replace(members);
    }

    /// The line above the table: the whole cluster at a glance.
    pub fn summary(&self) -> String {
        match &self.cluster {
            None => String::new(),
            Some(c) => {
                let live = self.list.items.iter().filter(|i| i.live).count();
                let whole = Cluster {
                    instances: Vec::new(),
                    ..c.clone()
                };
                if !c.enabled {
                    return whole.summary();
                }
                format!(
                    "this instance {}; {live} live of {}; {} partitions, {} unowned",
                    c.instance_id.as_deref().unwrap_or("?"),
                    self.list.items.len(),
                    c.partitions,
                    c.unowned_partitions,
                )
            }
        }
    }

    /// The tab's keys: movement only.
    pub fn update_input(&mut self, code: KeyCode) -> TabIntent {
        if let Some(delta) = movement(code) {
            self.list.step(delta);
        }
        TabIntent::None
    }
}

impl Filterable for ClusterMember {
    fn haystack(&self) -> String {
        format!(
            "{} {} {}",
            self.instance_id,
            self.state(),
            self.leases.join(" ")
        )
    }
}
