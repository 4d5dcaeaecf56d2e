//! Compliance (docs/compliance.md): assignments, evaluations and their findings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::list::Format;
use crate::rights::Scope;
use crate::wire::{UnknownValue, wire_enum};

wire_enum! {
    /// A resource's state in an evaluation.
    pub enum ComplianceState("compliance state", Other) {
        Compliant = "Compliant",
        NonCompliant = "NonCompliant",
        /// Nothing observed (no agent, no status report).
        Unknown = "Unknown",
    }
}

wire_enum! {
    /// Why a resource is not compliant (or its state unknown).
    pub enum FindingCode("finding", Other) {
        ListeningUnprotected = "ListeningUnprotected",
        ReachableWithoutJit = "ReachableWithoutJit",
        EnforcementDetached = "EnforcementDetached",
        InterfaceUnprotected = "InterfaceUnprotected",
        ProgramUnhealthy = "ProgramUnhealthy",
        /// Another program runs ahead of jitgate on an interface (it may pass, drop or
        /// redirect packets before jitgate decides).
        ProgramNotFirst = "ProgramNotFirst",
        /// jitgate's program is missing from an interface it enforces on (its slot unloaded
        /// or its link removed by another tool).
        ProgramMissing = "ProgramMissing",
        StaleStatusReport = "StaleStatusReport",
        AgentOffline = "AgentOffline",
        NoAgent = "NoAgent",
        NoStatusReport = "NoStatusReport",
        Unmanaged = "Unmanaged",
    }
}

impl FindingCode {
    /// Findings that leave the state unknown rather than non-compliant (nothing observed).
    pub fn is_unknown(&self) -> bool {
        matches!(self, FindingCode::NoAgent | FindingCode::NoStatusReport)
    }
}

wire_enum! {
    pub enum ResourceKind("resource kind", Other) {
        VirtualMachine = "virtualMachine",
        /// Answers on management ports, registered nowhere.
        UnmanagedHost = "unmanagedHost",
    }
}

wire_enum! {
    /// Why an evaluation ran.
    pub enum ScanReason("scan reason", Other) {
        Schedule = "schedule",
        OnDemand = "on-demand",
    }
}

wire_enum! {
    pub enum AssignmentEffect("effect", Other) {
        Audit = "audit",
    }
}

/// `groupBy` of the report: `resourceGroup` (also `resource-group`) or `owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    ResourceGroup,
    Owner,
}

impl GroupBy {
    pub const fn as_str(self) -> &'static str {
        match self {
            GroupBy::ResourceGroup => "resourceGroup",
            GroupBy::Owner => "owner",
        }
    }
}

impl FromStr for GroupBy {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<GroupBy, UnknownValue> {
        match s {
            "resourceGroup" | "resource-group" => Ok(GroupBy::ResourceGroup),
            "owner" => Ok(GroupBy::Owner),
            _ => Err(UnknownValue {
                what: "groupBy",
                value: s.into(),
                allowed: &["resourceGroup", "owner"],
            }),
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for GroupBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GroupBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GroupBy, D::Error> {
        let s = <std::borrow::Cow<'de, str> as Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A finding: which port, which interface, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub code: FindingCode,
    /// `22/TCP`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `*` for a wildcard bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub reason: String,
}

/// One evaluated resource.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceResult {
    /// The VM's name, or an unmanaged host's address.
    pub resource: String,
    pub kind: ResourceKind,
    pub resource_group: String,
    pub owner: String,
    pub state: ComplianceState,
    pub findings: Vec<Finding>,
}

/// One evaluation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScanSummary {
    pub scan_id: i64,
    pub time_utc: String,
    pub reason: ScanReason,
    pub probed: bool,
    pub compliant: i64,
    pub non_compliant: i64,
    pub unknown: i64,
    /// Hosts answering on management ports that are not registered.
    pub unmanaged: i64,
    /// compliant / (compliant + nonCompliant) × 100; null when nothing was judged.
    pub compliance_percentage: Option<f64>,
}

impl ScanSummary {
    pub fn percentage(compliant: i64, non_compliant: i64) -> Option<f64> {
        let n = compliant + non_compliant;
        (n > 0).then(|| (compliant as f64) * 100.0 / (n as f64))
    }
}

/// Non-compliant resources of one resource group or owner (a remediation request).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceGroup {
    pub key: String,
    pub owner: String,
    pub non_compliant: Vec<ComplianceResult>,
}

/// `GET /compliance`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceReport {
    /// The evaluation shown (null: none yet).
    pub scan: Option<ScanSummary>,
    /// Counts within the requested scope.
    pub compliant: i64,
    pub non_compliant: i64,
    pub unknown: i64,
    pub unmanaged: i64,
    pub compliance_percentage: Option<f64>,
    pub results: Vec<ComplianceResult>,
    /// With `groupBy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<ComplianceGroup>>,
}

/// A policy assignment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub id: String,
    /// `*` (the whole fleet) or `rg:NAME`.
    pub scope: Scope,
    pub policy: String,
    pub effect: AssignmentEffect,
    pub created_time_utc: String,
    pub created_by: String,
}

/// `POST /compliance/scans`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScanBody {
    /// Probe the network first (default: use the last probe's exposures).
    #[serde(default)]
    pub probe: bool,
    /// Probe this range (CIDR) instead of the configured ones; it must lie inside one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

/// `POST /compliance/assignments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignBody {
    /// `*` (the whole fleet) or `rg:NAME`.
    pub scope: String,
}

/// `POST /compliance/remediate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemediateBody {
    pub virtual_machine: String,
    #[serde(default = "default_template")]
    pub template: String,
}

fn default_template() -> String {
    "default".into()
}

/// `GET /compliance/history`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComplianceHistoryQuery {
    /// The newest evaluations to list (1..=10000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// `*`, `rg:NAME` or `vm:NAME`: count only this part of what the caller may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// `GET /compliance`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportQuery {
    /// `*`, `rg:NAME` or `vm:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupBy>,
    /// RFC 3339: the state as of the newest evaluation at or before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// json (default) or csv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}
