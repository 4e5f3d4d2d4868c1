//! A cluster of real `gatewayd` processes on one PostgreSQL database, for the multi-instance
//! tests: [`ClusterRig::start`] creates one fresh database on the cluster of
//! `GATEWAY_TEST_PG_URL` and starts `n` daemons on it, each with its own temporary directory, a
//! fixed loopback HTTP port (so a restarted instance is reached where the others recorded it),
//! `[cluster] enabled = true`, `instance_id = "gw-<i>"` and a shared relay secret.
//!
//! Each instance is a [`Gateway`]: [`kill`](ClusterRig::kill) is `kill -9`,
//! [`stop`](ClusterRig::stop) SIGTERM, [`pause`](ClusterRig::pause) / [`resume`](ClusterRig::resume)
//! SIGSTOP / SIGCONT, [`restart`](ClusterRig::restart) starts it again on the same directory and
//! port. The rig reads the shared state straight from the database (the `leases` and
//! `cluster_instances` tables, by the database server's clock) and each instance's `/metrics`.
//!
//! The cluster tests need PostgreSQL whatever `GATEWAY_TEST_STORE` says: [`skip_reason`] tells a
//! test to skip (with the reason printed) when `GATEWAY_TEST_PG_URL` is unset, or in the
//! PostgreSQL pass of `tests/run.sh` (`GATEWAY_TEST_SKIP_CLUSTER`), which would only repeat them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::gateway::{DATABASE_URL_ENV, Gateway, GatewayOptions, toml_string};
use crate::pg::{CLUSTER_ENV, StoreChoice, TestDatabase};

/// The environment variable holding the instances' shared relay secret.
pub const SECRET_ENV: &str = "GATEWAY_CLUSTER_SECRET";
/// Set (to anything but empty) by the PostgreSQL pass of `tests/run.sh`: the cluster tests ran in
/// the first pass already, on the same PostgreSQL.
pub const SKIP_ENV: &str = "GATEWAY_TEST_SKIP_CLUSTER";
/// The lease-name prefix of a session partition.
pub const PARTITION_PREFIX: &str = "part:";

/// Why the cluster tests do not run here, if they do not: this is the second pass of
/// `tests/run.sh` (they ran in the first). A test prints it and returns. Without
/// `GATEWAY_TEST_PG_URL` it panics, saying so: a cluster test never passes without running.
pub fn skip_reason() -> Option<String> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return Some(format!(
            "{SKIP_ENV} is set: the cluster tests ran in the first pass on the same PostgreSQL"
        ));
    }
    match std::env::var(CLUSTER_ENV) {
        Ok(url) if !url.trim().is_empty() => None,
        // Never a silent pass: without the database the test fails saying what it needs.
        _ => panic!(
            "{CLUSTER_ENV} is not set: the cluster tests need a PostgreSQL cluster they may \
             create a database on (tests/run.sh starts one)"
        ),
    }
}

/// Returns from the calling test with a printed reason when [`skip_reason`] says so.
#[macro_export]
macro_rules! skip_without_cluster_pg {
    () => {
        if let Some(reason) = $crate::cluster::skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// The `[cluster]` timing and shape every instance of a rig shares.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `cluster.partitions`.
    pub partitions: u32,
    /// `cluster.lease_ttl`, as the config spells it (`"3s"`).
    pub lease_ttl: String,
    /// `cluster.renew_interval`, as the config spells it (`"1s"`).
    pub renew_interval: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            partitions: 16,
            lease_ttl: "2s".to_owned(),
            renew_interval: "500ms".to_owned(),
        }
    }
}

/// One row of the `leases` table, with the database clock it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `part:<n>`, `conn:<channel>`, `singleton:<job>`.
    pub name: String,
    /// The holder, `None` once released.
    pub owner: Option<String>,
    /// Grows by one on every change of holder.
    pub epoch: i64,
    /// Server ms at which it lapses unless renewed.
    pub expires_at_ms: i64,
    /// Server ms when it was read.
    pub now_ms: i64,
}

impl Lease {
    /// Held by someone and not expired at the time it was read.
    pub fn live(&self) -> bool {
        self.owner.is_some() && self.expires_at_ms > self.now_ms
    }

    /// The partition number of a `part:<n>` lease.
    pub fn partition(&self) -> Option<u32> {
        self.name.strip_prefix(PARTITION_PREFIX)?.parse().ok()
    }
}

/// One row of `cluster_instances`, with the database clock it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `cluster.instance_id`.
    pub instance_id: String,
    /// Server ms of its last heartbeat.
    pub heartbeat_at_ms: i64,
    /// What it advertised for the relay.
    pub advertise_url: Option<String>,
    /// It announced it is leaving.
    pub leaving: bool,
    /// Server ms when it was read.
    pub now_ms: i64,
}

/// A `/metrics` scrape: every sample by its full name with labels (`name{a="b"}`).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<(String, String, f64)>,
}

impl Metrics {
    /// Parses the Prometheus text format; comment and malformed lines are skipped.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n.to_owned(), l.trim_end_matches('}').to_owned()),
                None => (series.trim().to_owned(), String::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics { samples }
    }

    /// The sum of every sample of `name` (any labels); `None` when it has none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for (n, _, v) in &self.samples {
            if n == name {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// The sum of the samples of `name` whose labels contain `label` (e.g. `outcome="sent"`).
    pub fn sum_with(&self, name: &str, label: &str) -> Option<f64> {
        let mut found = None;
        for (n, l, v) in &self.samples {
            if n == name && l.split(',').any(|part| part.trim() == label) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

/// A connection to the rig's database for reading the shared state.
struct Db {
    client: tokio_postgres::Client,
    conn: JoinHandle<()>,
}

/// `n` `gatewayd` instances on one fresh PostgreSQL database.
pub struct ClusterRig {
    instances: Vec<Gateway>,
    ports: Vec<u16>,
    options: ClusterOptions,
    db: Db,
    url: String,
    // Dropped last: the daemons are killed (their `Drop`) before the database goes.
    database: TestDatabase,
}

impl std::fmt::Debug for ClusterRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRig")
            .field("database", &self.database.name())
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

impl Drop for ClusterRig {
    fn drop(&mut self) {
        // SIGCONT first: a paused daemon cannot act on the SIGKILL its `Drop` sends until it runs.
        for gw in &self.instances {
            if let Some(pid) = gw.pid() {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
        }
        self.instances.clear();
        self.db.conn.abort();
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local_addr")?.port())
}

/// The id of instance `i`.
pub fn instance_id(i: usize) -> String {
    format!("gw-{i}")
}

impl ClusterRig {
    /// Creates a database and starts `n` instances on it with the default [`ClusterOptions`];
    /// `opts(i)` gives instance `i`'s options (its channels, agent, …). The rig sets the store,
    /// the `[cluster]` table, `http.listen` and the secret itself: `opts` must not set `[store]`,
    /// `[cluster]` or an `[http] listen`.
    pub async fn start(
        n: usize,
        opts: impl FnMut(usize) -> GatewayOptions,
    ) -> anyhow::Result<ClusterRig> {
        ClusterRig::start_with(n, ClusterOptions::default(), opts).await
    }

    /// [`start`](Self::start) with the given [`ClusterOptions`]. The instances start one after
    /// the other (each waits for its ready line), so gw-0 has joined before gw-1 starts.
    pub async fn start_with(
        n: usize,
        options: ClusterOptions,
        mut opts: impl FnMut(usize) -> GatewayOptions,
    ) -> anyhow::Result<ClusterRig> {
        let database = TestDatabase::create().await?;
        let url = database.url(None)?;
        let (client, connection) = tokio::time::timeout(
            crate::TIMEOUT,
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await
        .context("connecting to the rig's database timed out")?
        .context("connecting to the rig's database")?;
        let conn = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut rig = ClusterRig {
            instances: Vec::with_capacity(n),
            ports: Vec::with_capacity(n),
            options,
            db: Db { client, conn },
            url,
            database,
        };
        for i in 0..n {
            rig.add_instance(opts(i)).await?;
        }
        Ok(rig)
    }

    /// Starts one more instance (`gw-<len>`) on the rig's database.
    pub async fn add_instance(&mut self, opts: GatewayOptions) -> anyhow::Result<usize> {
        let i = self.instances.len();
        let port = free_port()?;
        let opts = self.instance_options(i, port, opts);
        let gw = Gateway::start(opts)
            .await
            .with_context(|| format!("starting {}", instance_id(i)))?;
        self.instances.push(gw);
        self.ports.push(port);
        Ok(i)
    }

    /// The relay secret every instance shares (`cluster.secret_env`).
    pub fn secret(&self) -> String {
        format!("rig-secret-{}", self.database.name())
    }

    fn instance_options(&self, i: usize, port: u16, mut opts: GatewayOptions) -> GatewayOptions {
        let secret = self.secret();
        let ClusterOptions {
            partitions,
            lease_ttl,
            renew_interval,
        } = &self.options;
        let advertise = format!("http://127.0.0.1:{port}");
        let mut extra = opts.extra_config.trim_end().to_owned();
        extra.push_str(&format!(
            "\n\n[store]\nbackend = \"postgres\"\nurl_env = \"{DATABASE_URL_ENV}\"\n\
             \n[cluster]\nenabled = true\ninstance_id = {}\npartitions = {partitions}\n\
             lease_ttl = {}\nrenew_interval = {}\nadvertise_url = {}\nsecret_env = \"{SECRET_ENV}\"\n",
            toml_string(&instance_id(i)),
            toml_string(lease_ttl),
            toml_string(renew_interval),
            toml_string(&advertise),
        ));
        opts.extra_config = extra;
        let mut http = format!("listen = \"127.0.0.1:{port}\"\n");
        http.push_str(&opts.http_extra);
        opts.http_extra = http;
        opts.store = StoreChoice::Sqlite;
        opts.env
            .push((DATABASE_URL_ENV.to_owned(), self.url.clone()));
        opts.env.push((SECRET_ENV.to_owned(), secret));
        opts
    }

    /// How many instances the rig has (running or not).
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the rig has no instance.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The [`ClusterOptions`] every instance runs with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Instance `i`.
    ///
    /// # Panics
    /// When there is no instance `i`.
    pub fn gw(&self, i: usize) -> &Gateway {
        &self.instances[i]
    }

    /// Instance `i`, mutably.
    ///
    /// # Panics
    /// When there is no instance `i`.
    pub fn gw_mut(&mut self, i: usize) -> &mut Gateway {
        &mut self.instances[i]
    }

    /// Every instance.
    pub fn instances(&self) -> &[Gateway] {
        &self.instances
    }

    /// The index of the instance called `id` (`gw-<i>`).
    pub fn index_of(&self, id: &str) -> Option<usize> {
        let i: usize = id.strip_prefix("gw-")?.parse().ok()?;
        (i < self.instances.len()).then_some(i)
    }

    /// The rig's database (the same one every instance uses).
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// The database's URL.
    pub fn database_url(&self) -> &str {
        &self.url
    }

    /// `kill -9` of instance `i`, waited for.
    pub async fn kill(&mut self, i: usize) {
        self.instances[i].kill().await;
    }

    /// SIGTERM to instance `i`, waiting for its exit (an error when it did not exit cleanly in
    /// time).
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let status = self.instances[i].stop().await?;
        anyhow::ensure!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            instance_id(i),
            self.instances[i].stderr_tail(40)
        );
        Ok(())
    }

    /// SIGSTOP to instance `i`: it stays alive and holds its sockets but runs nothing.
    pub async fn pause(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "STOP").await
    }

    /// SIGCONT to instance `i`.
    pub async fn resume(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "CONT").await
    }

    async fn signal(&self, i: usize, sig: &str) -> anyhow::Result<()> {
        let pid = self.instances[i]
            .pid()
            .with_context(|| format!("{} is not running", instance_id(i)))?;
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .await
            .with_context(|| format!("running `kill -{sig} {pid}`"))?;
        anyhow::ensure!(status.success(), "`kill -{sig} {pid}` failed with {status}");
        Ok(())
    }

    /// Starts instance `i` again (SIGKILLed first if it still runs), on its directory, config
    /// and port.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.instances[i]
            .restart()
            .await
            .with_context(|| format!("restarting {}", instance_id(i)))
    }

    /// Whether instance `i`'s process is running (paused counts as running).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.instances[i].is_running()
    }

    /// A scrape of instance `i`'s `/metrics`.
    pub async fn metrics(&self, i: usize) -> anyhow::Result<Metrics> {
        let reply = self.instances[i].get("/metrics").await?;
        anyhow::ensure!(
            reply.status == 200,
            "{} /metrics answered {}: {}",
            instance_id(i),
            reply.status,
            reply.text
        );
        Ok(Metrics::parse(&reply.text))
    }

    /// The sum of `name` on instance `i` (0 when it has no sample yet).
    pub async fn metric(&self, i: usize, name: &str) -> anyhow::Result<f64> {
        Ok(self.metrics(i).await?.sum(name).unwrap_or(0.0))
    }

    /// Runs `sql` (no parameters) on the rig's database and returns the rows.
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<tokio_postgres::Row>> {
        tokio::time::timeout(crate::TIMEOUT, self.db.client.query(sql, &[]))
            .await
            .with_context(|| format!("`{sql}` timed out"))?
            .with_context(|| format!("`{sql}`"))
    }

    /// Runs `sql` (statements without parameters) on the rig's database.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        tokio::time::timeout(crate::TIMEOUT, self.db.client.batch_execute(sql))
            .await
            .with_context(|| format!("`{sql}` timed out"))?
            .with_context(|| format!("`{sql}`"))
    }

    /// Every lease row, by name, with the server's clock (empty before the first instance
    /// created the table).
    pub async fn leases(&self) -> anyhow::Result<Vec<Lease>> {
        let rows = self
            .query("SELECT name, owner, epoch, expires_at, gw_now_ms() FROM leases ORDER BY name")
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    name: r.try_get(0)?,
                    owner: r.try_get(1)?,
                    epoch: r.try_get(2)?,
                    expires_at_ms: r.try_get(3)?,
                    now_ms: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// The `part:<n>` leases, by partition number.
    pub async fn partition_leases(&self) -> anyhow::Result<BTreeMap<u32, Lease>> {
        Ok(self
            .leases()
            .await?
            .into_iter()
            .filter_map(|l| Some((l.partition()?, l)))
            .collect())
    }

    /// The live holder of each partition that has one.
    pub async fn partition_owners(&self) -> anyhow::Result<BTreeMap<u32, String>> {
        Ok(self
            .partition_leases()
            .await?
            .into_iter()
            .filter(|(_, l)| l.live())
            .filter_map(|(p, l)| Some((p, l.owner?)))
            .collect())
    }

    /// How many partitions each instance holds live (instances with none are absent).
    pub async fn owned_counts(&self) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for owner in self.partition_owners().await?.into_values() {
            *counts.entry(owner).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// The live holder of the `conn:<channel>` (or any other) lease `name`.
    pub async fn lease_owner(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .leases()
            .await?
            .into_iter()
            .find(|l| l.name == name && l.live())
            .and_then(|l| l.owner))
    }

    /// Every row of `cluster_instances`, with the server's clock.
    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        let rows = self
            .query(
                "SELECT instance_id, heartbeat_at, advertise_url, leaving, gw_now_ms()
                 FROM cluster_instances ORDER BY instance_id",
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    instance_id: r.try_get(0)?,
                    heartbeat_at_ms: r.try_get(1)?,
                    advertise_url: r.try_get(2)?,
                    leaving: r.try_get(3)?,
                    now_ms: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// The partition the inbox row of `(channel, chat_id)` was committed in, if a row has one
    /// (the newest row of that chat).
    pub async fn inbox_partition(
        &self,
        channel: &str,
        chat_id: &str,
    ) -> anyhow::Result<Option<u32>> {
        let rows = tokio::time::timeout(
            crate::TIMEOUT,
            self.db.client.query(
                "SELECT partition FROM inbox WHERE channel = $1 AND chat_id = $2
                 AND partition IS NOT NULL ORDER BY id DESC LIMIT 1",
                &[&channel, &chat_id],
            ),
        )
        .await
        .context("reading the inbox partition timed out")?
        .context("reading the inbox partition")?;
        match rows.first() {
            Some(r) => {
                let p: i32 = r.try_get(0)?;
                Ok(Some(u32::try_from(p).context("negative partition")?))
            }
            None => Ok(None),
        }
    }

    /// Waits until every partition is held live by one of `live` (instance indexes), and the
    /// counts differ by at most one between them (spread evenly); returns the owners.
    pub async fn wait_balanced(
        &self,
        live: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<u32, String>> {
        let want: Vec<String> = live.iter().map(|&i| instance_id(i)).collect();
        let partitions = self.options.partitions as usize;
        let last = std::cell::RefCell::new(BTreeMap::new());
        let found = wait_until(timeout, "every partition is owned evenly", || async {
            let Ok(owners) = self.partition_owners().await else {
                return false;
            };
            *last.borrow_mut() = owners.clone();
            if owners.len() != partitions || owners.values().any(|o| !want.contains(o)) {
                return false;
            }
            let mut counts: BTreeMap<&str, usize> = want.iter().map(|w| (w.as_str(), 0)).collect();
            for o in owners.values() {
                *counts.entry(o.as_str()).or_insert(0) += 1;
            }
            let max = counts.values().copied().max().unwrap_or(0);
            let min = counts.values().copied().min().unwrap_or(0);
            max - min <= 1
        })
        .await;
        let last = last.into_inner();
        match found {
            Ok(()) => Ok(last),
            Err(e) => Err(e.context(format!("last owners seen: {last:?}"))),
        }
    }

    /// After `victim` was killed at `killed_at` holding `before` (partition → epoch): waits until
    /// each of those partitions is held live, by another instance, at a higher epoch. Returns
    /// how long after `killed_at` that was.
    pub async fn wait_reowned(
        &self,
        victim: usize,
        before: &BTreeMap<u32, i64>,
        killed_at: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let victim = instance_id(victim);
        wait_until(
            timeout,
            "the victim's partitions are owned again",
            || async {
                let Ok(leases) = self.partition_leases().await else {
                    return false;
                };
                before.iter().all(|(p, epoch)| {
                    leases.get(p).is_some_and(|l| {
                        l.live() && l.epoch > *epoch && l.owner.as_deref() != Some(victim.as_str())
                    })
                })
            },
        )
        .await?;
        Ok(killed_at.elapsed())
    }

    /// The partitions instance `i` holds live, with their epochs.
    pub async fn held_by(&self, i: usize) -> anyhow::Result<BTreeMap<u32, i64>> {
        let id = instance_id(i);
        Ok(self
            .partition_leases()
            .await?
            .into_iter()
            .filter(|(_, l)| l.live() && l.owner.as_deref() == Some(id.as_str()))
            .map(|(p, l)| (p, l.epoch))
            .collect())
    }

    /// The last `n` lines of every instance's log, headed by its id, for a failure message.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for (i, gw) in self.instances.iter().enumerate() {
            out.push_str(&format!("--- {} stderr.log (tail) ---\n", instance_id(i)));
            out.push_str(&gw.stderr_tail(n));
            out.push('\n');
        }
        out
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes (then an error naming
/// `what`). For the shared state in another process's database, which has no notification.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    crate::poll_until_async(timeout, what, check).await
}

/// The median and the maximum of `samples` (`None` when empty).
pub fn p50_max(samples: &[Duration]) -> Option<(Duration, Duration)> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let max = *sorted.last()?;
    Some((sorted[(sorted.len() - 1) / 2], max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metrics() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE a counter\na 3\nb{outcome=\"sent\"} 2\nb{outcome=\"none\"} 5\n\
             c{k=\"v\",outcome=\"sent\"} 1.5\nbroken line\n",
        );
        assert_eq!(m.sum("a"), Some(3.0));
        assert_eq!(m.sum("b"), Some(7.0));
        assert_eq!(m.sum_with("b", "outcome=\"sent\""), Some(2.0));
        assert_eq!(m.sum_with("c", "outcome=\"sent\""), Some(1.5));
        assert_eq!(m.sum("missing"), None);
    }

    #[test]
    fn reads_partition_leases() {
        let l = Lease {
            name: "part:7".to_owned(),
            owner: Some("gw-1".to_owned()),
            epoch: 3,
            expires_at_ms: 10,
            now_ms: 9,
        };
        assert_eq!(l.partition(), Some(7));
        assert!(l.live());
        let expired = Lease {
            now_ms: 10,
            ..l.clone()
        };
        assert!(!expired.live());
        let conn = Lease {
            name: "conn:telegram".to_owned(),
            ..l
        };
        assert_eq!(conn.partition(), None);
    }

    #[test]
    fn median_and_max() {
        let ms = Duration::from_millis;
        assert_eq!(p50_max(&[]), None);
        assert_eq!(p50_max(&[ms(3), ms(1), ms(2)]), Some((ms(2), ms(3))));
        assert_eq!(p50_max(&[ms(4), ms(1)]), Some((ms(1), ms(4))));
    }
}
