//! Group commit for access requests.
//!
//! Initiates are queued to one writer task, which takes whatever is waiting (up to
//! `MAX_BATCH`) and decides it in one transaction: one lookup of the VMs and policies, the
//! evaluations in memory, multi-row inserts, one commit (one fsync). Each request is still
//! decided exactly as if alone and in arrival order (a later request in the batch supersedes an
//! earlier one). A request that fails validation (unknown VM, no right) gets its error and
//! writes nothing; a database error rolls the whole batch back and every request in it gets an
//! error, so nothing is ever half-written.

use jitgate_api::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, StoreError};
use crate::eval;
use crate::model::{self, Initiate, Policy, fmt_time};
use crate::store::{Actor, NewActivityOwned, begin_write_on, lock_writer, op};
use jitgate_api::{
    DenialReason, PolicyBody as PolicyJson, PortStatus, ProtoSel, RequestPort as RequestPortJson,
    RequestView as RequestJson, RequestVm as RequestVmJson, StatusReason,
};
use jitgate_common::Protocol;

type Result<T, E = StoreError> = std::result::Result<T, E>;

pub const MAX_BATCH: usize = 64;
/// Largest number of bind parameters per statement (SQLite's limit is 32766).
const MAX_PARAMS: usize = 30_000;

pub struct Job {
    pub caller: Caller,
    pub req: Initiate,
    pub reply: oneshot::Sender<Result<RequestJson>>,
}

/// Runs the writer until every sender is gone.
pub async fn writer(
    lock: Arc<Mutex<sqlx::AnyConnection>>,
    sqlite: bool,
    mut rx: mpsc::Receiver<Job>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let n = jobs.len();
        let mut replies = Vec::with_capacity(n);
        let mut work = Vec::with_capacity(n);
        for j in jobs {
            replies.push(j.reply);
            work.push((j.caller, j.req));
        }
        let t0 = std::time::Instant::now();
        let res = decide(&lock, sqlite, &work).await;
        tracing::debug!(
            batch = n,
            elapsed_us = t0.elapsed().as_micros() as u64,
            "initiate batch"
        );
        match res {
            Ok(results) => {
                for (r, res) in replies.into_iter().zip(results) {
                    let _ = r.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = n, "initiate batch failed; rolled back");
                for r in replies {
                    let _ = r.send(Err(ApiError::internal().into()));
                }
            }
        }
    }
}

/// A typed bind value for multi-row statements.
pub(crate) enum V {
    I(i64),
    S(String),
    OS(Option<String>),
}

/// Inserts `rows` (each `cols` values) with one statement per chunk: on SQLite one JSON
/// parameter expanded by `json_each` (one cached statement whatever the row count), elsewhere
/// a multi-row VALUES list.
pub(crate) async fn insert_rows(
    conn: &mut sqlx::AnyConnection,
    sqlite: bool,
    head: &str,
    cols: usize,
    rows: Vec<Vec<V>>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if sqlite {
        let data: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|r| {
                serde_json::Value::Array(
                    r.into_iter()
                        .map(|v| match v {
                            V::I(i) => serde_json::Value::from(i),
                            V::S(s) => serde_json::Value::String(s),
                            V::OS(s) => {
                                s.map_or(serde_json::Value::Null, serde_json::Value::String)
                            }
                        })
                        .collect(),
                )
            })
            .collect();
        let exprs: Vec<String> = (0..cols).map(|c| format!("value ->> {c}")).collect();
        let sql = format!("{head} SELECT {} FROM json_each($1)", exprs.join(", "));
        sqlx::query(&sql)
            .bind(serde_json::to_string(&data)?)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    let per = (MAX_PARAMS / cols).max(1);
    let mut it = rows.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<Vec<V>> = it.by_ref().take(per).collect();
        let mut sql = String::from(head);
        sql.push_str(" VALUES ");
        let mut n = 1;
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..cols {
                if c > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("${n}"));
                n += 1;
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    V::I(i) => q.bind(i),
                    V::S(s) => q.bind(s),
                    V::OS(s) => q.bind(s),
                };
            }
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Rows as one JSON array of arrays, for `json_each`.
fn rows_json(rows: Vec<Vec<V>>) -> Result<String> {
    let data: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::Value::Array(
                r.into_iter()
                    .map(|v| match v {
                        V::I(i) => serde_json::Value::from(i),
                        V::S(s) => serde_json::Value::String(s),
                        V::OS(s) => s.map_or(serde_json::Value::Null, serde_json::Value::String),
                    })
                    .collect(),
            )
        })
        .collect();
    Ok(serde_json::to_string(&data)?)
}

struct NewGrant {
    id: String,
    request_id: String,
    port_idx: i64,
    vm: String,
    protocol: &'static str,
    port: i64,
    prefix: String,
    start_ms: i64,
    end_ms: i64,
    on_expiry: &'static str,
    state: &'static str,
    superseded_by: Option<String>,
    replaces: Vec<String>,
}

type Key = (String, i64, &'static str, String);

/// Decides a batch in one transaction. The outer error is a database failure (rolled back).
pub(crate) async fn decide(
    lock: &Arc<Mutex<sqlx::AnyConnection>>,
    sqlite: bool,
    work: &[(Caller, Initiate)],
) -> Result<Vec<Result<RequestJson>>> {
    let t0 = std::time::Instant::now();
    let mut names: Vec<&str> = work
        .iter()
        .flat_map(|(_, r)| r.vms.iter().map(|v| v.name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let mut groups: HashMap<String, String> = HashMap::new();
    let mut policies: HashMap<(String, String), Policy> = HashMap::new();
    // Active grants that approved requests may supersede: (id, request, port idx, vm, port,
    // protocol, prefix).
    let mut found: Vec<(String, String, i64, String, i64, String, String)> = Vec::new();
    let parse_policy = |body: &str| -> Result<Policy> {
        let body: PolicyJson = serde_json::from_str(body)?;
        Policy::from_json(&body).map_err(|e| StoreError::Corrupt(format!("stored policy: {e}")))
    };
    let mut w;
    if sqlite {
        // Everything the batch reads, in one round trip: begin, lock the chain head and
        // counters, the VMs, their policies, and the active grants for every (VM, port,
        // protocol, prefix) the requests could create (a superset of what they will create).
        w = lock_writer(lock, true).await;
        w.mark_open();
        let mut pre: Vec<(&str, u16, &str, String)> = Vec::new();
        for (_, req) in work {
            for vm in &req.vms {
                for p in &vm.ports {
                    let protos: &[Protocol] = match p.protocol {
                        Some(ps) => ps.expand(),
                        None => &[Protocol::Tcp, Protocol::Udp],
                    };
                    for proto in protos {
                        for pfx in &p.prefixes {
                            pre.push((
                                vm.name.as_str(),
                                p.number.get(),
                                ProtoSel::from(*proto).as_str(),
                                pfx.to_string(),
                            ));
                        }
                    }
                }
            }
        }
        // Each key once: a key repeated would return its grants once per repetition.
        pre.sort();
        pre.dedup();
        let pre: Vec<serde_json::Value> = pre
            .into_iter()
            .map(|(vm, port, proto, prefix)| serde_json::json!([vm, port, proto, prefix]))
            .collect();
        let rows = sqlx::query(
            "BEGIN; \
             UPDATE counters SET value = value WHERE name IN ('chain', 'request', 'outbox') \
             RETURNING 'C', name, value, hash; \
             SELECT 'V', name, resource_group FROM vms WHERE name IN (SELECT value FROM json_each($1)); \
             SELECT 'P', scope_kind, scope_name, body FROM policies WHERE \
             (scope_kind = 'vm' AND scope_name IN (SELECT value FROM json_each($1))) OR \
             (scope_kind = 'rg' AND scope_name IN (SELECT resource_group FROM vms \
             WHERE name IN (SELECT value FROM json_each($1)))); \
             SELECT 'G', g.id, g.request_id, g.port_idx, g.vm, g.port, g.protocol, g.prefix \
             FROM json_each($2) AS k CROSS JOIN grants AS g \
             WHERE g.vm = k.value ->> 0 AND g.port = k.value ->> 1 AND g.protocol = k.value ->> 2 \
             AND g.prefix = k.value ->> 3 AND g.state IN ('pending', 'applied')",
        )
        .bind(serde_json::to_string(&names)?)
        .bind(serde_json::to_string(&pre)?)
        .fetch_all(&mut *w.tx)
        .await?;
        let (mut seq, mut hash, mut rq, mut ob, mut seen) = (0, String::new(), 0, 0, 0);
        for r in &rows {
            match r.try_get::<String, _>(0)?.as_str() {
                "C" => {
                    seen += 1;
                    let v: i64 = r.try_get(2)?;
                    match r.try_get::<String, _>(1)?.as_str() {
                        "chain" => {
                            seq = v;
                            hash = r.try_get(3)?;
                        }
                        "request" => rq = v,
                        _ => ob = v,
                    }
                }
                "V" => {
                    groups.insert(r.try_get(1)?, r.try_get(2)?);
                }
                "P" => {
                    let p = parse_policy(&r.try_get::<String, _>(3)?)?;
                    policies.insert((r.try_get(1)?, r.try_get(2)?), p);
                }
                _ => found.push((
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                )),
            }
        }
        if seen != 3 {
            return Err(StoreError::Corrupt(
                "the counters table is incomplete".into(),
            ));
        }
        w.set_head(seq, hash, rq, ob);
    } else {
        w = begin_write_on(lock, false).await?;
        for chunk in names.chunks(500) {
            let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT name, resource_group FROM vms WHERE name IN ({})",
                ph.join(",")
            );
            let mut q = sqlx::query(&sql);
            for n in chunk {
                q = q.bind(*n);
            }
            for r in q.fetch_all(&mut *w.tx).await? {
                groups.insert(r.try_get(0)?, r.try_get(1)?);
            }
        }
    }
    let now = w.now;
    let mut marks = vec![("begin+reads", t0.elapsed())];
    let mut rgs: Vec<&str> = groups.values().map(String::as_str).collect();
    rgs.sort();
    rgs.dedup();
    if !sqlite {
        let keys: Vec<(&str, &str)> = names
            .iter()
            .filter(|n| groups.contains_key(**n))
            .map(|n| ("vm", *n))
            .chain(rgs.iter().map(|g| ("rg", *g)))
            .collect();
        for chunk in keys.chunks(500) {
            let mut sql = String::from("SELECT scope_kind, scope_name, body FROM policies WHERE ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                sql.push_str(&format!(
                    "(scope_kind = ${} AND scope_name = ${})",
                    2 * i + 1,
                    2 * i + 2
                ));
            }
            let mut q = sqlx::query(&sql);
            for (k, n) in chunk {
                q = q.bind(*k).bind(*n);
            }
            for r in q.fetch_all(&mut *w.tx).await? {
                let p = parse_policy(&r.try_get::<String, _>(2)?)?;
                policies.insert((r.try_get(0)?, r.try_get(1)?), p);
            }
        }
    }

    // Counters (read with the chain head).
    let mut request_seq = w.request_ctr;
    let mut outbox_seq = w.outbox_ctr;

    // Evaluate every request, in order.
    struct Decided {
        idx: usize,
        id: String,
        denied: bool,
        reasons: Vec<DenialReason>,
        /// Per VM: (name, group, ports: (RequestedPort index, outcome))
        vms: Vec<(String, String, Vec<eval::PortOutcome>)>,
    }
    let mut results: Vec<Option<Result<RequestJson>>> = (0..work.len()).map(|_| None).collect();
    let mut decided: Vec<Decided> = Vec::new();
    for (idx, (caller, req)) in work.iter().enumerate() {
        let mut vms = Vec::new();
        let mut err = None;
        for vm in &req.vms {
            let Some(group) = groups.get(&vm.name) else {
                err = Some(ApiError::not_found(
                    ErrorCode::VmNotFound,
                    format!("no VM {}", vm.name),
                ));
                break;
            };
            if let Err(e) = caller.check_vm(Role::Requester, &vm.name, group) {
                err = Some(e);
                break;
            }
            let policy = policies
                .get(&("vm".to_string(), vm.name.clone()))
                .or_else(|| policies.get(&("rg".to_string(), group.clone())));
            let outcomes: Vec<eval::PortOutcome> = vm
                .ports
                .iter()
                .map(|p| eval::evaluate_port(policy, p, now))
                .collect();
            vms.push((vm.name.clone(), group.clone(), outcomes));
        }
        if let Some(e) = err {
            results[idx] = Some(Err(e.into()));
            continue;
        }
        let mut reasons = Vec::new();
        for ((name, _, outcomes), vm) in vms.iter().zip(&req.vms) {
            for (o, p) in outcomes.iter().zip(&vm.ports) {
                for (code, msg) in &o.reasons {
                    reasons.push(DenialReason {
                        virtual_machine: name.clone(),
                        number: p.number.get(),
                        protocol: o.protocol,
                        reason: code.clone(),
                        message: msg.clone(),
                    });
                }
            }
        }
        decided.push(Decided {
            idx,
            id: auth::new_guid(),
            denied: !reasons.is_empty(),
            reasons,
            vms,
        });
    }

    // Existing active grants that the approved ones may supersede (exact key match).
    let mut keys: Vec<Key> = Vec::new();
    for d in decided.iter().filter(|d| !d.denied) {
        let req = &work[d.idx].1;
        for ((name, _, outcomes), vm) in d.vms.iter().zip(&req.vms) {
            for (o, p) in outcomes.iter().zip(&vm.ports) {
                for g in &o.grants {
                    keys.push((
                        name.clone(),
                        i64::from(p.number.get()),
                        ProtoSel::from(g.protocol).as_str(),
                        g.prefix.to_string(),
                    ));
                }
            }
        }
    }
    keys.sort();
    keys.dedup();
    // key -> active grants (id, request_id, port_idx, in_db)
    let mut active: HashMap<Key, Vec<(String, String, i64, bool)>> = HashMap::new();
    for chunk in keys.chunks(500).filter(|_| !sqlite) {
        let mut sql = String::from(
            "SELECT id, request_id, port_idx, vm, port, protocol, prefix FROM grants WHERE (",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(vm = ${} AND port = ${} AND protocol = ${} AND prefix = ${} AND state IN ('pending', 'applied'))",
                4 * i + 1,
                4 * i + 2,
                4 * i + 3,
                4 * i + 4
            ));
        }
        sql.push(')');
        let mut q = sqlx::query(&sql);
        for (vm, port, proto, prefix) in chunk {
            q = q
                .bind(vm.as_str())
                .bind(*port)
                .bind(*proto)
                .bind(prefix.as_str());
        }
        for r in q.fetch_all(&mut *w.tx).await? {
            found.push((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
            ));
        }
    }
    found.sort();
    found.dedup();
    for (id, rid, pidx, vm, port, proto, prefix) in found {
        let proto = if proto == "TCP" { "TCP" } else { "UDP" };
        active
            .entry((vm, port, proto, prefix))
            .or_default()
            .push((id, rid, pidx, true));
    }

    marks.push(("supersede-lookup", t0.elapsed()));
    // Build the rows.
    let mut request_rows = Vec::new();
    let mut port_rows: Vec<Vec<V>> = Vec::new();
    // (request id, idx) -> position in port_rows, for in-batch supersede
    let mut port_pos: HashMap<(String, i64), usize> = HashMap::new();
    let mut grants: Vec<NewGrant> = Vec::new();
    let mut grant_pos: HashMap<String, usize> = HashMap::new();
    let mut db_superseded: Vec<(String, String)> = Vec::new(); // (old id, new id)
    let mut db_ports_touched: Vec<(String, i64)> = Vec::new();
    let mut activity: Vec<NewActivityOwned> = Vec::new();
    let mut records: Vec<(usize, RequestJson)> = Vec::new();
    for d in &decided {
        let (caller, req) = &work[d.idx];
        request_seq += 1;
        request_rows.push(vec![
            V::S(d.id.clone()),
            V::I(request_seq),
            V::S(caller.name.clone()),
            V::S(caller.token_id.clone()),
            V::S(caller.address.to_string()),
            V::S(req.justification.clone()),
            V::I(now),
            V::I(i64::from(d.denied)),
            V::S(serde_json::to_string(&d.reasons)?),
        ]);
        let mut superseded_requests: Vec<String> = Vec::new();
        let mut idx: i64 = 0;
        let mut rec_vms: Vec<RequestVmJson> = Vec::new();
        for ((name, group, outcomes), vm) in d.vms.iter().zip(&req.vms) {
            let mut ports_log = Vec::new();
            let mut rec_ports = Vec::new();
            for (o, p) in outcomes.iter().zip(&vm.ports) {
                let prefixes: Vec<String> = p.prefixes.iter().map(|x| x.to_string()).collect();
                let (status, reason) = if d.denied {
                    (
                        PortStatus::Denied,
                        Some(
                            o.reasons
                                .first()
                                .map(|r| r.0.clone())
                                .unwrap_or(StatusReason::OtherPortDenied),
                        ),
                    )
                } else {
                    (PortStatus::Initiated, None)
                };
                let on_expiry = o.grants.first().map(|g| g.on_expiry);
                port_pos.insert((d.id.clone(), idx), port_rows.len());
                port_rows.push(vec![
                    V::S(d.id.clone()),
                    V::I(idx),
                    V::S(name.clone()),
                    V::S(group.clone()),
                    V::I(i64::from(p.number.get())),
                    V::S(o.protocol.as_str().into()),
                    V::S(prefixes.join(",")),
                    V::I(p.end_ms),
                    V::S(status.as_str().into()),
                    V::OS(reason.as_ref().map(|r| r.as_str().to_string())),
                    V::OS(on_expiry.map(|e| e.as_str().to_string())),
                ]);
                if !d.denied {
                    for g in &o.grants {
                        let proto = ProtoSel::from(g.protocol).as_str();
                        let key: Key = (
                            name.clone(),
                            i64::from(p.number.get()),
                            proto,
                            g.prefix.to_string(),
                        );
                        let gid = auth::new_guid();
                        let mut replaces = Vec::new();
                        for (oid, orq, oidx, in_db) in active.remove(&key).unwrap_or_default() {
                            if in_db {
                                db_superseded.push((oid.clone(), gid.clone()));
                                db_ports_touched.push((orq.clone(), oidx));
                            } else if let Some(&gp) = grant_pos.get(&oid) {
                                grants[gp].state = "superseded";
                                grants[gp].superseded_by = Some(gid.clone());
                            }
                            if !superseded_requests.contains(&orq) {
                                superseded_requests.push(orq);
                            }
                            replaces.push(oid);
                        }
                        active.entry(key).or_default().push((
                            gid.clone(),
                            d.id.clone(),
                            idx,
                            false,
                        ));
                        grant_pos.insert(gid.clone(), grants.len());
                        grants.push(NewGrant {
                            id: gid,
                            request_id: d.id.clone(),
                            port_idx: idx,
                            vm: name.clone(),
                            protocol: proto,
                            port: i64::from(p.number.get()),
                            prefix: g.prefix.to_string(),
                            start_ms: now,
                            end_ms: p.end_ms,
                            on_expiry: g.on_expiry.as_str(),
                            state: "pending",
                            superseded_by: None,
                            replaces,
                        });
                    }
                }
                ports_log.push(serde_json::json!({
                    "number": p.number.get(),
                    "protocol": o.protocol.as_str(),
                    "allowedSourceAddressPrefixes": prefixes,
                    "startTimeUtc": fmt_time(now),
                    "endTimeUtc": fmt_time(p.end_ms),
                    "status": status.as_str(),
                    "statusReason": reason.as_ref().map(|r| r.as_str()),
                }));
                let (one, many) = model::prefixes_to_json(&p.prefixes);
                rec_ports.push(RequestPortJson {
                    number: p.number.get(),
                    protocol: o.protocol,
                    allowed_source_address_prefix: one,
                    allowed_source_address_prefixes: many,
                    end_time_utc: fmt_time(p.end_ms),
                    status,
                    status_reason: reason,
                    on_expiry,
                });
                idx += 1;
            }
            let vm_reasons: Vec<&DenialReason> = d
                .reasons
                .iter()
                .filter(|r| &r.virtual_machine == name)
                .collect();
            activity.push(NewActivityOwned {
                operation: op::INITIATE,
                resource_type: "VirtualMachine",
                resource_group: group.clone(),
                vm: name.clone(),
                actor: Actor::of(caller),
                outcome: if d.denied { "Denied" } else { "Succeeded" },
                request_id: d.id.clone(),
                details: serde_json::json!({
                    "justification": req.justification,
                    "ports": ports_log,
                    "denialReasons": vm_reasons,
                    "supersedes": superseded_requests,
                }),
            });
            rec_vms.push(RequestVmJson {
                id: name.clone(),
                resource_group: group.clone(),
                ports: rec_ports,
            });
        }
        records.push((
            d.idx,
            RequestJson {
                id: d.id.clone(),
                start_time_utc: fmt_time(now),
                requestor: caller.name.clone(),
                justification: req.justification.clone(),
                caller_address: caller.address.to_string(),
                status: if d.denied {
                    PortStatus::Denied
                } else {
                    PortStatus::Initiated
                },
                virtual_machines: rec_vms,
                denial_reasons: d.reasons.clone(),
            },
        ));
    }

    // Ports of this batch whose grants were all superseded within the batch.
    let mut live: HashMap<(String, i64), bool> = HashMap::new();
    for g in &grants {
        let e = live
            .entry((g.request_id.clone(), g.port_idx))
            .or_insert(false);
        *e |= g.state == "pending";
    }
    for (k, is_live) in &live {
        if !is_live && let Some(&pos) = port_pos.get(k) {
            port_rows[pos][8] = V::S("Revoked".into());
            port_rows[pos][9] = V::OS(Some("NewerRequestInitiated".into()));
        }
    }

    marks.push(("built", t0.elapsed()));
    // Write.
    for (old, new) in &db_superseded {
        sqlx::query("UPDATE grants SET state = 'superseded', superseded_by = $1 WHERE id = $2")
            .bind(new)
            .bind(old)
            .execute(&mut *w.tx)
            .await?;
    }
    db_ports_touched.sort();
    db_ports_touched.dedup();
    for (rid, idx) in &db_ports_touched {
        crate::store::close_port_if_done(&mut w, rid, *idx, "NewerRequestInitiated").await?;
    }
    let mut grant_rows = Vec::with_capacity(grants.len());
    let mut outbox_rows = Vec::with_capacity(grants.len());
    for g in grants {
        outbox_seq += 1;
        outbox_rows.push(vec![
            V::I(outbox_seq),
            V::S(g.vm.clone()),
            V::S("apply".into()),
            V::S(g.id.clone()),
            V::S(g.replaces.join(",")),
            V::I(now),
        ]);
        // Each grant this one supersedes is withdrawn right after it, in the same order on
        // the agent's connection (new grant in place first, so a covered flow is never cut).
        for old in &g.replaces {
            outbox_seq += 1;
            outbox_rows.push(vec![
                V::I(outbox_seq),
                V::S(g.vm.clone()),
                V::S("revoke".into()),
                V::S(old.clone()),
                V::S(String::new()),
                V::I(now),
            ]);
        }
        grant_rows.push(vec![
            V::S(g.id),
            V::S(g.request_id),
            V::I(g.port_idx),
            V::S(g.vm),
            V::S(g.protocol.into()),
            V::I(g.port),
            V::S(g.prefix),
            V::I(g.start_ms),
            V::I(g.end_ms),
            V::S(g.on_expiry.into()),
            V::S(g.state.into()),
            V::OS(g.superseded_by),
        ]);
    }
    w.request_ctr = request_seq;
    w.outbox_ctr = outbox_seq;
    let activity_rows = w.chain_rows(activity)?;
    let tables: [(&str, usize, Vec<Vec<V>>); 5] = [
        (
            "INSERT INTO requests (id, seq, requestor, token_id, caller_address, justification, start_ms, denied, denial_reasons)",
            9,
            request_rows,
        ),
        (
            "INSERT INTO request_ports (request_id, idx, vm, resource_group, number, protocol, prefixes, end_ms, status, status_reason, on_expiry)",
            11,
            port_rows,
        ),
        (
            "INSERT INTO grants (id, request_id, port_idx, vm, protocol, port, prefix, start_ms, end_ms, on_expiry, state, superseded_by)",
            12,
            grant_rows,
        ),
        (
            "INSERT INTO grant_outbox (seq, vm, op, grant_id, replaces, created_ms)",
            6,
            outbox_rows,
        ),
        (crate::store::ACTIVITY_INSERT, 13, activity_rows),
    ];
    if sqlite {
        // One round trip for all the rows and the counters: SQLite runs the statements of
        // one query in order, binding `$n` by number.
        let mut sql = String::new();
        let mut params: Vec<String> = Vec::new();
        for (head, cols, rows) in tables {
            if rows.is_empty() {
                continue;
            }
            params.push(rows_json(rows)?);
            let exprs: Vec<String> = (0..cols).map(|c| format!("value ->> {c}")).collect();
            sql.push_str(&format!(
                "{head} SELECT {} FROM json_each(${});\n",
                exprs.join(", "),
                params.len()
            ));
        }
        let (seq, req, out, hash) = w.take_counters();
        let base = params.len();
        sql.push_str(&crate::store::counters_update(base + 1));
        sql.push_str(";\nCOMMIT");
        let mut q = sqlx::query(&sql);
        for p in params {
            q = q.bind(p);
        }
        q.bind(seq)
            .bind(req)
            .bind(out)
            .bind(hash)
            .execute(&mut *w.tx)
            .await?;
        marks.push(("inserted", t0.elapsed()));
        w.committed_inline();
    } else {
        for (head, cols, rows) in tables {
            insert_rows(&mut w.tx, false, head, cols, rows).await?;
        }
        marks.push(("inserted", t0.elapsed()));
        w.commit().await?;
    }
    marks.push(("committed", t0.elapsed()));
    if tracing::enabled!(tracing::Level::TRACE) {
        tracing::trace!(batch = work.len(), phases = ?marks, "initiate batch phases");
    }
    for (idx, rec) in records {
        results[idx] = Some(Ok(rec));
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::internal().into())))
        .collect())
}
