//! Running code inside a network namespace.
//!
//! Only the network namespace is entered (setns on one thread), never the mount namespace,
//! so pins made there land on the host's bpffs and outlive the caller.

use std::fs::File;
use std::path::Path;

/// Runs `f` on a new thread that has entered the network namespace at `ns` (for example
/// `/run/netns/NAME`). Sockets created by `f` stay in that namespace.
pub fn run_in<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let file = File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("thread in network namespace panicked"))?
    })
}
