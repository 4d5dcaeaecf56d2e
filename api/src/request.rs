//! Access requests (Azure's `initiate`) and their records.

use serde::{Deserialize, Serialize};

use crate::policy::{MaxConnections, OnExpiry};
use crate::port::ProtoSel;
use crate::wire::wire_enum;

wire_enum! {
    /// A port's status, and a request's (the summary of its ports).
    pub enum PortStatus("status", Other) {
        /// Waiting for approvers (see the request's `pendingApproval`).
        PendingApproval = "PendingApproval",
        /// Approved; grants queued for the agent.
        Initiated = "Initiated",
        /// The agent confirmed every grant of the port.
        Applied = "Applied",
        /// Refused by the policy (see the reasons).
        Denied = "Denied",
        /// Ended: revoked, superseded or expired (see the reason).
        Revoked = "Revoked",
    }
}

wire_enum! {
    /// Why a port is `Revoked` or `Denied`; the denial reasons (from `PortNotInPolicy` on) are
    /// also the `reason` of a request's `denialReasons`.
    pub enum StatusReason("status reason", Other) {
        Expired = "Expired",
        UserRequested = "UserRequested",
        NewerRequestInitiated = "NewerRequestInitiated",
        /// Denied because another port of the request was.
        OtherPortDenied = "OtherPortDenied",
        /// An approver said no (their reason is in the request's `approvals`).
        Rejected = "Rejected",
        /// Still pending at its approval timeout or at the end of its window.
        ApprovalTimedOut = "ApprovalTimedOut",
        /// The requester withdrew it while pending.
        Cancelled = "Cancelled",
        // A rule of the policy that a requested port breaks:
        PortNotInPolicy = "PortNotInPolicy",
        ProtocolNotAllowed = "ProtocolNotAllowed",
        SourceNotAllowed = "SourceNotAllowed",
        DurationExceedsMaximum = "DurationExceedsMaximum",
        /// The port's `maxConnections` is above the policy's (refused at initiate; a denial
        /// when a pending request's policy was lowered before its approval).
        ConnectionsExceedMaximum = "ConnectionsExceedMaximum",
        EndTimeInPast = "EndTimeInPast",
        NoPolicy = "NoPolicy",
    }
}

/// One requested port. Values are checked by the controller, each with its own error code.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitiatePort {
    pub number: u32,
    /// TCP, UDP or `*`; default: the policy's protocol for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// No source means the caller's own address ("My IP").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// End of the window (RFC 3339); give this or `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
    /// Length of the window (ISO 8601, e.g. PT1H); give this or `endTimeUtc`. Without a
    /// `startTimeUtc` it starts when the request is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Books the port ahead (RFC 3339, at most P7D ahead): the window is [start, start +
    /// duration] or [start, endTimeUtc]. Approved late, it opens at approval and still ends
    /// at the booked end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_utc: Option<String>,
    /// The most new connections each grant of the port admits (1..=65535), at most the
    /// policy's; absent: the policy's (unlimited if the policy sets none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<MaxConnections>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitiateVm {
    /// The VM's name.
    pub id: String,
    pub ports: Vec<InitiatePort>,
}

/// `POST /jitNetworkAccessPolicies/default/initiate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitiateBody {
    pub virtual_machines: Vec<InitiateVm>,
    pub justification: String,
}

/// A recorded request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    pub id: String,
    pub start_time_utc: String,
    pub requestor: String,
    pub justification: String,
    pub caller_address: String,
    /// The summary of the ports: Denied if denied, else Initiated if any port is, else
    /// Applied if any port is, else Revoked.
    pub status: PortStatus,
    pub virtual_machines: Vec<RequestVm>,
    #[serde(default)]
    pub denial_reasons: Vec<DenialReason>,
    /// Every decision on the request, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<crate::approval::ApprovalRecord>,
    /// While PendingApproval: the current stage of each rule still to be satisfied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_approval: Vec<crate::approval::PendingStage>,
    /// When a pending request times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_deadline_utc: Option<String>,
    /// Approved by an admin's emergency approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emergency: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestVm {
    pub id: String,
    pub resource_group: String,
    pub ports: Vec<RequestPort>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestPort {
    pub number: u16,
    pub protocol: ProtoSel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// When the window opens (opened): the approval time or the booked start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_utc: Option<String>,
    pub end_time_utc: String,
    pub status: PortStatus,
    #[serde(default)]
    pub status_reason: Option<StatusReason>,
    #[serde(default)]
    pub on_expiry: Option<OnExpiry>,
    /// The most new connections each grant of the port admits; absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<MaxConnections>,
}

/// One reason of a denial, with the port it concerns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DenialReason {
    pub virtual_machine: String,
    pub number: u16,
    pub protocol: ProtoSel,
    /// PortNotInPolicy | ProtocolNotAllowed | SourceNotAllowed | DurationExceedsMaximum |
    /// EndTimeInPast | NoPolicy
    pub reason: StatusReason,
    pub message: String,
}

/// `GET /virtualMachines/{vm}/requests` and `GET /compliance/history`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}
