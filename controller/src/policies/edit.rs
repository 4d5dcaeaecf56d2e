//! Setting a VM's or a resource group's policy, staged: authorised, validated (every
//! problem, each with its field), written in a write transaction together with its activity
//! entry and notification, and described — what it replaces, what changes, which VMs take it,
//! the entry it appends. The API's `PUT` commits a staging; the portal's preview is a staging
//! rolled back (so the preview is computed by the code that saves), and its save commits one
//! only if the stored policy is still the version the preview was made against.

use jitgate_api::{PolicyBody, PolicyScope, PolicyView};
use sha2::{Digest, Sha256};

use crate::authz::Caller;
use crate::error::Error;
use crate::policies::{self, Target};
use crate::policy::{Invalid, Policy};
use crate::policy_change::Change;
use crate::store::activity::NewActivity;
use crate::store::inventory;
use crate::store::policies::{self as stored, PolicyRow};
use crate::store::write::WriteTx;

/// The most VMs of a resource group a staging names (the count is always exact).
pub const AFFECTED_SHOWN: i64 = 200;

/// What a write requires of the stored policy first: the API's `If-Match` /
/// `If-None-Match: *`, the portal's previewed version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition<'a> {
    /// The stored policy is this version ([`version`]).
    Version(&'a str),
    /// There is a stored policy (`If-Match: *`).
    Exists,
    /// There is none (`If-None-Match: *`): create only.
    Absent,
}

impl Precondition<'_> {
    fn holds(self, row: Option<&PolicyRow>, stored: &str) -> bool {
        match self {
            Precondition::Version(v) => v == stored,
            Precondition::Exists => row.is_some(),
            Precondition::Absent => row.is_none(),
        }
    }
}

/// Why a policy was not staged.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The policy does not validate: every problem, each with its field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The stored policy is not what the [`Precondition`] requires (changed since it was
    /// read or previewed).
    #[error(
        "the stored policy is not the version given (it changed since it was read): nothing was changed; read it again"
    )]
    Stale,
    /// Not found, not allowed, or the controller's own failure.
    #[error(transparent)]
    Other(#[from] Error),
}

impl From<sqlx::Error> for EditError {
    fn from(e: sqlx::Error) -> EditError {
        EditError::Other(e.into())
    }
}

impl From<EditError> for Error {
    fn from(e: EditError) -> Error {
        match e {
            EditError::Invalid(i) => i.into(),
            EditError::Stale => {
                Error::refused(jitgate_api::ErrorCode::PolicyChanged, e.to_string())
            }
            EditError::Other(e) => e,
        }
    }
}

/// The VMs whose effective policy a target's policy is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affected {
    /// VMs that take this policy, by name (at most [`AFFECTED_SHOWN`]).
    pub vms: Vec<String>,
    /// How many VMs take it.
    pub count: i64,
    /// VMs of the group with a policy of their own, which keeps applying to them (a group's
    /// policy only; at most [`AFFECTED_SHOWN`]).
    pub own_policy: Vec<String>,
    pub own_policy_count: i64,
    /// For a VM's policy: its group has a policy, which this one replaces for the VM.
    pub overrides_group: bool,
}

/// A policy staged in a write transaction.
#[derive(Clone, Debug)]
pub struct Staged {
    pub scope: PolicyScope,
    pub name: String,
    pub group: String,
    /// The stored policy it replaces, as stored (None: there is none).
    pub before: Option<PolicyView>,
    /// The version of that stored policy ([`version`]).
    pub version: String,
    /// The policy as it is stored once saved (canonical).
    pub view: PolicyView,
    /// The change in words, and whether it weakens protection.
    pub change: Change,
    /// The activity entry the save appends.
    pub entry: NewActivity,
    pub affected: Affected,
}

/// The version of a target's stored policy: a digest of the row (what it says, who wrote it
/// and when); `none` without one. Any write changes it.
pub fn version(row: Option<&PolicyRow>) -> String {
    let Some(r) = row else {
        return "none".into();
    };
    let mut h = Sha256::new();
    h.update(r.scope_kind.as_str().as_bytes());
    h.update([0]);
    h.update(r.scope_name.as_bytes());
    h.update([0]);
    h.update(r.updated_ms.to_be_bytes());
    h.update(r.updated_by.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(&r.body.0).unwrap_or_default());
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stages `body` as the target's policy in `w`: resolved (not found otherwise), authorised
/// (rights before validity: a caller who may not write learns nothing of the rules),
/// validated as a new policy, refused as [`EditError::Stale`] if the stored policy does not
/// meet `expected`, then written with its activity entry and notification.
/// `explain`: also read the affected VMs. The caller commits or drops `w`.
pub async fn stage(
    w: &mut WriteTx,
    caller: &Caller,
    t: Target<'_>,
    body: &PolicyBody,
    expected: Option<Precondition<'_>>,
    explain: bool,
) -> Result<Staged, EditError> {
    let r = policies::resolve(w.conn(), t).await?;
    policies::authorize(caller, &r, true)?;
    let policy = Policy::check_new(body)?;
    let (row, version, affected) = current(w, caller, t, &r, expected, explain).await?;
    let written = policies::written(w, caller, t, &r.group, &policy).await?;
    Ok(Staged {
        scope: r.scope,
        name: r.name.to_string(),
        group: r.group,
        before: row.map(policies::view),
        version,
        view: written.view,
        change: written.change,
        entry: written.entry,
        affected,
    })
}

/// The target's stored policy and its version, refused as [`EditError::Stale`] unless it
/// meets `expected`; with `explain`, the VMs it affects.
async fn current(
    w: &mut WriteTx,
    caller: &Caller,
    t: Target<'_>,
    r: &policies::Resolved<'_>,
    expected: Option<Precondition<'_>>,
    explain: bool,
) -> Result<(Option<PolicyRow>, String, Affected), EditError> {
    let row = stored::get(w.conn(), r.scope, r.name).await?;
    let version = version(row.as_ref());
    check(expected, row.as_ref(), &version, caller, r)?;
    let affected = if explain {
        affected(w, t, &r.group).await?
    } else {
        Affected::default()
    };
    Ok((row, version, affected))
}

/// Refuses with [`EditError::Stale`] unless the stored policy meets `expected`.
fn check(
    expected: Option<Precondition<'_>>,
    row: Option<&PolicyRow>,
    version: &str,
    caller: &Caller,
    r: &policies::Resolved<'_>,
) -> Result<(), EditError> {
    if expected.is_none_or(|p| p.holds(row, version)) {
        return Ok(());
    }
    tracing::info!(
        policy = %r.name,
        scope = %r.scope.as_str(),
        caller = %caller.name(),
        "policy write refused: the stored policy is not the version given"
    );
    Err(EditError::Stale)
}

/// A policy's deletion staged in a write transaction.
#[derive(Clone, Debug)]
pub struct Unstaged {
    pub scope: PolicyScope,
    pub name: String,
    pub group: String,
    /// The policy it deletes, as stored.
    pub before: PolicyView,
    /// The version of that stored policy ([`version`]).
    pub version: String,
    /// The change in words (deleting always weakens protection of what it covered).
    pub change: Change,
    /// For a VM: whether its group's policy applies to it afterwards. For a group: the VMs
    /// that lose it and those that keep their own.
    pub affected: Affected,
}

/// Stages the deletion of the target's own policy in `w`: resolved, authorised, refused as
/// [`EditError::Stale`] if the stored policy does not meet `expected`, then deleted with its
/// activity entry and notification ([`policies::remove`]). The caller commits or drops `w`.
pub async fn unstage(
    w: &mut WriteTx,
    caller: &Caller,
    t: Target<'_>,
    expected: Option<Precondition<'_>>,
    explain: bool,
) -> Result<Unstaged, EditError> {
    let r = policies::resolve(w.conn(), t).await?;
    policies::authorize(caller, &r, true)?;
    let (row, version, affected) = current(w, caller, t, &r, expected, explain).await?;
    let change = policies::remove(w, caller, t).await?;
    // `remove` refused a target without a policy of its own, so there was a row.
    let Some(row) = row else {
        return Err(EditError::Other(Error::Internal(
            "policy deleted without a stored row".into(),
        )));
    };
    Ok(Unstaged {
        scope: r.scope,
        name: r.name.to_string(),
        group: r.group,
        before: policies::view(row),
        version,
        change,
        affected,
    })
}

/// The VMs whose effective policy the target's is: a VM itself (its own policy wins over
/// its group's); a group's VMs but those with a policy of their own.
async fn affected(w: &mut WriteTx, t: Target<'_>, group: &str) -> Result<Affected, EditError> {
    match t {
        Target::Vm(vm) => Ok(Affected {
            vms: vec![vm.to_string()],
            count: 1,
            overrides_group: stored::get(w.conn(), PolicyScope::ResourceGroup, group)
                .await?
                .is_some(),
            ..Affected::default()
        }),
        Target::Group(g) => {
            let list = inventory::group_vms_by_policy(w.conn(), g, AFFECTED_SHOWN).await?;
            Ok(Affected {
                vms: list.taking,
                count: list.taking_count,
                own_policy: list.own,
                own_policy_count: list.own_count,
                overrides_group: false,
            })
        }
    }
}
