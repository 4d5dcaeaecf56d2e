//! Compliance in the database: assignments (audited in the activity log), scans with their
//! per-resource results (history), and the exposures the last probe found.

use jitgate_api::ErrorCode;
use sqlx::Row;

use super::{Assignment, POLICY_NAME, ResourceResult, ScanSummary, State};
use crate::auth::Scope;
use crate::error::{ApiError, StoreError};
use crate::model::fmt_time;
use crate::store::{Actor, NewActivity, Store, op};
use jitgate_api::{AssignmentEffect, ScanReason};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A registered VM as compliance sees it.
#[derive(Clone, Debug)]
pub struct VmRow {
    pub name: String,
    pub group: String,
    pub owner: String,
    pub addresses: Vec<String>,
}

/// A port found open by the last probe, without an active grant for the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    pub address: String,
    pub port: u16,
    /// '' for an unmanaged host.
    pub vm: String,
}

fn assignment_scope(s: &str) -> Result<Scope, ApiError> {
    match crate::auth::parse_scope(s)? {
        Scope::Vm(_) => Err(ApiError::bad_request(
            ErrorCode::InvalidScope,
            "assign the compliance policy to the whole fleet (*) or a resource group (rg:NAME)",
        )),
        x => Ok(x),
    }
}

impl Store {
    pub async fn compliance_assignments(&self) -> Result<Vec<Assignment>> {
        let rows = sqlx::query(
            "SELECT id, scope, effect, created_ms, created_by FROM compliance_assignments ORDER BY created_ms, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Assignment {
                    id: r.try_get(0)?,
                    scope: crate::auth::parse_scope(&r.try_get::<String, _>(1)?)
                        .map_err(|e| StoreError::Corrupt(e.message))?,
                    policy: POLICY_NAME.into(),
                    effect: r
                        .try_get::<String, _>(2)?
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
                    created_time_utc: fmt_time(r.try_get(3)?),
                    created_by: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Assigns the policy at `scope` (`*` or `rg:NAME`); a second assignment at the same
    /// scope is a conflict.
    pub async fn assign_compliance(&self, actor: &Actor, scope: &str) -> Result<Assignment> {
        let sc = assignment_scope(scope)?;
        let group = match &sc {
            Scope::ResourceGroup(g) => {
                if !self.group_exists(g).await? {
                    return Err(ApiError::not_found(
                        ErrorCode::ResourceGroupNotFound,
                        format!("no resource group {g}"),
                    )
                    .into());
                }
                g.clone()
            }
            _ => String::new(),
        };
        let scope = sc.to_string();
        let id = format!("asg_{}", uuid::Uuid::new_v4().simple());
        let mut w = self.begin_write().await?;
        let n = sqlx::query(
            "INSERT INTO compliance_assignments (id, scope, effect, created_ms, created_by) \
             VALUES ($1, $2, 'audit', $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(&scope)
        .bind(w.now)
        .bind(&actor.name)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(ApiError::conflict(
                ErrorCode::AssignmentExists,
                format!("the compliance policy is already assigned at {scope}"),
            )
            .into());
        }
        let now = w.now;
        w.log(NewActivity {
            operation: op::ASSIGN_COMPLIANCE,
            resource_type: "PolicyAssignment",
            resource_group: &group,
            vm: "",
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"assignmentId": id, "scope": scope,
                "policy": POLICY_NAME, "effect": "audit"}),
        })
        .await?;
        w.commit().await?;
        Ok(Assignment {
            id,
            scope: sc,
            policy: POLICY_NAME.into(),
            effect: AssignmentEffect::Audit,
            created_time_utc: fmt_time(now),
            created_by: actor.name.clone(),
        })
    }

    pub async fn unassign_compliance(&self, actor: &Actor, id: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        let row = sqlx::query("SELECT scope FROM compliance_assignments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *w.tx)
            .await?;
        let Some(row) = row else {
            return Err(ApiError::not_found(
                ErrorCode::AssignmentNotFound,
                format!("no compliance assignment {id}"),
            )
            .into());
        };
        let scope: String = row.try_get(0)?;
        sqlx::query("DELETE FROM compliance_assignments WHERE id = $1")
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        let group = scope.strip_prefix("rg:").unwrap_or("").to_string();
        w.log(NewActivity {
            operation: op::UNASSIGN_COMPLIANCE,
            resource_type: "PolicyAssignment",
            resource_group: &group,
            vm: "",
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"assignmentId": id, "scope": scope}),
        })
        .await?;
        w.commit().await
    }

    /// Every VM covered by an assignment (VMs added to an assigned group later included).
    pub async fn compliance_vms(&self) -> Result<Vec<VmRow>> {
        let scopes: Vec<Scope> = self
            .compliance_assignments()
            .await?
            .iter()
            .map(|a| a.scope.clone())
            .collect();
        let rows = sqlx::query(
            "SELECT v.name, v.resource_group, g.owner, v.addresses FROM vms v \
             JOIN resource_groups g ON g.name = v.resource_group ORDER BY v.name",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let name: String = r.try_get(0)?;
            let group: String = r.try_get(1)?;
            if !scopes.iter().any(|s| s.covers_vm(&name, &group)) {
                continue;
            }
            out.push(VmRow {
                name,
                group,
                owner: r.try_get(2)?,
                addresses: serde_json::from_str(&r.try_get::<String, _>(3)?)?,
            });
        }
        Ok(out)
    }

    /// Every registered address, with its VM (for telling managed from unmanaged hosts).
    pub async fn registered_addresses(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, addresses FROM vms")
            .fetch_all(self.pool())
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let name: String = r.try_get(0)?;
            let addrs: Vec<String> = serde_json::from_str(&r.try_get::<String, _>(1)?)?;
            out.extend(addrs.into_iter().map(|a| (a, name.clone())));
        }
        Ok(out)
    }

    /// Source prefixes of the VM's active controller grants on a TCP port.
    pub async fn active_tcp_prefixes(&self, vm: &str, port: u16, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT prefix FROM grants WHERE vm = $1 AND port = $2 AND protocol = 'TCP' \
             AND state IN ('pending', 'applied') AND end_ms > $3",
        )
        .bind(vm)
        .bind(i64::from(port))
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    pub async fn replace_exposures(&self, found: &[Exposure]) -> Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query("DELETE FROM compliance_exposures")
            .execute(&mut *w.tx)
            .await?;
        for e in found {
            sqlx::query(
                "INSERT INTO compliance_exposures (address, port, vm, time_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&e.address)
            .bind(i64::from(e.port))
            .bind(&e.vm)
            .bind(w.now)
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await
    }

    pub async fn exposures(&self) -> Result<Vec<Exposure>> {
        let rows = sqlx::query(
            "SELECT address, port, vm FROM compliance_exposures ORDER BY address, port",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Exposure {
                    address: r.try_get(0)?,
                    port: u16::try_from(r.try_get::<i64, _>(1)?)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    vm: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Stores one evaluation and returns its summary.
    pub async fn store_scan(
        &self,
        reason: &ScanReason,
        probed: bool,
        results: &[ResourceResult],
    ) -> Result<ScanSummary> {
        let super::Counts {
            compliant: c,
            non_compliant: nc,
            unknown: u,
            unmanaged,
        } = super::Counts::of(results);
        let mut w = self.begin_write().await?;
        let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 FROM compliance_scans")
            .fetch_one(&mut *w.tx)
            .await?
            .try_get(0)?;
        sqlx::query(
            "INSERT INTO compliance_scans (id, time_ms, reason, probed, compliant, non_compliant, \
             unknown, unmanaged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(w.now)
        .bind(reason.as_str())
        .bind(i64::from(probed))
        .bind(c)
        .bind(nc)
        .bind(u)
        .bind(unmanaged)
        .execute(&mut *w.tx)
        .await?;
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
            .execute(&mut *w.tx)
            .await?;
        }
        let now = w.now;
        w.commit().await?;
        Ok(ScanSummary {
            scan_id: id,
            time_utc: fmt_time(now),
            reason: reason.clone(),
            probed,
            compliant: c,
            non_compliant: nc,
            unknown: u,
            unmanaged,
            compliance_percentage: ScanSummary::percentage(c, nc),
        })
    }

    fn summary_of(r: &sqlx::any::AnyRow) -> Result<ScanSummary> {
        let (c, nc): (i64, i64) = (r.try_get(4)?, r.try_get(5)?);
        Ok(ScanSummary {
            scan_id: r.try_get(0)?,
            time_utc: fmt_time(r.try_get(1)?),
            reason: r
                .try_get::<String, _>(2)?
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
            probed: r.try_get::<i64, _>(3)? != 0,
            compliant: c,
            non_compliant: nc,
            unknown: r.try_get(6)?,
            unmanaged: r.try_get(7)?,
            compliance_percentage: ScanSummary::percentage(c, nc),
        })
    }

    /// The newest scan at or before `at_ms` (any, if None).
    pub async fn scan_at(&self, at_ms: Option<i64>) -> Result<Option<ScanSummary>> {
        let row = sqlx::query(
            "SELECT id, time_ms, reason, probed, compliant, non_compliant, unknown, unmanaged \
             FROM compliance_scans WHERE time_ms <= $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(at_ms.unwrap_or(i64::MAX))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(Self::summary_of).transpose()
    }

    /// Scans, oldest first, the newest `limit` of them.
    pub async fn scan_history(&self, limit: i64) -> Result<Vec<ScanSummary>> {
        let rows = sqlx::query(
            "SELECT id, time_ms, reason, probed, compliant, non_compliant, unknown, unmanaged \
             FROM compliance_scans ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let mut v = rows
            .iter()
            .map(Self::summary_of)
            .collect::<Result<Vec<_>>>()?;
        v.reverse();
        Ok(v)
    }

    pub async fn scan_results(&self, scan_id: i64) -> Result<Vec<ResourceResult>> {
        let rows = sqlx::query(
            "SELECT resource, kind, resource_group, owner, state, findings FROM compliance_results \
             WHERE scan_id = $1 ORDER BY kind DESC, resource",
        )
        .bind(scan_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get(4)?;
                Ok(ResourceResult {
                    resource: r.try_get(0)?,
                    kind: r
                        .try_get::<String, _>(1)?
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
                    resource_group: r.try_get(2)?,
                    owner: r.try_get(3)?,
                    state: state
                        .parse::<State>()
                        .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
                    findings: serde_json::from_str(&r.try_get::<String, _>(5)?)?,
                })
            })
            .collect()
    }
}
