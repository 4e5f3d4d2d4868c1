//! A TCP proxy on 127.0.0.1 that can cut the connection to its target and restore it, so a
//! test can take a database away from a running daemon without stopping the database.
//!
//! While cut, every open connection is closed and every new one is accepted and closed at once
//! (the client sees its connection reset or ended, never a hang); once restored, new connections
//! are forwarded again. The proxy stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; see the module docs.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the proxy to 127.0.0.1")?;
        let addr = listener.local_addr().context("the proxy's address")?;
        let (up, rx) = watch::channel(true);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(listener, target, rx, Arc::clone(&accepted)));
        Ok(TcpProxy {
            addr,
            up,
            accepted,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Connections forwarded since start (those refused while cut are not counted).
    pub fn forwarded(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.up.send_replace(false);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    up: watch::Receiver<bool>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if !*up.borrow() {
            drop(client);
            continue;
        }
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(forward(client, target, up.clone()));
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn forward(mut client: TcpStream, target: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server, one connection at a time.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let proxy = TcpProxy::start(echo().await).await.expect("proxy");
        assert_eq!(round_trip(proxy.addr()).await.expect("forwarded"), b"ping");

        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        open.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.expect("echoed");
        proxy.cut();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(crate::TIMEOUT, open.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the open connection is closed by the cut");
        assert!(round_trip(proxy.addr()).await.is_err(), "refused while cut");

        proxy.restore();
        assert_eq!(round_trip(proxy.addr()).await.expect("forwarded"), b"ping");
        assert_eq!(proxy.forwarded(), 3);
    }
}
