//! Supervision: every long-lived task of the daemon runs under a [`Supervisor`], so a panic never
//! leaves the daemon half alive.
//!
//! A part that can be restarted without losing anything (a session worker, a delivery lane, a
//! periodic loop, a channel listener) is restarted after a panic; the panic is logged at error
//! level, counted in `gateway_task_panics_total{component}` and
//! `gateway_task_restarts_total{component}`, and listed as a restartable [`Fault`] with its
//! restart count. A part that cannot be restarted (the store writer, the HTTP server, the admin
//! API) is marked failed instead: the gateway is then not ready (`/readyz` answers 503 naming
//! it, `GetOverview` reports `ready = false`, the `gateway_ready` gauge reads 0) until the
//! process is restarted.
//!
//! Parts that run on their own threads report through a [`Probe`], a function the supervisor
//! asks whenever readiness is read. [`FaultInjector`] is a test-only way to make chosen parts
//! panic; nothing outside the process can reach it.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::message::now_ms;

/// Component name of session workers.
pub const SESSION_WORKER: &str = "session worker";
/// Component name of delivery lanes.
pub const DELIVERY_LANE: &str = "delivery lane";
/// Component name of the store's writer thread.
pub const STORE_WRITER: &str = "store writer";
/// Component name of the HTTP listener's server.
pub const HTTP_SERVER: &str = "http server";
/// Component name of the admin API's server.
pub const ADMIN_API: &str = "admin api";

/// Longest wait before a periodic task or listener that keeps panicking is restarted.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// One part that panicked or stopped, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The part, e.g. `session worker` or `store writer`.
    pub component: String,
    /// What happened last (the panic message).
    pub message: String,
    /// When it last happened, ms since the Unix epoch.
    pub at_ms: i64,
    /// Whether the part is restarted after a panic (`false`: it stays failed and the gateway is
    /// not ready).
    pub restartable: bool,
    /// How many times it was restarted since start.
    pub restarts: u64,
}

/// A check of a part the supervisor cannot watch itself: `Some(message)` once it has failed.
pub type Probe = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Watches the daemon's parts; shared by everything that spawns a long-lived task.
#[derive(Default)]
pub struct Supervisor {
    faults: Mutex<HashMap<String, Fault>>,
    probes: Mutex<Vec<(&'static str, Probe)>>,
    injector: FaultInjector,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

impl Supervisor {
    /// A supervisor with no faults.
    pub fn new() -> Arc<Self> {
        install_panic_hook();
        Arc::new(Self::default())
    }

    /// Records a panic of a restartable part, which its caller restarts.
    pub fn restarted(&self, component: &str, message: &str) {
        tracing::error!(
            message = "A task panicked; it is restarted.",
            component,
            panic = %message
        );
        metrics::counter!("gateway_task_panics_total", "component" => component.to_owned())
            .increment(1);
        metrics::counter!("gateway_task_restarts_total", "component" => component.to_owned())
            .increment(1);
        let mut faults = lock(&self.faults);
        let fault = faults.entry(component.to_owned()).or_insert_with(|| Fault {
            component: component.to_owned(),
            message: String::new(),
            at_ms: 0,
            restartable: true,
            restarts: 0,
        });
        fault.message = message.to_owned();
        fault.at_ms = now_ms();
        fault.restarts += 1;
    }

    /// Records that a part that cannot be restarted has failed: the gateway is not ready from
    /// now on.
    pub fn failed(&self, component: &str, message: &str) {
        tracing::error!(
            message = "A part of the gateway failed and cannot be restarted; the gateway is not ready until gatewayd is restarted.",
            component,
            error = %message
        );
        metrics::counter!("gateway_task_panics_total", "component" => component.to_owned())
            .increment(1);
        let mut faults = lock(&self.faults);
        let restarts = faults.get(component).map_or(0, |f| f.restarts);
        faults.insert(
            component.to_owned(),
            Fault {
                component: component.to_owned(),
                message: message.to_owned(),
                at_ms: now_ms(),
                restartable: false,
                restarts,
            },
        );
    }

    /// Adds a check of a part that fails on its own (a thread): asked whenever the faults are.
    pub fn add_probe(&self, component: &'static str, probe: Probe) {
        lock(&self.probes).push((component, probe));
    }

    /// Every fault since start, by component; probes that report a failure are recorded first.
    pub fn faults(&self) -> Vec<Fault> {
        let failing: Vec<(&'static str, String)> = lock(&self.probes)
            .iter()
            .filter_map(|(component, probe)| probe().map(|m| (*component, m)))
            .collect();
        for (component, message) in failing {
            let known = lock(&self.faults)
                .get(component)
                .is_some_and(|f| !f.restartable);
            if !known {
                self.failed(component, &message);
            }
        }
        let mut out: Vec<Fault> = lock(&self.faults).values().cloned().collect();
        out.sort_by(|a, b| a.component.cmp(&b.component));
        out
    }

    /// Whether no part that cannot be restarted has failed; `Err` names those that have.
    pub fn ready(&self) -> Result<(), Vec<Fault>> {
        let failed: Vec<Fault> = self
            .faults()
            .into_iter()
            .filter(|f| !f.restartable)
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// The test-only fault injector.
    #[doc(hidden)]
    pub fn injector(&self) -> &FaultInjector {
        &self.injector
    }

    /// Spawns a part that cannot be restarted. A panic, or an `Err` it returns, marks it
    /// failed; an `Ok` end (a shutdown) is not a fault.
    pub fn spawn_critical<F, E>(
        self: &Arc<Self>,
        component: &'static str,
        task: F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let this = self.clone();
        let injected = self.injector.notify(component);
        tokio::spawn(async move {
            let run = AssertUnwindSafe(async move {
                tokio::select! {
                    r = task => r,
                    () = injected.notified() => panic!("injected fault: {component}"),
                }
            });
            match run.catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => this.failed(component, &format!("stopped: {e}")),
                Err(p) => this.failed(component, &format!("panicked: {}", panic_message(&*p))),
            }
        })
    }

    /// Spawns a part that is restarted after a panic: `make` builds a fresh run each time. The
    /// delay before a restart doubles with each panic in a row, up to 30 s; a run that ends on
    /// its own ends the part.
    pub fn spawn_restarting<M, F>(
        self: &Arc<Self>,
        component: &'static str,
        mut make: M,
    ) -> JoinHandle<()>
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let injected = self.injector.notify(component);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(10);
            loop {
                let task = make();
                let injected = injected.clone();
                let run = AssertUnwindSafe(async move {
                    tokio::select! {
                        () = task => {},
                        () = injected.notified() => panic!("injected fault: {component}"),
                    }
                });
                match run.catch_unwind().await {
                    Ok(()) => return,
                    Err(p) => this.restarted(component, &panic_message(&*p)),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RESTART_DELAY);
            }
        })
    }
}

/// Installs, once per process, a panic hook that logs every panic at error level (thread and
/// location) before the default hook prints it; so a panic is in the log file, not only on
/// stderr.
fn install_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(
                message = "Panic.",
                thread = thread.name().unwrap_or("unnamed"),
                location = %location,
                panic = %panic_message(info.payload())
            );
            default(info);
        }));
    });
}

/// Makes chosen parts panic, for tests of supervision. Only reachable through the in-process
/// [`Supervisor`]; no configuration, environment variable, request or message text arms it.
#[doc(hidden)]
#[derive(Default)]
pub struct FaultInjector {
    armed: AtomicBool,
    turn_panics: AtomicU32,
    send_panics: AtomicU32,
    poison_turns: Mutex<Option<String>>,
    poison_sends: Mutex<Option<String>>,
    components: Mutex<HashMap<String, Arc<Notify>>>,
    triggers: Mutex<HashMap<String, Box<dyn Fn() + Send + Sync>>>,
}

impl FaultInjector {
    fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    /// The next session-worker turn panics (before the agent is asked).
    pub fn panic_next_turn(&self) {
        self.turn_panics.fetch_add(1, Ordering::AcqRel);
        self.arm();
    }

    /// The next attempt to send a reply panics (before the channel is called).
    pub fn panic_next_send(&self) {
        self.send_panics.fetch_add(1, Ordering::AcqRel);
        self.arm();
    }

    /// Every turn of a message whose text is exactly `text` panics.
    pub fn poison_turns(&self, text: &str) {
        *lock(&self.poison_turns) = Some(text.to_owned());
        self.arm();
    }

    /// Every attempt to send a reply whose text is exactly `text` panics.
    pub fn poison_sends(&self, text: &str) {
        *lock(&self.poison_sends) = Some(text.to_owned());
        self.arm();
    }

    /// Makes a named part panic now; returns whether that part is known. Supervised tasks are
    /// known by their component name; other parts (the store writer) register a trigger.
    pub fn panic_component(&self, component: &str) -> bool {
        if let Some(trigger) = lock(&self.triggers).get(component) {
            trigger();
            return true;
        }
        match lock(&self.components).get(component) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Registers how to make a part that is not a supervised task panic.
    pub fn add_trigger(&self, component: &str, trigger: Box<dyn Fn() + Send + Sync>) {
        lock(&self.triggers).insert(component.to_owned(), trigger);
    }

    fn notify(&self, component: &str) -> Arc<Notify> {
        lock(&self.components)
            .entry(component.to_owned())
            .or_default()
            .clone()
    }

    fn take(&self, counter: &AtomicU32, poison: &Mutex<Option<String>>, text: &str) -> bool {
        if !self.armed.load(Ordering::Acquire) {
            return false;
        }
        if lock(poison).as_deref() == Some(text) {
            return true;
        }
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Panics if a turn panic is due for a message with `text`.
    pub(crate) fn turn(&self, text: &str) {
        if self.take(&self.turn_panics, &self.poison_turns, text) {
            panic!("injected fault: {SESSION_WORKER}");
        }
    }

    /// Panics if a send panic is due for a reply with `text`.
    pub(crate) fn send(&self, text: &str) {
        if self.take(&self.send_panics, &self.poison_sends, text) {
            panic!("injected fault: {DELIVERY_LANE}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restarting_task_is_restarted_and_a_critical_one_marks_the_gateway_not_ready() {
        let sup = Supervisor::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        sup.spawn_restarting("ticker", move || {
            let tx = tx.clone();
            let n = counted.fetch_add(1, Ordering::AcqRel);
            async move {
                let _ = tx.send(n);
                if n == 0 {
                    panic!("first run fails");
                }
                std::future::pending::<()>().await;
            }
        });
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.recv().await, Some(1), "restarted after the panic");
        assert!(sup.ready().is_ok(), "a restartable fault keeps it ready");
        let faults = sup.faults();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].component, "ticker");
        assert_eq!(faults[0].restarts, 1);
        assert!(faults[0].restartable);
        assert!(faults[0].message.contains("first run fails"));

        let critical = sup.spawn_critical("server", async { Err::<(), _>("listener closed") });
        critical.await.expect("joined");
        let failed = sup.ready().expect_err("not ready");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].component, "server");
        assert!(!failed[0].restartable);
        assert!(failed[0].message.contains("listener closed"));
    }

    #[tokio::test]
    async fn an_injected_component_panic_and_a_probe_are_faults() {
        let sup = Supervisor::new();
        let task = sup.spawn_critical("admin api", async {
            std::future::pending::<Result<(), String>>().await
        });
        assert!(sup.injector().panic_component("admin api"));
        task.await.expect("joined");
        assert!(!sup.injector().panic_component("nothing by that name"));
        let failed = AtomicBool::new(false);
        let flag = Arc::new(failed);
        let probe_flag = flag.clone();
        sup.add_probe(
            "store writer",
            Box::new(move || {
                probe_flag
                    .load(Ordering::Acquire)
                    .then(|| "panicked".to_owned())
            }),
        );
        let names = |sup: &Supervisor| -> Vec<String> {
            sup.ready()
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|f| f.component)
                .collect()
        };
        assert_eq!(names(&sup), vec!["admin api"]);
        flag.store(true, Ordering::Release);
        assert_eq!(names(&sup), vec!["admin api", "store writer"]);
    }

    #[test]
    fn injected_turn_panics_are_counted_and_poison_matches_exactly() {
        let inj = FaultInjector::default();
        let turn =
            |inj: &FaultInjector, text: &str| inj.take(&inj.turn_panics, &inj.poison_turns, text);
        let send =
            |inj: &FaultInjector, text: &str| inj.take(&inj.send_panics, &inj.poison_sends, text);
        assert!(!turn(&inj, "x"), "disarmed by default");
        inj.panic_next_turn();
        assert!(turn(&inj, "x"));
        assert!(!turn(&inj, "x"), "only the next one");
        assert!(!send(&inj, "x"), "a turn panic is not a send panic");
        inj.poison_sends("bad");
        assert!(send(&inj, "bad"));
        assert!(send(&inj, "bad"));
        assert!(!send(&inj, "bad!"));
        assert!(!turn(&inj, "bad"), "poisoned sends only");
    }
}
