//! Notification sinks managed through the API, against a real controller (SQLite here;
//! PostgreSQL with JIT_TEST_BACKEND=postgres) and a real recording HTTPS receiver on
//! loopback: an admin writes a secret, adds a sink, tests it, sees it redacted and its
//! queue, removes it; every refused sink (SSRF ranges, http, unknown or path-like secrets,
//! a scope outside the admin's) stores nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../notify/tests/common/mod.rs"]
mod receivers;

use std::time::{Duration, Instant};

use common::notify::Rig;
use common::one_port;
use jitgate_api::Role;
use receivers::{Pki, Received, Receiver};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FILE_SECRET: &[u8] = b"the-file-sink-secret";
const API_SECRET: &str = "an-api-written-secret-0123456789";

type T = Rig;

/// A controller whose controller.toml names one sink of its own (`filehook`, at
/// `file_url`).
async fn setup(pki: &Pki, file_url: &str) -> T {
    let tail = format!(
        "[[notify.sinks]]\nname = \"filehook\"\nformat = \"webhook\"\n\
         target = \"{file_url}\"\nsecret = \"file-key\"\n"
    );
    Rig::start(&pki.ca_pem, &[("file-key", FILE_SECRET)], &tail).await
}

fn sink(name: &str, url: &str) -> Value {
    json!({"name": name, "format": "webhook", "target": url, "secret": "api-key"})
}

async fn sinks(t: &T, token: &str) -> Vec<String> {
    let (st, v) = t.h.get("/api/v1/notify/sinks", token).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sink"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_for(rx: &Receiver, f: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let t0 = Instant::now();
    loop {
        let got = rx.received();
        if f(&got) {
            return got;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} received",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn verify(r: &Received, secret: &[u8]) {
    let sig = r.header("jitgate-signature").expect("signed");
    let now = jitgate_api::time::now_ms() / 1000;
    jitgate_notify::verify_signature(sig, &r.body, secret, now, Duration::from_secs(600))
        .expect("valid signature");
}

async fn operations(t: &T) -> Vec<(String, Value)> {
    let (st, v) =
        t.h.get(
            "/api/v1/activityLog?resourceType=NotificationSink",
            &t.h.admin,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut out: Vec<(String, Value)> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["operation"].as_str().unwrap_or("").to_string(), e.clone()))
        .collect();
    let (_, v) =
        t.h.get(
            "/api/v1/activityLog?resourceType=NotificationSecret",
            &t.h.admin,
        )
        .await;
    out.extend(
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["operation"].as_str().unwrap_or("").to_string(), e.clone())),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_adds_tests_sees_and_removes_a_sink() {
    let pki = Pki::new("notify admin test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let url = rx.url("https", "127.0.0.1");
    let t = setup(&pki, &url).await;
    let admin = t.h.admin.clone();

    // The secret, written through the API: stored 0600 in the secrets directory, only its
    // name ever shown.
    let (st, v) =
        t.h.call(
            Method::PUT,
            "/api/v1/notify/secrets/api-key",
            Some(&admin),
            Some(json!({"value": API_SECRET})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let file = t.tmp.path().join("secrets/api-key");
    assert_eq!(std::fs::read(&file).unwrap(), API_SECRET.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, v) = t.h.get("/api/v1/notify/secrets", &admin).await;
    assert_eq!(v["value"], json!(["api-key", "file-key"]), "{v}");

    // The sink; its URL carries a credential-like path: shown redacted everywhere.
    let secret_url = format!("{url}/T000/SECRETPATH");
    let (st, v) =
        t.h.call(
            Method::POST,
            "/api/v1/notify/sinks",
            Some(&admin),
            Some(
                json!({"name": "ops", "format": "webhook", "target": secret_url,
                "secret": "api-key", "events": ["request.pending_approval", "request.approved"]}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["sink"]["name"], "ops");
    assert_eq!(v["createdBy"], "token:admin");
    let (_, list) = t.h.get("/api/v1/notify/sinks", &admin).await;
    let text = list.to_string();
    assert!(
        !text.contains("SECRETPATH") && !text.contains(API_SECRET),
        "{text}"
    );
    assert_eq!(sinks(&t, &admin).await, ["filehook", "ops"]);

    // Test: one example, signed with the uploaded secret, outside the queue.
    let (st, v) =
        t.h.call(
            Method::POST,
            "/api/v1/notify/sinks/ops/test",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["delivered"], true, "{v}");
    assert_eq!(v["eventType"], "request.pending_approval");
    let got = wait_for(&rx, |g| !g.is_empty()).await;
    verify(&got[0], API_SECRET.as_bytes());
    assert_eq!(got[0].json()["type"], "request.pending_approval");

    // A request needing approval reaches the new sink (and the file's sink), each signed
    // with its own secret.
    t.h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT3H",
            "approval": {"stages": [{"approvers": ["token:carl"], "required": 1}]}}]),
    )
    .await;
    let req = t.h.token("req", Role::Requester, "rg:prod").await;
    let (st, r) =
        t.h.initiate(
            &req,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.7", "duration": "PT10M"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let id = r["id"].as_str().unwrap();
    let got = wait_for(&rx, |g| {
        g.iter().filter(|r| r.json()["request"]["id"] == id).count() >= 2
    })
    .await;
    let mut secrets_seen = 0;
    for r in got.iter().filter(|r| r.json()["request"]["id"] == id) {
        if r.path.ends_with("/SECRETPATH") {
            verify(r, API_SECRET.as_bytes());
        } else {
            verify(r, FILE_SECRET);
        }
        secrets_seen += 1;
    }
    assert_eq!(secrets_seen, 2);

    // The queue per sink.
    let t0 = Instant::now();
    loop {
        let (st, v) = t.h.get("/api/v1/notify/status", &admin).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let ops = v["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "ops")
            .cloned()
            .unwrap();
        if ops["delivered"] == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The file's sink is changed in the file only; the API's sink is removed.
    let (st, v) =
        t.h.call(
            Method::DELETE,
            "/api/v1/notify/sinks/filehook",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "SinkInConfigFile");
    let (st, v) =
        t.h.call(
            Method::DELETE,
            "/api/v1/notify/sinks/ops",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(sinks(&t, &admin).await, ["filehook"]);
    let (st, v) =
        t.h.call(
            Method::DELETE,
            "/api/v1/notify/sinks/ops",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("SinkNotFound"))
    );

    // Activity: the secret's name (never its value), the sink added and removed.
    let ops = operations(&t).await;
    let names: Vec<&str> = ops.iter().map(|(o, _)| o.as_str()).collect();
    assert!(names.contains(&"Add Notification Sink"), "{names:?}");
    assert!(names.contains(&"Remove Notification Sink"), "{names:?}");
    assert!(names.contains(&"Write Notification Secret"), "{names:?}");
    let all = serde_json::to_string(&ops.iter().map(|(_, e)| e).collect::<Vec<_>>()).unwrap();
    assert!(
        !all.contains(API_SECRET) && !all.contains("SECRETPATH"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sinks_store_nothing_and_scopes_hold() {
    let pki = Pki::new("notify admin test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let url = rx.url("https", "127.0.0.1");
    let t = setup(&pki, &url).await;
    let admin = t.h.admin.clone();
    let (st, _) =
        t.h.call(
            Method::PUT,
            "/api/v1/notify/secrets/api-key",
            Some(&admin),
            Some(json!({"value": API_SECRET})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let add = |token: String, body: Value| {
        let h = &t.h;
        async move {
            h.call(
                Method::POST,
                "/api/v1/notify/sinks",
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let refused = [
        // SSRF: loopback not allowed by the file, private, link-local (metadata), unique-local.
        (sink("a", "https://[::1]:9/x"), "BlockedAddress"),
        (sink("a", "https://10.1.2.3/x"), "BlockedAddress"),
        (
            sink("a", "https://169.254.169.254/latest/meta-data"),
            "BlockedAddress",
        ),
        (sink("a", "https://[fd00::1]/x"), "BlockedAddress"),
        (sink("a", "https://192.168.1.1/x"), "BlockedAddress"),
        // Plain http (the file does not allow it).
        (sink("a", &url.replace("https", "http")), "InvalidSink"),
        // Secrets: unknown, or a path.
        (
            json!({"name": "a", "format": "webhook", "target": url, "secret": "nope"}),
            "InvalidSink",
        ),
        (
            json!({"name": "a", "format": "webhook", "target": url, "secret": "../signing.key"}),
            "InvalidSink",
        ),
        // A webhook without a secret, a bad name, a bad format, a bad event type.
        (
            json!({"name": "a", "format": "webhook", "target": url}),
            "InvalidSink",
        ),
        (sink("no spaces", &url), "InvalidSink"),
        (
            json!({"name": "a", "format": "pager", "target": url}),
            "InvalidSink",
        ),
        (
            json!({"name": "a", "format": "slack", "target": url, "events": ["request.exploded"]}),
            "InvalidSink",
        ),
        // No arbitrary file through the API, however it is spelt.
        (
            json!({"name": "a", "format": "webhook", "target": url, "secretFile": "/etc/shadow"}),
            "InvalidBody",
        ),
        // Email without an SMTP relay in the file.
        (
            json!({"name": "a", "format": "email", "target": "ops@example.com"}),
            "InvalidSink",
        ),
        // The name of the file's sink.
        (sink("filehook", &url), "SinkExists"),
        // A scope naming a VM or group that does not exist.
        (
            json!({"name": "a", "format": "webhook", "target": url, "secret": "api-key", "scope": "vm:nosuch"}),
            "VmNotFound",
        ),
    ];
    for (body, code) in refused {
        let (st, v) = add(admin.clone(), body.clone()).await;
        assert_eq!(v["error"]["code"], code, "{body}: {st} {v}");
        assert!(st.is_client_error(), "{body}: {st}");
    }
    assert_eq!(sinks(&t, &admin).await, ["filehook"]);

    // Scopes: a prod admin adds prod sinks only, never unscoped ones, and writes no secret.
    let prod = t.h.token("prodadmin", Role::Admin, "rg:prod").await;
    let web1 = t.h.token("web1admin", Role::Admin, "vm:web1").await;
    let req = t.h.token("req", Role::Requester, "*").await;
    let scoped = |name: &str, scope: &str| json!({"name": name, "format": "webhook", "target": url, "secret": "api-key", "scope": scope});
    for (token, body, code) in [
        (prod.clone(), sink("unscoped", &url), "Forbidden"),
        (prod.clone(), scoped("dev", "rg:dev"), "Forbidden"),
        (prod.clone(), scoped("db1", "vm:db1"), "Forbidden"),
        (web1.clone(), scoped("prod", "rg:prod"), "Forbidden"),
        (req.clone(), scoped("r", "rg:prod"), "Forbidden"),
    ] {
        let (st, v) = add(token, body.clone()).await;
        assert_eq!(
            (st, v["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!(code)),
            "{body}"
        );
    }
    let (st, v) =
        t.h.call(
            Method::PUT,
            "/api/v1/notify/secrets/mine",
            Some(&prod),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(!t.tmp.path().join("secrets/mine").exists());
    for (token, body) in [
        (prod.clone(), scoped("prod-ops", "rg:prod")),
        (prod.clone(), scoped("web2-ops", "vm:web2")),
        (web1.clone(), scoped("web1-ops", "vm:web1")),
    ] {
        let (st, v) = add(token, body).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    // Each admin sees (and may remove) the sinks within their scope only; others are not
    // found rather than forbidden (their names are not theirs to learn).
    assert_eq!(sinks(&t, &prod).await, ["prod-ops", "web1-ops", "web2-ops"]);
    assert_eq!(sinks(&t, &web1).await, ["web1-ops"]);
    assert_eq!(
        sinks(&t, &admin).await,
        ["filehook", "prod-ops", "web1-ops", "web2-ops"]
    );
    let (st, v) =
        t.h.call(
            Method::DELETE,
            "/api/v1/notify/sinks/prod-ops",
            Some(&web1),
            None,
        )
        .await;
    assert_eq!(v["error"]["code"], "SinkNotFound", "{st} {v}");
    let (st, v) =
        t.h.call(
            Method::DELETE,
            "/api/v1/notify/sinks/filehook",
            Some(&prod),
            None,
        )
        .await;
    assert_eq!(v["error"]["code"], "SinkNotFound", "{st} {v}");
    let (st, v) = t.h.get("/api/v1/notify/sinks", &req).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, _) = t.h.get("/api/v1/notify/status", &req).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // A bad secret body changes nothing.
    let (st, v) =
        t.h.call(
            Method::PUT,
            "/api/v1/notify/secrets/api-key",
            Some(&admin),
            Some(json!({"value": ""})),
        )
        .await;
    assert_eq!(v["error"]["code"], "InvalidSecret", "{st} {v}");
    let (st, v) =
        t.h.call(
            Method::PUT,
            "/api/v1/notify/secrets/..%2Fescape",
            Some(&admin),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(v["error"]["code"], "InvalidSecret", "{st} {v}");
    assert_eq!(
        std::fs::read(t.tmp.path().join("secrets/api-key")).unwrap(),
        API_SECRET.as_bytes()
    );
    drop(rx);
}
