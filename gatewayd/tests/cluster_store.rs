//! The multi-instance coordination of the PostgreSQL store, and the `Cluster` handle over it:
//! leases (acquire, renew, release, epochs), two instances never holding one partition, a stale
//! fence refusing a turn and keeping nothing, a takeover waiting for a fenced commit that is
//! still open, and membership rounds spreading the partitions over the live instances.
//!
//! Every test runs on the cluster named by `GATEWAY_TEST_PG_URL` (`tests/run.sh` starts one), in
//! a fresh database; without it each test says so and passes without checking anything.

mod pg_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatewayd::cluster::{Cluster, Settings};
use gatewayd::message::{ChannelKind, ChatType, InboundMessage, SessionKey};
use gatewayd::store::cluster::{ClusterStore, Fence};
use gatewayd::store::postgres::PostgresStore;
use gatewayd::store::{
    InboxOutcome, NewReply, Retention, Role, Store, StoreError, TranscriptEntry, TurnRecord,
};
use pg_support::{FreshDatabase, PG_URL_VAR};

fn have_cluster(test: &str) -> bool {
    if std::env::var(PG_URL_VAR).is_ok_and(|u| !u.trim().is_empty()) {
        return true;
    }
    panic!(
        "{test}: {PG_URL_VAR} is not set: run tests/run.sh (it starts a throwaway PostgreSQL cluster), or set it to a superuser URL"
    );
}

async fn open(db: &FreshDatabase) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::open_with(&db.url, Retention::default(), 8)
            .await
            .expect("open the store"),
    )
}

fn cluster_store(store: &Arc<PostgresStore>) -> Arc<dyn ClusterStore> {
    store
        .clone()
        .cluster_store()
        .expect("PostgreSQL coordinates a cluster")
}

fn names(ps: &[u32]) -> Vec<String> {
    ps.iter().map(|p| format!("part:{p}")).collect()
}

fn msg(id: &str) -> InboundMessage {
    InboundMessage {
        channel: ChannelKind::new("webchat"),
        channel_message_id: id.to_owned(),
        chat_id: "chat-1".to_owned(),
        chat_type: ChatType::Direct,
        sender_id: "alice".to_owned(),
        sender_name: None,
        text: format!("hello {id}"),
        reply_to: None,
        attachments: Vec::new(),
        received_at_ms: gatewayd::message::now_ms(),
        mentioned: false,
    }
}

fn turn(inbox_id: i64, fence: Option<Fence>) -> TurnRecord {
    TurnRecord {
        inbox_id,
        session: SessionKey::User(1),
        entries: vec![TranscriptEntry {
            role: Role::User,
            text: "hello".to_owned(),
            at_ms: gatewayd::message::now_ms(),
            channel: Some(ChannelKind::new("webchat")),
        }],
        replies: vec![NewReply {
            channel: ChannelKind::new("webchat"),
            chat_id: "chat-1".to_owned(),
            text: "hi".to_owned(),
            reply_to: None,
        }],
        fence,
    }
}

fn fence(name: &str, owner: &str, epoch: i64) -> Fence {
    Fence {
        lease: name.into(),
        owner: owner.into(),
        epoch,
    }
}

#[tokio::test]
async fn acquire_renew_release_and_the_epoch_grows_on_every_change_of_owner() {
    if !have_cluster("acquire_renew_release") {
        return;
    }
    let db = FreshDatabase::new().await;
    let store = open(&db).await;
    let cs = cluster_store(&store);
    let ttl = Duration::from_secs(30);
    let got = cs
        .lease_acquire(&names(&[0, 1]), "a", ttl)
        .await
        .expect("the store answers");
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|l| l.epoch == 1), "{got:?}");
    // Held: neither b nor a itself acquires it again.
    assert!(
        cs.lease_acquire(&names(&[0, 1]), "b", ttl)
            .await
            .expect("the store answers")
            .is_empty()
    );
    assert!(
        cs.lease_acquire(&names(&[0]), "a", ttl)
            .await
            .expect("the store answers")
            .is_empty()
    );
    // Renewal keeps the epoch; b cannot renew what a holds.
    let renewed = cs
        .lease_renew(&names(&[0, 1]), "a", ttl)
        .await
        .expect("the store answers");
    assert_eq!(renewed.len(), 2);
    assert!(renewed.iter().all(|l| l.epoch == 1));
    assert!(
        cs.lease_renew(&names(&[0]), "b", ttl)
            .await
            .expect("the store answers")
            .is_empty()
    );
    // Released: b takes it at once, at the next epoch; a's old fence no longer holds.
    cs.lease_release(&names(&[0]), "a")
        .await
        .expect("the store answers");
    let got = cs
        .lease_acquire(&names(&[0]), "b", ttl)
        .await
        .expect("the store answers");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].epoch, 2);
    assert!(
        !cs.fence_holds(&fence("part:0", "a", 1))
            .await
            .expect("the store answers")
    );
    assert!(
        cs.fence_holds(&fence("part:0", "b", 2))
            .await
            .expect("the store answers")
    );
    // A lapsed lease is taken over too, at the next epoch.
    let short = Duration::from_millis(200);
    cs.lease_release(&names(&[1]), "a")
        .await
        .expect("the store answers");
    assert_eq!(
        cs.lease_acquire(&names(&[1]), "a", short)
            .await
            .expect("the store answers")[0]
            .epoch,
        2
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let got = cs
            .lease_acquire(&names(&[1]), "b", ttl)
            .await
            .expect("the store answers");
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the lapsed lease was never taken"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(taken[0].epoch, 3);
}

#[tokio::test]
async fn two_instances_racing_for_the_same_partitions_never_both_get_one() {
    if !have_cluster("two_instances_racing") {
        return;
    }
    let db = FreshDatabase::new().await;
    let store = open(&db).await;
    let cs = cluster_store(&store);
    let all: Vec<u32> = (0..64).collect();
    let ttl = Duration::from_secs(30);
    let all = names(&all);
    let (a, b) = tokio::join!(
        cs.lease_acquire(&all, "a", ttl),
        cs.lease_acquire(&all, "b", ttl)
    );
    let (a, b) = (a.expect("the store answers"), b.expect("the store answers"));
    assert_eq!(a.len() + b.len(), 64, "every partition went to exactly one");
    for l in &a {
        assert!(b.iter().all(|m| m.name != l.name), "{} held twice", l.name);
    }
    let leases = cs.leases().await.expect("the store answers");
    assert_eq!(leases.len(), 64);
    assert!(leases.iter().all(|l| l.epoch == 1));
}

#[tokio::test]
async fn a_stale_fence_refuses_the_turn_and_keeps_nothing() {
    if !have_cluster("a_stale_fence") {
        return;
    }
    let db = FreshDatabase::new().await;
    let store = open(&db).await;
    let cs = cluster_store(&store);
    let ttl = Duration::from_secs(30);
    let InboxOutcome::New(id) = cs
        .inbox_commit_in(&msg("m1"), 3)
        .await
        .expect("the store answers")
    else {
        panic!("a new row");
    };
    let held = cs
        .lease_acquire(&names(&[3]), "a", ttl)
        .await
        .expect("the store answers");
    let stale = fence("part:3", "a", held[0].epoch);
    // The partition moves to b.
    cs.lease_release(&names(&[3]), "a")
        .await
        .expect("the store answers");
    let b = cs
        .lease_acquire(&names(&[3]), "b", ttl)
        .await
        .expect("the store answers");
    let err = store
        .commit_turn(turn(id, Some(stale)))
        .await
        .expect_err("a fenced commit");
    assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");
    // Nothing of it was kept: the row is pending, no reply, no transcript.
    let pending = cs
        .inbox_pending_in(&[3], false)
        .await
        .expect("the store answers");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0.inbox_id, id);
    assert_eq!(pending[0].1, Some(3));
    assert!(
        store
            .outbox_pending()
            .await
            .expect("the store answers")
            .is_empty()
    );
    assert!(
        store
            .history(&SessionKey::User(1), 10)
            .await
            .expect("the store answers")
            .is_empty()
    );
    // The new owner's commit goes through, with its reply filed under the partition.
    let rows = store
        .commit_turn(turn(id, Some(fence("part:3", "b", b[0].epoch))))
        .await
        .expect("the store answers");
    assert_eq!(rows.len(), 1);
    let parted = cs
        .outbox_pending_in(&[3], false)
        .await
        .expect("the store answers");
    assert_eq!(parted.len(), 1);
    assert_eq!(parted[0].1, Some(3));
    assert!(
        cs.inbox_pending_in(&[3], false)
            .await
            .expect("the store answers")
            .is_empty()
    );
}

#[tokio::test]
async fn a_takeover_waits_for_a_fenced_commit_that_is_still_open() {
    if !have_cluster("a_takeover_waits") {
        return;
    }
    let db = FreshDatabase::new().await;
    let store = open(&db).await;
    let cs = cluster_store(&store);
    // A short lease, so it lapses while the fenced transaction is open.
    let held = cs
        .lease_acquire(&names(&[5]), "a", Duration::from_millis(1500))
        .await
        .expect("the store answers");
    let epoch = held[0].epoch;
    let (mut client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("the store answers");
    tokio::spawn(connection);
    let tx = client.transaction().await.expect("the store answers");
    // What the store's fence check does inside a turn's transaction.
    let row = tx
        .query_opt(
            "SELECT 1 FROM leases WHERE name = $1 AND owner = $2 AND epoch = $3
               AND expires_at > gw_now_ms() FOR SHARE",
            &[&"part:5", &"a", &epoch],
        )
        .await
        .expect("the store answers");
    assert!(row.is_some(), "the fence holds at first");
    // b tries to take the partition over once it has lapsed: its UPDATE waits on the row lock.
    let cs_b = cs.clone();
    let takeover = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = cs_b
                .lease_acquire(&names(&[5]), "b", Duration::from_secs(30))
                .await
                .expect("the store answers");
            if !got.is_empty() {
                return (got[0].epoch, Instant::now());
            }
            assert!(Instant::now() < deadline, "b never took the partition");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Keep the transaction open well past the lease's expiry, and check b has not got it.
    let open_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < open_until {
        assert!(
            !takeover.is_finished(),
            "b took over while a's commit was open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let committed_at = Instant::now();
    tx.commit().await.expect("the store answers");
    let (b_epoch, got_at) = tokio::time::timeout(Duration::from_secs(20), takeover)
        .await
        .expect("b takes over after the commit")
        .expect("the store answers");
    assert!(
        got_at >= committed_at,
        "b took over before a's commit ended"
    );
    assert_eq!(b_epoch, epoch + 1);
}

fn config(id: &str, partitions: u32) -> Settings {
    Settings {
        instance_id: id.to_owned(),
        partitions,
        lease_ttl: Duration::from_secs(3),
        renew_interval: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn membership_rounds_spread_the_partitions_and_a_leave_hands_them_over() {
    if !have_cluster("membership_rounds") {
        return;
    }
    let db = FreshDatabase::new().await;
    let store = open(&db).await;
    let cs = cluster_store(&store);
    let members: Vec<Arc<Cluster>> = ["gw-a", "gw-b", "gw-c"]
        .iter()
        .map(|id| Cluster::new(&config(id, 64), cs.clone(), None))
        .collect();
    // The first alone takes everything.
    members[0].tick().await.expect("the store answers");
    assert_eq!(members[0].owned().len(), 64);
    // The others join; rounds until the placement settles (a release by one is taken by
    // another in its next round).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for m in &members {
            m.tick().await.expect("the store answers");
        }
        let counts: Vec<usize> = members.iter().map(|m| m.owned().len()).collect();
        if counts.iter().sum::<usize>() == 64 && counts.iter().all(|c| *c == 21 || *c == 22) {
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {counts:?}");
    }
    // No partition is held by two, and every fence is the lease's.
    let mut seen = std::collections::BTreeSet::new();
    for m in &members {
        for p in m.owned() {
            assert!(seen.insert(p), "partition {p} held twice");
            let f = m.fence_for(p).expect("a fence for an owned partition");
            assert!(cs.fence_holds(&f).await.expect("the store answers"));
        }
    }
    let key = SessionKey::User(7);
    let p = members[0].partition_of(&key);
    assert!(members.iter().filter(|m| m.fence_for(p).is_some()).count() == 1);
    // c leaves (SIGTERM): it holds nothing at once, and the others take its share.
    let leaver_had = members[2].owned();
    let mut ownership = members[0].subscribe();
    members[2].leave().await;
    assert!(members[2].owned().is_empty());
    assert!(members[2].fence_for(leaver_had[0]).is_none());
    let started = Instant::now();
    loop {
        for m in &members[..2] {
            m.tick().await.expect("the store answers");
        }
        let counts: Vec<usize> = members[..2].iter().map(|m| m.owned().len()).collect();
        if counts == [32, 32] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not taken over: {counts:?}"
        );
    }
    assert!(ownership.has_changed().expect("the store answers"));
    let now = ownership.borrow_and_update().clone();
    assert_eq!(now.len(), 32);
}
