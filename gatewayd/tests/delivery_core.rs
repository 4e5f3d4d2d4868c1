//! Delivery through the core's own API, in process, against the fake HTTP callback: the
//! operator operations (reconnect, dead letters) that have no other surface yet, channel health
//! with probing, and thousands of dead letters surviving a restart.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use gateway_tests::{CallbackFault, FakeCallback, TIMEOUT};
use gatewayd::config::Config;
use gatewayd::delivery::health::HealthState;
use gatewayd::events::Event;
use gatewayd::message::ChannelKind;
use gatewayd::runtime::Gateway;
use gatewayd::store::DeadSelector;
use tokio::sync::broadcast;

fn config(data: &Path, callback: &FakeCallback, delivery: &str) -> Config {
    Config::parse(&format!(
        "[gateway]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [channels.webchat]\nenabled = false\n\
         [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\
         [delivery]\nretry_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n{delivery}\n",
        data.display(),
        callback.url()
    ))
    .expect("valid config")
}

async fn post(client: &reqwest::Client, gw: &Gateway, id: &str, chat: &str) {
    let body =
        serde_json::json!({"message_id": id, "chat_id": chat, "sender_id": chat, "text": id});
    let resp = client
        .post(format!("http://{}/channels/http/messages", gw.http_addr))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 202, "{id}");
}

/// Waits on the events bus until `check` holds, re-checking after every event (and after a
/// lag, since events were missed).
async fn wait_for<F, Fut>(events: &mut broadcast::Receiver<Event>, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if check().await {
                return;
            }
            match events.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events bus closed"),
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

fn http_state(gw: &Gateway) -> HealthState {
    gw.delivery
        .channels()
        .into_iter()
        .find(|c| c.channel == ChannelKind::new("http"))
        .map(|c| c.state)
        .expect("http channel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_failure_holds_the_channel_until_the_operator_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    for chat in ["a", "b"] {
        callback.set_chat_mode(chat, Some(CallbackFault::Status(401)));
    }
    let gw = Gateway::start(config(dir.path(), &callback, ""), "test")
        .await
        .expect("start");
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();

    post(&client, &gw, "m-a", "a").await;
    wait_for(
        &mut events,
        "the channel needs re-authentication",
        || async { http_state(&gw) == HealthState::ReauthNeeded },
    )
    .await;
    // A reply committed while the channel is held waits too, and nothing is dead-lettered.
    post(&client, &gw, "m-b", "b").await;
    wait_for(&mut events, "both replies are committed", || async {
        gw.store.counts().await.expect("counts") == (0, 2, 0)
    })
    .await;
    assert_eq!(http_state(&gw), HealthState::ReauthNeeded);

    callback.set_chat_mode("a", None);
    callback.set_chat_mode("b", None);
    let state = gw
        .delivery
        .reconnect(ChannelKind::new("http"))
        .await
        .expect("reconnect");
    assert_eq!(state, HealthState::Connected);
    let delivered = callback
        .wait_delivered(|d| d.len() >= 2, TIMEOUT)
        .await
        .expect("both delivered after reconnect");
    assert_eq!(delivered.len(), 2);
    let received = callback.received();
    let attempts = |chat: &str| received.iter().filter(|d| d.chat_id == chat).count();
    assert_eq!(attempts("a"), 2, "one refused attempt, then the delivery");
    assert_eq!(
        attempts("b"),
        1,
        "b was held, never tried while the credentials were refused"
    );
    wait_for(&mut events, "nothing is pending", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 0)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_channel_is_probed_and_its_dead_letters_retried_when_it_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    let chats: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    for chat in &chats {
        callback.set_chat_mode(chat, Some(CallbackFault::Status(503)));
    }
    // Unreachable for the probe: any HTTP answer would prove the endpoint reachable.
    callback.set_probe_drop(true);
    let cfg = config(
        dir.path(),
        &callback,
        "max_attempts = 2\nprobe_interval = \"100ms\"",
    );
    let gw = Gateway::start(cfg, "test").await.expect("start");
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();
    for chat in &chats {
        post(&client, &gw, &format!("m-{chat}"), chat).await;
    }
    wait_for(&mut events, "all six are dead letters", || async {
        gw.store.counts().await.expect("counts").2 == 6
    })
    .await;
    let status = gw
        .delivery
        .channels()
        .into_iter()
        .find(|c| c.channel == ChannelKind::new("http"))
        .expect("http");
    assert_eq!(status.state, HealthState::Down, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            // The last send's 503, or a probe's failure if one ran since.
            .is_some_and(|e| e.contains("503") || e.contains("callback unreachable")),
        "{status:?}"
    );
    // Still down: the probe keeps failing, nothing gives up silently.
    gateway_tests::poll_until(TIMEOUT, "the down channel is probed", || {
        callback.probes() >= 1
    })
    .await
    .expect("probe");
    assert_eq!(http_state(&gw), HealthState::Down);

    for chat in &chats {
        callback.set_chat_mode(chat, None);
    }
    callback.set_probe_drop(false);
    let delivered = callback
        .wait_delivered(|d| d.len() >= 6, TIMEOUT)
        .await
        .expect("the dead letters are retried after recovery");
    let answered: HashSet<_> = delivered
        .iter()
        .filter_map(|d| d.reply_to.clone())
        .collect();
    assert_eq!(answered.len(), 6);
    assert_eq!(http_state(&gw), HealthState::Connected);
    wait_for(&mut events, "no dead letters remain", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 0)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_dead_letters_survive_a_restart_and_are_all_retried() {
    const CHATS: usize = 50;
    const PER_CHAT: usize = 100;
    const TOTAL: usize = CHATS * PER_CHAT;
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    for c in 0..CHATS {
        callback.set_chat_mode(&format!("chat-{c}"), Some(CallbackFault::Status(400)));
    }
    let cfg = config(dir.path(), &callback, "");
    let gw = Gateway::start(cfg.clone(), "test").await.expect("start");
    let mut events = gw.events.subscribe();
    let mut posters = Vec::new();
    for c in 0..CHATS {
        let url = format!("http://{}/channels/http/messages", gw.http_addr);
        posters.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..PER_CHAT {
                let id = format!("c{c}-m{i}");
                let body = serde_json::json!({"message_id": id, "chat_id": format!("chat-{c}"), "sender_id": format!("u{c}"), "text": id});
                let resp = client.post(&url).json(&body).send().await.expect("post");
                assert_eq!(resp.status().as_u16(), 202);
            }
        }));
    }
    for p in posters {
        p.await.expect("poster");
    }
    wait_for(&mut events, "every reply is a dead letter", || async {
        gw.store.counts().await.expect("counts") == (0, 0, TOTAL as u64)
    })
    .await;
    gw.shutdown().await;

    for c in 0..CHATS {
        callback.set_chat_mode(&format!("chat-{c}"), None);
    }
    let gw = Gateway::start(cfg, "test").await.expect("restart");
    // Every dead letter is still there, listed page by page with the cursor.
    let mut listed = 0;
    let mut cursor = None;
    loop {
        let page = gw
            .delivery
            .list_dead(Some(ChannelKind::new("http")), cursor, 500)
            .await
            .expect("list");
        let Some(last) = page.last() else { break };
        cursor = Some(last.message.id);
        listed += page.len();
        assert!(
            page.iter()
                .all(|d| d.class == gatewayd::send::ErrorClass::Permanent)
        );
    }
    assert_eq!(listed, TOTAL);
    let (letter, history) = gw
        .delivery
        .show_dead(cursor.expect("ids"))
        .await
        .expect("show");
    assert!(letter.last_error.contains("400"), "{letter:?}");
    assert_eq!(history.len(), 1, "one failed attempt in its history");

    let retried = gw
        .delivery
        .retry_dead(&DeadSelector::Channel {
            channel: ChannelKind::new("http"),
            classes: None,
        })
        .await
        .expect("retry");
    assert_eq!(retried, TOTAL as u64);
    let delivered = callback
        .wait_delivered(|d| d.len() >= TOTAL, Duration::from_secs(120))
        .await
        .expect("all retried replies delivered");
    let answered: HashSet<_> = delivered
        .iter()
        .filter_map(|d| d.reply_to.clone())
        .collect();
    assert_eq!(answered.len(), TOTAL, "nothing lost");
    assert_eq!(delivered.len(), TOTAL, "nothing twice");
    let mut events = gw.events.subscribe();
    wait_for(&mut events, "the outbox is clear", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 0)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_retried_or_dropped_one_by_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let callback = FakeCallback::start().await;
    for chat in ["x", "y", "z"] {
        callback.set_chat_mode(chat, Some(CallbackFault::Status(404)));
    }
    let gw = Gateway::start(config(dir.path(), &callback, ""), "test")
        .await
        .expect("start");
    let mut events = gw.events.subscribe();
    let client = reqwest::Client::new();
    for chat in ["x", "y", "z"] {
        post(&client, &gw, &format!("m-{chat}"), chat).await;
    }
    wait_for(&mut events, "three dead letters", || async {
        gw.store.counts().await.expect("counts").2 == 3
    })
    .await;
    let dead = gw.delivery.list_dead(None, None, 10).await.expect("list");
    let id_of = |chat: &str| {
        dead.iter()
            .find(|d| d.message.chat_id == chat)
            .map(|d| d.message.id)
            .expect("dead letter")
    };
    callback.set_chat_mode("x", None);
    let retried = gw
        .delivery
        .retry_dead(&DeadSelector::Ids(vec![id_of("x"), 999_999]))
        .await
        .expect("retry");
    assert_eq!(retried, 1, "unknown ids are ignored");
    let dropped = gw
        .delivery
        .drop_dead(&DeadSelector::Ids(vec![id_of("y")]))
        .await
        .expect("drop");
    assert_eq!(dropped, 1);
    callback
        .wait_delivered(|d| d.iter().any(|x| x.chat_id == "x"), TIMEOUT)
        .await
        .expect("x delivered");
    wait_for(&mut events, "only z remains dead", || async {
        gw.store.counts().await.expect("counts") == (0, 0, 1)
    })
    .await;
    let left = gw.delivery.list_dead(None, None, 10).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message.chat_id, "z");
    assert!(
        gw.delivery.show_dead(id_of("y")).await.is_err(),
        "a dropped letter is gone from the list"
    );
    gw.shutdown().await;
}

/// A reply stored for a channel this gatewayd does not have (its adapter was removed, or the row
/// came from another build) is read back as data, not refused as corrupt: at the next start it
/// becomes a dead letter whose error names the channel, and nothing panics. A stored name that is
/// not a channel name at all is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_reply_for_an_unknown_channel_becomes_a_dead_letter_naming_it() {
    use gatewayd::store::NewReply;
    assert!(ChannelKind::parse("Not A Channel!").is_err());
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(config(&data, &callback, ""), "test.toml")
        .await
        .expect("start");
    let pager = ChannelKind::parse("pager").expect("a channel name");
    assert!(gatewayd::channels::registry::get("pager").is_none());
    let stored = gw
        .store
        .outbox_put(NewReply {
            channel: pager,
            chat_id: "7".to_owned(),
            text: "for a channel that is gone".to_owned(),
            reply_to: None,
        })
        .await
        .expect("stored");
    gw.shutdown().await;

    // The next start resends pending rows: this one has no adapter.
    let gw = Gateway::start(config(&data, &callback, ""), "test.toml")
        .await
        .expect("restart");
    let mut events = gw.events.subscribe();
    let store = gw.store.clone();
    wait_for(&mut events, "the reply is a dead letter", || {
        let store = store.clone();
        async move {
            store
                .dead_letters(None, None, 100)
                .await
                .is_ok_and(|rows| rows.iter().any(|d| d.message.id == stored.id))
        }
    })
    .await;
    let (dead, attempts) = gw.store.dead_letter(stored.id).await.expect("dead letter");
    assert_eq!(dead.message.channel, pager);
    let error = attempts
        .iter()
        .map(|a| a.error.as_str())
        .chain(std::iter::once(dead.last_error.as_str()))
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(error.contains("channel pager is not enabled"), "{error}");
    assert!(callback.received().is_empty(), "nothing was sent elsewhere");
    gw.shutdown().await;
}
