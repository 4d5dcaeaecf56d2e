//! The portal's Fleet and Connections pages over real HTTPS, people signed in through the
//! real OpenID provider, agents on the real agent channel: the fleet's fields as the agents
//! reported them, filters and keyset pages, scope, hostile agent text inert, an agent's
//! delivered records and their verification (and a rewrite named), and a VM's connections
//! under their request and justification, the denied attempts on request, exports equal to
//! the API's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/portal_client.rs"]
mod portal_client;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use std::time::Duration;

use common::agent::{Agent, Creds, enroll};
use common::lab::{HOSTILE, apply_next_grant, lab};
use common::one_port;
use jitgate_api::Role;
use jitgate_controller::authz::Caller;
use jitgate_proto::message::{AuditRecord, Heartbeat, StatusReport};
use jitgate_proto::{AgentMsg, ControllerMsg};
use portal_client::{Portal, check_headers};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

/// The agent ids a Fleet page lists, in order.
fn agents(body: &str) -> Vec<String> {
    body.split("<tr id=\"agent-")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

/// The record seqs an agent page lists, in order.
fn records(body: &str) -> Vec<i64> {
    body.split("<tr id=\"record-")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect()
}

/// The href of the link whose text is `text`.
fn link(body: &str, text: &str) -> String {
    let end = body
        .find(&format!("\">{text}</a>"))
        .unwrap_or_else(|| panic!("no link {text:?}"));
    let start = body[..end].rfind("href=\"").unwrap() + 6;
    body[start..end].replace("&amp;", "&").replace("&#38;", "&")
}

/// A hash-chained record trail as an agent writes it (agent/src/audit.rs): each body gets
/// id, seq, prev and hash; an `audit.checkpoint` is signed with the agent's key.
fn trail(c: &Creds, bodies: &[Value]) -> Vec<AuditRecord> {
    let agent = c.id.to_string();
    let mut prev = jitgate_proto::audit::GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let seq = i as u64 + 1;
        let mut body = serde_json::Map::new();
        body.insert("id".into(), json!(format!("evt-{seq}")));
        body.insert("seq".into(), json!(seq));
        for (k, v) in b.as_object().unwrap() {
            body.insert(k.clone(), v.clone());
        }
        if b["kind"] == "audit.checkpoint" {
            let m = jitgate_proto::audit::agent_checkpoint_message(&agent, seq - 1, &prev);
            let sig = jitgate_proto::audit::agent_sign(&c.key.serialize_pem(), &m).unwrap();
            body.insert("signature".into(), json!(sig));
        }
        body.insert("prev".into(), json!(prev));
        let text = serde_json::to_string(&body).unwrap();
        let hash = jitgate_proto::audit::agent_record_hash(&prev, text.as_bytes());
        out.push(AuditRecord {
            seq,
            id: format!("evt-{seq}"),
            line: format!("{},\"hash\":\"{hash}\"}}", &text[..text.len() - 1]),
        });
        prev = hash;
    }
    out
}

/// Delivers records; the controller's acknowledgement.
async fn deliver(a: &mut Agent, records: Vec<AuditRecord>) -> u64 {
    a.send(&AgentMsg::Audit { records }).await;
    loop {
        match a.recv().await {
            ControllerMsg::AuditAck { up_to } => return up_to,
            ControllerMsg::Active { .. } => {}
            m => panic!("{m:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_and_connections_pages() {
    let p = Portal::start().await;
    let h = &p.h;
    // web2 (prod) has an agent on the channel; tools1 (group ops) one that never connected.
    let (mut web2, creds) = lab(h).await;
    let tools1 = enroll(h, "tools1").await;
    let web2_id = creds.id.to_string();
    let tools1_id = tools1.id.to_string();
    let now = jitgate_api::time::now_ms();
    web2.send(&AgentMsg::Status(Box::new(StatusReport {
        heartbeat: Heartbeat {
            interfaces: vec![("eth0".into(), "native".into())],
            protected: vec!["22/tcp:cut".parse().unwrap()],
            listening: vec![],
            active_grants: 1,
            audit_head: "ab".repeat(32),
            audit_seq: 3,
        },
        addresses: vec![],
        // An agent's own words, hostile: shown as text.
        problems: vec![HOSTILE.into()],
        agent_unix_ms: now + 60_000,
    })))
    .await;

    let alice = p.sign_in("alice").await; // admin on *
    let bob = p.sign_in("bob").await; // requester on rg:prod, reader on rg:dev
    let carol = p.sign_in("carol").await; // no role

    // The report is stored when the page shows it.
    let mut page = p.get(&alice, "/fleet").await;
    for _ in 0..100 {
        if page.body.contains("eth0 (native)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        page = p.get(&alice, "/fleet").await;
    }
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    check_headers(&page.headers);
    assert!(
        page.body
            .contains("<a href=\"/fleet\" aria-current=\"page\">Fleet</a>")
    );
    assert_eq!(agents(&page.body), [tools1_id.clone(), web2_id.clone()]);
    let row = |body: &str, id: &str| -> String {
        let at = body.find(&format!("<tr id=\"agent-{id}\"")).unwrap();
        body[at..at + body[at..].find("</tr>").unwrap()].to_string()
    };
    let w = row(&page.body, &web2_id);
    for want in [
        ">web2</a>",
        "degraded: ",
        "eth0 (native)",
        "22/tcp:cut",
        "<td>1</td>",
        "record 3 (abababababab…)",
        "delivered none",
        "test (protocol 1)",
    ] {
        assert!(w.contains(want), "{want:?} in {w}");
    }
    // The offset: the agent's clock a minute ahead (less the transit).
    assert!(w.contains("<td>+59") || w.contains("<td>+60000 ms"), "{w}");
    // Hostile agent text is text.
    assert!(!page.body.contains("<script>alert") && !page.body.contains("<img src=x"));
    assert!(w.contains("&#60;img src=x onerror=alert(2)&#62;"), "{w}");
    let t = row(&page.body, &tools1_id);
    assert!(t.contains("offline (never connected)"), "{t}");
    assert!(
        t.contains(">never</td>") && t.contains("not reported"),
        "{t}"
    );

    // Filters: by state (as the API names it) and by part of the VM's name.
    let f = p.get(&alice, "/fleet?status=offline").await;
    assert_eq!(agents(&f.body), [tools1_id.as_str()]);
    let f = p.get(&alice, "/fleet?status=degraded&q=WEB").await;
    assert_eq!(agents(&f.body), [web2_id.as_str()]);
    let f = p.get(&alice, "/fleet?status=online").await;
    assert!(agents(&f.body).is_empty());
    assert!(f.body.contains("No agent matches the filter"));
    let f = p.get(&alice, "/fleet?status=sleeping").await;
    assert_eq!(f.status, StatusCode::BAD_REQUEST);
    assert!(
        f.body.contains("online, degraded, offline or revoked"),
        "{}",
        f.body
    );
    // The API says the same.
    let v: Value = serde_json::from_str(&p.api_text("/api/v1/agents").await).unwrap();
    let state = |id: &str| {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agentId"] == id)
            .unwrap()["connection"]
            .clone()
    };
    assert_eq!(state(&web2_id), "degraded");
    assert_eq!(state(&tools1_id), "offline");

    // Scope: bob sees prod and dev, not ops; carol nothing.
    let b = p.get(&bob, "/fleet").await;
    assert_eq!(agents(&b.body), [web2_id.as_str()]);
    let b = p.get(&bob, &format!("/fleet/{tools1_id}")).await;
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    let c = p.get(&carol, "/fleet").await;
    assert_eq!(c.status, StatusCode::OK);
    assert!(agents(&c.body).is_empty());

    // A request on web2 with a hostile justification, applied by the agent.
    let requester = h.token("ops", Role::Requester, "rg:prod").await;
    let mut body = one_port(
        "web2",
        json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
    );
    body["justification"] = json!(HOSTILE);
    let (st, req) = h.initiate(&requester, body).await;
    assert_eq!(st, StatusCode::OK, "{req}");
    let rid = req["id"].as_str().unwrap().to_string();
    apply_next_grant(&mut web2, &creds).await;
    let gid: String = sqlx::query("SELECT id FROM grants WHERE request_id = $1")
        .bind(&rid)
        .fetch_one(h.app().db.pool())
        .await
        .unwrap()
        .get(0);
    let trail = trail(
        &creds,
        &[
            json!({"time": "2026-11-30T10:00:00Z", "kind": "connection.denied", "actor": "kernel",
                   "source": "198.51.100.9:40000", "protocol": "tcp", "port": 22, "reason": "no_grant"}),
            json!({"time": "2026-11-30T10:00:01Z", "kind": "connection.admitted", "actor": "kernel",
                   "source": "203.0.113.5:40001", "protocol": "tcp", "port": 22, "grantId": gid}),
            json!({"time": "2026-11-30T10:00:02Z", "kind": "audit.checkpoint", "actor": "agent"}),
        ],
    );
    assert_eq!(deliver(&mut web2, trail).await, 3);

    // The VM page links to its connections and its agent.
    let vm = p.get(&alice, "/vms/web2").await;
    assert!(vm.body.contains("href=\"/vms/web2/connections\""));
    let to = p.get(&alice, "/vms/web2/agent").await;
    assert_eq!(to.status, StatusCode::SEE_OTHER);
    assert_eq!(to.location(), format!("/fleet/{web2_id}"));
    assert_eq!(
        p.get(&alice, "/vms/web1/agent").await.status,
        StatusCode::NOT_FOUND
    );

    // The agent's page: its records newest first, verified on request.
    let a = p.get(&alice, &format!("/fleet/{web2_id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    check_headers(&a.headers);
    assert_eq!(records(&a.body), [3, 2, 1]);
    assert!(a.body.contains("delivered up to record 3") || a.body.contains("up to record 3"));
    assert!(a.body.contains("connection.admitted"));
    assert!(
        !a.body.contains("id=\"verdict\""),
        "verified only on request"
    );
    let verify = format!("/fleet/{web2_id}/verify");
    let refused = p.post(&alice, &verify, &p.public, &[("csrf", "x")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let foreign = p
        .post(
            &alice,
            &verify,
            "https://evil.example",
            &[("csrf", &a.csrf())],
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let v = p
        .post(&alice, &verify, &p.public, &[("csrf", &a.csrf())])
        .await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
    assert!(
        v.body
            .contains("Verified: records 1 to 3 (3 records) chain correctly"),
        "{}",
        v.body
    );
    assert!(v.body.contains("1 signed checkpoints match"), "{}", v.body);

    // Connections: under the request and its justification; denied ones on request.
    let c = p.get(&alice, "/vms/web2/connections").await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    check_headers(&c.headers);
    assert_eq!(
        c.body.matches("<tr class=\"admitted\">").count(),
        1,
        "{}",
        c.body
    );
    assert!(!c.body.contains("class=\"denied\""));
    for want in [
        "203.0.113.5:40001",
        "22/tcp",
        "<td>request</td>",
        "<td>ops</td>",
        &format!("<a href=\"/requests/{rid}\">{rid}</a>"),
        "&#60;img src=x onerror=alert(2)&#62;",
    ] {
        assert!(c.body.contains(want), "{want:?} in {}", c.body);
    }
    assert!(!c.body.contains("<script>alert") && !c.body.contains("<img src=x"));
    let d = p
        .get(&alice, &link(&c.body, "Show the denied attempts too"))
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(
        d.body.matches("<tr class=\"denied\">").count(),
        1,
        "{}",
        d.body
    );
    assert!(d.body.contains("denied: no_grant") && d.body.contains("198.51.100.9:40000"));
    assert!(d.body.contains("Hide the denied attempts"));
    // Exports: the API's answer to the same filter.
    for (format, api_format) in [("csv", "&format=csv"), ("json", "")] {
        let r = p
            .get(
                &alice,
                &format!("/vms/web2/connections/export?denied=1&format={format}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.headers["content-disposition"],
            format!("attachment; filename=\"jitgate-connections.{format}\"")
        );
        let mine = r.body;
        let theirs = p
            .api_text(&format!(
                "/api/v1/virtualMachines/web2/connections?denied=true&limit=100000{api_format}"
            ))
            .await;
        assert_eq!(mine, theirs);
        if format == "csv" {
            // The header, the admitted connection and the denied attempt.
            assert_eq!(mine.lines().count(), 3, "{mine}");
        }
    }
    // Outside the scope: refused; bad filters: refused in words.
    let out = p.get(&bob, "/vms/tools1/connections").await;
    assert_eq!(out.status, StatusCode::FORBIDDEN);
    let out = p
        .get(&carol, "/vms/web2/connections/export?format=csv")
        .await;
    assert_eq!(out.status, StatusCode::FORBIDDEN);
    let bad = p.get(&alice, "/vms/web2/connections?from=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("is not a time"), "{}", bad.body);

    // A record rewritten in the database: the verification names it.
    sqlx::query(
        "UPDATE agent_audit SET line = REPLACE(line, '198.51.100.9', '198.51.100.8') \
         WHERE agent_id = $1 AND seq = 1",
    )
    .bind(&web2_id)
    .execute(h.app().db.pool())
    .await
    .unwrap();
    let v = p
        .post(&alice, &verify, &p.public, &[("csrf", &a.csrf())])
        .await;
    assert!(
        v.body
            .contains("Verification FAILED at record 1: record 1 was altered"),
        "{}",
        v.body
    );

    // Keyset pages: 55 more agents (never connected), 50 a page, none twice.
    for i in 0..55 {
        let name = format!("n{i:02}");
        h.app()
            .inventory
            .add_vm(&Caller::local(), &name, "prod", &[])
            .await
            .unwrap();
        enroll(h, &name).await;
    }
    let first = p.get(&alice, "/fleet?status=offline").await;
    let mut seen = agents(&first.body);
    assert_eq!(seen.len(), 50);
    let second = p.get(&alice, &link(&first.body, "Next agents")).await;
    seen.extend(agents(&second.body));
    assert_eq!(seen.len(), 56, "55 new and tools1's");
    assert!(!second.body.contains("Next agents"));
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len());
}

/// The Keys page: admins on `*` see every key and, during a rotation, the active agents that
/// have not acknowledged the announced key and when the leader switches anyway; the entry
/// and the page are refused to anyone else; no private half or key file is ever named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_page_for_admins_only() {
    use jitgate_controller::keys::files::KeyDir;
    use jitgate_controller::keys::rotation::Rotation;

    let p = Portal::start().await;
    let h = &p.h;
    let (_web2, creds) = lab(h).await;
    let tools1 = enroll(h, "tools1").await;
    let alice = p.sign_in("alice").await; // admin on *
    let bob = p.sign_in("bob").await; // requester on rg:prod, reader on rg:dev

    let page = p.get(&alice, "/keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    check_headers(&page.headers);
    assert!(
        page.body
            .contains("<a href=\"/keys\" aria-current=\"page\">Keys</a>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("No rotation under way."),
        "{}",
        page.body
    );
    assert_eq!(page.body.matches("<tr id=\"key-").count(), 1);

    let rotated = Rotation::new(h.app().db.clone(), KeyDir::new(h.dir.signing_key()))
        .rotate(&jitgate_controller::authz::Actor::local())
        .await
        .expect("rotate");
    let page = p.get(&alice, "/keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.body.matches("<tr id=\"key-").count(), 2);
    assert!(
        page.body
            .contains(&format!("Rotating to <code>{}</code>", rotated.key_id)),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"switch-due\""), "{}", page.body);
    // Both agents are active and neither answered the announcement.
    for id in [creds.id.to_string(), tools1.id.to_string()] {
        assert!(
            page.body.contains(&format!("<tr id=\"waiting-{id}\">")),
            "{id}: {}",
            page.body
        );
    }
    // What the page shows is what the API says.
    let api: Value = serde_json::from_str(&p.api_text("/api/v1/keys").await).unwrap();
    assert_eq!(api["rotatingTo"], rotated.key_id.as_str(), "{api}");
    assert_eq!(
        api["keys"][1]["notAcknowledged"].as_array().unwrap().len(),
        2,
        "{api}"
    );
    for text in [&page.body, &api.to_string()] {
        assert!(
            !text.contains("PRIVATE") && !text.contains(".key"),
            "{text}"
        );
    }

    // Anyone but an admin on *: no entry, no page.
    let page = p.get(&bob, "/jit").await;
    assert!(!page.body.contains("href=\"/keys\""), "{}", page.body);
    let page = p.get(&bob, "/keys").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(!page.body.contains(&rotated.key_id), "{}", page.body);
}

/// Text as the portal's templates escape it (askama's HTML escaper).
fn escaped(s: &str) -> String {
    s.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// The Keys page during a rotation names the live controllers of the cluster that lack the
/// announced key's private half (`controllersLackingKey` of `GET /api/v1/keys`: the
/// automatic switch waits for them), their names escaped, and has no such line once every
/// controller holds the key. A real second controller (its state directory copied before
/// the rotation) and a controller whose host name carries markup (a row as its key ring
/// writes it). PostgreSQL only: controllers publish their key holdings there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_page_names_the_controllers_lacking_the_announced_key() {
    use jitgate_controller::authz::Actor;
    use jitgate_controller::keys::files::KeyDir;
    use jitgate_controller::keys::rotation::Rotation;
    use jitgate_controller::store::controller_keys;

    if !common::postgres_backend() {
        eprintln!("PostgreSQL only (JIT_TEST_BACKEND=postgres): one controller on SQLite");
        return;
    }
    /// The host name of the other controller (the kernel's host name is any text).
    const MARKUP: &str = "ops<b>bold</b>&\"q'/1";
    let p = Portal::start().await;
    let h = &p.h;
    // An agent that never acknowledges: the switch waits for the grace (a day), so the
    // rotation stays under way through the test.
    h.fixture().await;
    let _web1 = enroll(h, "web1").await;
    let alice = p.sign_in("alice").await; // admin on *
    // B: the portal's address is A's; B listens elsewhere.
    let mut b = h.second().await;
    let b_name = b.app().leader.holder().to_string();
    let a_name = h.app().leader.holder().to_string();
    let (old,): (String,) = sqlx::query_as("SELECT key_id FROM grant_keys WHERE state = 'current'")
        .fetch_one(h.app().db.pool())
        .await
        .unwrap();
    let key = Rotation::new(h.app().db.clone(), KeyDir::new(h.dir.signing_key()))
        .rotate(&Actor::local())
        .await
        .expect("rotate")
        .key_id
        .to_string();
    let publish = |held: Vec<String>| async move {
        controller_keys::publish(
            h.app().db.pool(),
            MARKUP,
            &held,
            jitgate_api::time::now_ms() + 60_000,
        )
        .await
        .unwrap();
    };
    publish(vec![old.clone()]).await;

    // The API names B and the other controller (A holds the key it rotated to).
    let lacking = || async {
        let api: Value = serde_json::from_str(&p.api_text("/api/v1/keys").await).unwrap();
        assert_eq!(api["rotatingTo"], key.as_str(), "{api}");
        let mut names: Vec<String> = api["controllersLackingKey"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    // What the API names, once it names `want` (20 s at most: holdings are published every 2 s).
    let lacking_becomes = |want: Vec<String>| async move {
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = lacking().await;
            if seen == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    };
    let mut both = vec![b_name.clone(), MARKUP.to_string()];
    both.sort();
    assert_eq!(lacking_becomes(both.clone()).await, both, "A is {a_name}");

    let page = p.get(&alice, "/keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains(&format!("Rotating to <code>{key}</code>")),
        "{}",
        page.body
    );
    let line = page
        .body
        .split_once("<p id=\"lacking\">")
        .and_then(|(_, rest)| rest.split_once("</p>"))
        .map(|(line, _)| line.to_string())
        .unwrap_or_else(|| panic!("no line of the controllers lacking the key: {}", page.body));
    assert!(line.contains("2 controller(s)"), "{line}");
    for name in [&b_name, MARKUP] {
        assert!(
            line.contains(&format!("<code>{}</code>", escaped(name))),
            "{name}: {line}"
        );
    }
    assert!(!line.contains(&escaped(&a_name)), "{line}");
    assert!(!page.body.contains("<b>bold</b>"), "{}", page.body);

    // Every controller holds it: B gets the key file, the other one publishes it. Still
    // rotating (the agent has not acknowledged): no such line.
    std::fs::copy(
        h.dir
            .signing_key()
            .with_file_name(format!("grant-{key}.key")),
        b.dir
            .signing_key()
            .with_file_name(format!("grant-{key}.key")),
    )
    .unwrap();
    publish(vec![old.clone(), key.clone()]).await;
    assert_eq!(lacking_becomes(Vec::new()).await, Vec::<String>::new());
    let page = p.get(&alice, "/keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains(&format!("Rotating to <code>{key}</code>")),
        "{}",
        page.body
    );
    assert!(!page.body.contains("id=\"lacking\""), "{}", page.body);
    assert!(
        !page.body.contains("lack its private half"),
        "{}",
        page.body
    );
    if let Some(s) = b.server.take() {
        s.stop().await;
    }
}
