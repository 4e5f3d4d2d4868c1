//! Load generator for `gatewayd`: drives WebChat WebSockets, the HTTP channel, or a bare
//! WebSocket echo server (the baseline) with N concurrent chats, at a fixed total rate or flat
//! out, for a duration or a message count, and measures each message's end-to-end latency
//! (sent → reply received) with HdrHistogram.
//!
//! ```text
//! loadgen --target webchat --addr 127.0.0.1:8080 --chats 1000 --rate 0 --duration 10 --json
//! loadgen --target http --addr 127.0.0.1:8080 --callback-port 9000 --chats 100 --rate 500 --messages 5000
//! loadgen --serve-baseline [--addr 127.0.0.1:0]     # a bare axum WebSocket echo server, runs until killed
//! loadgen --target baseline [--addr HOST:PORT] ...  # drives it (in-process one when --addr is absent)
//! loadgen --target webchat --addr … --compare [--baseline-addr HOST:PORT] ...
//!                                                   # baseline, then gateway, same parameters; prints the ratio
//! ```
//!
//! Chats are `<chat-prefix>-<i>` (default `lg-<i>`); client message ids are
//! `<run>.<chat index>.<seq>` with a random run token, so repeated runs against the same gateway
//! never hit its dedupe. Fixed rate (`--rate R`, msg/s in total): each chat sends every `N/R`
//! seconds, the chats' phases spread evenly, open loop (a late reply does not delay the next
//! send). Flat out (`--rate 0`): each chat keeps `--inflight K` messages in flight. After the
//! send window (or the message count) the generator waits up to `--drain-timeout` seconds for
//! outstanding replies; what is still missing then is reported as `unanswered`.
//!
//! Throughput is `received / elapsed`, elapsed running from the first send to the last reply.
//! Latencies are recorded in microseconds and reported in milliseconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::routing::{any, get};
use axum::serve::ListenerExt as _;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// gatewayd's WebChat WebSocket (`/ws?chat_id=…`).
    Webchat,
    /// gatewayd's HTTP channel (`POST /channels/http/messages`, replies to an embedded callback).
    Http,
    /// The bare WebSocket echo server (`--serve-baseline`, or in-process without `--addr`).
    Baseline,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Webchat => "webchat",
            Target::Http => "http",
            Target::Baseline => "baseline",
        }
    }
}

/// Load generator for gatewayd (WebChat, HTTP channel) and a bare WebSocket echo baseline.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value = "webchat")]
    target: Target,
    /// Address of the target (gatewayd's HTTP listener, or a baseline server). With
    /// `--serve-baseline`: where to listen (default 127.0.0.1:0). WebChat: several listeners
    /// separated by commas (the instances of a cluster) spread the chats over them, chat `i` on
    /// address `i mod n`, as a load balancer does.
    #[arg(long)]
    addr: Option<String>,
    /// HTTP mode: port of the embedded callback receiver on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    callback_port: u16,
    /// Concurrent chats (one WebSocket each in WebChat/baseline mode).
    #[arg(long, default_value_t = 10)]
    chats: usize,
    /// Total send rate in msg/s across all chats; 0 = flat out.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Flat out: messages each chat keeps in flight.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Send window in seconds.
    #[arg(long, conflicts_with = "messages")]
    duration: Option<f64>,
    /// Total messages to send (split evenly over the chats).
    #[arg(long)]
    messages: Option<u64>,
    /// Seconds to wait for outstanding replies after the send window.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Chat id prefix: chats are `<prefix>-<i>`.
    #[arg(long, default_value = "lg")]
    chat_prefix: String,
    /// Bytes of text in each message.
    #[arg(long, default_value_t = 32)]
    text_bytes: usize,
    /// WebSocket connections opened at once while connecting.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Print one JSON object (after the human lines).
    #[arg(long)]
    json: bool,
    /// Run the baseline first with the same parameters, then the target, and print the ratio.
    #[arg(long)]
    compare: bool,
    /// With `--compare`: an external baseline server (`loadgen --serve-baseline`); default:
    /// an in-process one.
    #[arg(long)]
    baseline_addr: Option<String>,
    /// Run only the baseline echo server (prints `baseline listening on ADDR`) until killed.
    #[arg(long)]
    serve_baseline: bool,
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    target: Target,
    chats: usize,
    rate: f64,
    inflight: usize,
    sent: u64,
    received: u64,
    errors: u64,
    unanswered: u64,
    connect_secs: f64,
    elapsed_secs: f64,
    hist: Histogram<u64>,
}

impl Report {
    fn throughput(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.received as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }

    fn pct_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn human(&self) -> String {
        format!(
            "{}: chats={} rate={} inflight={} sent={} received={} errors={} unanswered={} \
             duration={:.2}s throughput={:.0} msg/s latency_ms p50={:.3} p90={:.3} p99={:.3} \
             p99.9={:.3} max={:.3} (connect {:.2}s)",
            self.target.name(),
            self.chats,
            self.rate,
            self.inflight,
            self.sent,
            self.received,
            self.errors,
            self.unanswered,
            self.elapsed_secs,
            self.throughput(),
            self.pct_ms(0.5),
            self.pct_ms(0.9),
            self.pct_ms(0.99),
            self.pct_ms(0.999),
            self.hist.max() as f64 / 1000.0,
            self.connect_secs,
        )
    }

    fn json(&self) -> Value {
        json!({
            "target": self.target.name(),
            "chats": self.chats,
            "rate": self.rate,
            "inflight": self.inflight,
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
            "unanswered": self.unanswered,
            "connect_s": round3(self.connect_secs),
            "duration_s": round3(self.elapsed_secs),
            "throughput": round3(self.throughput()),
            "latency_ms": {
                "p50": self.pct_ms(0.5),
                "p90": self.pct_ms(0.9),
                "p99": self.pct_ms(0.99),
                "p99_9": self.pct_ms(0.999),
                "max": self.hist.max() as f64 / 1000.0,
                "mean": round3(self.hist.mean() / 1000.0),
            },
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Counters and histograms shared by every chat of one run.
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    unanswered: AtomicU64,
    /// Microseconds since the run's start of the last reply received.
    last_reply_us: AtomicU64,
    /// Sharded so chats rarely contend; merged at the end.
    hists: Vec<Mutex<Histogram<u64>>>,
}

const HIST_SHARDS: usize = 16;

impl Stats {
    fn new() -> anyhow::Result<Stats> {
        let mut hists = Vec::with_capacity(HIST_SHARDS);
        for _ in 0..HIST_SHARDS {
            // 1 µs .. 10 min, 3 significant figures.
            hists.push(Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")?,
            ));
        }
        Ok(Stats {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            last_reply_us: AtomicU64::new(0),
            hists,
        })
    }

    fn record(&self, chat: usize, latency: Duration, since_start: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut h = self.hists[chat % HIST_SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.saturating_record(us);
        drop(h);
        self.received.fetch_add(1, Ordering::Relaxed);
        let at = u64::try_from(since_start.as_micros()).unwrap_or(u64::MAX);
        self.last_reply_us.fetch_max(at, Ordering::Relaxed);
    }
}

/// What a chat's transport reported.
enum Event {
    /// The reply to this client id arrived at this instant.
    Reply(String, Instant),
    /// The message with this client id was refused (error frame, non-2xx answer).
    Error(Option<String>),
    /// Something not counted (acks, unrelated frames).
    Ignore,
    /// The connection is gone.
    Closed(String),
}

/// One chat's connection to the target.
trait Transport: Send + 'static {
    /// Sends one message; errors mean the connection is unusable.
    fn send(&mut self, id: &str, text: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The next event (cancel-safe).
    fn next_event(&mut self) -> impl Future<Output = Event> + Send;
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct WsTransport {
    ws: Ws,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
}

impl Transport for WsTransport {
    async fn send(&mut self, id: &str, text: &str) -> anyhow::Result<()> {
        // Ids and texts are generated ASCII without quotes or backslashes: no escaping needed.
        let frame = format!(r#"{{"type":"message","id":"{id}","text":"{text}"}}"#);
        self.ws
            .send(Message::text(frame))
            .await
            .context("websocket send")
    }

    async fn next_event(&mut self) -> Event {
        loop {
            match self.ws.next().await {
                None => return Event::Closed("stream ended".to_owned()),
                Some(Err(e)) => return Event::Closed(e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    let at = Instant::now();
                    return match serde_json::from_str::<Frame>(t.as_str()) {
                        Ok(f) if f.kind == "message" => match f.reply_to {
                            Some(r) => Event::Reply(r, at),
                            None => Event::Ignore,
                        },
                        Ok(f) if f.kind == "error" => Event::Error(f.id),
                        Ok(_) => Event::Ignore,
                        Err(_) => Event::Error(None),
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(format!("close frame {frame:?}"));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

struct HttpTransport {
    client: reqwest::Client,
    url: String,
    chat_id: String,
    /// Replies routed here by the callback receiver; POST failures too.
    rx: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
}

impl Transport for HttpTransport {
    async fn send(&mut self, id: &str, text: &str) -> anyhow::Result<()> {
        // Spawned so a fixed-rate chat is not held up by the 202.
        let req = self.client.post(&self.url).json(&json!({
            "message_id": id,
            "chat_id": self.chat_id,
            "sender_id": self.chat_id,
            "text": text,
            "chat_type": "direct",
        }));
        let tx = self.tx.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let ok = match req.send().await {
                Ok(resp) => resp.status().is_success(),
                Err(_) => false,
            };
            if !ok {
                let _ = tx.send(Event::Error(Some(id)));
            }
        });
        Ok(())
    }

    async fn next_event(&mut self) -> Event {
        match self.rx.recv().await {
            Some(e) => e,
            None => Event::Closed("callback channel closed".to_owned()),
        }
    }
}

/// Parses `<run>.<chat>.<seq>` into (chat, seq) if it belongs to `run`.
fn parse_id(run: &str, id: &str) -> Option<(usize, u64)> {
    let rest = id.strip_prefix(run)?.strip_prefix('.')?;
    let (chat, seq) = rest.split_once('.')?;
    Some((chat.parse().ok()?, seq.parse().ok()?))
}

/// Per-chat plan of one run.
#[derive(Clone)]
struct Plan {
    run: Arc<str>,
    text: Arc<str>,
    start: Instant,
    /// Sending stops at this instant (duration mode).
    send_until: Option<Instant>,
    /// Fixed rate: this chat's period and first send.
    period: Option<(Duration, Instant)>,
    inflight: usize,
    drain: Duration,
    stats: Arc<Stats>,
}

async fn run_chat<T: Transport>(mut t: T, chat: usize, quota: Option<u64>, plan: Plan) {
    let stats = &plan.stats;
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut seq: u64 = 0;
    let can_send = |seq: u64, now: Instant| {
        quota.is_none_or(|q| seq < q) && plan.send_until.is_none_or(|u| now < u)
    };
    let mut ticker = plan.period.map(|(p, first)| {
        let mut i = tokio::time::interval_at(first, p);
        i.set_missed_tick_behavior(MissedTickBehavior::Burst);
        i
    });
    // Flat out: fill the window.
    if ticker.is_none() {
        while pending.len() < plan.inflight && can_send(seq, Instant::now()) {
            if !send_one(&mut t, &plan, chat, &mut seq, &mut pending).await {
                return;
            }
        }
    }
    let send_deadline = plan.send_until;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let sending = can_send(seq, Instant::now());
        if !sending && pending.is_empty() {
            return;
        }
        // Once nothing more will be sent, outstanding replies get `drain` time.
        if !sending && drain_deadline.is_none() {
            drain_deadline = Some(send_deadline.unwrap_or_else(Instant::now) + plan.drain);
        }
        tokio::select! {
            ev = t.next_event() => match ev {
                Event::Reply(id, at) => {
                    let sent_at = parse_id(&plan.run, &id).and_then(|(_, s)| pending.remove(&s));
                    if let Some(sent_at) = sent_at {
                        stats.record(chat, at - sent_at, at - plan.start);
                        if ticker.is_none() {
                            while pending.len() < plan.inflight && can_send(seq, Instant::now()) {
                                if !send_one(&mut t, &plan, chat, &mut seq, &mut pending).await {
                                    return;
                                }
                            }
                        }
                    }
                }
                Event::Error(id) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    if let Some((_, s)) = id.as_deref().and_then(|i| parse_id(&plan.run, i)) {
                        pending.remove(&s);
                    }
                }
                Event::Ignore => {}
                Event::Closed(why) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    stats.unanswered.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    eprintln!("loadgen: chat {chat}: connection closed: {why}");
                    return;
                }
            },
            _ = async {
                match ticker.as_mut() {
                    Some(tk) if sending => { tk.tick().await; }
                    _ => std::future::pending::<()>().await,
                }
            } => {
                if can_send(seq, Instant::now())
                    && !send_one(&mut t, &plan, chat, &mut seq, &mut pending).await
                {
                    return;
                }
            }
            _ = async {
                match (sending, send_deadline, drain_deadline) {
                    // Wake at the end of the send window to switch to draining.
                    (true, Some(u), _) => tokio::time::sleep_until(u).await,
                    (false, _, Some(d)) => tokio::time::sleep_until(d).await,
                    _ => std::future::pending::<()>().await,
                }
            } => {
                if !sending {
                    stats.unanswered.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Sends the next message of `chat`; false if the connection failed (counted).
async fn send_one<T: Transport>(
    t: &mut T,
    plan: &Plan,
    chat: usize,
    seq: &mut u64,
    pending: &mut HashMap<u64, Instant>,
) -> bool {
    let id = format!("{}.{chat}.{}", plan.run, *seq);
    let at = Instant::now();
    pending.insert(*seq, at);
    *seq += 1;
    plan.stats.sent.fetch_add(1, Ordering::Relaxed);
    match t.send(&id, &plan.text).await {
        Ok(()) => true,
        Err(e) => {
            plan.stats.errors.fetch_add(1, Ordering::Relaxed);
            plan.stats
                .unanswered
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            eprintln!("loadgen: chat {chat}: {e:#}");
            false
        }
    }
}

fn chat_id(args: &Args, i: usize) -> String {
    format!("{}-{i}", args.chat_prefix)
}

async fn connect_ws(addr: &str, chat: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/ws?chat_id={chat}");
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .with_context(|| format!("connecting {url}"))?;
    Ok(ws)
}

/// Connects every chat's WebSocket, at most `connect_concurrency` at once.
async fn connect_all(args: &Args, addr: &str) -> anyhow::Result<Vec<WsTransport>> {
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let addrs: Vec<&str> = addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "--addr names no address");
    for i in 0..args.chats {
        let sem = Arc::clone(&sem);
        let addr = addrs[i % addrs.len()].to_owned();
        let chat = chat_id(args, i);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let ws = connect_ws(&addr, &chat).await?;
            anyhow::Ok((i, ws))
        });
    }
    let mut out: Vec<Option<WsTransport>> = (0..args.chats).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, ws) = r.context("connect task")??;
        out[i] = Some(WsTransport { ws });
    }
    Ok(out.into_iter().flatten().collect())
}

fn plan_for(args: &Args, stats: Arc<Stats>) -> Plan {
    let run: String = format!("{:08x}", rand::random::<u32>());
    Plan {
        run: run.into(),
        text: "x".repeat(args.text_bytes.max(1)).into(),
        start: Instant::now(),
        send_until: None,
        period: None,
        inflight: args.inflight.max(1),
        drain: Duration::from_secs_f64(args.drain_timeout.max(0.0)),
        stats,
    }
}

/// Starts the chats, waits for them, and builds the report.
async fn drive<T: Transport>(
    args: &Args,
    target: Target,
    transports: Vec<T>,
    mut plan: Plan,
    connect_secs: f64,
) -> anyhow::Result<Report> {
    let n = transports.len();
    // A short lead so every chat task is spawned before the first scheduled send.
    let start = Instant::now() + Duration::from_millis(20);
    plan.start = start;
    plan.send_until = args
        .duration
        .map(|d| start + Duration::from_secs_f64(d.max(0.0)));
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in transports.into_iter().enumerate() {
        let mut p = plan.clone();
        if args.rate > 0.0 {
            let per_chat = Duration::from_secs_f64(n as f64 / args.rate);
            let offset = Duration::from_secs_f64(i as f64 / args.rate);
            p.period = Some((per_chat, start + offset));
        }
        let quota = args.messages.map(|m| {
            let m_per = m / n as u64;
            m_per + u64::from((i as u64) < m % n as u64)
        });
        set.spawn(async move {
            tokio::time::sleep_until(p.start).await;
            run_chat(t, i, quota, p).await;
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("chat task panicked")?;
    }
    let stats = &plan.stats;
    let mut hist = Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    for h in &stats.hists {
        let h = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        hist.add(&*h).context("merging histograms")?;
    }
    let last = Duration::from_micros(stats.last_reply_us.load(Ordering::Relaxed));
    Ok(Report {
        target,
        chats: n,
        rate: args.rate,
        inflight: args.inflight,
        sent: stats.sent.load(Ordering::Relaxed),
        received: stats.received.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        unanswered: stats.unanswered.load(Ordering::Relaxed),
        connect_secs,
        elapsed_secs: last.as_secs_f64(),
        hist,
    })
}

async fn run_ws(args: &Args, target: Target, addr: &str) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    let transports = connect_all(args, addr).await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    let stats = Arc::new(Stats::new()?);
    let plan = plan_for(args, stats);
    drive(args, target, transports, plan, connect_secs).await
}

/// State of the embedded callback receiver: one channel per chat.
type Routes = Arc<(Arc<str>, Vec<mpsc::UnboundedSender<Event>>)>;

#[derive(Deserialize)]
struct Callback {
    #[serde(default)]
    reply_to: Option<String>,
}

async fn callback(State(routes): State<Routes>, Json(body): Json<Callback>) -> StatusCode {
    let at = Instant::now();
    let (run, chats) = &*routes;
    if let Some(reply_to) = body.reply_to
        && let Some((chat, _)) = parse_id(run, &reply_to)
        && let Some(tx) = chats.get(chat)
    {
        let _ = tx.send(Event::Reply(reply_to, at));
    }
    StatusCode::OK
}

async fn run_http(args: &Args, addr: &str) -> anyhow::Result<Report> {
    let stats = Arc::new(Stats::new()?);
    let plan = plan_for(args, stats);
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.chats.max(1))
        .timeout(Duration::from_secs(30))
        .build()
        .context("http client")?;
    let url = format!("http://{addr}/channels/http/messages");
    let mut transports = Vec::with_capacity(args.chats);
    let mut senders = Vec::with_capacity(args.chats);
    for i in 0..args.chats {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx.clone());
        transports.push(HttpTransport {
            client: client.clone(),
            url: url.clone(),
            chat_id: chat_id(args, i),
            rx,
            tx,
        });
    }
    let routes: Routes = Arc::new((Arc::clone(&plan.run), senders));
    let listener = TcpListener::bind(("127.0.0.1", args.callback_port))
        .await
        .with_context(|| format!("binding callback port {}", args.callback_port))?;
    let cb_addr = listener.local_addr()?;
    println!("callback listening on http://{cb_addr}/hook");
    let router = Router::new()
        .route("/{*path}", any(callback))
        .route("/", any(callback))
        .with_state(routes);
    let server = tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, router).await;
    });
    let report = drive(args, Target::Http, transports, plan, 0.0).await;
    server.abort();
    report
}

// ---- the baseline: a bare axum WebSocket echo server ----

async fn baseline_ws(ws: WebSocketUpgrade) -> axum::response::Response {
    ws.on_upgrade(baseline_conn)
}

async fn baseline_conn(mut socket: WebSocket) {
    let mut n: u64 = 0;
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            AxMessage::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let text = v.get("text").cloned().unwrap_or(Value::Null);
                n += 1;
                let reply = json!({
                    "type": "message",
                    "id": format!("echo-{n}"),
                    "text": text,
                    "reply_to": id,
                });
                if socket
                    .send(AxMessage::text(reply.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            AxMessage::Close(_) => return,
            _ => {}
        }
    }
}

/// Binds the baseline echo server and serves it in the background; returns its address.
async fn start_baseline(addr: &str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding baseline on {addr}"))?;
    let local = listener.local_addr()?;
    let router = Router::new().route("/ws", get(baseline_ws));
    tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, router).await;
    });
    Ok(local)
}

async fn run_target(args: &Args, target: Target, addr: Option<&str>) -> anyhow::Result<Report> {
    match target {
        Target::Webchat => {
            let addr = addr.context("--addr is required for --target webchat")?;
            run_ws(args, target, addr).await
        }
        Target::Http => {
            let addr = addr.context("--addr is required for --target http")?;
            run_http(args, addr).await
        }
        Target::Baseline => match addr {
            Some(a) => run_ws(args, target, a).await,
            None => {
                let local = start_baseline("127.0.0.1:0").await?;
                run_ws(args, target, &local.to_string()).await
            }
        },
    }
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    if args.serve_baseline {
        return Ok(());
    }
    if args.chats == 0 {
        bail!("--chats must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a finite number >= 0");
    }
    if args.duration.is_none() && args.messages.is_none() {
        bail!("give --duration SECONDS or --messages COUNT");
    }
    if !args
        .chat_prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        bail!("--chat-prefix may only use A-Z a-z 0-9 - _ . :");
    }
    if args.compare && args.target == Target::Baseline {
        bail!("--compare needs --target webchat or http");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async_main(args))
}

async fn async_main(args: Args) -> anyhow::Result<()> {
    if args.serve_baseline {
        let local = start_baseline(args.addr.as_deref().unwrap_or("127.0.0.1:0")).await?;
        println!("baseline listening on {local}");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for ctrl-c")?;
        return Ok(());
    }
    let baseline = if args.compare {
        let r = run_target(&args, Target::Baseline, args.baseline_addr.as_deref()).await?;
        println!("{}", r.human());
        Some(r)
    } else {
        None
    };
    let report = run_target(&args, args.target, args.addr.as_deref()).await?;
    println!("{}", report.human());
    let out = match baseline {
        Some(b) => {
            let ratio = if b.throughput() > 0.0 {
                report.throughput() / b.throughput()
            } else {
                0.0
            };
            let added = |q: f64| round3(report.pct_ms(q) - b.pct_ms(q));
            println!(
                "ratio: {} / baseline throughput = {:.3}; added latency_ms p50={:.3} p90={:.3} \
                 p99={:.3} p99.9={:.3}",
                report.target.name(),
                ratio,
                added(0.5),
                added(0.9),
                added(0.99),
                added(0.999)
            );
            json!({
                "baseline": b.json(),
                "gateway": report.json(),
                "ratio": round3(ratio),
                "added_latency_ms": {
                    "p50": added(0.5), "p90": added(0.9), "p99": added(0.99), "p99_9": added(0.999),
                },
            })
        }
        None => report.json(),
    };
    if args.json {
        println!("{out}");
    }
    Ok(())
}
