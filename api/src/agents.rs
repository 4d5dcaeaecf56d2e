//! Agents: enrolment, the fleet, and what they saw (connections and their audit records).

use serde::{Deserialize, Serialize};

use crate::list::Format;
use crate::wire::wire_enum;

wire_enum! {
    /// An enrolment's standing.
    pub enum AgentStatus("agent status", Other) {
        Active = "active",
        Revoked = "revoked",
    }
}

wire_enum! {
    /// A VM's agent as the controller sees it.
    pub enum AgentConnection("agent connection", Other) {
        /// Its channel is connected and enforcement is whole.
        Online = "online",
        /// Connected, but enforcement is detached or partial, or the program unhealthy.
        Degraded = "degraded",
        Offline = "offline",
        Revoked = "revoked",
        /// No agent enrolled (the VM list only).
        NoAgent = "none",
    }
}

wire_enum! {
    /// What the data plane did with a connection attempt.
    pub enum ConnectionOutcome("connection outcome", Other) {
        Admitted = "admitted",
        Denied = "denied",
    }
}

wire_enum! {
    /// Who issued the grant that admitted a connection.
    pub enum GrantOrigin("grant origin", Other) {
        /// A request to the controller.
        Controller = "controller",
        /// Break-glass on the host.
        Local = "local",
        Unknown = "unknown",
    }
}

/// `POST /agents/enroll`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    /// `jitenroll_` + 64 hex digits; single use, 24 h.
    pub token: String,
    /// PKCS#10 certificate request (PEM); only its public key is used.
    pub csr_pem: String,
    /// The agent's protocol level (absent before level 6): an agent at level 6 or later
    /// renews its certificate over the channel and is given a short-lived one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    pub agent_id: String,
    pub vm: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    /// SPKI PEM of the Ed25519 grant-signing public key.
    pub grant_signing_key_pem: String,
    /// host:port of the agent channel (mutual TLS) of the controller that enrolled it.
    pub agent_endpoint: String,
    /// Every controller's agent channel (host:port), this one's included: where the agent
    /// goes when its controller goes away. Absent from older controllers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_endpoints: Vec<String>,
}

/// One agent in `GET /agents`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub virtual_machine: String,
    pub resource_group: String,
    pub agent_id: String,
    pub status: AgentStatus,
    pub connection: AgentConnection,
    /// Why it is degraded.
    pub problems: Vec<String>,
    pub enrolled_time_utc: String,
    pub last_seen_time_utc: Option<String>,
    /// From the last status report: `name (mode)` of each attached interface.
    pub interfaces: Vec<String>,
    /// `port/proto:on_expiry`.
    pub protected_ports: Vec<String>,
    /// Listening sockets: `TCP 0.0.0.0:22`.
    pub listening: Vec<String>,
    /// Agent wall clock minus controller wall clock at receipt.
    pub clock_offset_ms: Option<i64>,
    pub active_grants: Option<u32>,
    pub audit_head: Option<String>,
    pub audit_seq: Option<u64>,
    /// Audit records stored from this agent.
    pub audit_records: i64,
}

/// One connection attempt seen by a VM's agent (`GET /virtualMachines/{vm}/connections`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// When the kernel saw it (agent clock).
    pub time_utc: String,
    pub virtual_machine: String,
    pub agent_id: String,
    pub outcome: ConnectionOutcome,
    /// address:port of the client.
    pub source: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<u16>,
    /// The grant that admitted it.
    pub grant_id: Option<String>,
    pub grant_origin: Option<GrantOrigin>,
    pub request_id: Option<String>,
    /// The requestor, or the local actor of a break-glass grant.
    pub requestor: Option<String>,
    pub justification: Option<String>,
    /// Why a denied attempt was dropped (no_grant, expired, ...).
    pub reason: Option<String>,
}

/// One record as an agent wrote it (`GET /virtualMachines/{vm}/agentAudit`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    pub agent_id: String,
    pub received_time_utc: String,
    /// The agent's hash-chained record, verbatim (a string if it is not JSON).
    pub record: serde_json::Value,
}

/// `GET /virtualMachines/{vm}/agentAudit/verify`: every agent the VM has had, verified.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentAuditVerify {
    pub ok: bool,
    pub vm: String,
    pub agents: Vec<AgentChainReport>,
}

/// The verification of one agent's delivered audit records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentChainReport {
    pub agent_id: String,
    pub ok: bool,
    pub records: i64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Signed `audit.checkpoint` records verified against the agent's certificate.
    pub checkpoints: i64,
    /// Records up to this seq are under the agent's signature.
    pub covered_seq: Option<i64>,
    /// Records after the last checkpoint (chained, not yet signed).
    pub uncovered: i64,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

/// The filters of `connections` and `agentAudit`; times RFC 3339, `to` exclusive.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ViewQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// connections: also list denied attempts. agentAudit: ignored.
    #[serde(default)]
    pub denied: bool,
    /// agentAudit: only this record kind (e.g. grant.applied). connections: ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// connections: json (default) or csv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}
