//! What readiness checks and metrics read: the applied schema version, grants pending
//! delivery per VM, the last signed checkpoint, requests waiting for approval and how long
//! the decided ones waited. Plain reads, no locks.

use sqlx::{Any, Executor};

use crate::error::Result;
use crate::store::grants::GrantState;

/// The highest migration applied to the database (0 if none).
pub async fn schema_version(ex: impl Executor<'_, Database = Any>) -> Result<i64> {
    let (v,): (i64,) =
        sqlx::query_as("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations")
            .fetch_one(ex)
            .await?;
    Ok(v)
}

/// Per VM: how many active grants its agent has not acknowledged, and when the oldest was
/// made (ms).
pub async fn pending_grants(
    ex: impl Executor<'_, Database = Any>,
    now: i64,
) -> Result<Vec<(String, i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT vm, CAST(COUNT(*) AS BIGINT), CAST(MIN(start_ms) AS BIGINT) FROM grants \
         WHERE state = $1 AND end_ms > $2 GROUP BY vm ORDER BY vm",
    )
    .bind(GrantState::Pending.as_str())
    .bind(now)
    .fetch_all(ex)
    .await?)
}

/// The last signed checkpoint: (seq, time ms).
pub async fn last_checkpoint(ex: impl Executor<'_, Database = Any>) -> Result<Option<(i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT seq, time_ms FROM activity_checkpoints ORDER BY seq DESC, time_ms DESC LIMIT 1",
    )
    .fetch_optional(ex)
    .await?)
}

/// Requests waiting for an approval decision: how many, and when the oldest was made (ms).
pub async fn pending_approvals(
    ex: impl Executor<'_, Database = Any>,
) -> Result<(i64, Option<i64>)> {
    Ok(sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(MIN(start_ms) AS BIGINT) FROM requests \
         WHERE deadline_ms IS NOT NULL",
    )
    .fetch_one(ex)
    .await?)
}

/// How long (ms) each request whose approval was decided since `since` (approved to the
/// end, rejected or timed out; not withdrawn by its requester) waited from when it was
/// made to its last decision; the `limit` latest.
pub async fn decision_waits(
    ex: impl Executor<'_, Database = Any>,
    since: i64,
    limit: i64,
) -> Result<Vec<i64>> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT CAST(MAX(a.time_ms) - r.start_ms AS BIGINT) FROM request_approvals a \
         JOIN requests r ON r.id = a.request_id \
         WHERE a.time_ms >= $1 AND r.deadline_ms IS NULL AND NOT EXISTS \
         (SELECT 1 FROM request_approvals c WHERE c.request_id = r.id AND c.decision = $2) \
         GROUP BY r.id, r.start_ms ORDER BY MAX(a.time_ms) DESC LIMIT $3",
    )
    .bind(since)
    .bind(jitgate_api::approval::Decision::Cancelled.as_str())
    .bind(limit)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|(w,)| w.max(0)).collect())
}
