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

wire_enum! {
    /// The hook a program runs at on an interface.
    pub enum HookKind("hook", Other) {
        /// The XDP hook (an XDP link of its own; ahead of a tcx program: whatever the XDP
        /// hook holds).
        Xdp = "xdp",
        /// A slot of a libxdp multi-program dispatcher at the XDP hook.
        XdpDispatcher = "xdp-dispatcher",
        /// tcx ingress (the XDP hook holds a program that is not dispatcher-aware).
        TcxIngress = "tcx-ingress",
    }
}

wire_enum! {
    /// How jitgate's program is attached at its hook.
    pub enum HookMode("hook mode", Other) {
        Driver = "driver",
        Generic = "generic",
        Tcx = "tcx",
    }
}

wire_enum! {
    /// What is wrong with jitgate's place on an interface.
    pub enum HookProblem("hook problem", Other) {
        /// Other programs run before it (`ahead`): they may pass, drop or redirect packets
        /// before jitgate decides.
        NotFirst = "NotFirst",
        /// jitgate's program no longer runs there (its slot unloaded, the dispatcher
        /// replaced, the link removed by another tool).
        Missing = "Missing",
    }
}

/// A program that sees an interface's packets before jitgate does.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProgramAhead {
    /// The kernel's program id on the VM.
    pub id: u32,
    /// Its name, as the agent read it.
    pub name: String,
    pub hook: HookKind,
}

/// Where jitgate's program runs on one of the VM's interfaces, as its agent last reported
/// (agents at protocol level 7 or later).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceHook {
    pub interface: String,
    pub hook: HookKind,
    pub mode: HookMode,
    /// 0: first in its hook's chain.
    pub position: u32,
    /// Programs in that chain, jitgate's included.
    pub programs: u32,
    /// Programs that run before it, first first.
    #[serde(default)]
    pub ahead: Vec<ProgramAhead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<HookProblem>,
    /// The agent's words on a `Missing` problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_reason: Option<String>,
}

impl InterfaceHook {
    /// The problem in words, naming the interface (none: jitgate runs first there).
    pub fn problem_words(&self) -> Option<String> {
        let i = &self.interface;
        match self.problem.as_ref()? {
            HookProblem::NotFirst => Some(format!(
                "another program runs ahead of jitgate on {i} ({}, position {} of {}): {}",
                self.hook,
                self.position,
                self.programs,
                self.ahead_words()
            )),
            HookProblem::Missing => Some(format!(
                "jitgate's program is missing from {i} ({}): {}",
                self.hook,
                self.problem_reason
                    .as_deref()
                    .unwrap_or("no longer attached")
            )),
            HookProblem::Other(p) => Some(format!("{i}: {p}")),
        }
    }

    /// The programs ahead: `name (id N, hook)`, comma-separated (`none`).
    pub fn ahead_words(&self) -> String {
        if self.ahead.is_empty() {
            return "none".into();
        }
        self.ahead
            .iter()
            .map(|a| format!("{} (id {}, {})", a.name, a.id, a.hook))
            .collect::<Vec<_>>()
            .join(", ")
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
    /// Where jitgate's program runs on each interface and what runs before it, from the
    /// agent's last hook report (empty: none yet, or an agent below protocol level 7).
    #[serde(default)]
    pub hooks: Vec<InterfaceHook>,
}

/// A VM's agent in `GET /virtualMachines/{vm}`: its newest enrolment (an active one before
/// revoked ones), shown by the same rule as in `GET /agents`, with its last hook report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmAgent {
    pub agent_id: String,
    pub status: AgentStatus,
    pub connection: AgentConnection,
    /// Why it is degraded.
    pub problems: Vec<String>,
    pub enrolled_time_utc: String,
    pub last_seen_time_utc: Option<String>,
    /// When its last status report was received (null: none yet).
    pub last_report_time_utc: Option<String>,
    /// The protocol level of its last Hello.
    pub protocol: u32,
    /// Its version, as its last Hello named it.
    pub version: Option<String>,
    /// Where jitgate's program runs on each interface and what runs before it, from the
    /// agent's last hook report (empty: none yet, or an agent below protocol level 7).
    #[serde(default)]
    pub hooks: Vec<InterfaceHook>,
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
    /// The most new connections the grant admits: the controller's grant's, or a local
    /// break-glass grant's as its agent reported it (protocol level 12 and later); absent:
    /// unlimited, or a local grant reported by an older agent, which does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<crate::policy::MaxConnections>,
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

/// An admitted connection under a controller grant (request `r`, requestor `alice`,
/// justification `deploy`, no connection limit), for the tests of the crates that show one.
#[doc(hidden)]
pub fn example_connection() -> Connection {
    Connection {
        time_utc: "2026-12-02T04:00:00Z".into(),
        virtual_machine: "web1".into(),
        agent_id: "a".into(),
        outcome: ConnectionOutcome::Admitted,
        source: Some("203.0.113.7:5000".into()),
        protocol: Some("tcp".into()),
        port: Some(22),
        grant_id: Some("g".into()),
        grant_origin: Some(GrantOrigin::Controller),
        request_id: Some("r".into()),
        requestor: Some("alice".into()),
        justification: Some("deploy".into()),
        reason: None,
        max_connections: None,
    }
}
