//! The agent fleet (docs/controller.md, "Agents"): enrolment (one-time tokens, the CA signing
//! agent certificates), revocation, the fleet view, and what an agent's channel records
//! (last seen and status reports, results, break-glass grants, audit records).
//!
//! - [`audit`]: agents' audit records, group-committed.
//! - [`ca`]: the controller CA as it signs agent certificates.
//! - [`enroll`]: one-time enrolment tokens and an agent's first certificate.
//! - [`renew`]: certificate renewal over the channel, and its refusals.
//! - [`reports`]: last seen and status reports, kept and written in batches.
//! - [`watch`]: agents going offline and coming back, told as notifications.

mod audit;
pub mod ca;
mod enroll;
pub mod marks;
mod renew;
pub mod reports;
pub mod watch;

pub use enroll::Enrollment;
pub use renew::RenewalError;

use jitgate_api::{ActivityOutcome, Agent, AgentConnection, AgentStatus, ErrorCode, Operation};
use jitgate_api::{GrantOrigin, InterfaceHook, MaxConnections};
use jitgate_proto::message::{AuditRecord, ReportedGrant};

use crate::authz::{self, Action, Actor, Caller};
use crate::error::{Error, Result};
use crate::presence::Presence;
use crate::store::activity::{self, NewActivity};
use crate::store::agents::{self, AgentIdentity, Heartbeat};
use crate::store::db::Db;
use crate::store::{agent_audit, inventory, local_grants};

#[derive(Clone)]
pub struct Fleet {
    db: Db,
    presence: Presence,
    /// None where this controller does not enrol (administration commands).
    enrollment: Option<std::sync::Arc<Enrollment>>,
    /// Reports not yet written ([`reports::spawn`] writes them).
    reports: std::sync::Arc<reports::Reports>,
    /// Audit records to write ([`audit`] group-commits them).
    audit: tokio::sync::mpsc::Sender<audit::Job>,
}

impl Fleet {
    /// Starts the writer of agents' audit records.
    pub fn new(db: Db, presence: Presence, enrollment: Option<Enrollment>) -> Result<Fleet> {
        Ok(Fleet {
            audit: audit::start(&db)?,
            db,
            presence,
            enrollment: enrollment.map(std::sync::Arc::new),
            reports: std::sync::Arc::default(),
        })
    }

    /// Revokes every active agent of a VM; returns their ids. Their credentials are refused
    /// from then on (a live connection is closed within seconds).
    pub async fn revoke_agents(&self, caller: &Caller, vm: &str) -> Result<Vec<String>> {
        authz::authorize(caller, Action::Administer)?;
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        let mut w = self.db.begin().await?;
        let ids = agents::active_ids(&mut w, vm).await?;
        if ids.is_empty() {
            return Err(Error::refused(
                ErrorCode::AgentNotFound,
                format!("VM {vm} has no active agent"),
            ));
        }
        agents::revoke_active(&mut w, vm).await?;
        activity::log(
            &mut w,
            NewActivity::vm(Operation::RevokeAgent, &group, vm, &caller.actor())
                .details(serde_json::json!({ "agentIds": ids })),
        )
        .await?;
        w.commit().await?;
        Ok(ids)
    }

    /// The fleet view, limited to the caller's scope.
    pub async fn agents(&self, caller: &Caller) -> Result<Vec<Agent>> {
        let now = jitgate_api::time::now_ms();
        let mut out = Vec::new();
        for row in agents::fleet(self.db.pool()).await? {
            let (r, audit_records) = (row.agent, row.audit_records);
            if !authz::sees_vm(caller, &r.vm, &r.resource_group) {
                continue;
            }
            let hb = r.heartbeat()?;
            let hooks = r.hooks()?;
            let (connection, problems) =
                self.presence
                    .shown(&r.id, &r.status, r.last_seen_ms, hb.as_ref(), now);
            out.push(Agent {
                virtual_machine: r.vm,
                resource_group: r.resource_group,
                agent_id: r.id,
                status: r.status,
                connection,
                problems,
                enrolled_time_utc: jitgate_api::time::format(r.enrolled_ms),
                last_seen_time_utc: r.last_seen_ms.map(jitgate_api::time::format),
                interfaces: hb
                    .as_ref()
                    .map(|h| h.interfaces.clone())
                    .unwrap_or_default(),
                protected_ports: hb
                    .as_ref()
                    .map(|h| h.protected_ports.clone())
                    .unwrap_or_default(),
                listening: hb.as_ref().map(|h| h.listening.clone()).unwrap_or_default(),
                clock_offset_ms: hb.as_ref().and_then(|h| h.clock_offset_ms),
                active_grants: hb.as_ref().map(|h| h.active_grants),
                audit_head: hb.as_ref().map(|h| h.audit_head.clone()),
                audit_seq: hb.as_ref().map(|h| h.audit_seq),
                audit_records,
                hooks,
            });
        }
        Ok(out)
    }

    /// A page of the fleet for the portal: the agents within the caller's scope after
    /// `after` (VM name, agent id) whose VM name contains `name_part` and, if given, whose
    /// connection is `connection`. Reads batches of the index by VM name until `limit`
    /// agents match or [`SCAN_MAX`] were looked at, so a rare status costs a bounded read;
    /// `next` is where the following page starts (None: the end).
    pub async fn page(
        &self,
        caller: &Caller,
        name_part: &str,
        connection: Option<AgentConnection>,
        after: (String, String),
        limit: usize,
    ) -> Result<FleetPage> {
        let scopes = caller.scopes();
        let status = connection.as_ref().map(|c| match c {
            AgentConnection::Revoked => AgentStatus::Revoked,
            _ => AgentStatus::Active,
        });
        let q = agents::FleetQuery {
            name_part,
            status,
            scopes: &scopes,
        };
        let now = jitgate_api::time::now_ms();
        let batch = i64::try_from(limit.max(1)).unwrap_or(i64::MAX - 1) + 1;
        let mut cursor = after;
        let mut out = Vec::new();
        let mut scanned = 0usize;
        loop {
            let rows =
                agents::fleet_page(self.db.pool(), &q, (&cursor.0, &cursor.1), batch).await?;
            let end = rows.len() < usize::try_from(batch).unwrap_or(usize::MAX);
            for r in rows {
                if out.len() == limit {
                    return Ok(FleetPage {
                        agents: out,
                        next: Some(cursor),
                        scanned,
                    });
                }
                cursor = (r.agent.vm.clone(), r.agent.id.clone());
                scanned += 1;
                let e = self.entry(r, now)?;
                if connection.as_ref().is_none_or(|c| *c == e.connection) {
                    out.push(e);
                }
            }
            if end {
                return Ok(FleetPage {
                    agents: out,
                    next: None,
                    scanned,
                });
            }
            if scanned >= SCAN_MAX {
                return Ok(FleetPage {
                    agents: out,
                    next: Some(cursor),
                    scanned,
                });
            }
        }
    }

    /// One agent for the portal, if the caller may see its VM.
    pub async fn entry_of(&self, caller: &Caller, id: &str) -> Result<FleetEntry> {
        let not_found = || Error::refused(ErrorCode::AgentNotFound, format!("no agent {id}"));
        let Some(r) = agents::fleet_agent(self.db.pool(), id).await? else {
            return Err(not_found());
        };
        if !authz::sees_vm(caller, &r.agent.vm, &r.agent.resource_group) {
            // Outside the caller's scope reads as absent (no hint that it exists).
            return Err(not_found());
        }
        self.entry(r, jitgate_api::time::now_ms())
    }

    /// The newest agent of a VM the caller may read (an active one first).
    pub async fn newest_of_vm(&self, caller: &Caller, vm: &str) -> Result<Option<String>> {
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        authz::authorize(caller, Action::ReadVm { vm, group: &group })?;
        agents::newest_of_vm(self.db.pool(), vm).await
    }

    fn entry(&self, r: agents::FleetPageRow, now: i64) -> Result<FleetEntry> {
        let a = &r.agent;
        let report = a.heartbeat()?;
        let hooks = a.hooks()?;
        let (connection, problems) =
            self.presence
                .shown(&a.id, &a.status, a.last_seen_ms, report.as_ref(), now);
        Ok(FleetEntry {
            hooks,
            id: r.agent.id,
            vm: r.agent.vm,
            resource_group: r.agent.resource_group,
            connection,
            problems,
            enrolled_ms: r.agent.enrolled_ms,
            last_seen_ms: r.agent.last_seen_ms,
            protocol: r.protocol,
            version: r.version,
            delivered_seq: r.delivered_seq,
            report,
        })
    }

    // What the agent channel records. The certificate (checked by the channel) authenticates
    // the agent; these act as that agent.

    /// The agent holding a certificate (by the SHA-256 of its DER).
    pub async fn identify(&self, fingerprint: &str) -> Result<Option<AgentIdentity>> {
        agents::by_fingerprint(self.db.pool(), fingerprint).await
    }

    pub async fn status(&self, agent: &str) -> Result<Option<AgentStatus>> {
        agents::status(self.db.pool(), agent).await
    }

    /// The agent spoke (with its status report, if any): kept and written within
    /// [`reports::FLUSH_EVERY`] ([`reports`]). Not in the activity log.
    pub fn seen(&self, agent: &str, report: Option<Heartbeat>) {
        self.reports.note(agent, report);
    }

    /// The agent's hook report changed (or is its first on this connection): kept and
    /// written within [`reports::FLUSH_EVERY`], like status reports.
    pub fn hooks(&self, agent: &str, hooks: &[InterfaceHook]) -> Result<()> {
        self.reports
            .note_hooks(agent, serde_json::to_string(hooks)?);
        Ok(())
    }

    /// Writes the kept reports every [`reports::FLUSH_EVERY`] until shutdown.
    pub fn spawn_reports(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        reports::spawn(self.db.clone(), self.reports.clone(), shutdown)
    }

    /// An agent said Hello at protocol level `protocol` (docs/protocol.md "Levels") as
    /// `version` (its own words, cut to [`agents::VERSION_MAX_CHARS`]).
    pub async fn hello(&self, agent: &str, protocol: u32, version: &str) -> Result<()> {
        let mut w = self.db.begin().await?;
        agents::hello(&mut w, agent, protocol, version).await?;
        w.commit().await
    }

    /// An activity log entry about an agent's VM (results, rejections).
    pub async fn log(
        &self,
        agent: &str,
        vm: &str,
        operation: Operation,
        outcome: ActivityOutcome,
        details: serde_json::Value,
    ) -> Result<()> {
        let group = group_of(&self.db, vm).await?;
        let mut w = self.db.begin().await?;
        activity::log(
            &mut w,
            NewActivity::vm(operation, &group, vm, &Actor::agent(agent))
                .outcome(outcome)
                .details(details),
        )
        .await?;
        w.commit().await
    }

    /// Records a reported local (break-glass) grant once, with its activity entry and its
    /// `access.break_glass` notification; true if it was new.
    pub async fn record_local_grant(
        &self,
        agent: &str,
        vm: &str,
        g: &ReportedGrant,
        max_connections: Option<MaxConnections>,
    ) -> Result<bool> {
        let group = group_of(&self.db, vm).await?;
        let gid = g.grant_id.to_string();
        let mut w = self.db.begin().await?;
        if !local_grants::insert(&mut w, agent, &gid, max_connections).await? {
            return Ok(false);
        }
        let mut details = serde_json::json!({
            "grantId": gid,
            "origin": GrantOrigin::Local.as_str(),
            "protocol": g.protocol.to_string(),
            "number": g.port.get(),
            "allowedSourceAddressPrefix": g.source.to_string(),
            "endTimeUtc": jitgate_api::time::format(g.end_unix_ms),
            "requestor": g.requester,
        });
        if let Some(m) = max_connections {
            details["maxConnections"] = m.get().into();
        }
        activity::log(
            &mut w,
            NewActivity::vm(Operation::LocalAccess, &group, vm, &Actor::agent(agent))
                .details(details),
        )
        .await?;
        let event = crate::outbox::event::break_glass(vm, &group, g, max_connections, w.now);
        crate::store::notify::insert_events(&mut w, &[event]).await?;
        w.commit().await?;
        Ok(true)
    }

    /// Stores audit records (each once per (agent, id)); returns the highest seq up to which
    /// every seq after `acked` is stored.
    pub async fn store_audit(
        &self,
        agent: &str,
        acked: u64,
        records: &[AuditRecord],
    ) -> Result<u64> {
        // Checked here, so that one agent's bad record never fails the batch it shares (a
        // NUL is text PostgreSQL refuses).
        if let Some(r) = records.iter().find(|r| i64::try_from(r.seq).is_err()) {
            return Err(Error::Corrupt(format!(
                "agent {agent} sent audit seq {}",
                r.seq
            )));
        }
        if records
            .iter()
            .any(|r| r.id.contains('\0') || r.line.contains('\0'))
        {
            return Err(Error::Corrupt(format!(
                "agent {agent} sent an audit record with a NUL character"
            )));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = audit::Job {
            agent: agent.to_string(),
            records: records.to_vec(),
            reply,
        };
        self.audit
            .send(job)
            .await
            .map_err(|_| Error::Unavailable("the audit writer stopped"))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the audit writer stopped"))??;
        agent_audit::contiguous_from(self.db.pool(), agent, acked).await
    }
}

/// The most agents one Fleet page looks at when a status filter skips most of them.
pub const SCAN_MAX: usize = 2_000;

/// A page of the fleet ([`Fleet::page`]).
pub struct FleetPage {
    pub agents: Vec<FleetEntry>,
    /// (VM name, agent id) after which the next page starts; None: nothing follows.
    pub next: Option<(String, String)>,
    /// How many agents were looked at.
    pub scanned: usize,
}

/// One agent on the portal's Fleet pages.
pub struct FleetEntry {
    pub id: String,
    pub vm: String,
    pub resource_group: String,
    pub connection: AgentConnection,
    pub problems: Vec<String>,
    pub enrolled_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub protocol: i64,
    /// As the agent named it in its last Hello (None: not since the controller kept it).
    pub version: Option<String>,
    /// The highest seq of the records stored from it.
    pub delivered_seq: Option<i64>,
    /// Its last status report.
    pub report: Option<Heartbeat>,
    /// Its last hook report (empty: none).
    pub hooks: Vec<InterfaceHook>,
}

/// A hook report as the agent sent it, bounded ([`jitgate_proto::message::bounded_hooks`])
/// and in the API's terms: parsed once, here, at the channel.
pub fn hooks_from_agent(reported: Vec<jitgate_proto::InterfaceHook>) -> Vec<InterfaceHook> {
    use jitgate_api::{HookKind as K, HookMode as M, HookProblem as P};
    let kind = |k: jitgate_proto::HookKind| match k {
        jitgate_proto::HookKind::Xdp => K::Xdp,
        jitgate_proto::HookKind::XdpDispatcher => K::XdpDispatcher,
        jitgate_proto::HookKind::TcxIngress => K::TcxIngress,
    };
    jitgate_proto::message::bounded_hooks(reported)
        .into_iter()
        .map(|h| {
            let (problem, problem_reason) = match h.problem {
                None => (None, None),
                Some(jitgate_proto::HookProblem::NotFirst) => (Some(P::NotFirst), None),
                Some(jitgate_proto::HookProblem::Missing { reason }) => {
                    (Some(P::Missing), Some(reason))
                }
            };
            InterfaceHook {
                interface: h.interface,
                hook: kind(h.hook),
                mode: match h.mode {
                    jitgate_proto::HookMode::Driver => M::Driver,
                    jitgate_proto::HookMode::Generic => M::Generic,
                    jitgate_proto::HookMode::Tcx => M::Tcx,
                },
                position: h.position,
                programs: h.programs,
                ahead: h
                    .ahead
                    .into_iter()
                    .map(|a| jitgate_api::ProgramAhead {
                        id: a.id,
                        name: a.name,
                        hook: kind(a.hook),
                    })
                    .collect(),
                problem,
                problem_reason,
            }
        })
        .collect()
}

/// The VM's group ('' if the VM is gone).
async fn group_of(db: &Db, vm: &str) -> Result<String> {
    Ok(inventory::vm(db.pool(), vm)
        .await?
        .map(|v| v.resource_group)
        .unwrap_or_default())
}
