//! Policies as code (`jit apply`, `jit export`; docs/operations.md "Policies as code"): the
//! declaration document, the body that sends it, and the plan the controller answers.
//!
//! The document is the file's format (TOML, snake_case keys, unknown keys refused): it
//! travels inside the camelCase JSON body with the keys it has in the file, so that a file,
//! `jit export` and `jit export --json` all speak one vocabulary. The plan is camelCase.

use serde::{Deserialize, Serialize};

use crate::approval::{ApprovalRule, ApprovalStage};
use crate::policy::{MaxConnections, OnExpiry, PolicyPort};
use crate::wire::wire_enum;

/// What a declaration file holds. Every list may be absent (nothing of that kind declared).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_groups: Vec<GroupDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<VmDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compliance_assignments: Vec<AssignmentDecl>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkDecl>,
}

/// A resource group and the owner who receives its remediation requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDecl {
    pub name: String,
    pub owner: String,
}

/// A VM, its resource group and its addresses (what compliance probes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDecl {
    pub name: String,
    pub resource_group: String,
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A JIT policy: a VM's own (`vm`) or a resource group's (`resource_group`), exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDecl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    pub ports: Vec<PortDecl>,
}

/// A policy port: the API's `PolicyPort` with the file's snake_case keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDecl {
    pub number: u32,
    /// TCP, UDP or `*`.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// ISO 8601, PT5M to PT24H.
    pub max_request_access_duration: String,
    #[serde(default)]
    pub on_expiry: OnExpiry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<MaxConnections>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalDecl>,
}

/// A port's approval rule: the API's `ApprovalRule` with the file's snake_case keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_approve_up_to: Option<String>,
    pub stages: Vec<ApprovalStage>,
    #[serde(default)]
    pub allow_self_approval: bool,
    #[serde(default)]
    pub allow_emergency: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Where the compliance policy is assigned: `*` or `rg:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentDecl {
    pub scope: String,
}

/// A notification sink. Its target may be a credential (a Slack or Teams URL): `jit export`
/// leaves a URL out, `target_file` names a file `jit` reads it from, and a sink that exists
/// keeps its target when none is given. Webhook signing secrets are named (`secret`), never
/// written here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDecl {
    pub name: String,
    /// `webhook`, `slack`, `teams` or `email`.
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A file holding the target (read by `jit`, relative to the declaration file; never
    /// sent to the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_file: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_group: Option<String>,
}

impl From<PortDecl> for PolicyPort {
    fn from(p: PortDecl) -> PolicyPort {
        PolicyPort {
            number: p.number,
            protocol: p.protocol,
            allowed_source_address_prefix: p.allowed_source_address_prefix,
            allowed_source_address_prefixes: p.allowed_source_address_prefixes,
            max_request_access_duration: p.max_request_access_duration,
            on_expiry: p.on_expiry,
            max_connections: p.max_connections,
            approval: p.approval.map(|a| ApprovalRule {
                auto_approve_up_to: a.auto_approve_up_to,
                stages: a.stages,
                allow_self_approval: a.allow_self_approval,
                allow_emergency: a.allow_emergency,
                timeout: a.timeout,
            }),
        }
    }
}

impl From<PolicyPort> for PortDecl {
    fn from(p: PolicyPort) -> PortDecl {
        PortDecl {
            number: p.number,
            protocol: p.protocol,
            allowed_source_address_prefix: p.allowed_source_address_prefix,
            allowed_source_address_prefixes: p.allowed_source_address_prefixes,
            max_request_access_duration: p.max_request_access_duration,
            on_expiry: p.on_expiry,
            max_connections: p.max_connections,
            approval: p.approval.map(|a| ApprovalDecl {
                auto_approve_up_to: a.auto_approve_up_to,
                stages: a.stages,
                allow_self_approval: a.allow_self_approval,
                allow_emergency: a.allow_emergency,
                timeout: a.timeout,
            }),
        }
    }
}

/// `POST /apply`: a document, and what to do with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyBody {
    pub document: Document,
    /// Only compute and return the plan; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Delete what the caller may manage and the document does not declare.
    #[serde(default)]
    pub prune: bool,
}

wire_enum! {
    /// What a plan does to one object.
    pub enum PlanAction("plan action", Other) {
        Create = "create",
        Change = "change",
        Delete = "delete",
    }
}

wire_enum! {
    /// The kinds of object a document declares.
    pub enum DeclKind("object kind", Other) {
        ResourceGroup = "resourceGroup",
        VirtualMachine = "virtualMachine",
        Policy = "policy",
        ComplianceAssignment = "complianceAssignment",
        NotificationSink = "notificationSink",
    }
}

/// One field of one object, before and after (absent: the field has no value on that side;
/// a value that may be a credential shows as `(not shown)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// The field's path in the file's vocabulary, e.g. `ports[22/TCP].max_request_access_duration`.
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One object the plan creates, changes or deletes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    pub action: PlanAction,
    pub kind: DeclKind,
    /// The object's name (`vm:NAME` or `rg:NAME` for a policy, the scope of an assignment).
    pub name: String,
    #[serde(default)]
    pub fields: Vec<FieldChange>,
}

/// The answer to `POST /apply`: the plan, and whether it was applied (false for a dry run
/// and for an empty plan).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    #[serde(default)]
    pub changes: Vec<PlannedChange>,
    pub applied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_convert_both_ways_unchanged() {
        let p: PolicyPort = serde_json::from_str(
            r#"{"number":22,"protocol":"TCP","allowedSourceAddressPrefixes":["203.0.113.0/24"],
                "maxRequestAccessDuration":"PT1H","onExpiry":"cut",
                "approval":{"autoApproveUpTo":"PT15M","stages":[{"approvers":["group:ops"],"required":1}],
                "allowEmergency":true}}"#,
        )
        .unwrap();
        let d = PortDecl::from(p.clone());
        assert_eq!(PolicyPort::from(d), p);
    }

    #[test]
    fn a_document_refuses_unknown_keys_and_camel_case() {
        assert!(
            serde_json::from_str::<Document>(r#"{"vms":[{"name":"a","resourceGroup":"p"}]}"#)
                .is_err()
        );
        let d: Document =
            serde_json::from_str(r#"{"vms":[{"name":"a","resource_group":"p"}]}"#).unwrap();
        assert_eq!(d.vms[0].resource_group, "p");
        let b: ApplyBody =
            serde_json::from_str(r#"{"document":{},"dryRun":true,"prune":false}"#).unwrap();
        assert!(b.dry_run);
    }
}
