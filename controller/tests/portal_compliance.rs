//! The portal's compliance dashboard over real HTTPS, people signed in through the real
//! OpenID provider, agents on the real agent channel: web1 reports every management port
//! protected (compliant), web2 an sshd listening on every interface with nothing protected
//! and an interface with a hostile name and no enforcement (non-compliant), tools1 (owner
//! hostile) and a VM whose owner is a spreadsheet formula have no agent (unknown). The
//! findings in words grouped by owner and by resource group, the filters (scope, as of),
//! both exports equal to `GET /api/v1/compliance`'s, the chart with one point per
//! evaluation and its accessible numbers, Scan now, assignments and Remediate (with its
//! confirmation) through forms, each with the API's rights and activity entries; CSRF and
//! Origin refusals and a requester's attempts that change nothing.
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
use common::lab::lab;
use jitgate_common::Protocol;
use jitgate_controller::authz::Caller;
use jitgate_proto::AgentMsg;
use jitgate_proto::message::{Heartbeat, StatusReport};
use portal_client::{Page, Portal};
use reqwest::StatusCode;
use serde_json::Value;

/// An interface name as a hostile agent could report it.
const IFACE: &str = "eth<b>1\"</b>";
/// An owner that a spreadsheet would run as a formula.
const FORMULA: &str = "=HYPERLINK(\"https://evil.example\",\"x\")";

/// Every management port of the default configuration.
const ALL_MGMT: [&str; 5] = [
    "22/tcp:cut",
    "3389/tcp:cut",
    "5985/tcp:cut",
    "5986/tcp:cut",
    "3389/udp:cut",
];

/// A status report: attached to eth0, `protected`, sshd on every interface, the addresses.
async fn report(a: &mut Agent, protected: &[&str], addresses: Vec<(String, String)>) {
    a.send(&AgentMsg::Status(Box::new(StatusReport {
        heartbeat: Heartbeat {
            interfaces: vec![("eth0".into(), "native".into())],
            protected: protected.iter().map(|p| p.parse().unwrap()).collect(),
            listening: vec![(Protocol::Tcp, "0.0.0.0:22".into())],
            active_grants: 0,
            audit_head: "ab".repeat(32),
            audit_seq: 0,
        },
        addresses,
        problems: vec![],
        agent_unix_ms: jitgate_api::time::now_ms(),
    })))
    .await;
}

async fn api(p: &Portal, path: &str) -> Value {
    serde_json::from_str(&p.api_text(path).await).unwrap()
}

/// The evaluations `GET /api/v1/compliance/history` lists.
async fn history(p: &Portal) -> Vec<Value> {
    api(p, "/api/v1/compliance/history").await["value"]
        .as_array()
        .unwrap()
        .clone()
}

async fn assignments(p: &Portal) -> Vec<Value> {
    api(p, "/api/v1/compliance/assignments").await["value"]
        .as_array()
        .unwrap()
        .clone()
}

/// The activity entries with `operation`.
async fn entries(p: &Portal, operation: &str) -> Vec<Value> {
    api(p, "/api/v1/activityLog").await["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == operation)
        .cloned()
        .collect()
}

/// The resource article of `name` on a dashboard.
fn resource(body: &str, name: &str) -> String {
    let at = body
        .find(&format!("<article class=\"resource\" id=\"res-{name}\""))
        .unwrap_or_else(|| panic!("no {name}: {body}"));
    body[at..at + body[at..].find("</article>").unwrap()].to_string()
}

/// The section of the dashboard under heading `id`.
fn section(body: &str, id: &str) -> String {
    let at = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no {id}: {body}"));
    let rest = &body[at..];
    rest[..rest.find("<h2 ").unwrap_or(rest.len())].to_string()
}

/// The points of the chart.
fn points(body: &str) -> Vec<i64> {
    body.split("<circle class=\"point\" data-scan=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect()
}

/// Nothing a person or an agent wrote became markup.
fn inert(page: &Page) {
    for bad in ["<script>alert", "<img src=x", "<b>1"] {
        assert!(!page.body.contains(bad), "{bad:?} in {}", page.body);
    }
}

/// Waits until the agents' reports are stored (the fleet page shows both attached).
async fn reports_stored(p: &Portal, cookie: &str) {
    for _ in 0..200 {
        if p.get(cookie, "/fleet")
            .await
            .body
            .matches("eth0 (native)")
            .count()
            >= 2
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the status reports never arrived");
}

async fn connect(c: &Creds) -> Agent {
    let mut a = Agent::connect(c).await;
    a.handshake(c, 0).await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_dashboard() {
    let p = Portal::start().await;
    let h = &p.h;
    let (mut web2, _web2_creds) = lab(h).await;
    h.app()
        .inventory
        .add_group(&Caller::local(), "fin", FORMULA)
        .await
        .unwrap();
    h.app()
        .inventory
        .add_vm(
            &Caller::local(),
            "pay1",
            "fin",
            &["198.51.100.8".parse().unwrap()],
        )
        .await
        .unwrap();
    let web1_creds = enroll(h, "web1").await;
    let mut web1 = connect(&web1_creds).await;
    report(
        &mut web1,
        &ALL_MGMT,
        vec![("eth0".into(), "192.0.2.11".into())],
    )
    .await;
    report(
        &mut web2,
        &[],
        vec![
            ("eth0".into(), "192.0.2.12".into()),
            (IFACE.into(), "198.51.100.20".into()),
        ],
    )
    .await;

    let alice = p.sign_in("alice").await; // admin on *
    let bob = p.sign_in("bob").await; // requester on rg:prod, reader on rg:dev
    reports_stored(&p, &alice).await;

    // Nothing assigned, nothing evaluated.
    let page = p.get(&alice, "/compliance").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains("<a href=\"/compliance\" aria-current=\"page\">Compliance</a>")
    );
    assert!(page.body.contains("No evaluation yet."), "{}", page.body);
    assert!(page.body.contains("Not assigned anywhere"));
    let csrf = page.csrf();

    // A requester may look but not change: every form refused, nothing changed.
    let bobs = p.get(&bob, "/compliance").await;
    assert_eq!(bobs.status, StatusCode::OK, "{}", bobs.body);
    for form in [
        "action=\"/compliance/scan\"",
        "action=\"/compliance/assignments\"",
    ] {
        assert!(!bobs.body.contains(form), "{form}: {}", bobs.body);
    }
    let bob_csrf = bobs.csrf();
    let refused_for_bob = [
        ("/compliance/assignments", vec![("scope", "*")]),
        ("/compliance/scan", vec![]),
        ("/compliance/scan", vec![("probe", "1")]),
        ("/compliance/remediate", vec![("vm", "web2")]),
    ];
    for (path, fields) in &refused_for_bob {
        let mut f = fields.clone();
        f.push(("csrf", bob_csrf.as_str()));
        let r = p.post(&bob, path, &p.public, &f).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert!(r.body.contains("Not allowed"), "{}", r.body);
    }
    assert!(assignments(&p).await.is_empty());
    assert!(history(&p).await.is_empty());

    // Assign the fleet through the form; twice is refused in words.
    let r = p
        .post(
            &alice,
            "/compliance/assignments",
            &p.public,
            &[("csrf", &csrf), ("scope", "*")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("The compliance policy is assigned at *"),
        "{}",
        r.body
    );
    let a = assignments(&p).await;
    assert_eq!(a.len(), 1, "{a:?}");
    let asg = a[0]["id"].as_str().unwrap().to_string();
    assert!(
        r.body
            .contains(&format!("<tr id=\"asg-{asg}\"><td>*</td><td>audit</td>")),
        "{}",
        r.body
    );
    let r = p
        .post(
            &alice,
            "/compliance/assignments",
            &p.public,
            &[("csrf", &csrf), ("scope", "*")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let e = entries(&p, "Assign Compliance Policy").await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_ne!(e[0]["caller"], "token:admin", "{e:?}");

    // Scan now.
    let r = p
        .post(&alice, "/compliance/scan", &p.public, &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let s1 = history(&p).await;
    assert_eq!(s1.len(), 1);
    let s1 = s1[0].clone();
    assert_eq!(s1["reason"], "on-demand");
    assert!(
        r.body.contains(&format!(
            "Evaluation {} done (from the agents&#39; reports and the last probe): 1 compliant, 1 non-compliant, 3 unknown, 0 unmanaged hosts; 50.0 % compliant.",
            s1["scanId"]
        )),
        "{}",
        r.body
    );

    // The dashboard: counts, web2's findings in words under its owner, the unknown VMs,
    // web1 compliant; hostile text inert.
    let page = p.get(&alice, "/compliance").await;
    assert_eq!(page.status, StatusCode::OK);
    inert(&page);
    assert!(
        page.body
            .contains("<td id=\"percentage\"><strong>50.0 %</strong></td>"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("<td id=\"non-compliant\" class=\"error\">1</td>")
    );
    assert!(page.body.contains("<td id=\"unknown\">3</td>"));
    let nc = section(&page.body, "nc-h");
    assert!(
        nc.contains("Owner <bdi>prod-team@example.com</bdi> <span class=\"hint\">1 non-compliant</span></h3>"),
        "{nc}"
    );
    let w2 = resource(&nc, "web2");
    for want in [
        "VM <a href=\"/vms/web2\">web2</a> <strong class=\"rstate\">NonCompliant</strong>",
        "<strong>Listening without JIT</strong><br><span class=\"hint\">ListeningUnprotected</span></td><td class=\"nowrap\">22/TCP</td><td>* (every interface)</td><td class=\"nowrap\">0.0.0.0</td><td>22/TCP listens on 0.0.0.0 and is not in the agent&#39;s protected set</td>",
        "<strong>Interface without enforcement</strong>",
        "<td>eth&#60;b&#62;1&#34;&#60;/b&#62;</td><td class=\"nowrap\">198.51.100.20</td>",
        "href=\"/compliance/remediate?vm=web2\">Remediate web2</a>",
    ] {
        assert!(w2.contains(want), "{want:?} in {w2}");
    }
    assert!(
        !nc.contains("res-web1") && !nc.contains("res-tools1"),
        "{nc}"
    );
    let unknown = section(&page.body, "unknown-h");
    let t1 = resource(&unknown, "tools1");
    assert!(
        t1.contains("owner <bdi>&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{t1}"
    );
    // The bidi override stays inside its <bdi>: it cannot reorder the page around it.
    assert!(t1.contains("\u{202e}cba</bdi>"), "{t1}");
    assert!(t1.contains("<strong>No agent</strong>"), "{t1}");
    assert!(
        !t1.contains("Remediate"),
        "remediation does not help without an agent: {t1}"
    );
    for vm in ["db1", "pay1"] {
        resource(&unknown, vm);
    }
    assert!(
        section(&page.body, "ok-h").contains("<li id=\"ok-web1\"><a href=\"/vms/web1\">web1</a>")
    );
    assert!(section(&page.body, "unmanaged-h").contains("<p>None.</p>"));
    // By resource group, and one scope.
    let by_rg = p.get(&alice, "/compliance?group=resourceGroup").await;
    assert!(
        by_rg.body.contains("Resource group <bdi>prod</bdi> <span class=\"hint\">(owner <bdi>prod-team@example.com</bdi>)</span> <span class=\"hint\">1 non-compliant</span></h3>"),
        "{}",
        by_rg.body
    );
    let dev = p.get(&alice, "/compliance?scope=rg%3Adev").await;
    assert!(dev.body.contains("id=\"res-db1\"") && !dev.body.contains("id=\"res-web2\""));
    assert!(dev.body.contains("value=\"rg:dev\""));
    for bad in [
        "/compliance?group=team",
        "/compliance?scope=bad",
        "/compliance?at=yesterday",
        "/compliance?nosuch=1",
    ] {
        let r = p.get(&alice, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }

    // The exports equal the API's answer for the same filter; the CSV is formula-safe.
    for (portal, api_path) in [
        ("format=csv", "format=csv"),
        ("scope=rg%3Aprod&format=csv", "scope=rg%3Aprod&format=csv"),
        ("format=json", ""),
        ("group=owner&format=json", "groupBy=owner"),
    ] {
        let got = p.get(&alice, &format!("/compliance/export?{portal}")).await;
        assert_eq!(got.status, StatusCode::OK, "{portal}: {}", got.body);
        let want = p.api_text(&format!("/api/v1/compliance?{api_path}")).await;
        assert_eq!(got.body, want, "{portal}");
        let ext = if portal.ends_with("csv") {
            "csv"
        } else {
            "json"
        };
        assert_eq!(
            got.headers["content-disposition"],
            format!("attachment; filename=\"compliance.{ext}\"").as_str()
        );
    }
    let csv = p.get(&alice, "/compliance/export?format=csv").await.body;
    assert!(
        csv.contains(",\"'=HYPERLINK(\"\"https://evil.example\"\""),
        "{csv}"
    );
    assert!(
        !csv.contains(",=HYPERLINK(") && !csv.contains(",\"=HYPERLINK("),
        "{csv}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("web2,")).count(),
        2,
        "{csv}"
    );
    let r = p.get(&alice, "/compliance/export?format=xml").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Bob sees his scopes (prod, dev), not ops or fin, no chart, no remediation.
    let bobs = p.get(&bob, "/compliance").await;
    inert(&bobs);
    assert!(bobs.body.contains("id=\"res-web2\"") && bobs.body.contains("id=\"res-db1\""));
    assert!(!bobs.body.contains("id=\"res-tools1\"") && !bobs.body.contains("id=\"res-pay1\""));
    // His chart counts his scopes: the same evaluations, the newest one's point the numbers
    // of his report (the fleet's would count ops and fin too).
    assert!(
        bobs.body.contains(
            "<title id=\"chart-title\">Compliance percentage per evaluation (the VMs within your scope)</title>"
        ),
        "{}",
        bobs.body
    );
    let ids: Vec<i64> = history(&p)
        .await
        .iter()
        .map(|s| s["scanId"].as_i64().unwrap())
        .collect();
    assert_eq!(points(&bobs.body), ids);
    let cell = |id: &str| -> i64 {
        let at = bobs.body.find(&format!("id=\"{id}\"")).unwrap();
        let rest = &bobs.body[at..];
        let v = &rest[rest.find('>').unwrap() + 1..rest.find("</td>").unwrap()];
        v.parse().unwrap()
    };
    let (ok, bad, unknown) = (cell("compliant"), cell("non-compliant"), cell("unknown"));
    let fleet = history(&p).await.last().unwrap().clone();
    let n = |k: &str| fleet[k].as_i64().unwrap();
    assert_ne!(
        (
            n("compliant"),
            n("nonCompliant"),
            n("unknown"),
            n("unmanaged")
        ),
        (ok, bad, unknown, 0),
        "the fixture's fleet differs from bob's part"
    );
    let last = *ids.last().unwrap();
    let row = &bobs.body[bobs.body.find(&format!("<tr id=\"scan-{last}\">")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.ends_with(&format!(
            "<td>{ok}</td><td>{bad}</td><td>{unknown}</td><td>0</td>"
        )),
        "{row}"
    );
    assert!(!bobs.body.contains("Remediate web2"));
    let r = p.get(&bob, "/compliance/remediate?vm=web2").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(p.get(&bob, "/compliance/export?format=csv").await.body, {
        // The API's answer to bob's own scopes: prod and dev only.
        let csv = p.api_text("/api/v1/compliance?format=csv").await;
        csv.lines()
            .filter(|l| !l.contains(",ops,") && !l.contains(",fin,"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    });

    // CSRF and Origin: every form refused without its token or from elsewhere.
    let before = (history(&p).await.len(), assignments(&p).await.len());
    let forms = [
        ("/compliance/scan".to_string(), vec![]),
        ("/compliance/scan".to_string(), vec![("probe", "1")]),
        (
            "/compliance/assignments".to_string(),
            vec![("scope", "rg:dev")],
        ),
        (format!("/compliance/assignments/{asg}/delete"), vec![]),
        ("/compliance/remediate".to_string(), vec![("vm", "web2")]),
    ];
    for (path, fields) in &forms {
        let r = p.post(&alice, path, &p.public, fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert!(r.body.contains("CSRF"), "{}", r.body);
        let mut f = fields.clone();
        f.push(("csrf", csrf.as_str()));
        let r = p.post(&alice, path, "https://evil.example", &f).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert!(r.body.contains("Origin"), "{}", r.body);
    }
    assert_eq!(
        before,
        (history(&p).await.len(), assignments(&p).await.len())
    );
    assert!(entries(&p, "Remediate Compliance").await.is_empty());
    let (st, _) = h
        .get(
            "/api/v1/virtualMachines/web2/jitNetworkAccessPolicies/default",
            &h.admin,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "no policy of web2's own");

    // Remediate: the confirmation shows the policy; confirmed, web2 has it and the entry.
    let c = p.get(&alice, "/compliance/remediate?vm=web2").await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    for want in [
        "<caption>The policy it will set</caption>",
        "<tr><td>22/TCP</td><td>*</td><td>PT3H</td><td>keep</td></tr>",
        "<tr><td>3389/*</td>",
        "<tr><td>5986/TCP</td>",
        "<input type=\"hidden\" name=\"vm\" value=\"web2\">",
    ] {
        assert!(c.body.contains(want), "{want:?} in {}", c.body);
    }
    let r = p.get(&alice, "/compliance/remediate?vm=nosuch").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = p
        .post(
            &alice,
            "/compliance/remediate",
            &p.public,
            &[("csrf", &csrf), ("vm", "web2"), ("template", "default")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(
            "JIT enabled on web2 from the template default: 22/TCP, 3389/*, 5985/TCP, 5986/TCP"
        ),
        "{}",
        r.body
    );
    let (st, pol) = h
        .get(
            "/api/v1/virtualMachines/web2/jitNetworkAccessPolicies/default",
            &h.admin,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{pol}");
    let e = entries(&p, "Remediate Compliance").await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["details"]["template"], "default");

    // The agent protects the ports and reports it (what the real agent does on the
    // policy, its bare interface gone too): the next evaluation finds web2 compliant.
    report(
        &mut web2,
        &ALL_MGMT,
        vec![("eth0".into(), "192.0.2.12".into())],
    )
    .await;
    let mut body = String::new();
    for _ in 0..100 {
        let r = p
            .post(&alice, "/compliance/scan", &p.public, &[("csrf", &csrf)])
            .await;
        assert_eq!(r.status, StatusCode::OK);
        body = r.body;
        if body.contains("2 compliant, 0 non-compliant") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains("2 compliant, 0 non-compliant"), "{body}");
    assert!(section(&body, "ok-h").contains("id=\"ok-web2\""), "{body}");
    assert!(section(&body, "nc-h").contains("<p>None.</p>"), "{body}");

    // The chart: one point per evaluation, as the history lists them; its numbers too.
    let hist = history(&p).await;
    assert!(hist.len() >= 2);
    let page = p.get(&alice, "/compliance").await;
    let ids: Vec<i64> = hist.iter().map(|s| s["scanId"].as_i64().unwrap()).collect();
    assert_eq!(points(&page.body), ids, "{}", page.body);
    for want in [
        "<svg role=\"img\" aria-labelledby=\"chart-title chart-desc\"",
        "<title id=\"chart-title\">Compliance percentage per evaluation (the whole fleet)</title>",
        &format!("<desc id=\"chart-desc\">{} evaluations from ", ids.len()),
        "from 50.0 % to 100.0 %",
    ] {
        assert!(page.body.contains(want), "{want:?} in {}", page.body);
    }
    assert_eq!(page.body.matches("<tr id=\"scan-").count(), ids.len());
    assert!(page.body.contains(&format!(
        "<tr id=\"scan-{}\"><td>{}</td><td class=\"nowrap\">{}</td><td>on-demand</td><td>50.0 %</td><td>1</td><td>1</td><td>3</td><td>0</td></tr>",
        ids[0],
        ids[0],
        jitgate_controller::http::portal::page::when_utc(s1["timeUtc"].as_str().unwrap())
    )), "{}", page.body);
    // The newest is the one shown (ringed).
    let newest = ids[ids.len() - 1];
    let ringed = page
        .body
        .split(&format!("data-scan=\"{newest}\""))
        .nth(1)
        .unwrap();
    assert!(
        ringed[..ringed.find("</circle>").unwrap()].contains("r=\"6\""),
        "{ringed}"
    );

    // As of the first evaluation: its state (web2 non-compliant) and the chart up to it.
    let at = s1["timeUtc"].as_str().unwrap();
    let past = p
        .get(
            &alice,
            &format!(
                "/compliance?at={}",
                url::form_urlencoded::byte_serialize(at.as_bytes()).collect::<String>()
            ),
        )
        .await;
    assert_eq!(past.status, StatusCode::OK, "{}", past.body);
    assert!(
        past.body.contains(&format!("Evaluation {} of ", ids[0])),
        "{}",
        past.body
    );
    assert!(section(&past.body, "nc-h").contains("id=\"res-web2\""));
    assert!(
        points(&past.body).iter().all(|&i| i <= ids[0]) && points(&past.body).contains(&ids[0])
    );
    let early = p.get(&alice, "/compliance?at=2000-01-01T00%3A00").await;
    assert!(
        early.body.contains("No evaluation at or before that time."),
        "{}",
        early.body
    );

    // Delete the assignment through its form.
    let r = p
        .post(
            &alice,
            &format!("/compliance/assignments/{asg}/delete"),
            &p.public,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains(&format!("Assignment {asg} deleted")),
        "{}",
        r.body
    );
    assert!(assignments(&p).await.is_empty());
    assert_eq!(
        entries(&p, "Delete Compliance Policy Assignment")
            .await
            .len(),
        1
    );
    drop(web1);
}
