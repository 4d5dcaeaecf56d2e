//! The real `jit-agent` in a namespace: fail-closed lifecycle, exact expiry, keep/cut/revoke
//! with live sessions, overlaps through the CLI, session adoption, bad input, journal repair.

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::netns::Lab;
use jitgate_tests::{require_root, wait_until};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

const CONNECT: Duration = Duration::from_millis(700);

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A lab with one client and an agent protecting 22/tcp (keep) and 2222/tcp (cut).
fn setup() -> (Lab, AgentProc) {
    let lab = Lab::new(1).expect("lab");
    // Dual-stack listeners: IPv4 and IPv6 clients.
    lab.tcp_server(22, true).unwrap();
    lab.tcp_server(2222, true).unwrap();
    lab.tcp_server(8080, true).unwrap();
    let agent = AgentProc::start(
        &lab.vm,
        &args(
            "--interface vm* --protect 22/tcp:keep --protect 2222/tcp:cut --flow-idle-timeout 60s",
        ),
    );
    (lab, agent)
}

/// Writes and reads back through an open session.
fn alive(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1500))).ok();
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && matches!(s.read(&mut buf), Ok(4))
}

#[test]
fn sigkill_keeps_enforcing_and_restart_restores_without_resurrecting() {
    if !require_root() {
        return;
    }
    let (lab, mut agent) = setup();
    let vm = lab.clients[0].vm_v4;
    assert!(
        !lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "22 open before any grant"
    );
    assert!(
        lab.tcp_connects(0, None, at(vm, 8080), CONNECT),
        "unprotected port closed"
    );
    let short = agent.grant(&[
        "--port",
        "22",
        "--source",
        "198.51.100.2",
        "--duration",
        "3s",
        "--justification",
        "kill test",
    ]);
    let long = agent.grant(&args("--port 22 --source 198.51.100.0/24 --duration 1h"));
    assert_eq!((short.len(), long.len()), (1, 1));
    // Crash the agent: enforcement and the grants stay in the kernel.
    agent.kill();
    assert!(
        lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "grant lost when the agent died"
    );
    // Revoke the long one offline? Impossible; instead restart and check both are back.
    agent.restart();
    assert_eq!(
        agent.grant_count(),
        2,
        "grants not restored: {}",
        agent.log_text()
    );
    agent.ok(&["revoke", &long[0]]);
    // The short grant alone: still on, then ends on time with no agent running.
    agent.kill();
    let ended = wait_until(Duration::from_secs(6), || {
        !lab.tcp_connects(0, None, at(vm, 22), Duration::from_millis(300))
    });
    assert!(ended, "grant did not end while the agent was down");
    // A restart after the end does not resurrect it.
    agent.restart();
    assert_eq!(agent.grant_count(), 0, "an ended grant was resurrected");
    assert!(!lab.tcp_connects(0, None, at(vm, 22), CONNECT));
    // The audit chain continued across the crashes and verifies.
    let v = agent.ok(&["audit", "verify"]);
    assert!(v.contains("audit log verifies"), "{v}");
    let audit = agent.ok(&["audit", "--json"]);
    let kinds: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        "agent.started",
        "grant.applied",
        "grant.revoked",
        "grant.expired",
        "connection.admitted",
    ] {
        assert!(kinds.iter().any(|k| k == want), "no {want} in {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| *k == "agent.started").count(), 3);
}

#[test]
fn keep_cut_and_revoke_with_live_sessions() {
    if !require_root() {
        return;
    }
    let (lab, agent) = setup();
    let vm = lab.clients[0].vm_v4;
    agent.grant(&args("--port 22 --source 198.51.100.2 --duration 3s"));
    agent.grant(&args("--port 2222 --source 198.51.100.2 --duration 3s"));
    let mut keep = lab
        .tcp_connect(0, None, at(vm, 22), CONNECT)
        .expect("keep session");
    let mut cut = lab
        .tcp_connect(0, None, at(vm, 2222), CONNECT)
        .expect("cut session");
    assert!(alive(&mut keep) && alive(&mut cut));
    std::thread::sleep(Duration::from_millis(3500));
    // Grants ended. keep: the session goes on. cut: it was closed (reset), not left hanging.
    assert!(alive(&mut keep), "keep session was cut at expiry");
    let closed = wait_until(Duration::from_secs(3), || !alive(&mut cut));
    assert!(closed, "cut session still alive after its grant ended");
    // No new connections on either.
    assert!(!lab.tcp_connects(0, None, at(vm, 22), CONNECT));
    assert!(!lab.tcp_connects(0, None, at(vm, 2222), CONNECT));

    // Revocation closes a session even on a keep port...
    let id = agent.grant(&args("--port 22 --source 198.51.100.2 --duration 1h"));
    let mut s = lab
        .tcp_connect(0, None, at(vm, 22), CONNECT)
        .expect("session");
    assert!(alive(&mut s));
    let out = agent.ok(&["revoke", &id[0]]);
    assert!(out.contains("1 session(s) closed"), "{out}");
    assert!(
        wait_until(Duration::from_secs(2), || !alive(&mut s)),
        "revoked session still alive"
    );
    // ...unless another active grant covers it.
    let a = agent.grant(&args("--port 22 --source 198.51.100.2 --duration 1h"));
    agent.grant(&args("--port 22 --source 198.51.100.0/24 --duration 1h"));
    let mut s = lab
        .tcp_connect(0, None, at(vm, 22), CONNECT)
        .expect("session");
    let out = agent.ok(&["revoke", &a[0]]);
    assert!(out.contains("0 session(s) closed"), "{out}");
    assert!(alive(&mut s), "a session covered by another grant was cut");
    // The earlier keep session is still fine too.
    assert!(alive(&mut keep));
}

#[test]
fn overlapping_grants_through_the_cli() {
    if !require_root() {
        return;
    }
    let (lab, agent) = setup();
    let vm = lab.clients[0].vm_v4;
    agent.grant(&args("--port 22 --source 198.51.100.2/32 --duration 2s"));
    let wide = agent.grant(&args("--port 22 --source 198.51.100.0/24 --duration 1h"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "/24 hidden by the ended /32"
    );
    assert_eq!(agent.grant_count(), 1, "the /32 was not swept");
    agent.ok(&["revoke", &wide[0]]);
    assert!(!lab.tcp_connects(0, None, at(vm, 22), CONNECT));
    // Regression: closing the revoked grant's (already finished) session must never fall
    // back to the listening socket; the service keeps listening (checked over IPv6 below).
    // IPv6 and protocol *: one grant per protocol.
    let ids = agent.grant(&[
        "--port",
        "22/*",
        "--source",
        "2001:db8:1::/64",
        "--until",
        &rfc3339_in(3600),
    ]);
    assert_eq!(ids.len(), 2);
    assert!(lab.tcp_connects(0, None, at(lab.clients[0].vm_v6, 22), CONNECT));
}

fn rfc3339_in(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs);
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    // Seconds precision is enough; format by hand to avoid a date crate here.
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", d.as_secs()),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The installer's SSH-like session, open before the agent first attaches, survives it; a new
/// connection does not get in.
#[test]
fn established_session_survives_first_attach() {
    if !require_root() {
        return;
    }
    let lab = Lab::new(1).unwrap();
    lab.tcp_server(22, false).unwrap();
    let vm = lab.clients[0].vm_v4;
    let mut installer = lab
        .tcp_connect(0, None, at(vm, 22), CONNECT)
        .expect("installer session");
    assert!(alive(&mut installer));
    let agent = AgentProc::start(&lab.vm, &args("--interface vm* --protect 22/tcp:cut"));
    assert!(
        alive(&mut installer),
        "enabling enforcement cut the installer's session"
    );
    assert!(
        !lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "a new connection got in"
    );
    let audit = agent.ok(&["audit"]);
    assert!(audit.contains("session.adopted"), "{audit}");
    assert!(alive(&mut installer));
}

/// Every subcommand rejects bad input with one clear line, a non-zero exit, and no change.
#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let (lab, agent) = setup();
    let _ = &lab;
    agent.grant(&args("--port 22 --source 198.51.100.0/24 --duration 1h"));
    let before = agent.grants_json();
    let past = "2001-01-01T00:00:00Z";
    let cases: &[&[&str]] = &[
        &args("grant --port 22 --source 198.51.100.0/33 --duration 1h"),
        &args("grant --port 22 --source 198.51.100.7/24 --duration 1h"),
        &args("grant --port 22 --source not-an-ip --duration 1h"),
        &args("grant --port 0 --source 198.51.100.0/24 --duration 1h"),
        &args("grant --port 65536 --source 198.51.100.0/24 --duration 1h"),
        &args("grant --port 22/icmp --source 198.51.100.0/24 --duration 1h"),
        &args("grant --port 22 --source 198.51.100.0/24 --duration 0s"),
        &args("grant --port 22 --source 198.51.100.0/24 --duration -5m"),
        &args("grant --port 22 --source 198.51.100.0/24 --duration 25h"),
        &args("grant --port 22 --source 198.51.100.0/24 --duration soon"),
        &[
            "grant",
            "--port",
            "22",
            "--source",
            "198.51.100.0/24",
            "--until",
            past,
        ],
        &args("grant --port 22 --source 198.51.100.0/24 --until tomorrow"),
        &args("grant --port 22 --source 198.51.100.0/24"),
        &[
            "grant",
            "--port",
            "22",
            "--source",
            "198.51.100.0/24",
            "--duration",
            "1h",
            "--until",
            past,
        ],
        &["revoke", "00000000-0000-0000-0000-000000000001"],
        &["revoke", "not-an-id"],
        &["revoke"],
        &["grants", "--bogus"],
        &["status", "extra"],
        &args("audit --tail x"),
        &args("detach --pin-dir /nonexistent"),
        &["frobnicate"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        let o = agent.cli(args);
        let err = String::from_utf8_lossy(&o.stderr);
        let first = err.lines().next().unwrap_or("");
        if o.status.success() || first.is_empty() {
            failures.push(format!("{args:?}: exit {} stderr {err:?}", o.status));
        }
    }
    assert!(
        failures.is_empty(),
        "accepted bad input:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        agent.grants_json(),
        before,
        "bad input changed the grant table"
    );
    // And the agent itself refuses garbage on its socket without dying.
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.write_all(b"{\"grant\": {\"port\": 22}}\n").unwrap();
    let mut resp = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut resp).unwrap();
    assert!(resp.contains("invalid"), "{resp}");
    assert_eq!(agent.grants_json(), before);
}

/// A torn last journal record (crash mid-write) is detected and cut off; no earlier grant is
/// lost.
#[test]
fn torn_journal_record_is_recovered() {
    if !require_root() {
        return;
    }
    let (lab, mut agent) = setup();
    let vm = lab.clients[0].vm_v4;
    agent.grant(&args("--port 22 --source 198.51.100.2 --duration 1h"));
    agent.grant(&args("--port 2222 --source 198.51.100.0/24 --duration 1h"));
    agent.kill();
    let journal = agent.state_dir.join("grants.journal");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    f.write_all(b"0badc0de {\"grant\":{\"id\":\"half-writ")
        .unwrap();
    drop(f);
    agent.restart();
    assert_eq!(agent.grant_count(), 2, "{}", agent.log_text());
    assert!(agent.log_text().contains("grant journal repaired"));
    assert!(lab.tcp_connects(0, None, at(vm, 22), CONNECT));
    assert!(lab.tcp_connects(0, None, at(vm, 2222), CONNECT));
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(!text.contains("half-writ"));
}

/// SIGTERM stops the agent without removing enforcement; `detach` removes it and is audited.
#[test]
fn sigterm_keeps_enforcement_and_detach_removes_it() {
    if !require_root() {
        return;
    }
    let (lab, mut agent) = setup();
    let vm = lab.clients[0].vm_v4;
    agent.stop();
    assert!(
        !lab.tcp_connects(0, None, at(vm, 22), CONNECT),
        "SIGTERM removed enforcement"
    );
    let o = agent.cli(&[
        "detach",
        "--pin-dir",
        agent.pin_dir.to_str().unwrap(),
        "--state-dir",
        agent.state_dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "detach without --yes must refuse");
    assert!(!lab.tcp_connects(0, None, at(vm, 22), CONNECT));
    agent.ok(&[
        "detach",
        "--pin-dir",
        agent.pin_dir.to_str().unwrap(),
        "--state-dir",
        agent.state_dir.to_str().unwrap(),
        "--yes",
    ]);
    assert!(
        wait_until(Duration::from_secs(5), || lab.tcp_connects(
            0,
            None,
            at(vm, 22),
            CONNECT
        )),
        "detach left enforcement"
    );
    let log = std::fs::read_to_string(agent.state_dir.join("audit.log")).unwrap();
    assert!(log.contains("agent.detached"));
    assert!(jitgate_agent::audit::verify(&agent.state_dir, None).is_ok());
}

/// A matching interface that appears after start is attached (netlink link events); the
/// metrics endpoint serves the counters on loopback.
#[test]
fn late_interfaces_are_attached_and_metrics_served() {
    if !require_root() {
        return;
    }
    let lab = Lab::new(1).unwrap();
    let agent = AgentProc::start(
        &lab.vm,
        &args("--interface vm* --protect 22/tcp --metrics 127.0.0.1:19464"),
    );
    jitgate_tests::netns::ip(&[
        "-n", &lab.vm, "link", "add", "vm7", "type", "veth", "peer", "name", "peer7",
    ])
    .unwrap();
    jitgate_tests::netns::ip(&["-n", &lab.vm, "link", "set", "vm7", "up"]).unwrap();
    let attached = wait_until(Duration::from_secs(5), || {
        agent.ok(&["status"]).contains("vm7")
    });
    assert!(attached, "vm7 not attached: {}", agent.ok(&["status"]));
    let status: serde_json::Value = serde_json::from_str(&agent.ok(&["status", "--json"])).unwrap();
    let ifaces = status["status"]["interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ifaces.len(), 2, "{status}");
    // The metrics endpoint lives in the vm namespace, on its loopback.
    let body = jitgate_agent::netns::run_in(&lab.vm_path(), || {
        let mut s = TcpStream::connect("127.0.0.1:19464")?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .unwrap()
    .unwrap();
    assert!(
        body.contains("jitgate_packets_total{reason=\"denied_no_grant\"}"),
        "{body}"
    );
    assert!(body.contains("jitgate_active_grants 0"), "{body}");
}
