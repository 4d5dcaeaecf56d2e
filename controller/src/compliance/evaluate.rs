//! The evaluator: a VM is compliant when every management port listening on it is protected
//! by live JIT enforcement (in its protected set, the program attached on every
//! non-loopback interface with an address, the agent healthy and connected) and the last
//! probe found none of them reachable without a grant.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use jitgate_api::time::{format as fmt_time, now_ms};
use jitgate_api::{
    ComplianceResult as ResourceResult, ComplianceState as State, ErrorCode, Finding, FindingCode,
    HookProblem, InterfaceHook, ResourceKind, ScanReason, ScanSummary,
};
use jitgate_common::{ProtectedPort, Protocol, SourcePrefix};
use jitgate_notify::event::VmRef;
use jitgate_notify::{Event, EventDetails};

use crate::compliance::settings::{MgmtPort, Settings};
use crate::compliance::{Counts, probe, state_of};
use crate::error::{Error, Result};
use crate::presence::Presence;
use crate::store::agents::{self, AgentRecord, Heartbeat, ONLINE_WITHIN_MS};
use crate::store::compliance::{self as db, Exposure, VmRow};
use crate::store::db::Db;
use crate::store::{grants, inventory};

fn finding(code: FindingCode, reason: impl Into<String>) -> Finding {
    Finding {
        code,
        port: None,
        interface: None,
        address: None,
        reason: reason.into(),
    }
}

/// Judges one VM from its agent's last report and the probe's exposures.
pub fn evaluate_vm(
    s: &Settings,
    presence: &Presence,
    vm: &VmRow,
    agent: Option<&AgentRecord>,
    exposures: &[Exposure],
    now: i64,
) -> ResourceResult {
    let mut f = Vec::new();
    match agent {
        None => f.push(finding(FindingCode::NoAgent,
            "no agent is enrolled on this VM: nothing reports its listening ports or enforcement",
        )),
        Some(a) if !presence.online(&a.id, a.last_seen_ms, now) && a.last_seen_ms.is_none_or(|l| now - l > s.offline_grace_ms) => {
            f.push(finding(FindingCode::AgentOffline,
                match a.last_seen_ms {
                    Some(l) => format!(
                        "the agent has been offline since {} (longer than the {} s grace period): enforcement cannot be confirmed",
                        fmt_time(l),
                        s.offline_grace_ms / 1000
                    ),
                    None => "the agent enrolled but never connected".into(),
                },
            ));
        }
        Some(a) => match &a.heartbeat {
            None => f.push(finding(FindingCode::NoStatusReport, "the agent has not reported its status yet")),
            Some(hb) if !hb.status_reported => f.push(finding(FindingCode::NoStatusReport,
                "the agent's heartbeat carries no enforcement state (agent older than this controller)",
            )),
            Some(hb) => {
                let stale = hb.received_ms.filter(|r| now - r > ONLINE_WITHIN_MS);
                if let Some(r) = stale {
                    // This arm also holds an agent offline within the grace period: say which.
                    let why = match a.last_seen_ms {
                        Some(l) if !presence.online(&a.id, a.last_seen_ms, now) => format!(
                            "the agent is offline since {} (within the {} s grace period) and enforcement cannot be confirmed",
                            fmt_time(l),
                            s.offline_grace_ms / 1000
                        ),
                        _ => "the agent is connected but enforcement cannot be confirmed".into(),
                    };
                    f.push(finding(FindingCode::StaleStatusReport,
                        format!("no status report since {}: {why}", fmt_time(r)),
                    ));
                }
                for p in &hb.problems {
                    f.push(finding(FindingCode::ProgramUnhealthy, p.clone()));
                }
                // Level 7 agents report their place per interface typed (and leave it out
                // of `problems`): one finding per interface where it is wrong. A hook report
                // comes with each status report: once that is stale, so is the hook report,
                // and the stale report is what is known (its finding above), not where the
                // program ran then.
                if stale.is_none() {
                    f.extend(a.hooks.iter().filter_map(hook_finding));
                }
                if hb.interfaces.is_empty() {
                    f.push(finding(FindingCode::EnforcementDetached,
                        "the JIT program is attached to no interface",
                    ));
                }
                for u in &hb.unattached {
                    let mut x = finding(FindingCode::InterfaceUnprotected,
                        format!(
                            "{} has an address ({}) and the JIT program is not attached to it",
                            u.interface,
                            u.addresses.join(", ")
                        ),
                    );
                    x.interface = Some(u.interface.clone());
                    x.address = u.addresses.first().cloned();
                    f.push(x);
                }
                let protected: Vec<ProtectedPort> = hb
                    .protected_ports
                    .iter()
                    .filter_map(|p| ProtectedPort::from_str(p).ok())
                    .collect();
                let mut seen = Vec::new();
                for sock in &hb.listening_sockets {
                    let Ok(proto) = Protocol::from_str(&sock.protocol) else {
                        continue;
                    };
                    if !s.is_mgmt(proto, sock.port)
                        || protected
                            .iter()
                            .any(|p| p.protocol == proto && p.port.get() == sock.port)
                    {
                        continue;
                    }
                    let key = (proto, sock.port, sock.address.clone());
                    if seen.contains(&key) {
                        continue;
                    }
                    seen.push(key);
                    let label = MgmtPort {
                        protocol: proto,
                        port: match jitgate_common::Port::new(sock.port) {
                            Some(p) => p,
                            None => continue,
                        },
                    }
                    .label();
                    let interface = interface_of(&sock.address, hb);
                    let mut x = finding(FindingCode::ListeningUnprotected,
                        format!(
                            "{label} listens on {} and is not in the agent's protected set",
                            sock.address
                        ),
                    );
                    x.port = Some(label);
                    x.interface = Some(interface);
                    x.address = Some(sock.address.clone());
                    f.push(x);
                }
            }
        },
    }
    for e in exposures.iter().filter(|e| e.vm == vm.name) {
        let mut x = finding(
            FindingCode::ReachableWithoutJit,
            format!(
                "{}:{} accepted a TCP connection from the controller, which holds no active grant",
                e.address, e.port
            ),
        );
        x.port = Some(format!("{}/TCP", e.port));
        x.address = Some(e.address.clone());
        f.push(x);
    }
    ResourceResult {
        resource: vm.name.clone(),
        kind: ResourceKind::VirtualMachine,
        resource_group: vm.group.clone(),
        owner: vm.owner.clone(),
        state: state_of(&f),
        findings: f,
    }
}

/// The finding for an interface where another program runs ahead of jitgate, or where
/// jitgate's program is missing (none: it runs first there).
fn hook_finding(h: &InterfaceHook) -> Option<Finding> {
    let code = match h.problem.as_ref()? {
        HookProblem::NotFirst => FindingCode::ProgramNotFirst,
        HookProblem::Missing => FindingCode::ProgramMissing,
        HookProblem::Other(_) => FindingCode::ProgramUnhealthy,
    };
    let mut x = finding(code, h.problem_words()?);
    x.interface = Some(h.interface.clone());
    Some(x)
}

/// `*` for a wildcard bind (every interface), else the interface holding the address when
/// the agent reported it, else the address itself.
fn interface_of(address: &str, hb: &Heartbeat) -> String {
    if address == "0.0.0.0" || address == "::" {
        return "*".into();
    }
    for u in &hb.unattached {
        if u.addresses.iter().any(|a| a == address) {
            return u.interface.clone();
        }
    }
    // Attached interfaces are shown as "name (mode)"; with one, the address is on it.
    match hb.interfaces.as_slice() {
        [one] => one.split(' ').next().unwrap_or(one).to_string(),
        _ => address.to_string(),
    }
}

/// An unmanaged host: answers on management ports, registered nowhere.
fn unmanaged(address: &str, ports: &[u16]) -> ResourceResult {
    ResourceResult {
        resource: address.into(),
        kind: ResourceKind::UnmanagedHost,
        resource_group: String::new(),
        owner: String::new(),
        state: State::NonCompliant,
        findings: ports
            .iter()
            .map(|p| Finding {
                code: FindingCode::Unmanaged,
                port: Some(format!("{p}/TCP")),
                interface: None,
                address: Some(address.into()),
                reason: format!(
                    "{address}:{p} accepts connections and the host is not registered with the controller"
                ),
            })
            .collect(),
    }
}

/// Runs the probe: registered addresses of covered VMs plus the configured ranges (or
/// `range`, which must lie inside them). Stores and returns what was open without a grant.
pub async fn probe_fleet(
    db: &Db,
    s: &Settings,
    vms: &[VmRow],
    range: Option<SourcePrefix>,
) -> Result<(Vec<Exposure>, probe::Outcome)> {
    let ranges: Vec<SourcePrefix> = match range {
        Some(r) => vec![r],
        None => s.ranges.clone(),
    };
    let mut targets: Vec<IpAddr> = probe::expand(&ranges, s.probe.max_addresses)
        .map_err(|e| Error::refused(ErrorCode::InvalidRange, e))?;
    let mut registered: HashMap<IpAddr, String> = HashMap::new();
    for v in inventory::vms(db.pool()).await? {
        for a in &v.addresses.0 {
            if let Ok(ip) = a.parse::<IpAddr>() {
                registered.insert(jitgate_common::net::normalise(ip), v.name.clone());
            }
        }
    }
    for v in vms {
        for a in &v.addresses.0 {
            if let Ok(ip) = a.parse::<IpAddr>() {
                targets.push(jitgate_common::net::normalise(ip));
            }
        }
    }
    targets.sort();
    targets.dedup();
    if targets.len() > s.probe.max_addresses {
        return Err(Error::refused(
            ErrorCode::InvalidRange,
            format!(
                "the probe would cover {} addresses; the limit is {}",
                targets.len(),
                s.probe.max_addresses
            ),
        ));
    }
    let out = probe::run(&targets, &s.tcp_ports(), &s.probe).await;
    let now = now_ms();
    let mut found = Vec::new();
    for o in &out.open {
        let addr = jitgate_common::net::normalise(o.target.ip());
        let port = o.target.port();
        let vm = registered.get(&addr).cloned().unwrap_or_default();
        if !vm.is_empty() {
            let granted = grants::active_tcp_prefixes(db.pool(), &vm, port, now)
                .await?
                .iter()
                .filter_map(|p| p.parse::<SourcePrefix>().ok())
                .any(|p| p.contains_addr(o.local));
            if granted {
                tracing::info!(%addr, port, %vm, "probe: open under an active grant for the controller");
                continue;
            }
        }
        found.push(Exposure {
            address: addr.to_string(),
            port,
            vm,
        });
    }
    let mut w = db.begin().await?;
    db::replace_exposures(&mut w, &found).await?;
    w.commit().await?;
    Ok((found, out))
}

/// One evaluation: optionally probes first, judges every VM covered by an assignment (VMs
/// added to an assigned group later included), lists unmanaged hosts, stores the results
/// with a timestamp.
/// `compliance.changed` for each VM that became non-compliant (from any other state, or new
/// since the previous evaluation) or compliant again (from non-compliant). The first
/// evaluation tells nothing: there is nothing it changed from.
fn changed(previous: &[ResourceResult], now: &[ResourceResult], at: i64) -> Vec<Event> {
    let vm = |r: &&ResourceResult| r.kind == ResourceKind::VirtualMachine;
    let before: HashMap<&str, &State> = previous
        .iter()
        .filter(vm)
        .map(|r| (r.resource.as_str(), &r.state))
        .collect();
    now.iter()
        .filter(vm)
        .filter_map(|r| {
            let was = before.get(r.resource.as_str()).copied();
            let compliant = match (&r.state, was) {
                (State::NonCompliant, Some(State::NonCompliant)) => None,
                (State::NonCompliant, _) => Some(false),
                (State::Compliant, Some(State::NonCompliant)) => Some(true),
                _ => None,
            }?;
            let findings = r
                .findings
                .iter()
                .map(|f| match &f.port {
                    Some(p) => format!("{p}: {}", f.reason),
                    None => f.reason.clone(),
                })
                .collect();
            Some(Event::new(
                EventDetails::ComplianceChanged {
                    virtual_machine: VmRef {
                        id: r.resource.clone(),
                        resource_group: r.resource_group.clone(),
                    },
                    compliant,
                    findings: if compliant { Vec::new() } else { findings },
                },
                crate::outbox::event::time_of(at),
                None,
            ))
        })
        .collect()
}

pub async fn run_scan(
    db: &Db,
    presence: &Presence,
    s: &Settings,
    reason: ScanReason,
    probe: bool,
    range: Option<SourcePrefix>,
) -> Result<ScanSummary> {
    let scopes: Vec<jitgate_api::Scope> = db::assignments(db.pool())
        .await?
        .into_iter()
        .map(|a| a.scope)
        .collect();
    let vms: Vec<VmRow> = db::vms(db.pool())
        .await?
        .into_iter()
        .filter(|v| scopes.iter().any(|s| s.covers_vm(&v.name, &v.group)))
        .collect();
    let exposures = if probe {
        probe_fleet(db, s, &vms, range).await?.0
    } else {
        db::exposures(db.pool()).await?
    };
    let agents = agents::active_by_vm(db.pool()).await?;
    let now = now_ms();
    let mut results: Vec<ResourceResult> = vms
        .iter()
        .map(|v| evaluate_vm(s, presence, v, agents.get(&v.name), &exposures, now))
        .collect();
    let mut hosts: std::collections::BTreeMap<&str, Vec<u16>> = Default::default();
    for e in exposures.iter().filter(|e| e.vm.is_empty()) {
        hosts.entry(&e.address).or_default().push(e.port);
    }
    for (a, ports) in hosts {
        results.push(unmanaged(a, &ports));
    }
    let c = Counts::of(&results);
    let mut w = db.begin().await?;
    let previous = match db::scan_at(w.conn(), None).await? {
        Some(p) => Some(db::results(w.conn(), p.scan_id).await?),
        None => None,
    };
    if let Some(previous) = previous {
        let events = changed(&previous, &results, w.now);
        crate::store::notify::insert_events(&mut w, &events).await?;
    }
    let id = db::insert_scan(
        &mut w,
        &reason,
        probe,
        [c.compliant, c.non_compliant, c.unknown, c.unmanaged],
        &results,
    )
    .await?;
    let time = w.now;
    w.commit().await?;
    let sum = ScanSummary {
        scan_id: id,
        time_utc: fmt_time(time),
        reason,
        probed: probe,
        compliant: c.compliant,
        non_compliant: c.non_compliant,
        unknown: c.unknown,
        unmanaged: c.unmanaged,
        compliance_percentage: ScanSummary::percentage(c.compliant, c.non_compliant),
    };
    tracing::info!(
        scan = sum.scan_id,
        reason = %sum.reason,
        probed = probe,
        compliant = sum.compliant,
        non_compliant = sum.non_compliant,
        unknown = sum.unknown,
        unmanaged = sum.unmanaged,
        "compliance evaluated"
    );
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::settings::ComplianceConfig;
    use crate::store::agents::{Heartbeat as HeartbeatJson, SocketJson, UnattachedJson};
    use crate::store::db::Json;

    fn settings() -> Settings {
        Settings::from_config(&ComplianceConfig::default()).unwrap()
    }

    fn result(vm: &str, state: State) -> ResourceResult {
        ResourceResult {
            resource: vm.into(),
            kind: ResourceKind::VirtualMachine,
            resource_group: "prod".into(),
            owner: "ops@example.com".into(),
            state,
            findings: Vec::new(),
        }
    }

    #[test]
    fn compliance_changes_are_told_only_when_a_vm_flips() {
        let before = vec![
            result("a", State::Compliant),
            result("b", State::NonCompliant),
            result("c", State::Unknown),
            result("d", State::NonCompliant),
        ];
        let after = vec![
            result("a", State::NonCompliant),
            result("b", State::Compliant),
            result("c", State::Compliant),
            result("d", State::NonCompliant),
            result("e", State::NonCompliant),
        ];
        let told: Vec<(String, bool)> = changed(&before, &after, 0)
            .into_iter()
            .map(|e| match e.details {
                EventDetails::ComplianceChanged {
                    virtual_machine,
                    compliant,
                    ..
                } => (virtual_machine.id, compliant),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            told,
            [
                ("a".to_string(), false),
                ("b".to_string(), true),
                ("e".to_string(), false)
            ]
        );
        assert!(changed(&after, &after, 0).is_empty());
    }

    fn vm() -> VmRow {
        VmRow {
            name: "vm-1".into(),
            group: "prod".into(),
            owner: "ops@example.net".into(),
            addresses: Json(vec!["198.51.100.10".into()]),
        }
    }

    fn hb(protected: &[&str], listening: &[(&str, &str, u16)]) -> HeartbeatJson {
        HeartbeatJson {
            interfaces: vec!["eth0 (generic)".into()],
            protected_ports: protected.iter().map(|s| s.to_string()).collect(),
            status_reported: true,
            listening_sockets: listening
                .iter()
                .map(|(p, a, n)| SocketJson {
                    protocol: p.to_string(),
                    address: a.to_string(),
                    port: *n,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn rec(h: HeartbeatJson, last_seen: i64) -> AgentRecord {
        AgentRecord {
            id: "a".into(),
            last_seen_ms: Some(last_seen),
            heartbeat: Some(h),
            hooks: Vec::new(),
        }
    }

    #[test]
    fn each_case_gives_its_finding() {
        let s = settings();
        let now = 10_000_000;
        // Protected and listening: compliant. A non-management port does not count.
        let ok = rec(
            hb(
                &["22/tcp:keep"],
                &[("TCP", "0.0.0.0", 22), ("TCP", "0.0.0.0", 8080)],
            ),
            now,
        );
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&ok), &[], now);
        assert_eq!(r.state, State::Compliant, "{r:?}");
        // Listening unprotected.
        let bad = rec(hb(&[], &[("TCP", "::", 22)]), now);
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&bad), &[], now);
        assert_eq!(r.state, State::NonCompliant);
        assert_eq!(r.findings[0].code, FindingCode::ListeningUnprotected);
        assert_eq!(r.findings[0].port.as_deref(), Some("22/TCP"));
        assert_eq!(r.findings[0].interface.as_deref(), Some("*"));
        // Detached and an unattached interface.
        let mut h = hb(&["22/tcp:keep"], &[]);
        h.interfaces.clear();
        h.unattached = vec![UnattachedJson {
            interface: "eth1".into(),
            addresses: vec!["203.0.113.5".into()],
        }];
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&rec(h, now)), &[], now);
        let codes: Vec<&str> = r.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["EnforcementDetached", "InterfaceUnprotected"]);
        // Offline beyond the grace period (this process serves no agents: last_seen rules).
        let r = evaluate_vm(
            &s,
            &Presence::new(),
            &vm(),
            Some(&ok),
            &[],
            now + s.offline_grace_ms + 60_000,
        );
        assert_eq!(r.findings[0].code, FindingCode::AgentOffline);
        // The probe's word beats the agent's.
        let e = Exposure {
            address: "198.51.100.10".into(),
            port: 22,
            vm: "vm-1".into(),
        };
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&ok), &[e], now);
        assert_eq!(r.state, State::NonCompliant);
        assert_eq!(r.findings[0].code, FindingCode::ReachableWithoutJit);
        // Connected (recent last_seen) but no status report for minutes: not confirmed.
        let mut stale = ok.clone();
        if let Some(h) = stale.heartbeat.as_mut() {
            h.received_ms = Some(now - 120_000);
        }
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&stale), &[], now);
        assert_eq!(r.state, State::NonCompliant);
        assert_eq!(r.findings[0].code, FindingCode::StaleStatusReport);
        assert!(
            r.findings[0].reason.contains("the agent is connected"),
            "{}",
            r.findings[0].reason
        );
        // Offline, within the grace period: the same finding, and it says offline.
        stale.last_seen_ms = Some(now - 120_000);
        assert!(120_000 < s.offline_grace_ms);
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&stale), &[], now);
        assert_eq!(r.findings[0].code, FindingCode::StaleStatusReport);
        let reason = &r.findings[0].reason;
        assert!(reason.contains("the agent is offline since"), "{reason}");
        assert!(reason.contains("within the"), "{reason}");
        assert!(!reason.contains("connected"), "{reason}");
        // No agent: unknown.
        let r = evaluate_vm(&s, &Presence::new(), &vm(), None, &[], now);
        assert_eq!(r.state, State::Unknown);
    }

    #[test]
    fn a_program_ahead_or_a_missing_slot_is_a_finding_per_interface() {
        use jitgate_api::{HookKind, HookMode, ProgramAhead};
        let s = settings();
        let now = 10_000_000;
        let first = InterfaceHook {
            interface: "eth0".into(),
            hook: HookKind::XdpDispatcher,
            mode: HookMode::Driver,
            position: 0,
            programs: 2,
            ahead: vec![],
            problem: None,
            problem_reason: None,
        };
        let mut a = rec(hb(&["22/tcp:keep"], &[("TCP", "0.0.0.0", 22)]), now);
        a.hooks = vec![first.clone()];
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&a), &[], now);
        assert_eq!(r.state, State::Compliant, "{r:?}");
        a.hooks = vec![
            InterfaceHook {
                interface: "eth1".into(),
                hook: HookKind::TcxIngress,
                mode: HookMode::Tcx,
                position: 0,
                programs: 1,
                ahead: vec![ProgramAhead {
                    id: 41,
                    name: "xdp_pass".into(),
                    hook: HookKind::Xdp,
                }],
                problem: Some(HookProblem::NotFirst),
                problem_reason: None,
            },
            first.clone(),
            InterfaceHook {
                interface: "eth2".into(),
                problem: Some(HookProblem::Missing),
                problem_reason: Some("jitgate's slot was removed from the XDP dispatcher".into()),
                ..first
            },
        ];
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&a), &[], now);
        assert_eq!(r.state, State::NonCompliant);
        let got: Vec<(&str, Option<&str>)> = r
            .findings
            .iter()
            .map(|f| (f.code.as_str(), f.interface.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("ProgramNotFirst", Some("eth1")),
                ("ProgramMissing", Some("eth2"))
            ]
        );
        assert!(
            r.findings[0].reason.contains("xdp_pass (id 41, xdp)"),
            "{}",
            r.findings[0].reason
        );
        assert!(
            r.findings[1].reason.contains("slot was removed"),
            "{}",
            r.findings[1].reason
        );
        // The status report (and with it the hook report) goes stale: what is known is that
        // it is stale, not where the program ran then.
        let mut stale = a.clone();
        if let Some(h) = stale.heartbeat.as_mut() {
            h.received_ms = Some(now - ONLINE_WITHIN_MS - 1);
        }
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&stale), &[], now);
        let codes: Vec<&str> = r.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["StaleStatusReport"], "{r:?}");
        // Offline beyond the grace period: only that.
        let r = evaluate_vm(
            &s,
            &Presence::new(),
            &vm(),
            Some(&a),
            &[],
            now + s.offline_grace_ms + 1,
        );
        let codes: Vec<&str> = r.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["AgentOffline"], "{r:?}");
        // Fresh again (at the limit): the findings come back.
        if let Some(h) = stale.heartbeat.as_mut() {
            h.received_ms = Some(now - ONLINE_WITHIN_MS);
        }
        let r = evaluate_vm(&s, &Presence::new(), &vm(), Some(&stale), &[], now);
        let codes: Vec<&str> = r.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["ProgramNotFirst", "ProgramMissing"], "{r:?}");
    }
}
