//! The queries every agent connection runs are index lookups, on both backends. A whole
//! fleet connects at once after a controller restart or failover: a query that scans a
//! table that grows with the fleet (the agents) or with time (the activity log) then runs
//! 10 000 times in a minute. Two did (9.5 ms and 19 ms each on PostgreSQL at 10 000
//! agents), which kept PostgreSQL busy for minutes and exhausted the pool
//! (`cargo xtask bench fleet`, BENCHMARKS.md).
//!
//! On PostgreSQL sequential scans are disabled for the plan: the planner then still scans
//! when no index can answer, so a scan in the plan means the query cannot use one (with
//! them enabled, a test database's small tables are scanned whatever the indexes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use jitgate_controller::store::{activity, agents, grants, notify};

/// The plan of `query` with `binds` (all text), one line per step.
async fn plan(h: &Harness, query: &str, binds: &[&str]) -> Vec<String> {
    let args: Vec<Arg> = binds.iter().map(|b| Arg::Text(b)).collect();
    plan_args(h, query, &args).await
}

/// A bound parameter of [`plan_args`].
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// The plan of `query` with `binds`, one line per step.
async fn plan_args(h: &Harness, query: &str, binds: &[Arg<'_>]) -> Vec<String> {
    let db = &h.app().db;
    let mut conn = db.pool().acquire().await.unwrap();
    if db.backend().as_str() == "postgres" {
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
        let explain = format!("EXPLAIN {query}");
        let mut q = sqlx::query_scalar::<_, String>(&explain);
        for b in binds {
            q = match b {
                Arg::Text(t) => q.bind(*t),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q.fetch_all(&mut *conn).await.unwrap()
    } else {
        let explain = format!("EXPLAIN QUERY PLAN {query}");
        let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for b in binds {
            q = match b {
                Arg::Text(t) => q.bind(*t),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q.fetch_all(&mut *conn)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.3)
            .collect()
    }
}

fn assert_no_scan(plan: &[String]) {
    assert!(!plan.is_empty());
    for line in plan {
        assert!(
            !line.contains("Seq Scan") && !line.trim_start().starts_with("SCAN "),
            "a scan in the plan: {plan:#?}"
        );
    }
}

/// The connecting agent, by its certificate (current or earlier).
#[tokio::test]
async fn agents_are_identified_by_index_lookups_only() {
    let h = Harness::new().await;
    assert_no_scan(&plan(&h, agents::BY_FINGERPRINT, &["x", "y"]).await);
}

/// The policy version sent to every agent at connect and at every policy wakeup.
#[tokio::test]
async fn the_policy_version_is_read_from_the_policy_changes_alone() {
    let h = Harness::new().await;
    let p = plan(
        &h,
        &activity::last_policy_change_sql(),
        &["web1", "VirtualMachine", "prod", "ResourceGroup"],
    )
    .await;
    assert_no_scan(&p);
    let text = p.join("\n");
    assert!(
        text.contains("activity_policy_vm") && text.contains("activity_policy_group"),
        "{text}"
    );
}

/// The delivery worker's claim (every round, per sink) takes its candidates from the
/// partial index over the pending deliveries, never from the delivered rows kept for the
/// retention.
#[tokio::test]
async fn the_notification_claim_reads_the_pending_deliveries_alone() {
    let h = Harness::new().await;
    let claim = plan_args(
        &h,
        &notify::claim_sql(),
        &[
            Arg::Text("me"),
            Arg::Int(2_000),
            Arg::Int(1_000),
            Arg::Text("hook"),
            Arg::Int(512),
        ],
    )
    .await;
    assert_no_scan(&claim);
    let text = claim.join("\n");
    assert!(text.contains("notify_deliveries_claim"), "{text}");
}

/// The claim's index holds no leased delivery (migration 36): a sink's claims in flight (up
/// to 512, the oldest pending, so first in the index) are not walked by every round's claim.
/// A plan cannot show it (the claim's conditions imply either definition), so the index's
/// own definition is read.
#[tokio::test]
async fn the_notification_claim_index_leaves_out_leased_deliveries() {
    let h = Harness::new().await;
    let db = &h.app().db;
    for index in ["notify_deliveries_claim", "notify_deliveries_due"] {
        let sql = if db.backend().as_str() == "postgres" {
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1"
        } else {
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = $1"
        };
        let def: String = sqlx::query_scalar(sql)
            .bind(index)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert!(def.contains("lease_owner IS NULL"), "{index}: {def}");
    }
}

/// The round's reclaim of expired leases reads the leased deliveries alone, by expiry: a
/// round in which none expired reads one index entry at most.
#[tokio::test]
async fn expired_notification_leases_are_found_in_the_leased_deliveries_alone() {
    let h = Harness::new().await;
    let p = plan_args(&h, notify::RECLAIM, &[Arg::Int(1_000)]).await;
    assert_no_scan(&p);
    let text = p.join("\n");
    assert!(text.contains("notify_deliveries_leased"), "{text}");
}

/// The fan-out reads the events after its mark (one counter, migration 36) by primary key;
/// the idle worker's look for work reads the events' key, the pending deliveries no
/// controller holds and the expired leases, each from a partial index (the pending ones
/// from `notify_deliveries_due` or `notify_deliveries_claim`: both hold the same rows, and
/// which one the planner takes depends on the table's statistics).
#[tokio::test]
async fn the_fan_out_and_the_look_for_work_are_index_reads() {
    let h = Harness::new().await;
    assert_no_scan(&plan_args(&h, notify::UNFANNED, &[Arg::Int(10), Arg::Int(1_000)]).await);
    let p = plan_args(
        &h,
        &notify::work_waiting_sql(),
        &[Arg::Text(notify::FANNED), Arg::Int(1_000)],
    )
    .await;
    // SQLite scans its own subquery results (`SCAN e`, one row each), never a table.
    for line in &p {
        assert!(
            !line.contains("Seq Scan")
                && !line.trim_start().starts_with("SCAN notify_")
                && !line.trim_start().starts_with("SCAN counters"),
            "a scan in the plan: {p:#?}"
        );
    }
    let text = p.join("\n");
    assert!(
        (text.contains("notify_deliveries_due") || text.contains("notify_deliveries_claim"))
            && text.contains("notify_deliveries_leased"),
        "{text}"
    );
}

/// An agent's acknowledgement marks its grant's outbox row delivered by the grant's id:
/// without `grant_outbox_by_grant` (migration 38) each one read the whole outbox, every
/// grant ever sent, and with 50 agents connected the acknowledgements held initiates to
/// about 150/s (`cargo xtask bench e2e`).
#[tokio::test]
async fn an_acknowledgement_finds_its_outbox_row_by_index() {
    let h = Harness::new().await;
    let p = plan_args(
        &h,
        grants::MARK_DELIVERED,
        &[Arg::Int(1_000), Arg::Text("g"), Arg::Text("apply")],
    )
    .await;
    assert_no_scan(&p);
    let text = p.join("\n");
    assert!(text.contains("grant_outbox_by_grant"), "{text}");
}
