//! The package test's second half: the same root booted by systemd-nspawn, so real systemd
//! runs the units (sandboxes included) and the agent attaches its XDP program.

use anyhow::{Context, Result, bail, ensure};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use super::Ctx;
use super::cases::{AGENT_UNIT, CONTROLLER_UNIT};
use super::chroot::Chroot;

/// The root booted by systemd-nspawn: systemd as PID 1, a private network with only `lo`,
/// and the capabilities the agent needs for its XDP program. Commands enter it with nsenter.
/// Dropping it powers the container off (its pins and bpffs go with it).
pub(super) struct Booted<'a> {
    root: &'a Chroot,
    nspawn: std::process::Child,
    leader: u32,
}

impl<'a> Booted<'a> {
    pub(super) fn start(root: &'a Chroot, log_path: &Path) -> Result<Booted<'a>> {
        let log = std::fs::File::create(log_path)?;
        // setpriv: if this process dies, nspawn is told to power the container off.
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--pdeathsig",
            "TERM",
            "--",
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            // The agent's: its program and maps (nspawn's own filter refuses bpf()).
            "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN",
            "--system-call-filter=bpf",
        ])
        .arg("--directory")
        .arg(&root.dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        eprintln!("+ {cmd:?}");
        let nspawn = cmd.spawn().context("spawning systemd-nspawn")?;
        let mut booted = Booted {
            root,
            nspawn,
            leader: 0,
        };
        let pid = booted.nspawn.id();
        // Not simply nspawn's first child: nspawn forks a short-lived helper before the
        // container's init, and a busy machine can show the helper to the first poll
        // (commands aimed at it then fail until the wait gives up).
        wait_for("the container's systemd", 60, || {
            if let Some(status) = booted.nspawn.try_wait()? {
                bail!("systemd-nspawn exited: {status}");
            }
            booted.leader = container_init(pid).unwrap_or(0);
            Ok(booted.leader != 0)
        })?;
        let mut state = String::new();
        let waited = wait_for("the container's boot", 180, || {
            let out = booted.try_sh("systemctl is-system-running", &[])?;
            state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(state == "running" || state == "degraded")
        });
        if let Err(e) = waited {
            let jobs = booted
                .try_sh(
                    "systemctl list-jobs --no-pager; systemctl --failed --no-pager",
                    &[],
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let console = std::fs::read_to_string(log_path).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(e.context(format!(
                "state {state:?} (init pid {}); jobs:\n{jobs}\nconsole (last 40 lines):\n{}",
                booted.leader,
                tail.join("\n")
            )));
        }
        Ok(booted)
    }

    pub(super) fn try_sh(&self, script: &str, env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.leader))
            .args(["--all", "--root", "--wd", "/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .envs(env.iter().copied());
        cmd.output().with_context(|| format!("running {cmd:?}"))
    }

    pub(super) fn sh(&self, script: &str) -> Result<String> {
        let out = self.try_sh(script, &[])?;
        ensure!(
            out.status.success(),
            "in the container: `{script}` failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `systemctl is-active UNIT` (or is-enabled, ...): its one word.
    pub(super) fn systemctl(&self, verb: &str, unit: &str) -> Result<String> {
        let out = self.try_sh(&format!("systemctl {verb} {unit}"), &[])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub(super) fn main_pid(&self, unit: &str) -> Result<u32> {
        Ok(self
            .sh(&format!("systemctl show -P MainPID {unit}"))?
            .parse()
            .unwrap_or(0))
    }

    /// Pinned XDP links in the agent's pin directory.
    pub(super) fn links(&self) -> Result<Vec<String>> {
        let out = self.try_sh("ls /run/jitgate/bpf/agent", &[])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|n| n.starts_with("link_"))
            .map(str::to_string)
            .collect())
    }

    /// The agent's loaded program id (`jit-agent status --json`), once it answers.
    pub(super) fn program_id(&self) -> Result<Option<u64>> {
        let out = self.try_sh("jit-agent status --json", &[])?;
        if !out.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(json_number(&text, "programId"))
    }

    pub(super) fn controller(&self, args: &str) -> Result<String> {
        self.sh(&format!(
            "runuser -u jitgate -- jit-controller --state-dir /var/lib/jitgate-controller {args}"
        ))
    }
}

impl Drop for Booted<'_> {
    fn drop(&mut self) {
        // SIGTERM: nspawn asks the container's systemd to power off.
        let pid = self.nspawn.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The container's init among the descendants of `pid` (nspawn): the process that is
/// PID 1 in a PID namespace of its own (its `NSpid` line ends in 1).
pub(super) fn container_init(pid: u32) -> Option<u32> {
    let mut queue = children(pid);
    let mut seen = 0;
    while let Some(p) = queue.pop() {
        seen += 1;
        if seen > 64 {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ids: Vec<&str> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        if ids.len() >= 2 && ids.last() == Some(&"1") {
            return Some(p);
        }
        queue.extend(children(p));
    }
    None
}

/// The child processes of `pid`.
pub(super) fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Polls `f` every 250 ms until it says yes, for at most `seconds`.
pub(super) fn wait_for(
    what: &str,
    seconds: u64,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if f()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {seconds} s");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The number after `"key":` in a JSON text (enough for the one field read here).
pub(super) fn json_number(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\""))?;
    let rest = text[at + key.len() + 2..].trim_start().strip_prefix(':')?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

pub(super) type LiveCase = fn(&Booted, &Ctx) -> Result<()>;

pub(super) fn live_install(b: &Booted, ctx: &Ctx) -> Result<()> {
    let debs = b.root.stage(&ctx.v1, "v1")?.join(" ");
    b.sh(&format!("dpkg -i {debs} > /dev/null"))?;
    let agent = (
        b.systemctl("is-active", AGENT_UNIT)?,
        b.systemctl("is-enabled", AGENT_UNIT)?,
    );
    ensure!(
        agent == ("inactive".into(), "disabled".into()),
        "after install jit-agent is {agent:?}, not inactive and disabled"
    );
    ensure!(b.links()?.is_empty(), "enforcement attached at install");
    let controller = (
        b.systemctl("is-active", CONTROLLER_UNIT)?,
        b.systemctl("is-enabled", CONTROLLER_UNIT)?,
    );
    ensure!(
        controller == ("inactive".into(), "enabled".into()),
        "after install jit-controller is {controller:?}, not inactive and enabled"
    );
    // Not initialised: a start is skipped by the unit's condition, not a failure.
    b.sh("systemctl start jit-controller")?;
    ensure!(
        b.systemctl("is-active", CONTROLLER_UNIT)? == "inactive"
            && b.sh("systemctl show -P ConditionResult jit-controller")? == "no",
        "an uninitialised controller did not skip its start"
    );
    Ok(())
}

/// The documented first start: init as jitgate, start, and the API serves an enrolment.
pub(super) fn live_controller(b: &Booted, _: &Ctx) -> Result<()> {
    b.controller("init --listen 127.0.0.1:8443 --agent-listen 127.0.0.1:8444 > /dev/null")?;
    b.sh("systemctl start jit-controller")?;
    wait_for("jit-controller active", 30, || {
        Ok(b.systemctl("is-active", CONTROLLER_UNIT)? == "active")
    })?;
    // The sandbox as the kernel sees it: the jitgate user, no capabilities, no new
    // privileges, a seccomp filter. ("active" comes at fork: wait for the exec.)
    let uid = b.sh("id -u jitgate")?;
    let mut status = String::new();
    wait_for("jit-controller exec'd", 30, || {
        let pid = b.main_pid(CONTROLLER_UNIT)?;
        let out = b.try_sh(
            &format!("readlink /proc/{pid}/exe && cat /proc/{pid}/status"),
            &[],
        )?;
        status = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(out.status.success() && status.starts_with("/usr/bin/jit-controller\n"))
    })?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    ensure!(
        field("Uid:").first() == Some(&uid.as_str())
            && field("CapEff:") == ["0000000000000000"]
            && field("CapBnd:") == ["0000000000000000"]
            && field("NoNewPrivs:") == ["1"]
            && field("Seccomp:") == ["2"],
        "jit-controller is not sandboxed as its unit says:\n{status}"
    );
    b.controller("rg add prod --owner ops@example.net > /dev/null")?;
    let added = b.controller("--json vm add vm1 --resource-group prod --address 127.0.0.1")?;
    let token = added
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("jitenroll_"))
        .with_context(|| format!("vm add printed no enrolment token: {added}"))?;
    // The agent's first start, enrolled: over the controller's HTTPS API.
    b.sh(&format!(
        "jit-agent enroll --controller 127.0.0.1:8443 \
         --ca /var/lib/jitgate-controller/tls/ca.crt --token {token} \
         --config /etc/jitgate/agent.toml"
    ))?;
    ensure!(
        b.sh("test -f /var/lib/jitgate/enrollment/agent.key && stat -c %a /var/lib/jitgate/enrollment/agent.key")?
            == "600",
        "the enrolment key is not 0600"
    );
    Ok(())
}

pub(super) const LIVE_CONFIG: &str = r#"interfaces = ["lo"]
[[protect]]
port = 2222
protocol = "tcp"
"#;

pub(super) fn live_agent(b: &Booted, _: &Ctx) -> Result<()> {
    b.sh(&format!(
        "cat > /etc/jitgate/agent.toml <<'EOF'\n{LIVE_CONFIG}EOF"
    ))?;
    b.sh("systemctl enable --now jit-agent")?;
    wait_for("the agent attached", 60, || {
        Ok(b.program_id()?.is_some() && !b.links()?.is_empty())
    })?;
    ensure!(
        b.systemctl("is-active", "run-jitgate-bpf.mount")? == "active",
        "the pin root is not mounted by its unit"
    );
    // Enrolled: it reaches the controller over the agent channel.
    wait_for("the agent online at the controller", 60, || {
        Ok(b.controller("agents")?.contains("online"))
    })?;
    let links = b.links()?;
    // Stopped, it still enforces: the pins live on the unit's bpffs, not in the service.
    b.sh("systemctl stop jit-agent")?;
    ensure!(
        b.links()? == links,
        "stopping the agent removed its pins (enforcement would be gone)"
    );
    let before = b.main_pid(AGENT_UNIT)?;
    b.sh("systemctl start jit-agent")?;
    wait_for("the agent back", 60, || Ok(b.program_id()?.is_some()))?;
    ensure!(
        b.main_pid(AGENT_UNIT)? != before && b.links()? == links,
        "the restarted agent did not adopt its pins"
    );
    Ok(())
}

pub(super) fn live_upgrade(b: &Booted, ctx: &Ctx) -> Result<()> {
    let links = b.links()?;
    let pid = b.main_pid(AGENT_UNIT)?;
    let program = b.program_id()?;
    let agent = ctx
        .v2
        .iter()
        .find(|d| d.to_string_lossy().contains("jitgate-agent_"))
        .cloned()
        .context("no revision 2 of jitgate-agent")?;
    let staged = b.root.stage(&[agent], "v2")?.join(" ");
    b.sh(&format!("dpkg -i {staged} > /dev/null"))?;
    // The running agent was restarted by the upgrade; the new one adopted the same pinned
    // link and swapped its own program into it.
    wait_for("the upgraded agent", 60, || {
        Ok(b.main_pid(AGENT_UNIT)? != pid && b.program_id()?.is_some())
    })?;
    ensure!(
        b.links()? == links,
        "the upgrade changed the pinned links: {links:?} -> {:?}",
        b.links()?
    );
    ensure!(
        b.program_id()? != program,
        "the upgraded agent runs the old program ({program:?})"
    );
    Ok(())
}

pub(super) fn live_remove(b: &Booted, _: &Ctx) -> Result<()> {
    let out = b.try_sh("dpkg -r jitgate-agent", &[])?;
    ensure!(
        !out.status.success() && b.systemctl("is-active", AGENT_UNIT)? == "active",
        "removing a running agent was not refused"
    );
    let out = b.try_sh("dpkg -r jitgate-agent", &[("JITGATE_DETACH", "1")])?;
    ensure!(
        out.status.success(),
        "JITGATE_DETACH=1 removal failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        b.links()?.is_empty() && b.systemctl("is-active", AGENT_UNIT)? != "active",
        "enforcement or the agent survived the removal"
    );
    ensure!(
        b.sh("grep -c '\"agent.detached\"' /var/lib/jitgate/audit.log")? != "0",
        "the detach is not in the audit log"
    );
    b.sh("dpkg --purge jitgate-agent jitgate-controller jitgate-cli > /dev/null")?;
    ensure!(
        b.systemctl("is-active", CONTROLLER_UNIT)? != "active",
        "the purged controller still runs"
    );
    Ok(())
}
