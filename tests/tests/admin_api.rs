//! The gRPC admin API of the real `gatewayd`: bearer-token checks, the loopback rule, the event
//! stream of one message's whole path, slow watchers, gRPC health and reflection, and `/metrics`.

use std::time::Duration;

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_client::AdminClient;
use gateway_tests::{FakeCallback, Gateway, GatewayOptions, TIMEOUT, run_cli};
use pb::watch_events_response::Event as E;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn http_channel(callback: &FakeCallback) -> GatewayOptions {
    GatewayOptions::with_config(format!(
        "[channels.http]\nenabled = true\ncallback_url = \"{}\"\n",
        callback.url()
    ))
}

async fn post(gw: &Gateway, id: &str, chat: &str) {
    let reply = gw
        .post_http_message(
            &json!({"message_id": id, "chat_id": chat, "sender_id": chat, "text": id}),
        )
        .await
        .expect("post");
    assert_eq!(reply.status, 202, "{}", reply.text);
}

async fn channel(gw: &Gateway) -> Channel {
    Channel::from_shared(gw.admin_url())
        .expect("uri")
        .connect()
        .await
        .expect("connect to the admin API")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_and_never_logged() {
    const TOKEN: &str = "adm-7f3c-secret-token";
    let callback = FakeCallback::start().await;
    let mut opts = http_channel(&callback);
    opts.admin_extra = "token_env = \"GW_ADMIN_TOKEN\"".to_owned();
    opts.log_level = Some("debug".to_owned());
    opts.env
        .push(("GW_ADMIN_TOKEN".to_owned(), TOKEN.to_owned()));
    let mut gw = Gateway::start(opts).await.expect("start");
    let ch = channel(&gw).await;

    let mut anonymous = AdminClient::new(ch.clone());
    let err = anonymous
        .get_overview(pb::GetOverviewRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    for token in ["wrong", "adm-7f3c-secret-tokeN", ""] {
        let header: tonic::metadata::MetadataValue<_> =
            format!("Bearer {token}").parse().expect("ascii");
        let mut client =
            AdminClient::with_interceptor(ch.clone(), move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", header.clone());
                Ok(r)
            });
        let err = client
            .get_overview(pb::GetOverviewRequest {})
            .await
            .expect_err("wrong token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token}: {err}");
    }

    let header: tonic::metadata::MetadataValue<_> =
        format!("Bearer {TOKEN}").parse().expect("ascii");
    let mut client = AdminClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", header.clone());
        Ok(r)
    });
    let overview = client
        .get_overview(pb::GetOverviewRequest {})
        .await
        .expect("the right token is accepted")
        .into_inner();
    assert_eq!(overview.agent_provider, "echo");

    gw.stop().await.expect("stop");
    let logs = format!(
        "{}{}",
        gw.stderr_log(),
        std::fs::read_dir(gw.data_dir().join("logs"))
            .expect("log dir")
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect::<String>()
    );
    assert!(logs.contains("gatewayd started"), "logs were written");
    assert!(!logs.contains(TOKEN), "the token never reaches the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_address_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gatewayd.toml");
    std::fs::write(
        &config,
        "[gateway]\ndata_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"0.0.0.0:0\"\n",
    )
    .expect("write config");
    let out = run_cli(dir.path(), &["--config", config.to_str().expect("utf8")]);
    assert!(!out.status.success(), "it must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("admin.listen"))
        .unwrap_or_else(|| panic!("no admin.listen line in:\n{stderr}"));
    assert!(
        line.contains("not a loopback address") && line.contains("token"),
        "{line}"
    );
    assert!(
        !dir.path().join("data").join("gateway.db").exists(),
        "nothing was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_follows_one_message_along_its_whole_path_in_order() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback))
        .await
        .expect("start");
    let mut client = AdminClient::new(channel(&gw).await);
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {})
        .await
        .expect("watch")
        .into_inner();
    post(&gw, "m-1", "chat-1").await;

    let mut kinds = Vec::new();
    let collected = tokio::time::timeout(TIMEOUT, async {
        while let Some(item) = stream.next().await {
            let event = item.expect("event").event.expect("payload");
            let kind = match &event {
                E::MessageIn(m) => {
                    assert_eq!(m.chat_id, "chat-1");
                    assert_eq!(m.channel, "http");
                    "message_in"
                }
                E::SessionCreated(_) => "session_created",
                E::TurnCommitted(_) => "turn_committed",
                E::MessageOut(m) => {
                    assert_eq!(m.chat_id, "chat-1");
                    "message_out"
                }
                E::ChannelStateChanged(c) => {
                    assert_eq!(c.state, pb::ChannelState::Connected as i32);
                    "channel_connected"
                }
                other => panic!("unexpected event {other:?}"),
            };
            kinds.push(kind);
            if kind == "message_out" {
                return;
            }
        }
    })
    .await;
    assert!(collected.is_ok(), "events so far: {kinds:?}");
    assert_eq!(
        kinds,
        [
            "message_in",
            "session_created",
            "turn_committed",
            "channel_connected",
            "message_out"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_never_slows_the_gateway() {
    const MESSAGES: usize = 2000;
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback))
        .await
        .expect("start");
    let mut client = AdminClient::new(channel(&gw).await);
    // Subscribed, but not reading while traffic flows. (That a watcher the server cannot keep
    // up with gets a `lagged` marker is shown in process, in gatewayd/tests/admin_core.rs:
    // over loopback the transport's buffers absorb more events than the bus holds.)
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {})
        .await
        .expect("watch")
        .into_inner();
    let mut posters = Vec::new();
    for c in 0..20 {
        let client = gw.client().clone();
        let url = format!("{}/channels/http/messages", gw.http_base());
        posters.push(tokio::spawn(async move {
            for i in 0..MESSAGES / 20 {
                let id = format!("c{c}-m{i}");
                let body = json!({"message_id": id, "chat_id": format!("chat-{c}"), "sender_id": format!("u{c}"), "text": id});
                let resp = client.post(&url).json(&body).send().await.expect("post");
                assert_eq!(resp.status().as_u16(), 202);
            }
        }));
    }
    for p in posters {
        p.await.expect("poster");
    }
    callback
        .wait_delivered(|d| d.len() >= MESSAGES, Duration::from_secs(60))
        .await
        .expect("every reply is delivered while the watcher sleeps");
    // The stream is intact: the first events it holds are from the start of the traffic.
    let first = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .expect("an event")
        .expect("stream open")
        .expect("ok");
    assert!(
        matches!(first.event, Some(E::MessageIn(_) | E::SessionCreated(_))),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let gw = Gateway::start(GatewayOptions::default())
        .await
        .expect("start");
    let ch = channel(&gw).await;
    let health = HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gateway.admin.v1.Admin".to_owned(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"gateway.admin.v1.Admin"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text() {
    let callback = FakeCallback::start().await;
    let gw = Gateway::start(http_channel(&callback))
        .await
        .expect("start");
    for i in 0..3 {
        post(&gw, &format!("m-{i}"), "chat-1").await;
    }
    callback
        .wait_delivered(|d| d.len() >= 3, TIMEOUT)
        .await
        .expect("replies");
    // The delivered mark (and so the out counter) follows the callback's answer, and the gauges
    // are sampled periodically: poll until both show it.
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let last = text.clone();
    gateway_tests::poll_until_async(
        TIMEOUT,
        "three replies are counted and none is pending",
        || {
            let last = last.clone();
            let get = gw.get("/metrics");
            async move {
                let reply = get.await.expect("GET /metrics");
                assert_eq!(reply.status, 200);
                let done = reply
                    .text
                    .contains("gateway_messages_out_total{channel=\"http\"} 3")
                    && reply.text.contains("gateway_outbox_pending 0");
                *last.lock().expect("lock") = reply.text;
                done
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", text.lock().expect("lock")));
    let text = text.lock().expect("lock").clone();
    for series in [
        "gateway_messages_in_total{channel=\"http\"} 3",
        "gateway_turn_seconds_bucket",
        "gateway_turn_seconds_count 3",
        "gateway_outbox_pending 0",
        "gateway_inbox_pending 0",
        "gateway_dead_letters 0",
        "gateway_sessions_resident 1",
    ] {
        assert!(text.contains(series), "missing `{series}` in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_inbox_and_list_outbox_filter_and_page_what_is_stored() {
    let callback = FakeCallback::start().await;
    let mut opts = http_channel(&callback);
    opts.extra_config
        .push_str("\n[delivery]\nretry_backoff = \"20ms\"\n");
    let gw = Gateway::start(opts).await.expect("start");
    // The first reply in chat `z` fails once before it is delivered.
    callback.push_fault_for_chat("z", gateway_tests::CallbackFault::Status(500));
    let posted = [
        ("i-1", "x"),
        ("i-2", "y"),
        ("i-3", "x"),
        ("i-4", "z"),
        ("i-5", "x"),
    ];
    for (id, chat) in posted {
        post(&gw, id, chat).await;
    }
    callback
        .wait_delivered(|d| d.len() == posted.len(), TIMEOUT)
        .await
        .expect("every message answered");
    let mut client = AdminClient::new(channel(&gw).await);

    // The delivered marks follow the callback's 200s: poll until every row is final.
    let settled =
        gateway_tests::poll_until_async(TIMEOUT, "every reply is marked delivered", || {
            let mut client = client.clone();
            async move {
                let delivered = pb::OutboxStatus::Delivered as i32;
                client
                    .list_outbox(pb::ListOutboxRequest {
                        status: delivered,
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().entries.len() == posted.len())
            }
        })
        .await;
    settled.unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr_tail(30)));

    // ListInbox: oldest first, paged by cursor, every turn done.
    let mut inbox = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_inbox(pb::ListInboxRequest {
                cursor,
                limit: 2,
                ..Default::default()
            })
            .await
            .expect("ListInbox")
            .into_inner();
        assert!(page.entries.len() <= 2, "{page:?}");
        pages += 1;
        inbox.extend(page.entries);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(pages, 3, "five rows in pages of two");
    let order: Vec<(&str, &str)> = inbox
        .iter()
        .map(|e| (e.channel_message_id.as_str(), e.chat_id.as_str()))
        .collect();
    assert_eq!(order, posted);
    assert!(inbox.windows(2).all(|w| w[0].id < w[1].id), "{inbox:?}");
    for e in &inbox {
        assert_eq!(e.channel, "http", "{e:?}");
        assert_eq!(e.sender_id, e.chat_id, "{e:?}");
        assert_eq!(e.text, e.channel_message_id, "{e:?}");
        assert_eq!(e.chat_type, "direct", "{e:?}");
        assert_eq!(e.reply_to, "", "{e:?}");
        assert!(e.received_at_ms > 0, "{e:?}");
        assert_eq!(e.state, pb::InboxState::Done as i32, "{e:?}");
    }
    let in_x = client
        .list_inbox(pb::ListInboxRequest {
            channel: "http".to_owned(),
            chat_id: "x".to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListInbox x")
        .into_inner();
    let ids: Vec<&str> = in_x
        .entries
        .iter()
        .map(|e| e.channel_message_id.as_str())
        .collect();
    assert_eq!(ids, ["i-1", "i-3", "i-5"]);
    assert!(in_x.next_cursor.is_empty());
    for (what, request) in [
        (
            "another channel",
            pb::ListInboxRequest {
                channel: "webchat".to_owned(),
                ..Default::default()
            },
        ),
        (
            "pending rows",
            pb::ListInboxRequest {
                state: pb::InboxState::Pending as i32,
                ..Default::default()
            },
        ),
    ] {
        let page = client.list_inbox(request).await.expect(what).into_inner();
        assert!(page.entries.is_empty(), "{what}: {page:?}");
    }

    // ListOutbox: one delivered reply per message, answering it, with its error history.
    let mut outbox = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_outbox(pb::ListOutboxRequest {
                cursor,
                limit: 1,
                include_errors: true,
                ..Default::default()
            })
            .await
            .expect("ListOutbox")
            .into_inner();
        assert!(page.entries.len() <= 1, "{page:?}");
        outbox.extend(page.entries);
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(outbox.len(), posted.len(), "{outbox:?}");
    let ids: Vec<i64> = outbox.iter().map(|o| o.id).collect();
    assert!(ids.is_sorted(), "oldest first: {ids:?}");
    // Turns of different chats commit in parallel, so replies need not be in inbox order.
    outbox.sort_by_key(|o| o.inbox_id);
    for (out, inb) in outbox.iter().zip(&inbox) {
        assert_eq!(out.inbox_id, inb.id, "{out:?}");
        assert_eq!(out.reply_to, inb.channel_message_id, "{out:?}");
        assert_eq!(out.chat_id, inb.chat_id, "{out:?}");
        assert_eq!(out.text, inb.text, "the echo: {out:?}");
        assert_eq!(out.channel, "http", "{out:?}");
        assert_eq!(out.status, pb::OutboxStatus::Delivered as i32, "{out:?}");
        let failed = usize::from(inb.chat_id == "z");
        assert_eq!(out.errors.len(), failed, "{out:?}");
        assert_eq!(out.attempts as usize, failed + 1, "{out:?}");
    }
    let z = outbox.iter().find(|o| o.chat_id == "z").expect("z");
    assert_eq!(z.errors[0].attempt, 1, "{z:?}");
    assert_eq!(z.errors[0].error_class, pb::ErrorClass::Retryable as i32);
    assert!(z.errors[0].error.contains("500"), "{z:?}");
    assert_eq!(z.error_class, pb::ErrorClass::Retryable as i32, "{z:?}");
    assert!(z.last_error.contains("500"), "{z:?}");

    let in_x = client
        .list_outbox(pb::ListOutboxRequest {
            chat_id: "x".to_owned(),
            status: pb::OutboxStatus::Delivered as i32,
            ..Default::default()
        })
        .await
        .expect("ListOutbox x")
        .into_inner();
    let answering: Vec<&str> = in_x.entries.iter().map(|e| e.reply_to.as_str()).collect();
    assert_eq!(answering, ["i-1", "i-3", "i-5"]);
    assert!(
        in_x.entries.iter().all(|e| e.errors.is_empty()),
        "no histories unless asked: {in_x:?}"
    );
    for status in [
        pb::OutboxStatus::Pending,
        pb::OutboxStatus::Dead,
        pb::OutboxStatus::Dropped,
    ] {
        let page = client
            .list_outbox(pb::ListOutboxRequest {
                status: status as i32,
                ..Default::default()
            })
            .await
            .expect("ListOutbox by status")
            .into_inner();
        assert!(page.entries.is_empty(), "{status:?}: {page:?}");
    }

    // Bad arguments are refused, not ignored.
    let err = client
        .list_inbox(pb::ListInboxRequest {
            cursor: "not-a-cursor".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("bad cursor");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = client
        .list_outbox(pb::ListOutboxRequest {
            status: 99,
            ..Default::default()
        })
        .await
        .expect_err("unknown status");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // GetSession: each transcript entry names the inbox row of its turn.
    let x_rows: Vec<i64> = inbox
        .iter()
        .filter(|e| e.chat_id == "x")
        .map(|e| e.id)
        .collect();
    let sessions = client
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .expect("ListSessions")
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 3, "one per sender: {sessions:?}");
    let mut traced = Vec::new();
    for s in &sessions {
        let session = client
            .get_session(pb::GetSessionRequest {
                key: s.key.clone(),
                tail: 100,
            })
            .await
            .expect("GetSession")
            .into_inner();
        if session.transcript.len() == 6 {
            traced = session.transcript;
        }
    }
    // (A user entry is stamped when its message arrived, so turns may interleave in time.)
    let mut shape: Vec<(i32, i64)> = traced.iter().map(|e| (e.role, e.inbox_id)).collect();
    shape.sort_by_key(|&(role, id)| (id, role));
    let (user, assistant) = (pb::Role::User as i32, pb::Role::Assistant as i32);
    assert_eq!(
        shape,
        x_rows
            .iter()
            .flat_map(|&id| [(user, id), (assistant, id)])
            .collect::<Vec<_>>(),
        "the session of chat x"
    );
}
