//! Who may do what: the one place where the controller decides. The domain functions call
//! [`authorize`] (the HTTP handlers never check rights themselves), so every client of the
//! domain layer, the API today and the portal later, gets the same answer.
//!
//! | action | role | the scope must cover |
//! |---|---|---|
//! | read a VM, its policy, history, connections, agent audit | reader | the VM |
//! | read a group's policy | reader | the group |
//! | initiate | requester | every VM of the request |
//! | revoke or cancel own request | requester | every VM of the request |
//! | approve or deny (when the rule's current stage names the caller) | reader | every VM of the request |
//! | emergency approval (where every rule allows it) | admin | every VM of the request |
//! | revoke anyone's request, write a VM's policy, remediate | admin | the VM (each VM) |
//! | write a group's policy | admin | the group |
//! | verify, export, list checkpoints | reader | `*` |
//! | sign a checkpoint, run, assign or unassign compliance | admin | `*` |
//! | list notification sinks and secret names | admin | anything |
//! | add, remove, test, re-drive a notification sink | admin | the sink's scope (no scope: `*`) |
//! | write a notification secret | admin | `*` |
//! | list or revoke people's sessions | admin | `*` |
//! | read the grant-signing keys' status | admin | `*` |
//! | create or delete a resource group | admin | `*` |
//! | change a resource group's owner | admin | the group |
//! | add, change or delete a VM (its addresses, its group) | admin | the VM's group (both, to move it) |
//! | manage tokens, agents and enrolment | root on the host | |

use std::net::IpAddr;

use jitgate_api::{ErrorCode, PrincipalId, Role, Scope};

use crate::error::{Error, Result};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An API token (`id`), named `name` (shown as requestor and caller).
    Token { id: String, name: String },
    /// A person signed in through the OpenID provider, in session `session`. The display
    /// name is for display only: nothing is authorised on it.
    Person {
        issuer: String,
        subject: String,
        display_name: String,
        session: String,
    },
    /// Signed in to the portal with a one-time link (`link:NAME`), in session `session`;
    /// never an approver.
    Link { name: String, session: String },
    /// Root on the controller host: the `jit-controller` subcommands.
    Local,
}

/// One role within one scope. A caller holds the union of its grants: an action is allowed
/// when any one grant allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub scope: Scope,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.role.as_str(), self.scope)
    }
}

/// The authenticated caller of one call.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    /// What the caller may do (a token: exactly one; a person: one per matching
    /// `[[oidc.roles]]` row, possibly none).
    pub grants: Vec<Grant>,
    /// The caller's address as the controller sees it (after the trusted-proxy rule).
    pub address: IpAddr,
    /// The groups the principal belongs to (approver lists name groups).
    pub groups: Vec<String>,
}

impl Caller {
    pub fn token(
        id: impl Into<String>,
        name: impl Into<String>,
        role: Role,
        scope: Scope,
        address: IpAddr,
    ) -> Caller {
        Caller {
            principal: Principal::Token {
                id: id.into(),
                name: name.into(),
            },
            grants: vec![Grant { role, scope }],
            address,
            groups: Vec::new(),
        }
    }

    /// A signed-in person with the grants its groups map to.
    pub fn person(principal: Principal, grants: Vec<Grant>, address: IpAddr) -> Caller {
        Caller {
            principal,
            grants,
            address,
            groups: Vec::new(),
        }
    }

    /// The same caller, member of `groups`.
    pub fn with_groups(mut self, groups: Vec<String>) -> Caller {
        self.groups = groups;
        self
    }

    /// The stable principal id (approvals and ownership compare these, never names).
    pub fn principal_id(&self) -> PrincipalId {
        match &self.principal {
            Principal::Token { name, .. } => PrincipalId::Token(name.clone()),
            Principal::Person {
                issuer, subject, ..
            } => PrincipalId::Oidc {
                issuer: issuer.clone(),
                subject: subject.clone(),
            },
            Principal::Link { name, .. } => PrincipalId::Link(name.clone()),
            Principal::Local => PrincipalId::Local,
        }
    }

    /// The local administrator running `jit-controller` subcommands on the host.
    pub fn local() -> Caller {
        Caller {
            principal: Principal::Local,
            grants: vec![Grant {
                role: Role::Admin,
                scope: Scope::All,
            }],
            address: IpAddr::from([127, 0, 0, 1]),
            groups: Vec::new(),
        }
    }

    /// The principal's name, as history and the activity log show it (a person's display
    /// name).
    pub fn name(&self) -> &str {
        match &self.principal {
            Principal::Token { name, .. } => name,
            Principal::Person { display_name, .. } => display_name,
            Principal::Link { name, .. } => name,
            Principal::Local => "local:root",
        }
    }

    /// The token's id (empty for a person and the local administrator).
    pub fn token_id(&self) -> &str {
        match &self.principal {
            Principal::Token { id, .. } => id,
            Principal::Person { .. } | Principal::Link { .. } | Principal::Local => "",
        }
    }

    /// The session a person calls in (None for tokens and the local administrator).
    pub fn session_id(&self) -> Option<&str> {
        match &self.principal {
            Principal::Person { session, .. } | Principal::Link { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The scopes of all grants (what lists are limited to).
    pub fn scopes(&self) -> Vec<Scope> {
        self.grants.iter().map(|g| g.scope.clone()).collect()
    }

    /// The grants as one line for messages and logs: `admin on *, requester on rg:prod`.
    pub fn grants_text(&self) -> String {
        if self.grants.is_empty() {
            return "no role".into();
        }
        let list: Vec<String> = self.grants.iter().map(Grant::to_string).collect();
        list.join(", ")
    }

    /// How the activity log names this caller: a person by display name and principal id
    /// (the display name alone could be anyone's).
    pub fn actor(&self) -> Actor {
        match &self.principal {
            Principal::Token { name, .. } => Actor {
                name: name.clone(),
                address: self.address.to_string(),
            },
            Principal::Person { display_name, .. } => Actor {
                name: format!("{display_name} ({})", self.principal_id()),
                address: self.address.to_string(),
            },
            Principal::Link { .. } => Actor {
                name: self.principal_id().to_string(),
                address: self.address.to_string(),
            },
            Principal::Local => Actor::local(),
        }
    }

    /// Whether some grant has at least `min` within a scope for which `covers` holds.
    fn holds(&self, min: Role, covers: impl Fn(&Scope) -> bool) -> bool {
        self.grants
            .iter()
            .any(|g| g.role >= min && covers(&g.scope))
    }
}

/// Who did something, as the activity log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub address: String,
}

impl Actor {
    /// The local administrator on the host.
    pub fn local() -> Actor {
        Actor {
            name: "local:root".into(),
            address: "local".into(),
        }
    }
    /// The controller itself (expiry, background work).
    pub fn controller() -> Actor {
        Actor {
            name: "controller".into(),
            address: "local".into(),
        }
    }
    /// An agent, over its channel.
    pub fn agent(id: impl std::fmt::Display) -> Actor {
        Actor {
            name: format!("agent:{id}"),
            address: "agent-channel".into(),
        }
    }
    /// Whoever presents an enrolment token (no principal yet).
    pub fn enrollment(address: &str) -> Actor {
        Actor {
            name: "agent-enrollment".into(),
            address: address.into(),
        }
    }
}

/// What a caller wants to do, on what.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// Read a VM and what hangs off it (policy, history, connections, agent audit).
    ReadVm {
        vm: &'a str,
        group: &'a str,
    },
    /// Ask for access to a VM.
    Initiate {
        vm: &'a str,
        group: &'a str,
    },
    /// Write or delete a VM's own policy; remediate it.
    WriteVmPolicy {
        vm: &'a str,
        group: &'a str,
    },
    ReadGroupPolicy {
        group: &'a str,
    },
    WriteGroupPolicy {
        group: &'a str,
    },
    /// Revoke requests at all (checked before the request is looked up).
    RevokeRequests,
    /// Revoke or cancel this request (whose requester is the principal `owner`) on this VM.
    Revoke {
        owner: &'a str,
        vm: &'a str,
        group: &'a str,
    },
    /// Approve or deny a request touching this VM (as an approver the rule names: any role;
    /// whether the rule names the caller is the approval engine's check).
    Decide {
        vm: &'a str,
        group: &'a str,
    },
    /// Record an emergency approval on a request touching this VM.
    EmergencyApprove {
        vm: &'a str,
        group: &'a str,
    },
    /// Anything that spans the whole controller: a request with no VM in the caller's scope,
    /// verification, exports, checkpoints.
    ReadAll,
    /// Sign a checkpoint; run, assign or unassign compliance.
    AdministerAll,
    /// See the notification sinks at all, and the names of their secrets.
    ListSinks,
    /// Add, remove, test or re-drive a notification sink reaching this much.
    ManageSink {
        reach: SinkReach<'a>,
    },
    /// List or revoke people's sign-in sessions.
    ManageSessions,
    /// Read the grant-signing keys' status (ids, states, acknowledgements; never a private
    /// half).
    ReadKeys,
    /// Create or delete a resource group (a new name is a new scope: only an admin of `*`).
    CreateOrDeleteGroup,
    /// Change a resource group's owner.
    ChangeGroup {
        group: &'a str,
    },
    /// Add, change or delete a VM in this resource group (a VM-scoped admin may not: the
    /// group a VM is in decides who reaches it).
    WriteVm {
        group: &'a str,
    },
    /// Tokens, agent credentials and enrolment: root on the host only.
    Administer,
}

/// What a notification sink reaches: its scope, resolved to the VM's resource group.
#[derive(Clone, Copy, Debug)]
pub enum SinkReach<'a> {
    /// No scope: every VM (only an admin of scope `*`).
    Everything,
    Group(&'a str),
    Vm {
        vm: &'a str,
        group: &'a str,
    },
}

/// Allowed, or `Forbidden` (logged with the caller and what it lacked).
pub fn authorize(c: &Caller, action: Action<'_>) -> Result<()> {
    decide(c, action).inspect_err(|e| {
        tracing::warn!(
            caller = %c.name(),
            token = %c.token_id(),
            grants = %c.grants_text(),
            address = %c.address,
            error = %e,
            "forbidden"
        );
    })
}

/// Whether the caller may do it (nothing logged: for choosing what to offer or touch, e.g.
/// which undeclared objects `jit apply --prune` deletes).
pub fn allowed(c: &Caller, action: Action<'_>) -> bool {
    decide(c, action).is_ok()
}

fn decide(c: &Caller, action: Action<'_>) -> Result<()> {
    let vm = |min: Role, vm: &str, group: &str| {
        if c.holds(min, |s| s.covers_vm(vm, group)) {
            Ok(())
        } else {
            Err(deny(c, &format!("VM {vm}"), min))
        }
    };
    let group = |min: Role, group: &str| {
        if c.holds(min, |s| s.covers_group(group)) {
            Ok(())
        } else {
            Err(deny(c, &format!("resource group {group}"), min))
        }
    };
    let all = |min: Role| {
        if c.holds(min, |s| *s == Scope::All) {
            Ok(())
        } else {
            Err(deny(c, "the whole controller (scope *)", min))
        }
    };
    match action {
        Action::ReadVm { vm: v, group: g } => vm(Role::Reader, v, g),
        Action::Initiate { vm: v, group: g } => vm(Role::Requester, v, g),
        Action::WriteVmPolicy { vm: v, group: g } => vm(Role::Admin, v, g),
        Action::ReadGroupPolicy { group: g } => group(Role::Reader, g),
        Action::WriteGroupPolicy { group: g } => group(Role::Admin, g),
        Action::RevokeRequests if !c.holds(Role::Requester, |_| true) => all(Role::Requester),
        Action::RevokeRequests => Ok(()),
        Action::Revoke {
            owner,
            vm: v,
            group: g,
        } => {
            // An admin over the VM revokes anyone's; otherwise only one's own, as a requester
            // over the VM.
            if c.holds(Role::Admin, |s| s.covers_vm(v, g)) {
                return Ok(());
            }
            if c.holds(Role::Admin, |_| true) && !c.holds(Role::Requester, |s| s.covers_vm(v, g)) {
                return vm(Role::Admin, v, g);
            }
            vm(Role::Requester, v, g)?;
            if owner != c.principal_id().to_string() {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    format!(
                        "{} may revoke or cancel only its own requests; this one is {owner}'s \
                         (an admin may revoke any)",
                        c.principal_id()
                    ),
                ));
            }
            Ok(())
        }
        Action::Decide { vm: v, group: g } => vm(Role::Reader, v, g),
        Action::EmergencyApprove { vm: v, group: g } => vm(Role::Admin, v, g),
        Action::ReadAll => all(Role::Reader),
        Action::ListSinks if c.holds(Role::Admin, |_| true) => Ok(()),
        Action::ListSinks => Err(deny(c, "notification sinks", Role::Admin)),
        Action::ManageSink { reach } => match reach {
            SinkReach::Everything => all(Role::Admin),
            SinkReach::Group(g) => group(Role::Admin, g),
            SinkReach::Vm { vm: v, group: g } => vm(Role::Admin, v, g),
        },
        Action::AdministerAll
        | Action::ManageSessions
        | Action::ReadKeys
        | Action::CreateOrDeleteGroup => all(Role::Admin),
        Action::ChangeGroup { group: g } | Action::WriteVm { group: g } => group(Role::Admin, g),
        Action::Administer => match c.principal {
            Principal::Local => Ok(()),
            Principal::Token { .. } | Principal::Person { .. } | Principal::Link { .. } => {
                Err(deny(c, "tokens and agents (root on the host)", Role::Admin))
            }
        },
    }
}

/// Whether a VM shows in the caller's lists.
pub fn sees_vm(c: &Caller, vm: &str, group: &str) -> bool {
    c.grants.iter().any(|g| g.scope.covers_vm(vm, group))
}

/// Whether a notification sink shows in the caller's lists (an admin sees the sinks within
/// their scope).
pub fn sees_sink(c: &Caller, reach: SinkReach<'_>) -> bool {
    c.holds(Role::Admin, |s| match reach {
        SinkReach::Everything => *s == Scope::All,
        SinkReach::Group(g) => s.covers_group(g),
        SinkReach::Vm { vm, group } => s.covers_vm(vm, group),
    })
}

/// Whether a resource group shows in the caller's lists.
pub fn sees_group(c: &Caller, group: &str) -> bool {
    c.grants.iter().any(|g| g.scope.covers_group(group))
}

fn deny(c: &Caller, what: &str, min: Role) -> Error {
    Error::refused(
        ErrorCode::Forbidden,
        format!(
            "{} ({}) may not do this on {what}: it needs role {} with a scope covering it",
            c.name(),
            c.grants_text(),
            min.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, scope: &str) -> Caller {
        Caller::token(
            "t",
            "alice",
            role,
            scope.parse().unwrap(),
            IpAddr::from([127, 0, 0, 1]),
        )
    }

    fn ok(c: &Caller, a: Action<'_>) -> bool {
        authorize(c, a).is_ok()
    }

    #[test]
    fn roles_and_scopes() {
        let web1 = Action::ReadVm {
            vm: "web1",
            group: "prod",
        };
        let db1 = Action::ReadVm {
            vm: "db1",
            group: "dev",
        };
        let r = caller(Role::Reader, "rg:prod");
        assert!(ok(&r, web1) && !ok(&r, db1));
        assert!(!ok(
            &r,
            Action::Initiate {
                vm: "web1",
                group: "prod"
            }
        ));
        assert!(!ok(&r, Action::ReadAll) && !ok(&caller(Role::Reader, "*"), Action::AdministerAll));
        assert!(ok(&caller(Role::Reader, "*"), Action::ReadAll));
        let v = caller(Role::Admin, "vm:web1");
        assert!(ok(
            &v,
            Action::WriteVmPolicy {
                vm: "web1",
                group: "prod"
            }
        ));
        assert!(!ok(&v, Action::WriteGroupPolicy { group: "prod" }));
        // VMs and groups: a group's admin adds its VMs and names its owner; only an admin of
        // `*` makes or removes a group; a VM's admin does neither.
        let g = caller(Role::Admin, "rg:prod");
        assert!(
            ok(&g, Action::WriteVm { group: "prod" }) && !ok(&g, Action::WriteVm { group: "dev" })
        );
        assert!(
            ok(&g, Action::ChangeGroup { group: "prod" }) && !ok(&g, Action::CreateOrDeleteGroup)
        );
        assert!(!ok(&v, Action::WriteVm { group: "prod" }));
        assert!(!ok(
            &caller(Role::Requester, "*"),
            Action::WriteVm { group: "prod" }
        ));
        assert!(ok(&caller(Role::Admin, "*"), Action::CreateOrDeleteGroup));
        // Only root on the host administers, whatever a token's rights.
        assert!(!ok(&caller(Role::Admin, "*"), Action::Administer));
        assert!(ok(&Caller::local(), Action::Administer));
    }

    #[test]
    fn revocation() {
        let revoke = |owner| Action::Revoke {
            owner,
            vm: "web1",
            group: "prod",
        };
        // Ownership compares principal ids, never display names.
        let alice = caller(Role::Requester, "rg:prod");
        assert!(ok(&alice, Action::RevokeRequests));
        assert!(ok(&alice, revoke("token:alice")) && !ok(&alice, revoke("token:bob")));
        assert!(!ok(&alice, revoke("alice")));
        assert!(ok(&caller(Role::Admin, "vm:web1"), revoke("token:bob")));
        assert!(!ok(&caller(Role::Admin, "vm:db1"), revoke("token:bob")));
        let reader = caller(Role::Reader, "*");
        assert!(!ok(&reader, Action::RevokeRequests) && !ok(&reader, revoke("token:alice")));
        // Any role may decide where the rule names it; emergency approval needs admin.
        let decide = Action::Decide {
            vm: "web1",
            group: "prod",
        };
        let emergency = Action::EmergencyApprove {
            vm: "web1",
            group: "prod",
        };
        assert!(ok(&reader, decide) && !ok(&caller(Role::Reader, "rg:dev"), decide));
        assert!(!ok(&reader, emergency) && ok(&caller(Role::Admin, "rg:prod"), emergency));
    }

    #[test]
    fn a_person_holds_the_union_of_its_grants() {
        let person = |grants: Vec<(Role, &str)>| {
            Caller::person(
                Principal::Person {
                    issuer: "https://op.example".into(),
                    subject: "s1".into(),
                    display_name: "alice".into(),
                    session: "ses_1".into(),
                },
                grants
                    .into_iter()
                    .map(|(role, s)| Grant {
                        role,
                        scope: s.parse().unwrap(),
                    })
                    .collect(),
                IpAddr::from([127, 0, 0, 1]),
            )
        };
        let init = |vm, group| Action::Initiate { vm, group };
        let p = person(vec![(Role::Reader, "*"), (Role::Requester, "rg:prod")]);
        assert!(ok(&p, init("web1", "prod")) && !ok(&p, init("db1", "dev")));
        assert!(ok(&p, Action::ReadAll) && !ok(&p, Action::AdministerAll));
        assert!(sees_vm(&p, "db1", "dev"));
        assert!(
            !ok(&p, Action::Administer),
            "people never administer tokens"
        );
        // Ownership is the oidc principal id, never the display name.
        let revoke = |owner| Action::Revoke {
            owner,
            vm: "web1",
            group: "prod",
        };
        assert!(ok(&p, revoke("oidc:https://op.example#s1")));
        assert!(!ok(&p, revoke("token:alice")));
        // No matching group: signed in, sees nothing, may do nothing.
        let none = person(vec![]);
        assert!(!ok(
            &none,
            Action::ReadVm {
                vm: "web1",
                group: "prod"
            }
        ));
        assert!(!ok(&none, Action::RevokeRequests) && !sees_vm(&none, "web1", "prod"));
        assert_eq!(none.grants_text(), "no role");
        // An admin grant on one group does not lift a requester grant elsewhere.
        let mixed = person(vec![(Role::Admin, "rg:dev"), (Role::Requester, "rg:prod")]);
        assert!(ok(&mixed, revoke("oidc:https://op.example#s1")));
        assert!(!ok(&mixed, revoke("token:bob")));
    }
}
