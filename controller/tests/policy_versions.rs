//! Policy versions over real HTTPS (SQLite, or PostgreSQL with `JIT_TEST_BACKEND=postgres`):
//! `GET` and `PUT` give the stored policy's `ETag`; a `PUT` or `DELETE` with `If-Match` of a
//! version no longer stored changes nothing and answers 412 `PolicyChanged`; `If-Match: *`
//! needs a policy, `If-None-Match: *` none; malformed preconditions are refused before
//! anything is read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const GROUP: &str = "/api/v1/resourceGroups/prod/jitNetworkAccessPolicies/default";
const VM: &str = "/api/v1/virtualMachines/web1/jitNetworkAccessPolicies/default";

/// A policy of one port whose longest access is `max`.
fn body(max: &str) -> Value {
    json!({"ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": max}
    ]})
}

/// A call with extra headers: its status, `ETag` and body.
async fn call(
    h: &Harness,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut rb = h
        .client
        .request(method, format!("{}{path}", h.base))
        .bearer_auth(&h.admin);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("send");
    let status = r.status();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().expect("ascii").to_string());
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, etag, v)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_against_a_stale_version_change_nothing() {
    let h = Harness::new().await;
    h.fixture().await;

    // Create only: succeeds once, then refused.
    let (st, e1, v) = call(
        &h,
        Method::PUT,
        GROUP,
        &[("if-none-match", "*")],
        Some(body("PT1H")),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let e1 = e1.expect("PUT gives an ETag");
    assert!(
        e1.starts_with('"') && e1.ends_with('"') && e1.len() > 2,
        "{e1}"
    );
    let (st, _, v) = call(
        &h,
        Method::PUT,
        GROUP,
        &[("if-none-match", "*")],
        Some(body("PT2H")),
    )
    .await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_eq!(code(&v), "PolicyChanged");

    // GET gives the same tag as the PUT that wrote it.
    let (st, g1, v) = call(&h, Method::GET, GROUP, &[], None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(g1.as_deref(), Some(e1.as_str()));
    assert_eq!(v["ports"][0]["maxRequestAccessDuration"], "PT1H");

    // Two editors read version 1; the first writes, the second is refused.
    let (st, e2, _) = call(
        &h,
        Method::PUT,
        GROUP,
        &[("if-match", &e1)],
        Some(body("PT2H")),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let e2 = e2.expect("etag");
    assert_ne!(e2, e1, "a write changes the version");
    let before = h.snapshot().await;
    let (st, _, v) = call(
        &h,
        Method::PUT,
        GROUP,
        &[("if-match", &e1)],
        Some(body("PT3H")),
    )
    .await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_eq!(code(&v), "PolicyChanged");
    let (st, _, v) = call(&h, Method::DELETE, GROUP, &[("if-match", &e1)], None).await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_eq!(h.snapshot().await, before, "a refused write wrote nothing");
    let (_, _, v) = call(&h, Method::GET, GROUP, &[], None).await;
    assert_eq!(v["ports"][0]["maxRequestAccessDuration"], "PT2H");

    // Malformed preconditions: 400, nothing written.
    for hdrs in [
        &[("if-match", "PT2H")][..],
        &[("if-match", "W/\"abc\"")],
        &[("if-match", "\"a\", \"b\"")],
        &[("if-match", "*"), ("if-none-match", "*")],
        &[("if-none-match", "\"abc\"")],
    ] {
        let (st, _, v) = call(&h, Method::PUT, GROUP, hdrs, Some(body("PT4H"))).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{hdrs:?}: {v}");
        assert_eq!(code(&v), "InvalidRequest", "{hdrs:?}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("If-")),
            "{v}"
        );
    }
    let (st, _, _) = call(&h, Method::DELETE, GROUP, &[("if-none-match", "*")], None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.snapshot().await,
        before,
        "malformed preconditions wrote nothing"
    );

    // `If-Match: *` needs a policy: web1 has none of its own.
    let (st, _, v) = call(
        &h,
        Method::PUT,
        VM,
        &[("if-match", "*")],
        Some(body("PT1H")),
    )
    .await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED, "{v}");
    let (st, _, _) = call(&h, Method::DELETE, VM, &[("if-match", "*")], None).await;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);

    // The current version deletes; the policy is gone.
    let (st, _, v) = call(&h, Method::DELETE, GROUP, &[("if-match", &e2)], None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (st, _, v) = call(&h, Method::GET, GROUP, &[], None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(code(&v), "PolicyNotFound");
    // Without a precondition, writes behave as before.
    let (st, _, _) = call(&h, Method::PUT, GROUP, &[], Some(body("PT1H"))).await;
    assert_eq!(st, StatusCode::OK);
}
