//! Internal plumbing shared by the fake servers: binding an axum router on
//! `127.0.0.1:0` with per-connection kill handles, a shutdown signal that fires
//! when the fake is dropped, and a Notify-based "wait until this check passes"
//! helper that never sleeps in place of a condition.

use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Connection info attached to every request: a duplicate of the accepted
/// socket's file descriptor, so a handler can shut the connection down
/// without sending a response (emulating a peer that drops the connection).
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle(Option<Arc<std::net::TcpStream>>);

impl ConnHandle {
    /// The client's address, if the connection is still known.
    pub(crate) fn peer(&self) -> Option<std::net::SocketAddr> {
        self.0.as_ref().and_then(|s| s.peer_addr().ok())
    }

    /// Shuts the underlying TCP connection down in both directions. The client
    /// sees the connection closed with no response; hyper's subsequent write
    /// of whatever the handler returns fails and the connection is dropped.
    pub(crate) fn kill(&self) {
        if let Some(sock) = &self.0 {
            // Errors mean the socket is already gone, which is the goal anyway.
            let _ = sock.shutdown(Shutdown::Both);
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        let dup = stream
            .io()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Arc::new(std::net::TcpStream::from(fd)));
        ConnHandle(dup)
    }
}

/// A running fake server. Dropping it fires the shutdown signal: the listener
/// stops accepting, idle connections are closed and handlers parked on
/// [`ShutdownSignal::wait`] kill their connections.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
}

/// Creates the shutdown flag before the router (whose state needs the
/// receiving side) exists; pass the sender to [`Server::start`].
pub(crate) fn shutdown_channel() -> (watch::Sender<bool>, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (tx, ShutdownSignal(rx))
}

impl Server {
    /// Binds `127.0.0.1:0` and serves `router` in a background task until
    /// `shutdown_tx` is set (which dropping the returned `Server` does).
    pub(crate) async fn start(
        router: Router,
        shutdown_tx: watch::Sender<bool>,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mut shutdown_rx = shutdown_tx.subscribe();
        let signal = async move {
            // An error means the sender is gone, i.e. shutdown as well.
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
        };
        let service = router.into_make_service_with_connect_info::<ConnHandle>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, service)
                .with_graceful_shutdown(signal)
                .await;
        });
        Ok(Server { addr, shutdown_tx })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
    }
}

/// Cloneable view of the server's shutdown flag.
#[derive(Clone, Debug)]
pub(crate) struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    /// Resolves once the owning fake server has been dropped.
    pub(crate) async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Waits until `check` returns `Some`, re-evaluating it each time `notify`
/// is signalled with `notify_waiters`. Returns `None` on timeout.
pub(crate) async fn wait_notified<T>(
    notify: &Notify,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Register before checking so a notification between the check and
        // the await is not lost.
        notified.as_mut().enable();
        if let Some(value) = check() {
            return Some(value);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return check();
        }
    }
}

/// Locks a std mutex, recovering from poisoning (a panicking test thread must
/// not cascade into unrelated assertion failures).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
