//! Benchmark: the admin API's `ListSessions` with a page of 100 out of many stored sessions,
//! end to end. A data directory is filled with `SESSIONS` sessions (default 1 000 000;
//! bulk-inserted after the store created the schema): 90 % direct (`user:N`) and 10 % group
//! (`group:telegram:-100…`, `group:discord:…`, `group:webchat:room-…`), their last channel
//! webchat 55 %, telegram 30 %, discord 14.9 % and http 0.1 %. The real gateway is then started
//! in process (`gatewayd::runtime::Gateway`, echo agent, WebChat, HTTP and admin listeners on
//! 127.0.0.1:0) and the generated tonic client calls `ListSessions` with `limit = 100` over
//! loopback, one call at a time, each timed from request to decoded response:
//!
//! - `first`: the first page (no cursor);
//! - `random`: pages after cursors drawn at random from the stored keys;
//! - `last`: the last page (the cursor 101 keys before the end: 100 rows, no next cursor);
//! - `channel=telegram` / `channel=http`: first page and random cursors with a channel filter,
//!   a common and a rare channel.
//!
//! Every case is `PAGES` calls (default 1000) after a short untimed warm-up, and prints the
//! median, p99 and max from an HdrHistogram (µs, 3 significant figures). Run with `cargo bench -p gatewayd --bench list_sessions`;
//! `SESSIONS=n` and `PAGES=n` shrink it.

use std::path::Path;
use std::time::Instant;

use gateway_proto::admin::ListSessionsRequest;
use gateway_proto::admin::admin_client::AdminClient;
use gatewayd::config::Config;
use gatewayd::runtime::Gateway;
use gatewayd::store::Store;
use gatewayd::store::sqlite::SqliteStore;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

/// Untimed calls before each case.
const WARM_UP: usize = 20;
/// Page size asked for.
const LIMIT: u32 = 100;

/// A bijective 64-bit mix (splitmix64's finalizer).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The last channel of session number `i`: webchat 55 %, telegram 30 %, discord 14.9 %,
/// http 0.1 %.
fn channel_of(i: usize) -> &'static str {
    match mix(i as u64 ^ 0x5eed) % 1000 {
        0..550 => "webchat",
        550..850 => "telegram",
        850..999 => "discord",
        _ => "http",
    }
}

/// The key of session number `i`: nine in ten direct, one in ten a group on its channel.
fn key_of(i: usize, channel: &str) -> String {
    if i % 10 != 9 {
        return format!("user:{}", i + 1);
    }
    let h = mix(i as u64);
    match channel {
        "telegram" => format!("group:telegram:-100{}", h % 10_000_000_000),
        "discord" => format!(
            "group:discord:{}",
            100_000_000_000_000_000 + h % 900_000_000_000_000_000
        ),
        _ => format!("group:{channel}:room-{h:012x}"),
    }
}

/// Creates the schema through the store, then inserts `n` sessions in one transaction;
/// returns their keys and last channels, sorted by key as the store orders them.
fn populate(db: &Path, n: usize) -> Vec<(String, &'static str)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = SqliteStore::open(db).expect("create the store and its schema");
        store.close().await;
    });
    let mut conn = rusqlite::Connection::open(db).expect("open the database for bulk insert");
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .expect("pragmas");
    let tx = conn.transaction().expect("begin");
    let mut keys = Vec::with_capacity(n);
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO sessions (key, created_at, last_active, turns, last_channel)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .expect("prepare");
        let base = 1_700_000_000_000_i64;
        for i in 0..n {
            let channel = channel_of(i);
            let key = key_of(i, channel);
            let h = mix(i as u64 ^ 0xface);
            let created = base + (h % 10_000_000_000) as i64;
            let last = created + (h % 1_000_000_000) as i64;
            insert
                .execute(rusqlite::params![
                    key,
                    created,
                    last,
                    (h % 200) as i64 + 1,
                    channel
                ])
                .expect("insert session");
            keys.push((key, channel));
        }
    }
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    keys.sort_unstable();
    keys.dedup_by(|a, b| a.0 == b.0);
    keys
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// One case: every request in `requests` after `WARM_UP` untimed ones, each timed alone.
/// Returns the histogram (µs) and the rows returned in total.
async fn run_case(
    client: &mut AdminClient<Channel>,
    requests: &[ListSessionsRequest],
) -> (Histogram<u64>, usize) {
    for r in requests.iter().cycle().take(WARM_UP) {
        client.list_sessions(r.clone()).await.expect("warm-up call");
    }
    let mut h = histogram();
    let mut rows = 0;
    for r in requests {
        let request = r.clone();
        let t = Instant::now();
        let page = client.list_sessions(request).await.expect("ListSessions");
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        h.saturating_record(us.max(1));
        let page = page.into_inner();
        assert!(page.sessions.len() <= LIMIT as usize);
        rows += page.sessions.len();
    }
    (h, rows)
}

/// A page request; `channel` is a channel's name, or empty for any.
fn request(cursor: &str, channel: &str) -> ListSessionsRequest {
    ListSessionsRequest {
        cursor: cursor.to_owned(),
        limit: LIMIT,
        user_id: 0,
        channel: channel.to_owned(),
        resident_only: false,
    }
}

fn main() {
    let sessions = env_usize("SESSIONS", 1_000_000).max(LIMIT as usize + 1);
    let pages = env_usize("PAGES", 1000).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let config_text = format!(
        "[gateway]\ndata_dir = {data:?}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[workflows]\nenabled = false\n"
    );
    let config = Config::parse(&config_text).expect("config");
    let t = Instant::now();
    let keys = populate(&config.database_path(), sessions);
    let populate_s = t.elapsed().as_secs_f64();
    assert_eq!(keys.len(), sessions, "session keys are distinct");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let results = runtime.block_on(async {
        let gateway = Gateway::start(config, "list_sessions.toml")
            .await
            .expect("start the gateway");
        let admin = gateway.admin_addr.expect("admin API enabled");
        let mut client = AdminClient::connect(format!("http://{admin}"))
            .await
            .expect("connect to the admin API");

        let mut state = 7_u64;
        let mut random_cursors = |n: usize| -> Vec<String> {
            (0..n)
                .map(|_| {
                    state += 1;
                    keys[(mix(state) % keys.len() as u64) as usize].0.clone()
                })
                .collect()
        };
        let first = vec![request("", ""); pages];
        let random: Vec<_> = random_cursors(pages)
            .iter()
            .map(|c| request(c, ""))
            .collect();
        let last = vec![request(&keys[keys.len() - 1 - LIMIT as usize].0, ""); pages];
        let mut cases = vec![("first", first), ("random", random), ("last", last)];
        for (first, random, channel) in [
            (
                "channel=telegram first",
                "channel=telegram random",
                "telegram",
            ),
            ("channel=http first", "channel=http random", "http"),
        ] {
            cases.push((first, vec![request("", channel); pages]));
            let requests = random_cursors(pages)
                .iter()
                .map(|c| request(c, channel))
                .collect();
            cases.push((random, requests));
        }

        // Every case's first request answers exactly what the stored keys say it should.
        for (name, requests) in &cases {
            let r = &requests[0];
            let want: Vec<&str> = keys
                .iter()
                .filter(|(k, c)| {
                    k.as_str() > r.cursor.as_str() && (r.channel.is_empty() || r.channel == *c)
                })
                .take(LIMIT as usize)
                .map(|(k, _)| k.as_str())
                .collect();
            let got = client
                .list_sessions(r.clone())
                .await
                .expect("check call")
                .into_inner();
            let got: Vec<&str> = got.sessions.iter().map(|s| s.key.as_str()).collect();
            assert_eq!(got, want, "{name}: the page differs from the stored keys");
        }

        // The last page really is the last: 100 rows and no next cursor.
        let page = client
            .list_sessions(cases[2].1[0].clone())
            .await
            .expect("last page")
            .into_inner();
        assert_eq!(page.sessions.len(), LIMIT as usize);
        assert!(page.next_cursor.is_empty());

        let mut results = Vec::new();
        for (name, requests) in &cases {
            let started = Instant::now();
            let (h, rows) = run_case(&mut client, requests).await;
            results.push((*name, h, rows, started.elapsed()));
        }
        gateway.shutdown().await;
        results
    });

    println!();
    println!("==== list_sessions: ListSessions limit={LIMIT} over {sessions} stored sessions ====");
    println!("populate (bulk insert) {populate_s:.1}s");
    for (name, h, rows, took) in &results {
        println!(
            "{name:<24} calls={:<5} rows/call={:>6.1} median={:>8.0}us p99={:>8.0}us max={:>8.0}us mean={:>8.0}us ({:.1}s)",
            h.len(),
            *rows as f64 / h.len() as f64,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            h.mean(),
            took.as_secs_f64()
        );
    }
    let json: Vec<String> = results
        .iter()
        .map(|(name, h, _, _)| {
            format!(
                "{{\"case\":\"{name}\",\"median_us\":{},\"p99_us\":{},\"max_us\":{}}}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max()
            )
        })
        .collect();
    println!(
        "{{\"bench\":\"list_sessions\",\"sessions\":{sessions},\"limit\":{LIMIT},\"cases\":[{}]}}",
        json.join(",")
    );
}
