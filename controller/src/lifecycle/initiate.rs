//! Initiate in three phases, one group-committed batch at a time: read (the snapshot, in the
//! round trip that begins the transaction on SQLite), plan (pure, `plan`), write (every row
//! and the counters, then COMMIT: one round trip and one fsync per batch on SQLite).
//!
//! Requests are queued to one writer task, which takes whatever is waiting (up to
//! [`MAX_BATCH`]). A database error rolls the whole batch back and every request in it gets
//! an error: nothing is ever half-written.

use std::collections::HashSet;
use tokio::sync::oneshot;

use crate::authz::Caller;
use crate::error::{Error, Result};
use crate::lifecycle::plan::{self, Plan, Start};
use crate::outbox::event;
use crate::request::Initiate;
use crate::store::activity;
use crate::store::backend::Rows;
use crate::store::grants::{self, GrantKey};
use crate::store::notify;
use crate::store::requests;
use crate::store::write::{WriteTx, Writer};
use crate::store::{agents, snapshot};
use jitgate_api::{PortStatus, RequestView, StatusReason};
use jitgate_common::Protocol;

/// Most requests decided in one transaction.
pub const MAX_BATCH: usize = 64;

/// The limits an initiate obeys (controller.toml).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most requests one principal may have pending approval at once.
    pub max_pending: i64,
    /// Furthest ahead a port may be booked, in ms.
    pub max_booking_ahead_ms: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_pending: 20,
            max_booking_ahead_ms: crate::request::MAX_BOOKING_AHEAD_MS,
        }
    }
}

/// One queued request and where its answer goes.
pub struct Job {
    pub caller: Caller,
    pub req: Initiate,
    pub reply: oneshot::Sender<Result<RequestView>>,
}

/// Decides one batch of queued requests and answers each.
pub async fn run_batch(writer: &Writer, limits: Limits, jobs: Vec<Job>) {
    let n = jobs.len();
    let mut replies = Vec::with_capacity(n);
    let mut work = Vec::with_capacity(n);
    for j in jobs {
        replies.push(j.reply);
        work.push((j.caller, j.req));
    }
    let t0 = std::time::Instant::now();
    let res = decide(writer, limits, &work).await;
    tracing::debug!(
        batch = n,
        elapsed_us = t0.elapsed().as_micros() as u64,
        "initiate batch"
    );
    match res {
        Ok(answers) => {
            for (r, a) in replies.into_iter().zip(answers) {
                let _ = r.send(a);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = n, "initiate batch failed; rolled back");
            for r in replies {
                let _ = r.send(Err(Error::Unavailable(
                    "the request batch failed; nothing was written",
                )));
            }
        }
    }
}

/// Every (VM, port, concrete protocol, prefix) the requests could create: the keys whose
/// active grants the batch reads.
fn keys(jobs: &[(Caller, Initiate)]) -> Vec<GrantKey> {
    let mut keys = Vec::new();
    for (_, req) in jobs {
        for vm in &req.vms {
            for p in &vm.ports {
                let protos: &[Protocol] = match p.protocol {
                    Some(ps) => ps.expand(),
                    None => &[Protocol::Tcp, Protocol::Udp],
                };
                for proto in protos {
                    for pfx in &p.prefixes {
                        keys.push(GrantKey {
                            vm: vm.name.clone(),
                            port: p.number.get(),
                            protocol: *proto,
                            prefix: pfx.to_string(),
                        });
                    }
                }
            }
        }
    }
    // Each key once: a key repeated would return its grants once per repetition.
    keys.sort();
    keys.dedup();
    keys
}

/// Decides a batch in one transaction: read, plan, write. The outer error is a database
/// failure (rolled back); each request's own refusal is in its answer.
pub async fn decide(
    writer: &Writer,
    limits: Limits,
    jobs: &[(Caller, Initiate)],
) -> Result<Vec<Result<RequestView>>> {
    let t0 = std::time::Instant::now();
    let mut names: Vec<&str> = jobs
        .iter()
        .flat_map(|(_, r)| r.vms.iter().map(|v| v.name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let principals: Vec<String> = jobs
        .iter()
        .map(|(c, _)| c.principal_id().to_string())
        .collect();
    let mut principal_refs: Vec<&str> = principals.iter().map(String::as_str).collect();
    principal_refs.sort();
    principal_refs.dedup();
    let (mut w, mut snap) =
        snapshot::begin_and_read(writer, &names, &keys(jobs), &principal_refs).await?;
    // Only a batch that books ahead or may limit connections needs its VMs' agent levels
    // (plan::bookable, plan::limitable).
    let now = w.now;
    let mut booked: Vec<&str> = jobs
        .iter()
        .flat_map(|(_, r)| &r.vms)
        .filter(|vm| {
            vm.ports.iter().any(|p| p.start_ms.is_some_and(|s| s > now))
                || plan::may_limit(&snap, vm)
        })
        .map(|vm| vm.name.as_str())
        .collect();
    booked.sort_unstable();
    booked.dedup();
    if !booked.is_empty() {
        snap.agent_levels = agents::levels(&mut w, &booked).await?;
    }
    let read = t0.elapsed();
    let (request_seq, outbox_seq) = w.sequences();
    let start = Start {
        now: w.now,
        request_seq,
        outbox_seq,
        max_pending: limits.max_pending,
    };
    let mut plan = plan::plan(&snap, jobs, start, &mut crate::ids::new_guid)?;
    let planned = t0.elapsed();
    let answers = std::mem::take(&mut plan.answers);
    let events = events(jobs, &answers, now);
    write(w, plan, &events).await?;
    if tracing::enabled!(tracing::Level::TRACE) {
        tracing::trace!(batch = jobs.len(), ?read, ?planned, committed = ?t0.elapsed(), "initiate batch phases");
    }
    Ok(answers)
}

/// The notification events of a batch: each request pending approval (to its first
/// stages' approvers) or denied by policy. Requests approved by policy alone tell nothing
/// until their access is applied.
fn events(
    jobs: &[(Caller, Initiate)],
    answers: &[Result<RequestView>],
    now: i64,
) -> Vec<jitgate_notify::Event> {
    let mut out = Vec::new();
    for ((caller, _), answer) in jobs.iter().zip(answers) {
        let Ok(view) = answer else { continue };
        let owner = caller.principal_id().to_string();
        match view.status {
            PortStatus::PendingApproval => {
                out.extend(event::pending(view, &owner, &view.pending_approval, now));
            }
            PortStatus::Denied => out.push(event::denied(
                view,
                &owner,
                None,
                event::policy_reasons(view),
                now,
            )),
            _ => {}
        }
    }
    out
}

/// Writes a plan and its events and commits (the events in the commit's own round trip).
async fn write(mut w: WriteTx, plan: Plan, events: &[jitgate_notify::Event]) -> Result<()> {
    let mut tables = vec![
        requests::request_rows(&plan.requests, w.now)?,
        requests::port_rows(&plan.ports, w.now),
    ];
    tables.extend(write_grants(&mut w, &plan).await?);
    let log = activity::chain(&mut w, plan.activity)?;
    tables.push(log);
    tables.push(notify::event_rows(&mut w, events)?);
    w.commit_with(tables).await
}

/// `access.ended` (`NewerRequestInitiated`) for each port window a newer request closed.
/// Reads the older requests: only when a supersession closes a port, never on a plain
/// initiate.
async fn superseded_events(
    w: &mut WriteTx,
    closed: &[(&str, i64)],
) -> Result<Vec<jitgate_notify::Event>> {
    let mut out = Vec::new();
    let mut ids: Vec<&str> = closed.iter().map(|(r, _)| *r).collect();
    ids.dedup();
    for rid in ids {
        let (Some(view), Some(owner)) = (
            requests::load(w.conn(), rid).await?,
            requests::owner(w.conn(), rid).await?,
        ) else {
            continue;
        };
        let ports: Vec<(&jitgate_api::RequestVm, &jitgate_api::RequestPort)> = view
            .virtual_machines
            .iter()
            .flat_map(|vm| vm.ports.iter().map(move |p| (vm, p)))
            .collect();
        for (_, idx) in closed.iter().filter(|(r, _)| *r == rid) {
            if let Some((vm, port)) = usize::try_from(*idx).ok().and_then(|i| ports.get(i)) {
                out.push(event::ended_port(
                    &view,
                    &owner,
                    vm,
                    port,
                    jitgate_notify::event::EndReason::NewerRequestInitiated,
                    w.now,
                ));
            }
        }
    }
    Ok(out)
}

/// Writes what a plan does to grants: supersessions (and the ports they close) now, the
/// counters, and returns the new grant and outbox rows for the commit to insert. Shared
/// by the initiate batch and the final approval of a pending request.
pub async fn write_grants(w: &mut WriteTx, plan: &Plan) -> Result<Vec<Rows>> {
    grants::supersede(w, &plan.superseded).await?;
    // A port closes once none of its grants is active any more.
    let kept = grants::ports_with_active(w, &plan.ports_to_close).await?;
    let to_end: Vec<(&str, i64)> = plan
        .ports_to_close
        .iter()
        .filter(|p| !kept.contains(*p))
        .map(|(rid, idx)| (rid.as_str(), *idx))
        .collect();
    let ended: HashSet<(String, i64)> =
        requests::end_ports(w, &to_end, &StatusReason::NewerRequestInitiated)
            .await?
            .into_iter()
            .collect();
    // In the plan's order, so each request's closed ports stay together.
    let closed: Vec<(&str, i64)> = to_end
        .into_iter()
        .filter(|(rid, idx)| ended.contains(&(rid.to_string(), *idx)))
        .collect();
    if !closed.is_empty() {
        let events = superseded_events(w, &closed).await?;
        notify::insert_events(w, &events).await?;
    }
    w.set_sequences(plan.request_seq, plan.outbox_seq);
    for o in &plan.outbox {
        w.outbox_written(&o.vm);
    }
    let now = w.now;
    Ok(vec![
        grants::grant_rows(&plan.grants),
        grants::outbox_rows(&plan.outbox, now),
    ])
}
