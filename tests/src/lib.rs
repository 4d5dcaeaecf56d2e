//! Test harness: network namespaces with veth pairs, crafted frames, and a per-test pin
//! directory, all removed when the test ends, pass or fail.

pub mod agent;
pub mod bpfrun;
pub mod controller;
pub mod fleet;
pub mod flood;
pub mod frames;
pub mod impostor;
pub mod model;
pub mod netns;
pub mod portal;
pub mod tunnel;

use jitgate_agent::{Dataplane, DataplaneOptions, MapLimits};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Shared bpffs root for test pin directories (root mount namespace, outside /sys).
pub const TEST_PIN_ROOT: &str = "/run/jitgate-test/bpf";

/// The stdout of a command that must have succeeded (else a panic with its output).
pub fn ok(o: std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether root/BPF tests can run here. With CI=true they must: a missing capability fails
/// the test instead of skipping it.
pub fn require_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !root {
        assert!(
            !ci,
            "CI=true: this test needs root and BPF, and must not be skipped"
        );
        eprintln!("skipping: needs root (set CI=true to make this a failure)");
        return false;
    }
    true
}

/// Polls `f` every 100 ms until it holds or `limit` passes; returns its last answer.
pub fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    f()
}

/// A unique name for this process and call, short enough for interface names (15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// A data plane with its own pin directory, removed (maps, links and all) on drop.
pub struct TestDataplane {
    pub dp: Dataplane,
    pub pin_dir: PathBuf,
    pub guard: PinGuard,
}

/// Removes every pin under a directory when dropped, even after a failed assertion.
pub struct PinGuard(pub PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = jitgate_agent::remove_pins(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

impl TestDataplane {
    /// Small map limits: tests create many instances.
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(tweak: impl FnOnce(&mut DataplaneOptions)) -> Self {
        jitgate_agent::bpffs::ensure_pin_dir(std::path::Path::new(TEST_PIN_ROOT))
            .expect("test bpffs root");
        let pin_dir = PathBuf::from(TEST_PIN_ROOT).join(unique("dp"));
        let mut opts = DataplaneOptions::new(&pin_dir);
        opts.limits = MapLimits {
            host_grants: 1 << 16,
            prefix_grants: 1 << 12,
            flows: 1 << 12,
        };
        tweak(&mut opts);
        let dp = Dataplane::open(&opts).expect("open data plane");
        TestDataplane {
            dp,
            guard: PinGuard(pin_dir.clone()),
            pin_dir,
        }
    }
}

impl Default for TestDataplane {
    fn default() -> Self {
        Self::new()
    }
}

/// Every word of the denial prefilter's block array pinned under `pin_dir` (tests check
/// that removals leave no bit behind).
pub fn prefilter_words(pin_dir: &std::path::Path) -> Vec<u64> {
    let data = aya::maps::MapData::from_pin(pin_dir.join(jitgate_common::names::PREFILTER))
        .expect("pinned prefilter");
    let arr: aya::maps::Array<aya::maps::MapData, jitgate_common::PrefilterBlock> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("prefilter array");
    arr.iter().filter_map(Result::ok).flatten().collect()
}
