//! What the recovery of sequence numbers reads and writes (docs/ha.md, "Sequence numbers
//! after a restore or promotion"): a VM's highest outbox row and its
//! active grants in outbox order, the policy versions' base (`counters.policy_base`,
//! migration 29), and an agent's highest stored audit record.

use sqlx::{Any, Executor};

use crate::error::Result;
use crate::store::grants::{GrantState, OutboxOp};
use crate::store::write::WriteTx;

/// The `counters` row added to every policy version (migration 29).
pub const POLICY_BASE: &str = "policy_base";

/// The VM's highest outbox seq; 0 if it has no rows.
pub async fn vm_outbox_max(ex: impl Executor<'_, Database = Any>, vm: &str) -> Result<i64> {
    let (v,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM grant_outbox WHERE vm = $1")
        .bind(vm)
        .fetch_one(ex)
        .await?;
    Ok(v.unwrap_or(0))
}

/// The VM's grants that are pending or applied and end after `now`, in the order their last
/// `apply` row was issued.
pub async fn active_in_outbox_order(w: &mut WriteTx, vm: &str, now: i64) -> Result<Vec<String>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT g.id, MAX(o.seq) AS last_seq FROM grants g \
         JOIN grant_outbox o ON o.grant_id = g.id AND o.op = $1 \
         WHERE g.vm = $2 AND g.state IN ($3, $4) AND g.end_ms > $5 \
         GROUP BY g.id ORDER BY last_seq",
    )
    .bind(OutboxOp::Apply.as_str())
    .bind(vm)
    .bind(GrantState::Pending.as_str())
    .bind(GrantState::Applied.as_str())
    .bind(now)
    .fetch_all(w.conn())
    .await?;
    Ok(rows.into_iter().map(|(id, _)| id).collect())
}

/// The policy versions' base; 0 when the row is missing (before migration 29 ran).
pub async fn policy_base(ex: impl Executor<'_, Database = Any>) -> Result<i64> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT value FROM counters WHERE name = $1")
        .bind(POLICY_BASE)
        .fetch_optional(ex)
        .await?;
    Ok(row.map_or(0, |r| r.0))
}

/// Sets the policy versions' base. Only inside a write transaction: it holds the counter
/// locks, so two controllers moving it at once are serialised.
pub async fn set_policy_base(w: &mut WriteTx, value: i64) -> Result<()> {
    sqlx::query("UPDATE counters SET value = $1 WHERE name = $2")
        .bind(value)
        .bind(POLICY_BASE)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// The agent's highest stored audit seq; 0 if none. Retention keeps an agent's newest
/// record, so this is what the agent delivered last, unless the database lost it.
pub async fn audit_max(ex: impl Executor<'_, Database = Any>, agent: &str) -> Result<u64> {
    let (v,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(seq) FROM agent_audit WHERE agent_id = $1")
            .bind(agent)
            .fetch_one(ex)
            .await?;
    Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
}
