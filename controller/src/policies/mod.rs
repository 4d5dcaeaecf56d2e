//! JIT policies: reading, writing and deleting a VM's or a resource group's policy, and a
//! VM's effective policy (its own, else its group's, which also covers VMs added later).
//!
//! - [`edit`]: a policy staged (authorised, validated, written with its activity entry) and
//!   described: the API's `PUT`, and the portal's preview and save.

pub mod edit;

use jitgate_api::{ErrorCode, Operation, PolicyBody, PolicyScope, PolicyView, ResourceType};

use jitgate_notify::event::PolicyOperation;

use crate::authz::{self, Action, Actor, Caller};
use crate::error::{Error, Result};
use crate::outbox;
use crate::policy::Policy;
use crate::policy_change;
use crate::store::activity::{self, NewActivity};
use crate::store::db::Db;
use crate::store::inventory;
use crate::store::notify;
use crate::store::policies::{self, PolicyRow};
use crate::store::write::WriteTx;
use edit::{EditError, Precondition, Staged, Unstaged};
use sqlx::AnyConnection;

/// Whose policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Vm(&'a str),
    Group(&'a str),
}

impl<'a> Target<'a> {
    /// The VM, for a VM's own policy.
    pub fn vm(self) -> Option<&'a str> {
        match self {
            Target::Vm(vm) => Some(vm),
            Target::Group(_) => None,
        }
    }
}

/// A target that exists, with its resource group.
pub(crate) struct Resolved<'a> {
    pub scope: PolicyScope,
    pub name: &'a str,
    pub group: String,
}

pub(crate) fn view(row: PolicyRow) -> PolicyView {
    PolicyView {
        scope: row.scope_kind,
        name: row.scope_name,
        ports: row.body.0.ports,
        updated_time_utc: jitgate_api::time::format(row.updated_ms),
        updated_by: row.updated_by,
    }
}

#[derive(Clone)]
pub struct Policies {
    db: Db,
}

impl Policies {
    pub fn new(db: Db) -> Policies {
        Policies { db }
    }

    /// The target's group, or VmNotFound / ResourceGroupNotFound.
    async fn resolve<'a>(&self, t: Target<'a>) -> Result<Resolved<'a>> {
        let mut conn = self.db.pool().acquire().await?;
        resolve(&mut conn, t).await
    }

    pub async fn get(&self, caller: &Caller, t: Target<'_>) -> Result<PolicyView> {
        Ok(self.get_versioned(caller, t).await?.0)
    }

    /// The target's own policy and its version ([`edit::version`], the API's `ETag`).
    pub async fn get_versioned(
        &self,
        caller: &Caller,
        t: Target<'_>,
    ) -> Result<(PolicyView, String)> {
        let r = self.resolve(t).await?;
        authorize(caller, &r, false)?;
        match policies::get(self.db.pool(), r.scope, r.name).await? {
            Some(row) => {
                let version = edit::version(Some(&row));
                Ok((view(row), version))
            }
            None => Err(Error::refused(
                ErrorCode::PolicyNotFound,
                match t {
                    Target::Vm(vm) => format!(
                        "VM {vm} has no JIT policy of its own (see its effective policy on GET /virtualMachines/{vm})"
                    ),
                    Target::Group(g) => format!("resource group {g} has no JIT policy"),
                },
            )),
        }
    }

    /// Creates or replaces the target's policy (validated first; nothing is written if it
    /// is invalid, or if the stored policy does not meet `expected`). The same staging as
    /// the portal's preview and save ([`edit::stage`]), committed. Returns the policy and
    /// its new version.
    pub async fn put(
        &self,
        caller: &Caller,
        t: Target<'_>,
        body: &PolicyBody,
        expected: Option<Precondition<'_>>,
    ) -> Result<(PolicyView, String)> {
        let mut w = self.db.begin().await?;
        let staged = edit::stage(&mut w, caller, t, body, expected, false)
            .await
            .map_err(Error::from)?;
        let row = policies::get(w.conn(), staged.scope, &staged.name).await?;
        let version = edit::version(row.as_ref());
        w.commit().await?;
        Ok((staged.view, version))
    }

    /// What saving `body` as the target's policy would do: the save itself, run and rolled
    /// back (a dry run), with the affected VMs and the activity entry it would write.
    pub async fn preview(
        &self,
        caller: &Caller,
        t: Target<'_>,
        body: &PolicyBody,
    ) -> Result<Staged, EditError> {
        let mut w = self.db.begin().await?;
        w.dry_run = true;
        let staged = edit::stage(&mut w, caller, t, body, None, true).await?;
        // Dropping `w` rolls it back: nothing of the dry run stays.
        drop(w);
        Ok(staged)
    }

    /// Saves `body` as the target's policy if the stored one is still the `version` a
    /// preview was made against ([`EditError::Stale`] otherwise, nothing written).
    pub async fn save(
        &self,
        caller: &Caller,
        t: Target<'_>,
        body: &PolicyBody,
        version: &str,
    ) -> Result<Staged, EditError> {
        let mut w = self.db.begin().await?;
        let staged = edit::stage(
            &mut w,
            caller,
            t,
            body,
            Some(Precondition::Version(version)),
            true,
        )
        .await?;
        w.commit().await?;
        Ok(staged)
    }

    /// Deletes the target's own policy if the stored one meets `expected` (nothing is
    /// deleted otherwise: [`EditError::Stale`]).
    pub async fn delete(
        &self,
        caller: &Caller,
        t: Target<'_>,
        expected: Option<Precondition<'_>>,
    ) -> Result<Unstaged, EditError> {
        let mut w = self.db.begin().await?;
        let gone = edit::unstage(&mut w, caller, t, expected, true).await?;
        w.commit().await?;
        Ok(gone)
    }

    /// What deleting the target's own policy would do: the deletion itself, run and rolled
    /// back (a dry run).
    pub async fn preview_delete(
        &self,
        caller: &Caller,
        t: Target<'_>,
    ) -> Result<Unstaged, EditError> {
        let mut w = self.db.begin().await?;
        w.dry_run = true;
        let gone = edit::unstage(&mut w, caller, t, None, true).await?;
        // Dropping `w` rolls it back.
        drop(w);
        Ok(gone)
    }

    /// The VM's effective policy: its own if it has one, else its group's.
    pub async fn effective(&self, vm: &str, group: &str) -> Result<Option<PolicyView>> {
        if let Some(p) = policies::get(self.db.pool(), PolicyScope::VirtualMachine, vm).await? {
            return Ok(Some(view(p)));
        }
        Ok(
            policies::get(self.db.pool(), PolicyScope::ResourceGroup, group)
                .await?
                .map(view),
        )
    }

    /// The VM's policy version: the activity-log seq of the last change to its effective
    /// policy plus the policy base (`counters.policy_base`: 0 until an agent's applied
    /// version was above what a restored or promoted database could issue, docs/ha.md); 0 if
    /// never set.
    pub async fn version(&self, vm: &str, group: &str) -> Result<i64> {
        let last = activity::last_policy_change(self.db.pool(), vm, group).await?;
        if last == 0 {
            return Ok(0);
        }
        Ok(last + crate::store::sequences::policy_base(self.db.pool()).await?)
    }
}

pub(crate) fn authorize(caller: &Caller, r: &Resolved<'_>, write: bool) -> Result<()> {
    let action = match (r.scope, write) {
        (PolicyScope::VirtualMachine, false) => Action::ReadVm {
            vm: r.name,
            group: &r.group,
        },
        (PolicyScope::VirtualMachine, true) => Action::WriteVmPolicy {
            vm: r.name,
            group: &r.group,
        },
        (PolicyScope::ResourceGroup, false) => Action::ReadGroupPolicy { group: &r.group },
        (PolicyScope::ResourceGroup, true) => Action::WriteGroupPolicy { group: &r.group },
    };
    authz::authorize(caller, action)
}

/// The target's group, or VmNotFound / ResourceGroupNotFound.
pub(crate) async fn resolve<'a>(conn: &mut AnyConnection, t: Target<'a>) -> Result<Resolved<'a>> {
    Ok(match t {
        Target::Vm(vm) => Resolved {
            scope: PolicyScope::VirtualMachine,
            name: vm,
            group: inventory::require_vm(&mut *conn, vm).await?.resource_group,
        },
        Target::Group(g) => Resolved {
            scope: PolicyScope::ResourceGroup,
            name: g,
            group: inventory::require_group(&mut *conn, g).await?.name,
        },
    })
}

/// Sets the target's policy in `w` (authorised; `policy` is validated).
pub async fn set(
    w: &mut WriteTx,
    caller: &Caller,
    t: Target<'_>,
    policy: &Policy,
) -> Result<PolicyView> {
    let r = resolve(w.conn(), t).await?;
    authorize(caller, &r, true)?;
    write(w, caller, t, &r.group, policy).await
}

/// Deletes the target's own policy in `w` (authorised, activity-logged, notified; its agents
/// are sent their new effective policy at commit). Returns the change in words.
pub async fn remove(
    w: &mut WriteTx,
    caller: &Caller,
    t: Target<'_>,
) -> Result<policy_change::Change> {
    let r = resolve(w.conn(), t).await?;
    authorize(caller, &r, true)?;
    let old = stored(w, r.scope, r.name).await?;
    if !policies::delete(w, r.scope, r.name).await? {
        return Err(Error::refused(
            ErrorCode::PolicyNotFound,
            format!("{} has no JIT policy of its own", r.name),
        ));
    }
    activity::log(
        w,
        entry(Operation::DeletePolicy, t, &r.group, &caller.actor()),
    )
    .await?;
    let change = policy_change::compare(old.as_ref(), None);
    let event = outbox::event::policy_changed(
        t.vm(),
        &r.group,
        caller,
        PolicyOperation::Delete,
        change.clone(),
        w.now,
    );
    notify::insert_events(w, &[event]).await?;
    w.policy_changed(r.scope, r.name);
    Ok(change)
}

fn entry(op: Operation, t: Target<'_>, group: &str, actor: &Actor) -> NewActivity {
    match t {
        Target::Vm(vm) => NewActivity::vm(op, group, vm, actor),
        Target::Group(_) => NewActivity::other(op, ResourceType::ResourceGroup, group, actor),
    }
}

/// The policy stored for `name`, validated (None: none; one that no longer validates counts
/// as none for the comparison, and is logged).
async fn stored(w: &mut WriteTx, scope: PolicyScope, name: &str) -> Result<Option<Policy>> {
    let Some(row) = policies::get(w.conn(), scope, name).await? else {
        return Ok(None);
    };
    match Policy::from_body(&row.body.0) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            tracing::warn!(policy = %name, error = %e, "stored policy no longer validates");
            Ok(None)
        }
    }
}

/// Writes a validated policy, its activity entry and its `policy.changed` notification in
/// `w` (the agents are woken at commit).
pub async fn write(
    w: &mut WriteTx,
    caller: &Caller,
    t: Target<'_>,
    group: &str,
    policy: &Policy,
) -> Result<PolicyView> {
    Ok(written(w, caller, t, group, policy).await?.view)
}

/// What [`written`] wrote.
pub(crate) struct Written {
    pub view: PolicyView,
    pub change: policy_change::Change,
    /// The activity entry, as appended.
    pub entry: NewActivity,
}

/// [`write`], saying what it wrote.
pub(crate) async fn written(
    w: &mut WriteTx,
    caller: &Caller,
    t: Target<'_>,
    group: &str,
    policy: &Policy,
) -> Result<Written> {
    let (scope, name) = match t {
        Target::Vm(vm) => (PolicyScope::VirtualMachine, vm),
        Target::Group(g) => (PolicyScope::ResourceGroup, g),
    };
    let actor = &caller.actor();
    let old = stored(w, scope, name).await?;
    let change = policy_change::compare(old.as_ref(), Some(policy));
    let body = policy.to_body();
    let created = policies::put(w, scope, name, &body, &actor.name).await?;
    let entry = entry(Operation::UpdatePolicy, t, group, actor)
        .details(serde_json::json!({"ports": body.ports, "created": created}));
    activity::log(w, entry.clone()).await?;
    if !change.lines.is_empty() {
        let event = outbox::event::policy_changed(
            t.vm(),
            group,
            caller,
            PolicyOperation::Update,
            change.clone(),
            w.now,
        );
        notify::insert_events(w, &[event]).await?;
    }
    w.policy_changed(scope, name);
    Ok(Written {
        view: PolicyView {
            scope,
            name: name.into(),
            ports: body.ports,
            updated_time_utc: jitgate_api::time::format(w.now),
            updated_by: actor.name.clone(),
        },
        change,
        entry,
    })
}
