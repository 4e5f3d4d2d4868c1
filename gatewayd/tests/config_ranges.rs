//! Every numeric key of the configuration, through the real binary: values inside the key's
//! range (its ends included) are accepted by `gatewayd check-config`, and the daemon then starts
//! and answers a WebChat message; values outside it (too small, too large, zero, negative, NaN,
//! infinite, of the wrong type) are refused by `check-config` and by a start, with an error line
//! naming each bad key. The keys and ranges come from the one table, `channels::registry::numeric_keys()` (`config::NUMERIC_KEYS` and each adapter's).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use gateway_tests::webchat::WebChatClient;
use gateway_tests::{Gateway, GatewayOptions, TIMEOUT, gatewayd_bin};
use gatewayd::config::{NumericKey, Range};

/// Every numeric key of the file: the core's and each channel adapter's.
fn numeric_keys() -> Vec<&'static NumericKey> {
    gatewayd::channels::registry::numeric_keys()
}
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Every channel the registry knows: each has a `[rate_limits.<channel>]` table.
fn channels() -> Vec<&'static str> {
    gatewayd::channels::registry::names()
}

/// One generated value: its TOML text and whether the key's range admits it.
#[derive(Debug, Clone)]
struct Value {
    toml: String,
    valid: bool,
}

fn ok(toml: impl Into<String>) -> Value {
    Value {
        toml: toml.into(),
        valid: true,
    }
}

fn bad(toml: impl Into<String>) -> Value {
    Value {
        toml: toml.into(),
        valid: false,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The ends of `range`, and the values just outside them.
fn edges(range: Range) -> (Vec<Value>, Vec<Value>) {
    match range {
        Range::Int(lo, hi) => (
            vec![ok(lo.to_string()), ok(hi.to_string())],
            lo.checked_sub(1)
                .map(|below| bad(below.to_string()))
                .into_iter()
                .chain([bad((hi + 1).to_string())])
                .collect(),
        ),
        Range::Float(lo, hi) => (
            vec![ok(format!("{lo:?}")), ok(format!("{hi:?}"))],
            vec![
                bad(format!("{:?}", lo / 2.0)),
                bad(format!("{:?}", hi * 2.0)),
            ],
        ),
        Range::Duration(lo, hi) => (
            vec![
                ok(format!("\"{}ms\"", ms(lo))),
                ok(format!("\"{}ms\"", ms(hi))),
            ],
            ms(lo)
                .checked_sub(1)
                .map(|below| bad(format!("\"{below}ms\"")))
                .into_iter()
                .chain([bad(format!("\"{}ms\"", ms(hi) + 1))])
                .collect(),
        ),
    }
}

/// Values for a key of `range`: inside (ends included) and outside, of every shape.
fn values(range: Range) -> BoxedStrategy<Value> {
    let (inside, outside) = edges(range);
    let edge = prop::sample::select(inside.into_iter().chain(outside).collect::<Vec<_>>());
    let hostile = prop::sample::select(vec![
        bad("-1"),
        bad("\"abc\""),
        bad("\"NaN\""),
        bad("nan"),
        bad("inf"),
        bad("-inf"),
        bad("true"),
        bad("[1]"),
        bad("9223372036854775807"),
        bad("-9223372036854775808"),
    ]);
    match range {
        Range::Int(lo, hi) => prop_oneof![
            3 => (lo..=hi).prop_map(|n| ok(n.to_string())),
            2 => edge,
            1 => Just(bad("2305843009213693952")),
            1 => Just(bad("1.5")),
            1 => hostile,
        ]
        .boxed(),
        Range::Float(lo, hi) => prop_oneof![
            3 => (lo..=hi).prop_map(|x| ok(format!("{x:?}"))),
            2 => edge,
            1 => prop::sample::select(vec![bad("0.0"), bad("-0.5"), bad("1e-12"), bad("1e-300"), bad("1e300"), bad("\"5\"")]),
            1 => hostile,
        ]
        .boxed(),
        Range::Duration(lo, hi) => {
            let (lo, hi) = (ms(lo), ms(hi));
            prop_oneof![
                3 => (lo..=hi).prop_map(|n| ok(format!("\"{n}ms\""))),
                1 => (lo.div_ceil(1000)..=hi / 1000).prop_map(|s| ok(s.to_string())),
                2 => edge,
                1 => prop::sample::select(vec![
                    bad("-5"),
                    bad("1.5"),
                    bad("\"5 fortnights\""),
                    bad("\"99999999999999999999d\""),
                    bad("\"1.5s\""),
                    bad("\"\""),
                ]),
                1 => hostile,
            ]
            .boxed()
        }
    }
}

/// A configuration: full key path to value.
type Keys = BTreeMap<String, Value>;

/// Renders `keys` into the test harness's options: `[gateway]` and `[http]` keys inside the
/// harness's own tables, every other key in a table of its own.
fn options(keys: &Keys) -> GatewayOptions {
    let mut gateway = String::new();
    let mut http = String::new();
    let mut tables: BTreeMap<&str, String> = BTreeMap::new();
    for (path, value) in keys {
        let (table, leaf) = path.rsplit_once('.').unwrap_or(("", path));
        let line = format!("{leaf} = {}\n", value.toml);
        if table == "gateway" {
            gateway.push_str(&line);
        } else if table == "http" {
            http.push_str(&line);
        } else {
            tables.entry(table).or_default().push_str(&line);
        }
    }
    let extra = tables
        .iter()
        .map(|(table, lines)| format!("[{table}]\n{lines}"))
        .collect::<Vec<_>>()
        .join("\n");
    GatewayOptions {
        gateway_extra: gateway,
        http_extra: http,
        extra_config: extra,
        ..GatewayOptions::default()
    }
}

/// The full key path of `numeric_keys()[index]`, with `*` replaced by `channel`.
fn full_path(index: usize, channel: &str) -> String {
    numeric_keys()[index].path.replace('*', channel)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The error lines of a refused file.
fn error_lines(err: &str) -> Vec<&str> {
    err.lines().filter(|l| l.starts_with("  ")).collect()
}

/// Asserts that the errors are exactly one line per key in `refused`, each naming its key.
fn assert_refused(what: &str, err: &str, refused: &[&String], config: &str) {
    let lines = error_lines(err);
    assert_eq!(
        lines.len(),
        refused.len(),
        "{what}: one error line per refused key {refused:?}:\n{err}\n--- config ---\n{config}"
    );
    for path in refused {
        assert!(
            lines.iter().any(|l| l
                .trim_start()
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with([' ', ':']))),
            "{what}: no error line names `{path}`:\n{err}\n--- config ---\n{config}"
        );
    }
}

/// Checks `keys` through `check-config`, then through a start of the daemon.
async fn check(keys: &Keys) {
    let opts = options(keys);
    let dir = tempfile::Builder::new()
        .prefix("gatewayd-ranges-")
        .tempdir()
        .expect("temp dir");
    let config = opts.render_config(&dir.path().join("data"));
    let path = dir.path().join("gatewayd.toml");
    std::fs::write(&path, &config).expect("write config");
    let refused: Vec<&String> = keys
        .iter()
        .filter(|(_, v)| !v.valid)
        .map(|(k, _)| k)
        .collect();

    let out = run(dir.path(), &path, true).await;
    let err = stderr(&out);
    if refused.is_empty() {
        assert!(
            out.status.success(),
            "check-config must accept:\n{err}\n--- config ---\n{config}"
        );
        answers_a_message(opts, &config).await;
    } else {
        assert_eq!(
            out.status.code(),
            Some(2),
            "check-config must refuse {refused:?}:\n{err}\n--- config ---\n{config}"
        );
        assert_refused("check-config", &err, &refused, &config);
        let out = run(dir.path(), &path, false).await;
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "a start must refuse {refused:?}:\n{err}\n--- config ---\n{config}"
        );
        assert_refused("a start", &err, &refused, &config);
    }
}

/// Runs `gatewayd [check-config] --config path` to its end (a start that should be refused is
/// killed, and fails the test, if it keeps running).
async fn run(dir: &Path, config: &Path, check_config: bool) -> Output {
    let bin = gatewayd_bin().expect("gatewayd binary");
    let mut cmd = tokio::process::Command::new(bin);
    if check_config {
        cmd.arg("check-config");
    }
    let child = cmd
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("GATEWAYD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gatewayd");
    tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("gatewayd must exit")
        .expect("wait for gatewayd")
}

/// Starts the daemon and has the echo agent answer one WebChat message (of one byte, which
/// every `max_message_bytes` admits).
async fn answers_a_message(opts: GatewayOptions, config: &str) {
    let mut gw = Gateway::start(opts).await.unwrap_or_else(|e| {
        panic!("an accepted config must start: {e:#}\n--- config ---\n{config}")
    });
    let mut ws = WebChatClient::connect(&gw.ws_url("ranges"))
        .await
        .expect("connect WebChat");
    ws.send_message("m1", "x").await.expect("send");
    let frames = ws
        .recv_until(|f| f["type"] == "message" && f["reply_to"] == "m1", TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no answer: {e:#}\n--- config ---\n{config}\n--- stderr ---\n{}",
                gw.stderr_tail(40)
            )
        });
    let reply = frames.last().expect("the reply");
    assert_eq!(reply["text"], "x", "the echo agent's reply: {reply}");
    let _ = ws.close().await;
    let status = gw.stop().await.expect("stop");
    assert!(status.success(), "clean exit: {status}\n{config}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Every key at once at each end of its range (accepted, and the daemon answers), then every
/// key just outside it (each key refused in the same run).
#[test]
fn every_numeric_key_at_and_beyond_the_ends_of_its_range() {
    let rt = runtime();
    for end in 0..2 {
        let mut keys = Keys::new();
        for (i, key) in numeric_keys().into_iter().enumerate() {
            let (inside, _) = edges(key.range);
            for channel in channels() {
                keys.insert(full_path(i, channel), inside[end].clone());
            }
        }
        rt.block_on(check(&keys));
    }
    for side in 0..2 {
        let mut keys = Keys::new();
        for (i, key) in numeric_keys().into_iter().enumerate() {
            let (_, outside) = edges(key.range);
            let value = outside.get(side).unwrap_or(&outside[0]);
            for channel in channels() {
                keys.insert(full_path(i, channel), value.clone());
            }
        }
        rt.block_on(check(&keys));
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64)
}

/// A few keys, each with a generated value (inside, at the ends of, or outside its range).
fn generated_keys() -> impl Strategy<Value = Keys> {
    let one = (0..numeric_keys().len(), prop::sample::select(channels())).prop_flat_map(
        |(index, channel)| {
            values(numeric_keys()[index].range).prop_map(move |v| (full_path(index, channel), v))
        },
    );
    prop::collection::vec(one, 1..6).prop_map(|pairs| {
        let mut keys = Keys::new();
        for (path, value) in pairs {
            keys.entry(path).or_insert(value);
        }
        keys
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Generated values for every numeric key: `check-config` accepts exactly those inside the
    /// ranges (and the daemon then answers), and names every other one, in one run.
    #[test]
    fn prop_numeric_keys_are_refused_or_run(keys in generated_keys()) {
        let rt = runtime();
        rt.block_on(check(&keys));
    }
}
