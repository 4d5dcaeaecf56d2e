//! The package test's throwaway Debian root: made by mmdebstrap, systemd shimmed so the
//! maintainer scripts' calls are recorded, removed (mounts first) when dropped.

use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the shims write the calls, inside the root.
pub(super) const CALLS: &str = "var/log/jitgate-package-test.calls";

/// Replaces systemctl and deb-systemd-invoke in the root: records who called (dpkg names the
/// package and maintainer script) and what was asked. Offline work on unit files (`--root=`,
/// as deb-systemd-helper's `preset` for enabling) is passed to the real tool; anything that
/// would talk to a running systemd just succeeds.
pub(super) const SHIM: &str = r#"#!/bin/sh
echo "${DPKG_MAINTSCRIPT_PACKAGE:--} ${DPKG_MAINTSCRIPT_NAME:--} ${0##*/} $*" >> /var/log/jitgate-package-test.calls
case " $* " in
    *" --root="*) exec "$0.real" "$@" ;;
esac
exit 0
"#;

/// A throwaway Debian root: mmdebstrap'ed, /proc mounted, systemd shimmed. Dropping it
/// unmounts and deletes it (also when a case failed or panicked).
pub(super) struct Chroot {
    pub(super) dir: PathBuf,
}

impl Chroot {
    pub(super) fn create(dir: &Path) -> Result<Chroot> {
        std::fs::create_dir_all(dir)?;
        // From here on, Drop cleans up whatever exists.
        let chroot = Chroot {
            dir: dir.to_path_buf(),
        };
        let (suite, mirror) = host_debian_source()?;
        // The Essential set plus systemd (sysusers, systemd-analyze) and init-system-helpers
        // (deb-systemd-helper / -invoke, which the maintainer scripts call); dpkg without
        // fsync, as nothing here has to survive a crash.
        crate::run(
            Command::new("mmdebstrap")
                .args([
                    "--variant=essential",
                    "--include=init-system-helpers,systemd",
                    "--dpkgopt=force-unsafe-io",
                    "--quiet",
                    &suite,
                ])
                .arg(dir)
                .arg(&mirror),
        )?;
        crate::run(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(dir.join("proc")),
        )?;
        // The maintainer scripts talk to systemd only where it is running.
        std::fs::create_dir_all(dir.join("run/systemd/system"))?;
        for tool in ["systemctl", "deb-systemd-invoke"] {
            chroot.sh(&format!(
                "set -e; p=$(command -v {tool}); mv \"$p\" \"$p.real\"; cat > \"$p\" <<'EOF'\n{SHIM}EOF\nchmod 755 \"$p\""
            ))?;
        }
        Ok(chroot)
    }

    /// Runs a shell script inside the root; fails unless it exits 0.
    pub(super) fn sh(&self, script: &str) -> Result<String> {
        let out = self.try_sh(script, &[])?;
        ensure!(
            out.status.success(),
            "in the root: `{script}` failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a shell script inside the root with a clean environment plus `env`.
    pub(super) fn try_sh(&self, script: &str, env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.dir)
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .envs(env.iter().copied());
        cmd.output().with_context(|| format!("running {cmd:?}"))
    }

    /// Copies packages into the root; their paths there.
    pub(super) fn stage(&self, debs: &[PathBuf], sub: &str) -> Result<Vec<String>> {
        // Not /tmp: a booted container gets a fresh one.
        let dest = self.dir.join("srv/debs").join(sub);
        std::fs::create_dir_all(&dest)?;
        debs.iter()
            .map(|d| {
                let name = d.file_name().context("a package without a file name")?;
                std::fs::copy(d, dest.join(name))?;
                Ok(format!("/srv/debs/{sub}/{}", name.to_string_lossy()))
            })
            .collect()
    }

    /// The recorded calls since the last look, and forgets them.
    pub(super) fn take_calls(&self) -> Result<Vec<String>> {
        let path = self.dir.join(CALLS);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, "")?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// Makes the root bootable again: the real systemctl and deb-systemd-invoke back, and
    /// the host's /proc gone (the container mounts its own).
    pub(super) fn prepare_boot(&self) -> Result<()> {
        for tool in ["systemctl", "deb-systemd-invoke"] {
            self.sh(&format!(
                "set -e; p=$(command -v {tool}); mv \"$p.real\" \"$p\""
            ))?;
        }
        std::fs::remove_dir_all(self.path("/run/systemd"))?;
        crate::run(Command::new("umount").arg(self.path("/proc")))
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    pub(super) fn exists(&self, p: &str) -> bool {
        self.path(p).symlink_metadata().is_ok()
    }

    /// `mode user:group` of a path inside the root, as its own tools see it.
    pub(super) fn owner_mode(&self, p: &str) -> Result<String> {
        Ok(self
            .sh(&format!("stat -c '%a %U:%G' {p}"))?
            .trim()
            .to_string())
    }

    /// dpkg's status of a package ("install ok installed", "deinstall ok config-files", "").
    pub(super) fn status(&self, pkg: &str) -> Result<String> {
        let out = self.try_sh(&format!("dpkg-query -W -f='${{Status}}' {pkg}"), &[])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if let Err(e) = remove_root(&self.dir) {
            eprintln!("package test: cleaning up {}: {e:#}", self.dir.display());
        }
    }
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub(super) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| {
            PathBuf::from(
                p.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

/// Unmounts everything under `dir`, then deletes it without crossing into any file system
/// that is still mounted there.
pub(super) fn remove_root(dir: &Path) -> Result<()> {
    for m in mounts_under(dir)? {
        let ok = Command::new("umount")
            .arg(&m)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            crate::run(Command::new("umount").arg("--lazy").arg(&m))?;
        }
    }
    let left = mounts_under(dir)?;
    ensure!(
        left.is_empty(),
        "still mounted under {}: {left:?}; not deleting it",
        dir.display()
    );
    if dir.exists() {
        crate::run(
            Command::new("rm")
                .args(["-rf", "--one-file-system"])
                .arg(dir),
        )?;
    }
    Ok(())
}

/// Roots left by runs that were killed (their process is gone).
pub(super) fn remove_stale_roots(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let path = e?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("root-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!(
                "package test: removing {} (left by a killed run)",
                path.display()
            );
            remove_root(&path)?;
        }
    }
    Ok(())
}

/// The suite and mirror this machine's apt uses for Debian itself (/etc/apt/sources.list,
/// one-line or deb822 files in sources.list.d), for the codename in /etc/os-release.
pub(super) fn host_debian_source() -> Result<(String, String)> {
    let os = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let suite = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release")?;
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        let found = if name.ends_with(".sources") {
            deb822_mirror(&text, &suite)
        } else if name.ends_with(".list") {
            one_line_mirror(&text, &suite)
        } else {
            None
        };
        if let Some(mirror) = found {
            return Ok((suite, mirror));
        }
    }
    bail!("no `deb` source for suite {suite} with component main in /etc/apt/sources.list*")
}

/// `deb [options] URI SUITE COMPONENT...`
pub(super) fn one_line_mirror(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.split('#').next()?.trim();
        let rest = l.strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let (uri, s) = (words.next()?, words.next()?);
        (s == suite && words.any(|c| c == "main")).then(|| uri.to_string())
    })
}

/// deb822 stanzas: `Types: deb`, `URIs:`, `Suites:`, `Components:`.
pub(super) fn deb822_mirror(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let types = field("Types")?;
        let suites = field("Suites")?;
        let components = field("Components")?;
        let uri = field("URIs")?;
        (enabled
            && types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == suite)
            && components.split_whitespace().any(|c| c == "main"))
        .then(|| uri.split_whitespace().next().map(str::to_string))
        .flatten()
    })
}

/// A `dpkg` command in the root; fails unless it succeeds.
pub(super) fn dpkg(c: &Chroot, args: &str, env: &[(&str, &str)]) -> Result<String> {
    let out = c.try_sh(&format!("dpkg {args}"), env)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "dpkg {args} failed: {}\n{text}",
        out.status
    );
    Ok(text)
}

/// Calls made for `unit` by any script, as "PACKAGE SCRIPT TOOL ARGS".
pub(super) fn calls_for<'a>(calls: &'a [String], unit: &str) -> Vec<&'a str> {
    calls
        .iter()
        .map(String::as_str)
        .filter(|c| c.split_whitespace().any(|w| w == unit))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_mirror_in_both_formats() {
        let deb822 = "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            deb822_mirror(deb822, "bookworm").as_deref(),
            Some("http://deb.example/debian")
        );
        assert_eq!(deb822_mirror(deb822, "trixie"), None);
        let off = "Enabled: no\nTypes: deb\nURIs: http://a/\nSuites: bookworm\nComponents: main\n";
        assert_eq!(deb822_mirror(off, "bookworm"), None);
        let list = "# comment\ndeb-src http://src/ bookworm main\ndeb [arch=amd64] http://mirror.example/debian bookworm main contrib\n";
        assert_eq!(
            one_line_mirror(list, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            one_line_mirror("deb http://x/ bookworm contrib\n", "bookworm"),
            None
        );
    }
}
