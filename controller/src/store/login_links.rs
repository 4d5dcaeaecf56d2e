//! The `login_links` table: one-time portal sign-in links (only the hash of each secret).

use sqlx::{Any, Executor};

use crate::error::Result;
use crate::store::write::WriteTx;

/// A link as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LinkRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub scope: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub redeemed_ms: Option<i64>,
}

const COLUMNS: &str = "id, name, role, scope, created_ms, expires_ms, redeemed_ms";

pub async fn insert(w: &mut WriteTx, l: &LinkRow, hash: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO login_links (token_hash, id, name, role, scope, created_ms, expires_ms, \
         redeemed_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(hash)
    .bind(&l.id)
    .bind(&l.name)
    .bind(&l.role)
    .bind(&l.scope)
    .bind(l.created_ms)
    .bind(l.expires_ms)
    .bind(l.redeemed_ms)
    .execute(w.conn())
    .await?;
    Ok(())
}

pub async fn by_hash(ex: impl Executor<'_, Database = Any>, hash: &str) -> Result<Option<LinkRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM login_links WHERE token_hash = $1"
    ))
    .bind(hash)
    .fetch_optional(ex)
    .await?)
}

/// Marks the link redeemed at `at`; false when it already was or has expired (another
/// POST got there first, or too late): exactly one redemption ever succeeds.
pub async fn redeem(w: &mut WriteTx, id: &str, at: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE login_links SET redeemed_ms = $1 WHERE id = $2 AND redeemed_ms IS NULL \
         AND expires_ms > $1",
    )
    .bind(at)
    .bind(id)
    .execute(w.conn())
    .await?;
    Ok(r.rows_affected() == 1)
}
