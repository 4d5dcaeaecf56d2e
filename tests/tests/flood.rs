//! The flood benchmark's parts, without timing: its frames are well-formed (checksums, and
//! the real program parses them as SYNs to a protected port), and its committed rule sets load.

use jitgate_agent::{BootInstant, GrantId, GrantSpec, XDP_DROP, XDP_PASS};
use jitgate_common::Counter;
use jitgate_tests::flood::{self, Link, checksum, rules, syn_frame};
use jitgate_tests::{TestDataplane, require_root};
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

fn link() -> Link {
    Link {
        src_mac: [2, 0, 0, 0, 0, 2],
        dst_mac: [2, 0, 0, 0, 0, 1],
        dst_v4: "198.51.100.1".parse().unwrap(),
        dst_v6: "2001:db8:1::1".parse().unwrap(),
    }
}

/// Sum of a pseudo-header (addresses, protocol 6, TCP length), as the receiver computes it.
fn pseudo(src: &[u8], dst: &[u8], len: u32) -> u32 {
    let mut acc = 6 + len;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    acc
}

#[test]
fn flood_frames_have_valid_checksums() {
    let frames = flood::flood_frames(&link(), 256);
    assert_eq!(frames.len(), 256);
    for f in &frames {
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0800 => {
                assert_eq!(f.len(), 14 + 20 + 20);
                // A correct checksum makes the whole header sum to 0xffff (folded: 0).
                assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 header checksum");
                let p = pseudo(&f[26..30], &f[30..34], 20);
                assert_eq!(checksum(&f[34..54], p), 0, "TCP checksum (IPv4)");
                assert!(f[26..28] == [198, 18], "IPv4 source in 198.18.0.0/16");
            }
            0x86dd => {
                assert_eq!(f.len(), 14 + 40 + 20);
                let p = pseudo(&f[22..38], &f[38..54], 20);
                assert_eq!(checksum(&f[54..74], p), 0, "TCP checksum (IPv6)");
                assert!(
                    f[22..28] == [0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff],
                    "2001:db8:ffff::/48"
                );
            }
            t => panic!("unexpected ethertype {t:#x}"),
        }
    }
}

#[test]
fn flood_frames_are_denied_and_the_client_passes() {
    if !require_root() {
        return;
    }
    let mut t = TestDataplane::new();
    t.dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    let client: IpAddr = "198.51.100.2".parse().unwrap();
    let spec = GrantSpec {
        protocol: jitgate_common::Protocol::Tcp,
        port: jitgate_common::Port::new(22).unwrap(),
        source: jitgate_common::SourcePrefix::host(client),
    };
    let end = BootInstant::now().saturating_add(Duration::from_secs(3600));
    t.dp.add_grant(GrantId::random(), spec, end).unwrap();
    let frames = flood::flood_frames(&link(), 64);
    let before = t.dp.counters().unwrap().get(Counter::DeniedNoGrant);
    for f in &frames {
        assert_eq!(t.dp.test_run(f, 1).unwrap().action, XDP_DROP);
    }
    let after = t.dp.counters().unwrap().get(Counter::DeniedNoGrant);
    assert_eq!(
        after - before,
        64,
        "every flood frame is a SYN denied for lack of a grant"
    );
    let ok = syn_frame(&link(), client, 40000, 22, 1);
    assert_eq!(t.dp.test_run(&ok, 1).unwrap().action, XDP_PASS);
}

/// Runs `script` in a new, empty network namespace with a `vm0` interface.
fn in_scratch_netns(script: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["--net", "sh", "-ec"])
        .arg(format!(
            "ip link add vm0 type veth peer name vm0p\n{script}"
        ))
        .output()
        .expect("unshare")
}

#[test]
fn rule_sets_load() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut grants: Vec<IpAddr> = (0..99)
        .flat_map(|i| [flood::idle_grant(false, i), flood::idle_grant(true, i)])
        .collect();
    grants.push("198.51.100.2".parse().unwrap());
    grants.push("2001:db8:1::2".parse().unwrap());
    let files = [
        ("inet.nft", rules::nft_inet(&grants)),
        ("netdev.nft", rules::nft_netdev(&grants, "vm0")),
        ("drop.nft", rules::nft_drop_all("vm0")),
        ("v4.rules", rules::iptables(&grants, false)),
        ("v6.rules", rules::iptables(&grants, true)),
    ];
    for (name, body) in &files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let d = dir.path().display();
    for script in [
        format!("nft -c -f {d}/inet.nft"),
        format!("nft -c -f {d}/netdev.nft"),
        format!("nft -c -f {d}/drop.nft"),
        format!("iptables-restore --test {d}/v4.rules"),
        format!("ip6tables-restore --test {d}/v6.rules"),
    ] {
        let out = in_scratch_netns(&script);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // One rule per grant of the family.
    let v4 = rules::iptables(&grants, false);
    assert_eq!(
        v4.lines().filter(|l| l.starts_with("-A INPUT -s ")).count(),
        100
    );
}
