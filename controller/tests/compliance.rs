//! The compliance API on a real controller (loopback HTTPS, real SQLite file, or PostgreSQL
//! with JIT_TEST_POSTGRES_URL): assignments, evaluations without a probe (no network traffic
//! leaves this host: no probe range is configured and no probe is asked), the report and its
//! filters, history, remediation, rights, and bad input that changes nothing.
//! Findings from real agents and a real probe: tests/tests/compliance.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use jitgate_api::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn post(h: &Harness, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::POST, path, Some(token), Some(body)).await
}

async fn assign(h: &Harness, token: &str, scope: &str) -> (StatusCode, Value) {
    post(
        h,
        "/api/v1/compliance/assignments",
        token,
        json!({ "scope": scope }),
    )
    .await
}

async fn scan(h: &Harness, token: &str) -> (StatusCode, Value) {
    post(h, "/api/v1/compliance/scans", token, json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_api() {
    let h = Harness::new().await;
    h.fixture().await;
    let admin = h.admin.clone();
    let reader = h.token("rita", Role::Reader, "rg:dev").await;
    let prod_admin = h.token("pat", Role::Admin, "rg:prod").await;

    // Nothing evaluated yet.
    let (st, v) = h.get("/api/v1/compliance", &admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["scan"].is_null(), "{v}");

    // Bad input: each refused, nothing written.
    let before = h.snapshot().await;
    for (path, token, body, want) in [
        (
            "/api/v1/compliance/assignments",
            &admin,
            json!({"scope": "vm:web1"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/compliance/assignments",
            &admin,
            json!({"scope": "rg:nosuch"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/compliance/assignments",
            &admin,
            json!({"scope": "everything"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/compliance/assignments",
            &admin,
            json!({"scope": "*", "extra": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/compliance/assignments",
            &prod_admin,
            json!({"scope": "rg:prod"}),
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/v1/compliance/assignments",
            &reader,
            json!({"scope": "*"}),
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/v1/compliance/scans",
            &reader,
            json!({}),
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/v1/compliance/scans",
            &admin,
            json!({"probe": true, "range": "192.0.2.0/24"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/compliance/scans",
            &admin,
            json!({"range": "192.0.2.0/24"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/compliance/scans",
            &admin,
            json!({"probe": "yes"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/compliance/remediate",
            &admin,
            json!({"virtualMachine": "web1", "template": "nosuch"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/compliance/remediate",
            &admin,
            json!({"virtualMachine": "nosuch"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/compliance/remediate",
            &prod_admin,
            json!({"virtualMachine": "db1"}),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (st, v) = post(&h, path, token, body.clone()).await;
        assert_eq!(st, want, "{path} {body}: {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    for q in [
        "groupBy=team",
        "format=xml",
        "at=yesterday",
        "scope=bad",
        "nosuch=1",
    ] {
        let (st, v) = h.get(&format!("/api/v1/compliance?{q}"), &admin).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {v}");
    }
    assert_eq!(
        before,
        h.snapshot().await,
        "a refused call changed the database"
    );

    // Assign at prod, then the fleet; twice at the same scope is a conflict.
    let (st, a) = assign(&h, &admin, "rg:prod").await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["effect"], "audit");
    let (st, _) = assign(&h, &admin, "rg:prod").await;
    assert_eq!(st, StatusCode::CONFLICT);

    // An evaluation: web1 and web2 (prod) have no agent: unknown. db1 is not covered.
    let (st, s1) = scan(&h, &admin).await;
    assert_eq!(st, StatusCode::OK, "{s1}");
    assert_eq!(s1["probed"], false);
    assert_eq!(s1["unknown"], 2, "{s1}");
    assert!(s1["compliancePercentage"].is_null(), "{s1}");
    let (_, r) = h.get("/api/v1/compliance", &admin).await;
    let names: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["resource"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1", "web2"], "{r}");
    assert_eq!(r["results"][0]["findings"][0]["code"], "NoAgent");
    assert_eq!(r["results"][0]["owner"], "prod-team@example.com");

    // Assigning the fleet covers db1 too; the owner grouping and the reader's scope.
    let (st, fleet) = assign(&h, &admin, "*").await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, s2) = scan(&h, &admin).await;
    assert_eq!(s2["unknown"], 3, "{s2}");
    let (_, r) = h.get("/api/v1/compliance?groupBy=owner", &admin).await;
    assert_eq!(r["groups"], json!([]), "no non-compliant VM: no group: {r}");
    let (_, r) = h.get("/api/v1/compliance", &reader).await;
    assert_eq!(
        r["results"].as_array().unwrap().len(),
        1,
        "reader sees dev only: {r}"
    );
    assert_eq!(r["results"][0]["resource"], "db1");
    let (_, r) = h.get("/api/v1/compliance?scope=vm:web2", &admin).await;
    assert_eq!(r["results"].as_array().unwrap().len(), 1, "{r}");
    // The history counts what the caller may read, and the scope asked for.
    let unknown_per_scan = async |token: &str, q: &str| -> Vec<i64> {
        let (st, v) = h
            .get(&format!("/api/v1/compliance/history{q}"), token)
            .await;
        assert_eq!(st, StatusCode::OK, "{q}: {v}");
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["unknown"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        unknown_per_scan(&reader, "").await,
        [0, 1],
        "reader: dev only"
    );
    assert_eq!(unknown_per_scan(&admin, "").await, [2, 3], "the fleet");
    assert_eq!(unknown_per_scan(&admin, "?scope=rg:prod").await, [2, 2]);
    assert_eq!(unknown_per_scan(&admin, "?scope=vm:web1").await, [1, 1]);
    assert_eq!(
        unknown_per_scan(&reader, "?scope=rg:prod").await,
        [0, 0],
        "not theirs"
    );
    assert_eq!(unknown_per_scan(&reader, "?scope=*").await, [0, 1]);
    let (st, _) = h.get("/api/v1/compliance/history?scope=bad", &admin).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // CSV.
    let r = h
        .client
        .get(format!("{}/api/v1/compliance?format=csv", h.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv");
    let csv = r.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("resource,kind,resourceGroup,owner,state,finding,port,interface,address,reason")
    );
    assert!(
        csv.contains("web1,virtualMachine,prod,prod-team@example.com,Unknown,NoAgent,,,,"),
        "{csv}"
    );

    // The state at the first evaluation's time; history in order.
    let (_, past) = h
        .get(
            &format!("/api/v1/compliance?at={}", s1["timeUtc"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(past["scan"]["scanId"], s1["scanId"], "{past}");
    assert_eq!(past["unknown"], 2);
    let (_, hist) = h.get("/api/v1/compliance/history", &admin).await;
    let ids: Vec<i64> = hist["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["scanId"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            s1["scanId"].as_i64().unwrap(),
            s2["scanId"].as_i64().unwrap()
        ]
    );

    // Remediation: the template becomes web1's own policy; audited.
    let (st, p) = post(
        &h,
        "/api/v1/compliance/remediate",
        &prod_admin,
        json!({"virtualMachine": "web1"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["scope"], "virtualMachine");
    let ports: Vec<(i64, &str)> = p["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["number"].as_i64().unwrap(),
                x["protocol"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [(22, "TCP"), (3389, "*"), (5985, "TCP"), (5986, "TCP")],
        "{p}"
    );
    assert_eq!(p["ports"][0]["maxRequestAccessDuration"], "PT3H");

    // Unassign; both kinds of change are in the verified activity log.
    let id = fleet["id"].as_str().unwrap();
    let (st, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/compliance/assignments/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/compliance/assignments/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, list) = h.get("/api/v1/compliance/assignments", &reader).await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1, "{list}");
    let (_, log) = h.get("/api/v1/activityLog", &admin).await;
    let ops: Vec<&str> = log["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    for op in [
        "Assign Compliance Policy",
        "Delete Compliance Policy Assignment",
        "Remediate Compliance",
        "Update JIT Network Access Policy",
    ] {
        assert!(ops.contains(&op), "{op} missing: {ops:?}");
    }
    let (_, v) = h.get("/api/v1/activityLog/verify", &admin).await;
    assert_eq!(v["ok"], true, "{v}");

    // Resource groups with their owners; the VM list carries the agent status.
    let (_, g) = h.get("/api/v1/resourceGroups", &reader).await;
    assert_eq!(
        g["value"],
        json!([{"name": "dev", "owner": "dev-team@example.com"}])
    );
    let (_, vms) = h.get("/api/v1/virtualMachines", &admin).await;
    assert_eq!(vms["value"][0]["status"], "none", "{vms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_run_on_schedule() {
    let h = Harness::with_config(|c| {
        c.compliance.scan_every_seconds = 1;
        c.compliance.probe_every_seconds = 0;
    })
    .await;
    h.fixture().await;
    let admin = h.admin.clone();
    let (st, _) = assign(&h, &admin, "*").await;
    assert_eq!(st, StatusCode::CREATED);
    let mut hist = Value::Null;
    for _ in 0..100 {
        hist = h.get("/api/v1/compliance/history", &admin).await.1;
        if hist["value"].as_array().is_some_and(|v| v.len() >= 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let v = hist["value"].as_array().expect("history");
    assert!(v.len() >= 2, "{hist}");
    assert!(
        v.iter()
            .all(|s| s["reason"] == "schedule" && s["probed"] == false),
        "{hist}"
    );
}

/// Remediation writes the VM's policy and its "Remediate Compliance" entry in one
/// transaction: when the entry cannot be written (a trigger refuses it here), the policy is
/// not written either, and a retry once it can succeeds whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remediation_is_one_transaction() {
    let h = Harness::new().await;
    h.fixture().await;
    let pool = h.app().db.pool();
    let postgres = h.app().db.backend().as_str() == "postgres";
    let (create, drop): (&[&str], &[&str]) = if postgres {
        (
            &[
                "CREATE FUNCTION refuse_remediation() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_remediation BEFORE INSERT ON activity FOR EACH ROW \
                 WHEN (NEW.operation = 'Remediate Compliance') EXECUTE FUNCTION refuse_remediation()",
            ],
            &["DROP TRIGGER refuse_remediation ON activity"],
        )
    } else {
        (
            &[
                "CREATE TRIGGER refuse_remediation BEFORE INSERT ON activity \
               WHEN NEW.operation = 'Remediate Compliance' \
               BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            ],
            &["DROP TRIGGER refuse_remediation"],
        )
    };
    for sql in create {
        sqlx::raw_sql(sql).execute(pool).await.expect("trigger");
    }
    let before = h.snapshot().await;
    let body = json!({"virtualMachine": "web1"});
    let (st, v) = post(&h, "/api/v1/compliance/remediate", &h.admin, body.clone()).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(
        h.snapshot().await,
        before,
        "the policy was written without its entry"
    );
    let (st, _) = h
        .get(
            "/api/v1/virtualMachines/web1/jitNetworkAccessPolicies/default",
            &h.admin,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    for sql in drop {
        sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .expect("drop trigger");
    }
    let (st, v) = post(&h, "/api/v1/compliance/remediate", &h.admin, body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, log) = h.get("/api/v1/activityLog?vm=web1", &h.admin).await;
    let ops: Vec<&str> = log["value"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["operation"].as_str())
        .collect();
    assert!(
        ops.ends_with(&["Update JIT Network Access Policy", "Remediate Compliance"]),
        "{ops:?}"
    );
}

/// The dashboard's read (`Compliance::overview`: counted and listed by the database) says
/// what the export (`Compliance::report`: every result, filtered in memory) says, for each
/// reader, filter, grouping and budget: the counts, the groups with their counts and first
/// rows, and the first rows of each section. An evaluation of 40 VMs in four groups (two
/// sharing an owner, one without), in every state, and three unmanaged hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_read_agrees_with_the_report() {
    use jitgate_api::{
        ComplianceResult, ComplianceState, Finding, FindingCode, GroupBy, ReportQuery,
        ResourceKind, ScanReason, Scope,
    };
    use jitgate_controller::authz::{Caller, Grant};
    use jitgate_controller::compliance::Report;
    use jitgate_controller::compliance::overview::Budget;

    let h = Harness::new().await;
    let finding = |vm: &str| Finding {
        code: FindingCode::ListeningUnprotected,
        port: Some("22/TCP".into()),
        interface: Some("*".into()),
        address: Some("0.0.0.0".into()),
        reason: format!("22/TCP listens on {vm}"),
    };
    let mut results = Vec::new();
    for i in 0..40 {
        let name = format!("vm{i:02}");
        let state = match i % 4 {
            0 => ComplianceState::Compliant,
            1 | 2 => ComplianceState::NonCompliant,
            _ => ComplianceState::Unknown,
        };
        results.push(ComplianceResult {
            findings: if state == ComplianceState::NonCompliant {
                vec![finding(&name)]
            } else {
                vec![]
            },
            resource: name,
            kind: ResourceKind::VirtualMachine,
            // Groups g0..g3 of ten VMs; the owner is the group's (g2 and g3 share one; g1
            // has none).
            resource_group: format!("g{}", i / 10),
            owner: ["o1", "", "o2", "o2"][i / 10].to_string(),
            state,
        });
    }
    for a in ["198.51.100.7", "198.51.100.8", "198.51.100.9"] {
        results.push(ComplianceResult {
            resource: a.into(),
            kind: ResourceKind::UnmanagedHost,
            resource_group: String::new(),
            owner: String::new(),
            state: ComplianceState::NonCompliant,
            findings: vec![finding(a)],
        });
    }
    let mut w = h.app().db.begin().await.unwrap();
    jitgate_controller::store::compliance::insert_scan(
        &mut w,
        &ScanReason::OnDemand,
        true,
        [10, 20, 10, 3],
        &results,
    )
    .await
    .unwrap();
    w.commit().await.unwrap();

    let c = &h.app().compliance;
    let scoped = Caller {
        grants: vec![
            Grant {
                role: Role::Reader,
                scope: Scope::ResourceGroup("g1".into()),
            },
            Grant {
                role: Role::Requester,
                scope: Scope::Vm("vm33".into()),
            },
        ],
        ..Caller::local()
    };
    for caller in [&Caller::local(), &scoped] {
        for scope in [
            None,
            Some("*"),
            Some("rg:g1"),
            Some("rg:g3"),
            Some("vm:vm33"),
        ] {
            for by in [GroupBy::Owner, GroupBy::ResourceGroup] {
                let q = ReportQuery {
                    scope: scope.map(str::to_string),
                    group_by: Some(by),
                    ..ReportQuery::default()
                };
                let Report::Json(r) = c.report(caller, &q, false).await.unwrap() else {
                    panic!("json");
                };
                for budget in [0usize, 1, 3, 7, 100] {
                    let o = c
                        .overview(
                            caller,
                            &q,
                            Budget {
                                with_findings: budget,
                                compliant: budget,
                            },
                        )
                        .await
                        .unwrap();
                    let ctx = format!("{:?} {scope:?} {by:?} budget {budget}", caller.grants);
                    assert_eq!(
                        (o.compliant, o.non_compliant, o.unknown, o.unmanaged),
                        (r.compliant, r.non_compliant, r.unknown, r.unmanaged),
                        "{ctx}"
                    );
                    assert_eq!(o.compliance_percentage, r.compliance_percentage, "{ctx}");
                    let groups = r.groups.clone().unwrap();
                    assert_eq!(o.groups.len(), groups.len(), "{ctx}");
                    // The report's rows in its order, the budget taken section by section.
                    let mut left = budget;
                    let mut take = |rows: Vec<&ComplianceResult>| -> Vec<ComplianceResult> {
                        let n = rows.len().min(left);
                        left -= n;
                        rows.into_iter().take(n).cloned().collect()
                    };
                    for (og, rg) in o.groups.iter().zip(&groups) {
                        assert_eq!((&og.key, &og.owner), (&rg.key, &rg.owner), "{ctx}");
                        assert_eq!(og.count, rg.non_compliant.len() as i64, "{ctx}");
                        assert_eq!(og.listed, take(rg.non_compliant.iter().collect()), "{ctx}");
                    }
                    let of = |kind: ResourceKind, state: Option<ComplianceState>| {
                        r.results
                            .iter()
                            .filter(|x| {
                                x.kind == kind && state.as_ref().is_none_or(|s| x.state == *s)
                            })
                            .collect::<Vec<_>>()
                    };
                    let unknown = of(ResourceKind::VirtualMachine, Some(ComplianceState::Unknown));
                    assert_eq!(o.unknown_listed, take(unknown), "{ctx}");
                    let hosts = of(ResourceKind::UnmanagedHost, None);
                    assert_eq!(o.unmanaged_listed, take(hosts), "{ctx}");
                    let ok: Vec<ComplianceResult> = of(
                        ResourceKind::VirtualMachine,
                        Some(ComplianceState::Compliant),
                    )
                    .into_iter()
                    .take(budget)
                    .cloned()
                    .collect();
                    assert_eq!(o.compliant_listed, ok, "{ctx}");
                }
            }
        }
    }
    // The fixture is what it says: every section has rows for a reader of everything.
    let Report::Json(all) = c
        .report(&Caller::local(), &ReportQuery::default(), false)
        .await
        .unwrap()
    else {
        panic!("json");
    };
    assert_eq!(
        (all.compliant, all.non_compliant, all.unknown, all.unmanaged),
        (10, 20, 10, 3)
    );
}
