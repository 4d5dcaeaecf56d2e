//! The verification of the whole activity log is one per cluster and every controller sees
//! it. Two controllers on one database: always on PostgreSQL, whatever `JIT_TEST_BACKEND`
//! says (like tests/ha.rs), since controllers share nothing but their database:
//! a run started on one controller shows, with its result, on the other; a live run
//! elsewhere refuses a second; a run whose controller stopped writing progress shows as
//! stopped and may be started again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use jitgate_controller::audit::FullRun;
use jitgate_controller::authz::Caller;

/// Waits until the run shown by `h` is no longer running.
async fn finished(h: &Harness) -> FullRun {
    for _ in 0..200 {
        let f = h.app().audit.full_run(&Caller::local()).await.unwrap();
        if !f.running && (f.report.is_some() || f.error.is_some()) {
            return f;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let f = h.app().audit.full_run(&Caller::local()).await.unwrap();
    panic!("the full verification did not finish: {f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_full_verification_for_the_cluster() {
    let url = common::fresh_postgres_database().await;
    let h = Harness::with_config(|c| c.database_url = Some(url.clone())).await;
    assert_eq!(h.app().db.backend().as_str(), "postgres");
    h.fixture().await;
    let b = h.second().await;
    let local = Caller::local();
    let pool = h.app().db.pool();
    let (head,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM activity")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(head > 0);

    // Nothing ran yet: neither shows a run.
    let none = b.app().audit.full_run(&local).await.unwrap();
    assert!(!none.running && none.report.is_none() && none.error.is_none());

    // Started on the first controller, seen with its result on the second.
    assert!(h.app().audit.start_full(&local).await.unwrap());
    let on_b = finished(&b).await;
    let report = on_b.report.expect("a report");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, head);
    assert_eq!(on_b.total, head);
    let (a_name,): (String,) = sqlx::query_as("SELECT controller FROM activity_full_run")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(on_b.controller, a_name);

    // A live run elsewhere: no second one, and both show it running there.
    let now = jitgate_api::time::now_ms();
    sqlx::query(
        "UPDATE activity_full_run SET running = 1, updated_ms = $1, controller = 'ctl-x', \
         walked = 7, report = NULL",
    )
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    assert!(!b.app().audit.start_full(&local).await.unwrap());
    for c in [&h, &b] {
        let f = c.app().audit.full_run(&local).await.unwrap();
        assert!(f.running, "{f:?}");
        assert_eq!((f.controller.as_str(), f.walked), ("ctl-x", 7));
    }

    // Its controller stopped writing progress 31 s ago: shown as stopped, and startable.
    sqlx::query("UPDATE activity_full_run SET updated_ms = $1")
        .bind(now - 31_000)
        .execute(pool)
        .await
        .unwrap();
    let f = h.app().audit.full_run(&local).await.unwrap();
    assert!(!f.running, "{f:?}");
    let e = f.error.expect("why it stopped");
    assert!(
        e.contains("controller ctl-x stopped reporting progress after 7 of"),
        "{e}"
    );
    assert!(b.app().audit.start_full(&local).await.unwrap());
    let on_a = finished(&h).await;
    assert!(on_a.report.expect("a report").ok);
    assert_ne!(on_a.controller, "ctl-x");
    assert!(on_a.error.is_none());
}
