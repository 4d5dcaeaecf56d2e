//! The pin directory: a bpffs that outlives the agent.
//!
//! Pins must live on a bpffs mounted in the ROOT mount namespace. `ip netns exec` gives its
//! process a private /sys (and a private mount namespace), so a bpffs mounted from inside it
//! dies with the process, taking every pinned link with it: enforcement would silently
//! disappear. So the default pin root is under /run, and when the agent is not in PID 1's
//! mount namespace it mounts through `nsenter --mount=/proc/1/ns/mnt`, where the mount
//! propagates back to it.

use crate::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The default root under which each agent instance gets a pin directory.
pub const DEFAULT_PIN_ROOT: &str = "/run/jitgate/bpf";

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

fn in_root_mount_ns() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        // Cannot tell (e.g. /proc/1 hidden): assume we are, and mount directly.
        _ => true,
    }
}

/// Makes `dir` a directory on a bpffs: nothing to do if it is one; a subdirectory if its
/// parent is on a bpffs; otherwise a new bpffs mounted at `dir`.
pub fn ensure_pin_dir(dir: &Path) -> Result<PathBuf, Error> {
    let io = |e: std::io::Error| Error::PinDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    if dir.is_dir() && is_bpffs(dir) {
        return Ok(dir.to_path_buf());
    }
    if let Some(parent) = dir.parent()
        && parent.is_dir()
        && is_bpffs(parent)
    {
        std::fs::create_dir_all(dir).map_err(io)?;
        return Ok(dir.to_path_buf());
    }
    // Walk up: an ancestor may already be a bpffs (a shared pin root).
    let mut ancestor = dir.parent();
    while let Some(a) = ancestor {
        if a.is_dir() && is_bpffs(a) {
            std::fs::create_dir_all(dir).map_err(io)?;
            return Ok(dir.to_path_buf());
        }
        ancestor = a.parent();
    }
    if dir.starts_with("/sys") {
        return Err(Error::PinDir {
            path: dir.to_path_buf(),
            reason: "pin directories under /sys do not survive `ip netns exec`; use one under /run"
                .into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    mount_bpffs(dir)?;
    if !is_bpffs(dir) {
        return Err(Error::PinDir {
            path: dir.to_path_buf(),
            reason: "mounted a bpffs but it is not visible here".into(),
        });
    }
    Ok(dir.to_path_buf())
}

fn mount_bpffs(dir: &Path) -> Result<(), Error> {
    let fail = |reason: String| Error::PinDir {
        path: dir.to_path_buf(),
        reason,
    };
    if in_root_mount_ns() {
        nix::mount::mount(
            Some("bpf"),
            dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| fail(format!("mount -t bpf: {e}")))
    } else {
        let status = Command::new("nsenter")
            .args([
                "--mount=/proc/1/ns/mnt",
                "--",
                "mount",
                "-t",
                "bpf",
                "-o",
                "mode=0700",
                "bpf",
            ])
            .arg(dir)
            .status()
            .map_err(|e| fail(format!("nsenter: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(fail(format!("nsenter mount -t bpf exited with {status}")))
        }
    }
}
