//! Resource groups and VMs: their administration (root on the host) and the views of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use jitgate_api::{
    AgentConnection, ErrorCode, Operation, PolicyScope, ResourceGroup, ResourceType, Vm, VmAgent,
    VmDetail,
};

use crate::authz::{self, Action, Caller};
use crate::error::{Error, Result};
use crate::input::validate_name;
use crate::policies::Policies;
use crate::presence::Presence;
use crate::store::activity::{self, NewActivity};
use crate::store::db::Db;
use crate::store::write::WriteTx;
use crate::store::{agents, inventory, policies};

/// The tab of the portal's JIT page a VM is in: exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitTab {
    /// A policy applies and an agent is enrolled whose enforcement is not detached.
    Configured,
    /// No policy applies.
    NotConfigured,
    /// A policy applies but no agent is enrolled, it was revoked, or enforcement is detached.
    Unsupported,
}

impl JitTab {
    pub const ALL: [JitTab; 3] = [
        JitTab::Configured,
        JitTab::NotConfigured,
        JitTab::Unsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JitTab::Configured => "configured",
            JitTab::NotConfigured => "not-configured",
            JitTab::Unsupported => "unsupported",
        }
    }

    pub fn parse(s: &str) -> Option<JitTab> {
        JitTab::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Its number in the store's list query.
    fn code(self) -> i64 {
        match self {
            JitTab::Configured => 0,
            JitTab::NotConfigured => 1,
            JitTab::Unsupported => 2,
        }
    }
}

/// The filters of the JIT page (empty: any).
#[derive(Clone, Debug, Default)]
pub struct JitFilter {
    /// Part of the VM's name, any case.
    pub name_part: String,
    pub group: String,
    pub owner: String,
}

/// A VM of the JIT page.
pub struct JitEntry {
    pub name: String,
    pub resource_group: String,
    pub owner: String,
    pub agent: AgentConnection,
    /// When the agent was last heard from (an offline agent: since when), ms.
    pub last_seen_ms: Option<i64>,
    /// Why the agent is degraded (status reports), empty otherwise.
    pub problems: Vec<String>,
    /// Why an unsupported VM cannot be protected.
    pub reason: Option<String>,
}

/// A page of one tab, the count of every tab, and whether more follow.
pub struct JitList {
    pub rows: Vec<JitEntry>,
    /// Configured, not configured, unsupported.
    pub counts: [usize; 3],
    pub more: bool,
}

/// The caller's scopes as (resource group, VM) pairs, and the filters: what the tab counts
/// depend on besides the inventory.
type CountKey = (
    Vec<(Option<String>, Option<String>)>,
    String,
    String,
    String,
);

/// How many (scopes, filters) the tab-count cache keeps before it starts over.
const COUNT_CACHE_MAX: usize = 1024;

/// The JIT page's tab counts, per (scopes, filters), as of one inventory generation
/// ([`inventory::generation`]). Counting reads every VM in the caller's scope; the
/// generation is raised in the same transaction as every write that can move a VM between
/// tabs, and is read before each view, so a count served from here is never older than the
/// last such write, on this controller or another sharing the database.
#[derive(Default)]
struct CountCache {
    generation: i64,
    counts: HashMap<CountKey, [usize; 3]>,
}

impl CountCache {
    fn get(&self, generation: i64, key: &CountKey) -> Option<[usize; 3]> {
        if self.generation != generation {
            return None;
        }
        self.counts.get(key).copied()
    }

    /// Keeps `counts`, counted after `generation` was read: not if a newer generation is
    /// already known (they may predate it).
    fn put(&mut self, generation: i64, key: CountKey, counts: [usize; 3]) {
        if generation < self.generation {
            return;
        }
        if generation > self.generation || self.counts.len() >= COUNT_CACHE_MAX {
            self.generation = generation;
            self.counts.clear();
        }
        self.counts.insert(key, counts);
    }
}

#[derive(Clone)]
pub struct Inventory {
    db: Db,
    presence: Presence,
    policies: Policies,
    counts: Arc<Mutex<CountCache>>,
}

impl Inventory {
    pub fn new(db: Db, presence: Presence, policies: Policies) -> Inventory {
        Inventory {
            db,
            presence,
            policies,
            counts: Arc::default(),
        }
    }

    /// Adds a resource group with the owner who receives its remediation requests.
    pub async fn add_group(&self, caller: &Caller, name: &str, owner: &str) -> Result<()> {
        let mut w = self.db.begin().await?;
        create_group(&mut w, caller, name, owner).await?;
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
        let mut w = self.db.begin().await?;
        create_vm(&mut w, caller, name, group, &addresses_text(addresses)).await?;
        w.commit().await
    }

    /// A VM with its effective policy and its agent (the newest enrolment, an active one
    /// first: one query).
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
        let agent = match agents::vm_agent(self.db.pool(), name).await? {
            Some(row) => Some(self.vm_agent(row, jitgate_api::time::now_ms())?),
            None => None,
        };
        Ok(VmDetail {
            name: vm.name,
            resource_group: vm.resource_group,
            addresses: vm.addresses.0,
            effective_policy,
            agent,
        })
    }

    /// A VM's agent as `GET /virtualMachines/{vm}` shows it.
    fn vm_agent(&self, row: agents::FleetPageRow, now: i64) -> Result<VmAgent> {
        let a = row.agent;
        let report = a.heartbeat()?;
        let hooks = a.hooks()?;
        let (connection, problems) =
            self.presence
                .shown(&a.id, &a.status, a.last_seen_ms, report.as_ref(), now);
        Ok(VmAgent {
            agent_id: a.id,
            status: a.status,
            connection,
            problems,
            enrolled_time_utc: jitgate_api::time::format(a.enrolled_ms),
            last_seen_time_utc: a.last_seen_ms.map(jitgate_api::time::format),
            last_report_time_utc: report
                .and_then(|h| h.received_ms)
                .map(jitgate_api::time::format),
            protocol: u32::try_from(row.protocol).unwrap_or(0),
            version: row.version,
            hooks,
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
                Some(a) => self.presence.shown(
                    &a.id,
                    &jitgate_api::AgentStatus::Active,
                    a.last_seen_ms,
                    a.heartbeat.as_ref(),
                    now,
                ),
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

    /// A page of the JIT list: the VMs of `tab` within the caller's scopes and the filters,
    /// by name after `after`. Tabs and filters are decided by the database (the cost follows
    /// the page, not the fleet); only the page's agents are looked at here.
    pub async fn jit_list(
        &self,
        caller: &Caller,
        f: &JitFilter,
        tab: JitTab,
        after: &str,
        limit: usize,
    ) -> Result<JitList> {
        let scopes: Vec<(Option<&str>, Option<&str>)> = caller
            .grants
            .iter()
            .map(|g| match &g.scope {
                jitgate_api::Scope::All => (None, None),
                jitgate_api::Scope::ResourceGroup(rg) => (Some(rg.as_str()), None),
                jitgate_api::Scope::Vm(vm) => (None, Some(vm.as_str())),
            })
            .collect();
        if scopes.is_empty() {
            return Ok(JitList {
                rows: Vec::new(),
                counts: [0; 3],
                more: false,
            });
        }
        let q = inventory::JitQuery {
            name_part: &f.name_part,
            group: &f.group,
            owner: &f.owner,
            scopes: &scopes,
        };
        let counts = self.jit_counts(&q).await?;
        let page_limit = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let mut rows =
            inventory::jit_page(self.db.pool(), &q, tab.code(), after, page_limit).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let now = jitgate_api::time::now_ms();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let report = r
                .heartbeat
                .map(|h| serde_json::from_str::<agents::Heartbeat>(&h))
                .transpose()?;
            let (agent, problems) = match &r.agent_id {
                None if r.revoked == 1 => (AgentConnection::Revoked, Vec::new()),
                None => (AgentConnection::NoAgent, Vec::new()),
                Some(id) => self.presence.shown(
                    id,
                    &jitgate_api::AgentStatus::Active,
                    r.last_seen_ms,
                    report.as_ref(),
                    now,
                ),
            };
            let reason = (tab == JitTab::Unsupported).then(|| match &agent {
                AgentConnection::Revoked => "its agent was revoked".to_string(),
                AgentConnection::NoAgent => "no agent is enrolled".to_string(),
                _ => report
                    .as_ref()
                    .and_then(|h| {
                        h.problems_at(now)
                            .into_iter()
                            .find(|p| p.starts_with(agents::DETACHED))
                    })
                    .unwrap_or_else(|| agents::DETACHED.to_string()),
            });
            out.push(JitEntry {
                name: r.name,
                resource_group: r.resource_group,
                owner: r.owner,
                agent,
                last_seen_ms: r.last_seen_ms,
                problems,
                reason,
            });
        }
        Ok(JitList {
            rows: out,
            counts,
            more,
        })
    }

    /// The tab counts of `q`: from the cache if counted at the current inventory generation
    /// (read first, so that counts taken after a write are never filed under the generation
    /// before it).
    async fn jit_counts(&self, q: &inventory::JitQuery<'_>) -> Result<[usize; 3]> {
        let generation = inventory::generation(self.db.pool()).await?;
        let mut scopes: Vec<(Option<String>, Option<String>)> = q
            .scopes
            .iter()
            .map(|(g, vm)| (g.map(str::to_string), vm.map(str::to_string)))
            .collect();
        scopes.sort();
        scopes.dedup();
        let key = (
            scopes,
            q.name_part.to_string(),
            q.group.to_string(),
            q.owner.to_string(),
        );
        let poisoned = |_| Error::Internal("the tab count cache".into());
        if let Some(c) = self.counts.lock().map_err(poisoned)?.get(generation, &key) {
            return Ok(c);
        }
        let counts = inventory::jit_counts(self.db.pool(), q).await?;
        self.counts
            .lock()
            .map_err(poisoned)?
            .put(generation, key, counts);
        Ok(counts)
    }

    /// The VM's resource group, or VmNotFound.
    pub async fn group_of(&self, vm: &str) -> Result<String> {
        Ok(inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group)
    }
}

/// Addresses as stored: normalised (an IPv4-mapped IPv6 address as IPv4).
pub fn addresses_text(addresses: &[IpAddr]) -> Vec<String> {
    addresses
        .iter()
        .map(|a| jitgate_common::net::normalise(*a).to_string())
        .collect()
}

fn check_owner(owner: &str) -> Result<()> {
    if owner.trim().is_empty() || owner.len() > 256 {
        return Err(Error::refused(
            ErrorCode::InvalidRequest,
            "a resource group needs an owner (1-256 characters)",
        ));
    }
    Ok(())
}

/// Adds a resource group in `w` (authorised, checked, activity-logged).
pub async fn create_group(w: &mut WriteTx, caller: &Caller, name: &str, owner: &str) -> Result<()> {
    authz::authorize(caller, Action::CreateOrDeleteGroup)?;
    validate_name("resource group", name)?;
    check_owner(owner)?;
    if inventory::group(w.conn(), name).await?.is_some() {
        return Err(Error::refused(
            ErrorCode::ResourceGroupExists,
            format!("resource group {name} already exists"),
        ));
    }
    inventory::insert_group(w, name, owner).await?;
    let a = NewActivity::other(
        Operation::AddGroup,
        ResourceType::ResourceGroup,
        name,
        &caller.actor(),
    )
    .details(serde_json::json!({"owner": owner}));
    activity::log(w, a).await?;
    Ok(())
}

/// Gives a resource group a new owner, in `w`.
pub async fn change_group(w: &mut WriteTx, caller: &Caller, name: &str, owner: &str) -> Result<()> {
    authz::authorize(caller, Action::ChangeGroup { group: name })?;
    check_owner(owner)?;
    inventory::require_group(w.conn(), name).await?;
    inventory::set_group_owner(w, name, owner).await?;
    let a = NewActivity::other(
        Operation::UpdateGroup,
        ResourceType::ResourceGroup,
        name,
        &caller.actor(),
    )
    .details(serde_json::json!({"owner": owner}));
    activity::log(w, a).await?;
    Ok(())
}

/// Deletes a resource group that no VM is in any more, in `w`.
pub async fn delete_group(w: &mut WriteTx, caller: &Caller, name: &str) -> Result<()> {
    authz::authorize(caller, Action::CreateOrDeleteGroup)?;
    inventory::require_group(w.conn(), name).await?;
    let members = inventory::vms_in(w.conn(), name).await?;
    if members > 0 {
        return Err(Error::refused(
            ErrorCode::ResourceInUse,
            format!("resource group {name} still has {members} VM(s): delete or move them first"),
        ));
    }
    inventory::delete_group(w, name).await?;
    let a = NewActivity::other(
        Operation::DeleteGroup,
        ResourceType::ResourceGroup,
        name,
        &caller.actor(),
    );
    activity::log(w, a).await?;
    Ok(())
}

/// Registers a VM in `w` (authorised, checked, activity-logged).
pub async fn create_vm(
    w: &mut WriteTx,
    caller: &Caller,
    name: &str,
    group: &str,
    addresses: &[String],
) -> Result<()> {
    authz::authorize(caller, Action::WriteVm { group })?;
    validate_name("VM", name)?;
    validate_name("resource group", group)?;
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
    inventory::insert_vm(w, name, group, addresses).await?;
    activity::log(
        w,
        NewActivity::vm(Operation::AddVm, group, name, &caller.actor())
            .details(serde_json::json!({"addresses": addresses})),
    )
    .await?;
    Ok(())
}

/// Changes a VM's addresses or resource group, in `w` (moving it needs admin over both
/// groups; its agents are sent its new effective policy at commit).
pub async fn change_vm(
    w: &mut WriteTx,
    caller: &Caller,
    name: &str,
    group: &str,
    addresses: &[String],
) -> Result<()> {
    let old = inventory::require_vm(w.conn(), name).await?;
    authz::authorize(
        caller,
        Action::WriteVm {
            group: &old.resource_group,
        },
    )?;
    if old.resource_group != group {
        authz::authorize(caller, Action::WriteVm { group })?;
        inventory::require_group(w.conn(), group).await?;
    }
    inventory::update_vm(w, name, group, addresses).await?;
    if old.resource_group != group {
        w.policy_changed(jitgate_api::PolicyScope::VirtualMachine, name);
    }
    activity::log(
        w,
        NewActivity::vm(Operation::UpdateVm, group, name, &caller.actor()).details(
            serde_json::json!({"addresses": addresses, "resourceGroup": group,
                "previousResourceGroup": old.resource_group}),
        ),
    )
    .await?;
    Ok(())
}

/// Deletes a VM that never had an agent enrolled (its history stays), in `w`.
pub async fn delete_vm(w: &mut WriteTx, caller: &Caller, name: &str) -> Result<()> {
    let old = inventory::require_vm(w.conn(), name).await?;
    authz::authorize(
        caller,
        Action::WriteVm {
            group: &old.resource_group,
        },
    )?;
    if inventory::vm_has_agents(w.conn(), name).await? {
        return Err(Error::refused(
            ErrorCode::ResourceInUse,
            format!(
                "VM {name} has (or had) an enrolled agent or an enrolment token: it stays \
                 (revoke its agent with `jit-controller agent revoke`; its records remain)"
            ),
        ));
    }
    inventory::delete_vm(w, name).await?;
    activity::log(
        w,
        NewActivity::vm(
            Operation::DeleteVm,
            &old.resource_group,
            name,
            &caller.actor(),
        ),
    )
    .await?;
    Ok(())
}
