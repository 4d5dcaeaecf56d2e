//! The package test's cases in the chroot: install, verify, upgrade, remove and purge, each
//! shown by the maintainer scripts' recorded calls and the files left behind.

use anyhow::{Context, Result, ensure};

use super::chroot::{Chroot, calls_for, dpkg};
use super::{Ctx, DEBS};

pub(super) type Case = fn(&Chroot, &Ctx) -> Result<()>;

pub(super) const AGENT_UNIT: &str = "jit-agent.service";
pub(super) const CONTROLLER_UNIT: &str = "jit-controller.service";

pub(super) fn case_install(c: &Chroot, ctx: &Ctx) -> Result<()> {
    let debs = c.stage(&ctx.v1, "v1")?.join(" ");
    c.take_calls()?;
    let out = dpkg(c, &format!("-i {debs}"), &[])?;
    let calls = c.take_calls()?;
    for d in DEBS {
        ensure!(
            c.status(d.name)? == "install ok installed",
            "{} is not installed",
            d.name
        );
        ensure!(
            c.owner_mode(&format!("/usr/bin/{}", d.binary))? == "755 root:root",
            "/usr/bin/{} is not 755 root:root",
            d.binary
        );
    }
    ensure!(
        out.contains("NOT enforcing yet"),
        "the agent's postinst did not say how enforcement starts:\n{out}"
    );

    // Nothing was started, and the agent is not enabled: enforcement waits for root.
    ensure!(
        !calls.iter().any(|l| {
            l.contains("deb-systemd-invoke")
                || l.split_whitespace()
                    .any(|w| ["start", "restart", "try-restart", "reload-or-restart"].contains(&w))
        }),
        "installing asked systemd to start or restart something: {calls:#?}"
    );
    ensure!(
        calls_for(&calls, AGENT_UNIT).is_empty(),
        "installing asked systemd to act on jit-agent: {calls:#?}"
    );
    // jit's man pages and completions, generated from its clap definition, are installed.
    for f in [
        "/usr/share/man/man1/jit.1.gz",
        "/usr/share/man/man1/jit-request.1.gz",
        "/usr/share/bash-completion/completions/jit",
        "/usr/share/zsh/vendor-completions/_jit",
        "/usr/share/fish/vendor_completions.d/jit.fish",
    ] {
        ensure!(c.exists(f), "jitgate-cli did not install {f}");
    }
    // The controller is enabled (deb-systemd-helper's preset), not started.
    ensure!(
        calls_for(&calls, CONTROLLER_UNIT)
            == ["jitgate-controller postinst systemctl --root=/ --system \
                 --preset-mode=enable-only preset jit-controller.service"],
        "the controller's install should only enable it: {calls:#?}"
    );
    ensure!(
        calls
            .iter()
            .any(|l| l.starts_with("jitgate-agent postinst systemctl")
                && l.contains("daemon-reload")),
        "the agent's postinst did not reload systemd (its unit is new): {calls:#?}"
    );
    ensure!(
        !c.exists("/etc/systemd/system/sysinit.target.wants/jit-agent.service"),
        "installing enabled jit-agent"
    );
    // The controller is enabled but skips itself until `jit-controller init` has run.
    ensure!(
        c.exists("/etc/systemd/system/multi-user.target.wants/jit-controller.service"),
        "jit-controller is not enabled"
    );

    // Files, conffile, state directories.
    for f in [
        "/usr/lib/systemd/system/jit-agent.service",
        "/usr/lib/systemd/system/run-jitgate-bpf.mount",
        "/usr/lib/systemd/system/jit-controller.service",
        "/usr/lib/sysusers.d/jitgate-controller.conf",
        "/usr/share/doc/jitgate-agent/operations.md",
        "/usr/share/doc/jitgate-agent/copyright",
        "/usr/share/doc/jitgate-controller/operations.md",
    ] {
        ensure!(
            c.owner_mode(f)? == "644 root:root",
            "{f} is not 644 root:root"
        );
    }
    let conffiles = c.sh("dpkg-query -W -f='${Conffiles}' jitgate-agent")?;
    ensure!(
        conffiles.contains("/etc/jitgate/agent.toml"),
        "/etc/jitgate/agent.toml is not a conffile: {conffiles:?}"
    );
    c.sh("jit-agent check-config --config /etc/jitgate/agent.toml > /dev/null")?;
    ensure!(
        c.owner_mode("/var/lib/jitgate")? == "700 root:root",
        "/var/lib/jitgate is not 700 root:root"
    );

    // The dedicated system user and its state directory.
    let user = c.sh("getent passwd jitgate")?;
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields
        .get(2)
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX);
    ensure!(
        uid < 1000
            && fields.get(5) == Some(&"/var/lib/jitgate-controller")
            && fields.get(6) == Some(&"/usr/sbin/nologin"),
        "jitgate is not a system user with the state directory as home and no shell: {user}"
    );
    c.sh("getent group jitgate")?;
    ensure!(
        c.owner_mode("/var/lib/jitgate-controller")? == "700 jitgate:jitgate",
        "/var/lib/jitgate-controller is not 700 jitgate:jitgate"
    );

    // The XDP program travels inside the agent binary (a BPF ELF object; e_machine 247).
    let bin = std::fs::read(c.path("/usr/bin/jit-agent"))?;
    let bpf_objects = bin
        .windows(20)
        .filter(|w| w[..4] == *b"\x7fELF" && w[18..20] == [247, 0])
        .count();
    ensure!(
        bpf_objects >= 1,
        "no eBPF object inside the packaged jit-agent"
    );
    Ok(())
}

pub(super) fn case_verify(c: &Chroot, _: &Ctx) -> Result<()> {
    let units = [
        "jit-agent.service",
        "run-jitgate-bpf.mount",
        "jit-controller.service",
    ];
    for unit in units {
        let out = c.try_sh(
            &format!("systemd-analyze verify /usr/lib/systemd/system/{unit}"),
            &[],
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Any word about our own units is a finding (unknown settings only warn).
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("jit") || l.contains("run-jitgate"))
            .collect();
        ensure!(
            out.status.success() && ours.is_empty(),
            "systemd-analyze verify {unit}: {}\n{text}",
            out.status
        );
    }
    Ok(())
}

/// The documented first start of the controller: init as its user, files stay its own.
pub(super) fn case_controller_init(c: &Chroot, _: &Ctx) -> Result<()> {
    let out = c.sh(
        "runuser -u jitgate -- jit-controller --state-dir /var/lib/jitgate-controller \
         init --listen 127.0.0.1:8443 --agent-listen 127.0.0.1:8444",
    )?;
    ensure!(
        out.contains("admin token"),
        "init printed no admin token: {out}"
    );
    let foreign = c.sh("find /var/lib/jitgate-controller ! -user jitgate")?;
    ensure!(
        foreign.trim().is_empty(),
        "files in the state directory not owned by jitgate: {foreign}"
    );
    for key in ["grant-signing.key", "checkpoint.key"] {
        ensure!(
            c.owner_mode(&format!("/var/lib/jitgate-controller/keys/{key}"))?
                == "600 jitgate:jitgate",
            "keys/{key} is not 600 jitgate:jitgate"
        );
    }
    ensure!(
        c.exists("/var/lib/jitgate-controller/controller.toml"),
        "init wrote no controller.toml (the unit's start condition)"
    );
    Ok(())
}

pub(super) fn case_upgrade(c: &Chroot, ctx: &Ctx) -> Result<()> {
    // Local edits and state survive the upgrade.
    c.sh(
        "echo '# edited by root' >> /etc/jitgate/agent.toml; echo state > /var/lib/jitgate/marker",
    )?;
    let old = c.sh("dpkg-query -W -f='${Version}' jitgate-agent")?;
    let debs = c.stage(&ctx.v2, "v2")?.join(" ");
    c.take_calls()?;
    dpkg(c, &format!("-i {debs}"), &[])?;
    let calls = c.take_calls()?;
    for d in DEBS {
        let v = c.sh(&format!("dpkg-query -W -f='${{Version}}' {}", d.name))?;
        ensure!(
            v != old && v.ends_with("-2"),
            "{} is at {v}, not the repacked -2 (was {old})",
            d.name
        );
    }
    // No stop: the running agent keeps enforcing until the new one adopts the pins; then
    // only a try-restart (a stopped agent stays stopped).
    let agent = calls_for(&calls, AGENT_UNIT);
    ensure!(
        agent == ["jitgate-agent postinst deb-systemd-invoke try-restart jit-agent.service"],
        "the agent's upgrade should only try-restart it: {calls:#?}"
    );
    let controller = calls_for(&calls, CONTROLLER_UNIT);
    ensure!(
        controller
            == [
                "jitgate-controller postinst deb-systemd-invoke try-restart jit-controller.service"
            ],
        "the controller's upgrade should only try-restart it: {calls:#?}"
    );
    ensure!(
        c.sh("tail -n 1 /etc/jitgate/agent.toml")?.trim() == "# edited by root",
        "the upgrade replaced the edited conffile"
    );
    ensure!(
        c.exists("/var/lib/jitgate/marker")
            && c.exists("/var/lib/jitgate-controller/controller.toml"),
        "the upgrade lost state"
    );
    Ok(())
}

/// Pins what prerm looks for: the agent's pinned XDP link for an interface.
pub(super) const PINNED_LINK: &str = "/run/jitgate/bpf/agent/link_eth0_drv";

pub(super) fn case_remove_refused(c: &Chroot, _: &Ctx) -> Result<()> {
    std::fs::create_dir_all(c.path("/run/jitgate/bpf/agent"))?;
    std::fs::write(c.path(PINNED_LINK), "")?;
    c.take_calls()?;
    let out = c.try_sh("dpkg -r jitgate-agent", &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "removal went ahead with enforcement attached"
    );
    ensure!(
        stderr.contains("refusing to remove")
            && stderr.contains("jit-agent detach")
            && stderr.contains("JITGATE_DETACH=1"),
        "the refusal does not say how to detach: {stderr}"
    );
    let status = c.status("jitgate-agent")?;
    ensure!(
        // dpkg -r records the wish ("deinstall"); the package itself stays "installed".
        status.ends_with(" ok installed") && c.exists("/usr/bin/jit-agent"),
        "jitgate-agent is {status:?} after the refusal:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(c.exists(PINNED_LINK), "the refusal touched the pins");
    let calls = c.take_calls()?;
    ensure!(
        !calls.iter().any(|l| l.contains(" stop ")),
        "the refused removal stopped a service: {calls:#?}"
    );
    Ok(())
}

pub(super) fn case_remove_detach(c: &Chroot, _: &Ctx) -> Result<()> {
    c.take_calls()?;
    let out = dpkg(c, "-r jitgate-agent", &[("JITGATE_DETACH", "1")])?;
    ensure!(
        c.status("jitgate-agent")? == "deinstall ok config-files",
        "jitgate-agent was not removed: {out}"
    );
    ensure!(!c.exists(PINNED_LINK), "the detach left the pinned link");
    let calls = c.take_calls()?;
    ensure!(
        calls
            .first()
            .is_some_and(|l| l == "jitgate-agent prerm deb-systemd-invoke stop jit-agent.service"),
        "prerm did not stop the agent before detaching: {calls:#?}"
    );
    // Audited: the agent's own log records the detach, and removal keeps state and config.
    let audit = std::fs::read_to_string(c.path("/var/lib/jitgate/audit.log"))
        .context("no audit log after the detach")?;
    ensure!(
        audit.lines().any(|l| l.contains("\"agent.detached\"")),
        "the detach is not in the audit log: {audit}"
    );
    ensure!(
        c.exists("/etc/jitgate/agent.toml") && c.exists("/var/lib/jitgate/marker"),
        "remove (not purge) deleted configuration or state"
    );
    ensure!(!c.exists("/usr/bin/jit-agent"), "the binary is still there");
    Ok(())
}

pub(super) fn case_purge_agent(c: &Chroot, _: &Ctx) -> Result<()> {
    // Pins back (by hand, since): purge keeps the state.
    std::fs::create_dir_all(c.path("/run/jitgate/bpf/agent"))?;
    std::fs::write(c.path(PINNED_LINK), "")?;
    let out = c.try_sh("dpkg --purge jitgate-agent", &[])?;
    ensure!(
        !out.status.success() && c.exists("/var/lib/jitgate/audit.log"),
        "purge deleted the state with enforcement pinned"
    );
    std::fs::remove_file(c.path(PINNED_LINK))?;
    c.take_calls()?;
    dpkg(c, "--purge jitgate-agent", &[])?;
    ensure!(
        c.status("jitgate-agent")?.is_empty(),
        "jitgate-agent is still known to dpkg"
    );
    for gone in ["/var/lib/jitgate", "/etc/jitgate"] {
        ensure!(!c.exists(gone), "purge left {gone}");
    }
    let calls = c.take_calls()?;
    ensure!(
        !calls.iter().any(|l| l.contains("deb-systemd-invoke")),
        "purge asked systemd to act: {calls:#?}"
    );
    Ok(())
}

pub(super) fn case_purge_controller_cli(c: &Chroot, _: &Ctx) -> Result<()> {
    c.take_calls()?;
    dpkg(c, "-r jitgate-controller jitgate-cli", &[])?;
    let calls = c.take_calls()?;
    ensure!(
        calls_for(&calls, CONTROLLER_UNIT)
            .contains(&"jitgate-controller prerm deb-systemd-invoke stop jit-controller.service"),
        "removing the controller did not stop it: {calls:#?}"
    );
    ensure!(
        c.exists("/var/lib/jitgate-controller/controller.toml"),
        "remove (not purge) deleted the controller's state"
    );
    ensure!(
        !c.exists("/usr/bin/jit") && !c.exists("/usr/bin/jit-controller"),
        "binaries left after remove"
    );
    dpkg(c, "--purge jitgate-controller jitgate-cli", &[])?;
    ensure!(
        !c.exists("/var/lib/jitgate-controller"),
        "purge left the controller's state"
    );
    ensure!(
        !c.exists("/etc/systemd/system/multi-user.target.wants/jit-controller.service"),
        "purge left the controller enabled"
    );
    // Debian keeps system users: files elsewhere may still belong to it.
    c.sh("getent passwd jitgate > /dev/null")?;
    Ok(())
}
