//! A real OpenSSH session through the agent: refused without a grant, a command runs with a
//! local grant, and an open session is closed when its grant is revoked.

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use jitgate_tests::require_root;

#[test]
fn real_ssh_through_the_agent() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    // Before enforcement: ssh works.
    let o = sshd.ssh(&fleet.ws, vm.v4, "echo before", 5).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let agent = AgentProc::start(&vm.ns, &args("--interface eth0 --protect 22/tcp:cut"));
    let o = sshd.ssh(&fleet.ws, vm.v4, "echo refused", 2).unwrap();
    assert!(!o.status.success(), "ssh got in without a grant");
    let id = agent.grant(&args(&format!(
        "--port 22 --source {WS_V4} --duration 5m --justification ssh-test"
    )));
    let o = sshd.ssh(&fleet.ws, vm.v4, "echo hello-from-vm", 5).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello-from-vm");
    // A long-running session, then revoke: it ends at once (reset), not when TCP gives up.
    let mut long = sshd.session(&fleet.ws, vm.v4, "sleep 60").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(long.try_wait().unwrap().is_none(), "session ended early");
    let t0 = std::time::Instant::now();
    agent.ok(&["revoke", &id[0]]);
    let status = loop {
        if let Some(s) = long.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            let _ = long.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        status.is_some_and(|s| !s.success()),
        "revoked SSH session still running"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "revocation took {:?}",
        t0.elapsed()
    );
    assert!(
        !sshd
            .ssh(&fleet.ws, vm.v4, "true", 2)
            .unwrap()
            .status
            .success()
    );
}
