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
        Self::start_at(ns, host, Ports::DEFAULT, &[], extra)
    }

    /// Initialises a controller with its listeners on `ports` of `host`, `init_args` added
    /// to `jit-controller init` (e.g. `--database-url`), `extra` appended to controller.toml,
    /// and starts it in namespace `ns`.
    pub fn start_at(
        ns: &str,
        host: &str,
        ports: Ports,
        init_args: &[&str],
        extra: &str,
    ) -> ControllerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("controller");
        let api = format!("{host}:{}", ports.api);
        let out = Command::new(bin("jit-controller"))
            .arg("--json")
            .arg("--state-dir")
            .arg(&state)
            .args(["init", "--listen", &api, "--san", host])
            .args(init_args)
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
        listen_on(&state, host, ports, extra);
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

    /// Another controller of the same cluster (it must be on PostgreSQL): a copy of this
    /// one's state directory (keys, CA, controller.toml: what an operator copies, docs/ha.md)
    /// with its listeners on `ports`, started in this one's namespace.
    pub fn another(&self, host: &str, ports: Ports) -> ControllerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("controller");
        let out = Command::new("cp")
            .arg("-a")
            .arg(&self.state)
            .arg(&state)
            .output()
            .expect("cp");
        assert!(
            out.status.success(),
            "cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(state.join("controller.db"));
        listen_on(&state, host, ports, "");
        let mut c = ControllerProc {
            child: None,
            ns: self.ns.clone(),
            log: dir.path().join("controller.log"),
            state,
            api: format!("{host}:{}", ports.api),
            ca: self.ca.clone(),
            admin_token: self.admin_token.clone(),
            _dir: dir,
        };
        c.spawn();
        c
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the controller process; false if it is not
    /// running or the signal could not be sent.
    pub fn signal(&self, signal: &str) -> bool {
        self.pid().is_some_and(|pid| {
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success())
        })
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

/// Where a controller listens (on its host address).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub api: u16,
    pub agent: u16,
    pub metrics: u16,
}

impl Ports {
    pub const DEFAULT: Ports = Ports {
        api: 8443,
        agent: 8444,
        metrics: 9465,
    };
}

/// Rewrites the listeners in `state`'s controller.toml and appends `extra` (whose top-level
/// keys replace the file's).
fn listen_on(state: &std::path::Path, host: &str, ports: Ports, extra: &str) {
    let cfg = state.join("controller.toml");
    let text = std::fs::read_to_string(&cfg).expect("controller.toml");
    // Top-level keys that `extra` sets replace those init wrote (TOML refuses duplicates).
    let replaced: Vec<&str> = extra
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut text: String = text
        .lines()
        .filter(|l| {
            let key = l.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
            !["listen", "agent_listen", "agent_endpoint", "metrics_listen"].contains(&key)
                && !replaced.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let top = format!(
        "listen = \"{host}:{}\"\nagent_listen = \"{host}:{}\"\nmetrics_listen = \"127.0.0.1:{}\"\n",
        ports.api, ports.agent, ports.metrics
    );
    // Top-level keys go before the first table.
    text.insert_str(0, &top);
    text.push_str(extra);
    std::fs::write(&cfg, text).expect("controller.toml");
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        // A stopped process would not die of the kill until continued.
        self.signal("CONT");
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
