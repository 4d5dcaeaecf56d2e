//! `cargo xtask package`: the Debian packages `jitgate-agent`, `jitgate-controller` and
//! `jitgate-cli`, made by cargo-deb from one `cargo build --release`, and their test
//! (`--test`, also a step of `cargo xtask test`): lintian, then install, `systemd-analyze
//! verify`, upgrade, remove and purge in a throwaway Debian root made by mmdebstrap, with
//! every `systemctl` / `deb-systemd-invoke` call of the maintainer scripts recorded (no
//! service runs in a chroot, so "does not start" is shown by what was asked of systemd).
//!
//! What goes into each package is declared in the crates' `[package.metadata.deb]`; the
//! units, maintainer scripts and sysusers file are in packaging/ (docs/operations.md).

use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// Installed by `cargo install` when missing (setup and `package`).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Host packages the package test needs (installed by setup).
pub const APT_PACKAGES: &[&str] = &["mmdebstrap", "systemd-container", "lintian", "dpkg-dev"];

/// Who maintains the packages (the Maintainer field).
const MAINTAINER: &str = "jitgate maintainers <maintainers@jitgate.invalid>";

/// One Debian package: the crate whose metadata describes it and its binary.
struct Deb {
    krate: &'static str,
    name: &'static str,
    binary: &'static str,
}

const DEBS: &[Deb] = &[
    Deb {
        krate: "jitgate-agent",
        name: "jitgate-agent",
        binary: "jit-agent",
    },
    Deb {
        krate: "jitgate-controller",
        name: "jitgate-controller",
        binary: "jit-controller",
    },
    Deb {
        krate: "jitgate-cli",
        name: "jitgate-cli",
        binary: "jit",
    },
];

#[derive(clap::Args)]
pub struct Args {
    /// Package the existing release build instead of running `cargo build --release` first.
    #[arg(long)]
    no_build: bool,
    /// Debian revision, the part of the version after the upstream (crate) version.
    #[arg(long, default_value = "1")]
    revision: String,
    /// Directory for the .deb files [default: target/debian].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Test the packaging instead (root): lintian, install, systemd-analyze verify, upgrade,
    /// remove and purge in a throwaway Debian root, then the units for real in that root
    /// booted. Packages the dev build (what `cargo xtask test` has built) unless --release.
    #[arg(long, conflicts_with_all = ["no_build", "revision", "output"])]
    test: bool,
    /// With --test: package the release build (about 7 minutes of compiling on 2 cores when
    /// it is not there yet) instead of the dev build.
    #[arg(long, requires = "test")]
    release: bool,
}

/// Which build the packages are made from.
#[derive(Clone, Copy, PartialEq)]
pub enum Profile {
    /// What users get: `cargo build --release`.
    Release,
    /// The binaries `cargo xtask test` has already built: the package test checks the
    /// packaging, not the optimiser, and a release build would cost CI minutes.
    Dev,
}

pub fn main(root: &Path, args: Args) -> Result<()> {
    if args.test {
        let profile = if args.release {
            Profile::Release
        } else {
            Profile::Dev
        };
        return test(root, profile);
    }
    if !args.no_build {
        build(Profile::Release)?;
    }
    let out = args
        .output
        .unwrap_or_else(|| crate::target_dir(root).join("debian"));
    for deb in make_debs(root, &out, &args.revision, Profile::Release, false)? {
        println!("{}", deb.display());
    }
    Ok(())
}

/// cargo-deb at the pinned version, installed when missing.
pub fn ensure_cargo_deb() -> Result<()> {
    let installed = crate::output(Command::new("cargo").args(["deb", "--version"]))
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_DEB_VERSION));
    if !installed {
        crate::run(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    Ok(())
}

/// The one build every package is made from.
fn build(profile: Profile) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.arg("build");
    if profile == Profile::Release {
        cmd.arg("--release");
        for d in DEBS {
            cmd.args(["--bin", d.binary]);
        }
        // Writes jit's man pages and completions for the jitgate-cli package (`cli_docs`).
        cmd.args(["--bin", "jit-gen"]);
    } else {
        // Every binary, exactly as `cargo xtask test` builds them (jit-gen among them):
        // naming a few would unify features over fewer packages and compile the
        // dependencies a second time.
        cmd.arg("--bins");
    }
    crate::run(&mut cmd)
}

/// jit's man pages and shell completions, generated from its clap definition by `jit-gen`
/// into `<target>/<profile>/jit-gen-out/`, where jitgate-cli's `assets` take them
/// (cargo-deb maps `target/release/` to the profile's directory).
fn cli_docs(root: &Path, profile: Profile) -> Result<()> {
    let dir = crate::target_dir(root).join(match profile {
        Profile::Release => "release",
        Profile::Dev => "debug",
    });
    let generator = dir.join("jit-gen");
    ensure!(
        generator.is_file(),
        "{} is missing: build it (cargo build --bin jit-gen{})",
        generator.display(),
        if profile == Profile::Release {
            " --release"
        } else {
            ""
        }
    );
    let out = dir.join("jit-gen-out");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    crate::run(Command::new(generator).arg(&out))?;
    // Debian policy 12.1: manual pages are installed compressed with `gzip -9n`.
    let pages: Vec<PathBuf> = std::fs::read_dir(out.join("man"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    crate::run(Command::new("gzip").arg("-9nf").args(&pages))
}

/// Packages the built binaries (never building them) with Debian revision `revision`;
/// `fast`: light compression (packages for the test).
fn make_debs(
    root: &Path,
    out: &Path,
    revision: &str,
    profile: Profile,
    fast: bool,
) -> Result<Vec<PathBuf>> {
    ensure_cargo_deb()?;
    cli_docs(root, profile)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut debs = Vec::new();
    for d in DEBS {
        let mut cmd = Command::new("cargo");
        cmd.args(["deb", "--no-build", "--locked", "-p", d.krate])
            .args(["--deb-revision", revision, "--maintainer", MAINTAINER])
            // The release profile keeps debug info for backtraces; packages ship stripped.
            .arg("--strip")
            .arg("--output")
            .arg(out);
        if profile == Profile::Dev {
            // cargo-deb warns that it is meant for releases: these packages are for the test.
            cmd.args(["--profile", "dev", "--quiet"]);
        }
        if fast {
            cmd.arg("--fast");
        }
        let text = capture(&mut cmd)?;
        // cargo-deb prints the path of the package it wrote, last.
        let path = text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .with_context(|| format!("cargo deb -p {} printed no .deb path: {text}", d.krate))?;
        ensure!(path.exists(), "cargo deb wrote no {}", path.display());
        debs.push(path);
    }
    Ok(debs)
}

/// The same packages with Debian revision `revision`: unpacked, the control file's Version
/// changed, packed again (light compression).
fn repack(debs: &[PathBuf], out: &Path, revision: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let tree = out.join("tree");
    debs.iter()
        .map(|deb| {
            if tree.exists() {
                std::fs::remove_dir_all(&tree)?;
            }
            crate::run(
                Command::new("dpkg-deb")
                    .arg("--raw-extract")
                    .arg(deb)
                    .arg(&tree),
            )?;
            let control_path = tree.join("DEBIAN/control");
            let control = std::fs::read_to_string(&control_path)?;
            let mut name = String::new();
            let mut version = String::new();
            let mut arch = String::new();
            let control: String = control
                .lines()
                .map(|l| {
                    if let Some(n) = l.strip_prefix("Package: ") {
                        name = n.to_string();
                    }
                    if let Some(a) = l.strip_prefix("Architecture: ") {
                        arch = a.to_string();
                    }
                    match l.strip_prefix("Version: ") {
                        Some(v) => {
                            let upstream = v.rsplit_once('-').map_or(v, |(u, _)| u);
                            version = format!("{upstream}-{revision}");
                            format!("Version: {version}\n")
                        }
                        None => format!("{l}\n"),
                    }
                })
                .collect();
            ensure!(
                !name.is_empty() && !version.is_empty() && !arch.is_empty(),
                "{}: no Package, Version or Architecture in its control file",
                deb.display()
            );
            std::fs::write(&control_path, control)?;
            let new = out.join(format!("{name}_{version}_{arch}.deb"));
            crate::run(
                Command::new("dpkg-deb")
                    .args(["--build", "-Zgzip", "-z1"])
                    .arg(&tree)
                    .arg(&new)
                    .stdout(std::process::Stdio::null()),
            )?;
            std::fs::remove_dir_all(&tree)?;
            Ok(new)
        })
        .collect()
}

/// Runs `cmd`, failing with its output; returns its stdout.
fn capture(cmd: &mut Command) -> Result<String> {
    eprintln!("+ {cmd:?}");
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package test. Needs root; fails without it when CI=true, else says it skipped.
pub fn test(root: &Path, profile: Profile) -> Result<()> {
    if !crate::is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("the package test needs root (mmdebstrap, chroot, mounts)");
        }
        eprintln!("package test: SKIPPED (needs root)");
        return Ok(());
    }
    let started = Instant::now();
    let dir = crate::target_dir(root).join("package-test");
    remove_stale_roots(&dir)?;

    let step = Instant::now();
    build(profile)?;
    let v1 = make_debs(root, &dir.join("v1"), "1", profile, true)?;
    // The upgrade: the same packages repacked with a higher revision, no second build.
    let v2 = repack(&v1, &dir.join("v2"), "2")?;
    eprintln!(
        "package test: build and packages in {:.0} s",
        step.elapsed().as_secs_f64()
    );

    // The changelog's top entry names the version being packaged.
    let changelog = capture(
        Command::new("dpkg-parsechangelog")
            .args(["-S", "Version", "-l"])
            .arg(root.join("packaging/changelog")),
    )?;
    for deb in &v1 {
        let version = capture(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(deb)
                .arg("Version"),
        )?;
        ensure!(
            version.trim() == changelog.trim(),
            "{} is version {}, packaging/changelog's top entry {}: add an entry",
            deb.display(),
            version.trim(),
            changelog.trim()
        );
    }

    let step = Instant::now();
    lintian(&v1)?;
    eprintln!(
        "package test: lintian in {:.0} s",
        step.elapsed().as_secs_f64()
    );

    let step = Instant::now();
    let chroot = Chroot::create(&dir.join(format!("root-{}", std::process::id())))?;
    eprintln!(
        "package test: Debian root in {:.0} s",
        step.elapsed().as_secs_f64()
    );
    let cases: &[(&str, Case)] = &[
        ("install starts nothing", case_install),
        ("units verify", case_verify),
        ("controller first start", case_controller_init),
        ("upgrade restarts in place", case_upgrade),
        ("remove refused while attached", case_remove_refused),
        (
            "JITGATE_DETACH=1 detaches, then removes",
            case_remove_detach,
        ),
        ("purge only after detach", case_purge_agent),
        (
            "controller and cli remove and purge",
            case_purge_controller_cli,
        ),
    ];
    let ctx = Ctx { v1, v2 };
    let mut passed = 0;
    // Each case builds on the state the one before left: stop at the first failure.
    for (name, case) in cases {
        run_case(name, &mut passed, || case(&chroot, &ctx))?;
    }

    // The same root booted: real systemd runs the units, sandboxes included.
    chroot.prepare_boot()?;
    let step = Instant::now();
    let booted = Booted::start(&chroot, &dir.join("nspawn.log"))?;
    eprintln!(
        "package test: container booted in {:.0} s",
        step.elapsed().as_secs_f64()
    );
    let live: &[(&str, LiveCase)] = &[
        ("live: install starts nothing", live_install),
        ("live: controller serves in its sandbox", live_controller),
        ("live: agent enforces, pins outlive it", live_agent),
        ("live: upgrade swaps the program in place", live_upgrade),
        ("live: remove refused, then detached", live_remove),
    ];
    for (name, case) in live {
        run_case(name, &mut passed, || {
            case(&booted, &ctx).map_err(|e| {
                // What the services said is usually the answer.
                let journal = booted
                    .try_sh(
                        "journalctl --no-pager -n 60 -u jit-agent -u jit-controller -u run-jitgate-bpf.mount",
                        &[],
                    )
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                e.context(format!("journal:\n{journal}"))
            })
        })?;
    }
    drop(booted);
    drop(chroot);
    println!(
        "package test: {passed} passed, 0 failed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_case(name: &str, passed: &mut u32, case: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    match case() {
        Ok(()) => {
            *passed += 1;
            eprintln!(
                "package test: {name}: ok ({:.1} s)",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(e) => bail!("package test: {name}: FAILED: {e:#}"),
    }
}

/// lintian on the packages: any error fails.
fn lintian(debs: &[PathBuf]) -> Result<()> {
    let mut cmd = Command::new("lintian");
    cmd.args(["--fail-on", "error", "--tag-display-limit", "0"])
        .args(debs);
    eprintln!("+ {cmd:?}");
    let out = cmd.output().context("spawning lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success() && !text.lines().any(|l| l.starts_with("E: ")),
        "lintian reports errors ({})",
        out.status
    );
    Ok(())
}

type Case = fn(&Chroot, &Ctx) -> Result<()>;

struct Ctx {
    v1: Vec<PathBuf>,
    v2: Vec<PathBuf>,
}

/// Where the shims write the calls, inside the root.
const CALLS: &str = "var/log/jitgate-package-test.calls";

/// Replaces systemctl and deb-systemd-invoke in the root: records who called (dpkg names the
/// package and maintainer script) and what was asked. Offline work on unit files (`--root=`,
/// as deb-systemd-helper's `preset` for enabling) is passed to the real tool; anything that
/// would talk to a running systemd just succeeds.
const SHIM: &str = r#"#!/bin/sh
echo "${DPKG_MAINTSCRIPT_PACKAGE:--} ${DPKG_MAINTSCRIPT_NAME:--} ${0##*/} $*" >> /var/log/jitgate-package-test.calls
case " $* " in
    *" --root="*) exec "$0.real" "$@" ;;
esac
exit 0
"#;

/// A throwaway Debian root: mmdebstrap'ed, /proc mounted, systemd shimmed. Dropping it
/// unmounts and deletes it (also when a case failed or panicked).
struct Chroot {
    dir: PathBuf,
}

impl Chroot {
    fn create(dir: &Path) -> Result<Chroot> {
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
    fn sh(&self, script: &str) -> Result<String> {
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
    fn try_sh(&self, script: &str, env: &[(&str, &str)]) -> Result<Output> {
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
    fn stage(&self, debs: &[PathBuf], sub: &str) -> Result<Vec<String>> {
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
    fn take_calls(&self) -> Result<Vec<String>> {
        let path = self.dir.join(CALLS);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, "")?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// Makes the root bootable again: the real systemctl and deb-systemd-invoke back, and
    /// the host's /proc gone (the container mounts its own).
    fn prepare_boot(&self) -> Result<()> {
        for tool in ["systemctl", "deb-systemd-invoke"] {
            self.sh(&format!(
                "set -e; p=$(command -v {tool}); mv \"$p.real\" \"$p\""
            ))?;
        }
        std::fs::remove_dir_all(self.path("/run/systemd"))?;
        crate::run(Command::new("umount").arg(self.path("/proc")))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    fn exists(&self, p: &str) -> bool {
        self.path(p).symlink_metadata().is_ok()
    }

    /// `mode user:group` of a path inside the root, as its own tools see it.
    fn owner_mode(&self, p: &str) -> Result<String> {
        Ok(self
            .sh(&format!("stat -c '%a %U:%G' {p}"))?
            .trim()
            .to_string())
    }

    /// dpkg's status of a package ("install ok installed", "deinstall ok config-files", "").
    fn status(&self, pkg: &str) -> Result<String> {
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
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
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
fn remove_root(dir: &Path) -> Result<()> {
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
fn remove_stale_roots(dir: &Path) -> Result<()> {
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
fn host_debian_source() -> Result<(String, String)> {
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
fn one_line_mirror(text: &str, suite: &str) -> Option<String> {
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
fn deb822_mirror(text: &str, suite: &str) -> Option<String> {
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
fn dpkg(c: &Chroot, args: &str, env: &[(&str, &str)]) -> Result<String> {
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
fn calls_for<'a>(calls: &'a [String], unit: &str) -> Vec<&'a str> {
    calls
        .iter()
        .map(String::as_str)
        .filter(|c| c.split_whitespace().any(|w| w == unit))
        .collect()
}

const AGENT_UNIT: &str = "jit-agent.service";
const CONTROLLER_UNIT: &str = "jit-controller.service";

fn case_install(c: &Chroot, ctx: &Ctx) -> Result<()> {
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

fn case_verify(c: &Chroot, _: &Ctx) -> Result<()> {
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
fn case_controller_init(c: &Chroot, _: &Ctx) -> Result<()> {
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

fn case_upgrade(c: &Chroot, ctx: &Ctx) -> Result<()> {
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
const PINNED_LINK: &str = "/run/jitgate/bpf/agent/link_eth0_drv";

fn case_remove_refused(c: &Chroot, _: &Ctx) -> Result<()> {
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

fn case_remove_detach(c: &Chroot, _: &Ctx) -> Result<()> {
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

fn case_purge_agent(c: &Chroot, _: &Ctx) -> Result<()> {
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

fn case_purge_controller_cli(c: &Chroot, _: &Ctx) -> Result<()> {
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

/// The root booted by systemd-nspawn: systemd as PID 1, a private network with only `lo`,
/// and the capabilities the agent needs for its XDP program. Commands enter it with nsenter.
/// Dropping it powers the container off (its pins and bpffs go with it).
struct Booted<'a> {
    root: &'a Chroot,
    nspawn: std::process::Child,
    leader: u32,
}

impl<'a> Booted<'a> {
    fn start(root: &'a Chroot, log_path: &Path) -> Result<Booted<'a>> {
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

    fn try_sh(&self, script: &str, env: &[(&str, &str)]) -> Result<Output> {
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

    fn sh(&self, script: &str) -> Result<String> {
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
    fn systemctl(&self, verb: &str, unit: &str) -> Result<String> {
        let out = self.try_sh(&format!("systemctl {verb} {unit}"), &[])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn main_pid(&self, unit: &str) -> Result<u32> {
        Ok(self
            .sh(&format!("systemctl show -P MainPID {unit}"))?
            .parse()
            .unwrap_or(0))
    }

    /// Pinned XDP links in the agent's pin directory.
    fn links(&self) -> Result<Vec<String>> {
        let out = self.try_sh("ls /run/jitgate/bpf/agent", &[])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|n| n.starts_with("link_"))
            .map(str::to_string)
            .collect())
    }

    /// The agent's loaded program id (`jit-agent status --json`), once it answers.
    fn program_id(&self) -> Result<Option<u64>> {
        let out = self.try_sh("jit-agent status --json", &[])?;
        if !out.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(json_number(&text, "programId"))
    }

    fn controller(&self, args: &str) -> Result<String> {
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
fn container_init(pid: u32) -> Option<u32> {
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
fn children(pid: u32) -> Vec<u32> {
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
fn wait_for(what: &str, seconds: u64, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
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
fn json_number(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\""))?;
    let rest = text[at + key.len() + 2..].trim_start().strip_prefix(':')?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

type LiveCase = fn(&Booted, &Ctx) -> Result<()>;

fn live_install(b: &Booted, ctx: &Ctx) -> Result<()> {
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
fn live_controller(b: &Booted, _: &Ctx) -> Result<()> {
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

const LIVE_CONFIG: &str = r#"interfaces = ["lo"]
[[protect]]
port = 2222
protocol = "tcp"
"#;

fn live_agent(b: &Booted, _: &Ctx) -> Result<()> {
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

fn live_upgrade(b: &Booted, ctx: &Ctx) -> Result<()> {
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

fn live_remove(b: &Booted, _: &Ctx) -> Result<()> {
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
