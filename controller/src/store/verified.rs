//! The `activity_verified` row: how far the activity log has been verified, so the portal
//! shows it at once at millions of entries, and a background task only walks what is new.

use sqlx::{Any, Executor};

use crate::error::Result;
use crate::store::write::WriteTx;

/// The mark: entries 1..=`seq` verified (ending at `hash`), checkpoints up to `covered`
/// matched; or the first entry that failed.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Verified {
    pub seq: i64,
    pub hash: String,
    pub covered: i64,
    pub checkpoints: i64,
    /// When the mark was last moved or confirmed (ms).
    pub time_ms: i64,
    pub failed_seq: Option<i64>,
    pub problem: Option<String>,
}

impl Verified {
    /// Before any verification: nothing verified, the chain starts at the genesis hash.
    pub fn start() -> Verified {
        Verified {
            seq: 0,
            hash: jitgate_proto::audit::GENESIS_HASH.into(),
            covered: 0,
            checkpoints: 0,
            time_ms: 0,
            failed_seq: None,
            problem: None,
        }
    }
}

/// The mark, None before the first verification.
pub async fn get(ex: impl Executor<'_, Database = Any>) -> Result<Option<Verified>> {
    Ok(sqlx::query_as(
        "SELECT seq, hash, covered, checkpoints, time_ms, failed_seq, problem \
         FROM activity_verified WHERE id = 1",
    )
    .fetch_optional(ex)
    .await?)
}

/// Replaces the mark.
pub async fn set(w: &mut WriteTx, v: &Verified) -> Result<()> {
    sqlx::query("DELETE FROM activity_verified WHERE id = 1")
        .execute(w.conn())
        .await?;
    sqlx::query(
        "INSERT INTO activity_verified (id, seq, hash, covered, checkpoints, time_ms, \
         failed_seq, problem) VALUES (1, $1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(v.seq)
    .bind(&v.hash)
    .bind(v.covered)
    .bind(v.checkpoints)
    .bind(v.time_ms)
    .bind(v.failed_seq)
    .bind(v.problem.as_deref())
    .execute(w.conn())
    .await?;
    Ok(())
}
