//! Where the PostgreSQL binaries are and which OS user runs them.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

const NEEDED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The directory holding initdb, pg_ctl and postgres.
pub(crate) fn bin_dir() -> Result<PathBuf> {
    let has_all = |d: &Path| NEEDED.iter().all(|b| d.join(b).is_file());
    let mut searched = Vec::new();
    if let Some(d) = std::env::var_os("JIT_TESTPG_BIN") {
        let d = PathBuf::from(d);
        if has_all(&d) {
            return Ok(d);
        }
        // An explicit choice that does not work is an error, not a reason to look elsewhere.
        return Err(Error::NotInstalled {
            searched: format!("JIT_TESTPG_BIN={}", d.display()),
        });
    }
    // Debian: /usr/lib/postgresql/<major>/bin, the newest major first.
    let root = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    majors.sort();
    searched.push(format!("{}/*/bin", root.display()));
    if let Some((_, d)) = majors.into_iter().rev().find(|(_, d)| has_all(d)) {
        return Ok(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_all(&d) {
                return Ok(d);
            }
        }
    }
    searched.push("PATH".into());
    Err(Error::NotInstalled {
        searched: searched.join(", "),
    })
}

/// The OS user the server runs as: None means the test's own user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

pub(crate) fn run_as() -> Result<Option<RunAs>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let candidates: Vec<String> = match std::env::var("JIT_TESTPG_USER") {
        Ok(u) => vec![u],
        Err(_) => vec!["postgres".into(), "nobody".into()],
    };
    for name in &candidates {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name)
            && !u.uid.is_root()
        {
            return Ok(Some(RunAs {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }));
        }
    }
    Err(Error::NoUser(candidates.join(", ")))
}
