//! The messages. The agent always dials out; the controller never connects to an agent.

use crate::signed::{GrantBody, PolicyBody, RevokeBody, Signed};
use jitgate_common::{Port, ProtectedPort, Protocol, SourcePrefix};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Controller → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerMsg {
    /// First message after the TLS handshake.
    Welcome {
        agent_id: Uuid,
        controller_unix_ms: i64,
    },
    Policy(Signed<PolicyBody>),
    Grant(Signed<GrantBody>),
    Revoke(Signed<RevokeBody>),
    /// After (re)connect: every controller grant the controller considers active for this
    /// agent. The agent removes controller grants not listed (revoked while it was away).
    Active {
        grant_ids: Vec<Uuid>,
        up_to_seq: u64,
    },
    /// Audit records up to this agent seq are stored; the agent may stop resending them.
    AuditAck {
        up_to: u64,
    },
    Ping {
        nonce: u64,
    },
}

/// Agent → controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// First message: who it is and what it has seen.
    Hello {
        agent_id: Uuid,
        version: String,
        /// Highest controller seq applied or rejected (its replay high-water mark).
        seq_high_water: u64,
        /// Highest audit seq the controller acknowledged.
        audit_acked: u64,
    },
    GrantResult {
        grant_id: Uuid,
        seq: u64,
        outcome: Outcome,
    },
    RevokeResult {
        grant_id: Uuid,
        seq: u64,
        outcome: Outcome,
    },
    PolicyResult {
        seq: u64,
        outcome: Outcome,
    },
    /// Every active grant on the agent, controller and local (break-glass) alike.
    Grants {
        grants: Vec<ReportedGrant>,
    },
    /// Audit records in seq order; the controller stores each once (by id).
    Audit {
        records: Vec<AuditRecord>,
    },
    /// Sent by agents before status reports existed; still accepted.
    Heartbeat(Box<Heartbeat>),
    Pong {
        nonce: u64,
    },
    /// The heartbeat with the state of enforcement (appended variant: older messages keep
    /// their encoding; see docs/protocol.md "Versioning").
    Status(Box<StatusReport>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Journaled and in the map; `agent_unix_ms` is the agent's time of application.
    Applied {
        agent_unix_ms: i64,
    },
    /// The same grant again: acknowledged again, not applied again.
    AlreadyApplied,
    Rejected {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedGrant {
    pub grant_id: Uuid,
    /// `local` (break-glass) or `controller`.
    pub origin: String,
    pub protocol: Protocol,
    pub port: Port,
    pub source: SourcePrefix,
    pub end_unix_ms: i64,
    pub requester: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub id: String,
    /// The audit line as the agent wrote it (JSON, hash-chained).
    pub line: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub interfaces: Vec<(String, String)>,
    pub protected: Vec<ProtectedPort>,
    /// Listening sockets (TCP in LISTEN, unconnected bound UDP), IPv4 and IPv6, wildcard
    /// binds included, as `address:port`; the controller picks the management ports.
    pub listening: Vec<(Protocol, String)>,
    pub active_grants: u32,
    pub audit_head: String,
    pub audit_seq: u64,
}

/// A heartbeat plus what compliance and the fleet view need to judge enforcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub heartbeat: Heartbeat,
    /// Every address of every non-loopback interface: (interface, address). Interfaces here
    /// but not in `heartbeat.interfaces` have an address and no enforcement.
    pub addresses: Vec<(String, String)>,
    /// What is wrong with the program, its pinned maps or links; empty when healthy.
    pub problems: Vec<String>,
    /// The agent's wall clock when it built the report (for the clock offset).
    pub agent_unix_ms: i64,
}
