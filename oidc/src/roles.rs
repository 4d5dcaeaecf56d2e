//! `[[oidc.roles]]`: from a person's groups to the roles and scopes they hold.
//!
//! Roles and scopes are the controller's types (any `FromStr`), so a row with an unknown role
//! or scope is refused when the configuration is read, with the controller's own message.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::identity::{Groups, GroupsUnknown};

/// One `[[oidc.roles]]` row: members of `group` get `role` within `scope`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    try_from = "RawRoleRule",
    bound(deserialize = "R: FromStr, R::Err: fmt::Display, S: FromStr, S::Err: fmt::Display")
)]
pub struct RoleRule<R, S> {
    pub group: String,
    pub role: R,
    pub scope: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleRule {
    group: String,
    role: String,
    scope: String,
}

impl<R, S> TryFrom<RawRoleRule> for RoleRule<R, S>
where
    R: FromStr,
    R::Err: fmt::Display,
    S: FromStr,
    S::Err: fmt::Display,
{
    type Error = String;
    fn try_from(raw: RawRoleRule) -> Result<Self, String> {
        if raw.group.is_empty() || raw.group.chars().any(|c| c.is_control()) {
            return Err(format!(
                "oidc.roles: group {:?} must be a non-empty name without control characters",
                raw.group
            ));
        }
        let role = raw
            .role
            .parse()
            .map_err(|e| format!("oidc.roles (group {:?}): role: {e}", raw.group))?;
        let scope = raw
            .scope
            .parse()
            .map_err(|e| format!("oidc.roles (group {:?}): scope: {e}", raw.group))?;
        Ok(RoleRule {
            group: raw.group,
            role,
            scope,
        })
    }
}

/// One (role, scope) a person holds, and the groups that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleGrant<R, S> {
    pub role: R,
    pub scope: S,
    pub via_groups: Vec<String>,
}

/// Why a person holds no role: shown by `jit whoami` and on the portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRole {
    /// The groups are unknown (overage, claim not sent, malformed).
    GroupsUnknown {
        reason: GroupsUnknown,
        candidates: Vec<String>,
    },
    /// None of the person's groups has a row.
    NoMatch {
        groups: Vec<String>,
        candidates: Vec<String>,
    },
}

impl fmt::Display for NoRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ask = |f: &mut fmt::Formatter<'_>, c: &[String]| {
            if c.is_empty() {
                write!(f, "; no group grants a role yet ([[oidc.roles]] is empty)")
            } else {
                write!(f, "; ask for one of: {}", c.join(", "))
            }
        };
        match self {
            NoRole::GroupsUnknown { reason, candidates } => {
                write!(
                    f,
                    "your groups are unknown, so they map to no role: {reason}"
                )?;
                ask(f, candidates)
            }
            NoRole::NoMatch { groups, candidates } if groups.is_empty() => {
                write!(f, "you are in no group, so you have no role")?;
                ask(f, candidates)
            }
            NoRole::NoMatch { groups, candidates } => {
                write!(f, "your groups [{}] map to no role", groups.join(", "))?;
                ask(f, candidates)
            }
        }
    }
}

/// The union of every row whose group the person is in; each (role, scope) once, with the
/// groups that gave it. Group names compare exactly (case included).
pub fn map_roles<R, S>(
    groups: &Groups,
    rules: &[RoleRule<R, S>],
) -> Result<Vec<RoleGrant<R, S>>, NoRole>
where
    R: Clone + PartialEq,
    S: Clone + PartialEq,
{
    let candidates = || {
        let mut c: Vec<String> = Vec::new();
        for r in rules {
            if !c.contains(&r.group) {
                c.push(r.group.clone());
            }
        }
        c
    };
    let member_of = match groups {
        Groups::Known { groups } => groups,
        Groups::Unknown { reason } => {
            return Err(NoRole::GroupsUnknown {
                reason: reason.clone(),
                candidates: candidates(),
            });
        }
    };
    let mut grants: Vec<RoleGrant<R, S>> = Vec::new();
    for rule in rules.iter().filter(|r| member_of.contains(&r.group)) {
        match grants
            .iter_mut()
            .find(|g| g.role == rule.role && g.scope == rule.scope)
        {
            Some(g) => {
                if !g.via_groups.contains(&rule.group) {
                    g.via_groups.push(rule.group.clone());
                }
            }
            None => grants.push(RoleGrant {
                role: rule.role.clone(),
                scope: rule.scope.clone(),
                via_groups: vec![rule.group.clone()],
            }),
        }
    }
    if grants.is_empty() {
        return Err(NoRole::NoMatch {
            groups: member_of.iter().cloned().collect(),
            candidates: candidates(),
        });
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn rule(group: &str, role: &str, scope: &str) -> RoleRule<String, String> {
        RoleRule {
            group: group.into(),
            role: role.into(),
            scope: scope.into(),
        }
    }

    fn known(g: &[&str]) -> Groups {
        Groups::Known {
            groups: g.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn union_of_every_matching_row() {
        let rules = vec![
            rule("jit-admins", "admin", "*"),
            rule("prod-ops", "requester", "rg:prod"),
            rule("ops", "requester", "rg:prod"),
            rule("dev", "reader", "rg:dev"),
        ];
        let got = map_roles(&known(&["prod-ops", "ops", "jit-admins", "other"]), &rules).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].role.as_str(), got[0].scope.as_str()),
            ("admin", "*")
        );
        assert_eq!(got[1].via_groups, vec!["prod-ops", "ops"]);
        // Case matters: "Prod-Ops" is another group.
        let e = map_roles(&known(&["Prod-Ops"]), &rules).unwrap_err();
        assert_eq!(
            e.to_string(),
            "your groups [Prod-Ops] map to no role; ask for one of: jit-admins, prod-ops, ops, dev"
        );
        let e = map_roles(&known(&[]), &rules).unwrap_err();
        assert!(e.to_string().starts_with("you are in no group"), "{e}");
    }

    #[test]
    fn unknown_groups_give_no_role_and_say_why() {
        let rules = vec![rule("g", "admin", "*")];
        let e = map_roles(
            &Groups::Unknown {
                reason: GroupsUnknown::Overage {
                    claim: "groups".into(),
                },
            },
            &rules,
        )
        .unwrap_err();
        assert!(matches!(e, NoRole::GroupsUnknown { .. }));
        assert!(e.to_string().contains("overage"), "{e}");
    }
}
