//! The compliance dashboard's read: the counts of an evaluation within the reader's scope
//! and the filter, its non-compliant resources grouped by owner or resource group, and only
//! the first rows of each section — counted and listed by the database
//! (`store::compliance::result_*`), so the page costs a few indexed reads of one evaluation
//! instead of parsing every result of a fleet. The exports (`Compliance::report`) carry
//! everything.

use jitgate_api::{
    ComplianceResult, ComplianceState, GroupBy, ReportQuery, ResourceKind, ScanSummary, Scope,
};

use crate::authz::Caller;
use crate::compliance::Compliance;
use crate::error::Result;
use crate::input::{parse_scope, parse_time};
use crate::store::compliance::{self as db, ResultFilter, ResultScope};

/// Non-compliant resources of one owner or resource group.
#[derive(Clone, Debug)]
pub struct OverviewGroup {
    /// The owner or resource group ("(unassigned)" for no owner).
    pub key: String,
    pub owner: String,
    pub count: i64,
    /// The first of them (the page's budget).
    pub listed: Vec<ComplianceResult>,
}

/// What the dashboard shows of one evaluation.
#[derive(Clone, Debug, Default)]
pub struct Overview {
    pub scan: Option<ScanSummary>,
    pub compliant: i64,
    pub non_compliant: i64,
    pub unknown: i64,
    pub unmanaged: i64,
    pub compliance_percentage: Option<f64>,
    pub groups: Vec<OverviewGroup>,
    pub unknown_listed: Vec<ComplianceResult>,
    pub unmanaged_listed: Vec<ComplianceResult>,
    pub compliant_listed: Vec<ComplianceResult>,
}

/// How many rows the page lists.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Resources with their findings, every section together (non-compliant first, then
    /// unknown, then unmanaged).
    pub with_findings: usize,
    /// Compliant VMs (names only).
    pub compliant: usize,
}

impl Compliance {
    /// The evaluation shown (the newest, or the newest at or before `q.at`) within the
    /// caller's scope and `q.scope`, as [`Compliance::report`] judges visibility, grouped by
    /// `q.group_by` (owner by default), with the first rows of each section.
    pub async fn overview(
        &self,
        caller: &Caller,
        q: &ReportQuery,
        budget: Budget,
    ) -> Result<Overview> {
        let want = q.scope.as_deref().map(parse_scope).transpose()?;
        let at = q.at.as_deref().map(parse_time).transpose()?;
        let by = q.group_by.unwrap_or(GroupBy::Owner);
        let pool = self.db.pool();
        let Some(scan) = db::scan_at(pool, at).await? else {
            return Ok(Overview::default());
        };
        let scopes: Vec<Scope> = caller.grants.iter().map(|g| g.scope.clone()).collect();
        let scope = ResultScope {
            scopes: &scopes,
            want: want.as_ref(),
            unmanaged: scopes.contains(&Scope::All)
                && want.as_ref().is_none_or(|w| *w == Scope::All),
        };
        let id = scan.scan_id;
        let mut o = Overview::default();
        for (kind, state, n) in db::result_counts(pool, id, &scope).await? {
            match (kind, state) {
                (ResourceKind::VirtualMachine, ComplianceState::Compliant) => o.compliant += n,
                (ResourceKind::VirtualMachine, ComplianceState::NonCompliant) => {
                    o.non_compliant += n
                }
                (ResourceKind::VirtualMachine, _) => o.unknown += n,
                _ => o.unmanaged += n,
            }
        }
        o.compliance_percentage = ScanSummary::percentage(o.compliant, o.non_compliant);
        let filter = |state: Option<ComplianceState>, kind: Option<ResourceKind>| ResultFilter {
            scope: &scope,
            state,
            kind,
        };
        let bad = filter(Some(ComplianceState::NonCompliant), None);
        let mut left = budget.with_findings;
        let mut rows = db::result_rows(pool, id, &bad, Some(by), limit(left))
            .await?
            .into_iter()
            .peekable();
        for (key, owner, count) in db::result_groups(pool, id, &bad, by).await? {
            let mut listed = Vec::new();
            while let Some(r) = rows.next_if(|r| group_key(r, by) == key) {
                listed.push(r);
            }
            left -= listed.len().min(left);
            o.groups.push(OverviewGroup {
                key: if key.is_empty() {
                    "(unassigned)".into()
                } else {
                    key
                },
                owner,
                count,
                listed,
            });
        }
        if left > 0 && o.unknown > 0 {
            let f = filter(
                Some(ComplianceState::Unknown),
                Some(ResourceKind::VirtualMachine),
            );
            o.unknown_listed = db::result_rows(pool, id, &f, None, limit(left)).await?;
            left -= o.unknown_listed.len().min(left);
        }
        if left > 0 && o.unmanaged > 0 {
            let f = filter(None, Some(ResourceKind::UnmanagedHost));
            o.unmanaged_listed = db::result_rows(pool, id, &f, None, limit(left)).await?;
        }
        if budget.compliant > 0 && o.compliant > 0 {
            let f = filter(
                Some(ComplianceState::Compliant),
                Some(ResourceKind::VirtualMachine),
            );
            o.compliant_listed =
                db::result_rows(pool, id, &f, None, limit(budget.compliant)).await?;
        }
        o.scan = Some(scan);
        Ok(o)
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The grouping's column of a result, as the database groups it.
fn group_key(r: &ComplianceResult, by: GroupBy) -> &str {
    match by {
        GroupBy::Owner => &r.owner,
        GroupBy::ResourceGroup => &r.resource_group,
    }
}
