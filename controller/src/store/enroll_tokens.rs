//! One-time enrolment tokens (`enroll_tokens`), kept by hash.

use crate::error::Result;
use crate::store::write::WriteTx;

/// Stores a new token (its hash only: the token itself is shown once and never kept).
pub async fn insert(w: &mut WriteTx, hash: &str, vm: &str, expires_ms: i64) -> Result<()> {
    let now = w.now;
    sqlx::query(
        "INSERT INTO enroll_tokens (hash, vm, created_ms, expires_ms, used_ms, agent_id) \
         VALUES ($1, $2, $3, $4, NULL, NULL)",
    )
    .bind(hash)
    .bind(vm)
    .bind(now)
    .bind(expires_ms)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// An enrolment token, with its VM's group.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EnrollToken {
    pub vm: String,
    pub expires_ms: i64,
    pub used_ms: Option<i64>,
    pub resource_group: String,
}

/// The token with this hash, used or not.
pub async fn find(w: &mut WriteTx, hash: &str) -> Result<Option<EnrollToken>> {
    Ok(sqlx::query_as(
        "SELECT t.vm, t.expires_ms, t.used_ms, v.resource_group FROM enroll_tokens t \
         JOIN vms v ON v.name = t.vm WHERE t.hash = $1",
    )
    .bind(hash)
    .fetch_optional(w.conn())
    .await?)
}

/// Marks the token used by `agent` (in the enrolment's transaction).
pub async fn mark_used(w: &mut WriteTx, hash: &str, agent: &str) -> Result<()> {
    let now = w.now;
    sqlx::query("UPDATE enroll_tokens SET used_ms = $1, agent_id = $2 WHERE hash = $3")
        .bind(now)
        .bind(agent)
        .bind(hash)
        .execute(w.conn())
        .await?;
    Ok(())
}
