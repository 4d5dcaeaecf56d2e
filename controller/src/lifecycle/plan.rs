//! The decision of an initiate batch, without I/O: from what was read (a [`Snapshot`]) and the
//! batch's requests, every row to write and every caller's answer. Also the final approval
//! of a pending request ([`approve`]), which opens its ports the same way.
//!
//! Each request is decided exactly as if alone and in arrival order: a later request in the
//! batch supersedes an earlier one's grant for the same (VM, port, protocol, prefix), as it
//! supersedes an active grant in the database. A request that fails (unknown VM, no right,
//! too many pending) gets its error and plans nothing. A request under approval rules that it
//! does not auto-satisfy is recorded `PendingApproval` and plans no grant.

use std::collections::HashMap;

use jitgate_api::{
    ActivityOutcome, ApprovalRule, DenialReason, ErrorCode, Operation, PolicyScope, PortStatus,
    RequestView, RequestVm, StatusReason,
};
use jitgate_common::{MaxConnections, Port, SourcePrefix};

use jitgate_proto::{LEVEL_CONNECTION_LIMITS, LEVEL_SCHEDULED_GRANTS};

use crate::approval::rule::{self, Rule};
use crate::authz::{self, Action, Caller};
use crate::error::{Error, Result};
use crate::eval::{self, PlannedGrant, PortOutcome};
use crate::policy::Policy;
use crate::request::{Initiate, RequestedPort};
use crate::store::activity::NewActivity;
use crate::store::grants::{GrantKey, GrantState, NewGrant, NewOutbox, OutboxOp};
use crate::store::requests::{NewPort, NewRequest, Pending};
use crate::store::snapshot::Snapshot;

/// The batch's time, the sequence counters it starts from, and its limits.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    pub now: i64,
    pub request_seq: i64,
    pub outbox_seq: i64,
    /// Most requests one principal may have pending at once.
    pub max_pending: i64,
}

/// Everything a batch writes, and each request's answer (in the batch's order).
#[derive(Debug, Default)]
pub struct Plan {
    pub answers: Vec<Result<RequestView>>,
    pub requests: Vec<NewRequest>,
    pub ports: Vec<NewPort>,
    pub grants: Vec<NewGrant>,
    pub outbox: Vec<NewOutbox>,
    /// Grants in the database superseded by new ones: (old, new).
    pub superseded: Vec<(String, String)>,
    /// Ports in the database one of whose grants was superseded: Revoked / NewerRequestInitiated
    /// once none of their grants is active.
    pub ports_to_close: Vec<(String, i64)>,
    pub activity: Vec<NewActivity>,
    /// The counters after the batch.
    pub request_seq: i64,
    pub outbox_seq: i64,
}

/// One VM of a request, evaluated.
struct Evaluated {
    vm: String,
    group: String,
    ports: Vec<PortOutcome>,
}

/// An active grant a new one may supersede: (grant, request, port index, in the database).
type Holder = (String, String, i64, bool);

/// The effective policy of each (scope, name) read, validated.
fn policies_of(snap: &Snapshot) -> Result<HashMap<(PolicyScope, String), Policy>> {
    let mut policies = HashMap::with_capacity(snap.policies.len());
    for (k, body) in &snap.policies {
        let p = Policy::from_body(body)
            .map_err(|e| Error::Corrupt(format!("stored policy of {}: {e}", k.1)))?;
        policies.insert(k.clone(), p);
    }
    Ok(policies)
}

/// The VM's effective policy: its own, else its group's.
fn effective<'a>(
    policies: &'a HashMap<(PolicyScope, String), Policy>,
    vm: &str,
    group: &str,
) -> Option<&'a Policy> {
    policies
        .get(&(PolicyScope::VirtualMachine, vm.to_string()))
        .or_else(|| policies.get(&(PolicyScope::ResourceGroup, group.to_string())))
}

/// Evaluates one request against the snapshot: its VMs (which must exist and be in the
/// caller's rights) and every port against the VM's effective policy.
fn evaluate(
    snap: &Snapshot,
    policies: &HashMap<(PolicyScope, String), Policy>,
    caller: &Caller,
    req: &Initiate,
    now: i64,
) -> Result<Vec<Evaluated>> {
    let mut out = Vec::with_capacity(req.vms.len());
    for vm in &req.vms {
        let Some(group) = snap.groups.get(&vm.name) else {
            return Err(Error::refused(
                ErrorCode::VmNotFound,
                format!("no VM {}", vm.name),
            ));
        };
        authz::authorize(
            caller,
            Action::Initiate {
                vm: &vm.name,
                group,
            },
        )?;
        let policy = effective(policies, &vm.name, group);
        out.push(Evaluated {
            vm: vm.name.clone(),
            group: group.clone(),
            ports: vm
                .ports
                .iter()
                .map(|p| eval::evaluate_port(policy, p, now))
                .collect(),
        });
    }
    Ok(out)
}

/// Every denial reason of the evaluated ports.
fn denial_reasons<'a>(
    evaluated: impl Iterator<Item = (&'a str, u16, &'a PortOutcome)>,
) -> Vec<DenialReason> {
    let mut reasons = Vec::new();
    for (vm, number, o) in evaluated {
        for (code, message) in &o.reasons {
            reasons.push(DenialReason {
                virtual_machine: vm.to_string(),
                number,
                protocol: o.protocol,
                reason: code.clone(),
                message: message.clone(),
            });
        }
    }
    reasons
}

/// The active grants of a batch (read, then created by it) and where its new grants are.
struct Granting {
    now: i64,
    active: HashMap<GrantKey, Vec<Holder>>,
    grant_pos: HashMap<String, usize>,
}

impl Granting {
    fn new(snap: &Snapshot, now: i64) -> Result<Granting> {
        let mut active: HashMap<GrantKey, Vec<Holder>> = HashMap::new();
        let mut found = snap.active.clone();
        found.sort();
        found.dedup();
        for g in found {
            let key = g.key()?;
            active
                .entry(key)
                .or_default()
                .push((g.id, g.request_id, g.port_idx, true));
        }
        Ok(Granting {
            now,
            active,
            grant_pos: HashMap::new(),
        })
    }

    /// The grants of one approved port, for the window [start, end]. A window that has
    /// started supersedes the active grants for the same key (they are revoked right after
    /// it is queued); a booked window supersedes nothing, so booking tonight never cuts
    /// the access someone has now. Returns the requests whose grants it superseded.
    #[allow(clippy::too_many_arguments)]
    fn port(
        &mut self,
        p: &mut Plan,
        request_id: &str,
        idx: i64,
        vm: &str,
        number: u16,
        grants: &[PlannedGrant],
        (start, end): (i64, i64),
        new_id: &mut dyn FnMut() -> String,
    ) -> Vec<String> {
        let started = start <= self.now;
        let mut superseded_requests = Vec::new();
        for g in grants {
            let key = GrantKey {
                vm: vm.to_string(),
                port: number,
                protocol: g.protocol,
                prefix: g.prefix.to_string(),
            };
            let gid = new_id();
            let mut replaces = Vec::new();
            let holders = if started {
                self.active.remove(&key).unwrap_or_default()
            } else {
                Vec::new()
            };
            for (old, old_request, old_idx, in_db) in holders {
                if in_db {
                    p.superseded.push((old.clone(), gid.clone()));
                    p.ports_to_close.push((old_request.clone(), old_idx));
                } else if let Some(&at) = self.grant_pos.get(&old) {
                    p.grants[at].state = GrantState::Superseded;
                    p.grants[at].superseded_by = Some(gid.clone());
                }
                if !superseded_requests.contains(&old_request) {
                    superseded_requests.push(old_request);
                }
                replaces.push(old);
            }
            if started {
                self.active.entry(key.clone()).or_default().push((
                    gid.clone(),
                    request_id.to_string(),
                    idx,
                    false,
                ));
            }
            self.grant_pos.insert(gid.clone(), p.grants.len());
            p.grants.push(NewGrant {
                id: gid.clone(),
                request_id: request_id.to_string(),
                port_idx: idx,
                key,
                start_ms: start,
                end_ms: end,
                on_expiry: g.on_expiry,
                max_connections: g.max_connections,
                state: GrantState::Pending,
                superseded_by: None,
            });
            p.outbox.push(NewOutbox {
                seq: 0,
                vm: vm.to_string(),
                op: OutboxOp::Apply,
                grant_id: gid,
                replaces,
            });
        }
        superseded_requests
    }
}

/// What a request's ports need before they open: approved at once, or pending its rules.
enum Approval {
    Now,
    Pending { rules: Vec<Rule>, deadline_ms: i64 },
}

/// Whether the request needs approval: the distinct rules of every port it touches, unless
/// every one of them auto-approves its longest window.
fn approval_needed(vms: &[Evaluated], req: &Initiate, now: i64) -> Approval {
    let mut rules: Vec<Rule> = Vec::new();
    let mut longest = 0;
    let mut deadline = i64::MAX;
    for (ev, vm) in vms.iter().zip(&req.vms) {
        for (o, rp) in ev.ports.iter().zip(&vm.ports) {
            longest = longest.max(o.window_secs);
            for r in &o.approvals {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
            // Pending past the end of a fixed window ends it.
            if rp.duration_ms.is_none() || rp.start_ms.is_some() {
                deadline = deadline.min(rp.end_ms);
            }
        }
    }
    if rules.is_empty() || rule::auto_approved(&rules, longest) {
        return Approval::Now;
    }
    let timeout = rules.iter().map(|r| r.timeout_secs).min().unwrap_or(0);
    Approval::Pending {
        deadline_ms: deadline.min(now + timeout * 1000),
        rules,
    }
}

/// A request that books a port ahead needs every such VM's agent to understand booked
/// grants: an older agent would apply one at receipt, so it is never sent one.
fn bookable(snap: &Snapshot, req: &Initiate, now: i64) -> Result<()> {
    for vm in &req.vms {
        let booked = vm.ports.iter().any(|p| p.start_ms.is_some_and(|s| s > now));
        let level = snap.agent_levels.get(&vm.name).copied().unwrap_or(1);
        if booked && level < LEVEL_SCHEDULED_GRANTS {
            return Err(Error::refused(
                ErrorCode::AgentTooOld,
                format!(
                    "VM {}: its agent does not support booked access (protocol level {level}, \
                     needs {LEVEL_SCHEDULED_GRANTS}); upgrade the agent, or request access \
                     without a start",
                    vm.name
                ),
            ));
        }
    }
    Ok(())
}

/// A request asking a port for more connections than its policy allows is refused whole
/// (nothing recorded): the caller can ask again within the maximum.
fn within_connection_limits(vms: &[Evaluated]) -> Result<()> {
    let over: Vec<String> = vms
        .iter()
        .flat_map(|ev| {
            ev.ports.iter().flat_map(move |o| {
                o.reasons
                    .iter()
                    .filter(|r| r.0 == StatusReason::ConnectionsExceedMaximum)
                    .map(move |r| format!("VM {}: {}", ev.vm, r.1))
            })
        })
        .collect();
    if over.is_empty() {
        return Ok(());
    }
    Err(Error::refused(ErrorCode::InvalidRequest, over.join("; ")))
}

/// A grant with a connection limit may go only to an agent that enforces it: an agent below
/// [`LEVEL_CONNECTION_LIMITS`] is never sent one, so a request whose grants would carry a
/// limit to such a VM is refused (`levels`: the VMs' agent levels; none known: level 1).
fn limitable<'a>(
    levels: &std::collections::HashMap<String, u32>,
    grants: impl IntoIterator<Item = (&'a str, &'a PlannedGrant)>,
) -> Result<()> {
    for (vm, g) in grants {
        let Some(limit) = g.max_connections else {
            continue;
        };
        let level = levels.get(vm).copied().unwrap_or(1);
        if level < LEVEL_CONNECTION_LIMITS {
            return Err(Error::refused(
                ErrorCode::AgentTooOld,
                format!(
                    "VM {vm}: its agent does not support connection limits (protocol level \
                     {level}, needs {LEVEL_CONNECTION_LIMITS}) and the grant would limit new \
                     connections to {limit}; upgrade the agent"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the request's grants on `vm` might carry a connection limit (it asks for one, or
/// the VM's effective policy sets one): the VMs whose agent levels a batch must read.
pub fn may_limit(snap: &Snapshot, vm: &crate::request::RequestedVm) -> bool {
    if vm.ports.iter().any(|p| p.max_connections.is_some()) {
        return true;
    }
    let Some(group) = snap.groups.get(&vm.name) else {
        return false;
    };
    snap.policies
        .get(&(PolicyScope::VirtualMachine, vm.name.clone()))
        .or_else(|| {
            snap.policies
                .get(&(PolicyScope::ResourceGroup, group.clone()))
        })
        .is_some_and(|p| p.ports.iter().any(|x| x.max_connections.is_some()))
}

/// Decides `jobs`; `new_id` names each request and grant (in order).
pub fn plan(
    snap: &Snapshot,
    jobs: &[(Caller, Initiate)],
    start: Start,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Plan> {
    let now = start.now;
    let policies = policies_of(snap)?;
    let mut granting = Granting::new(snap, now)?;
    let mut p = Plan {
        request_seq: start.request_seq,
        outbox_seq: start.outbox_seq,
        ..Plan::default()
    };
    let mut pending_of: HashMap<String, i64> = snap.pending.clone();
    // Position of each new port in `p.ports`.
    let mut port_pos: HashMap<(String, i64), usize> = HashMap::new();
    for (caller, req) in jobs {
        let vms = match evaluate(snap, &policies, caller, req, now) {
            Ok(v) => v,
            Err(e) => {
                p.answers.push(Err(e));
                continue;
            }
        };
        if let Err(e) = bookable(snap, req, now)
            .and_then(|()| within_connection_limits(&vms))
            .and_then(|()| {
                limitable(
                    &snap.agent_levels,
                    vms.iter().flat_map(|ev| {
                        ev.ports
                            .iter()
                            .flat_map(|o| o.grants.iter().map(|g| (ev.vm.as_str(), g)))
                    }),
                )
            })
        {
            p.answers.push(Err(e));
            continue;
        }
        let reasons = denial_reasons(vms.iter().zip(&req.vms).flat_map(|(ev, vm)| {
            ev.ports
                .iter()
                .zip(&vm.ports)
                .map(|(o, port)| (ev.vm.as_str(), port.number.get(), o))
        }));
        let denied = !reasons.is_empty();
        let principal = caller.principal_id().to_string();
        let approval = if denied {
            Approval::Now
        } else {
            approval_needed(&vms, req, now)
        };
        if let Approval::Pending { .. } = approval {
            let n = pending_of.entry(principal.clone()).or_insert(0);
            if *n >= start.max_pending {
                p.answers.push(Err(Error::refused(
                    ErrorCode::TooManyPending,
                    format!(
                        "{principal} already has {n} requests pending approval (at most {}); \
                         cancel one or wait for a decision",
                        start.max_pending
                    ),
                )));
                continue;
            }
            *n += 1;
        }
        let pending = matches!(approval, Approval::Pending { .. });
        let id = new_id();
        p.request_seq += 1;
        let (rules_doc, deadline_ms) = match &approval {
            Approval::Pending { rules, deadline_ms } => (
                Some(
                    rules
                        .iter()
                        .map(Rule::to_body)
                        .collect::<Vec<ApprovalRule>>(),
                ),
                Some(*deadline_ms),
            ),
            Approval::Now => (None, None),
        };
        p.requests.push(NewRequest {
            id: id.clone(),
            seq: p.request_seq,
            requestor: caller.name().into(),
            token_id: caller.token_id().into(),
            caller_address: caller.address.to_string(),
            justification: req.justification.clone(),
            denied,
            denial_reasons: reasons.clone(),
            principal,
            approval: rules_doc,
            deadline_ms,
            decided_ms: (!denied && !pending).then_some(now),
        });
        let mut superseded_requests: Vec<String> = Vec::new();
        let mut idx: i64 = 0;
        let mut record_vms = Vec::with_capacity(vms.len());
        for (ev, vm) in vms.iter().zip(&req.vms) {
            let mut ports_log = Vec::new();
            let mut record_ports = Vec::new();
            for (o, rp) in ev.ports.iter().zip(&vm.ports) {
                let (status, reason) = if denied {
                    let first = o.reasons.first().map(|r| r.0.clone());
                    (
                        PortStatus::Denied,
                        Some(first.unwrap_or(StatusReason::OtherPortDenied)),
                    )
                } else if pending {
                    (PortStatus::PendingApproval, None)
                } else {
                    (PortStatus::Initiated, None)
                };
                let opens = (!denied && !pending).then(|| rp.start_ms.unwrap_or(now).max(now));
                let port = NewPort {
                    request_id: id.clone(),
                    idx,
                    vm: ev.vm.clone(),
                    resource_group: ev.group.clone(),
                    number: rp.number.get(),
                    protocol: o.protocol,
                    prefixes: rp.prefixes.clone(),
                    end_ms: rp.end_ms,
                    status,
                    status_reason: reason,
                    on_expiry: o.grants.first().map(|g| g.on_expiry),
                    max_connections: o.grants.first().and_then(|g| g.max_connections),
                    start_ms: opens,
                    duration_ms: rp.duration_ms,
                    booked_ms: rp.start_ms,
                };
                if let Some(opens) = opens {
                    for r in granting.port(
                        &mut p,
                        &id,
                        idx,
                        &ev.vm,
                        rp.number.get(),
                        &o.grants,
                        (opens, rp.end_ms),
                        new_id,
                    ) {
                        if !superseded_requests.contains(&r) {
                            superseded_requests.push(r);
                        }
                    }
                }
                let view = port.view();
                let mut logged = serde_json::json!({
                    "number": port.number,
                    "protocol": port.protocol.as_str(),
                    "allowedSourceAddressPrefixes":
                        port.prefixes.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                    "startTimeUtc": view.start_time_utc,
                    "endTimeUtc": view.end_time_utc,
                    "status": port.status.as_str(),
                    "statusReason": port.status_reason.as_ref().map(|r| r.as_str()),
                });
                if let Some(m) = port.max_connections {
                    logged["maxConnections"] = m.get().into();
                }
                ports_log.push(logged);
                record_ports.push(view);
                port_pos.insert((id.clone(), idx), p.ports.len());
                p.ports.push(port);
                idx += 1;
            }
            let vm_reasons: Vec<&DenialReason> = reasons
                .iter()
                .filter(|r| r.virtual_machine == ev.vm)
                .collect();
            p.activity.push(
                NewActivity::vm(Operation::Initiate, &ev.group, &ev.vm, &caller.actor())
                    .outcome(if denied {
                        ActivityOutcome::Denied
                    } else {
                        ActivityOutcome::Succeeded
                    })
                    .request(&id)
                    .details(serde_json::json!({
                        "justification": req.justification,
                        "ports": ports_log,
                        "denialReasons": vm_reasons,
                        "supersedes": superseded_requests,
                        "pendingApproval": pending,
                    })),
            );
            record_vms.push(RequestVm {
                id: ev.vm.clone(),
                resource_group: ev.group.clone(),
                ports: record_ports,
            });
        }
        let pending_approval = match &approval {
            Approval::Pending { rules, .. } => rule::pending_stages(rules, &[]),
            Approval::Now => Vec::new(),
        };
        p.answers.push(Ok(RequestView {
            id,
            start_time_utc: jitgate_api::time::format(now),
            requestor: caller.name().into(),
            justification: req.justification.clone(),
            caller_address: caller.address.to_string(),
            status: if denied {
                PortStatus::Denied
            } else if pending {
                PortStatus::PendingApproval
            } else {
                PortStatus::Initiated
            },
            virtual_machines: record_vms,
            denial_reasons: reasons,
            approvals: Vec::new(),
            pending_approval,
            approval_deadline_utc: deadline_ms.map(jitgate_api::time::format),
            emergency: false,
        }));
    }
    // Ports of this batch whose grants were all superseded within the batch.
    let mut live: HashMap<(String, i64), bool> = HashMap::new();
    for g in &p.grants {
        *live
            .entry((g.request_id.clone(), g.port_idx))
            .or_insert(false) |= g.state == GrantState::Pending;
    }
    for (k, is_live) in &live {
        if !is_live && let Some(&at) = port_pos.get(k) {
            p.ports[at].status = PortStatus::Revoked;
            p.ports[at].status_reason = Some(StatusReason::NewerRequestInitiated);
        }
    }
    sequence_outbox(&mut p);
    Ok(p)
}

/// Numbers the outbox: each grant, then right after it a revocation of each grant it
/// supersedes (the new grant in place first, so a covered flow is never cut).
fn sequence_outbox(p: &mut Plan) {
    let applies = std::mem::take(&mut p.outbox);
    for a in applies {
        p.outbox_seq += 1;
        let revokes: Vec<NewOutbox> = a
            .replaces
            .iter()
            .map(|old| NewOutbox {
                seq: 0,
                vm: a.vm.clone(),
                op: OutboxOp::Revoke,
                grant_id: old.clone(),
                replaces: Vec::new(),
            })
            .collect();
        p.outbox.push(NewOutbox {
            seq: p.outbox_seq,
            ..a
        });
        for r in revokes {
            p.outbox_seq += 1;
            p.outbox.push(NewOutbox {
                seq: p.outbox_seq,
                ..r
            });
        }
    }
    p.ports_to_close.sort();
    p.ports_to_close.dedup();
}

/// How one port of a pending request ends up at its final approval.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    pub idx: i64,
    pub status: PortStatus,
    pub reason: Option<StatusReason>,
    /// [start, end] of the window granted (None when denied).
    pub window: Option<(i64, i64)>,
    /// The connection limit its grants carry (None: unlimited, or denied).
    pub max_connections: Option<MaxConnections>,
}

/// The final approval of a pending request, planned: the ports re-checked against the policy
/// of this moment with the window they get now.
#[derive(Debug, Default)]
pub struct Approved {
    pub plan: Plan,
    pub ports: Vec<Opened>,
    /// Non-empty: the policy of this moment refuses it (the request is Denied).
    pub denial: Vec<DenialReason>,
    /// Requests whose grants the new ones superseded.
    pub supersedes: Vec<String>,
}

/// Plans the final approval of `req` at `start.now`: a duration port's window starts now, a
/// booked one at its start (or now if that passed) and keeps its end; every port must still
/// pass the policy of this moment (ports, sources, maximum duration), else the whole request
/// is denied with every reason.
pub fn approve(
    snap: &Snapshot,
    req: &Pending,
    start: Start,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Approved> {
    let now = start.now;
    let policies = policies_of(snap)?;
    let mut granting = Granting::new(snap, now)?;
    let mut out = Approved {
        plan: Plan {
            request_seq: start.request_seq,
            outbox_seq: start.outbox_seq,
            ..Plan::default()
        },
        ..Approved::default()
    };
    let mut evaluated = Vec::with_capacity(req.ports.len());
    for sp in &req.ports {
        let number = u16::try_from(sp.number)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| Error::Corrupt(format!("stored port {}", sp.number)))?;
        let prefixes = sp
            .prefixes
            .split(',')
            .map(|x| x.parse::<SourcePrefix>().map_err(Error::corrupt))
            .collect::<Result<Vec<_>>>()?;
        let end_ms = match (sp.duration_ms, sp.booked_ms) {
            (Some(d), None) => now + d,
            _ => sp.end_ms,
        };
        let rp = RequestedPort {
            number,
            protocol: Some(sp.protocol),
            prefixes,
            end_ms,
            duration_ms: sp.duration_ms,
            start_ms: sp.booked_ms,
            max_connections: crate::store::requests::stored_limit(sp.max_connections)?,
        };
        let outcome = match snap.groups.get(&sp.vm) {
            Some(group) => eval::evaluate_port(effective(&policies, &sp.vm, group), &rp, now),
            None => eval::evaluate_port(None, &rp, now),
        };
        evaluated.push((sp, rp, outcome));
    }
    out.denial = denial_reasons(
        evaluated
            .iter()
            .map(|(sp, rp, o)| (sp.vm.as_str(), rp.number.get(), o)),
    );
    if out.denial.is_empty() {
        limitable(
            &snap.agent_levels,
            evaluated
                .iter()
                .flat_map(|(sp, _, o)| o.grants.iter().map(|g| (sp.vm.as_str(), g))),
        )?;
    }
    for (sp, rp, o) in &evaluated {
        if !out.denial.is_empty() {
            let first = o.reasons.first().map(|r| r.0.clone());
            out.ports.push(Opened {
                idx: sp.idx,
                status: PortStatus::Denied,
                reason: Some(first.unwrap_or(StatusReason::OtherPortDenied)),
                window: None,
                max_connections: None,
            });
            continue;
        }
        let opens = rp.start_ms.unwrap_or(now).max(now);
        for r in granting.port(
            &mut out.plan,
            &req.id,
            sp.idx,
            &sp.vm,
            rp.number.get(),
            &o.grants,
            (opens, rp.end_ms),
            new_id,
        ) {
            if !out.supersedes.contains(&r) {
                out.supersedes.push(r);
            }
        }
        out.ports.push(Opened {
            idx: sp.idx,
            status: PortStatus::Initiated,
            reason: None,
            window: Some((opens, rp.end_ms)),
            max_connections: o.grants.first().and_then(|g| g.max_connections),
        });
    }
    sequence_outbox(&mut out.plan);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{RequestedPort, RequestedVm};
    use crate::store::grants::ActiveGrant;
    use jitgate_api::{OnExpiry, PolicyBody, PolicyPort, Role, Scope};
    use jitgate_common::Port;

    const NOW: i64 = 1_800_000_000_000;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.groups.insert("web1".into(), "prod".into());
        s.groups.insert("db1".into(), "dev".into());
        s.policies.insert(
            (PolicyScope::ResourceGroup, "prod".into()),
            PolicyBody {
                ports: vec![
                    PolicyPort {
                        number: 22,
                        protocol: "TCP".into(),
                        allowed_source_address_prefix: Some("203.0.113.0/24".into()),
                        allowed_source_address_prefixes: None,
                        max_request_access_duration: "PT3H".into(),
                        on_expiry: OnExpiry::Keep,
                        max_connections: None,
                        approval: None,
                    },
                    PolicyPort {
                        number: 3389,
                        protocol: "*".into(),
                        allowed_source_address_prefix: Some("203.0.113.0/24".into()),
                        allowed_source_address_prefixes: None,
                        max_request_access_duration: "PT1H".into(),
                        on_expiry: OnExpiry::Cut,
                        max_connections: None,
                        approval: None,
                    },
                ],
            },
        );
        s
    }

    fn caller(scope: &str) -> Caller {
        Caller::token(
            "tok_1",
            "alice",
            Role::Requester,
            scope.parse::<Scope>().unwrap(),
            "198.51.100.9".parse().unwrap(),
        )
    }

    fn port(n: u16, src: &str, secs: i64) -> RequestedPort {
        RequestedPort {
            number: Port::new(n).unwrap(),
            protocol: None,
            prefixes: vec![src.parse().unwrap()],
            end_ms: NOW + secs * 1000,
            duration_ms: Some(secs * 1000),
            start_ms: None,
            max_connections: None,
        }
    }

    fn req(vm: &str, ports: Vec<RequestedPort>) -> Initiate {
        Initiate {
            vms: vec![RequestedVm {
                name: vm.into(),
                ports,
            }],
            justification: "INC-1".into(),
        }
    }

    fn run(s: &Snapshot, jobs: &[(Caller, Initiate)]) -> Plan {
        let mut n = 0;
        let start = Start {
            now: NOW,
            request_seq: 10,
            outbox_seq: 100,
            max_pending: 2,
        };
        plan(s, jobs, start, &mut || {
            n += 1;
            format!("id{n}")
        })
        .unwrap()
    }

    #[test]
    fn an_approved_request_plans_its_rows() {
        let p = run(
            &snapshot(),
            &[(
                caller("*"),
                req("web1", vec![port(3389, "203.0.113.7", 600)]),
            )],
        );
        let r = p.answers[0].as_ref().unwrap();
        assert_eq!(r.status, PortStatus::Initiated);
        assert_eq!(r.id, "id1");
        assert_eq!(p.requests[0].seq, 11);
        assert_eq!(p.request_seq, 11);
        // `*`: one TCP and one UDP grant, each cut at the end, each queued in order.
        assert_eq!(p.grants.len(), 2);
        assert!(p.grants.iter().all(|g| g.on_expiry == OnExpiry::Cut));
        let seqs: Vec<i64> = p.outbox.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, [101, 102]);
        assert_eq!(p.outbox_seq, 102);
        assert_eq!(p.ports[0].status, PortStatus::Initiated);
        assert_eq!(p.activity[0].outcome, ActivityOutcome::Succeeded);
        assert_eq!(p.activity[0].actor.name, "alice");
        assert!(p.superseded.is_empty() && p.ports_to_close.is_empty());
    }

    /// web1's policy with port 3389 limited to `max` connections, its agent at `level`.
    fn limited(max: u32, level: u32) -> Snapshot {
        let mut s = snapshot();
        if let Some(b) = s
            .policies
            .get_mut(&(PolicyScope::ResourceGroup, "prod".into()))
        {
            b.ports[1].max_connections = MaxConnections::new(max);
        }
        s.agent_levels.insert("web1".into(), level);
        s
    }

    fn limit(n: u32) -> Option<MaxConnections> {
        MaxConnections::new(n)
    }

    fn try_run(s: &Snapshot, r: Initiate) -> (Plan, Result<RequestView>) {
        let mut p = run(s, &[(caller("*"), r)]);
        let answer = p.answers.remove(0);
        (p, answer)
    }

    #[test]
    fn connection_limits_come_from_the_request_else_the_policy() {
        // Absent in the request: the policy's, on every grant (TCP and UDP of `*`).
        let (p, r) = try_run(
            &limited(3, LEVEL_CONNECTION_LIMITS),
            req("web1", vec![port(3389, "203.0.113.7", 600)]),
        );
        assert_eq!(
            r.unwrap().virtual_machines[0].ports[0].max_connections,
            limit(3)
        );
        assert_eq!(p.grants.len(), 2);
        assert!(p.grants.iter().all(|g| g.max_connections == limit(3)));
        assert_eq!(p.ports[0].max_connections, limit(3));
        assert_eq!(p.activity[0].details["ports"][0]["maxConnections"], 3);
        // Fewer than the policy's: the request's.
        let mut asked = port(3389, "203.0.113.7", 600);
        asked.max_connections = limit(1);
        let (p, r) = try_run(
            &limited(3, LEVEL_CONNECTION_LIMITS),
            req("web1", vec![asked.clone()]),
        );
        assert!(r.is_ok());
        assert!(p.grants.iter().all(|g| g.max_connections == limit(1)));
        // A policy without a limit: the request may still ask for one.
        let mut s = snapshot();
        s.agent_levels
            .insert("web1".into(), LEVEL_CONNECTION_LIMITS);
        let (p, _) = try_run(&s, req("web1", vec![asked]));
        assert!(p.grants.iter().all(|g| g.max_connections == limit(1)));
        // Neither: unlimited, and the agent's level does not matter.
        let (p, r) = try_run(
            &snapshot(),
            req("web1", vec![port(3389, "203.0.113.7", 600)]),
        );
        assert!(r.is_ok());
        assert!(p.grants.iter().all(|g| g.max_connections.is_none()));
        assert!(
            p.activity[0].details["ports"][0]
                .get("maxConnections")
                .is_none()
        );
    }

    #[test]
    fn more_connections_than_the_policy_allows_is_refused_whole() {
        let mut over = port(3389, "203.0.113.7", 600);
        over.max_connections = limit(3);
        let (p, r) = try_run(
            &limited(2, LEVEL_CONNECTION_LIMITS),
            req("web1", vec![port(22, "203.0.113.7", 600), over]),
        );
        let Err(Error::Refused { code, message }) = r else {
            panic!("not refused: {r:?}");
        };
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert!(
            message.contains("maxConnections 3 exceeds port 3389's maximum of 2"),
            "{message}"
        );
        assert!(p.requests.is_empty() && p.ports.is_empty() && p.grants.is_empty());
        assert!(p.outbox.is_empty() && p.activity.is_empty());
    }

    #[test]
    fn a_limited_grant_is_refused_for_an_agent_too_old_to_enforce_it() {
        for level in [1, LEVEL_CONNECTION_LIMITS - 1] {
            let (p, r) = try_run(
                &limited(1, level),
                req("web1", vec![port(3389, "203.0.113.7", 600)]),
            );
            let Err(Error::Refused { code, message }) = r else {
                panic!("not refused: {r:?}");
            };
            assert_eq!(code, ErrorCode::AgentTooOld);
            assert!(message.contains("VM web1") && message.contains("connection limits"));
            assert!(p.requests.is_empty() && p.grants.is_empty() && p.outbox.is_empty());
            // An unlimited port of the same VM is still granted.
            let (p, r) = try_run(
                &limited(1, level),
                req("web1", vec![port(22, "203.0.113.7", 600)]),
            );
            assert!(r.is_ok());
            assert_eq!(p.grants.len(), 1);
        }
    }

    #[test]
    fn a_denied_request_plans_no_grant_and_names_every_reason() {
        let p = run(
            &snapshot(),
            &[(
                caller("*"),
                req(
                    "web1",
                    vec![
                        port(22, "198.51.100.1", 4 * 3600),
                        port(3389, "203.0.113.7", 60),
                    ],
                ),
            )],
        );
        let r = p.answers[0].as_ref().unwrap();
        assert_eq!(r.status, PortStatus::Denied);
        let mut codes: Vec<&str> = r.denial_reasons.iter().map(|d| d.reason.as_str()).collect();
        codes.sort();
        assert_eq!(codes, ["DurationExceedsMaximum", "SourceNotAllowed"]);
        assert!(p.grants.is_empty() && p.outbox.is_empty());
        assert_eq!(
            p.ports[1].status_reason,
            Some(StatusReason::OtherPortDenied)
        );
        assert_eq!(p.activity[0].outcome, ActivityOutcome::Denied);
        // No policy at all for db1.
        let p = run(
            &snapshot(),
            &[(caller("*"), req("db1", vec![port(22, "203.0.113.7", 60)]))],
        );
        assert_eq!(
            p.answers[0].as_ref().unwrap().denial_reasons[0].reason,
            StatusReason::NoPolicy
        );
    }

    #[test]
    fn unknown_vms_and_missing_rights_plan_nothing() {
        let p = run(
            &snapshot(),
            &[
                (caller("*"), req("nope", vec![port(22, "203.0.113.7", 60)])),
                (
                    caller("rg:dev"),
                    req("web1", vec![port(22, "203.0.113.7", 60)]),
                ),
            ],
        );
        assert_eq!(
            p.answers[0].as_ref().err().and_then(Error::code),
            Some(&ErrorCode::VmNotFound)
        );
        assert_eq!(
            p.answers[1].as_ref().err().and_then(Error::code),
            Some(&ErrorCode::Forbidden)
        );
        assert!(p.requests.is_empty() && p.activity.is_empty());
        assert_eq!((p.request_seq, p.outbox_seq), (10, 100));
    }

    #[test]
    fn supersede_in_the_database_and_within_the_batch() {
        let mut s = snapshot();
        s.active.push(ActiveGrant {
            id: "old".into(),
            request_id: "r0".into(),
            port_idx: 0,
            vm: "web1".into(),
            port: 22,
            protocol: "TCP".into(),
            prefix: "203.0.113.7/32".into(),
        });
        let job = || (caller("*"), req("web1", vec![port(22, "203.0.113.7", 60)]));
        let p = run(&s, &[job(), job()]);
        // The first new grant supersedes the stored one, the second the first.
        assert_eq!(p.superseded, [("old".to_string(), "id2".to_string())]);
        assert_eq!(p.ports_to_close, [("r0".to_string(), 0)]);
        assert_eq!(p.grants[0].state, GrantState::Superseded);
        assert_eq!(p.grants[0].superseded_by.as_deref(), Some("id4"));
        assert_eq!(p.grants[1].state, GrantState::Pending);
        assert_eq!(p.ports[0].status, PortStatus::Revoked);
        assert_eq!(
            p.ports[0].status_reason,
            Some(StatusReason::NewerRequestInitiated)
        );
        assert_eq!(p.ports[1].status, PortStatus::Initiated);
        // Each apply is followed by the revocation of what it replaces.
        let rows: Vec<(i64, &str, &str)> = p
            .outbox
            .iter()
            .map(|o| (o.seq, o.op.as_str(), o.grant_id.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (101, "apply", "id2"),
                (102, "revoke", "old"),
                (103, "apply", "id4"),
                (104, "revoke", "id2")
            ]
        );
        assert_eq!(p.outbox[2].replaces, ["id2"]);
        // A different prefix is not superseded.
        let other = (caller("*"), req("web1", vec![port(22, "203.0.113.8", 60)]));
        assert!(run(&s, &[other]).superseded.is_empty());
    }

    #[test]
    fn a_request_under_an_approval_rule_waits_and_plans_no_grant() {
        let mut s = snapshot();
        let mut body = s.policies[&(PolicyScope::ResourceGroup, "prod".to_string())].clone();
        body.ports[0].approval = Some(jitgate_api::ApprovalRule {
            auto_approve_up_to: Some("PT30M".into()),
            stages: vec![jitgate_api::ApprovalStage {
                approvers: vec!["group:sec".into()],
                required: 1,
            }],
            allow_self_approval: false,
            allow_emergency: false,
            timeout: Some("PT2H".into()),
        });
        s.policies
            .insert((PolicyScope::ResourceGroup, "prod".into()), body);
        let short = (caller("*"), req("web1", vec![port(22, "203.0.113.7", 600)]));
        let long = (
            caller("*"),
            req("web1", vec![port(22, "203.0.113.7", 3600)]),
        );
        // Up to autoApproveUpTo: approved by policy. Beyond: pending, no grant, a deadline.
        let p = run(&s, &[short, long.clone()]);
        assert_eq!(p.answers[0].as_ref().unwrap().status, PortStatus::Initiated);
        let r = p.answers[1].as_ref().unwrap();
        assert_eq!(r.status, PortStatus::PendingApproval);
        assert_eq!(
            p.grants.len(),
            1,
            "only the auto-approved request has a grant"
        );
        assert_eq!(p.requests[1].deadline_ms, Some(NOW + 2 * 3600 * 1000));
        assert_eq!(p.requests[1].approval.as_ref().map(Vec::len), Some(1));
        assert_eq!(p.ports[1].status, PortStatus::PendingApproval);
        assert_eq!(p.ports[1].start_ms, None);
        // The principal's pending limit (2 in `run`) counts what is stored and this batch.
        s.pending.insert("token:alice".into(), 1);
        let p = run(&s, &[long.clone(), long]);
        assert!(p.answers[0].is_ok());
        assert_eq!(
            p.answers[1].as_ref().err().and_then(Error::code),
            Some(&ErrorCode::TooManyPending)
        );
        assert_eq!(p.requests.len(), 1);
    }

    #[test]
    fn the_final_approval_opens_the_window_it_gets_now() {
        use crate::store::requests::{Pending, PendingPort};
        let s = snapshot();
        let port = |idx, duration_ms: Option<i64>, booked_ms: Option<i64>, end_ms| PendingPort {
            idx,
            vm: "web1".into(),
            resource_group: "prod".into(),
            number: 22,
            protocol: jitgate_api::ProtoSel::Tcp,
            prefixes: "203.0.113.7/32".into(),
            end_ms,
            duration_ms,
            booked_ms,
            max_connections: None,
        };
        let req = Pending {
            id: "r1".into(),
            principal: "token:alice".into(),
            requestor: "alice".into(),
            justification: "x".into(),
            rules: Vec::new(),
            deadline_ms: NOW + 3_600_000,
            ports: vec![
                // A duration: starts at the approval, 40 minutes after the request.
                port(0, Some(600_000), None, NOW - 40 * 60_000 + 600_000),
                // Booked for a start that passed while it waited: opens now, keeps its end.
                port(
                    1,
                    Some(1_800_000),
                    Some(NOW - 60_000),
                    NOW - 60_000 + 1_800_000,
                ),
                // Booked ahead: opens at its start, supersedes nothing.
                port(2, Some(600_000), Some(NOW + 3_600_000), NOW + 4_200_000),
            ],
        };
        let start = Start {
            now: NOW,
            request_seq: 1,
            outbox_seq: 1,
            max_pending: 20,
        };
        let mut n = 0;
        let a = approve(&s, &req, start, &mut || {
            n += 1;
            format!("g{n}")
        })
        .unwrap();
        assert!(a.denial.is_empty(), "{:?}", a.denial);
        let windows: Vec<_> = a.ports.iter().map(|p| p.window).collect();
        assert_eq!(
            windows,
            [
                Some((NOW, NOW + 600_000)),
                Some((NOW, NOW - 60_000 + 1_800_000)),
                Some((NOW + 3_600_000, NOW + 4_200_000)),
            ]
        );
        assert_eq!(a.plan.grants[2].start_ms, NOW + 3_600_000);
        // The policy of this moment still decides: a window over its maximum is denied.
        let mut long = req.clone();
        long.ports = vec![port(0, Some(4 * 3_600_000), None, NOW)];
        let a = approve(&s, &long, start, &mut || "g".into()).unwrap();
        assert_eq!(a.denial[0].reason, StatusReason::DurationExceedsMaximum);
        assert!(a.plan.grants.is_empty());
    }
}
