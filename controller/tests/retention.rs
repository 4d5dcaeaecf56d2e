//! Retention (`jit-controller prune`, the real binary, next to a running controller): old and
//! young records of each kind, a dry run changes nothing, a prune removes exactly what is past
//! its retention and no longer needed, the activity log goes only up to a signed checkpoint
//! and into an archive that verifies offline (alone, and joined with an export of the rest),
//! what remains verifies online, a changed archive fails, a second prune is a no-op, and bad
//! settings are refused with clear errors. SQLite, and PostgreSQL with
//! JIT_TEST_BACKEND=postgres (there also with two controllers taking requests meanwhile).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::binary::{controller_json as run, empty_copy};
use common::{Harness, one_port};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jitgate_proto::audit::{Checkpoint, Export, HashInput, entry_hash, parse_public_key};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

const DAY: i64 = 86_400_000;

fn now() -> i64 {
    jitgate_api::time::now_ms()
}

/// Runs `jit-controller --state-dir DIR prune ARGS --json`: (success, stdout JSON, stderr).
async fn prune(h: &Harness, args: &[&str]) -> (bool, Value, String) {
    run(&h.dir.0, &[&["prune"], args].concat()).await
}

fn set_retention(h: &Harness, table: &str) {
    let p = h.dir.config();
    let mut text = std::fs::read_to_string(&p).expect("config");
    if let Some(i) = text.find("\n[retention]") {
        text.truncate(i);
    }
    text.push_str("\n[retention]\n");
    text.push_str(table);
    std::fs::write(&p, text).expect("write config");
}

async fn exec(h: &Harness, sql: &str, binds: &[Value]) {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            Value::Number(n) => q.bind(n.as_i64().expect("i64")),
            Value::String(s) => q.bind(s.clone()),
            Value::Null => q.bind(None::<i64>),
            other => panic!("bind {other}"),
        };
    }
    q.execute(h.app().db.pool()).await.expect(sql);
}

async fn count(h: &Harness, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(h.app().db.pool())
        .await
        .expect(sql)
        .get(0)
}

/// Row counts of every table retention touches, and the chain head.
async fn state(h: &Harness) -> BTreeMap<String, String> {
    let mut m = h.snapshot().await;
    for t in [
        "agent_audit",
        "sessions",
        "activity_checkpoints",
        "activity_anchor",
        "notify_events",
        "notify_deliveries",
    ] {
        m.insert(
            t.into(),
            count(h, &format!("SELECT COUNT(*) FROM {t}"))
                .await
                .to_string(),
        );
    }
    m
}

fn kind(report: &Value, k: &str) -> i64 {
    report["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .find(|x| x["kind"] == k)
        .unwrap_or_else(|| panic!("{k} in {report}"))["rows"]
        .as_i64()
        .expect("rows")
}

async fn request(h: &Harness, token: &str, prefix: &str) -> String {
    let (st, v) = h
        .initiate(
            token,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": prefix, "duration": "PT1H"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["id"].as_str().expect("id").to_string()
}

/// Makes request `id` (ports, grants, grant messages) `age` ms old, its messages delivered.
async fn age_request(h: &Harness, id: &str, t: i64) {
    let id = json!(id);
    exec(
        h,
        "UPDATE requests SET start_ms = $1 WHERE id = $2",
        &[json!(t), id.clone()],
    )
    .await;
    exec(
        h,
        "UPDATE request_ports SET end_ms = $1 WHERE request_id = $2",
        &[json!(t + 3_600_000), id.clone()],
    )
    .await;
    exec(
        h,
        "UPDATE grants SET start_ms = $1, end_ms = $2 WHERE request_id = $3",
        &[json!(t), json!(t + 3_600_000), id.clone()],
    )
    .await;
    exec(
        h,
        "UPDATE grant_outbox SET delivered_ms = $1 WHERE grant_id IN \
         (SELECT id FROM grants WHERE request_id = $2)",
        &[json!(t), id],
    )
    .await;
}

async fn session(h: &Harness, id: &str, expires: i64, ended: Option<i64>) {
    exec(
        h,
        "INSERT INTO sessions (id, token_hash, principal, display_name, email, groups, roles, \
         client, refresh_sealed, created_ms, expires_ms, refresh_due_ms, source_address, \
         ended_ms, end_reason) VALUES ($1, $2, 'oidc:x#y', 'Y', NULL, '{}', '[]', 'cli', NULL, \
         $3, $4, $4, '203.0.113.9', $5, $6)",
        &[
            json!(id),
            json!(format!("hash-{id}")),
            json!(expires - DAY),
            json!(expires),
            ended.map_or(Value::Null, |e| json!(e)),
            json!(if ended.is_some() { "signed_out" } else { "" }),
        ],
    )
    .await;
}

async fn scan(h: &Harness, id: i64, t: i64) {
    exec(
        h,
        "INSERT INTO compliance_scans (id, time_ms, reason, probed, compliant, non_compliant, \
         unknown, unmanaged) VALUES ($1, $2, 'schedule', 0, 1, 0, 0, 0)",
        &[json!(id), json!(t)],
    )
    .await;
    for vm in ["web1", "web2"] {
        exec(
            h,
            "INSERT INTO compliance_results (scan_id, resource, kind, resource_group, owner, \
             state, findings) VALUES ($1, $2, 'virtualMachine', 'prod', 'o', 'Compliant', '[]')",
            &[json!(id), json!(vm)],
        )
        .await;
    }
}

async fn audit_record(h: &Harness, seq: i64, kind: &str, received: i64) {
    exec(
        h,
        "INSERT INTO agent_audit (agent_id, id, seq, line, received_ms, kind, at_ms, grant_id) \
         VALUES ('agt-1', $1, $2, '{}', $3, $4, $3, NULL)",
        &[
            json!(format!("r{seq}")),
            json!(seq),
            json!(received),
            json!(kind),
        ],
    )
    .await;
}

fn signing_key(h: &Harness) -> ed25519_dalek::SigningKey {
    let pem = std::fs::read_to_string(h.dir.checkpoint_key()).expect("key");
    ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).expect("pkcs8")
}

/// Moves entries 1..=`through` back to `t` as if written then: recomputes every hash from
/// there on, the head, and re-signs every checkpoint with the controller's key (what the log
/// would be had the entries been written at `t`).
async fn age_activity(h: &Harness, through: i64, t: i64) {
    let pool = h.app().db.pool();
    exec(
        h,
        "UPDATE activity SET time_ms = $1 WHERE seq <= $2",
        &[json!(t), json!(through)],
    )
    .await;
    let rows = sqlx::query(
        "SELECT seq, time_ms, operation, resource_type, resource_group, vm, caller, \
         caller_address, outcome, request_id, details FROM activity ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("rows");
    let mut prev = jitgate_proto::audit::GENESIS_HASH.to_string();
    let mut hashes = BTreeMap::new();
    for r in &rows {
        let s: i64 = r.get(0);
        let c = |i: usize| r.get::<String, _>(i);
        let hash = entry_hash(&HashInput {
            seq: s,
            time_ms: r.get(1),
            operation: &c(2),
            resource_type: &c(3),
            resource_group: &c(4),
            vm: &c(5),
            caller: &c(6),
            caller_address: &c(7),
            outcome: &c(8),
            request_id: &c(9),
            details: &c(10),
            prev_hash: &prev,
        });
        exec(
            h,
            "UPDATE activity SET prev_hash = $1, hash = $2 WHERE seq = $3",
            &[json!(prev), json!(hash), json!(s)],
        )
        .await;
        hashes.insert(s, hash.clone());
        prev = hash;
    }
    exec(
        h,
        "UPDATE counters SET hash = $1 WHERE name = 'chain'",
        &[json!(prev)],
    )
    .await;
    let sk = signing_key(h);
    let cps: Vec<(i64, i64)> = sqlx::query_as("SELECT seq, time_ms FROM activity_checkpoints")
        .fetch_all(pool)
        .await
        .expect("checkpoints");
    exec(h, "DELETE FROM activity_checkpoints", &[]).await;
    for (seq, time) in cps {
        let c = Checkpoint::sign(&sk, seq, &hashes[&seq], time);
        exec(
            h,
            "INSERT INTO activity_checkpoints (seq, key_id, hash, time_ms, signature) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                json!(c.seq),
                json!(c.key_id),
                json!(c.hash),
                json!(c.time_ms),
                json!(c.signature),
            ],
        )
        .await;
    }
    exec(h, "DELETE FROM activity_verified", &[]).await;
}

async fn checkpoint(h: &Harness) -> i64 {
    h.checkpoint().await
}

async fn export(h: &Harness) -> Export {
    let (st, v) = h.get("/api/v1/activityLog/export", &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    serde_json::from_value(v).expect("export parses")
}

fn read_export(p: &std::path::Path) -> Export {
    serde_json::from_slice(&std::fs::read(p).expect("archive")).expect("archive parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_exactly_what_is_past_retention_and_archives_the_log() {
    let h = Harness::new().await;
    let old = now() - 500 * DAY;
    // Notifications, kept 1 day by the prune below (the running controller keeps them 30
    // days: its own hourly prune leaves them alone): event 1 delivered two days ago (goes,
    // with its delivery); event 2 delivered two days ago to one sink and still retrying to
    // another (its delivery goes; the event and the retrying delivery stay); event 3
    // delivered an hour ago (stays).
    for sink in ["hook", "chat"] {
        exec(
            &h,
            "INSERT INTO notify_sinks (name, spec, created_by, created_at, updated_at) \
             VALUES ($1, '{}', 'test', 0, 0)",
            &[json!(sink)],
        )
        .await;
    }
    // Written before anything else, in seq order as the outbox numbers them (oldest
    // first), and the counter moved past them.
    // All three fanned out (the fan-out's mark past them).
    const E: i64 = 0;
    let two_days = now() - 2 * DAY;
    let hour_ago = now() - 3_600_000;
    exec(
        &h,
        "UPDATE counters SET value = $1 WHERE name = 'notify_fanned'",
        &[json!(E + 3)],
    )
    .await;
    for (seq, at) in [(E + 1, two_days), (E + 2, two_days + 1), (E + 3, hour_ago)] {
        exec(
            &h,
            "INSERT INTO notify_events (seq, id, event_type, order_key, body, people, \
             created_at) VALUES ($1, $2, 'request.approved', 'r', '{}', '[]', $3)",
            &[json!(seq), json!(format!("ev{seq}")), json!(at)],
        )
        .await;
    }
    for (seq, sink, state, at) in [
        (E + 1, "hook", "delivered", two_days + 10),
        (E + 2, "hook", "delivered", two_days + 10),
        (E + 2, "chat", "retrying", two_days + 10),
        (E + 3, "hook", "delivered", hour_ago + 10),
    ] {
        exec(
            &h,
            "INSERT INTO notify_deliveries (event_seq, sink, order_key, state, \
             next_attempt_at, delivered_at) VALUES ($1, $2, 'r', $3, $4, $5)",
            &[
                json!(seq),
                json!(sink),
                json!(state),
                json!(at),
                if state == "delivered" {
                    json!(at)
                } else {
                    Value::Null
                },
            ],
        )
        .await;
    }
    exec(
        &h,
        "UPDATE counters SET value = $1 WHERE name = 'notify'",
        &[json!(E + 3)],
    )
    .await;

    let alice = h.prod_with_requester().await;

    // Requests: one ended long ago (goes with its grants), one old but still active (stays),
    // one ended recently (stays).
    let gone = request(&h, &alice, "203.0.113.1").await;
    let active = request(&h, &alice, "203.0.113.2").await;
    let recent = request(&h, &alice, "203.0.113.3").await;
    for id in [&gone, &recent] {
        let (st, v) = h.revoke(&alice, id).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    age_request(&h, &gone, old).await;
    age_request(&h, &active, old).await;
    assert!(
        h.count_rows("grants", &gone).await > 0,
        "the old request has grants"
    );

    // Sessions: one expired 30 days ago (goes), one a day ago, one open.
    session(&h, "ses-old", now() - 30 * DAY, None).await;
    session(&h, "ses-ended", now() + DAY, Some(now() - 20 * DAY)).await;
    session(&h, "ses-recent", now() - DAY, None).await;
    session(&h, "ses-open", now() + DAY, None).await;
    // Compliance: two old evaluations go; the young one stays.
    scan(&h, 1, old).await;
    scan(&h, 2, old + DAY).await;
    scan(&h, 3, now() - DAY).await;
    // One agent's chain: other(old), connection(100 d), connection(10 d), other(old),
    // other(old). Only the prefix before the first record within retention goes: 1 and 2.
    audit_record(&h, 1, "grant.applied", old).await;
    audit_record(&h, 2, "connection.admitted", now() - 100 * DAY).await;
    audit_record(&h, 3, "connection.admitted", now() - 10 * DAY).await;
    audit_record(&h, 4, "grant.expired", old).await;
    audit_record(&h, 5, "grant.expired", old).await;

    // The activity log: entries up to the first checkpoint are old; later ones young.
    let c1 = checkpoint(&h).await;
    age_activity(&h, c1, old).await;
    request(&h, &alice, "203.0.113.4").await;
    let c2 = checkpoint(&h).await;
    assert!(c2 > c1);
    set_retention(
        &h,
        "activity_days = 365\n\n[notify]\nretain_delivered_days = 1\n",
    );

    // A dry run changes nothing and says what would go.
    let before = state(&h).await;
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("activity-archive.json");
    let archive_s = archive.to_str().expect("utf-8");
    let (ok, r, err) = prune(&h, &["--dry-run", "--archive", archive_s]).await;
    assert!(ok, "{err}");
    assert_eq!(r["dryRun"], true);
    assert_eq!(kind(&r, "requests"), 1, "{r}");
    assert_eq!(kind(&r, "sessions"), 2, "{r}");
    assert_eq!(kind(&r, "complianceEvaluations"), 2, "{r}");
    assert_eq!(kind(&r, "complianceResults"), 4, "{r}");
    assert_eq!(kind(&r, "agentAuditRecords"), 1, "{r}");
    assert_eq!(kind(&r, "connectionRecords"), 1, "{r}");
    assert_eq!(kind(&r, "notificationDeliveries"), 2, "{r}");
    assert_eq!(kind(&r, "notificationEvents"), 1, "{r}");
    assert_eq!(kind(&r, "activityEntries"), c1, "{r}");
    assert_eq!(r["activity"]["throughSeq"], c1, "{r}");
    assert!(!archive.exists(), "a dry run writes no archive");
    assert_eq!(state(&h).await, before, "a dry run changes nothing");

    // Without --archive: everything but the activity log, which says why.
    let (ok, r, err) = prune(&h, &[]).await;
    assert!(ok, "{err}");
    assert!(
        r["activity"]["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("--archive")),
        "{r}"
    );
    assert_eq!(kind(&r, "activityEntries"), 0, "{r}");
    assert_eq!(kind(&r, "requests"), 1, "{r}");
    assert_eq!(
        (
            kind(&r, "notificationDeliveries"),
            kind(&r, "notificationEvents")
        ),
        (2, 1),
        "the dry run's counts: {r}"
    );
    let left: Vec<(i64, String)> =
        sqlx::query_as("SELECT event_seq, sink FROM notify_deliveries ORDER BY event_seq, sink")
            .fetch_all(h.app().db.pool())
            .await
            .expect("deliveries");
    assert_eq!(left, [(2, "chat".to_string()), (3, "hook".to_string())]);
    assert_eq!(
        count(&h, "SELECT COUNT(*) FROM notify_events WHERE seq <= 3").await,
        2,
        "event 1 went; 2 (still retrying to chat) and 3 (young) stay"
    );
    assert_eq!(
        h.count_rows("grants", &gone).await,
        0,
        "its grants went with it"
    );
    for (id, what) in [(&gone, 0), (&active, 1), (&recent, 1)] {
        let n = count(
            &h,
            &format!("SELECT COUNT(*) FROM requests WHERE id = '{id}'"),
        )
        .await;
        assert_eq!(n, what, "request {id}");
        let n = count(
            &h,
            &format!("SELECT COUNT(*) FROM request_ports WHERE request_id = '{id}'"),
        )
        .await;
        assert_eq!(n, what, "ports of {id}");
    }
    let sessions: Vec<(String,)> = sqlx::query_as("SELECT id FROM sessions ORDER BY id")
        .fetch_all(h.app().db.pool())
        .await
        .expect("sessions");
    assert_eq!(
        sessions.into_iter().map(|s| s.0).collect::<Vec<_>>(),
        vec!["ses-open", "ses-recent"]
    );
    assert_eq!(count(&h, "SELECT MIN(id) FROM compliance_scans").await, 3);
    assert_eq!(
        count(&h, "SELECT COUNT(*) FROM compliance_results").await,
        2
    );
    assert_eq!(count(&h, "SELECT MIN(seq) FROM agent_audit").await, 3);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM agent_audit").await, 3);
    assert_eq!(count(&h, "SELECT MIN(seq) FROM activity").await, 1);
    // The prune is in the activity log, under the local caller, with its counts.
    let seq = r["activitySeq"].as_i64().expect("recorded");
    let (op, caller, details): (String, String, String) =
        sqlx::query_as("SELECT operation, caller, details FROM activity WHERE seq = $1")
            .bind(seq)
            .fetch_one(h.app().db.pool())
            .await
            .expect("entry");
    assert_eq!(op, "Prune Records Past Retention");
    assert_eq!(caller, "local:root");
    let details: Value = serde_json::from_str(&details).expect("json");
    assert_eq!(details["deleted"]["requests"], 1, "{details}");

    // The verified mark behind the cut (one entry walked) follows the anchor.
    exec(&h, "DELETE FROM activity_verified", &[]).await;
    exec(
        &h,
        "INSERT INTO activity_verified (id, seq, hash, covered, checkpoints, time_ms) \
         SELECT 1, seq, hash, 0, 0, 0 FROM activity WHERE seq = 1",
        &[],
    )
    .await;

    // With --archive: the log up to the checkpoint c1, archived first.
    let head_before = count(&h, "SELECT value FROM counters WHERE name = 'chain'").await;
    let (ok, r, err) = prune(&h, &["--archive", archive_s]).await;
    assert!(ok, "{err}");
    assert_eq!(r["activity"]["throughSeq"], c1, "{r}");
    assert_eq!(kind(&r, "activityEntries"), c1, "{r}");
    assert_eq!(kind(&r, "requests"), 0, "nothing else left to go: {r}");
    assert_eq!(count(&h, "SELECT MIN(seq) FROM activity").await, c1 + 1);
    assert_eq!(
        count(&h, "SELECT value FROM counters WHERE name = 'chain'").await,
        head_before + 1,
        "one entry: the prune itself"
    );
    assert_eq!(
        count(&h, "SELECT MIN(seq) FROM activity_checkpoints").await,
        c1
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archive)
            .expect("archive")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key =
        parse_public_key(&std::fs::read_to_string(h.dir.checkpoint_pub()).expect("public key"))
            .expect("key");
    let arch = read_export(&archive);
    let v = arch.verify(Some(&key)).expect("verify");
    assert!(v.ok, "the archive verifies offline: {v:?}");
    assert_eq!((v.entries, v.covered_seq), (c1, c1));

    let local = jitgate_controller::authz::Caller::local();
    let mark = h
        .app()
        .audit
        .verified(&local)
        .await
        .expect("mark")
        .expect("set");
    assert_eq!(
        (mark.seq, mark.covered, mark.failed_seq),
        (c1, c1, None),
        "{mark:?}"
    );
    // What remains verifies online (the full walk and the incremental mark)...
    let (st, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let mark = h.app().audit.extend_verified(100_000).await.expect("mark");
    assert_eq!(mark.failed_seq, None, "{mark:?}");
    assert_eq!(mark.seq, count(&h, "SELECT MAX(seq) FROM activity").await);
    // ...and its export offline: alone (from the signed anchor) and after the archive.
    let rest = export(&h).await;
    assert_eq!(rest.entries.first().map(|e| e.seq), Some(c1 + 1));
    let v = rest.verify(Some(&key)).expect("verify");
    assert!(v.ok, "the rest verifies from its anchor: {v:?}");
    let joined = Export::join(vec![arch.clone(), rest.clone()]).expect("join");
    let v = joined.verify(Some(&key)).expect("verify");
    assert!(v.ok, "{v:?}");
    assert_eq!(v.entries, rest.entries.last().expect("entries").seq);
    assert!(
        Export::join(vec![rest.clone(), arch.clone()]).is_err(),
        "the wrong order is refused"
    );

    // A changed archive fails: an entry's caller, or a checkpoint's signed hash.
    let mut bad = arch.clone();
    bad.entries[0].caller = "mallory".into();
    let v = bad.verify(Some(&key)).expect("verify");
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, Some(1));
    let joined = Export::join(vec![bad, rest.clone()]).expect("join");
    assert!(!joined.verify(Some(&key)).expect("verify").ok);
    let mut bad = arch.clone();
    if let Some(c) = bad.checkpoints.last_mut() {
        c.time_ms += 1;
    }
    assert!(
        !bad.verify(Some(&key)).expect("verify").ok,
        "forged checkpoint"
    );
    // The rest without its anchor checkpoint does not verify alone.
    let mut bare = rest.clone();
    bare.checkpoints.retain(|c| c.seq != c1);
    let v = bare.verify(Some(&key)).expect("verify");
    assert!(!v.ok, "{v:?}");

    // A second prune is a no-op: nothing goes, no archive, no entry.
    let second = dir.path().join("second.json");
    let before = state(&h).await;
    let (ok, r, err) = prune(&h, &["--archive", second.to_str().expect("utf-8")]).await;
    assert!(ok, "{err}");
    for k in r["kinds"].as_array().expect("kinds") {
        assert_eq!(k["rows"], 0, "{r}");
    }
    assert_eq!(r["activitySeq"], Value::Null);
    assert!(!second.exists());
    assert_eq!(state(&h).await, before);

    // An existing archive file is never overwritten.
    let (ok, _, err) = prune(&h, &["--archive", archive_s]).await;
    assert!(!ok);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(read_export(&archive), arch);

    // A backup of the pruned database restores, and the restored log verifies from its
    // anchor.
    let backup = dir.path().join("backup.jsonl");
    let (ok, _, err) = run(&h.dir.0, &["backup", backup.to_str().expect("utf-8")]).await;
    assert!(ok, "{err}");
    let copy = empty_copy(&h, dir.path()).await;
    let (ok, v, err) = run(&copy, &["restore", backup.to_str().expect("utf-8")]).await;
    assert!(ok, "{err}");
    assert_eq!(v["verify"]["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retention_settings_are_refused() {
    let h = Harness::new().await;
    for (table, want) in [
        (
            "requests_days = 0\n",
            "retention.requests_days = 0 is out of range",
        ),
        (
            "activity_days = 40000\n",
            "retention.activity_days = 40000 is out of range",
        ),
        ("connections_days = 500\n", "cannot outlive"),
        ("request_days = 10\n", "unknown field `request_days`"),
        ("sessions_days = -1\n", "sessions_days"),
    ] {
        set_retention(&h, table);
        let before = state(&h).await;
        let (ok, _, err) = prune(&h, &["--dry-run"]).await;
        assert!(!ok, "{table}");
        assert!(err.contains(want), "{table}: {err}");
        assert_eq!(state(&h).await, before);
    }
    set_retention(&h, "requests_days = 30\nactivity_days = 3650\n");
    let (ok, r, err) = prune(&h, &["--dry-run"]).await;
    assert!(ok, "{err}");
    assert_eq!(r["dryRun"], true);
    // The text report: per kind, and why the activity log was left alone.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
        .arg("--state-dir")
        .arg(&h.dir.0)
        .args(["prune", "--dry-run"])
        .env_remove("JIT_LOG")
        .output()
        .await
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("WOULD DELETE"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("requests ")), "{text}");
    assert!(
        text.contains("activity log: not pruned: no signed checkpoint covers only entries older than 3650 days"),
        "{text}"
    );
}

/// Many rows of a kind go in many short steps (each kind's continuation is exercised), while
/// the controller keeps taking requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_prunes_go_in_steps_while_requests_are_served() {
    let h = Harness::new().await;
    let alice = h.prod_with_requester().await;
    let old = now() - 500 * DAY;
    let pool = h.app().db.pool();
    // 2 500 expired sessions, 2 500 records of one agent, 12 evaluations.
    for chunk in 0..25 {
        let mut sql = String::from(
            "INSERT INTO sessions (id, token_hash, principal, display_name, email, groups, \
             roles, client, refresh_sealed, created_ms, expires_ms, refresh_due_ms, \
             source_address, ended_ms, end_reason) VALUES ",
        );
        let mut audit = String::from(
            "INSERT INTO agent_audit (agent_id, id, seq, line, received_ms, kind, at_ms, \
             grant_id) VALUES ",
        );
        for i in 0..100 {
            let n = chunk * 100 + i;
            if i > 0 {
                sql.push(',');
                audit.push(',');
            }
            sql.push_str(&format!(
                "('ses-{n:05}', 'h-{n}', 'oidc:x#y', 'Y', NULL, '{{}}', '[]', 'cli', NULL, \
                 {old}, {old}, {old}, '203.0.113.9', NULL, NULL)"
            ));
            audit.push_str(&format!(
                "('agt-2', 'r{n}', {}, '{{}}', {old}, 'grant.applied', {old}, NULL)",
                n + 1
            ));
        }
        sqlx::query(&sql).execute(pool).await.expect("sessions");
        sqlx::query(&audit)
            .execute(pool)
            .await
            .expect("agent audit");
    }
    for id in 1..=12 {
        scan(&h, id, old + id).await;
    }
    scan(&h, 13, now()).await;
    let requests = {
        let h = &h;
        let alice = alice.clone();
        async move {
            let mut ok = 0;
            for i in 0..20 {
                let (st, _) = h
                    .initiate(
                        &alice,
                        one_port(
                            "web1",
                            json!({"number": 22, "allowedSourceAddressPrefix":
                                format!("203.0.113.{}", 10 + i), "duration": "PT1H"}),
                        ),
                    )
                    .await;
                if st == StatusCode::OK {
                    ok += 1;
                }
            }
            ok
        }
    };
    let (pruned, ok) = tokio::join!(prune(&h, &[]), requests);
    let (success, r, err) = pruned;
    assert!(success, "{err}");
    assert_eq!(ok, 20, "every request made during the prune succeeded");
    assert_eq!(kind(&r, "sessions"), 2_500, "{r}");
    // The agent's newest record always stays (its chain's head).
    assert_eq!(kind(&r, "agentAuditRecords"), 2_499, "{r}");
    assert_eq!(kind(&r, "complianceEvaluations"), 12, "{r}");
    assert_eq!(count(&h, "SELECT COUNT(*) FROM sessions").await, 0);
    assert_eq!(
        count(
            &h,
            "SELECT COUNT(*) FROM agent_audit WHERE agent_id = 'agt-2'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &h,
            "SELECT MAX(seq) FROM agent_audit WHERE agent_id = 'agt-2'"
        )
        .await,
        2_500
    );
    assert_eq!(count(&h, "SELECT COUNT(*) FROM compliance_scans").await, 1);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM requests").await, 20);
    // The log still verifies, the prune entry included.
    let (st, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
}

/// Two controllers on one PostgreSQL (SQLite has one controller: nothing to do there): the
/// activity log is archived and pruned by `jit-controller prune` while both take requests.
/// Every request succeeds; the archive verifies offline; what remains verifies on both
/// controllers, online and by the shared incremental mark (which had covered part of the
/// pruned range), and joined after the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_keep_one_verifiable_log_across_a_prune() {
    if !common::postgres_backend() {
        return;
    }
    let h = Harness::new().await;
    let alice = h.prod_with_requester().await;
    let b = h.second().await;
    for i in 0..3 {
        request(&h, &alice, &format!("203.0.113.{}", 20 + i)).await;
        request(&b, &alice, &format!("203.0.113.{}", 30 + i)).await;
    }
    let c1 = checkpoint(&h).await;
    age_activity(&h, c1, now() - 500 * DAY).await;
    // Both controllers verify into the range that will go.
    for x in [&h, &b] {
        let mark = x.app().audit.extend_verified(100_000).await.expect("mark");
        assert_eq!(mark.failed_seq, None, "{mark:?}");
        assert!(mark.seq >= c1, "{mark:?}");
    }
    request(&b, &alice, "203.0.113.40").await;
    let c2 = checkpoint(&b).await;
    assert!(c2 > c1);
    set_retention(&h, "activity_days = 365\n");

    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("activity-archive.json");
    let archive_s = archive.to_str().expect("utf-8");
    let requests = |x: &'static str| {
        let (h, b, alice) = (&h, &b, alice.clone());
        async move {
            let mut ok = 0;
            for i in 0..10 {
                let on = if i % 2 == 0 { h } else { b };
                let prefix = format!("203.0.113.{}", if x == "a" { 100 } else { 150 } + i);
                let (st, v) = on
                    .initiate(
                        &alice,
                        one_port(
                            "web2",
                            json!({"number": 22, "allowedSourceAddressPrefix": prefix,
                                "duration": "PT1H"}),
                        ),
                    )
                    .await;
                assert_eq!(st, StatusCode::OK, "{v}");
                ok += 1;
            }
            ok
        }
    };
    let args = ["--archive", archive_s];
    let (pruned, ok_a, ok_b) = tokio::join!(prune(&h, &args), requests("a"), requests("b"));
    let (ok, r, err) = pruned;
    assert!(ok, "{err}");
    assert_eq!((ok_a, ok_b), (10, 10));
    assert_eq!(r["activity"]["throughSeq"], c1, "{r}");
    assert_eq!(count(&h, "SELECT MIN(seq) FROM activity").await, c1 + 1);

    let key =
        parse_public_key(&std::fs::read_to_string(h.dir.checkpoint_pub()).expect("public key"))
            .expect("key");
    let arch = read_export(&archive);
    let v = arch.verify(Some(&key)).expect("verify");
    assert!(v.ok, "the archive verifies offline: {v:?}");
    assert_eq!(v.covered_seq, c1);
    let head = count(&h, "SELECT MAX(seq) FROM activity").await;
    for x in [&h, &b] {
        let (st, v) = x.get("/api/v1/activityLog/verify", &h.admin).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["ok"], true, "{v}");
        let mark = x.app().audit.extend_verified(100_000).await.expect("mark");
        assert_eq!((mark.seq, mark.failed_seq), (head, None), "{mark:?}");
        let rest = export(x).await;
        assert_eq!(rest.entries.first().map(|e| e.seq), Some(c1 + 1));
        let joined = Export::join(vec![arch.clone(), rest]).expect("join");
        let v = joined.verify(Some(&key)).expect("verify");
        assert!(v.ok, "{v:?}");
    }
}
