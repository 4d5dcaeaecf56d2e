//! Who signed in: the stable principal, what is shown, and the groups roles come from.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::TokenRejected;

/// Longest display name kept (characters); longer ones are cut.
const MAX_NAME_CHARS: usize = 256;
/// Longest group name accepted (bytes).
const MAX_GROUP_LEN: usize = 256;
/// Most groups accepted from one token.
const MAX_GROUPS: usize = 1000;
/// Longest subject (OpenID Connect Core 1.0 §2: at most 255 ASCII characters).
const MAX_SUBJECT_LEN: usize = 255;

/// `oidc:ISSUER#SUBJECT`: the stable id approvals, ownership and the activity log compare.
///
/// The issuer is the configured one, exactly; it has no `#` (an issuer URL has no fragment),
/// so the first `#` separates it from the subject. Display names are never part of it:
/// providers let people change them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Principal {
    id: String,
    hash_at: usize,
}

impl Principal {
    pub const PREFIX: &'static str = "oidc:";

    pub fn new(issuer: &str, subject: &str) -> Principal {
        Principal {
            id: format!("{}{issuer}#{subject}", Self::PREFIX),
            hash_at: Self::PREFIX.len() + issuer.len(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn issuer(&self) -> &str {
        &self.id[Self::PREFIX.len()..self.hash_at]
    }

    pub fn subject(&self) -> &str {
        &self.id[self.hash_at + 1..]
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl std::str::FromStr for Principal {
    type Err = String;
    fn from_str(s: &str) -> Result<Principal, String> {
        let rest = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| format!("{s:?} is not an oidc: principal"))?;
        match rest.split_once('#') {
            Some((iss, sub)) if !iss.is_empty() && !sub.is_empty() => Ok(Principal::new(iss, sub)),
            _ => Err(format!("{s:?} is not oidc:ISSUER#SUBJECT")),
        }
    }
}

impl TryFrom<String> for Principal {
    type Error = String;
    fn try_from(s: String) -> Result<Principal, String> {
        s.parse()
    }
}

impl From<Principal> for String {
    fn from(p: Principal) -> String {
        p.id
    }
}

/// The person a validated ID token names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub principal: Principal,
    /// From `name_claim`, else the email address, else the subject. For display only, as
    /// text: nothing is authorised on it. Control characters are replaced.
    pub display_name: String,
    /// The `email` claim, for display and notifications; never for authorisation (several
    /// providers let a person set an unverified address).
    pub email: Option<Email>,
    pub groups: Groups,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Email {
    pub address: String,
    /// `email_verified` as the provider said it; absent when it did not say.
    pub verified: Option<bool>,
}

/// The groups a person is in, as far as the ID token tells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Groups {
    /// The claim was there: these groups (possibly none).
    Known { groups: BTreeSet<String> },
    /// No role may come from groups, and `jit whoami` says why.
    Unknown { reason: GroupsUnknown },
}

/// Why the groups are unknown. Distinct from "in no group".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum GroupsUnknown {
    /// The provider replaced the claim by a pointer to an API (Entra ID does so above 200
    /// groups: `_claim_names` / `_claim_sources`, or `hasgroups`).
    Overage { claim: String },
    /// The token has no such claim: the provider does not send it (not configured, or the
    /// person is in no group it releases).
    NotSent { claim: String },
    /// The claim is neither a list of names nor one name.
    Malformed { claim: String, detail: String },
}

impl fmt::Display for GroupsUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupsUnknown::Overage { claim } => write!(
                f,
                "the identity provider left out the {claim:?} claim because you are in too many \
                 groups (group overage); ask your administrator to send only the groups assigned \
                 to jitgate, or app roles"
            ),
            GroupsUnknown::NotSent { claim } => write!(
                f,
                "the identity provider sent no {claim:?} claim: it is not configured to, or you \
                 are in no group it releases"
            ),
            GroupsUnknown::Malformed { claim, detail } => {
                write!(f, "the {claim:?} claim is unusable: {detail}")
            }
        }
    }
}

/// Which claims name the person; from `[oidc]`.
#[derive(Clone, Debug)]
pub(crate) struct ClaimNames {
    pub name: String,
    pub groups: String,
}

impl Identity {
    /// Builds the identity from the claims of an ID token that has been fully validated.
    pub(crate) fn from_claims(
        issuer: &str,
        claims: &Map<String, Value>,
        names: &ClaimNames,
    ) -> Result<Identity, TokenRejected> {
        let subject = match claims.get("sub") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(TokenRejected::Malformed("no `sub` claim".into())),
        };
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT_LEN
            || subject.chars().any(|c| c.is_control())
        {
            return Err(TokenRejected::Malformed(
                "`sub` is empty, longer than 255 bytes, or has control characters".into(),
            ));
        }
        let email = match claims.get("email") {
            Some(Value::String(a)) if !a.is_empty() => Some(Email {
                address: clean_text(a),
                verified: claims.get("email_verified").and_then(bool_claim),
            }),
            _ => None,
        };
        let display_name = match claims.get(&names.name) {
            Some(Value::String(n)) if !n.trim().is_empty() => clean_text(n.trim()),
            _ => match &email {
                Some(e) => e.address.clone(),
                None => clean_text(subject),
            },
        };
        Ok(Identity {
            principal: Principal::new(issuer, subject),
            display_name,
            email,
            groups: groups(claims, &names.groups),
        })
    }
}

/// Some providers send `email_verified` as a string.
fn bool_claim(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// Control characters replaced, length capped: display text only, escaped where shown.
fn clean_text(s: &str) -> String {
    s.chars()
        .take(MAX_NAME_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

fn groups(claims: &Map<String, Value>, claim: &str) -> Groups {
    let malformed = |detail: String| Groups::Unknown {
        reason: GroupsUnknown::Malformed {
            claim: claim.to_string(),
            detail,
        },
    };
    let valid =
        |g: &str| !g.is_empty() && g.len() <= MAX_GROUP_LEN && !g.chars().any(|c| c.is_control());
    match claims.get(claim) {
        // One name: e.g. Google's `hd` (hosted domain) used as the only group.
        Some(Value::String(g)) if valid(g) => Groups::Known {
            groups: BTreeSet::from([g.clone()]),
        },
        Some(Value::Array(items)) => {
            if items.len() > MAX_GROUPS {
                return malformed(format!("more than {MAX_GROUPS} entries"));
            }
            let mut set = BTreeSet::new();
            for item in items {
                match item {
                    Value::String(g) if valid(g) => {
                        set.insert(g.clone());
                    }
                    _ => {
                        return malformed(format!(
                            "an entry is not a group name (a non-empty string of at most \
                             {MAX_GROUP_LEN} bytes without control characters)"
                        ));
                    }
                }
            }
            Groups::Known { groups: set }
        }
        None | Some(Value::Null) if overage(claims, claim) => Groups::Unknown {
            reason: GroupsUnknown::Overage {
                claim: claim.to_string(),
            },
        },
        None | Some(Value::Null) => Groups::Unknown {
            reason: GroupsUnknown::NotSent {
                claim: claim.to_string(),
            },
        },
        Some(_) => malformed("neither a list of names nor one name".into()),
    }
}

/// Entra ID's overage markers: `_claim_names` naming the claim (distributed claims, OpenID
/// Connect Core §5.6.2), or `hasgroups: true`.
fn overage(claims: &Map<String, Value>, claim: &str) -> bool {
    let distributed =
        matches!(claims.get("_claim_names"), Some(Value::Object(m)) if m.contains_key(claim));
    let has_groups = matches!(claims.get("hasgroups"), Some(Value::Bool(true)));
    distributed || has_groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> ClaimNames {
        ClaimNames {
            name: "preferred_username".into(),
            groups: "groups".into(),
        }
    }

    fn id(claims: Value) -> Result<Identity, TokenRejected> {
        Identity::from_claims(
            "https://idp.example.net/realms/corp",
            claims.as_object().unwrap(),
            &names(),
        )
    }

    #[test]
    fn principal_is_issuer_and_subject() {
        let i = id(json!({"sub": "a#b", "preferred_username": "alice",
            "email": "alice@example.net", "email_verified": true, "groups": ["ops", "admins"]}))
        .unwrap();
        assert_eq!(
            i.principal.as_str(),
            "oidc:https://idp.example.net/realms/corp#a#b"
        );
        assert_eq!(i.principal.issuer(), "https://idp.example.net/realms/corp");
        assert_eq!(i.principal.subject(), "a#b");
        assert_eq!(
            i.principal.as_str().parse::<Principal>().unwrap(),
            i.principal
        );
        assert_eq!(i.display_name, "alice");
        assert_eq!(i.email.unwrap().verified, Some(true));
        assert_eq!(
            i.groups,
            Groups::Known {
                groups: BTreeSet::from(["admins".to_string(), "ops".to_string()])
            }
        );
        for bad in ["token:x", "oidc:", "oidc:#s", "oidc:https://i#"] {
            assert!(bad.parse::<Principal>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_name_falls_back_and_is_cleaned() {
        let i = id(json!({"sub": "s1", "email": "e@example.net"})).unwrap();
        assert_eq!(i.display_name, "e@example.net");
        let i = id(json!({"sub": "s1"})).unwrap();
        assert_eq!(i.display_name, "s1");
        let i = id(json!({"sub": "s1", "preferred_username": "evil\u{1b}[2Jname\n"})).unwrap();
        assert_eq!(i.display_name, "evil\u{FFFD}[2Jname");
        let long = "x".repeat(1000);
        let i = id(json!({"sub": "s1", "preferred_username": long})).unwrap();
        assert_eq!(i.display_name.chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn bad_subjects_are_refused() {
        for claims in [
            json!({}),
            json!({"sub": ""}),
            json!({"sub": 5}),
            json!({"sub": "a\nb"}),
            json!({"sub": "x".repeat(256)}),
        ] {
            assert!(matches!(id(claims), Err(TokenRejected::Malformed(_))));
        }
    }

    #[test]
    fn overage_is_unknown_not_empty() {
        let i = id(json!({"sub": "s", "_claim_names": {"groups": "src1"},
            "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}))
        .unwrap();
        assert!(matches!(
            i.groups,
            Groups::Unknown {
                reason: GroupsUnknown::Overage { .. }
            }
        ));
        let i = id(json!({"sub": "s", "hasgroups": true})).unwrap();
        assert!(matches!(
            i.groups,
            Groups::Unknown {
                reason: GroupsUnknown::Overage { .. }
            }
        ));
        let i = id(json!({"sub": "s"})).unwrap();
        assert!(matches!(
            i.groups,
            Groups::Unknown {
                reason: GroupsUnknown::NotSent { .. }
            }
        ));
        let i = id(json!({"sub": "s", "groups": []})).unwrap();
        assert_eq!(
            i.groups,
            Groups::Known {
                groups: BTreeSet::new()
            }
        );
        for bad in [
            json!(5),
            json!([1]),
            json!([""]),
            json!(["a\u{0}"]),
            json!({"a": 1}),
        ] {
            let i = id(json!({"sub": "s", "groups": bad})).unwrap();
            assert!(
                matches!(
                    i.groups,
                    Groups::Unknown {
                        reason: GroupsUnknown::Malformed { .. }
                    }
                ),
                "{bad}"
            );
        }
        let i = id(json!({"sub": "s", "groups": "example.com"})).unwrap();
        assert_eq!(
            i.groups,
            Groups::Known {
                groups: BTreeSet::from(["example.com".to_string()])
            }
        );
    }

    #[test]
    fn groups_serialise_as_tagged_states() {
        let g = Groups::Unknown {
            reason: GroupsUnknown::Overage {
                claim: "groups".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&g).unwrap(),
            json!({"state": "unknown", "reason": {"kind": "overage", "claim": "groups"}})
        );
    }
}
