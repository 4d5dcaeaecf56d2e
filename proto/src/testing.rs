//! Examples of messages for the tests of every crate that speaks the protocol (proto's own,
//! the fuzz seeds, the controller's): one definition, so that they say the same thing.
//! Not part of the protocol's API.

use crate::message::{HookKind, HookMode, HookProblem, InterfaceHook, ProgramAhead};

/// A hook report with both problems: on eth0 jitgate runs at tcx ingress behind another
/// tool's XDP program (`xdp_pass`, id 40) and a tcx program (`tc_count`, id 41), position 1
/// of 2; on eth1 its libxdp dispatcher slot was removed.
pub fn example_hooks() -> Vec<InterfaceHook> {
    vec![
        InterfaceHook {
            interface: "eth0".into(),
            hook: HookKind::TcxIngress,
            mode: HookMode::Tcx,
            position: 1,
            programs: 2,
            ahead: vec![
                ProgramAhead {
                    id: 40,
                    name: "xdp_pass".into(),
                    hook: HookKind::Xdp,
                },
                ProgramAhead {
                    id: 41,
                    name: "tc_count".into(),
                    hook: HookKind::TcxIngress,
                },
            ],
            problem: Some(HookProblem::NotFirst),
        },
        InterfaceHook {
            interface: "eth1".into(),
            hook: HookKind::XdpDispatcher,
            mode: HookMode::Driver,
            position: 0,
            programs: 1,
            ahead: vec![],
            problem: Some(HookProblem::Missing {
                reason: "jitgate's slot was removed from the XDP dispatcher".into(),
            }),
        },
    ]
}

/// The status report of a healthy agent with nothing to say: one interface in driver mode,
/// no protected ports, no grants, the agent's clock now (the fleet bench's agents and the
/// controller's keepalive tests send it).
pub fn quiet_status_report() -> crate::message::StatusReport {
    crate::message::StatusReport {
        heartbeat: crate::message::Heartbeat {
            interfaces: vec![("eth0".into(), "driver".into())],
            protected: vec![],
            listening: vec![],
            active_grants: 0,
            audit_head: String::new(),
            audit_seq: 0,
        },
        addresses: vec![],
        problems: vec![],
        agent_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    }
}
