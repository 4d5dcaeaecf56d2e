//! The `activity_full_run` row: the verification of the whole activity log running in the
//! background (at most one in the cluster), its progress and its result, so that a portal
//! served by any controller shows it.

use jitgate_api::VerifyReport;
use sqlx::{Any, Executor};

use crate::error::{Error, Result};
use crate::store::write::WriteTx;

/// A run whose controller wrote no progress for this long is abandoned (it stopped or lost
/// the database); another may start.
pub const ABANDONED_AFTER_MS: i64 = 30_000;

/// The row as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RunRow {
    pub controller: String,
    pub started_ms: i64,
    pub total: i64,
    pub walked: i64,
    pub updated_ms: i64,
    pub running: i64,
    pub report: Option<String>,
    pub error: Option<String>,
}

impl RunRow {
    /// Running, and its controller wrote progress recently.
    pub fn live(&self, now_ms: i64) -> bool {
        self.running != 0 && now_ms - self.updated_ms < ABANDONED_AFTER_MS
    }

    /// The finished run's report, if it finished and the row holds one that reads.
    pub fn report(&self) -> Result<Option<VerifyReport>> {
        self.report
            .as_deref()
            .map(|r| serde_json::from_str(r).map_err(Error::corrupt))
            .transpose()
    }
}

pub async fn get(ex: impl Executor<'_, Database = Any>) -> Result<Option<RunRow>> {
    Ok(sqlx::query_as(
        "SELECT controller, started_ms, total, walked, updated_ms, running, report, error \
         FROM activity_full_run WHERE id = 1",
    )
    .fetch_optional(ex)
    .await?)
}

/// Claims the run for `controller` unless a live one holds it (false then). In `w`, so two
/// controllers starting at once are serialised by the write lock (and on PostgreSQL by the
/// row's primary key).
pub async fn claim(w: &mut WriteTx, controller: &str, total: i64) -> Result<bool> {
    let now = w.now;
    if get(w.conn()).await?.is_some_and(|r| r.live(now)) {
        return Ok(false);
    }
    sqlx::query("DELETE FROM activity_full_run WHERE id = 1")
        .execute(w.conn())
        .await?;
    sqlx::query(
        "INSERT INTO activity_full_run (id, controller, started_ms, total, walked, updated_ms, \
         running, report, error) VALUES (1, $1, $2, $3, 0, $2, 1, NULL, NULL)",
    )
    .bind(controller)
    .bind(now)
    .bind(total)
    .execute(w.conn())
    .await?;
    Ok(true)
}

/// Records progress of the run `controller` started at `started_ms` (nothing if another run
/// replaced it).
pub async fn progress(
    w: &mut WriteTx,
    controller: &str,
    started_ms: i64,
    walked: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE activity_full_run SET walked = $1, updated_ms = $2 \
         WHERE id = 1 AND controller = $3 AND started_ms = $4 AND running = 1",
    )
    .bind(walked)
    .bind(w.now)
    .bind(controller)
    .bind(started_ms)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Records the end of that run: its report, or why it could not finish.
pub async fn finish(
    w: &mut WriteTx,
    controller: &str,
    started_ms: i64,
    walked: i64,
    outcome: std::result::Result<&VerifyReport, &str>,
) -> Result<()> {
    let (report, error) = match outcome {
        Ok(r) => (Some(serde_json::to_string(r)?), None),
        Err(e) => (None, Some(e)),
    };
    sqlx::query(
        "UPDATE activity_full_run SET walked = $1, updated_ms = $2, running = 0, report = $3, \
         error = $4 WHERE id = 1 AND controller = $5 AND started_ms = $6",
    )
    .bind(walked)
    .bind(w.now)
    .bind(report)
    .bind(error)
    .bind(controller)
    .bind(started_ms)
    .execute(w.conn())
    .await?;
    Ok(())
}
