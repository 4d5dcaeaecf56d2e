//! Real connections through the attached program: network namespaces, veth pairs, kernel
//! TCP/UDP sockets. The program runs on the vm's side of each veth.

use jitgate_agent::{AttachMode, BootInstant, GrantId, GrantSpec};
use jitgate_common::{Port, ProtectedPort, Protocol};
use jitgate_tests::netns::Lab;
use jitgate_tests::{TestDataplane, require_root};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A blocked connect shows as a timeout; an admitted one completes in well under this,
/// even on a busy machine.
const CONNECT: Duration = Duration::from_millis(700);

fn spec(port: u16, proto: Protocol, src: &str) -> GrantSpec {
    GrantSpec {
        protocol: proto,
        port: Port::new(port).unwrap(),
        source: src.parse().unwrap(),
    }
}

fn protect(t: &mut TestDataplane, ports: &[&str]) {
    let ports: Vec<ProtectedPort> = ports.iter().map(|p| p.parse().unwrap()).collect();
    t.dp.set_protected(&ports).unwrap();
}

/// A lab with `clients` clients and the program attached on every vm-side interface.
fn lab(clients: usize) -> (Lab, TestDataplane) {
    let lab = Lab::new(clients).expect("lab");
    let mut t = TestDataplane::new();
    for c in lab.clients.clone() {
        let a = jitgate_agent::netns::run_in(&lab.vm_path(), || t.dp.attach(&c.vm_iface))
            .unwrap()
            .unwrap();
        // veth has native XDP.
        assert_eq!(a.mode, AttachMode::Driver, "{a:?}");
    }
    (lab, t)
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn in_secs(s: f64) -> BootInstant {
    BootInstant::now().saturating_add(Duration::from_secs_f64(s))
}

#[test]
fn tcp_is_blocked_until_granted_and_only_for_the_granted_prefix() {
    if !require_root() {
        return;
    }
    let (lab, mut t) = lab(2);
    protect(&mut t, &["22/tcp"]);
    lab.tcp_server(22, false).unwrap();
    lab.tcp_server(8080, false).unwrap();
    let c0 = lab.clients[0].clone();
    let c1 = lab.clients[1].clone();

    assert!(
        !lab.tcp_connects(0, None, at(c0.vm_v4, 22), CONNECT),
        "protected port open without grant"
    );
    assert!(
        lab.tcp_connects(0, None, at(c0.vm_v4, 8080), CONNECT),
        "unprotected port must connect"
    );
    assert!(lab.tcp_connects(1, None, at(c1.vm_v4, 8080), CONNECT));

    let id = GrantId::random();
    // A UTC end, as grants arrive from operators; converted to boot time at write time.
    let end = std::time::SystemTime::now() + Duration::from_secs(120);
    let boot =
        t.dp.add_grant_until(id, spec(22, Protocol::Tcp, "198.51.100.0/24"), end)
            .unwrap();
    let left = boot.remaining();
    assert!(
        left > Duration::from_secs(115) && left <= Duration::from_secs(120),
        "{left:?}"
    );
    assert!(
        lab.tcp_connects(0, None, at(c0.vm_v4, 22), CONNECT),
        "granted prefix must connect"
    );
    assert!(
        !lab.tcp_connects(1, None, at(c1.vm_v4, 22), CONNECT),
        "other prefix must not connect"
    );
    assert!(lab.tcp_connects(1, None, at(c1.vm_v4, 8080), CONNECT));

    // Grant removal closes the door for new connections.
    t.dp.remove_grant(&id).unwrap();
    assert!(
        !lab.tcp_connects(0, None, at(c0.vm_v4, 22), CONNECT),
        "removed grant still admits"
    );
    let c = t.dp.counters().unwrap();
    assert!(c.get(jitgate_common::Counter::DeniedNoGrant) >= 3);
    assert!(c.get(jitgate_common::Counter::AllowedByGrant) >= 1);
}

#[test]
fn host_grant_admits_one_source_not_its_neighbour() {
    if !require_root() {
        return;
    }
    let (lab, mut t) = lab(1);
    protect(&mut t, &["22/tcp"]);
    lab.tcp_server(22, false).unwrap();
    lab.add_client_addr(0, "198.51.100.3/24").unwrap();
    let vm = lab.clients[0].vm_v4;
    t.dp.add_grant(
        GrantId::random(),
        spec(22, Protocol::Tcp, "198.51.100.2"),
        in_secs(120.0),
    )
    .unwrap();
    assert!(lab.tcp_connects(
        0,
        Some("198.51.100.2".parse().unwrap()),
        at(vm, 22),
        CONNECT
    ));
    assert!(!lab.tcp_connects(
        0,
        Some("198.51.100.3".parse().unwrap()),
        at(vm, 22),
        CONNECT
    ));
}

#[test]
fn udp_and_ipv6() {
    if !require_root() {
        return;
    }
    let (lab, mut t) = lab(2);
    protect(&mut t, &["3389/udp", "22/tcp"]);
    lab.udp_server(3389, true).unwrap();
    lab.udp_server(5353, true).unwrap();
    lab.tcp_server(22, true).unwrap();
    let c0 = lab.clients[0].clone();
    let c1 = lab.clients[1].clone();
    let udp_wait = Duration::from_millis(500);

    // UDP over IPv4 and IPv6 (the v6 server socket is dual-stack).
    assert!(!lab.udp_echoes(0, at(c0.vm_v4, 3389), udp_wait));
    assert!(!lab.udp_echoes(0, at(c0.vm_v6, 3389), udp_wait));
    assert!(
        lab.udp_echoes(0, at(c0.vm_v6, 5353), udp_wait),
        "unprotected udp must pass"
    );
    t.dp.add_grant(
        GrantId::random(),
        spec(3389, Protocol::Udp, "2001:db8:1::/64"),
        in_secs(120.0),
    )
    .unwrap();
    assert!(
        lab.udp_echoes(0, at(c0.vm_v6, 3389), udp_wait),
        "granted v6 udp"
    );
    assert!(
        !lab.udp_echoes(0, at(c0.vm_v4, 3389), udp_wait),
        "v6 grant must not open v4"
    );
    assert!(
        !lab.udp_echoes(1, at(c1.vm_v6, 3389), udp_wait),
        "other v6 prefix"
    );

    // TCP over IPv6.
    assert!(!lab.tcp_connects(0, None, at(c0.vm_v6, 22), CONNECT));
    t.dp.add_grant(
        GrantId::random(),
        spec(22, Protocol::Tcp, "2001:db8:1::2"),
        in_secs(120.0),
    )
    .unwrap();
    assert!(
        lab.tcp_connects(0, None, at(c0.vm_v6, 22), CONNECT),
        "granted v6 host"
    );
    assert!(!lab.tcp_connects(1, None, at(c1.vm_v6, 22), CONNECT));
    // The v6 TCP grant does not open UDP.
    assert!(!lab.udp_echoes(1, at(c1.vm_v6, 3389), udp_wait));
}

/// Access ends on time: no new connection is admitted more than 250 ms after the end (the
/// kernel compares against CLOCK_BOOTTIME per packet; the margin is for a busy machine).
#[test]
fn access_ends_on_time() {
    if !require_root() {
        return;
    }
    let (lab, mut t) = lab(1);
    protect(&mut t, &["22/tcp"]);
    lab.tcp_server(22, false).unwrap();
    let vm = lab.clients[0].vm_v4;
    let window = Duration::from_millis(1500);
    let end_boot = BootInstant::now().saturating_add(window);
    let end = Instant::now() + window;
    t.dp.add_grant(
        GrantId::random(),
        spec(22, Protocol::Tcp, "198.51.100.2"),
        end_boot,
    )
    .unwrap();
    let mut attempts: Vec<(Instant, bool)> = Vec::new();
    while Instant::now() < end + Duration::from_millis(900) {
        let start = Instant::now();
        let ok = lab.tcp_connects(0, None, at(vm, 22), Duration::from_millis(150));
        attempts.push((start, ok));
        std::thread::sleep(Duration::from_millis(40));
    }
    let late = end + Duration::from_millis(250);
    let early_ok = attempts
        .iter()
        .any(|(s, ok)| *ok && *s + Duration::from_millis(300) < end);
    assert!(
        early_ok,
        "no connection succeeded during the window: {attempts:?}"
    );
    let after: Vec<_> = attempts.iter().filter(|(s, _)| *s >= late).collect();
    assert!(!after.is_empty(), "no attempt after the end");
    assert!(
        after.iter().all(|(_, ok)| !ok),
        "a connection started more than 250 ms after the end was admitted"
    );
    let last_ok = attempts
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(s, _)| *s)
        .max()
        .unwrap();
    eprintln!(
        "last admitted connect started {:?} before the end",
        end.saturating_duration_since(last_ok)
    );
}

/// Overlap: a short /32 inside a longer /24. After the /32 ends, its address is still
/// admitted by the /24; and when a short /24 ends, a longer /32 inside it still admits.
#[test]
fn overlapping_grants_do_not_hide_each_other() {
    if !require_root() {
        return;
    }
    let (lab, mut t) = lab(1);
    protect(&mut t, &["22/tcp"]);
    lab.tcp_server(22, false).unwrap();
    lab.add_client_addr(0, "198.51.100.3/24").unwrap();
    let vm = lab.clients[0].vm_v4;
    let a2: IpAddr = "198.51.100.2".parse().unwrap();
    let a3: IpAddr = "198.51.100.3".parse().unwrap();

    t.dp.add_grant(
        GrantId::random(),
        spec(22, Protocol::Tcp, "198.51.100.2"),
        in_secs(0.8),
    )
    .unwrap();
    let wide = GrantId::random();
    t.dp.add_grant(
        wide,
        spec(22, Protocol::Tcp, "198.51.100.0/24"),
        in_secs(60.0),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        lab.tcp_connects(0, Some(a2), at(vm, 22), CONNECT),
        "/24 must still admit after the /32 ended"
    );

    // Now the reverse: the /24 is replaced by a short one, the /32 lives longer.
    t.dp.remove_grant(&wide).unwrap();
    t.dp.add_grant(
        GrantId::random(),
        spec(22, Protocol::Tcp, "198.51.100.0/24"),
        in_secs(0.8),
    )
    .unwrap();
    t.dp.add_grant(
        GrantId::random(),
        spec(22, Protocol::Tcp, "198.51.100.2"),
        in_secs(60.0),
    )
    .unwrap();
    assert!(
        lab.tcp_connects(0, Some(a3), at(vm, 22), CONNECT),
        "short /24 admits .3 while active"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        lab.tcp_connects(0, Some(a2), at(vm, 22), CONNECT),
        "long /32 admits after the /24 ended"
    );
    assert!(
        !lab.tcp_connects(0, Some(a3), at(vm, 22), CONNECT),
        "ended /24 must not admit .3"
    );
}

/// Enforcement outlives the process state that set it up: dropping the `Dataplane` (as a
/// crashed agent would) leaves the pinned program and maps enforcing, and a new `open`
/// adopts them and replaces the program atomically.
#[test]
fn enforcement_survives_the_loader_and_is_adopted() {
    if !require_root() {
        return;
    }
    let lab = Lab::new(1).unwrap();
    lab.tcp_server(22, false).unwrap();
    let vm = lab.clients[0].vm_v4;
    let iface = lab.clients[0].vm_iface.clone();
    let t = TestDataplane::new();
    let pin_dir = t.pin_dir.clone();
    let TestDataplane {
        mut dp,
        guard: _guard,
        ..
    } = t;
    jitgate_agent::netns::run_in(&lab.vm_path(), || dp.attach(&iface))
        .unwrap()
        .unwrap();
    dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    let id = GrantId::random();
    dp.add_grant(id, spec(22, Protocol::Tcp, "198.51.100.2"), in_secs(120.0))
        .unwrap();
    let first_prog = dp.program_id().unwrap();
    drop(dp);
    // Nothing in this process holds the program now: only the pins.
    assert!(
        lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "grant lost with the loader"
    );
    lab.add_client_addr(0, "198.51.100.3/24").unwrap();
    assert!(!lab.tcp_connects(
        0,
        Some("198.51.100.3".parse().unwrap()),
        at(vm, 22),
        CONNECT
    ));

    // Adopt: same maps, new program swapped in atomically.
    let mut dp =
        jitgate_agent::Dataplane::open(&jitgate_agent::DataplaneOptions::new(&pin_dir)).unwrap();
    assert!(dp.adopted());
    // As the daemon does: the policy is restated before the journal is replayed. The
    // adopted grant, not yet known to this process, must keep admitting meanwhile.
    dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    assert!(
        lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "grant lost when the policy was restated before reconciling"
    );
    let a = jitgate_agent::netns::run_in(&lab.vm_path(), || dp.attach(&iface))
        .unwrap()
        .unwrap();
    assert!(a.replaced);
    assert_ne!(dp.program_id().unwrap(), first_prog);
    assert!(
        lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "grant lost across adoption"
    );
    // Reconcile with a journal that no longer has the grant: access ends.
    dp.reconcile_grants(std::iter::empty()).unwrap();
    assert!(!lab.tcp_connects(0, None, at(vm, 22), CONNECT));
    drop(dp);
    jitgate_agent::remove_pins(&pin_dir).unwrap();
    assert!(!pin_dir.exists());
    // The kernel releases the unpinned link asynchronously (inode eviction): allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.tcp_connects(0, None, at(vm, 22), CONNECT) {
        assert!(Instant::now() < deadline, "removing the pins must detach");
        std::thread::sleep(Duration::from_millis(100));
    }
}
