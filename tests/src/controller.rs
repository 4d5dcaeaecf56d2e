//! Runs the real `jit-controller` inside a namespace, and the `jit` CLI against it.

use crate::agent::bin;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct ControllerProc {
    child: Option<Child>,
    pub ns: String,
    pub state: PathBuf,
    pub log: PathBuf,
    /// `host:port` of the HTTPS API.
    pub api: String,
    pub ca: PathBuf,
    pub admin_token: String,
    _dir: tempfile::TempDir,
}

impl ControllerProc {
    /// Initialises a controller with API on `host:8443` and the agent listener on
    /// `host:8444`, and starts it in namespace `ns`.
    pub fn start(ns: &str, host: &str) -> ControllerProc {
        Self::start_with(ns, host, "")
    }

    /// Like `start`, with `extra` appended to controller.toml (e.g. a `[compliance]` table).
    pub fn start_with(ns: &str, host: &str, extra: &str) -> ControllerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("controller");
        let api = format!("{host}:8443");
        let out = Command::new(bin("jit-controller"))
            .arg("--json")
            .arg("--state-dir")
            .arg(&state)
            .args(["init", "--listen", &api, "--san", host])
            .output()
            .expect("jit-controller init");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init json");
        let admin_token = v["adminToken"].as_str().expect("admin token").to_string();
        let ca = PathBuf::from(v["caCertificate"].as_str().expect("ca"));
        let cfg = state.join("controller.toml");
        let text = std::fs::read_to_string(&cfg).expect("controller.toml");
        let mut text: String = text
            .lines()
            .filter(|l| {
                !l.trim_start().starts_with("agent_listen")
                    && !l.trim_start().starts_with("agent_endpoint")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("agent_listen = \"{host}:8444\"\n"));
        text.push_str(extra);
        std::fs::write(&cfg, text).expect("controller.toml");
        let mut c = ControllerProc {
            child: None,
            ns: ns.to_string(),
            log: dir.path().join("controller.log"),
            state,
            api,
            ca,
            admin_token,
            _dir: dir,
        };
        c.spawn();
        c
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin("jit-controller"))
            .arg("--state-dir")
            .arg(&self.state)
            .arg("run")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn jit-controller");
        self.child = Some(child);
        let addr: SocketAddr = self.api.parse().expect("api address");
        let path = crate::fleet::Fleet::ns_path(&self.ns);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = jitgate_agent::netns::run_in(&path, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .unwrap_or(false);
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "controller did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `jit-controller --json --state-dir <state> <args>` (host-side administration).
    pub fn admin(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(bin("jit-controller"))
            .arg("--json")
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("jit-controller");
        assert!(
            out.status.success(),
            "jit-controller {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Registers VM `name` (address `addr`) in resource group `prod` (created on first use)
    /// and returns its one-time enrolment token.
    pub fn add_vm(&self, name: &str, addr: std::net::IpAddr) -> String {
        let groups = self.admin(&["rg", "list"]);
        if !groups.to_string().contains("\"prod\"") {
            self.admin(&["rg", "add", "prod", "--owner", "ops@example.net"]);
        }
        let added = self.admin(&[
            "vm",
            "add",
            name,
            "--resource-group",
            "prod",
            "--address",
            &addr.to_string(),
        ]);
        added["enrollmentToken"]
            .as_str()
            .expect("enrolment token")
            .to_string()
    }

    /// `jit <args>` from namespace `ns`, as the admin.
    pub fn jit(&self, ns: &str, args: &[&str]) -> Output {
        self.jit_as(ns, &self.admin_token, args)
    }

    /// `jit <args>` from namespace `ns`, as the admin, which must succeed and print JSON.
    pub fn jit_json(&self, ns: &str, args: &[&str]) -> serde_json::Value {
        let out = crate::ok(self.jit(ns, args), &args.join(" "));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("jit {args:?}: {e}: {out}"))
    }

    pub fn jit_as(&self, ns: &str, token: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin("jit"))
            .args(args)
            .env("JIT_URL", format!("https://{}", self.api))
            .env("JIT_CA", &self.ca)
            .env("JIT_TOKEN", token)
            .env("JIT_CONFIG", "/nonexistent")
            .output()
            .expect("jit")
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            eprintln!("--- jit-controller log (last 40 lines) ---");
            for l in log.lines().rev().take(40).collect::<Vec<_>>().iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
