//! Runs the real `jit-agent` binary inside a lab's vm namespace (`ip netns exec`, as an
//! operator would), with its own pin directory, state directory and socket.

use crate::{PinGuard, TEST_PIN_ROOT, unique};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `jit-agent` binary.
pub fn agent_bin() -> PathBuf {
    bin("jit-agent")
}

/// A workspace binary next to this test's target directory (`cargo xtask test` builds them
/// before running the tests).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // A binary sits beside it (target/<profile>/jitgate-bench); a test one level down
    // (target/<profile>/deps/<test>).
    let here = exe.parent().expect("exe dir");
    let bin = [here.join(name), here.parent().unwrap_or(here).join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join(name));
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bins`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Command-line words from one string: `args("--port 22 --duration 1h")`.
pub fn args(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

pub struct AgentProc {
    child: Option<Child>,
    pub ns: String,
    pub args: Vec<String>,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    _state: tempfile::TempDir,
    _pins: PinGuard,
}

impl AgentProc {
    /// Starts the agent in namespace `ns` with `args` after `run` (e.g. `--interface vm*`,
    /// `--protect 22/tcp`) and waits until its socket answers.
    pub fn start(ns: &str, args: &[&str]) -> AgentProc {
        jitgate_agent::bpffs::ensure_pin_dir(Path::new(TEST_PIN_ROOT)).expect("test bpffs root");
        let state = tempfile::tempdir().expect("state dir");
        let pin_dir = PathBuf::from(TEST_PIN_ROOT).join(unique("ag"));
        let mut a = AgentProc {
            child: None,
            ns: ns.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            pin_dir: pin_dir.clone(),
            state_dir: state.path().join("state"),
            socket: state.path().join("agent.sock"),
            log: state.path().join("agent.log"),
            _state: state,
            _pins: PinGuard(pin_dir),
        };
        a.spawn();
        a
    }

    /// Like `start`, after enrolling with the controller at `api` with `token`.
    pub fn start_enrolled(ns: &str, args: &[&str], api: &str, ca: &Path, token: &str) -> AgentProc {
        jitgate_agent::bpffs::ensure_pin_dir(Path::new(TEST_PIN_ROOT)).expect("test bpffs root");
        let state = tempfile::tempdir().expect("state dir");
        let pin_dir = PathBuf::from(TEST_PIN_ROOT).join(unique("ag"));
        let a = AgentProc {
            child: None,
            ns: ns.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            pin_dir: pin_dir.clone(),
            state_dir: state.path().join("state"),
            socket: state.path().join("agent.sock"),
            log: state.path().join("agent.log"),
            _state: state,
            _pins: PinGuard(pin_dir),
        };
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(agent_bin())
            .args(["enroll", "--controller", api, "--ca"])
            .arg(ca)
            .args(["--token", token, "--state-dir"])
            .arg(&a.state_dir)
            .output()
            .expect("jit-agent enroll");
        assert!(
            out.status.success(),
            "enroll: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut a = a;
        a.spawn();
        a
    }

    /// Starts the agent process (again, after `kill`) and waits until it is ready.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.state_dir.join("agent.ready"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(agent_bin())
            .arg("--socket")
            .arg(&self.socket)
            .arg("run")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn jit-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.state_dir.join("agent.ready").exists() {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("jit-agent exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "jit-agent did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's pid (`ip netns exec` execs it, so it is our child's pid).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident set size of the agent, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `jit-agent --socket <ours> <args>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run jit-agent")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "jit-agent {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `grant ...` returning the new ids.
    pub fn grant(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec!["grant"];
        a.extend_from_slice(args);
        self.ok(&a).lines().map(str::to_string).collect()
    }

    pub fn grants_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["grants", "--json"])).expect("grants json")
    }

    pub fn grant_count(&self) -> usize {
        self.grants_json()["grants"]["grants"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- jit-agent log (last 40 lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
