//! The demo's lab: a workstation namespace running the controller, vm-01 with a real sshd and
//! an enrolled jit-agent enforcing 22/tcp with XDP, vm-02 registered without a policy, and a
//! JIT policy on vm-01's resource group. What it made is recorded, so that the demo can check
//! at the end that all of it is gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use jitgate_browser::Forwarder;
use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use jitgate_tests::wait_until;

use crate::stop::{Step, check, fail};

/// The controller's HTTPS API inside the workstation namespace.
pub const API_PORT: u16 = 8443;

/// How browsers reach the portal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// At the workstation's lab address, from inside the workstation namespace (the demo's
    /// Chromium).
    LabAddress,
    /// At `https://127.0.0.1:PORT/` of this host, through a forwarder whose connections are
    /// opened inside the workstation namespace (`demo --portal`: the host's own browser).
    Loopback,
}

/// Fields drop in order: the forwarder, the agent (its pins go with it), the controller,
/// sshd, then the namespaces.
pub struct Lab {
    pub forward: Option<Forwarder>,
    pub agent: AgentProc,
    pub ctl: ControllerProc,
    pub sshd: Sshd,
    pub fleet: Fleet,
    /// The portal's origin, as the browser uses it (`public_url`).
    pub origin: String,
}

/// What the lab made: namespaces, pin directories, processes. Checked after everything was
/// dropped.
#[derive(Default)]
pub struct Made {
    pub namespaces: Vec<String>,
    pub pin_dirs: Vec<PathBuf>,
    pub pids: Vec<u32>,
}

impl Made {
    /// Remembers the processes running in the lab's namespaces now.
    pub fn note_processes(&mut self) {
        for ns in &self.namespaces {
            let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
                continue;
            };
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<u32>()
                    && !self.pids.contains(&pid)
                {
                    self.pids.push(pid);
                }
            }
        }
    }

    /// What is still there, waiting up to `limit` for processes to be gone (empty: nothing).
    pub fn left_over(&self, limit: Duration) -> Vec<String> {
        let end = Instant::now() + limit;
        loop {
            let mut left = vec![];
            for ns in &self.namespaces {
                if Fleet::ns_path(ns).exists() {
                    left.push(format!("network namespace {ns}"));
                }
            }
            for d in &self.pin_dirs {
                if d.exists() {
                    left.push(format!("pins under {}", d.display()));
                }
            }
            for pid in &self.pids {
                if let Some(name) = live_process(*pid) {
                    left.push(format!("process {pid} ({name})"));
                }
            }
            if left.is_empty() || Instant::now() > end {
                return left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The command name of a live (not zombie) process.
fn live_process(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last.
    let (head, tail) = stat.rsplit_once(')')?;
    let state = tail.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    head.split_once('(').map(|(_, c)| c.to_string())
}

impl Lab {
    /// Builds the lab; `rt` runs the loopback forwarder's connections.
    pub fn start(reach: Reach, rt: &tokio::runtime::Runtime, made: &mut Made) -> Step<Lab> {
        let fleet = Fleet::new(2).map_err(|e| fail(format!("cannot create namespaces: {e}")))?;
        made.namespaces.push(fleet.ws.clone());
        made.namespaces
            .extend(fleet.vms.iter().map(|v| v.ns.clone()));
        check()?;
        let vm = &fleet.vms[0];
        let sshd = Sshd::start(&vm.ns).map_err(|e| fail(format!("cannot start sshd: {e}")))?;
        let api = SocketAddr::from((
            WS_V4
                .parse::<std::net::Ipv4Addr>()
                .map_err(|e| fail(format!("{WS_V4}: {e}")))?,
            API_PORT,
        ));
        let (forward, origin) = match reach {
            Reach::LabAddress => (None, format!("https://{api}")),
            Reach::Loopback => {
                let f = rt
                    .block_on(Forwarder::start(&Fleet::ns_path(&fleet.ws), api))
                    .map_err(fail)?;
                let origin = format!("https://127.0.0.1:{}", f.port);
                (Some(f), origin)
            }
        };
        check()?;
        // public_url is the origin the browser uses: forms are accepted only from it, and
        // one-time links are made with it.
        let ctl =
            ControllerProc::start_with(&fleet.ws, WS_V4, &format!("public_url = \"{origin}\"\n"));
        let token = ctl.add_vm("vm-01", vm.v4);
        ctl.admin(&["rg", "add", "staging", "--owner", "dev@example.net"]);
        ctl.admin(&[
            "vm",
            "add",
            "vm-02",
            "--resource-group",
            "staging",
            "--address",
            &fleet.vms[1].v4.to_string(),
        ]);
        let policy = ctl.jit(
            &fleet.ws,
            &args(
                "policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 \
                 --max 1h --on-expiry cut",
            ),
        );
        if !policy.status.success() {
            return Err(fail(format!(
                "jit policy set: {}",
                String::from_utf8_lossy(&policy.stderr)
            )));
        }
        check()?;
        let agent = AgentProc::start_enrolled(
            &vm.ns,
            &args("--interface eth0 --protect 22/tcp:cut"),
            &ctl.api,
            &ctl.ca,
            &token,
        );
        made.pin_dirs.push(agent.pin_dir.clone());
        made.note_processes();
        // The controller's signed policy reaches the agent over its channel.
        if !wait_until(Duration::from_secs(20), || {
            stopped_or(agent.cli(&["status"]).stdout, "22/tcp:cut")
        }) {
            check()?;
            return Err(fail("the JIT policy did not reach the agent within 20 s"));
        }
        check()?;
        Ok(Lab {
            forward,
            agent,
            ctl,
            sshd,
            fleet,
            origin,
        })
    }

    /// A fresh one-time sign-in link for alice, admin on everything: (URL, expiry).
    pub fn login_link(&self) -> Step<(String, String)> {
        let v = self.ctl.admin(&[
            "login-link",
            "--name",
            "alice",
            "--role",
            "admin",
            "--scope",
            "*",
        ]);
        let url = v["url"].as_str().unwrap_or_default().to_string();
        if !url.starts_with(&format!("{}/auth/link?t=", self.origin)) {
            return Err(fail(format!("unexpected sign-in link: {v}")));
        }
        let until = v["expiresTimeUtc"].as_str().unwrap_or_default().to_string();
        Ok((url, until))
    }

    /// `ssh root@vm-01 <cmd>` from the workstation namespace: (worked, what it printed).
    pub fn ssh(&self, cmd: &str, timeout_secs: u32) -> Step<(bool, String)> {
        let vm = &self.fleet.vms[0];
        let o = self
            .sshd
            .ssh(&self.fleet.ws, vm.v4, cmd, timeout_secs)
            .map_err(|e| fail(format!("ssh: {e}")))?;
        let text = if o.status.success() {
            String::from_utf8_lossy(&o.stdout).into_owned()
        } else {
            String::from_utf8_lossy(&o.stderr).into_owned()
        };
        Ok((o.status.success(), text))
    }

    /// The command a person types to SSH to vm-01 from the workstation namespace.
    pub fn ssh_command(&self) -> String {
        format!(
            "ip netns exec {} ssh -F /dev/null -i {} -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@{}",
            self.fleet.ws,
            self.sshd.key.display(),
            self.fleet.vms[0].v4
        )
    }
}

/// True when the agent's status names `needle`, or a signal came (the wait ends either way).
fn stopped_or(stdout: Vec<u8>, needle: &str) -> bool {
    crate::stop::stopped() || String::from_utf8_lossy(&stdout).contains(needle)
}
