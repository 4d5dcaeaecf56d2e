//! Policies as code against a real controller (SQLite here; PostgreSQL with
//! JIT_TEST_BACKEND=postgres): `POST /apply` creates, is idempotent, changes nothing on a dry
//! run, shows each changed field before and after, deletes only with prune and only within
//! the caller's scope, refuses a plan with one forbidden item whole; `GET /export` round-trips
//! and never carries a sink's URL or a secret. (`jit` itself: cli/tests/apply.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../notify/tests/common/mod.rs"]
mod receivers;

use common::notify::Rig;
use jitgate_api::Role;
use receivers::Pki;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

/// A webhook URL whose path is a credential (as Slack's and Teams' are).
const HOOK: &str = "https://127.0.0.1:9/services/T0KEN-IN-THE-PATH";

async fn rig() -> Rig {
    let pki = Pki::new("apply test CA");
    Rig::start(
        &pki.ca_pem,
        &[("hook-key", b"the-signing-secret-value")],
        "",
    )
    .await
}

/// The fixture (prod: web1, web2; dev: db1) declared, with policies, an assignment and a
/// sink.
fn document() -> Value {
    json!({
        "resource_groups": [
            {"name": "prod", "owner": "prod-team@example.com"},
            {"name": "dev", "owner": "dev-team@example.com"},
            {"name": "edge", "owner": "edge@example.com"}
        ],
        "vms": [
            {"name": "web1", "resource_group": "prod", "addresses": ["192.0.2.11"]},
            {"name": "web2", "resource_group": "prod", "addresses": ["192.0.2.12"]},
            {"name": "db1", "resource_group": "dev", "addresses": ["2001:db8:99::1"]},
            {"name": "edge1", "resource_group": "edge", "addresses": ["192.0.2.21"]}
        ],
        "policies": [
            {"resource_group": "prod", "ports": [
                {"number": 22, "protocol": "TCP", "allowed_source_address_prefix": "203.0.113.0/24",
                 "max_request_access_duration": "PT1H",
                 "approval": {"stages": [{"approvers": ["group:oncall"], "required": 1}]}}
            ]},
            {"vm": "db1", "ports": [
                {"number": 5432, "protocol": "TCP", "allowed_source_address_prefixes": ["198.51.100.0/24"],
                 "max_request_access_duration": "PT30M", "on_expiry": "cut"}
            ]}
        ],
        "compliance_assignments": [{"scope": "rg:prod"}],
        "sinks": [
            {"name": "ops", "format": "webhook", "target": HOOK, "secret": "hook-key",
             "events": ["request.approved"], "scope": "rg:prod"}
        ]
    })
}

async fn apply(
    r: &Rig,
    token: &str,
    doc: &Value,
    dry_run: bool,
    prune: bool,
) -> (StatusCode, Value) {
    r.h.call(
        Method::POST,
        "/api/v1/apply",
        Some(token),
        Some(json!({"document": doc, "dryRun": dry_run, "prune": prune})),
    )
    .await
}

async fn applied(r: &Rig, token: &str, doc: &Value, prune: bool) -> Value {
    let (st, plan) = apply(r, token, doc, false, prune).await;
    assert_eq!(st, StatusCode::OK, "{plan}");
    plan
}

/// (action, kind, name) of each planned change, in plan order.
fn changes(plan: &Value) -> Vec<(String, String, String)> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
                c["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has(plan: &Value, action: &str, kind: &str, name: &str) -> bool {
    changes(plan).contains(&(action.into(), kind.into(), name.into()))
}

/// The activity log's (operation, caller) pairs after `seq`.
async fn activity_after(r: &Rig, seq: i64) -> Vec<(String, String)> {
    sqlx::query("SELECT operation, caller FROM activity WHERE seq > $1 ORDER BY seq")
        .bind(seq)
        .fetch_all(r.h.app().db.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<String, _>(0), row.get::<String, _>(1)))
        .collect()
}

async fn head(r: &Rig) -> i64 {
    sqlx::query("SELECT value FROM counters WHERE name = 'chain'")
        .fetch_one(r.h.app().db.pool())
        .await
        .unwrap()
        .get::<i64, _>(0)
}

async fn export(r: &Rig, token: &str) -> Value {
    let (st, doc) = r.h.get("/api/v1/export", token).await;
    assert_eq!(st, StatusCode::OK, "{doc}");
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_plans_applies_once_and_a_dry_run_changes_nothing() {
    let r = rig().await;
    let admin = r.h.admin.clone();
    let doc = document();

    // A dry run: the whole plan, nothing written (every table, the chain head).
    let before = r.h.snapshot().await;
    let (st, plan) = apply(&r, &admin, &doc, true, false).await;
    assert_eq!(st, StatusCode::OK, "{plan}");
    assert_eq!(plan["applied"], false);
    assert!(has(&plan, "create", "resourceGroup", "edge"), "{plan}");
    assert!(has(&plan, "create", "virtualMachine", "edge1"), "{plan}");
    assert!(has(&plan, "create", "policy", "rg:prod"), "{plan}");
    assert!(has(&plan, "create", "policy", "vm:db1"), "{plan}");
    assert!(
        has(&plan, "create", "complianceAssignment", "rg:prod"),
        "{plan}"
    );
    assert!(has(&plan, "create", "notificationSink", "ops"), "{plan}");
    // The fixture's groups and VMs are already as declared.
    assert!(
        !changes(&plan)
            .iter()
            .any(|c| c.2 == "web1" || c.2 == "prod" && c.1 == "resourceGroup"),
        "{plan}"
    );
    assert_eq!(r.h.snapshot().await, before, "a dry run wrote something");
    let sinks = r.h.get("/api/v1/notify/sinks", &admin).await.1;
    assert_eq!(sinks["value"].as_array().unwrap().len(), 0, "{sinks}");

    // Applied: the same plan, in one transaction, each change logged under the caller.
    let seq = head(&r).await;
    let plan2 = applied(&r, &admin, &doc, false).await;
    assert_eq!(plan2["applied"], true);
    assert_eq!(changes(&plan2).len(), changes(&plan).len());
    let ops = activity_after(&r, seq).await;
    let names: Vec<&str> = ops.iter().map(|(o, _)| o.as_str()).collect();
    for want in [
        "Add Resource Group",
        "Add Virtual Machine",
        "Update JIT Network Access Policy",
        "Assign Compliance Policy",
        "Add Notification Sink",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(ops.iter().all(|(_, caller)| caller == "admin"), "{ops:?}");
    let (st, v) = r.h.get("/api/v1/virtualMachines/edge1", &admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) =
        r.h.get(
            "/api/v1/virtualMachines/db1/jitNetworkAccessPolicies/default",
            &admin,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ports"][0]["maxRequestAccessDuration"], "PT30M", "{v}");
    assert_eq!(v["ports"][0]["onExpiry"], "cut", "{v}");

    // Idempotent: the second apply has nothing to do and writes nothing.
    let before = r.h.snapshot().await;
    let again = applied(&r, &admin, &doc, false).await;
    assert_eq!(changes(&again), vec![], "{again}");
    assert_eq!(again["applied"], false);
    assert_eq!(r.h.snapshot().await, before);

    // One field changed: the plan names it, before and after; only it is applied.
    let mut changed = doc.clone();
    changed["policies"][0]["ports"][0]["max_request_access_duration"] = json!("PT3H");
    changed["resource_groups"][0]["owner"] = json!("platform@example.com");
    let plan = applied(&r, &admin, &changed, false).await;
    assert_eq!(
        changes(&plan),
        vec![
            ("change".into(), "resourceGroup".into(), "prod".into()),
            ("change".into(), "policy".into(), "rg:prod".into()),
        ],
        "{plan}"
    );
    let fields = &plan["changes"][1]["fields"];
    assert_eq!(
        fields,
        &json!([{"field": "ports[22/TCP].max_request_access_duration", "before": "PT1H", "after": "PT3H"}]),
        "{plan}"
    );
    assert_eq!(
        plan["changes"][0]["fields"],
        json!([{"field": "owner", "before": "prod-team@example.com", "after": "platform@example.com"}])
    );
    let (_, groups) = r.h.get("/api/v1/resourceGroups", &admin).await;
    assert!(
        groups.to_string().contains("platform@example.com"),
        "{groups}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_only_with_prune_and_only_within_scope() {
    let r = rig().await;
    let admin = r.h.admin.clone();
    let scoped = r.h.token("prod-admin", Role::Admin, "rg:prod").await;
    applied(&r, &admin, &document(), false).await;

    // Undeclared: vm:db1's policy, the assignment, the sink and edge (with edge1).
    let mut less = document();
    less["policies"].as_array_mut().unwrap().remove(1);
    less["compliance_assignments"] = json!([]);
    less["sinks"] = json!([]);
    less["resource_groups"].as_array_mut().unwrap().remove(2);
    less["vms"].as_array_mut().unwrap().remove(3);
    let before = r.h.snapshot().await;
    let plan = applied(&r, &admin, &less, false).await;
    assert_eq!(
        changes(&plan),
        vec![],
        "without --prune nothing is deleted: {plan}"
    );
    assert_eq!(r.h.snapshot().await, before);

    // A group admin's prune: only what it may delete in rg:prod (web2, the group's
    // policy), never dev's, edge's or the whole controller's objects it cannot manage.
    let exported = export(&r, &scoped).await;
    assert_eq!(
        exported["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["web1", "web2"],
        "{exported}"
    );
    let mut prod_only = exported.clone();
    prod_only["vms"]
        .as_array_mut()
        .unwrap()
        .retain(|v| v["name"] != "web2");
    prod_only["policies"] = json!([]);
    let (st, plan) = apply(&r, &scoped, &prod_only, true, true).await;
    assert_eq!(st, StatusCode::OK, "{plan}");
    let c = changes(&plan);
    assert!(
        c.contains(&("delete".into(), "virtualMachine".into(), "web2".into())),
        "{plan}"
    );
    assert!(
        c.contains(&("delete".into(), "policy".into(), "rg:prod".into())),
        "{plan}"
    );
    assert!(
        c.iter()
            .all(|(a, _, n)| a == "delete" && (n == "web2" || n == "rg:prod" || n == "ops")),
        "the prune reaches outside rg:prod: {plan}"
    );
    assert_eq!(r.h.snapshot().await, before, "a dry run wrote something");

    // The admin of *: prune deletes the undeclared objects, dependents first.
    let seq = head(&r).await;
    let plan = applied(&r, &admin, &less, true).await;
    assert_eq!(
        changes(&plan),
        vec![
            ("delete".into(), "notificationSink".into(), "ops".into()),
            (
                "delete".into(),
                "complianceAssignment".into(),
                "rg:prod".into()
            ),
            ("delete".into(), "policy".into(), "vm:db1".into()),
            ("delete".into(), "virtualMachine".into(), "edge1".into()),
            ("delete".into(), "resourceGroup".into(), "edge".into()),
        ],
        "{plan}"
    );
    let ops: Vec<String> = activity_after(&r, seq)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(
        ops,
        [
            "Remove Notification Sink",
            "Delete Compliance Policy Assignment",
            "Delete JIT Network Access Policy",
            "Delete Virtual Machine",
            "Delete Resource Group"
        ]
    );
    let (st, _) = r.h.get("/api/v1/virtualMachines/edge1", &admin).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let again = applied(&r, &admin, &less, true).await;
    assert_eq!(changes(&again), vec![], "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_item_refuses_the_whole_plan() {
    let r = rig().await;
    let scoped = r.h.token("prod-admin", Role::Admin, "rg:prod").await;
    let req = r.h.token("req", Role::Requester, "*").await;
    let mut doc = export(&r, &scoped).await;
    // Allowed alone: a new VM in prod and a policy on it...
    doc["vms"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "web3", "resource_group": "prod"}));
    doc["policies"] = json!([{"vm": "web3", "ports": [{"number": 22, "protocol": "TCP",
        "allowed_source_address_prefix": "*", "max_request_access_duration": "PT1H"}]}]);
    let plan = apply(&r, &scoped, &doc, true, false).await;
    assert_eq!(plan.0, StatusCode::OK, "{}", plan.1);
    // ...but not with a new resource group (only an admin of * makes one) or a VM in dev.
    let before = r.h.snapshot().await;
    for extra in [
        json!({"resource_groups": [{"name": "newrg", "owner": "x@example.com"}]}),
        json!({"vms": [{"name": "db9", "resource_group": "dev"}]}),
    ] {
        let mut bad = doc.clone();
        for (k, v) in extra.as_object().unwrap() {
            bad[k]
                .as_array_mut()
                .unwrap()
                .extend(v.as_array().unwrap().iter().cloned());
        }
        let (st, v) = apply(&r, &scoped, &bad, false, false).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["error"]["code"], "Forbidden");
        assert_eq!(
            r.h.snapshot().await,
            before,
            "a refused plan wrote something"
        );
    }
    // A requester may apply nothing that changes state.
    let (st, _) = apply(&r, &req, &document(), false, false).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(r.h.snapshot().await, before);

    // Invalid documents are refused in words, changing nothing.
    let admin = r.h.admin.clone();
    for (bad, code) in [
        (
            json!({"vms": [{"name": "x", "resource_group": "prod", "color": "red"}]}),
            "InvalidBody",
        ),
        (
            json!({"vms": [{"name": "x", "resource_group": "prod", "addresses": ["300.1.1.1"]}]}),
            "InvalidDocument",
        ),
        (
            json!({"policies": [{"vm": "web1", "resource_group": "prod", "ports": []}]}),
            "InvalidDocument",
        ),
        (
            json!({"policies": [{"vm": "web1", "ports": [{"number": 70000, "protocol": "TCP",
            "max_request_access_duration": "PT1H"}]}]}),
            "InvalidPort",
        ),
        (
            json!({"resource_groups": [{"name": "a", "owner": "o"}, {"name": "a", "owner": "o"}]}),
            "InvalidDocument",
        ),
        (
            json!({"sinks": [{"name": "new", "format": "webhook"}]}),
            "InvalidDocument",
        ),
    ] {
        let (st, v) = apply(&r, &admin, &bad, false, false).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["code"], code, "{bad}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(r.h.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trips_and_carries_no_secret() {
    let r = rig().await;
    let admin = r.h.admin.clone();
    let scoped = r.h.token("prod-admin", Role::Admin, "rg:prod").await;
    applied(&r, &admin, &document(), false).await;
    let doc = export(&r, &admin).await;
    let text = doc.to_string();
    assert!(
        !text.contains("T0KEN-IN-THE-PATH"),
        "a sink URL was exported: {text}"
    );
    assert!(!text.contains("the-signing-secret-value"), "{text}");
    assert_eq!(doc["sinks"][0]["secret"], "hook-key", "{doc}");
    assert!(doc["sinks"][0].get("target").is_none(), "{doc}");
    assert_eq!(doc["policies"].as_array().unwrap().len(), 2, "{doc}");
    // Nor does any plan carry the URL.
    let mut moved = document();
    moved["sinks"][0]["target"] = json!("https://127.0.0.1:9/services/OTHER-T0KEN");
    let (_, plan) = apply(&r, &admin, &moved, true, false).await;
    let p = plan.to_string();
    assert!(has(&plan, "change", "notificationSink", "ops"), "{plan}");
    assert!(!p.contains("T0KEN"), "{p}");
    assert!(p.contains("(not shown)"), "{p}");

    // What was exported applies as "no changes", for the admin of * and a scoped admin.
    let seq = head(&r).await;
    let plan = applied(&r, &admin, &doc, true).await;
    assert_eq!(changes(&plan), vec![], "{plan}");
    let mine = export(&r, &scoped).await;
    assert!(!mine.to_string().contains("dev"), "{mine}");
    let plan = applied(&r, &scoped, &mine, true).await;
    assert_eq!(changes(&plan), vec![], "{plan}");
    assert_eq!(head(&r).await, seq, "a no-op apply logged something");
}
