//! Notification events: what happened, when, and what it is about.
//!
//! One [`Event`] is one fact worth telling people (a request waits for approval, access ends
//! soon, an agent went offline, ...). Its JSON (camelCase, Azure's names where they exist) is
//! the body of a `webhook` delivery and the row stored in the controller's outbox; every other
//! format is rendered from it. Each event type carries exactly the fields that describe it
//! ([`EventDetails`]), so a receiver can rely on `request` being present on `request.*`.

use std::fmt;
use std::str::FromStr;

use jitgate_api::MaxConnections;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

/// The stable identity of one event: the `Jitgate-Delivery` header, so receivers de-duplicate
/// redeliveries (delivery is at least once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        EventId(Uuid::new_v4())
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EventId {
    type Err = EventTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(EventId)
            .map_err(|_| EventTypeError::BadId(s.chars().take(64).collect()))
    }
}

/// The kinds of event, as sinks subscribe to them (`--events request.pending_approval,...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    RequestPendingApproval,
    RequestApproved,
    RequestDenied,
    RequestCancelled,
    RequestApprovalTimedOut,
    AccessApplied,
    AccessEndingSoon,
    AccessEnded,
    AgentOffline,
    AgentBackOnline,
    ComplianceChanged,
    AccessBreakGlass,
    PolicyChanged,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::RequestPendingApproval,
        EventType::RequestApproved,
        EventType::RequestDenied,
        EventType::RequestCancelled,
        EventType::RequestApprovalTimedOut,
        EventType::AccessApplied,
        EventType::AccessEndingSoon,
        EventType::AccessEnded,
        EventType::AgentOffline,
        EventType::AgentBackOnline,
        EventType::ComplianceChanged,
        EventType::AccessBreakGlass,
        EventType::PolicyChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RequestPendingApproval => "request.pending_approval",
            EventType::RequestApproved => "request.approved",
            EventType::RequestDenied => "request.denied",
            EventType::RequestCancelled => "request.cancelled",
            EventType::RequestApprovalTimedOut => "request.approval_timed_out",
            EventType::AccessApplied => "access.applied",
            EventType::AccessEndingSoon => "access.ending_soon",
            EventType::AccessEnded => "access.ended",
            EventType::AgentOffline => "agent.offline",
            EventType::AgentBackOnline => "agent.back_online",
            EventType::ComplianceChanged => "compliance.changed",
            EventType::AccessBreakGlass => "access.break_glass",
            EventType::PolicyChanged => "policy.changed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTypeError {
    #[error("unknown event type {0:?}; known types: {known}", known = known_types())]
    Unknown(String),
    #[error("event id {0:?} is not a UUID")]
    BadId(String),
}

fn known_types() -> String {
    EventType::ALL.map(EventType::as_str).join(", ")
}

impl FromStr for EventType {
    type Err = EventTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| EventTypeError::Unknown(s.chars().take(64).collect()))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One notification event. Serialized flat: `id`, `timeUtc`, `type`, the type's own fields,
/// `links`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: EventId,
    #[serde(with = "utc")]
    pub time_utc: OffsetDateTime,
    #[serde(flatten)]
    pub details: EventDetails,
    pub links: Links,
}

impl Event {
    /// A new event with a fresh id; the links point at its request (or the fleet view) and
    /// name the CLI command that acts on it. The time is kept to the millisecond, as the JSON
    /// carries it.
    pub fn new(details: EventDetails, time_utc: OffsetDateTime, portal: Option<&url::Url>) -> Self {
        let links = Links::for_details(&details, portal);
        let time_utc = time_utc
            .replace_millisecond(time_utc.millisecond())
            .unwrap_or(time_utc);
        Event {
            id: EventId::new(),
            time_utc,
            details,
            links,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.details.event_type()
    }

    /// The request this event is about, if any: the ordering domain of deliveries.
    pub fn request(&self) -> Option<&RequestInfo> {
        self.details.request()
    }

    /// The key that orders deliveries to one sink: events with the same key are delivered in
    /// the order they were written (the request id, or the VM for agent/compliance/policy
    /// events).
    pub fn order_key(&self) -> String {
        match &self.details {
            EventDetails::AgentOffline { agent } | EventDetails::AgentBackOnline { agent } => {
                format!("vm:{}/{}", agent.resource_group, agent.virtual_machine)
            }
            EventDetails::ComplianceChanged {
                virtual_machine, ..
            }
            | EventDetails::AccessBreakGlass {
                virtual_machine, ..
            } => format!(
                "vm:{}/{}",
                virtual_machine.resource_group, virtual_machine.id
            ),
            EventDetails::PolicyChanged { scope, .. } => match &scope.virtual_machine {
                Some(vm) => format!("policy:{}/{vm}", scope.resource_group),
                None => format!("policy:{}", scope.resource_group),
            },
            other => match other.request() {
                Some(r) => format!("request:{}", r.id),
                None => format!("event:{}", self.id),
            },
        }
    }

    /// Every (resource group, VM) the event concerns; a VM of `None` means the whole
    /// resource group (a policy on a group). Sink scopes are matched against these.
    pub fn resources(&self) -> Vec<(&str, Option<&str>)> {
        match &self.details {
            EventDetails::AgentOffline { agent } | EventDetails::AgentBackOnline { agent } => {
                vec![(
                    agent.resource_group.as_str(),
                    Some(agent.virtual_machine.as_str()),
                )]
            }
            EventDetails::ComplianceChanged {
                virtual_machine, ..
            }
            | EventDetails::AccessBreakGlass {
                virtual_machine, ..
            } => vec![(
                virtual_machine.resource_group.as_str(),
                Some(virtual_machine.id.as_str()),
            )],
            EventDetails::PolicyChanged { scope, .. } => {
                vec![(
                    scope.resource_group.as_str(),
                    scope.virtual_machine.as_deref(),
                )]
            }
            other => other
                .request()
                .map(|r| {
                    r.virtual_machines
                        .iter()
                        .map(|vm| (vm.resource_group.as_str(), Some(vm.id.as_str())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The groups this event is addressed to (`group:NAME` among the approvers a pending
    /// request waits for): sinks created `--to-group NAME` receive only such events.
    pub fn audience_groups(&self) -> Vec<&str> {
        match &self.details {
            EventDetails::RequestPendingApproval { approvers, .. } => approvers
                .iter()
                .filter_map(|p| p.id.strip_prefix("group:"))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The people to reach by email when their identity carries an address: the approvers
    /// a pending request waits for (not groups: those are reached through `--to-group`
    /// sinks), and the requester of every later step of their request.
    pub fn people(&self) -> Vec<&Principal> {
        let mut out: Vec<&Principal> = match &self.details {
            EventDetails::RequestPendingApproval { approvers, .. } => approvers
                .iter()
                .filter(|p| !p.id.starts_with("group:"))
                .collect(),
            other => other.request().map(|r| &r.requestor).into_iter().collect(),
        };
        let mut seen = std::collections::HashSet::new();
        out.retain(|p| seen.insert(p.id.as_str()));
        out
    }
}

/// What each event type is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventDetails {
    /// A request waits for the approvers of its current stage.
    #[serde(rename = "request.pending_approval", rename_all = "camelCase")]
    RequestPendingApproval {
        request: RequestInfo,
        /// 1-based stage number.
        stage: u32,
        /// Who may approve this stage: principals and `group:NAME` entries.
        approvers: Vec<Principal>,
        /// How many distinct approvals the stage still needs.
        approvals_needed: u32,
    },
    #[serde(rename = "request.approved", rename_all = "camelCase")]
    RequestApproved {
        request: RequestInfo,
        approved_by: Vec<Principal>,
        /// An admin's emergency approval (with its reason in `reasons`).
        emergency: bool,
        #[serde(default)]
        reasons: Vec<String>,
    },
    /// Denied by policy (`deniedBy` absent) or by an approver, with the reasons.
    #[serde(rename = "request.denied", rename_all = "camelCase")]
    RequestDenied {
        request: RequestInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        denied_by: Option<Principal>,
        reasons: Vec<String>,
    },
    #[serde(rename = "request.cancelled", rename_all = "camelCase")]
    RequestCancelled {
        request: RequestInfo,
        cancelled_by: Principal,
    },
    #[serde(rename = "request.approval_timed_out", rename_all = "camelCase")]
    RequestApprovalTimedOut { request: RequestInfo },
    /// The agents opened the request's ports.
    #[serde(rename = "access.applied", rename_all = "camelCase")]
    AccessApplied { request: RequestInfo },
    /// One port window ends within the configured lead (sent once per window).
    #[serde(rename = "access.ending_soon", rename_all = "camelCase")]
    AccessEndingSoon {
        request: RequestInfo,
        virtual_machine: VmRef,
        port: PortInfo,
    },
    /// One port window ended (expired or revoked, with Azure's `statusReason`).
    #[serde(rename = "access.ended", rename_all = "camelCase")]
    AccessEnded {
        request: RequestInfo,
        virtual_machine: VmRef,
        port: PortInfo,
        status_reason: EndReason,
    },
    #[serde(rename = "agent.offline", rename_all = "camelCase")]
    AgentOffline { agent: AgentInfo },
    #[serde(rename = "agent.back_online", rename_all = "camelCase")]
    AgentBackOnline { agent: AgentInfo },
    #[serde(rename = "compliance.changed", rename_all = "camelCase")]
    ComplianceChanged {
        virtual_machine: VmRef,
        compliant: bool,
        /// What makes it non-compliant (empty when it became compliant).
        findings: Vec<String>,
    },
    /// A local (root) grant on a host, from the agent's records.
    #[serde(rename = "access.break_glass", rename_all = "camelCase")]
    AccessBreakGlass {
        virtual_machine: VmRef,
        ports: Vec<PortInfo>,
        /// The local account that made the grant, as the agent recorded it.
        local_user: String,
        justification: String,
    },
    #[serde(rename = "policy.changed", rename_all = "camelCase")]
    PolicyChanged {
        scope: PolicyScope,
        operation: PolicyOperation,
        changed_by: Principal,
        /// A port removed, a prefix widened, an approval rule relaxed, or the policy deleted.
        weakens_protection: bool,
        /// One line per change.
        changes: Vec<String>,
    },
}

impl EventDetails {
    pub fn event_type(&self) -> EventType {
        match self {
            EventDetails::RequestPendingApproval { .. } => EventType::RequestPendingApproval,
            EventDetails::RequestApproved { .. } => EventType::RequestApproved,
            EventDetails::RequestDenied { .. } => EventType::RequestDenied,
            EventDetails::RequestCancelled { .. } => EventType::RequestCancelled,
            EventDetails::RequestApprovalTimedOut { .. } => EventType::RequestApprovalTimedOut,
            EventDetails::AccessApplied { .. } => EventType::AccessApplied,
            EventDetails::AccessEndingSoon { .. } => EventType::AccessEndingSoon,
            EventDetails::AccessEnded { .. } => EventType::AccessEnded,
            EventDetails::AgentOffline { .. } => EventType::AgentOffline,
            EventDetails::AgentBackOnline { .. } => EventType::AgentBackOnline,
            EventDetails::ComplianceChanged { .. } => EventType::ComplianceChanged,
            EventDetails::AccessBreakGlass { .. } => EventType::AccessBreakGlass,
            EventDetails::PolicyChanged { .. } => EventType::PolicyChanged,
        }
    }

    pub fn request(&self) -> Option<&RequestInfo> {
        match self {
            EventDetails::RequestPendingApproval { request, .. }
            | EventDetails::RequestApproved { request, .. }
            | EventDetails::RequestDenied { request, .. }
            | EventDetails::RequestCancelled { request, .. }
            | EventDetails::RequestApprovalTimedOut { request }
            | EventDetails::AccessApplied { request }
            | EventDetails::AccessEndingSoon { request, .. }
            | EventDetails::AccessEnded { request, .. } => Some(request),
            _ => None,
        }
    }
}

/// A person or automation, by stable id (`token:NAME`, `oidc:ISSUER#SUBJECT`, `link:NAME`,
/// or `group:NAME` among approvers) and the display name they had at the time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl Principal {
    pub fn new(id: impl Into<String>, display_name: Option<String>) -> Self {
        Principal {
            id: id.into(),
            display_name,
        }
    }
    /// The display name, else the id.
    pub fn label(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.id)
    }
}

/// The request an event is about, as the request record shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestInfo {
    pub id: String,
    pub requestor: Principal,
    pub justification: String,
    /// When the request was made (Azure's meaning).
    #[serde(with = "utc")]
    pub start_time_utc: OffsetDateTime,
    pub status: RequestStatus,
    pub virtual_machines: Vec<VmPorts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestStatus {
    PendingApproval,
    Initiated,
    Applied,
    Denied,
    Revoked,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::PendingApproval => "PendingApproval",
            RequestStatus::Initiated => "Initiated",
            RequestStatus::Applied => "Applied",
            RequestStatus::Denied => "Denied",
            RequestStatus::Revoked => "Revoked",
        }
    }
}

/// Why access ended: Azure's `statusReason` values for ended ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    Expired,
    UserRequested,
    NewerRequestInitiated,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "Expired",
            EndReason::UserRequested => "UserRequested",
            EndReason::NewerRequestInitiated => "NewerRequestInitiated",
        }
    }
}

/// A VM of a request with its ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmPorts {
    /// The VM's name.
    pub id: String,
    pub resource_group: String,
    pub ports: Vec<PortInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmRef {
    pub id: String,
    pub resource_group: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "*")]
    Any,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Any => "*",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortInfo {
    pub number: u16,
    pub protocol: Protocol,
    pub allowed_source_address_prefixes: Vec<String>,
    #[serde(default, with = "utc_opt", skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<OffsetDateTime>,
    /// The most new connections each grant of the port admits; absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<MaxConnections>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    pub virtual_machine: String,
    pub resource_group: String,
    #[serde(default, with = "utc_opt", skip_serializing_if = "Option::is_none")]
    pub last_seen_utc: Option<OffsetDateTime>,
}

/// A policy on one VM (`virtualMachine` set) or on a whole resource group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyScope {
    pub resource_group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<String>,
}

/// Azure's activity-log operations on a JIT policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyOperation {
    Update,
    Delete,
}

/// Where to look and what to type: the request in the portal (when configured) and the CLI
/// command that acts on the event.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Links {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli: Option<String>,
}

impl Links {
    /// `portal` is the controller's configured public base URL; the request link is
    /// `<portal>/requests/<id>` with the id percent-encoded as one path segment.
    pub fn for_details(details: &EventDetails, portal: Option<&url::Url>) -> Links {
        let request_id = details.request().map(|r| r.id.as_str());
        let request = match (portal, request_id) {
            (Some(base), Some(id)) => request_url(base, id),
            _ => None,
        };
        // Only ids and names that are plain tokens go into a command line.
        let plain = |s: &str| is_plain_token(s).then(|| s.to_string());
        let cli = match details {
            EventDetails::RequestPendingApproval { request, .. } => {
                plain(&request.id).map(|id| format!("jit approve {id}"))
            }
            EventDetails::AgentOffline { .. } | EventDetails::AgentBackOnline { .. } => {
                Some("jit agents".to_string())
            }
            EventDetails::ComplianceChanged { .. } => Some("jit compliance".to_string()),
            EventDetails::AccessBreakGlass {
                virtual_machine, ..
            } => plain(&virtual_machine.id).map(|vm| format!("jit connections {vm}")),
            EventDetails::PolicyChanged { scope, .. } => match &scope.virtual_machine {
                Some(vm) => plain(vm).map(|vm| format!("jit policy show {vm}")),
                None => plain(&scope.resource_group)
                    .map(|rg| format!("jit policy show --resource-group {rg}")),
            },
            other => other
                .request()
                .and_then(|r| plain(&r.id))
                .map(|id| format!("jit show {id}")),
        };
        Links { request, cli }
    }
}

fn request_url(base: &url::Url, id: &str) -> Option<String> {
    if !matches!(base.scheme(), "https" | "http") {
        return None;
    }
    let mut u = base.clone();
    {
        let mut segs = u.path_segments_mut().ok()?;
        segs.pop_if_empty().push("requests").push(id);
    }
    Some(u.to_string())
}

/// Letters, digits, `-`, `_`, `.`: safe as one shell word and inside any message format.
pub(crate) fn is_plain_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Times as the rest of the API writes them: RFC 3339 UTC with milliseconds.
pub(crate) mod utc {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );

    pub fn format(t: OffsetDateTime) -> String {
        t.to_offset(time::UtcOffset::UTC)
            .format(FORMAT)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod utc_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::utc::format(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| OffsetDateTime::parse(&s, &Rfc3339).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_and_unknown_is_refused() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        let err = "request.approve".parse::<EventType>().unwrap_err();
        assert!(err.to_string().contains("request.approved"), "{err}");
    }

    #[test]
    fn json_is_flat_camel_case_and_round_trips() {
        let portal = url::Url::parse("https://jit.example.com/portal/").unwrap();
        let e = Event::new(
            EventDetails::RequestPendingApproval {
                request: crate::examples::request("42", "INC-42"),
                stage: 1,
                approvers: vec![
                    Principal::new("token:bob", None),
                    Principal::new("group:sec-leads", None),
                ],
                approvals_needed: 2,
            },
            OffsetDateTime::from_unix_timestamp(1_800_000_001).unwrap(),
            Some(&portal),
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "request.pending_approval");
        assert_eq!(v["timeUtc"], "2027-01-15T08:00:01.000Z");
        assert_eq!(v["approvalsNeeded"], 2);
        assert_eq!(v["request"]["requestor"]["displayName"], "Alice");
        assert_eq!(
            v["request"]["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefixes"][0],
            "203.0.113.7"
        );
        assert_eq!(v["links"]["cli"], "jit approve 42");
        assert_eq!(
            v["links"]["request"],
            "https://jit.example.com/portal/requests/42"
        );
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.audience_groups(), vec!["sec-leads"]);
        assert_eq!(
            e.people().iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["token:bob"]
        );
        assert_eq!(e.order_key(), "request:42");
    }

    #[test]
    fn commands_name_what_the_event_is_about() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let cli =
            |t: EventType, written: &str| crate::examples::sample(t, written, now, None).links.cli;
        assert_eq!(
            cli(EventType::AccessEnded, "x").as_deref(),
            Some("jit show example-1")
        );
        assert_eq!(
            cli(EventType::AgentOffline, "x").as_deref(),
            Some("jit agents")
        );
        assert_eq!(
            cli(EventType::PolicyChanged, "web1").as_deref(),
            Some("jit policy show web1")
        );
        assert_eq!(
            cli(EventType::AccessBreakGlass, "web1").as_deref(),
            Some("jit connections web1")
        );
        assert_eq!(cli(EventType::AccessBreakGlass, "web1; reboot"), None);
        let e = crate::examples::sample(EventType::RequestDenied, "x", now, None);
        assert_eq!(
            e.people().iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["token:alice"]
        );
        let e = crate::examples::sample(EventType::AgentOffline, "x", now, None);
        assert!(e.people().is_empty());
    }

    #[test]
    fn odd_request_ids_stay_out_of_commands_and_are_encoded_in_links() {
        let mut r = crate::examples::request("42", "INC-42");
        r.id = "42; rm -rf /".into();
        let portal = url::Url::parse("https://jit.example.com").unwrap();
        let d = EventDetails::AccessApplied { request: r };
        let links = Links::for_details(&d, Some(&portal));
        assert_eq!(links.cli, None);
        assert_eq!(
            links.request.as_deref(),
            Some("https://jit.example.com/requests/42;%20rm%20-rf%20%2F")
        );
    }
}
