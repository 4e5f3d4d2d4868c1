//! Several `gatewayd` instances on one PostgreSQL database (`[cluster] enabled = true`): every
//! instance heartbeats, the session partitions spread evenly over the live instances and move
//! when one dies, joins or leaves; a WebChat reply reaches the socket on whichever instance
//! holds it; a webhook message posted to any instance is answered once.
//!
//! These tests need PostgreSQL whatever `GATEWAY_TEST_STORE` says; without
//! `GATEWAY_TEST_PG_URL` (or in the PostgreSQL pass of `tests/run.sh`) they print why and pass.

use std::time::{Duration, Instant};

use gateway_tests::cluster::{ClusterRig, instance_id};
use gateway_tests::{GatewayOptions, skip_without_cluster_pg};

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
