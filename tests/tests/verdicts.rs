//! The verdict table: crafted frames through the real program with BPF_PROG_TEST_RUN. Each
//! row asserts the action AND the counter that explains it.

use jitgate_agent::{BootInstant, GrantId, GrantSpec, LinkLayer, XDP_DROP, XDP_PASS};
use jitgate_common::{Counter, ProtectedPort};
use jitgate_tests::frames::{Ext, Frame, L4, arp};
use jitgate_tests::{TestDataplane, require_root};
use std::time::Duration;

const VM4: &str = "192.0.2.1";
const VM6: &str = "2001:db8:ff::1";
/// Granted sources.
const OK4: &str = "198.51.100.7";
const OK6: &str = "2001:db8:1::7";
/// Sources without a grant.
const NO4: &str = "203.0.113.5";
const NO6: &str = "2001:db8:2::5";

fn spec(port: u16, proto: jitgate_common::Protocol, src: &str) -> GrantSpec {
    GrantSpec {
        protocol: proto,
        port: jitgate_common::Port::new(port).unwrap(),
        source: src.parse().unwrap(),
    }
}

fn setup() -> TestDataplane {
    let mut t = TestDataplane::new();
    let ports: Vec<ProtectedPort> = ["22/tcp:keep", "3389/tcp:cut", "3389/udp"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    t.dp.set_protected(&ports).unwrap();
    let end = BootInstant::now().saturating_add(Duration::from_secs(3600));
    use jitgate_common::Protocol::{Tcp, Udp};
    for (port, proto, src) in [
        (22, Tcp, "198.51.100.0/24"),
        (22, Tcp, "2001:db8:1::/48"),
        (3389, Udp, "198.51.100.0/24"),
        (3389, Tcp, "2001:db8:1::7"),
    ] {
        t.dp.add_grant(GrantId::random(), spec(port, proto, src), end)
            .unwrap();
    }
    t
}

/// Builds frames with source ports counting up from `first`, so that rows never share a flow.
fn framer(first: u16) -> impl FnMut(&str, &str, L4) -> Frame {
    let mut sp = first;
    move |src, dst, l4| {
        sp += 1;
        Frame::new(src, dst, l4).sport(sp)
    }
}

struct Row {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    counter: Counter,
}

fn row(name: &'static str, f: Frame, action: u32, counter: Counter) -> Row {
    Row {
        name,
        frame: f.build(),
        action,
        counter,
    }
}

/// A row for the program of tunnel devices: the bare IP packet.
fn row_ip(name: &'static str, f: Frame, action: u32, counter: Counter) -> Row {
    Row {
        name,
        frame: f.build_ip(),
        action,
        counter,
    }
}

fn run_rows(t: &mut TestDataplane, rows: Vec<Row>) {
    run_rows_on(t, LinkLayer::Ethernet, rows)
}

fn run_rows_on(t: &mut TestDataplane, link: LinkLayer, rows: Vec<Row>) {
    let mut failures = Vec::new();
    for r in rows {
        let before = t.dp.counters().unwrap();
        let got = t.dp.test_run_on(link, &r.frame, 1).unwrap();
        let after = t.dp.counters().unwrap();
        let delta = after.get(r.counter) - before.get(r.counter);
        if got.action != r.action || delta != 1 {
            failures.push(format!(
                "{}: action {} (want {}), {} +{} (want +1)",
                r.name,
                got.action,
                r.action,
                r.counter.name(),
                delta
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "verdict table failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn verdict_table() {
    if !require_root() {
        return;
    }
    let mut t = setup();
    run_rows(&mut t, verdict_table_rows());
}

/// The rows of the verdict table, in order (later rows rely on the flows earlier ones made).
fn verdict_table_rows() -> Vec<Row> {
    use Counter::*;
    let (p, d) = (XDP_PASS, XDP_DROP);
    let mut f = framer(1000);
    let mut rows = vec![
        Row {
            name: "arp",
            frame: arp(),
            action: p,
            counter: PassedNonIp,
        },
        row("icmp", f(NO4, VM4, L4::icmp_echo()), p, PassedNotTcpUdp),
        row(
            "v4 syn 22 no grant",
            f(NO4, VM4, L4::syn(22)),
            d,
            DeniedNoGrant,
        ),
        row(
            "v4 ack 22 no grant",
            f(NO4, VM4, L4::ack(22)),
            d,
            DeniedNoGrant,
        ),
        row(
            "v4 syn 22 granted /24",
            f(OK4, VM4, L4::syn(22)),
            p,
            AllowedByGrant,
        ),
        row(
            "v4 syn 80 unprotected",
            f(NO4, VM4, L4::syn(80)),
            p,
            PassedUnprotected,
        ),
        row(
            "v4 udp 22 unprotected (tcp only)",
            f(NO4, VM4, L4::udp(22)),
            p,
            PassedUnprotected,
        ),
        row(
            "v4 udp 3389 no grant",
            f(NO4, VM4, L4::udp(3389)),
            d,
            DeniedNoGrant,
        ),
        row(
            "v4 udp 3389 granted",
            f(OK4, VM4, L4::udp(3389)),
            p,
            AllowedByGrant,
        ),
        row(
            "v4 tcp 3389 granted only for udp",
            f(OK4, VM4, L4::syn(3389)),
            d,
            DeniedNoGrant,
        ),
        // VLAN and QinQ.
        row(
            "802.1q syn 22 no grant",
            f(NO4, VM4, L4::syn(22)).vlan(0x8100),
            d,
            DeniedNoGrant,
        ),
        row(
            "802.1q syn 22 granted",
            f(OK4, VM4, L4::syn(22)).vlan(0x8100),
            p,
            AllowedByGrant,
        ),
        row(
            "qinq syn 22 no grant",
            f(NO4, VM4, L4::syn(22)).vlan(0x88a8).vlan(0x8100),
            d,
            DeniedNoGrant,
        ),
        row(
            "qinq syn 22 granted",
            f(OK4, VM4, L4::syn(22)).vlan(0x88a8).vlan(0x8100),
            p,
            AllowedByGrant,
        ),
        row(
            "qinq v6 syn 22 no grant",
            f(NO6, VM6, L4::syn(22)).vlan(0x88a8).vlan(0x8100),
            d,
            DeniedNoGrant,
        ),
        row(
            "three tags",
            f(OK4, VM4, L4::syn(80))
                .vlan(0x88a8)
                .vlan(0x8100)
                .vlan(0x8100),
            d,
            DroppedMalformed,
        ),
        // IPv4 options.
        row(
            "v4 options syn 22 no grant",
            f(NO4, VM4, L4::syn(22)).options(&[1, 1, 1, 1, 1, 1, 1, 0]),
            d,
            DeniedNoGrant,
        ),
        row(
            "v4 40B options syn 22 granted",
            f(OK4, VM4, L4::syn(22)).options(&[1; 40]),
            p,
            AllowedByGrant,
        ),
        row(
            "v4 40B options syn 22 no grant",
            f(NO4, VM4, L4::syn(22)).options(&[1; 40]),
            d,
            DeniedNoGrant,
        ),
        // Fragments.
        row(
            "v4 first fragment syn 22 no grant",
            f(NO4, VM4, L4::syn(22)).frag(0, true).payload(16),
            d,
            DeniedNoGrant,
        ),
        row(
            "v4 first fragment syn 22 granted",
            f(OK4, VM4, L4::syn(22)).frag(0, true).payload(16),
            p,
            AllowedByGrant,
        ),
        row(
            "v4 non-first fragment tcp",
            f(
                NO4,
                VM4,
                L4::Other {
                    proto: 6,
                    payload: vec![0; 64],
                },
            )
            .frag(185, false),
            p,
            PassedFragment,
        ),
        row(
            "v4 non-first fragment udp",
            f(
                NO4,
                VM4,
                L4::Other {
                    proto: 17,
                    payload: vec![0; 64],
                },
            )
            .frag(3, true),
            p,
            PassedFragment,
        ),
        row(
            "v4 tcp fragment at offset 8 (RFC 1858)",
            f(
                NO4,
                VM4,
                L4::Other {
                    proto: 6,
                    payload: vec![0; 16],
                },
            )
            .frag(1, true),
            d,
            DroppedTinyFragment,
        ),
        row(
            "v4 udp fragment at offset 8",
            f(
                NO4,
                VM4,
                L4::Other {
                    proto: 17,
                    payload: vec![0; 16],
                },
            )
            .frag(1, true),
            p,
            PassedFragment,
        ),
        row(
            "v4 tiny first fragment, tcp header cut at 8 bytes",
            f(
                NO4,
                VM4,
                L4::Other {
                    proto: 6,
                    payload: vec![0x9c, 0x40, 0, 22, 0, 0, 0, 0],
                },
            )
            .frag(0, true),
            d,
            DroppedMalformed,
        ),
        row(
            "v4 tiny first fragment to unprotected port",
            f(
                NO4,
                VM4,
                L4::Other {
                    proto: 6,
                    payload: vec![0x9c, 0x40, 0, 80, 0, 0, 0, 0],
                },
            )
            .frag(0, true),
            d,
            DroppedMalformed,
        ),
        // IPv6.
        row(
            "v6 syn 22 no grant",
            f(NO6, VM6, L4::syn(22)),
            d,
            DeniedNoGrant,
        ),
        row(
            "v6 syn 22 granted /48",
            f(OK6, VM6, L4::syn(22)),
            p,
            AllowedByGrant,
        ),
        row(
            "v6 syn 3389 granted /128",
            f(OK6, VM6, L4::syn(3389)),
            p,
            AllowedByGrant,
        ),
        row(
            "v6 syn 3389 other host",
            f("2001:db8:1::8", VM6, L4::syn(3389)),
            d,
            DeniedNoGrant,
        ),
        row(
            "v6 udp 53 unprotected",
            f(NO6, VM6, L4::udp(53)),
            p,
            PassedUnprotected,
        ),
        row(
            "v6 icmpv6",
            f(
                NO6,
                VM6,
                L4::Other {
                    proto: 58,
                    payload: vec![128, 0, 0, 0, 0, 0, 0, 0],
                },
            ),
            p,
            PassedNotTcpUdp,
        ),
        row(
            "v6 no next header",
            f(
                NO6,
                VM6,
                L4::Other {
                    proto: 59,
                    payload: vec![],
                },
            ),
            p,
            PassedNotTcpUdp,
        ),
        row(
            "v6 hbh+dst+rt syn 22 no grant",
            f(NO6, VM6, L4::syn(22))
                .ext(Ext::HopByHop)
                .ext(Ext::DestOpts)
                .ext(Ext::Routing),
            d,
            DeniedNoGrant,
        ),
        row(
            "v6 hbh+dst+rt syn 22 granted",
            f(OK6, VM6, L4::syn(22))
                .ext(Ext::HopByHop)
                .ext(Ext::DestOpts)
                .ext(Ext::Routing),
            p,
            AllowedByGrant,
        ),
        row(
            "v6 ah syn 22 no grant",
            f(NO6, VM6, L4::syn(22)).ext(Ext::Ah),
            d,
            DeniedNoGrant,
        ),
        row(
            "v6 first fragment syn 22 no grant",
            f(NO6, VM6, L4::syn(22))
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .payload(16),
            d,
            DeniedNoGrant,
        ),
        row(
            "v6 atomic fragment syn 22 granted",
            f(OK6, VM6, L4::syn(22)).ext(Ext::Fragment {
                offset: 0,
                more: false,
            }),
            p,
            AllowedByGrant,
        ),
        row(
            "v6 non-first fragment",
            f(
                NO6,
                VM6,
                L4::Other {
                    proto: 6,
                    payload: vec![0; 64],
                },
            )
            .ext(Ext::Fragment {
                offset: 100,
                more: false,
            }),
            p,
            PassedFragment,
        ),
        row(
            "v6 tcp fragment at offset 8",
            f(
                NO6,
                VM6,
                L4::Other {
                    proto: 6,
                    payload: vec![0; 16],
                },
            )
            .ext(Ext::Fragment {
                offset: 1,
                more: true,
            }),
            d,
            DroppedTinyFragment,
        ),
        row(
            "v6 first fragment, chain continues past it",
            f(
                NO6,
                VM6,
                L4::Other {
                    proto: 60,
                    payload: vec![],
                },
            )
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            }),
            d,
            DroppedMalformed,
        ),
        row(
            "v6 long hbh puts tcp out of reach",
            f(
                NO6,
                VM6,
                L4::Other {
                    proto: 6,
                    payload: vec![],
                },
            )
            .ext(Ext::Long { len: 255 }),
            d,
            DroppedMalformed,
        ),
        row(
            "v6 8 ext headers then syn 22 granted",
            chain(f(OK6, VM6, L4::syn(22)), 8),
            p,
            AllowedByGrant,
        ),
        row(
            "v6 9 ext headers then syn 22",
            chain(f(OK6, VM6, L4::syn(22)), 9),
            d,
            DroppedExtChain,
        ),
        row(
            "v6 9 ext headers then syn 80",
            chain(f(OK6, VM6, L4::syn(80)), 9),
            d,
            DroppedExtChain,
        ),
    ];
    // Header fields that lie.
    let mut bad_ihl = f(OK4, VM4, L4::syn(80)).build();
    bad_ihl[14] = 0x44;
    rows.push(Row {
        name: "v4 ihl 4",
        frame: bad_ihl,
        action: d,
        counter: DroppedMalformed,
    });
    let mut bad_version = f(OK4, VM4, L4::syn(80)).build();
    bad_version[14] = 0x65;
    rows.push(Row {
        name: "v4 header with version 6",
        frame: bad_version,
        action: d,
        counter: DroppedMalformed,
    });
    let mut long_total = f(OK4, VM4, L4::syn(80)).build();
    long_total[16..18].copy_from_slice(&1500u16.to_be_bytes());
    rows.push(Row {
        name: "v4 total length beyond frame",
        frame: long_total,
        action: d,
        counter: DroppedMalformed,
    });
    let mut short_doff = f(OK4, VM4, L4::syn(80)).build();
    short_doff[14 + 20 + 12] = 4 << 4;
    rows.push(Row {
        name: "tcp data offset 4",
        frame: short_doff,
        action: d,
        counter: DroppedMalformed,
    });
    let mut v6_long_payload = f(OK6, VM6, L4::syn(80)).build();
    v6_long_payload[18..20].copy_from_slice(&1400u16.to_be_bytes());
    rows.push(Row {
        name: "v6 payload length beyond frame",
        frame: v6_long_payload,
        action: d,
        counter: DroppedMalformed,
    });
    let mut padded = f(OK4, VM4, L4::syn(80)).build();
    padded.extend_from_slice(&[0; 6]);
    rows.push(Row {
        name: "v4 with ethernet padding",
        frame: padded,
        action: p,
        counter: PassedUnprotected,
    });
    rows
}

/// The program for devices without a link-layer header (tunnels) gives the same verdicts on
/// the bare IP packet, and fails closed on what it cannot recognise as IP.
#[test]
fn tunnel_verdict_table() {
    if !require_root() {
        return;
    }
    let mut t = setup();
    use Counter::*;
    let (p, d) = (XDP_PASS, XDP_DROP);
    let mut f = framer(3000);
    let version = |v: u8, f: Frame| {
        let mut b = f.build_ip();
        b[0] = (v << 4) | (b[0] & 0x0f);
        b
    };
    let mut rows = vec![
        row_ip(
            "v4 syn 22 no grant",
            f(NO4, VM4, L4::syn(22)),
            d,
            DeniedNoGrant,
        ),
        row_ip(
            "v4 syn 22 granted",
            f(OK4, VM4, L4::syn(22)),
            p,
            AllowedByGrant,
        ),
        row_ip(
            "v6 syn 22 no grant",
            f(NO6, VM6, L4::syn(22)),
            d,
            DeniedNoGrant,
        ),
        row_ip(
            "v6 syn 22 granted",
            f(OK6, VM6, L4::syn(22)),
            p,
            AllowedByGrant,
        ),
        row_ip(
            "v4 syn 80 unprotected",
            f(NO4, VM4, L4::syn(80)),
            p,
            PassedUnprotected,
        ),
        row_ip(
            "v6 udp 80 unprotected",
            f(NO6, VM6, L4::udp(80)),
            p,
            PassedUnprotected,
        ),
        row_ip(
            "v4 udp 3389 granted",
            f(OK4, VM4, L4::udp(3389)),
            p,
            AllowedByGrant,
        ),
        row_ip(
            "v4 udp 3389 no grant",
            f(NO4, VM4, L4::udp(3389)),
            d,
            DeniedNoGrant,
        ),
        row_ip(
            "v4 ack 22 no flow",
            f(NO4, VM4, L4::ack(22)),
            d,
            DeniedNoGrant,
        ),
        row_ip(
            "v4 options syn 22 granted",
            f(OK4, VM4, L4::syn(22)).options(&[1; 8]),
            p,
            AllowedByGrant,
        ),
        row_ip(
            "v6 hbh+frag0 syn 22 no grant",
            f(NO6, VM6, L4::syn(22))
                .ext(Ext::HopByHop)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                }),
            d,
            DeniedNoGrant,
        ),
        row_ip(
            "v6 chain of 9",
            chain(f(OK6, VM6, L4::syn(22)), 9),
            d,
            DroppedExtChain,
        ),
        row_ip(
            "v4 non-first fragment",
            f(NO4, VM4, L4::syn(22)).frag(100, false),
            p,
            PassedFragment,
        ),
        row_ip(
            "v4 tcp fragment at offset 8",
            f(NO4, VM4, L4::syn(22)).frag(1, false),
            d,
            DroppedTinyFragment,
        ),
        row_ip("icmp", f(NO4, VM4, L4::icmp_echo()), p, PassedNotTcpUdp),
    ];
    // No link layer, so no protocol field: anything that is not IPv4 or IPv6 by its version
    // nibble is dropped, to any port. An Ethernet frame on such a device is such a packet.
    for (name, v, frame) in [
        ("version 0", 0, f(NO4, VM4, L4::syn(80))),
        ("version 5", 5, f(NO4, VM4, L4::syn(80))),
        ("version 15", 15, f(NO6, VM6, L4::syn(80))),
        ("v6 version on a v4 packet", 6, f(NO4, VM4, L4::syn(22))),
        ("v4 version on a v6 packet", 4, f(NO6, VM6, L4::syn(80))),
    ] {
        rows.push(Row {
            name,
            frame: version(v, frame),
            action: d,
            counter: DroppedMalformed,
        });
    }
    rows.push(Row {
        name: "ethernet frame",
        frame: f(OK4, VM4, L4::syn(80)).build(),
        action: d,
        counter: DroppedMalformed,
    });
    run_rows_on(&mut t, LinkLayer::Ip, rows);

    // Why tunnels need their own program: the Ethernet parser reads a bare IP packet's
    // addresses as MACs and an ethertype, and lets an unauthorised SYN through as non-IP.
    let bare = Frame::new(NO4, VM4, L4::syn(22)).build_ip();
    assert_eq!(t.dp.test_run(&bare, 1).unwrap().action, XDP_PASS);

    // Every cut of a packet, from the 14 bytes the kernel's test runner needs up to one byte
    // short, is dropped; the whole packet passes.
    let mut failures = Vec::new();
    for (name, pkt) in [
        (
            "v4 syn 22 granted",
            Frame::new(OK4, VM4, L4::syn(22)).build_ip(),
        ),
        ("v4 udp 80", Frame::new(NO4, VM4, L4::udp(80)).build_ip()),
        (
            "v6 ext syn 22 granted",
            Frame::new(OK6, VM6, L4::syn(22))
                .ext(Ext::HopByHop)
                .ext(Ext::Ah)
                .build_ip(),
        ),
        ("v6 udp 80", Frame::new(NO6, VM6, L4::udp(80)).build_ip()),
    ] {
        for len in 14..pkt.len() {
            let got = t.dp.test_run_on(LinkLayer::Ip, &pkt[..len], 1).unwrap();
            if got.action != XDP_DROP {
                failures.push(format!(
                    "{name} cut at {len}/{}: action {}",
                    pkt.len(),
                    got.action
                ));
            }
        }
        let whole = t.dp.test_run_on(LinkLayer::Ip, &pkt, 1).unwrap().action;
        if whole != XDP_PASS {
            failures.push(format!("{name} whole: action {whole}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `n` destination-options headers before the transport header.
fn chain(mut f: Frame, n: usize) -> Frame {
    for _ in 0..n {
        f = f.ext(Ext::DestOpts);
    }
    f
}

/// Every truncation from 14 bytes up to one short of the whole frame is dropped; the whole
/// frame passes. For frames to an unprotected port (so a pass is the right answer for the
/// whole frame) and to a protected port with a grant.
#[test]
fn truncation_at_every_byte() {
    if !require_root() {
        return;
    }
    let mut t = setup();
    let frames = [
        ("v4 syn 80", Frame::new(NO4, VM4, L4::syn(80)).build()),
        (
            "v4 options syn 22 granted",
            Frame::new(OK4, VM4, L4::syn(22)).options(&[1; 12]).build(),
        ),
        (
            "qinq v4 udp 3389 granted",
            Frame::new(OK4, VM4, L4::udp(3389))
                .vlan(0x88a8)
                .vlan(0x8100)
                .build(),
        ),
        (
            "v6 ext syn 22 granted",
            Frame::new(OK6, VM6, L4::syn(22))
                .ext(Ext::HopByHop)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: false,
                })
                .ext(Ext::Ah)
                .build(),
        ),
        ("v6 udp 80", Frame::new(NO6, VM6, L4::udp(80)).build()),
    ];
    let mut failures = Vec::new();
    for (name, frame) in frames {
        for len in 14..frame.len() {
            let got = t.dp.test_run(&frame[..len], 1).unwrap().action;
            if got != XDP_DROP {
                failures.push(format!("{name} cut at {len}/{}: action {got}", frame.len()));
            }
        }
        let whole = t.dp.test_run(&frame, 1).unwrap().action;
        if whole != XDP_PASS {
            failures.push(format!("{name} whole: action {whole}"));
        }
    }
    // A non-IP frame cut short is still not IP.
    let a = arp();
    for len in 14..=a.len() {
        if t.dp.test_run(&a[..len], 1).unwrap().action != XDP_PASS {
            failures.push(format!("arp cut at {len}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A /32 that ends does not hide an active /24; an expired grant is reported as such;
/// removing one grant leaves the access others give.
#[test]
fn overlap_expiry_and_removal() {
    if !require_root() {
        return;
    }
    let mut t = TestDataplane::new();
    t.dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    let now = BootInstant::now();
    let wide = GrantId::random();
    let host = GrantId::random();
    let tcp = jitgate_common::Protocol::Tcp;
    let syn = |src: &str, sport| Frame::new(src, VM4, L4::syn(22)).sport(sport).build();
    // /32 already ended, inside a /24 still active for an hour.
    t.dp.add_grant(host, spec(22, tcp, "203.0.113.9"), now)
        .unwrap();
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.9", 1), 1).unwrap().action,
        XDP_DROP
    );
    let before = t.dp.counters().unwrap();
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.9", 2), 1).unwrap().action,
        XDP_DROP
    );
    assert_eq!(
        t.dp.counters().unwrap().get(Counter::DeniedExpired),
        before.get(Counter::DeniedExpired) + 1
    );
    t.dp.add_grant(
        wide,
        spec(22, tcp, "203.0.113.0/24"),
        now.saturating_add(Duration::from_secs(3600)),
    )
    .unwrap();
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.9", 3), 1).unwrap().action,
        XDP_PASS,
        "/24 must cover the ended /32"
    );
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.10", 4), 1).unwrap().action,
        XDP_PASS
    );
    // Removing the /32 changes nothing for its address.
    t.dp.remove_grant(&host).unwrap();
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.9", 5), 1).unwrap().action,
        XDP_PASS
    );
    // A second, shorter grant on the same /24: the later end wins; removing it keeps the first.
    let short = GrantId::random();
    t.dp.add_grant(short, spec(22, tcp, "203.0.113.0/24"), now)
        .unwrap();
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.11", 6), 1).unwrap().action,
        XDP_PASS
    );
    t.dp.remove_grant(&short).unwrap();
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.11", 7), 1).unwrap().action,
        XDP_PASS
    );
    // Remove the last one: denied, and an unknown id is an error that changes nothing.
    t.dp.remove_grant(&wide).unwrap();
    assert_eq!(
        t.dp.test_run(&syn("203.0.113.12", 8), 1).unwrap().action,
        XDP_DROP
    );
    assert!(t.dp.remove_grant(&wide).is_err());
}

/// Admissions produce one event with the grant id; a flood of denials from one source
/// produces one event, and from many sources no more than the per-CPU budget.
#[test]
fn events_and_rate_limits() {
    if !require_root() {
        return;
    }
    let mut t = TestDataplane::with(|o| o.deny_events_per_sec = 20);
    t.dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    let id = GrantId::random();
    t.dp.add_grant(
        id,
        spec(22, jitgate_common::Protocol::Tcp, OK4),
        BootInstant::now().saturating_add(Duration::from_secs(60)),
    )
    .unwrap();
    let mut events = t.dp.take_events().unwrap();
    let syn = Frame::new(OK4, VM4, L4::syn(22)).sport(5555).build();
    assert_eq!(t.dp.test_run(&syn, 1).unwrap().action, XDP_PASS);
    // Same flow again: no second admission event.
    assert_eq!(t.dp.test_run(&syn, 1).unwrap().action, XDP_PASS);
    let got = events.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, jitgate_common::EventKind::Admitted);
    assert_eq!(got[0].grant, Some(id));
    assert_eq!(got[0].source.to_string(), OK4);
    assert_eq!((got[0].source_port, got[0].destination_port), (5555, 22));

    // One source, 200 denied packets (test_run repeats run on one CPU): one event.
    let denied = Frame::new(NO4, VM4, L4::syn(22)).build();
    assert_eq!(t.dp.test_run(&denied, 200).unwrap().action, XDP_DROP);
    let got = events.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, jitgate_common::EventKind::Denied);
    assert_eq!(got[0].reason, Some(Counter::DeniedNoGrant));
    // 200 distinct IPv6 sources in the same /64: still one bucket, at most one more event.
    for i in 0..200u16 {
        let src = format!("2001:db8:2::{:x}", i + 1);
        t.dp.test_run(&Frame::new(&src, VM6, L4::syn(22)).build(), 1)
            .unwrap();
    }
    let v6 = events.drain();
    assert_eq!(v6.len(), 1, "one event per /64: {v6:?}");
    // 200 distinct IPv4 sources: bounded by the budget of 20 per second per CPU (the
    // budget window may roll over once during the loop on a slow machine).
    for i in 0..200u32 {
        let src = std::net::Ipv4Addr::from(u32::from_be_bytes([198, 18, 0, 0]) + i).to_string();
        t.dp.test_run(&Frame::new(&src, VM4, L4::syn(22)).build(), 1)
            .unwrap();
    }
    let many = events.drain();
    assert!(
        many.len() <= 2 * 20 && many.len() >= 10,
        "budget not applied: {}",
        many.len()
    );
    assert!(t.dp.counters().unwrap().get(Counter::EventsSuppressed) >= 150);
}

/// Flows admitted under a grant: on a `keep` port they continue after the grant ends until
/// idle; on a `cut` port they stop at the end; a new connection always needs a grant; an
/// extension is picked up by a flow past its recorded end.
#[test]
fn keep_cut_and_extension_of_admitted_flows() {
    if !require_root() {
        return;
    }
    let mut t = TestDataplane::with(|o| o.flow_idle_timeout = Duration::from_millis(400));
    t.dp.set_protected(&[
        "22/tcp:keep".parse().unwrap(),
        "2222/tcp:cut".parse().unwrap(),
    ])
    .unwrap();
    let tcp = jitgate_common::Protocol::Tcp;
    let short = || BootInstant::now().saturating_add(Duration::from_millis(150));
    t.dp.add_grant(GrantId::random(), spec(22, tcp, OK4), short())
        .unwrap();
    t.dp.add_grant(GrantId::random(), spec(2222, tcp, OK4), short())
        .unwrap();
    let pkt = |port, flags| {
        Frame::new(
            OK4,
            VM4,
            L4::Tcp {
                sport: 7000,
                dport: port,
                flags,
            },
        )
        .build()
    };
    use jitgate_tests::frames::{TCP_ACK, TCP_SYN};
    for port in [22, 2222] {
        assert_eq!(
            t.dp.test_run(&pkt(port, TCP_SYN), 1).unwrap().action,
            XDP_PASS
        );
        assert_eq!(
            t.dp.test_run(&pkt(port, TCP_ACK), 1).unwrap().action,
            XDP_PASS
        );
    }
    std::thread::sleep(Duration::from_millis(250));
    // Grants ended. keep: the flow goes on; cut: it stops. New SYNs are refused on both.
    let before = t.dp.counters().unwrap();
    assert_eq!(
        t.dp.test_run(&pkt(22, TCP_ACK), 1).unwrap().action,
        XDP_PASS,
        "keep flow cut"
    );
    assert_eq!(
        t.dp.counters().unwrap().get(Counter::AllowedKeptFlow),
        before.get(Counter::AllowedKeptFlow) + 1
    );
    assert_eq!(
        t.dp.test_run(&pkt(2222, TCP_ACK), 1).unwrap().action,
        XDP_DROP,
        "cut flow kept"
    );
    assert_eq!(
        t.dp.test_run(&pkt(22, TCP_SYN), 1).unwrap().action,
        XDP_DROP
    );
    assert_eq!(
        t.dp.test_run(&pkt(2222, TCP_SYN), 1).unwrap().action,
        XDP_DROP
    );
    // A new grant covering the cut flow's source revives it (an extension never cuts).
    t.dp.add_grant(
        GrantId::random(),
        spec(2222, tcp, "198.51.100.0/24"),
        BootInstant::now().saturating_add(Duration::from_secs(60)),
    )
    .unwrap();
    let before = t.dp.counters().unwrap();
    assert_eq!(
        t.dp.test_run(&pkt(2222, TCP_ACK), 1).unwrap().action,
        XDP_PASS
    );
    assert_eq!(
        t.dp.counters().unwrap().get(Counter::AllowedByGrant),
        before.get(Counter::AllowedByGrant) + 1
    );
    assert_eq!(
        t.dp.test_run(&pkt(2222, TCP_ACK), 1).unwrap().action,
        XDP_PASS
    );
    // The keep flow, left idle past the timeout, stops.
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        t.dp.test_run(&pkt(22, TCP_ACK), 1).unwrap().action,
        XDP_DROP,
        "idle keep flow not cut"
    );
    assert_eq!(t.dp.flows().len(), 2);
}

/// The tcx fallback on real traffic: the vm's interface already runs an XDP program that is
/// not dispatcher-aware, so the agent attaches at tcx ingress (first in the tcx chain, the
/// other program untouched), and every row of the verdict table, sent as a real frame from
/// the client's side of the veth (VLAN tags arrive in the skb's metadata there), gets the
/// same verdict, told by the counter that explains it. A frame the stack itself discards
/// before tc (it never reaches the hook) counts only for rows that must be dropped.
#[test]
fn verdict_table_at_tcx_on_real_traffic() {
    if !require_root() {
        return;
    }
    let mut t = setup();
    let lab = jitgate_tests::netns::Lab::new(1).unwrap();
    let iface = lab.clients[0].vm_iface.clone();
    // Another tool's XDP program, attached without a dispatcher: never replaced. Its maps are
    // pinned in a private directory (removed at the end), never at the bpffs root.
    let other_pins =
        std::path::PathBuf::from(jitgate_tests::TEST_PIN_ROOT).join(jitgate_tests::unique("other"));
    std::fs::create_dir_all(&other_pins).unwrap();
    let _other_pins = jitgate_tests::PinGuard(other_pins.clone());
    let mut other = aya::EbpfLoader::new()
        .default_map_pin_directory(&other_pins)
        .load(jitgate_agent::dataplane::PROGRAM_OBJECT)
        .unwrap();
    let floor: &mut aya::programs::Xdp = other
        .program_mut(jitgate_common::programs::FLOOR_PASS)
        .unwrap()
        .try_into()
        .unwrap();
    floor.load().unwrap();
    let other_id = floor.info().unwrap().id();
    jitgate_agent::netns::run_in(&lab.vm_path(), || {
        floor.attach(&iface, aya::programs::XdpMode::Driver)
    })
    .unwrap()
    .unwrap();
    let a = jitgate_agent::netns::run_in(&lab.vm_path(), || t.dp.attach(&iface))
        .unwrap()
        .unwrap();
    assert_eq!(a.hook, jitgate_agent::dataplane::Hook::TcxIngress, "{a:?}");
    assert_eq!((a.position, a.programs), (0, 1), "{a:?}");
    let st = jitgate_agent::netns::run_in(&lab.vm_path(), || t.dp.hook_status(&iface))
        .unwrap()
        .unwrap();
    assert_eq!(st.ahead.len(), 1, "the XDP program runs before tc: {st:?}");
    assert_eq!(st.ahead[0].id, other_id);
    let sock = jitgate_agent::netns::run_in(&lab.client_path(0), || {
        jitgate_tests::flood::PacketSocket::open("eth0")
    })
    .unwrap()
    .unwrap();
    let mut failures = Vec::new();
    let mut before_hook = 0;
    let mut unsendable = 0;
    let mut reached = 0;
    let rows = verdict_table_rows();
    let total = rows.len();
    for r in rows {
        let before = t.dp.counters().unwrap();
        if sock.send_batch(std::slice::from_ref(&r.frame)).is_err() {
            // Longer than the link's MTU: cannot be sent as a frame at all.
            unsendable += 1;
            continue;
        }
        // The receive path runs in the sender's softirq, or soon after in ksoftirqd.
        let moved = jitgate_tests::wait_until(Duration::from_secs(1), || {
            t.dp.counters().unwrap() != before
        });
        let after = t.dp.counters().unwrap();
        let delta = after.get(r.counter) - before.get(r.counter);
        if !moved && r.action == XDP_DROP {
            before_hook += 1;
            continue;
        }
        reached += 1;
        if delta != 1 {
            failures.push(format!(
                "{}: {} +{delta} (want +1)",
                r.name,
                r.counter.name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "tcx verdicts differ from the table:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "{reached} rows reached the hook, {before_hook} were dropped before it, {unsendable} exceed the MTU"
    );
    assert!(
        unsendable <= 1 && reached + before_hook + unsendable == total,
        "{reached} of {total} rows reached the hook"
    );
    assert!(
        before_hook < 10,
        "{before_hook} rows never reached the hook"
    );
    jitgate_agent::netns::run_in(&lab.vm_path(), || t.dp.detach(&iface))
        .unwrap()
        .unwrap();
}
