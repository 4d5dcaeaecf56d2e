//! Backup and restore, and the SQLite write-ahead log kept bounded (docs/operations.md,
//! "Backup and restore"): `jit-controller backup` under load, `restore` into an empty
//! database on either backend, a SQLite backup restored into PostgreSQL, and the WAL
//! truncated under writes with overlapping readers. Real controllers, the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::binary::{controller_json, empty_copy};
use common::{Harness, one_port};
use jitgate_api::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// SQLite's write-ahead log stays bounded under sustained writes while readers keep
/// overlapping (which stops SQLite from ever restarting it by itself): past the configured
/// number of frames the controller checkpoints it to the end and truncates the file, and no
/// committed row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_truncated_under_writes_with_overlapping_readers() {
    use jitgate_controller::app::Parts;
    use jitgate_controller::store::{DbOptions, sqlite_url};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const LIMIT_FRAMES: i64 = 256; // 1 MiB at 4 KiB pages
    const TXS: i64 = 40;
    const ROWS: i64 = 200; // ~4 KB each: ~200 frames per transaction
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("controller.db");
    let wal = tmp.path().join("controller.db-wal");
    let opts = DbOptions {
        wal_truncate_frames: LIMIT_FRAMES,
        ..DbOptions::default()
    };
    let app = jitgate_controller::App::open(&sqlite_url(&path), &opts, Parts::default())
        .await
        .expect("open");
    let mut tx = app.db.begin().await.expect("begin");
    sqlx::query("CREATE TABLE wal_probe (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(tx.conn())
        .await
        .expect("create");
    tx.commit().await.expect("commit");

    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (pool, stop) = (app.db.pool().clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wal_probe")
                    .fetch_one(&pool)
                    .await
                    .expect("read");
                reads += 1;
            }
            reads
        }));
    }
    let mut largest = 0u64;
    for _ in 0..TXS {
        let mut tx = app.db.begin().await.expect("begin");
        sqlx::query(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $1) \
             INSERT INTO wal_probe (body) SELECT hex(randomblob(2000)) FROM n",
        )
        .bind(ROWS)
        .execute(tx.conn())
        .await
        .expect("insert");
        tx.commit().await.expect("commit");
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        largest > 2 * 4096 * LIMIT_FRAMES as u64,
        "the writes grew the WAL well past the limit ({largest} bytes)"
    );
    // Readers still overlapping: within a few checkpoint ticks the file is emptied.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let size = loop {
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if size <= 4096 * LIMIT_FRAMES as u64 || std::time::Instant::now() > deadline {
            break size;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.expect("reader") > 0, "the readers ran");
    }
    assert!(
        size <= 4096 * LIMIT_FRAMES as u64,
        "WAL still {size} bytes (largest {largest}) 60 s after the writes"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wal_probe")
        .fetch_one(app.db.pool())
        .await
        .expect("count");
    assert_eq!(rows, TXS * ROWS, "every committed row is still there");
    app.close().await;
}

/// `jit-controller backup` while requests keep arriving, then `restore` into an empty
/// database: the copy is one consistent moment (its activity log verifies, every request in
/// it is whole), a controller started on it serves it, and a second restore, a damaged file
/// or a truncated one change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_and_verifies() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let h = Arc::new(Harness::new().await);
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let alice = h.token("alice", Role::Requester, "rg:prod").await;
    h.app().audit.checkpoint().await.expect("checkpoint");

    // Requests keep arriving while the backup reads.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let load = {
        let (h, stop, made, alice) = (h.clone(), stop.clone(), made.clone(), alice.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (st, v) = h
                    .initiate(
                        &alice,
                        one_port(
                            if i.is_multiple_of(2) { "web1" } else { "web2" },
                            json!({"number": 22, "duration": "PT1H",
                                   "allowedSourceAddressPrefix": format!("203.0.113.{}", i % 250)}),
                        ),
                    )
                    .await;
                assert_eq!(st, StatusCode::OK, "{v}");
                made.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while made.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("backup.jsonl");
    let file_s = file.to_str().expect("utf-8 path");
    let before = made.load(Ordering::Relaxed);
    let (ok, summary, err) = controller_json(&h.dir.0, &["backup", file_s]).await;
    let after = made.load(Ordering::Relaxed);
    assert!(ok, "{err}");
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("backup").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the backup is private");
    let head = summary["header"]["activityHead"].as_i64().expect("head");
    assert!(head > 0, "{summary}");
    // Never over an existing file.
    let (ok, _, err) = controller_json(&h.dir.0, &["backup", file_s]).await;
    assert!(!ok && err.contains("exists"), "{err}");

    // Restore into an empty copy of the state directory.
    let target = empty_copy(&h, work.path()).await;
    let (ok, out, err) = controller_json(&target, &["restore", file_s]).await;
    assert!(ok, "{err}");
    assert_eq!(out["verify"]["ok"], true, "{out}");
    assert_eq!(out["verify"]["headSeq"].as_i64(), Some(head), "{out}");
    assert!(out["verify"]["checkpoints"].as_i64() >= Some(1), "{out}");
    assert_eq!(out["restored"]["sha256"], summary["sha256"], "{out}");

    // A controller on the restored state serves it: the chain verifies over the API, and
    // the history holds the requests made up to the backup, each with its ports.
    let cfg = jitgate_controller::state::Config::load(&jitgate_controller::state::StateDir(
        target.clone(),
    ))
    .expect("config");
    let restored =
        jitgate_controller::start(&jitgate_controller::state::StateDir(target.clone()), &cfg)
            .await
            .expect("start on the restored state");
    let pool = restored.app.db.pool();
    let (requests,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM requests")
        .fetch_one(pool)
        .await
        .expect("count");
    // 20 or more had been made before the backup started; none after the load stopped.
    assert!(
        requests as u64 >= before && requests as u64 <= after + 1,
        "{before} <= {requests} <= {after} + 1"
    );
    let (orphans,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM requests r WHERE NOT EXISTS \
         (SELECT 1 FROM request_ports p WHERE p.request_id = r.id)",
    )
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(orphans, 0, "every request is whole");
    let url = format!("https://{}/api/v1/activityLog/verify", restored.addr);
    let v: Value = common::client_for(&jitgate_controller::state::StateDir(target.clone()))
        .get(&url)
        .bearer_auth(&h.admin)
        .send()
        .await
        .expect("verify")
        .json()
        .await
        .expect("json");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["headSeq"].as_i64(), Some(head), "{v}");
    let rows_before: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM activity")
        .fetch_one(pool)
        .await
        .expect("count");

    // Restoring again into the now-used database: refused, nothing written.
    let (ok, _, err) = controller_json(&target, &["restore", file_s]).await;
    assert!(!ok && err.contains("not empty"), "{err}");
    let rows_after: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM activity")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(rows_before, rows_after);
    restored.stop().await;

    // A damaged file (one character of one row changed) and a truncated one: refused, and
    // the empty target stays empty.
    let text = std::fs::read_to_string(&file).expect("read");
    let damaged = work.path().join("damaged.jsonl");
    std::fs::write(&damaged, text.replacen("203.0.113.", "203.0.113.9", 1)).expect("write");
    let truncated = work.path().join("truncated.jsonl");
    std::fs::write(&truncated, &text[..text.len() * 2 / 3]).expect("write");
    let spare = tempfile::tempdir().expect("tempdir");
    let target = empty_copy(&h, spare.path()).await;
    for (f, says) in [(&damaged, "digest"), (&truncated, "truncated")] {
        let (ok, _, err) = controller_json(&target, &["restore", f.to_str().expect("utf-8")]).await;
        assert!(!ok && err.contains(says), "{says}: {err}");
    }
    if h.cfg.database_url.is_none() {
        let left: Vec<_> = std::fs::read_dir(&target)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("jit.db"))
            .collect();
        assert!(left.is_empty(), "no database file left behind: {left:?}");
    }
    let (ok, out, err) = controller_json(&target, &["restore", file_s]).await;
    assert!(ok && out["verify"]["ok"] == true, "{err} {out}");
}

/// A SQLite controller's backup restores into PostgreSQL (how to move from one to the
/// other): the same rows, and the activity log verifies there with the controller's key.
/// Run in the SQLite pass only (the PostgreSQL pass would compare PostgreSQL with itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_restores_into_postgresql() {
    if common::postgres_backend() {
        return;
    }
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let alice = h.token("alice", Role::Requester, "rg:prod").await;
    for i in 0..5 {
        let (st, v) = h
            .initiate(
                &alice,
                one_port(
                    "web1",
                    json!({"number": 22, "duration": "PT1H",
                           "allowedSourceAddressPrefix": format!("203.0.113.{i}")}),
                ),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    h.app().audit.checkpoint().await.expect("checkpoint");
    let mut out = Vec::new();
    let url = jitgate_controller::store::sqlite_url(&h.dir.db());
    let summary = jitgate_controller::store::backup::dump_url(&url, &mut out)
        .await
        .expect("backup");
    assert_eq!(summary.header.source, "sqlite");

    let pg = common::fresh_postgres_database().await;
    let restored = jitgate_controller::store::backup::restore(&pg, &out[..])
        .await
        .expect("restore into PostgreSQL");
    assert_eq!(restored.rows, summary.rows);
    assert_eq!(restored.sha256, summary.sha256);
    let app = jitgate_controller::App::open(
        &pg,
        &jitgate_controller::store::DbOptions::default(),
        jitgate_controller::app::Parts::default(),
    )
    .await
    .expect("open the PostgreSQL database");
    let key =
        jitgate_controller::channel::tls::load_signing_key(&h.dir.checkpoint_key()).expect("key");
    let report = jitgate_controller::store::activity::verify(app.db.pool(), &[key.verifying_key()])
        .await
        .expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.head_seq, summary.header.activity_head);
    assert!(report.checkpoints >= 1);
    for table in [
        "requests",
        "request_ports",
        "grants",
        "activity",
        "tokens",
        "vms",
    ] {
        let q = format!("SELECT COUNT(*) FROM {table}");
        let (a,): (i64,) = sqlx::query_as(&q)
            .fetch_one(h.app().db.pool())
            .await
            .expect("count");
        let (b,): (i64,) = sqlx::query_as(&q)
            .fetch_one(app.db.pool())
            .await
            .expect("count");
        assert_eq!(a, b, "{table}");
    }
    app.close().await;
}
