//! The notification tables under the delivery worker, statement by statement
//! (`store::notify`): the prune's short transactions, and the lease that fences each claim's
//! outcome. A real controller (SQLite here; PostgreSQL with JIT_TEST_BACKEND=postgres) runs
//! beside the statements: its own worker skips the sink these tests store (its spec does not
//! parse), but it may clear an expired lease first (it looks every second).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use jitgate_controller::store::notify::{self, Attempted, Ended, prune_batch};
use jitgate_notify::DeliveryState;
use sqlx::AnyPool;

/// Stores sink `s`, which the running worker skips (its spec does not parse), and moves the
/// fan-out's mark to `fanned` (the events up to it are fanned out: the worker leaves them).
async fn skipped_sink(pool: &AnyPool, fanned: i64) {
    sqlx::query(
        "INSERT INTO notify_sinks (name, spec, created_by, created_at, updated_at) \
         VALUES ('s', '{}', 'test', 0, 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE counters SET value = $1 WHERE name = 'notify_fanned'")
        .bind(fanned)
        .execute(pool)
        .await
        .unwrap();
}

/// Stores event `seq` of `order_key`, created at `created`.
async fn event(pool: &AnyPool, seq: i64, order_key: &str, created: i64) {
    sqlx::query(
        "INSERT INTO notify_events (seq, id, event_type, order_key, body, people, created_at) \
         VALUES ($1, $2, 'request.approved', $3, '{}', '[]', $4)",
    )
    .bind(seq)
    .bind(format!("e{seq}"))
    .bind(order_key)
    .bind(created)
    .execute(pool)
    .await
    .unwrap();
}

/// A successful attempt at `now`.
fn delivered(now: i64) -> Attempted {
    Attempted {
        state: DeliveryState::Delivered,
        next_attempt_at: now,
        kind: "delivered",
        status: Some("2xx"),
        detail: None,
        delivered_at: Some(now),
    }
}

/// The end of the claim of event `seq` to sink `s` under the lease ending at `lease_until`.
fn ended(seq: i64, lease_until: i64, attempted: Option<Attempted>) -> Ended {
    Ended {
        sink: "s".into(),
        event_seq: seq,
        lease_until,
        attempted,
    }
}

/// Event `seq`'s delivery to `s`: (state, attempts, lease owner, lease end).
async fn delivery(pool: &AnyPool, seq: i64) -> (String, i64, Option<String>, Option<i64>) {
    sqlx::query_as(
        "SELECT state, attempts, lease_owner, lease_until FROM notify_deliveries \
         WHERE event_seq = $1 AND sink = 's'",
    )
    .bind(seq)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The hourly prune works in short transactions, oldest events first: delivered deliveries
/// and their events older than the retention go; an old event with a delivery still retrying
/// or dead stays with it; an event not fanned out yet stays; young events stay; each step
/// reads one batch, not the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_goes_in_batches_and_keeps_what_is_not_done() {
    let h = Harness::new().await;
    let pool = h.app().db.pool();
    let now = jitgate_api::time::now_ms();
    let before = now - 3_600_000;
    // Events 1..=2500 are old (two hours, against the test's one-hour `before`; the
    // controller's own hourly prune, with its days of retention, leaves them alone),
    // 2501..=2510 young; 2511 is old but not fanned out yet (the mark is 2510). Every
    // fanned-out one has a delivery: delivered, except 5 (retrying) and 7 (dead).
    skipped_sink(pool, 2510).await;
    let old = now - 7_200_000;
    for seq in 1..=2511i64 {
        let (created, fanned) = match seq {
            2501..=2510 => (now, true),
            2511 => (old, false),
            _ => (old + seq, true),
        };
        event(pool, seq, "r", created).await;
        if fanned {
            let state = match seq {
                5 => DeliveryState::Retrying,
                7 => DeliveryState::Dead,
                _ => DeliveryState::Delivered,
            };
            sqlx::query(
                "INSERT INTO notify_deliveries (event_seq, sink, order_key, state, \
                 next_attempt_at, delivered_at) VALUES ($1, 's', 'r', $2, 0, $3)",
            )
            .bind(seq)
            .bind(state.as_str())
            .bind(created + 10)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let mut steps = Vec::new();
    let mut after = 0;
    loop {
        let mut w = h.app().db.begin().await.unwrap();
        let (d, e, next) = prune_batch(&mut w, before, after, 1000).await.unwrap();
        w.commit().await.unwrap();
        steps.push((d, e));
        match next {
            Some(seq) => after = seq,
            None => break,
        }
        assert!(steps.len() < 10, "the prune does not end: {steps:?}");
    }
    // Three steps: 1000 old, 1000 old, then 500 old before the first young event.
    assert_eq!(steps, [(998, 998), (1000, 1000), (500, 500)]);
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM notify_events ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut want = vec![5, 7];
    want.extend(2501..=2511);
    assert_eq!(left, want);
    let deliveries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notify_deliveries")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 12, "5 and 7, and the ten young ones");
    // Again: nothing left to do, in one step that stops at the young events (5 and 7 stay).
    let mut w = h.app().db.begin().await.unwrap();
    let (d, e, next) = prune_batch(&mut w, before, 0, 1000).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!((d, e, next), (0, 0, None));
}

/// A lease that expired is cleared by the round's reclaim and its delivery claimed again
/// (its attempt count kept: the attempt may have been made); a lease still running is left
/// to its holder, whose outcome is then still recorded, while the expired holder's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_claimed_again_and_a_running_one_is_not() {
    let h = Harness::new().await;
    let pool = h.app().db.pool();
    let now = jitgate_api::time::now_ms();
    // Two events fanned out to the skipped sink, each leased by a controller that is gone:
    // one lease ended, one runs.
    skipped_sink(pool, 2).await;
    let (ended_at, running) = (now - 1_000, now + 600_000);
    for (seq, until) in [(1i64, ended_at), (2, running)] {
        let key = format!("request:{seq}");
        event(pool, seq, &key, now - 60_000).await;
        sqlx::query(
            "INSERT INTO notify_deliveries (event_seq, sink, order_key, state, attempts, \
             first_attempt_at, next_attempt_at, lease_owner, lease_until) \
             VALUES ($1, 's', $2, 'queued', 1, $3, $3, 'gone', $4)",
        )
        .bind(seq)
        .bind(key)
        .bind(now - 60_000)
        .bind(until)
        .execute(pool)
        .await
        .unwrap();
    }
    let mut w = h.app().db.begin().await.unwrap();
    let cleared = notify::reclaim(&mut w, now).await.unwrap();
    assert!(cleared <= 1, "only the ended lease is cleared: {cleared}");
    let claimed = notify::claim(&mut w, "me", "s", now, now + 60_000, 512)
        .await
        .unwrap();
    w.commit().await.unwrap();
    let got: Vec<(i64, i64, i64)> = claimed
        .iter()
        .map(|c| (c.event_seq, c.attempts, c.lease_until))
        .collect();
    assert_eq!(
        got,
        [(1, 2, now + 60_000)],
        "the ended lease's delivery, its second attempt, under the new lease"
    );
    assert_eq!(delivery(pool, 1).await.2.as_deref(), Some("me"));
    assert_eq!(delivery(pool, 2).await.2.as_deref(), Some("gone"));
    // The gone controller's outcomes: the one it lost is not recorded, the other is.
    let mut w = h.app().db.begin().await.unwrap();
    let held = notify::record_all(
        &mut w,
        "gone",
        &[
            ended(1, ended_at, Some(delivered(now))),
            ended(2, running, Some(delivered(now))),
        ],
    )
    .await
    .unwrap();
    w.commit().await.unwrap();
    assert_eq!(held, [false, true]);
}

/// The lease's end, not only its owner, fences a claim's outcome: a claim that outlived its
/// lease (a stalled controller, a give-back that waited for a slot) and whose delivery the
/// same controller claimed again meanwhile can neither give that later claim's lease back
/// nor record its own outcome over it; the later claim's outcome is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_claims_end_leaves_the_same_controllers_later_claim_alone() {
    let h = Harness::new().await;
    let pool = h.app().db.pool();
    let now = jitgate_api::time::now_ms();
    skipped_sink(pool, 1).await;
    event(pool, 1, "request:1", now - 60_000).await;
    sqlx::query(
        "INSERT INTO notify_deliveries (event_seq, sink, order_key, state, attempts, \
         next_attempt_at) VALUES (1, 's', 'request:1', 'queued', 0, $1)",
    )
    .bind(now - 60_000)
    .execute(pool)
    .await
    .unwrap();
    // The first claim, under a lease that has ended since.
    let first = now - 1_000;
    let mut w = h.app().db.begin().await.unwrap();
    let claimed = notify::claim(&mut w, "me", "s", now - 5_000, first, 512)
        .await
        .unwrap();
    w.commit().await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease_until, first);
    // Cleared (here, or by the running worker's round) and claimed again by the same owner.
    let second = now + 60_000;
    let mut w = h.app().db.begin().await.unwrap();
    notify::reclaim(&mut w, now).await.unwrap();
    let claimed = notify::claim(&mut w, "me", "s", now, second, 512)
        .await
        .unwrap();
    w.commit().await.unwrap();
    let got: Vec<(i64, i64)> = claimed
        .iter()
        .map(|c| (c.attempts, c.lease_until))
        .collect();
    assert_eq!(got, [(2, second)]);
    // The first claim's give-back, then its outcome: neither holds, nothing changes.
    for attempted in [None, Some(delivered(now))] {
        let mut w = h.app().db.begin().await.unwrap();
        let held = notify::record_all(&mut w, "me", &[ended(1, first, attempted)])
            .await
            .unwrap();
        w.commit().await.unwrap();
        assert_eq!(held, [false]);
        assert_eq!(
            delivery(pool, 1).await,
            (
                "queued".to_string(),
                2,
                Some("me".to_string()),
                Some(second)
            ),
            "the later claim keeps its lease and its attempt"
        );
    }
    // The later claim's outcome is recorded.
    let mut w = h.app().db.begin().await.unwrap();
    let held = notify::record_all(&mut w, "me", &[ended(1, second, Some(delivered(now)))])
        .await
        .unwrap();
    w.commit().await.unwrap();
    assert_eq!(held, [true]);
    assert_eq!(
        delivery(pool, 1).await,
        ("delivered".to_string(), 2, None, None)
    );
}

/// A delivery queued behind an earlier one of its request that waits to be retried is not
/// work for a round (the claim would not take it): while a sink is down, the worker's poll
/// reads and writes nothing. Once the earlier one is due, there is work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_queued_behind_a_retry_is_not_work() {
    let h = Harness::new().await;
    let pool = h.app().db.pool();
    let now = jitgate_api::time::now_ms();
    skipped_sink(pool, 2).await;
    for (seq, state, next) in [
        (1i64, DeliveryState::Retrying, now + 600_000),
        (2, DeliveryState::Queued, now - 1_000),
    ] {
        event(pool, seq, "request:1", now - 60_000).await;
        sqlx::query(
            "INSERT INTO notify_deliveries (event_seq, sink, order_key, state, attempts, \
             next_attempt_at) VALUES ($1, 's', 'request:1', $2, 0, $3)",
        )
        .bind(seq)
        .bind(state.as_str())
        .bind(next)
        .execute(pool)
        .await
        .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    assert!(!notify::work_waiting(&mut conn, now).await.unwrap());
    sqlx::query("UPDATE notify_deliveries SET next_attempt_at = $1 WHERE event_seq = 1")
        .bind(now - 1)
        .execute(pool)
        .await
        .unwrap();
    assert!(notify::work_waiting(&mut conn, now).await.unwrap());
}
