//! Upgrading a running host: maps and a link pinned by the layout-1 program (the object the
//! previous agent shipped, `tests/fixtures/jitgate-layout1.o`) are adopted by this agent,
//! which adds the prefilter maps, rebuilds the filter from its journal's grants and swaps
//! its program into the pinned link. All the while a checker thread runs the program the
//! link holds at that instant (BPF_PROG_TEST_RUN on its id) on a fixed set of packets: a
//! granted host, a host inside an active /24, an ended host grant, an ended host grant
//! inside the active /24 and a source without a grant. Not one verdict may be wrong, under
//! the old program, the new one, or in between.

use aya::programs::links::FdLink;
use jitgate_agent::{BootInstant, Dataplane, DataplaneOptions, GrantId, GrantSpec, MapLimits};
use jitgate_common::{
    DataplaneConfig, GrantEntry, GrantKeyV4, KEY_PREFIX_BITS, Port, ProtectedPort, Protocol, names,
    port_flags, protected_index,
};
use jitgate_tests::frames::{Frame, L4};
use jitgate_tests::netns::Lab;
use jitgate_tests::{PinGuard, TEST_PIN_ROOT, bpfrun, require_root, unique};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static LAYOUT1: &[u8] = aya::include_bytes_aligned!("../fixtures/jitgate-layout1.o");

const VM4: &str = "192.0.2.1";

fn key(addr: [u8; 4]) -> GrantKeyV4 {
    GrantKeyV4 {
        proto: 6,
        port: 22u16.to_be_bytes(),
        addr,
    }
}

fn entry(end: BootInstant, id: GrantId) -> GrantEntry {
    GrantEntry {
        expires_at_ns: end.0,
        grant_id: id.to_bytes(),
    }
}

#[test]
fn layout1_host_is_upgraded_without_a_missing_or_extra_grant() {
    if !require_root() {
        return;
    }
    jitgate_agent::bpffs::ensure_pin_dir(std::path::Path::new(TEST_PIN_ROOT)).unwrap();
    let pin_dir = PathBuf::from(TEST_PIN_ROOT).join(unique("upg"));
    let _guard = PinGuard(pin_dir.clone());
    std::fs::create_dir_all(&pin_dir).unwrap();
    let lab = Lab::new(1).unwrap();
    let iface = lab.clients[0].vm_iface.clone();

    let far = BootInstant::now().saturating_add(Duration::from_secs(3600));
    let past = BootInstant(BootInstant::now().0.saturating_sub(1_000_000_000));
    let (host_ok, net_ok, host_old) = (GrantId::random(), GrantId::random(), GrantId::random());

    // --- The layout-1 agent's state, written as that agent wrote it. ---
    let link_pin = {
        let mut old = aya::EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(names::GRANTS_V4, 1 << 12)
            .map_max_entries(names::GRANTS_V6, 1 << 12)
            .map_max_entries(names::GRANTS_LPM_V4, 1 << 10)
            .map_max_entries(names::GRANTS_LPM_V6, 1 << 10)
            .map_max_entries(names::FLOWS, 1 << 12)
            .load(LAYOUT1)
            .unwrap();
        let mut cfg: aya::maps::Array<_, DataplaneConfig> =
            aya::maps::Array::try_from(old.map_mut(names::CONFIG).unwrap()).unwrap();
        cfg.set(
            0,
            DataplaneConfig {
                layout_version: 1,
                ..DataplaneConfig::DEFAULT
            },
            0,
        )
        .unwrap();
        let mut prot: aya::maps::Array<_, u8> =
            aya::maps::Array::try_from(old.map_mut(names::PROTECTED).unwrap()).unwrap();
        prot.set(
            protected_index(false, 22),
            port_flags::PROTECTED | port_flags::HOST_V4 | port_flags::PREFIX_V4,
            0,
        )
        .unwrap();
        let mut hosts: aya::maps::HashMap<_, GrantKeyV4, GrantEntry> =
            aya::maps::HashMap::try_from(old.map_mut(names::GRANTS_V4).unwrap()).unwrap();
        hosts
            .insert(key([198, 51, 100, 7]), entry(far, host_ok), 0)
            .unwrap();
        hosts
            .insert(key([203, 0, 113, 9]), entry(past, host_old), 0)
            .unwrap();
        // Layout 1's overlap rule: the inner host carries the /24's later end.
        hosts
            .insert(key([198, 51, 100, 9]), entry(far, net_ok), 0)
            .unwrap();
        let mut lpm: aya::maps::LpmTrie<_, GrantKeyV4, GrantEntry> =
            aya::maps::LpmTrie::try_from(old.map_mut(names::GRANTS_LPM_V4).unwrap()).unwrap();
        lpm.insert(
            &aya::maps::lpm_trie::Key::new(KEY_PREFIX_BITS + 24, key([198, 51, 100, 0])),
            entry(far, net_ok),
            0,
        )
        .unwrap();
        let prog: &mut aya::programs::Xdp = old.program_mut("jitgate").unwrap().try_into().unwrap();
        prog.load().unwrap();
        let id = jitgate_agent::netns::run_in(&lab.vm_path(), || {
            prog.attach(&iface, aya::programs::XdpMode::Driver)
        })
        .unwrap()
        .unwrap();
        let link: FdLink = prog.take_link(id).unwrap().try_into().unwrap();
        // The pin name layout 1 used: link_<iface>_drv.
        let path = pin_dir.join(format!("link_{iface}_drv"));
        link.pin(&path).unwrap();
        path
    };
    let old_id = bpfrun::link_program_id(&link_pin).unwrap();

    // --- The checker: whatever the link runs now must give these verdicts. ---
    let cases: Vec<(&str, u32)> = vec![
        ("198.51.100.7", jitgate_agent::XDP_PASS), // active host grant
        ("198.51.100.20", jitgate_agent::XDP_PASS), // inside the active /24
        ("198.51.100.9", jitgate_agent::XDP_PASS), // its own grant ended, the /24's not
        ("203.0.113.9", jitgate_agent::XDP_DROP),  // ended host grant
        ("203.0.113.5", jitgate_agent::XDP_DROP),  // never granted
    ];
    let frames: Vec<(String, Vec<u8>, u32)> = cases
        .iter()
        .map(|(src, want)| {
            (
                src.to_string(),
                Frame::new(src, VM4, L4::syn(22)).build(),
                *want,
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let stop = stop.clone();
        let link_pin = link_pin.clone();
        std::thread::spawn(move || {
            let mut wrong = Vec::new();
            let mut runs: std::collections::BTreeMap<u32, u64> = Default::default();
            while !stop.load(Ordering::Relaxed) {
                let Ok(id) = bpfrun::link_program_id(&link_pin) else {
                    wrong.push("link unreadable".to_string());
                    continue;
                };
                for (src, f, want) in &frames {
                    match bpfrun::run_by_id(id, f) {
                        Ok(got) if got == *want => {}
                        Ok(got) => {
                            wrong.push(format!("program {id}: {src} gave {got}, want {want}"))
                        }
                        // The old program may be unloaded between reading the id and running it.
                        Err(_) => continue,
                    }
                    *runs.entry(id).or_default() += 1;
                }
            }
            (wrong, runs)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();

    // --- The upgrade, as the daemon does it: open (adopt), policy, journal, attach. ---
    let mut opts = DataplaneOptions::new(&pin_dir);
    opts.limits = MapLimits {
        host_grants: 1 << 12,
        prefix_grants: 1 << 10,
        flows: 1 << 12,
    };
    let mut dp = Dataplane::open(&opts).unwrap();
    assert!(dp.adopted(), "layout-1 maps adopted");
    std::thread::sleep(Duration::from_millis(100));
    // The daemon restates its policy before it replays the journal: the adopted entries,
    // unknown to this process until then, must stay visible to the old program.
    dp.set_protected(&["22/tcp".parse::<ProtectedPort>().unwrap()])
        .unwrap();
    let prot: aya::maps::Array<_, u8> = aya::maps::Array::try_from(aya::maps::Map::Array(
        aya::maps::MapData::from_pin(pin_dir.join(names::PROTECTED)).unwrap(),
    ))
    .unwrap();
    assert_eq!(
        prot.get(&protected_index(false, 22), 0).unwrap(),
        port_flags::PROTECTED | port_flags::HOST_V4 | port_flags::PREFIX_V4,
        "the policy write kept the adopted entries' lookup bits"
    );
    let spec = |src: &str| GrantSpec {
        protocol: Protocol::Tcp,
        port: Port::new(22).unwrap(),
        source: src.parse().unwrap(),
    };
    // The journal's view: the ended grants were dropped at replay.
    dp.reconcile_grants([
        (host_ok, spec("198.51.100.7"), far, None),
        (net_ok, spec("198.51.100.0/24"), far, None),
    ])
    .unwrap();
    let (blocks, exact) = dp.prefilter_state();
    assert!(
        exact && blocks.iter().all(|&b| b > 0),
        "filter built: {blocks:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    let att = jitgate_agent::netns::run_in(&lab.vm_path(), || dp.attach(&iface))
        .unwrap()
        .unwrap();
    assert!(att.replaced, "the pinned link was updated in place");
    let new_id = bpfrun::link_program_id(&link_pin).unwrap();
    assert_ne!(new_id, old_id);
    // After the switch: a new grant and a removal go through the new program too.
    let late = GrantId::random();
    dp.add_grant(late, spec("203.0.113.77"), far).unwrap();
    assert_eq!(
        bpfrun::run_by_id(
            new_id,
            &Frame::new("203.0.113.77", VM4, L4::syn(22)).build()
        )
        .unwrap(),
        jitgate_agent::XDP_PASS
    );
    dp.remove_grant(&late).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (wrong, runs) = checker.join().unwrap();
    eprintln!(
        "upgrade: {} checks ({} wrong) over {:?}; old program {old_id}: {}, new program {new_id}: {}",
        runs.values().sum::<u64>(),
        wrong.len(),
        started.elapsed(),
        runs.get(&old_id).copied().unwrap_or(0),
        runs.get(&new_id).copied().unwrap_or(0),
    );
    assert!(
        wrong.is_empty(),
        "wrong verdicts during the upgrade: {wrong:?}"
    );
    assert!(
        runs.get(&old_id).copied().unwrap_or(0) >= 20
            && runs.get(&new_id).copied().unwrap_or(0) >= 20,
        "both programs checked: {runs:?}"
    );
    // The maps are now stamped with this layout.
    let cfg: aya::maps::Array<_, DataplaneConfig> = aya::maps::Array::try_from(
        aya::maps::Map::Array(aya::maps::MapData::from_pin(pin_dir.join(names::CONFIG)).unwrap()),
    )
    .unwrap();
    assert_eq!(
        cfg.get(&0, 0).unwrap().layout_version,
        jitgate_common::LAYOUT_VERSION
    );
    // Connection limits on maps adopted from layout 1: the maps added since were created
    // empty, a limited grant is counted, and the counter array (shorter than this layout's)
    // still reads, its newer counters as 0.
    let lim = GrantId::random();
    dp.add_limited_grant(
        lim,
        spec("203.0.113.78"),
        far,
        jitgate_common::MaxConnections::new(1),
    )
    .unwrap();
    let syn = |sport| {
        Frame::new("203.0.113.78", VM4, L4::syn(22))
            .sport(sport)
            .build()
    };
    assert_eq!(
        bpfrun::run_by_id(new_id, &syn(1)).unwrap(),
        jitgate_agent::XDP_PASS
    );
    assert_eq!(
        bpfrun::run_by_id(new_id, &syn(2)).unwrap(),
        jitgate_agent::XDP_DROP
    );
    let c = dp
        .counters()
        .expect("counters of an adopted layout-1 array");
    assert_eq!(c.get(jitgate_common::Counter::DeniedConnLimit), 0);
    drop(dp);
}
