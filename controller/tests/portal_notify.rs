//! The portal's Notifications page over real HTTPS, people signed in through the real
//! OpenID provider, sinks delivering to real HTTPS receivers on loopback: a webhook sink of
//! controller.toml whose receiver answers 503 with a hostile body (and a Retry-After past
//! the give-up window, so each delivery is dead at once) and a Slack sink added through the
//! API with a credential in its URL. The sinks and their state as the API gives it, the dead
//! deliveries newest first with their request, a failure detail with hostile text shown cut
//! and as text, Retry, Discard and Send a test through forms (with their activity entries),
//! CSRF and Origin refusals that change nothing, a requester refused, and no secret or URL
//! credential anywhere in the pages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/portal_client.rs"]
mod portal_client;
#[path = "../../notify/tests/common/mod.rs"]
mod receivers;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use std::time::Duration;

use common::lab::HOSTILE;
use jitgate_api::Role;
use jitgate_controller::state::Config;
use jitgate_notify::{SecretName, SecretStore};
use portal_client::{Page, Portal};
use receivers::{Answer, Pki, Receiver};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The webhook sink's signing secret: never in a page.
const SECRET: &str = "hook-signing-secret-NEVER-SHOWN-4711";
/// The path of the Slack sink's URL (a credential, as Slack's are): never in a page.
const URL_SECRET: &str = "T0SECRET/B0SECRET/URLCREDENTIAL42";
/// What the failing receiver answers with: never kept, never shown.
const BODY_MARK: &str = "REMOTE-BODY-MARK";

/// A 503 whose Retry-After lies past the give-up window (60 s): dead after one attempt.
fn failing() -> Answer {
    Answer::WithBody(
        503,
        "retry-after",
        "3600".into(),
        format!("{BODY_MARK} {HOSTILE} <form action=//evil.example><button>Approve</button>"),
    )
}

/// The API's status of sink `name` (as the admin token sees it).
async fn status(p: &Portal, name: &str) -> Value {
    let v: Value = serde_json::from_str(&p.api_text("/api/v1/notify/status").await).unwrap();
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sink {name}: {v}"))
        .clone()
}

/// Waits until the sink's status satisfies `f` (at most 30 s).
async fn wait_status(p: &Portal, name: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut s = Value::Null;
    for _ in 0..300 {
        s = status(p, name).await;
        if f(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sink {name} never reached the state: {s}");
}

/// Activity entries about notification sinks with `operation`.
async fn entries(p: &Portal, operation: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(
        &p.api_text("/api/v1/activityLog?resourceType=NotificationSink")
            .await,
    )
    .unwrap();
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == operation)
        .cloned()
        .collect()
}

/// The event seqs of the dead deliveries a sink page lists, in order.
fn dead_rows(body: &str) -> Vec<i64> {
    body.split("<tr id=\"dead-")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect()
}

/// The table row of sink `name` on the overview.
fn sink_row(body: &str, name: &str) -> String {
    let at = body
        .find(&format!("<tr id=\"sink-{name}\""))
        .unwrap_or_else(|| panic!("no row for {name}: {body}"));
    body[at..at + body[at..].find("</tr>").unwrap()].to_string()
}

/// No secret, URL credential or remote body in a page.
fn nothing_secret(page: &Page) {
    for s in [SECRET, URL_SECRET, "URLCREDENTIAL", BODY_MARK] {
        assert!(!page.body.contains(s), "{s:?} shown: {}", page.body);
    }
}

/// Initiates a request that prod's policy denies (port 3389 is not in it): one
/// `request.denied` event, with a hostile justification. Its id.
async fn denied(p: &Portal, token: &str) -> String {
    let (st, v) = p
        .h
        .initiate(
            token,
            json!({"virtualMachines": [{"id": "web1", "ports": [
                {"number": 3389, "allowedSourceAddressPrefix": "203.0.113.9", "duration": "PT10M"}]}],
                "justification": HOSTILE}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_page() {
    let pki = Pki::new("portal notify CA");
    let hook = Receiver::https(&pki, "127.0.0.1").await;
    hook.answer(failing());
    let chat = Receiver::https(&pki, "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ca.pem"), &pki.ca_pem).unwrap();
    SecretStore::open(tmp.path().join("secrets"))
        .unwrap()
        .put(
            &"hook-key".parse::<SecretName>().unwrap(),
            SECRET.as_bytes(),
        )
        .unwrap();
    let text = format!(
        r#"
[notify]
secrets_dir = "{secrets}"
allow_networks = ["127.0.0.1/32"]
ca_files = ["{ca}"]
system_roots = false
timeout_seconds = 3
retry_initial_seconds = 1
retry_max_interval_seconds = 2
give_up_after_seconds = 60

[[notify.sinks]]
name = "hook"
format = "webhook"
target = "{url}"
secret = "hook-key"
events = ["request.denied"]
"#,
        secrets = tmp.path().join("secrets").display(),
        ca = tmp.path().join("ca.pem").display(),
        url = hook.url("https", "127.0.0.1"),
    );
    let parsed: Config = toml::from_str(&text).unwrap();
    let p = Portal::start_with(|c| c.notify = parsed.notify).await;
    p.h.fixture().await;
    p.h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    // A Slack sink made through the API: its URL's path is a credential.
    let (st, v) =
        p.h.call(
            Method::POST,
            "/api/v1/notify/sinks",
            Some(&p.h.admin),
            Some(json!({"name": "chat", "format": "slack",
                "target": format!("https://127.0.0.1:{}/services/{URL_SECRET}", chat.addr.port()),
                "events": ["request.approved"], "scope": "rg:prod"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let req = p.h.token("req", Role::Requester, "rg:prod").await;

    // Three denials: three deliveries to the hook, each dead after its one attempt.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(denied(&p, &req).await);
    }
    let s = wait_status(&p, "hook", |s| s["dead"] == 3).await;
    assert_eq!(s["lastFailure"]["kind"], "http-5xx", "{s}");
    assert_eq!(hook.received().len(), 3, "one attempt each");

    let alice = p.sign_in("alice").await; // admin on *
    let bob = p.sign_in("bob").await; // requester on rg:prod, reader on rg:dev

    // The overview: both sinks, their kind, target (redacted), events, where declared,
    // their state as the API gives it.
    let page = p.get(&alice, "/notifications").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains("<a href=\"/notifications\" aria-current=\"page\">Notifications</a>"),
        "{}",
        page.body
    );
    nothing_secret(&page);
    let h = sink_row(&page.body, "hook");
    for want in [
        ">hook</a>",
        "webhook (signed JSON)",
        "request.denied; scope every VM",
        "<td>controller.toml</td>",
        "<td class=\"queued\">0 (0)</td>",
        "<td class=\"dead error\">3</td>",
        "http-5xx (5xx): HTTP 503",
        "none among the latest deliveries",
        "nothing waiting",
        "3 dead: see, retry or discard",
    ] {
        assert!(h.contains(want), "{want:?} in {h}");
    }
    let c = sink_row(&page.body, "chat");
    for want in [
        "<td>Slack</td>",
        &format!("https://127.0.0.1:{}/", chat.addr.port()),
        "request.approved; scope rg:prod",
        "the API, by token:admin",
        "<td class=\"dead\">0</td>",
    ] {
        assert!(c.contains(want), "{want:?} in {c}");
    }

    // A failure detail carrying a remote server's words (a TLS or DNS error can): cut
    // and shown as text.
    let long = format!("{HOSTILE} {}", "x".repeat(3000));
    let newest: i64 = {
        use sqlx::Row;
        let pool = p.h.app().db.pool().clone();
        let row = sqlx::query("SELECT MAX(event_seq) FROM notify_deliveries WHERE sink = 'hook'")
            .fetch_one(&pool)
            .await
            .unwrap();
        let newest: i64 = row.get(0);
        sqlx::query(
            "UPDATE notify_deliveries SET last_detail = $1 WHERE sink = 'hook' AND event_seq = $2",
        )
        .bind(&long)
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();
        newest
    };

    // The sink's page: its dead deliveries, newest first, each with its request.
    let page = p.get(&alice, "/notifications/hook").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    nothing_secret(&page);
    let rows = dead_rows(&page.body);
    assert_eq!(rows.len(), 3, "{}", page.body);
    assert_eq!(rows[0], newest);
    assert!(rows.windows(2).all(|w| w[0] > w[1]), "{rows:?}");
    for id in &ids {
        assert!(
            page.body
                .contains(&format!("<a href=\"/requests/{id}\">request {id}</a>")),
            "request {id} in {}",
            page.body
        );
    }
    assert!(page.body.contains("<td id=\"dead\" class=\"error\">3</td>"));
    assert!(
        page.body
            .contains("Signed with the secret named</dt><dd>hook-key")
    );
    // Hostile text is inert and cut: no markup from it, no 3 000 characters.
    assert!(
        !page.body.contains("<script>alert") && !page.body.contains("<img src=x"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("&#60;img src=x onerror=alert(2)&#62;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&"x".repeat(300)));
    assert!(page.body.contains("x…"), "{}", page.body);
    // The bidi override of the hostile text does not reach the page (U+FFFD instead).
    assert!(!page.body.contains('\u{202e}'), "{}", page.body);
    assert!(page.body.contains("alert(3) \u{FFFD}cba"), "{}", page.body);
    // Keyset: the page after the newest shows the other two.
    let older = p
        .get(&alice, &format!("/notifications/hook?before={newest}"))
        .await;
    assert_eq!(dead_rows(&older.body), rows[1..].to_vec());
    let bad = p.get(&alice, "/notifications/hook?before=-1").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let none = p.get(&alice, "/notifications/nope").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.body);

    // A requester sees no Notifications entry, no page, and may not post.
    let jit = p.get(&bob, "/jit").await;
    assert_eq!(jit.status, StatusCode::OK);
    assert!(
        !jit.body.contains("href=\"/notifications\""),
        "{}",
        jit.body
    );
    assert!(
        p.get(&alice, "/jit")
            .await
            .body
            .contains("href=\"/notifications\"")
    );
    for path in ["/notifications", "/notifications/hook"] {
        let r = p.get(&bob, path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert!(!r.body.contains("hook-key") && !r.body.contains("dead-"));
    }
    let bob_csrf = jit.csrf();
    for action in ["retry", "discard", "test"] {
        let r = p
            .post(
                &bob,
                &format!("/notifications/hook/{action}"),
                &p.public,
                &[("csrf", &bob_csrf)],
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{action}: {}", r.body);
    }
    // Without the CSRF token, or from another origin: refused, nothing changed.
    let csrf = page.csrf();
    let r = p
        .post(&alice, "/notifications/hook/retry", &p.public, &[])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("CSRF"), "{}", r.body);
    let r = p
        .post(
            &alice,
            "/notifications/hook/discard",
            &p.public,
            &[("csrf", "0".repeat(64).as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = p
        .post(
            &alice,
            "/notifications/hook/retry",
            "https://evil.example",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("Origin"), "{}", r.body);
    assert_eq!(status(&p, "hook").await["dead"], 3);
    assert_eq!(hook.received().len(), 3, "no test was sent");
    assert!(
        entries(&p, "Retry Notification Deliveries")
            .await
            .is_empty()
    );
    assert!(
        entries(&p, "Discard Dead Notification Deliveries")
            .await
            .is_empty()
    );

    // Retry: the receiver is fixed; the three are queued again (none dead at once) and
    // arrive; one activity entry names the sink and the count.
    hook.answer(Answer::Status(204));
    let r = p
        .post(
            &alice,
            "/notifications/hook/retry",
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("3 deliveries queued again"), "{}", r.body);
    nothing_secret(&r);
    let s = status(&p, "hook").await;
    assert_eq!(s["dead"], 0, "{s}");
    assert_eq!(
        s["queued"].as_i64().unwrap()
            + s["retrying"].as_i64().unwrap()
            + s["delivered"].as_i64().unwrap(),
        3,
        "{s}"
    );
    let s = wait_status(&p, "hook", |s| s["delivered"] == 3).await;
    assert!(s["lastDeliveredUtc"].is_string(), "{s}");
    let e = entries(&p, "Retry Notification Deliveries").await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["details"]["deliveries"], 3, "{e:?}");
    assert_eq!(e[0]["details"]["sinks"], json!(["hook"]), "{e:?}");
    assert_ne!(e[0]["caller"], "token:admin", "{e:?}");
    let page = p.get(&alice, "/notifications/hook").await;
    assert!(dead_rows(&page.body).is_empty());
    assert!(page.body.contains("No dead delivery for this sink."));
    assert!(
        page.body.contains("<td id=\"delivered\">3</td>"),
        "{}",
        page.body
    );
    let last =
        jitgate_controller::http::portal::page::when_utc(s["lastDeliveredUtc"].as_str().unwrap());
    assert!(
        page.body
            .contains(&format!("Last delivered</th><td>{last}</td>")),
        "{}",
        page.body
    );

    // Discard: two more go dead and are given up on; the delivered ones stay.
    hook.answer(failing());
    denied(&p, &req).await;
    denied(&p, &req).await;
    wait_status(&p, "hook", |s| s["dead"] == 2).await;
    let r = p
        .post(
            &alice,
            "/notifications/hook/discard",
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body
            .contains("2 dead deliveries discarded: they will not be sent."),
        "{}",
        r.body
    );
    assert!(dead_rows(&r.body).is_empty(), "{}", r.body);
    let s = status(&p, "hook").await;
    assert_eq!(
        (s["dead"].clone(), s["delivered"].clone()),
        (json!(0), json!(3)),
        "{s}"
    );
    let e = entries(&p, "Discard Dead Notification Deliveries").await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["details"]["deliveries"], 2, "{e:?}");
    let r = p
        .post(
            &alice,
            "/notifications/hook/discard",
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert!(r.body.contains("No dead delivery to discard"), "{}", r.body);

    // Send a test: through to Slack; refused by the failing webhook, in words.
    let r = p
        .post(
            &alice,
            "/notifications/chat/test",
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(
            "Test delivered: an example request.approved event reached the sink (answer 2xx)."
        ),
        "{}",
        r.body
    );
    assert_eq!(chat.received().len(), 1);
    assert!(chat.received()[0].path.ends_with("URLCREDENTIAL42"));
    nothing_secret(&r);
    let before = hook.received().len();
    let r = p
        .post(
            &alice,
            "/notifications/hook/test",
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(
            "Test not delivered: the example request.denied event failed with http-5xx (5xx): HTTP 503."
        ),
        "{}",
        r.body
    );
    assert_eq!(hook.received().len(), before + 1);
    nothing_secret(&r);
}
