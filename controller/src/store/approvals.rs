//! The `request_approvals` table: every decision on a request (approvals, the denial, the
//! cancellation, the timeout), in order, and the approvals report over it.

use jitgate_api::{ApprovalEntry, ApprovalRecord, Decision};
use sqlx::AnyConnection;

use crate::approval::rule::Counted;
use crate::error::{Error, Result};
use crate::store::write::WriteTx;

/// One recorded decision.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Decided {
    pub n: i64,
    pub rule_idx: Option<i64>,
    pub stage: Option<i64>,
    pub principal: String,
    #[sqlx(try_from = "String")]
    pub decision: Decision,
    pub reason: Option<String>,
    pub emergency: i64,
    pub time_ms: i64,
}

impl Decided {
    /// As the request shows it (stages from 1).
    pub fn record(&self) -> ApprovalRecord {
        ApprovalRecord {
            stage: self.stage.and_then(|s| u32::try_from(s + 1).ok()),
            approver: self.principal.clone(),
            decision: self.decision.clone(),
            reason: self.reason.clone(),
            emergency: self.emergency != 0,
            time_utc: jitgate_api::time::format(self.time_ms),
        }
    }
}

/// The approvals that count toward stages (emergency approvals complete the request
/// instead, and count for no stage).
pub fn counted(decisions: &[Decided]) -> Vec<Counted> {
    decisions
        .iter()
        .filter(|d| d.decision == Decision::Approved)
        .filter_map(|d| {
            Some(Counted {
                principal: d.principal.clone(),
                rule: usize::try_from(d.rule_idx?).ok()?,
                stage: usize::try_from(d.stage?).ok()?,
            })
        })
        .collect()
}

const COLUMNS: &str = "n, rule_idx, stage, principal, decision, reason, emergency, time_ms";

/// The request's decisions, in order.
pub async fn of_request(conn: &mut AnyConnection, id: &str) -> Result<Vec<Decided>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM request_approvals WHERE request_id = $1 ORDER BY n"
    ))
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// A decision to record.
#[derive(Clone, Debug)]
pub struct NewDecision<'a> {
    pub request_id: &'a str,
    /// (rule, stage) an approval counted for.
    pub counted_for: Option<(usize, usize)>,
    pub principal: &'a str,
    pub decision: Decision,
    pub reason: Option<&'a str>,
    pub emergency: bool,
}

/// Records a decision after the request's others (at the transaction's time).
pub async fn insert(w: &mut WriteTx, d: &NewDecision<'_>) -> Result<()> {
    let now = w.now;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(n), 0) + 1 FROM request_approvals WHERE request_id = $1",
    )
    .bind(d.request_id)
    .fetch_one(w.conn())
    .await?;
    let idx = |x: usize| i64::try_from(x).map_err(Error::corrupt);
    let (rule, stage) = match d.counted_for {
        Some((r, s)) => (Some(idx(r)?), Some(idx(s)?)),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO request_approvals (request_id, n, rule_idx, stage, principal, decision, \
         reason, emergency, time_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(d.request_id)
    .bind(n)
    .bind(rule)
    .bind(stage)
    .bind(d.principal)
    .bind(d.decision.as_str())
    .bind(d.reason)
    .bind(i64::from(d.emergency))
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Filters of the approvals report (all optional).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub vm: Option<String>,
    pub resource_group: Option<String>,
    pub principal: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: i64,
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    request_id: String,
    requestor: String,
    stage: Option<i64>,
    principal: String,
    #[sqlx(try_from = "String")]
    decision: Decision,
    reason: Option<String>,
    emergency: i64,
    time_ms: i64,
}

/// Every decision matching `f`, newest first.
pub async fn history(conn: &mut AnyConnection, f: &Filter) -> Result<Vec<ApprovalEntry>> {
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT a.request_id, r.requestor, a.stage, a.principal, a.decision, a.reason, a.emergency, a.time_ms \
         FROM request_approvals a JOIN requests r ON r.id = a.request_id \
         WHERE ($1 = '' OR a.request_id IN (SELECT request_id FROM request_ports WHERE vm = $1)) \
         AND ($2 = '' OR a.request_id IN \
              (SELECT request_id FROM request_ports WHERE resource_group = $2)) \
         AND ($3 = '' OR a.principal = $3) \
         AND a.time_ms >= $4 AND a.time_ms <= $5 \
         ORDER BY a.time_ms DESC, a.request_id, a.n DESC LIMIT $6",
    )
    .bind(f.vm.as_deref().unwrap_or(""))
    .bind(f.resource_group.as_deref().unwrap_or(""))
    .bind(f.principal.as_deref().unwrap_or(""))
    .bind(f.since_ms.unwrap_or(i64::MIN))
    .bind(f.until_ms.unwrap_or(i64::MAX))
    .bind(f.limit)
    .fetch_all(&mut *conn)
    .await?;
    // The VMs and groups of each request listed (at most `limit` requests).
    let mut where_: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        std::collections::HashMap::new();
    for r in &rows {
        if where_.contains_key(&r.request_id) {
            continue;
        }
        let vms: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT vm, resource_group FROM request_ports WHERE request_id = $1 \
             ORDER BY vm",
        )
        .bind(&r.request_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut groups: Vec<String> = vms.iter().map(|v| v.1.clone()).collect();
        groups.sort();
        groups.dedup();
        where_.insert(
            r.request_id.clone(),
            (vms.into_iter().map(|v| v.0).collect(), groups),
        );
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let (vms, groups) = where_.get(&r.request_id).cloned().unwrap_or_default();
            (r, vms, groups)
        })
        .map(|(r, vms, groups)| ApprovalEntry {
            request_id: r.request_id,
            requestor: r.requestor,
            virtual_machines: vms,
            resource_groups: groups,
            stage: r.stage.and_then(|s| u32::try_from(s + 1).ok()),
            approver: r.principal,
            decision: r.decision,
            reason: r.reason,
            emergency: r.emergency != 0,
            time_utc: jitgate_api::time::format(r.time_ms),
        })
        .collect())
}
