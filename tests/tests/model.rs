//! Property test of the packet path: mutated frames through the real program
//! (BPF_PROG_TEST_RUN) against the reference model (`jitgate_tests::model`). Every
//! disagreement fails, and every frame passed to a protected port must have a covering
//! active grant or an admitted flow in the model. Found cases live on as regression rows in
//! tests/regressions/packet_path.txt.

use jitgate_agent::{BootInstant, GrantId, GrantSpec, LinkLayer, XDP_DROP, XDP_PASS};
use jitgate_common::{Port, ProtectedPort, Protocol, SourcePrefix};
use jitgate_tests::frames::{Ext, Frame, L4};
use jitgate_tests::model::{Model, ModelGrant, Parsed, Verdict};
use jitgate_tests::{TestDataplane, require_root};
use std::time::Duration;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const V4_SOURCES: &[&str] = &[
    "198.51.100.7",
    "198.51.100.8",
    "203.0.113.9",
    "203.0.113.10",
    "198.18.0.1",
];
const V6_SOURCES: &[&str] = &[
    "2001:db8:1::7",
    "2001:db8:1:2::9",
    "2001:db8:2::5",
    "2001:db8:ffff::1",
];
const PORTS: &[u16] = &[22, 2222, 3389, 80, 443];

struct Harness {
    t: TestDataplane,
    model: Model,
}

impl Harness {
    fn new() -> Harness {
        let mut t = TestDataplane::with(|o| {
            o.limits.flows = 1 << 16;
            o.flow_idle_timeout = Duration::from_secs(3600);
        });
        let ports: Vec<ProtectedPort> = ["22/tcp:keep", "2222/tcp:cut", "3389/udp:keep"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        t.dp.set_protected(&ports).unwrap();
        let mut model = Model::new(3600 * 1_000_000_000);
        for p in &ports {
            model
                .protected
                .insert((p.protocol.number(), p.port.get()), p.on_expiry);
        }
        Harness { t, model }
    }

    fn grant(&mut self, proto: Protocol, port: u16, src: &str, expires: BootInstant) -> GrantId {
        let id = GrantId::random();
        let source: SourcePrefix = src.parse().unwrap();
        let port = Port::new(port).unwrap();
        self.t
            .dp
            .add_grant(
                id,
                GrantSpec {
                    protocol: proto,
                    port,
                    source,
                },
                expires,
            )
            .unwrap();
        self.model.grants.push(ModelGrant {
            proto: proto.number(),
            port: port.get(),
            source,
            expires_ns: expires.0,
        });
        id
    }

    /// Runs one packet through both, with the program for link layer `link`; returns a
    /// failure description, if any.
    fn check_on(&mut self, link: LinkLayer, frame: &[u8]) -> Option<String> {
        // The kernel's test runner takes no less.
        if frame.len() < 14 {
            return None;
        }
        let now = BootInstant::now().0;
        let kernel = self.t.dp.test_run_on(link, frame, 1).unwrap().action;
        let (want, parsed) = self.model.step_on(link, frame, now);
        let want = match want {
            Verdict::Pass => XDP_PASS,
            Verdict::Drop => XDP_DROP,
        };
        if kernel != want {
            return Some(format!(
                "kernel {kernel} model {want} ({parsed:?}) frame {}",
                hex(frame)
            ));
        }
        if kernel == XDP_PASS
            && let Parsed::L4 {
                proto,
                src,
                dst,
                sport,
                dport,
                ..
            } = parsed
            && self.model.protected.contains_key(&(proto, dport))
            && self.model.covering(proto, dport, src, now).is_none()
            && !self.model.has_flow(proto, src, dst, sport, dport)
        {
            return Some(format!(
                "passed to a protected port without grant or flow: {}",
                hex(frame)
            ));
        }
        None
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn base_frame(r: &mut Rng) -> Frame {
    let v6 = r.below(2) == 0;
    let (src, dst) = if v6 {
        (*r.pick(V6_SOURCES), "2001:db8:ff::1")
    } else {
        (*r.pick(V4_SOURCES), "192.0.2.1")
    };
    let dport = *r.pick(PORTS);
    let sport = 1024 + r.below(64) as u16;
    let l4 = match r.below(4) {
        0 => L4::Udp { sport, dport },
        1 => L4::Tcp {
            sport,
            dport,
            flags: 0x02,
        },
        2 => L4::Tcp {
            sport,
            dport,
            flags: 0x10,
        },
        _ => L4::Tcp {
            sport,
            dport,
            flags: r.below(256) as u8,
        },
    };
    let mut f = Frame::new(src, dst, l4).payload(r.below(40) as usize);
    for _ in 0..[0, 0, 0, 1, 2, 3][r.below(6) as usize] {
        f = f.vlan(*r.pick(&[0x8100u16, 0x88a8]));
    }
    if v6 {
        let n = [0usize, 0, 1, 2, 3, 7, 8, 9][r.below(8) as usize];
        for _ in 0..n {
            f = f.ext(match r.below(6) {
                0 => Ext::HopByHop,
                1 => Ext::Routing,
                2 => Ext::DestOpts,
                3 => Ext::Ah,
                4 => Ext::Fragment {
                    offset: [0, 0, 1, 100][r.below(4) as usize],
                    more: r.below(2) == 0,
                },
                _ => Ext::Long {
                    len: r.below(4) as u8,
                },
            });
        }
    } else {
        if r.below(3) == 0 {
            let n = 4 * r.below(11) as usize;
            f = f.options(&vec![1u8; n]);
        }
        if r.below(4) == 0 {
            f = f.frag([0, 0, 1, 2, 185][r.below(5) as usize], r.below(2) == 0);
        }
    }
    f
}

/// `l3`: where the IP header starts in the base packet (14, or 0 on a device without a link
/// layer).
fn mutate(r: &mut Rng, f: &mut Vec<u8>, l3: usize) {
    for _ in 0..r.below(4) {
        if f.is_empty() {
            return;
        }
        match r.below(7) {
            // Truncate anywhere from 14 bytes up.
            0 if f.len() > 14 => {
                let n = 14 + r.below((f.len() - 14) as u64) as usize;
                f.truncate(n);
            }
            // Flip one bit in the headers.
            1 => {
                let i = r.below(f.len().min(120) as u64) as usize;
                f[i] ^= 1 << r.below(8);
            }
            // A random byte in the headers.
            2 => {
                let i = r.below(f.len().min(120) as u64) as usize;
                f[i] = r.next() as u8;
            }
            // A header-length or length field, wherever the base frame put it.
            3 => {
                let i = l3 + r.below(f.len().saturating_sub(l3).min(80) as u64 + 1) as usize;
                if i + 1 < f.len() {
                    f[i] = [0x45, 0x4f, 0x40, 0x60, 0x00, 0xff][r.below(6) as usize];
                }
            }
            // Extra bytes at the end (Ethernet padding).
            4 => f.extend(std::iter::repeat_n(0u8, r.below(20) as usize)),
            // Ethertype games.
            5 if l3 == 14 && f.len() >= 14 => {
                let t: u16 = *r.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x9100]);
                f[12..14].copy_from_slice(&t.to_be_bytes());
            }
            _ => {}
        }
    }
}

#[test]
fn kernel_verdicts_equal_the_reference_model() {
    if !require_root() {
        return;
    }
    property(LinkLayer::Ethernet);
}

/// The same for the program of devices without a link layer, on the same packets without
/// their Ethernet header (and VLAN tags).
#[test]
fn tunnel_verdicts_equal_the_reference_model() {
    if !require_root() {
        return;
    }
    property(LinkLayer::Ip);
}

/// Random and mutated packets through the kernel program for `link` and the model: the same
/// verdicts, and nothing passes to a protected port without a grant or a flow.
fn property(link: LinkLayer) {
    let mut h = Harness::new();
    let far = BootInstant::now().saturating_add(Duration::from_secs(3600));
    let past = BootInstant(BootInstant::now().0.saturating_sub(1_000_000_000));
    h.grant(Protocol::Tcp, 22, "198.51.100.0/24", far);
    h.grant(Protocol::Tcp, 22, "203.0.113.9", past);
    h.grant(Protocol::Tcp, 22, "203.0.113.0/24", past);
    h.grant(Protocol::Tcp, 2222, "2001:db8:1::/48", far);
    h.grant(Protocol::Tcp, 2222, "198.51.100.8", far);
    h.grant(Protocol::Udp, 3389, "198.51.100.7", far);
    h.grant(Protocol::Tcp, 22, "2001:db8:2::5", past);
    h.grant(Protocol::Tcp, 22, "2001:db8:1::/64", far);
    // Short grants: their flows are checked again after they end (keep vs cut).
    let soon = BootInstant::now().saturating_add(Duration::from_millis(1500));
    h.grant(Protocol::Tcp, 22, "198.18.0.1", soon);
    h.grant(Protocol::Tcp, 2222, "203.0.113.10", soon);
    h.grant(Protocol::Udp, 3389, "2001:db8:ffff::1", soon);

    let seed = std::env::var("JITGATE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    let cases: usize = std::env::var("JITGATE_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut r = Rng(seed);
    let mut failures = Vec::new();
    let mut frames = Vec::new();
    for i in 0..cases {
        let (mut f, l3) = match link {
            LinkLayer::Ethernet => (base_frame(&mut r).build(), 14),
            LinkLayer::Ip => (base_frame(&mut r).build_ip(), 0),
        };
        if i % 4 != 0 {
            mutate(&mut r, &mut f, l3);
        }
        // Stay clear of the short grants' end: the model and the kernel read the clock at
        // slightly different moments.
        if BootInstant::now().0 + 50_000_000 > soon.0 {
            break;
        }
        if let Some(e) = h.check_on(link, &f) {
            failures.push(e);
        }
        frames.push(f);
    }
    // After the short grants ended: replay every frame (their flows now exist).
    while BootInstant::now().0 < soon.0 + 100_000_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in &frames {
        if let Some(e) = h.check_on(link, f) {
            failures.push(e);
        }
    }
    let checked = frames.len() * 2;
    assert!(
        checked > 2_000,
        "too few frames checked ({checked}): machine too slow?"
    );
    failures.truncate(20);
    assert!(
        failures.is_empty(),
        "seed {seed:#x}: {} disagreements, first ones:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Rows found by the property test (or worth pinning): `hex-frame PASS|DROP # why`, run
/// against the same setup.
#[test]
fn regression_rows() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new();
    let far = BootInstant::now().saturating_add(Duration::from_secs(3600));
    h.grant(Protocol::Tcp, 22, "198.51.100.0/24", far);
    let text = include_str!("../regressions/packet_path.txt");
    let mut n = 0;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut it = line.split_whitespace();
        let (Some(frame), Some(want)) = (it.next(), it.next()) else {
            panic!("bad row {line:?}")
        };
        let frame = unhex(frame);
        let want = if want == "PASS" { XDP_PASS } else { XDP_DROP };
        let got = h.t.dp.test_run(&frame, 1).unwrap().action;
        assert_eq!(got, want, "row {line}");
        let (m, _) = h.model.step(&frame, BootInstant::now().0);
        assert_eq!(
            if m == Verdict::Pass {
                XDP_PASS
            } else {
                XDP_DROP
            },
            want,
            "model disagrees on {line}"
        );
        n += 1;
    }
    assert!(n > 0);
}

/// Grants come and go (random prefixes of many lengths in both families, overlapping,
/// some already ended, then removed in random order) while random sources knock on the
/// protected port: after every change the kernel admits a SYN exactly when the model has an
/// active covering grant. This drives the denial prefilter through growth, shrinking, more
/// prefix lengths than it probes, and removals of keys that share bits with others; at the
/// end, with every grant gone, no prefilter bit may remain set (its counts are exact).
#[test]
fn verdicts_equal_the_model_while_grants_come_and_go() {
    if !require_root() {
        return;
    }
    let mut h = Harness::new();
    let seed = std::env::var("JITGATE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0fc0_ffee_u64);
    let mut r = Rng(seed);
    let far = BootInstant::now().saturating_add(Duration::from_secs(3600));
    let past = BootInstant(BootInstant::now().0.saturating_sub(1_000_000_000));
    // Sources inside a few documentation ranges, so that prefixes and probes overlap often.
    let v4_base: [u32; 2] = [0xc633_6400, 0xcb00_7100]; // 198.51.100.0, 203.0.113.0
    let v6_base: u128 = 0x2001_0db8_0001_u128 << 80;
    let rand_v4 = |r: &mut Rng| -> std::net::IpAddr {
        let b = v4_base[r.below(2) as usize];
        std::net::IpAddr::V4((b | (r.below(256) as u32)).into())
    };
    let rand_v6 = |r: &mut Rng| -> std::net::IpAddr {
        std::net::IpAddr::V6(
            (v6_base | u128::from(r.below(1 << 20)) << 40 | u128::from(r.below(256))).into(),
        )
    };
    let mut live: Vec<(GrantId, usize)> = Vec::new();
    let mut sport = 1024u16;
    let mut failures = Vec::new();
    let mut check = |h: &mut Harness, r: &mut Rng, failures: &mut Vec<String>| {
        for _ in 0..40 {
            let src = if r.below(2) == 0 {
                rand_v4(r)
            } else {
                rand_v6(r)
            };
            let dst = if src.is_ipv4() {
                "192.0.2.1"
            } else {
                "2001:db8:ff::1"
            };
            sport = sport.wrapping_add(1).max(1024);
            let f = Frame::new(&src.to_string(), dst, L4::syn(22))
                .sport(sport)
                .build();
            let now = BootInstant::now().0;
            let got = h.t.dp.test_run(&f, 1).unwrap().action;
            let want = if h.model.covering(6, 22, src, now).is_some() {
                XDP_PASS
            } else {
                XDP_DROP
            };
            if got != want {
                failures.push(format!("{src}: kernel {got}, model {want}"));
            }
        }
    };
    for round in 0..1200 {
        let adding = live.is_empty() || (round < 700 && r.below(3) != 0) || r.below(3) == 0;
        if adding {
            let v6 = r.below(2) == 1;
            let (addr, max) = if v6 {
                (rand_v6(&mut r), 128u8)
            } else {
                (rand_v4(&mut r), 32u8)
            };
            // Host prefixes half the time, otherwise any length (up to 14 distinct ones per
            // family: more than the program probes).
            let len = if r.below(2) == 0 {
                max
            } else {
                max - 1 - r.below(14) as u8
            };
            let src = SourcePrefix::host(addr).truncate(len).to_string();
            let exp = if r.below(8) == 0 { past } else { far };
            let id = h.grant(Protocol::Tcp, 22, &src, exp);
            live.push((id, h.model.grants.len() - 1));
        } else {
            let i = r.below(live.len() as u64) as usize;
            let (id, mi) = live.swap_remove(i);
            h.t.dp.remove_grant(&id).unwrap();
            // Keep the model's indices valid: mark removed grants as ended long ago.
            h.model.grants[mi].expires_ns = 0;
        }
        if round % 10 == 0 {
            check(&mut h, &mut r, &mut failures);
        }
    }
    let (blocks, exact) = h.t.dp.prefilter_state();
    assert!(exact, "prefilter counts not exact");
    assert!(
        blocks.iter().all(|&b| b > 0),
        "every region filters: {blocks:?}"
    );
    // Remove the rest: no bit may stay set.
    for (id, mi) in live.drain(..) {
        h.t.dp.remove_grant(&id).unwrap();
        h.model.grants[mi].expires_ns = 0;
    }
    check(&mut h, &mut r, &mut failures);
    failures.truncate(20);
    assert!(
        failures.is_empty(),
        "seed {seed:#x}: {} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let words = jitgate_tests::prefilter_words(&h.t.pin_dir);
    assert!(
        words.iter().all(|&w| w == 0),
        "{} prefilter words still set after every grant was removed",
        words.iter().filter(|&&w| w != 0).count()
    );
}
