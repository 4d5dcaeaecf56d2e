//! The harness of the `jit` tests: a real controller (HTTPS on 127.0.0.1, SQLite file) and
//! the real binary.
#![allow(dead_code)]
use std::process::Stdio;
use std::time::Duration;

use jitgate_api::{Role, Scope};
use jitgate_controller::authz::{Actor, Caller};
use jitgate_controller::state::{self, Config, StateDir};
use jitgate_controller::{ServerHandle, start};
use serde_json::Value;

pub struct Env {
    pub _tmp: tempfile::TempDir,
    pub dir: StateDir,
    pub server: ServerHandle,
    pub url: String,
    pub admin: String,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl Env {
    pub async fn new() -> Env {
        Env::with_config(|_, _| {}).await
    }

    /// A controller with `f` applied to its configuration (given the state directory).
    pub async fn with_config(f: impl FnOnce(&mut Config, &StateDir)) -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir(tmp.path().join("state"));
        let mut cfg = Config {
            listen: "127.0.0.1:0".into(),
            agent_listen: "127.0.0.1:0".into(),
            expiry_sweep_seconds: 3600,
            ..Config::default()
        };
        f(&mut cfg, &dir);
        let out = state::init(&dir, &cfg, &[]).await.expect("init");
        let server = start(&dir, &cfg).await.expect("start");
        let url = format!("https://{}", server.addr);
        let a = Caller::local();
        let s = &server.app.inventory;
        s.add_group(&a, "prod", "ops@example.com")
            .await
            .expect("rg");
        s.add_vm(
            &a,
            "web1",
            "prod",
            &[
                "192.0.2.11".parse().expect("ip"),
                "2001:db8::11".parse().expect("ip"),
            ],
        )
        .await
        .expect("vm");
        Env {
            _tmp: tmp,
            dir,
            server,
            url,
            admin: out.admin_token,
        }
    }

    pub async fn token(&self, name: &str, role: Role, scope: &str) -> String {
        self.token_in(name, role, scope, &[]).await
    }

    pub async fn token_in(&self, name: &str, role: Role, scope: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.server
            .app
            .tokens
            .create(
                &Caller::local(),
                name,
                role,
                &scope.parse::<Scope>().expect("scope"),
                None,
                &groups,
            )
            .await
            .expect("token")
            .1
    }

    pub fn command(&self, token: &str, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit"));
        c.args(args)
            .env("JIT_URL", &self.url)
            .env("JIT_CA", self.dir.ca_cert())
            .env("JIT_TOKEN", token)
            .env("JIT_CONFIG", "/nonexistent/jit.toml")
            .current_dir(self._tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    pub async fn jit(&self, token: &str, args: &[&str]) -> Out {
        let o = self.command(token, args).output().await.expect("run jit");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    /// Acknowledges (as the agent channel will) every grant of the newest request on the VM,
    /// once it exists. Returns its id.
    pub async fn apply_next_request(&self, vm: &str, known: usize) -> String {
        // Bounded, so that a CLI that failed before requesting fails the test, not hangs it.
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the CLI never created its request"
            );
            let out = self
                .server
                .app
                .lifecycle
                .outbox(vm, 0, 10_000)
                .await
                .expect("outbox");
            // Requests in the order their grants were queued (revocations of superseded
            // grants follow the new grant and are not counted).
            let mut ids: Vec<String> = out
                .iter()
                .filter(|o| o.op.as_str() == "apply")
                .map(|o| o.request_id.clone())
                .collect();
            ids.dedup();
            if ids.len() > known {
                let id = ids.last().expect("id").clone();
                for o in out
                    .iter()
                    .filter(|o| o.request_id == id && o.op.as_str() == "apply")
                {
                    self.server
                        .app
                        .lifecycle
                        .acknowledge(&Actor::controller(), &o.grant_id)
                        .await
                        .expect("ack");
                }
                return id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn requests_in_outbox(&self, vm: &str) -> usize {
        let out = self
            .server
            .app
            .lifecycle
            .outbox(vm, 0, 10_000)
            .await
            .expect("outbox");
        let mut ids: Vec<String> = out
            .iter()
            .filter(|o| o.op.as_str() == "apply")
            .map(|o| o.request_id.clone())
            .collect();
        ids.dedup();
        ids.len()
    }
}
