//! Test harness: a real controller (state directory, SQLite file, CA) in a tempdir, serving
//! HTTPS on 127.0.0.1 port 0, and a client that trusts the generated CA.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod agent;
pub mod binary;
pub mod lab;
pub mod notify;

use std::collections::BTreeMap;

use jitgate_api::{Role, Scope};
use jitgate_controller::authz::Caller;
use jitgate_controller::state::{self, Config, StateDir};
use jitgate_controller::{App, ServerHandle, start};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub dir: StateDir,
    pub cfg: Config,
    pub server: Option<ServerHandle>,
    pub client: reqwest::Client,
    pub base: String,
    pub admin: String,
}

pub fn client_for(dir: &StateDir) -> reqwest::Client {
    let pem = std::fs::read(dir.ca_cert()).expect("CA certificate");
    let ca = reqwest::Certificate::from_pem(&pem).expect("CA parses");
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .https_only(true)
        .build()
        .expect("client")
}

/// A client like a browser's for the portal's pages: trusts the controller's CA only and
/// follows no redirect (tests look at each 303).
pub fn browser_for(dir: &StateDir) -> reqwest::Client {
    let pem = std::fs::read(dir.ca_cert()).expect("CA certificate");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA parses"))
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with_config(|_| {}).await
    }

    pub async fn with_config(f: impl FnOnce(&mut Config)) -> Harness {
        Self::build(f, |_| {}).await
    }

    /// A controller whose state directory `prepare` changed after `init`, before the
    /// controller first started (a state directory as an older version left it).
    pub async fn with_state(prepare: impl FnOnce(&StateDir)) -> Harness {
        Self::build(|_| {}, prepare).await
    }

    async fn build(f: impl FnOnce(&mut Config), prepare: impl FnOnce(&StateDir)) -> Harness {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir(tmp.path().join("state"));
        let mut cfg = Config {
            listen: "127.0.0.1:0".into(),
            // The sweep is driven explicitly by tests (expire_due); keep the timer out of the way.
            expiry_sweep_seconds: 3600,
            agent_listen: "127.0.0.1:0".into(),
            ..Config::default()
        };
        f(&mut cfg);
        if cfg.database_url.is_none() && postgres_backend() {
            // JIT_TEST_BACKEND=postgres: every harness on a fresh database (docs/testing.md).
            cfg.database_url = Some(fresh_postgres_database().await);
        }
        let out = state::init(&dir, &cfg, &[]).await.expect("init");
        prepare(&dir);
        let server = start(&dir, &cfg).await.expect("start");
        let base = format!("https://{}", server.addr);
        Harness {
            client: client_for(&dir),
            tmp,
            dir,
            cfg,
            base,
            server: Some(server),
            admin: out.admin_token,
        }
    }

    /// Another controller on the same database, with this one's keys and certificates (what
    /// an operator shares between controllers; docs/ha.md), in a state directory of its own.
    pub async fn second(&self) -> Harness {
        self.second_with(|_| {}).await
    }

    /// As [`Harness::second`], with its configuration changed by `f`.
    pub async fn second_with(&self, f: impl FnOnce(&mut Config)) -> Harness {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir(tmp.path().join("state"));
        copy_dir(&self.dir.0, &dir.0);
        let mut cfg = self.cfg.clone();
        // Ports of its own: the first controller's may be fixed (the portal harness binds a
        // known port for its sign-in redirects).
        cfg.listen = "127.0.0.1:0".into();
        cfg.agent_listen = "127.0.0.1:0".into();
        f(&mut cfg);
        let server = start(&dir, &cfg)
            .await
            .expect("start the second controller");
        let base = format!("https://{}", server.addr);
        Harness {
            client: client_for(&dir),
            tmp,
            dir,
            cfg,
            base,
            server: Some(server),
            admin: self.admin.clone(),
        }
    }

    /// Signs an activity checkpoint now (`POST /activityLog/checkpoints`); its seq.
    pub async fn checkpoint(&self) -> i64 {
        let (st, v) = self
            .call(
                Method::POST,
                "/api/v1/activityLog/checkpoints",
                Some(&self.admin),
                None,
            )
            .await;
        assert!(st.is_success(), "{v}");
        v["seq"].as_i64().expect("seq")
    }

    pub fn app(&self) -> &App {
        &self.server.as_ref().expect("running").app
    }

    /// On PostgreSQL, waits until the catch-up has caught up every commit made so far (two
    /// more rounds), so its late wake of this controller's own earlier commits cannot land
    /// in what a test watches next. Nothing to wait for on SQLite.
    pub async fn caught_up(&self) {
        if !postgres_backend() {
            return;
        }
        let from = self.app().cluster.catch_ups_completed();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.app().cluster.catch_ups_completed() < from + 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the catch-up made no two rounds within 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and starts it again on the same state directory (a new port).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        let server = start(&self.dir, &self.cfg).await.expect("restart");
        self.base = format!("https://{}", server.addr);
        self.client = client_for(&self.dir);
        self.server = Some(server);
    }

    pub async fn token(&self, name: &str, role: Role, scope: &str) -> String {
        self.token_in(name, role, scope, &[]).await
    }

    /// A token whose principal belongs to `groups`.
    pub async fn token_in(&self, name: &str, role: Role, scope: &str, groups: &[&str]) -> String {
        let scope: Scope = scope.parse().expect("scope");
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.app()
            .tokens
            .create(&Caller::local(), name, role, &scope, None, &groups)
            .await
            .expect("token")
            .1
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("send");
        let status = r.status();
        let text = r.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        // A server that refuses a body before reading it (too large) answers and closes
        // while the client may still be writing it: the client then sees a broken pipe
        // instead of the answer. Send again (a fresh connection) until the answer is read.
        let mut tries = 0;
        let r = loop {
            tries += 1;
            match self
                .client
                .request(method.clone(), format!("{}{}", self.base, path))
                .bearer_auth(token)
                .header("content-type", content_type)
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) => break r,
                Err(e) if tries < 10 && e.is_request() => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("send: {e:?}"),
            }
        };
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// The request `id` as `token` sees it, once its status is `want` (polled for 5 s).
    pub async fn status_within(&self, token: &str, id: &str, want: &str) -> Value {
        let mut v = Value::Null;
        for _ in 0..100 {
            v = self.get(&format!("/api/v1/requests/{id}"), token).await.1;
            if v["status"] == want {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("request {id} never became {want}: {v}");
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// Standard fixture: groups prod and dev; VMs web1, web2 (prod) and db1 (dev).
    pub async fn fixture(&self) {
        let s = &self.app().inventory;
        let a = Caller::local();
        s.add_group(&a, "prod", "prod-team@example.com")
            .await
            .expect("rg");
        s.add_group(&a, "dev", "dev-team@example.com")
            .await
            .expect("rg");
        for (vm, rg, addr) in [
            ("web1", "prod", "192.0.2.11"),
            ("web2", "prod", "192.0.2.12"),
            ("db1", "dev", "2001:db8:99::1"),
        ] {
            s.add_vm(&a, vm, rg, &[addr.parse().expect("ip")])
                .await
                .expect("vm");
        }
    }

    /// The fixture, a policy for prod (SSH from 203.0.113.0/24, up to 3 hours) and a
    /// requester token for prod (alice).
    pub async fn prod_with_requester(&self) -> String {
        self.fixture().await;
        self.put_rg_policy(
            "prod",
            json!([{"number": 22, "protocol": "TCP",
                "allowedSourceAddressPrefix": "203.0.113.0/24", "maxRequestAccessDuration": "PT3H"}]),
        )
        .await;
        self.token("alice", Role::Requester, "rg:prod").await
    }

    pub async fn put_rg_policy(&self, rg: &str, ports: Value) {
        let (st, v) = self
            .call(
                Method::PUT,
                &format!("/api/v1/resourceGroups/{rg}/jitNetworkAccessPolicies/default"),
                Some(&self.admin),
                Some(json!({ "ports": ports })),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }

    pub async fn put_vm_policy(&self, vm: &str, ports: Value) {
        let (st, v) = self
            .call(
                Method::PUT,
                &format!("/api/v1/virtualMachines/{vm}/jitNetworkAccessPolicies/default"),
                Some(&self.admin),
                Some(json!({ "ports": ports })),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }

    pub async fn initiate(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/api/v1/jitNetworkAccessPolicies/default/initiate",
            Some(token),
            Some(body),
        )
        .await
    }

    /// Initiates an hour of SSH on `vm` from `source`, which must succeed; the request id.
    pub async fn request_ssh(&self, token: &str, vm: &str, source: &str) -> String {
        let (st, v) = self.initiate(token, ssh_request(vm, source)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v["id"].as_str().expect("request id").to_string()
    }

    /// `POST /api/v1/requests/{id}/revoke`.
    pub async fn revoke(&self, token: &str, id: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v1/requests/{id}/revoke"),
            Some(token),
            None,
        )
        .await
    }

    /// Row counts of every table plus the chain head: equal snapshots mean nothing was written.
    pub async fn snapshot(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for t in [
            "resource_groups",
            "vms",
            "policies",
            "tokens",
            "requests",
            "request_ports",
            "request_approvals",
            "grants",
            "grant_outbox",
            "activity",
            "compliance_assignments",
            "compliance_scans",
            "compliance_results",
            "compliance_exposures",
            "notify_events",
        ] {
            let q = format!("SELECT COUNT(*) FROM {t}");
            let row = sqlx::query(&q)
                .fetch_one(self.app().db.pool())
                .await
                .expect("count");
            m.insert(
                t.to_string(),
                row.try_get::<i64, _>(0).expect("n").to_string(),
            );
        }
        let row = sqlx::query("SELECT value, hash FROM counters WHERE name = 'chain'")
            .fetch_one(self.app().db.pool())
            .await
            .expect("head");
        m.insert(
            "chain".into(),
            format!(
                "{}:{}",
                row.try_get::<i64, _>(0).expect("v"),
                row.try_get::<String, _>(1).expect("h")
            ),
        );
        let row = sqlx::query("SELECT body FROM policies ORDER BY scope_kind, scope_name")
            .fetch_all(self.app().db.pool())
            .await
            .expect("policies");
        let bodies: Vec<String> = row
            .iter()
            .map(|r| r.try_get::<String, _>(0).expect("b"))
            .collect();
        m.insert("policy_bodies".into(), bodies.join("|"));
        m
    }

    /// How many `grants` (or `grant_outbox` apply rows) request `id` has.
    pub async fn count_rows(&self, table: &str, id: &str) -> usize {
        let sql = match table {
            "grants" => "SELECT count(*) FROM grants WHERE request_id = $1",
            "grant_outbox" => {
                "SELECT count(*) FROM grant_outbox o JOIN grants g ON g.id = o.grant_id \
                 WHERE g.request_id = $1 AND o.op = 'apply'"
            }
            other => panic!("count_rows: no query for {other}"),
        };
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_one(self.app().db.pool())
            .await
            .expect("count");
        usize::try_from(row.try_get::<i64, _>(0).expect("n")).expect("count")
    }
}

/// Copies a directory tree with its modes (as `cp -a` would: the notification secrets
/// directory must stay 0700).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    let mode = std::fs::metadata(from).expect("stat").permissions();
    std::fs::set_permissions(to, mode).expect("chmod");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Whether this run is on PostgreSQL: `JIT_TEST_BACKEND` is `sqlite` (the default) or
/// `postgres`; unset, `JIT_TEST_POSTGRES_URL` means postgres. Anything else stops the test
/// rather than silently testing SQLite.
pub fn postgres_backend() -> bool {
    match std::env::var("JIT_TEST_BACKEND").as_deref() {
        Err(_) => std::env::var_os("JIT_TEST_POSTGRES_URL").is_some(),
        Ok("" | "sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("JIT_TEST_BACKEND must be sqlite or postgres, not {other:?}"),
    }
}

/// A new, empty PostgreSQL database: on this test binary's throwaway cluster (started on
/// first use by jitgate-testpg, removed when the binary exits), or on the server named by
/// `JIT_TEST_POSTGRES_URL` when set (a URL of a role that may create databases, e.g.
/// `postgres://jit:pw@127.0.0.1:5432/postgres`).
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let Ok(base) = std::env::var("JIT_TEST_POSTGRES_URL") else {
        return tokio::task::spawn_blocking(|| {
            jitgate_testpg::Cluster::shared().and_then(|c| c.create_database())
        })
        .await
        .expect("join")
        .expect("a database on the test cluster (cargo xtask setup installs PostgreSQL)")
        .url;
    };
    sqlx::any::install_default_drivers();
    let name = format!("jit_test_{}", jitgate_controller::ids::new_token_id());
    let mut admin = sqlx::AnyConnection::connect(&base)
        .await
        .expect("connect to JIT_TEST_POSTGRES_URL");
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let (url, query) = base.split_once('?').unwrap_or((&base, ""));
    let (prefix, _) = url.rsplit_once('/').expect("URL with a database");
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{prefix}/{name}{query}")
}

pub fn one_port(vm: &str, port: Value) -> Value {
    json!({"virtualMachines": [{"id": vm, "ports": [port]}], "justification": "ticket INC-1"})
}

/// A request body: an hour of SSH on `vm` from `source`.
pub fn ssh_request(vm: &str, source: &str) -> Value {
    one_port(
        vm,
        json!({"number": 22, "allowedSourceAddressPrefix": source, "duration": "PT1H"}),
    )
}

/// The denial reason codes of a request record.
pub fn reasons(v: &Value) -> Vec<String> {
    let mut r: Vec<String> = v["denialReasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["reason"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    r.sort();
    r
}
