//! Memory figures shared by `bench agent` and `bench scale`: the agent's resident size per
//! grant beside what the kernel's own maps take for the same grants.

use jitgate_common::names;
use std::path::Path;

/// One pinned map's kernel accounting, from /proc/self/fdinfo of a descriptor on its pin.
pub(crate) struct MapMem {
    pub name: String,
    pub max_entries: u64,
    pub memlock: u64,
}

pub(crate) fn map_memory(pin_dir: &Path) -> Vec<MapMem> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut out = Vec::new();
    for name in names::ALL {
        let Ok(data) = aya::maps::MapData::from_pin(pin_dir.join(name)) else {
            continue;
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let field = |f: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(f))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push(MapMem {
            name: name.to_string(),
            max_entries: field("max_entries:"),
            memlock: field("memlock:"),
        });
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Table rows: the agent's RSS with `grants` grants against `target_mib` (and by how much it
/// is met or missed), and its bytes per grant (RSS delta / grants) beside the kernel's.
pub(crate) fn rows(
    grants: usize,
    rss_start_kib: u64,
    rss_kib: u64,
    note: &str,
    target_mib: u64,
    maps: &[MapMem],
) -> String {
    let rss = rss_kib * 1024;
    let target = target_mib << 20;
    let verdict = if rss <= target {
        format!("met, {:.1} MiB under", mib(target - rss))
    } else {
        format!("missed by {:.1} MiB", mib(rss - target))
    };
    let per_grant = rss_kib.saturating_sub(rss_start_kib) as f64 * 1024.0 / grants.max(1) as f64;
    let host = maps.iter().find(|m| m.name == names::GRANTS_V4);
    let total: u64 = maps.iter().map(|m| m.memlock).sum();
    let kernel = match host {
        Some(m) => format!(
            "kernel: {:.0} B per grant in its IPv4 host grant map ({:.1} MiB `memlock`, max_entries {}); all maps {:.1} MiB",
            m.memlock as f64 / grants.max(1) as f64,
            mib(m.memlock),
            m.max_entries,
            mib(total)
        ),
        None => "kernel: maps not readable".to_string(),
    };
    format!(
        "| agent RSS with {grants} active grants ({note}) | {:.1} MiB | {:.1} MiB at start | ≤ {target_mib} MiB ({verdict}) |\n\
         | agent memory per grant (RSS − RSS at start) / grants | {per_grant:.0} B | {kernel} | |\n",
        mib(rss),
        mib(rss_start_kib * 1024),
    )
}
