//! The caller, VMs and resource groups.

use serde::{Deserialize, Serialize};

use crate::agents::{AgentConnection, VmAgent};
use crate::policy::{PolicyScope, PolicyView};
use crate::rights::{Role, Scope};

/// `GET /me`: the caller and its address as the controller sees it ("My IP").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub name: String,
    pub token_id: String,
    pub role: Role,
    pub scope: Scope,
    pub caller_address: String,
}

/// One VM in `GET /virtualMachines`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Vm {
    pub name: String,
    pub resource_group: String,
    pub addresses: Vec<String>,
    /// Where the effective policy comes from; null: none.
    pub policy_source: Option<PolicyScope>,
    /// The VM's agent: online, degraded, offline or none.
    pub status: AgentConnection,
    /// Why it is degraded.
    pub problems: Vec<String>,
}

/// `GET /virtualMachines/{vm}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmDetail {
    pub name: String,
    pub resource_group: String,
    pub addresses: Vec<String>,
    pub effective_policy: Option<PolicyView>,
    /// Its agent (null: none was ever enrolled; absent from older controllers).
    #[serde(default)]
    pub agent: Option<VmAgent>,
}

/// One group in `GET /resourceGroups`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceGroup {
    pub name: String,
    /// Who receives the group's remediation requests.
    pub owner: String,
}
