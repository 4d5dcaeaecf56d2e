//! Approval workflows over real HTTPS against a real database (SQLite here; the same file runs
//! again on PostgreSQL in `cargo xtask test`): stages, counting once, self-approval, scope,
//! separation of duties, emergency, deny, cancel, timeout, racing decisions, windows that
//! start at approval, rules across VMs, policy changes while pending, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, one_port};
use jitgate_api::Role;
use jitgate_api::time::{now_ms, parse};
use jitgate_controller::state::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Port 22 of prod under a two-stage rule (2 of carl + sec-leads, then 1 of ops-managers);
/// port 3389 under an emergency-allowing one-stage rule.
fn policy() -> Value {
    json!([
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H",
         "approval": {"stages": [
             {"approvers": ["token:carl", "group:sec-leads"], "required": 2},
             {"approvers": ["group:ops-managers"], "required": 1}],
           "timeout": "PT2H"}},
        {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H",
         "approval": {"stages": [{"approvers": ["token:carl"], "required": 1}],
           "allowEmergency": true, "autoApproveUpTo": "PT30M"}}
    ])
}

struct T {
    h: Harness,
    req: String,
    ann: String,
    ben: String,
    carl: String,
    dave: String,
    mgr: String,
    outsider: String,
}

async fn setup_with(max_pending: u32) -> T {
    let h = Harness::with_config(|c| c.max_pending_per_requester = max_pending).await;
    h.fixture().await;
    h.put_rg_policy("prod", policy()).await;
    T {
        req: h
            .token_in("req", Role::Requester, "rg:prod", &["sec-leads"])
            .await,
        ann: h
            .token_in("ann", Role::Reader, "rg:prod", &["sec-leads"])
            .await,
        ben: h
            .token_in("ben", Role::Reader, "rg:prod", &["sec-leads"])
            .await,
        carl: h.token_in("carl", Role::Reader, "*", &["sec-leads"]).await,
        dave: h
            .token_in(
                "dave",
                Role::Reader,
                "rg:prod",
                &["sec-leads", "ops-managers"],
            )
            .await,
        mgr: h
            .token_in("mgr", Role::Reader, "vm:web1", &["ops-managers"])
            .await,
        outsider: h
            .token_in(
                "outsider",
                Role::Reader,
                "rg:dev",
                &["sec-leads", "ops-managers"],
            )
            .await,
        h,
    }
}

async fn setup() -> T {
    setup_with(20).await
}

fn port(n: u32, window: &str) -> Value {
    json!({"number": n, "allowedSourceAddressPrefix": "203.0.113.7", "duration": window})
}

async fn initiate(t: &T, token: &str, n: u32, window: &str) -> (StatusCode, Value) {
    t.h.initiate(token, one_port("web1", port(n, window))).await
}

async fn decide(
    t: &T,
    token: &str,
    id: &str,
    what: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    t.h.call(
        Method::POST,
        &format!("/api/v1/requests/{id}/{what}"),
        Some(token),
        body,
    )
    .await
}

async fn approve(t: &T, token: &str, id: &str) -> (StatusCode, Value) {
    decide(t, token, id, "approve", None).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("?")
}

fn port_of(v: &Value) -> &Value {
    &v["virtualMachines"][0]["ports"][0]
}

/// The request's grants (or outbox apply rows), counted in the database.
async fn count(t: &T, table: &str, request: &str) -> usize {
    t.h.count_rows(table, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stages_with_distinct_people_each_counted_once() {
    let t = setup().await;
    let (st, r) = initiate(&t, &t.req, 22, "PT10M").await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "PendingApproval", "{r}");
    assert_eq!(port_of(&r)["status"], "PendingApproval");
    assert_eq!(r["pendingApproval"][0]["stage"], 1);
    assert_eq!(r["pendingApproval"][0]["required"], 2);
    let id = r["id"].as_str().unwrap().to_string();
    let requested = now_ms();
    assert_eq!(
        count(&t, "grants", &id).await,
        0,
        "a pending request has no grant"
    );

    // Whose decision it waits for.
    let (_, w) = t.h.get("/api/v1/approvals", &t.ann).await;
    assert_eq!(w["value"][0]["id"], id.as_str(), "{w}");
    for who in [&t.mgr, &t.req, &t.h.admin] {
        let (_, w) = t.h.get("/api/v1/approvals", who).await;
        assert_eq!(w["value"].as_array().map(Vec::len), Some(0), "{w}");
    }

    // Refused, each changing nothing: the second stage's approver before the first stage
    // completes, the requester (named through a group; self-approval not allowed), an admin
    // who is not named (separation of duties), someone who cannot see the VM.
    let before = t.h.snapshot().await;
    let (st, v) = approve(&t, &t.mgr, &id).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "Forbidden"), "{v}");
    let (st, v) = approve(&t, &t.req, &id).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("self-approval"),
        "{v}"
    );
    let (st, v) = approve(&t, &t.h.admin, &id).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = approve(&t, &t.outsider, &id).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::NOT_FOUND, "RequestNotFound"),
        "{v}"
    );
    assert_eq!(t.h.snapshot().await, before);

    // Stage 1: ann, then ann again (counts once), then dave (named through a group).
    let (st, v) = approve(&t, &t.ann, &id).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "PendingApproval");
    assert_eq!(v["pendingApproval"][0]["approvedBy"], json!(["token:ann"]));
    let (st, v) = approve(&t, &t.ann, &id).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "AlreadyDecided"),
        "{v}"
    );
    // Let time pass, so that a window starting at the request would be visibly shorter.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (st, v) = approve(&t, &t.dave, &id).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["pendingApproval"][0]["stage"], 2, "{v}");
    // Stage 2: dave again (also named there, through ops-managers): once per request.
    let (st, v) = approve(&t, &t.dave, &id).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "AlreadyDecided"),
        "{v}"
    );
    let (st, v) = decide(
        &t,
        &t.mgr,
        &id,
        "approve",
        Some(json!({"reason": "change CHG-7"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "Initiated", "{v}");
    assert!(v["pendingApproval"].is_null(), "{v}");
    let approvals = v["approvals"].as_array().unwrap();
    let who: Vec<(&str, u64)> = approvals
        .iter()
        .map(|a| {
            (
                a["approver"].as_str().unwrap(),
                a["stage"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(who, [("token:ann", 1), ("token:dave", 1), ("token:mgr", 2)]);
    assert_eq!(approvals[2]["reason"], "change CHG-7");
    // The window starts at the final approval: end = approval + 10 min.
    let p = port_of(&v);
    let start = parse(p["startTimeUtc"].as_str().unwrap()).unwrap();
    let end = parse(p["endTimeUtc"].as_str().unwrap()).unwrap();
    assert_eq!(end - start, 600_000, "{p}");
    assert!(
        start >= requested + 2000,
        "the window started at the request: {p}"
    );
    assert_eq!(count(&t, "grants", &id).await, 1);
    // Decided: nothing more to decide.
    let (st, v) = approve(&t, &t.ben, &id).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "RequestNotPending"),
        "{v}"
    );

    // The activity log has every decision, and its chain verifies.
    let (_, log) = t.h.get("/api/v1/activityLog", &t.h.admin).await;
    let ops: Vec<&Value> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "Approve JIT Network Access")
        .collect();
    assert_eq!(ops.len(), 3, "{log}");
    assert_eq!(ops[2]["details"]["complete"], true, "{log}");
    assert!(
        ops.iter()
            .all(|e| e["caller"] != "" && e["callerAddress"] != ""),
        "{log}"
    );
    let (st, ver) = t.h.get("/api/v1/activityLog/verify", &t.h.admin).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ver["ok"], true, "{ver}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_cancel_timeout_and_emergency() {
    let t = setup().await;
    // Deny: a reason is required; the request ends Denied / Rejected with it.
    let (_, r) = initiate(&t, &t.req, 22, "PT10M").await;
    let id = r["id"].as_str().unwrap().to_string();
    let (st, v) = decide(&t, &t.ann, &id, "deny", None).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "InvalidRequest"),
        "{v}"
    );
    let (st, v) = decide(&t, &t.mgr, &id, "deny", Some(json!({"reason": "no"}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "not in the current stage: {v}");
    let (st, v) = decide(
        &t,
        &t.ann,
        &id,
        "deny",
        Some(json!({"reason": "not during the freeze"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "Denied");
    assert_eq!(port_of(&v)["statusReason"], "Rejected");
    assert_eq!(v["approvals"][0]["decision"], "Rejected");
    assert_eq!(v["approvals"][0]["reason"], "not during the freeze");
    let (st, v) = approve(&t, &t.ben, &id).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "RequestNotPending"),
        "{v}"
    );

    // Cancel: only the requester (or an admin); a revoke of a pending request cancels it.
    let (_, r) = initiate(&t, &t.req, 22, "PT10M").await;
    let id = r["id"].as_str().unwrap().to_string();
    let (st, _) = decide(&t, &t.ann, &id, "cancel", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = decide(&t, &t.req, &id, "cancel", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(port_of(&v)["statusReason"], "Cancelled");
    let (_, r) = initiate(&t, &t.req, 22, "PT10M").await;
    let id = r["id"].as_str().unwrap().to_string();
    let (st, v) = t.h.revoke(&t.req, &id).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(port_of(&v)["statusReason"], "Cancelled");

    // Timeout (the sweep, driven with an explicit clock past the PT2H timeout).
    let (_, r) = initiate(&t, &t.req, 22, "PT10M").await;
    let id = r["id"].as_str().unwrap().to_string();
    let deadline = parse(r["approvalDeadlineUtc"].as_str().unwrap()).unwrap();
    assert!((deadline - now_ms() - 7_200_000).abs() < 60_000, "{r}");
    let (_, timed_out) =
        t.h.app()
            .lifecycle
            .expire_due(now_ms() + 3 * 3600 * 1000)
            .await
            .unwrap();
    assert_eq!(timed_out, 1);
    let (_, v) = t.h.get(&format!("/api/v1/requests/{id}"), &t.req).await;
    assert_eq!(port_of(&v)["statusReason"], "ApprovalTimedOut", "{v}");
    assert_eq!(v["approvals"][0]["decision"], "TimedOut");

    // Emergency: not where a rule forbids it; an admin only; a reason required; flagged.
    let (_, r) = initiate(&t, &t.req, 22, "PT10M").await;
    let id22 = r["id"].as_str().unwrap().to_string();
    let em = |reason: Option<&str>| Some(json!({"emergency": true, "reason": reason}));
    let (st, v) = decide(&t, &t.h.admin, &id22, "approve", em(Some("outage"))).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (_, r) = initiate(&t, &t.req, 3389, "PT1H").await;
    assert_eq!(
        r["status"], "PendingApproval",
        "PT1H is above autoApproveUpTo: {r}"
    );
    let id = r["id"].as_str().unwrap().to_string();
    let (st, v) = decide(&t, &t.carl, &id, "approve", em(Some("outage"))).await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a reader's emergency approval: {v}"
    );
    let (st, v) = decide(
        &t,
        &t.h.admin,
        &id,
        "approve",
        Some(json!({"emergency": true})),
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "InvalidRequest"),
        "{v}"
    );
    let (st, v) = decide(&t, &t.h.admin, &id, "approve", em(Some("INC-9 outage"))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "Initiated");
    assert_eq!(v["emergency"], true);
    assert_eq!(v["approvals"][0]["emergency"], true);
    // The report shows every decision, filterable, and as formula-safe CSV.
    let (st, rep) =
        t.h.get(
            "/api/v1/approvals?history=true&approver=token:ann",
            &t.h.admin,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{rep}");
    assert_eq!(rep["value"].as_array().unwrap().len(), 1, "{rep}");
    assert_eq!(rep["value"][0]["decision"], "Rejected");
    let (_, rep) = t.h.get("/api/v1/approvals?history=true", &t.h.admin).await;
    let decisions: Vec<&str> = rep["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        ["Approved", "TimedOut", "Cancelled", "Cancelled", "Rejected"]
    );
    assert_eq!(rep["value"][0]["emergency"], true);
    let csv =
        t.h.client
            .get(format!(
                "{}/api/v1/approvals?history=true&format=csv",
                t.h.base
            ))
            .bearer_auth(&t.h.admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(csv.starts_with("timeUtc,requestId,requestor,"), "{csv}");
    assert_eq!(csv.lines().count(), 6, "{csv}");
    // Readers limited to one group see that group's report only.
    let (st, _) = t.h.get("/api/v1/approvals?history=true", &t.ann).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) =
        t.h.get("/api/v1/approvals?history=true&resourceGroup=prod", &t.ann)
            .await;
    assert_eq!(st, StatusCode::OK);
    let (_, log) = t.h.get("/api/v1/activityLog", &t.h.admin).await;
    let ops: Vec<&str> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["operation"].as_str().unwrap_or(""))
        .collect();
    for op in [
        "Deny JIT Network Access",
        "Cancel JIT Network Access",
        "Approval Timed Out JIT Network Access",
        "Approve JIT Network Access",
    ] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    let (_, ver) = t.h.get("/api/v1/activityLog/verify", &t.h.admin).await;
    assert_eq!(ver["ok"], true, "{ver}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_approval_rules_across_vms_and_policy_changes() {
    let t = setup_with(3).await;
    // Up to autoApproveUpTo: approved by policy; beyond it: pending.
    let (_, r) = initiate(&t, &t.req, 3389, "PT20M").await;
    assert_eq!(r["status"], "Initiated", "{r}");
    let (_, r) = initiate(&t, &t.req, 3389, "PT40M").await;
    assert_eq!(r["status"], "PendingApproval", "{r}");
    // A request touching both ports: the one without auto-approval decides.
    let body = json!({"virtualMachines": [{"id": "web1", "ports": [port(22, "PT10M"), port(3389, "PT10M")]}],
                      "justification": "both"});
    let (_, r) = t.h.initiate(&t.req, body).await;
    assert_eq!(r["status"], "PendingApproval", "{r}");
    assert_eq!(
        r["pendingApproval"].as_array().unwrap().len(),
        2,
        "two rules: {r}"
    );
    let both = r["id"].as_str().unwrap().to_string();
    // carl's approval counts for one rule only (once per request), so the other still waits.
    let (_, v) = approve(&t, &t.carl, &both).await;
    assert_eq!(v["status"], "PendingApproval", "{v}");
    // The requester's limit of pending requests (3 here).
    let (_, r) = initiate(&t, &t.req, 22, "PT10M").await;
    let weakened = r["id"].as_str().unwrap().to_string();
    let before = t.h.snapshot().await;
    let (st, v) = initiate(&t, &t.req, 22, "PT10M").await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "TooManyPending"),
        "{v}"
    );
    assert_eq!(t.h.snapshot().await, before);

    // A policy weakened while pending does not weaken the request.
    t.h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"},
               {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let (_, v) =
        t.h.get(&format!("/api/v1/requests/{weakened}"), &t.req)
            .await;
    assert_eq!(v["status"], "PendingApproval");
    assert_eq!(v["pendingApproval"][0]["required"], 2, "{v}");
    let (_, v) = approve(&t, &t.mgr, &weakened).await;
    assert_eq!(v["error"]["code"], "Forbidden", "{v}");

    // Tightened: at the final approval the policy of that moment decides (a policy denial).
    t.h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "198.51.100.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    for who in [&t.ann, &t.ben] {
        let (st, v) = approve(&t, who, &weakened).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (st, v) = approve(&t, &t.mgr, &weakened).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "Denied", "{v}");
    assert_eq!(v["denialReasons"][0]["reason"], "SourceNotAllowed", "{v}");
    assert_eq!(count(&t, "grants", &weakened).await, 0);

    // Two VMs under different rules: both rules' approvers are needed.
    t.h.put_rg_policy("prod", policy()).await;
    t.h.put_vm_policy(
        "db1",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT1H",
                "approval": {"stages": [{"approvers": ["token:dbadmin"], "required": 1}]}}]),
    )
    .await;
    let dbadmin = t.h.token("dbadmin", Role::Reader, "*").await;
    let wide = t.h.token("wide", Role::Requester, "*").await;
    let body = json!({"virtualMachines": [
        {"id": "web1", "ports": [port(3389, "PT40M")]},
        {"id": "db1", "ports": [port(22, "PT40M")]}], "justification": "migration"});
    let (_, r) = t.h.initiate(&wide, body).await;
    assert_eq!(r["status"], "PendingApproval", "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    // carl may not approve: his scope is * but... he is named only in web1's rule; he
    // counts for it, and db1's rule still waits.
    let (st, v) = approve(&t, &t.carl, &id).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "PendingApproval");
    // mgr (vm:web1 only) cannot see db1: refused even where named.
    let (st, v) = approve(&t, &dbadmin, &id).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "Initiated", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_decisions_have_exactly_one_outcome() {
    let t = std::sync::Arc::new(setup().await);
    for round in 0..6 {
        // approve (completing: 3389's rule needs one, carl), deny, cancel and the timeout
        // sweep, all at once.
        let (_, r) = initiate(&t, &t.req, 3389, "PT1H").await;
        let id = r["id"].as_str().unwrap().to_string();
        let (a, d, c, s) = tokio::join!(
            approve(&t, &t.carl, &id),
            decide(&t, &t.carl, &id, "deny", Some(json!({"reason": "race"}))),
            decide(&t, &t.req, &id, "cancel", None),
            t.h.app().lifecycle.expire_due(now_ms() + 24 * 3600 * 1000),
        );
        let winners = [&a, &d, &c]
            .iter()
            .filter(|x| x.0 == StatusCode::OK)
            .count()
            + usize::from(s.unwrap().1 == 1);
        assert_eq!(winners, 1, "round {round}: {a:?} {d:?} {c:?}");
        for x in [&a, &d, &c] {
            assert!(
                x.0 == StatusCode::OK || code(&x.1) == "RequestNotPending",
                "round {round}: {x:?}"
            );
        }
        let (_, v) = t.h.get(&format!("/api/v1/requests/{id}"), &t.h.admin).await;
        assert_eq!(v["approvals"].as_array().unwrap().len(), 1, "{v}");
        // Approved (then possibly expired by the same sweep, whose clock is a day ahead).
        let granted = v["approvals"][0]["decision"] == "Approved";
        assert_eq!(count(&t, "grants", &id).await, usize::from(granted), "{v}");
    }
    // required = 3, three concurrent approvals: completes exactly once.
    t.h.put_vm_policy(
        "web2",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT1H",
                "approval": {"stages": [{"approvers": ["group:sec-leads"], "required": 3}]}}]),
    )
    .await;
    for round in 0..6 {
        let (_, r) =
            t.h.initiate(&t.req, one_port("web2", port(22, "PT10M")))
                .await;
        assert_eq!(r["status"], "PendingApproval", "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        let (a, b, c) = tokio::join!(
            approve(&t, &t.ann, &id),
            approve(&t, &t.ben, &id),
            approve(&t, &t.dave, &id)
        );
        assert!(
            [&a, &b, &c].iter().all(|x| x.0 == StatusCode::OK),
            "round {round}"
        );
        let done = [&a, &b, &c]
            .iter()
            .filter(|x| x.1["status"] == "Initiated")
            .count();
        assert_eq!(done, 1, "round {round}: exactly one approval completes it");
        assert_eq!(count(&t, "grants", &id).await, 1, "round {round}");
        assert_eq!(count(&t, "grant_outbox", &id).await, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let t = setup().await;
    let before = t.h.snapshot().await;
    let rule = |approval: Value| {
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT1H", "approval": approval}])
    };
    for (approval, want) in [
        (
            json!({"stages": [{"approvers": ["alice"], "required": 1}]}),
            "InvalidPolicy",
        ),
        (
            json!({"stages": [{"approvers": ["link:x"], "required": 1}]}),
            "InvalidPolicy",
        ),
        (
            json!({"stages": [{"approvers": ["token:a"], "required": 0}]}),
            "InvalidPolicy",
        ),
        (json!({"stages": []}), "InvalidPolicy"),
        (
            json!({"stages": [{"approvers": ["token:a"], "required": 1}], "timeout": "P8D"}),
            "InvalidDuration",
        ),
        (
            json!({"stages": [{"approvers": ["token:a"], "required": 1}], "autoApproveUpTo": "PT0S"}),
            "InvalidDuration",
        ),
        (
            json!({"stages": [{"approvers": ["token:a"], "required": 1}], "approverz": 1}),
            "InvalidBody",
        ),
    ] {
        let (st, v) =
            t.h.call(
                Method::PUT,
                "/api/v1/resourceGroups/prod/jitNetworkAccessPolicies/default",
                Some(&t.h.admin),
                Some(json!({"ports": rule(approval.clone())})),
            )
            .await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, want),
            "{approval}: {v}"
        );
    }
    // Starts in the past or too far ahead.
    for start in [
        "2020-01-01T00:00:00Z",
        &jitgate_api::time::format(now_ms() + 8 * 86_400_000),
    ] {
        let mut p = port(22, "PT10M");
        p["startTimeUtc"] = json!(start);
        let (st, v) = t.h.initiate(&t.req, one_port("web1", p)).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, "InvalidTime"),
            "{v}"
        );
    }
    // Decisions: unknown fields, a request that does not exist.
    let (st, v) = decide(&t, &t.ann, "nope", "approve", Some(json!({"reasn": "x"}))).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "InvalidBody"),
        "{v}"
    );
    let (st, v) = approve(&t, &t.ann, "00000000-0000-0000-0000-000000000000").await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::NOT_FOUND, "RequestNotFound"),
        "{v}"
    );
    let (st, v) = t.h.get("/api/v1/approvals?vm=web1", &t.ann).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "InvalidQuery"),
        "{v}"
    );
    assert_eq!(t.h.snapshot().await, before);
    // A booked start needs an agent that understands it (none here speaks level 2).
    let mut p = port(22, "PT10M");
    p["startTimeUtc"] = json!(jitgate_api::time::format(now_ms() + 3_600_000));
    let (st, v) = t.h.initiate(&t.req, one_port("web1", p)).await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "AgentTooOld"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("web1"),
        "{v}"
    );
    assert_eq!(t.h.snapshot().await, before);
}

/// The booking horizon is `max_booking_ahead` (controller.toml, default and at most P7D).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_booking_horizon_is_configurable() {
    let h = Harness::with_config(|c| c.max_booking_ahead = Some("PT2H".into())).await;
    h.fixture().await;
    h.put_rg_policy("prod", policy()).await;
    let req = h.token("req", Role::Requester, "rg:prod").await;
    let at = |ms: i64| {
        let mut p = port(3389, "PT10M");
        p["startTimeUtc"] = json!(jitgate_api::time::format(now_ms() + ms));
        one_port("web1", p)
    };
    let (st, v) = h.initiate(&req, at(3 * 3_600_000)).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "InvalidTime"),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("PT2H"),
        "{v}"
    );
    // Within the horizon it is the agent's level that decides (none here speaks level 2).
    let (st, v) = h.initiate(&req, at(3_600_000)).await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "AgentTooOld"), "{v}");
    let bad = Config {
        max_booking_ahead: Some("P8D".into()),
        ..Config::default()
    };
    assert!(bad.booking_horizon_ms().unwrap_err().contains("PT1M..P7D"));
}
