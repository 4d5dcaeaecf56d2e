//! Approvals: who must approve a request (a policy port's `approval` rule), the principals
//! and groups that name them, and the decisions recorded on a request.
//!
//! Principals are typed and stable (`token:NAME`, `oidc:ISSUER#SUBJECT`, `link:NAME`): approver
//! lists, self-approval, "counts once" and request ownership compare these ids, never display
//! names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::name::{self, NameError};
use crate::wire::{KnownFields, wire_enum};

/// Who acts: a stable, typed identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalId {
    /// An API token, by its name.
    Token(String),
    /// A person signed in through an OpenID provider: the issuer and its subject.
    Oidc { issuer: String, subject: String },
    /// A portal one-time sign-in link: never an approver.
    Link(String),
    /// Root on the controller host (`jit-controller` subcommands).
    Local,
}

/// A principal or approver that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error(
        "{0:?} is not a principal: use token:NAME, oidc:ISSUER#SUBJECT, link:NAME \
         (approvers also group:NAME)"
    )]
    Syntax(String),
    #[error("{0:?}: a one-time sign-in link (link:) can never approve")]
    LinkApprover(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Longest issuer or subject accepted in an `oidc:` principal.
const MAX_OIDC_PART: usize = 255;

impl PrincipalId {
    /// Whether this principal may ever approve (links and the local administrator may not).
    pub fn may_approve(&self) -> bool {
        matches!(self, PrincipalId::Token(_) | PrincipalId::Oidc { .. })
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalId::Token(n) => write!(f, "token:{n}"),
            PrincipalId::Oidc { issuer, subject } => write!(f, "oidc:{issuer}#{subject}"),
            PrincipalId::Link(n) => write!(f, "link:{n}"),
            PrincipalId::Local => f.write_str("local:root"),
        }
    }
}

impl FromStr for PrincipalId {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<PrincipalId, PrincipalError> {
        let bad = || PrincipalError::Syntax(s.to_string());
        match s.split_once(':') {
            Some(("token", n)) => {
                name::validate("token", n)?;
                Ok(PrincipalId::Token(n.into()))
            }
            Some(("link", n)) => {
                name::validate("link", n)?;
                Ok(PrincipalId::Link(n.into()))
            }
            Some(("oidc", rest)) => {
                let (issuer, subject) = rest.rsplit_once('#').ok_or_else(bad)?;
                let ok = |x: &str| {
                    !x.is_empty()
                        && x.len() <= MAX_OIDC_PART
                        && x.chars()
                            .all(|c| c.is_ascii_graphic() && c != '#' && c != ',')
                };
                if !ok(issuer) || !ok(subject) {
                    return Err(bad());
                }
                Ok(PrincipalId::Oidc {
                    issuer: issuer.into(),
                    subject: subject.into(),
                })
            }
            Some(("local", "root")) => Ok(PrincipalId::Local),
            _ => Err(bad()),
        }
    }
}

impl Serialize for PrincipalId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PrincipalId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PrincipalId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry of a stage's approver list: a principal, or everyone in a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Approver {
    Principal(PrincipalId),
    Group(String),
}

impl fmt::Display for Approver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approver::Principal(p) => p.fmt(f),
            Approver::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl FromStr for Approver {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Approver, PrincipalError> {
        if let Some(g) = s.strip_prefix("group:") {
            name::validate("group", g)?;
            return Ok(Approver::Group(g.into()));
        }
        let p: PrincipalId = s.parse()?;
        if !p.may_approve() {
            return Err(PrincipalError::LinkApprover(s.to_string()));
        }
        Ok(Approver::Principal(p))
    }
}

/// One stage of an approval rule, as sent and shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalStage {
    /// `token:NAME`, `oidc:ISSUER#SUBJECT` or `group:NAME`.
    pub approvers: Vec<String>,
    /// Distinct principals named in the stage who must approve (at least 1).
    pub required: u32,
}

impl KnownFields for ApprovalStage {
    const FIELDS: &'static [&'static str] = &["approvers", "required"];
}

/// A policy port's `approval`: who must approve requests for it. Absent: approved by policy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRule {
    /// A request whose window is at most this (ISO 8601) is approved by policy, if every
    /// port it touches allows it. Absent: approval is always required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_approve_up_to: Option<String>,
    /// In order; each must complete before the next.
    pub stages: Vec<ApprovalStage>,
    #[serde(default)]
    pub allow_self_approval: bool,
    /// An admin may record an emergency approval (with a reason) that completes the request.
    #[serde(default)]
    pub allow_emergency: bool,
    /// How long a request may wait (ISO 8601, PT1M to P7D; default PT1H).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl KnownFields for ApprovalRule {
    const FIELDS: &'static [&'static str] = &[
        "autoApproveUpTo",
        "stages",
        "allowSelfApproval",
        "allowEmergency",
        "timeout",
    ];
}

wire_enum! {
    /// A decision on a pending request.
    pub enum Decision("decision", Other) {
        /// An approver approved (counts toward its stage).
        Approved = "Approved",
        /// An approver said no: the request is Denied / Rejected.
        Rejected = "Rejected",
        /// The requester (or an admin) withdrew it: Denied / Cancelled.
        Cancelled = "Cancelled",
        /// Nobody decided in time: Denied / ApprovalTimedOut.
        TimedOut = "TimedOut",
    }
}

/// `POST /api/v1/requests/{id}/approve`, `/deny`, `/cancel`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionBody {
    /// Optional to approve; required to deny and for an emergency approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Approve only: an admin's emergency approval, where every rule allows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emergency: bool,
}

impl KnownFields for DecisionBody {
    const FIELDS: &'static [&'static str] = &["reason", "emergency"];
}

/// One decision recorded on a request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// The stage (from 1) the approval counted for; absent for other decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// Who decided (`token:NAME`, ..., or `controller` for a timeout).
    pub approver: String,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emergency: bool,
    pub time_utc: String,
}

/// What a pending request still needs under one of its rules: the current stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingStage {
    /// The stage (from 1) of `stages` in the rule.
    pub stage: u32,
    pub stages: u32,
    pub required: u32,
    pub approvers: Vec<String>,
    /// Who has approved this stage so far.
    pub approved_by: Vec<String>,
}

/// `GET /api/v1/approvals`: with `history`, every decision (filterable); without, the
/// requests waiting for the caller's decision.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// json (default) or csv (history only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::list::Format>,
}

/// One row of the approvals report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalEntry {
    pub request_id: String,
    pub requestor: String,
    pub virtual_machines: Vec<String>,
    pub resource_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    pub approver: String,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub emergency: bool,
    pub time_utc: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_and_refuse_bad_syntax() {
        for s in [
            "token:alice",
            "oidc:https://idp.example/realms/x#1234-ab",
            "link:once",
        ] {
            assert_eq!(s.parse::<PrincipalId>().unwrap().to_string(), s);
        }
        for s in [
            "alice",
            "token:",
            "oidc:x",
            "oidc:#s",
            "oidc:i#",
            "user:bob",
            "token:a b",
        ] {
            assert!(s.parse::<PrincipalId>().is_err(), "{s}");
        }
        assert_eq!(
            "group:sec-leads".parse::<Approver>().unwrap(),
            Approver::Group("sec-leads".into())
        );
        assert!(matches!(
            "link:x".parse::<Approver>(),
            Err(PrincipalError::LinkApprover(_))
        ));
        assert!("local:root".parse::<Approver>().is_err());
        assert!("group:".parse::<Approver>().is_err());
    }

    #[test]
    fn rules_reject_unknown_fields() {
        let ok: ApprovalRule = serde_json::from_str(
            r#"{"stages":[{"approvers":["token:a"],"required":1}],"timeout":"PT2H"}"#,
        )
        .unwrap();
        assert!(!ok.allow_self_approval && !ok.allow_emergency);
        assert!(serde_json::from_str::<ApprovalRule>(r#"{"stages":[],"approverz":1}"#).is_err());
        assert!(serde_json::from_str::<DecisionBody>(r#"{"reasn":"x"}"#).is_err());
    }
}
