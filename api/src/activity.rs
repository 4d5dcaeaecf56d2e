//! The activity log: its vocabulary and its query.
//!
//! The entry, checkpoint, export and verification report bodies are the offline verifier's
//! own types (`jitgate_proto::audit`: the `jit` CLI checks an export with the same code the
//! controller verifies with); the `audit` feature re-exports them here.

use serde::{Deserialize, Serialize};

use crate::list::Format;
use crate::wire::wire_enum;

#[cfg(feature = "audit")]
pub use jitgate_proto::audit::{
    ActivityEntry, Checkpoint, Export as ActivityExport, Report as VerifyReport,
};

wire_enum! {
    /// Activity log operations (Azure's names where Azure has one).
    pub enum Operation("operation", Other) {
        Initiate = "Initiate JIT Network Access",
        UpdatePolicy = "Update JIT Network Access Policy",
        DeletePolicy = "Delete JIT Network Access Policy",
        Revoke = "Revoke JIT Network Access",
        Expire = "Expire JIT Network Access",
        Apply = "Apply JIT Network Access",
        CreateToken = "Create API Token",
        RevokeToken = "Revoke API Token",
        UpdateToken = "Update API Token",
        AddVm = "Add Virtual Machine",
        AddGroup = "Add Resource Group",
        /// `jit apply`: a resource group's owner changed.
        UpdateGroup = "Update Resource Group",
        DeleteGroup = "Delete Resource Group",
        /// `jit apply`: a VM's addresses or resource group changed.
        UpdateVm = "Update Virtual Machine",
        DeleteVm = "Delete Virtual Machine",
        /// `jit apply`: a notification sink's definition changed.
        UpdateSink = "Update Notification Sink",
        CreateEnrollToken = "Create Agent Enrollment Token",
        EnrollAgent = "Enroll Agent",
        RevokeAgent = "Revoke Agent",
        AgentRejected = "Agent Rejected JIT Network Access",
        AgentResult = "Agent Result",
        LocalAccess = "Local Break-Glass JIT Network Access",
        AssignCompliance = "Assign Compliance Policy",
        UnassignCompliance = "Delete Compliance Policy Assignment",
        Remediate = "Remediate Compliance",
        Approve = "Approve JIT Network Access",
        Deny = "Deny JIT Network Access",
        Cancel = "Cancel JIT Network Access",
        ApprovalTimedOut = "Approval Timed Out JIT Network Access",
        AddSink = "Add Notification Sink",
        RemoveSink = "Remove Notification Sink",
        RetrySink = "Retry Notification Deliveries",
        DiscardDead = "Discard Dead Notification Deliveries",
        WriteSecret = "Write Notification Secret",
        SignIn = "Sign In",
        SignOut = "Sign Out",
        RevokeSession = "Revoke Session",
        /// A session ended because its refresh with the identity provider failed.
        SessionRefreshFailed = "Session Refresh Failed",
        /// `jit-controller login-link` made a one-time portal sign-in link.
        CreateLoginLink = "Create Login Link",
        /// A one-time sign-in link was redeemed (a session began).
        RedeemLoginLink = "Redeem Login Link",
        /// `jit-controller prune` deleted records past their retention (counts in details).
        Prune = "Prune Records Past Retention",
        /// `jit-controller keys rotate`: a new grant-signing key announced to agents.
        RotateKey = "Rotate Grant-Signing Key",
        /// `jit-controller keys retire`: the switch to the new key; the old one retired.
        RetireKey = "Retire Grant-Signing Key",
        /// An agent's certificate renewed over the channel (or the renewal refused).
        RenewAgentCertificate = "Renew Agent Certificate",
        /// An agent's marks were above what the database had issued (it was restored from a
        /// backup, or a replica lacking the last commits was promoted): the sequences moved
        /// past them and what the agent lacked was issued again (docs/ha.md).
        RecoverSequences = "Recover Sequence Numbers",
        /// `jit-controller keys replace-checkpoint`: a new checkpoint key; the old one's
        /// public half kept for the checkpoints it signed.
        ReplaceCheckpointKey = "Replace Checkpoint Key",
    }
}

wire_enum! {
    /// What an activity entry is about.
    pub enum ResourceType("resource type", Other) {
        VirtualMachine = "VirtualMachine",
        ResourceGroup = "ResourceGroup",
        Token = "Token",
        PolicyAssignment = "PolicyAssignment",
        NotificationSink = "NotificationSink",
        NotificationSecret = "NotificationSecret",
        Session = "Session",
        /// The controller's database as a whole (retention).
        Database = "Database",
        /// The controller's grant-signing key (rotation).
        GrantSigningKey = "GrantSigningKey",
        /// The key that signs the activity log's checkpoints.
        CheckpointKey = "CheckpointKey",
    }
}

wire_enum! {
    /// How an operation ended.
    pub enum ActivityOutcome("outcome", Other) {
        Succeeded = "Succeeded",
        /// A request refused by the policy.
        Denied = "Denied",
        Failed = "Failed",
    }
}

/// `GET /activityLog`: every filter is optional; times RFC 3339.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivityQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The operation's name, as entries carry it (`Initiate JIT Network Access`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// `Succeeded`, `Denied` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Inclusive lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Exclusive upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Entries with a greater seq (paging forward, oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// Entries with a smaller seq, newest first (paging back from the head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// json (default), jsonl or csv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// `GET /activityLog/checkpoints`: the signed checkpoints and the key that verifies them.
#[cfg(feature = "audit")]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointList {
    pub key_id: String,
    pub public_key_pem: String,
    pub value: Vec<Checkpoint>,
}
