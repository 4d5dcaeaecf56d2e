//! Example events of every type: what `jit notify test SINK` sends, and what the tests render.
//!
//! `written` is put into every field a person or an agent writes (justification, names,
//! reasons, findings, policy changes), so one call shows how a format treats such text.

use time::OffsetDateTime;

use crate::event::{
    AgentInfo, EndReason, Event, EventDetails, EventType, PolicyOperation, PolicyScope, PortInfo,
    Principal, Protocol, RequestInfo, RequestStatus, VmPorts, VmRef,
};

/// The text of a test notification.
pub const TEST_TEXT: &str = "Test notification from jitgate";

/// A one-VM, one-port request (`web1` in `prod`, port 22 from 203.0.113.7, one hour).
pub fn request(id: &str, justification: &str) -> RequestInfo {
    let start =
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    RequestInfo {
        id: id.to_string(),
        requestor: Principal::new("token:alice", Some("Alice".into())),
        justification: justification.to_string(),
        start_time_utc: start,
        status: RequestStatus::PendingApproval,
        virtual_machines: vec![VmPorts {
            id: "web1".into(),
            resource_group: "prod".into(),
            ports: vec![port(start + time::Duration::HOUR)],
        }],
    }
}

fn port(end: OffsetDateTime) -> PortInfo {
    PortInfo {
        number: 22,
        protocol: Protocol::Tcp,
        allowed_source_address_prefixes: vec!["203.0.113.7".into()],
        end_time_utc: Some(end),
        max_connections: None,
    }
}

/// An example of `t` with `written` in every field people write.
pub fn sample(
    t: EventType,
    written: &str,
    now: OffsetDateTime,
    portal: Option<&url::Url>,
) -> Event {
    // Milliseconds, as the JSON carries times.
    let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
    let person = |id: &str| Principal::new(id, Some(written.to_string()));
    let mut req = request("example-1", written);
    req.requestor = person("token:alice");
    req.virtual_machines[0].id = written.to_string();
    let vm = VmRef {
        id: written.to_string(),
        resource_group: "prod".into(),
    };
    let end = now + time::Duration::minutes(10);
    let details = match t {
        EventType::RequestPendingApproval => EventDetails::RequestPendingApproval {
            request: req,
            stage: 1,
            approvers: vec![person("token:bob"), Principal::new("group:sec-leads", None)],
            approvals_needed: 1,
        },
        EventType::RequestApproved => EventDetails::RequestApproved {
            request: RequestInfo {
                status: RequestStatus::Initiated,
                ..req
            },
            approved_by: vec![person("token:bob")],
            emergency: false,
            reasons: vec![written.to_string()],
        },
        EventType::RequestDenied => EventDetails::RequestDenied {
            request: RequestInfo {
                status: RequestStatus::Denied,
                ..req
            },
            denied_by: Some(person("token:bob")),
            reasons: vec![written.to_string()],
        },
        EventType::RequestCancelled => EventDetails::RequestCancelled {
            request: RequestInfo {
                status: RequestStatus::Denied,
                ..req
            },
            cancelled_by: person("token:alice"),
        },
        EventType::RequestApprovalTimedOut => EventDetails::RequestApprovalTimedOut {
            request: RequestInfo {
                status: RequestStatus::Denied,
                ..req
            },
        },
        EventType::AccessApplied => EventDetails::AccessApplied {
            request: RequestInfo {
                status: RequestStatus::Applied,
                ..req
            },
        },
        EventType::AccessEndingSoon => EventDetails::AccessEndingSoon {
            request: RequestInfo {
                status: RequestStatus::Applied,
                ..req
            },
            virtual_machine: vm,
            port: port(end),
        },
        EventType::AccessEnded => EventDetails::AccessEnded {
            request: RequestInfo {
                status: RequestStatus::Revoked,
                ..req
            },
            virtual_machine: vm,
            port: port(now),
            status_reason: EndReason::Expired,
        },
        EventType::AgentOffline => EventDetails::AgentOffline {
            agent: AgentInfo {
                virtual_machine: written.to_string(),
                resource_group: "prod".into(),
                last_seen_utc: Some(now - time::Duration::minutes(2)),
            },
        },
        EventType::AgentBackOnline => EventDetails::AgentBackOnline {
            agent: AgentInfo {
                virtual_machine: written.to_string(),
                resource_group: "prod".into(),
                last_seen_utc: Some(now),
            },
        },
        EventType::ComplianceChanged => EventDetails::ComplianceChanged {
            virtual_machine: vm,
            compliant: false,
            findings: vec![written.to_string()],
        },
        EventType::AccessBreakGlass => EventDetails::AccessBreakGlass {
            virtual_machine: vm,
            ports: vec![port(end)],
            local_user: written.to_string(),
            justification: written.to_string(),
        },
        EventType::PolicyChanged => EventDetails::PolicyChanged {
            scope: PolicyScope {
                resource_group: "prod".into(),
                virtual_machine: Some(written.to_string()),
            },
            operation: PolicyOperation::Update,
            changed_by: person("token:carol"),
            weakens_protection: true,
            changes: vec![written.to_string()],
        },
    };
    Event::new(details, now, portal)
}

/// One example of every type.
pub fn all(written: &str, now: OffsetDateTime, portal: Option<&url::Url>) -> Vec<Event> {
    EventType::ALL
        .into_iter()
        .map(|t| sample(t, written, now, portal))
        .collect()
}
