//! Evaluation of an access request against a VM's effective JIT policy. Pure: no I/O.
//!
//! A request is approved only if, for every port: the port is in the policy with the requested
//! protocol; every requested source prefix lies inside an allowed prefix (a narrower prefix is
//! accepted); the window is no longer than the port's maximum; the connection limit asked for
//! is no more than the port's `maxConnections`; and the end is in the future.
//! A denial records every failed rule of every port, not only the first.

use jitgate_api::duration::format as fmt_duration;
use jitgate_api::time::format as fmt_time;
use jitgate_api::{MaxConnections, OnExpiry, ProtoSel, StatusReason};
use jitgate_common::{Protocol, SourcePrefix};

use crate::approval::rule::Rule;
use crate::policy::Policy;
use crate::request::RequestedPort;

/// A grant an approved port becomes: one per (concrete protocol, prefix).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedGrant {
    pub protocol: Protocol,
    pub prefix: SourcePrefix,
    pub on_expiry: OnExpiry,
    /// The request's limit, else the policy entry's; None: unlimited.
    pub max_connections: Option<MaxConnections>,
}

#[derive(Clone, Debug)]
pub struct PortOutcome {
    /// The protocol the port was evaluated for (the request's, else the policy's).
    pub protocol: ProtoSel,
    /// (reason code, message); empty means approved.
    pub reasons: Vec<(StatusReason, String)>,
    pub grants: Vec<PlannedGrant>,
    /// The distinct approval rules of the policy entries the port touches (empty: approved
    /// by policy alone).
    pub approvals: Vec<Rule>,
    /// The window's length in whole seconds (from its start, or from now).
    pub window_secs: i64,
}

/// Evaluates one requested port of a VM.
pub fn evaluate_port(policy: Option<&Policy>, port: &RequestedPort, now_ms: i64) -> PortOutcome {
    let mut reasons: Vec<(StatusReason, String)> = Vec::new();
    let mut grants = Vec::new();
    let mut approvals: Vec<Rule> = Vec::new();
    let n = port.number;
    // Whole seconds: a window of exactly the maximum plus the request's own transit
    // (sub-second) is still within it.
    let from = port.start_ms.map_or(now_ms, |s| s.max(now_ms));
    let window_secs = (port.end_ms - from).max(0) / 1000;
    if port.end_ms <= now_ms {
        reasons.push((
            StatusReason::EndTimeInPast,
            format!("endTimeUtc {} is not in the future", fmt_time(port.end_ms)),
        ));
    }
    let Some(policy) = policy else {
        reasons.push((
            StatusReason::NoPolicy,
            "the VM has no JIT policy (neither its own nor its resource group's)".into(),
        ));
        return PortOutcome {
            protocol: port.protocol.unwrap_or(ProtoSel::Tcp),
            reasons,
            grants,
            approvals,
            window_secs,
        };
    };
    let entries: Vec<_> = policy.ports.iter().filter(|p| p.number == n).collect();
    if entries.is_empty() {
        reasons.push((
            StatusReason::PortNotInPolicy,
            format!("port {n} is not in the VM's JIT policy"),
        ));
        return PortOutcome {
            protocol: port.protocol.unwrap_or(ProtoSel::Tcp),
            reasons,
            grants,
            approvals,
            window_secs,
        };
    }
    let protocol = match port.protocol {
        Some(p) => p,
        None => entries[0].protocol,
    };
    let mut source_bad: Vec<String> = Vec::new();
    let mut over_max: Option<i64> = None;
    let mut over_connections: Option<MaxConnections> = None;
    for &proto in protocol.expand() {
        // Without an entry for this protocol the port is denied; the source and window are
        // still checked against the port's entry for another protocol, so that the denial
        // lists every reason.
        let exact = policy.entry(n, proto);
        let entry = exact.unwrap_or(entries[0]);
        if let Some(rule) = &entry.approval
            && !approvals.contains(rule)
        {
            approvals.push(rule.clone());
        }
        if exact.is_none()
            && !reasons
                .iter()
                .any(|r| r.0 == StatusReason::ProtocolNotAllowed)
        {
            let allowed: Vec<&str> = entries.iter().map(|e| e.protocol.as_str()).collect();
            reasons.push((
                StatusReason::ProtocolNotAllowed,
                format!(
                    "port {n} is in the policy for {} only, not {}",
                    allowed.join(", "),
                    protocol.as_str()
                ),
            ));
        }
        for pfx in &port.prefixes {
            if !entry.prefixes.iter().any(|a| a.contains(pfx)) {
                let s = pfx.to_string();
                if !source_bad.contains(&s) {
                    source_bad.push(s);
                }
            } else {
                grants.push(PlannedGrant {
                    protocol: proto,
                    prefix: *pfx,
                    on_expiry: entry.on_expiry,
                    max_connections: port.max_connections.or(entry.max_connections),
                });
            }
        }
        if let (Some(asked), Some(max)) = (port.max_connections, entry.max_connections)
            && asked > max
        {
            over_connections = Some(over_connections.map_or(max, |m| m.min(max)));
        }
        if window_secs > entry.max_duration_secs {
            over_max = Some(over_max.map_or(entry.max_duration_secs, |m: i64| {
                m.min(entry.max_duration_secs)
            }));
        }
    }
    if !source_bad.is_empty() {
        reasons.push((
            StatusReason::SourceNotAllowed,
            format!(
                "source {} is not inside the allowed source prefixes of port {n}/{}",
                source_bad.join(", "),
                protocol.as_str()
            ),
        ));
    }
    if let Some(max) = over_max {
        reasons.push((
            StatusReason::DurationExceedsMaximum,
            format!(
                "the window of {} exceeds port {n}'s maximum of {}",
                fmt_duration(window_secs),
                fmt_duration(max)
            ),
        ));
    }
    if let (Some(max), Some(asked)) = (over_connections, port.max_connections) {
        reasons.push((
            StatusReason::ConnectionsExceedMaximum,
            format!("maxConnections {asked} exceeds port {n}'s maximum of {max}"),
        ));
    }
    if !reasons.is_empty() {
        grants.clear();
    }
    PortOutcome {
        protocol,
        reasons,
        grants,
        approvals,
        window_secs,
    }
}
