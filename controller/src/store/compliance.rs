//! The compliance tables: `compliance_assignments` (where the policy is assigned),
//! `compliance_scans` and `compliance_results` (each evaluation with its per-resource results:
//! the history), `compliance_counts` (each evaluation's VM counts per resource group: the
//! history of a scope), `compliance_exposures` (what the last probe found open).

use std::collections::{BTreeMap, BTreeSet};

use jitgate_api::{
    AssignmentEffect, ComplianceResult, ComplianceState, ResourceKind, ScanReason, ScanSummary,
    Scope,
};
use sqlx::{Any, Executor};

use crate::error::{Error, Result};
use crate::store::db::Json;
use crate::store::write::WriteTx;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AssignmentRow {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub scope: Scope,
    #[sqlx(try_from = "String")]
    pub effect: AssignmentEffect,
    pub created_ms: i64,
    pub created_by: String,
}

pub async fn assignments(ex: impl Executor<'_, Database = Any>) -> Result<Vec<AssignmentRow>> {
    Ok(sqlx::query_as(
        "SELECT id, scope, effect, created_ms, created_by FROM compliance_assignments \
         ORDER BY created_ms, id",
    )
    .fetch_all(ex)
    .await?)
}

/// Assigns at `scope`; false if an assignment at that scope exists.
pub async fn assign(w: &mut WriteTx, a: &AssignmentRow) -> Result<bool> {
    let n = sqlx::query(
        "INSERT INTO compliance_assignments (id, scope, effect, created_ms, created_by) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(&a.id)
    .bind(a.scope.to_string())
    .bind(a.effect.as_str())
    .bind(a.created_ms)
    .bind(&a.created_by)
    .execute(w.conn())
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Removes an assignment; returns its scope, None if there was none.
pub async fn unassign(w: &mut WriteTx, id: &str) -> Result<Option<Scope>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT scope FROM compliance_assignments WHERE id = $1")
            .bind(id)
            .fetch_optional(w.conn())
            .await?;
    let Some((scope,)) = row else { return Ok(None) };
    sqlx::query("DELETE FROM compliance_assignments WHERE id = $1")
        .bind(id)
        .execute(w.conn())
        .await?;
    Scope::try_from(scope).map(Some).map_err(Error::corrupt)
}

/// A registered VM as compliance sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct VmRow {
    pub name: String,
    #[sqlx(rename = "resource_group")]
    pub group: String,
    pub owner: String,
    #[sqlx(try_from = "String")]
    pub addresses: Json<Vec<String>>,
}

/// Every VM with its group's owner.
pub async fn vms(ex: impl Executor<'_, Database = Any>) -> Result<Vec<VmRow>> {
    Ok(sqlx::query_as(
        "SELECT v.name, v.resource_group, g.owner, v.addresses FROM vms v \
         JOIN resource_groups g ON g.name = v.resource_group ORDER BY v.name",
    )
    .fetch_all(ex)
    .await?)
}

/// A port found open by the last probe, without an active grant for the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    pub address: String,
    pub port: u16,
    /// Empty for an unmanaged host.
    pub vm: String,
}

pub async fn replace_exposures(w: &mut WriteTx, found: &[Exposure]) -> Result<()> {
    let now = w.now;
    sqlx::query("DELETE FROM compliance_exposures")
        .execute(w.conn())
        .await?;
    for e in found {
        sqlx::query(
            "INSERT INTO compliance_exposures (address, port, vm, time_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&e.address)
        .bind(i64::from(e.port))
        .bind(&e.vm)
        .bind(now)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}

pub async fn exposures(ex: impl Executor<'_, Database = Any>) -> Result<Vec<Exposure>> {
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT address, port, vm FROM compliance_exposures ORDER BY address, port")
            .fetch_all(ex)
            .await?;
    rows.into_iter()
        .map(|(address, port, vm)| {
            Ok(Exposure {
                address,
                port: u16::try_from(port).map_err(Error::corrupt)?,
                vm,
            })
        })
        .collect()
}

/// Stores one evaluation with its results; returns its id.
pub async fn insert_scan(
    w: &mut WriteTx,
    reason: &ScanReason,
    probed: bool,
    counts: [i64; 4],
    results: &[ComplianceResult],
) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) + 1 FROM compliance_scans")
        .fetch_one(w.conn())
        .await?;
    let now = w.now;
    let [compliant, non_compliant, unknown, unmanaged] = counts;
    sqlx::query(
        "INSERT INTO compliance_scans (id, time_ms, reason, probed, compliant, non_compliant, \
         unknown, unmanaged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(now)
    .bind(reason.as_str())
    .bind(i64::from(probed))
    .bind(compliant)
    .bind(non_compliant)
    .bind(unknown)
    .bind(unmanaged)
    .execute(w.conn())
    .await?;
    for (group, c) in group_counts(results) {
        sqlx::query(
            "INSERT INTO compliance_counts (scan_id, resource_group, compliant, non_compliant, \
             unknown) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(group)
        .bind(c.compliant)
        .bind(c.non_compliant)
        .bind(c.unknown)
        .execute(w.conn())
        .await?;
    }
    for r in results {
        sqlx::query(
            "INSERT INTO compliance_results (scan_id, resource, kind, resource_group, owner, \
             state, findings) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&r.resource)
        .bind(r.kind.as_str())
        .bind(&r.resource_group)
        .bind(&r.owner)
        .bind(r.state.as_str())
        .bind(serde_json::to_string(&r.findings)?)
        .execute(w.conn())
        .await?;
    }
    Ok(id)
}

/// VM counts by state (unmanaged hosts are counted apart, fleet-wide only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmCounts {
    pub compliant: i64,
    pub non_compliant: i64,
    pub unknown: i64,
}

impl VmCounts {
    fn add(&mut self, state: ComplianceState) {
        match state {
            ComplianceState::Compliant => self.compliant += 1,
            ComplianceState::NonCompliant => self.non_compliant += 1,
            ComplianceState::Unknown | ComplianceState::Other(_) => self.unknown += 1,
        }
    }
}

/// The VM results' counts per resource group.
fn group_counts(results: &[ComplianceResult]) -> BTreeMap<&str, VmCounts> {
    let mut out: BTreeMap<&str, VmCounts> = BTreeMap::new();
    for r in results
        .iter()
        .filter(|r| r.kind == ResourceKind::VirtualMachine)
    {
        out.entry(r.resource_group.as_str())
            .or_default()
            .add(r.state.clone());
    }
    out
}

/// What part of the fleet a scoped history counts: whole resource groups, and single VMs
/// (each kept only if `keep_vm(vm, its group then)` and its group is not among `groups`, so
/// that none counts twice).
pub struct HistoryScope<'a> {
    pub groups: &'a BTreeSet<String>,
    pub vms: &'a BTreeSet<String>,
    pub keep_vm: &'a (dyn Fn(&str, &str) -> bool + Sync),
}

/// The newest `limit` scans at or before `until_ms`, oldest first, each with the counts of
/// `scope` only (no unmanaged hosts): a few rows per scan and group from
/// `compliance_counts`, and the results of the single VMs by primary key.
pub async fn history_of(
    conn: &mut sqlx::AnyConnection,
    until_ms: Option<i64>,
    limit: i64,
    scope: &HistoryScope<'_>,
) -> Result<Vec<ScanSummary>> {
    let mut scans = history(&mut *conn, until_ms, limit).await?;
    let (Some(first), Some(last)) = (scans.first(), scans.last()) else {
        return Ok(scans);
    };
    let (first, last) = (first.scan_id, last.scan_id);
    let mut counts: BTreeMap<i64, VmCounts> = BTreeMap::new();
    let groups: Vec<&String> = scope.groups.iter().collect();
    for chunk in groups.chunks(500) {
        let ph: Vec<String> = (3..3 + chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT scan_id, CAST(SUM(compliant) AS BIGINT), CAST(SUM(non_compliant) AS BIGINT), \
             CAST(SUM(unknown) AS BIGINT) \
             FROM compliance_counts WHERE scan_id >= $1 AND scan_id <= $2 \
             AND resource_group IN ({}) GROUP BY scan_id",
            ph.join(",")
        );
        let mut q = sqlx::query_as::<_, (i64, i64, i64, i64)>(&sql)
            .bind(first)
            .bind(last);
        for g in chunk {
            q = q.bind(g.as_str());
        }
        for (id, c, n, u) in q.fetch_all(&mut *conn).await? {
            let e = counts.entry(id).or_default();
            e.compliant += c;
            e.non_compliant += n;
            e.unknown += u;
        }
    }
    let ids: Vec<i64> = scans.iter().map(|s| s.scan_id).collect();
    let vms: Vec<&String> = scope.vms.iter().collect();
    for chunk in vms.chunks(200) {
        let ids_ph: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let vm_ph: Vec<String> = (0..chunk.len())
            .map(|i| format!("${}", i + 2 + ids.len()))
            .collect();
        let sql = format!(
            "SELECT scan_id, resource, resource_group, state FROM compliance_results \
             WHERE kind = $1 AND scan_id IN ({}) AND resource IN ({})",
            ids_ph.join(","),
            vm_ph.join(",")
        );
        let mut q = sqlx::query_as::<_, (i64, String, String, String)>(&sql)
            .bind(ResourceKind::VirtualMachine.as_str());
        for id in &ids {
            q = q.bind(*id);
        }
        for vm in chunk {
            q = q.bind(vm.as_str());
        }
        for (id, vm, group, state) in q.fetch_all(&mut *conn).await? {
            if scope.groups.contains(&group) || !(scope.keep_vm)(&vm, &group) {
                continue;
            }
            let state = ComplianceState::try_from(state).map_err(Error::corrupt)?;
            counts.entry(id).or_default().add(state);
        }
    }
    for s in &mut scans {
        let c = counts.get(&s.scan_id).copied().unwrap_or_default();
        s.compliant = c.compliant;
        s.non_compliant = c.non_compliant;
        s.unknown = c.unknown;
        s.unmanaged = 0;
        s.compliance_percentage = ScanSummary::percentage(c.compliant, c.non_compliant);
    }
    Ok(scans)
}

#[derive(sqlx::FromRow)]
struct ScanRow {
    id: i64,
    time_ms: i64,
    #[sqlx(try_from = "String")]
    reason: ScanReason,
    probed: i64,
    compliant: i64,
    non_compliant: i64,
    unknown: i64,
    unmanaged: i64,
}

impl From<ScanRow> for ScanSummary {
    fn from(r: ScanRow) -> ScanSummary {
        ScanSummary {
            scan_id: r.id,
            time_utc: jitgate_api::time::format(r.time_ms),
            reason: r.reason,
            probed: r.probed != 0,
            compliant: r.compliant,
            non_compliant: r.non_compliant,
            unknown: r.unknown,
            unmanaged: r.unmanaged,
            compliance_percentage: ScanSummary::percentage(r.compliant, r.non_compliant),
        }
    }
}

const SCAN_COLUMNS: &str =
    "id, time_ms, reason, probed, compliant, non_compliant, unknown, unmanaged";

/// The newest scan at or before `at_ms` (any, if None).
pub async fn scan_at(
    ex: impl Executor<'_, Database = Any>,
    at_ms: Option<i64>,
) -> Result<Option<ScanSummary>> {
    let row: Option<ScanRow> = sqlx::query_as(&format!(
        "SELECT {SCAN_COLUMNS} FROM compliance_scans WHERE time_ms <= $1 ORDER BY id DESC LIMIT 1"
    ))
    .bind(at_ms.unwrap_or(i64::MAX))
    .fetch_optional(ex)
    .await?;
    Ok(row.map(ScanSummary::from))
}

/// The newest `limit` scans at or before `until_ms` (any time without it), oldest first.
pub async fn history(
    ex: impl Executor<'_, Database = Any>,
    until_ms: Option<i64>,
    limit: i64,
) -> Result<Vec<ScanSummary>> {
    let rows: Vec<ScanRow> = sqlx::query_as(&format!(
        "SELECT {SCAN_COLUMNS} FROM compliance_scans WHERE time_ms <= $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(until_ms.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(ex)
    .await?;
    let mut v: Vec<ScanSummary> = rows.into_iter().map(ScanSummary::from).collect();
    v.reverse();
    Ok(v)
}

#[derive(sqlx::FromRow)]
struct ResultRow {
    resource: String,
    #[sqlx(try_from = "String")]
    kind: ResourceKind,
    resource_group: String,
    owner: String,
    #[sqlx(try_from = "String")]
    state: ComplianceState,
    #[sqlx(try_from = "String")]
    findings: Json<Vec<jitgate_api::Finding>>,
}

impl From<ResultRow> for ComplianceResult {
    fn from(r: ResultRow) -> ComplianceResult {
        ComplianceResult {
            resource: r.resource,
            kind: r.kind,
            resource_group: r.resource_group,
            owner: r.owner,
            state: r.state,
            findings: r.findings.0,
        }
    }
}

pub async fn results(
    ex: impl Executor<'_, Database = Any>,
    scan_id: i64,
) -> Result<Vec<ComplianceResult>> {
    let rows: Vec<ResultRow> = sqlx::query_as(
        "SELECT resource, kind, resource_group, owner, state, findings FROM compliance_results \
         WHERE scan_id = $1 ORDER BY kind DESC, resource",
    )
    .bind(scan_id)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(ComplianceResult::from).collect())
}

/// Which results of an evaluation a reader sees: VMs within `scopes` (the reader's, all of
/// them for a reader of everything) and `want` (the filter), unmanaged hosts only when
/// `unmanaged` (a reader of everything, without a narrower filter).
pub struct ResultScope<'a> {
    pub scopes: &'a [Scope],
    pub want: Option<&'a Scope>,
    pub unmanaged: bool,
}

impl ResultScope<'_> {
    /// The condition as SQL over `compliance_results`, its values appended to `binds` and
    /// numbered after the `first` placeholders before them.
    fn sql(&self, binds: &mut Vec<String>, first: usize) -> String {
        let mut p = |v: &str, binds: &mut Vec<String>| {
            binds.push(v.to_string());
            format!("${}", first + binds.len())
        };
        let one = |s: &Scope,
                   binds: &mut Vec<String>,
                   p: &mut dyn FnMut(&str, &mut Vec<String>) -> String| match s {
            Scope::All => "1 = 1".to_string(),
            Scope::ResourceGroup(g) => format!("resource_group = {}", p(g, binds)),
            Scope::Vm(v) => format!("resource = {}", p(v, binds)),
        };
        let mut any: Vec<String> = Vec::new();
        for s in self.scopes {
            any.push(one(s, binds, &mut p));
        }
        if any.is_empty() {
            any.push("1 = 0".into());
        }
        let mut vm = format!("({})", any.join(" OR "));
        if let Some(w) = self.want {
            vm = format!("{vm} AND {}", one(w, binds, &mut p));
        }
        let kind_vm = p(ResourceKind::VirtualMachine.as_str(), binds);
        if self.unmanaged {
            let kind_host = p(ResourceKind::UnmanagedHost.as_str(), binds);
            format!("((kind = {kind_vm} AND {vm}) OR kind = {kind_host})")
        } else {
            format!("(kind = {kind_vm} AND {vm})")
        }
    }
}

/// Rows of one evaluation within a [`ResultScope`], in one state and kind (None: any).
pub struct ResultFilter<'a> {
    pub scope: &'a ResultScope<'a>,
    pub state: Option<ComplianceState>,
    pub kind: Option<ResourceKind>,
}

impl ResultFilter<'_> {
    fn sql(&self, binds: &mut Vec<String>, first: usize) -> String {
        let mut sql = self.scope.sql(binds, first);
        if let Some(s) = &self.state {
            binds.push(s.as_str().to_string());
            sql.push_str(&format!(" AND state = ${}", first + binds.len()));
        }
        if let Some(k) = &self.kind {
            binds.push(k.as_str().to_string());
            sql.push_str(&format!(" AND kind = ${}", first + binds.len()));
        }
        sql
    }
}

/// The column a grouping reads.
fn group_column(by: jitgate_api::GroupBy) -> &'static str {
    match by {
        jitgate_api::GroupBy::Owner => "owner",
        jitgate_api::GroupBy::ResourceGroup => "resource_group",
    }
}

/// How many results of evaluation `scan_id` within `scope` are in each (kind, state).
pub async fn result_counts(
    ex: impl Executor<'_, Database = Any>,
    scan_id: i64,
    scope: &ResultScope<'_>,
) -> Result<Vec<(ResourceKind, ComplianceState, i64)>> {
    let mut binds = Vec::new();
    let cond = scope.sql(&mut binds, 1);
    let sql = format!(
        "SELECT kind, state, COUNT(*) FROM compliance_results WHERE scan_id = $1 AND {cond} \
         GROUP BY kind, state"
    );
    let mut q = sqlx::query_as::<_, (String, String, i64)>(&sql).bind(scan_id);
    for b in &binds {
        q = q.bind(b.as_str());
    }
    q.fetch_all(ex)
        .await?
        .into_iter()
        .map(|(k, s, n)| {
            Ok((
                ResourceKind::try_from(k).map_err(Error::corrupt)?,
                ComplianceState::try_from(s).map_err(Error::corrupt)?,
                n,
            ))
        })
        .collect()
}

/// The groups of `filter`'s results by owner or resource group, in key order: (key, its
/// owner, how many).
pub async fn result_groups(
    ex: impl Executor<'_, Database = Any>,
    scan_id: i64,
    filter: &ResultFilter<'_>,
    by: jitgate_api::GroupBy,
) -> Result<Vec<(String, String, i64)>> {
    let col = group_column(by);
    let mut binds = Vec::new();
    let cond = filter.sql(&mut binds, 1);
    let sql = format!(
        "SELECT {col}, MIN(owner), COUNT(*) FROM compliance_results WHERE scan_id = $1 \
         AND {cond} GROUP BY {col} ORDER BY {col}"
    );
    let mut q = sqlx::query_as::<_, (String, String, i64)>(&sql).bind(scan_id);
    for b in &binds {
        q = q.bind(b.as_str());
    }
    Ok(q.fetch_all(ex).await?)
}

/// The first `limit` of `filter`'s results: by owner or resource group when `by` is given,
/// then as the report lists them (VMs before hosts, by name).
pub async fn result_rows(
    ex: impl Executor<'_, Database = Any>,
    scan_id: i64,
    filter: &ResultFilter<'_>,
    by: Option<jitgate_api::GroupBy>,
    limit: i64,
) -> Result<Vec<ComplianceResult>> {
    let mut binds = Vec::new();
    let cond = filter.sql(&mut binds, 2);
    let order = by.map_or(String::new(), |b| format!("{}, ", group_column(b)));
    let sql = format!(
        "SELECT resource, kind, resource_group, owner, state, findings FROM compliance_results \
         WHERE scan_id = $1 AND {cond} ORDER BY {order}kind DESC, resource LIMIT $2"
    );
    let mut q = sqlx::query_as::<_, ResultRow>(&sql)
        .bind(scan_id)
        .bind(limit);
    for b in &binds {
        q = q.bind(b.as_str());
    }
    Ok(q.fetch_all(ex)
        .await?
        .into_iter()
        .map(ComplianceResult::from)
        .collect())
}
