//! The messages. The agent always dials out; the controller never connects to an agent.

use crate::keys::{KeyAnnouncementBody, KeyId, KeyRetirementBody, KeyStep};
use crate::level::*;
use crate::signed::{
    GrantBody, LimitedGrantBody, PolicyBody, RevokeBody, ScheduledGrantBody, Signed,
};
use jitgate_common::{MaxConnections, Port, ProtectedPort, Protocol, SourcePrefix};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// At most this many bytes of PEM in a certificate request, a certificate or a CA bundle
/// sent over the channel (a frame is at most 1 MiB anyway).
pub const MAX_CERT_PEM: usize = 64 * 1024;

/// At most this many controller endpoints in [`ControllerMsg::Settings`] (and in an
/// enrolment): a longer list is cut, not refused.
pub const MAX_ENDPOINTS: usize = 16;

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
    /// Sent every `Settings.ping_every_ms` so that the agent notices a frozen controller;
    /// answered with `Pong` only below [`LEVEL_QUIET_PINGS`].
    Ping {
        nonce: u64,
    },
    /// A booked grant: the agent keeps it out of the maps until its start, then opens it by
    /// itself (appended variant; sent only to agents at [`LEVEL_SCHEDULED_GRANTS`] or later).
    /// Answered with `GrantResult { outcome: Scheduled }`, then `GrantResult { outcome:
    /// Applied }` when it opens.
    ScheduledGrant(Signed<ScheduledGrantBody>),
    /// Sent right after `Welcome` to agents at [`LEVEL_SETTINGS`] or later (appended
    /// variant): every controller's agent endpoint (`host:port`, the agent tries the next one
    /// when its controller goes away) and how often this controller pings this agent (the
    /// agent leaves a controller silent for three of these, two from
    /// [`LEVEL_SPARSE_PINGS`](crate::LEVEL_SPARSE_PINGS) on: [`crate::silent_pings`]).
    Settings {
        endpoints: Vec<String>,
        ping_every_ms: u64,
    },
    /// A new grant-signing key, signed by the key in use (appended variant; sent only to
    /// agents at [`LEVEL_KEY_ROTATION`] or later). Answered with `KeyResult { Announced }`.
    KeyAnnouncement(Signed<KeyAnnouncementBody>),
    /// The previous key is retired, signed by its successor (appended variant; level
    /// [`LEVEL_KEY_ROTATION`]). Answered with `KeyResult { Retired }`.
    KeyRetirement(Signed<KeyRetirementBody>),
    /// A grant with a connection limit, open at receipt or booked (appended variant; sent
    /// only to agents at [`LEVEL_CONNECTION_LIMITS`] or later). Answered like `Grant`, or
    /// like `ScheduledGrant` when booked.
    LimitedGrant(Signed<LimitedGrantBody>),
    /// The answer to [`AgentMsg::RenewCertificate`] (appended variant; sent only to agents
    /// at [`LEVEL_CERT_RENEWAL`] or later): a new certificate for the same agent id and the
    /// same key, and the CA bundle the agent is to trust from now on (PEM, one or more
    /// certificates: during a CA rotation the old and the new CA).
    Certificate {
        certificate_pem: String,
        ca_bundle_pem: String,
    },
    /// A renewal the controller will not do (appended variant; level
    /// [`LEVEL_CERT_RENEWAL`]): the agent is revoked, its certificate is past the grace
    /// period, the request does not carry its key, ... The reason is for the agent's log.
    RenewalRefused {
        reason: String,
    },
    /// The controller's protocol level (appended variant; sent right after `Welcome` and
    /// `Settings`, only to agents at [`LEVEL_HOOK_REPORTS`] or later). Until it comes the
    /// agent sends nothing newer than level 6 (an older controller never sends it).
    Level {
        protocol: u32,
    },
    /// The controller's database holds this agent's audit records only up to `after` (a
    /// restore or a promotion lost the later ones): the agent takes its acknowledged mark
    /// back to `after` and sends its records after it again (appended variant; sent only to
    /// agents at [`LEVEL_AUDIT_RESEND`] or later).
    AuditResend {
        after: u64,
    },
    /// The controller ends the connection, and why (appended variant; sent only to agents
    /// at [`LEVEL_CLOSE_REASON`] or later, as the last message, instead of `Welcome` when
    /// the agent is refused at connect).
    Closing {
        reason: CloseReason,
    },
}

/// Why the controller ends an agent's connection ([`ControllerMsg::Closing`]). postcard
/// encodes the variant's index: a variant added later is sent only to agents of a level
/// that knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CloseReason {
    /// The agent was revoked (by an administrator, or replaced by a re-enrolment): its
    /// credentials are refused from now on; the host must be enrolled again.
    Revoked,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Revoked => "revoked by the controller",
        })
    }
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
    /// The answer to a `Ping`, sent only while the agent or its controller is below
    /// [`LEVEL_QUIET_PINGS`].
    Pong {
        nonce: u64,
    },
    /// The heartbeat with the state of enforcement (appended variant: older messages keep
    /// their encoding; see docs/protocol.md "Versioning").
    Status(Box<StatusReport>),
    /// The first message of agents at level 2 and later: `Hello` plus the protocol level
    /// ([`PROTOCOL_LEVEL`]) it speaks (appended variant).
    HelloV2 {
        agent_id: Uuid,
        version: String,
        seq_high_water: u64,
        audit_acked: u64,
        protocol: u32,
    },
    /// Every booked grant the agent holds that has not opened yet, sent with each `Grants`
    /// report (`Grants` lists only open grants). A controller grant in neither list is not
    /// held by the agent.
    ScheduledGrants {
        grants: Vec<ReportedScheduledGrant>,
    },
    /// The answer to a key announcement (`key_id`: the announced key) or retirement
    /// (`key_id`: the retired key), appended variant. `Applied` when it changed the agent's
    /// keys, `AlreadyApplied` when they already were so, `Rejected` with the reason.
    KeyResult {
        key_id: KeyId,
        step: KeyStep,
        outcome: Outcome,
    },
    /// A request for a new certificate for this agent's same key (appended variant; level
    /// [`LEVEL_CERT_RENEWAL`]): a PKCS#10 request (PEM) signed by the key of the certificate
    /// the connection was made with. Answered with `Certificate` or `RenewalRefused`.
    RenewCertificate {
        csr_pem: String,
    },
    /// Where jitgate's program runs on each interface it enforces on, and what runs before
    /// it (appended variant; sent only to a controller that announced
    /// [`LEVEL_HOOK_REPORTS`] or later with [`ControllerMsg::Level`]): at connect and with
    /// every status report, just before it. At most [`MAX_HOOK_INTERFACES`] interfaces.
    Hooks {
        interfaces: Vec<InterfaceHook>,
    },
    /// The first message of agents at [`LEVEL_AUDIT_RESEND`] and later: `HelloV2` plus the
    /// version of the policy the agent applied (`policy_seq`, 0: none), so that a controller
    /// whose database went back in time numbers the next policy above it (appended variant).
    HelloV3 {
        agent_id: Uuid,
        version: String,
        seq_high_water: u64,
        audit_acked: u64,
        policy_seq: u64,
        protocol: u32,
    },
    /// [`AgentMsg::Grants`] with each grant's connection limit (appended variant; sent
    /// instead of it only to a controller that announced [`LEVEL_GRANT_LIMITS`] or later).
    GrantsWithLimits {
        grants: Vec<ReportedLimitedGrant>,
    },
}

/// A grant as [`AgentMsg::GrantsWithLimits`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedLimitedGrant {
    pub grant: ReportedGrant,
    /// The most new connections it admits; none: unlimited.
    pub max_connections: Option<MaxConnections>,
}

/// The hook a program runs at. (In JSON, e.g. `jit-agent status --json`: `xdp`,
/// `xdp-dispatcher`, `tcx-ingress`; postcard encodes the variant's index.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// The XDP hook through an XDP link of its own: the interface's only XDP program (for a
    /// program ahead of jitgate's tcx program: the XDP hook, which runs before tcx).
    Xdp,
    /// A component (slot) of a libxdp multi-program dispatcher at the XDP hook.
    XdpDispatcher,
    /// tcx ingress (the XDP hook holds a program that is not dispatcher-aware).
    TcxIngress,
}

impl HookKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookKind::Xdp => "xdp",
            HookKind::XdpDispatcher => "xdp-dispatcher",
            HookKind::TcxIngress => "tcx-ingress",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the program is attached at its hook (in JSON: `driver`, `generic`, `tcx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookMode {
    /// Native XDP in the driver.
    Driver,
    /// Generic (skb) XDP.
    Generic,
    /// tcx (not XDP).
    Tcx,
}

impl HookMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookMode::Driver => "driver",
            HookMode::Generic => "generic",
            HookMode::Tcx => "tcx",
        }
    }
}

/// A program that sees an interface's packets before jitgate does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramAhead {
    /// The kernel's program id.
    pub id: u32,
    /// Its name (at most [`MAX_HOOK_NAME`] characters).
    pub name: String,
    /// Where it runs.
    pub hook: HookKind,
}

/// What is wrong with jitgate's place on an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookProblem {
    /// jitgate's program no longer runs there (its dispatcher slot unloaded, the dispatcher
    /// replaced, the link removed); the reason as the agent found it.
    Missing { reason: String },
    /// Other programs run first (see `ahead`): they may pass, drop or redirect packets
    /// before jitgate decides.
    NotFirst,
}

/// jitgate's place on one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceHook {
    pub interface: String,
    pub hook: HookKind,
    pub mode: HookMode,
    /// 0: first in its hook's chain.
    pub position: u32,
    /// Programs in that chain, jitgate's included.
    pub programs: u32,
    /// Programs that run before it, first first (at most [`MAX_PROGRAMS_AHEAD`]).
    pub ahead: Vec<ProgramAhead>,
    pub problem: Option<HookProblem>,
}

fn cut(s: &mut String, max: usize) {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
    }
}

impl InterfaceHook {
    /// Within the bounds of [`AgentMsg::Hooks`]: names and reasons cut, at most
    /// [`MAX_PROGRAMS_AHEAD`] programs ahead. Both sides apply it (the agent before it
    /// sends, the controller to what it received).
    pub fn bounded(mut self) -> InterfaceHook {
        cut(&mut self.interface, MAX_HOOK_NAME);
        self.ahead.truncate(MAX_PROGRAMS_AHEAD);
        for a in &mut self.ahead {
            cut(&mut a.name, MAX_HOOK_NAME);
        }
        if let Some(HookProblem::Missing { reason }) = &mut self.problem {
            cut(reason, MAX_HOOK_REASON);
        }
        self
    }
}

/// At most [`MAX_HOOK_INTERFACES`] interfaces, each [`InterfaceHook::bounded`].
pub fn bounded_hooks(hooks: impl IntoIterator<Item = InterfaceHook>) -> Vec<InterfaceHook> {
    hooks
        .into_iter()
        .take(MAX_HOOK_INTERFACES)
        .map(InterfaceHook::bounded)
        .collect()
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
    /// A booked grant is journaled and will open at `opens_unix_ms` (agent wall clock, as
    /// read at receipt); nothing is in the maps yet. When it opens the agent sends a second
    /// `GrantResult` for the same grant with `Applied` (appended variant).
    Scheduled {
        agent_unix_ms: i64,
        opens_unix_ms: i64,
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

/// A booked grant waiting for its start, as reported in [`AgentMsg::ScheduledGrants`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedScheduledGrant {
    pub grant: ReportedGrant,
    /// When the agent will open it (its wall clock).
    pub opens_unix_ms: i64,
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

#[cfg(test)]
mod tests;
