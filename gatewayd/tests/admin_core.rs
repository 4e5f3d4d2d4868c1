//! The admin service in process, where a watcher can be stalled exactly: one that falls behind
//! the events bus gets a `lagged` marker with the count it missed, instead of slowing anyone.
//! Also: channels travel as their names both ways, and a request naming a channel the gateway
//! does not know is INVALID_ARGUMENT with a message that names it.

use gateway_proto::admin as pb;
use gateway_proto::admin::admin_server::Admin;
use gatewayd::admin::{AdminService, AdminState, ClusterInfo};
use gatewayd::config::Config;
use gatewayd::events::Event;
use gatewayd::message::{Address, ChannelKind};
use gatewayd::runtime::Gateway;
use tokio_stream::StreamExt;

/// A gateway (with its default channels) and its admin service, in process.
async fn start(dir: &tempfile::TempDir) -> (Gateway, AdminService) {
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
        access: gw.access.clone(),
        cluster: ClusterInfo::default(),
    });
    (gw, service)
}

fn channel(name: &str) -> ChannelKind {
    name.parse().expect("a channel the gateway knows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_gets_a_lagged_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, service) = start(&dir).await;
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
            channel: channel("http"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_names_and_an_unknown_name_is_an_invalid_argument_naming_it() {
    use tonic::Request;
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, service) = start(&dir).await;

    // Out: every channel, in every answer, is its name.
    let channels = service
        .list_channels(Request::new(pb::ListChannelsRequest {}))
        .await
        .expect("ListChannels")
        .into_inner()
        .channels;
    assert!(!channels.is_empty(), "the default config enables a channel");
    for c in &channels {
        let kind: ChannelKind = c.channel.parse().expect("a name the gateway knows");
        assert_eq!(kind.as_str(), c.channel);
    }
    let user = gw
        .identity
        .resolve(&Address {
            channel: channel("telegram"),
            sender_id: "71".to_owned(),
        })
        .await
        .expect("a user for the address");
    let identity = service
        .get_identity(Request::new(pb::GetIdentityRequest { user_id: user }))
        .await
        .expect("GetIdentity")
        .into_inner()
        .identity
        .expect("identity");
    assert_eq!(
        identity.addresses,
        vec![pb::Address {
            channel: "telegram".to_owned(),
            sender_id: "71".to_owned()
        }]
    );
    let mut stream = service
        .watch_events(Request::new(pb::WatchEventsRequest {}))
        .await
        .expect("watch")
        .into_inner();
    gw.events.publish(Event::MessageIn {
        inbox_id: 1,
        channel: channel("discord"),
        chat_id: "c".to_owned(),
    });
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("an event")
        .expect("open")
        .expect("ok");
    match event.event {
        Some(pb::watch_events_response::Event::MessageIn(m)) => assert_eq!(m.channel, "discord"),
        other => panic!("unexpected {other:?}"),
    }

    // In: the empty name means any; a known name filters.
    for name in ["", "telegram"] {
        let r = service
            .list_identities(Request::new(pb::ListIdentitiesRequest {
                channel: name.to_owned(),
                ..Default::default()
            }))
            .await
            .expect("ListIdentities")
            .into_inner();
        assert_eq!(r.identities.len(), 1, "channel {name:?}");
    }
    let none = service
        .list_identities(Request::new(pb::ListIdentitiesRequest {
            channel: "webchat".to_owned(),
            ..Default::default()
        }))
        .await
        .expect("ListIdentities")
        .into_inner();
    assert!(none.identities.is_empty(), "{none:?}");

    // In: every request that names a channel refuses one the gateway does not know.
    let smtp = || "smtp".to_owned();
    let address = || pb::Address {
        channel: smtp(),
        sender_id: "bob".to_owned(),
    };
    let by_channel = || {
        Some(pb::DeadLetterSelector {
            selector: Some(pb::dead_letter_selector::Selector::Channel(smtp())),
        })
    };
    let refusals: Vec<(&str, tonic::Status)> = vec![
        (
            "ListSessions",
            service
                .list_sessions(Request::new(pb::ListSessionsRequest {
                    channel: smtp(),
                    ..Default::default()
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "ListSessions resident_only",
            service
                .list_sessions(Request::new(pb::ListSessionsRequest {
                    channel: smtp(),
                    resident_only: true,
                    ..Default::default()
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "ListIdentities",
            service
                .list_identities(Request::new(pb::ListIdentitiesRequest {
                    channel: smtp(),
                    ..Default::default()
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "ListDeadLetters",
            service
                .list_dead_letters(Request::new(pb::ListDeadLettersRequest {
                    channel: smtp(),
                    ..Default::default()
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "ReconnectChannel",
            service
                .reconnect_channel(Request::new(pb::ReconnectChannelRequest {
                    channel: smtp(),
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "RetryDeadLetters",
            service
                .retry_dead_letters(Request::new(pb::RetryDeadLettersRequest {
                    selector: by_channel(),
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "DropDeadLetters",
            service
                .drop_dead_letters(Request::new(pb::DropDeadLettersRequest {
                    selector: by_channel(),
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "LinkIdentities",
            service
                .link_identities(Request::new(pb::LinkIdentitiesRequest {
                    user_id: user,
                    other: Some(pb::link_identities_request::Other::Address(address())),
                }))
                .await
                .expect_err("refused"),
        ),
        (
            "UnlinkAddress",
            service
                .unlink_address(Request::new(pb::UnlinkAddressRequest {
                    address: Some(address()),
                }))
                .await
                .expect_err("refused"),
        ),
    ];
    for (rpc, status) in refusals {
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{rpc}: {status:?}"
        );
        assert!(
            status.message().contains("unknown channel `smtp`"),
            "{rpc}: {status:?}"
        );
    }
    gw.shutdown().await;
}
