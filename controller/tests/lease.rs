//! The leader lease (docs/ha.md, "Leader lease"): one controller of a cluster at a time does
//! the once-per-cluster work; another takes over when it stops or freezes; the writes of a
//! holder whose lease moved on are refused (fencing).
//!
//! Always on PostgreSQL, whatever `JIT_TEST_BACKEND` says (like tests/ha.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::Harness;
use jitgate_controller::Error;
use jitgate_controller::store::lease::{self, LEADER};
use reqwest::StatusCode;

/// A harness on `url` with a short lease and frequent checkpoints.
async fn controller(url: &str) -> Harness {
    Harness::with_config(|c| {
        c.database_url = Some(url.to_string());
        c.leader_lease_seconds = 2;
        c.checkpoint_interval_seconds = 1;
    })
    .await
}

async fn lease_row(pool: &sqlx::AnyPool) -> lease::LeaseRow {
    lease::get(pool, LEADER)
        .await
        .expect("read the lease")
        .expect("the lease row")
}

async fn checkpoints(h: &Harness) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM activity_checkpoints")
        .fetch_one(h.app().db.pool())
        .await
        .expect("count checkpoints")
}

/// Polls `f` every 100 ms until it holds or `within` passes; returns the time it took.
async fn within<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_hands_over_at_shutdown_and_a_stale_fence_writes_nothing() {
    let url = common::fresh_postgres_database().await;
    let mut a = controller(&url).await;
    let alice = a.prod_with_requester().await;
    // A started first: it leads, and B (started after) does not take an unexpired lease.
    assert!(
        within(Duration::from_secs(10), || async {
            a.app().leader.fence().is_some()
        })
        .await
        .is_some(),
        "A never led"
    );
    let b = a.second().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = a.app().leader.fence().expect("A still leads");
    assert!(b.app().leader.fence().is_none(), "two leaders");
    let row = lease_row(a.app().db.pool()).await;
    assert_eq!(
        (row.holder.as_str(), row.epoch),
        (a.app().leader.holder(), old.epoch)
    );

    // A stops: it gives the lease up and B takes it at its next tick (every 2/3 s), not
    // after the lease's 2 s.
    a.server.take().expect("running").stop().await;
    let took = within(Duration::from_secs(10), || async {
        b.app().leader.fence().is_some()
    })
    .await
    .expect("B never took over");
    let new = b.app().leader.fence().expect("B leads");
    assert!(new.epoch > old.epoch, "{new:?} after {old:?}");
    println!(
        "takeover after a shutdown: {took:?} (epoch {} -> {})",
        old.epoch, new.epoch
    );

    // Leader work under A's old fence, run on B's services: refused at commit, nothing
    // written. The same work under B's fence writes (the check can pass).
    b.request_ssh(&alice, "web1", "203.0.113.10").await;
    let before = checkpoints(&b).await;
    let stale = lease::fenced(old.clone(), b.app().audit.checkpoint()).await;
    assert!(
        matches!(stale, Err(Error::Fenced { epoch, .. }) if epoch == old.epoch),
        "{stale:?}"
    );
    assert_eq!(
        checkpoints(&b).await,
        before,
        "a fenced write was committed"
    );
    let fresh = lease::fenced(new.clone(), b.app().audit.checkpoint()).await;
    assert!(fresh.is_ok(), "{fresh:?}");
    assert_eq!(checkpoints(&b).await, before + 1);
    let (st, v) = b.get("/api/v1/activityLog/verify", &b.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
}

/// A `jit-controller run` child, resumed and killed when dropped (also when the test fails).
struct Child {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Child {
    fn spawn(state: &std::path::Path) -> Child {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
            .arg("--state-dir")
            .arg(state)
            .arg("run")
            .env("JIT_LOG", "info")
            .env_remove("JIT_LOG_FORMAT")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn jit-controller run");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Child {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (off the runtime's worker) for a log line containing `text`.
    async fn wait_for(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.seen.iter().any(|l| l.contains(text)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no {text:?} line within {within:?}: {:#?}", self.seen);
            }
            let got = tokio::task::block_in_place(|| {
                self.lines
                    .recv_timeout(left.min(Duration::from_millis(200)))
            });
            if let Ok(l) = got {
                self.seen.push(l);
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill only sends a signal to the child this test started.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill {sig}");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fault: the lease holder frozen with SIGSTOP past its lease. Another controller
/// takes over and does the work (signs the checkpoint of a request made meanwhile); once
/// resumed, the old holder does not lead and the lease stays with the new one; the chain
/// verifies. The refusal of a stale holder's writes is shown above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_stays_out_when_it_wakes() {
    let url = common::fresh_postgres_database().await;
    let mut a = controller(&url).await;
    let alice = a.prod_with_requester().await;
    // B: the real binary, on A's keys and database (what docs/ha.md says to copy).
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    common::copy_dir(&a.dir.0, &state);
    let mut b = Child::spawn(&state);
    b.wait_for("jit-controller running", Duration::from_secs(60))
        .await;
    // A stops (it gives the lease up), B takes it, then A comes back as a follower.
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    let first = a.app().leader.holder().to_string();
    a.server.take().expect("running").stop().await;
    let b_led = within(Duration::from_secs(15), || async {
        let r = lease_row(&pool).await;
        r.holder != first && !r.holder.is_empty() && r.expires_ms > jitgate_api::time::now_ms()
    })
    .await;
    assert!(b_led.is_some(), "B never led: {:?}", lease_row(&pool).await);
    b.wait_for("this controller leads the cluster", Duration::from_secs(10))
        .await;
    a.restart().await;
    let a_holder = a.app().leader.holder().to_string();
    let b_epoch = lease_row(&pool).await.epoch;
    assert!(a.app().leader.fence().is_none(), "A leads beside B");

    // Freeze B past its lease (2 s). A takes over: within the lease, a renewal period and
    // a margin for a busy machine (B may be frozen inside a write transaction: the server
    // ends it after 10 s).
    b.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let took = within(Duration::from_secs(30), || async {
        a.app().leader.fence().is_some()
    })
    .await
    .unwrap_or_else(|| panic!("A did not take over"));
    let row = lease_row(&pool).await;
    assert_eq!(row.holder, a_holder);
    assert!(row.epoch > b_epoch, "{row:?}");
    println!("takeover from a frozen leader: {took:?}");

    // A does the work: a request made now is covered by a checkpoint A signs.
    a.request_ssh(&alice, "web1", "203.0.113.20").await;
    let head: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'chain'")
        .fetch_one(a.app().db.pool())
        .await
        .expect("head");
    let signed = within(Duration::from_secs(15), || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(seq) FROM activity_checkpoints")
            .fetch_one(a.app().db.pool())
            .await
            .expect("checkpoints")
            .is_some_and(|s| s >= head)
    })
    .await;
    assert!(signed.is_some(), "no checkpoint covers entry {head}");

    // B wakes after having been frozen for longer than its lease: it finds it lost the lease
    // and stays out; A's epoch stands.
    assert!(frozen.elapsed() > Duration::from_secs(2));
    b.signal(libc::SIGCONT);
    b.wait_for("no longer leads the cluster", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = lease_row(&pool).await;
    assert_eq!(
        (after.holder.as_str(), after.epoch),
        (a_holder.as_str(), row.epoch)
    );
    assert!(a.app().leader.fence().is_some());
    // One chain, every entry once, every checkpoint matching.
    let (st, v) = a.get("/api/v1/activityLog/verify", &a.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    drop(b);
}

/// `/readyz` fails once no controller has held the lease for three lease times (here the
/// row is gone, so nobody can take it), and recovers when it can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_without_a_leader() {
    let url = common::fresh_postgres_database().await;
    let h = controller(&url).await;
    let pool = h.app().db.pool();
    let ready = |want: &'static str| {
        let h = &h;
        async move {
            let (st, v) = h.call(reqwest::Method::GET, "/readyz", None, None).await;
            v["checks"]["leader"] == want
                && (st == StatusCode::OK) == (want != "noLeader")
                && (v["status"] == "ready") == (want != "noLeader")
        }
    };
    assert!(
        within(Duration::from_secs(15), || ready("leading"))
            .await
            .is_some()
    );
    sqlx::query("DELETE FROM leases")
        .execute(pool)
        .await
        .expect("delete the lease");
    // The holder loses it at its next renewal; 3 × 2 s later there is no leader.
    let gone = within(Duration::from_secs(30), || ready("noLeader")).await;
    assert!(
        gone.is_some(),
        "{:?}",
        h.call(reqwest::Method::GET, "/readyz", None, None).await
    );
    assert!(h.app().leader.fence().is_none());
    sqlx::query(
        "INSERT INTO leases (name, holder, epoch, acquired_ms, expires_ms, config, version) \
         VALUES ('leader', '', 7, 0, 0, '', '')",
    )
    .execute(pool)
    .await
    .expect("put the lease back");
    assert!(
        within(Duration::from_secs(15), || ready("leading"))
            .await
            .is_some()
    );
    assert_eq!(h.app().leader.fence().map(|f| f.epoch), Some(8));
}

/// Configuration drift: a controller whose cluster-wide settings differ from the leader's is
/// not ready (and says why); one with the same settings, and host-specific ones changed, is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_configured_unlike_the_leader_is_not_ready() {
    let url = common::fresh_postgres_database().await;
    let a = controller(&url).await;
    assert!(
        within(Duration::from_secs(10), || async {
            a.app().leader.fence().is_some()
        })
        .await
        .is_some()
    );
    // B: another limit on pending approvals (who may do what differs): not ready.
    let b = a.second_with(|c| c.max_pending_per_requester = 3).await;
    // C: only host-specific settings differ (its own listen address, pool size): ready.
    let c = a
        .second_with(|c| {
            c.max_db_connections = 3;
            c.trusted_proxies = vec!["198.51.100.0/24".into()];
        })
        .await;
    let differs = within(Duration::from_secs(15), || async {
        let (st, v) = b.call(reqwest::Method::GET, "/readyz", None, None).await;
        st == StatusCode::SERVICE_UNAVAILABLE && v["checks"]["config"] == "differs"
    })
    .await;
    assert!(
        differs.is_some(),
        "{:?}",
        b.call(reqwest::Method::GET, "/readyz", None, None).await
    );
    let same = within(Duration::from_secs(15), || async {
        let (st, v) = c.call(reqwest::Method::GET, "/readyz", None, None).await;
        st == StatusCode::OK
            && v["checks"]["config"] == "same"
            && v["checks"]["leader"] == "following"
    })
    .await;
    assert!(
        same.is_some(),
        "{:?}",
        c.call(reqwest::Method::GET, "/readyz", None, None).await
    );
    let (st, v) = a.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["checks"]["config"], "same", "{v}");
    // Nothing of the configuration itself in the answer.
    assert!(!v.to_string().contains("max_pending"), "{v}");
}

/// A rolling upgrade: once a newer controller has migrated the database, an older one
/// gives the leader lease up (within a renewal) and takes it no more, so the cluster's
/// periodic work runs on the version that wrote the schema; it is not ready meanwhile
/// (`migrations: ahead`). Simulated with a migration row above this build's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_older_than_the_schema_leaves_the_lease() {
    let url = common::fresh_postgres_database().await;
    let h = controller(&url).await;
    let pool = h.app().db.pool();
    let leads = |want: bool| {
        let h = &h;
        async move { h.app().leader.fence().is_some() == want }
    };
    assert!(
        within(Duration::from_secs(15), || leads(true))
            .await
            .is_some()
    );
    let newer = jitgate_controller::store::db::SCHEMA_VERSION + 1;
    sqlx::query(
        "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, 'newer', 0)",
    )
    .bind(newer)
    .execute(pool)
    .await
    .expect("a newer migration");
    assert!(
        within(Duration::from_secs(10), || leads(false))
            .await
            .is_some(),
        "the older controller kept the lease"
    );
    let row = lease_row(pool).await;
    assert_eq!(row.expires_ms, 0, "given up, not left to expire: {row:?}");
    let (st, v) = h.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["checks"]["migrations"], "ahead", "{v}");
    // It stays out across several renewals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.app().leader.fence().is_none());
    // The newer version gone again (say, rolled back): it leads again.
    sqlx::query("DELETE FROM schema_migrations WHERE version = $1")
        .bind(newer)
        .execute(pool)
        .await
        .expect("delete");
    assert!(
        within(Duration::from_secs(15), || leads(true))
            .await
            .is_some()
    );
}
