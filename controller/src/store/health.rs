//! What readiness checks and metrics read: the applied schema version, grants pending
//! delivery per VM, the last signed checkpoint. Plain reads, no locks.

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
