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
use std::process::Command;
use std::time::Instant;

mod booted;
mod cases;
mod chroot;

use booted::{
    Booted, LiveCase, live_agent, live_controller, live_install, live_remove, live_upgrade,
};
use cases::{
    Case, case_controller_init, case_install, case_purge_agent, case_purge_controller_cli,
    case_remove_detach, case_remove_refused, case_upgrade, case_verify,
};
use chroot::{Chroot, remove_stale_roots};

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

struct Ctx {
    v1: Vec<PathBuf>,
    v2: Vec<PathBuf>,
}
