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
    // The delivered mark (and so the out counter) follows the callback's answer: poll for it.
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let last = text.clone();
    gateway_tests::poll_until_async(TIMEOUT, "three replies are counted", || {
        let last = last.clone();
        let get = gw.get("/metrics");
        async move {
            let reply = get.await.expect("GET /metrics");
            assert_eq!(reply.status, 200);
            let done = reply
                .text
                .contains("gateway_messages_out_total{channel=\"http\"} 3");
            *last.lock().expect("lock") = reply.text;
            done
        }
    })
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
