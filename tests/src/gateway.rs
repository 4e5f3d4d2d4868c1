//! Process harness for the real `gatewayd` binary: writes a config into a
//! temporary directory, spawns the daemon, waits for its
//! `http listening on 127.0.0.1:PORT` stdout line, and offers kill / graceful
//! stop / restart plus small HTTP helpers against the daemon's listener.
//!
//! The daemon's stderr goes to `<tempdir>/stderr.log` (append mode, so
//! restarts keep earlier output); stdout is captured line by line in memory
//! and can be waited on without polling.
//!
//! The store is SQLite in the data directory, or with `GATEWAY_TEST_STORE=postgres` (or
//! [`GatewayOptions::store`]) a fresh PostgreSQL database per `Gateway` (see [`crate::pg`]),
//! created at [`Gateway::start`] and kept across restarts, so a restarted daemon sees its data.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::pg::{StoreChoice, TestDatabase};
use crate::support::{lock, wait_notified};

/// How long [`Gateway::start`] / [`Gateway::restart`] wait for the listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Gateway::stop`] waits for exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The stdout line prefix announcing the HTTP listener address.
pub const LISTENING_PREFIX: &str = "http listening on ";

/// Extra configuration for [`Gateway::start`].
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// TOML appended after the generated `[gateway]`, `[http]` and `[log]`
    /// tables (e.g. `[agent]`, `[channels.http]`). Must not repeat those three.
    pub extra_config: String,
    /// Lines appended inside the generated `[gateway]` table.
    pub gateway_extra: String,
    /// Lines appended inside the generated `[http]` table.
    pub http_extra: String,
    /// Lines appended inside the generated `[admin]` table.
    pub admin_extra: String,
    /// Lines appended inside the generated `[log]` table.
    pub log_extra: String,
    /// `[log] level`; `"info"` when `None`.
    pub log_level: Option<String>,
    /// Extra environment variables for the daemon (`RUST_LOG` is always
    /// removed first, so it may be set here deliberately).
    pub env: Vec<(String, String)>,
    /// The store backend; [`StoreChoice::FromEnv`] (the default) follows `GATEWAY_TEST_STORE`.
    pub store: StoreChoice,
}

impl GatewayOptions {
    /// Options with only `extra_config` set.
    pub fn with_config(extra_config: impl Into<String>) -> GatewayOptions {
        GatewayOptions {
            extra_config: extra_config.into(),
            ..GatewayOptions::default()
        }
    }

    /// Renders the full `gatewayd.toml` text for the given data directory, with the store
    /// `extra_config` sets (SQLite unless it says otherwise).
    pub fn render_config(&self, data_dir: &Path) -> String {
        self.render_config_with_store(data_dir, None)
    }

    /// [`render_config`](Self::render_config) with the `[store]` keys of `store_keys` merged
    /// into it: into the `[store]` table of `extra_config` unless that sets `backend` or `path`
    /// itself, else as a `[store]` table of their own.
    pub fn render_config_with_store(&self, data_dir: &Path, store_keys: Option<&str>) -> String {
        fn push_block(out: &mut String, block: &str) {
            if !block.trim().is_empty() {
                out.push_str(block.trim_end());
                out.push('\n');
            }
        }
        let level = self.log_level.as_deref().unwrap_or("info");
        let mut out = String::new();
        out.push_str("[gateway]\n");
        out.push_str(&format!(
            "data_dir = {}\n",
            toml_string(&data_dir.to_string_lossy())
        ));
        push_block(&mut out, &self.gateway_extra);
        // An `http_extra` that sets its own `listen` (a fixed port that survives restarts, which
        // other instances of a cluster reach) replaces the ephemeral default.
        if self.http_extra.contains("listen") {
            out.push_str("\n[http]\n");
        } else {
            out.push_str("\n[http]\nlisten = \"127.0.0.1:0\"\n");
        }
        push_block(&mut out, &self.http_extra);
        // An `admin_extra` that sets its own `listen` (a fixed port that survives restarts)
        // replaces the ephemeral default.
        if self.admin_extra.contains("listen") {
            out.push_str("\n[admin]\n");
        } else {
            out.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        }
        push_block(&mut out, &self.admin_extra);
        out.push_str(&format!("\n[log]\nlevel = {}\n", toml_string(level)));
        push_block(&mut out, &self.log_extra);
        // Access control is tested by tests that write their own `[access]`; every other test
        // lets anyone talk to the agent.
        if !self.extra_config.contains("[access]") {
            out.push_str("\n[access]\ndm_policy = \"open\"\n");
        }
        let extra = match store_keys {
            Some(keys) => merge_store_keys(&self.extra_config, keys),
            None => self.extra_config.clone(),
        };
        if !extra.trim().is_empty() {
            out.push('\n');
            push_block(&mut out, &extra);
        }
        out
    }
}

/// The lines of the `[store]` table of `extra` (after its header), if it has one.
fn store_table(extra: &str) -> Option<(usize, Vec<&str>)> {
    let lines: Vec<&str> = extra.lines().collect();
    let header = lines.iter().position(|l| l.trim() == "[store]")?;
    let table = lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['))
        .copied()
        .collect();
    Some((header, table))
}

/// Whether `extra` has a `[store]` table that sets `backend` or `path`: the test chose its store.
fn store_chosen(extra: &str) -> bool {
    store_table(extra).is_some_and(|(_, table)| {
        table.iter().any(|l| {
            let key = l.split('=').next().unwrap_or_default().trim();
            key == "backend" || key == "path"
        })
    })
}

/// The backend the `[store]` table of `extra` sets (`sqlite` when it sets none).
fn chosen_backend(extra: &str) -> &'static str {
    let set = store_table(extra).and_then(|(_, table)| {
        table.iter().find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "backend").then(|| value.trim().trim_matches('"').to_owned())
        })
    });
    if set.as_deref() == Some("postgres") {
        "postgres"
    } else {
        "sqlite"
    }
}

/// `extra` with `keys` (lines of a `[store]` table) added: right under its `[store]` header
/// unless that table sets `backend` or `path` (the test chose its store), else as a table of
/// their own at the end.
fn merge_store_keys(extra: &str, keys: &str) -> String {
    if store_chosen(extra) {
        return extra.to_owned();
    }
    let Some((header, _)) = store_table(extra) else {
        let mut out = extra.trim_end().to_owned();
        out.push_str("\n\n[store]\n");
        out.push_str(keys.trim_end());
        out.push('\n');
        return out;
    };
    let lines: Vec<&str> = extra.lines().collect();
    let mut out = lines[..=header].join("\n");
    out.push('\n');
    out.push_str(keys.trim_end());
    for l in &lines[header + 1..] {
        out.push('\n');
        out.push_str(l);
    }
    out.push('\n');
    out
}

/// The environment variable through which the harness hands the daemon its database URL.
pub const DATABASE_URL_ENV: &str = "GATEWAY_TEST_DATABASE_URL";

/// Quotes `s` as a TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Location of the `gatewayd` binary: `$GATEWAYD_BIN`, else
/// `target/<profile>/gatewayd` derived from the running test executable
/// (which lives in `target/<profile>/deps/`).
pub fn gatewayd_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("GATEWAYD_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let exe = std::env::current_exe().context("cannot determine current_exe")?;
            let mut dir = exe
                .parent()
                .context("current_exe has no parent directory")?
                .to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir.join(format!("gatewayd{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !path.is_file() {
        anyhow::bail!(
            "gatewayd binary not found at {}; run `cargo build --bin gatewayd` or set GATEWAYD_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// Runs the `gatewayd` binary synchronously with `args` in `cwd` (e.g. for
/// `check-config` tests), with `RUST_LOG` removed. Panics if the binary is
/// missing or cannot be executed.
pub fn run_cli(cwd: &Path, args: &[&str]) -> Output {
    let bin = gatewayd_bin().expect("locating gatewayd binary");
    std::process::Command::new(&bin)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", bin.display()))
}

/// Captured stdout lines of every run of the daemon, with change notification.
#[derive(Debug, Default)]
struct StdoutLog {
    lines: Mutex<Vec<String>>,
    changed: Notify,
}

impl StdoutLog {
    fn push(&self, line: String) {
        lock(&self.lines).push(line);
        self.changed.notify_waiters();
    }
}

/// A running (or stopped) `gatewayd` process with its own temporary directory.
pub struct Gateway {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    bin: PathBuf,
    opts: GatewayOptions,
    child: Option<Child>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stdout: Arc<StdoutLog>,
    drain: Option<JoinHandle<()>>,
    client: reqwest::Client,
    backend: &'static str,
    database: Option<TestDatabase>,
    database_url: Option<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("dir", &self.dir.path())
            .field("addr", &self.addr)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// Reply of an HTTP request made by the [`Gateway`] helpers.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// Raw body text.
    pub text: String,
    /// Body parsed as JSON, or `Value::Null` if it is not JSON.
    pub json: Value,
}

impl HttpReply {
    async fn from_response(resp: reqwest::Response) -> anyhow::Result<HttpReply> {
        let status = resp.status().as_u16();
        let text = resp.text().await.context("reading response body")?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(HttpReply { status, text, json })
    }
}

impl Gateway {
    /// Writes `<tempdir>/gatewayd.toml`, spawns `gatewayd --config <path>`
    /// (cwd = the tempdir) and waits up to 30 s for the listening line.
    pub async fn start(opts: GatewayOptions) -> anyhow::Result<Gateway> {
        let bin = gatewayd_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("gatewayd-test-")
            .tempdir()
            .context("creating temp dir")?;
        let config_path = dir.path().join("gatewayd.toml");
        // A test that chose its own store in `[store]` keeps it.
        let (database, database_url) = match opts.store.resolve() {
            StoreChoice::Postgres { via } if !store_chosen(&opts.extra_config) => {
                let db = TestDatabase::create().await?;
                let url = db.url(via)?;
                (Some(db), Some(url))
            }
            _ => (None, None),
        };
        let store_keys = database
            .as_ref()
            .map(|_| format!("backend = \"postgres\"\nurl_env = \"{DATABASE_URL_ENV}\"\n"));
        let backend = if database.is_some() || chosen_backend(&opts.extra_config) == "postgres" {
            "postgres"
        } else {
            "sqlite"
        };
        let config = opts.render_config_with_store(&dir.path().join("data"), store_keys.as_deref());
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building reqwest client")?;
        let mut gw = Gateway {
            dir,
            config_path,
            bin,
            opts,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: None,
            stdout: Arc::new(StdoutLog::default()),
            drain: None,
            client,
            backend,
            database,
            database_url,
        };
        gw.spawn().await?;
        Ok(gw)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let stderr_path = self.stderr_path();
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .with_context(|| format!("opening {}", stderr_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .envs(self.opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(
                self.database_url
                    .iter()
                    .map(|u| (DATABASE_URL_ENV, u.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("child stdout was not captured")?;
        let mut reader = BufReader::new(stdout);

        let found = tokio::time::timeout(
            STARTUP_TIMEOUT,
            read_until_listening(&mut reader, &self.stdout),
        )
        .await;
        match found {
            Ok(Ok(Some((addr, admin)))) => {
                self.addr = addr;
                self.admin_addr = admin;
                let log = Arc::clone(&self.stdout);
                self.drain = Some(tokio::spawn(async move {
                    drain_lines(&mut reader, &log).await;
                }));
                self.child = Some(child);
                Ok(())
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                // stdout closed: the process is exiting (or closed stdout).
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let status = match status {
                    Ok(Ok(s)) => format!("exited with {s}"),
                    Ok(Err(e)) => format!("wait failed: {e}"),
                    Err(_) => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        "closed stdout but kept running (killed)".to_owned()
                    }
                };
                anyhow::bail!(
                    "gatewayd {status} before printing `{LISTENING_PREFIX}ADDR`\n--- stdout ---\n{}\n--- stderr.log (tail) ---\n{}",
                    self.stdout_lines().join("\n"),
                    self.stderr_tail(60)
                )
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                anyhow::bail!(
                    "gatewayd did not print `{LISTENING_PREFIX}ADDR` within {STARTUP_TIMEOUT:?} (killed)\n--- stdout ---\n{}\n--- stderr.log (tail) ---\n{}",
                    self.stdout_lines().join("\n"),
                    self.stderr_tail(60)
                )
            }
        }
    }

    /// Starts the daemon again with the same tempdir, config and options
    /// (after [`kill`](Self::kill) or [`stop`](Self::stop)); the new port is
    /// read from the new listening line. If the daemon is still running it
    /// is SIGKILLed first.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// The store backend this gateway runs on (`sqlite` or `postgres`).
    pub fn store_backend(&self) -> &'static str {
        self.backend
    }

    /// This gateway's PostgreSQL database, when it runs on PostgreSQL.
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    /// Runs `sql` (statements without parameters) on this gateway's database, whichever the
    /// backend: SQLite's file through the `sqlite3` CLI (stop the daemon first), or its
    /// PostgreSQL database. For a test that edits stored state the admin API cannot reach.
    pub async fn execute_sql(&self, sql: &str) -> anyhow::Result<()> {
        if let Some(db) = &self.database {
            return db.execute(sql).await;
        }
        let file = self.data_dir().join("gateway.db");
        let out = Command::new("sqlite3")
            .arg(&file)
            .arg(sql)
            .kill_on_drop(true)
            .output()
            .await
            .context(
                "running the sqlite3 CLI (Debian package sqlite3; tests/run.sh installs it)",
            )?;
        anyhow::ensure!(
            out.status.success(),
            "sqlite3 {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `http://127.0.0.1:PORT` of the current run.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Listening address of the current run.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `gatewayctl --addr <this run's admin API> --output json ARGS…` and returns its JSON.
    ///
    /// # Panics
    /// When gatewayctl fails, takes longer than [`crate::TIMEOUT`], or prints no JSON; the panic
    /// shows its output.
    pub async fn gatewayctl_json(&self, args: &[&str]) -> Value {
        let out = tokio::process::Command::new(gatewayctl_bin())
            .args(["--addr", &self.admin_url(), "--output", "json"])
            .args(args)
            .env_remove("GATEWAYCTL_ADDR")
            .env_remove("GATEWAYCTL_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(crate::TIMEOUT, out)
            .await
            .expect("gatewayctl finished in time")
            .expect("gatewayctl ran");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "gatewayctl {args:?}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("gatewayctl {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// `channel`'s row of `gatewayctl channels list`.
    ///
    /// # Panics
    /// When the channel is not listed.
    pub async fn channel_listed(&self, channel: &str) -> Value {
        let all = self.gatewayctl_json(&["channels", "list"]).await;
        all["channels"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["channel"] == channel))
            .cloned()
            .unwrap_or_else(|| panic!("{channel} is listed: {all}"))
    }

    /// Waits until `channel` has `n` dead letters (polled: the store has no change
    /// notification); returns `gatewayctl deadletters list --channel CHANNEL`.
    ///
    /// # Panics
    /// After [`crate::TIMEOUT`], with the tail of the daemon's log.
    pub async fn wait_dead_letters(&self, channel: &str, n: u64) -> Value {
        let args = ["deadletters", "list", "--channel", channel];
        crate::poll_until_async(
            crate::TIMEOUT,
            &format!("{n} {channel} dead letter(s)"),
            || async { self.gatewayctl_json(&args).await["total"] == n },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.stderr_tail(40)));
        self.gatewayctl_json(&args).await
    }

    /// `http://127.0.0.1:PORT` of the admin API of the current run (for `gatewayctl --addr`).
    ///
    /// # Panics
    /// If the admin API is disabled in this gateway's configuration.
    pub fn admin_url(&self) -> String {
        let addr = self
            .admin_addr
            .expect("the admin API is enabled in this test's config");
        format!("http://{addr}")
    }

    /// `ws://127.0.0.1:PORT/ws?chat_id=<percent-encoded chat_id>`.
    pub fn ws_url(&self, chat_id: &str) -> String {
        format!("ws://{}/ws?chat_id={}", self.addr, percent_encode(chat_id))
    }

    /// The temporary directory holding config, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<tempdir>/data` (the configured `gateway.data_dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `<tempdir>/gatewayd.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.config_path.clone()
    }

    /// `<tempdir>/stderr.log`.
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Full contents of `stderr.log` (all runs); empty if unreadable.
    pub fn stderr_log(&self) -> String {
        std::fs::read(self.stderr_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Last `n` lines of `stderr.log`.
    pub fn stderr_tail(&self, n: usize) -> String {
        let log = self.stderr_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// All stdout lines captured so far (all runs).
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout.lines).clone()
    }

    /// Waits (notification-based) until some captured stdout line satisfies
    /// `pred`, returning that line.
    pub async fn wait_stdout_line(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let got = wait_notified(&self.stdout.changed, timeout, || {
            lock(&self.stdout.lines).iter().find(|l| pred(l)).cloned()
        })
        .await;
        got.ok_or_else(|| {
            anyhow::anyhow!(
                "no matching gatewayd stdout line within {timeout:?}\n--- stdout ---\n{}\n--- stderr.log (tail) ---\n{}",
                self.stdout_lines().join("\n"),
                self.stderr_tail(60)
            )
        })
    }

    /// Process id of the current run, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// True if the current run has not exited yet.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs the daemon (if running) and waits for it. Never fails.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.finish_drain().await;
    }

    /// Sends SIGTERM and waits up to 30 s for exit, returning the exit
    /// status. On timeout the daemon is SIGKILLed and an error returned.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("gatewayd is not running")?;
        let Some(pid) = child.id() else {
            // Already reaped/exited.
            let status = child.wait().await.context("waiting for gatewayd")?;
            self.finish_drain().await;
            return Ok(status);
        };
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running `kill -TERM`")?;
        if !kill.success() {
            // The process may have exited on its own in the meantime.
            if let Ok(Some(status)) = child.try_wait() {
                self.finish_drain().await;
                return Ok(status);
            }
            self.child = Some(child);
            anyhow::bail!("`kill -TERM {pid}` failed with {kill}");
        }
        let result = tokio::time::timeout(STOP_TIMEOUT, child.wait()).await;
        let out = match result {
            Ok(status) => status.context("waiting for gatewayd"),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(anyhow::anyhow!(
                    "gatewayd did not exit within {STOP_TIMEOUT:?} after SIGTERM (killed)\n--- stderr.log (tail) ---\n{}",
                    self.stderr_tail(60)
                ))
            }
        };
        self.finish_drain().await;
        out
    }

    /// Waits up to `timeout` for the daemon to exit on its own (without
    /// signalling it) and returns its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("gatewayd is not running")?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("gatewayd did not exit within {timeout:?}"))?
            .context("waiting for gatewayd")?;
        self.child = None;
        self.finish_drain().await;
        Ok(status)
    }

    /// Lets the stdout drain task see EOF so `stdout_lines` is complete.
    async fn finish_drain(&mut self) {
        if let Some(drain) = self.drain.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
    }

    /// Same as the free function [`run_cli`].
    pub fn run_cli(cwd: &Path, args: &[&str]) -> Output {
        run_cli(cwd, args)
    }

    /// The HTTP client used by the helpers (no proxy, 30 s timeout).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `GET {http_base}{path}` (e.g. `/healthz`, `/readyz`).
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpReply> {
        let resp = self
            .client
            .get(format!("{}{path}", self.http_base()))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        HttpReply::from_response(resp).await
    }

    /// `POST {http_base}{path}` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<HttpReply> {
        let resp = self
            .client
            .post(format!("{}{path}", self.http_base()))
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        HttpReply::from_response(resp).await
    }

    /// `POST {http_base}/channels/http/messages` with a JSON body.
    pub async fn post_http_message(&self, body: &Value) -> anyhow::Result<HttpReply> {
        self.post_json("/channels/http/messages", body).await
    }

    /// `POST {http_base}{path}` with arbitrary bytes and `Content-Type`
    /// (`None` sends no Content-Type header), for malformed-input tests.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        bytes: impl Into<Vec<u8>>,
    ) -> anyhow::Result<HttpReply> {
        let mut req = self
            .client
            .post(format!("{}{path}", self.http_base()))
            .body(bytes.into());
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        HttpReply::from_response(resp).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Reads lines until the listening line; `Ok(None)` on EOF.
/// The line gatewayd prints once every listener is up.
pub const READY_LINE: &str = "gatewayd ready";
/// The prefix of the admin API's listening line.
pub const ADMIN_PREFIX: &str = "admin listening on ";

/// Reads stdout up to the ready line; returns the HTTP and (if enabled) admin addresses.
async fn read_until_listening<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    log: &StdoutLog,
) -> std::io::Result<Option<(SocketAddr, Option<SocketAddr>)>> {
    let mut buf = Vec::new();
    let mut http = None;
    let mut admin = None;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).await? == 0 {
            return Ok(None);
        }
        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
        if let Some(addr) = parse_listening(&line) {
            http = Some(addr);
        }
        if let Some(rest) = line.split(ADMIN_PREFIX).nth(1) {
            admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        let ready = line.contains(READY_LINE);
        log.push(line);
        if ready {
            return Ok(http.map(|h| (h, admin)));
        }
    }
}

async fn drain_lines(reader: &mut BufReader<ChildStdout>, log: &StdoutLog) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => log.push(strip_ansi(String::from_utf8_lossy(&buf).trim_end())),
        }
    }
}

/// Extracts `ADDR` from a line containing `http listening on ADDR`.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTENING_PREFIX)? + LISTENING_PREFIX.len()..];
    let token = rest.split_whitespace().next()?;
    token
        .trim_matches(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .trim_start_matches("http://")
        .parse()
        .ok()
}

/// Location of the `gatewayctl` binary: `$GATEWAYCTL_BIN`, else next to `gatewayd`.
///
/// # Panics
/// When the binary is not there, with a message saying how to build it.
pub fn gatewayctl_bin() -> PathBuf {
    let path = match std::env::var_os("GATEWAYCTL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => gatewayd_bin()
            .expect("locating gatewayd (gatewayctl is built next to it)")
            .with_file_name(format!("gatewayctl{}", std::env::consts::EXE_SUFFIX)),
    };
    assert!(
        path.is_file(),
        "gatewayctl binary not found at {}; run `cargo build --bin gatewayctl` or set GATEWAYCTL_BIN",
        path.display()
    );
    path
}

/// Removes ANSI CSI escape sequences (`ESC [ ... final-byte`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_line() {
        let want: SocketAddr = "127.0.0.1:4242".parse().expect("literal addr");
        assert_eq!(
            parse_listening("http listening on 127.0.0.1:4242"),
            Some(want)
        );
        assert_eq!(
            parse_listening(&strip_ansi(
                "2025-01-01T00:00:00Z \u{1b}[32m INFO\u{1b}[0m gatewayd: http listening on 127.0.0.1:4242 extra"
            )),
            Some(want)
        );
        assert_eq!(parse_listening("something else"), None);
    }

    #[test]
    fn merges_the_store_keys_unless_the_test_chose_its_store() {
        let keys = "backend = \"postgres\"\n";
        assert_eq!(
            merge_store_keys("[agent]\nx = 1\n", keys),
            "[agent]\nx = 1\n\n[store]\nbackend = \"postgres\"\n"
        );
        assert_eq!(
            merge_store_keys("[store]\nprune_interval = \"1s\"\n[agent]\n", keys),
            "[store]\nbackend = \"postgres\"\nprune_interval = \"1s\"\n[agent]\n"
        );
        for chosen in [
            "[store]\nbackend = \"sqlite\"\n",
            "[store]\nprune_interval = \"1s\"\npath = \"x.db\"\n",
        ] {
            assert!(store_chosen(chosen));
            assert_eq!(merge_store_keys(chosen, keys), chosen);
        }
        assert!(!store_chosen(
            "[store]\nprune_interval = \"1s\"\n[agent]\nbackend = 1\n"
        ));
    }

    #[test]
    fn encodes() {
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
