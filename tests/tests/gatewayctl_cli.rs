//! `gatewayctl`, the operator CLI, run as a real binary against a real `gatewayd`: `--help`
//! snapshots, every subcommand in table and JSON output with real traffic behind it (HTTP
//! channel to a fake callback, echo agent), the event stream, completions, the bearer token,
//! and the errors an operator sees (daemon not running, unknown ids, bad arguments).

use std::net::TcpListener;
use std::process::Stdio;

use gateway_tests::{
    CallbackFault, FakeCallback, Gateway, GatewayOptions, TIMEOUT, gatewayctl_bin, poll_until_async,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A `gatewayctl` command with a clean environment (no ambient address or token).
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(gatewayctl_bin());
    cmd.args(args)
        .env_remove("GATEWAYCTL_ADDR")
        .env_remove("GATEWAYCTL_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// What one run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run_cmd(mut cmd: Command) -> Run {
    let out = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .expect("gatewayctl finished in time")
        .expect("gatewayctl ran");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn run(args: &[&str]) -> Run {
    run_cmd(command(args)).await
}

/// Runs `gatewayctl --addr <gw> ARGS…` and expects success; returns stdout.
async fn table(gw: &Gateway, args: &[&str]) -> String {
    let addr = gw.admin_url();
    let mut all = vec!["--addr", addr.as_str()];
    all.extend_from_slice(args);
    let r = run(&all).await;
    assert_eq!(r.code, Some(0), "gatewayctl {args:?} failed: {r:?}");
    assert!(
        r.stderr.is_empty(),
        "gatewayctl {args:?} wrote to stderr: {r:?}"
    );
    for line in r.stdout.lines() {
        assert!(
            line.chars().count() <= 80,
            "gatewayctl {args:?}: a line is wider than 80 columns: {line:?}"
        );
    }
    r.stdout
}

/// Runs `gatewayctl --addr <gw> --output json ARGS…` and parses its one JSON document.
async fn json(gw: &Gateway, args: &[&str]) -> Value {
    let addr = gw.admin_url();
    let mut all = vec!["--addr", addr.as_str(), "--output", "json"];
    all.extend_from_slice(args);
    let r = run(&all).await;
    assert_eq!(r.code, Some(0), "gatewayctl {args:?} failed: {r:?}");
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("gatewayctl {args:?} printed no JSON document ({e}): {r:?}"))
}

/// Runs `gatewayctl --addr <gw> ARGS…` expecting failure with `code`; returns stderr.
async fn fails(gw: &Gateway, args: &[&str], code: i32) -> String {
    let addr = gw.admin_url();
    let mut all = vec!["--addr", addr.as_str()];
    all.extend_from_slice(args);
    let r = run(&all).await;
    assert_eq!(r.code, Some(code), "gatewayctl {args:?}: {r:?}");
    assert!(r.stdout.is_empty(), "gatewayctl {args:?}: {r:?}");
    r.stderr
}

fn http_channel(callback: &FakeCallback, extra: &str) -> GatewayOptions {
    GatewayOptions::with_config(format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n{extra}",
        callback.url()
    ))
}

async fn post(gw: &Gateway, id: &str, chat: &str, text: &str) {
    let reply = gw
        .post_http_message(
            &json!({"message_id": id, "chat_id": chat, "sender_id": chat, "text": text}),
        )
        .await
        .expect("post");
    assert_eq!(reply.status, 202, "{}", reply.text);
}

fn find<'a>(items: &'a Value, key: &str, value: &Value) -> Option<&'a Value> {
    items.as_array()?.iter().find(|i| &i[key] == value)
}

/// The user id holding `address` (e.g. `http:alice`), from `identities list`.
async fn user_of(gw: &Gateway, channel: &str, sender: &str) -> i64 {
    let list = json(gw, &["identities", "list"]).await;
    list["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .find(|i| {
            i["addresses"]
                .as_array()
                .is_some_and(|a| a.contains(&json!({"channel": channel, "sender_id": sender})))
        })
        .and_then(|i| i["user_id"].as_i64())
        .unwrap_or_else(|| panic!("no user with {channel}:{sender} in {list}"))
}

#[tokio::test]
async fn help_is_stable() {
    for (name, args) in [
        ("gatewayctl_help", &["--help"][..]),
        ("gatewayctl_deadletters_help", &["deadletters", "--help"]),
    ] {
        let r = run(args).await;
        assert_eq!(r.code, Some(0), "{r:?}");
        insta::assert_snapshot!(name, r.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_bounded_identity_cache_and_a_link_drops_only_its_users() {
    let callback = FakeCallback::start().await;
    let mut options = http_channel(&callback, "");
    options.gateway_extra = "identity_cache_size = 3".to_owned();
    let gw = Gateway::start(options).await.expect("start");
    // One at a time, so the cache holds the last three in a known order.
    for (i, who) in ["ann", "ben", "cat", "dan", "eve"].iter().enumerate() {
        post(&gw, &format!("c-{i}"), who, "hello").await;
        callback
            .wait_delivered(|d| d.len() == i + 1, TIMEOUT)
            .await
            .expect("echo delivered");
    }
    let s = json(&gw, &["status"]).await;
    assert_eq!(s["identity_cache_capacity"], 3, "{s}");
    assert_eq!(
        s["identity_cache_entries"], 3,
        "five users, three cached: {s}"
    );
    let t = table(&gw, &["status"]).await;
    assert!(t.contains("identity   3 cached address(es) of 3"), "{t}");

    // dan and eve are among the three most recent; linking them drops just their two entries.
    let dan = user_of(&gw, "http", "dan").await;
    let eve = user_of(&gw, "http", "eve").await;
    json(
        &gw,
        &[
            "identities",
            "link",
            &dan.to_string(),
            "--user",
            &eve.to_string(),
        ],
    )
    .await;
    let s = json(&gw, &["status"]).await;
    assert_eq!(s["identity_cache_entries"], 1, "cat stays cached: {s}");
    // eve's next message is routed to the merged user at once.
    post(&gw, "c-5", "eve", "again").await;
    callback
        .wait_delivered(|d| d.len() == 6, TIMEOUT)
        .await
        .expect("sixth echo delivered");
    assert_eq!(user_of(&gw, "http", "eve").await, dan);
    let sessions = json(&gw, &["sessions", "list"]).await;
    let keys: Vec<&str> = sessions["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|x| x["key"].as_str())
        .collect();
    assert!(
        !keys.contains(&format!("user:{eve}").as_str()),
        "eve's session merged into dan's: {sessions}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sessions_and_identities_against_a_real_gatewayd() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback, ""))
        .await
        .expect("start");
    post(&gw, "a-1", "alice", "hello from alice").await;
    post(&gw, "b-1", "bob", "hello from bob").await;
    callback
        .wait_delivered(|d| d.len() == 2, TIMEOUT)
        .await
        .expect("both echoes delivered");

    // status: the counters catch up with the delivery the callback just saw.
    poll_until_async(
        TIMEOUT,
        "status counts both messages in and out",
        || async {
            let s = json(&gw, &["status"]).await;
            s["messages_in"] == 2 && s["messages_out"] == 2
        },
    )
    .await
    .expect("status counters");
    let s = json(&gw, &["status"]).await;
    assert_eq!(s["agent_provider"], "echo", "{s}");
    assert_eq!(s["sessions_stored"], 2, "{s}");
    assert_eq!(s["sessions_resident"], 2, "{s}");
    assert_eq!(s["sessions_capacity"], 10_000, "{s}");
    assert_eq!(s["dead_letters"], 0, "{s}");
    assert_eq!(s["identity_cache_entries"], 2, "{s}");
    assert_eq!(s["identity_cache_capacity"], 100_000, "{s}");
    assert!(s["uptime_seconds"].is_u64(), "{s}");
    let http = find(&s["channels"], "channel", &json!("http")).expect("http channel");
    assert_eq!(http["state"], "connected", "{s}");
    assert!(http["sent"].as_u64() >= Some(2), "{s}");
    assert!(http["since_at_ms"].as_i64() > Some(0), "{s}");
    assert!(
        find(&s["channels"], "channel", &json!("webchat")).is_some(),
        "{s}"
    );
    let t = table(&gw, &["status"]).await;
    assert!(t.starts_with("gatewayd "), "{t}");
    assert!(t.contains("2 in (") && t.contains("2 out ("), "{t}");
    assert!(t.contains("2 resident of 10000, 2 stored"), "{t}");
    assert!(
        t.contains("identity   2 cached address(es) of 100000"),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("http") && l.contains("connected")),
        "{t}"
    );

    // identities list: two strangers, two users.
    let alice = user_of(&gw, "http", "alice").await;
    let bob = user_of(&gw, "http", "bob").await;
    assert_ne!(alice, bob);
    let list = json(&gw, &["identities", "list", "--channel", "http"]).await;
    assert_eq!(
        list["identities"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    let page = json(&gw, &["identities", "list", "--limit", "1"]).await;
    assert_eq!(
        page["identities"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let rest = json(&gw, &["identities", "list", "--cursor", &cursor]).await;
    assert_eq!(
        rest["identities"].as_array().map(Vec::len),
        Some(1),
        "{rest}"
    );
    assert_ne!(rest["identities"][0], page["identities"][0]);
    let none = json(&gw, &["identities", "list", "--channel", "webchat"]).await;
    assert_eq!(none["identities"], json!([]), "{none}");
    let t = table(&gw, &["identities", "list"]).await;
    assert!(t.starts_with("USER"), "{t}");
    assert!(t.contains("http:alice") && t.contains("http:bob"), "{t}");

    // sessions list / show.
    let alice_key = format!("user:{alice}");
    let bob_key = format!("user:{bob}");
    let list = json(&gw, &["sessions", "list"]).await;
    let sessions = &list["sessions"];
    assert_eq!(sessions.as_array().map(Vec::len), Some(2), "{list}");
    let a = find(sessions, "key", &json!(alice_key)).expect("alice's session");
    assert_eq!(a["kind"], "direct", "{a}");
    assert_eq!(a["user_id"], alice, "{a}");
    assert_eq!(a["last_channel"], "http", "{a}");
    assert_eq!(a["turns"], 1, "{a}");
    assert_eq!(a["resident"], true, "{a}");
    assert!(a["last_active_at_ms"].as_i64() > Some(0), "{a}");
    let mine = json(&gw, &["sessions", "list", "--user", &alice.to_string()]).await;
    assert_eq!(mine["sessions"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine["sessions"][0]["key"], alice_key.as_str());
    let page = json(&gw, &["sessions", "list", "--limit", "1"]).await;
    assert_eq!(page["sessions"].as_array().map(Vec::len), Some(1), "{page}");
    assert!(page["next_cursor"].is_string(), "{page}");
    let all = json(&gw, &["sessions", "list", "--limit", "1", "--all"]).await;
    assert_eq!(all["sessions"].as_array().map(Vec::len), Some(2), "{all}");
    assert_eq!(all["next_cursor"], Value::Null, "{all}");
    let webchat = json(&gw, &["sessions", "list", "--channel", "webchat"]).await;
    assert_eq!(webchat["sessions"], json!([]), "{webchat}");
    let t = table(&gw, &["sessions", "list"]).await;
    assert!(t.starts_with("KEY"), "{t}");
    assert!(t.contains(&alice_key) && t.contains(&bob_key), "{t}");

    let show = json(&gw, &["sessions", "show", &alice_key]).await;
    assert_eq!(show["session"]["key"], alice_key.as_str(), "{show}");
    let transcript = show["transcript"].as_array().expect("transcript");
    let said: Vec<(&str, &str, &str)> = transcript
        .iter()
        .map(|e| {
            (
                e["role"].as_str().unwrap_or_default(),
                e["text"].as_str().unwrap_or_default(),
                e["channel"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            ("user", "hello from alice", "http"),
            ("assistant", "hello from alice", "http")
        ],
        "{show}"
    );
    assert!(transcript.iter().all(|e| e["at_ms"].as_i64() > Some(0)));
    let tail = json(&gw, &["sessions", "show", &alice_key, "--tail", "1"]).await;
    assert_eq!(
        tail["transcript"].as_array().map(Vec::len),
        Some(1),
        "{tail}"
    );
    assert_eq!(tail["transcript"][0]["role"], "assistant", "{tail}");
    let t = table(&gw, &["sessions", "show", &alice_key]).await;
    assert!(t.contains("hello from alice"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.contains("agent") && l.contains("hello from alice")),
        "{t}"
    );

    // sessions evict: gone from memory, still listed as stored.
    let evicted = json(&gw, &["sessions", "evict", &alice_key]).await;
    assert_eq!(evicted, json!({"key": alice_key, "evicted": true}));
    let list = json(&gw, &["sessions", "list"]).await;
    let a = find(&list["sessions"], "key", &json!(alice_key)).expect("still stored");
    assert_eq!(a["resident"], false, "{list}");
    assert_eq!(a["turns"], 1, "{list}");
    let resident = json(&gw, &["sessions", "list", "--resident"]).await;
    assert!(
        find(&resident["sessions"], "key", &json!(alice_key)).is_none(),
        "{resident}"
    );
    assert!(
        find(&resident["sessions"], "key", &json!(bob_key)).is_some(),
        "{resident}"
    );
    let t = table(&gw, &["sessions", "evict", &alice_key]).await;
    assert!(t.contains("was not resident"), "{t}");
    let t = table(&gw, &["sessions", "evict", &bob_key]).await;
    assert!(t.starts_with(&format!("evicted {bob_key}")), "{t}");

    // identities show / link / unlink.
    let me = json(&gw, &["identities", "show", &alice.to_string()]).await;
    assert_eq!(
        me,
        json!({"user_id": alice, "addresses": [{"channel": "http", "sender_id": "alice"}]})
    );
    let t = table(&gw, &["identities", "show", &alice.to_string()]).await;
    assert!(t.contains("http:alice"), "{t}");
    let merged = json(
        &gw,
        &[
            "identities",
            "link",
            &alice.to_string(),
            "--user",
            &bob.to_string(),
        ],
    )
    .await;
    assert_eq!(merged["user_id"], alice, "{merged}");
    let addresses = merged["addresses"].as_array().expect("addresses");
    assert!(
        addresses.contains(&json!({"channel": "http", "sender_id": "alice"})),
        "{merged}"
    );
    assert!(
        addresses.contains(&json!({"channel": "http", "sender_id": "bob"})),
        "{merged}"
    );
    let err = fails(&gw, &["identities", "show", &bob.to_string()], 1).await;
    assert_eq!(
        err,
        format!("gatewayctl: no user {bob}\n"),
        "bob merged away"
    );
    let attached = json(
        &gw,
        &[
            "identities",
            "link",
            &alice.to_string(),
            "--address",
            "webchat:carol",
        ],
    )
    .await;
    assert!(
        attached["addresses"]
            .as_array()
            .is_some_and(|a| a.contains(&json!({"channel": "webchat", "sender_id": "carol"}))),
        "{attached}"
    );
    assert_eq!(user_of(&gw, "webchat", "carol").await, alice);
    let unlinked = json(&gw, &["identities", "unlink", "http:bob"]).await;
    assert_eq!(unlinked["previous_user_id"], alice, "{unlinked}");
    assert_eq!(
        unlinked["address"],
        json!({"channel": "http", "sender_id": "bob"}),
        "{unlinked}"
    );
    let new_bob = unlinked["new_user_id"].as_i64().expect("new user id");
    assert_ne!(new_bob, alice);
    let shown = json(&gw, &["identities", "show", &new_bob.to_string()]).await;
    assert_eq!(
        shown["addresses"],
        json!([{"channel": "http", "sender_id": "bob"}]),
        "{shown}"
    );
    let t = table(&gw, &["identities", "unlink", "webchat:carol"]).await;
    assert!(t.starts_with("unlinked webchat:carol: now user "), "{t}");
    assert_ne!(user_of(&gw, "webchat", "carol").await, alice);

    // The server's NOT_FOUND in the operator's words, and usage errors.
    let err = fails(&gw, &["sessions", "show", "user:99999"], 1).await;
    assert_eq!(err, "gatewayctl: no session user:99999\n");
    let err = fails(&gw, &["sessions", "evict", "user:99999"], 1).await;
    assert_eq!(err, "gatewayctl: no session user:99999\n");
    let err = fails(&gw, &["identities", "show", "99999"], 1).await;
    assert_eq!(err, "gatewayctl: no user 99999\n");
    let err = fails(&gw, &["sessions", "show", "nonsense"], 1).await;
    assert!(err.starts_with("gatewayctl: INVALID_ARGUMENT: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Which channels exist is gatewayd's to say: it refuses one it does not know, by name.
    let err = fails(&gw, &["sessions", "list", "--channel", "smtp"], 1).await;
    assert!(
        err.starts_with("gatewayctl: INVALID_ARGUMENT: unknown channel `smtp`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    for bad in [
        &["sessions", "list", "--limit", "0"][..],
        &["sessions", "list", "--channel", ""],
        &["sessions", "show"],
        &["identities", "link", "1"],
        &[
            "identities",
            "link",
            "1",
            "--user",
            "2",
            "--address",
            "http:x",
        ],
        &["identities", "unlink", "bob"],
        &["identities", "show", "not-a-number"],
        &["sessions", "frobnicate"],
    ] {
        let err = fails(&gw, bad, 2).await;
        assert!(err.starts_with("error: "), "{bad:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimits_show_the_bucket_of_a_busy_chat() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(
        &callback,
        "\n[rate_limits.http]\nper_chat_per_second = 1\n",
    ))
    .await
    .expect("start");

    // Four replies to one chat at 1/s (burst 1 when per_chat_burst is not set) wait on its
    // bucket.
    for i in 1..=4 {
        post(&gw, &format!("busy-{i}"), "busy", &format!("busy {i}")).await;
    }
    poll_until_async(
        TIMEOUT,
        "the busy chat's bucket shows throttling",
        || async {
            let r = json(&gw, &["ratelimits"]).await;
            find(&r["channels"], "channel", &json!("http"))
                .and_then(|h| find(&h["chats"], "chat_id", &json!("busy")))
                .is_some_and(|b| b["throttled"].as_u64() >= Some(1))
        },
    )
    .await
    .expect("ratelimits");
    let t = table(&gw, &["ratelimits"]).await;
    assert!(t.starts_with("CHANNEL"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("http") && l.contains("busy")),
        "{t}"
    );
    callback
        .wait_delivered(
            |d| d.iter().filter(|d| d.chat_id == "busy").count() == 4,
            TIMEOUT,
        )
        .await
        .expect("the busy chat is answered at its pace");

    let r = json(&gw, &["ratelimits", "--hottest", "5"]).await;
    let http = find(&r["channels"], "channel", &json!("http")).expect("http");
    assert_eq!(
        http["channel_bucket"],
        Value::Null,
        "no channel-wide limit: {r}"
    );
    let busy = find(&http["chats"], "chat_id", &json!("busy")).expect("busy bucket");
    assert_eq!(busy["per_second"], 1.0, "{r}");
    assert_eq!(busy["queued"], 0, "all sent: {r}");
    assert!(busy["throttled"].as_u64() >= Some(1), "{r}");
    assert!(
        http["throttled_total"].as_u64() >= busy["throttled"].as_u64(),
        "every wait on the chat's bucket is a wait on the channel: {r}"
    );
    assert!(busy["tokens"].is_f64(), "{r}");
    assert!(
        find(&r["channels"], "channel", &json!("webchat")).is_some(),
        "{r}"
    );
    // The bucket spaces sends one at a time, so its burst is 1, not 0.
    assert_eq!(busy["burst"], 1, "the burst in force: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_dead_letters() {
    let callback = FakeCallback::start().await;
    callback.set_chat_mode("dead", Some(CallbackFault::Status(400)));
    let gw = Gateway::start(http_channel(&callback, ""))
        .await
        .expect("start");
    post(&gw, "ok-1", "fine", "this one arrives").await;
    callback
        .wait_delivered(|d| d.len() == 1, TIMEOUT)
        .await
        .expect("delivered");

    // Dead letters: the callback refuses the "dead" chat with 400.
    post(&gw, "dead-1", "dead", "first lost reply").await;
    post(&gw, "dead-2", "dead", "second lost reply").await;
    poll_until_async(TIMEOUT, "two dead letters", || async {
        json(&gw, &["deadletters", "list"]).await["total"] == 2
    })
    .await
    .expect("dead letters");
    let list = json(&gw, &["deadletters", "list"]).await;
    let letters = list["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 2, "{list}");
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    let first = &letters[0];
    assert_eq!(first["channel"], "http", "{list}");
    assert_eq!(first["chat_id"], "dead", "{list}");
    assert_eq!(first["text"], "first lost reply", "{list}");
    assert_eq!(first["reply_to"], "dead-1", "{list}");
    assert_eq!(first["error_class"], "permanent", "{list}");
    assert_eq!(first["attempts"], 1, "{list}");
    assert!(first["dead_at_ms"].as_i64() > Some(0), "{list}");
    assert_eq!(letters[1]["reply_to"], "dead-2", "oldest first: {list}");
    let first_id = first["id"].as_i64().expect("id").to_string();
    let second_id = letters[1]["id"].as_i64().expect("id").to_string();
    let page = json(&gw, &["deadletters", "list", "--limit", "1"]).await;
    assert_eq!(page["total"], 2, "{page}");
    let cursor = page["next_cursor"].as_str().expect("next page").to_owned();
    let rest = json(
        &gw,
        &["deadletters", "list", "--limit", "1", "--cursor", &cursor],
    )
    .await;
    assert_eq!(
        rest["dead_letters"][0]["id"].to_string(),
        second_id,
        "{rest}"
    );
    let none = json(&gw, &["deadletters", "list", "--channel", "webchat"]).await;
    assert_eq!(none["dead_letters"], json!([]), "{none}");
    let t = table(&gw, &["deadletters", "list"]).await;
    assert!(t.starts_with("ID"), "{t}");
    assert!(t.contains("permanent") && t.contains("dead"), "{t}");
    assert!(t.contains("2 dead letter(s) in all"), "{t}");

    let show = json(&gw, &["deadletters", "show", &first_id]).await;
    assert_eq!(show["dead_letter"]["text"], "first lost reply", "{show}");
    let errors = show["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{show}");
    assert_eq!(errors[0]["attempt"], 1, "{show}");
    assert_eq!(errors[0]["error_class"], "permanent", "{show}");
    assert!(
        errors[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{show}"
    );
    let t = table(&gw, &["deadletters", "show", &first_id]).await;
    assert!(
        t.contains("first lost reply") && t.contains("permanent"),
        "{t}"
    );
    assert_eq!(json(&gw, &["status"]).await["dead_letters"], 2);

    // The outbox: every reply with its status; the HTTP channel reports no receipts.
    let outbox = json(&gw, &["outbox", "list", "--channel", "http"]).await;
    let entries = outbox["entries"].as_array().expect("entries");
    let statuses: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["delivered", "dead", "dead"],
        "oldest first: {outbox}"
    );
    assert_eq!(entries[0]["chat_id"], "fine", "{outbox}");
    assert_eq!(entries[0]["receipt_status"], Value::Null, "{outbox}");
    assert_eq!(entries[1]["error_class"], "permanent", "{outbox}");
    let dead = json(
        &gw,
        &["outbox", "list", "--status", "dead", "--chat", "dead"],
    )
    .await;
    assert_eq!(dead["entries"].as_array().map(Vec::len), Some(2), "{dead}");
    let page = json(&gw, &["outbox", "list", "--limit", "1"]).await;
    assert!(page["next_cursor"].is_string(), "{page}");
    let t = table(&gw, &["outbox", "list"]).await;
    assert!(t.starts_with("ID") && t.contains("RECEIPT"), "{t}");
    assert!(t.contains("delivered") && t.contains("400"), "{t}");

    // channels: health and counters, then a reconnect.
    let channels = json(&gw, &["channels", "list"]).await;
    let http = find(&channels["channels"], "channel", &json!("http")).expect("http");
    assert_eq!(http["state"], "connected", "{channels}");
    assert!(http["sent"].as_u64() >= Some(1), "{channels}");
    assert!(http["failed"].as_u64() >= Some(2), "{channels}");
    let reconnects = http["reconnects"].as_u64().expect("reconnects");
    assert!(find(&channels["channels"], "channel", &json!("webchat")).is_some());
    let t = table(&gw, &["channels", "list"]).await;
    assert!(t.starts_with("CHANNEL"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("http") && l.contains("connected")),
        "{t}"
    );
    let reconnected = json(&gw, &["channels", "reconnect", "http"]).await;
    assert_eq!(reconnected["channel"], "http", "{reconnected}");
    assert_eq!(reconnected["state"], "connected", "{reconnected}");
    assert_eq!(
        reconnected["reconnects"].as_u64(),
        Some(reconnects + 1),
        "{reconnected}"
    );
    let t = table(&gw, &["channels", "reconnect", "http"]).await;
    assert!(
        t.starts_with("http is connected after the reconnect"),
        "{t}"
    );
    let err = fails(&gw, &["channels", "reconnect", "telegram"], 1).await;
    assert_eq!(err, "gatewayctl: channel telegram is not enabled\n");

    // retry one by id once the chat accepts again; drop the other by channel.
    callback.set_chat_mode("dead", None);
    let retried = json(&gw, &["deadletters", "retry", &first_id]).await;
    assert_eq!(retried, json!({"retried": 1}));
    callback
        .wait_delivered(
            |d| d.iter().any(|d| d.reply_to.as_deref() == Some("dead-1")),
            TIMEOUT,
        )
        .await
        .expect("the retried reply is delivered");
    let list = json(&gw, &["deadletters", "list"]).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(
        list["dead_letters"][0]["id"].to_string(),
        second_id,
        "{list}"
    );
    let err = fails(&gw, &["deadletters", "retry", &first_id], 1).await;
    assert_eq!(err, format!("gatewayctl: no dead letter {first_id}\n"));
    let err = fails(&gw, &["deadletters", "show", "99999"], 1).await;
    assert_eq!(err, "gatewayctl: no dead letter 99999\n");
    let err = fails(&gw, &["deadletters", "drop", "99999"], 1).await;
    assert_eq!(err, "gatewayctl: no dead letter 99999\n");
    let t = table(&gw, &["deadletters", "drop", "--channel", "http"]).await;
    assert_eq!(t, "dropped 1 dead letter(s)\n");
    let list = json(&gw, &["deadletters", "list"]).await;
    assert_eq!(
        list,
        json!({"dead_letters": [], "next_cursor": null, "total": 0})
    );
    let dropped = json(&gw, &["deadletters", "drop", "--channel", "http"]).await;
    assert_eq!(dropped, json!({"dropped": 0}));
    let t = table(&gw, &["deadletters", "retry", "--channel", "http"]).await;
    assert!(t.starts_with("retried 0 dead letter(s)"), "{t}");

    // Exactly one of ids or --channel.
    for bad in [
        &["deadletters", "retry"][..],
        &["deadletters", "drop"],
        &["deadletters", "retry", "1", "--channel", "http"],
        &["deadletters", "drop", "2", "--channel", "webchat"],
        &["deadletters", "retry", "x"],
        &["ratelimits", "--hottest", "0"],
        &["channels", "reconnect", ""],
    ] {
        let err = fails(&gw, bad, 2).await;
        assert!(err.starts_with("error: "), "{bad:?}: {err}");
    }
    let err = fails(&gw, &["channels", "reconnect", "smtp"], 1).await;
    assert!(
        err.starts_with("gatewayctl: INVALID_ARGUMENT: unknown channel `smtp`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_counts_as_a_reconnect_not_as_a_message_sent() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback, ""))
        .await
        .expect("start");
    post(&gw, "one", "solo", "just one").await;
    callback
        .wait_delivered(|d| d.len() == 1, TIMEOUT)
        .await
        .expect("delivered");
    poll_until_async(TIMEOUT, "the http channel counts its one send", || async {
        let c = json(&gw, &["channels", "list"]).await;
        find(&c["channels"], "channel", &json!("http")).is_some_and(|h| h["sent"] == 1)
    })
    .await
    .expect("sent counter");
    let after = json(&gw, &["channels", "reconnect", "http"]).await;
    assert_eq!(after["reconnects"], 1, "{after}");
    assert_eq!(
        callback.probes(),
        1,
        "the reconnect probed the callback once"
    );
    assert_eq!(callback.delivered().len(), 1, "and sent no message");
    // ChannelInfo.sent is "Messages (chunks) sent": the probe is not one.
    assert_eq!(after["sent"], 1, "a probe is not a message sent: {after}");
}

/// A running `gatewayctl events` with its output read line by line.
struct Watcher {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Watcher {
    /// Starts `gatewayctl events` and waits until it is subscribed (its stderr notice).
    async fn start(gw: &Gateway, output: &str) -> Watcher {
        let addr = gw.admin_url();
        let mut cmd = command(&["events", "--addr", &addr, "--output", output]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn gatewayctl events");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let notice = tokio::time::timeout(TIMEOUT, stderr.next_line())
            .await
            .expect("the watcher starts in time")
            .expect("stderr readable")
            .expect("a notice on stderr");
        assert_eq!(
            notice,
            format!("gatewayctl: watching events of gatewayd at {addr}; Ctrl-C to stop")
        );
        Watcher {
            child,
            stdout,
            stderr,
        }
    }

    /// Reads stdout lines until `done` says so; returns them all.
    async fn read_until(&mut self, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.stdout.next_line().await.expect("stdout readable") {
                let stop = done(&line);
                lines.push(line);
                if stop {
                    return;
                }
            }
            panic!("gatewayctl events ended early");
        })
        .await;
        assert!(
            read.is_ok(),
            "timed out; events so far:\n{}",
            lines.join("\n")
        );
        lines
    }

    /// Interrupts it like Ctrl-C would, expecting a clean exit and nothing more on stderr.
    async fn interrupt(mut self) {
        let pid = self.child.id().expect("running");
        let kill = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await
            .expect("kill -INT");
        assert!(kill.success());
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("exits on SIGINT")
            .expect("wait");
        assert!(status.success(), "exit status {status}");
        let rest = self.stderr.next_line().await.expect("stderr");
        assert_eq!(rest, None, "no error after the interrupt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_one_message_in_order_until_interrupted() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback, ""))
        .await
        .expect("start");
    let mut as_json = Watcher::start(&gw, "json").await;
    let mut as_text = Watcher::start(&gw, "table").await;
    post(&gw, "ev-1", "ev-chat", "watch me").await;

    // JSON lines: message_in → turn_committed → message_out for this message, in order.
    let mut inbox_id = None;
    let mut stage = 0;
    let lines = as_json
        .read_until(|line| {
            let e: Value = serde_json::from_str(line).expect("each line is one JSON object");
            assert!(e["at_ms"].as_i64() > Some(0), "{line}");
            assert!(e["kind"].is_string(), "{line}");
            match (stage, e["kind"].as_str()) {
                (0, Some("message_in")) if e["chat_id"] == "ev-chat" => {
                    assert_eq!(e["channel"], "http", "{line}");
                    inbox_id = e["inbox_id"].as_i64();
                    stage = 1;
                }
                (1, Some("turn_committed")) if e["inbox_id"].as_i64() == inbox_id => {
                    assert!(
                        e["key"].as_str().is_some_and(|k| k.starts_with("user:")),
                        "{line}"
                    );
                    stage = 2;
                }
                (2, Some("message_out")) if e["chat_id"] == "ev-chat" => {
                    assert_eq!(e["channel"], "http", "{line}");
                    assert!(e["outbox_id"].as_i64() > Some(0), "{line}");
                    stage = 3;
                }
                (_, Some("message_out" | "message_in")) => panic!("out of order: {line}"),
                _ => {}
            }
            stage == 3
        })
        .await;
    assert!(inbox_id.is_some(), "{lines:?}");

    // Text lines: `<time> <kind> key=value …`, the same path in the same order.
    let mut seen = Vec::new();
    let lines = as_text
        .read_until(|line| {
            let mut words = line.split(' ');
            let time = words.next().unwrap_or_default();
            assert!(
                time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "an RFC 3339 UTC time first: {line}"
            );
            let kind = words.next().unwrap_or_default().to_owned();
            assert!(words.all(|w| w.contains('=')), "key=value fields: {line}");
            seen.push(kind.clone());
            kind == "message_out" && line.contains("chat_id=ev-chat")
        })
        .await;
    let position = |kind: &str| seen.iter().position(|k| k == kind);
    assert!(
        position("message_in") < position("turn_committed")
            && position("turn_committed") < position("message_out"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" message_in ")
            && l.contains("channel=http")
            && l.contains("chat_id=ev-chat")
            && l.contains(&format!("inbox_id={}", inbox_id.unwrap_or_default()))),
        "{lines:?}"
    );

    as_json.interrupt().await;
    as_text.interrupt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_sent_and_never_printed() {
    const TOKEN: &str = "ctl-9d1e-secret";
    let callback = FakeCallback::start().await;
    let mut opts = http_channel(&callback, "");
    opts.admin_extra = "token_env = \"GW_ADMIN_TOKEN\"".to_owned();
    opts.env
        .push(("GW_ADMIN_TOKEN".to_owned(), TOKEN.to_owned()));
    let gw = Gateway::start(opts).await.expect("start");

    let err = fails(&gw, &["status"], 1).await;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("gatewayctl: "), "{err}");
    assert!(
        err.contains("--token") && err.contains("GATEWAYCTL_TOKEN"),
        "{err}"
    );

    let err = fails(&gw, &["status", "--token", "wrong-guess"], 1).await;
    assert_eq!(
        err,
        "gatewayctl: the bearer token is not valid; pass the admin token with --token or GATEWAYCTL_TOKEN\n"
    );

    let r = run(&["status", "--addr", &gw.admin_url(), "--token", TOKEN]).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        !r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN),
        "{r:?}"
    );

    let mut cmd = command(&["channels", "list", "--output", "json"]);
    cmd.env("GATEWAYCTL_ADDR", gw.admin_url())
        .env("GATEWAYCTL_TOKEN", TOKEN);
    let r = run_cmd(cmd).await;
    assert_eq!(
        r.code,
        Some(0),
        "the token and address come from the environment: {r:?}"
    );
    assert!(!r.stdout.contains(TOKEN), "{r:?}");

    let mut cmd = command(&["--help"]);
    cmd.env("GATEWAYCTL_TOKEN", TOKEN);
    let r = run_cmd(cmd).await;
    assert!(!r.stdout.contains(TOKEN), "help hides the token: {r:?}");
}

#[tokio::test]
async fn without_a_daemon_errors_are_one_line_and_completions_still_work() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["status", "--addr", addr.as_str()],
        vec![
            "--addr",
            addr.as_str(),
            "--output",
            "json",
            "sessions",
            "list",
        ],
        vec!["deadletters", "retry", "1", "--addr", addr.as_str()],
        vec!["events", "--addr", addr.as_str()],
    ] {
        let r = run(&args).await;
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
        let prefix = format!("gatewayctl: cannot reach gatewayd at {addr}: ");
        assert!(r.stderr.starts_with(&prefix), "{r:?}");
        assert!(
            r.stderr.trim_end().ends_with(
                "; start it with `cargo run --release --bin gatewayd` (or check --addr / GATEWAYCTL_ADDR)"
            ),
            "{r:?}"
        );
    }
    let mut cmd = command(&["status"]);
    cmd.env("GATEWAYCTL_ADDR", format!("127.0.0.1:{port}"));
    let r = run_cmd(cmd).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr
            .starts_with(&format!("gatewayctl: cannot reach gatewayd at {addr}: ")),
        "GATEWAYCTL_ADDR is used, with http:// added: {r:?}"
    );

    for bad in [
        &[][..],
        &["status", "--output", "yaml"],
        &["--addr", "https://127.0.0.1:1", "status"],
        &["nosuchcommand"],
        &["completions", "tcsh"],
    ] {
        let r = run(bad).await;
        assert_eq!(r.code, Some(2), "{bad:?}: {r:?}");
        assert!(
            r.stderr.contains("Usage:") || r.stderr.contains("error:"),
            "{r:?}"
        );
    }

    for shell in ["bash", "zsh", "fish"] {
        let r = run(&["completions", shell]).await;
        assert_eq!(r.code, Some(0), "{r:?}");
        assert!(r.stdout.contains("gatewayctl"), "{shell}: {r:?}");
        assert!(r.stdout.contains("deadletters"), "{shell}: {r:?}");
    }
    let bash = run(&["completions", "bash"]).await.stdout;
    assert!(
        bash.contains("complete ") && bash.contains("_gatewayctl"),
        "{bash}"
    );
}
