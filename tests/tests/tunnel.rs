//! Traffic a host decapsulates reaches the stack through the tunnel device, never crossing
//! the outer interface's XDP hook. The agent attaches to tunnel devices too, with the program
//! for their link type, and governs real SSH through them exactly as on the NIC.
//!
//! The L3 tunnels are tun devices (see `jitgate_tests::tunnel`): a plain IP-in-UDP relay, and
//! real WireGuard through `wireguard-go` (this kernel has no GRE, ipip or kernel WireGuard;
//! tun has the same link type as a kernel WireGuard device, ARPHRD_NONE). VXLAN, which is
//! built in, is an Ethernet device and gets the Ethernet program.

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use jitgate_tests::netns::ips;
use jitgate_tests::tunnel::{End, UdpTunnel, WireGuard, set_link_type, tun_device};
use jitgate_tests::{require_root, wait_until};
use std::net::IpAddr;
use std::time::Duration;

/// Inner (tunnel) addresses of the workstation and the VM (/24 and /64 on the devices).
const WS_IN4: &str = "203.0.113.1";
const VM_IN4: &str = "203.0.113.10";
const WS_IN6: &str = "2001:db8:77::1";
const VM_IN6: &str = "2001:db8:77::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Whether `echo MARK` over SSH to `host` runs and prints MARK.
fn ssh_runs(sshd: &Sshd, from: &str, host: &str, timeout_secs: u32) -> bool {
    let mark = format!("tunnel-{}", host.replace([':', '.'], "-"));
    match sshd.ssh(from, ip(host), &format!("echo {mark}"), timeout_secs) {
        Ok(o) => o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == mark,
        Err(_) => false,
    }
}

/// A local grant for `source` on TCP 22; its id.
fn grant(agent: &AgentProc, source: &str, duration: &str) -> String {
    let ids = agent.grant(&args(&format!(
        "--port 22 --source {source} --duration {duration} --justification tunnel-test"
    )));
    ids.into_iter().next().expect("grant id")
}

/// The agent's audit log, and how many `kind` records it holds for interface `iface`.
fn audit_records(agent: &AgentProc, kind: &str, iface: &str) -> (String, usize) {
    let log = std::fs::read_to_string(agent.state_dir.join("audit.log")).unwrap_or_default();
    let quoted = format!("\"{iface}\"");
    let n = log
        .lines()
        .filter(|l| l.contains(kind) && l.contains(&quoted))
        .count();
    (log, n)
}

/// The agent's view of one interface: (mode, program) from `status --json`.
fn iface_status(agent: &AgentProc, name: &str) -> Option<(String, String)> {
    let status: serde_json::Value = serde_json::from_str(&agent.ok(&["status", "--json"])).ok()?;
    status["status"]["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
        .map(|i| {
            (
                i["mode"].as_str().unwrap_or_default().to_string(),
                i["link"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// SSH over an L3 tunnel (IPv4 and IPv6 inside, one tunnel created before the agent starts
/// and one after): refused without a grant, a grant for the workstation's inner address
/// opens it and a command runs, the grant's end closes it; the outer path stays governed by
/// the Ethernet program and is not opened by a grant for the inner address.
#[test]
fn ssh_through_an_l3_tunnel_is_governed() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let vm_v4 = vm.v4.to_string();
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    let end = |ns, dev, inner, outer: String| End {
        ns,
        dev,
        inner,
        outer: outer.parse().unwrap(),
    };
    let _t4 = UdpTunnel::new(
        &end(
            &fleet.ws,
            "jt4",
            &["203.0.113.1/24"],
            format!("{WS_V4}:51820"),
        ),
        &end(
            &vm.ns,
            "jt4",
            &["203.0.113.10/24"],
            format!("{vm_v4}:51820"),
        ),
    )
    .expect("IPv4 tunnel");
    // Before enforcement the tunnel carries SSH, so a refusal below is the program's doing.
    assert!(
        ssh_runs(&sshd, &fleet.ws, VM_IN4, 5),
        "no SSH through the tunnel before enforcement"
    );

    let agent = AgentProc::start(
        &vm.ns,
        &args("--interface eth0 --interface jt* --protect 22/tcp:cut"),
    );
    let (mode, link) = iface_status(&agent, "jt4").expect("jt4 not attached");
    assert_eq!(link, "ip", "jt4 got the {link} program");
    // tun has no native XDP: generic mode, reported as such.
    assert_eq!(mode, "generic");
    assert_eq!(
        iface_status(&agent, "eth0").map(|s| s.1).as_deref(),
        Some("ethernet")
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, VM_IN4, 2),
        "SSH through the tunnel without a grant"
    );

    // A tunnel that appears after the agent started is attached on the link event.
    let tunnel6 = || {
        UdpTunnel::new(
            &end(
                &fleet.ws,
                "jt6",
                &["2001:db8:77::1/64"],
                format!("{WS_V4}:51821"),
            ),
            &end(
                &vm.ns,
                "jt6",
                &["2001:db8:77::10/64"],
                format!("{vm_v4}:51821"),
            ),
        )
        .expect("IPv6 tunnel")
    };
    let t6 = tunnel6();
    assert!(
        wait_until(Duration::from_secs(10), || iface_status(&agent, "jt6")
            .is_some_and(|(_, l)| l == "ip")),
        "jt6 not attached: {}",
        agent.ok(&["status"])
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, VM_IN6, 2),
        "SSH through the late IPv6 tunnel without a grant"
    );

    // A grant for the workstation's inner address opens the tunnel path, and only it.
    grant(&agent, WS_IN4, "20s");
    assert!(
        ssh_runs(&sshd, &fleet.ws, VM_IN4, 5),
        "granted SSH through the tunnel failed"
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, &vm_v4, 2),
        "a grant for the inner address opened the outer path"
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, VM_IN6, 2),
        "a grant for the inner IPv4 address opened the IPv6 tunnel"
    );
    let id6 = grant(&agent, WS_IN6, "5m");
    assert!(
        ssh_runs(&sshd, &fleet.ws, VM_IN6, 5),
        "granted SSH through the IPv6 tunnel failed"
    );
    agent.ok(&["revoke", &id6]);

    // The tunnel goes away and a new device takes its name: the link pinned for the old one
    // is defunct, and the new device gets a link of its own.
    drop(t6);
    let _t6 = tunnel6();
    let id6 = grant(&agent, WS_IN6, "5m");
    assert!(
        ssh_runs(&sshd, &fleet.ws, VM_IN6, 5),
        "granted SSH through the re-created IPv6 tunnel failed"
    );
    agent.ok(&["revoke", &id6]);
    assert!(
        wait_until(Duration::from_secs(10), || !ssh_runs(
            &sshd, &fleet.ws, VM_IN6, 2
        )),
        "the re-created tunnel is not enforced"
    );
    let (log, jt6_attached) = audit_records(&agent, "interface.attached", "jt6");
    assert_eq!(jt6_attached, 2, "{log}");

    // The IPv4 grant's end closes the tunnel path again.
    assert!(
        wait_until(Duration::from_secs(60), || agent.grant_count() == 0),
        "the 20 s grant did not end: {}",
        agent.grants_json()
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, VM_IN4, 2),
        "SSH through the tunnel after the grant ended"
    );
    // The outer path was never opened; a grant for the workstation's outer address opens it.
    assert!(!ssh_runs(&sshd, &fleet.ws, &vm_v4, 2));
    grant(&agent, WS_V4, "5m");
    assert!(
        ssh_runs(&sshd, &fleet.ws, &vm_v4, 5),
        "outer SSH with a grant"
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, VM_IN4, 2),
        "a grant for the outer address opened the tunnel path"
    );
}

/// VXLAN decapsulates to an Ethernet device: the Ethernet program applies there, and SSH over
/// it is governed like any other.
#[test]
fn ssh_through_vxlan_is_governed() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    let (ws, vns, vm_v4) = (&fleet.ws, &vm.ns, vm.v4);
    // The VXLAN devices live in the namespaces, which are deleted with the fleet.
    ips(&format!(
        "-n {ws} link add jx0 type vxlan id 42 local {WS_V4} remote {vm_v4} dstport 4789 dev br0"
    ))
    .unwrap();
    ips(&format!(
        "-n {vns} link add jx0 type vxlan id 42 local {vm_v4} remote {WS_V4} dstport 4789 dev eth0"
    ))
    .unwrap();
    for (ns, addr) in [(ws.as_str(), WS_IN4), (vns.as_str(), VM_IN4)] {
        ips(&format!("-n {ns} link set jx0 mtu 1400 up")).unwrap();
        ips(&format!("-n {ns} addr add {addr}/24 dev jx0")).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || ssh_runs(&sshd, ws, VM_IN4, 2)),
        "no SSH over VXLAN before enforcement"
    );
    let agent = AgentProc::start(
        vns,
        &args("--interface eth0 --interface jx* --protect 22/tcp"),
    );
    assert_eq!(
        iface_status(&agent, "jx0").map(|s| s.1).as_deref(),
        Some("ethernet")
    );
    assert!(
        !ssh_runs(&sshd, ws, VM_IN4, 2),
        "SSH over VXLAN without a grant"
    );
    grant(&agent, WS_IN4, "5m");
    assert!(
        ssh_runs(&sshd, ws, VM_IN4, 5),
        "granted SSH over VXLAN failed"
    );
}

/// A device whose link layer the program cannot parse is refused, not attached with the wrong
/// parser: `interface.attach_failed` once (not at every later link event), and absent from
/// the interfaces `status` reports as enforced. A device whose link type changes after it was
/// attached (tun's TUNSETLINK) loses the program that no longer fits it.
#[test]
fn unknown_link_types_are_refused_once() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let agent = AgentProc::start(
        &vm.ns,
        &args("--interface eth0 --interface jt* --protect 22/tcp"),
    );
    let tun = tun_device(&vm.ns, "jtib").expect("tun");
    assert!(
        wait_until(Duration::from_secs(10), || iface_status(&agent, "jtib")
            .is_some_and(|(_, l)| l == "ip")),
        "jtib not attached: {}",
        agent.ok(&["status"])
    );
    // Now it claims to be InfiniBand (ARPHRD 32): no Ethernet header, no bare IP either.
    set_link_type(&tun, 32).expect("TUNSETLINK");
    let failures = || audit_records(&agent, "interface.attach_failed", "jtib");
    assert!(
        wait_until(Duration::from_secs(10), || failures().1 == 1),
        "no refusal recorded: {}",
        failures().0
    );
    assert!(failures().0.contains("link type 32"), "{}", failures().0);
    assert!(
        wait_until(Duration::from_secs(5), || iface_status(&agent, "jtib")
            .is_none()),
        "jtib still reported as enforced: {}",
        agent.ok(&["status"])
    );
    assert!(
        !agent.pin_dir.join("link_jtib_skb").exists(),
        "the program for the old link type is still pinned"
    );
    // More link events (another device comes and goes): still one record, still refused.
    let other = tun_device(&vm.ns, "jtok").expect("tun");
    assert!(
        wait_until(Duration::from_secs(10), || iface_status(&agent, "jtok")
            .is_some()),
        "jtok not attached: {}",
        agent.ok(&["status"])
    );
    drop(other);
    assert!(wait_until(Duration::from_secs(10), || iface_status(
        &agent, "jtok"
    )
    .is_none()));
    let (log, n) = failures();
    assert_eq!(n, 1, "{log}");
    assert_eq!(iface_status(&agent, "jtib"), None);
}

/// SSH over real WireGuard (Noise handshake, encrypted transport over the outer UDP path):
/// the agent attaches the IP-header program to the WireGuard device; SSH to the VM's inner
/// address is refused until a grant for the workstation's inner address, and refused again
/// once it is revoked. The outer path is not opened by it.
#[test]
fn ssh_through_wireguard_is_governed() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let vm_v4 = vm.v4.to_string();
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    let tag = jitgate_tests::unique("");
    let (ws_dev, vm_dev) = (format!("wgw{tag}"), format!("wgv{tag}"));
    let _wg = WireGuard::new(
        &End {
            ns: &fleet.ws,
            dev: &ws_dev,
            inner: &["203.0.113.1/24", "2001:db8:77::1/64"],
            outer: format!("{WS_V4}:51830").parse().unwrap(),
        },
        &End {
            ns: &vm.ns,
            dev: &vm_dev,
            inner: &["203.0.113.10/24", "2001:db8:77::10/64"],
            outer: format!("{vm_v4}:51830").parse().unwrap(),
        },
    )
    .expect("WireGuard tunnel (wireguard-go and wireguard-tools come from `cargo xtask setup`)");
    // Before enforcement WireGuard carries SSH, so a refusal below is the program's doing.
    assert!(
        wait_until(Duration::from_secs(10), || ssh_runs(
            &sshd, &fleet.ws, VM_IN4, 3
        )),
        "no SSH through WireGuard before enforcement"
    );

    let agent = AgentProc::start(
        &vm.ns,
        &args(&format!(
            "--interface eth0 --interface {vm_dev} --protect 22/tcp:cut"
        )),
    );
    let (_, link) = iface_status(&agent, &vm_dev).expect("the WireGuard device is not attached");
    assert_eq!(link, "ip", "the WireGuard device got the {link} program");
    assert!(
        !ssh_runs(&sshd, &fleet.ws, VM_IN4, 2),
        "SSH through WireGuard without a grant"
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, VM_IN6, 2),
        "SSH through WireGuard (IPv6 inside) without a grant"
    );
    let id = grant(&agent, WS_IN4, "5m");
    assert!(
        ssh_runs(&sshd, &fleet.ws, VM_IN4, 5),
        "granted SSH through WireGuard failed"
    );
    assert!(
        !ssh_runs(&sshd, &fleet.ws, &vm_v4, 2),
        "a grant for the inner address opened the outer path"
    );
    agent.ok(&["revoke", &id]);
    assert!(
        wait_until(Duration::from_secs(5), || !ssh_runs(
            &sshd, &fleet.ws, VM_IN4, 2
        )),
        "SSH through WireGuard after the revoke"
    );
}
