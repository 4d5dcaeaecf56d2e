//! The `tokens` table: API tokens (only each token's SHA-256 is stored), their role, scope,
//! expiry and revocation.

use jitgate_api::{Role, Scope};
use sqlx::{Any, Executor};

use crate::error::Result;
use crate::store::write::WriteTx;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    #[sqlx(try_from = "String")]
    pub scope: Scope,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    /// The groups its principal belongs to (approver lists name groups).
    #[sqlx(try_from = "String")]
    pub groups: Groups,
}

/// A token's groups, stored comma-separated (names never contain a comma).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Groups(pub Vec<String>);

impl TryFrom<String> for Groups {
    type Error = crate::error::Error;
    fn try_from(s: String) -> Result<Groups> {
        let list: Vec<String> = s
            .split(',')
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        for g in &list {
            jitgate_api::name::validate("group", g).map_err(crate::error::Error::corrupt)?;
        }
        Ok(Groups(list))
    }
}

const COLUMNS: &str = "id, name, role, scope, created_ms, expires_ms, revoked_ms, groups";

/// The token with this hash (revoked and expired ones too).
pub async fn by_hash(
    ex: impl Executor<'_, Database = Any>,
    hash: &str,
) -> Result<Option<TokenRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM tokens WHERE hash = $1"))
            .bind(hash)
            .fetch_optional(ex)
            .await?,
    )
}

pub async fn by_id(ex: impl Executor<'_, Database = Any>, id: &str) -> Result<Option<TokenRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(ex)
            .await?,
    )
}

pub async fn list(ex: impl Executor<'_, Database = Any>) -> Result<Vec<TokenRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tokens ORDER BY created_ms, id"
    ))
    .fetch_all(ex)
    .await?)
}

/// Stores a new token (created now).
pub async fn insert(w: &mut WriteTx, t: &TokenRow, hash: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO tokens (id, name, hash, role, scope, created_ms, expires_ms, revoked_ms, \
         groups) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(hash)
    .bind(t.role.as_str())
    .bind(t.scope.to_string())
    .bind(t.created_ms)
    .bind(t.expires_ms)
    .bind(t.revoked_ms)
    .bind(t.groups.0.join(","))
    .execute(w.conn())
    .await?;
    Ok(())
}

pub async fn set_revoked(w: &mut WriteTx, id: &str) -> Result<()> {
    let now = w.now;
    sqlx::query("UPDATE tokens SET revoked_ms = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// Sets (or clears) a token's email address.
pub async fn set_email(w: &mut WriteTx, id: &str, email: Option<&str>) -> Result<bool> {
    let r = sqlx::query("UPDATE tokens SET email = $1 WHERE id = $2")
        .bind(email)
        .bind(id)
        .execute(w.conn())
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The email addresses of the live tokens named `names` (the `token:NAME` principals an
/// event names), as (name, address).
pub async fn emails(
    conn: &mut sqlx::AnyConnection,
    names: &[&str],
    now: i64,
) -> Result<Vec<(String, String)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (0..names.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT name, email FROM tokens WHERE email IS NOT NULL AND revoked_ms IS NULL \
         AND (expires_ms IS NULL OR expires_ms > $1) AND name IN ({}) ORDER BY name, created_ms",
        marks.join(", ")
    );
    let mut q = sqlx::query_as(&sql).bind(now);
    for n in names {
        q = q.bind(*n);
    }
    Ok(q.fetch_all(conn).await?)
}
