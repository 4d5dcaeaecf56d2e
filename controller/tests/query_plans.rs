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
use jitgate_controller::store::{activity, agents, notify};

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
