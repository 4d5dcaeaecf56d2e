//! The JSON bodies of the jitgate controller's HTTPS API (`controller/openapi.yaml`), shared
//! by the controller, which serialises them, and the `jit` CLI, which reads them; with the
//! small parsers both sides need (ISO 8601 durations, times, port specifications, scopes,
//! names). Serde types only: no HTTP, no database, no runtime.
//!
//! Compatibility rules:
//! - Request bodies and query strings reject unknown fields (a typo is an error, never
//!   silently ignored).
//! - Response bodies accept unknown fields, and their enums keep values they do not know
//!   (`Other(..)`, and [`ErrorCode::Unknown`]), so a newer controller never breaks an older
//!   client. Add fields and values freely; renaming or removing one is a breaking change.
//! - JSON is camelCase with Azure's names.

mod wire;

pub mod activity;
pub mod agents;
pub mod apply;
pub mod approval;
pub mod auth;
pub mod compliance;
pub mod duration;
pub mod error;
pub mod inventory;
pub mod keys;
pub mod list;
pub mod name;
pub mod notify;
pub mod policy;
pub mod port;
pub mod request;
pub mod rights;
pub mod terminal;
pub mod time;

#[cfg(feature = "audit")]
pub use activity::{ActivityEntry, ActivityExport, Checkpoint, CheckpointList, VerifyReport};
pub use activity::{ActivityOutcome, ActivityQuery, Operation, ResourceType};
pub use agents::{
    Agent, AgentAuditVerify, AgentChainReport, AgentConnection, AgentRecord, AgentStatus,
    Connection, ConnectionOutcome, EnrollRequest, EnrollResponse, GrantOrigin, HookKind, HookMode,
    HookProblem, InterfaceHook, ProgramAhead, ViewQuery, VmAgent,
};
pub use apply::{
    ApplyBody, ApprovalDecl, AssignmentDecl, DeclKind, Document, FieldChange, GroupDecl, Plan,
    PlanAction, PlannedChange, PolicyDecl, PortDecl, SinkDecl, VmDecl,
};
pub use approval::{
    ApprovalEntry, ApprovalRecord, ApprovalRule, ApprovalStage, ApprovalsQuery, Approver, Decision,
    DecisionBody, PendingStage, PrincipalError, PrincipalId,
};
pub use auth::{
    CallbackBody, CallerKind, DevicePollBody, DeviceStarted, GrantView, GroupsView, LoginBody,
    LoginStarted, SessionEndReason, SessionGranted, SessionView, Whoami,
};
pub use compliance::{
    AssignBody, Assignment, AssignmentEffect, ComplianceGroup, ComplianceHistoryQuery,
    ComplianceReport, ComplianceResult, ComplianceState, Finding, FindingCode, GroupBy,
    RemediateBody, ReportQuery, ResourceKind, ScanBody, ScanReason, ScanSummary,
};
pub use error::{ErrorBody, ErrorClass, ErrorCode, ErrorDetail};
pub use inventory::{Me, ResourceGroup, Vm, VmDetail};
pub use keys::{AgentKeyState, GrantKey, GrantKeyState, KeyAgent, KeyStatus};
pub use list::{Format, List};
pub use notify::{
    DeadCount, DeadDeliveries, DeliveryFailure, NewSink, SecretBody, SinkInfo, SinkStatus,
    SinkTarget, SinkTestResult, SinkView,
};
pub use policy::{
    MaxConnections, MaxConnectionsError, OnExpiry, PolicyBody, PolicyPort, PolicyScope, PolicyView,
};
pub use port::{PortSpec, ProtoSel};
pub use request::{
    DenialReason, HistoryQuery, InitiateBody, InitiatePort, InitiateVm, PortStatus, RequestPort,
    RequestView, RequestVm, StatusReason,
};
pub use rights::{Role, Scope};
pub use wire::{KnownFields, UnknownValue};
