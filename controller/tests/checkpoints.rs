//! Signed checkpoints of the activity log (real controller, real SQLite file): a database
//! writer who rewrites an entry and recomputes every later hash passes the plain chain check
//! but not the checkpoint check; forged checkpoints fail; exports verify offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use common::binary::controller_json;
use jitgate_proto::audit::{Export, HashInput, entry_hash};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

fn ssh_policy() -> Value {
    json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT1H"}])
}

async fn checkpoint(h: &Harness) -> (StatusCode, Value) {
    h.call(
        Method::POST,
        "/api/v1/activityLog/checkpoints",
        Some(&h.admin),
        None,
    )
    .await
}

async fn verify(h: &Harness) -> Value {
    let (st, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

async fn export(h: &Harness) -> Export {
    let (st, v) = h.get("/api/v1/activityLog/export", &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    serde_json::from_value(v).expect("export parses")
}

/// What a database writer can do: change entry `seq`'s caller and recompute the hash of it
/// and every later entry, and the chain head, so the plain chain is consistent again.
async fn rewrite_and_rechain(h: &Harness, seq: i64) {
    let pool = h.app().db.pool();
    sqlx::query("UPDATE activity SET caller = 'mallory' WHERE seq = $1")
        .bind(seq)
        .execute(pool)
        .await
        .expect("tamper");
    let rows = sqlx::query(
        "SELECT seq, time_ms, operation, resource_type, resource_group, vm, caller, \
         caller_address, outcome, request_id, details FROM activity WHERE seq >= $1 ORDER BY seq",
    )
    .bind(seq)
    .fetch_all(pool)
    .await
    .expect("rows");
    let mut prev: String = sqlx::query("SELECT prev_hash FROM activity WHERE seq = $1")
        .bind(seq)
        .fetch_one(pool)
        .await
        .expect("prev")
        .get(0);
    for r in &rows {
        let s: i64 = r.get(0);
        let t = |i: usize| r.get::<String, _>(i);
        let hash = entry_hash(&HashInput {
            seq: s,
            time_ms: r.get(1),
            operation: &t(2),
            resource_type: &t(3),
            resource_group: &t(4),
            vm: &t(5),
            caller: &t(6),
            caller_address: &t(7),
            outcome: &t(8),
            request_id: &t(9),
            details: &t(10),
            prev_hash: &prev,
        });
        sqlx::query("UPDATE activity SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(&prev)
            .bind(&hash)
            .bind(s)
            .execute(pool)
            .await
            .expect("rechain");
        prev = hash;
    }
    sqlx::query("UPDATE counters SET hash = $1 WHERE name = 'chain'")
        .bind(&prev)
        .execute(pool)
        .await
        .expect("head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_and_rechained_log_fails_at_the_checkpoint() {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy("prod", ssh_policy()).await;
    let (st, cp) = checkpoint(&h).await;
    assert_eq!(st, StatusCode::CREATED, "{cp}");
    let covered = cp["seq"].as_i64().expect("seq");
    assert!(covered >= 5, "{cp}");
    // The head has not moved: no new checkpoint, the latest one back.
    let (st, again) = checkpoint(&h).await;
    assert_eq!((st, &again), (StatusCode::OK, &cp));
    h.put_rg_policy("dev", ssh_policy()).await;
    let v = verify(&h).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoints"], 1, "{v}");
    assert_eq!(v["coveredSeq"], covered, "{v}");
    let entries = v["entries"].as_i64().expect("entries");
    assert!(entries > covered);
    assert_eq!(v["uncovered"], entries - covered, "{v}");
    // The checkpoints are listed with the key that verifies them.
    let (_, list) = h.get("/api/v1/activityLog/checkpoints", &h.admin).await;
    assert_eq!(list["value"][0], cp, "{list}");
    assert_eq!(list["keyId"], v["keyId"]);
    assert!(
        list["publicKeyPem"]
            .as_str()
            .expect("pem")
            .contains("PUBLIC KEY")
    );

    rewrite_and_rechain(&h, 2).await;
    // The plain chain is consistent again: without checkpoints it would pass.
    let mut x = export(&h).await;
    x.checkpoints.clear();
    let plain = x.verify(None).expect("verify");
    assert!(plain.ok, "{plain:?}");
    // With them it fails, at the checkpoint, naming the range the rewrite is in.
    let v = verify(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["badCheckpointSeq"], covered, "{v}");
    assert_eq!(v["firstBadSeq"], covered, "{v}");
    let problem = v["problem"].as_str().expect("problem");
    assert!(
        problem.contains(&format!("rewritten between entries 1 and {covered}")),
        "{problem}"
    );
    // Rewriting only entries after the last checkpoint is not caught: they are reported as
    // not yet covered (checked above), which is what the interval bounds.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_removed_checkpoints_and_truncation_fail() {
    let mut h = Harness::new().await;
    h.fixture().await;
    let (st, cp) = checkpoint(&h).await;
    assert_eq!(st, StatusCode::CREATED, "{cp}");
    let seq = cp["seq"].as_i64().expect("seq");
    // A changed signed time (a forged signature) fails, naming the checkpoint.
    sqlx::query("UPDATE activity_checkpoints SET time_ms = time_ms + 1 WHERE seq = $1")
        .bind(seq)
        .execute(h.app().db.pool())
        .await
        .expect("tamper");
    let v = verify(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["badCheckpointSeq"], seq, "{v}");
    assert!(
        v["problem"].as_str().expect("p").contains("bad signature"),
        "{v}"
    );
    sqlx::query("UPDATE activity_checkpoints SET time_ms = time_ms - 1 WHERE seq = $1")
        .bind(seq)
        .execute(h.app().db.pool())
        .await
        .expect("restore");
    assert_eq!(verify(&h).await["ok"], true);
    // Removing the last entry (and moving the head back) passes the chain but not the
    // checkpoint that covered it.
    let prev: String = sqlx::query("SELECT prev_hash FROM activity WHERE seq = $1")
        .bind(seq)
        .fetch_one(h.app().db.pool())
        .await
        .expect("prev")
        .get(0);
    sqlx::query("DELETE FROM activity WHERE seq = $1")
        .bind(seq)
        .execute(h.app().db.pool())
        .await
        .expect("delete");
    sqlx::query("UPDATE counters SET value = $1, hash = $2 WHERE name = 'chain'")
        .bind(seq - 1)
        .bind(&prev)
        .execute(h.app().db.pool())
        .await
        .expect("head");
    let v = verify(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["badCheckpointSeq"], seq, "{v}");
    assert!(
        v["problem"]
            .as_str()
            .expect("p")
            .contains("entries removed"),
        "{v}"
    );
    // Readers may list and export; only admins sign on demand.
    let reader = h.token("auditor", jitgate_api::Role::Reader, "*").await;
    let (st, _) = h.get("/api/v1/activityLog/export", &reader).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = h
        .call(
            Method::POST,
            "/api/v1/activityLog/checkpoints",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // A stop signs the head: after a restart everything is covered.
    sqlx::query("DELETE FROM activity_checkpoints")
        .execute(h.app().db.pool())
        .await
        .expect("clear");
    h.restart().await;
    let v = verify(&h).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoints"], 1, "{v}");
    assert_eq!(v["uncovered"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_checkpoints_sign_only_a_moved_head() {
    let h = Harness::with_config(|c| c.checkpoint_interval_seconds = 1).await;
    h.fixture().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = verify(&h).await;
        if v["checkpoints"] == 1 && v["uncovered"] == 0 {
            assert_eq!(v["ok"], true, "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic checkpoint: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Nothing logged: a few more intervals add no checkpoint.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(verify(&h).await["checkpoints"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_verifies_offline_and_fails_after_one_byte_changes() {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy("prod", ssh_policy()).await;
    checkpoint(&h).await;
    h.put_rg_policy("dev", ssh_policy()).await;
    let x = export(&h).await;
    let key = jitgate_proto::audit::parse_public_key(
        &std::fs::read_to_string(h.dir.checkpoint_pub()).expect("pub"),
    )
    .expect("key");
    let r = x.verify(Some(&key)).expect("verify");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.checkpoints, 1);
    assert!(r.uncovered > 0, "{r:?}");
    // One byte of one entry changed in the file: fails.
    let text = serde_json::to_string(&x).expect("json");
    let at = text.find("\"caller\":\"local:root\"").expect("caller") + 10;
    let mut bytes = text.into_bytes();
    bytes[at] = b'L';
    let edited: Export = serde_json::from_slice(&bytes).expect("still JSON");
    let r = edited.verify(Some(&key)).expect("verify");
    assert!(!r.ok, "{r:?}");
    assert!(r.problem.expect("problem").contains("altered"));
    // A different pinned key refuses the file whole.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    assert!(x.verify(Some(&other)).is_err());
}

/// A replaced checkpoint key (docs/operations.md, "A compromised grant-signing key", step
/// 5): with the old public half kept as `keys/checkpoint-retired-1.pub`, the checkpoints
/// it signed still verify on the controller and offline with both keys pinned; without it
/// they do not; and with neither key file the controller refuses to start, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_checkpoint_key_keeps_the_old_checkpoints_verifying() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy("prod", ssh_policy()).await;
    h.checkpoint().await;
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read");
    let old_pub = read(&h.dir.checkpoint_pub());
    let old_private = read(&h.dir.checkpoint_key());
    let grant_key = read(&h.dir.signing_key());
    let retired = h.dir.0.join("keys/checkpoint-retired-1.pub");

    // The replacement, by the command, while the controller runs.
    let (ok, r, err) = controller_json(&h.dir.0, &["keys", "replace-checkpoint"]).await;
    assert!(ok, "{err}");
    assert_eq!(r["retiredPublicKey"], retired.display().to_string(), "{r}");
    assert_eq!(read(&retired), old_pub, "the old public half is kept");
    assert_ne!(read(&h.dir.checkpoint_key()), old_private);
    assert_eq!(
        read(&h.dir.signing_key()),
        grant_key,
        "grant keys untouched"
    );
    let mode = std::fs::metadata(h.dir.checkpoint_key())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for leftover in [
        "checkpoint.key.old",
        "checkpoint.key.new",
        "checkpoint.pub.new",
    ] {
        assert!(!h.dir.0.join("keys").join(leftover).exists(), "{leftover}");
    }
    let new = jitgate_controller::state::load_checkpoint_key(&h.dir, false)
        .expect("new key")
        .key;
    let new_id = jitgate_proto::audit::key_id(&new.verifying_key());
    assert_eq!(r["newKeyId"], new_id, "{r}");
    assert_eq!(
        std::fs::read_to_string(h.dir.checkpoint_pub()).expect("pub"),
        ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &new.verifying_key(),
            ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF
        )
        .expect("pem")
    );
    let row: (String, String) = sqlx::query_as(
        "SELECT caller, details FROM activity WHERE operation = 'Replace Checkpoint Key'",
    )
    .fetch_one(h.app().db.pool())
    .await
    .expect("the replacement is recorded");
    assert_eq!(row.0, "local:root");
    let details: Value = serde_json::from_str(&row.1).expect("details");
    assert_eq!(details["keyId"], new_id, "{details}");
    assert_eq!(details["oldKeyId"], r["oldKeyId"], "{details}");

    // The running controller signs with the key it read at start: that verifies too.
    h.checkpoint().await;
    assert_eq!(verify(&h).await["ok"], true);
    h.restart().await;
    h.put_rg_policy("dev", ssh_policy()).await;
    h.checkpoint().await;
    let v = verify(&h).await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checkpoints"].as_i64().expect("n") >= 3, "{v}");
    assert_eq!(v["keyId"], new_id, "{v}");
    // Offline: the export holds checkpoints by both keys.
    let x = export(&h).await;
    let both = [
        jitgate_proto::audit::parse_public_key(&old_pub).expect("old"),
        new.verifying_key(),
    ];
    let r = Export::verify_parts(vec![x.clone()], &both).expect("verify");
    assert!(r.ok, "{r:?}");
    let r = Export::verify_parts(vec![x], &both[1..]).expect("verify");
    assert!(!r.ok, "the old checkpoints need the old key: {r:?}");

    // A second replacement keeps the next public half: three keys' checkpoints verify.
    let (ok, r2, err) = controller_json(&h.dir.0, &["keys", "replace-checkpoint"]).await;
    assert!(ok, "{err}");
    let retired2 = h.dir.0.join("keys/checkpoint-retired-2.pub");
    assert_eq!(
        r2["retiredPublicKey"],
        retired2.display().to_string(),
        "{r2}"
    );
    assert_eq!(r2["oldKeyId"], new_id, "{r2}");
    h.restart().await;
    h.checkpoint().await;
    let v = verify(&h).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["keyId"], r2["newKeyId"], "{v}");

    // Without the old public half, the controller's verification fails at them.
    std::fs::remove_file(&retired).expect("rm");
    h.restart().await;
    let v = verify(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["problem"]
            .as_str()
            .expect("problem")
            .contains("names key"),
        "{v}"
    );

    // Neither the checkpoint key nor the key `init` made: a clear refusal to start.
    std::fs::remove_file(h.dir.checkpoint_key()).expect("rm");
    std::fs::remove_file(h.dir.signing_key()).expect("rm");
    if let Some(s) = h.server.take() {
        s.stop().await;
    }
    let e = match jitgate_controller::start(&h.dir, &h.cfg).await {
        Ok(_) => panic!("started without a checkpoint key"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no checkpoint key"), "{e}");
}
