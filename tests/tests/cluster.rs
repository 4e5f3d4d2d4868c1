//! Several `gatewayd` instances on one PostgreSQL database (`[cluster] enabled = true`): every
//! instance heartbeats, the session partitions spread evenly over the live instances and move
//! when one dies, joins or leaves; a WebChat reply reaches the socket on whichever instance
//! holds it; a webhook message posted to any instance is answered once.
//!
//! These tests need PostgreSQL whatever `GATEWAY_TEST_STORE` says; without
//! `GATEWAY_TEST_PG_URL` (or in the PostgreSQL pass of `tests/run.sh`) they print why and pass.

use std::time::{Duration, Instant};

use gateway_tests::cluster::{ClusterRig, instance_id};
use gateway_tests::{
    FakeCallback, FakeOpenAi, GatewayOptions, TIMEOUT, WebChatClient, poll_until_async,
    skip_without_cluster_pg,
};
use serde_json::{Value, json};

/// Long enough for a lease to lapse and be taken over a few times on a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_heartbeat_and_share_the_partitions_evenly() {
    skip_without_cluster_pg!();
    let mut rig = ClusterRig::start(3, |_| GatewayOptions::default())
        .await
        .expect("start three instances");
    let owners = rig
        .wait_balanced(&[0, 1, 2], SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));
    eprintln!("partitions: {owners:?}");

    // Membership: one row per instance, each heartbeat fresh by the server's clock.
    let members = rig.members().await.expect("members");
    let ids: Vec<&str> = members.iter().map(|m| m.instance_id.as_str()).collect();
    assert_eq!(ids, ["gw-0", "gw-1", "gw-2"], "{members:?}");
    for m in &members {
        assert!(!m.leaving, "{m:?}");
        assert!(
            m.now_ms - m.heartbeat_at_ms < 2_000,
            "a heartbeat within the lease ttl: {m:?}"
        );
        assert_eq!(
            m.advertise_url.as_deref(),
            Some(
                rig.gw(rig.index_of(&m.instance_id).expect("index"))
                    .http_base()
                    .as_str()
            ),
            "{m:?}"
        );
    }

    // Each instance's own gauge agrees with the lease table.
    for i in 0..3 {
        let counts = rig.owned_counts().await.expect("counts");
        let want = counts.get(&instance_id(i)).copied().unwrap_or(0) as f64;
        let gauge = rig
            .metric(i, "gateway_cluster_partitions_owned")
            .await
            .expect("metrics");
        assert_eq!(gauge, want, "{} owns {want} partitions", instance_id(i));
    }

    // kill -9: the survivors take the dead instance's partitions.
    let held = rig.held_by(1).await.expect("held by gw-1");
    assert!(!held.is_empty(), "gw-1 held partitions before the kill");
    let killed_at = Instant::now();
    rig.kill(1).await;
    let took = rig
        .wait_reowned(1, &held, killed_at, SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));
    eprintln!("re-owned {} partitions {took:?} after kill -9", held.len());
    rig.wait_balanced(&[0, 2], SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));

    // A restarted instance joins again and gets its share back.
    rig.restart(1).await.expect("restart gw-1");
    rig.wait_balanced(&[0, 1, 2], SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));

    // SIGTERM hands the partitions over at once, well before the lease would lapse.
    let held = rig.held_by(2).await.expect("held by gw-2");
    let stopped_at = Instant::now();
    rig.stop(2).await.expect("SIGTERM gw-2");
    let took = rig
        .wait_reowned(2, &held, stopped_at, SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));
    eprintln!("re-owned {} partitions {took:?} after SIGTERM", held.len());
    let members = rig.members().await.expect("members");
    let gone = members.iter().find(|m| m.instance_id == "gw-2");
    assert!(
        gone.is_none_or(|m| m.leaving),
        "a stopped instance is marked leaving or gone: {members:?}"
    );
    rig.wait_balanced(&[0, 1], SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));
}

fn is_reply_to(frame: &Value, id: &str) -> bool {
    frame["type"] == "message" && frame["reply_to"] == id
}

/// Sends `id` on `ws`, expects its ack, and returns every frame up to its reply.
async fn exchange(ws: &mut WebChatClient, id: &str, text: &str) -> Vec<Value> {
    ws.send_message(id, text).await.expect("send");
    let frames = ws
        .recv_until(|f| is_reply_to(f, id), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("reply to {id}: {e:#}"));
    assert!(
        frames.iter().any(|f| f["type"] == "ack" && f["id"] == id),
        "{id} was acknowledged: {frames:?}"
    );
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webchat_reply_reaches_the_socket_on_the_instance_holding_it() {
    skip_without_cluster_pg!();
    let rig = ClusterRig::start(2, |_| {
        GatewayOptions::with_config("[agent]\nprovider = \"echo\"\n")
    })
    .await
    .expect("start two instances");
    rig.wait_balanced(&[0, 1], SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));

    // Sixteen chats, every socket on gw-0: about half the sessions belong to gw-1's partitions,
    // so their replies are sent by gw-1 and relayed to gw-0.
    let mut crossed = 0;
    for n in 0..16 {
        let chat = format!("relay-{n}");
        let mut ws = WebChatClient::connect(&rig.gw(0).ws_url(&chat))
            .await
            .expect("connect to gw-0");
        let mut frames = exchange(&mut ws, "m1", &format!("first of {chat}")).await;
        // The lane sends a chat's replies in order: a second copy of m1's reply would come
        // before m2's.
        frames.extend(exchange(&mut ws, "m2", &format!("second of {chat}")).await);
        for id in ["m1", "m2"] {
            let replies = frames.iter().filter(|f| is_reply_to(f, id)).count();
            assert_eq!(replies, 1, "{chat}: one reply to {id}: {frames:?}");
        }
        let partition = rig
            .inbox_partition("webchat", &chat)
            .await
            .expect("inbox partition")
            .unwrap_or_else(|| panic!("{chat}'s inbox rows carry their partition"));
        let owners = rig.partition_owners().await.expect("owners");
        if owners.get(&partition).map(String::as_str) == Some("gw-1") {
            crossed += 1;
        }
        ws.close().await.expect("close");
    }
    eprintln!("{crossed} of 16 chats were answered by gw-1 through the relay");
    assert!(crossed > 0, "some session belongs to gw-1");
    let sent = rig
        .metrics(1)
        .await
        .expect("gw-1 metrics")
        .sum_with("gateway_cluster_relay_sends_total", "outcome=\"delivered\"")
        .unwrap_or(0.0);
    let received = rig
        .metrics(0)
        .await
        .expect("gw-0 metrics")
        .sum_with(
            "gateway_cluster_relay_received_total",
            "outcome=\"delivered\"",
        )
        .unwrap_or(0.0);
    assert!(
        sent >= f64::from(2 * crossed) && received >= f64::from(2 * crossed),
        "gw-1 relayed {sent} replies and gw-0 took {received}; {crossed} chats crossed"
    );

    // The relay route refuses a request without the secret.
    let refused = rig
        .gw(0)
        .post_json(
            "/cluster/webchat",
            &json!({"chat_id": "relay-0", "frame": "{}"}),
        )
        .await
        .expect("post without the secret");
    assert_eq!(refused.status, 401, "{}", refused.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_message_posted_to_any_instance_is_answered_once() {
    skip_without_cluster_pg!();
    let callback = FakeCallback::start().await;
    let rig = ClusterRig::start(3, |_| {
        GatewayOptions::with_config(format!(
            "[agent]\nprovider = \"echo\"\n\n\
             [channels.http]\nenabled = true\ncallback_url = \"{}\"\n\n\
             [delivery]\nretry_backoff = \"20ms\"\n",
            callback.url()
        ))
    })
    .await
    .expect("start three instances");
    rig.wait_balanced(&[0, 1, 2], SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));

    // Each of 12 chats gets 3 messages, each posted to another instance; a chat's redelivery
    // (the same message id) goes to yet another instance and is deduplicated.
    let mut ids = Vec::new();
    for chat in 0..12 {
        for k in 0..3usize {
            let id = format!("c{chat}-m{k}");
            let body = json!({
                "message_id": id,
                "chat_id": format!("chat-{chat}"),
                "sender_id": format!("u-{chat}"),
                "text": format!("message {k} of chat {chat}"),
                "chat_type": "direct",
            });
            let at = (chat + k) % 3;
            let reply = rig.gw(at).post_http_message(&body).await.expect("post");
            assert_eq!(reply.status, 202, "{id} to gw-{at}: {}", reply.text);
            if k == 0 {
                let again = rig
                    .gw((at + 1) % 3)
                    .post_http_message(&body)
                    .await
                    .expect("post again");
                assert_eq!(again.status, 202, "{id} again: {}", again.text);
            }
            ids.push(id);
        }
    }
    let all = ids.clone();
    callback
        .wait_delivered(
            |d| {
                all.iter()
                    .all(|id| d.iter().any(|x| x.reply_to.as_deref() == Some(id)))
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rig.logs_tail(30)));
    let delivered = callback.delivered();
    for id in &ids {
        let n = delivered
            .iter()
            .filter(|d| d.reply_to.as_deref() == Some(id))
            .count();
        assert_eq!(n, 1, "one reply to {id}: {delivered:?}");
    }
    // Every instance answered some of them (each owns a third of the partitions).
    let rows = rig
        .query("SELECT count(*) FROM inbox WHERE done")
        .await
        .expect("inbox");
    let done: i64 = rows[0].get(0);
    assert_eq!(done, 36, "36 messages, each committed and handled once");
}

/// The rows of `webchat_sockets` for `chat`: the instances recorded as holding a socket.
async fn socket_rows(rig: &ClusterRig, chat: &str) -> Vec<String> {
    rig.query(&format!(
        "SELECT instance_id FROM webchat_sockets WHERE chat_id = '{chat}' ORDER BY instance_id"
    ))
    .await
    .expect("webchat_sockets")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_where_the_socket_is_not_is_relayed_to_its_instance() {
    skip_without_cluster_pg!();
    let llm = FakeOpenAi::start().await;
    let rig = ClusterRig::start(2, |_| {
        GatewayOptions::with_config(format!(
            "[agent]\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n\
             retry_backoff = \"10ms\"\n\n[delivery]\nretry_backoff = \"20ms\"\n",
            llm.base_url()
        ))
    })
    .await
    .expect("start two instances");

    // The message arrives on a socket of gw-1; its turn is held at the model while that socket
    // closes and the chat's only socket opens on gw-0.
    let chat = "moving-chat";
    llm.hold("HOLD");
    let mut first = WebChatClient::connect(&rig.gw(1).ws_url(chat))
        .await
        .expect("connect to gw-1");
    first.send_message("m1", "HOLD me").await.expect("send");
    let ack = first.recv(TIMEOUT).await.expect("ack");
    assert_eq!(ack["type"], "ack", "{ack}");
    llm.wait_held("HOLD", 1, TIMEOUT).await.expect("turn held");
    poll_until_async(TIMEOUT, "gw-1's socket is recorded", || async {
        socket_rows(&rig, chat).await == ["gw-1"]
    })
    .await
    .expect("recorded");
    first.close().await.expect("close");
    poll_until_async(TIMEOUT, "gw-1's socket record is removed", || async {
        socket_rows(&rig, chat).await.is_empty()
    })
    .await
    .expect("removed");
    let mut second = WebChatClient::connect(&rig.gw(0).ws_url(chat))
        .await
        .expect("connect to gw-0");
    poll_until_async(TIMEOUT, "gw-0's socket is recorded", || async {
        socket_rows(&rig, chat).await == ["gw-0"]
    })
    .await
    .expect("recorded");
    llm.release("HOLD");

    // The reply reaches gw-0's socket once, whichever instance sent it; a second message's
    // reply comes after it (the chat's lane is in order), so no copy of the first follows.
    let frames = second
        .recv_until(|f| is_reply_to(f, "m1"), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("reply to m1: {e:#}\n{}", rig.logs_tail(30)));
    let mut all = frames;
    all.extend(exchange(&mut second, "m2", "and another").await);
    assert_eq!(
        all.iter().filter(|f| is_reply_to(f, "m1")).count(),
        1,
        "{all:?}"
    );

    // The sender of m1's reply relayed it when it was not gw-0.
    let relayed = rig
        .metrics(1)
        .await
        .expect("gw-1 metrics")
        .sum_with("gateway_cluster_relay_sends_total", "outcome=\"delivered\"")
        .unwrap_or(0.0);
    let took = rig
        .metrics(0)
        .await
        .expect("gw-0 metrics")
        .sum_with(
            "gateway_cluster_relay_received_total",
            "outcome=\"delivered\"",
        )
        .unwrap_or(0.0);
    assert_eq!(relayed, took, "what gw-1 relayed, gw-0 took");
    eprintln!("gw-1 relayed {relayed} frame(s) to gw-0");

    // The relay route itself: the secret, a chat with a socket here, one without.
    let url = format!("{}/cluster/webchat", rig.gw(0).http_base());
    let post = |auth: Option<String>, body: Value| {
        let mut req = rig.gw(0).client().post(&url).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.expect("relay request").status().as_u16() }
    };
    let frame = json!({"type": "message", "id": "relayed", "text": "by hand"}).to_string();
    let bearer = Some(format!("Bearer {}", rig.secret()));
    assert_eq!(
        post(None, json!({"chat_id": chat, "frame": frame})).await,
        401
    );
    assert_eq!(
        post(
            Some("Bearer wrong".to_owned()),
            json!({"chat_id": chat, "frame": frame})
        )
        .await,
        401
    );
    assert_eq!(
        post(
            bearer.clone(),
            json!({"chat_id": "nobody-here", "frame": frame})
        )
        .await,
        404
    );
    assert_eq!(post(bearer.clone(), json!({"chat_id": chat})).await, 400);
    assert_eq!(
        post(bearer.clone(), json!({"chat_id": "", "frame": frame})).await,
        400
    );
    assert_eq!(
        post(bearer, json!({"chat_id": chat, "frame": frame})).await,
        200
    );
    let got = second.recv(TIMEOUT).await.expect("relayed frame");
    assert_eq!(got["id"], "relayed", "{got}");

    // A closed socket's record goes.
    second.close().await.expect("close");
    poll_until_async(TIMEOUT, "gw-0's socket record is removed", || async {
        socket_rows(&rig, chat).await.is_empty()
    })
    .await
    .expect("removed");
}
