//! Operating the controller: the metrics listener scraped and parsed against the documented
//! metric table (docs/operations.md, "Metrics and health"), values moving as requests and
//! grants flow, `/healthz` and `/readyz` on both listeners, `/readyz` failing when the
//! database is gone, and the binary's JSON log lines. Real controllers, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::time::Duration;

use common::agent::{Agent, enroll};
use common::{Harness, one_port};
use jitgate_api::Role;
use jitgate_proto::message::Outcome;
use jitgate_proto::{AgentMsg, ControllerMsg};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const INITIATE: &str = "POST /api/v1/jitNetworkAccessPolicies/default/initiate";

/// docs/operations.md's metric table: name -> type.
fn documented() -> BTreeMap<String, String> {
    let doc = include_str!("../../docs/operations.md");
    let section = doc
        .split("\n### Metrics\n")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("a \"### Metrics\" section in docs/operations.md");
    let mut out = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (Some(name), Some(kind)) = (cells.get(1), cells.get(2))
            && let Some(name) = name.strip_prefix("`jitgate_")
        {
            out.insert(
                format!("jitgate_{}", name.trim_end_matches('`')),
                kind.to_string(),
            );
        }
    }
    assert!(out.len() >= 10, "parsed only {out:?}");
    out
}

/// One scrape: the `# TYPE` lines and the samples (name, labels, value).
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    text: String,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("TYPE name kind");
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = value.parse().expect("numeric sample value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut m = BTreeMap::new();
                    // Label values here never contain `",`.
                    for pair in body.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        m.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                    (n.to_string(), m)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape {
            types,
            samples,
            text,
        }
    }

    /// The value of the series with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
    }
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn get_json(c: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let r = c.get(url).send().await.expect("send");
    let st = r.status();
    (st, r.json().await.expect("JSON body"))
}

struct Ops {
    h: Harness,
    http: reqwest::Client,
    metrics: String,
}

impl Ops {
    async fn new(database_url: Option<String>) -> Ops {
        let h = Harness::with_config(|c| {
            c.metrics_listen = Some("127.0.0.1:0".into());
            c.database_url = database_url;
        })
        .await;
        let addr = h
            .server
            .as_ref()
            .expect("running")
            .metrics_addr
            .expect("metrics listener bound");
        Ops {
            h,
            http: plain_client(),
            metrics: format!("http://{addr}"),
        }
    }

    async fn scrape(&self) -> Scrape {
        let r = self
            .http
            .get(format!("{}/metrics", self.metrics))
            .send()
            .await
            .expect("scrape");
        assert_eq!(r.status(), StatusCode::OK);
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        Scrape::parse(r.text().await.expect("body"))
    }

    /// Scrapes until `f` holds (wide bound: a busy machine).
    async fn scrape_until(&self, what: &str, f: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.scrape().await;
            if f(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not seen within 30 s:\n{}",
                s.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/readyz` on the metrics listener and on the API: both answers, which must agree.
    async fn readyz(&self) -> (StatusCode, Value) {
        let (st, v) = get_json(&self.http, &format!("{}/readyz", self.metrics)).await;
        let (st2, v2) = self.h.call(Method::GET, "/readyz", None, None).await;
        assert_eq!((st, &v), (st2, &v2), "both listeners answer alike");
        (st, v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_documented_and_move_with_requests_and_grants() {
    let o = Ops::new(None).await;
    let h = &o.h;

    // Health on both listeners, without a token.
    let (st, v) = get_json(&o.http, &format!("{}/healthz", o.metrics)).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"status": "alive"})));
    let (st, v) = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"status": "alive"})));
    // The one controller leads once its first lease renewal ran (at start).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (st, v) = o.readyz().await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if v["checks"]["leader"] == "leading" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never leading: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        v,
        json!({"status": "ready", "checks": {"database": "ok", "migrations": "ok", "leader": "leading", "config": "same", "grantSigningKey": {"status": "ok"}}})
    );

    // The metrics listener is read-only and serves no API.
    let r = o
        .http
        .post(format!("{}/metrics", o.metrics))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = o
        .http
        .get(format!("{}/api/v1/resourceGroups", o.metrics))
        .bearer_auth(&h.admin)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Every documented metric is served with its documented type, and nothing else.
    let s = o.scrape().await;
    let doc = documented();
    let served: BTreeMap<String, String> = s
        .types
        .iter()
        .filter(|(n, _)| n.starts_with("jitgate_"))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    assert_eq!(
        served, doc,
        "the scrape and docs/operations.md's metric table differ"
    );
    // Each sample belongs to a documented metric (histograms add _bucket, _sum, _count).
    let names: BTreeSet<&String> = doc.keys().collect();
    for (n, _, _) in &s.samples {
        let base = n
            .strip_suffix("_bucket")
            .or_else(|| n.strip_suffix("_sum"))
            .or_else(|| n.strip_suffix("_count"))
            .filter(|b| doc.get(*b).is_some_and(|t| t == "histogram"))
            .unwrap_or(n);
        assert!(names.contains(&base.to_string()), "undocumented sample {n}");
    }

    // Certificates: the server's expires in ~825 days, the CA's later.
    let now = jitgate_api::time::now_ms() / 1000;
    // One series per certificate, named by fingerprint and subject.
    let certs = |kind: &str| -> Vec<(BTreeMap<String, String>, f64)> {
        s.samples
            .iter()
            .filter(|(n, l, _)| {
                n == "jitgate_tls_certificate_expiry_timestamp_seconds"
                    && l.get("certificate").map(String::as_str) == Some(kind)
            })
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    };
    let (server, ca) = (certs("server"), certs("ca"));
    assert_eq!(server.len(), 1, "{server:?}");
    assert_eq!(ca.len(), 1, "{ca:?}");
    assert_eq!(
        server[0].0["subject"], "CN=jitgate controller",
        "{server:?}"
    );
    assert_eq!(ca[0].0["subject"], "CN=jitgate controller CA", "{ca:?}");
    for (l, _) in server.iter().chain(&ca) {
        let fp = &l["fingerprint"];
        assert!(
            fp.len() == 16 && fp.chars().all(|c| c.is_ascii_hexdigit()),
            "{l:?}"
        );
    }
    let (server, ca) = (server[0].1 as i64, ca[0].1 as i64);
    assert!(
        server > now + 800 * 86400 && server < now + 830 * 86400,
        "{server}"
    );
    assert!(ca > server, "{ca} {server}");
    // The readiness checks above were database probes.
    assert!(
        s.get("jitgate_db_probe_duration_seconds_count", &[])
            .expect("probe count")
            >= 2.0
    );
    assert_eq!(s.get("jitgate_db_probe_errors_total", &[]), Some(0.0));
    for st in ["online", "degraded", "offline"] {
        assert_eq!(s.get("jitgate_agents", &[("state", st)]), Some(0.0), "{st}");
    }
    if h.app().db.backend().as_str() == "sqlite" {
        assert_eq!(
            s.get("jitgate_pg_notification_queue_usage_ratio", &[]),
            None,
            "no notification queue on SQLite"
        );
    }

    // An agent connects: counted online.
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let alice = h.token("alice", Role::Requester, "rg:prod").await;
    let creds = enroll(h, "web1").await;
    let _offline = enroll(h, "web2").await;
    let mut agent = Agent::connect(&creds).await;
    agent.handshake(&creds, 0).await;
    o.scrape_until("one agent online, one offline", |s| {
        s.get("jitgate_agents", &[("state", "online")]) == Some(1.0)
            && s.get("jitgate_agents", &[("state", "offline")]) == Some(1.0)
    })
    .await;

    // A request flows: the counter moves by one; its grant is pending until acknowledged.
    let before = o.scrape().await;
    let ok = |s: &Scrape| {
        s.get(
            "jitgate_http_requests_total",
            &[("operation", INITIATE), ("outcome", "success")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        before.get("jitgate_grants_pending", &[("vm", "web1")]),
        None
    );
    let (st, req) = h
        .initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{req}");
    // Without a token: refused, counted as a client error of the same operation.
    let (st, _) = h
        .call(
            Method::POST,
            "/api/v1/jitNetworkAccessPolicies/default/initiate",
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let after = o.scrape().await;
    assert_eq!(ok(&after), ok(&before) + 1.0, "{}", after.text);
    assert_eq!(
        after.get(
            "jitgate_http_requests_total",
            &[("operation", INITIATE), ("outcome", "client_error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.get("jitgate_grants_pending", &[("vm", "web1")]),
        Some(1.0),
        "{}",
        after.text
    );
    let age = after
        .get(
            "jitgate_grants_pending_oldest_age_seconds",
            &[("vm", "web1")],
        )
        .expect("oldest pending age");
    assert!((0.0..600.0).contains(&age), "{age}");
    // Ids in paths do not make new series: the route template is the label.
    let rid = req["id"].as_str().expect("id");
    let (st, _) = h.get(&format!("/api/v1/requests/{rid}"), &alice).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = h.get("/api/v1/no/such/route", &alice).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let s = o.scrape().await;
    assert!(
        s.get(
            "jitgate_http_requests_total",
            &[
                ("operation", "GET /api/v1/requests/{id}"),
                ("outcome", "success")
            ]
        )
        .is_some_and(|v| v >= 1.0),
        "{}",
        s.text
    );
    assert!(!s.text.contains(rid), "no request id in a label");
    assert!(
        s.get(
            "jitgate_http_requests_total",
            &[("operation", "unmatched"), ("outcome", "client_error")]
        )
        .is_some_and(|v| v >= 1.0)
    );

    // The agent applies it: nothing pending any more.
    let g = match agent.recv_within(Duration::from_secs(10)).await {
        Some(ControllerMsg::Grant(s)) => s.verify(&creds.signing, creds.id).expect("verifies"),
        m => panic!("expected a grant, got {m:?}"),
    };
    agent
        .send(&AgentMsg::GrantResult {
            grant_id: g.grant_id,
            seq: g.seq,
            outcome: Outcome::Applied { agent_unix_ms: 1 },
        })
        .await;
    o.scrape_until("no grant pending after the acknowledgement", |s| {
        s.get("jitgate_grants_pending", &[("vm", "web1")]).is_none()
    })
    .await;

    // The activity log: the head is the stored one; a checkpoint appears with its seq.
    let (head, _) = jitgate_controller::store::cluster::heads(h.app().db.pool())
        .await
        .expect("heads");
    let s = o.scrape().await;
    let shown = s.get("jitgate_activity_head_seq", &[]).expect("head");
    assert!(shown >= head as f64 && head > 0, "{shown} {head}");
    h.app().audit.checkpoint().await.expect("checkpoint");
    let s = o.scrape().await;
    let cp = s
        .get("jitgate_activity_checkpoint_seq", &[])
        .expect("a checkpoint seq after signing one");
    assert!(cp >= head as f64, "{cp} {head}");
    let cp_age = s
        .get("jitgate_activity_checkpoint_age_seconds", &[])
        .expect("checkpoint age");
    assert!((0.0..600.0).contains(&cp_age), "{cp_age}");
    // One controller: it leads, under an epoch.
    assert_eq!(s.get("jitgate_leader", &[]), Some(1.0), "{}", s.text);
    assert!(s.get("jitgate_leader_epoch", &[]).is_some_and(|e| e >= 1.0));
    // The verified mark: absent, then at the head once the step ran; not failed.
    assert_eq!(s.get("jitgate_activity_verified_seq", &[]), None);
    assert_eq!(
        s.get("jitgate_activity_verification_failed", &[]),
        Some(0.0)
    );
    h.app()
        .audit
        .extend_verified(jitgate_controller::audit::VERIFY_STEP)
        .await
        .expect("verify");
    let s = o.scrape().await;
    let v = s
        .get("jitgate_activity_verified_seq", &[])
        .expect("verified seq");
    assert!(v >= head as f64, "{v} {head}");
    assert_eq!(
        s.get("jitgate_activity_verification_failed", &[]),
        Some(0.0)
    );

    // On PostgreSQL the catch-up samples the notification queue (every 2 s).
    if h.app().db.backend().as_str() == "postgres" {
        let s = o
            .scrape_until("the notification queue sampled", |s| {
                s.get("jitgate_pg_notification_queue_usage_ratio", &[])
                    .is_some()
            })
            .await;
        let u = s
            .get("jitgate_pg_notification_queue_usage_ratio", &[])
            .expect("usage");
        assert!((0.0..=1.0).contains(&u), "{u}");
    }

    // Approvals: nothing waits, then one request waits, then it is approved.
    h.put_vm_policy(
        "db1",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT1H",
                "approval": {"stages": [{"approvers": ["token:carl"], "required": 1}]}}]),
    )
    .await;
    let carl = h.token("carl", Role::Reader, "*").await;
    let dev = h.token("dev", Role::Requester, "rg:dev").await;
    let s = o.scrape().await;
    assert_eq!(
        s.get("jitgate_approvals_pending", &[]),
        Some(0.0),
        "{}",
        s.text
    );
    assert_eq!(
        s.get("jitgate_approvals_pending_oldest_age_seconds", &[]),
        None
    );
    assert_eq!(
        s.get("jitgate_approval_decision_seconds", &[("quantile", "1")]),
        None,
        "no decision in the last hour yet"
    );
    let (st, r) = h
        .initiate(
            &dev,
            one_port(
                "db1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT30M"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "PendingApproval", "{r}");
    let s = o.scrape().await;
    assert_eq!(
        s.get("jitgate_approvals_pending", &[]),
        Some(1.0),
        "{}",
        s.text
    );
    let age = s
        .get("jitgate_approvals_pending_oldest_age_seconds", &[])
        .expect("the oldest pending approval's age");
    assert!((0.0..600.0).contains(&age), "{age}");
    let id = r["id"].as_str().expect("id");
    let (st, v) = h
        .call(
            Method::POST,
            &format!("/api/v1/requests/{id}/approve"),
            Some(&carl),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let s = o.scrape().await;
    assert_eq!(
        s.get("jitgate_approvals_pending", &[]),
        Some(0.0),
        "{}",
        s.text
    );
    for q in ["0.5", "0.9", "1"] {
        let d = s
            .get("jitgate_approval_decision_seconds", &[("quantile", q)])
            .unwrap_or_else(|| panic!("decision time {q}: {}", s.text));
        assert!((0.0..600.0).contains(&d), "{q}: {d}");
    }

    // A schema that is not this binary's: not ready, and the body says which check.
    let pool = h.app().db.pool();
    let (v,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(pool)
        .await
        .expect("version");
    sqlx::query("INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, 'from the future', 0)")
        .bind(v + 1)
        .execute(pool)
        .await
        .expect("insert");
    let (st, body) = o.readyz().await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "notReady", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert_eq!(body["checks"]["migrations"], "ahead", "{body}");
    sqlx::query("DELETE FROM schema_migrations WHERE version >= $1")
        .bind(v)
        .execute(pool)
        .await
        .expect("delete");
    let (st, body) = o.readyz().await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["migrations"], "behind", "{body}");
    let (st, _) = get_json(&o.http, &format!("{}/healthz", o.metrics)).await;
    assert_eq!(st, StatusCode::OK, "alive all the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_database_is_gone() {
    if !common::postgres_backend() {
        // SQLite is a file inside the process: "gone" is the pool closed under the server
        // (a stopped PostgreSQL server is the real case, below on PostgreSQL).
        let o = Ops::new(None).await;
        assert_eq!(o.readyz().await.0, StatusCode::OK);
        o.h.app().db.pool().close().await;
        let (st, v) = o.readyz().await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["status"], "notReady", "{v}");
        assert_eq!(v["checks"]["database"], "unreachable", "{v}");
        assert_eq!(v["checks"]["migrations"], "unknown", "{v}");
        let (st, _) = get_json(&o.http, &format!("{}/healthz", o.metrics)).await;
        assert_eq!(st, StatusCode::OK);
        let s = o.scrape().await;
        assert!(
            s.get("jitgate_db_probe_errors_total", &[])
                .is_some_and(|v| v >= 1.0)
        );
        return;
    }
    // PostgreSQL: a cluster of this test's own, stopped and started again.
    let pg = jitgate_testpg::Cluster::start().expect("a throwaway PostgreSQL cluster");
    let db = pg.create_database().expect("database");
    let o = Ops::new(Some(db.url.clone())).await;
    assert_eq!(o.readyz().await.0, StatusCode::OK);
    let alice = o.h.prod_with_requester().await;
    let ask = || {
        o.h.initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.9", "duration": "PT1H"}),
            ),
        )
    };
    let (st, v) = ask().await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let requests = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM requests")
            .fetch_one(o.h.app().db.pool())
            .await
            .expect("count");
        n
    };
    let requests_before = requests().await;
    // Eight reads at once: the pool holds as many connections, idle when the server stops.
    let admin = o.h.admin.clone();
    let reads = || {
        futures_util::future::join_all((0..8).map(|_| {
            o.h.call(Method::GET, "/api/v1/virtualMachines", Some(&admin), None)
        }))
    };
    for (st, v) in reads().await {
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    pg.stop().expect("stop PostgreSQL");
    // Calls that need the database get a clear 503 within seconds, not a hang, however many
    // arrive at once: reads, and writes queued behind the writer's reconnection attempts.
    let t0 = std::time::Instant::now();
    let (r1, r2, w1, w2, w3) = tokio::join!(
        o.h.call(Method::GET, "/api/v1/virtualMachines", Some(&admin), None),
        o.h.call(Method::GET, "/api/v1/resourceGroups", Some(&admin), None),
        ask(),
        ask(),
        ask()
    );
    let took = t0.elapsed();
    for (st, v) in [r1, r2, w1, w2, w3] {
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["error"]["code"], "DatabaseUnavailable", "{v}");
        let text = v.to_string();
        assert!(
            !text.contains("/tmp") && !text.contains("postgres"),
            "{text}"
        );
    }
    eprintln!("five calls during the outage answered 503 in {took:?}");
    assert!(took < Duration::from_secs(25), "503s took {took:?}");
    // Each listener on its own: one may see a broken connection fail (unreachable) while
    // the other waits for a new one (timeout).
    let metrics = get_json(&o.http, &format!("{}/readyz", o.metrics)).await;
    let api = o.h.call(Method::GET, "/readyz", None, None).await;
    for (st, v) in [metrics, api] {
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["status"], "notReady");
        assert!(
            ["unreachable", "timeout"].contains(&v["checks"]["database"].as_str().unwrap_or("")),
            "{v}"
        );
        assert_eq!(v["checks"]["migrations"], "unknown");
        let text = v.to_string();
        assert!(
            !text.contains("postgres") && !text.contains("/tmp") && !text.contains("127.0.0.1"),
            "nothing about the database's whereabouts: {text}"
        );
    }
    let (st, _) = get_json(&o.http, &format!("{}/healthz", o.metrics)).await;
    assert_eq!(st, StatusCode::OK, "alive while the database is down");
    // Scraping still works; the failed reads are counted.
    let s = o
        .scrape_until("probe errors counted", |s| {
            s.get("jitgate_db_probe_errors_total", &[])
                .is_some_and(|v| v >= 1.0)
        })
        .await;
    assert!(s.types.contains_key("jitgate_agents"));

    // Back: ready again once the pool has reconnected.
    pg.start_again().expect("start PostgreSQL again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Each listener on its own: while the pool drops its broken connections one
        // answer may still fail when the next succeeds.
        let (st, v) = get_json(&o.http, &format!("{}/readyz", o.metrics)).await;
        let (st2, _) = o.h.call(Method::GET, "/readyz", None, None).await;
        if st == StatusCode::OK && st2 == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready 60 s after PostgreSQL came back: {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Writes work again without a restart: the writer's connection, closed by the server's
    // stop, is replaced (store::write), and the lease is held again. (The first write may
    // still meet the connection the stop broke, hence the retries: one seen here.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failed = 0;
    loop {
        let r =
            o.h.app()
                .inventory
                .add_group(
                    &jitgate_controller::authz::Caller::local(),
                    "after-restart",
                    "ops@example.com",
                )
                .await;
        match r {
            Ok(_) => break,
            Err(e) => {
                failed += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no write 30 s after PostgreSQL came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!("{failed} writes failed after PostgreSQL came back");
    assert!(
        failed <= 3,
        "{failed} writes failed after PostgreSQL came back"
    );
    // Nothing accepted before the outage was lost; none of the refused calls wrote.
    assert_eq!(requests().await, requests_before);
    // Pooled read connections broken by the restart are checked before use (they had been
    // idle): not one of eight reads at once fails.
    for (st, v) in reads().await {
        assert_eq!(st, StatusCode::OK, "a read after the restart: {v}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while o.h.app().leader.fence().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was not taken again after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut h = o.h;
    if let Some(s) = h.server.take() {
        s.stop().await;
    }
}

/// Runs `jit-controller` with `args`, returning (status, stdout, stderr lines).
fn controller(args: &[&str], env_format: Option<&str>) -> (bool, String, Vec<String>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"));
    cmd.args(args)
        .env_remove("JIT_LOG")
        .env_remove("JIT_LOG_FORMAT");
    if let Some(f) = env_format {
        cmd.env("JIT_LOG_FORMAT", f);
    }
    let out = cmd.output().expect("run jit-controller");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(String::from)
            .collect(),
    )
}

fn assert_json_lines(lines: &[String]) -> Vec<Value> {
    assert!(!lines.is_empty(), "no log lines");
    lines
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v["timestamp"].is_string(), "{l}");
            assert!(v["level"].is_string(), "{l}");
            assert!(v["fields"]["message"].is_string(), "{l}");
            v
        })
        .collect()
}

#[test]
fn json_logs_from_the_command_line_and_from_the_configuration() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let state = state.to_str().expect("utf-8 path");
    // `--log-format json`: init's log lines (the migrations) are JSON objects.
    let (ok, stdout, lines) = controller(
        &[
            "--state-dir",
            state,
            "--log-format",
            "json",
            "init",
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        None,
    );
    assert!(ok, "{lines:?}");
    assert!(stdout.contains("admin token"), "{stdout}");
    let logs = assert_json_lines(&lines);
    assert!(
        logs.iter()
            .any(|v| v["fields"]["message"] == "applied database migration"
                && v["fields"]["version"].is_number()),
        "{lines:?}"
    );
    let toml = std::fs::read_to_string(format!("{state}/controller.toml")).expect("config");
    assert!(toml.contains("metrics_listen = \"127.0.0.1:0\""), "{toml}");
    assert!(toml.contains("log_format = \"json\""), "{toml}");

    // From the configuration (no flag): a failing command's log lines are JSON too, but
    // for the one plain `error:` line at the end.
    let (ok, _, lines) = controller(
        &["--state-dir", state, "rg", "add", "x y", "--owner", "o"],
        None,
    );
    assert!(!ok);
    let (last, logs) = lines.split_last().expect("stderr");
    assert!(last.starts_with("error: "), "{last}");
    for l in logs {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    // A bad format is refused with the allowed values.
    let (ok, _, lines) = controller(&["--state-dir", state, "agents"], Some("yaml"));
    assert!(!ok);
    assert!(lines.join("\n").contains("text"), "{lines:?}");

    // `run` as configured: JSON lines that name the metrics address, which answers.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
        .args(["--state-dir", state, "run"])
        .env_remove("JIT_LOG")
        .env_remove("JIT_LOG_FORMAT")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut metrics = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metrics.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(l) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no \"jit-controller running\" line within 60 s: {seen:?}");
        };
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        if v["fields"]["message"] == "jit-controller running" {
            metrics = v["fields"]["metrics"].as_str().map(String::from);
        }
        seen.push(l);
    }
    let addr = metrics.expect("metrics address");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (st, v) = rt.block_on(get_json(&plain_client(), &format!("http://{addr}/readyz")));
    assert_eq!(st, StatusCode::OK, "{v}");

    // SIGHUP: the filter from controller.toml again, while it runs. To `warn`...
    let config = format!("{state}/controller.toml");
    let set_filter = |filter: &str| {
        let toml = std::fs::read_to_string(&config).expect("config");
        let rest: Vec<&str> = toml
            .lines()
            .filter(|l| !l.starts_with("log_filter"))
            .collect();
        // First in the file: top-level, whatever tables follow.
        let toml = format!("log_filter = {filter:?}\n{}\n", rest.join("\n"));
        std::fs::write(&config, toml).expect("write config");
    };
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    };
    let wait_for = |seen: &mut Vec<String>, message: &str| -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(l) = rx.recv_timeout(left) else {
                panic!("no {message:?} line within 30 s: {seen:?}");
            };
            let v: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            seen.push(l);
            if v["fields"]["message"] == message {
                return v;
            }
        }
    };
    set_filter("warn");
    signal("-HUP");
    let v = wait_for(&mut seen, "log filter changing");
    assert_eq!(v["fields"]["from"], "info", "{v}");
    assert_eq!(v["fields"]["to"], "warn", "{v}");
    // ... then a filter that does not parse: said at warn level, nothing changes.
    set_filter("info,jitgate=notalevel");
    signal("-HUP");
    let v = wait_for(&mut seen, "log filter not reloaded");
    assert_eq!(v["level"], "WARN", "{v}");
    assert_eq!(v["fields"]["filter"], "warn", "{v}");

    signal("-TERM");
    let exit = child.wait().expect("wait");
    reader.join().expect("reader");
    seen.extend(rx.try_iter());
    assert!(exit.success(), "{exit:?}: {seen:?}");
    let logs = assert_json_lines(&seen);
    // The info line at shutdown is filtered out now: the reload took effect.
    assert!(
        !logs
            .iter()
            .any(|v| v["fields"]["message"] == "shutting down"),
        "{seen:?}"
    );
}
