//! JIT network access policies (Azure's `jitNetworkAccessPolicies`): what may be requested.

use serde::{Deserialize, Serialize};

pub use jitgate_common::{MaxConnections, MaxConnectionsError, OnExpiry};

use crate::wire::{KnownFields, lenient_vec, wire_enum};

wire_enum! {
    /// Where a policy is set (and where a VM's effective policy comes from).
    pub enum PolicyScope("policy scope") {
        VirtualMachine = "virtualMachine",
        ResourceGroup = "resourceGroup",
    }
}

/// One port of a policy, as sent and shown. Values are checked by the controller (each with
/// its own error code), so they travel as written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    pub number: u32,
    /// TCP, UDP or `*`.
    pub protocol: String,
    /// Give this or `allowedSourceAddressPrefixes`; `*` means any IPv4 and IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// ISO 8601, PT5M to PT24H.
    pub max_request_access_duration: String,
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// The most new connections a grant of this port may admit (1..=65535), and the limit
    /// of a request that names none; absent: unlimited (a request may still ask for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<MaxConnections>,
    /// Who must approve requests for this port; absent: approved by policy alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approval::ApprovalRule>,
}

impl KnownFields for PolicyPort {
    const FIELDS: &'static [&'static str] = &[
        "number",
        "protocol",
        "allowedSourceAddressPrefix",
        "allowedSourceAddressPrefixes",
        "maxRequestAccessDuration",
        "onExpiry",
        "maxConnections",
        "approval",
    ];

    fn prune(m: &mut serde_json::Map<String, serde_json::Value>) {
        use crate::approval::{ApprovalRule, ApprovalStage};
        crate::wire::retain_known(m, Self::FIELDS);
        if let Some(serde_json::Value::Object(rule)) = m.get_mut("approval") {
            ApprovalRule::prune(rule);
            if let Some(serde_json::Value::Array(stages)) = rule.get_mut("stages") {
                for s in stages {
                    if let serde_json::Value::Object(s) = s {
                        ApprovalStage::prune(s);
                    }
                }
            }
        }
    }
}

/// `PUT .../jitNetworkAccessPolicies/default`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyBody {
    pub ports: Vec<PolicyPort>,
}

/// A stored policy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub scope: PolicyScope,
    /// The VM's or the resource group's name.
    pub name: String,
    /// Port fields a newer controller adds are dropped, not refused.
    #[serde(deserialize_with = "lenient_vec")]
    pub ports: Vec<PolicyPort>,
    pub updated_time_utc: String,
    pub updated_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_from_a_newer_controller_reads() {
        let v: PolicyView = serde_json::from_str(
            r#"{"scope":"virtualMachine","name":"web1","updatedTimeUtc":"t","updatedBy":"a",
                "approvers":["x"],
                "ports":[{"number":22,"protocol":"TCP","allowedSourceAddressPrefix":"*",
                          "maxRequestAccessDuration":"PT1H","ttl":3,
                          "approval":{"escalateAfter":"PT1H",
                            "stages":[{"approvers":["token:a"],"required":1,"weight":2}]}}]}"#,
        )
        .unwrap();
        assert_eq!(v.ports[0].number, 22);
        assert_eq!(v.ports[0].approval.as_ref().unwrap().stages[0].required, 1);
        // A request body still refuses what it does not know.
        assert!(
            serde_json::from_str::<PolicyBody>(
                r#"{"ports":[{"number":22,"protocol":"TCP","maxRequestAccessDuration":"PT1H","x":1}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn known_fields_are_the_serialised_ones() {
        let p = PolicyPort {
            number: 22,
            protocol: "TCP".into(),
            allowed_source_address_prefix: Some("*".into()),
            allowed_source_address_prefixes: Some(vec![]),
            max_request_access_duration: "PT1H".into(),
            on_expiry: OnExpiry::Cut,
            max_connections: Some(MaxConnections::ONE),
            approval: Some(crate::approval::ApprovalRule {
                auto_approve_up_to: None,
                stages: vec![],
                allow_self_approval: false,
                allow_emergency: false,
                timeout: None,
            }),
        };
        let v = serde_json::to_value(&p).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = PolicyPort::FIELDS.to_vec();
        keys.sort();
        want.sort();
        assert_eq!(keys, want);
    }
}
