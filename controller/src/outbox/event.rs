//! Notification events built from what the controller just wrote (the request as its
//! record shows it), for the transaction that makes the change to insert
//! ([`crate::store::notify::event_rows`]). Pure: no I/O, no sink, no rendering.

use jitgate_api::{
    MaxConnections, PendingStage, PortStatus, ProtoSel, RequestPort, RequestView, RequestVm,
};
use jitgate_notify::event::{
    EndReason, PolicyOperation, PolicyScope, PortInfo, Principal, Protocol, RequestInfo,
    RequestStatus, VmPorts, VmRef,
};
use jitgate_notify::{Event, EventDetails};
use jitgate_proto::message::ReportedGrant;
use time::OffsetDateTime;

use crate::authz::Caller;
use crate::policy_change::Change;

/// The time of `ms` since the epoch (the epoch if out of range).
pub fn time_of(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn time_str(s: &str) -> Option<OffsetDateTime> {
    jitgate_api::time::parse(s).ok().map(time_of)
}

fn protocol(p: ProtoSel) -> Protocol {
    match p {
        ProtoSel::Tcp => Protocol::Tcp,
        ProtoSel::Udp => Protocol::Udp,
        ProtoSel::Any => Protocol::Any,
    }
}

fn status(s: &PortStatus) -> RequestStatus {
    match s {
        PortStatus::PendingApproval => RequestStatus::PendingApproval,
        PortStatus::Applied => RequestStatus::Applied,
        PortStatus::Denied => RequestStatus::Denied,
        PortStatus::Revoked => RequestStatus::Revoked,
        _ => RequestStatus::Initiated,
    }
}

fn port(p: &RequestPort) -> PortInfo {
    let prefixes = match (
        &p.allowed_source_address_prefixes,
        &p.allowed_source_address_prefix,
    ) {
        (Some(list), _) => list.clone(),
        (None, Some(one)) => vec![one.clone()],
        (None, None) => Vec::new(),
    };
    PortInfo {
        number: p.number,
        protocol: protocol(p.protocol),
        allowed_source_address_prefixes: prefixes,
        end_time_utc: time_str(&p.end_time_utc),
        max_connections: p.max_connections,
    }
}

/// A principal by its id (`token:NAME`, `group:NAME`, ...).
pub fn principal(id: &str) -> Principal {
    Principal::new(id, None)
}

/// What an event says of the request `view`, made by `owner` (its principal id).
pub fn request_info(view: &RequestView, owner: &str) -> RequestInfo {
    RequestInfo {
        id: view.id.clone(),
        requestor: Principal::new(owner, Some(view.requestor.clone())),
        justification: view.justification.clone(),
        start_time_utc: time_str(&view.start_time_utc).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        status: status(&view.status),
        virtual_machines: view
            .virtual_machines
            .iter()
            .map(|vm| VmPorts {
                id: vm.id.clone(),
                resource_group: vm.resource_group.clone(),
                ports: vm.ports.iter().map(port).collect(),
            })
            .collect(),
    }
}

fn event(details: EventDetails, now: i64) -> Event {
    // Links are set at delivery, from the configuration of that moment.
    Event::new(details, time_of(now), None)
}

/// `request.pending_approval`: one event per rule stage in `stages` (its approvers).
pub fn pending(view: &RequestView, owner: &str, stages: &[PendingStage], now: i64) -> Vec<Event> {
    stages
        .iter()
        .map(|s| {
            let needed = usize::try_from(s.required)
                .unwrap_or(usize::MAX)
                .saturating_sub(s.approved_by.len());
            event(
                EventDetails::RequestPendingApproval {
                    request: request_info(view, owner),
                    stage: s.stage,
                    approvers: s.approvers.iter().map(|a| principal(a)).collect(),
                    approvals_needed: u32::try_from(needed).unwrap_or(u32::MAX),
                },
                now,
            )
        })
        .collect()
}

/// `request.approved` (by `approved_by`; `emergency` with its reason).
pub fn approved(
    view: &RequestView,
    owner: &str,
    approved_by: Vec<Principal>,
    emergency: bool,
    reasons: Vec<String>,
    now: i64,
) -> Event {
    event(
        EventDetails::RequestApproved {
            request: request_info(view, owner),
            approved_by,
            emergency,
            reasons,
        },
        now,
    )
}

/// `request.denied`: by policy (`by` none, the policy's reasons) or by an approver.
pub fn denied(
    view: &RequestView,
    owner: &str,
    by: Option<Principal>,
    reasons: Vec<String>,
    now: i64,
) -> Event {
    event(
        EventDetails::RequestDenied {
            request: request_info(view, owner),
            denied_by: by,
            reasons,
        },
        now,
    )
}

/// The policy's reasons for a denied request.
pub fn policy_reasons(view: &RequestView) -> Vec<String> {
    view.denial_reasons
        .iter()
        .map(|r| {
            format!(
                "{} port {}: {} ({})",
                r.virtual_machine, r.number, r.message, r.reason
            )
        })
        .collect()
}

pub fn cancelled(view: &RequestView, owner: &str, by: Principal, now: i64) -> Event {
    event(
        EventDetails::RequestCancelled {
            request: request_info(view, owner),
            cancelled_by: by,
        },
        now,
    )
}

pub fn timed_out(view: &RequestView, owner: &str, now: i64) -> Event {
    event(
        EventDetails::RequestApprovalTimedOut {
            request: request_info(view, owner),
        },
        now,
    )
}

pub fn applied(view: &RequestView, owner: &str, now: i64) -> Event {
    event(
        EventDetails::AccessApplied {
            request: request_info(view, owner),
        },
        now,
    )
}

/// One port window of a request as stored: its port, protocol, prefixes and end.
pub struct Window<'a> {
    pub number: u16,
    pub protocol: &'a str,
    /// Canonical prefixes, comma-separated.
    pub prefixes: &'a str,
    pub end_ms: i64,
    pub max_connections: Option<MaxConnections>,
}

impl Window<'_> {
    fn info(&self) -> PortInfo {
        PortInfo {
            number: self.number,
            protocol: self
                .protocol
                .parse::<ProtoSel>()
                .map(protocol)
                .unwrap_or(Protocol::Any),
            allowed_source_address_prefixes: self
                .prefixes
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            end_time_utc: Some(time_of(self.end_ms)),
            max_connections: self.max_connections,
        }
    }
}

fn vm_ref(vm: &str, resource_group: &str) -> VmRef {
    VmRef {
        id: vm.to_string(),
        resource_group: resource_group.to_string(),
    }
}

/// `access.ended`: one port window of the request on `vm` ended for `reason`.
pub fn ended(
    view: &RequestView,
    owner: &str,
    vm: &str,
    resource_group: &str,
    window: Window<'_>,
    reason: EndReason,
    now: i64,
) -> Event {
    event(
        EventDetails::AccessEnded {
            request: request_info(view, owner),
            virtual_machine: vm_ref(vm, resource_group),
            port: window.info(),
            status_reason: reason,
        },
        now,
    )
}

/// `access.ended` for a port of the request as loaded (`vm` holds `port`).
pub fn ended_port(
    view: &RequestView,
    owner: &str,
    vm: &RequestVm,
    p: &RequestPort,
    reason: EndReason,
    now: i64,
) -> Event {
    event(
        EventDetails::AccessEnded {
            request: request_info(view, owner),
            virtual_machine: vm_ref(&vm.id, &vm.resource_group),
            port: port(p),
            status_reason: reason,
        },
        now,
    )
}

/// `access.ending_soon`: one port window of the request on `vm` ends within the lead.
pub fn ending_soon(
    view: &RequestView,
    owner: &str,
    vm: &str,
    resource_group: &str,
    window: Window<'_>,
    now: i64,
) -> Event {
    event(
        EventDetails::AccessEndingSoon {
            request: request_info(view, owner),
            virtual_machine: vm_ref(vm, resource_group),
            port: window.info(),
        },
        now,
    )
}

/// `policy.changed`: the policy of `vm` (None: of the resource group `group`) written or
/// deleted by `caller`, with what changed and whether it weakens protection.
pub fn policy_changed(
    vm: Option<&str>,
    group: &str,
    caller: &Caller,
    operation: PolicyOperation,
    change: Change,
    now: i64,
) -> Event {
    let scope = PolicyScope {
        resource_group: group.to_string(),
        virtual_machine: vm.map(str::to_string),
    };
    event(
        EventDetails::PolicyChanged {
            scope,
            operation,
            changed_by: Principal::new(
                caller.principal_id().to_string(),
                Some(caller.name().to_string()),
            ),
            weakens_protection: change.weakens,
            changes: change.lines,
        },
        now,
    )
}

/// `access.break_glass`: a local grant an agent reported (its requester is the local account
/// the agent recorded; the wire carries no justification).
pub fn break_glass(
    vm: &str,
    resource_group: &str,
    g: &ReportedGrant,
    max_connections: Option<MaxConnections>,
    now: i64,
) -> Event {
    let proto = match g.protocol {
        jitgate_common::Protocol::Tcp => Protocol::Tcp,
        jitgate_common::Protocol::Udp => Protocol::Udp,
    };
    event(
        EventDetails::AccessBreakGlass {
            virtual_machine: vm_ref(vm, resource_group),
            ports: vec![PortInfo {
                number: g.port.get(),
                protocol: proto,
                allowed_source_address_prefixes: vec![g.source.to_string()],
                end_time_utc: Some(time_of(g.end_unix_ms)),
                // Reported by agents at protocol level 12 and later; none from older ones.
                max_connections,
            }],
            local_user: g.requester.clone(),
            justification: String::new(),
        },
        now,
    )
}
