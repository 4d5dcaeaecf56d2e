//! The `requests` and `request_ports` tables: access requests as decided, and each port's
//! status (Azure keeps status per port; a request's own status summarises its ports).

use jitgate_api::{
    DenialReason, OnExpiry, PortStatus, ProtoSel, RequestPort, RequestView, RequestVm, StatusReason,
};
use sqlx::{Any, AnyConnection, Executor};

use crate::error::{Error, Result};
use crate::input::prefixes_json;
use crate::store::backend::Rows;
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
}

/// A request's status from its ports: Denied if denied, else Initiated if any port is, else
/// Applied if any port is, else Revoked.
pub fn summary(denied: bool, ports: &[PortStatus]) -> PortStatus {
    if denied {
        PortStatus::Denied
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
        "SELECT requestor, caller_address, justification, start_ms, denied, denial_reasons \
         FROM requests WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let ports: Vec<PortRow> = sqlx::query_as(
        "SELECT vm, resource_group, number, protocol, prefixes, end_ms, status, status_reason, \
         on_expiry FROM request_ports WHERE request_id = $1 ORDER BY idx",
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
            end_time_utc: jitgate_api::time::format(p.end_ms),
            status: p.status,
            status_reason: p
                .status_reason
                .map(StatusReason::try_from)
                .transpose()
                .map_err(Error::corrupt)?,
            on_expiry: p.on_expiry.and_then(|s| s.parse::<OnExpiry>().ok()),
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
    Ok(Some(RequestView {
        id: id.into(),
        start_time_utc: jitgate_api::time::format(row.start_ms),
        requestor: row.requestor,
        justification: row.justification,
        caller_address: row.caller_address,
        status: summary(row.denied != 0, &statuses),
        virtual_machines: vms,
        denial_reasons: row.denial_reasons.0,
    }))
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
    "request_id, idx, vm, resource_group, number, protocol, prefixes, end_ms";

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

/// The port, if still live, becomes Revoked with `reason`.
pub async fn end_port(w: &mut WriteTx, id: &str, idx: i64, reason: &StatusReason) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE request_ports SET status = $1, status_reason = $2 \
         WHERE request_id = $3 AND idx = $4 AND {}",
        live_in(5)
    ))
    .bind(PortStatus::Revoked.as_str())
    .bind(reason.as_str())
    .bind(id)
    .bind(idx)
    .bind(PortStatus::Initiated.as_str())
    .bind(PortStatus::Applied.as_str())
    .execute(w.conn())
    .await?;
    Ok(())
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
            end_time_utc: jitgate_api::time::format(self.end_ms),
            status: self.status.clone(),
            status_reason: self.status_reason.clone(),
            on_expiry: self.on_expiry,
        }
    }
}

pub fn request_rows(requests: &[NewRequest], start_ms: i64) -> Result<Rows> {
    let mut t = Rows::new(
        "INSERT INTO requests (id, seq, requestor, token_id, caller_address, justification, \
         start_ms, denied, denial_reasons)",
        9,
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
        ]);
    }
    Ok(t)
}

pub fn port_rows(ports: &[NewPort]) -> Rows {
    let mut t = Rows::new(
        "INSERT INTO request_ports (request_id, idx, vm, resource_group, number, protocol, \
         prefixes, end_ms, status, status_reason, on_expiry)",
        11,
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
        ]);
    }
    t
}
