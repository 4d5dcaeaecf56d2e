//! `jit audit`: checkpoints, exports and offline verification (one file, and an archive
//! joined with the rest after a prune) with the real `jit` binary against a real controller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Env;
use jitgate_api::Role;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_checkpoint_export_and_offline_verify() {
    let e = Env::new().await;
    let admin = e.admin.clone();
    let o = e.jit(&admin, &["audit", "checkpoint", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let cp = o.json();
    let o = e.jit(&admin, &["audit", "verify", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.json()["coveredSeq"], cp["seq"]);
    let o = e.jit(&admin, &["audit", "export", "audit.json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let file = e._tmp.path().join("audit.json");
    let key = e.dir.checkpoint_pub();
    let key = key.to_str().expect("path");
    // No controller is needed: the URL points nowhere.
    let offline = |extra: &[&str]| {
        let mut c = e.command(
            &admin,
            &[&["audit", "verify", "--offline", "audit.json"], extra].concat(),
        );
        c.env("JIT_URL", "https://127.0.0.1:1");
        c
    };
    let o = offline(&["--key", key, "--json"])
        .output()
        .await
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (v["ok"].clone(), v["checkpoints"].clone()),
        (Value::Bool(true), 1.into())
    );
    // One byte of one entry changed: exit 9, naming the entry.
    let text = std::fs::read_to_string(&file).expect("export");
    let at = text.find("\"caller\":\"local:root\"").expect("caller") + 10;
    let mut bytes = text.into_bytes();
    bytes[at] = b'L';
    std::fs::write(&file, bytes).expect("edit");
    let o = offline(&[]).output().await.expect("run");
    assert_eq!(
        o.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("altered"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// A log split as `jit-controller prune --archive` splits it (the archive: entries up to a
/// checkpoint; the rest: the entries after it, from that checkpoint on) verifies as one
/// chain with the files oldest first, the rest alone from its signed anchor, and not in the
/// wrong order or without the anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_verify_joins_an_archive_and_the_rest() {
    let e = Env::new().await;
    let admin = e.admin.clone();
    let o = e.jit(&admin, &["audit", "checkpoint", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let cut = o.json()["seq"].as_i64().expect("seq");
    e.token("later", Role::Reader, "*").await;
    let o = e.jit(&admin, &["audit", "checkpoint", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let head = o.json()["seq"].as_i64().expect("seq");
    assert!(head > cut);
    let o = e.jit(&admin, &["audit", "export", "all.json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let all: Value =
        serde_json::from_slice(&std::fs::read(e._tmp.path().join("all.json")).expect("read"))
            .expect("json");
    let part = |entries: &dyn Fn(i64) -> bool, cps: &dyn Fn(i64) -> bool| {
        let mut x = all.clone();
        let keep = |v: &Value, f: &dyn Fn(i64) -> bool| -> Value {
            Value::Array(
                v.as_array()
                    .expect("array")
                    .iter()
                    .filter(|x| f(x["seq"].as_i64().expect("seq")))
                    .cloned()
                    .collect(),
            )
        };
        x["entries"] = keep(&all["entries"], entries);
        x["checkpoints"] = keep(&all["checkpoints"], cps);
        x
    };
    let write = |name: &str, v: &Value| {
        std::fs::write(e._tmp.path().join(name), v.to_string()).expect("write");
    };
    write("archive.json", &part(&|s| s <= cut, &|s| s <= cut));
    write("rest.json", &part(&|s| s > cut, &|s| s >= cut));
    write("bare.json", &part(&|s| s > cut, &|s| s > cut));
    let key = e.dir.checkpoint_pub();
    let key = key.to_str().expect("path");
    let verify = |files: &[&str]| {
        let mut args = vec!["audit", "verify", "--key", key, "--json"];
        for f in files {
            args.extend(["--offline", f]);
        }
        let mut c = e.command(&admin, &args);
        c.env("JIT_URL", "https://127.0.0.1:1");
        c
    };
    let o = verify(&["archive.json", "rest.json"])
        .output()
        .await
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (v["ok"].clone(), v["entries"].clone()),
        (Value::Bool(true), head.into())
    );
    let o = verify(&["rest.json"]).output().await.expect("run");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = verify(&["rest.json", "archive.json"])
        .output()
        .await
        .expect("run");
    assert_eq!(o.status.code(), Some(9));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not continue"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = verify(&["bare.json"]).output().await.expect("run");
    assert_eq!(
        o.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no signed checkpoint covers"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // `--key` several times: each file's key must be one of them. Another key alone (the
    // grant-signing key's public half) is refused; with the checkpoint key beside it, the
    // files verify.
    let other = e.dir.signing_pub();
    let other = other.to_str().expect("path");
    let with_keys = |keys: &[&str]| {
        let mut args = vec!["audit", "verify", "--json"];
        for k in keys {
            args.extend(["--key", k]);
        }
        args.extend(["--offline", "archive.json", "--offline", "rest.json"]);
        let mut c = e.command(&admin, &args);
        c.env("JIT_URL", "https://127.0.0.1:1");
        c
    };
    let o = with_keys(&[other]).output().await.expect("run");
    assert_eq!(o.status.code(), Some(9));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a pinned key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = with_keys(&[other, key]).output().await.expect("run");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
