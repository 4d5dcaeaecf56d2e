//! The `requests` and `request_ports` tables: access requests as decided, and each port's
//! status (Azure keeps status per port; a request's own status summarises its ports).

use jitgate_api::{
    DenialReason, MaxConnections, OnExpiry, PortStatus, ProtoSel, RequestPort, RequestView,
    RequestVm, StatusReason,
};
use sqlx::{Any, AnyConnection, Executor};

use std::collections::HashMap;

use jitgate_api::ApprovalRule;

use crate::approval::rule::{self, Rule};
use crate::error::{Error, Result};
use crate::input::prefixes_json;
use crate::store::approvals;
use crate::store::backend::{Rows, pair_matches};
use crate::store::db::Json;
use crate::store::write::WriteTx;

#[derive(sqlx::FromRow)]
struct RequestRow {
    requestor: String,
    caller_address: String,
    justification: String,
    start_ms: i64,
    denied: i64,
    #[sqlx(try_from = "String")]
    denial_reasons: Json<Vec<DenialReason>>,
    approval: Option<String>,
    deadline_ms: Option<i64>,
    emergency: i64,
}

#[derive(sqlx::FromRow)]
struct PortRow {
    vm: String,
    resource_group: String,
    number: i64,
    #[sqlx(try_from = "String")]
    protocol: ProtoSel,
    prefixes: String,
    end_ms: i64,
    #[sqlx(try_from = "String")]
    status: PortStatus,
    status_reason: Option<String>,
    on_expiry: Option<String>,
    start_ms: Option<i64>,
    max_connections: Option<i64>,
}

/// A stored connection limit (`max_connections` of `request_ports` and `grants`; NULL:
/// unlimited), checked as it is read.
pub fn stored_limit(v: Option<i64>) -> Result<Option<MaxConnections>> {
    v.map(|n| {
        u64::try_from(n)
            .map_err(|_| jitgate_api::MaxConnectionsError)
            .and_then(MaxConnections::try_from)
            .map_err(|e| Error::Corrupt(format!("stored max_connections {n}: {e}")))
    })
    .transpose()
}

/// A connection limit as stored.
pub fn limit_column(v: Option<MaxConnections>) -> Option<i64> {
    v.map(|m| i64::from(m.get()))
}

/// A request's status from its ports: Denied if denied, else PendingApproval, Initiated or
/// Applied if any port is (in that order), else Revoked.
pub fn summary(denied: bool, ports: &[PortStatus]) -> PortStatus {
    if denied {
        PortStatus::Denied
    } else if ports.contains(&PortStatus::PendingApproval) {
        PortStatus::PendingApproval
    } else if ports.contains(&PortStatus::Initiated) {
        PortStatus::Initiated
    } else if ports.contains(&PortStatus::Applied) {
        PortStatus::Applied
    } else {
        PortStatus::Revoked
    }
}

/// The request as the API shows it; None if there is none.
pub async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<RequestView>> {
    let row: Option<RequestRow> = sqlx::query_as(
        "SELECT requestor, caller_address, justification, start_ms, denied, denial_reasons, \
         approval, deadline_ms, emergency FROM requests WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let ports: Vec<PortRow> = sqlx::query_as(
        "SELECT vm, resource_group, number, protocol, prefixes, end_ms, status, status_reason, \
         on_expiry, start_ms, max_connections FROM request_ports WHERE request_id = $1 \
         ORDER BY idx",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut vms: Vec<RequestVm> = Vec::new();
    let mut statuses = Vec::with_capacity(ports.len());
    for p in ports {
        let list: Vec<String> = p.prefixes.split(',').map(String::from).collect();
        let (one, many) = if list.len() == 1 {
            (list.first().cloned(), None)
        } else {
            (None, Some(list))
        };
        statuses.push(p.status.clone());
        let port = RequestPort {
            number: u16::try_from(p.number).map_err(Error::corrupt)?,
            protocol: p.protocol,
            allowed_source_address_prefix: one,
            allowed_source_address_prefixes: many,
            start_time_utc: p.start_ms.map(jitgate_api::time::format),
            end_time_utc: jitgate_api::time::format(p.end_ms),
            status: p.status,
            status_reason: p
                .status_reason
                .map(StatusReason::try_from)
                .transpose()
                .map_err(Error::corrupt)?,
            on_expiry: p.on_expiry.and_then(|s| s.parse::<OnExpiry>().ok()),
            max_connections: stored_limit(p.max_connections)?,
        };
        match vms.iter_mut().find(|v| v.id == p.vm) {
            Some(v) => v.ports.push(port),
            None => vms.push(RequestVm {
                id: p.vm,
                resource_group: p.resource_group,
                ports: vec![port],
            }),
        }
    }
    let decisions = approvals::of_request(&mut *conn, id).await?;
    let pending_approval = match (&row.approval, row.deadline_ms) {
        (Some(doc), Some(_)) => {
            let rules = rules_of(doc)?;
            let counted = approvals::counted(&decisions);
            rule::pending_stages(&rules, &counted)
        }
        _ => Vec::new(),
    };
    Ok(Some(RequestView {
        id: id.into(),
        start_time_utc: jitgate_api::time::format(row.start_ms),
        requestor: row.requestor,
        justification: row.justification,
        caller_address: row.caller_address,
        status: summary(row.denied != 0, &statuses),
        virtual_machines: vms,
        denial_reasons: row.denial_reasons.0,
        approvals: decisions.iter().map(approvals::Decided::record).collect(),
        pending_approval,
        approval_deadline_utc: row.deadline_ms.map(jitgate_api::time::format),
        emergency: row.emergency != 0,
    }))
}

/// The approval rules fixed on a request (its `approval` column).
pub fn rules_of(doc: &str) -> Result<Vec<Rule>> {
    let bodies: Vec<ApprovalRule> = serde_json::from_str(doc).map_err(Error::corrupt)?;
    bodies
        .iter()
        .map(|b| Rule::from_body(b).map_err(|e| Error::Corrupt(format!("stored rule: {e}"))))
        .collect()
}

/// The principal id of the request's requester; None if there is no such request.
pub async fn owner(conn: &mut AnyConnection, id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT principal FROM requests WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.0))
}

/// How many requests each of `principals` has pending.
pub async fn pending_counts(
    conn: &mut AnyConnection,
    principals: &[&str],
) -> Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for p in principals {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM requests WHERE principal = $1 AND deadline_ms IS NOT NULL",
        )
        .bind(*p)
        .fetch_one(&mut *conn)
        .await?;
        if n > 0 {
            out.insert(p.to_string(), n);
        }
    }
    Ok(out)
}

/// A pending request as a decision reads it (inside its transaction).
#[derive(Clone, Debug)]
pub struct Pending {
    pub id: String,
    pub principal: String,
    pub requestor: String,
    pub justification: String,
    pub rules: Vec<Rule>,
    pub deadline_ms: i64,
    pub ports: Vec<PendingPort>,
}

/// A port of a pending request.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PendingPort {
    pub idx: i64,
    pub vm: String,
    pub resource_group: String,
    pub number: i64,
    #[sqlx(try_from = "String")]
    pub protocol: ProtoSel,
    pub prefixes: String,
    pub end_ms: i64,
    pub duration_ms: Option<i64>,
    pub booked_ms: Option<i64>,
    /// The port's connection limit as recorded at the request (see [`stored_limit`]).
    pub max_connections: Option<i64>,
}

impl Pending {
    /// Each VM of the request once, with its group.
    pub fn vms(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .ports
            .iter()
            .map(|p| (p.vm.as_str(), p.resource_group.as_str()))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The request if it exists, and whether it is pending (None inside: it is not).
pub async fn pending(conn: &mut AnyConnection, id: &str) -> Result<Option<Option<Pending>>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        principal: String,
        requestor: String,
        justification: String,
        approval: Option<String>,
        deadline_ms: Option<i64>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT principal, requestor, justification, approval, deadline_ms FROM requests \
         WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (Some(doc), Some(deadline_ms)) = (row.approval, row.deadline_ms) else {
        return Ok(Some(None));
    };
    let ports: Vec<PendingPort> = sqlx::query_as(
        "SELECT idx, vm, resource_group, number, protocol, prefixes, end_ms, duration_ms, \
         booked_ms, max_connections FROM request_ports WHERE request_id = $1 ORDER BY idx",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Some(Pending {
        id: id.to_string(),
        principal: row.principal,
        requestor: row.requestor,
        justification: row.justification,
        rules: rules_of(&doc)?,
        deadline_ms,
        ports,
    })))
}

/// Ids of pending requests, oldest first (`due`: only those at or past their deadline).
pub async fn pending_ids(
    ex: impl Executor<'_, Database = Any>,
    due: Option<i64>,
    limit: i64,
) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM requests WHERE deadline_ms IS NOT NULL AND deadline_ms <= $1 \
         ORDER BY seq LIMIT $2",
    )
    .bind(due.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// A pending request ends without access: every port Denied with `reason`.
pub async fn end_pending(w: &mut WriteTx, id: &str, reason: &StatusReason) -> Result<()> {
    sqlx::query("UPDATE requests SET deadline_ms = NULL, denied = 1 WHERE id = $1")
        .bind(id)
        .execute(w.conn())
        .await?;
    sqlx::query(
        "UPDATE request_ports SET status = $1, status_reason = $2 WHERE request_id = $3 \
         AND status = $4",
    )
    .bind(PortStatus::Denied.as_str())
    .bind(reason.as_str())
    .bind(id)
    .bind(PortStatus::PendingApproval.as_str())
    .execute(w.conn())
    .await?;
    Ok(())
}

/// A pending request is approved at `now`; `denial`: refused by the policy of that moment.
pub async fn set_decided(
    w: &mut WriteTx,
    id: &str,
    emergency: bool,
    denial: &[DenialReason],
) -> Result<()> {
    let now = w.now;
    sqlx::query(
        "UPDATE requests SET deadline_ms = NULL, decided_ms = $1, emergency = $2, denied = $3, \
         denial_reasons = $4 WHERE id = $5",
    )
    .bind(now)
    .bind(i64::from(emergency))
    .bind(i64::from(!denial.is_empty()))
    .bind(serde_json::to_string(denial)?)
    .bind(id)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// A port's status after its request was decided: opened for [start, end], or denied.
pub async fn set_port(
    w: &mut WriteTx,
    id: &str,
    idx: i64,
    status: &PortStatus,
    reason: Option<&StatusReason>,
    window: Option<(i64, i64)>,
    max_connections: Option<MaxConnections>,
) -> Result<()> {
    let q = match window {
        Some((start, end)) => sqlx::query(
            "UPDATE request_ports SET status = $1, status_reason = $2, start_ms = $3, \
             end_ms = $4, max_connections = $5 WHERE request_id = $6 AND idx = $7",
        )
        .bind(status.as_str())
        .bind(reason.map(|r| r.as_str()))
        .bind(start)
        .bind(end)
        .bind(limit_column(max_connections)),
        None => sqlx::query(
            "UPDATE request_ports SET status = $1, status_reason = $2 WHERE request_id = $3 \
             AND idx = $4",
        )
        .bind(status.as_str())
        .bind(reason.map(|r| r.as_str())),
    };
    q.bind(id).bind(idx).execute(w.conn()).await?;
    Ok(())
}

/// The ids of the VM's requests, newest first.
pub async fn ids_for_vm(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    limit: i64,
) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM requests WHERE id IN (SELECT request_id FROM request_ports WHERE vm = $1) \
         ORDER BY seq DESC LIMIT $2",
    )
    .bind(vm)
    .bind(limit)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// A port that is still granting access (Initiated or Applied).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LivePort {
    pub request_id: String,
    pub idx: i64,
    pub vm: String,
    pub resource_group: String,
    pub number: i64,
    pub protocol: String,
    pub prefixes: String,
    pub end_ms: i64,
    /// The most new connections per grant; NULL: unlimited.
    pub max_connections: Option<i64>,
}

impl LivePort {
    /// What the activity log records of it.
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "number": self.number,
            "protocol": self.protocol,
            "allowedSourceAddressPrefixes": self.prefixes.split(',').collect::<Vec<_>>(),
            "endTimeUtc": jitgate_api::time::format(self.end_ms),
        })
    }
}

const LIVE_COLUMNS: &str =
    "request_id, idx, vm, resource_group, number, protocol, prefixes, end_ms, max_connections";

/// `status IN (Initiated, Applied)` with the placeholders given.
fn live_in(a: usize) -> String {
    format!("status IN (${a}, ${})", a + 1)
}

/// The request's ports still live after `now`.
pub async fn live_ports(w: &mut WriteTx, id: &str, now: i64) -> Result<Vec<LivePort>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {LIVE_COLUMNS} FROM request_ports WHERE request_id = $1 AND {} AND end_ms > $4 \
         ORDER BY idx",
        live_in(2)
    ))
    .bind(id)
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .fetch_all(w.conn())
    .await?)
}

/// Ends the request's live ports (end after `now`) with `reason`.
pub async fn end_live(w: &mut WriteTx, id: &str, now: i64, reason: StatusReason) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE request_ports SET status = $1, status_reason = $2 \
         WHERE request_id = $3 AND {} AND end_ms > $6",
        live_in(4)
    ))
    .bind(PortStatus::Revoked.as_str())
    .bind(reason.as_str())
    .bind(id)
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Whether any live port's end is at or before `now`.
pub async fn any_due(ex: impl Executor<'_, Database = Any>, now: i64) -> Result<bool> {
    let row: Option<(String,)> = sqlx::query_as(&format!(
        "SELECT request_id FROM request_ports WHERE {} AND end_ms <= $3 LIMIT 1",
        live_in(1)
    ))
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .fetch_optional(ex)
    .await?;
    Ok(row.is_some())
}

/// The live, begun ports ending within `(now, now + lead]` whose `access.ending_soon` is not
/// told yet (the condition of [`ending_soon`], for a look without the write lock).
const ENDING_SOON: &str = "status IN ($1, $2) AND end_ms > $3 AND end_ms <= $4 \
     AND ending_soon_told = 0 AND (start_ms IS NULL OR start_ms <= $3)";

pub async fn any_ending_soon(
    ex: impl Executor<'_, Database = Any>,
    now: i64,
    lead_ms: i64,
) -> Result<bool> {
    let row: Option<(String,)> = sqlx::query_as(&format!(
        "SELECT request_id FROM request_ports WHERE {ENDING_SOON} LIMIT 1"
    ))
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .bind(now.saturating_add(lead_ms))
    .fetch_optional(ex)
    .await?;
    Ok(row.is_some())
}

/// The ports ending soon (above), marked told; returns them.
pub async fn ending_soon(w: &mut WriteTx, now: i64, lead_ms: i64) -> Result<Vec<LivePort>> {
    let until = now.saturating_add(lead_ms);
    let due: Vec<LivePort> = sqlx::query_as(&format!(
        "SELECT {LIVE_COLUMNS} FROM request_ports WHERE {ENDING_SOON} ORDER BY request_id, idx"
    ))
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .bind(until)
    .fetch_all(w.conn())
    .await?;
    sqlx::query(&format!(
        "UPDATE request_ports SET ending_soon_told = 1 WHERE {ENDING_SOON}"
    ))
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .bind(until)
    .execute(w.conn())
    .await?;
    Ok(due)
}

/// Live ports whose end is at or before `now` become Revoked / Expired; returns them.
pub async fn expire_due(w: &mut WriteTx, now: i64) -> Result<Vec<LivePort>> {
    let due: Vec<LivePort> = sqlx::query_as(&format!(
        "SELECT {LIVE_COLUMNS} FROM request_ports WHERE {} AND end_ms <= $3 \
         ORDER BY request_id, idx",
        live_in(1)
    ))
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .fetch_all(w.conn())
    .await?;
    sqlx::query(&format!(
        "UPDATE request_ports SET status = $1, status_reason = $2 WHERE {} AND end_ms <= $5",
        live_in(3)
    ))
    .bind(PortStatus::Revoked.as_str())
    .bind(StatusReason::Expired.as_str())
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(due)
}

/// Ports per statement of [`end_ports`]: two parameters each.
const END_PORTS_CHUNK: usize = 200;

/// Each of `ports` (request, index) still live becomes Revoked with `reason`; returns
/// those it ended. One statement per [`END_PORTS_CHUNK`] ports. The status is compared
/// as `status || ''` so that SQLite finds the rows by key: with many OR-ed keys its
/// planner would otherwise walk every live port by status (30 ms for 64 ports at 25 000).
pub async fn end_ports(
    w: &mut WriteTx,
    ports: &[(&str, i64)],
    reason: &StatusReason,
) -> Result<Vec<(String, i64)>> {
    let mut ended = Vec::new();
    for chunk in ports.chunks(END_PORTS_CHUNK) {
        let sql = format!(
            "UPDATE request_ports SET status = $1, status_reason = $2 \
             WHERE (status || '') IN ($3, $4) AND ({}) RETURNING request_id, idx",
            pair_matches("request_id", "idx", 5, chunk.len())
        );
        let mut q = sqlx::query_as::<_, (String, i64)>(&sql)
            .bind(PortStatus::Revoked.as_str())
            .bind(reason.as_str())
            .bind(PortStatus::Initiated.as_str())
            .bind(PortStatus::Applied.as_str());
        for (id, idx) in chunk {
            q = q.bind(*id).bind(*idx);
        }
        ended.extend(q.fetch_all(w.conn()).await?);
    }
    Ok(ended)
}

/// The port, if Initiated, becomes Applied.
pub async fn mark_applied(w: &mut WriteTx, id: &str, idx: i64) -> Result<()> {
    sqlx::query(
        "UPDATE request_ports SET status = $1 WHERE request_id = $2 AND idx = $3 AND status = $4",
    )
    .bind(PortStatus::Applied.as_str())
    .bind(id)
    .bind(idx)
    .bind(PortStatus::Initiated.as_str())
    .execute(w.conn())
    .await?;
    Ok(())
}

/// A request to insert.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRequest {
    pub id: String,
    pub seq: i64,
    pub requestor: String,
    pub token_id: String,
    pub caller_address: String,
    pub justification: String,
    pub denied: bool,
    pub denial_reasons: Vec<DenialReason>,
    /// The requester's principal id.
    pub principal: String,
    /// The rules it must satisfy, fixed now (pending requests only).
    pub approval: Option<Vec<ApprovalRule>>,
    /// Pending: when it times out.
    pub deadline_ms: Option<i64>,
    /// Approved at once: now.
    pub decided_ms: Option<i64>,
}

/// A request port to insert.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPort {
    pub request_id: String,
    pub idx: i64,
    pub vm: String,
    pub resource_group: String,
    pub number: u16,
    pub protocol: ProtoSel,
    pub prefixes: Vec<jitgate_common::SourcePrefix>,
    pub end_ms: i64,
    pub status: PortStatus,
    pub status_reason: Option<StatusReason>,
    pub on_expiry: Option<OnExpiry>,
    /// The connection limit of the port's grants (None: unlimited, or denied).
    pub max_connections: Option<MaxConnections>,
    /// When the window opened (None while pending or if denied).
    pub start_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub booked_ms: Option<i64>,
}

impl NewPort {
    /// As the API shows it.
    pub fn view(&self) -> RequestPort {
        let (one, many) = prefixes_json(&self.prefixes);
        RequestPort {
            number: self.number,
            protocol: self.protocol,
            allowed_source_address_prefix: one,
            allowed_source_address_prefixes: many,
            start_time_utc: self.start_ms.map(jitgate_api::time::format),
            end_time_utc: jitgate_api::time::format(self.end_ms),
            status: self.status.clone(),
            status_reason: self.status_reason.clone(),
            on_expiry: self.on_expiry,
            max_connections: self.max_connections,
        }
    }
}

pub fn request_rows(requests: &[NewRequest], start_ms: i64) -> Result<Rows> {
    let mut t = Rows::new(
        "INSERT INTO requests (id, seq, requestor, token_id, caller_address, justification, \
         start_ms, denied, denial_reasons, principal, approval, deadline_ms, decided_ms)",
        13,
    );
    for r in requests {
        t.rows.push(vec![
            r.id.as_str().into(),
            r.seq.into(),
            r.requestor.as_str().into(),
            r.token_id.as_str().into(),
            r.caller_address.as_str().into(),
            r.justification.as_str().into(),
            start_ms.into(),
            i64::from(r.denied).into(),
            serde_json::to_string(&r.denial_reasons)?.into(),
            r.principal.as_str().into(),
            r.approval
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?
                .into(),
            r.deadline_ms.into(),
            r.decided_ms.into(),
        ]);
    }
    Ok(t)
}

/// The ports of requests made at `requested_ms` (their requests' `start_ms`).
pub fn port_rows(ports: &[NewPort], requested_ms: i64) -> Rows {
    let mut t = Rows::new(
        "INSERT INTO request_ports (request_id, idx, vm, resource_group, number, protocol, \
         prefixes, end_ms, status, status_reason, on_expiry, start_ms, duration_ms, booked_ms, \
         requested_ms, max_connections)",
        16,
    );
    for p in ports {
        let prefixes: Vec<String> = p.prefixes.iter().map(|x| x.to_string()).collect();
        t.rows.push(vec![
            p.request_id.as_str().into(),
            p.idx.into(),
            p.vm.as_str().into(),
            p.resource_group.as_str().into(),
            i64::from(p.number).into(),
            p.protocol.as_str().into(),
            prefixes.join(",").into(),
            p.end_ms.into(),
            p.status.as_str().into(),
            p.status_reason.as_ref().map(|r| r.as_str()).into(),
            p.on_expiry.map(|e| e.as_str()).into(),
            p.start_ms.into(),
            p.duration_ms.into(),
            p.booked_ms.into(),
            requested_ms.into(),
            limit_column(p.max_connections).into(),
        ]);
    }
    t
}

/// A VM's approved access in a recent window (the portal's JIT page).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecentAccess {
    /// Approved requests that include the VM.
    pub approved: usize,
    /// The newest of them: when it started and who made it.
    pub last_ms: i64,
    pub last_user: String,
}

/// The condition on `request_ports p` (placeholders `$1` to `$6`, bound by
/// [`bind_approved`]) that keeps the ports of requests made since `$1` that were approved: not
/// pending, not denied (a denied request's ports are all Denied), and not ended by a
/// rejection, an approval timeout or a cancellation.
const APPROVED_SINCE: &str = "p.requested_ms >= $1 AND p.status NOT IN ($2, $3) \
     AND (p.status_reason IS NULL OR p.status_reason NOT IN ($4, $5, $6))";

fn bind_approved<'q, O>(
    q: sqlx::query::QueryAs<'q, Any, O, sqlx::any::AnyArguments<'q>>,
    since_ms: i64,
) -> sqlx::query::QueryAs<'q, Any, O, sqlx::any::AnyArguments<'q>> {
    q.bind(since_ms)
        .bind(PortStatus::PendingApproval.as_str())
        .bind(PortStatus::Denied.as_str())
        .bind(StatusReason::Rejected.as_str())
        .bind(StatusReason::ApprovalTimedOut.as_str())
        .bind(StatusReason::Cancelled.as_str())
}

/// For each of `vms` (a page of the portal's list), the requests made since `since_ms` that
/// were approved, counted once each, with the newest one (the latest made; of those made in
/// the same millisecond, the last numbered). Both queries read the
/// `(vm, requested_ms, status, status_reason, request_id)` index from `since_ms` on: the
/// cost follows the page and its window, and no request row is read to count.
pub async fn recent_by_vm(
    conn: &mut AnyConnection,
    since_ms: i64,
    vms: &[String],
) -> Result<HashMap<String, RecentAccess>> {
    if vms.is_empty() {
        return Ok(HashMap::new());
    }
    let list: Vec<String> = (0..vms.len()).map(|i| format!("${}", i + 7)).collect();
    let sql = format!(
        "SELECT p.vm, COUNT(DISTINCT p.request_id), MAX(p.requested_ms) FROM request_ports p \
         WHERE p.vm IN ({}) AND {APPROVED_SINCE} GROUP BY p.vm",
        list.join(", ")
    );
    let mut q = bind_approved(sqlx::query_as::<_, (String, i64, i64)>(&sql), since_ms);
    for vm in vms {
        q = q.bind(vm);
    }
    let counted = q.fetch_all(&mut *conn).await?;
    if counted.is_empty() {
        return Ok(HashMap::new());
    }
    // The newest approved request of each VM: its ports made at the VM's latest time.
    let pairs: Vec<String> = (0..counted.len())
        .map(|i| {
            format!(
                "(p.vm = ${} AND p.requested_ms = ${})",
                2 * i + 7,
                2 * i + 8
            )
        })
        .collect();
    let sql = format!(
        "SELECT p.vm, r.seq, r.requestor FROM request_ports p \
         JOIN requests r ON r.id = p.request_id WHERE ({}) AND {APPROVED_SINCE}",
        pairs.join(" OR ")
    );
    let mut q = bind_approved(sqlx::query_as::<_, (String, i64, String)>(&sql), since_ms);
    for (vm, _, last_ms) in &counted {
        q = q.bind(vm).bind(*last_ms);
    }
    let mut newest: HashMap<String, (i64, String)> = HashMap::new();
    for (vm, seq, who) in q.fetch_all(&mut *conn).await? {
        match newest.get(&vm) {
            Some((s, _)) if *s >= seq => {}
            _ => {
                newest.insert(vm, (seq, who));
            }
        }
    }
    Ok(counted
        .into_iter()
        .map(|(vm, n, last_ms)| {
            let last_user = newest.remove(&vm).map(|(_, who)| who).unwrap_or_default();
            (
                vm,
                RecentAccess {
                    approved: usize::try_from(n).unwrap_or(0),
                    last_ms,
                    last_user,
                },
            )
        })
        .collect())
}

/// Which of a VM's requests a history page shows.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// Requests with a port in this status.
    pub status: Option<PortStatus>,
    /// Made by this requester (as history names them).
    pub requestor: Option<String>,
    /// Made at or after this time.
    pub since_ms: Option<i64>,
    /// Keyset pagination: only requests older than this sequence number.
    pub before_seq: Option<i64>,
}

/// A page of a VM's request ids, newest first, with their sequence numbers.
pub async fn page_for_vm(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    f: &HistoryFilter,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    // The VM's (and, filtered, its ports in that status) request ids first, through the
    // `(vm, request_id)` index; the requests table is only looked up by them.
    let mut sql = String::from(
        "SELECT r.id, r.seq FROM requests r WHERE r.id IN \
         (SELECT request_id FROM request_ports WHERE vm = $1",
    );
    let mut n = 1;
    let mut arg = |sql: &mut String, clause: &str| {
        n += 1;
        sql.push_str(&clause.replace('?', &format!("${n}")));
    };
    if f.status.is_some() {
        arg(&mut sql, " AND status = ?");
    }
    sql.push(')');
    if f.requestor.is_some() {
        arg(&mut sql, " AND r.requestor = ?");
    }
    if f.since_ms.is_some() {
        arg(&mut sql, " AND r.start_ms >= ?");
    }
    if f.before_seq.is_some() {
        arg(&mut sql, " AND r.seq < ?");
    }
    arg(&mut sql, " ORDER BY r.seq DESC LIMIT ?");
    let mut q = sqlx::query_as::<_, (String, i64)>(&sql).bind(vm);
    if let Some(s) = &f.status {
        q = q.bind(s.as_str());
    }
    if let Some(r) = &f.requestor {
        q = q.bind(r.as_str());
    }
    if let Some(t) = f.since_ms {
        q = q.bind(t);
    }
    if let Some(b) = f.before_seq {
        q = q.bind(b);
    }
    Ok(q.bind(limit).fetch_all(ex).await?)
}
