//! API tests over real HTTPS against a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod common;

use common::{Harness, one_port, reasons};
use jitgate_api::Role;
use jitgate_api::time::now_ms;
use jitgate_controller::authz::{Actor, Caller};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const INIT: &str = "/api/v1/jitNetworkAccessPolicies/default/initiate";

fn policy_prod() -> Value {
    json!([
        {"number": 22, "protocol": "TCP",
         "allowedSourceAddressPrefixes": ["203.0.113.0/24", "2001:db8:1::/48"],
         "maxRequestAccessDuration": "PT3H", "onExpiry": "keep"},
        {"number": 3389, "protocol": "*", "allowedSourceAddressPrefix": "127.0.0.0/8",
         "maxRequestAccessDuration": "PT1H", "onExpiry": "cut"}
    ])
}

async fn setup() -> (Harness, String) {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy("prod", policy_prod()).await;
    let req = h.token("alice", Role::Requester, "rg:prod").await;
    (h, req)
}

fn status_of(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_rules_ipv4_and_ipv6() {
    let (h, alice) = setup().await;
    let past = "2020-01-01T00:00:00Z";
    // (source, port, protocol, duration/end, expected reasons; empty = approved)
    let cases: Vec<(&str, u32, Option<&str>, Value, Vec<&str>)> = vec![
        // narrower prefix accepted, exact accepted, wider rejected
        (
            "203.0.113.7/32",
            22,
            None,
            json!({"duration": "PT1H"}),
            vec![],
        ),
        (
            "203.0.113.0/24",
            22,
            Some("TCP"),
            json!({"duration": "PT3H"}),
            vec![],
        ),
        (
            "203.0.112.0/23",
            22,
            None,
            json!({"duration": "PT1H"}),
            vec!["SourceNotAllowed"],
        ),
        (
            "198.51.100.1",
            22,
            None,
            json!({"duration": "PT1H"}),
            vec!["SourceNotAllowed"],
        ),
        (
            "2001:db8:1:2::/64",
            22,
            None,
            json!({"duration": "PT1H"}),
            vec![],
        ),
        (
            "2001:db8:1::5",
            22,
            None,
            json!({"duration": "PT1H"}),
            vec![],
        ),
        (
            "2001:db8::/32",
            22,
            None,
            json!({"duration": "PT1H"}),
            vec!["SourceNotAllowed"],
        ),
        // IPv4-mapped IPv6 is normalised to IPv4
        (
            "::ffff:203.0.113.9",
            22,
            None,
            json!({"duration": "PT1H"}),
            vec![],
        ),
        // port not in policy
        (
            "203.0.113.7",
            2222,
            None,
            json!({"duration": "PT1H"}),
            vec!["PortNotInPolicy"],
        ),
        (
            "2001:db8:1::5",
            2222,
            None,
            json!({"duration": "PT1H"}),
            vec!["PortNotInPolicy"],
        ),
        // protocol mismatch
        (
            "203.0.113.7",
            22,
            Some("UDP"),
            json!({"duration": "PT1H"}),
            vec!["ProtocolNotAllowed"],
        ),
        (
            "2001:db8:1::5",
            22,
            Some("*"),
            json!({"duration": "PT1H"}),
            vec!["ProtocolNotAllowed"],
        ),
        // window over the maximum
        (
            "203.0.113.7",
            22,
            None,
            json!({"duration": "PT3H1M"}),
            vec!["DurationExceedsMaximum"],
        ),
        (
            "2001:db8:1::5",
            22,
            None,
            json!({"duration": "PT4H"}),
            vec!["DurationExceedsMaximum"],
        ),
        // end in the past
        (
            "203.0.113.7",
            22,
            None,
            json!({"endTimeUtc": past}),
            vec!["EndTimeInPast"],
        ),
        (
            "2001:db8:1::5",
            22,
            None,
            json!({"endTimeUtc": past}),
            vec!["EndTimeInPast"],
        ),
        // every reason, not only the first
        (
            "2001:db8::/32",
            22,
            None,
            json!({"duration": "PT5H"}),
            vec!["DurationExceedsMaximum", "SourceNotAllowed"],
        ),
        (
            "203.0.112.0/23",
            22,
            None,
            json!({"endTimeUtc": past}),
            vec!["EndTimeInPast", "SourceNotAllowed"],
        ),
        (
            "2001:db8::/32",
            22,
            Some("UDP"),
            json!({"duration": "PT9H"}),
            vec![
                "DurationExceedsMaximum",
                "ProtocolNotAllowed",
                "SourceNotAllowed",
            ],
        ),
    ];
    for (i, (src, port, proto, window, expect)) in cases.into_iter().enumerate() {
        let mut p = json!({"number": port, "allowedSourceAddressPrefix": src});
        if let Some(pr) = proto {
            p["protocol"] = json!(pr);
        }
        for (k, v) in window.as_object().expect("obj") {
            p[k] = v.clone();
        }
        let (st, v) = h.initiate(&alice, one_port("web1", p)).await;
        assert_eq!(st, StatusCode::OK, "case {i}: {v}");
        let mut expect: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
        expect.sort();
        assert_eq!(reasons(&v), expect, "case {i} ({src} {port}): {v}");
        if expect.is_empty() {
            assert_eq!(status_of(&v), "Initiated", "case {i}: {v}");
        } else {
            assert_eq!(status_of(&v), "Denied", "case {i}: {v}");
            let port0 = &v["virtualMachines"][0]["ports"][0];
            assert_eq!(port0["status"], "Denied");
            assert!(expect.contains(&port0["statusReason"].as_str().unwrap_or("").to_string()));
        }
        // The decision is recorded: in history, and in the activity log with its reasons.
        let id = v["id"].as_str().expect("id");
        let (_, rec) = h.get(&format!("/api/v1/requests/{id}"), &alice).await;
        assert_eq!(rec, v, "case {i}");
        let (_, log) = h
            .get(
                "/api/v1/activityLog?vm=web1&resourceType=VirtualMachine&limit=100000",
                &h.admin,
            )
            .await;
        let entry = log["value"]
            .as_array()
            .expect("list")
            .iter()
            .find(|e| e["requestId"] == id)
            .expect("logged");
        assert_eq!(entry["operation"], "Initiate JIT Network Access");
        assert_eq!(entry["caller"], "alice");
        assert_eq!(entry["callerAddress"], "127.0.0.1");
        assert_eq!(
            entry["outcome"],
            if expect.is_empty() {
                "Succeeded"
            } else {
                "Denied"
            }
        );
        assert_eq!(entry["details"]["justification"], "ticket INC-1");
        assert_eq!(
            entry["details"]["denialReasons"]
                .as_array()
                .map(|a| a.len()),
            Some(expect.len())
        );
    }
    // "My IP": no source means the caller's address (127.0.0.1 here), which 22 does not allow
    // and 3389 does.
    let (_, v) = h
        .initiate(
            &alice,
            one_port("web1", json!({"number": 22, "duration": "PT1H"})),
        )
        .await;
    assert_eq!(reasons(&v), vec!["SourceNotAllowed"]);
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"],
        "127.0.0.1/32"
    );
    let (_, v) = h
        .initiate(
            &alice,
            one_port("web1", json!({"number": 3389, "duration": "PT30M"})),
        )
        .await;
    assert_eq!(status_of(&v), "Initiated", "{v}");
    // protocol * is one grant for TCP and one for UDP
    let id = v["id"].as_str().expect("id");
    let out = h
        .app()
        .lifecycle
        .outbox("web1", 0, 1000)
        .await
        .expect("outbox");
    let mine: Vec<_> = out.iter().filter(|o| o.request_id == id).collect();
    let mut protos: Vec<&str> = mine.iter().map(|o| o.protocol.as_str()).collect();
    protos.sort();
    assert_eq!(protos, vec!["TCP", "UDP"]);
    assert!(
        mine.iter()
            .all(|o| o.on_expiry.as_str() == "cut" && o.prefix == "127.0.0.1/32")
    );
    // A multi-prefix, multi-port request on one VM: one grant per (port, protocol, prefix).
    let (_, v) = h
        .initiate(
            &alice,
            json!({"virtualMachines": [{"id": "web2", "ports": [
                {"number": 22, "allowedSourceAddressPrefixes": ["203.0.113.1", "2001:db8:1::1"], "duration": "PT1H"},
                {"number": 3389, "duration": "PT10M"}]}], "justification": "two ports"}),
        )
        .await;
    assert_eq!(status_of(&v), "Initiated", "{v}");
    let id = v["id"].as_str().expect("id");
    let out = h
        .app()
        .lifecycle
        .outbox("web2", 0, 1000)
        .await
        .expect("outbox");
    assert_eq!(out.iter().filter(|o| o.request_id == id).count(), 4);
    // A request is approved only if every port passes: one bad port denies the whole request
    // and creates no grant.
    let before = h
        .app()
        .lifecycle
        .outbox("web2", 0, 1000)
        .await
        .expect("outbox")
        .len();
    let (_, v) = h
        .initiate(
            &alice,
            json!({"virtualMachines": [{"id": "web2", "ports": [
                {"number": 22, "allowedSourceAddressPrefix": "203.0.113.1", "duration": "PT1H"},
                {"number": 2222, "allowedSourceAddressPrefix": "203.0.113.1", "duration": "PT1H"}]}],
                "justification": "one bad"}),
        )
        .await;
    assert_eq!(status_of(&v), "Denied");
    assert_eq!(reasons(&v), vec!["PortNotInPolicy"]);
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["statusReason"],
        "OtherPortDenied"
    );
    assert_eq!(
        h.app()
            .lifecycle
            .outbox("web2", 0, 1000)
            .await
            .expect("outbox")
            .len(),
        before
    );
    // A VM without any policy
    let (_, v) = h
        .initiate(
            &h.admin,
            one_port("db1", json!({"number": 22, "duration": "PT1H"})),
        )
        .await;
    assert_eq!(reasons(&v), vec!["NoPolicy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_policy_replaces_group_policy() {
    let (h, alice) = setup().await;
    h.put_vm_policy(
        "web1",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "198.51.100.0/24",
                "maxRequestAccessDuration": "PT8H"}]),
    )
    .await;
    let req = |vm: &str, src: &str, d: &str| {
        one_port(
            vm,
            json!({"number": 22, "allowedSourceAddressPrefix": src, "duration": d}),
        )
    };
    // web1: its own policy only (the group's prefix and port 3389 no longer apply)
    let (_, v) = h.initiate(&alice, req("web1", "203.0.113.5", "PT1H")).await;
    assert_eq!(reasons(&v), vec!["SourceNotAllowed"]);
    let (_, v) = h
        .initiate(&alice, req("web1", "198.51.100.5", "PT6H"))
        .await;
    assert_eq!(status_of(&v), "Initiated", "{v}");
    let (_, v) = h
        .initiate(
            &alice,
            one_port("web1", json!({"number": 3389, "duration": "PT10M"})),
        )
        .await;
    assert_eq!(reasons(&v), vec!["PortNotInPolicy"]);
    // web2: the group's
    let (_, v) = h.initiate(&alice, req("web2", "203.0.113.5", "PT1H")).await;
    assert_eq!(status_of(&v), "Initiated");
    let (_, v) = h
        .initiate(&alice, req("web2", "198.51.100.5", "PT1H"))
        .await;
    assert_eq!(reasons(&v), vec!["SourceNotAllowed"]);
    // The VM detail shows where the effective policy comes from.
    let (_, v) = h.get("/api/v1/virtualMachines/web1", &alice).await;
    assert_eq!(v["effectivePolicy"]["scope"], "virtualMachine");
    let (_, v) = h.get("/api/v1/virtualMachines/web2", &alice).await;
    assert_eq!(v["effectivePolicy"]["scope"], "resourceGroup");
    // Deleting the VM's policy falls back to the group's.
    let (st, _) = h
        .call(
            Method::DELETE,
            "/api/v1/virtualMachines/web1/jitNetworkAccessPolicies/default",
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, v) = h.initiate(&alice, req("web1", "203.0.113.5", "PT1H")).await;
    assert_eq!(status_of(&v), "Initiated");
    // A group policy covers VMs added to the group later.
    h.app()
        .inventory
        .add_vm(
            &Caller::local(),
            "web3",
            "prod",
            &["192.0.2.13".parse().expect("ip")],
        )
        .await
        .expect("vm");
    let (_, v) = h.initiate(&alice, req("web3", "203.0.113.5", "PT1H")).await;
    assert_eq!(status_of(&v), "Initiated");
    // Policy activity is logged with Azure's operation names.
    let (_, log) = h.get("/api/v1/activityLog?vm=web1", &h.admin).await;
    let ops: Vec<&str> = log["value"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["operation"].as_str())
        .collect();
    assert!(ops.contains(&"Update JIT Network Access Policy"));
    assert!(ops.contains(&"Delete JIT Network Access Policy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersede_revoke_expire_and_apply() {
    let (h, alice) = setup().await;
    let bob = h.token("bob", Role::Requester, "vm:web1").await;
    let reader = h.token("rita", Role::Reader, "*").await;
    let req = |src: &str| {
        one_port(
            "web1",
            json!({"number": 22, "allowedSourceAddressPrefix": src, "duration": "PT1H"}),
        )
    };
    let (_, first) = h.initiate(&alice, req("203.0.113.5")).await;
    let (_, other) = h.initiate(&alice, req("203.0.113.6")).await;
    let (_, second) = h.initiate(&bob, req("203.0.113.5")).await;
    let first_id = first["id"].as_str().expect("id");
    let other_id = other["id"].as_str().expect("id");
    let second_id = second["id"].as_str().expect("id");
    // Same VM, port, protocol and source: the older is Revoked / NewerRequestInitiated.
    let (_, v) = h.get(&format!("/api/v1/requests/{first_id}"), &alice).await;
    assert_eq!(status_of(&v), "Revoked");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["statusReason"],
        "NewerRequestInitiated"
    );
    // A different source is untouched.
    let (_, v) = h.get(&format!("/api/v1/requests/{other_id}"), &alice).await;
    assert_eq!(status_of(&v), "Initiated");
    // The new grant names the one it replaces, and the old one's revocation is queued right
    // after it: the agent removes the old only after the new is in place (never cutting the
    // sessions it covers).
    let out = h
        .app()
        .lifecycle
        .outbox("web1", 0, 1000)
        .await
        .expect("outbox");
    let old_grant = out
        .iter()
        .find(|o| o.request_id == first_id)
        .expect("old")
        .grant_id
        .clone();
    let new = out.iter().find(|o| o.request_id == second_id).expect("new");
    assert_eq!(new.replaces, vec![old_grant.clone()]);
    let revoke = out
        .iter()
        .find(|o| o.op.as_str() == "revoke" && o.grant_id == old_grant)
        .expect("revocation of the superseded grant");
    assert_eq!(revoke.seq, new.seq + 1);
    // History is newest first and shows all three.
    let (_, hist) = h
        .get("/api/v1/virtualMachines/web1/requests", &reader)
        .await;
    let ids: Vec<&str> = hist["value"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec![second_id, other_id, first_id]);

    // Revoke: a reader may not; another requester may not revoke alice's; alice may.
    let path = format!("/api/v1/requests/{other_id}/revoke");
    let (st, v) = h.call(Method::POST, &path, Some(&reader), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = h.call(Method::POST, &path, Some(&bob), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "Forbidden");
    let (st, v) = h.call(Method::POST, &path, Some(&alice), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(status_of(&v), "Revoked");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["statusReason"],
        "UserRequested"
    );
    let out = h
        .app()
        .lifecycle
        .outbox("web1", 0, 1000)
        .await
        .expect("outbox");
    assert!(
        out.iter()
            .any(|o| o.op.as_str() == "revoke" && o.request_id == other_id)
    );
    // Revoking again: nothing active.
    let (st, v) = h.call(Method::POST, &path, Some(&alice), None).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(v["error"]["code"], "RequestNotActive");
    // An admin revokes anyone's.
    let (st, v) = h
        .call(
            Method::POST,
            &format!("/api/v1/requests/{second_id}/revoke"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, log) = h
        .get("/api/v1/activityLog?caller=admin&vm=web1", &h.admin)
        .await;
    assert!(
        log["value"]
            .as_array()
            .expect("list")
            .iter()
            .any(|e| e["operation"] == "Revoke JIT Network Access" && e["requestId"] == second_id)
    );

    // Applied: the agent channel acknowledges every grant of a request.
    let (_, v) = h.initiate(&alice, req("203.0.113.77")).await;
    let id = v["id"].as_str().expect("id");
    for o in h
        .app()
        .lifecycle
        .outbox("web1", 0, 1000)
        .await
        .expect("outbox")
    {
        if o.request_id == id {
            h.app()
                .lifecycle
                .acknowledge(&Actor::controller(), &o.grant_id)
                .await
                .expect("ack");
            // a redelivered acknowledgement is accepted again, not applied again
            h.app()
                .lifecycle
                .acknowledge(&Actor::controller(), &o.grant_id)
                .await
                .expect("ack");
        }
    }
    let (_, v) = h.get(&format!("/api/v1/requests/{id}"), &alice).await;
    assert_eq!(status_of(&v), "Applied", "{v}");
    assert_eq!(v["virtualMachines"][0]["ports"][0]["status"], "Applied");

    // Expiry (driven with an explicit clock, not by waiting): Revoked / Expired.
    let n = h
        .app()
        .lifecycle
        .expire_due(now_ms() + 2 * 3600 * 1000)
        .await
        .expect("sweep")
        .0;
    assert!(n >= 1);
    let (_, v) = h.get(&format!("/api/v1/requests/{id}"), &alice).await;
    assert_eq!(status_of(&v), "Revoked");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["statusReason"],
        "Expired"
    );
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_nothing_persisted() {
    let (h, alice) = setup().await;
    let before = h.snapshot().await;
    let pol = "/api/v1/resourceGroups/prod/jitNetworkAccessPolicies/default";
    let good_port = |extra: Value| {
        let mut p = json!({"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT3H"});
        for (k, v) in extra.as_object().expect("obj") {
            p[k] = v.clone();
        }
        json!({"ports": [p]})
    };
    let big = format!(
        "{{\"virtualMachines\":[],\"justification\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    // (what, method, path, token, content-type, body, status, code)
    let cases: Vec<(&str, Method, &str, &str, &str, Vec<u8>, StatusCode, &str)> = vec![
        ("malformed JSON", Method::POST, INIT, &alice, "application/json",
            b"{\"virtualMachines\": [".to_vec(), StatusCode::BAD_REQUEST, "InvalidJson"),
        ("not JSON", Method::PUT, pol, &h.admin, "application/json",
            b"ports = 22".to_vec(), StatusCode::BAD_REQUEST, "InvalidJson"),
        ("unknown field (initiate)", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&json!({"virtualMachines": [{"id": "web1", "ports": [{"number": 22, "duration": "PT1H"}]}],
                "justification": "x", "approve": true})).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidBody"),
        ("unknown field (port)", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": 22, "duration": "PT1H", "maxRequestAccessDuration": "PT24H"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidBody"),
        ("unknown field (policy)", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"allowAll": true}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidBody"),
        ("oversized body", Method::POST, INIT, &alice, "application/json",
            big.into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, "BodyTooLarge"),
        ("bad ISO 8601 duration (policy)", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"maxRequestAccessDuration": "3 hours"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidDuration"),
        ("policy maximum below PT5M", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"maxRequestAccessDuration": "PT4M"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidDuration"),
        ("policy maximum above PT24H", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"maxRequestAccessDuration": "P2D"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidDuration"),
        ("bad ISO 8601 duration (initiate)", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": 22, "duration": "PT1X"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidDuration"),
        ("bad ISO 8601 time", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": 22, "endTimeUtc": "tomorrow 5pm"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidTime"),
        ("bad CIDR: host bits", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.7/24"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidSourcePrefix"),
        ("bad CIDR: length", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"allowedSourceAddressPrefix": "10.0.0.0/33"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidSourcePrefix"),
        ("bad CIDR: IPv6", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "2001:db8::g/64"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidSourcePrefix"),
        ("port 0", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": 0, "duration": "PT1H"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidPort"),
        ("port 70000", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"number": 70000}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidPort"),
        ("protocol icmp", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"protocol": "ICMP"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidProtocol"),
        ("overlapping policy ports", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&json!({"ports": [
                {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "10.0.0.0/8", "maxRequestAccessDuration": "PT1H"},
                {"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "10.0.0.0/8", "maxRequestAccessDuration": "PT2H"}]})).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidPolicy"),
        ("both prefix fields", Method::PUT, pol, &h.admin, "application/json",
            serde_json::to_vec(&good_port(json!({"allowedSourceAddressPrefixes": ["10.0.0.0/8"]}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidSourcePrefix"),
        ("empty justification", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&json!({"virtualMachines": [{"id": "web1", "ports": [{"number": 22, "duration": "PT1H"}]}], "justification": "  "})).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidRequest"),
        ("duration and end", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": 22, "duration": "PT1H", "endTimeUtc": "2030-01-01T00:00:00Z"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidRequest"),
        ("unknown VM", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("nope", json!({"number": 22, "duration": "PT1H"}))).expect("j"),
            StatusCode::NOT_FOUND, "VmNotFound"),
        ("one unknown VM among good ones", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&json!({"virtualMachines": [
                {"id": "web1", "ports": [{"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.1"}]},
                {"id": "nope", "ports": [{"number": 22, "duration": "PT1H"}]}], "justification": "x"})).expect("j"),
            StatusCode::NOT_FOUND, "VmNotFound"),
        ("bad VM name", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("../etc", json!({"number": 22, "duration": "PT1H"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidName"),
        ("wrong content type", Method::POST, INIT, &alice, "text/plain",
            b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType"),
        ("wrong type", Method::POST, INIT, &alice, "application/json",
            serde_json::to_vec(&one_port("web1", json!({"number": "22", "duration": "PT1H"}))).expect("j"),
            StatusCode::BAD_REQUEST, "InvalidBody"),
    ];
    for (what, method, path, token, ct, body, status, code) in cases {
        let (st, v) = h.raw(method, path, token, ct, body).await;
        assert_eq!(st, status, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(h.snapshot().await, before, "{what} changed the database");
    }
    // Bad query parameters too.
    let (st, v) = h.get("/api/v1/activityLog?from=yesterday", &h.admin).await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("InvalidTime"))
    );
    let (st, v) = h.get("/api/v1/activityLog?colour=red", &h.admin).await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("InvalidQuery"))
    );
    for (path, code) in [
        (
            "/api/v1/virtualMachines/web1/connections?from=yesterday",
            "InvalidTime",
        ),
        (
            "/api/v1/virtualMachines/web1/connections?format=xml",
            "InvalidQuery",
        ),
        (
            "/api/v1/virtualMachines/web1/connections?denied=maybe",
            "InvalidQuery",
        ),
        (
            "/api/v1/virtualMachines/web1/agentAudit?colour=red",
            "InvalidQuery",
        ),
        (
            "/api/v1/virtualMachines/web1/agentAudit?to=soon",
            "InvalidTime",
        ),
    ] {
        let (st, v) = h.get(path, &h.admin).await;
        assert_eq!(
            (st, v["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, json!(code)),
            "{path}: {v}"
        );
    }
    let (st, v) = h
        .get("/api/v1/virtualMachines/nosuchvm/connections", &h.admin)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (st, v) = h.get("/api/v1/nothing", &h.admin).await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("NoSuchRoute"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_activity_row_is_detected() {
    let (h, alice) = setup().await;
    for i in 0..3 {
        h.initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": format!("203.0.113.{i}"), "duration": "PT1H"}),
            ),
        )
        .await;
    }
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
    let n = v["entries"].as_i64().expect("n");
    assert!(n >= 8);
    // Someone with database access rewrites a justification in entry n-1.
    let target = n - 1;
    sqlx::query("UPDATE activity SET details = REPLACE(details, 'INC-1', 'INC-2') WHERE seq = $1")
        .bind(target)
        .execute(h.app().db.pool())
        .await
        .expect("tamper");
    let (st, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["firstBadSeq"], target, "{v}");
    assert!(v["problem"].as_str().expect("problem").contains("altered"));
    // Restoring the row makes it verify again; deleting the last entry is detected too.
    sqlx::query("UPDATE activity SET details = REPLACE(details, 'INC-2', 'INC-1') WHERE seq = $1")
        .bind(target)
        .execute(h.app().db.pool())
        .await
        .expect("restore");
    assert!(
        h.app()
            .audit
            .verify(&Caller::local())
            .await
            .expect("verify")
            .ok
    );
    sqlx::query("DELETE FROM activity WHERE seq = $1")
        .bind(n)
        .execute(h.app().db.pool())
        .await
        .expect("delete");
    let r = h
        .app()
        .audit
        .verify(&Caller::local())
        .await
        .expect("verify");
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(n));
    // A changed caller in the middle breaks the chain at that entry.
    sqlx::query("UPDATE activity SET caller = 'mallory' WHERE seq = 2")
        .execute(h.app().db.pool())
        .await
        .expect("tamper");
    let r = h
        .app()
        .audit
        .verify(&Caller::local())
        .await
        .expect("verify");
    assert_eq!(r.first_bad_seq, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loses_nothing() {
    let (mut h, alice) = setup().await;
    h.put_vm_policy(
        "web2",
        json!([{"number": 5986, "protocol": "TCP", "allowedSourceAddressPrefix": "2001:db8:1::/48",
                "maxRequestAccessDuration": "PT2H", "onExpiry": "cut"}]),
    )
    .await;
    let (_, r1) = h
        .initiate(
            &alice,
            one_port("web1", json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.9", "duration": "PT1H"})),
        )
        .await;
    let (_, r2) = h
        .initiate(
            &alice,
            one_port("web2", json!({"number": 22, "allowedSourceAddressPrefix": "2001:db8:1::9", "duration": "PT1H"})),
        )
        .await;
    let (_, hist1) = h.get("/api/v1/virtualMachines/web1/requests", &alice).await;
    let (_, log1) = h.get("/api/v1/activityLog", &h.admin).await;
    let (_, pol1) = h
        .get(
            "/api/v1/virtualMachines/web2/jitNetworkAccessPolicies/default",
            &alice,
        )
        .await;
    let out1 = h
        .app()
        .lifecycle
        .outbox("web1", 0, 100)
        .await
        .expect("outbox");
    let snap = h.snapshot().await;

    h.restart().await;

    assert_eq!(h.snapshot().await, snap);
    let (st, _) = h.get("/api/v1/me", &alice).await;
    assert_eq!(st, StatusCode::OK, "tokens survive");
    assert_eq!(
        h.get("/api/v1/virtualMachines/web1/requests", &alice)
            .await
            .1,
        hist1
    );
    assert_eq!(h.get("/api/v1/activityLog", &h.admin).await.1, log1);
    assert_eq!(
        h.get(
            "/api/v1/virtualMachines/web2/jitNetworkAccessPolicies/default",
            &alice
        )
        .await
        .1,
        pol1
    );
    assert_eq!(
        h.app()
            .lifecycle
            .outbox("web1", 0, 100)
            .await
            .expect("outbox"),
        out1
    );
    for r in [&r1, &r2] {
        let id = r["id"].as_str().expect("id");
        assert_eq!(&h.get(&format!("/api/v1/requests/{id}"), &alice).await.1, r);
    }
    // The chain continues across the restart.
    let (_, v) = h
        .initiate(
            &alice,
            one_port("web1", json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.10", "duration": "PT1H"})),
        )
        .await;
    assert_eq!(status_of(&v), "Initiated");
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures() {
    let (h, alice) = setup().await;
    let (st, v) = h.call(Method::GET, "/api/v1/me", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "Unauthenticated");
    let wrong = format!("jit_{}", "0".repeat(64));
    for t in [wrong.as_str(), "not-a-token", ""] {
        let (st, _) = h.get("/api/v1/me", t).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{t:?}");
    }
    // An unauthenticated request with a bad body is 401, not 400, and writes nothing.
    let before = h.snapshot().await;
    let (st, _) = h
        .call(Method::POST, INIT, Some(&wrong), Some(json!({"x": 1})))
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(h.snapshot().await, before);
    // Revoked and expired tokens.
    let tokens = h.app().tokens.list(&Caller::local()).await.expect("list");
    let alice_id = tokens
        .iter()
        .find(|t| t.name == "alice")
        .expect("alice")
        .id
        .clone();
    h.app()
        .tokens
        .revoke(&Caller::local(), &alice_id)
        .await
        .expect("revoke");
    let (st, _) = h.get("/api/v1/me", &alice).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (_, secret) = h
        .app()
        .tokens
        .create(
            &Caller::local(),
            "temp",
            Role::Reader,
            &jitgate_api::Scope::All,
            Some(now_ms() + 3_600_000),
            &[],
        )
        .await
        .expect("token");
    assert_eq!(h.get("/api/v1/me", &secret).await.0, StatusCode::OK);
    sqlx::query("UPDATE tokens SET expires_ms = 1 WHERE name = 'temp'")
        .execute(h.app().db.pool())
        .await
        .expect("expire");
    assert_eq!(
        h.get("/api/v1/me", &secret).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Only hashes are stored.
    let rows = sqlx::query("SELECT hash FROM tokens")
        .fetch_all(h.app().db.pool())
        .await
        .expect("rows");
    for r in rows {
        use sqlx::Row;
        let hash: String = r.try_get(0).expect("h");
        assert_eq!(hash.len(), 64);
        assert!(!hash.starts_with("jit_"));
    }
    let (_, log) = h
        .get("/api/v1/activityLog?resourceType=Token", &h.admin)
        .await;
    let ops: Vec<&str> = log["value"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["operation"].as_str())
        .collect();
    assert!(ops.contains(&"Create API Token") && ops.contains(&"Revoke API Token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy("prod", policy_prod()).await;
    h.put_rg_policy("dev", policy_prod()).await;
    let roles = [Role::Reader, Role::Requester, Role::Admin];
    let scopes = ["*", "rg:prod", "vm:web1"];
    // Targets: web1 (in prod; in every scope) and db1 (in dev; only in *).
    let targets = [("web1", "prod"), ("db1", "dev")];
    let policy_body = json!({"ports": policy_prod()});
    let mut checked = 0;
    for role in roles {
        for scope in scopes {
            let name = format!("{}-{}", role.as_str(), scope.replace([':', '*'], "x"));
            let tok = h.token(&name, role, scope).await;
            for (vm, rg) in targets {
                let vm_in = match scope {
                    "*" => true,
                    "rg:prod" => rg == "prod",
                    _ => vm == "web1",
                };
                let rg_in = scope == "*" || scope == format!("rg:{rg}");
                // (operation, min role, in scope, method, path, body)
                let ops: Vec<(&str, Role, bool, Method, String, Option<Value>)> = vec![
                    (
                        "get vm",
                        Role::Reader,
                        vm_in,
                        Method::GET,
                        format!("/api/v1/virtualMachines/{vm}"),
                        None,
                    ),
                    (
                        "history",
                        Role::Reader,
                        vm_in,
                        Method::GET,
                        format!("/api/v1/virtualMachines/{vm}/requests"),
                        None,
                    ),
                    (
                        "get rg policy",
                        Role::Reader,
                        rg_in,
                        Method::GET,
                        format!("/api/v1/resourceGroups/{rg}/jitNetworkAccessPolicies/default"),
                        None,
                    ),
                    (
                        "initiate",
                        Role::Requester,
                        vm_in,
                        Method::POST,
                        INIT.to_string(),
                        Some(one_port(
                            vm,
                            json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.1", "duration": "PT1H"}),
                        )),
                    ),
                    (
                        "put vm policy",
                        Role::Admin,
                        vm_in,
                        Method::PUT,
                        format!("/api/v1/virtualMachines/{vm}/jitNetworkAccessPolicies/default"),
                        Some(policy_body.clone()),
                    ),
                    (
                        "get vm policy",
                        Role::Reader,
                        vm_in,
                        Method::GET,
                        format!("/api/v1/virtualMachines/{vm}/jitNetworkAccessPolicies/default"),
                        None,
                    ),
                    (
                        "delete vm policy",
                        Role::Admin,
                        vm_in,
                        Method::DELETE,
                        format!("/api/v1/virtualMachines/{vm}/jitNetworkAccessPolicies/default"),
                        None,
                    ),
                    (
                        "put rg policy",
                        Role::Admin,
                        rg_in,
                        Method::PUT,
                        format!("/api/v1/resourceGroups/{rg}/jitNetworkAccessPolicies/default"),
                        Some(policy_body.clone()),
                    ),
                    (
                        "verify",
                        Role::Reader,
                        scope == "*",
                        Method::GET,
                        "/api/v1/activityLog/verify".into(),
                        None,
                    ),
                ];
                for (op, min, in_scope, method, path, body) in ops {
                    let allowed = role >= min && in_scope;
                    let before = h.snapshot().await;
                    let (st, v) = h.call(method, &path, Some(&tok), body).await;
                    if allowed {
                        assert!(
                            st.is_success() || v["error"]["code"] == "PolicyNotFound",
                            "{name} {op} {vm}: expected success, got {st} {v}"
                        );
                    } else {
                        assert_eq!(st, StatusCode::FORBIDDEN, "{name} {op} {vm}: {v}");
                        assert_eq!(v["error"]["code"], "Forbidden");
                        assert_eq!(h.snapshot().await, before, "{name} {op} {vm} wrote on 403");
                    }
                    checked += 1;
                }
                // Revoke: an admin in scope revokes anyone's; a requester only its own.
                let (_, r) = h
                    .initiate(&h.admin, one_port(vm, json!({"number": 22,
                        "allowedSourceAddressPrefix": format!("203.0.113.{}", 100 + checked % 100), "duration": "PT1H"})))
                    .await;
                let id = r["id"].as_str().expect("id");
                assert_eq!(status_of(&r), "Initiated", "{r}");
                let (st, v) = h
                    .call(
                        Method::POST,
                        &format!("/api/v1/requests/{id}/revoke"),
                        Some(&tok),
                        None,
                    )
                    .await;
                let allowed = role == Role::Admin && vm_in;
                if allowed {
                    assert_eq!(st, StatusCode::OK, "{name} revoke {vm}: {v}");
                } else {
                    assert_eq!(st, StatusCode::FORBIDDEN, "{name} revoke {vm}: {v}");
                }
                if role >= Role::Requester && vm_in {
                    let (_, own) = h
                        .initiate(
                            &tok,
                            one_port(
                                vm,
                                json!({"number": 22,
                            "allowedSourceAddressPrefix": "203.0.113.200", "duration": "PT1H"}),
                            ),
                        )
                        .await;
                    let id = own["id"].as_str().expect("id");
                    let (st, v) = h
                        .call(
                            Method::POST,
                            &format!("/api/v1/requests/{id}/revoke"),
                            Some(&tok),
                            None,
                        )
                        .await;
                    assert_eq!(st, StatusCode::OK, "{name} revoke own {vm}: {v}");
                }
                checked += 1;
            }
            // Listing is filtered to the scope, for every role.
            let (_, v) = h.get("/api/v1/virtualMachines", &tok).await;
            let names: Vec<&str> = v["value"]
                .as_array()
                .expect("list")
                .iter()
                .filter_map(|x| x["name"].as_str())
                .collect();
            let expect: Vec<&str> = match scope {
                "*" => vec!["db1", "web1", "web2"],
                "rg:prod" => vec!["web1", "web2"],
                _ => vec!["web1"],
            };
            assert_eq!(names, expect, "{name}");
            // The activity log is filtered to the scope.
            let (st, v) = h.get("/api/v1/activityLog?limit=100000", &tok).await;
            assert_eq!(st, StatusCode::OK);
            for e in v["value"].as_array().expect("list") {
                match scope {
                    "*" => {}
                    "rg:prod" => assert_eq!(e["resourceGroup"], "prod", "{name}: {e}"),
                    _ => assert_eq!(e["virtualMachine"], "web1", "{name}: {e}"),
                }
            }
        }
    }
    assert!(checked > 150);
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_decides_my_ip() {
    // Trusted: the forwarded address (here IPv6) is "My IP".
    let h = Harness::with_config(|c| c.trusted_proxies = vec!["127.0.0.1/32".into()]).await;
    h.fixture().await;
    h.put_rg_policy("prod", policy_prod()).await;
    let r = h
        .client
        .post(format!("{}{INIT}", h.base))
        .bearer_auth(&h.admin)
        .header("x-forwarded-for", "2001:db8:1::42")
        .json(&one_port("web1", json!({"number": 22, "duration": "PT1H"})))
        .send()
        .await
        .expect("send");
    let v: Value = r.json().await.expect("json");
    assert_eq!(status_of(&v), "Initiated", "{v}");
    assert_eq!(v["callerAddress"], "2001:db8:1::42");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"],
        "2001:db8:1::42/128"
    );
    // IPv4-mapped forwarded address is normalised.
    let r = h
        .client
        .get(format!("{}/api/v1/me", h.base))
        .bearer_auth(&h.admin)
        .header("x-forwarded-for", "::ffff:203.0.113.8")
        .send()
        .await
        .expect("send");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["callerAddress"], "203.0.113.8");
    // Untrusted (default): the header is ignored.
    let h2 = Harness::new().await;
    let r = h2
        .client
        .get(format!("{}/api/v1/me", h2.base))
        .bearer_auth(&h2.admin)
        .header("x-forwarded-for", "2001:db8:1::42")
        .send()
        .await
        .expect("send");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["callerAddress"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_filters_and_exports() {
    let (h, alice) = setup().await;
    h.initiate(
        &alice,
        one_port(
            "web1",
            json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.1", "duration": "PT1H"}),
        ),
    )
    .await;
    h.initiate(
        &alice,
        one_port(
            "web2",
            json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.1", "duration": "PT1H"}),
        ),
    )
    .await;
    let (_, all) = h.get("/api/v1/activityLog", &h.admin).await;
    let all = all["value"].as_array().expect("list").clone();
    let (_, v) = h.get("/api/v1/activityLog?caller=alice", &h.admin).await;
    assert_eq!(v["value"].as_array().expect("l").len(), 2);
    let (_, v) = h.get("/api/v1/activityLog?vm=web2", &h.admin).await;
    assert!(
        v["value"]
            .as_array()
            .expect("l")
            .iter()
            .all(|e| e["virtualMachine"] == "web2")
    );
    let (_, v) = h
        .get(
            "/api/v1/activityLog?resourceGroup=prod&resourceType=ResourceGroup",
            &h.admin,
        )
        .await;
    assert!(
        v["value"]
            .as_array()
            .expect("l")
            .iter()
            .all(|e| e["resourceType"] == "ResourceGroup")
    );
    let (_, v) = h
        .get(
            "/api/v1/activityLog?from=2000-01-01T00:00:00Z&to=2001-01-01T00:00:00Z",
            &h.admin,
        )
        .await;
    assert_eq!(v["value"].as_array().expect("l").len(), 0);
    let (_, v) = h
        .get(
            "/api/v1/activityLog?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
            &h.admin,
        )
        .await;
    assert_eq!(v["value"].as_array().expect("l").len(), all.len());
    // JSON lines and CSV
    let r = h
        .client
        .get(format!("{}/api/v1/activityLog?format=jsonl", h.base))
        .bearer_auth(&h.admin)
        .send()
        .await
        .expect("send");
    let text = r.text().await.expect("text");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(lines, all);
    let r = h
        .client
        .get(format!("{}/api/v1/activityLog?format=csv", h.base))
        .bearer_auth(&h.admin)
        .send()
        .await
        .expect("send");
    let text = r.text().await.expect("text");
    assert!(text.starts_with("seq,timeUtc,operation,"));
    assert!(text.contains("Initiate JIT Network Access"));
    assert_eq!(text.lines().count(), all.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_initiates_are_decided_as_if_one_by_one() {
    // Many concurrent requests (the writer groups them into one transaction when they queue
    // up): the outcome must equal some sequential order, whatever the batching.
    let (h, _) = setup().await;
    let caller = Caller::token(
        "t",
        "carol",
        Role::Requester,
        jitgate_api::Scope::All,
        "127.0.0.1".parse().expect("ip"),
    );
    let mut tasks = Vec::new();
    for i in 0..48u32 {
        let store = h.app().clone();
        let caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            // 3 sources shared by many requests (supersede chains), one unknown VM, one denial
            let vm = if i == 17 { "nope" } else { "web1" };
            let src = if i == 23 {
                "198.51.100.1".to_string()
            } else {
                format!("203.0.113.{}", i % 3)
            };
            let j: jitgate_api::InitiateBody = serde_json::from_value(one_port(
                vm,
                json!({"number": 22, "allowedSourceAddressPrefix": src, "duration": "PT1H"}),
            ))
            .expect("json");
            let req =
                jitgate_controller::request::Initiate::from_body(&j, caller.address, now_ms())
                    .expect("valid");
            store.lifecycle.initiate(&caller, &req).await
        }));
    }
    let mut ok = 0;
    let mut denied = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(r) if r.status.as_str() == "Denied" => {
                assert_eq!(i, 23);
                denied += 1;
            }
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(i, 17, "{e}");
            }
        }
    }
    assert_eq!((ok, denied), (46, 1));
    use sqlx::Row;
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM requests")
        .fetch_one(h.app().db.pool())
        .await
        .expect("count")
        .try_get(0)
        .expect("n");
    assert_eq!(n, 47, "the unknown-VM request wrote nothing");
    // Exactly one active grant per source; every other one superseded by a newer one.
    for src in ["203.0.113.0/32", "203.0.113.1/32", "203.0.113.2/32"] {
        let rows = sqlx::query("SELECT state FROM grants WHERE prefix = $1")
            .bind(src)
            .fetch_all(h.app().db.pool())
            .await
            .expect("rows");
        let active = rows
            .iter()
            .filter(|r| r.try_get::<String, _>(0).expect("s") == "pending")
            .count();
        assert_eq!(active, 1, "{src}");
        assert!(rows.len() >= 14, "{src}");
    }
    let revoked: i64 = sqlx::query(
        "SELECT COUNT(*) FROM request_ports WHERE status = 'Revoked' AND status_reason = 'NewerRequestInitiated'",
    )
    .fetch_one(h.app().db.pool())
    .await
    .expect("count")
    .try_get(0)
    .expect("n");
    assert_eq!(revoked, 46 - 3);
    // Every superseded grant is named in exactly one newer grant's `replaces`.
    let out = h
        .app()
        .lifecycle
        .outbox("web1", 0, 10_000)
        .await
        .expect("outbox");
    let mut replaced: Vec<String> = out.iter().flat_map(|o| o.replaces.clone()).collect();
    replaced.sort();
    let before = replaced.len();
    replaced.dedup();
    assert_eq!(before, replaced.len());
    assert_eq!(replaced.len(), 43);
    assert!(
        h.app()
            .audit
            .verify(&Caller::local())
            .await
            .expect("verify")
            .ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_supersede_within_and_across() {
    // Deterministic batches: the same (VM, port, protocol, prefix) three times in one batch,
    // then three times again in a second batch (superseding a grant already in the database
    // while the key repeats inside the batch), plus an unknown VM and a denial.
    let (h, _) = setup().await;
    let caller = Caller::token(
        "t",
        "carol",
        Role::Requester,
        jitgate_api::Scope::All,
        "127.0.0.1".parse().expect("ip"),
    );
    let job = |vm: &str, src: &str| {
        let j: jitgate_api::InitiateBody = serde_json::from_value(one_port(
            vm,
            json!({"number": 22, "allowedSourceAddressPrefix": src, "duration": "PT1H"}),
        ))
        .expect("json");
        let req = jitgate_controller::request::Initiate::from_body(&j, caller.address, now_ms())
            .expect("valid");
        (caller.clone(), req)
    };
    let mut ids = Vec::new();
    for round in 0..2 {
        let batch = vec![
            job("web1", "203.0.113.50"),
            job("nope", "203.0.113.50"),
            job("web1", "203.0.113.50"),
            job("web1", "198.51.100.1"),
            job("web1", "203.0.113.50"),
        ];
        let res = h
            .app()
            .lifecycle
            .initiate_batch(&batch)
            .await
            .expect("batch");
        assert_eq!(res.len(), 5);
        assert!(res[1].is_err(), "round {round}: unknown VM");
        assert_eq!(res[3].as_ref().expect("ok").status.as_str(), "Denied");
        for i in [0, 2, 4] {
            let r = res[i].as_ref().expect("ok");
            assert_eq!(r.status.as_str(), "Initiated");
            ids.push(r.id.clone());
        }
    }
    // Only the last request is active; each earlier one was superseded by the next.
    for (n, id) in ids.iter().enumerate() {
        let r = h
            .app()
            .lifecycle
            .get(&Caller::local(), id)
            .await
            .expect("rec");
        if n + 1 == ids.len() {
            assert_eq!(r.status.as_str(), "Initiated", "{n}");
        } else {
            assert_eq!(r.status.as_str(), "Revoked", "{n}");
            assert_eq!(
                r.virtual_machines[0].ports[0]
                    .status_reason
                    .as_ref()
                    .map(|r| r.as_str()),
                Some("NewerRequestInitiated")
            );
        }
    }
    let all = h
        .app()
        .lifecycle
        .outbox("web1", 0, 1000)
        .await
        .expect("outbox");
    let out: Vec<_> = all.iter().filter(|o| o.op.as_str() == "apply").collect();
    assert_eq!(out.len(), 6);
    assert_eq!(
        all.len(),
        11,
        "six grants, five revocations of the superseded ones"
    );
    for (n, o) in out.iter().enumerate() {
        let expect: Vec<String> = if n == 0 {
            vec![]
        } else {
            vec![out[n - 1].grant_id.clone()]
        };
        assert_eq!(o.replaces, expect, "outbox {n}");
        // The superseded grant's revocation comes right after the grant that replaces it.
        if n > 0 {
            let next = all.iter().find(|x| x.seq == o.seq + 1).expect("revocation");
            assert_eq!((next.op.as_str(), &next.grant_id), ("revoke", &expect[0]));
        }
    }
    assert!(
        h.app()
            .audit
            .verify(&Caller::local())
            .await
            .expect("verify")
            .ok
    );
}
