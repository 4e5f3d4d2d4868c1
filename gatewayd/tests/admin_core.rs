//! The admin service in process, where a watcher can be stalled exactly: one that falls behind
//! the events bus gets a `lagged` marker with the count it missed, instead of slowing anyone.

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_server::Admin;
use gatewayd::admin::{AdminService, AdminState};
use gatewayd::config::Config;
use gatewayd::events::Event;
use gatewayd::message::ChannelKind;
use gatewayd::runtime::Gateway;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_gets_a_lagged_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::parse(&format!(
        "[gateway]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n",
        dir.path().display()
    ))
    .expect("config");
    let gw = Gateway::start(config, "test").await.expect("start");
    let service = AdminService::new(AdminState {
        store: gw.store.clone(),
        events: gw.events.clone(),
        identity: gw.identity.clone(),
        router: gw.router.clone(),
        delivery: gw.delivery.clone(),
        started_at: gw.started_at,
        max_sessions: 10,
        provider: "echo",
        workflows: None,
        supervisor: gw.supervisor.clone(),
    });
    let mut stream = service
        .watch_events(tonic::Request::new(pb::WatchEventsRequest {}))
        .await
        .expect("watch")
        .into_inner();
    // Far more events than the bus keeps, published while nobody reads; publishing never waits.
    let total: i64 = 20_000;
    for id in 0..total {
        gw.events.publish(Event::MessageIn {
            inbox_id: id,
            channel: ChannelKind::new("http"),
            chat_id: "c".to_owned(),
        });
    }
    let mut delivered = 0;
    let mut missed = 0;
    while delivered + missed < total as u64 {
        let item = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("the stream keeps going")
            .expect("open")
            .expect("ok");
        match item.event {
            Some(pb::watch_events_response::Event::MessageIn(_)) => delivered += 1,
            Some(pb::watch_events_response::Event::Lagged(l)) => missed += l.missed,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(missed > 0, "the watcher was told it missed events");
    assert_eq!(
        delivered + missed,
        total as u64,
        "every event is either delivered or counted"
    );
    gw.shutdown().await;
}
