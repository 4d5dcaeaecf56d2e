//! The request lifecycle (docs/request-lifecycle.md): initiate, acknowledge (Applied),
//! revoke, supersede and expire; decisions on pending requests are the approval engine's
//! (`crate::approval`), reached through [`Lifecycle::decide`].
//!
//! - [`plan`]: the decision of an initiate batch, pure (unit-tested without a database).
//! - [`initiate`]: the initiate batch's read and write around the plan, group-committed.
//! - [`ack`]: agents' acknowledgements, group-committed.
//! - [`end`]: revocation and the expiry sweep.

pub mod ack;
pub mod end;
pub mod initiate;
pub mod plan;

use jitgate_api::{
    ApprovalEntry, ApprovalsQuery, ErrorCode, InitiateBody, PolicyScope, RequestView,
};
use jitgate_common::Port;
use tokio::sync::{mpsc, oneshot};

use crate::approval::decide::{self, Verdict};
use crate::approval::report;
use crate::authz::{self, Action, Actor, Caller};
use crate::error::{Error, Result};
use crate::eval;
use crate::policy::Policy;
use crate::request::Initiate;
use crate::store::db::Db;
use crate::store::grants::{self, GrantContext, GrantState, OutboxItem};
use crate::store::write::{group_commit, spawn_writers};
use crate::store::{inventory, policies, requests};

/// What [`Lifecycle::preview`] found for one requested port.
#[derive(Clone, Debug)]
pub struct Preview {
    pub vm: String,
    pub port: Port,
    /// Why the policy would deny it, in words; empty: it would not be denied.
    pub reasons: Vec<String>,
    pub needs_approval: bool,
}

/// The lifecycle of this controller: its database and its two group-commit writers.
#[derive(Clone)]
pub struct Lifecycle {
    db: Db,
    initiates: mpsc::Sender<initiate::Job>,
    acks: mpsc::Sender<ack::Job>,
    limits: initiate::Limits,
}

impl Lifecycle {
    /// Starts the writers (they stop when the last clone of this is dropped).
    pub fn start(db: Db, limits: initiate::Limits) -> Result<Lifecycle> {
        let (initiates, initiate_rx) = mpsc::channel(1024);
        let (acks, ack_rx) = mpsc::channel(4096);
        let writer = db.writer().clone();
        let (w1, w2) = (writer.clone(), writer);
        let writers = async move {
            tokio::join!(
                group_commit(initiate_rx, initiate::MAX_BATCH, |jobs| {
                    let w = w1.clone();
                    async move { initiate::run_batch(&w, limits, jobs).await }
                }),
                group_commit(ack_rx, ack::MAX_ACKS, |jobs| {
                    let w = w2.clone();
                    async move { ack::run_batch(&w, jobs).await }
                }),
            );
        };
        spawn_writers(db.backend(), writers)?;
        Ok(Lifecycle {
            db,
            initiates,
            acks,
            limits,
        })
    }

    /// Validates and records an access request (see [`Lifecycle::initiate`]).
    pub async fn request(&self, caller: &Caller, body: &InitiateBody) -> Result<RequestView> {
        let req = Initiate::from_body_within(
            body,
            caller.address,
            jitgate_api::time::now_ms(),
            self.limits.max_booking_ahead_ms,
        )?;
        self.initiate(caller, &req).await
    }

    /// What the policy says about `body` now, recording nothing: per requested port, every
    /// reason it would be denied (none: granted, or sent to approval). The portal checks a
    /// form with it as it is filled in; the request itself is decided by
    /// [`Lifecycle::request`], under the same rights (a VM outside them is refused here too).
    pub async fn preview(&self, caller: &Caller, body: &InitiateBody) -> Result<Vec<Preview>> {
        let now = jitgate_api::time::now_ms();
        let req = Initiate::from_body_within(
            body,
            caller.address,
            now,
            self.limits.max_booking_ahead_ms,
        )?;
        let pool = self.db.pool();
        let mut out = Vec::new();
        for vm in &req.vms {
            let row = inventory::require_vm(pool, &vm.name).await?;
            let group = row.resource_group.as_str();
            authz::authorize(
                caller,
                Action::Initiate {
                    vm: &vm.name,
                    group,
                },
            )?;
            let stored = match policies::get(pool, PolicyScope::VirtualMachine, &vm.name).await? {
                Some(p) => Some(p),
                None => policies::get(pool, PolicyScope::ResourceGroup, group).await?,
            };
            let policy = stored
                .map(|p| {
                    Policy::from_body(&p.body.0).map_err(|e| {
                        Error::Corrupt(format!("stored policy of {}: {e}", p.scope_name))
                    })
                })
                .transpose()?;
            for p in &vm.ports {
                let o = eval::evaluate_port(policy.as_ref(), p, now);
                out.push(Preview {
                    vm: vm.name.clone(),
                    port: p.number,
                    reasons: o.reasons.into_iter().map(|(_, m)| m).collect(),
                    needs_approval: !o.approvals.is_empty(),
                });
            }
        }
        Ok(out)
    }

    /// Evaluates and records a validated request, decided by the group-commit writer in
    /// arrival order. Approved: Initiated, grants pending in the outbox, older grants for the
    /// same (VM, port, protocol, prefix) superseded. Denied: recorded with every reason.
    pub async fn initiate(&self, caller: &Caller, req: &Initiate) -> Result<RequestView> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::Unavailable("the request writer has stopped");
        self.initiates
            .send(initiate::Job {
                caller: caller.clone(),
                req: req.clone(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Decides several requests as one batch (what the writer does with queued requests);
    /// for tests and tools that need a deterministic batch.
    pub async fn initiate_batch(
        &self,
        jobs: &[(Caller, Initiate)],
    ) -> Result<Vec<Result<RequestView>>> {
        initiate::decide(self.db.writer(), self.limits, jobs).await
    }

    /// One request; VMs outside the caller's scope are left out (a request with none in it
    /// needs reader rights on everything).
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<RequestView> {
        let mut conn = self.db.pool().acquire().await?;
        let Some(mut rec) = requests::load(&mut conn, id).await? else {
            return Err(Error::refused(
                ErrorCode::RequestNotFound,
                format!("no request {id}"),
            ));
        };
        rec.virtual_machines
            .retain(|v| authz::sees_vm(caller, &v.id, &v.resource_group));
        if rec.virtual_machines.is_empty() {
            authz::authorize(caller, Action::ReadAll)?;
        }
        let shown: Vec<String> = rec.virtual_machines.iter().map(|v| v.id.clone()).collect();
        rec.denial_reasons
            .retain(|d| shown.contains(&d.virtual_machine));
        Ok(rec)
    }

    /// For each of `vms`, the approved requests since `since_ms` and the newest one (the
    /// portal's JIT page, for the VMs its page shows, which the caller sees).
    pub async fn recent_access(
        &self,
        since_ms: i64,
        vms: &[String],
    ) -> Result<std::collections::HashMap<String, requests::RecentAccess>> {
        let mut conn = self.db.pool().acquire().await?;
        requests::recent_by_vm(&mut conn, since_ms, vms).await
    }

    /// A page of the VM's request history, newest first, filtered; with the sequence number
    /// to pass as `before_seq` for the next page when there may be one.
    pub async fn history_page(
        &self,
        caller: &Caller,
        vm: &str,
        filter: &requests::HistoryFilter,
        limit: i64,
    ) -> Result<(Vec<RequestView>, Option<i64>)> {
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        authz::authorize(caller, Action::ReadVm { vm, group: &group })?;
        let mut conn = self.db.pool().acquire().await?;
        let ids = requests::page_for_vm(&mut *conn, vm, filter, limit).await?;
        let next = (ids.len() as i64 == limit)
            .then(|| ids.last().map(|(_, seq)| *seq))
            .flatten();
        let mut out = Vec::new();
        for (id, _) in ids {
            if let Some(mut rec) = requests::load(&mut conn, &id).await? {
                rec.virtual_machines
                    .retain(|x| authz::sees_vm(caller, &x.id, &x.resource_group));
                out.push(rec);
            }
        }
        Ok((out, next))
    }

    /// The VM's request history, newest first (VMs outside the caller's scope left out).
    pub async fn history(&self, caller: &Caller, vm: &str, limit: i64) -> Result<Vec<RequestView>> {
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        authz::authorize(caller, Action::ReadVm { vm, group: &group })?;
        let mut conn = self.db.pool().acquire().await?;
        let mut out = Vec::new();
        for id in requests::ids_for_vm(&mut *conn, vm, limit).await? {
            if let Some(mut rec) = requests::load(&mut conn, &id).await? {
                rec.virtual_machines
                    .retain(|x| authz::sees_vm(caller, &x.id, &x.resource_group));
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Revokes a request's live ports (`end::revoke`); revoking a pending request cancels it.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<RequestView> {
        let mut conn = self.db.pool().acquire().await?;
        if let Some(Some(_)) = requests::pending(&mut conn, id).await? {
            drop(conn);
            match decide::decide(&self.db, caller, id, Verdict::Cancel).await {
                // Decided meanwhile: revoke what it became.
                Err(e) if e.code() == Some(&ErrorCode::RequestNotPending) => {}
                other => return other,
            }
        }
        end::revoke(&self.db, caller, id).await
    }

    /// A decision on a pending request (`approval::decide`).
    pub async fn decide(&self, caller: &Caller, id: &str, verdict: Verdict) -> Result<RequestView> {
        decide::decide(&self.db, caller, id, verdict).await
    }

    /// The requests waiting for the caller's decision.
    pub async fn waiting(&self, caller: &Caller) -> Result<Vec<RequestView>> {
        report::waiting(&self.db, caller).await
    }

    /// The approvals report.
    pub async fn approvals(
        &self,
        caller: &Caller,
        q: &ApprovalsQuery,
    ) -> Result<Vec<ApprovalEntry>> {
        report::history(&self.db, caller, q).await
    }

    /// The expiry sweep (`end::expire_due`), and pending requests past their deadline time
    /// out (`approval::decide::time_out_due`). Returns (ports expired, requests timed out).
    pub async fn expire_due(&self, now: i64) -> Result<(usize, usize)> {
        let expired = end::expire_due(&self.db, now).await?;
        let timed_out = decide::time_out_due(&self.db, now).await?;
        Ok((expired, timed_out))
    }

    /// `access.ending_soon` for windows ending within `lead_ms` (`end::tell_ending_soon`).
    pub async fn tell_ending_soon(&self, now: i64, lead_ms: i64) -> Result<usize> {
        end::tell_ending_soon(&self.db, now, lead_ms).await
    }

    /// An agent confirmed a grant is in place (`ack`); committed with whatever else waits.
    pub async fn acknowledge(&self, actor: &Actor, grant_id: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::Unavailable("the acknowledgement writer has stopped");
        self.acks
            .send(ack::Job {
                actor: actor.clone(),
                grant_id: grant_id.to_string(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// The VM's outbox rows after `after_seq`, oldest first: what its agent must do.
    pub async fn outbox(&self, vm: &str, after_seq: i64, limit: i64) -> Result<Vec<OutboxItem>> {
        grants::outbox(self.db.pool(), vm, after_seq, limit).await
    }

    /// The VM's active grants (ending after `now`), with their state.
    pub async fn active_grants(&self, vm: &str, now: i64) -> Result<Vec<(String, GrantState)>> {
        grants::active_on_vm(self.db.pool(), vm, now).await
    }

    /// A grant's state and its request's requestor and justification.
    pub async fn grant_context(&self, grant_id: &str) -> Result<Option<GrantContext>> {
        grants::context(self.db.pool(), grant_id).await
    }
}
