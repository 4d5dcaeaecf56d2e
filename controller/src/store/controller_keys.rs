//! `controller_keys` (migration 33): per running controller of a cluster, the grant-signing
//! keys in use whose private half it holds, with an expiry. Written by each controller's key
//! ring (`keys::Ring::spawn`), read by the automatic switch and the key status.

use sqlx::{Any, Executor};

use crate::error::Result;

/// Writes this controller's row: the keys in use whose private half it holds (ids), valid
/// until `expires_ms`.
pub async fn publish(
    ex: impl Executor<'_, Database = Any>,
    controller: &str,
    held: &[String],
    expires_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO controller_keys (controller, held, expires_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (controller) DO UPDATE SET held = excluded.held, \
         expires_ms = excluded.expires_ms",
    )
    .bind(controller)
    .bind(held.join(" "))
    .bind(expires_ms)
    .execute(ex)
    .await?;
    Ok(())
}

/// Removes this controller's row (it stops), and every row long expired.
pub async fn remove(
    ex: impl Executor<'_, Database = Any>,
    controller: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("DELETE FROM controller_keys WHERE controller = $1 OR expires_ms < $2")
        .bind(controller)
        .bind(now - 3_600_000)
        .execute(ex)
        .await?;
    Ok(())
}

/// The live controllers (unexpired rows at `now`) that do not hold the private half of
/// `key_id` (lack it, or have not read the keys since it was announced), by name.
pub async fn lacking(
    ex: impl Executor<'_, Database = Any>,
    key_id: &str,
    now: i64,
) -> Result<Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT controller, held FROM controller_keys WHERE expires_ms > $1 \
         ORDER BY controller",
    )
    .bind(now)
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, h)| !h.split(' ').any(|k| k == key_id))
        .map(|(c, _)| c)
        .collect())
}
