//! `cargo xtask setup`: the toolchain and the Debian packages the build and the tests need.

use anyhow::{Result, bail};
use std::path::Path;
use std::process::Command;

use crate::{is_root, output, package, run};

/// Debian packages the build and the tests need.
pub(crate) const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "procps",
    "util-linux",
    "openssh-server",
    "openssh-client",
    // The flood benchmark's comparison receivers.
    "nftables",
    "iptables",
    // The tunnel test's real WireGuard (userspace: the kernel may lack the module).
    "wireguard-go",
    "wireguard-tools",
    "xdp-tools",
    // The portal's browser tests (jitgate-browser): headless Chromium and its WebDriver.
    "chromium",
    "chromium-driver",
];
/// Debian's PostgreSQL (server and psql), for the test clusters (jitgate-testpg); installed
/// unless its server binaries are already there.
pub(crate) const POSTGRES_PACKAGE: &str = "postgresql";
pub(crate) const POSTGRES_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds with the installed toolchains (stable 1.95 installs it; the targets build with
/// nightly, which the sanitizer flags need).
pub(crate) const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub(crate) fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Whether some /usr/lib/postgresql/*/bin has the server binaries (where jitgate-testpg
/// looks first).
pub(crate) fn postgres_server_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            POSTGRES_BINARIES
                .iter()
                .all(|b| e.path().join("bin").join(b).is_file())
        })
}

pub(crate) fn setup() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .chain(package::APT_PACKAGES)
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !postgres_server_installed() && !dpkg_installed(POSTGRES_PACKAGE) {
        missing.push(POSTGRES_PACKAGE);
    }
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing Debian packages {missing:?}; run `cargo xtask setup` as root");
        }
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let has_linker = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !has_linker {
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            // Without it the link fails with "unable to find library -lLLVM".
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }

    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|l| l.lines().any(|c| c.starts_with("rust-src")));
    if !has_src {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    package::ensure_cargo_deb()?;

    let has_cargo_fuzz = output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION));
    if !has_cargo_fuzz {
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }

    // The conventional bpffs; jitgate itself pins under /run (see agent/src/bpffs.rs).
    let bpffs = Path::new("/sys/fs/bpf");
    let mounted = output(Command::new("stat").args(["-f", "-c", "%T"]).arg(bpffs))
        .is_some_and(|t| t.trim() == "bpf_fs");
    if !mounted && is_root() {
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(bpffs))?;
    }
    eprintln!("setup: toolchain and system packages present");
    Ok(())
}
