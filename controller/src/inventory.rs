//! Resource groups and VMs: their administration (root on the host) and the views of them.

use std::net::IpAddr;

use jitgate_api::{
    AgentConnection, ErrorCode, Operation, PolicyScope, ResourceGroup, ResourceType, Vm, VmDetail,
};

use crate::authz::{self, Action, Caller};
use crate::error::{Error, Result};
use crate::input::validate_name;
use crate::policies::Policies;
use crate::presence::Presence;
use crate::store::activity::{self, NewActivity};
use crate::store::db::Db;
use crate::store::{agents, inventory, policies};

#[derive(Clone)]
pub struct Inventory {
    db: Db,
    presence: Presence,
    policies: Policies,
}

impl Inventory {
    pub fn new(db: Db, presence: Presence, policies: Policies) -> Inventory {
        Inventory {
            db,
            presence,
            policies,
        }
    }

    /// Adds a resource group with the owner who receives its remediation requests.
    pub async fn add_group(&self, caller: &Caller, name: &str, owner: &str) -> Result<()> {
        authz::authorize(caller, Action::Administer)?;
        validate_name("resource group", name)?;
        if owner.trim().is_empty() || owner.len() > 256 {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "a resource group needs an owner (1-256 characters)",
            ));
        }
        let mut w = self.db.begin().await?;
        if inventory::group(w.conn(), name).await?.is_some() {
            return Err(Error::refused(
                ErrorCode::ResourceGroupExists,
                format!("resource group {name} already exists"),
            ));
        }
        inventory::insert_group(&mut w, name, owner).await?;
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::AddGroup,
                ResourceType::ResourceGroup,
                name,
                &caller.actor(),
            )
            .details(serde_json::json!({"owner": owner})),
        )
        .await?;
        w.commit().await
    }

    /// Resource groups within the caller's scope, with their owners.
    pub async fn groups(&self, caller: &Caller) -> Result<Vec<ResourceGroup>> {
        Ok(inventory::groups(self.db.pool())
            .await?
            .into_iter()
            .filter(|g| authz::sees_group(caller, &g.name))
            .map(|g| ResourceGroup {
                name: g.name,
                owner: g.owner,
            })
            .collect())
    }

    /// Registers a VM with its addresses.
    pub async fn add_vm(
        &self,
        caller: &Caller,
        name: &str,
        group: &str,
        addresses: &[IpAddr],
    ) -> Result<()> {
        authz::authorize(caller, Action::Administer)?;
        validate_name("VM", name)?;
        validate_name("resource group", group)?;
        let addrs: Vec<String> = addresses
            .iter()
            .map(|a| jitgate_common::net::normalise(*a).to_string())
            .collect();
        let mut w = self.db.begin().await?;
        if inventory::group(w.conn(), group).await?.is_none() {
            return Err(Error::refused(
                ErrorCode::ResourceGroupNotFound,
                format!("no resource group {group} (add it first with `jit-controller rg add`)"),
            ));
        }
        if inventory::vm(w.conn(), name).await?.is_some() {
            return Err(Error::refused(
                ErrorCode::VmExists,
                format!("VM {name} already exists"),
            ));
        }
        inventory::insert_vm(&mut w, name, group, &addrs).await?;
        activity::log(
            &mut w,
            NewActivity::vm(Operation::AddVm, group, name, &caller.actor())
                .details(serde_json::json!({"addresses": addrs})),
        )
        .await?;
        w.commit().await
    }

    /// A VM with its effective policy.
    pub async fn vm(&self, caller: &Caller, name: &str) -> Result<VmDetail> {
        let vm = inventory::require_vm(self.db.pool(), name).await?;
        authz::authorize(
            caller,
            Action::ReadVm {
                vm: name,
                group: &vm.resource_group,
            },
        )?;
        let effective_policy = self.policies.effective(name, &vm.resource_group).await?;
        Ok(VmDetail {
            name: vm.name,
            resource_group: vm.resource_group,
            addresses: vm.addresses.0,
            effective_policy,
        })
    }

    /// VMs within the caller's scope, with where their policy comes from and their agent.
    pub async fn vms(&self, caller: &Caller) -> Result<Vec<Vm>> {
        let rows = inventory::vms(self.db.pool()).await?;
        let has = policies::targets(self.db.pool()).await?;
        let agents = agents::active_by_vm(self.db.pool()).await?;
        let now = jitgate_api::time::now_ms();
        let mut out = Vec::new();
        for r in rows {
            if !authz::sees_vm(caller, &r.name, &r.resource_group) {
                continue;
            }
            let (status, problems) = match agents.get(&r.name) {
                None => (AgentConnection::NoAgent, Vec::new()),
                Some(a) => {
                    let st = self.presence.connection(
                        &a.id,
                        &jitgate_api::AgentStatus::Active,
                        a.last_seen_ms,
                        a.heartbeat.as_ref(),
                        now,
                    );
                    let problems = match (&a.heartbeat, &st) {
                        (Some(h), AgentConnection::Degraded) => h.problems_at(now),
                        _ => Vec::new(),
                    };
                    (st, problems)
                }
            };
            let policy_source = if has.contains(&(PolicyScope::VirtualMachine, r.name.clone())) {
                Some(PolicyScope::VirtualMachine)
            } else if has.contains(&(PolicyScope::ResourceGroup, r.resource_group.clone())) {
                Some(PolicyScope::ResourceGroup)
            } else {
                None
            };
            out.push(Vm {
                name: r.name,
                resource_group: r.resource_group,
                addresses: r.addresses.0,
                policy_source,
                status,
                problems,
            });
        }
        Ok(out)
    }

    /// The VM's resource group, or VmNotFound.
    pub async fn group_of(&self, vm: &str) -> Result<String> {
        Ok(inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group)
    }
}
