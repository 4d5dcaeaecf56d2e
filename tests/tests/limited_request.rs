//! A connection-limited request end to end (docs/request-lifecycle.md "Connection limits"):
//! the real `jit-controller` with a policy port limited to one connection, the real
//! `jit-agent` with real XDP in a namespace, `jit request` from the workstation, real TCP:
//! the grant admits exactly one connection and refuses the next; a request above the
//! policy's maximum is refused and opens nothing.

use std::net::SocketAddr;
use std::time::Duration;

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::netns::{tcp_connects_in, tcp_server_in};
use jitgate_tests::{require_root, wait_until};

const PORT: u16 = 2222;

#[test]
fn a_request_limited_to_one_connection_admits_exactly_one() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let ws = Fleet::ns_path(&fleet.ws);
    tcp_server_in(&Fleet::ns_path(&vm.ns), PORT, false).expect("server in the VM");
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-01", vm.v4);
    let set = ctl.jit(
        &fleet.ws,
        &args(
            "policy set --resource-group prod --port 2222/tcp --source 198.51.100.0/24 --max 3h \
             --max-connections 1",
        ),
    );
    assert!(
        set.status.success(),
        "policy set: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    let agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .ok(&["status"])
            .contains("2222/tcp")),
        "the policy did not arrive: {}",
        agent.ok(&["status"])
    );
    let dst = SocketAddr::new(vm.v4, PORT);
    let connects = || tcp_connects_in(&ws, dst, Duration::from_millis(500));
    assert!(!connects(), "open before any request");

    // More than the policy allows: refused, nothing opens.
    let over = ctl.jit(
        &fleet.ws,
        &args("request vm-01 --port 2222 --duration 10m --max-connections 2 -j lab"),
    );
    assert!(!over.status.success());
    let err = String::from_utf8_lossy(&over.stderr);
    assert!(
        err.contains("maxConnections 2 exceeds port 2222's maximum of 1"),
        "{err}"
    );
    assert!(!connects(), "a refused request opened the port");

    // The policy's limit (1), from "My IP", waited for until applied.
    let r = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 2222 --duration 10m -j lab --wait --json"),
    );
    assert_eq!(r["status"], "Applied", "{r}");
    assert_eq!(
        r["virtualMachines"][0]["ports"][0]["maxConnections"], 1,
        "{r}"
    );
    assert!(connects(), "the first connection was refused");
    for _ in 0..3 {
        assert!(!connects(), "a second connection was admitted");
    }
    let grants = agent.grants_json();
    let used = &grants["grants"]["connections"][0];
    assert_eq!(used["limit"], 1, "{grants}");
    assert_eq!(used["admitted"], 1, "{grants}");
}
